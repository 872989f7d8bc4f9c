//! What a host does to a replicated disk in the failure tests: a writer that behaves like
//! dm-multipath over one session per node (round robin over the paths that work; a path that
//! answers NOT READY 04/0C is failed and tried again a second later; UNIT ATTENTION is retried
//! on the same path; with no path left the write is queued, as `queue_if_no_path`), a record
//! of every acknowledged write, and a model of the disk to check every node's copy against.
//!
//! Every block written carries a stamp (`TNDM`, the write's id, its LBA), so a block that
//! differs from the model names the write it came from.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::blocks::{pattern, read16, write16};
use super::raw::{command_retrying, CommandResult, RawConn};
use crate::netns::{Member, Topology};

pub const BLOCK: usize = 512;

/// One path: a node's portal and target.
#[derive(Clone, Debug)]
pub struct PathSpec {
    pub node: String,
    pub portal: SocketAddr,
    pub iqn: String,
}

/// Logs in to `p` from `host`'s namespace (the socket stays there) with its own initiator
/// name, and consumes the power-on unit attention.
pub fn login(topo: &Topology, host: Member, p: &PathSpec, initiator: &str) -> RawConn {
    let portal = p.portal;
    let c = topo
        .run_in(host, move || RawConn::connect(portal))
        .expect("connect from the host namespace");
    c.stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    login_on(c, p, initiator)
}

/// Logs in again from the calling thread, which must be in the host's namespace (see
/// [`enter_namespace`]); None when the node does not accept the connection or the login
/// (its data plane is down or restarting). The login waits at most 5 s for an answer, so
/// a paused node does not hold the caller long.
pub fn relogin(p: &PathSpec, initiator: &str) -> Option<RawConn> {
    let stream = std::net::TcpStream::connect_timeout(&p.portal, Duration::from_secs(2)).ok()?;
    stream.set_nodelay(true).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let c = RawConn::from_stream(stream);
    let (p, initiator) = (p.clone(), initiator.to_string());
    quietly(move || login_on(c, &p, &initiator))
}

/// Moves the calling thread into the network namespace `host` of `topo` (for a thread that
/// connects again after a node restarts).
pub fn enter_namespace(ns_file: &std::path::Path) {
    let f = std::fs::File::open(ns_file).expect("open the namespace file");
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
}

/// The file of `host`'s network namespace, for [`enter_namespace`].
pub fn namespace_file(topo: &Topology, host: Member) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/run/netns/{}", topo.ns(host)))
}

/// Runs `f`, which panics on a transport error (the simple initiator's way), and turns the
/// panic into None without the panic message: a connection a node drops (killed, restarted)
/// is an expected event for the writers that reconnect.
fn quietly<T>(f: impl FnOnce() -> T) -> Option<T> {
    QUIET.with(|q| q.set(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok();
    QUIET.with(|q| q.set(false));
    r
}

thread_local! {
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Installs (once) a panic hook that stays silent for panics inside [`quietly`] and
/// prints every other panic as the default hook does.
fn install_quiet_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                default(info);
            }
        }));
    });
}

/// Logs in on a connected `c`, waiting for answers as long as its read timeout; the
/// session then waits 30 s for a command's answer.
fn login_on(mut c: RawConn, p: &PathSpec, initiator: &str) -> RawConn {
    let iqn = p.iqn.clone();
    let keys = [
        ("MaxRecvDataSegmentLength", "262144"),
        ("FirstBurstLength", "65536"),
        ("MaxBurstLength", "262144"),
        ("ImmediateData", "Yes"),
        ("InitialR2T", "No"),
    ];
    let (r, _) = c.login(initiator, Some(&iqn), &keys);
    assert_eq!(r.status_class, 0, "login to {} ({iqn})", p.node);
    let _ = c.command(&[0u8; 6], 0, &[], 0, 0);
    c.stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    c
}

/// `blocks` blocks of write `id` at `lba`: a pattern with every block stamped.
pub fn stamped(id: u32, lba: u64, blocks: usize) -> Vec<u8> {
    let mut d = pattern(blocks * BLOCK, id.wrapping_add(0x5eed));
    for (i, b) in d.chunks_mut(BLOCK).enumerate() {
        b[0..4].copy_from_slice(b"TNDM");
        b[4..8].copy_from_slice(&id.to_be_bytes());
        b[8..16].copy_from_slice(&(lba + i as u64).to_be_bytes());
    }
    d
}

/// The stamp of a block: (write id, LBA), or None for a block no writer wrote.
pub fn stamp_of(block: &[u8]) -> Option<(u32, u64)> {
    (block.len() >= 16 && &block[0..4] == b"TNDM").then(|| {
        (
            u32::from_be_bytes(block[4..8].try_into().unwrap()),
            u64::from_be_bytes(block[8..16].try_into().unwrap()),
        )
    })
}

/// The sense of a CHECK CONDITION: (key, ASC, ASCQ).
fn sense_of(r: &CommandResult) -> Option<(u8, u8, u8)> {
    (r.status == 2 && r.sense.len() > 13).then(|| (r.sense[2] & 0x0f, r.sense[12], r.sense[13]))
}

/// What one command through one path got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ack,
    /// NOT READY 04/0C: the node does not serve (blocked, syncing, out).
    NotReady,
    UnitAttention,
    /// The connection broke or could not be made (a killed or restarting data plane); only
    /// writers and probers that reconnect record it.
    PathDown,
}

#[derive(Clone, Debug)]
pub struct Event {
    pub at: Instant,
    pub path: usize,
    pub outcome: Outcome,
    /// How long the command took.
    pub took: Duration,
}

/// An acknowledged write.
#[derive(Clone, Debug)]
pub struct Acked {
    pub at: Instant,
    pub path: usize,
    pub lba: u64,
    pub data: Vec<u8>,
}

/// Everything a writer saw.
#[derive(Debug, Default)]
pub struct Report {
    pub paths: Vec<String>,
    pub acked: Vec<Acked>,
    pub events: Vec<Event>,
    /// The write that was being retried when the writer stopped (never acknowledged: the
    /// disk may hold it or not).
    pub pending: Option<(u64, Vec<u8>)>,
    /// A host-visible error: a CHECK CONDITION other than NOT READY 04/0C or UNIT ATTENTION,
    /// another status, or a write not acknowledged within the queueing bound.
    pub error: Option<String>,
}

impl Report {
    /// The longest time without an acknowledged write (any path) in `[from, to]`.
    pub fn longest_pause(&self, from: Instant, to: Instant) -> Duration {
        let mut prev = from;
        let mut worst = Duration::ZERO;
        for a in self.acked.iter().filter(|a| a.at > from && a.at <= to) {
            worst = worst.max(a.at - prev);
            prev = a.at;
        }
        worst.max(to.saturating_duration_since(prev))
    }

    /// When `path` first got `outcome` after `after`, counted from `after`.
    pub fn first(&self, path: usize, outcome: Outcome, after: Instant) -> Option<Duration> {
        self.events
            .iter()
            .find(|e| e.path == path && e.outcome == outcome && e.at > after)
            .map(|e| e.at - after)
    }

    /// When `path` last got `outcome` before `before`.
    pub fn last_before(&self, path: usize, outcome: Outcome, before: Instant) -> Option<Instant> {
        self.events
            .iter()
            .filter(|e| e.path == path && e.outcome == outcome && e.at <= before)
            .map(|e| e.at)
            .next_back()
    }

    /// The longest time one command through `path` took, among those answered in
    /// `(from, to]` (a command a node held).
    pub fn longest_command(&self, path: usize, from: Instant, to: Instant) -> Duration {
        self.events
            .iter()
            .filter(|e| e.path == path && e.at > from && e.at <= to)
            .map(|e| e.took)
            .max()
            .unwrap_or_default()
    }

    pub fn count(&self, path: usize, outcome: Outcome, from: Instant, to: Instant) -> usize {
        self.events
            .iter()
            .filter(|e| e.path == path && e.outcome == outcome && e.at > from && e.at <= to)
            .count()
    }

    /// A one-line summary per path.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for (i, p) in self.paths.iter().enumerate() {
            let n = |o| {
                self.events
                    .iter()
                    .filter(|e| e.path == i && e.outcome == o)
                    .count()
            };
            s.push_str(&format!(
                "{p}: {} acked, {} NOT READY, {} UNIT ATTENTION, {} connection lost; ",
                n(Outcome::Ack),
                n(Outcome::NotReady),
                n(Outcome::UnitAttention),
                n(Outcome::PathDown)
            ));
        }
        s
    }
}

/// Where and how a writer writes.
#[derive(Clone, Debug)]
pub struct WriterSpec {
    /// First LBA of the area and its length in blocks (writes of 8 or 32 blocks inside).
    pub area: (u64, u64),
    /// Ids of this writer's writes start here (distinct writers: distinct bases).
    pub id_base: u32,
    /// A failed path is tried again after this long (multipath's path checker interval).
    pub retry_failed_after: Duration,
    /// A write queued with no usable path for this long is a host-visible error.
    pub queue_bound: Duration,
    /// A broken connection fails the path (the write is retried on another path, or on this
    /// one after `retry_failed_after`, with a new login), as a host does when a node's data
    /// plane dies. Off: a broken connection panics the writer, as before.
    pub reconnect: bool,
}

impl WriterSpec {
    pub fn new(area: (u64, u64), id_base: u32) -> WriterSpec {
        WriterSpec {
            area,
            id_base,
            retry_failed_after: Duration::from_secs(1),
            queue_bound: Duration::from_secs(30),
            reconnect: false,
        }
    }
}

/// A writer thread at queue depth 1 over one or more paths; see the module comment.
pub struct Writer {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Report>,
}

impl Writer {
    pub fn start(topo: &Topology, host: Member, paths: &[PathSpec], spec: WriterSpec) -> Writer {
        let initiator =
            |p: &PathSpec| format!("iqn.2026-11.io.tandem.test:w{}-{}", spec.id_base, p.node);
        let conns: Vec<Option<RawConn>> = paths
            .iter()
            .map(|p| Some(login(topo, host, p, &initiator(p))))
            .collect();
        let paths: Vec<(PathSpec, String)> =
            paths.iter().map(|p| (p.clone(), initiator(p))).collect();
        let ns = namespace_file(topo, host);
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        if spec.reconnect {
            install_quiet_hook();
        }
        let thread = std::thread::spawn(move || {
            if spec.reconnect {
                enter_namespace(&ns);
            }
            run_writer(conns, paths, spec, &s)
        });
        Writer { stop, thread }
    }

    pub fn finish(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("writer thread panicked")
    }
}

fn run_writer(
    mut conns: Vec<Option<RawConn>>,
    paths: Vec<(PathSpec, String)>,
    spec: WriterSpec,
    stop: &AtomicBool,
) -> Report {
    let mut rep = Report {
        paths: paths.iter().map(|(p, _)| p.node.clone()).collect(),
        ..Report::default()
    };
    let mut failed_until: Vec<Option<Instant>> = vec![None; conns.len()];
    let mut next_path = 0usize;
    let (start, len) = spec.area;
    let mut k = 0u32;
    'writes: while !stop.load(Ordering::Relaxed) {
        let blocks: u64 = if k % 4 == 3 { 32 } else { 8 };
        let slots = (len / blocks).max(1);
        let lba = start + u64::from(k.wrapping_mul(2_654_435_761)) % slots * blocks;
        let id = spec.id_base + k;
        let data = stamped(id, lba, blocks as usize);
        let queued = Instant::now();
        loop {
            let now = Instant::now();
            let usable = (0..conns.len())
                .map(|i| (next_path + i) % conns.len())
                .find(|&i| failed_until[i].is_none_or(|t| t <= now));
            let Some(p) = usable else {
                if stop.load(Ordering::Relaxed) {
                    rep.pending = Some((lba, data));
                    break 'writes;
                }
                if queued.elapsed() > spec.queue_bound {
                    rep.error = Some(format!(
                        "write #{id} at LBA {lba}: no path served it for {:?} (queue bound)",
                        spec.queue_bound
                    ));
                    rep.pending = Some((lba, data));
                    break 'writes;
                }
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            let t0 = Instant::now();
            if conns[p].is_none() {
                conns[p] = relogin(&paths[p].0, &paths[p].1);
            }
            let r = match conns[p].as_mut() {
                Some(c) if spec.reconnect => quietly(|| {
                    c.command(
                        &write16(lba, blocks as u32),
                        0,
                        &data,
                        data.len().min(65536),
                        262144,
                    )
                }),
                Some(c) => Some(c.command(
                    &write16(lba, blocks as u32),
                    0,
                    &data,
                    data.len().min(65536),
                    262144,
                )),
                None => None,
            };
            let at = Instant::now();
            let took = at - t0;
            let Some(r) = r else {
                // The connection broke (or no login): the write's fate is unknown, so it is
                // retried, like every write a host has not seen acknowledged.
                rep.events.push(Event {
                    at,
                    path: p,
                    outcome: Outcome::PathDown,
                    took,
                });
                conns[p] = None;
                failed_until[p] = Some(at + spec.retry_failed_after);
                continue;
            };
            match (r.status, sense_of(&r)) {
                (0, _) => {
                    rep.events.push(Event {
                        at,
                        path: p,
                        outcome: Outcome::Ack,
                        took,
                    });
                    rep.acked.push(Acked {
                        at,
                        path: p,
                        lba,
                        data,
                    });
                    failed_until[p] = None;
                    next_path = (p + 1) % conns.len();
                    k += 1;
                    continue 'writes;
                }
                (2, Some((6, _, _))) => {
                    rep.events.push(Event {
                        at,
                        path: p,
                        outcome: Outcome::UnitAttention,
                        took,
                    });
                }
                (2, Some((2, 4, 0x0c))) => {
                    rep.events.push(Event {
                        at,
                        path: p,
                        outcome: Outcome::NotReady,
                        took,
                    });
                    failed_until[p] = Some(at + spec.retry_failed_after);
                }
                (status, sense) => {
                    rep.error = Some(format!(
                        "write #{id} at LBA {lba} through {}: status {status:#x} sense {sense:02x?} (host-visible error)",
                        rep.paths[p]
                    ));
                    rep.pending = Some((lba, data));
                    break 'writes;
                }
            }
        }
    }
    rep
}

/// The model of the disk: every acknowledged write applied in order; blocks whose last write
/// was never acknowledged may hold either value.
#[derive(Clone)]
pub struct Model {
    pub data: Vec<u8>,
    /// (LBA, data) of writes never acknowledged, still allowed on the disk.
    pub uncertain: Vec<(u64, Vec<u8>)>,
}

impl Model {
    pub fn new(size: usize) -> Model {
        Model {
            data: vec![0u8; size],
            uncertain: Vec::new(),
        }
    }

    pub fn write(&mut self, lba: u64, data: &[u8]) {
        let o = lba as usize * BLOCK;
        self.data[o..o + data.len()].copy_from_slice(data);
        // An acknowledged write overrides what was uncertain there.
        let (first, last) = (lba, lba + (data.len() / BLOCK) as u64);
        self.uncertain
            .retain(|(l, d)| *l + (d.len() / BLOCK) as u64 <= first || *l >= last);
    }

    /// Applies a writer's acknowledged writes, and remembers its pending one as uncertain.
    pub fn apply(&mut self, r: &Report) {
        for a in &r.acked {
            self.write(a.lba, &a.data);
        }
        if let Some(p) = &r.pending {
            self.uncertain.push(p.clone());
        }
    }

    /// Checks `bytes` (the disk from byte `offset`) against the model; the first difference
    /// described, naming the writes by their stamps.
    pub fn check(&self, offset: usize, bytes: &[u8]) -> Result<(), String> {
        let want = &self.data[offset..offset + bytes.len()];
        if want == bytes {
            return Ok(());
        }
        for (i, (got, exp)) in bytes.chunks(BLOCK).zip(want.chunks(BLOCK)).enumerate() {
            if got == exp {
                continue;
            }
            let lba = ((offset / BLOCK) + i) as u64;
            let allowed = self.uncertain.iter().any(|(l, d)| {
                lba >= *l
                    && lba < *l + (d.len() / BLOCK) as u64
                    && d[(lba - l) as usize * BLOCK..][..BLOCK] == *got
            });
            if allowed {
                continue;
            }
            return Err(format!(
                "LBA {lba}: found {}, expected {}",
                describe(got),
                describe(exp)
            ));
        }
        Ok(())
    }

    /// Reads the whole disk through `path` (a fresh session from `host`) and checks it.
    pub fn verify_through(&self, topo: &Topology, host: Member, path: &PathSpec, what: &str) {
        let t0 = Instant::now();
        let mut c = login(topo, host, path, "iqn.2026-11.io.tandem.test:verify");
        const CHUNK: usize = 256 << 10;
        for off in (0..self.data.len()).step_by(CHUNK) {
            let lba = (off / BLOCK) as u64;
            let (r, _) = command_retrying(
                &mut c,
                &read16(lba, (CHUNK / BLOCK) as u32),
                CHUNK as u32,
                &[],
                Duration::from_secs(15),
            );
            assert_eq!(
                r.status, 0,
                "{what}: read through {} at LBA {lba}: sense {:02x?}",
                path.node, r.sense
            );
            if let Err(e) = self.check(off, &r.data_in) {
                panic!("{what}: read through {}: {e}", path.node);
            }
        }
        eprintln!(
            "{what}: the whole disk read through {} holds every acknowledged write ({:?})",
            path.node,
            t0.elapsed()
        );
    }
}

/// A block for messages: its stamp, or zeros, or unknown data.
pub fn describe(block: &[u8]) -> String {
    match stamp_of(block) {
        Some((id, lba)) => format!("write #{id} (stamped for LBA {lba})"),
        None if block.iter().all(|b| *b == 0) => "zeros".into(),
        None => "unstamped data".into(),
    }
}

/// The first 512-byte block where two images differ, if any.
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<u64> {
    if a == b {
        return None;
    }
    a.chunks(BLOCK)
        .zip(b.chunks(BLOCK))
        .position(|(x, y)| x != y)
        .map(|i| i as u64)
        .or(Some((a.len().min(b.len()) / BLOCK) as u64))
}

/// One READ(16) of block 0 through `c`: the outcome (no retry).
pub fn probe_read(c: &mut RawConn) -> Option<Outcome> {
    let r = c.command(&read16(0, 1), BLOCK as u32, &[], 0, 0);
    match (r.status, sense_of(&r)) {
        (0, _) => Some(Outcome::Ack),
        (2, Some((2, 4, 0x0c))) => Some(Outcome::NotReady),
        (2, Some((6, _, _))) => Some(Outcome::UnitAttention),
        _ => None,
    }
}

/// A thread that reads one block through one path every `interval` on a session of its own
/// (a path checker): when the node started answering NOT READY, and whether it still
/// answered GOOD after some instant (a stale read from a node that should have stopped).
/// A writer at queue depth 1 cannot tell that, as it waits on a command the node holds.
pub struct Prober {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Event>>,
}

impl Prober {
    pub fn start(topo: &Topology, host: Member, path: &PathSpec, interval: Duration) -> Prober {
        let mut c = login(
            topo,
            host,
            path,
            &format!("iqn.2026-11.io.tandem.test:probe-{}", path.node),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut events = Vec::new();
            while !s.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                if let Some(outcome) = probe_read(&mut c) {
                    let at = Instant::now();
                    events.push(Event {
                        at,
                        path: 0,
                        outcome,
                        took: at - t0,
                    });
                }
                std::thread::sleep(interval);
            }
            events
        });
        Prober { stop, thread }
    }

    /// As [`Prober::start`], but a broken connection (a killed or restarting data plane) is
    /// recorded as [`Outcome::PathDown`] and the prober logs in again for its next read.
    pub fn start_reconnecting(
        topo: &Topology,
        host: Member,
        path: &PathSpec,
        interval: Duration,
    ) -> Prober {
        let initiator = format!("iqn.2026-11.io.tandem.test:probe-{}", path.node);
        let mut conn = Some(login(topo, host, path, &initiator));
        let ns = namespace_file(topo, host);
        let path = path.clone();
        install_quiet_hook();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            enter_namespace(&ns);
            let mut events = Vec::new();
            while !s.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                if conn.is_none() {
                    conn = relogin(&path, &initiator);
                }
                let outcome = match conn.as_mut() {
                    Some(c) => quietly(|| probe_read(c)).unwrap_or(Some(Outcome::PathDown)),
                    None => Some(Outcome::PathDown),
                };
                if outcome == Some(Outcome::PathDown) {
                    conn = None;
                }
                if let Some(outcome) = outcome {
                    let at = Instant::now();
                    events.push(Event {
                        at,
                        path: 0,
                        outcome,
                        took: at - t0,
                    });
                }
                std::thread::sleep(interval);
            }
            events
        });
        Prober { stop, thread }
    }

    pub fn finish(self) -> ProbeLog {
        self.stop.store(true, Ordering::Relaxed);
        ProbeLog(self.thread.join().expect("prober thread panicked"))
    }
}

/// What a [`Prober`] saw.
pub struct ProbeLog(pub Vec<Event>);

impl ProbeLog {
    /// The first `outcome` after `after`, counted from `after`.
    pub fn first(&self, outcome: Outcome, after: Instant) -> Option<Duration> {
        self.0
            .iter()
            .find(|e| e.outcome == outcome && e.at > after)
            .map(|e| e.at - after)
    }

    /// The last GOOD answer in `(from, to)`.
    pub fn last_good(&self, from: Instant, to: Instant) -> Option<Instant> {
        self.0
            .iter()
            .filter(|e| e.outcome == Outcome::Ack && e.at > from && e.at < to)
            .map(|e| e.at)
            .next_back()
    }

    /// The longest time one probe took in `(from, to)`.
    pub fn longest(&self, from: Instant, to: Instant) -> Duration {
        self.0
            .iter()
            .filter(|e| e.at > from && e.at < to)
            .map(|e| e.took)
            .max()
            .unwrap_or_default()
    }
}
