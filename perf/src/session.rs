//! A minimal iSCSI initiator session for load generation: login (no authentication), operational
//! parameter negotiation, SendTargets discovery, synchronous helper commands and logout.
//!
//! The hot path lives in [`crate::engine`]; this module only sets a connection up and tears it
//! down, so it favours clarity over speed (it allocates freely).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use tandem_iscsi::text::{emit_pairs, parse_pairs, TextLimits};
use tandem_iscsi::wire::{
    pad4, AnyPdu, Bhs, LoginRequestRepr, LoginResponseRepr, LogoutReason, LogoutRequestRepr,
    PduRepr, ScsiCommandRepr, Stage, TextRequestRepr, BHS_LEN, RESERVED_TAG,
};

/// Largest data segment we accept from the target (what we declare as our
/// MaxRecvDataSegmentLength).
pub const OUR_MAX_RECV_DSL: u32 = 262_144;
/// FirstBurstLength / MaxBurstLength we offer.
pub const OFFERED_BURST: u32 = 262_144;

/// Errors of the initiator.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("login failed with status class {0:#04x} detail {1:#04x}")]
    LoginStatus(u8, u8),
    #[error(
        "SCSI status {status:#04x} (sense key {sense_key:#x}, asc/ascq {asc:#04x}/{ascq:#04x})"
    )]
    Scsi {
        status: u8,
        sense_key: u8,
        asc: u8,
        ascq: u8,
    },
}

fn proto<T>(msg: impl Into<String>) -> Result<T, InitError> {
    Err(InitError::Protocol(msg.into()))
}

/// Parameters in force after login (RFC 7143 §13 results, from our point of view).
#[derive(Debug, Clone, Copy)]
pub struct Negotiated {
    /// ImmediateData (AND of both offers).
    pub immediate_data: bool,
    /// InitialR2T (OR of both offers).
    pub initial_r2t: bool,
    /// FirstBurstLength (minimum).
    pub first_burst: u32,
    /// MaxBurstLength (minimum).
    pub max_burst: u32,
    /// Largest data segment the target accepts (its declared MaxRecvDataSegmentLength).
    pub target_max_recv_dsl: u32,
}

impl Default for Negotiated {
    fn default() -> Self {
        // RFC 7143 defaults.
        Negotiated {
            immediate_data: true,
            initial_r2t: true,
            first_burst: 65_536,
            max_burst: 262_144,
            target_max_recv_dsl: 8192,
        }
    }
}

/// What kind of session to open.
#[derive(Debug, Clone)]
pub enum SessionKind {
    /// Normal session to this target IQN.
    Normal(String),
    /// Discovery session (SendTargets).
    Discovery,
}

/// A logged-in connection (one connection per session).
pub struct Session {
    pub stream: TcpStream,
    pub params: Negotiated,
    /// Next CmdSN to use.
    pub cmdsn: u32,
    /// Next StatSN expected.
    pub expstatsn: u32,
    /// Highest CmdSN the target accepts now.
    pub maxcmdsn: u32,
    next_itt: u32,
}

/// Serial number arithmetic (RFC 1982, 32 bits): `a <= b`.
pub fn sn_le(a: u32, b: u32) -> bool {
    a == b || (b.wrapping_sub(a) as i32) > 0
}

/// Reads one whole PDU (BHS + AHS + data) with blocking reads; returns the header bytes and the
/// (unpadded) data segment. For login, discovery and helper commands only.
pub fn read_pdu(stream: &mut TcpStream) -> Result<([u8; BHS_LEN], Vec<u8>), InitError> {
    let mut hdr = [0u8; BHS_LEN];
    stream.read_exact(&mut hdr)?;
    let bhs = Bhs::new_unchecked(&hdr[..]);
    let ahs = bhs.total_ahs_len();
    let dsl = bhs.data_segment_len() as usize;
    if dsl > OUR_MAX_RECV_DSL as usize {
        return proto(format!("data segment of {dsl} bytes exceeds our limit"));
    }
    let mut rest = vec![0u8; ahs + pad4(dsl)];
    stream.read_exact(&mut rest)?;
    rest.drain(..ahs);
    rest.truncate(dsl);
    Ok((hdr, rest))
}

fn write_pdu(stream: &mut TcpStream, hdr: &[u8; BHS_LEN], data: &[u8]) -> Result<(), InitError> {
    let mut out = Vec::with_capacity(BHS_LEN + pad4(data.len()));
    out.extend_from_slice(hdr);
    out.extend_from_slice(data);
    out.resize(BHS_LEN + pad4(data.len()), 0);
    stream.write_all(&out)?;
    Ok(())
}

fn parse_text(data: &[u8]) -> Result<Vec<(String, String)>, InitError> {
    parse_pairs(data, &TextLimits::DEFAULT).map_err(|e| InitError::Protocol(format!("text: {e}")))
}

fn key_u32(pairs: &[(String, String)], key: &str) -> Option<u32> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.parse().ok())
}

fn key_bool(pairs: &[(String, String)], key: &str) -> Option<bool> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.eq_ignore_ascii_case("yes"))
}

/// Sense key / ASC / ASCQ from fixed or descriptor sense data (the data segment of a SCSI
/// Response starts with a 2-byte SenseLength).
pub fn decode_sense(data: &[u8]) -> (u8, u8, u8) {
    if data.len() < 4 {
        return (0, 0, 0);
    }
    let sense = &data[2..];
    match sense[0] & 0x7f {
        0x70 | 0x71 if sense.len() >= 14 => (sense[2] & 0x0f, sense[12], sense[13]),
        0x72 | 0x73 if sense.len() >= 4 => (sense[1] & 0x0f, sense[2], sense[3]),
        _ => (0, 0, 0),
    }
}

impl Session {
    /// Connects and logs in: security stage (AuthMethod=None), then operational negotiation
    /// with ImmediateData=Yes, InitialR2T=No and 256 KiB segments and bursts.
    pub fn login(
        portal: SocketAddr,
        initiator: &str,
        kind: &SessionKind,
        isid: [u8; 6],
    ) -> Result<Session, InitError> {
        let stream = TcpStream::connect_timeout(&portal, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut s = Session {
            stream,
            params: Negotiated::default(),
            cmdsn: 1,
            expstatsn: 0,
            maxcmdsn: 1,
            next_itt: 1,
        };
        let mut security: Vec<(String, String)> = vec![
            ("InitiatorName".into(), initiator.into()),
            (
                "SessionType".into(),
                match kind {
                    SessionKind::Normal(_) => "Normal".into(),
                    SessionKind::Discovery => "Discovery".into(),
                },
            ),
            ("AuthMethod".into(), "None".into()),
        ];
        if let SessionKind::Normal(t) = kind {
            security.insert(1, ("TargetName".into(), t.clone()));
        }
        let mut operational: Vec<(String, String)> = vec![
            ("HeaderDigest".into(), "None".into()),
            ("DataDigest".into(), "None".into()),
            (
                "MaxRecvDataSegmentLength".into(),
                OUR_MAX_RECV_DSL.to_string(),
            ),
        ];
        if matches!(kind, SessionKind::Normal(_)) {
            operational.extend(
                [
                    ("ImmediateData", "Yes".to_string()),
                    ("InitialR2T", "No".to_string()),
                    ("FirstBurstLength", OFFERED_BURST.to_string()),
                    ("MaxBurstLength", OFFERED_BURST.to_string()),
                    ("MaxConnections", "1".to_string()),
                    ("MaxOutstandingR2T", "1".to_string()),
                    ("DataPDUInOrder", "Yes".to_string()),
                    ("DataSequenceInOrder", "Yes".to_string()),
                    ("ErrorRecoveryLevel", "0".to_string()),
                    ("DefaultTime2Wait", "0".to_string()),
                    ("DefaultTime2Retain", "0".to_string()),
                ]
                .map(|(k, v)| (k.to_string(), v)),
            );
        }
        let mut answers: Vec<(String, String)> = Vec::new();
        let mut stage = Stage::Security;
        let mut text = emit_pairs(&security);
        let mut tsih = 0u16;
        let mut offered_operational = false;
        for _round in 0..16 {
            let (nsg, send_text) = match stage {
                Stage::Security => (Stage::Operational, std::mem::take(&mut text)),
                _ => {
                    let t = if offered_operational {
                        Vec::new()
                    } else {
                        offered_operational = true;
                        emit_pairs(&operational)
                    };
                    (Stage::FullFeature, t)
                }
            };
            let req = LoginRequestRepr {
                transit: true,
                cont: false,
                csg: stage,
                nsg,
                version_max: 0,
                version_min: 0,
                isid,
                tsih,
                itt: 0,
                cid: 0,
                cmdsn: s.cmdsn,
                expstatsn: s.expstatsn,
            };
            let hdr = req
                .to_bhs(send_text.len() as u32)
                .map_err(|e| InitError::Protocol(e.to_string()))?;
            write_pdu(&mut s.stream, &hdr, &send_text)?;
            let (rhdr, rdata) = read_pdu(&mut s.stream)?;
            let resp = LoginResponseRepr::parse(&Bhs::new_unchecked(&rhdr[..]))
                .map_err(|e| InitError::Protocol(format!("login response: {e}")))?;
            if (resp.status_class, resp.status_detail) != (0, 0) {
                return Err(InitError::LoginStatus(
                    resp.status_class,
                    resp.status_detail,
                ));
            }
            s.expstatsn = resp.statsn.wrapping_add(1);
            s.maxcmdsn = resp.maxcmdsn;
            tsih = resp.tsih;
            answers.extend(parse_text(&rdata)?);
            if resp.transit {
                match resp.nsg {
                    Stage::FullFeature => {
                        s.stream.set_read_timeout(None)?;
                        s.apply_answers(&answers);
                        return Ok(s);
                    }
                    Stage::Operational => stage = Stage::Operational,
                    other => return proto(format!("target moved to stage {other:?}")),
                }
            }
        }
        proto("login did not finish in 16 exchanges")
    }

    fn apply_answers(&mut self, answers: &[(String, String)]) {
        let mut p = Negotiated::default();
        if let Some(v) = key_bool(answers, "ImmediateData") {
            p.immediate_data = v; // our offer is Yes, so the result is the target's answer
        }
        if let Some(v) = key_bool(answers, "InitialR2T") {
            p.initial_r2t = v;
        }
        if let Some(v) = key_u32(answers, "FirstBurstLength") {
            p.first_burst = v.min(OFFERED_BURST);
        }
        if let Some(v) = key_u32(answers, "MaxBurstLength") {
            p.max_burst = v.min(OFFERED_BURST);
        }
        if let Some(v) = key_u32(answers, "MaxRecvDataSegmentLength") {
            p.target_max_recv_dsl = v.max(512);
        }
        self.params = p;
    }

    /// Allocates an initiator task tag for helper commands (the engine uses its own range).
    fn itt(&mut self) -> u32 {
        let t = self.next_itt | 0x8000_0000;
        self.next_itt = self.next_itt.wrapping_add(1) & 0x7fff_ffff;
        t
    }

    /// SendTargets=All on a discovery session: the target names offered.
    pub fn send_targets(&mut self) -> Result<Vec<String>, InitError> {
        let text = emit_pairs(&[("SendTargets", "All")]);
        let itt = self.itt();
        let req = TextRequestRepr {
            immediate: true,
            final_flag: true,
            cont: false,
            lun: 0,
            itt,
            ttt: RESERVED_TAG,
            cmdsn: self.cmdsn,
            expstatsn: self.expstatsn,
        };
        let hdr = req
            .to_bhs(text.len() as u32)
            .map_err(|e| InitError::Protocol(e.to_string()))?;
        write_pdu(&mut self.stream, &hdr, &text)?;
        let mut all = Vec::new();
        loop {
            let (rhdr, rdata) = read_pdu(&mut self.stream)?;
            let bhs = Bhs::new_unchecked(&rhdr[..]);
            match AnyPdu::parse(&bhs) {
                Ok(AnyPdu::TextResponse(r)) => {
                    self.expstatsn = r.statsn.wrapping_add(1);
                    all.extend_from_slice(&rdata);
                    if r.final_flag && !r.cont {
                        break;
                    }
                    // Ask for the rest.
                    let more = TextRequestRepr { ttt: r.ttt, ..req };
                    let hdr = more
                        .to_bhs(0)
                        .map_err(|e| InitError::Protocol(e.to_string()))?;
                    write_pdu(&mut self.stream, &hdr, &[])?;
                }
                Ok(other) => return proto(format!("unexpected {other:?} during discovery")),
                Err(e) => return proto(format!("bad PDU during discovery: {e}")),
            }
        }
        Ok(parse_text(&all)?
            .into_iter()
            .filter(|(k, _)| k == "TargetName")
            .map(|(_, v)| v)
            .collect())
    }

    /// Runs one non-data or data-in command synchronously and returns its data.
    pub fn sync_command(
        &mut self,
        lun: u64,
        cdb: [u8; 16],
        read_len: u32,
    ) -> Result<Vec<u8>, InitError> {
        let itt = self.itt();
        let cmd = ScsiCommandRepr {
            immediate: false,
            final_flag: true,
            read: read_len > 0,
            write: false,
            attr: 1,
            lun,
            itt,
            edtl: read_len,
            cmdsn: self.cmdsn,
            expstatsn: self.expstatsn,
            cdb,
        };
        self.cmdsn = self.cmdsn.wrapping_add(1);
        let hdr = cmd
            .to_bhs(0)
            .map_err(|e| InitError::Protocol(e.to_string()))?;
        write_pdu(&mut self.stream, &hdr, &[])?;
        let mut out = vec![0u8; read_len as usize];
        loop {
            let (rhdr, rdata) = read_pdu(&mut self.stream)?;
            let bhs = Bhs::new_unchecked(&rhdr[..]);
            match AnyPdu::parse(&bhs) {
                Ok(AnyPdu::DataIn(d)) if d.itt == itt => {
                    let off = d.buffer_offset as usize;
                    let end = off.saturating_add(rdata.len()).min(out.len());
                    if off < end {
                        out[off..end].copy_from_slice(&rdata[..end - off]);
                    }
                    self.maxcmdsn = d.maxcmdsn;
                    if d.status_present {
                        self.expstatsn = d.statsn.wrapping_add(1);
                        if d.status != 0 {
                            return Err(InitError::Scsi {
                                status: d.status,
                                sense_key: 0,
                                asc: 0,
                                ascq: 0,
                            });
                        }
                        return Ok(out);
                    }
                }
                Ok(AnyPdu::ScsiResponse(r)) if r.itt == itt => {
                    self.expstatsn = r.statsn.wrapping_add(1);
                    self.maxcmdsn = r.maxcmdsn;
                    if r.status != 0 || r.response != 0 {
                        let (sense_key, asc, ascq) = decode_sense(&rdata);
                        return Err(InitError::Scsi {
                            status: r.status,
                            sense_key,
                            asc,
                            ascq,
                        });
                    }
                    return Ok(out);
                }
                Ok(AnyPdu::NopIn(n)) => {
                    self.maxcmdsn = n.maxcmdsn;
                    if n.ttt != RESERVED_TAG {
                        self.nop_reply(n.lun, n.ttt)?;
                    }
                }
                Ok(AnyPdu::AsyncMessage(_)) => {}
                Ok(other) => return proto(format!("unexpected {other:?}")),
                Err(e) => return proto(format!("bad PDU: {e}")),
            }
        }
    }

    fn nop_reply(&mut self, lun: u64, ttt: u32) -> Result<(), InitError> {
        let hdr = nop_out_reply(lun, ttt, self.cmdsn, self.expstatsn);
        write_pdu(&mut self.stream, &hdr, &[])
    }

    /// READ CAPACITY(16): (number of logical blocks, logical block length). Retries past unit
    /// attentions (a new I_T nexus usually gets one).
    pub fn read_capacity(&mut self, lun: u64) -> Result<(u64, u32), InitError> {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x9e;
        cdb[1] = 0x10;
        cdb[13] = 32;
        let mut last = None;
        for _ in 0..4 {
            match self.sync_command(lun, cdb, 32) {
                Ok(d) => {
                    let last_lba = u64::from_be_bytes(d[0..8].try_into().unwrap_or([0; 8]));
                    let blk = u32::from_be_bytes(d[8..12].try_into().unwrap_or([0; 4]));
                    if blk == 0 {
                        return proto("READ CAPACITY returned block length 0");
                    }
                    return Ok((last_lba + 1, blk));
                }
                Err(e @ InitError::Scsi { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| InitError::Protocol("READ CAPACITY failed".into())))
    }

    /// Logout (close session) and wait for the response; errors are returned but harmless.
    pub fn logout(mut self) -> Result<(), InitError> {
        let itt = self.itt();
        let req = LogoutRequestRepr {
            reason: LogoutReason::CloseSession,
            itt,
            cid: 0,
            cmdsn: self.cmdsn,
            expstatsn: self.expstatsn,
        };
        let mut hdr = req
            .to_bhs(0)
            .map_err(|e| InitError::Protocol(e.to_string()))?;
        Bhs::new_unchecked(&mut hdr[..]).set_immediate(true);
        write_pdu(&mut self.stream, &hdr, &[])?;
        self.stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        for _ in 0..64 {
            let (rhdr, _) = read_pdu(&mut self.stream)?;
            if let Ok(AnyPdu::LogoutResponse(_)) = AnyPdu::parse(&Bhs::new_unchecked(&rhdr[..])) {
                return Ok(());
            }
        }
        proto("no logout response")
    }
}

/// A NOP-Out answering a target's NOP-In ping (ITT reserved, TTT echoed, immediate).
pub fn nop_out_reply(lun: u64, ttt: u32, cmdsn: u32, expstatsn: u32) -> [u8; BHS_LEN] {
    let mut hdr = [0u8; BHS_LEN];
    tandem_iscsi::wire::NopOutRepr {
        immediate: true,
        lun,
        itt: RESERVED_TAG,
        ttt,
        cmdsn,
        expstatsn,
    }
    .emit(&mut hdr);
    hdr
}

/// Discovers the first target offered by SendTargets on `portal`.
pub fn discover_first(portal: SocketAddr, initiator: &str) -> Result<String, InitError> {
    let mut s = Session::login(
        portal,
        initiator,
        &SessionKind::Discovery,
        [0x80, 0, 0, 0, 0xd1, 0x5c],
    )?;
    let names = s.send_targets()?;
    let _ = s.logout();
    names
        .into_iter()
        .next()
        .ok_or_else(|| InitError::Protocol("SendTargets offered no target".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_numbers() {
        assert!(sn_le(1, 1));
        assert!(sn_le(1, 2));
        assert!(!sn_le(2, 1));
        assert!(sn_le(u32::MAX, 0));
        assert!(!sn_le(0, u32::MAX));
    }

    #[test]
    fn sense_decoding() {
        // SenseLength 18, fixed format, ILLEGAL REQUEST, LBA OUT OF RANGE (21/00).
        let mut d = vec![0, 18, 0x70, 0, 0x05];
        d.resize(2 + 18, 0);
        d[2 + 12] = 0x21;
        assert_eq!(decode_sense(&d), (5, 0x21, 0));
        // Descriptor format.
        assert_eq!(
            decode_sense(&[0, 8, 0x72, 0x06, 0x29, 0x00, 0, 0, 0, 0]),
            (6, 0x29, 0)
        );
        assert_eq!(decode_sense(&[0, 0]), (0, 0, 0));
    }

    #[test]
    fn nop_reply_echoes_ttt() {
        let h = nop_out_reply(0, 0x1234, 7, 9);
        let bhs = Bhs::new_checked(&h[..]).unwrap();
        assert!(bhs.immediate());
        assert_eq!(bhs.itt(), RESERVED_TAG);
        assert_eq!(u32::from_be_bytes([h[20], h[21], h[22], h[23]]), 0x1234);
    }
}
