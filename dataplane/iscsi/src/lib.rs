//! iSCSI (RFC 7143) protocol logic for Tandem: PDU wire formats, text key=value handling,
//! login negotiation with CHAP, and SendTargets discovery.
//!
//! Everything here is pure logic: no sockets, no threads, no clocks. The connection runtime
//! reads bytes, hands them to these functions and writes what they return. Every input from the
//! network is bounded and checked; nothing in this crate panics on any input.

#![forbid(unsafe_code)]

pub mod chap;
pub mod digest;
pub mod discovery;
pub mod login;
pub mod params;
pub mod text;
pub mod wire;

pub use wire::{login_status, reject};
