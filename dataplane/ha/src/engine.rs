//! The replication engine of one replica of one device: a pure state machine.
//!
//! ## Ordering rule
//! Every write of an epoch is ordered by that epoch's **sequencer** (one member of the
//! configuration, see [`EpochConfig`]). The sequencer holds a cluster-wide lock on the
//! write's block range from the moment it orders the write until every replica that
//! receives writes has applied it, so overlapping writes are never in flight together
//! anywhere and every replica applies them in the same order. Writes that do not overlap
//! never wait for each other.
//!
//! * A write that arrives at the sequencer: lock, send `Mirror` to every other replica and
//!   write locally in parallel; GOOD when the local write and every `MirrorAck` are in.
//!   One round trip.
//! * A write that arrives at another replica (the origin): `Forward` it to the sequencer,
//!   which locks, applies it locally and on the remaining replicas, then `Grant`s; the
//!   origin writes locally, answers GOOD and sends `Release`. One round trip in a two-node
//!   cluster, two in a three-node one.
//! * COMPARE AND WRITE is executed by the sequencer under the same lock (compare + write on
//!   its copy, then mirrored), so it is atomic against every write through every node.
//!
//! ## Reads
//! Reads are served from the local copy of a synchronized replica holding a valid lease.
//! A read waits while its range is locked (sequencer) or behind a **read barrier** (every
//! other replica: a write applied here but perhaps not yet everywhere, a forwarded write
//! not yet applied here, a region whose content is being reconciled). So once any read
//! returns a write's data, every replica returns it or a later write's.
//!
//! ## Failures
//! A partner that does not answer within `peer_timeout` makes the engine ask the failover
//! authority for a verdict; affected writes are held meanwhile. The authority answers with
//! a new [`EpochConfig`] (the partner out, or this node out). When the sequencer itself
//! changes, the new sequencer stops all I/O until every synchronized survivor has reported
//! its *uncertain* regions (writes in flight when the old sequencer left), copies its own
//! content of those regions to everyone, and only then serves them. A node that is not
//! synchronized, or whose lease ran out, answers NOT READY (04/0C).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::generation::{compare, ReplicaMeta, SyncDecision};
use crate::io::{FullSyncCause, HostCmd, HostStatus, Input, LocalOp, LocalResult, Output};
use crate::journal::{DirtyBitmap, Journal, JournalKind, PersistedJournal};
use crate::membership::{EpochConfig, MemberState};
use crate::msg::{Envelope, ForwardedOp, Msg};
use crate::pacing::{PacingConfig, ResyncPacer};
use crate::ranges::{Barriers, RangeLocks};
use crate::reservations::{ClusterPr, Next as PrNext, PrChange, PrVersion};
use crate::task_mgmt::TaskMgmtOps;
use crate::types::{
    BlockRange, Epoch, Geometry, HostTag, IoTag, NodeId, OpId, RegionIndex, TaskMgmtKind, Time,
};

/// Deliberate defects, switched on only by the simulator's tests to prove that its checker
/// catches each of them. Production code never sets one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// GOOD to the host when the local write is done, without waiting for partners.
    AckBeforePartner,
    /// Overlapping writes are not ordered by the sequencer's range locks.
    NoConflictOrdering,
    /// A replica that goes on without a partner keeps its old data generation.
    GenerationNotBumped,
    /// Resync copies a region without locking it against host writes.
    ResyncWithoutRegionLock,
    /// Messages from a sender's former role (an older epoch) are accepted.
    AcceptStaleEpoch,
    /// Replicas serve reads of ranges that are not yet on every replica.
    NoReadBarrier,
    /// Host writes are held for a silent partner without bound (contract j).
    UnboundedHolding,
    /// A `DiskContinuous` journal records a region in its activity log only when the write
    /// to it completes, not before it is submitted.
    ActivityNotBeforeWrite,
    /// A persistent reservation change is answered GOOD once the sequencer applied it,
    /// without waiting for the other members.
    PrAnsweredBeforeApplied,
    /// The sequencer ignores the size in a joiner's sync offer: a smaller joiner is
    /// synchronized although it drops every write and region copy beyond its end.
    JoinSizeIgnored,
}

/// A joiner's `SyncOffer`, as the sequencer weighs it.
struct Offer {
    meta: ReplicaMeta,
    dirty: Vec<RegionIndex>,
    journal_complete: bool,
    num_blocks: Option<u64>,
}

/// Why [`Engine::grow`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrowRefused {
    Shrink { current: u64 },
    NoConfiguration,
    NotSynchronized { node: NodeId, state: MemberState },
    Resyncing,
}

impl std::fmt::Display for GrowRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GrowRefused::Shrink { current } => {
                write!(f, "devices only grow (now {current} blocks)")
            }
            GrowRefused::NoConfiguration => write!(f, "the replica has no configuration yet"),
            GrowRefused::NotSynchronized { node, state } => write!(
                f,
                "replica {} is {state:?}, not synchronized: extend once every replica is",
                node.0
            ),
            GrowRefused::Resyncing => {
                write!(f, "a resync is running: extend once it has finished")
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    /// A partner silent this long on an operation makes the engine ask for a verdict.
    pub peer_timeout_ns: u64,
    /// Region copies in flight at once during resync (the rest of the link serves hosts);
    /// with pacing, the widest the window grows.
    pub resync_parallel: usize,
    /// Pace the resync by the latency of host commands answered here (contract i); `None`:
    /// the fixed window of `resync_parallel`.
    pub resync_pacing: Option<PacingConfig>,
    /// Messages from a newer epoch kept until this node's configuration catches up.
    pub future_messages_max: usize,
    /// Bound on the host writes this node holds unanswered (contract j): at most this many
    /// writes and this many bytes of their data. A write beyond it ends NOT READY at once, and
    /// the engine asks the authority for a verdict about every partner those writes wait for,
    /// without waiting for `peer_timeout_ns` (the authority then declares that partner out).
    /// A single write larger than `held_bytes_max` is taken when nothing else is held.
    pub held_writes_max: usize,
    pub held_bytes_max: u64,
    pub planted_bug: Option<PlantedBug>,
    /// What survives a crash of this replica's journal (`docs/ha.md`, "Sync journal").
    pub journal: JournalKind,
    /// Hot regions a `DiskContinuous` journal's activity log keeps (64 KiB each).
    pub activity_regions: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            peer_timeout_ns: 1_000_000_000,
            resync_parallel: 4,
            resync_pacing: None,
            future_messages_max: 4096,
            held_writes_max: 1000,
            held_bytes_max: 64 << 20,
            planted_bug: None,
            journal: JournalKind::Ram,
            activity_regions: 1024,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum BarrierKey {
    Op(OpId),
    Region(RegionIndex),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CopyPurpose {
    /// Bring a syncing member up to date.
    Resync,
    /// Make survivors agree on regions that were in flight when the sequencer changed.
    Reconcile,
}

#[derive(Clone, Debug)]
enum SeqKind<P> {
    Write {
        data: P,
    },
    CompareAndWrite {
        verify: P,
        data: P,
    },
    Copy {
        region: RegionIndex,
        purpose: CopyPurpose,
    },
    /// A forwarded write that the old sequencer had already applied (this replica applied
    /// its mirror): it keeps its place in the order, ahead of anything newer on its range.
    /// Its data is already everywhere after the reconcile, so it is only granted (never
    /// applied or compared again) once its origin asks again, or released if the origin had
    /// its grant already.
    Replayed,
}

impl<P> From<ForwardedOp<P>> for SeqKind<P> {
    fn from(op: ForwardedOp<P>) -> Self {
        match op {
            ForwardedOp::Write { data } => SeqKind::Write { data },
            ForwardedOp::CompareAndWrite { verify, data } => {
                SeqKind::CompareAndWrite { verify, data }
            }
        }
    }
}

/// Stages of an operation at the sequencer.
///
/// ```text
/// WaitLock ─► (Comparing) ─► Applying ─► done (own host write / copy)
///   │             │              └─────► WaitRelease ─► done (forwarded write)
///   └─(Copy)─► Reading ─► Applying
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
enum SeqStage {
    WaitLock,
    Comparing,
    Reading,
    Applying {
        local_done: bool,
        acks: Vec<NodeId>,
    },
    WaitRelease,
    /// `Replayed`: holding its lock until the origin forwards it again or releases it.
    AwaitOrigin {
        forwarded: bool,
    },
}

#[derive(Clone, Debug)]
struct SeqOp<P> {
    range: BlockRange,
    kind: SeqKind<P>,
    host: Option<HostTag>,
    /// Replicas that must apply it (all non-out members but me and the origin).
    targets: Vec<NodeId>,
    /// Synchronized targets that keep a read barrier until `Commit`.
    commit_to: Vec<NodeId>,
    stage: SeqStage,
    since: Time,
    /// When it was ordered (`since` moves with each stage); a resync copy's duration paces
    /// the next one.
    created: Time,
}

#[derive(Clone, Debug)]
enum FwdStage {
    AwaitGrant,
    Applying,
}

/// A host write taken by a replica that is not the sequencer.
#[derive(Clone, Debug)]
struct FwdOp<P> {
    range: BlockRange,
    tag: HostTag,
    op: ForwardedOp<P>,
    stage: FwdStage,
    since: Time,
    /// Sent again to a new sequencer: a former one may have applied it already.
    retried: bool,
}

#[derive(Clone, Debug)]
struct AppliedOp {
    range: BlockRange,
    commit_follows: bool,
    done: bool,
    since: Time,
}

#[derive(Clone, Copy, Debug)]
enum IoPurpose {
    HostRead(HostTag),
    Flush(HostTag),
    Sequenced(OpId),
    ForwardedApply(OpId),
    MirrorApply(OpId),
    CopyApply { id: OpId, region: RegionIndex },
}

#[derive(Clone, Debug)]
enum ReadStage {
    Waiting,
    Reading,
}

/// Local I/O ordering on one node. A write never runs beside an overlapping write or read:
/// the order of two overlapping writes on a disk is undefined, and a read that races a write
/// may see either. A read never runs beside an overlapping write either (a resync copy must
/// not read a region while a write granted by a former sequencer is still landing there).
/// Later overlapping I/O waits, in arrival order.
#[derive(Debug)]
struct LocalWrites<P> {
    /// In flight: range, tag, is a read.
    in_flight: Vec<(BlockRange, IoTag, bool)>,
    queued: VecDeque<(BlockRange, IoTag, LocalOp<P>)>,
}

fn is_read<P>(op: &LocalOp<P>) -> bool {
    matches!(op, LocalOp::Read { .. })
}

impl<P> LocalWrites<P> {
    /// Whether `range` (a read if `read`) must wait behind what is in flight or queued
    /// (`earlier` queued entries only).
    fn blocked(&self, range: &BlockRange, read: bool, earlier: usize) -> bool {
        let conflicts = |other_read: bool| !(read && other_read);
        self.in_flight
            .iter()
            .any(|w| conflicts(w.2) && w.0.overlaps(range))
            || self
                .queued
                .iter()
                .take(earlier)
                .any(|w| conflicts(is_read(&w.2)) && w.0.overlaps(range))
    }

    fn submit(&mut self, range: BlockRange, io: IoTag, op: LocalOp<P>, out: &mut Vec<Output<P>>) {
        let read = is_read(&op);
        if self.blocked(&range, read, self.queued.len()) {
            self.queued.push_back((range, io, op));
        } else {
            self.in_flight.push((range, io, read));
            out.push(Output::Local { io, op });
        }
    }

    fn submit_read(&mut self, range: BlockRange, io: IoTag, out: &mut Vec<Output<P>>) {
        self.submit(range, io, LocalOp::Read { range }, out);
    }

    fn complete(&mut self, io: IoTag, out: &mut Vec<Output<P>>) {
        self.in_flight.retain(|w| w.1 != io);
        let mut i = 0;
        while i < self.queued.len() {
            let range = self.queued[i].0;
            let read = is_read(&self.queued[i].2);
            if self.blocked(&range, read, i) {
                i += 1;
            } else {
                let (r, io, op) = self.queued.remove(i).expect("index in range");
                self.in_flight.push((r, io, read));
                out.push(Output::Local { io, op });
            }
        }
    }

    fn write_ranges(&self) -> impl Iterator<Item = BlockRange> + '_ {
        self.in_flight
            .iter()
            .filter(|w| !w.2)
            .map(|w| w.0)
            .chain(self.queued.iter().filter(|w| !is_read(&w.2)).map(|w| w.0))
    }
}

/// One replica's engine. `P` is the payload handle (cloned when one write goes to several
/// places; in the data plane a reference-counted buffer, so cloning is not copying).
pub struct Engine<P> {
    me: NodeId,
    geometry: Geometry,
    opts: Options,
    config: Option<EpochConfig>,
    sequencer_since: Epoch,
    member_since: BTreeMap<NodeId, Epoch>,
    lease_until: Time,
    meta: ReplicaMeta,
    meta_durable: u64,
    journal: Journal,
    /// Partners whose dirty bitmap this process lost in a restart (not just incomplete for
    /// fast sync): a list of the regions written since they left may miss some.
    journal_lost_in_restart: BTreeSet<NodeId>,
    /// Sequencer: joiners refused because their copy was smaller than this geometry, with
    /// the size they offered. Once grown, their sync must copy every region from that old
    /// end on: blocks there may have been written (and acknowledged by them) before their
    /// image was cut back, which no journal bitmap records.
    short_joiners: BTreeMap<NodeId, u64>,
    /// Joiner: this copy grew while not synchronized (the extend finished for it after it
    /// came back short); the size before. Its sync offers list the regions from there on as
    /// dirty, for any sequencer (the reason above).
    grown_unsynchronized_from: Option<u64>,
    /// Started without knowing whether partners saw its last writes: must be resynced
    /// before serving, unless it is the only synchronized member.
    restarted: bool,
    next_op: u64,
    next_io: u64,
    locks: RangeLocks<OpId>,
    seq: BTreeMap<OpId, SeqOp<P>>,
    fwd: BTreeMap<OpId, FwdOp<P>>,
    applied: BTreeMap<OpId, AppliedOp>,
    reads: BTreeMap<HostTag, (BlockRange, ReadStage)>,
    barriers: Barriers<BarrierKey>,
    io: BTreeMap<IoTag, IoPurpose>,
    writes: LocalWrites<P>,
    /// Completions held until the metadata of this epoch is durable.
    awaiting_meta: Vec<(HostTag, HostStatus<P>)>,
    /// New sequencer: survivors whose uncertain regions have not been reported yet.
    gate: Option<(BTreeSet<NodeId>, Time)>,
    reconcile: BTreeSet<RegionIndex>,
    /// Operations admitted while the gate was closed.
    gated_ops: Vec<OpId>,
    /// This node's own COMPARE AND WRITEs that it ordered itself after taking over as
    /// sequencer while they awaited a grant from the former one: a failed compare of one of
    /// them ends NOT READY, not MISCOMPARE.
    retried_own: BTreeSet<OpId>,
    /// Survivors that left this sequencer's gate without reporting their uncertain regions:
    /// only their own journal knows those regions, so if it was lost they need a full sync.
    unreported: BTreeSet<NodeId>,
    gated_host: VecDeque<(HostTag, HostCmd<P>)>,
    resync: BTreeMap<NodeId, VecDeque<RegionIndex>>,
    copies_in_flight: BTreeMap<NodeId, usize>,
    /// The resync window, paced by host latency when `Options::resync_pacing` says so.
    pacer: ResyncPacer,
    /// Verdicts asked for in this epoch, and when (asked again if no answer comes: the
    /// request or the authority's link may have been lost).
    suspected: BTreeMap<NodeId, Time>,
    future: Vec<(NodeId, Envelope<P>)>,
    /// Syncing members whose copy is complete: `false` until they acknowledged
    /// `SyncComplete`, then `true` and reported to the authority (re-reported until it makes
    /// them synchronized: the report can be lost).
    sync_done: BTreeMap<NodeId, bool>,
    /// Joining replica: the sequencer's metadata from `SyncComplete`, adopted when the
    /// authority makes this replica synchronized.
    adopt: Option<ReplicaMeta>,
    /// When this node last asked to join or offered its state for a resync (retried: the
    /// sequencer may have restarted and forgotten it).
    last_join_attempt: Option<Time>,
    /// Host writes taken here and not answered yet, and the bytes of their data (contract j):
    /// own writes being sequenced here, forwarded writes awaiting their grant, writes queued
    /// behind a closed gate. Kept incrementally (no walk on the write path).
    held_writes: usize,
    held_bytes: u64,
    /// Host writes refused because the bound on held writes was reached.
    refused_over_bound: u64,
    /// Host writes answered NOT READY when the lease ran out while they were still in
    /// flight (waiting for a partner that may never answer). The operation goes on inside
    /// the cluster; its later completion is not passed to the host a second time.
    answered_early: BTreeSet<HostTag>,
    answering_early: Vec<HostTag>,
    /// LOGICAL UNIT RESET / CLEAR TASK SET taken from a host here, waiting until every
    /// synchronized partner applied it.
    task_mgmt: TaskMgmtOps,
    /// Persistent reservation state and the changes in flight (`reservations.rs`).
    pr: ClusterPr,
}

impl<P: Clone> Engine<P> {
    /// A replica starting (first start or restart) with its persisted metadata. It serves
    /// nothing until the authority's configuration and a lease arrive.
    ///
    /// `boot_id` must differ on every start of this replica (the data plane uses its start
    /// time): operation ids carry it, so an id from before a crash is never reused after it.
    pub fn new(
        me: NodeId,
        geometry: Geometry,
        meta: ReplicaMeta,
        boot_id: u32,
        opts: Options,
    ) -> Self {
        let meta_durable = meta.version;
        let pacer = ResyncPacer::new(opts.resync_parallel, opts.resync_pacing);
        let journal = Journal::with_kind(geometry, opts.journal, opts.activity_regions);
        Engine {
            me,
            geometry,
            opts,
            config: None,
            sequencer_since: Epoch(0),
            member_since: BTreeMap::new(),
            lease_until: Time(0),
            meta,
            meta_durable,
            journal,
            journal_lost_in_restart: BTreeSet::new(),
            short_joiners: BTreeMap::new(),
            grown_unsynchronized_from: None,
            restarted: true,
            next_op: u64::from(boot_id) << 32,
            next_io: 0,
            locks: RangeLocks::new(),
            seq: BTreeMap::new(),
            fwd: BTreeMap::new(),
            applied: BTreeMap::new(),
            reads: BTreeMap::new(),
            barriers: Barriers::new(),
            io: BTreeMap::new(),
            writes: LocalWrites {
                in_flight: Vec::new(),
                queued: VecDeque::new(),
            },
            awaiting_meta: Vec::new(),
            gate: None,
            reconcile: BTreeSet::new(),
            gated_ops: Vec::new(),
            unreported: BTreeSet::new(),
            retried_own: BTreeSet::new(),
            gated_host: VecDeque::new(),
            resync: BTreeMap::new(),
            copies_in_flight: BTreeMap::new(),
            pacer,
            suspected: BTreeMap::new(),
            future: Vec::new(),
            sync_done: BTreeMap::new(),
            adopt: None,
            last_join_attempt: None,
            held_writes: 0,
            held_bytes: 0,
            refused_over_bound: 0,
            answered_early: BTreeSet::new(),
            answering_early: Vec::new(),
            task_mgmt: TaskMgmtOps::default(),
            pr: ClusterPr::new(boot_id),
        }
    }

    /// A replica of a brand-new device (every replica identical: created zeroed), so the
    /// first configuration needs no resync.
    pub fn new_device(me: NodeId, geometry: Geometry, config: &EpochConfig, opts: Options) -> Self {
        let mut meta = ReplicaMeta::new(config.generation);
        meta.epoch = config.epoch;
        let mut e = Self::new(me, geometry, meta, 0, opts);
        e.restarted = false;
        e
    }

    /// A restarted replica's disk journal as read back (before the first configuration).
    /// Not called, or called with a journal that failed its checks: every bitmap is lost.
    pub fn restore_journal(&mut self, persisted: PersistedJournal) {
        self.journal.restore(persisted);
    }

    pub fn activity_regions(&self) -> Vec<RegionIndex> {
        self.journal.activity_regions()
    }

    pub fn node(&self) -> NodeId {
        self.me
    }

    pub fn config(&self) -> Option<&EpochConfig> {
        self.config.as_ref()
    }

    pub fn meta(&self) -> &ReplicaMeta {
        &self.meta
    }

    pub fn dirty_for(&mut self, partner: NodeId) -> DirtyBitmap {
        self.journal.bitmap(partner).clone()
    }

    /// The regions dirty for `partner` (at most `max`, the first ones) and whether they
    /// include every region this replica wrote since the partner left (false when this
    /// process restarted since: the RAM bitmap was lost). Shown before a split brain is
    /// resolved: what the discarded side wrote on its own. (Stricter completeness for fast
    /// sync, which also counts writes before this replica joined, is not asked here.)
    pub fn dirty_list(&mut self, partner: NodeId, max: usize) -> (Vec<u64>, bool) {
        let list = self
            .journal
            .bitmap(partner)
            .first_set(max)
            .into_iter()
            .map(|r| r.0)
            .collect();
        (list, !self.journal_lost_in_restart.contains(&partner))
    }

    /// Whether host I/O is served now (ALUA active/optimized); otherwise the node reports
    /// unavailable and answers NOT READY.
    pub fn serving(&self, now: Time) -> bool {
        self.config
            .as_ref()
            .is_some_and(|c| c.state_of(self.me) == MemberState::Synchronized)
            && !self.restarted
            && now < self.lease_until
    }

    /// Host writes held unanswered here and the bytes of their data (contract j; bounded by
    /// `Options::held_writes_max` and `held_bytes_max`).
    pub fn held_writes(&self) -> (usize, u64) {
        (self.held_writes, self.held_bytes)
    }

    /// The same, counted from scratch (the simulator checks that the running count is right).
    pub fn held_writes_recount(&self) -> (usize, u64) {
        let seq = self
            .seq
            .values()
            .filter(|o| o.host.is_some())
            .map(|o| o.range);
        let fwd = self.fwd.values().map(|o| o.range);
        let gated = self.gated_host.iter().filter_map(|(_, c)| write_range(c));
        seq.chain(fwd)
            .chain(gated)
            .fold((0, 0), |(n, b), r| (n + 1, b + self.range_bytes(&r)))
    }

    /// The device grew to `num_blocks` on this replica (contract l). Refused unless every
    /// member of the configuration is synchronized and no resync or reconcile runs: the new
    /// blocks are then zero on every replica, so they start clean in every journal. A
    /// partner that is out or syncing would need its own copy grown and the new regions
    /// copied; refusing keeps that case out (the administrator extends once the device is
    /// whole again). Idempotent: growing to the current size is a no-op.
    ///
    /// One exception: a replica that is itself not synchronized (it came back smaller than
    /// the cluster after a restart between the two phases of an extend) may grow whatever
    /// the others' states: its copy is resynchronized before it serves, and its sync offer
    /// lists the grown regions as dirty (see `grown_unsynchronized_from`).
    pub fn grow(&mut self, num_blocks: u64) -> Result<(), GrowRefused> {
        if num_blocks < self.geometry.num_blocks {
            return Err(GrowRefused::Shrink {
                current: self.geometry.num_blocks,
            });
        }
        if num_blocks == self.geometry.num_blocks {
            return Ok(());
        }
        let Some(cfg) = &self.config else {
            return Err(GrowRefused::NoConfiguration);
        };
        let me_unsynchronized = cfg.sequencer != self.me
            && cfg.state_of(self.me) != MemberState::Synchronized
            && self.resync.is_empty()
            && self.sync_done.is_empty()
            && self.adopt.is_none();
        if me_unsynchronized {
            let old = self.geometry.num_blocks;
            self.grown_unsynchronized_from =
                Some(self.grown_unsynchronized_from.map_or(old, |o| o.min(old)));
            self.geometry.num_blocks = num_blocks;
            self.journal.grow(self.geometry);
            return Ok(());
        }
        if let Some((n, st)) = cfg
            .members
            .iter()
            .find(|(_, st)| *st != MemberState::Synchronized)
        {
            return Err(GrowRefused::NotSynchronized {
                node: *n,
                state: *st,
            });
        }
        if self.restarted
            || self.gate.is_some()
            || !self.reconcile.is_empty()
            || !self.resync.is_empty()
            || !self.sync_done.is_empty()
        {
            return Err(GrowRefused::Resyncing);
        }
        self.geometry.num_blocks = num_blocks;
        self.journal.grow(self.geometry);
        Ok(())
    }

    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// A host command of this device was answered `latency_ns` after the data plane took it
    /// (measured by the data plane, which sees the whole path). Paces the resync; no output.
    pub fn observe_host_latency(&mut self, now: Time, latency_ns: u64) {
        self.pacer.observe(now, latency_ns);
    }

    /// When a resync resting below one copy (pacing) may start its next copy: the data
    /// plane ticks the engine then (its regular tick can be much later than a copy's rest).
    /// `None` when it is not resting after `now`.
    pub fn resync_resumes_at(&self, now: Time) -> Option<Time> {
        if self.resync.values().all(|q| q.is_empty()) {
            return None;
        }
        self.pacer.resting_until().filter(|&t| t > now)
    }

    /// The resync window in sixteenths of a region copy, and how often it was shrunk.
    pub fn resync_window(&self) -> (u32, u64) {
        (self.pacer.window_sixteenths(), self.pacer.decreases())
    }

    /// Host writes refused (NOT READY) because the bound on held writes was reached.
    pub fn refused_over_bound(&self) -> u64 {
        self.refused_over_bound
    }

    /// What keeps the engine busy, for diagnostics.
    pub fn busy_detail(&self) -> String {
        format!(
            "seq {:?} fwd {} reads {} io {} gate {:?} resync {:?} awaiting_meta {} task_mgmt {}",
            self.seq
                .iter()
                .map(|(id, o)| (id.n, o.stage.clone()))
                .collect::<Vec<_>>(),
            self.fwd.len(),
            self.reads.len(),
            self.io.len(),
            self.gate,
            self.resync,
            self.awaiting_meta.len(),
            self.task_mgmt.len()
        )
    }

    /// Operations in flight of any kind (for tests and quiesce checks).
    pub fn busy(&self) -> bool {
        !(self.seq.is_empty()
            && self.fwd.is_empty()
            && self.reads.is_empty()
            && self.io.is_empty()
            && self.gate.is_none()
            && self.resync.values().all(|q| q.is_empty())
            && self.awaiting_meta.is_empty()
            && self.task_mgmt.is_empty()
            && self.pr.is_idle())
    }

    /// The persistent reservation state this node holds, and its version.
    pub fn pr_state(&self) -> (PrVersion, &[u8]) {
        (self.pr.version(), self.pr.state())
    }

    /// The reservation state loaded at start (APTPL): what this node pushes if it becomes
    /// the sequencer before any other state reaches it. A joining node's is replaced by the
    /// sequencer's before it serves.
    pub fn set_pr_state(&mut self, state: Vec<u8>) {
        self.pr.set(PrVersion::default(), state);
    }

    /// Feed one input; outputs are appended to `out`.
    pub fn handle(&mut self, now: Time, input: Input<P>, out: &mut Vec<Output<P>>) {
        let first_new = out.len();
        match input {
            Input::Host { tag, cmd } => self.on_host(now, tag, cmd, out),
            Input::Peer { from, env } => self.on_peer(now, from, env, out),
            Input::LocalDone { io, result } => self.on_local_done(now, io, result, out),
            Input::MetaPersisted { version } => self.on_meta_persisted(now, version, out),
            Input::Config(cfg) => self.on_config(now, cfg, out),
            Input::Lease { epoch, until } => {
                if self.config.as_ref().is_some_and(|c| epoch <= c.epoch) {
                    self.lease_until = self.lease_until.max(until);
                }
            }
            Input::Tick => self.on_tick(now, out),
        }
        if !self.answered_early.is_empty() {
            self.drop_second_answers(first_new, out);
        }
        for tag in self.answering_early.drain(..) {
            self.answered_early.insert(tag);
            not_ready(tag, out);
        }
        if let Some(rec) = self.journal.take_record() {
            // Durable before anything else this step does (writes, messages, answers).
            out.insert(first_new, Output::PersistJournal(rec));
        }
        self.check_invariants();
    }

    /// Removes, from the outputs of this step, the completions of host writes that were
    /// already answered NOT READY when the lease ran out (each host command is answered once).
    fn drop_second_answers(&mut self, first_new: usize, out: &mut Vec<Output<P>>) {
        let mut i = first_new;
        while i < out.len() {
            let second =
                matches!(&out[i], Output::Complete { tag, .. } if self.answered_early.remove(tag));
            if second {
                out.remove(i);
            } else {
                i += 1;
            }
        }
    }

    // ---------------------------------------------------------------- host commands

    fn on_host(&mut self, now: Time, tag: HostTag, cmd: HostCmd<P>, out: &mut Vec<Output<P>>) {
        if !self.serving(now) {
            not_ready(tag, out);
            return;
        }
        if let Some(range) = write_range(&cmd) {
            let bytes = self.range_bytes(&range);
            let over = self.held_writes >= self.opts.held_writes_max
                || self.held_bytes.saturating_add(bytes) > self.opts.held_bytes_max;
            let enforced = self.opts.planted_bug != Some(PlantedBug::UnboundedHolding);
            if self.held_writes > 0 && over && enforced {
                // Contract j: holding more would be unbounded memory. Refuse this one (the
                // host retries it) and have the partners that hold the others declared out
                // now rather than after `peer_timeout`.
                self.refused_over_bound += 1;
                let silent = self.awaited_partners(now, None);
                for p in silent {
                    self.suspect(now, p, out);
                }
                not_ready(tag, out);
                return;
            }
        }
        if self.gate.is_some() {
            if let Some(range) = write_range(&cmd) {
                self.hold(&range);
            }
            self.gated_host.push_back((tag, cmd));
            return;
        }
        match cmd {
            HostCmd::Read { range } => {
                self.reads.insert(tag, (range, ReadStage::Waiting));
                self.try_read(tag, out);
            }
            HostCmd::Flush => {
                let io = self.new_io(IoPurpose::Flush(tag));
                out.push(Output::Local {
                    io,
                    op: LocalOp::Flush,
                });
            }
            HostCmd::Write { range, data } => {
                self.host_write(now, tag, range, ForwardedOp::Write { data }, out)
            }
            HostCmd::CompareAndWrite {
                range,
                verify,
                data,
            } => self.host_write(
                now,
                tag,
                range,
                ForwardedOp::CompareAndWrite { verify, data },
                out,
            ),
            HostCmd::TaskMgmt { kind } => self.host_task_mgmt(now, tag, kind, out),
            HostCmd::PrChange {
                base,
                state,
                notice,
            } => {
                let id = self.new_op();
                let change = PrChange {
                    id,
                    base,
                    state,
                    notice,
                };
                self.pr.wait_own(tag, now, change.clone());
                self.pr_submit(now, change, out);
            }
        }
    }

    // ------------------------------------------------------ persistent reservations

    /// Origin: a change to the sequencer (this node, or a message).
    fn pr_submit(&mut self, now: Time, change: PrChange, out: &mut Vec<Output<P>>) {
        if self.sequencer() == self.me {
            self.pr_order(now, change, out);
        } else {
            let msg = Msg::PrForward {
                id: change.id,
                base: change.base,
                state: change.state,
                notice: change.notice,
            };
            self.send(self.sequencer(), msg, out);
        }
    }

    /// Sequencer: queue a reservation change and apply the next ones whose turn it is.
    fn pr_order(&mut self, now: Time, change: PrChange, out: &mut Vec<Output<P>>) {
        self.pr.enqueue(change);
        self.pr_pump(now, out);
    }

    fn pr_pump(&mut self, now: Time, out: &mut Vec<Output<P>>) {
        while let Some(next) = self.pr.next() {
            match next {
                PrNext::Stale(id) => self.pr_answer(now, id, false, out),
                PrNext::Apply(c, version) => {
                    // Applied here first, then on every member that receives writes (a
                    // syncing one too: its `SyncComplete` may already be on its way).
                    out.push(Output::PrApply {
                        version,
                        state: c.state.clone(),
                        notice: c.notice.clone(),
                    });
                    let targets: BTreeSet<NodeId> = self
                        .config
                        .as_ref()
                        .map(|cfg| cfg.write_targets().filter(|&n| n != self.me).collect())
                        .unwrap_or_default();
                    for &t in &targets {
                        let msg = Msg::PrApply {
                            id: c.id,
                            version,
                            state: c.state.clone(),
                            notice: c.notice.clone(),
                        };
                        self.send(t, msg, out);
                    }
                    let early = self.opts.planted_bug == Some(PlantedBug::PrAnsweredBeforeApplied);
                    if early {
                        self.pr_answer(now, c.id, true, out);
                        continue;
                    }
                    if self.pr.start(c.id, targets, now) {
                        self.pr_answer(now, c.id, true, out);
                    }
                }
            }
        }
    }

    /// Sequencer: the change `id` is done (applied everywhere, or refused as stale).
    fn pr_answer(&mut self, now: Time, id: OpId, applied: bool, out: &mut Vec<Output<P>>) {
        if id.origin == self.me {
            self.pr_own_done(now, id, applied, out);
        } else {
            self.send(id.origin, Msg::PrDone { id, applied }, out);
        }
    }

    fn pr_own_done(&mut self, now: Time, id: OpId, applied: bool, out: &mut Vec<Output<P>>) {
        if let Some(tag) = self.pr.own_done(id) {
            let status = if applied {
                HostStatus::Good { data: None }
            } else {
                HostStatus::Miscompare
            };
            self.answer(now, tag, status, out);
        }
    }

    /// The sequencer's current state to `to` (before `SyncComplete`, or at a takeover), so
    /// a (re)joining member never keeps a stale reservation. Its acknowledgement is ignored:
    /// a later change sent on the same link is acknowledged after it.
    fn pr_push(&mut self, to: NodeId, out: &mut Vec<Output<P>>) {
        let id = self.new_op();
        let (version, state) = (self.pr.version(), self.pr.state().to_vec());
        let msg = Msg::PrApply {
            id,
            version,
            state,
            notice: Vec::new(),
        };
        self.send(to, msg, out);
    }

    /// This node starts sequencing reservation changes (a new sequencer, or one that was
    /// restarted and just became synchronized). Every change answered GOOD is in its state
    /// (it received writes then); one a former sequencer half applied may be on some members
    /// only: this node's state, restamped with the current epoch, replaces it everywhere.
    fn pr_take_over(&mut self, out: &mut Vec<Output<P>>) {
        let version = self.pr.take_over(self.epoch());
        // This node's LU takes the new version too (its next change is based on it).
        out.push(Output::PrApply {
            version,
            state: self.pr.state().to_vec(),
            notice: Vec::new(),
        });
        let targets: Vec<NodeId> = self
            .config
            .as_ref()
            .map(|c| c.write_targets().filter(|&n| n != self.me).collect())
            .unwrap_or_default();
        for t in targets {
            self.pr_push(t, out);
        }
    }

    /// Sequencer: a member that applied the active change.
    fn pr_acked(&mut self, now: Time, id: OpId, from: NodeId, out: &mut Vec<Output<P>>) {
        if let Some(done) = self.pr.acked(id, from) {
            self.pr_answer(now, done, true, out);
            self.pr_pump(now, out);
        }
    }

    /// A LOGICAL UNIT RESET or CLEAR TASK SET that this node already applied to its own
    /// tasks and nexuses: sent to every other synchronized member, answered GOOD once each
    /// applied it (or left the configuration). Not ordered by the sequencer: it changes no
    /// data, and writes are ordered against it by the hosts' own tasks (each node aborts the
    /// tasks it holds when the function reaches it; see `docs/ha.md`).
    fn host_task_mgmt(
        &mut self,
        now: Time,
        tag: HostTag,
        kind: TaskMgmtKind,
        out: &mut Vec<Output<P>>,
    ) {
        let partners: BTreeSet<NodeId> = self
            .config
            .as_ref()
            .map(|c| c.synchronized().filter(|&n| n != self.me).collect())
            .unwrap_or_default();
        let id = self.new_op();
        for &p in &partners {
            self.send(p, Msg::TaskMgmt { id, kind }, out);
        }
        if let Some(tag) = self.task_mgmt.start(id, tag, partners, now) {
            self.answer(now, tag, HostStatus::Good { data: None }, out);
        }
    }

    fn host_write(
        &mut self,
        now: Time,
        tag: HostTag,
        range: BlockRange,
        op: ForwardedOp<P>,
        out: &mut Vec<Output<P>>,
    ) {
        let id = self.new_op();
        let cfg = self
            .config
            .as_ref()
            .expect("serving implies a configuration");
        if cfg.sequencer == self.me {
            let kind = SeqKind::from(op);
            self.admit(now, id, range, kind, Some(tag), out);
        } else {
            let to = cfg.sequencer;
            if self.opts.planted_bug != Some(PlantedBug::NoReadBarrier) {
                self.barriers.add(range, BarrierKey::Op(id));
            }
            self.send(
                to,
                Msg::Forward {
                    id,
                    range,
                    op: op.clone(),
                },
                out,
            );
            self.hold(&range);
            self.fwd.insert(
                id,
                FwdOp {
                    range,
                    tag,
                    op,
                    stage: FwdStage::AwaitGrant,
                    since: now,
                    retried: false,
                },
            );
        }
    }

    fn try_read(&mut self, tag: HostTag, out: &mut Vec<Output<P>>) {
        let Some((range, stage)) = self.reads.get(&tag) else {
            return;
        };
        if !matches!(stage, ReadStage::Waiting) {
            return;
        }
        let range = *range;
        // A new sequencer serves no read before every survivor's uncertain regions are known
        // (a read taken before the takeover waits too).
        if self.gate.is_some() || self.locks.held_overlaps(&range) || self.barriers.blocks(&range) {
            return;
        }
        self.reads.insert(tag, (range, ReadStage::Reading));
        let io = self.new_io(IoPurpose::HostRead(tag));
        self.writes.submit_read(range, io, out);
    }

    fn wake_reads(&mut self, out: &mut Vec<Output<P>>) {
        let waiting: Vec<HostTag> = self
            .reads
            .iter()
            .filter(|(_, (_, s))| matches!(s, ReadStage::Waiting))
            .map(|(t, _)| *t)
            .collect();
        for tag in waiting {
            self.try_read(tag, out);
        }
    }

    /// Answer the host, unless the answer must wait for this epoch's metadata or the
    /// lease has run out (a node that may have lost the failover decision never says GOOD).
    fn answer(&mut self, now: Time, tag: HostTag, status: HostStatus<P>, out: &mut Vec<Output<P>>) {
        if matches!(status, HostStatus::Good { .. } | HostStatus::Miscompare) {
            if self.meta_durable < self.meta.version {
                self.awaiting_meta.push((tag, status));
                return;
            }
            if now >= self.lease_until {
                not_ready(tag, out);
                return;
            }
        }
        out.push(Output::Complete { tag, status });
    }

    // ---------------------------------------------------------------- sequencer

    fn admit(
        &mut self,
        now: Time,
        id: OpId,
        range: BlockRange,
        kind: SeqKind<P>,
        host: Option<HostTag>,
        out: &mut Vec<Output<P>>,
    ) {
        let cfg = self.config.as_ref().expect("sequencer has a configuration");
        let targets: Vec<NodeId> = cfg
            .write_targets()
            .filter(|&n| n != self.me && n != id.origin)
            .collect();
        if host.is_some() {
            self.hold(&range);
        }
        self.seq.insert(
            id,
            SeqOp {
                range,
                kind,
                host,
                targets,
                commit_to: Vec::new(),
                stage: SeqStage::WaitLock,
                since: now,
                created: now,
            },
        );
        if self.gate.is_some() || self.meta_durable < self.meta.version {
            // Not before every survivor's uncertain regions are known, and not before this
            // node's role (and generation) is on disk: a crash must not leave writes that its
            // metadata cannot account for.
            self.gated_ops.push(id);
            return;
        }
        self.lock_and_start(now, id, out);
    }

    fn lock_and_start(&mut self, now: Time, id: OpId, out: &mut Vec<Output<P>>) {
        let Some(op) = self.seq.get(&id) else { return };
        let range = op.range;
        let bypass = match op.kind {
            SeqKind::Copy { .. } => {
                self.opts.planted_bug == Some(PlantedBug::ResyncWithoutRegionLock)
            }
            _ => self.opts.planted_bug == Some(PlantedBug::NoConflictOrdering),
        };
        let granted = if bypass {
            self.locks.force(range, id);
            true
        } else {
            self.locks.acquire(range, id)
        };
        if granted {
            self.start(now, id, out);
        }
    }

    /// The op holds its lock: send it on its way.
    fn start(&mut self, now: Time, id: OpId, out: &mut Vec<Output<P>>) {
        let me = self.me;
        let Some(cfg) = self.config.as_ref() else {
            return;
        };
        // Who receives the write is decided when it is ordered, not when it arrived: the
        // membership may have changed while it waited for its lock.
        // A synchronized origin applies its own write after the grant; an origin that left
        // (or restarted and is syncing) gets it like any other replica.
        let origin_applies = cfg.state_of(id.origin) == MemberState::Synchronized;
        let Some(range) = self.seq.get(&id).map(|op| op.range) else {
            return;
        };
        // A joiner refused for its short copy would drop (and never acknowledge) a write
        // beyond its end: it does not get one; `local_write` records it for its resync.
        let targets: Vec<NodeId> = cfg
            .write_targets()
            .filter(|&n| n != me && !(n == id.origin && origin_applies))
            .filter(|&n| !self.beyond_short_copy(n, &range))
            .collect();
        let Some(op) = self.seq.get_mut(&id) else {
            return;
        };
        let resync_copy = matches!(
            op.kind,
            SeqKind::Copy {
                purpose: CopyPurpose::Resync,
                ..
            }
        );
        if !resync_copy {
            op.targets = targets;
        }
        let range = op.range;
        match op.kind.clone() {
            SeqKind::Write { data } => {
                self.mirror(id, data.clone(), out);
                self.local_write(
                    id,
                    range,
                    LocalOp::Write { range, data },
                    IoPurpose::Sequenced(id),
                    out,
                );
                self.set_stage(
                    now,
                    id,
                    SeqStage::Applying {
                        local_done: false,
                        acks: Vec::new(),
                    },
                );
                self.expect_acks(id);
            }
            SeqKind::CompareAndWrite { verify, data } => {
                let op = LocalOp::CompareAndWrite {
                    range,
                    verify,
                    data,
                };
                self.local_write(id, range, op, IoPurpose::Sequenced(id), out);
                self.set_stage(now, id, SeqStage::Comparing);
            }
            SeqKind::Replayed => {
                let forwarded = matches!(
                    self.seq.get(&id).map(|o| &o.stage),
                    Some(SeqStage::AwaitOrigin { forwarded: true })
                );
                if forwarded {
                    self.send(id.origin, Msg::Grant { id, applied: true }, out);
                    self.set_stage(now, id, SeqStage::WaitRelease);
                } else {
                    self.set_stage(now, id, SeqStage::AwaitOrigin { forwarded: false });
                }
            }
            SeqKind::Copy { .. } => {
                let io = self.new_io(IoPurpose::Sequenced(id));
                self.writes.submit_read(range, io, out);
                self.set_stage(now, id, SeqStage::Reading);
            }
        }
    }

    fn set_stage(&mut self, now: Time, id: OpId, stage: SeqStage) {
        if let Some(op) = self.seq.get_mut(&id) {
            op.stage = stage;
            op.since = now;
        }
    }

    fn expect_acks(&mut self, id: OpId) {
        let bug = self.opts.planted_bug;
        if let Some(op) = self.seq.get_mut(&id) {
            if let SeqStage::Applying { acks, .. } = &mut op.stage {
                *acks = if bug == Some(PlantedBug::AckBeforePartner) {
                    Vec::new()
                } else {
                    op.targets.clone()
                };
            }
        }
    }

    /// Send an ordered write to every target.
    fn mirror(&mut self, id: OpId, data: P, out: &mut Vec<Output<P>>) {
        let op = self.seq.get(&id).expect("op exists");
        // Reads on a target wait for `Commit`, even when it is the only other copy: a read
        // there must not return a write before the sequencer's own copy has it too. If the
        // sequencer crashed before its local write completed, and the target then restarted
        // (losing its uncertain regions with its RAM journal) while cut from the authority,
        // the sequencer's copy would be the source of its resync and a value already read
        // would be gone (contract b; simulator 2w seed 1865 with resync pacing). The cost
        // is a read of a block whose write is still in flight waiting for one more message.
        let commit_follows = true;
        let range = op.range;
        let targets = op.targets.clone();
        for &t in &targets {
            self.send(
                t,
                Msg::Mirror {
                    id,
                    range,
                    data: data.clone(),
                    commit_follows,
                },
                out,
            );
        }
        // Every target hears `Commit`: until then the write is uncertain there (if the
        // sequencer changes, its region is reconciled), whether or not reads wait for it.
        let op = self.seq.get_mut(&id).expect("op exists");
        op.commit_to = targets;
    }

    fn on_sequenced_io(
        &mut self,
        now: Time,
        id: OpId,
        result: LocalResult<P>,
        out: &mut Vec<Output<P>>,
    ) {
        let Some(op) = self.seq.get(&id) else { return };
        match (&op.stage, result) {
            (SeqStage::Comparing, LocalResult::Done) => {
                let SeqKind::CompareAndWrite { data, .. } = op.kind.clone() else {
                    return;
                };
                self.mirror(id, data, out);
                self.set_stage(
                    now,
                    id,
                    SeqStage::Applying {
                        local_done: true,
                        acks: Vec::new(),
                    },
                );
                self.expect_acks(id);
                self.check_applied(now, id, out);
            }
            (SeqStage::Comparing, LocalResult::Miscompare) => {
                let host = op.host;
                if let Some(tag) = host {
                    // As in `on_grant`: a retried compare that fails has an unknown outcome.
                    let status = if self.retried_own.contains(&id) {
                        HostStatus::NotReady
                    } else {
                        HostStatus::Miscompare
                    };
                    self.answer(now, tag, status, out);
                } else {
                    let origin = id.origin;
                    self.send(origin, Msg::Grant { id, applied: false }, out);
                }
                self.finish_seq(now, id, out);
            }
            (SeqStage::Reading, LocalResult::ReadData(data)) => {
                let SeqKind::Copy { region, .. } = op.kind else {
                    return;
                };
                let targets = op.targets.clone();
                for &t in &targets {
                    self.send(
                        t,
                        Msg::RegionCopy {
                            id,
                            region,
                            data: data.clone(),
                        },
                        out,
                    );
                }
                self.set_stage(
                    now,
                    id,
                    SeqStage::Applying {
                        local_done: true,
                        acks: targets,
                    },
                );
                self.check_applied(now, id, out);
            }
            (SeqStage::Applying { acks, .. }, LocalResult::Done) => {
                let acks = acks.clone();
                self.set_stage(
                    now,
                    id,
                    SeqStage::Applying {
                        local_done: true,
                        acks,
                    },
                );
                self.check_applied(now, id, out);
            }
            (_, LocalResult::Failed) => {
                // This node's disk failed the write: this replica can no longer vouch for the
                // data. Answer the host with the medium error and stop serving; the authority
                // decides who goes on.
                if let Some(tag) = op.host {
                    out.push(Output::Complete {
                        tag,
                        status: HostStatus::MediumError,
                    });
                }
                let me = self.me;
                self.suspect(now, me, out);
                self.finish_seq(now, id, out);
            }
            _ => {}
        }
    }

    fn check_applied(&mut self, now: Time, id: OpId, out: &mut Vec<Output<P>>) {
        let Some(op) = self.seq.get(&id) else { return };
        let SeqStage::Applying {
            local_done: true,
            acks,
        } = &op.stage
        else {
            return;
        };
        if !acks.is_empty() {
            return;
        }
        let origin_is_other = id.origin != self.me;
        match op.kind {
            SeqKind::Copy { region, purpose } => {
                let targets = op.targets.clone();
                if purpose == CopyPurpose::Resync {
                    self.pacer.copy_done(now, op.created);
                    for t in &targets {
                        self.journal.clean(*t, region);
                        if let Some(n) = self.copies_in_flight.get_mut(t) {
                            *n = n.saturating_sub(1);
                        }
                    }
                } else {
                    self.barriers.remove(BarrierKey::Region(region));
                }
                self.finish_seq(now, id, out);
                self.pump_resync(now, out);
                for t in targets {
                    self.maybe_synchronized(t, out);
                }
            }
            _ if origin_is_other => {
                let origin = id.origin;
                let origin_alive = self
                    .config
                    .as_ref()
                    .is_some_and(|c| c.state_of(origin) == MemberState::Synchronized);
                if origin_alive {
                    self.send(origin, Msg::Grant { id, applied: true }, out);
                    self.set_stage(now, id, SeqStage::WaitRelease);
                } else {
                    self.commit(id, out);
                    self.finish_seq(now, id, out);
                }
            }
            _ => {
                if let Some(tag) = op.host {
                    self.answer(now, tag, HostStatus::Good { data: None }, out);
                }
                self.commit(id, out);
                self.finish_seq(now, id, out);
            }
        }
    }

    fn commit(&mut self, id: OpId, out: &mut Vec<Output<P>>) {
        let Some(op) = self.seq.get(&id) else { return };
        for t in op.commit_to.clone() {
            self.send(t, Msg::Commit { id }, out);
        }
    }

    fn finish_seq(&mut self, now: Time, id: OpId, out: &mut Vec<Output<P>>) {
        self.retried_own.remove(&id);
        if let Some(op) = self.seq.remove(&id) {
            if op.host.is_some() {
                self.unhold(&op.range);
            }
        }
        let mut granted = Vec::new();
        self.locks.release(id, &mut granted);
        for g in granted {
            self.start(now, g, out);
        }
        self.wake_reads(out);
    }

    // ---------------------------------------------------------------- resync

    fn pump_resync(&mut self, now: Time, out: &mut Vec<Output<P>>) {
        if self.gate.is_some() {
            return;
        }
        let allowance = self.pacer.allowance(now);
        if now < allowance.not_before {
            return; // resting (duty cycle below one copy); a tick comes back
        }
        let targets: Vec<NodeId> = self.resync.keys().copied().collect();
        for t in targets {
            while self.copies_in_flight.get(&t).copied().unwrap_or(0) < allowance.in_flight {
                let Some(region) = self.resync.get_mut(&t).and_then(|q| q.pop_front()) else {
                    break;
                };
                *self.copies_in_flight.entry(t).or_insert(0) += 1;
                let id = self.new_op();
                let range = self.geometry.region_range(region);
                self.seq.insert(
                    id,
                    SeqOp {
                        range,
                        kind: SeqKind::Copy {
                            region,
                            purpose: CopyPurpose::Resync,
                        },
                        host: None,
                        targets: vec![t],
                        commit_to: Vec::new(),
                        stage: SeqStage::WaitLock,
                        since: now,
                        created: now,
                    },
                );
                self.lock_and_start(now, id, out);
            }
        }
    }

    fn maybe_synchronized(&mut self, t: NodeId, out: &mut Vec<Output<P>>) {
        let Some(q) = self.resync.get(&t) else { return };
        if q.is_empty() && self.copies_in_flight.get(&t).copied().unwrap_or(0) == 0 {
            self.resync.remove(&t);
            self.copies_in_flight.remove(&t);
            self.sync_done.insert(t, false);
            self.pr_push(t, out);
            let meta = self.meta.clone();
            self.send(t, Msg::SyncComplete { meta }, out);
        }
    }

    fn on_sync_offer(&mut self, now: Time, from: NodeId, offer: Offer, out: &mut Vec<Output<P>>) {
        let Some(cfg) = &self.config else { return };
        if cfg.sequencer != self.me
            || cfg.state_of(from) != MemberState::Syncing
            || self.resync.contains_key(&from)
            || self.sync_done.contains_key(&from)
        {
            return;
        }
        let Offer {
            meta,
            dirty,
            journal_complete,
            num_blocks,
        } = offer;
        // A copy smaller than this geometry would drop every mirrored write and region copy
        // beyond its end: it is never synchronized until it grows (an old peer says
        // nothing: no check).
        if let Some(joiner_blocks) = num_blocks {
            if joiner_blocks < self.geometry.num_blocks
                && self.opts.planted_bug != Some(PlantedBug::JoinSizeIgnored)
            {
                let known = self.short_joiners.entry(from).or_insert(joiner_blocks);
                *known = (*known).min(joiner_blocks);
                out.push(Output::SyncSizeRefused {
                    node: from,
                    joiner_blocks,
                    sequencer_blocks: self.geometry.num_blocks,
                });
                return;
            }
        }
        let decision = compare(self.me, &self.meta, from, &meta);
        let n = self.geometry.num_regions();
        let short_tail: Vec<RegionIndex> = self
            .short_joiners
            .remove(&from)
            .map(|old| self.regions_from(old).collect())
            .unwrap_or_default();
        let (mut copy, full) = match decision {
            SyncDecision::InSync | SyncDecision::FastFromMe => {
                // The joiner's own journal is the only record of writes it may hold that the
                // sequencer lacks: as a former sequencer, or as a survivor that left before
                // reporting its uncertain regions to this sequencer (3n seed 14403: a mirror
                // of the old sequencer, applied only there, then a crash).
                let joiner_only_writes = meta.was_sequencer || self.unreported.contains(&from);
                if !self.journal.is_complete(from) {
                    (
                        DirtyBitmap::all(n),
                        Some(FullSyncCause::SourceJournalIncomplete),
                    )
                } else if joiner_only_writes && !journal_complete {
                    (
                        DirtyBitmap::all(n),
                        Some(FullSyncCause::JoinerJournalIncomplete),
                    )
                } else {
                    let mut b = self.journal.bitmap(from).clone();
                    for r in dirty.into_iter().filter(|r| r.0 < n) {
                        b.set(r);
                    }
                    (b, None)
                }
            }
            // A copy with no history yet (new, or its metadata lost) is a plain full-sync
            // target, nothing to report.
            _ if meta.current.is_blank() => (DirtyBitmap::all(n), Some(FullSyncCause::BlankJoiner)),
            // Anything else (unrelated lineage, peer claims to be ahead, both bases equal)
            // cannot be a real divergence here: one authority decides membership, the
            // sequencer is synchronized and the joiner is not, so the joiner holds no
            // acknowledged write the sequencer lacks. Its metadata is only stale (a lineage
            // longer than the bounded history, configurations it never saw): copy everything
            // and say so. Split brain needs two deciders (Heartbeat strategy, issue 11).
            other => {
                out.push(Output::SyncRefused {
                    node: from,
                    decision: other,
                });
                (DirtyBitmap::all(n), Some(FullSyncCause::Lineage(other)))
            }
        };
        for r in short_tail {
            copy.set(r);
        }
        out.push(Output::ResyncPlanned {
            node: from,
            regions: copy.count(),
            full,
        });
        // Every region to copy stays dirty until its copy is acknowledged.
        for r in copy.iter() {
            self.journal.mark(from, r);
        }
        self.resync.insert(from, copy.iter().collect());
        self.copies_in_flight.insert(from, 0);
        self.pump_resync(now, out);
        self.maybe_synchronized(from, out);
    }

    // ---------------------------------------------------------------- peers

    fn on_peer(&mut self, now: Time, from: NodeId, env: Envelope<P>, out: &mut Vec<Output<P>>) {
        let Some(cfg) = &self.config else { return };
        if env.epoch > cfg.epoch {
            if self.future.len() < self.opts.future_messages_max {
                self.future.push((from, env));
            }
            return;
        }
        if !self.accepts(from, &env) {
            return;
        }
        match env.msg {
            Msg::Mirror {
                id,
                range,
                data,
                commit_follows,
            } => self.on_mirror(now, id, range, data, commit_follows, out),
            Msg::CommitQuery { id } => {
                if !self.seq.contains_key(&id) {
                    self.send(from, Msg::Commit { id }, out);
                }
            }
            Msg::MirrorAck { id } | Msg::RegionCopyAck { id } => self.on_ack(now, from, id, out),
            Msg::Commit { id } => {
                self.applied.remove(&id);
                self.barriers.remove(BarrierKey::Op(id));
                self.wake_reads(out);
            }
            Msg::Forward { id, range, op } => self.on_forward(now, id, range, op, out),
            Msg::Grant { id, applied } => self.on_grant(now, id, applied, out),
            Msg::Release { id } => {
                if self.seq.get(&id).is_some_and(|o| {
                    matches!(
                        o.stage,
                        SeqStage::WaitRelease | SeqStage::AwaitOrigin { .. }
                    )
                }) {
                    self.commit(id, out);
                    self.finish_seq(now, id, out);
                }
            }
            Msg::Uncertain { regions } => {
                // The survivor now knows this node as its sequencer: the reservation state
                // pushed at the takeover may have reached it while it was still in an older
                // configuration (and been refused), so push it again; it is acknowledged
                // before any later change.
                if self.sequencer() == self.me && self.pr.stamped() {
                    self.pr_push(from, out);
                }
                self.on_uncertain(now, from, regions, out)
            }
            Msg::SyncOffer {
                meta,
                dirty,
                journal_complete,
                num_blocks,
            } => {
                let offer = Offer {
                    meta,
                    dirty,
                    journal_complete,
                    num_blocks,
                };
                self.on_sync_offer(now, from, offer, out)
            }
            Msg::RegionCopy { id, region, data } => self.on_region_copy(id, region, data, out),
            Msg::SyncComplete { meta } => {
                if self
                    .config
                    .as_ref()
                    .is_some_and(|c| c.state_of(self.me) == MemberState::Syncing)
                {
                    self.adopt = Some(meta);
                    let seq = self.sequencer();
                    self.send(seq, Msg::SyncCompleteAck, out);
                }
            }
            Msg::TaskMgmt { id, kind } => {
                // Applied before the acknowledgement leaves (outputs are handled in order).
                out.push(Output::TaskMgmt { kind });
                self.send(from, Msg::TaskMgmtAck { id }, out);
            }
            Msg::TaskMgmtAck { id } => {
                if let Some(tag) = self.task_mgmt.acked(id, from) {
                    self.answer(now, tag, HostStatus::Good { data: None }, out);
                }
            }
            Msg::PrForward {
                id,
                base,
                state,
                notice,
            } => {
                // Only the sequencer orders; a change sent to a former one is answered NOT
                // READY by its origin when it learns of the new sequencer.
                if self.sequencer() == self.me && self.serving(now) {
                    let change = PrChange {
                        id,
                        base,
                        state,
                        notice,
                    };
                    self.pr_order(now, change, out);
                }
            }
            Msg::PrApply {
                id,
                version,
                state,
                notice,
            } => {
                self.pr.set(version, state.clone());
                // Applied (and saved) before the acknowledgement leaves: outputs are handled
                // in order.
                out.push(Output::PrApply {
                    version,
                    state,
                    notice,
                });
                self.send(from, Msg::PrApplyAck { id }, out);
            }
            Msg::PrApplyAck { id } => self.pr_acked(now, id, from, out),
            Msg::PrDone { id, applied } => self.pr_own_done(now, id, applied, out),
            Msg::SyncCompleteAck => {
                if let Some(acked) = self.sync_done.get_mut(&from) {
                    if !*acked {
                        *acked = true;
                        let epoch = self.epoch();
                        out.push(Output::Synchronized { node: from, epoch });
                    }
                }
            }
        }
    }

    /// Fencing: a message is taken only from a sender that still holds the role it sent it
    /// in (the sequencer since `sequencer_since`, a member since it last joined).
    fn accepts(&self, from: NodeId, env: &Envelope<P>) -> bool {
        if self.opts.planted_bug == Some(PlantedBug::AcceptStaleEpoch) {
            return true;
        }
        let cfg = self.config.as_ref().expect("checked by caller");
        let from_sequencer = matches!(
            env.msg,
            Msg::Mirror { .. }
                | Msg::Commit { .. }
                | Msg::Grant { .. }
                | Msg::RegionCopy { .. }
                | Msg::SyncComplete { .. }
                | Msg::PrApply { .. }
                | Msg::PrDone { .. }
        );
        if from_sequencer {
            from == cfg.sequencer && env.epoch >= self.sequencer_since
        } else {
            cfg.state_of(from) != MemberState::Out
                && self
                    .member_since
                    .get(&from)
                    .is_some_and(|&since| env.epoch >= since)
        }
    }

    fn on_mirror(
        &mut self,
        now: Time,
        id: OpId,
        range: BlockRange,
        data: P,
        commit_follows: bool,
        out: &mut Vec<Output<P>>,
    ) {
        if self.applied.contains_key(&id) || !self.geometry.contains(&range) {
            return;
        }
        if self.opts.planted_bug != Some(PlantedBug::NoReadBarrier) {
            self.barriers.add(range, BarrierKey::Op(id));
        }
        self.applied.insert(
            id,
            AppliedOp {
                range,
                commit_follows,
                done: false,
                since: now,
            },
        );
        self.local_write(
            id,
            range,
            LocalOp::Write { range, data },
            IoPurpose::MirrorApply(id),
            out,
        );
    }

    fn on_region_copy(&mut self, id: OpId, region: RegionIndex, data: P, out: &mut Vec<Output<P>>) {
        if region.0 >= self.geometry.num_regions() {
            return;
        }
        let range = self.geometry.region_range(region);
        self.barriers.add(range, BarrierKey::Op(id));
        self.local_write(
            id,
            range,
            LocalOp::Write { range, data },
            IoPurpose::CopyApply { id, region },
            out,
        );
    }

    fn on_ack(&mut self, now: Time, from: NodeId, id: OpId, out: &mut Vec<Output<P>>) {
        let Some(op) = self.seq.get_mut(&id) else {
            return;
        };
        if let SeqStage::Applying { acks, .. } = &mut op.stage {
            acks.retain(|&n| n != from);
        }
        self.check_applied(now, id, out);
    }

    fn on_forward(
        &mut self,
        now: Time,
        id: OpId,
        range: BlockRange,
        op: ForwardedOp<P>,
        out: &mut Vec<Output<P>>,
    ) {
        let Some(cfg) = &self.config else { return };
        if cfg.sequencer != self.me || !self.geometry.contains(&range) {
            return;
        }
        if let Some(existing) = self.seq.get_mut(&id) {
            // A replayed write asked for again: grant it now if it holds its place, or as
            // soon as it does.
            match existing.stage {
                SeqStage::AwaitOrigin { .. } => {
                    self.send(id.origin, Msg::Grant { id, applied: true }, out);
                    self.set_stage(now, id, SeqStage::WaitRelease);
                }
                SeqStage::WaitLock if matches!(existing.kind, SeqKind::Replayed) => {
                    existing.stage = SeqStage::AwaitOrigin { forwarded: true };
                }
                _ => {}
            }
            return;
        }
        let kind = SeqKind::from(op);
        self.admit(now, id, range, kind, None, out);
    }

    fn on_grant(&mut self, now: Time, id: OpId, applied: bool, out: &mut Vec<Output<P>>) {
        let Some(op) = self.fwd.get_mut(&id) else {
            return;
        };
        if !matches!(op.stage, FwdStage::AwaitGrant) {
            return;
        }
        if !applied {
            let (tag, range, op_retried) = (op.tag, op.range, op.retried);
            self.fwd.remove(&id);
            self.unhold(&range);
            self.barriers.remove(BarrierKey::Op(id));
            let seq = self.sequencer();
            self.send(seq, Msg::Release { id }, out);
            let status = if op_retried {
                // A former sequencer may have applied it: the data that failed the compare
                // may be its own. The outcome is unknown, which only NOT READY may say.
                HostStatus::NotReady
            } else {
                HostStatus::Miscompare
            };
            self.answer(now, tag, status, out);
            self.wake_reads(out);
            return;
        }
        op.stage = FwdStage::Applying;
        op.since = now;
        let range = op.range;
        let data = match &op.op {
            ForwardedOp::Write { data } | ForwardedOp::CompareAndWrite { data, .. } => data.clone(),
        };
        self.local_write(
            id,
            range,
            LocalOp::Write { range, data },
            IoPurpose::ForwardedApply(id),
            out,
        );
    }

    fn on_uncertain(
        &mut self,
        now: Time,
        from: NodeId,
        regions: Vec<RegionIndex>,
        out: &mut Vec<Output<P>>,
    ) {
        let n = self.geometry.num_regions();
        let Some((pending, _)) = &mut self.gate else {
            return;
        };
        if !pending.remove(&from) {
            return;
        }
        self.reconcile
            .extend(regions.into_iter().filter(|r| r.0 < n));
        if pending.is_empty() {
            self.open_gate(now, out);
        }
    }

    /// The new sequencer knows every uncertain region: copy its own content of each to every
    /// other replica (reads of them wait until then), then let writes and reads in.
    fn open_gate(&mut self, now: Time, out: &mut Vec<Output<P>>) {
        self.gate = None;
        let regions: Vec<RegionIndex> = std::mem::take(&mut self.reconcile).into_iter().collect();
        let cfg = self.config.as_ref().expect("configured");
        let has_targets = cfg.write_targets().any(|n| n != self.me);
        for region in regions {
            if !has_targets {
                break;
            }
            let range = self.geometry.region_range(region);
            self.barriers.add(range, BarrierKey::Region(region));
            let id = self.new_op();
            self.admit(
                now,
                id,
                range,
                SeqKind::Copy {
                    region,
                    purpose: CopyPurpose::Reconcile,
                },
                None,
                out,
            );
        }
        if self.meta_durable >= self.meta.version {
            for id in std::mem::take(&mut self.gated_ops) {
                self.lock_and_start(now, id, out);
            }
        }
        while let Some((tag, cmd)) = self.gated_host.pop_front() {
            if let Some(range) = write_range(&cmd) {
                self.unhold(&range);
            }
            self.on_host(now, tag, cmd, out);
        }
        self.wake_reads(out);
        self.pump_resync(now, out);
    }

    // ---------------------------------------------------------------- local completions

    fn on_local_done(
        &mut self,
        now: Time,
        io: IoTag,
        result: LocalResult<P>,
        out: &mut Vec<Output<P>>,
    ) {
        // Ordering of local writes is released even for I/O whose purpose was dropped.
        self.writes.complete(io, out);
        if self.opts.planted_bug == Some(PlantedBug::ActivityNotBeforeWrite) {
            let in_doubt = self.uncertain_regions();
            self.journal.write_done(io.0, || in_doubt);
        }
        let Some(purpose) = self.io.remove(&io) else {
            return;
        };
        match purpose {
            IoPurpose::HostRead(tag) => {
                self.reads.remove(&tag);
                let status = match result {
                    LocalResult::ReadData(d) => HostStatus::Good { data: Some(d) },
                    _ => HostStatus::MediumError,
                };
                // A node that woke up after its lease (a pause) answers nothing but NOT READY.
                self.answer(now, tag, status, out);
            }
            IoPurpose::Flush(tag) => {
                let status = match result {
                    LocalResult::Done => HostStatus::Good { data: None },
                    _ => HostStatus::MediumError,
                };
                self.answer(now, tag, status, out);
            }
            IoPurpose::Sequenced(id) => self.on_sequenced_io(now, id, result, out),
            IoPurpose::ForwardedApply(id) => {
                let Some(op) = self.fwd.remove(&id) else {
                    return;
                };
                self.unhold(&op.range);
                self.barriers.remove(BarrierKey::Op(id));
                let seq = self.sequencer();
                self.send(seq, Msg::Release { id }, out);
                let status = match result {
                    LocalResult::Done => HostStatus::Good { data: None },
                    _ => HostStatus::MediumError,
                };
                self.answer(now, op.tag, status, out);
                self.wake_reads(out);
            }
            IoPurpose::MirrorApply(id) => {
                if !matches!(result, LocalResult::Done) {
                    return; // no ack: the sequencer asks for a verdict about this node
                }
                let Some(a) = self.applied.get_mut(&id) else {
                    return;
                };
                a.done = true;
                let commit_follows = a.commit_follows;
                let seq = self.sequencer();
                self.send(seq, Msg::MirrorAck { id }, out);
                if !commit_follows {
                    // Reads need not wait (no other replica serves them before the sequencer
                    // has every ack), but the write stays uncertain here until `Commit`.
                    self.barriers.remove(BarrierKey::Op(id));
                    self.wake_reads(out);
                }
            }
            IoPurpose::CopyApply { id, region } => {
                if !matches!(result, LocalResult::Done) {
                    return;
                }
                self.barriers.remove(BarrierKey::Op(id));
                self.barriers.remove(BarrierKey::Region(region));
                let seq = self.sequencer();
                self.send(seq, Msg::RegionCopyAck { id }, out);
                self.wake_reads(out);
            }
        }
    }

    fn on_meta_persisted(&mut self, now: Time, version: u64, out: &mut Vec<Output<P>>) {
        self.meta_durable = self.meta_durable.max(version);
        if self.meta_durable >= self.meta.version && self.gate.is_none() {
            for id in std::mem::take(&mut self.gated_ops) {
                self.lock_and_start(now, id, out);
            }
        }
        if self.meta_durable >= self.meta.version {
            for (tag, status) in std::mem::take(&mut self.awaiting_meta) {
                self.answer(now, tag, status, out);
            }
        }
    }

    // ---------------------------------------------------------------- configuration

    fn on_config(&mut self, now: Time, cfg: EpochConfig, out: &mut Vec<Output<P>>) {
        if self.config.as_ref().is_some_and(|c| cfg.epoch <= c.epoch) {
            return;
        }
        let old = self.config.take();
        let me = self.me;
        let my_state = cfg.state_of(me);
        let old_state = old.as_ref().map(|o| o.state_of(me));
        let sequencer_changed = old.as_ref().is_none_or(|o| o.sequencer != cfg.sequencer);

        // Membership epochs for fencing.
        for (n, s) in &cfg.members {
            let was_in = old
                .as_ref()
                .is_some_and(|o| o.state_of(*n) != MemberState::Out);
            if *s == MemberState::Out {
                self.member_since.remove(n);
            } else if !was_in || !self.member_since.contains_key(n) {
                self.member_since.insert(*n, cfg.epoch);
            }
        }
        if sequencer_changed {
            self.sequencer_since = cfg.epoch;
        }
        if self.restarted && old.is_none() {
            let partners: Vec<NodeId> = cfg
                .members
                .iter()
                .map(|m| m.0)
                .filter(|&n| n != me)
                .collect();
            for n in self.journal.after_restart(&partners) {
                self.journal_lost_in_restart.insert(n);
                self.journal.mark_lost(n);
            }
        }
        for &(n, s) in &cfg.members {
            if n != me {
                self.journal.set_receiving(n, s != MemberState::Out);
            }
        }
        if let Some(o) = &old {
            for &(n, s) in &cfg.members {
                if n != me
                    && s != MemberState::Synchronized
                    && o.state_of(n) == MemberState::Synchronized
                {
                    // It leaves under this process's eyes: every write from now on is
                    // marked for it, and everything before reached it.
                    self.journal_lost_in_restart.remove(&n);
                }
            }
        }

        // Regions whose content is in doubt at this moment (writes in flight here).
        let uncertain = self.uncertain_regions();
        // Partners that stopped receiving this replica's writes: gone out, or restarted and
        // rejoining as syncing (a restarted process lost whatever was in flight to it).
        let newly_out: Vec<NodeId> = cfg
            .members
            .iter()
            .filter(|(n, s)| {
                let before = old.as_ref().map(|o| o.state_of(*n));
                *n != me
                    && match s {
                        MemberState::Out => before.is_none_or(|b| b != MemberState::Out),
                        MemberState::Syncing => before == Some(MemberState::Synchronized),
                        MemberState::Synchronized => false,
                    }
            })
            .map(|(n, _)| *n)
            .collect();
        for &p in &newly_out {
            self.journal.start_tracking(p);
            for &r in &uncertain {
                self.journal.mark(p, r);
            }
            self.resync.remove(&p);
            self.copies_in_flight.remove(&p);
        }
        if my_state != MemberState::Synchronized && old_state == Some(MemberState::Synchronized) {
            // This replica left: what it had in flight may be missing on every partner (as a
            // former sequencer it wrote before their acks), so its next sync copies it too.
            for (p, _) in cfg.members.iter().filter(|m| m.0 != me) {
                for &r in &uncertain {
                    self.journal.mark(*p, r);
                }
            }
        }

        // A joining replica serves only with the `SyncComplete` (and the reservation state
        // pushed just before it) received by this process: the authority may have made it
        // synchronized on the acknowledgement of a former incarnation, sent before a crash.
        // It then keeps its old metadata and asks to be resynchronized, like a restart (made
        // synchronized alone, it has no one to sync from and takes the configuration as is).
        let joined_without_sync = my_state == MemberState::Synchronized
            && old_state == Some(MemberState::Syncing)
            && self.adopt.is_none()
            && cfg.synchronized().any(|n| n != me);
        if joined_without_sync {
            self.restarted = true;
        }

        // Metadata: the generation of the data this replica now holds.
        if my_state == MemberState::Synchronized && !joined_without_sync {
            let skipped = old.as_ref().is_some_and(|o| cfg.epoch.0 > o.epoch.0 + 1);
            let joined = old_state == Some(MemberState::Syncing);
            if let Some(source) = self.adopt.take().filter(|_| joined) {
                // Our bytes are now the sequencer's: so is our lineage (and our grown tail
                // was copied).
                self.grown_unsynchronized_from = None;
                self.meta.current = source.current;
                self.meta.history = source.history;
                self.meta.bitmap_base = source
                    .bitmap_base
                    .into_iter()
                    .filter(|b| b.0 != me)
                    .collect();
            }
            if cfg.generation != self.meta.current
                && self.opts.planted_bug != Some(PlantedBug::GenerationNotBumped)
            {
                // Every generation between ours and the new one, newest first.
                let mut history: Vec<_> = cfg
                    .lineage
                    .iter()
                    .take_while(|&&g| g != self.meta.current)
                    .copied()
                    .collect();
                history.push(self.meta.current);
                history.extend(self.meta.history.iter().copied());
                history.dedup();
                history.truncate(crate::membership::LINEAGE_LEN);
                self.meta.history = history;
                self.meta.current = cfg.generation;
            }
            for &(p, g) in &cfg.left_at {
                if p != me && self.meta.bitmap_base(p).is_none() {
                    self.meta.bitmap_base.push((p, g));
                }
                if joined || skipped {
                    // Writes for that partner happened while this replica was not tracking
                    // them (before it joined, or in configurations it never saw).
                    self.journal.mark_lost(p);
                }
            }
            for n in cfg.synchronized() {
                // A partner synchronized again, or this replica itself just joined: its data
                // now equals every synchronized partner's, and its bitmaps for them start
                // empty and complete (a bitmap lost at an earlier restart would otherwise
                // stay incomplete and force a full sync at its next return).
                if n != me
                    && (joined
                        || old
                            .as_ref()
                            .is_some_and(|o| o.state_of(n) != MemberState::Synchronized))
                {
                    self.meta.partner_synchronized(n);
                    self.journal.reset(n);
                    self.journal_lost_in_restart.remove(&n);
                    self.unreported.remove(&n);
                }
            }
        }
        self.sync_done
            .retain(|&n, _| cfg.state_of(n) == MemberState::Syncing);
        if sequencer_changed {
            self.sync_done.clear();
        }
        self.last_join_attempt = None;
        self.meta.epoch = cfg.epoch;
        // Sticky until this replica is resynchronized: a former sequencer's disk may hold
        // writes that no partner saw, whatever role it has had since.
        if cfg.sequencer == me && my_state == MemberState::Synchronized {
            self.meta.was_sequencer = true;
        } else if my_state == MemberState::Synchronized
            && old_state == Some(MemberState::Syncing)
            && !joined_without_sync
        {
            self.meta.was_sequencer = false;
        }
        self.meta.version += 1;
        out.push(Output::PersistMeta(self.meta.clone()));
        self.suspected.clear();

        let sole_synchronized =
            my_state == MemberState::Synchronized && cfg.synchronized().all(|n| n == me);
        if self.restarted && my_state == MemberState::Synchronized && !sole_synchronized {
            // Partners may lack writes this node had in flight when it stopped: it must be
            // resynchronized before it serves anything.
            out.push(Output::Join {
                meta: self.meta.clone(),
            });
            self.last_join_attempt = Some(now);
            self.config = Some(cfg);
            return;
        }
        if my_state != MemberState::Out {
            // Synchronized alone, or syncing (the resync repairs whatever the restart left).
            self.restarted = false;
        }

        match my_state {
            MemberState::Out | MemberState::Syncing => {
                self.drop_serving_state(sequencer_changed, out);
                if my_state == MemberState::Out {
                    self.adopt = None;
                    out.push(Output::Join {
                        meta: self.meta.clone(),
                    });
                    self.last_join_attempt = Some(now);
                }
                self.config = Some(cfg);
                if my_state == MemberState::Syncing
                    && (old_state != Some(MemberState::Syncing) || sequencer_changed)
                {
                    self.send_sync_offer(out);
                    self.last_join_attempt = Some(now);
                }
            }
            MemberState::Synchronized => {
                self.config = Some(cfg);
                if sequencer_changed {
                    self.take_over_or_report(now, uncertain, out);
                } else {
                    self.drop_departed(now, &newly_out, out);
                }
                if self.sequencer() == me && !self.pr.stamped() {
                    self.pr_take_over(out);
                }
                if sequencer_changed {
                    for change in self.pr.resend_own(now) {
                        self.pr_submit(now, change, out);
                    }
                }
            }
        }

        // A task management function waits only for partners still synchronized.
        if let Some(cfg) = &self.config {
            let synchronized: BTreeSet<NodeId> = cfg.synchronized().collect();
            for tag in self
                .task_mgmt
                .retain_partners(|n| synchronized.contains(&n))
            {
                self.answer(now, tag, HostStatus::Good { data: None }, out);
            }
        }

        // A reservation change waits only for members that still receive writes.
        if let Some(cfg) = &self.config {
            let targets: BTreeSet<NodeId> = cfg.write_targets().collect();
            if let Some(done) = self.pr.retain_members(|n| targets.contains(&n)) {
                self.pr_answer(now, done, true, out);
                self.pr_pump(now, out);
            }
        }

        // Messages that were ahead of this configuration.
        let pending = std::mem::take(&mut self.future);
        for (from, env) in pending {
            self.on_peer(now, from, env, out);
        }
        self.wake_reads(out);
    }

    fn uncertain_regions(&self) -> BTreeSet<RegionIndex> {
        let mut set = BTreeSet::new();
        let ranges = self
            .seq
            .values()
            .filter(|o| o.stage != SeqStage::WaitLock)
            .map(|o| o.range)
            .chain(self.fwd.values().map(|o| o.range))
            .chain(self.applied.values().map(|a| a.range))
            .chain(self.writes.write_ranges());
        for r in ranges {
            for region in self.geometry.regions_of(&r) {
                set.insert(RegionIndex(region));
            }
        }
        // Regions still waiting for a reconcile copy from a former sequencer.
        for k in self.barriers.keys() {
            if let BarrierKey::Region(r) = k {
                set.insert(r);
            }
        }
        // A new sequencer whose gate is still closed keeps the regions it must reconcile
        // here, not behind barriers: they are just as uncertain (writes of the old sequencer
        // applied here and perhaps nowhere else). Forgetting them when this node leaves
        // before the gate opens left those writes out of every dirty bitmap (3n seed 1278).
        set.extend(self.reconcile.iter().copied());
        set
    }

    /// This node no longer serves: everything a host is waiting for ends NOT READY so
    /// multipath retries it on a node that does.
    fn drop_serving_state(&mut self, sequencer_changed: bool, out: &mut Vec<Output<P>>) {
        for (tag, _) in std::mem::take(&mut self.reads) {
            not_ready(tag, out);
        }
        for (_, op) in std::mem::take(&mut self.fwd) {
            not_ready(op.tag, out);
        }
        self.retried_own.clear();
        for (_, op) in std::mem::take(&mut self.seq) {
            if let Some(tag) = op.host {
                not_ready(tag, out);
            }
        }
        for (tag, _) in std::mem::take(&mut self.awaiting_meta) {
            not_ready(tag, out);
        }
        for (tag, _) in std::mem::take(&mut self.gated_host) {
            not_ready(tag, out);
        }
        for tag in self.task_mgmt.drain() {
            not_ready(tag, out);
        }
        for tag in self.pr.drain_own() {
            not_ready(tag, out);
        }
        self.pr.drop_sequencing();
        self.held_writes = 0;
        self.held_bytes = 0;
        self.locks.clear();
        self.gate = None;
        self.reconcile.clear();
        self.gated_ops.clear();
        self.resync.clear();
        self.copies_in_flight.clear();
        if sequencer_changed {
            // Nobody will take acks for these any more; the new sequencer copies the regions.
            self.applied.clear();
            self.barriers.clear();
        } else {
            // Writes applied here for the same sequencer still get their `Commit` (asked for
            // again if late): their read barriers stay, or once this node is synchronized a
            // read here could return a write that another replica does not hold yet (3n seed
            // 486: a syncing member's barrier dropped by a configuration change while it
            // stayed syncing; it read the write before the other joiner had it).
            let applied = &self.applied;
            self.barriers
                .retain(|key| matches!(key, BarrierKey::Op(id) if applied.contains_key(&id)));
        }
        // Local I/O still in flight keeps its purpose only for writes (ordering); reads and
        // flushes were answered above.
        self.io.retain(|_, p| {
            !matches!(
                p,
                IoPurpose::HostRead(_)
                    | IoPurpose::Flush(_)
                    | IoPurpose::Sequenced(_)
                    | IoPurpose::ForwardedApply(_)
            )
        });
    }

    /// The sequencer changed while this node stays synchronized.
    /// Whether every copy `partner` may have received since it stopped being synchronized
    /// came from `me`: it left when the configuration's generation began (its `left_at` is
    /// the generation just before), and that generation was issued with `me` as sequencer
    /// (a generation has one sequencer: a new one comes with every change of sequencer).
    fn copied_only_by(cfg: &EpochConfig, me: NodeId, partner: NodeId) -> bool {
        cfg.generation.sequenced_by() == Some(me)
            && cfg.left_at(partner).is_some()
            && cfg.left_at(partner) == cfg.lineage.first().copied()
    }

    fn take_over_or_report(
        &mut self,
        now: Time,
        uncertain: BTreeSet<RegionIndex>,
        out: &mut Vec<Output<P>>,
    ) {
        let cfg = self.config.clone().expect("set by caller");
        // Reservation changes sent to the old sequencer go to the new one once it is known
        // to have this node's report (`on_config` sends them after the `Uncertain` below).
        self.pr.drop_sequencing();
        // Writes applied here for the old sequencer will get no Commit: their regions are
        // reconciled instead.
        let applied: Vec<(OpId, BlockRange)> =
            self.applied.iter().map(|(id, a)| (*id, a.range)).collect();
        for &(id, _) in &applied {
            self.barriers.remove(BarrierKey::Op(id));
        }
        self.applied.clear();
        // Sequenced ops of a former sequencer role cannot exist while synchronized (the
        // sequencer is sticky), but be safe: answer and drop them.
        self.retried_own.clear();
        for (_, op) in std::mem::take(&mut self.seq) {
            if let Some(tag) = op.host {
                self.unhold(&op.range);
                not_ready(tag, out);
            }
        }
        self.locks.clear();
        let waiting_fwd: Vec<OpId> = self
            .fwd
            .iter()
            .filter(|(_, o)| matches!(o.stage, FwdStage::AwaitGrant))
            .map(|(id, _)| *id)
            .collect();
        if cfg.sequencer == self.me {
            // Barriers waited for the old sequencer's commits and copies, which will not come:
            // every such range is in `uncertain` and gets reconciled from here.
            self.barriers.clear();
            // Only the old sequencer knew how far a syncing member's copy had got. A member
            // that left when the current generation began got no copy from anyone else: the
            // sequencer changes only with a new generation, and this one is sequenced by this
            // node alone (a restart of every node: the first configuration demotes one of
            // them, and the other's journal, restored from disk, covers it).
            let syncing: Vec<NodeId> = cfg
                .members
                .iter()
                .filter(|m| m.1 == MemberState::Syncing)
                .map(|m| m.0)
                .filter(|&p| !Self::copied_only_by(&cfg, self.me, p))
                .collect();
            for p in syncing {
                self.journal.mark_lost(p);
            }
            let others: BTreeSet<NodeId> = cfg.synchronized().filter(|&n| n != self.me).collect();
            self.reconcile = uncertain;
            self.gate = Some((others, now));
            // Writes of surviving origins that the old sequencer had applied keep their
            // place ahead of everything ordered from now on.
            for (id, range) in applied {
                if id.origin != self.me && cfg.state_of(id.origin) == MemberState::Synchronized {
                    self.admit(now, id, range, SeqKind::Replayed, None, out);
                }
            }
            // My own forwarded writes are now mine to order.
            for id in waiting_fwd {
                let op = self.fwd.remove(&id).expect("listed");
                self.unhold(&op.range);
                self.barriers.remove(BarrierKey::Op(id));
                // Its data may be in place already (applied by a former sequencer and copied
                // here by a reconcile), so a failed compare no longer means MISCOMPARE
                // (3n seed 4486).
                if matches!(op.op, ForwardedOp::CompareAndWrite { .. }) {
                    self.retried_own.insert(id);
                }
                let kind = SeqKind::from(op.op);
                self.admit(now, id, op.range, kind, Some(op.tag), out);
            }
            if self.gate.as_ref().is_some_and(|g| g.0.is_empty()) {
                self.open_gate(now, out);
            }
        } else {
            let regions: Vec<RegionIndex> = uncertain.iter().copied().collect();
            for &r in &regions {
                let range = self.geometry.region_range(r);
                self.barriers.add(range, BarrierKey::Region(r));
            }
            self.send(cfg.sequencer, Msg::Uncertain { regions }, out);
            for id in waiting_fwd {
                let op = self.fwd.get_mut(&id).expect("listed");
                op.since = now;
                op.retried = true;
                let msg = Msg::Forward {
                    id,
                    range: op.range,
                    op: op.op.clone(),
                };
                self.send(cfg.sequencer, msg, out);
            }
        }
    }

    /// Same sequencer, some members left: stop waiting for them.
    fn drop_departed(&mut self, now: Time, newly_out: &[NodeId], out: &mut Vec<Output<P>>) {
        if newly_out.is_empty() {
            return;
        }
        // Only operations already under way chose their targets under the old membership.
        // One started from here on (a lock handed over below) chooses them afresh, and a
        // departed member that rejoined as syncing must stay among them.
        let started_before: Vec<OpId> = self
            .seq
            .iter()
            .filter(|(_, o)| {
                o.stage != SeqStage::WaitLock
                    || matches!(
                        o.kind,
                        SeqKind::Copy {
                            purpose: CopyPurpose::Resync,
                            ..
                        }
                    )
            })
            .map(|(id, _)| *id)
            .collect();
        if let Some((pending, _)) = &mut self.gate {
            for n in newly_out {
                if pending.remove(n) {
                    self.unreported.insert(*n);
                }
            }
            if pending.is_empty() {
                self.open_gate(now, out);
            }
        }
        for id in started_before {
            let Some(op) = self.seq.get_mut(&id) else {
                continue;
            };
            op.targets.retain(|t| !newly_out.contains(t));
            op.commit_to.retain(|t| !newly_out.contains(t));
            if let SeqStage::Applying { acks, .. } = &mut op.stage {
                acks.retain(|t| !newly_out.contains(t));
            }
            let orphaned = newly_out.contains(&id.origin)
                && matches!(
                    op.stage,
                    SeqStage::WaitRelease | SeqStage::AwaitOrigin { .. }
                );
            let empty_copy = matches!(op.kind, SeqKind::Copy { .. }) && op.targets.is_empty();
            if orphaned
                || (empty_copy && matches!(op.stage, SeqStage::WaitLock | SeqStage::Reading))
            {
                if let SeqKind::Copy {
                    region,
                    purpose: CopyPurpose::Reconcile,
                } = op.kind
                {
                    // Nobody left to reconcile with: this copy is the agreed one.
                    self.barriers.remove(BarrierKey::Region(region));
                }
                self.commit(id, out);
                self.finish_seq(now, id, out);
            } else {
                self.check_applied(now, id, out);
            }
        }
    }

    fn send_sync_offer(&mut self, out: &mut Vec<Output<P>>) {
        let seq = self.sequencer();
        let journal_complete = self.journal.is_complete(seq);
        let mut dirty: BTreeSet<RegionIndex> = self.journal.bitmap(seq).iter().collect();
        if let Some(old) = self.grown_unsynchronized_from {
            dirty.extend(self.regions_from(old));
        }
        let meta = self.meta.clone();
        self.send(
            seq,
            Msg::SyncOffer {
                meta,
                dirty: dirty.into_iter().collect(),
                journal_complete,
                num_blocks: Some(self.geometry.num_blocks),
            },
            out,
        );
    }

    /// Sequencer: `n` was refused for a copy that ends before `range` does.
    fn beyond_short_copy(&self, n: NodeId, range: &BlockRange) -> bool {
        self.short_joiners
            .get(&n)
            .is_some_and(|&blocks| range.end() > blocks)
    }

    /// Every region holding a block at or beyond `num_blocks` (the end of a smaller copy).
    fn regions_from(&self, num_blocks: u64) -> impl Iterator<Item = RegionIndex> {
        let first = num_blocks / u64::from(self.geometry.region_blocks);
        (first..self.geometry.num_regions()).map(RegionIndex)
    }

    // ---------------------------------------------------------------- time

    fn on_tick(&mut self, now: Time, out: &mut Vec<Output<P>>) {
        if !self.answered_early.is_empty() {
            // Forget writes answered early whose operation ended without a completion of
            // its own (dropped by an epoch change): nothing is left to filter.
            let (seq, fwd, meta) = (&self.seq, &self.fwd, &self.awaiting_meta);
            self.answered_early.retain(|t| {
                seq.values().any(|o| o.host == Some(*t))
                    || fwd.values().any(|o| o.tag == *t)
                    || meta.iter().any(|(m, _)| m == t)
            });
        }
        let timeout = self.opts.peer_timeout_ns;
        let late = |since: Time| now.0.saturating_sub(since.0) > timeout;
        for s in self.awaited_partners(now, Some(timeout)) {
            self.suspect(now, s, out);
        }
        // A Commit can be lost with a broken connection; reads of its range would wait
        // forever. Ask again.
        let seq = self.sequencer();
        let overdue: Vec<OpId> = self
            .applied
            .iter()
            .filter(|(_, a)| a.done && late(a.since))
            .map(|(id, _)| *id)
            .collect();
        for id in overdue {
            if let Some(a) = self.applied.get_mut(&id) {
                a.since = now;
            }
            self.send(seq, Msg::CommitQuery { id }, out);
        }
        self.retry_membership(now, out);
        if !self.resync.is_empty() {
            self.pump_resync(now, out);
        }
        // A node whose lease ran out answers nothing but NOT READY from now on.
        if !self.serving(now) {
            for tag in self.task_mgmt.drain() {
                not_ready(tag, out);
            }
            for tag in self.pr.drain_own() {
                not_ready(tag, out);
            }
        }
        if !self.serving(now)
            && (!self.reads.is_empty()
                || !self.fwd.is_empty()
                || !self.seq.is_empty()
                || !self.gated_host.is_empty())
        {
            let waiting: Vec<HostTag> = self
                .reads
                .iter()
                .filter(|(_, (_, s))| matches!(s, ReadStage::Waiting))
                .map(|(t, _)| *t)
                .collect();
            for tag in waiting {
                self.reads.remove(&tag);
                not_ready(tag, out);
            }
            while let Some((tag, cmd)) = self.gated_host.pop_front() {
                if let Some(range) = write_range(&cmd) {
                    self.unhold(&range);
                }
                not_ready(tag, out);
            }
            // Writes in flight wait for partners that may stay silent until the links
            // return: the host would wait for its command timeout. Answer NOT READY now (the
            // host retries through another node); the write itself goes on (its range lock
            // and acks are the cluster's business) or is fenced by the next epoch, and its
            // own completion is dropped. An unanswered write may land or not, as any write
            // answered NOT READY.
            let in_flight: Vec<HostTag> = self
                .seq
                .values()
                .filter_map(|o| o.host)
                .chain(self.fwd.values().map(|o| o.tag))
                .filter(|t| !self.answered_early.contains(t))
                .collect();
            // Answered by `handle` after it dropped this step's second answers.
            self.answering_early.extend(in_flight);
        }
    }

    /// Messages to the authority or the sequencer about membership can be lost (a cut link,
    /// a restarted peer): repeat them until the configuration moves on.
    fn retry_membership(&mut self, now: Time, out: &mut Vec<Output<P>>) {
        let due = self
            .last_join_attempt
            .is_none_or(|t| now.0.saturating_sub(t.0) > 2 * self.opts.peer_timeout_ns);
        if !due {
            return;
        }
        let state = self.config.as_ref().map(|c| c.state_of(self.me));
        let epoch = self.epoch();
        match state {
            None | Some(MemberState::Out) => {
                out.push(Output::Join {
                    meta: self.meta.clone(),
                });
                self.last_join_attempt = Some(now);
            }
            Some(MemberState::Synchronized) if self.restarted => {
                out.push(Output::Join {
                    meta: self.meta.clone(),
                });
                self.last_join_attempt = Some(now);
            }
            Some(MemberState::Syncing) => {
                self.send_sync_offer(out);
                self.last_join_attempt = Some(now);
            }
            Some(MemberState::Synchronized) => {
                let done: Vec<(NodeId, bool)> =
                    self.sync_done.iter().map(|(n, a)| (*n, *a)).collect();
                for (n, acked) in done {
                    if acked {
                        out.push(Output::Synchronized { node: n, epoch });
                    } else {
                        self.pr_push(n, out);
                        let meta = self.meta.clone();
                        self.send(n, Msg::SyncComplete { meta }, out);
                    }
                }
                self.last_join_attempt = Some(now);
            }
        }
    }

    /// Partners that operations here wait for: all of them (`older_than: None`), or only
    /// those waited for longer than the given time.
    fn awaited_partners(&self, now: Time, older_than: Option<u64>) -> BTreeSet<NodeId> {
        let late = |since: Time| older_than.is_none_or(|t| now.0.saturating_sub(since.0) > t);
        let mut partners = BTreeSet::new();
        for (id, op) in &self.seq {
            match &op.stage {
                SeqStage::Applying { acks, .. } if late(op.since) => {
                    partners.extend(acks.iter().copied())
                }
                SeqStage::WaitRelease | SeqStage::AwaitOrigin { .. } if late(op.since) => {
                    partners.insert(id.origin);
                }
                _ => {}
            }
        }
        if self
            .fwd
            .values()
            .any(|o| matches!(o.stage, FwdStage::AwaitGrant) && late(o.since))
        {
            partners.insert(self.sequencer());
        }
        if let Some((pending, since)) = &self.gate {
            if late(*since) {
                partners.extend(pending.iter().copied());
            }
        }
        partners.extend(self.task_mgmt.awaited(now, older_than));
        partners.extend(self.pr.awaited(now, older_than, self.sequencer()));
        partners.remove(&self.me);
        partners
    }

    fn suspect(&mut self, now: Time, node: NodeId, out: &mut Vec<Output<P>>) {
        let repeat_after_ns = 2 * self.opts.peer_timeout_ns;
        let due = self
            .suspected
            .get(&node)
            .is_none_or(|t| now.0.saturating_sub(t.0) > repeat_after_ns);
        if due {
            self.suspected.insert(node, now);
            out.push(Output::VerdictRequest {
                suspect: node,
                epoch: self.epoch(),
            });
        }
    }

    // ---------------------------------------------------------------- helpers

    fn epoch(&self) -> Epoch {
        self.config.as_ref().map_or(Epoch(0), |c| c.epoch)
    }

    fn sequencer(&self) -> NodeId {
        self.config.as_ref().map_or(self.me, |c| c.sequencer)
    }

    fn send(&self, to: NodeId, msg: Msg<P>, out: &mut Vec<Output<P>>) {
        out.push(Output::Send {
            to,
            env: Envelope {
                epoch: self.epoch(),
                msg,
            },
        });
    }

    fn new_op(&mut self) -> OpId {
        self.next_op += 1;
        OpId {
            origin: self.me,
            n: self.next_op,
        }
    }

    fn new_io(&mut self, purpose: IoPurpose) -> IoTag {
        self.next_io += 1;
        let io = IoTag(self.next_io);
        self.io.insert(io, purpose);
        io
    }

    /// Every local write goes through here: ordered against overlapping local writes, and
    /// recorded as dirty for every partner that is out (they will need it on return).
    fn local_write(
        &mut self,
        _id: OpId,
        range: BlockRange,
        op: LocalOp<P>,
        purpose: IoPurpose,
        out: &mut Vec<Output<P>>,
    ) {
        if let Some(cfg) = &self.config {
            // The sequencer writes under the configuration it orders in, so its out members
            // are exactly the ones that miss this write. Any other replica may apply a write
            // ordered in an earlier epoch, when a partner that is syncing now was still out
            // (and so never got it): it marks every partner that is not synchronized (3n seed
            // 3780: a write granted under epoch 11 and applied under epoch 12 was missing from
            // the bitmap of the replica that later sequenced the resync).
            let sequencer = cfg.sequencer == self.me;
            let outs: Vec<NodeId> = cfg
                .members
                .iter()
                .filter(|m| m.0 != self.me)
                .filter(|m| match m.1 {
                    MemberState::Out => true,
                    MemberState::Syncing => !sequencer || self.beyond_short_copy(m.0, &range),
                    MemberState::Synchronized => false,
                })
                .map(|m| m.0)
                .collect();
            for p in outs {
                for r in self.geometry.regions_of(&range) {
                    self.journal.mark(p, RegionIndex(r));
                }
            }
        }
        // A resync copy does not enter the activity log: it writes the source's bytes, which
        // the source holds too, and until its acknowledgement the region stays dirty in the
        // source's bitmap for this replica, so nothing it lands here is unknown to the source.
        // Logging copies would fill the log with every region of a full sync and make the
        // next fast sync after a crash of both copy everything again.
        let copy = matches!(purpose, IoPurpose::CopyApply { .. });
        let io = self.new_io(purpose);
        if !copy {
            self.note_activity(io, &range);
        }
        self.writes.submit(range, io, op, out);
    }

    /// A `DiskContinuous` journal records the write's regions as hot before it is submitted
    /// (the record goes first among this step's outputs).
    fn note_activity(&mut self, io: IoTag, range: &BlockRange) {
        let regions = self.geometry.regions_of(range);
        if self.journal.cold_regions(regions.clone()).is_empty() {
            self.journal.note_write(regions, BTreeSet::new);
            return;
        }
        if self.opts.planted_bug == Some(PlantedBug::ActivityNotBeforeWrite) {
            self.journal.defer_activity(io.0, regions);
            return;
        }
        let in_doubt = self.uncertain_regions();
        self.journal.note_write(regions, || in_doubt);
    }

    fn range_bytes(&self, range: &BlockRange) -> u64 {
        u64::from(range.len_blocks) * u64::from(self.geometry.block_size_bytes)
    }

    fn hold(&mut self, range: &BlockRange) {
        self.held_writes += 1;
        self.held_bytes += self.range_bytes(range);
    }

    fn unhold(&mut self, range: &BlockRange) {
        let bytes = self.range_bytes(range);
        debug_assert!(self.held_writes > 0 && self.held_bytes >= bytes);
        self.held_writes = self.held_writes.saturating_sub(1);
        self.held_bytes = self.held_bytes.saturating_sub(bytes);
    }

    fn check_invariants(&self) {
        debug_assert!(
            self.gate.is_none() || self.config.as_ref().is_some_and(|c| c.sequencer == self.me)
        );
        debug_assert!(self.meta_durable <= self.meta.version);
        if let Some(cfg) = &self.config {
            if cfg.sequencer != self.me {
                debug_assert!(
                    self.locks.is_empty(),
                    "only the sequencer holds range locks"
                );
            }
        }
    }
}

/// The blocks a host command writes (WRITE, WRITE SAME, UNMAP, COMPARE AND WRITE).
fn write_range<P>(cmd: &HostCmd<P>) -> Option<BlockRange> {
    match cmd {
        HostCmd::Write { range, .. } | HostCmd::CompareAndWrite { range, .. } => Some(*range),
        HostCmd::Read { .. }
        | HostCmd::Flush
        | HostCmd::TaskMgmt { .. }
        | HostCmd::PrChange { .. } => None,
    }
}

/// End a host command with NOT READY / LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN
/// UNAVAILABLE STATE (04/0C): multipath retries it on another node.
fn not_ready<P>(tag: HostTag, out: &mut Vec<Output<P>>) {
    out.push(Output::Complete {
        tag,
        status: HostStatus::NotReady,
    });
}
