//! A deterministic simulation of the failover vote (issue 11, item 7): who hosts a
//! device's authority, takeovers, witness votes, authority restarts and pauses, superseded
//! authorities. The replication engine's simulator (`tandem_ha::sim`) checks the data with
//! one authority; this one checks the control side, with the real decision code:
//! `strategy::authority_place`, `strategy::decide_takeover`, `strategy::superseded`,
//! `authority_host::QuietPeriod`, the heartbeat echo rules of `echo` and
//! `tandem_ha::authority::Authority`.
//!
//! No real time, threads or I/O: one seeded RNG drives clocks (each with a rate drift of up
//! to 2 %), message delays, losses and faults, so a seed replays exactly
//! (`tandem-vote-sim --shape hb2 --seed N --trace`). docs/ha.md, "Simulation of the
//! failover vote", describes the model, the faults, the checks and the planted bugs.
//!
//! - [`placement`]: the shapes (`hb2`, `w2`) behind the [`placement::Placement`] trait;
//! - [`world`]: participants, control services, engines, links, the event loop;
//! - [`host`]: the authority host without files;
//! - [`faults`]: what goes wrong;
//! - [`checker`]: the safety checks.

pub mod checker;
pub mod faults;
pub mod host;
pub mod placement;
mod rng;
mod world;

use std::collections::BTreeMap;

use placement::{HeartbeatPair, Placement, WitnessPair};

/// The simulated shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Heartbeat strategy, two data nodes, symmetric takeover.
    Hb2,
    /// Node majority: two data nodes and a witness node hosting the authority.
    W2,
}

impl Shape {
    pub const ALL: [Shape; 2] = [Shape::Hb2, Shape::W2];

    pub fn parse(s: &str) -> Option<Shape> {
        Shape::ALL.into_iter().find(|sh| sh.name() == s)
    }

    pub fn name(self) -> &'static str {
        self.placement().name()
    }

    pub fn placement(self) -> Box<dyn Placement> {
        match self {
            Shape::Hb2 => Box::new(HeartbeatPair),
            Shape::W2 => Box::new(WitnessPair),
        }
    }
}

/// Deliberate defects, switched on only by tests, that the checker must catch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteBug {
    /// The witness's newest vote is not durable: after a restart it has forgotten the last
    /// configuration it issued, and votes again in that epoch.
    WitnessForgetsVote,
    /// The authority removes a suspect at once instead of after its lease plus margin
    /// (`tandem_ha::authority::AuthorityBug::LeaseNotWaited`).
    LeaseNotWaited,
    /// The heartbeat takeover waits less than a lease plus margin of silence.
    TakeoverLeaseNotWaited,
    /// A takeover is not persisted: the taker's epoch is lost on restart.
    EpochNotPersisted,
    /// A restarted or paused two-node heartbeat authority ends its wait for the partner on
    /// any heartbeat heard after the wait began, not only on an echo of a heartbeat it sent
    /// after that (the rule before the echo).
    NoEchoWait,
}

impl VoteBug {
    pub const ALL: [VoteBug; 5] = [
        VoteBug::WitnessForgetsVote,
        VoteBug::LeaseNotWaited,
        VoteBug::TakeoverLeaseNotWaited,
        VoteBug::EpochNotPersisted,
        VoteBug::NoEchoWait,
    ];

    pub fn parse(s: &str) -> Option<VoteBug> {
        VoteBug::ALL.into_iter().find(|b| format!("{b:?}") == s)
    }
}

#[derive(Clone, Debug)]
pub struct SimParams {
    pub seed: u64,
    pub shape: Shape,
    pub bug: Option<VoteBug>,
    /// Simulated time with faults; then everything heals.
    pub active_ms: u64,
    /// Simulated time after healing.
    pub settle_ms: u64,
    pub trace: bool,
}

impl SimParams {
    pub fn new(shape: Shape, seed: u64) -> SimParams {
        SimParams {
            seed,
            shape,
            bug: None,
            active_ms: 20_000,
            settle_ms: 12_000,
            trace: false,
        }
    }
}

/// Open defects of the control-side logic that this simulation found and that are not
/// fixed yet (docs/ha.md, "Simulation of the failover vote", lists the seeds and the
/// proposed fixes): the shape and the check that catches them. Sweeps and the soak count
/// these separately and fail on any other violation; each sweep also asserts that they
/// still occur, so a fix must remove them from this list.
pub const KNOWN_OPEN_DEFECTS: [(Shape, checker::ViolationKind, &str); 0] = [];

/// Whether `v` in `shape` is one of [`KNOWN_OPEN_DEFECTS`].
pub fn is_known_open_defect(shape: Shape, v: &checker::Violation) -> bool {
    KNOWN_OPEN_DEFECTS
        .iter()
        .any(|(s, k, _)| *s == shape && *k == v.kind)
}

/// After everything heals, a shape with `liveness_asserted` must serve again within this.
pub const SERVE_AFTER_HEAL_MS_MAX: u64 = 10_000;

#[derive(Clone, Debug, Default)]
pub struct SimReport {
    pub seed: u64,
    pub shape: &'static str,
    /// The first check that failed.
    pub violation: Option<checker::Violation>,
    pub events: u64,
    pub faults: u64,
    /// Configurations issued (every authority, every epoch).
    pub issued: u64,
    pub issued_by: BTreeMap<usize, u64>,
    pub takeovers: u64,
    pub superseded: u64,
    /// After healing: the first instant some node serves, and every node.
    pub serve_after_heal_ms: Option<u64>,
    pub all_serve_after_heal_ms: Option<u64>,
    /// With `SimParams::trace`: one line per decision.
    pub trace: Vec<String>,
}

impl SimReport {
    pub fn replay_command(&self, bug: Option<VoteBug>) -> String {
        let bug = bug.map_or(String::new(), |b| format!(" --bug {b:?}"));
        format!(
            "cargo run --release -p tandem-control --bin tandem-vote-sim -- --shape {} --seed {}{bug} --trace",
            self.shape, self.seed
        )
    }
}

/// Runs one seed.
pub fn run(params: &SimParams) -> SimReport {
    let mut report = world::World::new(params).run();
    if report.violation.is_none()
        && params.shape.placement().liveness_asserted()
        && !matches!(report.serve_after_heal_ms, Some(ms) if ms <= SERVE_AFTER_HEAL_MS_MAX)
    {
        report.violation = Some(checker::Violation::new(
            checker::ViolationKind::Liveness,
            format!("no node served within {SERVE_AFTER_HEAL_MS_MAX} ms after everything healed"),
        ));
    }
    report
}

#[cfg(test)]
mod tests;
