//! Runs the replication simulator over a range of seeds (or replays one with a trace).
//!
//! ```text
//! tandem-ha-sim --shape 2n|2w|3n [--seed N | --seeds FROM..TO] [--bug NAME] [--authority-bug NAME] [--trace] [--keep-going] [--task-mgmt] [--journal ram|disk-failure|disk-continuous] [--pr]
//! ```
//!
//! It stops at the first failing seed, unless `--keep-going`: then it reports every failing
//! seed of the range and fails at the end.

use std::process::ExitCode;
use std::time::Instant;

use tandem_ha::journal::JournalKind;
use tandem_ha::sim::{run, AuthorityBug, Shape, SimParams};
use tandem_ha::PlantedBug;

fn parse_bug(s: &str) -> Option<PlantedBug> {
    Some(match s {
        "AckBeforePartner" => PlantedBug::AckBeforePartner,
        "NoConflictOrdering" => PlantedBug::NoConflictOrdering,
        "GenerationNotBumped" => PlantedBug::GenerationNotBumped,
        "ResyncWithoutRegionLock" => PlantedBug::ResyncWithoutRegionLock,
        "AcceptStaleEpoch" => PlantedBug::AcceptStaleEpoch,
        "NoReadBarrier" => PlantedBug::NoReadBarrier,
        "UnboundedHolding" => PlantedBug::UnboundedHolding,
        "ActivityNotBeforeWrite" => PlantedBug::ActivityNotBeforeWrite,
        "PrAnsweredBeforeApplied" => PlantedBug::PrAnsweredBeforeApplied,
        _ => return None,
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut shape = Shape::TwoNodes;
    let mut seeds = 0..100u64;
    let mut bug = None;
    let mut authority_bug = None;
    let mut trace = false;
    let mut keep_going = false;
    let mut task_mgmt = false;
    let mut pr = false;
    let mut active_ms = 300;
    let mut journal = JournalKind::Ram;
    let mut i = 0;
    while i < args.len() {
        let val = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--shape" => match Shape::parse(&val) {
                Some(s) => shape = s,
                None => return usage(&format!("unknown shape {val:?} (2n, 2w, 3n)")),
            },
            "--seed" => match val.parse::<u64>() {
                Ok(s) => seeds = s..s + 1,
                Err(_) => return usage("--seed takes a number"),
            },
            "--seeds" => {
                let Some((a, b)) = val.split_once("..") else {
                    return usage("--seeds FROM..TO");
                };
                match (a.parse::<u64>(), b.parse::<u64>()) {
                    (Ok(a), Ok(b)) if a < b => seeds = a..b,
                    _ => return usage("--seeds FROM..TO with FROM < TO"),
                }
            }
            "--active-ms" => match val.parse() {
                Ok(v) => active_ms = v,
                Err(_) => return usage("--active-ms takes a number"),
            },
            "--bug" => match parse_bug(&val) {
                Some(b) => bug = Some(b),
                None => return usage(&format!("unknown planted bug {val:?}")),
            },
            "--authority-bug" => match val.as_str() {
                "LeaseNotWaited" => authority_bug = Some(AuthorityBug::LeaseNotWaited),
                _ => return usage(&format!("unknown authority bug {val:?}")),
            },
            "--journal" => match val.as_str() {
                "ram" => journal = JournalKind::Ram,
                "disk-failure" => journal = JournalKind::DiskFailure,
                "disk-continuous" => journal = JournalKind::DiskContinuous,
                _ => return usage(&format!("unknown journal {val:?}")),
            },
            "--trace" => {
                trace = true;
                i += 1;
                continue;
            }
            "--keep-going" => {
                keep_going = true;
                i += 1;
                continue;
            }
            "--task-mgmt" => {
                task_mgmt = true;
                i += 1;
                continue;
            }
            "--pr" => {
                pr = true;
                i += 1;
                continue;
            }
            other => return usage(&format!("unknown argument {other:?}")),
        }
        i += 2;
    }
    let started = Instant::now();
    let (mut good, mut faults, mut inconclusive, mut refused) = (0u64, 0u64, 0u64, 0u64);
    let (mut fast, mut full) = (0u64, 0u64);
    let (mut pr_good, mut pr_conflicts, mut pr_checked) = (0u64, 0u64, 0u64);
    let count = seeds.end - seeds.start;
    let mut failed = Vec::new();
    for seed in seeds {
        let p = SimParams {
            shape,
            seed,
            bug,
            authority_bug,
            active_ms,
            trace,
            task_mgmt,
            journal,
            pr,
        };
        match run(&p) {
            Ok(r) => {
                good += r.ops_good;
                faults += r.faults;
                inconclusive += r.inconclusive_blocks;
                refused += r.refused_over_bound;
                fast += r.fast_syncs;
                full += r.full_syncs;
                pr_good += r.pr_changes_good;
                pr_conflicts += r.pr_conflicts;
                pr_checked += r.pr_writes_checked;
            }
            Err(e) => {
                eprintln!("{e}");
                if !keep_going {
                    return ExitCode::FAILURE;
                }
                failed.push(seed);
            }
        }
    }
    if !failed.is_empty() {
        println!(
            "shape {} seeds {count}: {} FAILED {failed:?}, {:.1} s",
            shape.name(),
            failed.len(),
            started.elapsed().as_secs_f64()
        );
        return ExitCode::FAILURE;
    }
    println!(
        "shape {} seeds {count}: all passed; {good} host operations answered GOOD, {faults} faults injected, {inconclusive} blocks inconclusive, {refused} writes refused at the held-writes bound, resyncs {fast} fast / {full} full ({journal:?} journal), {pr_good} reservation changes GOOD, {pr_conflicts} RESERVATION CONFLICTs, {pr_checked} writes checked against reservations, {:.1} s",
        shape.name(),
        started.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}

fn usage(why: &str) -> ExitCode {
    eprintln!("tandem-ha-sim: {why}\nusage: tandem-ha-sim --shape 2n|2w|3n [--seed N | --seeds FROM..TO] [--active-ms MS] [--bug NAME] [--authority-bug LeaseNotWaited] [--trace] [--keep-going] [--task-mgmt] [--journal ram|disk-failure|disk-continuous] [--pr]");
    ExitCode::from(2)
}
