//! Replication and failover with real link cuts between nodes (issues 10 and 11): each data
//! node runs its own `tandem-control` and `tandem-dataplane` in its own network namespace,
//! with two sync links (`sync0`, `sync1`), a heartbeat link (`hb0`), a management network
//! and portals; the host (the test's iSCSI initiator, the `tandem` CLI) runs in a namespace
//! of its own and reaches every node's portal and API. The cluster is set up only with the
//! `tandem` CLI. Links are cut with the link going down (`sync0`'s switch port) or silently
//! (nftables drop rules inside one node's namespace: no RST, no carrier change).
//!
//! 1. One of two sync links cut under load: no host-visible error, no NOT READY, the partner
//!    stays synchronized, writes keep flowing through both nodes.
//! 2. Both sync links cut, heartbeat alive (heartbeat strategy, A first): B answers NOT READY
//!    04/0C and A goes on alone; links back: B is resynchronized, images byte-identical, every
//!    acknowledged write there.
//! 3. Every link between A and B cut (heartbeat strategy), the host still reaching both: the
//!    split brain this strategy permits is observed (both serve); on reconnect it must be
//!    detected and nothing merged.
//! 4. Node majority with a witness node: A cut from B and the witness answers NOT READY and
//!    nothing GOOD to a command sent after B went on (a path checker reads through A every
//!    100 ms); links back: A resynchronized, no split brain, images identical.
//!
//! Every scenario prints `MEASURE` lines: the longest write pause at the cut, the time to NOT
//! READY on the blocked node, the resync time after the links return.
//!
//! In the two failover scenarios (2 and 4) fio with the libiscsi engine is a second host
//! (`e2e::fio`): it writes checksummed blocks (crc32c, each block of an area of its own once,
//! rate-limited so that the job spans the failure, checks during the job and at its end)
//! through the node that keeps serving; after the links return, fio reads the area back
//! through both nodes and checks every block. fio has no multipath (one session, any NOT READY
//! ends the job), so it writes only through the surviving node: an error there is a failure
//! of the node that must keep serving. That node still answers a UNIT ATTENTION when its
//! partner leaves or returns, which a host retries: the area is written in slices, one fio
//! job each, and a slice ended by a UNIT ATTENTION alone is written again. Needs fio built
//! with libiscsi (`perf/build-fio-libiscsi.sh`); without it these scenarios fail, saying so.
//!
//! Needs root, `ip` and `nft`; skips (printing why) when namespaces cannot be made. The
//! scenarios run one at a time (a lock), so their timings are not disturbed by each other.

use std::time::{Duration, Instant};

use tandem_tests::e2e::fio::{self, Retry, SlicedWrite};
use tandem_tests::e2e::fio_area::DEFAULT_AREA as FIO;
use tandem_tests::e2e::host_io::{
    first_difference, login, probe_read, Event, Model, Outcome, Prober, Writer, WriterSpec,
};
use tandem_tests::e2e::netns_cluster::{
    cut_networks, cut_peers, heal_cuts, wait_until, ClusterNode, Strategy, TwoNodeCluster,
};
use tandem_tests::e2e::scenario::{finish, lock, ms, opt_ms};
use tandem_tests::netns::Member;

const DEVICE: &str = "disk1";
const SIZE: usize = 32 << 20;
const HOST: Member = Member::Host(1);
const A: Member = Member::Node(1);
const B: Member = Member::Node(2);
/// Bound on a write pause at a cut that must be invisible (one of two sync links).
const MAX_PAUSE_ONE_LINK: Duration = Duration::from_secs(5);
/// Bound on the pause while a partner is decided lost (lease + margin + engine timeout,
/// on a loaded machine).
const MAX_PAUSE_FAILOVER: Duration = Duration::from_secs(15);
/// Bound on a resync of the changed regions after the links return.
const MAX_RESYNC: Duration = Duration::from_secs(60);

/// The cluster of these scenarios (`netns_cluster::TwoNodeCluster`) with their own helpers.
struct Cluster(TwoNodeCluster);

impl std::ops::Deref for Cluster {
    type Target = TwoNodeCluster;
    fn deref(&self) -> &TwoNodeCluster {
        &self.0
    }
}

impl std::ops::DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut TwoNodeCluster {
        &mut self.0
    }
}

impl Cluster {
    /// None (with the reason printed) when network namespaces cannot be made here.
    fn start(strategy: Strategy) -> Option<Cluster> {
        TwoNodeCluster::start(strategy, "tandem-ha-netns", DEVICE, "32MiB").map(Cluster)
    }

    /// A multipath-like writer over both nodes.
    fn multipath_writer(&self, area: (u64, u64), id_base: u32) -> Writer {
        Writer::start(
            &self.topo,
            HOST,
            &[self.path(&self.a), self.path(&self.b)],
            WriterSpec::new(area, id_base),
        )
    }

    /// A writer through one node only, queueing while it does not serve.
    fn single_writer(&self, n: &ClusterNode, area: (u64, u64), id_base: u32) -> Writer {
        let mut spec = WriterSpec::new(area, id_base);
        spec.retry_failed_after = Duration::from_millis(200);
        spec.queue_bound = Duration::from_secs(120);
        Writer::start(&self.topo, HOST, &[self.path(n)], spec)
    }

    /// A path checker on `n`: one READ every 100 ms on a session of its own.
    fn prober(&self, n: &ClusterNode) -> Prober {
        Prober::start(&self.topo, HOST, &self.path(n), Duration::from_millis(100))
    }

    fn image(n: &ClusterNode) -> Vec<u8> {
        n.read_image(DEVICE, SIZE)
    }

    /// Every acknowledged write reads back through both nodes; both image files equal the
    /// model and each other. Only when no I/O runs.
    fn verify_all(&self, model: &Model, what: &str) {
        self.0.verify_all(HOST, model, SIZE, what);
    }

    /// Authorities' split-brain records and `split-brain` replica states, from both nodes.
    fn split_brain_reports(&self) -> Vec<String> {
        let mut out = Vec::new();
        for n in [&self.a, &self.b] {
            if let Some(st) = n.api_get(&self.topo, "/api/v1/ha/status") {
                for auth in st["authorities"].as_array().into_iter().flatten() {
                    if auth["split_brain"]
                        .as_array()
                        .is_some_and(|v| !v.is_empty())
                    {
                        out.push(format!(
                            "{}: authority of {} records split brain {} (superseded_by {})",
                            n.name, auth["device"], auth["split_brain"], auth["superseded_by"]
                        ));
                    }
                }
            }
            if let Some(l) = n.replicas(&self.topo, DEVICE) {
                for r in l["replicas"].as_array().into_iter().flatten() {
                    if r["state"] == "split-brain" {
                        out.push(format!(
                            "{}: replica list shows {} split-brain ({})",
                            n.name, r["node"], r["reason"]
                        ));
                    }
                }
            }
        }
        out
    }

    /// Starts fio's writing slices through `n` from the host's namespace (a slice is
    /// written again after UNIT ATTENTION only: `n` serves throughout).
    fn fio_write(&self, fio: &std::path::Path, n: &ClusterNode, seed: u64) -> SlicedWrite {
        FIO.write(fio, &self.topo, HOST, n, DEVICE, seed, Retry::UnitAttention)
    }

    /// fio's read-back of what the slices with `seed` wrote, through both nodes: every
    /// block must pass its check. Then the area, identical on both images (checked by
    /// `verify_all`), is taken into `model` from node-a's image.
    fn fio_verify_both(&self, fio: &std::path::Path, seed: u64, model: &mut Model, what: &str) {
        FIO.read_back(
            fio,
            &self.topo,
            HOST,
            &[&self.a, &self.b],
            DEVICE,
            seed,
            what,
        );
        FIO.take_into(model, &Self::image(&self.a));
    }

    /// Whether `n` answers a READ now (a fresh session): Ack, NotReady, ...
    fn serves(&self, n: &ClusterNode) -> Option<Outcome> {
        let mut c = login(
            &self.topo,
            HOST,
            &self.path(n),
            "iqn.2026-11.io.tandem.test:probe",
        );
        let mut r = probe_read(&mut c);
        if r == Some(Outcome::UnitAttention) {
            r = probe_read(&mut c);
        }
        r
    }
}

// ---- 1. one of two sync links cut under load ----

#[test]
fn one_sync_link_cut_under_load_is_invisible() {
    let _one = lock();
    let Some(c) = Cluster::start(Strategy::Heartbeat) else {
        return;
    };
    let mut model = Model::new(SIZE);
    let w = c.multipath_writer((8192, 16384), 1_000_000);
    std::thread::sleep(Duration::from_millis(1500));
    let t_cut = Instant::now();
    c.topo.cut(A, "sync0").expect("cut sync0");
    eprintln!("sync0 of node-a cut (link down)");
    // Longer than the heartbeat timeout and the engine's link timeout: B must stay
    // synchronized and serving throughout.
    let mut states = Vec::new();
    let mut link_seen_down = false;
    while t_cut.elapsed() < Duration::from_secs(6) {
        if let Some(l) = c.a.replicas(&c.topo, DEVICE) {
            for r in l["replicas"].as_array().into_iter().flatten() {
                states.push(format!("{}={}", r["node"], r["state"]));
                link_seen_down |= r["links"].as_array().is_some_and(|ls| {
                    ls.iter()
                        .any(|x| x["kind"] == "sync" && x["state"] == "down")
                });
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    c.a.ok(&c.topo, &["replica", "list", DEVICE]);
    let t_restore = Instant::now();
    c.topo.restore(A, "sync0").expect("restore sync0");
    let back = wait_until(
        "both synchronized with every link up after sync0 returns",
        Duration::from_secs(30),
        || c.both_synchronized(),
    );
    std::thread::sleep(Duration::from_millis(500));
    let r = finish(w, "multipath A+B");
    model.apply(&r);

    let pause = r.longest_pause(t_cut, t_restore);
    let not_ready = r.count(0, Outcome::NotReady, t_cut, Instant::now())
        + r.count(1, Outcome::NotReady, t_cut, Instant::now());
    let during = |p| {
        r.acked
            .iter()
            .filter(|a| a.path == p && a.at > t_cut && a.at < t_restore)
            .count()
    };
    eprintln!(
        "MEASURE one sync link cut: longest write pause {} while cut; acks during the cut through node-a {}, node-b {}; NOT READY answers {not_ready}; sync0 reported down: {link_seen_down}; every link up again {} after restore",
        ms(pause),
        during(0),
        during(1),
        ms(back)
    );
    assert!(
        link_seen_down,
        "node-a never reported a sync link down while sync0 was cut"
    );
    let bad: Vec<&String> = states
        .iter()
        .filter(|s| !s.ends_with("=\"synchronized\""))
        .collect();
    assert!(
        bad.is_empty(),
        "a replica left synchronized while one of two sync links was cut: {bad:?}"
    );
    assert_eq!(
        not_ready, 0,
        "NOT READY answered while one of two sync links was cut"
    );
    assert!(
        during(0) > 0 && during(1) > 0,
        "writes stopped flowing through a node while sync0 was cut"
    );
    assert!(
        pause < MAX_PAUSE_ONE_LINK,
        "writes paused {pause:?} while one sync link was cut"
    );
    c.verify_all(&model, "after one sync link cut and restored");
}

// ---- 2. both sync links cut, heartbeat alive ----

#[test]
fn both_sync_links_cut_heartbeat_alive_second_blocks_first_goes_on() {
    let _one = lock();
    let Some(c) = Cluster::start(Strategy::Heartbeat) else {
        return;
    };
    let fio = fio::locate();
    let mut model = Model::new(SIZE);
    let w = c.multipath_writer((8192, 16384), 2_000_000);
    let probe_b = c.prober(&c.b);
    // fio through node-a, which keeps serving.
    let fio_a = c.fio_write(&fio, &c.a, 2);
    std::thread::sleep(Duration::from_millis(1500));
    let t_cut = Instant::now();
    cut_networks(&c.topo, B, &["sync0", "sync1"]);
    eprintln!("sync0 and sync1 cut silently in node-b's namespace (hb0 and mgmt alive)");
    let out = wait_until(
        "node-a reports node-b not synchronized",
        Duration::from_secs(30),
        || {
            c.a.state_of(&c.topo, DEVICE, "node-b")
                .is_some_and(|s| s == "not-synchronized")
        },
    );
    // Let the writer go on alone for a while.
    std::thread::sleep(Duration::from_secs(3));
    c.a.ok(&c.topo, &["replica", "list", DEVICE]);
    let b_view = c.b.replicas(&c.topo, DEVICE);
    eprintln!(
        "node-b's view while cut: {}",
        b_view.map(|v| v.to_string()).unwrap_or_default()
    );
    let t_restore = Instant::now();
    heal_cuts(&c.topo, B);
    let resync = wait_until(
        "both synchronized after the sync links return",
        MAX_RESYNC,
        || c.both_synchronized(),
    );
    // The writer tries node-b's failed path again once a second: give it time to.
    std::thread::sleep(Duration::from_millis(3000));
    let r = finish(w, "multipath A+B");
    let probes_b = probe_b.finish();
    model.apply(&r);
    FIO.finish_writes(fio_a, t_cut, "node-a");

    let pause = r.longest_pause(t_cut, t_restore);
    let nr_b = probes_b.first(Outcome::NotReady, t_cut);
    let good_b = probes_b.last_good(t_cut + Duration::from_secs(5), t_restore);
    let held_a = r.longest_command(0, t_cut, t_restore);
    let held_b = r.longest_command(1, t_cut, t_restore);
    let acks_a_alone = r
        .acked
        .iter()
        .filter(|a| a.path == 0 && a.at > t_cut + pause && a.at < t_restore)
        .count();
    let acks_b_during = r
        .acked
        .iter()
        .filter(|a| a.path == 1 && a.at > t_cut + Duration::from_secs(5) && a.at < t_restore)
        .count();
    let acks_b_after = r
        .acked
        .iter()
        .filter(|a| a.path == 1 && a.at > t_restore)
        .count();
    eprintln!(
        "MEASURE both sync links cut (heartbeat alive): node-b NOT READY {} after the cut (path checker reads); node-a reports node-b not-synchronized {} after; longest write pause {} (longest command held: by node-a {}, by node-b {}); {acks_a_alone} writes acknowledged by node-a alone; resync (both synchronized) {} after the links returned; {acks_b_after} writes through node-b after",
        opt_ms(nr_b),
        ms(out),
        ms(pause),
        ms(held_a),
        ms(held_b),
        ms(resync)
    );
    assert!(
        good_b.is_none(),
        "node-b answered a read while it should be out (5 s after the cut)"
    );
    assert!(
        nr_b.is_some(),
        "node-b never answered NOT READY while its sync links were cut"
    );
    assert!(acks_a_alone > 0, "node-a did not go on alone");
    assert_eq!(
        acks_b_during, 0,
        "node-b acknowledged writes while cut from node-a's sync links"
    );
    assert!(
        acks_b_after > 0,
        "node-b did not serve writes again after the resync"
    );
    assert!(
        pause < MAX_PAUSE_FAILOVER,
        "writes paused {pause:?} at the cut"
    );
    c.fio_verify_both(
        &fio,
        2,
        &mut model,
        "after both sync links cut and restored",
    );
    c.verify_all(&model, "after both sync links cut and restored");
}

// ---- 3. every link between A and B cut (heartbeat strategy): split brain ----

#[test]
fn total_partition_heartbeat_split_brain_detected_never_merged() {
    let _one = lock();
    let Some(c) = Cluster::start(Strategy::Heartbeat) else {
        return;
    };
    let mut model = Model::new(SIZE);
    // Common data first, then quiet (no write in flight at the cut).
    let w = c.multipath_writer((8192, 8192), 3_000_000);
    std::thread::sleep(Duration::from_millis(1000));
    model.apply(&finish(w, "multipath before the partition"));

    let t_cut = Instant::now();
    cut_peers(&c.topo, A, &[B]);
    eprintln!("every link between node-a and node-b cut (nft in node-a's namespace); the host reaches both");
    // Both sides write the same area, each through its own node.
    let area = (20_000, 4096);
    let wa = c.single_writer(&c.a, area, 4_000_000);
    let wb = c.single_writer(&c.b, area, 5_000_000);
    std::thread::sleep(Duration::from_secs(8));
    let (ra, rb) = (finish(wa, "through node-a"), finish(wb, "through node-b"));
    let t_stop = Instant::now();
    let mut model_a = model.clone();
    model_a.apply(&ra);
    let mut model_b = model.clone();
    model_b.apply(&rb);
    let a_acks = ra.acked.len();
    let b_acks = rb.acked.len();
    eprintln!(
        "MEASURE total partition (heartbeat): node-a: first ack {} after the cut, longest pause {}, {a_acks} acks; node-b: first NOT READY {}, first ack {} after the cut, {b_acks} acks{}",
        opt_ms(ra.acked.first().map(|x| x.at - t_cut)),
        ms(ra.longest_pause(t_cut, t_stop)),
        opt_ms(rb.first(0, Outcome::NotReady, t_cut)),
        opt_ms(rb.acked.first().map(|x| x.at - t_cut)),
        if b_acks > 0 { " (node-b took over: split brain, as this strategy permits)" } else { "" }
    );
    assert!(
        a_acks > 0,
        "node-a (priority first) stopped serving in a total partition"
    );
    // What each side holds now.
    if let Err(e) = model_a.check(0, &Cluster::image(&c.a)) {
        panic!("node-a's image during the partition: {e}");
    }
    if let Err(e) = model_b.check(0, &Cluster::image(&c.b)) {
        panic!("node-b's image during the partition: {e}");
    }

    let t_heal = Instant::now();
    heal_cuts(&c.topo, A);
    eprintln!("links between node-a and node-b back");
    let mut reports = Vec::new();
    let detected = if b_acks > 0 {
        let t = wait_until(
            "the split brain reported (authority split_brain record or replica state split-brain)",
            Duration::from_secs(30),
            || {
                reports = c.split_brain_reports();
                !reports.is_empty()
            },
        );
        Some(t)
    } else {
        None
    };
    eprintln!(
        "MEASURE split brain detected {} after reconnect: {reports:#?}",
        opt_ms(detected)
    );
    // Give a wrong merge time to happen, then look.
    std::thread::sleep(Duration::from_secs(5));
    c.a.ok(&c.topo, &["replica", "list", DEVICE]);
    c.b.ok(&c.topo, &["replica", "list", DEVICE]);
    let later = c.split_brain_reports();
    eprintln!(
        "split brain still reported {:?} after reconnect: {later:#?}",
        t_heal.elapsed()
    );
    let (sa, sb) = (c.serves(&c.a), c.serves(&c.b));
    eprintln!("after reconnect: node-a answers {sa:?}, node-b answers {sb:?}");
    if b_acks == 0 {
        // Node-b never went on alone: it takes over only if it held a lease when node-a
        // was last heard (docs/ha.md, "Heartbeat strategy"), and its lease may have lapsed
        // first. No split brain then: it is resynchronized from node-a like any node that
        // fell behind, and node-a's writes must all be on both copies.
        assert!(
            reports.is_empty(),
            "split brain reported though node-b acknowledged nothing: {reports:#?}"
        );
        wait_until(
            "node-b resynchronized from node-a (it never went on alone)",
            MAX_RESYNC,
            || c.both_synchronized(),
        );
        for (node, image) in [
            ("node-a", Cluster::image(&c.a)),
            ("node-b", Cluster::image(&c.b)),
        ] {
            if let Err(e) = model_a.check(0, &image) {
                panic!("{node}'s copy after node-b's resync lacks node-a's writes: {e}");
            }
        }
        eprintln!("after reconnect: node-b never went on alone; resynchronized from node-a");
        return;
    }
    let (ia, ib) = (Cluster::image(&c.a), Cluster::image(&c.b));
    if let Err(e) = model_a.check(0, &ia) {
        panic!("node-a's copy changed after reconnect (merged?): {e}");
    }
    if let Err(e) = model_b.check(0, &ib) {
        panic!("node-b's copy changed after reconnect (merged?): {e}");
    }
    {
        let lo = area.0 as usize * 512;
        let hi = lo + area.1 as usize * 512;
        assert!(
            first_difference(&ia[lo..hi], &ib[lo..hi]).is_some(),
            "both sides wrote the area, yet the images are equal there"
        );
        assert!(
            !(sa == Some(Outcome::Ack) && sb == Some(Outcome::Ack)),
            "both nodes still serve diverging copies {:?} after reconnect",
            t_heal.elapsed()
        );
    }
    eprintln!(
        "after reconnect: each image holds only its own side's writes (nothing merged), split brain reported: {}",
        !reports.is_empty()
    );
}

// ---- 4. node majority with a witness node: A isolated from B and the witness ----

#[test]
fn node_majority_isolated_node_stops_before_partner_goes_on() {
    let _one = lock();
    let Some(c) = Cluster::start(Strategy::WitnessNode) else {
        return;
    };
    let fio = fio::locate();
    let wa = c.single_writer(&c.a, (8192, 4096), 6_000_000);
    let wb = c.single_writer(&c.b, (20_000, 4096), 7_000_000);
    let probe_a = c.prober(&c.a);
    // fio through node-b, which keeps serving.
    let fio_b = c.fio_write(&fio, &c.b, 4);
    std::thread::sleep(Duration::from_millis(1500));
    let t_cut = Instant::now();
    cut_peers(&c.topo, A, &[B, Member::Witness]);
    eprintln!("node-a cut from node-b and the witness on every link (the host still reaches it)");
    wait_until(
        "node-b reports node-a not synchronized",
        Duration::from_secs(30),
        || {
            c.b.state_of(&c.topo, DEVICE, "node-a")
                .is_some_and(|s| s == "not-synchronized")
        },
    );
    std::thread::sleep(Duration::from_secs(3));
    c.b.ok(&c.topo, &["replica", "list", DEVICE]);
    let t_restore = Instant::now();
    heal_cuts(&c.topo, A);
    let resync = wait_until(
        "both synchronized after node-a's links return",
        MAX_RESYNC,
        || c.both_synchronized(),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let (ra, rb) = (finish(wa, "through node-a"), finish(wb, "through node-b"));
    let probes_a = probe_a.finish();
    FIO.finish_writes(fio_b, t_cut, "node-b");

    let a_nr = probes_a.first(Outcome::NotReady, t_cut);
    let a_held = ra.longest_command(0, t_cut, Instant::now());
    let b_pause = rb.longest_pause(t_cut, t_restore);
    // B goes on: its first acknowledgement after its pause at the cut.
    let b_resume = rb
        .acked
        .iter()
        .map(|x| x.at)
        .filter(|t| *t > t_cut)
        .collect::<Vec<_>>()
        .windows(2)
        .find(|w| w[1] - w[0] >= b_pause)
        .map(|w| w[1])
        .or_else(|| rb.acked.iter().map(|x| x.at).find(|t| *t > t_cut));
    // What node-a answered while isolated, with when each command was sent: an answer is
    // produced between the two instants, and the host thread may be descheduled, so the
    // checks below compare send times with B's receive time (robust on a loaded machine).
    let a_answers: Vec<&Event> = probes_a
        .0
        .iter()
        .chain(&ra.events)
        .filter(|e| e.at > t_cut && e.at < t_restore)
        .collect();
    let a_last_good = a_answers
        .iter()
        .filter(|e| e.outcome == Outcome::Ack)
        .map(|e| e.at)
        .max();
    let a_last_good_sent = a_answers
        .iter()
        .filter(|e| e.outcome == Outcome::Ack)
        .map(|e| e.at - e.took)
        .max();
    let a_first_nr_sent = probes_a
        .0
        .iter()
        .find(|e| e.outcome == Outcome::NotReady && e.at > t_cut)
        .map(|e| e.at - e.took);
    eprintln!(
        "MEASURE node majority, node-a isolated: node-a NOT READY {} after the cut (path checker reads; last GOOD answer {}; a write it held answered after {}); node-b goes on {} after the cut (longest pause {}); resync {} after the links returned",
        opt_ms(a_nr),
        opt_ms(a_last_good.map(|t| t - t_cut)),
        ms(a_held),
        opt_ms(b_resume.map(|t| t - t_cut)),
        ms(b_pause),
        ms(resync)
    );
    let b_resume = b_resume.expect("node-b never went on without node-a");
    // The guarantee: node-a answers nothing GOOD to a command sent after node-b went on,
    // and it answers NOT READY. Whether the first NOT READY was sent before node-b went on
    // depends on when the path checker ran (every 100 ms, 300 ms margin): printed, not
    // asserted, so that a descheduled checker on a loaded machine does not fail the test.
    let a_first_nr_sent = a_first_nr_sent.expect("node-a never answered NOT READY while isolated");
    eprintln!(
        "node-a's first NOT READY answered a command sent {:?} after the cut, {} node-b went on",
        a_first_nr_sent - t_cut,
        if a_first_nr_sent < b_resume {
            "before"
        } else {
            "after"
        }
    );
    if let Some(sent) = a_last_good_sent {
        assert!(
            sent < b_resume,
            "node-a answered GOOD to a command sent {:?} after the cut, after node-b went on alone ({:?})",
            sent - t_cut,
            b_resume - t_cut
        );
    }
    assert!(
        b_pause < MAX_PAUSE_FAILOVER,
        "node-b's writes paused {b_pause:?}"
    );
    let reports = c.split_brain_reports();
    assert!(
        reports.is_empty(),
        "split brain under node majority: {reports:?}"
    );
    if let Some(w) = &c.witness {
        if let Some(st) = w.api_get(&c.topo, "/api/v1/ha/status") {
            eprintln!("witness authorities: {}", st["authorities"]);
        }
    }
    let mut model = Model::new(SIZE);
    model.apply(&ra);
    model.apply(&rb);
    c.fio_verify_both(&fio, 4, &mut model, "after node-a's isolation and return");
    c.verify_all(&model, "after node-a's isolation and return");
}
