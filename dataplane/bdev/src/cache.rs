//! RAM cache layer over any [`Bdev`]: write-back, write-through or none, switchable live.
//!
//! # Structure
//! The cache is shared by all channels of the device: a map of *lines* (up to 128 blocks,
//! about 64 KiB each) behind one mutex, bounded by `size_bytes`, evicted LRU (clean lines
//! only). Each line keeps per-block `valid` and `dirty` bitmaps.
//!
//! # Invariants (what makes reads return the newest data)
//! - A valid block in the cache is never older than the backing device's copy.
//! - Dirty blocks are only cleared by a completed write-back of a snapshot taken when they
//!   were dirty, and only if they were not rewritten since (`redirty`).
//! - A line has at most one write-back in flight (`flushing`), and none while a
//!   pass-through write or discard touching it is in flight (`busy`), so the backing
//!   device sees writes to a block in the order they were acknowledged.
//! - Pass-through writes and discards wait (parked) while a write-back of an overlapping
//!   line is in flight; otherwise the older write-back could land after them.
//! - Completion order is not landing order. Data read from the backing device populates a
//!   line only if no pass-through write to that line was in flight at any time during the
//!   read (`busy` at submission and completion, `gen` against a global write clock;
//!   `removed_gen` covers lines that were written and evicted meanwhile). A pass-through
//!   write populates the cache only if it was the only one in flight on the line for its
//!   whole life. Otherwise the blocks stay invalid and the next read goes to the device.
//! - A backend read overlays every valid cached block on completion (lines it touched are
//!   pinned against eviction), so dirty data written back and evicted meanwhile cannot be
//!   hidden behind the older data the read fetched.
//!
//! # Write-back
//! Writes are copied into the cache and complete at once, while the dirty budget (3/4 of the
//! cache) allows; beyond it, or for FUA, they pass through to the backing device. Channels
//! write dirty lines back from [`BdevChannel::poll`]: when the channel is idle, when dirty
//! data exceeds half the budget or is older than a second, and at full speed while any
//! `Flush` is waiting. A `Flush` records every dirty line and its generation, waits until
//! each has been written back at least to that generation (by any channel), then flushes
//! the backing device. Channels wake each other through their eventfds when a write-back
//! completes and someone is waiting.

use std::collections::{HashMap, VecDeque};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tandem_ffi::{EventFd, WakeSet};

use crate::{
    check_op, reject, AlignedBuf, Bdev, BdevChannel, BdevError, BdevOp, CacheMode, Completion,
    DeviceInfo,
};

/// Target line size; blocks per line are capped at 128 (one `u128` bitmap).
const LINE_TARGET_BYTES: u64 = 64 << 10;
const MAX_BLOCKS_PER_LINE: u64 = 128;
/// Write-back writes in flight per channel.
const WB_RUNS_MAX: usize = 32;
/// Lines started per poll.
const WB_LINES_PER_POLL: usize = 16;
/// Largest write-back request (contiguous dirty runs of adjacent lines are merged).
const WB_MERGE_MAX_BYTES: usize = 1 << 20;
/// Dirty lines examined per poll when looking for one to write back.
const WB_SCAN_MAX: usize = 64;
/// LRU entries examined when looking for a line to evict.
const EVICT_SCAN_MAX: usize = 64;
/// Dirty data older than this is written back even when the channel is busy.
const WB_AGE_MAX: Duration = Duration::from_secs(1);
/// After a failed write-back, the line is retried no sooner than this.
const WB_RETRY_DELAY: Duration = Duration::from_millis(500);
/// Recycled vectors kept per channel.
const SPARE_VECS_MAX: usize = 256;
/// `flush_blocking` gives up after this long.
const FLUSH_BLOCKING_TIMEOUT: Duration = Duration::from_secs(120);

fn mode_to_u8(m: CacheMode) -> u8 {
    match m {
        CacheMode::None => 0,
        CacheMode::WriteThrough => 1,
        CacheMode::WriteBack => 2,
    }
}

fn mode_from_u8(v: u8) -> CacheMode {
    match v {
        1 => CacheMode::WriteThrough,
        2 => CacheMode::WriteBack,
        _ => CacheMode::None,
    }
}

/// Bits `[start, start+n)`.
fn mask(start: u32, n: u32) -> u128 {
    if n == 0 {
        0
    } else if n >= 128 {
        !0
    } else {
        ((1u128 << n) - 1) << start
    }
}

/// Runs of consecutive set bits: `(start, len)`.
fn runs(mut m: u128) -> impl Iterator<Item = (u32, u32)> {
    std::iter::from_fn(move || {
        if m == 0 {
            return None;
        }
        let start = m.trailing_zeros();
        let len = (m >> start).trailing_ones();
        m &= !mask(start, len);
        Some((start, len))
    })
}

/// Iterator over the [`Piece`]s of a request.
#[derive(Clone)]
struct Pieces {
    bs: u64,
    bpl: u64,
    first: u64,
    next: u64,
    end: u64,
}

impl Iterator for Pieces {
    type Item = Piece;
    fn next(&mut self) -> Option<Piece> {
        if self.next >= self.end {
            return None;
        }
        let b = self.next;
        let start = (b % self.bpl) as u32;
        let n = (self.bpl - u64::from(start)).min(self.end - b) as u32;
        self.next += u64::from(n);
        Some(Piece {
            line: b / self.bpl,
            start,
            n,
            buf_off: ((b - self.first) * self.bs) as usize,
        })
    }
}

/// A part of a request that falls into one line.
#[derive(Clone, Copy, Debug)]
struct Piece {
    line: u64,
    /// First block within the line.
    start: u32,
    /// Blocks.
    n: u32,
    /// Byte offset of this piece within the request.
    buf_off: usize,
}

impl Piece {
    fn mask(&self) -> u128 {
        mask(self.start, self.n)
    }
}

#[derive(Default)]
struct Line {
    data: Option<Box<[u8]>>,
    valid: u128,
    dirty: u128,
    /// Write clock value of the last write/discard that touched this line.
    gen: u64,
    /// All data up to this generation is on the backing device.
    persisted_gen: u64,
    flushing: bool,
    flush_gen: u64,
    flush_runs: u32,
    flush_failed: bool,
    /// Blocks rewritten while a write-back is in flight (stay dirty afterwards).
    redirty: u128,
    /// Pass-through writes/discards in flight.
    busy: u32,
    /// Backend reads in flight that will overlay this line.
    pins: u32,
    /// Position in `State::lru` (clean lines holding data: the eviction candidates).
    lru: Link,
    /// Position in `State::dirty_q` (lines with dirty blocks, oldest first).
    dq: Link,
    dirty_since: Option<Instant>,
    retry_after: Option<Instant>,
}

impl Line {
    /// Can a write-back of this line start now?
    fn wb_eligible(&self, now: Instant) -> bool {
        !self.flushing
            && self.busy == 0
            && self.dirty != 0
            && self.data.is_some()
            && !matches!(self.retry_after, Some(t) if t > now)
    }

    fn removable(&self) -> bool {
        !self.lru.on
            && !self.dq.on
            && self.data.is_none()
            && self.valid == 0
            && self.dirty == 0
            && !self.flushing
            && self.busy == 0
            && self.pins == 0
    }
}

#[derive(Default)]
struct State {
    lines: HashMap<u64, Line>,
    /// Lines holding data, least recently used first.
    lru: List,
    /// Lines with dirty blocks, oldest first.
    dirty_q: List,
    dirty_blocks: u64,
    /// Global write clock.
    clock: u64,
    /// Highest `gen` of any line removed from the map.
    removed_gen: u64,
    data_lines: usize,
    spare: Vec<Box<[u8]>>,
    /// Failed write-backs so far (a waiting Flush fails if this moves).
    wb_errors: u64,
}

struct Shared {
    inner: Arc<dyn Bdev>,
    block_size: u32,
    blocks_per_line: u32,
    line_bytes: usize,
    capacity_lines: usize,
    dirty_budget_blocks: u64,
    num_blocks: AtomicU64,
    read_only: bool,
    mode: AtomicU8,
    st: Mutex<State>,
    wakers: Mutex<Vec<Weak<EventFd>>>,
    /// Flush operations waiting for write-back (all channels).
    urgent: AtomicUsize,
    /// Parked operations (all channels); when non-zero, progress wakes every channel.
    parked: AtomicUsize,
    /// Serialises `set_cache_mode`.
    mode_lock: Mutex<()>,
}

/// Wraps `inner` in a RAM cache of `size_bytes` in mode `mode`. A size too small for one
/// line (64 KiB) gives a cache that holds nothing: every write passes through.
pub fn with_cache(inner: Arc<dyn Bdev>, mode: CacheMode, size_bytes: u64) -> Arc<dyn Bdev> {
    let info = inner.info();
    let bs = u64::from(info.block_size.max(1));
    let bpl = (LINE_TARGET_BYTES / bs).clamp(1, MAX_BLOCKS_PER_LINE);
    let line_bytes = bs * bpl;
    let capacity_lines = usize::try_from(size_bytes / line_bytes).unwrap_or(usize::MAX);
    let dirty_budget_blocks = (capacity_lines as u64).saturating_mul(bpl) / 4 * 3;
    Arc::new(CacheDev(Arc::new(Shared {
        inner,
        block_size: info.block_size,
        blocks_per_line: bpl as u32,
        line_bytes: line_bytes as usize,
        capacity_lines,
        dirty_budget_blocks,
        num_blocks: AtomicU64::new(info.num_blocks),
        read_only: info.read_only,
        mode: AtomicU8::new(mode_to_u8(mode)),
        st: Mutex::new(State::default()),
        wakers: Mutex::new(Vec::new()),
        urgent: AtomicUsize::new(0),
        parked: AtomicUsize::new(0),
        mode_lock: Mutex::new(()),
    })))
}

impl Shared {
    fn mode(&self) -> CacheMode {
        mode_from_u8(self.mode.load(Ordering::Acquire))
    }

    fn bs(&self) -> usize {
        self.block_size as usize
    }

    /// Splits `[offset, offset+len)` (validated, block-aligned) into line pieces
    /// (allocation-free; clone it for another pass).
    fn pieces(&self, offset: u64, len: u64) -> Pieces {
        let bs = u64::from(self.block_size);
        let first = offset / bs;
        Pieces {
            bs,
            bpl: u64::from(self.blocks_per_line),
            first,
            next: first,
            end: first + len / bs,
        }
    }

    /// The lines `[offset, offset+len)` touches.
    fn line_range(&self, offset: u64, len: u64) -> std::ops::Range<u64> {
        let bs = u64::from(self.block_size);
        let bpl = u64::from(self.blocks_per_line);
        let first = offset / bs;
        let end = first + len / bs;
        if end == first {
            return first / bpl..first / bpl;
        }
        first / bpl..(end - 1) / bpl + 1
    }

    fn wake_all(&self) {
        let mut w = self.wakers.lock();
        w.retain(|e| match e.upgrade() {
            Some(e) => {
                let _ = e.notify();
                true
            }
            None => false,
        });
    }

    fn wake_if_parked(&self) {
        if self.parked.load(Ordering::Acquire) > 0 {
            self.wake_all();
        }
    }
}

/// Membership of a line in an intrusive list (no allocation to link or unlink).
#[derive(Default, Clone, Copy, Debug)]
struct Link {
    prev: Option<u64>,
    next: Option<u64>,
    on: bool,
}

/// An intrusive doubly-linked list of lines, oldest at `head`.
#[derive(Default, Debug)]
struct List {
    head: Option<u64>,
    tail: Option<u64>,
}

#[derive(Clone, Copy)]
enum Which {
    Lru,
    Dirty,
}

fn link_mut(l: &mut Line, w: Which) -> &mut Link {
    match w {
        Which::Lru => &mut l.lru,
        Which::Dirty => &mut l.dq,
    }
}

fn link(l: &Line, w: Which) -> Link {
    match w {
        Which::Lru => l.lru,
        Which::Dirty => l.dq,
    }
}

fn list_push_back(lines: &mut HashMap<u64, Line>, list: &mut List, w: Which, id: u64) {
    let tail = list.tail;
    let Some(l) = lines.get_mut(&id) else { return };
    let k = link_mut(l, w);
    if k.on {
        return;
    }
    *k = Link {
        prev: tail,
        next: None,
        on: true,
    };
    match tail.and_then(|t| lines.get_mut(&t)) {
        Some(t) => link_mut(t, w).next = Some(id),
        None => list.head = Some(id),
    }
    list.tail = Some(id);
}

fn list_remove(lines: &mut HashMap<u64, Line>, list: &mut List, w: Which, id: u64) {
    let Some(l) = lines.get_mut(&id) else { return };
    let k = link(l, w);
    if !k.on {
        return;
    }
    *link_mut(l, w) = Link::default();
    match k.prev.and_then(|p| lines.get_mut(&p)) {
        Some(p) => link_mut(p, w).next = k.next,
        None => list.head = k.next,
    }
    match k.next.and_then(|n| lines.get_mut(&n)) {
        Some(n) => link_mut(n, w).prev = k.prev,
        None => list.tail = k.prev,
    }
}

fn list_iter<'a>(
    lines: &'a HashMap<u64, Line>,
    list: &List,
    w: Which,
) -> impl Iterator<Item = u64> + 'a {
    let mut cur = list.head;
    std::iter::from_fn(move || {
        let id = cur?;
        cur = lines.get(&id).and_then(|l| link(l, w).next);
        Some(id)
    })
}

impl State {
    /// Marks line `id` most recently used. Only clean lines holding data are in the LRU
    /// (they are the eviction candidates); a dirty line enters it when written back.
    fn touch(&mut self, id: u64) {
        let Some(line) = self.lines.get(&id) else {
            return;
        };
        let eligible = line.data.is_some() && line.dirty == 0;
        list_remove(&mut self.lines, &mut self.lru, Which::Lru, id);
        if eligible {
            list_push_back(&mut self.lines, &mut self.lru, Which::Lru, id);
        }
    }

    fn line(&mut self, id: u64) -> &mut Line {
        self.lines.entry(id).or_default()
    }

    fn maybe_remove(&mut self, id: u64) {
        if self.lines.get(&id).is_some_and(Line::removable) {
            if let Some(l) = self.lines.remove(&id) {
                self.removed_gen = self.removed_gen.max(l.gen);
            }
        }
    }

    fn mark_dirty(&mut self, id: u64, m: u128) {
        let line = self.lines.entry(id).or_default();
        let new = m & !line.dirty;
        line.dirty |= m;
        if line.flushing {
            line.redirty |= m;
        }
        let queue = !line.dq.on;
        if queue {
            line.dirty_since = Some(Instant::now());
        }
        self.dirty_blocks += u64::from(new.count_ones());
        list_remove(&mut self.lines, &mut self.lru, Which::Lru, id);
        if queue {
            list_push_back(&mut self.lines, &mut self.dirty_q, Which::Dirty, id);
        }
    }

    /// Gives line `id` a data buffer, evicting a clean unpinned line if the cache is full.
    /// Lines in `keep` (the request's lines) are never evicted. Returns false if nothing could be evicted.
    fn ensure_data(&mut self, sh: &Shared, id: u64, keep: &std::ops::Range<u64>) -> bool {
        if self.lines.get(&id).is_some_and(|l| l.data.is_some()) {
            return true;
        }
        let data = if self.data_lines < sh.capacity_lines {
            self.data_lines += 1;
            self.spare
                .pop()
                .unwrap_or_else(|| vec![0u8; sh.line_bytes].into_boxed_slice())
        } else {
            let victim = list_iter(&self.lines, &self.lru, Which::Lru)
                .take(EVICT_SCAN_MAX)
                .find(|v| {
                    *v != id
                        && !keep.contains(v)
                        && self.lines.get(v).is_some_and(|l| {
                            l.dirty == 0 && !l.flushing && l.pins == 0 && l.busy == 0
                        })
                });
            let Some(victim) = victim else { return false };
            let Some(vl) = self.lines.get_mut(&victim) else {
                return false;
            };
            let Some(data) = vl.data.take() else {
                return false;
            };
            vl.valid = 0;
            list_remove(&mut self.lines, &mut self.lru, Which::Lru, victim);
            self.maybe_remove(victim);
            data
        };
        let line = self.line(id);
        line.data = Some(data);
        line.valid = 0;
        self.touch(id);
        true
    }

    /// One write-back request covering `line` finished.
    fn write_back_run_done(&mut self, line: u64, ok: bool) {
        let Some(l) = self.lines.get_mut(&line) else {
            return;
        };
        if !ok {
            l.flush_failed = true;
        }
        debug_assert!(l.flush_runs > 0);
        l.flush_runs = l.flush_runs.saturating_sub(1);
        if l.flush_runs > 0 {
            return;
        }
        l.flushing = false;
        if l.flush_failed {
            l.retry_after = Some(Instant::now() + WB_RETRY_DELAY);
            l.redirty = 0;
            self.wb_errors += 1;
            return;
        }
        let cleaned = l.dirty & !l.redirty;
        l.dirty = l.redirty;
        l.redirty = 0;
        l.persisted_gen = l.flush_gen;
        l.retry_after = None;
        let clean = l.dirty == 0;
        if clean {
            l.dirty_since = None;
        }
        self.dirty_blocks = self
            .dirty_blocks
            .saturating_sub(u64::from(cleaned.count_ones()));
        if clean {
            list_remove(&mut self.lines, &mut self.dirty_q, Which::Dirty, line);
            self.touch(line);
            self.maybe_remove(line);
        }
    }

    /// Drops the data of every clean, idle line (switch to mode None).
    fn drop_clean(&mut self) {
        let ids: Vec<u64> = self.lines.keys().copied().collect();
        for id in ids {
            let Some(l) = self.lines.get_mut(&id) else {
                continue;
            };
            if l.dirty != 0 || l.flushing || l.pins != 0 || l.busy != 0 {
                continue;
            }
            if let Some(d) = l.data.take() {
                self.spare.push(d);
                self.data_lines = self.data_lines.saturating_sub(1);
            }
            l.valid = 0;
            list_remove(&mut self.lines, &mut self.lru, Which::Lru, id);
            self.maybe_remove(id);
        }
        self.spare.truncate(16);
    }
}

struct CacheDev(Arc<Shared>);

impl CacheDev {
    /// A cache channel over the inner device's channel `inner`.
    fn channel_over(&self, inner: Box<dyn BdevChannel>) -> Result<Box<dyn BdevChannel>, BdevError> {
        let sh = self.0.clone();
        let err = |what: &str, e: std::io::Error| BdevError::Other(format!("{what}: {e}"));
        let efd = Arc::new(EventFd::new().map_err(|e| err("eventfd", e))?);
        let wake = WakeSet::new().map_err(|e| err("epoll", e))?;
        wake.add(efd.as_raw_fd()).map_err(|e| err("epoll add", e))?;
        let inner_fd = inner.wake_fd();
        if let Some(fd) = inner_fd {
            wake.add(fd).map_err(|e| err("epoll add", e))?;
        }
        {
            let mut w = sh.wakers.lock();
            w.retain(|e| e.strong_count() > 0);
            w.push(Arc::downgrade(&efd));
        }
        Ok(Box::new(CacheChannel {
            inner,
            inner_immediate: inner_fd.is_none(),
            sh,
            efd,
            wake,
            ops: HashMap::new(),
            next_id: 1,
            parked: VecDeque::new(),
            ready: VecDeque::new(),
            scratch: Vec::new(),
            user_ops: 0,
            wb_runs: 0,
            in_poll: false,
            spare_ids: Vec::new(),
            spare_gens: Vec::new(),
            wb_cands: Vec::new(),
            wb_segs: Vec::new(),
            wb_submits: Vec::new(),
        }))
    }
}

impl Bdev for CacheDev {
    fn info(&self) -> DeviceInfo {
        let mut i = self.0.inner.info();
        i.num_blocks = self.0.num_blocks.load(Ordering::Acquire);
        i.cache = self.0.mode();
        i
    }

    fn channel(&self) -> Result<Box<dyn BdevChannel>, BdevError> {
        self.channel_over(self.0.inner.channel()?)
    }

    fn channel_on(&self, ring: &tandem_ffi::SharedRing) -> Result<Box<dyn BdevChannel>, BdevError> {
        self.channel_over(self.0.inner.channel_on(ring)?)
    }

    fn resize(&self, new_num_blocks: u64) -> Result<(), BdevError> {
        self.0.inner.resize(new_num_blocks)?;
        self.0
            .num_blocks
            .fetch_max(new_num_blocks, Ordering::AcqRel);
        Ok(())
    }

    fn flush_blocking(&self) -> Result<(), BdevError> {
        let mut ch = self.channel()?;
        ch.submit(0, BdevOp::Flush);
        let deadline = Instant::now() + FLUSH_BLOCKING_TIMEOUT;
        let mut out = Vec::new();
        loop {
            ch.poll(&mut out);
            if let Some(c) = out.pop() {
                return c.result;
            }
            if Instant::now() > deadline {
                return Err(BdevError::Other(
                    "flush timed out waiting for write-back".into(),
                ));
            }
            if let Some(fd) = ch.wake_fd() {
                let _ = tandem_ffi::wait_readable(fd, 50);
            }
        }
    }

    fn set_cache_mode(&self, mode: CacheMode) -> Result<(), BdevError> {
        let sh = &self.0;
        let _g = sh.mode_lock.lock();
        let old = sh.mode();
        if old == mode {
            return Ok(());
        }
        if old == CacheMode::WriteBack {
            // New writes stop going dirty first; then write everything back.
            sh.mode
                .store(mode_to_u8(CacheMode::WriteThrough), Ordering::Release);
            if let Err(e) = self.flush_blocking() {
                // Nothing changed, as far as the caller is concerned.
                tracing::warn!("leaving write-back: flush failed: {e}");
                sh.mode
                    .store(mode_to_u8(CacheMode::WriteBack), Ordering::Release);
                return Err(e);
            }
        }
        sh.mode.store(mode_to_u8(mode), Ordering::Release);
        if mode == CacheMode::None {
            sh.st.lock().drop_clean();
        }
        Ok(())
    }
}

/// A read from the backing device.
struct ReadMiss {
    tag: u64,
    offset: u64,
    len: u64,
    /// Write clock at submission.
    clock: u64,
    /// Lines that existed at submission (pinned against eviction).
    pinned: Vec<u64>,
    /// Lines with pass-through writes in flight at submission (never populated).
    noisy: Vec<u64>,
}

/// An operation waiting for the inner channel.
enum Pending {
    /// A read from the backing device (cache miss or mode None).
    Read(ReadMiss),
    /// A write or discard passed through to the backing device.
    Through {
        tag: u64,
        offset: u64,
        len: u64,
        gens: Vec<(u64, u64, bool)>,
        write: bool,
    },
    /// The backing device's flush, after write-back finished.
    Flush { tag: u64 },
    /// One write-back request covering lines `first..first+lines`.
    WriteBack { first: u64, lines: u32 },
}

/// An operation that cannot start yet.
enum Parked {
    /// Pass-through write (`buf` Some) or discard waiting for overlapping write-backs.
    Through {
        tag: u64,
        offset: u64,
        len: u64,
        buf: Option<AlignedBuf>,
        fua: bool,
    },
    /// Flush waiting until every line dirty at submission is written back.
    Flush {
        tag: u64,
        waits: Vec<(u64, u64)>,
        errors: u64,
    },
}

struct CacheChannel {
    /// The inner channel first: dropped last among I/O owners is fine since `Drop` drains.
    inner: Box<dyn BdevChannel>,
    inner_immediate: bool,
    sh: Arc<Shared>,
    efd: Arc<EventFd>,
    wake: WakeSet,
    ops: HashMap<u64, Pending>,
    next_id: u64,
    parked: VecDeque<Parked>,
    ready: VecDeque<Completion>,
    scratch: Vec<Completion>,
    /// User operations submitted and not yet returned by poll.
    user_ops: usize,
    /// Write-back runs in flight on this channel.
    wb_runs: usize,
    /// Inside `poll`: completions are returned directly, no need to signal the wake fd.
    in_poll: bool,
    /// Recycled per-operation vectors (steady-state I/O allocates nothing).
    spare_ids: Vec<Vec<u64>>,
    spare_gens: Vec<Vec<(u64, u64, bool)>>,
    /// Scratch space for `write_back` (kept to avoid allocating per poll).
    wb_cands: Vec<u64>,
    wb_segs: Vec<(u64, u32, u32)>,
    wb_submits: Vec<(u64, u32, u64, AlignedBuf)>,
}

impl CacheChannel {
    fn id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    fn finish(&mut self, tag: u64, result: Result<(), BdevError>, buf: Option<AlignedBuf>) {
        if self.ready.is_empty() && !self.in_poll {
            // Ready outside poll (immediate completion): make the wake fd readable.
            let _ = self.efd.notify();
        }
        self.ready.push_back(Completion { tag, result, buf });
    }

    fn inner_submit(&mut self, id: u64, op: BdevOp, pending: Pending) {
        self.ops.insert(id, pending);
        self.inner.submit(id, op);
        if self.inner_immediate {
            let _ = self.efd.notify();
        }
    }

    fn park(&mut self, p: Parked) {
        self.sh.parked.fetch_add(1, Ordering::AcqRel);
        if matches!(p, Parked::Flush { .. }) {
            self.sh.urgent.fetch_add(1, Ordering::AcqRel);
        }
        self.parked.push_back(p);
    }

    fn read(&mut self, tag: u64, offset: u64, len: u64) {
        let sh = self.sh.clone();
        let pieces = sh.pieces(offset, len);
        let bs = sh.bs();
        let mode = sh.mode();
        let mut st = sh.st.lock();
        if mode != CacheMode::None {
            let hit = pieces.clone().all(|p| {
                st.lines
                    .get(&p.line)
                    .is_some_and(|l| l.data.is_some() && l.valid & p.mask() == p.mask())
            });
            if hit {
                let mut buf = self.inner.alloc_buf(len as usize);
                for p in pieces.clone() {
                    if let Some(data) = st.lines.get(&p.line).and_then(|l| l.data.as_ref()) {
                        let from = p.start as usize * bs;
                        let n = p.n as usize * bs;
                        buf[p.buf_off..p.buf_off + n].copy_from_slice(&data[from..from + n]);
                    }
                    st.touch(p.line);
                }
                drop(st);
                return self.finish(tag, Ok(()), Some(buf));
            }
        }
        let mut pinned = self.spare_ids.pop().unwrap_or_default();
        let mut noisy = self.spare_ids.pop().unwrap_or_default();
        for p in pieces.clone() {
            if let Some(l) = st.lines.get_mut(&p.line) {
                l.pins += 1;
                pinned.push(p.line);
                if l.busy > 0 {
                    // A pass-through write may land before or after our read: never
                    // populate this line from it.
                    noisy.push(p.line);
                }
            }
        }
        let clock = st.clock;
        drop(st);
        let id = self.id();
        let op = BdevOp::Read {
            offset,
            len: len as u32,
        };
        self.inner_submit(
            id,
            op,
            Pending::Read(ReadMiss {
                tag,
                offset,
                len,
                clock,
                pinned,
                noisy,
            }),
        );
    }

    fn read_done(&mut self, r: ReadMiss, c: Completion) {
        let ReadMiss {
            tag,
            offset,
            len,
            clock,
            pinned,
            noisy,
        } = r;
        let sh = self.sh.clone();
        let bs = sh.bs();
        let mut st = sh.st.lock();
        let mut buf = c.buf;
        if let (Ok(()), Some(b)) = (&c.result, buf.as_mut()) {
            let populate = sh.mode() != CacheMode::None;
            let pieces = sh.pieces(offset, len);
            let lines = sh.line_range(offset, len);
            for p in pieces.clone() {
                // Overlay newer cached data.
                if let Some(l) = st.lines.get(&p.line) {
                    if let Some(data) = &l.data {
                        for (s, n) in runs(l.valid & p.mask()) {
                            let at = p.buf_off + (s - p.start) as usize * bs;
                            let from = s as usize * bs;
                            let n = n as usize * bs;
                            b[at..at + n].copy_from_slice(&data[from..from + n]);
                        }
                    }
                }
                if !populate {
                    continue;
                }
                // Populate only if no write to this line was in flight at any time
                // while the read was: none at submission (`noisy`), none started since
                // (`gen`), none now (`busy`).
                let fresh = match st.lines.get(&p.line) {
                    Some(l) => l.gen <= clock && l.busy == 0 && !noisy.contains(&p.line),
                    None => st.removed_gen <= clock,
                };
                if !fresh || !st.ensure_data(&sh, p.line, &lines) {
                    continue;
                }
                let l = st.line(p.line);
                let missing = p.mask() & !l.valid;
                if let Some(data) = l.data.as_mut() {
                    for (s, n) in runs(missing) {
                        let at = p.buf_off + (s - p.start) as usize * bs;
                        let to = s as usize * bs;
                        let n = n as usize * bs;
                        data[to..to + n].copy_from_slice(&b[at..at + n]);
                    }
                    l.valid |= missing;
                }
                st.touch(p.line);
            }
        }
        for &id in &pinned {
            if let Some(l) = st.lines.get_mut(&id) {
                l.pins = l.pins.saturating_sub(1);
            }
            st.maybe_remove(id);
        }
        drop(st);
        self.recycle_ids(pinned);
        self.recycle_ids(noisy);
        self.finish(tag, c.result, buf);
    }

    fn recycle_ids(&mut self, mut v: Vec<u64>) {
        if self.spare_ids.len() < SPARE_VECS_MAX {
            v.clear();
            self.spare_ids.push(v);
        }
    }

    /// Write-back admission: copies the write into the cache as dirty data. False if the
    /// dirty budget or the cache's capacity does not allow it.
    fn try_admit(&mut self, offset: u64, buf: &AlignedBuf) -> bool {
        let sh = self.sh.clone();
        let bs = sh.bs();
        let pieces = sh.pieces(offset, buf.len() as u64);
        let mut st = sh.st.lock();
        let new_dirty: u64 = pieces
            .clone()
            .map(|p| {
                let d = st.lines.get(&p.line).map_or(0, |l| l.dirty);
                u64::from((p.mask() & !d).count_ones())
            })
            .sum();
        if st.dirty_blocks + new_dirty > sh.dirty_budget_blocks {
            return false;
        }
        let lines = sh.line_range(offset, buf.len() as u64);
        for p in pieces.clone() {
            if !st.ensure_data(&sh, p.line, &lines) {
                for p in pieces.clone() {
                    st.maybe_remove(p.line);
                }
                return false;
            }
        }
        st.clock += 1;
        let clock = st.clock;
        for p in pieces.clone() {
            let l = st.line(p.line);
            if let Some(data) = l.data.as_mut() {
                let to = p.start as usize * bs;
                let n = p.n as usize * bs;
                data[to..to + n].copy_from_slice(&buf[p.buf_off..p.buf_off + n]);
            }
            l.valid |= p.mask();
            l.gen = clock;
            st.mark_dirty(p.line, p.mask());
            st.touch(p.line);
        }
        true
    }

    /// Write (`buf` Some) or discard passed through to the backing device.
    fn through(&mut self, tag: u64, offset: u64, len: u64, buf: Option<AlignedBuf>, fua: bool) {
        let sh = self.sh.clone();
        let bs = sh.bs();
        let pieces = sh.pieces(offset, len);
        let mut st = sh.st.lock();
        if pieces
            .clone()
            .any(|p| st.lines.get(&p.line).is_some_and(|l| l.flushing))
        {
            drop(st);
            return self.park(Parked::Through {
                tag,
                offset,
                len,
                buf,
                fua,
            });
        }
        st.clock += 1;
        let clock = st.clock;
        let mut gens = self.spare_gens.pop().unwrap_or_default();
        for p in pieces.clone() {
            let l = st.line(p.line);
            l.busy += 1;
            l.gen = clock;
            // Alone: no other pass-through write on this line is in flight. Completion
            // order is not landing order, so only a write that was alone for its whole
            // life may put its data into the cache.
            gens.push((p.line, clock, l.busy == 1));
            let m = p.mask();
            // Dirty blocks get the new data (they stay dirty: written back again later,
            // harmlessly); clean cached blocks are dropped until the write completes.
            let dirty = l.dirty & m;
            l.valid &= !(m & !l.dirty);
            if let Some(data) = l.data.as_mut() {
                for (s, n) in runs(dirty) {
                    let to = s as usize * bs;
                    let n = n as usize * bs;
                    match &buf {
                        Some(b) => {
                            let at = p.buf_off + (s - p.start) as usize * bs;
                            data[to..to + n].copy_from_slice(&b[at..at + n]);
                        }
                        None => data[to..to + n].fill(0),
                    }
                }
            }
        }
        drop(st);
        let id = self.id();
        let write = buf.is_some();
        let op = match buf {
            Some(buf) => BdevOp::Write { offset, buf, fua },
            None => BdevOp::Discard { offset, len },
        };
        self.inner_submit(
            id,
            op,
            Pending::Through {
                tag,
                offset,
                len,
                gens,
                write,
            },
        );
    }

    fn through_done(
        &mut self,
        tag: u64,
        offset: u64,
        len: u64,
        mut gens: Vec<(u64, u64, bool)>,
        write: bool,
        c: Completion,
    ) {
        let sh = self.sh.clone();
        let bs = sh.bs();
        let populate = write && c.result.is_ok() && sh.mode() != CacheMode::None;
        let pieces = sh.pieces(offset, len);
        let lines = sh.line_range(offset, len);
        let mut st = sh.st.lock();
        for (p, &(id, gen, alone)) in pieces.clone().zip(gens.iter()) {
            let Some(l) = st.lines.get_mut(&id) else {
                continue;
            };
            debug_assert!(l.busy > 0);
            l.busy = l.busy.saturating_sub(1);
            if populate && alone && l.gen == gen && l.busy == 0 && st.ensure_data(&sh, id, &lines) {
                if let (Some(b), l) = (c.buf.as_ref(), st.line(id)) {
                    let m = p.mask() & !l.dirty;
                    if let Some(data) = l.data.as_mut() {
                        for (s, n) in runs(m) {
                            let at = p.buf_off + (s - p.start) as usize * bs;
                            let to = s as usize * bs;
                            let n = n as usize * bs;
                            data[to..to + n].copy_from_slice(&b[at..at + n]);
                        }
                        l.valid |= m;
                    }
                }
                st.touch(id);
            }
            st.maybe_remove(id);
        }
        drop(st);
        if self.spare_gens.len() < SPARE_VECS_MAX {
            gens.clear();
            self.spare_gens.push(gens);
        }
        sh.wake_if_parked();
        self.finish(tag, c.result, c.buf);
    }

    fn flush(&mut self, tag: u64) {
        let st = self.sh.st.lock();
        let waits: Vec<(u64, u64)> = list_iter(&st.lines, &st.dirty_q, Which::Dirty)
            .filter_map(|id| st.lines.get(&id).map(|l| (id, l.gen)))
            .collect();
        let errors = st.wb_errors;
        drop(st);
        if waits.is_empty() {
            let id = self.id();
            self.inner_submit(id, BdevOp::Flush, Pending::Flush { tag });
        } else {
            self.park(Parked::Flush { tag, waits, errors });
        }
    }

    /// Retries parked operations once each.
    fn retry_parked(&mut self) {
        for _ in 0..self.parked.len() {
            let Some(p) = self.parked.pop_front() else {
                break;
            };
            self.sh.parked.fetch_sub(1, Ordering::AcqRel);
            match p {
                Parked::Through {
                    tag,
                    offset,
                    len,
                    buf,
                    fua,
                } => self.through(tag, offset, len, buf, fua),
                Parked::Flush {
                    tag,
                    mut waits,
                    errors,
                } => {
                    self.sh.urgent.fetch_sub(1, Ordering::AcqRel);
                    let st = self.sh.st.lock();
                    if st.wb_errors != errors {
                        drop(st);
                        let e = BdevError::Other("write-back to the backing device failed".into());
                        self.finish(tag, Err(e), None);
                        continue;
                    }
                    waits.retain(|(id, gen)| {
                        st.lines
                            .get(id)
                            .is_some_and(|l| l.dirty != 0 && l.persisted_gen < *gen)
                    });
                    drop(st);
                    if waits.is_empty() {
                        let id = self.id();
                        self.inner_submit(id, BdevOp::Flush, Pending::Flush { tag });
                    } else {
                        self.park(Parked::Flush { tag, waits, errors });
                    }
                }
            }
        }
    }

    /// Starts write-back of dirty lines, oldest first, bounded per call. From each chosen
    /// line the write-back extends over following dirty lines while the dirty blocks stay
    /// contiguous, and contiguous runs are written with one request of up to
    /// `WB_MERGE_MAX_BYTES` (sequential writes go back in large requests).
    fn write_back(&mut self) {
        let sh = self.sh.clone();
        let bs = sh.bs();
        let bpl = sh.blocks_per_line;
        let mut started = 0;
        let mut cands = std::mem::take(&mut self.wb_cands);
        let mut segs = std::mem::take(&mut self.wb_segs);
        let mut submits = std::mem::take(&mut self.wb_submits);
        cands.clear();
        submits.clear();
        {
            let mut st = sh.st.lock();
            if st.dirty_q.head.is_none() {
                self.wb_cands = cands;
                self.wb_segs = segs;
                self.wb_submits = submits;
                return;
            }
            let now = Instant::now();
            let eager = sh.urgent.load(Ordering::Acquire) > 0
                || sh.mode() != CacheMode::WriteBack
                || self.user_ops == 0
                || st.dirty_blocks * 2 > sh.dirty_budget_blocks;
            cands.extend(list_iter(&st.lines, &st.dirty_q, Which::Dirty).take(WB_SCAN_MAX));
            for &id in &cands {
                if started >= WB_LINES_PER_POLL || self.wb_runs + submits.len() >= WB_RUNS_MAX {
                    break;
                }
                let Some(l) = st.lines.get(&id) else { continue };
                if !l.wb_eligible(now) {
                    continue;
                }
                let old = l
                    .dirty_since
                    .is_some_and(|t| now.duration_since(t) > WB_AGE_MAX);
                if !eager && !old {
                    break; // queue is oldest first: nothing older follows
                }
                // Snapshot this line and contiguous dirty successors.
                segs.clear();
                let mut line = id;
                let mut bytes = 0usize;
                while let Some(l) = st.lines.get_mut(&line) {
                    l.flushing = true;
                    l.flush_gen = l.gen;
                    l.flush_runs = 0;
                    l.flush_failed = false;
                    l.redirty = 0;
                    started += 1;
                    segs.extend(runs(l.dirty).map(|(s, n)| (line, s, n)));
                    bytes += l.dirty.count_ones() as usize * bs;
                    let ends_at_line_end = segs.last().is_some_and(|&(_, s, n)| s + n == bpl);
                    if !ends_at_line_end || bytes >= WB_MERGE_MAX_BYTES {
                        break;
                    }
                    let next_ok = st
                        .lines
                        .get(&(line + 1))
                        .is_some_and(|n| n.wb_eligible(now) && n.dirty & 1 != 0);
                    if !next_ok {
                        break;
                    }
                    line += 1;
                }
                // Group contiguous segments into requests.
                let mut i = 0;
                while i < segs.len() {
                    let mut j = i + 1;
                    let mut blocks = segs[i].2 as usize;
                    while j < segs.len() {
                        let (pl, ps, pn) = segs[j - 1];
                        let (nl, ns, nn) = segs[j];
                        let contiguous = nl == pl + 1 && ps + pn == bpl && ns == 0;
                        if !contiguous || (blocks + nn as usize) * bs > WB_MERGE_MAX_BYTES {
                            break;
                        }
                        blocks += nn as usize;
                        j += 1;
                    }
                    let mut buf = self.inner.alloc_buf(blocks * bs);
                    let mut at = 0;
                    for &(line, s, n) in &segs[i..j] {
                        let n = n as usize * bs;
                        if let Some(l) = st.lines.get_mut(&line) {
                            if let Some(data) = l.data.as_ref() {
                                let from = s as usize * bs;
                                buf[at..at + n].copy_from_slice(&data[from..from + n]);
                            }
                            l.flush_runs += 1;
                        }
                        at += n;
                    }
                    let (first, s, _) = segs[i];
                    let offset = (first * u64::from(bpl) + u64::from(s)) * bs as u64;
                    let lines = (segs[j - 1].0 - first + 1) as u32;
                    submits.push((first, lines, offset, buf));
                    i = j;
                }
            }
        }
        for (first, lines, offset, buf) in submits.drain(..) {
            let id = self.id();
            self.wb_runs += 1;
            let op = BdevOp::Write {
                offset,
                buf,
                fua: false,
            };
            self.inner_submit(id, op, Pending::WriteBack { first, lines });
        }
        self.wb_cands = cands;
        self.wb_segs = segs;
        self.wb_submits = submits;
    }

    fn write_back_done(&mut self, first: u64, lines: u32, c: Completion) {
        self.wb_runs = self.wb_runs.saturating_sub(1);
        if let Some(b) = c.buf {
            self.inner.free_buf(b);
        }
        if let Err(e) = &c.result {
            tracing::warn!(line = first, lines, "write-back failed: {e}");
        }
        let sh = self.sh.clone();
        let mut st = sh.st.lock();
        for line in first..first + u64::from(lines) {
            st.write_back_run_done(line, c.result.is_ok());
        }
        drop(st);
        sh.wake_if_parked();
    }
    fn handle_inner(&mut self, c: Completion) {
        let Some(p) = self.ops.remove(&c.tag) else {
            tracing::error!(id = c.tag, "cache: completion for an unknown operation");
            return;
        };
        match p {
            Pending::Read(r) => self.read_done(r, c),
            Pending::Through {
                tag,
                offset,
                len,
                gens,
                write,
            } => self.through_done(tag, offset, len, gens, write, c),
            Pending::Flush { tag } => self.finish(tag, c.result, None),
            Pending::WriteBack { first, lines } => self.write_back_done(first, lines, c),
        }
    }

    fn poll_inner(&mut self) -> usize {
        let mut scratch = std::mem::take(&mut self.scratch);
        self.inner.poll(&mut scratch);
        let n = scratch.len();
        for c in scratch.drain(..) {
            self.handle_inner(c);
        }
        self.scratch = scratch;
        n
    }
}

impl BdevChannel for CacheChannel {
    fn submit(&mut self, tag: u64, op: BdevOp) {
        let sh = self.sh.clone();
        let nb = sh.num_blocks.load(Ordering::Acquire);
        self.user_ops += 1;
        if let Err(e) = check_op(&op, sh.block_size, nb, sh.read_only) {
            let c = reject(tag, op, e);
            return self.finish(c.tag, c.result, c.buf);
        }
        match op {
            BdevOp::Read { offset, len } => {
                if len == 0 {
                    let b = self.inner.alloc_buf(0);
                    return self.finish(tag, Ok(()), Some(b));
                }
                self.read(tag, offset, u64::from(len))
            }
            BdevOp::Write { offset, buf, fua } => {
                if buf.is_empty() {
                    return self.finish(tag, Ok(()), Some(buf));
                }
                if sh.mode() == CacheMode::WriteBack && !fua && self.try_admit(offset, &buf) {
                    return self.finish(tag, Ok(()), Some(buf));
                }
                let len = buf.len() as u64;
                self.through(tag, offset, len, Some(buf), fua)
            }
            BdevOp::Discard { offset, len } => {
                if len == 0 {
                    return self.finish(tag, Ok(()), None);
                }
                self.through(tag, offset, len, None, false)
            }
            BdevOp::Flush => self.flush(tag),
            // Refused by `check_op` above; kept for an exhaustive match.
            BdevOp::CompareAndWrite { buf, .. } => {
                self.finish(tag, Err(BdevError::Unsupported), Some(buf))
            }
            BdevOp::TaskManagement { .. } | BdevOp::ReservationChange { .. } => {
                self.finish(tag, Err(BdevError::Unsupported), None)
            }
        }
    }

    fn poll(&mut self, out: &mut Vec<Completion>) -> usize {
        self.efd.drain();
        self.in_poll = true;
        self.poll_inner();
        if !self.parked.is_empty() {
            self.retry_parked();
        }
        self.write_back();
        if self.inner_immediate && !self.ops.is_empty() {
            // Completions of what we just submitted are already there.
            self.poll_inner();
            if !self.parked.is_empty() {
                self.retry_parked();
            }
        }
        let n = self.ready.len();
        self.user_ops -= n.min(self.user_ops);
        if self.user_ops == 0 {
            // Going idle: start writing back now, or dirty data would wait for the next I/O.
            self.write_back();
        }
        self.in_poll = false;
        out.extend(self.ready.drain(..));
        n
    }

    fn in_flight(&self) -> usize {
        // Write-backs count: they complete only through our poll, and a Flush on any
        // channel (or `flush_blocking`) may be waiting for them.
        self.user_ops + self.wb_runs
    }

    fn wake_fd(&self) -> Option<RawFd> {
        Some(self.wake.as_raw_fd())
    }

    fn alloc_buf(&mut self, len: usize) -> AlignedBuf {
        self.inner.alloc_buf(len)
    }

    fn free_buf(&mut self, buf: AlignedBuf) {
        self.inner.free_buf(buf)
    }
}

impl Drop for CacheChannel {
    fn drop(&mut self) {
        // Finish what the shared state is waiting for (write-backs, pass-through writes,
        // pinned reads) so no line stays flushing/busy/pinned forever.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.ops.is_empty() {
            if self.poll_inner() == 0 {
                if Instant::now() > deadline {
                    tracing::error!(n = self.ops.len(), "cache channel dropped with stuck I/O");
                    break;
                }
                if let Some(fd) = self.inner.wake_fd() {
                    let _ = tandem_ffi::wait_readable(fd, 50);
                }
            }
        }
        for p in self.parked.drain(..) {
            self.sh.parked.fetch_sub(1, Ordering::AcqRel);
            if matches!(p, Parked::Flush { .. }) {
                self.sh.urgent.fetch_sub(1, Ordering::AcqRel);
            }
        }
        self.sh.wake_if_parked();
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn masks_and_runs() {
        assert_eq!(mask(0, 0), 0);
        assert_eq!(mask(0, 128), !0);
        assert_eq!(mask(3, 2), 0b11000);
        assert_eq!(mask(120, 8), 0xffu128 << 120);
        let r: Vec<_> = runs(0b1110_0110 | (1u128 << 127)).collect();
        assert_eq!(r, vec![(1, 2), (5, 3), (127, 1)]);
        assert_eq!(runs(!0).collect::<Vec<_>>(), vec![(0, 128)]);
        assert_eq!(runs(0).count(), 0);
    }

    #[test]
    fn pieces_split_at_line_boundaries() {
        let dev = with_cache(
            crate::open_ram("r", 512, 4096),
            CacheMode::WriteBack,
            1 << 20,
        );
        let _ = dev.info();
        let sh = Shared {
            inner: crate::open_ram("r", 512, 4096),
            block_size: 512,
            blocks_per_line: 128,
            line_bytes: 65536,
            capacity_lines: 16,
            dirty_budget_blocks: 1536,
            num_blocks: AtomicU64::new(4096),
            read_only: false,
            mode: AtomicU8::new(2),
            st: Mutex::new(State::default()),
            wakers: Mutex::new(Vec::new()),
            urgent: AtomicUsize::new(0),
            parked: AtomicUsize::new(0),
            mode_lock: Mutex::new(()),
        };
        // blocks 100..300: line 0 [100,128), line 1 [0,128), line 2 [0,44)
        let p: Vec<_> = sh
            .pieces(100 * 512, 200 * 512)
            .map(|p| (p.line, p.start, p.n, p.buf_off))
            .collect();
        assert_eq!(
            p,
            vec![
                (0, 100, 28, 0),
                (1, 0, 128, 28 * 512),
                (2, 0, 44, 156 * 512)
            ]
        );
        assert_eq!(sh.line_range(100 * 512, 200 * 512), 0..3);
        assert_eq!(sh.line_range(128 * 512, 128 * 512), 1..2);
        assert_eq!(sh.pieces(0, 0).count(), 0);
    }
}
