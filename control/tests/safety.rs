//! Issue 13, the operational faults that took a node down or served the wrong disk, each
//! reproduced with real processes (tandem-control, tandem-dataplane, libiscsi tools):
//! a missing image at start, crashes in the middle of an extend, absurd RAM sizes in
//! `node.toml`, orphaned temporaries of an interrupted create, and `tandem ... | head`.
//!
//! Needs `tandem-dataplane` and libiscsi-bin like `e2e_iscsi.rs`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tandem_config::image_id;
use tandem_config::NodeConfig;

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
    control: Option<Control>,
    portal: String,
    data: PathBuf,
    images: PathBuf,
    _dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Node {
        require_libiscsi();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let images = data.join("images");
        std::fs::create_dir_all(&images).unwrap();
        let mut node = Node {
            control: None,
            portal: format!("127.0.0.1:{}", free_port()),
            data,
            images,
            _dir: dir,
        };
        node.start();
        node
    }

    fn start(&mut self) {
        let bin = dataplane_bin();
        let control = Control::start(
            &self.data,
            &[
                "--node-name",
                "n1",
                "--portal",
                &self.portal,
                "--dataplane-bin",
                bin.to_str().unwrap(),
            ],
        );
        wait_for("the data plane to run", Duration::from_secs(30), || {
            control.json(&["status"])["dataplane"]["state"] == "running"
        });
        self.control = Some(control);
    }

    fn c(&self) -> &Control {
        self.control.as_ref().unwrap()
    }

    fn kill9(&mut self) {
        // SIGKILL of tandem-control; its data plane goes with it (stop_stale at next start).
        if let Some(c) = self.control.take() {
            c.kill();
        }
    }

    fn stop(&mut self) {
        if let Some(c) = self.control.take() {
            c.stop();
        }
    }

    fn url(&self, alias: &str) -> String {
        format!("iscsi://{}/iqn.2026-11.io.tandem:n1-{alias}/0", self.portal)
    }

    fn served(&self, alias: &str) -> bool {
        Command::new("iscsi-inq")
            .arg(self.url(alias))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    fn capacity(&self, alias: &str) -> u64 {
        let out = Command::new("iscsi-readcapacity16")
            .arg(self.url(alias))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| l.strip_prefix("Total size:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no size in {text}"))
    }

    fn create(&self, name: &str, size: &str) -> PathBuf {
        let images = self.images.to_str().unwrap();
        self.c().ok(&[
            "device",
            "create",
            name,
            "--size",
            size,
            "--location",
            images,
        ]);
        self.images.join(format!("{name}.img"))
    }

    fn device(&self, name: &str) -> serde_json::Value {
        self.c().json(&["device", "show", name])
    }
}

fn fill(path: &Path, byte: u8, len: usize) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all(&vec![byte; len]).unwrap();
    f.sync_all().unwrap();
}

fn head(path: &Path, len: usize) -> Vec<u8> {
    use std::io::Read;
    let mut buf = vec![0u8; len];
    std::fs::File::open(path)
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    buf
}

/// High 1: a moved image was recreated blank and served under the device's identity. Now the
/// device fails visibly, nothing is created, the rest of the node serves, and `rebind` after
/// restoring the file brings it back with its data.
#[test]
fn missing_image_fails_that_device_only_and_is_never_recreated() {
    let mut node = Node::new();
    let img = node.create("d", "8MiB");
    node.c()
        .ok(&["device", "create", "r0", "--ram", "--size", "8MiB"]);
    assert!(node.served("d"));
    node.stop();
    fill(&img, 0xA5, 4096);
    let moved = node.images.join("d.moved");
    std::fs::rename(&img, &moved).unwrap();

    node.start();
    assert!(!img.exists(), "the missing image must not be recreated");
    let d = node.device("d");
    assert_eq!(d["state"], "failed", "{d}");
    let error = d["error"].as_str().unwrap();
    assert!(
        error.contains("missing") && error.contains("never recreated"),
        "{error}"
    );
    let list = node.c().ok(&["device", "list"]);
    assert!(
        list.contains("d: image") && list.contains("missing"),
        "{list}"
    );
    let show = node.c().ok(&["device", "show", "d"]);
    assert!(show.contains("error          image"), "{show}");
    assert!(
        !node.served("d"),
        "the target of a failed device is not served"
    );
    assert!(node.served("r0"), "the rest of the node serves");
    let status = node.c().json(&["status"]);
    assert_eq!(status["dataplane"]["restarts"], 0, "{status}");

    // Rebinding before the file is back is refused and creates nothing.
    let out = node.c().cli(&["device", "rebind", "d"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("restore the image"),
        "{}",
        stderr(&out)
    );
    assert!(!img.exists());

    // Restored: a plain move back keeps the inode, so the record still matches.
    std::fs::rename(&moved, &img).unwrap();
    node.c().ok(&["device", "rebind", "d"]);
    assert_eq!(node.device("d")["state"], "online");
    assert!(node.served("d"));
    assert_eq!(head(&img, 4096), vec![0xA5; 4096], "the data is intact");
    assert!(node.served("r0"));
}

/// High 1: a different file put in place of the image (same name, same size) or an image
/// without its identity record is refused, not served as the device.
#[test]
fn swapped_or_unbound_image_is_refused() {
    let mut node = Node::new();
    let img = node.create("d", "8MiB");
    node.stop();
    let other = node.images.join("other.img");
    std::fs::File::create(&other)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    std::fs::rename(&other, &img).unwrap();
    node.start();
    let d = node.device("d");
    assert_eq!(d["state"], "failed");
    assert!(
        d["error"]
            .as_str()
            .unwrap()
            .contains("replaced by another file"),
        "{d}"
    );
    assert!(!node.served("d"));

    node.stop();
    std::fs::remove_file(image_id::record_path(&img)).unwrap();
    node.start();
    let d = node.device("d");
    assert!(
        d["error"].as_str().unwrap().contains("identity record"),
        "{d}"
    );
    // The admin checked the file: rebind binds it as it is.
    node.c().ok(&["device", "rebind", "d"]);
    assert!(node.served("d"));
}

/// High 3: `kill -9` during `extend` left a grown file and a config with the old size, and
/// the data plane then refused to start at all. Each point an extend can be killed at is
/// set up on disk exactly as the extend leaves it there; a start serves the old or the new
/// size for that device, and every other device.
#[test]
fn interrupted_extend_serves_old_or_new_size_for_that_device_only() {
    let mut node = Node::new();
    let img = node.create("d", "8MiB");
    node.c()
        .ok(&["device", "create", "r0", "--ram", "--size", "8MiB"]);
    node.kill9();
    fill(&img, 0x5A, 4096);
    let seed = "n1-d";
    let intent = |new_size: u64| {
        let mut r = image_id::ImageRecord::new(seed, 512, 8 << 20);
        r.pending_size_blocks = new_size / 512;
        image_id::write(&img, &r).unwrap();
    };
    let grow_to = |len: u64| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&img)
            .unwrap()
            .set_len(len)
            .unwrap()
    };

    // 1. Killed after the intent, while the file grew (part-way): old size.
    intent(64 << 20);
    grow_to(40 << 20);
    node.start();
    assert_eq!(node.device("d")["state"], "online");
    assert_eq!(node.capacity("d"), 8 << 20);
    assert_eq!(
        std::fs::metadata(&img).unwrap().len(),
        8 << 20,
        "rolled back"
    );
    assert!(node.served("r0"));
    assert_eq!(head(&img, 4096), vec![0x5A; 4096]);
    node.kill9();

    // 2. Killed after the config commit, before the record was updated: new size.
    intent(64 << 20);
    grow_to(64 << 20);
    let toml = node.data.join("node.toml");
    let mut cfg = NodeConfig::load(&toml).unwrap();
    cfg.device_mut("d").unwrap().size = Some(tandem_config::Size(64 << 20));
    cfg.save(&toml).unwrap();
    node.start();
    assert_eq!(node.device("d")["state"], "online");
    assert_eq!(node.capacity("d"), 64 << 20);
    assert!(node.served("r0"));
    let rec = image_id::read(&img).unwrap().unwrap().unwrap();
    assert_eq!((rec.size_bytes(), rec.pending_size_blocks), (64 << 20, 0));

    // 3. A real extend, killed at a random moment while it runs: never a node-wide outage.
    let c = node.c();
    let (api, token) = (c.api.clone(), c.token());
    let extend = std::thread::spawn(move || {
        let _ = ureq::post(&format!("{api}/api/v1/devices/d/extend"))
            .set("Authorization", &format!("Bearer {token}"))
            .send_string(r#"{"size":"2GiB"}"#);
    });
    std::thread::sleep(Duration::from_millis(30));
    node.kill9();
    let _ = extend.join();
    node.start();
    let d = node.device("d");
    assert_eq!(d["state"], "online", "{d}");
    let size = node.capacity("d");
    assert!(size == 64 << 20 || size == 2 << 30, "{size}");
    assert_eq!(std::fs::metadata(&img).unwrap().len(), size);
    assert!(node.served("r0"));
    assert_eq!(head(&img, 4096), vec![0x5A; 4096], "data intact");
}

/// High 2: 4096TiB in node.toml panicked the data plane at every start. It is refused by
/// validation with the key named; a RAM disk under the hard limit but beyond this machine's
/// memory fails alone while the rest of the node serves.
#[test]
fn absurd_ram_sizes_in_node_toml_never_crash_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let portal = format!("127.0.0.1:{}", free_port());
    let text = |size: &str| {
        format!(
            "[node]\nname = \"n1\"\nportals = [\"{portal}\"]\n\
             [[device]]\nname = \"r1\"\nram_size = \"{size}\"\n\
             [[device]]\nname = \"ok\"\nram_size = \"8MiB\"\n\
             [[target]]\nalias = \"r1\"\nluns = [\"r1\"]\n\
             [[target]]\nalias = \"ok\"\nluns = [\"ok\"]\n"
        )
    };
    std::fs::write(data.join("node.toml"), text("4096TiB")).unwrap();
    let out = Command::new(dataplane_bin())
        .arg("--config")
        .arg(data.join("node.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("device[0].ram_size") && !err.contains("panicked"),
        "{err}"
    );
    let err = Control::try_start(&data, &["--no-dataplane"])
        .err()
        .expect("an invalid node.toml is refused");
    assert!(err.contains("device[0].ram_size"), "{err}");

    // 200TiB passes the hard limit but not the memory rule: that device fails alone.
    std::fs::write(data.join("node.toml"), text("200TiB")).unwrap();
    let bin = dataplane_bin();
    let c = Control::start(&data, &["--dataplane-bin", bin.to_str().unwrap()]);
    wait_for("the data plane to run", Duration::from_secs(30), || {
        c.json(&["status"])["dataplane"]["state"] == "running"
    });
    let r1 = c.json(&["device", "show", "r1"]);
    assert_eq!(r1["state"], "failed");
    assert!(
        r1["error"].as_str().unwrap().contains("over the limit"),
        "{r1}"
    );
    assert_eq!(c.json(&["device", "show", "ok"])["state"], "online");
    let ok = Command::new("iscsi-inq")
        .arg(format!("iscsi://{portal}/iqn.2026-11.io.tandem:n1-ok/0"))
        .output()
        .unwrap();
    assert!(ok.status.success(), "the rest of the node serves");
    // And extending a RAM disk far beyond memory is refused (Medium 8).
    let out = c.cli(&["device", "extend", "ok", "--size", "64TiB"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("over the limit"), "{}", stderr(&out));
    // A failed device and its unserved target can still be removed, live.
    c.ok(&["device", "remove", "r1"]);
    assert_eq!(c.json(&["device", "list"]).as_array().unwrap().len(), 1);
    assert_eq!(c.json(&["status"])["dataplane"]["restarts"], 0);
}

/// Low 12: `.NAME.img.partial` left by a create killed mid-way is removed at the next start.
#[test]
fn orphaned_partial_images_are_removed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let images = data.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let partials = [data.join(".a.img.partial"), images.join(".b.img.partial")];
    for p in &partials {
        std::fs::write(p, b"half").unwrap();
    }
    let keep = images.join("keep.img");
    std::fs::write(&keep, b"x").unwrap();
    let c = Control::start(&data, &["--no-dataplane"]);
    for p in &partials {
        assert!(!p.exists(), "{} was not removed", p.display());
    }
    assert!(keep.exists(), "only temporaries are removed");
    c.stop();
}

/// Low 13: `tandem device show X | head -5` panicked on the closed pipe.
#[test]
fn cli_ends_quietly_when_its_reader_goes_away() {
    let dir = tempfile::tempdir().unwrap();
    let c = Control::start(&dir.path().join("data"), &["--no-dataplane"]);
    c.ok(&["device", "create", "r0", "--ram", "--size", "8MiB"]);
    let mut child = Command::new(CLI)
        .args(["--api", &c.api, "--token-file"])
        .arg(c.data_dir.join("token"))
        .args(["device", "show", "r0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader (`head`) is gone before anything is printed
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(out.status.code(), Some(101), "exit code of a panic: {err}");
}

/// High 3 (create): `kill -9` while an image is built leaves no device, or the device with
/// its whole image; never a short image under the device, and never the node down.
#[test]
fn interrupted_create_leaves_no_device_or_a_whole_one() {
    let mut node = Node::new();
    node.c()
        .ok(&["device", "create", "r0", "--ram", "--size", "8MiB"]);
    for (round, delay_ms) in [5u64, 40, 150].into_iter().enumerate() {
        let name = format!("big{round}");
        let images = node.images.to_str().unwrap().to_string();
        let c = node.c();
        let (api, token) = (c.api.clone(), c.token());
        let body = format!(r#"{{"name":"{name}","size":"1GiB","location":"{images}"}}"#);
        let _ = ureq::post(&format!("{api}/api/v1/devices"))
            .set("Authorization", &format!("Bearer {token}"))
            .send_string(&body);
        std::thread::sleep(Duration::from_millis(delay_ms));
        node.kill9();
        node.start();
        let img = node.images.join(format!("{name}.img"));
        assert!(
            !node.images.join(format!(".{name}.img.partial")).exists(),
            "round {round}: the temporary is removed at start"
        );
        let list = node.c().json(&["device", "list"]);
        let configured = list
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["name"] == name.as_str());
        if configured {
            assert_eq!(node.device(&name)["state"], "online", "round {round}");
            assert_eq!(std::fs::metadata(&img).unwrap().len(), 1 << 30);
        } else if img.exists() {
            // Renamed into place but not yet in node.toml: a whole image, not a device.
            assert_eq!(std::fs::metadata(&img).unwrap().len(), 1 << 30);
        }
        assert!(
            node.served("r0"),
            "round {round}: the rest of the node serves"
        );
    }
}

/// Medium 7: with `data_dir` set, an image outside the image directories makes node.toml
/// invalid (the key is named); `--image-dir` admits its directory without editing the file.
#[test]
fn image_dir_flag_admits_images_of_an_existing_config() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let elsewhere = dir.path().join("ssd");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    let text = format!(
        "[node]\nname = \"n1\"\nportals = [\"127.0.0.1:3260\"]\ndata_dir = \"{}\"\n\
         [[device]]\nname = \"d\"\nfile = \"{}/d.img\"\n",
        data.display(),
        elsewhere.display()
    );
    std::fs::write(data.join("node.toml"), &text).unwrap();
    let err = Control::try_start(&data, &["--no-dataplane"])
        .err()
        .expect("an image outside the image directories is refused");
    assert!(
        err.contains("device[0].file") && err.contains("outside the image directories"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(data.join("node.toml")).unwrap(),
        text,
        "not overwritten"
    );
    let c = Control::start(
        &data,
        &["--no-dataplane", "--image-dir", elsewhere.to_str().unwrap()],
    );
    assert_eq!(c.json(&["device", "list"]).as_array().unwrap().len(), 1);
    let saved = NodeConfig::load(data.join("node.toml")).unwrap();
    assert_eq!(saved.node.image_dirs, vec![elsewhere.clone()]);
}
