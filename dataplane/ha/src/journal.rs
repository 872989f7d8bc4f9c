//! The synchronization journal: one dirty-region bitmap per partner (64 KiB regions, so
//! 2 MiB per TiB of device per partner). A set bit means "this region may differ on that
//! partner"; fast sync copies exactly the union of both sides' bits.
//!
//! This is the RAM journal. It is lost when the process dies, so the engine tracks whether
//! each bitmap is *complete* (kept since the partner left, in this process lifetime); an
//! incomplete one forces a full sync.

use crate::types::{Geometry, NodeId, RegionIndex};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirtyBitmap {
    words: Vec<u64>,
    num_regions: u64,
    set_count: u64,
}

impl DirtyBitmap {
    pub fn new(num_regions: u64) -> Self {
        DirtyBitmap {
            words: vec![0; num_regions.div_ceil(64) as usize],
            num_regions,
            set_count: 0,
        }
    }

    pub fn all(num_regions: u64) -> Self {
        let mut b = Self::new(num_regions);
        for r in 0..num_regions {
            b.set(RegionIndex(r));
        }
        b
    }

    pub fn set(&mut self, r: RegionIndex) {
        assert!(
            r.0 < self.num_regions,
            "region {} beyond {}",
            r.0,
            self.num_regions
        );
        let (w, bit) = ((r.0 / 64) as usize, r.0 % 64);
        if self.words[w] & (1 << bit) == 0 {
            self.words[w] |= 1 << bit;
            self.set_count += 1;
        }
    }

    pub fn clear(&mut self, r: RegionIndex) {
        let (w, bit) = ((r.0 / 64) as usize, r.0 % 64);
        if self.words[w] & (1 << bit) != 0 {
            self.words[w] &= !(1 << bit);
            self.set_count -= 1;
        }
    }

    /// More regions (a grown device): the new ones start clear.
    pub fn grow(&mut self, num_regions: u64) {
        if num_regions > self.num_regions {
            self.words.resize(num_regions.div_ceil(64) as usize, 0);
            self.num_regions = num_regions;
        }
    }

    pub fn is_set(&self, r: RegionIndex) -> bool {
        r.0 < self.num_regions && self.words[(r.0 / 64) as usize] & (1 << (r.0 % 64)) != 0
    }

    pub fn count(&self) -> u64 {
        self.set_count
    }

    pub fn union_with(&mut self, other: &DirtyBitmap) {
        for r in other.iter() {
            self.set(r);
        }
    }

    /// The first `max` set regions, in order. Skips clear words, so a sparse bitmap of a
    /// large device is walked quickly (it is read on every status exchange).
    pub fn first_set(&self, max: usize) -> Vec<RegionIndex> {
        let mut out = Vec::new();
        for (w, &word) in self.words.iter().enumerate() {
            let mut bits = word;
            while bits != 0 && out.len() < max {
                let bit = u64::from(bits.trailing_zeros());
                out.push(RegionIndex(w as u64 * 64 + bit));
                bits &= bits - 1;
            }
            if out.len() >= max {
                break;
            }
        }
        out
    }

    pub fn iter(&self) -> impl Iterator<Item = RegionIndex> + '_ {
        (0..self.num_regions)
            .filter(|&r| self.is_set(RegionIndex(r)))
            .map(RegionIndex)
    }
}

/// The per-partner bitmaps of one replica.
#[derive(Clone, Debug)]
pub struct Journal {
    geometry: Geometry,
    per_partner: Vec<(NodeId, DirtyBitmap, bool)>,
}

impl Journal {
    pub fn new(geometry: Geometry) -> Self {
        Journal {
            geometry,
            per_partner: Vec::new(),
        }
    }

    fn entry(&mut self, partner: NodeId) -> &mut (NodeId, DirtyBitmap, bool) {
        if let Some(i) = self.per_partner.iter().position(|e| e.0 == partner) {
            return &mut self.per_partner[i];
        }
        // A bitmap created now, while the process lives, starts complete: nothing was
        // written for that partner before it existed in this process.
        self.per_partner
            .push((partner, DirtyBitmap::new(self.geometry.num_regions()), true));
        self.per_partner.last_mut().expect("just pushed")
    }

    /// The device grew: every bitmap covers the new regions, clear. Only called when every
    /// partner is synchronized (the engine refuses otherwise), so the new blocks, zero on
    /// every replica, are the same everywhere.
    pub fn grow(&mut self, geometry: Geometry) {
        self.geometry = geometry;
        for e in &mut self.per_partner {
            e.1.grow(geometry.num_regions());
        }
    }

    /// After a restart the RAM bitmaps are gone: mark them incomplete until a full sync.
    pub fn mark_lost(&mut self, partner: NodeId) {
        self.entry(partner).2 = false;
    }

    pub fn mark(&mut self, partner: NodeId, region: RegionIndex) {
        self.entry(partner).1.set(region);
    }

    pub fn clean(&mut self, partner: NodeId, region: RegionIndex) {
        self.entry(partner).1.clear(region);
    }

    /// Forget everything for `partner` after it is synchronized again.
    pub fn reset(&mut self, partner: NodeId) {
        let n = self.geometry.num_regions();
        let e = self.entry(partner);
        e.1 = DirtyBitmap::new(n);
        e.2 = true;
    }

    pub fn bitmap(&mut self, partner: NodeId) -> &DirtyBitmap {
        &self.entry(partner).1
    }

    pub fn is_complete(&mut self, partner: NodeId) -> bool {
        self.entry(partner).2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_counts_and_unions() {
        let mut a = DirtyBitmap::new(130);
        a.set(RegionIndex(0));
        a.set(RegionIndex(129));
        a.set(RegionIndex(129));
        assert_eq!(a.count(), 2);
        assert_eq!(a.first_set(10), vec![RegionIndex(0), RegionIndex(129)]);
        assert_eq!(a.first_set(1), vec![RegionIndex(0)]);
        let mut b = DirtyBitmap::new(130);
        b.set(RegionIndex(64));
        b.union_with(&a);
        assert_eq!(b.iter().map(|r| r.0).collect::<Vec<_>>(), vec![0, 64, 129]);
        b.clear(RegionIndex(64));
        assert_eq!(b.count(), 2);
    }

    #[test]
    fn a_grown_bitmap_keeps_its_bits_and_adds_clear_regions() {
        let mut a = DirtyBitmap::new(63);
        a.set(RegionIndex(62));
        a.grow(200);
        assert_eq!(a.count(), 1);
        assert!(a.is_set(RegionIndex(62)));
        assert!(!a.is_set(RegionIndex(199)));
        a.set(RegionIndex(199));
        assert_eq!(a.iter().map(|r| r.0).collect::<Vec<_>>(), vec![62, 199]);
        a.grow(10); // never shrinks
        assert!(a.is_set(RegionIndex(199)));
    }
}
