//! RAM disk: memory in 1 MiB segments, each behind its own lock, allocated on first write.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::{
    check_op, reject, AlignedBuf, Bdev, BdevChannel, BdevError, BdevOp, BufPool, CacheMode,
    Completion, DeviceInfo,
};

const SEG_BYTES: u64 = 1 << 20;

type Segment = Mutex<Option<Box<[u8]>>>;

struct RamDisk {
    name: String,
    block_size: u32,
    num_blocks: AtomicU64,
    /// Segment i holds bytes `[i*SEG_BYTES, (i+1)*SEG_BYTES)`; `None` = all zeroes. The outer
    /// lock is taken for writing only to grow the vector (resize).
    segs: RwLock<Vec<Segment>>,
}

/// Creates a RAM disk of `num_blocks` blocks of `block_size` bytes, initially zero. Memory is
/// allocated per 1 MiB segment on first write. A zero or absurd geometry gives a device on
/// which every request fails (see [`try_open_ram`] for a checked variant).
pub fn open_ram(name: &str, block_size: u32, num_blocks: u64) -> Arc<dyn Bdev> {
    match try_open_ram(name, block_size, num_blocks) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(
                name,
                block_size,
                num_blocks,
                "invalid RAM disk geometry: {e}"
            );
            wrap(RamDisk {
                name: name.to_string(),
                block_size: 0, // every request fails with Misaligned
                num_blocks: AtomicU64::new(0),
                segs: RwLock::new(Vec::new()),
            })
        }
    }
}

/// Like [`open_ram`] but refuses a block size that is zero or above 1 MiB, or a total size
/// beyond 2^48 bytes.
pub fn try_open_ram(
    name: &str,
    block_size: u32,
    num_blocks: u64,
) -> Result<Arc<dyn Bdev>, BdevError> {
    if block_size == 0 || u64::from(block_size) > SEG_BYTES {
        return Err(BdevError::Other(format!("invalid block size {block_size}")));
    }
    let bytes = size_bytes(block_size, num_blocks)?;
    let disk = RamDisk {
        name: name.to_string(),
        block_size,
        num_blocks: AtomicU64::new(num_blocks),
        segs: RwLock::new(Vec::new()),
    };
    disk.grow_segments(bytes);
    Ok(wrap(disk))
}

fn size_bytes(block_size: u32, num_blocks: u64) -> Result<u64, BdevError> {
    match num_blocks.checked_mul(u64::from(block_size)) {
        Some(b) if b <= 1 << 48 => Ok(b),
        _ => Err(BdevError::OutOfRange),
    }
}

impl RamDisk {
    fn grow_segments(&self, bytes: u64) {
        let want = bytes.div_ceil(SEG_BYTES) as usize;
        let mut segs = self.segs.write();
        while segs.len() < want {
            segs.push(Mutex::new(None));
        }
    }

    /// Calls `f(segment, offset_in_segment, range_in_request)` for each segment piece.
    fn for_each_piece(
        offset: u64,
        len: usize,
        mut f: impl FnMut(usize, usize, std::ops::Range<usize>),
    ) {
        let mut done = 0usize;
        while done < len {
            let pos = offset + done as u64;
            let seg = (pos / SEG_BYTES) as usize;
            let in_seg = (pos % SEG_BYTES) as usize;
            let n = (SEG_BYTES as usize - in_seg).min(len - done);
            f(seg, in_seg, done..done + n);
            done += n;
        }
    }

    fn read_into(&self, offset: u64, out: &mut [u8]) {
        let segs = self.segs.read();
        Self::for_each_piece(offset, out.len(), |seg, at, r| {
            let n = r.len();
            match segs.get(seg).map(|s| s.lock()) {
                Some(g) => match g.as_ref() {
                    Some(data) => out[r].copy_from_slice(&data[at..at + n]),
                    None => out[r].fill(0),
                },
                None => out[r].fill(0),
            }
        });
    }

    fn write_from(&self, offset: u64, data: &[u8]) {
        let segs = self.segs.read();
        Self::for_each_piece(offset, data.len(), |seg, at, r| {
            if let Some(s) = segs.get(seg) {
                let mut g = s.lock();
                let mem = g.get_or_insert_with(|| vec![0u8; SEG_BYTES as usize].into_boxed_slice());
                mem[at..at + r.len()].copy_from_slice(&data[r]);
            }
        });
    }

    fn zero(&self, offset: u64, len: u64) {
        let segs = self.segs.read();
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let seg = (pos / SEG_BYTES) as usize;
            let at = (pos % SEG_BYTES) as usize;
            let n = (SEG_BYTES - at as u64).min(end - pos) as usize;
            if let Some(s) = segs.get(seg) {
                let mut g = s.lock();
                if n == SEG_BYTES as usize {
                    *g = None; // whole segment: free it
                } else if let Some(mem) = g.as_mut() {
                    mem[at..at + n].fill(0);
                }
            }
            pos += n as u64;
        }
    }
}

impl RamDisk {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            name: self.name.clone(),
            block_size: self.block_size,
            num_blocks: self.num_blocks.load(Ordering::Acquire),
            read_only: false,
            cache: CacheMode::None,
        }
    }

    fn resize(&self, new_num_blocks: u64) -> Result<(), BdevError> {
        let cur = self.num_blocks.load(Ordering::Acquire);
        if new_num_blocks < cur {
            return Err(BdevError::Other(format!(
                "shrinking from {cur} to {new_num_blocks} blocks is not supported"
            )));
        }
        if self.block_size == 0 {
            return Err(BdevError::Misaligned);
        }
        let bytes = size_bytes(self.block_size, new_num_blocks)?;
        self.grow_segments(bytes);
        self.num_blocks.fetch_max(new_num_blocks, Ordering::AcqRel);
        Ok(())
    }

    fn flush_blocking(&self) -> Result<(), BdevError> {
        Ok(())
    }

    fn set_cache_mode(&self, mode: CacheMode) -> Result<(), BdevError> {
        match mode {
            CacheMode::None => Ok(()),
            _ => Err(BdevError::Other("a RAM disk has no cache layer".into())),
        }
    }
}

/// The public face of a RAM disk; `channel` needs the `Arc` to share the memory.
struct RamHandle(Arc<RamDisk>);

impl Bdev for RamHandle {
    fn info(&self) -> DeviceInfo {
        self.0.info()
    }
    fn channel(&self) -> Result<Box<dyn BdevChannel>, BdevError> {
        Ok(Box::new(RamChannel {
            disk: self.0.clone(),
            ready: VecDeque::new(),
            pool: BufPool::default(),
        }))
    }
    fn resize(&self, n: u64) -> Result<(), BdevError> {
        self.0.resize(n)
    }
    fn flush_blocking(&self) -> Result<(), BdevError> {
        self.0.flush_blocking()
    }
    fn set_cache_mode(&self, mode: CacheMode) -> Result<(), BdevError> {
        self.0.set_cache_mode(mode)
    }
}

struct RamChannel {
    disk: Arc<RamDisk>,
    ready: VecDeque<Completion>,
    pool: BufPool,
}

impl BdevChannel for RamChannel {
    fn submit(&mut self, tag: u64, op: BdevOp) {
        let d = &self.disk;
        let nb = d.num_blocks.load(Ordering::Acquire);
        if let Err(e) = check_op(&op, d.block_size, nb, false) {
            self.ready.push_back(reject(tag, op, e));
            return;
        }
        let c = match op {
            BdevOp::Read { offset, len } => {
                let mut buf = self.pool.alloc(len as usize);
                d.read_into(offset, &mut buf);
                Completion {
                    tag,
                    result: Ok(()),
                    buf: Some(buf),
                }
            }
            BdevOp::Write { offset, buf, .. } => {
                d.write_from(offset, &buf);
                Completion {
                    tag,
                    result: Ok(()),
                    buf: Some(buf),
                }
            }
            BdevOp::Flush => Completion {
                tag,
                result: Ok(()),
                buf: None,
            },
            BdevOp::Discard { offset, len } => {
                d.zero(offset, len);
                Completion {
                    tag,
                    result: Ok(()),
                    buf: None,
                }
            }
            // Refused by `check_op` above; kept for an exhaustive match.
            op @ (BdevOp::CompareAndWrite { .. }
            | BdevOp::TaskManagement { .. }
            | BdevOp::ReservationChange { .. }) => reject(tag, op, BdevError::Unsupported),
        };
        self.ready.push_back(c);
    }

    fn poll(&mut self, out: &mut Vec<Completion>) -> usize {
        let n = self.ready.len();
        out.extend(self.ready.drain(..));
        n
    }

    fn in_flight(&self) -> usize {
        self.ready.len()
    }

    fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }

    fn alloc_buf(&mut self, len: usize) -> AlignedBuf {
        self.pool.alloc(len)
    }

    fn free_buf(&mut self, buf: AlignedBuf) {
        self.pool.free(buf)
    }
}

fn wrap(disk: RamDisk) -> Arc<dyn Bdev> {
    Arc::new(RamHandle(Arc::new(disk)))
}
