//! iSCSI (RFC 7143) protocol logic for Tandem: PDU wire formats, text key=value handling,
//! login negotiation with CHAP, and SendTargets discovery.
//!
//! Everything here is pure logic: no sockets, no threads, no clocks. The connection runtime
//! reads bytes, hands them to these functions and writes what they return. Every input from the
//! network is bounded and checked; nothing in this crate panics on any input (proptests and the
//! cargo-fuzz targets in `/fuzz` check that).
//!
//! * [`wire`] — `Bhs` zero-copy header view and one `…Repr` per PDU (`parse` / `emit`), plus
//!   [`reject`] reason codes and [`login_status`] class/detail pairs.
//! * [`digest`] — CRC32C header/data digests (little-endian on the wire).
//! * [`text`] — `key=value\0` parsing and emitting.
//! * [`params`] — the negotiated [`params::SessionParams`] with RFC defaults.
//! * [`login`] — the per-connection login state machine ([`login::LoginState::handle`]).
//! * [`chap`] — CHAP MD5 / SHA-256 and the binary value encodings.
//! * [`discovery`] — the SendTargets answer.

#![forbid(unsafe_code)]

pub mod chap;
pub mod digest;
pub mod discovery;
pub mod login;
pub mod params;
pub mod text;
pub mod wire;

pub use wire::{login_status, reject};
