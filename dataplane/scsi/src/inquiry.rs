//! INQUIRY: standard data and the VPD pages (0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2).

use crate::sense::Sense;
use crate::{LuIdentity, Nexus};

/// VPD pages we return, in ascending order (VPD 0x00 lists them).
pub const SUPPORTED_VPD_PAGES: [u8; 6] = [0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2];

/// Standard INQUIRY data length we build (before allocation-length truncation).
const STD_INQUIRY_LEN: usize = 96;

/// Upper bounds reported in VPD 0xB0 and enforced by UNMAP / WRITE SAME.
pub const MAX_UNMAP_LBA_COUNT: u32 = 0x0010_0000;
pub const MAX_UNMAP_DESCRIPTORS: u32 = 256;
/// WRITE SAME bound per command (as LIO): keeps one command's expansion
/// work bounded; longer ranges are split by the host.
pub const MAX_WRITE_SAME_BLOCKS: u64 = 0xFFFF;
/// Largest COMPARE AND WRITE, in blocks (the CDB field is one byte).
pub const MAX_CAW_BLOCKS: u32 = 255;
/// Physical block size we report (READ CAPACITY(16) LOGICAL BLOCKS PER
/// PHYSICAL BLOCK EXPONENT, granularities of VPD 0xB0).
pub const PHYSICAL_BLOCK_BYTES: u32 = 4096;

/// Logical blocks per physical block (1 for 4096-byte logical blocks).
pub fn blocks_per_physical(block_size: u32) -> u32 {
    (PHYSICAL_BLOCK_BYTES / block_size.max(1)).max(1)
}

/// WRITE ATOMIC(16) limits, in logical blocks, reported in VPD 0xB0 and
/// enforced by the command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AtomicLimits {
    /// MAXIMUM ATOMIC TRANSFER LENGTH (never above MAXIMUM TRANSFER LENGTH).
    pub max_blocks: u32,
    /// ATOMIC ALIGNMENT: the first LBA must be a multiple of it.
    pub alignment: u32,
    /// ATOMIC TRANSFER LENGTH GRANULARITY: the length must be a multiple of it.
    pub granularity: u32,
}

impl AtomicLimits {
    /// Atomic writes are whole physical blocks, naturally aligned, up to the
    /// maximum transfer length (at most what the 16-bit CDB field can ask for).
    pub fn new(block_size: u32, max_transfer_blocks: u32) -> AtomicLimits {
        let unit = blocks_per_physical(block_size);
        let cap = match max_transfer_blocks {
            0 => u32::from(u16::MAX),
            n => n.min(u32::from(u16::MAX)),
        };
        AtomicLimits {
            max_blocks: cap / unit * unit,
            alignment: unit,
            granularity: unit,
        }
    }
}

/// What the VPD pages need to know about the LU and the asking nexus.
pub struct VpdContext<'a> {
    pub identity: &'a LuIdentity,
    pub nexus: &'a Nexus,
    pub block_size: u32,
    pub max_transfer_blocks: u32,
    pub unmap_supported: bool,
}

/// Copies `s` into `dst`, space-padded (ASCII fields of standard INQUIRY).
fn put_ascii(dst: &mut [u8], s: &str) {
    for (i, d) in dst.iter_mut().enumerate() {
        *d = s.as_bytes().get(i).copied().unwrap_or(b' ');
    }
}

/// Standard INQUIRY data for a connected direct-access block device.
pub fn standard(id: &LuIdentity) -> Vec<u8> {
    let mut d = vec![0u8; STD_INQUIRY_LEN];
    d[0] = 0x00; // peripheral qualifier 0, direct access block device
    d[2] = 0x06; // SPC-4
    d[3] = 0x10 | 0x02; // HISUP, response data format 2
    d[4] = (STD_INQUIRY_LEN - 5) as u8;
    d[5] = 0x10; // TPGS = 01b: implicit ALUA only
    d[7] = 0x02; // CMDQUE
    put_ascii(&mut d[8..16], &id.vendor);
    put_ascii(&mut d[16..32], &id.product);
    put_ascii(&mut d[32..36], &id.revision);
    // Version descriptors: SAM-5, iSCSI, SPC-4, SBC-3.
    for (i, v) in [0x00A0u16, 0x0960, 0x0460, 0x04C0].iter().enumerate() {
        d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    d
}

fn page(code: u8, body: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(body.len() + 4);
    p.push(0x00);
    p.push(code);
    p.extend_from_slice(&u16::try_from(body.len()).unwrap_or(u16::MAX).to_be_bytes());
    p.extend_from_slice(body);
    p
}

/// One identification descriptor of VPD 0x83.
fn designator(out: &mut Vec<u8>, proto_codeset: u8, piv_assoc_type: u8, value: &[u8]) {
    out.push(proto_codeset);
    out.push(piv_assoc_type);
    out.push(0);
    out.push(u8::try_from(value.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(value);
}

/// A SCSI name string designator value: NUL-terminated, padded to 4 bytes.
fn name_string(s: &str) -> Vec<u8> {
    let mut v: Vec<u8> = s.bytes().take(251).collect();
    v.push(0);
    v.resize(v.len().next_multiple_of(4), 0);
    v
}

fn device_identification(ctx: &VpdContext) -> Vec<u8> {
    let id = ctx.identity;
    let port = &ctx.nexus.port;
    let mut b = Vec::new();
    // LU designators: NAA (binary, association LU, type 3) and EUI-64 (type 2).
    designator(&mut b, 0x01, 0x03, &id.naa);
    designator(&mut b, 0x01, 0x02, &id.eui64);
    // T10 vendor ID based designator: vendor (8, space padded) + serial.
    let mut t10 = [b' '; 8].to_vec();
    put_ascii(&mut t10, &id.vendor);
    t10.extend_from_slice(id.serial.as_bytes());
    designator(&mut b, 0x02, 0x01, &t10);
    // Target port: SCSI name string "<iqn>,t,0x<tpgt>" (iSCSI, UTF-8, PIV, assoc port).
    let tp = format!("{},t,0x{:04x}", port.target_name, port.tpgt);
    designator(&mut b, 0x53, 0x98, &name_string(&tp));
    // Relative target port identifier.
    let mut rel = [0u8; 4];
    rel[2..].copy_from_slice(&port.relative_port_id.to_be_bytes());
    designator(&mut b, 0x51, 0x94, &rel);
    // Target port group.
    let mut tpg = [0u8; 4];
    tpg[2..].copy_from_slice(&port.tpg_id.to_be_bytes());
    designator(&mut b, 0x51, 0x95, &tpg);
    // Target device name (association: target device).
    designator(&mut b, 0x53, 0xA8, &name_string(&port.target_name));
    page(0x83, &b)
}

fn block_limits(ctx: &VpdContext) -> Vec<u8> {
    let mut b = vec![0u8; 0x3C];
    // Offsets below are page offsets minus the 4-byte header.
    // WSNZ=0: WRITE SAME with 0 blocks writes through the last LBA.
    let max_xfer = ctx.max_transfer_blocks;
    let caw = if max_xfer == 0 {
        MAX_CAW_BLOCKS
    } else {
        max_xfer.min(MAX_CAW_BLOCKS)
    };
    b[1] = caw as u8;
    let gran = blocks_per_physical(ctx.block_size) as u16;
    b[2..4].copy_from_slice(&gran.to_be_bytes());
    b[4..8].copy_from_slice(&max_xfer.to_be_bytes());
    b[8..12].copy_from_slice(&max_xfer.to_be_bytes());
    if ctx.unmap_supported {
        b[16..20].copy_from_slice(&MAX_UNMAP_LBA_COUNT.to_be_bytes());
        b[20..24].copy_from_slice(&MAX_UNMAP_DESCRIPTORS.to_be_bytes());
        b[24..28].copy_from_slice(&u32::from(gran).to_be_bytes());
    }
    b[32..40].copy_from_slice(&MAX_WRITE_SAME_BLOCKS.to_be_bytes());
    // Atomic writes; atomic boundaries are not supported (their fields stay 0).
    let atomic = AtomicLimits::new(ctx.block_size, max_xfer);
    b[40..44].copy_from_slice(&atomic.max_blocks.to_be_bytes());
    b[44..48].copy_from_slice(&atomic.alignment.to_be_bytes());
    b[48..52].copy_from_slice(&atomic.granularity.to_be_bytes());
    page(0xB0, &b)
}

fn block_device_characteristics() -> Vec<u8> {
    let mut b = vec![0u8; 0x3C];
    b[0..2].copy_from_slice(&1u16.to_be_bytes()); // non-rotating medium
    page(0xB1, &b)
}

fn logical_block_provisioning(ctx: &VpdContext) -> Vec<u8> {
    let mut b = vec![0u8; 4];
    if ctx.unmap_supported {
        b[1] = 0x80 | 0x40 | 0x20; // LBPU, LBPWS, LBPWS10
        b[2] = 0x02; // thin provisioned
    }
    page(0xB2, &b)
}

/// Builds VPD page `code`; unknown pages are an INVALID FIELD IN CDB (byte 2).
pub fn vpd(code: u8, ctx: &VpdContext) -> Result<Vec<u8>, Sense> {
    Ok(match code {
        0x00 => page(0x00, &SUPPORTED_VPD_PAGES),
        0x80 => page(0x80, ctx.identity.serial.as_bytes()),
        0x83 => device_identification(ctx),
        0xB0 => block_limits(ctx),
        0xB1 => block_device_characteristics(),
        0xB2 => logical_block_provisioning(ctx),
        _ => return Err(Sense::invalid_field_cdb(2, None)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TargetPort;

    fn ctx_parts() -> (LuIdentity, Nexus) {
        let n = Nexus {
            id: 1,
            initiator_name: "iqn.i".into(),
            isid: [0; 6],
            port: TargetPort {
                relative_port_id: 3,
                tpg_id: 9,
                target_name: "iqn.t".into(),
                tpgt: 0x12,
            },
        };
        (LuIdentity::derive("x"), n)
    }

    #[test]
    fn standard_data_is_printable_and_sized() {
        let (id, _) = ctx_parts();
        let d = standard(&id);
        assert_eq!(d[4] as usize, d.len() - 5);
        assert!(d[8..36].iter().all(|c| (0x20..0x7F).contains(c)));
        assert_eq!(&d[58..60], &[0x00, 0xA0]);
    }

    #[test]
    fn name_string_is_terminated_and_padded() {
        assert_eq!(name_string("abc"), b"abc\0".to_vec());
        assert_eq!(name_string("abcd"), b"abcd\0\0\0\0".to_vec());
    }

    #[test]
    fn block_limits_without_unmap_or_limit() {
        let (id, n) = ctx_parts();
        let ctx = VpdContext {
            identity: &id,
            nexus: &n,
            block_size: 4096,
            max_transfer_blocks: 0,
            unmap_supported: false,
        };
        let b0 = vpd(0xB0, &ctx).unwrap();
        assert_eq!(b0.len(), 64);
        assert_eq!(b0[5], MAX_CAW_BLOCKS as u8);
        assert_eq!(&b0[6..8], &[0, 1]);
        assert_eq!(&b0[8..12], &[0; 4]);
        assert_eq!(&b0[20..28], &[0; 8]);
        let b2 = vpd(0xB2, &ctx).unwrap();
        assert_eq!(b2, vec![0, 0xB2, 0, 4, 0, 0, 0, 0]);
        let d83 = vpd(0x83, &ctx).unwrap();
        let tp = b"iqn.t,t,0x0012\0\0";
        assert!(d83.windows(tp.len()).any(|w| w == tp));
        assert_eq!(vpd(0x86, &ctx).unwrap_err().triple(), (5, 0x24, 0));
    }
}
