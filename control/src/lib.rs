//! Tandem control service (`tandem-control`): owns the node's configuration, supervises the
//! data plane and applies changes to it live, serves the management API. Also the HTTP client
//! and output helpers of the `tandem` CLI.
#![forbid(unsafe_code)]

pub mod api;
pub mod api_types;
pub mod client;
pub mod error;
pub mod ha;
pub mod image;
pub mod image_guard;
pub mod ipc_client;
pub mod metrics;
pub mod replica;
pub mod resolve;
pub mod server;
pub mod service;
pub mod supervisor;
pub mod token;
