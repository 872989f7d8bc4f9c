//! Public value types shared by the transport and the logical unit.

use crate::rw::Continuation;

/// Identity strings and designators an LU reports in INQUIRY and VPD 0x80/0x83.
///
/// HA partners build it from the same seed ([`LuIdentity::derive`]) so that
/// multipath sees one device behind every node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LuIdentity {
    /// T10 vendor identification, at most 8 ASCII characters.
    pub vendor: String,
    /// Product identification, at most 16 ASCII characters.
    pub product: String,
    /// Product revision level, at most 4 ASCII characters.
    pub revision: String,
    /// Unit serial number (VPD 0x80).
    pub serial: String,
    /// NAA 6 (IEEE registered extended) designator, 16 bytes.
    pub naa: [u8; 16],
    /// EUI-64 designator.
    pub eui64: [u8; 8],
}

/// Host-visible cache policy of the device (drives the caching mode page):
/// the configuration's type, shared with the block devices.
pub use tandem_config::CacheMode;

/// ALUA asymmetric access state of a target port group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AluaState {
    ActiveOptimized,
    ActiveNonOptimized,
    Standby,
    Unavailable,
    Transitioning,
}

/// Static configuration of one logical unit.
#[derive(Clone, Debug)]
pub struct LuConfig {
    pub identity: LuIdentity,
    /// Logical block size in bytes: 512 or 4096.
    pub block_size: u32,
    pub num_blocks: u64,
    pub read_only: bool,
    pub cache: CacheMode,
    pub unmap_supported: bool,
    /// Reported in VPD 0xB0 and enforced (0 = no limit).
    pub max_transfer_blocks: u32,
}

/// The SCSI target port a nexus came in through.
#[derive(Clone, Debug)]
pub struct TargetPort {
    pub relative_port_id: u16,
    pub tpg_id: u16,
    pub target_name: String,
    pub tpgt: u16,
}

/// An I_T nexus (one iSCSI session to this LU's target).
#[derive(Clone, Debug)]
pub struct Nexus {
    pub id: u64,
    pub initiator_name: String,
    pub isid: [u8; 6],
    pub port: TargetPort,
}

/// One SCSI command as the transport received it.
pub struct Command<'a> {
    pub cdb: &'a [u8],
    /// The whole Data-Out payload (may be shorter or longer than the CDB implies).
    pub data_out: &'a [u8],
    /// Expected Data-In length from the transport header.
    pub expected_in_len: u32,
    pub nexus: &'a Nexus,
}

/// What the transport must do next for a command.
pub enum Step {
    /// Send this status (and data) and finish the command.
    Done(Reply),
    /// Do this I/O, then call [`crate::LogicalUnit::resume`].
    Io(IoPlan),
    /// Retry `execute` for the same command later (a conflicting atomic
    /// operation, or another persistent-reservation commit, is in flight).
    Defer,
    /// Make this persistent-reservation state durable, off the reactor
    /// thread, then call [`crate::LogicalUnit::resume`] with the outcome
    /// (`IoOutcome::Ok` only once it is durable). The LU applies the new
    /// state and answers only then; on failure it keeps the old state.
    /// With replication this is where "committed on every synchronized
    /// partner" goes.
    Persist(PrCommit),
}

/// A persistent-reservation change waiting to become durable.
pub struct PrCommit {
    /// The whole new state, as [`PrStore::save`] takes it.
    pub blob: Vec<u8>,
    /// Where it goes.
    pub store: std::sync::Arc<dyn PrStore>,
    /// Set it once the save returned (dropping it unset means failed).
    pub signal: crate::rw::CommitSignal,
    /// Hand back to `resume` with the outcome.
    pub cont: Continuation,
}

impl std::fmt::Debug for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Done(r) => f.debug_tuple("Done").field(r).finish(),
            Step::Io(p) => f.debug_tuple("Io").field(&p.io).finish(),
            Step::Defer => f.write_str("Defer"),
            Step::Persist(c) => f.debug_tuple("Persist").field(&c.blob.len()).finish(),
        }
    }
}

/// One I/O and the state needed to continue afterwards.
pub struct IoPlan {
    pub io: LuIo,
    pub cont: Continuation,
}

/// A block I/O request; LBAs and counts are in logical blocks of the LU.
#[derive(Debug, PartialEq, Eq)]
pub enum LuIo {
    Read {
        lba: u64,
        blocks: u32,
    },
    Write {
        lba: u64,
        blocks: u32,
        src: WriteSource,
        fua: bool,
    },
    Flush,
    Unmap {
        ranges: Vec<(u64, u32)>,
    },
    /// COMPARE AND WRITE run by the device itself (one that offers it atomically, e.g. a
    /// replicated device: see [`crate::LogicalUnit::set_device_compare_and_write`]). The
    /// command's Data-Out buffer is the expected data then the new data, `blocks` each; a
    /// difference comes back as [`IoOutcome::Miscompare`].
    CompareAndWrite {
        lba: u64,
        blocks: u32,
        fua: bool,
    },
    /// A persistent reservation change for a device that orders it across nodes (see
    /// [`crate::LogicalUnit::set_cluster_reservations`]): `state` computed from the state of
    /// version `base`, `notice` its unit attentions. [`IoOutcome::Miscompare`]: another
    /// change came first.
    ReservationChange {
        base: (u64, u64),
        state: Vec<u8>,
        notice: Vec<u8>,
    },
}

/// Where the bytes of a write come from.
#[derive(Debug, PartialEq, Eq)]
pub enum WriteSource {
    /// A byte range of the command's Data-Out buffer.
    DataOut { offset: usize, len: usize },
    /// A buffer built by the LU (WRITE SAME expansion).
    Owned(Vec<u8>),
}

/// How the Data-Out an initiator sent compares with what the command uses
/// ([`crate::LogicalUnit::data_out_fit`]); the transport reports the
/// difference as the residual (RFC 7143 11.4.5.2, SAM-5 5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataOutFit {
    /// As much as the command uses (or a command whose parameter data has
    /// its own length rules).
    Exact,
    /// The CDB asks for this many bytes more than were sent (overflow).
    Short(u32),
    /// This many bytes more than the CDB asks for were sent (underflow);
    /// they are ignored.
    Long(u32),
}

/// Result of an I/O the transport did for an [`IoPlan`].
#[derive(Debug)]
pub enum IoOutcome<'a> {
    Ok {
        read_data: Option<&'a [u8]>,
    },
    MediumError,
    Failed,
    /// The device is not accessible through this node now (a replica that is not serving):
    /// CHECK CONDITION, NOT READY, LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN UNAVAILABLE
    /// STATE (04/0C), which multipath retries on another path.
    NotReady,
    /// A device-run [`LuIo::CompareAndWrite`] found different data (nothing was written);
    /// `offset` is the first differing byte from the start of the compared range.
    Miscompare {
        offset: u64,
    },
}

/// SCSI status byte (SAM-5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ScsiStatus {
    Good = 0,
    CheckCondition = 2,
    ConditionMet = 4,
    Busy = 8,
    ReservationConflict = 0x18,
    TaskSetFull = 0x28,
    AcaActive = 0x30,
    TaskAborted = 0x40,
}

/// Final answer to a command.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: ScsiStatus,
    pub data: ReplyData,
    /// The sense of a CHECK CONDITION; the transport renders it (fixed
    /// format, [`crate::Sense::to_fixed`]) when it builds the response.
    pub sense: Option<crate::Sense>,
}

/// Data-In of a reply.
#[derive(Debug, PartialEq, Eq)]
pub enum ReplyData {
    None,
    /// Already truncated to the CDB allocation length.
    Bytes(Vec<u8>),
    /// Send the last Read's buffer, `len` bytes.
    IoBuffer {
        len: usize,
    },
}

impl Reply {
    pub fn good() -> Reply {
        Reply {
            status: ScsiStatus::Good,
            data: ReplyData::None,
            sense: None,
        }
    }

    /// GOOD with parameter data truncated to `alloc_len`.
    pub fn data(mut bytes: Vec<u8>, alloc_len: u32) -> Reply {
        let alloc = usize::try_from(alloc_len).unwrap_or(usize::MAX);
        bytes.truncate(alloc);
        Reply {
            status: ScsiStatus::Good,
            data: ReplyData::Bytes(bytes),
            sense: None,
        }
    }

    pub fn check(sense: &crate::Sense) -> Reply {
        Reply {
            status: ScsiStatus::CheckCondition,
            data: ReplyData::None,
            sense: Some(*sense),
        }
    }

    /// TASK ABORTED: a task management function of another I_T nexus aborted the command
    /// (TAS=1 in the control mode page).
    pub fn task_aborted() -> Reply {
        Reply {
            status: ScsiStatus::TaskAborted,
            data: ReplyData::None,
            sense: None,
        }
    }

    pub fn conflict() -> Reply {
        Reply {
            status: ScsiStatus::ReservationConflict,
            data: ReplyData::None,
            sense: None,
        }
    }
}

/// Persistence for APTPL persistent-reservation state.
///
/// `save` blocks (it syncs to stable storage): the LU never calls it, the
/// transport runs it off the reactor thread for a [`Step::Persist`].
pub trait PrStore: Send + Sync {
    /// Replaces the stored state atomically (a crash leaves the old or the
    /// new blob) and returns only once the new one is durable.
    fn save(&self, blob: &[u8]) -> std::io::Result<()>;
    fn load(&self) -> std::io::Result<Option<Vec<u8>>>;
}

/// One ALUA target port group as reported by REPORT TARGET PORT GROUPS.
#[derive(Clone, Debug)]
pub struct PortGroup {
    pub tpg_id: u16,
    pub state: AluaState,
    pub relative_port_ids: Vec<u16>,
}
