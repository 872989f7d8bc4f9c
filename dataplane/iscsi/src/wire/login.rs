//! Login Request / Response PDUs (RFC 7143 §11.12, §11.13).

use super::{
    bit, check_opcode, field, flag, impl_pdu_repr, put_u16, put_u32, start, Bhs, Opcode, WireError,
    BHS_LEN,
};

/// Login Request / Response byte offsets.
pub mod login_pdu {
    use super::field::Field;
    /// Byte 1: Transit (T).
    pub const TRANSIT_BIT: u8 = 0x80;
    /// Byte 1: Continue (C).
    pub const CONTINUE_BIT: u8 = 0x40;
    /// Byte 1: CSG in bits 2-3.
    pub const CSG_SHIFT: u8 = 2;
    /// Byte 1: NSG in bits 0-1.
    pub const STAGE_MASK: u8 = 0x03;
    /// Version-max.
    pub const VERSION_MAX: usize = 2;
    /// Version-min (request) / Version-active (response).
    pub const VERSION_MIN: usize = 3;
    pub const ISID: Field = 8..14;
    pub const TSIH: Field = 14..16;
    /// Request: Connection ID.
    pub const CID: Field = 20..22;
    /// Request: CmdSN / response: StatSN.
    pub const SN1: Field = 24..28;
    /// Request: ExpStatSN / response: ExpCmdSN.
    pub const SN2: Field = 28..32;
    /// Response: MaxCmdSN.
    pub const MAXCMDSN: Field = 32..36;
    /// Response: Status-Class.
    pub const STATUS_CLASS: usize = 36;
    /// Response: Status-Detail.
    pub const STATUS_DETAIL: usize = 37;
}
use login_pdu::*;

/// Login stages (CSG / NSG values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// 0: SecurityNegotiation.
    Security,
    /// 1: LoginOperationalNegotiation.
    Operational,
    /// 2: reserved; never valid.
    Reserved,
    /// 3: FullFeaturePhase (only as NSG).
    FullFeature,
}

impl Stage {
    /// Maps the 2-bit stage field.
    pub fn from_bits(v: u8) -> Stage {
        match v & STAGE_MASK {
            0 => Stage::Security,
            1 => Stage::Operational,
            2 => Stage::Reserved,
            _ => Stage::FullFeature,
        }
    }

    /// The 2-bit stage field.
    pub fn bits(self) -> u8 {
        match self {
            Stage::Security => 0,
            Stage::Operational => 1,
            Stage::Reserved => 2,
            Stage::FullFeature => 3,
        }
    }
}

/// A Login Request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginRequestRepr {
    /// T: the initiator wants to move to `nsg`.
    pub transit: bool,
    /// C: the text continues in the next PDU.
    pub cont: bool,
    pub csg: Stage,
    pub nsg: Stage,
    pub version_max: u8,
    pub version_min: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub cid: u16,
    pub cmdsn: u32,
    pub expstatsn: u32,
}

impl LoginRequestRepr {
    /// Parses a Login Request header. Stage and flag semantics are checked by
    /// [`crate::login::LoginState`], which must answer them with a login status, not a Reject.
    pub fn parse<T: AsRef<[u8]>>(bhs: &Bhs<T>) -> Result<Self, WireError> {
        check_opcode(bhs, Opcode::LoginRequest)?;
        let f = bhs.flags();
        Ok(LoginRequestRepr {
            transit: bit(f, TRANSIT_BIT),
            cont: bit(f, CONTINUE_BIT),
            csg: Stage::from_bits(f >> CSG_SHIFT),
            nsg: Stage::from_bits(f),
            version_max: bhs.byte(VERSION_MAX),
            version_min: bhs.byte(VERSION_MIN),
            isid: bhs.bytes::<6>(ISID.start),
            tsih: bhs.be16(TSIH.start),
            itt: bhs.itt(),
            cid: bhs.be16(CID.start),
            cmdsn: bhs.be32(SN1.start),
            expstatsn: bhs.be32(SN2.start),
        })
    }

    /// Emits the header (Immediate bit set, as RFC 7143 requires for Login Requests).
    pub fn emit(&self, buf: &mut [u8; BHS_LEN]) {
        start(buf, Opcode::LoginRequest, true);
        buf[field::FLAGS] = flag(self.transit, TRANSIT_BIT)
            | flag(self.cont, CONTINUE_BIT)
            | (self.csg.bits() << CSG_SHIFT)
            | self.nsg.bits();
        buf[VERSION_MAX] = self.version_max;
        buf[VERSION_MIN] = self.version_min;
        buf[ISID].copy_from_slice(&self.isid);
        put_u16(buf, TSIH.start, self.tsih);
        put_u32(buf, field::ITT.start, self.itt);
        put_u16(buf, CID.start, self.cid);
        put_u32(buf, SN1.start, self.cmdsn);
        put_u32(buf, SN2.start, self.expstatsn);
    }
}
impl_pdu_repr!(LoginRequestRepr, Opcode::LoginRequest);

/// A Login Response header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginResponseRepr {
    pub transit: bool,
    pub cont: bool,
    pub csg: Stage,
    pub nsg: Stage,
    pub version_max: u8,
    pub version_active: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub statsn: u32,
    pub expcmdsn: u32,
    pub maxcmdsn: u32,
    pub status_class: u8,
    pub status_detail: u8,
}

impl LoginResponseRepr {
    /// Parses a Login Response header.
    pub fn parse<T: AsRef<[u8]>>(bhs: &Bhs<T>) -> Result<Self, WireError> {
        check_opcode(bhs, Opcode::LoginResponse)?;
        let f = bhs.flags();
        Ok(LoginResponseRepr {
            transit: bit(f, TRANSIT_BIT),
            cont: bit(f, CONTINUE_BIT),
            csg: Stage::from_bits(f >> CSG_SHIFT),
            nsg: Stage::from_bits(f),
            version_max: bhs.byte(VERSION_MAX),
            version_active: bhs.byte(VERSION_MIN),
            isid: bhs.bytes::<6>(ISID.start),
            tsih: bhs.be16(TSIH.start),
            itt: bhs.itt(),
            statsn: bhs.be32(SN1.start),
            expcmdsn: bhs.be32(SN2.start),
            maxcmdsn: bhs.be32(MAXCMDSN.start),
            status_class: bhs.byte(STATUS_CLASS),
            status_detail: bhs.byte(STATUS_DETAIL),
        })
    }

    /// Emits the header.
    pub fn emit(&self, buf: &mut [u8; BHS_LEN]) {
        start(buf, Opcode::LoginResponse, false);
        buf[field::FLAGS] = flag(self.transit, TRANSIT_BIT)
            | flag(self.cont, CONTINUE_BIT)
            | (self.csg.bits() << CSG_SHIFT)
            | self.nsg.bits();
        buf[VERSION_MAX] = self.version_max;
        buf[VERSION_MIN] = self.version_active;
        buf[ISID].copy_from_slice(&self.isid);
        put_u16(buf, TSIH.start, self.tsih);
        put_u32(buf, field::ITT.start, self.itt);
        put_u32(buf, SN1.start, self.statsn);
        put_u32(buf, SN2.start, self.expcmdsn);
        put_u32(buf, MAXCMDSN.start, self.maxcmdsn);
        buf[STATUS_CLASS] = self.status_class;
        buf[STATUS_DETAIL] = self.status_detail;
    }
}
impl_pdu_repr!(LoginResponseRepr, Opcode::LoginResponse);

#[cfg(test)]
mod tests {
    use super::*;

    /// open-iscsi's first login PDU: I, T=1, CSG=0 NSG=1, ISID 00023d000001, DSL 0x4d.
    static LOGIN_REQ: [u8; 48] = [
        0x43, 0x81, 0x00, 0x00, 0x00, 0x00, 0x00, 0x4d, //
        0x00, 0x02, 0x3d, 0x00, 0x00, 0x01, 0x00, 0x00, // ISID, TSIH 0
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // ITT 0, CID 0
        0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, // CmdSN 1, ExpStatSN 0
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    fn req_repr() -> LoginRequestRepr {
        LoginRequestRepr {
            transit: true,
            cont: false,
            csg: Stage::Security,
            nsg: Stage::Operational,
            version_max: 0,
            version_min: 0,
            isid: [0x00, 0x02, 0x3d, 0x00, 0x00, 0x01],
            tsih: 0,
            itt: 0,
            cid: 0,
            cmdsn: 1,
            expstatsn: 0,
        }
    }

    #[test]
    fn login_request_deconstruct() {
        let bhs = Bhs::new_checked(&LOGIN_REQ[..]).unwrap();
        assert_eq!(LoginRequestRepr::parse(&bhs).unwrap(), req_repr());
        assert_eq!(bhs.data_segment_len(), 0x4d);
    }

    #[test]
    fn login_request_construct() {
        let b = crate::wire::PduRepr::to_bhs(&req_repr(), 0x4d).unwrap();
        assert_eq!(b, LOGIN_REQ);
    }

    #[test]
    fn login_request_too_short() {
        assert_eq!(
            LoginRequestRepr::parse(&Bhs::new_unchecked(&LOGIN_REQ[..47])).unwrap_err(),
            WireError::Truncated
        );
    }

    static LOGIN_RESP: [u8; 48] = [
        0x23, 0x87, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, // T, CSG=1 NSG=3
        0x00, 0x02, 0x3d, 0x00, 0x00, 0x01, 0x00, 0x05, // ISID, TSIH 5
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // ITT
        0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, // StatSN, ExpCmdSN
        0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, // MaxCmdSN, status 0/0
        0, 0, 0, 0, 0, 0, 0, 0,
    ];

    #[test]
    fn login_response_roundtrip() {
        let r = LoginResponseRepr {
            transit: true,
            cont: false,
            csg: Stage::Operational,
            nsg: Stage::FullFeature,
            version_max: 0,
            version_active: 0,
            isid: [0x00, 0x02, 0x3d, 0x00, 0x00, 0x01],
            tsih: 5,
            itt: 0,
            statsn: 1,
            expcmdsn: 1,
            maxcmdsn: 0x40,
            status_class: 0,
            status_detail: 0,
        };
        let bhs = Bhs::new_checked(&LOGIN_RESP[..]).unwrap();
        assert_eq!(LoginResponseRepr::parse(&bhs).unwrap(), r);
        assert_eq!(crate::wire::PduRepr::to_bhs(&r, 16).unwrap(), LOGIN_RESP);
        assert_eq!(
            LoginResponseRepr::parse(&Bhs::new_unchecked(&LOGIN_RESP[..3])).unwrap_err(),
            WireError::Truncated
        );
    }

    #[test]
    fn stage_bits() {
        for v in 0..4 {
            assert_eq!(Stage::from_bits(v).bits(), v);
        }
    }
}
