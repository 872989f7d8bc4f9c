//! A cluster of real `tandem-control` nodes on loopback addresses (127.0.0.1, 127.0.0.2, ...),
//! driven with the `tandem` CLI: the scaffolding the end-to-end HA tests share (starting,
//! killing and restarting a node, reading its replica list, waiting for a condition, a raw
//! iSCSI session to a node, Drop guards that clean up and print logs on failure, a model of
//! the disk built from acknowledged writes, a background writer).
//!
//! Every node of such a cluster uses the same API port on its own loopback address.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::e2e::blocks::{pattern, read16, write16};
use crate::e2e::procs::{bin, free_port, scratch_dir, wait_for_port};
use crate::e2e::raw::{command_retrying, RawConn};

/// The replicated device every cluster test creates.
pub const DEVICE: &str = "disk1";

/// Short HA timings so failovers happen within seconds in the tests.
pub const HA_FLAGS: [&str; 8] = [
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
pub fn binary(name: &str) -> PathBuf {
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

/// One node: its control service (which starts its data plane) and data dir.
pub struct Node {
    pub name: String,
    pub ip: String,
    pub dir: PathBuf,
    pub log: PathBuf,
    pub api: String,
    pub portal: SocketAddr,
    pub control: Option<Child>,
    /// The HA timing flags given to `tandem-control` ([`HA_FLAGS`] unless a test sets its own).
    pub ha_flags: &'static [&'static str],
}

impl Node {
    /// A node named `name` on `ip`, its data dir and log under `root` (the API port is the same
    /// for every node, on its own address; the portal port is free).
    pub fn new(root: &Path, name: &str, ip: &str, api_port: u16) -> Node {
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
            ha_flags: &HA_FLAGS,
        }
    }

    pub fn iqn(&self) -> String {
        format!("iqn.2026-11.io.tandem:{}-{DEVICE}", self.name)
    }

    /// The device's LUN 0 as a libiscsi URL.
    pub fn url(&self) -> String {
        format!("iscsi://{}/{}/0", self.portal, self.iqn())
    }

    pub fn image(&self) -> PathBuf {
        self.dir.join(format!("{DEVICE}.img"))
    }

    /// The token file the control service wrote, as a CLI argument.
    pub fn token_file(&self) -> String {
        self.dir.join("token").display().to_string()
    }

    /// `tandem server add OTHER` on this node: this node can reach `other`'s API.
    pub fn add_server(&self, other: &Node) -> String {
        self.ok(&[
            "server",
            "add",
            &other.name,
            &other.api,
            "--token-file",
            &other.token_file(),
        ])
    }

    /// `tandem replica add disk1 --partner PARTNER --sync-link LINK` on this node; its output.
    pub fn add_replica(&self, partner: &Node, link: &str) -> String {
        self.ok(&[
            "replica",
            "add",
            DEVICE,
            "--partner",
            &partner.name,
            "--sync-link",
            link,
        ])
    }

    /// `tandem-control`'s arguments for this node: data dir, API, portal, name, data plane
    /// binary and HA timings.
    pub fn control_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--data-dir".into(),
            self.dir.clone().into(),
            "--api".into(),
            self.api.clone().into(),
            "--portal".into(),
            self.portal.to_string().into(),
            "--node-name".into(),
            self.name.clone().into(),
            "--dataplane-bin".into(),
            binary("tandem-dataplane").into(),
        ];
        args.extend(self.ha_flags.iter().map(OsString::from));
        args
    }

    /// Starts (or restarts, same data dir) the control service and waits for its data plane.
    pub fn start(&mut self) {
        let mut cmd = Command::new(binary("tandem-control"));
        cmd.args(self.control_args());
        self.start_with(cmd);
    }

    /// Spawns `cmd` (which runs this node's control service; its output is appended to the
    /// node's log) and waits until the API answers, the data plane runs and the portal
    /// listens.
    pub fn start_with(&mut self, mut cmd: Command) {
        assert!(self.control.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        cmd.stdin(Stdio::null())
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

    /// kill -9 of the control service and of its data plane (the whole node); returns when
    /// the data plane is gone, with the time of the kill.
    pub fn kill(&mut self) -> Instant {
        let dp = self.dataplane_pid();
        let mut control = self.control.take().unwrap();
        let t = Instant::now();
        control.kill().unwrap(); // SIGKILL
        kill9(dp);
        control.wait().unwrap();
        eprintln!(
            "kill -9 of {}: control service (pid {}) and data plane (pid {dp})",
            self.name,
            control.id()
        );
        wait_until(
            &format!("{}'s data plane gone", self.name),
            Duration::from_secs(10),
            || !alive(dp),
        );
        t
    }

    /// Runs `tandem` against this node's API with its token.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(binary("tandem"))
            .args(["--api", &format!("http://{}", self.api), "--token-file"])
            .arg(self.dir.join("token"))
            .args(args)
            .output()
            .expect("run tandem")
    }

    /// Runs `tandem`, prints its output, asserts it succeeded; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
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

    /// `tandem --json ARGS`, parsed; `None` when it fails.
    pub fn json(&self, args: &[&str]) -> Option<serde_json::Value> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.cli(&all);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn status(&self) -> Option<serde_json::Value> {
        self.json(&["status"])
    }

    /// `tandem replica list disk1` as JSON.
    pub fn replicas(&self) -> Option<serde_json::Value> {
        self.json(&["replica", "list", DEVICE])
    }

    /// The replica rows this node reports (each with `node`, `state`, `sequencer`, ...);
    /// empty when the list cannot be read.
    pub fn replica_rows(&self) -> Vec<serde_json::Value> {
        self.replicas()
            .and_then(|l| l["replicas"].as_array().cloned())
            .unwrap_or_default()
    }

    /// This node serves and sees `n` replicas, every one synchronized with every link up.
    pub fn synchronized(&self, n: usize) -> bool {
        let rs = self.replica_rows();
        rs.len() == n
            && rs.iter().all(|r| {
                r["state"] == "synchronized"
                    && (r["local"] == false || r["serving"] == true)
                    && r["links"]
                        .as_array()
                        .is_some_and(|ls| ls.iter().all(|x| x["state"] == "up"))
            })
    }

    /// State of `other` as this node reports it.
    pub fn state_of(&self, other: &str) -> Option<String> {
        self.replica_rows()
            .iter()
            .find(|r| r["node"] == other)
            .and_then(|r| r["state"].as_str().map(String::from))
    }

    /// This node serves (its own replica synchronized with a lease) and reports `other`
    /// not synchronized.
    pub fn serving_without(&self, other: &str) -> bool {
        let rs = self.replica_rows();
        rs.iter()
            .any(|r| r["local"] == true && r["serving"] == true)
            && rs
                .iter()
                .any(|r| r["node"] == other && r["state"] != "synchronized")
    }

    /// This node's id within the device.
    pub fn node_id(&self) -> Option<u64> {
        self.replica_rows()
            .iter()
            .find(|r| r["local"] == true)
            .and_then(|r| r["node_id"].as_u64())
    }

    /// The pid of the data plane this node's control service runs (its pid file).
    pub fn dataplane_pid(&self) -> i32 {
        std::fs::read_to_string(self.dir.join("dataplane.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// The failover authority state this node hosts for the device, if any (its file).
    pub fn authority_state(&self) -> Option<serde_json::Value> {
        let text =
            std::fs::read_to_string(self.dir.join("ha").join(format!("{DEVICE}.authority.json")))
                .ok()?;
        serde_json::from_str(&text).ok()
    }

    /// `GET /api/v1/ha/status/disk1` (the HA view: authority place, partners heard).
    pub fn ha_view(&self) -> Option<serde_json::Value> {
        let token = std::fs::read_to_string(self.dir.join("token")).ok()?;
        let mut s = TcpStream::connect(&self.api).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET /api/v1/ha/status/{DEVICE} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            self.api,
            token.trim()
        )
        .ok()?;
        let mut text = String::new();
        s.take(1 << 20).read_to_string(&mut text).ok()?;
        let body = text.split_once("\r\n\r\n")?.1;
        serde_json::from_str(body).ok()
    }
}

/// A fresh directory for a test's nodes on a real disk filesystem (removed when dropped).
pub fn scratch_root(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(scratch_dir())
        .unwrap()
}

/// node-a on 127.0.0.1 and node-b on 127.0.0.2 (not started), with the same API port.
pub fn node_pair(root: &Path) -> (Node, Node) {
    let api_port = free_port();
    (
        Node::new(root, "node-a", "127.0.0.1", api_port),
        Node::new(root, "node-b", "127.0.0.2", api_port),
    )
}

/// The `--sync-link` argument for a link between `a` and `b` on `port` (the same on both).
pub fn sync_link(a: &Node, b: &Node, port: u16) -> String {
    format!("{}:{port}={}:{port}", a.ip, b.ip)
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

/// The command line of process `pid` (arguments joined by spaces); empty if it is gone.
pub fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Process `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let rest = &s[s.rfind(')').unwrap() + 2..];
            !rest.starts_with('Z') && !rest.starts_with('X')
        }
        Err(_) => false,
    }
}

pub fn kill9(pid: i32) {
    let st = Command::new("kill")
        .arg("-KILL")
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(st.success(), "kill -9 {pid}");
}

/// Prints the tail of the nodes' logs when the test fails.
pub struct LogsOnFailure {
    logs: Vec<PathBuf>,
    tail_lines: usize,
}

impl LogsOnFailure {
    /// The last 60 lines of each of `logs`.
    pub fn new(logs: Vec<PathBuf>) -> LogsOnFailure {
        LogsOnFailure {
            logs,
            tail_lines: 60,
        }
    }

    /// The last `lines` lines instead.
    pub fn tail(mut self, lines: usize) -> LogsOnFailure {
        self.tail_lines = lines;
        self
    }
}

impl Drop for LogsOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for p in &self.logs {
                let text = std::fs::read_to_string(p).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let n = self.tail_lines;
                eprintln!("===== last {n} lines of {} =====", p.display());
                for l in &lines[lines.len().saturating_sub(n)..] {
                    eprintln!("{l}");
                }
            }
        }
    }
}

/// Polls `f` every 100 ms; panics with `what` after `timeout`. Returns the time it took.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
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

/// A session to `n`'s device, of its own per initiator name.
pub fn login(n: &Node, initiator: &str) -> RawConn {
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

/// WRITE(16) of `data` at `lba`, retried like a multipath host; asserts it is acknowledged.
pub fn write_blocks(c: &mut RawConn, lba: u64, data: &[u8]) {
    let (r, _) = command_retrying(
        c,
        &write16(lba, (data.len() / 512) as u32),
        0,
        data,
        Duration::from_secs(15),
    );
    assert_eq!(r.status, 0, "write at {lba}: sense {:02x?}", r.sense);
}

/// SYNCHRONIZE CACHE(10), retried for up to 15 s; asserts it succeeds.
pub fn sync_cache(c: &mut RawConn) {
    sync_cache_within(c, Duration::from_secs(15));
}

/// SYNCHRONIZE CACHE(10), retried for up to `patience`; asserts it succeeds.
pub fn sync_cache_within(c: &mut RawConn, patience: Duration) {
    let (r, _) = command_retrying(c, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0, &[], patience);
    assert_eq!(r.status, 0, "SYNCHRONIZE CACHE: sense {:02x?}", r.sense);
}

// ---- The disk as the tests expect it, and a background writer ----

/// The model of the disk: every acknowledged write applied in order (as long as the disk).
pub struct Model(pub Vec<u8>);

impl Model {
    pub fn write(&mut self, lba: u64, data: &[u8]) {
        let o = lba as usize * 512;
        self.0[o..o + data.len()].copy_from_slice(data);
    }

    /// Writes through `c` and records the write.
    pub fn write_through(&mut self, c: &mut RawConn, lba: u64, data: &[u8]) {
        write_blocks(c, lba, data);
        self.write(lba, data);
    }

    /// Reads the whole disk through `n` (a fresh session) and compares it with the model;
    /// flushes that node's cache.
    pub fn verify_through(&self, n: &Node, what: &str) {
        let t0 = Instant::now();
        let mut c = login(n, "iqn.2026-11.io.tandem.test:cluster-verify");
        const CHUNK: usize = 256 << 10;
        for off in (0..self.0.len()).step_by(CHUNK) {
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
    pub fn images_identical(&self, a: &Node, b: &Node, what: &str) {
        let ia = std::fs::read(a.image()).unwrap();
        let ib = std::fs::read(b.image()).unwrap();
        let size = self.0.len();
        assert_eq!((ia.len(), ib.len()), (size, size), "{what}: image sizes");
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

pub type Acked = Vec<(Instant, u64, Vec<u8>)>;

/// Writes through one node at QD1 until stopped (4 or 16 KiB writes in an 8 MiB area from
/// LBA `base`, each retried for up to `patience`), retrying NOT READY / UNIT ATTENTION; every
/// acknowledged write is recorded with its completion time.
pub struct Writer {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<Acked, String>>,
}

impl Writer {
    pub fn start(n: &Node, seed: u32, base: u64, patience: Duration) -> Writer {
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
                let lba = base + u64::from(k.wrapping_mul(2_654_435_761) % 2048) * 8;
                let data = pattern(blocks * 512, seed * 1_000_000 + k);
                let (r, _) =
                    command_retrying(&mut c, &write16(lba, blocks as u32), 0, &data, patience);
                if r.status != 0 {
                    return Err(format!(
                        "write #{k} through {name} at LBA {lba} not acknowledged after {patience:?} of retries: status {} sense {:02x?} ({} writes acknowledged before)",
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
    pub fn finish(self, model: &mut Model) -> Vec<Instant> {
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
pub fn pause_after(times: &[Instant], since: Instant) -> (Duration, Option<Duration>) {
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
