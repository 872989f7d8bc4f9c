//! Per-I_T-nexus unit attention queues.

use std::collections::{HashMap, VecDeque};

use crate::sense::Sense;

/// Bound on queued UAs per nexus: older conditions beyond it are dropped
/// (the initiator will re-read state anyway after any UA).
const UA_QUEUE_MAX: usize = 16;

/// Unit attention conditions pending per nexus id, reported oldest first.
#[derive(Default, Debug)]
pub struct UaTable {
    queues: HashMap<u64, VecDeque<Sense>>,
}

impl UaTable {
    /// Starts tracking a nexus (no pending UA).
    pub fn track(&mut self, nexus_id: u64) {
        self.queues.entry(nexus_id).or_default();
    }

    pub fn forget(&mut self, nexus_id: u64) {
        self.queues.remove(&nexus_id);
    }

    pub fn is_tracked(&self, nexus_id: u64) -> bool {
        self.queues.contains_key(&nexus_id)
    }

    /// Queues `ua` for one nexus; a condition already pending is not repeated.
    pub fn push(&mut self, nexus_id: u64, ua: Sense) {
        let q = self.queues.entry(nexus_id).or_default();
        // A reset supersedes everything older (SAM-5 unit attention
        // precedence: power on / reset conditions clear the others).
        if ua.asc == 0x29 {
            q.clear();
        }
        if q.iter().any(|s| s.triple() == ua.triple()) {
            return;
        }
        if q.len() >= UA_QUEUE_MAX {
            q.pop_front();
        }
        q.push_back(ua);
    }

    /// Queues `ua` for every tracked nexus except `except`.
    pub fn push_all(&mut self, ua: Sense, except: Option<u64>) {
        let ids: Vec<u64> = self
            .queues
            .keys()
            .copied()
            .filter(|id| Some(*id) != except)
            .collect();
        for id in ids {
            self.push(id, ua);
        }
    }

    /// Takes the oldest pending UA of a nexus.
    pub fn pop(&mut self, nexus_id: u64) -> Option<Sense> {
        self.queues.get_mut(&nexus_id)?.pop_front()
    }

    #[cfg(test)]
    pub fn pending(&self, nexus_id: u64) -> usize {
        self.queues.get(&nexus_id).map_or(0, VecDeque::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_dedup_and_reset_precedence() {
        let mut t = UaTable::default();
        t.track(1);
        t.push(1, Sense::capacity_changed());
        t.push(1, Sense::mode_parameters_changed());
        t.push(1, Sense::capacity_changed());
        assert_eq!(t.pending(1), 2);
        assert_eq!(t.pop(1), Some(Sense::capacity_changed()));
        t.push(1, Sense::lun_reset_occurred());
        assert_eq!(t.pop(1), Some(Sense::lun_reset_occurred()));
        assert_eq!(t.pop(1), None);
    }

    #[test]
    fn push_all_skips_origin() {
        let mut t = UaTable::default();
        t.track(1);
        t.track(2);
        t.push_all(Sense::mode_parameters_changed(), Some(1));
        assert_eq!(t.pending(1), 0);
        assert_eq!(t.pending(2), 1);
    }
}
