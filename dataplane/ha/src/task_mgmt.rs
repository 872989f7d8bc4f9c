//! Task management functions carried to every synchronized partner (LOGICAL UNIT RESET,
//! CLEAR TASK SET): which ones this node took from a host and which partners have not
//! applied them yet. Pure bookkeeping; the engine sends, answers and asks for verdicts.

use std::collections::{BTreeMap, BTreeSet};

use crate::types::{HostTag, NodeId, OpId, Time};

/// One function taken from a host here, waiting for partners.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PendingTaskMgmt {
    pub tag: HostTag,
    /// Partners that have not acknowledged it.
    pub waiting: BTreeSet<NodeId>,
    /// When it was sent (for the peer timeout).
    pub since: Time,
}

/// Every function in flight from this node.
#[derive(Debug, Default)]
pub(crate) struct TaskMgmtOps {
    pending: BTreeMap<OpId, PendingTaskMgmt>,
}

impl TaskMgmtOps {
    /// Starts waiting for `partners`. Returns the tag back if there is nobody to wait for.
    pub fn start(
        &mut self,
        id: OpId,
        tag: HostTag,
        partners: BTreeSet<NodeId>,
        now: Time,
    ) -> Option<HostTag> {
        if partners.is_empty() {
            return Some(tag);
        }
        self.pending.insert(
            id,
            PendingTaskMgmt {
                tag,
                waiting: partners,
                since: now,
            },
        );
        None
    }

    /// `from` applied `id`. Returns the host tag if that was the last partner.
    pub fn acked(&mut self, id: OpId, from: NodeId) -> Option<HostTag> {
        let p = self.pending.get_mut(&id)?;
        p.waiting.remove(&from);
        if p.waiting.is_empty() {
            return self.pending.remove(&id).map(|p| p.tag);
        }
        None
    }

    /// The configuration changed: only partners that are still synchronized (`keep`) are
    /// waited for (one that left gets the reset's effect from its resync and the ALUA
    /// change it sees when it serves again). Returns the tags now complete.
    pub fn retain_partners(&mut self, keep: impl Fn(NodeId) -> bool) -> Vec<HostTag> {
        let mut done = Vec::new();
        self.pending.retain(|_, p| {
            p.waiting.retain(|n| keep(*n));
            if p.waiting.is_empty() {
                done.push(p.tag);
                false
            } else {
                true
            }
        });
        done
    }

    /// Drops everything (this node stops serving); returns the tags to answer NOT READY.
    pub fn drain(&mut self) -> Vec<HostTag> {
        std::mem::take(&mut self.pending)
            .into_values()
            .map(|p| p.tag)
            .collect()
    }

    /// Partners waited for longer than `timeout_ns` (or all, with `None`).
    pub fn awaited(&self, now: Time, older_than: Option<u64>) -> BTreeSet<NodeId> {
        self.pending
            .values()
            .filter(|p| older_than.is_none_or(|t| now.0.saturating_sub(p.since.0) > t))
            .flat_map(|p| p.waiting.iter().copied())
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn len(&self) -> usize {
        self.pending.len()
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

    #[test]
    fn complete_after_the_last_ack_or_when_nobody_is_left() {
        let mut t = TaskMgmtOps::default();
        assert_eq!(
            t.start(op(1), HostTag(7), BTreeSet::new(), Time(0)),
            Some(HostTag(7))
        );
        let both: BTreeSet<NodeId> = [NodeId(2), NodeId(3)].into();
        assert_eq!(t.start(op(2), HostTag(8), both.clone(), Time(0)), None);
        assert_eq!(t.acked(op(2), NodeId(2)), None);
        assert_eq!(
            t.acked(op(2), NodeId(2)),
            None,
            "a duplicate ack changes nothing"
        );
        assert_eq!(t.acked(op(9), NodeId(3)), None, "unknown id");
        assert_eq!(t.acked(op(2), NodeId(3)), Some(HostTag(8)));
        assert!(t.is_empty());
        // A partner that leaves is no longer waited for.
        t.start(op(3), HostTag(9), both, Time(10));
        assert_eq!(
            t.awaited(Time(100), Some(50)),
            [NodeId(2), NodeId(3)].into()
        );
        assert!(t.awaited(Time(20), Some(50)).is_empty());
        assert!(t.retain_partners(|n| n == NodeId(3)).is_empty());
        assert_eq!(t.retain_partners(|_| false), vec![HostTag(9)]);
        t.start(op(4), HostTag(10), [NodeId(2)].into(), Time(0));
        assert_eq!(t.drain(), vec![HostTag(10)]);
        assert_eq!(t.len(), 0);
    }
}
