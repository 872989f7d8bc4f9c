//! One io_uring shared by everything a reactor drives (device channels, sockets), so one
//! `io_uring_enter` per reactor pass submits all of their work and completions are reaped
//! together from shared memory.
//!
//! Each user is a [`RingOwner`] with its own 32-bit id; the upper half of every `user_data`
//! names the owner, the lower half is the owner's own tag. Reaping moves completions into
//! per-owner queues; an owner takes its own with [`RingOwner::take`]. Completions of an owner
//! that is gone are dropped (their buffers were kept alive by the [`Uring`] until then).
//!
//! The ring sits behind a mutex only because device channels must be `Send`; all users run
//! on the reactor thread, so it is never contended.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::{EventFd, Uring, UringCompletion};

struct Hub {
    ring: Uring,
    queues: HashMap<u32, VecDeque<UringCompletion>>,
    next_owner: u32,
    scratch: Vec<UringCompletion>,
    /// Completions sorted into owners' queues and not yet taken.
    queued: usize,
    /// Whether the eventfd may have been signalled since it was last cleared: a completion
    /// was reaped (every posted completion signals it) or `notify` was called. If not, and
    /// the completion ring is empty, clearing it would be a wasted `read`.
    maybe_signalled: bool,
}

impl Hub {
    /// Moves every ready completion into its owner's queue (no system call).
    fn sort_completions(&mut self) {
        let mut scratch = std::mem::take(&mut self.scratch);
        if self.ring.reap(&mut scratch) > 0 {
            self.maybe_signalled = true;
        }
        for c in scratch.drain(..) {
            if let Some(q) = self.queues.get_mut(&((c.user_data >> 32) as u32)) {
                q.push_back(c);
                self.queued += 1;
            }
            // Else the owner is gone: dropping the completion frees its buffer, now that the
            // kernel is done with it.
        }
        self.scratch = scratch;
    }
}

/// A reactor's ring: cheap to clone (a handle).
#[derive(Clone)]
pub struct SharedRing {
    hub: Arc<Mutex<Hub>>,
    efd: Arc<EventFd>,
}

impl std::fmt::Debug for SharedRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedRing").finish_non_exhaustive()
    }
}

impl SharedRing {
    /// A ring with `entries` submission slots whose eventfd becomes readable on every
    /// completion.
    pub fn new(entries: u32) -> io::Result<SharedRing> {
        let mut ring = Uring::new(entries)?;
        let efd = EventFd::new()?;
        ring.register_eventfd(&efd)?;
        Ok(SharedRing {
            hub: Arc::new(Mutex::new(Hub {
                ring,
                queues: HashMap::new(),
                next_owner: 1,
                queued: 0,
                maybe_signalled: false,
                scratch: Vec::with_capacity(entries as usize * 2),
            })),
            efd: Arc::new(efd),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Hub> {
        // A panic while holding the lock leaves the ring consistent (every method keeps the
        // in-flight table in step with the SQEs), so a poisoned lock is still usable.
        self.hub.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new user of this ring.
    pub fn owner(&self) -> RingOwner {
        let mut hub = self.lock();
        let mut id = hub.next_owner;
        while id == 0 || hub.queues.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        hub.next_owner = id.wrapping_add(1);
        hub.queues.insert(id, VecDeque::new());
        RingOwner {
            ring: self.clone(),
            id,
        }
    }

    /// Hands every queued submission of every owner to the kernel: one `io_uring_enter`, or
    /// none when nothing is queued. Completions stay in the completion ring until an owner
    /// takes its own.
    pub fn enter(&self) -> io::Result<usize> {
        self.lock().ring.flush_submissions()
    }

    /// Whether a submission is queued and not yet handed to the kernel.
    pub fn needs_enter(&self) -> bool {
        self.lock().ring.needs_enter()
    }

    /// Readable whenever a completion is posted (or [`SharedRing::notify`] was called).
    pub fn wake_fd(&self) -> RawFd {
        self.efd.as_raw_fd()
    }

    /// Makes [`SharedRing::wake_fd`] readable (work finished outside the ring).
    pub fn notify(&self) {
        self.lock().maybe_signalled = true;
        let _ = self.efd.notify();
    }

    /// Readies the ring for the reactor's sleep. True if completions are already waiting (in
    /// the completion ring, or sorted into an owner's queue by another owner's `take` after
    /// that owner looked): the reactor must poll instead of sleeping. Otherwise clears the
    /// wake fd (only if it may be readable: a `read` saved per sleep when nothing completed),
    /// so a completion posted from now on makes it readable and none is slept through.
    pub fn prepare_sleep(&self) -> bool {
        let mut hub = self.lock();
        // Sort before looking: a completion whose owner is gone (the cancelled receive of a
        // closed connection) is dropped here. Left in the completion ring it would say
        // "work waiting" on every pass, and an idle reactor with no other owner to reap it
        // would never sleep again (it spun at half a core after its last session closed).
        hub.sort_completions();
        if hub.queued > 0 {
            return true;
        }
        if hub.maybe_signalled {
            hub.maybe_signalled = false;
            self.efd.drain();
            // A completion posted between the sort above and the drain is seen here.
            hub.sort_completions();
            return hub.queued > 0;
        }
        false
    }

    /// `io_uring_enter` calls made so far.
    pub fn enters(&self) -> u64 {
        self.lock().ring.enters()
    }

    /// Operations in the kernel's hands (all owners).
    pub fn in_flight(&self) -> usize {
        self.lock().ring.in_flight()
    }
}

/// One user of a [`SharedRing`]. Dropping it forgets its queue; operations it still has in
/// flight keep their buffers inside the ring until the kernel completes them.
pub struct RingOwner {
    ring: SharedRing,
    id: u32,
}

impl std::fmt::Debug for RingOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingOwner").field("id", &self.id).finish()
    }
}

impl RingOwner {
    /// The full `user_data` for this owner's tag `low`.
    pub fn user_data(&self, low: u32) -> u64 {
        (u64::from(self.id) << 32) | u64::from(low)
    }

    /// The owner's tag in a completion's `user_data`.
    pub fn low(user_data: u64) -> u32 {
        user_data as u32
    }

    /// Runs `f` on the ring to queue submissions (build `user_data` with
    /// [`RingOwner::user_data`]). Nothing reaches the kernel before the next
    /// [`SharedRing::enter`].
    pub fn submit<R>(&self, f: impl FnOnce(&mut Uring) -> R) -> R {
        f(&mut self.ring.lock().ring)
    }

    /// Appends this owner's completions to `out` (reaping the completion ring first, which
    /// needs no system call). Returns how many.
    pub fn take(&self, out: &mut Vec<UringCompletion>) -> usize {
        let mut hub = self.ring.lock();
        hub.sort_completions();
        let Some(q) = hub.queues.get_mut(&self.id) else {
            return 0;
        };
        let n = q.len();
        out.extend(q.drain(..));
        hub.queued -= n;
        n
    }

    /// The ring this owner uses.
    pub fn ring(&self) -> &SharedRing {
        &self.ring
    }
}

impl Drop for RingOwner {
    fn drop(&mut self) {
        let mut hub = self.ring.lock();
        if let Some(q) = hub.queues.remove(&self.id) {
            hub.queued -= q.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AlignedBuf;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};

    fn take_until(o: &RingOwner, n: usize) -> Vec<UringCompletion> {
        let mut out = Vec::new();
        let t = Instant::now();
        while out.len() < n && t.elapsed() < Duration::from_secs(5) {
            o.ring().enter().unwrap();
            o.take(&mut out);
            std::thread::sleep(Duration::from_millis(1));
        }
        out
    }

    #[test]
    fn owners_get_only_their_completions_from_one_enter() {
        let ring = SharedRing::new(8).unwrap();
        let (a, b) = (ring.owner(), ring.owner());
        let f = tempfile::tempfile().unwrap();
        let before = ring.enters();
        a.submit(|u| u.submit_fsync(f.as_raw_fd(), false, a.user_data(7)))
            .unwrap();
        b.submit(|u| u.submit_fsync(f.as_raw_fd(), false, b.user_data(7)))
            .unwrap();
        assert!(ring.needs_enter());
        ring.enter().unwrap();
        assert_eq!(ring.enters() - before, 1, "both submitted by one enter");
        assert!(!ring.needs_enter());
        ring.enter().unwrap();
        assert_eq!(ring.enters() - before, 1, "nothing queued: no system call");
        let ca = take_until(&a, 1);
        let cb = take_until(&b, 1);
        assert_eq!(ca.len(), 1);
        assert_eq!(cb.len(), 1);
        assert_eq!(ca[0].user_data, a.user_data(7));
        assert_eq!(cb[0].user_data, b.user_data(7));
    }

    #[test]
    fn socket_send_recv_and_cancel_on_a_dropped_owner() {
        let ring = SharedRing::new(8).unwrap();
        let o = ring.owner();
        let (mut peer, sock) = UnixStream::pair().unwrap();
        let mut tx = AlignedBuf::new(4096, 4096);
        tx.set_len(5);
        tx[..5].copy_from_slice(b"hello");
        o.submit(|u| u.submit_send_at(sock.as_raw_fd(), tx, 0, 5, o.user_data(1)))
            .unwrap();
        o.submit(|u| {
            u.submit_recv(
                sock.as_raw_fd(),
                AlignedBuf::new(4096, 4096),
                o.user_data(2),
            )
        })
        .unwrap();
        let sent = take_until(&o, 1);
        assert_eq!(sent[0].result, 5);
        let mut got = [0u8; 5];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        peer.write_all(b"back").unwrap();
        let c = take_until(&o, 1);
        assert_eq!(c[0].result, 4);
        assert_eq!(&c[0].buf.as_ref().unwrap()[..4], b"back");
        // A receive left in flight, its owner dropped after asking for a cancel: the buffer
        // stays with the ring until the kernel answers, then is freed.
        o.submit(|u| {
            u.submit_recv(
                sock.as_raw_fd(),
                AlignedBuf::new(4096, 4096),
                o.user_data(3),
            )
        })
        .unwrap();
        ring.enter().unwrap();
        o.submit(|u| u.submit_cancel(o.user_data(3), o.user_data(4)))
            .unwrap();
        drop(o);
        ring.enter().unwrap();
        let t = Instant::now();
        while ring.in_flight() > 0 && t.elapsed() < Duration::from_secs(5) {
            let other = ring.owner();
            other.take(&mut Vec::new());
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(ring.in_flight(), 0, "the cancelled receive completed");
    }

    #[test]
    fn a_completion_whose_owner_is_gone_does_not_keep_the_reactor_awake() {
        let ring = SharedRing::new(8).unwrap();
        let o = ring.owner();
        let (mut peer, sock) = UnixStream::pair().unwrap();
        o.submit(|u| {
            u.submit_recv(
                sock.as_raw_fd(),
                AlignedBuf::new(4096, 4096),
                o.user_data(1),
            )
        })
        .unwrap();
        ring.enter().unwrap();
        drop(o);
        // The receive completes after its owner is gone, and nobody else takes completions.
        peer.write_all(b"late").unwrap();
        let t = Instant::now();
        while ring.in_flight() > 0 && t.elapsed() < Duration::from_secs(5) {
            ring.prepare_sleep();
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(ring.in_flight(), 0, "the orphaned receive was reaped");
        assert!(
            !ring.prepare_sleep(),
            "nothing is left for anyone: the reactor may sleep"
        );
    }
}
