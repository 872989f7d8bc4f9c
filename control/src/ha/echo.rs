//! The heartbeat echo (two-node heartbeat strategy). Pure, so that the vote simulation
//! (`super::vote_sim`) runs the same rules as the control service.
//!
//! Every heartbeat names itself ([`HeartbeatId`]: the sending process's incarnation, a
//! random number drawn at its start, and its counter) and echoes the newest heartbeat the
//! sender has received from the partner. An authority that restarted or was paused waits
//! for an echo of a heartbeat it sent after that ([`echoes_after`]): a heartbeat that
//! carries such an echo was sent by a partner that had heard this node alive again. Any
//! heartbeat heard before (sent before a takeover, or read from the socket buffer on
//! resume) proves nothing about what the partner did meanwhile.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// One heartbeat: who sent it (the process incarnation) and when (its counter).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HeartbeatId {
    /// Random, drawn once per process start; never 0 for a process that sends (0: none).
    pub incarnation: u64,
    /// Strictly increasing within the incarnation.
    pub counter: u64,
}

/// Whether `echo` (carried by a partner's heartbeat) names a heartbeat this process sent
/// after `floor` (the last one it had sent when the wait began): same incarnation, a
/// later counter. An echo of another incarnation (an earlier process on this node) or of
/// an older heartbeat does not count.
pub fn echoes_after(echo: Option<HeartbeatId>, floor: HeartbeatId) -> bool {
    echo.is_some_and(|e| {
        e.incarnation != 0 && e.incarnation == floor.incarnation && e.counter > floor.counter
    })
}

/// Whether a heartbeat `id` replaces `newest` as the newest heard from that partner: a
/// later counter of the same incarnation, or any heartbeat of another incarnation (the
/// partner restarted; its counters need not continue the old ones' order).
pub fn is_newer(newest: Option<HeartbeatId>, id: HeartbeatId) -> bool {
    match newest {
        None => true,
        Some(n) => n.incarnation != id.incarnation || id.counter > n.counter,
    }
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// This process's heartbeats: the incarnation and the counter, shared by the sender
/// (`membership::start`) and the authority hosts (which read the last one sent when a
/// wait for the partner begins).
#[derive(Debug)]
pub struct HeartbeatSeq {
    incarnation: u64,
    /// The last counter handed out (0: none yet).
    last: AtomicU64,
}

impl Default for HeartbeatSeq {
    fn default() -> Self {
        HeartbeatSeq::new(rand::random::<u64>().max(1))
    }
}

impl HeartbeatSeq {
    pub fn new(incarnation: u64) -> HeartbeatSeq {
        HeartbeatSeq {
            incarnation: incarnation.max(1),
            last: AtomicU64::new(0),
        }
    }

    /// The next heartbeat: the wall clock in ns, raised by one when it does not advance
    /// (so the receivers' replay check, per link, also holds across restarts as long as
    /// the clock does not step back).
    pub fn next(&self) -> HeartbeatId {
        let now = unix_ns();
        let mut prev = self.last.load(Ordering::SeqCst);
        loop {
            let n = now.max(prev.saturating_add(1));
            match self
                .last
                .compare_exchange(prev, n, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => {
                    return HeartbeatId {
                        incarnation: self.incarnation,
                        counter: n,
                    }
                }
                Err(p) => prev = p,
            }
        }
    }

    /// The last heartbeat handed out (counter 0 if none). A heartbeat with a later counter
    /// was made after this call.
    pub fn last_sent(&self) -> HeartbeatId {
        HeartbeatId {
            incarnation: self.incarnation,
            counter: self.last.load(Ordering::SeqCst),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(incarnation: u64, counter: u64) -> HeartbeatId {
        HeartbeatId {
            incarnation,
            counter,
        }
    }

    #[test]
    fn only_an_echo_of_a_later_heartbeat_of_this_incarnation_counts() {
        let floor = id(7, 100);
        assert!(!echoes_after(None, floor));
        assert!(
            !echoes_after(Some(id(7, 100)), floor),
            "sent before the wait"
        );
        assert!(!echoes_after(Some(id(7, 99)), floor));
        assert!(!echoes_after(Some(id(6, 101)), floor), "an earlier process");
        assert!(
            !echoes_after(Some(id(0, 101)), id(0, 100)),
            "no incarnation"
        );
        assert!(echoes_after(Some(id(7, 101)), floor));
    }

    #[test]
    fn newest_by_counter_within_an_incarnation() {
        assert!(is_newer(None, id(1, 5)));
        assert!(is_newer(Some(id(1, 5)), id(1, 6)));
        assert!(!is_newer(Some(id(1, 5)), id(1, 5)));
        assert!(
            !is_newer(Some(id(1, 5)), id(1, 4)),
            "overtaken on another link"
        );
        assert!(is_newer(Some(id(1, 5)), id(2, 1)), "the partner restarted");
    }

    #[test]
    fn the_sequence_increases_and_last_sent_follows() {
        let s = HeartbeatSeq::new(3);
        assert_eq!(s.last_sent(), id(3, 0));
        let a = s.next();
        let b = s.next();
        assert_eq!(a.incarnation, 3);
        assert!(b.counter > a.counter);
        assert_eq!(s.last_sent(), b);
        assert!(echoes_after(Some(s.next()), b));
        assert_ne!(HeartbeatSeq::default().last_sent().incarnation, 0);
    }
}
