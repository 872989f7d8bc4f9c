//! Failover strategies as pure decisions (no I/O, no clock): where a device's authority
//! runs, and when the second node of a Heartbeat pair takes it over.
//!
//! | strategy | authority |
//! |---|---|
//! | heartbeat | the node with `priority = "first"`; the other takes it over when the node holding it is silent on every link (and its API) for longer than a lease plus margin (the second from the first, and the first back from a second that took over) |
//! | node-majority, `witness = NAME` | the witness node (`tandem-control --role witness`) |
//! | node-majority, three data nodes | the lowest node id (no takeover yet: losing it stops the others' leases, fail safe) |
//! | node-majority, `witness_file` | the data node that holds the lock file (`file_witness`) |

use std::time::Duration;

use tandem_config::{FailoverStrategy, Priority, ReplicationConfig};
use tandem_ha::{EpochConfig, MemberState, NodeId};

use super::AuthorityPlace;

/// Where the authority of a device with replication `r` runs, seen from this node.
/// `hosted_here`: this node already hosts it (state on disk, e.g. after a takeover);
/// `superseded_by`: that authority was superseded by this partner's, which is then asked.
pub fn authority_place(
    r: &ReplicationConfig,
    hosted_here: bool,
    superseded_by: Option<u8>,
) -> AuthorityPlace {
    // The lock file decides, not a state on disk or a heartbeat announcement.
    if r.failover == FailoverStrategy::NodeMajority
        && r.witness.is_none()
        && r.witness_file.is_some()
    {
        return AuthorityPlace::FileWitness;
    }
    if let Some(n) = superseded_by {
        return match r.partners.iter().find(|p| p.node_id == n) {
            Some(p) => AuthorityPlace::Remote {
                server: p.name.clone(),
            },
            None => AuthorityPlace::Unavailable {
                reason: format!("superseded by node {n}, which is not a partner"),
            },
        };
    }
    if hosted_here {
        return AuthorityPlace::Local;
    }
    match r.failover {
        // Three nodes under the heartbeat strategy: the nodes do not know each other's
        // priority, so they agree on the lowest node id (no takeover).
        FailoverStrategy::Heartbeat if r.partners.len() > 1 => lowest_id(r),
        FailoverStrategy::Heartbeat => match (r.priority, r.partners.first()) {
            (Priority::First, _) => AuthorityPlace::Local,
            (Priority::Second, Some(p)) => AuthorityPlace::Remote {
                server: p.name.clone(),
            },
            (Priority::Second, None) => AuthorityPlace::Unavailable {
                reason: "no partner".into(),
            },
        },
        FailoverStrategy::NodeMajority => {
            if let Some(w) = &r.witness {
                return AuthorityPlace::Remote { server: w.clone() };
            }
            if r.partners.len() < 2 {
                return AuthorityPlace::Unavailable {
                    reason: "node majority with two data nodes needs a witness".into(),
                };
            }
            lowest_id(r)
        }
    }
}

/// The node with the lowest id hosts the authority.
fn lowest_id(r: &ReplicationConfig) -> AuthorityPlace {
    match r
        .partners
        .iter()
        .filter(|p| p.node_id < r.node_id)
        .min_by_key(|p| p.node_id)
    {
        None => AuthorityPlace::Local,
        Some(p) => AuthorityPlace::Remote {
            server: p.name.clone(),
        },
    }
}

/// Node ids of the device (this node and its partners), sorted.
pub fn device_nodes(r: &ReplicationConfig) -> Vec<NodeId> {
    let mut v: Vec<NodeId> = std::iter::once(r.node_id)
        .chain(r.partners.iter().map(|p| p.node_id))
        .map(NodeId)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// What the second node of a Heartbeat pair knows when it considers a takeover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TakeoverInput {
    pub strategy: FailoverStrategy,
    pub priority: Priority,
    /// This node hosts the authority already.
    pub hosting: bool,
    /// Partners of the device (the takeover is defined for two nodes only).
    pub partners: usize,
    pub me: NodeId,
    /// The partner, which holds the authority whenever this node does not.
    pub authority: NodeId,
    /// Time since anything authentic came from the authority node: a heartbeat on any sync
    /// or heartbeat link, or an answer of its API. None: nothing since this process started.
    pub silent_for: Option<Duration>,
    /// The lease the authority grants plus its margin.
    pub lease_plus_margin: Duration,
    /// The newest configuration this node saw (engine or authority).
    pub newest: Option<EpochConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Takeover {
    Stay(&'static str),
    /// Issue this configuration (epoch above every one seen) as the new authority.
    TakeOver(EpochConfig),
}

/// Heartbeat strategy: the second node takes over the authority when the first has been
/// silent on every link for longer than a lease plus margin (so the first's own lease, and
/// every lease it granted, has ended), and only if this node was synchronized in the newest
/// configuration it saw. The new configuration removes the first node.
///
/// The price (documented in docs/ha.md): if every link is cut but the first node is alive,
/// both sides go on alone; the data generations (both moved on from the same point) show
/// the split brain when they meet again, and it is never merged.
pub fn decide_takeover(i: &TakeoverInput) -> Takeover {
    if i.strategy != FailoverStrategy::Heartbeat {
        return Takeover::Stay("only the heartbeat strategy moves its authority");
    }
    // Either node may take over from the other: the second from the first (the authority by
    // configuration), and the first back from a second that took over and then died (else
    // the second would stay a single point of failure after its takeover).
    if i.hosting {
        return Takeover::Stay("already the authority");
    }
    if i.partners != 1 {
        return Takeover::Stay("the heartbeat takeover is defined for two nodes");
    }
    // Never heard since this process started: a local fault (sockets that did not bind, a
    // wrong address) would look the same as a dead partner, so stay (fail safe).
    let Some(silent) = i.silent_for else {
        return Takeover::Stay("the authority node was never heard since this process started");
    };
    if silent <= i.lease_plus_margin {
        return Takeover::Stay("the authority node was heard within a lease plus margin");
    }
    let Some(newest) = &i.newest else {
        return Takeover::Stay("no configuration seen yet: this replica may be stale");
    };
    if newest.state_of(i.me) != MemberState::Synchronized {
        return Takeover::Stay("this replica is not synchronized: its copy is not the cluster's");
    }
    let next = if newest.state_of(i.authority) == MemberState::Out {
        newest.next(&[])
    } else {
        newest.next(&[(i.authority, MemberState::Out)])
    };
    match next {
        Some(c) => Takeover::TakeOver(c),
        None => Takeover::Stay("no synchronized member would remain"),
    }
}

/// Two nodes host the same device's authority (a takeover one of them did not see). The
/// one with the lower epoch stops; on equal epochs, the node with priority second stops
/// (the first is the authority by configuration). `mine`/`theirs`: the hosted epochs.
pub fn superseded(mine: u64, theirs: u64, my_priority: Priority) -> bool {
    theirs > mine || (theirs == mine && my_priority == Priority::Second)
}

/// Heartbeat strategy, two nodes, the authority on this node: the partner asks for a
/// verdict about this node. When the sync links fail and a heartbeat link (or the API) is
/// alive, both engines ask for a verdict about each other, and whichever request arrived
/// first used to win: the node with priority first could be removed, and rejoin, and be
/// removed again, every two seconds. The strategy says the node with priority second stops.
/// So while this node (priority first) is alive and serving (`local_serving`: its engine
/// reported, within a lease, that it serves), the verdict is turned against the asker.
/// Returns the node the verdict must name. Any other case keeps the suspect: a node whose
/// data plane is gone or that does not serve is rightly removed.
pub fn verdict_suspect(
    r: &ReplicationConfig,
    from: NodeId,
    suspect: NodeId,
    local_serving: bool,
) -> NodeId {
    let me = NodeId(r.node_id);
    let against_first_here = r.failover == FailoverStrategy::Heartbeat
        && r.partners.len() == 1
        && r.priority == Priority::First
        && suspect == me
        && from != me
        && r.partners.iter().any(|p| NodeId(p.node_id) == from);
    if against_first_here && local_serving {
        from
    } else {
        suspect
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn superseded_table() {
        use super::superseded;
        use tandem_config::Priority::*;
        for (mine, theirs, prio, want) in [
            (1, 2, First, true),
            (2, 1, First, false),
            (2, 1, Second, false),
            (2, 2, First, false),
            (2, 2, Second, true),
            (3, 2, Second, false),
        ] {
            assert_eq!(
                superseded(mine, theirs, prio),
                want,
                "{mine} vs {theirs} as {prio:?}"
            );
        }
    }

    use super::*;
    #[test]
    fn a_second_nodes_verdict_about_a_serving_first_turns_against_the_second() {
        use tandem_config::{JournalKind, PartnerConfig};
        let r = |priority, failover, partners: u8| ReplicationConfig {
            node_id: 1,
            secret_file: "/x".into(),
            failover,
            priority,
            journal: JournalKind::Ram,
            journal_location: None,
            witness: None,
            witness_file: None,
            partners: (2..2 + partners)
                .map(|id| PartnerConfig {
                    name: format!("n{id}"),
                    node_id: id,
                    sync_links: vec![],
                    heartbeat_links: vec![],
                })
                .collect(),
        };
        let hb = FailoverStrategy::Heartbeat;
        let (me, partner) = (NodeId(1), NodeId(2));
        // The rule: the second asks about the serving first -> the second is named.
        assert_eq!(
            verdict_suspect(&r(Priority::First, hb, 1), partner, me, true),
            partner
        );
        // This node does not serve (data plane gone, syncing): the verdict stands.
        assert_eq!(
            verdict_suspect(&r(Priority::First, hb, 1), partner, me, false),
            me
        );
        // This node is the second (it took the authority over): the verdict stands.
        assert_eq!(
            verdict_suspect(&r(Priority::Second, hb, 1), partner, me, true),
            me
        );
        // About someone else, or asked by this node itself: unchanged.
        assert_eq!(
            verdict_suspect(&r(Priority::First, hb, 1), me, partner, true),
            partner
        );
        // Three nodes, node majority: unchanged.
        assert_eq!(
            verdict_suspect(&r(Priority::First, hb, 2), partner, me, true),
            me
        );
        assert_eq!(
            verdict_suspect(
                &r(Priority::First, FailoverStrategy::NodeMajority, 1),
                partner,
                me,
                true
            ),
            me
        );
    }

    use tandem_config::{LinkPair, PartnerConfig};
    use tandem_ha::Epoch;

    fn repl(
        id: u8,
        failover: FailoverStrategy,
        priority: Priority,
        partners: &[(u8, &str)],
    ) -> ReplicationConfig {
        ReplicationConfig {
            node_id: id,
            secret_file: "/s".into(),
            failover,
            priority,
            journal: Default::default(),
            journal_location: None,
            witness: None,
            witness_file: None,
            partners: partners
                .iter()
                .map(|(n, name)| PartnerConfig {
                    name: name.to_string(),
                    node_id: *n,
                    sync_links: vec!["127.0.0.1:1=127.0.0.2:1".parse::<LinkPair>().unwrap()],
                    heartbeat_links: vec![],
                })
                .collect(),
        }
    }

    fn remote(s: &str) -> AuthorityPlace {
        AuthorityPlace::Remote { server: s.into() }
    }

    #[test]
    fn authority_place_table() {
        use FailoverStrategy::*;
        use Priority::*;
        let mut witness = repl(2, NodeMajority, First, &[(1, "a")]);
        witness.witness = Some("w".into());
        let mut file = repl(2, NodeMajority, First, &[(1, "a")]);
        file.witness_file = Some("/share/lock".into());
        let cases: Vec<(&str, ReplicationConfig, bool, AuthorityPlace)> = vec![
            (
                "hb first",
                repl(1, Heartbeat, First, &[(2, "b")]),
                false,
                AuthorityPlace::Local,
            ),
            (
                "hb second",
                repl(1, Heartbeat, Second, &[(2, "b")]),
                false,
                remote("b"),
            ),
            (
                "hb second after takeover",
                repl(1, Heartbeat, Second, &[(2, "b")]),
                true,
                AuthorityPlace::Local,
            ),
            ("majority witness", witness, false, remote("w")),
            (
                "majority 3 lowest",
                repl(1, NodeMajority, First, &[(3, "c"), (2, "b")]),
                false,
                AuthorityPlace::Local,
            ),
            (
                "majority 3 middle",
                repl(2, NodeMajority, First, &[(3, "c"), (1, "a")]),
                false,
                remote("a"),
            ),
            (
                "majority 3 highest",
                repl(3, NodeMajority, First, &[(2, "b"), (1, "a")]),
                false,
                remote("a"),
            ),
            (
                "heartbeat 3, first priority, not lowest",
                repl(2, Heartbeat, First, &[(3, "c"), (1, "a")]),
                false,
                remote("a"),
            ),
            (
                "heartbeat 3 lowest",
                repl(1, Heartbeat, Second, &[(3, "c"), (2, "b")]),
                false,
                AuthorityPlace::Local,
            ),
        ];
        for (name, r, hosted, want) in cases {
            assert_eq!(authority_place(&r, hosted, None), want, "{name}");
        }
        assert_eq!(
            authority_place(&repl(1, Heartbeat, First, &[(2, "b")]), true, Some(2)),
            remote("b"),
            "a superseded authority asks the partner's"
        );
        assert_eq!(
            authority_place(&file, false, None),
            AuthorityPlace::FileWitness
        );
        assert_eq!(
            authority_place(&file, true, Some(1)),
            AuthorityPlace::FileWitness,
            "a state on disk or a superseded record does not move a file-witness authority"
        );
        assert!(matches!(
            authority_place(&repl(1, NodeMajority, First, &[(2, "b")]), false, None),
            AuthorityPlace::Unavailable { .. }
        ));
    }

    fn input() -> TakeoverInput {
        TakeoverInput {
            strategy: FailoverStrategy::Heartbeat,
            priority: Priority::Second,
            hosting: false,
            partners: 1,
            me: NodeId(2),
            authority: NodeId(1),
            silent_for: Some(Duration::from_millis(2100)),
            lease_plus_margin: Duration::from_millis(2000),
            newest: Some(EpochConfig::initial(&[NodeId(1), NodeId(2)])),
        }
    }

    #[test]
    fn takeover_table() {
        let removed_me = EpochConfig::initial(&[NodeId(1), NodeId(2)])
            .next(&[(NodeId(2), MemberState::Out)])
            .unwrap();
        let first_out = EpochConfig::initial(&[NodeId(1), NodeId(2)])
            .next(&[(NodeId(1), MemberState::Out)])
            .unwrap();
        type Edit = fn(&mut TakeoverInput);
        let cases: Vec<(&str, Edit, Option<u64>)> = vec![
            ("silent past lease+margin", |_| {}, Some(2)),
            (
                "silent exactly lease+margin",
                |i| i.silent_for = Some(Duration::from_millis(2000)),
                None,
            ),
            (
                "heard recently",
                |i| i.silent_for = Some(Duration::from_millis(300)),
                None,
            ),
            ("never heard since start", |i| i.silent_for = None, None),
            (
                "node majority never takes over",
                |i| i.strategy = FailoverStrategy::NodeMajority,
                None,
            ),
            ("already hosting", |i| i.hosting = true, None),
            ("three nodes", |i| i.partners = 2, None),
            ("no configuration seen", |i| i.newest = None, None),
        ];
        for (name, edit, want_epoch) in cases {
            let mut i = input();
            edit(&mut i);
            let got = decide_takeover(&i);
            match (want_epoch, got) {
                (None, Takeover::Stay(_)) => {}
                (Some(e), Takeover::TakeOver(c)) => {
                    assert_eq!(c.epoch, Epoch(e), "{name}");
                    assert_eq!(c.state_of(NodeId(1)), MemberState::Out, "{name}");
                    assert_eq!(c.sequencer, NodeId(2), "{name}");
                    assert_ne!(
                        c.generation,
                        EpochConfig::initial(&[NodeId(1), NodeId(2)]).generation,
                        "{name}: going on alone bumps the generation"
                    );
                }
                (w, g) => panic!("{name}: wanted {w:?}, got {g:?}"),
            }
        }
        // The first node takes the authority back from a second that took over and died.
        let mut i = input();
        i.priority = Priority::First;
        i.me = NodeId(1);
        i.authority = NodeId(2);
        i.newest = Some(
            first_out
                .next(&[(NodeId(1), MemberState::Syncing)])
                .and_then(|c| c.next(&[(NodeId(1), MemberState::Synchronized)]))
                .unwrap(),
        );
        match decide_takeover(&i) {
            Takeover::TakeOver(c) => {
                assert_eq!(c.state_of(NodeId(2)), MemberState::Out);
                assert_eq!(c.sequencer, NodeId(1));
            }
            other => panic!("the first node must take the authority back: {other:?}"),
        }
        let mut i = input();
        i.newest = Some(removed_me);
        assert!(
            matches!(decide_takeover(&i), Takeover::Stay(_)),
            "a removed replica must not take over"
        );
        let mut i = input();
        i.newest = Some(first_out.clone());
        match decide_takeover(&i) {
            Takeover::TakeOver(c) => {
                assert_eq!(c.epoch, Epoch(first_out.epoch.0 + 1));
                assert_eq!(c.generation, first_out.generation);
            }
            other => panic!("{other:?}"),
        }
    }
}
