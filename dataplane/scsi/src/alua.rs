//! Implicit ALUA: which commands each asymmetric access state admits
//! (SPC-4 5.15.2.4) and REPORT TARGET PORT GROUPS data.

use crate::cdb::ScsiCommand;
use crate::sense::Sense;
use crate::{AluaState, PortGroup};

/// Asymmetric access state code as reported in RTPG.
pub fn state_code(s: AluaState) -> u8 {
    match s {
        AluaState::ActiveOptimized => 0x0,
        AluaState::ActiveNonOptimized => 0x1,
        AluaState::Standby => 0x2,
        AluaState::Unavailable => 0x3,
        AluaState::Transitioning => 0xF,
    }
}

/// Returns the NOT READY sense if `cmd` is not admitted in `state`.
pub fn check(state: AluaState, cmd: &ScsiCommand) -> Result<(), Sense> {
    use ScsiCommand as C;
    // Admitted in every state: identification, sense and the ALUA report itself.
    let always = matches!(
        cmd,
        C::Inquiry { .. }
            | C::ReportLuns { .. }
            | C::RequestSense { .. }
            | C::ReportTargetPortGroups { .. }
            | C::ReportSupportedOpcodes { .. }
    );
    match state {
        AluaState::ActiveOptimized | AluaState::ActiveNonOptimized => Ok(()),
        _ if always => Ok(()),
        AluaState::Standby => {
            // Standby also admits mode pages, PR and capacity (SPC-4 5.15.2.4.4).
            let ok = matches!(
                cmd,
                C::ModeSense(_)
                    | C::ModeSelect { .. }
                    | C::PersistentReserveIn { .. }
                    | C::PersistentReserveOut { .. }
                    | C::ReadCapacity10
                    | C::ReadCapacity16 { .. }
            );
            if ok {
                Ok(())
            } else {
                Err(Sense::alua_standby())
            }
        }
        AluaState::Unavailable => Err(Sense::alua_unavailable()),
        AluaState::Transitioning => Err(Sense::alua_transitioning()),
    }
}

/// REPORT TARGET PORT GROUPS parameter data (length-only or extended header).
pub fn report_target_port_groups(groups: &[PortGroup], extended: bool) -> Vec<u8> {
    let mut body = Vec::new();
    for g in groups {
        // PREF=0; supported states: T, U, S, AN, AO (no O/LBD).
        body.push(state_code(g.state));
        body.push(0x80 | 0x08 | 0x04 | 0x02 | 0x01);
        body.extend_from_slice(&g.tpg_id.to_be_bytes());
        body.push(0);
        body.push(0x02); // status: implicit change (transitions are implicit)
        body.push(0);
        let ports = &g.relative_port_ids[..g.relative_port_ids.len().min(255)];
        body.push(ports.len() as u8);
        for p in ports {
            body.extend_from_slice(&[0, 0]);
            body.extend_from_slice(&p.to_be_bytes());
        }
    }
    let mut d = Vec::with_capacity(body.len() + 8);
    if extended {
        d.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        d.extend_from_slice(&[0x10, 0, 0, 0]); // format 1, implicit transition time 0
    } else {
        d.extend_from_slice(&(body.len() as u32).to_be_bytes());
    }
    d.extend(body);
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standby_rejects_io_but_not_inquiry() {
        let tur = ScsiCommand::TestUnitReady;
        assert_eq!(
            check(AluaState::Standby, &tur).unwrap_err().triple(),
            (2, 4, 0x0B)
        );
        assert_eq!(
            check(AluaState::Unavailable, &tur).unwrap_err().triple(),
            (2, 4, 0x0C)
        );
        assert_eq!(
            check(AluaState::Transitioning, &tur).unwrap_err().triple(),
            (2, 4, 0x0A)
        );
        let inq = ScsiCommand::Inquiry {
            evpd: false,
            page: 0,
            alloc_len: 96,
        };
        assert!(check(AluaState::Transitioning, &inq).is_ok());
        assert!(check(AluaState::ActiveNonOptimized, &tur).is_ok());
    }

    #[test]
    fn rtpg_layout() {
        let g = [
            PortGroup {
                tpg_id: 1,
                state: AluaState::ActiveOptimized,
                relative_port_ids: vec![1],
            },
            PortGroup {
                tpg_id: 2,
                state: AluaState::Standby,
                relative_port_ids: vec![2, 3],
            },
        ];
        let d = report_target_port_groups(&g, false);
        assert_eq!(&d[0..4], &(12u32 + 16).to_be_bytes());
        assert_eq!(d[4], 0);
        assert_eq!(&d[6..8], &[0, 1]);
        assert_eq!(d[11], 1);
        assert_eq!(d[16], 2);
        assert_eq!(d[23], 2);
        let e = report_target_port_groups(&g, true);
        assert_eq!(e[4], 0x10);
        assert_eq!(e.len(), d.len() + 4);
    }
}
