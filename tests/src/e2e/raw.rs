//! A deliberately simple iSCSI initiator that can send anything, including garbage, for
//! the bad-input tests. No digests; one connection; blocking with a read timeout.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use tandem_iscsi::text::emit_pairs;
use tandem_iscsi::wire::{
    pad4, Bhs, LoginRequestRepr, LoginResponseRepr, Opcode, ScsiCommandRepr, Stage, BHS_LEN,
};

pub struct RawConn {
    pub stream: TcpStream,
    pub cmdsn: u32,
    pub expstatsn: u32,
    next_itt: u32,
}

pub struct Pdu {
    pub bhs: [u8; BHS_LEN],
    pub data: Vec<u8>,
}

impl Pdu {
    pub fn opcode(&self) -> Option<Opcode> {
        Bhs::new_unchecked(&self.bhs[..]).opcode()
    }
}

impl RawConn {
    pub fn connect(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect(addr).expect("connect to the target");
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .expect("set timeout");
        stream.set_nodelay(true).expect("nodelay");
        RawConn::from_stream(stream)
    }

    /// A connection on a stream the caller connected (and set timeouts on).
    pub fn from_stream(stream: TcpStream) -> RawConn {
        RawConn {
            stream,
            cmdsn: 1,
            expstatsn: 0,
            next_itt: 1,
        }
    }

    pub fn itt(&mut self) -> u32 {
        let i = self.next_itt;
        self.next_itt += 1;
        i
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Sends a header (its DataSegmentLength is set from `data`) and the padded data.
    pub fn send(&mut self, mut bhs: [u8; BHS_LEN], data: &[u8]) -> io::Result<()> {
        let n = data.len();
        bhs[5] = (n >> 16) as u8;
        bhs[6] = (n >> 8) as u8;
        bhs[7] = n as u8;
        let mut buf = bhs.to_vec();
        buf.extend_from_slice(data);
        buf.resize(BHS_LEN + pad4(n), 0);
        self.stream.write_all(&buf)
    }

    /// Reads one PDU; `Err` on timeout or when the target closed the connection.
    pub fn recv(&mut self) -> io::Result<Pdu> {
        let mut bhs = [0u8; BHS_LEN];
        self.stream.read_exact(&mut bhs)?;
        let v = Bhs::new_unchecked(&bhs[..]);
        let ahs = v.total_ahs_len();
        let n = v.data_segment_len() as usize;
        let mut rest = vec![0u8; ahs + pad4(n)];
        self.stream.read_exact(&mut rest)?;
        let data = rest[ahs..ahs + n].to_vec();
        // Track StatSN for responses that carry one.
        let statsn = u32::from_be_bytes([bhs[24], bhs[25], bhs[26], bhs[27]]);
        if matches!(
            v.opcode(),
            Some(
                Opcode::ScsiResponse
                    | Opcode::LoginResponse
                    | Opcode::TextResponse
                    | Opcode::LogoutResponse
                    | Opcode::TaskMgmtResponse
            )
        ) {
            self.expstatsn = statsn.wrapping_add(1);
        }
        Ok(Pdu { bhs, data })
    }

    /// True if the target closes the connection (or sends nothing) within the timeout.
    pub fn closed_by_target(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.stream.read(&mut b), Ok(0) | Err(_))
    }

    /// One-PDU login (operational stage straight to full feature phase) with extra keys.
    pub fn login(
        &mut self,
        initiator: &str,
        target: Option<&str>,
        extra: &[(&str, &str)],
    ) -> (LoginResponseRepr, Vec<u8>) {
        let mut pairs: Vec<(String, String)> = vec![("InitiatorName".into(), initiator.into())];
        match target {
            Some(t) => {
                pairs.push(("TargetName".into(), t.into()));
                pairs.push(("SessionType".into(), "Normal".into()));
            }
            None => pairs.push(("SessionType".into(), "Discovery".into())),
        }
        for (k, v) in extra {
            pairs.push((k.to_string(), v.to_string()));
        }
        let data = emit_pairs(&pairs);
        let itt = self.itt();
        let req = LoginRequestRepr {
            transit: true,
            cont: false,
            // No authentication: start in the operational stage, where the target declares
            // its MaxRecvDataSegmentLength.
            csg: Stage::Operational,
            nsg: Stage::FullFeature,
            version_max: 0,
            version_min: 0,
            isid: [0x80, 0, 0, 0x12, 0x34, 0x56],
            tsih: 0,
            itt,
            cid: 0,
            cmdsn: self.cmdsn,
            expstatsn: 0,
        };
        let mut bhs = [0u8; BHS_LEN];
        req.emit(&mut bhs);
        self.send(bhs, &data).expect("send login");
        let pdu = self.recv().expect("login response");
        let resp = LoginResponseRepr::parse(&Bhs::new_unchecked(&pdu.bhs[..]))
            .expect("parse login response");
        (resp, pdu.data)
    }

    /// Sends a SCSI command (LUN 0) and returns its ITT.
    pub fn scsi(&mut self, cdb: &[u8], edtl: u32, read: bool, write: bool, data: &[u8]) -> u32 {
        let itt = self.itt();
        let mut c = [0u8; 16];
        c[..cdb.len().min(16)].copy_from_slice(&cdb[..cdb.len().min(16)]);
        let repr = ScsiCommandRepr {
            immediate: false,
            final_flag: true,
            read,
            write,
            attr: 1,
            lun: 0,
            itt,
            edtl,
            cmdsn: self.cmdsn,
            expstatsn: self.expstatsn,
            cdb: c,
        };
        self.cmdsn = self.cmdsn.wrapping_add(1);
        let mut bhs = [0u8; BHS_LEN];
        repr.emit(&mut bhs);
        self.send(bhs, data).expect("send SCSI command");
        itt
    }
}

/// Outcome of a full SCSI command driven through [`RawConn::command`].
pub struct CommandResult {
    pub status: u8,
    pub data_in: Vec<u8>,
    pub sense: Vec<u8>,
}

impl RawConn {
    /// Runs one SCSI command to completion: sends `immediate` bytes of `data_out` with the
    /// command, answers every R2T with Data-Out PDUs of at most `seg` bytes, gathers Data-In.
    pub fn command(
        &mut self,
        cdb: &[u8],
        read_len: u32,
        data_out: &[u8],
        immediate: usize,
        seg: usize,
    ) -> CommandResult {
        use tandem_iscsi::wire::{DataInRepr, DataOutRepr, R2tRepr, ScsiResponseRepr};
        let write = !data_out.is_empty();
        let edtl = if write {
            data_out.len() as u32
        } else {
            read_len
        };
        let imm = immediate.min(data_out.len());
        let itt = self.scsi(cdb, edtl, read_len > 0, write, &data_out[..imm]);
        let mut data_in = vec![0u8; read_len as usize];
        loop {
            let pdu = self.recv().expect("command response");
            let bhs = Bhs::new_unchecked(&pdu.bhs[..]);
            match pdu.opcode() {
                Some(Opcode::R2T) => {
                    let r = R2tRepr::parse(&bhs).expect("R2T");
                    assert_eq!(r.itt, itt);
                    let (mut off, end) = (
                        r.buffer_offset as usize,
                        (r.buffer_offset + r.desired_len) as usize,
                    );
                    let mut datasn = 0;
                    while off < end {
                        let n = (end - off).min(seg);
                        let d = DataOutRepr {
                            final_flag: off + n == end,
                            lun: 0,
                            itt,
                            ttt: r.ttt,
                            expstatsn: self.expstatsn,
                            datasn,
                            buffer_offset: off as u32,
                        };
                        let mut h = [0u8; BHS_LEN];
                        d.emit(&mut h);
                        self.send(h, &data_out[off..off + n])
                            .expect("send Data-Out");
                        datasn += 1;
                        off += n;
                    }
                }
                Some(Opcode::DataIn) => {
                    let d = DataInRepr::parse(&bhs).expect("Data-In");
                    let o = d.buffer_offset as usize;
                    data_in[o..o + pdu.data.len()].copy_from_slice(&pdu.data);
                    if d.status_present {
                        self.expstatsn = d.statsn.wrapping_add(1);
                        return CommandResult {
                            status: d.status,
                            data_in,
                            sense: Vec::new(),
                        };
                    }
                }
                Some(Opcode::ScsiResponse) => {
                    let r = ScsiResponseRepr::parse(&bhs).expect("SCSI Response");
                    let sense = if pdu.data.len() > 2 {
                        pdu.data[2..].to_vec()
                    } else {
                        Vec::new()
                    };
                    return CommandResult {
                        status: r.status,
                        data_in,
                        sense,
                    };
                }
                // A target ping while the command is held (e.g. a replica waiting for its
                // failover authority): answer it as an initiator does, keep waiting.
                Some(Opcode::NopIn) => {
                    use tandem_iscsi::wire::{NopInRepr, NopOutRepr};
                    let nop = NopInRepr::parse(&bhs).expect("NOP-In");
                    if nop.ttt != u32::MAX {
                        let reply = NopOutRepr {
                            immediate: true,
                            lun: 0,
                            itt: u32::MAX,
                            ttt: nop.ttt,
                            cmdsn: self.cmdsn,
                            expstatsn: self.expstatsn,
                        };
                        let mut h = [0u8; BHS_LEN];
                        reply.emit(&mut h);
                        self.send(h, &[]).expect("send NOP-Out");
                    }
                }
                other => panic!("unexpected PDU {other:?} during a command"),
            }
        }
    }
}

/// A command, retried while the node answers NOT READY 04/0C (logical unit not accessible,
/// target port in unavailable state: a replica that is not serving) or UNIT ATTENTION (ALUA
/// state changes: 2A/06), as multipath would on the same path. Returns the result and how
/// many NOT READY answers came first; gives up (returning the last answer) after `timeout`.
pub fn command_retrying(
    c: &mut RawConn,
    cdb: &[u8],
    read_len: u32,
    data: &[u8],
    timeout: Duration,
) -> (CommandResult, u32) {
    let t0 = std::time::Instant::now();
    let mut not_ready = 0;
    loop {
        let r = c.command(cdb, read_len, data, data.len().min(65536), 262144);
        let key = (r.status == 2 && r.sense.len() > 13)
            .then(|| (r.sense[2] & 0x0f, r.sense[12], r.sense[13]));
        let nr = key == Some((2, 4, 0x0c));
        let ua = key.is_some_and(|k| k.0 == 6);
        if !(nr || ua) || t0.elapsed() > timeout {
            return (r, not_ready);
        }
        if nr {
            not_ready += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
