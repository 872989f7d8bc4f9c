//! Persistent reservation state carried across nodes (issue 9e): the engine's copy of the
//! logical unit's PR state (an opaque blob the SCSI layer encodes), its version, and the
//! bookkeeping of changes in flight. Pure; the engine sends, answers and asks for verdicts.
//!
//! A change is a compare-and-swap on the version, ordered by the sequencer: the origin
//! computes the new state from the version it holds and sends it with that version as its
//! base; the sequencer takes one change at a time (the "lock key" is this one queue), refuses
//! one whose base is no longer current (the origin recomputes from the state the sequencer
//! sent it meanwhile, as a COMPARE AND WRITE that miscompares), applies it, sends it to every
//! member that receives writes, and answers the origin once each applied it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::types::{Epoch, HostTag, NodeId, OpId, Time};

/// Largest PR state, and largest notice, a change may carry: both travel in one mirror
/// frame's body, whose length field is 16 bits (tandem-mirror checks the same bound when it
/// decodes). The LU refuses a change whose state would be larger.
pub const PR_BLOB_MAX: usize = 16 * 1024;

/// The version of a PR state. Only the sequencer issues versions, numbered from the epoch in
/// which it took over (`epoch`), so two states with the same version are the same state
/// even across sequencer changes (a change half applied by a former sequencer has a version
/// of an older `epoch`, and the new sequencer's pushed state supersedes it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PrVersion {
    pub epoch: Epoch,
    pub n: u64,
}

/// A change queued at the sequencer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PrChange {
    pub id: OpId,
    pub base: PrVersion,
    pub state: Vec<u8>,
    pub notice: Vec<u8>,
}

/// The change the sequencer is applying: members that have not acknowledged it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ActiveChange {
    pub id: OpId,
    pub waiting: BTreeSet<NodeId>,
    pub since: Time,
}

/// What the sequencer does with the next queued change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Its base is not the current version: tell the origin to recompute.
    Stale(OpId),
    /// Apply it as `version`.
    Apply(PrChange, PrVersion),
}

#[derive(Debug, Default)]
pub(crate) struct ClusterPr {
    version: PrVersion,
    state: Vec<u8>,
    /// The epoch this node's sequencer role started in (the `epoch` of versions it issues).
    stamp: Option<Epoch>,
    /// Sequencer: changes waiting for their turn, and the one being applied.
    queue: VecDeque<PrChange>,
    active: Option<ActiveChange>,
    /// Origin: this node's host changes waiting for the sequencer's answer (kept whole: they
    /// are sent again to a new sequencer).
    own: BTreeMap<OpId, (HostTag, Time, PrChange)>,
    /// The first `n` this process stamps with (from its boot id): a node restarted within
    /// the epoch it sequenced in before never issues a version it issued then.
    boot_floor: u64,
}

impl ClusterPr {
    pub fn new(boot_id: u32) -> Self {
        ClusterPr {
            boot_floor: u64::from(boot_id) << 32,
            ..ClusterPr::default()
        }
    }

    pub fn version(&self) -> PrVersion {
        self.version
    }

    pub fn state(&self) -> &[u8] {
        &self.state
    }

    /// Adopts a state the sequencer sent (a change, a push at takeover or before
    /// `SyncComplete`), or one loaded at start (APTPL).
    pub fn set(&mut self, version: PrVersion, state: Vec<u8>) {
        self.version = version;
        self.state = state;
    }

    /// This node became the sequencer in `epoch`: it restamps its state as the first version
    /// of its role (returned, to push to every member).
    pub fn take_over(&mut self, epoch: Epoch) -> PrVersion {
        self.stamp = Some(epoch);
        self.queue.clear();
        self.active = None;
        let next = if self.version.epoch == epoch {
            self.version.n + 1
        } else {
            0
        };
        self.version = PrVersion {
            epoch,
            n: next.max(self.boot_floor),
        };
        self.version
    }

    /// Sequencer: a change arrived (from this node or forwarded).
    pub fn enqueue(&mut self, change: PrChange) {
        self.queue.push_back(change);
    }

    /// Sequencer: the next change to decide, if none is being applied. An applied one becomes
    /// the current state at once (this node applies it first).
    pub fn next(&mut self) -> Option<Next> {
        if self.active.is_some() {
            return None;
        }
        let c = self.queue.pop_front()?;
        if c.base != self.version {
            return Some(Next::Stale(c.id));
        }
        let version = PrVersion {
            epoch: self.stamp.unwrap_or(self.version.epoch),
            n: self.version.n + 1,
        };
        self.version = version;
        self.state.clone_from(&c.state);
        Some(Next::Apply(c, version))
    }

    /// Sequencer: `id` was sent to `waiting`. Returns true if there is nobody to wait for.
    pub fn start(&mut self, id: OpId, waiting: BTreeSet<NodeId>, now: Time) -> bool {
        if waiting.is_empty() {
            return true;
        }
        self.active = Some(ActiveChange {
            id,
            waiting,
            since: now,
        });
        false
    }

    /// Sequencer: `from` applied `id`. Returns the id if that completed it.
    pub fn acked(&mut self, id: OpId, from: NodeId) -> Option<OpId> {
        let a = self.active.as_mut().filter(|a| a.id == id)?;
        a.waiting.remove(&from);
        self.finish_if_done()
    }

    /// Sequencer: only members that still receive writes are waited for (one that left gets
    /// the state with its resync). Returns the id if that completed the active change.
    pub fn retain_members(&mut self, keep: impl Fn(NodeId) -> bool) -> Option<OpId> {
        self.active.as_mut()?.waiting.retain(|n| keep(*n));
        self.finish_if_done()
    }

    fn finish_if_done(&mut self) -> Option<OpId> {
        if self.active.as_ref().is_some_and(|a| a.waiting.is_empty()) {
            return self.active.take().map(|a| a.id);
        }
        None
    }

    /// Origin: a host change sent to the sequencer.
    pub fn wait_own(&mut self, tag: HostTag, now: Time, change: PrChange) {
        self.own.insert(change.id, (tag, now, change));
    }

    /// Origin: the sequencer answered `id`.
    pub fn own_done(&mut self, id: OpId) -> Option<HostTag> {
        self.own.remove(&id).map(|(tag, _, _)| tag)
    }

    /// Origin: the sequencer changed; every own change goes to the new one (which finds its
    /// base stale, as it restamped its state: the LU recomputes from the state pushed to it,
    /// in which a change the former sequencer completed is already present).
    pub fn resend_own(&mut self, now: Time) -> Vec<PrChange> {
        self.own
            .values_mut()
            .map(|(_, since, c)| {
                *since = now;
                c.clone()
            })
            .collect()
    }

    /// Drops the sequencer role's queue and the change being applied (its members keep what
    /// they applied; a new sequencer pushes its own state).
    pub fn drop_sequencing(&mut self) {
        self.queue.clear();
        self.active = None;
        self.stamp = None;
    }

    /// Whether this node sequences changes (it restamped its state for the role).
    pub fn stamped(&self) -> bool {
        self.stamp.is_some()
    }

    /// Origin: every own change ends (the sequencer changed or this node stops serving):
    /// the tags to answer NOT READY (whether a change took effect is then unknown, as for a
    /// write answered NOT READY).
    pub fn drain_own(&mut self) -> Vec<HostTag> {
        std::mem::take(&mut self.own)
            .into_values()
            .map(|(tag, _, _)| tag)
            .collect()
    }

    /// Partners waited for longer than `older_than` (or all, with `None`): the members that
    /// have not applied the active change, and the sequencer if an own change is late.
    pub fn awaited(
        &self,
        now: Time,
        older_than: Option<u64>,
        sequencer: NodeId,
    ) -> BTreeSet<NodeId> {
        let late = |since: Time| older_than.is_none_or(|t| now.0.saturating_sub(since.0) > t);
        let mut set = BTreeSet::new();
        if let Some(a) = self.active.as_ref().filter(|a| late(a.since)) {
            set.extend(a.waiting.iter().copied());
        }
        if self.own.values().any(|(_, since, _)| late(*since)) {
            set.insert(sequencer);
        }
        set
    }

    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.active.is_none() && self.own.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(n: u64) -> OpId {
        OpId {
            origin: NodeId(1),
            n,
        }
    }

    fn change(n: u64, base: PrVersion, state: u8) -> PrChange {
        PrChange {
            id: op(n),
            base,
            state: vec![state],
            notice: Vec::new(),
        }
    }

    #[test]
    fn changes_are_applied_one_at_a_time_and_stale_bases_are_refused() {
        let mut pr = ClusterPr::default();
        let v0 = pr.take_over(Epoch(3));
        assert_eq!(
            v0,
            PrVersion {
                epoch: Epoch(3),
                n: 0
            }
        );
        pr.enqueue(change(1, v0, 7));
        pr.enqueue(change(2, v0, 8));
        let Some(Next::Apply(c, v1)) = pr.next() else {
            panic!("first applies")
        };
        assert_eq!((c.id, v1.n, pr.state()), (op(1), 1, &[7u8][..]));
        assert!(!pr.start(op(1), [NodeId(2), NodeId(3)].into(), Time(0)));
        assert_eq!(pr.next(), None, "one change at a time");
        assert_eq!(pr.acked(op(1), NodeId(2)), None);
        assert_eq!(pr.acked(op(9), NodeId(3)), None, "unknown id");
        assert_eq!(
            pr.awaited(Time(100), Some(50), NodeId(1)),
            [NodeId(3)].into()
        );
        assert_eq!(pr.retain_members(|n| n != NodeId(3)), Some(op(1)));
        // The second was computed from v0: refused, the origin recomputes.
        assert_eq!(pr.next(), Some(Next::Stale(op(2))));
        assert_eq!(pr.next(), None);
        assert!(pr.is_idle());
    }

    #[test]
    fn a_new_sequencer_restamps_its_state() {
        let mut pr = ClusterPr::default();
        pr.set(
            PrVersion {
                epoch: Epoch(2),
                n: 5,
            },
            vec![1],
        );
        pr.wait_own(HostTag(9), Time(0), change(4, PrVersion::default(), 1));
        assert_eq!(pr.resend_own(Time(5)).len(), 1);
        let v = pr.take_over(Epoch(4));
        assert_eq!(
            (v, pr.state()),
            (
                PrVersion {
                    epoch: Epoch(4),
                    n: 0
                },
                &[1u8][..]
            )
        );
        assert!(
            v > PrVersion {
                epoch: Epoch(2),
                n: 5
            }
        );
        assert_eq!(pr.drain_own(), vec![HostTag(9)]);
        assert!(pr.is_idle());
        // Restamped in the same epoch (it lost the role and got it back): never an issued
        // version again.
        pr.drop_sequencing();
        assert_eq!(pr.take_over(Epoch(4)).n, 1);
        // A restarted process sequencing in the epoch it used before its restart starts
        // above every number it could have issued then.
        let mut restarted = ClusterPr::new(7);
        restarted.set(PrVersion::default(), vec![1]);
        let v = restarted.take_over(Epoch(4));
        assert_eq!(v.n, 7 << 32);
    }
}
