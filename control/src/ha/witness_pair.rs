//! Node majority with a witness node (`witness = NAME`): the two data nodes take the vote
//! over together when the witness is lost, and give it back when it returns. Pure
//! decisions (no I/O, no clock); the driver (`driver.rs`), the API (`api.rs`) and the vote
//! simulation (`vote_sim`) apply them.
//!
//! The witness is a third voter without data. Normally it hosts the device's authority, and
//! the witness plus either data node is a majority. When neither data node has had an answer
//! from it for longer than a lease plus margin, the two data nodes are two of three votes:
//! - one of them (the synchronized one, the lower id if both are) takes the authority over
//!   ([`decide_pair_takeover`]) only when the other one's heartbeats say it lost the witness
//!   too (flag "lost authority"), as in the three-data-node majority;
//! - the new authority starts *cold* at an epoch [`PAIR_TAKEOVER_EPOCH_GAP`] above every one
//!   the taker saw, persisted before use: it issues nothing until both data nodes sent their
//!   replica metadata, and then picks the newer copy as the source. So a configuration the
//!   witness issued with one data node just before the other one took over (the witness may
//!   have been cut off, not dead) is never overwritten: that node's copy is the newer one.
//!   Both votes are needed by construction; the partner's death before it sends its
//!   metadata leaves the taker with nothing to serve (two failures);
//! - the authority on a data node holds (no lease, no removal) while its partner has not
//!   asked it within a lease (`strategy::has_majority` with three voters): the last node
//!   never goes on alone;
//! - every request a data node sends to the witness carries a fence: the newest epoch it
//!   knows, its partner's announced authority included, persisted on the data node before it
//!   first asks that authority ([`fence`]). A witness whose authority's epoch is below the
//!   fence stands down for good (persisted) and grants nothing ([`witness_fenced`]). That is
//!   how a witness that returns learns of the takeover: from the first request that reaches
//!   it;
//! - once the data node hosting the authority gets any answer from the witness again, it
//!   stands down (persisted, grants nothing) and hands its configuration back at the next
//!   epoch ([`hand_back_config`]). The witness persists it and stays quiet for a lease plus
//!   margin (every lease the data node's authority granted has ended), and is then the
//!   authority again: the witness plus either data node is a majority once more.

use std::time::Duration;

use tandem_config::{FailoverStrategy, ReplicationConfig};
use tandem_ha::{compare, Epoch, EpochConfig, MemberState, NodeId, ReplicaMeta, SyncDecision};

use super::strategy::HeardPartner;

/// How far the cold authority of a pair takeover starts above the newest epoch the taker
/// saw (the witness may have issued configurations the taker never saw; see
/// `strategy::TAKEOVER_EPOCH_GAP`).
pub const PAIR_TAKEOVER_EPOCH_GAP: u64 = super::strategy::TAKEOVER_EPOCH_GAP;

/// Node majority with a witness node and two data nodes.
pub fn is_witness_pair(r: &ReplicationConfig) -> bool {
    r.failover == FailoverStrategy::NodeMajority && r.witness.is_some() && r.partners.len() == 1
}

/// Where a data node of a witness pair asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairPlace {
    /// The authority hosted on this node (taken over from the witness, not handed back).
    Here,
    /// The partner, which announces hosting the authority.
    Partner,
    /// The witness node.
    Witness,
}

/// This node's own live authority first; else the partner, if its heartbeat (within the
/// timeout) announces hosting the authority at an epoch not older than this node knows;
/// else the witness.
pub fn pair_place(
    hosting_live: bool,
    partner: Option<&HeardPartner>,
    known_epoch: u64,
) -> PairPlace {
    if hosting_live {
        return PairPlace::Here;
    }
    match partner {
        Some(p) if p.hosts_authority && p.epoch >= known_epoch => PairPlace::Partner,
        _ => PairPlace::Witness,
    }
}

/// The fence sent with every request to the witness: the newest epoch this node knows (its
/// configuration, what its partner announced, what it persisted before).
pub fn fence(known_epoch: u64, partner_epoch: Option<u64>, persisted: u64) -> u64 {
    known_epoch.max(partner_epoch.unwrap_or(0)).max(persisted)
}

/// The witness's authority (newest epoch `hosted`) must stand down: a data node knows a
/// newer epoch, so the data nodes took the vote over while the witness was away.
pub fn witness_fenced(hosted: Epoch, fence: Option<u64>) -> bool {
    fence.is_some_and(|f| f > hosted.0)
}

/// What a data node of a witness pair knows when it considers taking the vote over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairTakeoverInput {
    pub me: NodeId,
    /// This node hosts a live authority for the device already.
    pub hosting: bool,
    /// This node asks the witness (not a partner's authority).
    pub follows_witness: bool,
    /// Time since the witness last answered this node's request. None: not since this
    /// process started.
    pub witness_silent_for: Option<Duration>,
    pub lease_plus_margin: Duration,
    /// The partner, if heard within the heartbeat timeout.
    pub partner: Option<HeardPartner>,
    /// The newest configuration this node saw.
    pub newest: Option<EpochConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PairTakeover {
    Stay(&'static str),
    /// Host a cold authority whose first configuration is above `last_epoch`.
    TakeOver {
        last_epoch: Epoch,
    },
}

/// A data node takes the vote over from the witness when all hold:
/// - it asks the witness and hosts nothing; the witness has not answered it for longer than
///   a lease plus margin (so every lease the witness granted it has ended);
/// - the partner is heard and its heartbeats say it lost the witness too (the majority: two
///   of three agree the witness is gone; a node cut from the witness only gets no
///   takeover, the witness keeps its majority with the partner);
/// - the partner does not announce an authority;
/// - this node has the lower id. So the two never both take over. Whose copy is newer does
///   not matter here: the cold authority compares both nodes' metadata. (An earlier rule,
///   "the synchronized node acts, and not if the partner knows a newer configuration", left
///   a pair where neither acted: w2 seed 17479, a node syncing in a configuration its
///   partner never saw.)
///
/// The cold authority starts above the newest epoch either node knows, plus the gap.
pub fn decide_pair_takeover(i: &PairTakeoverInput) -> PairTakeover {
    if i.hosting {
        return PairTakeover::Stay("already the authority");
    }
    if !i.follows_witness {
        return PairTakeover::Stay("this node follows its partner's authority");
    }
    let Some(silent) = i.witness_silent_for else {
        return PairTakeover::Stay("the witness never answered since this process started");
    };
    if silent <= i.lease_plus_margin {
        return PairTakeover::Stay("the witness answered within a lease plus margin");
    }
    let Some(partner) = &i.partner else {
        return PairTakeover::Stay("no majority: the partner is not heard either");
    };
    if partner.hosts_authority {
        return PairTakeover::Stay("the partner hosts the authority: follow it");
    }
    if !partner.lost_authority {
        return PairTakeover::Stay("the partner still hears the witness: they keep the majority");
    }
    if partner.id < i.me {
        return PairTakeover::Stay(
            "the partner has the lower id: it takes over, this node follows",
        );
    }
    let newest = i
        .newest
        .as_ref()
        .map_or(0, |c| c.epoch.0)
        .max(partner.epoch);
    PairTakeover::TakeOver {
        last_epoch: Epoch(newest.saturating_add(PAIR_TAKEOVER_EPOCH_GAP)),
    }
}

/// The data node hosting the authority hands it back to the witness once the witness
/// answers again: only a live authority with a configuration (a cold one has nothing to
/// hand back; it waits for the partner).
pub fn should_hand_back(hosting_live: bool, has_config: bool, witness_answered: bool) -> bool {
    hosting_live && has_config && witness_answered
}

/// The configuration the witness hosts after a hand-back: the data node's, at the next
/// epoch (members, generation and lineage unchanged). The data node's authority stood down
/// (persisted) before it sent it, so that epoch is above every one it issued.
pub fn hand_back_config(current: &EpochConfig, last_epoch: Epoch) -> EpochConfig {
    let mut c = current.clone();
    c.epoch = Epoch(last_epoch.0.max(current.epoch.0).saturating_add(1));
    c
}

/// The witness accepts a hand-back only above every epoch it issued or stood down for.
pub fn accept_hand_back(own_last: Option<Epoch>, offered: Epoch) -> bool {
    match own_last {
        Some(e) => offered > e,
        None => true,
    }
}

/// The first configuration of an authority taken over from the witness, once every data
/// node sent its metadata (a join). The source is a copy at least as new as every other
/// (`tandem_ha::compare`); it keeps its generation and lineage, so the served generations
/// stay one line: a copy that went on alone with the witness (the other node removed)
/// stays the newest, and the other node resynchronizes from it. Copies in the same
/// generation both stay synchronized (as when the witness itself resumes after a pause).
/// Two copies that both went on alone (a split brain) give no source: nothing is issued,
/// an administrator decides.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PairColdStart {
    joins: std::collections::BTreeMap<NodeId, ReplicaMeta>,
}

impl PairColdStart {
    /// Node `from` sent its metadata; returns the configuration to issue above
    /// `last_epoch` when every node of `nodes` did.
    pub fn join(
        &mut self,
        nodes: &[NodeId],
        last_epoch: Epoch,
        from: NodeId,
        meta: ReplicaMeta,
    ) -> Option<EpochConfig> {
        if !nodes.contains(&from) {
            return None;
        }
        self.joins.insert(from, meta);
        if nodes.iter().any(|n| !self.joins.contains_key(n)) {
            return None;
        }
        let metas: Vec<(NodeId, &ReplicaMeta)> = self.joins.iter().map(|(n, m)| (*n, m)).collect();
        let source = metas.iter().find(|(n, m)| {
            metas.iter().filter(|(o, _)| o != n).all(|(o, om)| {
                matches!(
                    compare(*n, m, *o, om),
                    SyncDecision::InSync | SyncDecision::FastFromMe | SyncDecision::FullFromMe
                )
            })
        })?;
        let (source, source_meta) = (source.0, source.1.clone());
        let epoch = metas
            .iter()
            .map(|(_, m)| m.epoch.0)
            .max()
            .unwrap_or(0)
            .max(last_epoch.0)
            .saturating_add(1);
        let members = self
            .joins
            .iter()
            .map(|(n, m)| {
                let state = if m.current == source_meta.current {
                    MemberState::Synchronized
                } else {
                    MemberState::Syncing
                };
                (*n, state)
            })
            .collect();
        let mut lineage = source_meta.history.clone();
        lineage.truncate(tandem_ha::membership::LINEAGE_LEN);
        self.joins.clear();
        Some(EpochConfig {
            epoch: Epoch(epoch),
            sequencer: source,
            members,
            generation: source_meta.current,
            lineage,
            left_at: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: NodeId = NodeId(1);
    const B: NodeId = NodeId(2);

    fn heard(id: NodeId, epoch: u64, hosts: bool, lost: bool) -> HeardPartner {
        HeardPartner {
            id,
            epoch,
            hosts_authority: hosts,
            lost_authority: lost,
        }
    }

    fn input(me: NodeId, partner: Option<HeardPartner>) -> PairTakeoverInput {
        PairTakeoverInput {
            me,
            hosting: false,
            follows_witness: true,
            witness_silent_for: Some(Duration::from_millis(2100)),
            lease_plus_margin: Duration::from_millis(2000),
            partner,
            newest: Some(EpochConfig::initial(&[A, B])),
        }
    }

    fn takes(i: &PairTakeoverInput) -> Option<u64> {
        match decide_pair_takeover(i) {
            PairTakeover::TakeOver { last_epoch } => Some(last_epoch.0),
            PairTakeover::Stay(_) => None,
        }
    }

    #[test]
    fn both_lost_the_witness_the_lower_id_takes_over_cold_above_the_gap() {
        assert_eq!(
            takes(&input(A, Some(heard(B, 1, false, true)))),
            Some(1 + PAIR_TAKEOVER_EPOCH_GAP)
        );
        assert_eq!(takes(&input(B, Some(heard(A, 1, false, true)))), None);
    }

    #[test]
    fn no_takeover_without_the_partners_vote() {
        // Cut from the witness only: the partner still hears it.
        assert_eq!(takes(&input(A, Some(heard(B, 1, false, false)))), None);
        // The partner is not heard at all (two failures, or isolated): never alone.
        assert_eq!(takes(&input(A, None)), None);
        // The partner already hosts the authority: follow it.
        assert_eq!(takes(&input(B, Some(heard(A, 1001, true, false)))), None);
    }

    #[test]
    fn the_takeover_waits_for_the_witness_leases() {
        for silent in [None, Some(300), Some(2000)] {
            let mut i = input(A, Some(heard(B, 1, false, true)));
            i.witness_silent_for = silent.map(Duration::from_millis);
            assert_eq!(takes(&i), None, "{silent:?}");
        }
    }

    #[test]
    fn the_lower_id_acts_whatever_its_copy_above_the_newest_epoch_either_knows() {
        let a_syncing = EpochConfig::initial(&[A, B])
            .next(&[(A, MemberState::Syncing)])
            .unwrap();
        let mut at_a = input(A, Some(heard(B, 2, false, true)));
        at_a.newest = Some(a_syncing.clone());
        let mut at_b = input(B, Some(heard(A, 2, false, true)));
        at_b.newest = Some(a_syncing);
        assert_eq!(takes(&at_a), Some(2 + PAIR_TAKEOVER_EPOCH_GAP));
        assert_eq!(takes(&at_b), None);
        // Behind the partner (w2 seed 17479): it acts, above the partner's epoch.
        assert_eq!(
            takes(&input(A, Some(heard(B, 5, false, true)))),
            Some(5 + PAIR_TAKEOVER_EPOCH_GAP)
        );
        let mut blank = input(A, Some(heard(B, 7, false, true)));
        blank.newest = None;
        assert_eq!(takes(&blank), Some(7 + PAIR_TAKEOVER_EPOCH_GAP));
        let mut hosting = input(A, Some(heard(B, 1, false, true)));
        hosting.hosting = true;
        assert_eq!(takes(&hosting), None);
        let mut following = input(A, Some(heard(B, 1, false, true)));
        following.follows_witness = false;
        assert_eq!(takes(&following), None);
    }

    #[test]
    fn the_cold_start_waits_for_both_and_keeps_the_newer_copys_line() {
        let g = tandem_ha::GenerationId(10);
        let same = ReplicaMeta {
            current: g,
            epoch: Epoch(3),
            ..ReplicaMeta::default()
        };
        let mut start = PairColdStart::default();
        let last = Epoch(1003);
        assert_eq!(
            start.join(&[A, B], last, A, same.clone()),
            None,
            "one vote is not enough"
        );
        let c = start
            .join(&[A, B], last, B, same.clone())
            .expect("both sent");
        assert_eq!(c.epoch, Epoch(1004));
        assert_eq!(c.generation, g);
        assert_eq!(c.state_of(A), MemberState::Synchronized);
        assert_eq!(c.state_of(B), MemberState::Synchronized);
        // B went on alone with the witness (A removed): B's copy is the source.
        let mut b_alone = same.clone();
        b_alone.advance(tandem_ha::GenerationId(20), [A].into_iter());
        b_alone.epoch = Epoch(4);
        let mut start = PairColdStart::default();
        assert_eq!(start.join(&[A, B], last, B, b_alone.clone()), None);
        let c = start.join(&[A, B], last, A, same.clone()).unwrap();
        assert_eq!(c.sequencer, B);
        assert_eq!(c.generation, tandem_ha::GenerationId(20));
        assert_eq!(c.state_of(A), MemberState::Syncing);
        assert!(c.lineage.contains(&g));
        // Both went on alone: no source, nothing issued.
        let mut a_alone = same;
        a_alone.advance(tandem_ha::GenerationId(21), [B].into_iter());
        let mut start = PairColdStart::default();
        start.join(&[A, B], last, A, a_alone);
        assert_eq!(start.join(&[A, B], last, B, b_alone), None);
        // A stranger's join counts for nothing.
        assert_eq!(
            PairColdStart::default().join(&[A, B], last, NodeId(3), ReplicaMeta::default()),
            None
        );
    }

    #[test]
    fn place_prefers_here_then_a_current_partner_authority_then_the_witness() {
        assert_eq!(pair_place(true, None, 5), PairPlace::Here);
        assert_eq!(
            pair_place(false, Some(&heard(A, 1001, true, false)), 1),
            PairPlace::Partner
        );
        // A stale partner authority (older than what this node knows) gets no request.
        assert_eq!(
            pair_place(false, Some(&heard(A, 1001, true, false)), 1003),
            PairPlace::Witness
        );
        assert_eq!(
            pair_place(false, Some(&heard(A, 7, false, true)), 1),
            PairPlace::Witness
        );
        assert_eq!(pair_place(false, None, 1), PairPlace::Witness);
    }

    #[test]
    fn a_returning_witness_is_fenced_by_a_newer_epoch_and_takes_the_vote_back_above_it() {
        let f = fence(3, Some(1004), 0);
        assert_eq!(f, 1004);
        assert_eq!(
            fence(3, None, 1004),
            1004,
            "a persisted fence survives restarts"
        );
        assert!(witness_fenced(Epoch(3), Some(f)));
        assert!(!witness_fenced(Epoch(1004), Some(f)));
        assert!(!witness_fenced(Epoch(3), Some(3)), "the normal case");
        assert!(!witness_fenced(Epoch(3), None));
        let c = EpochConfig::initial(&[A, B]);
        let mut at_1004 = c.clone();
        at_1004.epoch = Epoch(1004);
        let back = hand_back_config(&at_1004, Epoch(1004));
        assert_eq!(back.epoch, Epoch(1005));
        assert_eq!(back.generation, c.generation, "the data is unchanged");
        assert_eq!(back.members, c.members);
        assert!(accept_hand_back(Some(Epoch(3)), back.epoch));
        assert!(accept_hand_back(None, back.epoch));
        assert!(!accept_hand_back(Some(Epoch(1005)), back.epoch));
        assert!(should_hand_back(true, true, true));
        assert!(
            !should_hand_back(true, false, true),
            "cold: nothing to hand back"
        );
        assert!(!should_hand_back(false, true, true));
        assert!(!should_hand_back(true, true, false));
    }
}
