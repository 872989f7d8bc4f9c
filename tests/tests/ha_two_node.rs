//! Two real `tandem-dataplane` processes serve one replicated device: node A on 127.0.0.1,
//! node B on 127.0.0.2, one sync link between them, image files on a real disk. The test
//! hosts the failover authority and speaks the control-socket IPC (`HaExchange`) to both
//! nodes, as `tandem-control` will. Data written through A is read back through B; B is
//! killed with SIGKILL while A keeps serving; B restarts and is resynchronized; the two
//! images are compared byte for byte.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tandem_config::image_id::{self, ImageRecord};
use tandem_config::ipc::{Body, Envelope, HaLease, HaReport, HaUpdate, Request, Response};
use tandem_ha::authority::Authority;
use tandem_ha::{EpochConfig, MemberState, NodeId, Time};
use tandem_tests::e2e::blocks::{pattern, read16, write16};
use tandem_tests::e2e::procs::{bin, free_port, scratch_dir, wait_for_port, Proc};
use tandem_tests::e2e::raw::command_retrying;
use tandem_tests::e2e::raw::RawConn;

const SIZE: u64 = 64 << 20;
const SEED: &str = "e2e-ha-disk";
const LEASE_NS: u64 = 2_000_000_000;
const MARGIN_NS: u64 = 500_000_000;
const INITIATOR: &str = "iqn.2026-11.io.tandem.test:ha";
const N1: NodeId = NodeId(1);
const N2: NodeId = NodeId(2);

struct Node {
    id: NodeId,
    name: String,
    dir: PathBuf,
    config: PathBuf,
    socket: PathBuf,
    portal: SocketAddr,
    image: PathBuf,
    proc: Option<Proc>,
}

impl Node {
    fn iqn(&self) -> String {
        format!("iqn.2026-11.io.tandem:{}-ha", self.name)
    }

    fn start(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let mut cmd = Command::new(bin("tandem-dataplane"));
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--control-socket")
            .arg(&self.socket);
        if std::env::var_os("TANDEM_LOG").is_none() {
            cmd.env("TANDEM_LOG", "warn");
        }
        let mut p = Proc::spawn(cmd, &format!("tandem-dataplane {}", self.name));
        if !wait_for_port(self.portal, Duration::from_secs(20)) {
            let _ = p.child.kill();
            panic!("{} did not start listening on {}", self.name, self.portal);
        }
        self.proc = Some(p);
    }

    fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.child.kill().unwrap(); // SIGKILL
            p.child.wait().unwrap();
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn node(
    root: &Path,
    id: NodeId,
    ip: &str,
    partner_ip: &str,
    port: u16,
    sync: u16,
    secret: &Path,
    replication_extra: &str,
) -> Node {
    let name = format!("node{}", id.0);
    let dir = root.join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let dir = dir.canonicalize().unwrap();
    let image = dir.join("ha.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(SIZE)
        .unwrap();
    image_id::write(&image, &ImageRecord::new(SEED, 512, SIZE)).unwrap();
    let portal: SocketAddr = format!("{ip}:{port}").parse().unwrap();
    let peer = if id == N1 { N2 } else { N1 };
    let toml = format!(
        r#"[node]
name = "{name}"
portals = ["{portal}"]
data_dir = "{dir}"

[[device]]
name = "ha"
file = "{image}"
size = "{SIZE}"
identity_seed = "{SEED}"

[device.replication]
node_id = {me}
secret_file = "{secret}"
{replication_extra}

[[device.replication.partner]]
name = "node{peer}"
node_id = {peer}
sync_links = ["{ip}:{sync}={partner_ip}:{sync}"]

[[target]]
alias = "ha"
luns = ["ha"]
"#,
        dir = dir.display(),
        image = image.display(),
        me = id.0,
        peer = peer.0,
        secret = secret.display(),
    );
    let config = dir.join("node.toml");
    std::fs::write(&config, toml).unwrap();
    Node {
        id,
        name,
        socket: dir.join("dp.sock"),
        dir,
        config,
        portal,
        image,
        proc: None,
    }
}

/// The failover authority, polling both nodes' control sockets every 20 ms.
struct AuthorityLoop {
    reports: Arc<Mutex<HashMap<NodeId, (Instant, HaReport)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn exchange(
    conn: &mut Option<BufReader<UnixStream>>,
    socket: &Path,
    id: u64,
    updates: Vec<HaUpdate>,
) -> Option<HaReport> {
    if conn.is_none() {
        let s = UnixStream::connect(socket).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        *conn = Some(BufReader::new(s));
    }
    let r = conn.as_mut()?;
    let req = Envelope::request(
        id,
        Request::HaExchange {
            device: "ha".into(),
            updates,
        },
    );
    let ok = r.get_mut().write_all(req.to_line().as_bytes()).is_ok();
    let mut line = String::new();
    if !ok || r.read_line(&mut line).unwrap_or(0) == 0 {
        *conn = None;
        return None;
    }
    match Envelope::from_line(&line).ok()?.body {
        Body::Response(Response::Ha(report)) => Some(report),
        other => panic!("HaExchange answered {other:?}"),
    }
}

impl AuthorityLoop {
    fn start(sockets: Vec<(NodeId, PathBuf)>) -> AuthorityLoop {
        let reports: Arc<Mutex<HashMap<NodeId, (Instant, HaReport)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (reports.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut auth =
                Authority::new(EpochConfig::initial(&[N1, N2]), LEASE_NS, MARGIN_NS, None);
            let start = Instant::now();
            let mut pending: HashMap<NodeId, Vec<HaUpdate>> = HashMap::new();
            let mut conns: HashMap<NodeId, Option<BufReader<UnixStream>>> = HashMap::new();
            let mut seq = 0;
            while !s.load(Ordering::Relaxed) {
                for (id, sock) in &sockets {
                    seq += 1;
                    let conn = conns.entry(*id).or_default();
                    let updates = pending.remove(id).unwrap_or_default();
                    let Some(report) = exchange(conn, sock, seq, updates) else {
                        continue;
                    };
                    for req in report.requests.clone() {
                        let now = Time(start.elapsed().as_nanos() as u64);
                        if let Some(u) = auth.on_message(now, *id, req, 0) {
                            let lease = u.lease_until.map(|_| HaLease {
                                epoch: u.config.epoch,
                                requested_at_ns: report.now_ns,
                                duration_ns: LEASE_NS,
                            });
                            pending.insert(
                                *id,
                                vec![HaUpdate {
                                    config: u.config,
                                    lease,
                                }],
                            );
                        }
                    }
                    r.lock().unwrap().insert(*id, (Instant::now(), report));
                }
                auth.run_due(Time(start.elapsed().as_nanos() as u64));
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        AuthorityLoop {
            reports,
            stop,
            thread: Some(thread),
        }
    }

    fn report(&self, id: NodeId) -> Option<HaReport> {
        self.reports.lock().unwrap().get(&id).map(|r| r.1.clone())
    }

    /// Waits for a report of every node, newer than `since`, with both serving and both
    /// synchronized.
    fn wait_both_serving(&self, since: Instant, timeout: Duration) -> Duration {
        let t0 = Instant::now();
        loop {
            let ok = [N1, N2].iter().all(|id| {
                self.reports.lock().unwrap().get(id).is_some_and(|(at, r)| {
                    *at > since
                        && r.status.serving
                        && r.status.config.as_ref().is_some_and(|c| {
                            c.state_of(N1) == MemberState::Synchronized
                                && c.state_of(N2) == MemberState::Synchronized
                        })
                })
            });
            if ok {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < timeout,
                "not both serving after {timeout:?}: {:#?}",
                [N1, N2].map(|id| self.report(id))
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

fn login(n: &Node) -> RawConn {
    login_as(n, INITIATOR)
}

/// A session of its own (another initiator name: the same name and ISID would reinstate,
/// i.e. close, the first session).
fn login_as(n: &Node, initiator: &str) -> RawConn {
    let mut c = RawConn::connect(n.portal);
    c.stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let keys = [
        ("MaxRecvDataSegmentLength", "262144"),
        ("FirstBurstLength", "65536"),
        ("MaxBurstLength", "262144"),
        ("ImmediateData", "Yes"),
        ("InitialR2T", "No"),
    ];
    let (r, _) = c.login(initiator, Some(&n.iqn()), &keys);
    assert_eq!(r.status_class, 0, "login to {}", n.name);
    let ua = c.command(&[0u8; 6], 0, &[], 0, 0);
    assert_eq!(ua.status, 2, "power-on unit attention");
    c
}

fn write_blocks(c: &mut RawConn, lba: u64, data: &[u8]) {
    let (r, _) = command_retrying(
        c,
        &write16(lba, (data.len() / 512) as u32),
        0,
        data,
        Duration::from_secs(10),
    );
    assert_eq!(r.status, 0, "write at {lba}: sense {:02x?}", r.sense);
}

fn read_blocks(c: &mut RawConn, lba: u64, len: usize) -> Vec<u8> {
    let (r, _) = command_retrying(
        c,
        &read16(lba, (len / 512) as u32),
        len as u32,
        &[],
        Duration::from_secs(10),
    );
    assert_eq!(r.status, 0, "read at {lba}: sense {:02x?}", r.sense);
    r.data_in
}

fn sync_cache(c: &mut RawConn) {
    let (r, _) = command_retrying(
        c,
        &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        0,
        &[],
        Duration::from_secs(10),
    );
    assert_eq!(r.status, 0, "SYNCHRONIZE CACHE: sense {:02x?}", r.sense);
}

/// INQUIRY VPD 0x83 designators: (association, designator type, bytes).
fn vpd83(c: &mut RawConn) -> Vec<(u8, u8, Vec<u8>)> {
    let (r, _) = command_retrying(
        c,
        &[0x12, 1, 0x83, 1, 0, 0],
        256,
        &[],
        Duration::from_secs(10),
    );
    assert_eq!(r.status, 0, "INQUIRY VPD 0x83: sense {:02x?}", r.sense);
    let d = &r.data_in;
    let len = u16::from_be_bytes([d[2], d[3]]) as usize;
    let mut out = Vec::new();
    let mut i = 4;
    while i + 4 <= (4 + len).min(d.len()) {
        let n = d[i + 3] as usize;
        out.push((
            (d[i + 1] >> 4) & 3,
            d[i + 1] & 0x0f,
            d[i + 4..i + 4 + n].to_vec(),
        ));
        i += 4 + n;
    }
    out
}

/// REPORT TARGET PORT GROUPS: (group id, asymmetric access state, relative port ids).
fn rtpg(c: &mut RawConn) -> Vec<(u16, u8, Vec<u16>)> {
    let cdb = [0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0];
    let (r, _) = command_retrying(c, &cdb, 1024, &[], Duration::from_secs(10));
    assert_eq!(r.status, 0, "RTPG: sense {:02x?}", r.sense);
    let d = &r.data_in;
    let len = u32::from_be_bytes(d[..4].try_into().unwrap()) as usize;
    let mut out = Vec::new();
    let mut i = 4;
    while i + 8 <= 4 + len {
        let n = d[i + 7] as usize;
        let ports = (0..n)
            .map(|k| u16::from_be_bytes([d[i + 8 + 4 * k + 2], d[i + 8 + 4 * k + 3]]))
            .collect();
        out.push((u16::from_be_bytes([d[i + 2], d[i + 3]]), d[i] & 0x0f, ports));
        i += 8 + 4 * n;
    }
    out
}

/// A scratch directory (named from `prefix`) holding the cluster secret both nodes share,
/// and the secret file's path.
fn cluster_dir(prefix: &str) -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(scratch_dir())
        .unwrap();
    let secret = root.path().join("cluster.secret");
    std::fs::write(
        &secret,
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
    )
    .unwrap();
    (root, secret)
}

fn images_identical(a: &Path, b: &Path) {
    let (x, y) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    assert_eq!(x.len(), y.len());
    if let Some(i) = x.iter().zip(&y).position(|(p, q)| p != q) {
        panic!("images differ first at byte {i} (region {})", i / 65536);
    }
}

#[test]
fn two_nodes_mirror_survive_kill_and_resync() {
    let (root, secret) = cluster_dir("tandem-ha2");
    let sync = free_port();
    let mut a = node(
        root.path(),
        N1,
        "127.0.0.1",
        "127.0.0.2",
        free_port(),
        sync,
        &secret,
        "",
    );
    let mut b = node(
        root.path(),
        N2,
        "127.0.0.2",
        "127.0.0.1",
        free_port(),
        sync,
        &secret,
        "",
    );
    a.start();
    b.start();
    // Before the authority has spoken, a replica serves nothing: NOT READY, LOGICAL UNIT NOT
    // ACCESSIBLE, TARGET PORT IN UNAVAILABLE STATE (04/0C), never MEDIUM ERROR.
    {
        let mut c = login(&a);
        let r = c.command(&read16(0, 8), 4096, &[], 0, 0);
        assert_eq!(r.status, 2, "read before any configuration");
        assert_eq!((r.sense[2] & 0x0f, r.sense[12], r.sense[13]), (2, 4, 0x0c));
        let r = c.command(&write16(0, 8), 0, &[7u8; 4096], 4096, 4096);
        assert_eq!(
            (r.status, r.sense[2] & 0x0f, r.sense[12], r.sense[13]),
            (2, 2, 4, 0x0c)
        );
    }
    let auth = AuthorityLoop::start(vec![(N1, a.socket.clone()), (N2, b.socket.clone())]);
    let first = auth.wait_both_serving(Instant::now(), Duration::from_secs(60));
    eprintln!(
        "both nodes serving after {first:?} (initial full sync of {} MiB)",
        SIZE >> 20
    );

    // Written through A, read through B.
    let mut ca = login(&a);
    let mut cb = login(&b);
    let seq0 = auth.report(N1).unwrap().status.config.unwrap().sequencer;
    eprintln!("sequencer: node{}", seq0.0);
    // One ALUA port group per node (group and relative port = node id), both
    // active/optimized, seen the same through either node.
    let both = vec![(1, 0, vec![1]), (2, 0, vec![2])];
    assert_eq!(rtpg(&mut ca), both);
    assert_eq!(rtpg(&mut cb), both);
    // One logical unit to the host: identical LU designators through both nodes; each node's
    // port has its own relative port (type 4) and port group (type 5) designator.
    let (va, vb) = (vpd83(&mut ca), vpd83(&mut cb));
    let lu =
        |v: &Vec<(u8, u8, Vec<u8>)>| v.iter().filter(|d| d.0 == 0).cloned().collect::<Vec<_>>();
    assert!(!lu(&va).is_empty());
    assert_eq!(lu(&va), lu(&vb));
    let port = |v: &Vec<(u8, u8, Vec<u8>)>, t: u8| {
        v.iter()
            .find(|d| d.0 == 1 && d.1 == t)
            .map(|d| d.2[2..4].to_vec())
    };
    assert_eq!(
        (port(&va, 4), port(&va, 5)),
        (Some(vec![0, 1]), Some(vec![0, 1]))
    );
    assert_eq!(
        (port(&vb, 4), port(&vb, 5)),
        (Some(vec![0, 2]), Some(vec![0, 2]))
    );
    let mut model: Vec<(u64, Vec<u8>)> = Vec::new();
    let t0 = Instant::now();
    for i in 0..200u32 {
        let lba = u64::from(i) * 640 % (SIZE / 512 - 128);
        let data = pattern(4096 * (1 + (i as usize % 16)), i + 1);
        write_blocks(if i % 2 == 0 { &mut ca } else { &mut cb }, lba, &data);
        model.retain(|(l, d)| {
            lba + (data.len() as u64 / 512) <= *l || *l + (d.len() as u64 / 512) <= lba
        });
        model.push((lba, data));
    }
    eprintln!(
        "200 writes through both nodes (4-64 KiB, QD1): {:?}",
        t0.elapsed()
    );
    for (lba, data) in &model {
        assert_eq!(
            &read_blocks(&mut cb, *lba, data.len()),
            data,
            "read through B at {lba}"
        );
        assert_eq!(
            &read_blocks(&mut ca, *lba, data.len()),
            data,
            "read through A at {lba}"
        );
    }
    // UNMAP through B (zero writes through the engine, in chunks): zeroes through A too.
    {
        let (lba, blocks) = (1000u64, 4096u32); // 2 MiB, not region aligned
        let mut params = vec![0u8; 24];
        params[0..2].copy_from_slice(&22u16.to_be_bytes());
        params[2..4].copy_from_slice(&16u16.to_be_bytes());
        params[8..16].copy_from_slice(&lba.to_be_bytes());
        params[16..20].copy_from_slice(&blocks.to_be_bytes());
        let cdb = [0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0];
        let (r, _) = command_retrying(&mut cb, &cdb, 0, &params, Duration::from_secs(10));
        assert_eq!(r.status, 0, "UNMAP: sense {:02x?}", r.sense);
        let end = lba + u64::from(blocks);
        model.retain(|(l, d)| end <= *l || *l + (d.len() as u64 / 512) <= lba);
        model.push((lba, vec![0u8; blocks as usize * 512]));
        assert!(read_blocks(&mut ca, lba, 65536).iter().all(|b| *b == 0));
    }
    // 4 KiB QD1 write latency through each node (the sequencer writes and mirrors; the
    // other forwards to it).
    for (name, c) in [("node1", &mut ca), ("node2", &mut cb)] {
        let t0 = Instant::now();
        for i in 0..300u32 {
            let lba = 100_000 + u64::from(i) * 8;
            let data = pattern(4096, 5000 + i);
            write_blocks(c, lba, &data);
            model.retain(|(l, d)| lba + 8 <= *l || *l + (d.len() as u64 / 512) <= lba);
            model.push((lba, data));
        }
        eprintln!(
            "4 KiB QD1 writes through {name}: {:.0} us each",
            t0.elapsed().as_secs_f64() * 1e6 / 300.0
        );
    }
    sync_cache(&mut ca);
    sync_cache(&mut cb);
    images_identical(&a.image, &b.image);
    eprintln!("images identical after the first phase");

    drop(ca);
    drop(cb);

    // Round 1: kill -9 of the node that does not sequence (fast resync of the regions
    // written meanwhile); round 2: kill -9 of the sequencer (the survivor takes over; the
    // former sequencer is fully resynchronized, as its disk may hold writes no partner saw).
    let seq = auth.report(N1).unwrap().status.config.unwrap().sequencer;
    let mut nodes = [a, b];
    let seq_idx = if seq == N1 { 0 } else { 1 };
    for (round, victim) in [(1u32, 1 - seq_idx), (2, seq_idx)] {
        let survivor = 1 - victim;
        let (vname, sname) = (nodes[victim].name.clone(), nodes[survivor].name.clone());
        eprintln!(
            "round {round}: kill -9 of {vname} (sequencer {})",
            if victim == seq_idx { &vname } else { &sname }
        );
        let mut cs = login(&nodes[survivor]);
        // Load through the survivor the whole time: kill, failover, restart and resync.
        let stop = Arc::new(AtomicBool::new(false));
        let loader = {
            let stop = stop.clone();
            let mut c = login_as(&nodes[survivor], "iqn.2026-11.io.tandem.test:ha-load");
            std::thread::spawn(move || {
                let mut written = Vec::new();
                let mut worst = Duration::ZERO;
                let mut k = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let lba = 120_000 + u64::from(k % 512) * 8;
                    let data = pattern(4096, 100_000 * round + k);
                    let t = Instant::now();
                    write_blocks(&mut c, lba, &data);
                    worst = worst.max(t.elapsed());
                    written.push((lba, data));
                    k += 1;
                }
                (written, worst)
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        nodes[victim].kill9();
        let t0 = Instant::now();
        let data = pattern(65536, 1000 + round);
        let (r, not_ready) = command_retrying(
            &mut cs,
            &write16(4096, 128),
            0,
            &data,
            Duration::from_secs(15),
        );
        let pause = t0.elapsed();
        assert_eq!(
            r.status, 0,
            "write through {sname} after {vname} died: sense {:02x?}",
            r.sense
        );
        eprintln!("  first write through {sname} after kill -9 of {vname}: {pause:?} ({not_ready} NOT READY answers)");
        assert!(pause < Duration::from_secs(8), "{pause:?}");
        // The survivor reports the dead node's group unavailable.
        let t1 = Instant::now();
        let (vid, sid16) = (
            u16::from(nodes[victim].id.0),
            u16::from(nodes[survivor].id.0),
        );
        loop {
            let g = rtpg(&mut cs);
            if g.iter().any(|x| x.0 == vid && x.1 == 3) {
                assert!(g.iter().any(|x| x.0 == sid16 && x.1 == 0), "{g:?}");
                break;
            }
            assert!(t1.elapsed() < Duration::from_secs(5), "{g:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        model.retain(|(l, d)| 4096 + 128 <= *l || *l + (d.len() as u64 / 512) <= 4096);
        model.push((4096, data));
        for i in 0..100u32 {
            let lba = 8192 + u64::from(i) * 256 + u64::from(round) * 64;
            let data = pattern(8192, 2000 * round + i);
            write_blocks(&mut cs, lba, &data);
            model.retain(|(l, d)| lba + 16 <= *l || *l + (d.len() as u64 / 512) <= lba);
            model.push((lba, data));
        }
        let sid = nodes[survivor].id;
        // The survivor's report after these writes.
        std::thread::sleep(Duration::from_millis(100));
        let rs = auth.report(sid).unwrap();
        let dirty = rs.status.partners[0].dirty_regions;
        let copied_before = rs.status.partners[0].resync_done_regions;
        eprintln!("  regions dirty for {vname} while it was down: {dirty}");

        // It restarts with its metadata and is resynchronized.
        let t0 = Instant::now();
        nodes[victim].start();
        let resync = auth.wait_both_serving(Instant::now(), Duration::from_secs(60));
        let copied =
            auth.report(sid).unwrap().status.partners[0].resync_done_regions - copied_before;
        eprintln!(
            "  {vname} serving again {:?} after its restart ({resync:?} after its portal listened); {copied} regions copied of {}",
            t0.elapsed(),
            SIZE / 65536
        );
        if round == 1 {
            assert!(
                copied >= dirty && copied < SIZE / 65536,
                "fast resync expected: {copied} regions"
            );
        }
        // The load went on throughout (every write GOOD, after retries of NOT READY / UNIT
        // ATTENTION on the same path at most, as multipath would).
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        let (written, worst) = loader.join().expect("the load through the survivor failed");
        eprintln!(
            "  load through {sname}: {} 4 KiB writes during kill, failover, restart and resync; slowest {worst:?}",
            written.len()
        );
        for (lba, data) in written {
            model.retain(|(l, d)| lba + 8 <= *l || *l + (d.len() as u64 / 512) <= lba);
            model.push((lba, data));
        }
        // A fresh session on the survivor (the old one sat idle through the resync, and the
        // raw test client does not answer the target's NOP-In pings).
        drop(cs);
        let mut cs = login(&nodes[survivor]);
        let mut cv = login(&nodes[victim]);
        assert_eq!(rtpg(&mut cv), both);
        for (lba, data) in &model {
            assert_eq!(
                &read_blocks(&mut cv, *lba, data.len()),
                data,
                "read through {vname} at {lba}"
            );
        }
        sync_cache(&mut cs);
        sync_cache(&mut cv);
        images_identical(&nodes[0].image, &nodes[1].image);
        eprintln!("  images identical after {vname}'s resync");
    }
    // Idle, both processes back off (replication threads block; reactors park): three
    // processes share two cores in CI.
    let pids: Vec<u32> = nodes
        .iter()
        .map(|n| n.proc.as_ref().unwrap().pid())
        .collect();
    let before: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    for (i, p) in pids.iter().enumerate() {
        let used = (cpu_ticks(*p) - before[i]) as f64 / 100.0 / t0.elapsed().as_secs_f64();
        eprintln!("idle CPU of {}: {:.1} %", nodes[i].name, used * 100.0);
        assert!(
            used < 0.15,
            "{} is not idle: {:.1} % of a core",
            nodes[i].name,
            used * 100.0
        );
    }
    drop(auth);
    let _ = (&nodes[0].dir, &nodes[1].dir);
}

/// User + system CPU time of a process, in clock ticks (USER_HZ = 100 on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// `journal = "disk-continuous"`: 4 KiB writes run through node 1 when both data planes are
/// killed with SIGKILL at once (the authority, in this process, keeps its state). Both
/// restart: the resync is a fast one (a few regions, not all 1024), the images are byte
/// identical, and every acknowledged write reads back (a write in flight at the kill may
/// read back either way).
///
/// Two causes made it a full sync of all 1024 regions before (docs/ha.md, "Journal
/// kinds"): the restarted sequencer marked its syncing partner's bitmap lost at its first
/// configuration (a rule for a takeover from another sequencer), and the initial full sync's
/// copies filled the joiner's activity log.
#[test]
fn disk_continuous_journal_survives_kill9_of_both_nodes() {
    let (root, secret) = cluster_dir("tandem-ha2j");
    let sync = free_port();
    let journal = "journal = \"disk-continuous\"";
    let mut a = node(
        root.path(),
        N1,
        "127.0.0.1",
        "127.0.0.2",
        free_port(),
        sync,
        &secret,
        journal,
    );
    let mut b = node(
        root.path(),
        N2,
        "127.0.0.2",
        "127.0.0.1",
        free_port(),
        sync,
        &secret,
        journal,
    );
    a.start();
    b.start();
    let auth = AuthorityLoop::start(vec![(N1, a.socket.clone()), (N2, b.socket.clone())]);
    auth.wait_both_serving(Instant::now(), Duration::from_secs(60));

    // 512 slots of 4 KiB in the first 2 MiB (32 regions: inside the activity log's 1024).
    const SLOTS: u64 = 512;
    // Acknowledged data per slot, the write in flight, writes acknowledged, and writes
    // answered otherwise (NOT READY: their outcome is unknown).
    type Model = (
        HashMap<u64, Vec<u8>>,
        Option<(u64, Vec<u8>)>,
        u64,
        Vec<(u64, Vec<u8>)>,
    );
    let model: Arc<Mutex<Model>> = Arc::new(Mutex::new((HashMap::new(), None, 0, Vec::new())));
    let writer = {
        let model = model.clone();
        let mut c = login(&a);
        std::thread::spawn(move || {
            // Ends with a panic of the raw client when the target dies: the model is shared.
            let mut n: u64 = 0;
            loop {
                n += 1;
                let slot = (n.wrapping_mul(2_654_435_761)) % SLOTS;
                let data = pattern(4096, n as u32);
                model.lock().unwrap().1 = Some((slot, data.clone()));
                let r = c.command(&write16(slot * 8, 8), 0, &data, 4096, 4096);
                let mut m = model.lock().unwrap();
                m.1 = None;
                if r.status == 0 {
                    m.0.insert(slot, data);
                    m.2 += 1;
                } else {
                    m.3.push((slot, data));
                }
            }
        })
    };
    let t0 = Instant::now();
    while model.lock().unwrap().2 < 300 {
        assert!(t0.elapsed() < Duration::from_secs(60), "writes too slow");
        std::thread::sleep(Duration::from_millis(10));
    }
    let journal_files = |n: &Node| {
        (0..2)
            .filter(|i| n.dir.join(format!("ha.ha-journal.{i}")).exists())
            .count()
    };
    assert!(
        journal_files(&a) > 0 && journal_files(&b) > 0,
        "no journal files written"
    );
    // Power loss of both, mid-write.
    a.kill9();
    b.kill9();
    let _ = writer.join();
    let (acked, pending, count, unknown) = {
        let m = model.lock().unwrap();
        (m.0.clone(), m.1.clone(), m.2, m.3.clone())
    };
    eprintln!(
        "{count} writes acknowledged before kill -9 of both nodes (pending: {})",
        pending.is_some()
    );

    let restarted = Instant::now();
    a.start();
    b.start();
    let took = auth.wait_both_serving(restarted, Duration::from_secs(60));
    // The sequencer reports what it copied to its partner.
    let seq = auth.report(N1).unwrap().status.config.unwrap().sequencer;
    let other = if seq == N1 { N2 } else { N1 };
    let status = auth.report(seq).unwrap().status;
    let p = status
        .partners
        .iter()
        .find(|p| p.node_id == other.0)
        .expect("partner status");
    let regions = SIZE / 65536;
    eprintln!(
        "both serving {took:?} after restart; node{} copied {} of {regions} regions to node{}",
        seq.0, p.resync_done_regions, other.0
    );
    // A fast sync: the writes touched only the first 32 regions, so the union of both
    // activity logs is those 32 (the initial full sync's copies are not in them).
    assert!(
        p.resync_done_regions > 0 && p.resync_done_regions <= 32,
        "not a fast sync: {} of {regions} regions copied",
        p.resync_done_regions
    );
    let mut c = login(&a);
    for slot in 0..SLOTS {
        let got = read_blocks(&mut c, slot * 8, 4096);
        let maybe = |g: &Vec<u8>| {
            pending
                .iter()
                .chain(&unknown)
                .any(|(s, d)| *s == slot && d == g)
        };
        match acked.get(&slot) {
            Some(d) => assert!(
                &got == d || maybe(&got),
                "acknowledged write at slot {slot} lost"
            ),
            None => assert!(
                got.iter().all(|&x| x == 0) || maybe(&got),
                "slot {slot}: data never acknowledged"
            ),
        }
    }
    sync_cache(&mut c);
    let mut cb = login(&b);
    sync_cache(&mut cb);
    images_identical(&a.image, &b.image);
    eprintln!("images identical; every acknowledged write read back");
    drop(auth);
}
