//! SCSI (SPC-4 / SBC-3) logical-unit emulation as pure logic.
//!
//! The transport (iSCSI) hands a [`Command`] to [`LogicalUnit::execute`]; the
//! LU answers with a [`Step`]: either a final [`Reply`], one block I/O to do
//! ([`IoPlan`]) after which the transport calls [`LogicalUnit::resume`],
//! [`Step::Persist`] (make a persistent-reservation change durable, off the
//! reactor thread, then `resume`), or [`Step::Defer`] (retry later; used for
//! the atomicity of COMPARE AND WRITE, ORWRITE and WRITE ATOMIC against
//! overlapping writes, and to order PR OUT commits).
//! Nothing here touches sockets, files or threads.
//!
//! ```
//! use tandem_scsi::*;
//!
//! let lu = LogicalUnit::new(
//!     LuConfig {
//!         identity: LuIdentity::derive("cluster-uuid-of-disk"),
//!         block_size: 512,
//!         num_blocks: 2048,
//!         read_only: false,
//!         cache: CacheMode::WriteBack,
//!         unmap_supported: true,
//!         max_transfer_blocks: 2048,
//!     },
//!     None,
//! );
//! let nexus = Nexus {
//!     id: 1,
//!     initiator_name: "iqn.2026-01.host:a".into(),
//!     isid: [0x80, 0, 0, 0, 0, 1],
//!     port: TargetPort { relative_port_id: 1, tpg_id: 1, target_name: "iqn.t".into(), tpgt: 1 },
//! };
//! // READ(10) of 2 blocks at LBA 8: the LU asks for the I/O ...
//! let cdb = [0x28, 0, 0, 0, 0, 8, 0, 0, 2, 0];
//! let cmd = Command { cdb: &cdb, data_out: &[], expected_in_len: 1024, nexus: &nexus };
//! let Step::Io(plan) = lu.execute(&cmd) else { panic!() };
//! assert_eq!(plan.io, LuIo::Read { lba: 8, blocks: 2 });
//! // ... and, once the transport has read the blocks, replies with that buffer.
//! let data = vec![0u8; 1024];
//! let step = lu.resume(&nexus, plan.cont, IoOutcome::Ok { read_data: Some(&data) }, &[]);
//! let Step::Done(reply) = step else { panic!() };
//! assert_eq!(reply.data, ReplyData::IoBuffer { len: 1024 });
//! ```
//!
//! Modules, one job each:
//! - [`cdb`]: typed CDB decoding (never panics), [`sense`]: sense data;
//! - `inquiry` (standard data, VPD pages), `mode` (mode pages), `rsoc`
//!   (REPORT SUPPORTED OPERATION CODES), `luns` (target-level answers);
//! - `pr` (persistent reservations), `alua` (access states, RTPG), `ua`
//!   (per-nexus unit attentions), `rw` (continuations, in-flight ranges);
//! - `lu` (dispatch), `lu::block` (SBC block commands and `resume`),
//!   `lu::reservations` (conflict checks, PR OUT, SPC-2 RESERVE/RELEASE).
#![forbid(unsafe_code)]

mod alua;
pub mod cdb;
mod identity;
mod inquiry;
mod lu;
mod luns;
mod mode;
mod pr;
mod release;
mod rsoc;
mod rw;
pub mod sense;
mod types;
mod ua;

pub use cdb::ScsiCommand;
pub use lu::LogicalUnit;
pub use luns::{lun_not_present, report_luns};
pub use release::{ReleaseWaker, Releases};
pub use rw::{CommitSignal, Continuation};
pub use sense::{Sense, SenseKey};
pub use types::*;
