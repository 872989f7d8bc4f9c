//! Range bookkeeping used by the engine: the sequencer's cluster-wide range locks (FIFO
//! among overlapping requests), and every replica's read barriers (ranges whose content may
//! still change under a read, so reads of them wait).

use std::collections::VecDeque;

use crate::types::BlockRange;

/// Range locks granted in arrival order among overlapping requests; non-overlapping requests
/// never wait for each other (the no-conflict write path takes a lock at once).
#[derive(Debug, Default)]
pub struct RangeLocks<K> {
    held: Vec<(BlockRange, K)>,
    waiting: VecDeque<(BlockRange, K)>,
}

impl<K: Copy + PartialEq> RangeLocks<K> {
    pub fn new() -> Self {
        RangeLocks {
            held: Vec::new(),
            waiting: VecDeque::new(),
        }
    }

    /// Request a lock: `true` if granted now, else it is queued and returned by a later
    /// `release`.
    pub fn acquire(&mut self, range: BlockRange, key: K) -> bool {
        let blocked = self.held.iter().any(|h| h.0.overlaps(&range))
            || self.waiting.iter().any(|w| w.0.overlaps(&range));
        if blocked {
            self.waiting.push_back((range, key));
            false
        } else {
            self.held.push((range, key));
            true
        }
    }

    /// Lock without regard to anyone (only used by a planted bug in tests).
    pub fn force(&mut self, range: BlockRange, key: K) {
        self.held.push((range, key));
    }

    /// Release `key`'s lock (or withdraw its request) and append newly granted keys to
    /// `granted`.
    pub fn release(&mut self, key: K, granted: &mut Vec<K>) {
        self.held.retain(|h| h.1 != key);
        self.waiting.retain(|w| w.1 != key);
        let mut i = 0;
        while i < self.waiting.len() {
            let range = self.waiting[i].0;
            let blocked = self.held.iter().any(|h| h.0.overlaps(&range))
                || self.waiting.iter().take(i).any(|w| w.0.overlaps(&range));
            if blocked {
                i += 1;
            } else {
                let (r, k) = self.waiting.remove(i).expect("index in range");
                self.held.push((r, k));
                granted.push(k);
            }
        }
    }

    pub fn is_held(&self, key: K) -> bool {
        self.held.iter().any(|h| h.1 == key)
    }

    pub fn held_overlaps(&self, range: &BlockRange) -> bool {
        self.held.iter().any(|h| h.0.overlaps(range))
    }

    pub fn clear(&mut self) {
        self.held.clear();
        self.waiting.clear();
    }

    pub fn len(&self) -> usize {
        self.held.len() + self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Ranges that reads must not see yet, each owned by a key (an operation or a region).
#[derive(Debug, Default)]
pub struct Barriers<K> {
    ranges: Vec<(BlockRange, K)>,
}

impl<K: Copy + PartialEq> Barriers<K> {
    pub fn new() -> Self {
        Barriers { ranges: Vec::new() }
    }

    pub fn add(&mut self, range: BlockRange, key: K) {
        self.ranges.push((range, key));
    }

    pub fn remove(&mut self, key: K) -> bool {
        let before = self.ranges.len();
        self.ranges.retain(|r| r.1 != key);
        before != self.ranges.len()
    }

    pub fn blocks(&self, range: &BlockRange) -> bool {
        self.ranges.iter().any(|r| r.0.overlaps(range))
    }

    pub fn keys(&self) -> impl Iterator<Item = K> + '_ {
        self.ranges.iter().map(|r| r.1)
    }

    pub fn contains(&self, key: K) -> bool {
        self.ranges.iter().any(|r| r.1 == key)
    }

    pub fn clear(&mut self) {
        self.ranges.clear();
    }

    /// Keeps only the barriers whose key `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(K) -> bool) {
        self.ranges.retain(|r| keep(r.1));
    }

    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: u64, l: u32) -> BlockRange {
        BlockRange::new(s, l)
    }

    #[test]
    fn overlapping_requests_are_granted_in_order() {
        let mut l = RangeLocks::new();
        assert!(l.acquire(r(0, 4), 1));
        assert!(!l.acquire(r(2, 4), 2));
        assert!(!l.acquire(r(5, 1), 3), "waits behind 2, which overlaps it");
        assert!(l.acquire(r(10, 1), 4), "disjoint: granted at once");
        let mut g = Vec::new();
        l.release(1, &mut g);
        assert_eq!(g, vec![2]);
        g.clear();
        l.release(2, &mut g);
        assert_eq!(g, vec![3]);
    }

    #[test]
    fn barriers_block_overlapping_reads_until_removed() {
        let mut b = Barriers::new();
        b.add(r(8, 8), 'a');
        assert!(b.blocks(&r(15, 2)));
        assert!(!b.blocks(&r(16, 2)));
        assert!(b.remove('a'));
        assert!(!b.blocks(&r(15, 2)));
    }
}
