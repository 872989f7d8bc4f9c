//! Tandem's performance tooling: `tandem-loadgen` (an iSCSI initiator load generator) and
//! `tandem-bench` (the A/B harness that drives Tandem and tgt with the same clients).
#![forbid(unsafe_code)]

pub mod bench;
pub mod engine;
pub mod loadgen;
pub mod report;
pub mod session;
pub mod sys;
