//! How handles wake the replication thread: an eventfd rung only while the thread sleeps.
//!
//! A reactor submits a command, the control link sends mail. Writing the eventfd on every
//! submission costs a syscall per I/O on the reactor, and the thread used to read it back on
//! every loop; while the thread is awake (working or spinning) it sees the queues anyway.
//! So the thread says when it is about to sleep, and only then does a submitter write.

use std::os::fd::RawFd;
use std::sync::atomic::{fence, AtomicBool, Ordering};

use tandem_ffi::EventFd;

/// The replication thread's wake-up: [`Doorbell::ring`] after queuing work;
/// the thread calls [`Doorbell::prepare_sleep`], looks at its queues once more, and then
/// sleeps on [`Doorbell::fd`] or calls [`Doorbell::awake`].
///
/// No wake-up is lost (a Dekker pair with sequentially consistent fences): the submitter
/// queues, then reads `asleep`; the thread writes `asleep`, then reads the queues. At least
/// one of them sees the other's write, so either the thread finds the work before sleeping
/// or the submitter writes the eventfd.
pub(crate) struct Doorbell {
    efd: EventFd,
    asleep: AtomicBool,
}

impl Doorbell {
    pub(crate) fn new() -> std::io::Result<Doorbell> {
        Ok(Doorbell {
            efd: EventFd::new()?,
            asleep: AtomicBool::new(false),
        })
    }

    /// Called after work was queued for the thread: wakes it if it sleeps (or is about to).
    pub(crate) fn ring(&self) {
        fence(Ordering::SeqCst);
        if self.asleep.load(Ordering::SeqCst) {
            let _ = self.efd.notify();
        }
    }

    /// The thread is about to sleep: from now on every `ring` writes the eventfd. The
    /// caller must look at its queues after this and before it sleeps.
    pub(crate) fn prepare_sleep(&self) {
        self.asleep.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// The thread is running again (after its sleep, or instead of it): rings stop writing,
    /// and the eventfd is cleared for the next sleep. A ring that wrote just before this
    /// store may leave the eventfd readable: the next sleep then returns at once (one
    /// extra loop, never a lost wake-up).
    pub(crate) fn awake(&self) {
        self.asleep.store(false, Ordering::SeqCst);
        self.efd.drain();
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.efd.as_raw_fd()
    }
}

/// How the replication thread tells a reactor's channel that completions wait: an eventfd
/// written once per batch the reactor has not yet picked up, read only when it was written.
///
/// A reactor polls its channels on every loop, also while it spins; reading the eventfd
/// each time was a syscall per poll, and writing it for every batch one more per batch. The
/// flag says whether a write is pending: the thread queues completions, then sets the flag
/// and writes only if it was clear; the reactor drains, clears the flag, then reads the
/// queue. Either the reactor's queue read sees the completions, or the flag was set after
/// its clear and the eventfd is readable again.
pub(crate) struct CompletionSignal {
    efd: EventFd,
    signalled: AtomicBool,
}

impl CompletionSignal {
    pub(crate) fn new() -> std::io::Result<CompletionSignal> {
        Ok(CompletionSignal {
            efd: EventFd::new()?,
            signalled: AtomicBool::new(false),
        })
    }

    /// Thread side, after queuing completions.
    pub(crate) fn signal(&self) {
        if !self.signalled.swap(true, Ordering::SeqCst) {
            let _ = self.efd.notify();
        }
    }

    /// Reactor side, before reading the completion queue. Drain first, clear after: a
    /// `signal` before the clear is read by it (the swap acquires what was queued before
    /// that signal), one after it sees the flag clear and writes the eventfd again. Not
    /// signalled: no syscall (a signal racing this load leaves the eventfd readable).
    pub(crate) fn take(&self) {
        if self.signalled.load(Ordering::SeqCst) {
            self.efd.drain();
            self.signalled.swap(false, Ordering::SeqCst);
        }
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.efd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_write_only_while_the_thread_sleeps() {
        let bell = Doorbell::new().unwrap();
        bell.ring();
        assert!(!tandem_ffi::wait_readable(bell.fd(), 0).unwrap());
        bell.prepare_sleep();
        bell.ring();
        assert!(tandem_ffi::wait_readable(bell.fd(), 0).unwrap());
        bell.awake();
        assert!(!tandem_ffi::wait_readable(bell.fd(), 0).unwrap());
        bell.ring();
        assert!(!tandem_ffi::wait_readable(bell.fd(), 0).unwrap());
    }

    #[test]
    fn a_signal_is_written_once_until_taken() {
        let sig = CompletionSignal::new().unwrap();
        sig.take();
        assert!(!tandem_ffi::wait_readable(sig.fd(), 0).unwrap());
        sig.signal();
        sig.signal();
        assert!(tandem_ffi::wait_readable(sig.fd(), 0).unwrap());
        sig.take();
        assert!(!tandem_ffi::wait_readable(sig.fd(), 0).unwrap());
        sig.signal();
        assert!(tandem_ffi::wait_readable(sig.fd(), 0).unwrap());
    }
}
