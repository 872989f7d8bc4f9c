//! The whole product through its real management path: two `tandem-control` processes (each
//! supervising its own `tandem-dataplane`) on 127.0.0.1 and 127.0.0.2, configured only with
//! the `tandem` CLI — device create, `server add` both ways, `replica add` — and the failover
//! authority hosted by the control services themselves (no test-hosted authority).
//!
//! 1. Data written through node A before replication is copied to B (sync-from-existing).
//! 2. Data written through B reads back through A.
//! 3. kill -9 of B's data plane while a writer keeps writing through A; B's supervisor
//!    restarts it; B is resynchronized; every acknowledged write reads back through both
//!    nodes; the images are byte-identical.
//! 4. kill -9 of the whole node A (control service and data plane) while a writer keeps
//!    writing through B: the writes resume within a bound; A's control service is restarted
//!    on the same data dir; both synchronized again; images byte-identical.
//!
//! The whole disk is read back through each node and compared with a model of every
//! acknowledged write; the image files are compared with the model too.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_tests::e2e::blocks::{pattern, read16, write16};
use tandem_tests::e2e::procs::{bin, free_port, scratch_dir, wait_for_port};
use tandem_tests::e2e::raw::command_retrying;
use tandem_tests::e2e::raw::RawConn;

const SIZE: usize = 64 << 20;
const DEVICE: &str = "disk1";
/// Bound on the pause of writes through B after node A (sequencer and authority host) dies.
const MAX_PAUSE: Duration = Duration::from_secs(10);
const HA_FLAGS: [&str; 8] = [
    "--ha-lease-ms",
    "1000",
    "--ha-margin-ms",
    "300",
    "--heartbeat-interval-ms",
    "100",
    "--heartbeat-timeout-ms",
    "1000",
];

/// The release binaries when they are built (`$TANDEM_BIN_DIR` first), else whatever
/// `bin()` finds.
fn binary(name: &str) -> PathBuf {
    if std::env::var_os("TANDEM_BIN_DIR").is_none() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .join("target/release")
            .join(name);
        if p.exists() {
            return p;
        }
    }
    bin(name)
}

struct Node {
    name: String,
    ip: String,
    dir: PathBuf,
    log: PathBuf,
    api: String,
    portal: SocketAddr,
    control: Option<Child>,
}

impl Node {
    fn new(root: &Path, name: &str, ip: &str, api_port: u16) -> Node {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        Node {
            name: name.into(),
            ip: ip.into(),
            log: root.join(format!("{name}.log")),
            dir,
            api: format!("{ip}:{api_port}"),
            portal: format!("{ip}:{}", free_port()).parse().unwrap(),
            control: None,
        }
    }

    fn iqn(&self) -> String {
        format!("iqn.2026-11.io.tandem:{}-{DEVICE}", self.name)
    }

    fn image(&self) -> PathBuf {
        self.dir.join(format!("{DEVICE}.img"))
    }

    /// Starts (or restarts, same data dir) the control service and waits for its data plane.
    fn start(&mut self) {
        assert!(self.control.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(binary("tandem-control"));
        cmd.arg("--data-dir")
            .arg(&self.dir)
            .args(["--api", &self.api])
            .args(["--portal", &self.portal.to_string()])
            .args(["--node-name", &self.name])
            .arg("--dataplane-bin")
            .arg(binary("tandem-dataplane"))
            .args(HA_FLAGS)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.control = Some(cmd.spawn().expect("start tandem-control"));
        let t0 = Instant::now();
        wait_until(
            &format!("{}: API and data plane running", self.name),
            Duration::from_secs(30),
            || {
                self.status()
                    .is_some_and(|s| s["dataplane"]["state"] == "running")
            },
        );
        assert!(
            wait_for_port(self.portal, Duration::from_secs(20)),
            "{}: portal {} not listening",
            self.name,
            self.portal
        );
        eprintln!(
            "{}: control service and data plane up in {:?}",
            self.name,
            t0.elapsed()
        );
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(binary("tandem"))
            .args(["--api", &format!("http://{}", self.api), "--token-file"])
            .arg(self.dir.join("token"))
            .args(args)
            .output()
            .expect("run tandem")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        eprintln!("[{}] $ tandem {}\n{stdout}", self.name, args.join(" "));
        assert!(
            out.status.success(),
            "[{}] tandem {args:?} failed ({:?}): {}",
            self.name,
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    fn json(&self, args: &[&str]) -> Option<serde_json::Value> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.cli(&all);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    fn status(&self) -> Option<serde_json::Value> {
        self.json(&["status"])
    }

    fn replicas(&self) -> Option<serde_json::Value> {
        self.json(&["replica", "list", DEVICE])
    }

    /// This node serves and sees every replica synchronized with every link up.
    fn synchronized(&self) -> bool {
        let Some(l) = self.replicas() else {
            return false;
        };
        let Some(rs) = l["replicas"].as_array() else {
            return false;
        };
        rs.len() == 2
            && rs.iter().all(|r| {
                r["state"] == "synchronized"
                    && (r["local"] == false || r["serving"] == true)
                    && r["links"]
                        .as_array()
                        .is_some_and(|ls| ls.iter().all(|x| x["state"] == "up"))
            })
    }

    /// State of `other` as this node reports it.
    fn state_of(&self, other: &str) -> Option<String> {
        let l = self.replicas()?;
        l["replicas"]
            .as_array()?
            .iter()
            .find(|r| r["node"] == other)
            .and_then(|r| r["state"].as_str().map(String::from))
    }

    fn dataplane_pid(&self) -> i32 {
        std::fs::read_to_string(self.dir.join("dataplane.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.control.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // The data plane this node's control service started, if it outlived it.
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("dataplane.pid")) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                if alive(pid) && cmdline(pid).contains(self.dir.to_str().unwrap()) {
                    kill9(pid);
                }
            }
        }
    }
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let rest = &s[s.rfind(')').unwrap() + 2..];
            !rest.starts_with('Z') && !rest.starts_with('X')
        }
        Err(_) => false,
    }
}

fn kill9(pid: i32) {
    let st = Command::new("kill")
        .arg("-KILL")
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(st.success(), "kill -9 {pid}");
}

/// Prints the tail of both nodes' logs when the test fails.
struct LogsOnFailure(Vec<PathBuf>);

impl Drop for LogsOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for p in &self.0 {
                let text = std::fs::read_to_string(p).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!("===== last 60 lines of {} =====", p.display());
                for l in &lines[lines.len().saturating_sub(60)..] {
                    eprintln!("{l}");
                }
            }
        }
    }
}

/// Polls `f` every 100 ms; panics with `what` after `timeout`. Returns the time it took.
fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    loop {
        if f() {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < timeout,
            "timed out after {timeout:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---- iSCSI client (the raw test initiator; retries like a multipath host on one path) ----

/// A session of its own per initiator name.
fn login(n: &Node, initiator: &str) -> RawConn {
    let mut c = RawConn::connect(n.portal);
    c.stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let keys = [
        ("MaxRecvDataSegmentLength", "262144"),
        ("FirstBurstLength", "65536"),
        ("MaxBurstLength", "262144"),
        ("ImmediateData", "Yes"),
        ("InitialR2T", "No"),
    ];
    let (r, _) = c.login(initiator, Some(&n.iqn()), &keys);
    assert_eq!(r.status_class, 0, "login to {} ({})", n.name, n.iqn());
    // TEST UNIT READY: consumes the power-on unit attention.
    let _ = c.command(&[0u8; 6], 0, &[], 0, 0);
    c
}

fn write_blocks(c: &mut RawConn, lba: u64, data: &[u8]) {
    let (r, _) = command_retrying(
        c,
        &write16(lba, (data.len() / 512) as u32),
        0,
        data,
        Duration::from_secs(15),
    );
    assert_eq!(r.status, 0, "write at {lba}: sense {:02x?}", r.sense);
}

fn sync_cache(c: &mut RawConn) {
    let (r, _) = command_retrying(
        c,
        &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        0,
        &[],
        Duration::from_secs(15),
    );
    assert_eq!(r.status, 0, "SYNCHRONIZE CACHE: sense {:02x?}", r.sense);
}

/// The model of the disk: every acknowledged write applied in order.
struct Model(Vec<u8>);

impl Model {
    fn write(&mut self, lba: u64, data: &[u8]) {
        let o = lba as usize * 512;
        self.0[o..o + data.len()].copy_from_slice(data);
    }

    /// Writes through `c` and records the write.
    fn write_through(&mut self, c: &mut RawConn, lba: u64, data: &[u8]) {
        write_blocks(c, lba, data);
        self.write(lba, data);
    }

    /// Reads the whole disk through `n` (a fresh session) and compares it with the model;
    /// flushes that node's cache.
    fn verify_through(&self, n: &Node, what: &str) {
        let t0 = Instant::now();
        let mut c = login(n, "iqn.2026-11.io.tandem.test:cluster-verify");
        const CHUNK: usize = 256 << 10;
        for off in (0..SIZE).step_by(CHUNK) {
            let lba = (off / 512) as u64;
            let (r, _) = command_retrying(
                &mut c,
                &read16(lba, (CHUNK / 512) as u32),
                CHUNK as u32,
                &[],
                Duration::from_secs(15),
            );
            assert_eq!(
                r.status, 0,
                "{what}: read through {} at LBA {lba}: sense {:02x?}",
                n.name, r.sense
            );
            if r.data_in != self.0[off..off + CHUNK] {
                let i = r
                    .data_in
                    .iter()
                    .zip(&self.0[off..])
                    .position(|(x, y)| x != y)
                    .unwrap();
                panic!(
                    "{what}: read through {} differs from the acknowledged writes at byte {} (LBA {})",
                    n.name,
                    off + i,
                    (off + i) / 512
                );
            }
        }
        sync_cache(&mut c);
        eprintln!(
            "{what}: whole disk read through {} matches the acknowledged writes ({:?})",
            n.name,
            t0.elapsed()
        );
    }

    /// Both image files equal the model (and so each other). Only when no I/O runs.
    fn images_identical(&self, a: &Node, b: &Node, what: &str) {
        let ia = std::fs::read(a.image()).unwrap();
        let ib = std::fs::read(b.image()).unwrap();
        assert_eq!((ia.len(), ib.len()), (SIZE, SIZE), "{what}: image sizes");
        if let Some(i) = ia.iter().zip(&ib).position(|(x, y)| x != y) {
            panic!(
                "{what}: images differ first at byte {i} (64 KiB region {})",
                i / 65536
            );
        }
        if let Some(i) = ia.iter().zip(&self.0).position(|(x, y)| x != y) {
            panic!("{what}: the images differ from the acknowledged writes first at byte {i}");
        }
        eprintln!("{what}: both image files byte-identical (and equal to the model)");
    }
}

type Acked = Vec<(Instant, u64, Vec<u8>)>;

/// Writes through one node at QD1 until stopped, retrying NOT READY / UNIT ATTENTION; every
/// acknowledged write is recorded with its completion time.
struct Writer {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<Acked, String>>,
}

impl Writer {
    fn start(n: &Node, seed: u32) -> Writer {
        let mut c = login(
            n,
            &format!("iqn.2026-11.io.tandem.test:cluster-writer-{seed}"),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let name = n.name.clone();
        let thread = std::thread::spawn(move || {
            let mut acked = Vec::new();
            let mut k = 0u32;
            while !s.load(Ordering::Relaxed) {
                // 4 or 16 KiB in an 8 MiB area, overwriting itself.
                let blocks: usize = if k % 4 == 3 { 32 } else { 8 };
                let lba = 40_000 + u64::from(k.wrapping_mul(2_654_435_761) % 2048) * 8;
                let data = pattern(blocks * 512, seed * 1_000_000 + k);
                let (r, _) = command_retrying(
                    &mut c,
                    &write16(lba, blocks as u32),
                    0,
                    &data,
                    Duration::from_secs(20),
                );
                if r.status != 0 {
                    return Err(format!(
                        "write #{k} through {name} at LBA {lba} not acknowledged after 20 s of retries: status {} sense {:02x?} ({} writes acknowledged before)",
                        r.status,
                        r.sense,
                        acked.len()
                    ));
                }
                acked.push((Instant::now(), lba, data));
                k += 1;
            }
            Ok(acked)
        });
        Writer { stop, thread }
    }

    /// Stops the writer, applies its acknowledged writes to the model; their times.
    fn finish(self, model: &mut Model) -> Vec<Instant> {
        self.stop.store(true, Ordering::Relaxed);
        let acked = match self.thread.join() {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => panic!("writer: {e}"),
            Err(_) => panic!("the writer thread panicked (see above)"),
        };
        let mut times = Vec::new();
        for (t, lba, data) in acked {
            model.write(lba, &data);
            times.push(t);
        }
        times
    }
}

/// The longest time without an acknowledged write after `since` (counting from `since`), and
/// the first ack after it.
fn pause_after(times: &[Instant], since: Instant) -> (Duration, Option<Duration>) {
    let mut prev = since;
    let mut worst = Duration::ZERO;
    let mut first = None;
    for t in times.iter().filter(|t| **t > since) {
        first.get_or_insert(t.duration_since(since));
        worst = worst.max(t.duration_since(prev));
        prev = *t;
    }
    (worst, first)
}

#[test]
fn two_control_services_replicate_survive_kills_and_resync() {
    scenario(false);
}

/// Phases 1-4, then a second whole-node failure: node-b, which took the failover authority
/// over from node-a in phase 4, is killed after node-a has returned and been resynchronized;
/// node-a takes the authority back and serves alone (before, only the priority-second node
/// ever took over, so node-b stayed a single point of failure after its takeover).
#[test]
fn second_failure_after_takeover() {
    scenario(true);
}

fn scenario(second_failure: bool) {
    let root = tempfile::Builder::new()
        .prefix("tandem-cluster")
        .tempdir_in(scratch_dir())
        .unwrap();
    let api_port = free_port();
    let mut a = Node::new(root.path(), "node-a", "127.0.0.1", api_port);
    let mut b = Node::new(root.path(), "node-b", "127.0.0.2", api_port);
    let _logs = LogsOnFailure(vec![a.log.clone(), b.log.clone()]);
    a.start();
    b.start();

    // ---- 1. A device on A, data written through A before it is replicated.
    a.ok(&["device", "create", DEVICE, "--size", "64MiB"]);
    let mut model = Model(vec![0u8; SIZE]);
    {
        let mut c = login(&a, "iqn.2026-11.io.tandem.test:cluster-pre");
        for i in 0..64u32 {
            // 256 KiB at every MiB, plus a 4 KiB write in between.
            let mib = u64::from(i) * 2048;
            model.write_through(&mut c, mib, &pattern(256 << 10, 1 + i));
            model.write_through(&mut c, mib + 1000 + u64::from(i), &pattern(4096, 100 + i));
        }
        sync_cache(&mut c);
    }
    eprintln!("64 x 256 KiB + 64 x 4 KiB written through node-a before replication");

    let token = |n: &Node| n.dir.join("token").display().to_string();
    a.ok(&[
        "server",
        "add",
        "node-b",
        &b.api,
        "--token-file",
        &token(&b),
    ]);
    b.ok(&[
        "server",
        "add",
        "node-a",
        &a.api,
        "--token-file",
        &token(&a),
    ]);
    let sync = free_port();
    let link = format!("{}:{sync}={}:{sync}", a.ip, b.ip);
    let t0 = Instant::now();
    let added = a.ok(&[
        "replica",
        "add",
        DEVICE,
        "--partner",
        "node-b",
        "--sync-link",
        &link,
    ]);
    assert!(added.contains("sync-from-existing"), "replica add: {added}");
    wait_until(
        "both nodes serving and synchronized after replica add",
        Duration::from_secs(60),
        || a.synchronized() && b.synchronized(),
    );
    eprintln!(
        "MEASURE initial sync (64 MiB, sync-from-existing): both synchronized {:?} after replica add",
        t0.elapsed()
    );
    a.ok(&["replica", "list", DEVICE]);

    // ---- 2. The data written before replication reads back through B; B's writes through A.
    model.verify_through(&b, "sync-from-existing");
    {
        let mut c = login(&b, "iqn.2026-11.io.tandem.test:cluster-b");
        for i in 0..100u32 {
            let lba = 20_000 + u64::from(i) * 333;
            model.write_through(
                &mut c,
                lba,
                &pattern(4096 * (1 + i as usize % 16), 5000 + i),
            );
        }
        sync_cache(&mut c);
    }
    model.verify_through(&a, "written through node-b");
    model.verify_through(&b, "written through node-b");
    model.images_identical(&a, &b, "after phase 2");

    // ---- 3. kill -9 of B's data plane under load through A.
    let old_pid = b.dataplane_pid();
    let writer = Writer::start(&a, 3);
    std::thread::sleep(Duration::from_millis(500));
    let t_kill = Instant::now();
    kill9(old_pid);
    eprintln!("kill -9 of node-b's data plane (pid {old_pid})");
    let mut seen_not_sync = false;
    let restarted = wait_until(
        "node-b's supervisor restarts its data plane",
        Duration::from_secs(30),
        || {
            seen_not_sync |= a.state_of("node-b").is_some_and(|s| s != "synchronized");
            b.status().is_some_and(|s| {
                s["dataplane"]["state"] == "running"
                    && s["dataplane"]["pid"]
                        .as_i64()
                        .is_some_and(|p| p != i64::from(old_pid))
            })
        },
    );
    eprintln!(
        "node-b's data plane restarted {restarted:?} after the kill: {}",
        b.status().unwrap()["dataplane"]
    );
    let resync = wait_until(
        "both synchronized after node-b's data plane restart",
        Duration::from_secs(60),
        || {
            seen_not_sync |= a.state_of("node-b").is_some_and(|s| s != "synchronized");
            a.synchronized() && b.synchronized()
        },
    );
    eprintln!(
        "MEASURE node-b data plane kill: both synchronized again {:?} after the kill ({resync:?} after the restart); node-a reported node-b not synchronized meanwhile: {seen_not_sync}",
        t_kill.elapsed()
    );
    std::thread::sleep(Duration::from_millis(300));
    let times = writer.finish(&mut model);
    let (pause, _) = pause_after(&times, t_kill);
    eprintln!(
        "MEASURE writer through node-a: {} writes acknowledged; longest pause after the kill {pause:?}",
        times.len()
    );
    assert!(
        times.iter().any(|t| *t > t_kill + restarted),
        "no write through node-a acknowledged after node-b's restart"
    );
    model.verify_through(&a, "after node-b's data plane kill");
    model.verify_through(&b, "after node-b's data plane kill");
    model.images_identical(&a, &b, "after node-b's data plane kill");

    // ---- 4. kill -9 of the whole node A (sequencer, authority host) under load through B.
    kill_node_and_restart(&mut a, &b, &mut model, 4);

    // ---- 5. And back: kill -9 of the whole node B (which took the authority over) under
    // load through A; A must take it over again.
    if second_failure {
        kill_node_and_restart(&mut b, &a, &mut model, 5);
    }
}

/// kill -9 of `victim`'s control service and data plane while a writer keeps writing through
/// `survivor`: the writes resume within [`MAX_PAUSE`]; the survivor reports itself sequencer
/// and the victim not synchronized; the victim's control service is restarted on the same
/// data dir; both synchronized; every acknowledged write reads back through both; images
/// identical; the restarted victim serves writes again.
fn kill_node_and_restart(victim: &mut Node, survivor: &Node, model: &mut Model, seed: u32) {
    let (v, s) = (victim.name.clone(), survivor.name.clone());
    let writer = Writer::start(survivor, seed);
    std::thread::sleep(Duration::from_millis(500));
    let dp = victim.dataplane_pid();
    let mut control = victim.control.take().unwrap();
    let t_kill = Instant::now();
    control.kill().unwrap(); // SIGKILL
    kill9(dp);
    control.wait().unwrap();
    eprintln!(
        "kill -9 of {v}: control service (pid {}) and data plane (pid {dp})",
        control.id()
    );
    wait_until(
        &format!("{v}'s data plane gone"),
        Duration::from_secs(10),
        || !alive(dp),
    );
    let took_over = wait_until(
        &format!("{s} serving as sequencer, {v} not synchronized"),
        Duration::from_secs(30),
        || {
            survivor.replicas().is_some_and(|l| {
                l["replicas"].as_array().is_some_and(|rs| {
                    rs.iter().any(|r| {
                        r["local"] == true && r["serving"] == true && r["sequencer"] == true
                    }) && rs
                        .iter()
                        .any(|r| r["node"] == v.as_str() && r["state"] != "synchronized")
                })
            })
        },
    );
    eprintln!("{s} reports itself sequencer and {v} not synchronized {took_over:?} after the kill");
    // Writes through the survivor while the victim is down.
    std::thread::sleep(Duration::from_secs(2));
    survivor.ok(&["replica", "list", DEVICE]);
    let t_restart = Instant::now();
    victim.start();
    let resync = wait_until(
        &format!("both synchronized after {v}'s restart"),
        Duration::from_secs(90),
        || victim.synchronized() && survivor.synchronized(),
    );
    eprintln!(
        "MEASURE {v} restart: both synchronized {:?} after its control service was started ({resync:?} after its data plane ran)",
        t_restart.elapsed()
    );
    victim.ok(&["replica", "list", DEVICE]);
    std::thread::sleep(Duration::from_millis(300));
    let times = writer.finish(model);
    let (pause, first) = pause_after(&times, t_kill);
    let during_down = times
        .iter()
        .filter(|t| **t > t_kill && **t < t_restart)
        .count();
    eprintln!(
        "MEASURE writer through {s}: {} writes acknowledged, {during_down} while {v} was down; first ack after the kill {first:?}; longest pause {pause:?}",
        times.len()
    );
    assert!(
        during_down > 0,
        "no write through {s} acknowledged while {v} was down"
    );
    assert!(
        pause < MAX_PAUSE,
        "writes through {s} paused {pause:?} after {v} was killed (bound {MAX_PAUSE:?})"
    );
    let what = format!("after {v}'s kill and restart");
    model.verify_through(victim, &what);
    model.verify_through(survivor, &what);
    model.images_identical(victim, survivor, &what);

    // The restarted node serves writes again: through it, read back through the other.
    {
        let mut c = login(
            victim,
            &format!("iqn.2026-11.io.tandem.test:cluster-again-{seed}"),
        );
        for i in 0..50u32 {
            let lba = 60_000 + u64::from(i) * 517;
            model.write_through(
                &mut c,
                lba,
                &pattern(4096 * (1 + i as usize % 8), seed * 10_000 + i),
            );
        }
        sync_cache(&mut c);
    }
    let what = format!("written through the restarted {v}");
    model.verify_through(survivor, &what);
    model.verify_through(victim, &what);
    model.images_identical(victim, survivor, &what);
}
