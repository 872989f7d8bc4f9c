//! Replica management across real `tandem-control` processes on 127.0.0.1, 127.0.0.2 and
//! 127.0.0.3 (no data plane: these tests are about what the nodes agree to store):
//! `server add` with right and wrong tokens, `replica add` creating the partner's device with
//! mirrored sections in both `node.toml` files, three-way, precise refusals, `replica remove`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{code, stderr, Control};
use tandem_config::{LinkPair, NodeConfig, Priority, ReplicationConfig};

fn start(dir: &Path, ip: &str, name: &str) -> Control {
    std::fs::create_dir_all(dir.join("images")).unwrap();
    Control::try_start_at(
        dir,
        &format!("{ip}:0"),
        &["--no-dataplane", "--node-name", name],
    )
    .unwrap_or_else(|e| panic!("start {name}: {e}"))
}

fn config(c: &Control) -> NodeConfig {
    NodeConfig::load(c.data_dir.join("node.toml")).unwrap()
}

fn replication(c: &Control, device: &str) -> Option<ReplicationConfig> {
    config(c).device(device).and_then(|d| d.replication.clone())
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn link(s: &str) -> LinkPair {
    s.parse().unwrap()
}

/// `host:port` of a control's API.
fn addr(c: &Control) -> String {
    c.api.trim_start_matches("http://").to_string()
}

fn token_file(c: &Control) -> String {
    c.data_dir.join("token").display().to_string()
}

/// Runs the CLI, expects failure with `exit` and `needle` in stderr.
fn refused(c: &Control, args: &[&str], exit: i32, needle: &str) {
    let out = c.cli(args);
    let err = stderr(&out);
    assert_eq!(code(&out), exit, "tandem {args:?}: {err}");
    assert!(err.contains(needle), "expected `{needle}` in `{err}`");
}

#[test]
fn servers_are_checked_with_their_token() {
    let tmp = tempfile::tempdir().unwrap();
    let a = start(&tmp.path().join("a"), "127.0.0.1", "node-a");
    let b = start(&tmp.path().join("b"), "127.0.0.2", "node-b");
    let wrong = tmp.path().join("wrong.token");
    std::fs::write(&wrong, "0".repeat(64)).unwrap();
    let wrong = wrong.display().to_string();
    let b_addr = addr(&b);

    refused(
        &a,
        &["server", "add", "node-b", &b_addr, "--token-file", &wrong],
        7,
        "refused the token",
    );
    refused(
        &a,
        &[
            "server",
            "add",
            "node-x",
            &b_addr,
            "--token-file",
            &token_file(&b),
        ],
        7,
        "is named `node-b`, not `node-x`",
    );
    // Nothing listens on port 1 of 127.0.0.2.
    refused(
        &a,
        &[
            "server",
            "add",
            "node-b",
            "127.0.0.2:1",
            "--token-file",
            &token_file(&b),
        ],
        1,
        "cannot reach a Tandem API at 127.0.0.2:1",
    );
    refused(
        &a,
        &[
            "server",
            "add",
            "node-b",
            &b_addr,
            "--token-file",
            "/nonexistent/token",
        ],
        4,
        "cannot read the API token from /nonexistent/token",
    );
    // Nothing was saved by any of those.
    assert!(config(&a).servers.is_empty());
    assert!(!a.data_dir.join("servers/node-b.token").exists());
    assert!(!a.data_dir.join("servers/node-x.token").exists());

    a.ok(&[
        "server",
        "add",
        "node-b",
        &b_addr,
        "--token-file",
        &token_file(&b),
    ]);
    let copy = a.data_dir.join("servers/node-b.token");
    assert_eq!(mode(&copy), 0o600);
    assert_eq!(std::fs::read_to_string(&copy).unwrap().trim(), b.token());
    let saved = config(&a);
    assert_eq!(saved.servers[0].token_file.as_deref(), Some(copy.as_path()));
    assert_eq!(saved.servers[0].address.to_string(), b_addr);
    // The token never reaches the log or the config.
    let toml = std::fs::read_to_string(a.data_dir.join("node.toml")).unwrap();
    assert!(!toml.contains(&b.token()));

    refused(
        &a,
        &[
            "server",
            "add",
            "node-b",
            &b_addr,
            "--token-file",
            &token_file(&b),
        ],
        6,
        "already known",
    );
    // A server without a token is recorded, not checked.
    a.ok(&["server", "add", "node-q", "127.0.0.9:3261"]);
    let list = a.json(&["server", "list"]);
    let rows = list.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["name"], "node-b");
    assert_eq!(rows[0]["reachable"], true);
    assert_eq!(rows[0]["node"], "node-b");
    assert_eq!(rows[0]["token"], true);
    assert_eq!(rows[1]["name"], "node-q");
    assert_eq!(rows[1]["reachable"], false);
    assert_eq!(rows[1]["token"], false);
    let table = a.ok(&["server", "list"]);
    assert!(table.contains("REACHABLE"), "{table}");
    let no_check = a.json(&["server", "list", "--no-check"]);
    assert!(no_check[0].get("reachable").is_none(), "{no_check}");

    // Stopped: listed as unreachable.
    b.stop();
    let list = a.json(&["server", "list"]);
    assert_eq!(list[0]["reachable"], false, "{list}");

    a.ok(&["server", "remove", "node-b"]);
    assert!(!copy.exists(), "the token copy goes with the server");
}

struct Cluster {
    _tmp: tempfile::TempDir,
    a: Control,
    b: Control,
    c: Control,
}

fn cluster() -> Cluster {
    let tmp = tempfile::tempdir().unwrap();
    let a = start(&tmp.path().join("a"), "127.0.0.1", "node-a");
    let b = start(&tmp.path().join("b"), "127.0.0.2", "node-b");
    let c = start(&tmp.path().join("c"), "127.0.0.3", "node-c");
    for p in [&b, &c] {
        let name = config(p).node.name;
        a.ok(&[
            "server",
            "add",
            &name,
            &addr(p),
            "--token-file",
            &token_file(p),
        ]);
    }
    Cluster { _tmp: tmp, a, b, c }
}

fn images(c: &Control) -> String {
    c.data_dir.join("images").display().to_string()
}

fn secret_of(r: &ReplicationConfig) -> String {
    assert_eq!(mode(&r.secret_file), 0o600, "{}", r.secret_file.display());
    let s = std::fs::read_to_string(&r.secret_file)
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(s.len(), 64);
    assert!(s.bytes().all(|b| b.is_ascii_hexdigit()));
    s
}

#[test]
fn replica_add_three_way_and_remove() {
    let Cluster { _tmp, a, b, c } = cluster();
    a.ok(&[
        "device",
        "create",
        "d1",
        "--size",
        "8MiB",
        "--location",
        &images(&a),
    ]);
    let a_dev = config(&a).device("d1").unwrap().clone();

    // Refusals, each with its reason; nothing changes anywhere.
    fn base<'s>(extra: &[&'s str]) -> Vec<&'s str> {
        let mut v = vec!["replica", "add", "d1", "--partner", "node-b"];
        v.extend_from_slice(extra);
        v
    }
    let l1 = "--sync-link=127.0.0.1:7101=127.0.0.2:7101";
    refused(
        &a,
        &["replica", "add", "nope", "--partner", "node-b", l1],
        5,
        "no device named `nope`",
    );
    refused(
        &a,
        &["replica", "add", "d1", "--partner", "node-z", l1],
        5,
        "no server named `node-z`",
    );
    refused(
        &a,
        &["replica", "add", "d1", "--partner", "node-a", l1],
        7,
        "is this node",
    );
    refused(
        &a,
        &base(&["--sync-link", "127.0.0.1:7101"]),
        2,
        "not LOCAL_IP:PORT=PARTNER_IP:PORT",
    );
    refused(&a, &base(&[]), 2, "--sync-link");
    refused(
        &a,
        &base(&[l1, "--sync-link", "127.0.0.1:7101=127.0.0.2:7102"]),
        7,
        "sync_links[1] `127.0.0.1:7101=127.0.0.2:7102`: local address 127.0.0.1:7101 is already used",
    );
    refused(
        &a,
        &base(&[l1, "--heartbeat-link", "127.0.0.1:7103=127.0.0.2:7101"]),
        7,
        "heartbeat_links[0] `127.0.0.1:7103=127.0.0.2:7101`: partner address 127.0.0.2:7101 is used twice",
    );
    refused(
        &a,
        &base(&["--sync-link", "0.0.0.0:7101=127.0.0.2:7101"]),
        7,
        "not a unicast",
    );
    refused(
        &a,
        &base(&["--sync-link", "127.0.0.1:3260=127.0.0.2:7101"]),
        6,
        "is an iSCSI portal of this node",
    );
    let api_link = format!("--sync-link={}=127.0.0.2:7101", addr(&a));
    refused(&a, &base(&[&api_link]), 6, "this node's management API");
    refused(
        &a,
        &base(&[l1, "--failover", "node-majority"]),
        7,
        "needs a third vote",
    );
    refused(
        &a,
        &base(&[l1, "--failover", "quorum"]),
        2,
        "unknown variant `quorum`",
    );
    refused(
        &a,
        &base(&[l1, "--witness", "node-c"]),
        7,
        "only applies to node-majority",
    );
    refused(
        &a,
        &base(&[l1, "--partner-location", "images"]),
        7,
        "not an absolute path",
    );
    refused(
        &a,
        &base(&[l1, "--journal-location", "/tmp"]),
        7,
        "disk journals only",
    );
    refused(
        &a,
        &base(&[
            l1,
            "--journal",
            "disk-failure",
            "--journal-location",
            "/nonexistent",
        ]),
        7,
        "is not a directory",
    );
    // The partner refuses an image directory outside its allowed ones (its own 4xx).
    refused(
        &a,
        &base(&[l1, "--partner-location", "/nonexistent/dir"]),
        7,
        "server `node-b`",
    );
    // Raw API: field-precise JSON errors.
    let t = a.token();
    let (status, body) = a.http(
        "POST",
        "/api/v1/devices/d1/replicas",
        Some(&t),
        Some(r#"{"partner":"node-b","sync_links":["127.0.0.1:7101=nothing"]}"#),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("at `sync_links[0]`"), "{body}");
    let (status, body) = a.http(
        "POST",
        "/api/v1/devices/d1/replicas",
        Some(&t),
        Some(r#"{"partner":"node-b","sync_links":[],"colour":"red"}"#),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("unknown field `colour`"), "{body}");
    let (status, body) = a.http(
        "PUT",
        "/api/v1/devices/d1/replication",
        Some(&t),
        Some(r#"{"replication":{"node_id":1,"partners":[]},"secret":"short"}"#),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("64 hex characters"), "{body}");
    let (status, body) = a.http("GET", "/api/v1/devices/d1/replicas", Some(&t), None);
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("is not replicated"), "{body}");
    // The partner has a device of that name already.
    b.ok(&["device", "create", "d9", "--ram", "--size", "1MiB"]);
    a.ok(&["device", "create", "d9", "--ram", "--size", "1MiB"]);
    refused(
        &a,
        &["replica", "add", "d9", "--partner", "node-b", l1],
        6,
        "server `node-b` already has a device named `d9`",
    );

    assert!(
        config(&b).device("d1").is_none(),
        "no refusal leaves a device behind"
    );
    assert!(replication(&a, "d1").is_none());
    assert!(!a.data_dir.join("cluster.secret").exists());
    assert!(!b.data_dir.join("cluster.secret").exists());

    // Two-way.
    let out = a.ok(&base(&[
        l1,
        "--sync-link",
        "127.0.0.1:7102=127.0.0.2:7102",
        "--heartbeat-link",
        "127.0.0.1:7103=127.0.0.2:7103",
        "--partner-location",
        &images(&b),
        "--journal",
        "disk-failure",
        "--priority",
        "first",
    ]));
    assert!(
        out.contains("partner target iqn.2026-11.io.tandem:node-b-d1"),
        "{out}"
    );
    let ra = replication(&a, "d1").expect("A's section");
    let rb = replication(&b, "d1").expect("B's section");
    assert_eq!(ra.node_id, 1);
    assert_eq!(rb.node_id, 2);
    assert_eq!(ra.partners.len(), 1);
    assert_eq!(rb.partners.len(), 1);
    let (pa, pb) = (&ra.partners[0], &rb.partners[0]);
    assert_eq!((pa.name.as_str(), pa.node_id), ("node-b", 2));
    assert_eq!((pb.name.as_str(), pb.node_id), ("node-a", 1));
    assert_eq!(
        pa.sync_links,
        vec![
            link("127.0.0.1:7101=127.0.0.2:7101"),
            link("127.0.0.1:7102=127.0.0.2:7102")
        ]
    );
    assert_eq!(
        pb.sync_links,
        pa.sync_links
            .iter()
            .map(|l| l.reversed())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        pb.heartbeat_links,
        vec![link("127.0.0.2:7103=127.0.0.1:7103")]
    );
    assert_eq!(
        (ra.priority, rb.priority),
        (Priority::First, Priority::Second)
    );
    assert_eq!(ra.journal, rb.journal);
    assert_eq!(ra.failover, rb.failover);
    assert_eq!(
        rb.journal_location.as_deref(),
        Some(b.data_dir.join("images").as_path())
    );
    assert_eq!(ra.secret_file, a.data_dir.join("cluster.secret"));
    assert_eq!(rb.secret_file, b.data_dir.join("cluster.secret"));
    assert_eq!(secret_of(&ra), secret_of(&rb));
    // The same disk for hosts: size, block size, identity seed (serial, NAA, EUI-64).
    let b_dev = config(&b).device("d1").unwrap().clone();
    assert_eq!(b_dev.size, a_dev.size);
    assert_eq!(b_dev.block_size, a_dev.block_size);
    assert_eq!(
        b_dev.effective_identity_seed("node-b"),
        a_dev.effective_identity_seed("node-a")
    );
    assert_eq!(b_dev.file, Some(b.data_dir.join("images/d1.img")));
    assert_eq!(
        std::fs::metadata(b.data_dir.join("images/d1.img"))
            .unwrap()
            .len(),
        8 << 20
    );
    let bt = b.json(&["target", "list"]);
    assert!(
        bt.as_array()
            .unwrap()
            .iter()
            .any(|t| t["iqn"] == "iqn.2026-11.io.tandem:node-b-d1"),
        "{bt}"
    );
    refused(
        &a,
        &base(&[l1]),
        6,
        "`node-b` already holds a replica of `d1`",
    );

    // Status: unknown until the data plane reports (no data plane here).
    let l = a.json(&["replica", "list", "d1"]);
    let rows = l["replicas"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["node"], "node-a");
    assert_eq!(rows[0]["local"], true);
    assert_eq!(rows[1]["node"], "node-b");
    assert_eq!(rows[1]["state"], "unknown");
    assert_eq!(rows[1]["journal"], "disk-failure");
    assert_eq!(rows[1]["links"].as_array().unwrap().len(), 3);
    let table = a.ok(&["replica", "list", "d1"]);
    assert!(
        table.contains("node-b") && table.contains("unknown"),
        "{table}"
    );
    let watched = a.ok(&[
        "replica",
        "list",
        "d1",
        "--watch",
        "--interval",
        "0.1",
        "--count",
        "2",
    ]);
    assert_eq!(watched.matches("NODE").count(), 2, "{watched}");
    let watched = a.ok(&[
        "device",
        "show",
        "d1",
        "--watch",
        "--interval",
        "0.1",
        "--count",
        "2",
    ]);
    assert_eq!(watched.matches("identity seed").count(), 2, "{watched}");
    let show = a.json(&["device", "show", "d1"]);
    assert_eq!(
        show["replication"]["replicas"][1]["node"], "node-b",
        "{show}"
    );
    let shown = a.ok(&["device", "show", "d1"]);
    assert!(
        shown.contains("replication    node id 1, heartbeat failover"),
        "{shown}"
    );
    let metrics = a.ok(&["metrics"]);
    assert!(
        metrics.contains("tandem_replication_status_known{node=\"node-a\",device=\"d1\"} 0"),
        "{metrics}"
    );
    assert!(metrics.contains(
        "tandem_replica_state{node=\"node-a\",device=\"d1\",replica=\"node-b\",state=\"unknown\"} 1"
    ));
    let (status, _) = a.http("GET", "/api/v1/devices/d1/ha-status", Some(&t), None);
    assert_eq!(status, 503);
    refused(
        &a,
        &["server", "remove", "node-b"],
        6,
        "replica partner or witness of device `d1`",
    );

    // Three-way: the new partner needs links to the existing one too.
    let l3 = "--sync-link=127.0.0.1:7201=127.0.0.3:7201";
    refused(
        &a,
        &["replica", "add", "d1", "--partner", "node-c", l3],
        7,
        "sync links between `node-b` and `node-c` too",
    );
    refused(
        &a,
        &[
            "replica",
            "add",
            "d1",
            "--partner",
            "node-c",
            l3,
            "--peer-sync-link",
            "node-q:127.0.0.2:7301=127.0.0.3:7301",
        ],
        7,
        "`node-q` is not an existing partner",
    );
    refused(
        &a,
        &[
            "replica",
            "add",
            "d1",
            "--partner",
            "node-c",
            l3,
            "--peer-sync-link",
            "node-b:127.0.0.2:7301=127.0.0.3:7301",
            "--journal",
            "ram",
        ],
        6,
        "another `journal`",
    );
    a.ok(&[
        "replica",
        "add",
        "d1",
        "--partner",
        "node-c",
        l3,
        "--peer-sync-link",
        "node-b:127.0.0.2:7301=127.0.0.3:7301",
        "--partner-location",
        &images(&c),
    ]);
    let ra = replication(&a, "d1").unwrap();
    let rb = replication(&b, "d1").unwrap();
    let rc = replication(&c, "d1").unwrap();
    assert_eq!(rc.node_id, 3);
    let ids = |r: &ReplicationConfig| {
        r.partners
            .iter()
            .map(|p| (p.name.clone(), p.node_id))
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&ra), vec![("node-b".into(), 2), ("node-c".into(), 3)]);
    assert_eq!(ids(&rb), vec![("node-a".into(), 1), ("node-c".into(), 3)]);
    assert_eq!(ids(&rc), vec![("node-a".into(), 1), ("node-b".into(), 2)]);
    assert_eq!(
        rc.partners[0].sync_links,
        vec![link("127.0.0.3:7201=127.0.0.1:7201")]
    );
    assert_eq!(
        rc.partners[1].sync_links,
        vec![link("127.0.0.3:7301=127.0.0.2:7301")]
    );
    assert_eq!(
        rb.partners[1].sync_links,
        vec![link("127.0.0.2:7301=127.0.0.3:7301")]
    );
    assert_eq!(secret_of(&rc), secret_of(&ra));
    assert_eq!(secret_of(&rb), secret_of(&ra));
    assert_eq!(
        config(&c)
            .device("d1")
            .unwrap()
            .effective_identity_seed("node-c"),
        a_dev.effective_identity_seed("node-a")
    );
    let l = a.json(&["replica", "list", "d1"]);
    assert_eq!(l["replicas"].as_array().unwrap().len(), 3);
    refused(
        &a,
        &["replica", "add", "d1", "--partner", "node-b", l1],
        6,
        "already holds a replica",
    );

    // Remove the third: C's device goes, B forgets C.
    refused(
        &a,
        &["replica", "remove", "d1", "--partner", "node-z"],
        5,
        "`node-z` holds no replica of `d1`",
    );
    refused(
        &a,
        &["replica", "remove", "nope", "--partner", "node-c"],
        5,
        "no device named `nope`",
    );
    a.ok(&[
        "replica",
        "remove",
        "d1",
        "--partner",
        "node-c",
        "--delete-file",
    ]);
    assert!(config(&c).device("d1").is_none());
    assert!(!c.data_dir.join("images/d1.img").exists());
    assert_eq!(
        ids(&replication(&b, "d1").unwrap()),
        vec![("node-a".into(), 1)]
    );
    assert_eq!(
        ids(&replication(&a, "d1").unwrap()),
        vec![("node-b".into(), 2)]
    );

    // An unreachable partner: refused unless --force, which changes this node only.
    let b_dir: PathBuf = b.data_dir.clone();
    b.stop();
    refused(
        &a,
        &["replica", "remove", "d1", "--partner", "node-b"],
        1,
        "cannot reach server `node-b`",
    );
    assert!(replication(&a, "d1").is_some(), "nothing changed");
    // B comes back on another port: A's entry still points at the old one.
    let b = Control::try_start_at(
        &b_dir,
        "127.0.0.2:0",
        &["--no-dataplane", "--node-name", "node-b"],
    )
    .unwrap();
    let out = a.ok(&["replica", "remove", "d1", "--partner", "node-b", "--force"]);
    assert!(out.contains("here only"), "{out}");
    assert!(replication(&a, "d1").is_none(), "A is a plain device again");
    assert!(
        config(&b).device("d1").is_some(),
        "B was not reachable at its old address"
    );
    // B is cleaned by hand: its device goes, the image stays.
    b.ok(&["device", "remove", "d1"]);
    assert!(b.data_dir.join("images/d1.img").exists());
}

#[test]
fn replica_remove_cleans_both_sides() {
    let Cluster { _tmp, a, b, c: _c } = cluster();
    a.ok(&[
        "device",
        "create",
        "r1",
        "--ram",
        "--size",
        "4MiB",
        "--block-size",
        "4096",
    ]);
    a.ok(&[
        "replica",
        "add",
        "r1",
        "--partner",
        "node-b",
        "--sync-link",
        "127.0.0.1:7401=127.0.0.2:7401",
        "--init",
        "zeroed",
    ]);
    let d = config(&b).device("r1").unwrap().clone();
    assert_eq!(d.ram_size.map(|s| s.bytes()), Some(4 << 20));
    assert_eq!(d.block_size, 4096);
    assert!(replication(&b, "r1").is_some());
    // Both sections survive a restart of either node unchanged.
    let (before_a, before_b) = (config(&a), config(&b));
    let (a_dir, b_dir) = (a.data_dir.clone(), b.data_dir.clone());
    a.stop();
    b.stop();
    let a = Control::try_start_at(
        &a_dir,
        "127.0.0.1:0",
        &["--no-dataplane", "--node-name", "node-a"],
    )
    .unwrap();
    let b_port = {
        let s = &before_a
            .servers
            .iter()
            .find(|s| s.name == "node-b")
            .unwrap()
            .address;
        s.to_string()
    };
    let b = Control::try_start_at(
        &b_dir,
        &b_port,
        &["--no-dataplane", "--node-name", "node-b"],
    )
    .unwrap();
    assert_eq!(config(&a), before_a);
    assert_eq!(config(&b), before_b);
    let l = a.json(&["replica", "list", "r1"]);
    assert_eq!(l["replicas"][1]["node"], "node-b", "{l}");
    let out = a.ok(&["replica", "remove", "r1", "--partner", "node-b"]);
    assert!(out.contains("replica of r1 on node-b removed: "), "{out}");
    assert!(
        config(&b).device("r1").is_none(),
        "the partner's device is gone"
    );
    assert!(replication(&a, "r1").is_none());
    assert!(config(&a).device("r1").is_some(), "the local device stays");
    // The secret stays for the next replicated device; both nodes keep 0600.
    assert_eq!(mode(&a.data_dir.join("cluster.secret")), 0o600);
    assert_eq!(mode(&b.data_dir.join("cluster.secret")), 0o600);
    refused(
        &a,
        &["replica", "remove", "r1", "--partner", "node-b"],
        5,
        "is not replicated",
    );
    // A RAM device's replica cannot be given a location.
    refused(
        &a,
        &[
            "replica",
            "add",
            "r1",
            "--partner",
            "node-b",
            "--sync-link",
            "127.0.0.1:7401=127.0.0.2:7401",
            "--partner-location",
            "/tmp",
        ],
        7,
        "is a RAM disk",
    );
}

#[test]
fn new_routes_need_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let a = start(&tmp.path().join("a"), "127.0.0.1", "node-a");
    for (method, path) in [
        ("GET", "/api/v1/devices/d1/replicas"),
        ("POST", "/api/v1/devices/d1/replicas"),
        ("DELETE", "/api/v1/devices/d1/replicas/node-b"),
        ("GET", "/api/v1/devices/d1/replication"),
        ("PUT", "/api/v1/devices/d1/replication"),
        ("DELETE", "/api/v1/devices/d1/replication"),
        ("GET", "/api/v1/devices/d1/ha-status"),
    ] {
        let body = (method == "POST" || method == "PUT").then_some("{}");
        let (status, body) = a.http(method, path, None, body);
        assert_eq!(status, 401, "{method} {path}: {body}");
        let (status, _) = a.http(method, path, Some(&"0".repeat(64)), None);
        assert_eq!(status, 401, "{method} {path} with a wrong token");
    }
}

fn iscsi(tool: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(tool)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

/// With real data planes: the replica add is applied live on both nodes (the device is
/// re-opened here with its section), and both nodes' targets present the same disk to a host
/// (capacity, serial VPD 0x80, designators VPD 0x83).
#[test]
fn both_nodes_serve_the_same_disk_identity() {
    common::require_libiscsi();
    let bin = common::dataplane_bin();
    let tmp = tempfile::tempdir().unwrap();
    let node = |ip: &str, name: &str| {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(dir.join("images")).unwrap();
        let portal = format!("{ip}:{}", common::free_port());
        let c = Control::try_start_at(
            &dir,
            &format!("{ip}:0"),
            &[
                "--node-name",
                name,
                "--portal",
                &portal,
                "--dataplane-bin",
                bin.to_str().unwrap(),
            ],
        )
        .unwrap();
        wait_for("the data plane", || {
            c.json(&["status"])["dataplane"]["state"] == "running"
        });
        (c, portal)
    };
    let (a, pa) = node("127.0.0.1", "node-a");
    let (b, pb) = node("127.0.0.2", "node-b");
    a.ok(&[
        "server",
        "add",
        "node-b",
        &addr(&b),
        "--token-file",
        &token_file(&b),
    ]);
    a.ok(&[
        "device",
        "create",
        "d1",
        "--size",
        "8MiB",
        "--location",
        &images(&a),
        "--block-size",
        "4096",
    ]);
    let url_a = format!("iscsi://{pa}/iqn.2026-11.io.tandem:node-a-d1/0");
    let before = iscsi("iscsi-inq", &["-e", "1", "-c", "128", &url_a]);

    let added = a.json(&[
        "replica",
        "add",
        "d1",
        "--partner",
        "node-b",
        "--sync-link",
        "127.0.0.1:7501=127.0.0.2:7501",
        "--partner-location",
        &images(&b),
    ]);
    assert_eq!(added["dataplane"], "applied", "{added}");
    assert_eq!(added["partner_dataplane"], "applied", "{added}");
    for c in [&a, &b] {
        wait_for("d1 online", || {
            c.json(&["device", "show", "d1"])["state"] == "online"
        });
        // A replica serves (and a login's TEST UNIT READY passes) once the failover
        // authority has made it synchronized.
        wait_for("d1 synchronized on both nodes", || {
            let list = c.json(&["replica", "list", "d1"]);
            list["replicas"]
                .as_array()
                .is_some_and(|r| r.len() == 2 && r.iter().all(|x| x["state"] == "synchronized"))
        });
    }
    let url_b = format!("iscsi://{pb}/iqn.2026-11.io.tandem:node-b-d1/0");
    let cap = |u: &str| {
        iscsi("iscsi-readcapacity16", &[u])
            .lines()
            .find(|l| l.starts_with("Total size:"))
            .unwrap()
            .to_string()
    };
    assert_eq!(cap(&url_a), "Total size:8388608");
    assert_eq!(cap(&url_b), cap(&url_a));
    let serial_a = iscsi("iscsi-inq", &["-e", "1", "-c", "128", &url_a]);
    assert_eq!(serial_a, before, "re-opening keeps the identity");
    assert_eq!(
        iscsi("iscsi-inq", &["-e", "1", "-c", "128", &url_b]),
        serial_a
    );
    // Logical-unit designators (T10 vendor id, EUI-64, NAA) are identical; the target
    // designators name each node's own target (two nodes really answered).
    let designators = |u: &str, association: &str| {
        iscsi("iscsi-inq", &["-e", "1", "-c", "131", u])
            .split("DEVICE DESIGNATOR")
            .skip(1)
            .filter(|d| d.contains(association))
            .map(|d| d.split_once('\n').map_or("", |x| x.1).to_string())
            .collect::<Vec<_>>()
    };
    let lu_a = designators(&url_a, "LOGICAL_UNIT");
    let lu_b = designators(&url_b, "LOGICAL_UNIT");
    for kind in ["T10_VENDORT_ID", "EUI_64", "NAA"] {
        assert_eq!(
            lu_a.iter().filter(|d| d.contains(kind)).count(),
            1,
            "{kind} in {lu_a:?}"
        );
    }
    assert_eq!(lu_a, lu_b);
    let td_a = designators(&url_a, "TARGET_DEVICE");
    let td_b = designators(&url_b, "TARGET_DEVICE");
    assert!(td_a.concat().contains("node-a-d1") && td_b.concat().contains("node-b-d1"));

    let removed = a.json(&["replica", "remove", "d1", "--partner", "node-b"]);
    assert_eq!(removed["dataplane"], "applied", "{removed}");
    wait_for("d1 online after the remove", || {
        a.json(&["device", "show", "d1"])["state"] == "online"
    });
    assert_eq!(cap(&url_a), "Total size:8388608");
    let (status, _) = b.http("GET", "/api/v1/devices/d1", Some(&b.token()), None);
    assert_eq!(status, 404);
}
