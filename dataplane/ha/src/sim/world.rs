//! The simulated cluster: nodes (engine + disk + persisted metadata), links, the authority,
//! host clients, the fault schedule, and the final checks.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt::Write as _;

use super::checker::{check_block, BlockOp, Event as CheckEvent};
use super::pr_model::{decide, holder, LuDecision, PrCmd};
use super::rng::Rng;
use crate::authority::{Authority, AuthorityBug, ToAuthority, Update};
use crate::engine::{Engine, Options, PlantedBug};
use crate::generation::ReplicaMeta;
use crate::io::{HostCmd, HostStatus, Input, LocalOp, LocalResult, Output};
use crate::journal::{JournalKind, PersistedJournal};
use crate::membership::{EpochConfig, MemberState};
use crate::msg::Envelope;
use crate::pacing::PacingConfig;
use crate::reservations::PrVersion;
use crate::types::{BlockRange, Epoch, Geometry, HostTag, IoTag, NodeId, Time};

/// Per-block values: every write stores its unique id in each block it covers.
type Data = Vec<u64>;

const US: u64 = 1_000;
const MS: u64 = 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Two data nodes; the authority is always reachable (heartbeat links outlive the sync
    /// links), so only sync links, nodes and power fail.
    TwoNodes,
    /// Two data nodes and a witness that can be cut off or lose its state.
    TwoNodesWitness,
    /// Three data nodes.
    ThreeNodes,
}

impl Shape {
    pub fn parse(s: &str) -> Option<Shape> {
        match s {
            "2n" => Some(Shape::TwoNodes),
            "2w" => Some(Shape::TwoNodesWitness),
            "3n" => Some(Shape::ThreeNodes),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Shape::TwoNodes => "2n",
            Shape::TwoNodesWitness => "2w",
            Shape::ThreeNodes => "3n",
        }
    }

    fn data_nodes(self) -> usize {
        if self == Shape::ThreeNodes {
            3
        } else {
            2
        }
    }
}

#[derive(Clone, Debug)]
pub struct SimParams {
    pub shape: Shape,
    pub seed: u64,
    pub bug: Option<PlantedBug>,
    pub authority_bug: Option<AuthorityBug>,
    /// Simulated time with clients and faults active.
    pub active_ms: u64,
    pub trace: bool,
    /// Clients also send LOGICAL UNIT RESETs (half of the flushes become one). Off by
    /// default: it draws from the RNG, so it would change every other seed's run.
    pub task_mgmt: bool,
    /// The nodes' sync journal. Not `Ram` by default changes no draw from the RNG, so a
    /// seed runs the same faults and clients with every kind.
    pub journal: JournalKind,
    /// Clients also take and release a WRITE EXCLUSIVE persistent reservation, and each
    /// node's LU refuses other clients' writes while one holds it (see `pr_model`). Off by
    /// default for the same reason as `task_mgmt`.
    pub pr: bool,
}

impl SimParams {
    pub fn new(shape: Shape, seed: u64) -> Self {
        SimParams {
            shape,
            seed,
            bug: None,
            authority_bug: None,
            active_ms: 300,
            trace: false,
            task_mgmt: false,
            journal: JournalKind::Ram,
            pr: false,
        }
    }

    /// The command that replays this run with a trace.
    pub fn replay_command(&self) -> String {
        let mut c = format!(
            "cargo run --release -p tandem-ha --bin tandem-ha-sim -- --shape {} --seed {} --active-ms {} --trace",
            self.shape.name(),
            self.seed,
            self.active_ms
        );
        if let Some(b) = self.bug {
            let _ = write!(c, " --bug {b:?}");
        }
        if let Some(b) = self.authority_bug {
            let _ = write!(c, " --authority-bug {b:?}");
        }
        if self.task_mgmt {
            c.push_str(" --task-mgmt");
        }
        match self.journal {
            JournalKind::Ram => {}
            JournalKind::DiskFailure => c.push_str(" --journal disk-failure"),
            JournalKind::DiskContinuous => c.push_str(" --journal disk-continuous"),
        }
        if self.pr {
            c.push_str(" --pr");
        }
        c
    }
}

#[derive(Clone, Debug, Default)]
pub struct SimReport {
    pub ops_good: u64,
    pub ops_not_ready: u64,
    pub ops_unknown: u64,
    pub faults: u64,
    pub configurations: u64,
    pub inconclusive_blocks: u64,
    pub sim_time_ms: u64,
    /// Host writes refused NOT READY at the bound on held writes (contract j).
    pub refused_over_bound: u64,
    /// Resyncs started that copy only dirty regions, and ones that copy every region.
    pub fast_syncs: u64,
    pub full_syncs: u64,
    /// LOGICAL UNIT RESETs answered GOOD, and those of them checked against every partner
    /// (no configuration change at the origin meanwhile).
    pub resets_good: u64,
    pub resets_checked: u64,
    /// Reservation changes answered GOOD, commands answered RESERVATION CONFLICT by an LU,
    /// and writes answered GOOD that were checked against the reservation state.
    pub pr_changes_good: u64,
    pub pr_conflicts: u64,
    pub pr_writes_checked: u64,
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    CutLink(usize, usize),
    HealLink(usize, usize),
    CutAuthority(usize),
    HealAuthority(usize),
    Crash(usize),
    Restart(usize),
    Pause(usize),
    Resume(usize),
    PowerLoss { amnesia: bool },
    PowerBack,
}

#[derive(Clone, Debug)]
enum Ev {
    Host {
        node: usize,
        inc: u32,
        tag: HostTag,
        cmd: HostCmd<Data>,
    },
    Peer {
        to: usize,
        inc: u32,
        from: usize,
        env: Envelope<Data>,
        link: u64,
    },
    Local {
        node: usize,
        inc: u32,
        io: IoTag,
    },
    Meta {
        node: usize,
        inc: u32,
        meta: ReplicaMeta,
    },
    ToAuth {
        from: usize,
        msg: ToAuthority,
        link: u64,
    },
    FromAuth {
        to: usize,
        inc: u32,
        update: Update,
        link: u64,
    },
    Tick {
        node: usize,
        inc: u32,
    },
    LeaseRound {
        node: usize,
        inc: u32,
    },
    ClientNext {
        client: usize,
    },
    ClientTimeout {
        client: usize,
        op: usize,
    },
    AuthDue,
    Fault(Fault),
}

struct Scheduled {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq)) // min-heap
    }
}

struct Node {
    id: NodeId,
    engine: Option<Engine<Data>>,
    inc: u32,
    disk: Vec<u64>,
    meta_disk: ReplicaMeta,
    paused: bool,
    deferred: Vec<Ev>,
    in_flight: BTreeMap<IoTag, LocalOp<Data>>,
    meta_in_flight: Vec<ReplicaMeta>,
    /// The disk journal as durable now (written synchronously: `Output::PersistJournal`
    /// comes first among a step's outputs, and a crash never falls inside a step).
    journal_disk: PersistedJournal,
    /// Task management functions a partner carried here (`Output::TaskMgmt`), ever.
    task_mgmt_applied: u64,
    /// The LU's reservation state (the last `Output::PrApply`, or the APTPL store at start)
    /// and that store (saved at every apply, as the replica thread does before its ack).
    pr_lu: (PrVersion, Vec<u8>),
    pr_disk: Vec<u8>,
    /// Every state this node's LU applied, in order (for the checks; kept across crashes).
    pr_log: Vec<(PrVersion, Vec<u8>)>,
}

#[derive(Clone, Debug)]
enum Kind {
    Read,
    Write {
        value: u64,
    },
    Caw {
        expect: u64,
        value: u64,
    },
    Flush,
    /// LOGICAL UNIT RESET; `watch` is filled when it reaches the engine (see
    /// `check_task_mgmt`).
    LunReset,
    /// PERSISTENT RESERVE OUT, RESERVE / RELEASE of a WRITE EXCLUSIVE reservation.
    Reserve,
    Release,
}

#[derive(Clone, Debug)]
enum Outcome {
    Pending,
    Good(Option<Data>),
    Miscompare,
    NotReady,
    Unknown,
    /// RESERVATION CONFLICT from the LU (the command did nothing).
    Conflict,
}

/// The reservation side of a host operation.
#[derive(Clone, Debug, Default)]
struct PrTrack {
    /// A change: its base, the state it asks for, where the origin's log stood when it was
    /// submitted, and how often the LU recomputed it (stale base).
    change: Option<(PrVersion, Vec<u8>, usize)>,
    retries: u32,
    /// A write: the LU's version when it let the write through, the newest version any
    /// change answered GOOD had by then, and whether that change's state refuses the write.
    admitted: Option<(PrVersion, PrVersion, bool)>,
}

#[derive(Clone, Debug)]
struct HostOp {
    client: usize,
    node: usize,
    kind: Kind,
    range: BlockRange,
    invoke: u64,
    response: u64,
    outcome: Outcome,
    pr: PrTrack,
}

/// What a reset's GOOD must imply (see `check_task_mgmt`).
struct ResetWatch {
    epoch: Epoch,
    partners: Vec<(usize, u32, u64)>,
}

struct Link {
    up: bool,
    gen: u64,
    last_delivery: u64,
}

struct World {
    p: SimParams,
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Scheduled>,
    geometry: Geometry,
    opts: Options,
    nodes: Vec<Node>,
    links: Vec<Vec<Link>>,
    auth_links: Vec<Link>,
    authority: Authority,
    history: Vec<HostOp>,
    /// Resets that reached an engine: the origin's epoch then, and each synchronized
    /// partner with its incarnation and applied count at that moment.
    resets: BTreeMap<usize, ResetWatch>,
    client_busy: Vec<Option<usize>>,
    client_last_seen: Vec<BTreeMap<u64, u64>>,
    clients_active: bool,
    faults_active: bool,
    next_value: u64,
    report: SimReport,
    trace: Vec<String>,
    failure: Option<String>,
    /// The newest version of a reservation change answered GOOD so far, and its state.
    pr_good_max: PrVersion,
    pr_good_state: Vec<u8>,
}

const NUM_BLOCKS: u64 = 48;
const REGION_BLOCKS: u32 = 4;
const HOT_BLOCKS: u64 = 6;
const CLIENTS: usize = 4;
const LEASE_NS: u64 = 30 * MS;
const MARGIN_NS: u64 = 5 * MS;
const PEER_TIMEOUT_NS: u64 = 8 * MS;
const CLIENT_TIMEOUT_NS: u64 = 120 * MS;
const TICK_NS: u64 = 2 * MS;
const TIGHT_HELD_WRITES: usize = 3;
const PACING_TARGET_NS: u64 = 300 * US;
const PACING_INTERVAL_NS: u64 = 4 * MS;
const TIGHT_HELD_BYTES: u64 = 8 * 512;

/// Run one seed. `Err` carries the failure, the replay command and (with `trace`) the trace.
pub fn run(p: &SimParams) -> Result<SimReport, String> {
    let n = p.shape.data_nodes();
    let ids: Vec<NodeId> = (1..=n as u8).map(NodeId).collect();
    let initial = EpochConfig::initial(&ids);
    let geometry = Geometry {
        block_size_bytes: 512,
        num_blocks: NUM_BLOCKS,
        region_blocks: REGION_BLOCKS,
    };
    // One seed in four holds very few writes (contract j): the bound is reached whenever a
    // partner is slow or silent and sometimes under plain load, and the cluster must stay
    // correct while writes are refused and partners are declared out early. Chosen from the
    // seed without drawing from the RNG, so other seeds' runs are unchanged.
    let tight = p.seed % 4 == 1;
    // One seed in three paces its resyncs by host latency with a target the simulated disks
    // and links often miss, so windows shrink to the floor and resyncs must still finish.
    let paced = p.seed % 3 == 2;
    let opts = Options {
        peer_timeout_ns: PEER_TIMEOUT_NS,
        resync_parallel: 2,
        resync_pacing: paced.then_some(PacingConfig {
            latency_target_ns: PACING_TARGET_NS,
            interval_ns: PACING_INTERVAL_NS,
        }),
        planted_bug: p.bug,
        journal: p.journal,
        // Few hot regions (of 12 in the simulated device), so regions leave the activity
        // log all the time.
        activity_regions: 6,
        held_writes_max: if tight { TIGHT_HELD_WRITES } else { 1000 },
        held_bytes_max: if tight { TIGHT_HELD_BYTES } else { 64 << 20 },
        ..Options::default()
    };
    let nodes = ids
        .iter()
        .map(|&id| Node {
            id,
            engine: Some(Engine::new_device(id, geometry, &initial, opts.clone())),
            inc: 0,
            disk: vec![0; NUM_BLOCKS as usize],
            meta_disk: Engine::<Data>::new_device(id, geometry, &initial, opts.clone())
                .meta()
                .clone(),
            paused: false,
            deferred: Vec::new(),
            in_flight: BTreeMap::new(),
            meta_in_flight: Vec::new(),
            journal_disk: PersistedJournal::default(),
            task_mgmt_applied: 0,
            pr_lu: (PrVersion::default(), Vec::new()),
            pr_disk: Vec::new(),
            pr_log: Vec::new(),
        })
        .collect();
    let mk_link = || Link {
        up: true,
        gen: 0,
        last_delivery: 0,
    };
    let mut w = World {
        p: p.clone(),
        rng: Rng::new(p.seed),
        now: 0,
        seq: 0,
        queue: BinaryHeap::new(),
        geometry,
        opts,
        nodes,
        links: (0..n)
            .map(|_| (0..n).map(|_| mk_link()).collect())
            .collect(),
        auth_links: (0..n).map(|_| mk_link()).collect(),
        authority: Authority::new(initial.clone(), LEASE_NS, MARGIN_NS, p.authority_bug),
        history: Vec::new(),
        resets: BTreeMap::new(),
        client_busy: vec![None; CLIENTS],
        client_last_seen: vec![BTreeMap::new(); CLIENTS],
        clients_active: true,
        faults_active: true,
        next_value: 0,
        report: SimReport::default(),
        trace: Vec::new(),
        failure: None,
        pr_good_max: PrVersion::default(),
        pr_good_state: Vec::new(),
    };
    for i in 0..n {
        w.feed(i, Input::Config(initial.clone()));
        w.schedule(0, Ev::LeaseRound { node: i, inc: 0 });
        w.schedule(TICK_NS, Ev::Tick { node: i, inc: 0 });
    }
    for c in 0..CLIENTS {
        let d = w.rng.range(0, MS);
        w.schedule(d, Ev::ClientNext { client: c });
    }
    let first_fault = w.rng.range(20 * MS, 60 * MS);
    w.schedule_fault(first_fault);
    w.main_loop();
    w.finish()
}

impl World {
    fn schedule(&mut self, delay: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Scheduled {
            at: self.now + delay,
            seq: self.seq,
            ev,
        });
    }

    fn trace(&mut self, line: impl FnOnce() -> String) {
        if self.p.trace {
            let l = format!("{:>9}us {}", self.now / US, line());
            self.trace.push(l);
        }
    }

    fn fail(&mut self, why: String) {
        if self.failure.is_none() {
            self.failure = Some(why);
        }
    }

    fn main_loop(&mut self) {
        let active_end = self.p.active_ms * MS;
        let deadline = active_end + 3_000 * MS;
        let mut healed = false;
        while let Some(s) = self.queue.pop() {
            self.now = s.at;
            if self.failure.is_some() || self.now > deadline {
                break;
            }
            if !healed && self.now >= active_end {
                healed = true;
                self.heal_everything();
            }
            self.dispatch(s.ev);
            if healed && self.converged() {
                break;
            }
        }
        self.report.sim_time_ms = self.now / MS;
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Host {
                node,
                inc,
                tag,
                cmd,
            } => {
                if self.deliverable(node, inc, &ev_clone_host(node, inc, tag, &cmd)) {
                    if matches!(cmd, HostCmd::TaskMgmt { .. }) {
                        self.watch_reset(node, tag);
                    }
                    let Some(cmd) = self.lu_admit(node, tag, cmd) else {
                        return;
                    };
                    self.feed(node, Input::Host { tag, cmd });
                }
            }
            Ev::Peer {
                to,
                inc,
                from,
                env,
                link,
            } => {
                let l = &self.links[from][to];
                if !l.up || l.gen != link {
                    return;
                }
                let e = Ev::Peer {
                    to,
                    inc,
                    from,
                    env: env.clone(),
                    link,
                };
                if self.deliverable(to, inc, &e) {
                    let from_id = self.nodes[from].id;
                    self.trace(|| format!("n{} <- n{} {:?}", to + 1, from + 1, short(&env)));
                    self.feed(to, Input::Peer { from: from_id, env });
                }
            }
            Ev::Local { node, inc, io } => {
                if !self.deliverable(node, inc, &Ev::Local { node, inc, io }) {
                    return;
                }
                let Some(op) = self.nodes[node].in_flight.remove(&io) else {
                    return;
                };
                let result = self.execute(node, op);
                self.feed(node, Input::LocalDone { io, result });
            }
            Ev::Meta { node, inc, meta } => {
                if !self.deliverable(
                    node,
                    inc,
                    &Ev::Meta {
                        node,
                        inc,
                        meta: meta.clone(),
                    },
                ) {
                    return;
                }
                let n = &mut self.nodes[node];
                n.meta_in_flight.retain(|m| m.version != meta.version);
                if meta.version > n.meta_disk.version {
                    n.meta_disk = meta.clone();
                }
                self.feed(
                    node,
                    Input::MetaPersisted {
                        version: meta.version,
                    },
                );
            }
            Ev::ToAuth { from, msg, link } => {
                let l = &self.auth_links[from];
                if !l.up || l.gen != link {
                    return;
                }
                let before = self.authority.config().map(|c| c.epoch);
                let pick = self.rng.next_u64();
                let id = self.nodes[from].id;
                let reply = self.authority.on_message(Time(self.now), id, msg, pick);
                if let Some(u) = reply {
                    self.send_from_auth(from, u);
                }
                self.after_authority(before, Some(from));
            }
            Ev::AuthDue => {
                let before = self.authority.config().map(|c| c.epoch);
                self.authority.run_due(Time(self.now));
                self.after_authority(before, None);
            }
            Ev::FromAuth {
                to,
                inc,
                update,
                link,
            } => {
                let l = &self.auth_links[to];
                if !l.up || l.gen != link {
                    return;
                }
                let e = Ev::FromAuth {
                    to,
                    inc,
                    update: update.clone(),
                    link,
                };
                if !self.deliverable(to, inc, &e) {
                    return;
                }
                let epoch = update.config.epoch;
                self.feed(to, Input::Config(update.config));
                if let Some(until) = update.lease_until {
                    self.feed(to, Input::Lease { epoch, until });
                }
            }
            Ev::Tick { node, inc } => {
                if self.nodes[node].inc != inc || self.nodes[node].engine.is_none() {
                    return;
                }
                if !self.nodes[node].paused {
                    self.feed(node, Input::Tick);
                }
                self.schedule(TICK_NS, Ev::Tick { node, inc });
            }
            Ev::LeaseRound { node, inc } => {
                if self.nodes[node].inc != inc || self.nodes[node].engine.is_none() {
                    return;
                }
                if !self.nodes[node].paused {
                    self.send_to_authority(node, ToAuthority::LeaseRequest);
                }
                self.schedule(LEASE_NS / 4, Ev::LeaseRound { node, inc });
            }
            Ev::ClientNext { client } => self.client_issue(client),
            Ev::ClientTimeout { client, op } => {
                if self.client_busy[client] == Some(op) {
                    self.history[op].outcome = Outcome::Unknown;
                    self.report.ops_unknown += 1;
                    self.client_busy[client] = None;
                    self.schedule(0, Ev::ClientNext { client });
                }
            }
            Ev::Fault(f) => self.apply_fault(f),
        }
    }

    /// Deliver to a node's current incarnation; a paused node keeps events for later.
    fn deliverable(&mut self, node: usize, inc: u32, ev: &Ev) -> bool {
        let n = &mut self.nodes[node];
        if n.inc != inc || n.engine.is_none() {
            return false;
        }
        if n.paused {
            n.deferred.push(ev.clone());
            return false;
        }
        true
    }

    fn after_authority(&mut self, before: Option<crate::types::Epoch>, replied: Option<usize>) {
        let after = self.authority.config().map(|c| c.epoch);
        if after != before {
            self.report.configurations += 1;
            let cfg = self
                .authority
                .config()
                .cloned()
                .expect("changed to a config");
            self.trace(|| format!("AUTHORITY {cfg:?}"));
            for i in 0..self.nodes.len() {
                if Some(i) != replied {
                    self.send_from_auth(
                        i,
                        Update {
                            config: cfg.clone(),
                            lease_until: None,
                        },
                    );
                }
            }
        }
        if let Some(due) = self.authority.next_due() {
            let d = due.0.saturating_sub(self.now);
            self.schedule(d, Ev::AuthDue);
        }
    }

    fn net_delay(&mut self) -> u64 {
        if self.rng.chance(5) {
            self.rng.range(200 * US, 3 * MS) // a slow moment
        } else {
            self.rng.range(20 * US, 150 * US)
        }
    }

    fn send_from_auth(&mut self, to: usize, update: Update) {
        if !self.auth_links[to].up {
            return;
        }
        let d = self.net_delay();
        let link = self.auth_links[to].gen;
        let inc = self.nodes[to].inc;
        self.schedule(
            d,
            Ev::FromAuth {
                to,
                inc,
                update,
                link,
            },
        );
    }

    fn send_to_authority(&mut self, from: usize, msg: ToAuthority) {
        if !self.auth_links[from].up {
            return;
        }
        let d = self.net_delay();
        let link = self.auth_links[from].gen;
        self.schedule(d, Ev::ToAuth { from, msg, link });
    }

    fn feed(&mut self, node: usize, input: Input<Data>) {
        let now = Time(self.now);
        let mut out = Vec::new();
        let (held, recount, refused) = match self.nodes[node].engine.as_mut() {
            Some(e) => {
                let refused_before = e.refused_over_bound();
                e.handle(now, input, &mut out);
                (
                    e.held_writes(),
                    e.held_writes_recount(),
                    e.refused_over_bound() - refused_before,
                )
            }
            None => return,
        };
        // Contract j: the writes a node holds are bounded, and the bound is enforced on the
        // true count.
        self.report.refused_over_bound += refused;
        if held != recount {
            self.fail(format!(
                "n{} counts {held:?} held writes (count, bytes) but holds {recount:?}",
                node + 1
            ));
        }
        let over_bytes = held.1 > self.opts.held_bytes_max && held.0 > 1;
        if held.0 > self.opts.held_writes_max || over_bytes {
            self.fail(format!(
                "n{} holds {} writes / {} bytes, over the bound of {} / {}",
                node + 1,
                held.0,
                held.1,
                self.opts.held_writes_max,
                self.opts.held_bytes_max
            ));
        }
        for o in out {
            self.output(node, o);
        }
    }

    fn output(&mut self, node: usize, o: Output<Data>) {
        match o {
            Output::Local { io, op } => {
                let d = self.rng.range(10 * US, 90 * US);
                self.nodes[node].in_flight.insert(io, op);
                let inc = self.nodes[node].inc;
                self.schedule(d, Ev::Local { node, inc, io });
            }
            Output::Send { to, env } => {
                let to = usize::from(to.0) - 1;
                let l = &self.links[node][to];
                if !l.up {
                    return;
                }
                let gen = l.gen;
                let d = self.net_delay();
                let at = (self.now + d).max(self.links[node][to].last_delivery + 1);
                self.links[node][to].last_delivery = at;
                let inc = self.nodes[to].inc;
                self.schedule(
                    at - self.now,
                    Ev::Peer {
                        to,
                        inc,
                        from: node,
                        env,
                        link: gen,
                    },
                );
            }
            Output::Complete { tag, status } => self.complete(node, tag, status),
            Output::VerdictRequest { suspect, epoch } => {
                self.trace(|| {
                    format!("n{} verdict request about {suspect} in {epoch:?}", node + 1)
                });
                self.send_to_authority(node, ToAuthority::Verdict { suspect, epoch })
            }
            Output::Join { meta } => self.send_to_authority(node, ToAuthority::Join { meta }),
            Output::Synchronized { node: n, epoch } => {
                self.send_to_authority(node, ToAuthority::Synchronized { node: n, epoch })
            }
            Output::SyncRefused { node: n, decision } => {
                self.trace(|| format!("n{} refuses to sync {n}: {decision:?}", node + 1));
            }
            Output::SyncSizeRefused {
                node: n,
                joiner_blocks,
                sequencer_blocks,
            } => {
                self.trace(|| {
                    format!(
                        "n{} refuses to sync {n}: its copy has {joiner_blocks} blocks, this one {sequencer_blocks}",
                        node + 1
                    )
                });
            }
            Output::TaskMgmt { .. } => self.nodes[node].task_mgmt_applied += 1,
            Output::PersistJournal(rec) => self.nodes[node].journal_disk.apply(&rec),
            Output::ResyncPlanned {
                node: n,
                regions,
                full,
            } => {
                if full.is_some() {
                    self.report.full_syncs += 1;
                } else {
                    self.report.fast_syncs += 1;
                }
                self.trace(|| {
                    format!(
                        "n{} resyncs {n}: {regions} regions, full {full:?}",
                        node + 1
                    )
                });
            }
            Output::PrApply { version, state, .. } => {
                self.trace(|| format!("n{} applies PR {version:?} {state:?}", node + 1));
                let n = &mut self.nodes[node];
                n.pr_disk.clone_from(&state);
                n.pr_log.push((version, state.clone()));
                n.pr_lu = (version, state);
            }
            Output::PersistMeta(meta) => {
                let d = self.rng.range(20 * US, 200 * US);
                let inc = self.nodes[node].inc;
                self.nodes[node].meta_in_flight.push(meta.clone());
                self.schedule(d, Ev::Meta { node, inc, meta });
            }
        }
    }

    /// Local I/O takes effect when it completes (a read sees the disk at that instant).
    fn execute(&mut self, node: usize, op: LocalOp<Data>) -> LocalResult<Data> {
        let disk = &mut self.nodes[node].disk;
        match op {
            LocalOp::Read { range } => {
                LocalResult::ReadData(range.blocks().map(|b| disk[b as usize]).collect())
            }
            LocalOp::Write { range, data } => {
                for (b, v) in range.blocks().zip(data) {
                    disk[b as usize] = v;
                }
                LocalResult::Done
            }
            LocalOp::CompareAndWrite {
                range,
                verify,
                data,
            } => {
                let equal = range
                    .blocks()
                    .zip(&verify)
                    .all(|(b, v)| disk[b as usize] == *v);
                if !equal {
                    return LocalResult::Miscompare;
                }
                for (b, v) in range.blocks().zip(data) {
                    disk[b as usize] = v;
                }
                LocalResult::Done
            }
            LocalOp::Flush => LocalResult::Done,
        }
    }

    // ------------------------------------------------------------------ clients

    fn client_issue(&mut self, client: usize) {
        if !self.clients_active || self.client_busy[client].is_some() {
            return;
        }
        let node = self.rng.range(0, self.nodes.len() as u64) as usize;
        let start = if self.rng.chance(70) {
            self.rng.range(0, HOT_BLOCKS)
        } else {
            self.rng.range(0, NUM_BLOCKS)
        };
        let roll = self.rng.range(0, 100);
        // A holder releases soon, so other clients' writes get through often too.
        let holds = self.p.pr && holder(&self.nodes[node].pr_lu.1) == Some(client);
        let pr_op = if holds && self.rng.chance(40) {
            Some(Kind::Release)
        } else if self.p.pr && self.rng.chance(8) {
            Some(if self.rng.chance(30) {
                Kind::Release
            } else {
                Kind::Reserve
            })
        } else {
            None
        };
        let (kind, range) = if let Some(k) = pr_op {
            (k, BlockRange::new(0, 1))
        } else if roll < 45 {
            let len = self.rng.range(1, 5).min(NUM_BLOCKS - start) as u32;
            (Kind::Read, BlockRange::new(start, len))
        } else if roll < 85 {
            let len = self.rng.range(1, 5).min(NUM_BLOCKS - start) as u32;
            self.next_value += 1;
            (
                Kind::Write {
                    value: self.next_value,
                },
                BlockRange::new(start, len),
            )
        } else if roll < 97 {
            self.next_value += 1;
            let expect = self.client_last_seen[client]
                .get(&start)
                .copied()
                .unwrap_or(0);
            (
                Kind::Caw {
                    expect,
                    value: self.next_value,
                },
                BlockRange::new(start, 1),
            )
        } else if self.p.task_mgmt && self.rng.chance(50) {
            (Kind::LunReset, BlockRange::new(0, 1))
        } else {
            (Kind::Flush, BlockRange::new(0, 1))
        };
        let cmd = match &kind {
            Kind::Read => HostCmd::Read { range },
            Kind::Write { value } => HostCmd::Write {
                range,
                data: vec![*value; range.len_blocks as usize],
            },
            Kind::Caw { expect, value } => HostCmd::CompareAndWrite {
                range,
                verify: vec![*expect],
                data: vec![*value],
            },
            Kind::Flush => HostCmd::Flush,
            Kind::LunReset => HostCmd::TaskMgmt {
                kind: crate::types::TaskMgmtKind::LunReset,
            },
            // Computed by the LU when the command reaches it (`lu_admit`).
            Kind::Reserve | Kind::Release => HostCmd::Flush,
        };
        let idx = self.history.len();
        self.history.push(HostOp {
            client,
            node,
            kind,
            range,
            invoke: self.now,
            response: u64::MAX,
            outcome: Outcome::Pending,
            pr: PrTrack::default(),
        });
        self.client_busy[client] = Some(idx);
        let d = self.rng.range(5 * US, 40 * US);
        let inc = self.nodes[node].inc;
        self.schedule(
            d,
            Ev::Host {
                node,
                inc,
                tag: HostTag(idx as u64),
                cmd,
            },
        );
        self.schedule(CLIENT_TIMEOUT_NS, Ev::ClientTimeout { client, op: idx });
    }

    /// A reset reaches `node`'s engine: remember its epoch and its synchronized partners.
    fn watch_reset(&mut self, node: usize, tag: HostTag) {
        let Some(cfg) = self.nodes[node].engine.as_ref().and_then(|e| e.config()) else {
            return;
        };
        let me = self.nodes[node].id;
        let partners = cfg
            .synchronized()
            .filter(|&n| n != me)
            .map(|n| {
                let i = usize::from(n.0) - 1;
                (i, self.nodes[i].inc, self.nodes[i].task_mgmt_applied)
            })
            .collect();
        let epoch = cfg.epoch;
        self.resets
            .insert(tag.0 as usize, ResetWatch { epoch, partners });
    }

    /// A reset answered GOOD with no configuration change at its origin meanwhile: every
    /// partner synchronized then, still running the same incarnation, has applied a reset
    /// since (its count grew; another node's reset can also grow it, so this is a lower
    /// bound). With a configuration change a partner may have left, and then is not waited
    /// for.
    fn check_task_mgmt(&mut self, node: usize, idx: usize) {
        self.report.resets_good += 1;
        let Some(w) = self.resets.remove(&idx) else {
            return;
        };
        let epoch_now = self.nodes[node]
            .engine
            .as_ref()
            .and_then(|e| e.config())
            .map(|c| c.epoch);
        if epoch_now != Some(w.epoch) {
            return;
        }
        self.report.resets_checked += 1;
        for (p, inc, applied) in w.partners {
            let n = &self.nodes[p];
            if n.inc == inc && n.engine.is_some() && n.task_mgmt_applied <= applied {
                self.fail(format!(
                    "n{} answered GOOD for reset #{idx} before n{} applied it",
                    node + 1,
                    p + 1
                ));
            }
        }
    }

    // ------------------------------------------------------------ reservations

    /// The LU's part of a host command in `pr` mode: RESERVATION CONFLICT and no-op answers
    /// of its own, a reservation change computed from its state for the engine to order,
    /// and the state a write was let through with (for `pr_complete`). `None`: answered.
    fn lu_admit(&mut self, node: usize, tag: HostTag, cmd: HostCmd<Data>) -> Option<HostCmd<Data>> {
        if !self.p.pr {
            return Some(cmd);
        }
        let idx = tag.0 as usize;
        let op = &self.history[idx];
        let pc = match op.kind {
            Kind::Reserve => PrCmd::Reserve,
            Kind::Release => PrCmd::Release,
            Kind::Write { .. } | Kind::Caw { .. } => PrCmd::Write,
            _ => PrCmd::Other,
        };
        let client = op.client;
        let now = Time(self.now);
        let serving = self.nodes[node]
            .engine
            .as_ref()
            .is_some_and(|e| e.serving(now));
        let (version, state) = self.nodes[node].pr_lu.clone();
        match decide(pc, client, version, &state) {
            LuDecision::Pass => {
                if pc == PrCmd::Write {
                    let refused =
                        decide(pc, client, version, &self.pr_good_state) == LuDecision::Conflict;
                    self.history[idx].pr.admitted = Some((version, self.pr_good_max, refused));
                }
                Some(cmd)
            }
            // A node that does not serve answers NOT READY whatever the command.
            _ if !serving => {
                self.lu_answer(idx, Outcome::NotReady);
                None
            }
            LuDecision::Conflict => {
                self.report.pr_conflicts += 1;
                self.lu_answer(idx, Outcome::Conflict);
                None
            }
            LuDecision::Unchanged => {
                self.lu_answer(idx, Outcome::Good(None));
                None
            }
            LuDecision::Change { base, state } => {
                let pos = self.nodes[node].pr_log.len();
                self.history[idx].pr.change = Some((base, state.clone(), pos));
                Some(HostCmd::PrChange {
                    base,
                    state,
                    notice: Vec::new(),
                })
            }
        }
    }

    /// An answer the LU gives by itself.
    fn lu_answer(&mut self, idx: usize, outcome: Outcome) {
        let op = &mut self.history[idx];
        if !matches!(op.outcome, Outcome::Pending) {
            return;
        }
        let client = op.client;
        if matches!(outcome, Outcome::NotReady) {
            self.report.ops_not_ready += 1;
        }
        self.trace(|| format!("LU completes #{idx}: {outcome:?}"));
        let op = &mut self.history[idx];
        op.outcome = outcome;
        op.response = self.now;
        self.client_busy[client] = None;
        let think = self.rng.range(0, 300 * US);
        self.schedule(think, Ev::ClientNext { client });
    }

    /// The reservation checks at a completion. A write answered GOOD must have been let
    /// through by an LU that had applied every reservation change answered GOOD before
    /// (anywhere): otherwise a reservation made through one node did not bind another. A
    /// change answered GOOD must have been applied at its origin; its version then bounds
    /// every later write. A stale change is recomputed by the LU (returns true: not
    /// answered yet).
    fn pr_complete(&mut self, node: usize, idx: usize, status: &HostStatus<Data>) -> bool {
        let op = &self.history[idx];
        let good = matches!(status, HostStatus::Good { .. });
        if let Some((have, required, refused)) = op.pr.admitted {
            if good {
                self.report.pr_writes_checked += 1;
                if have < required {
                    let what = if refused {
                        "a RESERVATION CONFLICT"
                    } else {
                        "no conflict, but the node lagged"
                    };
                    self.fail(format!(
                        "n{} let write #{idx} through with reservation state {have:?}, older than a change answered GOOD before it ({required:?}; that state means {what})",
                        node + 1
                    ));
                }
            }
            return false;
        }
        let Some((base, state, pos)) = op.pr.change.clone() else {
            return false;
        };
        match status {
            HostStatus::Good { .. } => {
                let found = self.nodes[node].pr_log[pos..]
                    .iter()
                    .find(|(v, s)| *v > base && *s == state)
                    .map(|e| e.0);
                match found {
                    Some(v) => {
                        if v > self.pr_good_max {
                            self.pr_good_max = v;
                            self.pr_good_state.clone_from(&state);
                        }
                        self.report.pr_changes_good += 1;
                    }
                    None => self.fail(format!(
                        "n{} answered GOOD for reservation change #{idx} that it never applied",
                        node + 1
                    )),
                }
                false
            }
            HostStatus::Miscompare if op.pr.retries < 16 => {
                self.history[idx].pr.retries += 1;
                let inc = self.nodes[node].inc;
                self.trace(|| format!("n{} recomputes reservation change #{idx}", node + 1));
                self.schedule(
                    0,
                    Ev::Host {
                        node,
                        inc,
                        tag: HostTag(idx as u64),
                        cmd: HostCmd::Flush,
                    },
                );
                true
            }
            _ => false,
        }
    }

    /// At quiesce every serving node holds the same reservation state, and each LU the
    /// engine's. (A node that restarted just before the end may not have rejoined yet: it
    /// serves nothing, and gets the state before it does.)
    fn check_pr_quiesced(&mut self) {
        let mut first: Option<(PrVersion, Vec<u8>)> = None;
        let now = Time(self.now);
        for i in 0..self.nodes.len() {
            let n = &self.nodes[i];
            let Some(e) = n.engine.as_ref().filter(|e| e.serving(now)) else {
                continue;
            };
            let (v, st) = e.pr_state();
            let engine = (v, st.to_vec());
            if engine != n.pr_lu {
                let why = format!(
                    "n{}: the engine holds reservation state {engine:?}, its LU {:?}",
                    i + 1,
                    n.pr_lu
                );
                self.fail(why);
                return;
            }
            match &first {
                None => first = Some(engine),
                Some(f) if *f != engine => {
                    let why = format!(
                        "reservation state differs at quiesce: n1 {f:?}, n{} {engine:?}",
                        i + 1
                    );
                    self.fail(why);
                    return;
                }
                Some(_) => {}
            }
        }
    }

    fn complete(&mut self, node: usize, tag: HostTag, status: HostStatus<Data>) {
        let idx = tag.0 as usize;
        let Some(op) = self.history.get(idx) else {
            self.fail(format!("completion for unknown tag {}", tag.0));
            return;
        };
        if !matches!(op.outcome, Outcome::Pending) || op.node != node {
            return; // answered after the client gave up
        }
        let (client, range) = (op.client, op.range);
        if matches!(status, HostStatus::Good { .. }) && matches!(op.kind, Kind::LunReset) {
            self.check_task_mgmt(node, idx);
        }
        if self.pr_complete(node, idx, &status) {
            return;
        }
        if matches!(status, HostStatus::Good { .. } | HostStatus::Miscompare) {
            // Contract g: only a node the authority has synchronized right now answers GOOD.
            let id = self.nodes[node].id;
            let ok = self
                .authority
                .config_at(Time(self.now))
                .is_some_and(|c| c.state_of(id) == MemberState::Synchronized);
            if !ok {
                self.fail(format!(
                    "n{} answered {:?} for op #{idx} at {}us while the authority did not have it synchronized",
                    node + 1,
                    short_status(&status),
                    self.now / US
                ));
            }
        }
        let outcome = match status {
            HostStatus::Good { data } => {
                self.report.ops_good += 1;
                if let Some(d) = &data {
                    if d.len() != range.len_blocks as usize {
                        self.fail(format!(
                            "read #{idx} returned {} blocks for {}",
                            d.len(),
                            range.len_blocks
                        ));
                    }
                    for (b, v) in range.blocks().zip(d) {
                        self.client_last_seen[client].insert(b, *v);
                    }
                }
                if let Kind::Write { value } | Kind::Caw { value, .. } = self.history[idx].kind {
                    for b in range.blocks() {
                        self.client_last_seen[client].insert(b, value);
                    }
                }
                Outcome::Good(data)
            }
            HostStatus::Miscompare if self.history[idx].pr.change.is_some() => Outcome::NotReady,
            HostStatus::Miscompare => Outcome::Miscompare,
            HostStatus::NotReady | HostStatus::MediumError => {
                self.report.ops_not_ready += 1;
                Outcome::NotReady
            }
        };
        self.trace(|| format!("n{} completes #{idx}: {outcome:?}", node + 1));
        let latency = self.now.saturating_sub(self.history[idx].invoke);
        if let Some(e) = self.nodes[node].engine.as_mut() {
            e.observe_host_latency(Time(self.now), latency);
        }
        let op = &mut self.history[idx];
        op.outcome = outcome;
        op.response = self.now;
        self.client_busy[client] = None;
        let think = self.rng.range(0, 300 * US);
        self.schedule(think, Ev::ClientNext { client });
    }

    // ------------------------------------------------------------------ faults

    fn schedule_fault(&mut self, delay: u64) {
        let n = self.nodes.len();
        let a = self.rng.range(0, n as u64) as usize;
        let b = (a + 1 + self.rng.range(0, n as u64 - 1) as usize) % n;
        let witness = self.p.shape != Shape::TwoNodes;
        let roll = self.rng.range(0, 100);
        let (fault, heal, heal_after) = if roll < 30 {
            (
                Fault::CutLink(a, b),
                Fault::HealLink(a, b),
                self.rng.range(5 * MS, 80 * MS),
            )
        } else if roll < 45 && witness {
            (
                Fault::CutAuthority(a),
                Fault::HealAuthority(a),
                self.rng.range(5 * MS, 80 * MS),
            )
        } else if roll < 65 {
            (
                Fault::Crash(a),
                Fault::Restart(a),
                self.rng.range(MS, 60 * MS),
            )
        } else if roll < 85 {
            // Sometimes well past the lease: the paused node must not answer GOOD on waking.
            (
                Fault::Pause(a),
                Fault::Resume(a),
                self.rng.range(MS, 80 * MS),
            )
        } else {
            let amnesia = witness && self.rng.chance(40);
            (
                Fault::PowerLoss { amnesia },
                Fault::PowerBack,
                self.rng.range(MS, 20 * MS),
            )
        };
        self.schedule(delay, Ev::Fault(fault));
        self.schedule(delay + heal_after, Ev::Fault(heal));
    }

    fn apply_fault(&mut self, f: Fault) {
        let healing = matches!(
            f,
            Fault::HealLink(..)
                | Fault::HealAuthority(_)
                | Fault::Restart(_)
                | Fault::Resume(_)
                | Fault::PowerBack
        );
        if !self.faults_active && !healing {
            return;
        }
        self.trace(|| format!("FAULT {f:?}"));
        match f {
            Fault::CutLink(a, b) => {
                for (x, y) in [(a, b), (b, a)] {
                    let l = &mut self.links[x][y];
                    l.up = false;
                    l.gen += 1;
                }
            }
            Fault::HealLink(a, b) => {
                self.links[a][b].up = true;
                self.links[b][a].up = true;
            }
            Fault::CutAuthority(a) => {
                self.auth_links[a].up = false;
                self.auth_links[a].gen += 1;
            }
            Fault::HealAuthority(a) => self.auth_links[a].up = true,
            Fault::Crash(a) => self.crash(a),
            Fault::Restart(a) => self.restart(a),
            Fault::Pause(a) => self.nodes[a].paused = true,
            Fault::Resume(a) => self.resume(a),
            Fault::PowerLoss { amnesia } => {
                for i in 0..self.nodes.len() {
                    self.crash(i);
                }
                if amnesia {
                    self.authority.lose_state();
                }
            }
            Fault::PowerBack => {
                for i in 0..self.nodes.len() {
                    self.restart(i);
                }
            }
        }
        if !healing {
            self.report.faults += 1;
            if self.faults_active {
                let next = self.rng.range(10 * MS, 70 * MS);
                self.schedule_fault(next);
            }
        }
    }

    /// Everything in flight on the disk lands or not, block by block; metadata writes are
    /// atomic (they land whole or not at all).
    fn crash(&mut self, i: usize) {
        if self.nodes[i].engine.is_none() {
            return;
        }
        let in_flight = std::mem::take(&mut self.nodes[i].in_flight);
        for (_, op) in in_flight {
            let (range, data) = match op {
                LocalOp::Write { range, data } => (range, data),
                LocalOp::CompareAndWrite {
                    range,
                    verify,
                    data,
                } => {
                    // The compare happens before any block is written.
                    let disk = &self.nodes[i].disk;
                    if !range
                        .blocks()
                        .zip(&verify)
                        .all(|(b, v)| disk[b as usize] == *v)
                    {
                        continue;
                    }
                    (range, data)
                }
                _ => continue,
            };
            {
                {
                    for (b, v) in range.blocks().zip(data) {
                        if self.rng.chance(50) {
                            self.nodes[i].disk[b as usize] = v;
                        }
                    }
                }
            }
        }
        for m in std::mem::take(&mut self.nodes[i].meta_in_flight) {
            if self.rng.chance(50) && m.version > self.nodes[i].meta_disk.version {
                self.nodes[i].meta_disk = m;
            }
        }
        let n = &mut self.nodes[i];
        n.engine = None;
        n.pr_lu = (PrVersion::default(), Vec::new());
        n.paused = false;
        n.deferred.clear();
        n.inc += 1;
    }

    fn restart(&mut self, i: usize) {
        if self.nodes[i].engine.is_some() {
            return;
        }
        let n = &mut self.nodes[i];
        let mut engine = Engine::new(
            n.id,
            self.geometry,
            n.meta_disk.clone(),
            n.inc,
            self.opts.clone(),
        );
        engine.restore_journal(n.journal_disk.clone());
        // APTPL: the LU loads its reservation state and hands it to the engine.
        engine.set_pr_state(n.pr_disk.clone());
        n.pr_lu = (PrVersion::default(), n.pr_disk.clone());
        n.engine = Some(engine);
        let inc = n.inc;
        self.schedule(0, Ev::LeaseRound { node: i, inc });
        self.schedule(TICK_NS, Ev::Tick { node: i, inc });
    }

    fn resume(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        if !n.paused {
            return;
        }
        n.paused = false;
        for ev in std::mem::take(&mut n.deferred) {
            self.schedule(0, ev);
        }
    }

    fn heal_everything(&mut self) {
        self.faults_active = false;
        self.clients_active = false;
        self.trace(|| "HEAL: faults and clients stop".to_string());
        let n = self.nodes.len();
        for a in 0..n {
            for b in 0..n {
                self.links[a][b].up = true;
            }
            self.auth_links[a].up = true;
            self.restart(a);
            self.resume(a);
        }
    }

    fn converged(&self) -> bool {
        let Some(cfg) = self.authority.config() else {
            return false;
        };
        if cfg.members.iter().any(|m| m.1 != MemberState::Synchronized) {
            return false;
        }
        if self.client_busy.iter().any(|c| c.is_some()) {
            return false;
        }
        self.nodes.iter().all(|n| {
            n.in_flight.is_empty()
                && n.engine
                    .as_ref()
                    .is_some_and(|e| !e.busy() && e.config().is_some_and(|c| c.epoch == cfg.epoch))
        })
    }

    // ------------------------------------------------------------------ verdict

    fn finish(mut self) -> Result<SimReport, String> {
        if self.failure.is_none() && !self.converged() {
            let cfg = self.authority.config().cloned();
            let nodes: Vec<String> = self
                .nodes
                .iter()
                .map(|n| match &n.engine {
                    None => format!("{}: down", n.id),
                    Some(e) => format!(
                        "{}: epoch {:?} {} in-flight I/O {}",
                        n.id,
                        e.config().map(|c| c.epoch),
                        e.busy_detail(),
                        n.in_flight.len()
                    ),
                })
                .collect();
            self.fail(format!(
                "the cluster did not converge within 3 s after healing; authority: {cfg:?}; {}",
                nodes.join("; ")
            ));
        }
        if self.failure.is_none() {
            let d0 = &self.nodes[0].disk;
            for n in &self.nodes[1..] {
                if &n.disk != d0 {
                    let diff: Vec<(usize, u64, u64)> = (0..d0.len())
                        .filter(|&b| d0[b] != n.disk[b])
                        .map(|b| (b, d0[b], n.disk[b]))
                        .collect();
                    let why = format!(
                        "replicas differ after resync: n1 vs {} at (block, n1's value, its value) {diff:?}",
                        n.id
                    );
                    self.fail(why);
                    break;
                }
            }
        }
        if self.failure.is_none() {
            self.check_pr_quiesced();
        }
        if self.failure.is_none() {
            self.check_history();
        }
        match self.failure.take() {
            None => Ok(self.report),
            Some(why) => {
                let mut msg = format!(
                    "seed {} failed: {why}\nreplay: {}\n",
                    self.p.seed,
                    self.p.replay_command()
                );
                if self.p.trace {
                    for l in self.trace.iter().rev().take(4000).rev() {
                        msg.push_str(l);
                        msg.push('\n');
                    }
                }
                Err(msg)
            }
        }
    }

    fn check_history(&mut self) {
        let end = self.now + 1;
        let final_disk = self.nodes[0].disk.clone();
        for b in 0..NUM_BLOCKS {
            let mut evs = Vec::new();
            for (i, op) in self.history.iter().enumerate() {
                if !op.range.blocks().contains(&b) {
                    continue;
                }
                let k = (b - op.range.start.0) as usize;
                let response = |o: &HostOp| Some(o.response);
                let ev = match (&op.kind, &op.outcome) {
                    (Kind::Read, Outcome::Good(Some(d))) => {
                        Some((BlockOp::Read { value: d[k] }, response(op)))
                    }
                    (Kind::Write { value }, Outcome::Good(_)) => {
                        Some((BlockOp::Write { value: *value }, response(op)))
                    }
                    (Kind::Write { value }, _) => Some((BlockOp::Write { value: *value }, None)),
                    (Kind::Caw { expect, value }, Outcome::Good(_)) => Some((
                        BlockOp::Swap {
                            expect: *expect,
                            value: *value,
                        },
                        response(op),
                    )),
                    (Kind::Caw { expect, .. }, Outcome::Miscompare) => {
                        Some((BlockOp::Mismatch { expect: *expect }, response(op)))
                    }
                    (Kind::Caw { expect, value }, _) => Some((
                        BlockOp::Swap {
                            expect: *expect,
                            value: *value,
                        },
                        None,
                    )),
                    (_, Outcome::Conflict) => None,
                    _ => None,
                };
                if let Some((bop, resp)) = ev {
                    evs.push(CheckEvent {
                        op: bop,
                        invoke: op.invoke,
                        response: resp,
                        history_index: i,
                    });
                }
            }
            // The final content, read after everything: no acknowledged write may be lost.
            evs.push(CheckEvent {
                op: BlockOp::Read {
                    value: final_disk[b as usize],
                },
                invoke: end,
                response: Some(end + 1),
                history_index: usize::MAX,
            });
            match check_block(0, &evs, 150_000) {
                Ok(true) => {}
                Ok(false) => self.report.inconclusive_blocks += 1,
                Err(e) => {
                    let ops: Vec<String> = evs
                        .iter()
                        .map(|e| {
                            let who = self
                                .history
                                .get(e.history_index)
                                .map_or("final".to_string(), |o| {
                                    format!("#{} n{} c{}", e.history_index, o.node + 1, o.client)
                                });
                            format!(
                                "  {who}: {:?} [{}, {:?}]",
                                e.op,
                                e.invoke / US,
                                e.response.map(|r| r / US)
                            )
                        })
                        .collect();
                    let ops = if self.p.trace {
                        ops.join("\n")
                    } else {
                        String::new()
                    };
                    self.fail(format!("block {b} is not linearizable: {e}\n{ops}"));
                    return;
                }
            }
        }
    }
}

fn ev_clone_host(node: usize, inc: u32, tag: HostTag, cmd: &HostCmd<Data>) -> Ev {
    Ev::Host {
        node,
        inc,
        tag,
        cmd: cmd.clone(),
    }
}

fn short(env: &Envelope<Data>) -> String {
    use crate::msg::Msg;
    let m = match &env.msg {
        Msg::Mirror {
            id,
            range,
            data,
            commit_follows,
        } => {
            format!(
                "Mirror {id:?} {}+{} v{:?} cf={commit_follows}",
                range.start.0,
                range.len_blocks,
                data.first()
            )
        }
        Msg::Forward { id, range, .. } => {
            format!("Forward {id:?} {}+{}", range.start.0, range.len_blocks)
        }
        Msg::RegionCopy { id, region, .. } => format!("RegionCopy {id:?} r{}", region.0),
        Msg::SyncOffer {
            meta,
            dirty,
            journal_complete,
            num_blocks,
        } => {
            format!(
                "SyncOffer gen={:?} dirty={} complete={journal_complete} blocks={num_blocks:?}",
                meta.current,
                dirty.len()
            )
        }
        other => format!("{other:?}"),
    };
    format!("e{} {m}", env.epoch.0)
}

fn short_status(s: &HostStatus<Data>) -> &'static str {
    match s {
        HostStatus::Good { .. } => "GOOD",
        HostStatus::Miscompare => "MISCOMPARE",
        HostStatus::NotReady => "NOT READY",
        HostStatus::MediumError => "MEDIUM ERROR",
    }
}
