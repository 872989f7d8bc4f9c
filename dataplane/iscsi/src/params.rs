//! Negotiated session and connection parameters (RFC 7143 §13).

/// The operational parameters in force for a session/connection after login. `Default` gives
/// the RFC 7143 defaults, which apply to every key that was not negotiated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionParams {
    /// HeaderDigest=CRC32C.
    pub header_digest: bool,
    /// DataDigest=CRC32C.
    pub data_digest: bool,
    pub max_connections: u16,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub first_burst_length: u32,
    pub max_burst_length: u32,
    /// What the initiator declared: limits the data segments of PDUs WE send.
    pub max_recv_data_segment_length_initiator: u32,
    /// What we declared: limits the data segments of PDUs we accept.
    pub max_recv_data_segment_length_target: u32,
    pub max_outstanding_r2t: u32,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub default_time2wait: u16,
    pub default_time2retain: u16,
    pub error_recovery_level: u8,
}

/// RFC 7143 default for MaxRecvDataSegmentLength.
pub const DEFAULT_MAX_RECV_DATA_SEGMENT_LENGTH: u32 = 8192;
/// RFC 7143 default for MaxBurstLength.
pub const DEFAULT_MAX_BURST_LENGTH: u32 = 262_144;
/// RFC 7143 default for FirstBurstLength.
pub const DEFAULT_FIRST_BURST_LENGTH: u32 = 65_536;
/// Smallest legal value of the length keys.
pub const MIN_LENGTH: u32 = 512;
/// Largest legal value of the length keys (2^24 - 1).
pub const MAX_LENGTH: u32 = (1 << 24) - 1;

impl Default for SessionParams {
    fn default() -> Self {
        SessionParams {
            header_digest: false,
            data_digest: false,
            max_connections: 1,
            initial_r2t: true,
            immediate_data: true,
            first_burst_length: DEFAULT_FIRST_BURST_LENGTH,
            max_burst_length: DEFAULT_MAX_BURST_LENGTH,
            max_recv_data_segment_length_initiator: DEFAULT_MAX_RECV_DATA_SEGMENT_LENGTH,
            max_recv_data_segment_length_target: DEFAULT_MAX_RECV_DATA_SEGMENT_LENGTH,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            default_time2wait: 2,
            default_time2retain: 20,
            error_recovery_level: 0,
        }
    }
}

impl SessionParams {
    /// Bytes of immediate plus unsolicited data the initiator may send with a write
    /// (0 if neither is enabled).
    pub fn unsolicited_limit(&self) -> u32 {
        if !self.immediate_data && self.initial_r2t {
            0
        } else {
            self.first_burst_length
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_defaults() {
        let p = SessionParams::default();
        assert!(!p.header_digest && !p.data_digest);
        assert_eq!(p.max_connections, 1);
        assert!(p.initial_r2t && p.immediate_data);
        assert_eq!(p.first_burst_length, 65536);
        assert_eq!(p.max_burst_length, 262144);
        assert_eq!(p.max_recv_data_segment_length_initiator, 8192);
        assert_eq!(p.max_recv_data_segment_length_target, 8192);
        assert_eq!(p.max_outstanding_r2t, 1);
        assert!(p.data_pdu_in_order && p.data_sequence_in_order);
        assert_eq!((p.default_time2wait, p.default_time2retain), (2, 20));
        assert_eq!(p.error_recovery_level, 0);
        assert_eq!(p.unsolicited_limit(), 65536);
        let p = SessionParams {
            immediate_data: false,
            ..p
        };
        assert_eq!(p.unsolicited_limit(), 0);
    }
}
