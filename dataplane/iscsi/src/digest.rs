//! Header and data digests (RFC 7143 §11.1, appendix B.4 of RFC 3720).
//!
//! iSCSI digests are CRC32C (Castagnoli), with the usual reflected algorithm, initial value
//! 0xffffffff and final complement. The 32-bit result is transmitted **least significant byte
//! first**: RFC 3720 B.4 lists the CRC of 32 zero bytes as the wire bytes `aa 36 91 8a`, i.e.
//! the value 0x8a9136aa in little-endian order (Linux sends `cpu_to_le32(crc)`, as does SPDK).
//!
//! The header digest covers the BHS and any AHS; the data digest covers the data segment
//! *including its padding* to a multiple of 4 bytes.

use crate::wire::DIGEST_LEN;

/// CRC32C of `bytes`.
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// Continues a CRC32C over more bytes (for digests over scattered buffers).
pub fn crc32c_append(crc: u32, bytes: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, bytes)
}

/// The 4 wire bytes of a digest value.
pub fn to_wire(crc: u32) -> [u8; DIGEST_LEN] {
    crc.to_le_bytes()
}

/// The digest value from its 4 wire bytes.
pub fn from_wire(bytes: [u8; DIGEST_LEN]) -> u32 {
    u32::from_le_bytes(bytes)
}

/// Digest of a data segment: the data followed by zero padding up to a multiple of 4.
pub fn data_digest(data: &[u8]) -> u32 {
    let pad = crate::wire::pad4(data.len()) - data.len();
    crc32c_append(crc32c(data), &[0u8; 3][..pad])
}

/// Checks a received digest (wire bytes) against the bytes it covers.
pub fn verify(covered: &[u8], wire: [u8; DIGEST_LEN]) -> bool {
    crc32c(covered) == from_wire(wire)
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 3720 appendix B.4: "CRCs" test vectors, given as the bytes on the wire.
    #[test]
    fn rfc3720_b4_zeros() {
        assert_eq!(to_wire(crc32c(&[0u8; 32])), [0xaa, 0x36, 0x91, 0x8a]);
    }

    #[test]
    fn rfc3720_b4_ones() {
        assert_eq!(to_wire(crc32c(&[0xffu8; 32])), [0x43, 0xab, 0xa8, 0x62]);
    }

    #[test]
    fn rfc3720_b4_incrementing() {
        let v: Vec<u8> = (0u8..32).collect();
        assert_eq!(to_wire(crc32c(&v)), [0x4e, 0x79, 0xdd, 0x46]);
    }

    #[test]
    fn rfc3720_b4_decrementing() {
        let v: Vec<u8> = (0u8..32).rev().collect();
        assert_eq!(to_wire(crc32c(&v)), [0x5c, 0xdb, 0x3f, 0x11]);
    }

    #[test]
    fn rfc3720_b4_iscsi_read_pdu() {
        let pdu: [u8; 48] = [
            0x01, 0xc0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x14,
            0x00, 0x00, 0x00, 0x18, 0x28, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        ];
        let wire = [0x56, 0x3a, 0x96, 0xd9];
        assert_eq!(to_wire(crc32c(&pdu)), wire);
        assert!(verify(&pdu, wire));
        assert!(!verify(&pdu[1..], wire));
    }

    #[test]
    fn standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn data_digest_includes_padding() {
        assert_eq!(data_digest(b"abcde"), crc32c(b"abcde\0\0\0"));
        assert_eq!(data_digest(b"abcd"), crc32c(b"abcd"));
        assert_eq!(crc32c_append(crc32c(b"ab"), b"cd"), crc32c(b"abcd"));
        assert_eq!(from_wire(to_wire(0x1234_5678)), 0x1234_5678);
    }
}
