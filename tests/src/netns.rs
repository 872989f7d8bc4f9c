//! Network-namespace topologies for multi-node tests.
//!
//! A [`Topology`] is a set of Linux network namespaces made for one test:
//! N data nodes, optionally a witness, and one or more hosts. Every network
//! (`sync0`, `sync1`, `hb0`, `hb1`, `mgmt`, `portal0`..) is a bridge in a
//! private "switch" namespace; every member joins a network through a veth
//! pair whose member end is named after the network (`sync0` inside node 1)
//! and carries the member's address on that network.
//!
//! | network      | members                 | subnet            |
//! |--------------|-------------------------|-------------------|
//! | `sync0/1`    | data nodes              | 10.210.{0,1}.0/24 |
//! | `hb0/1`      | data nodes, witness     | 10.210.{2,3}.0/24 |
//! | `mgmt`       | everyone                | 10.210.4.0/24     |
//! | `portalK`    | data nodes, hosts       | 10.210.{10+K}.0/24|
//!
//! Node `i` (1-based) is `.i`, the witness `.100`, host `j` `.200+j`.
//! These addresses exist only inside the namespaces of the topology: no
//! namespace has a default route or any link to the machine's own network,
//! so nothing a test does can leave them.
//!
//! Faults: [`Topology::cut`] / [`Topology::restore`] one member's link (the
//! switch port is taken down, the member sees its carrier go); [`Topology::partition`]
//! splits every network's switch into groups that cannot reach each other, and
//! [`Topology::heal`] joins them again; [`Topology::netem`] adds delay or loss
//! (`tc netem`; [`Error::Unsupported`] on a kernel without `sch_netem`).
//! Processes: [`Topology::spawn`], [`Topology::kill`], [`Topology::restart`],
//! [`Topology::exec`]. Everything is torn down when the topology is dropped —
//! on success, on failure and on panic — and namespaces left by a test
//! process that was killed are removed by the next [`Topology::build`].
//!
//! Needs root and `ip` (iproute2).

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const NAME_PREFIX: &str = "tnt";
static SEQ: AtomicU32 = AtomicU32::new(0);

/// One member of a topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Member {
    /// Data node, 1-based.
    Node(u32),
    Witness,
    /// Host (initiator), 1-based.
    Host(u32),
}

impl Member {
    fn short(self) -> String {
        match self {
            Member::Node(i) => format!("n{i}"),
            Member::Witness => "w".to_string(),
            Member::Host(j) => format!("h{j}"),
        }
    }
    fn host_octet(self) -> u8 {
        match self {
            Member::Node(i) => i as u8,
            Member::Witness => 100,
            Member::Host(j) => 200 + j as u8,
        }
    }
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Member::Node(i) => write!(f, "node{i}"),
            Member::Witness => write!(f, "witness"),
            Member::Host(j) => write!(f, "host{j}"),
        }
    }
}

#[derive(Debug)]
pub enum Error {
    /// A command failed; the message has its arguments and stderr.
    Command(String),
    /// The running kernel or machine cannot do this (e.g. no `sch_netem`).
    Unsupported(String),
    /// No such member, network or process.
    NotFound(String),
    Io(std::io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Command(m) => write!(f, "command failed: {m}"),
            Error::Unsupported(m) => write!(f, "unsupported here: {m}"),
            Error::NotFound(m) => write!(f, "not found: {m}"),
            Error::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Why a test cannot run here (not root, no `ip`, no network namespaces), or
/// `None` when it can. Tests print the reason and return early.
pub fn unavailable() -> Option<String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .unwrap_or_default();
    if uid != "0" {
        return Some("network-namespace tests need root".into());
    }
    if Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        return Some("`ip` (iproute2) is missing: tests/lab/install-deps.sh".into());
    }
    None
}

fn run(args: &[&str]) -> Result<Output> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Command(format!("{}: {e}", args.join(" "))))?;
    if !out.status.success() {
        return Err(Error::Command(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out)
}

fn ip(args: &[&str]) -> Result<()> {
    let mut v = vec!["ip"];
    v.extend_from_slice(args);
    run(&v).map(|_| ())
}

/// Network names in creation order with their subnet's third octet.
fn networks(portals: u32) -> Vec<(String, u8)> {
    let mut v: Vec<(String, u8)> = vec![
        ("sync0".into(), 0),
        ("sync1".into(), 1),
        ("hb0".into(), 2),
        ("hb1".into(), 3),
        ("mgmt".into(), 4),
    ];
    for k in 0..portals {
        v.push((format!("portal{k}"), 10 + k as u8));
    }
    v
}

fn joins(member: Member, net: &str) -> bool {
    match member {
        Member::Node(_) => true,
        Member::Witness => net.starts_with("hb") || net == "mgmt",
        Member::Host(_) => net.starts_with("portal") || net == "mgmt",
    }
}

/// Builder for a [`Topology`].
#[derive(Clone, Debug)]
pub struct Builder {
    nodes: u32,
    witness: bool,
    hosts: u32,
    portals: u32,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            nodes: 2,
            witness: true,
            hosts: 1,
            portals: 2,
        }
    }
}

impl Builder {
    pub fn nodes(mut self, n: u32) -> Self {
        assert!((1..=50).contains(&n), "1..=50 data nodes");
        self.nodes = n;
        self
    }
    pub fn witness(mut self, yes: bool) -> Self {
        self.witness = yes;
        self
    }
    pub fn hosts(mut self, n: u32) -> Self {
        assert!(n <= 50, "at most 50 hosts");
        self.hosts = n;
        self
    }
    /// Host-facing portal networks per node (`portal0`..).
    pub fn portals(mut self, n: u32) -> Self {
        assert!((1..=8).contains(&n), "1..=8 portals");
        self.portals = n;
        self
    }
    pub fn build(self) -> Result<Topology> {
        Topology::build(self)
    }
}

struct Proc {
    member: Member,
    argv: Vec<String>,
    envs: Vec<(String, String)>,
    log: Option<std::path::PathBuf>,
    child: Option<Child>,
}

/// A set of namespaces made for one test; dropped = torn down.
pub struct Topology {
    id: String,
    switch_ns: String,
    members: Vec<Member>,
    nets: Vec<(String, u8)>,
    procs: BTreeMap<String, Proc>,
    partitioned: bool,
}

impl Topology {
    pub fn builder() -> Builder {
        Builder::default()
    }

    fn build(b: Builder) -> Result<Topology> {
        if let Some(why) = unavailable() {
            return Err(Error::Unsupported(why));
        }
        remove_stale_namespaces();
        let id = format!(
            "{NAME_PREFIX}{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let mut members: Vec<Member> = (1..=b.nodes).map(Member::Node).collect();
        if b.witness {
            members.push(Member::Witness);
        }
        members.extend((1..=b.hosts).map(Member::Host));
        let mut topo = Topology {
            switch_ns: format!("{id}-sw"),
            id,
            members,
            nets: networks(b.portals),
            procs: BTreeMap::new(),
            partitioned: false,
        };
        // From here on Drop cleans up whatever was made.
        topo.create()?;
        Ok(topo)
    }

    fn create(&mut self) -> Result<()> {
        let sw = self.switch_ns.clone();
        ip(&["netns", "add", &sw])?;
        ip(&["-n", &sw, "link", "set", "lo", "up"])?;
        // The switch namespace forwards frames only: no IP on its ports.
        run(&[
            "ip",
            "netns",
            "exec",
            &sw,
            "sysctl",
            "-q",
            "-w",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ])?;
        for m in self.members.clone() {
            let ns = self.ns(m);
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        for (net, _) in self.nets.clone() {
            let br = format!("br-{net}");
            ip(&[
                "-n",
                &sw,
                "link",
                "add",
                &br,
                "type",
                "bridge",
                "forward_delay",
                "0",
            ])?;
            ip(&["-n", &sw, "link", "set", &br, "up"])?;
            for m in self.members.clone() {
                if !joins(m, &net) {
                    continue;
                }
                let ns = self.ns(m);
                let port = self.port(m, &net);
                let addr = format!("{}/24", self.addr(m, &net)?);
                ip(&[
                    "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", &net, "netns",
                    &ns,
                ])?;
                ip(&["-n", &sw, "link", "set", &port, "master", &br])?;
                ip(&["-n", &sw, "link", "set", &port, "up"])?;
                ip(&["-n", &ns, "addr", "add", &addr, "dev", &net])?;
                ip(&["-n", &ns, "link", "set", &net, "up"])?;
            }
        }
        Ok(())
    }

    /// The topology's unique name (prefix of all its namespaces).
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Network names, e.g. `["sync0", "sync1", "hb0", "hb1", "mgmt", "portal0", "portal1"]`.
    pub fn networks(&self) -> Vec<&str> {
        self.nets.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// The namespace of a member (for `ip netns exec`).
    pub fn ns(&self, m: Member) -> String {
        format!("{}-{}", self.id, m.short())
    }

    /// The switch-side port of a member's link (in the switch namespace).
    fn port(&self, m: Member, net: &str) -> String {
        let short = net
            .replace("portal", "p")
            .replace("sync", "s")
            .replace("mgmt", "m");
        format!("{short}-{}", m.short())
    }

    fn check_link(&self, m: Member, net: &str) -> Result<()> {
        if !self.members.contains(&m) {
            return Err(Error::NotFound(format!("{m} is not in this topology")));
        }
        if !self.nets.iter().any(|(n, _)| n == net) || !joins(m, net) {
            return Err(Error::NotFound(format!("{m} has no link on network {net}")));
        }
        Ok(())
    }

    /// A member's address on a network (the link inside its namespace is
    /// named after the network).
    pub fn addr(&self, m: Member, net: &str) -> Result<Ipv4Addr> {
        self.check_link(m, net)?;
        let third = self
            .nets
            .iter()
            .find(|(n, _)| n == net)
            .map(|(_, o)| *o)
            .unwrap_or(0);
        Ok(Ipv4Addr::new(10, 210, third, m.host_octet()))
    }

    /// Cut one member's link on one network (its switch port goes down; the
    /// member loses carrier on that link). Idempotent.
    pub fn cut(&self, m: Member, net: &str) -> Result<()> {
        self.check_link(m, net)?;
        ip(&[
            "-n",
            &self.switch_ns,
            "link",
            "set",
            &self.port(m, net),
            "down",
        ])
    }

    /// Undo [`Topology::cut`].
    pub fn restore(&self, m: Member, net: &str) -> Result<()> {
        self.check_link(m, net)?;
        ip(&[
            "-n",
            &self.switch_ns,
            "link",
            "set",
            &self.port(m, net),
            "up",
        ])
    }

    /// Split every network into the given groups: members of different
    /// groups can no longer reach each other on any network; members not
    /// named stay with the first group. Replaces an earlier partition.
    pub fn partition(&mut self, groups: &[&[Member]]) -> Result<()> {
        self.heal()?;
        for (g, group) in groups.iter().enumerate().skip(1) {
            for (net, _) in self.nets.clone() {
                let br = format!("br-{net}-g{g}");
                let members: Vec<Member> =
                    group.iter().copied().filter(|m| joins(*m, &net)).collect();
                if members.is_empty() {
                    continue;
                }
                ip(&[
                    "-n",
                    &self.switch_ns,
                    "link",
                    "add",
                    &br,
                    "type",
                    "bridge",
                    "forward_delay",
                    "0",
                ])?;
                ip(&["-n", &self.switch_ns, "link", "set", &br, "up"])?;
                self.partitioned = true;
                for m in members {
                    self.check_link(m, &net)?;
                    ip(&[
                        "-n",
                        &self.switch_ns,
                        "link",
                        "set",
                        &self.port(m, &net),
                        "master",
                        &br,
                    ])?;
                }
            }
        }
        Ok(())
    }

    /// Undo [`Topology::partition`]: every port back on its network's switch.
    pub fn heal(&mut self) -> Result<()> {
        if !self.partitioned {
            return Ok(());
        }
        for (net, _) in self.nets.clone() {
            let br = format!("br-{net}");
            for m in self.members.clone() {
                if joins(m, &net) {
                    ip(&[
                        "-n",
                        &self.switch_ns,
                        "link",
                        "set",
                        &self.port(m, &net),
                        "master",
                        &br,
                    ])?;
                }
            }
        }
        // Delete the group bridges.
        let out = run(&[
            "ip",
            "-n",
            &self.switch_ns,
            "-o",
            "link",
            "show",
            "type",
            "bridge",
        ])?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(name) = line.split(':').nth(1).map(|s| s.trim().to_string()) {
                if name.contains("-g") {
                    ip(&["-n", &self.switch_ns, "link", "del", &name])?;
                }
            }
        }
        self.partitioned = false;
        Ok(())
    }

    /// Add delay and/or loss to one member's link, in both directions
    /// (`tc netem` on both ends of its veth: the round trip gets twice the
    /// delay). `None, None` clears it. On a kernel without `sch_netem`, loss
    /// alone falls back to nftables (`numgen random` drop rules in the
    /// member's namespace, both directions) and delay is
    /// [`Error::Unsupported`].
    pub fn netem(
        &self,
        m: Member,
        net: &str,
        delay: Option<Duration>,
        loss_percent: Option<f32>,
    ) -> Result<()> {
        self.check_link(m, net)?;
        let ends = [
            (self.switch_ns.clone(), self.port(m, net)),
            (self.ns(m), net.to_string()),
        ];
        let table = format!("tandem_loss_{net}");
        if delay.is_none() && loss_percent.is_none() {
            for (ns, dev) in &ends {
                // Clearing a link without netem is not an error.
                let _ = run(&["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"]);
            }
            let _ = run(&[
                "ip",
                "netns",
                "exec",
                &self.ns(m),
                "nft",
                "delete",
                "table",
                "inet",
                &table,
            ]);
            return Ok(());
        }
        let mut spec: Vec<String> = Vec::new();
        if let Some(d) = delay {
            spec.push("delay".into());
            spec.push(format!("{}us", d.as_micros()));
        }
        if let Some(l) = loss_percent {
            spec.push("loss".into());
            spec.push(format!("{l}%"));
        }
        for (ns, dev) in &ends {
            let mut args: Vec<&str> = vec![
                "tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", "netem",
            ];
            args.extend(spec.iter().map(String::as_str));
            match run(&args) {
                Ok(_) => {}
                Err(Error::Command(msg)) if msg.contains("qdisc kind is unknown") => {
                    return match (delay, loss_percent) {
                        (None, Some(loss)) => self.nft_loss(m, net, &table, loss),
                        _ => Err(Error::Unsupported(format!(
                            "this kernel has no sch_netem (tc netem), so no delay: {msg}"
                        ))),
                    };
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn nft_loss(&self, m: Member, net: &str, table: &str, loss: f32) -> Result<()> {
        let per_10k = (loss.clamp(0.0, 100.0) * 100.0).round() as u32;
        let matcher = if per_10k >= 10000 {
            String::new()
        } else {
            format!("numgen random mod 10000 < {per_10k} ")
        };
        let ruleset = format!(
            "table inet {table} {{\n\
             \tchain in {{ type filter hook input priority -10; policy accept; iifname \"{net}\" {matcher}drop; }}\n\
             \tchain out {{ type filter hook output priority -10; policy accept; oifname \"{net}\" {matcher}drop; }}\n\
             }}\n"
        );
        let ns = self.ns(m);
        let _ = run(&[
            "ip", "netns", "exec", &ns, "nft", "delete", "table", "inet", table,
        ]);
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("loss.nft");
        std::fs::write(&file, ruleset)?;
        let path = file.to_string_lossy().to_string();
        match run(&["ip", "netns", "exec", &ns, "nft", "-f", &path]) {
            Ok(_) => Ok(()),
            Err(Error::Command(msg)) if msg.contains("No such file") => Err(Error::Unsupported(
                format!("no sch_netem, and no nft for the fallback (install nftables): {msg}"),
            )),
            Err(e) => Err(e),
        }
    }

    /// Run `f` on a new thread that has entered a member's network namespace
    /// (sockets it makes belong to that namespace, and stay there when
    /// handed back). The calling thread is not moved.
    pub fn run_in<T, F>(&self, m: Member, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        if !self.members.contains(&m) {
            return Err(Error::NotFound(format!("{m}")));
        }
        let path = format!("/run/netns/{}", self.ns(m));
        let file = std::fs::File::open(&path)?;
        std::thread::spawn(move || -> Result<T> {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| Error::Command(format!("setns {path}: {e}")))?;
            Ok(f())
        })
        .join()
        .map_err(|_| Error::Command("thread inside the namespace panicked".into()))?
    }

    /// Whether `from` can open a TCP connection to `to`'s address on `net`
    /// within `timeout` (a listener is put up in `to`'s namespace for the
    /// probe). Needs no tool inside the namespaces.
    pub fn can_connect(
        &self,
        from: Member,
        to: Member,
        net: &str,
        timeout: Duration,
    ) -> Result<bool> {
        let addr = std::net::SocketAddr::from((self.addr(to, net)?, 0));
        let listener = self.run_in(to, move || std::net::TcpListener::bind(addr))??;
        let target = listener.local_addr()?;
        let ok = self.run_in(from, move || {
            std::net::TcpStream::connect_timeout(&target, timeout).is_ok()
        })?;
        drop(listener);
        Ok(ok)
    }

    /// Run a command to completion inside a member's namespace; killed after
    /// `timeout`. Returns its output whatever its exit status.
    pub fn exec(&self, m: Member, argv: &[&str], timeout: Duration) -> Result<Output> {
        if !self.members.contains(&m) {
            return Err(Error::NotFound(format!("{m}")));
        }
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns(m)])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let start = Instant::now();
        loop {
            if child.try_wait()?.is_some() {
                return Ok(child.wait_with_output()?);
            }
            if start.elapsed() >= timeout {
                let _ = child.kill();
                let mut out = child.wait_with_output()?;
                out.stderr
                    .extend_from_slice(format!("\n(killed after {timeout:?})").as_bytes());
                return Ok(out);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Start a long-running process in a member's namespace under `name`
    /// (unique in the topology). Its stdout and stderr go to `log` if given.
    pub fn spawn(
        &mut self,
        m: Member,
        name: &str,
        argv: &[&str],
        envs: &[(&str, &str)],
        log: Option<&Path>,
    ) -> Result<u32> {
        if !self.members.contains(&m) {
            return Err(Error::NotFound(format!("{m}")));
        }
        if self
            .procs
            .get(name)
            .map(|p| p.child.is_some())
            .unwrap_or(false)
        {
            return Err(Error::Command(format!("process {name} is already running")));
        }
        let mut p = Proc {
            member: m,
            argv: argv.iter().map(|s| s.to_string()).collect(),
            envs: envs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            log: log.map(Path::to_path_buf),
            child: None,
        };
        let pid = self.start(&mut p)?;
        self.procs.insert(name.to_string(), p);
        Ok(pid)
    }

    fn start(&self, p: &mut Proc) -> Result<u32> {
        let mut cmd = Command::new("ip");
        // `ip netns exec` execs the program: the child's pid is the program's.
        cmd.args(["netns", "exec", &self.ns(p.member)])
            .args(&p.argv)
            .stdin(Stdio::null());
        for (k, v) in &p.envs {
            cmd.env(k, v);
        }
        match &p.log {
            Some(path) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?;
                cmd.stdout(f.try_clone()?).stderr(f);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let child = cmd.spawn()?;
        let pid = child.id();
        p.child = Some(child);
        Ok(pid)
    }

    /// The pid of the named process while it runs (for signals a test sends itself, such
    /// as SIGSTOP and SIGCONT).
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.procs
            .get(name)
            .and_then(|p| p.child.as_ref())
            .map(Child::id)
    }

    /// Whether the named process is still running.
    pub fn running(&mut self, name: &str) -> bool {
        match self.procs.get_mut(name).and_then(|p| p.child.as_mut()) {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kill the named process: SIGTERM, then SIGKILL after `grace`
    /// (`Duration::ZERO`: SIGKILL at once, like a node crash).
    pub fn kill(&mut self, name: &str, grace: Duration) -> Result<()> {
        let p = self
            .procs
            .get_mut(name)
            .ok_or_else(|| Error::NotFound(format!("process {name}")))?;
        if let Some(mut child) = p.child.take() {
            stop_child(&mut child, grace);
        }
        Ok(())
    }

    /// Kill (as [`Topology::kill`]) and start the named process again with
    /// the same command line. Returns the new pid.
    pub fn restart(&mut self, name: &str, grace: Duration) -> Result<u32> {
        self.kill(name, grace)?;
        let mut p = self
            .procs
            .remove(name)
            .ok_or_else(|| Error::NotFound(format!("process {name}")))?;
        let r = self.start(&mut p);
        self.procs.insert(name.to_string(), p);
        r
    }

    /// Kill every process of a member (all processes spawned there by name).
    pub fn kill_member(&mut self, m: Member, grace: Duration) {
        for p in self.procs.values_mut().filter(|p| p.member == m) {
            if let Some(mut child) = p.child.take() {
                stop_child(&mut child, grace);
            }
        }
    }

    fn teardown(&mut self) {
        for p in self.procs.values_mut() {
            if let Some(mut child) = p.child.take() {
                stop_child(&mut child, Duration::from_millis(500));
            }
        }
        for m in self.members.clone() {
            kill_namespace_pids(&self.ns(m));
            let _ = run(&["ip", "netns", "del", &self.ns(m)]);
        }
        kill_namespace_pids(&self.switch_ns);
        let _ = run(&["ip", "netns", "del", &self.switch_ns]);
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn stop_child(child: &mut Child, grace: Duration) {
    if grace > Duration::ZERO {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let start = Instant::now();
        while start.elapsed() < grace {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// SIGKILL whatever still runs in a namespace (processes a test started
/// there without [`Topology::spawn`], e.g. daemons that forked).
fn kill_namespace_pids(ns: &str) {
    if let Ok(out) = run(&["ip", "netns", "pids", ns]) {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill")
                .args(["-KILL", pid])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Remove namespaces of earlier test processes that no longer exist (a
/// test binary killed by SIGKILL cannot run its Drop guards).
fn remove_stale_namespaces() {
    let Ok(out) = run(&["ip", "netns", "list"]) else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(NAME_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            kill_namespace_pids(name);
            let _ = run(&["ip", "netns", "del", name]);
        }
    }
}
