//! Image files and block devices through `O_DIRECT` and io_uring: a channel opened on a
//! reactor's [`SharedRing`] (`Bdev::channel_on`) shares that ring with every other device and
//! socket of the reactor, which submits everything with one `io_uring_enter` per pass; a
//! channel opened alone (`Bdev::channel`) has a private ring and submits by itself.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tandem_ffi::{RingOwner, SharedRing, UringCompletion};

use crate::{
    check_op, reject, AlignedBuf, Bdev, BdevChannel, BdevError, BdevOp, BufPool, CacheMode,
    Completion, DeviceInfo, BUF_ALIGN,
};

/// Submission ring size per channel.
const RING_ENTRIES: u32 = 256;
/// Chunk used to write zeroes when the filesystem cannot punch holes.
const ZERO_CHUNK: usize = 1 << 20;

/// How to open a file-backed device.
#[derive(Clone, Debug)]
pub struct FileConfig {
    /// Device name.
    pub name: String,
    /// Image file or block device.
    pub path: PathBuf,
    /// Size of the image. `Some(n)`: create the file thick (fully allocated) if missing; if it
    /// exists it must be exactly `n` bytes (growing is [`Bdev::resize`]'s job). `None`: the
    /// file must exist; its size is used.
    pub size_bytes: Option<u64>,
    /// Logical block size: a power of two in 512..=65536 and at least the file's direct-I/O
    /// alignment; 0 = use the file's logical block size.
    pub block_size: u32,
    /// Open read-only (writes and discards fail with [`BdevError::ReadOnly`]).
    pub read_only: bool,
}

struct FileDisk {
    name: String,
    file: File,
    path: PathBuf,
    block_size: u32,
    num_blocks: AtomicU64,
    read_only: bool,
    is_block_device: bool,
    /// False once the filesystem refused to punch holes; discards then write zeroes.
    punch_ok: AtomicBool,
    resize_lock: Mutex<()>,
}

fn io_err(context: &str, e: io::Error) -> BdevError {
    BdevError::Other(format!("{context}: {e}"))
}

/// Opens (or creates, thick) an image file or block device. See [`FileConfig`].
pub fn open_file(cfg: &FileConfig) -> Result<Arc<dyn Bdev>, BdevError> {
    open_file_with(cfg, true)
}

/// `open_file` with hole punching optionally disabled (tests of the zero-writing path).
pub(crate) fn open_file_with(cfg: &FileConfig, punch: bool) -> Result<Arc<dyn Bdev>, BdevError> {
    use std::os::unix::fs::FileTypeExt;
    let path = &cfg.path;
    let shown = path.display();
    let exists = path.exists();
    if !exists {
        match cfg.size_bytes {
            None => {
                return Err(BdevError::Other(format!(
                    "{shown} does not exist and no size was given to create it"
                )))
            }
            Some(_) if cfg.read_only => {
                return Err(BdevError::Other(format!(
                    "{shown} does not exist and the device is read-only"
                )))
            }
            Some(_) => {}
        }
    }
    let df = tandem_ffi::open_direct(path, cfg.read_only, !exists)
        .map_err(|e| io_err(&format!("open {shown}"), e))?;
    if !df.direct {
        tracing::warn!(path = %shown, "filesystem refused O_DIRECT; using the page cache");
    }
    let file = df.file;
    let is_block_device = file
        .metadata()
        .map(|m| m.file_type().is_block_device())
        .map_err(|e| io_err(&format!("stat {shown}"), e))?;
    let align = tandem_ffi::dio_alignment(&file);
    let block_size = if cfg.block_size == 0 {
        align.offset.max(512)
    } else {
        cfg.block_size
    };
    let cleanup = |e: BdevError| {
        if !exists {
            let _ = std::fs::remove_file(path);
        }
        e
    };
    if !block_size.is_power_of_two() || !(512..=65536).contains(&block_size) {
        return Err(cleanup(BdevError::Other(format!(
            "block size {block_size} must be a power of two in 512..=65536"
        ))));
    }
    if df.direct && (block_size < align.offset || align.mem as usize > BUF_ALIGN) {
        return Err(cleanup(BdevError::Other(format!(
            "block size {block_size} is below the direct-I/O alignment {} of {shown}",
            align.offset
        ))));
    }
    let size = if exists {
        let actual =
            tandem_ffi::device_size(&file).map_err(|e| io_err(&format!("size of {shown}"), e))?;
        if let Some(want) = cfg.size_bytes {
            if want != actual {
                return Err(BdevError::Other(format!(
                    "{shown} exists with {actual} bytes but the configuration says {want}; \
                     refusing to use it (grow devices with resize)"
                )));
            }
        }
        actual
    } else {
        let want = cfg.size_bytes.unwrap_or(0);
        if want % u64::from(block_size) != 0 || want == 0 {
            return Err(cleanup(BdevError::Other(format!(
                "size {want} is not a positive multiple of the block size {block_size}"
            ))));
        }
        if let Err(e) = tandem_ffi::allocate_thick(&file, want) {
            return Err(cleanup(io_err(
                &format!("allocating {want} bytes for {shown}"),
                e,
            )));
        }
        want
    };
    if size % u64::from(block_size) != 0 {
        return Err(BdevError::Other(format!(
            "{shown} has {size} bytes, not a multiple of the block size {block_size}"
        )));
    }
    Ok(Arc::new(FileBdev(Arc::new(FileDisk {
        name: cfg.name.clone(),
        file,
        path: path.clone(),
        block_size,
        num_blocks: AtomicU64::new(size / u64::from(block_size)),
        read_only: cfg.read_only,
        is_block_device,
        punch_ok: AtomicBool::new(punch),
        resize_lock: Mutex::new(()),
    }))))
}

struct FileBdev(Arc<FileDisk>);

impl FileBdev {
    /// `private`: the ring is this channel's alone, so the channel enters it itself.
    fn new_channel(&self, ring: &SharedRing, private: bool) -> FileChannel {
        FileChannel {
            owner: ring.owner(),
            private,
            ops: HashMap::new(),
            next_id: 1,
            ready: VecDeque::new(),
            pool: BufPool::default(),
            reaped: Vec::new(),
            in_poll: false,
            disk: self.0.clone(),
        }
    }
}

impl Bdev for FileBdev {
    fn info(&self) -> DeviceInfo {
        let d = &self.0;
        DeviceInfo {
            name: d.name.clone(),
            block_size: d.block_size,
            num_blocks: d.num_blocks.load(Ordering::Acquire),
            read_only: d.read_only,
            cache: CacheMode::None,
        }
    }

    fn channel(&self) -> Result<Box<dyn BdevChannel>, BdevError> {
        let ring = SharedRing::new(RING_ENTRIES).map_err(|e| io_err("io_uring setup", e))?;
        Ok(Box::new(self.new_channel(&ring, true)))
    }

    fn channel_on(&self, ring: &SharedRing) -> Result<Box<dyn BdevChannel>, BdevError> {
        Ok(Box::new(self.new_channel(ring, false)))
    }

    fn resize(&self, new_num_blocks: u64) -> Result<(), BdevError> {
        let d = &self.0;
        if d.read_only {
            return Err(BdevError::ReadOnly);
        }
        let _guard = d.resize_lock.lock();
        let cur = d.num_blocks.load(Ordering::Acquire);
        if new_num_blocks < cur {
            return Err(BdevError::Other(format!(
                "shrinking from {cur} to {new_num_blocks} blocks is not supported"
            )));
        }
        if new_num_blocks == cur {
            return Ok(());
        }
        let bytes = new_num_blocks
            .checked_mul(u64::from(d.block_size))
            .filter(|b| *b <= i64::MAX as u64)
            .ok_or(BdevError::OutOfRange)?;
        if d.is_block_device {
            let have = tandem_ffi::device_size(&d.file).map_err(|e| io_err("device size", e))?;
            if have < bytes {
                return Err(BdevError::Other(format!(
                    "block device {} has only {have} bytes",
                    d.path.display()
                )));
            }
        } else {
            // Allocates only the missing tail; existing extents are left alone.
            tandem_ffi::allocate_thick(&d.file, bytes)
                .map_err(|e| io_err(&format!("allocating {bytes} bytes"), e))?;
        }
        d.num_blocks.store(new_num_blocks, Ordering::Release);
        Ok(())
    }

    fn flush_blocking(&self) -> Result<(), BdevError> {
        self.0.file.sync_data().map_err(BdevError::Io)
    }

    fn set_cache_mode(&self, mode: CacheMode) -> Result<(), BdevError> {
        match mode {
            CacheMode::None => Ok(()),
            _ => Err(BdevError::Other(
                "a file device without a cache layer has no cache".into(),
            )),
        }
    }
}

/// An operation the channel is driving (possibly over several ring submissions).
enum Op {
    Read {
        tag: u64,
        offset: u64,
        len: usize,
        done: usize,
    },
    Write {
        tag: u64,
        offset: u64,
        len: usize,
        done: usize,
        fua: bool,
    },
    Flush {
        tag: u64,
    },
    Punch {
        tag: u64,
        offset: u64,
        len: u64,
    },
    /// Discard without hole punching: write zeroes chunk by chunk.
    Zero {
        tag: u64,
        offset: u64,
        len: u64,
        done: u64,
    },
}

struct FileChannel {
    /// This channel's share of a ring (see the module comment). `Drop` waits for the
    /// channel's own operations.
    owner: RingOwner,
    /// The ring is this channel's alone: `submit` and `poll` enter it themselves. On a
    /// reactor's shared ring the reactor enters it once per pass for everyone.
    private: bool,
    /// In-flight operations by their ring tag (the low half of `user_data`).
    ops: HashMap<u32, Op>,
    next_id: u32,
    ready: VecDeque<Completion>,
    pool: BufPool,
    reaped: Vec<UringCompletion>,
    /// Inside `poll`: completions are returned directly, no need to signal the wake fd.
    in_poll: bool,
    disk: Arc<FileDisk>,
}

impl FileChannel {
    fn fd(&self) -> RawFd {
        self.disk.file.as_raw_fd()
    }

    fn id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    fn finish(&mut self, tag: u64, result: Result<(), BdevError>, buf: Option<AlignedBuf>) {
        if self.ready.is_empty() && !self.in_poll {
            // Completions outside the ring must still wake a sleeping reactor.
            self.owner.ring().notify();
        }
        self.ready.push_back(Completion { tag, result, buf });
    }

    /// (Re)submits the I/O of `op` under `id`; on a submission error completes it.
    fn start(&mut self, id: u32, op: Op, buf: Option<AlignedBuf>) {
        let fd = self.fd();
        let ud = self.owner.user_data(id);
        let owner = &self.owner;
        let r: Result<(), (Option<AlignedBuf>, io::Error)> = match &op {
            Op::Read {
                offset, len, done, ..
            } => match buf {
                Some(b) => owner
                    .submit(|r| {
                        r.submit_read_at(fd, b, *done, len - done, offset + *done as u64, ud)
                    })
                    .map_err(|(b, e)| (Some(b), e)),
                None => Err((None, io::Error::other("read without buffer"))),
            },
            Op::Write {
                offset,
                len,
                done,
                fua,
                ..
            } => match buf {
                Some(b) => owner
                    .submit(|r| {
                        r.submit_write_at(fd, b, *done, len - done, offset + *done as u64, ud, *fua)
                    })
                    .map_err(|(b, e)| (Some(b), e)),
                None => Err((None, io::Error::other("write without buffer"))),
            },
            Op::Zero {
                offset, len, done, ..
            } => match buf {
                Some(b) => {
                    let n = (len - done).min(ZERO_CHUNK as u64) as usize;
                    owner
                        .submit(|r| r.submit_write_at(fd, b, 0, n, offset + done, ud, false))
                        .map_err(|(b, e)| (Some(b), e))
                }
                None => Err((None, io::Error::other("zero write without buffer"))),
            },
            Op::Flush { .. } => owner
                .submit(|r| r.submit_fsync(fd, true, ud))
                .map_err(|e| (None, e)),
            Op::Punch { offset, len, .. } => owner
                .submit(|r| {
                    r.submit_fallocate(
                        fd,
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                        *offset,
                        *len,
                        ud,
                    )
                })
                .map_err(|e| (None, e)),
        };
        match r {
            Ok(()) => {
                self.ops.insert(id, op);
            }
            Err((buf, e)) => {
                let tag = op_tag(&op);
                let buf = match op {
                    Op::Zero { .. } => {
                        if let Some(b) = buf {
                            self.pool.free(b);
                        }
                        None
                    }
                    _ => buf,
                };
                self.finish(tag, Err(BdevError::Io(e)), buf);
            }
        }
    }

    fn start_zero(&mut self, tag: u64, offset: u64, len: u64, done: u64) {
        if done >= len {
            self.finish(tag, Ok(()), None);
            return;
        }
        let mut buf = self.pool.alloc(ZERO_CHUNK);
        buf.fill(0);
        let id = self.id();
        self.start(
            id,
            Op::Zero {
                tag,
                offset,
                len,
                done,
            },
            Some(buf),
        );
    }

    /// Hands queued submissions to the kernel (private ring only).
    fn enter(&mut self) {
        if let Err(e) = self.owner.ring().enter() {
            tracing::warn!(device = %self.disk.name, "io_uring submit failed: {e}");
        }
    }

    fn complete(&mut self, c: UringCompletion) {
        let Some(op) = self.ops.remove(&RingOwner::low(c.user_data)) else {
            tracing::error!(
                user_data = c.user_data,
                "completion for an unknown operation"
            );
            return;
        };
        let res = c.result;
        let transient = res == -libc::EINTR || res == -libc::EAGAIN;
        match op {
            Op::Read {
                tag,
                offset,
                len,
                done,
            } => {
                let Some(mut buf) = c.buf else {
                    self.finish(
                        tag,
                        Err(BdevError::Other("read lost its buffer".into())),
                        None,
                    );
                    return;
                };
                if transient {
                    let id = self.id();
                    return self.start(
                        id,
                        Op::Read {
                            tag,
                            offset,
                            len,
                            done,
                        },
                        Some(buf),
                    );
                }
                if res < 0 {
                    return self.finish(tag, Err(errno(res)), Some(buf));
                }
                let done = done + res as usize;
                if res == 0 {
                    // End of file inside the device (file shrunk under us): zeroes.
                    buf.set_len(len);
                    buf[done..].fill(0);
                    return self.finish(tag, Ok(()), Some(buf));
                }
                if done < len {
                    let id = self.id();
                    return self.start(
                        id,
                        Op::Read {
                            tag,
                            offset,
                            len,
                            done,
                        },
                        Some(buf),
                    );
                }
                buf.set_len(len);
                self.finish(tag, Ok(()), Some(buf));
            }
            Op::Write {
                tag,
                offset,
                len,
                done,
                fua,
            } => {
                let buf = c.buf;
                if transient {
                    let id = self.id();
                    return self.start(
                        id,
                        Op::Write {
                            tag,
                            offset,
                            len,
                            done,
                            fua,
                        },
                        buf,
                    );
                }
                if res < 0 {
                    return self.finish(tag, Err(errno(res)), buf);
                }
                if res == 0 {
                    let e = io::Error::new(io::ErrorKind::WriteZero, "write made no progress");
                    return self.finish(tag, Err(BdevError::Io(e)), buf);
                }
                let done = done + res as usize;
                if done < len {
                    let id = self.id();
                    return self.start(
                        id,
                        Op::Write {
                            tag,
                            offset,
                            len,
                            done,
                            fua,
                        },
                        buf,
                    );
                }
                self.finish(tag, Ok(()), buf);
            }
            Op::Flush { tag } => {
                if transient {
                    let id = self.id();
                    return self.start(id, Op::Flush { tag }, None);
                }
                let r = if res < 0 { Err(errno(res)) } else { Ok(()) };
                self.finish(tag, r, None);
            }
            Op::Punch { tag, offset, len } => {
                if transient {
                    let id = self.id();
                    return self.start(id, Op::Punch { tag, offset, len }, None);
                }
                if res == -libc::EOPNOTSUPP || res == -libc::ENOSYS || res == -libc::EINVAL {
                    if self.disk.punch_ok.swap(false, Ordering::Relaxed) {
                        tracing::warn!(
                            device = %self.disk.name,
                            "hole punching unsupported (errno {}); discards write zeroes",
                            -res
                        );
                    }
                    return self.start_zero(tag, offset, len, 0);
                }
                let r = if res < 0 { Err(errno(res)) } else { Ok(()) };
                self.finish(tag, r, None);
            }
            Op::Zero {
                tag,
                offset,
                len,
                done,
            } => {
                if let Some(b) = c.buf {
                    self.pool.free(b);
                }
                if res < 0 && !transient {
                    return self.finish(tag, Err(errno(res)), None);
                }
                if res == 0 {
                    let e = io::Error::new(io::ErrorKind::WriteZero, "write made no progress");
                    return self.finish(tag, Err(BdevError::Io(e)), None);
                }
                let done = if transient { done } else { done + res as u64 };
                self.start_zero(tag, offset, len, done);
            }
        }
    }
}

fn errno(res: i32) -> BdevError {
    BdevError::Io(io::Error::from_raw_os_error(-res))
}

fn op_tag(op: &Op) -> u64 {
    match op {
        Op::Read { tag, .. }
        | Op::Write { tag, .. }
        | Op::Flush { tag }
        | Op::Punch { tag, .. }
        | Op::Zero { tag, .. } => *tag,
    }
}

impl Drop for FileChannel {
    /// Finishes the channel's own operations before it goes (a removed device's writes end
    /// before its removal is reported). On a private ring, dropping the ring waits anyway; on
    /// a shared one the others' work goes on, and a buffer still in the kernel's hands after
    /// the bound stays owned by the ring, never freed under the kernel.
    fn drop(&mut self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !self.ops.is_empty() && std::time::Instant::now() < deadline {
            self.enter();
            self.owner
                .submit(|r| r.wait(1, Some(std::time::Duration::from_millis(10))))
                .ok();
            let mut reaped = std::mem::take(&mut self.reaped);
            self.owner.take(&mut reaped);
            for c in reaped.drain(..) {
                self.complete(c);
            }
            self.reaped = reaped;
        }
    }
}

impl BdevChannel for FileChannel {
    fn submit(&mut self, tag: u64, op: BdevOp) {
        let d = &self.disk;
        let nb = d.num_blocks.load(Ordering::Acquire);
        if let Err(e) = check_op(&op, d.block_size, nb, d.read_only) {
            let c = reject(tag, op, e);
            return self.finish(c.tag, c.result, c.buf);
        }
        let id = self.id();
        match op {
            BdevOp::Read { offset, len } => {
                let len = len as usize;
                if len == 0 {
                    let buf = self.pool.alloc(0);
                    return self.finish(tag, Ok(()), Some(buf));
                }
                let buf = self.pool.alloc(len);
                self.start(
                    id,
                    Op::Read {
                        tag,
                        offset,
                        len,
                        done: 0,
                    },
                    Some(buf),
                );
            }
            BdevOp::Write { offset, buf, fua } => {
                let len = buf.len();
                if len == 0 {
                    return self.finish(tag, Ok(()), Some(buf));
                }
                self.start(
                    id,
                    Op::Write {
                        tag,
                        offset,
                        len,
                        done: 0,
                        fua,
                    },
                    Some(buf),
                );
            }
            BdevOp::Flush => self.start(id, Op::Flush { tag }, None),
            BdevOp::Discard { offset, len } => {
                if len == 0 {
                    return self.finish(tag, Ok(()), None);
                }
                // Block devices support PUNCH_HOLE|KEEP_SIZE too (zeroing via discard);
                // EOPNOTSUPP switches the device to writing zeroes.
                if self.disk.punch_ok.load(Ordering::Relaxed) {
                    self.start(id, Op::Punch { tag, offset, len }, None);
                } else {
                    self.start_zero(tag, offset, len, 0);
                }
            }
            // Refused by `check_op` above; kept for an exhaustive match.
            BdevOp::CompareAndWrite { buf, .. } => {
                self.finish(tag, Err(BdevError::Unsupported), Some(buf))
            }
            BdevOp::TaskManagement { .. } | BdevOp::ReservationChange { .. } => {
                self.finish(tag, Err(BdevError::Unsupported), None)
            }
        }
        if self.private {
            self.enter();
        }
    }

    fn poll(&mut self, out: &mut Vec<Completion>) -> usize {
        self.in_poll = true;
        if self.private {
            let _ = self.owner.ring().prepare_sleep();
        }
        // On a shared ring the reactor entered it just before polling its channels, so this
        // is no system call unless something was queued since (a cache layer's write-back,
        // or a caller polling in a loop of its own, as a dropping cache channel does).
        self.enter();
        let mut reaped = std::mem::take(&mut self.reaped);
        self.owner.take(&mut reaped);
        for c in reaped.drain(..) {
            self.complete(c);
        }
        self.reaped = reaped;
        if self.private && !self.ops.is_empty() {
            // Resubmissions made while completing. (On a shared ring the reactor enters
            // before it sleeps, and polls again first whenever this poll returned work.)
            self.enter();
        }
        self.in_poll = false;
        let n = self.ready.len();
        out.extend(self.ready.drain(..));
        n
    }

    fn in_flight(&self) -> usize {
        self.ops.len() + self.ready.len()
    }

    fn wake_fd(&self) -> Option<RawFd> {
        Some(self.owner.ring().wake_fd())
    }

    fn alloc_buf(&mut self, len: usize) -> AlignedBuf {
        self.pool.alloc(len)
    }

    fn free_buf(&mut self, buf: AlignedBuf) {
        self.pool.free(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{pattern, read, run, test_dir, write};

    #[test]
    fn discard_without_hole_punching_writes_zeroes() {
        let dir = tempfile::tempdir_in(test_dir()).unwrap();
        let cfg = FileConfig {
            name: "z".into(),
            path: dir.path().join("z.img"),
            size_bytes: Some(8 << 20),
            block_size: 512,
            read_only: false,
        };
        let dev = open_file_with(&cfg, false).unwrap();
        let mut ch = dev.channel().unwrap();
        let data = pattern(1, 4 << 20);
        write(ch.as_mut(), 0, &data, false).unwrap();
        // 2.5 MiB + 512: several zero chunks and a partial one
        let len = (5 << 19) + 512;
        run(ch.as_mut(), BdevOp::Discard { offset: 512, len })
            .result
            .unwrap();
        let back = read(ch.as_mut(), 0, 4 << 20).unwrap();
        let end = 512 + len as usize;
        assert_eq!(back[..512], data[..512]);
        assert!(back[512..end].iter().all(|&b| b == 0));
        assert_eq!(back[end..], data[end..]);
        // the file is still fully allocated (no holes were punched)
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&cfg.path).unwrap();
        assert!(m.blocks() * 512 >= 8 << 20);
    }

    #[test]
    fn many_in_flight_beyond_ring_size() {
        let dir = tempfile::tempdir_in(test_dir()).unwrap();
        let cfg = FileConfig {
            name: "q".into(),
            path: dir.path().join("q.img"),
            size_bytes: Some(4 << 20),
            block_size: 4096,
            read_only: false,
        };
        let dev = open_file(&cfg).unwrap();
        let mut ch = dev.channel().unwrap();
        let n = 2 * RING_ENTRIES as u64 + 10;
        for i in 0..n {
            let mut b = ch.alloc_buf(4096);
            b.fill(i as u8);
            ch.submit(
                i,
                BdevOp::Write {
                    offset: (i % 1024) * 4096,
                    buf: b,
                    fua: false,
                },
            );
        }
        assert_eq!(ch.in_flight(), n as usize);
        let done = crate::tests::wait_all(ch.as_mut(), n as usize);
        assert!(done.iter().all(|c| c.result.is_ok()));
        assert_eq!(ch.in_flight(), 0);
        for i in [1, n / 2, n - 1] {
            let back = read(ch.as_mut(), i * 4096, 4096).unwrap();
            assert!(back.iter().all(|&b| b == i as u8), "block {i}");
        }
    }
}
