//! The reactor's memory budget: one byte count covering every large buffer a connection
//! holds on behalf of an initiator — Data-Out buffers of writes being collected and read
//! data waiting to be sent. Nothing else on the I/O path grows with what initiators ask
//! for, so holding this bound holds the process's memory (plus a fixed margin: receive
//! buffers, buffer-pool caches, task tables).
//!
//! When the budget is spent the connection waits instead of allocating: a write's R2Ts are
//! held until its buffer can be granted, a read's I/O is not started until its reply buffer
//! can be granted. A connection whose initiator does not read its replies therefore stops
//! itself (its grants stay taken) without taking memory from the others beyond its share.
//!
//! One reactor owns its budget (no atomics, no locks).

/// Default budget per reactor.
pub const DEFAULT_BUDGET_BYTES: u64 = 256 << 20;
/// Grants at most this large may use the reserve: small I/O (metadata, 4 KiB reads) keeps
/// flowing while bulk transfers have spent the rest.
const SMALL_GRANT: u64 = 1 << 20;
/// Smallest budget: room for two maximum transfers (8 MiB) under the bulk ceiling.
pub const MIN_BUDGET_BYTES: u64 = 16 << 20;

#[derive(Debug)]
pub struct MemBudget {
    limit: u64,
    used: u64,
    /// Bumped at every release, so a waiting connection retries only when something changed.
    epoch: u64,
    peak: u64,
}

impl MemBudget {
    pub fn new(limit: u64) -> MemBudget {
        MemBudget {
            limit: limit.max(MIN_BUDGET_BYTES),
            used: 0,
            epoch: 0,
            peak: 0,
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn used(&self) -> u64 {
        self.used
    }

    pub fn peak(&self) -> u64 {
        self.peak
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The most one connection may hold while others wait: an eighth of the budget. A
    /// connection holding nothing may always take one grant (if the total allows), so a
    /// single maximum-size transfer never waits forever.
    pub fn per_connection(&self) -> u64 {
        self.limit / 8
    }

    /// Takes `n` bytes for a connection already holding `conn_held`; false = wait.
    pub fn try_take(&mut self, conn_held: u64, n: u64) -> bool {
        if self.used == 0 {
            // Nothing else holds memory: any one transfer may go, so a transfer larger
            // than the ceilings (a small budget) still makes progress instead of waiting
            // forever.
            self.used = n;
            self.peak = self.peak.max(n);
            return true;
        }
        if conn_held > 0 && conn_held.saturating_add(n) > self.per_connection() {
            return false;
        }
        // Bulk grants leave the last eighth to small ones.
        let ceiling = if n <= SMALL_GRANT {
            self.limit
        } else {
            self.limit - self.limit / 8
        };
        if self.used.saturating_add(n) > ceiling {
            return false;
        }
        self.used += n;
        self.peak = self.peak.max(self.used);
        true
    }

    pub fn give(&mut self, n: u64) {
        debug_assert!(n <= self.used, "budget released more than taken");
        self.used = self.used.saturating_sub(n);
        if n > 0 {
            self.epoch = self.epoch.wrapping_add(1);
        }
    }
}

impl Default for MemBudget {
    fn default() -> Self {
        MemBudget::new(DEFAULT_BUDGET_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_grant_larger_than_the_ceiling_still_goes() {
        let mut b = MemBudget::new(1 << 20);
        assert_eq!(b.limit(), MIN_BUDGET_BYTES);
        assert!(b.try_take(0, 15 << 20), "nothing else held: it may go");
        assert!(!b.try_take(0, 2 << 20));
        b.give(15 << 20);
        assert!(b.try_take(0, 8 << 20));
    }

    #[test]
    fn bulk_grants_leave_a_reserve_for_small_ones() {
        let mut b = MemBudget::new(64 << 20);
        // Eight connections, each one 7 MiB grant (bulk ceiling 56 MiB).
        for _ in 0..8 {
            assert!(b.try_take(0, 7 << 20));
        }
        assert!(!b.try_take(0, 2 << 20), "bulk ceiling reached");
        assert!(b.try_take(0, 4096), "small grants use the reserve");
        b.give(7 << 20);
        assert!(b.try_take(0, 2 << 20));
    }

    #[test]
    fn one_connection_cannot_take_more_than_its_share_but_always_gets_one_grant() {
        let mut b = MemBudget::new(64 << 20);
        assert!(b.try_take(0, 16 << 20), "first grant may exceed the share");
        assert!(!b.try_take(16 << 20, 4096));
        let e = b.epoch();
        b.give(16 << 20);
        assert_ne!(b.epoch(), e);
        assert_eq!(b.used(), 0);
        assert_eq!(b.peak(), 16 << 20);
    }
}
