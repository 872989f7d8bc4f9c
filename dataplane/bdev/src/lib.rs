//! `tandem-bdev`: block devices for the Tandem data plane.
//!
//! A [`Bdev`] is shared by all reactor threads; each reactor asks it for its own
//! [`BdevChannel`] and submits operations there. Completions come back only through that
//! channel's [`BdevChannel::poll`], on the submitting thread.
//!
//! Devices:
//! - [`open_ram`]: a RAM disk (segments behind locks, so channels never contend on different
//!   segments); completions are immediate.
//! - [`open_file`]: an image file or block device, `O_DIRECT` through one io_uring per channel.
//! - [`with_cache`]: a shared RAM cache layer over any device: write-back, write-through or
//!   none, switchable live.
//!
//! All offsets and lengths are in bytes and must be multiples of the block size; requests
//! outside the device or misaligned complete with [`BdevError::OutOfRange`] /
//! [`BdevError::Misaligned`]. Nothing here panics on caller input.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
// `is_multiple_of` needs Rust 1.87; the workspace MSRV is 1.80.
#![allow(unknown_lints, clippy::manual_is_multiple_of)]

mod cache;
mod file;
mod pool;
mod ram;

use std::sync::Arc;

pub use cache::with_cache;
pub use file::{open_file, FileConfig};
pub use pool::BufPool;
pub use ram::{open_ram, try_open_ram};
pub use tandem_ffi::AlignedBuf;

/// Alignment of every buffer this crate hands out, and required of write buffers: enough for
/// `O_DIRECT` on any device we support (memory alignment is at most 4096 on Linux devices).
pub const BUF_ALIGN: usize = 4096;

/// Largest single read or write accepted (bytes). Bigger requests fail with
/// [`BdevError::Other`]; the SCSI layer advertises a smaller maximum transfer length.
pub const MAX_IO_BYTES: u64 = 64 << 20;

/// How a device caches writes in RAM: `None` (every operation goes to the backing device),
/// `WriteThrough` (writes complete when the backing device has them; reads are served from
/// RAM on a hit) or `WriteBack` (writes complete when RAM has them; dirty data is written
/// back in the background). One type for the configuration, the API, the block devices and
/// the caching mode page, so no layer translates it.
pub use tandem_config::CacheMode;

/// Static and current properties of a device.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    /// Device name (from the configuration).
    pub name: String,
    /// Logical block size in bytes.
    pub block_size: u32,
    /// Current size in blocks (grows with [`Bdev::resize`]).
    pub num_blocks: u64,
    /// Writes and discards are refused.
    pub read_only: bool,
    /// Current cache mode ([`CacheMode::None`] for devices without a cache layer).
    pub cache: CacheMode,
}

/// One operation submitted on a channel.
#[derive(Debug)]
pub enum BdevOp {
    /// Read `len` bytes at `offset`; the completion carries the filled buffer.
    Read {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u32,
    },
    /// Write `buf[..buf.len()]` at `offset`; `fua` = durable on the backing device before
    /// completion. The buffer must be aligned to [`BUF_ALIGN`] (use
    /// [`BdevChannel::alloc_buf`]); it comes back in the completion.
    Write {
        /// Byte offset.
        offset: u64,
        /// The data; its length is the write length.
        buf: AlignedBuf,
        /// Force unit access.
        fua: bool,
    },
    /// Make every write completed before this was submitted durable (including write-back
    /// data cached for any channel).
    Flush,
    /// Deallocate; the range reads back as zeroes afterwards.
    Discard {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u64,
    },
    /// COMPARE AND WRITE: `buf` holds the expected data (first half) then the new data
    /// (second half), each `buf.len() / 2` bytes at `offset`. The device compares the blocks
    /// with the first half and, only if equal, writes the second half, atomically against
    /// every other write to the device (on a replicated device: through any node). Unequal:
    /// [`BdevError::Miscompare`]. Offered only by devices whose
    /// [`Bdev::atomic_compare_and_write`] is true; others refuse it with
    /// [`BdevError::Unsupported`] (the caller then compares itself). The buffer must be
    /// aligned to [`BUF_ALIGN`]; it comes back in the completion.
    CompareAndWrite {
        /// Byte offset.
        offset: u64,
        /// Expected data, then new data (equal halves).
        buf: AlignedBuf,
        /// Force unit access for the write.
        fua: bool,
    },
    /// A task management function for the whole logical unit (LOGICAL UNIT RESET, CLEAR
    /// TASK SET) that the caller already applied on this node: the device carries it to the
    /// other nodes serving it and completes once they applied it too. Offered only by
    /// devices whose [`Bdev::cluster_task_management`] is true (a replicated device); others
    /// refuse it with [`BdevError::Unsupported`].
    TaskManagement {
        /// Which function.
        function: TaskMgmt,
    },
    /// A persistent reservation change (PR OUT, SPC-2 RESERVE / RELEASE) for the whole
    /// logical unit, computed by the caller from the state of version `base`: the device
    /// orders it against every other change through any node, has every node apply `state`
    /// (and raise `notice`'s unit attentions) and completes once they did.
    /// [`BdevError::Miscompare`]: another change came first; recompute from the state the
    /// device delivered meanwhile and submit again. Offered only by devices whose
    /// [`Bdev::cluster_reservations`] is true; others refuse it with
    /// [`BdevError::Unsupported`].
    ReservationChange {
        /// The version the change was computed from.
        base: PrVersionId,
        /// The whole new state, encoded by the caller.
        state: Vec<u8>,
        /// Its unit attentions, encoded by the caller.
        notice: Vec<u8>,
    },
}

/// The version of a logical unit's reservation state on a device that carries it across
/// nodes (see [`BdevOp::ReservationChange`]); opaque to callers except for equality.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PrVersionId {
    /// The epoch the issuing node's sequencer role began in.
    pub epoch: u64,
    /// The change's number within that role.
    pub n: u64,
}

/// A task management function that [`BdevOp::TaskManagement`] carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskMgmt {
    /// LOGICAL UNIT RESET.
    LunReset,
    /// CLEAR TASK SET.
    ClearTaskSet,
}

/// The result of one operation.
#[derive(Debug)]
pub struct Completion {
    /// The tag given to [`BdevChannel::submit`].
    pub tag: u64,
    /// Success or why not.
    pub result: Result<(), BdevError>,
    /// Read: the filled buffer (`len` = requested). Write and compare-and-write: the caller's
    /// buffer back for reuse (also on errors). None otherwise.
    pub buf: Option<AlignedBuf>,
}

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BdevError {
    /// The backing device reported an error.
    #[error("I/O error: {0}")]
    Io(std::io::Error),
    /// The request reaches beyond the end of the device.
    #[error("out of range")]
    OutOfRange,
    /// Write or discard on a read-only device.
    #[error("read-only device")]
    ReadOnly,
    /// Offset, length or buffer not aligned as required.
    #[error("misaligned request")]
    Misaligned,
    /// Anything else, with an explanation.
    #[error("{0}")]
    Other(String),
    /// The device cannot serve I/O on this node now (a replicated device that is not a
    /// synchronized member with a valid lease). SCSI answers NOT READY, LOGICAL UNIT NOT
    /// ACCESSIBLE, TARGET PORT IN UNAVAILABLE STATE (04/0C) so multipath retries the command
    /// on another node; never MEDIUM ERROR.
    #[error("not ready: this node's replica is not serving")]
    NotReady,
    /// COMPARE AND WRITE found different data; nothing was written. `offset` is the offset of
    /// the first differing byte from the start of the compared range (SCSI reports it in the
    /// sense data's INFORMATION field).
    #[error("miscompare at byte {offset} of the compared range")]
    Miscompare {
        /// First differing byte, from the start of the range.
        offset: u64,
    },
    /// The device does not offer this operation (see [`Bdev::atomic_compare_and_write`]).
    #[error("operation not supported by this device")]
    Unsupported,
}

/// A block device shared by all reactor threads.
pub trait Bdev: Send + Sync {
    /// Current properties.
    fn info(&self) -> DeviceInfo;
    /// A new channel for the calling reactor thread.
    fn channel(&self) -> Result<Box<dyn BdevChannel>, BdevError>;
    /// A new channel whose io_uring work goes through `ring`, the calling reactor's ring
    /// shared by all its devices and sockets. The reactor then owes the channel one
    /// [`SharedRing::enter`](tandem_ffi::SharedRing::enter) before every sleep and after every
    /// `submit` before it polls again (it enters once per pass for everyone). Devices
    /// without io_uring work ignore the ring.
    fn channel_on(&self, ring: &tandem_ffi::SharedRing) -> Result<Box<dyn BdevChannel>, BdevError> {
        let _ = ring;
        self.channel()
    }
    /// Grows the device online to `new_num_blocks` (shrinking is refused).
    fn resize(&self, new_num_blocks: u64) -> Result<(), BdevError>;
    /// Writes back any cached data and syncs the backing store. Blocks the calling thread;
    /// for shutdown and control paths, never on a reactor. Other channels of the device must
    /// keep honouring the polling contract of [`BdevChannel`] (or be dropped: dropping a
    /// channel finishes its background work), since write-backs they started complete only
    /// through their `poll`. Gives up with an error after two minutes.
    fn flush_blocking(&self) -> Result<(), BdevError>;
    /// Changes the cache mode live; leaving write-back writes all dirty data back first
    /// (blocking, like [`Bdev::flush_blocking`]). Devices without a cache layer accept only
    /// [`CacheMode::None`].
    fn set_cache_mode(&self, mode: CacheMode) -> Result<(), BdevError>;
    /// Whether channels run [`BdevOp::CompareAndWrite`] themselves, atomically against every
    /// other write to the device wherever it comes from (a replicated device, whose writes
    /// also arrive through partner nodes). A local device says no: the SCSI layer's own
    /// read, compare and write under its range lock is atomic there already.
    fn atomic_compare_and_write(&self) -> bool {
        false
    }
    /// Whether the device is served by several nodes, so that a task management function
    /// for the whole LU must reach them ([`BdevOp::TaskManagement`]).
    fn cluster_task_management(&self) -> bool {
        false
    }
    /// Whether persistent reservation changes must be carried to the other nodes serving
    /// the device ([`BdevOp::ReservationChange`]).
    fn cluster_reservations(&self) -> bool {
        false
    }
}

/// A per-thread handle for submitting I/O to a [`Bdev`].
///
/// Contract for reactors: keep calling [`BdevChannel::poll`] while `in_flight() > 0` (a
/// reactor may sleep on [`BdevChannel::wake_fd`] meanwhile, if it is `Some`, instead of
/// spinning). With `in_flight() == 0` the channel needs no attention: nothing will complete
/// and no background work is pending on it.
pub trait BdevChannel: Send {
    /// Starts an operation. Never blocks; every submission produces exactly one completion
    /// (errors included) from a later [`BdevChannel::poll`].
    fn submit(&mut self, tag: u64, op: BdevOp);
    /// Appends finished operations to `out` and drives background work (write-back), bounded
    /// per call. Returns how many completions were appended.
    fn poll(&mut self, out: &mut Vec<Completion>) -> usize;
    /// Operations submitted and not yet returned by `poll`, plus background work this
    /// channel is driving (write-back of a cache). Non-zero means "poll me again".
    fn in_flight(&self) -> usize;
    /// A descriptor that is readable when `poll` has work to do; `None` means completions
    /// are always ready immediately after `submit`.
    fn wake_fd(&self) -> Option<std::os::fd::RawFd>;
    /// An aligned buffer of `len` bytes from the channel's pool.
    fn alloc_buf(&mut self, len: usize) -> AlignedBuf;
    /// Returns a buffer to the channel's pool.
    fn free_buf(&mut self, buf: AlignedBuf);
}

/// Checks alignment and range of `[offset, offset+len)` on a device of `num_blocks` blocks.
pub(crate) fn check_range(
    block_size: u32,
    num_blocks: u64,
    offset: u64,
    len: u64,
) -> Result<(), BdevError> {
    let bs = u64::from(block_size);
    if bs == 0 || offset % bs != 0 || len % bs != 0 {
        return Err(BdevError::Misaligned);
    }
    // Overflow-free form of `offset + len > size` (blocks).
    let lba = offset / bs;
    let n = len / bs;
    if lba > num_blocks || num_blocks - lba < n {
        return Err(BdevError::OutOfRange);
    }
    Ok(())
}

/// Validates an operation against device geometry before any work is done.
pub(crate) fn check_op(
    op: &BdevOp,
    block_size: u32,
    num_blocks: u64,
    read_only: bool,
) -> Result<(), BdevError> {
    match op {
        BdevOp::Read { offset, len } => {
            if u64::from(*len) > MAX_IO_BYTES {
                return Err(BdevError::Other(format!(
                    "read of {len} bytes exceeds the {MAX_IO_BYTES}-byte limit"
                )));
            }
            check_range(block_size, num_blocks, *offset, u64::from(*len))
        }
        BdevOp::Write { offset, buf, .. } => {
            if read_only {
                return Err(BdevError::ReadOnly);
            }
            if buf.len() as u64 > MAX_IO_BYTES {
                return Err(BdevError::Other(format!(
                    "write of {} bytes exceeds the {MAX_IO_BYTES}-byte limit",
                    buf.len()
                )));
            }
            if buf.as_ptr() as usize % BUF_ALIGN != 0 {
                return Err(BdevError::Misaligned);
            }
            check_range(block_size, num_blocks, *offset, buf.len() as u64)
        }
        BdevOp::Flush => Ok(()),
        BdevOp::Discard { offset, len } => {
            if read_only {
                return Err(BdevError::ReadOnly);
            }
            check_range(block_size, num_blocks, *offset, *len)
        }
        // Local devices leave COMPARE AND WRITE to the caller (see the trait).
        BdevOp::CompareAndWrite { .. }
        | BdevOp::TaskManagement { .. }
        | BdevOp::ReservationChange { .. } => Err(BdevError::Unsupported),
    }
}

/// The completion for an operation refused before it started (returns a write's buffer).
pub(crate) fn reject(tag: u64, op: BdevOp, err: BdevError) -> Completion {
    Completion {
        tag,
        result: Err(err),
        buf: op.into_buf(),
    }
}

impl BdevOp {
    /// The caller's buffer this operation carries (write, compare-and-write), to hand back.
    pub fn into_buf(self) -> Option<AlignedBuf> {
        match self {
            BdevOp::Write { buf, .. } | BdevOp::CompareAndWrite { buf, .. } => Some(buf),
            BdevOp::Read { .. }
            | BdevOp::Flush
            | BdevOp::Discard { .. }
            | BdevOp::TaskManagement { .. }
            | BdevOp::ReservationChange { .. } => None,
        }
    }
}

/// Convenience for owners of an `Arc<dyn Bdev>`.
pub type SharedBdev = Arc<dyn Bdev>;

#[cfg(test)]
mod tests;
