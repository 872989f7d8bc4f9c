//! Node-wide table of logged-in sessions, used to allocate TSIHs and to reinstate a session
//! when an initiator logs in again with the same ISID (RFC 7143 §6.3.5).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// Failed authentications per (initiator name, source address): a few are free, then each
/// further failure blocks that pair for a doubling time (capped), so CHAP secrets cannot be
/// guessed at network speed. Keyed by the pair, not the name alone, so a host cannot lock
/// out an initiator it merely impersonates from elsewhere.
#[derive(Default, Debug)]
pub struct AuthThrottle {
    inner: Mutex<HashMap<(String, IpAddr), AuthFailures>>,
}

#[derive(Debug, Clone, Copy)]
struct AuthFailures {
    count: u32,
    last: std::time::Instant,
    blocked_until: Option<std::time::Instant>,
}

/// Failures allowed before blocking starts.
pub const AUTH_FREE_FAILURES: u32 = 3;
/// Longest block after repeated failures.
pub const AUTH_BLOCK_MAX: std::time::Duration = std::time::Duration::from_secs(60);
/// A pair with no failure for this long starts afresh.
const AUTH_FORGET_AFTER: std::time::Duration = std::time::Duration::from_secs(600);
/// Pairs tracked at most (a flood of names cannot grow the table without bound).
const AUTH_TRACKED_MAX: usize = 4096;

impl AuthThrottle {
    /// Records a failure; returns (failures so far, blocked until).
    pub fn failed(
        &self,
        initiator: &str,
        addr: IpAddr,
        now: std::time::Instant,
    ) -> (u32, Option<std::time::Instant>) {
        let mut m = self.inner.lock();
        if m.len() >= AUTH_TRACKED_MAX {
            m.retain(|_, f| now.duration_since(f.last) < AUTH_FORGET_AFTER);
            if m.len() >= AUTH_TRACKED_MAX {
                // Still full of recent failures: drop the oldest entry.
                if let Some(k) = m.iter().min_by_key(|(_, f)| f.last).map(|(k, _)| k.clone()) {
                    m.remove(&k);
                }
            }
        }
        let f = m
            .entry((initiator.to_owned(), addr))
            .or_insert(AuthFailures {
                count: 0,
                last: now,
                blocked_until: None,
            });
        if now.duration_since(f.last) >= AUTH_FORGET_AFTER {
            f.count = 0;
        }
        f.count += 1;
        f.last = now;
        if f.count > AUTH_FREE_FAILURES {
            let exp = (f.count - AUTH_FREE_FAILURES - 1).min(6);
            let block = std::time::Duration::from_secs(1 << exp).min(AUTH_BLOCK_MAX);
            f.blocked_until = Some(now + block);
        }
        (f.count, f.blocked_until)
    }

    /// True while the pair must not attempt a login.
    pub fn blocked(&self, initiator: &str, addr: IpAddr, now: std::time::Instant) -> bool {
        self.inner
            .lock()
            .get(&(initiator.to_owned(), addr))
            .and_then(|f| f.blocked_until)
            .is_some_and(|t| now < t)
    }

    /// A successful login clears the pair's record.
    pub fn succeeded(&self, initiator: &str, addr: IpAddr) {
        self.inner.lock().remove(&(initiator.to_owned(), addr));
    }
}

/// Connections still in the login phase, per source address. A connection counts from
/// accept until its login completes or it closes. When an address already has `cap` such
/// connections, its oldest one is evicted to make room: a flood of idle TCP connections from
/// one host only churns its own connections; it can neither fill the connection limit nor
/// keep a real login (the newest connection) from that or any other address out.
#[derive(Default, Debug)]
pub struct PreloginTable {
    by_addr: Mutex<HashMap<IpAddr, std::collections::VecDeque<(u64, ConnRef)>>>,
    next_token: std::sync::atomic::AtomicU64,
}

/// One pre-login connection's place in [`PreloginTable`]; dropping it frees the place.
#[derive(Debug)]
pub struct PreloginGuard {
    table: Arc<PreloginTable>,
    addr: IpAddr,
    token: u64,
}

impl PreloginTable {
    /// Counts a new connection from `addr`; returns its guard and, if `addr` was at `cap`,
    /// the oldest pre-login connection from it, which the caller must close.
    pub fn enter(
        self: &Arc<Self>,
        addr: IpAddr,
        cap: usize,
        conn: ConnRef,
    ) -> (PreloginGuard, Option<ConnRef>) {
        let token = self
            .next_token
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut m = self.by_addr.lock();
        let q = m.entry(addr).or_default();
        let evicted = if q.len() >= cap.max(1) {
            q.pop_front().map(|(_, c)| c)
        } else {
            None
        };
        q.push_back((token, conn));
        (
            PreloginGuard {
                table: Arc::clone(self),
                addr,
                token,
            },
            evicted,
        )
    }

    pub fn count(&self, addr: IpAddr) -> usize {
        self.by_addr.lock().get(&addr).map(|q| q.len()).unwrap_or(0)
    }
}

impl Drop for PreloginGuard {
    fn drop(&mut self) {
        let mut m = self.table.by_addr.lock();
        if let Some(q) = m.get_mut(&self.addr) {
            q.retain(|(t, _)| *t != self.token);
            if q.is_empty() {
                m.remove(&self.addr);
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub initiator: String,
    pub isid: [u8; 6],
    pub target: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnRef {
    pub reactor: usize,
    pub conn_id: u32,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    tsih: u16,
    conn: ConnRef,
}

/// Upper bound on sessions per node, so a flood of logins cannot exhaust memory.
pub const SESSIONS_MAX: usize = 4096;

#[derive(Default)]
pub struct SessionTable {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_key: HashMap<SessionKey, Entry>,
    next_tsih: u16,
}

pub enum Admission {
    /// New session with this TSIH; `replaced` is an older session with the same key that
    /// must be closed (reinstatement).
    New {
        tsih: u16,
        replaced: Option<ConnRef>,
    },
    Full,
}

impl SessionTable {
    pub fn admit(&self, key: SessionKey, conn: ConnRef) -> Admission {
        let mut inner = self.inner.lock();
        let replaced = inner.by_key.get(&key).map(|e| e.conn);
        if replaced.is_none() && inner.by_key.len() >= SESSIONS_MAX {
            return Admission::Full;
        }
        let tsih = loop {
            inner.next_tsih = inner.next_tsih.wrapping_add(1);
            let t = inner.next_tsih;
            if t != 0 && !inner.by_key.values().any(|e| e.tsih == t) {
                break t;
            }
        };
        inner.by_key.insert(key, Entry { tsih, conn });
        Admission::New { tsih, replaced }
    }

    /// Removes the session if it is still the one owned by `conn` (a reinstated session
    /// must not remove its successor).
    pub fn remove(&self, key: &SessionKey, conn: ConnRef) {
        let mut inner = self.inner.lock();
        if inner.by_key.get(key).map(|e| e.conn) == Some(conn) {
            inner.by_key.remove(key);
        }
    }

    pub fn count(&self) -> usize {
        self.inner.lock().by_key.len()
    }

    pub fn count_for_target(&self, target: &str) -> usize {
        self.inner
            .lock()
            .by_key
            .keys()
            .filter(|k| k.target == target)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_failures_block_after_the_free_ones_and_doubling() {
        let t = AuthThrottle::default();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let now = std::time::Instant::now();
        for i in 1..=AUTH_FREE_FAILURES {
            assert_eq!(t.failed("iqn.x", a, now), (i, None));
        }
        assert!(!t.blocked("iqn.x", a, now));
        let (_, until) = t.failed("iqn.x", a, now);
        assert_eq!(until, Some(now + std::time::Duration::from_secs(1)));
        assert!(t.blocked("iqn.x", a, now));
        let (_, until) = t.failed("iqn.x", a, now);
        assert_eq!(until, Some(now + std::time::Duration::from_secs(2)));
        assert!(!t.blocked("iqn.x", "127.0.0.2".parse().unwrap(), now));
        assert!(!t.blocked("iqn.y", a, now));
        assert!(!t.blocked("iqn.x", a, now + std::time::Duration::from_secs(3)));
        for _ in 0..20 {
            t.failed("iqn.x", a, now);
        }
        let (_, until) = t.failed("iqn.x", a, now);
        assert_eq!(until, Some(now + AUTH_BLOCK_MAX));
        t.succeeded("iqn.x", a);
        assert!(!t.blocked("iqn.x", a, now));
    }

    #[test]
    fn prelogin_cap_evicts_the_oldest_of_that_address_only() {
        let t = Arc::new(PreloginTable::default());
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.1".parse().unwrap();
        let c = |id| ConnRef {
            reactor: 0,
            conn_id: id,
        };
        let (g1, e) = t.enter(a, 2, c(1));
        assert!(e.is_none());
        let (_g2, e) = t.enter(a, 2, c(2));
        assert!(e.is_none());
        let (_g3, e) = t.enter(a, 2, c(3));
        assert_eq!(e, Some(c(1)), "the oldest from that address goes");
        let (_g4, e) = t.enter(b, 2, c(4));
        assert!(e.is_none(), "another address is not affected");
        assert_eq!(t.count(a), 2);
        drop(g1);
        assert_eq!(t.count(a), 2, "an evicted guard's drop changes nothing");
    }

    fn key(isid: u8) -> SessionKey {
        SessionKey {
            initiator: "iqn.i".into(),
            isid: [isid; 6],
            target: "iqn.t".into(),
        }
    }

    #[test]
    fn same_isid_reinstates_and_old_owner_cannot_remove_new() {
        let t = SessionTable::default();
        let a = ConnRef {
            reactor: 0,
            conn_id: 1,
        };
        let b = ConnRef {
            reactor: 1,
            conn_id: 2,
        };
        let Admission::New {
            tsih: t1,
            replaced: None,
        } = t.admit(key(1), a)
        else {
            panic!()
        };
        let Admission::New {
            tsih: t2,
            replaced: Some(old),
        } = t.admit(key(1), b)
        else {
            panic!()
        };
        assert_eq!(old, a);
        assert_ne!(t1, t2);
        t.remove(&key(1), a);
        assert_eq!(t.count(), 1);
        t.remove(&key(1), b);
        assert_eq!(t.count(), 0);
    }
}
