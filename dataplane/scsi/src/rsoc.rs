//! REPORT SUPPORTED OPERATION CODES (SPC-4 6.35) from one command table.

use crate::cdb::op;
use crate::sense::Sense;

/// One supported command: opcode, service action (if the opcode has them)
/// and the CDB usage data (bits the device server looks at).
struct Supported {
    opcode: u8,
    service_action: Option<u16>,
    usage: &'static [u8],
}

const fn c(opcode: u8, usage: &'static [u8]) -> Supported {
    Supported {
        opcode,
        service_action: None,
        usage,
    }
}

const fn s(opcode: u8, sa: u16, usage: &'static [u8]) -> Supported {
    Supported {
        opcode,
        service_action: Some(sa),
        usage,
    }
}

/// Control byte usage: NACA is examined (and rejected).
const CTL: u8 = 0x04;

#[rustfmt::skip]
const TABLE: &[Supported] = &[
    c(op::TEST_UNIT_READY, &[0x00, 0, 0, 0, 0, CTL]),
    c(op::REQUEST_SENSE, &[0x03, 0x01, 0, 0, 0xFF, CTL]),
    c(op::READ_6, &[0x08, 0x1F, 0xFF, 0xFF, 0xFF, CTL]),
    c(op::WRITE_6, &[0x0A, 0x1F, 0xFF, 0xFF, 0xFF, CTL]),
    c(op::INQUIRY, &[0x12, 0x01, 0xFF, 0xFF, 0xFF, CTL]),
    c(op::MODE_SELECT_6, &[0x15, 0x11, 0, 0, 0xFF, CTL]),
    c(op::RESERVE_6, &[0x16, 0, 0, 0, 0, CTL]),
    c(op::RELEASE_6, &[0x17, 0, 0, 0, 0, CTL]),
    c(op::MODE_SENSE_6, &[0x1A, 0x08, 0xFF, 0xFF, 0xFF, CTL]),
    c(op::START_STOP_UNIT, &[0x1B, 0x01, 0, 0, 0xF3, CTL]),
    c(op::READ_CAPACITY_10, &[0x25, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0x01, CTL]),
    c(op::READ_10, &[0x28, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, CTL]),
    c(op::WRITE_10, &[0x2A, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, CTL]),
    c(op::WRITE_AND_VERIFY_10, &[0x2E, 0xF2, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, CTL]),
    c(op::VERIFY_10, &[0x2F, 0xF6, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, CTL]),
    c(op::PRE_FETCH_10, &[0x34, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, CTL]),
    c(op::SYNCHRONIZE_CACHE_10, &[0x35, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, CTL]),
    c(op::READ_DEFECT_DATA_10, &[0x37, 0, 0x1F, 0, 0, 0, 0, 0xFF, 0xFF, CTL]),
    c(op::WRITE_SAME_10, &[0x41, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, CTL]),
    c(op::UNMAP, &[0x42, 0x01, 0, 0, 0, 0, 0, 0xFF, 0xFF, CTL]),
    c(op::MODE_SELECT_10, &[0x55, 0x11, 0, 0, 0, 0, 0, 0xFF, 0xFF, CTL]),
    c(op::RESERVE_10, &[0x56, 0x10, 0, 0, 0, 0, 0, 0, 0, CTL]),
    c(op::RELEASE_10, &[0x57, 0x10, 0, 0, 0, 0, 0, 0, 0, CTL]),
    c(op::MODE_SENSE_10, &[0x5A, 0x18, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0xFF, CTL]),
    s(op::PERSISTENT_RESERVE_IN, 0, &[0x5E, 0x00, 0, 0, 0, 0, 0, 0xFF, 0xFF, CTL]),
    s(op::PERSISTENT_RESERVE_IN, 1, &[0x5E, 0x01, 0, 0, 0, 0, 0, 0xFF, 0xFF, CTL]),
    s(op::PERSISTENT_RESERVE_IN, 2, &[0x5E, 0x02, 0, 0, 0, 0, 0, 0xFF, 0xFF, CTL]),
    s(op::PERSISTENT_RESERVE_IN, 3, &[0x5E, 0x03, 0, 0, 0, 0, 0, 0xFF, 0xFF, CTL]),
    s(op::PERSISTENT_RESERVE_OUT, 0, &[0x5F, 0x00, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, CTL]),
    s(op::PERSISTENT_RESERVE_OUT, 1, &[0x5F, 0x01, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, CTL]),
    s(op::PERSISTENT_RESERVE_OUT, 2, &[0x5F, 0x02, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, CTL]),
    s(op::PERSISTENT_RESERVE_OUT, 3, &[0x5F, 0x03, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, CTL]),
    s(op::PERSISTENT_RESERVE_OUT, 4, &[0x5F, 0x04, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, CTL]),
    s(op::PERSISTENT_RESERVE_OUT, 5, &[0x5F, 0x05, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, CTL]),
    s(op::PERSISTENT_RESERVE_OUT, 6, &[0x5F, 0x06, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, CTL]),
    s(op::PERSISTENT_RESERVE_OUT, 7, &[0x5F, 0x07, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, CTL]),
    c(op::READ_16, &[0x88, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, CTL]),
    c(op::COMPARE_AND_WRITE, &[0x89, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0, CTL]),
    c(op::WRITE_16, &[0x8A, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, CTL]),
    c(op::ORWRITE_16, &[0x8B, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, CTL]),
    c(op::WRITE_AND_VERIFY_16, &[0x8E, 0xF2, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, CTL]),
    c(op::VERIFY_16, &[0x8F, 0xF6, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, CTL]),
    c(op::PRE_FETCH_16, &[0x90, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, CTL]),
    c(op::SYNCHRONIZE_CACHE_16, &[0x91, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, CTL]),
    c(op::WRITE_SAME_16, &[0x93, 0xF9, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, CTL]),
    c(op::WRITE_ATOMIC_16, &[0x9C, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, CTL]),
    s(op::SERVICE_ACTION_IN_16, 0x10, &[0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, CTL]),
    s(op::SERVICE_ACTION_IN_16, 0x12, &[0x9E, 0x12, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, CTL]),
    c(op::REPORT_LUNS, &[0xA0, 0, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, CTL]),
    s(op::MAINTENANCE_IN, 0x0A, &[0xA3, 0xEA, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, CTL]),
    s(op::MAINTENANCE_IN, 0x0C, &[0xA3, 0x0C, 0x87, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, CTL]),
    c(op::READ_12, &[0xA8, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, CTL]),
    c(op::WRITE_12, &[0xAA, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, CTL]),
    c(op::WRITE_AND_VERIFY_12, &[0xAE, 0xF2, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, CTL]),
    c(op::VERIFY_12, &[0xAF, 0xF6, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, CTL]),
    c(op::READ_DEFECT_DATA_12, &[0xB7, 0x1F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, CTL]),
];

/// Command timeouts descriptor (SPC-4 6.35.4): no specific timeouts.
fn timeouts() -> [u8; 12] {
    let mut t = [0u8; 12];
    t[1] = 0x0A;
    t
}

/// True if the opcode has service actions in our table.
fn has_service_actions(opcode: u8) -> bool {
    TABLE
        .iter()
        .any(|e| e.opcode == opcode && e.service_action.is_some())
}

/// Builds the parameter data (not yet truncated).
pub fn report(rctd: bool, options: u8, opcode: u8, service_action: u16) -> Result<Vec<u8>, Sense> {
    match options {
        0 => {
            let mut body = Vec::new();
            for e in TABLE {
                body.push(e.opcode);
                body.push(0);
                body.extend_from_slice(&e.service_action.unwrap_or(0).to_be_bytes());
                body.push(0);
                body.push(if rctd { 0x02 } else { 0 } | u8::from(e.service_action.is_some()));
                body.extend_from_slice(&(e.usage.len() as u16).to_be_bytes());
                if rctd {
                    body.extend_from_slice(&timeouts());
                }
            }
            let mut d = (body.len() as u32).to_be_bytes().to_vec();
            d.extend(body);
            Ok(d)
        }
        1..=3 => {
            // Option 1 names an opcode without service actions, option 2 one
            // with; option 3 (SPC-4) uses the service action only if the
            // opcode has them.
            let with_sa = match options {
                1 => false,
                2 => true,
                _ => has_service_actions(opcode),
            };
            if has_service_actions(opcode) != with_sa && TABLE.iter().any(|e| e.opcode == opcode) {
                return Err(Sense::invalid_field_cdb(2, Some(2)));
            }
            let found = TABLE.iter().find(|e| {
                e.opcode == opcode && (!with_sa || e.service_action == Some(service_action))
            });
            let mut d = vec![0u8; 4];
            match found {
                Some(e) => {
                    d[1] = if rctd { 0x80 } else { 0 } | 0x03; // supported per standard
                    d[2..4].copy_from_slice(&(e.usage.len() as u16).to_be_bytes());
                    d.extend_from_slice(e.usage);
                    if rctd {
                        d.extend_from_slice(&timeouts());
                    }
                }
                None => d[1] = 0x01, // not supported
            }
            Ok(d)
        }
        _ => Err(Sense::invalid_field_cdb(2, Some(2))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_commands_list_shape() {
        let d = report(false, 0, 0, 0).unwrap();
        let len = u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize;
        assert_eq!(len, TABLE.len() * 8);
        let d = report(true, 0, 0, 0).unwrap();
        assert_eq!(d.len(), 4 + TABLE.len() * 20);
        for e in TABLE {
            assert_eq!(e.usage[0], e.opcode);
            assert_eq!(Some(e.usage.len()), crate::cdb::cdb_len(e.opcode));
        }
    }

    #[test]
    fn one_command() {
        let d = report(false, 1, op::READ_10, 0).unwrap();
        assert_eq!(d[1] & 7, 3);
        assert_eq!(&d[2..4], &[0, 10]);
        assert_eq!(d[4], op::READ_10);
        // READ(10) has no service actions.
        assert_eq!(
            report(false, 2, op::READ_10, 0).unwrap_err().triple(),
            (5, 0x24, 0)
        );
        assert_eq!(
            report(false, 1, op::PERSISTENT_RESERVE_IN, 0)
                .unwrap_err()
                .triple(),
            (5, 0x24, 0)
        );
        let d = report(true, 2, op::MAINTENANCE_IN, 0x0C).unwrap();
        assert_eq!(d[1], 0x83);
        assert_eq!(d.len(), 4 + 12 + 12);
        assert_eq!(report(false, 1, 0xFF, 0).unwrap()[1], 1);
        assert!(report(false, 7, 0, 0).is_err());
        // Option 3: service action used only where the opcode has them.
        assert_eq!(report(false, 3, op::READ_10, 0x55).unwrap()[1] & 7, 3);
        assert_eq!(
            report(false, 3, op::PERSISTENT_RESERVE_IN, 2).unwrap()[5],
            0x02
        );
        assert_eq!(
            report(false, 3, op::PERSISTENT_RESERVE_IN, 9).unwrap()[1],
            1
        );
    }
}
