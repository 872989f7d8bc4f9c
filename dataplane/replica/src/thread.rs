//! The replication thread of one device: owns the engine, the local channel and the partners'
//! transports; turns block operations into host commands and engine outputs into I/O,
//! messages and completions.

use std::collections::{HashMap, VecDeque};
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use tandem_bdev::{
    AlignedBuf, BdevChannel, BdevError, BdevOp, Completion, DeviceInfo, TaskMgmt, BUF_ALIGN,
};
use tandem_config::ipc::{HaDeviceStatus, HaPartnerStatus, HaReport, HaUpdate};
use tandem_ha::authority::ToAuthority;
use tandem_ha::{
    BlockRange, Engine, Envelope, Geometry, HostCmd, HostStatus, HostTag, Input, IoTag, LocalOp,
    LocalResult, MemberState, Msg, NodeId, Output, ReplicaMeta, TaskMgmtKind, Time,
};
use tandem_mirror::SharedPayload;

use crate::journal_store::JournalStore;
use crate::meta::MetaStore;
use crate::transport::{PeerEvent, PeerTransport};
use crate::{Mail, Partner, ReplicaOptions, ReplicaState, Shared, Submit, DISCARD_CHUNK_BYTES};

type P = SharedPayload;

/// Engine ticks while it has work in flight, and when idle.
const TICK_BUSY: Duration = Duration::from_millis(10);
const TICK_IDLE: Duration = Duration::from_millis(100);
/// Requests kept for the authority between two exchanges (the engine repeats them anyway).
const REQUESTS_MAX: usize = 256;
/// Host submissions taken per loop iteration (the rest wait for the next one).
const SUBMIT_BATCH: usize = 256;
/// After work, the loop keeps polling this long before it sleeps: the next step of a
/// replicated write (the partner's ack, the local completion, the reactor's next command)
/// usually comes within it, and waking a sleeping thread costs more than that on a busy
/// machine. Idle, the thread sleeps (no spinning without recent work).
const SPIN: Duration = Duration::from_micros(50);
/// Tags of local reads the thread submits itself (outside the engine): the engine numbers its
/// local I/O from 1 upwards and never reaches this bit.
const OWN_IO_TAG: u64 = 1 << 63;

struct PartnerState {
    name: String,
    node_id: NodeId,
    transport: Box<dyn PeerTransport>,
    /// Messages the transport had no room for, in order (sent before anything newer).
    backlog: VecDeque<Envelope<P>>,
    regions_copied: u64,
    corrupt_payloads: u64,
    /// The partner's last sync offer was refused for its smaller copy (reported in the
    /// status until a resync for it is planned).
    size_refused: Option<tandem_config::ipc::HaSizeRefusal>,
}

enum ReqKind {
    Read {
        len: usize,
    },
    Write {
        buf: Option<AlignedBuf>,
        fua: bool,
        flushing: bool,
    },
    Flush,
    /// LOGICAL UNIT RESET / CLEAR TASK SET on its way to the partners.
    TaskMgmt,
    /// A persistent reservation change being ordered and applied everywhere.
    PrChange,
    Discard {
        next: u64,
        end: u64,
    },
    /// COMPARE AND WRITE: `buf` is the expected data then the new data (equal halves).
    CompareAndWrite {
        buf: Option<AlignedBuf>,
        offset: u64,
        fua: bool,
        flushing: bool,
    },
}

struct HostReq {
    chan: u64,
    tag: u64,
    kind: ReqKind,
    /// When the reactor's command reached this thread: the host latency that paces resync.
    since: Instant,
}

enum LocalPending {
    Read,
    Write,
    Flush,
    /// COMPARE AND WRITE, first step: reading the blocks to compare.
    CawRead {
        range: BlockRange,
        verify: P,
        data: P,
    },
    CawWrite,
    /// The engine answered MISCOMPARE for host request `req`: reading the local copy to
    /// find the first differing byte (the engine does not carry it; see `locate_miscompare`).
    LocateMiscompare {
        req: u64,
    },
}

/// What a look at the control mail found.
enum MailSeen {
    None,
    Some,
    /// `Mail::Stop`: the thread has shut down.
    Stop,
}

pub(crate) struct Worker {
    info: DeviceInfo,
    me: NodeId,
    engine: Engine<P>,
    store: MetaStore,
    /// The disk journal (disk-failure, disk-continuous); `None` for the RAM journal.
    journal: Option<JournalStore>,
    local: Box<dyn BdevChannel>,
    partners: Vec<PartnerState>,
    shared: Arc<Shared>,
    submit_rx: Receiver<Submit>,
    mail_rx: Receiver<Mail>,
    channels: HashMap<u64, (Sender<Completion>, Arc<crate::doorbell::CompletionSignal>)>,
    start: Instant,
    next_req: u64,
    reqs: HashMap<u64, HostReq>,
    local_ios: HashMap<u64, LocalPending>,
    inputs: VecDeque<Input<P>>,
    outs: Vec<Output<P>>,
    requests: Vec<ToAuthority>,
    next_tick: Instant,
    /// Channels to notify once this iteration's completions are queued.
    to_wake: Vec<u64>,
    completions: Vec<Completion>,
    events: Vec<PeerEvent>,
    on_state: Option<crate::StateCallback>,
    on_task_mgmt: Option<crate::TaskMgmtCallback>,
    on_pr_apply: Option<crate::PrApplyCallback>,
    /// What `on_state` was last told: serving, configuration epoch.
    told: Option<(bool, Option<tandem_ha::Epoch>)>,
}

impl Worker {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        info: DeviceInfo,
        opts: ReplicaOptions,
        meta: ReplicaMeta,
        store: MetaStore,
        journal: Option<JournalStore>,
        restored: Option<tandem_ha::journal::PersistedJournal>,
        local: Box<dyn BdevChannel>,
        partners: Vec<Partner>,
        shared: Arc<Shared>,
        submit_rx: Receiver<Submit>,
        mail_rx: Receiver<Mail>,
    ) -> Worker {
        let mut opts = opts;
        let on_state = opts.on_state.take();
        let on_task_mgmt = opts.on_task_mgmt.take();
        let on_pr_apply = opts.on_pr_apply.take();
        let geometry = Geometry::with_64k_regions(info.block_size, info.num_blocks);
        let mut engine = Engine::new(opts.node_id, geometry, meta, opts.boot_id, opts.engine);
        if let Some(j) = restored {
            engine.restore_journal(j);
        }
        engine.set_pr_state(std::mem::take(&mut opts.pr_state));
        let now = Instant::now();
        Worker {
            info,
            me: opts.node_id,
            engine,
            store,
            journal,
            local,
            partners: partners
                .into_iter()
                .map(|p| PartnerState {
                    name: p.name,
                    node_id: p.node_id,
                    transport: p.transport,
                    backlog: VecDeque::new(),
                    regions_copied: 0,
                    corrupt_payloads: 0,
                    size_refused: None,
                })
                .collect(),
            shared,
            submit_rx,
            mail_rx,
            channels: HashMap::new(),
            start: now,
            next_req: 1,
            reqs: HashMap::new(),
            local_ios: HashMap::new(),
            inputs: VecDeque::new(),
            outs: Vec::new(),
            requests: Vec::new(),
            next_tick: now,
            to_wake: Vec::new(),
            completions: Vec::new(),
            events: Vec::new(),
            on_state,
            on_task_mgmt,
            on_pr_apply,
            told: None,
        }
    }

    fn now(&self) -> Time {
        Time(self.start.elapsed().as_nanos() as u64)
    }

    pub(crate) fn run(&mut self) {
        tracing::info!(device = %self.info.name, node = self.me.0, "replication thread started");
        let mut fds: Vec<(RawFd, bool)> = Vec::new();
        let mut last_work = Instant::now();
        loop {
            let mut work = false;
            // Control mail first (channels must exist before their submissions complete).
            match self.take_mail() {
                MailSeen::Stop => return,
                MailSeen::Some => work = true,
                MailSeen::None => {}
            }
            for _ in 0..SUBMIT_BATCH {
                let Ok(s) = self.submit_rx.try_recv() else {
                    break;
                };
                work = true;
                if !self.channels.contains_key(&s.chan) {
                    // The channel was created after this pass read its mail: its
                    // `NewChannel` is queued before this submission (sent first by the same
                    // thread). Without it the completion would find no channel and be lost,
                    // and the command would never be answered.
                    if let MailSeen::Stop = self.take_mail() {
                        return;
                    }
                }
                self.on_submit(s);
            }
            self.pump();
            // Local completions.
            self.completions.clear();
            let mut done = std::mem::take(&mut self.completions);
            if self.local.poll(&mut done) > 0 {
                work = true;
                for c in done.drain(..) {
                    self.on_local_complete(c);
                }
            }
            self.completions = done;
            self.pump();
            // Partners.
            let now_i = Instant::now();
            for i in 0..self.partners.len() {
                let mut events = std::mem::take(&mut self.events);
                self.partners[i].transport.poll(now_i, &mut events);
                if !events.is_empty() {
                    work = true;
                }
                for ev in events.drain(..) {
                    self.on_peer_event(i, ev);
                }
                self.events = events;
                self.flush_backlog(i);
            }
            self.pump();
            // Time.
            let now_i = Instant::now();
            if now_i >= self.next_tick {
                self.inputs.push_back(Input::Tick);
                // A tick's outputs (retries, verdict requests, messages) are carried out by
                // another pass of the loop before it may sleep (messages go out in `poll`).
                if self.pump() {
                    work = true;
                }
                let period = if self.engine.busy() {
                    TICK_BUSY
                } else {
                    TICK_IDLE
                };
                self.next_tick = now_i + period;
            }
            // A paced resync resting between copies resumes on time, not at the next tick.
            if let Some(at) = self.engine.resync_resumes_at(self.now()) {
                let at = self.start + Duration::from_nanos(at.0);
                self.next_tick = self.next_tick.min(at);
            }
            self.wake_channels();
            self.tell_state();
            if work {
                last_work = Instant::now();
                continue;
            }
            if last_work.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            // Idle: block until something is ready or a timer is due. Submitters ring the
            // doorbell from here on; what they queued before is seen by this check.
            self.shared.bell.prepare_sleep();
            if !self.submit_rx.is_empty() || !self.mail_rx.is_empty() {
                self.shared.bell.awake();
                continue;
            }
            fds.clear();
            fds.push((self.shared.bell.fd(), false));
            if self.local.in_flight() > 0 {
                match self.local.wake_fd() {
                    Some(fd) => fds.push((fd, false)),
                    None => {
                        self.shared.bell.awake();
                        continue;
                    }
                }
            }
            let mut deadline = self.next_tick;
            for p in &self.partners {
                p.transport.wait_fds(&mut fds);
                if let Some(d) = p.transport.next_deadline() {
                    deadline = deadline.min(d);
                }
                if !p.backlog.is_empty() {
                    deadline = deadline.min(Instant::now() + Duration::from_millis(1));
                }
            }
            let timeout = deadline.saturating_duration_since(Instant::now());
            let ms = timeout.as_millis().min(1000) as i32;
            let ms = if ms == 0 && !timeout.is_zero() { 1 } else { ms };
            if let Err(e) = tandem_ffi::poll_fds(&fds, ms) {
                tracing::warn!(device = %self.info.name, error = %e, "replication thread: poll failed");
                std::thread::sleep(Duration::from_millis(1));
            }
            self.shared.bell.awake();
        }
    }

    /// Tells `on_state` when serving or the configuration changed (a lease running out
    /// included: checked on every loop, at least every tick).
    fn tell_state(&mut self) {
        let Some(f) = self.on_state.as_mut() else {
            return;
        };
        let now = Time(self.start.elapsed().as_nanos() as u64);
        let serving = self.engine.serving(now);
        let config = self.engine.config();
        let key = (serving, config.map(|c| c.epoch));
        if self.told != Some(key) {
            self.told = Some(key);
            f(&ReplicaState {
                serving,
                config: config.cloned(),
            });
        }
    }

    /// Feeds queued inputs to the engine and carries out its outputs until both are empty.
    /// Returns whether the engine produced any output.
    fn pump(&mut self) -> bool {
        let mut produced = false;
        while let Some(input) = self.inputs.pop_front() {
            let now = self.now();
            let mut outs = std::mem::take(&mut self.outs);
            self.engine.handle(now, input, &mut outs);
            produced |= !outs.is_empty();
            for o in outs.drain(..) {
                self.on_output(o);
            }
            self.outs = outs;
        }
        produced
    }

    fn on_output(&mut self, o: Output<P>) {
        match o {
            Output::Local { io, op } => self.submit_local(io, op),
            Output::Send { to, env } => {
                let Some(i) = self.partners.iter().position(|p| p.node_id == to) else {
                    tracing::warn!(device = %self.info.name, to = to.0, "message for an unknown partner dropped");
                    return;
                };
                if matches!(env.msg, Msg::RegionCopy { .. }) {
                    self.partners[i].regions_copied += 1;
                }
                let p = &mut self.partners[i];
                if !p.backlog.is_empty() {
                    p.backlog.push_back(env);
                    return;
                }
                if let Err(full) = p.transport.send(env) {
                    p.backlog.push_back(*full.0);
                }
            }
            Output::Complete { tag, status } => self.on_host_complete(tag, status),
            Output::VerdictRequest { suspect, epoch } => {
                let p = self.partners.iter().find(|p| p.node_id == suspect);
                tracing::info!(device = %self.info.name, suspect = suspect.0, epoch = epoch.0,
                    link_up = p.map(|p| p.transport.is_up()), backlog = p.map(|p| p.backlog.len()),
                    engine = %self.engine.busy_detail(), "asking the authority for a verdict");
                self.request(ToAuthority::Verdict { suspect, epoch });
            }
            Output::Join { meta } => self.request(ToAuthority::Join { meta }),
            Output::Synchronized { node, epoch } => {
                self.request(ToAuthority::Synchronized { node, epoch })
            }
            Output::TaskMgmt { kind } => {
                tracing::info!(device = %self.info.name, ?kind, "task management from a partner");
                if let Some(f) = self.on_task_mgmt.as_mut() {
                    f(match kind {
                        TaskMgmtKind::LunReset => TaskMgmt::LunReset,
                        TaskMgmtKind::ClearTaskSet => TaskMgmt::ClearTaskSet,
                    });
                }
            }
            Output::PrApply {
                version,
                state,
                notice,
            } => {
                tracing::debug!(device = %self.info.name, epoch = version.epoch.0, n = version.n,
                    "persistent reservation state applied");
                if let Some(f) = self.on_pr_apply.as_mut() {
                    f(crate::PrApply {
                        version: tandem_bdev::PrVersionId {
                            epoch: version.epoch.0,
                            n: version.n,
                        },
                        state,
                        notice,
                    });
                }
            }
            Output::SyncRefused { node, decision } => {
                tracing::warn!(device = %self.info.name, partner = node.0, ?decision, "partner's data cannot be synchronized automatically");
            }
            Output::SyncSizeRefused {
                node,
                joiner_blocks,
                sequencer_blocks,
            } => {
                let refusal = tandem_config::ipc::HaSizeRefusal {
                    partner_blocks: joiner_blocks,
                    own_blocks: sequencer_blocks,
                };
                if let Some(p) = self.partners.iter_mut().find(|p| p.node_id == node) {
                    // The joiner repeats its offer: say it once per change.
                    if p.size_refused.replace(refusal) != Some(refusal) {
                        tracing::warn!(device = %self.info.name, partner = node.0, joiner_blocks,
                            sequencer_blocks,
                            "partner's copy is smaller than this one: not synchronized until the extend is finished for it (`tandem device extend` again)");
                    }
                }
            }
            Output::ResyncPlanned {
                node,
                regions,
                full,
            } => {
                if let Some(p) = self.partners.iter_mut().find(|p| p.node_id == node) {
                    p.size_refused = None;
                }
                tracing::info!(device = %self.info.name, partner = node.0, regions,
                    full = full.is_some(), full_because = ?full, "resync planned");
            }
            // First among a step's outputs: durable before any write, message or answer of
            // that step is acted on (blocking write and fdatasync; only when a region turns
            // hot or a partner's bitmap gains a bit not covered otherwise).
            Output::PersistJournal(rec) => {
                if let Some(j) = self.journal.as_mut() {
                    if let Err(e) = j.persist(&rec) {
                        // Never trust this journal again: without it a restart is a full
                        // sync, which is always correct.
                        tracing::error!(device = %self.info.name, error = %e,
                            "disk journal not written: discarding it (the next restart resyncs fully)");
                        j.discard();
                        self.journal = None;
                    }
                }
            }
            Output::PersistMeta(meta) => {
                let version = meta.version;
                match self.store.save(&meta) {
                    Ok(()) => self.inputs.push_back(Input::MetaPersisted { version }),
                    // Not durable: the engine keeps holding what depends on it (never
                    // acknowledged); the next change asks again.
                    Err(e) => {
                        tracing::error!(device = %self.info.name, error = %e, "replica metadata not saved")
                    }
                }
            }
        }
    }

    fn request(&mut self, r: ToAuthority) {
        if !self.requests.contains(&r) && self.requests.len() < REQUESTS_MAX {
            self.requests.push(r);
        }
    }

    fn flush_backlog(&mut self, i: usize) {
        let p = &mut self.partners[i];
        while let Some(env) = p.backlog.pop_front() {
            if let Err(full) = p.transport.send(env) {
                p.backlog.push_front(*full.0);
                break;
            }
        }
    }

    fn on_peer_event(&mut self, i: usize, ev: PeerEvent) {
        let p = &mut self.partners[i];
        match ev {
            PeerEvent::Message(env) => {
                // End to end: the payload must still match the CRC computed where it entered
                // from the host. A corrupt one never reaches the disk or the engine.
                let intact = tandem_mirror::payload_parts(&env.msg)
                    .iter()
                    .flatten()
                    .all(|d| d.is_intact());
                if !intact {
                    p.corrupt_payloads += 1;
                    tracing::error!(device = %self.info.name, partner = %p.name, "payload from partner fails its end-to-end CRC: message dropped");
                    return;
                }
                let from = p.node_id;
                self.inputs.push_back(Input::Peer { from, env });
            }
            PeerEvent::Connected { peer_boot_id } => {
                tracing::info!(device = %self.info.name, partner = %p.name, peer_boot_id, "partner connected")
            }
            PeerEvent::PeerRestarted { peer_boot_id } => {
                tracing::info!(device = %self.info.name, partner = %p.name, peer_boot_id, "partner restarted")
            }
            PeerEvent::AllLinksDown => {
                tracing::warn!(device = %self.info.name, partner = %p.name, "every sync link to the partner is down")
            }
            PeerEvent::LinkUp { link } => {
                tracing::info!(device = %self.info.name, partner = %p.name, %link, "sync link up")
            }
            PeerEvent::LinkDown { link, reason } => {
                tracing::warn!(device = %self.info.name, partner = %p.name, %link, %reason, "sync link down")
            }
        }
    }

    // ---- host side ----------------------------------------------------------------------

    fn complete(
        &mut self,
        chan: u64,
        tag: u64,
        result: Result<(), BdevError>,
        buf: Option<AlignedBuf>,
    ) {
        if let Some((tx, _)) = self.channels.get(&chan) {
            let _ = tx.send(Completion { tag, result, buf });
            if !self.to_wake.contains(&chan) {
                self.to_wake.push(chan);
            }
        }
    }

    fn wake_channels(&mut self) {
        for chan in self.to_wake.drain(..) {
            if let Some((_, wake)) = self.channels.get(&chan) {
                wake.signal();
            }
        }
    }

    fn check(&self, offset: u64, len: u64, write: bool) -> Result<(), BdevError> {
        if write && self.info.read_only {
            return Err(BdevError::ReadOnly);
        }
        let bs = u64::from(self.info.block_size);
        if offset % bs != 0 || len % bs != 0 {
            return Err(BdevError::Misaligned);
        }
        let (lba, n) = (offset / bs, len / bs);
        if lba > self.info.num_blocks || self.info.num_blocks - lba < n {
            return Err(BdevError::OutOfRange);
        }
        if len > tandem_bdev::MAX_IO_BYTES {
            return Err(BdevError::Other(format!(
                "I/O of {len} bytes exceeds the {}-byte limit",
                tandem_bdev::MAX_IO_BYTES
            )));
        }
        Ok(())
    }

    fn range(&self, offset: u64, len: u64) -> BlockRange {
        let bs = u64::from(self.info.block_size);
        BlockRange::new(offset / bs, (len / bs) as u32)
    }

    /// Handles every control mail queued now.
    fn take_mail(&mut self) -> MailSeen {
        let mut seen = MailSeen::None;
        while let Ok(m) = self.mail_rx.try_recv() {
            seen = MailSeen::Some;
            match m {
                Mail::NewChannel {
                    id,
                    completions,
                    wake,
                } => {
                    self.channels.insert(id, (completions, wake));
                }
                Mail::DropChannel { id } => {
                    self.channels.remove(&id);
                }
                Mail::Exchange { updates, reply } => {
                    let report = self.exchange(updates);
                    let _ = reply.send(report);
                }
                Mail::Grow { num_blocks, reply } => {
                    let _ = reply.send(self.grow(num_blocks));
                }
                Mail::Stop => {
                    self.shutdown();
                    return MailSeen::Stop;
                }
            }
        }
        seen
    }

    fn on_submit(&mut self, s: Submit) {
        let Submit { chan, tag, op } = s;
        let id = self.next_req;
        self.next_req += 1;
        match op {
            BdevOp::Read { offset, len } => {
                if let Err(e) = self.check(offset, u64::from(len), false) {
                    return self.complete(chan, tag, Err(e), None);
                }
                if len == 0 {
                    return self.complete(chan, tag, Ok(()), Some(AlignedBuf::new(0, BUF_ALIGN)));
                }
                let range = self.range(offset, u64::from(len));
                self.reqs.insert(
                    id,
                    HostReq {
                        chan,
                        tag,
                        since: Instant::now(),
                        kind: ReqKind::Read { len: len as usize },
                    },
                );
                self.host(id, HostCmd::Read { range });
            }
            BdevOp::Write { offset, buf, fua } => {
                if let Err(e) = self.check(offset, buf.len() as u64, true) {
                    return self.complete(chan, tag, Err(e), Some(buf));
                }
                let cmd = if buf.is_empty() {
                    if !fua {
                        return self.complete(chan, tag, Ok(()), Some(buf));
                    }
                    HostCmd::Flush
                } else {
                    HostCmd::Write {
                        range: self.range(offset, buf.len() as u64),
                        data: SharedPayload::from_host(&buf),
                    }
                };
                let flushing = matches!(cmd, HostCmd::Flush);
                self.reqs.insert(
                    id,
                    HostReq {
                        chan,
                        tag,
                        since: Instant::now(),
                        kind: ReqKind::Write {
                            buf: Some(buf),
                            fua,
                            flushing,
                        },
                    },
                );
                self.host(id, cmd);
            }
            BdevOp::Flush => {
                self.reqs.insert(
                    id,
                    HostReq {
                        chan,
                        tag,
                        since: Instant::now(),
                        kind: ReqKind::Flush,
                    },
                );
                self.host(id, HostCmd::Flush);
            }
            BdevOp::TaskManagement { function } => {
                // Already applied on this node by the caller; the engine carries it to every
                // synchronized partner and answers once they applied it.
                let kind = match function {
                    TaskMgmt::LunReset => TaskMgmtKind::LunReset,
                    TaskMgmt::ClearTaskSet => TaskMgmtKind::ClearTaskSet,
                };
                self.reqs.insert(
                    id,
                    HostReq {
                        chan,
                        tag,
                        since: Instant::now(),
                        kind: ReqKind::TaskMgmt,
                    },
                );
                self.host(id, HostCmd::TaskMgmt { kind });
            }
            BdevOp::ReservationChange {
                base,
                state,
                notice,
            } => {
                if state.len() > tandem_ha::PR_BLOB_MAX || notice.len() > tandem_ha::PR_BLOB_MAX {
                    return self.complete(chan, tag, Err(BdevError::Unsupported), None);
                }
                self.reqs.insert(
                    id,
                    HostReq {
                        chan,
                        tag,
                        since: Instant::now(),
                        kind: ReqKind::PrChange,
                    },
                );
                let base = tandem_ha::PrVersion {
                    epoch: tandem_ha::Epoch(base.epoch),
                    n: base.n,
                };
                self.host(
                    id,
                    HostCmd::PrChange {
                        base,
                        state,
                        notice,
                    },
                );
            }
            BdevOp::CompareAndWrite { offset, buf, fua } => {
                let half = buf.len() / 2;
                let checked = if buf.len() % 2 != 0 {
                    Err(BdevError::Misaligned)
                } else {
                    self.check(offset, half as u64, true)
                };
                if let Err(e) = checked {
                    return self.complete(chan, tag, Err(e), Some(buf));
                }
                if half == 0 {
                    return self.complete(chan, tag, Ok(()), Some(buf));
                }
                // The sequencer's cluster-wide range lock makes it atomic against every
                // other write, through any node.
                let cmd = HostCmd::CompareAndWrite {
                    range: self.range(offset, half as u64),
                    verify: SharedPayload::from_host(&buf[..half]),
                    data: SharedPayload::from_host(&buf[half..]),
                };
                self.reqs.insert(
                    id,
                    HostReq {
                        chan,
                        tag,
                        since: Instant::now(),
                        kind: ReqKind::CompareAndWrite {
                            buf: Some(buf),
                            offset,
                            fua,
                            flushing: false,
                        },
                    },
                );
                self.host(id, cmd);
            }
            BdevOp::Discard { offset, len } => {
                if let Err(e) = self.check(offset, 0, true).and_then(|()| {
                    // The whole range, without the per-I/O size limit (it goes in chunks).
                    let bs = u64::from(self.info.block_size);
                    if len % bs != 0 {
                        return Err(BdevError::Misaligned);
                    }
                    if self.info.num_blocks - offset / bs < len / bs {
                        return Err(BdevError::OutOfRange);
                    }
                    Ok(())
                }) {
                    return self.complete(chan, tag, Err(e), None);
                }
                if len == 0 {
                    return self.complete(chan, tag, Ok(()), None);
                }
                self.reqs.insert(
                    id,
                    HostReq {
                        chan,
                        tag,
                        since: Instant::now(),
                        kind: ReqKind::Discard {
                            next: offset,
                            end: offset + len,
                        },
                    },
                );
                self.next_discard_chunk(id);
            }
        }
    }

    fn host(&mut self, id: u64, cmd: HostCmd<P>) {
        self.inputs.push_back(Input::Host {
            tag: HostTag(id),
            cmd,
        });
    }

    /// DISCARD is a write of zero blocks (so every replica reads back zeroes), one bounded
    /// chunk at a time.
    fn next_discard_chunk(&mut self, id: u64) {
        let Some(HostReq {
            kind: ReqKind::Discard { next, end },
            ..
        }) = self.reqs.get_mut(&id)
        else {
            return;
        };
        let n = (*end - *next).min(DISCARD_CHUNK_BYTES);
        let offset = *next;
        *next += n;
        let range = self.range(offset, n);
        let data = SharedPayload::from_host(&vec![0u8; n as usize]);
        self.host(id, HostCmd::Write { range, data });
    }

    fn on_host_complete(&mut self, tag: HostTag, status: HostStatus<P>) {
        let id = tag.0;
        let Some(mut req) = self.reqs.remove(&id) else {
            tracing::warn!(device = %self.info.name, tag = id, "completion for an unknown host command");
            return;
        };
        let err = match status {
            HostStatus::Good { data } => match &mut req.kind {
                ReqKind::Read { len } => {
                    let len = *len;
                    let result = match data {
                        Some(d) if d.as_slice().len() == len => {
                            let mut buf = AlignedBuf::new(len, BUF_ALIGN);
                            buf.copy_from_slice(d.as_slice());
                            Ok(buf)
                        }
                        _ => Err(BdevError::Other("replicated read returned no data".into())),
                    };
                    match result {
                        Ok(buf) => {
                            self.observe_latency(req.since);
                            self.complete(req.chan, req.tag, Ok(()), Some(buf))
                        }
                        Err(e) => self.complete(req.chan, req.tag, Err(e), None),
                    }
                    return;
                }
                ReqKind::Write { buf, fua, flushing } => {
                    if *fua && !*flushing {
                        *flushing = true;
                        self.reqs.insert(id, req);
                        self.host(id, HostCmd::Flush);
                        return;
                    }
                    let buf = buf.take();
                    self.observe_latency(req.since);
                    self.complete(req.chan, req.tag, Ok(()), buf);
                    return;
                }
                ReqKind::CompareAndWrite {
                    buf, fua, flushing, ..
                } => {
                    if *fua && !*flushing {
                        *flushing = true;
                        self.reqs.insert(id, req);
                        self.host(id, HostCmd::Flush);
                        return;
                    }
                    let buf = buf.take();
                    self.observe_latency(req.since);
                    self.complete(req.chan, req.tag, Ok(()), buf);
                    return;
                }
                ReqKind::Flush => {
                    self.observe_latency(req.since);
                    self.complete(req.chan, req.tag, Ok(()), None);
                    return;
                }
                ReqKind::TaskMgmt | ReqKind::PrChange => {
                    self.complete(req.chan, req.tag, Ok(()), None);
                    return;
                }
                ReqKind::Discard { next, end } => {
                    if next < end {
                        self.reqs.insert(id, req);
                        self.next_discard_chunk(id);
                    } else {
                        self.observe_latency(req.since);
                        self.complete(req.chan, req.tag, Ok(()), None);
                    }
                    return;
                }
            },
            HostStatus::NotReady => BdevError::NotReady,
            HostStatus::MediumError => {
                BdevError::Io(std::io::Error::other("the local copy failed the I/O"))
            }
            HostStatus::Miscompare => {
                if matches!(req.kind, ReqKind::CompareAndWrite { .. }) {
                    return self.locate_miscompare(id, req);
                }
                if matches!(req.kind, ReqKind::PrChange) {
                    // Another change came first: the caller recomputes from the state
                    // `on_pr_apply` delivered meanwhile.
                    BdevError::Miscompare { offset: 0 }
                } else {
                    BdevError::Other("miscompare for a command that compares nothing".into())
                }
            }
        };
        let buf = match &mut req.kind {
            ReqKind::Write { buf, .. } | ReqKind::CompareAndWrite { buf, .. } => buf.take(),
            _ => None,
        };
        self.complete(req.chan, req.tag, Err(err), buf);
    }

    /// A host command answered GOOD: its latency on this thread (queueing behind resync
    /// copies included) paces the resync.
    fn observe_latency(&mut self, since: Instant) {
        let took = since.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
        let now = self.now();
        self.engine.observe_host_latency(now, took);
    }

    /// SCSI reports where a COMPARE AND WRITE first differed, but the engine's MISCOMPARE
    /// does not say (for a forwarded one the compare ran on the sequencer). Every replica
    /// held the compared data when the sequencer compared (the range lock lets no write
    /// overlap until every copy has it), so the local copy, read now, gives the same offset
    /// unless a newer write to the range has landed since; then the offset is that of the
    /// newer data, or 0 if it now matches (the MISCOMPARE itself stands either way).
    fn locate_miscompare(&mut self, id: u64, req: HostReq) {
        let ReqKind::CompareAndWrite {
            buf: Some(buf),
            offset,
            ..
        } = &req.kind
        else {
            return self.complete(
                req.chan,
                req.tag,
                Err(BdevError::Miscompare { offset: 0 }),
                None,
            );
        };
        let (offset, len) = (*offset, buf.len() / 2);
        let own = OWN_IO_TAG | id;
        self.reqs.insert(id, req);
        self.local_ios
            .insert(own, LocalPending::LocateMiscompare { req: id });
        self.local.submit(
            own,
            BdevOp::Read {
                offset,
                len: len as u32,
            },
        );
    }

    fn on_miscompare_located(&mut self, req_id: u64, c: Completion) {
        let Some(mut req) = self.reqs.remove(&req_id) else {
            if let Some(b) = c.buf {
                self.local.free_buf(b);
            }
            return;
        };
        let ReqKind::CompareAndWrite { buf, .. } = &mut req.kind else {
            return;
        };
        let buf = buf.take();
        let offset = match (&c.result, c.buf.as_deref(), buf.as_deref()) {
            (Ok(()), Some(local), Some(host)) => {
                let expected = &host[..host.len() / 2];
                local
                    .iter()
                    .zip(expected)
                    .position(|(a, b)| a != b)
                    .unwrap_or(0) as u64
            }
            _ => 0,
        };
        if let Some(b) = c.buf {
            self.local.free_buf(b);
        }
        self.complete(
            req.chan,
            req.tag,
            Err(BdevError::Miscompare { offset }),
            buf,
        );
    }

    // ---- local side ---------------------------------------------------------------------

    fn aligned_copy(&mut self, data: &P) -> AlignedBuf {
        // The one copy left on the write path (zero copy: issue 10).
        let mut buf = self.local.alloc_buf(data.as_slice().len());
        buf.copy_from_slice(data.as_slice());
        buf
    }

    fn byte_range(&self, range: &BlockRange) -> (u64, u64) {
        let bs = u64::from(self.info.block_size);
        (range.start.0 * bs, u64::from(range.len_blocks) * bs)
    }

    fn submit_local(&mut self, io: IoTag, op: LocalOp<P>) {
        match op {
            LocalOp::Read { range } => {
                let (offset, len) = self.byte_range(&range);
                self.local_ios.insert(io.0, LocalPending::Read);
                self.local.submit(
                    io.0,
                    BdevOp::Read {
                        offset,
                        len: len as u32,
                    },
                );
            }
            LocalOp::Write { range, data } => {
                let (offset, len) = self.byte_range(&range);
                if !data.is_intact() || data.as_slice().len() as u64 != len {
                    // Never write corrupt data; the engine treats it as a failed local write.
                    tracing::error!(device = %self.info.name, offset, "write payload fails its end-to-end check: not written");
                    self.inputs.push_back(Input::LocalDone {
                        io,
                        result: LocalResult::Failed,
                    });
                    return;
                }
                let buf = self.aligned_copy(&data);
                self.local_ios.insert(io.0, LocalPending::Write);
                self.local.submit(
                    io.0,
                    BdevOp::Write {
                        offset,
                        buf,
                        fua: false,
                    },
                );
            }
            LocalOp::CompareAndWrite {
                range,
                verify,
                data,
            } => {
                let (offset, len) = self.byte_range(&range);
                self.local_ios.insert(
                    io.0,
                    LocalPending::CawRead {
                        range,
                        verify,
                        data,
                    },
                );
                self.local.submit(
                    io.0,
                    BdevOp::Read {
                        offset,
                        len: len as u32,
                    },
                );
            }
            LocalOp::Flush => {
                self.local_ios.insert(io.0, LocalPending::Flush);
                self.local.submit(io.0, BdevOp::Flush);
            }
        }
    }

    fn on_local_complete(&mut self, c: Completion) {
        let io = IoTag(c.tag);
        let Some(pending) = self.local_ios.remove(&c.tag) else {
            if let Some(b) = c.buf {
                self.local.free_buf(b);
            }
            return;
        };
        if let Err(e) = &c.result {
            tracing::error!(device = %self.info.name, error = %e, "local I/O of a replicated device failed");
        }
        if let LocalPending::LocateMiscompare { req } = pending {
            return self.on_miscompare_located(req, c);
        }
        let result = match (pending, c.result) {
            (LocalPending::Read, Ok(())) => match c.buf {
                Some(b) => {
                    let p = SharedPayload::from_host(&b);
                    self.local.free_buf(b);
                    LocalResult::ReadData(p)
                }
                None => LocalResult::Failed,
            },
            (
                LocalPending::CawRead {
                    range,
                    verify,
                    data,
                },
                Ok(()),
            ) => {
                let equal = c.buf.as_deref() == Some(verify.as_slice());
                if let Some(b) = c.buf {
                    self.local.free_buf(b);
                }
                if !equal {
                    LocalResult::Miscompare
                } else {
                    let (offset, _) = self.byte_range(&range);
                    let buf = self.aligned_copy(&data);
                    self.local_ios.insert(io.0, LocalPending::CawWrite);
                    self.local.submit(
                        io.0,
                        BdevOp::Write {
                            offset,
                            buf,
                            fua: false,
                        },
                    );
                    return;
                }
            }
            (_, Ok(())) => {
                if let Some(b) = c.buf {
                    self.local.free_buf(b);
                }
                LocalResult::Done
            }
            (_, Err(_)) => {
                if let Some(b) = c.buf {
                    self.local.free_buf(b);
                }
                LocalResult::Failed
            }
        };
        self.inputs.push_back(Input::LocalDone { io, result });
    }

    // ---- control side -------------------------------------------------------------------

    /// Grows the engine's geometry and this thread's bound on host LBAs (the local copy has
    /// grown already). The same size again is a no-op.
    fn grow(&mut self, num_blocks: u64) -> Result<(), String> {
        if num_blocks == self.engine.geometry().num_blocks {
            return Ok(());
        }
        self.engine
            .grow(num_blocks)
            .map_err(|e| format!("the replication engine refused to grow: {e}"))?;
        self.info.num_blocks = num_blocks;
        tracing::info!(device = %self.info.name, num_blocks, "replicated device grown");
        Ok(())
    }

    fn exchange(&mut self, updates: Vec<HaUpdate>) -> HaReport {
        for u in updates {
            self.inputs.push_back(Input::Config(u.config));
            if let Some(l) = u.lease {
                self.inputs.push_back(Input::Lease {
                    epoch: l.epoch,
                    until: Time(l.requested_at_ns.saturating_add(l.duration_ns)),
                });
            }
        }
        self.pump();
        self.wake_channels();
        let now = self.now();
        let mut requests = vec![ToAuthority::LeaseRequest];
        if self.join_deliverable() {
            requests.append(&mut self.requests);
        } else {
            // Kept for a later exchange (the engine repeats its Join anyway).
            let (joins, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.requests)
                .into_iter()
                .partition(|r| matches!(r, ToAuthority::Join { .. }));
            self.requests = joins;
            requests.extend(rest);
        }
        let config = self.engine.config().cloned();
        let partners = self
            .partners
            .iter()
            .map(|p| {
                let dirty = self.engine.dirty_for(p.node_id).count();
                let (dirty_list, dirty_complete) = self
                    .engine
                    .dirty_list(p.node_id, tandem_config::ipc::HA_DIRTY_LIST_MAX);
                let syncing = config
                    .as_ref()
                    .is_some_and(|c| c.state_of(p.node_id) == MemberState::Syncing);
                HaPartnerStatus {
                    name: p.name.clone(),
                    node_id: p.node_id.0,
                    links: p.transport.status(),
                    dirty_regions: dirty,
                    resync_done_regions: p.regions_copied,
                    resync_total_regions: if syncing {
                        p.regions_copied + dirty
                    } else {
                        p.regions_copied
                    },
                    bytes_mirrored: p.transport.bytes_sent(),
                    dirty_list,
                    dirty_complete,
                    size_refused: p.size_refused,
                }
            })
            .collect();
        HaReport {
            now_ns: now.0,
            requests,
            status: HaDeviceStatus {
                node_id: self.me.0,
                serving: self.engine.serving(now),
                config,
                meta: self.engine.meta().clone(),
                partners,
            },
        }
    }

    /// A Join goes to the authority only while a sync link to the sequencer (which copies
    /// the data to a joiner) is up. Otherwise the authority would make this node a syncing
    /// member whose copy the sequencer's writes then wait for, until the node is removed
    /// again, and again (seen with every sync link cut and the heartbeat link alive:
    /// `tests/tests/ha_netns.rs`). Without a configuration (cold start) it always goes.
    fn join_deliverable(&self) -> bool {
        let Some(cfg) = self.engine.config() else {
            return true;
        };
        cfg.sequencer == self.me
            || self
                .partners
                .iter()
                .any(|p| p.node_id == cfg.sequencer && p.transport.is_up())
    }

    fn shutdown(&mut self) {
        tracing::info!(device = %self.info.name, "replication thread stopping");
        let ids: Vec<u64> = self.reqs.keys().copied().collect();
        for id in ids {
            if let Some(mut req) = self.reqs.remove(&id) {
                let buf = match &mut req.kind {
                    ReqKind::Write { buf, .. } | ReqKind::CompareAndWrite { buf, .. } => buf.take(),
                    _ => None,
                };
                self.complete(req.chan, req.tag, Err(BdevError::NotReady), buf);
            }
        }
        while let Ok(s) = self.submit_rx.try_recv() {
            self.complete(s.chan, s.tag, Err(BdevError::NotReady), s.op.into_buf());
        }
        self.wake_channels();
        // Local I/O still in flight finishes before the channel goes away.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut done = Vec::new();
        while self.local.in_flight() > 0 && Instant::now() < deadline {
            done.clear();
            if self.local.poll(&mut done) == 0 {
                if let Some(fd) = self.local.wake_fd() {
                    let _ = tandem_ffi::wait_readable(fd, 10);
                }
            }
        }
    }
}
