//! `tandem-bench`: Tandem vs tgt, same clients, one run. See docs/performance.md.
//!
//! ```text
//! tandem-bench            # full run (about 25 minutes on 2 cores)
//! tandem-bench --quick    # every row once, 2 s each
//! tandem-bench --smoke    # seconds; exits non-zero if any piece fails
//! ```
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tandem_perf::bench::{self, Backing, BenchConfig, Client, Mode};
use tandem_perf::report;

#[derive(Parser, Debug)]
#[command(
    name = "tandem-bench",
    version,
    about = "Tandem vs tgt with iscsi-perf, fio (libiscsi) and tandem-loadgen, A/B alternated, medians"
)]
struct Cli {
    /// Every row once, short runs.
    #[arg(long, conflicts_with = "smoke")]
    quick: bool,
    /// A seconds-long run of every piece (CI); non-zero exit if anything fails.
    #[arg(long)]
    smoke: bool,
    /// Repetitions per target (A/B alternated); default 3 (1 for --quick/--smoke).
    #[arg(long)]
    reps: Option<usize>,
    /// Seconds per client run; default 4 (2 for --quick, 1 for --smoke).
    #[arg(long)]
    seconds: Option<u64>,
    /// LUN size in MiB (RAM disk, /dev/shm file, image files); default 1024 (256 for --smoke).
    #[arg(long)]
    size_mib: Option<u64>,
    /// Where image files go (a real filesystem, not tmpfs).
    #[arg(long, default_value = "/var/tmp/tandem-perf")]
    workdir: PathBuf,
    /// Where results go; default perf/results for full runs, WORKDIR/<mode> otherwise.
    #[arg(long)]
    out_dir: Option<PathBuf>,
    #[arg(long, default_value = "target/release/tandem-dataplane")]
    dataplane: PathBuf,
    #[arg(long, default_value = "target/release/tandem-loadgen")]
    loadgen: PathBuf,
    /// fio built with the libiscsi engine (perf/build-fio-libiscsi.sh); skipped if missing.
    #[arg(long, default_value = "/var/cache/tandem-perf/fio-libiscsi")]
    fio_libiscsi: PathBuf,
    /// Clients, comma separated: loadgen, iscsi-perf, fio.
    #[arg(long, default_value = "loadgen,iscsi-perf,fio")]
    clients: String,
    /// Backings, comma separated: ram, file.
    #[arg(long, default_value = "ram,file")]
    backings: String,
    #[arg(long, default_value_t = 1)]
    target_core: usize,
    #[arg(long, default_value_t = 0)]
    client_core: usize,
    #[arg(long, default_value = "adaptive")]
    poll_mode: String,
    /// Extra arguments for `tandem-dataplane serve`, space separated (e.g. "--socket-io uring").
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    dataplane_args: String,
    /// First of the loopback ports used (targets on the next few).
    #[arg(long, default_value_t = 3400)]
    port_base: u16,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mode = if cli.smoke {
        Mode::Smoke
    } else if cli.quick {
        Mode::Quick
    } else {
        Mode::Full
    };
    let clients: Vec<Client> = cli
        .clients
        .split(',')
        .filter_map(|c| match c.trim() {
            "loadgen" | "tandem-loadgen" => Some(Client::Loadgen),
            "iscsi-perf" => Some(Client::IscsiPerf),
            "fio" => Some(Client::Fio),
            _ => None,
        })
        .collect();
    let backings: Vec<Backing> = cli
        .backings
        .split(',')
        .filter_map(|b| match b.trim() {
            "ram" => Some(Backing::Ram),
            "file" => Some(Backing::File),
            _ => None,
        })
        .collect();
    let fio_ok = cli.fio_libiscsi.is_file();
    if clients.contains(&Client::Fio) && !fio_ok {
        eprintln!(
            "tandem-bench: {} missing (run perf/build-fio-libiscsi.sh); fio client skipped",
            cli.fio_libiscsi.display()
        );
    }
    let (reps, seconds, size_mib, workloads) = match mode {
        Mode::Full => (3, 4, 1024, bench::full_workloads()),
        Mode::Quick => (1, 2, 1024, bench::full_workloads()),
        Mode::Smoke => (1, 1, 256, bench::smoke_workloads()),
    };
    let out_dir = cli.out_dir.clone().unwrap_or_else(|| match mode {
        Mode::Full => PathBuf::from("perf/results"),
        Mode::Quick => cli.workdir.join("quick"),
        Mode::Smoke => cli.workdir.join("smoke"),
    });
    let cfg = BenchConfig {
        mode,
        reps: cli.reps.unwrap_or(reps).max(1),
        seconds: cli.seconds.unwrap_or(seconds).max(1),
        size_mib: cli.size_mib.unwrap_or(size_mib).max(64),
        workdir: cli.workdir.clone(),
        out_dir: out_dir.clone(),
        dataplane: cli.dataplane.clone(),
        loadgen: cli.loadgen.clone(),
        fio_libiscsi: fio_ok.then(|| cli.fio_libiscsi.clone()),
        clients: clients
            .into_iter()
            .filter(|c| *c != Client::Fio || fio_ok)
            .collect(),
        backings,
        target_core: cli.target_core,
        client_core: cli.client_core,
        poll_mode: cli.poll_mode.clone(),
        dataplane_args: cli.dataplane_args.split_whitespace().map(String::from).collect(),
        port_base: cli.port_base,
        workloads,
    };
    let r = match bench::run(&cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tandem-bench: {e}");
            return ExitCode::from(1);
        }
    };
    let md = report::markdown(&r);
    let svg = report::svg(&r);
    let day = r.date.get(..10).unwrap_or("today").to_string();
    let stem = format!("{day}-{}", r.host);
    if let Err(e) = std::fs::create_dir_all(&out_dir) {
        eprintln!("tandem-bench: {}: {e}", out_dir.display());
        return ExitCode::from(1);
    }
    let json = serde_json::to_string_pretty(&r).unwrap_or_default();
    for (ext, body) in [("json", &json), ("md", &md), ("svg", &svg)] {
        let p = out_dir.join(format!("{stem}.{ext}"));
        if let Err(e) = std::fs::write(&p, body) {
            eprintln!("tandem-bench: {}: {e}", p.display());
            return ExitCode::from(1);
        }
        eprintln!("tandem-bench: wrote {}", p.display());
    }
    println!("{md}");
    if !r.failures.is_empty() {
        eprintln!("tandem-bench: {} failure(s)", r.failures.len());
        return ExitCode::from(if mode == Mode::Smoke { 1 } else { 2 });
    }
    ExitCode::SUCCESS
}
