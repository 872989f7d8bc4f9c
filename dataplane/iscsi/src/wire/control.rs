//! NOP-Out / NOP-In, Task Management, Text, Logout, Reject and Asynchronous Message PDUs.

use super::{
    bit, check_opcode, field, flag, impl_pdu_repr, put_u16, put_u32, put_u64, start, Bhs, Opcode,
    WireError, BHS_LEN, RESERVED_TAG,
};

/// Fields shared by the PDUs in this file (all at the same offsets).
pub mod common {
    use super::field::Field;
    /// Target Transfer Tag (NOP, Text) or Referenced Task Tag (TMF).
    pub const TTT: Field = 20..24;
    /// CmdSN (initiator PDUs) or StatSN (target PDUs).
    pub const SN1: Field = 24..28;
    /// ExpStatSN (initiator PDUs) or ExpCmdSN (target PDUs).
    pub const SN2: Field = 28..32;
    /// MaxCmdSN (target PDUs) or RefCmdSN (TMF request).
    pub const SN3: Field = 32..36;
    /// DataSN / R2TSN (Reject) or ExpDataSN (TMF request).
    pub const SN4: Field = 36..40;
}
use common::{SN1, SN2, SN3, SN4, TTT};

/// A NOP-Out header (RFC 7143 §11.18). Ping data, if any, is in the data segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NopOutRepr {
    pub immediate: bool,
    pub lun: u64,
    /// 0xffffffff when this is a reply to a NOP-In and not a ping.
    pub itt: u32,
    /// 0xffffffff for an initiator ping; otherwise the TTT of the NOP-In it answers.
    pub ttt: u32,
    pub cmdsn: u32,
    pub expstatsn: u32,
}

impl NopOutRepr {
    /// Parses a NOP-Out header.
    pub fn parse<T: AsRef<[u8]>>(bhs: &Bhs<T>) -> Result<Self, WireError> {
        check_opcode(bhs, Opcode::NopOut)?;
        Ok(NopOutRepr {
            immediate: bhs.immediate(),
            lun: bhs.lun(),
            itt: bhs.itt(),
            ttt: bhs.be32(TTT.start),
            cmdsn: bhs.be32(SN1.start),
            expstatsn: bhs.be32(SN2.start),
        })
    }

    /// Emits the header.
    pub fn emit(&self, buf: &mut [u8; BHS_LEN]) {
        start(buf, Opcode::NopOut, self.immediate);
        buf[field::FLAGS] = field::FINAL_BIT;
        put_u64(buf, field::LUN.start, self.lun);
        put_u32(buf, field::ITT.start, self.itt);
        put_u32(buf, TTT.start, self.ttt);
        put_u32(buf, SN1.start, self.cmdsn);
        put_u32(buf, SN2.start, self.expstatsn);
    }
}
impl_pdu_repr!(NopOutRepr, Opcode::NopOut);

/// A NOP-In header (RFC 7143 §11.19).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NopInRepr {
    pub lun: u64,
    /// The NOP-Out's ITT when answering a ping; 0xffffffff for a target-initiated ping.
    pub itt: u32,
    /// 0xffffffff when no answer is wanted; otherwise a tag the initiator echoes.
    pub ttt: u32,
    pub statsn: u32,
    pub expcmdsn: u32,
    pub maxcmdsn: u32,
}

impl NopInRepr {
    /// Parses a NOP-In header.
    pub fn parse<T: AsRef<[u8]>>(bhs: &Bhs<T>) -> Result<Self, WireError> {
        check_opcode(bhs, Opcode::NopIn)?;
        Ok(NopInRepr {
            lun: bhs.lun(),
            itt: bhs.itt(),
            ttt: bhs.be32(TTT.start),
            statsn: bhs.be32(SN1.start),
            expcmdsn: bhs.be32(SN2.start),
            maxcmdsn: bhs.be32(SN3.start),
        })
    }

    /// Emits the header.
    pub fn emit(&self, buf: &mut [u8; BHS_LEN]) {
        start(buf, Opcode::NopIn, false);
        buf[field::FLAGS] = field::FINAL_BIT;
        put_u64(buf, field::LUN.start, self.lun);
        put_u32(buf, field::ITT.start, self.itt);
        put_u32(buf, TTT.start, self.ttt);
        put_u32(buf, SN1.start, self.statsn);
        put_u32(buf, SN2.start, self.expcmdsn);
        put_u32(buf, SN3.start, self.maxcmdsn);
    }
}
impl_pdu_repr!(NopInRepr, Opcode::NopIn);

/// Task management functions (RFC 7143 §11.5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TmfFunction {
    AbortTask,
    AbortTaskSet,
    ClearAca,
    ClearTaskSet,
    LogicalUnitReset,
    TargetWarmReset,
    TargetColdReset,
    TaskReassign,
    /// A function code we do not know; answer with "function not supported".
    Other(u8),
}

impl TmfFunction {
    /// Maps the 7-bit function code.
    pub fn from_u8(v: u8) -> TmfFunction {
        match v {
            1 => TmfFunction::AbortTask,
            2 => TmfFunction::AbortTaskSet,
            3 => TmfFunction::ClearAca,
            4 => TmfFunction::ClearTaskSet,
            5 => TmfFunction::LogicalUnitReset,
            6 => TmfFunction::TargetWarmReset,
            7 => TmfFunction::TargetColdReset,
            8 => TmfFunction::TaskReassign,
            other => TmfFunction::Other(other & 0x7f),
        }
    }

    /// The 7-bit function code.
    pub fn to_u8(self) -> u8 {
        match self {
            TmfFunction::AbortTask => 1,
            TmfFunction::AbortTaskSet => 2,
            TmfFunction::ClearAca => 3,
            TmfFunction::ClearTaskSet => 4,
            TmfFunction::LogicalUnitReset => 5,
            TmfFunction::TargetWarmReset => 6,
            TmfFunction::TargetColdReset => 7,
            TmfFunction::TaskReassign => 8,
            TmfFunction::Other(v) => v & 0x7f,
        }
    }
}

/// Task Management Function response codes (RFC 7143 §11.6.1).
pub mod tmf_response {
    pub const FUNCTION_COMPLETE: u8 = 0;
    pub const TASK_DOES_NOT_EXIST: u8 = 1;
    pub const LUN_DOES_NOT_EXIST: u8 = 2;
    pub const TASK_STILL_ALLEGIANT: u8 = 3;
    pub const TASK_ALLEGIANCE_REASSIGNMENT_NOT_SUPPORTED: u8 = 4;
    pub const FUNCTION_NOT_SUPPORTED: u8 = 5;
    pub const FUNCTION_AUTHORIZATION_FAILED: u8 = 6;
    pub const FUNCTION_REJECTED: u8 = 255;
}

/// Task Management Function Request byte offsets.
pub mod task_mgmt_request {
    use super::field::Field;
    /// Byte 1, low 7 bits.
    pub const FUNCTION_MASK: u8 = 0x7f;
    /// Referenced Task Tag.
    pub const RTT: Field = 20..24;
    pub const CMDSN: Field = 24..28;
    pub const EXPSTATSN: Field = 28..32;
    pub const REFCMDSN: Field = 32..36;
    pub const EXPDATASN: Field = 36..40;
}

/// A Task Management Function Request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskMgmtRequestRepr {
    pub immediate: bool,
    pub function: TmfFunction,
    pub lun: u64,
    pub itt: u32,
    /// Referenced Task Tag (ABORT TASK), else 0xffffffff.
    pub rtt: u32,
    pub cmdsn: u32,
    pub expstatsn: u32,
    pub refcmdsn: u32,
    pub expdatasn: u32,
}

impl TaskMgmtRequestRepr {
    /// Parses a TMF Request header.
    pub fn parse<T: AsRef<[u8]>>(bhs: &Bhs<T>) -> Result<Self, WireError> {
        use task_mgmt_request::*;
        check_opcode(bhs, Opcode::TaskMgmtRequest)?;
        Ok(TaskMgmtRequestRepr {
            immediate: bhs.immediate(),
            function: TmfFunction::from_u8(bhs.flags() & FUNCTION_MASK),
            lun: bhs.lun(),
            itt: bhs.itt(),
            rtt: bhs.be32(RTT.start),
            cmdsn: bhs.be32(CMDSN.start),
            expstatsn: bhs.be32(EXPSTATSN.start),
            refcmdsn: bhs.be32(REFCMDSN.start),
            expdatasn: bhs.be32(EXPDATASN.start),
        })
    }

    /// Emits the header.
    pub fn emit(&self, buf: &mut [u8; BHS_LEN]) {
        use task_mgmt_request::*;
        start(buf, Opcode::TaskMgmtRequest, self.immediate);
        buf[field::FLAGS] = field::FINAL_BIT | self.function.to_u8();
        put_u64(buf, field::LUN.start, self.lun);
        put_u32(buf, field::ITT.start, self.itt);
        put_u32(buf, RTT.start, self.rtt);
        put_u32(buf, CMDSN.start, self.cmdsn);
        put_u32(buf, EXPSTATSN.start, self.expstatsn);
        put_u32(buf, REFCMDSN.start, self.refcmdsn);
        put_u32(buf, EXPDATASN.start, self.expdatasn);
    }
}
impl_pdu_repr!(TaskMgmtRequestRepr, Opcode::TaskMgmtRequest);

/// Task Management Function Response byte offsets.
pub mod task_mgmt_response {
    /// Response code, see [`super::tmf_response`].
    pub const RESPONSE: usize = 2;
}

/// A Task Management Function Response header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskMgmtResponseRepr {
    /// See [`tmf_response`].
    pub response: u8,
    pub itt: u32,
    pub statsn: u32,
    pub expcmdsn: u32,
    pub maxcmdsn: u32,
}

impl TaskMgmtResponseRepr {
    /// Parses a TMF Response header.
    pub fn parse<T: AsRef<[u8]>>(bhs: &Bhs<T>) -> Result<Self, WireError> {
        check_opcode(bhs, Opcode::TaskMgmtResponse)?;
        Ok(TaskMgmtResponseRepr {
            response: bhs.byte(task_mgmt_response::RESPONSE),
            itt: bhs.itt(),
            statsn: bhs.be32(SN1.start),
            expcmdsn: bhs.be32(SN2.start),
            maxcmdsn: bhs.be32(SN3.start),
        })
    }

    /// Emits the header.
    pub fn emit(&self, buf: &mut [u8; BHS_LEN]) {
        start(buf, Opcode::TaskMgmtResponse, false);
        buf[field::FLAGS] = field::FINAL_BIT;
        buf[task_mgmt_response::RESPONSE] = self.response;
        put_u32(buf, field::ITT.start, self.itt);
        put_u32(buf, SN1.start, self.statsn);
        put_u32(buf, SN2.start, self.expcmdsn);
        put_u32(buf, SN3.start, self.maxcmdsn);
    }
}
impl_pdu_repr!(TaskMgmtResponseRepr, Opcode::TaskMgmtResponse);

/// Text Request / Response flag bits.
pub mod text {
    /// Byte 1: Continue (C): more text follows in the next PDU.
    pub const CONTINUE_BIT: u8 = 0x40;
}

/// A Text Request header (RFC 7143 §11.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextRequestRepr {
    pub immediate: bool,
    pub final_flag: bool,
    /// Continue: the text is split and more follows.
    pub cont: bool,
    pub lun: u64,
    pub itt: u32,
    /// 0xffffffff to start a new exchange; otherwise the TTT from our last Text Response.
    pub ttt: u32,
    pub cmdsn: u32,
    pub expstatsn: u32,
}

impl TextRequestRepr {
    /// Parses a Text Request header. F and C together are a protocol error.
    pub fn parse<T: AsRef<[u8]>>(bhs: &Bhs<T>) -> Result<Self, WireError> {
        check_opcode(bhs, Opcode::TextRequest)?;
        let r = TextRequestRepr {
            immediate: bhs.immediate(),
            final_flag: bhs.final_flag(),
            cont: bit(bhs.flags(), text::CONTINUE_BIT),
            lun: bhs.lun(),
            itt: bhs.itt(),
            ttt: bhs.be32(TTT.start),
            cmdsn: bhs.be32(SN1.start),
            expstatsn: bhs.be32(SN2.start),
        };
        if r.final_flag && r.cont {
            return Err(WireError::InvalidField("Text F and C both set"));
        }
        Ok(r)
    }

    /// Emits the header.
    pub fn emit(&self, buf: &mut [u8; BHS_LEN]) {
        start(buf, Opcode::TextRequest, self.immediate);
        buf[field::FLAGS] =
            flag(self.final_flag, field::FINAL_BIT) | flag(self.cont, text::CONTINUE_BIT);
        put_u64(buf, field::LUN.start, self.lun);
        put_u32(buf, field::ITT.start, self.itt);
        put_u32(buf, TTT.start, self.ttt);
        put_u32(buf, SN1.start, self.cmdsn);
        put_u32(buf, SN2.start, self.expstatsn);
    }
}
impl_pdu_repr!(TextRequestRepr, Opcode::TextRequest);

/// A Text Response header (RFC 7143 §11.11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextResponseRepr {
    pub final_flag: bool,
    pub cont: bool,
    pub lun: u64,
    pub itt: u32,
    /// 0xffffffff on the final response; otherwise a tag the initiator returns to get more.
    pub ttt: u32,
    pub statsn: u32,
    pub expcmdsn: u32,
    pub maxcmdsn: u32,
}

impl TextResponseRepr {
    /// Parses a Text Response header.
    pub fn parse<T: AsRef<[u8]>>(bhs: &Bhs<T>) -> Result<Self, WireError> {
        check_opcode(bhs, Opcode::TextResponse)?;
        let r = TextResponseRepr {
            final_flag: bhs.final_flag(),
            cont: bit(bhs.flags(), text::CONTINUE_BIT),
            lun: bhs.lun(),
            itt: bhs.itt(),
            ttt: bhs.be32(TTT.start),
            statsn: bhs.be32(SN1.start),
            expcmdsn: bhs.be32(SN2.start),
            maxcmdsn: bhs.be32(SN3.start),
        };
        if r.final_flag && r.cont {
            return Err(WireError::InvalidField("Text F and C both set"));
        }
        Ok(r)
    }

    /// Emits the header.
    pub fn emit(&self, buf: &mut [u8; BHS_LEN]) {
        start(buf, Opcode::TextResponse, false);
        buf[field::FLAGS] =
            flag(self.final_flag, field::FINAL_BIT) | flag(self.cont, text::CONTINUE_BIT);
        put_u64(buf, field::LUN.start, self.lun);
        put_u32(buf, field::ITT.start, self.itt);
        put_u32(buf, TTT.start, self.ttt);
        put_u32(buf, SN1.start, self.statsn);
        put_u32(buf, SN2.start, self.expcmdsn);
        put_u32(buf, SN3.start, self.maxcmdsn);
    }
}
impl_pdu_repr!(TextResponseRepr, Opcode::TextResponse);

/// Logout reason codes (RFC 7143 §11.14.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogoutReason {
    CloseSession,
    CloseConnection,
    RemoveConnectionForRecovery,
    /// Unknown code; the runtime should reject the PDU.
    Other(u8),
}

impl LogoutReason {
    /// Maps the 7-bit reason code.
    pub fn from_u8(v: u8) -> LogoutReason {
        match v {
            0 => LogoutReason::CloseSession,
            1 => LogoutReason::CloseConnection,
            2 => LogoutReason::RemoveConnectionForRecovery,
            other => LogoutReason::Other(other & 0x7f),
        }
    }

    /// The 7-bit reason code.
    pub fn to_u8(self) -> u8 {
        match self {
            LogoutReason::CloseSession => 0,
            LogoutReason::CloseConnection => 1,
            LogoutReason::RemoveConnectionForRecovery => 2,
            LogoutReason::Other(v) => v & 0x7f,
        }
    }
}

/// Logout Request / Response byte offsets.
pub mod logout {
    use super::field::Field;
    /// Request byte 1, low 7 bits.
    pub const REASON_MASK: u8 = 0x7f;
    /// Request: Connection ID.
    pub const CID: Field = 20..22;
    /// Response code (response PDU byte 2).
    pub const RESPONSE: usize = 2;
    /// Response: Time2Wait.
    pub const TIME2WAIT: Field = 40..42;
    /// Response: Time2Retain.
    pub const TIME2RETAIN: Field = 42..44;
}

/// Logout response codes (RFC 7143 §11.15.1).
pub mod logout_response {
    pub const CLOSED_SUCCESSFULLY: u8 = 0;
    pub const CID_NOT_FOUND: u8 = 1;
    pub const RECOVERY_NOT_SUPPORTED: u8 = 2;
    pub const CLEANUP_FAILED: u8 = 3;
}

/// A Logout Request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogoutRequestRepr {
    pub reason: LogoutReason,
    pub itt: u32,
    pub cid: u16,
    pub cmdsn: u32,
    pub expstatsn: u32,
}

impl LogoutRequestRepr {
    /// Parses a Logout Request header (the Immediate bit is on the [`Bhs`]).
    pub fn parse<T: AsRef<[u8]>>(bhs: &Bhs<T>) -> Result<Self, WireError> {
        check_opcode(bhs, Opcode::LogoutRequest)?;
        Ok(LogoutRequestRepr {
            reason: LogoutReason::from_u8(bhs.flags() & logout::REASON_MASK),
            itt: bhs.itt(),
            cid: bhs.be16(logout::CID.start),
            cmdsn: bhs.be32(SN1.start),
            expstatsn: bhs.be32(SN2.start),
        })
    }

    /// Emits the header (Immediate bit clear).
    pub fn emit(&self, buf: &mut [u8; BHS_LEN]) {
        start(buf, Opcode::LogoutRequest, false);
        buf[field::FLAGS] = field::FINAL_BIT | self.reason.to_u8();
        put_u32(buf, field::ITT.start, self.itt);
        put_u16(buf, logout::CID.start, self.cid);
        put_u32(buf, SN1.start, self.cmdsn);
        put_u32(buf, SN2.start, self.expstatsn);
    }
}
impl_pdu_repr!(LogoutRequestRepr, Opcode::LogoutRequest);

/// A Logout Response header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogoutResponseRepr {
    /// See [`logout_response`].
    pub response: u8,
    pub itt: u32,
    pub statsn: u32,
    pub expcmdsn: u32,
    pub maxcmdsn: u32,
    pub time2wait: u16,
    pub time2retain: u16,
}

impl LogoutResponseRepr {
    /// Parses a Logout Response header.
    pub fn parse<T: AsRef<[u8]>>(bhs: &Bhs<T>) -> Result<Self, WireError> {
        check_opcode(bhs, Opcode::LogoutResponse)?;
        Ok(LogoutResponseRepr {
            response: bhs.byte(logout::RESPONSE),
            itt: bhs.itt(),
            statsn: bhs.be32(SN1.start),
            expcmdsn: bhs.be32(SN2.start),
            maxcmdsn: bhs.be32(SN3.start),
            time2wait: bhs.be16(logout::TIME2WAIT.start),
            time2retain: bhs.be16(logout::TIME2RETAIN.start),
        })
    }

    /// Emits the header.
    pub fn emit(&self, buf: &mut [u8; BHS_LEN]) {
        start(buf, Opcode::LogoutResponse, false);
        buf[field::FLAGS] = field::FINAL_BIT;
        buf[logout::RESPONSE] = self.response;
        put_u32(buf, field::ITT.start, self.itt);
        put_u32(buf, SN1.start, self.statsn);
        put_u32(buf, SN2.start, self.expcmdsn);
        put_u32(buf, SN3.start, self.maxcmdsn);
        put_u16(buf, logout::TIME2WAIT.start, self.time2wait);
        put_u16(buf, logout::TIME2RETAIN.start, self.time2retain);
    }
}
impl_pdu_repr!(LogoutResponseRepr, Opcode::LogoutResponse);

/// Reject byte offsets (RFC 7143 §11.17).
pub mod reject_pdu {
    /// Reason code, see [`crate::wire::reject`].
    pub const REASON: usize = 2;
}

/// A Reject header. The data segment carries the complete BHS of the rejected PDU (48 bytes).
/// The ITT is always 0xffffffff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RejectRepr {
    /// See [`crate::wire::reject`].
    pub reason: u8,
    pub statsn: u32,
    pub expcmdsn: u32,
    pub maxcmdsn: u32,
    /// DataSN/R2TSN of the rejected PDU when relevant (data digest error on Data-Out), else 0.
    pub datasn: u32,
}

impl RejectRepr {
    /// Parses a Reject header.
    pub fn parse<T: AsRef<[u8]>>(bhs: &Bhs<T>) -> Result<Self, WireError> {
        check_opcode(bhs, Opcode::Reject)?;
        Ok(RejectRepr {
            reason: bhs.byte(reject_pdu::REASON),
            statsn: bhs.be32(SN1.start),
            expcmdsn: bhs.be32(SN2.start),
            maxcmdsn: bhs.be32(SN3.start),
            datasn: bhs.be32(SN4.start),
        })
    }

    /// Emits the header (ITT 0xffffffff).
    pub fn emit(&self, buf: &mut [u8; BHS_LEN]) {
        start(buf, Opcode::Reject, false);
        buf[field::FLAGS] = field::FINAL_BIT;
        buf[reject_pdu::REASON] = self.reason;
        put_u32(buf, field::ITT.start, RESERVED_TAG);
        put_u32(buf, SN1.start, self.statsn);
        put_u32(buf, SN2.start, self.expcmdsn);
        put_u32(buf, SN3.start, self.maxcmdsn);
        put_u32(buf, SN4.start, self.datasn);
    }
}
impl_pdu_repr!(RejectRepr, Opcode::Reject);

/// Asynchronous Message byte offsets (RFC 7143 §11.9).
pub mod async_message {
    use super::field::Field;
    pub const ASYNC_EVENT: usize = 36;
    pub const ASYNC_VCODE: usize = 37;
    pub const PARAMETER1: Field = 38..40;
    pub const PARAMETER2: Field = 40..42;
    pub const PARAMETER3: Field = 42..44;
}

/// AsyncEvent codes.
pub mod async_event {
    /// SCSI asynchronous event (sense data in the data segment).
    pub const SCSI_EVENT: u8 = 0;
    /// Target requests logout (Parameter3 = seconds the initiator has to log out).
    pub const LOGOUT_REQUEST: u8 = 1;
    /// Target will drop the connection (Parameter1 = CID).
    pub const CONNECTION_DROP: u8 = 2;
    /// Target will drop all connections of the session.
    pub const SESSION_DROP: u8 = 3;
    /// Target requests parameter renegotiation.
    pub const NEGOTIATION_REQUEST: u8 = 4;
    /// Task termination: all active tasks of a LU (given in the LUN field) were terminated.
    pub const TASK_TERMINATION: u8 = 5;
    /// Vendor specific.
    pub const VENDOR_SPECIFIC: u8 = 255;
}

/// An Asynchronous Message header. The ITT is always 0xffffffff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AsyncMessageRepr {
    pub lun: u64,
    pub statsn: u32,
    pub expcmdsn: u32,
    pub maxcmdsn: u32,
    /// See [`async_event`].
    pub async_event: u8,
    pub async_vcode: u8,
    pub parameter1: u16,
    pub parameter2: u16,
    pub parameter3: u16,
}

impl AsyncMessageRepr {
    /// Parses an Asynchronous Message header.
    pub fn parse<T: AsRef<[u8]>>(bhs: &Bhs<T>) -> Result<Self, WireError> {
        use async_message::*;
        check_opcode(bhs, Opcode::AsyncMessage)?;
        Ok(AsyncMessageRepr {
            lun: bhs.lun(),
            statsn: bhs.be32(SN1.start),
            expcmdsn: bhs.be32(SN2.start),
            maxcmdsn: bhs.be32(SN3.start),
            async_event: bhs.byte(ASYNC_EVENT),
            async_vcode: bhs.byte(ASYNC_VCODE),
            parameter1: bhs.be16(PARAMETER1.start),
            parameter2: bhs.be16(PARAMETER2.start),
            parameter3: bhs.be16(PARAMETER3.start),
        })
    }

    /// Emits the header (ITT 0xffffffff).
    pub fn emit(&self, buf: &mut [u8; BHS_LEN]) {
        use async_message::*;
        start(buf, Opcode::AsyncMessage, false);
        buf[field::FLAGS] = field::FINAL_BIT;
        put_u64(buf, field::LUN.start, self.lun);
        put_u32(buf, field::ITT.start, RESERVED_TAG);
        put_u32(buf, SN1.start, self.statsn);
        put_u32(buf, SN2.start, self.expcmdsn);
        put_u32(buf, SN3.start, self.maxcmdsn);
        buf[ASYNC_EVENT] = self.async_event;
        buf[ASYNC_VCODE] = self.async_vcode;
        put_u16(buf, PARAMETER1.start, self.parameter1);
        put_u16(buf, PARAMETER2.start, self.parameter2);
        put_u16(buf, PARAMETER3.start, self.parameter3);
    }
}
impl_pdu_repr!(AsyncMessageRepr, Opcode::AsyncMessage);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::reject;

    fn roundtrip<R>(bytes: &[u8; 48], repr: R)
    where
        R: crate::wire::PduRepr + PartialEq + core::fmt::Debug,
    {
        let bhs = Bhs::new_checked(&bytes[..]).unwrap();
        assert_eq!(R::parse_bhs(&bhs).unwrap(), repr, "deconstruct");
        let mut buf = [0xaau8; 48];
        repr.emit_bhs(&mut buf);
        assert_eq!(&buf, bytes, "construct");
        assert_eq!(
            R::parse_bhs(&Bhs::new_unchecked(&bytes[..47])).unwrap_err(),
            WireError::Truncated
        );
    }

    #[test]
    fn nop_out() {
        let bytes = [
            0x40, 0x80, 0, 0, 0, 0, 0, 0, //
            0, 0, 0, 0, 0, 0, 0, 0, //
            0x00, 0x00, 0x00, 0x05, 0xff, 0xff, 0xff, 0xff, // ITT, TTT
            0x00, 0x00, 0x00, 0x09, 0x00, 0x00, 0x00, 0x03, // CmdSN, ExpStatSN
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        roundtrip(
            &bytes,
            NopOutRepr {
                immediate: true,
                lun: 0,
                itt: 5,
                ttt: RESERVED_TAG,
                cmdsn: 9,
                expstatsn: 3,
            },
        );
    }

    #[test]
    fn nop_in() {
        let bytes = [
            0x20, 0x80, 0, 0, 0, 0, 0, 0, //
            0, 0, 0, 0, 0, 0, 0, 0, //
            0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x01, // ITT, TTT
            0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x0a, // StatSN, ExpCmdSN
            0x00, 0x00, 0x00, 0x4a, 0, 0, 0, 0, // MaxCmdSN
            0, 0, 0, 0, 0, 0, 0, 0,
        ];
        roundtrip(
            &bytes,
            NopInRepr {
                lun: 0,
                itt: RESERVED_TAG,
                ttt: 1,
                statsn: 4,
                expcmdsn: 10,
                maxcmdsn: 0x4a,
            },
        );
    }

    #[test]
    fn task_mgmt_request() {
        let bytes = [
            0x42, 0x81, 0, 0, 0, 0, 0, 0, // I, F|ABORT TASK
            0x00, 0x01, 0, 0, 0, 0, 0, 0, // LUN 1
            0x00, 0x00, 0x00, 0x30, 0x00, 0x00, 0x00, 0x20, // ITT, RTT
            0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x02, // CmdSN, ExpStatSN
            0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00, 0x00, // RefCmdSN, ExpDataSN
            0, 0, 0, 0, 0, 0, 0, 0,
        ];
        roundtrip(
            &bytes,
            TaskMgmtRequestRepr {
                immediate: true,
                function: TmfFunction::AbortTask,
                lun: 0x0001_0000_0000_0000,
                itt: 0x30,
                rtt: 0x20,
                cmdsn: 8,
                expstatsn: 2,
                refcmdsn: 7,
                expdatasn: 0,
            },
        );
    }

    #[test]
    fn tmf_function_codes() {
        for v in 0u8..=0x7f {
            assert_eq!(TmfFunction::from_u8(v).to_u8(), v);
        }
        assert_eq!(TmfFunction::from_u8(5), TmfFunction::LogicalUnitReset);
        assert_eq!(TmfFunction::from_u8(14), TmfFunction::Other(14));
    }

    #[test]
    fn task_mgmt_response() {
        let bytes = [
            0x22, 0x80, 0x05, 0, 0, 0, 0, 0, // function not supported
            0, 0, 0, 0, 0, 0, 0, 0, //
            0x00, 0x00, 0x00, 0x30, 0, 0, 0, 0, //
            0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x09, //
            0x00, 0x00, 0x00, 0x49, 0, 0, 0, 0, //
            0, 0, 0, 0, 0, 0, 0, 0,
        ];
        roundtrip(
            &bytes,
            TaskMgmtResponseRepr {
                response: tmf_response::FUNCTION_NOT_SUPPORTED,
                itt: 0x30,
                statsn: 3,
                expcmdsn: 9,
                maxcmdsn: 0x49,
            },
        );
    }

    #[test]
    fn text_request_and_response() {
        let req = [
            0x44, 0x40, 0, 0, 0, 0, 0, 0, // I, C
            0, 0, 0, 0, 0, 0, 0, 0, //
            0x00, 0x00, 0x00, 0x01, 0xff, 0xff, 0xff, 0xff, //
            0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x03, //
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        roundtrip(
            &req,
            TextRequestRepr {
                immediate: true,
                final_flag: false,
                cont: true,
                lun: 0,
                itt: 1,
                ttt: RESERVED_TAG,
                cmdsn: 2,
                expstatsn: 3,
            },
        );
        let mut bad = req;
        bad[1] = 0xc0;
        assert!(TextRequestRepr::parse(&Bhs::new_unchecked(&bad[..])).is_err());

        let resp = [
            0x24, 0x80, 0, 0, 0, 0, 0, 0, //
            0, 0, 0, 0, 0, 0, 0, 0, //
            0x00, 0x00, 0x00, 0x01, 0xff, 0xff, 0xff, 0xff, //
            0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x02, //
            0x00, 0x00, 0x00, 0x42, 0, 0, 0, 0, //
            0, 0, 0, 0, 0, 0, 0, 0,
        ];
        roundtrip(
            &resp,
            TextResponseRepr {
                final_flag: true,
                cont: false,
                lun: 0,
                itt: 1,
                ttt: RESERVED_TAG,
                statsn: 3,
                expcmdsn: 2,
                maxcmdsn: 0x42,
            },
        );
    }

    #[test]
    fn logout_request_and_response() {
        let req = [
            0x06, 0x80, 0, 0, 0, 0, 0, 0, // close session
            0, 0, 0, 0, 0, 0, 0, 0, //
            0x00, 0x00, 0x00, 0x07, 0x00, 0x01, 0, 0, // ITT, CID 1
            0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x04, //
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        roundtrip(
            &req,
            LogoutRequestRepr {
                reason: LogoutReason::CloseSession,
                itt: 7,
                cid: 1,
                cmdsn: 5,
                expstatsn: 4,
            },
        );
        let resp = [
            0x26, 0x80, 0, 0, 0, 0, 0, 0, //
            0, 0, 0, 0, 0, 0, 0, 0, //
            0x00, 0x00, 0x00, 0x07, 0, 0, 0, 0, //
            0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x06, //
            0x00, 0x00, 0x00, 0x46, 0, 0, 0, 0, //
            0x00, 0x02, 0x00, 0x14, 0, 0, 0, 0,
        ];
        roundtrip(
            &resp,
            LogoutResponseRepr {
                response: logout_response::CLOSED_SUCCESSFULLY,
                itt: 7,
                statsn: 4,
                expcmdsn: 6,
                maxcmdsn: 0x46,
                time2wait: 2,
                time2retain: 20,
            },
        );
        assert_eq!(LogoutReason::from_u8(9), LogoutReason::Other(9));
        assert_eq!(LogoutReason::from_u8(2).to_u8(), 2);
    }

    #[test]
    fn reject() {
        let bytes = [
            0x3f, 0x80, 0x09, 0, 0, 0, 0, 48, // invalid PDU field
            0, 0, 0, 0, 0, 0, 0, 0, //
            0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, //
            0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x03, //
            0x00, 0x00, 0x00, 0x43, 0x00, 0x00, 0x00, 0x00, //
            0, 0, 0, 0, 0, 0, 0, 0,
        ];
        let r = RejectRepr {
            reason: reject::INVALID_PDU_FIELD,
            statsn: 2,
            expcmdsn: 3,
            maxcmdsn: 0x43,
            datasn: 0,
        };
        let bhs = Bhs::new_checked(&bytes[..]).unwrap();
        assert_eq!(RejectRepr::parse(&bhs).unwrap(), r);
        assert_eq!(crate::wire::PduRepr::to_bhs(&r, 48).unwrap(), bytes);
    }

    #[test]
    fn async_message() {
        let bytes = [
            0x32, 0x80, 0, 0, 0, 0, 0, 0, //
            0x00, 0x01, 0, 0, 0, 0, 0, 0, //
            0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, //
            0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x06, //
            0x00, 0x00, 0x00, 0x46, 0x01, 0x00, 0x00, 0x00, // logout request
            0x00, 0x00, 0x00, 0x0a, 0, 0, 0, 0, // Parameter3 = 10
        ];
        roundtrip(
            &bytes,
            AsyncMessageRepr {
                lun: 0x0001_0000_0000_0000,
                statsn: 5,
                expcmdsn: 6,
                maxcmdsn: 0x46,
                async_event: async_event::LOGOUT_REQUEST,
                async_vcode: 0,
                parameter1: 0,
                parameter2: 0,
                parameter3: 10,
            },
        );
    }
}
