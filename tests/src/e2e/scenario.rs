//! Small helpers shared by the network-namespace HA scenario tests (`ha_netns*.rs`): running
//! one scenario at a time, ending a host writer, counting its acknowledged writes and
//! printing durations in the scenario tables.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::host_io::{Report, Writer};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Serializes the scenarios of one test binary: each builds its own namespaces and cluster
/// with the same names and ports. A scenario that panicked does not block the next one.
pub fn lock() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Stops writer `w` (named `who` in the output), prints its summary and returns its report;
/// panics if the writer met an error (a lost or wrong acknowledged write).
pub fn finish(w: Writer, who: &str) -> Report {
    let r = w.finish();
    eprintln!("writer {who}: {}", r.summary());
    if let Some(e) = &r.error {
        panic!("writer {who}: {e}");
    }
    r
}

/// A duration in milliseconds, for the scenario tables.
pub fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

/// [`ms`] of a duration that may not have happened ("never").
pub fn opt_ms(d: Option<Duration>) -> String {
    d.map_or("never".into(), ms)
}

/// Acknowledged writes of `r` through `path` answered in `(from, to)`.
pub fn acks(r: &Report, path: usize, from: Instant, to: Instant) -> usize {
    r.acked
        .iter()
        .filter(|a| a.path == path && a.at > from && a.at < to)
        .count()
}
