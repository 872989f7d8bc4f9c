//! Runs the simulation of the failover vote over a range of seeds (or replays one with a
//! trace). See `tandem_control::ha::vote_sim` and docs/ha.md.
//!
//! ```text
//! tandem-vote-sim --shape hb2|w2 [--seed N | --seeds FROM..TO] [--bug NAME] [--trace] [--keep-going] [--allow-known]
//! ```
//!
//! It stops at the first failing seed, unless `--keep-going`: then it reports every failing
//! seed of the range and fails at the end. `--allow-known`: seeds that hit one of
//! `KNOWN_OPEN_DEFECTS` are counted, listed and do not fail the run.

use std::process::ExitCode;
use std::time::Instant;

use tandem_control::ha::vote_sim::{is_known_open_defect, run, Shape, SimParams, VoteBug};

fn usage(why: &str) -> ExitCode {
    eprintln!("tandem-vote-sim: {why}");
    eprintln!(
        "usage: tandem-vote-sim --shape hb2|w2 [--seed N | --seeds FROM..TO] [--bug {}] [--trace] [--keep-going] [--allow-known]",
        VoteBug::ALL.map(|b| format!("{b:?}")).join("|")
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut shape = Shape::Hb2;
    let mut seeds = 0..100u64;
    let mut bug = None;
    let mut trace = false;
    let mut keep_going = false;
    let mut allow_known = false;
    let mut i = 0;
    while i < args.len() {
        let val = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--shape" => match Shape::parse(&val) {
                Some(s) => shape = s,
                None => return usage(&format!("unknown shape {val:?} (hb2, w2)")),
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
            "--bug" => match VoteBug::parse(&val) {
                Some(b) => bug = Some(b),
                None => return usage(&format!("unknown planted bug {val:?}")),
            },
            "--trace" | "--keep-going" | "--allow-known" => {
                match args[i].as_str() {
                    "--trace" => trace = true,
                    "--keep-going" => keep_going = true,
                    _ => allow_known = true,
                }
                i += 1;
                continue;
            }
            other => return usage(&format!("unknown argument {other:?}")),
        }
        i += 2;
    }
    let start = Instant::now();
    let (from, to) = (seeds.start, seeds.end);
    let mut failed = Vec::new();
    let mut known = Vec::new();
    let (mut takeovers, mut superseded, mut not_serving) = (0u64, 0u64, 0u64);
    // Over passing seeds: the longest time from healing to a node serving, to all serving.
    let (mut serve_max, mut all_serve_max, mut not_all) = (0u64, 0u64, 0u64);
    for seed in seeds {
        let mut p = SimParams::new(shape, seed);
        p.bug = bug;
        p.trace = trace;
        let r = run(&p);
        for line in &r.trace {
            println!("{line}");
        }
        takeovers += r.takeovers;
        superseded += r.superseded;
        not_serving += u64::from(r.serve_after_heal_ms.is_none() && r.violation.is_none());
        if r.violation.is_none() {
            serve_max = serve_max.max(r.serve_after_heal_ms.unwrap_or(0));
            match r.all_serve_after_heal_ms {
                Some(ms) => all_serve_max = all_serve_max.max(ms),
                None => not_all += 1,
            }
        }
        if trace {
            println!(
                "seed {seed}: {} events, {} faults, {} configurations issued, {} takeovers, {} superseded, serving {:?} ms / all {:?} ms after healing",
                r.events, r.faults, r.issued, r.takeovers, r.superseded, r.serve_after_heal_ms, r.all_serve_after_heal_ms
            );
        }
        if let Some(v) = &r.violation {
            if allow_known && is_known_open_defect(shape, v) {
                known.push(seed);
                continue;
            }
            eprintln!("FAIL {} seed {seed}: {v}", shape.name());
            eprintln!("replay: {}", r.replay_command(bug));
            failed.push(seed);
            if !keep_going {
                return ExitCode::FAILURE;
            }
        }
    }
    let n = to - from;
    println!(
        "tandem-vote-sim {}: seeds {from}..{to}: {} passed, {} failed, {} known open defects in {:.1} s ({takeovers} takeovers, {superseded} superseded, {not_serving} passing seeds with no node serving after healing; after healing some node served within {serve_max} ms, every node within {all_serve_max} ms in {} of them)",
        shape.name(),
        n - failed.len() as u64 - known.len() as u64,
        failed.len(),
        known.len(),
        start.elapsed().as_secs_f64(),
        n - failed.len() as u64 - known.len() as u64 - not_all
    );
    if !known.is_empty() {
        println!(
            "seeds with a known open defect (first 20): {:?}",
            &known[..known.len().min(20)]
        );
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("failing seeds: {failed:?}");
        ExitCode::FAILURE
    }
}
