//! Online extend of a replicated device through the real management path: two
//! `tandem-control` processes (each with its own `tandem-dataplane`) on 127.0.0.1 and
//! 127.0.0.2, set up with the `tandem` CLI as in `ha_cluster.rs`.
//!
//! 1. Writers run through both nodes while `tandem device extend` (on node A) grows the device
//!    from 64 to 96 MiB: every node grows its copy and its replication engine first, then
//!    every node's LU reports the new size.
//! 2. Sessions open before the extend get CAPACITY DATA HAS CHANGED (2A/09) through both
//!    nodes; READ CAPACITY(16) through both says 96 MiB.
//! 3. Writes in the new area (up to its last block) through each node read back through the
//!    other; the whole disk through both nodes equals every acknowledged write; the image
//!    files are byte-identical.
//! 4. With node B's control service and data plane gone, a second extend fails, and node A
//!    still reports 96 MiB (no node reports a size that a partner's copy lacks).
//!
//! `a_node_restarted_between_the_phases_is_finished_by_extend_again`: node B is killed after
//! phase 1 (grow) on both nodes and phase 2 (report) on node A, so it comes back with its
//! image cut back to the old size; node A refuses to synchronize it (`replica list` says
//! why, with both sizes) until `tandem device extend` run again grows B's copy; then B
//! resynchronizes at the new size and every acknowledged write, including those in the new
//! area that B had acknowledged before its image was cut back, reads back through both.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use tandem_tests::e2e::blocks::pattern;
use tandem_tests::e2e::cluster::{
    login, node_pair, scratch_root, sync_cache, sync_link, wait_until, LogsOnFailure, Model,
    Writer, DEVICE,
};
use tandem_tests::e2e::procs::free_port;
use tandem_tests::e2e::raw::{command_retrying, RawConn};

const OLD_SIZE: usize = 64 << 20;
const NEW_SIZE: usize = 96 << 20;
const WRITER_PATIENCE: Duration = Duration::from_secs(30);

#[test]
fn extend_grows_every_replica_first_then_reports_everywhere() {
    let root = scratch_root("tandem-extend");
    let (mut a, mut b) = node_pair(root.path());
    let _logs = LogsOnFailure::new(vec![a.log.clone(), b.log.clone()]);
    a.start();
    b.start();
    a.ok(&["device", "create", DEVICE, "--size", "64MiB"]);
    a.add_server(&b);
    b.add_server(&a);
    let link = sync_link(&a, &b, free_port());
    a.add_replica(&b, &link);
    wait_until(
        "both nodes serving and synchronized after replica add",
        Duration::from_secs(90),
        || a.synchronized(2) && b.synchronized(2),
    );
    let mut model = Model(vec![0u8; OLD_SIZE]);

    // ---- 1. Extend under writes through both nodes (disjoint areas, so the model is exact).
    let mut watch_a = login(&a, "iqn.2026-11.io.tandem.test:extend-watch-a");
    let mut watch_b = login(&b, "iqn.2026-11.io.tandem.test:extend-watch-b");
    assert_eq!(capacity_bytes(&mut watch_a), OLD_SIZE as u64);
    let writer_a = Writer::start(&a, 1, 40_000, WRITER_PATIENCE);
    let writer_b = Writer::start(&b, 2, 60_000, WRITER_PATIENCE);
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let out = a.ok(&["device", "extend", DEVICE, "--size", "96MiB"]);
    eprintln!(
        "MEASURE extend 64 -> 96 MiB under writes through both nodes: {:?} ({out})",
        t0.elapsed()
    );
    std::thread::sleep(Duration::from_millis(500));
    model.0.resize(NEW_SIZE, 0);
    let acked_a = writer_a.finish(&mut model).len();
    let acked_b = writer_b.finish(&mut model).len();
    eprintln!(
        "writes acknowledged during the extend: {acked_a} through node-a, {acked_b} through node-b"
    );
    assert!(acked_a > 0 && acked_b > 0, "the writers made progress");

    // ---- 2. Unit attention and the new capacity through both nodes.
    for (name, c) in [("node-a", &mut watch_a), ("node-b", &mut watch_b)] {
        assert!(
            capacity_changed_attention(c),
            "{name}: a session open before the extend gets CAPACITY DATA HAS CHANGED"
        );
        assert_eq!(capacity_bytes(c), NEW_SIZE as u64, "{name}: READ CAPACITY");
    }
    for n in [&a, &b] {
        let row = n.json(&["device", "show", DEVICE]).expect("device show");
        assert_eq!(
            row["size_bytes"].as_u64(),
            Some(NEW_SIZE as u64),
            "{}: device show",
            n.name
        );
    }

    // ---- 3. The new area through each node, read back through the other.
    let last = (NEW_SIZE / 512) as u64;
    {
        let mut cb = login(&b, "iqn.2026-11.io.tandem.test:extend-b");
        model.write_through(&mut cb, last - 128, &pattern(64 << 10, 7001));
        model.write_through(&mut cb, (OLD_SIZE / 512) as u64, &pattern(4096, 7002));
        sync_cache(&mut cb);
        let mut ca = login(&a, "iqn.2026-11.io.tandem.test:extend-a");
        model.write_through(&mut ca, last - 4096, &pattern(128 << 10, 7003));
        model.write_through(
            &mut ca,
            (OLD_SIZE / 512) as u64 + 1000,
            &pattern(8192, 7004),
        );
        sync_cache(&mut ca);
    }
    model.verify_through(&a, "after the extend");
    model.verify_through(&b, "after the extend");
    model.images_identical(&a, &b, "after the extend");

    // ---- 4. A partner that cannot grow: the extend fails, nothing reports the new size.
    b.kill();
    let refused = a.cli(&["device", "extend", DEVICE, "--size", "128MiB"]);
    let said = String::from_utf8_lossy(&refused.stderr).to_string()
        + &String::from_utf8_lossy(&refused.stdout);
    eprintln!("extend with node-b down: {said}");
    assert!(
        !refused.status.success(),
        "extend with node-b down must fail: {said}"
    );
    let row = a.json(&["device", "show", DEVICE]).expect("device show");
    assert_eq!(
        row["size_bytes"].as_u64(),
        Some(NEW_SIZE as u64),
        "node-a keeps 96 MiB"
    );
    wait_until(
        "node-a serves alone after node-b is gone",
        Duration::from_secs(60),
        || a.serving_without("node-b"),
    );
    let mut ca = login(&a, "iqn.2026-11.io.tandem.test:extend-after-refusal");
    assert_eq!(
        capacity_bytes(&mut ca),
        NEW_SIZE as u64,
        "node-a: READ CAPACITY after the refused extend"
    );
}

const SHORT_OLD: usize = 32 << 20;
const SHORT_NEW: usize = 48 << 20;

#[test]
fn a_node_restarted_between_the_phases_is_finished_by_extend_again() {
    let t_test = Instant::now();
    let root = scratch_root("tandem-extend-restart");
    let (mut a, mut b) = node_pair(root.path());
    let _logs = LogsOnFailure::new(vec![a.log.clone(), b.log.clone()]);
    a.start();
    b.start();
    a.ok(&["device", "create", DEVICE, "--size", "32MiB"]);
    a.add_server(&b);
    b.add_server(&a);
    let link = sync_link(&a, &b, free_port());
    a.add_replica(&b, &link);
    wait_until(
        "both nodes synchronized after replica add",
        Duration::from_secs(90),
        || a.synchronized(2) && b.synchronized(2),
    );
    let mut model = Model(vec![0u8; SHORT_OLD]);
    {
        let mut ca = login(&a, "iqn.2026-11.io.tandem.test:extend-restart-old");
        model.write_through(&mut ca, 1000, &pattern(64 << 10, 8001));
        sync_cache(&mut ca);
    }

    // ---- The extend's two phases by hand, as the node running it would: grow on both,
    // report on node A only; node B dies before its report.
    for n in [&a, &b] {
        extend_phase(n, "48MiB", "grow");
    }
    extend_phase(&a, "48MiB", "report");
    model.0.resize(SHORT_NEW, 0);
    let tail = (SHORT_OLD / 512) as u64;
    {
        // Acknowledged by both nodes: node B's engine grew in phase 1.
        let mut ca = login(&a, "iqn.2026-11.io.tandem.test:extend-restart-tail");
        assert_eq!(capacity_bytes(&mut ca), SHORT_NEW as u64);
        model.write_through(&mut ca, tail + 16, &pattern(128 << 10, 8002));
        sync_cache(&mut ca);
    }
    b.kill();
    b.start();
    let row = b.json(&["device", "show", DEVICE]).expect("device show");
    assert_eq!(
        row["size_bytes"].as_u64(),
        Some(SHORT_OLD as u64),
        "node-b restarted with its image's pending extend rolled back"
    );
    let b_image = std::fs::metadata(b.image()).unwrap().len();
    eprintln!("node-b's image after its restart: {b_image} bytes");

    // ---- Node A refuses the short copy, says why, and keeps serving (writes beyond B's end
    // included).
    let t_refused = Instant::now();
    let mut reason = String::new();
    wait_until(
        "node-a reports node-b refused for its smaller copy",
        Duration::from_secs(60),
        || {
            let row = a.replica_rows().into_iter().find(|r| r["node"] == "node-b");
            reason = row
                .as_ref()
                .and_then(|r| r["reason"].as_str())
                .unwrap_or_default()
                .to_string();
            row.is_some_and(|r| r["state"] == "not-synchronized") && reason.contains("blocks")
        },
    );
    eprintln!(
        "MEASURE node-b refused for its short copy {:?} after its restart: {reason}",
        t_refused.elapsed()
    );
    assert!(
        reason.contains(&format!("{} blocks", SHORT_OLD / 512))
            && reason.contains(&(SHORT_NEW / 512).to_string()),
        "both sizes: {reason}"
    );
    assert!(reason.contains("tandem device extend"), "{reason}");
    {
        let mut ca = login(&a, "iqn.2026-11.io.tandem.test:extend-restart-alone");
        model.write_through(&mut ca, tail + 4096, &pattern(64 << 10, 8003));
        model.write_through(&mut ca, 5000, &pattern(32 << 10, 8004));
        let last = (SHORT_NEW / 512) as u64;
        model.write_through(&mut ca, last - 8, &pattern(4096, 8005));
        sync_cache(&mut ca);
    }

    // ---- The extend run again finishes node B; B resynchronizes at the new size.
    let t_again = Instant::now();
    let out = a.ok(&["device", "extend", DEVICE, "--size", "48MiB"]);
    eprintln!("MEASURE extend again: {:?} ({out})", t_again.elapsed());
    let waited = wait_until(
        "node-b synchronized at the new size",
        Duration::from_secs(90),
        || a.synchronized(2) && b.synchronized(2),
    );
    eprintln!("MEASURE node-b synchronized {waited:?} after the extend ran again");
    for n in [&a, &b] {
        let row = n.json(&["device", "show", DEVICE]).expect("device show");
        assert_eq!(
            row["size_bytes"].as_u64(),
            Some(SHORT_NEW as u64),
            "{}: device show",
            n.name
        );
    }
    {
        let mut cb = login(&b, "iqn.2026-11.io.tandem.test:extend-restart-b");
        assert_eq!(
            capacity_bytes(&mut cb),
            SHORT_NEW as u64,
            "node-b: READ CAPACITY"
        );
        model.write_through(&mut cb, tail + 8192, &pattern(16 << 10, 8006));
        sync_cache(&mut cb);
    }
    model.verify_through(&a, "after the extend ran again");
    model.verify_through(&b, "after the extend ran again");
    model.images_identical(&a, &b, "after the extend ran again");
    eprintln!("MEASURE whole test {:?}", t_test.elapsed());
}

/// One phase of the extend on node `n`, as the node running `tandem device extend` sends it
/// (`POST /api/v1/devices/NAME/extend` with `phase`).
fn extend_phase(n: &tandem_tests::e2e::cluster::Node, size: &str, phase: &str) {
    let token = std::fs::read_to_string(std::path::Path::new(&n.token_file())).unwrap();
    let body = format!(r#"{{"size":"{size}","phase":"{phase}"}}"#);
    let mut s = TcpStream::connect(&n.api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        s,
        "POST /api/v1/devices/{DEVICE}/extend HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        n.api,
        token.trim(),
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.take(1 << 20).read_to_string(&mut text).unwrap();
    let status = text.split_whitespace().nth(1).unwrap_or_default();
    assert!(
        status.starts_with('2'),
        "{}: phase {phase} of the extend: {text}",
        n.name
    );
}

/// READ CAPACITY(16): the device's size in bytes (retried like a multipath host).
fn capacity_bytes(c: &mut RawConn) -> u64 {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x9e;
    cdb[1] = 0x10;
    cdb[13] = 32;
    let (r, _) = command_retrying(c, &cdb, 32, &[], Duration::from_secs(15));
    assert_eq!(r.status, 0, "READ CAPACITY(16): sense {:02x?}", r.sense);
    let last_lba = u64::from_be_bytes(r.data_in[0..8].try_into().unwrap());
    let block = u64::from(u32::from_be_bytes(r.data_in[8..12].try_into().unwrap()));
    (last_lba + 1) * block
}

/// TEST UNIT READY until GOOD (at most 8 tries): whether one of the unit attentions on the
/// way was CAPACITY DATA HAS CHANGED (sense key 6, 2A/09).
fn capacity_changed_attention(c: &mut RawConn) -> bool {
    let mut seen = false;
    for _ in 0..8 {
        let r = c.command(&[0u8; 6], 0, &[], 0, 0);
        if r.status == 0 {
            return seen;
        }
        let s = &r.sense;
        eprintln!("TEST UNIT READY: status {} sense {:02x?}", r.status, s);
        if s.len() > 13 && s[2] & 0x0f == 6 && s[12] == 0x2a && s[13] == 0x09 {
            seen = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    seen
}
