//! The load generator's I/O loop: one connection, `queue_depth` pipelined commands, one thread.
//!
//! Cost per I/O is what this module is about:
//! * every slot owns one data buffer, allocated once; the transmit header area, the transmit plan
//!   and the receive buffer are allocated once and reused, so the steady state allocates nothing;
//! * all commands (and Data-Out PDUs) that can be sent go out in one `writev`;
//! * one `read` pulls in as many PDUs as the socket has; Data-In payloads are copied once from
//!   the receive buffer into the slot's buffer, and large remainders are read straight into it.
//!
//! The socket is blocking: the loop sends everything it can, then blocks in `read`. Nothing is
//! ever written while a read is needed to make progress on the same connection, so the blocking
//! split cannot deadlock with a target that keeps reading (every target does).

use std::io::{IoSlice, Read, Write};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tandem_iscsi::wire::{
    pad4, Bhs, DataInRepr, DataOutRepr, NopInRepr, Opcode, R2tRepr, ScsiCommandRepr,
    ScsiResponseRepr, BHS_LEN, RESERVED_TAG,
};

use crate::session::{decode_sense, nop_out_reply, sn_le, InitError, Session};

/// Read, write, or a random mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mix {
    Read,
    Write,
    /// Reads with this percentage, writes otherwise.
    Mixed(u8),
}

/// Which CDB size to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CdbSize {
    Ten,
    Sixteen,
    /// READ/WRITE(10) while the LBA fits, (16) beyond.
    Auto,
}

/// What one job (connection) does.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub lun: u64,
    pub mix: Mix,
    pub random: bool,
    /// Bytes per I/O (a multiple of the logical block length).
    pub io_bytes: u32,
    pub queue_depth: usize,
    /// Logical blocks of the LUN (from READ CAPACITY) and block length.
    pub lun_blocks: u64,
    pub block_len: u32,
    /// Bytes of the LUN to use, from offset 0 (0 = all).
    pub span_bytes: u64,
    /// Stop issuing after this much time (measured from `start`), or after `ops_max` I/Os.
    pub duration: Option<Duration>,
    pub ops_max: Option<u64>,
    /// I/Os completing before this much time has passed are not counted.
    pub ramp: Duration,
    pub verify: bool,
    pub cdb: CdbSize,
    pub seed: u64,
    /// Distinguishes this job's sequential stream start and verify stamps.
    pub job_index: usize,
    /// Busy-poll a non-blocking socket instead of blocking in `read`.
    pub spin: bool,
}

/// What one job measured.
pub struct JobResult {
    pub hist_ns: Histogram<u64>,
    pub read_ops: u64,
    pub write_ops: u64,
    pub bytes: u64,
    pub errors: u64,
    pub verify_failures: u64,
    pub first_error: Option<String>,
    /// Wall time of the measured part (after ramp).
    pub measured: Duration,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Free,
    Busy,
}

struct Slot {
    buf: Vec<u8>,
    state: SlotState,
    write: bool,
    lba: u64,
    itt: u32,
    started: Instant,
    /// Reads: every stamped sector must match (the region was written before issue).
    must_match: bool,
}

/// One item of the transmit plan: a piece of the next `writev`.
#[derive(Clone, Copy)]
enum TxItem {
    /// `BHS_LEN` bytes at this offset of the header area.
    Hdr(usize),
    /// Bytes of a slot's buffer.
    Data { slot: usize, off: usize, len: usize },
    /// Zero padding.
    Pad(usize),
}

/// Where the payload of the Data-In being received goes.
#[derive(Clone, Copy)]
struct Sink {
    slot: usize,
    off: usize,
    remaining: usize,
    pad: usize,
    /// Status carried by the Data-In (phase collapse): complete the slot when the data is in.
    complete_status: Option<u8>,
}

const RX_BUF: usize = 512 * 1024;
const ZERO_PAD: [u8; 4] = [0; 4];
/// Payloads at least this large that are not yet in the receive buffer are read straight into
/// the slot buffer.
const DIRECT_READ_MIN: usize = 32 * 1024;

/// Retries a socket call while it would block: in `--poll spin` mode the socket is non-blocking
/// and the thread busy-polls; in the default blocking mode this never loops.
fn retry_would_block<T>(mut f: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// xorshift64*: cheap and good enough for offsets.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

struct Engine<'a> {
    s: &'a mut Session,
    spec: JobSpec,
    slots: Vec<Slot>,
    free: Vec<usize>,
    tx_hdr: Vec<u8>,
    tx_plan: Vec<TxItem>,
    rx: Vec<u8>,
    rx_len: usize,
    sink: Option<Sink>,
    rng: Rng,
    units: u64,
    next_seq_unit: u64,
    blocks_per_io: u64,
    written: Vec<u64>,
    verify_tag: u64,
    hist: Histogram<u64>,
    start: Instant,
    measure_from: Instant,
    issued: u64,
    read_ops: u64,
    write_ops: u64,
    bytes: u64,
    errors: u64,
    verify_failures: u64,
    first_error: Option<String>,
}

/// Runs one job on a logged-in session. `start` is the common start instant of all jobs.
pub fn run_job(s: &mut Session, spec: JobSpec, start: Instant) -> Result<JobResult, InitError> {
    let blk = u64::from(spec.block_len);
    if spec.io_bytes == 0 || u64::from(spec.io_bytes) % blk != 0 {
        return Err(InitError::Protocol(format!(
            "I/O size {} is not a multiple of the block length {}",
            spec.io_bytes, spec.block_len
        )));
    }
    let lun_bytes = spec.lun_blocks * blk;
    let span = if spec.span_bytes == 0 {
        lun_bytes
    } else {
        spec.span_bytes.min(lun_bytes)
    };
    let units = span / u64::from(spec.io_bytes);
    if units == 0 {
        return Err(InitError::Protocol("LUN smaller than one I/O".into()));
    }
    let qd = spec.queue_depth.clamp(1, 4096);
    s.stream.set_nonblocking(spec.spin)?;
    let mut slots = Vec::with_capacity(qd);
    for i in 0..qd {
        let mut buf = vec![0u8; spec.io_bytes as usize];
        // Non-trivial write data, filled once.
        for (j, b) in buf.iter_mut().enumerate() {
            *b = (j as u8).wrapping_mul(31).wrapping_add(i as u8);
        }
        slots.push(Slot {
            buf,
            state: SlotState::Free,
            write: false,
            lba: 0,
            itt: i as u32,
            started: start,
            must_match: false,
        });
    }
    let seq_start = if spec.random {
        0
    } else {
        (units / 8 * spec.job_index as u64) % units
    };
    let mut e = Engine {
        blocks_per_io: u64::from(spec.io_bytes) / blk,
        written: if spec.verify {
            vec![0u64; units.div_ceil(64) as usize]
        } else {
            Vec::new()
        },
        verify_tag: spec.seed ^ 0x7a6e_6465_6d00_0000,
        rng: Rng(spec.seed.max(1) ^ ((spec.job_index as u64 + 1) << 32)),
        units,
        next_seq_unit: seq_start,
        free: (0..qd).rev().collect(),
        slots,
        tx_hdr: Vec::with_capacity(BHS_LEN * (qd * 4 + 16)),
        tx_plan: Vec::with_capacity(qd * 8 + 16),
        rx: vec![0u8; RX_BUF],
        rx_len: 0,
        sink: None,
        hist: Histogram::new_with_bounds(1, 60_000_000_000, 3)
            .map_err(|e| InitError::Protocol(e.to_string()))?,
        measure_from: start + spec.ramp,
        start,
        issued: 0,
        read_ops: 0,
        write_ops: 0,
        bytes: 0,
        errors: 0,
        verify_failures: 0,
        first_error: None,
        spec,
        s,
    };
    e.run()?;
    let measured = Instant::now().saturating_duration_since(e.measure_from);
    Ok(JobResult {
        hist_ns: e.hist,
        read_ops: e.read_ops,
        write_ops: e.write_ops,
        bytes: e.bytes,
        errors: e.errors,
        verify_failures: e.verify_failures,
        first_error: e.first_error,
        measured,
    })
}

impl Engine<'_> {
    fn stop_issuing(&self, now: Instant) -> bool {
        if let Some(max) = self.spec.ops_max {
            if self.issued >= max {
                return true;
            }
        }
        if let Some(d) = self.spec.duration {
            if now.saturating_duration_since(self.start) >= d {
                return true;
            }
        }
        false
    }

    fn run(&mut self) -> Result<(), InitError> {
        loop {
            let now = Instant::now();
            let stopping = self.stop_issuing(now);
            if !stopping {
                self.issue_all(now);
            }
            self.flush()?;
            if stopping && self.free.len() == self.slots.len() && self.sink.is_none() {
                return Ok(());
            }
            self.receive()?;
        }
    }

    fn window_open(&self) -> bool {
        sn_le(self.s.cmdsn, self.s.maxcmdsn)
    }

    fn issue_all(&mut self, now: Instant) {
        while self.window_open() {
            if let Some(max) = self.spec.ops_max {
                if self.issued >= max {
                    break;
                }
            }
            let Some(slot) = self.free.pop() else { break };
            self.issue(slot, now);
        }
    }

    fn pick_unit(&mut self) -> u64 {
        if self.spec.random {
            self.rng.next() % self.units
        } else {
            let u = self.next_seq_unit;
            self.next_seq_unit = if u + 1 >= self.units { 0 } else { u + 1 };
            u
        }
    }

    fn issue(&mut self, idx: usize, now: Instant) {
        let unit = self.pick_unit();
        let write = match self.spec.mix {
            Mix::Read => false,
            Mix::Write => true,
            Mix::Mixed(pct) => (self.rng.next() % 100) >= u64::from(pct),
        };
        let lba = unit * self.blocks_per_io;
        let nblocks = self.blocks_per_io;
        let io_bytes = self.spec.io_bytes;
        let p = self.s.params;
        // Unsolicited data: immediate part, then Data-Out PDUs up to FirstBurstLength.
        let (immediate_len, unsolicited_len) = if write && !p.initial_r2t {
            let first = io_bytes.min(p.first_burst);
            let imm = if p.immediate_data {
                first.min(p.target_max_recv_dsl)
            } else {
                0
            };
            (imm, first)
        } else if write && p.immediate_data {
            let imm = io_bytes.min(p.first_burst).min(p.target_max_recv_dsl);
            (imm, imm)
        } else {
            (0, 0)
        };
        let use16 = match self.spec.cdb {
            CdbSize::Sixteen => true,
            CdbSize::Ten => false,
            CdbSize::Auto => lba + nblocks > u64::from(u32::MAX) || nblocks > 0xffff,
        };
        let mut cdb = [0u8; 16];
        if use16 {
            cdb[0] = if write { 0x8a } else { 0x88 };
            cdb[2..10].copy_from_slice(&lba.to_be_bytes());
            cdb[10..14].copy_from_slice(&(nblocks as u32).to_be_bytes());
        } else {
            cdb[0] = if write { 0x2a } else { 0x28 };
            cdb[2..6].copy_from_slice(&(lba as u32).to_be_bytes());
            cdb[7..9].copy_from_slice(&(nblocks as u16).to_be_bytes());
        }
        let itt = (self.slots[idx].itt & 0xffff_0000).wrapping_add(0x1_0000) | idx as u32;
        let cmd = ScsiCommandRepr {
            immediate: false,
            final_flag: unsolicited_len == immediate_len,
            read: !write,
            write,
            attr: 1,
            lun: self.spec.lun,
            itt,
            edtl: io_bytes,
            cmdsn: self.s.cmdsn,
            expstatsn: self.s.expstatsn,
            cdb,
        };
        self.s.cmdsn = self.s.cmdsn.wrapping_add(1);
        self.issued += 1;
        if self.spec.verify && write {
            self.stamp(idx, lba);
        }
        let must_match = self.spec.verify && !write && self.is_written(unit);
        let slot = &mut self.slots[idx];
        slot.state = SlotState::Busy;
        slot.write = write;
        slot.lba = lba;
        slot.itt = itt;
        slot.started = now;
        slot.must_match = must_match;
        self.push_hdr(|h| cmd.emit(h), immediate_len);
        if immediate_len > 0 {
            self.push_data(idx, 0, immediate_len as usize);
        }
        if unsolicited_len > immediate_len {
            self.push_data_outs(
                idx,
                itt,
                RESERVED_TAG,
                immediate_len,
                unsolicited_len - immediate_len,
            );
        }
    }

    /// Appends a header to the transmit plan; `dsl` is its DataSegmentLength.
    fn push_hdr(&mut self, emit: impl FnOnce(&mut [u8; BHS_LEN]), dsl: u32) {
        let off = self.tx_hdr.len();
        let mut h = [0u8; BHS_LEN];
        emit(&mut h);
        // dsl never exceeds 2^24 here (bounded by the negotiated 256 KiB limits).
        let _ = Bhs::new_unchecked(&mut h[..]).set_data_segment_len(dsl);
        self.tx_hdr.extend_from_slice(&h);
        self.tx_plan.push(TxItem::Hdr(off));
    }

    fn push_data(&mut self, slot: usize, off: usize, len: usize) {
        self.tx_plan.push(TxItem::Data { slot, off, len });
        let pad = pad4(len) - len;
        if pad > 0 {
            self.tx_plan.push(TxItem::Pad(pad));
        }
    }

    /// Data-Out PDUs for `len` bytes from `offset`, each at most the target's
    /// MaxRecvDataSegmentLength, the last with F set.
    fn push_data_outs(&mut self, slot: usize, itt: u32, ttt: u32, offset: u32, len: u32) {
        let max = self.s.params.target_max_recv_dsl.max(512);
        let mut sent = 0u32;
        let mut datasn = 0u32;
        while sent < len {
            let n = (len - sent).min(max);
            let d = DataOutRepr {
                final_flag: sent + n == len,
                lun: self.spec.lun,
                itt,
                ttt,
                expstatsn: self.s.expstatsn,
                datasn,
                buffer_offset: offset + sent,
            };
            self.push_hdr(|h| d.emit(h), n);
            self.push_data(slot, (offset + sent) as usize, n as usize);
            sent += n;
            datasn += 1;
        }
    }

    fn flush(&mut self) -> Result<(), InitError> {
        let plan = &self.tx_plan;
        if plan.is_empty() {
            return Ok(());
        }
        let hdr = &self.tx_hdr;
        let slots = &self.slots;
        let piece = |item: &TxItem| -> &[u8] {
            match *item {
                TxItem::Hdr(off) => &hdr[off..off + BHS_LEN],
                TxItem::Data { slot, off, len } => &slots[slot].buf[off..off + len],
                TxItem::Pad(n) => &ZERO_PAD[..n],
            }
        };
        let mut idx = 0usize;
        let mut skip = 0usize;
        while idx < plan.len() {
            let mut iov = [IoSlice::new(&[]); 64];
            let mut n = 0;
            let mut j = idx;
            while j < plan.len() && n < iov.len() {
                let p = piece(&plan[j]);
                iov[n] = IoSlice::new(if j == idx { &p[skip..] } else { p });
                n += 1;
                j += 1;
            }
            let mut w = retry_would_block(|| self.s.stream.write_vectored(&iov[..n]))?;
            if w == 0 {
                return Err(InitError::Io(std::io::ErrorKind::WriteZero.into()));
            }
            while w > 0 {
                let left = piece(&plan[idx]).len() - skip;
                if w >= left {
                    w -= left;
                    idx += 1;
                    skip = 0;
                } else {
                    skip += w;
                    w = 0;
                }
            }
        }
        self.tx_plan.clear();
        self.tx_hdr.clear();
        Ok(())
    }

    /// One blocking read, then every complete PDU in the buffer is handled.
    fn receive(&mut self) -> Result<(), InitError> {
        // Large payload pending and nothing buffered: read straight into the slot buffer.
        if let Some(sink) = self.sink {
            if self.rx_len == 0 && sink.remaining >= DIRECT_READ_MIN {
                let buf = &mut self.slots[sink.slot].buf[sink.off..sink.off + sink.remaining];
                let stream = &mut self.s.stream;
                let n = retry_would_block(|| stream.read(buf))?;
                if n == 0 {
                    return Err(InitError::Protocol("target closed the connection".into()));
                }
                let sink = self.sink.as_mut().expect("sink checked above");
                sink.off += n;
                sink.remaining -= n;
                if sink.remaining == 0 && sink.pad == 0 {
                    self.finish_sink();
                }
                return Ok(());
            }
        }
        let (stream, rx) = (&mut self.s.stream, &mut self.rx[self.rx_len..]);
        let n = retry_would_block(|| stream.read(rx))?;
        if n == 0 {
            return Err(InitError::Protocol("target closed the connection".into()));
        }
        self.rx_len += n;
        let mut pos = 0usize;
        loop {
            if let Some(sink) = self.sink.as_mut() {
                let avail = self.rx_len - pos;
                let take = avail.min(sink.remaining);
                let (slot, off) = (sink.slot, sink.off);
                sink.off += take;
                sink.remaining -= take;
                let pad_take = (avail - take).min(sink.pad);
                sink.pad -= pad_take;
                let done = sink.remaining == 0 && sink.pad == 0;
                self.slots[slot].buf[off..off + take].copy_from_slice(&self.rx[pos..pos + take]);
                pos += take + pad_take;
                if !done {
                    break;
                }
                self.finish_sink();
                continue;
            }
            let avail = self.rx_len - pos;
            if avail < BHS_LEN {
                break;
            }
            let bhs = Bhs::new_unchecked(&self.rx[pos..pos + BHS_LEN]);
            let ahs = bhs.total_ahs_len();
            let dsl = bhs.data_segment_len() as usize;
            if bhs.opcode_raw() == Opcode::DataIn as u8 && dsl > 0 {
                if avail < BHS_LEN + ahs {
                    break;
                }
                let mut h = [0u8; BHS_LEN];
                h.copy_from_slice(&self.rx[pos..pos + BHS_LEN]);
                pos += BHS_LEN + ahs;
                self.data_in_header(&h, dsl)?;
                continue;
            }
            let total = BHS_LEN + ahs + pad4(dsl);
            if total > self.rx.len() {
                return Err(InitError::Protocol(format!(
                    "PDU of {total} bytes exceeds the receive buffer"
                )));
            }
            if avail < total {
                break;
            }
            let mut h = [0u8; BHS_LEN];
            h.copy_from_slice(&self.rx[pos..pos + BHS_LEN]);
            let data_start = pos + BHS_LEN + ahs;
            pos += total;
            self.other_pdu(&h, data_start, dsl)?;
        }
        // Keep the unparsed tail at the front.
        if pos > 0 {
            self.rx.copy_within(pos..self.rx_len, 0);
            self.rx_len -= pos;
        }
        Ok(())
    }

    fn slot_for(&self, itt: u32) -> Result<usize, InitError> {
        let idx = (itt & 0xffff) as usize;
        match self.slots.get(idx) {
            Some(s) if s.state == SlotState::Busy && s.itt == itt => Ok(idx),
            _ => Err(InitError::Protocol(format!(
                "PDU for unknown task {itt:#x}"
            ))),
        }
    }

    fn update_sn(&mut self, expcmdsn: u32, maxcmdsn: u32) {
        // RFC 7143 §4.2.2.1: MaxCmdSN below ExpCmdSN-1 is ignored; never move it back.
        if sn_le(expcmdsn.wrapping_sub(1), maxcmdsn) && sn_le(self.s.maxcmdsn, maxcmdsn) {
            self.s.maxcmdsn = maxcmdsn;
        }
    }

    fn data_in_header(&mut self, h: &[u8; BHS_LEN], dsl: usize) -> Result<(), InitError> {
        let d = DataInRepr::parse(&Bhs::new_unchecked(&h[..]))
            .map_err(|e| InitError::Protocol(format!("Data-In: {e}")))?;
        self.update_sn(d.expcmdsn, d.maxcmdsn);
        let idx = self.slot_for(d.itt)?;
        let off = d.buffer_offset as usize;
        if off + dsl > self.slots[idx].buf.len() || self.slots[idx].write {
            return Err(InitError::Protocol(format!(
                "Data-In for task {:#x} out of range ({off}+{dsl})",
                d.itt
            )));
        }
        if d.status_present {
            self.s.expstatsn = d.statsn.wrapping_add(1);
        }
        self.sink = Some(Sink {
            slot: idx,
            off,
            remaining: dsl,
            pad: pad4(dsl) - dsl,
            complete_status: d.status_present.then_some(d.status),
        });
        Ok(())
    }

    fn finish_sink(&mut self) {
        if let Some(sink) = self.sink.take() {
            if let Some(status) = sink.complete_status {
                self.complete(sink.slot, status, None);
            }
        }
    }

    fn other_pdu(
        &mut self,
        h: &[u8; BHS_LEN],
        data_start: usize,
        dsl: usize,
    ) -> Result<(), InitError> {
        let bhs = Bhs::new_unchecked(&h[..]);
        match bhs.opcode() {
            Some(Opcode::ScsiResponse) => {
                let r = ScsiResponseRepr::parse(&bhs)
                    .map_err(|e| InitError::Protocol(format!("SCSI Response: {e}")))?;
                self.s.expstatsn = r.statsn.wrapping_add(1);
                self.update_sn(r.expcmdsn, r.maxcmdsn);
                let idx = self.slot_for(r.itt)?;
                let status = if r.response != 0 { 0xff } else { r.status };
                let sense = if status != 0 {
                    Some(decode_sense(&self.rx[data_start..data_start + dsl]))
                } else {
                    None
                };
                self.complete(idx, status, sense);
            }
            Some(Opcode::DataIn) => {
                // Data-In without payload (status only).
                self.data_in_header(h, 0)?;
                self.finish_sink();
            }
            Some(Opcode::R2T) => {
                let r =
                    R2tRepr::parse(&bhs).map_err(|e| InitError::Protocol(format!("R2T: {e}")))?;
                self.update_sn(r.expcmdsn, r.maxcmdsn);
                let idx = self.slot_for(r.itt)?;
                let len = self.slots[idx].buf.len() as u32;
                if !self.slots[idx].write
                    || r.buffer_offset
                        .checked_add(r.desired_len)
                        .is_none_or(|end| end > len)
                {
                    return Err(InitError::Protocol(format!(
                        "bad R2T for task {:#x}: {}+{}",
                        r.itt, r.buffer_offset, r.desired_len
                    )));
                }
                self.push_data_outs(idx, r.itt, r.ttt, r.buffer_offset, r.desired_len);
            }
            Some(Opcode::NopIn) => {
                let n = NopInRepr::parse(&bhs)
                    .map_err(|e| InitError::Protocol(format!("NOP-In: {e}")))?;
                self.update_sn(n.expcmdsn, n.maxcmdsn);
                if n.ttt != RESERVED_TAG {
                    let reply = nop_out_reply(n.lun, n.ttt, self.s.cmdsn, self.s.expstatsn);
                    let off = self.tx_hdr.len();
                    self.tx_hdr.extend_from_slice(&reply);
                    self.tx_plan.push(TxItem::Hdr(off));
                }
            }
            Some(Opcode::AsyncMessage) => {
                let ev = bhs.flags();
                let _ = ev;
                let code = h[36];
                if code == 1 || code == 2 || code == 3 {
                    return Err(InitError::Protocol(format!(
                        "target asked to log out / drop (async event {code})"
                    )));
                }
            }
            Some(Opcode::Reject) => {
                return Err(InitError::Protocol(format!(
                    "target rejected a PDU (reason {:#04x})",
                    h[2]
                )));
            }
            other => {
                return Err(InitError::Protocol(format!(
                    "unexpected PDU {other:?} (opcode {:#04x})",
                    bhs.opcode_raw()
                )))
            }
        }
        Ok(())
    }

    fn complete(&mut self, idx: usize, status: u8, sense: Option<(u8, u8, u8)>) {
        let now = Instant::now();
        let (write, started, lba, must_match) = {
            let s = &self.slots[idx];
            (s.write, s.started, s.lba, s.must_match)
        };
        if status != 0 {
            self.errors += 1;
            if self.first_error.is_none() {
                let (k, a, q) = sense.unwrap_or((0, 0, 0));
                self.first_error = Some(format!(
                    "{} at LBA {lba}: status {status:#04x} sense {k:#x}/{a:#04x}/{q:#04x}",
                    if write { "WRITE" } else { "READ" }
                ));
            }
        } else if self.spec.verify {
            let unit = lba / self.blocks_per_io;
            if write {
                self.mark_written(unit);
            } else if !self.check(idx, lba, must_match) {
                self.verify_failures += 1;
                if self.first_error.is_none() {
                    self.first_error = Some(format!("verify failed at LBA {lba}"));
                }
            }
        }
        if started >= self.measure_from {
            let ns = now.saturating_duration_since(started).as_nanos() as u64;
            let _ = self.hist.record(ns.max(1));
            if write {
                self.write_ops += 1;
            } else {
                self.read_ops += 1;
            }
            self.bytes += u64::from(self.spec.io_bytes);
        }
        self.slots[idx].state = SlotState::Free;
        self.free.push(idx);
    }

    // ---- verify: every 512-byte sector written carries (LBA of the sector, run tag) ----

    fn stamp(&mut self, idx: usize, lba: u64) {
        let tag = self.verify_tag;
        let blk = self.spec.block_len as usize;
        for (i, sector) in self.slots[idx].buf.chunks_mut(blk).enumerate() {
            if sector.len() >= 16 {
                sector[0..8].copy_from_slice(&(lba + i as u64).to_le_bytes());
                sector[8..16].copy_from_slice(&tag.to_le_bytes());
            }
        }
    }

    fn check(&self, idx: usize, lba: u64, must_match: bool) -> bool {
        let tag = self.verify_tag;
        let blk = self.spec.block_len as usize;
        self.slots[idx]
            .buf
            .chunks(blk)
            .enumerate()
            .all(|(i, sector)| {
                if sector.len() < 16 {
                    return true;
                }
                let got_lba = u64::from_le_bytes(sector[0..8].try_into().unwrap_or([0; 8]));
                let got_tag = u64::from_le_bytes(sector[8..16].try_into().unwrap_or([0; 8]));
                let want = lba + i as u64;
                if got_tag == tag {
                    // Our data: it must be at the right place.
                    got_lba == want
                } else {
                    // Not our data: fine only if we never wrote it before this read.
                    !must_match
                }
            })
    }

    fn is_written(&self, unit: u64) -> bool {
        self.written
            .get((unit / 64) as usize)
            .is_some_and(|w| w & (1 << (unit % 64)) != 0)
    }

    fn mark_written(&mut self, unit: u64) {
        if let Some(w) = self.written.get_mut((unit / 64) as usize) {
            *w |= 1 << (unit % 64);
        }
    }
}
