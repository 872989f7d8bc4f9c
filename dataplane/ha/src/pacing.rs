//! Resync pacing by host latency (contract i): an AIMD controller for the resync window.
//!
//! A resync competes with host I/O for the local disk, the sync link, the partner's disk and
//! the replication thread. A fixed window either starves hosts (too wide) or wastes the
//! bandwidth hosts leave unused (too narrow). The controller watches the latency of host
//! commands answered on this node and, once per control interval:
//! - **decreases** the window multiplicatively (halves it) when the interval's p99 latency
//!   exceeded the target, i.e. when more than 1 % of its samples were over the target (no
//!   sample storage, no sort: a count is enough to decide "p99 over target");
//! - **increases** it additively (a quarter of a copy) when the p99 was within the target;
//! - opens it fully when no host command completed in the interval: there is no host to
//!   protect, so the resync takes the whole bandwidth.
//!
//! The window is counted in sixteenths of a copy. At one copy or more it is the number of
//! region copies in flight. Below one copy, one copy runs at a time and the next one waits
//! so that copies are busy only `window` of the time (a duty cycle): a window of 1/16 rests
//! fifteen copy durations after each copy. The **floor** is 1/16, so a resync always
//! progresses, at about a sixteenth of its single-copy speed at worst (a resync that never
//! ends leaves the device without redundancy, also a failure).
//!
//! Pure: time comes in as `Time` arguments, latencies as numbers; no clock is read here.

use crate::types::Time;

/// Sixteenths of one region copy.
const UNIT: u32 = 16;
/// The floor: a sixteenth of one copy (duty cycle 1/16).
const MIN_WINDOW: u32 = 1;
/// Additive increase per good interval: a quarter of a copy.
const INCREASE: u32 = UNIT / 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacingConfig {
    /// The host latency bound: the p99 of each interval should stay at or below it.
    pub latency_target_ns: u64,
    /// How often the window is adjusted (the p99 is taken over this interval's samples).
    pub interval_ns: u64,
}

impl PacingConfig {
    /// The default control interval: short enough to react within a few host commands'
    /// worth of a slow disk, long enough to hold tens of samples at QD1.
    pub const DEFAULT_INTERVAL_NS: u64 = 50_000_000;

    pub fn with_target_ms(ms: u64) -> Self {
        PacingConfig {
            latency_target_ns: ms.saturating_mul(1_000_000),
            interval_ns: Self::DEFAULT_INTERVAL_NS,
        }
    }
}

/// How far the resync may go right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allowance {
    /// Copies in flight at most (per syncing partner); at least 1.
    pub in_flight: usize,
    /// No new copy before this time (the duty-cycle rest below one copy).
    pub not_before: Time,
}

#[derive(Clone, Debug)]
pub struct ResyncPacer {
    cfg: Option<PacingConfig>,
    max_window: u32,
    window: u32,
    interval_start: Option<Time>,
    samples: u64,
    over_target: u64,
    not_before: Time,
    /// Windows decided so far (for diagnostics and tests).
    decreases: u64,
}

impl ResyncPacer {
    /// `max_copies` is the widest window (the fixed window when pacing is off). `cfg`
    /// `None` turns pacing off: the window stays at `max_copies`.
    pub fn new(max_copies: usize, cfg: Option<PacingConfig>) -> Self {
        let max_window = (max_copies.clamp(1, 1 << 16) as u32) * UNIT;
        ResyncPacer {
            cfg: cfg.filter(|c| c.latency_target_ns > 0 && c.interval_ns > 0),
            max_window,
            window: max_window,
            interval_start: None,
            samples: 0,
            over_target: 0,
            not_before: Time(0),
            decreases: 0,
        }
    }

    pub fn enabled(&self) -> bool {
        self.cfg.is_some()
    }

    /// The window in sixteenths of a copy.
    pub fn window_sixteenths(&self) -> u32 {
        self.window
    }

    /// How many times the window was shrunk.
    pub fn decreases(&self) -> u64 {
        self.decreases
    }

    /// One host command answered on this node after `latency_ns`.
    pub fn observe(&mut self, now: Time, latency_ns: u64) {
        let Some(cfg) = self.cfg else { return };
        self.roll(now);
        self.samples += 1;
        if latency_ns > cfg.latency_target_ns {
            self.over_target += 1;
        }
    }

    /// Ends the control interval(s) that are over by `now`, adjusting the window.
    pub fn roll(&mut self, now: Time) {
        let Some(cfg) = self.cfg else { return };
        let start = *self.interval_start.get_or_insert(now);
        if now.0.saturating_sub(start.0) < cfg.interval_ns {
            return;
        }
        // p99 over the target: more than 1 % of the samples were over it.
        let p99_over = self.over_target > 0 && self.over_target * 100 > self.samples;
        self.window = if self.samples == 0 {
            self.max_window
        } else if p99_over {
            self.decreases += 1;
            (self.window / 2).max(MIN_WINDOW)
        } else {
            (self.window + INCREASE).min(self.max_window)
        };
        self.samples = 0;
        self.over_target = 0;
        self.interval_start = Some(now);
    }

    /// What the resync may do at `now`.
    pub fn allowance(&mut self, now: Time) -> Allowance {
        self.roll(now);
        Allowance {
            in_flight: (self.window / UNIT).max(1) as usize,
            not_before: if self.window < UNIT {
                self.not_before
            } else {
                Time(0)
            },
        }
    }

    /// Until when the resync rests (below one copy), if it does: the caller's next tick
    /// should come no later, or the rest lasts until its regular tick.
    pub fn resting_until(&self) -> Option<Time> {
        (self.window < UNIT && self.not_before > Time(0)).then_some(self.not_before)
    }

    /// A copy that started at `started` ended at `now`. Below one copy, the next one rests
    /// so that copies run `window / 16` of the time.
    pub fn copy_done(&mut self, now: Time, started: Time) {
        if self.window >= UNIT {
            return;
        }
        let took = now.0.saturating_sub(started.0);
        let rest = took.saturating_mul(u64::from(UNIT - self.window)) / u64::from(self.window);
        self.not_before = now.plus_ns(rest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn pacer() -> ResyncPacer {
        ResyncPacer::new(4, Some(PacingConfig::with_target_ms(5)))
    }

    /// Feeds `n` samples of `lat` spread over one interval starting at `t`, then ends it.
    fn interval(p: &mut ResyncPacer, t: &mut u64, n: u64, lat: u64) {
        for i in 0..n {
            p.observe(Time(*t + i), lat);
        }
        *t += 50 * MS;
        p.roll(Time(*t));
    }

    #[test]
    fn off_keeps_the_fixed_window() {
        let mut p = ResyncPacer::new(4, None);
        p.observe(Time(0), 10_000 * MS);
        p.roll(Time(10_000 * MS));
        let a = p.allowance(Time(10_000 * MS));
        assert_eq!(a.in_flight, 4);
        assert_eq!(a.not_before, Time(0));
        assert!(!p.enabled());
        // A target of zero also means off.
        assert!(!ResyncPacer::new(4, Some(PacingConfig::with_target_ms(0))).enabled());
    }

    #[test]
    fn slow_hosts_halve_the_window_down_to_the_floor() {
        let mut p = pacer();
        let mut t = 0;
        p.roll(Time(t));
        interval(&mut p, &mut t, 100, 20 * MS);
        assert_eq!(p.window_sixteenths(), 32);
        assert_eq!(p.allowance(Time(t)).in_flight, 2);
        for _ in 0..20 {
            interval(&mut p, &mut t, 100, 20 * MS);
        }
        assert_eq!(p.window_sixteenths(), MIN_WINDOW);
        assert_eq!(p.allowance(Time(t)).in_flight, 1, "the floor still copies");
    }

    #[test]
    fn p99_within_target_grows_additively_to_the_maximum() {
        let mut p = pacer();
        let mut t = 0;
        p.roll(Time(t));
        for _ in 0..10 {
            interval(&mut p, &mut t, 100, 20 * MS);
        }
        assert_eq!(p.window_sixteenths(), MIN_WINDOW);
        // One slow command in a hundred is within the p99.
        for i in 0..4 {
            for k in 0..100 {
                p.observe(Time(t + k), if k == 0 { 20 * MS } else { MS });
            }
            t += 50 * MS;
            p.roll(Time(t));
            assert_eq!(p.window_sixteenths(), MIN_WINDOW + INCREASE * (i + 1));
        }
        for _ in 0..100 {
            interval(&mut p, &mut t, 100, MS);
        }
        assert_eq!(p.window_sixteenths(), 4 * UNIT);
    }

    #[test]
    fn two_slow_commands_in_a_hundred_are_over_the_p99() {
        let mut p = pacer();
        let mut t = 0;
        p.roll(Time(t));
        for k in 0..100 {
            p.observe(Time(t + k), if k < 2 { 20 * MS } else { MS });
        }
        t += 50 * MS;
        p.roll(Time(t));
        assert_eq!(p.window_sixteenths(), 32);
        assert_eq!(p.decreases(), 1);
    }

    #[test]
    fn an_idle_host_opens_the_window_fully() {
        let mut p = pacer();
        let mut t = 0;
        p.roll(Time(t));
        for _ in 0..10 {
            interval(&mut p, &mut t, 100, 20 * MS);
        }
        interval(&mut p, &mut t, 0, 0);
        assert_eq!(p.allowance(Time(t)).in_flight, 4);
    }

    #[test]
    fn below_one_copy_copies_rest_by_the_duty_cycle() {
        let mut p = pacer();
        let mut t = 0;
        p.roll(Time(t));
        for _ in 0..3 {
            interval(&mut p, &mut t, 100, 20 * MS);
        }
        assert_eq!(p.window_sixteenths(), 8, "half a copy");
        // A copy of 2 ms at a duty cycle of 1/2 rests 2 ms.
        p.copy_done(Time(t + 2 * MS), Time(t));
        let a = p.allowance(Time(t + 2 * MS));
        assert_eq!(a.in_flight, 1);
        assert_eq!(a.not_before, Time(t + 4 * MS));
        assert_eq!(p.resting_until(), Some(Time(t + 4 * MS)));
        // At the floor, fifteen copy durations.
        for _ in 0..5 {
            interval(&mut p, &mut t, 100, 20 * MS);
        }
        assert_eq!(p.window_sixteenths(), 1);
        p.copy_done(Time(t + MS), Time(t));
        assert_eq!(p.allowance(Time(t + MS)).not_before, Time(t + 16 * MS));
    }
}
