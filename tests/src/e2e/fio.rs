//! fio with the libiscsi I/O engine as a second, independent host: it writes stamped,
//! checksummed blocks (`--verify=crc32c`) over its own iSCSI session and later reads every one
//! of them back and checks it (`--verify_only`), through any node. It knows nothing of
//! Tandem, so it checks the end-to-end tests' own writer and model too.
//!
//! Debian's fio has no libiscsi engine; `perf/build-fio-libiscsi.sh` builds one from Debian's
//! source and caches it at [`CACHED`] (`scripts/install-deps.sh` runs it, so CI has it).
//! The libiscsi engine has no multipath and no retries: one session to one portal, and any
//! answer other than GOOD (NOT READY, UNIT ATTENTION) ends the job with an error. Tests
//! therefore write only through a node that keeps serving across the failure, and read back
//! through every node afterwards. A node that keeps serving still reports a UNIT ATTENTION
//! (ASYMMETRIC ACCESS STATE CHANGED) when its partner leaves or returns, which a real host
//! retries; so the area is written in slices, one short fio job each ([`SlicedWrite`]),
//! and a slice whose job ended on a UNIT ATTENTION alone is written again (same seed, same
//! data). Any other error fails the slice for good. Where the node written through itself
//! pauses in a failover (its lease ends until the authority moves), a slice ended by NOT
//! READY 04/0C is written again too ([`Retry::UnitAttentionOrNotReady`]), as a host with one
//! path that queues I/O retries it.
//!
//! Pure parts (the URL, the argument list, reading fio's JSON) are separate from running it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where `perf/build-fio-libiscsi.sh` caches its fio.
pub const CACHED: &str = "/var/cache/tandem-perf/fio-libiscsi";

/// The fio binary with the libiscsi engine: `$TANDEM_FIO_LIBISCSI`, else [`CACHED`].
/// Panics with what to run when there is none: a test that needs it must not pass without it.
pub fn locate() -> PathBuf {
    let path = std::env::var_os("TANDEM_FIO_LIBISCSI")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(CACHED));
    match has_libiscsi(&path) {
        Ok(true) => path,
        Ok(false) => panic!(
            "{} has no libiscsi I/O engine: run perf/build-fio-libiscsi.sh (scripts/install-deps.sh does) or set TANDEM_FIO_LIBISCSI",
            path.display()
        ),
        Err(e) => panic!(
            "fio with the libiscsi I/O engine is needed at {} ({e}): run perf/build-fio-libiscsi.sh (scripts/install-deps.sh does) or set TANDEM_FIO_LIBISCSI",
            path.display()
        ),
    }
}

fn has_libiscsi(fio: &Path) -> std::io::Result<bool> {
    let out = Command::new(fio)
        .arg("--enghelp")
        .stdin(Stdio::null())
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == "libiscsi"))
}

/// fio's filename for a LUN: `iscsi://IP:PORT/IQN/LUN`, with every `:` escaped (fio splits
/// file names at unescaped colons).
pub fn iscsi_filename(portal: SocketAddr, iqn: &str, lun: u32) -> String {
    format!("iscsi://{portal}/{iqn}/{lun}").replace(':', "\\:")
}

/// One verify workload: random 4 KiB writes at `iodepth`, each block of the area written
/// exactly once with a crc32c header, read back and checked at the end of the job (and
/// every `verify_backlog` writes during it).
#[derive(Clone, Debug)]
pub struct VerifyJob {
    /// fio's job name (also in its messages).
    pub name: String,
    pub filename: String,
    pub initiator: String,
    /// Byte offset and length of the area.
    pub offset: u64,
    pub size: u64,
    pub block_size: u64,
    pub iodepth: u32,
    /// Writes per second at most (None: as fast as it goes), so that a job spans a failure.
    pub rate_iops: Option<u32>,
    /// The seed of the offsets and the data: the read-back must use the writer's.
    pub seed: u64,
}

impl VerifyJob {
    /// fio's arguments for the writing job (`verify_only`: false) or the read-back of what
    /// an identical job wrote (`verify_only`: true), JSON output to `output`.
    pub fn args(&self, verify_only: bool, output: &Path) -> Vec<String> {
        let mut a = output_args(output);
        a.extend(self.job_args(verify_only));
        a
    }

    /// This job's part of a command line (from its `--name`).
    pub fn job_args(&self, verify_only: bool) -> Vec<String> {
        let mut a = vec![
            format!("--name={}", self.name),
            "--ioengine=libiscsi".into(),
            format!("--filename={}", self.filename),
            format!("--initiator={}", self.initiator),
            "--rw=randwrite".into(),
            format!("--bs={}", self.block_size),
            format!("--offset={}", self.offset),
            format!("--size={}", self.size),
            format!("--iodepth={}", self.iodepth),
            format!("--randseed={}", self.seed),
            "--verify=crc32c".into(),
            // A bad block ends the job with an error, after it was reported.
            "--verify_fatal=1".into(),
            "--do_verify=1".into(),
        ];
        if verify_only {
            a.push("--verify_only".into());
        } else {
            // Checked while writing, every 16 writes: also the writes of a run that a
            // UNIT ATTENTION ends, which its slice's next run overwrites.
            a.push("--verify_backlog=16".into());
            if let Some(r) = self.rate_iops {
                a.push(format!("--rate_iops={r}"));
            }
        }
        a
    }

    /// Blocks in the area: what a complete job writes, and what a read-back must check.
    pub fn blocks(&self) -> u64 {
        self.size / self.block_size
    }

    /// The job split into `n` jobs on consecutive equal parts of its area, each with a seed
    /// of its own (derived from this one).
    pub fn slices(&self, n: u64) -> Vec<VerifyJob> {
        let part = self.size / n / self.block_size * self.block_size;
        (0..n)
            .map(|i| VerifyJob {
                name: format!("{}-{i}", self.name),
                offset: self.offset + i * part,
                size: part,
                seed: self.seed * 1000 + i,
                ..self.clone()
            })
            .collect()
    }
}

/// Command-line options (before the first job): JSON report to `output`.
fn output_args(output: &Path) -> Vec<String> {
    vec![
        "--output-format=json".into(),
        format!("--output={}", output.display()),
    ]
}

/// Whether a failed job's messages show only UNIT ATTENTION answers (which a host retries)
/// and no other failed command or verify failure.
pub fn only_unit_attention(stderr: &str) -> bool {
    only_retryable(stderr, Retry::UnitAttention)
}

/// Which failed commands end a slice's run with a retry of the slice (same seed, same data)
/// rather than a failure: what a host with a single path retries on that path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// UNIT ATTENTION only: the node writes through is expected to serve throughout.
    UnitAttention,
    /// Also NOT READY 04/0C (LOGICAL UNIT NOT ACCESSIBLE, ASYMMETRIC ACCESS STATE
    /// TRANSITION): a node that pauses while its authority moves. A host with one path
    /// (dm-multipath's `queue_if_no_path`) queues and retries such a command there.
    UnitAttentionOrNotReady,
}

impl Retry {
    /// Runs of one slice at most: a partner leaving and returning is two UNIT ATTENTIONs;
    /// a pause with NOT READY may take a run every [`NOT_READY_BACKOFF`] for the failover
    /// bound (20 s).
    fn attempts(self) -> u32 {
        match self {
            Retry::UnitAttention => 4,
            Retry::UnitAttentionOrNotReady => 60,
        }
    }

    /// libiscsi spells a sense key `NOT_READY` in a failed command and `NOT READY` in a
    /// failed login's TEST UNIT READY.
    fn accepts(self, failed_line: &str) -> bool {
        let l = failed_line.replace(' ', "_");
        l.contains("UNIT_ATTENTION")
            || (self == Retry::UnitAttentionOrNotReady
                && l.contains("NOT_READY")
                && l.contains("0x040c"))
    }
}

/// How long a slice waits before it is written again after a NOT READY (a host's path
/// checker interval, shortened).
pub const NOT_READY_BACKOFF: Duration = Duration::from_millis(300);

/// Whether a failed job's messages show only failed commands that `retry` accepts, and no
/// other failure and no verify failure.
pub fn only_retryable(stderr: &str, retry: Retry) -> bool {
    let failed: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("request failed") || l.contains("failed to connect to LUN"))
        .collect();
    !failed.is_empty()
        && failed.iter().all(|l| retry.accepts(l))
        && !stderr.contains("verify")
        && !stderr.contains("bad magic")
}

/// What one fio job reported (`--output-format=json`, `jobs[0]`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FioSummary {
    /// fio's error number for the job (0: none; 84 EILSEQ: a block failed its check).
    pub error: i64,
    pub writes: u64,
    /// Reads: the checks of written blocks (fio verifies by reading back).
    pub reads: u64,
    pub write_iops: f64,
    pub read_iops: f64,
    /// The longest write (submission to completion): the pause a failure caused this host.
    pub write_lat_max: Duration,
    pub write_lat_mean: Duration,
    pub runtime: Duration,
}

impl FioSummary {
    pub fn line(&self) -> String {
        format!(
            "error {}, {} writes ({:.0} IOPS, mean {} us, longest {} ms), {} verify reads ({:.0} IOPS), runtime {} ms",
            self.error,
            self.writes,
            self.write_iops,
            self.write_lat_mean.as_micros(),
            self.write_lat_max.as_millis(),
            self.reads,
            self.read_iops,
            self.runtime.as_millis()
        )
    }
}

/// Reads fio's JSON output (anything fio printed before the first `{` is skipped): the
/// first job.
pub fn parse(text: &str) -> Result<FioSummary, String> {
    parse_jobs(text)?
        .into_iter()
        .next()
        .ok_or_else(|| "fio's JSON has no job".to_string())
}

/// Every job of fio's JSON output, in order.
pub fn parse_jobs(text: &str) -> Result<Vec<FioSummary>, String> {
    let start = text.find('{').ok_or("no JSON in fio's output")?;
    let v: serde_json::Value =
        serde_json::from_str(&text[start..]).map_err(|e| format!("fio's JSON: {e}"))?;
    let jobs = v["jobs"].as_array().ok_or("fio's JSON has no jobs")?;
    jobs.iter().map(job_summary).collect()
}

fn job_summary(job: &serde_json::Value) -> Result<FioSummary, String> {
    let u = |x: &serde_json::Value| x.as_u64().unwrap_or(0);
    let f = |x: &serde_json::Value| x.as_f64().unwrap_or(0.0);
    let ns = |x: &serde_json::Value| Duration::from_nanos(x.as_f64().unwrap_or(0.0) as u64);
    Ok(FioSummary {
        error: job["error"].as_i64().ok_or("fio's JSON: no error field")?,
        writes: u(&job["write"]["total_ios"]),
        reads: u(&job["read"]["total_ios"]),
        write_iops: f(&job["write"]["iops"]),
        read_iops: f(&job["read"]["iops"]),
        write_lat_max: ns(&job["write"]["lat_ns"]["max"]),
        write_lat_mean: ns(&job["write"]["lat_ns"]["mean"]),
        runtime: Duration::from_millis(u(&job["job_runtime"])),
    })
}

/// A finished fio run.
#[derive(Debug)]
pub struct FioRun {
    /// The first job.
    pub summary: FioSummary,
    /// Every job (a read-back of several slices runs one job per slice).
    pub jobs: Vec<FioSummary>,
    pub exit_ok: bool,
    /// fio's messages (errors and verify failures are printed here).
    pub stderr: String,
    pub took: Duration,
}

impl FioRun {
    /// Panics unless fio exited cleanly with no error, and counted `blocks` writes and read
    /// back and checked `blocks` blocks (so that a job cut short cannot pass). A read-back
    /// (`--verify_only`) counts the writes it did not repeat as done too.
    pub fn expect_clean(&self, what: &str, blocks: u64) {
        let s = &self.summary;
        assert!(
            self.exit_ok && self.jobs.iter().all(|j| j.error == 0),
            "fio {what}: error {} (exit ok: {}): {}",
            s.error,
            self.exit_ok,
            self.stderr.trim()
        );
        let writes: u64 = self.jobs.iter().map(|j| j.writes).sum();
        let reads: u64 = self.jobs.iter().map(|j| j.reads).sum();
        assert_eq!(writes, blocks, "fio {what}: blocks written");
        assert_eq!(reads, blocks, "fio {what}: blocks read back and checked");
    }

    /// The jobs' totals (reads, writes, the longest write, IOPS of the checks).
    pub fn totals(&self) -> FioSummary {
        let mut t = FioSummary {
            error: self
                .jobs
                .iter()
                .map(|j| j.error)
                .find(|e| *e != 0)
                .unwrap_or(0),
            ..FioSummary::default()
        };
        for j in &self.jobs {
            t.writes += j.writes;
            t.reads += j.reads;
            t.write_lat_max = t.write_lat_max.max(j.write_lat_max);
            t.runtime += j.runtime;
        }
        t.read_iops = t.reads as f64 / self.took.as_secs_f64().max(1e-3);
        t
    }
}

/// fio running in a network namespace (`ip netns exec`); killed if dropped unfinished.
pub struct Fio {
    child: Option<Child>,
    dir: tempfile::TempDir,
    started: Instant,
}

impl Fio {
    /// Starts `fio` with `job` in namespace `ns`: the writing job, or the read-back.
    pub fn start(fio: &Path, ns: &str, job: &VerifyJob, verify_only: bool) -> Fio {
        Self::start_jobs(fio, ns, std::slice::from_ref(job), verify_only)
    }

    /// Starts one `fio` with several jobs, run one after the other (`--stonewall`).
    pub fn start_jobs(fio: &Path, ns: &str, jobs: &[VerifyJob], verify_only: bool) -> Fio {
        let dir = tempfile::Builder::new()
            .prefix("tandem-fio")
            .tempdir_in(super::procs::scratch_dir())
            .expect("fio scratch dir");
        let stderr = std::fs::File::create(dir.path().join("stderr")).expect("fio stderr file");
        let mut args = output_args(&dir.path().join("out.json"));
        for j in jobs {
            args.extend(j.job_args(verify_only));
            args.push("--stonewall".into());
        }
        // In its scratch directory: fio saves a job's verify state there
        // (`local-<job>-<n>-verify.state`) when a run ends early.
        let child = Command::new("ip")
            .current_dir(dir.path())
            .args(["netns", "exec", ns])
            .arg(fio)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start fio in the namespace");
        Fio {
            child: Some(child),
            dir,
            started: Instant::now(),
        }
    }

    /// Waits for fio to end (killed after `timeout`) and reads its report.
    pub fn finish(self, timeout: Duration) -> FioRun {
        self.finish_or_stop(timeout, &AtomicBool::new(false))
    }

    /// As [`Fio::finish`], and killed as soon as `stop` is set.
    fn finish_or_stop(mut self, timeout: Duration, stop: &AtomicBool) -> FioRun {
        let mut child = self.child.take().expect("fio started");
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait for fio") {
                break Some(s);
            }
            if self.started.elapsed() > timeout || stop.load(Ordering::SeqCst) {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let took = self.started.elapsed();
        let mut stderr =
            std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default();
        if status.is_none() {
            stderr.push_str(&format!("\n(fio killed after {timeout:?})"));
        }
        let out = std::fs::read_to_string(self.dir.path().join("out.json")).unwrap_or_default();
        let jobs = parse_jobs(&out)
            .ok()
            .filter(|j| !j.is_empty())
            .unwrap_or_else(|| {
                stderr.push_str("\n(no report from fio)");
                vec![FioSummary {
                    error: -1,
                    ..FioSummary::default()
                }]
            });
        FioRun {
            summary: jobs[0].clone(),
            jobs,
            exit_ok: status.is_some_and(|s| s.success()),
            stderr,
            took,
        }
    }
}

/// One slice of a [`SlicedWrite`]: its last run and how many runs it took.
#[derive(Debug)]
pub struct SliceRun {
    pub job: VerifyJob,
    pub attempts: u32,
    pub run: FioRun,
    /// Its earlier runs, each ended by a UNIT ATTENTION.
    pub failed: Vec<FioRun>,
    /// When its last run ended.
    pub ended: Instant,
}

/// The slices of a verify job written one after the other by fio processes on a thread of
/// their own (the test goes on cutting links meanwhile); a slice whose job ended on UNIT
/// ATTENTION answers alone is written again, up to a bound.
pub struct SlicedWrite {
    thread: Option<std::thread::JoinHandle<Vec<SliceRun>>>,
    stop: Arc<AtomicBool>,
    pub started: Instant,
}

impl SlicedWrite {
    /// Retries a slice after UNIT ATTENTION answers only.
    pub fn start(fio: &Path, ns: &str, slices: Vec<VerifyJob>, per_run: Duration) -> SlicedWrite {
        Self::start_retrying(fio, ns, slices, per_run, Retry::UnitAttention)
    }

    /// As [`SlicedWrite::start`], retrying a slice after the failed commands `retry` accepts.
    pub fn start_retrying(
        fio: &Path,
        ns: &str,
        slices: Vec<VerifyJob>,
        per_run: Duration,
        retry: Retry,
    ) -> SlicedWrite {
        let stop = Arc::new(AtomicBool::new(false));
        let (fio, ns, flag) = (fio.to_path_buf(), ns.to_string(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut done = Vec::new();
            for job in slices {
                let mut attempts = 0;
                let mut failed = Vec::new();
                loop {
                    attempts += 1;
                    let run = Fio::start(&fio, &ns, &job, false).finish_or_stop(per_run, &flag);
                    // A login refused with NOT READY ends fio with a failure status but
                    // a job report of error 0 and no I/O.
                    let again = (run.summary.error != 0 || !run.exit_ok)
                        && only_retryable(&run.stderr, retry)
                        && attempts < retry.attempts()
                        && !flag.load(Ordering::SeqCst);
                    if again {
                        if !only_unit_attention(&run.stderr) {
                            std::thread::sleep(NOT_READY_BACKOFF);
                        }
                        failed.push(run);
                        continue;
                    }
                    let ended_badly = run.summary.error != 0 || !run.exit_ok;
                    done.push(SliceRun {
                        job,
                        attempts,
                        run,
                        failed,
                        ended: Instant::now(),
                    });
                    if ended_badly {
                        return done;
                    }
                    break;
                }
                if flag.load(Ordering::SeqCst) {
                    break;
                }
            }
            done
        });
        SlicedWrite {
            thread: Some(thread),
            stop,
            started: Instant::now(),
        }
    }

    /// Waits for every slice (or the first that failed for good).
    pub fn finish(mut self) -> Vec<SliceRun> {
        self.thread
            .take()
            .expect("started")
            .join()
            .expect("the fio thread panicked")
    }
}

impl Drop for SlicedWrite {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Fio {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filename_escapes_every_colon() {
        let f = iscsi_filename(
            "10.210.1.2:3260".parse().unwrap(),
            "iqn.2026-11.io.tandem:node-a:disk1",
            0,
        );
        assert_eq!(
            f,
            "iscsi\\://10.210.1.2\\:3260/iqn.2026-11.io.tandem\\:node-a\\:disk1/0"
        );
    }

    fn job() -> VerifyJob {
        VerifyJob {
            name: "v".into(),
            filename: "f".into(),
            initiator: "iqn.x:y".into(),
            offset: 16 << 20,
            size: 8 << 20,
            block_size: 4096,
            iodepth: 4,
            rate_iops: Some(300),
            seed: 7,
        }
    }

    #[test]
    fn read_back_repeats_the_writers_offsets_without_writing() {
        let out = Path::new("/tmp/o.json");
        let w = job().args(false, out);
        let r = job().args(true, out);
        for common in [
            "--randseed=7",
            "--offset=16777216",
            "--size=8388608",
            "--bs=4096",
        ] {
            assert!(w.iter().any(|a| a == common) && r.iter().any(|a| a == common));
        }
        assert!(r.iter().any(|a| a == "--verify_only"));
        assert!(!w.iter().any(|a| a == "--verify_only"));
        assert!(w.iter().any(|a| a == "--rate_iops=300"));
        assert!(!r.iter().any(|a| a.starts_with("--rate_iops")));
        assert_eq!(job().blocks(), 2048);
    }

    #[test]
    fn slices_cover_the_area_with_seeds_of_their_own() {
        let s = job().slices(4);
        assert_eq!(s.len(), 4);
        assert_eq!(s[0].offset, 16 << 20);
        assert_eq!(s[3].offset + s[3].size, (16 << 20) + (8 << 20));
        assert!(s.windows(2).all(|w| w[0].offset + w[0].size == w[1].offset));
        assert_eq!(s.iter().map(VerifyJob::blocks).sum::<u64>(), 2048);
        assert_ne!(s[0].seed, s[1].seed);
    }

    #[test]
    fn only_a_unit_attention_is_retried() {
        let ua = "iscsi: request failed with error SENSE KEY:UNIT_ATTENTION(6) ASCQ:(null)(0x2a06).\nfio: io_u error on file x: Operation not permitted: write offset=1, buflen=4096\n";
        assert!(only_unit_attention(ua));
        let nr = "iscsi: request failed with error SENSE KEY:NOT_READY(2) ASCQ:(null)(0x040c).\n";
        assert!(!only_unit_attention(nr));
        assert!(!only_unit_attention(&format!("{ua}{nr}")));
        assert!(!only_unit_attention(&format!(
            "{ua}verify: bad magic header 4557, wanted acca\n"
        )));
        assert!(!only_unit_attention("fio: some other failure\n"));
    }

    #[test]
    fn not_ready_is_retried_only_when_asked_and_only_04_0c() {
        let nr = "iscsi: request failed with error SENSE KEY:NOT_READY(2) ASCQ:(null)(0x040c).\n";
        let ua =
            "iscsi: request failed with error SENSE KEY:UNIT_ATTENTION(6) ASCQ:(null)(0x2a06).\n";
        assert!(!only_retryable(nr, Retry::UnitAttention));
        assert!(only_retryable(nr, Retry::UnitAttentionOrNotReady));
        assert!(only_retryable(
            &format!("{ua}{nr}"),
            Retry::UnitAttentionOrNotReady
        ));
        let other_nr =
            "iscsi: request failed with error SENSE KEY:NOT_READY(2) ASCQ:(null)(0x0402).\n";
        assert!(!only_retryable(other_nr, Retry::UnitAttentionOrNotReady));
        assert!(!only_retryable(
            &format!("{nr}verify: bad magic header 4557, wanted acca\n"),
            Retry::UnitAttentionOrNotReady
        ));
        assert!(!only_retryable("", Retry::UnitAttentionOrNotReady));
        let at_login =
            "iscsi: failed to connect to LUN : SENSE KEY:NOT READY(2) ASCQ:(null)(0x040c)\n";
        assert!(only_retryable(at_login, Retry::UnitAttentionOrNotReady));
        assert!(!only_retryable(at_login, Retry::UnitAttention));
    }

    #[test]
    fn parses_fios_json_after_other_output() {
        let text = r#"fio: some note
{"fio version":"fio-3.33","jobs":[{"jobname":"v","error":0,"job_runtime":8123,
 "read":{"total_ios":2048,"iops":5000.5,"lat_ns":{"max":1000,"mean":500.0}},
 "write":{"total_ios":2048,"iops":250.2,"lat_ns":{"max":2500000000,"mean":1500000.0}}}]}"#;
        let s = parse(text).unwrap();
        assert_eq!(s.error, 0);
        assert_eq!((s.writes, s.reads), (2048, 2048));
        assert_eq!(s.write_lat_max, Duration::from_millis(2500));
        assert_eq!(s.write_lat_mean, Duration::from_micros(1500));
        assert_eq!(s.runtime, Duration::from_millis(8123));
        assert!(parse("fio: error").is_err());
        assert!(parse(r#"{"jobs":[]}"#).is_err());
        let two =
            r#"{"jobs":[{"error":0,"read":{"total_ios":1}},{"error":84,"read":{"total_ios":2}}]}"#;
        let j = parse_jobs(two).unwrap();
        assert_eq!((j.len(), j[1].error, j[1].reads), (2, 84, 2));
    }
}
