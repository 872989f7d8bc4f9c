//! The Tandem data plane: pinned polling reactors serving iSCSI targets backed by block
//! devices. See `docs/architecture.md` for the PDU path.
#![forbid(unsafe_code)]

pub mod admission;
pub mod config_spec;
pub mod conn;
pub mod control_link;
pub mod net;
pub mod pr_store;
pub mod reactor;
pub mod reactor_ctx;
pub mod replica;
pub mod server;
pub mod session;
pub mod stats;
pub mod target;
