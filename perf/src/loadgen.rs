//! `tandem-loadgen` as a library: options, the multi-job run, and the JSON result.

use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::engine::{run_job, CdbSize, JobSpec, Mix};
use crate::session::{discover_first, InitError, Session, SessionKind};
use crate::sys::{self_cpu, CpuTimes};

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadgenConfig {
    pub portal: SocketAddr,
    /// Target IQN; `None` = the first one SendTargets offers.
    pub target: Option<String>,
    pub initiator: String,
    pub lun: u64,
    pub mix: Mix,
    pub random: bool,
    pub io_bytes: u32,
    pub queue_depth: usize,
    pub jobs: usize,
    pub duration: Option<Duration>,
    pub ops_max: Option<u64>,
    pub ramp: Duration,
    pub span_bytes: u64,
    pub verify: bool,
    pub cdb: CdbSize,
    pub seed: u64,
    /// Busy-poll non-blocking sockets instead of blocking reads.
    pub spin: bool,
}

/// Latency summary in microseconds.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Latency {
    pub mean_us: f64,
    pub min_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p99_9_us: f64,
    pub p99_99_us: f64,
    pub max_us: f64,
    /// (percentile, µs) pairs for plots.
    pub percentiles: Vec<(f64, f64)>,
}

/// Percentiles reported for plots.
pub const PLOT_PERCENTILES: [f64; 14] = [
    1.0, 5.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999,
];

impl Latency {
    pub fn from_ns(h: &Histogram<u64>) -> Latency {
        let us = |v: u64| v as f64 / 1000.0;
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            mean_us: h.mean() / 1000.0,
            min_us: us(h.min()),
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p99_9_us: us(h.value_at_quantile(0.999)),
            p99_99_us: us(h.value_at_quantile(0.9999)),
            max_us: us(h.max()),
            percentiles: PLOT_PERCENTILES
                .iter()
                .map(|&p| (p, us(h.value_at_quantile(p / 100.0))))
                .collect(),
        }
    }
}

/// The JSON `tandem-loadgen` prints.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct LoadgenResult {
    pub target: String,
    pub portal: String,
    pub rw: String,
    pub io_bytes: u32,
    pub queue_depth: usize,
    pub jobs: usize,
    pub seconds: f64,
    pub ops: u64,
    pub read_ops: u64,
    pub write_ops: u64,
    pub iops: f64,
    /// 10^6 bytes per second.
    pub mb_s: f64,
    pub latency: Latency,
    pub cpu: CpuTimes,
    pub iops_per_cpu_s: f64,
    pub errors: u64,
    pub verify_failures: u64,
    pub first_error: Option<String>,
}

/// SAM-2 single-level LUN encoding in the 8-byte LUN field (peripheral or flat addressing).
pub fn encode_lun(lun: u64) -> u64 {
    if lun < 256 {
        lun << 48
    } else {
        ((0x4000 | (lun & 0x3fff)) << 48) & 0xffff_0000_0000_0000
    }
}

fn isid_for(job: usize) -> [u8; 6] {
    let pid = std::process::id();
    let p = pid.to_be_bytes();
    // Type 2 (random) qualifier: 0x80 | ... ; unique per process and job.
    [0x80, 0x3d, p[2], p[3], p[1], job as u8]
}

/// Logs in `jobs` sessions, runs them together, logs out, and summarizes.
pub fn run(cfg: &LoadgenConfig) -> Result<LoadgenResult, InitError> {
    let target = match &cfg.target {
        Some(t) => t.clone(),
        None => discover_first(cfg.portal, &cfg.initiator)?,
    };
    let mut sessions = Vec::with_capacity(cfg.jobs);
    let mut geometry = None;
    for j in 0..cfg.jobs.max(1) {
        let mut s = Session::login(
            cfg.portal,
            &cfg.initiator,
            &SessionKind::Normal(target.clone()),
            isid_for(j),
        )?;
        let g = s.read_capacity(encode_lun(cfg.lun))?;
        geometry.get_or_insert(g);
        sessions.push(s);
    }
    let (lun_blocks, block_len) = geometry.unwrap_or((0, 512));
    let jobs = sessions.len();
    let start_barrier = Arc::new(Barrier::new(jobs + 1));
    let end_barrier = Arc::new(Barrier::new(jobs + 1));
    let start = Instant::now() + Duration::from_millis(20);
    let mut handles = Vec::with_capacity(jobs);
    for (j, mut s) in sessions.into_iter().enumerate() {
        let spec = JobSpec {
            lun: encode_lun(cfg.lun),
            mix: cfg.mix,
            random: cfg.random,
            io_bytes: cfg.io_bytes,
            queue_depth: cfg.queue_depth,
            lun_blocks,
            block_len,
            span_bytes: cfg.span_bytes,
            duration: cfg.duration,
            ops_max: cfg.ops_max.map(|n| n.div_ceil(jobs as u64)),
            ramp: cfg.ramp,
            verify: cfg.verify,
            cdb: cfg.cdb,
            seed: cfg.seed,
            job_index: j,
            spin: cfg.spin,
        };
        let (sb, eb) = (start_barrier.clone(), end_barrier.clone());
        handles.push(std::thread::spawn(move || {
            sb.wait();
            let now = Instant::now();
            if start > now {
                std::thread::sleep(start - now);
            }
            let r = run_job(&mut s, spec, start);
            eb.wait();
            if r.is_ok() && s.stream.set_nonblocking(false).is_ok() {
                let _ = s.logout();
            }
            r
        }));
    }
    start_barrier.wait();
    let cpu0 = self_cpu();
    end_barrier.wait();
    let cpu = self_cpu().since(&cpu0);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
        .map_err(|e| InitError::Protocol(e.to_string()))?;
    let mut out = LoadgenResult {
        target,
        portal: cfg.portal.to_string(),
        rw: format!(
            "{}{}",
            if cfg.random { "rand" } else { "seq" },
            match cfg.mix {
                Mix::Read => "read".to_string(),
                Mix::Write => "write".to_string(),
                Mix::Mixed(p) => format!("rw{p}"),
            }
        ),
        io_bytes: cfg.io_bytes,
        queue_depth: cfg.queue_depth,
        jobs,
        cpu,
        ..Default::default()
    };
    let mut seconds: f64 = 0.0;
    let mut first_err = None;
    for h in handles {
        match h.join() {
            Ok(Ok(r)) => {
                let _ = hist.add(&r.hist_ns);
                out.read_ops += r.read_ops;
                out.write_ops += r.write_ops;
                out.errors += r.errors;
                out.verify_failures += r.verify_failures;
                out.mb_s += r.bytes as f64;
                seconds = seconds.max(r.measured.as_secs_f64());
                if out.first_error.is_none() {
                    out.first_error = r.first_error;
                }
            }
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(_) => {
                first_err.get_or_insert(InitError::Protocol("job thread panicked".into()));
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    out.ops = out.read_ops + out.write_ops;
    out.seconds = seconds;
    if seconds > 0.0 {
        out.iops = out.ops as f64 / seconds;
        out.mb_s /= seconds * 1e6;
    }
    if cpu.total_s() > 0.0 {
        out.iops_per_cpu_s = out.ops as f64 / cpu.total_s();
    }
    out.latency = Latency::from_ns(&hist);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lun_encoding() {
        assert_eq!(encode_lun(0), 0);
        assert_eq!(encode_lun(1), 0x0001_0000_0000_0000);
        assert_eq!(encode_lun(300), 0x412c_0000_0000_0000);
    }

    #[test]
    fn latency_summary() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap();
        }
        let l = Latency::from_ns(&h);
        assert!((l.p50_us - 500.0).abs() < 1.0, "{}", l.p50_us);
        assert!((l.p99_us - 990.0).abs() < 2.0, "{}", l.p99_us);
        assert_eq!(l.percentiles.len(), PLOT_PERCENTILES.len());
        assert_eq!(Latency::from_ns(&Histogram::new(3).unwrap()).p50_us, 0.0);
    }
}
