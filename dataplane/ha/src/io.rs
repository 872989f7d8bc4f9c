//! What goes into the engine and what comes out of it.

use crate::generation::{ReplicaMeta, SyncDecision};
use crate::journal::JournalRecord;
use crate::membership::EpochConfig;
use crate::msg::Envelope;
use crate::reservations::PrVersion;
use crate::types::{BlockRange, Epoch, HostTag, IoTag, NodeId, TaskMgmtKind, Time};

/// A host command that reached this node (already decoded and range-checked by SCSI).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostCmd<P> {
    Read {
        range: BlockRange,
    },
    /// WRITE, WRITE SAME and UNMAP all arrive as a write of the resulting blocks.
    Write {
        range: BlockRange,
        data: P,
    },
    /// COMPARE AND WRITE (and ORWRITE / WRITE ATOMIC, expressed as compare + write).
    CompareAndWrite {
        range: BlockRange,
        verify: P,
        data: P,
    },
    /// SYNCHRONIZE CACHE / FUA.
    Flush,
    /// A task management function for the whole LU, already applied on this node: GOOD
    /// once every synchronized partner applied it too (or left the configuration).
    TaskMgmt {
        kind: TaskMgmtKind,
    },
    /// A persistent reservation change (PR OUT, SPC-2 RESERVE / RELEASE) computed by this
    /// node's LU from the state of version `base`: `state` is the whole new state, `notice`
    /// its unit attentions (both opaque here). GOOD once every member that receives writes
    /// applied it; `Miscompare` if another change came first (recompute from the state
    /// `Output::PrApply` delivered meanwhile and submit again).
    PrChange {
        base: PrVersion,
        state: Vec<u8>,
        notice: Vec<u8>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input<P> {
    Host {
        tag: HostTag,
        cmd: HostCmd<P>,
    },
    Peer {
        from: NodeId,
        env: Envelope<P>,
    },
    LocalDone {
        io: IoTag,
        result: LocalResult<P>,
    },
    MetaPersisted {
        version: u64,
    },
    /// A configuration from the failover authority (verdicts arrive this way).
    Config(EpochConfig),
    /// The authority lets this node serve until `until` (its clock) in `epoch`.
    Lease {
        epoch: Epoch,
        until: Time,
    },
    /// Time passes: timeouts are checked.
    Tick,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalResult<P> {
    Done,
    ReadData(P),
    Miscompare,
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalOp<P> {
    Read {
        range: BlockRange,
    },
    Write {
        range: BlockRange,
        data: P,
    },
    /// Compare the blocks with `verify` and write `data` only if equal, atomically with
    /// respect to other local I/O (the engine never has another write in flight there).
    CompareAndWrite {
        range: BlockRange,
        verify: P,
        data: P,
    },
    Flush,
}

/// How a host command ends. `NotReady` is CHECK CONDITION, NOT READY, LOGICAL UNIT NOT
/// ACCESSIBLE, TARGET PORT IN UNAVAILABLE STATE (04/0C): multipath retries it on another
/// node. The engine never answers MEDIUM ERROR or ILLEGAL REQUEST for a cluster condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostStatus<P> {
    Good {
        data: Option<P>,
    },
    Miscompare,
    NotReady,
    /// The local disk failed the I/O (a real medium problem on this node).
    MediumError,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output<P> {
    Local {
        io: IoTag,
        op: LocalOp<P>,
    },
    Send {
        to: NodeId,
        env: Envelope<P>,
    },
    Complete {
        tag: HostTag,
        status: HostStatus<P>,
    },
    /// Ask the failover authority to decide about a partner that does not answer. Until a
    /// new configuration arrives, affected writes are held; if none arrives before the
    /// lease ends, this node stops serving (fail safe).
    VerdictRequest {
        suspect: NodeId,
        epoch: Epoch,
    },
    /// Ask the authority to (re)admit this node as a syncing member.
    Join {
        meta: ReplicaMeta,
    },
    /// Tell the authority that `node` now holds the same data as the sequencer.
    Synchronized {
        node: NodeId,
        epoch: Epoch,
    },
    /// A reconnecting partner cannot be synchronized automatically (split brain, unrelated).
    SyncRefused {
        node: NodeId,
        decision: SyncDecision,
    },
    /// A joining partner's copy is smaller than this sequencer's geometry (it restarted
    /// between the two phases of an extend, with its image rolled back): it is not
    /// synchronized until its copy grows to `sequencer_blocks` (`tandem device extend`
    /// run again) and it offers again.
    SyncSizeRefused {
        node: NodeId,
        joiner_blocks: u64,
        sequencer_blocks: u64,
    },
    PersistMeta(ReplicaMeta),
    /// Make this journal state durable (disk journals) before acting on any later output
    /// of the same step: it comes first among them.
    PersistJournal(JournalRecord),
    /// The sequencer starts resynchronizing `node`: `regions` to copy, and why every
    /// region of the device is copied (`full`: no usable journal, or a lineage that needs
    /// it), `None` for a fast sync.
    ResyncPlanned {
        node: NodeId,
        regions: u64,
        full: Option<FullSyncCause>,
    },
    /// A partner received this task management function from a host: apply it to this
    /// node's tasks and I_T nexuses now (the acknowledgement follows this output).
    TaskMgmt {
        kind: TaskMgmtKind,
    },
    /// Make this the LU's reservation state (and, with APTPL, durable) before anything else
    /// this step outputs; raise `notice`'s unit attentions on this node's nexuses. From a
    /// change (this node's or a partner's), or the sequencer's current state pushed at a
    /// takeover or before `SyncComplete` (empty `notice`).
    PrApply {
        version: PrVersion,
        state: Vec<u8>,
        notice: Vec<u8>,
    },
}

/// Why a resync copies every region (logged with `Output::ResyncPlanned`, so a full sync
/// that a journal should have avoided can be traced to its rule).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FullSyncCause {
    /// The joiner holds no history (new, or its metadata lost).
    BlankJoiner,
    /// The generations compared need a full copy (`SyncDecision` other than a fast one).
    Lineage(SyncDecision),
    /// This sequencer's bitmap for the joiner is incomplete (lost at a restart, or written
    /// while this node was not tracking the joiner).
    SourceJournalIncomplete,
    /// The joiner may hold writes the sequencer lacks (a former sequencer, or a survivor
    /// that never reported its uncertain regions) and its own journal is incomplete.
    JoinerJournalIncomplete,
}
