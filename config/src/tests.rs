//! Tests of parsing, validation (one per rule) and persistence.

use super::*;

const GOOD: &str = r#"
[node]
name = "node1"
portals = ["127.0.0.1:3260"]

[[device]]
name = "disk1"
ram_size = "64MiB"

[[target]]
alias = "disk1"
luns = ["disk1"]
"#;

fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
    NodeConfig::from_toml_str(text, "test.toml")
}

/// Applies `edit` to the good config's text and expects a validation error at `key`
/// whose reason contains `reason`.
fn expect_invalid(text: &str, key: &str, reason: &str) {
    match parse(text) {
        Err(ConfigError::Invalid { origin, errors }) => {
            assert_eq!(origin, "test.toml");
            let e = errors
                .for_key(key)
                .unwrap_or_else(|| panic!("no error for key {key}; got: {errors}"));
            assert!(
                e.reason.contains(reason),
                "reason for {key} was: {}",
                e.reason
            );
            let shown = ConfigError::Invalid {
                origin,
                errors: errors.clone(),
            }
            .to_string();
            assert!(
                shown.starts_with("test.toml: ") && shown.contains(key),
                "{shown}"
            );
        }
        other => panic!("expected invalid at {key}, got {other:?}"),
    }
}

fn expect_parse_error(text: &str, key: &str, reason: &str) {
    match parse(text) {
        Err(e @ ConfigError::Parse { .. }) => {
            let shown = e.to_string();
            assert_eq!(e.key(), (!key.is_empty()).then_some(key), "{shown}");
            assert!(shown.starts_with("test.toml:"), "{shown}");
            assert!(shown.contains(reason), "{shown}");
        }
        other => panic!("expected parse error at {key}, got {other:?}"),
    }
}

fn with_device(extra: &str) -> String {
    format!("[node]\nname = \"n\"\nportals = [\"127.0.0.1:3260\"]\n[[device]]\n{extra}\n")
}

#[test]
fn good_config_parses_with_defaults() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.node.poll_mode, PollMode::Adaptive);
    assert_eq!(c.node.socket_io, SocketIo::Syscalls);
    let d = &c.devices[0];
    assert_eq!(d.block_size, 512);
    assert_eq!(d.cache, CacheMode::None);
    assert_eq!(d.effective_cache_size(), 0);
    assert_eq!(
        d.backing(),
        Backing::Ram {
            size_bytes: 64 << 20
        }
    );
    assert_eq!(d.effective_identity_seed("node1"), "node1-disk1");
    assert_eq!(
        c.targets[0].iqn("node1"),
        "iqn.2026-11.io.tandem:node1-disk1"
    );
    assert!(c
        .target_by_iqn("IQN.2026-11.io.tandem:node1-disk1")
        .is_some());
}

#[test]
fn example_file_loads() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/node.toml");
    let c = NodeConfig::load(path).unwrap();
    assert_eq!(c.node.name, "node1");
    assert_eq!(c.node.cores, vec![0, 1]);
    assert_eq!(c.devices.len(), 3);
    let disk1 = c.device("disk1").unwrap();
    assert_eq!(disk1.cache, CacheMode::WriteBack);
    assert_eq!(disk1.effective_cache_size(), 256 << 20);
    assert_eq!(disk1.effective_identity_seed("node1"), "cluster-a-disk1");
    assert_eq!(
        disk1.backing(),
        Backing::File {
            path: std::path::Path::new("/var/lib/tandem/disk1.img"),
            size_bytes: Some(10 << 30)
        }
    );
    assert!(c.device("golden").unwrap().read_only);
    assert_eq!(
        c.targets[1].iqn("node1"),
        "iqn.2026-11.io.tandem:shared-disk1"
    );
    assert_eq!(c.targets[1].luns, vec!["disk1", "golden"]);
    let chap = c.targets[1].chap.as_ref().unwrap();
    assert!(
        !format!("{chap:?}").contains("0123456789abcdef"),
        "Debug must redact secrets"
    );
}

#[test]
fn round_trips_through_toml() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/node.toml");
    let c = NodeConfig::load(path).unwrap();
    let text = c.to_toml_string();
    assert_eq!(parse(&text).unwrap(), c, "{text}");
    let d = NodeConfig::default_ram(loopback_portal(3260));
    assert_eq!(parse(&d.to_toml_string()).unwrap(), d);
    assert_eq!(d.node.name, "tandem");
    assert_eq!(
        d.devices[0].backing(),
        Backing::Ram {
            size_bytes: 1 << 30
        }
    );
    assert_eq!(
        d.targets[0].iqn("tandem"),
        "iqn.2026-11.io.tandem:tandem-ram0"
    );
}

#[test]
fn unknown_keys_are_named() {
    expect_parse_error(
        &GOOD.replace("[node]", "[node]\ncolour = \"red\""),
        "node.colour",
        "unknown field `colour`",
    );
    expect_parse_error(
        &with_device("name = \"d\"\nram_size = 512\nramsize = 1"),
        "device[0].ramsize",
        "unknown field `ramsize`",
    );
    expect_parse_error(
        &format!(
            "{GOOD}\n[target.chap]\nusername = \"u\"\nsecret = \"0123456789ab\"\nsecert = \"x\"\n"
        ),
        "target[0].chap.secert",
        "unknown field `secert`",
    );
    expect_parse_error(
        &format!("{GOOD}\n[extra]\n"),
        "extra",
        "unknown field `extra`",
    );
}

#[test]
fn type_errors_are_named_with_line() {
    let text = with_device("name = \"d\"\nram_size = \"1 banana\"");
    expect_parse_error(&text, "device[0].ram_size", "unknown unit `banana`");
    assert!(
        parse(&text)
            .unwrap_err()
            .to_string()
            .contains("test.toml:6:"),
        "{}",
        parse(&text).unwrap_err()
    );
    expect_parse_error(
        &with_device("name = \"d\"\nram_size = \"10GB\""),
        "device[0].ram_size",
        "ambiguous",
    );
    expect_parse_error(
        &with_device("name = \"d\"\nram_size = -5"),
        "device[0].ram_size",
        "negative",
    );
    expect_parse_error(
        &GOOD.replace("127.0.0.1:3260", "localhost"),
        "node.portals[0]",
        "socket address",
    );
    expect_parse_error(
        &with_device("name = \"d\"\nram_size = 512\ncache = \"lots\""),
        "device[0].cache",
        "unknown variant `lots`",
    );
    expect_parse_error(
        &GOOD.replace("name = \"node1\"\n", ""),
        "node",
        "missing field `name`",
    );
    expect_parse_error("[node\n", "", "invalid table header");
}

#[test]
fn node_rules() {
    expect_invalid(
        &GOOD.replace("node1", "Node_1"),
        "node.name",
        "not a valid node name",
    );
    expect_invalid(
        &GOOD.replace("[\"127.0.0.1:3260\"]", "[]"),
        "node.portals",
        "at least one",
    );
    expect_invalid(
        &GOOD.replace(
            "\"127.0.0.1:3260\"]",
            "\"127.0.0.1:3260\", \"127.0.0.1:3260\"]",
        ),
        "node.portals[1]",
        "listed twice",
    );
    expect_invalid(
        &GOOD.replace("127.0.0.1:3260", "127.0.0.1:0"),
        "node.portals[0]",
        "port 0",
    );
    expect_invalid(
        &GOOD.replace("[node]", "[node]\ncores = [1, 1]"),
        "node.cores[1]",
        "listed twice",
    );
    expect_invalid(
        &GOOD.replace("[node]", "[node]\ndata_dir = \"rel/dir\""),
        "node.data_dir",
        "absolute",
    );
}

#[test]
fn device_rules() {
    expect_invalid(
        &with_device("name = \"bad name\"\nram_size = 512"),
        "device[0].name",
        "not a valid device name",
    );
    expect_invalid(
        &format!("{GOOD}\n[[device]]\nname = \"disk1\"\nram_size = 512\n"),
        "device[1].name",
        "defined twice",
    );
    expect_invalid(
        &with_device("name = \"d\""),
        "device[0]",
        "needs `ram_size`",
    );
    expect_invalid(
        &with_device("name = \"d\"\nram_size = 512\nfile = \"/x.img\""),
        "device[0].file",
        "exactly one",
    );
    expect_invalid(
        &with_device("name = \"d\"\nram_size = 0"),
        "device[0].ram_size",
        "greater than 0",
    );
    expect_invalid(
        &with_device("name = \"d\"\nram_size = 1000"),
        "device[0].ram_size",
        "not a multiple of the block size 512",
    );
    expect_invalid(
        &with_device("name = \"d\"\nram_size = \"1MiB\"\nblock_size = 1024"),
        "device[0].block_size",
        "512 (Linux/Xen/KVM) or 4096",
    );
    expect_invalid(
        &with_device("name = \"d\"\nram_size = \"6KiB\"\nblock_size = 4096"),
        "device[0].ram_size",
        "block size 4096",
    );
    expect_invalid(
        &with_device("name = \"d\"\nram_size = 512\nsize = 512"),
        "device[0].size",
        "RAM disk",
    );
    expect_invalid(
        &with_device("name = \"d\"\nfile = \"x.img\""),
        "device[0].file",
        "absolute",
    );
    expect_invalid(
        &with_device("name = \"d\"\nfile = \"/x.img\"\nsize = 100"),
        "device[0].size",
        "multiple",
    );
    expect_invalid(
        &format!(
            "{}[[device]]\nname = \"e\"\nfile = \"/x.img\"\n",
            with_device("name = \"d\"\nfile = \"/x.img\"")
        ),
        "device[1].file",
        "already used",
    );
    expect_invalid(
        &with_device("name = \"d\"\nram_size = 512\ncache_size = \"1MiB\""),
        "device[0].cache_size",
        "needs `cache`",
    );
    expect_invalid(
        &with_device("name = \"d\"\nram_size = 512\ncache = \"write-back\"\ncache_size = 0"),
        "device[0].cache_size",
        "greater than 0",
    );
    expect_invalid(
        &with_device("name = \"d\"\nram_size = 512\nidentity_seed = \"\""),
        "device[0].identity_seed",
        "printable",
    );
    // An existing file may omit its size.
    assert!(parse(&with_device(
        "name = \"d\"\nfile = \"/x.img\"\nread_only = true"
    ))
    .is_ok());
}

#[test]
fn target_rules() {
    let t = |target: &str| format!("{GOOD}[[target]]\n{target}\n");
    expect_invalid(
        &t("alias = \"Bad_Alias\"\nluns = [\"disk1\"]"),
        "target[1].alias",
        "not a valid target alias",
    );
    expect_invalid(
        &t("alias = \"disk1\"\nluns = [\"disk1\"]"),
        "target[1].alias",
        "used by two targets",
    );
    expect_invalid(
        &t("alias = \"x\"\niqn = \"iqn.2026-11.io.tandem:node1-disk1\"\nluns = [\"disk1\"]"),
        "target[1].iqn",
        "used by two targets",
    );
    expect_invalid(
        &t("alias = \"x\"\niqn = \"target1\"\nluns = [\"disk1\"]"),
        "target[1].iqn",
        "must start with iqn.",
    );
    expect_invalid(
        &t("alias = \"x\"\niqn = \"iqn.2026-1.x:y\"\nluns = [\"disk1\"]"),
        "target[1].iqn",
        "not a valid IQN",
    );
    expect_invalid(
        &t("alias = \"x\"\nluns = []"),
        "target[1].luns",
        "at least one LUN",
    );
    expect_invalid(
        &t("alias = \"x\"\nluns = [\"nope\"]"),
        "target[1].luns[0]",
        "no device named `nope`",
    );
    expect_invalid(
        &t("alias = \"x\"\nluns = [\"disk1\", \"disk1\"]"),
        "target[1].luns[1]",
        "already LUN",
    );
    expect_invalid(
        &t("alias = \"x\"\nluns = [\"disk1\"]\nallowed_initiators = [\"host1\"]"),
        "target[1].allowed_initiators[0]",
        "not an iSCSI name",
    );
    expect_invalid(
        &t("alias = \"x\"\nluns = [\"disk1\"]\nallowed_initiators = [\"iqn.1994-05.com.redhat:a\", \"IQN.1994-05.com.redhat:A\"]"),
        "target[1].allowed_initiators[1]",
        "listed twice",
    );
    let long_alias = "a".repeat(64);
    let long_node = "n".repeat(63);
    let text =
        t(&format!("alias = \"{long_alias}\"\nluns = [\"disk1\"]")).replace("node1", &long_node);
    assert!(parse(&text).is_ok(), "IQN of 22+63+1+64 = 150 bytes fits");
}

#[test]
fn chap_rules() {
    let chap = |body: &str| format!("{GOOD}[target.chap]\n{body}\n");
    expect_invalid(
        &chap("username = \"u\"\nsecret = \"short\""),
        "target[0].chap.secret",
        "12-255 bytes",
    );
    expect_invalid(
        &chap(&format!(
            "username = \"u\"\nsecret = \"{}\"",
            "s".repeat(256)
        )),
        "target[0].chap.secret",
        "is 256 bytes",
    );
    expect_invalid(
        &chap("username = \"\"\nsecret = \"0123456789ab\""),
        "target[0].chap.username",
        "1-255 bytes",
    );
    expect_invalid(
        &chap("username = \"u\"\nsecret = \"0123456789ab\"\nmutual_username = \"t\""),
        "target[0].chap.mutual_secret",
        "missing",
    );
    expect_invalid(
        &chap("username = \"u\"\nsecret = \"0123456789ab\"\nmutual_secret = \"0123456789ab\""),
        "target[0].chap.mutual_username",
        "missing",
    );
    expect_invalid(
        &chap("username = \"u\"\nsecret = \"0123456789ab\"\nmutual_username = \"t\"\nmutual_secret = \"0123456789ab\""),
        "target[0].chap.mutual_secret",
        "must differ",
    );
    assert!(parse(&chap("username = \"u\"\nsecret = \"0123456789ab\"\nmutual_username = \"t\"\nmutual_secret = \"ba9876543210\"")).is_ok());
}

#[test]
fn all_problems_are_reported() {
    let text = with_device("name = \"d\"\nram_size = 1000\nblock_size = 1000\ncache_size = 5");
    let Err(ConfigError::Invalid { errors, .. }) = parse(&text) else {
        panic!()
    };
    assert!(errors.for_key("device[0].block_size").is_some());
    assert!(errors.for_key("device[0].cache_size").is_some());
    assert!(errors.0.len() >= 2, "{errors}");
}

#[test]
fn load_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    let e = NodeConfig::load(&path).unwrap_err();
    assert!(matches!(e, ConfigError::Io { .. }));
    assert!(e.to_string().contains("node.toml"), "{e}");
    std::fs::write(&path, GOOD.replace("disk1\"]", "disk2\"]")).unwrap();
    let e = NodeConfig::load(&path).unwrap_err().to_string();
    assert!(
        e.starts_with(&path.display().to_string()) && e.contains("target[0].luns[0]"),
        "{e}"
    );
}

#[test]
fn save_is_atomic_and_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    let c = parse(GOOD).unwrap();
    c.save(&path).unwrap();
    assert_eq!(NodeConfig::load(&path).unwrap(), c);
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    save_atomic(&path, b"replaced").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"replaced");
    // No temp files left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("node.toml")]);
    // An invalid config is refused and the file is untouched.
    let mut bad = c.clone();
    bad.node.name = "BAD".into();
    assert!(matches!(bad.save(&path), Err(ConfigError::Invalid { .. })));
    assert_eq!(std::fs::read(&path).unwrap(), b"replaced");
    // A missing directory is an error, not a panic.
    assert!(save_atomic(dir.path().join("missing/node.toml"), b"x").is_err());
}

#[test]
fn server_rules() {
    let s = |body: &str| format!("{GOOD}[[server]]\n{body}\n");
    assert!(parse(&s("name = \"node2\"\naddress = \"127.0.0.2:3261\"")).is_ok());
    expect_invalid(
        &s("name = \"node1\"\naddress = \"127.0.0.2:3261\""),
        "server[0].name",
        "own name",
    );
    expect_invalid(
        &s("name = \"N2\"\naddress = \"127.0.0.2:3261\""),
        "server[0].name",
        "not a valid node name",
    );
    expect_invalid(
        &s("name = \"n2\"\naddress = \"127.0.0.2:0\""),
        "server[0].address",
        "port 0",
    );
    let twice = format!(
        "{}[[server]]\nname = \"n2\"\naddress = \"127.0.0.3:3261\"\n",
        s("name = \"n2\"\naddress = \"127.0.0.2:3261\"")
    );
    expect_invalid(&twice, "server[1].name", "listed twice");
}

/// Issue 13 (High 2): 4096TiB in `node.toml` is refused by validation with the key named, so
/// it never reaches the data plane's RAM geometry (which divided by zero on it).
#[test]
fn huge_sizes_are_refused_before_the_data_plane() {
    expect_invalid(
        &with_device("name = \"r\"\nram_size = \"4096TiB\""),
        "device[0].ram_size",
        "more than the largest supported",
    );
    expect_invalid(
        &with_device("name = \"d\"\nfile = \"/x.img\"\nsize = \"4096TiB\""),
        "device[0].size",
        "more than the largest supported",
    );
    expect_invalid(
        &with_device(
            "name = \"r\"\nram_size = \"1GiB\"\ncache = \"write-back\"\ncache_size = \"4096TiB\"",
        ),
        "device[0].cache_size",
        "more than the largest supported",
    );
    assert!(parse(&with_device("name = \"r\"\nram_size = \"1GiB\"")).is_ok());
}

/// Issue 13 (Medium 5, 7): `..`, `.` and doubled slashes are never stored, and with image
/// directories configured an image outside them is refused.
#[test]
fn image_paths_are_normal_and_confined() {
    expect_invalid(
        &with_device("name = \"d\"\nfile = \"/x/img/../img/victim.bin\""),
        "device[0].file",
        "`.` or `..`",
    );
    expect_invalid(
        &with_device("name = \"d\"\nfile = \"/x/./v.img\""),
        "device[0].file",
        "normal form",
    );
    expect_invalid(
        &with_device("name = \"d\"\nfile = \"/x//v.img\""),
        "device[0].file",
        "normal form",
    );
    let confined = |file: &str, extra: &str| {
        format!(
            "[node]\nname = \"n\"\nportals = [\"127.0.0.1:3260\"]\ndata_dir = \"/var/lib/tandem\"\nimage_dirs = [\"/srv/img\"]\n[[device]]\nname = \"d\"\nfile = \"{file}\"\n{extra}"
        )
    };
    assert!(parse(&confined("/srv/img/d.img", "")).is_ok());
    assert!(parse(&confined("/srv/img/sub/d.img", "")).is_ok());
    assert!(parse(&confined("/var/lib/tandem/d.img", "")).is_ok());
    expect_invalid(
        &confined("/etc/x.img", ""),
        "device[0].file",
        "outside the image directories",
    );
    expect_invalid(
        &confined("/srv/img2/x.img", ""),
        "device[0].file",
        "outside the image directories",
    );
    // Block devices are exempt only when flagged as such.
    assert!(parse(&confined("/dev/sdb", "block_device = true")).is_ok());
    expect_invalid(
        &with_device("name = \"r\"\nram_size = \"1GiB\"\nblock_device = true"),
        "device[0].block_device",
        "not a block device",
    );
    // data_dir confines when image_dirs is not given; `..` is refused there too.
    let text = "[node]\nname = \"n\"\nportals = [\"127.0.0.1:3260\"]\ndata_dir = \"/var/lib/tandem\"\n[[device]]\nname = \"d\"\nfile = \"/etc/x.img\"\n";
    expect_invalid(text, "device[0].file", "outside the image directories");
    expect_invalid(
        "[node]\nname = \"n\"\nportals = [\"127.0.0.1:3260\"]\nimage_dirs = [\"/srv/../etc\"]\n",
        "node.image_dirs[0]",
        "`..`",
    );
    let c = parse(&confined("/srv/img/d.img", "")).unwrap();
    assert_eq!(
        c.allowed_image_dirs(std::path::Path::new("/default")),
        vec![
            std::path::PathBuf::from("/var/lib/tandem"),
            std::path::PathBuf::from("/srv/img")
        ]
    );
}

/// A two-node replicated device, as node 1 sees it; `repl` and `partner` add keys.
fn replicated(repl: &str, partner: &str, servers: &str) -> String {
    format!(
        "[node]\nname = \"a\"\nportals = [\"127.0.0.1:3260\"]\n\
         [[device]]\nname = \"d\"\nram_size = \"1MiB\"\n\
         [device.replication]\nnode_id = 1\nsecret_file = \"/etc/tandem/secret\"\n{repl}\n\
         [[device.replication.partner]]\nname = \"b\"\nnode_id = 2\n\
         sync_links = [\"127.0.0.1:7000=127.0.0.2:7000\"]\n{partner}\n{servers}"
    )
}

#[test]
fn replication_section_is_validated() {
    parse(&replicated(
        "",
        "heartbeat_links = [\"127.0.0.1:7100=127.0.0.2:7100\"]",
        "",
    ))
    .unwrap();
    let witness = "[[server]]\nname = \"w\"\naddress = \"127.0.0.3:3261\"\n";
    parse(&replicated(
        "failover = \"node-majority\"\nwitness = \"w\"",
        "",
        witness,
    ))
    .unwrap();
    let cases: &[(&str, &str, &str, &str, &str)] = &[
        ("node_id = 1", "", "", "device[0].replication.node_id", ""),
        ("", "node_id = 1", "", "", ""),
        (
            "priority = \"first\"\nfailover = \"node-majority\"",
            "",
            "",
            "device[0].replication.failover",
            "needs a third vote",
        ),
        (
            "failover = \"node-majority\"\nwitness = \"nobody\"",
            "",
            "",
            "device[0].replication.witness",
            "no [[server]] named `nobody`",
        ),
        (
            "witness = \"w\"",
            "",
            witness,
            "device[0].replication.witness",
            "node-majority",
        ),
        (
            "failover = \"node-majority\"\nwitness = \"w\"\nwitness_file = \"/share/lock\"",
            "",
            witness,
            "device[0].replication.witness",
            "not both",
        ),
        (
            "journal_location = \"rel/dir\"",
            "",
            "",
            "device[0].replication.journal_location",
            "absolute",
        ),
        (
            "",
            "heartbeat_links = [\"127.0.0.1:7000=127.0.0.2:7001\"]",
            "",
            "device[0].replication.partner[0].heartbeat_links[0]",
            "local end of another link",
        ),
        (
            "",
            "heartbeat_links = [\"127.0.0.1:7100=127.0.0.1:7100\"]",
            "",
            "device[0].replication.partner[0].heartbeat_links[0]",
            "the same",
        ),
        (
            "",
            "heartbeat_links = [\"127.0.0.1:0=127.0.0.2:7100\"]",
            "",
            "device[0].replication.partner[0].heartbeat_links[0]",
            "port 0",
        ),
    ];
    for (repl, partner, servers, key, reason) in cases {
        // Duplicate keys are TOML errors, not validation errors: patch the text instead.
        let text = if repl.starts_with("node_id") {
            replicated("", "", servers).replace("node_id = 2", "node_id = 1")
        } else if partner.starts_with("node_id") {
            replicated("", "", servers).replace("node_id = 1\n", "node_id = 9\n")
        } else {
            replicated(repl, partner, servers)
        };
        let (key, reason) = match (*key, *reason) {
            ("", "") if partner.starts_with("node_id") => {
                ("device[0].replication.node_id", "not a node id")
            }
            ("device[0].replication.node_id", "") => {
                ("device[0].replication.partner[0].node_id", "used twice")
            }
            other => other,
        };
        expect_invalid(&text, key, reason);
    }
    // Three-way, under either strategy.
    let three = replicated("", "", "").replace(
        "[[device.replication.partner]]\nname = \"b\"",
        "[[device.replication.partner]]\nname = \"c\"\nnode_id = 3\nsync_links = [\"127.0.0.1:7200=127.0.0.3:7200\"]\n[[device.replication.partner]]\nname = \"b\"",
    );
    parse(&three).unwrap();
    parse(&three.replace("secret\"\n", "secret\"\nfailover = \"node-majority\"\n")).unwrap();
    expect_invalid(
        &three.replace("node_id = 3", "node_id = 2"),
        "device[0].replication.partner[1].node_id",
        "used twice",
    );
}

#[test]
fn socket_io_is_syscalls_or_uring() {
    let with = |v: &str| {
        parse(&format!(
            "[node]\nname = \"n\"\nportals = [\"127.0.0.1:3260\"]\nsocket_io = {v}\n"
        ))
    };
    assert_eq!(with("\"uring\"").unwrap().node.socket_io, SocketIo::Uring);
    assert_eq!(
        with("\"syscalls\"").unwrap().node.socket_io,
        SocketIo::Syscalls
    );
    assert!(with("\"epoll\"").is_err());
    // The default is not written back.
    let c = with("\"syscalls\"").unwrap();
    assert!(!toml::to_string(&c).unwrap().contains("socket_io"));
}
