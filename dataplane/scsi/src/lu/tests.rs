//! Command-level tests: call a command, assert its exact data or sense.

use super::block::WRITE_SAME_CHUNK_BYTES;
use super::*;
use crate::pr::PrState;
use crate::{
    Continuation, IoOutcome, IoPlan, PrCommit, ReplyData, ScsiStatus, TargetPort, WriteSource,
};

const BS: usize = 512;
const BLOCKS: u64 = 1024;

fn nexus(id: u64) -> Nexus {
    Nexus {
        id,
        initiator_name: format!("iqn.2026-01.test:host{id}"),
        isid: [0x80, 0, 0, 0, 0, id as u8],
        port: TargetPort {
            relative_port_id: 1,
            tpg_id: 7,
            target_name: "iqn.2026-11.io.tandem:n1-disk".into(),
            tpgt: 1,
        },
    }
}

fn config() -> LuConfig {
    LuConfig {
        identity: LuIdentity::derive("disk-under-test"),
        block_size: BS as u32,
        num_blocks: BLOCKS,
        read_only: false,
        cache: CacheMode::WriteBack,
        unmap_supported: true,
        max_transfer_blocks: 128,
    }
}

/// An LU plus an in-memory disk that performs its I/O plans.
struct Rig {
    lu: LogicalUnit,
    disk: Vec<u8>,
    last_read: Vec<u8>,
    /// A device-run COMPARE AND WRITE found this difference (answered as the outcome).
    device_miscompare: Option<u64>,
}

impl Rig {
    fn new() -> Rig {
        Rig::with(config(), None)
    }

    fn with(cfg: LuConfig, store: Option<Box<dyn PrStore>>) -> Rig {
        let disk = vec![0u8; cfg.num_blocks as usize * cfg.block_size as usize];
        Rig {
            lu: LogicalUnit::new(cfg, store),
            disk,
            last_read: Vec::new(),
            device_miscompare: None,
        }
    }

    fn do_io(&mut self, io: &LuIo, data_out: &[u8]) -> Vec<u8> {
        let bs = self.lu.block_size() as usize;
        match io {
            LuIo::Read { lba, blocks } => {
                let s = *lba as usize * bs;
                self.disk[s..s + *blocks as usize * bs].to_vec()
            }
            LuIo::Write {
                lba, blocks, src, ..
            } => {
                let s = *lba as usize * bs;
                let n = *blocks as usize * bs;
                let bytes = match src {
                    WriteSource::DataOut { offset, len } => {
                        assert_eq!(*len, n);
                        &data_out[*offset..offset + len]
                    }
                    WriteSource::Owned(v) => {
                        assert_eq!(v.len(), n);
                        assert!(v.len() <= WRITE_SAME_CHUNK_BYTES);
                        v.as_slice()
                    }
                };
                self.disk[s..s + n].copy_from_slice(bytes);
                Vec::new()
            }
            LuIo::Unmap { ranges } => {
                for (lba, n) in ranges {
                    let s = *lba as usize * bs;
                    self.disk[s..s + *n as usize * bs].fill(0);
                }
                Vec::new()
            }
            LuIo::Flush => Vec::new(),
            // The device's own compare and write (what a replicated device does cluster-wide).
            LuIo::CompareAndWrite { lba, blocks, .. } => {
                let s = *lba as usize * bs;
                let n = *blocks as usize * bs;
                assert_eq!(data_out.len(), 2 * n);
                let current = &self.disk[s..s + n];
                match current.iter().zip(&data_out[..n]).position(|(a, b)| a != b) {
                    Some(off) => self.device_miscompare = Some(off as u64),
                    None => self.disk[s..s + n].copy_from_slice(&data_out[n..]),
                }
                Vec::new()
            }
            // A one-node stand-in for a replicated device: the change is applied here, as
            // the replication thread does before the I/O completes.
            LuIo::ReservationChange {
                base,
                state,
                notice,
            } => {
                self.lu
                    .apply_cluster_pr((base.0, base.1 + 1), state, notice);
                Vec::new()
            }
        }
    }

    /// Runs a command to completion against the in-memory disk.
    fn run(&mut self, n: &Nexus, cdb: &[u8], data_out: &[u8]) -> Reply {
        let mut step = self.lu.execute(&Command {
            cdb,
            data_out,
            expected_in_len: 0,
            nexus: n,
        });
        loop {
            match step {
                Step::Done(r) => return r,
                Step::Defer => panic!("unexpected defer"),
                // The transport's persister, inline: save, then resume.
                Step::Persist(c) => {
                    let outcome = match c.store.save(&c.blob) {
                        Ok(()) => IoOutcome::Ok { read_data: None },
                        Err(_) => IoOutcome::Failed,
                    };
                    step = self.lu.resume(n, c.cont, outcome, data_out);
                }
                Step::Io(plan) => {
                    let data = self.do_io(&plan.io, data_out);
                    if matches!(plan.io, LuIo::Read { .. }) {
                        self.last_read = data.clone();
                    }
                    if let Some(offset) = self.device_miscompare.take() {
                        step = self.lu.resume(
                            n,
                            plan.cont,
                            IoOutcome::Miscompare { offset },
                            data_out,
                        );
                        continue;
                    }
                    step = self.lu.resume(
                        n,
                        plan.cont,
                        IoOutcome::Ok {
                            read_data: Some(&data),
                        },
                        data_out,
                    );
                }
            }
        }
    }

    fn bytes(&mut self, n: &Nexus, cdb: &[u8]) -> Vec<u8> {
        let r = self.run(n, cdb, &[]);
        assert_eq!(r.status, ScsiStatus::Good, "{cdb:02x?}: {:?}", r.sense);
        match r.data {
            ReplyData::Bytes(b) => b,
            ReplyData::IoBuffer { len } => self.last_read[..len].to_vec(),
            ReplyData::None => Vec::new(),
        }
    }
}

fn sense_of(r: &Reply) -> (u8, u8, u8) {
    assert_eq!(r.status, ScsiStatus::CheckCondition, "{r:?}");
    let s = r.sense.as_ref().unwrap().to_fixed();
    assert_eq!(s.len(), 18);
    (s[2] & 0x0F, s[12], s[13])
}

fn rw16(op: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn rw10(op: u8, lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = op;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

const TUR: [u8; 6] = [0; 6];

// ---- identification -----------------------------------------------------

#[test]
fn standard_inquiry() {
    let mut r = Rig::new();
    let d = r.bytes(&nexus(1), &[0x12, 0, 0, 0, 255, 0]);
    assert_eq!(d.len(), 96);
    assert_eq!(d[0], 0);
    assert_eq!(d[2], 6);
    assert_eq!(d[3] & 0x1F, 0x12);
    assert_eq!(d[5] & 0x30, 0x10);
    assert_eq!(d[7] & 0x02, 0x02);
    assert_eq!(&d[8..16], b"TANDEM  ");
    assert_eq!(&d[16..32], b"TANDEM-DISK     ");
    // Truncated to the allocation length.
    assert_eq!(r.bytes(&nexus(1), &[0x12, 0, 0, 0, 5, 0]).len(), 5);
}

#[test]
fn vpd_pages() {
    let mut r = Rig::new();
    let n = nexus(1);
    let d = r.bytes(&n, &[0x12, 1, 0x00, 0, 255, 0]);
    assert_eq!(&d[4..], &[0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2]);
    let d = r.bytes(&n, &[0x12, 1, 0x80, 0, 255, 0]);
    assert_eq!(
        &d[4..],
        LuIdentity::derive("disk-under-test").serial.as_bytes()
    );
    let b0 = r.bytes(&n, &[0x12, 1, 0xB0, 0, 255, 0]);
    assert_eq!(b0[3], 0x3C);
    assert_eq!(&b0[8..12], &128u32.to_be_bytes());
    assert_eq!(b0[5], 128);
    let b2 = r.bytes(&n, &[0x12, 1, 0xB2, 0, 255, 0]);
    assert_eq!(b2[5] & 0xE0, 0xE0);
    let b1 = r.bytes(&n, &[0x12, 1, 0xB1, 0, 255, 0]);
    assert_eq!(&b1[4..6], &[0, 1]);
    assert_eq!(
        sense_of(&r.run(&n, &[0x12, 1, 0x99, 0, 255, 0], &[])),
        (5, 0x24, 0)
    );
}

#[test]
fn vpd_83_designators() {
    let mut r = Rig::new();
    let id = LuIdentity::derive("disk-under-test");
    let d = r.bytes(&nexus(1), &[0x12, 1, 0x83, 0x01, 0x00, 0]);
    let len = u16::from_be_bytes([d[2], d[3]]) as usize;
    assert_eq!(d.len(), len + 4);
    // Walk the descriptors.
    let mut found = Vec::new();
    let mut off = 4;
    while off + 4 <= d.len() {
        let l = d[off + 3] as usize;
        found.push((d[off], d[off + 1], d[off + 4..off + 4 + l].to_vec()));
        off += 4 + l;
    }
    assert_eq!(off, d.len());
    assert!(found.contains(&(0x01, 0x03, id.naa.to_vec())));
    assert!(found.contains(&(0x01, 0x02, id.eui64.to_vec())));
    let tp = found.iter().find(|f| f.1 == 0x98).unwrap();
    assert!(tp
        .2
        .starts_with(b"iqn.2026-11.io.tandem:n1-disk,t,0x0001\0"));
    assert_eq!(tp.2.len() % 4, 0);
    assert!(found.contains(&(0x51, 0x94, vec![0, 0, 0, 1])));
    assert!(found.contains(&(0x51, 0x95, vec![0, 0, 0, 7])));
}

#[test]
fn read_capacity() {
    let mut r = Rig::new();
    let n = nexus(1);
    let d = r.bytes(&n, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(d, [0, 0, 0x03, 0xFF, 0, 0, 2, 0]);
    let mut c = [0u8; 16];
    c[0] = 0x9E;
    c[1] = 0x10;
    c[13] = 32;
    let d = r.bytes(&n, &c);
    assert_eq!(d.len(), 32);
    assert_eq!(&d[0..8], &(BLOCKS - 1).to_be_bytes());
    assert_eq!(d[14] & 0x80, 0x80);
    r.lu.resize(0x1_0000_0005);
    let _ = r.run(&n, &TUR, &[]); // consume the capacity UA
    let d = r.bytes(&n, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(&d[0..4], &[0xFF; 4]);
}

// ---- reads and writes -----------------------------------------------------

#[test]
fn write_then_read_roundtrip() {
    let mut r = Rig::new();
    let n = nexus(1);
    let data: Vec<u8> = (0..2 * BS).map(|i| i as u8).collect();
    let w = r.run(&n, &rw10(0x2A, 10, 2), &data);
    assert_eq!(w.status, ScsiStatus::Good);
    assert_eq!(r.bytes(&n, &rw16(0x88, 10, 2)), data);
    // READ(6) with length 0 means 256 blocks: above this LU's 128-block limit.
    assert_eq!(
        sense_of(&r.run(&n, &[0x08, 0, 0, 0, 0, 0], &[])),
        (5, 0x24, 0)
    );
    let mut cfg = config();
    cfg.max_transfer_blocks = 0;
    let mut r = Rig::with(cfg, None);
    assert_eq!(r.bytes(&n, &[0x08, 0, 0, 0, 0, 0]).len(), 256 * BS);
}

#[test]
fn read_beyond_capacity_is_lba_out_of_range() {
    let mut r = Rig::new();
    let n = nexus(1);
    assert_eq!(
        sense_of(&r.run(&n, &rw16(0x88, BLOCKS, 1), &[])),
        (5, 0x21, 0)
    );
    assert_eq!(
        sense_of(&r.run(&n, &rw16(0x88, BLOCKS - 1, 2), &[])),
        (5, 0x21, 0)
    );
    assert_eq!(
        sense_of(&r.run(&n, &rw16(0x88, u64::MAX, 1), &[])),
        (5, 0x21, 0)
    );
    // Zero-length at the very end is fine; beyond it is not.
    assert_eq!(
        r.run(&n, &rw16(0x88, BLOCKS, 0), &[]).status,
        ScsiStatus::Good
    );
    assert_eq!(
        sense_of(&r.run(&n, &rw16(0x88, BLOCKS + 1, 0), &[])),
        (5, 0x21, 0)
    );
}

#[test]
fn transfer_limit_and_protect_fields() {
    let mut r = Rig::new();
    let n = nexus(1);
    let s = r.run(&n, &rw10(0x28, 0, 129), &[]);
    assert_eq!(sense_of(&s), (5, 0x24, 0));
    let mut c = rw10(0x28, 0, 1);
    c[1] = 0x20;
    assert_eq!(sense_of(&r.run(&n, &c, &[])), (5, 0x24, 0));
}

#[test]
fn short_data_out_writes_whole_blocks_sent_and_long_is_truncated() {
    let mut r = Rig::new();
    let n = nexus(1);
    // The CDB asks for 3 blocks, 2 were sent: those 2 are written (the
    // transport reports the third as overflow), the third block is untouched.
    let cdb = rw10(0x2A, 0, 3);
    assert_eq!(
        r.lu.data_out_fit(&cdb, 2 * BS as u32),
        DataOutFit::Short(BS as u32)
    );
    assert_eq!(r.run(&n, &cdb, &[7u8; 2 * BS]).status, ScsiStatus::Good);
    assert!(r.disk[..2 * BS].iter().all(|&b| b == 7));
    assert!(r.disk[2 * BS..3 * BS].iter().all(|&b| b == 0));
    // A partial block cannot be written: nothing is.
    let cdb = rw10(0x2A, 8, 2);
    assert_eq!(sense_of(&r.run(&n, &cdb, &[9u8; BS + 7])), (5, 0x0E, 0x03));
    assert!(r.disk[8 * BS..10 * BS].iter().all(|&b| b == 0));
    // Nothing sent at all: nothing to write, GOOD (with an overflow residual).
    assert_eq!(r.lu.data_out_fit(&cdb, 0), DataOutFit::Short(2 * BS as u32));
    assert_eq!(r.run(&n, &cdb, &[]).status, ScsiStatus::Good);
    // More than the CDB asks for: the rest is ignored (underflow).
    let cdb = rw10(0x2A, 1, 1);
    assert_eq!(
        r.lu.data_out_fit(&cdb, 3 * BS as u32),
        DataOutFit::Long(2 * BS as u32)
    );
    let s = r.run(&n, &cdb, &[5u8; 3 * BS]);
    assert_eq!(s.status, ScsiStatus::Good);
    assert!(r.disk[BS..2 * BS].iter().all(|&b| b == 5));
    assert!(r.disk[2 * BS..3 * BS].iter().all(|&b| b == 0));
    // WRITE AND VERIFY follows the same rule; other commands have their own.
    let mut wv = rw10(0x2E, 4, 2);
    wv[1] = 0x02; // BYTCHK
    assert_eq!(r.run(&n, &wv, &[3u8; BS]).status, ScsiStatus::Good);
    assert!(r.disk[4 * BS..5 * BS].iter().all(|&b| b == 3));
    assert!(r.disk[5 * BS..6 * BS].iter().all(|&b| b == 0));
    assert_eq!(r.lu.data_out_fit(&rw10(0x41, 0, 1), 0), DataOutFit::Exact);
    assert_eq!(
        r.lu.data_out_fit(&[0x5F, 0, 0, 0, 0, 0, 0, 0, 24, 0], 10),
        DataOutFit::Exact
    );
    assert_eq!(
        r.lu.data_out_fit(&rw10(0x2A, 0, 1), BS as u32),
        DataOutFit::Exact
    );
}

#[test]
fn read_only_lu_rejects_writes() {
    let mut cfg = config();
    cfg.read_only = true;
    let mut r = Rig::with(cfg, None);
    let n = nexus(1);
    assert_eq!(
        sense_of(&r.run(&n, &rw10(0x2A, 0, 1), &[0; BS])),
        (7, 0x27, 0)
    );
    let mut ms = [0u8; 6];
    ms[0] = 0x1A;
    ms[2] = 0x3F;
    ms[4] = 255;
    let d = r.bytes(&n, &ms);
    assert_eq!(d[2] & 0x80, 0x80);
}

#[test]
fn io_errors_map_to_sense() {
    let r = Rig::new();
    let n = nexus(1);
    let Step::Io(p) = r.lu.execute(&Command {
        cdb: &rw10(0x28, 7, 1),
        data_out: &[],
        expected_in_len: 512,
        nexus: &n,
    }) else {
        panic!()
    };
    let Step::Done(rep) = r.lu.resume(&n, p.cont, IoOutcome::MediumError, &[]) else {
        panic!()
    };
    assert_eq!(sense_of(&rep), (3, 0x11, 0));
    assert_eq!(
        &rep.sense.as_ref().unwrap().to_fixed()[3..7],
        &7u32.to_be_bytes()
    );
    let Step::Io(p) = r.lu.execute(&Command {
        cdb: &rw10(0x2A, 0, 1),
        data_out: &[0; BS],
        expected_in_len: 0,
        nexus: &n,
    }) else {
        panic!()
    };
    let Step::Done(rep) = r.lu.resume(&n, p.cont, IoOutcome::MediumError, &[]) else {
        panic!()
    };
    assert_eq!(sense_of(&rep), (3, 0x0C, 0));
    let Step::Io(p) = r.lu.execute(&Command {
        cdb: &rw10(0x2A, 0, 1),
        data_out: &[0; BS],
        expected_in_len: 0,
        nexus: &n,
    }) else {
        panic!()
    };
    let Step::Done(rep) = r.lu.resume(&n, p.cont, IoOutcome::Failed, &[]) else {
        panic!()
    };
    assert_eq!(sense_of(&rep), (4, 0x44, 0));
    // A replica that is not serving: NOT READY 04/0C (multipath retries elsewhere).
    let Step::Io(p) = r.lu.execute(&Command {
        cdb: &rw10(0x2A, 0, 1),
        data_out: &[0; BS],
        expected_in_len: 0,
        nexus: &n,
    }) else {
        panic!()
    };
    let Step::Done(rep) = r.lu.resume(&n, p.cont, IoOutcome::NotReady, &[]) else {
        panic!()
    };
    assert_eq!(sense_of(&rep), (2, 0x04, 0x0C));
}

// ---- compare and write / verify / write same / unmap ------------------------

fn caw(lba: u64, n: u8) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x89;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[13] = n;
    c
}

#[test]
fn compare_and_write_success_and_miscompare_offset() {
    let mut r = Rig::new();
    let n = nexus(1);
    r.disk[5 * BS..6 * BS].fill(0xAA);
    let mut d = vec![0xAA; BS];
    d.extend(vec![0xBB; BS]);
    assert_eq!(r.run(&n, &caw(5, 1), &d).status, ScsiStatus::Good);
    assert!(r.disk[5 * BS..6 * BS].iter().all(|&b| b == 0xBB));
    // Now the compare data no longer matches at byte 0x23.
    let mut d = vec![0xBB; BS];
    d[0x23] = 0;
    d.extend(vec![0xCC; BS]);
    let rep = r.run(&n, &caw(5, 1), &d);
    assert_eq!(sense_of(&rep), (0x0E, 0x1D, 0));
    let s = rep.sense.unwrap().to_fixed();
    assert_eq!(s[0], 0xF0);
    assert_eq!(&s[3..7], &0x23u32.to_be_bytes());
    assert!(r.disk[5 * BS..6 * BS].iter().all(|&b| b == 0xBB));
}

/// A device that runs COMPARE AND WRITE itself (a replicated device) gets it as one I/O,
/// with the whole Data-Out; its MISCOMPARE keeps the sense and INFORMATION of the local path,
/// and the local range lock is still held meanwhile.
#[test]
fn compare_and_write_by_a_device_that_offers_it() {
    let mut r = Rig::new();
    r.lu.set_device_compare_and_write(true);
    let n = nexus(1);
    r.disk[5 * BS..7 * BS].fill(0xAA);
    let mut d = vec![0xAA; 2 * BS];
    d.extend(vec![0xBB; 2 * BS]);
    let Step::Io(plan) = r.lu.execute(&Command {
        cdb: &caw(5, 2),
        data_out: &d,
        expected_in_len: 0,
        nexus: &n,
    }) else {
        panic!()
    };
    assert_eq!(
        plan.io,
        LuIo::CompareAndWrite {
            lba: 5,
            blocks: 2,
            fua: false
        }
    );
    // An overlapping write on this node waits for it.
    let w = r.lu.execute(&Command {
        cdb: &rw10(0x2A, 6, 1),
        data_out: &d[..BS],
        expected_in_len: 0,
        nexus: &n,
    });
    assert!(matches!(w, Step::Defer));
    drop(plan);
    assert_eq!(r.run(&n, &caw(5, 2), &d).status, ScsiStatus::Good);
    assert!(r.disk[5 * BS..7 * BS].iter().all(|&b| b == 0xBB));
    // Differs at byte BS + 0x11 (second block): MISCOMPARE, INFORMATION = that offset.
    let mut d = vec![0xBB; 2 * BS];
    d[BS + 0x11] = 0;
    d.extend(vec![0xCC; 2 * BS]);
    let rep = r.run(&n, &caw(5, 2), &d);
    assert_eq!(sense_of(&rep), (0x0E, 0x1D, 0));
    let s = rep.sense.unwrap().to_fixed();
    assert_eq!(s[0], 0xF0);
    assert_eq!(&s[3..7], &((BS + 0x11) as u32).to_be_bytes());
    assert!(r.disk[5 * BS..7 * BS].iter().all(|&b| b == 0xBB));
    assert_eq!(crate::rw::inflight_len(&r.lu.inflight), 0);
}

#[test]
fn compare_and_write_is_atomic_against_writes() {
    let r = Rig::new();
    let n1 = nexus(1);
    let n2 = nexus(2);
    let d = vec![0u8; 2 * BS];
    let Step::Io(caw_plan) = r.lu.execute(&Command {
        cdb: &caw(8, 1),
        data_out: &d,
        expected_in_len: 0,
        nexus: &n1,
    }) else {
        panic!()
    };
    // An overlapping write must wait; a disjoint one need not.
    let w = |lba| {
        r.lu.execute(&Command {
            cdb: &rw10(0x2A, lba, 1),
            data_out: &d,
            expected_in_len: 0,
            nexus: &n2,
        })
    };
    assert!(matches!(w(8), Step::Defer));
    assert!(matches!(w(9), Step::Io(_)));
    // Abandoning the continuation releases the range.
    drop(caw_plan);
    assert!(matches!(w(8), Step::Io(_)));
    // And a CAW over an in-flight write is deferred.
    let Step::Io(write_plan) = w(20) else {
        panic!()
    };
    let c = r.lu.execute(&Command {
        cdb: &caw(20, 1),
        data_out: &d,
        expected_in_len: 0,
        nexus: &n1,
    });
    assert!(matches!(c, Step::Defer));
    drop(write_plan);
    assert_eq!(crate::rw::inflight_len(&r.lu.inflight), 0);
}

#[test]
fn compare_and_write_limits() {
    let mut r = Rig::new();
    let n = nexus(1);
    assert_eq!(r.run(&n, &caw(0, 0), &[]).status, ScsiStatus::Good);
    assert_eq!(sense_of(&r.run(&n, &caw(0, 200), &[])), (5, 0x24, 0));
    assert_eq!(
        sense_of(&r.run(&n, &caw(BLOCKS, 1), &[0; 2 * BS])),
        (5, 0x21, 0)
    );
    assert_eq!(sense_of(&r.run(&n, &caw(0, 1), &[0; BS])), (5, 0x24, 0));
    // 256 blocks do not fit the one-byte field: 0 with Data-Out is rejected.
    assert_eq!(
        sense_of(&r.run(&n, &caw(0, 0), &[0; 512 * BS])),
        (5, 0x24, 0)
    );
}

#[test]
fn write_and_verify_reads_back_with_bytchk() {
    let r = Rig::new();
    let n = nexus(1);
    let mut c = rw10(0x2E, 3, 1);
    c[1] = 0x02; // BYTCHK
    let data = vec![0x77u8; BS];
    let Step::Io(p) = r.lu.execute(&Command {
        cdb: &c,
        data_out: &data,
        expected_in_len: 0,
        nexus: &n,
    }) else {
        panic!()
    };
    assert!(matches!(
        p.io,
        LuIo::Write {
            lba: 3,
            blocks: 1,
            fua: true,
            ..
        }
    ));
    let Step::Io(p) =
        r.lu.resume(&n, p.cont, IoOutcome::Ok { read_data: None }, &data)
    else {
        panic!()
    };
    assert_eq!(p.io, LuIo::Read { lba: 3, blocks: 1 });
    // A medium that returns different bytes is a miscompare at that offset.
    let mut back = data.clone();
    back[9] = 0;
    let Step::Done(rep) = r.lu.resume(
        &n,
        p.cont,
        IoOutcome::Ok {
            read_data: Some(&back),
        },
        &data,
    ) else {
        panic!()
    };
    assert_eq!(sense_of(&rep), (0x0E, 0x1D, 0));
    assert_eq!(&rep.sense.unwrap().to_fixed()[3..7], &9u32.to_be_bytes());
    // Without BYTCHK the write completes the command.
    let mut rig = Rig::new();
    assert_eq!(
        rig.run(&n, &rw10(0x2E, 3, 1), &data).status,
        ScsiStatus::Good
    );
    assert_eq!(rig.run(&n, &c, &data).status, ScsiStatus::Good);
}

#[test]
fn verify_bytchk() {
    let mut r = Rig::new();
    let n = nexus(1);
    r.disk[0..BS].fill(1);
    let mut c = rw10(0x2F, 0, 1);
    c[1] = 0x02; // BYTCHK=01
    assert_eq!(r.run(&n, &c, &[1; BS]).status, ScsiStatus::Good);
    let mut d = vec![1u8; BS];
    d[100] = 9;
    let rep = r.run(&n, &c, &d);
    assert_eq!(sense_of(&rep), (0x0E, 0x1D, 0));
    assert_eq!(&rep.sense.unwrap().to_fixed()[3..7], &100u32.to_be_bytes());
    // BYTCHK=0 is a medium check only.
    assert_eq!(r.run(&n, &rw10(0x2F, 0, 1), &[]).status, ScsiStatus::Good);
    assert_eq!(
        sense_of(&r.run(&n, &rw10(0x2F, BLOCKS as u32, 1), &[])),
        (5, 0x21, 0)
    );
}

#[test]
fn write_same_expands_in_chunks_and_unmaps_zeroes() {
    let mut r = Rig::new();
    let n = nexus(1);
    let mut c = rw16(0x93, 0, 1000);
    let rep = r.run(&n, &c, &[0x5A; BS]);
    assert_eq!(rep.status, ScsiStatus::Good);
    assert!(r.disk[..1000 * BS].iter().all(|&b| b == 0x5A));
    assert!(r.disk[1000 * BS..].iter().all(|&b| b == 0));
    // UNMAP bit with a zero block becomes an Unmap I/O.
    c[1] = 0x08;
    let step = r.lu.execute(&Command {
        cdb: &c,
        data_out: &[0; BS],
        expected_in_len: 0,
        nexus: &n,
    });
    let Step::Io(p) = step else { panic!() };
    assert_eq!(
        p.io,
        LuIo::Unmap {
            ranges: vec![(0, 1000)]
        }
    );
    drop(p);
    // WSNZ=0: zero blocks writes through the last LBA.
    assert_eq!(
        r.run(&n, &rw16(0x93, 1000, 0), &[0x77; BS]).status,
        ScsiStatus::Good
    );
    assert!(r.disk[..1000 * BS].iter().all(|&b| b == 0x5A));
    assert!(r.disk[1000 * BS..].iter().all(|&b| b == 0x77));
    // ANCHOR unsupported, too-short data.
    let mut a = rw16(0x93, 0, 1);
    a[1] = 0x18;
    assert_eq!(sense_of(&r.run(&n, &a, &[0; BS])), (5, 0x24, 0));
    assert_eq!(
        sense_of(&r.run(&n, &rw10(0x41, 0, 1), &[0; 10])),
        (5, 0x0E, 3)
    );
    // Beyond MAXIMUM WRITE SAME LENGTH (0xFFFF blocks).
    let mut big = Rig::with(
        LuConfig {
            num_blocks: 0x20000,
            ..config()
        },
        None,
    );
    assert_eq!(
        sense_of(&big.run(&n, &rw16(0x93, 0, 0x10000), &[0; BS])),
        (5, 0x24, 0)
    );
    // NDOB needs no data.
    let mut nd = rw16(0x93, 2000 - 1024, 1);
    nd[1] = 0x01;
    assert_eq!(r.run(&n, &nd, &[]).status, ScsiStatus::Good);
}

#[test]
fn exact_data_out_for_caw_and_write_same() {
    let mut r = Rig::new();
    let n = nexus(1);
    assert_eq!(sense_of(&r.run(&n, &caw(0, 1), &[0; 4 * BS])), (5, 0x24, 0));
    assert_eq!(
        sense_of(&r.run(&n, &rw10(0x41, 0, 1), &[0; 2 * BS])),
        (5, 0x0E, 3)
    );
    assert_eq!(
        sense_of(&r.run(&n, &rw10(0x41, 0, 1), &[0; BS / 2])),
        (5, 0x0E, 3)
    );
}

#[test]
fn software_write_protect_via_control_page() {
    let mut r = Rig::new();
    let n = nexus(1);
    let mut page = r.bytes(&n, &[0x1A, 0x08, 0x0A, 0, 255, 0]);
    page[0] = 0;
    page[8] |= 0x08; // byte 4 of the control page: SWP
    let sel = [0x15, 0x10, 0, 0, page.len() as u8, 0];
    assert_eq!(r.run(&n, &sel, &page).status, ScsiStatus::Good);
    assert_eq!(
        sense_of(&r.run(&n, &rw10(0x2A, 0, 1), &[0; BS])),
        (7, 0x27, 0x02)
    );
    assert_eq!(r.run(&n, &rw10(0x28, 0, 1), &[]).status, ScsiStatus::Good);
    assert_eq!(r.bytes(&n, &[0x1A, 0x08, 0x0A, 0, 255, 0])[2] & 0x80, 0x80);
    page[8] &= !0x08;
    assert_eq!(r.run(&n, &sel, &page).status, ScsiStatus::Good);
    assert_eq!(
        r.run(&n, &rw10(0x2A, 0, 1), &[0; BS]).status,
        ScsiStatus::Good
    );
}

#[test]
fn prefetch_checks_range_only() {
    let mut r = Rig::new();
    let n = nexus(1);
    assert_eq!(r.run(&n, &rw10(0x34, 0, 256), &[]).status, ScsiStatus::Good);
    assert_eq!(r.run(&n, &rw10(0x34, 0, 0), &[]).status, ScsiStatus::Good);
    assert_eq!(
        sense_of(&r.run(&n, &rw10(0x34, BLOCKS as u32 + 1, 0), &[])),
        (5, 0x21, 0)
    );
    assert_eq!(
        sense_of(&r.run(&n, &rw16(0x90, u64::MAX, 1), &[])),
        (5, 0x21, 0)
    );
}

fn unmap_list(ranges: &[(u64, u32)]) -> Vec<u8> {
    let mut p = vec![0u8; 8];
    for (l, n) in ranges {
        p.extend_from_slice(&l.to_be_bytes());
        p.extend_from_slice(&n.to_be_bytes());
        p.extend_from_slice(&[0; 4]);
    }
    let bd = (p.len() - 8) as u16;
    let dl = p.len() as u16 - 2;
    p[0..2].copy_from_slice(&dl.to_be_bytes());
    p[2..4].copy_from_slice(&bd.to_be_bytes());
    p
}

fn unmap_cdb(len: usize) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x42;
    c[7..9].copy_from_slice(&(len as u16).to_be_bytes());
    c
}

#[test]
fn unmap_parsing() {
    let mut r = Rig::new();
    let n = nexus(1);
    r.disk.fill(0xFF);
    let p = unmap_list(&[(0, 2), (10, 0), (100, 1)]);
    assert_eq!(r.run(&n, &unmap_cdb(p.len()), &p).status, ScsiStatus::Good);
    assert!(r.disk[..2 * BS].iter().all(|&b| b == 0));
    assert!(r.disk[2 * BS..3 * BS].iter().all(|&b| b == 0xFF));
    let p = unmap_list(&[(BLOCKS - 1, 2)]);
    assert_eq!(sense_of(&r.run(&n, &unmap_cdb(p.len()), &p)), (5, 0x21, 0));
    assert_eq!(sense_of(&r.run(&n, &unmap_cdb(4), &[0; 4])), (5, 0x1A, 0));
    assert_eq!(r.run(&n, &unmap_cdb(0), &[]).status, ScsiStatus::Good);
    let mut cfg = config();
    cfg.unmap_supported = false;
    let mut r2 = Rig::with(cfg, None);
    let p = unmap_list(&[(0, 1)]);
    assert_eq!(sense_of(&r2.run(&n, &unmap_cdb(p.len()), &p)), (5, 0x20, 0));
    let mut ws = rw10(0x41, 0, 1);
    ws[1] = 0x08;
    assert_eq!(sense_of(&r2.run(&n, &ws, &[0; BS])), (5, 0x24, 0));
    // A read-only LU (no unmap support either) says WRITE PROTECTED.
    let mut ro = Rig::with(
        LuConfig {
            read_only: true,
            unmap_supported: false,
            ..config()
        },
        None,
    );
    assert_eq!(sense_of(&ro.run(&n, &unmap_cdb(p.len()), &p)), (7, 0x27, 0));
}

#[test]
fn sync_cache_and_get_lba_status() {
    let mut r = Rig::new();
    let n = nexus(1);
    let step = r.lu.execute(&Command {
        cdb: &rw10(0x35, 0, 0),
        data_out: &[],
        expected_in_len: 0,
        nexus: &n,
    });
    let Step::Io(p) = step else { panic!() };
    assert_eq!(p.io, LuIo::Flush);
    assert_eq!(
        sense_of(&r.run(&n, &rw16(0x91, BLOCKS + 1, 0), &[])),
        (5, 0x21, 0)
    );
    let mut c = [0u8; 16];
    c[0] = 0x9E;
    c[1] = 0x12;
    c[2..10].copy_from_slice(&10u64.to_be_bytes());
    c[13] = 24;
    let d = r.bytes(&n, &c);
    assert_eq!(d.len(), 24);
    assert_eq!(&d[8..16], &10u64.to_be_bytes());
    assert_eq!(&d[16..20], &((BLOCKS - 10) as u32).to_be_bytes());
    c[2..10].copy_from_slice(&BLOCKS.to_be_bytes());
    assert_eq!(sense_of(&r.run(&n, &c, &[])), (5, 0x21, 0));
}

// ---- unit attentions ------------------------------------------------------

#[test]
fn unit_attention_ordering() {
    let mut r = Rig::new();
    let n = nexus(1);
    r.lu.nexus_added(&n);
    // INQUIRY does not consume the UA.
    r.bytes(&n, &[0x12, 0, 0, 0, 36, 0]);
    r.lu.resize(2048);
    r.lu.set_alua_state(AluaState::ActiveNonOptimized);
    // Power-on first, then capacity, then ALUA; REQUEST SENSE returns and clears.
    assert_eq!(sense_of(&r.run(&n, &TUR, &[])), (6, 0x29, 0));
    let d = r.bytes(&n, &[0x03, 0, 0, 0, 18, 0]);
    assert_eq!((d[2], d[12], d[13]), (6, 0x2A, 0x09));
    assert_eq!(sense_of(&r.run(&n, &TUR, &[])), (6, 0x2A, 0x06));
    assert_eq!(r.run(&n, &TUR, &[]).status, ScsiStatus::Good);
    let d = r.bytes(&n, &[0x03, 0, 0, 0, 18, 0]);
    assert_eq!((d[2], d[12], d[13]), (0, 0, 0));
    // Descriptor format on request.
    let d = r.bytes(&n, &[0x03, 1, 0, 0, 252, 0]);
    assert_eq!(d[0], 0x72);
}

#[test]
fn lun_reset_clears_spc2_reservation_and_notifies_every_nexus_once() {
    let mut r = Rig::new();
    let (a, b) = (nexus(1), nexus(2));
    r.lu.nexus_added(&a);
    r.lu.nexus_added(&b);
    r.run(&a, &TUR, &[]);
    r.run(&b, &TUR, &[]);
    assert_eq!(
        r.run(&a, &[0x16, 0, 0, 0, 0, 0], &[]).status,
        ScsiStatus::Good
    );
    assert_eq!(r.run(&b, &TUR, &[]).status, ScsiStatus::ReservationConflict);
    r.lu.lun_reset(&a);
    // Every path sees it, the one that asked included (multipath hosts
    // check each path), and only once.
    assert_eq!(sense_of(&r.run(&a, &TUR, &[])), (6, 0x29, 0x03));
    assert_eq!(r.run(&a, &TUR, &[]).status, ScsiStatus::Good);
    assert_eq!(sense_of(&r.run(&b, &TUR, &[])), (6, 0x29, 0x03));
    assert_eq!(r.run(&b, &TUR, &[]).status, ScsiStatus::Good);
    // The SPC-2 reservation is gone.
    assert_eq!(
        r.run(&b, &[0x16, 0, 0, 0, 0, 0], &[]).status,
        ScsiStatus::Good
    );
}

/// libiscsi Reserve6.LUNReset: initiator 1 reserves, resets the LUN, then
/// initiator 2 logs in and reserves; the late nexus sees no reset UA.
#[test]
fn lun_reset_is_not_inherited_by_a_later_nexus() {
    let mut r = Rig::new();
    let (a, b, c) = (nexus(1), nexus(2), nexus(3));
    r.lu.nexus_added(&a);
    r.lu.nexus_added(&c);
    r.run(&a, &TUR, &[]);
    r.run(&c, &TUR, &[]);
    assert_eq!(
        r.run(&a, &[0x16, 0, 0, 0, 0, 0], &[]).status,
        ScsiStatus::Good
    );
    r.lu.lun_reset(&a);
    r.lu.nexus_added(&b);
    // b's own power-on UA (consumed by the login TEST UNIT READY), then nothing.
    assert_eq!(sense_of(&r.run(&b, &TUR, &[])), (6, 0x29, 0));
    assert_eq!(
        r.run(&b, &[0x16, 0, 0, 0, 0, 0], &[]).status,
        ScsiStatus::Good
    );
    assert_eq!(
        r.run(&b, &[0x17, 0, 0, 0, 0, 0], &[]).status,
        ScsiStatus::Good
    );
    // a and c existed at the reset: each sees it exactly once.
    let pr_in = [0x5E, 0, 0, 0, 0, 0, 0, 0, 255, 0];
    for n in [&a, &c] {
        assert_eq!(sense_of(&r.run(n, &pr_in, &[])), (6, 0x29, 0x03));
        assert_eq!(r.run(n, &pr_in, &[]).status, ScsiStatus::Good);
    }
}

#[test]
fn target_warm_and_cold_reset_notify_existing_nexuses_once() {
    let mut r = Rig::new();
    let (a, b) = (nexus(1), nexus(2));
    for n in [&a, &b] {
        r.lu.nexus_added(n);
        r.run(n, &TUR, &[]);
    }
    assert_eq!(
        r.run(&b, &[0x16, 0, 0, 0, 0, 0], &[]).status,
        ScsiStatus::Good
    );
    r.lu.target_reset(&a, false);
    // A second reset before anyone looked is still one pending condition.
    r.lu.target_reset(&a, false);
    for n in [&a, &b] {
        assert_eq!(sense_of(&r.run(n, &TUR, &[])), (6, 0x29, 0x03));
        assert_eq!(r.run(n, &TUR, &[]).status, ScsiStatus::Good);
    }
    // The warm reset released b's SPC-2 reservation.
    assert_eq!(
        r.run(&a, &[0x16, 0, 0, 0, 0, 0], &[]).status,
        ScsiStatus::Good
    );
    r.lu.target_reset(&b, true);
    for n in [&a, &b] {
        assert_eq!(sense_of(&r.run(n, &TUR, &[])), (6, 0x29, 0x01));
        assert_eq!(r.run(n, &TUR, &[]).status, ScsiStatus::Good);
    }
    // Nexuses created after the reset do not inherit it.
    let c = nexus(3);
    r.lu.nexus_added(&c);
    assert_eq!(sense_of(&r.run(&c, &TUR, &[])), (6, 0x29, 0));
    assert_eq!(r.run(&c, &TUR, &[]).status, ScsiStatus::Good);
}

#[test]
fn nexus_loss_is_reported_to_the_returning_port_only() {
    let mut r = Rig::new();
    let (a, b) = (nexus(1), nexus(2));
    for n in [&a, &b] {
        r.lu.nexus_added(n);
        r.run(n, &TUR, &[]);
    }
    r.lu.nexus_removed(a.id);
    // Nobody else is told.
    assert_eq!(r.run(&b, &TUR, &[]).status, ScsiStatus::Good);
    // The same initiator port (same name and ISID) logs in again: a new
    // session, the same I_T nexus.
    let a2 = Nexus { id: 11, ..nexus(1) };
    r.lu.nexus_added(&a2);
    assert_eq!(sense_of(&r.run(&a2, &TUR, &[])), (6, 0x29, 0x07));
    assert_eq!(r.run(&a2, &TUR, &[]).status, ScsiStatus::Good);
    // Only once: a third session of that port is a plain power-on again.
    r.lu.nexus_removed(a2.id);
    let a3 = Nexus { id: 12, ..nexus(1) };
    r.lu.nexus_added(&a3);
    assert_eq!(sense_of(&r.run(&a3, &TUR, &[])), (6, 0x29, 0x07));
    let a4 = Nexus { id: 13, ..nexus(1) };
    r.lu.nexus_added(&a4);
    assert_eq!(sense_of(&r.run(&a4, &TUR, &[])), (6, 0x29, 0));
}

#[test]
fn pr_preemption_ua_goes_to_existing_nexuses_of_the_preempted_port_only() {
    let mut r = Rig::new();
    let (a, b) = (nexus(1), nexus(2));
    for n in [&a, &b] {
        r.lu.nexus_added(n);
        r.run(n, &TUR, &[]);
    }
    pr(&mut r, &a, 0, 0, 0, 0xA);
    pr(&mut r, &b, 0, 0, 0, 0xB);
    pr(&mut r, &a, 1, 1, 0xA, 0);
    assert_eq!(pr(&mut r, &b, 4, 1, 0xB, 0xA), ScsiStatus::Good);
    // The preempting nexus gets nothing; the preempted one exactly once.
    assert_eq!(r.run(&b, &TUR, &[]).status, ScsiStatus::Good);
    assert_eq!(sense_of(&r.run(&a, &TUR, &[])), (6, 0x2A, 0x05));
    assert_eq!(r.run(&a, &TUR, &[]).status, ScsiStatus::Good);
    // A nexus of another port created afterwards inherits nothing.
    let c = nexus(3);
    r.lu.nexus_added(&c);
    assert_eq!(sense_of(&r.run(&c, &TUR, &[])), (6, 0x29, 0));
    assert_eq!(r.run(&c, &TUR, &[]).status, ScsiStatus::Good);
}

#[test]
fn alua_and_capacity_changes_are_not_inherited_and_reported_once() {
    let mut r = Rig::new();
    let a = nexus(1);
    r.lu.nexus_added(&a);
    r.run(&a, &TUR, &[]);
    r.lu.set_alua_state(AluaState::ActiveNonOptimized);
    r.lu.set_port_groups(vec![PortGroup {
        tpg_id: 7,
        state: AluaState::ActiveNonOptimized,
        relative_port_ids: vec![1],
    }]);
    r.lu.resize(BLOCKS * 2);
    r.lu.resize(BLOCKS * 3);
    let b = nexus(2);
    r.lu.nexus_added(&b);
    assert_eq!(sense_of(&r.run(&a, &TUR, &[])), (6, 0x2A, 0x06));
    assert_eq!(sense_of(&r.run(&a, &TUR, &[])), (6, 0x2A, 0x09));
    assert_eq!(r.run(&a, &TUR, &[]).status, ScsiStatus::Good);
    assert_eq!(sense_of(&r.run(&b, &TUR, &[])), (6, 0x29, 0));
    assert_eq!(r.run(&b, &TUR, &[]).status, ScsiStatus::Good);
}

#[test]
fn spc2_reserve_release_and_nexus_loss() {
    let mut r = Rig::new();
    let (a, b) = (nexus(1), nexus(2));
    let reserve = [0x16, 0, 0, 0, 0, 0];
    let release = [0x17, 0, 0, 0, 0, 0];
    assert_eq!(r.run(&a, &reserve, &[]).status, ScsiStatus::Good);
    assert_eq!(r.run(&a, &reserve, &[]).status, ScsiStatus::Good);
    assert_eq!(
        r.run(&b, &reserve, &[]).status,
        ScsiStatus::ReservationConflict
    );
    assert_eq!(r.run(&b, &release, &[]).status, ScsiStatus::Good);
    assert_eq!(
        r.run(&b, &[0x1A, 0, 0x3F, 0, 255, 0], &[]).status,
        ScsiStatus::ReservationConflict
    );
    assert_eq!(r.bytes(&b, &[0x12, 0, 0, 0, 36, 0]).len(), 36);
    r.lu.nexus_removed(a.id);
    assert_eq!(r.run(&b, &reserve, &[]).status, ScsiStatus::Good);
}

// ---- ALUA ------------------------------------------------------------------

#[test]
fn alua_states_and_rtpg() {
    let mut r = Rig::new();
    let n = nexus(1);
    r.run(&n, &TUR, &[]);
    r.lu.set_alua_state(AluaState::Standby);
    assert_eq!(sense_of(&r.run(&n, &TUR, &[])), (6, 0x2A, 0x06));
    assert_eq!(sense_of(&r.run(&n, &TUR, &[])), (2, 0x04, 0x0B));
    assert_eq!(
        sense_of(&r.run(&n, &rw10(0x28, 0, 1), &[])),
        (2, 0x04, 0x0B)
    );
    let d = r.bytes(&n, &[0x03, 0, 0, 0, 18, 0]);
    assert_eq!((d[2], d[12], d[13]), (2, 0x04, 0x0B));
    let mut rtpg = [0u8; 12];
    rtpg[0] = 0xA3;
    rtpg[1] = 0x0A;
    rtpg[9] = 255;
    let d = r.bytes(&n, &rtpg);
    assert_eq!(&d[0..4], &12u32.to_be_bytes());
    assert_eq!(d[4] & 0x0F, 2);
    assert_eq!(&d[6..8], &7u16.to_be_bytes());
    assert_eq!(&d[14..16], &1u16.to_be_bytes());
    r.lu.set_port_groups(vec![
        PortGroup {
            tpg_id: 1,
            state: AluaState::ActiveOptimized,
            relative_port_ids: vec![1],
        },
        PortGroup {
            tpg_id: 2,
            state: AluaState::Transitioning,
            relative_port_ids: vec![2],
        },
        PortGroup {
            tpg_id: 7,
            state: AluaState::ActiveOptimized,
            relative_port_ids: vec![1],
        },
    ]);
    assert_eq!(sense_of(&r.run(&n, &TUR, &[])), (6, 0x2A, 0x06));
    rtpg[1] |= 0x20;
    let d = r.bytes(&n, &rtpg);
    assert_eq!(&d[0..4], &40u32.to_be_bytes());
    assert_eq!(d[4], 0x10);
    assert_eq!(d[8 + 12] & 0x0F, 0x0F);
    // Our own group (7) reports the state we enforce (standby), not the hint.
    assert_eq!(&d[8 + 24 + 2..8 + 24 + 4], &7u16.to_be_bytes());
    assert_eq!(d[8 + 24] & 0x0F, 0x02);
    r.lu.set_alua_state(AluaState::Unavailable);
    r.run(&n, &TUR, &[]);
    assert_eq!(sense_of(&r.run(&n, &TUR, &[])), (2, 0x04, 0x0C));
    r.lu.set_alua_state(AluaState::Transitioning);
    r.run(&n, &TUR, &[]);
    assert_eq!(sense_of(&r.run(&n, &TUR, &[])), (2, 0x04, 0x0A));
}

// ---- mode pages ------------------------------------------------------------

#[test]
fn mode_sense_wce_follows_cache_mode() {
    let mut r = Rig::new();
    let n = nexus(1);
    let ms = [0x1A, 0x08, 0x08, 0, 255, 0];
    assert_eq!(r.bytes(&n, &ms)[6] & 0x04, 0x04);
    r.lu.set_cache_mode(CacheMode::None);
    assert_eq!(sense_of(&r.run(&n, &ms, &[])), (6, 0x2A, 0x01));
    assert_eq!(r.bytes(&n, &ms)[6] & 0x04, 0);
    // MODE SENSE(10) with a long LBA block descriptor.
    let d = r.bytes(&n, &[0x5A, 0x10, 0x08, 0, 0, 0, 0, 0, 255, 0]);
    assert_eq!(d[4] & 1, 1);
    assert_eq!(&d[6..8], &[0, 16]);
    assert_eq!(&d[8..16], &BLOCKS.to_be_bytes());
    assert_eq!(u16::from_be_bytes([d[0], d[1]]) as usize, d.len() - 2);
}

#[test]
fn wce_off_on_a_write_back_lu_forces_fua() {
    let mut r = Rig::new();
    let n = nexus(1);
    let write = |r: &Rig| match r.lu.execute(&Command {
        cdb: &rw10(0x2A, 0, 1),
        data_out: &[0; BS],
        expected_in_len: 0,
        nexus: &n,
    }) {
        Step::Io(IoPlan {
            io: LuIo::Write { fua, .. },
            ..
        }) => fua,
        s => panic!("{s:?}"),
    };
    assert!(!write(&r));
    let mut page = r.bytes(&n, &[0x1A, 0x08, 0x08, 0, 255, 0]);
    page[0] = 0;
    page[6] &= !0x04;
    let sel = [0x15, 0x10, 0, 0, page.len() as u8, 0];
    assert_eq!(r.run(&n, &sel, &page).status, ScsiStatus::Good);
    assert!(write(&r));
    // Without a volatile cache there is nothing to force.
    r.lu.set_cache_mode(CacheMode::WriteThrough);
    let _ = r.run(&n, &TUR, &[]);
    assert!(!write(&r));
}

#[test]
fn mode_select_sets_wce_and_tells_other_nexuses() {
    let mut r = Rig::new();
    let (a, b) = (nexus(1), nexus(2));
    r.lu.nexus_added(&a);
    r.lu.nexus_added(&b);
    r.run(&a, &TUR, &[]);
    r.run(&b, &TUR, &[]);
    let mut sense = r.bytes(&a, &[0x1A, 0x08, 0x08, 0, 255, 0]);
    sense[0] = 0;
    sense[6] &= !0x04;
    let sel = [0x15, 0x10, 0, 0, sense.len() as u8, 0];
    assert_eq!(r.run(&a, &sel, &sense).status, ScsiStatus::Good);
    assert_eq!(r.bytes(&a, &[0x1A, 0x08, 0x08, 0, 255, 0])[6] & 0x04, 0);
    assert_eq!(sense_of(&r.run(&b, &TUR, &[])), (6, 0x2A, 0x01));
    // Changing a non-changeable bit is an invalid field in the parameter list.
    sense[7] = 0x80;
    assert_eq!(sense_of(&r.run(&a, &sel, &sense)), (5, 0x26, 0));
    // SP=1 cannot be honoured.
    assert_eq!(
        sense_of(&r.run(&a, &[0x15, 0x11, 0, 0, 0, 0], &[])),
        (5, 0x24, 0)
    );
}

// ---- persistent reservations ------------------------------------------------

fn prout(sa: u8, ty: u8, key: u64, sa_key: u64) -> ([u8; 10], Vec<u8>) {
    let mut c = [0u8; 10];
    c[0] = 0x5F;
    c[1] = sa;
    c[2] = ty;
    c[8] = 24;
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    (c, p)
}

fn pr(r: &mut Rig, n: &Nexus, sa: u8, ty: u8, key: u64, sa_key: u64) -> ScsiStatus {
    let (c, p) = prout(sa, ty, key, sa_key);
    r.run(n, &c, &p).status
}

#[test]
fn pr_register_reserve_and_conflict_from_second_nexus() {
    let mut r = Rig::new();
    let (a, b) = (nexus(1), nexus(2));
    assert_eq!(pr(&mut r, &a, 0, 0, 0, 0xAAAA), ScsiStatus::Good);
    assert_eq!(pr(&mut r, &b, 0, 0, 0, 0xBBBB), ScsiStatus::Good);
    // Wrong key on REGISTER.
    assert_eq!(
        pr(&mut r, &b, 0, 0, 1, 0xBBBB),
        ScsiStatus::ReservationConflict
    );
    assert_eq!(pr(&mut r, &a, 1, 3, 0xAAAA, 0), ScsiStatus::Good); // EXCLUSIVE ACCESS
    assert_eq!(
        r.run(&b, &rw10(0x28, 0, 1), &[]).status,
        ScsiStatus::ReservationConflict
    );
    assert_eq!(r.run(&a, &rw10(0x28, 0, 1), &[]).status, ScsiStatus::Good);
    assert_eq!(r.run(&b, &TUR, &[]).status, ScsiStatus::Good);
    // READ KEYS / READ RESERVATION.
    let d = r.bytes(&b, &[0x5E, 0, 0, 0, 0, 0, 0, 0, 255, 0]);
    assert_eq!(&d[0..4], &2u32.to_be_bytes());
    assert_eq!(&d[4..8], &16u32.to_be_bytes());
    assert_eq!(&d[8..16], &0xAAAAu64.to_be_bytes());
    let d = r.bytes(&b, &[0x5E, 1, 0, 0, 0, 0, 0, 0, 255, 0]);
    assert_eq!(&d[4..8], &16u32.to_be_bytes());
    assert_eq!(&d[8..16], &0xAAAAu64.to_be_bytes());
    assert_eq!(d[21], 3);
    // SPC-2 RESERVE from a non-holder conflicts with the PR.
    assert_eq!(
        r.run(&b, &[0x16, 0, 0, 0, 0, 0], &[]).status,
        ScsiStatus::ReservationConflict
    );
    // Release and the second nexus can read again.
    assert_eq!(pr(&mut r, &a, 2, 3, 0xAAAA, 0), ScsiStatus::Good);
    assert_eq!(r.run(&b, &rw10(0x28, 0, 1), &[]).status, ScsiStatus::Good);
}

#[test]
fn pr_preempt_sends_ua_to_the_preempted() {
    let mut r = Rig::new();
    let (a, b) = (nexus(1), nexus(2));
    pr(&mut r, &a, 0, 0, 0, 0xA);
    pr(&mut r, &b, 0, 0, 0, 0xB);
    pr(&mut r, &a, 1, 1, 0xA, 0);
    assert_eq!(pr(&mut r, &b, 4, 1, 0xB, 0xA), ScsiStatus::Good);
    assert_eq!(sense_of(&r.run(&a, &TUR, &[])), (6, 0x2A, 0x05));
    // a is no longer registered: its writes conflict under WRITE EXCLUSIVE.
    assert_eq!(
        r.run(&a, &rw10(0x2A, 0, 1), &[0; BS]).status,
        ScsiStatus::ReservationConflict
    );
    // CLEAR from b notifies nobody else (a is gone) and drops everything.
    assert_eq!(pr(&mut r, &b, 3, 0, 0xB, 0), ScsiStatus::Good);
    let d = r.bytes(&a, &[0x5E, 0, 0, 0, 0, 0, 0, 0, 255, 0]);
    assert_eq!(&d[0..4], &4u32.to_be_bytes());
    assert_eq!(&d[4..8], &0u32.to_be_bytes());
}

#[test]
fn pr_param_list_length_and_spec_i_pt() {
    let mut r = Rig::new();
    let a = nexus(1);
    let (mut c, p) = prout(0, 0, 0, 1);
    c[8] = 20;
    assert_eq!(sense_of(&r.run(&a, &c, &p)), (5, 0x1A, 0));
    let (c, mut p) = prout(0, 0, 0, 1);
    p[20] = 0x08;
    assert_eq!(sense_of(&r.run(&a, &c, &p)), (5, 0x26, 0));
    // Bad service action in PR IN.
    assert_eq!(
        sense_of(&r.run(&a, &[0x5E, 9, 0, 0, 0, 0, 0, 0, 255, 0], &[])),
        (5, 0x24, 0)
    );
}

struct MemStore(Arc<Mutex<Option<Vec<u8>>>>);

impl PrStore for MemStore {
    fn save(&self, blob: &[u8]) -> std::io::Result<()> {
        *self.0.lock() = Some(blob.to_vec());
        Ok(())
    }
    fn load(&self) -> std::io::Result<Option<Vec<u8>>> {
        Ok(self.0.lock().clone())
    }
}

/// A store that records what it was asked to save and can be told to fail.
#[derive(Clone, Default)]
struct FlakyStore {
    saved: Arc<Mutex<Vec<Vec<u8>>>>,
    fail: Arc<std::sync::atomic::AtomicBool>,
}

impl PrStore for FlakyStore {
    fn save(&self, blob: &[u8]) -> std::io::Result<()> {
        if self.fail.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(std::io::Error::other("disk full"));
        }
        self.saved.lock().push(blob.to_vec());
        Ok(())
    }
    fn load(&self) -> std::io::Result<Option<Vec<u8>>> {
        Ok(self.saved.lock().last().cloned())
    }
}

fn execute(lu: &LogicalUnit, n: &Nexus, cdb: &[u8], data_out: &[u8]) -> Step {
    lu.execute(&Command {
        cdb,
        data_out,
        expected_in_len: 0,
        nexus: n,
    })
}

const READ_KEYS: [u8; 10] = [0x5E, 0, 0, 0, 0, 0, 0, 0, 255, 0];

#[test]
fn pr_out_applies_only_once_its_commit_is_durable() {
    let store = FlakyStore::default();
    let lu = LogicalUnit::new(config(), Some(Box::new(store.clone())));
    let (a, b) = (nexus(1), nexus(2));
    // REGISTER with APTPL: the LU asks for a commit and changes nothing yet.
    let (c, mut p) = prout(0, 0, 0, 0xAB);
    p[20] = 0x01;
    let Step::Persist(commit) = execute(&lu, &a, &c, &p) else {
        panic!("expected a commit")
    };
    assert!(store.saved.lock().is_empty(), "the LU never saves itself");
    let Step::Done(keys) = execute(&lu, &b, &READ_KEYS, &[]) else {
        panic!()
    };
    assert_eq!(keys.data, ReplyData::Bytes(vec![0, 0, 0, 0, 0, 0, 0, 0]));
    // A second PR OUT waits for the first commit's outcome.
    let (c2, p2) = prout(0, 0, 0, 0xCD);
    assert!(matches!(execute(&lu, &b, &c2, &p2), Step::Defer));
    // Durable: now it is applied and answered.
    commit.store.save(&commit.blob).unwrap();
    let Step::Done(r) = lu.resume(&a, commit.cont, IoOutcome::Ok { read_data: None }, &[]) else {
        panic!()
    };
    assert_eq!(r.status, ScsiStatus::Good);
    assert_eq!(
        PrState::decode(&store.saved.lock()[0]).unwrap().regs.len(),
        1
    );
    let Step::Done(keys) = execute(&lu, &b, &READ_KEYS, &[]) else {
        panic!()
    };
    let ReplyData::Bytes(d) = keys.data else {
        panic!()
    };
    assert_eq!(&d[4..16], &[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0xAB]);
    // The waiting PR OUT now goes ahead from the committed state.
    assert!(matches!(execute(&lu, &b, &c2, &p2), Step::Persist(_)));
}

#[test]
fn failed_commit_keeps_the_old_state_and_fails_the_command() {
    let store = FlakyStore::default();
    let mut r = Rig::with(config(), Some(Box::new(store.clone())));
    let (a, b) = (nexus(1), nexus(2));
    // Both register with APTPL (the last REGISTER decides it), so every
    // change after that has to reach the store.
    for (n, key) in [(&a, 0xA), (&b, 0xB)] {
        let (c, mut p) = prout(0, 0, 0, key);
        p[20] = 0x01;
        assert_eq!(r.run(n, &c, &p).status, ScsiStatus::Good);
    }
    assert_eq!(pr(&mut r, &a, 1, 1, 0xA, 0), ScsiStatus::Good);
    let before = r.bytes(&a, &[0x5E, 3, 0, 0, 0, 0, 0, 0, 255, 0]);
    store.fail.store(true, std::sync::atomic::Ordering::Relaxed);
    // b preempts a; the save fails: HARDWARE ERROR / INTERNAL TARGET FAILURE,
    // a is still registered and holds the reservation, and hears nothing.
    let (c, p) = prout(4, 1, 0xB, 0xA);
    assert_eq!(sense_of(&r.run(&b, &c, &p)), (4, 0x44, 0));
    assert_eq!(r.bytes(&a, &[0x5E, 3, 0, 0, 0, 0, 0, 0, 255, 0]), before);
    assert_eq!(r.run(&a, &TUR, &[]).status, ScsiStatus::Good);
    assert_eq!(
        r.run(&b, &rw10(0x2A, 0, 1), &[0; BS]).status,
        ScsiStatus::ReservationConflict
    );
    // The failed commit released its slot: once the store works, the same
    // command succeeds.
    store
        .fail
        .store(false, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(r.run(&b, &c, &p).status, ScsiStatus::Good);
    assert_eq!(sense_of(&r.run(&a, &TUR, &[])), (6, 0x2A, 0x05));
}

#[test]
fn abandoned_commit_settles_by_its_signal() {
    let store = FlakyStore::default();
    let lu = LogicalUnit::new(config(), Some(Box::new(store.clone())));
    let (a, b) = (nexus(1), nexus(2));
    let (c, mut p) = prout(0, 0, 0, 0xA);
    p[20] = 0x01;
    // A commit that never ran (dropped with its command): nothing changes,
    // and the next PR OUT is not blocked.
    let Step::Persist(commit) = execute(&lu, &a, &c, &p) else {
        panic!()
    };
    drop(commit);
    let Step::Persist(commit) = execute(&lu, &a, &c, &p) else {
        panic!("a dropped commit must not block the next PR OUT")
    };
    // A commit whose command was aborted (continuation dropped) while the
    // persister saved it still takes effect: memory matches the store.
    let PrCommit {
        blob,
        store: s,
        signal,
        cont,
    } = commit;
    drop(cont);
    s.save(&blob).unwrap();
    signal.set(true);
    let Step::Done(keys) = execute(&lu, &b, &READ_KEYS, &[]) else {
        panic!()
    };
    let ReplyData::Bytes(d) = keys.data else {
        panic!()
    };
    assert_eq!(&d[4..8], &8u32.to_be_bytes());
}

#[test]
fn changes_that_leave_the_store_as_it_is_need_no_commit() {
    let store = FlakyStore::default();
    let lu = LogicalUnit::new(config(), Some(Box::new(store.clone())));
    let a = nexus(1);
    // Without APTPL the stored blob is the bare header: the first change
    // writes it, later ones find it already there.
    let (c, p) = prout(0, 0, 0, 0xA);
    let Step::Persist(commit) = execute(&lu, &a, &c, &p) else {
        panic!()
    };
    commit.store.save(&commit.blob).unwrap();
    lu.resume(&a, commit.cont, IoOutcome::Ok { read_data: None }, &[]);
    let (c, p) = prout(1, 1, 0xA, 0);
    let Step::Done(r) = execute(&lu, &a, &c, &p) else {
        panic!("expected an immediate answer")
    };
    assert_eq!(r.status, ScsiStatus::Good);
    assert_eq!(store.saved.lock().len(), 1);
}

#[test]
fn pr_aptpl_survives_restart() {
    let shared = Arc::new(Mutex::new(None));
    let mut r = Rig::with(config(), Some(Box::new(MemStore(shared.clone()))));
    let a = nexus(1);
    let (c, mut p) = prout(0, 0, 0, 0x77);
    p[20] = 0x01;
    assert_eq!(r.run(&a, &c, &p).status, ScsiStatus::Good);
    assert_eq!(pr(&mut r, &a, 1, 1, 0x77, 0), ScsiStatus::Good);
    let mut r2 = Rig::with(config(), Some(Box::new(MemStore(shared))));
    let d = r2.bytes(&a, &[0x5E, 1, 0, 0, 0, 0, 0, 0, 255, 0]);
    assert_eq!(&d[8..16], &0x77u64.to_be_bytes());
    let caps = r2.bytes(&a, &[0x5E, 2, 0, 0, 0, 0, 0, 0, 255, 0]);
    assert_eq!(caps[2] & 1, 1);
    assert_eq!(caps[3] & 1, 1);
}

// ---- misc ---------------------------------------------------------------------

#[test]
fn unknown_opcode_and_rsoc() {
    let mut r = Rig::new();
    let n = nexus(1);
    assert_eq!(
        sense_of(&r.run(&n, &[0x02, 0, 0, 0, 0, 0], &[])),
        (5, 0x20, 0)
    );
    let mut c = [0u8; 12];
    c[0] = 0xA3;
    c[1] = 0x0C;
    c[2] = 0x01;
    c[3] = 0x28;
    c[9] = 255;
    let d = r.bytes(&n, &c);
    assert_eq!(d[1] & 7, 3);
    assert_eq!(d[4], 0x28);
}

#[test]
fn lu_is_send_sync_and_continuation_send() {
    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>() {}
    assert_send_sync::<LogicalUnit>();
    assert_send::<Continuation>();
}

// ---- ORWRITE / WRITE ATOMIC / READ DEFECT DATA -----------------------------------

/// Field pointer of an ILLEGAL REQUEST sense: (C/D, byte).
fn field_of(r: &Reply) -> (bool, u16) {
    let s = r.sense.as_ref().unwrap().to_fixed();
    assert_eq!(s[15] & 0x80, 0x80, "SKSV");
    (s[15] & 0x40 != 0, u16::from_be_bytes([s[16], s[17]]))
}

fn wa16(lba: u64, blocks: u16) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x9C;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[12..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

#[test]
fn orwrite_ors_data_out_into_the_blocks() {
    let mut r = Rig::new();
    let n = nexus(1);
    r.disk[4 * BS..6 * BS].fill(0x0F);
    r.disk[5 * BS] = 0x80;
    let mut d = vec![0xF0u8; 2 * BS];
    d[1] = 0x30;
    d[BS] = 0x01;
    assert_eq!(r.run(&n, &rw16(0x8B, 4, 2), &d).status, ScsiStatus::Good);
    let mut want = vec![0xFFu8; 2 * BS];
    want[1] = 0x3F; // 0x0F | 0x30
    want[BS] = 0x81; // 0x80 | 0x01
    assert_eq!(&r.disk[4 * BS..6 * BS], &want[..]);
    // Neighbours untouched.
    assert!(r.disk[3 * BS..4 * BS].iter().all(|&b| b == 0));
    assert!(r.disk[6 * BS..7 * BS].iter().all(|&b| b == 0));
}

#[test]
fn orwrite_reads_then_writes_with_fua_and_excludes_overlapping_writes() {
    let r = Rig::new();
    let n1 = nexus(1);
    let n2 = nexus(2);
    let mut c = rw16(0x8B, 8, 2);
    c[1] = 0x18; // DPO, FUA
    let d = vec![0x01u8; 2 * BS];
    let Step::Io(p) = r.lu.execute(&Command {
        cdb: &c,
        data_out: &d,
        expected_in_len: 0,
        nexus: &n1,
    }) else {
        panic!()
    };
    assert_eq!(p.io, LuIo::Read { lba: 8, blocks: 2 });
    let w = |lba| {
        r.lu.execute(&Command {
            cdb: &rw10(0x2A, lba, 1),
            data_out: &d,
            expected_in_len: 0,
            nexus: &n2,
        })
    };
    // Between the read and the write no overlapping write may land.
    assert!(matches!(w(9), Step::Defer));
    assert!(matches!(w(10), Step::Io(_)));
    let old = vec![0x10u8; 2 * BS];
    let Step::Io(p) = r.lu.resume(
        &n1,
        p.cont,
        IoOutcome::Ok {
            read_data: Some(&old),
        },
        &d,
    ) else {
        panic!()
    };
    assert_eq!(
        p.io,
        LuIo::Write {
            lba: 8,
            blocks: 2,
            src: WriteSource::Owned(vec![0x11; 2 * BS]),
            fua: true,
        }
    );
    assert!(matches!(w(8), Step::Defer));
    let Step::Done(rep) =
        r.lu.resume(&n1, p.cont, IoOutcome::Ok { read_data: None }, &d)
    else {
        panic!()
    };
    assert_eq!(rep.status, ScsiStatus::Good);
    assert!(matches!(w(8), Step::Io(_)));
    // And an ORWRITE over an in-flight write waits for it.
    let Step::Io(write_plan) = w(30) else {
        panic!()
    };
    let o = r.lu.execute(&Command {
        cdb: &rw16(0x8B, 29, 2),
        data_out: &d,
        expected_in_len: 0,
        nexus: &n1,
    });
    assert!(matches!(o, Step::Defer));
    drop(write_plan);
    assert_eq!(crate::rw::inflight_len(&r.lu.inflight), 0);
}

#[test]
fn orwrite_checks() {
    let mut r = Rig::new();
    let n = nexus(1);
    // 0 blocks: nothing to do, but the LBA is still checked.
    assert_eq!(r.run(&n, &rw16(0x8B, 0, 0), &[]).status, ScsiStatus::Good);
    assert_eq!(
        r.run(&n, &rw16(0x8B, BLOCKS, 0), &[]).status,
        ScsiStatus::Good
    );
    for lba in [BLOCKS + 1, 1 << 63, u64::MAX] {
        assert_eq!(sense_of(&r.run(&n, &rw16(0x8B, lba, 0), &[])), (5, 0x21, 0));
    }
    assert_eq!(
        sense_of(&r.run(&n, &rw16(0x8B, BLOCKS - 1, 2), &[0; 2 * BS])),
        (5, 0x21, 0)
    );
    // ORPROTECT without protection information.
    for p in 1..8u8 {
        let mut c = rw16(0x8B, 0, 1);
        c[1] = p << 5;
        let rep = r.run(&n, &c, &[0; BS]);
        assert_eq!(sense_of(&rep), (5, 0x24, 0));
        assert_eq!(field_of(&rep), (true, 1));
    }
    // Beyond MAXIMUM TRANSFER LENGTH (128 blocks).
    let rep = r.run(&n, &rw16(0x8B, 0, 129), &[0; 129 * BS]);
    assert_eq!(sense_of(&rep), (5, 0x24, 0));
    assert_eq!(field_of(&rep), (true, 10));
    // Less Data-Out than the CDB says.
    assert_eq!(
        sense_of(&r.run(&n, &rw16(0x8B, 0, 2), &[0; BS])),
        (5, 0x0E, 3)
    );
    assert!(r.disk.iter().all(|&b| b == 0));
    // A read-only LU refuses it.
    let mut ro = Rig::with(
        LuConfig {
            read_only: true,
            ..config()
        },
        None,
    );
    assert_eq!(
        sense_of(&ro.run(&n, &rw16(0x8B, 0, 1), &[0; BS])),
        (7, 0x27, 0)
    );
}

#[test]
fn write_atomic_limits_in_block_limits_vpd() {
    let mut r = Rig::new();
    let n = nexus(1);
    let b0 = r.bytes(&n, &[0x12, 1, 0xB0, 0, 255, 0]);
    assert_eq!(b0[4] & 0x01, 0, "WSNZ");
    assert_eq!(
        &b0[44..48],
        &128u32.to_be_bytes(),
        "max atomic = max transfer"
    );
    assert_eq!(&b0[48..52], &8u32.to_be_bytes(), "alignment: a 4 KiB block");
    assert_eq!(
        &b0[52..56],
        &8u32.to_be_bytes(),
        "granularity: a 4 KiB block"
    );
    assert_eq!(&b0[56..64], &[0; 8], "no atomic boundaries");
    // 4096-byte blocks: every block is a physical block.
    let mut r4 = Rig::with(
        LuConfig {
            block_size: 4096,
            max_transfer_blocks: 0,
            ..config()
        },
        None,
    );
    let b0 = r4.bytes(&n, &[0x12, 1, 0xB0, 0, 255, 0]);
    assert_eq!(&b0[44..48], &0xFFFFu32.to_be_bytes());
    assert_eq!(&b0[48..56], &[0, 0, 0, 1, 0, 0, 0, 1]);
}

#[test]
fn write_atomic_writes_whole_aligned_physical_blocks() {
    let mut r = Rig::new();
    let n = nexus(1);
    let mut d = vec![0u8; 8 * BS];
    for (i, b) in d.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    assert_eq!(r.run(&n, &wa16(16, 8), &d).status, ScsiStatus::Good);
    assert_eq!(&r.disk[16 * BS..24 * BS], &d[..]);
    assert!(r.disk[24 * BS..25 * BS].iter().all(|&b| b == 0));
    // At the very end of the LU.
    let end = BLOCKS - 128;
    assert_eq!(
        r.run(&n, &wa16(end, 128), &vec![0xA6; 128 * BS]).status,
        ScsiStatus::Good
    );
    assert!(r.disk[end as usize * BS..].iter().all(|&b| b == 0xA6));
    // FUA reaches the I/O.
    let mut c = wa16(0, 8);
    c[1] = 0x18;
    let Step::Io(p) = r.lu.execute(&Command {
        cdb: &c,
        data_out: &d,
        expected_in_len: 0,
        nexus: &n,
    }) else {
        panic!()
    };
    assert_eq!(
        p.io,
        LuIo::Write {
            lba: 0,
            blocks: 8,
            src: WriteSource::DataOut {
                offset: 0,
                len: 8 * BS
            },
            fua: true,
        }
    );
}

#[test]
fn write_atomic_checks() {
    let mut r = Rig::new();
    let n = nexus(1);
    let ok = vec![0x5Au8; 16 * BS];
    // 0 blocks: GOOD, but the LBA is still checked.
    assert_eq!(r.run(&n, &wa16(0, 0), &[]).status, ScsiStatus::Good);
    for lba in [BLOCKS + 8, 1 << 63, u64::MAX - 7] {
        assert_eq!(sense_of(&r.run(&n, &wa16(lba, 0), &[])), (5, 0x21, 0));
        assert_eq!(sense_of(&r.run(&n, &wa16(lba, 8), &ok)), (5, 0x21, 0));
    }
    assert_eq!(
        sense_of(&r.run(&n, &wa16(BLOCKS - 8, 16), &ok)),
        (5, 0x21, 0)
    );
    // Misaligned LBA: INVALID FIELD IN CDB at the LBA.
    let rep = r.run(&n, &wa16(1, 8), &ok);
    assert_eq!(sense_of(&rep), (5, 0x24, 0));
    assert_eq!(field_of(&rep), (true, 2));
    // Not a multiple of the granularity, or above the maximum: at the length.
    for blocks in [1u16, 7, 9, 136] {
        let rep = r.run(&n, &wa16(0, blocks), &vec![0; usize::from(blocks) * BS]);
        assert_eq!(sense_of(&rep), (5, 0x24, 0), "{blocks} blocks");
        assert_eq!(field_of(&rep), (true, 12));
    }
    // ATOMIC BOUNDARY is not supported.
    let mut c = wa16(0, 8);
    c[10..12].copy_from_slice(&1u16.to_be_bytes());
    let rep = r.run(&n, &c, &ok);
    assert_eq!(sense_of(&rep), (5, 0x24, 0));
    assert_eq!(field_of(&rep), (true, 10));
    // WRPROTECT without protection information.
    for p in 1..8u8 {
        let mut c = wa16(0, 8);
        c[1] = p << 5;
        let rep = r.run(&n, &c, &ok);
        assert_eq!(sense_of(&rep), (5, 0x24, 0));
        assert_eq!(field_of(&rep), (true, 1));
    }
    // Too little Data-Out.
    assert_eq!(
        sense_of(&r.run(&n, &wa16(0, 8), &ok[..4 * BS])),
        (5, 0x0E, 3)
    );
    assert!(r.disk.iter().all(|&b| b == 0));
    let mut ro = Rig::with(
        LuConfig {
            read_only: true,
            ..config()
        },
        None,
    );
    assert_eq!(sense_of(&ro.run(&n, &wa16(0, 8), &ok)), (7, 0x27, 0));
}

#[test]
fn write_atomic_is_exclusive_against_overlapping_writes() {
    let r = Rig::new();
    let n1 = nexus(1);
    let n2 = nexus(2);
    let d = vec![0u8; 8 * BS];
    let Step::Io(atomic) = r.lu.execute(&Command {
        cdb: &wa16(8, 8),
        data_out: &d,
        expected_in_len: 0,
        nexus: &n1,
    }) else {
        panic!()
    };
    let w = |lba| {
        r.lu.execute(&Command {
            cdb: &rw10(0x2A, lba, 1),
            data_out: &d,
            expected_in_len: 0,
            nexus: &n2,
        })
    };
    assert!(matches!(w(15), Step::Defer));
    assert!(matches!(w(16), Step::Io(_)));
    drop(atomic);
    let Step::Io(write_plan) = w(12) else {
        panic!()
    };
    let a = r.lu.execute(&Command {
        cdb: &wa16(8, 8),
        data_out: &d,
        expected_in_len: 0,
        nexus: &n1,
    });
    assert!(matches!(a, Step::Defer));
    drop(write_plan);
    assert_eq!(crate::rw::inflight_len(&r.lu.inflight), 0);
}

#[test]
fn read_defect_data_reports_empty_lists() {
    let mut r = Rig::new();
    let n = nexus(1);
    // (10): PLIST, GLIST, bytes-from-index format, echoed with length 0.
    assert_eq!(
        r.bytes(&n, &[0x37, 0, 0x1C, 0, 0, 0, 0, 0, 32, 0]),
        vec![0, 0x1C, 0, 0]
    );
    assert_eq!(
        r.bytes(&n, &[0x37, 0, 0x00, 0, 0, 0, 0, 0, 32, 0]),
        vec![0, 0, 0, 0]
    );
    // Allocation length truncates.
    assert_eq!(
        r.bytes(&n, &[0x37, 0, 0x1C, 0, 0, 0, 0, 0, 2, 0]),
        vec![0, 0x1C]
    );
    // (12): flags in byte 1, 8-byte header (generation code 0, 32-bit length).
    assert_eq!(
        r.bytes(&n, &[0xB7, 0x0B, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0]),
        vec![0, 0x0B, 0, 0, 0, 0, 0, 0]
    );
    // Format 111b is reserved.
    let rep = r.run(&n, &[0x37, 0, 0x07, 0, 0, 0, 0, 0, 32, 0], &[]);
    assert_eq!(sense_of(&rep), (5, 0x24, 0));
    assert_eq!(field_of(&rep), (true, 2));
    let rep = r.run(&n, &[0xB7, 0x07, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0], &[]);
    assert_eq!(field_of(&rep), (true, 1));
}

#[test]
fn rsoc_lists_the_new_commands() {
    let mut r = Rig::new();
    let n = nexus(1);
    for (op, len, b1) in [
        (0x37u8, 10u16, 0x00u8),
        (0x8B, 16, 0xF8),
        (0x9C, 16, 0xF8),
        (0xB7, 12, 0x1F),
    ] {
        let d = r.bytes(&n, &[0xA3, 0x0C, 0x01, op, 0, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(d[1] & 0x07, 3, "{op:#x} supported");
        assert_eq!(&d[2..4], &len.to_be_bytes());
        assert_eq!(d[4], op);
        assert_eq!(d[5], b1, "{op:#x} byte 1 usage");
    }
    // DPO/FUA of ORWRITE and WRITE ATOMIC are honoured, as MODE SENSE says.
    let ms = r.bytes(&n, &[0x1A, 0x08, 0x3F, 0, 255, 0]);
    assert_eq!(ms[2] & 0x10, 0x10);
}

#[test]
fn write_same_zero_blocks_runs_to_the_last_lba() {
    let mut r = Rig::new();
    let n = nexus(1);
    // At the capacity there is nothing left: GOOD without any I/O.
    let step = r.lu.execute(&Command {
        cdb: &rw10(0x41, BLOCKS as u32, 0),
        data_out: &[1; BS],
        expected_in_len: 0,
        nexus: &n,
    });
    assert!(matches!(step, Step::Done(ref rep) if rep.status == ScsiStatus::Good));
    assert_eq!(
        sense_of(&r.run(&n, &rw10(0x41, BLOCKS as u32 + 1, 0), &[1; BS])),
        (5, 0x21, 0)
    );
    assert_eq!(
        sense_of(&r.run(&n, &rw16(0x93, u64::MAX, 0), &[1; BS])),
        (5, 0x21, 0)
    );
    // UNMAP with a zero block unmaps through the end.
    let mut c = rw10(0x41, 1000, 0);
    c[1] = 0x08;
    let Step::Io(p) = r.lu.execute(&Command {
        cdb: &c,
        data_out: &[0; BS],
        expected_in_len: 0,
        nexus: &n,
    }) else {
        panic!()
    };
    assert_eq!(
        p.io,
        LuIo::Unmap {
            ranges: vec![(1000, 24)]
        }
    );
    drop(p);
    // More than MAXIMUM WRITE SAME LENGTH (0xFFFF) to the end is refused;
    // exactly that many is fine.
    let big = Rig::with(
        LuConfig {
            num_blocks: 0x20000,
            ..config()
        },
        None,
    );
    let exec = |lba: u32| {
        big.lu.execute(&Command {
            cdb: &rw10(0x41, lba, 0),
            data_out: &[0; BS],
            expected_in_len: 0,
            nexus: &n,
        })
    };
    let Step::Done(rep) = exec(0x20000 - 0x10000) else {
        panic!()
    };
    assert_eq!(sense_of(&rep), (5, 0x24, 0));
    let Step::Io(p) = exec(0x20000 - 0xFFFF) else {
        panic!()
    };
    assert!(matches!(p.io, LuIo::Write { lba: 0x10001, .. }));
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn decode_never_panics(cdb in proptest::collection::vec(any::<u8>(), 0..20)) {
            let _ = crate::cdb::decode(&cdb);
        }

        #[test]
        fn execute_never_panics(
            op in prop_oneof![
                Just(0x00u8), Just(0x03), Just(0x08), Just(0x0A), Just(0x12), Just(0x15),
                Just(0x16), Just(0x17), Just(0x1A), Just(0x1B), Just(0x25), Just(0x28),
                Just(0x2A), Just(0x2E), Just(0x2F), Just(0x35), Just(0x41), Just(0x42),
                Just(0x55), Just(0x56), Just(0x57), Just(0x5A), Just(0x5E), Just(0x5F),
                Just(0x88), Just(0x89), Just(0x8A), Just(0x8E), Just(0x8F), Just(0x91),
                Just(0x93), Just(0x9E), Just(0xA0), Just(0xA3), Just(0xA8), Just(0xAA),
                Just(0xAE), Just(0xAF), Just(0x37), Just(0x8B), Just(0x9C), Just(0xB7),
                any::<u8>()
            ],
            rest in proptest::collection::vec(any::<u8>(), 0..16),
            data in proptest::collection::vec(any::<u8>(), 0..2048),
            small_lba in any::<bool>(),
        ) {
            let mut cdb = vec![op];
            cdb.extend(rest);
            if small_lba && cdb.len() >= 10 {
                // Keep some commands inside the LU so the I/O paths run too.
                for b in cdb.iter_mut().take(9).skip(2) { *b = 0; }
            }
            let r = Rig::new();
            let n = nexus(1);
            let mut step = r.lu.execute(&Command { cdb: &cdb, data_out: &data, expected_in_len: 0, nexus: &n });
            for _ in 0..4 {
                match step {
                    Step::Io(p) => {
                        let out = match &p.io {
                            LuIo::Read { blocks, .. } => vec![0u8; (*blocks as usize).min(300) * BS],
                            _ => Vec::new(),
                        };
                        step = r.lu.resume(&n, p.cont, IoOutcome::Ok { read_data: Some(&out) }, &data);
                    }
                    _ => break,
                }
            }
        }
    }
}

// ---- more persistent reservation behaviour ------------------------------------

/// Mirrors libiscsi's ProutReserve.Access* matrix: for each type, whether a
/// registered / unregistered second nexus can read and write.
#[test]
fn pr_access_matrix_per_type() {
    let cases = [
        (1u8, (true, false, true, false)),
        (3, (false, false, false, false)),
        (5, (true, true, true, false)),
        (6, (true, true, false, false)),
        (7, (true, true, true, false)),
        (8, (true, true, false, false)),
    ];
    for (ty, (reg_r, reg_w, unreg_r, unreg_w)) in cases {
        let mut r = Rig::new();
        let (a, b) = (nexus(1), nexus(2));
        assert_eq!(pr(&mut r, &a, 6, 0, 0, 0x1111), ScsiStatus::Good);
        assert_eq!(pr(&mut r, &b, 6, 0, 0, 0x2222), ScsiStatus::Good);
        assert_eq!(pr(&mut r, &a, 1, ty, 0x1111, 0), ScsiStatus::Good);
        let d = r.bytes(&a, &[0x5E, 1, 0, 0, 0, 0, 0, 0, 255, 0]);
        let expect_key: u64 = if ty >= 7 { 0 } else { 0x1111 };
        assert_eq!(&d[8..16], &expect_key.to_be_bytes(), "type {ty}");
        assert_eq!(d[21], ty);
        let can = |r: &mut Rig, n: &Nexus, write: bool| {
            let st = if write {
                r.run(n, &rw10(0x2A, 1, 1), &[0; BS]).status
            } else {
                r.run(n, &rw10(0x28, 1, 1), &[]).status
            };
            match st {
                ScsiStatus::Good => true,
                ScsiStatus::ReservationConflict => false,
                s => panic!("unexpected {s:?}"),
            }
        };
        assert!(can(&mut r, &a, false) && can(&mut r, &a, true));
        assert_eq!(can(&mut r, &b, false), reg_r, "type {ty} reg read");
        assert_eq!(can(&mut r, &b, true), reg_w, "type {ty} reg write");
        assert_eq!(pr(&mut r, &b, 0, 0, 0x2222, 0), ScsiStatus::Good);
        assert_eq!(can(&mut r, &b, false), unreg_r, "type {ty} unreg read");
        assert_eq!(can(&mut r, &b, true), unreg_w, "type {ty} unreg write");
        assert_eq!(pr(&mut r, &a, 2, ty, 0x1111, 0), ScsiStatus::Good);
        assert_eq!(pr(&mut r, &a, 0, 0, 0x1111, 0), ScsiStatus::Good);
    }
}

#[test]
fn pr_release_of_registrants_only_notifies_registrants() {
    let mut r = Rig::new();
    let (a, b, c) = (nexus(1), nexus(2), nexus(3));
    for n in [&a, &b, &c] {
        r.run(n, &TUR, &[]);
    }
    pr(&mut r, &a, 6, 0, 0, 1);
    pr(&mut r, &b, 6, 0, 0, 2);
    pr(&mut r, &a, 1, 5, 1, 0);
    assert_eq!(pr(&mut r, &a, 2, 5, 1, 0), ScsiStatus::Good);
    assert_eq!(sense_of(&r.run(&b, &TUR, &[])), (6, 0x2A, 0x04));
    // c never registered: no UA.
    assert_eq!(r.run(&c, &TUR, &[]).status, ScsiStatus::Good);
    assert_eq!(r.run(&a, &TUR, &[]).status, ScsiStatus::Good);
    // Releasing with the wrong type is an error; releasing when not holder is a no-op.
    pr(&mut r, &a, 1, 1, 1, 0);
    let (cdb, p) = prout(2, 3, 1, 0);
    assert_eq!(sense_of(&r.run(&a, &cdb, &p)), (5, 0x26, 0x04));
    assert_eq!(pr(&mut r, &b, 2, 1, 2, 0), ScsiStatus::Good);
    let d = r.bytes(&b, &[0x5E, 1, 0, 0, 0, 0, 0, 0, 255, 0]);
    assert_eq!(&d[4..8], &16u32.to_be_bytes());
}

#[test]
fn pr_generation_and_unregistered_actions() {
    let mut r = Rig::new();
    let (a, b) = (nexus(1), nexus(2));
    let gen = |r: &mut Rig| {
        let d = r.bytes(&a, &[0x5E, 0, 0, 0, 0, 0, 0, 0, 255, 0]);
        u32::from_be_bytes([d[0], d[1], d[2], d[3]])
    };
    assert_eq!(gen(&mut r), 0);
    pr(&mut r, &a, 0, 0, 0, 5);
    assert_eq!(gen(&mut r), 1);
    // RESERVE / RELEASE do not bump the generation.
    pr(&mut r, &a, 1, 1, 5, 0);
    pr(&mut r, &a, 2, 1, 5, 0);
    assert_eq!(gen(&mut r), 1);
    // Unregistered nexus: RESERVE, RELEASE, CLEAR, PREEMPT conflict.
    for sa in [1u8, 2, 3, 4] {
        assert_eq!(
            pr(&mut r, &b, sa, 1, 0, 5),
            ScsiStatus::ReservationConflict,
            "sa {sa}"
        );
    }
    // Scope other than LU, or a bad type.
    let (mut cdb, p) = prout(1, 1, 5, 0);
    cdb[2] = 0x11;
    assert_eq!(sense_of(&r.run(&a, &cdb, &p)), (5, 0x24, 0));
    let (cdb, p) = prout(1, 2, 5, 0);
    assert_eq!(sense_of(&r.run(&a, &cdb, &p)), (5, 0x24, 0));
    // PREEMPT of a key nobody holds conflicts; key 0 without reservation is invalid.
    assert_eq!(pr(&mut r, &a, 4, 1, 5, 99), ScsiStatus::ReservationConflict);
    let (cdb, p) = prout(4, 1, 5, 0);
    assert_eq!(sense_of(&r.run(&a, &cdb, &p)), (5, 0x26, 0));
    assert_eq!(gen(&mut r), 1);
}

#[test]
fn pr_register_and_move_via_lu() {
    let mut r = Rig::new();
    let (a, b) = (nexus(1), nexus(2));
    r.run(&b, &TUR, &[]);
    pr(&mut r, &a, 0, 0, 0, 0xA);
    pr(&mut r, &a, 1, 1, 0xA, 0);
    let name = format!("{},i,0x800000000002", b.initiator_name);
    let mut tid = vec![0x45, 0, 0, 0];
    let mut s = name.into_bytes();
    s.push(0);
    s.resize(s.len().next_multiple_of(4), 0);
    tid[2..4].copy_from_slice(&(s.len() as u16).to_be_bytes());
    tid.extend(s);
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&0xAu64.to_be_bytes());
    p[8..16].copy_from_slice(&0xBu64.to_be_bytes());
    p[19] = 1;
    p[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
    p.extend(tid);
    let mut cdb = [0u8; 10];
    cdb[0] = 0x5F;
    cdb[1] = 7;
    cdb[2] = 1;
    cdb[5..9].copy_from_slice(&(p.len() as u32).to_be_bytes());
    assert_eq!(r.run(&a, &cdb, &p).status, ScsiStatus::Good);
    // b now holds WRITE EXCLUSIVE; a (still registered) cannot write.
    assert_eq!(
        r.run(&b, &rw10(0x2A, 0, 1), &[0; BS]).status,
        ScsiStatus::Good
    );
    assert_eq!(
        r.run(&a, &rw10(0x2A, 0, 1), &[0; BS]).status,
        ScsiStatus::ReservationConflict
    );
    let d = r.bytes(&a, &[0x5E, 3, 0, 0, 0, 0, 0, 0, 255, 0]);
    // Two descriptors; the holder is b with key 0xB.
    let len = u32::from_be_bytes([d[4], d[5], d[6], d[7]]) as usize;
    assert_eq!(d.len(), 8 + len);
    let mut off = 8;
    let mut holders = Vec::new();
    while off < d.len() {
        let key = u64::from_be_bytes(d[off..off + 8].try_into().unwrap());
        let holder = d[off + 12] & 1 == 1;
        let tl = u32::from_be_bytes(d[off + 20..off + 24].try_into().unwrap()) as usize;
        holders.push((key, holder));
        off += 24 + tl;
    }
    assert_eq!(holders, vec![(0xA, false), (0xB, true)]);
}

// ---- concurrency ------------------------------------------------------------------

#[test]
fn shared_lu_across_threads() {
    let lu = Arc::new(LogicalUnit::new(config(), None));
    let handles: Vec<_> = (0..4u64)
        .map(|t| {
            let lu = Arc::clone(&lu);
            std::thread::spawn(move || {
                let n = nexus(t + 1);
                lu.nexus_added(&n);
                let data = vec![t as u8; 2 * BS];
                let mut deferred = 0;
                for i in 0..200u32 {
                    let lba = (i % 16) as u64;
                    let cdb = if i % 3 == 0 {
                        caw(lba, 1)
                    } else {
                        rw16(0x8A, lba, 1)
                    };
                    let step = lu.execute(&Command {
                        cdb: &cdb,
                        data_out: if i % 3 == 0 { &data } else { &data[..BS] },
                        expected_in_len: 0,
                        nexus: &n,
                    });
                    match step {
                        // Drop the continuation half the time, resume the rest.
                        Step::Io(p) if i % 2 == 0 => drop(p),
                        Step::Io(p) => {
                            let _ = lu.resume(&n, p.cont, IoOutcome::Failed, &data);
                        }
                        Step::Defer => deferred += 1,
                        Step::Done(_) | Step::Persist(_) => {}
                    }
                }
                deferred
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(crate::rw::inflight_len(&lu.inflight), 0);
}

mod fuzz_params {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1500))]

        /// Parameter-list commands with CDB lengths that match random payloads.
        #[test]
        fn parameter_lists_never_panic(
            which in 0u8..5,
            sa in 0u8..10,
            ty in 0u8..16,
            data in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let r = Rig::new();
            let n = nexus(1);
            let len = data.len();
            let cdb: Vec<u8> = match which {
                0 => vec![0x15, 0x10, 0, 0, len.min(255) as u8, 0],
                1 => {
                    let mut c = vec![0x55, 0x10, 0, 0, 0, 0, 0, 0, 0, 0];
                    c[7..9].copy_from_slice(&(len as u16).to_be_bytes());
                    c
                }
                2 => {
                    let mut c = vec![0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                    c[7..9].copy_from_slice(&(len as u16).to_be_bytes());
                    c
                }
                _ => {
                    let mut c = vec![0x5F, sa, ty, 0, 0, 0, 0, 0, 0, 0];
                    c[5..9].copy_from_slice(&(len as u32).to_be_bytes());
                    c
                }
            };
            let step = r.lu.execute(&Command { cdb: &cdb, data_out: &data, expected_in_len: 0, nexus: &n });
            if let Step::Io(p) = step {
                let _ = r.lu.resume(&n, p.cont, IoOutcome::Ok { read_data: None }, &data);
            }
        }

        #[test]
        fn pr_blob_decode_never_panics(blob in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut b = b"TPR1\x01".to_vec();
            b.extend(&blob);
            let _ = crate::pr::PrState::decode(&b);
            let _ = crate::pr::PrState::decode(&blob);
        }
    }
}

mod fuzz_sequences {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Cmd {
            nexus: u64,
            cdb: Vec<u8>,
            data_len: usize,
            outcome: u8,
        },
        Added(u64),
        Removed(u64),
        Reset(u64),
        Resize(u64),
        Alua(u8),
        Cache(u8),
    }

    /// CDB templates with small LBAs so commands reach their I/O paths.
    fn cdb_strategy() -> impl Strategy<Value = Vec<u8>> {
        let ops = prop_oneof![
            Just(0x28u8),
            Just(0x2A),
            Just(0x88),
            Just(0x8A),
            Just(0x89),
            Just(0x2F),
            Just(0x41),
            Just(0x93),
            Just(0x42),
            Just(0x35),
            Just(0x5E),
            Just(0x5F),
            Just(0x16),
            Just(0x17),
            Just(0x15),
            Just(0x1A),
            Just(0x03),
            Just(0x00),
            Just(0xA3),
            Just(0x9E),
            Just(0x12),
            Just(0x2E)
        ];
        (
            ops,
            proptest::collection::vec(any::<u8>(), 15),
            0u8..4,
            0u8..8,
        )
            .prop_map(|(op, mut rest, lba, len)| {
                let mut cdb = vec![op];
                cdb.append(&mut rest);
                // Keep LBA small and lengths short for the data commands.
                if matches!(op, 0x28 | 0x2A | 0x2F | 0x41 | 0x35 | 0x2E) {
                    cdb[2..6].copy_from_slice(&u32::from(lba).to_be_bytes());
                    cdb[7] = 0;
                    cdb[8] = len;
                    cdb[9] = 0;
                } else if matches!(op, 0x88 | 0x8A | 0x89 | 0x93) {
                    cdb[2..10].copy_from_slice(&u64::from(lba).to_be_bytes());
                    cdb[10..14].copy_from_slice(&u32::from(len).to_be_bytes());
                    cdb[15] = 0;
                }
                cdb
            })
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (1u64..4, cdb_strategy(), 0usize..5000, 0u8..4).prop_map(
                |(nexus, cdb, data_len, outcome)| Op::Cmd { nexus, cdb, data_len, outcome }
            ),
            1 => (1u64..4).prop_map(Op::Added),
            1 => (1u64..4).prop_map(Op::Removed),
            1 => (1u64..4).prop_map(Op::Reset),
            1 => (0u64..2048).prop_map(Op::Resize),
            1 => (0u8..5).prop_map(Op::Alua),
            1 => (0u8..3).prop_map(Op::Cache),
        ]
    }

    fn check_reply(r: &Reply) {
        match r.status {
            ScsiStatus::CheckCondition => {
                let s = r
                    .sense
                    .as_ref()
                    .expect("CHECK CONDITION carries sense")
                    .to_fixed();
                assert_eq!(s.len(), 18);
                assert_eq!(s[0] & 0x7F, 0x70);
            }
            _ => assert!(r.sense.is_none()),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn random_sequences_keep_invariants(ops in proptest::collection::vec(op_strategy(), 1..40)) {
            let lu = LogicalUnit::new(config(), None);
            let mut held = Vec::new();
            for op in ops {
                match op {
                    Op::Cmd { nexus: id, cdb, data_len, outcome } => {
                        let n = nexus(id);
                        let data: Vec<u8> = (0..data_len).map(|i| i as u8).collect();
                        let mut step = lu.execute(&Command { cdb: &cdb, data_out: &data, expected_in_len: 0, nexus: &n });
                        for _ in 0..8 {
                            match step {
                                Step::Done(r) => { check_reply(&r); break; }
                                Step::Defer => break,
                                Step::Persist(c) => {
                                    let oc = if outcome == 0 { IoOutcome::Ok { read_data: None } } else { IoOutcome::Failed };
                                    step = lu.resume(&n, c.cont, oc, &data);
                                }
                                Step::Io(p) => {
                                    // Sometimes keep the continuation alive to create overlap.
                                    if outcome == 3 { held.push(p); break; }
                                    let buf = match &p.io {
                                        LuIo::Read { blocks, .. } => vec![0u8; *blocks as usize * BS],
                                        _ => Vec::new(),
                                    };
                                    let oc = match outcome {
                                        0 => IoOutcome::Ok { read_data: Some(&buf) },
                                        1 => IoOutcome::MediumError,
                                        _ => IoOutcome::Failed,
                                    };
                                    step = lu.resume(&n, p.cont, oc, &data);
                                }
                            }
                        }
                    }
                    Op::Added(id) => lu.nexus_added(&nexus(id)),
                    Op::Removed(id) => lu.nexus_removed(id),
                    Op::Reset(id) => lu.lun_reset(&nexus(id)),
                    Op::Resize(b) => lu.resize(b),
                    Op::Alua(s) => lu.set_alua_state([
                        AluaState::ActiveOptimized,
                        AluaState::ActiveNonOptimized,
                        AluaState::Standby,
                        AluaState::Unavailable,
                        AluaState::Transitioning,
                    ][s as usize]),
                    Op::Cache(c) => lu.set_cache_mode([CacheMode::None, CacheMode::WriteThrough, CacheMode::WriteBack][c as usize]),
                }
            }
            drop(held);
            prop_assert_eq!(crate::rw::inflight_len(&lu.inflight), 0);
        }
    }
}

#[test]
fn standby_admits_identification_capacity_mode_and_pr() {
    let mut r = Rig::new();
    let n = nexus(1);
    r.lu.set_alua_state(AluaState::Standby);
    let cmds: [&[u8]; 6] = [
        &[0x12, 0, 0, 0, 36, 0],
        &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        &[0x1A, 0x08, 0x08, 0, 255, 0],
        &[0x5E, 0, 0, 0, 0, 0, 0, 0, 255, 0],
        &[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0],
        &[0xA3, 0x0C, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0],
    ];
    for c in cmds {
        assert_eq!(r.run(&n, c, &[]).status, ScsiStatus::Good, "{c:02x?}");
    }
    assert_eq!(sense_of(&r.run(&n, &rw10(0x35, 0, 0), &[])), (2, 4, 0x0B));
    assert_eq!(
        sense_of(&r.run(&n, &rw10(0x2A, 0, 1), &[0; BS])),
        (2, 4, 0x0B)
    );
}

#[test]
fn unit_attention_beats_every_other_error_but_not_inquiry() {
    let mut r = Rig::new();
    let n = nexus(1);
    r.lu.nexus_added(&n);
    // Even an unknown opcode reports the pending UA first.
    assert_eq!(sense_of(&r.run(&n, &[0xC1; 16], &[])), (6, 0x29, 0));
    assert_eq!(sense_of(&r.run(&n, &[0xC1; 16], &[])), (5, 0x20, 0));
    r.lu.resize(10);
    // REPORT LUNS answered by the LU itself does not consume it either.
    let d = r.bytes(&n, &[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0]);
    assert_eq!(&d[0..4], &8u32.to_be_bytes());
    assert_eq!(
        sense_of(&r.run(&n, &rw10(0x28, 0, 1), &[])),
        (6, 0x2A, 0x09)
    );
    // After the UA, the new capacity applies.
    assert_eq!(sense_of(&r.run(&n, &rw10(0x28, 10, 1), &[])), (5, 0x21, 0));
}

#[test]
fn nexus_removal_keeps_registrations() {
    let mut r = Rig::new();
    let (a, b) = (nexus(1), nexus(2));
    pr(&mut r, &a, 0, 0, 0, 0x55);
    pr(&mut r, &a, 1, 3, 0x55, 0);
    r.lu.nexus_removed(a.id);
    // The reservation survives the I_T nexus loss; b is still locked out.
    assert_eq!(
        r.run(&b, &rw10(0x28, 0, 1), &[]).status,
        ScsiStatus::ReservationConflict
    );
    // The same initiator port coming back is still the holder.
    assert_eq!(r.run(&a, &rw10(0x28, 0, 1), &[]).status, ScsiStatus::Good);
}

#[test]
fn reply_carries_the_sense_value_with_its_field_pointer() {
    let mut r = Rig::new();
    let n = nexus(1);
    // An unsupported VPD page: the transport gets the value, field pointer
    // included, and renders it itself.
    let s = r.run(&n, &[0x12, 1, 0x99, 0, 255, 0], &[]).sense.unwrap();
    assert_eq!(s.triple(), (5, 0x24, 0));
    let fp = s.field.expect("INVALID FIELD IN CDB points at the field");
    assert!(fp.in_cdb);
    assert_eq!(fp.byte, 2);
    assert_eq!(s.to_fixed()[15] & 0xC0, 0xC0);
}

#[test]
fn cache_mode_is_the_configuration_type() {
    // One vocabulary: what the configuration says is what the LU and the
    // block devices take, with no translation layer to get wrong.
    let from_config: tandem_config::CacheMode = "write-back".parse().unwrap();
    let lu = LogicalUnit::new(
        LuConfig {
            cache: from_config,
            ..config()
        },
        None,
    );
    lu.set_cache_mode(tandem_config::CacheMode::None);
    assert_eq!(CacheMode::WriteBack, from_config);
}

#[test]
fn a_replica_reports_its_own_cluster_port_and_every_nodes_group() {
    let mut r = Rig::new();
    let n = nexus(1);
    // Node 2 of a replicated device: its port group and relative port are 2, whatever the
    // transport's single-node values (7 and 1 in this rig) are.
    r.lu.set_cluster_port(2, 2);
    r.lu.set_port_groups(vec![
        PortGroup {
            tpg_id: 1,
            state: AluaState::ActiveOptimized,
            relative_port_ids: vec![1],
        },
        PortGroup {
            tpg_id: 2,
            state: AluaState::ActiveOptimized,
            relative_port_ids: vec![2],
        },
    ]);
    r.lu.set_alua_state(AluaState::Unavailable);
    let d = r.bytes(&n, &[0x12, 1, 0x83, 0x01, 0x00, 0]);
    let mut found = Vec::new();
    let mut off = 4;
    while off + 4 <= d.len() {
        let l = d[off + 3] as usize;
        found.push((d[off], d[off + 1], d[off + 4..off + 4 + l].to_vec()));
        off += 4 + l;
    }
    assert!(found.contains(&(0x51, 0x94, vec![0, 0, 0, 2])));
    assert!(found.contains(&(0x51, 0x95, vec![0, 0, 0, 2])));
    let mut rtpg = [0u8; 12];
    rtpg[0] = 0xA3;
    rtpg[1] = 0x0A;
    rtpg[9] = 255;
    let d = r.bytes(&n, &rtpg);
    assert_eq!(&d[0..4], &24u32.to_be_bytes());
    // Group 1 (the partner) as the cluster says; group 2 (this node) as this LU enforces.
    assert_eq!((d[4] & 0x0F, &d[6..8]), (0x0, &1u16.to_be_bytes()[..]));
    assert_eq!((d[16] & 0x0F, &d[18..20]), (0x3, &2u16.to_be_bytes()[..]));
    assert_eq!(&d[26..28], &2u16.to_be_bytes());
}

/// A LOGICAL UNIT RESET carried here from a partner node of a replicated device: every
/// nexus of this node sees 29/03 once, the SPC-2 reservation is released, and a command
/// whose I/O was in flight ends TASK ABORTED instead of GOOD; a command started afterwards
/// runs normally.
#[test]
fn partner_lun_reset_aborts_in_flight_commands_and_notifies_every_nexus() {
    let mut r = Rig::new();
    let (a, b) = (nexus(1), nexus(2));
    r.lu.nexus_added(&a);
    r.lu.nexus_added(&b);
    r.run(&a, &TUR, &[]);
    r.run(&b, &TUR, &[]);
    assert_eq!(
        r.run(&a, &[0x16, 0, 0, 0, 0, 0], &[]).status,
        ScsiStatus::Good
    );
    // WRITE(10) of one block through a: its I/O is with the device when the reset lands.
    let write = [0x2a, 0, 0, 0, 0, 4, 0, 0, 1, 0];
    let data = vec![0xabu8; BS];
    let cmd = Command {
        cdb: &write,
        data_out: &data,
        expected_in_len: 0,
        nexus: &a,
    };
    let Step::Io(plan) = r.lu.execute(&cmd) else {
        panic!("a write starts its I/O")
    };
    r.lu.partner_lun_reset();
    let step =
        r.lu.resume(&a, plan.cont, IoOutcome::Ok { read_data: None }, &data);
    let Step::Done(reply) = step else {
        panic!("an aborted command takes no further step")
    };
    assert_eq!(reply.status, ScsiStatus::TaskAborted);
    for n in [&a, &b] {
        assert_eq!(sense_of(&r.run(n, &TUR, &[])), (6, 0x29, 0x03));
        assert_eq!(r.run(n, &TUR, &[]).status, ScsiStatus::Good);
    }
    // The SPC-2 reservation is gone; a new write completes.
    assert_eq!(
        r.run(&b, &[0x16, 0, 0, 0, 0, 0], &[]).status,
        ScsiStatus::Good
    );
    assert_eq!(r.run(&b, &write, &data).status, ScsiStatus::Good);
}

/// CLEAR TASK SET (here or from a partner) aborts the commands in I/O of every nexus
/// without a unit attention (TAS=1: they end TASK ABORTED).
#[test]
fn clear_task_set_aborts_in_flight_commands_without_a_unit_attention() {
    let mut r = Rig::new();
    let (a, b) = (nexus(1), nexus(2));
    r.lu.nexus_added(&a);
    r.lu.nexus_added(&b);
    r.run(&a, &TUR, &[]);
    r.run(&b, &TUR, &[]);
    let read = [0x28, 0, 0, 0, 0, 4, 0, 0, 1, 0];
    for partner in [false, true] {
        let cmd = Command {
            cdb: &read,
            data_out: &[],
            expected_in_len: BS as u32,
            nexus: &b,
        };
        let Step::Io(plan) = r.lu.execute(&cmd) else {
            panic!("a read starts its I/O")
        };
        if partner {
            r.lu.partner_clear_task_set();
        } else {
            r.lu.clear_task_set(&a);
        }
        let buf = vec![0u8; BS];
        let Step::Done(reply) = r.lu.resume(
            &b,
            plan.cont,
            IoOutcome::Ok {
                read_data: Some(&buf),
            },
            &[],
        ) else {
            panic!("done")
        };
        assert_eq!(reply.status, ScsiStatus::TaskAborted);
        assert_eq!(r.run(&a, &TUR, &[]).status, ScsiStatus::Good);
        assert_eq!(r.run(&b, &TUR, &[]).status, ScsiStatus::Good);
    }
}

/// A device that carries reservations across nodes: PR OUT becomes a
/// `LuIo::ReservationChange` (applied by the device through `apply_cluster_pr`), and the
/// state another node's LU receives the same way binds writes there too, with the I_T
/// nexus identity including the relative target port (each node its own port).
#[test]
fn cluster_reservations_go_through_the_device_and_bind_every_node() {
    let mut a_node = Rig::new();
    a_node.lu.set_cluster_reservations(true);
    let mut b_node = Rig::new();
    b_node.lu.set_cluster_reservations(true);
    let a = nexus(1);
    // The same initiator through node B: another target port, another I_T nexus.
    let mut a_via_b = nexus(1);
    a_via_b.port.relative_port_id = 2;
    let other_via_b = {
        let mut n = nexus(2);
        n.port.relative_port_id = 2;
        n
    };
    b_node.lu.nexus_added(&other_via_b);
    b_node.run(&other_via_b, &TUR, &[]);
    assert_eq!(pr(&mut a_node, &a, 0, 0, 0, 0xA), ScsiStatus::Good);
    // PR OUT is planned as a device change carrying the state.
    let (c, p) = prout(1, 1, 0xA, 0); // RESERVE, WRITE EXCLUSIVE
    let step = a_node.lu.execute(&Command {
        cdb: &c,
        data_out: &p,
        expected_in_len: 0,
        nexus: &a,
    });
    let Step::Io(plan) = step else {
        panic!("a change goes to the device: {step:?}")
    };
    let LuIo::ReservationChange {
        base,
        state,
        notice,
    } = &plan.io
    else {
        panic!("{:?}", plan.io)
    };
    assert_eq!(*base, (0, 1), "based on the version the registration left");
    // The device applies it on both nodes, then completes.
    a_node.lu.apply_cluster_pr((0, 2), state, notice);
    b_node.lu.apply_cluster_pr((0, 2), state, notice);
    let step = a_node
        .lu
        .resume(&a, plan.cont, IoOutcome::Ok { read_data: None }, &p);
    assert!(matches!(step, Step::Done(ref r) if r.status == ScsiStatus::Good));
    // Writes through B: another initiator conflicts; so does the holder's own initiator
    // through B (another I_T nexus, not registered there); reads pass.
    for n in [&other_via_b, &a_via_b] {
        assert_eq!(
            b_node.run(n, &rw10(0x2A, 0, 1), &[0u8; 512]).status,
            ScsiStatus::ReservationConflict
        );
        assert_eq!(
            b_node.run(n, &rw10(0x28, 0, 1), &[]).status,
            ScsiStatus::Good
        );
    }
    assert_eq!(
        a_node.run(&a, &rw10(0x2A, 0, 1), &[0u8; 512]).status,
        ScsiStatus::Good
    );
    // A change the device refuses as stale is computed again from the state it holds.
    let (c, p) = prout(2, 1, 0xA, 0); // RELEASE
    let Step::Io(plan) = a_node.lu.execute(&Command {
        cdb: &c,
        data_out: &p,
        expected_in_len: 0,
        nexus: &a,
    }) else {
        panic!("a change goes to the device")
    };
    let again = a_node
        .lu
        .resume(&a, plan.cont, IoOutcome::Miscompare { offset: 0 }, &p);
    assert!(matches!(again, Step::Io(_)), "recomputed");
    // Malformed state or notice from a partner changes nothing.
    b_node.lu.apply_cluster_pr((0, 3), &[0xff; 3], &[]);
    b_node.lu.apply_cluster_pr((0, 3), &[], &[1]);
    assert_eq!(
        b_node
            .run(&other_via_b, &rw10(0x2A, 0, 1), &[0u8; 512])
            .status,
        ScsiStatus::ReservationConflict
    );
    // A pushed state (a new sequencer's: no unit attentions) is applied with its version,
    // and B's next change is based on it.
    let (c, p) = prout(0, 0, 0, 0xC);
    let Step::Io(plan) = a_node.lu.execute(&Command {
        cdb: &c,
        data_out: &p,
        expected_in_len: 0,
        nexus: &other_via_b,
    }) else {
        panic!("a registration goes to the device")
    };
    let LuIo::ReservationChange { state: pushed, .. } = plan.io else {
        panic!("a change")
    };
    b_node.lu.apply_cluster_pr((5, 0), &pushed, &[]);
    let (c, p) = prout(0, 0, 0, 0xD);
    let Step::Io(plan) = b_node.lu.execute(&Command {
        cdb: &c,
        data_out: &p,
        expected_in_len: 0,
        nexus: &a_via_b,
    }) else {
        panic!("a registration goes to the device")
    };
    assert!(matches!(
        plan.io,
        LuIo::ReservationChange { base: (5, 0), .. }
    ));
}

#[test]
fn reservation_notice_round_trips_and_refuses_malformed_bytes() {
    use crate::lu::reservations::{decode_notice, encode_notice};
    use crate::pr::PortId;
    let uas = vec![
        (PortId::of(&nexus(1)), Sense::reservations_released()),
        (PortId::of(&nexus(2)), Sense::registrations_preempted()),
    ];
    let b = encode_notice(&uas);
    let back = decode_notice(&b).unwrap();
    assert_eq!(back.len(), 2);
    assert_eq!(back[0].0, uas[0].0);
    assert_eq!(back[1].1.triple(), uas[1].1.triple());
    assert_eq!(decode_notice(&encode_notice(&[])).unwrap().len(), 0);
    for len in 0..b.len() {
        assert!(decode_notice(&b[..len]).is_none(), "truncated at {len}");
    }
    let mut long = b.clone();
    long.push(0);
    assert!(decode_notice(&long).is_none());
}
