//! Node-wide table of logged-in sessions, used to allocate TSIHs and to reinstate a session
//! when an initiator logs in again with the same ISID (RFC 7143 §6.3.5).

use parking_lot::Mutex;
use std::collections::HashMap;

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
