//! `tandem-loadgen`: an iSCSI initiator load generator that prints one JSON object.
//!
//! ```text
//! tandem-loadgen --portal 127.0.0.1:3260 --rw randread --bs 4k --qd 32 --time 10
//! ```
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use tandem_perf::engine::{CdbSize, Mix};
use tandem_perf::loadgen::{run, LoadgenConfig};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Rw {
    Randread,
    Randwrite,
    Read,
    Write,
    Randrw,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Poll {
    Block,
    Spin,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Cdb {
    #[value(name = "10")]
    Ten,
    #[value(name = "16")]
    Sixteen,
    Auto,
}

#[derive(Parser, Debug)]
#[command(
    name = "tandem-loadgen",
    version,
    about = "iSCSI load generator: pipelined READ/WRITE on one or more connections, latency in hdrhistogram, JSON out"
)]
struct Cli {
    /// Target portal.
    #[arg(long, default_value = "127.0.0.1:3260")]
    portal: SocketAddr,
    /// Target IQN (default: the first target SendTargets offers).
    #[arg(long)]
    target: Option<String>,
    #[arg(long, default_value = "iqn.2026-11.io.tandem:loadgen")]
    initiator: String,
    #[arg(long, default_value_t = 0)]
    lun: u64,
    #[arg(long, value_enum, default_value_t = Rw::Randread)]
    rw: Rw,
    /// Read percentage for --rw randrw.
    #[arg(long, default_value_t = 50)]
    rwmix_read: u8,
    /// Bytes per I/O (k/m suffixes allowed).
    #[arg(long, default_value = "4k", value_parser = parse_bytes)]
    bs: u64,
    /// Commands in flight per connection.
    #[arg(long, default_value_t = 32)]
    qd: usize,
    /// Connections (sessions), each with --qd commands in flight, one thread each.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Seconds to run (default 10 unless --ops is given).
    #[arg(long)]
    time: Option<f64>,
    /// Stop after this many I/Os in total.
    #[arg(long)]
    ops: Option<u64>,
    /// Seconds at the start whose I/Os are not counted.
    #[arg(long, default_value_t = 0.0)]
    ramp: f64,
    /// Use only the first SIZE bytes of the LUN (k/m/g suffixes; default all).
    #[arg(long, value_parser = parse_bytes, default_value = "0")]
    size: u64,
    /// Stamp written sectors with their LBA and check every read against what was written.
    #[arg(long)]
    verify: bool,
    /// CDB size.
    #[arg(long, value_enum, default_value_t = Cdb::Auto)]
    cdb: Cdb,
    #[arg(long, default_value_t = 0x5eed)]
    seed: u64,
    /// How a job waits for the target: block in read (default; cheapest per I/O) or busy-poll a
    /// non-blocking socket (lowest latency, burns the client core).
    #[arg(long, value_enum, default_value_t = Poll::Block)]
    poll: Poll,
    /// Pretty-print the JSON.
    #[arg(long)]
    pretty: bool,
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let lower = s.to_ascii_lowercase();
    let (num, mult) = match lower.trim_end_matches("ib").trim_end_matches('b') {
        t if t.ends_with('k') => (&t[..t.len() - 1], 1u64 << 10),
        t if t.ends_with('m') => (&t[..t.len() - 1], 1 << 20),
        t if t.ends_with('g') => (&t[..t.len() - 1], 1 << 30),
        t => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("bad size {s:?}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (mix, random) = match cli.rw {
        Rw::Randread => (Mix::Read, true),
        Rw::Randwrite => (Mix::Write, true),
        Rw::Read => (Mix::Read, false),
        Rw::Write => (Mix::Write, false),
        Rw::Randrw => (Mix::Mixed(cli.rwmix_read.min(100)), true),
    };
    let Ok(io_bytes) = u32::try_from(cli.bs) else {
        eprintln!("tandem-loadgen: --bs too large");
        return ExitCode::from(2);
    };
    let duration = match (cli.time, cli.ops) {
        (Some(t), _) => Some(Duration::from_secs_f64(t.max(0.001))),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(10)),
    };
    let cfg = LoadgenConfig {
        portal: cli.portal,
        target: cli.target,
        initiator: cli.initiator,
        lun: cli.lun,
        mix,
        random,
        io_bytes,
        queue_depth: cli.qd.max(1),
        jobs: cli.jobs.max(1),
        duration,
        ops_max: cli.ops,
        ramp: Duration::from_secs_f64(cli.ramp.max(0.0)),
        span_bytes: cli.size,
        verify: cli.verify,
        cdb: match cli.cdb {
            Cdb::Ten => CdbSize::Ten,
            Cdb::Sixteen => CdbSize::Sixteen,
            Cdb::Auto => CdbSize::Auto,
        },
        seed: cli.seed,
        spin: matches!(cli.poll, Poll::Spin),
    };
    match run(&cfg) {
        Ok(r) => {
            let json = if cli.pretty {
                serde_json::to_string_pretty(&r)
            } else {
                serde_json::to_string(&r)
            };
            println!(
                "{}",
                json.unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
            );
            if r.errors > 0 || r.verify_failures > 0 {
                eprintln!(
                    "tandem-loadgen: {} errors, {} verify failures; first: {}",
                    r.errors,
                    r.verify_failures,
                    r.first_error.as_deref().unwrap_or("-")
                );
                return ExitCode::from(1);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tandem-loadgen: {e}");
            ExitCode::from(1)
        }
    }
}
