//! In-flight SCSI tasks of one connection: a fixed-size slot table (no allocation per
//! command in steady state) indexed by ITT.

use std::collections::HashMap;
use std::time::Instant;
use tandem_bdev::AlignedBuf;
use tandem_scsi::{Continuation, LuIo};

/// Most tasks a connection holds at once; it also bounds the CmdSN window we advertise.
pub const TASKS_MAX: usize = 128;
/// Extra slots for immediate commands, which the CmdSN window does not bound.
pub const IMMEDIATE_SLOTS: usize = 16;

/// One outstanding R2T.
#[derive(Debug, Clone, Copy, Default)]
pub struct R2tWindow {
    pub ttt: u32,
    pub offset: u32,
    pub len: u32,
    pub received: u32,
    /// DataSN the next Data-Out of this burst must carry (starts at 0 per burst).
    pub next_datasn: u32,
}

/// Outstanding R2Ts of one task, stored inline (no allocation per command). We issue at
/// most `R2T_SLOTS` at a time even if MaxOutstandingR2T allows more (RFC 7143 lets a target
/// send fewer).
pub const R2T_SLOTS: usize = 8;

#[derive(Debug, Clone, Copy, Default)]
pub struct R2tSet {
    items: [Option<R2tWindow>; R2T_SLOTS],
    len: usize,
}

impl R2tSet {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_full(&self) -> bool {
        self.len == R2T_SLOTS
    }

    pub fn push(&mut self, w: R2tWindow) -> bool {
        match self.items.iter_mut().find(|i| i.is_none()) {
            Some(free) => {
                *free = Some(w);
                self.len += 1;
                true
            }
            None => false,
        }
    }

    pub fn find_mut(&mut self, ttt: u32) -> Option<&mut R2tWindow> {
        self.items.iter_mut().flatten().find(|w| w.ttt == ttt)
    }

    pub fn remove(&mut self, ttt: u32) {
        for item in self.items.iter_mut() {
            if item.map(|w| w.ttt == ttt).unwrap_or(false) {
                *item = None;
                self.len -= 1;
            }
        }
    }
}

/// How the iSCSI expected length relates to what the CDB asks to write (RFC 7143 §11.4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residual {
    None,
    /// The initiator sent (or would send) fewer bytes than the CDB asks for.
    Overflow(u32),
    /// The initiator sent more bytes than the CDB asks for.
    Underflow(u32),
}

/// One SCSI command of a connection. What the command is (`itt`..`write`) never changes;
/// where it is in its life is [`Stage`], and each stage carries exactly the data that stage
/// needs, so no combination of flags can describe an impossible task.
pub struct Task {
    pub itt: u32,
    pub lun: u64,
    pub cdb: [u8; 16],
    pub edtl: u32,
    pub read: bool,
    pub write: bool,
    pub started: Instant,
    /// Write residual, decided when the last Data-Out arrived (the LU's `data_out_fit`).
    pub residual: Residual,
    /// Bytes of the reactor's memory budget this task holds.
    pub mem: Reservation,
    pub stage: Stage,
}

/// Budget bytes held by a task: its Data-Out buffer and its read data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reservation {
    pub write: u64,
    pub read: u64,
}

/// Where a task is in its life.
///
/// ```text
///   write ──► Collecting ──(every byte in)──► Ready ◄──(retry)── Deferred
///   read  ─────────────────────────────────► Ready ──(range busy)──► Deferred
///                                             │ Step::Io / Step::Persist
///                 HeldForMemory ◄──(no memory for the reply)──┤
///                       └──(granted)──────────► InIo ◄──────┘
///                                             │ last completion: next Step::Io, or the answer
///   (answered early, from any stage) ───────► Responding ──(last PDU sent)──► freed
///   abort: InIo ──► Aborted ──(last completion)──► freed; Responding is not aborted;
///          every other stage is freed at once.
/// ```
/// (docs/architecture.md has the full diagram.)
/// ```
pub enum Stage {
    /// Waiting for Data-Out.
    Collecting(Collecting),
    /// Every byte is here (or none was expected): queued to run.
    Ready(Ready),
    /// The logical unit found a conflicting range in flight; parked until a release (a
    /// completion on this connection) or the park timer, never spun on.
    Deferred(Ready),
    /// A read whose reply buffer the memory budget cannot grant yet; runs when it can.
    HeldForMemory(Planned),
    /// Operations with the block device, or a reservation commit at the persister thread;
    /// the continuation resumes the logical unit.
    ///
    /// Replication adds its stages after this one: `WaitingPartners` (local write done,
    /// partners' acknowledgements outstanding) and `HeldForVerdict` (a partner timed out;
    /// the control service decides). Both carry an `InIo`-like record and end in
    /// `Responding`, so aborting and freeing work the same way for them.
    InIo(InIo),
    /// The answer is queued; Data-In may be sent from `io_buf`. The slot is freed when the
    /// last PDU has left.
    Responding(Responding),
    /// Aborted by a TMF while its I/O was with the device: its result is dropped when the
    /// last operation completes (the continuation keeps its range locked until then).
    Aborted(InIo),
    /// Momentary placeholder while a stage's data moves to the next stage.
    Moving,
}

impl Stage {
    pub fn name(&self) -> &'static str {
        match self {
            Stage::Collecting(_) => "collecting",
            Stage::Ready(_) => "ready",
            Stage::Deferred(_) => "deferred",
            Stage::HeldForMemory(_) => "held-for-memory",
            Stage::InIo(_) => "in-io",
            Stage::Responding(_) => "responding",
            Stage::Aborted(_) => "aborted",
            Stage::Moving => "moving",
        }
    }
}

/// Collecting write data: the buffer and the R2T window.
pub struct Collecting {
    /// The Data-Out buffer (exactly `edtl` bytes); None while the memory budget cannot grant
    /// it, and then no R2T is outstanding (they are held).
    pub buf: Option<AlignedBuf>,
    pub received: u32,
    /// Unsolicited data (immediate + Data-Out without R2T) may go up to this offset.
    pub unsolicited_end: u32,
    /// DataSN the next unsolicited Data-Out must carry.
    pub unsolicited_datasn: u32,
    pub next_r2t_offset: u32,
    pub r2tsn: u32,
    pub r2ts: R2tSet,
}

/// Ready to run (again).
pub struct Ready {
    /// The complete Data-Out of a write (already fitted to the CDB).
    pub data_out: Option<AlignedBuf>,
}

/// A planned read waiting for memory.
pub struct Planned {
    pub io: LuIo,
    pub cont: Continuation,
    pub data_out: Option<AlignedBuf>,
}

/// Where the Data-Out buffer is while I/O runs.
pub enum OutBuf {
    None,
    Here(AlignedBuf),
    /// Given to the device as the write buffer (no copy); it comes back in the completion.
    WithDevice,
}

/// Why an operation of the current step failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoFailure {
    Medium,
    /// A replicated device not serving on this node: NOT READY 04/0C.
    NotReady,
    /// A device-run COMPARE AND WRITE differed at this byte of the range.
    Miscompare(u64),
    Other,
}

pub struct InIo {
    pub cont: Option<Continuation>,
    /// Operations of this step still in flight (UNMAP may need several).
    pub pending: u32,
    pub failure: Option<IoFailure>,
    pub data_out: OutBuf,
    /// The buffer of a read, once it completed.
    pub io_buf: Option<AlignedBuf>,
    /// The step reads (its completion brings the reply buffer); writes' buffers that come
    /// back are copies (or the Data-Out buffer itself, see `data_out`).
    pub reading: bool,
}

pub struct Responding {
    /// Data-In is sent straight from here.
    pub io_buf: Option<AlignedBuf>,
}

pub struct TaskTable {
    slots: Vec<Option<Task>>,
    free: Vec<usize>,
    by_itt: HashMap<u32, usize>,
}

impl Default for TaskTable {
    fn default() -> Self {
        Self::new()
    }
}

impl TaskTable {
    pub fn new() -> TaskTable {
        let cap = TASKS_MAX + IMMEDIATE_SLOTS;
        TaskTable {
            slots: (0..cap).map(|_| None).collect(),
            free: (0..cap).rev().collect(),
            by_itt: HashMap::with_capacity(cap),
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    pub fn has_room(&self, immediate: bool) -> bool {
        if immediate {
            !self.free.is_empty()
        } else {
            self.len() < TASKS_MAX
        }
    }

    pub fn insert(&mut self, task: Task) -> Option<usize> {
        if self.by_itt.contains_key(&task.itt) {
            return None;
        }
        let slot = self.free.pop()?;
        self.by_itt.insert(task.itt, slot);
        self.slots[slot] = Some(task);
        Some(slot)
    }

    pub fn contains_itt(&self, itt: u32) -> bool {
        self.by_itt.contains_key(&itt)
    }

    pub fn slot_of(&self, itt: u32) -> Option<usize> {
        self.by_itt.get(&itt).copied()
    }

    pub fn get(&self, slot: usize) -> Option<&Task> {
        self.slots.get(slot).and_then(|s| s.as_ref())
    }

    pub fn get_mut(&mut self, slot: usize) -> Option<&mut Task> {
        self.slots.get_mut(slot).and_then(|s| s.as_mut())
    }

    pub fn remove(&mut self, slot: usize) -> Option<Task> {
        let task = self.slots.get_mut(slot)?.take()?;
        if self.by_itt.get(&task.itt) == Some(&slot) {
            self.by_itt.remove(&task.itt);
        }
        self.free.push(slot);
        Some(task)
    }

    /// Forgets the ITT (so the initiator may reuse it) while the slot stays busy until its
    /// last PDU is sent.
    pub fn retire_itt(&mut self, slot: usize) {
        if let Some(Some(t)) = self.slots.get(slot) {
            if self.by_itt.get(&t.itt) == Some(&slot) {
                self.by_itt.remove(&t.itt);
            }
        }
    }

    pub fn slots(&self) -> impl Iterator<Item = usize> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_some())
            .map(|(i, _)| i)
    }
}
