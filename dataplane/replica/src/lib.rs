//! `tandem-replica`: a replicated block device.
//!
//! [`ReplicatedBdev`] wraps the node's local copy (`Arc<dyn Bdev>`) of an HA device. Every
//! host I/O goes through the replication engine ([`tandem_ha::Engine`]) that one
//! *replication thread* per device owns, together with one local [`BdevChannel`] and the
//! partners' transports ([`PeerTransport`]; the sync links of `tandem-synclink`, or
//! [`MemNet`] in tests).
//!
//! ```text
//!  reactor ──submit(tag, op)──► crossbeam ─┐           ┌─► local BdevChannel (one)
//!  reactor ◄──poll()── completions ◄───────┤ replica   ├─► partners (PeerTransport)
//!          ◄── wake eventfd (per channel) ─┤ thread    ├─◄ ReplicaHandle::exchange
//!                                          └ Engine ───┘   (control link: configs, leases)
//! ```
//!
//! The thread runs while there is work, polls briefly after it, and then blocks in `poll(2)`
//! on its own eventfd, the local channel's wake fd and the transports' descriptors (no busy
//! spin when idle: several processes share two cores in tests). Submitters write that
//! eventfd only while the thread sleeps (`doorbell.rs`), not once per I/O. Time for the
//! engine is the thread's monotonic clock.
//!
//! The one copy left on the write path: host data is copied into the engine's
//! [`SharedPayload`] (CRC computed there, shared by the local write and every partner send),
//! and the local write copies it into an aligned buffer for the disk.
#![forbid(unsafe_code)]
// `is_multiple_of` needs Rust 1.87; the workspace MSRV is 1.80.
#![allow(unknown_lints, clippy::manual_is_multiple_of)]

mod doorbell;
mod journal_codec;
mod journal_store;
mod meta;
mod thread;
pub mod transport;

use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use tandem_bdev::{
    AlignedBuf, Bdev, BdevChannel, BdevError, BdevOp, CacheMode, Completion, DeviceInfo,
};
use tandem_config::ipc::{HaReport, HaUpdate};
use tandem_ha::NodeId;

pub use meta::MetaStore;
pub use tandem_ha::EpochConfig;
pub use transport::{Full, MemNet, MemTransport, PeerEvent, PeerTransport};

/// Largest chunk of zeroes one DISCARD becomes at a time (bounded memory).
pub const DISCARD_CHUNK_BYTES: u64 = 1 << 20;

/// How long [`ReplicaHandle::exchange`] waits for the replication thread.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(2);

/// One partner of this replica.
pub struct Partner {
    pub name: String,
    pub node_id: NodeId,
    pub transport: Box<dyn PeerTransport>,
}

/// How to build a [`ReplicatedBdev`].
pub struct ReplicaOptions {
    /// This node's id in the device's cluster.
    pub node_id: NodeId,
    /// Where the replica metadata lives (`None`: in memory, for RAM devices).
    pub meta_path: Option<PathBuf>,
    /// Directory of a disk journal (`engine.journal` not `Ram`): the files
    /// `<device>.ha-journal.0` and `.1`. `None` with a disk journal: the meta's directory;
    /// with neither, the journal stays in RAM.
    pub journal_dir: Option<PathBuf>,
    pub engine: tandem_ha::Options,
    /// Differs on every start (the start time by default).
    pub boot_id: u32,
    /// Called on the replication thread whenever the replica starts or stops serving or a
    /// new configuration arrives (the data plane sets the LU's ALUA states from it). Must
    /// not block.
    pub on_state: Option<StateCallback>,
    /// Called on the replication thread when a partner carries a LOGICAL UNIT RESET or CLEAR
    /// TASK SET here: apply it to this node's tasks and I_T nexuses (the data plane calls
    /// the LU). Runs before the acknowledgement leaves, so the origin answers its host only
    /// after this returned. Must not block.
    pub on_task_mgmt: Option<TaskMgmtCallback>,
    /// Called on the replication thread whenever a persistent reservation state must become
    /// this node's LU's: a change (this node's own, before its [`BdevOp::ReservationChange`]
    /// completes, or a partner's), or the state the sequencer pushes before this node serves.
    /// Apply it, and save it when APTPL asks, before returning: the acknowledgement that lets
    /// the origin answer its host leaves after this returns. Blocks at most for that save.
    pub on_pr_apply: Option<PrApplyCallback>,
    /// The reservation state the LU loaded at start (APTPL), encoded as the LU sends it: what
    /// this node pushes if it becomes the sequencer before another state reaches it.
    pub pr_state: Vec<u8>,
}

/// What [`ReplicaOptions::on_pr_apply`] is given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrApply {
    /// The version of `state` (the base of the LU's next change).
    pub version: tandem_bdev::PrVersionId,
    /// The whole state, as the LU encoded it.
    pub state: Vec<u8>,
    /// Unit attentions to raise on this node's nexuses (empty for a pushed state).
    pub notice: Vec<u8>,
}

/// See [`ReplicaOptions::on_pr_apply`].
pub type PrApplyCallback = Box<dyn FnMut(PrApply) + Send>;

/// See [`ReplicaOptions::on_task_mgmt`].
pub type TaskMgmtCallback = Box<dyn FnMut(tandem_bdev::TaskMgmt) + Send>;

/// See [`ReplicaOptions::on_state`].
pub type StateCallback = Box<dyn FnMut(&ReplicaState) + Send>;

/// What [`ReplicaOptions::on_state`] is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaState {
    /// Host I/O is served now (synchronized member with a valid lease).
    pub serving: bool,
    /// The configuration the engine holds.
    pub config: Option<tandem_ha::EpochConfig>,
}

impl ReplicaOptions {
    pub fn new(node_id: NodeId, meta_path: Option<PathBuf>) -> ReplicaOptions {
        ReplicaOptions {
            node_id,
            meta_path,
            journal_dir: None,
            engine: tandem_ha::Options::default(),
            boot_id: boot_id_now(),
            on_state: None,
            on_task_mgmt: None,
            on_pr_apply: None,
            pr_state: Vec::new(),
        }
    }
}

/// The disk journal of a device, if its kind is on disk: the store and what it held. A
/// journal that cannot be read is lost (every partner then needs a full sync); one that
/// cannot be placed anywhere makes the journal a RAM one, said in the log.
fn open_journal(
    device: &str,
    info: &DeviceInfo,
    opts: &mut ReplicaOptions,
) -> (
    Option<journal_store::JournalStore>,
    Option<tandem_ha::journal::PersistedJournal>,
) {
    if !opts.engine.journal.on_disk() {
        return (None, None);
    }
    let dir = opts.journal_dir.clone().or_else(|| {
        opts.meta_path
            .as_ref()
            .and_then(|p| p.parent().map(std::path::Path::to_path_buf))
            .filter(|p| !p.as_os_str().is_empty())
    });
    let Some(dir) = dir else {
        tracing::warn!(
            device,
            "no directory for the disk journal (RAM device without a data dir): RAM journal"
        );
        opts.engine.journal = tandem_ha::journal::JournalKind::Ram;
        return (None, None);
    };
    if let Err(e) = std::fs::create_dir_all(&dir) {
        tracing::error!(device, dir = %dir.display(), error = %e, "journal directory: RAM journal");
        opts.engine.journal = tandem_ha::journal::JournalKind::Ram;
        return (None, None);
    }
    let geometry = tandem_ha::Geometry::with_64k_regions(info.block_size, info.num_blocks);
    let (store, loaded) = journal_store::JournalStore::open(&dir, device, geometry.num_regions());
    let restored = match loaded {
        journal_store::Loaded::Empty => None,
        journal_store::Loaded::Found(j) => {
            tracing::info!(
                device,
                partners = j.partners.len(),
                hot_regions = j.activity.len(),
                "disk journal restored"
            );
            Some(j)
        }
        journal_store::Loaded::Corrupt(why) => {
            tracing::error!(device, %why, "disk journal unreadable: the next resync is full");
            None
        }
    };
    (Some(store), restored)
}

/// A boot id from the wall clock (milliseconds, wrapping every 49 days): different on every
/// start of a replica.
pub fn boot_id_now() -> u32 {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    (ms as u32).max(1)
}

/// A host operation handed to the replication thread.
pub(crate) struct Submit {
    pub chan: u64,
    pub tag: u64,
    pub op: BdevOp,
}

/// Control messages to the replication thread.
pub(crate) enum Mail {
    NewChannel {
        id: u64,
        completions: Sender<Completion>,
        wake: Arc<doorbell::CompletionSignal>,
    },
    DropChannel {
        id: u64,
    },
    Exchange {
        updates: Vec<HaUpdate>,
        reply: Sender<HaReport>,
    },
    /// Grow the engine's geometry (extend of an HA device, after the local copy grew).
    Grow {
        num_blocks: u64,
        reply: Sender<Result<(), String>>,
    },
    Stop,
}

/// What the thread shares with the handles.
pub(crate) struct Shared {
    pub submit: Sender<Submit>,
    pub mail: Sender<Mail>,
    /// Rung after queuing a submission or mail (writes only while the thread sleeps).
    pub bell: doorbell::Doorbell,
}

/// A replicated device: the local copy behind the replication engine.
pub struct ReplicatedBdev {
    inner: Arc<dyn Bdev>,
    shared: Arc<Shared>,
    next_channel: AtomicU64,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Thread-safe access to the replication thread for the control link.
#[derive(Clone)]
pub struct ReplicaHandle {
    shared: Arc<Shared>,
}

impl ReplicaHandle {
    /// Delivers the failover authority's updates and returns what the engine asks of the
    /// authority, with the device's state. Waits at most [`EXCHANGE_TIMEOUT`].
    pub fn exchange(&self, updates: Vec<HaUpdate>) -> Result<HaReport, String> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.shared
            .mail
            .send(Mail::Exchange { updates, reply: tx })
            .map_err(|_| "the replication thread has stopped".to_string())?;
        self.shared.bell.ring();
        rx.recv_timeout(EXCHANGE_TIMEOUT)
            .map_err(|_| "the replication thread did not answer in time".to_string())
    }
}

impl ReplicatedBdev {
    /// Starts the replication thread for `inner` (this node's copy). The metadata is loaded
    /// from `opts.meta_path` (absent: a replica that needs a full sync).
    pub fn start(
        inner: Arc<dyn Bdev>,
        opts: ReplicaOptions,
        partners: Vec<Partner>,
    ) -> Result<(Arc<ReplicatedBdev>, ReplicaHandle), BdevError> {
        let info = inner.info();
        let bs = info.block_size;
        if !(512..=65536).contains(&bs) || !bs.is_power_of_two() {
            return Err(BdevError::Other(format!(
                "replicated device {}: block size {bs} not supported (512..=65536, power of two)",
                info.name
            )));
        }
        if info.num_blocks == 0 {
            return Err(BdevError::Other(format!(
                "replicated device {}: empty device",
                info.name
            )));
        }
        if let Some(p) = partners.iter().find(|p| p.node_id == opts.node_id) {
            return Err(BdevError::Other(format!(
                "replicated device {}: partner {} has this node's id {}",
                info.name, p.name, opts.node_id.0
            )));
        }
        let store = MetaStore::new(opts.meta_path.clone());
        let meta = store.load().map_err(|e| {
            BdevError::Other(format!(
                "replicated device {}: replica metadata: {e}",
                info.name
            ))
        })?;
        let mut opts = opts;
        let (journal, restored) = open_journal(&info.name, &info, &mut opts);
        let local = inner.channel()?;
        // Unbounded channel, bounded load: every submission is a SCSI task of a connection
        // (at most its task slots, with write buffers inside the reactor's memory budget),
        // and the engine ends writes beyond its held-writes bound NOT READY at once.
        let (submit_tx, submit_rx) = crossbeam_channel::unbounded();
        let (mail_tx, mail_rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            submit: submit_tx,
            mail: mail_tx,
            bell: doorbell::Doorbell::new().map_err(BdevError::Io)?,
        });
        let mut worker = thread::Worker::new(
            info.clone(),
            opts,
            meta,
            store,
            journal,
            restored,
            local,
            partners,
            shared.clone(),
            submit_rx,
            mail_rx,
        );
        let handle = std::thread::Builder::new()
            .name(format!("replica-{}", info.name))
            .spawn(move || worker.run())
            .map_err(BdevError::Io)?;
        let dev = Arc::new(ReplicatedBdev {
            inner,
            shared: shared.clone(),
            next_channel: AtomicU64::new(1),
            thread: Mutex::new(Some(handle)),
        });
        Ok((dev, ReplicaHandle { shared }))
    }

    /// The local copy underneath.
    pub fn inner(&self) -> &Arc<dyn Bdev> {
        &self.inner
    }

    /// Stops the replication thread (host I/O still queued ends NOT READY).
    pub fn stop(&self) {
        let _ = self.shared.mail.send(Mail::Stop);
        self.shared.bell.ring();
        if let Some(h) = self.thread.lock().take() {
            let _ = h.join();
        }
    }
}

impl Drop for ReplicatedBdev {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Bdev for ReplicatedBdev {
    fn info(&self) -> DeviceInfo {
        self.inner.info()
    }

    fn channel(&self) -> Result<Box<dyn BdevChannel>, BdevError> {
        let id = self.next_channel.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = crossbeam_channel::unbounded();
        let wake = Arc::new(doorbell::CompletionSignal::new().map_err(BdevError::Io)?);
        self.shared
            .mail
            .send(Mail::NewChannel {
                id,
                completions: tx,
                wake: wake.clone(),
            })
            .map_err(|_| BdevError::NotReady)?;
        self.shared.bell.ring();
        Ok(Box::new(ReplicaChannel {
            id,
            shared: self.shared.clone(),
            completions: rx,
            wake,
            in_flight: 0,
            refused: Vec::new(),
        }))
    }

    /// Grows the local copy, then the engine (`Engine::grow`: only while every member is
    /// synchronized and no resync runs). The extend of an HA device calls this on every node
    /// before any node's LU reports the new size, so no host command reaches the new blocks
    /// while some engine still has the old geometry. Growing to the current size again is a
    /// no-op (the second phase of the extend calls it once more). A refused engine grow
    /// leaves the local copy larger, which nothing uses until a later extend succeeds.
    fn resize(&self, new_num_blocks: u64) -> Result<(), BdevError> {
        self.inner.resize(new_num_blocks)?;
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.shared
            .mail
            .send(Mail::Grow {
                num_blocks: new_num_blocks,
                reply: tx,
            })
            .map_err(|_| BdevError::NotReady)?;
        self.shared.bell.ring();
        rx.recv_timeout(EXCHANGE_TIMEOUT)
            .map_err(|_| BdevError::Other("the replication thread did not answer in time".into()))?
            .map_err(BdevError::Other)
    }

    fn flush_blocking(&self) -> Result<(), BdevError> {
        self.inner.flush_blocking()
    }

    fn set_cache_mode(&self, mode: CacheMode) -> Result<(), BdevError> {
        self.inner.set_cache_mode(mode)
    }

    /// COMPARE AND WRITE goes to the engine as one command: the sequencer compares and
    /// writes under its cluster-wide range lock, so it is atomic against writes through
    /// every node (a compare on this node's copy alone would not be).
    fn atomic_compare_and_write(&self) -> bool {
        true
    }

    /// A LOGICAL UNIT RESET or CLEAR TASK SET reaches every synchronized partner before it
    /// completes ([`BdevOp::TaskManagement`]).
    fn cluster_task_management(&self) -> bool {
        true
    }

    /// Persistent reservation changes are ordered by the sequencer and applied on every node
    /// before they complete ([`BdevOp::ReservationChange`]).
    fn cluster_reservations(&self) -> bool {
        true
    }
}

/// A reactor's handle on a replicated device.
struct ReplicaChannel {
    id: u64,
    shared: Arc<Shared>,
    completions: Receiver<Completion>,
    wake: Arc<doorbell::CompletionSignal>,
    in_flight: usize,
    /// Submissions refused after the thread stopped, answered by the next `poll`.
    refused: Vec<Completion>,
}

impl Drop for ReplicaChannel {
    fn drop(&mut self) {
        let _ = self.shared.mail.send(Mail::DropChannel { id: self.id });
        self.shared.bell.ring();
    }
}

impl BdevChannel for ReplicaChannel {
    fn submit(&mut self, tag: u64, op: BdevOp) {
        self.in_flight += 1;
        if let Err(e) = self.shared.submit.send(Submit {
            chan: self.id,
            tag,
            op,
        }) {
            // The replication thread is gone: NOT READY, answered here.
            let s = e.into_inner();
            self.refused.push(Completion {
                tag: s.tag,
                result: Err(BdevError::NotReady),
                buf: s.op.into_buf(),
            });
            self.wake.signal();
            return;
        }
        self.shared.bell.ring();
    }

    fn poll(&mut self, out: &mut Vec<Completion>) -> usize {
        self.wake.take();
        let mut n = self.refused.len();
        out.append(&mut self.refused);
        while let Ok(c) = self.completions.try_recv() {
            out.push(c);
            n += 1;
        }
        self.in_flight = self.in_flight.saturating_sub(n);
        n
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn wake_fd(&self) -> Option<RawFd> {
        Some(self.wake.fd())
    }

    fn alloc_buf(&mut self, len: usize) -> AlignedBuf {
        AlignedBuf::new(len, tandem_bdev::BUF_ALIGN)
    }

    fn free_buf(&mut self, _buf: AlignedBuf) {}
}
