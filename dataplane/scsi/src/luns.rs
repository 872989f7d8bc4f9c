//! Target-level answers: REPORT LUNS and commands addressed to a LUN that
//! does not exist.

use crate::cdb::op;
use crate::sense::Sense;
use crate::{Reply, ReplyData, ScsiStatus};

/// 8-byte LUN structure (SAM-5 4.7): peripheral addressing below 256,
/// flat space addressing below 16384, else the value is taken as an
/// already encoded LUN.
fn encode_lun(lun: u64) -> [u8; 8] {
    let mut b = [0u8; 8];
    if lun < 256 {
        b[1] = lun as u8;
    } else if lun < 0x4000 {
        b[0] = 0x40 | (lun >> 8) as u8;
        b[1] = lun as u8;
    } else {
        b = lun.to_be_bytes();
    }
    b
}

/// REPORT LUNS for a target exposing `luns`.
pub fn report_luns(luns: &[u64], cdb: &[u8]) -> Reply {
    let byte = |i: usize| cdb.get(i).copied().unwrap_or(0);
    if cdb.len() < 12 || byte(0) != op::REPORT_LUNS {
        return Reply::check(&Sense::invalid_field_in_iu());
    }
    if byte(11) & 0x04 != 0 {
        return Reply::check(&Sense::invalid_field_cdb(11, Some(2)));
    }
    // SELECT REPORT 0/1/2 (we have no well-known LUNs, so all list the same set).
    let select = byte(2);
    if select > 2 {
        return Reply::check(&Sense::invalid_field_cdb(2, None));
    }
    let alloc = u32::from_be_bytes([byte(6), byte(7), byte(8), byte(9)]);
    // SPC-4 6.33: an allocation length below 16 is an invalid field.
    if alloc < 16 {
        return Reply::check(&Sense::invalid_field_cdb(6, None));
    }
    let list: Vec<u64> = if select == 1 {
        Vec::new()
    } else {
        luns.to_vec()
    };
    let mut d = ((list.len() * 8) as u32).to_be_bytes().to_vec();
    d.extend_from_slice(&[0; 4]);
    for l in list {
        d.extend_from_slice(&encode_lun(l));
    }
    Reply::data(d, alloc)
}

/// Answer for a command addressed to a LUN the target does not have.
pub fn lun_not_present(cdb: &[u8]) -> Reply {
    let byte = |i: usize| cdb.get(i).copied().unwrap_or(0);
    match byte(0) {
        op::INQUIRY => {
            let alloc = u32::from(u16::from_be_bytes([byte(3), byte(4)]));
            let mut d = vec![0u8; 36];
            d[0] = 0x7F; // qualifier 3: not capable of supporting a LU here; type 0x1f
            d[2] = 0x06;
            d[3] = 0x12;
            d[4] = 31;
            Reply::data(d, alloc)
        }
        op::REQUEST_SENSE => {
            let s = Sense::lun_not_supported();
            let d = if byte(1) & 1 != 0 {
                s.to_descriptor()
            } else {
                s.to_fixed()
            };
            Reply {
                status: ScsiStatus::Good,
                data: ReplyData::Bytes({
                    let mut d = d;
                    d.truncate(usize::from(byte(4)));
                    d
                }),
                sense: None,
            }
        }
        _ => Reply::check(&Sense::lun_not_supported()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cdb(alloc: u32, select: u8) -> [u8; 12] {
        let mut c = [0u8; 12];
        c[0] = 0xA0;
        c[2] = select;
        c[6..10].copy_from_slice(&alloc.to_be_bytes());
        c
    }

    #[test]
    fn report_luns_lists_and_truncates() {
        let r = report_luns(&[0, 1, 300], &cdb(64, 0));
        let ReplyData::Bytes(d) = r.data else {
            panic!()
        };
        assert_eq!(&d[0..4], &24u32.to_be_bytes());
        assert_eq!(&d[8..16], &[0; 8]);
        assert_eq!(&d[16..18], &[0, 1]);
        assert_eq!(&d[24..26], &[0x41, 0x2C]);
        let r = report_luns(&[0, 1, 300], &cdb(16, 0));
        let ReplyData::Bytes(d) = r.data else {
            panic!()
        };
        assert_eq!(d.len(), 16);
        assert_eq!(&d[0..4], &24u32.to_be_bytes());
    }

    #[test]
    fn report_luns_errors() {
        let r = report_luns(&[0], &cdb(8, 0));
        assert_eq!(r.status, ScsiStatus::CheckCondition);
        assert_eq!(r.sense.unwrap().triple(), (5, 0x24, 0));
        let r = report_luns(&[0], &cdb(64, 9));
        assert_eq!(r.status, ScsiStatus::CheckCondition);
    }

    #[test]
    fn absent_lun() {
        let r = lun_not_present(&[0x12, 0, 0, 0, 96, 0]);
        let ReplyData::Bytes(d) = r.data else {
            panic!()
        };
        assert_eq!(d[0], 0x7F);
        let r = lun_not_present(&[0x03, 0, 0, 0, 18, 0]);
        assert_eq!(r.status, ScsiStatus::Good);
        let ReplyData::Bytes(d) = r.data else {
            panic!()
        };
        assert_eq!((d[2], d[12], d[13]), (5, 0x25, 0));
        let r = lun_not_present(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(r.sense.unwrap().triple(), (5, 0x25, 0));
    }
}
