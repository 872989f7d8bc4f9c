//! Additional Header Segments (RFC 7143 §11.2.2): the bytes between the BHS and the header
//! digest, `Bhs::total_ahs_len()` long.
//!
//! Each AHS is `AHSLength (2 bytes) | AHSType (1) | AHS-specific (1) | data`, where AHSLength
//! counts the bytes after AHSType (the specific byte and the data), and the whole AHS is padded
//! to a multiple of 4 bytes.

use super::{pad4, ScsiCommandRepr, WireError};

/// AHSType of an Extended CDB AHS (CDB bytes beyond the 16 in the BHS).
pub const AHS_TYPE_EXTENDED_CDB: u8 = 1;
/// AHSType of a Bidirectional Read Expected Data Transfer Length AHS.
pub const AHS_TYPE_BIDI_READ_LEN: u8 = 2;
/// Longest CDB we accept (SPC allows 260 bytes).
pub const MAX_CDB_LEN: usize = 260;

/// One parsed AHS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ahs<'a> {
    /// CDB bytes 16.. of a long CDB.
    ExtendedCdb(&'a [u8]),
    /// Expected length of the read part of a bidirectional command.
    BidiReadExpectedLen(u32),
    /// Any other type; the runtime should reject the PDU.
    Other { ahs_type: u8, data: &'a [u8] },
}

/// Most AHS entries in one PDU (TotalAHSLength is at most 1020 bytes).
pub const MAX_AHS: usize = 255;

/// Parses the AHS bytes of a PDU.
pub fn parse_ahs(mut buf: &[u8]) -> Result<Vec<Ahs<'_>>, WireError> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        if out.len() >= MAX_AHS || buf.len() < 4 {
            return Err(WireError::InvalidField("AHS"));
        }
        let len = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
        let ahs_type = buf[2];
        // AHSLength covers the specific byte plus data, so it is at least 1.
        if len == 0 {
            return Err(WireError::InvalidField("AHSLength"));
        }
        let total = pad4(3 + len);
        if total > buf.len() {
            return Err(WireError::InvalidField("AHSLength"));
        }
        let data = &buf[4..3 + len];
        out.push(match ahs_type {
            AHS_TYPE_EXTENDED_CDB => Ahs::ExtendedCdb(data),
            AHS_TYPE_BIDI_READ_LEN if data.len() == 4 => {
                Ahs::BidiReadExpectedLen(u32::from_be_bytes([data[0], data[1], data[2], data[3]]))
            }
            AHS_TYPE_BIDI_READ_LEN => return Err(WireError::InvalidField("bidi AHS length")),
            other => Ahs::Other {
                ahs_type: other,
                data,
            },
        });
        buf = &buf[total..];
    }
    Ok(out)
}

/// Encodes an Extended CDB AHS for the CDB bytes beyond 16 (`ext` must be non-empty and at
/// most `MAX_CDB_LEN - 16` bytes).
pub fn emit_extended_cdb(ext: &[u8]) -> Result<Vec<u8>, WireError> {
    if ext.is_empty() || ext.len() > MAX_CDB_LEN - 16 {
        return Err(WireError::InvalidField("extended CDB length"));
    }
    let len = ext.len() + 1;
    let mut out = Vec::with_capacity(pad4(3 + len));
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.push(AHS_TYPE_EXTENDED_CDB);
    out.push(0);
    out.extend_from_slice(ext);
    out.resize(pad4(3 + len), 0);
    Ok(out)
}

impl ScsiCommandRepr {
    /// The complete CDB: the 16 BHS bytes followed by any Extended CDB AHS bytes. Fails if
    /// there is more than one Extended CDB AHS or the CDB would exceed [`MAX_CDB_LEN`].
    pub fn full_cdb(&self, ahs: &[Ahs<'_>]) -> Result<Vec<u8>, WireError> {
        let mut exts = ahs.iter().filter_map(|a| match a {
            Ahs::ExtendedCdb(d) => Some(*d),
            _ => None,
        });
        let ext = exts.next();
        if exts.next().is_some() {
            return Err(WireError::InvalidField("two extended CDB AHS"));
        }
        let ext = ext.unwrap_or_default();
        if 16 + ext.len() > MAX_CDB_LEN {
            return Err(WireError::InvalidField("extended CDB length"));
        }
        let mut cdb = self.cdb.to_vec();
        cdb.extend_from_slice(ext);
        Ok(cdb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extended_cdb_roundtrip() {
        let ext: Vec<u8> = (16u8..32).collect();
        let bytes = emit_extended_cdb(&ext).unwrap();
        // AHSLength 17, type 1, reserved, 16 bytes, padded to 20.
        assert_eq!(&bytes[..4], &[0x00, 0x11, 0x01, 0x00]);
        assert_eq!(bytes.len(), 20);
        let parsed = parse_ahs(&bytes).unwrap();
        assert_eq!(parsed, vec![Ahs::ExtendedCdb(&ext)]);
        let cmd = ScsiCommandRepr {
            immediate: false,
            final_flag: true,
            read: true,
            write: false,
            attr: 1,
            lun: 0,
            itt: 1,
            edtl: 0,
            cmdsn: 0,
            expstatsn: 0,
            cdb: [0x7f; 16],
        };
        let full = cmd.full_cdb(&parsed).unwrap();
        assert_eq!(full.len(), 32);
        assert_eq!(&full[16..], &ext[..]);
        assert_eq!(cmd.full_cdb(&[]).unwrap(), vec![0x7f; 16]);
        assert!(cmd
            .full_cdb(&[Ahs::ExtendedCdb(&ext), Ahs::ExtendedCdb(&ext)])
            .is_err());
    }

    #[test]
    fn bidi_and_unknown() {
        let bytes = [
            0x00, 0x05, 0x02, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x01, 0x09, 0x00,
        ];
        assert_eq!(
            parse_ahs(&bytes).unwrap(),
            vec![
                Ahs::BidiReadExpectedLen(4096),
                Ahs::Other {
                    ahs_type: 9,
                    data: &[]
                }
            ]
        );
    }

    #[test]
    fn malformed() {
        assert!(parse_ahs(&[]).unwrap().is_empty());
        assert!(parse_ahs(&[0, 0, 1, 0]).is_err());
        assert!(parse_ahs(&[0, 9, 1, 0, 1, 2, 3, 4]).is_err());
        assert!(parse_ahs(&[0, 1, 1]).is_err());
        assert!(parse_ahs(&[0x00, 0x02, 0x02, 0x00]).is_err());
        assert!(emit_extended_cdb(&[]).is_err());
        assert!(emit_extended_cdb(&[0; 245]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let _ = parse_ahs(&data);
        }
    }
}
