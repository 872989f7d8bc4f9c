//! Issue 13: one device's problem fails that device only, and nothing the data plane is handed
//! (an absurd size, a missing or swapped image, an alias of another device's file) makes it
//! panic, recreate an image or serve the wrong data. These drive `Server` in this process,
//! bypassing the control service's checks as a hand-edited `node.toml` would.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tandem_bdev::CacheMode;
use tandem_config::image_id::{self, ImageRecord};
use tandem_dataplane::reactor::PollMode;
use tandem_dataplane::server::{Backing, DeviceSpec, NodeSpec, Server, TargetSpec};
use tandem_iscsi::login::AuthPolicy;

fn ram(name: &str, size_bytes: u64) -> DeviceSpec {
    DeviceSpec {
        name: name.into(),
        backing: Backing::Ram { size_bytes },
        block_size: 512,
        read_only: false,
        cache: CacheMode::None,
        cache_size_bytes: 0,
        identity_seed: format!("n1-{name}"),
        pr_state_path: None,
        verify_identity: true,
        create_if_missing: false,
        image_dirs: Vec::new(),
        block_device: false,
        replication: None,
    }
}

fn file(name: &str, path: &Path, dirs: &[&Path]) -> DeviceSpec {
    DeviceSpec {
        backing: Backing::File {
            path: path.to_path_buf(),
            size_bytes: None,
        },
        image_dirs: dirs.iter().map(|d| d.to_path_buf()).collect(),
        ..ram(name, 0)
    }
}

fn iqn(name: &str) -> String {
    format!("iqn.2026-11.io.tandem:n1-{name}")
}

fn start(devices: Vec<DeviceSpec>) -> Server {
    let targets = devices
        .iter()
        .map(|d| TargetSpec {
            iqn: iqn(&d.name),
            alias: None,
            luns: vec![d.name.clone()],
            auth: AuthPolicy::None,
            allowed_initiators: vec![],
        })
        .collect();
    let portal: SocketAddr = "127.0.0.1:0".parse().unwrap();
    Server::start(NodeSpec {
        portals: vec![portal],
        userspace_portals: vec![],
        socket_io: Default::default(),
        devices,
        targets,
        cores: vec![],
        poll_mode: PollMode::Adaptive,
        spin: Duration::from_micros(50),
        timers: Default::default(),
    })
    .expect("the node starts whatever one device does")
}

/// A bound image: `len` bytes plus its identity record.
fn bound_image(dir: &Path, name: &str, len: u64) -> PathBuf {
    let p = dir.join(format!("{name}.img"));
    std::fs::File::create(&p).unwrap().set_len(len).unwrap();
    image_id::write(&p, &ImageRecord::new(&format!("n1-{name}"), 512, len)).unwrap();
    p
}

fn reason(server: &Server, name: &str) -> String {
    server
        .failed_device(name)
        .unwrap_or_else(|| panic!("device {name} should have failed"))
        .reason
}

#[test]
fn bad_devices_fail_alone_and_the_rest_serve() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good_file = bound_image(d, "good", 1 << 20);
    let missing = d.join("missing.img");
    let unbound = d.join("unbound.img");
    std::fs::File::create(&unbound)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let swapped = bound_image(d, "swapped", 1 << 20);
    image_id::write(&swapped, &ImageRecord::new("someone-else", 512, 1 << 20)).unwrap();
    let truncated = bound_image(d, "truncated", 1 << 20);
    std::fs::File::options()
        .write(true)
        .open(&truncated)
        .unwrap()
        .set_len(1 << 19)
        .unwrap();

    let server = start(vec![
        ram("r0", 8 << 20),
        // Issue 13 High 2: this panicked with "attempt to divide by zero".
        ram("huge", 4096u64 << 40),
        file("good", &good_file, &[d]),
        // Issue 13 High 1: a missing image was recreated blank and served.
        file("missing", &missing, &[d]),
        file("unbound", &unbound, &[d]),
        file("swapped", &swapped, &[d]),
        file("truncated", &truncated, &[d]),
    ]);
    assert!(server.device("r0").is_some());
    assert!(server.device("good").is_some());
    assert!(server.shared.registry.target(&iqn("r0")).is_some());
    assert!(server.shared.registry.target(&iqn("good")).is_some());

    assert!(
        reason(&server, "huge").contains("at most"),
        "{}",
        reason(&server, "huge")
    );
    let r = reason(&server, "missing");
    assert!(
        r.contains("missing") && r.contains("never recreated"),
        "{r}"
    );
    assert!(!missing.exists(), "a missing image must not be recreated");
    assert!(reason(&server, "unbound").contains("identity record"));
    assert!(reason(&server, "swapped").contains("belongs to identity `someone-else`"));
    assert!(reason(&server, "truncated").contains("truncated"));
    for name in ["huge", "missing", "unbound", "swapped", "truncated"] {
        assert!(server.device(name).is_none());
        assert!(
            server.shared.registry.target(&iqn(name)).is_none(),
            "the target of failed device {name} is not served"
        );
    }
    // The control service can still remove a failed device and its target.
    server.remove_target(&iqn("missing")).unwrap();
    server.remove_device("missing").unwrap();
    assert!(server.failed_device("missing").is_none());
    assert!(server.extend_device("unbound", 4 << 20).is_err());

    // Growing a RAM disk to 4096TiB live is refused with an error, not a panic.
    let e = server.extend_device("r0", 4096u64 << 40).unwrap_err();
    assert!(e.to_string().contains("largest supported"), "{e}");
    assert!(server.device("r0").is_some());
    // A live add of the 4096TiB RAM disk is refused with an error, not a panic.
    let e = server.add_device(&ram("huge2", 4096u64 << 40)).unwrap_err();
    assert!(e.to_string().contains("at most"), "{e}");
    server.shutdown();
}

/// Issue 13 Medium 5: `..` and symlink aliases of one image were served as separate devices
/// with separate caches; a write through one was not seen through the other.
#[test]
fn one_device_per_underlying_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("img")).unwrap();
    let victim = bound_image(&d.join("img"), "victim", 1 << 20);
    // Aliases carry the same record so only the (device, inode) check can catch them.
    let dotdot = d.join("img/../img/victim.img");
    let link = d.join("img/alias.img");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    image_id::write(&link, &ImageRecord::new("n1-victim", 512, 1 << 20)).unwrap();
    let mut a = file("victim", &victim, &[d]);
    a.identity_seed = "n1-victim".into();
    let mut b = file("dotdot", &dotdot, &[d]);
    b.identity_seed = "n1-victim".into();
    let mut c = file("link", &link, &[d]);
    c.identity_seed = "n1-victim".into();
    let server = start(vec![a, b, c]);
    assert!(server.device("victim").is_some());
    assert!(reason(&server, "dotdot").contains("same file"));
    assert!(reason(&server, "link").contains("same file"));
    server.shutdown();
}

/// Issue 13 Medium 7: a symlink inside the image directory that points outside it does not
/// let an image escape confinement.
#[test]
fn images_are_confined_after_resolving_symlinks() {
    let allowed = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let outside = bound_image(elsewhere.path(), "out", 1 << 20);
    let link = allowed.path().join("out.img");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    image_id::write(&link, &ImageRecord::new("n1-out", 512, 1 << 20)).unwrap();
    let server = start(vec![
        file("out", &link, &[allowed.path()]),
        file("direct", &outside, &[allowed.path()]),
    ]);
    assert!(reason(&server, "out").contains("outside the image directories"));
    assert!(reason(&server, "direct").contains("outside the image directories"));
    server.shutdown();
}

/// Issue 13 Low 9: `x.img` and `x.raw` used to share `x.pr`; the file is now named from the
/// whole image name and created 0600.
#[test]
fn pr_state_is_named_from_the_full_image_name_and_private() {
    use std::os::unix::fs::PermissionsExt;
    use tandem_scsi::PrStore;
    let beside = tandem_dataplane::config_spec::pr_state_beside;
    assert_eq!(beside(Path::new("/i/x.img")), Path::new("/i/x.img.pr"));
    assert_ne!(beside(Path::new("/i/x.img")), beside(Path::new("/i/x.raw")));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.img.pr");
    let store = tandem_dataplane::pr_store::FilePrStore::new(path.clone());
    store.save(b"state").unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "PR state holds reservation keys");
    assert_eq!(store.load().unwrap().unwrap(), b"state");
}
