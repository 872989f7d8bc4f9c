//! Tests shared by every device type (RAM, file, each cache mode over both).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::*;

pub(crate) fn test_dir() -> std::path::PathBuf {
    std::path::PathBuf::from("/var/tmp")
}

/// Small deterministic PRNG (xorshift64*), so failures replay from the seed.
pub(crate) struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Polls `ch` until every tag in `tags` has completed (sleeping on the wake fd).
pub(crate) fn wait_all(ch: &mut dyn BdevChannel, n: usize) -> Vec<Completion> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    while out.len() < n {
        if ch.poll(&mut out) == 0 && out.len() < n {
            assert!(
                Instant::now() < deadline,
                "timed out: {} of {n} completions",
                out.len()
            );
            if let Some(fd) = ch.wake_fd() {
                tandem_ffi::wait_readable(fd, 100).unwrap();
            }
        }
    }
    assert_eq!(out.len(), n, "more completions than submissions");
    out
}

/// Polls until the channel has nothing in flight (background write-back included); no
/// completions may appear.
pub(crate) fn settle(ch: &mut dyn BdevChannel) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    while ch.in_flight() > 0 {
        ch.poll(&mut out);
        assert!(Instant::now() < deadline, "channel does not settle");
        if let Some(fd) = ch.wake_fd() {
            tandem_ffi::wait_readable(fd, 10).unwrap();
        }
    }
    assert!(out.is_empty(), "unexpected completions");
}

pub(crate) fn run(ch: &mut dyn BdevChannel, op: BdevOp) -> Completion {
    ch.submit(7, op);
    let mut c = wait_all(ch, 1);
    let c = c.pop().unwrap();
    assert_eq!(c.tag, 7);
    c
}

pub(crate) fn write(
    ch: &mut dyn BdevChannel,
    offset: u64,
    data: &[u8],
    fua: bool,
) -> Result<(), BdevError> {
    let mut buf = ch.alloc_buf(data.len());
    buf.copy_from_slice(data);
    let c = run(ch, BdevOp::Write { offset, buf, fua });
    let buf = c.buf.expect("write returns its buffer");
    assert_eq!(buf.len(), data.len());
    ch.free_buf(buf);
    c.result
}

pub(crate) fn read(ch: &mut dyn BdevChannel, offset: u64, len: u32) -> Result<Vec<u8>, BdevError> {
    let c = run(ch, BdevOp::Read { offset, len });
    c.result?;
    let buf = c.buf.expect("read returns a buffer");
    assert_eq!(buf.len(), len as usize);
    let v = buf.to_vec();
    ch.free_buf(buf);
    Ok(v)
}

pub(crate) fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut r = Rng::new(seed);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&r.next().to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A device under test; `reopen` gives the device the same data (None if not persistent).
pub(crate) struct Subject {
    pub dev: Arc<dyn Bdev>,
    pub _dir: Option<tempfile::TempDir>,
    pub path: Option<std::path::PathBuf>,
}

pub(crate) const BS: u32 = 4096;
pub(crate) const BLOCKS: u64 = 1024; // 4 MiB

fn ram() -> Subject {
    Subject {
        dev: open_ram("ram0", BS, BLOCKS),
        _dir: None,
        path: None,
    }
}

pub(crate) fn file() -> Subject {
    let dir = tempfile::tempdir_in(test_dir()).unwrap();
    let path = dir.path().join("disk.img");
    let dev = open_file(&FileConfig {
        name: "file0".into(),
        path: path.clone(),
        size_bytes: Some(u64::from(BS) * BLOCKS),
        block_size: BS,
        read_only: false,
    })
    .unwrap();
    Subject {
        dev,
        _dir: Some(dir),
        path: Some(path),
    }
}

/// Every configuration: base devices and each cache mode over them (small caches, so
/// eviction and write-back pressure happen).
pub(crate) fn all_subjects() -> Vec<(String, Subject)> {
    let mut v = vec![("ram".to_string(), ram()), ("file".to_string(), file())];
    for mode in [
        CacheMode::None,
        CacheMode::WriteThrough,
        CacheMode::WriteBack,
    ] {
        for (base, s) in [("ram", ram()), ("file", file())] {
            let dev = with_cache(s.dev, mode, 512 << 10);
            v.push((
                format!("{base}+{mode:?}"),
                Subject {
                    dev,
                    _dir: s._dir,
                    path: s.path,
                },
            ));
        }
    }
    v
}

#[test]
fn round_trip_all_devices() {
    for (name, s) in all_subjects() {
        let mut ch = s.dev.channel().unwrap();
        let ch = ch.as_mut();
        let data = pattern(1, 3 * BS as usize);
        write(ch, 8 * u64::from(BS), &data, false).unwrap();
        assert_eq!(read(ch, 8 * u64::from(BS), 3 * BS).unwrap(), data, "{name}");
        // unwritten blocks read as zero
        assert!(read(ch, 0, BS).unwrap().iter().all(|&b| b == 0), "{name}");
        // partial overlap read
        assert_eq!(
            read(ch, 9 * u64::from(BS), BS).unwrap(),
            data[BS as usize..2 * BS as usize],
            "{name}"
        );
        // fua write and flush
        write(ch, 0, &data[..BS as usize], true).unwrap();
        run(ch, BdevOp::Flush).result.unwrap();
        assert_eq!(read(ch, 0, BS).unwrap(), data[..BS as usize], "{name}");
        // zero-length ops
        assert!(read(ch, 0, 0).unwrap().is_empty());
        settle(ch);
        let info = s.dev.info();
        assert_eq!((info.block_size, info.num_blocks), (BS, BLOCKS), "{name}");
    }
}

#[test]
fn rejects_bad_requests_all_devices() {
    for (name, s) in all_subjects() {
        let mut ch = s.dev.channel().unwrap();
        let ch = ch.as_mut();
        let end = u64::from(BS) * BLOCKS;
        let bad = |r: Result<Vec<u8>, BdevError>| r.unwrap_err();
        assert!(
            matches!(bad(read(ch, end, BS)), BdevError::OutOfRange),
            "{name}"
        );
        assert!(
            matches!(
                bad(read(ch, end - u64::from(BS), 2 * BS)),
                BdevError::OutOfRange
            ),
            "{name}"
        );
        assert!(
            matches!(bad(read(ch, u64::MAX - 4095, BS)), BdevError::OutOfRange),
            "{name}"
        );
        assert!(
            matches!(bad(read(ch, 100, BS)), BdevError::Misaligned),
            "{name}"
        );
        assert!(
            matches!(bad(read(ch, 0, 100)), BdevError::Misaligned),
            "{name}"
        );
        assert!(
            matches!(bad(read(ch, 0, u32::MAX - 4095)), BdevError::Other(_)),
            "{name}"
        );
        assert!(
            matches!(
                write(ch, end, &[1; 4096], false),
                Err(BdevError::OutOfRange)
            ),
            "{name}"
        );
        assert!(
            matches!(write(ch, 0, &[1; 100], false), Err(BdevError::Misaligned)),
            "{name}"
        );
        // unaligned buffer
        let mut b = AlignedBuf::new(BS as usize + 8, 8);
        if b.as_ptr() as usize % BUF_ALIGN == 0 {
            b = AlignedBuf::new(BS as usize, 8); // try again; alignment 8 may land aligned
        }
        if b.as_ptr() as usize % BUF_ALIGN != 0 {
            b.set_len(BS as usize);
            let c = run(
                ch,
                BdevOp::Write {
                    offset: 0,
                    buf: b,
                    fua: false,
                },
            );
            assert!(matches!(c.result, Err(BdevError::Misaligned)), "{name}");
            assert!(c.buf.is_some());
        }
        let c = run(
            ch,
            BdevOp::Discard {
                offset: end - u64::from(BS),
                len: 2 * u64::from(BS),
            },
        );
        assert!(matches!(c.result, Err(BdevError::OutOfRange)), "{name}");
        let c = run(
            ch,
            BdevOp::Discard {
                offset: 0,
                len: u64::MAX,
            },
        );
        assert!(
            matches!(
                c.result,
                Err(BdevError::Misaligned) | Err(BdevError::OutOfRange)
            ),
            "{name}"
        );
        settle(ch);
    }
}

#[test]
fn discard_reads_zero_all_devices() {
    for (name, s) in all_subjects() {
        let mut ch = s.dev.channel().unwrap();
        let ch = ch.as_mut();
        let data = pattern(2, 16 * BS as usize);
        write(ch, 0, &data, false).unwrap();
        let c = run(
            ch,
            BdevOp::Discard {
                offset: 4 * u64::from(BS),
                len: 8 * u64::from(BS),
            },
        );
        c.result.unwrap();
        let back = read(ch, 0, 16 * BS).unwrap();
        let b = BS as usize;
        assert_eq!(back[..4 * b], data[..4 * b], "{name}");
        assert!(back[4 * b..12 * b].iter().all(|&x| x == 0), "{name}");
        assert_eq!(back[12 * b..], data[12 * b..], "{name}");
        // a whole RAM segment (1 MiB) discarded
        write(ch, 0, &pattern(3, 1 << 20), false).unwrap();
        run(
            ch,
            BdevOp::Discard {
                offset: 0,
                len: 1 << 20,
            },
        )
        .result
        .unwrap();
        assert!(
            read(ch, 0, 1 << 20).unwrap().iter().all(|&x| x == 0),
            "{name}"
        );
    }
}

#[test]
fn resize_all_devices() {
    for (name, s) in all_subjects() {
        let mut ch = s.dev.channel().unwrap();
        let end = u64::from(BS) * BLOCKS;
        assert!(matches!(
            read(ch.as_mut(), end, BS),
            Err(BdevError::OutOfRange)
        ));
        s.dev.resize(BLOCKS + 256).unwrap();
        assert_eq!(s.dev.info().num_blocks, BLOCKS + 256, "{name}");
        assert!(s.dev.resize(BLOCKS).is_err(), "{name}: shrink refused");
        // the existing channel sees the new size
        let data = pattern(4, 256 * BS as usize);
        write(ch.as_mut(), end, &data, false).unwrap();
        assert_eq!(read(ch.as_mut(), end, 256 * BS).unwrap(), data, "{name}");
        let mut ch2 = s.dev.channel().unwrap();
        assert_eq!(read(ch2.as_mut(), end, 256 * BS).unwrap(), data, "{name}");
        if let Some(p) = &s.path {
            assert_eq!(
                std::fs::metadata(p).unwrap().len(),
                end + 256 * u64::from(BS)
            );
        }
    }
}

/// Random ops in batches of non-overlapping requests (up to 16 in flight), checked against a
/// byte model after every batch.
fn model_check(dev: &Arc<dyn Bdev>, seed: u64, rounds: usize, name: &str) {
    let mut ch = dev.channel().unwrap();
    let ch = ch.as_mut();
    let bs = u64::from(dev.info().block_size);
    let nb = dev.info().num_blocks;
    let mut model = vec![0u8; (bs * nb) as usize];
    let mut rng = Rng::new(seed);
    for round in 0..rounds {
        let batch = 1 + rng.below(16) as usize;
        let mut used: Vec<(u64, u64)> = Vec::new();
        let mut reads: Vec<(u64, u64, u64)> = Vec::new(); // tag, offset, len
        let mut submitted = 0;
        for i in 0..batch {
            let max = if rng.below(4) == 0 { 64 } else { 8 };
            let blocks = 1 + rng.below(max);
            let lba = rng.below(nb - blocks + 1);
            let (off, len) = (lba * bs, blocks * bs);
            if used.iter().any(|&(o, l)| off < o + l && o < off + len) {
                continue;
            }
            used.push((off, len));
            let tag = (round * 100 + i) as u64;
            match rng.below(10) {
                0..=3 => {
                    let data = pattern(rng.next(), len as usize);
                    model[off as usize..(off + len) as usize].copy_from_slice(&data);
                    let mut buf = ch.alloc_buf(len as usize);
                    buf.copy_from_slice(&data);
                    ch.submit(
                        tag,
                        BdevOp::Write {
                            offset: off,
                            buf,
                            fua: rng.below(8) == 0,
                        },
                    );
                }
                4..=7 => {
                    reads.push((tag, off, len));
                    ch.submit(
                        tag,
                        BdevOp::Read {
                            offset: off,
                            len: len as u32,
                        },
                    );
                }
                8 => {
                    model[off as usize..(off + len) as usize].fill(0);
                    ch.submit(tag, BdevOp::Discard { offset: off, len });
                }
                _ => ch.submit(tag, BdevOp::Flush),
            }
            submitted += 1;
        }
        for c in wait_all(ch, submitted) {
            c.result
                .unwrap_or_else(|e| panic!("{name} seed {seed} round {round}: {e}"));
            if let Some(&(_, off, len)) = reads.iter().find(|r| r.0 == c.tag) {
                let buf = c.buf.unwrap();
                assert!(
                    buf[..] == model[off as usize..(off + len) as usize],
                    "{name} seed {seed} round {round}: read {off}+{len} differs from model"
                );
                ch.free_buf(buf);
            } else if let Some(b) = c.buf {
                ch.free_buf(b);
            }
        }
    }
    // full verification
    let all = read(ch, 0, (bs * nb) as u32).unwrap();
    assert!(all == model, "{name} seed {seed}: final contents differ");
}

#[test]
fn random_ops_against_model_all_devices() {
    for (name, s) in all_subjects() {
        model_check(&s.dev, 42, 300, &name);
    }
}

#[test]
fn two_threads_two_channels_all_devices() {
    for (name, s) in all_subjects() {
        let half = u64::from(BS) * BLOCKS / 2;
        let mut threads = Vec::new();
        for t in 0..2u64 {
            let dev = s.dev.clone();
            let name = name.clone();
            threads.push(std::thread::spawn(move || {
                let mut ch = dev.channel().unwrap();
                let ch = ch.as_mut();
                let mut model = vec![0u8; half as usize];
                let mut rng = Rng::new(100 + t);
                for i in 0..300 {
                    let blocks = 1 + rng.below(16);
                    let off = rng.below(half / u64::from(BS) - blocks + 1) * u64::from(BS);
                    let len = blocks * u64::from(BS);
                    if rng.below(2) == 0 {
                        let data = pattern(rng.next(), len as usize);
                        write(ch, t * half + off, &data, false).unwrap();
                        model[off as usize..(off + len) as usize].copy_from_slice(&data);
                    } else {
                        let back = read(ch, t * half + off, len as u32).unwrap();
                        assert!(
                            back == model[off as usize..(off + len) as usize],
                            "{name} t{t} op{i}"
                        );
                    }
                    if i % 50 == 0 {
                        run(ch, BdevOp::Flush).result.unwrap();
                    }
                }
                model
            }));
        }
        let models: Vec<Vec<u8>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let mut ch = s.dev.channel().unwrap();
        let all = read(ch.as_mut(), 0, (2 * half) as u32).unwrap();
        assert!(all[..half as usize] == models[0][..], "{name}");
        assert!(all[half as usize..] == models[1][..], "{name}");
    }
}

#[test]
fn flush_blocking_persists_to_file() {
    for mode in [
        CacheMode::None,
        CacheMode::WriteThrough,
        CacheMode::WriteBack,
    ] {
        let s = file();
        let dev = with_cache(s.dev, mode, 1 << 20);
        let data = pattern(9, 64 * BS as usize);
        {
            let mut ch = dev.channel().unwrap();
            write(ch.as_mut(), 4 * u64::from(BS), &data, false).unwrap();
            drop(ch);
        }
        dev.flush_blocking().unwrap();
        let on_disk = std::fs::read(s.path.as_ref().unwrap()).unwrap();
        let off = 4 * BS as usize;
        assert!(on_disk[off..off + data.len()] == data[..], "{mode:?}");
        drop(dev);
        // reopen and read through a fresh device
        let dev = open_file(&FileConfig {
            name: "again".into(),
            path: s.path.clone().unwrap(),
            size_bytes: None,
            block_size: 0,
            read_only: true,
        })
        .unwrap();
        assert_eq!(dev.info().block_size, dev.info().block_size.max(512));
        let mut ch = dev.channel().unwrap();
        assert_eq!(
            read(ch.as_mut(), 4 * u64::from(BS), 64 * BS).unwrap(),
            data,
            "{mode:?}"
        );
        assert!(matches!(
            write(ch.as_mut(), 0, &data[..4096], false),
            Err(BdevError::ReadOnly)
        ));
        assert!(matches!(dev.resize(BLOCKS * 2), Err(BdevError::ReadOnly)));
    }
}

#[test]
fn open_file_config_errors() {
    let dir = tempfile::tempdir_in(test_dir()).unwrap();
    let path = dir.path().join("x.img");
    let cfg = |size: Option<u64>, bs: u32| FileConfig {
        name: "x".into(),
        path: path.clone(),
        size_bytes: size,
        block_size: bs,
        read_only: false,
    };
    assert!(open_file(&cfg(None, 4096)).is_err(), "missing without size");
    assert!(
        open_file(&cfg(Some(1 << 20), 1000)).is_err(),
        "bad block size"
    );
    assert!(!path.exists(), "failed create leaves no file");
    assert!(
        open_file(&cfg(Some(1000), 512)).is_err(),
        "size not a block multiple"
    );
    assert!(!path.exists());
    let d = open_file(&cfg(Some(1 << 20), 512)).unwrap();
    assert_eq!(d.info().num_blocks, 2048);
    drop(d);
    let e = open_file(&cfg(Some(2 << 20), 512)).err().unwrap();
    assert!(e.to_string().contains("refusing"), "{e}");
    let d = open_file(&cfg(None, 4096)).unwrap();
    assert_eq!(d.info().num_blocks, 256);
    assert!(d.set_cache_mode(CacheMode::WriteBack).is_err());
    assert!(d.set_cache_mode(CacheMode::None).is_ok());
}

#[test]
fn ram_geometry() {
    assert!(try_open_ram("r", 0, 10).is_err());
    assert!(try_open_ram("r", 512, u64::MAX).is_err());
    let d = open_ram("bad", 0, 10);
    let mut ch = d.channel().unwrap();
    assert!(matches!(
        read(ch.as_mut(), 0, 512),
        Err(BdevError::Misaligned)
    ));
    let d = open_ram("odd", 520, 100);
    let mut ch = d.channel().unwrap();
    let data = pattern(5, 520 * 3);
    let mut buf = ch.alloc_buf(data.len());
    buf.copy_from_slice(&data);
    run(
        ch.as_mut(),
        BdevOp::Write {
            offset: 520 * 7,
            buf,
            fua: false,
        },
    )
    .result
    .unwrap();
    assert_eq!(read(ch.as_mut(), 520 * 7, 520 * 3).unwrap(), data);
    assert!(ch.wake_fd().is_none());
}

#[test]
fn write_buffers_come_back_and_pool_is_steady() {
    let s = file();
    let mut ch = s.dev.channel().unwrap();
    for i in 0..50u64 {
        let mut b = ch.alloc_buf(8192);
        b.fill(i as u8);
        let c = run(
            ch.as_mut(),
            BdevOp::Write {
                offset: i * 8192,
                buf: b,
                fua: false,
            },
        );
        c.result.unwrap();
        ch.free_buf(c.buf.unwrap());
        let c = run(
            ch.as_mut(),
            BdevOp::Read {
                offset: i * 8192,
                len: 8192,
            },
        );
        assert!(c.buf.as_ref().unwrap().iter().all(|&x| x == i as u8));
        ch.free_buf(c.buf.unwrap());
    }
}

// ---------------------------------------------------------------------------------------
// Cache behaviour with a controllable backing device.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A test device in front of a RAM disk: while `closed`, operations are held (not started);
/// with `fail_writes`, writes fail. Completions are immediate (no wake fd) once started.
struct Gate {
    inner: Arc<dyn Bdev>,
    closed: AtomicBool,
    fail_writes: AtomicBool,
    /// Reads take effect at submission but their completions are held while set.
    hold_reads: AtomicBool,
    writes: AtomicU64,
}

struct GateDev(Arc<Gate>);

struct GateChannel {
    g: Arc<Gate>,
    inner: Box<dyn BdevChannel>,
    held: VecDeque<(u64, BdevOp)>,
    failed: Vec<Completion>,
    held_reads: Vec<Completion>,
}

impl Bdev for GateDev {
    fn info(&self) -> DeviceInfo {
        self.0.inner.info()
    }
    fn channel(&self) -> Result<Box<dyn BdevChannel>, BdevError> {
        Ok(Box::new(GateChannel {
            g: self.0.clone(),
            inner: self.0.inner.channel()?,
            held: VecDeque::new(),
            failed: Vec::new(),
            held_reads: Vec::new(),
        }))
    }
    fn resize(&self, n: u64) -> Result<(), BdevError> {
        self.0.inner.resize(n)
    }
    fn flush_blocking(&self) -> Result<(), BdevError> {
        self.0.inner.flush_blocking()
    }
    fn set_cache_mode(&self, m: CacheMode) -> Result<(), BdevError> {
        self.0.inner.set_cache_mode(m)
    }
}

impl GateChannel {
    fn start(&mut self, tag: u64, op: BdevOp) {
        if let BdevOp::Write { buf, .. } = &op {
            if self.g.fail_writes.load(Ordering::SeqCst) {
                let _ = buf;
                let c = reject(tag, op, BdevError::Io(std::io::Error::other("injected")));
                self.failed.push(c);
                return;
            }
            self.g.writes.fetch_add(1, Ordering::SeqCst);
        }
        let hold = matches!(op, BdevOp::Read { .. }) && self.g.hold_reads.load(Ordering::SeqCst);
        self.inner.submit(tag, op);
        // The RAM disk completes at once: collect now, so held reads stay separate.
        let to = if hold {
            &mut self.held_reads
        } else {
            &mut self.failed
        };
        self.inner.poll(to);
    }
}

impl BdevChannel for GateChannel {
    fn submit(&mut self, tag: u64, op: BdevOp) {
        if self.g.closed.load(Ordering::SeqCst) {
            self.held.push_back((tag, op));
        } else {
            self.start(tag, op);
        }
    }
    fn poll(&mut self, out: &mut Vec<Completion>) -> usize {
        if !self.g.closed.load(Ordering::SeqCst) {
            while let Some((t, op)) = self.held.pop_front() {
                self.start(t, op);
            }
        }
        if !self.g.hold_reads.load(Ordering::SeqCst) {
            self.failed.append(&mut self.held_reads);
        }
        let n = self.failed.len();
        out.append(&mut self.failed);
        n + self.inner.poll(out)
    }
    fn in_flight(&self) -> usize {
        self.held.len() + self.failed.len() + self.held_reads.len() + self.inner.in_flight()
    }
    fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    fn alloc_buf(&mut self, len: usize) -> AlignedBuf {
        self.inner.alloc_buf(len)
    }
    fn free_buf(&mut self, buf: AlignedBuf) {
        self.inner.free_buf(buf)
    }
}

/// (cache over gate over RAM, gate, the RAM disk itself)
fn gated(mode: CacheMode, cache_bytes: u64) -> (Arc<dyn Bdev>, Arc<Gate>, Arc<dyn Bdev>) {
    let ram = open_ram("ram", BS, BLOCKS);
    let g = Arc::new(Gate {
        inner: ram.clone(),
        closed: AtomicBool::new(false),
        fail_writes: AtomicBool::new(false),
        hold_reads: AtomicBool::new(false),
        writes: AtomicU64::new(0),
    });
    let dev = with_cache(Arc::new(GateDev(g.clone())), mode, cache_bytes);
    (dev, g, ram)
}

/// Polls up to `rounds` times (briefly sleeping) and returns what completed.
fn poll_for(ch: &mut dyn BdevChannel, rounds: usize) -> Vec<Completion> {
    let mut out = Vec::new();
    for _ in 0..rounds {
        ch.poll(&mut out);
        if !out.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    out
}

fn backing(ram: &Arc<dyn Bdev>, offset: u64, len: u32) -> Vec<u8> {
    let mut ch = ram.channel().unwrap();
    read(ch.as_mut(), offset, len).unwrap()
}

#[test]
fn write_back_acks_from_ram_and_flush_waits_for_backend() {
    let (dev, g, ram) = gated(CacheMode::WriteBack, 4 << 20);
    assert_eq!(dev.info().cache, CacheMode::WriteBack);
    let mut ch = dev.channel().unwrap();
    g.closed.store(true, Ordering::SeqCst);
    let data = pattern(11, 8 * BS as usize);
    write(ch.as_mut(), 16 * u64::from(BS), &data, false).unwrap();
    // newest data from the cache although the backend has nothing yet
    assert_eq!(read(ch.as_mut(), 16 * u64::from(BS), 8 * BS).unwrap(), data);
    assert!(backing(&ram, 16 * u64::from(BS), 8 * BS)
        .iter()
        .all(|&b| b == 0));
    ch.submit(1, BdevOp::Flush);
    assert!(
        poll_for(ch.as_mut(), 20).is_empty(),
        "flush must wait for the backend"
    );
    g.closed.store(false, Ordering::SeqCst);
    let c = wait_all(ch.as_mut(), 1);
    c[0].result.as_ref().unwrap();
    assert_eq!(backing(&ram, 16 * u64::from(BS), 8 * BS), data);
}

#[test]
fn fua_and_write_through_wait_for_backend() {
    for (mode, fua) in [
        (CacheMode::WriteBack, true),
        (CacheMode::WriteThrough, false),
    ] {
        let (dev, g, ram) = gated(mode, 4 << 20);
        let mut ch = dev.channel().unwrap();
        g.closed.store(true, Ordering::SeqCst);
        let data = pattern(12, 4 * BS as usize);
        let mut buf = ch.alloc_buf(data.len());
        buf.copy_from_slice(&data);
        ch.submit(
            1,
            BdevOp::Write {
                offset: 0,
                buf,
                fua,
            },
        );
        assert!(
            poll_for(ch.as_mut(), 20).is_empty(),
            "{mode:?}: must wait for the backend"
        );
        g.closed.store(false, Ordering::SeqCst);
        wait_all(ch.as_mut(), 1)[0].result.as_ref().unwrap();
        assert_eq!(backing(&ram, 0, 4 * BS), data, "{mode:?}");
        // the write populated the cache: a read hits even with the backend held
        g.closed.store(true, Ordering::SeqCst);
        ch.submit(
            2,
            BdevOp::Read {
                offset: 0,
                len: 4 * BS,
            },
        );
        let c = poll_for(ch.as_mut(), 20);
        assert_eq!(c.len(), 1, "{mode:?}: read should hit the cache");
        assert_eq!(c[0].buf.as_ref().unwrap()[..], data[..]);
        g.closed.store(false, Ordering::SeqCst);
    }
}

#[test]
fn read_miss_populates_then_hits() {
    let (dev, g, ram) = gated(CacheMode::WriteThrough, 4 << 20);
    let data = pattern(13, 32 * BS as usize);
    write(ram.channel().unwrap().as_mut(), 0, &data, false).unwrap();
    let mut ch = dev.channel().unwrap();
    assert_eq!(read(ch.as_mut(), 0, 32 * BS).unwrap(), data);
    g.closed.store(true, Ordering::SeqCst);
    ch.submit(
        1,
        BdevOp::Read {
            offset: 4 * u64::from(BS),
            len: 8 * BS,
        },
    );
    let c = poll_for(ch.as_mut(), 20);
    assert_eq!(c.len(), 1, "populated data should be served from the cache");
    assert_eq!(
        c[0].buf.as_ref().unwrap()[..],
        data[4 * BS as usize..12 * BS as usize]
    );
    // mode None drops clean data: the same read now waits for the backend
    dev.set_cache_mode(CacheMode::None).unwrap();
    assert_eq!(dev.info().cache, CacheMode::None);
    ch.submit(
        2,
        BdevOp::Read {
            offset: 4 * u64::from(BS),
            len: 8 * BS,
        },
    );
    assert!(poll_for(ch.as_mut(), 10).is_empty());
    g.closed.store(false, Ordering::SeqCst);
    assert_eq!(
        wait_all(ch.as_mut(), 1)[0].buf.as_ref().unwrap()[..],
        data[4 * BS as usize..12 * BS as usize]
    );
}

#[test]
fn write_back_failure_fails_flush_and_keeps_data() {
    let (dev, g, ram) = gated(CacheMode::WriteBack, 4 << 20);
    let mut ch = dev.channel().unwrap();
    g.fail_writes.store(true, Ordering::SeqCst);
    let data = pattern(14, 2 * BS as usize);
    write(ch.as_mut(), 0, &data, false).unwrap();
    let c = run(ch.as_mut(), BdevOp::Flush);
    assert!(c.result.is_err(), "flush must report the failed write-back");
    // the data is still there (dirty) and is written once the device recovers
    assert_eq!(read(ch.as_mut(), 0, 2 * BS).unwrap(), data);
    // leaving write-back cannot write the data back either: the mode stays
    drop(ch);
    assert!(dev.set_cache_mode(CacheMode::WriteThrough).is_err());
    assert_eq!(dev.info().cache, CacheMode::WriteBack);
    let mut ch = dev.channel().unwrap();
    g.fail_writes.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    // failed lines are retried after a delay; flushes fail until then
    while run(ch.as_mut(), BdevOp::Flush).result.is_err() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(backing(&ram, 0, 2 * BS), data);
    drop(ch);
    dev.set_cache_mode(CacheMode::WriteThrough).unwrap();
}

#[test]
fn flush_on_one_channel_writes_back_other_channels_data() {
    let (dev, g, ram) = gated(CacheMode::WriteBack, 4 << 20);
    let stop = Arc::new(AtomicBool::new(false));
    let data = pattern(15, 64 * BS as usize);
    g.closed.store(true, Ordering::SeqCst);
    // channel A writes (dirty) and keeps polling on its own thread; its write-backs are
    // held by the gate
    let (tx, rx) = std::sync::mpsc::channel();
    let a = {
        let (dev, stop, data) = (dev.clone(), stop.clone(), data.clone());
        std::thread::spawn(move || {
            let mut ch = dev.channel().unwrap();
            write(ch.as_mut(), 0, &data, false).unwrap();
            tx.send(()).unwrap();
            let mut out = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                ch.poll(&mut out);
                if let Some(fd) = ch.wake_fd() {
                    tandem_ffi::wait_readable(fd, 5).unwrap();
                }
            }
            assert!(out.is_empty());
        })
    };
    rx.recv().unwrap();
    let mut ch = dev.channel().unwrap();
    ch.submit(9, BdevOp::Flush);
    assert!(poll_for(ch.as_mut(), 20).is_empty());
    g.closed.store(false, Ordering::SeqCst);
    let c = wait_all(ch.as_mut(), 1);
    c[0].result.as_ref().unwrap();
    assert_eq!(backing(&ram, 0, 64 * BS), data);
    stop.store(true, Ordering::SeqCst);
    a.join().unwrap();
}

/// Polls `ch` on this thread (as its reactor would) while `f` runs on another thread.
fn while_polling<T: Send + 'static>(
    ch: &mut dyn BdevChannel,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let t = std::thread::spawn(f);
    let mut out = Vec::new();
    while !t.is_finished() {
        ch.poll(&mut out);
        if let Some(fd) = ch.wake_fd() {
            tandem_ffi::wait_readable(fd, 5).unwrap();
        }
    }
    assert!(out.is_empty());
    t.join().unwrap()
}

#[test]
fn leaving_write_back_flushes() {
    let s = file();
    let dev = with_cache(s.dev, CacheMode::WriteBack, 8 << 20);
    let data = pattern(16, 256 * BS as usize);
    let mut ch = dev.channel().unwrap();
    write(ch.as_mut(), 0, &data, false).unwrap();
    // The live switch runs on a control thread while the reactor keeps polling its channel
    // (whose write-backs may be in flight).
    let d2 = dev.clone();
    while_polling(ch.as_mut(), move || {
        d2.set_cache_mode(CacheMode::WriteThrough)
    })
    .unwrap();
    assert_eq!(dev.info().cache, CacheMode::WriteThrough);
    let on_disk = std::fs::read(s.path.as_ref().unwrap()).unwrap();
    assert!(on_disk[..data.len()] == data[..]);
    dev.set_cache_mode(CacheMode::WriteBack).unwrap();
    write(ch.as_mut(), 0, &data[..4096], false).unwrap();
    assert_eq!(read(ch.as_mut(), 0, 256 * BS).unwrap(), data);
    // dropping the channel drains its write-backs, so a later blocking flush cannot hang
    drop(ch);
    dev.flush_blocking().unwrap();
}

#[test]
fn tiny_cache_passes_writes_through() {
    for size in [0, 64 << 10, 128 << 10] {
        let (dev, _g, ram) = gated(CacheMode::WriteBack, size);
        model_check(&dev, 77, 100, &format!("tiny cache {size}"));
        let mut ch = dev.channel().unwrap();
        run(ch.as_mut(), BdevOp::Flush).result.unwrap();
        let all = read(ch.as_mut(), 0, BS * BLOCKS as u32).unwrap();
        assert!(backing(&ram, 0, BS * BLOCKS as u32) == all, "size {size}");
    }
}

/// Two threads write single blocks into the same lines (each thread owns every other block)
/// through a small write-back cache, so write-back, eviction and pass-through interleave
/// across channels on shared lines.
#[test]
fn shared_lines_across_channels() {
    for mode in [CacheMode::WriteBack, CacheMode::WriteThrough] {
        let s = file();
        let dev = with_cache(s.dev, mode, 256 << 10);
        let blocks = 256u64;
        let threads: Vec<_> = (0..2u64)
            .map(|t| {
                let dev = dev.clone();
                std::thread::spawn(move || {
                    let mut ch = dev.channel().unwrap();
                    let mut model = vec![0u8; (blocks * u64::from(BS)) as usize];
                    let mut rng = Rng::new(500 + t);
                    for i in 0..600 {
                        let b = rng.below(blocks / 2) * 2 + t;
                        let off = b * u64::from(BS);
                        let r = off as usize..(off + u64::from(BS)) as usize;
                        match rng.below(5) {
                            0 | 1 => {
                                let d = pattern(rng.next(), BS as usize);
                                write(ch.as_mut(), off, &d, rng.below(10) == 0).unwrap();
                                model[r].copy_from_slice(&d);
                            }
                            2 | 3 => {
                                let back = read(ch.as_mut(), off, BS).unwrap();
                                assert!(back[..] == model[r], "{mode:?} t{t} op {i} block {b}");
                            }
                            _ => {
                                if rng.below(2) == 0 {
                                    run(
                                        ch.as_mut(),
                                        BdevOp::Discard {
                                            offset: off,
                                            len: u64::from(BS),
                                        },
                                    )
                                    .result
                                    .unwrap();
                                    model[r].fill(0);
                                } else {
                                    run(ch.as_mut(), BdevOp::Flush).result.unwrap();
                                }
                            }
                        }
                    }
                    model
                })
            })
            .collect();
        let models: Vec<Vec<u8>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        dev.flush_blocking().unwrap();
        let on_disk = std::fs::read(s.path.as_ref().unwrap()).unwrap();
        let mut ch = dev.channel().unwrap();
        let cached = read(ch.as_mut(), 0, (blocks * u64::from(BS)) as u32).unwrap();
        for b in 0..blocks as usize {
            let r = b * BS as usize..(b + 1) * BS as usize;
            let want = &models[b % 2][r.clone()];
            assert!(cached[r.clone()] == *want, "{mode:?} block {b} via cache");
            assert!(on_disk[r] == *want, "{mode:?} block {b} on disk");
        }
    }
}

// ---------------------------------------------------------------------------------------
// A backing device that completes operations in random order, at random later polls (the
// operation takes effect when it completes), to shake out ordering bugs in the cache.

struct Chaos {
    inner: Arc<dyn Bdev>,
    seed: AtomicU64,
    /// What would survive a power loss: updated by executed flushes (whole device) and FUA
    /// writes (their range).
    durable: parking_lot::Mutex<Vec<u8>>,
}

impl Chaos {
    fn new(inner: Arc<dyn Bdev>, seed: u64) -> Chaos {
        let i = inner.info();
        let size = (u64::from(i.block_size) * i.num_blocks) as usize;
        Chaos {
            inner,
            seed: AtomicU64::new(seed),
            durable: parking_lot::Mutex::new(vec![0; size]),
        }
    }
}

struct ChaosDev(Arc<Chaos>);

struct ChaosChannel {
    g: Arc<Chaos>,
    inner: Box<dyn BdevChannel>,
    /// Submitted, not yet executed.
    held: Vec<(u64, BdevOp)>,
    /// Executed (took effect on the RAM disk), not yet reported.
    done: Vec<Completion>,
    rng: Rng,
}

impl Bdev for ChaosDev {
    fn info(&self) -> DeviceInfo {
        self.0.inner.info()
    }
    fn channel(&self) -> Result<Box<dyn BdevChannel>, BdevError> {
        let seed = self.0.seed.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(ChaosChannel {
            g: self.0.clone(),
            inner: self.0.inner.channel()?,
            held: Vec::new(),
            done: Vec::new(),
            rng: Rng::new(seed),
        }))
    }
    fn resize(&self, n: u64) -> Result<(), BdevError> {
        self.0.inner.resize(n)
    }
    fn flush_blocking(&self) -> Result<(), BdevError> {
        self.0.inner.flush_blocking()
    }
    fn set_cache_mode(&self, m: CacheMode) -> Result<(), BdevError> {
        self.0.inner.set_cache_mode(m)
    }
}

impl BdevChannel for ChaosChannel {
    fn submit(&mut self, tag: u64, op: BdevOp) {
        self.held.push((tag, op));
    }
    fn poll(&mut self, out: &mut Vec<Completion>) -> usize {
        // Execute a random subset in random order (the effect happens now) ...
        let k = self.rng.below(self.held.len() as u64 + 1) as usize;
        for _ in 0..k {
            let i = self.rng.below(self.held.len() as u64) as usize;
            let (tag, op) = self.held.swap_remove(i);
            let fua = match &op {
                BdevOp::Write {
                    offset,
                    buf,
                    fua: true,
                } => Some((*offset as usize, buf.to_vec())),
                _ => None,
            };
            let flush = matches!(op, BdevOp::Flush);
            self.inner.submit(tag, op);
            self.inner.poll(&mut self.done);
            if let Some((off, data)) = fua {
                self.g.durable.lock()[off..off + data.len()].copy_from_slice(&data);
            }
            if flush {
                let len = self.g.durable.lock().len() as u32;
                let all = read(self.inner.as_mut(), 0, len).unwrap();
                *self.g.durable.lock() = all;
            }
        }
        // ... and report a random subset of what has been executed, possibly much later.
        let k = self.rng.below(self.done.len() as u64 + 1) as usize;
        for _ in 0..k {
            let i = self.rng.below(self.done.len() as u64) as usize;
            out.push(self.done.swap_remove(i));
        }
        k
    }
    fn in_flight(&self) -> usize {
        self.held.len() + self.done.len()
    }
    fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    fn alloc_buf(&mut self, len: usize) -> AlignedBuf {
        self.inner.alloc_buf(len)
    }
    fn free_buf(&mut self, buf: AlignedBuf) {
        self.inner.free_buf(buf)
    }
}

fn poll_all_until(
    chs: &mut [Box<dyn BdevChannel>],
    done: impl Fn(&[Completion]) -> bool,
) -> Vec<Completion> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done(&out) {
        for ch in chs.iter_mut() {
            ch.poll(&mut out);
        }
        assert!(
            Instant::now() < deadline,
            "timed out with {} completions",
            out.len()
        );
    }
    out
}

/// Random non-overlapping batches over two channels of a cache on a reordering backend;
/// reads are checked against the model, then after a final flush the backend itself.
fn chaos_check(seed: u64, cache_bytes: u64) {
    let ram = open_ram("ram", BS, 256);
    let chaos_state = Arc::new(Chaos::new(ram.clone(), seed));
    let chaos = Arc::new(ChaosDev(chaos_state.clone()));
    let mut rng = Rng::new(seed);
    let modes = [
        CacheMode::WriteBack,
        CacheMode::WriteThrough,
        CacheMode::None,
    ];
    let dev = with_cache(chaos, CacheMode::WriteBack, cache_bytes);
    let mut chs: Vec<Box<dyn BdevChannel>> = vec![dev.channel().unwrap(), dev.channel().unwrap()];
    let bs = u64::from(BS);
    let nb = 256u64;
    let mut model = vec![0u8; (bs * nb) as usize];
    for round in 0..200 {
        if rng.below(25) == 0 {
            let m = modes[rng.below(3) as usize];
            let d2 = dev.clone();
            let t = std::thread::spawn(move || d2.set_cache_mode(m));
            let mut out = Vec::new();
            while !t.is_finished() {
                for ch in chs.iter_mut() {
                    ch.poll(&mut out);
                }
            }
            t.join().unwrap().unwrap();
            assert!(out.is_empty());
        }
        if rng.below(5) == 0 {
            // Everything completed so far must be durable once a flush completes.
            chs[rng.below(2) as usize].submit(1, BdevOp::Flush);
            poll_all_until(&mut chs, |o| !o.is_empty())[0]
                .result
                .as_ref()
                .unwrap();
            assert!(
                *chaos_state.durable.lock() == model,
                "seed {seed} round {round}: flushed data is not durable"
            );
        }
        let mut used: Vec<(u64, u64)> = Vec::new();
        let mut reads = Vec::new();
        let mut fuas = Vec::new();
        let mut n = 0;
        for i in 0..1 + rng.below(12) {
            let blocks = 1 + rng.below(24);
            let off = rng.below(nb - blocks + 1) * bs;
            let len = blocks * bs;
            if used.iter().any(|&(o, l)| off < o + l && o < off + len) {
                continue;
            }
            used.push((off, len));
            let tag = round * 100 + i;
            let ch = &mut chs[rng.below(2) as usize];
            match rng.below(10) {
                0..=4 => {
                    let data = pattern(rng.next(), len as usize);
                    model[off as usize..(off + len) as usize].copy_from_slice(&data);
                    let mut buf = ch.alloc_buf(len as usize);
                    buf.copy_from_slice(&data);
                    let fua = rng.below(6) == 0;
                    if fua {
                        fuas.push((off as usize, data));
                    }
                    ch.submit(
                        tag,
                        BdevOp::Write {
                            offset: off,
                            buf,
                            fua,
                        },
                    );
                }
                5..=7 => {
                    reads.push((tag, off, len));
                    ch.submit(
                        tag,
                        BdevOp::Read {
                            offset: off,
                            len: len as u32,
                        },
                    );
                }
                8 => {
                    model[off as usize..(off + len) as usize].fill(0);
                    ch.submit(tag, BdevOp::Discard { offset: off, len });
                }
                _ => ch.submit(tag, BdevOp::Flush),
            }
            n += 1;
        }
        for c in poll_all_until(&mut chs, |o| o.len() >= n) {
            c.result
                .unwrap_or_else(|e| panic!("seed {seed} round {round}: {e}"));
            if let Some(&(_, off, len)) = reads.iter().find(|r| r.0 == c.tag) {
                assert!(
                    c.buf.as_ref().unwrap()[..] == model[off as usize..(off + len) as usize],
                    "seed {seed} round {round}: read {off}+{len} differs from model"
                );
            }
        }
        let durable = chaos_state.durable.lock();
        for (off, data) in fuas {
            assert!(
                durable[off..off + data.len()] == data[..],
                "seed {seed} round {round}: FUA write at {off} is not durable"
            );
        }
    }
    chs[0].submit(1, BdevOp::Flush);
    poll_all_until(&mut chs, |o| !o.is_empty())[0]
        .result
        .as_ref()
        .unwrap();
    let back = backing(&ram, 0, (bs * nb) as u32);
    assert!(
        back == model,
        "seed {seed}: backend differs from model after flush"
    );
}

#[test]
fn cache_on_reordering_backend() {
    for seed in 0..12 {
        chaos_check(seed, if seed % 3 == 0 { 128 << 10 } else { 512 << 10 });
    }
}

/// Block contents identifying the write that produced them: `id` (8 bytes), `lba`, then a
/// pattern from both. id 0 = zeroes (never written or discarded).
fn stamp(id: u64, lba: u64, out: &mut [u8]) {
    if id == 0 {
        out.fill(0);
        return;
    }
    let p = pattern(id ^ (lba << 32), out.len());
    out.copy_from_slice(&p);
    out[..8].copy_from_slice(&id.to_le_bytes());
    out[8..16].copy_from_slice(&lba.to_le_bytes());
}

/// Which write produced this block (None = torn or foreign data).
fn identify(lba: u64, block: &[u8]) -> Option<u64> {
    if block.iter().all(|&b| b == 0) {
        return Some(0);
    }
    let id = u64::from_le_bytes(block[..8].try_into().unwrap());
    let mut want = vec![0u8; block.len()];
    stamp(id, lba, &mut want);
    (want == block).then_some(id)
}

/// Overlapping concurrent writes/discards/reads over two channels on a reordering backend.
/// Each block may end up with the data of any write that overlapped in the batch, but the
/// choice must be stable: read through the cache afterwards, again after more traffic, and
/// finally from the backend after a flush, it must not change.
fn overlap_check(seed: u64, mode: CacheMode, cache_bytes: u64) {
    let nb = 64u64;
    let bs = u64::from(BS);
    let ram = open_ram("ram", BS, nb);
    let chaos = Arc::new(ChaosDev(Arc::new(Chaos::new(ram.clone(), seed))));
    let dev = with_cache(chaos, mode, cache_bytes);
    let mut chs: Vec<Box<dyn BdevChannel>> = vec![dev.channel().unwrap(), dev.channel().unwrap()];
    let mut rng = Rng::new(seed);
    let mut model = vec![0u64; nb as usize]; // settled id per block
    let mut next_id = 1u64;
    for round in 0..120u64 {
        let mut possible: Vec<Vec<u64>> = model.iter().map(|&v| vec![v]).collect();
        let mut touched = vec![false; nb as usize];
        let mut reads = Vec::new();
        let mut n = 0;
        for i in 0..1 + rng.below(10) {
            let blocks = 1 + rng.below(8);
            let lba = rng.below(nb - blocks + 1);
            let tag = round * 100 + i;
            let ch = &mut chs[rng.below(2) as usize];
            match rng.below(8) {
                0..=3 => {
                    let id = next_id;
                    next_id += 1;
                    let mut buf = ch.alloc_buf((blocks * bs) as usize);
                    for b in 0..blocks {
                        stamp(
                            id,
                            lba + b,
                            &mut buf[(b * bs) as usize..((b + 1) * bs) as usize],
                        );
                        possible[(lba + b) as usize].push(id);
                        touched[(lba + b) as usize] = true;
                    }
                    ch.submit(
                        tag,
                        BdevOp::Write {
                            offset: lba * bs,
                            buf,
                            fua: rng.below(5) == 0,
                        },
                    );
                }
                4 => {
                    for b in lba..lba + blocks {
                        possible[b as usize].push(0);
                        touched[b as usize] = true;
                    }
                    ch.submit(
                        tag,
                        BdevOp::Discard {
                            offset: lba * bs,
                            len: blocks * bs,
                        },
                    );
                }
                5 => ch.submit(tag, BdevOp::Flush),
                _ => {
                    reads.push((tag, lba, blocks));
                    ch.submit(
                        tag,
                        BdevOp::Read {
                            offset: lba * bs,
                            len: (blocks * bs) as u32,
                        },
                    );
                }
            }
            n += 1;
        }
        let done = poll_all_until(&mut chs, |o| o.len() >= n);
        for c in &done {
            c.result
                .as_ref()
                .unwrap_or_else(|e| panic!("seed {seed} round {round}: {e}"));
            if let Some(&(_, lba, blocks)) = reads.iter().find(|r| r.0 == c.tag) {
                let buf = c.buf.as_ref().unwrap();
                for b in 0..blocks {
                    let got = identify(lba + b, &buf[(b * bs) as usize..((b + 1) * bs) as usize]);
                    assert!(
                        got.is_some_and(|g| possible[(lba + b) as usize].contains(&g)),
                        "seed {seed} {mode:?} round {round}: lba {} read {got:?}, possible {:?}",
                        lba + b,
                        possible[(lba + b) as usize]
                    );
                }
            }
        }
        // settle: the value of every touched block is now fixed
        let ch = &mut chs[rng.below(2) as usize];
        ch.submit(
            1,
            BdevOp::Read {
                offset: 0,
                len: (nb * bs) as u32,
            },
        );
        let c = poll_all_until(&mut chs, |o| !o.is_empty()).pop().unwrap();
        let buf = c.buf.unwrap();
        for lba in 0..nb {
            let got = identify(lba, &buf[(lba * bs) as usize..((lba + 1) * bs) as usize]);
            let ok = if touched[lba as usize] {
                got.is_some_and(|g| possible[lba as usize].contains(&g))
            } else {
                got == Some(model[lba as usize])
            };
            assert!(ok, "seed {seed} {mode:?} round {round}: lba {lba} settled {got:?}, model {}, possible {:?}", model[lba as usize], possible[lba as usize]);
            model[lba as usize] = got.unwrap_or(0);
        }
    }
    chs[0].submit(1, BdevOp::Flush);
    poll_all_until(&mut chs, |o| !o.is_empty())[0]
        .result
        .as_ref()
        .unwrap();
    let back = backing(&ram, 0, (nb * bs) as u32);
    for lba in 0..nb {
        let got = identify(lba, &back[(lba * bs) as usize..((lba + 1) * bs) as usize]);
        assert_eq!(
            got,
            Some(model[lba as usize]),
            "seed {seed} {mode:?}: backend lba {lba}"
        );
    }
}

#[test]
fn overlapping_io_is_coherent() {
    for seed in 0..10u64 {
        let size = [0, 64 << 10, 128 << 10, 256 << 10][(seed % 4) as usize];
        overlap_check(seed, CacheMode::WriteBack, size);
        overlap_check(seed, CacheMode::WriteThrough, size);
        if seed < 2 {
            overlap_check(seed, CacheMode::None, size);
        }
    }
}

/// Longer soak of the overlap checker: `cargo test -p tandem-bdev overlap_soak -- --ignored`.
#[test]
#[ignore]
fn overlap_soak() {
    let seeds: u64 = std::env::var("TANDEM_SOAK_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    for seed in 100..100 + seeds {
        for mode in [CacheMode::WriteBack, CacheMode::WriteThrough] {
            overlap_check(
                seed,
                mode,
                [0, 64 << 10, 128 << 10, 256 << 10][(seed % 4) as usize],
            );
        }
    }
}

/// Rough throughput check (not a benchmark; `perf/` has those):
/// `cargo test --release -p tandem-bdev throughput_smoke -- --ignored --nocapture`.
#[test]
#[ignore]
fn throughput_smoke() {
    fn drive(name: &str, dev: &Arc<dyn Bdev>, write: bool, qd: usize, secs: f64) {
        let mut ch = dev.channel().unwrap();
        let nb = dev.info().num_blocks;
        let mut rng = Rng::new(1);
        let mut out = Vec::new();
        let start = Instant::now();
        let mut done = 0u64;
        let mut inflight = 0;
        let (mut sleeps, mut timeouts) = (0u64, 0u64);
        while start.elapsed().as_secs_f64() < secs {
            while inflight < qd {
                let off = rng.below(nb) * u64::from(BS);
                let op = if write {
                    let buf = ch.alloc_buf(BS as usize);
                    BdevOp::Write {
                        offset: off,
                        buf,
                        fua: false,
                    }
                } else {
                    BdevOp::Read {
                        offset: off,
                        len: BS,
                    }
                };
                ch.submit(0, op);
                inflight += 1;
            }
            if ch.poll(&mut out) == 0 {
                if let Some(fd) = ch.wake_fd() {
                    sleeps += 1;
                    if !tandem_ffi::wait_readable(fd, 10).unwrap() {
                        timeouts += 1;
                    }
                }
            }
            for c in out.drain(..) {
                c.result.unwrap();
                if let Some(b) = c.buf {
                    ch.free_buf(b);
                }
                inflight -= 1;
                done += 1;
            }
        }
        let iops = done as f64 / start.elapsed().as_secs_f64();
        eprintln!(
            "{name:28} {:>9.0} IOPS {:>6.0} MiB/s  sleeps {sleeps} timeouts {timeouts}",
            iops,
            iops * f64::from(BS) / 1048576.0
        );
    }
    let f = file();
    drive("ram read qd1", &open_ram("r", BS, BLOCKS), false, 1, 1.0);
    drive("file read qd32", &f.dev, false, 32, 2.0);
    drive("file write qd32", &f.dev, true, 32, 2.0);
    let wb = with_cache(f.dev.clone(), CacheMode::WriteBack, 64 << 20);
    drive("cache(wb) write qd32", &wb, true, 32, 2.0);
    drive("cache(wb) read qd32 (hits)", &wb, false, 32, 2.0);
    let wt = with_cache(f.dev.clone(), CacheMode::WriteThrough, 64 << 20);
    drive("cache(wt) read qd32", &wt, false, 32, 2.0);
    let none = with_cache(f.dev.clone(), CacheMode::None, 64 << 20);
    drive("cache(none) read qd32", &none, false, 32, 2.0);
    drive("file read qd32 (written)", &f.dev, false, 32, 2.0);
}

/// The data plane's reactors poll a channel only while `in_flight() > 0` and otherwise
/// sleep without watching its wake fd. With that policy, write-back data must still reach
/// the disk, and a blocking flush from a control thread must not wait on a sleeping reactor.
#[test]
fn reactor_policy_idle_drains_write_back() {
    let s = file();
    let dev = with_cache(s.dev, CacheMode::WriteBack, 8 << 20);
    let data = pattern(21, 512 * BS as usize);
    let mut ch = dev.channel().unwrap();
    for i in 0..8u64 {
        let chunk = 64 * BS as usize;
        let mut b = ch.alloc_buf(chunk);
        b.copy_from_slice(&data[i as usize * chunk..(i as usize + 1) * chunk]);
        ch.submit(
            i,
            BdevOp::Write {
                offset: i * chunk as u64,
                buf: b,
                fua: false,
            },
        );
    }
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while ch.in_flight() > 0 {
        ch.poll(&mut out); // spin, as the reactor does while I/O is in flight
        assert!(Instant::now() < deadline);
    }
    assert_eq!(out.len(), 8);
    assert!(out.iter().all(|c| c.result.is_ok()));
    // the "reactor" now sleeps: no more polls on `ch`
    let on_disk = std::fs::read(s.path.as_ref().unwrap()).unwrap();
    assert!(
        on_disk[..data.len()] == data[..],
        "idle write-back did not drain"
    );
    let t = Instant::now();
    dev.flush_blocking().unwrap();
    dev.set_cache_mode(CacheMode::WriteThrough).unwrap();
    assert!(t.elapsed() < Duration::from_secs(10));
    drop(ch);
}

/// tmpfs refuses O_DIRECT: the file device falls back to buffered I/O and still works
/// (including discard by hole punching).
#[test]
fn file_on_tmpfs_falls_back_to_buffered() {
    let shm = std::path::Path::new("/dev/shm");
    if !shm.is_dir() {
        return;
    }
    let dir = tempfile::tempdir_in(shm).unwrap();
    let dev = open_file(&FileConfig {
        name: "shm".into(),
        path: dir.path().join("img"),
        size_bytes: Some(1 << 20),
        block_size: 512,
        read_only: false,
    })
    .unwrap();
    let info = dev.info();
    assert_eq!((info.block_size, info.num_blocks), (512, 2048));
    model_check(&dev, 5, 100, "tmpfs");
}

#[test]
fn write_back_merges_adjacent_lines() {
    let (dev, g, ram) = gated(CacheMode::WriteBack, 8 << 20);
    let mut ch = dev.channel().unwrap();
    let data = pattern(31, 1 << 20);
    write(ch.as_mut(), 1 << 20, &data, false).unwrap();
    run(ch.as_mut(), BdevOp::Flush).result.unwrap();
    assert_eq!(backing(&ram, 1 << 20, 1 << 20), data);
    let n = g.writes.load(Ordering::SeqCst);
    assert!(
        n <= 2,
        "1 MiB of sequential dirty data went back in {n} writes"
    );
    // a hole in the dirty data splits the request
    let a = pattern(32, 8 * BS as usize);
    write(ch.as_mut(), 0, &a, false).unwrap();
    write(ch.as_mut(), 16 * u64::from(BS), &a, false).unwrap();
    run(ch.as_mut(), BdevOp::Flush).result.unwrap();
    assert_eq!(backing(&ram, 0, 8 * BS), a);
    assert_eq!(backing(&ram, 16 * u64::from(BS), 8 * BS), a);
    assert!(backing(&ram, 8 * u64::from(BS), 8 * BS)
        .iter()
        .all(|&b| b == 0));
}

/// A backend read that fetched old data must still return the newer cached data even if that
/// data was written back and its line evicted before the read completed: lines a read
/// overlays are pinned against eviction.
#[test]
fn slow_read_sees_data_written_back_meanwhile() {
    // 4 lines of 64 KiB
    let (dev, g, _ram) = gated(CacheMode::WriteBack, 256 << 10);
    let mut ch = dev.channel().unwrap();
    let bs = u64::from(BS);
    let new = pattern(41, BS as usize);
    g.closed.store(true, Ordering::SeqCst); // keep the write dirty for now
    write(ch.as_mut(), 0, &new, false).unwrap();
    g.closed.store(false, Ordering::SeqCst);
    g.hold_reads.store(true, Ordering::SeqCst);
    // reads block 0 (dirty in cache, zero on disk) and block 1 (not cached): a miss
    ch.submit(
        5,
        BdevOp::Read {
            offset: 0,
            len: 2 * BS,
        },
    );
    // the dirty line is written back and the cache is filled with other lines
    let mut out = Vec::new();
    for i in 1..12u64 {
        let mut b = ch.alloc_buf(16 * BS as usize);
        b.fill(i as u8);
        ch.submit(
            100 + i,
            BdevOp::Write {
                offset: i * 16 * bs,
                buf: b,
                fua: false,
            },
        );
        for _ in 0..5 {
            ch.poll(&mut out);
        }
    }
    assert!(out.iter().all(|c| c.tag != 5), "the read is still held");
    g.hold_reads.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    let c = loop {
        ch.poll(&mut out);
        if let Some(i) = out.iter().position(|c| c.tag == 5) {
            break out.swap_remove(i);
        }
        assert!(Instant::now() < deadline);
    };
    let buf = c.buf.unwrap();
    assert!(buf[..BS as usize] == new[..], "stale data from the backend");
    assert!(buf[BS as usize..].iter().all(|&b| b == 0));
}

/// Local devices do not offer COMPARE AND WRITE: they say so, refuse it without touching the
/// data, and hand the buffer back.
#[test]
fn local_devices_refuse_compare_and_write() {
    for (name, s) in all_subjects() {
        assert!(!s.dev.atomic_compare_and_write(), "{name}");
        let mut ch = s.dev.channel().unwrap();
        let ch = ch.as_mut();
        let mut buf = ch.alloc_buf(2 * BS as usize);
        buf.fill(0);
        buf[BS as usize..].fill(7);
        let c = run(
            ch,
            BdevOp::CompareAndWrite {
                offset: 0,
                buf,
                fua: false,
            },
        );
        assert!(matches!(c.result, Err(BdevError::Unsupported)), "{name}");
        assert_eq!(c.buf.map(|b| b.len()), Some(2 * BS as usize), "{name}");
        assert!(read(ch, 0, BS).unwrap().iter().all(|&b| b == 0), "{name}");
        settle(ch);
    }
}
