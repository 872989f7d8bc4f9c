//! Process faults and flapping links in network namespaces (issue 11, item 6), on top of the
//! link cuts of `ha_netns.rs`. Each data node runs its own `tandem-control` (which starts its
//! `tandem-dataplane`) in its own namespace, with two sync links, one heartbeat link, a
//! management network and portals; the host (the test's initiator and the `tandem` CLI) has
//! a namespace of its own. The cluster is made with the CLI only.
//!
//! 1. kill -9 of the control service only, on the node hosting the authority (heartbeat, A
//!    first): A's data plane keeps running without lease renewals and must stop
//!    acknowledging; B takes the authority over and goes on alone; A's control service
//!    restarted: A rejoins through B and is resynchronized.
//! 2. kill -9 of the data plane only (A, sequencer): the control service restarts it; it
//!    comes back not synchronized (NOT READY), is resynchronized, then serves.
//! 3. kill -9 of both on one node: not here, `ha_cluster.rs` (phases 4 and 5, heartbeat,
//!    with takeover and takeover back) and `ha_three_node.rs` (node majority) run it.
//! 4. SIGSTOP of a whole node (A: control service and data plane, the authority host) for
//!    longer than the timeout, then SIGCONT: B takes over; a writer through A issues writes
//!    right after A wakes, and none of them may be acknowledged until B's authority has
//!    readmitted A, synchronized.
//! 5. Both sync links flapping (down 500 ms, up 500 ms) for 10 s (30 s with
//!    `TANDEM_SOAK=1`) under a multipath writer: afterwards both synchronized, images
//!    identical, no acknowledged write lost.
//! 6. Node majority with a witness node: witness down then partner down (the two data nodes
//!    take the vote over and both serve; then the last node stops), partner down then
//!    witness down (node-a with the witness, then nobody), and witness down, back (the vote
//!    goes back to it), then partner down (node-a goes on with the witness). docs/ha.md,
//!    "Node majority with a witness".
//! 7. Node majority with a witness node, partial cuts (one cluster, two phases): node-b cut
//!    from the witness only (no takeover, no new epoch, node-a keeps node-b in and
//!    synchronized; node-b gets no lease renewal and answers NOT READY within its lease, the
//!    host goes on through node-a), then node-b cut from the witness and from node-a (only
//!    node-a, with the witness, serves; node-b NOT READY 04/0C within its lease).
//!
//! Every scenario ends with every acknowledged write read back through both nodes, the
//! image files compared with each other and with the writes, and a `SUMMARY` line (scenario
//! | who served | what the host saw | pause | acknowledged writes lost).
//!
//! fio with the libiscsi engine (`e2e::fio_area`) is a second host in scenarios 1, 2, 4 and
//! 5: it writes checksummed blocks in slices through the node that goes on (node-b; node-a
//! in 5) across the fault, a slice ended by UNIT ATTENTION or NOT READY 04/0C written again
//! (that node pauses while the authority moves), and afterwards reads every block back
//! through the other node: 0 verify errors (the final checks then compare both images). The multipath writer is `host_io`'s.
//!
//! Needs root, `ip` and `nft`; skips (printing why) when namespaces cannot be made. The
//! scenarios run one at a time (a lock).

use std::time::{Duration, Instant};

use tandem_tests::e2e::fio::{self, Retry};
use tandem_tests::e2e::fio_area::DEFAULT_AREA as FIO;
use tandem_tests::e2e::host_io::{
    login, probe_read, Event, Model, Outcome, ProbeLog, Prober, Report, Writer, WriterSpec,
};
use tandem_tests::e2e::netns_cluster::{
    alive, cut_peers, heal_cuts, kill9, wait_until, ClusterNode, Signal, Strategy, TwoNodeCluster,
};
use tandem_tests::e2e::scenario::{acks, finish, lock, ms, opt_ms};
use tandem_tests::netns::Member;

const DEVICE: &str = "disk1";
const SIZE: usize = 32 << 20;
const HOST: Member = Member::Host(1);
const A: Member = Member::Node(1);
const B: Member = Member::Node(2);
/// Bound on a write pause while a partner is decided lost (lease + margin + engine timeout,
/// a takeover's quiet period, on a loaded machine).
const MAX_PAUSE_FAILOVER: Duration = Duration::from_secs(20);
/// Bound on a resync after the fault ends.
const MAX_RESYNC: Duration = Duration::from_secs(60);
/// A node's lease (1 s with `HA_FLAGS`) plus slack for a loaded machine: a node that lost
/// its authority answers NOT READY within this.
const LEASE_END: Duration = Duration::from_secs(3);
/// How long node-b stays cut from the witness only: several leases plus margins.
const CUT_WITNESS_ONLY: Duration = Duration::from_secs(5);

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
        TwoNodeCluster::start(strategy, "tandem-ha-netns-faults", DEVICE, "32MiB").map(Cluster)
    }

    /// A multipath-like writer over both nodes (path 0 = node-a, 1 = node-b) that logs in
    /// again when a node's data plane goes away.
    fn multipath_writer(&self, area: (u64, u64), id_base: u32) -> Writer {
        let mut spec = WriterSpec::new(area, id_base);
        spec.reconnect = true;
        spec.queue_bound = Duration::from_secs(60);
        Writer::start(
            &self.topo,
            HOST,
            &[self.path(&self.a), self.path(&self.b)],
            spec,
        )
    }

    /// A writer through one node only, queueing (and trying the node again every
    /// `retry`) while it does not serve.
    fn single_writer(
        &self,
        n: &ClusterNode,
        area: (u64, u64),
        id_base: u32,
        retry: Duration,
    ) -> Writer {
        let mut spec = WriterSpec::new(area, id_base);
        spec.retry_failed_after = retry;
        spec.queue_bound = Duration::from_secs(120);
        spec.reconnect = true;
        Writer::start(&self.topo, HOST, &[self.path(n)], spec)
    }

    /// A path checker on `n`: one READ every `every`, logging in again after a data plane
    /// restart.
    fn prober(&self, n: &ClusterNode, every: Duration) -> Prober {
        Prober::start_reconnecting(&self.topo, HOST, &self.path(n), every)
    }

    /// fio's verifying writes through `n` (seed `seed`), retrying a slice after UNIT
    /// ATTENTION or NOT READY 04/0C (the node written through pauses in these failovers).
    fn fio_write(&self, fio: &std::path::Path, n: &ClusterNode, seed: u64) -> fio::SlicedWrite {
        FIO.write(
            fio,
            &self.topo,
            HOST,
            n,
            DEVICE,
            seed,
            Retry::UnitAttentionOrNotReady,
        )
    }

    /// fio's read-back through `n` (0 verify errors; the node fio did not write through,
    /// so its replica is what is checked), then its area into `model`: `verify_all` then
    /// reads it back through both nodes and compares both image files byte for byte. One
    /// read-back, not two, for CI's time budget.
    fn fio_read_back(
        &self,
        fio: &std::path::Path,
        n: &ClusterNode,
        seed: u64,
        model: &mut Model,
        what: &str,
    ) {
        FIO.read_back(fio, &self.topo, HOST, &[n], DEVICE, seed, what);
        FIO.take_into(model, &n.read_image(DEVICE, SIZE));
    }

    /// Every acknowledged write reads back through both nodes; both image files equal the
    /// model and each other. Only when no I/O runs.
    fn verify_all(&self, model: &Model, what: &str) {
        self.0.verify_all(HOST, model, SIZE, what);
    }

    /// The end of every scenario here: neither node reports a split brain, then
    /// [`Self::verify_all`].
    fn verify_no_split_brain(&self, model: &Model, what: &str) {
        let sb = self.split_brain_reports();
        assert!(sb.is_empty(), "split brain reported: {sb:?}");
        self.verify_all(model, what);
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
                            "{}: authority records split brain {}",
                            n.name, auth["split_brain"]
                        ));
                    }
                }
            }
            if let Some(l) = n.replicas(&self.topo, DEVICE) {
                for r in l["replicas"].as_array().into_iter().flatten() {
                    if r["state"] == "split-brain" {
                        out.push(format!("{}: {} split-brain", n.name, r["node"]));
                    }
                }
            }
        }
        out
    }

    /// What `n` answers to a READ now, on a fresh session.
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

    /// Where `n` says the device's authority is and who it took over from (for the log).
    fn authority_view(&self, n: &ClusterNode) -> String {
        n.api_get(&self.topo, &format!("/api/v1/ha/status/{DEVICE}"))
            .map(|v| {
                format!(
                    "authority {} took_over_from {} epoch {}",
                    v["authority"], v["took_over_from"], v["config"]["epoch"]
                )
            })
            .unwrap_or_else(|| "(no answer)".into())
    }

    /// kill -9 of a whole node: control service and data plane.
    fn kill_node(&mut self, which: Member) -> Instant {
        let c = &mut self.0;
        let n = if which == A { &c.a } else { &c.b };
        let dp = n.dataplane_pid();
        let t = n.kill_control(&mut c.topo);
        if let Some(dp) = dp {
            kill9(dp);
            wait_until(
                &format!("{}'s data plane gone", n.name),
                Duration::from_secs(10),
                || !alive(dp),
            );
        }
        eprintln!("kill -9 of {} (control service and data plane)", n.name);
        t
    }
}

/// GOOD answers (writes through `path` of `r`, and every probe) in `(from, to)`, with the
/// instant each command was sent.
fn good_sent(
    r: Option<(&Report, usize)>,
    probes: &ProbeLog,
    from: Instant,
    to: Instant,
) -> Vec<Instant> {
    let writes = r
        .into_iter()
        .flat_map(|(r, path)| r.events.iter().filter(move |e| e.path == path));
    writes
        .chain(&probes.0)
        .filter(|e: &&Event| e.outcome == Outcome::Ack && e.at > from && e.at < to)
        .map(|e| e.at - e.took)
        .collect()
}

/// Polls `node`'s view of `of` until `f` holds; the poll starts and states seen.
fn poll_state(
    c: &Cluster,
    node: &ClusterNode,
    of: &str,
    timeout: Duration,
    mut done: impl FnMut(&str) -> bool,
) -> Vec<(Instant, String)> {
    let t0 = Instant::now();
    let mut seen = Vec::new();
    loop {
        let at = Instant::now();
        let s = node
            .state_of(&c.topo, DEVICE, of)
            .unwrap_or_else(|| "(no answer)".into());
        let stop = done(&s);
        seen.push((at, s));
        if stop {
            return seen;
        }
        assert!(
            t0.elapsed() < timeout,
            "{}'s view of {of} never reached the expected state in {timeout:?}: {:?}",
            node.name,
            seen.iter().map(|(_, s)| s).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn summary(scenario: &str, served: &str, host_saw: &str, pause: &str, lost: usize) {
    eprintln!("SUMMARY | {scenario} | {served} | {host_saw} | {pause} | acked writes lost: {lost}");
}

// ---- 1. kill -9 of the control service only, on the authority host ----

#[test]
fn control_service_killed_on_authority_host() {
    let _one = lock();
    let Some(mut c) = Cluster::start(Strategy::Heartbeat) else {
        return;
    };
    let fio = fio::locate();
    let w = c.multipath_writer((8192, 16384), 11_000_000);
    let probe_a = c.prober(&c.a, Duration::from_millis(100));
    // fio through node-b, which goes on (pausing while it takes the authority over).
    let fio_b = c.fio_write(&fio, &c.b, 11);
    std::thread::sleep(Duration::from_millis(1500));
    let dp_before = c.a.dataplane_pid().expect("node-a's data plane");
    let t_kill = c.0.a.kill_control(&mut c.0.topo);
    eprintln!("kill -9 of node-a's control service only (authority host); its data plane {dp_before} keeps running");
    let seen = poll_state(&c, &c.b, "node-a", Duration::from_secs(30), |s| {
        s == "not-synchronized"
    });
    let t_b_alone = seen.last().unwrap().0;
    std::thread::sleep(Duration::from_secs(3));
    let dp_survived = alive(dp_before);
    eprintln!(
        "node-b after the kill: {}; node-a's old data plane still running: {dp_survived}",
        c.authority_view(&c.b)
    );
    c.b.ok(&c.topo, &["replica", "list", DEVICE]);
    let t_restart = Instant::now();
    c.0.a.restart(&mut c.0.topo);
    let resync = wait_until(
        "both synchronized after node-a's control service restarts",
        MAX_RESYNC,
        || c.both_synchronized(),
    );
    eprintln!(
        "after the restart: node-a {}, node-b {}",
        c.authority_view(&c.a),
        c.authority_view(&c.b)
    );
    let (fio_longest, fio_retries) = FIO.finish_writes(fio_b, t_kill, "node-b");
    std::thread::sleep(Duration::from_millis(2500));
    let r = finish(w, "multipath A+B");
    let probes = probe_a.finish();
    let mut model = Model::new(SIZE);
    model.apply(&r);
    c.fio_read_back(&fio, &c.a, 11, &mut model, "after the control service kill");
    eprintln!("MEASURE control kill: fio through node-b longest write {}, {fio_retries} slices written again, 0 verify errors", ms(fio_longest));

    let a_nr = probes.first(Outcome::NotReady, t_kill);
    let a_good_late = good_sent(Some((&r, 0)), &probes, t_kill, t_restart)
        .into_iter()
        .filter(|sent| *sent > t_b_alone)
        .count();
    let pause = r.longest_pause(t_kill, t_restart);
    let b_alone = acks(&r, 1, t_b_alone, t_restart);
    let a_after = acks(&r, 0, t_restart + resync, Instant::now());
    eprintln!(
        "MEASURE control kill on the authority host: node-a's data plane NOT READY {} after the kill; node-b reports node-a out {} after; longest write pause {}; {b_alone} writes through node-b alone; both synchronized {} after node-a's restart; {a_after} writes through node-a after",
        opt_ms(a_nr),
        ms(t_b_alone - t_kill),
        ms(pause),
        ms(resync)
    );
    assert!(
        dp_survived,
        "node-a's data plane died with its control service"
    );
    assert!(
        a_nr.is_some_and(|d| d < t_restart - t_kill),
        "node-a's data plane never answered NOT READY once its control service was gone"
    );
    assert_eq!(
        a_good_late, 0,
        "node-a answered GOOD to a command sent after node-b went on alone"
    );
    assert!(b_alone > 0, "node-b did not go on alone");
    assert!(a_after > 0, "node-a did not serve again after its resync");
    assert!(pause < MAX_PAUSE_FAILOVER, "writes paused {pause:?}");
    c.verify_no_split_brain(&model, "after node-a's control service kill and restart");
    summary(
        "kill -9 control service on the authority host (heartbeat)",
        "node-b alone (took the authority over); node-a again after resync",
        &format!(
            "node-a NOT READY 04/0C {} after the kill (its data plane still up); node-b out of node-a {} after",
            opt_ms(a_nr),
            ms(t_b_alone - t_kill)
        ),
        &format!("{} (resync {} after restart)", ms(pause), ms(resync)),
        0,
    );
}

// ---- 2. kill -9 of the data plane only ----

#[test]
fn dataplane_killed_comes_back_unsynchronized_then_serves() {
    let _one = lock();
    let Some(c) = Cluster::start(Strategy::Heartbeat) else {
        return;
    };
    let fio = fio::locate();
    let w = c.multipath_writer((8192, 16384), 12_000_000);
    let probe_a = c.prober(&c.a, Duration::from_millis(20));
    let fio_b = c.fio_write(&fio, &c.b, 12);
    std::thread::sleep(Duration::from_millis(1500));
    let (old, t_kill) = c.a.kill_dataplane();
    eprintln!("kill -9 of node-a's data plane (pid {old}); its control service keeps running");
    let restarted = wait_until(
        "node-a's control service restarted its data plane",
        Duration::from_secs(30),
        || c.a.dataplane_pid().is_some_and(|p| p != old),
    );
    let states = poll_state(&c, &c.a, "node-a", MAX_RESYNC, |s| s == "synchronized");
    let resync = wait_until(
        "both synchronized after node-a's data plane restart",
        MAX_RESYNC,
        || c.both_synchronized(),
    );
    let t_sync = Instant::now();
    let (fio_longest, fio_retries) = FIO.finish_writes(fio_b, t_kill, "node-b");
    std::thread::sleep(Duration::from_millis(2500));
    let r = finish(w, "multipath A+B");
    let probes = probe_a.finish();
    let mut model = Model::new(SIZE);
    model.apply(&r);
    c.fio_read_back(&fio, &c.a, 12, &mut model, "after the data plane kill");
    eprintln!("MEASURE data plane kill: fio through node-b longest write {}, {fio_retries} slices written again, 0 verify errors", ms(fio_longest));

    // What node-a answered to commands sent after the kill, in order, without the
    // connection losses. A command sent just before the kill may be answered GOOD by the
    // dying data plane after `t_kill` (seen once, 1 ms after): that answer says nothing
    // about the restarted one.
    let answers: Vec<&Event> = probes
        .0
        .iter()
        .filter(|e| e.at - e.took > t_kill && e.outcome != Outcome::PathDown)
        .collect();
    let first_good = answers
        .iter()
        .find(|e| e.outcome == Outcome::Ack)
        .map(|e| e.at);
    let nr_before_good = answers
        .iter()
        .filter(|e| e.outcome == Outcome::NotReady && first_good.is_none_or(|g| e.at < g))
        .count();
    let own_states: Vec<&str> = states.iter().map(|(_, s)| s.as_str()).collect();
    let pause = r.longest_pause(t_kill, t_sync);
    let b_alone = acks(&r, 1, t_kill, t_sync);
    eprintln!(
        "MEASURE data plane kill: restarted {} after the kill; node-a's own states seen in `replica list` {own_states:?}; {nr_before_good} NOT READY answers before its first GOOD ({} after the kill); `replica list` showed both synchronized {} after the kill; longest write pause {}; {b_alone} writes through node-b meanwhile",
        ms(restarted),
        opt_ms(first_good.map(|g| g - t_kill)),
        ms(t_sync - t_kill),
        ms(pause)
    );
    let _ = resync;
    let first_good = first_good.expect("node-a never served again after its data plane restart");
    assert!(
        nr_before_good > 0,
        "node-a's restarted data plane served without first answering NOT READY (unsynchronized)"
    );
    // node-b holds writes while its engine waits for node-a (or for the verdict): it need
    // not acknowledge anything alone, but writes must flow again within the bound.
    assert!(
        acks(&r, 1, t_kill, Instant::now()) > 0,
        "node-b acknowledged nothing after node-a's data plane was killed"
    );
    assert!(pause < MAX_PAUSE_FAILOVER, "writes paused {pause:?}");
    c.verify_no_split_brain(&model, "after node-a's data plane kill");
    summary(
        "kill -9 data plane (node-a, sequencer; heartbeat)",
        "node-b alone; node-a after resync",
        &format!(
            "node-a: connection lost, then {nr_before_good} NOT READY 04/0C, GOOD again {} after the kill",
            ms(first_good - t_kill)
        ),
        &format!("{} (restart {}, both synchronized {})", ms(pause), ms(restarted), ms(t_sync - t_kill)),
        0,
    );
}

// ---- 4. SIGSTOP of a whole node longer than the timeout, then SIGCONT ----

/// Regression test of a product failure it found (issue 11): on a loaded machine node-b
/// often never took the authority over while node-a was stopped (2 of 4 runs, load average
/// 15-30): node-a silent for 4 s, node-b synchronized in the newest configuration, not
/// serving, no takeover for the whole 30 s pause. The rule "take over only with a lease"
/// looked only at the last exchange that found the data plane serving; when the stop landed
/// during a slow call to the authority, the last heartbeat came more than half the margin
/// after that exchange, for good. It now also counts the end of the last lease granted
/// (`driver::leased_when`).
#[test]
fn paused_node_acknowledges_nothing_after_it_wakes() {
    let _one = lock();
    let Some(c) = Cluster::start(Strategy::Heartbeat) else {
        return;
    };
    let wb = c.single_writer(&c.b, (20_000, 4096), 14_000_000, Duration::from_millis(200));
    // Tries node-a again 50 ms after each NOT READY: writes reach it right after it wakes.
    let wa = c.single_writer(&c.a, (8192, 4096), 13_000_000, Duration::from_millis(50));
    let fio = fio::locate();
    let fio_b = c.fio_write(&fio, &c.b, 14);
    std::thread::sleep(Duration::from_millis(1500));
    let t_stop = Instant::now();
    let pids = c.a.signal_node(&c.topo, Signal::SIGSTOP);
    eprintln!("SIGSTOP of node-a (authority host): pids {pids:?}");
    std::thread::sleep(Duration::from_secs(4));
    eprintln!(
        "node-b's HA view 4 s into the pause: {}",
        c.b.api_get(&c.topo, &format!("/api/v1/ha/status/{DEVICE}"))
            .unwrap_or_default()
    );
    let seen = poll_state(&c, &c.b, "node-a", Duration::from_secs(30), |s| {
        s == "not-synchronized"
    });
    let t_b_alone = seen.last().unwrap().0;
    eprintln!("node-b while node-a is stopped: {}", c.authority_view(&c.b));
    std::thread::sleep(Duration::from_secs(1));
    let t_cont = Instant::now();
    c.a.signal_node(&c.topo, Signal::SIGCONT);
    eprintln!("SIGCONT of node-a after {:?}", t_cont - t_stop);
    // node-b's (the current authority's) view of node-a until it is readmitted.
    let readmission = poll_state(&c, &c.b, "node-a", MAX_RESYNC, |s| s == "synchronized");
    let t_readmitted = readmission.last().unwrap().0;
    wait_until("both synchronized after node-a woke", MAX_RESYNC, || {
        c.both_synchronized()
    });
    eprintln!(
        "after SIGCONT: node-a {}, node-b {}",
        c.authority_view(&c.a),
        c.authority_view(&c.b)
    );
    let (fio_longest, fio_retries) = FIO.finish_writes(fio_b, t_stop, "node-b");
    std::thread::sleep(Duration::from_millis(2000));
    let (ra, rb) = (finish(wa, "through node-a"), finish(wb, "through node-b"));
    let mut model = Model::new(SIZE);
    model.apply(&ra);
    model.apply(&rb);
    c.fio_read_back(
        &fio,
        &c.a,
        14,
        &mut model,
        "after node-a's SIGSTOP and SIGCONT",
    );
    eprintln!("MEASURE SIGSTOP: fio through node-b longest write {}, {fio_retries} slices written again, 0 verify errors", ms(fio_longest));

    // node-b's last look that still had node-a out: any GOOD through node-a answered
    // before that look is a write acknowledged by a node the authority had not readmitted.
    let last_out = readmission
        .iter()
        .filter(|(_, s)| s != "synchronized")
        .map(|(at, _)| *at)
        .max()
        .unwrap_or(t_cont);
    // Commands sent after SIGCONT (the writer's clock: sent = answered - took). The one a
    // stopped node held may be answered GOOD after it wakes if its engine completed it
    // before the stop (node-b, the sequencer, committed it): such a write must be on
    // node-b's copy, which `verify_all` checks with every other acknowledged write.
    let after_wake: Vec<&Event> = ra
        .events
        .iter()
        .filter(|e| e.at - e.took > t_cont)
        .collect();
    let held: Vec<(Outcome, Duration)> = ra
        .events
        .iter()
        .filter(|e| e.at > t_cont && e.at - e.took <= t_cont)
        .map(|e| (e.outcome, e.at - t_cont))
        .collect();
    eprintln!("node-a's answers after SIGCONT to commands sent before it: {held:?}");
    // A unit attention (the ALUA state changed) is retried on the same path, like a host.
    let first = after_wake
        .iter()
        .map(|e| e.outcome)
        .find(|o| *o != Outcome::UnitAttention);
    let early_good: Vec<Duration> = after_wake
        .iter()
        .filter(|e| e.outcome == Outcome::Ack && e.at < last_out)
        .map(|e| e.at - t_cont)
        .collect();
    let nr = after_wake
        .iter()
        .filter(|e| e.outcome == Outcome::NotReady)
        .count();
    let first_good = after_wake
        .iter()
        .find(|e| e.outcome == Outcome::Ack)
        .map(|e| e.at - t_cont);
    let b_pause = rb.longest_pause(t_stop, t_readmitted);
    let b_alone = acks(&rb, 0, t_b_alone, t_readmitted);
    eprintln!(
        "MEASURE SIGSTOP of node-a for {}: node-b reports node-a out {} after the stop; after SIGCONT node-a answered {nr} NOT READY (first answer {first:?}), first GOOD {} after waking; node-b readmitted node-a {} after SIGCONT; node-b's longest write pause {}; {b_alone} writes through node-b alone",
        ms(t_cont - t_stop),
        ms(t_b_alone - t_stop),
        opt_ms(first_good),
        ms(t_readmitted - t_cont),
        ms(b_pause)
    );
    assert!(
        early_good.is_empty(),
        "node-a acknowledged writes sent after SIGCONT {early_good:?} after it, before node-b readmitted it ({:?} after SIGCONT)",
        last_out - t_cont
    );
    assert!(
        matches!(first, Some(Outcome::NotReady) | Some(Outcome::PathDown)),
        "node-a's first answer to a command sent after waking was {first:?}, not NOT READY"
    );
    assert!(nr > 0, "node-a answered no NOT READY after waking");
    assert!(b_alone > 0, "node-b did not go on alone");
    assert!(
        b_pause < MAX_PAUSE_FAILOVER,
        "node-b's writes paused {b_pause:?}"
    );
    c.verify_no_split_brain(&model, "after node-a's SIGSTOP and SIGCONT");
    summary(
        "SIGSTOP of node-a (authority host) longer than the timeout, SIGCONT (heartbeat)",
        "node-b alone (took the authority over); node-a after readmission",
        &format!(
            "node-a after waking: {nr} NOT READY 04/0C, no GOOD until readmitted {} after SIGCONT",
            ms(t_readmitted - t_cont)
        ),
        &format!("{} (node-b, at the stop)", ms(b_pause)),
        0,
    );
}

// ---- 5. sync links flapping every 500 ms ----

#[test]
fn sync_links_flapping_converge() {
    let _one = lock();
    let Some(c) = Cluster::start(Strategy::Heartbeat) else {
        return;
    };
    let soak = std::env::var_os("TANDEM_SOAK").is_some_and(|v| v == "1");
    let span = Duration::from_secs(if soak { 30 } else { 10 });
    let w = c.multipath_writer((8192, 16384), 15_000_000);
    // fio through node-a, the sequencer, which keeps serving while node-b drops out.
    let fio = fio::locate();
    let fio_a = c.fio_write(&fio, &c.a, 15);
    std::thread::sleep(Duration::from_millis(1000));
    let t0 = Instant::now();
    let mut flaps: u32 = 0;
    // Toggled on a fixed 500 ms schedule (not 500 ms after each `ip` command, which takes
    // a while on a loaded machine).
    let half = Duration::from_millis(500);
    while t0.elapsed() < span {
        for net in ["sync0", "sync1"] {
            c.topo.cut(A, net).expect("cut");
        }
        let up_at = t0 + half * (2 * flaps + 1);
        std::thread::sleep(up_at.saturating_duration_since(Instant::now()));
        for net in ["sync0", "sync1"] {
            c.topo.restore(A, net).expect("restore");
        }
        flaps += 1;
        let down_at = t0 + half * (2 * flaps);
        std::thread::sleep(down_at.saturating_duration_since(Instant::now()));
    }
    let t_end = Instant::now();
    eprintln!("{flaps} flaps of sync0 and sync1 in {:?}", t_end - t0);
    let converge = wait_until("both synchronized after the flapping", MAX_RESYNC, || {
        c.both_synchronized()
    });
    eprintln!("node-a {}", c.authority_view(&c.a));
    let (fio_longest, fio_retries) = FIO.finish_writes(fio_a, t0, "node-a");
    std::thread::sleep(Duration::from_millis(2000));
    let r = finish(w, "multipath A+B");
    let mut model = Model::new(SIZE);
    model.apply(&r);
    wait_until(
        "both synchronized before fio's read-back",
        MAX_RESYNC,
        || c.both_synchronized(),
    );
    c.fio_read_back(&fio, &c.b, 15, &mut model, "after the flapping");
    eprintln!("MEASURE flapping: fio through node-a longest write {}, {fio_retries} slices written again, 0 verify errors", ms(fio_longest));
    let pause = r.longest_pause(t0, t_end);
    let (na, nb) = (
        r.count(0, Outcome::NotReady, t0, Instant::now()),
        r.count(1, Outcome::NotReady, t0, Instant::now()),
    );
    let (aa, ab) = (acks(&r, 0, t0, t_end), acks(&r, 1, t0, t_end));
    eprintln!(
        "MEASURE sync links flapping {:?} ({flaps} flaps): longest write pause {}; acks during the flapping node-a {aa}, node-b {ab}; NOT READY node-a {na}, node-b {nb}; both synchronized {} after the flapping stopped",
        span,
        ms(pause),
        ms(converge)
    );
    assert!(aa + ab > 0, "no write acknowledged while the links flapped");
    assert!(pause < MAX_PAUSE_FAILOVER, "writes paused {pause:?}");
    c.verify_no_split_brain(&model, "after the flapping");
    summary(
        &format!(
            "sync0+sync1 flapping every 500 ms for {} s (heartbeat)",
            span.as_secs()
        ),
        "both (node-b out at times)",
        &format!(
            "NOT READY 04/0C: node-a {na}, node-b {nb}; converged {} after",
            ms(converge)
        ),
        &ms(pause),
        0,
    );
}

// ---- 6. node majority with a witness node: two failures ----

/// Whether GOOD answers through a single-path writer stopped: the last acknowledgement in
/// `(from, to)`, counted from `from`.
fn last_ack(r: &Report, from: Instant, to: Instant) -> Option<Duration> {
    r.acked
        .iter()
        .filter(|a| a.at > from && a.at < to)
        .map(|a| a.at - from)
        .next_back()
}

/// Both nodes answer GOOD to a READ.
fn both_serve(c: &Cluster) -> bool {
    c.serves(&c.a) == Some(Outcome::Ack) && c.serves(&c.b) == Some(Outcome::Ack)
}

/// A data node took the vote over from the witness (node 0 in `took_over_from`) and both
/// nodes serve again.
fn both_serve_after_takeover(c: &Cluster) -> bool {
    let took_over = [&c.a, &c.b]
        .iter()
        .any(|n| c.authority_view(n).contains("took_over_from 0 "));
    took_over && both_serve(c)
}

#[test]
fn witness_down_then_partner_down() {
    let _one = lock();
    let Some(mut c) = Cluster::start(Strategy::WitnessNode) else {
        return;
    };
    let wa = c.single_writer(&c.a, (8192, 4096), 16_000_000, Duration::from_millis(200));
    let wb = c.single_writer(&c.b, (16384, 4096), 16_500_000, Duration::from_millis(200));
    let probe_a = c.prober(&c.a, Duration::from_millis(100));
    let probe_b = c.prober(&c.b, Duration::from_millis(100));
    std::thread::sleep(Duration::from_millis(1500));
    let witness = c.0.witness.as_ref().unwrap();
    let t_w = witness.kill_control(&mut c.0.topo);
    eprintln!("kill -9 of the witness");
    // docs/ha.md, "Node majority with a witness": the two data nodes take the vote over.
    let both_back = wait_until(
        "both nodes serve again after the witness's loss",
        MAX_PAUSE_FAILOVER,
        || both_serve_after_takeover(&c),
    );
    let view_a = c.authority_view(&c.a);
    let view_b = c.authority_view(&c.b);
    std::thread::sleep(Duration::from_secs(3));
    // The writer through node-b ends before node-b is killed (it would queue forever).
    let rb = finish(wb, "through node-b");
    let t_b = c.kill_node(B);
    std::thread::sleep(Duration::from_secs(4));
    let a_now = c.serves(&c.a);
    let t_heal = Instant::now();
    let witness = c.0.witness.as_ref().unwrap();
    witness.restart(&mut c.0.topo);
    c.0.b.restart(&mut c.0.topo);
    let resync = wait_until(
        "both synchronized after the witness and node-b return",
        MAX_RESYNC,
        || c.both_synchronized(),
    );
    // The vote goes back to the witness once it answers the node hosting it.
    let vote_back = wait_until("the vote is back with the witness", MAX_RESYNC, || {
        c.authority_view(&c.a).contains("\"witness\"")
    });
    std::thread::sleep(Duration::from_millis(2000));
    let ra = finish(wa, "through node-a");
    let (pa, pb) = (probe_a.finish(), probe_b.finish());
    let mut model = Model::new(SIZE);
    model.apply(&ra);
    model.apply(&rb);

    let pause_a = ra.longest_pause(t_w, t_b);
    let pause_b = rb.longest_pause(t_w, t_b);
    let a_nr = pa.first(Outcome::NotReady, t_w);
    let b_nr = pb.first(Outcome::NotReady, t_w);
    let a_served = acks(&ra, 0, t_w + LEASE_END, t_b);
    let b_served = acks(&rb, 0, t_w + LEASE_END, t_b);
    let a_good_after_b = good_sent(Some((&ra, 0)), &pa, t_b + LEASE_END, t_heal).len();
    let a_nr_after_b = pa.first(Outcome::NotReady, t_b);
    let a_back = ra
        .acked
        .iter()
        .find(|x| x.at > t_heal)
        .map(|x| x.at - t_heal);
    eprintln!(
        "MEASURE witness down then partner down: both nodes GOOD again {} after the witness died (node-a: {view_a}; node-b: {view_b}); longest write pause node-a {}, node-b {}; NOT READY node-a {} node-b {} after the witness died; {a_served} + {b_served} writes acknowledged by node-a + node-b without the witness; after node-b died: node-a NOT READY {} and answers {a_now:?} 4 s later; node-a GOOD again {} after the witness and node-b returned (both synchronized {}, vote back with the witness {} after that)",
        ms(both_back),
        ms(pause_a),
        ms(pause_b),
        opt_ms(a_nr),
        opt_ms(b_nr),
        opt_ms(a_nr_after_b),
        opt_ms(a_back),
        ms(resync),
        ms(vote_back)
    );
    // One failure (the witness) is tolerated: both data nodes serve again.
    assert!(
        a_served > 0,
        "node-a acknowledged nothing without the witness"
    );
    assert!(
        b_served > 0,
        "node-b acknowledged nothing without the witness"
    );
    assert!(
        pause_a < MAX_PAUSE_FAILOVER,
        "node-a's writes paused {pause_a:?}"
    );
    assert!(
        pause_b < MAX_PAUSE_FAILOVER,
        "node-b's writes paused {pause_b:?}"
    );
    // Two failures: the last node stops serving and never takes over alone.
    assert_eq!(
        a_now,
        Some(Outcome::NotReady),
        "node-a alone is not NOT READY"
    );
    assert_eq!(a_good_after_b, 0, "node-a alone answered GOOD");
    assert!(
        a_back.is_some(),
        "node-a did not serve again after the healing"
    );
    c.verify_no_split_brain(&model, "after witness down then partner down");
    summary(
        "node majority: witness down, then partner down",
        "both after the witness's loss (the pair takes the vote over); nobody after node-b's too; both after healing, the vote back with the witness",
        &format!(
            "both GOOD again {} after the witness died (NOT READY 04/0C meanwhile: node-a {}, node-b {}); node-a NOT READY with node-b dead too",
            ms(both_back),
            opt_ms(a_nr),
            opt_ms(b_nr)
        ),
        &format!(
            "{} / {} at the witness's loss; until healed after node-b's",
            ms(pause_a),
            ms(pause_b)
        ),
        0,
    );
}

#[test]
fn witness_returns_then_partner_down() {
    let _one = lock();
    let Some(mut c) = Cluster::start(Strategy::WitnessNode) else {
        return;
    };
    let wa = c.single_writer(&c.a, (8192, 4096), 18_000_000, Duration::from_millis(200));
    std::thread::sleep(Duration::from_millis(1500));
    let witness = c.0.witness.as_ref().unwrap();
    let t_w = witness.kill_control(&mut c.0.topo);
    eprintln!("kill -9 of the witness");
    let both_back = wait_until(
        "both nodes serve again after the witness's loss",
        MAX_PAUSE_FAILOVER,
        || both_serve_after_takeover(&c),
    );
    std::thread::sleep(Duration::from_secs(2));
    let t_wr = Instant::now();
    let witness = c.0.witness.as_ref().unwrap();
    witness.restart(&mut c.0.topo);
    eprintln!("the witness is back");
    let vote_back = wait_until("the vote is back with the witness", MAX_RESYNC, || {
        c.authority_view(&c.a).contains("\"witness\"") && c.both_synchronized()
    });
    wait_until("both serve through the witness", MAX_PAUSE_FAILOVER, || {
        both_serve(&c)
    });
    std::thread::sleep(Duration::from_secs(2));
    let t_b = c.kill_node(B);
    let seen = poll_state(&c, &c.a, "node-b", Duration::from_secs(30), |s| {
        s == "not-synchronized"
    });
    let t_a_alone = seen.last().unwrap().0;
    std::thread::sleep(Duration::from_secs(3));
    let t_heal = Instant::now();
    c.0.b.restart(&mut c.0.topo);
    let resync = wait_until("both synchronized after node-b returns", MAX_RESYNC, || {
        c.both_synchronized()
    });
    std::thread::sleep(Duration::from_millis(1000));
    let ra = finish(wa, "through node-a");
    let mut model = Model::new(SIZE);
    model.apply(&ra);

    let pause_w = ra.longest_pause(t_w, t_wr);
    let pause_back = ra.longest_pause(t_wr, t_b);
    let pause_b = ra.longest_pause(t_b, t_heal);
    let alone = acks(&ra, 0, t_a_alone, t_heal);
    eprintln!(
        "MEASURE witness returns then partner down: both GOOD again {} after the witness died (longest write pause {}); the vote back with the witness {} after it returned (longest write pause {}); node-a has node-b out {} after node-b died, longest write pause {}, {alone} writes by node-a alone with the witness; both synchronized {} after node-b returned",
        ms(both_back),
        ms(pause_w),
        ms(vote_back),
        ms(pause_back),
        ms(t_a_alone - t_b),
        ms(pause_b),
        ms(resync)
    );
    assert!(
        pause_w < MAX_PAUSE_FAILOVER,
        "writes paused {pause_w:?} at the witness's loss"
    );
    assert!(
        pause_back < MAX_PAUSE_FAILOVER,
        "writes paused {pause_back:?} at the hand-back"
    );
    // The witness is a vote again: witness + node-a are a majority after node-b's loss.
    assert!(
        alone > 0,
        "node-a did not go on with the witness after node-b died"
    );
    assert!(
        pause_b < MAX_PAUSE_FAILOVER,
        "writes paused {pause_b:?} at node-b's loss"
    );
    c.verify_no_split_brain(&model, "after witness returns then partner down");
    summary(
        "node majority: witness down, back, then partner down",
        "both without the witness; both again through the witness after it returned; node-a with the witness after node-b's loss",
        &format!(
            "both GOOD {} after the witness died; vote back {} after its return; node-b out {} after its kill",
            ms(both_back),
            ms(vote_back),
            ms(t_a_alone - t_b)
        ),
        &format!(
            "{} at the witness's loss, {} at its return, {} at node-b's loss",
            ms(pause_w),
            ms(pause_back),
            ms(pause_b)
        ),
        0,
    );
}

#[test]
fn partner_down_then_witness_down() {
    let _one = lock();
    let Some(mut c) = Cluster::start(Strategy::WitnessNode) else {
        return;
    };
    let wa = c.single_writer(&c.a, (8192, 4096), 17_000_000, Duration::from_millis(200));
    let probe_a = c.prober(&c.a, Duration::from_millis(100));
    std::thread::sleep(Duration::from_millis(1500));
    let t_b = c.kill_node(B);
    let seen = poll_state(&c, &c.a, "node-b", Duration::from_secs(30), |s| {
        s == "not-synchronized"
    });
    let t_a_alone = seen.last().unwrap().0;
    std::thread::sleep(Duration::from_secs(3));
    let witness = c.0.witness.as_ref().unwrap();
    let t_w = witness.kill_control(&mut c.0.topo);
    eprintln!("kill -9 of the witness");
    std::thread::sleep(Duration::from_secs(4));
    let a_now = c.serves(&c.a);
    let t_heal = Instant::now();
    let witness = c.0.witness.as_ref().unwrap();
    witness.restart(&mut c.0.topo);
    c.0.b.restart(&mut c.0.topo);
    let resync = wait_until(
        "both synchronized after the witness and node-b return",
        MAX_RESYNC,
        || c.both_synchronized(),
    );
    std::thread::sleep(Duration::from_millis(2000));
    let ra = finish(wa, "through node-a");
    let pa = probe_a.finish();
    let mut model = Model::new(SIZE);
    model.apply(&ra);

    let pause = ra.longest_pause(t_b, t_w);
    let alone = acks(&ra, 0, t_a_alone, t_w);
    let a_last = last_ack(&ra, t_w, t_heal);
    let a_nr = pa.first(Outcome::NotReady, t_w);
    let a_good_after_w = good_sent(Some((&ra, 0)), &pa, t_w + LEASE_END, t_heal).len();
    let a_back = ra
        .acked
        .iter()
        .find(|x| x.at > t_heal)
        .map(|x| x.at - t_heal);
    eprintln!(
        "MEASURE partner down then witness down: node-a reports node-b out {} after node-b died; longest write pause {}; {alone} writes by node-a alone; after the witness died: node-a's last GOOD {}, NOT READY {}; answers {a_now:?} 4 s later; served again {} after the healing (both synchronized {})",
        ms(t_a_alone - t_b),
        ms(pause),
        opt_ms(a_last),
        opt_ms(a_nr),
        opt_ms(a_back),
        ms(resync)
    );
    assert!(alone > 0, "node-a did not go on alone after node-b died");
    assert!(pause < MAX_PAUSE_FAILOVER, "writes paused {pause:?}");
    assert_eq!(
        a_good_after_w, 0,
        "node-a answered GOOD to a command sent {LEASE_END:?} after the witness died too"
    );
    assert_eq!(
        a_now,
        Some(Outcome::NotReady),
        "node-a alone is not NOT READY"
    );
    assert!(
        a_back.is_some(),
        "node-a did not serve again after the healing"
    );
    c.verify_no_split_brain(&model, "after partner down then witness down");
    summary(
        "node majority: partner down, then witness down",
        "node-a alone after node-b's loss; nobody after the witness's",
        &format!(
            "node-b out {} after its kill; node-a NOT READY 04/0C {} after the witness died",
            ms(t_a_alone - t_b),
            opt_ms(a_nr)
        ),
        &format!("{} at the partner's loss", ms(pause)),
        0,
    );
}

// ---- 7. node majority with a witness node: partial cuts ----

/// Answers of a node in `(from, to)` (path checker `p`, and path `path` of writer `r`):
/// (first NOT READY of the path checker after `from`, GOOD answers to commands sent after
/// `from + LEASE_END`).
fn stopped_within_lease(
    r: &Report,
    path: usize,
    p: &ProbeLog,
    from: Instant,
    to: Instant,
) -> (Option<Duration>, usize) {
    (
        p.first(Outcome::NotReady, from),
        good_sent(Some((r, path)), p, from + LEASE_END, to).len(),
    )
}

/// The epoch of an [`Cluster::authority_view`] line.
fn epoch_of(view: &str) -> String {
    view.rsplit("epoch ").next().unwrap_or_default().to_string()
}

#[test]
fn witness_partial_cuts() {
    let _one = lock();
    let t_start = Instant::now();
    let Some(c) = Cluster::start(Strategy::WitnessNode) else {
        return;
    };
    let w = c.multipath_writer((8192, 16384), 19_000_000);
    let probe_a = c.prober(&c.a, Duration::from_millis(100));
    let probe_b = c.prober(&c.b, Duration::from_millis(100));
    std::thread::sleep(Duration::from_millis(1500));

    // Phase 1: node-b cut from the witness only (node-a and the host still reach it).
    let epoch_before = epoch_of(&c.authority_view(&c.a));
    let t1 = Instant::now();
    cut_peers(&c.topo, B, &[Member::Witness]);
    eprintln!("node-b cut from the witness only");
    // Several leases plus margins: long enough for any removal to happen.
    let mut a_views_of_b = Vec::new();
    while t1.elapsed() < CUT_WITNESS_ONLY {
        a_views_of_b.push(
            c.a.state_of(&c.topo, DEVICE, "node-b")
                .unwrap_or_else(|| "(no answer)".into()),
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let views1 = (c.authority_view(&c.a), c.authority_view(&c.b));
    eprintln!("phase 1 views: node-a {}, node-b {}", views1.0, views1.1);
    let t1_heal = Instant::now();
    heal_cuts(&c.topo, B);
    let resync1 = wait_until(
        "both synchronized after node-b reaches the witness again",
        MAX_RESYNC,
        || c.both_synchronized(),
    );
    std::thread::sleep(Duration::from_secs(1));

    // Phase 2: node-b cut from the witness and from node-a.
    let t2 = Instant::now();
    cut_peers(&c.topo, B, &[Member::Witness, A]);
    eprintln!("node-b cut from the witness and from node-a");
    let seen = poll_state(&c, &c.a, "node-b", Duration::from_secs(30), |s| {
        s == "not-synchronized"
    });
    let t2_out = seen.last().unwrap().0;
    std::thread::sleep(Duration::from_secs(2));
    let views2 = (c.authority_view(&c.a), c.authority_view(&c.b));
    eprintln!("phase 2 views: node-a {}, node-b {}", views2.0, views2.1);
    let t2_heal = Instant::now();
    heal_cuts(&c.topo, B);
    let resync2 = wait_until(
        "both synchronized after node-b's cuts heal",
        MAX_RESYNC,
        || c.both_synchronized(),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let r = finish(w, "multipath A+B");
    let (pa, pb) = (probe_a.finish(), probe_b.finish());
    let mut model = Model::new(SIZE);
    model.apply(&r);

    let pause1 = r.longest_pause(t1, t1_heal);
    let pause2 = r.longest_pause(t2, t2_heal);
    let (b_nr1, b_good1) = stopped_within_lease(&r, 1, &pb, t1, t1_heal);
    let a_views_of_b_out = a_views_of_b.iter().filter(|s| *s != "synchronized").count();
    let (b_nr2, b_good2) = stopped_within_lease(&r, 1, &pb, t2, t2_heal);
    let a_nr = pa.first(Outcome::NotReady, t1);
    let a_acks = (acks(&r, 0, t1, t1_heal), acks(&r, 0, t2_out, t2_heal));
    let b_acks1 = acks(&r, 1, t1, t1_heal);
    let b_after = acks(&r, 1, t2_heal + resync2, Instant::now());
    eprintln!(
        "MEASURE witness partial cuts: (1) node-b cut from the witness only for {CUT_WITNESS_ONLY:?}: node-b NOT READY {} after the cut, {b_good1} GOOD to commands sent {LEASE_END:?} after it, node-a's view of node-b not synchronized in {a_views_of_b_out} of {} looks, longest write pause {}, writes through node-a {} and node-b {b_acks1} meanwhile, both synchronized {} after the heal; (2) node-b cut from the witness and node-a: node-b NOT READY {} after the cut, node-a reports node-b out {} after, longest write pause {}, {} writes through node-a meanwhile, resynchronized {} after the heal; node-a's first NOT READY after the first cut {}; {b_after} writes through node-b after",
        opt_ms(b_nr1),
        a_views_of_b.len(),
        ms(pause1),
        a_acks.0,
        ms(resync1),
        opt_ms(b_nr2),
        ms(t2_out - t2),
        ms(pause2),
        a_acks.1,
        ms(resync2),
        opt_ms(a_nr)
    );
    // The witness keeps the vote: nobody took it over in either phase.
    for v in [&views1.0, &views1.1, &views2.0, &views2.1] {
        assert!(
            !v.contains("took_over_from 0 "),
            "the data nodes took the vote over from a witness that still had a majority: {v}"
        );
    }
    // Cut from the witness only: node-b gets no lease renewal and stops serving within
    // its lease (the host goes on through node-a without a pause), but node-a never
    // suspects it (heartbeats flow), so nobody removes it: no new epoch, it stays
    // synchronized (the sequencer still replicates to it) and serves again at once after
    // the heal.
    assert_eq!(
        a_views_of_b_out, 0,
        "node-a had node-b out while node-b was cut from the witness only: {a_views_of_b:?}"
    );
    assert!(
        epoch_of(&views1.0) == epoch_before && epoch_of(&views1.1) == epoch_before,
        "a new epoch while node-b was cut from the witness only (before: {epoch_before}): {views1:?}"
    );
    for (phase, nr, good) in [(1, b_nr1, b_good1), (2, b_nr2, b_good2)] {
        assert!(
            nr.is_some_and(|d| d < LEASE_END),
            "phase {phase}: node-b did not answer NOT READY within {LEASE_END:?} ({nr:?})"
        );
        assert_eq!(
            good, 0,
            "phase {phase}: node-b answered GOOD to a command sent {LEASE_END:?} after its cut"
        );
    }
    assert!(
        a_acks.0 > 0 && a_acks.1 > 0,
        "node-a did not go on with the witness: {a_acks:?}"
    );
    assert!(
        pause1 < MAX_PAUSE_FAILOVER,
        "writes paused {pause1:?} (phase 1)"
    );
    assert!(
        pause2 < MAX_PAUSE_FAILOVER,
        "writes paused {pause2:?} (phase 2)"
    );
    assert!(b_after > 0, "node-b did not serve again after the heal");
    c.verify_no_split_brain(&model, "after the witness's partial cuts");
    summary(
        "node majority: node-b cut from the witness only",
        "node-a; node-b stays synchronized but serves nothing until healed (no lease); no takeover, no new epoch",
        &format!("node-b NOT READY 04/0C {} after the cut ({b_acks1} writes through it before); node-a never pauses", opt_ms(b_nr1)),
        &format!("{} (resync {} after the heal)", ms(pause1), ms(resync1)),
        0,
    );
    summary(
        "node majority: node-b cut from the witness and from node-a",
        "node-a (with the witness) only",
        &format!(
            "node-b NOT READY 04/0C {} after the cut; node-a has node-b out {} after",
            opt_ms(b_nr2),
            ms(t2_out - t2)
        ),
        &format!("{} (resync {} after the heal)", ms(pause2), ms(resync2)),
        0,
    );
    eprintln!(
        "SUMMARY witness partial cuts: scenario {:?} (cluster start included)",
        t_start.elapsed()
    );
}
