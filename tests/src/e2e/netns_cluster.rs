//! A Tandem cluster in network namespaces: each data node (and the witness) runs its own
//! `tandem-control` (which starts its own `tandem-dataplane`) inside its namespace of a
//! [`Topology`]; the `tandem` CLI and the management API are used from the host's namespace,
//! as an administrator's workstation would; links between nodes are cut silently with
//! nftables drop rules inside one node's namespace (no RST, carrier stays up), which is the
//! failure of a switch or a cable further away.
//!
//! Addresses are the topology's (`10.210.x.y`, only inside the namespaces it made). Every
//! node uses the same ports in its own namespace: API 7000, portals 3260, sync links 7100,
//! heartbeat links 7200.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use super::host_io::{first_difference, Model, PathSpec};
use crate::netns::{Member, Topology};

pub const API_PORT: u16 = 7000;
pub const PORTAL_PORT: u16 = 3260;
pub const SYNC_PORT: u16 = 7100;
pub const HEARTBEAT_PORT: u16 = 7200;

// The loopback cluster's short HA timings (a lost partner is decided in about 1.3 s after the
// engine notices it), its way of finding the release binaries and its polling helper serve
// here too.
pub use super::cluster::{alive, binary, kill9, wait_until, HA_FLAGS};
pub use nix::sys::signal::Signal;

/// One `tandem-control` in a member's namespace.
pub struct ClusterNode {
    pub member: Member,
    pub name: String,
    pub dir: PathBuf,
    pub log: PathBuf,
    pub api: SocketAddr,
    /// Portals on `portal0` and `portal1` (none for a witness).
    pub portals: Vec<SocketAddr>,
    /// The member that runs the CLI and the iSCSI clients.
    pub admin: Member,
}

impl ClusterNode {
    /// Paths and addresses of a node; nothing is started.
    pub fn new(topo: &Topology, root: &Path, member: Member, name: &str) -> ClusterNode {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("create the node's data dir");
        let api = SocketAddr::from((topo.addr(member, "mgmt").expect("mgmt address"), API_PORT));
        let portals = match member {
            Member::Node(_) => ["portal0", "portal1"]
                .iter()
                .filter_map(|n| topo.addr(member, n).ok())
                .map(|ip| SocketAddr::from((ip, PORTAL_PORT)))
                .collect(),
            _ => Vec::new(),
        };
        ClusterNode {
            member,
            name: name.to_string(),
            log: root.join(format!("{name}.log")),
            dir,
            api,
            portals,
            admin: Member::Host(1),
        }
    }

    pub fn is_witness(&self) -> bool {
        self.member == Member::Witness
    }

    /// Starts the control service (`--role witness` for the witness member) and waits for
    /// its API (and, on a data node, its data plane and first portal, seen from the host).
    pub fn start(&self, topo: &mut Topology) {
        let control = binary("tandem-control").display().to_string();
        let dataplane = binary("tandem-dataplane").display().to_string();
        let dir = self.dir.display().to_string();
        let api = self.api.to_string();
        let mut argv: Vec<String> = vec![
            control,
            "--data-dir".into(),
            dir,
            "--api".into(),
            api,
            "--node-name".into(),
            self.name.clone(),
        ];
        if self.is_witness() {
            argv.extend(["--role".into(), "witness".into()]);
        } else {
            argv.extend(["--dataplane-bin".into(), dataplane]);
            for p in &self.portals {
                argv.extend(["--portal".into(), p.to_string()]);
            }
        }
        argv.extend(HA_FLAGS.iter().map(|s| s.to_string()));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        topo.spawn(
            self.member,
            &format!("control-{}", self.name),
            &argv,
            &[],
            Some(&self.log),
        )
        .expect("start tandem-control in its namespace");
        let t0 = Instant::now();
        self.wait_started(topo);
        eprintln!("{}: control service up in {:?}", self.name, t0.elapsed());
    }

    /// Waits for the API (and, on a data node, the data plane and first portal, seen from
    /// the host).
    fn wait_started(&self, topo: &Topology) {
        let witness = self.is_witness();
        wait_until(
            &format!("{}: API up (and data plane running)", self.name),
            Duration::from_secs(40),
            || {
                self.json(topo, &["status"])
                    .is_some_and(|s| witness || s["dataplane"]["state"] == "running")
            },
        );
        if let Some(&portal) = self.portals.first() {
            wait_until(
                &format!("{}: portal {portal} reachable from the host", self.name),
                Duration::from_secs(20),
                || {
                    topo.run_in(self.admin, move || {
                        TcpStream::connect_timeout(&portal, Duration::from_millis(300)).is_ok()
                    })
                    .unwrap_or(false)
                },
            );
        }
    }

    /// The name of this node's control service among the topology's processes.
    pub fn control_process(&self) -> String {
        format!("control-{}", self.name)
    }

    /// The control service's pid while it runs.
    pub fn control_pid(&self, topo: &Topology) -> Option<i32> {
        topo.pid(&self.control_process()).map(|p| p as i32)
    }

    /// The pid of the data plane the control service started last (its pid file), if that
    /// process still exists.
    pub fn dataplane_pid(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.dir.join("dataplane.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        alive(pid).then_some(pid)
    }

    /// kill -9 of the control service only (its data plane, a separate process, keeps
    /// running). Returns the instant of the kill.
    pub fn kill_control(&self, topo: &mut Topology) -> Instant {
        let t = Instant::now();
        topo.kill(&self.control_process(), Duration::ZERO)
            .expect("kill the control service");
        t
    }

    /// kill -9 of the data plane only (the control service keeps running and restarts it).
    /// Returns the killed pid and the instant of the kill.
    pub fn kill_dataplane(&self) -> (i32, Instant) {
        let pid = self.dataplane_pid().expect("a running data plane");
        let t = Instant::now();
        kill9(pid);
        (pid, t)
    }

    /// Starts the control service again with the same command line (after a kill) and
    /// waits for its API and data plane as [`ClusterNode::start`] does.
    pub fn restart(&self, topo: &mut Topology) {
        let t0 = Instant::now();
        topo.restart(&self.control_process(), Duration::ZERO)
            .expect("restart the control service");
        self.wait_started(topo);
        eprintln!(
            "{}: control service restarted in {:?}",
            self.name,
            t0.elapsed()
        );
    }

    /// SIGSTOP (`pause`) or SIGCONT of the whole node: its control service and its data
    /// plane. The pids signalled.
    pub fn signal_node(&self, topo: &Topology, sig: Signal) -> Vec<i32> {
        let pids: Vec<i32> = self
            .control_pid(topo)
            .into_iter()
            .chain(self.dataplane_pid())
            .collect();
        for &pid in &pids {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
                .unwrap_or_else(|e| panic!("signal {sig:?} to {pid}: {e}"));
        }
        pids
    }

    pub fn token_file(&self) -> PathBuf {
        self.dir.join("token")
    }

    /// `tandem ARGS` against this node's API, run in the admin's namespace.
    pub fn cli(&self, topo: &Topology, args: &[&str]) -> Output {
        let bin = binary("tandem").display().to_string();
        let api = format!("http://{}", self.api);
        let token = self.token_file().display().to_string();
        let mut argv = vec![bin.as_str(), "--api", &api, "--token-file", &token];
        argv.extend_from_slice(args);
        topo.exec(self.admin, &argv, Duration::from_secs(60))
            .expect("run tandem in the host namespace")
    }

    /// `tandem ARGS`, which must succeed; its stdout (printed).
    pub fn ok(&self, topo: &Topology, args: &[&str]) -> String {
        let out = self.cli(topo, args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        eprintln!("[{}] $ tandem {}\n{stdout}", self.name, args.join(" "));
        assert!(
            out.status.success(),
            "[{}] tandem {args:?} failed ({:?}): {}",
            self.name,
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// `tandem --json ARGS` parsed; None when it fails.
    pub fn json(&self, topo: &Topology, args: &[&str]) -> Option<serde_json::Value> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.cli(topo, &all);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// `GET path` on this node's API with its token, from the admin's namespace.
    pub fn api_get(&self, topo: &Topology, path: &str) -> Option<serde_json::Value> {
        let token = std::fs::read_to_string(self.token_file()).ok()?;
        http_get_json(topo, self.admin, self.api, path, token.trim())
    }

    /// The `replica list DEVICE --json` of this node.
    pub fn replicas(&self, topo: &Topology, device: &str) -> Option<serde_json::Value> {
        self.json(topo, &["replica", "list", device])
    }

    /// This node serves `device` and sees `expected` replicas synchronized, every sync link up.
    pub fn synchronized(&self, topo: &Topology, device: &str, expected: usize) -> bool {
        let Some(l) = self.replicas(topo, device) else {
            return false;
        };
        let Some(rs) = l["replicas"].as_array() else {
            return false;
        };
        rs.len() == expected
            && rs.iter().all(|r| {
                r["state"] == "synchronized"
                    && (r["local"] == false || r["serving"] == true)
                    && r["links"].as_array().is_some_and(|ls| {
                        // Heartbeat links show `unknown` here: the data plane reports only
                        // the sync links it carries.
                        ls.iter()
                            .filter(|x| x["kind"] == "sync")
                            .all(|x| x["state"] == "up")
                    })
            })
    }

    /// State of replica `of` (a node name) as this node reports it.
    pub fn state_of(&self, topo: &Topology, device: &str, of: &str) -> Option<String> {
        let l = self.replicas(topo, device)?;
        l["replicas"]
            .as_array()?
            .iter()
            .find(|r| r["node"] == of)
            .and_then(|r| r["state"].as_str().map(String::from))
    }

    /// The image file of a file device created in the data dir.
    pub fn image(&self, device: &str) -> PathBuf {
        self.dir.join(format!("{device}.img"))
    }

    pub fn iqn(&self, device: &str) -> String {
        format!("iqn.2026-11.io.tandem:{}-{device}", self.name)
    }

    /// The bytes of `device`'s image file, asserted to be `size` long.
    pub fn read_image(&self, device: &str, size: usize) -> Vec<u8> {
        let v = std::fs::read(self.image(device)).unwrap();
        assert_eq!(v.len(), size, "{}: image size", self.name);
        v
    }
}

/// `LOCAL_IP:PORT=PARTNER_IP:PORT` for a link between two members on `net`.
pub fn link(topo: &Topology, from: Member, to: Member, net: &str, port: u16) -> String {
    format!(
        "{}:{port}={}:{port}",
        topo.addr(from, net).expect("from address"),
        topo.addr(to, net).expect("to address")
    )
}

/// A minimal HTTP/1.1 GET with a bearer token from a member's namespace; the JSON body.
pub fn http_get_json(
    topo: &Topology,
    from: Member,
    addr: SocketAddr,
    path: &str,
    token: &str,
) -> Option<serde_json::Value> {
    use std::io::{Read, Write};
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    let raw = topo
        .run_in(from, move || -> std::io::Result<Vec<u8>> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(request.as_bytes())?;
            let mut buf = Vec::new();
            s.take(4 << 20).read_to_end(&mut buf)?;
            Ok(buf)
        })
        .ok()?
        .ok()?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        return None;
    }
    let mut body = raw[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body)?;
    }
    serde_json::from_slice(&body).ok()
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let len = usize::from_str_radix(std::str::from_utf8(&b[..eol]).ok()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if len == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..len)?);
        b = b.get(len + 2..)?;
    }
}

// ---- silent link cuts (nftables inside one member's namespace) ----

/// Drop every packet in and out of `member` on the named interfaces (its links on those
/// networks), silently. Replaces an earlier [`cut_networks`] of that member.
pub fn cut_networks(topo: &Topology, member: Member, nets: &[&str]) {
    let set = nets
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ");
    install_drop(
        topo,
        member,
        "tandem_cut_nets",
        &format!("iifname {{ {set} }} drop;"),
        &format!("oifname {{ {set} }} drop;"),
    );
}

/// Drop every packet between `member` and every address of `peers` (on every network),
/// silently; other members (the hosts) still reach `member`. Replaces an earlier
/// [`cut_peers`] of that member.
pub fn cut_peers(topo: &Topology, member: Member, peers: &[Member]) {
    let mut addrs = Vec::new();
    for p in peers {
        for net in topo.networks() {
            if let Ok(a) = topo.addr(*p, net) {
                addrs.push(a.to_string());
            }
        }
    }
    let set = addrs.join(", ");
    install_drop(
        topo,
        member,
        "tandem_cut_peers",
        &format!("ip saddr {{ {set} }} drop;"),
        &format!("ip daddr {{ {set} }} drop;"),
    );
}

/// Undo [`cut_networks`] and [`cut_peers`] on `member`.
pub fn heal_cuts(topo: &Topology, member: Member) {
    for table in ["tandem_cut_nets", "tandem_cut_peers"] {
        let _ = topo.exec(
            member,
            &["nft", "delete", "table", "inet", table],
            Duration::from_secs(10),
        );
    }
}

fn install_drop(topo: &Topology, member: Member, table: &str, input: &str, output: &str) {
    let ruleset = format!(
        "table inet {table} {{\n\
         \tchain in {{ type filter hook input priority -10; policy accept; {input} }}\n\
         \tchain out {{ type filter hook output priority -10; policy accept; {output} }}\n\
         }}\n"
    );
    let _ = topo.exec(
        member,
        &["nft", "delete", "table", "inet", table],
        Duration::from_secs(10),
    );
    let dir = tempfile::tempdir().expect("tempdir for the ruleset");
    let file = dir.path().join("cut.nft");
    std::fs::write(&file, ruleset).expect("write the ruleset");
    let path = file.display().to_string();
    let out = topo
        .exec(member, &["nft", "-f", &path], Duration::from_secs(10))
        .expect("run nft");
    assert!(
        out.status.success(),
        "nft -f in {member}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Prints the tail of each log when the test fails (every line of them, also on success,
/// with `TANDEM_TEST_LOGS=1`).
pub struct LogsOnFailure(pub Vec<PathBuf>);

impl Drop for LogsOnFailure {
    fn drop(&mut self) {
        // TANDEM_TEST_LOGS=1: the whole logs, also on success.
        let all = std::env::var_os("TANDEM_TEST_LOGS").is_some();
        if std::thread::panicking() || all {
            let keep = if all { usize::MAX } else { 80 };
            for p in &self.0 {
                let text = std::fs::read_to_string(p).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!(
                    "===== last {} lines of {} =====",
                    keep.min(lines.len()),
                    p.display()
                );
                for l in &lines[lines.len().saturating_sub(keep)..] {
                    eprintln!("{l}");
                }
            }
        }
    }
}

/// The failover strategy of a [`TwoNodeCluster`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Strategy {
    /// Heartbeat, node-a first.
    Heartbeat,
    /// Node majority with a witness node.
    WitnessNode,
}

/// How many sync and heartbeat links join the two data nodes of a [`TwoNodeCluster`]; link
/// `k` of a kind is on network `sync{k}` or `hb{k}`, an interface of its own in each node.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Links {
    /// 1 or 2.
    pub sync: usize,
    /// 0, 1 or 2.
    pub heartbeat: usize,
}

impl Links {
    /// What `ha_netns` and `ha_netns_faults` use: two sync links and one heartbeat link.
    pub const DEFAULT: Links = Links {
        sync: 2,
        heartbeat: 1,
    };
    /// Two of each (issue 11's "two sync links and two heartbeat links per node").
    pub const TWO_EACH: Links = Links {
        sync: 2,
        heartbeat: 2,
    };

    /// The topology has two networks of each kind.
    fn check(&self) {
        assert!(
            (1..=2).contains(&self.sync) && self.heartbeat <= 2,
            "unsupported link counts {self:?}"
        );
    }

    pub fn sync_networks(&self) -> &'static [&'static str] {
        &["sync0", "sync1"][..self.sync]
    }

    pub fn heartbeat_networks(&self) -> &'static [&'static str] {
        &["hb0", "hb1"][..self.heartbeat]
    }
}

/// Two data nodes (node-a, node-b: [`Member::Node`] 1 and 2), a witness node under node
/// majority, one host and two portals per node, with one replicated device over two sync
/// links and a heartbeat link (or the [`Links`] given to
/// [`TwoNodeCluster::start_with_links`]). Dropped in field order: logs printed on failure, processes
/// and namespaces torn down, then the data removed.
pub struct TwoNodeCluster {
    pub logs: LogsOnFailure,
    pub topo: Topology,
    pub a: ClusterNode,
    pub b: ClusterNode,
    pub witness: Option<ClusterNode>,
    pub device: String,
    _root: tempfile::TempDir,
}

impl TwoNodeCluster {
    /// Starts the nodes and configures `device` of `size` (e.g. "32MiB") through the CLI;
    /// waits until both copies are synchronized. None (with the reason printed) when network
    /// namespaces cannot be made here.
    pub fn start(
        strategy: Strategy,
        scratch_prefix: &str,
        device: &str,
        size: &str,
    ) -> Option<TwoNodeCluster> {
        Self::start_with_links(strategy, Links::DEFAULT, scratch_prefix, device, size)
    }

    /// As [`TwoNodeCluster::start`], with `links` sync and heartbeat links between the two
    /// data nodes (each on a network of its own: `sync0`, `sync1`, `hb0`, `hb1`).
    pub fn start_with_links(
        strategy: Strategy,
        links: Links,
        scratch_prefix: &str,
        device: &str,
        size: &str,
    ) -> Option<TwoNodeCluster> {
        links.check();
        if let Some(why) = crate::netns::unavailable() {
            eprintln!("SKIP: {why}");
            return None;
        }
        let with_witness = strategy == Strategy::WitnessNode;
        let mut topo = match Topology::builder()
            .nodes(2)
            .witness(with_witness)
            .hosts(1)
            .portals(2)
            .build()
        {
            Ok(t) => t,
            Err(e) => {
                eprintln!("SKIP: cannot create the network namespaces: {e}");
                return None;
            }
        };
        let root = tempfile::Builder::new()
            .prefix(scratch_prefix)
            .tempdir_in(super::procs::scratch_dir())
            .unwrap();
        let a = ClusterNode::new(&topo, root.path(), Member::Node(1), "node-a");
        let b = ClusterNode::new(&topo, root.path(), Member::Node(2), "node-b");
        let witness =
            with_witness.then(|| ClusterNode::new(&topo, root.path(), Member::Witness, "witness"));
        let mut logs = vec![a.log.clone(), b.log.clone()];
        logs.extend(witness.iter().map(|w| w.log.clone()));
        eprintln!("topology {} (namespaces {}-*)", topo.id(), topo.id());
        a.start(&mut topo);
        b.start(&mut topo);
        if let Some(w) = &witness {
            w.start(&mut topo);
        }
        let c = TwoNodeCluster {
            logs: LogsOnFailure(logs),
            topo,
            a,
            b,
            witness,
            device: device.to_string(),
            _root: root,
        };
        c.configure(strategy, links, size);
        Some(c)
    }

    /// device create, server add both ways (and the witness), replica add with the sync and
    /// heartbeat links of `links`; waits until both are synchronized.
    fn configure(&self, strategy: Strategy, links: Links, size: &str) {
        let (t, a, b) = (&self.topo, &self.a, &self.b);
        let device = self.device.as_str();
        a.ok(t, &["device", "create", device, "--size", size]);
        let add = |on: &ClusterNode, other: &ClusterNode| {
            let api = other.api.to_string();
            let token = other.token_file().display().to_string();
            on.ok(
                t,
                &["server", "add", &other.name, &api, "--token-file", &token],
            );
        };
        add(a, b);
        add(b, a);
        if let Some(w) = &self.witness {
            add(a, w);
            add(b, w);
        }
        let (na, nb) = (Member::Node(1), Member::Node(2));
        let mut args: Vec<String> = ["replica", "add", device, "--partner", "node-b"]
            .map(String::from)
            .to_vec();
        for net in links.sync_networks() {
            args.extend(["--sync-link".into(), link(t, na, nb, net, SYNC_PORT)]);
        }
        for net in links.heartbeat_networks() {
            args.extend([
                "--heartbeat-link".into(),
                link(t, na, nb, net, HEARTBEAT_PORT),
            ]);
        }
        args.extend(["--init".into(), "zeroed".into()]);
        match strategy {
            Strategy::Heartbeat => {
                args.extend(["--failover", "heartbeat", "--priority", "first"].map(String::from));
            }
            Strategy::WitnessNode => {
                args.extend(
                    ["--failover", "node-majority", "--witness", "witness"].map(String::from),
                );
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let t0 = Instant::now();
        a.ok(t, &args);
        let took = wait_until(
            "both nodes serving and synchronized after replica add",
            Duration::from_secs(60),
            || self.both_synchronized(),
        );
        eprintln!(
            "both synchronized {took:?} after replica add ({:?} in all)",
            t0.elapsed()
        );
        a.ok(t, &["replica", "list", device]);
    }

    pub fn both_synchronized(&self) -> bool {
        self.a.synchronized(&self.topo, &self.device, 2)
            && self.b.synchronized(&self.topo, &self.device, 2)
    }

    /// The iSCSI path to the device through `n`'s first portal.
    pub fn path(&self, n: &ClusterNode) -> PathSpec {
        PathSpec {
            node: n.name.clone(),
            portal: n.portals[0],
            iqn: n.iqn(&self.device),
        }
    }

    /// Every acknowledged write of `model` reads back from `host` through both nodes; both
    /// image files (`size` bytes) equal the model and each other. Only when no I/O runs.
    pub fn verify_all(&self, host: Member, model: &Model, size: usize, what: &str) {
        model.verify_through(&self.topo, host, &self.path(&self.a), what);
        model.verify_through(&self.topo, host, &self.path(&self.b), what);
        let ia = self.a.read_image(&self.device, size);
        let ib = self.b.read_image(&self.device, size);
        if let Some(lba) = first_difference(&ia, &ib) {
            panic!("{what}: the image files differ first at LBA {lba}");
        }
        if let Err(e) = model.check(0, &ia) {
            panic!("{what}: the image files differ from the acknowledged writes: {e}");
        }
        eprintln!("{what}: both image files byte-identical and holding every acknowledged write");
    }
}
