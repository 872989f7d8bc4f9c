//! `tandem-bench`: one run that measures the machine's limits (iperf3, raw-disk fio), starts
//! Tandem and tgt side by side on loopback with the same backing kinds, drives both with the same
//! clients in alternating A/B order, and writes JSON, Markdown and an SVG latency plot.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::loadgen::LoadgenResult;
use crate::sys::{children_cpu, proc_cpu, proc_rss_kib, CpuTimes};

/// Idle CPU (s per s) above which a Tandem target counts as not sleeping: one that sleeps
/// uses about 0.01 (wake-ups every 100 ms); a spinning one 0.5-1.0.
const IDLE_CPU_MAX: f64 = 0.1;

/// Harness options (filled by the binary from the command line).
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub mode: Mode,
    pub reps: usize,
    pub seconds: u64,
    pub size_mib: u64,
    pub workdir: PathBuf,
    pub out_dir: PathBuf,
    pub dataplane: PathBuf,
    pub loadgen: PathBuf,
    pub fio_libiscsi: Option<PathBuf>,
    pub clients: Vec<Client>,
    pub backings: Vec<Backing>,
    pub target_core: usize,
    pub client_core: usize,
    pub poll_mode: String,
    /// Extra arguments for `tandem-dataplane serve` (e.g. `--socket-io uring`), so one binary
    /// can be measured in several configurations in the same run.
    pub dataplane_args: Vec<String>,
    pub port_base: u16,
    pub workloads: Vec<Workload>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Full,
    Quick,
    Smoke,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Client {
    Loadgen,
    IscsiPerf,
    Fio,
}

impl Client {
    pub fn name(self) -> &'static str {
        match self {
            Client::Loadgen => "tandem-loadgen",
            Client::IscsiPerf => "iscsi-perf",
            Client::Fio => "fio-libiscsi",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backing {
    Ram,
    File,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    Tandem,
    Tgt,
}

/// One I/O pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Workload {
    pub write: bool,
    pub random: bool,
    pub bs: u32,
    pub qd: u32,
}

impl Workload {
    pub const fn new(write: bool, random: bool, bs: u32, qd: u32) -> Workload {
        Workload {
            write,
            random,
            bs,
            qd,
        }
    }

    pub fn label(&self) -> String {
        format!(
            "{}K {}{} QD{}",
            self.bs / 1024,
            if self.random { "rand" } else { "seq" },
            if self.write { "write" } else { "read" },
            self.qd
        )
    }

    fn loadgen_rw(&self) -> &'static str {
        match (self.random, self.write) {
            (true, false) => "randread",
            (true, true) => "randwrite",
            (false, false) => "read",
            (false, true) => "write",
        }
    }
}

/// The workloads of issue 3: 4K random read/write at QD 1/8/32/128, 128K sequential read/write.
pub fn full_workloads() -> Vec<Workload> {
    let mut v = Vec::new();
    for write in [false, true] {
        for qd in [1, 8, 32, 128] {
            v.push(Workload::new(write, true, 4096, qd));
        }
    }
    v.push(Workload::new(false, false, 131_072, 8));
    v.push(Workload::new(true, false, 131_072, 8));
    v
}

/// The smoke run's workloads: one of each kind of path.
pub fn smoke_workloads() -> Vec<Workload> {
    vec![
        Workload::new(false, true, 4096, 8),
        Workload::new(true, true, 4096, 8),
        Workload::new(false, false, 131_072, 4),
        Workload::new(true, false, 131_072, 4),
    ]
}

/// One client run against one target.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunResult {
    pub ok: bool,
    pub error: Option<String>,
    pub note: Option<String>,
    pub ops: f64,
    pub iops: f64,
    pub mb_s: f64,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub p99_9_us: Option<f64>,
    pub mean_us: Option<f64>,
    pub percentiles: Vec<(f64, f64)>,
    pub client_cpu_s: f64,
    pub client_iops_per_cpu_s: f64,
    pub target_cpu_s: f64,
    pub target_cpu_us_per_io: f64,
    /// Target CPU time over the client's run time: 1.0 = one core busy all the time.
    pub target_core_busy: f64,
    pub target_rss_mib: f64,
    pub target_hwm_mib: f64,
    pub wall_s: f64,
}

/// Medians of the repetitions of one (backing, client, workload, target).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Median {
    pub runs_ok: usize,
    pub runs: usize,
    pub iops: f64,
    pub mb_s: f64,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub p99_9_us: Option<f64>,
    pub mean_us: Option<f64>,
    pub client_cpu_s: f64,
    pub client_iops_per_cpu_s: f64,
    pub target_cpu_us_per_io: f64,
    pub target_core_busy: f64,
    pub target_rss_mib: f64,
    /// Percentiles of the run with the median IOPS (for the plot).
    pub percentiles: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub backing: Backing,
    pub client: Client,
    pub workload: Workload,
    pub label: String,
    pub tandem: Median,
    pub tgt: Median,
    pub iops_ratio: Option<f64>,
    pub p99_ratio: Option<f64>,
    pub cpu_per_io_ratio: Option<f64>,
    pub runs: Vec<(TargetKind, RunResult)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Goal {
    pub name: String,
    pub measured: String,
    pub goal: String,
    pub pass: Option<bool>,
    pub margin: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Limits {
    /// Best of the iperf3 runs.
    pub iperf3_gbit_s: Option<f64>,
    pub iperf3_runs_gbit_s: Vec<f64>,
    pub iperf3_mb_s: Option<f64>,
    pub raw_fio: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub date: String,
    pub host: String,
    pub mode: String,
    pub load_before: String,
    pub load_after: String,
    pub nproc: usize,
    pub kernel: String,
    pub setup: BTreeMap<String, String>,
    pub limits: Limits,
    pub idle_cpu_s_per_s: BTreeMap<String, f64>,
    pub rows: Vec<Row>,
    pub goals: Vec<Goal>,
    pub failures: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// small process helpers

fn sh(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd} {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a client pinned to `core`, with a deadline (then it is killed).
fn run_pinned(
    core: usize,
    prog: &Path,
    args: &[String],
    timeout: Duration,
) -> Result<Finished, String> {
    let cpu0 = children_cpu();
    let mut child = Command::new("taskset")
        .arg("-c")
        .arg(core.to_string())
        .arg(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", prog.display()))?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let mut stderr = child.stderr.take().ok_or("no stderr")?;
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                let out = out_t.join().unwrap_or_default();
                let err = err_t.join().unwrap_or_default();
                return Ok(Finished {
                    out,
                    err,
                    cpu: children_cpu().since(&cpu0),
                    timed_out: true,
                });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e.to_string()),
        }
    };
    let cpu = children_cpu().since(&cpu0);
    let out = out_t.join().unwrap_or_default();
    let err = err_t.join().unwrap_or_default();
    if !status.success() {
        return Err(format!(
            "{} exited with {status}: {}",
            prog.display(),
            err.lines().rev().take(3).collect::<Vec<_>>().join(" | ")
        ));
    }
    Ok(Finished {
        out,
        err,
        cpu,
        timed_out: false,
    })
}

/// What a client run left behind.
struct Finished {
    out: String,
    #[allow(dead_code)]
    err: String,
    cpu: CpuTimes,
    /// Killed at the deadline (its output may still hold a complete result).
    timed_out: bool,
}

fn wait_port(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn stop_child(child: &mut Child) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let pid = Pid::from_raw(child.id() as i32);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// True while the process exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 2..];
            rest.chars().next()
        })
        .is_some_and(|state| state != 'Z' && state != 'X')
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn median_opt(v: Vec<Option<f64>>) -> Option<f64> {
    let v: Vec<f64> = v.into_iter().flatten().collect();
    if v.is_empty() {
        None
    } else {
        Some(median(v))
    }
}

// ---------------------------------------------------------------------------------------------
// targets

/// A running target under test.
struct Target {
    kind: TargetKind,
    backing: Backing,
    portal: SocketAddr,
    iqn: String,
    lun: u64,
    pid: u32,
    /// Bytes of the configured RAM disk (subtracted for the RSS goal).
    ram_bytes: u64,
}

struct Targets {
    children: Vec<Child>,
    list: Vec<Target>,
    tgt_control_port: u16,
    shm_file: PathBuf,
}

impl Targets {
    fn get(&self, kind: TargetKind, backing: Backing) -> Option<&Target> {
        self.list
            .iter()
            .find(|t| t.kind == kind && t.backing == backing)
    }

    fn shutdown(&mut self) {
        let port = self.tgt_control_port.to_string();
        let _ = sh(
            "tgtadm",
            &[
                "-C", &port, "--op", "update", "--mode", "sys", "--name", "State", "-v", "offline",
            ],
        );
        for tid in ["1", "2"] {
            let _ = sh(
                "tgtadm",
                &[
                    "-C", &port, "--lld", "iscsi", "--mode", "target", "--op", "delete", "--force",
                    "--tid", tid,
                ],
            );
        }
        // tgtd ignores SIGTERM; this is its own way to exit.
        let _ = sh(
            "tgtadm",
            &["-C", &port, "--op", "delete", "--mode", "system"],
        );
        for c in &mut self.children {
            stop_child(c);
        }
        self.children.clear();
        let _ = std::fs::remove_file(&self.shm_file);
    }
}

impl Drop for Targets {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn ensure_image(path: &Path, size_mib: u64) -> Result<(), String> {
    let want = size_mib << 20;
    if std::fs::metadata(path).map(|m| m.len()).ok() == Some(want) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    // Written in full (not sparse), so reads hit allocated blocks as on a used disk.
    let of = format!("of={}", path.display());
    let count = format!("count={size_mib}");
    let dd_args = [
        "if=/dev/zero",
        &of,
        "bs=1M",
        &count,
        "conv=fsync",
        "status=none",
    ];
    sh("dd", &dd_args).map(|_| ())
}

fn start_targets(cfg: &BenchConfig) -> Result<Targets, String> {
    let core = cfg.target_core.to_string();
    let size = format!("{}MiB", cfg.size_mib);
    let mut t = Targets {
        children: Vec::new(),
        list: Vec::new(),
        tgt_control_port: cfg.port_base % 1000 + 100,
        shm_file: PathBuf::from(format!("/dev/shm/tandem-perf-tgt-{}.img", cfg.port_base)),
    };
    // Tandem: one process per backing kind (the `serve` subcommand serves one device).
    let mut port = cfg.port_base;
    for &backing in &cfg.backings {
        port += 1;
        let portal: SocketAddr = format!("127.0.0.1:{port}")
            .parse()
            .map_err(|e| format!("{e}"))?;
        let iqn = format!(
            "iqn.2026-11.io.tandem:perf-{}",
            if backing == Backing::Ram {
                "ram"
            } else {
                "file"
            }
        );
        let mut args: Vec<String> = vec![
            "-c".into(),
            core.clone(),
            cfg.dataplane.display().to_string(),
            "serve".into(),
            "--portal".into(),
            portal.to_string(),
            "--iqn".into(),
            iqn.clone(),
            "--cores".into(),
            core.clone(),
            "--poll-mode".into(),
            cfg.poll_mode.clone(),
        ];
        args.extend(cfg.dataplane_args.iter().cloned());
        let ram_bytes = match backing {
            Backing::Ram => {
                args.extend(["--ram".into(), size.clone()]);
                cfg.size_mib << 20
            }
            Backing::File => {
                let img = cfg.workdir.join("tandem.img");
                ensure_image(&img, cfg.size_mib)?;
                args.extend(["--file".into(), img.display().to_string()]);
                0
            }
        };
        let child = Command::new("taskset")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(cfg.workdir.join(format!("tandem-{port}.log")))
                    .map(Stdio::from)
                    .unwrap_or(Stdio::null()),
            )
            .spawn()
            .map_err(|e| format!("starting tandem-dataplane: {e}"))?;
        let pid = child.id();
        t.children.push(child);
        if !wait_port(portal, Duration::from_secs(10)) {
            return Err(format!("Tandem ({backing:?}) did not listen on {portal}"));
        }
        t.list.push(Target {
            kind: TargetKind::Tandem,
            backing,
            portal,
            iqn,
            lun: 0,
            pid,
            ram_bytes,
        });
    }
    // tgt: one tgtd with one target per backing kind, same core.
    port += 1;
    let portal: SocketAddr = format!("127.0.0.1:{port}")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let cport = t.tgt_control_port.to_string();
    let child = Command::new("taskset")
        .args([
            "-c",
            &core,
            "tgtd",
            "-f",
            "-C",
            &cport,
            "--iscsi",
            &format!("portal={portal},nop_interval=0"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(cfg.workdir.join(format!("tgtd-{port}.log")))
                .map(Stdio::from)
                .unwrap_or(Stdio::null()),
        )
        .spawn()
        .map_err(|e| format!("starting tgtd: {e}"))?;
    let tgt_pid = child.id();
    t.children.push(child);
    if !wait_port(portal, Duration::from_secs(10)) {
        return Err(format!("tgtd did not listen on {portal}"));
    }
    for (tid, &backing) in cfg.backings.iter().enumerate() {
        let tid = (tid + 1).to_string();
        let iqn = format!(
            "iqn.2026-11.io.tandem:tgt-{}",
            if backing == Backing::Ram {
                "ram"
            } else {
                "file"
            }
        );
        let adm = |extra: &[&str]| -> Result<String, String> {
            let mut a = vec!["-C", &cport, "--lld", "iscsi"];
            a.extend_from_slice(extra);
            sh("tgtadm", &a)
        };
        adm(&["--op", "new", "--mode", "target", "--tid", &tid, "-T", &iqn])?;
        let (path, oflags) = match backing {
            Backing::Ram => {
                ensure_image(&t.shm_file, cfg.size_mib)?;
                (t.shm_file.clone(), None)
            }
            Backing::File => {
                let img = cfg.workdir.join("tgt.img");
                ensure_image(&img, cfg.size_mib)?;
                (img, Some("direct"))
            }
        };
        let path_s = path.display().to_string();
        let mut lu = vec![
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            &tid,
            "--lun",
            "1",
            "-b",
            &path_s,
        ];
        if let Some(f) = oflags {
            lu.extend(["--bsoflags", f]);
        }
        adm(&lu)?;
        // Same session parameters Tandem offers: big segments, immediate and unsolicited data.
        for (k, v) in [
            ("MaxRecvDataSegmentLength", "262144"),
            ("MaxXmitDataSegmentLength", "262144"),
            ("FirstBurstLength", "262144"),
            ("MaxBurstLength", "262144"),
            ("ImmediateData", "Yes"),
            ("InitialR2T", "No"),
        ] {
            adm(&[
                "--op", "update", "--mode", "target", "--tid", &tid, "--name", k, "--value", v,
            ])?;
        }
        adm(&[
            "--op", "bind", "--mode", "target", "--tid", &tid, "-I", "ALL",
        ])?;
        t.list.push(Target {
            kind: TargetKind::Tgt,
            backing,
            portal,
            iqn,
            lun: 1,
            pid: tgt_pid,
            ram_bytes: 0,
        });
    }
    Ok(t)
}

// ---------------------------------------------------------------------------------------------
// limits

fn measure_limits(cfg: &BenchConfig, limits: &mut Limits, failures: &mut Vec<String>) {
    let secs = cfg.seconds.max(1).to_string();
    // iperf3 over loopback: server on the target core, client on the client core, 256 KiB
    // writes (our largest PDU). Loopback bandwidth on a shared VM swings a lot, so it is measured
    // several times and the best run is the limit (the harder goal for us).
    let tries = if cfg.mode == Mode::Smoke { 1 } else { 3 };
    let mut best: Option<f64> = None;
    let mut all = Vec::new();
    for i in 0..tries {
        let port = (cfg.port_base + 50 + i as u16).to_string();
        let server = Command::new("taskset")
            .args([
                "-c",
                &cfg.target_core.to_string(),
                "iperf3",
                "-s",
                "-1",
                "-B",
                "127.0.0.1",
                "-p",
                &port,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let mut srv = match server {
            Ok(s) => s,
            Err(e) => {
                failures.push(format!("iperf3 server: {e}"));
                break;
            }
        };
        std::thread::sleep(Duration::from_millis(300));
        let args: Vec<String> = [
            "-c",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            &secs,
            "-l",
            "256K",
            "-J",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        match run_pinned(
            cfg.client_core,
            Path::new("iperf3"),
            &args,
            Duration::from_secs(cfg.seconds + 20),
        ) {
            Ok(Finished { out, .. }) => {
                let bps = serde_json::from_str::<Value>(&out).ok().and_then(|v| {
                    v.pointer("/end/sum_received/bits_per_second")
                        .and_then(Value::as_f64)
                });
                match bps {
                    Some(b) => {
                        all.push(b / 1e9);
                        best = Some(best.map_or(b, |x: f64| x.max(b)));
                    }
                    None => failures.push("iperf3: no result in its JSON".into()),
                }
            }
            Err(e) => failures.push(format!("iperf3: {e}")),
        }
        stop_child(&mut srv);
    }
    if let Some(b) = best {
        limits.iperf3_gbit_s = Some(b / 1e9);
        limits.iperf3_mb_s = Some(b / 8e6);
        limits.iperf3_runs_gbit_s = all;
    }
    raw_disk(cfg, limits, failures, "");
}

/// Raw disk: fio io_uring O_DIRECT on the image file the file-backed Tandem serves. Run before
/// the targets start and again after they stop (`suffix` " (end)"), since the VM's disk speed
/// drifts; the goal uses the better of the two.
fn raw_disk(cfg: &BenchConfig, limits: &mut Limits, failures: &mut Vec<String>, suffix: &str) {
    let secs = cfg.seconds.max(1).to_string();
    let img = cfg.workdir.join("tandem.img");
    if let Err(e) = ensure_image(&img, cfg.size_mib) {
        failures.push(format!("image: {e}"));
        return;
    }
    let raw_jobs: Vec<(&str, Workload)> = vec![
        ("4K randread QD32", Workload::new(false, true, 4096, 32)),
        ("4K randread QD1", Workload::new(false, true, 4096, 1)),
        ("4K randwrite QD32", Workload::new(true, true, 4096, 32)),
        ("128K seqread QD8", Workload::new(false, false, 131_072, 8)),
    ];
    for (name, w) in raw_jobs {
        if cfg.mode == Mode::Smoke && name != "4K randread QD32" {
            continue;
        }
        let args = vec![
            "--name=raw".to_string(),
            format!("--filename={}", img.display()),
            "--ioengine=io_uring".into(),
            "--direct=1".into(),
            format!("--rw={}", w.loadgen_rw()),
            format!("--bs={}", w.bs),
            format!("--iodepth={}", w.qd),
            "--time_based".into(),
            format!("--runtime={secs}"),
            "--output-format=json".into(),
            "--percentile_list=50:99:99.9".into(),
        ];
        match run_pinned(
            cfg.target_core,
            Path::new("fio"),
            &args,
            Duration::from_secs(cfg.seconds + 30),
        ) {
            Ok(Finished { out, cpu, .. }) => match parse_fio(&out, w.write) {
                Some(r) => {
                    limits.raw_fio.insert(
                        format!("{name}{suffix}"),
                        serde_json::json!({
                            "iops": r.iops, "mb_s": r.mb_s, "p50_us": r.p50_us,
                            "p99_us": r.p99_us, "cpu_s": cpu.total_s(),
                        }),
                    );
                }
                None => failures.push(format!("raw fio {name}: unparsable output")),
            },
            Err(e) => failures.push(format!("raw fio {name}: {e}")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// clients

struct Parsed {
    ops: f64,
    iops: f64,
    mb_s: f64,
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    p99_9_us: Option<f64>,
    mean_us: Option<f64>,
    percentiles: Vec<(f64, f64)>,
}

fn parse_fio(out: &str, write: bool) -> Option<Parsed> {
    let start = out.find('{')?;
    let end = out.rfind('}')?;
    let v: Value = serde_json::from_str(&out[start..=end]).ok()?;
    let job = v.pointer("/jobs/0")?;
    let dir = job.get(if write { "write" } else { "read" })?;
    let iops = dir.get("iops")?.as_f64()?;
    let bw = dir.get("bw_bytes")?.as_f64()?;
    let ops = dir.get("total_ios")?.as_f64()?;
    let clat = dir.get("clat_ns")?;
    let pct = |k: &str| {
        clat.get("percentile")
            .and_then(|p| p.get(k))
            .and_then(Value::as_f64)
            .map(|ns| ns / 1000.0)
    };
    let mut percentiles = Vec::new();
    if let Some(p) = clat.get("percentile").and_then(Value::as_object) {
        for (k, val) in p {
            if let (Ok(pk), Some(ns)) = (k.parse::<f64>(), val.as_f64()) {
                percentiles.push((pk, ns / 1000.0));
            }
        }
    }
    percentiles.sort_by(|a, b| a.0.total_cmp(&b.0));
    Some(Parsed {
        ops,
        iops,
        mb_s: bw / 1e6,
        p50_us: pct("50.000000"),
        p99_us: pct("99.000000"),
        p99_9_us: pct("99.900000"),
        mean_us: clat.get("mean").and_then(Value::as_f64).map(|n| n / 1000.0),
        percentiles,
    })
}

fn parse_iscsi_perf(out: &str, bs: u32, seconds: u64) -> Option<Parsed> {
    // "iops average 12345 (48 MB/s)" is printed when the run time is over.
    let text = out.replace('\r', "\n");
    let line = text.lines().rev().find(|l| l.contains("iops average"))?;
    let after = line.split("iops average").last()?.trim();
    let iops: f64 = after.split_whitespace().next()?.parse().ok()?;
    Some(Parsed {
        ops: iops * seconds as f64,
        iops,
        mb_s: iops * f64::from(bs) / 1e6,
        p50_us: None,
        p99_us: None,
        p99_9_us: None,
        mean_us: None,
        percentiles: Vec::new(),
    })
}

fn iscsi_url(t: &Target) -> String {
    format!("iscsi://{}/{}/{}", t.portal, t.iqn, t.lun)
}

fn client_args(
    cfg: &BenchConfig,
    client: Client,
    t: &Target,
    w: &Workload,
) -> Option<(PathBuf, Vec<String>)> {
    let secs = cfg.seconds.max(1);
    match client {
        Client::Loadgen => Some((
            cfg.loadgen.clone(),
            vec![
                "--portal".into(),
                t.portal.to_string(),
                "--target".into(),
                t.iqn.clone(),
                "--lun".into(),
                t.lun.to_string(),
                "--rw".into(),
                w.loadgen_rw().into(),
                "--bs".into(),
                w.bs.to_string(),
                "--qd".into(),
                w.qd.to_string(),
                "--time".into(),
                secs.to_string(),
            ],
        )),
        Client::IscsiPerf => {
            if w.write {
                return None; // iscsi-perf only reads
            }
            let mut a = vec![
                "-m".to_string(),
                w.qd.to_string(),
                "-b".into(),
                (w.bs / 512).to_string(),
                "-t".into(),
                secs.to_string(),
            ];
            if w.random {
                a.push("-r".into());
            }
            a.push(iscsi_url(t));
            Some((PathBuf::from("iscsi-perf"), a))
        }
        Client::Fio => {
            let fio = cfg.fio_libiscsi.clone()?;
            let filename = format!(
                "iscsi\\://{}\\:{}/{}/{}",
                t.portal.ip(),
                t.portal.port(),
                t.iqn.replace(':', "\\:"),
                t.lun
            );
            Some((
                fio,
                vec![
                    "--name=lib".into(),
                    "--ioengine=libiscsi".into(),
                    format!("--filename={filename}"),
                    format!("--rw={}", w.loadgen_rw()),
                    format!("--bs={}", w.bs),
                    format!("--iodepth={}", w.qd),
                    "--time_based".into(),
                    format!("--runtime={secs}"),
                    "--output-format=json".into(),
                    "--percentile_list=1:5:10:25:50:75:90:95:99:99.5:99.9:99.95:99.99".into(),
                ],
            ))
        }
    }
}

fn run_one(cfg: &BenchConfig, client: Client, t: &Target, w: &Workload) -> Option<RunResult> {
    let (prog, args) = client_args(cfg, client, t, w)?;
    if !alive(t.pid) {
        return Some(RunResult {
            error: Some(format!("target process {} ({:?}) is gone", t.pid, t.kind)),
            ..Default::default()
        });
    }
    let cpu0 = proc_cpu(t.pid);
    let started = Instant::now();
    let res = run_pinned(
        cfg.client_core,
        &prog,
        &args,
        Duration::from_secs(cfg.seconds + 15),
    );
    let wall = started.elapsed().as_secs_f64();
    let cpu1 = proc_cpu(t.pid);
    let (rss, hwm) = proc_rss_kib(t.pid).unwrap_or((0, 0));
    let mut r = RunResult {
        wall_s: wall,
        target_rss_mib: rss as f64 / 1024.0,
        target_hwm_mib: hwm as f64 / 1024.0,
        ..Default::default()
    };
    let (out, cpu, timed_out) = match res {
        Ok(f) => (f.out, f.cpu, f.timed_out),
        Err(e) => {
            r.error = Some(e);
            return Some(r);
        }
    };
    let parsed = match client {
        Client::Loadgen => serde_json::from_str::<LoadgenResult>(out.trim())
            .ok()
            .map(|l| Parsed {
                ops: l.ops as f64,
                iops: l.iops,
                mb_s: l.mb_s,
                p50_us: Some(l.latency.p50_us),
                p99_us: Some(l.latency.p99_us),
                p99_9_us: Some(l.latency.p99_9_us),
                mean_us: Some(l.latency.mean_us),
                percentiles: l.latency.percentiles.clone(),
            }),
        Client::IscsiPerf => parse_iscsi_perf(&out, w.bs, cfg.seconds.max(1)),
        Client::Fio => parse_fio(&out, w.write),
    };
    // A client killed at the deadline counts only if it had printed its complete result (seen
    // once: iscsi-perf hanging in logout after its measured run against tgt).
    let parsed = match (parsed, timed_out) {
        (Some(p), true) if client == Client::IscsiPerf => {
            r.note = Some("killed after printing its result (hung in teardown)".into());
            Some(p)
        }
        (_, true) => {
            r.error = Some(format!("{} timed out", client.name()));
            return Some(r);
        }
        (p, false) => p,
    };
    let Some(p) = parsed else {
        r.error = Some(format!(
            "{}: unparsable output: {}",
            client.name(),
            out.chars().take(200).collect::<String>()
        ));
        return Some(r);
    };
    if p.ops <= 0.0 {
        r.error = Some(format!("{}: no I/O completed", client.name()));
        return Some(r);
    }
    r.ok = true;
    r.ops = p.ops;
    r.iops = p.iops;
    r.mb_s = p.mb_s;
    r.p50_us = p.p50_us;
    r.p99_us = p.p99_us;
    r.p99_9_us = p.p99_9_us;
    r.mean_us = p.mean_us;
    r.percentiles = p.percentiles;
    r.client_cpu_s = cpu.total_s();
    r.client_iops_per_cpu_s = if cpu.total_s() > 0.0 {
        p.ops / cpu.total_s()
    } else {
        0.0
    };
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        r.target_cpu_s = b.since(&a).total_s();
        r.target_cpu_us_per_io = r.target_cpu_s * 1e6 / p.ops;
        r.target_core_busy = r.target_cpu_s / cfg.seconds.max(1) as f64;
    }
    Some(r)
}

fn summarize(runs: &[&RunResult]) -> Median {
    let ok: Vec<&RunResult> = runs.iter().copied().filter(|r| r.ok).collect();
    let mut m = Median {
        runs: runs.len(),
        runs_ok: ok.len(),
        ..Default::default()
    };
    if ok.is_empty() {
        return m;
    }
    m.iops = median(ok.iter().map(|r| r.iops).collect());
    m.mb_s = median(ok.iter().map(|r| r.mb_s).collect());
    m.p50_us = median_opt(ok.iter().map(|r| r.p50_us).collect());
    m.p99_us = median_opt(ok.iter().map(|r| r.p99_us).collect());
    m.p99_9_us = median_opt(ok.iter().map(|r| r.p99_9_us).collect());
    m.mean_us = median_opt(ok.iter().map(|r| r.mean_us).collect());
    m.client_cpu_s = median(ok.iter().map(|r| r.client_cpu_s).collect());
    m.client_iops_per_cpu_s = median(ok.iter().map(|r| r.client_iops_per_cpu_s).collect());
    m.target_cpu_us_per_io = median(ok.iter().map(|r| r.target_cpu_us_per_io).collect());
    m.target_core_busy = median(ok.iter().map(|r| r.target_core_busy).collect());
    m.target_rss_mib = ok.iter().map(|r| r.target_rss_mib).fold(0.0, f64::max);
    let mut by_iops = ok.clone();
    by_iops.sort_by(|a, b| a.iops.total_cmp(&b.iops));
    m.percentiles = by_iops[by_iops.len() / 2].percentiles.clone();
    m
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (a > 0.0 && b > 0.0).then(|| a / b)
}

fn ratio_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => ratio(a, b),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// the run

/// Runs the whole benchmark; returns the report (also written to `out_dir`).
pub fn run(cfg: &BenchConfig) -> Result<Report, String> {
    std::fs::create_dir_all(&cfg.workdir).map_err(|e| format!("{}: {e}", cfg.workdir.display()))?;
    let host = sh("hostname", &[])
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    let date = sh("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let mut report = Report {
        date,
        host,
        mode: format!("{:?}", cfg.mode).to_lowercase(),
        load_before: sh("uptime", &[])
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        load_after: String::new(),
        nproc: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        kernel: sh("uname", &["-r"])
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        setup: BTreeMap::new(),
        limits: Limits::default(),
        idle_cpu_s_per_s: BTreeMap::new(),
        rows: Vec::new(),
        goals: Vec::new(),
        failures: Vec::new(),
    };
    let s = &mut report.setup;
    s.insert("target_core".into(), cfg.target_core.to_string());
    s.insert("client_core".into(), cfg.client_core.to_string());
    s.insert("poll_mode".into(), cfg.poll_mode.clone());
    s.insert("dataplane_args".into(), cfg.dataplane_args.join(" "));
    s.insert("seconds_per_run".into(), cfg.seconds.to_string());
    s.insert("repetitions".into(), cfg.reps.to_string());
    s.insert("lun_size_mib".into(), cfg.size_mib.to_string());
    s.insert("workdir".into(), cfg.workdir.display().to_string());
    s.insert(
        "fio_libiscsi".into(),
        cfg.fio_libiscsi
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "unavailable (client skipped)".into()),
    );
    s.insert(
        "tgt".into(),
        sh("tgtd", &["-V"])
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
    );
    report.setup.insert(
        "git_head".into(),
        sh("git", &["rev-parse", "--short", "HEAD"])
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
    );
    report.setup.insert(
        "git_uncommitted_dataplane_files".into(),
        sh("git", &["status", "--short", "--", "dataplane", "ffi"])
            .map(|s| s.lines().count().to_string())
            .unwrap_or_default(),
    );
    eprintln!("tandem-bench: load before: {}", report.load_before);
    // Run private copies of the binaries: a rebuild in the shared target directory cannot swap
    // them mid-run, and `pkill tandem-dataplane` aimed at someone's test cannot hit our targets.
    let mut cfg = cfg.clone();
    let bin_dir = cfg.workdir.join("bin");
    std::fs::create_dir_all(&bin_dir).map_err(|e| format!("{}: {e}", bin_dir.display()))?;
    for (src, name) in [
        (&mut cfg.dataplane, "tdp-bench-target"),
        (&mut cfg.loadgen, "tdp-bench-loadgen"),
    ] {
        let dst = bin_dir.join(name);
        let _ = std::fs::remove_file(&dst);
        std::fs::copy(&*src, &dst).map_err(|e| format!("copying {}: {e}", src.display()))?;
        *src = dst;
    }
    let cfg = &cfg;

    eprintln!("tandem-bench: measuring limits (iperf3, raw fio)");
    measure_limits(cfg, &mut report.limits, &mut report.failures);

    eprintln!("tandem-bench: starting targets");
    let mut targets = start_targets(cfg)?;
    // Prefill: one sequential write pass over every LUN, so the RAM disk's pages are resident
    // (Tandem allocates them on first touch; tgt's /dev/shm file is written in full above) and
    // every block of the image files is allocated before anything is measured.
    eprintln!("tandem-bench: prefilling every LUN");
    for t in &targets.list {
        let bs: u64 = 256 * 1024;
        let ops = (cfg.size_mib << 20) / bs;
        let args: Vec<String> = vec![
            "--portal".into(),
            t.portal.to_string(),
            "--target".into(),
            t.iqn.clone(),
            "--lun".into(),
            t.lun.to_string(),
            "--rw".into(),
            "write".into(),
            "--bs".into(),
            bs.to_string(),
            "--qd".into(),
            "8".into(),
            "--ops".into(),
            ops.to_string(),
        ];
        if let Err(e) = run_pinned(
            cfg.client_core,
            &cfg.loadgen,
            &args,
            Duration::from_secs(300),
        )
        .and_then(|f| {
            if f.timed_out {
                Err("timed out".into())
            } else {
                Ok(())
            }
        }) {
            report
                .failures
                .push(format!("prefill {:?} {:?}: {e}", t.kind, t.backing));
        }
    }

    // Idle cost of each target process (adaptive polling must not burn the shared core).
    let before: Vec<(String, Option<CpuTimes>)> = targets
        .list
        .iter()
        .map(|t| (format!("{:?}-{:?}", t.kind, t.backing), proc_cpu(t.pid)))
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    for ((name, b), t) in before.into_iter().zip(&targets.list) {
        if let (Some(b), Some(a)) = (b, proc_cpu(t.pid)) {
            let name = name.to_lowercase();
            let cpu = a.since(&b).total_s();
            // The prefill's sessions have come and gone: a target still burning its core now
            // slows every neighbour on it (tgt included) and falsifies every ratio of the run.
            if cpu > IDLE_CPU_MAX && name.starts_with("tandem") {
                report.failures.push(format!(
                    "{name} used {cpu:.2} CPU s per s while idle after its sessions closed: \
                     its reactor does not sleep"
                ));
            }
            report.idle_cpu_s_per_s.insert(name, cpu);
        }
    }

    let total_runs: usize =
        cfg.backings.len() * cfg.workloads.len() * cfg.clients.len() * cfg.reps * 2;
    eprintln!(
        "tandem-bench: up to {total_runs} client runs of {} s (about {} min)",
        cfg.seconds,
        (total_runs as u64 * (cfg.seconds + 1)).div_ceil(60)
    );
    let mut n = 0usize;
    for &backing in &cfg.backings {
        let (Some(ta), Some(tb)) = (
            targets.get(TargetKind::Tandem, backing),
            targets.get(TargetKind::Tgt, backing),
        ) else {
            continue;
        };
        for w in &cfg.workloads {
            // File-backed rows: the full matrix only with our own client; the other clients get
            // the rows the goals use, to keep a full run within half an hour.
            for &client in &cfg.clients {
                if backing == Backing::File && client != Client::Loadgen {
                    let keep = match cfg.mode {
                        Mode::Full | Mode::Quick => w.qd == 32 || w.bs > 4096,
                        Mode::Smoke => false,
                    };
                    if !keep {
                        continue;
                    }
                }
                if client_args(cfg, client, ta, w).is_none() {
                    continue;
                }
                let mut runs: Vec<(TargetKind, RunResult)> = Vec::new();
                for _rep in 0..cfg.reps {
                    for t in [ta, tb] {
                        n += 1;
                        if let Some(r) = run_one(cfg, client, t, w) {
                            eprintln!(
                                "  [{n}] {:?} {} {:<22} {:?}: {}",
                                backing,
                                client.name(),
                                w.label(),
                                t.kind,
                                match &r.error {
                                    None => format!(
                                        "{:.0} IOPS {:.1} MB/s p99 {} µs, target {:.1} µs/IO",
                                        r.iops,
                                        r.mb_s,
                                        r.p99_us.map(|v| format!("{v:.0}")).unwrap_or("-".into()),
                                        r.target_cpu_us_per_io
                                    ),
                                    Some(e) => format!("FAILED: {e}"),
                                }
                            );
                            if let Some(e) = &r.error {
                                report.failures.push(format!(
                                    "{backing:?} {} {} {:?}: {e}",
                                    client.name(),
                                    w.label(),
                                    t.kind
                                ));
                            }
                            runs.push((t.kind, r));
                        }
                    }
                }
                let ra: Vec<&RunResult> = runs
                    .iter()
                    .filter(|(k, _)| *k == TargetKind::Tandem)
                    .map(|(_, r)| r)
                    .collect();
                let rb: Vec<&RunResult> = runs
                    .iter()
                    .filter(|(k, _)| *k == TargetKind::Tgt)
                    .map(|(_, r)| r)
                    .collect();
                let tandem = summarize(&ra);
                let tgt = summarize(&rb);
                report.rows.push(Row {
                    backing,
                    client,
                    workload: *w,
                    label: w.label(),
                    iops_ratio: ratio(tandem.iops, tgt.iops),
                    p99_ratio: ratio_opt(tandem.p99_us, tgt.p99_us),
                    cpu_per_io_ratio: ratio(tandem.target_cpu_us_per_io, tgt.target_cpu_us_per_io),
                    tandem,
                    tgt,
                    runs,
                });
            }
        }
    }
    // RSS of the targets at the end of the run.
    for t in &targets.list {
        if let Some((rss, hwm)) = proc_rss_kib(t.pid) {
            report.setup.insert(
                format!("rss_end_{:?}_{:?}_mib", t.kind, t.backing).to_lowercase(),
                format!(
                    "{:.1} (peak {:.1}, RAM disk {:.0})",
                    rss as f64 / 1024.0,
                    hwm as f64 / 1024.0,
                    t.ram_bytes as f64 / 1048576.0
                ),
            );
        }
    }
    targets.shutdown();
    raw_disk(cfg, &mut report.limits, &mut report.failures, " (end)");
    report.load_after = sh("uptime", &[])
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    report.goals = crate::report::goals(&report, cfg);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iscsi_perf_output() {
        let out = "iscsi-perf version 0.1\n\rlba 1, iops current 10 (0 MB/s), iops average 9 \
                   \riops average 132995 (519 MB/s)          \n\nfinished.\n";
        let p = parse_iscsi_perf(out, 4096, 3).unwrap();
        assert_eq!(p.iops, 132_995.0);
        assert_eq!(p.ops, 3.0 * 132_995.0);
        assert!((p.mb_s - 132_995.0 * 4096.0 / 1e6).abs() < 1e-6);
        assert!(parse_iscsi_perf("Login Failed.", 4096, 3).is_none());
    }

    #[test]
    fn fio_output() {
        let out = r#"fio: something on stderr
{"jobs":[{"read":{"iops":1000.5,"bw_bytes":4098048,"total_ios":3001,
  "clat_ns":{"mean":25000.0,"percentile":{"50.000000":20000,"99.000000":90000,"99.900000":150000}}},
  "write":{"iops":0,"bw_bytes":0,"total_ios":0,"clat_ns":{"mean":0}}}]}"#;
        let p = parse_fio(out, false).unwrap();
        assert_eq!(p.iops, 1000.5);
        assert_eq!(p.ops, 3001.0);
        assert_eq!(p.p50_us, Some(20.0));
        assert_eq!(p.p99_us, Some(90.0));
        assert_eq!(p.p99_9_us, Some(150.0));
        assert_eq!(p.percentiles.len(), 3);
        assert_eq!(p.percentiles[0], (50.0, 20.0));
        assert!(parse_fio(out, true).is_some_and(|w| w.p50_us.is_none()));
        assert!(parse_fio("no json", false).is_none());
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), 0.0);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median_opt(vec![None, Some(5.0)]), Some(5.0));
        assert_eq!(median_opt(vec![None]), None);
        assert_eq!(ratio(2.0, 0.0), None);
        assert_eq!(ratio(3.0, 1.5), Some(2.0));
    }

    #[test]
    fn workload_labels_and_sets() {
        assert_eq!(
            Workload::new(false, true, 4096, 32).label(),
            "4K randread QD32"
        );
        assert_eq!(
            Workload::new(true, false, 131_072, 8).label(),
            "128K seqwrite QD8"
        );
        assert_eq!(full_workloads().len(), 10);
        assert!(smoke_workloads().iter().all(|w| w.qd <= 8));
    }
}
