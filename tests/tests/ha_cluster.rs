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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_tests::e2e::blocks::{pattern, read16, write16};
use tandem_tests::e2e::cluster::{
    kill9, login, sync_cache, wait_until, write_blocks, LogsOnFailure, Node, DEVICE,
};
use tandem_tests::e2e::procs::{free_port, scratch_dir};
use tandem_tests::e2e::raw::command_retrying;
use tandem_tests::e2e::raw::RawConn;

const SIZE: usize = 64 << 20;
/// Bound on the pause of writes through B after node A (sequencer and authority host) dies.
const MAX_PAUSE: Duration = Duration::from_secs(10);
/// The model of the disk: every acknowledged write applied in order.
struct Model(Vec<u8>);

impl Model {
    fn write(&mut self, lba: u64, data: &[u8]) {
        let o = lba as usize * 512;
        self.0[o..o + data.len()].copy_from_slice(data);
    }

    /// Writes through `c` and records the write.
    fn write_through(&mut self, c: &mut RawConn, lba: u64, data: &[u8]) {
        write_blocks(c, lba, data);
        self.write(lba, data);
    }

    /// Reads the whole disk through `n` (a fresh session) and compares it with the model;
    /// flushes that node's cache.
    fn verify_through(&self, n: &Node, what: &str) {
        let t0 = Instant::now();
        let mut c = login(n, "iqn.2026-11.io.tandem.test:cluster-verify");
        const CHUNK: usize = 256 << 10;
        for off in (0..SIZE).step_by(CHUNK) {
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
    fn images_identical(&self, a: &Node, b: &Node, what: &str) {
        let ia = std::fs::read(a.image()).unwrap();
        let ib = std::fs::read(b.image()).unwrap();
        assert_eq!((ia.len(), ib.len()), (SIZE, SIZE), "{what}: image sizes");
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

type Acked = Vec<(Instant, u64, Vec<u8>)>;

/// Writes through one node at QD1 until stopped, retrying NOT READY / UNIT ATTENTION; every
/// acknowledged write is recorded with its completion time.
struct Writer {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<Acked, String>>,
}

impl Writer {
    fn start(n: &Node, seed: u32) -> Writer {
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
                let lba = 40_000 + u64::from(k.wrapping_mul(2_654_435_761) % 2048) * 8;
                let data = pattern(blocks * 512, seed * 1_000_000 + k);
                let (r, _) = command_retrying(
                    &mut c,
                    &write16(lba, blocks as u32),
                    0,
                    &data,
                    Duration::from_secs(20),
                );
                if r.status != 0 {
                    return Err(format!(
                        "write #{k} through {name} at LBA {lba} not acknowledged after 20 s of retries: status {} sense {:02x?} ({} writes acknowledged before)",
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
    fn finish(self, model: &mut Model) -> Vec<Instant> {
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
fn pause_after(times: &[Instant], since: Instant) -> (Duration, Option<Duration>) {
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
    let root = tempfile::Builder::new()
        .prefix("tandem-cluster")
        .tempdir_in(scratch_dir())
        .unwrap();
    let api_port = free_port();
    let mut a = Node::new(root.path(), "node-a", "127.0.0.1", api_port);
    let mut b = Node::new(root.path(), "node-b", "127.0.0.2", api_port);
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

    a.ok(&[
        "server",
        "add",
        "node-b",
        &b.api,
        "--token-file",
        &b.token_file(),
    ]);
    b.ok(&[
        "server",
        "add",
        "node-a",
        &a.api,
        "--token-file",
        &a.token_file(),
    ]);
    let sync = free_port();
    let link = format!("{}:{sync}={}:{sync}", a.ip, b.ip);
    let t0 = Instant::now();
    let added = a.ok(&[
        "replica",
        "add",
        DEVICE,
        "--partner",
        "node-b",
        "--sync-link",
        &link,
    ]);
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
    let writer = Writer::start(&a, 3);
    std::thread::sleep(Duration::from_millis(500));
    let t_kill = Instant::now();
    kill9(old_pid);
    eprintln!("kill -9 of node-b's data plane (pid {old_pid})");
    let mut seen_not_sync = false;
    let restarted = wait_until(
        "node-b's supervisor restarts its data plane",
        Duration::from_secs(30),
        || {
            seen_not_sync |= a.state_of("node-b").is_some_and(|s| s != "synchronized");
            b.status().is_some_and(|s| {
                s["dataplane"]["state"] == "running"
                    && s["dataplane"]["pid"]
                        .as_i64()
                        .is_some_and(|p| p != i64::from(old_pid))
            })
        },
    );
    eprintln!(
        "node-b's data plane restarted {restarted:?} after the kill: {}",
        b.status().unwrap()["dataplane"]
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
    let writer = Writer::start(survivor, seed);
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
