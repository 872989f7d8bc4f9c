//! Three data nodes under node majority, each in its own network namespace (issue 11):
//! `netns_three::ThreeNodeCluster` (every pair of nodes joined by two sync links and a
//! heartbeat link, made with the CLI only), a host namespace whose multipath-like writer
//! writes stamped blocks through every node's portal and records every acknowledged write,
//! and path checkers that read one block through a node every 100 ms. Links are cut silently
//! with nftables drop rules inside a node's namespace; the host reaches every node throughout.
//!
//! 1. node-c (a follower) isolated from both others: it answers NOT READY 04/0C, node-a and
//!    node-b go on; heal: node-c resynchronized.
//! 2. node-a (the authority host and sequencer) isolated from both others: its authority has
//!    no majority and grants nothing, node-a answers NOT READY, node-b takes the authority
//!    over (node-c also reports node-a silent) and node-b and node-c go on; heal: node-a's
//!    stale authority stands down and node-a is resynchronized.
//! 3. Total partition (no node reaches another): all three stop (NOT READY), nothing
//!    acknowledged while partitioned; heal: all three synchronized again.
//! 4. kill -9 of node-a's control service and data plane (the authority host): node-b takes
//!    over, node-b and node-c go on; node-a restarted: resynchronized, serves again.
//! 5. One cluster, two faults: SIGSTOP of node-a (the authority host: control service and
//!    data plane) until node-b has taken over, then SIGCONT: node-a acknowledges nothing
//!    sent after it wakes until it is readmitted, and is resynchronized; then both sync
//!    links of node-c (to node-a and node-b) flapping (down 500 ms, up 500 ms) for 6 s
//!    (30 s with `TANDEM_SOAK=1`), heartbeats alive: all three synchronized afterwards.
//!
//! In 4 and 5 fio with the libiscsi engine (`e2e::fio_area`) is a second host writing
//! checksummed blocks through node-b across the faults (a slice ended by UNIT ATTENTION or
//! NOT READY 04/0C written again: node-b pauses while the authority moves) and reading every
//! block back through node-a (the node that was out) afterwards: 0 verify errors.
//!
//! Each prints `MEASURE` lines (time to decision, pauses, resync), checks the ALUA states a
//! host sees (REPORT TARGET PORT GROUPS) where a node is out, and ends with the whole disk
//! read through every node and compared with every acknowledged write, and the three image
//! files compared. Needs root, `ip` and `nft`; skips when namespaces cannot be made. One
//! scenario at a time (a lock).

use std::time::{Duration, Instant};

use tandem_tests::e2e::fio::{self, Retry, SlicedWrite};
use tandem_tests::e2e::fio_area::DEFAULT_AREA as FIO;
use tandem_tests::e2e::host_io::{
    first_difference, login, probe_read, Model, Outcome, PathSpec, ProbeLog, Prober, Report,
    Writer, WriterSpec,
};
use tandem_tests::e2e::netns_cluster::{cut_peers, heal_cuts, wait_until, ClusterNode, Signal};
use tandem_tests::e2e::netns_three::{
    alua_state_of, report_target_port_groups, ThreeNodeCluster, ALUA_ACTIVE_OPTIMIZED,
    ALUA_UNAVAILABLE,
};
use tandem_tests::e2e::scenario::{acks, finish, lock, ms, opt_ms};
use tandem_tests::netns::Member;

const DEVICE: &str = "disk1";
const SIZE: usize = 32 << 20;
const HOST: Member = Member::Host(1);
/// Bound on the pause of writes while a node is decided lost (lease + margin + engine
/// timeout + a takeover, on a loaded machine).
const MAX_PAUSE: Duration = Duration::from_secs(20);
const MAX_RESYNC: Duration = Duration::from_secs(90);
/// After this long past a cut, a node without a majority must have stopped: lease (1 s) +
/// margin (0.3 s), with room for a loaded machine. No GOOD answer to a command sent later.
const STOPPED_AFTER: Duration = Duration::from_secs(4);

struct Cluster(ThreeNodeCluster);

impl std::ops::Deref for Cluster {
    type Target = ThreeNodeCluster;
    fn deref(&self) -> &ThreeNodeCluster {
        &self.0
    }
}

impl std::ops::DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut ThreeNodeCluster {
        &mut self.0
    }
}

impl Cluster {
    fn start() -> Option<Cluster> {
        let t0 = Instant::now();
        let c = ThreeNodeCluster::start("tandem-ha-three", DEVICE, "32MiB").map(Cluster)?;
        eprintln!("three-node cluster up in {:?}", t0.elapsed());
        Some(c)
    }

    fn paths(&self) -> Vec<PathSpec> {
        self.nodes.iter().map(|n| self.path(n)).collect()
    }

    /// A multipath-like writer over all three nodes (path i: node i); a broken connection
    /// fails the path and it logs in again later, as a host does.
    fn writer(&self, id_base: u32, queue_bound: Duration) -> Writer {
        let mut spec = WriterSpec::new((8192, 16384), id_base);
        spec.queue_bound = queue_bound;
        spec.reconnect = true;
        Writer::start(&self.topo, HOST, &self.paths(), spec)
    }

    /// Whether `n` answers a READ with GOOD now (a fresh session; a UNIT ATTENTION is
    /// retried once, as a host does).
    fn serves_now(&self, n: &ClusterNode) -> bool {
        let mut s = login(
            &self.topo,
            HOST,
            &self.path(n),
            "iqn.2026-11.io.tandem.test:probe",
        );
        let mut r = probe_read(&mut s);
        if r == Some(Outcome::UnitAttention) {
            r = probe_read(&mut s);
        }
        r == Some(Outcome::Ack)
    }

    fn prober(&self, n: &ClusterNode) -> Prober {
        Prober::start(&self.topo, HOST, &self.path(n), Duration::from_millis(100))
    }

    /// `n` serves and reports `other` not synchronized.
    fn serving_without(&self, n: &ClusterNode, other: &str) -> bool {
        let Some(l) = n.replicas(&self.topo, DEVICE) else {
            return false;
        };
        let rs = l["replicas"].as_array().cloned().unwrap_or_default();
        rs.iter()
            .any(|r| r["local"] == true && r["serving"] == true)
            && rs
                .iter()
                .any(|r| r["node"] == other && r["state"] != "synchronized")
    }

    /// RTPG through `via`: the state of each node's port group, by node name.
    fn alua(&self, via: &ClusterNode) -> Vec<(String, Option<u8>)> {
        let ids = self.node_ids(via);
        let groups = report_target_port_groups(&self.topo, HOST, &self.path(via));
        eprintln!("RTPG through {}: {groups:?} (node ids {ids:?})", via.name);
        let groups = groups.unwrap_or_else(|| panic!("RTPG through {} failed", via.name));
        ids.iter()
            .map(|(name, id)| (name.clone(), alua_state_of(&groups, *id)))
            .collect()
    }

    /// Asserts the ALUA state of every node's group through `via`: `out` unavailable, the
    /// others active/optimized.
    fn assert_alua(&self, via: &ClusterNode, out: &[&str]) {
        let states = self.alua(via);
        assert_eq!(states.len(), 3, "RTPG through {}: {states:?}", via.name);
        for (name, state) in &states {
            let want = if out.contains(&name.as_str()) {
                ALUA_UNAVAILABLE
            } else {
                ALUA_ACTIVE_OPTIMIZED
            };
            assert_eq!(
                *state,
                Some(want),
                "RTPG through {}: state of {name}'s group ({states:?})",
                via.name
            );
        }
    }

    /// fio's verifying writes through `n` with `seed`.
    fn fio_write(&self, fio: &std::path::Path, n: &ClusterNode, seed: u64) -> SlicedWrite {
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

    /// fio's read-back through node-a, the node that was out (0 verify errors), then its
    /// area into `model`: `verify_all` reads it back through every node and compares the
    /// three images. One read-back, not three, for CI's time budget.
    fn fio_read_back(&self, fio: &std::path::Path, seed: u64, model: &mut Model, what: &str) {
        let a = &self.nodes[0];
        FIO.read_back(fio, &self.topo, HOST, &[a], DEVICE, seed, what);
        FIO.take_into(model, &Self::image(a));
    }

    fn image(n: &ClusterNode) -> Vec<u8> {
        let v = std::fs::read(n.image(DEVICE)).unwrap();
        assert_eq!(v.len(), SIZE, "{}: image size", n.name);
        v
    }

    /// Every acknowledged write reads back through every node; the three image files equal
    /// the model and each other. Only when no I/O runs.
    fn verify_all(&self, model: &Model, what: &str) {
        for n in &self.nodes {
            model.verify_through(&self.topo, HOST, &self.path(n), what);
        }
        let images: Vec<Vec<u8>> = self.nodes.iter().map(Self::image).collect();
        for (n, img) in self.nodes.iter().zip(&images).skip(1) {
            if let Some(lba) = first_difference(&images[0], img) {
                panic!(
                    "{what}: the images of node-a and {} differ first at LBA {lba}",
                    n.name
                );
            }
        }
        if let Err(e) = model.check(0, &images[0]) {
            panic!("{what}: the image files differ from the acknowledged writes: {e}");
        }
        eprintln!("{what}: three image files byte-identical and holding every acknowledged write");
    }

    /// Split-brain records of the authorities and replica states, from every node.
    fn split_brain_reports(&self) -> Vec<String> {
        let mut out = Vec::new();
        for n in &self.nodes {
            if let Some(l) = n.replicas(&self.topo, DEVICE) {
                for r in l["replicas"].as_array().into_iter().flatten() {
                    if r["state"] == "split-brain" {
                        out.push(format!("{}: {} split-brain", n.name, r["node"]));
                    }
                }
            }
            if let Some(s) = self.authority_state(n) {
                if s["split_brain"].as_array().is_some_and(|v| !v.is_empty()) {
                    out.push(format!(
                        "{}: authority records {}",
                        n.name, s["split_brain"]
                    ));
                }
            }
        }
        out
    }
}

/// The first acknowledged write after the longest pause following `t` (when writes went on).
fn resumed_at(r: &Report, t: Instant, until: Instant) -> Option<Instant> {
    let pause = r.longest_pause(t, until);
    let times: Vec<Instant> = r.acked.iter().map(|a| a.at).filter(|x| *x > t).collect();
    if times.first().is_some_and(|f| *f - t >= pause) {
        return times.first().copied();
    }
    times
        .windows(2)
        .find(|w| w[1] - w[0] >= pause)
        .map(|w| w[1])
        .or_else(|| times.first().copied())
}

/// The latest send time of a command answered GOOD in `(from, to)` by a path checker.
fn last_good_sent(p: &ProbeLog, from: Instant, to: Instant) -> Option<Instant> {
    p.0.iter()
        .filter(|e| e.outcome == Outcome::Ack && e.at > from && e.at < to)
        .map(|e| e.at - e.took)
        .max()
}

// ---- 1 and 2: one node isolated from both others ----

/// Isolates node `victim` (0-based) from the two others, then heals; see the module comment.
fn one_node_isolated(victim: usize) {
    let _one = lock();
    let Some(c) = Cluster::start() else {
        return;
    };
    let t_start = Instant::now();
    let v = &c.nodes[victim];
    let survivors: Vec<&ClusterNode> = c.nodes.iter().filter(|n| n.name != v.name).collect();
    let ids = c.node_ids(&c.nodes[0]);
    let victim_id = ids
        .iter()
        .find(|(n, _)| *n == v.name)
        .map(|(_, id)| u64::from(*id))
        .expect("the victim's node id");
    assert!(
        c.authority_state(&c.nodes[0]).is_some(),
        "node-a (lowest id) hosts the authority"
    );
    let mut model = Model::new(SIZE);
    let w = c.writer(1_000_000 * (victim as u32 + 1), Duration::from_secs(60));
    let probe = c.prober(v);
    std::thread::sleep(Duration::from_millis(1500));
    let t_cut = Instant::now();
    let others: Vec<Member> = survivors.iter().map(|n| n.member).collect();
    cut_peers(&c.topo, v.member, &others);
    eprintln!(
        "{} cut from both others on every link (the host still reaches it)",
        v.name
    );
    let decided = wait_until(
        "both survivors serve and report the isolated node not synchronized",
        Duration::from_secs(60),
        || survivors.iter().all(|n| c.serving_without(n, &v.name)),
    );
    let takeover = survivors.iter().find_map(|n| {
        c.authority_state(n)
            .filter(|s| !s["took_over_from"].is_null())
            .map(|s| (n.name.clone(), s))
    });
    std::thread::sleep(Duration::from_secs(2));
    c.assert_alua(survivors[0], &[&v.name]);
    let rtpg_victim = c.alua(v);
    survivors[0].ok(&c.topo, &["replica", "list", DEVICE]);
    let t_heal = Instant::now();
    heal_cuts(&c.topo, v.member);
    let resync = wait_until(
        "all three synchronized after the isolated node's links return",
        MAX_RESYNC,
        || c.all_synchronized(),
    );
    // The writer tries the failed path again once a second: give it time to.
    std::thread::sleep(Duration::from_secs(3));
    let r = finish(w, "multipath over three");
    let probes = probe.finish();
    model.apply(&r);
    c.assert_alua(v, &[]);

    let now = Instant::now();
    let pause = r.longest_pause(t_cut, t_heal);
    let resumed = resumed_at(&r, t_cut, t_heal);
    let v_nr = probes.first(Outcome::NotReady, t_cut);
    let v_last_good = last_good_sent(&probes, t_cut, t_heal);
    let v_acks_stopped = acks(&r, victim, t_cut + STOPPED_AFTER, t_heal);
    let survivor_acks: Vec<usize> = (0..3)
        .filter(|i| *i != victim)
        .map(|i| acks(&r, i, t_cut, t_heal))
        .collect();
    let v_after = acks(&r, victim, t_heal, now);
    eprintln!(
        "MEASURE {} isolated: NOT READY {} after the cut (path checker; last GOOD to a command sent {} after); survivors serve without it {} after the cut, writes resumed {} after (longest pause {}); survivor acks while cut {survivor_acks:?}; authority after the cut: {takeover:?}; RTPG through the isolated node {rtpg_victim:?}; resynchronized {} after the heal; {v_after} writes through it after",
        v.name,
        opt_ms(v_nr),
        opt_ms(v_last_good.map(|t| t.saturating_duration_since(t_cut))),
        ms(decided),
        opt_ms(resumed.map(|t| t - t_cut)),
        ms(pause),
        ms(resync)
    );
    assert!(
        v_nr.is_some(),
        "{} never answered NOT READY while isolated",
        v.name
    );
    if let (Some(sent), Some(resumed)) = (v_last_good, resumed) {
        assert!(
            sent < resumed,
            "{} answered GOOD to a command sent {:?} after the cut, after the survivors went on ({:?})",
            v.name,
            sent - t_cut,
            resumed - t_cut
        );
    }
    assert_eq!(
        v_acks_stopped, 0,
        "{} acknowledged writes {STOPPED_AFTER:?} or more after it was isolated",
        v.name
    );
    assert!(
        survivor_acks.iter().all(|n| *n > 0),
        "a survivor did not go on: {survivor_acks:?}"
    );
    assert!(pause < MAX_PAUSE, "writes paused {pause:?} at the cut");
    assert!(
        v_after > 0,
        "{} did not serve writes after the resync",
        v.name
    );
    let own_group = rtpg_victim
        .iter()
        .find(|(n, _)| *n == v.name)
        .and_then(|(_, s)| *s);
    assert_eq!(
        own_group,
        Some(ALUA_UNAVAILABLE),
        "RTPG through the isolated node: its own group ({rtpg_victim:?})"
    );
    if victim == 0 {
        // The authority host was isolated: node-b (the lower surviving id) took over.
        let (host, s) = takeover.expect("a survivor took the authority over");
        assert_eq!(host, "node-b", "the lower surviving id takes over: {s}");
        assert_eq!(
            s["took_over_from"], victim_id,
            "node-b took over from node-a: {s}"
        );
        let stale = c
            .authority_state(&c.nodes[0])
            .expect("node-a keeps its old authority as a record");
        assert!(
            !stale["superseded_by"].is_null(),
            "node-a's stale authority did not stand down after the heal: {stale}"
        );
    } else {
        assert!(
            takeover.is_none(),
            "a survivor took the authority over although node-a was never lost: {takeover:?}"
        );
    }
    let reports = c.split_brain_reports();
    assert!(
        reports.is_empty(),
        "split brain under node majority: {reports:?}"
    );
    c.verify_all(&model, &format!("after {}'s isolation and return", v.name));
    eprintln!(
        "SUMMARY {} isolated: scenario {:?}",
        v.name,
        t_start.elapsed()
    );
}

#[test]
fn a_follower_isolated_stops_the_two_others_go_on() {
    one_node_isolated(2);
}

#[test]
fn the_authority_host_isolated_stops_the_two_others_take_over() {
    one_node_isolated(0);
}

// ---- 3. total partition: nobody has a majority ----

#[test]
fn total_partition_of_three_all_stop_and_resume_after_heal() {
    let _one = lock();
    let Some(c) = Cluster::start() else {
        return;
    };
    let t_start = Instant::now();
    let mut model = Model::new(SIZE);
    // Queues while nobody serves (a host's no_path_retry), far longer than the partition.
    let w = c.writer(4_000_000, Duration::from_secs(120));
    let probes: Vec<Prober> = c.nodes.iter().map(|n| c.prober(n)).collect();
    std::thread::sleep(Duration::from_millis(1500));
    let [a, b, cc] = &c.nodes;
    let t_cut = Instant::now();
    cut_peers(&c.topo, a.member, &[b.member, cc.member]);
    cut_peers(&c.topo, b.member, &[cc.member]);
    eprintln!("every link between any two nodes cut (the host still reaches all three)");
    std::thread::sleep(Duration::from_secs(6));
    let rtpg: Vec<_> = c
        .nodes
        .iter()
        .map(|n| (n.name.clone(), c.alua(n)))
        .collect();
    let authorities: Vec<_> = c
        .nodes
        .iter()
        .map(|n| (n.name.clone(), c.authority_state(n)))
        .collect();
    let t_heal = Instant::now();
    heal_cuts(&c.topo, a.member);
    heal_cuts(&c.topo, b.member);
    let resync = wait_until(
        "all three synchronized after the partition heals",
        MAX_RESYNC,
        || c.all_synchronized(),
    );
    std::thread::sleep(Duration::from_secs(3));
    let r = finish(w, "multipath over three");
    let logs: Vec<ProbeLog> = probes.into_iter().map(Prober::finish).collect();
    model.apply(&r);

    let first_nr: Vec<Option<Duration>> = logs
        .iter()
        .map(|p| p.first(Outcome::NotReady, t_cut))
        .collect();
    let last_good: Vec<Option<Duration>> = logs
        .iter()
        .map(|p| last_good_sent(p, t_cut, t_heal).map(|t| t.saturating_duration_since(t_cut)))
        .collect();
    let acked_while_cut = r
        .acked
        .iter()
        .filter(|x| x.at > t_cut + STOPPED_AFTER && x.at < t_heal)
        .count();
    let last_ack = r
        .acked
        .iter()
        .filter(|x| x.at > t_cut && x.at < t_heal)
        .map(|x| x.at - t_cut)
        .max();
    let first_after_heal = r
        .acked
        .iter()
        .find(|x| x.at > t_heal)
        .map(|x| x.at - t_heal);
    let all_stopped = first_nr
        .iter()
        .copied()
        .collect::<Option<Vec<_>>>()
        .map(|v| v.into_iter().max().unwrap_or_default());
    eprintln!(
        "MEASURE total partition of three: first NOT READY per node {:?} after the cut (all stopped {}); last GOOD read per node to a command sent {:?} after the cut; last acknowledged write {} after the cut; {acked_while_cut} acknowledged {STOPPED_AFTER:?} or more after the cut; first write acknowledged {} after the heal; all synchronized {} after the heal",
        first_nr.iter().map(|d| opt_ms(*d)).collect::<Vec<_>>(),
        opt_ms(all_stopped),
        last_good.iter().map(|d| opt_ms(*d)).collect::<Vec<_>>(),
        opt_ms(last_ack),
        opt_ms(first_after_heal),
        ms(resync)
    );
    eprintln!("RTPG while partitioned: {rtpg:?}");
    eprintln!("authority states while partitioned: {authorities:?}");
    for (n, nr) in c.nodes.iter().zip(&first_nr) {
        assert!(
            nr.is_some(),
            "{} never answered NOT READY while partitioned",
            n.name
        );
    }
    for (n, g) in c.nodes.iter().zip(&last_good) {
        assert!(
            g.is_none_or(|d| d < STOPPED_AFTER),
            "{} answered GOOD to a command sent {g:?} after the cut, with no majority",
            n.name
        );
    }
    assert_eq!(
        acked_while_cut, 0,
        "writes acknowledged {STOPPED_AFTER:?} or more into a total partition"
    );
    for (name, states) in &rtpg {
        let own = states.iter().find(|(n, _)| n == name).and_then(|(_, s)| *s);
        assert_eq!(
            own,
            Some(ALUA_UNAVAILABLE),
            "RTPG through {name} while partitioned: its own group ({states:?})"
        );
    }
    for (name, s) in &authorities {
        assert!(
            s.as_ref().is_none_or(|s| s["took_over_from"].is_null()),
            "{name} took the authority over without a majority: {s:?}"
        );
    }
    assert!(
        first_after_heal.is_some(),
        "no write acknowledged after the heal"
    );
    let reports = c.split_brain_reports();
    assert!(
        reports.is_empty(),
        "split brain under node majority: {reports:?}"
    );
    c.verify_all(&model, "after a total partition of three and its heal");
    eprintln!(
        "SUMMARY total partition of three: scenario {:?}",
        t_start.elapsed()
    );
}

// ---- 4. kill -9 of the authority host ----

#[test]
fn authority_host_killed_the_two_others_take_over() {
    let _one = lock();
    let Some(mut c) = Cluster::start() else {
        return;
    };
    let t_start = Instant::now();
    let a_id = c
        .node_ids(&c.nodes[0])
        .iter()
        .find(|(n, _)| n == "node-a")
        .map(|(_, id)| u64::from(*id))
        .expect("node-a's id");
    assert!(
        c.authority_state(&c.nodes[0]).is_some(),
        "node-a (lowest id) hosts the authority"
    );
    let mut model = Model::new(SIZE);
    let w = c.writer(5_000_000, Duration::from_secs(60));
    let fio = fio::locate();
    let fio_b = c.fio_write(&fio, &c.nodes[1], 5);
    std::thread::sleep(Duration::from_millis(1500));
    let t_kill = {
        let inner = &mut c.0;
        inner.nodes[0].kill_control(&mut inner.topo)
    };
    let (dp, _) = c.nodes[0].kill_dataplane();
    eprintln!("node-a's control service and data plane ({dp}) killed with SIGKILL");
    let took = wait_until(
        "node-b took the authority over; node-b and node-c serve without node-a",
        Duration::from_secs(60),
        || {
            c.authority_state(&c.nodes[1])
                .is_some_and(|s| s["took_over_from"] == a_id)
                && c.serving_without(&c.nodes[1], "node-a")
                && c.serving_without(&c.nodes[2], "node-a")
        },
    );
    let c_auth = c.authority_state(&c.nodes[2]);
    let c_view = c.ha_view(&c.nodes[2]);
    std::thread::sleep(Duration::from_secs(2));
    c.assert_alua(&c.nodes[1], &["node-a"]);
    c.nodes[1].ok(&c.topo, &["replica", "list", DEVICE]);
    let t_restart = Instant::now();
    {
        let inner = &mut c.0;
        inner.nodes[0].restart(&mut inner.topo);
    }
    let resync = wait_until(
        "all three synchronized after node-a's restart",
        MAX_RESYNC,
        || c.all_synchronized(),
    );
    let (fio_longest, fio_retries) = FIO.finish_writes(fio_b, t_kill, "node-b");
    std::thread::sleep(Duration::from_secs(3));
    let r = finish(w, "multipath over three");
    model.apply(&r);
    c.fio_read_back(&fio, 5, &mut model, "after the authority host's kill");
    eprintln!("MEASURE kill -9 of the authority host: fio through node-b longest write {}, {fio_retries} slices written again, 0 verify errors", ms(fio_longest));

    let pause = r.longest_pause(t_kill, t_restart);
    let resumed = resumed_at(&r, t_kill, t_restart);
    let (b_acks, c_acks) = (
        acks(&r, 1, t_kill, t_restart),
        acks(&r, 2, t_kill, t_restart),
    );
    let a_after = acks(&r, 0, t_restart, Instant::now());
    let stale = c.authority_state(&c.nodes[0]);
    eprintln!(
        "MEASURE kill -9 of the authority host node-a: node-b took over and both survivors serve {} after the kill; writes resumed {} after (longest pause {}); acks while node-a was down through node-b {b_acks}, node-c {c_acks}; all three synchronized {} after node-a's restart began; {a_after} writes through node-a after; node-a's old authority: {stale:?}",
        ms(took),
        opt_ms(resumed.map(|t| t - t_kill)),
        ms(pause),
        ms(resync)
    );
    assert!(
        c_auth.is_none_or(|s| s["took_over_from"].is_null()),
        "node-c took the authority over too"
    );
    assert!(
        c_view
            .as_ref()
            .is_some_and(|v| v["authority"]["server"] == "node-b"),
        "node-c follows node-b's authority: {c_view:?}"
    );
    assert!(b_acks > 0 && c_acks > 0, "a survivor did not go on");
    assert!(pause < MAX_PAUSE, "writes paused {pause:?} after the kill");
    assert!(a_after > 0, "node-a did not serve writes after its resync");
    assert!(
        stale.is_some_and(|s| !s["superseded_by"].is_null()),
        "node-a's stale authority did not stand down"
    );
    let reports = c.split_brain_reports();
    assert!(
        reports.is_empty(),
        "split brain under node majority: {reports:?}"
    );
    c.verify_all(&model, "after the authority host's kill and restart");
    eprintln!(
        "SUMMARY kill -9 of the authority host: scenario {:?}",
        t_start.elapsed()
    );
}

// ---- 5. SIGSTOP of the authority host, then one node's sync links flapping ----

/// Polls `via`'s view of `of` every 50 ms until it is synchronized: the last instant it was
/// seen otherwise (or `since`) and when it was seen synchronized.
fn readmitted(c: &Cluster, via: &ClusterNode, of: &str, since: Instant) -> (Instant, Instant) {
    let mut last_out = since;
    let t0 = Instant::now();
    loop {
        let at = Instant::now();
        if via.state_of(&c.topo, DEVICE, of).as_deref() == Some("synchronized") {
            return (last_out, at);
        }
        last_out = at;
        assert!(
            t0.elapsed() < MAX_RESYNC,
            "{}'s view of {of}: not synchronized after {MAX_RESYNC:?}",
            via.name
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn authority_host_stopped_then_sync_links_of_one_node_flapping() {
    let _one = lock();
    let Some(c) = Cluster::start() else {
        return;
    };
    let t_start = Instant::now();
    let a_id = c
        .node_ids(&c.nodes[0])
        .iter()
        .find(|(n, _)| n == "node-a")
        .map(|(_, id)| u64::from(*id))
        .expect("node-a's id");
    let [a, b, cc] = &c.nodes;
    let mut model = Model::new(SIZE);
    // A command sent to a stopped node is never answered (its TCP peer is alive), and the
    // writer has one command in flight: so one writer through node-b and node-c, and one
    // through node-a alone, trying it again 50 ms after each NOT READY (writes reach it
    // right after it wakes).
    let paths_bc = [c.path(b), c.path(cc)];
    let mut spec = WriterSpec::new((8192, 8192), 6_000_000);
    spec.queue_bound = Duration::from_secs(60);
    spec.reconnect = true;
    let wbc = Writer::start(&c.topo, HOST, &paths_bc, spec);
    let mut spec = WriterSpec::new((16384, 8192), 6_500_000);
    spec.queue_bound = Duration::from_secs(120);
    spec.retry_failed_after = Duration::from_millis(50);
    spec.reconnect = true;
    let wa = Writer::start(&c.topo, HOST, &[c.path(a)], spec);
    let fio = fio::locate();
    let fio_b = c.fio_write(&fio, b, 6);
    std::thread::sleep(Duration::from_millis(1500));

    // Fault 1: node-a stopped until node-b has taken over, then woken.
    let t_stop = Instant::now();
    let pids = a.signal_node(&c.topo, Signal::SIGSTOP);
    eprintln!("SIGSTOP of node-a (authority host): pids {pids:?}");
    let took = wait_until(
        "node-b took the authority over; node-b and node-c serve without node-a",
        Duration::from_secs(60),
        || {
            c.authority_state(b)
                .is_some_and(|s| s["took_over_from"] == a_id)
                && c.serving_without(b, "node-a")
                && c.serving_without(cc, "node-a")
        },
    );
    // The survivors answer GOOD again, and the writer goes on through both for a while.
    let serving = wait_until(
        "node-b and node-c answer GOOD while node-a is stopped",
        Duration::from_secs(30),
        || c.serves_now(b) && c.serves_now(cc),
    );
    std::thread::sleep(Duration::from_secs(2));
    let t_cont = Instant::now();
    a.signal_node(&c.topo, Signal::SIGCONT);
    eprintln!("SIGCONT of node-a after {:?}", t_cont - t_stop);
    let (last_out, t_readmitted) = readmitted(&c, b, "node-a", t_cont);
    wait_until(
        "all three synchronized after node-a woke",
        MAX_RESYNC,
        || c.all_synchronized(),
    );
    let stale = c.authority_state(a);
    std::thread::sleep(Duration::from_secs(1));

    // Fault 2: both sync links of node-c flapping on a fixed 500 ms schedule.
    let soak = std::env::var_os("TANDEM_SOAK").is_some_and(|v| v == "1");
    let span = Duration::from_secs(if soak { 30 } else { 6 });
    let half = Duration::from_millis(500);
    let t_flap = Instant::now();
    let mut flaps: u32 = 0;
    while t_flap.elapsed() < span {
        for net in ["sync0", "sync1"] {
            c.topo.cut(cc.member, net).expect("cut");
        }
        std::thread::sleep(
            (t_flap + half * (2 * flaps + 1)).saturating_duration_since(Instant::now()),
        );
        for net in ["sync0", "sync1"] {
            c.topo.restore(cc.member, net).expect("restore");
        }
        flaps += 1;
        std::thread::sleep((t_flap + half * (2 * flaps)).saturating_duration_since(Instant::now()));
    }
    let t_flap_end = Instant::now();
    let converge = wait_until(
        "all three synchronized after node-c's sync links stop flapping",
        MAX_RESYNC,
        || c.all_synchronized(),
    );
    let (fio_longest, fio_retries) = FIO.finish_writes(fio_b, t_stop, "node-b");
    std::thread::sleep(Duration::from_secs(2));
    let rbc = finish(wbc, "multipath over node-b and node-c");
    let ra = finish(wa, "through node-a");
    model.apply(&rbc);
    model.apply(&ra);

    // node-a's answers to writes sent after it woke (answered = sent + took).
    let early_good: Vec<Duration> = ra
        .events
        .iter()
        .filter(|e| e.at - e.took > t_cont)
        .filter(|e| e.outcome == Outcome::Ack && e.at < last_out)
        .map(|e| e.at - t_cont)
        .collect();
    let pause_stop = rbc.longest_pause(t_stop, t_readmitted);
    let survivors_while_stopped = (acks(&rbc, 0, t_stop, t_cont), acks(&rbc, 1, t_stop, t_cont));
    let a_after = acks(&ra, 0, t_readmitted, t_flap);
    let pause_flap = rbc.longest_pause(t_flap, t_flap_end);
    let flap_acks: Vec<usize> = vec![
        acks(&ra, 0, t_flap, t_flap_end),
        acks(&rbc, 0, t_flap, t_flap_end),
        acks(&rbc, 1, t_flap, t_flap_end),
    ];
    let c_nr = rbc.count(1, Outcome::NotReady, t_flap, t_flap_end + converge);
    eprintln!(
        "MEASURE SIGSTOP of the authority host node-a for {}: node-b took over and both survivors serve {} after the stop (READ answered GOOD through both {} after that); writes through node-b + node-c while stopped {survivors_while_stopped:?}; longest write pause {}; node-b readmitted node-a {} after SIGCONT (GOOD from node-a to writes sent after waking, before that: {early_good:?}); {a_after} writes through node-a after; node-a's old authority: {stale:?}",
        ms(t_cont - t_stop),
        ms(took),
        ms(serving),
        ms(pause_stop),
        ms(t_readmitted - t_cont)
    );
    eprintln!(
        "MEASURE sync0+sync1 of node-c flapping {span:?} ({flaps} flaps): longest write pause {}; acks during the flapping per node {flap_acks:?}; NOT READY through node-c {c_nr}; all three synchronized {} after; fio through node-b longest write {}, {fio_retries} slices written again",
        ms(pause_flap),
        ms(converge),
        ms(fio_longest)
    );
    assert!(
        early_good.is_empty(),
        "node-a acknowledged writes sent after SIGCONT ({early_good:?} after it) before node-b readmitted it"
    );
    assert!(
        survivors_while_stopped.0 > 0 && survivors_while_stopped.1 > 0,
        "a survivor did not go on while node-a was stopped: {survivors_while_stopped:?}"
    );
    assert!(
        pause_stop < MAX_PAUSE,
        "writes paused {pause_stop:?} at the stop"
    );
    assert!(
        a_after > 0,
        "node-a did not serve writes after its readmission"
    );
    assert!(
        stale.is_some_and(|s| !s["superseded_by"].is_null()),
        "node-a's stale authority did not stand down"
    );
    assert!(
        flap_acks.iter().sum::<usize>() > 0,
        "no write acknowledged while node-c's sync links flapped"
    );
    assert!(
        pause_flap < MAX_PAUSE,
        "writes paused {pause_flap:?} in the flapping"
    );
    let reports = c.split_brain_reports();
    assert!(
        reports.is_empty(),
        "split brain under node majority: {reports:?}"
    );
    c.fio_read_back(&fio, 6, &mut model, "after the stop and the flapping");
    c.verify_all(
        &model,
        "after node-a's SIGSTOP and node-c's flapping sync links",
    );
    eprintln!(
        "SUMMARY SIGSTOP of the authority host, then node-c's sync links flapping: scenario {:?}",
        t_start.elapsed()
    );
}
