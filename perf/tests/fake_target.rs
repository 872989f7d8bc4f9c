//! tandem-loadgen against a minimal in-process iSCSI target on 127.0.0.1 (no tgt, no Tandem):
//! login negotiation, READ CAPACITY, reads split over several Data-In PDUs, writes with
//! immediate data, unsolicited Data-Out and R2Ts (small segments and bursts force all three),
//! NOP-In pings, and `--verify` over the lot.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use tandem_iscsi::text::{emit_pairs, parse_pairs, TextLimits};
use tandem_iscsi::wire::{
    pad4, AnyPdu, Bhs, DataInRepr, LoginResponseRepr, LogoutResponseRepr, NopInRepr, PduRepr,
    R2tRepr, ScsiResponseRepr, Stage, BHS_LEN, RESERVED_TAG,
};
use tandem_perf::engine::{CdbSize, Mix};
use tandem_perf::loadgen::{run, LoadgenConfig};

const DISK_BYTES: usize = 4 << 20;
const BLOCK: usize = 512;
/// What the fake target accepts per PDU and per burst: small, so a 64 KiB write needs
/// immediate data, unsolicited Data-Out and R2Ts.
const SEGMENT: u32 = 8192;
const BURST: u32 = 16384;

struct Conn {
    s: TcpStream,
    statsn: u32,
    expcmdsn: u32,
    ttt: u32,
    disk: Vec<u8>,
    commands: u32,
}

struct Write_ {
    itt: u32,
    lun: u64,
    offset: usize,
    len: usize,
    received: usize,
    unsolicited_left: usize,
    burst_left: usize,
    r2tsn: u32,
}

impl Conn {
    fn read_pdu(&mut self) -> Option<([u8; BHS_LEN], Vec<u8>)> {
        let mut h = [0u8; BHS_LEN];
        self.s.read_exact(&mut h).ok()?;
        let bhs = Bhs::new_unchecked(&h[..]);
        let dsl = bhs.data_segment_len() as usize;
        let mut d = vec![0u8; bhs.total_ahs_len() + pad4(dsl)];
        self.s.read_exact(&mut d).ok()?;
        d.truncate(dsl);
        Some((h, d))
    }

    fn send(&mut self, repr: &impl PduRepr, data: &[u8]) {
        let h = repr.to_bhs(data.len() as u32).unwrap();
        let mut out = h.to_vec();
        out.extend_from_slice(data);
        out.resize(BHS_LEN + pad4(data.len()), 0);
        self.s.write_all(&out).unwrap();
    }

    fn maxcmdsn(&self) -> u32 {
        self.expcmdsn.wrapping_add(63)
    }

    fn respond(&mut self, itt: u32, status: u8) {
        let mut r = ScsiResponseRepr::new(itt, status);
        r.statsn = self.statsn;
        self.statsn += 1;
        r.expcmdsn = self.expcmdsn;
        r.maxcmdsn = self.maxcmdsn();
        self.send(&r, &[]);
    }

    /// Data-In in SEGMENT-sized PDUs, status in the last one.
    fn data_in(&mut self, itt: u32, data: &[u8]) {
        let mut off = 0;
        let mut datasn = 0;
        while off < data.len() {
            let n = (data.len() - off).min(SEGMENT as usize);
            let last = off + n == data.len();
            let d = DataInRepr {
                final_flag: last,
                ack: false,
                overflow: false,
                underflow: false,
                status_present: last,
                status: 0,
                lun: 0,
                itt,
                ttt: RESERVED_TAG,
                statsn: if last { self.statsn } else { 0 },
                expcmdsn: self.expcmdsn,
                maxcmdsn: self.maxcmdsn(),
                datasn,
                buffer_offset: off as u32,
                residual: 0,
            };
            if last {
                self.statsn += 1;
            }
            let chunk = data[off..off + n].to_vec();
            self.send(&d, &chunk);
            off += n;
            datasn += 1;
        }
    }

    fn r2t(&mut self, w: &mut Write_) {
        self.ttt += 1;
        let len = (w.len - w.received).min(BURST as usize) as u32;
        w.burst_left = len as usize;
        let r2tsn = w.r2tsn;
        w.r2tsn += 1;
        let r = R2tRepr {
            lun: w.lun,
            itt: w.itt,
            ttt: self.ttt,
            statsn: self.statsn,
            expcmdsn: self.expcmdsn,
            maxcmdsn: self.maxcmdsn(),
            r2tsn,
            buffer_offset: w.received as u32,
            desired_len: len,
        };
        self.send(&r, &[]);
    }

    fn serve(mut self) {
        let mut writes: std::collections::HashMap<u32, Write_> = Default::default();
        while let Some((h, data)) = self.read_pdu() {
            let bhs = Bhs::new_unchecked(&h[..]);
            match AnyPdu::parse(&bhs).unwrap() {
                AnyPdu::LoginRequest(req) => {
                    let keys = parse_pairs(&data, &TextLimits::DEFAULT).unwrap();
                    let mut answer: Vec<(String, String)> = Vec::new();
                    if req.csg == Stage::Operational {
                        for (k, v) in [
                            ("HeaderDigest", "None".to_string()),
                            ("DataDigest", "None".to_string()),
                            ("MaxRecvDataSegmentLength", SEGMENT.to_string()),
                            ("FirstBurstLength", BURST.to_string()),
                            ("MaxBurstLength", BURST.to_string()),
                            ("ImmediateData", "Yes".to_string()),
                            ("InitialR2T", "No".to_string()),
                        ] {
                            if keys.iter().any(|(kk, _)| kk == k) {
                                answer.push((k.to_string(), v));
                            }
                        }
                    }
                    self.expcmdsn = req.cmdsn;
                    let resp = LoginResponseRepr {
                        transit: req.transit,
                        cont: false,
                        csg: req.csg,
                        nsg: req.nsg,
                        version_max: 0,
                        version_active: 0,
                        isid: req.isid,
                        tsih: 7,
                        itt: req.itt,
                        statsn: self.statsn,
                        expcmdsn: self.expcmdsn,
                        maxcmdsn: self.maxcmdsn(),
                        status_class: 0,
                        status_detail: 0,
                    };
                    self.statsn += 1;
                    self.send(&resp, &emit_pairs(&answer));
                }
                AnyPdu::ScsiCommand(c) => {
                    self.expcmdsn = c.cmdsn.wrapping_add(1);
                    self.commands += 1;
                    // A ping now and then: the initiator must answer with the same TTT.
                    if self.commands & 127 == 0 {
                        let n = NopInRepr {
                            lun: 0,
                            itt: RESERVED_TAG,
                            ttt: 0x5000 + self.commands,
                            statsn: self.statsn,
                            expcmdsn: self.expcmdsn,
                            maxcmdsn: self.maxcmdsn(),
                        };
                        self.send(&n, &[]);
                    }
                    let (lba, blocks) = match c.cdb[0] {
                        0x28 | 0x2a => (
                            u64::from(u32::from_be_bytes(c.cdb[2..6].try_into().unwrap())),
                            usize::from(u16::from_be_bytes([c.cdb[7], c.cdb[8]])),
                        ),
                        0x88 | 0x8a => (
                            u64::from_be_bytes(c.cdb[2..10].try_into().unwrap()),
                            u32::from_be_bytes(c.cdb[10..14].try_into().unwrap()) as usize,
                        ),
                        _ => (0, 0),
                    };
                    let offset = lba as usize * BLOCK;
                    let len = blocks * BLOCK;
                    match c.cdb[0] {
                        0x9e => {
                            let mut d = [0u8; 32];
                            d[0..8]
                                .copy_from_slice(&((DISK_BYTES / BLOCK) as u64 - 1).to_be_bytes());
                            d[8..12].copy_from_slice(&(BLOCK as u32).to_be_bytes());
                            self.data_in(c.itt, &d);
                        }
                        0x28 | 0x88 => {
                            assert_eq!(c.edtl as usize, len);
                            let d = self.disk[offset..offset + len].to_vec();
                            self.data_in(c.itt, &d);
                        }
                        0x2a | 0x8a => {
                            assert_eq!(c.edtl as usize, len);
                            assert!(data.len() <= SEGMENT as usize);
                            self.disk[offset..offset + data.len()].copy_from_slice(&data);
                            let unsolicited_left = len.min(BURST as usize) - data.len();
                            assert_eq!(c.final_flag, unsolicited_left == 0);
                            let mut w = Write_ {
                                itt: c.itt,
                                lun: c.lun,
                                offset,
                                len,
                                received: data.len(),
                                unsolicited_left,
                                burst_left: 0,
                                r2tsn: 0,
                            };
                            if w.received == w.len {
                                self.respond(c.itt, 0);
                            } else {
                                if unsolicited_left == 0 {
                                    self.r2t(&mut w);
                                }
                                writes.insert(c.itt, w);
                            }
                        }
                        _ => self.respond(c.itt, 0),
                    }
                }
                AnyPdu::DataOut(d) => {
                    let mut w = writes.remove(&d.itt).expect("Data-Out without a write");
                    assert_eq!(d.buffer_offset as usize, w.received);
                    assert!(data.len() <= SEGMENT as usize);
                    let at = w.offset + w.received;
                    self.disk[at..at + data.len()].copy_from_slice(&data);
                    w.received += data.len();
                    if d.ttt == RESERVED_TAG {
                        w.unsolicited_left -= data.len();
                        assert_eq!(d.final_flag, w.unsolicited_left == 0);
                    } else {
                        w.burst_left -= data.len();
                        assert_eq!(d.final_flag, w.burst_left == 0);
                    }
                    if w.received == w.len {
                        self.respond(w.itt, 0);
                    } else {
                        if d.final_flag {
                            self.r2t(&mut w);
                        }
                        writes.insert(d.itt, w);
                    }
                }
                AnyPdu::NopOut(n) => assert!(n.ttt >= 0x5000, "unexpected NOP-Out {n:?}"),
                AnyPdu::LogoutRequest(l) => {
                    let r = LogoutResponseRepr {
                        response: 0,
                        itt: l.itt,
                        statsn: self.statsn,
                        expcmdsn: self.expcmdsn,
                        maxcmdsn: self.maxcmdsn(),
                        time2wait: 0,
                        time2retain: 0,
                    };
                    self.send(&r, &[]);
                    return;
                }
                other => panic!("fake target got {other:?}"),
            }
        }
    }
}

fn fake_target() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            s.set_nodelay(true).unwrap();
            std::thread::spawn(move || {
                Conn {
                    s,
                    statsn: 1,
                    expcmdsn: 0,
                    ttt: 0,
                    disk: vec![0u8; DISK_BYTES],
                    commands: 0,
                }
                .serve()
            });
        }
    });
    addr
}

fn config(portal: std::net::SocketAddr, mix: Mix, random: bool, bs: u32) -> LoadgenConfig {
    LoadgenConfig {
        portal,
        target: Some("iqn.2026-11.io.tandem:fake".into()),
        initiator: "iqn.2026-11.io.tandem:test".into(),
        lun: 0,
        mix,
        random,
        io_bytes: bs,
        queue_depth: 1,
        jobs: 1,
        duration: None,
        ops_max: Some(400),
        ramp: Duration::ZERO,
        span_bytes: 0,
        verify: true,
        cdb: CdbSize::Auto,
        seed: 1,
        spin: false,
    }
}

#[test]
fn small_writes_then_reads_verify() {
    let portal = fake_target();
    // One connection (one fake disk) per run: write, then mixed with verification.
    let mut c = config(portal, Mix::Mixed(50), true, 4096);
    c.ops_max = Some(2000);
    let r = run(&c).unwrap();
    assert_eq!(r.ops, 2000);
    assert_eq!(r.errors, 0);
    assert_eq!(r.verify_failures, 0, "{:?}", r.first_error);
    assert!(r.read_ops > 0 && r.write_ops > 0);
    assert!(r.latency.p50_us > 0.0 && r.latency.p99_us >= r.latency.p50_us);
}

#[test]
fn large_writes_use_immediate_unsolicited_and_r2t() {
    let portal = fake_target();
    for qd in [1, 4] {
        let mut c = config(portal, Mix::Mixed(50), false, 65536);
        c.queue_depth = qd;
        c.cdb = CdbSize::Sixteen;
        let r = run(&c).unwrap();
        assert_eq!(r.ops, 400);
        assert_eq!(r.errors, 0);
        assert_eq!(r.verify_failures, 0, "{:?}", r.first_error);
    }
}

#[test]
fn pipelined_reads_over_several_jobs() {
    let portal = fake_target();
    let mut c = config(portal, Mix::Read, true, 16384);
    c.queue_depth = 16;
    c.jobs = 2;
    c.verify = false;
    c.ops_max = Some(3000);
    let r = run(&c).unwrap();
    assert_eq!(r.jobs, 2);
    assert!(r.ops >= 3000);
    assert_eq!(r.errors, 0);
    assert!(r.iops > 0.0 && r.mb_s > 0.0);
}
