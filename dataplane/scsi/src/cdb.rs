//! Typed CDB decoding (step 1: opcode/service action -> command kind;
//! step 2: fields). Every rejection maps to exactly one [`Sense`].
//! [`decode`] never panics on any input: all reads go through `get`.

use crate::sense::Sense;

/// Opcodes we implement.
pub mod op {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const READ_6: u8 = 0x08;
    pub const WRITE_6: u8 = 0x0A;
    pub const INQUIRY: u8 = 0x12;
    pub const MODE_SELECT_6: u8 = 0x15;
    pub const RESERVE_6: u8 = 0x16;
    pub const RELEASE_6: u8 = 0x17;
    pub const MODE_SENSE_6: u8 = 0x1A;
    pub const START_STOP_UNIT: u8 = 0x1B;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const WRITE_10: u8 = 0x2A;
    pub const WRITE_AND_VERIFY_10: u8 = 0x2E;
    pub const VERIFY_10: u8 = 0x2F;
    pub const PRE_FETCH_10: u8 = 0x34;
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    pub const READ_DEFECT_DATA_10: u8 = 0x37;
    pub const WRITE_SAME_10: u8 = 0x41;
    pub const UNMAP: u8 = 0x42;
    pub const MODE_SELECT_10: u8 = 0x55;
    pub const RESERVE_10: u8 = 0x56;
    pub const RELEASE_10: u8 = 0x57;
    pub const MODE_SENSE_10: u8 = 0x5A;
    pub const PERSISTENT_RESERVE_IN: u8 = 0x5E;
    pub const PERSISTENT_RESERVE_OUT: u8 = 0x5F;
    pub const READ_16: u8 = 0x88;
    pub const COMPARE_AND_WRITE: u8 = 0x89;
    pub const WRITE_16: u8 = 0x8A;
    pub const ORWRITE_16: u8 = 0x8B;
    pub const WRITE_AND_VERIFY_16: u8 = 0x8E;
    pub const VERIFY_16: u8 = 0x8F;
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    pub const PRE_FETCH_16: u8 = 0x90;
    pub const WRITE_SAME_16: u8 = 0x93;
    pub const WRITE_ATOMIC_16: u8 = 0x9C;
    pub const SERVICE_ACTION_IN_16: u8 = 0x9E;
    pub const REPORT_LUNS: u8 = 0xA0;
    pub const MAINTENANCE_IN: u8 = 0xA3;
    pub const READ_12: u8 = 0xA8;
    pub const WRITE_12: u8 = 0xAA;
    pub const WRITE_AND_VERIFY_12: u8 = 0xAE;
    pub const VERIFY_12: u8 = 0xAF;
    pub const READ_DEFECT_DATA_12: u8 = 0xB7;

    /// SERVICE ACTION IN(16) service actions.
    pub const SAI_READ_CAPACITY_16: u8 = 0x10;
    pub const SAI_GET_LBA_STATUS: u8 = 0x12;
    /// MAINTENANCE IN service actions.
    pub const MI_REPORT_TARGET_PORT_GROUPS: u8 = 0x0A;
    pub const MI_REPORT_SUPPORTED_OPCODES: u8 = 0x0C;
}

/// A logical block address (in blocks of the LU's block size).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lba(pub u64);

/// A count of logical blocks (never bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Blocks(pub u32);

/// Fields shared by READ/WRITE(6/10/12/16) and WRITE AND VERIFY.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RwCdb {
    pub lba: Lba,
    pub blocks: Blocks,
    pub fua: bool,
    pub dpo: bool,
}

/// MODE SENSE (6)/(10) fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModeSenseCdb {
    pub ten: bool,
    pub dbd: bool,
    pub llbaa: bool,
    /// Page control: 0 current, 1 changeable, 2 default, 3 saved.
    pub pc: u8,
    pub page: u8,
    pub subpage: u8,
    pub alloc_len: u32,
}

/// A decoded CDB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScsiCommand {
    TestUnitReady,
    RequestSense {
        desc: bool,
        alloc_len: u32,
    },
    Inquiry {
        evpd: bool,
        page: u8,
        alloc_len: u32,
    },
    ReportLuns {
        select_report: u8,
        alloc_len: u32,
    },
    ModeSense(ModeSenseCdb),
    ModeSelect {
        ten: bool,
        pf: bool,
        sp: bool,
        param_len: u32,
    },
    ReadCapacity10,
    ReadCapacity16 {
        alloc_len: u32,
    },
    GetLbaStatus {
        lba: Lba,
        alloc_len: u32,
    },
    Read(RwCdb),
    Write(RwCdb),
    WriteAndVerify {
        rw: RwCdb,
        bytchk: bool,
    },
    /// BYTCHK: 0 medium only, 1 compare with n blocks, 3 compare each block with one block.
    Verify {
        lba: Lba,
        blocks: Blocks,
        bytchk: u8,
    },
    WriteSame {
        lba: Lba,
        blocks: Blocks,
        unmap: bool,
        anchor: bool,
        ndob: bool,
    },
    Unmap {
        anchor: bool,
        param_len: u32,
    },
    SynchronizeCache {
        lba: Lba,
        blocks: Blocks,
        immed: bool,
    },
    CompareAndWrite {
        lba: Lba,
        blocks: Blocks,
        fua: bool,
    },
    /// ORWRITE(16): read, OR with the Data-Out buffer, write back.
    OrWrite(RwCdb),
    /// WRITE ATOMIC(16); `boundary` is the ATOMIC BOUNDARY field.
    WriteAtomic {
        rw: RwCdb,
        boundary: u16,
    },
    /// READ DEFECT DATA (10)/(12).
    ReadDefectData {
        twelve: bool,
        plist: bool,
        glist: bool,
        format: u8,
        alloc_len: u32,
    },
    PreFetch {
        lba: Lba,
        blocks: Blocks,
        immed: bool,
    },
    ReportSupportedOpcodes {
        rctd: bool,
        options: u8,
        opcode: u8,
        service_action: u16,
        alloc_len: u32,
    },
    ReportTargetPortGroups {
        extended: bool,
        alloc_len: u32,
    },
    PersistentReserveIn {
        service_action: u8,
        alloc_len: u32,
    },
    PersistentReserveOut {
        service_action: u8,
        scope: u8,
        pr_type: u8,
        param_len: u32,
    },
    Reserve,
    Release,
    StartStopUnit {
        immed: bool,
        power_condition: u8,
        loej: bool,
        start: bool,
    },
}

/// Bounds-checked big-endian reads over a CDB; missing bytes read as 0
/// (length is checked up front, so this only guards against bugs).
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn u8(&self, i: usize) -> u8 {
        self.0.get(i).copied().unwrap_or(0)
    }
    fn be16(&self, i: usize) -> u16 {
        u16::from_be_bytes([self.u8(i), self.u8(i + 1)])
    }
    fn be32(&self, i: usize) -> u32 {
        u32::from_be_bytes([self.u8(i), self.u8(i + 1), self.u8(i + 2), self.u8(i + 3)])
    }
    fn be64(&self, i: usize) -> u64 {
        (u64::from(self.be32(i)) << 32) | u64::from(self.be32(i + 4))
    }
    fn bit(&self, i: usize, mask: u8) -> bool {
        self.u8(i) & mask != 0
    }
}

/// CDB length implied by the opcode's group code (SPC-4 4.2.5.1).
pub fn cdb_len(opcode: u8) -> Option<usize> {
    match opcode >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        _ => None,
    }
}

/// RDPROTECT/WRPROTECT/VRPROTECT live in byte 1 bits 7..5; we have no
/// protection information, so any non-zero value is an invalid field.
fn check_protect(f: &Fields) -> Result<(), Sense> {
    if f.u8(1) & 0xE0 != 0 {
        return Err(Sense::invalid_field_cdb(1, Some(7)));
    }
    Ok(())
}

fn rw(f: &Fields, lba: u64, blocks: u32) -> Result<RwCdb, Sense> {
    check_protect(f)?;
    Ok(RwCdb {
        lba: Lba(lba),
        blocks: Blocks(blocks),
        fua: f.bit(1, 0x08),
        dpo: f.bit(1, 0x10),
    })
}

/// Decodes a CDB into a typed command. Never panics.
pub fn decode(cdb: &[u8]) -> Result<ScsiCommand, Sense> {
    use ScsiCommand as C;
    let opcode = *cdb.first().ok_or_else(Sense::invalid_opcode)?;
    let len = cdb_len(opcode).ok_or_else(Sense::invalid_opcode)?;
    if cdb.len() < len {
        return Err(Sense::invalid_field_in_iu());
    }
    let f = Fields(&cdb[..len]);
    // We do not support ACA: NACA=1 in the CONTROL byte is an invalid field.
    if f.bit(len - 1, 0x04) {
        return Err(Sense::invalid_field_cdb((len - 1) as u16, Some(2)));
    }
    let cmd = match opcode {
        op::TEST_UNIT_READY => C::TestUnitReady,
        op::REQUEST_SENSE => C::RequestSense {
            desc: f.bit(1, 0x01),
            alloc_len: f.u8(4).into(),
        },
        op::INQUIRY => {
            if f.bit(1, 0x02) {
                return Err(Sense::invalid_field_cdb(1, Some(1))); // CmdDt is obsolete
            }
            let evpd = f.bit(1, 0x01);
            let page = f.u8(2);
            if !evpd && page != 0 {
                return Err(Sense::invalid_field_cdb(2, None));
            }
            C::Inquiry {
                evpd,
                page,
                alloc_len: f.be16(3).into(),
            }
        }
        op::REPORT_LUNS => C::ReportLuns {
            select_report: f.u8(2),
            alloc_len: f.be32(6),
        },
        op::MODE_SENSE_6 | op::MODE_SENSE_10 => {
            let ten = opcode == op::MODE_SENSE_10;
            C::ModeSense(ModeSenseCdb {
                ten,
                dbd: f.bit(1, 0x08),
                llbaa: ten && f.bit(1, 0x10),
                pc: f.u8(2) >> 6,
                page: f.u8(2) & 0x3F,
                subpage: f.u8(3),
                alloc_len: if ten {
                    f.be16(7).into()
                } else {
                    f.u8(4).into()
                },
            })
        }
        op::MODE_SELECT_6 | op::MODE_SELECT_10 => {
            let ten = opcode == op::MODE_SELECT_10;
            C::ModeSelect {
                ten,
                pf: f.bit(1, 0x10),
                sp: f.bit(1, 0x01),
                param_len: if ten {
                    f.be16(7).into()
                } else {
                    f.u8(4).into()
                },
            }
        }
        op::READ_CAPACITY_10 => {
            // PMI=0 requires LOGICAL BLOCK ADDRESS=0 (SBC-3 5.15).
            if !f.bit(8, 0x01) && f.be32(2) != 0 {
                return Err(Sense::invalid_field_cdb(2, None));
            }
            C::ReadCapacity10
        }
        op::SERVICE_ACTION_IN_16 => match f.u8(1) & 0x1F {
            op::SAI_READ_CAPACITY_16 => C::ReadCapacity16 {
                alloc_len: f.be32(10),
            },
            op::SAI_GET_LBA_STATUS => C::GetLbaStatus {
                lba: Lba(f.be64(2)),
                alloc_len: f.be32(10),
            },
            _ => return Err(Sense::invalid_field_cdb(1, Some(4))),
        },
        op::READ_6 | op::WRITE_6 => {
            let lba = (u64::from(f.u8(1) & 0x1F) << 16) | u64::from(f.be16(2));
            // SBC-3: a TRANSFER LENGTH of 0 means 256 blocks for the 6-byte CDBs.
            let blocks = match f.u8(4) {
                0 => 256,
                n => u32::from(n),
            };
            let r = RwCdb {
                lba: Lba(lba),
                blocks: Blocks(blocks),
                fua: false,
                dpo: false,
            };
            if opcode == op::READ_6 {
                C::Read(r)
            } else {
                C::Write(r)
            }
        }
        op::READ_10 => C::Read(rw(&f, f.be32(2).into(), f.be16(7).into())?),
        op::READ_12 => C::Read(rw(&f, f.be32(2).into(), f.be32(6))?),
        op::READ_16 => C::Read(rw(&f, f.be64(2), f.be32(10))?),
        op::WRITE_10 => C::Write(rw(&f, f.be32(2).into(), f.be16(7).into())?),
        op::WRITE_12 => C::Write(rw(&f, f.be32(2).into(), f.be32(6))?),
        op::WRITE_16 => C::Write(rw(&f, f.be64(2), f.be32(10))?),
        op::WRITE_AND_VERIFY_10 | op::WRITE_AND_VERIFY_12 | op::WRITE_AND_VERIFY_16 => {
            let (lba, blocks) = match opcode {
                op::WRITE_AND_VERIFY_10 => (f.be32(2).into(), f.be16(7).into()),
                op::WRITE_AND_VERIFY_12 => (f.be32(2).into(), f.be32(6)),
                _ => (f.be64(2), f.be32(10)),
            };
            let mut r = rw(&f, lba, blocks)?;
            r.fua = true; // the data must reach the medium before it is verified
            C::WriteAndVerify {
                rw: r,
                bytchk: f.bit(1, 0x02),
            }
        }
        op::VERIFY_10 | op::VERIFY_12 | op::VERIFY_16 => {
            check_protect(&f)?;
            let (lba, blocks) = match opcode {
                op::VERIFY_10 => (f.be32(2).into(), f.be16(7).into()),
                op::VERIFY_12 => (f.be32(2).into(), f.be32(6)),
                _ => (f.be64(2), f.be32(10)),
            };
            let bytchk = (f.u8(1) >> 1) & 0x03;
            if bytchk == 2 {
                return Err(Sense::invalid_field_cdb(1, Some(2)));
            }
            C::Verify {
                lba: Lba(lba),
                blocks: Blocks(blocks),
                bytchk,
            }
        }
        op::WRITE_SAME_10 | op::WRITE_SAME_16 => {
            check_protect(&f)?;
            let ten = opcode == op::WRITE_SAME_10;
            let (lba, blocks) = if ten {
                (f.be32(2).into(), f.be16(7).into())
            } else {
                (f.be64(2), f.be32(10))
            };
            C::WriteSame {
                lba: Lba(lba),
                blocks: Blocks(blocks),
                unmap: f.bit(1, 0x08),
                anchor: f.bit(1, 0x10),
                ndob: !ten && f.bit(1, 0x01),
            }
        }
        op::UNMAP => C::Unmap {
            anchor: f.bit(1, 0x01),
            param_len: f.be16(7).into(),
        },
        op::SYNCHRONIZE_CACHE_10 => C::SynchronizeCache {
            lba: Lba(f.be32(2).into()),
            blocks: Blocks(f.be16(7).into()),
            immed: f.bit(1, 0x02),
        },
        op::SYNCHRONIZE_CACHE_16 => C::SynchronizeCache {
            lba: Lba(f.be64(2)),
            blocks: Blocks(f.be32(10)),
            immed: f.bit(1, 0x02),
        },
        op::PRE_FETCH_10 => C::PreFetch {
            lba: Lba(f.be32(2).into()),
            blocks: Blocks(f.be16(7).into()),
            immed: f.bit(1, 0x02),
        },
        op::PRE_FETCH_16 => C::PreFetch {
            lba: Lba(f.be64(2)),
            blocks: Blocks(f.be32(10)),
            immed: f.bit(1, 0x02),
        },
        op::COMPARE_AND_WRITE => {
            check_protect(&f)?;
            C::CompareAndWrite {
                lba: Lba(f.be64(2)),
                blocks: Blocks(f.u8(13).into()),
                fua: f.bit(1, 0x08),
            }
        }
        op::ORWRITE_16 => C::OrWrite(rw(&f, f.be64(2), f.be32(10))?),
        op::WRITE_ATOMIC_16 => C::WriteAtomic {
            rw: rw(&f, f.be64(2), f.be16(12).into())?,
            boundary: f.be16(10),
        },
        op::READ_DEFECT_DATA_10 | op::READ_DEFECT_DATA_12 => {
            let twelve = opcode == op::READ_DEFECT_DATA_12;
            // The flags are in byte 2 of the 10-byte CDB, byte 1 of the 12-byte one.
            let flags_byte = if twelve { 1 } else { 2 };
            let flags = f.u8(flags_byte);
            let format = flags & 0x07;
            // 111b is reserved; every other format is defined (SBC-3 6.2).
            if format == 0x07 {
                return Err(Sense::invalid_field_cdb(flags_byte as u16, Some(2)));
            }
            C::ReadDefectData {
                twelve,
                plist: flags & 0x10 != 0,
                glist: flags & 0x08 != 0,
                format,
                alloc_len: if twelve { f.be32(6) } else { f.be16(7).into() },
            }
        }
        op::MAINTENANCE_IN => match f.u8(1) & 0x1F {
            op::MI_REPORT_TARGET_PORT_GROUPS => {
                let format = f.u8(1) >> 5;
                if format > 1 {
                    return Err(Sense::invalid_field_cdb(1, Some(7)));
                }
                C::ReportTargetPortGroups {
                    extended: format == 1,
                    alloc_len: f.be32(6),
                }
            }
            op::MI_REPORT_SUPPORTED_OPCODES => C::ReportSupportedOpcodes {
                rctd: f.bit(2, 0x80),
                options: f.u8(2) & 0x07,
                opcode: f.u8(3),
                service_action: f.be16(4),
                alloc_len: f.be32(6),
            },
            _ => return Err(Sense::invalid_field_cdb(1, Some(4))),
        },
        op::PERSISTENT_RESERVE_IN => C::PersistentReserveIn {
            service_action: f.u8(1) & 0x1F,
            alloc_len: f.be16(7).into(),
        },
        op::PERSISTENT_RESERVE_OUT => C::PersistentReserveOut {
            service_action: f.u8(1) & 0x1F,
            scope: f.u8(2) >> 4,
            pr_type: f.u8(2) & 0x0F,
            param_len: f.be32(5),
        },
        op::RESERVE_6 | op::RELEASE_6 => {
            // Third-party and extent reservations are not supported.
            if f.u8(1) & 0x1F != 0 {
                return Err(Sense::invalid_field_cdb(1, None));
            }
            if opcode == op::RESERVE_6 {
                C::Reserve
            } else {
                C::Release
            }
        }
        op::RESERVE_10 | op::RELEASE_10 => {
            if f.bit(1, 0x10) {
                return Err(Sense::invalid_field_cdb(1, Some(4))); // 3RDPTY
            }
            if opcode == op::RESERVE_10 {
                C::Reserve
            } else {
                C::Release
            }
        }
        op::START_STOP_UNIT => C::StartStopUnit {
            immed: f.bit(1, 0x01),
            power_condition: f.u8(4) >> 4,
            loej: f.bit(4, 0x02),
            start: f.bit(4, 0x01),
        },
        _ => return Err(Sense::invalid_opcode()),
    };
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read6_zero_length_is_256() {
        let c = decode(&[0x08, 0x01, 0x02, 0x03, 0x00, 0x00]).unwrap();
        assert_eq!(
            c,
            ScsiCommand::Read(RwCdb {
                lba: Lba(0x010203),
                blocks: Blocks(256),
                fua: false,
                dpo: false
            })
        );
    }

    #[test]
    fn read16_fields() {
        let mut cdb = [0u8; 16];
        cdb[0] = op::READ_16;
        cdb[1] = 0x08;
        cdb[2..10].copy_from_slice(&0x1122_3344_5566_7788u64.to_be_bytes());
        cdb[10..14].copy_from_slice(&9u32.to_be_bytes());
        match decode(&cdb).unwrap() {
            ScsiCommand::Read(r) => {
                assert_eq!(r.lba, Lba(0x1122_3344_5566_7788));
                assert_eq!(r.blocks, Blocks(9));
                assert!(r.fua);
            }
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn rdprotect_is_invalid_field() {
        let e = decode(&[0x28, 0x20, 0, 0, 0, 0, 0, 0, 1, 0]).unwrap_err();
        assert_eq!(e.triple(), (5, 0x24, 0));
        assert_eq!(e.field.unwrap().byte, 1);
    }

    #[test]
    fn short_cdb_and_unknown_opcode() {
        assert_eq!(decode(&[]).unwrap_err().triple(), (5, 0x20, 0));
        assert_eq!(decode(&[0x28, 0]).unwrap_err().triple(), (5, 0x0E, 0x03));
        assert_eq!(
            decode(&[0x02, 0, 0, 0, 0, 0]).unwrap_err().triple(),
            (5, 0x20, 0)
        );
        assert_eq!(decode(&[0xC0; 16]).unwrap_err().triple(), (5, 0x20, 0));
    }

    #[test]
    fn inquiry_cmddt_and_page_without_evpd() {
        assert_eq!(
            decode(&[0x12, 0x02, 0, 0, 96, 0])
                .unwrap_err()
                .field
                .unwrap()
                .byte,
            1
        );
        assert_eq!(
            decode(&[0x12, 0x00, 0x80, 0, 96, 0])
                .unwrap_err()
                .field
                .unwrap()
                .byte,
            2
        );
    }

    #[test]
    fn orwrite_write_atomic_and_read_defect_data_fields() {
        let mut c = [0u8; 16];
        c[0] = op::ORWRITE_16;
        c[1] = 0x1A; // DPO, FUA, FUA_NV (ignored)
        c[2..10].copy_from_slice(&7u64.to_be_bytes());
        c[10..14].copy_from_slice(&3u32.to_be_bytes());
        let rw = RwCdb {
            lba: Lba(7),
            blocks: Blocks(3),
            fua: true,
            dpo: true,
        };
        assert_eq!(decode(&c).unwrap(), ScsiCommand::OrWrite(rw));
        let mut c = [0u8; 16];
        c[0] = op::WRITE_ATOMIC_16;
        c[1] = 0x08;
        c[2..10].copy_from_slice(&0x10u64.to_be_bytes());
        c[10..12].copy_from_slice(&0x0102u16.to_be_bytes());
        c[12..14].copy_from_slice(&8u16.to_be_bytes());
        assert_eq!(
            decode(&c).unwrap(),
            ScsiCommand::WriteAtomic {
                rw: RwCdb {
                    lba: Lba(0x10),
                    blocks: Blocks(8),
                    fua: true,
                    dpo: false
                },
                boundary: 0x0102
            }
        );
        c[1] = 0x40; // WRPROTECT
        assert_eq!(decode(&c).unwrap_err().field.unwrap().byte, 1);
        assert_eq!(
            decode(&[0xB7, 0x15, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0]).unwrap(),
            ScsiCommand::ReadDefectData {
                twelve: true,
                plist: true,
                glist: false,
                format: 5,
                alloc_len: 0x100,
            }
        );
        assert_eq!(
            decode(&[0x37, 0, 0x0B, 0, 0, 0, 0, 0x01, 0x02, 0]).unwrap(),
            ScsiCommand::ReadDefectData {
                twelve: false,
                plist: false,
                glist: true,
                format: 3,
                alloc_len: 0x102,
            }
        );
    }

    #[test]
    fn naca_rejected() {
        assert_eq!(
            decode(&[0, 0, 0, 0, 0, 0x04]).unwrap_err().triple(),
            (5, 0x24, 0)
        );
    }
}
