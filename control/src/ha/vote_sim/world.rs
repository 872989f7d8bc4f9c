//! The simulated cluster: participants with drifting clocks, their control services (the
//! driver, heartbeats, the hosted authority) and data planes (configuration and lease),
//! links with random delay, and the event loop.

use std::collections::BTreeMap;

use tandem_config::ReplicationConfig;
use tandem_ha::authority::{AuthorityBug, ToAuthority};
use tandem_ha::generation::ReplicaMeta;
use tandem_ha::{Epoch, EpochConfig, GenerationId, MemberState, NodeId};

use super::checker::{Checker, Serving, Violation};
use super::faults::{self, Fault};
use super::host::{Durable, SimHost};
use super::placement::{node_id, participant_name, Link, LinkKind, Placement};
use super::rng::Rng;
use super::{SimParams, SimReport, VoteBug};
use crate::ha::authority_host::Grant;
use crate::ha::echo::{self, HeartbeatId};
use crate::ha::strategy::{self, Takeover, TakeoverInput};
use crate::ha::{AuthorityPlace, HaSettings};

const MS: u64 = 1_000_000;
/// The engine's default `peer_timeout`: a partner silent this long gets a verdict request.
const PEER_TIMEOUT: u64 = 1000 * MS;
/// A partner heard this recently counts as reachable (join, resync progress).
const PEER_RECENT: u64 = 300 * MS;
/// Largest clock-rate error of one participant, in parts per million (2 %; the margin rule
/// of docs/ha.md holds up to several percent, real clocks drift far less).
const DRIFT_PPM_MAX: i64 = 20_000;
/// Random loss of a datagram (heartbeats, engine pings) on a live link, percent.
const LOSS_PERCENT: u64 = 1;

/// A participant's clock: `local = offset + t + t * ppm / 1e6` (`t`: true time, ns).
struct Clock {
    offset: u64,
    ppm: i64,
}

impl Clock {
    fn local(&self, t: u64) -> u64 {
        let drift = (t as i128 * self.ppm as i128) / 1_000_000;
        (self.offset as i128 + t as i128 + drift) as u64
    }

    /// True time that passes while this clock advances by `local_ns`.
    fn true_span(&self, local_ns: u64) -> u64 {
        ((local_ns as i128 * 1_000_000) / (1_000_000 + self.ppm as i128)) as u64
    }
}

#[derive(Clone, Debug)]
enum Msg {
    Heartbeat {
        epoch: u64,
        hosts: bool,
        /// This heartbeat, and the newest the sender heard from the receiver
        /// (`membership::Heartbeat`'s incarnation, counter and echo).
        id: HeartbeatId,
        echo: Option<HeartbeatId>,
    },
    /// The engines' traffic on a sync link, reduced to "the partner is alive".
    EnginePing,
    ApiRequest {
        id: u64,
        requests: Vec<ToAuthority>,
    },
    ApiReply {
        id: u64,
        answer: Result<Option<Grant>, String>,
    },
}

impl Msg {
    /// Whether the data plane (not the control service) receives it.
    fn for_data_plane(&self) -> bool {
        matches!(self, Msg::EnginePing)
    }
}

enum Event {
    ControlTick {
        p: usize,
        life: u64,
    },
    HeartbeatTick {
        p: usize,
        life: u64,
    },
    EngineTick {
        p: usize,
        life: u64,
    },
    Deliver {
        from: usize,
        to: usize,
        link: usize,
        cut: u64,
        msg: Msg,
    },
    Fault,
    Restart {
        p: usize,
    },
    Resume {
        p: usize,
    },
    HealAll,
}

/// What the heartbeats of one partner told this control service (`membership::Heard`):
/// when it was last heard, and what its newest heartbeat said.
#[derive(Clone, Copy)]
struct Heard {
    last_any: u64,
    newest: HeartbeatId,
    epoch: u64,
    hosts: bool,
    echo: Option<HeartbeatId>,
}

/// A control service (lost on a crash; `Participant::durable` survives).
struct Control {
    host: Option<SimHost>,
    /// The newest configuration seen (engine or authority).
    newest: Option<EpochConfig>,
    heard: BTreeMap<usize, Heard>,
    last_answer: Option<u64>,
    /// The remote call in flight: id, local send time, the engine's clock when it reported.
    call: Option<(u64, u64, u64)>,
    /// `HaView::served_at`: the last report that found the data plane serving (local ns).
    served_at: Option<u64>,
    /// `HaView::leased_until`: the report's time plus the lease of the last answer.
    leased_until: Option<u64>,
    /// This control service's incarnation and its last heartbeat (`HaState::heartbeat_seq`).
    last_sent: HeartbeatId,
}

/// The data plane's engine, reduced to what the vote decides: its configuration, its
/// lease, and what it asks the authority.
struct Engine {
    me: NodeId,
    config: EpochConfig,
    lease_until: u64,
    /// Last engine traffic from each partner (local ns).
    peer_heard: BTreeMap<NodeId, u64>,
    /// The generation of the copy (the newest one it was synchronized in).
    generation: GenerationId,
    /// As sequencer: resync of a syncing partner started (epoch, local ns).
    resync: BTreeMap<NodeId, (Epoch, u64)>,
}

impl Engine {
    fn serving(&self, local: u64) -> bool {
        self.config.state_of(self.me) == MemberState::Synchronized && local < self.lease_until
    }

    /// `Engine::on_config`: newer configurations only.
    fn on_config(&mut self, c: &EpochConfig) {
        if c.epoch <= self.config.epoch {
            return;
        }
        self.config = c.clone();
        if c.state_of(self.me) == MemberState::Synchronized {
            self.generation = c.generation;
        }
    }

    /// `Engine::handle(Input::Lease)`: a lease of this or an older epoch extends.
    fn on_lease(&mut self, epoch: Epoch, until: u64) {
        if epoch <= self.config.epoch {
            self.lease_until = self.lease_until.max(until);
        }
    }

    fn requests(&mut self, local: u64, resync_ns: u64) -> Vec<ToAuthority> {
        let mut r = vec![ToAuthority::LeaseRequest];
        let cfg = self.config.clone();
        let mine = cfg.state_of(self.me);
        let partners: Vec<NodeId> = cfg
            .members
            .iter()
            .map(|m| m.0)
            .filter(|&n| n != self.me)
            .collect();
        for n in partners {
            let heard = self.peer_heard.get(&n).copied().unwrap_or(0);
            let silent = local.saturating_sub(heard);
            let theirs = cfg.state_of(n);
            if mine == MemberState::Synchronized
                && theirs != MemberState::Out
                && silent > PEER_TIMEOUT
            {
                r.push(ToAuthority::Verdict {
                    suspect: n,
                    epoch: cfg.epoch,
                });
            }
            if mine == MemberState::Out
                && theirs == MemberState::Synchronized
                && silent < PEER_RECENT
            {
                r.push(ToAuthority::Join {
                    meta: ReplicaMeta {
                        current: self.generation,
                        epoch: cfg.epoch,
                        ..ReplicaMeta::default()
                    },
                });
            }
            if cfg.sequencer == self.me
                && mine == MemberState::Synchronized
                && theirs == MemberState::Syncing
            {
                let start = self.resync.entry(n).or_insert((cfg.epoch, local));
                if start.0 != cfg.epoch || silent >= PEER_RECENT {
                    *start = (cfg.epoch, local);
                } else if local.saturating_sub(start.1) >= resync_ns {
                    r.push(ToAuthority::Synchronized {
                        node: n,
                        epoch: cfg.epoch,
                    });
                }
            }
        }
        r
    }
}

struct Participant {
    clock: Clock,
    data: bool,
    control: Option<Control>,
    engine: Option<Engine>,
    /// What survives a crash: the authority's state file.
    durable: Option<Durable>,
    /// The state file before its last change (for `VoteBug::WitnessForgetsVote`).
    durable_before: Option<Durable>,
    paused: bool,
    /// Messages that arrived while paused (socket buffers), handled on resume.
    inbox: Vec<(usize, Msg)>,
    /// Bumped on crash, restart, pause and resume: ticks of an older life are dropped.
    life: u64,
    repl: Option<ReplicationConfig>,
}

pub struct World<'a> {
    params: &'a SimParams,
    placement: Box<dyn Placement>,
    settings: HaSettings,
    rng: Rng,
    now: u64,
    seq: u64,
    events: BTreeMap<(u64, u64), Event>,
    parts: Vec<Participant>,
    links: Vec<Link>,
    up: Vec<bool>,
    cut_count: Vec<u64>,
    next_call: u64,
    resync_ns: u64,
    checker: Checker,
    nodes: Vec<NodeId>,
    /// Control services started so far (their heartbeat incarnations).
    incarnations: u64,
    faults_end: u64,
    end: u64,
    healed_at: Option<u64>,
    report: SimReport,
}

impl<'a> World<'a> {
    pub fn new(params: &'a SimParams) -> World<'a> {
        let placement = params.shape.placement();
        let mut rng = Rng::new(params.seed);
        let n_data = placement.data_nodes();
        let count = n_data + usize::from(placement.has_witness());
        let nodes: Vec<NodeId> = (0..n_data).map(node_id).collect();
        let links = placement.links();
        let parts = (0..count)
            .map(|p| {
                let data = p < n_data;
                let clock = Clock {
                    offset: rng.range(0, 1_000_000) * MS,
                    ppm: rng.range(0, 2 * DRIFT_PPM_MAX as u64 + 1) as i64 - DRIFT_PPM_MAX,
                };
                // The engine counts a partner's silence from its own start.
                let peer_heard = nodes
                    .iter()
                    .filter(|&&n| n != node_id(p))
                    .map(|&n| (n, clock.offset))
                    .collect();
                Participant {
                    clock,
                    data,
                    control: None,
                    engine: data.then(|| Engine {
                        me: node_id(p),
                        config: EpochConfig::initial(&nodes),
                        lease_until: 0,
                        peer_heard,
                        generation: EpochConfig::initial(&nodes).generation,
                        resync: BTreeMap::new(),
                    }),
                    durable: None,
                    durable_before: None,
                    paused: false,
                    inbox: Vec::new(),
                    life: 0,
                    repl: data.then(|| placement.replication(p)),
                }
            })
            .collect();
        let faults_end = params.active_ms * MS;
        let resync_ns = rng.range(100, 800) * MS;
        let report = SimReport {
            seed: params.seed,
            shape: placement.name(),
            ..SimReport::default()
        };
        World {
            params,
            settings: HaSettings::default(),
            rng,
            now: 0,
            seq: 0,
            events: BTreeMap::new(),
            up: vec![true; links.len()],
            cut_count: vec![0; links.len()],
            links,
            parts,
            next_call: 0,
            resync_ns,
            checker: Checker::default(),
            nodes,
            incarnations: 0,
            faults_end,
            end: faults_end + params.settle_ms * MS,
            healed_at: None,
            placement,
            report,
        }
    }

    fn bug_authority(&self) -> Option<AuthorityBug> {
        (self.params.bug == Some(VoteBug::LeaseNotWaited)).then_some(AuthorityBug::LeaseNotWaited)
    }

    fn at(&mut self, t: u64, e: Event) {
        self.seq += 1;
        self.events.insert((t, self.seq), e);
    }

    fn trace(&mut self, p: Option<usize>, text: impl FnOnce() -> String) {
        if self.params.trace {
            let who = p.map_or("--".to_string(), |p| participant_name(p, self.nodes.len()));
            let line = format!("{:>9.3} ms {who:>3}: {}", self.now as f64 / 1e6, text());
            self.report.trace.push(line);
        }
    }

    fn local(&self, p: usize) -> u64 {
        self.parts[p].clock.local(self.now)
    }

    /// Schedules the periodic ticks of participant `p`'s current life: at a random phase
    /// for a process that starts, at once (within 2 ms, in random order) for one that
    /// resumes, as tokio's intervals fire missed ticks at once.
    fn start_ticks(&mut self, p: usize, control: bool, resumed: bool) {
        let life = self.parts[p].life;
        let (control_phase, heartbeat_phase) = if resumed { (2, 2) } else { (100, 200) };
        let j = self.rng.range(1, control_phase * 1000) * 1000;
        if control {
            self.at(self.now + j, Event::ControlTick { p, life });
            if self.parts[p].data {
                let j = self.rng.range(1, heartbeat_phase * 1000) * 1000;
                self.at(self.now + j, Event::HeartbeatTick { p, life });
            }
        }
        if self.parts[p].data {
            let j = self.rng.range(1, control_phase * 1000) * 1000;
            self.at(self.now + j, Event::EngineTick { p, life });
        }
    }

    fn every(&mut self, p: usize, local_ns: u64) -> u64 {
        // A little jitter so that the participants do not run in lockstep.
        let jitter = self.rng.range(0, 3 * MS);
        self.now + self.parts[p].clock.true_span(local_ns) + jitter
    }

    pub fn run(mut self) -> SimReport {
        for p in 0..self.parts.len() {
            self.start_control(p);
            self.start_ticks(p, true, false);
        }
        let first = self.rng.range(300, 1500) * MS;
        self.at(first, Event::Fault);
        self.at(self.faults_end, Event::HealAll);
        while let Some(((t, _), ev)) = self.events.pop_first() {
            if t > self.end {
                break;
            }
            self.now = t;
            self.report.events += 1;
            self.step(ev);
            if let Err(e) = self.check() {
                self.trace(None, || format!("VIOLATION {e}"));
                self.report.violation = Some(e);
                break;
            }
        }
        self.report.issued = self.checker.issued_count;
        self.report
    }

    fn step(&mut self, ev: Event) {
        match ev {
            Event::ControlTick { p, life } => {
                if self.parts[p].life != life || self.parts[p].paused {
                    return;
                }
                if self.parts[p].control.is_some() {
                    self.control_tick(p);
                }
                let next = self.every(p, self.settings.exchange_interval.as_nanos() as u64);
                self.at(next, Event::ControlTick { p, life });
            }
            Event::HeartbeatTick { p, life } => {
                if self.parts[p].life != life || self.parts[p].paused {
                    return;
                }
                if self.parts[p].control.is_some() {
                    self.send_heartbeats(p);
                }
                let next = self.every(p, self.settings.heartbeat_interval.as_nanos() as u64);
                self.at(next, Event::HeartbeatTick { p, life });
            }
            Event::EngineTick { p, life } => {
                if self.parts[p].life != life || self.parts[p].paused {
                    return;
                }
                self.send_pings(p);
                let next = self.every(p, 100 * MS);
                self.at(next, Event::EngineTick { p, life });
            }
            Event::Deliver {
                from,
                to,
                link,
                cut,
                msg,
            } => {
                if !self.up[link] || self.cut_count[link] != cut {
                    return; // lost with the link
                }
                if self.parts[to].paused {
                    self.parts[to].inbox.push((from, msg));
                    return;
                }
                self.receive(from, to, msg);
            }
            Event::Fault => {
                if self.now >= self.faults_end {
                    return;
                }
                self.inject_fault();
                let next = self.now + self.rng.range(150, 900) * MS;
                self.at(next, Event::Fault);
            }
            Event::Restart { p } => self.restart(p),
            Event::Resume { p } => self.resume(p),
            Event::HealAll => {
                self.trace(None, || "heal everything".into());
                for l in 0..self.links.len() {
                    self.up[l] = true;
                }
                for p in 0..self.parts.len() {
                    if self.parts[p].paused {
                        self.resume(p);
                    }
                    if self.parts[p].control.is_none() {
                        self.restart(p);
                    }
                }
                self.healed_at = Some(self.now);
            }
        }
    }

    // ------------------------------------------------------------------ faults

    fn inject_fault(&mut self) {
        let view = faults::View {
            up: &self.up,
            participants: self.parts.len(),
        };
        let Some(f) = faults::pick(&mut self.rng, self.placement.as_ref(), &view) else {
            return;
        };
        self.report.faults += 1;
        self.trace(None, || format!("fault {f:?}"));
        match f {
            Fault::Cut(l) => self.cut(l),
            Fault::Heal(l) => self.up[l] = true,
            Fault::CutSync => {
                for l in 0..self.links.len() {
                    if self.links[l].kind == LinkKind::Sync {
                        self.cut(l);
                    }
                }
            }
            Fault::Isolate(p) => {
                for l in 0..self.links.len() {
                    if self.links[l].touches(p) {
                        self.cut(l);
                    }
                }
            }
            Fault::HealLinks => self.up.iter_mut().for_each(|u| *u = true),
            Fault::CrashControl { p, down_ms } => {
                if self.parts[p].control.is_none() || self.parts[p].paused {
                    return;
                }
                self.parts[p].control = None;
                self.parts[p].life += 1;
                self.parts[p].inbox.retain(|(_, m)| m.for_data_plane());
                // The data plane goes on (its ticks belong to the old life).
                if self.parts[p].data {
                    self.start_ticks(p, false, true);
                }
                self.at(self.now + down_ms * MS, Event::Restart { p });
            }
            Fault::Pause { p, ms } => {
                if self.parts[p].paused {
                    return;
                }
                self.parts[p].paused = true;
                self.parts[p].life += 1;
                self.at(self.now + ms * MS, Event::Resume { p });
            }
        }
    }

    fn cut(&mut self, l: usize) {
        self.up[l] = false;
        self.cut_count[l] += 1;
    }

    fn restart(&mut self, p: usize) {
        if self.parts[p].control.is_some() {
            return;
        }
        self.trace(Some(p), || "control service restarts".into());
        self.parts[p].life += 1;
        self.start_control(p);
        if !self.parts[p].paused {
            self.start_ticks(p, true, false);
        }
    }

    fn resume(&mut self, p: usize) {
        if !self.parts[p].paused {
            return;
        }
        self.trace(Some(p), || "resumes".into());
        self.parts[p].paused = false;
        self.parts[p].life += 1;
        // Without a control service (it crashed meanwhile) only the data plane ticks.
        let has_control = self.parts[p].control.is_some();
        self.start_ticks(p, has_control, true);
        for (from, msg) in std::mem::take(&mut self.parts[p].inbox) {
            self.receive(from, p, msg);
        }
    }

    /// A control service starts: it loads every authority it hosted before
    /// (`authority_host::load_existing`), quiet for a lease plus margin.
    fn start_control(&mut self, p: usize) {
        let local = self.local(p);
        let bug = self.bug_authority();
        let forget = self.params.bug == Some(VoteBug::WitnessForgetsVote)
            && !self.parts[p].data
            && self.parts[p].durable_before.is_some();
        if forget {
            // Planted: the witness's newest vote was not durable.
            self.parts[p].durable = self.parts[p].durable_before.clone();
        }
        let mut restarted_at = None;
        let two_node_heartbeat = self.parts[p].repl.as_ref().is_some_and(two_node_heartbeat);
        let host = self.parts[p].durable.clone().map(|d| {
            restarted_at = Some(d.last_epoch);
            SimHost::from_durable(d, &self.nodes, &self.settings, local, true, bug)
        });
        // A fresh incarnation, no heartbeat sent yet (not drawn from the RNG, so that a
        // seed's faults stay the same as before the echo).
        self.incarnations += 1;
        let last_sent = HeartbeatId {
            incarnation: self.incarnations,
            counter: 0,
        };
        let host = host.map(|mut h| {
            if two_node_heartbeat {
                self.arm_partner_wait(&mut h, local, true, last_sent);
            }
            h
        });
        if host.is_some() || self.checker_knows(p) {
            if let Err(e) = self.checker.restarted(p, restarted_at) {
                self.report.violation.get_or_insert(e);
            }
        }
        self.parts[p].control = Some(Control {
            host,
            newest: None,
            heard: BTreeMap::new(),
            last_answer: None,
            call: None,
            served_at: None,
            leased_until: None,
            last_sent,
        });
    }

    /// `authority_host::arm_partner_wait` (the caller checked the placement).
    fn arm_partner_wait(
        &self,
        h: &mut SimHost,
        local: u64,
        restarted: bool,
        last_sent: HeartbeatId,
    ) {
        if self.params.bug == Some(VoteBug::NoEchoWait) {
            h.plant_no_echo_wait();
        }
        h.require_partner(local, restarted, last_sent);
    }

    fn checker_knows(&self, p: usize) -> bool {
        self.report.issued_by.get(&p).is_some_and(|&n| n > 0)
    }

    // ------------------------------------------------------------------ links

    fn send(&mut self, from: usize, to: usize, kind: LinkKind, msg: Msg) {
        for l in 0..self.links.len() {
            let link = self.links[l];
            if link.kind != kind || !link.joins(from, to) {
                continue;
            }
            self.send_on(from, to, l, msg.clone());
        }
    }

    fn send_on(&mut self, from: usize, to: usize, l: usize, msg: Msg) {
        if !self.up[l] {
            return;
        }
        let datagram = matches!(msg, Msg::Heartbeat { .. } | Msg::EnginePing);
        if datagram && self.rng.chance(LOSS_PERCENT) {
            return;
        }
        let delay = if self.rng.chance(5) {
            self.rng.range(20 * MS, 300 * MS)
        } else {
            self.rng.range(MS / 5, 3 * MS)
        };
        let cut = self.cut_count[l];
        self.at(
            self.now + delay,
            Event::Deliver {
                from,
                to,
                link: l,
                cut,
                msg,
            },
        );
    }

    fn send_pings(&mut self, p: usize) {
        for q in 0..self.nodes.len() {
            if q != p {
                self.send(p, q, LinkKind::Sync, Msg::EnginePing);
            }
        }
    }

    fn send_heartbeats(&mut self, p: usize) {
        let local = self.local(p);
        let Some(c) = &mut self.parts[p].control else {
            return;
        };
        let hosted = c.host.as_ref().and_then(SimHost::hosted_epoch);
        let known = c.newest.as_ref().map_or(0, |c| c.epoch.0);
        // `HeartbeatSeq::next`: the local clock, strictly increasing.
        c.last_sent = HeartbeatId {
            incarnation: c.last_sent.incarnation,
            counter: local.max(c.last_sent.counter + 1),
        };
        let id = c.last_sent;
        let heard: BTreeMap<usize, HeartbeatId> =
            c.heard.iter().map(|(&q, h)| (q, h.newest)).collect();
        for l in 0..self.links.len() {
            let link = self.links[l];
            if link.touches(p) && link.kind.carries_heartbeats() {
                let q = if link.a == p { link.b } else { link.a };
                let msg = Msg::Heartbeat {
                    epoch: hosted.unwrap_or(0).max(known),
                    hosts: hosted.is_some(),
                    id,
                    echo: heard.get(&q).copied(),
                };
                self.send_on(p, q, l, msg);
            }
        }
    }

    fn receive(&mut self, from: usize, to: usize, msg: Msg) {
        let local = self.local(to);
        if let Msg::EnginePing = msg {
            if let Some(e) = &mut self.parts[to].engine {
                e.peer_heard.insert(node_id(from), local);
            }
            return;
        }
        if self.parts[to].control.is_none() {
            return; // connection refused / datagram dropped
        }
        match msg {
            Msg::EnginePing => {}
            Msg::Heartbeat {
                epoch,
                hosts,
                id,
                echo,
            } => {
                // `membership::Heard::accept`: heard now; what it says only if it is the
                // newest (not one overtaken on another link).
                let c = self.parts[to].control.as_mut().expect("checked");
                let newest = c.heard.get(&from).map(|h| h.newest);
                let h = c.heard.entry(from).or_insert(Heard {
                    last_any: local,
                    newest: id,
                    epoch,
                    hosts,
                    echo,
                });
                h.last_any = local;
                if echo::is_newer(newest, id) {
                    *h = Heard {
                        last_any: local,
                        newest: id,
                        epoch,
                        hosts,
                        echo,
                    };
                }
            }
            Msg::ApiRequest { id, requests } => {
                let answer = self.serve_api(to, from, requests);
                self.send(to, from, LinkKind::Mgmt, Msg::ApiReply { id, answer });
            }
            Msg::ApiReply { id, answer } => self.on_reply(to, id, answer),
        }
    }

    // ------------------------------------------------------------------ authority side

    /// `POST /api/v1/ha/authority/{device}` on participant `p`.
    fn serve_api(
        &mut self,
        p: usize,
        from: usize,
        requests: Vec<ToAuthority>,
    ) -> Result<Option<Grant>, String> {
        if !self.parts[p].data {
            // A witness creates the authority on the first request naming the nodes.
            self.ensure_host(p);
        }
        let local = self.local(p);
        let pick = self.rng.next_u64();
        let c = self.parts[p].control.as_mut().expect("alive");
        let last_sent = c.last_sent;
        let Some(h) = c.host.as_mut() else {
            return Err("this node does not host the authority".into());
        };
        let answer = h.handle(local, node_id(from), requests, pick, last_sent);
        self.after_host_op(p);
        answer
    }

    /// `authority_host::ensure_host`: open the state, or create it with the `--init zeroed`
    /// mark.
    fn ensure_host(&mut self, p: usize) {
        let local = self.local(p);
        let bug = self.bug_authority();
        if self.parts[p]
            .control
            .as_ref()
            .expect("alive")
            .host
            .is_some()
        {
            return;
        }
        let two_node_heartbeat = self.parts[p].repl.as_ref().is_some_and(two_node_heartbeat);
        let mut host = match self.parts[p].durable.clone() {
            Some(d) => SimHost::from_durable(d, &self.nodes, &self.settings, local, false, bug),
            None => {
                let h = SimHost::fresh(&self.nodes, &self.settings, local, bug);
                let first = h.config().cloned().expect("fresh");
                if let Err(e) = self.checker.issued(p, &first) {
                    self.report.violation.get_or_insert(e);
                }
                *self.report.issued_by.entry(p).or_default() += 1;
                h
            }
        };
        if two_node_heartbeat {
            let last_sent = self.parts[p].control.as_ref().expect("alive").last_sent;
            self.arm_partner_wait(&mut host, local, false, last_sent);
        }
        self.parts[p].control.as_mut().expect("alive").host = Some(host);
        self.after_host_op(p);
    }

    /// Persists what the host changed and reports new epochs to the checker.
    fn after_host_op(&mut self, p: usize) {
        let Some(h) = self.parts[p].control.as_mut().and_then(|c| c.host.as_mut()) else {
            return;
        };
        let issued = h.newly_issued();
        let saved = h.dirty.then(|| h.saved.clone());
        h.dirty = false;
        if let Some(s) = saved {
            let old = self.parts[p].durable.replace(s.clone());
            if old.as_ref().map(|o| &o.config) != Some(&s.config) {
                self.parts[p].durable_before = old;
            }
        }
        for c in issued {
            self.trace(Some(p), || {
                format!("authority issues epoch {} {:?}", c.epoch.0, c.members)
            });
            *self.report.issued_by.entry(p).or_default() += 1;
            if let Err(e) = self.checker.issued(p, &c) {
                self.report.violation.get_or_insert(e);
            }
        }
    }

    // ------------------------------------------------------------------ the driver

    fn control_tick(&mut self, p: usize) {
        let local = self.local(p);
        // `authority_host::tick_all`.
        if let Some(c) = self.parts[p].control.as_mut() {
            let last_sent = c.last_sent;
            if let Some(h) = c.host.as_mut() {
                h.tick(local, last_sent);
                self.after_host_op(p);
            }
        }
        if !self.parts[p].data {
            return;
        }
        let repl = self.parts[p].repl.clone().expect("data node");
        // 1. The data plane: its requests, and its clock at the report.
        let resync_ns = self.resync_ns;
        let engine = self.parts[p].engine.as_mut().expect("data node");
        let requests = engine.requests(local, resync_ns);
        let engine_config = engine.config.clone();
        let serving = engine.serving(local);
        let c = self.parts[p].control.as_mut().expect("alive");
        c.newest = newer(c.newest.take(), Some(&engine_config));
        if serving {
            c.served_at = Some(local);
        }

        // 2. The authority.
        // `driver::run`: the echo in the partner's newest heartbeat, taken before its
        // announcement is checked.
        let partner_heard = repl
            .partners
            .first()
            .filter(|_| two_node_heartbeat(&repl))
            .and_then(|f| c.heard.get(&(f.node_id as usize - 1)))
            .map(|h| (h.echo, h.last_any));
        self.check_superseded(p, &repl);
        if let Some((echo, at)) = partner_heard {
            if let Some(h) = self.parts[p].control.as_mut().and_then(|c| c.host.as_mut()) {
                h.partner_heard(echo, at);
            }
        }
        let c = self.parts[p].control.as_ref().expect("alive");
        let hosted = c.host.is_some();
        let superseded_by = c
            .host
            .as_ref()
            .and_then(|h| h.saved.superseded_by)
            .map(|(n, _)| n.0);
        match strategy::authority_place(&repl, hosted, superseded_by) {
            AuthorityPlace::Local => {
                self.ensure_host(p);
                let pick = self.rng.next_u64();
                let c = self.parts[p].control.as_mut().expect("alive");
                let last_sent = c.last_sent;
                let h = c.host.as_mut().expect("ensured");
                let answer = h.handle(local, node_id(p), requests, pick, last_sent);
                self.after_host_op(p);
                if let Ok(grant) = answer {
                    self.apply_answer(p, grant, local);
                }
            }
            AuthorityPlace::Remote { server } => {
                let c = self.parts[p].control.as_mut().expect("alive");
                let busy = c.call.is_some_and(|(_, sent, _)| {
                    local.saturating_sub(sent) < self.settings.remote_timeout.as_nanos() as u64
                });
                if !busy {
                    self.next_call += 1;
                    let id = self.next_call;
                    c.call = Some((id, local, local));
                    let to = (0..self.parts.len())
                        .find(|&q| participant_name(q, self.nodes.len()) == server)
                        .expect("known server");
                    self.send(p, to, LinkKind::Mgmt, Msg::ApiRequest { id, requests });
                }
            }
            // The file-share witness is not modelled here (its own model is in
            // `file_witness`'s tests): no authority, as for an unavailable one.
            AuthorityPlace::Unavailable { .. } | AuthorityPlace::FileWitness => {}
        }

        // 3. Heartbeat strategy: take the authority over?
        self.consider_takeover(p, &repl);
    }

    fn on_reply(&mut self, p: usize, id: u64, answer: Result<Option<Grant>, String>) {
        let local = self.local(p);
        let timeout = self.settings.remote_timeout.as_nanos() as u64;
        let c = self.parts[p].control.as_mut().expect("alive");
        let Some((want, sent, report_at)) = c.call else {
            return;
        };
        if want != id {
            return;
        }
        c.call = None;
        if local.saturating_sub(sent) > timeout {
            return; // the driver gave up on this call
        }
        if let Ok(grant) = answer {
            self.apply_answer(p, grant, report_at);
        }
    }

    /// An answer of the authority: `driver::to_update`, handed to the engine.
    fn apply_answer(&mut self, p: usize, grant: Option<Grant>, report_at: u64) {
        let local = self.local(p);
        let c = self.parts[p].control.as_mut().expect("alive");
        c.last_answer = Some(local);
        let Some(g) = grant else {
            return;
        };
        c.newest = newer(c.newest.take(), Some(&g.config));
        let engine = self.parts[p].engine.as_mut().expect("data node");
        if engine.config.epoch < g.config.epoch {
            let (e, m) = (g.config.epoch.0, g.config.members.clone());
            self.trace(Some(p), || format!("engine takes epoch {e} {m:?}"));
        }
        let engine = self.parts[p].engine.as_mut().expect("data node");
        engine.on_config(&g.config);
        if let Some(d) = g.lease_duration_ns {
            engine.on_lease(g.config.epoch, report_at.saturating_add(d));
            let c = self.parts[p].control.as_mut().expect("alive");
            c.leased_until = Some(report_at.saturating_add(d));
        }
    }

    /// `driver::check_superseded`.
    fn check_superseded(&mut self, p: usize, repl: &ReplicationConfig) {
        let local = self.local(p);
        let timeout = self.settings.heartbeat_timeout.as_nanos() as u64;
        let c = self.parts[p].control.as_mut().expect("alive");
        let Some(mine) = c.host.as_ref().and_then(SimHost::hosted_epoch) else {
            return;
        };
        for q in 0..self.nodes.len() {
            let Some(h) = c.heard.get(&q) else { continue };
            if !h.hosts || local.saturating_sub(h.last_any) >= timeout {
                continue;
            }
            if strategy::superseded(mine, h.epoch, repl.priority) {
                let theirs = h.epoch;
                c.host
                    .as_mut()
                    .expect("hosting")
                    .supersede(node_id(q), Epoch(theirs));
                self.report.superseded += 1;
                self.trace(Some(p), || {
                    format!(
                        "authority superseded by n{} at epoch {theirs} (own {mine})",
                        q + 1
                    )
                });
                self.after_host_op(p);
                return;
            }
        }
    }

    /// `driver::consider_takeover`, with `strategy::decide_takeover`.
    fn consider_takeover(&mut self, p: usize, repl: &ReplicationConfig) {
        let Some(first) = repl.partners.first() else {
            return;
        };
        let local = self.local(p);
        let q = first.node_id as usize - 1;
        let c = self.parts[p].control.as_ref().expect("alive");
        let heard = c.heard.get(&q).map(|h| h.last_any);
        let last = match (heard, c.last_answer) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let mut lease_plus_margin = self.settings.lease + self.settings.margin;
        if self.params.bug == Some(VoteBug::TakeoverLeaseNotWaited) {
            lease_plus_margin = self.settings.heartbeat_timeout / 2;
        }
        // `driver::leased_when_heard`.
        let half_margin = u64::try_from((self.settings.margin / 2).as_nanos()).unwrap_or(u64::MAX);
        let c = self.parts[p].control.as_ref().expect("alive");
        let held = crate::ha::driver::leased_when(c.served_at, c.leased_until);
        let leased_when_last_heard = match (last, held) {
            (Some(last), Some(held)) => held.saturating_add(half_margin) >= last,
            _ => false,
        };
        let c = self.parts[p].control.as_ref().expect("alive");
        let input = TakeoverInput {
            strategy: repl.failover,
            priority: repl.priority,
            hosting: c.host.as_ref().is_some_and(|h| !h.superseded()),
            partners: repl.partners.len(),
            me: node_id(p),
            authority: NodeId(first.node_id),
            silent_for: last.map(|t| std::time::Duration::from_nanos(local.saturating_sub(t))),
            lease_plus_margin,
            leased_when_last_heard,
            newest: c.newest.clone(),
        };
        let Takeover::TakeOver(config) = strategy::decide_takeover(&input) else {
            return;
        };
        // `AuthorityHost::take_over`: never below the epoch already on disk.
        if let Some(old) = &self.parts[p].durable {
            if old.last_epoch >= config.epoch {
                return;
            }
        }
        self.report.takeovers += 1;
        self.trace(Some(p), || {
            format!(
                "takes the authority over at epoch {} {:?}",
                config.epoch.0, config.members
            )
        });
        let saved = Durable {
            last_epoch: config.epoch,
            config: Some(config.clone()),
            took_over_from: Some(NodeId(first.node_id)),
            superseded_by: None,
        };
        let mut host = SimHost::from_durable(
            saved.clone(),
            &self.nodes,
            &self.settings,
            local,
            false,
            self.bug_authority(),
        );
        // `driver::consider_takeover`: `authority_host::arm_partner_wait`.
        let last_sent = self.parts[p].control.as_ref().expect("alive").last_sent;
        self.arm_partner_wait(&mut host, local, false, last_sent);
        if self.params.bug != Some(VoteBug::EpochNotPersisted) {
            self.parts[p].durable_before = self.parts[p].durable.replace(saved);
        }
        self.parts[p].control.as_mut().expect("alive").host = Some(host);
        *self.report.issued_by.entry(p).or_default() += 1;
        if let Err(e) = self.checker.issued(p, &config) {
            self.report.violation.get_or_insert(e);
        }
    }

    // ------------------------------------------------------------------ checks

    fn check(&mut self) -> Result<(), Violation> {
        if let Some(v) = self.report.violation.clone() {
            return Err(v);
        }
        let mut serving = Vec::new();
        for p in 0..self.nodes.len() {
            let local = self.local(p);
            let part = &self.parts[p];
            let e = part.engine.as_ref().expect("data node");
            if !part.paused && e.serving(local) {
                serving.push(Serving {
                    participant: p,
                    node: node_id(p),
                    config: &e.config,
                });
            }
        }
        let n = serving.len();
        self.checker.serving(&serving)?;
        if let Some(healed) = self.healed_at {
            let since = (self.now - healed) / MS;
            if n > 0 && self.report.serve_after_heal_ms.is_none() {
                self.report.serve_after_heal_ms = Some(since);
            }
            if n == self.nodes.len() && self.report.all_serve_after_heal_ms.is_none() {
                self.report.all_serve_after_heal_ms = Some(since);
            }
        }
        Ok(())
    }
}

fn newer(a: Option<EpochConfig>, b: Option<&EpochConfig>) -> Option<EpochConfig> {
    match (a, b) {
        (Some(a), Some(b)) if b.epoch > a.epoch => Some(b.clone()),
        (Some(a), _) => Some(a),
        (None, b) => b.cloned(),
    }
}

/// `authority_host::arm_partner_wait`'s condition: heartbeat strategy, two data nodes.
fn two_node_heartbeat(r: &ReplicationConfig) -> bool {
    r.failover == tandem_config::FailoverStrategy::Heartbeat && r.partners.len() == 1
}
