//! Messages between replicas (the mirror protocol's logical content; framing, CRC and
//! authentication belong to the sync-link layer). `P` is the payload handle: an aligned
//! buffer in the data plane, per-block values in the simulator.

use crate::generation::ReplicaMeta;
use crate::reservations::PrVersion;
use crate::types::{BlockRange, Epoch, OpId, RegionIndex, TaskMgmtKind};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope<P> {
    /// The sender's epoch; a receiver refuses messages from a role the sender no longer holds.
    pub epoch: Epoch,
    pub msg: Msg<P>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Msg<P> {
    /// Sequencer → replica: apply this write (already ordered). `commit_follows`: keep reads
    /// of the range waiting until `Commit`, because another synchronized replica may not
    /// have it yet.
    Mirror {
        id: OpId,
        range: BlockRange,
        data: P,
        commit_follows: bool,
    },
    /// Replica → sequencer: the mirrored write is on my disk (or in my cache).
    MirrorAck { id: OpId },
    /// Sequencer → replicas: every replica has `id`; reads may see it.
    Commit { id: OpId },
    /// Replica → sequencer: I have waited long for `Commit { id }` (it may have been lost
    /// with a broken connection); send it again if `id` is done.
    CommitQuery { id: OpId },
    /// Origin → sequencer: order and apply this host write for me.
    Forward {
        id: OpId,
        range: BlockRange,
        op: ForwardedOp<P>,
    },
    /// Sequencer → origin: applied on every other replica (or the compare failed); apply it
    /// yourself, then release.
    Grant { id: OpId, applied: bool },
    /// Origin → sequencer: applied here too; unlock the range.
    Release { id: OpId },
    /// Survivor → new sequencer: regions whose content I cannot vouch for (writes that were
    /// in flight when the old sequencer left). `done` ends the report.
    Uncertain { regions: Vec<RegionIndex> },
    /// Joining replica → sequencer: my generations and my own dirty regions, for the sync
    /// decision. `num_blocks`: the size of my copy (my engine's geometry); `None` from a
    /// peer that predates the field (no size check then). A sequencer whose geometry is
    /// larger refuses the sync (`Output::SyncSizeRefused`) rather than drop writes and
    /// region copies beyond the joiner's end.
    SyncOffer {
        meta: ReplicaMeta,
        dirty: Vec<RegionIndex>,
        journal_complete: bool,
        num_blocks: Option<u64>,
    },
    /// Sequencer → replica: the whole content of a region (resync or reconcile copy).
    RegionCopy {
        id: OpId,
        region: RegionIndex,
        data: P,
    },
    /// Replica → sequencer: region copy applied.
    RegionCopyAck { id: OpId },
    /// Sequencer → joining replica: every region is copied; this is the data generation (and
    /// history) you now hold. Sent before the authority is asked to make it synchronized, so
    /// the replica's metadata can never lag the configuration.
    SyncComplete { meta: ReplicaMeta },
    /// Joining replica → sequencer: `SyncComplete` received.
    SyncCompleteAck,
    /// Origin → every other synchronized member: a task management function for the whole
    /// logical unit arrived here; apply it to your own tasks and I_T nexuses. Not ordered
    /// by the sequencer (it changes no data; see `docs/ha.md`).
    TaskMgmt { id: OpId, kind: TaskMgmtKind },
    /// Member → origin: `TaskMgmt { id }` applied here.
    TaskMgmtAck { id: OpId },
    /// Origin → sequencer: order this persistent reservation change, computed from the state
    /// of version `base`.
    PrForward {
        id: OpId,
        base: PrVersion,
        state: Vec<u8>,
        notice: Vec<u8>,
    },
    /// Sequencer → every member that receives writes: this is the reservation state now
    /// (a change, or the current state pushed at a takeover or before `SyncComplete`).
    PrApply {
        id: OpId,
        version: PrVersion,
        state: Vec<u8>,
        notice: Vec<u8>,
    },
    /// Member → sequencer: `PrApply { id }` applied (and durable) here.
    PrApplyAck { id: OpId },
    /// Sequencer → origin: the change `id` is applied on every member (`applied`), or its
    /// base was stale (recompute).
    PrDone { id: OpId, applied: bool },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ForwardedOp<P> {
    Write { data: P },
    CompareAndWrite { verify: P, data: P },
}
