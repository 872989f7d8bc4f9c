//! A real split brain and its resolution, through the product's own management path: two
//! `tandem-control` processes (each supervising its own `tandem-dataplane`) on 127.0.0.1 and
//! 127.0.0.2 under the Heartbeat strategy, configured with the `tandem` CLI.
//!
//! 1. A replicated device, synchronized.
//! 2. A total partition made with nftables on loopback, restricted to the exact ports: the
//!    sync link's port (TCP, and UDP for its heartbeats) both ways, and node A's API port on
//!    127.0.0.1 (so node B hears no answer from A's authority either). A removes B; B takes
//!    the authority over: both go on alone. Different data is written through each.
//! 3. The rules are deleted (always, by a Drop guard). Both nodes report `split-brain`, and
//!    nothing is merged: each image still holds its own side's writes.
//! 4. `tandem device resolve disk1 --keep node-a --save-discarded F --yes`, run on node B
//!    (the discarded side, so the kept side is reached through its API): F lists exactly the
//!    regions B wrote alone, with their data; both end synchronized, the images are
//!    byte-identical and hold A's data.

use std::process::Command;
use std::time::{Duration, Instant};

use tandem_tests::e2e::blocks::{pattern, write16};
use tandem_tests::e2e::cluster::{
    login, node_pair, scratch_root, sync_link, wait_until, LogsOnFailure, Node, DEVICE,
};
use tandem_tests::e2e::procs::free_port;
use tandem_tests::e2e::raw::command_retrying;
use tandem_tests::e2e::raw::RawConn;

const SIZE: usize = 64 << 20;
const REGION: usize = 64 << 10;

/// nftables rules that cut the two nodes apart on loopback; deleted on drop (also when the
/// test fails). Only the named ports are touched.
struct Partition {
    table: String,
}

impl Partition {
    fn cut(sync_port: u16, a_api: &str) -> Partition {
        let table = format!("tandem_split_{}_{sync_port}", std::process::id());
        let (a_ip, a_port) = a_api.split_once(':').unwrap();
        let script = format!(
            "table inet {table} {{\n\
             chain out {{\n\
             type filter hook output priority 0; policy accept;\n\
             tcp dport {sync_port} drop\n\
             tcp sport {sync_port} drop\n\
             udp dport {sync_port} drop\n\
             udp sport {sync_port} drop\n\
             ip daddr {a_ip} tcp dport {a_port} drop\n\
             }}\n\
             }}\n"
        );
        let path = std::env::temp_dir().join(format!("{table}.nft"));
        std::fs::write(&path, script).unwrap();
        let st = Command::new("nft").arg("-f").arg(&path).status().unwrap();
        assert!(st.success(), "nft -f {}", path.display());
        eprintln!("partition: nftables table {table} drops port {sync_port} and {a_api}");
        Partition { table }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .status();
        eprintln!("partition healed: nftables table {} deleted", self.table);
    }
}

/// Writes `data` at `lba` through `n` (a fresh session), retrying while the node is not
/// ready, and flushes.
fn write_through(n: &Node, initiator: &str, lba: u64, data: &[u8]) {
    let mut c = login_retrying(n, initiator);
    let (r, _) = command_retrying(
        &mut c,
        &write16(lba, (data.len() / 512) as u32),
        0,
        data,
        Duration::from_secs(30),
    );
    assert_eq!(
        r.status, 0,
        "write at {lba} through {}: sense {:02x?}",
        n.name, r.sense
    );
    let (r, _) = command_retrying(
        &mut c,
        &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        0,
        &[],
        Duration::from_secs(15),
    );
    assert_eq!(r.status, 0, "SYNCHRONIZE CACHE through {}", n.name);
}

fn login_retrying(n: &Node, initiator: &str) -> RawConn {
    let t0 = Instant::now();
    loop {
        let attempt = std::panic::catch_unwind(|| login(n, initiator));
        match attempt {
            Ok(c) => return c,
            Err(_) if t0.elapsed() < Duration::from_secs(20) => {
                std::thread::sleep(Duration::from_millis(500))
            }
            Err(e) => std::panic::resume_unwind(e),
        }
    }
}

fn image(n: &Node) -> Vec<u8> {
    std::fs::read(n.image()).unwrap()
}

fn region_of(buf: &[u8], r: usize) -> &[u8] {
    &buf[r * REGION..(r + 1) * REGION]
}

/// A node's `replica list` states, this node first.
fn states(n: &Node) -> Vec<String> {
    n.replicas()
        .and_then(|l| {
            l["replicas"].as_array().map(|rs| {
                rs.iter()
                    .map(|r| r["state"].as_str().unwrap_or("").to_string())
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// Keeps node A (the first node, whose authority wins on reconnect); run on node B, the
/// discarded side.
#[test]
fn split_brain_is_reported_never_merged_and_resolved_keeping_one_copy() {
    scenario(false);
}

/// Keeps node B (whose authority stood down on reconnect, so it is reinstated); run on node
/// B, so the discarded side (A, the authority host) is reached through its API.
#[test]
fn split_brain_resolved_keeping_the_side_whose_authority_stood_down() {
    scenario(true);
}

fn scenario(keep_b: bool) {
    let root = scratch_root("tandem-split");
    let (mut a, mut b) = node_pair(root.path());
    let _logs = LogsOnFailure::new(vec![a.log.clone(), b.log.clone()]);
    a.start();
    b.start();

    // ---- 1. A replicated device, synchronized, with known data.
    a.ok(&["device", "create", DEVICE, "--size", "64MiB"]);
    let base = pattern(SIZE, 7);
    {
        let mut c = login(&a, "iqn.2026-11.io.tandem.test:split-pre");
        for off in (0..SIZE).step_by(256 << 10) {
            let (r, _) = command_retrying(
                &mut c,
                &write16((off / 512) as u64, (256 << 10) / 512),
                0,
                &base[off..off + (256 << 10)],
                Duration::from_secs(15),
            );
            assert_eq!(r.status, 0);
        }
    }
    a.add_server(&b);
    b.add_server(&a);
    let sync = free_port();
    let link = sync_link(&a, &b, sync);
    a.add_replica(&b, &link);
    wait_until(
        "both synchronized after replica add",
        Duration::from_secs(90),
        || a.synchronized(2) && b.synchronized(2),
    );

    // No split brain yet: resolve refuses, and nothing changes.
    let out = b.cli(&["device", "resolve", DEVICE, "--keep", "node-a", "--yes"]);
    assert!(
        !out.status.success(),
        "resolve without a split brain must fail"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no split brain"), "resolve error: {err}");
    let out = b.cli(&["device", "resolve", DEVICE, "--keep", "node-z"]);
    assert!(!out.status.success(), "an unknown node must be refused");

    // ---- 2. Total partition; both sides go on alone; different data through each.
    // Regions written only by A, only by B, and by both (the conflict).
    let (only_a, only_b, both) = (3usize, 10usize, 20usize);
    let data_a = pattern(REGION, 1001);
    let data_b = pattern(REGION, 2002);
    let b_regions: Vec<usize>;
    {
        let _cut = Partition::cut(sync, &a.api);
        let t0 = Instant::now();
        let took = wait_until(
            "node-b takes the authority over and serves alone",
            Duration::from_secs(60),
            || {
                b.replicas().is_some_and(|l| {
                    l["replicas"][0]["serving"] == true
                        && l["replicas"][1]["state"] != "synchronized"
                })
            },
        );
        eprintln!("MEASURE node-b serving alone {took:?} after the cut");
        for r in [only_b, both] {
            write_through(
                &b,
                "iqn.2026-11.io.tandem.test:split-b",
                (r * REGION / 512) as u64,
                &data_b,
            );
        }
        for r in [only_a, both] {
            write_through(
                &a,
                "iqn.2026-11.io.tandem.test:split-a",
                (r * REGION / 512) as u64,
                &data_a,
            );
        }
        b_regions = vec![only_b, both];
        eprintln!(
            "both sides acknowledged their own writes {:?} after the cut",
            t0.elapsed()
        );
    }

    // ---- 3. Healed: both report split-brain; nothing merged.
    let seen = wait_until(
        "both nodes report split-brain",
        Duration::from_secs(60),
        || {
            let (sa, sb) = (states(&a), states(&b));
            sa.len() == 2
                && sb.len() == 2
                && sa.iter().all(|s| s == "split-brain")
                && sb.iter().all(|s| s == "split-brain")
        },
    );
    eprintln!("MEASURE split brain reported on both nodes {seen:?} after the heal");
    a.ok(&["replica", "list", DEVICE]);
    b.ok(&["replica", "list", DEVICE]);
    std::thread::sleep(Duration::from_secs(3));
    let (ia, ib) = (image(&a), image(&b));
    assert_eq!(region_of(&ia, only_a), &data_a[..], "A keeps its write");
    let (keep, discard) = if keep_b {
        ("node-b", "node-a")
    } else {
        ("node-a", "node-b")
    };
    let (kept_data, discarded_data) = if keep_b {
        (&data_b, &data_a)
    } else {
        (&data_a, &data_b)
    };
    let (kept_regions, discarded_regions) = if keep_b {
        ([only_b, both], vec![only_a, both])
    } else {
        ([only_a, both], b_regions.clone())
    };
    assert_eq!(
        region_of(&ia, both),
        &data_a[..],
        "A's copy has nothing of B's"
    );
    assert_eq!(
        region_of(&ia, only_b),
        region_of(&base, only_b),
        "A's copy has nothing of B's"
    );
    assert_eq!(region_of(&ib, only_b), &data_b[..], "B keeps its write");
    assert_eq!(
        region_of(&ib, both),
        &data_b[..],
        "B's copy has nothing of A's"
    );
    assert_eq!(
        region_of(&ib, only_a),
        region_of(&base, only_a),
        "B's copy has nothing of A's"
    );
    assert!(
        states(&a).iter().all(|s| s == "split-brain"),
        "still split-brain, not merged"
    );

    // ---- 4. Resolve, keeping A, run on B. First the dry run: nothing changes.
    let dry = b.ok(&["device", "resolve", DEVICE, "--keep", keep]);
    assert!(dry.contains("add --yes"), "dry run: {dry}");
    assert!(states(&b).iter().all(|s| s == "split-brain"));
    let saved = root.path().join("discarded.json");
    let t0 = Instant::now();
    let out = b.ok(&[
        "device",
        "resolve",
        DEVICE,
        "--keep",
        keep,
        "--save-discarded",
        saved.to_str().unwrap(),
        "--yes",
    ]);
    eprintln!("resolve took {:?}", t0.elapsed());
    assert!(out.contains("done"), "resolve: {out}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&saved).unwrap()).unwrap();
    let listed: Vec<usize> = report["regions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["index"].as_u64().unwrap() as usize)
        .collect();
    let mut listed = listed;
    listed.sort();
    let mut want = discarded_regions.clone();
    want.sort();
    assert_eq!(
        listed, want,
        "the saved list is exactly the discarded side's changed regions"
    );
    for r in report["regions"].as_array().unwrap() {
        assert_eq!(
            r["offset"].as_u64().unwrap(),
            r["index"].as_u64().unwrap() * REGION as u64
        );
        assert_eq!(r["length"].as_u64().unwrap(), REGION as u64);
    }
    assert_eq!(report["kept"]["name"], keep);
    assert_eq!(report["discarded"]["name"], discard);
    assert_eq!(report["journal_complete"], true);
    let data = report["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "the data of both regions is saved");
    for d in data {
        let bytes = hex_decode(d["data_hex"].as_str().unwrap());
        assert_eq!(&bytes, discarded_data, "saved data is the discarded write");
    }
    let synced = wait_until(
        "both synchronized after resolve",
        Duration::from_secs(120),
        || a.synchronized(2) && b.synchronized(2),
    );
    eprintln!("MEASURE both synchronized {synced:?} after resolve (64 MiB full sync)");
    let listing = a.replicas().unwrap();
    assert!(
        listing["resolution"]
            .as_str()
            .is_some_and(|t| t.contains(&format!("kept node {keep}"))),
        "the resolution is shown: {listing}"
    );
    // Flush both, then compare the images: identical, and A's data.
    write_through(
        &a,
        "iqn.2026-11.io.tandem.test:split-flush",
        0,
        region_of(&base, 0),
    );
    std::thread::sleep(Duration::from_secs(1));
    let (ia, ib) = (image(&a), image(&b));
    if let Some(i) = ia.iter().zip(&ib).position(|(x, y)| x != y) {
        panic!("images differ first at byte {i} (region {})", i / REGION);
    }
    let mut expect = base.clone();
    for r in kept_regions {
        expect[r * REGION..(r + 1) * REGION].copy_from_slice(kept_data);
    }
    assert!(
        ia == expect,
        "the images hold {keep}'s data ({discard}'s writes discarded)"
    );
    eprintln!("after resolve: both images byte-identical and equal to {keep}'s data");
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
