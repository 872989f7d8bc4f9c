//! The management API and CLI without a data plane (`--no-dataplane`): token, auth,
//! precise 4xx errors, persistence across restarts, a kill in the middle of a save, exit codes.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;
use tandem_config::NodeConfig;

fn start(dir: &std::path::Path) -> Control {
    Control::start(
        &dir.join("data"),
        &[
            // The tests keep images beside the data dir (issue 13: images are confined).
            "--image-dir",
            dir.to_str().unwrap(),
            "--no-dataplane",
            "--node-name",
            "n1",
            "--portal",
            "127.0.0.1:3260",
        ],
    )
}

#[test]
fn token_is_generated_0600_and_every_call_needs_it() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path());
    let token_path = c.data_dir.join("token");
    assert_eq!(
        std::fs::metadata(&token_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let token = c.token();
    assert_eq!(token.len(), 64);

    for path in [
        "/api/v1/status",
        "/api/v1/devices",
        "/api/v1/targets",
        "/api/v1/stats",
        "/metrics",
        "/api/v1/nope",
        "/",
    ] {
        let (status, body) = c.http("GET", path, None, None);
        assert_eq!(status, 401, "{path} without token: {body}");
        assert!(body.contains("Authorization: Bearer"), "{body}");
        let (status, body) = c.http("GET", path, Some("0".repeat(64).as_str()), None);
        assert_eq!(status, 401, "{path} with a wrong token: {body}");
        assert!(body.contains("wrong token"), "{body}");
        let (status, _) = c.http("GET", path, Some(&token[..63]), None);
        assert_eq!(status, 401, "{path} with a truncated token");
    }
    let (status, _) = c.http(
        "POST",
        "/api/v1/devices",
        None,
        Some(r#"{"name":"x","ram":true,"size":"1MiB"}"#),
    );
    assert_eq!(status, 401);
    let (status, body) = c.http("GET", "/api/v1/status", Some(&token), None);
    assert_eq!(status, 200, "{body}");
    let (status, body) = c.http("GET", "/metrics", Some(&token), None);
    assert_eq!(status, 200);
    assert!(
        body.contains("tandem_dataplane_up{node=\"n1\"} 0"),
        "{body}"
    );
    let (status, _) = c.http("GET", "/api/v1/nope", Some(&token), None);
    assert_eq!(status, 404);

    // The token survives a restart.
    c.stop();
    let c = start(dir.path());
    assert_eq!(c.token(), token);
    // The CLI with a wrong token exits 4 and says where the token is.
    std::fs::write(dir.path().join("bad"), "nope").unwrap();
    let out = std::process::Command::new(CLI)
        .args(["--api", &c.api, "--token-file"])
        .arg(dir.path().join("bad"))
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(stderr(&out).contains("token"), "{}", stderr(&out));
}

#[test]
fn bad_requests_get_precise_4xx() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path());
    let t = c.token();
    let post = |path: &str, body: &str| c.http("POST", path, Some(&t), Some(body));
    let root = dir.path().display().to_string();
    let cases: Vec<(u16, (u16, String), &str)> = vec![
        (
            400,
            post(
                "/api/v1/devices",
                r#"{"name":"d","ram":true,"sise":"1MiB"}"#,
            ),
            "unknown field `sise`",
        ),
        (
            400,
            post(
                "/api/v1/devices",
                r#"{"name":"d","ram":true,"size":"10GB"}"#,
            ),
            "at `size`: decimal unit `GB` is ambiguous",
        ),
        (
            400,
            post("/api/v1/devices", "not json"),
            "invalid JSON body",
        ),
        (400, post("/api/v1/devices", ""), "needs a JSON body"),
        (
            400,
            post("/api/v1/devices", r#"{"name":"d","ram":true}"#),
            "a RAM disk needs `size`",
        ),
        (
            422,
            post(
                "/api/v1/devices",
                r#"{"name":"d","ram":true,"size":"1MiB","block_size":1000}"#,
            ),
            "device[0].block_size: 1000 is not supported",
        ),
        (
            422,
            post(
                "/api/v1/devices",
                r#"{"name":"bad name","ram":true,"size":"1MiB"}"#,
            ),
            "not a valid device name",
        ),
        (
            422,
            post("/api/v1/devices", r#"{"name":"d","ram":true,"size":1000}"#),
            "not a multiple of the block size 512",
        ),
        (
            400,
            post(
                "/api/v1/devices",
                &format!(r#"{{"name":"d","file":"{root}/x.img"}}"#),
            ),
            "/x.img: No such file",
        ),
        (
            400,
            post(
                "/api/v1/devices",
                &format!(r#"{{"name":"d","size":"1MiB","location":"{root}/nonexistent"}}"#),
            ),
            "nonexistent is not usable",
        ),
        // Issue 13 (Medium 7): images are confined; `..` is never stored.
        (
            400,
            post(
                "/api/v1/devices",
                r#"{"name":"d","size":"1MiB","file":"/etc/x.img"}"#,
            ),
            "outside the image directories",
        ),
        (
            400,
            post(
                "/api/v1/devices",
                &format!(r#"{{"name":"d","size":"1MiB","file":"{root}/../../etc/x.img"}}"#),
            ),
            "contains `.` or `..`",
        ),
        (
            400,
            post(
                "/api/v1/devices",
                &format!(r#"{{"name":"d","size":"1MiB","location":"{root}/../../etc"}}"#),
            ),
            "contains `.` or `..`",
        ),
        // Issue 13 (High 2, Medium 8): absurd and over-memory RAM disks are refused.
        (
            422,
            post(
                "/api/v1/devices",
                r#"{"name":"r1","ram":true,"size":"4096TiB"}"#,
            ),
            "more than the largest supported",
        ),
        (
            400,
            post(
                "/api/v1/devices",
                r#"{"name":"r1","ram":true,"size":"200TiB"}"#,
            ),
            "over the limit",
        ),
        (
            404,
            post("/api/v1/devices/zz/extend", r#"{"size":"2MiB"}"#),
            "no device named `zz`",
        ),
        (
            404,
            c.http("DELETE", "/api/v1/devices/zz", Some(&t), None),
            "no device named `zz`",
        ),
        (
            400,
            c.http("DELETE", "/api/v1/devices/zz?forse=1", Some(&t), None),
            "unknown query parameter `forse`",
        ),
        (
            404,
            c.http("GET", "/api/v1/jobs/99", Some(&t), None),
            "no job 99",
        ),
        (
            404,
            c.http("GET", "/api/v1/targets/iqn.2000-01.x:y", Some(&t), None),
            "no target with IQN",
        ),
        (
            422,
            post("/api/v1/targets", r#"{"alias":"t","luns":["ghost"]}"#),
            "target[0].luns[0]: no device named `ghost`",
        ),
        (
            400,
            post("/api/v1/servers", r#"{"name":"n2","address":"somewhere"}"#),
            "at `address`",
        ),
        (
            422,
            post(
                "/api/v1/servers",
                r#"{"name":"n1","address":"127.0.0.2:3261"}"#,
            ),
            "server[0].name: is this node's own name",
        ),
        (
            503,
            c.http("GET", "/api/v1/stats", Some(&t), None),
            "without a data plane",
        ),
    ];
    for (want, (got, body), needle) in &cases {
        assert_eq!(got, want, "body: {body}");
        let v: serde_json::Value =
            serde_json::from_str(body).unwrap_or_else(|_| panic!("error body is JSON: {body}"));
        let msg = v["error"].as_str().unwrap();
        assert!(msg.contains(needle), "expected `{needle}` in `{msg}`");
        assert!(v["code"].is_string());
    }

    // Conflicts and rules that depend on state.
    assert_eq!(
        post(
            "/api/v1/devices",
            r#"{"name":"d","ram":true,"size":"1MiB"}"#
        )
        .0,
        201
    );
    let (s, body) = post(
        "/api/v1/devices",
        r#"{"name":"d","ram":true,"size":"1MiB"}"#,
    );
    assert_eq!(s, 409, "{body}");
    assert!(body.contains("already exists"), "{body}");
    let (s, body) = post("/api/v1/devices/d/extend", r#"{"size":"512KiB"}"#);
    assert_eq!(s, 400);
    assert!(
        body.contains("must be larger than the current 1MiB"),
        "{body}"
    );
    let iqn = "iqn.2026-11.io.tandem:n1-d";
    let (s, body) = c.http(
        "PUT",
        &format!("/api/v1/targets/{iqn}/chap"),
        Some(&t),
        Some(r#"{"username":"u","secret":"short"}"#),
    );
    assert_eq!(s, 422);
    assert!(body.contains("target[0].chap.secret: is 5 bytes"), "{body}");
    let (s, body) = post(
        &format!("/api/v1/targets/{iqn}/acl"),
        r#"{"initiator":"host1"}"#,
    );
    assert_eq!(s, 422);
    assert!(
        body.contains("allowed_initiators[0]: `host1` is not an iSCSI name"),
        "{body}"
    );
    let (s, body) = c.http(
        "PUT",
        "/api/v1/devices/d/cache",
        Some(&t),
        Some(r#"{"cache":"lots"}"#),
    );
    assert_eq!(s, 400);
    assert!(
        body.contains("at `cache`: unknown variant `lots`"),
        "{body}"
    );
    // None of the refused changes reached the file.
    let saved = NodeConfig::load(c.data_dir.join("node.toml")).unwrap();
    assert_eq!(saved.devices.len(), 1);
    assert!(saved.targets[0].chap.is_none() && saved.targets[0].allowed_initiators.is_empty());
}

#[test]
fn cli_round_trip_persists_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let c = start(dir.path());
    let out = c.ok(&[
        "device",
        "create",
        "disk1",
        "--size",
        "8MiB",
        "--location",
        images.to_str().unwrap(),
        "--cache",
        "write-back",
        "--cache-size",
        "1MiB",
    ]);
    assert!(out.contains("device disk1 created"), "{out}");
    let img = images.join("disk1.img");
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 8 << 20);
    c.ok(&[
        "device",
        "create",
        "r0",
        "--ram",
        "--size",
        "4MiB",
        "--block-size",
        "4096",
        "--target-alias",
        "fast",
    ]);
    let existing = dir.path().join("existing.img");
    std::fs::write(&existing, vec![0u8; 1 << 20]).unwrap();
    c.ok(&[
        "device",
        "attach",
        "old",
        "--file",
        existing.to_str().unwrap(),
        "--read-only",
    ]);
    c.ok(&["device", "extend", "disk1", "--size", "16MiB"]);
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 16 << 20);
    c.ok(&["server", "add", "n2", "127.0.0.2:3261"]);
    c.ok(&[
        "chap",
        "set",
        "iqn.2026-11.io.tandem:n1-fast",
        "--username",
        "u",
        "--secret",
        "0123456789abcd",
    ]);
    c.ok(&[
        "acl",
        "add",
        "iqn.2026-11.io.tandem:n1-fast",
        "iqn.1994-05.com.redhat:h1",
    ]);
    c.ok(&["target", "create", "both", "--lun", "disk1", "--lun", "old"]);

    let devices = c.json(&["device", "list"]);
    let names: Vec<&str> = devices
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["disk1", "r0", "old"]);
    assert_eq!(devices[0]["size_bytes"], 16 << 20);
    assert_eq!(devices[0]["cache"], "write-back");
    assert_eq!(devices[1]["targets"][0], "iqn.2026-11.io.tandem:n1-fast");
    assert_eq!(devices[2]["read_only"], true);
    assert_eq!(devices[2]["size_bytes"], 1 << 20);
    let targets = c.json(&["target", "list"]);
    assert_eq!(targets.as_array().unwrap().len(), 4);
    assert!(
        !c.ok(&["--json", "target", "list"])
            .contains("0123456789abcd"),
        "secrets never leave the node"
    );
    let human = c.ok(&["device", "list"]);
    assert!(
        human.starts_with("NAME ") && human.contains("disk1") && human.contains("16.0MiB"),
        "{human}"
    );

    let before = NodeConfig::load(c.data_dir.join("node.toml")).unwrap();
    c.stop();
    let c = start(dir.path());
    assert_eq!(
        NodeConfig::load(c.data_dir.join("node.toml")).unwrap(),
        before
    );
    assert_eq!(c.json(&["device", "list"]), devices);
    assert_eq!(c.json(&["server", "list"])[0]["name"], "n2");

    // Removing: the device's own target goes, the shared target keeps its other LUN.
    c.ok(&["device", "remove", "disk1", "--delete-file"]);
    assert!(!img.exists());
    let both = c.json(&["target", "show", "iqn.2026-11.io.tandem:n1-both"]);
    assert_eq!(
        both["luns"],
        serde_json::json!([{ "lun": 0, "device": "old" }])
    );
    assert!(
        existing.exists(),
        "attached images are kept unless --delete-file"
    );
}

#[test]
fn image_creation_is_a_job_with_progress() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path());
    let accepted = c.json(&[
        "device",
        "create",
        "big",
        "--size",
        "1GiB",
        "--location",
        dir.path().to_str().unwrap(),
        "--no-wait",
    ]);
    let id = accepted["job"]["id"].as_u64().unwrap();
    assert_eq!(accepted["job"]["total_bytes"], 1u64 << 30);
    let t = c.token();
    let mut job = serde_json::Value::Null;
    for _ in 0..600 {
        let (status, body) = c.http("GET", &format!("/api/v1/jobs/{id}"), Some(&t), None);
        assert_eq!(status, 200);
        job = serde_json::from_str(&body).unwrap();
        if job["state"] != "running" {
            break;
        }
        // While the image is built the name is taken and the device shows as creating.
        let (status, _) = c.http(
            "POST",
            "/api/v1/devices",
            Some(&t),
            Some(r#"{"name":"big","ram":true,"size":"1MiB"}"#),
        );
        assert!(status == 409, "{status}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["done_bytes"], 1u64 << 30);
    let img = dir.path().join("big.img");
    let meta = std::fs::metadata(&img).unwrap();
    assert_eq!(meta.len(), 1 << 30);
    assert!(
        std::os::unix::fs::MetadataExt::blocks(&meta) * 512 >= 1 << 30,
        "thick"
    );
    assert_eq!(c.json(&["device", "show", "big"])["size_bytes"], 1u64 << 30);
    // Creating over an existing file is refused with what to do instead.
    let out = c.cli(&[
        "device",
        "create",
        "big2",
        "--size",
        "1MiB",
        "--file",
        img.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 6);
    assert!(
        stderr(&out).contains("tandem device attach big2"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn cli_exit_codes_and_completions() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path());
    let out = c.cli(&["device", "show", "nope"]);
    assert_eq!(code(&out), 5);
    assert!(
        stderr(&out).contains("tandem device list"),
        "errors say what to do next"
    );
    c.ok(&["device", "create", "d", "--ram", "--size", "1MiB"]);
    assert_eq!(
        code(&c.cli(&["device", "create", "d", "--ram", "--size", "1MiB"])),
        6
    );
    assert_eq!(
        code(&c.cli(&["device", "create", "e", "--ram", "--size", "1000"])),
        7
    );
    assert_eq!(
        code(&c.cli(&["device", "create", "e", "--ram", "--size", "lots"])),
        2
    );
    assert_eq!(code(&c.cli(&["stats"])), 8);
    let out = c.cli(&[
        "device",
        "create",
        "f",
        "--size",
        "1MiB",
        "--location",
        "relative/dir",
    ]);
    assert_eq!(code(&out), 7, "{}", stderr(&out));
    let out = std::process::Command::new(CLI)
        .args([
            "--api",
            &format!("http://127.0.0.1:{}", free_port()),
            "--token-file",
        ])
        .arg(c.data_dir.join("token"))
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(code(&out), 3);
    assert!(
        stderr(&out).contains("is tandem-control running?"),
        "{}",
        stderr(&out)
    );
    for shell in ["bash", "zsh", "fish"] {
        let out = std::process::Command::new(CLI)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("device"),
            "{shell}"
        );
    }
    let status = c.json(&["status"]);
    assert_eq!(status["node"], "n1");
    assert_eq!(status["dataplane"]["state"], "disabled");
    assert_eq!(status["portals"][0], "127.0.0.1:3260");
}

#[test]
fn invalid_config_on_disk_is_refused_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let text = "[node]\nname = \"n1\"\nportals = [\"127.0.0.1:3260\"]\n[[device]]\nname = \"d\"\nram_size = \"1MiB\"\nblock_size = 1000\n";
    std::fs::write(data.join("node.toml"), text).unwrap();
    let err = Control::try_start(&data, &["--no-dataplane"])
        .err()
        .expect("must not start");
    assert!(
        err.contains("node.toml") && err.contains("device[0].block_size"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(data.join("node.toml")).unwrap(),
        text
    );
}

/// Kills tandem-control with SIGKILL at random moments while it saves changes as fast as it
/// can. After every kill node.toml must load and hold exactly the acknowledged changes, plus
/// at most the one in flight (old or new, never a mix), and a restart removes the temp file.
#[test]
fn kill_mid_save_leaves_old_or_new_config() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A big config makes each save take longer, so kills land inside saves.
    {
        let c = start(dir.path());
        let t = c.token();
        for i in 0..300 {
            let body = format!(r#"{{"name":"d{i}","ram":true,"size":"1MiB","no_target":true}}"#);
            assert_eq!(
                c.http("POST", "/api/v1/devices", Some(&t), Some(&body)).0,
                201
            );
        }
        c.stop();
    }
    let rounds = 12u64;
    let mut temp_seen = 0;
    for round in 0..rounds {
        let c = start(dir.path());
        let leftovers = std::fs::read_dir(&data)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains(".tmp.")
            })
            .count();
        assert_eq!(leftovers, 0, "restart removes temp files");
        let (token, api) = (c.token(), c.api.clone());
        // Each request adds server r<round>-<i>; the writer counts acknowledged ones.
        let writer = std::thread::spawn(move || {
            let mut acked = 0u64;
            loop {
                let body = format!(r#"{{"name":"r{round}-{acked}","address":"127.0.0.2:3261"}}"#);
                let resp = ureq::post(&format!("{api}/api/v1/servers"))
                    .set("Authorization", &format!("Bearer {token}"))
                    .send_string(&body);
                match resp {
                    Ok(r) if r.status() == 201 => acked += 1,
                    _ => return acked,
                }
            }
        });
        std::thread::sleep(Duration::from_millis(100 + (round * 37) % 200));
        // Wait (briefly) for a save in progress, then kill.
        for _ in 0..5000 {
            let busy = std::fs::read_dir(&data).unwrap().any(|e| {
                e.unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".node.toml.tmp.")
            });
            if busy {
                temp_seen += 1;
                break;
            }
        }
        c.kill();
        let acked = writer.join().unwrap();
        let after = NodeConfig::load(data.join("node.toml")).expect("config valid after SIGKILL");
        assert_eq!(after.devices.len(), 300);
        let prefix = format!("r{round}-");
        let names: Vec<&str> = after
            .servers
            .iter()
            .filter(|s| s.name.starts_with(&prefix))
            .map(|s| s.name.as_str())
            .collect();
        let k = names.len() as u64;
        assert!(
            k == acked || k == acked + 1,
            "round {round}: {acked} acknowledged, {k} saved"
        );
        for (i, n) in names.iter().enumerate() {
            assert_eq!(*n, format!("r{round}-{i}"));
        }
        assert!(
            acked > 0,
            "round {round}: no change went through before the kill"
        );
    }
    eprintln!("a save was in flight at {temp_seen} of {rounds} kills");
    assert!(temp_seen > 0, "no kill landed while a temp file existed");
    let c = start(dir.path());
    assert_eq!(c.json(&["device", "list"]).as_array().unwrap().len(), 300);
}
