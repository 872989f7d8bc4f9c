//! Sense data: one [`Sense`] value per error, rendered as fixed (0x70) or
//! descriptor (0x72) format.

/// SPC-4 sense keys we use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SenseKey {
    NoSense = 0x0,
    NotReady = 0x2,
    MediumError = 0x3,
    HardwareError = 0x4,
    IllegalRequest = 0x5,
    UnitAttention = 0x6,
    DataProtect = 0x7,
    AbortedCommand = 0xB,
    Miscompare = 0xE,
}

/// Sense-key-specific field pointer (SPC-4 4.5.2.4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldPointer {
    /// true: the error is in the CDB; false: in the parameter list.
    pub in_cdb: bool,
    pub byte: u16,
    /// Bit within the byte, when known.
    pub bit: Option<u8>,
}

/// One sense condition: key, ASC/ASCQ and optional INFORMATION / field pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sense {
    pub key: SenseKey,
    pub asc: u8,
    pub ascq: u8,
    pub information: Option<u64>,
    pub field: Option<FieldPointer>,
}

/// Length of the fixed-format sense we return.
pub const FIXED_SENSE_LEN: usize = 18;

impl Sense {
    pub const fn new(key: SenseKey, asc: u8, ascq: u8) -> Sense {
        Sense {
            key,
            asc,
            ascq,
            information: None,
            field: None,
        }
    }

    /// (key, asc, ascq) triple, handy in tests and logs.
    pub fn triple(&self) -> (u8, u8, u8) {
        (self.key as u8, self.asc, self.ascq)
    }

    pub fn with_info(mut self, info: u64) -> Sense {
        self.information = Some(info);
        self
    }

    pub fn no_sense() -> Sense {
        Sense::new(SenseKey::NoSense, 0, 0)
    }
    pub fn invalid_opcode() -> Sense {
        Sense::new(SenseKey::IllegalRequest, 0x20, 0x00)
    }
    pub fn lba_out_of_range() -> Sense {
        Sense::new(SenseKey::IllegalRequest, 0x21, 0x00)
    }
    /// INVALID FIELD IN CDB pointing at `byte` (and `bit` when known).
    pub fn invalid_field_cdb(byte: u16, bit: Option<u8>) -> Sense {
        Sense {
            field: Some(FieldPointer {
                in_cdb: true,
                byte,
                bit,
            }),
            ..Sense::new(SenseKey::IllegalRequest, 0x24, 0x00)
        }
    }
    /// INVALID FIELD IN PARAMETER LIST pointing at `byte` of the list.
    pub fn invalid_field_param(byte: u16, bit: Option<u8>) -> Sense {
        Sense {
            field: Some(FieldPointer {
                in_cdb: false,
                byte,
                bit,
            }),
            ..Sense::new(SenseKey::IllegalRequest, 0x26, 0x00)
        }
    }
    pub fn param_list_length_error() -> Sense {
        Sense::new(SenseKey::IllegalRequest, 0x1A, 0x00)
    }
    /// INVALID FIELD IN CDB where no CDB field is to blame (e.g. the
    /// transport's read and write bits), so there is nothing to point at.
    pub fn invalid_field_cdb_unpointed() -> Sense {
        Sense::new(SenseKey::IllegalRequest, 0x24, 0x00)
    }
    /// ABORTED COMMAND / DATA PHASE ERROR: the transport lost or misordered
    /// part of the data (e.g. a Data-Out with a wrong DataSN at ERL 0).
    pub fn data_phase_error() -> Sense {
        Sense::new(SenseKey::AbortedCommand, 0x4B, 0x00)
    }
    pub fn insufficient_registration_resources() -> Sense {
        Sense::new(SenseKey::IllegalRequest, 0x55, 0x04)
    }
    pub fn invalid_field_in_iu() -> Sense {
        Sense::new(SenseKey::IllegalRequest, 0x0E, 0x03)
    }
    pub fn lun_not_supported() -> Sense {
        Sense::new(SenseKey::IllegalRequest, 0x25, 0x00)
    }
    pub fn saving_not_supported() -> Sense {
        Sense::new(SenseKey::IllegalRequest, 0x39, 0x00)
    }
    pub fn invalid_release_of_pr() -> Sense {
        Sense::new(SenseKey::IllegalRequest, 0x26, 0x04)
    }
    pub fn write_protected() -> Sense {
        Sense::new(SenseKey::DataProtect, 0x27, 0x00)
    }
    pub fn software_write_protected() -> Sense {
        Sense::new(SenseKey::DataProtect, 0x27, 0x02)
    }
    pub fn read_error() -> Sense {
        Sense::new(SenseKey::MediumError, 0x11, 0x00)
    }
    pub fn write_error() -> Sense {
        Sense::new(SenseKey::MediumError, 0x0C, 0x00)
    }
    pub fn internal_target_failure() -> Sense {
        Sense::new(SenseKey::HardwareError, 0x44, 0x00)
    }
    pub fn miscompare(offset: u64) -> Sense {
        Sense::new(SenseKey::Miscompare, 0x1D, 0x00).with_info(offset)
    }
    pub fn power_on_reset() -> Sense {
        Sense::new(SenseKey::UnitAttention, 0x29, 0x00)
    }
    /// POWER ON OCCURRED: what a TARGET COLD RESET amounts to (SAM-5 6.3.1).
    pub fn power_on_occurred() -> Sense {
        Sense::new(SenseKey::UnitAttention, 0x29, 0x01)
    }
    /// BUS DEVICE RESET FUNCTION OCCURRED: LOGICAL UNIT RESET and TARGET
    /// (WARM) RESET, the function SCSI-2 called BUS DEVICE RESET.
    pub fn lun_reset_occurred() -> Sense {
        Sense::new(SenseKey::UnitAttention, 0x29, 0x03)
    }
    /// I_T NEXUS LOSS OCCURRED (SAM-5 6.3.4), for the returning initiator port.
    pub fn nexus_loss_occurred() -> Sense {
        Sense::new(SenseKey::UnitAttention, 0x29, 0x07)
    }
    pub fn mode_parameters_changed() -> Sense {
        Sense::new(SenseKey::UnitAttention, 0x2A, 0x01)
    }
    pub fn reservations_preempted() -> Sense {
        Sense::new(SenseKey::UnitAttention, 0x2A, 0x03)
    }
    pub fn reservations_released() -> Sense {
        Sense::new(SenseKey::UnitAttention, 0x2A, 0x04)
    }
    pub fn registrations_preempted() -> Sense {
        Sense::new(SenseKey::UnitAttention, 0x2A, 0x05)
    }
    pub fn asymmetric_access_state_changed() -> Sense {
        Sense::new(SenseKey::UnitAttention, 0x2A, 0x06)
    }
    pub fn capacity_changed() -> Sense {
        Sense::new(SenseKey::UnitAttention, 0x2A, 0x09)
    }
    pub fn alua_standby() -> Sense {
        Sense::new(SenseKey::NotReady, 0x04, 0x0B)
    }
    pub fn alua_unavailable() -> Sense {
        Sense::new(SenseKey::NotReady, 0x04, 0x0C)
    }
    pub fn alua_transitioning() -> Sense {
        Sense::new(SenseKey::NotReady, 0x04, 0x0A)
    }

    fn sense_key_specific(&self) -> Option<[u8; 3]> {
        let fp = self.field?;
        let mut b0 = 0x80; // SKSV
        if fp.in_cdb {
            b0 |= 0x40; // C/D
        }
        if let Some(bit) = fp.bit {
            b0 |= 0x08 | (bit & 0x07); // BPV + bit pointer
        }
        let [hi, lo] = fp.byte.to_be_bytes();
        Some([b0, hi, lo])
    }

    /// Fixed-format sense data (response code 0x70), 18 bytes.
    pub fn to_fixed(&self) -> Vec<u8> {
        let mut s = vec![0u8; FIXED_SENSE_LEN];
        s[0] = 0x70;
        s[2] = self.key as u8;
        // INFORMATION is 4 bytes in fixed format; VALID only when it fits.
        if let Some(info) = self.information {
            if let Ok(v) = u32::try_from(info) {
                s[0] |= 0x80;
                s[3..7].copy_from_slice(&v.to_be_bytes());
            }
        }
        s[7] = (FIXED_SENSE_LEN - 8) as u8;
        s[12] = self.asc;
        s[13] = self.ascq;
        if let Some(sks) = self.sense_key_specific() {
            s[15..18].copy_from_slice(&sks);
        }
        s
    }

    /// Descriptor-format sense data (response code 0x72).
    pub fn to_descriptor(&self) -> Vec<u8> {
        let mut s = vec![0x72, self.key as u8, self.asc, self.ascq, 0, 0, 0, 0];
        if let Some(info) = self.information {
            s.extend_from_slice(&[0x00, 0x0A, 0x80, 0x00]);
            s.extend_from_slice(&info.to_be_bytes());
        }
        if let Some(sks) = self.sense_key_specific() {
            s.extend_from_slice(&[0x02, 0x06, 0x00, 0x00, sks[0], sks[1], sks[2], 0x00]);
        }
        s[7] = (s.len() - 8) as u8;
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_format_layout() {
        let s = Sense::invalid_field_cdb(2, Some(5)).to_fixed();
        assert_eq!(s.len(), 18);
        assert_eq!(s[0], 0x70);
        assert_eq!(s[2], 0x05);
        assert_eq!(s[7], 10);
        assert_eq!((s[12], s[13]), (0x24, 0x00));
        assert_eq!(&s[15..18], &[0xC0 | 0x08 | 5, 0, 2]);
    }

    #[test]
    fn information_sets_valid() {
        let s = Sense::miscompare(0x1234).to_fixed();
        assert_eq!(s[0], 0xF0);
        assert_eq!(&s[3..7], &[0, 0, 0x12, 0x34]);
        assert_eq!(s[2], 0x0E);
        assert_eq!((s[12], s[13]), (0x1D, 0x00));
    }

    #[test]
    fn descriptor_format_layout() {
        let s = Sense::miscompare(7).to_descriptor();
        assert_eq!(&s[0..4], &[0x72, 0x0E, 0x1D, 0x00]);
        assert_eq!(s[7] as usize, s.len() - 8);
        assert_eq!(&s[8..12], &[0x00, 0x0A, 0x80, 0x00]);
        assert_eq!(s[19], 7);
    }
}
