//! The network-namespace topology helper itself: links, cuts, partitions,
//! processes and teardown. Needs root; skipped (with a note) otherwise.

use std::time::Duration;
use tandem_tests::netns::{self, Error, Member, Topology};

const T: Duration = Duration::from_secs(2);

fn skip() -> bool {
    if let Some(why) = netns::unavailable() {
        eprintln!("skipped: {why}");
        return true;
    }
    false
}

fn namespaces_of(id: &str) -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{id}-")))
        .map(str::to_string)
        .collect()
}

#[test]
fn links_cut_restore_partition_heal() {
    if skip() {
        return;
    }
    let mut topo = Topology::builder()
        .nodes(2)
        .witness(true)
        .hosts(1)
        .portals(2)
        .build()
        .unwrap();
    let (n1, n2, w, h1) = (
        Member::Node(1),
        Member::Node(2),
        Member::Witness,
        Member::Host(1),
    );
    assert_eq!(
        topo.networks(),
        ["sync0", "sync1", "hb0", "hb1", "mgmt", "portal0", "portal1"]
    );
    assert_eq!(topo.addr(n1, "sync0").unwrap().to_string(), "10.210.0.1");
    assert_eq!(
        topo.addr(h1, "portal1").unwrap().to_string(),
        "10.210.11.201"
    );
    assert!(matches!(topo.addr(w, "portal0"), Err(Error::NotFound(_))));
    assert!(matches!(topo.addr(h1, "sync0"), Err(Error::NotFound(_))));

    // Every network works for its members.
    for net in ["sync0", "sync1", "hb0", "hb1", "mgmt", "portal0", "portal1"] {
        assert!(
            topo.can_connect(n1, n2, net, T).unwrap(),
            "n1 -> n2 on {net}"
        );
    }
    assert!(topo.can_connect(w, n1, "hb1", T).unwrap());
    assert!(topo.can_connect(h1, n2, "portal0", T).unwrap());

    // No route anywhere but the topology's own subnets.
    for m in topo.members().to_vec() {
        let out = topo
            .exec(m, &["ip", "-4", "route", "show", "default"], T)
            .unwrap();
        assert!(out.stdout.is_empty(), "{m} has a default route");
    }

    // Cut one link: only that member's link on that network goes.
    topo.cut(n1, "sync0").unwrap();
    assert!(!topo.can_connect(n2, n1, "sync0", T).unwrap());
    assert!(topo.can_connect(n2, n1, "sync1", T).unwrap());
    assert!(topo.can_connect(h1, n2, "portal0", T).unwrap());
    topo.restore(n1, "sync0").unwrap();
    assert!(topo.can_connect(n2, n1, "sync0", T).unwrap());

    // Partition {n1} from {n2, witness}: n1 is alone on every network.
    topo.partition(&[&[n1], &[n2, w]]).unwrap();
    for net in ["sync0", "hb0", "mgmt"] {
        assert!(
            !topo.can_connect(n1, n2, net, T).unwrap(),
            "partitioned on {net}"
        );
    }
    assert!(!topo.can_connect(n1, w, "hb0", T).unwrap());
    assert!(topo.can_connect(n2, w, "hb0", T).unwrap());
    // The host was named in no group: it stays with the first one (n1).
    assert!(topo.can_connect(h1, n1, "portal0", T).unwrap());
    assert!(!topo.can_connect(h1, n2, "portal0", T).unwrap());
    topo.heal().unwrap();
    assert!(topo.can_connect(n1, n2, "sync0", T).unwrap());
    assert!(topo.can_connect(h1, n2, "portal0", T).unwrap());

    let id = topo.id().to_string();
    assert_eq!(namespaces_of(&id).len(), 5, "sw, n1, n2, w, h1");
    drop(topo);
    assert!(
        namespaces_of(&id).is_empty(),
        "namespaces left: {:?}",
        namespaces_of(&id)
    );
}

#[test]
fn processes_spawn_kill_restart() {
    if skip() {
        return;
    }
    let mut topo = Topology::builder()
        .nodes(1)
        .witness(false)
        .hosts(0)
        .portals(1)
        .build()
        .unwrap();
    let n1 = Member::Node(1);
    let pid1 = topo
        .spawn(n1, "sleeper", &["sleep", "600"], &[], None)
        .unwrap();
    assert!(topo.running("sleeper"));
    // The process runs inside the node's namespace.
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", &topo.ns(n1)])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .any(|p| p == pid1.to_string()));
    let pid2 = topo.restart("sleeper", Duration::ZERO).unwrap();
    assert_ne!(pid1, pid2);
    assert!(topo.running("sleeper"));
    topo.kill("sleeper", Duration::from_millis(500)).unwrap();
    assert!(!topo.running("sleeper"));
    // exec gives up after its timeout.
    let t0 = std::time::Instant::now();
    let out = topo
        .exec(n1, &["sleep", "30"], Duration::from_millis(300))
        .unwrap();
    assert!(!out.status.success());
    assert!(t0.elapsed() < Duration::from_secs(5));
    // Dropped with a process running: it is killed with the namespaces.
    let pid3 = topo
        .spawn(n1, "orphan", &["sleep", "600"], &[], None)
        .unwrap();
    drop(topo);
    std::thread::sleep(Duration::from_millis(100));
    let alive = std::fs::read_to_string(format!("/proc/{pid3}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false);
    assert!(!alive, "process {pid3} survived the teardown");
}

#[test]
fn torn_down_on_panic() {
    if skip() {
        return;
    }
    let id = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let id2 = id.clone();
    let r = std::panic::catch_unwind(move || {
        let topo = Topology::builder()
            .nodes(1)
            .witness(true)
            .hosts(1)
            .portals(1)
            .build()
            .unwrap();
        *id2.lock().unwrap() = topo.id().to_string();
        assert_eq!(namespaces_of(topo.id()).len(), 4);
        panic!("a failing test");
    });
    assert!(r.is_err());
    let id = id.lock().unwrap().clone();
    assert!(!id.is_empty());
    assert!(
        namespaces_of(&id).is_empty(),
        "namespaces left after panic: {:?}",
        namespaces_of(&id)
    );
}

#[test]
fn netem_delay_and_loss() {
    if skip() {
        return;
    }
    let topo = Topology::builder()
        .nodes(2)
        .witness(false)
        .hosts(0)
        .portals(1)
        .build()
        .unwrap();
    let (n1, n2) = (Member::Node(1), Member::Node(2));
    // Total loss on n1's hb0 link: n1 is unreachable there, not elsewhere.
    match topo.netem(n1, "hb0", None, Some(100.0)) {
        Err(Error::Unsupported(why)) => eprintln!("loss skipped: {why}"),
        r => {
            r.unwrap();
            assert!(!topo
                .can_connect(n2, n1, "hb0", Duration::from_secs(1))
                .unwrap());
            assert!(topo.can_connect(n2, n1, "hb1", T).unwrap());
            topo.netem(n1, "hb0", None, None).unwrap();
            assert!(topo.can_connect(n2, n1, "hb0", T).unwrap());
            // 50 % loss: some of 40 short connections fail, not all.
            topo.netem(n1, "hb0", None, Some(50.0)).unwrap();
            let ok = (0..40)
                .filter(|_| {
                    topo.can_connect(n2, n1, "hb0", Duration::from_millis(300))
                        .unwrap()
                })
                .count();
            topo.netem(n1, "hb0", None, None).unwrap();
            assert!(
                (1..40).contains(&ok),
                "{ok} of 40 connections through 50 % loss"
            );
        }
    }
    match topo.netem(n1, "hb0", Some(Duration::from_millis(200)), None) {
        Err(Error::Unsupported(why)) => eprintln!("delay skipped: {why}"),
        r => {
            r.unwrap();
            let t0 = std::time::Instant::now();
            assert!(topo
                .can_connect(n2, n1, "hb0", Duration::from_secs(5))
                .unwrap());
            assert!(
                t0.elapsed() >= Duration::from_millis(400),
                "SYN/SYN-ACK took {:?}",
                t0.elapsed()
            );
            topo.netem(n1, "hb0", None, None).unwrap();
        }
    }
}
