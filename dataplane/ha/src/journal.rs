//! The synchronization journal: one dirty-region bitmap per partner (64 KiB regions, so
//! 2 MiB per TiB of device per partner). A set bit means "this region may differ on that
//! partner"; fast sync copies exactly the union of both sides' bits.
//!
//! Three kinds (`JournalKind`), which differ in what survives a crash of this process:
//! - `Ram`: nothing. The engine tracks whether each bitmap is *complete* (kept since the
//!   partner left, in this process lifetime); an incomplete one forces a full sync.
//! - `DiskFailure`: the bitmaps of partners that are out of sync, persisted from the moment
//!   a partner leaves and whenever one of their bits is set, before the write that set it
//!   is submitted. Nothing is written while every partner is synchronized, so a restart
//!   still loses what this node had in flight to synchronized partners.
//! - `DiskContinuous`: the same bitmaps plus an *activity log*: the set of hot regions,
//!   persisted before any local write to a region not already in it is submitted. After a
//!   crash (even of every node at once) the activity log names every region this node may
//!   have written without a partner knowing, so the restarted node's bitmaps are complete.
//!   A write to a hot region costs no journal I/O; a region leaves the log only when no
//!   write to it is in doubt, and only after the bitmaps that may hold its bits are durable.
//!
//! The engine never does I/O: [`Journal::take_record`] hands the data plane what must be
//! durable, and the engine puts it *first* among the outputs of the step that changed it,
//! so it is on disk before any write, message or completion of that step.

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

    /// The bitmap as 64-bit words, region `64 * i + b` in bit `b` of word `i`.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// The inverse of `words`. `None` if the words do not fit `num_regions` (wrong length,
    /// or bits set beyond the last region).
    pub fn from_words(num_regions: u64, words: Vec<u64>) -> Option<Self> {
        if words.len() as u64 != num_regions.div_ceil(64) {
            return None;
        }
        if !num_regions.is_multiple_of(64) {
            let last = *words.last()?;
            if last >> (num_regions % 64) != 0 {
                return None;
            }
        }
        let set_count = words.iter().map(|w| u64::from(w.count_ones())).sum();
        Some(DirtyBitmap {
            words,
            num_regions,
            set_count,
        })
    }

    pub fn num_regions(&self) -> u64 {
        self.num_regions
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

/// Which journal a replicated device keeps (`journal` in the replication config).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum JournalKind {
    #[default]
    Ram,
    DiskFailure,
    DiskContinuous,
}

impl JournalKind {
    pub fn on_disk(self) -> bool {
        self != JournalKind::Ram
    }
}

/// One partner's bitmap as persisted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartnerRecord {
    pub partner: NodeId,
    /// Kept since the partner left (or restored from a complete one): fast sync may trust it.
    pub complete: bool,
    pub dirty: DirtyBitmap,
}

/// What a disk journal holds: the bitmaps of partners being tracked and the activity log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PersistedJournal {
    pub partners: Vec<PartnerRecord>,
    pub activity: Vec<RegionIndex>,
}

/// What must be made durable now. `None` parts are unchanged since the last record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalRecord {
    pub partners: Option<Vec<PartnerRecord>>,
    pub activity: Option<Vec<RegionIndex>>,
}

impl PersistedJournal {
    /// The durable state after `rec` is written.
    pub fn apply(&mut self, rec: &JournalRecord) {
        if let Some(p) = &rec.partners {
            self.partners = p.clone();
        }
        if let Some(a) = &rec.activity {
            self.activity = a.clone();
        }
    }
}

#[derive(Clone, Debug)]
struct PartnerEntry {
    partner: NodeId,
    dirty: DirtyBitmap,
    complete: bool,
    /// Out of sync and so persisted by a disk journal (set when the partner leaves or a bit
    /// is set, cleared when it is synchronized again).
    tracking: bool,
    /// The partner receives this replica's writes (syncing or synchronized). A crash then
    /// loses what was in flight to it, which only an activity log records: a `DiskFailure`
    /// bitmap persisted meanwhile is not complete after a restart (2n seed 326: power loss
    /// during a resync, host writes in flight to the syncing partner).
    receiving: bool,
}

/// The hot regions of a `DiskContinuous` journal, least recently written first.
#[derive(Clone, Debug, Default)]
struct ActivityLog {
    order: std::collections::VecDeque<RegionIndex>,
    members: std::collections::BTreeSet<RegionIndex>,
}

impl ActivityLog {
    fn contains(&self, r: RegionIndex) -> bool {
        self.members.contains(&r)
    }

    fn touch(&mut self, r: RegionIndex) {
        // Moving a hot region to the back is RAM-only: the order is not persisted.
        if let Some(i) = self.order.iter().rposition(|&x| x == r) {
            self.order.remove(i);
        }
        self.order.push_back(r);
    }

    fn insert(&mut self, r: RegionIndex) {
        self.members.insert(r);
        self.order.push_back(r);
    }

    fn remove(&mut self, r: RegionIndex) {
        self.members.remove(&r);
        self.order.retain(|&x| x != r);
    }

    fn list(&self) -> Vec<RegionIndex> {
        self.members.iter().copied().collect()
    }
}

/// The per-partner bitmaps of one replica, and for disk journals what must be persisted.
#[derive(Clone, Debug)]
pub struct Journal {
    geometry: Geometry,
    kind: JournalKind,
    activity_max: usize,
    per_partner: Vec<PartnerEntry>,
    activity: ActivityLog,
    /// Restored state waiting for the first configuration (see `after_restart`).
    restored: Option<PersistedJournal>,
    /// RAM bitmaps hold bits that are not durable yet (covered by the activity log in the
    /// meantime, for `DiskContinuous`).
    bitmaps_behind: bool,
    flush_bitmaps: bool,
    flush_activity: bool,
    /// Planted bug: regions of writes recorded in the activity log only when they complete.
    late_activity: Vec<(u64, Vec<RegionIndex>)>,
}

impl Journal {
    pub fn new(geometry: Geometry) -> Self {
        Self::with_kind(geometry, JournalKind::Ram, 0)
    }

    /// `activity_max`: hot regions kept in a `DiskContinuous` activity log (more may stay
    /// while writes to them are in doubt).
    pub fn with_kind(geometry: Geometry, kind: JournalKind, activity_max: usize) -> Self {
        Journal {
            geometry,
            kind,
            activity_max: activity_max.max(1),
            per_partner: Vec::new(),
            activity: ActivityLog::default(),
            restored: None,
            bitmaps_behind: false,
            flush_bitmaps: false,
            flush_activity: false,
            late_activity: Vec::new(),
        }
    }

    pub fn kind(&self) -> JournalKind {
        self.kind
    }

    fn entry(&mut self, partner: NodeId) -> &mut PartnerEntry {
        if let Some(i) = self.per_partner.iter().position(|e| e.partner == partner) {
            return &mut self.per_partner[i];
        }
        // A bitmap created now, while the process lives, starts complete: nothing was
        // written for that partner before it existed in this process.
        self.per_partner.push(PartnerEntry {
            partner,
            dirty: DirtyBitmap::new(self.geometry.num_regions()),
            complete: true,
            tracking: false,
            receiving: true,
        });
        self.per_partner.last_mut().expect("just pushed")
    }

    /// The device grew: every bitmap covers the new regions, clear. Only called when every
    /// partner is synchronized (the engine refuses otherwise), so the new blocks, zero on
    /// every replica, are the same everywhere.
    pub fn grow(&mut self, geometry: Geometry) {
        self.geometry = geometry;
        for e in &mut self.per_partner {
            e.dirty.grow(geometry.num_regions());
        }
        // A disk journal's record names the device's size: write it again at the new one
        // (a record of another size is taken as lost at a restart).
        self.bitmaps_changed(None);
    }

    /// The bitmaps changed: say when they must reach the disk.
    fn bitmaps_changed(&mut self, region: Option<RegionIndex>) {
        match self.kind {
            JournalKind::Ram => {}
            JournalKind::DiskFailure => self.flush_bitmaps = true,
            JournalKind::DiskContinuous => {
                // A bit of a hot region is covered by the activity log until that region
                // leaves it; any other change is written with this step.
                self.bitmaps_behind = true;
                if region.is_none_or(|r| !self.activity.contains(r)) {
                    self.flush_bitmaps = true;
                }
            }
        }
    }

    /// After a restart the RAM bitmaps are gone: mark them incomplete until a full sync.
    pub fn mark_lost(&mut self, partner: NodeId) {
        let e = self.entry(partner);
        if e.complete {
            e.complete = false;
            e.tracking = true;
            self.bitmaps_changed(None);
        }
    }

    /// `partner` stopped receiving this replica's writes: from now on its bitmap is kept on
    /// disk (disk journals), even while still empty.
    pub fn start_tracking(&mut self, partner: NodeId) {
        let e = self.entry(partner);
        if !e.tracking {
            e.tracking = true;
            self.bitmaps_changed(None);
        }
    }

    /// Whether `partner` receives this replica's writes now (see `PartnerEntry::receiving`).
    pub fn set_receiving(&mut self, partner: NodeId, receiving: bool) {
        let e = self.entry(partner);
        if e.receiving != receiving {
            e.receiving = receiving;
            if e.tracking && self.kind == JournalKind::DiskFailure {
                self.flush_bitmaps = true;
            }
        }
    }

    pub fn mark(&mut self, partner: NodeId, region: RegionIndex) {
        let e = self.entry(partner);
        if !e.dirty.is_set(region) || !e.tracking {
            e.dirty.set(region);
            e.tracking = true;
            self.bitmaps_changed(Some(region));
        }
    }

    pub fn clean(&mut self, partner: NodeId, region: RegionIndex) {
        let e = self.entry(partner);
        if e.dirty.is_set(region) {
            e.dirty.clear(region);
            // A stale set bit on disk only costs a copy: no need to write it now.
            if self.kind.on_disk() {
                self.bitmaps_behind = true;
            }
        }
    }

    /// Forget everything for `partner` after it is synchronized again.
    pub fn reset(&mut self, partner: NodeId) {
        let n = self.geometry.num_regions();
        let e = self.entry(partner);
        let was_tracking = e.tracking;
        e.dirty = DirtyBitmap::new(n);
        e.complete = true;
        e.tracking = false;
        if was_tracking && self.kind.on_disk() {
            self.bitmaps_behind = true;
            self.flush_bitmaps = true;
        }
    }

    pub fn bitmap(&mut self, partner: NodeId) -> &DirtyBitmap {
        &self.entry(partner).dirty
    }

    pub fn is_complete(&mut self, partner: NodeId) -> bool {
        self.entry(partner).complete
    }

    pub fn activity_regions(&self) -> Vec<RegionIndex> {
        self.activity.list()
    }

    /// Which of `regions` a local write will touch that are not in the activity log yet
    /// (a `DiskContinuous` journal records them before the write is submitted).
    pub fn cold_regions(&self, regions: std::ops::Range<u64>) -> Vec<RegionIndex> {
        if self.kind != JournalKind::DiskContinuous {
            return Vec::new();
        }
        regions
            .map(RegionIndex)
            .filter(|&r| !self.activity.contains(r))
            .collect()
    }

    /// A local write to `regions` is about to be submitted: make every one of them hot.
    /// `in_doubt` are the regions that must not leave the log (writes to them not yet
    /// known to be on every replica); asked only when a region must be evicted.
    pub fn note_write(
        &mut self,
        regions: std::ops::Range<u64>,
        in_doubt: impl FnOnce() -> std::collections::BTreeSet<RegionIndex>,
    ) {
        if self.kind != JournalKind::DiskContinuous {
            return;
        }
        let mut added = false;
        let regions_now = regions.clone();
        for r in regions.map(RegionIndex) {
            if self.activity.contains(r) {
                self.activity.touch(r);
            } else {
                self.activity.insert(r);
                added = true;
            }
        }
        if !added {
            return;
        }
        self.flush_activity = true;
        if self.activity.members.len() > self.activity_max {
            let mut keep = in_doubt();
            keep.extend(regions_now.map(RegionIndex));
            let excess = self.activity.members.len() - self.activity_max;
            let victims: Vec<RegionIndex> = self
                .activity
                .order
                .iter()
                .copied()
                .filter(|r| !keep.contains(r))
                .take(excess)
                .collect();
            for r in victims {
                self.activity.remove(r);
            }
            // Bits of evicted regions lose their cover: the bitmaps go with this record.
            if self.bitmaps_behind {
                self.flush_bitmaps = true;
            }
        }
    }

    /// Planted bug `ActivityNotBeforeWrite`: the regions of write `io` enter the activity
    /// log only when it completes.
    pub fn defer_activity(&mut self, io: u64, regions: std::ops::Range<u64>) {
        if self.kind == JournalKind::DiskContinuous {
            self.late_activity
                .push((io, regions.map(RegionIndex).collect()));
        }
    }

    pub fn write_done(
        &mut self,
        io: u64,
        in_doubt: impl FnOnce() -> std::collections::BTreeSet<RegionIndex>,
    ) {
        if let Some(i) = self.late_activity.iter().position(|e| e.0 == io) {
            let (_, regions) = self.late_activity.remove(i);
            if let (Some(first), Some(last)) = (regions.first(), regions.last()) {
                self.note_write(first.0..last.0 + 1, in_doubt);
            }
        }
    }

    /// What must be durable now, if anything (taken once).
    pub fn take_record(&mut self) -> Option<JournalRecord> {
        if !self.kind.on_disk() || !(self.flush_bitmaps || self.flush_activity) {
            return None;
        }
        let partners = self.flush_bitmaps.then(|| {
            self.bitmaps_behind = false;
            self.persisted_partners()
        });
        let activity = self.flush_activity.then(|| self.activity.list());
        self.flush_bitmaps = false;
        self.flush_activity = false;
        Some(JournalRecord { partners, activity })
    }

    fn persisted_partners(&self) -> Vec<PartnerRecord> {
        self.per_partner
            .iter()
            .filter(|e| e.tracking)
            .map(|e| PartnerRecord {
                partner: e.partner,
                complete: e.complete && (self.kind != JournalKind::DiskFailure || !e.receiving),
                dirty: e.dirty.clone(),
            })
            .collect()
    }

    /// Hand a restarted replica what its disk journal held (before its first
    /// configuration). A journal of another geometry is ignored (a full sync follows).
    pub fn restore(&mut self, persisted: PersistedJournal) {
        if !self.kind.on_disk() {
            return;
        }
        let n = self.geometry.num_regions();
        let fits = persisted
            .partners
            .iter()
            .all(|p| p.dirty.num_regions() == n)
            && persisted.activity.iter().all(|r| r.0 < n);
        if fits {
            self.restored = Some(persisted);
        }
    }

    /// First configuration after a restart: rebuild the bitmaps for `partners` from the
    /// disk journal. Returns the partners whose bitmap is lost (incomplete: full sync).
    pub fn after_restart(&mut self, partners: &[NodeId]) -> Vec<NodeId> {
        let restored = self.restored.take();
        let continuous = self.kind == JournalKind::DiskContinuous;
        if let Some(p) = &restored {
            for &r in &p.activity {
                self.activity.insert(r);
            }
        }
        let mut lost = Vec::new();
        for &partner in partners {
            let record = restored
                .as_ref()
                .and_then(|p| p.partners.iter().find(|r| r.partner == partner));
            let complete = match (record, continuous && restored.is_some()) {
                (Some(rec), _) => rec.complete,
                // A partner synchronized when this node stopped: only the activity log
                // knows what this node may hold that it lacks.
                (None, true) => true,
                (None, false) => false,
            };
            let activity = self.activity.list();
            let e = self.entry(partner);
            if let Some(rec) = record {
                e.dirty.union_with(&rec.dirty);
                e.tracking = true;
            }
            if continuous {
                for &r in &activity {
                    e.dirty.set(r);
                }
                e.tracking = true;
            }
            if complete {
                continue;
            }
            e.complete = false;
            e.tracking = true;
            lost.push(partner);
        }
        if self.kind.on_disk() {
            // The restored view (activity regions now in the bitmaps) becomes the record.
            self.flush_bitmaps = true;
            self.flush_activity = continuous;
        }
        lost
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

    fn geometry() -> Geometry {
        Geometry {
            block_size_bytes: 512,
            num_blocks: 64,
            region_blocks: 4,
        }
    }

    fn durable(j: &mut Journal, disk: &mut PersistedJournal) {
        if let Some(rec) = j.take_record() {
            disk.apply(&rec);
        }
    }

    #[test]
    fn ram_journal_writes_nothing_and_loses_everything() {
        let mut j = Journal::new(geometry());
        j.mark(NodeId(2), RegionIndex(3));
        j.note_write(0..2, Default::default);
        assert!(j.take_record().is_none());
        let mut r = Journal::new(geometry());
        r.restore(PersistedJournal::default());
        assert_eq!(r.after_restart(&[NodeId(2)]), vec![NodeId(2)]);
    }

    #[test]
    fn disk_failure_keeps_out_partners_only() {
        let mut disk = PersistedJournal::default();
        let mut j = Journal::with_kind(geometry(), JournalKind::DiskFailure, 4);
        j.note_write(0..1, Default::default);
        assert!(j.take_record().is_none(), "healthy: no journal I/O");
        j.set_receiving(NodeId(2), false);
        j.start_tracking(NodeId(2));
        j.mark(NodeId(2), RegionIndex(5));
        durable(&mut j, &mut disk);
        j.mark(NodeId(2), RegionIndex(5));
        assert!(j.take_record().is_none(), "a bit already set costs nothing");
        let mut r = Journal::with_kind(geometry(), JournalKind::DiskFailure, 4);
        r.restore(disk);
        assert_eq!(r.after_restart(&[NodeId(2), NodeId(3)]), vec![NodeId(3)]);
        assert!(r.is_complete(NodeId(2)));
        assert_eq!(
            r.bitmap(NodeId(2)).iter().collect::<Vec<_>>(),
            vec![RegionIndex(5)]
        );
    }

    #[test]
    fn continuous_records_hot_regions_once_and_evicts_only_settled_ones() {
        let mut disk = PersistedJournal::default();
        let mut j = Journal::with_kind(geometry(), JournalKind::DiskContinuous, 2);
        j.note_write(0..2, Default::default);
        durable(&mut j, &mut disk);
        assert_eq!(disk.activity, vec![RegionIndex(0), RegionIndex(1)]);
        j.note_write(1..2, Default::default);
        assert!(
            j.take_record().is_none(),
            "a hot region costs no journal I/O"
        );
        // Region 0 still has a write in doubt: region 1 leaves instead.
        j.note_write(7..8, || [RegionIndex(0)].into_iter().collect());
        durable(&mut j, &mut disk);
        assert_eq!(disk.activity, vec![RegionIndex(0), RegionIndex(7)]);
        // A partner left: its bit of a hot region is covered by the log until eviction.
        j.start_tracking(NodeId(2));
        durable(&mut j, &mut disk);
        j.mark(NodeId(2), RegionIndex(7));
        assert!(j.take_record().is_none());
        j.note_write(9..11, Default::default);
        durable(&mut j, &mut disk);
        assert!(!disk.activity.contains(&RegionIndex(7)));
        assert!(
            disk.partners[0].dirty.is_set(RegionIndex(7)),
            "bitmap written on eviction"
        );
        // Power loss: every partner gets the log's regions, complete.
        let mut r = Journal::with_kind(geometry(), JournalKind::DiskContinuous, 2);
        r.restore(disk);
        assert!(r.after_restart(&[NodeId(2), NodeId(3)]).is_empty());
        let two: Vec<u64> = r.bitmap(NodeId(2)).iter().map(|x| x.0).collect();
        let three: Vec<u64> = r.bitmap(NodeId(3)).iter().map(|x| x.0).collect();
        assert_eq!(two, vec![7, 9, 10]);
        assert_eq!(three, vec![9, 10]);
    }

    #[test]
    fn continuous_without_a_readable_journal_is_a_full_sync() {
        let mut r = Journal::with_kind(geometry(), JournalKind::DiskContinuous, 2);
        assert_eq!(r.after_restart(&[NodeId(2)]), vec![NodeId(2)]);
        let mut wrong = Journal::with_kind(geometry(), JournalKind::DiskContinuous, 2);
        wrong.restore(PersistedJournal {
            partners: vec![PartnerRecord {
                partner: NodeId(2),
                complete: true,
                dirty: DirtyBitmap::new(3),
            }],
            activity: vec![],
        });
        assert_eq!(wrong.after_restart(&[NodeId(2)]), vec![NodeId(2)]);
    }

    #[test]
    fn bitmap_words_round_trip_and_reject_stray_bits() {
        let mut a = DirtyBitmap::new(70);
        a.set(RegionIndex(69));
        let b = DirtyBitmap::from_words(70, a.words().to_vec()).expect("fits");
        assert_eq!(a, b);
        assert!(DirtyBitmap::from_words(70, vec![0, 1 << 6]).is_none());
        assert!(DirtyBitmap::from_words(70, vec![0]).is_none());
    }
}
