//! MODE SENSE / MODE SELECT: caching (0x08), control (0x0A) and
//! informational exceptions (0x1C) pages, plus the block descriptor.

use crate::cdb::ModeSenseCdb;
use crate::sense::Sense;

const PAGE_CACHING: u8 = 0x08;
const PAGE_CONTROL: u8 = 0x0A;
const PAGE_IEC: u8 = 0x1C;
const PAGE_ALL: u8 = 0x3F;

/// Page control values of MODE SENSE.
const PC_CURRENT: u8 = 0;
const PC_CHANGEABLE: u8 = 1;
const PC_DEFAULT: u8 = 2;

/// Caching page WCE bit (byte 2).
const WCE: u8 = 0x04;
/// Control page SWP bit (byte 4): software write protect.
const SWP: u8 = 0x08;

/// What the mode pages reflect.
pub struct ModeContext {
    /// Current write cache enable (follows the cache mode, or MODE SELECT).
    pub wce: bool,
    /// Software write protect (control page), set through MODE SELECT.
    pub swp: bool,
    /// WCE implied by the configured cache mode (the "default" value).
    pub default_wce: bool,
    pub read_only: bool,
    pub block_size: u32,
    pub num_blocks: u64,
}

/// Page bytes (including the 2-byte page header) for page control `pc`.
fn page_bytes(code: u8, pc: u8, ctx: &ModeContext) -> Option<Vec<u8>> {
    let changeable = pc == PC_CHANGEABLE;
    Some(match code {
        PAGE_CACHING => {
            let mut p = vec![0u8; 20];
            p[0] = PAGE_CACHING;
            p[1] = 0x12;
            p[2] = match pc {
                PC_CHANGEABLE => WCE,
                PC_DEFAULT if ctx.default_wce => WCE,
                PC_DEFAULT => 0,
                _ if ctx.wce => WCE,
                _ => 0,
            };
            p
        }
        PAGE_CONTROL => {
            let mut p = vec![0u8; 12];
            p[0] = PAGE_CONTROL;
            p[1] = 0x0A;
            if changeable {
                p[4] = SWP;
            } else {
                if pc == PC_CURRENT && ctx.swp {
                    p[4] = SWP;
                }
                p[3] = 0x10; // QUEUE ALGORITHM MODIFIER 1: unrestricted reordering
                p[5] = 0x40; // TAS: aborted tasks of other nexuses get TASK ABORTED
                p[8] = 0xFF; // BUSY TIMEOUT PERIOD: unlimited
                p[9] = 0xFF;
            }
            p
        }
        PAGE_IEC => {
            let mut p = vec![0u8; 12];
            p[0] = PAGE_IEC;
            p[1] = 0x0A;
            if !changeable {
                p[2] = 0x08; // DEXCPT: informational exceptions disabled
            }
            p
        }
        _ => return None,
    })
}

const ALL_PAGES: [u8; 3] = [PAGE_CACHING, PAGE_CONTROL, PAGE_IEC];

/// Builds MODE SENSE (6)/(10) parameter data (not yet truncated).
pub fn mode_sense(cdb: &ModeSenseCdb, ctx: &ModeContext) -> Result<Vec<u8>, Sense> {
    if cdb.pc == 3 {
        return Err(Sense::saving_not_supported());
    }
    // We have no subpages: subpage 0 or "all subpages" (0xFF) only.
    if cdb.subpage != 0 && cdb.subpage != 0xFF {
        return Err(Sense::invalid_field_cdb(3, None));
    }
    let mut pages = Vec::new();
    if cdb.page == PAGE_ALL {
        for code in ALL_PAGES {
            pages.extend(page_bytes(code, cdb.pc, ctx).unwrap_or_default());
        }
    } else {
        pages = page_bytes(cdb.page, cdb.pc, ctx)
            .ok_or_else(|| Sense::invalid_field_cdb(2, Some(5)))?;
    }

    let mut bd = Vec::new();
    if !cdb.dbd {
        if cdb.llbaa {
            bd.extend_from_slice(&ctx.num_blocks.to_be_bytes());
            bd.extend_from_slice(&[0; 4]);
            bd.extend_from_slice(&ctx.block_size.to_be_bytes());
        } else {
            let n = u32::try_from(ctx.num_blocks).unwrap_or(u32::MAX);
            bd.extend_from_slice(&n.to_be_bytes());
            bd.push(0);
            bd.extend_from_slice(&ctx.block_size.to_be_bytes()[1..]);
        }
    }
    // Device-specific parameter: WP for read-only or software write
    // protected LUs, DPOFUA supported.
    let dsp = if ctx.read_only || ctx.swp { 0x80 } else { 0 } | 0x10;
    let mut out = Vec::new();
    if cdb.ten {
        out.extend_from_slice(&[0, 0, 0, dsp, u8::from(cdb.llbaa && !cdb.dbd), 0]);
        out.extend_from_slice(&(bd.len() as u16).to_be_bytes());
        out.extend(bd);
        out.extend(pages);
        let len = u16::try_from(out.len() - 2).unwrap_or(u16::MAX);
        out[0..2].copy_from_slice(&len.to_be_bytes());
    } else {
        out.extend_from_slice(&[0, 0, dsp, bd.len() as u8]);
        out.extend(bd);
        out.extend(pages);
        out[0] = u8::try_from(out.len() - 1).unwrap_or(u8::MAX);
    }
    Ok(out)
}

/// Result of a successful MODE SELECT.
#[derive(Debug, PartialEq, Eq)]
pub struct ModeChange {
    /// New WCE value, if the caching page changed it.
    pub wce: Option<bool>,
    /// New SWP value, if the control page changed it.
    pub swp: Option<bool>,
}

fn be16(p: &[u8], i: usize) -> usize {
    usize::from(u16::from_be_bytes([
        p.get(i).copied().unwrap_or(0),
        p.get(i + 1).copied().unwrap_or(0),
    ]))
}

/// Validates and applies a MODE SELECT (6)/(10) parameter list.
/// Only bits in the changeable mask may differ from the current values.
pub fn mode_select(
    ten: bool,
    sp: bool,
    param: &[u8],
    ctx: &ModeContext,
) -> Result<ModeChange, Sense> {
    if sp {
        // We cannot save pages.
        return Err(Sense::invalid_field_cdb(1, Some(0)));
    }
    let mut change = ModeChange {
        wce: None,
        swp: None,
    };
    if param.is_empty() {
        return Ok(change);
    }
    let hdr_len = if ten { 8 } else { 4 };
    if param.len() < hdr_len {
        return Err(Sense::param_list_length_error());
    }
    let (bd_len, long_lba) = if ten {
        (be16(param, 6), param.get(4).is_some_and(|b| b & 1 != 0))
    } else {
        (usize::from(param.get(3).copied().unwrap_or(0)), false)
    };
    let bd_one = if long_lba { 16 } else { 8 };
    if bd_len % bd_one != 0 || hdr_len + bd_len > param.len() {
        let at = if ten { 6 } else { 3 };
        return Err(Sense::invalid_field_param(at, None));
    }
    // Each block descriptor may only restate our block length.
    let mut off = hdr_len;
    while off < hdr_len + bd_len {
        let bl_at = off + bd_one - 3;
        let bl = param
            .get(bl_at..off + bd_one)
            .map(|b| u32::from_be_bytes([0, b[0], b[1], b[2]]))
            .unwrap_or(0);
        if bl != ctx.block_size {
            return Err(Sense::invalid_field_param(bl_at as u16, None));
        }
        off += bd_one;
    }

    while off < param.len() {
        let code_byte = param.get(off).copied().unwrap_or(0);
        let Some(&plen) = param.get(off + 1) else {
            return Err(Sense::param_list_length_error());
        };
        if code_byte & 0x40 != 0 {
            return Err(Sense::invalid_field_param(off as u16, Some(6))); // SPF: no subpages
        }
        let code = code_byte & 0x3F;
        let (Some(cur), Some(mask)) = (
            page_bytes(code, PC_CURRENT, ctx),
            page_bytes(code, PC_CHANGEABLE, ctx),
        ) else {
            return Err(Sense::invalid_field_param(off as u16, Some(5)));
        };
        let end = off + 2 + usize::from(plen);
        if usize::from(plen) != cur.len() - 2 {
            return Err(Sense::invalid_field_param(off as u16 + 1, None));
        }
        let Some(new) = param.get(off..end) else {
            return Err(Sense::param_list_length_error());
        };
        for i in 2..cur.len() {
            if (new[i] ^ cur[i]) & !mask[i] != 0 {
                return Err(Sense::invalid_field_param((off + i) as u16, None));
            }
        }
        if code == PAGE_CACHING {
            let wce = new[2] & WCE != 0;
            if wce != ctx.wce {
                change.wce = Some(wce);
            }
        }
        if code == PAGE_CONTROL {
            let swp = new[4] & SWP != 0;
            if swp != ctx.swp {
                change.swp = Some(swp);
            }
        }
        off = end;
    }
    Ok(change)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(wce: bool) -> ModeContext {
        ModeContext {
            wce,
            swp: false,
            default_wce: wce,
            read_only: false,
            block_size: 512,
            num_blocks: 1000,
        }
    }

    fn ms6(page: u8, pc: u8, dbd: bool) -> ModeSenseCdb {
        ModeSenseCdb {
            ten: false,
            dbd,
            llbaa: false,
            pc,
            page,
            subpage: 0,
            alloc_len: 255,
        }
    }

    #[test]
    fn caching_page_reflects_wce() {
        let d = mode_sense(&ms6(0x08, 0, true), &ctx(true)).unwrap();
        assert_eq!(d[0] as usize, d.len() - 1);
        assert_eq!(d[3], 0);
        assert_eq!(&d[4..6], &[0x08, 0x12]);
        assert_eq!(d[6] & WCE, WCE);
        let d = mode_sense(&ms6(0x08, 0, true), &ctx(false)).unwrap();
        assert_eq!(d[6] & WCE, 0);
    }

    #[test]
    fn block_descriptor_and_all_pages() {
        let d = mode_sense(&ms6(0x3F, 0, false), &ctx(false)).unwrap();
        assert_eq!(d[3], 8);
        assert_eq!(&d[4..8], &1000u32.to_be_bytes());
        assert_eq!(&d[9..12], &[0, 2, 0]);
        assert_eq!(d.len(), 4 + 8 + 20 + 12 + 12);
    }

    #[test]
    fn saved_and_unknown_page() {
        assert_eq!(
            mode_sense(&ms6(0x08, 3, true), &ctx(false))
                .unwrap_err()
                .triple(),
            (5, 0x39, 0)
        );
        assert_eq!(
            mode_sense(&ms6(0x01, 0, true), &ctx(false))
                .unwrap_err()
                .triple(),
            (5, 0x24, 0)
        );
    }

    #[test]
    fn select_changes_wce_and_rejects_fixed_bits() {
        let c = ctx(false);
        let mut p = vec![0, 0, 0, 0];
        let mut page = page_bytes(0x08, PC_CURRENT, &c).unwrap();
        page[2] |= WCE;
        p.extend(&page);
        assert_eq!(
            mode_select(false, false, &p, &c).unwrap(),
            ModeChange {
                wce: Some(true),
                swp: None
            }
        );
        // RCD is not changeable.
        p[6] |= 0x01;
        let e = mode_select(false, false, &p, &c).unwrap_err();
        assert_eq!(e.triple(), (5, 0x26, 0));
        assert_eq!(e.field.unwrap().byte, 6);
    }

    #[test]
    fn select_sets_swp() {
        let c = ctx(false);
        let mut p = vec![0, 0, 0, 0];
        let mut page = page_bytes(PAGE_CONTROL, PC_CURRENT, &c).unwrap();
        page[4] |= SWP;
        p.extend(&page);
        assert_eq!(mode_select(false, false, &p, &c).unwrap().swp, Some(true));
        let on = ModeContext {
            swp: true,
            ..ctx(false)
        };
        let d = mode_sense(&ms6(PAGE_CONTROL, 0, true), &on).unwrap();
        assert_eq!(d[2] & 0x80, 0x80);
        assert_eq!(d[8] & SWP, SWP);
    }

    #[test]
    fn page_controls_changeable_and_default() {
        let c = ModeContext {
            default_wce: true,
            ..ctx(false)
        };
        let ch = mode_sense(&ms6(0x08, 1, true), &c).unwrap();
        assert_eq!(ch[6], WCE);
        let df = mode_sense(&ms6(0x08, 2, true), &c).unwrap();
        assert_eq!(df[6], WCE);
        let cur = mode_sense(&ms6(0x08, 0, true), &c).unwrap();
        assert_eq!(cur[6], 0);
        let ctl = mode_sense(&ms6(0x0A, 1, true), &c).unwrap();
        assert_eq!(&ctl[4..16], &[0x0A, 0x0A, 0, 0, SWP, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn mode_sense_10_long_descriptor_and_subpages() {
        let cdb = ModeSenseCdb {
            ten: true,
            dbd: false,
            llbaa: true,
            pc: 0,
            page: 0x1C,
            subpage: 0xFF,
            alloc_len: 255,
        };
        let d = mode_sense(&cdb, &ctx(false)).unwrap();
        assert_eq!(u16::from_be_bytes([d[0], d[1]]) as usize, d.len() - 2);
        assert_eq!(d[4], 1);
        assert_eq!(&d[6..8], &[0, 16]);
        assert_eq!(&d[8..16], &1000u64.to_be_bytes());
        assert_eq!(&d[20..24], &512u32.to_be_bytes());
        assert_eq!(&d[24..26], &[0x1C, 0x0A]);
        let bad = ModeSenseCdb { subpage: 1, ..cdb };
        assert_eq!(
            mode_sense(&bad, &ctx(false))
                .unwrap_err()
                .field
                .unwrap()
                .byte,
            3
        );
    }

    #[test]
    fn select_rejects_bad_block_descriptor_and_truncated_page() {
        let c = ctx(false);
        // Block descriptor announcing 4096-byte blocks on a 512-byte LU.
        let mut p = vec![0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x10, 0];
        assert_eq!(
            mode_select(false, false, &p, &c).unwrap_err().triple(),
            (5, 0x26, 0)
        );
        p[10] = 0x02;
        assert_eq!(
            mode_select(false, false, &p, &c).unwrap(),
            ModeChange {
                wce: None,
                swp: None
            }
        );
        // A page cut short.
        p.extend_from_slice(&[0x08, 0x12, 0, 0]);
        assert_eq!(
            mode_select(false, false, &p, &c).unwrap_err().triple(),
            (5, 0x1A, 0)
        );
        // Unknown page.
        let q = vec![0, 0, 0, 0, 0x01, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            mode_select(false, false, &q, &c).unwrap_err().triple(),
            (5, 0x26, 0)
        );
        // Header shorter than 4 bytes.
        assert_eq!(
            mode_select(false, false, &[0, 0], &c).unwrap_err().triple(),
            (5, 0x1A, 0)
        );
    }
}
