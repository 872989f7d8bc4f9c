//! What a connection may use of its reactor while it runs: block-device channels, buffers,
//! the clock and node-wide shared state.

use crate::session::SessionTable;
use crate::target::{Device, Registry};
use crossbeam_channel::Sender;
use nix::sys::eventfd::EventFd;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tandem_bdev::{AlignedBuf, BdevChannel, BdevOp};

/// Submission slots of a reactor's io_uring (completion ring: twice that). More
/// submissions than this wait in the ring's own overflow queue.
const RING_ENTRIES: u32 = 512;

/// Alignment of every data buffer (O_DIRECT on 4K-sector devices).
pub const BUF_ALIGN: usize = 4096;

/// Messages a reactor accepts from other threads.
pub enum ReactorMsg {
    /// A new kernel TCP connection accepted by a listener (non-blocking, no Nagle); the
    /// reactor drives it with syscalls or through its io_uring (`SocketIo`).
    NewConnection(std::net::TcpStream),
    /// Close a connection (session reinstatement, device removal).
    CloseConnection {
        conn_id: u32,
    },
    /// Close every connection whose session uses this target.
    CloseTarget {
        iqn: String,
    },
    /// A device was removed: drop this reactor's channel to it.
    ForgetDevice {
        device_id: u64,
    },
    Shutdown,
}

pub struct ReactorHandle {
    pub tx: Sender<ReactorMsg>,
    pub wake: Arc<EventFd>,
    pub connections: AtomicUsize,
    pub stats: Arc<crate::stats::ReactorStats>,
}

/// How long a sender waits on a full inbox before it gives up and escalates.
const INBOX_FULL_WAIT: Duration = Duration::from_secs(5);

/// A message that could not be delivered: the reactor's inbox stayed full (or the reactor
/// is gone). The caller gets it back and must act on it (fail the login, close the socket).
#[derive(Debug)]
pub struct NotDelivered;

impl ReactorHandle {
    /// Delivers a message, waiting (bounded) while the inbox is full: messages are never
    /// dropped silently. A reactor drains at most `INBOX_PER_POLL` messages per loop and
    /// never blocks itself, so a full inbox empties quickly unless the reactor is stuck.
    #[must_use = "an undelivered message must be handled (the caller escalates)"]
    pub fn send(&self, msg: ReactorMsg) -> Result<(), NotDelivered> {
        let r = match self.tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(crossbeam_channel::TrySendError::Full(msg)) => {
                // Wake it first so it drains while we wait.
                let _ = self.wake.write(1);
                self.tx
                    .send_timeout(msg, INBOX_FULL_WAIT)
                    .map_err(|_| NotDelivered)
            }
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => Err(NotDelivered),
        };
        // A full eventfd counter only means the reactor is already due to wake.
        let _ = self.wake.write(1);
        r
    }
}

/// Connection timers (RFC 7143 leaves them to the target).
#[derive(Clone, Copy, Debug)]
pub struct ConnTimers {
    /// Ping an initiator with NOP-In after this much silence (None: never).
    pub nop_interval: Option<Duration>,
    /// An unanswered ping this old means the initiator is gone: the connection is closed.
    pub nop_timeout: Duration,
    /// A connection must finish login within this time. Short: a connection that has not
    /// logged in holds a slot of the connection limit for nothing.
    pub login_timeout: Duration,
    /// Connections from one source address that may be in the login phase at once; more are
    /// closed at accept, so a flood of idle connections cannot lock others out.
    pub prelogin_per_addr: usize,
    /// Memory budget per reactor for write buffers and unsent read data (see
    /// `conn::budget`).
    pub mem_budget_bytes: u64,
}

impl Default for ConnTimers {
    fn default() -> Self {
        ConnTimers {
            nop_interval: Some(Duration::from_secs(5)),
            nop_timeout: Duration::from_secs(15),
            login_timeout: Duration::from_secs(10),
            prelogin_per_addr: 16,
            mem_budget_bytes: crate::conn::DEFAULT_BUDGET_BYTES,
        }
    }
}

/// Node-wide state shared by every reactor.
pub struct Shared {
    pub timers: ConnTimers,
    pub registry: Arc<Registry>,
    pub sessions: SessionTable,
    pub prelogin: Arc<crate::session::PreloginTable>,
    pub auth_failures: crate::session::AuthThrottle,
    pub reactors: OnceLock<Vec<ReactorHandle>>,
    pub next_nexus_id: AtomicU64,
}

impl Shared {
    pub fn new(registry: Arc<Registry>, timers: ConnTimers) -> Shared {
        Shared {
            timers,
            registry,
            sessions: SessionTable::default(),
            prelogin: Arc::default(),
            auth_failures: Default::default(),
            reactors: OnceLock::new(),
            next_nexus_id: AtomicU64::new(1),
        }
    }

    pub fn reactor(&self, id: usize) -> Option<&ReactorHandle> {
        self.reactors.get().and_then(|r| r.get(id))
    }

    pub fn new_nexus_id(&self) -> u64 {
        self.next_nexus_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// The waker a logical unit calls when it releases something a parked command waits on:
/// it wakes the reactors whose bits are set (bit `id % 64`; with more than 64 reactors a
/// bit wakes every reactor sharing it, which only costs them a poll). It holds the shared
/// state weakly: devices live inside it, and the waker must not keep it alive.
pub fn release_waker(shared: &Arc<Shared>) -> tandem_scsi::ReleaseWaker {
    let shared = Arc::downgrade(shared);
    Box::new(move |bits| {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let Some(reactors) = shared.reactors.get() else {
            return;
        };
        for (i, r) in reactors.iter().enumerate() {
            if bits & (1u64 << (i % 64)) != 0 {
                // A full eventfd counter only means the reactor is already due to wake.
                let _ = r.wake.write(1);
            }
        }
    })
}

/// A completion tag names the connection and its task slot.
pub fn make_tag(conn_id: u32, slot: usize) -> u64 {
    ((conn_id as u64) << 32) | slot as u64
}

pub fn split_tag(tag: u64) -> (u32, usize) {
    ((tag >> 32) as u32, (tag & 0xffff_ffff) as usize)
}

pub struct ReactorCtx {
    pub id: usize,
    pub now: Instant,
    pub shared: Arc<Shared>,
    channels: HashMap<u64, (Arc<Device>, Box<dyn BdevChannel>)>,
    /// The io_uring shared by this reactor's device channels and (with `socket_io = uring`)
    /// its connections: entered once per pass by `poll_channels` and before every sleep.
    ring: Option<tandem_ffi::SharedRing>,
    /// Readable when any channel has completions, so the reactor can sleep with disk I/O
    /// in flight and still wake for it.
    io_wake: Option<tandem_ffi::WakeSet>,
    /// Completions of persistent-reservation commits (see `pr_store`).
    persist: Option<crate::pr_store::PersistInbox>,
    /// Whether a commit completion wakes a sleeping reactor (else it polls meanwhile).
    persist_watched: bool,
    /// This reactor's memory budget for initiator data (write buffers, unsent reads).
    pub budget: crate::conn::MemBudget,
}

impl ReactorCtx {
    pub fn new(id: usize, shared: Arc<Shared>) -> ReactorCtx {
        let io_wake = tandem_ffi::WakeSet::new()
            .map_err(|e| tracing::warn!(reactor = id, error = %e, "no completion wake-up; polling while I/O is in flight"))
            .ok();
        let persist = crate::pr_store::PersistInbox::new()
            .map_err(|e| tracing::warn!(reactor = id, error = %e, "no reservation persister inbox; PR changes that must persist fail"))
            .ok();
        let persist_watched = match (&io_wake, &persist) {
            (Some(ws), Some(p)) => ws
                .add(p.wake_fd())
                .map_err(|e| tracing::warn!(reactor = id, error = %e, "reservation commits polled while in flight"))
                .is_ok(),
            _ => false,
        };
        let budget = crate::conn::MemBudget::new(shared.timers.mem_budget_bytes);
        let ring = tandem_ffi::SharedRing::new(RING_ENTRIES)
            .map_err(|e| tracing::warn!(reactor = id, error = %e, "no reactor io_uring; each device channel gets its own"))
            .ok();
        if let (Some(ws), Some(r)) = (&io_wake, &ring) {
            if let Err(e) = ws.add(r.wake_fd()) {
                tracing::warn!(reactor = id, error = %e, "cannot watch the reactor io_uring");
            }
        }
        ReactorCtx {
            ring,
            id,
            now: Instant::now(),
            budget,
            shared,
            channels: HashMap::new(),
            io_wake,
            persist,
            persist_watched,
        }
    }

    fn channel(&mut self, dev: &Arc<Device>) -> Option<&mut Box<dyn BdevChannel>> {
        match self.channels.entry(dev.id) {
            std::collections::hash_map::Entry::Occupied(e) => Some(&mut e.into_mut().1),
            std::collections::hash_map::Entry::Vacant(v) => match self
                .ring
                .as_ref()
                .map_or_else(|| dev.bdev.channel(), |r| dev.bdev.channel_on(r))
            {
                Ok(ch) => {
                    let watched = match (&self.io_wake, ch.wake_fd()) {
                        // The reactor ring's fd is watched already.
                        (Some(_), Some(fd))
                            if self.ring.as_ref().is_some_and(|r| r.wake_fd() == fd) =>
                        {
                            true
                        }
                        (Some(ws), Some(fd)) => ws.add(fd).is_ok(),
                        _ => false,
                    };
                    if !watched {
                        tracing::debug!(device = %dev.name, "channel without a wake-up fd: polled while busy");
                    }
                    Some(&mut v.insert((dev.clone(), ch)).1)
                }
                Err(e) => {
                    tracing::error!(device = %dev.name, error = %e, "cannot open an I/O channel");
                    None
                }
            },
        }
    }

    /// Submits one block-device operation; returns false if the device has no channel here
    /// (the caller fails the command).
    pub fn submit(&mut self, dev: &Arc<Device>, tag: u64, op: BdevOp) -> bool {
        match self.channel(dev) {
            Some(ch) => {
                ch.submit(tag, op);
                true
            }
            None => false,
        }
    }

    pub fn alloc_buf(&mut self, dev: Option<&Arc<Device>>, len: usize) -> AlignedBuf {
        if let Some(ch) = dev.and_then(|d| self.channel(d)) {
            let mut b = ch.alloc_buf(len);
            b.set_len(len);
            return b;
        }
        let mut b = AlignedBuf::new(len.max(1).next_multiple_of(BUF_ALIGN), BUF_ALIGN);
        b.set_len(len);
        b
    }

    pub fn free_buf(&mut self, dev: Option<&Arc<Device>>, buf: AlignedBuf) {
        if let Some(ch) = dev.and_then(|d| self.channel(d)) {
            ch.free_buf(buf);
        }
    }

    /// Hands a persistent-reservation commit to the persister thread; its completion comes
    /// back through `poll_channels` with `tag`. False if it cannot be queued.
    pub fn persist(
        &mut self,
        tag: u64,
        commit: tandem_scsi::PrCommit,
    ) -> (bool, tandem_scsi::Continuation) {
        let ok = self
            .persist
            .as_mut()
            .is_some_and(|p| p.submit(tag, commit.store, commit.blob, commit.signal));
        (ok, commit.cont)
    }

    /// Reaps completions of every channel (and of reservation commits) into `out` as (tag,
    /// completion).
    ///
    /// First hands everything queued on the reactor ring (device I/O and socket I/O of every
    /// connection, since the last pass) to the kernel: the pass's one `io_uring_enter`.
    pub fn poll_channels(&mut self, out: &mut Vec<tandem_bdev::Completion>) -> usize {
        self.enter_ring();
        let mut n = self.persist.as_mut().map_or(0, |p| p.poll(out));
        for (_, ch) in self.channels.values_mut() {
            n += ch.poll(out);
        }
        n
    }

    /// Submits what is queued on the reactor ring (no system call if nothing is). Called
    /// once per pass, and before sleeping so no queued work waits for a wake-up that only
    /// its own completion could bring.
    pub fn enter_ring(&self) {
        if let Some(r) = &self.ring {
            if let Err(e) = r.enter() {
                tracing::warn!(reactor = self.id, error = %e, "io_uring submit failed");
            }
        }
    }

    /// Before sleeping: submits what is queued, clears the ring's wake fd and tells whether
    /// completions already wait (then the reactor must poll again instead of sleeping).
    pub fn ring_ready_to_sleep(&self) -> bool {
        self.enter_ring();
        match &self.ring {
            Some(r) => !r.prepare_sleep(),
            None => true,
        }
    }

    /// The reactor ring (for connections doing their socket I/O through it).
    pub fn ring(&self) -> Option<&tandem_ffi::SharedRing> {
        self.ring.as_ref()
    }

    /// `io_uring_enter` calls made on the reactor ring so far.
    pub fn ring_enters(&self) -> u64 {
        self.ring.as_ref().map_or(0, |r| r.enters())
    }

    /// The descriptor that becomes readable when a channel has completions.
    pub fn io_wake_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.io_wake.as_ref().map(|w| w.as_fd())
    }

    /// True while some channel has work in flight that cannot wake a sleeping reactor
    /// (no wake-up fd, e.g. RAM disks whose completions are ready at the next poll).
    /// Registers this reactor for the next release on `dev`'s logical unit (installing the
    /// waker the first time) and tells whether a command deferred at generation `seen` must
    /// keep waiting (true) or may retry now (false).
    pub fn watch_release(&mut self, dev: &Arc<Device>, seen: u64) -> bool {
        let releases = dev.lu.releases();
        if !releases.has_waker() {
            releases.set_waker(release_waker(&self.shared));
        }
        releases.watch(self.id, seen)
    }

    pub fn must_keep_polling(&self) -> bool {
        let commits = self.persist.as_ref().map_or(0, |p| p.in_flight());
        (commits > 0 && !self.persist_watched)
            || self.channels.values().any(|(_, c)| {
                c.in_flight() > 0 && (c.wake_fd().is_none() || self.io_wake.is_none())
            })
    }

    /// Drops the channel of a removed device (closing its file and ring). Dropping a
    /// channel finishes the work it still has in flight first.
    pub fn forget_device(&mut self, dev_id: u64) {
        self.channels.remove(&dev_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::eventfd::EfdFlags;

    fn handle(cap: usize) -> (ReactorHandle, crossbeam_channel::Receiver<ReactorMsg>) {
        let (tx, rx) = crossbeam_channel::bounded(cap);
        let wake = Arc::new(EventFd::from_flags(EfdFlags::EFD_NONBLOCK).expect("eventfd"));
        (
            ReactorHandle {
                tx,
                wake,
                connections: AtomicUsize::new(0),
                stats: Default::default(),
            },
            rx,
        )
    }

    #[test]
    fn send_on_a_full_inbox_waits_for_room_instead_of_dropping() {
        let (h, rx) = handle(1);
        h.send(ReactorMsg::Shutdown).expect("room for one");
        let drain = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            let mut got = 0;
            while rx.recv_timeout(Duration::from_millis(500)).is_ok() {
                got += 1;
            }
            got
        });
        h.send(ReactorMsg::CloseConnection { conn_id: 3 })
            .expect("delivered once the reactor drained its inbox");
        drop(h);
        assert_eq!(drain.join().unwrap(), 2, "both messages arrived");
    }

    #[test]
    fn release_waker_wakes_exactly_the_reactors_named_by_its_bits() {
        let registry = Arc::new(Registry::new(vec![]));
        let shared = Arc::new(Shared::new(registry, ConnTimers::default()));
        let handles: Vec<ReactorHandle> = (0..3).map(|_| handle(1).0).collect();
        let fds: Vec<Arc<EventFd>> = handles.iter().map(|h| Arc::clone(&h.wake)).collect();
        assert!(shared.reactors.set(handles).is_ok());
        let wake = release_waker(&shared);
        wake(0b101);
        assert!(fds[0].read().is_ok(), "reactor 0 woken");
        assert!(fds[1].read().is_err(), "reactor 1 not (nothing to read)");
        assert!(fds[2].read().is_ok(), "reactor 2 woken");
        // The waker holds the shared state weakly: once it is gone, waking does nothing.
        drop(shared);
        wake(0b111);
        assert!(fds[0].read().is_err());
    }

    #[test]
    fn send_to_a_gone_reactor_is_reported() {
        let (h, rx) = handle(1);
        drop(rx);
        assert!(h.send(ReactorMsg::Shutdown).is_err());
    }
}
