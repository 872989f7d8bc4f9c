//! Redundant links between two data nodes (issue 11): each node has two sync links (`sync0`,
//! `sync1`) and two heartbeat links (`hb0`, `hb1`), each on an interface and network of its
//! own, in its own network namespace (`netns_cluster::TwoNodeCluster` with
//! `Links::TWO_EACH`), heartbeat strategy with node-a first. The host (the test's iSCSI
//! initiator and the `tandem` CLI) runs in a namespace of its own. Links are cut silently
//! with nftables drop rules inside node-b's namespace (no RST, the carrier stays up).
//!
//! 1. One of the two sync links cut under load: no host-visible error, no NOT READY, both
//!    nodes stay synchronized and keep acknowledging writes; the link returns.
//! 2. Both sync links and one heartbeat link cut, one heartbeat link left: node-b (priority
//!    second) answers NOT READY 04/0C, node-a goes on alone; links back: node-b is
//!    resynchronized, images byte-identical, every acknowledged write there.
//! 3. One of the two heartbeat links cut: nothing changes (same epoch, both synchronized, no
//!    NOT READY, writes through both); the control service reports that link down and the
//!    other up.
//!
//! Every scenario prints `MEASURE` lines and ends by reading the whole disk through both
//! nodes and comparing it and both image files with every acknowledged write. Needs root,
//! `ip` and `nft`; skips (printing why) when namespaces cannot be made. One scenario at a
//! time (a lock), so their timings do not disturb each other.

use std::time::{Duration, Instant};

use tandem_tests::e2e::host_io::{Model, Outcome, Prober, Writer, WriterSpec};
use tandem_tests::e2e::netns_cluster::{
    cut_networks, heal_cuts, link, wait_until, ClusterNode, Links, Strategy, TwoNodeCluster,
    HEARTBEAT_PORT,
};
use tandem_tests::e2e::scenario::{acks, finish, lock, ms, opt_ms};
use tandem_tests::netns::Member;

const DEVICE: &str = "disk1";
const SIZE: usize = 32 << 20;
const HOST: Member = Member::Host(1);
const A: Member = Member::Node(1);
const B: Member = Member::Node(2);
/// Bound on a write pause at a cut that must be invisible (one of two links of a kind).
const MAX_PAUSE_INVISIBLE: Duration = Duration::from_secs(5);
/// Bound on the pause while a partner is decided lost (lease + margin + engine timeout, on
/// a loaded machine).
const MAX_PAUSE_FAILOVER: Duration = Duration::from_secs(15);
/// Bound on a resync of the changed regions after the links return.
const MAX_RESYNC: Duration = Duration::from_secs(60);
/// How long a cut that must change nothing is held: longer than the heartbeat timeout (1 s)
/// and the sync link's silence timeout (1 s), several times over.
const HOLD_INVISIBLE: Duration = Duration::from_secs(5);

/// The two-node cluster with two links of each kind, and this file's helpers.
struct Cluster(TwoNodeCluster);

impl std::ops::Deref for Cluster {
    type Target = TwoNodeCluster;
    fn deref(&self) -> &TwoNodeCluster {
        &self.0
    }
}

impl Cluster {
    /// None (with the reason printed) when network namespaces cannot be made here.
    fn start() -> Option<Cluster> {
        let t0 = Instant::now();
        let c = TwoNodeCluster::start_with_links(
            Strategy::Heartbeat,
            Links::TWO_EACH,
            "tandem-ha-links",
            DEVICE,
            "32MiB",
        )
        .map(Cluster)?;
        eprintln!(
            "cluster with two sync and two heartbeat links up in {:?}",
            t0.elapsed()
        );
        Some(c)
    }

    /// A multipath-like writer over both nodes (path 0: node-a, path 1: node-b).
    fn multipath_writer(&self, id_base: u32) -> Writer {
        Writer::start(
            &self.topo,
            HOST,
            &[self.path(&self.a), self.path(&self.b)],
            WriterSpec::new((8192, 16384), id_base),
        )
    }

    fn prober(&self, n: &ClusterNode) -> Prober {
        Prober::start(&self.topo, HOST, &self.path(n), Duration::from_millis(100))
    }

    /// The HA view of `DEVICE` on `n` (`GET /api/v1/ha/status/disk1`).
    fn ha_view(&self, n: &ClusterNode) -> Option<serde_json::Value> {
        n.api_get(&self.topo, &format!("/api/v1/ha/status/{DEVICE}"))
    }

    /// The epoch of the newest configuration `n` has seen.
    fn epoch(&self, n: &ClusterNode) -> Option<serde_json::Value> {
        self.ha_view(n).map(|v| v["config"]["epoch"].clone())
    }

    /// The `LOCAL=PARTNER` names of the links on which `on` heard its partner (up) and did
    /// not (down), from its control service's heartbeat view.
    fn heartbeat_links(&self, on: &ClusterNode) -> Option<(Vec<String>, Vec<String>)> {
        let v = self.ha_view(on)?;
        let p = v["partners"].as_array()?.first()?.clone();
        let names = |k: &str| -> Vec<String> {
            p[k].as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        };
        Some((names("links_up"), names("links_down")))
    }

    /// Every acknowledged write reads back through both nodes; both image files equal the
    /// model and each other. Only when no I/O runs.
    fn verify_all(&self, model: &Model, what: &str) {
        self.0.verify_all(HOST, model, SIZE, what);
    }

    /// Replica states and sync link states that `on` reports, sampled for `hold`, with the
    /// number of samples in which a sync link was down.
    fn watch_states(&self, hold: Duration) -> (Vec<String>, usize) {
        let t0 = Instant::now();
        let mut states = Vec::new();
        let mut sync_down = 0;
        while t0.elapsed() < hold {
            for n in [&self.a, &self.b] {
                if let Some(l) = n.replicas(&self.topo, DEVICE) {
                    for r in l["replicas"].as_array().into_iter().flatten() {
                        states.push(format!("{} sees {}={}", n.name, r["node"], r["state"]));
                        if r["links"].as_array().is_some_and(|ls| {
                            ls.iter()
                                .any(|x| x["kind"] == "sync" && x["state"] == "down")
                        }) {
                            sync_down += 1;
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        (states, sync_down)
    }
}

/// Replica states that are not `synchronized`.
fn unsynchronized(states: &[String]) -> Vec<&String> {
    states
        .iter()
        .filter(|s| !s.ends_with("=\"synchronized\""))
        .collect()
}

// ---- 1. one of two sync links cut under load ----

#[test]
fn one_of_two_sync_links_cut_is_invisible() {
    let _one = lock();
    let Some(c) = Cluster::start() else {
        return;
    };
    let t_start = Instant::now();
    let mut model = Model::new(SIZE);
    let w = c.multipath_writer(1_000_000);
    std::thread::sleep(Duration::from_millis(1500));
    let t_cut = Instant::now();
    cut_networks(&c.topo, B, &["sync1"]);
    eprintln!("sync1 cut silently in node-b's namespace (sync0, hb0, hb1 alive)");
    let (states, sync_down) = c.watch_states(HOLD_INVISIBLE);
    c.a.ok(&c.topo, &["replica", "list", DEVICE]);
    let t_heal = Instant::now();
    heal_cuts(&c.topo, B);
    let back = wait_until(
        "both synchronized with every sync link up after sync1 returns",
        Duration::from_secs(30),
        || c.both_synchronized(),
    );
    std::thread::sleep(Duration::from_millis(500));
    let r = finish(w, "multipath A+B");
    model.apply(&r);

    let pause = r.longest_pause(t_cut, t_heal);
    let now = Instant::now();
    let not_ready =
        r.count(0, Outcome::NotReady, t_cut, now) + r.count(1, Outcome::NotReady, t_cut, now);
    let (through_a, through_b) = (acks(&r, 0, t_cut, t_heal), acks(&r, 1, t_cut, t_heal));
    eprintln!(
        "MEASURE one of two sync links cut: longest write pause {} while cut; acks while cut through node-a {through_a}, node-b {through_b}; NOT READY answers {not_ready}; samples with a sync link down {sync_down}; every link up again {} after the heal",
        ms(pause),
        ms(back)
    );
    assert!(
        sync_down > 0,
        "no node reported a sync link down while sync1 was cut"
    );
    let bad = unsynchronized(&states);
    assert!(
        bad.is_empty(),
        "a replica left synchronized while one of two sync links was cut: {bad:?}"
    );
    assert_eq!(
        not_ready, 0,
        "NOT READY answered while one of two sync links was cut"
    );
    assert!(
        through_a > 0 && through_b > 0,
        "writes stopped flowing through a node while sync1 was cut"
    );
    assert!(
        pause < MAX_PAUSE_INVISIBLE,
        "writes paused {pause:?} while one of two sync links was cut"
    );
    c.verify_all(&model, "after one of two sync links cut and restored");
    eprintln!(
        "SUMMARY one sync link of two: scenario {:?}",
        t_start.elapsed()
    );
}

// ---- 2. every sync link and one heartbeat link cut: one heartbeat link left ----

#[test]
fn every_sync_link_cut_one_heartbeat_link_left_second_stops_first_goes_on() {
    let _one = lock();
    let Some(c) = Cluster::start() else {
        return;
    };
    let t_start = Instant::now();
    let mut model = Model::new(SIZE);
    let w = c.multipath_writer(2_000_000);
    let probe_b = c.prober(&c.b);
    std::thread::sleep(Duration::from_millis(1500));
    let epoch_before = c.epoch(&c.a);
    let t_cut = Instant::now();
    cut_networks(&c.topo, B, &["sync0", "sync1", "hb1"]);
    eprintln!("sync0, sync1 and hb1 cut silently in node-b's namespace (hb0 and mgmt alive)");
    let out = wait_until(
        "node-a reports node-b not synchronized",
        Duration::from_secs(30),
        || {
            c.a.state_of(&c.topo, DEVICE, "node-b")
                .is_some_and(|s| s == "not-synchronized")
        },
    );
    // Node-a goes on alone for a while; node-b must not take over: it still hears node-a
    // on hb0.
    std::thread::sleep(Duration::from_secs(3));
    c.a.ok(&c.topo, &["replica", "list", DEVICE]);
    let b_heard = c.heartbeat_links(&c.b);
    let b_view = c.ha_view(&c.b);
    let t_heal = Instant::now();
    heal_cuts(&c.topo, B);
    let resync = wait_until(
        "both synchronized after the links return",
        MAX_RESYNC,
        || c.both_synchronized(),
    );
    // The writer tries node-b's failed path again once a second: give it time to.
    std::thread::sleep(Duration::from_millis(3000));
    let r = finish(w, "multipath A+B");
    let probes_b = probe_b.finish();
    model.apply(&r);

    let pause = r.longest_pause(t_cut, t_heal);
    let nr_b = probes_b.first(Outcome::NotReady, t_cut);
    let good_b = probes_b.last_good(t_cut + Duration::from_secs(5), t_heal);
    let a_alone = acks(&r, 0, t_cut + pause, t_heal);
    let b_during = acks(&r, 1, t_cut + Duration::from_secs(5), t_heal);
    let b_after = acks(&r, 1, t_heal, Instant::now());
    eprintln!(
        "MEASURE every sync link cut, hb0 left: node-b NOT READY {} after the cut (path checker); node-a reports node-b not-synchronized {} after; longest write pause {}; {a_alone} writes acknowledged by node-a alone; node-b resynchronized {} after the heal; {b_after} writes through node-b after",
        opt_ms(nr_b),
        ms(out),
        ms(pause),
        ms(resync)
    );
    eprintln!("node-b's heartbeat links while cut (up, down): {b_heard:?}");
    // Node-b heard node-a on hb0 only, so it did not take the authority over.
    let (up, down) = b_heard.expect("node-b's HA view while cut");
    let hb0 = link(&c.topo, B, A, "hb0", HEARTBEAT_PORT);
    assert_eq!(
        up,
        vec![hb0.clone()],
        "node-b heard node-a on exactly hb0 while the others were cut"
    );
    assert_eq!(down.len(), 3, "node-b's links down while cut: {down:?}");
    let b_view = b_view.expect("node-b's HA view");
    assert!(
        b_view["took_over_from"].is_null(),
        "node-b took the authority over while it still heard node-a on hb0: {b_view}"
    );
    assert!(good_b.is_none(), "node-b answered a read while out");
    assert!(nr_b.is_some(), "node-b never answered NOT READY while cut");
    assert!(a_alone > 0, "node-a did not go on alone");
    assert_eq!(b_during, 0, "node-b acknowledged writes while cut");
    assert!(
        b_after > 0,
        "node-b did not serve writes again after the resync"
    );
    assert!(
        pause < MAX_PAUSE_FAILOVER,
        "writes paused {pause:?} at the cut"
    );
    let epoch_after = c.epoch(&c.a);
    eprintln!("epoch before the cut {epoch_before:?}, after the heal {epoch_after:?}");
    assert_ne!(
        epoch_before, epoch_after,
        "removing and readmitting node-b did not change the epoch"
    );
    c.verify_all(&model, "after every sync link cut and restored");
    eprintln!(
        "SUMMARY every sync link cut: scenario {:?}",
        t_start.elapsed()
    );
}

// ---- 3. one of two heartbeat links cut: nothing changes ----

#[test]
fn one_of_two_heartbeat_links_cut_changes_nothing() {
    let _one = lock();
    let Some(c) = Cluster::start() else {
        return;
    };
    let t_start = Instant::now();
    let mut model = Model::new(SIZE);
    let w = c.multipath_writer(3_000_000);
    let (probe_a, probe_b) = (c.prober(&c.a), c.prober(&c.b));
    std::thread::sleep(Duration::from_millis(1500));
    let epoch_before = (c.epoch(&c.a), c.epoch(&c.b));
    assert!(
        epoch_before.0.as_ref().is_some_and(|e| !e.is_null()),
        "no epoch on node-a: {epoch_before:?}"
    );
    let t_cut = Instant::now();
    cut_networks(&c.topo, B, &["hb0"]);
    eprintln!("hb0 cut silently in node-b's namespace (sync0, sync1, hb1 alive)");
    let hb0_a = link(&c.topo, A, B, "hb0", HEARTBEAT_PORT);
    let hb1_a = link(&c.topo, A, B, "hb1", HEARTBEAT_PORT);
    let seen_down = wait_until(
        "node-a reports hb0 down (and hb1 up)",
        Duration::from_secs(15),
        || {
            c.heartbeat_links(&c.a)
                .is_some_and(|(up, down)| down.contains(&hb0_a) && up.contains(&hb1_a))
        },
    );
    let (states, sync_down) = c.watch_states(HOLD_INVISIBLE);
    let epoch_during = (c.epoch(&c.a), c.epoch(&c.b));
    let t_heal = Instant::now();
    heal_cuts(&c.topo, B);
    let back = wait_until(
        "node-a hears node-b on hb0 again",
        Duration::from_secs(15),
        || {
            c.heartbeat_links(&c.a)
                .is_some_and(|(up, down)| up.contains(&hb0_a) && down.is_empty())
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    let r = finish(w, "multipath A+B");
    let (pa, pb) = (probe_a.finish(), probe_b.finish());
    model.apply(&r);

    let now = Instant::now();
    let pause = r.longest_pause(t_cut, t_heal);
    let not_ready = r.count(0, Outcome::NotReady, t_cut, now)
        + r.count(1, Outcome::NotReady, t_cut, now)
        + pa.0
            .iter()
            .filter(|e| e.at > t_cut && e.outcome == Outcome::NotReady)
            .count()
        + pb.0
            .iter()
            .filter(|e| e.at > t_cut && e.outcome == Outcome::NotReady)
            .count();
    let (through_a, through_b) = (acks(&r, 0, t_cut, t_heal), acks(&r, 1, t_cut, t_heal));
    let epoch_after = (c.epoch(&c.a), c.epoch(&c.b));
    eprintln!(
        "MEASURE one of two heartbeat links cut: hb0 reported down {} after the cut, up again {} after the heal; longest write pause {}; acks while cut through node-a {through_a}, node-b {through_b}; NOT READY answers (writer and path checkers) {not_ready}; epochs before {epoch_before:?}, during {epoch_during:?}, after {epoch_after:?}",
        ms(seen_down),
        ms(back),
        ms(pause)
    );
    let bad = unsynchronized(&states);
    assert!(bad.is_empty(), "a replica left synchronized: {bad:?}");
    assert_eq!(sync_down, 0, "a sync link was reported down");
    assert_eq!(
        not_ready, 0,
        "NOT READY answered while one heartbeat link was cut"
    );
    assert!(
        through_a > 0 && through_b > 0,
        "writes stopped flowing through a node while hb0 was cut"
    );
    assert!(pause < MAX_PAUSE_INVISIBLE, "writes paused {pause:?}");
    assert_eq!(
        epoch_before, epoch_during,
        "the configuration changed while only hb0 was cut"
    );
    assert_eq!(
        epoch_before, epoch_after,
        "the configuration changed after hb0 returned"
    );
    for n in [&c.a, &c.b] {
        let v = c.ha_view(n).expect("HA view");
        assert!(
            v["took_over_from"].is_null(),
            "{} took the authority over: {v}",
            n.name
        );
    }
    c.verify_all(&model, "after one of two heartbeat links cut and restored");
    eprintln!(
        "SUMMARY one heartbeat link of two: scenario {:?}",
        t_start.elapsed()
    );
}
