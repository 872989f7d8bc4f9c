//! SCSI (SPC-4 / SBC-3) logical-unit emulation as pure logic.
//!
//! The transport (iSCSI) hands a [`Command`] to [`LogicalUnit::execute`]; the
//! LU answers with a [`Step`]: either a final [`Reply`], one block I/O to do
//! ([`IoPlan`]) after which the transport calls [`LogicalUnit::resume`], or
//! [`Step::Defer`] (retry later; used for COMPARE AND WRITE atomicity).
//! Nothing here touches sockets, files or threads.
#![forbid(unsafe_code)]

mod alua;
pub mod cdb;
mod identity;
mod inquiry;
mod lu;
mod luns;
mod mode;
mod pr;
mod rsoc;
mod rw;
pub mod sense;
mod types;
mod ua;

pub use cdb::ScsiCommand;
pub use lu::LogicalUnit;
pub use luns::{lun_not_present, report_luns};
pub use rw::Continuation;
pub use sense::{Sense, SenseKey};
pub use types::*;
