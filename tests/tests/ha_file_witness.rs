//! Node majority with a file-share witness, through real processes: two `tandem-control`
//! nodes (each with its data plane) on 127.0.0.1 and 127.0.0.2, set up with the `tandem`
//! CLI (`replica add --failover node-majority --witness-file PATH`). The "share" is a
//! directory that each node's control service sees at the same path through a bind mount in
//! a mount namespace of its own, so the test can make it unreachable for one node only.
//!
//! 1. The device serves through both nodes; a relative witness path is refused.
//! 2. kill -9 of the whole node holding the lock file while a writer writes through the
//!    other: the other claims the file after a file lease plus margin and goes on (pause
//!    measured); the killed node restarts, resyncs, images byte-identical.
//! 3. The share becomes unreachable for the holder while writers write through both nodes:
//!    the holder stops acknowledging before the other node acknowledges alone (timestamps
//!    of both writers), the holder rejoins through the other's authority, every
//!    acknowledged write reads back through both nodes, images byte-identical.
//!
//! A second test (4-6): the share becomes unreachable for the node that does not hold the
//! lock file (nothing changes), then the holder is killed while the other still cannot
//! reach the share (the other must not go on), then the share returns (the other claims the
//! file by the lock rules and goes on).

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tandem_tests::e2e::blocks::pattern;
use tandem_tests::e2e::cluster::{
    binary, login, pause_after, scratch_root, sync_cache, sync_link, wait_until, LogsOnFailure,
    Model, Node, Writer, DEVICE,
};
use tandem_tests::e2e::procs::free_port;

const SIZE: usize = 64 << 20;
/// Bound on the pause of writes through the survivor after the lock holder dies: file lease
/// (3 s) + margin (0.5 s) + poll + claim (< 1 s) + the engine's reconfiguration, with room
/// for a loaded machine.
const MAX_PAUSE: Duration = Duration::from_secs(20);
/// How long the background writers retry each write before failing.
const WRITER_PATIENCE: Duration = Duration::from_secs(90);
const HA_FLAGS: [&str; 8] = [
    "--ha-lease-ms",
    "1500",
    "--ha-margin-ms",
    "500",
    "--heartbeat-interval-ms",
    "100",
    "--heartbeat-timeout-ms",
    "1000",
];

/// A node whose control service runs in a mount namespace of its own, in which the share is
/// bind-mounted at `mnt`: unmounting it there makes the share unreachable for this node only.
struct WitnessNode {
    node: Node,
    /// The share (seen by the test) and the path where this node's mount namespace mounts
    /// it (the same path for every node, as a real share would be).
    share: PathBuf,
    mnt: PathBuf,
}

impl Deref for WitnessNode {
    type Target = Node;
    fn deref(&self) -> &Node {
        &self.node
    }
}

impl DerefMut for WitnessNode {
    fn deref_mut(&mut self) -> &mut Node {
        &mut self.node
    }
}

impl WitnessNode {
    fn new(root: &Path, name: &str, ip: &str, api_port: u16) -> WitnessNode {
        let mut node = Node::new(root, name, ip, api_port);
        node.ha_flags = &HA_FLAGS;
        WitnessNode {
            node,
            share: root.join("share"),
            mnt: root.join("mnt"),
        }
    }

    /// Starts (or restarts, same data dir) the control service inside its own mount
    /// namespace (the share bind-mounted at `mnt`) and waits for its data plane.
    fn start(&mut self) {
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount --bind "$0" "$1" && shift && exec "$@""#)
            .arg(&self.share)
            .arg(&self.mnt)
            .arg(binary("tandem-control"))
            .args(self.node.control_args());
        self.node.start_with(cmd);
    }

    /// The share becomes unreachable for this node (unmounted in its namespace).
    fn cut_share(&self) {
        let pid = self.control.as_ref().unwrap().id().to_string();
        let st = Command::new("nsenter")
            .args(["-t", &pid, "-m", "umount", "-l"])
            .arg(&self.mnt)
            .status()
            .unwrap();
        assert!(st.success(), "{}: umount of the share", self.name);
    }

    fn restore_share(&self) {
        let pid = self.control.as_ref().unwrap().id().to_string();
        let st = Command::new("nsenter")
            .args(["-t", &pid, "-m", "mount", "--bind"])
            .arg(&self.share)
            .arg(&self.mnt)
            .status()
            .unwrap();
        assert!(st.success(), "{}: mount of the share", self.name);
    }
}

/// The longest time without an acknowledged write after `since`: (start, end) of that gap.
fn longest_gap(times: &[Instant], since: Instant) -> (Instant, Instant) {
    let mut prev = since;
    let mut best = (since, since);
    for t in times.iter().filter(|t| **t > since) {
        if t.duration_since(prev) > best.1.duration_since(best.0) {
            best = (prev, *t);
        }
        prev = *t;
    }
    best
}

/// The node the lock file names as holder (read from the share by the test).
fn holder_id(share: &Path) -> Option<u64> {
    let bytes = std::fs::read(share.join("lock")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v["record"]["holder"].as_u64()
}

/// A scratch directory (named from `prefix`) with an empty share and its mount point, and
/// two started witness nodes in it: node-a on 127.0.0.1 and node-b on 127.0.0.2, with the
/// guard that prints their logs if the test fails.
fn start_pair(prefix: &str) -> (tempfile::TempDir, WitnessNode, WitnessNode, LogsOnFailure) {
    let root = scratch_root(prefix);
    std::fs::create_dir_all(root.path().join("share")).unwrap();
    std::fs::create_dir_all(root.path().join("mnt")).unwrap();
    let api_port = free_port();
    let mut a = WitnessNode::new(root.path(), "node-a", "127.0.0.1", api_port);
    let mut b = WitnessNode::new(root.path(), "node-b", "127.0.0.2", api_port);
    let _logs = LogsOnFailure::new(vec![a.log.clone(), b.log.clone()]);
    a.start();
    b.start();
    (root, a, b, _logs)
}

fn holder_index(nodes: &[&WitnessNode], ids: &[u64], share: &Path) -> Option<usize> {
    let h = holder_id(share)?;
    (0..nodes.len()).find(|&i| ids[i] == h)
}

#[test]
fn file_share_witness_takeover_and_share_loss() {
    let (_root, mut a, mut b, _logs) = start_pair("tandem-fwitness");
    let share = a.share.clone();
    let witness = a.mnt.join("lock").display().to_string();

    a.ok(&["device", "create", DEVICE, "--size", "64MiB"]);
    let mut model = Model(vec![0u8; SIZE]);
    {
        let mut c = login(&a, "iqn.2026-11.io.tandem.test:fw-pre");
        for i in 0..16u32 {
            model.write_through(&mut c, u64::from(i) * 4096, &pattern(64 << 10, 1 + i));
        }
        sync_cache(&mut c);
    }
    a.add_server(&b);
    b.add_server(&a);
    let sync = free_port();
    let link = sync_link(&a, &b, sync);
    let base_args = [
        "replica",
        "add",
        DEVICE,
        "--partner",
        "node-b",
        "--sync-link",
        &link,
        "--failover",
        "node-majority",
        "--witness-file",
    ];
    // ---- 1. Validation, then the device through both nodes.
    let mut bad = base_args.to_vec();
    bad.push("share/lock");
    let out = a.cli(&bad);
    assert!(
        !out.status.success(),
        "a relative witness file must be refused"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("absolute"), "{err}");
    let mut args = base_args.to_vec();
    args.push(&witness);
    let t0 = Instant::now();
    a.ok(&args);
    wait_until(
        "both nodes serving and synchronized after replica add",
        Duration::from_secs(90),
        || a.synchronized(2) && b.synchronized(2),
    );
    eprintln!(
        "MEASURE both synchronized {:?} after replica add (includes the first claim of the lock file)",
        t0.elapsed()
    );
    let ids = [a.node_id().unwrap(), b.node_id().unwrap()];
    eprintln!("node ids: node-a {}, node-b {}", ids[0], ids[1]);
    let h = holder_index(&[&a, &b], &ids, &share).expect("the lock file names a holder");
    eprintln!(
        "lock file: {}",
        std::fs::read_to_string(share.join("lock")).unwrap()
    );
    model.verify_through(&b, "replicated");
    {
        let mut c = login(&b, "iqn.2026-11.io.tandem.test:fw-b");
        for i in 0..50u32 {
            model.write_through(&mut c, 20_000 + u64::from(i) * 333, &pattern(8192, 500 + i));
        }
        sync_cache(&mut c);
    }
    model.verify_through(&a, "written through node-b");
    model.images_identical(&a, &b, "phase 1");

    // ---- 2. kill -9 of the whole node holding the lock file.
    let (victim, survivor) = if h == 0 { (&mut a, &b) } else { (&mut b, &a) };
    let (v, s) = (victim.name.clone(), survivor.name.clone());
    let survivor_id = if h == 0 { ids[1] } else { ids[0] };
    eprintln!("{v} holds the lock file; killing it");
    let writer = Writer::start(survivor, 2, 40_000, WRITER_PATIENCE);
    std::thread::sleep(Duration::from_millis(1000));
    let t_kill = victim.kill();
    let claimed = wait_until(
        &format!("{s} holds the lock file"),
        Duration::from_secs(30),
        || holder_id(&share) == Some(survivor_id),
    );
    eprintln!("MEASURE {s} claimed the lock file {claimed:?} after the kill");
    wait_until(
        &format!("{s} serving as sequencer, {v} not synchronized"),
        Duration::from_secs(30),
        || {
            survivor.replicas().is_some_and(|l| {
                l["replicas"].as_array().is_some_and(|rs| {
                    rs.iter().any(|r| {
                        r["local"] == true && r["serving"] == true && r["sequencer"] == true
                    })
                })
            }) && survivor.state_of(&v).is_some_and(|st| st != "synchronized")
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let t_restart = Instant::now();
    victim.start();
    wait_until(
        &format!("both synchronized after {v}'s restart"),
        Duration::from_secs(90),
        || victim.synchronized(2) && survivor.synchronized(2),
    );
    std::thread::sleep(Duration::from_millis(300));
    let times = writer.finish(&mut model);
    let (gap0, gap1) = longest_gap(&times, t_kill);
    let during_down = times
        .iter()
        .filter(|t| **t > t_kill && **t < t_restart)
        .count();
    eprintln!(
        "MEASURE kill -9 of the holder {v}: writer through {s} acknowledged {} writes, {during_down} while {v} was down; longest pause {:?} (from {:?} to {:?} after the kill)",
        times.len(),
        gap1.duration_since(gap0),
        gap0.duration_since(t_kill),
        gap1.duration_since(t_kill)
    );
    assert!(during_down > 0, "no write through {s} while {v} was down");
    assert!(
        gap1.duration_since(gap0) < MAX_PAUSE,
        "writes through {s} paused {:?}",
        gap1.duration_since(gap0)
    );
    model.verify_through(victim, "after the holder's kill");
    model.verify_through(survivor, "after the holder's kill");
    model.images_identical(victim, survivor, "after the holder's kill");

    // ---- 3. The share becomes unreachable for the holder, writers through both nodes.
    let h = holder_index(&[&a, &b], &ids, &share).expect("a holder");
    let (holder, other) = if h == 0 { (&a, &b) } else { (&b, &a) };
    let other_id = if h == 0 { ids[1] } else { ids[0] };
    let (hn, on) = (holder.name.clone(), other.name.clone());
    eprintln!("{hn} holds the lock file; its share becomes unreachable");
    let w_holder = Writer::start(holder, 3, 40_000, WRITER_PATIENCE);
    // Disjoint areas (each writer covers 16 Ki blocks from its base): the model is exact.
    let w_other = Writer::start(other, 4, 70_000, WRITER_PATIENCE);
    std::thread::sleep(Duration::from_millis(1500));
    let t_cut = Instant::now();
    holder.cut_share();
    let claimed = wait_until(
        &format!("{on} holds the lock file"),
        Duration::from_secs(30),
        || holder_id(&share) == Some(other_id),
    );
    eprintln!("MEASURE {on} claimed the lock file {claimed:?} after {hn}'s share was cut");
    wait_until(
        &format!("both synchronized again ({hn} rejoined through {on}'s authority)"),
        Duration::from_secs(90),
        || holder.synchronized(2) && other.synchronized(2),
    );
    std::thread::sleep(Duration::from_secs(1));
    let t_h = w_holder.finish(&mut model);
    let t_o = w_other.finish(&mut model);
    let (h0, h1) = longest_gap(&t_h, t_cut);
    let (o0, o1) = longest_gap(&t_o, t_cut);
    let ms = |t: Instant| t.duration_since(t_cut).as_millis();
    eprintln!(
        "MEASURE share cut on {hn}: its writer stopped {} ms after the cut and resumed at {} ms (pause {:?}); {on}'s writer paused from {} ms to {} ms ({:?}); acks {} / {}",
        ms(h0),
        ms(h1),
        h1.duration_since(h0),
        ms(o0),
        ms(o1),
        o1.duration_since(o0),
        t_h.len(),
        t_o.len()
    );
    // The cut holder's last acknowledged write (before its pause) came before the other
    // node acknowledged alone, and it acknowledged nothing more until it had rejoined.
    assert!(
        h1.duration_since(h0) > Duration::from_secs(1),
        "{hn} never stopped serving"
    );
    assert!(
        h0 <= o1,
        "{hn} acknowledged a write at {} ms, after {on} went on alone at {} ms",
        ms(h0),
        ms(o1)
    );
    assert!(h1 >= o1, "{hn} resumed before {on} took over");
    holder.restore_share();
    model.verify_through(holder, "after the share cut");
    model.verify_through(other, "after the share cut");
    model.images_identical(holder, other, "after the share cut");
}

/// Replica states that `n` reports which are not `synchronized` (empty while it sees both
/// synchronized; one entry when its `replica list` fails).
fn not_synchronized(n: &Node) -> Vec<String> {
    match n.replicas() {
        None => vec![format!("{}: replica list failed", n.name)],
        Some(l) => l["replicas"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["state"] != "synchronized")
            .map(|r| format!("{} sees {}={}", n.name, r["node"], r["state"]))
            .collect(),
    }
}

/// 4. The share becomes unreachable for the node that does NOT hold the lock file: nothing
///    changes (the holder keeps the file and both keep serving). Its mount point, an empty
///    directory once the share is unmounted, must not be taken for a first start either.
/// 5. Then kill -9 of the holder while the other still cannot reach the share: the other
///    cannot claim the file, so it stops (NOT READY) and never goes on alone.
/// 6. The share returns for the other: it claims the file by the lock rules (the record
///    unchanged for a file lease plus margin on its clock) and goes on; the killed node
///    restarts and resyncs; every acknowledged write on both, images byte-identical.
#[test]
fn share_lost_by_the_node_without_the_lock_changes_nothing_and_blocks_its_takeover() {
    let (_root, mut a, mut b, _logs) = start_pair("tandem-fwitness-other");
    let share = a.share.clone();
    // The mount point as it is with the share unmounted (the test's own view).
    let bare_mount_point = a.mnt.clone();
    let witness = a.mnt.join("lock").display().to_string();
    a.ok(&["device", "create", DEVICE, "--size", "64MiB"]);
    a.add_server(&b);
    b.add_server(&a);
    let link = sync_link(&a, &b, free_port());
    let t0 = Instant::now();
    a.ok(&[
        "replica",
        "add",
        DEVICE,
        "--partner",
        "node-b",
        "--sync-link",
        &link,
        "--init",
        "zeroed",
        "--failover",
        "node-majority",
        "--witness-file",
        &witness,
    ]);
    wait_until(
        "both nodes serving and synchronized after replica add",
        Duration::from_secs(90),
        || a.synchronized(2) && b.synchronized(2),
    );
    eprintln!("both synchronized {:?} after replica add", t0.elapsed());
    let ids = [a.node_id().unwrap(), b.node_id().unwrap()];
    let h = holder_index(&[&a, &b], &ids, &share).expect("the lock file names a holder");
    let mut model = Model(vec![0u8; SIZE]);
    let (holder, other) = if h == 0 {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    let (holder_id0, other_id) = (ids[h], ids[1 - h]);
    let (hn, on) = (holder.name.clone(), other.name.clone());
    eprintln!("{hn} holds the lock file; {on}'s share becomes unreachable");

    // ---- 4. The other node loses the share: nothing changes.
    let w_holder = Writer::start(holder, 5, 40_000, WRITER_PATIENCE);
    let w_other = Writer::start(other, 6, 70_000, WRITER_PATIENCE);
    std::thread::sleep(Duration::from_millis(1500));
    let t_cut = Instant::now();
    other.cut_share();
    // Well past a file lease plus margin (3.5 s) on the other's clock.
    let mut changes = Vec::new();
    let mut other_error = None;
    while t_cut.elapsed() < Duration::from_secs(8) {
        if holder_id(&share) != Some(holder_id0) {
            changes.push(format!(
                "{:?}: the share's lock file names {:?}",
                t_cut.elapsed(),
                holder_id(&share)
            ));
        }
        if bare_mount_point.join("lock").exists() {
            changes.push(format!(
                "{:?}: {on} wrote a lock file into its bare mount point",
                t_cut.elapsed()
            ));
        }
        for n in [&*holder, &*other] {
            changes.extend(
                not_synchronized(n)
                    .into_iter()
                    .map(|s| format!("{:?}: {s}", t_cut.elapsed())),
            );
        }
        if let Some(e) = other
            .ha_view()
            .and_then(|v| v["witness_file_error"].as_str().map(String::from))
        {
            other_error = Some(e);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let t_h = w_holder.finish(&mut model);
    let held_other = other.authority_state().map(|s| s["took_over_from"].clone());
    let (p_h, _) = pause_after(&t_h, t_cut);
    eprintln!(
        "MEASURE share lost by {on} (not the holder), 8 s: changes {changes:?}; writes through {hn}: longest pause {p_h:?}; {on}'s witness_file_error: {other_error:?}; {on}'s authority took_over_from: {held_other:?}"
    );
    assert!(changes.is_empty(), "something changed: {changes:#?}");
    assert!(
        other_error
            .as_deref()
            .is_some_and(|e| e.contains("missing")),
        "{on}'s HA view does not report its missing witness file: {other_error:?}"
    );
    assert!(
        p_h < Duration::from_secs(5),
        "writes through {hn} paused {p_h:?}"
    );

    // ---- 5. kill -9 of the holder while the other cannot reach the share.
    let t_kill = holder.kill();
    std::thread::sleep(Duration::from_secs(8));
    let still = holder_id(&share);
    let bare = bare_mount_point.join("lock").exists();
    let status_other = other.replicas();
    let t_restore = Instant::now();
    other.restore_share();
    let claimed = wait_until(
        &format!("{on} holds the lock file after its share returned"),
        Duration::from_secs(30),
        || holder_id(&share) == Some(other_id),
    );
    wait_until(
        &format!("{on} serving alone"),
        Duration::from_secs(30),
        || other.serving_without(&hn),
    );
    std::thread::sleep(Duration::from_secs(1));
    holder.start();
    let resync = wait_until(
        &format!("both synchronized after {hn}'s restart"),
        Duration::from_secs(90),
        || holder.synchronized(2) && other.synchronized(2),
    );
    std::thread::sleep(Duration::from_millis(500));
    let t_o = w_other.finish(&mut model);
    let stopped_after = Duration::from_secs(5);
    let acked_alone_without_share = t_o
        .iter()
        .filter(|t| **t > t_kill + stopped_after && **t < t_restore)
        .count();
    let last_before_restore = t_o
        .iter()
        .filter(|t| **t > t_kill && **t < t_restore)
        .max()
        .map(|t| t.duration_since(t_kill));
    let first_after_restore = t_o
        .iter()
        .find(|t| **t > t_restore)
        .map(|t| t.duration_since(t_restore));
    eprintln!(
        "MEASURE holder {hn} killed {:?} after {on}'s share was cut, {on} still without the share: lock file still names {still:?}; bare mount point lock file: {bare}; {on}'s last ack {last_before_restore:?} after the kill, {acked_alone_without_share} acks 5 s or more after it; share restored: {on} claimed the file {claimed:?} later, first ack {first_after_restore:?} after the restore; both synchronized {resync:?} after {hn}'s restart",
        t_kill.duration_since(t_cut)
    );
    eprintln!("{on}'s replica list before the restore: {status_other:?}");
    assert_eq!(
        still,
        Some(holder_id0),
        "the lock file changed hands while {on} could not reach the share"
    );
    assert!(!bare, "{on} claimed a lock file in its bare mount point");
    assert_eq!(
        acked_alone_without_share, 0,
        "{on} acknowledged writes without the holder and without the share"
    );
    let first =
        first_after_restore.expect("no write through the other node after the share returned");
    assert!(
        first >= claimed.saturating_sub(Duration::from_millis(500)),
        "{on} acknowledged a write {first:?} after the restore, before it claimed the file ({claimed:?})"
    );
    model.verify_through(holder, "after the other's share loss");
    model.verify_through(other, "after the other's share loss");
    model.images_identical(holder, other, "after the other's share loss");
}
