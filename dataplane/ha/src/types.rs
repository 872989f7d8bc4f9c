//! Units and identifiers shared by the engine, its messages and the simulator.
//!
//! Blocks and regions are distinct types so a block count can never be passed where a
//! region index is expected (the journal works in regions, the I/O path in blocks).

use std::fmt;

/// A data node of the cluster. Small integers; the lowest synchronized id becomes the
/// sequencer of a new configuration when the previous sequencer is gone.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct NodeId(pub u8);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

/// A configuration number issued by the failover authority (control service / witness).
/// Strictly increasing; every mirror message carries it and stale ones are refused.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Epoch(pub u64);

/// Engine time in nanoseconds. Passed in with every input, never read inside.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Time(pub u64);

impl Time {
    pub const fn plus_ns(self, ns: u64) -> Time {
        Time(self.0.saturating_add(ns))
    }
}

/// A logical block address (in blocks of the device's block size).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lba(pub u64);

/// A half-open range of blocks `[start, start + len)`; `len > 0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockRange {
    pub start: Lba,
    pub len_blocks: u32,
}

impl BlockRange {
    pub fn new(start: u64, len_blocks: u32) -> Self {
        assert!(len_blocks > 0, "empty block range");
        BlockRange {
            start: Lba(start),
            len_blocks,
        }
    }

    pub fn end(&self) -> u64 {
        self.start.0 + u64::from(self.len_blocks)
    }

    pub fn overlaps(&self, other: &BlockRange) -> bool {
        self.start.0 < other.end() && other.start.0 < self.end()
    }

    pub fn blocks(&self) -> std::ops::Range<u64> {
        self.start.0..self.end()
    }
}

/// Index of a 64 KiB journal region (the unit of dirty tracking and resync).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RegionIndex(pub u64);

/// Size and shape of a replicated device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub block_size_bytes: u32,
    pub num_blocks: u64,
    /// Blocks per journal region (64 KiB / block size in production; smaller in the simulator
    /// so that a small device still has many regions).
    pub region_blocks: u32,
}

impl Geometry {
    /// Production geometry: 64 KiB regions.
    pub fn with_64k_regions(block_size_bytes: u32, num_blocks: u64) -> Self {
        assert!(block_size_bytes.is_power_of_two() && block_size_bytes <= 65536);
        Geometry {
            block_size_bytes,
            num_blocks,
            region_blocks: 65536 / block_size_bytes,
        }
    }

    pub fn num_regions(&self) -> u64 {
        self.num_blocks.div_ceil(u64::from(self.region_blocks))
    }

    pub fn contains(&self, r: &BlockRange) -> bool {
        r.end() <= self.num_blocks
    }

    /// Regions touched by a block range (inclusive of partial regions at both ends).
    pub fn regions_of(&self, r: &BlockRange) -> std::ops::Range<u64> {
        let rb = u64::from(self.region_blocks);
        (r.start.0 / rb)..r.end().div_ceil(rb)
    }

    /// The block range of one region (the last region may be short).
    pub fn region_range(&self, region: RegionIndex) -> BlockRange {
        let rb = u64::from(self.region_blocks);
        let start = region.0 * rb;
        let len = (self.num_blocks - start).min(rb);
        BlockRange::new(start, len as u32)
    }
}

/// Identifies one replicated operation cluster-wide: the node that took it from the host
/// (or the sequencer, for resync copies) and that node's counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId {
    pub origin: NodeId,
    pub n: u64,
}

/// The caller's handle for a host command; returned with its completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostTag(pub u64);

/// The engine's handle for a local I/O; returned with its completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IoTag(pub u64);

/// A data generation id (DRBD's "UUID" idea): which history a replica's bytes belong to.
/// Derived from the configuration that created it, so every member that goes on together
/// gets the same id, and two sides that went on alone under different configurations differ.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct GenerationId(pub u64);

impl GenerationId {
    pub fn for_config(epoch: Epoch, sequencer: NodeId) -> Self {
        GenerationId((epoch.0 << 8) | u64::from(sequencer.0))
    }

    /// The sequencer a configuration's generation was issued with (`for_config`), `None`
    /// for a blank one.
    pub fn sequenced_by(self) -> Option<NodeId> {
        (!self.is_blank()).then_some(NodeId((self.0 & 0xff) as _))
    }

    /// The generation of a copy that holds no replicated history yet (new, or its metadata
    /// lost), unique to that start so two such copies never compare "in sync" (one may be an
    /// existing disk, the other a new empty one). The top bit keeps it apart from every
    /// generation an authority issues.
    pub fn blank(unique: u64) -> Self {
        GenerationId((1 << 63) | unique)
    }

    /// No replicated history: a plain full-sync target, never a split-brain side.
    pub fn is_blank(self) -> bool {
        self.0 == 0 || self.0 >> 63 == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_of_range_cover_partial_regions() {
        let g = Geometry {
            block_size_bytes: 512,
            num_blocks: 100,
            region_blocks: 8,
        };
        assert_eq!(g.num_regions(), 13);
        assert_eq!(g.regions_of(&BlockRange::new(7, 2)), 0..2);
        assert_eq!(g.regions_of(&BlockRange::new(8, 8)), 1..2);
        assert_eq!(g.region_range(RegionIndex(12)), BlockRange::new(96, 4));
    }

    #[test]
    fn production_regions_are_64k() {
        let g = Geometry::with_64k_regions(512, 2 * 1024 * 1024 * 1024 / 512);
        assert_eq!(g.region_blocks, 128);
        // 2 MiB of bitmap per TiB per partner: one bit per 64 KiB region.
        let tib = Geometry::with_64k_regions(4096, (1u64 << 40) / 4096);
        assert_eq!(tib.num_regions() / 8, 2 * 1024 * 1024);
    }

    #[test]
    fn overlap_is_half_open() {
        let a = BlockRange::new(0, 4);
        assert!(a.overlaps(&BlockRange::new(3, 1)));
        assert!(!a.overlaps(&BlockRange::new(4, 1)));
    }
}

/// A task management function that acts on the whole logical unit, so on every node that
/// serves it (SAM-5 7.x): the node that received it from the host carries it to every
/// synchronized partner before it answers (see `docs/ha.md`, "Task management across
/// nodes").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TaskMgmtKind {
    /// LOGICAL UNIT RESET: abort every task of the LU, raise BUS DEVICE RESET FUNCTION
    /// OCCURRED (29/03) on every I_T nexus, clear an SPC-2 reservation.
    LunReset,
    /// CLEAR TASK SET: abort every task of the LU (of every I_T nexus); no unit attention
    /// with TAS=1 (the aborted tasks of other nexuses end TASK ABORTED).
    ClearTaskSet,
}
