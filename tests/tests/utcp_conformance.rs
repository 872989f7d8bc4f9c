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
//! A second test abuses the stack: more connections than it admits, then 20 000 garbage
//! frames (random bytes; IPv4/TCP to the portal with random fields, good and bad checksums)
//! injected from the kernel's side of the TAP, and the TAP's link set down and up under load;
//! the target must still serve afterwards.
//!
//! Needs root (netns, TAP). Without it the tests say so and do nothing.

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
        remove_stale_namespaces();
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

/// Deletes namespaces this test made in runs that were killed before their Drop ran
/// (`tandem-utcp-<label>-<pid>` whose process is gone).
fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix("tandem-utcp-") else {
            continue;
        };
        let Some(pid) = rest.rsplit('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
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

/// A target serving on the userspace stack inside its own namespace, which this thread
/// has entered. Fields drop in order: the target stops, its binary goes, then the namespace.
struct UtcpTarget {
    proc: Proc,
    _dir: tempfile::TempDir,
    _ns: Netns,
    iqn: String,
}

impl UtcpTarget {
    fn start(label: &str) -> UtcpTarget {
        let mut ns = Netns::create(&format!("tandem-utcp-{label}-{}", std::process::id()));
        ns.ip(&["link", "set", "lo", "up"]);
        ns.ip(&["tuntap", "add", "dev", TAP, "mode", "tap"]);
        ns.ip(&["addr", "add", KERNEL_SIDE, "dev", TAP]);
        ns.ip(&["link", "set", TAP, "up"]);
        ns.enter();
        let iqn = format!("iqn.2026-11.io.tandem:test-utcp-{label}");
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
        // The kernel portal stays on the namespace's loopback; the tests use only the TAP one.
        cmd.args([
            "serve",
            "--portal",
            "127.0.0.1:3260",
            "--utcp",
            &utcp,
            "--iqn",
            &iqn,
        ]);
        cmd.args(["--alias", label, "--ram", "256MiB"]);
        if std::env::var_os("TANDEM_LOG").is_none() {
            cmd.env("TANDEM_LOG", "warn");
        }
        let proc = Proc::spawn(cmd, "tandem-dataplane");
        let t = UtcpTarget {
            proc,
            _dir: dir,
            _ns: ns,
            iqn,
        };
        assert!(
            wait_for_port(portal(), Duration::from_secs(20)),
            "tandem-dataplane did not answer on the userspace portal {}",
            portal()
        );
        t
    }

    fn url(&self) -> String {
        format!("iscsi://{}/{}/0", portal(), self.iqn)
    }

    /// Logs in and runs INQUIRY (libiscsi's iscsi-inq), retrying for a while.
    fn serves(&self, within: Duration) -> bool {
        let start = std::time::Instant::now();
        loop {
            let ok = Command::new("iscsi-inq")
                .arg(self.url())
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                return true;
            }
            if start.elapsed() > within {
                return false;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

fn portal() -> SocketAddr {
    STACK_PORTAL.parse().expect("valid portal")
}

#[test]
fn iscsi_test_cu_over_userspace_tcp() {
    if let Err(why) = can_run() {
        eprintln!("SKIPPED iscsi_test_cu_over_userspace_tcp: {why}");
        return;
    }
    let mut t = UtcpTarget::start("conf");
    let expected = expected_failures(include_str!("../conformance/expected-failures.txt"));
    let url = t.url();
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
        t.proc.is_running(),
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

/// Sends COUNT frames out of the kernel's side of the TAP (so into the stack): random bytes,
/// and IPv4/TCP to the portal with random ports, sequence numbers, flags, options, lengths,
/// with right and wrong checksums. Prints how many were sent.
const GARBAGE_PY: &str = r#"
import random, socket, struct, sys
iface, count, seed, mac = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), bytes.fromhex(sys.argv[4])
rnd = random.Random(seed)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((iface, 0))
def csum(b):
    if len(b) % 2: b += b'\0'
    t = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while t >> 16: t = (t & 0xffff) + (t >> 16)
    return (~t) & 0xffff
src, dst = socket.inet_aton('10.213.0.1'), socket.inet_aton('10.213.0.2')
sent = 0
for i in range(count):
    kind = i % 4
    if kind == 0:
        frame = rnd.randbytes(rnd.randint(14, 1514))
    else:
        doff = rnd.randint(0, 15)
        opts = rnd.randbytes(max(0, doff - 5) * 4)
        payload = rnd.randbytes(rnd.randint(0, 1400 - len(opts)))
        dport = 3260 if rnd.random() < 0.8 else rnd.randint(0, 65535)
        tcp = struct.pack('!HHIIHHHH', rnd.randint(1, 65535), dport, rnd.getrandbits(32),
                          rnd.getrandbits(32), (doff << 12) | rnd.getrandbits(9),
                          rnd.getrandbits(16), 0, rnd.getrandbits(16)) + opts + payload
        if kind != 3:
            pseudo = src + dst + struct.pack('!BBH', 0, 6, len(tcp))
            tcp = tcp[:16] + struct.pack('!H', csum(pseudo + tcp)) + tcp[18:]
        total = 20 + len(tcp) if kind != 2 else rnd.getrandbits(16)
        ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, total, rnd.getrandbits(16), 0, 64, 6, 0, src, dst)
        ip = ip[:10] + struct.pack('!H', csum(ip)) + ip[12:]
        frame = mac + b'\x02\x00\x00\x00\x00\x01' + b'\x08\x00' + ip + tcp
    try:
        s.send(frame[:1514])
        sent += 1
    except OSError:
        pass
print(sent)
"#;

/// The stack's MAC, as the kernel side learned it (ARP), else broadcast.
fn stack_mac() -> String {
    let out = Command::new("ip")
        .args(["neigh", "show", "10.213.0.2"])
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&out);
    text.split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .map(|m| m.replace(':', ""))
        .filter(|m| m.len() == 12)
        .unwrap_or_else(|| "ffffffffffff".into())
}

#[test]
fn userspace_stack_survives_garbage_and_connection_floods() {
    if let Err(why) = can_run() {
        eprintln!("SKIPPED userspace_stack_survives_garbage_and_connection_floods: {why}");
        return;
    }
    let mut t = UtcpTarget::start("abuse");
    assert!(
        t.serves(Duration::from_secs(20)),
        "no INQUIRY over the userspace portal before the abuse"
    );

    // 1. More connections than the stack admits: at most max_connections + backlog complete
    //    their handshake; the rest are refused (RST) or time out; nothing breaks.
    let bound = tandem_dataplane_limits::UTCP_MAX_CONNECTIONS
        + tandem_dataplane_limits::UTCP_LISTEN_BACKLOG;
    let mut streams = Vec::new();
    for _ in 0..(bound + 40) {
        if let Ok(s) = std::net::TcpStream::connect_timeout(&portal(), Duration::from_millis(300)) {
            streams.push(s);
        }
    }
    assert!(
        !streams.is_empty(),
        "no connection to the userspace portal succeeded"
    );
    assert!(
        streams.len() <= bound,
        "{} connections established; the stack admits at most {bound}",
        streams.len()
    );
    eprintln!(
        "[utcp] connection flood: {} of {} connects established",
        streams.len(),
        bound + 40
    );
    drop(streams);

    // 2. Garbage frames into the stack.
    let py = Command::new("python3")
        .arg("-c")
        .arg(GARBAGE_PY)
        .args([TAP, "20000", "7", &stack_mac()])
        .output();
    match py {
        Ok(o) if o.status.success() => {
            eprintln!(
                "[utcp] garbage frames sent: {}",
                String::from_utf8_lossy(&o.stdout).trim()
            )
        }
        Ok(o) => panic!(
            "garbage sender failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => eprintln!("[utcp] python3 unavailable ({e}); garbage frames not sent"),
    }

    // 3. The TAP's link goes down under a running session (writes fail with EIO; smoltcp's own
    //    TAP driver would panic here) and comes back.
    let mut load = Command::new("iscsi-perf")
        .args(["-m", "4", "-b", "8", "-r", "-n", "-t", "4", &t.url()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok();
    std::thread::sleep(Duration::from_millis(800));
    ip(&["link", "set", TAP, "down"]).unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(Duration::from_millis(1500));
    ip(&["link", "set", TAP, "up"]).unwrap_or_else(|e| panic!("{e}"));
    if let Some(l) = load.as_mut() {
        let _ = l.kill();
        let _ = l.wait();
    }

    assert!(t.proc.is_running(), "tandem-dataplane died under abuse");
    // Dropped connections free their sockets within the close linger (5 s).
    assert!(
        t.serves(Duration::from_secs(20)),
        "no INQUIRY over the userspace portal after the abuse"
    );
    assert!(t.proc.is_running(), "tandem-dataplane died under abuse");
}

/// The userspace stack's bounds (dataplane/src/net/utcp.rs), restated: the test crate does
/// not link the data plane.
mod tandem_dataplane_limits {
    pub const UTCP_MAX_CONNECTIONS: usize = 64;
    pub const UTCP_LISTEN_BACKLOG: usize = 4;
}
