//! SCSI Command / Response, Data-Out / Data-In, R2T and SNACK PDUs.

use super::{
    bit, check_opcode, field, flag, impl_pdu_repr, put_u32, put_u64, start, Bhs, Opcode, WireError,
    BHS_LEN, RESERVED_TAG,
};

/// SCSI Command (opcode 0x01) byte offsets (RFC 7143 §11.3).
pub mod scsi_command {
    use super::field::Field;
    /// Byte 1 flag bits.
    pub const READ_BIT: u8 = 0x40;
    /// Byte 1 flag bits.
    pub const WRITE_BIT: u8 = 0x20;
    /// Byte 1, low 3 bits: task attribute.
    pub const ATTR_MASK: u8 = 0x07;
    /// Expected Data Transfer Length.
    pub const EDTL: Field = 20..24;
    /// CmdSN.
    pub const CMDSN: Field = 24..28;
    /// ExpStatSN.
    pub const EXPSTATSN: Field = 28..32;
    /// SCSI Command Descriptor Block (first 16 bytes; longer CDBs continue in an AHS).
    pub const CDB: Field = 32..48;
}

/// Task attributes (byte 1, bits 0-2 of a SCSI Command).
pub mod task_attr {
    pub const UNTAGGED: u8 = 0;
    pub const SIMPLE: u8 = 1;
    pub const ORDERED: u8 = 2;
    pub const HEAD_OF_QUEUE: u8 = 3;
    pub const ACA: u8 = 4;
}

/// A SCSI Command PDU header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScsiCommandRepr {
    pub immediate: bool,
    pub final_flag: bool,
    pub read: bool,
    pub write: bool,
    /// Task attribute, see [`task_attr`].
    pub attr: u8,
    pub lun: u64,
    pub itt: u32,
    /// Expected Data Transfer Length.
    pub edtl: u32,
    pub cmdsn: u32,
    pub expstatsn: u32,
    pub cdb: [u8; 16],
}

impl ScsiCommandRepr {
    /// Parses a SCSI Command header.
    pub fn parse<T: AsRef<[u8]>>(bhs: &Bhs<T>) -> Result<Self, WireError> {
        use scsi_command::*;
        check_opcode(bhs, Opcode::ScsiCommand)?;
        let f = bhs.flags();
        Ok(ScsiCommandRepr {
            immediate: bhs.immediate(),
            final_flag: bhs.final_flag(),
            read: bit(f, READ_BIT),
            write: bit(f, WRITE_BIT),
            attr: f & ATTR_MASK,
            lun: bhs.lun(),
            itt: bhs.itt(),
            edtl: bhs.be32(EDTL.start),
            cmdsn: bhs.be32(CMDSN.start),
            expstatsn: bhs.be32(EXPSTATSN.start),
            cdb: bhs.bytes::<16>(CDB.start),
        })
    }

    /// Emits the header.
    pub fn emit(&self, buf: &mut [u8; BHS_LEN]) {
        use scsi_command::*;
        start(buf, Opcode::ScsiCommand, self.immediate);
        buf[field::FLAGS] = flag(self.final_flag, field::FINAL_BIT)
            | flag(self.read, READ_BIT)
            | flag(self.write, WRITE_BIT)
            | (self.attr & ATTR_MASK);
        put_u64(buf, field::LUN.start, self.lun);
        put_u32(buf, field::ITT.start, self.itt);
        put_u32(buf, EDTL.start, self.edtl);
        put_u32(buf, CMDSN.start, self.cmdsn);
        put_u32(buf, EXPSTATSN.start, self.expstatsn);
        buf[CDB].copy_from_slice(&self.cdb);
    }
}
impl_pdu_repr!(ScsiCommandRepr, Opcode::ScsiCommand);

/// SCSI Response (opcode 0x21) byte offsets (RFC 7143 §11.4).
pub mod scsi_response {
    use super::field::Field;
    /// Byte 1: bidirectional read residual overflow (o).
    pub const BIDI_OVERFLOW_BIT: u8 = 0x10;
    /// Byte 1: bidirectional read residual underflow (u).
    pub const BIDI_UNDERFLOW_BIT: u8 = 0x08;
    /// Byte 1: residual overflow (O).
    pub const OVERFLOW_BIT: u8 = 0x04;
    /// Byte 1: residual underflow (U).
    pub const UNDERFLOW_BIT: u8 = 0x02;
    /// iSCSI service response.
    pub const RESPONSE: usize = 2;
    /// SCSI status.
    pub const STATUS: usize = 3;
    pub const SNACK_TAG: Field = 20..24;
    pub const STATSN: Field = 24..28;
    pub const EXPCMDSN: Field = 28..32;
    pub const MAXCMDSN: Field = 32..36;
    pub const EXPDATASN: Field = 36..40;
    pub const BIDI_RESIDUAL: Field = 40..44;
    pub const RESIDUAL: Field = 44..48;
}

/// iSCSI service response codes of a SCSI Response.
pub mod service_response {
    /// Command completed at target (the SCSI status is meaningful).
    pub const COMPLETED: u8 = 0x00;
    /// Target failure.
    pub const TARGET_FAILURE: u8 = 0x01;
}

/// Residual flags of a SCSI Response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScsiResponseFlags {
    pub bidi_overflow: bool,
    pub bidi_underflow: bool,
    pub overflow: bool,
    pub underflow: bool,
}

/// A SCSI Response PDU header. Sense data, if any, goes in the data segment as a 2-byte
/// SenseLength followed by the sense bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScsiResponseRepr {
    pub flags: ScsiResponseFlags,
    /// iSCSI service response, see [`service_response`].
    pub response: u8,
    /// SCSI status (0x00 GOOD, 0x02 CHECK CONDITION, ...).
    pub status: u8,
    pub itt: u32,
    pub snack_tag: u32,
    pub statsn: u32,
    pub expcmdsn: u32,
    pub maxcmdsn: u32,
    pub expdatasn: u32,
    pub bidi_residual: u32,
    pub residual: u32,
}

impl ScsiResponseRepr {
    /// A completed-at-target response with `status` and no residual; the caller fills the
    /// sequence numbers.
    pub fn new(itt: u32, status: u8) -> Self {
        ScsiResponseRepr {
            flags: ScsiResponseFlags::default(),
            response: service_response::COMPLETED,
            status,
            itt,
            snack_tag: 0,
            statsn: 0,
            expcmdsn: 0,
            maxcmdsn: 0,
            expdatasn: 0,
            bidi_residual: 0,
            residual: 0,
        }
    }

    /// Sets the (uni-directional) residual from the Expected Data Transfer Length and the
    /// number of bytes the command actually wanted to transfer.
    pub fn with_residual(mut self, edtl: u32, transfer_len: u32) -> Self {
        self.flags.overflow = transfer_len > edtl;
        self.flags.underflow = transfer_len < edtl;
        self.residual = edtl.abs_diff(transfer_len);
        self
    }

    /// Parses a SCSI Response header.
    pub fn parse<T: AsRef<[u8]>>(bhs: &Bhs<T>) -> Result<Self, WireError> {
        use scsi_response::*;
        check_opcode(bhs, Opcode::ScsiResponse)?;
        let f = bhs.flags();
        Ok(ScsiResponseRepr {
            flags: ScsiResponseFlags {
                bidi_overflow: bit(f, BIDI_OVERFLOW_BIT),
                bidi_underflow: bit(f, BIDI_UNDERFLOW_BIT),
                overflow: bit(f, OVERFLOW_BIT),
                underflow: bit(f, UNDERFLOW_BIT),
            },
            response: bhs.byte(RESPONSE),
            status: bhs.byte(STATUS),
            itt: bhs.itt(),
            snack_tag: bhs.be32(SNACK_TAG.start),
            statsn: bhs.be32(STATSN.start),
            expcmdsn: bhs.be32(EXPCMDSN.start),
            maxcmdsn: bhs.be32(MAXCMDSN.start),
            expdatasn: bhs.be32(EXPDATASN.start),
            bidi_residual: bhs.be32(BIDI_RESIDUAL.start),
            residual: bhs.be32(RESIDUAL.start),
        })
    }

    /// Emits the header.
    pub fn emit(&self, buf: &mut [u8; BHS_LEN]) {
        use scsi_response::*;
        start(buf, Opcode::ScsiResponse, false);
        buf[field::FLAGS] = field::FINAL_BIT
            | flag(self.flags.bidi_overflow, BIDI_OVERFLOW_BIT)
            | flag(self.flags.bidi_underflow, BIDI_UNDERFLOW_BIT)
            | flag(self.flags.overflow, OVERFLOW_BIT)
            | flag(self.flags.underflow, UNDERFLOW_BIT);
        buf[RESPONSE] = self.response;
        buf[STATUS] = self.status;
        put_u32(buf, field::ITT.start, self.itt);
        put_u32(buf, SNACK_TAG.start, self.snack_tag);
        put_u32(buf, STATSN.start, self.statsn);
        put_u32(buf, EXPCMDSN.start, self.expcmdsn);
        put_u32(buf, MAXCMDSN.start, self.maxcmdsn);
        put_u32(buf, EXPDATASN.start, self.expdatasn);
        put_u32(buf, BIDI_RESIDUAL.start, self.bidi_residual);
        put_u32(buf, RESIDUAL.start, self.residual);
    }
}
impl_pdu_repr!(ScsiResponseRepr, Opcode::ScsiResponse);

/// SCSI Data-Out (opcode 0x05) byte offsets (RFC 7143 §11.7).
pub mod data_out {
    use super::field::Field;
    pub const TTT: Field = 20..24;
    pub const EXPSTATSN: Field = 28..32;
    pub const DATASN: Field = 36..40;
    pub const BUFFER_OFFSET: Field = 40..44;
}

/// A SCSI Data-Out PDU header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataOutRepr {
    pub final_flag: bool,
    pub lun: u64,
    pub itt: u32,
    /// Target Transfer Tag: from the R2T, or 0xffffffff for unsolicited data.
    pub ttt: u32,
    pub expstatsn: u32,
    pub datasn: u32,
    pub buffer_offset: u32,
}

impl DataOutRepr {
    /// Parses a Data-Out header.
    pub fn parse<T: AsRef<[u8]>>(bhs: &Bhs<T>) -> Result<Self, WireError> {
        use data_out::*;
        check_opcode(bhs, Opcode::DataOut)?;
        Ok(DataOutRepr {
            final_flag: bhs.final_flag(),
            lun: bhs.lun(),
            itt: bhs.itt(),
            ttt: bhs.be32(TTT.start),
            expstatsn: bhs.be32(EXPSTATSN.start),
            datasn: bhs.be32(DATASN.start),
            buffer_offset: bhs.be32(BUFFER_OFFSET.start),
        })
    }

    /// Emits the header.
    pub fn emit(&self, buf: &mut [u8; BHS_LEN]) {
        use data_out::*;
        start(buf, Opcode::DataOut, false);
        buf[field::FLAGS] = flag(self.final_flag, field::FINAL_BIT);
        put_u64(buf, field::LUN.start, self.lun);
        put_u32(buf, field::ITT.start, self.itt);
        put_u32(buf, TTT.start, self.ttt);
        put_u32(buf, EXPSTATSN.start, self.expstatsn);
        put_u32(buf, DATASN.start, self.datasn);
        put_u32(buf, BUFFER_OFFSET.start, self.buffer_offset);
    }
}
impl_pdu_repr!(DataOutRepr, Opcode::DataOut);

/// SCSI Data-In (opcode 0x25) byte offsets (RFC 7143 §11.7).
pub mod data_in {
    use super::field::Field;
    /// Byte 1: Acknowledge (A).
    pub const ACK_BIT: u8 = 0x40;
    /// Byte 1: residual overflow (O).
    pub const OVERFLOW_BIT: u8 = 0x04;
    /// Byte 1: residual underflow (U).
    pub const UNDERFLOW_BIT: u8 = 0x02;
    /// Byte 1: status present (S).
    pub const STATUS_BIT: u8 = 0x01;
    /// SCSI status, valid only with S.
    pub const STATUS: usize = 3;
    pub const TTT: Field = 20..24;
    pub const STATSN: Field = 24..28;
    pub const EXPCMDSN: Field = 28..32;
    pub const MAXCMDSN: Field = 32..36;
    pub const DATASN: Field = 36..40;
    pub const BUFFER_OFFSET: Field = 40..44;
    pub const RESIDUAL: Field = 44..48;
}

/// A SCSI Data-In PDU header. With `status_present` it also completes the command (phase
/// collapse); then `final_flag` must be set too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataInRepr {
    pub final_flag: bool,
    pub ack: bool,
    pub overflow: bool,
    pub underflow: bool,
    pub status_present: bool,
    pub status: u8,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub statsn: u32,
    pub expcmdsn: u32,
    pub maxcmdsn: u32,
    pub datasn: u32,
    pub buffer_offset: u32,
    pub residual: u32,
}

impl DataInRepr {
    /// Parses a Data-In header. A header with S set and F clear is rejected (RFC 7143 §11.7.1).
    pub fn parse<T: AsRef<[u8]>>(bhs: &Bhs<T>) -> Result<Self, WireError> {
        use data_in::*;
        check_opcode(bhs, Opcode::DataIn)?;
        let f = bhs.flags();
        // Status, StatSN, residual and the O/U bits are meaningful only with S; without it
        // they are reserved and read as zero.
        let s = bit(f, STATUS_BIT);
        let repr = DataInRepr {
            final_flag: bhs.final_flag(),
            ack: bit(f, ACK_BIT),
            overflow: s && bit(f, OVERFLOW_BIT),
            underflow: s && bit(f, UNDERFLOW_BIT),
            status_present: s,
            status: if s { bhs.byte(STATUS) } else { 0 },
            lun: bhs.lun(),
            itt: bhs.itt(),
            ttt: bhs.be32(TTT.start),
            statsn: if s { bhs.be32(STATSN.start) } else { 0 },
            expcmdsn: bhs.be32(EXPCMDSN.start),
            maxcmdsn: bhs.be32(MAXCMDSN.start),
            datasn: bhs.be32(DATASN.start),
            buffer_offset: bhs.be32(BUFFER_OFFSET.start),
            residual: if s { bhs.be32(RESIDUAL.start) } else { 0 },
        };
        if repr.status_present && !repr.final_flag {
            return Err(WireError::InvalidField("Data-In S without F"));
        }
        Ok(repr)
    }

    /// Emits the header. Status and residual fields are written as zero unless
    /// `status_present` is set, as RFC 7143 requires.
    pub fn emit(&self, buf: &mut [u8; BHS_LEN]) {
        use data_in::*;
        start(buf, Opcode::DataIn, false);
        buf[field::FLAGS] = flag(self.final_flag, field::FINAL_BIT)
            | flag(self.ack, ACK_BIT)
            | flag(self.status_present && self.overflow, OVERFLOW_BIT)
            | flag(self.status_present && self.underflow, UNDERFLOW_BIT)
            | flag(self.status_present, STATUS_BIT);
        if self.status_present {
            buf[STATUS] = self.status;
            put_u32(buf, STATSN.start, self.statsn);
            put_u32(buf, RESIDUAL.start, self.residual);
        }
        put_u64(buf, field::LUN.start, self.lun);
        put_u32(buf, field::ITT.start, self.itt);
        put_u32(buf, TTT.start, self.ttt);
        put_u32(buf, EXPCMDSN.start, self.expcmdsn);
        put_u32(buf, MAXCMDSN.start, self.maxcmdsn);
        put_u32(buf, DATASN.start, self.datasn);
        put_u32(buf, BUFFER_OFFSET.start, self.buffer_offset);
    }
}
impl_pdu_repr!(DataInRepr, Opcode::DataIn);

/// Ready To Transfer (opcode 0x31) byte offsets (RFC 7143 §11.8).
pub mod r2t {
    use super::field::Field;
    pub const TTT: Field = 20..24;
    pub const STATSN: Field = 24..28;
    pub const EXPCMDSN: Field = 28..32;
    pub const MAXCMDSN: Field = 32..36;
    pub const R2TSN: Field = 36..40;
    pub const BUFFER_OFFSET: Field = 40..44;
    pub const DESIRED_LEN: Field = 44..48;
}

/// An R2T PDU header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct R2tRepr {
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub statsn: u32,
    pub expcmdsn: u32,
    pub maxcmdsn: u32,
    pub r2tsn: u32,
    pub buffer_offset: u32,
    /// Desired Data Transfer Length (never 0, at most MaxBurstLength).
    pub desired_len: u32,
}

impl R2tRepr {
    /// Parses an R2T header.
    pub fn parse<T: AsRef<[u8]>>(bhs: &Bhs<T>) -> Result<Self, WireError> {
        use r2t::*;
        check_opcode(bhs, Opcode::R2T)?;
        Ok(R2tRepr {
            lun: bhs.lun(),
            itt: bhs.itt(),
            ttt: bhs.be32(TTT.start),
            statsn: bhs.be32(STATSN.start),
            expcmdsn: bhs.be32(EXPCMDSN.start),
            maxcmdsn: bhs.be32(MAXCMDSN.start),
            r2tsn: bhs.be32(R2TSN.start),
            buffer_offset: bhs.be32(BUFFER_OFFSET.start),
            desired_len: bhs.be32(DESIRED_LEN.start),
        })
    }

    /// Emits the header.
    pub fn emit(&self, buf: &mut [u8; BHS_LEN]) {
        use r2t::*;
        start(buf, Opcode::R2T, false);
        buf[field::FLAGS] = field::FINAL_BIT;
        put_u64(buf, field::LUN.start, self.lun);
        put_u32(buf, field::ITT.start, self.itt);
        put_u32(buf, TTT.start, self.ttt);
        put_u32(buf, STATSN.start, self.statsn);
        put_u32(buf, EXPCMDSN.start, self.expcmdsn);
        put_u32(buf, MAXCMDSN.start, self.maxcmdsn);
        put_u32(buf, R2TSN.start, self.r2tsn);
        put_u32(buf, BUFFER_OFFSET.start, self.buffer_offset);
        put_u32(buf, DESIRED_LEN.start, self.desired_len);
    }
}
impl_pdu_repr!(R2tRepr, Opcode::R2T);

/// SNACK Request (opcode 0x10) byte offsets (RFC 7143 §11.16).
pub mod snack {
    use super::field::Field;
    /// Byte 1, low 4 bits: SNACK type.
    pub const TYPE_MASK: u8 = 0x0f;
    pub const TTT: Field = 20..24;
    pub const EXPSTATSN: Field = 28..32;
    pub const BEGRUN: Field = 40..44;
    pub const RUNLENGTH: Field = 44..48;
}

/// A SNACK Request header. We run ErrorRecoveryLevel 0, so the runtime answers these with a
/// Reject; the Repr exists so it can log what was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnackRequestRepr {
    /// 0 Data/R2T, 1 Status, 2 DataACK, 3 R-Data.
    pub snack_type: u8,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub expstatsn: u32,
    pub begrun: u32,
    pub runlength: u32,
}

impl SnackRequestRepr {
    /// Parses a SNACK header.
    pub fn parse<T: AsRef<[u8]>>(bhs: &Bhs<T>) -> Result<Self, WireError> {
        use snack::*;
        check_opcode(bhs, Opcode::SnackRequest)?;
        Ok(SnackRequestRepr {
            snack_type: bhs.flags() & TYPE_MASK,
            lun: bhs.lun(),
            itt: bhs.itt(),
            ttt: bhs.be32(TTT.start),
            expstatsn: bhs.be32(EXPSTATSN.start),
            begrun: bhs.be32(BEGRUN.start),
            runlength: bhs.be32(RUNLENGTH.start),
        })
    }

    /// Emits the header.
    pub fn emit(&self, buf: &mut [u8; BHS_LEN]) {
        use snack::*;
        start(buf, Opcode::SnackRequest, false);
        buf[field::FLAGS] = field::FINAL_BIT | (self.snack_type & TYPE_MASK);
        put_u64(buf, field::LUN.start, self.lun);
        put_u32(buf, field::ITT.start, self.itt);
        put_u32(buf, TTT.start, self.ttt);
        put_u32(buf, EXPSTATSN.start, self.expstatsn);
        put_u32(buf, BEGRUN.start, self.begrun);
        put_u32(buf, RUNLENGTH.start, self.runlength);
    }
}
impl_pdu_repr!(SnackRequestRepr, Opcode::SnackRequest);

/// Target Transfer Tag value meaning "no tag" (unsolicited Data-Out, Data-In without A).
pub const NO_TTT: u32 = RESERVED_TAG;

#[cfg(test)]
mod tests {
    use super::*;

    /// READ(10) of 8 blocks at LBA 0x1234, LUN 1, ITT 0x10, EDTL 4096, CmdSN 5, ExpStatSN 9.
    static SCSI_READ10: [u8; 48] = [
        0x01, 0xc1, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // opcode, F|R|SIMPLE, AHS, DSL
        0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // LUN
        0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x10, 0x00, // ITT, EDTL
        0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x09, // CmdSN, ExpStatSN
        0x28, 0x00, 0x00, 0x00, 0x12, 0x34, 0x00, 0x00, // CDB
        0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];

    fn read10_repr() -> ScsiCommandRepr {
        let mut cdb = [0u8; 16];
        cdb[..10].copy_from_slice(&[0x28, 0, 0, 0, 0x12, 0x34, 0, 0, 0x08, 0]);
        ScsiCommandRepr {
            immediate: false,
            final_flag: true,
            read: true,
            write: false,
            attr: task_attr::SIMPLE,
            lun: 0x0001_0000_0000_0000,
            itt: 0x10,
            edtl: 4096,
            cmdsn: 5,
            expstatsn: 9,
            cdb,
        }
    }

    #[test]
    fn scsi_command_deconstruct() {
        let bhs = Bhs::new_checked(&SCSI_READ10[..]).unwrap();
        assert_eq!(ScsiCommandRepr::parse(&bhs).unwrap(), read10_repr());
    }

    #[test]
    fn scsi_command_construct() {
        let mut buf = [0xffu8; 48];
        read10_repr().emit(&mut buf);
        assert_eq!(buf, SCSI_READ10);
    }

    #[test]
    fn scsi_command_too_short_and_wrong_opcode() {
        assert_eq!(
            Bhs::new_checked(&SCSI_READ10[..47]).unwrap_err(),
            WireError::Truncated
        );
        let bhs = Bhs::new_unchecked(&SCSI_READ10[..20]);
        assert_eq!(
            ScsiCommandRepr::parse(&bhs).unwrap_err(),
            WireError::Truncated
        );
        let bhs = Bhs::new_checked(&SCSI_READ10[..]).unwrap();
        assert_eq!(
            DataOutRepr::parse(&bhs).unwrap_err(),
            WireError::WrongOpcode {
                expected: 0x05,
                got: 0x01
            }
        );
    }

    static SCSI_RESPONSE: [u8; 48] = [
        0x21, 0x82, 0x00, 0x02, 0x00, 0x00, 0x00,
        0x12, // U, completed, CHECK CONDITION, DSL 18
        0, 0, 0, 0, 0, 0, 0, 0, //
        0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, // ITT, SNACK tag
        0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00, 0x06, // StatSN, ExpCmdSN
        0x00, 0x00, 0x00, 0x46, 0x00, 0x00, 0x00, 0x00, // MaxCmdSN, ExpDataSN
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, // bidi residual, residual
    ];

    fn response_repr() -> ScsiResponseRepr {
        let mut r = ScsiResponseRepr::new(0x10, 0x02).with_residual(4096, 3584);
        r.statsn = 7;
        r.expcmdsn = 6;
        r.maxcmdsn = 0x46;
        r
    }

    #[test]
    fn scsi_response_roundtrip() {
        let r = response_repr();
        assert!(r.flags.underflow && !r.flags.overflow);
        assert_eq!(r.residual, 512);
        let mut buf = [0u8; 48];
        r.emit(&mut buf);
        Bhs::new_unchecked(&mut buf[..])
            .set_data_segment_len(18)
            .unwrap();
        assert_eq!(buf, SCSI_RESPONSE);
        let bhs = Bhs::new_checked(&SCSI_RESPONSE[..]).unwrap();
        assert_eq!(ScsiResponseRepr::parse(&bhs).unwrap(), r);
        assert_eq!(bhs.data_segment_len(), 18);
        assert_eq!(
            ScsiResponseRepr::parse(&Bhs::new_unchecked(&SCSI_RESPONSE[..47])).unwrap_err(),
            WireError::Truncated
        );
    }

    #[test]
    fn scsi_response_overflow() {
        let r = ScsiResponseRepr::new(1, 0).with_residual(512, 4096);
        assert!(r.flags.overflow && !r.flags.underflow);
        assert_eq!(r.residual, 3584);
        let r = ScsiResponseRepr::new(1, 0).with_residual(512, 512);
        assert_eq!(r.flags, ScsiResponseFlags::default());
        assert_eq!(r.residual, 0);
    }

    static DATA_OUT: [u8; 48] = [
        0x05, 0x80, 0x00, 0x00, 0x00, 0x00, 0x20, 0x00, // F, DSL 8192
        0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // LUN
        0x00, 0x00, 0x00, 0x11, 0x00, 0x00, 0x00, 0x22, // ITT, TTT
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x08, // reserved, ExpStatSN
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, // reserved, DataSN
        0x00, 0x00, 0x60, 0x00, 0x00, 0x00, 0x00, 0x00, // offset, reserved
    ];

    #[test]
    fn data_out_roundtrip() {
        let r = DataOutRepr {
            final_flag: true,
            lun: 0x0001_0000_0000_0000,
            itt: 0x11,
            ttt: 0x22,
            expstatsn: 8,
            datasn: 3,
            buffer_offset: 0x6000,
        };
        let bhs = Bhs::new_checked(&DATA_OUT[..]).unwrap();
        assert_eq!(DataOutRepr::parse(&bhs).unwrap(), r);
        assert_eq!(r.to_bhs_len(8192), DATA_OUT);
        assert_eq!(
            DataOutRepr::parse(&Bhs::new_unchecked(&DATA_OUT[..40])).unwrap_err(),
            WireError::Truncated
        );
    }

    impl DataOutRepr {
        fn to_bhs_len(self, n: u32) -> [u8; 48] {
            crate::wire::PduRepr::to_bhs(&self, n).unwrap()
        }
    }

    static DATA_IN: [u8; 48] = [
        0x25, 0x83, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, // F|U|S, GOOD, DSL 512
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // LUN
        0x00, 0x00, 0x00, 0x10, 0xff, 0xff, 0xff, 0xff, // ITT, TTT
        0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00, 0x06, // StatSN, ExpCmdSN
        0x00, 0x00, 0x00, 0x46, 0x00, 0x00, 0x00, 0x01, // MaxCmdSN, DataSN
        0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x0e, 0x00, // offset, residual
    ];

    #[test]
    fn data_in_roundtrip() {
        let r = DataInRepr {
            final_flag: true,
            ack: false,
            overflow: false,
            underflow: true,
            status_present: true,
            status: 0,
            lun: 0,
            itt: 0x10,
            ttt: NO_TTT,
            statsn: 7,
            expcmdsn: 6,
            maxcmdsn: 0x46,
            datasn: 1,
            buffer_offset: 512,
            residual: 0xe00,
        };
        let bhs = Bhs::new_checked(&DATA_IN[..]).unwrap();
        assert_eq!(DataInRepr::parse(&bhs).unwrap(), r);
        let mut buf = [0u8; 48];
        r.emit(&mut buf);
        Bhs::new_unchecked(&mut buf[..])
            .set_data_segment_len(512)
            .unwrap();
        assert_eq!(buf, DATA_IN);
        assert_eq!(
            DataInRepr::parse(&Bhs::new_unchecked(&DATA_IN[..1])).unwrap_err(),
            WireError::Truncated
        );
    }

    #[test]
    fn data_in_status_without_final_rejected() {
        let mut b = DATA_IN;
        b[1] = 0x01;
        assert!(matches!(
            DataInRepr::parse(&Bhs::new_unchecked(&b[..])),
            Err(WireError::InvalidField(_))
        ));
    }

    #[test]
    fn data_in_parse_ignores_reserved_status_fields() {
        let mut b = DATA_IN;
        b[1] = 0x86; // F|O|U without S
        let r = DataInRepr::parse(&Bhs::new_unchecked(&b[..])).unwrap();
        assert!(!r.status_present && !r.overflow && !r.underflow);
        assert_eq!((r.status, r.statsn, r.residual), (0, 0, 0));
        assert_eq!((r.expcmdsn, r.maxcmdsn, r.datasn), (6, 0x46, 1));
    }

    #[test]
    fn data_in_without_status_zeroes_status_fields() {
        let r = DataInRepr {
            final_flag: false,
            ack: false,
            overflow: true,
            underflow: true,
            status_present: false,
            status: 0x02,
            lun: 0,
            itt: 1,
            ttt: NO_TTT,
            statsn: 99,
            expcmdsn: 6,
            maxcmdsn: 7,
            datasn: 0,
            buffer_offset: 0,
            residual: 5,
        };
        let mut buf = [0u8; 48];
        r.emit(&mut buf);
        assert_eq!(buf[1], 0);
        assert_eq!(buf[3], 0);
        assert_eq!(&buf[24..28], &[0, 0, 0, 0]);
        assert_eq!(&buf[44..48], &[0, 0, 0, 0]);
    }

    static R2T: [u8; 48] = [
        0x31, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //
        0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // LUN 2
        0x00, 0x00, 0x00, 0x20, 0x00, 0x00, 0x01, 0x00, // ITT, TTT
        0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00, 0x06, // StatSN, ExpCmdSN
        0x00, 0x00, 0x00, 0x46, 0x00, 0x00, 0x00, 0x00, // MaxCmdSN, R2TSN
        0x00, 0x01, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, // offset 65536, len 262144
    ];

    #[test]
    fn r2t_roundtrip() {
        let r = R2tRepr {
            lun: 0x0002_0000_0000_0000,
            itt: 0x20,
            ttt: 0x100,
            statsn: 7,
            expcmdsn: 6,
            maxcmdsn: 0x46,
            r2tsn: 0,
            buffer_offset: 65536,
            desired_len: 262144,
        };
        let bhs = Bhs::new_checked(&R2T[..]).unwrap();
        assert_eq!(R2tRepr::parse(&bhs).unwrap(), r);
        let mut buf = [0u8; 48];
        r.emit(&mut buf);
        assert_eq!(buf, R2T);
        assert_eq!(
            R2tRepr::parse(&Bhs::new_unchecked(&R2T[..0])).unwrap_err(),
            WireError::Truncated
        );
    }

    static SNACK: [u8; 48] = [
        0x10, 0x81, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // type 1 (status)
        0, 0, 0, 0, 0, 0, 0, 0, //
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // ITT, TTT
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, // reserved, ExpStatSN
        0, 0, 0, 0, 0, 0, 0, 0, //
        0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x02, // BegRun, RunLength
    ];

    #[test]
    fn snack_roundtrip() {
        let r = SnackRequestRepr {
            snack_type: 1,
            lun: 0,
            itt: RESERVED_TAG,
            ttt: RESERVED_TAG,
            expstatsn: 4,
            begrun: 3,
            runlength: 2,
        };
        assert_eq!(
            SnackRequestRepr::parse(&Bhs::new_checked(&SNACK[..]).unwrap()).unwrap(),
            r
        );
        let mut buf = [0u8; 48];
        r.emit(&mut buf);
        assert_eq!(buf, SNACK);
        assert_eq!(
            SnackRequestRepr::parse(&Bhs::new_unchecked(&SNACK[..47])).unwrap_err(),
            WireError::Truncated
        );
    }
}
