//! Three data nodes through the real management path: three `tandem-control` processes (each
//! supervising its own `tandem-dataplane`) on 127.0.0.1, 127.0.0.2 and 127.0.0.3, configured
//! only with the `tandem` CLI: device create, `server add` between every pair, `replica add`
//! twice (the second makes the device three-way and moves it to node majority). The failover
//! authority is hosted by the control services themselves.
//!
//! 1. Data written through node A before replication is copied to B, then to C.
//! 2. Data written through each node reads back through the others; images byte-identical.
//! 3. kill -9 of the whole node A (control service and data plane; it hosts the authority and
//!    is the sequencer) while a writer runs through C: B and C are two of three votes, one
//!    of them takes the authority over and both keep serving; the longest write pause is
//!    measured; every acknowledged write reads back through B and C.
//! 4. kill -9 of B (the new authority) while a writer runs through C: C alone has no majority
//!    and answers NOT READY (04/0C) once its lease ends; nothing acknowledged is lost.
//! 5. A and B are restarted on their data dirs: the stale authority on A stands down, all
//!    three rejoin and resynchronize; every acknowledged write reads back through every
//!    node; the three images are byte-identical; the restarted nodes serve writes again.

use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_tests::e2e::blocks::{pattern, read16, write16};
use tandem_tests::e2e::cluster::{
    login, pause_after, scratch_root, sync_cache_within, sync_link, wait_until, LogsOnFailure,
    Node, DEVICE,
};
use tandem_tests::e2e::procs::free_port;
use tandem_tests::e2e::raw::command_retrying;
use tandem_tests::e2e::raw::RawConn;

const SIZE: usize = 64 << 20;
/// Bound on the pause of writes through a survivor after the authority node dies (measured
/// values are printed; the bound is generous for a loaded machine).
const MAX_PAUSE: Duration = Duration::from_secs(20);
/// How long SYNCHRONIZE CACHE is retried in this test (the shared default is 15 s; this test
/// has always allowed 20 s).
const SYNC_CACHE_PATIENCE: Duration = Duration::from_secs(20);
/// (sense key, ASC, ASCQ) of a CHECK CONDITION.
fn sense_of(status: u8, sense: &[u8]) -> Option<(u8, u8, u8)> {
    (status == 2 && sense.len() > 13).then(|| (sense[2] & 0x0f, sense[12], sense[13]))
}

const NOT_READY_04_0C: (u8, u8, u8) = (2, 4, 0x0c);

/// The model of the disk: every acknowledged write applied in order, plus writes whose
/// outcome is unknown (not acknowledged: the node answered NOT READY or the session
/// ended), which may or may not have reached the disk.
struct Model {
    data: Vec<u8>,
    unknown: Vec<(usize, Vec<u8>)>,
}

impl Model {
    fn write(&mut self, lba: u64, data: &[u8]) {
        let o = lba as usize * 512;
        self.data[o..o + data.len()].copy_from_slice(data);
        // An acknowledged write over an unknown one decides those bytes.
        self.unknown
            .retain(|(u, d)| o > *u || o + data.len() < *u + d.len());
    }

    /// Writes through `c` and records the write.
    fn write_through(&mut self, c: &mut RawConn, lba: u64, data: &[u8]) {
        let (r, _) = command_retrying(
            c,
            &write16(lba, (data.len() / 512) as u32),
            0,
            data,
            Duration::from_secs(20),
        );
        assert_eq!(r.status, 0, "write at {lba}: sense {:02x?}", r.sense);
        self.write(lba, data);
    }

    /// Byte `i` of the disk may be `got`: the acknowledged content, or an unknown write's.
    fn allows(&self, i: usize, got: u8) -> bool {
        self.data[i] == got
            || self
                .unknown
                .iter()
                .any(|(o, d)| i >= *o && i < o + d.len() && d[i - o] == got)
    }

    fn first_difference(&self, off: usize, got: &[u8]) -> Option<usize> {
        if got == &self.data[off..off + got.len()] {
            return None;
        }
        (0..got.len()).find(|&k| !self.allows(off + k, got[k]))
    }

    /// Reads the whole disk through `n` (a fresh session) and compares it with the model.
    fn verify_through(&self, n: &Node, what: &str) {
        let t0 = Instant::now();
        let mut c = login(n, "iqn.2026-11.io.tandem.test:three-verify");
        const CHUNK: usize = 256 << 10;
        for off in (0..SIZE).step_by(CHUNK) {
            let lba = (off / 512) as u64;
            let (r, _) = command_retrying(
                &mut c,
                &read16(lba, (CHUNK / 512) as u32),
                CHUNK as u32,
                &[],
                Duration::from_secs(20),
            );
            assert_eq!(
                r.status, 0,
                "{what}: read through {} at LBA {lba}: sense {:02x?}",
                n.name, r.sense
            );
            if let Some(k) = self.first_difference(off, &r.data_in) {
                panic!(
                    "{what}: read through {} differs from the acknowledged writes at byte {} (LBA {})",
                    n.name,
                    off + k,
                    (off + k) / 512
                );
            }
        }
        sync_cache_within(&mut c, SYNC_CACHE_PATIENCE);
        eprintln!(
            "{what}: whole disk read through {} matches the acknowledged writes ({:?})",
            n.name,
            t0.elapsed()
        );
    }

    /// The image files are byte-identical and agree with the model. Only when no I/O runs.
    fn images_identical(&self, nodes: &[&Node], what: &str) {
        let images: Vec<Vec<u8>> = nodes
            .iter()
            .map(|n| std::fs::read(n.image()).unwrap())
            .collect();
        for (n, img) in nodes.iter().zip(&images) {
            assert_eq!(img.len(), SIZE, "{what}: size of {}'s image", n.name);
        }
        for (k, img) in images.iter().enumerate().skip(1) {
            if let Some(i) = images[0].iter().zip(img).position(|(x, y)| x != y) {
                panic!(
                    "{what}: the images of {} and {} differ first at byte {i} (64 KiB region {})",
                    nodes[0].name,
                    nodes[k].name,
                    i / 65536
                );
            }
        }
        if let Some(i) = self.first_difference(0, &images[0]) {
            panic!("{what}: the images differ from the acknowledged writes first at byte {i}");
        }
        eprintln!(
            "{what}: {} image files byte-identical (and equal to the acknowledged writes)",
            nodes.len()
        );
    }
}

/// A write the writer gave up on: its last answer and its content.
struct Unacked {
    lba: u64,
    data: Vec<u8>,
    /// None: no answer (the session was shut down while the write was held).
    answer: Option<(u8, Vec<u8>)>,
}

#[derive(Default)]
struct Written {
    acked: Vec<(Instant, u64, Vec<u8>)>,
    /// The write under way (sent, not answered yet).
    in_flight: Option<(u64, Vec<u8>)>,
    gave_up: Option<Unacked>,
}

/// Writes through one node at QD1 until stopped, retrying NOT READY / UNIT ATTENTION for up
/// to `patience`; every acknowledged write is recorded with its completion time. A write
/// still refused after `patience` ends the writer (recorded as unknown: not acknowledged).
/// A write held without an answer can be cut off by shutting the session down.
struct Writer {
    stop: Arc<AtomicBool>,
    shared: Arc<std::sync::Mutex<Written>>,
    socket: TcpStream,
    thread: std::thread::JoinHandle<()>,
}

impl Writer {
    fn start(n: &Node, seed: u32, patience: Duration) -> Writer {
        let mut c = login(
            n,
            &format!("iqn.2026-11.io.tandem.test:three-writer-{seed}"),
        );
        let socket = c.stream.try_clone().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(std::sync::Mutex::new(Written::default()));
        let (s, w) = (stop.clone(), shared.clone());
        let thread = std::thread::spawn(move || {
            let mut k = 0u32;
            while !s.load(Ordering::Relaxed) {
                // 4 or 16 KiB in an 8 MiB area, overwriting itself.
                let blocks: usize = if k % 4 == 3 { 32 } else { 8 };
                let lba = 40_000 + u64::from(k.wrapping_mul(2_654_435_761) % 2048) * 8;
                let data = pattern(blocks * 512, seed * 1_000_000 + k);
                w.lock().unwrap().in_flight = Some((lba, data.clone()));
                // Panics (ending the thread) when the session is shut down under it.
                let (r, _) =
                    command_retrying(&mut c, &write16(lba, blocks as u32), 0, &data, patience);
                let mut w = w.lock().unwrap();
                w.in_flight = None;
                if r.status != 0 {
                    w.gave_up = Some(Unacked {
                        lba,
                        data,
                        answer: Some((r.status, r.sense.clone())),
                    });
                    return;
                }
                w.acked.push((Instant::now(), lba, data));
                k += 1;
            }
        });
        Writer {
            stop,
            shared,
            socket,
            thread,
        }
    }

    /// The writer is still writing (it neither gave up nor was stopped).
    fn running(&self) -> bool {
        !self.thread.is_finished()
    }

    /// Stops the writer (shutting its session down if `cut`, for a write held without an
    /// answer) and applies its acknowledged writes (and its unknown one) to the model.
    fn finish(self, model: &mut Model, cut: bool) -> (Vec<Instant>, Option<Unacked>) {
        self.stop.store(true, Ordering::Relaxed);
        if cut {
            let _ = self.socket.shutdown(std::net::Shutdown::Both);
        }
        let panicked = self.thread.join().is_err();
        let mut w = std::mem::take(&mut *self.shared.lock().unwrap());
        assert!(!panicked || cut, "the writer thread panicked (see above)");
        if let Some((lba, data)) = w.in_flight.take() {
            w.gave_up.get_or_insert(Unacked {
                lba,
                data,
                answer: None,
            });
        }
        let mut times = Vec::new();
        for (t, lba, data) in w.acked {
            model.write(lba, &data);
            times.push(t);
        }
        if let Some(u) = &w.gave_up {
            model.unknown.push((u.lba as usize * 512, u.data.clone()));
        }
        (times, w.gave_up)
    }
}

/// Writes a few ranges through `n` and records them.
fn write_some(n: &Node, model: &mut Model, base: u64, seed: u32) {
    let mut c = login(n, &format!("iqn.2026-11.io.tandem.test:three-{seed}"));
    for i in 0..60u32 {
        let lba = base + u64::from(i) * 331;
        model.write_through(&mut c, lba, &pattern(4096 * (1 + i as usize % 8), seed + i));
    }
    sync_cache_within(&mut c, SYNC_CACHE_PATIENCE);
}

#[test]
fn three_nodes_replicate_survive_the_authority_loss_and_stop_without_majority() {
    let root = scratch_root("tandem-three");
    let api_port = free_port();
    let mut a = Node::new(root.path(), "node-a", "127.0.0.1", api_port);
    let mut b = Node::new(root.path(), "node-b", "127.0.0.2", api_port);
    let mut c = Node::new(root.path(), "node-c", "127.0.0.3", api_port);
    let _logs = LogsOnFailure::new(vec![a.log.clone(), b.log.clone(), c.log.clone()]).tail(80);
    a.start();
    b.start();
    c.start();

    // ---- 1. A device on A with data, replicated to B, then to C (three-way).
    a.ok(&["device", "create", DEVICE, "--size", "64MiB"]);
    let mut model = Model {
        data: vec![0u8; SIZE],
        unknown: Vec::new(),
    };
    {
        let mut s = login(&a, "iqn.2026-11.io.tandem.test:three-pre");
        for i in 0..32u32 {
            let mib = u64::from(i) * 4096;
            model.write_through(&mut s, mib, &pattern(256 << 10, 1 + i));
        }
        sync_cache_within(&mut s, SYNC_CACHE_PATIENCE);
    }
    // Every node registers the two others: any of them may host the authority.
    for (x, y) in [(&a, &b), (&a, &c), (&b, &a), (&b, &c), (&c, &a), (&c, &b)] {
        x.add_server(y);
    }
    let (p_ab, p_ac, p_bc) = (free_port(), free_port(), free_port());
    let t0 = Instant::now();
    let added = a.add_replica(&b, &sync_link(&a, &b, p_ab));
    assert!(added.contains("sync-from-existing"), "replica add: {added}");
    wait_until(
        "node-a and node-b synchronized after the first replica add",
        Duration::from_secs(90),
        || a.synchronized(2) && b.synchronized(2),
    );
    eprintln!(
        "MEASURE first replica add: A and B synchronized {:?} after it",
        t0.elapsed()
    );
    let t1 = Instant::now();
    a.ok(&[
        "replica",
        "add",
        DEVICE,
        "--partner",
        "node-c",
        "--sync-link",
        &sync_link(&a, &c, p_ac),
        "--peer-sync-link",
        &format!("node-b:{}", sync_link(&b, &c, p_bc)),
        "--failover",
        "node-majority",
    ]);
    wait_until(
        "all three synchronized after the second replica add",
        Duration::from_secs(120),
        || a.synchronized(3) && b.synchronized(3) && c.synchronized(3),
    );
    eprintln!(
        "MEASURE second replica add (three-way, 64 MiB): all three synchronized {:?} after it",
        t1.elapsed()
    );
    c.ok(&["replica", "list", DEVICE]);
    for n in [&a, &b, &c] {
        let toml = std::fs::read_to_string(n.dir.join("node.toml")).unwrap();
        assert!(
            toml.contains("node-majority"),
            "{}'s node.toml does not say node-majority:\n{toml}",
            n.name
        );
    }

    // ---- 2. Writes through each node read back through the others.
    model.verify_through(&c, "sync-from-existing to node-c");
    write_some(&b, &mut model, 20_000, 2_000);
    write_some(&c, &mut model, 25_000, 3_000);
    write_some(&a, &mut model, 30_000, 4_000);
    for n in [&a, &b, &c] {
        model.verify_through(n, "written through each node");
    }
    model.images_identical(&[&a, &b, &c], "after phase 2");
    assert!(
        a.authority_state().is_some(),
        "node-a (lowest id) hosts the authority"
    );

    // ---- 3. kill -9 of node A (authority, sequencer) under a writer through node C.
    let writer = Writer::start(&c, 3, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(800));
    let t_kill_a = a.kill();
    let took = wait_until(
        "node-b or node-c took the authority over; both serve without node-a",
        Duration::from_secs(60),
        || {
            let host = [&b, &c].into_iter().find(|n| {
                n.authority_state()
                    .is_some_and(|s| s["took_over_from"] == 1)
            });
            host.is_some() && b.serving_without("node-a") && c.serving_without("node-a")
        },
    );
    let b_state = b.authority_state();
    let c_state = c.authority_state();
    eprintln!(
        "MEASURE authority node killed: took over and both survivors serving {took:?} after the kill; node-b's authority: {b_state:?}; node-c's: {c_state:?}"
    );
    // The lower surviving id takes over; the other follows it (never both).
    assert!(
        b_state.as_ref().is_some_and(|s| s["took_over_from"] == 1),
        "node-b (the lower surviving id) must take over"
    );
    assert!(c_state.is_none(), "node-c must not host an authority too");
    assert!(
        c.ha_view()
            .is_some_and(|v| v["authority"]["server"] == "node-b"),
        "node-c follows node-b's authority: {:?}",
        c.ha_view()
    );
    std::thread::sleep(Duration::from_secs(2));
    b.ok(&["replica", "list", DEVICE]);
    let (times, gave_up) = writer.finish(&mut model, false);
    if let Some(u) = &gave_up {
        panic!(
            "the writer through node-c gave up after the authority node died: {:?}",
            u.answer
        );
    }
    let (pause, first) = pause_after(&times, t_kill_a);
    let after = times.iter().filter(|t| **t > t_kill_a).count();
    eprintln!(
        "MEASURE writer through node-c: {} writes acknowledged, {after} after node-a's kill; first ack after the kill {first:?}; longest pause {pause:?}",
        times.len()
    );
    assert!(
        after > 0,
        "no write through node-c acknowledged after node-a died"
    );
    assert!(
        pause < MAX_PAUSE,
        "writes through node-c paused {pause:?} after node-a died (bound {MAX_PAUSE:?})"
    );
    model.verify_through(&b, "after node-a's kill");
    model.verify_through(&c, "after node-a's kill");
    model.images_identical(&[&b, &c], "after node-a's kill");

    // ---- 4. kill -9 of node B (the new authority): node C alone has no majority.
    let writer = Writer::start(&c, 4, Duration::from_secs(12));
    std::thread::sleep(Duration::from_millis(800));
    let t_kill_b = b.kill();
    // New commands through node C are refused NOT READY 04/0C once its lease has ended.
    let mut s = login(&c, "iqn.2026-11.io.tandem.test:three-alone");
    let refused = wait_until(
        "node-c alone refuses READ with NOT READY 04/0C",
        Duration::from_secs(30),
        || {
            let r = s.command(&read16(0, 8), 4096, &[], 0, 262144);
            sense_of(r.status, &r.sense) == Some(NOT_READY_04_0C)
        },
    );
    let r = s.command(&write16(100, 8), 0, &pattern(4096, 77), 4096, 262144);
    assert_eq!(
        sense_of(r.status, &r.sense),
        Some(NOT_READY_04_0C),
        "WRITE through the last node: status {} sense {:02x?}",
        r.status,
        r.sense
    );
    // Refused, so never acknowledged: its content may or may not be anywhere (unknown).
    model.unknown.push((100 * 512, pattern(4096, 77)));
    let r = s.command(&[0u8; 6], 0, &[], 0, 0);
    assert_eq!(
        sense_of(r.status, &r.sense),
        Some(NOT_READY_04_0C),
        "TEST UNIT READY through the last node: status {} sense {:02x?}",
        r.status,
        r.sense
    );
    drop(s);
    // The writer's own write: refused after its patience, or held without an answer
    // (forwarded to the dead sequencer); either way not acknowledged. Cut it off.
    std::thread::sleep(Duration::from_secs(2));
    let was_running = writer.running();
    let (times, gave_up) = writer.finish(&mut model, true);
    // Acknowledged after the kill: while node-c's lease from node-b still ran.
    let acked_after_kill = times.iter().filter(|t| **t > t_kill_b).count();
    eprintln!(
        "MEASURE node-b killed, node-c alone: new READs refused NOT READY 04/0C {refused:?} after the kill; {} writes acknowledged by node-c in all, {acked_after_kill} of them after the kill; the writer's last write: {} ({:?})",
        times.len(),
        if was_running { "held without an answer, cut off" } else { "refused" },
        gave_up.as_ref().map(|u| u.answer.as_ref().map(|(st, se)| (st, sense_of(*st, se))))
    );
    if let Some(Some((st, se))) = gave_up.as_ref().map(|u| &u.answer) {
        assert_eq!(
            sense_of(*st, se),
            Some(NOT_READY_04_0C),
            "the writer's refusal"
        );
    }
    assert!(
        c.authority_state().is_none(),
        "node-c alone must never take the authority over"
    );

    // ---- 5. Node A and node B return: all three rejoin and resynchronize.
    let t_restart = Instant::now();
    a.start();
    b.start();
    let resync = wait_until(
        "all three synchronized after node-a and node-b returned",
        Duration::from_secs(180),
        || a.synchronized(3) && b.synchronized(3) && c.synchronized(3),
    );
    eprintln!(
        "MEASURE node-a and node-b restarted: all three synchronized {:?} after the restarts began ({resync:?} after both data planes ran)",
        t_restart.elapsed()
    );
    a.ok(&["replica", "list", DEVICE]);
    let a_state = a
        .authority_state()
        .expect("node-a keeps its old authority as a record");
    assert!(
        !a_state["superseded_by"].is_null(),
        "node-a's stale authority stood down: {a_state}"
    );
    for n in [&a, &b, &c] {
        model.verify_through(n, "after node-a and node-b returned");
    }
    model.images_identical(&[&a, &b, &c], "after node-a and node-b returned");
    // The returned nodes serve writes again, read back through the third.
    write_some(&a, &mut model, 50_000, 6_000);
    write_some(&b, &mut model, 55_000, 7_000);
    for n in [&c, &a, &b] {
        model.verify_through(n, "written through the returned nodes");
    }
    model.images_identical(&[&a, &b, &c], "at the end");
}
