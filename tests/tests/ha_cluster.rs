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

use std::time::{Duration, Instant};

use tandem_tests::e2e::blocks::pattern;
use tandem_tests::e2e::cluster::{
    kill9, login, node_pair, pause_after, scratch_root, sync_cache, sync_link, wait_until,
    LogsOnFailure, Model, Node, Writer, DEVICE,
};
use tandem_tests::e2e::procs::free_port;

const SIZE: usize = 64 << 20;
/// Where the background writers write (an 8 MiB area from this LBA) and how long each write
/// is retried before the writer fails.
const WRITER_BASE: u64 = 40_000;
const WRITER_PATIENCE: Duration = Duration::from_secs(20);
/// Bound on the pause of writes through B after node A (sequencer and authority host) dies.
const MAX_PAUSE: Duration = Duration::from_secs(10);

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
    let root = scratch_root("tandem-cluster");
    let (mut a, mut b) = node_pair(root.path());
    let _logs = LogsOnFailure::new(vec![a.log.clone(), b.log.clone()]);
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

    a.add_server(&b);
    b.add_server(&a);
    let sync = free_port();
    let link = sync_link(&a, &b, sync);
    let t0 = Instant::now();
    let added = a.add_replica(&b, &link);
    assert!(added.contains("sync-from-existing"), "replica add: {added}");
    wait_until(
        "both nodes serving and synchronized after replica add",
        Duration::from_secs(60),
        || a.synchronized(2) && b.synchronized(2),
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
    let writer = Writer::start(&a, 3, WRITER_BASE, WRITER_PATIENCE);
    std::thread::sleep(Duration::from_millis(500));
    let t_kill = Instant::now();
    kill9(old_pid);
    eprintln!("kill -9 of node-b's data plane (pid {old_pid})");
    let mut seen_not_sync = false;
    // node-b's own row, read while no data plane ran there (its status said `restarting`
    // before and after the read): the killed data plane's report must not be shown.
    let mut own_rows_while_down = Vec::new();
    let restarting = |s: &Option<serde_json::Value>| {
        s.as_ref()
            .is_some_and(|s| s["dataplane"]["state"] == "restarting")
    };
    let restarted = wait_until(
        "node-b's supervisor restarts its data plane",
        Duration::from_secs(30),
        || {
            seen_not_sync |= a.state_of("node-b").is_some_and(|s| s != "synchronized");
            let before = b.status();
            let own = b.state_of("node-b");
            let after = b.status();
            if restarting(&before) && restarting(&after) {
                own_rows_while_down.push(own);
            }
            after.is_some_and(|s| {
                s["dataplane"]["state"] == "running"
                    && s["dataplane"]["pid"]
                        .as_i64()
                        .is_some_and(|p| p != i64::from(old_pid))
            })
        },
    );
    eprintln!(
        "node-b's data plane restarted {restarted:?} after the kill: {}; node-b's own replica state while it had none: {own_rows_while_down:?}",
        b.status().unwrap()["dataplane"]
    );
    assert!(
        own_rows_while_down
            .iter()
            .all(|s| s.as_deref() == Some("unknown")),
        "node-b listed itself {own_rows_while_down:?} while its data plane was down (the killed data plane's report)"
    );
    let resync = wait_until(
        "both synchronized after node-b's data plane restart",
        Duration::from_secs(60),
        || {
            seen_not_sync |= a.state_of("node-b").is_some_and(|s| s != "synchronized");
            a.synchronized(2) && b.synchronized(2)
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
    let writer = Writer::start(survivor, seed, WRITER_BASE, WRITER_PATIENCE);
    std::thread::sleep(Duration::from_millis(500));
    let t_kill = victim.kill();
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
        || victim.synchronized(2) && survivor.synchronized(2),
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
