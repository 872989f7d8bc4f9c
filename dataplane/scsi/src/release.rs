//! Release signal of a logical unit: how a transport that parked a deferred command
//! ([`crate::Step::Defer`]) learns that what it waited on is gone, without polling on a
//! timer.
//!
//! Every release of something a command can be deferred on (an in-flight write range, a
//! pending persistent-reservation commit) bumps a generation counter. A transport reads the
//! generation *before* it executes a command; if the command is deferred it registers as a
//! waiter and compares the generation again ([`Releases::watch`]). The releaser bumps the
//! generation *before* it looks at the waiters. Both sides use sequentially consistent
//! atomics, so either the waiter sees the new generation (and retries at once) or the
//! releaser sees the waiter (and wakes it): a release is never missed.
//!
//! Waiters are small numbers (the data plane uses reactor ids) kept as bits of one word;
//! a release takes the whole word and hands it to the waker the transport installed, once,
//! with [`Releases::set_waker`]. Releases with no waiter (the common case: nothing parked)
//! cost one atomic add and one atomic load, no call and no allocation.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::OnceLock;

/// Wakes the waiters whose bits are set in its argument.
pub type ReleaseWaker = Box<dyn Fn(u64) + Send + Sync>;

#[derive(Default)]
pub struct Releases {
    generation: AtomicU64,
    /// Bit `w % 64` set: waiter `w` has a command parked on this LU.
    waiters: AtomicU64,
    waker: OnceLock<ReleaseWaker>,
}

impl std::fmt::Debug for Releases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Releases")
            .field("generation", &self.generation.load(SeqCst))
            .field("waiters", &self.waiters.load(SeqCst))
            .finish()
    }
}

impl Releases {
    /// The current generation; read it before executing a command that may be deferred.
    pub fn generation(&self) -> u64 {
        self.generation.load(SeqCst)
    }

    /// Installs the waker (first call wins; later ones are ignored and return false).
    pub fn set_waker(&self, waker: ReleaseWaker) -> bool {
        self.waker.set(waker).is_ok()
    }

    pub fn has_waker(&self) -> bool {
        self.waker.get().is_some()
    }

    /// Registers `waiter` for the next release and tells whether the command deferred at
    /// generation `seen` must still wait (true) or something was released since (false:
    /// retry now). Call it again each time the waiter finds its command still parked: a
    /// release clears every registration when it wakes the waiters.
    pub fn watch(&self, waiter: usize, seen: u64) -> bool {
        let bit = 1u64 << (waiter % 64);
        if self.waiters.load(SeqCst) & bit == 0 {
            self.waiters.fetch_or(bit, SeqCst);
        }
        self.generation.load(SeqCst) == seen
    }

    /// Something a command may wait on was released: wake whoever waits.
    pub(crate) fn released(&self) {
        self.generation.fetch_add(1, SeqCst);
        if self.waiters.load(SeqCst) == 0 {
            return;
        }
        let bits = self.waiters.swap(0, SeqCst);
        if bits != 0 {
            if let Some(wake) = self.waker.get() {
                wake(bits);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    fn recording() -> (Releases, Arc<AtomicU64>) {
        let r = Releases::default();
        let woken = Arc::new(AtomicU64::new(0));
        let w = Arc::clone(&woken);
        assert!(r.set_waker(Box::new(move |bits| {
            w.fetch_or(bits, SeqCst);
        })));
        (r, woken)
    }

    #[test]
    fn a_release_wakes_the_registered_waiters_once() {
        let (r, woken) = recording();
        let seen = r.generation();
        assert!(r.watch(3, seen), "nothing released yet: keep waiting");
        assert!(r.watch(5, seen));
        r.released();
        assert_eq!(woken.swap(0, SeqCst), (1 << 3) | (1 << 5));
        assert!(!r.watch(3, seen), "the generation moved: retry");
        // The registration was consumed by the wake; a new one is needed for the next.
        r.released();
        assert_eq!(
            woken.load(SeqCst),
            1 << 3,
            "re-registered by the watch above"
        );
    }

    #[test]
    fn a_release_before_the_watch_is_seen_by_the_watch() {
        let (r, woken) = recording();
        let seen = r.generation();
        r.released();
        assert_eq!(woken.load(SeqCst), 0, "nobody waited");
        assert!(!r.watch(1, seen), "released after `seen`: retry at once");
    }

    #[test]
    fn releases_without_waiters_call_no_waker() {
        let (r, woken) = recording();
        for _ in 0..1000 {
            r.released();
        }
        assert_eq!(woken.load(SeqCst), 0);
        assert_eq!(r.generation(), 1000);
        assert!(!r.set_waker(Box::new(|_| {})), "the first waker stays");
    }
}
