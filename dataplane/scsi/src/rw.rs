//! Block I/O planning state: continuations and the in-flight write-range
//! table that makes COMPARE AND WRITE, ORWRITE and WRITE ATOMIC atomic.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::release::Releases;

/// One in-flight write range (blocks `lba..end`).
#[derive(Debug)]
struct Entry {
    lba: u64,
    end: u64,
    /// Exclusive ranges (COMPARE AND WRITE, ORWRITE, WRITE ATOMIC) exclude
    /// every overlapping write; plain writes only exclude exclusive ones.
    caw: bool,
}

/// Write ranges currently held by continuations.
///
/// Plain writes only need a scan when a COMPARE AND WRITE is in flight, so
/// the hot path (no CAW) is an O(1) insert and remove.
#[derive(Debug, Default)]
pub(crate) struct InflightTable {
    next_id: u64,
    entries: HashMap<u64, Entry>,
    caw_count: usize,
    /// Told of every release, so deferred commands are retried then (not on a timer).
    releases: Arc<Releases>,
}

impl InflightTable {
    pub(crate) fn releases(&self) -> &Arc<Releases> {
        &self.releases
    }
}

pub(crate) type Inflight = Arc<Mutex<InflightTable>>;

/// Releases its range when dropped, so an abandoned continuation never
/// leaves a range locked.
#[derive(Debug)]
pub(crate) struct RangeGuard {
    table: Inflight,
    id: u64,
}

impl Drop for RangeGuard {
    fn drop(&mut self) {
        let mut t = self.table.lock();
        if let Some(e) = t.entries.remove(&self.id) {
            if e.caw {
                t.caw_count -= 1;
            }
        }
        t.releases.released();
    }
}

/// Tries to take `lba..lba+blocks`; `None` if it conflicts (caller defers).
pub(crate) fn try_acquire(
    table: &Inflight,
    lba: u64,
    blocks: u64,
    caw: bool,
) -> Option<RangeGuard> {
    let end = lba.saturating_add(blocks);
    let mut t = table.lock();
    if caw || t.caw_count > 0 {
        let conflict = t
            .entries
            .values()
            .any(|e| (caw || e.caw) && e.lba < end && lba < e.end);
        if conflict {
            return None;
        }
    }
    let id = t.next_id;
    t.next_id = t.next_id.wrapping_add(1);
    t.entries.insert(id, Entry { lba, end, caw });
    if caw {
        t.caw_count += 1;
    }
    Some(RangeGuard {
        table: Arc::clone(table),
        id,
    })
}

#[cfg(test)]
pub(crate) fn inflight_len(table: &Inflight) -> usize {
    table.lock().entries.len()
}

/// The outcome of one persistent-reservation commit, as the LU sees it.
pub(crate) type CommitState = Arc<AtomicU8>;
pub(crate) const COMMIT_PENDING: u8 = 0;
pub(crate) const COMMIT_DURABLE: u8 = 1;
pub(crate) const COMMIT_FAILED: u8 = 2;

/// Tells the LU whether a [`crate::PrCommit`] became durable. The transport's persister
/// calls [`CommitSignal::set`] once the save returned; dropping the signal unset (the
/// commit never ran) counts as a failure. The LU settles the commit by this signal even if
/// the command's continuation is dropped (command aborted, connection gone), so its state
/// always matches the store.
#[derive(Debug)]
pub struct CommitSignal {
    pub(crate) state: CommitState,
    /// A PR OUT deferred behind this commit is retried when it settles.
    pub(crate) releases: Arc<Releases>,
}

impl CommitSignal {
    pub fn set(self, durable: bool) {
        let v = if durable {
            COMMIT_DURABLE
        } else {
            COMMIT_FAILED
        };
        let _ = self
            .state
            .compare_exchange(COMMIT_PENDING, v, Ordering::AcqRel, Ordering::Acquire);
        // `drop` runs next and signals the release.
    }
}

impl Drop for CommitSignal {
    fn drop(&mut self) {
        let _ = self.state.compare_exchange(
            COMMIT_PENDING,
            COMMIT_FAILED,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        self.releases.released();
    }
}

/// What `resume` does with the outcome of the I/O just performed.
#[derive(Debug)]
pub(crate) enum ContKind {
    /// A READ: reply with the I/O buffer.
    Read { len: usize },
    /// A write, flush or unmap whose success completes the command.
    Complete { is_write: bool },
    /// WRITE AND VERIFY with BYTCHK=1: the write is done, read it back next.
    WriteThenVerify { lba: u64, blocks: u32, bytes: usize },
    /// VERIFY with BYTCHK: compare what was read with the Data-Out buffer.
    Verify {
        bytchk: u8,
        bytes: usize,
        block_size: usize,
    },
    /// COMPARE AND WRITE that the device compared and wrote itself.
    CawByDevice,
    /// COMPARE AND WRITE, compare phase done next.
    CawRead {
        lba: u64,
        blocks: u32,
        fua: bool,
        bytes: usize,
    },
    /// ORWRITE, read phase done: OR the Data-Out buffer into it and write.
    OrRead {
        lba: u64,
        blocks: u32,
        fua: bool,
        bytes: usize,
    },
    /// PERSISTENT RESERVE OUT whose new state is being made durable: the
    /// LU's pending commit with this state decides the answer.
    PrCommit { state: CommitState },
    /// PERSISTENT RESERVE OUT handed to a device that orders it across nodes: GOOD once
    /// applied everywhere; computed again (from the state the device delivered meanwhile)
    /// if another change came first.
    PrCluster { args: crate::lu::PrOutArgs },
    /// WRITE SAME: more chunks may follow.
    WriteSame {
        next_lba: u64,
        remaining: u64,
        block: Vec<u8>,
        chunk_blocks: u32,
        fua: bool,
    },
}

/// Opaque state carried between an [`crate::IoPlan`] and
/// [`crate::LogicalUnit::resume`]. Dropping it releases any range it holds.
pub struct Continuation {
    pub(crate) kind: ContKind,
    pub(crate) guard: Option<RangeGuard>,
    /// First LBA of the I/O this continuation waits for.
    pub(crate) io_lba: Option<u64>,
    /// The LU's task-abort generation when the command started (`LogicalUnit::execute`):
    /// a LOGICAL UNIT RESET or CLEAR TASK SET since then, received here or carried here from
    /// a partner node, ends the command TASK ABORTED when its I/O returns.
    pub(crate) abort_gen: u64,
}

impl std::fmt::Debug for Continuation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Continuation")
            .field("kind", &self.kind)
            .field("holds_range", &self.guard.is_some())
            .finish()
    }
}

/// Offset of the first differing byte of `a` and `b` (compared up to the shorter).
pub(crate) fn first_mismatch(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caw_excludes_overlapping_writes_and_guard_releases() {
        let t: Inflight = Arc::default();
        let w = try_acquire(&t, 10, 10, false).unwrap();
        // Plain writes may overlap each other.
        let w2 = try_acquire(&t, 15, 10, false).unwrap();
        assert!(try_acquire(&t, 19, 1, true).is_none());
        assert!(try_acquire(&t, 25, 1, true).is_some());
        drop(w);
        drop(w2);
        let c = try_acquire(&t, 0, 100, true).unwrap();
        assert!(try_acquire(&t, 99, 1, false).is_none());
        assert!(try_acquire(&t, 100, 1, false).is_some());
        drop(c);
        assert_eq!(inflight_len(&t), 0);
    }

    #[test]
    fn mismatch_offset() {
        assert_eq!(first_mismatch(b"abcd", b"abXd"), Some(2));
        assert_eq!(first_mismatch(b"ab", b"ab"), None);
    }
}
