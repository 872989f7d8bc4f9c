//! Deterministic cluster simulator for the replication engine.
//!
//! One seed fixes everything: host clients issuing reads, writes (on a small set of hot
//! blocks, so they overlap), COMPARE AND WRITE and flushes through random nodes; FIFO links
//! with random delay that are cut and restored; disk latency; node crashes (everything in
//! flight on the disk lands or not, block by block), pauses longer than a lease, power loss
//! of every node at once, and the authority losing its state. After the run every fault
//! heals, the cluster must converge, and the checker verifies:
//!
//! * per-block linearizability of the whole host history, plus a final read of every block
//!   (no acknowledged write lost, no read that goes back in time, atomic COMPARE AND WRITE);
//! * every replica byte-identical after resync (dirty regions covered every divergence);
//! * every GOOD answer came from a node that the authority had synchronized at that moment
//!   (at most one side acknowledges per epoch; fenced or paused losers never do);
//! * convergence itself (a cluster that never resynchronizes fails).
//!
//! A failure prints a one-line command that replays the seed with a trace.

pub mod checker;
mod pr_model;
mod rng;
mod world;

pub use crate::authority::AuthorityBug;
pub use world::{run, Shape, SimParams, SimReport};
