//! The connection layer driven directly: PDUs in, block-device completions in, PDUs out.
//! No sockets; the device is a RAM disk whose completions arrive only when the test polls
//! its channel, so every interleaving (abort while in I/O, ...) can be produced on purpose.

use super::budget::MemBudget;
use super::env::ConnEnv;
use super::task::{Stage, TaskTable};
use super::tx::TxQueue;
use super::{ConnCore, FrameLimits, Phase, Session};
use crate::net::Transport;
use crate::reactor_ctx::{split_tag, ConnTimers, Shared};
use crate::session::SessionKey;
use crate::target::{Device, Registry, Target};
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_bdev::{AlignedBuf, BdevChannel, BdevOp, Completion};
use tandem_iscsi::login::AuthPolicy;
use tandem_iscsi::params::SessionParams;
use tandem_iscsi::wire::{
    reject, Bhs, DataInRepr, DataOutRepr, NopOutRepr, Opcode, R2tRepr, RejectRepr, ScsiCommandRepr,
    ScsiResponseRepr, TaskMgmtRequestRepr, TaskMgmtResponseRepr, TmfFunction, BHS_LEN,
};
use tandem_scsi::{
    Continuation, LogicalUnit, LuConfig, LuIdentity, Nexus, PrCommit, PrStore, TargetPort,
};

const BS: u32 = 512;
const BLOCKS: u64 = 64 << 11; // 64 MiB
const MAX_XFER: u32 = 8 << 20;
const LUN0: u64 = 0;
const GOOD: u8 = 0;
const CHECK: u8 = 2;
const TASK_SET_FULL: u8 = 0x28;

struct TestEnv {
    now: Instant,
    shared: Arc<Shared>,
    budget: MemBudget,
    channel: Box<dyn BdevChannel>,
    /// Submissions refused from this many on (simulates a device without a channel).
    refuse_submit: bool,
    /// The next completion fails with an I/O error.
    fail_next: bool,
    submitted: usize,
    /// Reservation commits are refused (simulates a persister that cannot take them).
    refuse_persist: bool,
    /// Completions of reservation commits, saved at once (the test's persister) and
    /// delivered by the next `complete`.
    persisted: Vec<Completion>,
    /// Reservation commits handed to the persister so far.
    commits: usize,
    /// Commits are kept (not saved) until `run_held_persist`: a persister that is slow.
    hold_persist: bool,
    held_commits: Vec<HeldCommit>,
    /// The reactor this connection lives on (its bit in the LU's release waiters).
    reactor: usize,
    /// Calls of `watch_release` (registrations for a release wake-up).
    watches: usize,
}

/// A reservation commit the test's slow persister has not saved yet.
struct HeldCommit {
    tag: u64,
    blob: Vec<u8>,
    store: Arc<dyn PrStore>,
    signal: tandem_scsi::CommitSignal,
}

impl TestEnv {
    /// The slow persister saves what it holds now (completions go out with the next
    /// `complete`).
    fn run_held_persist(&mut self) {
        for c in std::mem::take(&mut self.held_commits) {
            let result = c.store.save(&c.blob).map_err(tandem_bdev::BdevError::Io);
            c.signal.set(result.is_ok());
            self.persisted.push(Completion {
                tag: c.tag,
                result,
                buf: None,
            });
        }
    }
}

impl ConnEnv for TestEnv {
    fn now(&self) -> Instant {
        self.now
    }
    fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
    fn submit(&mut self, _dev: &Arc<Device>, tag: u64, op: BdevOp) -> bool {
        if self.refuse_submit {
            return false;
        }
        self.submitted += 1;
        self.channel.submit(tag, op);
        true
    }
    fn persist(&mut self, tag: u64, commit: PrCommit) -> (bool, Continuation) {
        if self.refuse_persist {
            return (false, commit.cont);
        }
        self.commits += 1;
        if self.hold_persist {
            // The continuation goes back to the connection; the commit waits here.
            let PrCommit {
                blob,
                store,
                signal,
                cont,
            } = commit;
            self.held_commits.push(HeldCommit {
                tag,
                blob,
                store,
                signal,
            });
            return (true, cont);
        }
        let result = commit
            .store
            .save(&commit.blob)
            .map_err(tandem_bdev::BdevError::Io);
        commit.signal.set(result.is_ok());
        self.persisted.push(Completion {
            tag,
            result,
            buf: None,
        });
        (true, commit.cont)
    }
    fn alloc_buf(&mut self, _dev: Option<&Arc<Device>>, len: usize) -> AlignedBuf {
        let mut b = AlignedBuf::new(len.max(1).next_multiple_of(4096), 4096);
        b.set_len(len);
        b
    }
    fn free_buf(&mut self, _dev: Option<&Arc<Device>>, _buf: AlignedBuf) {}
    fn budget(&mut self) -> &mut MemBudget {
        &mut self.budget
    }
    fn watch_release(&mut self, dev: &Arc<Device>, seen: u64) -> bool {
        self.watches += 1;
        dev.lu.releases().watch(self.reactor, seen)
    }
}

/// Collects what the connection writes: `limit` bytes per call at most, `room` bytes in
/// all until it is refilled (then WouldBlock, like a full socket buffer); `block` refuses.
#[derive(Default)]
struct MockTransport {
    out: Vec<u8>,
    limit: Option<usize>,
    room: Option<usize>,
    block: bool,
    calls: usize,
}

impl Transport for MockTransport {
    fn recv(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
    fn send_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if self.block || self.room == Some(0) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.calls += 1;
        let mut budget = self
            .limit
            .unwrap_or(usize::MAX)
            .min(self.room.unwrap_or(usize::MAX));
        let mut n = 0;
        for b in bufs {
            let take = b.len().min(budget);
            self.out.extend_from_slice(&b[..take]);
            budget -= take;
            n += take;
            if budget == 0 {
                break;
            }
        }
        if let Some(r) = self.room.as_mut() {
            *r -= n;
        }
        Ok(n)
    }
    fn local_addr(&self) -> Option<SocketAddr> {
        None
    }
    fn peer_addr(&self) -> Option<SocketAddr> {
        None
    }
    fn shutdown(&mut self) {}
    fn poll_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }
}

/// One PDU the target sent.
#[derive(Debug, Clone)]
struct Out {
    bhs: [u8; BHS_LEN],
    data: Vec<u8>,
}

impl Out {
    fn op(&self) -> Opcode {
        Bhs::new_unchecked(&self.bhs[..])
            .opcode()
            .expect("known opcode")
    }
    fn itt(&self) -> u32 {
        Bhs::new_unchecked(&self.bhs[..]).itt()
    }
    fn r2t(&self) -> R2tRepr {
        assert_eq!(self.op(), Opcode::R2T, "{self:?}");
        R2tRepr::parse(&Bhs::new_unchecked(&self.bhs[..])).unwrap()
    }
    fn resp(&self) -> ScsiResponseRepr {
        assert_eq!(self.op(), Opcode::ScsiResponse, "{self:?}");
        ScsiResponseRepr::parse(&Bhs::new_unchecked(&self.bhs[..])).unwrap()
    }
    fn data_in(&self) -> DataInRepr {
        assert_eq!(self.op(), Opcode::DataIn, "{self:?}");
        DataInRepr::parse(&Bhs::new_unchecked(&self.bhs[..])).unwrap()
    }
    fn reject(&self) -> RejectRepr {
        assert_eq!(self.op(), Opcode::Reject, "{self:?}");
        RejectRepr::parse(&Bhs::new_unchecked(&self.bhs[..])).unwrap()
    }
    fn tmf(&self) -> TaskMgmtResponseRepr {
        assert_eq!(self.op(), Opcode::TaskMgmtResponse, "{self:?}");
        TaskMgmtResponseRepr::parse(&Bhs::new_unchecked(&self.bhs[..])).unwrap()
    }
    /// (status, residual, overflow, underflow) of a SCSI Response or a Data-In with status.
    fn status(&self) -> (u8, u32, bool, bool) {
        match self.op() {
            Opcode::ScsiResponse => {
                let r = self.resp();
                (r.status, r.residual, r.flags.overflow, r.flags.underflow)
            }
            Opcode::DataIn => {
                let d = self.data_in();
                assert!(d.status_present, "{d:?}");
                (d.status, d.residual, d.overflow, d.underflow)
            }
            other => panic!("no status in {other:?}"),
        }
    }
    fn sense_key_asc(&self) -> (u8, u8, u8) {
        let s = &self.data[2..];
        (s[2] & 0x0f, s[12], s[13])
    }
}

fn parse_stream(mut b: &[u8]) -> Vec<Out> {
    let mut v = Vec::new();
    while b.len() >= BHS_LEN {
        let mut bhs = [0u8; BHS_LEN];
        bhs.copy_from_slice(&b[..BHS_LEN]);
        let len = Bhs::new_unchecked(&bhs[..]).data_segment_len() as usize;
        let padded = len.next_multiple_of(4);
        assert!(b.len() >= BHS_LEN + padded, "truncated PDU in output");
        v.push(Out {
            bhs,
            data: b[BHS_LEN..BHS_LEN + len].to_vec(),
        });
        b = &b[BHS_LEN + padded..];
    }
    assert!(b.is_empty(), "trailing bytes in output");
    v
}

fn device() -> Arc<Device> {
    device_with_store(None)
}

/// A reservation store in memory: every blob saved, in order.
#[derive(Clone, Default)]
struct MemStore(Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

impl PrStore for MemStore {
    fn save(&self, blob: &[u8]) -> io::Result<()> {
        self.0.lock().unwrap().push(blob.to_vec());
        Ok(())
    }
    fn load(&self) -> io::Result<Option<Vec<u8>>> {
        Ok(self.0.lock().unwrap().last().cloned())
    }
}

fn device_with_store(store: Option<Box<dyn PrStore>>) -> Arc<Device> {
    let bdev = tandem_bdev::open_ram("t", BS, BLOCKS);
    let lu = LogicalUnit::new(
        LuConfig {
            identity: LuIdentity::derive("conn-tests"),
            block_size: BS,
            num_blocks: BLOCKS,
            read_only: false,
            cache: tandem_scsi::CacheMode::None,
            unmap_supported: true,
            max_transfer_blocks: MAX_XFER / BS,
        },
        store,
    );
    Arc::new(Device::new("t".into(), bdev, Arc::new(lu)))
}

struct H {
    core: ConnCore,
    env: TestEnv,

    cmdsn: u32,
    next_itt: u32,
    wire: MockTransport,
}

fn params() -> SessionParams {
    SessionParams::default()
}

impl H {
    fn new() -> H {
        H::with(params(), 256 << 20)
    }

    fn with(params: SessionParams, budget: u64) -> H {
        H::with_device(params, budget, device())
    }

    fn with_device(params: SessionParams, budget: u64, dev: Arc<Device>) -> H {
        let registry = Arc::new(Registry::new(vec![]));
        let target = Target {
            iqn: "iqn.t".into(),
            alias: None,
            luns: vec![dev.clone()],
            auth: AuthPolicy::None,
            allowed_initiators: vec![],
            tpg_id: crate::target::LOCAL_TPG_ID,
            relative_port_id: crate::target::LOCAL_RELATIVE_PORT_ID,
        };
        registry.add_target(target);
        let target = registry.target("iqn.t");
        let shared = Arc::new(Shared::new(registry, ConnTimers::default()));
        let now = Instant::now();
        let nexus = Nexus {
            id: 1,
            initiator_name: "iqn.i".into(),
            isid: [1; 6],
            port: TargetPort {
                relative_port_id: 1,
                tpg_id: 1,
                target_name: "iqn.t".into(),
                tpgt: 1,
            },
        };
        let limits = FrameLimits {
            header_digest: false,
            data_digest: false,
            max_data_len: params.max_recv_data_segment_length_target as usize,
        };
        let core = ConnCore {
            id: 7,
            reactor: 0,
            phase: Phase::FullFeature,
            limits,
            tx: TxQueue::default(),
            statsn: 1000,
            login: None,
            session: Some(Session {
                key: SessionKey {
                    initiator: "iqn.i".into(),
                    isid: [1; 6],
                    target: "iqn.t".into(),
                },
                discovery: false,
                tsih: 1,
                params,
                target,
                nexus: Arc::new(nexus),
                exp_cmdsn: 1,
                max_cmdsn: super::CMD_WINDOW,
            }),
            tasks: TaskTable::new(),
            ready: Default::default(),
            parked: Vec::with_capacity(super::task::TASKS_MAX + super::task::IMMEDIATE_SLOTS),
            held: Default::default(),
            held_epoch: 0,
            mem_held: 0,
            released: Vec::new(),
            pending_tmf: Vec::new(),
            next_tmf_slot: 0,
            pending_text: None,
            text_in: None,
            local_addr: None,
            peer: "test".into(),
            peer_ip: None,
            created: now,
            last_rx: now,
            ping: None,
            next_ttt: 1,
            op_scratch: Vec::new(),
            tx_progress: (0, now),
            prelogin: None,
        };
        let channel = dev.bdev.channel().expect("RAM channel");
        H {
            core,
            env: TestEnv {
                now,
                shared,
                budget: MemBudget::new(budget),
                channel,
                refuse_submit: false,
                fail_next: false,
                submitted: 0,
                refuse_persist: false,
                persisted: Vec::new(),
                commits: 0,
                hold_persist: false,
                held_commits: Vec::new(),
                reactor: 0,
                watches: 0,
            },

            cmdsn: 1,
            next_itt: 1,
            wire: MockTransport::default(),
        }
    }

    fn pdu(&mut self, bhs: [u8; BHS_LEN], data: &[u8]) {
        let mut bhs = bhs;
        let n = data.len();
        bhs[5] = (n >> 16) as u8;
        bhs[6] = (n >> 8) as u8;
        bhs[7] = n as u8;
        self.core.handle_pdu(&mut self.env, &bhs, data);
    }

    /// A SCSI command; returns its ITT.
    fn cmd_full(
        &mut self,
        cdb: [u8; 16],
        edtl: u32,
        read: bool,
        write: bool,
        data: &[u8],
        immediate: bool,
    ) -> u32 {
        let itt = self.next_itt;
        self.next_itt += 1;
        let repr = ScsiCommandRepr {
            immediate,
            final_flag: true,
            read,
            write,
            attr: 1,
            lun: LUN0,
            itt,
            edtl,
            cmdsn: self.cmdsn,
            expstatsn: 0,
            cdb,
        };
        if !immediate {
            self.cmdsn = self.cmdsn.wrapping_add(1);
        }
        let mut bhs = [0u8; BHS_LEN];
        repr.emit(&mut bhs);
        self.pdu(bhs, data);
        itt
    }

    fn cmd(&mut self, cdb: [u8; 16], edtl: u32, read: bool, write: bool, data: &[u8]) -> u32 {
        self.cmd_full(cdb, edtl, read, write, data, false)
    }

    fn write10(&mut self, lba: u32, blocks: u16, edtl: u32, imm: &[u8]) -> u32 {
        self.cmd(write10(lba, blocks), edtl, false, true, imm)
    }

    fn read10(&mut self, lba: u32, blocks: u16, edtl: u32) -> u32 {
        self.cmd(read10(lba, blocks), edtl, true, false, &[])
    }

    fn data_out(&mut self, itt: u32, ttt: u32, datasn: u32, offset: u32, data: &[u8], fin: bool) {
        let repr = DataOutRepr {
            final_flag: fin,
            lun: LUN0,
            itt,
            ttt,
            expstatsn: 0,
            datasn,
            buffer_offset: offset,
        };
        let mut bhs = [0u8; BHS_LEN];
        repr.emit(&mut bhs);
        self.pdu(bhs, data);
    }

    fn tmf(&mut self, function: TmfFunction, rtt: u32) -> u32 {
        let itt = self.next_itt;
        self.next_itt += 1;
        let repr = TaskMgmtRequestRepr {
            immediate: true,
            function,
            lun: LUN0,
            itt,
            rtt,
            cmdsn: self.cmdsn,
            expstatsn: 0,
            refcmdsn: self.cmdsn.wrapping_sub(1),
            expdatasn: 0,
        };
        let mut bhs = [0u8; BHS_LEN];
        repr.emit(&mut bhs);
        self.pdu(bhs, &[]);
        itt
    }

    /// Runs ready tasks and completes every device operation, until nothing moves.
    fn settle(&mut self) {
        for _ in 0..100 {
            let n = self.core.run_ready(&mut self.env) + self.complete();
            if n == 0 {
                return;
            }
        }
        panic!("connection does not settle");
    }

    /// Delivers the device's completions; returns how many.
    fn complete(&mut self) -> usize {
        let mut out = std::mem::take(&mut self.env.persisted);
        self.env.channel.poll(&mut out);
        let n = out.len();
        for mut c in out {
            if std::mem::take(&mut self.env.fail_next) {
                c.result = Err(tandem_bdev::BdevError::Io(io::Error::other("injected")));
            }
            let (conn, slot) = split_tag(c.tag);
            assert_eq!(conn, 7);
            self.core.on_io_complete(&mut self.env, slot, c);
        }
        n
    }

    /// Everything sent since the last call (all of it written to the wire).
    fn out(&mut self) -> Vec<Out> {
        self.core
            .flush(&mut self.env, &mut self.wire)
            .expect("mock transport does not fail");
        parse_stream(&std::mem::take(&mut self.wire.out))
    }

    fn settle_out(&mut self) -> Vec<Out> {
        self.settle();
        self.out()
    }

    fn stage_of(&self, itt: u32) -> Option<&'static str> {
        let slot = self.core.tasks.slot_of(itt)?;
        self.core.tasks.get(slot).map(|t| t.stage.name())
    }

    fn write_and_finish(&mut self, lba: u32, data: &[u8]) -> Out {
        let blocks = (data.len() / BS as usize) as u16;
        let imm = &data[..data.len().min(65536).min(8192)];
        let itt = self.write10(lba, blocks, data.len() as u32, imm);
        let mut offset = imm.len();
        loop {
            let outs = self.settle_out();
            let mut last = None;
            for o in outs {
                match o.op() {
                    Opcode::R2T => {
                        let r = o.r2t();
                        let mut sn = 0;
                        let mut off = r.buffer_offset as usize;
                        let end = off + r.desired_len as usize;
                        while off < end {
                            let n = (end - off).min(8192);
                            self.data_out(
                                itt,
                                r.ttt,
                                sn,
                                off as u32,
                                &data[off..off + n],
                                off + n == end,
                            );
                            sn += 1;
                            off += n;
                        }
                        offset = offset.max(end);
                    }
                    _ => last = Some(o),
                }
            }
            if let Some(o) = last {
                return o;
            }
            assert!(offset <= data.len());
        }
    }

    fn read_back(&mut self, lba: u32, len: usize) -> Vec<u8> {
        self.read10(lba, (len / BS as usize) as u16, len as u32);
        let outs = self.settle_out();
        let mut v = Vec::new();
        for o in &outs {
            if o.op() == Opcode::DataIn {
                v.extend_from_slice(&o.data);
            }
        }
        assert_eq!(outs.last().unwrap().status().0, GOOD);
        v
    }

    fn exp_cmdsn(&self) -> u32 {
        self.core.session.as_ref().unwrap().exp_cmdsn
    }
}

fn read10(lba: u32, blocks: u16) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x28;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn write10(lba: u32, blocks: u16) -> [u8; 16] {
    let mut c = read10(lba, blocks);
    c[0] = 0x2a;
    c
}

fn read16(lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x88;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn write16(lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = read16(lba, blocks);
    c[0] = 0x8a;
    c
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn only_status(outs: &[Out]) -> (u8, u32, bool, bool) {
    outs.last().expect("an answer").status()
}

fn r2ts(outs: &[Out]) -> Vec<R2tRepr> {
    outs.iter()
        .filter(|o| o.op() == Opcode::R2T)
        .map(|o| o.r2t())
        .collect()
}

// ---- writes: immediate, unsolicited, R2T ------------------------------------------------

#[test]
fn write_with_all_data_immediate_completes_without_r2t() {
    let mut h = H::new();
    let data = pattern(4096, 1);
    h.write10(0, 8, 4096, &data);
    let outs = h.settle_out();
    assert!(r2ts(&outs).is_empty());
    assert_eq!(only_status(&outs), (GOOD, 0, false, false));
    assert_eq!(h.read_back(0, 4096), data);
}

#[test]
fn write_without_immediate_data_gets_one_r2t_for_everything() {
    let mut h = H::new();
    h.write10(0, 16, 8192, &[]);
    let r = r2ts(&h.out());
    assert_eq!(r.len(), 1);
    assert_eq!(
        (r[0].buffer_offset, r[0].desired_len, r[0].r2tsn),
        (0, 8192, 0)
    );
}

#[test]
fn r2t_follows_immediate_data() {
    let mut h = H::new();
    let data = pattern(16384, 2);
    h.write10(0, 32, 16384, &data[..4096]);
    let r = r2ts(&h.out());
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].buffer_offset, r[0].desired_len), (4096, 12288));
}

#[test]
fn r2ts_are_split_at_max_burst_length() {
    let p = SessionParams {
        max_burst_length: 4096,
        max_outstanding_r2t: 8,
        ..params()
    };
    let mut h = H::with(p, 256 << 20);
    h.write10(0, 32, 16384, &[]);
    let r = r2ts(&h.out());
    let spans: Vec<(u32, u32)> = r.iter().map(|r| (r.buffer_offset, r.desired_len)).collect();
    assert_eq!(
        spans,
        vec![(0, 4096), (4096, 4096), (8192, 4096), (12288, 4096)]
    );
    let sns: Vec<u32> = r.iter().map(|r| r.r2tsn).collect();
    assert_eq!(sns, vec![0, 1, 2, 3]);
    let ttts: std::collections::HashSet<u32> = r.iter().map(|r| r.ttt).collect();
    assert_eq!(ttts.len(), 4, "each R2T has its own TTT");
}

#[test]
fn last_burst_is_shorter_when_edtl_is_not_a_multiple() {
    let p = SessionParams {
        max_burst_length: 4096,
        max_outstanding_r2t: 8,
        ..params()
    };
    let mut h = H::with(p, 256 << 20);
    h.write10(0, 11, 5632, &[]);
    let r = r2ts(&h.out());
    assert_eq!(
        r.iter().map(|r| r.desired_len).collect::<Vec<_>>(),
        vec![4096, 1536]
    );
}

#[test]
fn max_outstanding_r2t_one_issues_the_next_r2t_after_the_burst() {
    let p = SessionParams {
        max_burst_length: 4096,
        max_outstanding_r2t: 1,
        ..params()
    };
    let mut h = H::with(p, 256 << 20);
    let data = pattern(8192, 3);
    let itt = h.write10(0, 16, 8192, &[]);
    let r = r2ts(&h.out());
    assert_eq!(r.len(), 1);
    h.data_out(itt, r[0].ttt, 0, 0, &data[..4096], true);
    let r2 = r2ts(&h.out());
    assert_eq!(r2.len(), 1);
    assert_eq!((r2[0].buffer_offset, r2[0].r2tsn), (4096, 1));
    h.data_out(itt, r2[0].ttt, 0, 4096, &data[4096..], true);
    assert_eq!(only_status(&h.settle_out()).0, GOOD);
    assert_eq!(h.read_back(0, 8192), data);
}

#[test]
fn max_outstanding_r2t_two_keeps_two_in_flight() {
    let p = SessionParams {
        max_burst_length: 4096,
        max_outstanding_r2t: 2,
        ..params()
    };
    let mut h = H::with(p, 256 << 20);
    let itt = h.write10(0, 32, 16384, &[]);
    let r = r2ts(&h.out());
    assert_eq!(r.len(), 2);
    h.data_out(itt, r[0].ttt, 0, 0, &[0u8; 4096], true);
    let r2 = r2ts(&h.out());
    assert_eq!(r2.len(), 1, "one burst done: one more R2T");
    assert_eq!(r2[0].buffer_offset, 8192);
}

#[test]
fn max_outstanding_r2t_beyond_our_slots_is_capped() {
    let p = SessionParams {
        max_burst_length: 512,
        max_outstanding_r2t: 64,
        ..params()
    };
    let mut h = H::with(p, 256 << 20);
    h.write10(0, 64, 32768, &[]);
    assert_eq!(r2ts(&h.out()).len(), super::task::R2T_SLOTS);
}

#[test]
fn data_out_split_in_several_pdus_per_burst() {
    let mut h = H::new();
    let data = pattern(65536, 4);
    let o = h.write_and_finish(100, &data);
    assert_eq!(o.status().0, GOOD);
    assert_eq!(h.read_back(100, 65536), data);
}

#[test]
fn large_write_spanning_many_bursts_lands_intact() {
    let p = SessionParams {
        max_burst_length: 65536,
        max_outstanding_r2t: 4,
        ..params()
    };
    let mut h = H::with(p, 256 << 20);
    let data = pattern(1 << 20, 5);
    assert_eq!(h.write_and_finish(2048, &data).status().0, GOOD);
    assert_eq!(h.read_back(2048, 1 << 20), data);
}

#[test]
fn unsolicited_data_out_up_to_first_burst_when_initial_r2t_is_no() {
    let p = SessionParams {
        initial_r2t: false,
        first_burst_length: 8192,
        ..params()
    };
    let mut h = H::with(p, 256 << 20);
    let data = pattern(16384, 6);
    let itt = h.write10(0, 32, 16384, &data[..2048]);
    let r = r2ts(&h.out());
    assert_eq!(r.len(), 1);
    assert_eq!(
        r[0].buffer_offset, 8192,
        "R2T starts after FirstBurstLength"
    );
    h.data_out(itt, u32::MAX, 0, 2048, &data[2048..8192], true);
    h.data_out(itt, r[0].ttt, 0, 8192, &data[8192..], true);
    assert_eq!(only_status(&h.settle_out()).0, GOOD);
    assert_eq!(h.read_back(0, 16384), data);
}

#[test]
fn unsolicited_data_beyond_first_burst_is_rejected() {
    let p = SessionParams {
        initial_r2t: false,
        first_burst_length: 4096,
        ..params()
    };
    let mut h = H::with(p, 256 << 20);
    let itt = h.write10(0, 32, 16384, &[]);
    h.out();
    h.data_out(itt, u32::MAX, 0, 0, &[0u8; 8192], true);
    let outs = h.out();
    assert_eq!(outs[0].reject().reason, reject::PROTOCOL_ERROR);
}

#[test]
fn unsolicited_data_out_with_initial_r2t_yes_is_rejected() {
    let mut h = H::new();
    let itt = h.write10(0, 16, 8192, &[]);
    h.out();
    h.data_out(itt, u32::MAX, 0, 0, &[0u8; 512], false);
    assert_eq!(h.out()[0].reject().reason, reject::PROTOCOL_ERROR);
}

#[test]
fn immediate_data_larger_than_first_burst_is_rejected() {
    let p = SessionParams {
        first_burst_length: 4096,
        ..params()
    };
    let mut h = H::with(p, 256 << 20);
    h.write10(0, 16, 8192, &[0u8; 8192]);
    assert_eq!(h.out()[0].reject().reason, reject::PROTOCOL_ERROR);
}

#[test]
fn immediate_data_when_not_negotiated_is_rejected() {
    let p = SessionParams {
        immediate_data: false,
        ..params()
    };
    let mut h = H::with(p, 256 << 20);
    h.write10(0, 1, 512, &[0u8; 512]);
    assert_eq!(h.out()[0].reject().reason, reject::PROTOCOL_ERROR);
}

#[test]
fn immediate_data_longer_than_edtl_is_rejected() {
    let mut h = H::new();
    h.write10(0, 1, 512, &[0u8; 1024]);
    assert_eq!(h.out()[0].reject().reason, reject::PROTOCOL_ERROR);
}

#[test]
fn immediate_data_exactly_first_burst_then_r2t() {
    let p = SessionParams {
        first_burst_length: 4096,
        ..params()
    };
    let mut h = H::with(p, 256 << 20);
    h.write10(0, 16, 8192, &[1u8; 4096]);
    let r = r2ts(&h.out());
    assert_eq!((r[0].buffer_offset, r[0].desired_len), (4096, 4096));
}

// ---- Data-Out errors ----------------------------------------------------------------------

#[test]
fn data_out_with_unknown_ttt_is_rejected() {
    let mut h = H::new();
    let itt = h.write10(0, 16, 8192, &[]);
    h.out();
    h.data_out(itt, 0xdead, 0, 0, &[0u8; 512], true);
    assert_eq!(h.out()[0].reject().reason, reject::INVALID_PDU_FIELD);
}

#[test]
fn data_out_for_unknown_itt_is_rejected() {
    let mut h = H::new();
    h.data_out(999, 1, 0, 0, &[0u8; 512], true);
    assert_eq!(h.out()[0].reject().reason, reject::INVALID_PDU_FIELD);
}

#[test]
fn data_out_outside_its_r2t_window_is_rejected() {
    let p = SessionParams {
        max_burst_length: 4096,
        ..params()
    };
    let mut h = H::with(p, 256 << 20);
    let itt = h.write10(0, 16, 8192, &[]);
    let r = r2ts(&h.out());
    h.data_out(itt, r[0].ttt, 0, 4096, &[0u8; 512], false);
    assert_eq!(h.out()[0].reject().reason, reject::PROTOCOL_ERROR);
}

#[test]
fn data_out_beyond_edtl_is_rejected() {
    let mut h = H::new();
    let itt = h.write10(0, 1, 512, &[]);
    let r = r2ts(&h.out());
    h.data_out(itt, r[0].ttt, 0, 0, &[0u8; 1024], true);
    assert_eq!(h.out()[0].reject().reason, reject::PROTOCOL_ERROR);
}

#[test]
fn data_out_with_wrong_datasn_fails_the_command() {
    let mut h = H::new();
    let itt = h.write10(0, 16, 8192, &[]);
    let r = r2ts(&h.out());
    h.data_out(itt, r[0].ttt, 0, 0, &[0u8; 4096], false);
    h.data_out(itt, r[0].ttt, 5, 4096, &[0u8; 4096], true);
    let outs = h.settle_out();
    let last = outs.last().unwrap();
    assert_eq!(last.status().0, CHECK);
    assert_eq!(last.sense_key_asc(), (0x0b, 0x4b, 0x00));
    // Later Data-Out for it is refused, not written.
    h.data_out(itt, r[0].ttt, 1, 4096, &[0u8; 512], true);
    assert_eq!(h.out()[0].op(), Opcode::Reject);
    assert_eq!(h.core.tasks.len(), 0);
    assert_eq!(h.env.budget.used(), 0);
}

#[test]
fn unsolicited_datasn_must_start_at_zero() {
    let p = SessionParams {
        initial_r2t: false,
        ..params()
    };
    let mut h = H::with(p, 256 << 20);
    let itt = h.write10(0, 8, 4096, &[]);
    h.out();
    h.data_out(itt, u32::MAX, 1, 0, &[0u8; 4096], true);
    assert_eq!(only_status(&h.settle_out()).0, CHECK);
}

#[test]
fn datasn_restarts_at_zero_for_each_r2t() {
    let p = SessionParams {
        max_burst_length: 4096,
        max_outstanding_r2t: 2,
        ..params()
    };
    let mut h = H::with(p, 256 << 20);
    let itt = h.write10(0, 16, 8192, &[]);
    let r = r2ts(&h.out());
    h.data_out(itt, r[1].ttt, 0, 4096, &[2u8; 4096], true);
    h.data_out(itt, r[0].ttt, 0, 0, &[1u8; 4096], true);
    assert_eq!(only_status(&h.settle_out()).0, GOOD);
}

#[test]
fn data_out_for_a_read_is_rejected() {
    let mut h = H::new();
    let itt = h.read10(0, 1, 512);
    h.data_out(itt, 1, 0, 0, &[0u8; 512], true);
    let outs = h.out();
    assert!(outs.iter().any(|o| o.op() == Opcode::Reject));
}

// ---- residuals ----------------------------------------------------------------------------

#[test]
fn read_with_edtl_shorter_than_cdb_reports_overflow() {
    let mut h = H::new();
    h.read10(0, 8, 2048);
    let outs = h.settle_out();
    let sent: usize = outs
        .iter()
        .filter(|o| o.op() == Opcode::DataIn)
        .map(|o| o.data.len())
        .sum();
    assert_eq!(sent, 2048);
    assert_eq!(only_status(&outs), (GOOD, 2048, true, false));
}

#[test]
fn read_with_edtl_longer_than_cdb_reports_underflow() {
    let mut h = H::new();
    h.read10(0, 4, 4096);
    let outs = h.settle_out();
    assert_eq!(only_status(&outs), (GOOD, 2048, false, true));
}

#[test]
fn read_exact_has_no_residual() {
    let mut h = H::new();
    h.read10(0, 4, 2048);
    assert_eq!(only_status(&h.settle_out()), (GOOD, 0, false, false));
}

#[test]
fn read16_without_r_bit_reports_the_whole_transfer_as_overflow() {
    let mut h = H::new();
    h.cmd(read16(0, 8), 4096, false, false, &[]);
    let outs = h.settle_out();
    assert!(outs.iter().all(|o| o.op() != Opcode::DataIn));
    assert_eq!(only_status(&outs), (GOOD, 4096, true, false));
}

#[test]
fn read16_with_edtl_zero_reports_overflow() {
    let mut h = H::new();
    h.cmd(read16(0, 8), 0, true, false, &[]);
    let outs = h.settle_out();
    assert!(outs.iter().all(|o| o.op() != Opcode::DataIn));
    assert_eq!(only_status(&outs), (GOOD, 4096, true, false));
}

#[test]
fn non_data_command_with_edtl_reports_underflow() {
    let mut h = H::new();
    h.cmd([0u8; 16], 512, true, false, &[]);
    assert_eq!(only_status(&h.settle_out()), (GOOD, 512, false, true));
}

#[test]
fn write_with_edtl_shorter_than_cdb_writes_what_was_sent_and_reports_overflow() {
    let mut h = H::new();
    let data = pattern(2048, 7);
    h.cmd(write10(0, 8), 2048, false, true, &data);
    assert_eq!(only_status(&h.settle_out()), (GOOD, 2048, true, false));
    assert_eq!(h.read_back(0, 2048), data);
}

#[test]
fn write_with_edtl_longer_than_cdb_reports_underflow() {
    let mut h = H::new();
    let data = pattern(4096, 8);
    h.cmd(write10(0, 4), 4096, false, true, &data);
    assert_eq!(only_status(&h.settle_out()), (GOOD, 2048, false, true));
    assert_eq!(h.read_back(0, 2048), data[..2048]);
}

#[test]
fn write_with_edtl_not_whole_blocks_is_refused_with_overflow() {
    let mut h = H::new();
    h.cmd(write10(0, 2), 700, false, true, &[0u8; 700]);
    let outs = h.settle_out();
    let last = outs.last().unwrap();
    assert_eq!(last.status(), (CHECK, 324, true, false));
    assert_eq!(last.sense_key_asc(), (0x05, 0x0e, 0x03));
}

#[test]
fn write_with_edtl_zero_is_good_with_overflow_and_writes_nothing() {
    let mut h = H::new();
    h.cmd(write10(0, 2), 0, false, true, &[]);
    assert_eq!(only_status(&h.settle_out()), (GOOD, 1024, true, false));
    assert_eq!(h.env.submitted, 0);
}

#[test]
fn write_fitted_once_keeps_its_residual_across_a_deferral() {
    // The residual (LogicalUnit::data_out_fit) is decided when the data is complete, not at
    // each run, so a re-run (deferral) cannot lose it.
    let mut h = H::new();
    let itt = h.cmd(write10(0, 8), 2048, false, true, &[1u8; 2048]);
    let slot = h.core.tasks.slot_of(itt).unwrap();
    assert_eq!(
        h.core.tasks.get(slot).unwrap().residual,
        super::task::Residual::Overflow(2048)
    );
    assert_eq!(only_status(&h.settle_out()), (GOOD, 2048, true, false));
}

// ---- maximum transfer ---------------------------------------------------------------------

#[test]
fn write_beyond_the_lu_maximum_transfer_is_refused_before_any_data_moves() {
    let mut h = H::new();
    let edtl = MAX_XFER + 512;
    h.cmd(write16(0, edtl / BS), edtl, false, true, &[]);
    let outs = h.settle_out();
    assert!(r2ts(&outs).is_empty(), "no R2T for an oversize write");
    assert_eq!(outs.last().unwrap().status().0, CHECK);
    assert_eq!(outs.last().unwrap().sense_key_asc(), (0x05, 0x24, 0x00));
    assert_eq!(h.env.budget.peak(), 0, "nothing was granted");
}

#[test]
fn write_of_exactly_the_maximum_transfer_is_accepted() {
    let mut h = H::new();
    h.cmd(write16(0, MAX_XFER / BS), MAX_XFER, false, true, &[]);
    let r = r2ts(&h.out());
    assert_eq!(r.len(), 1);
    assert_eq!(h.env.budget.used(), MAX_XFER as u64);
}

#[test]
fn thirty_two_mib_write_announced_is_refused() {
    let mut h = H::new();
    h.cmd(write16(0, 65536), 32 << 20, false, true, &[]);
    assert_eq!(only_status(&h.settle_out()).0, CHECK);
    assert_eq!(h.env.budget.used(), 0);
}

#[test]
fn bidirectional_command_is_refused() {
    let mut h = H::new();
    h.cmd(write10(0, 1), 512, true, true, &[]);
    assert_eq!(only_status(&h.settle_out()).0, CHECK);
}

// ---- memory budget --------------------------------------------------------------------------

#[test]
fn write_buffer_is_granted_only_when_its_r2t_is_sent() {
    let mut h = H::new();
    h.write10(0, 16, 8192, &[]);
    assert_eq!(h.env.budget.used(), 8192);
    h.out();
}

#[test]
fn r2ts_are_held_while_the_budget_is_spent_and_sent_when_it_frees() {
    // 64 MiB budget: bulk grants stop at 56 MiB, one connection at 8 MiB after its first.
    let mut h = H::with(params(), 64 << 20);
    let a = h.cmd(write16(0, MAX_XFER / BS), MAX_XFER, false, true, &[]);
    let b = h.cmd(write16(16384, MAX_XFER / BS), MAX_XFER, false, true, &[]);
    let outs = h.out();
    let r = r2ts(&outs);
    assert_eq!(r.len(), 1, "second write's R2T held: {outs:?}");
    assert_eq!(r[0].itt(), a);
    assert_eq!(h.stage_of(b), Some("collecting"));
    assert_eq!(h.env.budget.used(), MAX_XFER as u64);
    // Finish the first write: its buffer is released, the second gets its R2T.
    let data = vec![9u8; MAX_XFER as usize];
    let mut pending = outs;
    let mut saw_b = false;
    for _ in 0..200 {
        for o in pending {
            if o.op() != Opcode::R2T {
                continue;
            }
            let r = o.r2t();
            if r.itt == b {
                saw_b = true;
                continue;
            }
            let (mut off, end) = (
                r.buffer_offset as usize,
                (r.buffer_offset + r.desired_len) as usize,
            );
            let mut sn = 0;
            while off < end {
                let n = 8192usize.min(end - off);
                h.data_out(
                    a,
                    r.ttt,
                    sn,
                    off as u32,
                    &data[off..off + n],
                    off + n == end,
                );
                off += n;
                sn += 1;
            }
        }
        if saw_b {
            break;
        }
        pending = h.settle_out();
    }
    assert!(saw_b, "the held write got its R2T");
    assert_eq!(h.stage_of(a), None, "first write finished");
    assert_eq!(
        h.env.budget.used(),
        MAX_XFER as u64,
        "the second write holds its buffer now"
    );
}

trait Itt {
    fn itt(&self) -> u32;
}
impl Itt for R2tRepr {
    fn itt(&self) -> u32 {
        self.itt
    }
}

#[test]
fn write_with_immediate_data_and_no_budget_gets_task_set_full() {
    let mut h = H::with(params(), 64 << 20);
    // Take the bulk part of the budget away (another connection's grants).
    assert!(h.env.budget.try_take(0, 56 << 20));
    h.cmd(write16(0, 4096), 2 << 20, false, true, &[0u8; 4096]);
    let outs = h.settle_out();
    assert_eq!(only_status(&outs).0, TASK_SET_FULL);
    assert_eq!(h.core.tasks.len(), 0);
}

#[test]
fn small_writes_use_the_reserve_when_bulk_is_spent() {
    let mut h = H::with(params(), 64 << 20);
    assert!(h.env.budget.try_take(0, 56 << 20));
    let data = pattern(4096, 9);
    assert_eq!(h.write_and_finish(0, &data).status().0, GOOD);
}

#[test]
fn read_waits_for_memory_instead_of_allocating() {
    let mut h = H::with(params(), 64 << 20);
    assert!(h.env.budget.try_take(0, 56 << 20));
    let itt = h.cmd(read16(0, (4 << 20) / BS), 4 << 20, true, false, &[]);
    h.settle();
    assert_eq!(h.stage_of(itt), Some("held-for-memory"));
    assert_eq!(h.env.submitted, 0, "no read started");
    assert!(h.out().is_empty());
    h.env.budget.give(56 << 20);
    let outs = h.settle_out();
    assert_eq!(only_status(&outs).0, GOOD);
    assert_eq!(h.env.budget.used(), 0);
}

#[test]
fn unsent_read_data_holds_budget_until_it_has_left() {
    let mut h = H::new();
    h.read10(0, 64, 32768);
    h.settle();
    assert_eq!(h.env.budget.used(), 32768);
    h.wire.block = true;
    let _ = h.out();
    assert_eq!(
        h.env.budget.used(),
        32768,
        "socket full: data still buffered"
    );
    h.wire.block = false;
    h.out();
    assert_eq!(h.env.budget.used(), 0);
}

#[test]
fn a_connection_that_never_reads_stops_at_its_share() {
    // 64 MiB budget: one connection may hold an eighth (8 MiB) once it holds anything.
    let mut h = H::with(params(), 64 << 20);
    h.wire.block = true;
    for i in 0..8 {
        h.cmd(read16(i * 8192, 8192), 4 << 20, true, false, &[]);
    }
    h.settle();
    let _ = h.out();
    assert!(
        h.env.budget.used() <= 8 << 20,
        "used {}",
        h.env.budget.used()
    );
    let held = h.core.held.len();
    assert!(held >= 6, "reads wait for memory: {held}");
    h.wire.block = false;
    for _ in 0..20 {
        h.settle();
        h.out();
    }
    assert_eq!(h.core.tasks.len(), 0);
    assert_eq!(h.env.budget.used(), 0);
}

#[test]
fn budget_is_returned_when_the_connection_tears_down() {
    let mut h = H::new();
    h.write10(0, 16, 8192, &[]);
    h.read10(0, 16, 8192);
    h.core.run_ready(&mut h.env);
    assert!(h.env.budget.used() > 0);
    h.core.teardown(&mut h.env);
    assert_eq!(h.env.budget.used(), 0);
}

// ---- aborts -------------------------------------------------------------------------------

#[test]
fn abort_task_while_collecting_data_frees_it_at_once() {
    let mut h = H::new();
    let itt = h.write10(0, 16, 8192, &[]);
    h.out();
    h.tmf(TmfFunction::AbortTask, itt);
    let outs = h.out();
    assert_eq!(outs[0].tmf().response, 0);
    assert_eq!(h.core.tasks.len(), 0);
    assert_eq!(h.env.budget.used(), 0);
    h.data_out(itt, 1, 0, 0, &[0u8; 512], false);
    assert_eq!(
        h.out()[0].op(),
        Opcode::Reject,
        "late Data-Out of an aborted task"
    );
}

#[test]
fn abort_task_while_in_io_waits_for_the_completion_and_sends_no_status() {
    let mut h = H::new();
    let itt = h.read10(0, 8, 4096);
    h.core.run_ready(&mut h.env);
    assert_eq!(h.stage_of(itt), Some("in-io"));
    let tmf = h.tmf(TmfFunction::AbortTask, itt);
    assert!(h.out().is_empty(), "TMF response waits for the I/O");
    assert_eq!(h.stage_of(itt), Some("aborted"));
    h.complete();
    let outs = h.out();
    assert_eq!(outs.len(), 1);
    assert_eq!(outs[0].itt(), tmf);
    assert_eq!(outs[0].tmf().response, 0);
    assert_eq!(h.core.tasks.len(), 0);
    assert_eq!(h.env.budget.used(), 0);
}

#[test]
fn abort_task_while_sending_leaves_the_answer_alone() {
    let mut h = H::new();
    let itt = h.read10(0, 64, 32768);
    h.settle();
    h.wire.room = Some(100);
    h.core.flush(&mut h.env, &mut h.wire).unwrap();
    assert_eq!(h.stage_of(itt), None, "answered: ITT retired");
    h.tmf(TmfFunction::AbortTask, itt);
    h.wire.room = None;
    let mut bytes = std::mem::take(&mut h.wire.out);
    h.core.flush(&mut h.env, &mut h.wire).unwrap();
    bytes.append(&mut h.wire.out);
    let outs = parse_stream(&bytes);
    assert_eq!(outs.last().unwrap().op(), Opcode::TaskMgmtResponse);
    assert_eq!(
        outs.last().unwrap().tmf().response,
        1,
        "already answered: does not exist"
    );
    assert!(outs.iter().any(|o| o.op() == Opcode::DataIn));
}

#[test]
fn abort_task_while_ready_frees_without_running() {
    let mut h = H::new();
    let itt = h.read10(0, 8, 4096);
    h.tmf(TmfFunction::AbortTask, itt);
    h.settle();
    let outs = h.out();
    assert_eq!(outs.len(), 1);
    assert_eq!(outs[0].op(), Opcode::TaskMgmtResponse);
    assert_eq!(h.env.submitted, 0);
}

#[test]
fn abort_task_held_for_memory_frees_it() {
    let mut h = H::with(params(), 64 << 20);
    assert!(h.env.budget.try_take(0, 56 << 20));
    let itt = h.cmd(read16(0, 8192), 4 << 20, true, false, &[]);
    h.settle();
    assert_eq!(h.stage_of(itt), Some("held-for-memory"));
    h.tmf(TmfFunction::AbortTask, itt);
    assert_eq!(h.out()[0].tmf().response, 0);
    assert_eq!(h.core.tasks.len(), 0);
    assert!(h.core.held.is_empty());
}

#[test]
fn abort_unknown_task_says_it_does_not_exist() {
    let mut h = H::new();
    h.read10(0, 1, 512);
    h.settle_out();
    h.tmf(TmfFunction::AbortTask, 4242);
    assert_eq!(h.out()[0].tmf().response, 1);
}

#[test]
fn abort_task_set_aborts_everything_and_waits_for_io() {
    let mut h = H::new();
    let a = h.read10(0, 8, 4096);
    h.core.run_ready(&mut h.env);
    let b = h.write10(0, 16, 8192, &[]);
    h.out();
    h.tmf(TmfFunction::AbortTaskSet, 0xffff_ffff);
    assert!(h.out().is_empty());
    assert_eq!(h.stage_of(a), Some("aborted"));
    assert_eq!(h.stage_of(b), None);
    h.complete();
    let outs = h.out();
    assert_eq!(outs.len(), 1);
    assert_eq!(outs[0].tmf().response, 0);
}

#[test]
fn lun_reset_while_in_io_of_a_write() {
    let mut h = H::new();
    let itt = h.write10(0, 8, 4096, &[5u8; 4096]);
    h.core.run_ready(&mut h.env);
    assert_eq!(h.stage_of(itt), Some("in-io"));
    h.tmf(TmfFunction::LogicalUnitReset, 0xffff_ffff);
    assert!(h.out().is_empty());
    h.complete();
    assert_eq!(h.out()[0].tmf().response, 0);
    assert_eq!(h.env.budget.used(), 0);
}

#[test]
fn io_completion_after_teardown_of_task_is_ignored() {
    let mut h = H::new();
    let itt = h.read10(0, 8, 4096);
    h.core.run_ready(&mut h.env);
    h.tmf(TmfFunction::AbortTask, itt);
    h.complete();
    h.out();
    // A stray completion for the freed slot does nothing.
    let c = Completion {
        tag: crate::reactor_ctx::make_tag(7, 0),
        result: Ok(()),
        buf: None,
    };
    h.core.on_io_complete(&mut h.env, 0, c);
    assert!(h.out().is_empty());
}

// ---- device errors --------------------------------------------------------------------------

#[test]
fn medium_error_on_read_is_reported() {
    let mut h = H::new();
    h.read10(0, 8, 4096);
    h.core.run_ready(&mut h.env);
    h.env.fail_next = true;
    let outs = h.settle_out();
    let last = outs.last().unwrap();
    assert_eq!(last.status().0, CHECK);
    assert_eq!(last.sense_key_asc().0, 0x03);
    assert_eq!(h.env.budget.used(), 0);
}

#[test]
fn refused_submission_fails_the_command_and_frees_everything() {
    let mut h = H::new();
    h.env.refuse_submit = true;
    h.write10(0, 8, 4096, &[1u8; 4096]);
    let outs = h.settle_out();
    assert_eq!(only_status(&outs).0, CHECK);
    assert_eq!(outs.last().unwrap().sense_key_asc(), (0x04, 0x44, 0x00));
    assert_eq!(h.core.tasks.len(), 0);
    assert_eq!(h.env.budget.used(), 0);
}

// ---- deferral -------------------------------------------------------------------------------

fn caw(lba: u64) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x89;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[13] = 1;
    c
}

/// Installs a waker on the device's LU that records which reactors it wakes (the tests'
/// stand-in for the reactors' eventfds; the first waker installed stays).
fn record_wakes(dev: &Arc<Device>) -> Arc<AtomicU64> {
    let woken = Arc::new(AtomicU64::new(0));
    let w = Arc::clone(&woken);
    assert!(dev.lu.releases().set_waker(Box::new(move |bits| {
        w.fetch_or(bits, SeqCst);
    })));
    woken
}

#[test]
fn conflicting_write_parks_instead_of_spinning_and_runs_after_the_release() {
    let mut h = H::new();
    // COMPARE AND WRITE holds block 0 while its read is in flight.
    let a = h.cmd(caw(0), 1024, false, true, &[0u8; 1024]);
    h.core.run_ready(&mut h.env);
    assert_eq!(h.stage_of(a), Some("in-io"));
    let b = h.write10(0, 1, 512, &[7u8; 512]);
    h.core.run_ready(&mut h.env);
    assert_eq!(h.stage_of(b), Some("deferred"));
    // Parked: further polls do no work and keep it parked; it is registered for a wake-up.
    assert_eq!(h.core.run_ready(&mut h.env), 0);
    assert_eq!(h.core.run_ready(&mut h.env), 0);
    assert!(
        h.env.watches >= 2,
        "each poll re-registers it for the next release"
    );
    assert_eq!(h.stage_of(b), Some("deferred"));
    // The CAW finishes (read, compare, write); the release lets the write run.
    h.settle();
    let outs = h.out();
    assert_eq!(
        outs.iter()
            .filter(|o| o.op() == Opcode::ScsiResponse)
            .count(),
        2
    );
    assert_eq!(h.read_back(0, 512), vec![7u8; 512]);
}

#[test]
fn parked_task_runs_right_after_the_release_with_no_time_passing() {
    let mut h = H::new();
    let start = h.env.now;
    let a = h.cmd(caw(0), 1024, false, true, &[0u8; 1024]);
    h.core.run_ready(&mut h.env);
    let b = h.write10(0, 1, 512, &[7u8; 512]);
    h.core.run_ready(&mut h.env);
    assert_eq!(h.stage_of(b), Some("deferred"));
    // The CAW's read, then its write: the range is released in the last completion.
    let mut polls = 0;
    while h.stage_of(a).is_some_and(|s| s == "in-io") {
        h.complete();
        polls += 1;
        assert!(polls < 10, "the CAW does not finish");
    }
    assert_eq!(h.stage_of(b), Some("deferred"), "not retried before a poll");
    // The very next poll unparks and starts it; the clock has not moved.
    assert_eq!(h.core.run_ready(&mut h.env), 2, "unparked, then started");
    assert_eq!(h.env.now, start);
    assert_eq!(h.stage_of(b), Some("in-io"));
    let outs = h.settle_out();
    let statuses: Vec<u8> = outs
        .iter()
        .filter(|o| o.op() == Opcode::ScsiResponse)
        .map(|o| o.status().0)
        .collect();
    assert_eq!(statuses, vec![GOOD, GOOD]);
}

#[test]
fn parked_task_asks_for_no_wake_up_time_and_waits_however_long_it_takes() {
    let mut h = H::new();
    let a = h.cmd(caw(0), 1024, false, true, &[0u8; 1024]);
    h.core.run_ready(&mut h.env);
    let b = h.write10(0, 1, 512, &[7u8; 512]);
    h.core.run_ready(&mut h.env);
    assert_eq!(h.stage_of(b), Some("deferred"));
    assert_eq!(
        h.core.next_deadline(),
        None,
        "no timer: the release wakes it"
    );
    // Time passes without a release: polls find nothing to do (the reactor would sleep).
    for _ in 0..5 {
        h.env.now += Duration::from_millis(250);
        assert_eq!(h.core.run_ready(&mut h.env), 0);
        assert_eq!(h.core.next_deadline(), None);
    }
    assert_eq!(h.stage_of(b), Some("deferred"), "still conflicting: parked");
    assert_eq!(h.stage_of(a), Some("in-io"));
    // The parked list keeps its capacity across checks (no allocation per poll).
    let cap = h.core.parked.capacity();
    h.settle();
    assert_eq!(h.core.parked.capacity(), cap);
    assert!(h.core.parked.is_empty());
}

#[test]
fn parked_task_released_by_a_command_on_another_reactor_runs() {
    let dev = device();
    let woken = record_wakes(&dev);
    // Two connections to the same LU, on reactors 0 and 1.
    let mut holder = H::with_device(params(), 256 << 20, dev.clone());
    let mut waiter = H::with_device(params(), 256 << 20, dev);
    waiter.env.reactor = 1;
    holder.cmd(caw(0), 1024, false, true, &[0u8; 1024]);
    holder.core.run_ready(&mut holder.env);
    let b = waiter.write10(0, 1, 512, &[9u8; 512]);
    waiter.core.run_ready(&mut waiter.env);
    assert_eq!(waiter.stage_of(b), Some("deferred"));
    assert_eq!(waiter.core.run_ready(&mut waiter.env), 0);
    assert_eq!(woken.load(SeqCst), 0, "nothing released yet");
    // The other connection's CAW completes: its release wakes reactor 1 (only).
    let outs = holder.settle_out();
    assert_eq!(only_status(&outs).0, GOOD);
    assert_eq!(woken.load(SeqCst), 1 << 1);
    // Woken, reactor 1 polls its connection: the write is unparked and started.
    assert_eq!(waiter.core.run_ready(&mut waiter.env), 2);
    assert_eq!(waiter.stage_of(b), Some("in-io"));
    let outs = waiter.settle_out();
    assert_eq!(only_status(&outs).0, GOOD);
    assert_eq!(waiter.read_back(0, 512), vec![9u8; 512]);
}

#[test]
fn pr_out_parked_behind_another_connections_commit_runs_when_it_settles() {
    let store = MemStore::default();
    let dev = device_with_store(Some(Box::new(store.clone())));
    let woken = record_wakes(&dev);
    let mut first = H::with_device(params(), 256 << 20, dev.clone());
    let mut second = H::with_device(params(), 256 << 20, dev);
    second.env.reactor = 2;
    // Another initiator port (its own I_T nexus, so its own registration).
    let s = second.core.session.as_mut().unwrap();
    let mut other = (*s.nexus).clone();
    other.id = 2;
    other.isid = [2; 6];
    s.nexus = Arc::new(other);
    // The first connection's persister has not run yet: its commit stays pending.
    first.env.hold_persist = true;
    let register = |key: u64| {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x5F;
        cdb[8] = 24;
        let mut p = vec![0u8; 24];
        p[8..16].copy_from_slice(&key.to_be_bytes());
        p[20] = 0x01; // APTPL: must be made durable
        (cdb, p)
    };
    let (c1, p1) = register(0xAB);
    first.cmd(c1, 24, false, true, &p1);
    first.core.run_ready(&mut first.env);
    let (c2, p2) = register(0xCD);
    let b = second.cmd(c2, 24, false, true, &p2);
    second.core.run_ready(&mut second.env);
    assert_eq!(second.stage_of(b), Some("deferred"));
    assert_eq!(second.core.run_ready(&mut second.env), 0);
    // The persister saves the first commit: reactor 2 is woken and the PR OUT goes ahead.
    first.env.run_held_persist();
    assert_eq!(woken.load(SeqCst), 1 << 2);
    assert_eq!(only_status(&first.settle_out()).0, GOOD);
    assert_eq!(second.core.run_ready(&mut second.env), 2);
    assert_eq!(only_status(&second.settle_out()).0, GOOD);
    assert_eq!(store.0.lock().unwrap().len(), 2, "both registrations saved");
}

// ---- CmdSN window ---------------------------------------------------------------------------

#[test]
fn command_outside_the_window_is_ignored() {
    let mut h = H::new();
    h.cmdsn = 500;
    h.read10(0, 1, 512);
    h.settle();
    assert!(h.out().is_empty());
    assert_eq!(h.exp_cmdsn(), 1);
}

#[test]
fn command_at_max_cmdsn_is_accepted_and_one_beyond_ignored() {
    let mut h = H::new();
    let max = h.core.session.as_ref().unwrap().max_cmdsn;
    h.cmdsn = max;
    h.read10(0, 1, 512);
    assert_eq!(h.exp_cmdsn(), max.wrapping_add(1));
    h.settle_out();
    let max2 = h.core.session.as_ref().unwrap().max_cmdsn;
    h.cmdsn = max2.wrapping_add(1);
    h.read10(0, 1, 512);
    h.settle();
    assert!(h.out().is_empty());
}

#[test]
fn command_below_exp_cmdsn_is_ignored() {
    let mut h = H::new();
    h.read10(0, 1, 512);
    h.settle_out();
    h.cmdsn = 1;
    h.read10(0, 1, 512);
    assert!(h.settle_out().is_empty());
}

#[test]
fn immediate_command_does_not_advance_cmdsn() {
    let mut h = H::new();
    h.cmd_full(read10(0, 1), 512, true, false, &[], true);
    assert_eq!(h.exp_cmdsn(), 1);
    assert_eq!(only_status(&h.settle_out()).0, GOOD);
}

#[test]
fn cmdsn_window_wraps_around_zero() {
    let mut h = H::new();
    {
        let s = h.core.session.as_mut().unwrap();
        s.exp_cmdsn = u32::MAX - 1;
        s.max_cmdsn = (u32::MAX - 1).wrapping_add(127);
    }
    h.cmdsn = u32::MAX - 1;
    for _ in 0..4 {
        h.read10(0, 1, 512);
    }
    assert_eq!(h.exp_cmdsn(), 2);
    let outs = h.settle_out();
    assert_eq!(outs.iter().filter(|o| o.op() == Opcode::DataIn).count(), 4);
}

#[test]
fn max_cmdsn_shrinks_while_tasks_are_outstanding_but_never_goes_back() {
    let mut h = H::new();
    for i in 0..10 {
        h.write10(i * 16, 16, 8192, &[]);
    }
    let outs = h.out();
    let last = r2ts(&outs).last().unwrap().maxcmdsn;
    let first_max = h.core.session.as_ref().unwrap().max_cmdsn;
    assert_eq!(last, first_max, "advertised value never decreases");
}

#[test]
fn task_table_full_answers_task_set_full() {
    let mut h = H::new();
    for i in 0..super::task::TASKS_MAX as u32 {
        h.write10(i * 16, 16, 8192, &[]);
    }
    let _ = h.out();
    // Immediate commands use the reserve slots; once those are gone: TASK SET FULL.
    for _ in 0..super::task::IMMEDIATE_SLOTS {
        h.cmd_full(write10(0, 16), 8192, false, true, &[], true);
    }
    h.out();
    h.cmd_full([0u8; 16], 0, false, false, &[], true);
    let outs = h.out();
    assert_eq!(outs[0].resp().status, TASK_SET_FULL);
}

#[test]
fn duplicate_itt_is_rejected() {
    let mut h = H::new();
    let itt = h.write10(0, 16, 8192, &[]);
    h.out();
    h.next_itt = itt;
    h.write10(0, 16, 8192, &[]);
    assert_eq!(h.out()[0].reject().reason, reject::TASK_IN_PROGRESS);
}

// ---- Data-In segmentation -------------------------------------------------------------------

#[test]
fn data_in_is_cut_at_the_initiators_max_recv_data_segment_length() {
    let p = SessionParams {
        max_recv_data_segment_length_initiator: 4096,
        ..params()
    };
    let mut h = H::with(p, 256 << 20);
    h.read10(0, 32, 16384);
    let outs = h.settle_out();
    let dins: Vec<DataInRepr> = outs.iter().map(|o| o.data_in()).collect();
    assert_eq!(dins.len(), 4);
    assert_eq!(
        dins.iter().map(|d| d.datasn).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    assert_eq!(
        dins.iter().map(|d| d.buffer_offset).collect::<Vec<_>>(),
        vec![0, 4096, 8192, 12288]
    );
    assert!(dins[3].status_present && dins[3].final_flag);
    assert!(!dins[0].status_present);
}

#[test]
fn data_in_sets_f_at_each_max_burst_boundary() {
    let p = SessionParams {
        max_recv_data_segment_length_initiator: 4096,
        max_burst_length: 8192,
        ..params()
    };
    let mut h = H::with(p, 256 << 20);
    h.read10(0, 32, 16384);
    let outs = h.settle_out();
    let f: Vec<bool> = outs.iter().map(|o| o.data_in().final_flag).collect();
    assert_eq!(f, vec![false, true, false, true]);
}

#[test]
fn read_data_reaches_the_wire_unchanged() {
    let mut h = H::new();
    let data = pattern(65536, 11);
    h.write_and_finish(4096, &data);
    assert_eq!(h.read_back(4096, 65536), data);
}

#[test]
fn check_condition_carries_sense_in_a_response_not_data_in() {
    let mut h = H::new();
    h.cmd(read10(u32::MAX - 1, 8), 4096, true, false, &[]);
    let outs = h.settle_out();
    assert_eq!(outs.len(), 1);
    assert_eq!(outs[0].status().0, CHECK);
    assert_eq!(outs[0].sense_key_asc().1, 0x21, "LBA out of range");
}

// ---- partial writev accounting -------------------------------------------------------------

#[test]
fn partial_writes_of_any_size_reassemble_the_same_stream() {
    for limit in [1usize, 3, 47, 48, 49, 4095, 4096, 4097, 9000] {
        let mut h = H::new();
        let data = pattern(16384, 12);
        h.write_and_finish(0, &data);
        h.read10(0, 32, 16384);
        h.settle();
        h.wire.limit = Some(limit);
        let mut bytes = Vec::new();
        for _ in 0..100_000 {
            h.core.flush(&mut h.env, &mut h.wire).unwrap();
            bytes.append(&mut h.wire.out);
            if h.core.tx.is_empty() {
                break;
            }
        }
        let outs = parse_stream(&bytes);
        let got: Vec<u8> = outs
            .iter()
            .filter(|o| o.op() == Opcode::DataIn)
            .flat_map(|o| o.data.clone())
            .collect();
        assert_eq!(got, data, "limit {limit}");
        assert_eq!(
            h.core.tasks.len(),
            0,
            "slot released after its last byte (limit {limit})"
        );
    }
}

#[test]
fn slot_is_not_released_until_the_last_byte_of_its_last_pdu() {
    let mut h = H::new();
    h.read10(0, 1, 512);
    h.settle();
    let total = BHS_LEN + 512;
    h.wire.room = Some(total - 1);
    h.core.flush(&mut h.env, &mut h.wire).unwrap();
    assert_eq!(h.core.tasks.len(), 1);
    h.wire.room = Some(1);
    h.core.flush(&mut h.env, &mut h.wire).unwrap();
    assert_eq!(h.core.tasks.len(), 0);
}

#[test]
fn would_block_keeps_everything_queued() {
    let mut h = H::new();
    h.read10(0, 8, 4096);
    h.settle();
    h.wire.block = true;
    assert!(h.out().is_empty());
    assert_eq!(h.core.tasks.len(), 1);
    h.wire.block = false;
    assert_eq!(only_status(&h.out()).0, GOOD);
}

#[test]
fn many_pdus_go_out_in_few_writev_calls() {
    let p = SessionParams {
        max_recv_data_segment_length_initiator: 512,
        ..params()
    };
    let mut h = H::with(p, 256 << 20);
    h.read10(0, 16, 8192);
    h.settle();
    h.out();
    assert!(
        h.wire.calls <= 2,
        "16 Data-In PDUs in {} calls",
        h.wire.calls
    );
}

#[test]
fn zero_byte_write_from_the_socket_is_an_error() {
    struct Zero;
    impl Transport for Zero {
        fn recv(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Ok(0)
        }
        fn send_vectored(&mut self, _: &[IoSlice<'_>]) -> io::Result<usize> {
            Ok(0)
        }
        fn local_addr(&self) -> Option<SocketAddr> {
            None
        }
        fn peer_addr(&self) -> Option<SocketAddr> {
            None
        }
        fn shutdown(&mut self) {}
        fn poll_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
            None
        }
    }
    let mut h = H::new();
    h.read10(0, 1, 512);
    h.settle();
    assert!(h.core.flush(&mut h.env, &mut Zero).is_err());
}

// ---- misc PDUs ------------------------------------------------------------------------------

#[test]
fn nop_out_is_echoed() {
    let mut h = H::new();
    let repr = NopOutRepr {
        immediate: true,
        lun: 0,
        itt: 77,
        ttt: u32::MAX,
        cmdsn: 1,
        expstatsn: 0,
    };
    let mut bhs = [0u8; BHS_LEN];
    repr.emit(&mut bhs);
    h.pdu(bhs, b"ping");
    let outs = h.out();
    assert_eq!(outs[0].op(), Opcode::NopIn);
    assert_eq!(outs[0].data, b"ping");
}

#[test]
fn unknown_opcode_is_rejected_in_full_feature_phase() {
    let mut h = H::new();
    let mut bhs = [0u8; BHS_LEN];
    bhs[0] = 0x1c;
    h.pdu(bhs, &[]);
    assert_eq!(h.out()[0].reject().reason, reject::COMMAND_NOT_SUPPORTED);
}

#[test]
fn snack_is_rejected_at_error_recovery_level_zero() {
    let mut h = H::new();
    let mut bhs = [0u8; BHS_LEN];
    bhs[0] = 0x10;
    h.pdu(bhs, &[]);
    assert_eq!(h.out()[0].reject().reason, reject::PROTOCOL_ERROR);
}

#[test]
fn stage_names_cover_the_lifecycle() {
    let mut h = H::new();
    let itt = h.write10(0, 16, 8192, &[]);
    assert_eq!(h.stage_of(itt), Some("collecting"));
    let slot = h.core.tasks.slot_of(itt).unwrap();
    assert!(matches!(
        h.core.tasks.get(slot).unwrap().stage,
        Stage::Collecting(_)
    ));
}

// ---- text requests --------------------------------------------------------------------------

fn text_req(h: &mut H, itt: u32, ttt: u32, cont: bool, data: &[u8]) {
    let repr = tandem_iscsi::wire::TextRequestRepr {
        immediate: true,
        final_flag: !cont,
        cont,
        lun: 0,
        itt,
        ttt,
        cmdsn: h.cmdsn,
        expstatsn: 0,
    };
    let mut bhs = [0u8; BHS_LEN];
    repr.emit(&mut bhs);
    h.pdu(bhs, data);
}

fn text_resp(o: &Out) -> tandem_iscsi::wire::TextResponseRepr {
    assert_eq!(o.op(), Opcode::TextResponse, "{o:?}");
    tandem_iscsi::wire::TextResponseRepr::parse(&Bhs::new_unchecked(&o.bhs[..])).unwrap()
}

#[test]
fn text_request_with_continue_bit_is_collected_not_rejected() {
    let mut h = H::new();
    text_req(&mut h, 9, u32::MAX, true, b"SendTarg");
    let outs = h.out();
    assert_eq!(outs.len(), 1);
    let ack = text_resp(&outs[0]);
    assert!(!ack.final_flag && !ack.cont);
    assert_ne!(ack.ttt, u32::MAX, "our TTT names the exchange");
    assert!(outs[0].data.is_empty());
    text_req(&mut h, 9, ack.ttt, false, b"ets=All\0");
    let outs = h.out();
    let r = text_resp(&outs[0]);
    assert!(r.final_flag);
    let body = String::from_utf8_lossy(&outs[0].data).to_string();
    assert!(body.contains("TargetName=iqn.t"), "{body:?}");
}

#[test]
fn text_request_pieces_are_bounded() {
    let mut h = H::new();
    let chunk = vec![b'a'; 8192];
    let mut ttt = u32::MAX;
    let mut rejected = false;
    for _ in 0..20 {
        text_req(&mut h, 9, ttt, true, &chunk);
        let outs = h.out();
        if outs[0].op() == Opcode::Reject {
            rejected = true;
            break;
        }
        ttt = text_resp(&outs[0]).ttt;
    }
    assert!(rejected, "more than 64 KiB of text is refused");
}

#[test]
fn new_text_exchange_discards_an_unfinished_one() {
    let mut h = H::new();
    text_req(&mut h, 9, u32::MAX, true, b"Send");
    h.out();
    text_req(&mut h, 10, u32::MAX, false, b"SendTargets=All\0");
    let outs = h.out();
    assert!(String::from_utf8_lossy(&outs[0].data).contains("TargetName=iqn.t"));
    assert!(h.core.text_in.is_none());
}

#[test]
fn connection_whose_initiator_stops_reading_is_closed_after_the_silence_timeout() {
    let mut h = H::new();
    h.read10(0, 64, 32768);
    h.settle();
    h.wire.room = Some(1000);
    h.core.flush(&mut h.env, &mut h.wire).unwrap();
    h.core.timers(&mut h.env);
    h.env.now += Duration::from_secs(10);
    h.core.timers(&mut h.env);
    assert_eq!(h.core.phase, Phase::FullFeature, "not yet");
    h.env.now += Duration::from_secs(15);
    h.core.timers(&mut h.env);
    assert_eq!(h.core.phase, Phase::Closing);
}

#[test]
fn slow_but_reading_initiator_is_not_closed() {
    let mut h = H::new();
    h.read10(0, 64, 32768);
    h.settle();
    for _ in 0..10 {
        h.wire.room = Some(1000);
        h.core.flush(&mut h.env, &mut h.wire).unwrap();
        h.core.timers(&mut h.env);
        h.env.now += Duration::from_secs(10);
    }
    assert_eq!(h.core.phase, Phase::FullFeature);
}

#[test]
fn login_must_finish_within_the_short_default_timeout() {
    let mut h = H::new();
    h.core.phase = Phase::Login;
    h.core.created = h.env.now;
    h.env.now += Duration::from_secs(9);
    h.core.timers(&mut h.env);
    assert_eq!(h.core.phase, Phase::Login);
    h.env.now += Duration::from_secs(2);
    h.core.timers(&mut h.env);
    assert_eq!(h.core.phase, Phase::Closing, "10 s by default, not 30");
}

// ---- persistent reservation commits ---------------------------------------------------------

/// PERSISTENT RESERVE OUT REGISTER of `key` with APTPL: (CDB, parameter list).
fn pr_register_aptpl(key: u8) -> ([u8; 16], Vec<u8>) {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x5f;
    cdb[8] = 24;
    let mut p = vec![0u8; 24];
    p[15] = key;
    p[20] = 0x01;
    (cdb, p)
}

/// PERSISTENT RESERVE IN READ KEYS: the registered keys' low bytes.
fn read_keys(h: &mut H) -> Vec<u8> {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x5e;
    cdb[8] = 255;
    h.cmd(cdb, 255, true, false, &[]);
    let outs = h.settle_out();
    let data: Vec<u8> = outs
        .iter()
        .filter(|o| o.op() == Opcode::DataIn)
        .flat_map(|o| o.data.clone())
        .collect();
    assert_eq!(outs.last().unwrap().status().0, GOOD);
    data[8..].chunks(8).map(|k| k[7]).collect()
}

#[test]
fn pr_out_that_must_persist_is_answered_only_once_its_commit_completes() {
    let store = MemStore::default();
    let mut h = H::with_device(
        params(),
        256 << 20,
        device_with_store(Some(Box::new(store.clone()))),
    );
    let (cdb, p) = pr_register_aptpl(0xab);
    let itt = h.cmd(cdb, 24, false, true, &p);
    h.core.run_ready(&mut h.env);
    assert_eq!(h.env.commits, 1, "the commit went to the persister");
    assert_eq!(h.stage_of(itt), Some("in-io"), "waits like an I/O");
    assert!(h.out().is_empty(), "no answer before the commit completes");
    assert_eq!(store.0.lock().unwrap().len(), 1);
    assert_eq!(h.complete(), 1);
    let outs = h.settle_out();
    assert_eq!(outs.len(), 1);
    assert_eq!(outs[0].itt(), itt);
    assert_eq!(outs[0].status(), (GOOD, 0, false, false));
    assert_eq!(read_keys(&mut h), vec![0xab]);
    assert_eq!(h.core.tasks.len(), 0);
}

#[test]
fn pr_out_the_persister_refuses_fails_and_changes_nothing() {
    let store = MemStore::default();
    let mut h = H::with_device(
        params(),
        256 << 20,
        device_with_store(Some(Box::new(store.clone()))),
    );
    h.env.refuse_persist = true;
    let (cdb, p) = pr_register_aptpl(0xab);
    h.cmd(cdb, 24, false, true, &p);
    let outs = h.settle_out();
    assert_eq!(outs.last().unwrap().status().0, CHECK);
    assert_eq!(outs.last().unwrap().sense_key_asc(), (0x04, 0x44, 0x00));
    assert!(store.0.lock().unwrap().is_empty());
    assert!(read_keys(&mut h).is_empty(), "the old state stays");
    h.env.refuse_persist = false;
    let (cdb, p) = pr_register_aptpl(0xcd);
    h.cmd(cdb, 24, false, true, &p);
    assert_eq!(only_status(&h.settle_out()), (GOOD, 0, false, false));
    assert_eq!(read_keys(&mut h), vec![0xcd], "a retry succeeds");
}

#[test]
fn abort_task_while_its_commit_is_at_the_persister_waits_for_the_completion() {
    let store = MemStore::default();
    let mut h = H::with_device(
        params(),
        256 << 20,
        device_with_store(Some(Box::new(store.clone()))),
    );
    let (cdb, p) = pr_register_aptpl(0xab);
    let itt = h.cmd(cdb, 24, false, true, &p);
    h.core.run_ready(&mut h.env);
    assert_eq!(h.stage_of(itt), Some("in-io"));
    let tmf = h.tmf(TmfFunction::AbortTask, itt);
    assert!(h.out().is_empty(), "TMF response waits for the commit");
    assert_eq!(h.stage_of(itt), Some("aborted"));
    h.complete();
    let outs = h.out();
    assert_eq!(outs.len(), 1, "no status for the aborted PR OUT: {outs:?}");
    assert_eq!(outs[0].itt(), tmf);
    assert_eq!(outs[0].tmf().response, 0);
    assert_eq!(h.core.tasks.len(), 0);
}

// ---- task management on a device served by several nodes -----------------------------------

/// A RAM device that says other nodes serve it too: its task management operations are
/// kept (tags in `held`) until the test completes them, as a replicated device completes
/// them once every partner applied them.
struct ClusterRam {
    inner: Arc<dyn tandem_bdev::Bdev>,
    held: Arc<std::sync::Mutex<Vec<u64>>>,
}

struct ClusterRamChannel {
    inner: Box<dyn BdevChannel>,
    held: Arc<std::sync::Mutex<Vec<u64>>>,
}

impl tandem_bdev::Bdev for ClusterRam {
    fn info(&self) -> tandem_bdev::DeviceInfo {
        self.inner.info()
    }
    fn channel(&self) -> Result<Box<dyn BdevChannel>, tandem_bdev::BdevError> {
        Ok(Box::new(ClusterRamChannel {
            inner: self.inner.channel()?,
            held: Arc::clone(&self.held),
        }))
    }
    fn resize(&self, n: u64) -> Result<(), tandem_bdev::BdevError> {
        self.inner.resize(n)
    }
    fn flush_blocking(&self) -> Result<(), tandem_bdev::BdevError> {
        self.inner.flush_blocking()
    }
    fn set_cache_mode(&self, m: tandem_bdev::CacheMode) -> Result<(), tandem_bdev::BdevError> {
        self.inner.set_cache_mode(m)
    }
    fn cluster_task_management(&self) -> bool {
        true
    }
}

impl BdevChannel for ClusterRamChannel {
    fn submit(&mut self, tag: u64, op: BdevOp) {
        match op {
            BdevOp::TaskManagement { .. } => self.held.lock().unwrap().push(tag),
            op => self.inner.submit(tag, op),
        }
    }
    fn poll(&mut self, out: &mut Vec<Completion>) -> usize {
        self.inner.poll(out)
    }
    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }
    fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        self.inner.wake_fd()
    }
    fn alloc_buf(&mut self, len: usize) -> AlignedBuf {
        self.inner.alloc_buf(len)
    }
    fn free_buf(&mut self, buf: AlignedBuf) {
        self.inner.free_buf(buf)
    }
}

fn cluster_device() -> (Arc<Device>, Arc<std::sync::Mutex<Vec<u64>>>) {
    let held: Arc<std::sync::Mutex<Vec<u64>>> = Arc::default();
    let ram = device();
    let bdev: Arc<dyn tandem_bdev::Bdev> = Arc::new(ClusterRam {
        inner: Arc::clone(&ram.bdev),
        held: Arc::clone(&held),
    });
    (
        Arc::new(Device::new("t".into(), bdev, Arc::clone(&ram.lu))),
        held,
    )
}

/// On a device served by several nodes the LUN RESET response waits for the device's part
/// (the partners applied it) as well as for the aborted task's I/O; the device failing it
/// (this node stopped serving) answers FUNCTION REJECTED. ABORT TASK SET stays local.
#[test]
fn lun_reset_on_a_cluster_device_waits_for_the_partners() {
    for fail in [false, true] {
        let (dev, held) = cluster_device();
        let mut h = H::with_device(params(), 256 << 20, dev);
        let itt = h.write10(0, 8, 4096, &[5u8; 4096]);
        h.core.run_ready(&mut h.env);
        h.tmf(TmfFunction::LogicalUnitReset, 0xffff_ffff);
        assert_eq!(held.lock().unwrap().len(), 1, "carried to the partners");
        h.complete();
        assert!(h.out().is_empty(), "the partners have not applied it yet");
        assert_eq!(h.stage_of(itt), None, "the aborted write is gone");
        let tag = held.lock().unwrap().pop().unwrap();
        let (conn, slot) = split_tag(tag);
        assert_eq!(conn, 7);
        let result = if fail {
            Err(tandem_bdev::BdevError::NotReady)
        } else {
            Ok(())
        };
        h.core.on_io_complete(
            &mut h.env,
            slot,
            Completion {
                tag,
                result,
                buf: None,
            },
        );
        let outs = h.out();
        assert_eq!(outs.len(), 1);
        assert_eq!(outs[0].tmf().response, if fail { 255 } else { 0 });
        assert_eq!(h.env.budget.used(), 0);
        // ABORT TASK SET and ABORT TASK never leave this node.
        h.tmf(TmfFunction::AbortTaskSet, 0xffff_ffff);
        assert_eq!(h.out()[0].tmf().response, 0);
        assert!(held.lock().unwrap().is_empty());
    }
    // CLEAR TASK SET is carried too.
    let (dev, held) = cluster_device();
    let mut h = H::with_device(params(), 256 << 20, dev);
    h.tmf(TmfFunction::ClearTaskSet, 0xffff_ffff);
    assert!(h.out().is_empty());
    let tag = held.lock().unwrap().pop().unwrap();
    let (_, slot) = split_tag(tag);
    h.core.on_io_complete(
        &mut h.env,
        slot,
        Completion {
            tag,
            result: Ok(()),
            buf: None,
        },
    );
    assert_eq!(h.out()[0].tmf().response, 0);
}
