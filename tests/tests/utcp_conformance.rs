//! libiscsi's `iscsi-test-cu` over the userspace TCP stack (smoltcp on a TAP device).
//!
//! The test makes its own network namespace, creates a TAP device in it with the kernel's
//! side at 10.213.0.1/24, starts `tandem-dataplane serve --utcp TAP,10.213.0.2/24` in it,
//! and runs every suite against iscsi://10.213.0.2:3260 from inside it: the initiator's
//! packets cross the TAP into smoltcp, never the kernel's TCP on the target side. The same
//! expectations as tests/conformance.rs hold (no failure outside
//! tests/conformance/expected-failures.txt). Nothing outside the namespace is contacted; the
//! namespace and everything in it go away on success, failure and panic.
//!
//! Needs root (netns, TAP). Without it the test says so and does nothing.

use nix::sched::{setns, CloneFlags};
use std::fs::File;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tandem_tests::e2e::conformance::{self, expected_failures};
use tandem_tests::e2e::cunit::Outcome;
use tandem_tests::e2e::procs::{bin, wait_for_port, Proc};

const SUITE_TIMEOUT: Duration = Duration::from_secs(90);
const TAP: &str = "tdtap0";
const KERNEL_SIDE: &str = "10.213.0.1/24";
const STACK_CIDR: &str = "10.213.0.2/24";
const STACK_PORTAL: &str = "10.213.0.2:3260";

/// A network namespace this test created. Dropping it moves the thread back to the network
/// namespace it came from and deletes the namespace (and with it the TAP).
struct Netns {
    name: String,
    home: Option<File>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    fn create(name: &str) -> Netns {
        // A namespace of this exact name can only be ours, left by a killed earlier run.
        let _ = ip(&["netns", "del", name]);
        ip(&["netns", "add", name]).unwrap_or_else(|e| panic!("{e}"));
        Netns {
            name: name.to_string(),
            home: None,
        }
    }

    /// `ip -n NAME ARGS...`
    fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Moves this thread (and so every process and socket it creates) into the namespace.
    fn enter(&mut self) {
        let home =
            File::open("/proc/thread-self/ns/net").expect("open this thread's network namespace");
        let ns = File::open(format!("/run/netns/{}", self.name)).expect("open the test namespace");
        setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns into the test namespace");
        self.home = Some(home);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Some(home) = self.home.take() {
            if let Err(e) = setns(&home, CloneFlags::CLONE_NEWNET) {
                eprintln!("cannot return to the original network namespace: {e}");
            }
        }
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("cleanup: {e}");
        }
    }
}

fn can_run() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1));
    if euid != Some("0") {
        return Err("not root (network namespaces and TAP devices need CAP_NET_ADMIN)".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Err("no /dev/net/tun".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Err("no `ip` (iproute2)".into());
    }
    Ok(())
}

#[test]
fn iscsi_test_cu_over_userspace_tcp() {
    if let Err(why) = can_run() {
        eprintln!("SKIPPED iscsi_test_cu_over_userspace_tcp: {why}");
        return;
    }
    let mut ns = Netns::create(&format!("tandem-utcp-{}", std::process::id()));
    ns.ip(&["link", "set", "lo", "up"]);
    ns.ip(&["tuntap", "add", "dev", TAP, "mode", "tap"]);
    ns.ip(&["addr", "add", KERNEL_SIDE, "dev", TAP]);
    ns.ip(&["link", "set", TAP, "up"]);
    ns.enter();

    let iqn = "iqn.2026-11.io.tandem:test-utcp";
    let utcp = format!("{TAP},{STACK_CIDR}");
    // A private copy under another name: a rebuild of the shared target directory cannot
    // swap it mid-run, and a `pkill tandem-dataplane` aimed at another test cannot stop it.
    let dir = tempfile::Builder::new()
        .prefix("tandem-utcp")
        .tempdir()
        .expect("temp dir");
    let exe = dir.path().join("tdp-utcp-target");
    std::fs::copy(bin("tandem-dataplane"), &exe).expect("copy tandem-dataplane");
    let mut cmd = Command::new(&exe);
    // The kernel portal stays on the namespace's loopback; the suites use only the TAP one.
    cmd.args([
        "serve",
        "--portal",
        "127.0.0.1:3260",
        "--utcp",
        &utcp,
        "--iqn",
        iqn,
        "--alias",
        "utcp",
    ]);
    cmd.args(["--ram", "256MiB"]);
    if std::env::var_os("TANDEM_LOG").is_none() {
        cmd.env("TANDEM_LOG", "warn");
    }
    // Declared after `ns`, so it is stopped before the namespace goes.
    let mut target = Proc::spawn(cmd, "tandem-dataplane");
    let portal: SocketAddr = STACK_PORTAL.parse().expect("valid portal");
    assert!(
        wait_for_port(portal, Duration::from_secs(20)),
        "tandem-dataplane did not answer on the userspace portal {portal}"
    );

    let expected = expected_failures(include_str!("../conformance/expected-failures.txt"));
    let url = format!("iscsi://{portal}/{iqn}/0");
    let mut results = Vec::new();
    for suite in conformance::suites() {
        results.extend(conformance::run_suite(&url, &suite, SUITE_TIMEOUT));
    }
    let label = "utcp";
    let counts = conformance::report(label, &results);
    let unexpected: Vec<String> = results
        .iter()
        .filter(|r| r.outcome == Outcome::Failed && !expected.contains_key(&r.name))
        .map(|r| format!("{}: {}", r.name, r.detail.lines().next().unwrap_or("")))
        .collect();
    for r in results
        .iter()
        .filter(|r| r.outcome != Outcome::Failed && expected.contains_key(&r.name))
    {
        eprintln!(
            "[{label}] note: {} is listed as an expected failure but did not fail",
            r.name
        );
    }
    assert!(
        target.is_running(),
        "tandem-dataplane died during the suites"
    );
    assert!(
        counts.passed > 0,
        "no test passed: the userspace portal is not serving"
    );
    assert!(
        unexpected.is_empty(),
        "[{label}] unexpected failures:\n{}",
        unexpected.join("\n")
    );
}
