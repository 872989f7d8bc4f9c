//! Demonstration of the namespace topology: two single-node targets, each in
//! its own node namespace, and a host namespace that logs in to both with
//! libiscsi's iscsi-ls / iscsi-inq, node 1 over the host's portal0 link and
//! node 2 over its portal1 link. Cutting portal0 makes the login to node 1
//! fail while node 2 still answers; restoring it brings node 1 back.
//!
//! The target is chosen by LAB_TARGET (as for tests/lab): `tandem` (default,
//! the workspace's tandem-dataplane) or `tgt` (Linux tgtd, the reference).
//! Needs root, iproute2 and libiscsi-bin (tests/lab/install-deps.sh).

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};
use tandem_tests::netns::{self, Member, Topology};

const HOST_IQN: &str = "iqn.2026-11.io.tandem:netns.host1";

fn target_kind() -> String {
    std::env::var("LAB_TARGET").unwrap_or_else(|_| "tandem".into())
}

/// Start a single-node target in `node`'s namespace on `portal`; returns its
/// IQN and the LUN that carries the disk.
fn start_target(
    topo: &mut Topology,
    node: Member,
    portal: SocketAddr,
    log_dir: &std::path::Path,
) -> (String, u32) {
    let iqn = format!("iqn.2026-11.io.tandem:netns.{node}");
    let log = log_dir.join(format!("{node}.log"));
    match target_kind().as_str() {
        "tandem" => {
            let bin = tandem_tests::e2e::procs::bin("tandem-dataplane");
            let (b, p) = (bin.to_string_lossy().to_string(), portal.to_string());
            topo.spawn(
                node,
                &format!("target-{node}"),
                &[&b, "serve", "--portal", &p, "--ram", "64MiB", "--iqn", &iqn],
                &[("TANDEM_LOG", "warn")],
                Some(&log),
            )
            .unwrap();
            (iqn, 0)
        }
        "tgt" => {
            let port = (20000
                + (std::process::id() % 5000) * 2
                + if node == Member::Node(1) { 0 } else { 1 })
            .to_string();
            let portal_arg = format!("portal={portal}");
            topo.spawn(
                node,
                &format!("target-{node}"),
                &["tgtd", "-f", "-C", &port, "--iscsi", &portal_arg],
                &[],
                Some(&log),
            )
            .unwrap();
            let tgtadm = |args: &[&str]| -> bool {
                Command::new("tgtadm")
                    .args(["-C", &port, "--lld", "iscsi"])
                    .args(args)
                    .output()
                    .map(|o| o.status.success())
                    .unwrap_or(false)
            };
            let t0 = Instant::now();
            while !tgtadm(&["--op", "show", "--mode", "target"]) {
                assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "tgtd did not start (log {})",
                    log.display()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            let disk = log_dir.join(format!("{node}.img"));
            std::fs::File::create(&disk)
                .unwrap()
                .set_len(64 << 20)
                .unwrap();
            let disk = disk.to_string_lossy().to_string();
            assert!(tgtadm(&[
                "--op", "new", "--mode", "target", "--tid", "1", "-T", &iqn
            ]));
            assert!(tgtadm(&[
                "--op",
                "new",
                "--mode",
                "logicalunit",
                "--tid",
                "1",
                "--lun",
                "1",
                "-b",
                &disk
            ]));
            assert!(tgtadm(&[
                "--op",
                "update",
                "--mode",
                "logicalunit",
                "--tid",
                "1",
                "--lun",
                "1",
                "--params",
                "vendor_id=TANDEM,product_id=TANDEM-DISK"
            ]));
            assert!(tgtadm(&[
                "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL"
            ]));
            (iqn, 1)
        }
        other => panic!("LAB_TARGET={other}: expected tandem or tgt"),
    }
}

fn wait_listening(topo: &Topology, from: Member, portal: SocketAddr) {
    let t0 = Instant::now();
    loop {
        let ok = topo
            .run_in(from, move || {
                std::net::TcpStream::connect_timeout(&portal, Duration::from_millis(300)).is_ok()
            })
            .unwrap();
        if ok {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "target not listening on {portal}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `iscsi-inq` from the host: Ok(output) when the login and INQUIRY worked.
fn inquiry(
    topo: &Topology,
    host: Member,
    portal: SocketAddr,
    iqn: &str,
    lun: u32,
) -> Result<String, String> {
    let url = format!("iscsi://{portal}/{iqn}/{lun}");
    let out = topo
        .exec(
            host,
            &["iscsi-inq", "-i", HOST_IQN, &url],
            Duration::from_secs(8),
        )
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

fn discovery(topo: &Topology, host: Member, portal: SocketAddr) -> Result<String, String> {
    let url = format!("iscsi://{portal}");
    let out = topo
        .exec(
            host,
            &["iscsi-ls", "-i", HOST_IQN, &url],
            Duration::from_secs(8),
        )
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

#[test]
fn host_logs_in_to_two_nodes_over_separate_links_and_one_is_cut() {
    if let Some(why) = netns::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let has = |p: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {p}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if !has("iscsi-inq") || !has("iscsi-ls") {
        eprintln!("skipped: libiscsi-bin missing (tests/lab/install-deps.sh)");
        return;
    }
    let logs = tempfile::tempdir().unwrap();
    let mut topo = Topology::builder()
        .nodes(2)
        .witness(true)
        .hosts(1)
        .portals(2)
        .build()
        .unwrap();
    let (n1, n2, host) = (Member::Node(1), Member::Node(2), Member::Host(1));
    let p1 = SocketAddr::from((topo.addr(n1, "portal0").unwrap(), 3260));
    let p2 = SocketAddr::from((topo.addr(n2, "portal1").unwrap(), 3260));
    eprintln!(
        "target {}: node1 on {p1} (host link portal0), node2 on {p2} (host link portal1)",
        target_kind()
    );
    let (iqn1, lun1) = start_target(&mut topo, n1, p1, logs.path());
    let (iqn2, lun2) = start_target(&mut topo, n2, p2, logs.path());
    wait_listening(&topo, host, p1);
    wait_listening(&topo, host, p2);

    // Discovery and login to both nodes, each over its own link.
    let d1 = discovery(&topo, host, p1).expect("discovery on node1");
    assert!(d1.contains(&iqn1), "node1 discovery: {d1}");
    let d2 = discovery(&topo, host, p2).expect("discovery on node2");
    assert!(d2.contains(&iqn2), "node2 discovery: {d2}");
    let i1 = inquiry(&topo, host, p1, &iqn1, lun1).expect("login + INQUIRY on node1");
    let i2 = inquiry(&topo, host, p2, &iqn2, lun2).expect("login + INQUIRY on node2");
    assert!(i1.contains("TANDEM"), "node1 INQUIRY: {i1}");
    assert!(i2.contains("TANDEM"), "node2 INQUIRY: {i2}");
    eprintln!("both logins work:\n{i1}");

    // Cut the host's portal0 link: node1 is unreachable, node2 still works.
    topo.cut(host, "portal0").unwrap();
    let t0 = Instant::now();
    let cut = inquiry(&topo, host, p1, &iqn1, lun1);
    assert!(cut.is_err(), "login over the cut link worked: {cut:?}");
    eprintln!(
        "login over the cut link fails after {:?}: {}",
        t0.elapsed(),
        cut.unwrap_err().trim()
    );
    inquiry(&topo, host, p2, &iqn2, lun2).expect("node2 still answers over portal1");
    assert!(
        topo.running("target-node1") && topo.running("target-node2"),
        "a target died"
    );

    // Restore: node1 answers again.
    topo.restore(host, "portal0").unwrap();
    let t0 = Instant::now();
    loop {
        match inquiry(&topo, host, p1, &iqn1, lun1) {
            Ok(_) => break,
            Err(e) => assert!(
                t0.elapsed() < Duration::from_secs(20),
                "node1 does not come back: {e}"
            ),
        }
    }
    eprintln!("node1 back {:?} after the restore", t0.elapsed());
    // `topo` is dropped here: targets killed, namespaces removed (also on a
    // failed assert above, through unwinding).
}
