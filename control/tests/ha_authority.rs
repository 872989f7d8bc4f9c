//! The failover authority and heartbeats between two real `tandem-control` processes
//! (no data plane), on 127.0.0.1 (node a, priority first) and 127.0.0.2 (node b):
//! - b learns the configuration from a's authority API; heartbeats flow on both links;
//! - the authority API: token, limits, bad input, 409 on a node that is not the authority;
//! - forged heartbeats (wrong secret) and replays are rejected and logged;
//! - a is killed: b takes the authority over after a lease plus margin of silence, with a
//!   higher epoch persisted, and keeps it across its own restart;
//! - a witness (`--role witness`) starts without a data plane, creates an authority on
//!   request and never reissues an epoch after a restart.

mod common;

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{free_port, CONTROL};
use tandem_control::ha::membership::Heartbeat;

const LEASE_MS: u64 = 600;
const MARGIN_MS: u64 = 200;

struct Proc {
    child: Child,
    api: String,
    data_dir: PathBuf,
    log: PathBuf,
}

impl Proc {
    fn start(data_dir: &Path, api: &str, extra: &[&str]) -> Proc {
        let log = data_dir.with_extension("log");
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut child = Command::new(CONTROL)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--api", api])
            .args([
                "--ha-lease-ms",
                &LEASE_MS.to_string(),
                "--ha-margin-ms",
                &MARGIN_MS.to_string(),
                "--heartbeat-interval-ms",
                "50",
                "--heartbeat-timeout-ms",
                "400",
            ])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .expect("run tandem-control");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("tandem-control: api ") {
                    let _ = tx.send(
                        rest.split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_string(),
                    );
                }
            }
        });
        let api = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!(
                    "tandem-control did not start:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        Proc {
            child,
            api,
            data_dir: data_dir.to_path_buf(),
            log,
        }
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("token"))
            .unwrap()
            .trim()
            .to_string()
    }

    fn http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, String) {
        common::http_call(&self.api, method, path, token, body)
    }

    fn get(&self, path: &str) -> serde_json::Value {
        let (code, body) = self.http("GET", path, Some(&self.token()), None);
        assert_eq!(code, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

const SECRET: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

#[allow(clippy::too_many_arguments)]
fn node_toml(
    name: &str,
    portal: &str,
    id: u8,
    priority: &str,
    secret: &Path,
    partner: &str,
    partner_id: u8,
    sync: &str,
    hb: &str,
    server: &str,
) -> String {
    format!(
        r#"[node]
name = "{name}"
portals = ["{portal}"]

[[device]]
name = "disk1"
ram_size = "1MiB"

[device.replication]
node_id = {id}
secret_file = "{secret}"
failover = "heartbeat"
priority = "{priority}"

[[device.replication.partner]]
name = "{partner}"
node_id = {partner_id}
sync_links = ["{sync}"]
heartbeat_links = ["{hb}"]

{server}
"#,
        secret = secret.display()
    )
}

struct Pair {
    _tmp: tempfile::TempDir,
    dir_b: PathBuf,
    api_b: String,
    /// b's end of the heartbeat link.
    hb_b: String,
    a: Proc,
    b: Proc,
}

/// Nodes a (127.0.0.1, priority first, the authority) and b (127.0.0.2), one sync link and
/// one heartbeat link, running until b has seen epoch 1 and heard a on both links.
fn pair() -> Pair {
    let tmp = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (tmp.path().join("a"), tmp.path().join("b"));
    for d in [&dir_a, &dir_b] {
        std::fs::create_dir_all(d).unwrap();
    }
    let secret = tmp.path().join("cluster.secret");
    std::fs::write(&secret, SECRET).unwrap();
    let (api_a, api_b) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.2:{}", free_port()),
    );
    let sync_a = format!("127.0.0.1:{}", free_port());
    let hb_a = format!("127.0.0.1:{}", free_port());
    let sync_b = format!("127.0.0.2:{}", free_port());
    let hb_b = format!("127.0.0.2:{}", free_port());
    let server_b = format!(
        "[[server]]\nname = \"b\"\naddress = \"{api_b}\"\ntoken_file = \"{}\"\n",
        dir_b.join("token").display()
    );
    let server_a = format!(
        "[[server]]\nname = \"a\"\naddress = \"{api_a}\"\ntoken_file = \"{}\"\n",
        dir_a.join("token").display()
    );
    std::fs::write(
        dir_a.join("node.toml"),
        node_toml(
            "a",
            "127.0.0.1:3260",
            1,
            "first",
            &secret,
            "b",
            2,
            &format!("{sync_a}={sync_b}"),
            &format!("{hb_a}={hb_b}"),
            &server_b,
        ),
    )
    .unwrap();
    std::fs::write(
        dir_b.join("node.toml"),
        node_toml(
            "b",
            "127.0.0.2:3260",
            2,
            "second",
            &secret,
            "a",
            1,
            &format!("{sync_b}={sync_a}"),
            &format!("{hb_b}={hb_a}"),
            &server_a,
        ),
    )
    .unwrap();
    // Created zeroed on both nodes: the authority may start with everyone synchronized.
    tandem_control::ha::mark_fresh(&dir_a, "disk1").unwrap();

    let a = Proc::start(&dir_a, &api_a, &["--no-dataplane"]);
    let b = Proc::start(&dir_b, &api_b, &["--no-dataplane"]);
    wait_for(
        "b to see epoch 1 and both links up",
        Duration::from_secs(20),
        || {
            let (code, body) = b.http("GET", "/api/v1/ha/status/disk1", Some(&b.token()), None);
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let up = v["partners"][0]["links_up"].as_array().map_or(0, Vec::len);
            (code == 200
                && v["config"]["epoch"] == 1
                && up == 2
                && v["authority"]["kind"] == "remote")
                .then_some(())
        },
    );
    Pair {
        _tmp: tmp,
        dir_b,
        api_b,
        hb_b,
        a,
        b,
    }
}

#[test]
fn second_node_takes_the_authority_over_when_the_first_is_gone() {
    let Pair {
        _tmp,
        dir_b,
        api_b,
        hb_b,
        mut a,
        b,
        ..
    } = pair();
    // a hosts the authority at epoch 1; b learns it through the API and hears a on both links.
    let st = a.get("/api/v1/ha/status");
    assert_eq!(st["role"], "node");
    wait_for(
        "b to see epoch 1 and both links up",
        Duration::from_secs(20),
        || {
            let (code, body) = b.http("GET", "/api/v1/ha/status/disk1", Some(&b.token()), None);
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let up = v["partners"][0]["links_up"].as_array().map_or(0, Vec::len);
            (code == 200
                && v["config"]["epoch"] == 1
                && up == 2
                && v["authority"]["kind"] == "remote")
                .then_some(())
        },
    );
    let v = b.get("/api/v1/ha/status/disk1");
    assert_eq!(v["authority"]["server"], "a");
    assert_eq!(v["heartbeats_rejected"], 0);
    let st = a.get("/api/v1/ha/status");
    assert_eq!(st["authorities"][0]["device"], "disk1");
    assert_eq!(st["authorities"][0]["last_epoch"], 1);

    // The authority API.
    let path = "/api/v1/ha/authority/disk1";
    let lease = r#"{"from": 2, "requests": ["lease_request"]}"#;
    assert_eq!(a.http("POST", path, None, Some(lease)).0, 401);
    assert_eq!(a.http("POST", path, Some("wrong"), Some(lease)).0, 401);
    let (code, body) = a.http("POST", path, Some(&a.token()), Some(lease));
    assert_eq!(code, 200, "{body}");
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reply["update"]["config"]["epoch"], 1);
    assert_eq!(reply["update"]["lease_duration_ns"], LEASE_MS * 1_000_000);
    for (bad, want) in [
        (r#"{"from": 9, "requests": []}"#.to_string(), 400),
        (r#"{"from": 3, "requests": []}"#.to_string(), 400), // not a member of disk1
        ("{not json".to_string(), 400),
        (
            r#"{"from": 2, "requests": [], "extra": 1}"#.to_string(),
            400,
        ),
        (
            format!(
                r#"{{"from": 2, "requests": [{}"lease_request"]}}"#,
                "\"lease_request\",".repeat(100)
            ),
            400,
        ),
        (
            format!(r#"{{"from": 2, "pad": "{}"}}"#, "x".repeat(100 << 10)),
            413,
        ),
    ] {
        let (code, body) = a.http("POST", path, Some(&a.token()), Some(&bad));
        assert_eq!(code, want, "{}: {body}", &bad[..bad.len().min(60)]);
    }
    assert_eq!(
        a.http(
            "POST",
            "/api/v1/ha/authority/no%20such",
            Some(&a.token()),
            Some(lease)
        )
        .0,
        400
    );
    // b is not the authority (yet).
    assert_eq!(b.http("POST", path, Some(&b.token()), Some(lease)).0, 409);

    // Forged heartbeats: wrong secret, and a replayed (old) counter with the right one.
    let forger = UdpSocket::bind("127.0.0.1:0").unwrap();
    let forged = Heartbeat {
        node_id: 1,
        device: "disk1".into(),
        counter: u64::MAX - 1,
        epoch: 99,
        hosts_authority: true,
        lost_authority: false,
        incarnation: 1,
        echo: None,
    };
    forger
        .send_to(&forged.encode(&[0x55; 32], hb_b.parse().unwrap()), &hb_b)
        .unwrap();
    let old = Heartbeat {
        counter: 1,
        ..forged.clone()
    };
    forger
        .send_to(
            &old.encode(&hex::decode(SECRET).unwrap(), hb_b.parse().unwrap()),
            &hb_b,
        )
        .unwrap();
    forger.send_to(b"garbage", &hb_b).unwrap();
    wait_for(
        "b to count 3 rejected heartbeats",
        Duration::from_secs(10),
        || (b.get("/api/v1/ha/status/disk1")["heartbeats_rejected"] == 3).then_some(()),
    );
    let log = b.log();
    assert!(
        log.contains("heartbeat rejected") && log.contains("bad MAC"),
        "{log}"
    );
    assert!(log.contains("replayed or old counter"), "{log}");
    // The forged epoch 99 was not believed.
    let v = b.get("/api/v1/ha/status/disk1");
    assert_eq!(v["partners"][0]["hosts_authority_epoch"], 1);

    // a dies. b runs no data plane, so it never held a lease: it must not take the
    // authority over, however long a is silent (it cannot prove a had not removed it;
    // `TakeoverInput::leased_when_last_heard`). Takeovers by nodes whose data plane served
    // are exercised with real data planes in tests/tests/ha_cluster.rs, ha_netns.rs and
    // ha_split_brain.rs, and by the vote simulation.
    a.kill();
    std::thread::sleep(Duration::from_millis(4 * (LEASE_MS + MARGIN_MS)));
    let state_b = dir_b.join("ha/disk1.authority.json");
    assert!(
        !state_b.exists(),
        "b took the authority over without ever holding a lease"
    );
    assert!(!b.log().contains("takes the failover authority over"));
    let v = b.get("/api/v1/ha/status/disk1");
    assert_eq!(v["took_over_from"], serde_json::Value::Null);
    // Its requests keep going to a's (gone) authority: no lease, nothing served.
    assert_eq!(v["authority"]["kind"], "remote", "{v}");
    let _ = (api_b, path, lease);
}

/// SIGSTOP of the authority node for longer than a lease plus margin. b, which runs no
/// data plane and so never held a lease, does not take over. When a wakes it grants
/// nothing at once (pause detected), then, once its partner has echoed a heartbeat sent after
/// the pause and a lease plus margin has passed, it grants leases again (still the
/// authority, never superseded).
#[test]
fn a_paused_authority_grants_nothing_until_quiet_and_its_partner_heard() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let Pair {
        _tmp, dir_b, a, b, ..
    } = pair();
    let pid = Pid::from_raw(a.child.id() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    std::thread::sleep(Duration::from_millis(3 * (LEASE_MS + MARGIN_MS)));
    kill(pid, Signal::SIGCONT).unwrap();
    assert!(
        !dir_b.join("ha/disk1.authority.json").exists(),
        "b took over without a lease"
    );
    // Right after waking, a lease request to a gets no lease.
    let lease = r#"{"from": 1, "requests": ["lease_request"]}"#;
    let ask = || {
        let (code, body) = a.http(
            "POST",
            "/api/v1/ha/authority/disk1",
            Some(&a.token()),
            Some(lease),
        );
        assert_eq!(code, 200, "{body}");
        let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
        reply["update"]["lease_duration_ns"].as_u64()
    };
    assert_eq!(ask(), None, "a paused authority granted a lease at once");
    let woke = Instant::now();
    let granted = wait_for("a to grant leases again", Duration::from_secs(10), ask);
    assert!(granted > 0);
    assert!(
        woke.elapsed() >= Duration::from_millis(LEASE_MS + MARGIN_MS - 100),
        "leases again after {:?}, before a lease plus margin",
        woke.elapsed()
    );
    let log = a.log();
    assert!(log.contains("the authority was paused"), "{log}");
    // It granted again because b echoed a heartbeat a sent after waking (docs/ha.md, "The
    // heartbeat echo"), not because some heartbeat of b arrived.
    assert!(
        log.contains("the partner echoed a heartbeat sent after this authority's restart or pause"),
        "{log}"
    );
    assert!(
        !log.lines()
            .any(|l| l.contains("ERROR") && l.contains("split brain")),
        "{log}"
    );
    let st = a.get("/api/v1/ha/status");
    assert_eq!(st["authorities"][0].get("superseded_by"), None, "{st}");
    drop(b);
}

#[test]
fn witness_starts_without_data_plane_and_never_reissues_an_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("w");
    let api = format!("127.0.0.1:{}", free_port());
    // No --no-dataplane: the witness role never starts one.
    let w = Proc::start(
        &dir,
        &api,
        &["--role", "witness", "--dataplane-bin", "/nonexistent"],
    );
    let st = w.get("/api/v1/ha/status");
    assert_eq!(st["role"], "witness");
    let (code, _) = w.http("GET", "/api/v1/status", Some(&w.token()), None);
    assert_eq!(code, 200);
    assert_eq!(w.get("/api/v1/status")["dataplane"]["state"], "disabled");
    let path = "/api/v1/ha/authority/vol7";
    // Creation needs the device's nodes, the sender among them.
    let (code, _) = w.http(
        "POST",
        path,
        Some(&w.token()),
        Some(r#"{"from": 1, "requests": []}"#),
    );
    assert_eq!(code, 400);
    let join = |from: u8| {
        format!(
            r#"{{"from": {from}, "nodes": [1, 2], "requests": [{{"join": {{"meta": {{"current": 0, "bitmap_base": [], "history": [], "epoch": 0, "was_sequencer": false, "version": 0}}}}}}]}}"#
        )
    };
    // Not fresh: the witness waits for both nodes' metadata before any configuration.
    let (code, body) = w.http("POST", path, Some(&w.token()), Some(&join(1)));
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["update"],
        serde_json::Value::Null
    );
    let (code, body) = w.http("POST", path, Some(&w.token()), Some(&join(2)));
    assert_eq!(code, 200, "{body}");
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    let epoch = reply["update"]["config"]["epoch"].as_u64().unwrap();
    assert!(epoch >= 1);
    drop(w);
    let w = Proc::start(&dir, &api, &["--role", "witness"]);
    let st = w.get("/api/v1/ha/status");
    assert_eq!(st["authorities"][0]["device"], "vol7");
    assert_eq!(st["authorities"][0]["last_epoch"], epoch);
    // The sequencer reports the other node synchronized: a new epoch, never the same again.
    let cfg = &reply["update"]["config"];
    let seq = cfg["sequencer"].as_u64().unwrap();
    let other = 3 - seq;
    let done = format!(
        r#"{{"from": {seq}, "requests": [{{"synchronized": {{"node": {other}, "epoch": {epoch}}}}}]}}"#
    );
    // Right after the restart the witness changes nothing (it may have granted leases
    // before); the engine repeats its request until it gets an answer.
    let (code, body) = w.http("POST", path, Some(&w.token()), Some(&done));
    assert_eq!(code, 200, "{body}");
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reply["update"]["config"]["epoch"], epoch, "{body}");
    wait_for("the witness to act again", Duration::from_secs(10), || {
        let (code, body) = w.http("POST", path, Some(&w.token()), Some(&done));
        assert_eq!(code, 200, "{body}");
        let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
        (reply["update"]["config"]["epoch"] == epoch + 1).then_some(())
    });
    let stored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("ha/vol7.authority.json")).unwrap())
            .unwrap();
    assert_eq!(stored["last_epoch"], epoch + 1);
}

/// Node majority with a witness, through the drivers: two data nodes (no data plane) find
/// the witness by its [[server]] entry and token file; the witness creates the device's
/// authority on first contact; both nodes learn epoch 1 from it. With the witness gone,
/// neither data node takes the authority over (only the heartbeat strategy moves it).
#[test]
fn data_nodes_use_the_witness_as_authority_and_never_take_it_over() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir_a, dir_b, dir_w) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("w"),
    );
    for d in [&dir_a, &dir_b, &dir_w] {
        std::fs::create_dir_all(d).unwrap();
    }
    let secret = tmp.path().join("cluster.secret");
    std::fs::write(&secret, SECRET).unwrap();
    let api_w = format!("127.0.0.3:{}", free_port());
    let mut w = Proc::start(&dir_w, &api_w, &["--role", "witness"]);
    let (sync_a, sync_b) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.2:{}", free_port()),
    );
    let toml = |name: &str, portal: &str, id: u8, partner: &str, pid: u8, link: String| {
        format!(
            "[node]\nname = \"{name}\"\nportals = [\"{portal}\"]\n\n\
             [[device]]\nname = \"disk1\"\nram_size = \"1MiB\"\n\n\
             [device.replication]\nnode_id = {id}\nsecret_file = \"{}\"\n\
             failover = \"node-majority\"\nwitness = \"w\"\n\n\
             [[device.replication.partner]]\nname = \"{partner}\"\nnode_id = {pid}\n\
             sync_links = [\"{link}\"]\n\n\
             [[server]]\nname = \"w\"\naddress = \"{api_w}\"\ntoken_file = \"{}\"\n",
            secret.display(),
            dir_w.join("token").display()
        )
    };
    std::fs::write(
        dir_a.join("node.toml"),
        toml(
            "a",
            "127.0.0.1:3260",
            1,
            "b",
            2,
            format!("{sync_a}={sync_b}"),
        ),
    )
    .unwrap();
    std::fs::write(
        dir_b.join("node.toml"),
        toml(
            "b",
            "127.0.0.2:3260",
            2,
            "a",
            1,
            format!("{sync_b}={sync_a}"),
        ),
    )
    .unwrap();
    for d in [&dir_a, &dir_b] {
        tandem_control::ha::mark_fresh(d, "disk1").unwrap();
    }
    let a = Proc::start(
        &dir_a,
        &format!("127.0.0.1:{}", free_port()),
        &["--no-dataplane"],
    );
    let b = Proc::start(
        &dir_b,
        &format!("127.0.0.2:{}", free_port()),
        &["--no-dataplane"],
    );
    for n in [&a, &b] {
        wait_for("epoch 1 from the witness", Duration::from_secs(20), || {
            let (code, body) = n.http("GET", "/api/v1/ha/status/disk1", Some(&n.token()), None);
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            (code == 200 && v["config"]["epoch"] == 1 && v["authority"]["server"] == "w")
                .then_some(())
        });
    }
    let st = w.get("/api/v1/ha/status");
    assert_eq!(st["authorities"][0]["device"], "disk1");
    assert_eq!(st["authorities"][0]["nodes"], serde_json::json!([1, 2]));
    assert_eq!(st["authorities"][0]["last_epoch"], 1);
    // The data nodes hear each other on the sync link.
    wait_for("a to hear b", Duration::from_secs(10), || {
        let v = a.get("/api/v1/ha/status/disk1");
        (v["partners"][0]["links_up"].as_array().map_or(0, Vec::len) == 1).then_some(())
    });

    w.kill();
    std::thread::sleep(Duration::from_millis(LEASE_MS + MARGIN_MS + 1000));
    for (n, dir) in [(&a, &dir_a), (&b, &dir_b)] {
        let v = n.get("/api/v1/ha/status/disk1");
        assert!(
            v["last_error"]
                .as_str()
                .unwrap_or_default()
                .contains("authority"),
            "{v}"
        );
        assert_eq!(v["authority"]["server"], "w");
        assert!(!dir.join("ha/disk1.authority.json").exists());
    }
}
