//! In-flight SCSI tasks of one connection: a fixed-size slot table (no allocation per
//! command in steady state) indexed by ITT.

use std::collections::HashMap;
use tandem_bdev::AlignedBuf;
use tandem_scsi::Continuation;

/// Most tasks a connection holds at once; it also bounds the CmdSN window we advertise.
pub const TASKS_MAX: usize = 128;
/// Extra slots for immediate commands, which the CmdSN window does not bound.
pub const IMMEDIATE_SLOTS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStage {
    /// Waiting for (more) Data-Out.
    CollectingData,
    /// All data present; waiting to run (or to be re-run after `Step::Defer`).
    Ready,
    /// An I/O is with the block device.
    InIo,
    /// Response queued; the slot is freed when its last PDU has been sent.
    Responding,
}

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

    pub fn clear(&mut self) {
        *self = R2tSet::default();
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

pub struct Task {
    pub itt: u32,
    pub lun: u64,
    pub cdb: [u8; 16],
    pub edtl: u32,
    pub read: bool,
    pub write: bool,
    pub stage: TaskStage,
    /// The task was aborted by a TMF: its I/O may still complete, but nothing is sent.
    pub aborted: bool,
    /// Write payload (Data-Out), exactly `edtl` bytes once complete.
    pub data_out: Option<AlignedBuf>,
    pub received: u32,
    /// Unsolicited data (immediate + Data-Out without R2T) may go up to this offset.
    pub unsolicited_end: u32,
    pub next_r2t_offset: u32,
    pub r2tsn: u32,
    pub r2ts: R2tSet,
    /// Buffer of the last read I/O; Data-In is sent from it.
    pub io_buf: Option<AlignedBuf>,
    pub cont: Option<Continuation>,
    pub datasn: u32,
    /// If set, the command was answered early (e.g. a bad CDB); remaining unsolicited
    /// Data-Out is absorbed and dropped.
    pub draining: bool,
    pub io_started_at: Option<std::time::Instant>,
    /// Block-device operations of the current step still in flight (UNMAP may need several).
    pub pending_ios: u32,
    /// Set when an operation of the current step failed; true = medium error.
    pub io_failed: Option<bool>,
    /// The Data-Out buffer itself went to the device (no copy) and comes back with the
    /// write's completion.
    pub data_out_in_io: bool,
    /// DataSN the next unsolicited Data-Out must carry.
    pub unsolicited_datasn: u32,
    /// Write residual decided when the command runs.
    pub residual: Residual,
    /// The CDB has been reconciled with the expected length (done once, before the first run).
    pub write_fitted: bool,
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
