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

    /// One-PDU login straight to full feature phase with the given extra keys.
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
        pairs.push(("AuthMethod".into(), "None".into()));
        for (k, v) in extra {
            pairs.push((k.to_string(), v.to_string()));
        }
        let data = emit_pairs(&pairs);
        let itt = self.itt();
        let req = LoginRequestRepr {
            transit: true,
            cont: false,
            csg: Stage::Security,
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
