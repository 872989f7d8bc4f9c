//! Failover strategies as pure decisions (no I/O, no clock): where a device's authority
//! runs, and when the second node of a Heartbeat pair takes it over.
//!
//! | strategy | authority |
//! |---|---|
//! | heartbeat | the node with `priority = "first"`; the other takes it over when the node holding it is silent on every link (and its API) for longer than a lease plus margin (the second from the first, and the first back from a second that took over) |
//! | node-majority, `witness = NAME` | the witness node (`tandem-control --role witness`); when it is lost, the two data nodes take the vote over together and hand it back when it returns (`witness_pair`) |
//! | node-majority, three data nodes | the lowest node id at first, then whichever node announces hosting it at the highest epoch; the two others take it over when the node holding it is silent to both of them (majority, [`decide_majority_takeover`]) |
//! | node-majority, `witness_file` | the data node that holds the lock file (`file_witness`) |

use std::time::Duration;

use tandem_config::{FailoverStrategy, Priority, ReplicationConfig};
use tandem_ha::{Epoch, EpochConfig, GenerationId, MemberState, NodeId};

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
    /// This node's data plane held a lease (it served) when the authority node was last
    /// heard, give or take half the margin (see `driver::leased_when_heard`).
    /// If it did not, that authority may already have removed it: it removes a member
    /// a margin after that member's lease ended, so a lease that had ended when the
    /// authority was last heard proves nothing, while a lease still running proves the
    /// removal had not happened by then.
    pub leased_when_last_heard: bool,
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
    // Found by the vote simulation (hb2 seed 1): removed at an epoch this node never saw,
    // then a takeover at an equal epoch with different members; the removed copy lost.
    if !i.leased_when_last_heard {
        return Takeover::Stay(
            "this node held no lease when the authority node was last heard: it may have been removed",
        );
    }
    let Some(newest) = &i.newest else {
        return Takeover::Stay("no configuration seen yet: this replica may be stale");
    };
    if newest.state_of(i.me) != MemberState::Synchronized {
        return Takeover::Stay("this replica is not synchronized: its copy is not the cluster's");
    }
    match takeover_config(newest, i.authority) {
        Some(c) => Takeover::TakeOver(c),
        None => Takeover::Stay("no synchronized member would remain"),
    }
}

// ---------------------------------------------------------------------------------------
// Three data nodes under node majority (no witness): every node is a vote; whoever holds
// the authority serves only with two of three votes, and the two others may take it over.
// ---------------------------------------------------------------------------------------

/// Node majority with three data nodes and no witness: the rules below apply.
pub fn is_three_node_majority(r: &ReplicationConfig) -> bool {
    r.failover == FailoverStrategy::NodeMajority
        && r.witness.is_none()
        && r.witness_file.is_none()
        && r.partners.len() == 2
}

/// What this node heard lately from one partner (heartbeats within the timeout).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeardPartner {
    pub id: NodeId,
    /// The newest epoch it knows, or hosts its authority at.
    pub epoch: u64,
    pub hosts_authority: bool,
    /// It has lost the authority it follows (its vote for a takeover).
    pub lost_authority: bool,
}

/// Where the authority of a three-node majority device is, seen from this node.
/// - hosted here (and not superseded): here;
/// - else the recently heard partner that announces hosting it at the highest epoch (ties:
///   lowest id), provided that epoch is not older than the configuration this node holds
///   (`known_epoch`): a stale authority, e.g. the old host back from the dead, never gets
///   this node's vote;
/// - else the partner that superseded the authority kept here as a record;
/// - else the lowest node id (the first start).
///
/// Returns the node id, `Ok(None)` for "nowhere" with a reason in `Err`.
pub fn majority_place(
    me: NodeId,
    nodes: &[NodeId],
    hosting_live: bool,
    superseded_by: Option<NodeId>,
    known_epoch: u64,
    heard: &[HeardPartner],
) -> Result<NodeId, String> {
    if hosting_live {
        return Ok(me);
    }
    let best = heard
        .iter()
        .filter(|p| p.hosts_authority)
        .max_by_key(|p| (p.epoch, std::cmp::Reverse(p.id)));
    if let Some(p) = best {
        if p.epoch >= known_epoch {
            return Ok(p.id);
        }
        return Err(format!(
            "node {} announces the authority at epoch {}, older than this node's configuration (epoch {known_epoch}): a stale authority gets no vote",
            p.id.0, p.epoch
        ));
    }
    if let Some(n) = superseded_by {
        return Ok(n);
    }
    nodes
        .iter()
        .min()
        .copied()
        .ok_or_else(|| "no nodes".to_string())
}

/// The authority hosted here (at epoch `mine`) must stand down when a partner knows a newer
/// epoch (a takeover happened while this node was away or cut off), or hosts the
/// authority at the same epoch and has the lower id. Returns the partner it yields to.
pub fn majority_stand_down(me: NodeId, mine: u64, heard: &[HeardPartner]) -> Option<(NodeId, u64)> {
    heard
        .iter()
        .filter(|p| p.epoch > mine || (p.hosts_authority && p.epoch == mine && p.id < me))
        .max_by_key(|p| (p.hosts_authority, p.epoch, std::cmp::Reverse(p.id)))
        .map(|p| (p.id, p.epoch))
}

/// The authority hosted here may grant leases and remove members only while it has a
/// majority: itself plus at least one partner whose request reached it within `window`
/// (`last_votes`: when each partner last asked). Without it, it holds (no lease, no
/// removal), so a node cut off from both others stops serving when its lease ends and
/// never goes on alone.
pub fn has_majority(nodes: usize, last_votes: &[Option<Duration>], window: Duration) -> bool {
    let votes = 1 + last_votes
        .iter()
        .filter(|ago| ago.is_some_and(|a| a <= window))
        .count();
    2 * votes > nodes
}

/// What a node of a three-node majority device knows when it considers a takeover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MajorityTakeoverInput {
    pub me: NodeId,
    /// This node hosts a live authority for the device already.
    pub hosting: bool,
    /// The node whose authority this node follows.
    pub authority: NodeId,
    /// Time since anything authentic came from it (heartbeat on any link, or an answer of
    /// its API). None: nothing since this process started.
    pub silent_for: Option<Duration>,
    /// The lease the authority grants plus its margin.
    pub lease_plus_margin: Duration,
    /// The third node, if heard within the heartbeat timeout.
    pub other: Option<HeardPartner>,
    /// The newest configuration this node saw.
    pub newest: Option<EpochConfig>,
}

/// Three data nodes under node majority: this node takes the authority over when all hold:
/// - the node holding it has been silent for longer than a lease plus margin (so every
///   lease it granted has ended, and its own: it stops when it loses its majority);
/// - the third node is heard and has lost the authority too (majority: two of three agree
///   it is gone; an authority still heard by the third node keeps its majority, and this
///   node just stops serving);
/// - this node is synchronized in the newest configuration it saw, and the third node does
///   not know a newer one;
/// - of the two survivors, this node is the one to act: the third node is not
///   synchronized, or has the higher id. So two survivors never both take over; the other
///   follows the new authority when it announces itself.
///
/// The new configuration has an epoch above every one this node saw and the old authority
/// node out. A node alone (no third node heard) never takes over.
pub fn decide_majority_takeover(i: &MajorityTakeoverInput) -> Takeover {
    if i.hosting {
        return Takeover::Stay("already the authority");
    }
    if i.authority == i.me {
        return Takeover::Stay("this node is the authority by configuration");
    }
    let Some(silent) = i.silent_for else {
        return Takeover::Stay("the authority node was never heard since this process started");
    };
    if silent <= i.lease_plus_margin {
        return Takeover::Stay("the authority node was heard within a lease plus margin");
    }
    let Some(other) = &i.other else {
        return Takeover::Stay("no majority: the third node is not heard either");
    };
    if other.id == i.authority {
        return Takeover::Stay("the third node is the authority node");
    }
    if !other.lost_authority {
        return Takeover::Stay("the third node still hears the authority: it keeps its majority");
    }
    let Some(newest) = &i.newest else {
        return Takeover::Stay("no configuration seen yet: this replica may be stale");
    };
    if newest.state_of(i.me) != MemberState::Synchronized {
        return Takeover::Stay("this replica is not synchronized: its copy is not the cluster's");
    }
    if other.epoch > newest.epoch.0 {
        return Takeover::Stay("the third node knows a newer configuration: it decides");
    }
    if newest.state_of(other.id) == MemberState::Synchronized && other.id < i.me {
        return Takeover::Stay("the third node has the lower id: it takes over, this node follows");
    }
    match takeover_config(newest, i.authority) {
        Some(c) => Takeover::TakeOver(c),
        None => Takeover::Stay("no synchronized member would remain"),
    }
}

/// How far a takeover's epoch skips above the newest one the taker saw.
pub const TAKEOVER_EPOCH_GAP: u64 = 1000;

/// The configuration a node issues when it takes the authority over from `authority`:
/// that node out, and an epoch [`TAKEOVER_EPOCH_GAP`] above the newest this node saw, with
/// a generation of its own. The old authority may have issued configurations this node
/// never saw, in the moments before it went silent (found by the vote simulation, hb2 seed
/// 1348: a join issued 50 ms before that control service crashed). An epoch one above the
/// newest seen could then equal one of them, with other members, and even the same
/// generation id (`GenerationId::for_config` of the same epoch and sequencer): engines keep
/// the first configuration of an epoch they see, and two histories would share one
/// generation. An authority issues a handful of configurations per second at most, so a
/// silent one (stopped, crashed, paused) never crosses the gap; one alive behind a total
/// partition is the split brain the heartbeat strategy accepts, detected when they meet.
pub fn takeover_config(newest: &EpochConfig, authority: NodeId) -> Option<EpochConfig> {
    let mut c = if newest.state_of(authority) == MemberState::Out {
        newest.next(&[])
    } else {
        newest.next(&[(authority, MemberState::Out)])
    }?;
    c.epoch = Epoch(c.epoch.0 + TAKEOVER_EPOCH_GAP);
    if c.generation != newest.generation {
        c.generation = GenerationId::for_config(c.epoch, c.sequencer);
    }
    Some(c)
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
            resync_latency_target_ms: tandem_config::DEFAULT_RESYNC_LATENCY_TARGET_MS,
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
            resync_latency_target_ms: tandem_config::DEFAULT_RESYNC_LATENCY_TARGET_MS,
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
            leased_when_last_heard: true,
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
            (
                "silent past lease+margin",
                |_| {},
                Some(2 + TAKEOVER_EPOCH_GAP),
            ),
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
            (
                "no lease when the authority was last heard (maybe removed)",
                |i| i.leased_when_last_heard = false,
                None,
            ),
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
                assert_eq!(c.epoch, Epoch(first_out.epoch.0 + 1 + TAKEOVER_EPOCH_GAP));
                assert_eq!(c.generation, first_out.generation);
            }
            other => panic!("{other:?}"),
        }
    }
}

#[cfg(test)]
mod three_node_tests {
    use super::*;
    use tandem_ha::Epoch;

    const A: NodeId = NodeId(1);
    const B: NodeId = NodeId(2);
    const C: NodeId = NodeId(3);

    fn heard(id: NodeId, epoch: u64, hosts: bool, lost: bool) -> HeardPartner {
        HeardPartner {
            id,
            epoch,
            hosts_authority: hosts,
            lost_authority: lost,
        }
    }

    fn start() -> EpochConfig {
        EpochConfig::initial(&[A, B, C])
    }

    /// `me` considers taking over from A (silent), the third node `other` heard.
    fn input(me: NodeId, other: Option<HeardPartner>) -> MajorityTakeoverInput {
        MajorityTakeoverInput {
            me,
            hosting: false,
            authority: A,
            silent_for: Some(Duration::from_millis(2100)),
            lease_plus_margin: Duration::from_millis(2000),
            other,
            newest: Some(start()),
        }
    }

    fn takes_over(i: &MajorityTakeoverInput) -> Option<EpochConfig> {
        match decide_majority_takeover(i) {
            Takeover::TakeOver(c) => Some(c),
            Takeover::Stay(_) => None,
        }
    }

    #[test]
    fn two_survivors_pick_the_same_new_host_and_it_removes_the_old_one() {
        let at_b = takes_over(&input(B, Some(heard(C, 1, false, true))));
        let at_c = takes_over(&input(C, Some(heard(B, 1, false, true))));
        let c = at_b.expect("B, the lower surviving id, takes over");
        assert!(at_c.is_none(), "C follows B: never both");
        assert_eq!(
            c.epoch,
            Epoch(2 + TAKEOVER_EPOCH_GAP),
            "an epoch above every one seen, with the gap"
        );
        assert_eq!(c.state_of(A), MemberState::Out);
        assert_eq!(c.state_of(B), MemberState::Synchronized);
        assert_eq!(c.state_of(C), MemberState::Synchronized);
        assert_ne!(c.sequencer, A);
    }

    #[test]
    fn an_isolated_minority_never_takes_over() {
        // Nothing heard from the third node: no majority, whatever else holds.
        for me in [B, C] {
            assert!(takes_over(&input(me, None)).is_none(), "{me:?} alone");
        }
        // Heard, but it still hears the authority (only this node's link to A is cut):
        // the authority keeps its majority with the third node.
        assert!(takes_over(&input(B, Some(heard(C, 1, false, false)))).is_none());
    }

    #[test]
    fn the_takeover_waits_for_the_old_leases() {
        for silent in [None, Some(300), Some(2000)] {
            let mut i = input(B, Some(heard(C, 1, false, true)));
            i.silent_for = silent.map(Duration::from_millis);
            assert!(takes_over(&i).is_none(), "silent {silent:?}");
        }
    }

    #[test]
    fn only_a_synchronized_up_to_date_survivor_takes_over() {
        // B syncing (from A): C, synchronized, takes over even with the higher id.
        let b_syncing = start().next(&[(B, MemberState::Syncing)]).unwrap();
        let mut at_b = input(B, Some(heard(C, 2, false, true)));
        at_b.newest = Some(b_syncing.clone());
        let mut at_c = input(C, Some(heard(B, 2, false, true)));
        at_c.newest = Some(b_syncing);
        assert!(takes_over(&at_b).is_none());
        let c = takes_over(&at_c).expect("C takes over");
        assert_eq!(c.state_of(A), MemberState::Out);
        assert_eq!(c.sequencer, C);
        // A survivor that knows an older configuration than the third node stays.
        let mut behind = input(B, Some(heard(C, 5, false, true)));
        behind.newest = Some(start());
        assert!(takes_over(&behind).is_none());
        // No configuration, or hosting already: stay.
        let mut none = input(B, Some(heard(C, 1, false, true)));
        none.newest = None;
        assert!(takes_over(&none).is_none());
        let mut hosting = input(B, Some(heard(C, 1, false, true)));
        hosting.hosting = true;
        assert!(takes_over(&hosting).is_none());
    }

    #[test]
    fn a_returning_old_authority_stands_down_and_follows() {
        // A comes back hosting epoch 1; B took over at epoch 2 and C knows it.
        assert_eq!(
            majority_stand_down(A, 1, &[heard(B, 2, true, false), heard(C, 2, false, false)]),
            Some((B, 2))
        );
        // Only C heard (B still away): A stands down all the same.
        assert_eq!(
            majority_stand_down(A, 1, &[heard(C, 2, false, false)]),
            Some((C, 2))
        );
        // The current authority does not stand down for an older or equal one.
        assert_eq!(majority_stand_down(B, 2, &[heard(A, 1, true, false)]), None);
        assert_eq!(majority_stand_down(A, 2, &[heard(B, 2, true, false)]), None);
        assert_eq!(
            majority_stand_down(B, 2, &[heard(A, 2, true, false)]),
            Some((A, 2)),
            "equal epochs: the lower id wins"
        );
        // It then follows the announcer with the highest epoch...
        let nodes = [A, B, C];
        let heard_now = [heard(B, 2, true, false), heard(C, 2, false, false)];
        assert_eq!(
            majority_place(A, &nodes, false, Some(B), 0, &heard_now),
            Ok(B)
        );
        // ... and C never votes for the stale one.
        assert!(majority_place(C, &nodes, false, None, 2, &[heard(A, 1, true, false)]).is_err());
        assert_eq!(
            majority_place(
                C,
                &nodes,
                false,
                None,
                2,
                &[heard(A, 1, true, false), heard(B, 2, true, false)]
            ),
            Ok(B)
        );
    }

    #[test]
    fn place_defaults_to_the_lowest_id_and_prefers_hosting_here() {
        let nodes = [A, B, C];
        assert_eq!(majority_place(A, &nodes, false, None, 0, &[]), Ok(A));
        assert_eq!(majority_place(C, &nodes, false, None, 0, &[]), Ok(A));
        assert_eq!(
            majority_place(B, &nodes, true, None, 7, &[heard(C, 9, true, false)]),
            Ok(B)
        );
        assert_eq!(majority_place(C, &nodes, false, Some(B), 3, &[]), Ok(B));
    }

    #[test]
    fn an_authority_serves_only_with_a_majority_of_votes() {
        let w = Duration::from_millis(1500);
        let ms = |m| Some(Duration::from_millis(m));
        assert!(has_majority(3, &[ms(100), None], w));
        assert!(has_majority(3, &[None, ms(1500)], w));
        assert!(!has_majority(3, &[None, None], w), "alone: no majority");
        assert!(!has_majority(3, &[ms(1600), ms(4000)], w), "votes too old");
    }

    #[test]
    fn three_node_majority_is_recognised() {
        use tandem_config::{LinkPair, PartnerConfig};
        let partner = |n: u8| PartnerConfig {
            name: format!("n{n}"),
            node_id: n,
            sync_links: vec!["127.0.0.1:1=127.0.0.2:1".parse::<LinkPair>().unwrap()],
            heartbeat_links: vec![],
        };
        let mut r = ReplicationConfig {
            node_id: 1,
            secret_file: "/s".into(),
            failover: FailoverStrategy::NodeMajority,
            priority: Priority::First,
            journal: Default::default(),
            journal_location: None,
            resync_latency_target_ms: tandem_config::DEFAULT_RESYNC_LATENCY_TARGET_MS,
            witness: None,
            witness_file: None,
            partners: vec![partner(2), partner(3)],
        };
        assert!(is_three_node_majority(&r));
        r.witness = Some("w".into());
        assert!(!is_three_node_majority(&r));
        r.witness = None;
        r.failover = FailoverStrategy::Heartbeat;
        assert!(!is_three_node_majority(&r));
        r.failover = FailoverStrategy::NodeMajority;
        r.partners.pop();
        assert!(!is_three_node_majority(&r));
    }
}
