//! iSCSI PDU wire formats (RFC 7143 §11), in the style of smoltcp's `wire` module.
//!
//! * [`Bhs`] is a zero-copy view over a Basic Header Segment: check the length once with
//!   [`Bhs::new_checked`], after which no getter can fail or panic.
//! * Every PDU type has a plain `…Repr` struct with `parse` (from a `Bhs`) and `emit` (into a
//!   48-byte array). `parse` never panics, whatever the bytes; it re-checks the length itself, so a
//!   `Bhs::new_unchecked` view over a short buffer yields [`WireError::Truncated`].
//! * `emit` writes the whole BHS, with `TotalAHSLength = 0` and `DataSegmentLength = 0`; set the
//!   data segment length afterwards with [`Bhs::set_data_segment_len`] or use
//!   [`PduRepr::to_bhs`] which does both.
//!
//! All multi-byte fields are big-endian (network order). Byte offsets are named per PDU type
//! (`scsi_command::EDTL`, …) and the common ones live in [`field`].

use thiserror::Error;

mod ahs;
mod control;
mod login;
mod scsi;

pub use ahs::*;
pub use control::*;
pub use login::*;
pub use scsi::*;

/// Length of a Basic Header Segment.
pub const BHS_LEN: usize = 48;

/// Largest value the 24-bit DataSegmentLength field can hold.
pub const MAX_DATA_SEGMENT_LEN: u32 = (1 << 24) - 1;

/// Length of a header or data digest (CRC32C).
pub const DIGEST_LEN: usize = 4;

/// Reserved Initiator Task Tag (unsolicited target PDUs, NOP-Out pings without a task).
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// Byte offsets shared by every PDU type.
pub mod field {
    /// A byte range inside the BHS.
    pub type Field = core::ops::Range<usize>;

    /// Byte 0: bit 6 = Immediate, bits 0-5 = opcode.
    pub const OPCODE: usize = 0;
    /// Byte 1: bit 7 = Final (for most PDUs), the rest is opcode-specific.
    pub const FLAGS: usize = 1;
    /// Byte 4: TotalAHSLength in 4-byte words.
    pub const TOTAL_AHS_LEN: usize = 4;
    /// Bytes 5-7: DataSegmentLength (24-bit, bytes, without padding).
    pub const DATA_SEGMENT_LEN: Field = 5..8;
    /// Bytes 8-15: LUN (or opcode-specific).
    pub const LUN: Field = 8..16;
    /// Bytes 16-19: Initiator Task Tag.
    pub const ITT: Field = 16..20;

    pub(crate) const IMMEDIATE_BIT: u8 = 0x40;
    pub(crate) const OPCODE_MASK: u8 = 0x3f;
    pub(crate) const FINAL_BIT: u8 = 0x80;
}

/// Errors from parsing a PDU header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum WireError {
    /// The buffer is shorter than a BHS.
    #[error("buffer too short for a basic header segment")]
    Truncated,
    /// The opcode does not belong to any iSCSI PDU.
    #[error("unknown opcode {0:#04x}")]
    UnknownOpcode(u8),
    /// `Repr::parse` was given a header of another PDU type.
    #[error("opcode {got:#04x} where {expected:#04x} was expected")]
    WrongOpcode {
        /// Opcode the Repr parses.
        expected: u8,
        /// Opcode found in the header.
        got: u8,
    },
    /// A field has a value the protocol forbids.
    #[error("invalid value in field {0}")]
    InvalidField(&'static str),
}

/// PDU opcodes (RFC 7143 §11.2.1.2). Initiator opcodes are 0x00-0x1f, target opcodes 0x20-0x3f.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Opcode {
    NopOut = 0x00,
    ScsiCommand = 0x01,
    TaskMgmtRequest = 0x02,
    LoginRequest = 0x03,
    TextRequest = 0x04,
    DataOut = 0x05,
    LogoutRequest = 0x06,
    SnackRequest = 0x10,
    NopIn = 0x20,
    ScsiResponse = 0x21,
    TaskMgmtResponse = 0x22,
    LoginResponse = 0x23,
    TextResponse = 0x24,
    DataIn = 0x25,
    LogoutResponse = 0x26,
    R2T = 0x31,
    AsyncMessage = 0x32,
    Reject = 0x3f,
}

impl Opcode {
    /// Maps a 6-bit opcode to an [`Opcode`]; `None` for unassigned values (including vendor
    /// specific 0x1c-0x1e / 0x3c-0x3e, which we do not support).
    pub fn from_u8(value: u8) -> Option<Opcode> {
        Some(match value {
            0x00 => Opcode::NopOut,
            0x01 => Opcode::ScsiCommand,
            0x02 => Opcode::TaskMgmtRequest,
            0x03 => Opcode::LoginRequest,
            0x04 => Opcode::TextRequest,
            0x05 => Opcode::DataOut,
            0x06 => Opcode::LogoutRequest,
            0x10 => Opcode::SnackRequest,
            0x20 => Opcode::NopIn,
            0x21 => Opcode::ScsiResponse,
            0x22 => Opcode::TaskMgmtResponse,
            0x23 => Opcode::LoginResponse,
            0x24 => Opcode::TextResponse,
            0x25 => Opcode::DataIn,
            0x26 => Opcode::LogoutResponse,
            0x31 => Opcode::R2T,
            0x32 => Opcode::AsyncMessage,
            0x3f => Opcode::Reject,
            _ => return None,
        })
    }

    /// True for PDUs an initiator sends.
    pub fn is_initiator(self) -> bool {
        (self as u8) < 0x20
    }
}

impl From<Opcode> for u8 {
    fn from(op: Opcode) -> u8 {
        op as u8
    }
}

/// Rounds `n` up to a multiple of 4 (data segments and AHS are padded to 4 bytes).
/// Saturates instead of overflowing.
pub fn pad4(n: usize) -> usize {
    n.saturating_add(3) & !3
}

/// A zero-copy view over a Basic Header Segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bhs<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Bhs<T> {
    /// Wraps a buffer without checking its length. Getters panic on a short buffer; prefer
    /// [`Bhs::new_checked`]. (`Repr::parse` re-checks, so it never panics either way.)
    pub const fn new_unchecked(buffer: T) -> Bhs<T> {
        Bhs { buffer }
    }

    /// Wraps a buffer, failing with [`WireError::Truncated`] if it is shorter than 48 bytes.
    pub fn new_checked(buffer: T) -> Result<Bhs<T>, WireError> {
        let bhs = Bhs::new_unchecked(buffer);
        bhs.check_len()?;
        Ok(bhs)
    }

    /// Fails with [`WireError::Truncated`] if the buffer is shorter than a BHS.
    pub fn check_len(&self) -> Result<(), WireError> {
        if self.buffer.as_ref().len() < BHS_LEN {
            Err(WireError::Truncated)
        } else {
            Ok(())
        }
    }

    /// Consumes the view, returning the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The 48 header bytes.
    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..BHS_LEN]
    }

    pub(crate) fn byte(&self, offset: usize) -> u8 {
        self.buffer.as_ref()[offset]
    }

    pub(crate) fn be16(&self, offset: usize) -> u16 {
        let d = self.buffer.as_ref();
        u16::from_be_bytes([d[offset], d[offset + 1]])
    }

    pub(crate) fn be32(&self, offset: usize) -> u32 {
        let d = self.buffer.as_ref();
        u32::from_be_bytes([d[offset], d[offset + 1], d[offset + 2], d[offset + 3]])
    }

    pub(crate) fn be64(&self, offset: usize) -> u64 {
        (u64::from(self.be32(offset)) << 32) | u64::from(self.be32(offset + 4))
    }

    pub(crate) fn bytes<const N: usize>(&self, offset: usize) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buffer.as_ref()[offset..offset + N]);
        out
    }

    /// The 6-bit opcode, whether or not it is assigned.
    pub fn opcode_raw(&self) -> u8 {
        self.byte(field::OPCODE) & field::OPCODE_MASK
    }

    /// The opcode, or `None` if it is not an iSCSI opcode we know.
    pub fn opcode(&self) -> Option<Opcode> {
        Opcode::from_u8(self.opcode_raw())
    }

    /// The Immediate (I) bit: byte 0, bit 6.
    pub fn immediate(&self) -> bool {
        self.byte(field::OPCODE) & field::IMMEDIATE_BIT != 0
    }

    /// The Final (F) bit: byte 1, bit 7. (For Login PDUs this bit is Transit.)
    pub fn final_flag(&self) -> bool {
        self.byte(field::FLAGS) & field::FINAL_BIT != 0
    }

    /// Byte 1, whole.
    pub fn flags(&self) -> u8 {
        self.byte(field::FLAGS)
    }

    /// TotalAHSLength converted to bytes (the field counts 4-byte words).
    pub fn total_ahs_len(&self) -> usize {
        usize::from(self.byte(field::TOTAL_AHS_LEN)) * 4
    }

    /// DataSegmentLength in bytes, without padding.
    pub fn data_segment_len(&self) -> u32 {
        let d = self.buffer.as_ref();
        u32::from_be_bytes([0, d[5], d[6], d[7]])
    }

    /// The LUN field (bytes 8-15) as a raw big-endian u64 (SAM LUN encoding untouched).
    pub fn lun(&self) -> u64 {
        self.be64(field::LUN.start)
    }

    /// Initiator Task Tag.
    pub fn itt(&self) -> u32 {
        self.be32(field::ITT.start)
    }

    /// Total bytes of the PDU on the wire after this BHS: AHS, optional header digest, padded
    /// data segment and optional data digest (present only when the data segment is non-empty).
    pub fn trailing_len(&self, header_digest: bool, data_digest: bool) -> usize {
        let data = self.data_segment_len() as usize;
        let mut n = self.total_ahs_len() + pad4(data);
        if header_digest {
            n += DIGEST_LEN;
        }
        if data_digest && data > 0 {
            n += DIGEST_LEN;
        }
        n
    }

    /// Whole PDU length on the wire, BHS included.
    pub fn pdu_len(&self, header_digest: bool, data_digest: bool) -> usize {
        BHS_LEN + self.trailing_len(header_digest, data_digest)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Bhs<T> {
    fn bytes_mut(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    /// Sets the 6-bit opcode, keeping the Immediate bit.
    pub fn set_opcode(&mut self, opcode: Opcode) {
        let b = &mut self.bytes_mut()[field::OPCODE];
        *b = (*b & !field::OPCODE_MASK) | (opcode as u8);
    }

    /// Sets the Immediate bit.
    pub fn set_immediate(&mut self, value: bool) {
        let b = &mut self.bytes_mut()[field::OPCODE];
        if value {
            *b |= field::IMMEDIATE_BIT;
        } else {
            *b &= !field::IMMEDIATE_BIT;
        }
    }

    /// Sets the Final bit.
    pub fn set_final_flag(&mut self, value: bool) {
        let b = &mut self.bytes_mut()[field::FLAGS];
        if value {
            *b |= field::FINAL_BIT;
        } else {
            *b &= !field::FINAL_BIT;
        }
    }

    /// Sets TotalAHSLength from a byte count, which must be a multiple of 4 and at most 1020.
    pub fn set_total_ahs_len(&mut self, bytes: usize) -> Result<(), WireError> {
        if bytes & 3 != 0 || bytes / 4 > 255 {
            return Err(WireError::InvalidField("TotalAHSLength"));
        }
        self.bytes_mut()[field::TOTAL_AHS_LEN] = (bytes / 4) as u8;
        Ok(())
    }

    /// Sets DataSegmentLength; fails if it does not fit in 24 bits.
    pub fn set_data_segment_len(&mut self, len: u32) -> Result<(), WireError> {
        if len > MAX_DATA_SEGMENT_LEN {
            return Err(WireError::InvalidField("DataSegmentLength"));
        }
        let b = len.to_be_bytes();
        self.bytes_mut()[field::DATA_SEGMENT_LEN].copy_from_slice(&b[1..4]);
        Ok(())
    }

    /// Sets the LUN field.
    pub fn set_lun(&mut self, lun: u64) {
        self.bytes_mut()[field::LUN].copy_from_slice(&lun.to_be_bytes());
    }

    /// Sets the Initiator Task Tag.
    pub fn set_itt(&mut self, itt: u32) {
        self.bytes_mut()[field::ITT].copy_from_slice(&itt.to_be_bytes());
    }
}

// ---- helpers for Repr emit (fixed-size buffer: constant offsets cannot go out of range) ----

pub(crate) fn put_u16(buf: &mut [u8; BHS_LEN], offset: usize, v: u16) {
    buf[offset..offset + 2].copy_from_slice(&v.to_be_bytes());
}

pub(crate) fn put_u32(buf: &mut [u8; BHS_LEN], offset: usize, v: u32) {
    buf[offset..offset + 4].copy_from_slice(&v.to_be_bytes());
}

pub(crate) fn put_u64(buf: &mut [u8; BHS_LEN], offset: usize, v: u64) {
    buf[offset..offset + 8].copy_from_slice(&v.to_be_bytes());
}

/// Starts an emit: zeroes the header and writes the opcode byte.
pub(crate) fn start(buf: &mut [u8; BHS_LEN], opcode: Opcode, immediate: bool) {
    *buf = [0; BHS_LEN];
    buf[field::OPCODE] = opcode as u8 | if immediate { field::IMMEDIATE_BIT } else { 0 };
}

pub(crate) fn check_opcode<T: AsRef<[u8]>>(
    bhs: &Bhs<T>,
    expected: Opcode,
) -> Result<(), WireError> {
    bhs.check_len()?;
    let got = bhs.opcode_raw();
    if got != expected as u8 {
        return Err(WireError::WrongOpcode {
            expected: expected as u8,
            got,
        });
    }
    Ok(())
}

pub(crate) fn bit(b: u8, mask: u8) -> bool {
    b & mask != 0
}

pub(crate) fn flag(value: bool, mask: u8) -> u8 {
    if value {
        mask
    } else {
        0
    }
}

/// Common interface of every `…Repr`, so generic code (the runtime's send path, fuzzers) can
/// handle them uniformly. Each Repr also has inherent `parse`/`emit` methods with the same
/// behaviour, so the trait need not be in scope.
pub trait PduRepr: Sized {
    /// The PDU's opcode.
    const OPCODE: Opcode;

    /// Parses the header fields; never panics.
    fn parse_bhs<T: AsRef<[u8]>>(bhs: &Bhs<T>) -> Result<Self, WireError>;

    /// Writes the header (AHS length and data segment length zero).
    fn emit_bhs(&self, buf: &mut [u8; BHS_LEN]);

    /// Emits the header with the given DataSegmentLength.
    fn to_bhs(&self, data_segment_len: u32) -> Result<[u8; BHS_LEN], WireError> {
        let mut buf = [0u8; BHS_LEN];
        self.emit_bhs(&mut buf);
        Bhs::new_unchecked(&mut buf[..]).set_data_segment_len(data_segment_len)?;
        Ok(buf)
    }
}

macro_rules! impl_pdu_repr {
    ($ty:ty, $op:expr) => {
        impl $crate::wire::PduRepr for $ty {
            const OPCODE: $crate::wire::Opcode = $op;
            fn parse_bhs<T: AsRef<[u8]>>(
                bhs: &$crate::wire::Bhs<T>,
            ) -> Result<Self, $crate::wire::WireError> {
                <$ty>::parse(bhs)
            }
            fn emit_bhs(&self, buf: &mut [u8; $crate::wire::BHS_LEN]) {
                self.emit(buf)
            }
        }
    };
}
pub(crate) use impl_pdu_repr;

/// Any parsed header, for dispatch on the opcode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnyPdu {
    NopOut(NopOutRepr),
    ScsiCommand(ScsiCommandRepr),
    TaskMgmtRequest(TaskMgmtRequestRepr),
    LoginRequest(LoginRequestRepr),
    TextRequest(TextRequestRepr),
    DataOut(DataOutRepr),
    LogoutRequest(LogoutRequestRepr),
    SnackRequest(SnackRequestRepr),
    NopIn(NopInRepr),
    ScsiResponse(ScsiResponseRepr),
    TaskMgmtResponse(TaskMgmtResponseRepr),
    LoginResponse(LoginResponseRepr),
    TextResponse(TextResponseRepr),
    DataIn(DataInRepr),
    LogoutResponse(LogoutResponseRepr),
    R2T(R2tRepr),
    AsyncMessage(AsyncMessageRepr),
    Reject(RejectRepr),
}

impl AnyPdu {
    /// Parses any header by its opcode.
    pub fn parse<T: AsRef<[u8]>>(bhs: &Bhs<T>) -> Result<AnyPdu, WireError> {
        bhs.check_len()?;
        let op = bhs
            .opcode()
            .ok_or(WireError::UnknownOpcode(bhs.opcode_raw()))?;
        Ok(match op {
            Opcode::NopOut => AnyPdu::NopOut(NopOutRepr::parse(bhs)?),
            Opcode::ScsiCommand => AnyPdu::ScsiCommand(ScsiCommandRepr::parse(bhs)?),
            Opcode::TaskMgmtRequest => AnyPdu::TaskMgmtRequest(TaskMgmtRequestRepr::parse(bhs)?),
            Opcode::LoginRequest => AnyPdu::LoginRequest(LoginRequestRepr::parse(bhs)?),
            Opcode::TextRequest => AnyPdu::TextRequest(TextRequestRepr::parse(bhs)?),
            Opcode::DataOut => AnyPdu::DataOut(DataOutRepr::parse(bhs)?),
            Opcode::LogoutRequest => AnyPdu::LogoutRequest(LogoutRequestRepr::parse(bhs)?),
            Opcode::SnackRequest => AnyPdu::SnackRequest(SnackRequestRepr::parse(bhs)?),
            Opcode::NopIn => AnyPdu::NopIn(NopInRepr::parse(bhs)?),
            Opcode::ScsiResponse => AnyPdu::ScsiResponse(ScsiResponseRepr::parse(bhs)?),
            Opcode::TaskMgmtResponse => AnyPdu::TaskMgmtResponse(TaskMgmtResponseRepr::parse(bhs)?),
            Opcode::LoginResponse => AnyPdu::LoginResponse(LoginResponseRepr::parse(bhs)?),
            Opcode::TextResponse => AnyPdu::TextResponse(TextResponseRepr::parse(bhs)?),
            Opcode::DataIn => AnyPdu::DataIn(DataInRepr::parse(bhs)?),
            Opcode::LogoutResponse => AnyPdu::LogoutResponse(LogoutResponseRepr::parse(bhs)?),
            Opcode::R2T => AnyPdu::R2T(R2tRepr::parse(bhs)?),
            Opcode::AsyncMessage => AnyPdu::AsyncMessage(AsyncMessageRepr::parse(bhs)?),
            Opcode::Reject => AnyPdu::Reject(RejectRepr::parse(bhs)?),
        })
    }

    /// Emits the header (data segment length zero).
    pub fn emit(&self, buf: &mut [u8; BHS_LEN]) {
        match self {
            AnyPdu::NopOut(r) => r.emit(buf),
            AnyPdu::ScsiCommand(r) => r.emit(buf),
            AnyPdu::TaskMgmtRequest(r) => r.emit(buf),
            AnyPdu::LoginRequest(r) => r.emit(buf),
            AnyPdu::TextRequest(r) => r.emit(buf),
            AnyPdu::DataOut(r) => r.emit(buf),
            AnyPdu::LogoutRequest(r) => r.emit(buf),
            AnyPdu::SnackRequest(r) => r.emit(buf),
            AnyPdu::NopIn(r) => r.emit(buf),
            AnyPdu::ScsiResponse(r) => r.emit(buf),
            AnyPdu::TaskMgmtResponse(r) => r.emit(buf),
            AnyPdu::LoginResponse(r) => r.emit(buf),
            AnyPdu::TextResponse(r) => r.emit(buf),
            AnyPdu::DataIn(r) => r.emit(buf),
            AnyPdu::LogoutResponse(r) => r.emit(buf),
            AnyPdu::R2T(r) => r.emit(buf),
            AnyPdu::AsyncMessage(r) => r.emit(buf),
            AnyPdu::Reject(r) => r.emit(buf),
        }
    }
}

/// Reject reason codes (RFC 7143 §11.17.1).
pub mod reject {
    /// Data (payload) digest error; the initiator retransmits.
    pub const DATA_DIGEST_ERROR: u8 = 0x02;
    /// SNACK reject.
    pub const SNACK_REJECT: u8 = 0x03;
    /// Protocol error (e.g. SNACK for a status already acknowledged).
    pub const PROTOCOL_ERROR: u8 = 0x04;
    /// Command not supported.
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x05;
    /// Immediate command rejected: too many immediate commands.
    pub const IMMEDIATE_COMMAND_REJECT: u8 = 0x06;
    /// Task in progress.
    pub const TASK_IN_PROGRESS: u8 = 0x07;
    /// Invalid data ACK.
    pub const INVALID_DATA_ACK: u8 = 0x08;
    /// Invalid PDU field.
    pub const INVALID_PDU_FIELD: u8 = 0x09;
    /// Long operation reject: cannot generate a Target Transfer Tag, out of resources.
    pub const LONG_OP_REJECT: u8 = 0x0a;
    /// Deprecated (negotiation reset); MUST NOT be used.
    pub const NEGOTIATION_RESET: u8 = 0x0b;
    /// Waiting for Logout.
    pub const WAITING_FOR_LOGOUT: u8 = 0x0c;
}

/// Login response Status-Class / Status-Detail pairs (RFC 7143 §11.13.5).
pub mod login_status {
    /// Success.
    pub const SUCCESS: (u8, u8) = (0x00, 0x00);
    /// Target moved temporarily (redirection).
    pub const TARGET_MOVED_TEMPORARILY: (u8, u8) = (0x01, 0x01);
    /// Target moved permanently (redirection).
    pub const TARGET_MOVED_PERMANENTLY: (u8, u8) = (0x01, 0x02);
    /// Initiator error (miscellaneous, including protocol violations during login).
    pub const INITIATOR_ERROR: (u8, u8) = (0x02, 0x00);
    /// Authentication failed.
    pub const AUTHENTICATION_FAILURE: (u8, u8) = (0x02, 0x01);
    /// The initiator is not allowed access to the target.
    pub const AUTHORIZATION_FAILURE: (u8, u8) = (0x02, 0x02);
    /// The target does not exist.
    pub const NOT_FOUND: (u8, u8) = (0x02, 0x03);
    /// The target has been removed.
    pub const TARGET_REMOVED: (u8, u8) = (0x02, 0x04);
    /// Requested iSCSI version range not supported.
    pub const UNSUPPORTED_VERSION: (u8, u8) = (0x02, 0x05);
    /// Too many connections in the session.
    pub const TOO_MANY_CONNECTIONS: (u8, u8) = (0x02, 0x06);
    /// A required key (e.g. InitiatorName, TargetName) is missing.
    pub const MISSING_PARAMETER: (u8, u8) = (0x02, 0x07);
    /// Cannot include this connection in the session.
    pub const CANT_INCLUDE_IN_SESSION: (u8, u8) = (0x02, 0x08);
    /// Session type not supported.
    pub const SESSION_TYPE_NOT_SUPPORTED: (u8, u8) = (0x02, 0x09);
    /// Session (TSIH) does not exist.
    pub const SESSION_DOES_NOT_EXIST: (u8, u8) = (0x02, 0x0a);
    /// Request invalid during login.
    pub const INVALID_DURING_LOGIN: (u8, u8) = (0x02, 0x0b);
    /// Target error (miscellaneous).
    pub const TARGET_ERROR: (u8, u8) = (0x03, 0x00);
    /// Service unavailable.
    pub const SERVICE_UNAVAILABLE: (u8, u8) = (0x03, 0x01);
    /// Out of resources.
    pub const OUT_OF_RESOURCES: (u8, u8) = (0x03, 0x02);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcode_roundtrip() {
        for v in 0u8..=0x3f {
            if let Some(op) = Opcode::from_u8(v) {
                assert_eq!(op as u8, v);
            }
        }
        assert_eq!(Opcode::from_u8(0x07), None);
        assert_eq!(Opcode::from_u8(0x40), None);
        assert!(Opcode::ScsiCommand.is_initiator());
        assert!(!Opcode::DataIn.is_initiator());
    }

    #[test]
    fn pad4_values() {
        assert_eq!(pad4(0), 0);
        assert_eq!(pad4(1), 4);
        assert_eq!(pad4(4), 4);
        assert_eq!(pad4(5), 8);
        assert_eq!(pad4(usize::MAX), usize::MAX & !3);
    }

    #[test]
    fn bhs_common_fields() {
        let mut b = [0u8; BHS_LEN];
        b[0] = 0x41;
        b[1] = 0x80;
        b[4] = 2;
        b[5..8].copy_from_slice(&[0x01, 0x02, 0x03]);
        b[8..16].copy_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        b[16..20].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        let bhs = Bhs::new_checked(&b[..]).unwrap();
        assert_eq!(bhs.opcode_raw(), 0x01);
        assert_eq!(bhs.opcode(), Some(Opcode::ScsiCommand));
        assert!(bhs.immediate());
        assert!(bhs.final_flag());
        assert_eq!(bhs.total_ahs_len(), 8);
        assert_eq!(bhs.data_segment_len(), 0x010203);
        assert_eq!(bhs.lun(), 0x0001_0000_0000_0000);
        assert_eq!(bhs.itt(), 0xdead_beef);
        // 48 + 8 AHS + 4 HD + pad4(0x010203) + 4 DD
        assert_eq!(bhs.pdu_len(true, true), 48 + 8 + 4 + 0x010204 + 4);
        assert_eq!(bhs.pdu_len(false, false), 48 + 8 + 0x010204);
    }

    #[test]
    fn bhs_setters() {
        let mut b = [0u8; BHS_LEN];
        let mut bhs = Bhs::new_checked(&mut b[..]).unwrap();
        bhs.set_opcode(Opcode::DataIn);
        bhs.set_immediate(true);
        bhs.set_final_flag(true);
        bhs.set_total_ahs_len(12).unwrap();
        assert!(bhs.set_total_ahs_len(13).is_err());
        assert!(bhs.set_total_ahs_len(1024).is_err());
        bhs.set_data_segment_len(0xabcdef).unwrap();
        assert!(bhs.set_data_segment_len(1 << 24).is_err());
        bhs.set_lun(0x0102_0304_0506_0708);
        bhs.set_itt(7);
        bhs.set_immediate(false);
        assert_eq!(
            &b[..20],
            &[0x25, 0x80, 0, 0, 3, 0xab, 0xcd, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 7]
        );
    }

    #[test]
    fn bhs_too_short() {
        assert_eq!(
            Bhs::new_checked(&[0u8; 47][..]).unwrap_err(),
            WireError::Truncated
        );
        let short = Bhs::new_unchecked(&[0u8; 10][..]);
        assert_eq!(AnyPdu::parse(&short).unwrap_err(), WireError::Truncated);
        assert_eq!(
            ScsiCommandRepr::parse(&short).unwrap_err(),
            WireError::Truncated
        );
    }

    #[test]
    fn any_pdu_unknown_opcode() {
        let mut b = [0u8; BHS_LEN];
        b[0] = 0x07;
        assert_eq!(
            AnyPdu::parse(&Bhs::new_unchecked(&b[..])).unwrap_err(),
            WireError::UnknownOpcode(7)
        );
    }

    #[test]
    fn to_bhs_sets_length() {
        let r = NopInRepr {
            lun: 0,
            itt: 1,
            ttt: RESERVED_TAG,
            statsn: 2,
            expcmdsn: 3,
            maxcmdsn: 4,
        };
        let b = r.to_bhs(100).unwrap();
        let bhs = Bhs::new_checked(&b[..]).unwrap();
        assert_eq!(bhs.data_segment_len(), 100);
        assert_eq!(NopInRepr::parse(&bhs).unwrap(), r);
        assert!(r.to_bhs(1 << 24).is_err());
    }

    fn roundtrip<R: PduRepr + PartialEq + core::fmt::Debug>(bhs: &Bhs<&[u8]>) {
        if let Ok(r) = R::parse_bhs(bhs) {
            let mut buf = [0u8; BHS_LEN];
            r.emit_bhs(&mut buf);
            assert_eq!(R::parse_bhs(&Bhs::new_unchecked(&buf[..])).unwrap(), r);
        }
    }

    proptest::proptest! {
        #[test]
        fn every_parse_is_total(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..100)) {
            let bhs = Bhs::new_unchecked(&data[..]);
            let parsed = AnyPdu::parse(&bhs);
            if data.len() < BHS_LEN {
                proptest::prop_assert_eq!(parsed, Err(WireError::Truncated));
            } else if let Ok(any) = parsed {
                let mut buf = [0u8; BHS_LEN];
                any.emit(&mut buf);
                proptest::prop_assert_eq!(AnyPdu::parse(&Bhs::new_unchecked(&buf[..])).unwrap(), any);
            }
            roundtrip::<NopOutRepr>(&bhs);
            roundtrip::<ScsiCommandRepr>(&bhs);
            roundtrip::<TaskMgmtRequestRepr>(&bhs);
            roundtrip::<LoginRequestRepr>(&bhs);
            roundtrip::<TextRequestRepr>(&bhs);
            roundtrip::<DataOutRepr>(&bhs);
            roundtrip::<LogoutRequestRepr>(&bhs);
            roundtrip::<SnackRequestRepr>(&bhs);
            roundtrip::<NopInRepr>(&bhs);
            roundtrip::<ScsiResponseRepr>(&bhs);
            roundtrip::<TaskMgmtResponseRepr>(&bhs);
            roundtrip::<LoginResponseRepr>(&bhs);
            roundtrip::<TextResponseRepr>(&bhs);
            roundtrip::<DataInRepr>(&bhs);
            roundtrip::<LogoutResponseRepr>(&bhs);
            roundtrip::<R2tRepr>(&bhs);
            roundtrip::<AsyncMessageRepr>(&bhs);
            roundtrip::<RejectRepr>(&bhs);
        }

        #[test]
        fn every_opcode_dispatches(op in 0u8..0x40, rest in proptest::collection::vec(proptest::prelude::any::<u8>(), 47)) {
            let mut data = vec![op];
            data.extend_from_slice(&rest);
            let bhs = Bhs::new_checked(&data[..]).unwrap();
            match (Opcode::from_u8(op), AnyPdu::parse(&bhs)) {
                (None, r) => proptest::prop_assert_eq!(r, Err(WireError::UnknownOpcode(op))),
                (Some(_), Ok(_)) | (Some(Opcode::DataIn | Opcode::TextRequest | Opcode::TextResponse), Err(WireError::InvalidField(_))) => {}
                (Some(o), Err(e)) => proptest::prop_assert!(false, "{:?} failed: {:?}", o, e),
            }
        }
    }
}
