//! The replication contract, checked by the deterministic simulator over many seeds, and the
//! checker's own ability to fail: every planted bug must be caught.
//!
//! Seed counts: `TANDEM_SIM_SEEDS` (default 2000 per shape, what CI runs);
//! `scripts/sim-soak.sh` runs far more.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tandem_ha::journal::JournalKind;
use tandem_ha::sim::{run, AuthorityBug, Shape, SimParams};
use tandem_ha::PlantedBug;

/// Seeds that still fail, each a real open defect (see docs/ha.md, "Known failing seeds").
/// They are skipped by the sweeps below and must keep failing: `known_failures_still_fail`
/// fails as soon as one passes, so a fix has to remove it from this list.
const KNOWN_FAILING: &[(Shape, u64)] = &[];

/// Seeds that failed once and were fixed, with the defect; each must keep passing (they are
/// also inside or beyond the sweeps' ranges, but named here so a regression says which).
const REGRESSIONS: &[(Shape, u64, &str)] = &[
    (
        Shape::TwoNodesWitness,
        9464,
        "a restarted member demoted to syncing kept the survivors' generation; after a power loss with the authority's state lost, the cold start took its stale copy for the newest",
    ),
    (
        Shape::TwoNodesWitness,
        19527,
        "same as 9464",
    ),
    (
        Shape::TwoNodesWitness,
        1865,
        "with two nodes a read through the partner returned a mirrored write before the sequencer's Commit; the sequencer crashed without it and its copy became the resync source (found with resync pacing)",
    ),
    (
        Shape::ThreeNodes,
        1278,
        "a new sequencer left before its gate opened and forgot the regions it had to reconcile",
    ),
    (
        Shape::ThreeNodes,
        3780,
        "a write ordered while a partner was out, applied after it became syncing, was not marked dirty for it",
    ),
    (
        Shape::ThreeNodes,
        4486,
        "a retried COMPARE AND WRITE answered MISCOMPARE against its own data",
    ),
    (
        Shape::ThreeNodes,
        13799,
        "a retried COMPARE AND WRITE answered MISCOMPARE against its own data",
    ),
    (
        Shape::ThreeNodes,
        486,
        "a configuration change while a member stayed syncing dropped its read barriers; once synchronized it returned a write another replica did not hold yet",
    ),
    (
        Shape::ThreeNodes,
        14403,
        "a survivor that never reported its uncertain regions lost its journal and got only a fast sync",
    ),
    (
        Shape::ThreeNodes,
        17366,
        "a survivor that never reported its uncertain regions lost its journal and got only a fast sync",
    ),
];

/// The same, for seeds run with persistent reservations (`SimParams::pr`, `--pr`).
const PR_REGRESSIONS: &[(Shape, u64, &str)] = &[(
    Shape::TwoNodesWitness,
    488,
    "a joining node crashed after acknowledging SyncComplete; that late acknowledgement got the restarted process made synchronized, and it served without the pushed reservation state",
)];

#[test]
fn fixed_seeds_pass() {
    for &(shape, seed, defect) in REGRESSIONS {
        if let Err(report) = run(&SimParams::new(shape, seed)) {
            panic!("regression ({defect}):\n{report}");
        }
    }
    for &(shape, seed, defect) in PR_REGRESSIONS {
        let mut p = SimParams::new(shape, seed);
        p.pr = true;
        if let Err(report) = run(&p) {
            panic!("regression with reservations ({defect}):\n{report}");
        }
    }
}

fn seeds() -> u64 {
    std::env::var("TANDEM_SIM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

/// Run `count` seeds of `shape` on every core; panic with the first failure's report.
fn run_seeds(shape: Shape, count: u64) {
    let next = Arc::new(AtomicU64::new(0));
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(4);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let next = Arc::clone(&next);
            std::thread::spawn(move || -> Result<(u64, u64), String> {
                let (mut good, mut inconclusive) = (0, 0);
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= count {
                        return Ok((good, inconclusive));
                    }
                    if KNOWN_FAILING.contains(&(shape, seed)) {
                        continue;
                    }
                    let r = run(&SimParams::new(shape, seed))?;
                    good += r.ops_good;
                    inconclusive += r.inconclusive_blocks;
                }
            })
        })
        .collect();
    let (mut good, mut inconclusive) = (0, 0);
    for h in handles {
        match h.join().expect("simulation thread") {
            Ok((g, i)) => {
                good += g;
                inconclusive += i;
            }
            Err(report) => panic!("{report}"),
        }
    }
    eprintln!(
        "shape {}: {count} seeds passed, {good} operations answered GOOD, {inconclusive} blocks inconclusive",
        shape.name()
    );
    assert!(
        good > count * 50,
        "the clients hardly got any work done: {good} GOOD answers"
    );
}

#[test]
fn two_nodes() {
    run_seeds(Shape::TwoNodes, seeds());
}

#[test]
fn two_nodes_and_a_witness() {
    run_seeds(Shape::TwoNodesWitness, seeds());
}

#[test]
fn three_nodes() {
    run_seeds(Shape::ThreeNodes, seeds());
}

/// Clients also send LOGICAL UNIT RESETs: a reset answered GOOD was applied by every
/// partner that stayed synchronized (checked in the world), and the data contract holds.
#[test]
fn resets_reach_every_synchronized_partner() {
    let count = (seeds() / 5).max(50);
    for shape in [Shape::TwoNodes, Shape::TwoNodesWitness, Shape::ThreeNodes] {
        let (mut good, mut checked) = (0, 0);
        for seed in 0..count {
            let mut p = SimParams::new(shape, seed);
            p.task_mgmt = true;
            match run(&p) {
                Ok(r) => {
                    good += r.resets_good;
                    checked += r.resets_checked;
                }
                Err(report) => panic!("{report}"),
            }
        }
        eprintln!(
            "shape {}: {count} seeds with resets: {good} resets GOOD, {checked} checked against every partner",
            shape.name()
        );
        assert!(checked > count, "too few resets checked: {checked}");
    }
}

/// Persistent reservations (`SimParams::pr`): clients take and release a WRITE EXCLUSIVE
/// reservation through any node; every write answered GOOD was let through by an LU that had
/// applied every change answered GOOD before; every serving node holds the same state at
/// quiesce.
#[test]
fn reservations_bind_every_node() {
    let count = (seeds() / 5).max(50);
    for shape in [Shape::TwoNodes, Shape::TwoNodesWitness, Shape::ThreeNodes] {
        let (mut good, mut conflicts, mut checked) = (0, 0, 0);
        for seed in 0..count {
            let mut p = SimParams::new(shape, seed);
            p.pr = true;
            match run(&p) {
                Ok(r) => {
                    good += r.pr_changes_good;
                    conflicts += r.pr_conflicts;
                    checked += r.pr_writes_checked;
                }
                Err(report) => panic!("{report}"),
            }
        }
        eprintln!(
            "shape {}: {count} seeds with reservations: {good} changes GOOD, {conflicts} RESERVATION CONFLICTs, {checked} writes checked",
            shape.name()
        );
        assert!(good > count && conflicts > count && checked > count);
    }
}

#[test]
fn planted_pr_answered_before_applied_is_caught() {
    let mut p = SimParams::new(Shape::TwoNodes, 0);
    p.pr = true;
    p.bug = Some(PlantedBug::PrAnsweredBeforeApplied);
    let (seed, report) = first_failure(p, 10_000).expect("caught within 10 000 seeds");
    eprintln!(
        "PrAnsweredBeforeApplied caught at seed {seed}: {}",
        report.lines().next().unwrap_or_default()
    );
}

/// First failing seed below `limit`, if any.
fn first_failure(p: SimParams, limit: u64) -> Option<(u64, String)> {
    (0..limit).find_map(|seed| {
        let mut q = p.clone();
        q.seed = seed;
        run(&q).err().map(|e| (seed, e))
    })
}

fn assert_caught(shape: Shape, bug: Option<PlantedBug>, authority_bug: Option<AuthorityBug>) {
    let mut p = SimParams::new(shape, 0);
    p.bug = bug;
    p.authority_bug = authority_bug;
    match first_failure(p, 10_000) {
        Some((seed, report)) => {
            let first = report.lines().next().unwrap_or_default().to_string();
            eprintln!(
                "{bug:?}{authority_bug:?} on {}: caught at seed {seed}: {first}",
                shape.name()
            );
        }
        None => panic!(
            "planted bug {bug:?}{authority_bug:?} was not caught in 10 000 seeds of {}",
            shape.name()
        ),
    }
}

/// Disk journals: the data contract holds (replicas identical after every resync), and a
/// `DiskContinuous` journal turns most of the RAM journal's full syncs into fast ones (after
/// crashes and power loss of every node, the activity log names what may differ).
#[test]
fn disk_journals_keep_the_contract_and_sync_fast() {
    let count = (seeds() / 5).max(50);
    for shape in [Shape::TwoNodes, Shape::TwoNodesWitness, Shape::ThreeNodes] {
        let mut syncs = Vec::new();
        for journal in [
            JournalKind::Ram,
            JournalKind::DiskFailure,
            JournalKind::DiskContinuous,
        ] {
            let (mut fast, mut full) = (0, 0);
            for seed in 0..count {
                let mut p = SimParams::new(shape, seed);
                p.journal = journal;
                match run(&p) {
                    Ok(r) => {
                        fast += r.fast_syncs;
                        full += r.full_syncs;
                    }
                    Err(report) => panic!("{journal:?}: {report}"),
                }
            }
            eprintln!(
                "shape {}: {count} seeds, {journal:?} journal: {fast} fast syncs, {full} full",
                shape.name()
            );
            syncs.push((fast, full));
        }
        let (ram, continuous) = (syncs[0], syncs[2]);
        assert!(
            continuous.1 < ram.1,
            "disk-continuous journal: no fewer full syncs than RAM ({continuous:?} vs {ram:?})"
        );
    }
}

#[test]
fn planted_activity_not_before_write_is_caught() {
    let mut p = SimParams::new(Shape::TwoNodes, 0);
    p.bug = Some(PlantedBug::ActivityNotBeforeWrite);
    p.journal = JournalKind::DiskContinuous;
    match first_failure(p, 10_000) {
        Some((seed, report)) => eprintln!(
            "ActivityNotBeforeWrite on 2n: caught at seed {seed}: {}",
            report.lines().next().unwrap_or_default()
        ),
        None => panic!("planted bug ActivityNotBeforeWrite was not caught in 10 000 seeds of 2n"),
    }
}

#[test]
fn planted_ack_before_partner_is_caught() {
    assert_caught(Shape::TwoNodes, Some(PlantedBug::AckBeforePartner), None);
}

#[test]
fn planted_missing_conflict_ordering_is_caught() {
    assert_caught(Shape::TwoNodes, Some(PlantedBug::NoConflictOrdering), None);
}

#[test]
fn planted_generation_not_bumped_is_caught() {
    // Visible when the authority's memory is lost too and the generations alone decide.
    assert_caught(
        Shape::TwoNodesWitness,
        Some(PlantedBug::GenerationNotBumped),
        None,
    );
}

#[test]
fn planted_resync_without_region_lock_is_caught() {
    assert_caught(
        Shape::ThreeNodes,
        Some(PlantedBug::ResyncWithoutRegionLock),
        None,
    );
}

#[test]
fn planted_stale_epoch_accepted_is_caught() {
    assert_caught(Shape::ThreeNodes, Some(PlantedBug::AcceptStaleEpoch), None);
}

#[test]
fn planted_missing_read_barrier_is_caught() {
    assert_caught(Shape::ThreeNodes, Some(PlantedBug::NoReadBarrier), None);
}

#[test]
fn planted_unbounded_holding_is_caught() {
    // Contract j: caught by the bound check in the seeds that run with a tiny bound.
    assert_caught(Shape::TwoNodes, Some(PlantedBug::UnboundedHolding), None);
}

#[test]
fn planted_lease_not_waited_out_is_caught() {
    assert_caught(
        Shape::TwoNodesWitness,
        None,
        Some(AuthorityBug::LeaseNotWaited),
    );
}

#[test]
fn known_failures_still_fail() {
    for &(shape, seed) in KNOWN_FAILING {
        assert!(
            run(&SimParams::new(shape, seed)).is_err(),
            "seed {seed} of {} passes now: remove it from KNOWN_FAILING",
            shape.name()
        );
    }
}

#[test]
fn a_failing_seed_replays_identically() {
    let mut p = SimParams::new(Shape::TwoNodes, 0);
    p.bug = Some(PlantedBug::AckBeforePartner);
    let (seed, first) = first_failure(p.clone(), 1000).expect("the planted bug fails some seed");
    p.seed = seed;
    let again = run(&p).expect_err("same seed, same failure");
    assert_eq!(first, again, "a seed must replay exactly");
    assert!(
        again.contains("replay: cargo run"),
        "the report names the replay command"
    );
}
