//! End to end through the CLI with the real data plane and libiscsi's tools: create a device
//! and log in to it, extend it while a session is open, remove a device that has a session,
//! CHAP/ACL changes live, restart the control service, survive a data plane crash.
//!
//! Needs `tandem-dataplane` (built next to our binaries, or in `TANDEM_BIN_DIR`) and
//! libiscsi-bin; without them these tests fail with a message saying so.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

struct Node {
    control: Control,
    portal: String,
    dir: tempfile::TempDir,
}

fn start_node(dir: tempfile::TempDir, portal: &str) -> Node {
    require_libiscsi();
    let bin = dataplane_bin();
    let control = Control::start(
        &dir.path().join("data"),
        &[
            // The tests keep images beside the data dir (issue 13: images are confined).
            "--image-dir",
            dir.path().to_str().unwrap(),
            "--node-name",
            "n1",
            "--portal",
            portal,
            "--dataplane-bin",
            bin.to_str().unwrap(),
        ],
    );
    wait_for("the data plane to run", Duration::from_secs(30), || {
        control.json(&["status"])["dataplane"]["state"] == "running"
    });
    Node {
        control,
        portal: portal.to_string(),
        dir,
    }
}

fn new_node() -> Node {
    start_node(
        tempfile::tempdir().unwrap(),
        &format!("127.0.0.1:{}", free_port()),
    )
}

impl Node {
    fn url(&self, alias: &str) -> String {
        format!("iscsi://{}/iqn.2026-11.io.tandem:n1-{alias}/0", self.portal)
    }

    fn tool(&self, tool: &str, args: &[&str]) -> (bool, String) {
        let out = Command::new(tool).args(args).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("$ {tool} {}\n{text}", args.join(" "));
        (out.status.success(), text)
    }

    /// Capacity in bytes as iscsi-readcapacity16 reports it.
    fn capacity(&self, alias: &str) -> u64 {
        let (ok, text) = self.tool("iscsi-readcapacity16", &[&self.url(alias)]);
        assert!(ok, "{text}");
        text.lines()
            .find_map(|l| l.strip_prefix("Total size:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no size in {text}"))
    }

    /// iscsi-perf holds a session open and keeps reading until killed.
    fn open_session(&self, alias: &str) -> Child {
        let child = Command::new("iscsi-perf")
            .args(["-m", "4", "-x", "0", &self.url(alias)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let c = &self.control;
        wait_for("a session on the device", Duration::from_secs(15), || {
            c.json(&["device", "show", alias])["sessions"]
                .as_u64()
                .unwrap_or(0)
                > 0
        });
        child
    }
}

#[test]
fn create_login_extend_while_connected_and_remove_with_a_session() {
    let node = new_node();
    let c = &node.control;
    let images = node.dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let out = c.ok(&[
        "device",
        "create",
        "disk1",
        "--size",
        "64MiB",
        "--location",
        images.to_str().unwrap(),
    ]);
    assert!(out.contains("state          online"), "{out}");
    let (ok, inq) = node.tool("iscsi-inq", &[&node.url("disk1")]);
    assert!(ok && inq.contains("TANDEM"), "{inq}");
    assert_eq!(node.capacity("disk1"), 64 << 20);

    let mut session = node.open_session("disk1");
    c.ok(&["device", "extend", "disk1", "--size", "128MiB"]);
    assert_eq!(
        node.capacity("disk1"),
        128 << 20,
        "a new login sees the new capacity"
    );
    assert_eq!(
        c.json(&["device", "show", "disk1"])["size_bytes"],
        128u64 << 20
    );
    assert!(
        session.try_wait().unwrap().is_none(),
        "the open session survived the extend"
    );
    let stats = c.json(&["stats", "disk1"]);
    assert!(
        stats["devices"][0]["read_ops"].as_u64().unwrap() > 0,
        "{stats}"
    );
    let metrics = c.ok(&["metrics"]);
    assert!(
        metrics.contains("tandem_device_read_ops_total{node=\"n1\",device=\"disk1\"}"),
        "{metrics}"
    );
    let watch = c.ok(&[
        "stats",
        "disk1",
        "--watch",
        "--interval",
        "0.5",
        "--count",
        "1",
    ]);
    assert!(
        watch.contains("R IOPS") && watch.contains("disk1"),
        "{watch}"
    );

    // Other devices are not disturbed by changes.
    c.ok(&["device", "create", "r0", "--ram", "--size", "8MiB"]);
    assert_eq!(node.capacity("r0"), 8 << 20);
    assert!(session.try_wait().unwrap().is_none());

    // Removing a device with a session: refused, then forced.
    let out = c.cli(&["device", "remove", "disk1"]);
    assert_eq!(code(&out), 6, "{}", stderr(&out));
    assert!(stderr(&out).contains("open session"), "{}", stderr(&out));
    c.ok(&["device", "remove", "disk1", "--force"]);
    let (ok, _) = node.tool("iscsi-inq", &[&node.url("disk1")]);
    assert!(!ok, "the target is gone");
    let deadline = Instant::now() + Duration::from_secs(20);
    while session.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = session.kill();
    let _ = session.wait();
    let status = c.json(&["status"]);
    assert_eq!(status["dataplane"]["state"], "running");
    assert_eq!(status["dataplane"]["restarts"], 0, "no crash");
    assert_eq!(
        node.capacity("r0"),
        8 << 20,
        "the other device is still served"
    );
    assert!(
        images.join("disk1.img").exists(),
        "the image is kept without --delete-file"
    );
}

#[test]
fn chap_and_acl_apply_live() {
    let node = new_node();
    let c = &node.control;
    c.ok(&["device", "create", "r0", "--ram", "--size", "8MiB"]);
    let iqn = "iqn.2026-11.io.tandem:n1-r0";
    c.ok(&[
        "chap",
        "set",
        iqn,
        "--username",
        "user1",
        "--secret",
        "secret-12345",
    ]);
    let (ok, _) = node.tool("iscsi-inq", &[&node.url("r0")]);
    assert!(!ok, "login without CHAP is refused");
    let with_chap = format!("iscsi://user1%secret-12345@{}/{iqn}/0", node.portal);
    assert!(node.tool("iscsi-inq", &[&with_chap]).0);
    c.ok(&["chap", "clear", iqn]);
    assert!(node.tool("iscsi-inq", &[&node.url("r0")]).0);

    c.ok(&["acl", "add", iqn, "iqn.1994-05.com.example:allowed"]);
    assert!(
        !node
            .tool(
                "iscsi-inq",
                &["-i", "iqn.1994-05.com.example:other", &node.url("r0")]
            )
            .0
    );
    assert!(
        node.tool(
            "iscsi-inq",
            &["-i", "iqn.1994-05.com.example:allowed", &node.url("r0")]
        )
        .0
    );
    c.ok(&["acl", "remove", iqn, "iqn.1994-05.com.example:allowed"]);
    assert!(
        node.tool(
            "iscsi-inq",
            &["-i", "iqn.1994-05.com.example:other", &node.url("r0")]
        )
        .0
    );

    // A change the data plane refuses is rolled back in the saved config too.
    let before = std::fs::read_to_string(c.data_dir.join("node.toml")).unwrap();
    let out = c.cli(&["device", "cache", "r0", "--mode", "write-back"]);
    if !out.status.success() {
        assert!(
            stderr(&out).contains("the data plane refused"),
            "{}",
            stderr(&out)
        );
        assert_eq!(
            std::fs::read_to_string(c.data_dir.join("node.toml")).unwrap(),
            before
        );
        assert_eq!(c.json(&["device", "show", "r0"])["cache"], "none");
    }
    assert!(
        node.tool("iscsi-inq", &[&node.url("r0")]).0,
        "the device is still served"
    );
}

#[test]
fn restart_control_and_find_every_device_served() {
    let node = new_node();
    let images = node.dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    {
        let c = &node.control;
        c.ok(&[
            "device",
            "create",
            "disk1",
            "--size",
            "32MiB",
            "--location",
            images.to_str().unwrap(),
            "--block-size",
            "4096",
        ]);
        c.ok(&["device", "extend", "disk1", "--size", "48MiB"]);
        c.ok(&[
            "device",
            "create",
            "r0",
            "--ram",
            "--size",
            "8MiB",
            "--target-alias",
            "fast",
        ]);
    }
    let dp_pid = node.control.json(&["status"])["dataplane"]["pid"]
        .as_u64()
        .unwrap();
    let Node {
        control,
        portal,
        dir,
    } = node;
    control.stop();
    assert!(
        !std::path::Path::new(&format!("/proc/{dp_pid}")).exists(),
        "stopping control stops the data plane"
    );
    let node = start_node(dir, &portal);
    assert_eq!(node.capacity("disk1"), 48 << 20);
    assert_eq!(node.capacity("fast"), 8 << 20);
    let list = node.control.json(&["device", "list"]);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|d| d["state"] == "online"),
        "{list}"
    );
}

#[test]
fn data_plane_crash_is_restarted_with_the_saved_config() {
    let node = new_node();
    let c = &node.control;
    c.ok(&["device", "create", "r0", "--ram", "--size", "8MiB"]);
    let pid = c.json(&["status"])["dataplane"]["pid"].as_u64().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for(
        "the data plane to be restarted",
        Duration::from_secs(30),
        || {
            let s = c.json(&["status"]);
            s["dataplane"]["state"] == "running" && s["dataplane"]["restarts"] == 1
        },
    );
    assert_ne!(
        c.json(&["status"])["dataplane"]["pid"].as_u64().unwrap(),
        pid
    );
    assert_eq!(node.capacity("r0"), 8 << 20);
    // Changes apply live again after the restart.
    c.ok(&["device", "create", "r1", "--ram", "--size", "4MiB"]);
    assert_eq!(node.capacity("r1"), 4 << 20);
}

/// True when `pid` is gone or a zombie (an orphan that init has not reaped yet).
fn dead(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .map(|rest| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
    }
}

#[test]
fn a_killed_control_service_leaves_no_stray_data_plane() {
    let node = new_node();
    node.control
        .ok(&["device", "create", "r0", "--ram", "--size", "8MiB"]);
    let dp_pid = node.control.json(&["status"])["dataplane"]["pid"]
        .as_u64()
        .unwrap();
    let Node {
        control,
        portal,
        dir,
    } = node;
    control.kill();
    // The orphan still holds the portal; the next start must stop it and serve again.
    let node = start_node(dir, &portal);
    wait_for(
        "the old data plane to stop",
        Duration::from_secs(30),
        || dead(dp_pid),
    );
    assert_ne!(
        node.control.json(&["status"])["dataplane"]["pid"]
            .as_u64()
            .unwrap(),
        dp_pid
    );
    assert_eq!(node.capacity("r0"), 8 << 20);
}
