//! Two replicated devices in one process, each over an O_DIRECT image file, joined by the
//! in-process transport, with a test-hosted failover authority driven through
//! `ReplicaHandle::exchange` the way the control service drives it over the control link.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use tandem_bdev::{open_file, Bdev, BdevChannel, BdevError, BdevOp, Completion, FileConfig};
use tandem_config::ipc::{HaLease, HaReport, HaUpdate};
use tandem_ha::authority::Authority;
use tandem_ha::{BlockRange, Envelope, EpochConfig, Msg, NodeId, OpId, Time};
use tandem_mirror::{Payload, SharedPayload};
use tandem_replica::{MemNet, Partner, ReplicaHandle, ReplicaOptions, ReplicatedBdev};

const BS: u32 = 512;
const SIZE: u64 = 32 << 20;
const LEASE_NS: u64 = 2_000_000_000;
const MARGIN_NS: u64 = 500_000_000;
const N1: NodeId = NodeId(1);
const N2: NodeId = NodeId(2);

/// The failover authority, polled every 20 ms, as `tandem-control` will host it.
struct AuthorityLoop {
    nodes: Arc<Mutex<HashMap<NodeId, ReplicaHandle>>>,
    reports: Arc<Mutex<HashMap<NodeId, HaReport>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AuthorityLoop {
    fn start() -> AuthorityLoop {
        AuthorityLoop::start_with(&[N1, N2])
    }

    fn start_with(members: &[NodeId]) -> AuthorityLoop {
        let members = members.to_vec();
        let nodes: Arc<Mutex<HashMap<NodeId, ReplicaHandle>>> = Arc::default();
        let reports: Arc<Mutex<HashMap<NodeId, HaReport>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (n, r, s) = (nodes.clone(), reports.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut auth =
                Authority::new(EpochConfig::initial(&members), LEASE_NS, MARGIN_NS, None);
            let start = Instant::now();
            let mut pending: HashMap<NodeId, Vec<HaUpdate>> = HashMap::new();
            while !s.load(Ordering::Relaxed) {
                let handles: Vec<(NodeId, ReplicaHandle)> =
                    n.lock().iter().map(|(k, v)| (*k, v.clone())).collect();
                for (id, h) in handles {
                    let updates = pending.remove(&id).unwrap_or_default();
                    let Ok(report) = h.exchange(updates) else {
                        continue;
                    };
                    for req in report.requests.clone() {
                        let now = Time(start.elapsed().as_nanos() as u64);
                        if let Some(u) = auth.on_message(now, id, req, 0) {
                            let lease = u.lease_until.map(|_| HaLease {
                                epoch: u.config.epoch,
                                requested_at_ns: report.now_ns,
                                duration_ns: LEASE_NS,
                            });
                            pending.insert(
                                id,
                                vec![HaUpdate {
                                    config: u.config,
                                    lease,
                                }],
                            );
                        }
                    }
                    r.lock().insert(id, report);
                }
                auth.run_due(Time(start.elapsed().as_nanos() as u64));
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        AuthorityLoop {
            nodes,
            reports,
            stop,
            thread: Some(thread),
        }
    }

    fn add(&self, id: NodeId, h: ReplicaHandle) {
        self.reports.lock().remove(&id);
        self.nodes.lock().insert(id, h);
    }

    fn remove(&self, id: NodeId) {
        self.nodes.lock().remove(&id);
        self.reports.lock().remove(&id);
    }

    fn report(&self, id: NodeId) -> Option<HaReport> {
        self.reports.lock().get(&id).cloned()
    }

    /// Waits until every listed node serves and its configuration has it synchronized.
    fn wait_serving(&self, ids: &[NodeId], timeout: Duration) -> Duration {
        let t0 = Instant::now();
        loop {
            let all = ids.iter().all(|id| {
                self.report(*id).is_some_and(|r| {
                    r.status.serving
                        && r.status.config.as_ref().is_some_and(|c| {
                            ids.iter()
                                .all(|n| c.state_of(*n) == tandem_ha::MemberState::Synchronized)
                        })
                })
            });
            if all {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < timeout,
                "not serving after {timeout:?}: {:#?}",
                ids.iter().map(|id| self.report(*id)).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for AuthorityLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// O_DIRECT needs a real disk filesystem (not tmpfs, which /tmp may be): `$TANDEM_SCRATCH`,
/// else /var/tmp.
fn scratch() -> tempfile::TempDir {
    let dir = std::env::var_os("TANDEM_SCRATCH")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    tempfile::Builder::new()
        .prefix("tandem-replica")
        .tempdir_in(dir)
        .unwrap()
}

fn image(dir: &Path, name: &str) -> (PathBuf, Arc<dyn Bdev>) {
    let path = dir.join(format!("{name}.img"));
    let dev = open_file(&FileConfig {
        name: name.into(),
        path: path.clone(),
        size_bytes: Some(SIZE),
        block_size: BS,
        read_only: false,
    })
    .unwrap();
    (path, dev)
}

fn replica(
    net: &MemNet,
    inner: Arc<dyn Bdev>,
    me: NodeId,
    peer: NodeId,
    meta: PathBuf,
) -> (Arc<ReplicatedBdev>, ReplicaHandle) {
    let transport = Box::new(net.transport(me, peer).unwrap());
    ReplicatedBdev::start(
        inner,
        ReplicaOptions::new(me, Some(meta)),
        vec![Partner {
            name: format!("node{}", peer.0),
            node_id: peer,
            transport,
        }],
    )
    .unwrap()
}

/// A blocking client on one channel with up to `qd` operations in flight.
struct Client {
    ch: Box<dyn BdevChannel>,
    next: u64,
}

impl Client {
    fn new(dev: &dyn Bdev) -> Client {
        Client {
            ch: dev.channel().unwrap(),
            next: 0,
        }
    }

    fn batch(&mut self, ops: Vec<BdevOp>, timeout: Duration) -> Vec<Completion> {
        let n = ops.len();
        let first = self.next;
        for op in ops {
            self.ch.submit(self.next, op);
            self.next += 1;
        }
        let t0 = Instant::now();
        let mut out = Vec::new();
        while out.len() < n {
            if self.ch.poll(&mut out) == 0 {
                assert!(
                    t0.elapsed() < timeout,
                    "I/O did not complete in {timeout:?}"
                );
                tandem_ffi::wait_readable(self.ch.wake_fd().unwrap(), 50).unwrap();
            }
        }
        out.sort_by_key(|c| c.tag);
        assert_eq!(out[0].tag, first);
        out
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), BdevError> {
        let mut buf = self.ch.alloc_buf(data.len());
        buf.copy_from_slice(data);
        let mut c = self.batch(
            vec![BdevOp::Write {
                offset,
                buf,
                fua: false,
            }],
            Duration::from_secs(20),
        );
        c.pop().unwrap().result
    }

    fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, BdevError> {
        let mut c = self.batch(vec![BdevOp::Read { offset, len }], Duration::from_secs(20));
        let c = c.pop().unwrap();
        c.result.map(|()| c.buf.unwrap().to_vec())
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.gen()).collect()
}

/// Random 4 KiB writes (with FUA now and then) at QD 8 in `[base, base + span)`, checked
/// against a model by reading back through `reader`.
fn random_writes(dev: &dyn Bdev, reader: &dyn Bdev, base: u64, span: u64, count: usize, seed: u64) {
    let mut c = Client::new(dev);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut model: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut done = 0;
    while done < count {
        let mut ops = Vec::new();
        let mut used = Vec::new();
        for _ in 0..8 {
            // Non-overlapping within a batch, so the model knows the final content.
            let off = loop {
                let o = base + rng.gen_range(0..span / 4096) * 4096;
                if !used.contains(&o) {
                    break o;
                }
            };
            used.push(off);
            let data = pattern(rng.gen(), 4096);
            let mut buf = c.ch.alloc_buf(4096);
            buf.copy_from_slice(&data);
            ops.push(BdevOp::Write {
                offset: off,
                buf,
                fua: rng.gen_ratio(1, 10),
            });
            model.insert(off, data);
        }
        for comp in c.batch(ops, Duration::from_secs(20)) {
            comp.result.unwrap();
        }
        done += 8;
    }
    let mut r = Client::new(reader);
    for (off, data) in &model {
        assert_eq!(&r.read(*off, 4096).unwrap(), data, "offset {off}");
    }
}

fn images_identical(a: &Path, b: &Path) {
    let (x, y) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    assert_eq!(x.len(), y.len());
    if let Some(i) = x.iter().zip(&y).position(|(p, q)| p != q) {
        panic!("images differ first at byte {i} (region {})", i / 65536);
    }
}

#[test]
fn two_replicas_mirror_fail_over_and_resync() {
    let dir = scratch();
    let net = MemNet::new();
    let auth = AuthorityLoop::start();
    let (img_a, inner_a) = image(dir.path(), "a");
    let (img_b, inner_b) = image(dir.path(), "b");
    let meta_a = dir.path().join("a.ha-meta");
    let meta_b = dir.path().join("b.ha-meta");

    // Not serving before the authority said so: NOT READY, never MEDIUM ERROR.
    let (a, ha) = replica(&net, inner_a.clone(), N1, N2, meta_a.clone());
    assert!(matches!(
        Client::new(&*a).read(0, 4096),
        Err(BdevError::NotReady)
    ));
    let (b, hb) = replica(&net, inner_b.clone(), N2, N1, meta_b.clone());
    auth.add(N1, ha);
    auth.add(N2, hb);
    let first_sync = auth.wait_serving(&[N1, N2], Duration::from_secs(60));
    eprintln!("initial (full) sync of {} MiB: {first_sync:?}", SIZE >> 20);

    // Written through A, read through B.
    let data = pattern(1, 64 * 1024);
    Client::new(&*a).write(1 << 20, &data).unwrap();
    assert_eq!(Client::new(&*b).read(1 << 20, 64 * 1024).unwrap(), data);

    // Thousands of random writes through both nodes at once (disjoint halves; each checked
    // through the other node).
    let t0 = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| random_writes(&*a, &*b, 0, 8 << 20, 2000, 11));
        s.spawn(|| random_writes(&*b, &*a, 8 << 20, 8 << 20, 2000, 12));
    });
    eprintln!(
        "4000 replicated 4 KiB writes (QD 8 per node) + reads: {:?}",
        t0.elapsed()
    );
    // Discard through B reads back zeroes through A.
    let mut cb = Client::new(&*b);
    let c = cb.batch(
        vec![BdevOp::Discard {
            offset: 2 << 20,
            len: 3 << 20,
        }],
        Duration::from_secs(20),
    );
    c[0].result.as_ref().unwrap();
    assert_eq!(
        Client::new(&*a).read(3 << 20, 4096).unwrap(),
        vec![0u8; 4096]
    );
    drop(cb);
    a.flush_blocking().unwrap();
    b.flush_blocking().unwrap();
    images_identical(&img_a, &img_b);

    // The partner that is not the sequencer stops and returns: fast resync. Then the
    // sequencer itself stops and returns: the survivor takes over sequencing, and the
    // returning former sequencer is fully resynchronized (its disk may hold writes no
    // partner saw: `was_sequencer`, RAM journal).
    let seq = auth.report(N1).unwrap().status.config.unwrap().sequencer;
    let mut nodes = [
        (N1, Some(a), inner_a, img_a, meta_a),
        (N2, Some(b), inner_b, img_b, meta_b),
    ];
    let seq_idx = if seq == N1 { 0 } else { 1 };
    for (round, victim) in [(1, 1 - seq_idx), (2, seq_idx)] {
        let survivor = 1 - victim;
        let (vid, sid) = (nodes[victim].0, nodes[survivor].0);
        eprintln!(
            "round {round}: stopping n{} (sequencer n{})",
            vid.0,
            seq_of(&auth, sid).0
        );
        auth.remove(vid);
        drop(nodes[victim].1.take());
        let sdev = nodes[survivor].1.clone().unwrap();
        let mut cs = Client::new(&*sdev);
        let t0 = Instant::now();
        cs.write(0, &pattern(2 + round, 4096)).unwrap();
        let pause = t0.elapsed();
        eprintln!(
            "  first write through n{} after n{} stopped completed in {pause:?}",
            sid.0, vid.0
        );
        assert!(pause < Duration::from_secs(8), "{pause:?}");
        // The survivor's next report shows the configuration that let the write complete.
        let t1 = Instant::now();
        let cfg = loop {
            let cfg = auth.report(sid).unwrap().status.config.unwrap();
            if cfg.state_of(vid) == tandem_ha::MemberState::Out
                || t1.elapsed() > Duration::from_secs(2)
            {
                break cfg;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(cfg.state_of(vid), tandem_ha::MemberState::Out);
        assert_eq!(cfg.sequencer, sid);
        // Writes while the partner is away: these regions are dirty for it.
        random_writes(&*sdev, &*sdev, 16 << 20, 4 << 20, 400, 13 + round);
        let dirty = auth.report(sid).unwrap().status.partners[0].dirty_regions;
        eprintln!("  regions dirty for n{} while it was away: {dirty}", vid.0);
        assert!(dirty > 0 && dirty < SIZE / 65536, "{dirty}");
        drop(cs);

        // It restarts with its metadata, is resynchronized, and both serve again.
        let copied_before = auth.report(sid).unwrap().status.partners[0].resync_done_regions;
        let (dev, h) = replica(
            &net,
            nodes[victim].2.clone(),
            vid,
            sid,
            nodes[victim].4.clone(),
        );
        let t0 = Instant::now();
        auth.add(vid, h);
        auth.wait_serving(&[N1, N2], Duration::from_secs(60));
        let copied =
            auth.report(sid).unwrap().status.partners[0].resync_done_regions - copied_before;
        eprintln!(
            "  n{} resynchronized {:?} after its restart: {copied} regions copied of {}",
            vid.0,
            t0.elapsed(),
            SIZE / 65536
        );
        if round == 1 {
            assert!(
                copied >= dirty && copied < SIZE / 65536,
                "fast sync expected: {copied}"
            );
        } else {
            assert_eq!(
                copied,
                SIZE / 65536,
                "a former sequencer is fully resynchronized"
            );
        }
        // Writes through the restarted node land on the survivor too.
        let data = pattern(30 + round, 8192);
        Client::new(&*dev).write(30 << 20, &data).unwrap();
        assert_eq!(Client::new(&*sdev).read(30 << 20, 8192).unwrap(), data);
        nodes[victim].1 = Some(dev);
        for n in &nodes {
            n.1.as_ref().unwrap().flush_blocking().unwrap();
        }
        images_identical(&nodes[0].3, &nodes[1].3);
    }
    auth.remove(N1);
    auth.remove(N2);
}

fn seq_of(auth: &AuthorityLoop, id: NodeId) -> NodeId {
    auth.report(id).unwrap().status.config.unwrap().sequencer
}

#[test]
fn requests_are_checked_and_a_stopped_replica_answers_not_ready() {
    let dir = scratch();
    let net = MemNet::new();
    let (_, inner) = image(dir.path(), "c");
    let (dev, h) = replica(&net, inner, N1, N2, dir.path().join("c.ha-meta"));
    let mut c = Client::new(&*dev);
    let t = Duration::from_secs(5);
    let buf = |c: &mut Client, n| c.ch.alloc_buf(n);
    let b = buf(&mut c, 4096);
    let r = c.batch(
        vec![
            BdevOp::Read {
                offset: 100,
                len: 512,
            },
            BdevOp::Read {
                offset: SIZE,
                len: 512,
            },
            BdevOp::Write {
                offset: SIZE - 512,
                buf: b,
                fua: false,
            },
            BdevOp::Discard {
                offset: 0,
                len: SIZE + 512,
            },
            BdevOp::Read { offset: 0, len: 0 },
            BdevOp::Flush,
        ],
        t,
    );
    assert!(matches!(r[0].result, Err(BdevError::Misaligned)));
    assert!(matches!(r[1].result, Err(BdevError::OutOfRange)));
    assert!(matches!(r[2].result, Err(BdevError::OutOfRange)));
    assert!(r[2].buf.is_some(), "a refused write's buffer comes back");
    assert!(matches!(r[3].result, Err(BdevError::OutOfRange)));
    assert!(r[4].result.is_ok());
    // Not a member yet: NOT READY (never MEDIUM ERROR).
    assert!(matches!(r[5].result, Err(BdevError::NotReady)));
    // The report before any configuration: a lease request, no configuration, not serving.
    let rep = h.exchange(Vec::new()).unwrap();
    assert!(rep
        .requests
        .contains(&tandem_ha::authority::ToAuthority::LeaseRequest));
    assert!(rep.status.config.is_none() && !rep.status.serving);
    assert_eq!(rep.status.partners.len(), 1);
    // Stopped: every submission still completes, NOT READY; exchange fails cleanly.
    dev.stop();
    let b = buf(&mut c, 4096);
    let r = c.batch(
        vec![
            BdevOp::Write {
                offset: 0,
                buf: b,
                fua: true,
            },
            BdevOp::Read {
                offset: 0,
                len: 512,
            },
        ],
        t,
    );
    assert!(r
        .iter()
        .all(|c| matches!(c.result, Err(BdevError::NotReady))));
    assert!(r[0].buf.is_some());
    assert!(h.exchange(Vec::new()).is_err());
}

/// id, image, local copy, metadata path, the running replica.
type TestNode = (
    NodeId,
    PathBuf,
    Arc<dyn Bdev>,
    PathBuf,
    Option<Arc<ReplicatedBdev>>,
);

/// A replica with several partners (all on `net`).
fn replica_of(
    net: &MemNet,
    inner: Arc<dyn Bdev>,
    me: NodeId,
    peers: &[NodeId],
    meta: PathBuf,
) -> (Arc<ReplicatedBdev>, ReplicaHandle) {
    let partners = peers
        .iter()
        .map(|&p| Partner {
            name: format!("node{}", p.0),
            node_id: p,
            transport: Box::new(net.transport(me, p).unwrap()),
        })
        .collect();
    ReplicatedBdev::start(inner, ReplicaOptions::new(me, Some(meta)), partners).unwrap()
}

#[test]
fn three_replicas_write_everywhere_lose_one_and_take_it_back() {
    const N3: NodeId = NodeId(3);
    let ids = [N1, N2, N3];
    let dir = scratch();
    let net = MemNet::new();
    let auth = AuthorityLoop::start_with(&ids);
    let mut nodes: Vec<TestNode> = Vec::new();
    for id in ids {
        let (img, inner) = image(dir.path(), &format!("n{}", id.0));
        let meta = dir.path().join(format!("n{}.ha-meta", id.0));
        let peers: Vec<NodeId> = ids.iter().copied().filter(|p| *p != id).collect();
        let (dev, h) = replica_of(&net, inner.clone(), id, &peers, meta.clone());
        auth.add(id, h);
        nodes.push((id, img, inner, meta, Some(dev)));
    }
    let t = auth.wait_serving(&ids, Duration::from_secs(60));
    eprintln!("three replicas serving after {t:?}");
    let dev = |nodes: &Vec<TestNode>, i: usize| nodes[i].4.clone().unwrap();
    // Writes through each node, checked through the next one.
    std::thread::scope(|s| {
        for i in 0..3 {
            let (w, r) = (dev(&nodes, i), dev(&nodes, (i + 1) % 3));
            s.spawn(move || {
                random_writes(&*w, &*r, i as u64 * (8 << 20), 8 << 20, 800, 40 + i as u64)
            });
        }
    });
    for n in &nodes {
        n.4.as_ref().unwrap().flush_blocking().unwrap();
    }
    images_identical(&nodes[0].1, &nodes[1].1);
    images_identical(&nodes[0].1, &nodes[2].1);

    // The sequencer goes away: the two others go on (one of them sequencing), then it comes
    // back and is resynchronized.
    let seq = auth.report(N1).unwrap().status.config.unwrap().sequencer;
    let v = nodes.iter().position(|n| n.0 == seq).unwrap();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != v).collect();
    auth.remove(seq);
    drop(nodes[v].4.take());
    let t0 = Instant::now();
    Client::new(&*dev(&nodes, survivors[1]))
        .write(0, &pattern(77, 4096))
        .unwrap();
    eprintln!(
        "first write after the sequencer n{} stopped: {:?}",
        seq.0,
        t0.elapsed()
    );
    random_writes(
        &*dev(&nodes, survivors[0]),
        &*dev(&nodes, survivors[1]),
        24 << 20,
        4 << 20,
        400,
        50,
    );
    let (dev_v, h) = replica_of(
        &net,
        nodes[v].2.clone(),
        seq,
        &ids.iter()
            .copied()
            .filter(|p| *p != seq)
            .collect::<Vec<_>>(),
        nodes[v].3.clone(),
    );
    let t0 = Instant::now();
    auth.add(seq, h);
    auth.wait_serving(&ids, Duration::from_secs(60));
    eprintln!(
        "n{} resynchronized {:?} after its restart",
        seq.0,
        t0.elapsed()
    );
    nodes[v].4 = Some(dev_v);
    let data = pattern(78, 8192);
    Client::new(&*dev(&nodes, v))
        .write(31 << 20, &data)
        .unwrap();
    for i in survivors {
        assert_eq!(
            Client::new(&*dev(&nodes, i)).read(31 << 20, 8192).unwrap(),
            data
        );
    }
    for n in &nodes {
        n.4.as_ref().unwrap().flush_blocking().unwrap();
    }
    images_identical(&nodes[0].1, &nodes[1].1);
    images_identical(&nodes[0].1, &nodes[2].1);
    for id in ids {
        auth.remove(id);
    }
}

#[test]
fn a_corrupt_payload_from_the_partner_is_never_written() {
    let dir = scratch();
    let net = MemNet::new();
    let auth = AuthorityLoop::start();
    let (img_a, inner_a) = image(dir.path(), "a");
    let (img_b, inner_b) = image(dir.path(), "b");
    let (a, ha) = replica(&net, inner_a, N1, N2, dir.path().join("a.ha-meta"));
    let (b, hb) = replica(&net, inner_b, N2, N1, dir.path().join("b.ha-meta"));
    auth.add(N1, ha);
    auth.add(N2, hb);
    auth.wait_serving(&[N1, N2], Duration::from_secs(60));
    let cfg = auth.report(N1).unwrap().status.config.unwrap();
    let (seq, other) = if cfg.sequencer == N1 {
        (N1, N2)
    } else {
        (N2, N1)
    };
    let other_img = if other == N1 { &img_a } else { &img_b };
    // A Mirror "from the sequencer" whose bytes no longer match their CRC (flipped in flight).
    let good = SharedPayload::from_host(&[0x5au8; 4096]);
    let mut bad = good.as_slice().to_vec();
    bad[100] ^= 1;
    let env = Envelope {
        epoch: cfg.epoch,
        msg: Msg::Mirror {
            id: OpId {
                origin: seq,
                n: u64::MAX - 1,
            },
            range: BlockRange::new(20_000, 8),
            data: SharedPayload::received(&bad, good.crc32c()),
            commit_follows: false,
        },
    };
    assert!(net.inject(seq, other, env));
    std::thread::sleep(Duration::from_millis(500));
    a.flush_blocking().unwrap();
    b.flush_blocking().unwrap();
    let bytes = std::fs::read(other_img).unwrap();
    let at = 20_000 * 512;
    assert!(
        bytes[at..at + 4096].iter().all(|x| *x == 0),
        "corrupt payload reached the disk"
    );
    // Both replicas still serve and mirror.
    let data = pattern(9, 4096);
    Client::new(&*a).write(1 << 20, &data).unwrap();
    assert_eq!(Client::new(&*b).read(1 << 20, 4096).unwrap(), data);
    auth.remove(N1);
    auth.remove(N2);
}

// ---- COMPARE AND WRITE through the engine ------------------------------------------------

/// Bytes of one COMPARE AND WRITE slot (several blocks, so a torn result would show).
const SLOT: usize = 4096;

impl Client {
    fn compare_and_write(
        &mut self,
        offset: u64,
        expected: &[u8],
        new: &[u8],
    ) -> Result<(), BdevError> {
        let mut buf = self.ch.alloc_buf(expected.len() + new.len());
        buf[..expected.len()].copy_from_slice(expected);
        buf[expected.len()..].copy_from_slice(new);
        let mut c = self.batch(
            vec![BdevOp::CompareAndWrite {
                offset,
                buf,
                fua: false,
            }],
            Duration::from_secs(20),
        );
        let c = c.pop().unwrap();
        assert_eq!(
            c.buf.map(|b| b.len()),
            Some(expected.len() + new.len()),
            "the buffer comes back"
        );
        c.result
    }
}

/// Slot content for `version` written by `client`: every 8-byte word says both, so a slot
/// that mixes two writes fails to decode. Version 0 is the zeroes of a fresh image.
fn slot_value(slot: u64, version: u64, client: u64) -> Vec<u8> {
    if version == 0 {
        return vec![0; SLOT];
    }
    (0..SLOT as u64 / 8)
        .flat_map(|i| ((version << 32) | (client << 16) | (slot << 8) | (i & 0xff)).to_le_bytes())
        .collect()
}

/// (version, client) of a slot's content; `None` if it is not one whole value (torn).
fn decode_slot(slot: u64, data: &[u8]) -> Option<(u64, u64)> {
    if data.iter().all(|&b| b == 0) {
        return Some((0, 0));
    }
    let w0 = u64::from_le_bytes(data[..8].try_into().unwrap());
    let (version, client) = (w0 >> 32, (w0 >> 16) & 0xffff);
    (slot_value(slot, version, client) == data).then_some((version, client))
}

/// Two synchronized replicas over O_DIRECT images, and the authority serving them.
fn synchronized_pair(
    dir: &Path,
) -> (
    AuthorityLoop,
    Arc<ReplicatedBdev>,
    Arc<ReplicatedBdev>,
    PathBuf,
    PathBuf,
) {
    let net = MemNet::new();
    let auth = AuthorityLoop::start();
    let (img_a, inner_a) = image(dir, "a");
    let (img_b, inner_b) = image(dir, "b");
    let (a, ha) = replica(&net, inner_a, N1, N2, dir.join("a.ha-meta"));
    let (b, hb) = replica(&net, inner_b, N2, N1, dir.join("b.ha-meta"));
    assert!(a.atomic_compare_and_write() && b.atomic_compare_and_write());
    auth.add(N1, ha);
    auth.add(N2, hb);
    auth.wait_serving(&[N1, N2], Duration::from_secs(60));
    (auth, a, b, img_a, img_b)
}

fn flush_and_compare(a: &ReplicatedBdev, b: &ReplicatedBdev, img_a: &Path, img_b: &Path) {
    a.inner().flush_blocking().unwrap();
    b.inner().flush_blocking().unwrap();
    images_identical(img_a, img_b);
}

/// The miscompare offset and the outcome, through the sequencer and through the other node
/// (whose COMPARE AND WRITE is forwarded and compared on the sequencer's copy).
#[test]
fn compare_and_write_applies_or_reports_the_first_differing_byte() {
    let dir = scratch();
    let (auth, a, b, img_a, img_b) = synchronized_pair(dir.path());
    let seq = seq_of(&auth, N1);
    eprintln!("sequencer: node {}", seq.0);
    for round in 0..2usize {
        let (via, other) = if round == 0 { (&*a, &*b) } else { (&*b, &*a) };
        let (via, other) = (&mut Client::new(via), &mut Client::new(other));
        let off = (round as u64 + 1) << 20;
        let old = pattern(100 + round as u64, 2 * SLOT);
        let new = pattern(200 + round as u64, 2 * SLOT);
        other.write(off, &old).unwrap();
        // Expected data wrong at byte 5000 (second slot): MISCOMPARE at 5000, nothing written.
        let mut wrong = old.clone();
        wrong[5000] ^= 0x5a;
        match via.compare_and_write(off, &wrong, &new) {
            Err(BdevError::Miscompare { offset }) => assert_eq!(offset, 5000, "round {round}"),
            r => panic!("round {round}: expected a miscompare, got {r:?}"),
        }
        assert_eq!(other.read(off, 2 * SLOT as u32).unwrap(), old);
        assert_eq!(via.read(off, 2 * SLOT as u32).unwrap(), old);
        // Right data: applied, and visible through the other node at once.
        via.compare_and_write(off, &old, &new).unwrap();
        assert_eq!(other.read(off, 2 * SLOT as u32).unwrap(), new);
        // The first byte differing counts too.
        match via.compare_and_write(off, &old, &old) {
            Err(BdevError::Miscompare { offset }) => {
                let first = old.iter().zip(&new).position(|(x, y)| x != y).unwrap();
                assert_eq!(offset, first as u64, "round {round}");
            }
            r => panic!("round {round}: expected a miscompare, got {r:?}"),
        }
    }
    flush_and_compare(&a, &b, &img_a, &img_b);
    auth.remove(N1);
    auth.remove(N2);
}

/// Clients on both nodes race COMPARE AND WRITE increments on the same slots (read the
/// slot, then swap it for the next version): with COMPARE AND WRITE atomic across nodes,
/// every version is reached by exactly one successful command (none lost to a concurrent
/// one, none torn), and both copies end identical. Plain writes through B to other slots
/// whose boundaries overlap run meanwhile, against COMPARE AND WRITEs through A.
#[test]
fn compare_and_write_is_atomic_across_nodes() {
    let dir = scratch();
    let (auth, a, b, img_a, img_b) = synchronized_pair(dir.path());
    const SLOTS: u64 = 3;
    const INCREMENTS: usize = 25;
    let base: u64 = 4 << 20;
    let successes: Mutex<Vec<(u64, u64, u64)>> = Mutex::new(Vec::new());
    let miscompares = std::sync::atomic::AtomicU64::new(0);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for client in 1..=4u64 {
            let dev: &ReplicatedBdev = if client % 2 == 1 { &a } else { &b };
            let (successes, miscompares) = (&successes, &miscompares);
            s.spawn(move || {
                let mut c = Client::new(dev);
                let mut rng = rand::rngs::StdRng::seed_from_u64(client);
                for _ in 0..INCREMENTS {
                    let slot = rng.gen_range(0..SLOTS);
                    let off = base + slot * SLOT as u64;
                    loop {
                        let cur = c.read(off, SLOT as u32).unwrap();
                        let (v, _) = decode_slot(slot, &cur).expect("a torn slot was read");
                        let new = slot_value(slot, v + 1, client);
                        match c.compare_and_write(off, &cur, &new) {
                            Ok(()) => {
                                successes.lock().push((slot, v + 1, client));
                                break;
                            }
                            Err(BdevError::Miscompare { offset }) => {
                                // Versions differ in the first word (or the slot matches
                                // again by now: 0).
                                assert!(offset < 8, "miscompare offset {offset}");
                                miscompares.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => panic!("client {client}: {e}"),
                        }
                    }
                }
            });
        }
        // Plain writes through B over two-slot spans next to the raced slots, racing
        // COMPARE AND WRITEs through A on the same spans' slots.
        let (a, b): (&ReplicatedBdev, &ReplicatedBdev) = (&a, &b);
        s.spawn(move || {
            let mut c = Client::new(b);
            for k in 1..=40u64 {
                let slot = SLOTS + (k % 2);
                let mut data = slot_value(slot, k, 9);
                data.extend(slot_value(slot + 1, k, 9));
                c.write(base + slot * SLOT as u64, &data).unwrap();
            }
        });
        s.spawn(move || {
            let mut c = Client::new(a);
            let mut applied = 0;
            for k in 1..=40u64 {
                let slot = SLOTS + 1;
                let off = base + slot * SLOT as u64;
                let cur = c.read(off, SLOT as u32).unwrap();
                decode_slot(slot, &cur).expect("a torn slot was read");
                match c.compare_and_write(off, &cur, &slot_value(slot, 1000 + k, 7)) {
                    Ok(()) => applied += 1,
                    Err(BdevError::Miscompare { .. }) => {}
                    Err(e) => panic!("{e}"),
                }
            }
            eprintln!("COMPARE AND WRITE against plain writes: {applied} of 40 applied");
        });
    });
    let successes = successes.into_inner();
    eprintln!(
        "{} COMPARE AND WRITE increments from 4 clients on 2 nodes, {} miscompares, {:?}",
        successes.len(),
        miscompares.load(Ordering::Relaxed),
        t0.elapsed()
    );
    assert_eq!(successes.len(), 4 * INCREMENTS);
    let (mut ca, mut cb) = (Client::new(&*a), Client::new(&*b));
    for slot in 0..SLOTS {
        let mut versions: Vec<(u64, u64)> = successes
            .iter()
            .filter(|s| s.0 == slot)
            .map(|s| (s.1, s.2))
            .collect();
        versions.sort();
        let n = versions.len() as u64;
        // Exactly one success per version: a lost update would repeat one.
        assert_eq!(
            versions.iter().map(|v| v.0).collect::<Vec<_>>(),
            (1..=n).collect::<Vec<_>>(),
            "slot {slot}"
        );
        let last = versions.last().map(|v| v.1).unwrap_or(0);
        let expect = slot_value(slot, n, last);
        let off = base + slot * SLOT as u64;
        assert_eq!(
            ca.read(off, SLOT as u32).unwrap(),
            expect,
            "slot {slot} via A"
        );
        assert_eq!(
            cb.read(off, SLOT as u32).unwrap(),
            expect,
            "slot {slot} via B"
        );
    }
    for slot in SLOTS..SLOTS + 3 {
        let off = base + slot * SLOT as u64;
        let got = ca.read(off, SLOT as u32).unwrap();
        assert!(decode_slot(slot, &got).is_some(), "slot {slot} torn");
        assert_eq!(cb.read(off, SLOT as u32).unwrap(), got, "slot {slot}");
    }
    flush_and_compare(&a, &b, &img_a, &img_b);
    auth.remove(N1);
    auth.remove(N2);
}

// ---- task management across nodes ----------------------------------------------------------

/// A replica whose partner-carried task management functions are counted.
fn counting_replica(
    net: &MemNet,
    inner: Arc<dyn Bdev>,
    me: NodeId,
    peer: NodeId,
    meta: PathBuf,
) -> (
    Arc<ReplicatedBdev>,
    ReplicaHandle,
    Arc<Mutex<Vec<tandem_bdev::TaskMgmt>>>,
) {
    let seen: Arc<Mutex<Vec<tandem_bdev::TaskMgmt>>> = Arc::default();
    let log = Arc::clone(&seen);
    let mut opts = ReplicaOptions::new(me, Some(meta));
    opts.on_task_mgmt = Some(Box::new(move |f| log.lock().push(f)));
    let transport = Box::new(net.transport(me, peer).unwrap());
    let (dev, h) = ReplicatedBdev::start(
        inner,
        opts,
        vec![Partner {
            name: format!("node{}", peer.0),
            node_id: peer,
            transport,
        }],
    )
    .unwrap();
    (dev, h, seen)
}

impl Client {
    fn task_mgmt(&mut self, function: tandem_bdev::TaskMgmt) -> Result<(), BdevError> {
        let mut c = self.batch(
            vec![BdevOp::TaskManagement { function }],
            Duration::from_secs(30),
        );
        c.pop().unwrap().result
    }
}

/// A LOGICAL UNIT RESET or CLEAR TASK SET through either node reaches the other one before
/// it completes; with writes in flight through the partner every write completes (GOOD or
/// NOT READY, never lost) and both copies end identical; with the partner gone the function
/// completes once the authority has declared it out, and a node that does not serve refuses
/// it NOT READY.
#[test]
fn task_management_reaches_the_partner_before_it_completes() {
    use tandem_bdev::TaskMgmt;
    let dir = scratch();
    let dir = dir.path();
    let net = MemNet::new();
    let auth = AuthorityLoop::start();
    let (img_a, inner_a) = image(dir, "a");
    let (img_b, inner_b) = image(dir, "b");
    let (a, ha, seen_a) = counting_replica(&net, inner_a, N1, N2, dir.join("a.ha-meta"));
    let (b, hb, seen_b) = counting_replica(&net, inner_b, N2, N1, dir.join("b.ha-meta"));
    assert!(a.cluster_task_management() && b.cluster_task_management());
    auth.add(N1, ha);
    auth.add(N2, hb);
    auth.wait_serving(&[N1, N2], Duration::from_secs(60));

    let (mut ca, mut cb) = (Client::new(&*a), Client::new(&*b));
    let t0 = Instant::now();
    ca.task_mgmt(TaskMgmt::LunReset).unwrap();
    eprintln!("LUN RESET through A: {:?}", t0.elapsed());
    // Applied on B before A's completion; A applies its own (the caller does).
    assert_eq!(*seen_b.lock(), vec![TaskMgmt::LunReset]);
    assert!(seen_a.lock().is_empty());
    cb.task_mgmt(TaskMgmt::ClearTaskSet).unwrap();
    assert_eq!(*seen_a.lock(), vec![TaskMgmt::ClearTaskSet]);

    // Resets through A while writes run through B: none is lost, both copies agree.
    let writer = {
        let b = Arc::clone(&b);
        std::thread::spawn(move || {
            let mut cb = Client::new(&*b);
            let mut good = 0;
            for i in 0..200u64 {
                let data = pattern(1000 + i, 8192);
                match cb.write((i % 64) * 8192, &data) {
                    Ok(()) => good += 1,
                    Err(BdevError::NotReady) => {}
                    Err(e) => panic!("write {i}: {e}"),
                }
            }
            good
        })
    };
    for _ in 0..20 {
        ca.task_mgmt(TaskMgmt::LunReset).unwrap();
    }
    let good = writer.join().unwrap();
    eprintln!("writes through B during 20 resets through A: {good} of 200 GOOD");
    assert_eq!(good, 200, "resets do not fail writes on a healthy pair");
    assert_eq!(seen_b.lock().len(), 21);
    flush_and_compare(&a, &b, &img_a, &img_b);

    // B stops: a reset through B is refused, one through A completes once B is out.
    auth.remove(N2);
    b.stop();
    assert!(matches!(
        cb.task_mgmt(TaskMgmt::LunReset),
        Err(BdevError::NotReady)
    ));
    let t0 = Instant::now();
    ca.task_mgmt(TaskMgmt::LunReset).unwrap();
    let took = t0.elapsed();
    eprintln!("LUN RESET through A with B stopped: {took:?}");
    assert_eq!(
        seen_b.lock().len(),
        21,
        "B applied nothing after it stopped"
    );
    auth.remove(N1);
}

/// One node's LU in the reservation test: the state `on_pr_apply` delivered, and how many.
#[derive(Default)]
struct LuPr {
    version: tandem_bdev::PrVersionId,
    state: Vec<u8>,
    applied: u64,
}

fn pr_replica(
    net: &MemNet,
    inner: Arc<dyn Bdev>,
    me: NodeId,
    peer: NodeId,
    meta: PathBuf,
    lu: &Arc<Mutex<LuPr>>,
) -> (Arc<ReplicatedBdev>, ReplicaHandle) {
    let mut opts = ReplicaOptions::new(me, Some(meta));
    let sink = Arc::clone(lu);
    opts.pr_state = lu.lock().state.clone();
    opts.on_pr_apply = Some(Box::new(move |a| {
        let mut lu = sink.lock();
        lu.version = a.version;
        lu.state = a.state;
        lu.applied += 1;
    }));
    let transport = Box::new(net.transport(me, peer).unwrap());
    ReplicatedBdev::start(
        inner,
        opts,
        vec![Partner {
            name: format!("node{}", peer.0),
            node_id: peer,
            transport,
        }],
    )
    .unwrap()
}

impl Client {
    /// A reservation change as an LU makes it: computed from the state its node holds,
    /// recomputed while another change comes first (at most `tries` times).
    fn pr_change(
        &mut self,
        lu: &Mutex<LuPr>,
        next: impl Fn(&[u8]) -> Vec<u8>,
        tries: usize,
    ) -> Result<usize, BdevError> {
        for attempt in 0..tries {
            let (base, state) = {
                let lu = lu.lock();
                (lu.version, next(&lu.state))
            };
            let mut c = self.batch(
                vec![BdevOp::ReservationChange {
                    base,
                    state,
                    notice: Vec::new(),
                }],
                Duration::from_secs(30),
            );
            match c.pop().unwrap().result {
                Ok(()) => return Ok(attempt),
                Err(BdevError::Miscompare { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(BdevError::Other("too many recomputations".into()))
    }
}

/// Persistent reservation changes through either node are ordered by the sequencer and
/// applied on both before they complete; a change computed from a state that is no longer
/// current is refused (the LU recomputes); concurrent changes through both nodes all land
/// exactly once; a restarted node gets the current state before it serves.
#[test]
fn reservation_changes_are_ordered_and_applied_on_both_nodes() {
    let dir = scratch();
    let dir = dir.path();
    let net = MemNet::new();
    let auth = AuthorityLoop::start();
    let (_img_a, inner_a) = image(dir, "a");
    let (_img_b, inner_b) = image(dir, "b");
    let (lu_a, lu_b) = (
        Arc::new(Mutex::new(LuPr::default())),
        Arc::new(Mutex::new(LuPr::default())),
    );
    let (a, ha) = pr_replica(&net, inner_a, N1, N2, dir.join("a.ha-meta"), &lu_a);
    let (b, hb) = pr_replica(&net, inner_b.clone(), N2, N1, dir.join("b.ha-meta"), &lu_b);
    assert!(a.cluster_reservations() && b.cluster_reservations());
    auth.add(N1, ha);
    auth.add(N2, hb);
    auth.wait_serving(&[N1, N2], Duration::from_secs(60));
    let (mut ca, mut cb) = (Client::new(&*a), Client::new(&*b));

    // Through A: applied on B before it completes.
    let t0 = Instant::now();
    ca.pr_change(&lu_a, |_| b"held by A".to_vec(), 1).unwrap();
    eprintln!("reservation change through A: {:?}", t0.elapsed());
    assert_eq!(lu_b.lock().state, b"held by A");
    assert_eq!(lu_a.lock().state, b"held by A");
    let v1 = lu_a.lock().version;
    assert_eq!(lu_b.lock().version, v1);

    // Through B from a stale base: refused, nothing applied; recomputed: applied on A.
    let stale = tandem_bdev::PrVersionId {
        epoch: v1.epoch,
        n: v1.n.wrapping_sub(1),
    };
    let mut c = cb.batch(
        vec![BdevOp::ReservationChange {
            base: stale,
            state: b"lost".to_vec(),
            notice: Vec::new(),
        }],
        Duration::from_secs(30),
    );
    assert!(matches!(
        c.pop().unwrap().result,
        Err(BdevError::Miscompare { .. })
    ));
    assert_eq!(lu_a.lock().state, b"held by A");
    cb.pr_change(&lu_b, |_| b"released by B".to_vec(), 1)
        .unwrap();
    assert_eq!(lu_a.lock().state, b"released by B");

    // Concurrent changes through both nodes: each appends its mark to the state it was
    // computed from; every one lands exactly once, in one order both nodes hold.
    let run = |dev: Arc<ReplicatedBdev>, lu: Arc<Mutex<LuPr>>, mark: u8| {
        std::thread::spawn(move || {
            let mut c = Client::new(&*dev);
            let mut recomputed = 0;
            for _ in 0..50 {
                recomputed += c
                    .pr_change(
                        &lu,
                        |s| {
                            let mut s = s.to_vec();
                            s.push(mark);
                            s
                        },
                        1000,
                    )
                    .unwrap();
            }
            recomputed
        })
    };
    let base_len = b"released by B".len();
    let t0 = Instant::now();
    let ta = run(Arc::clone(&a), Arc::clone(&lu_a), b'a');
    let tb = run(Arc::clone(&b), Arc::clone(&lu_b), b'b');
    let (ra, rb) = (ta.join().unwrap(), tb.join().unwrap());
    eprintln!(
        "100 concurrent reservation changes through A and B: {:?}, recomputed {ra} + {rb} times",
        t0.elapsed()
    );
    let (sa, sb) = (lu_a.lock().state.clone(), lu_b.lock().state.clone());
    assert_eq!(sa, sb, "both nodes hold the same state");
    assert_eq!(lu_a.lock().version, lu_b.lock().version);
    let marks = &sa[base_len..];
    assert_eq!(marks.iter().filter(|&&m| m == b'a').count(), 50);
    assert_eq!(marks.iter().filter(|&&m| m == b'b').count(), 50);

    // B stops; a change through A completes without it; B restarts and holds the current
    // state before it serves.
    auth.remove(N2);
    b.stop();
    drop(cb);
    let t0 = Instant::now();
    // (If B was the sequencer, A takes over and restamps the state: the change is then
    // recomputed once.)
    let recomputed = ca
        .pr_change(&lu_a, |_| b"while B was away".to_vec(), 5)
        .unwrap();
    eprintln!(
        "reservation change through A with B stopped: {:?} (recomputed {recomputed} times)",
        t0.elapsed()
    );
    let before = lu_b.lock().applied;
    let (b2, hb2) = pr_replica(&net, inner_b, N2, N1, dir.join("b.ha-meta"), &lu_b);
    auth.add(N2, hb2);
    auth.wait_serving(&[N1, N2], Duration::from_secs(60));
    assert!(lu_b.lock().applied > before);
    assert_eq!(lu_b.lock().state, b"while B was away");
    assert_eq!(lu_b.lock().version, lu_a.lock().version);
    // And a change through the restarted node reaches A.
    Client::new(&*b2)
        .pr_change(&lu_b, |_| b"from B again".to_vec(), 5)
        .unwrap();
    assert_eq!(lu_a.lock().state, b"from B again");
    auth.remove(N1);
    auth.remove(N2);
}
