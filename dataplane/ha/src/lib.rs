//! # tandem-ha: the replication engine
//!
//! One virtual disk lives on two or three nodes at once; every node serves reads and writes.
//! This crate decides what happens to every host command of a replicated device, as a pure
//! state machine: no sockets, no clocks, no threads. The data plane feeds it host commands,
//! partner messages, local I/O completions, configurations and leases from the control
//! service, and time; it answers with local I/O to submit, messages to send, host
//! completions, verdict requests and metadata to persist ([`Engine::handle`]).
//!
//! [`sim`] runs several engines in a deterministic, seeded cluster simulator with delays,
//! cut links, crashes, pauses and power loss, and checks the contract after every run
//! (`docs/ha.md`).

#![forbid(unsafe_code)]

pub mod authority;
pub mod engine;
pub mod generation;
pub mod io;
pub mod journal;
pub mod membership;
pub mod msg;
pub mod pacing;
pub mod ranges;
pub mod reservations;
pub mod sim;
mod task_mgmt;
pub mod types;

pub use engine::{Engine, GrowRefused, Options, PlantedBug};
pub use generation::{compare, ReplicaMeta, SyncDecision};
pub use io::{FullSyncCause, HostCmd, HostStatus, Input, LocalOp, LocalResult, Output};
pub use membership::{EpochConfig, MemberState};
pub use msg::{Envelope, ForwardedOp, Msg};
pub use pacing::PacingConfig;
pub use reservations::{PrVersion, PR_BLOB_MAX};
pub use types::*;
