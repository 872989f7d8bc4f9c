//! Per-device and per-reactor counters. Counters are relaxed atomics: they are read by the
//! control side for reporting and never used for decisions.

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

pub struct DeviceStats {
    pub read_ops: AtomicU64,
    pub write_ops: AtomicU64,
    pub read_bytes: AtomicU64,
    pub write_bytes: AtomicU64,
    pub errors: AtomicU64,
    pub in_flight: AtomicU64,
    /// Command latency in microseconds. Reactors record into a local histogram and merge
    /// it here from time to time, so the lock is not on the I/O path.
    pub latency_us: Mutex<Histogram<u64>>,
}

impl Default for DeviceStats {
    fn default() -> Self {
        DeviceStats {
            read_ops: AtomicU64::new(0),
            write_ops: AtomicU64::new(0),
            read_bytes: AtomicU64::new(0),
            write_bytes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            latency_us: Mutex::new(new_latency_histogram()),
        }
    }
}

pub fn new_latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds are valid")
}

impl DeviceStats {
    pub fn count_read(&self, bytes: u64) {
        self.read_ops.fetch_add(1, Ordering::Relaxed);
        self.read_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn count_write(&self, bytes: u64) {
        self.write_ops.fetch_add(1, Ordering::Relaxed);
        self.write_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn record_latency_us(&self, us: u64) {
        // try_lock: a reporter reading the histogram must never stall the I/O path; a
        // sample lost under contention does not change the percentiles.
        if let Some(mut h) = self.latency_us.try_lock() {
            let _ = h.record(us.max(1));
        }
    }

    pub fn count_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Default)]
pub struct ReactorStats {
    pub busy_polls: AtomicU64,
    pub idle_polls: AtomicU64,
    pub sleeps: AtomicU64,
    pub pdus: AtomicU64,
    pub ios: AtomicU64,
    pub connections: AtomicU64,
}
