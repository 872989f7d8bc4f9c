//! SCSI commands over iSCSI: command PDUs, Data-Out collection with R2T, running the
//! logical unit's steps against the block device, and Data-In / SCSI Response.

use super::task::{R2tSet, R2tWindow, Residual, Task, TaskStage};
use super::{ConnCore, Phase};
use crate::reactor_ctx::{make_tag, ReactorCtx};
use crate::target::Device;
use std::sync::Arc;
use tandem_bdev::{BdevOp, Completion};
use tandem_iscsi::wire::{
    reject, Bhs, DataInRepr, DataOutRepr, R2tRepr, ScsiCommandRepr, ScsiResponseRepr, BHS_LEN,
};
use tandem_scsi::{
    Command, DataOutFit, IoOutcome, IoPlan, LuIo, Reply, ReplyData, ScsiStatus, Sense, Step,
    WriteSource,
};

/// Largest write we accept in one command; larger ones are refused before any data moves.
const WRITE_LEN_MAX: u32 = 32 * 1024 * 1024;
/// Tasks started per poll, so one connection's backlog cannot monopolise the reactor.
const TASKS_PER_POLL: usize = 64;

/// SAM LUN field (8 bytes, peripheral or flat addressing) to a LUN number.
pub(crate) fn decode_lun(field: u64) -> u64 {
    let first = (field >> 48) as u16;
    match first >> 14 {
        0 | 1 => (first & 0x3fff) as u64,
        _ => u64::MAX,
    }
}

impl ConnCore {
    fn target_device(&self, lun: u64) -> Option<Arc<Device>> {
        let s = self.session.as_ref()?;
        s.target.as_ref()?.lun(decode_lun(lun)).cloned()
    }

    pub(super) fn on_scsi_command(
        &mut self,
        ctx: &mut ReactorCtx,
        bhs: &[u8; BHS_LEN],
        data: &[u8],
    ) {
        let cmd = match ScsiCommandRepr::parse(&Bhs::new_unchecked(&bhs[..])) {
            Ok(c) => c,
            Err(_) => {
                self.send_reject(reject::INVALID_PDU_FIELD, bhs);
                return;
            }
        };
        if self.session.as_ref().map(|s| s.discovery).unwrap_or(true) {
            tracing::warn!(
                conn = self.id,
                "SCSI command in a discovery session; rejected"
            );
            self.send_reject(reject::PROTOCOL_ERROR, bhs);
            return;
        }
        if !self.accept_cmdsn(cmd.cmdsn, cmd.immediate) {
            return;
        }
        if self.tasks.contains_itt(cmd.itt) {
            tracing::warn!(
                conn = self.id,
                itt = cmd.itt,
                "ITT already in use; rejected"
            );
            self.send_reject(reject::TASK_IN_PROGRESS, bhs);
            return;
        }
        let params = self
            .session
            .as_ref()
            .map(|s| s.params.clone())
            .unwrap_or_default();
        let mut task = Task {
            itt: cmd.itt,
            lun: cmd.lun,
            cdb: cmd.cdb,
            edtl: cmd.edtl,
            read: cmd.read,
            write: cmd.write,
            stage: TaskStage::Ready,
            aborted: false,
            data_out: None,
            received: 0,
            unsolicited_end: 0,
            next_r2t_offset: 0,
            r2tsn: 0,
            r2ts: R2tSet::default(),
            io_buf: None,
            cont: None,
            datasn: 0,
            draining: false,
            io_started_at: Some(ctx.now),
            pending_ios: 0,
            io_failed: None,
            data_out_in_io: false,
            unsolicited_datasn: 0,
            residual: Residual::None,
            write_fitted: false,
        };
        if !self.tasks.has_room(cmd.immediate) {
            // Within the window but no room (e.g. many answers still being sent): answer
            // TASK SET FULL so the initiator retries, never drop the command.
            tracing::debug!(conn = self.id, itt = cmd.itt, "task table full");
            self.send_status_without_task(cmd.itt, ScsiStatus::TaskSetFull);
            return;
        }
        let mut early: Option<Reply> = None;
        if cmd.write {
            if !data.is_empty() && !params.immediate_data {
                self.send_reject(reject::PROTOCOL_ERROR, bhs);
                return;
            }
            if data.len() as u64 > cmd.edtl as u64
                || data.len() as u64 > params.first_burst_length as u64
            {
                self.send_reject(reject::PROTOCOL_ERROR, bhs);
                return;
            }
            task.unsolicited_end = if params.initial_r2t {
                data.len() as u32
            } else {
                cmd.edtl.min(params.first_burst_length)
            };
            task.next_r2t_offset = task.unsolicited_end;
            // Bidirectional commands are not supported; oversize writes are refused before
            // any buffer is allocated for them.
            if cmd.read || cmd.edtl > WRITE_LEN_MAX {
                early = Some(Reply::check(&Sense::invalid_field_cdb_unpointed()));
            } else {
                let dev = self.target_device(cmd.lun);
                let mut buf = ctx.alloc_buf(dev.as_ref(), cmd.edtl as usize);
                buf[..data.len()].copy_from_slice(data);
                task.data_out = Some(buf);
                task.received = data.len() as u32;
            }
            if task.received < cmd.edtl || early.is_some() {
                task.stage = TaskStage::CollectingData;
            }
        }
        let Some(slot) = self.tasks.insert(task) else {
            self.send_reject(reject::TASK_IN_PROGRESS, bhs);
            return;
        };
        if let Some(reply) = early {
            tracing::debug!(
                conn = self.id,
                itt = cmd.itt,
                "command refused before data transfer"
            );
            if let Some(t) = self.tasks.get_mut(slot) {
                t.draining = true;
            }
            self.send_reply(ctx, slot, reply);
            return;
        }
        match self.tasks.get(slot).map(|t| t.stage) {
            Some(TaskStage::CollectingData) => self.issue_r2ts(slot),
            Some(TaskStage::Ready) => self.ready.push_back(slot),
            _ => {}
        }
    }

    /// Sends R2Ts for the part of the write not covered by unsolicited data, keeping at
    /// most MaxOutstandingR2T outstanding, each at most MaxBurstLength long.
    fn issue_r2ts(&mut self, slot: usize) {
        let Some(s) = self.session.as_ref() else {
            return;
        };
        let max_outstanding = s.params.max_outstanding_r2t.max(1) as usize;
        let max_burst = s.params.max_burst_length.max(512);
        let exp_cmdsn = self.exp_cmdsn();
        let max_cmdsn = self.max_cmdsn();
        loop {
            let Some(t) = self.tasks.get(slot) else {
                return;
            };
            if t.draining
                || t.r2ts.len() >= max_outstanding
                || t.r2ts.is_full()
                || t.next_r2t_offset >= t.edtl
            {
                return;
            }
            let offset = t.next_r2t_offset;
            let len = (t.edtl - offset).min(max_burst);
            let ttt = self.new_ttt();
            let statsn = self.statsn;
            let t = self.tasks.get_mut(slot).expect("slot checked above");
            let r2tsn = t.r2tsn;
            t.r2tsn = t.r2tsn.wrapping_add(1);
            t.next_r2t_offset = offset + len;
            t.r2ts.push(R2tWindow {
                ttt,
                offset,
                len,
                received: 0,
                next_datasn: 0,
            });
            let repr = R2tRepr {
                lun: t.lun,
                itt: t.itt,
                ttt,
                statsn,
                expcmdsn: exp_cmdsn,
                maxcmdsn: max_cmdsn,
                r2tsn,
                buffer_offset: offset,
                desired_len: len,
            };
            let mut bhs = [0u8; BHS_LEN];
            repr.emit(&mut bhs);
            self.tx.push_owned(bhs, Vec::new(), None);
        }
    }

    pub(super) fn on_data_out(&mut self, ctx: &mut ReactorCtx, bhs: &[u8; BHS_LEN], data: &[u8]) {
        let Some(accepted) = self.accept_data_out(ctx, bhs, data.len()) else {
            return;
        };
        if let Some(buf) = self
            .tasks
            .get_mut(accepted.slot)
            .and_then(|t| t.data_out.as_mut())
        {
            let start = accepted.buffer_offset;
            buf[start..start + data.len()].copy_from_slice(data);
        }
        self.data_out_landed(accepted, data.len());
    }

    /// Checks a Data-Out header against its task (ITT, TTT, offsets, DataSN) and does the
    /// R2T bookkeeping. Returns where its `len` data bytes go, or None if they are to be
    /// dropped (the PDU was answered with a Reject or the command has failed).
    pub(super) fn accept_data_out(
        &mut self,
        ctx: &mut ReactorCtx,
        bhs: &[u8; BHS_LEN],
        len: usize,
    ) -> Option<AcceptedData> {
        let d = match DataOutRepr::parse(&Bhs::new_unchecked(&bhs[..])) {
            Ok(d) => d,
            Err(_) => {
                self.send_reject(reject::INVALID_PDU_FIELD, bhs);
                return None;
            }
        };
        let Some(slot) = self.tasks.slot_of(d.itt) else {
            // Data for a task we already answered (e.g. refused early) or never had.
            tracing::debug!(
                conn = self.id,
                itt = d.itt,
                "Data-Out for an unknown task; rejected"
            );
            self.send_reject(reject::INVALID_PDU_FIELD, bhs);
            return None;
        };
        let t = self.tasks.get_mut(slot)?;
        if t.stage != TaskStage::CollectingData || !t.write {
            if !t.draining {
                self.send_reject(reject::PROTOCOL_ERROR, bhs);
            }
            return None;
        }
        let end = d.buffer_offset as u64 + len as u64;
        if end > t.edtl as u64 {
            tracing::warn!(
                conn = self.id,
                itt = d.itt,
                "Data-Out beyond the expected length; rejected"
            );
            self.send_reject(reject::PROTOCOL_ERROR, bhs);
            return None;
        }
        let mut burst_done = false;
        let datasn_ok;
        if d.ttt == u32::MAX {
            if end > t.unsolicited_end as u64 {
                self.send_reject(reject::PROTOCOL_ERROR, bhs);
                return None;
            }
            datasn_ok = d.datasn == t.unsolicited_datasn;
            t.unsolicited_datasn = t.unsolicited_datasn.wrapping_add(1);
        } else {
            let Some(w) = t.r2ts.find_mut(d.ttt) else {
                self.send_reject(reject::INVALID_PDU_FIELD, bhs);
                return None;
            };
            if (d.buffer_offset as u64) < w.offset as u64 || end > w.offset as u64 + w.len as u64 {
                self.send_reject(reject::PROTOCOL_ERROR, bhs);
                return None;
            }
            datasn_ok = d.datasn == w.next_datasn;
            w.next_datasn = w.next_datasn.wrapping_add(1);
            w.received += len as u32;
            if w.received >= w.len || d.final_flag {
                burst_done = true;
                let ttt = d.ttt;
                t.r2ts.remove(ttt);
            }
        }
        if t.draining {
            return None;
        }
        if !datasn_ok {
            // ErrorRecoveryLevel 0 cannot ask for the missing PDU again: the command fails
            // (and the rest of its data is absorbed) rather than write data out of order.
            tracing::warn!(
                conn = self.id,
                itt = d.itt,
                datasn = d.datasn,
                "Data-Out with wrong DataSN; command aborted"
            );
            t.draining = true;
            t.r2ts.clear();
            self.send_reply(ctx, slot, Reply::check(&Sense::data_phase_error()));
            return None;
        }
        t.data_out.as_ref()?;
        Some(AcceptedData {
            slot,
            buffer_offset: d.buffer_offset as usize,
            burst_done,
        })
    }

    /// The data of an accepted Data-Out is in the task's buffer: count it, and run the
    /// command or ask for the next burst.
    pub(super) fn data_out_landed(&mut self, accepted: AcceptedData, len: usize) {
        let slot = accepted.slot;
        let Some(t) = self.tasks.get_mut(slot) else {
            return;
        };
        t.received = t.received.saturating_add(len as u32);
        if t.received >= t.edtl && t.r2ts.is_empty() {
            t.stage = TaskStage::Ready;
            self.ready.push_back(slot);
        } else if accepted.burst_done {
            self.issue_r2ts(slot);
        }
    }

    /// The Data-Out buffer of a task, for receiving straight from the socket.
    pub(super) fn data_out_buf(&mut self, slot: usize) -> Option<&mut [u8]> {
        self.tasks
            .get_mut(slot)
            .and_then(|t| t.data_out.as_deref_mut())
    }

    pub(super) fn run_ready(&mut self, ctx: &mut ReactorCtx) -> usize {
        let mut n = 0;
        let batch = self.ready.len().min(TASKS_PER_POLL);
        for _ in 0..batch {
            let Some(slot) = self.ready.pop_front() else {
                break;
            };
            if self.phase == Phase::Closing {
                break;
            }
            n += 1;
            self.execute(ctx, slot);
        }
        n
    }

    fn execute(&mut self, ctx: &mut ReactorCtx, slot: usize) {
        let Some(t) = self.tasks.get(slot) else {
            return;
        };
        if t.stage != TaskStage::Ready || t.aborted {
            return;
        }
        let cdb = t.cdb;
        let edtl = t.edtl;
        let lun = t.lun;
        let needs_fit = t.write && !t.write_fitted;
        let Some(target) = self.session.as_ref().and_then(|s| s.target.clone()) else {
            return;
        };
        if cdb[0] == tandem_scsi::cdb::op::REPORT_LUNS {
            let reply = tandem_scsi::report_luns(&target.lun_ids(), &cdb);
            self.send_reply(ctx, slot, reply);
            return;
        }
        let Some(dev) = target.lun(decode_lun(lun)).cloned() else {
            let reply = tandem_scsi::lun_not_present(&cdb);
            self.send_reply(ctx, slot, reply);
            return;
        };
        if needs_fit {
            // The LU decides how much of the Data-Out the command uses; we report the
            // difference as the residual (RFC 7143 §11.4.5.2).
            let residual = match dev.lu.data_out_fit(&cdb, edtl) {
                DataOutFit::Exact => Residual::None,
                DataOutFit::Short(r) => Residual::Overflow(r),
                DataOutFit::Long(r) => Residual::Underflow(r),
            };
            let t = self.tasks.get_mut(slot).expect("slot checked above");
            t.write_fitted = true;
            t.residual = residual;
            // Data beyond what the command uses is dropped now, so the write can take
            // the buffer as it is instead of copying the part it needs.
            if let (Residual::Underflow(r), Some(buf)) = (residual, t.data_out.as_mut()) {
                let keep = buf.len().saturating_sub(r as usize);
                buf.set_len(keep);
            }
        }
        let Some(session) = self.session.as_ref() else {
            return;
        };
        let t = self.tasks.get(slot).expect("slot checked above");
        let data_out: &[u8] = t.data_out.as_deref().unwrap_or(&[]);
        let step = dev.lu.execute(&Command {
            cdb: &t.cdb,
            data_out,
            expected_in_len: edtl,
            nexus: &session.nexus,
        });
        self.handle_step(ctx, slot, &dev, step);
    }

    fn handle_step(&mut self, ctx: &mut ReactorCtx, slot: usize, dev: &Arc<Device>, step: Step) {
        match step {
            Step::Done(reply) => {
                if reply.status != ScsiStatus::Good {
                    dev.stats.count_error();
                }
                if let Some(started) = self.tasks.get(slot).and_then(|t| t.io_started_at) {
                    let us = ctx.now.saturating_duration_since(started).as_micros() as u64;
                    dev.stats.record_latency_us(us);
                }
                self.send_reply(ctx, slot, reply)
            }
            Step::Defer => {
                if let Some(t) = self.tasks.get_mut(slot) {
                    t.stage = TaskStage::Ready;
                }
                self.ready.push_back(slot);
            }
            Step::Io(IoPlan { io, cont }) => self.submit_io(ctx, slot, dev, io, cont),
            Step::Persist(commit) => self.submit_persist(ctx, slot, dev, commit),
        }
    }

    /// A reservation change waits for the persister thread like an I/O for its device:
    /// the completion comes back through `on_io_complete`, which resumes the LU.
    fn submit_persist(
        &mut self,
        ctx: &mut ReactorCtx,
        slot: usize,
        dev: &Arc<Device>,
        commit: tandem_scsi::PrCommit,
    ) {
        let (queued, cont) = ctx.persist(make_tag(self.id, slot), commit);
        if !queued {
            let Some(nexus) = self.session.as_ref().map(|s| s.nexus.clone()) else {
                return;
            };
            let step = dev.lu.resume(&nexus, cont, IoOutcome::Failed, &[]);
            return self.handle_step(ctx, slot, dev, step);
        }
        let Some(t) = self.tasks.get_mut(slot) else {
            return;
        };
        t.stage = TaskStage::InIo;
        t.cont = Some(cont);
        t.pending_ios = 1;
        t.io_failed = None;
        t.data_out_in_io = false;
        dev.stats
            .in_flight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn submit_io(
        &mut self,
        ctx: &mut ReactorCtx,
        slot: usize,
        dev: &Arc<Device>,
        io: LuIo,
        cont: tandem_scsi::Continuation,
    ) {
        let bs = dev.lu.block_size() as u64;
        let tag = make_tag(self.id, slot);
        // Reused scratch list (keeps its capacity): no allocation per I/O.
        let mut ops = std::mem::take(&mut self.op_scratch);
        ops.clear();
        let mut moved_data_out = false;
        match io {
            LuIo::Read { lba, blocks } => {
                let len = blocks as u64 * bs;
                dev.stats.count_read(len);
                ops.push(BdevOp::Read {
                    offset: lba * bs,
                    len: len as u32,
                });
            }
            LuIo::Write {
                lba,
                blocks,
                src,
                fua,
            } => {
                let len = (blocks as u64 * bs) as usize;
                dev.stats.count_write(len as u64);
                let buf = match src {
                    WriteSource::DataOut {
                        offset,
                        len: src_len,
                    } => {
                        let t = self.tasks.get_mut(slot).expect("task of a running step");
                        let whole = t
                            .data_out
                            .as_ref()
                            .map(|b| offset == 0 && src_len == b.len() && src_len == len)
                            .unwrap_or(false);
                        if whole {
                            moved_data_out = true;
                            t.data_out.take().expect("checked above")
                        } else {
                            let mut b = ctx.alloc_buf(Some(dev), len);
                            let t = self.tasks.get(slot).expect("task of a running step");
                            let src = t
                                .data_out
                                .as_deref()
                                .and_then(|d| d.get(offset..offset + src_len))
                                .unwrap_or(&[]);
                            let n = src.len().min(len);
                            b[..n].copy_from_slice(&src[..n]);
                            b[n..].fill(0);
                            b
                        }
                    }
                    WriteSource::Owned(v) => {
                        let mut b = ctx.alloc_buf(Some(dev), len);
                        let n = v.len().min(len);
                        b[..n].copy_from_slice(&v[..n]);
                        b[n..].fill(0);
                        b
                    }
                };
                ops.push(BdevOp::Write {
                    offset: lba * bs,
                    buf,
                    fua,
                });
            }
            LuIo::Flush => ops.push(BdevOp::Flush),
            LuIo::Unmap { ranges } => {
                for (lba, blocks) in ranges {
                    ops.push(BdevOp::Discard {
                        offset: lba * bs,
                        len: blocks as u64 * bs,
                    });
                }
                if ops.is_empty() {
                    ops.push(BdevOp::Flush);
                }
            }
        }
        let count = ops.len() as u32;
        {
            let t = self.tasks.get_mut(slot).expect("task of a running step");
            t.stage = TaskStage::InIo;
            t.cont = Some(cont);
            t.pending_ios = count;
            t.io_failed = None;
            t.data_out_in_io = moved_data_out;
        }
        dev.stats
            .in_flight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut submitted = true;
        for op in ops.drain(..) {
            if submitted && !ctx.submit(dev, tag, op) {
                submitted = false;
            }
        }
        self.op_scratch = ops;
        if !submitted {
            let t = self.tasks.get_mut(slot).expect("task of a running step");
            t.pending_ios = 0;
            t.stage = TaskStage::Ready;
            t.cont = None;
            dev.stats
                .in_flight
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            self.send_reply(ctx, slot, Reply::check(&Sense::internal_target_failure()));
        }
    }

    pub(super) fn on_io_complete(&mut self, ctx: &mut ReactorCtx, slot: usize, c: Completion) {
        let Some(dev) = self.tasks.get(slot).and_then(|t| self.target_device(t.lun)) else {
            return;
        };
        let Some(t) = self.tasks.get_mut(slot) else {
            return;
        };
        if t.stage != TaskStage::InIo {
            return;
        }
        t.pending_ios = t.pending_ios.saturating_sub(1);
        if let Err(e) = &c.result {
            tracing::warn!(device = %dev.name, error = %e, "block device I/O failed");
            t.io_failed = Some(matches!(e, tandem_bdev::BdevError::Io(_)));
        }
        if let Some(buf) = c.buf {
            if t.data_out_in_io && t.data_out.is_none() {
                t.data_out = Some(buf);
            } else if t.io_buf.is_none() {
                t.io_buf = Some(buf);
            } else {
                ctx.free_buf(Some(&dev), buf);
            }
        }
        if t.pending_ios > 0 {
            return;
        }
        dev.stats
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        t.data_out_in_io = false;
        let cont = t.cont.take();
        if t.aborted {
            self.finish_aborted(ctx, slot);
            return;
        }
        let Some(cont) = cont else { return };
        let io_buf = t.io_buf.take();
        let data_out = t.data_out.take();
        let outcome = match t.io_failed {
            None => IoOutcome::Ok {
                read_data: io_buf.as_deref(),
            },
            Some(true) => IoOutcome::MediumError,
            Some(false) => IoOutcome::Failed,
        };
        let nexus = match self.session.as_ref() {
            Some(s) => s.nexus.clone(),
            None => return,
        };
        let step = dev
            .lu
            .resume(&nexus, cont, outcome, data_out.as_deref().unwrap_or(&[]));
        let t = self.tasks.get_mut(slot).expect("slot checked above");
        t.data_out = data_out;
        t.stage = TaskStage::Ready;
        // A read buffer is kept for Data-In; a later step may bring a new one.
        if let Some(b) = io_buf {
            if matches!(
                step,
                Step::Done(Reply {
                    data: ReplyData::IoBuffer { .. },
                    ..
                })
            ) {
                t.io_buf = Some(b);
            } else {
                ctx.free_buf(Some(&dev), b);
            }
        }
        self.handle_step(ctx, slot, &dev, step);
    }

    /// Queues Data-In and/or SCSI Response for a finished task.
    pub(super) fn send_reply(&mut self, ctx: &mut ReactorCtx, slot: usize, reply: Reply) {
        let exp_cmdsn = self.exp_cmdsn();
        let max_cmdsn = self.max_cmdsn();
        let Some(params) = self.session.as_ref().map(|s| s.params.clone()) else {
            return;
        };
        let Some(t) = self.tasks.get_mut(slot) else {
            return;
        };
        if t.aborted {
            return;
        }
        t.stage = TaskStage::Responding;
        let itt = t.itt;
        let lun = t.lun;
        let edtl = t.edtl as usize;
        let read = t.read;
        let write = t.write;
        let (data_len, owned): (usize, Option<Vec<u8>>) = match reply.data {
            ReplyData::None => (0, None),
            ReplyData::Bytes(v) => (v.len(), Some(v)),
            ReplyData::IoBuffer { len } => (
                len.min(t.io_buf.as_ref().map(|b| b.len()).unwrap_or(0)),
                None,
            ),
        };
        let send_len = if read { data_len.min(edtl) } else { 0 };
        let (under, over, residual) = if read {
            if data_len < edtl {
                (true, false, (edtl - data_len) as u32)
            } else if data_len > edtl {
                (false, true, (data_len - edtl) as u32)
            } else {
                (false, false, 0)
            }
        } else if write {
            match t.residual {
                Residual::None => (false, false, 0),
                Residual::Overflow(r) => (false, true, r),
                Residual::Underflow(r) => (true, false, r),
            }
        } else if edtl > 0 {
            (true, false, edtl as u32)
        } else {
            (false, false, 0)
        };
        let status_in_data =
            reply.status == ScsiStatus::Good && reply.sense.is_none() && send_len > 0;
        let max_seg = (params.max_recv_data_segment_length_initiator as usize).max(512);
        let max_burst = (params.max_burst_length as usize).max(max_seg);
        let mut offset = 0usize;
        let mut datasn = 0u32;
        while offset < send_len {
            let len = (send_len - offset).min(max_seg);
            let last = offset + len == send_len;
            let burst_end = last || (offset + len).is_multiple_of(max_burst);
            let with_status = last && status_in_data;
            let statsn = if with_status {
                self.next_statsn()
            } else {
                self.statsn
            };
            let repr = DataInRepr {
                final_flag: burst_end || with_status,
                ack: false,
                overflow: with_status && over,
                underflow: with_status && under,
                status_present: with_status,
                status: if with_status { reply.status as u8 } else { 0 },
                lun,
                itt,
                ttt: u32::MAX,
                statsn: if with_status { statsn } else { 0 },
                expcmdsn: exp_cmdsn,
                maxcmdsn: max_cmdsn,
                datasn,
                buffer_offset: offset as u32,
                residual: if with_status { residual } else { 0 },
            };
            let mut bhs = [0u8; BHS_LEN];
            repr.emit(&mut bhs);
            let release = (with_status).then_some(slot);
            match &owned {
                Some(v) => self
                    .tx
                    .push_owned(bhs, v[offset..offset + len].to_vec(), release),
                None => {
                    let t = self.tasks.get(slot).expect("slot checked above");
                    let bytes = &t.io_buf.as_deref().unwrap_or(&[])[offset..offset + len];
                    self.tx
                        .push_task_data(bhs, slot, offset..offset + len, bytes, release);
                }
            }
            datasn += 1;
            offset += len;
        }
        if let Some(t) = self.tasks.get_mut(slot) {
            t.datasn = datasn;
        }
        self.tasks.retire_itt(slot);
        if status_in_data {
            return;
        }
        let sense_data = reply.sense.map(|s| {
            let s = s.to_fixed();
            let mut v = Vec::with_capacity(2 + s.len());
            v.extend_from_slice(&(s.len() as u16).to_be_bytes());
            v.extend_from_slice(&s);
            v
        });
        let statsn = self.next_statsn();
        let mut repr = ScsiResponseRepr::new(itt, reply.status as u8);
        repr.statsn = statsn;
        repr.expcmdsn = exp_cmdsn;
        repr.maxcmdsn = max_cmdsn;
        repr.expdatasn = datasn;
        repr.flags.overflow = over;
        repr.flags.underflow = under;
        repr.residual = residual;
        let mut bhs = [0u8; BHS_LEN];
        repr.emit(&mut bhs);
        self.tx
            .push_owned(bhs, sense_data.unwrap_or_default(), Some(slot));
        let _ = ctx;
    }

    /// A SCSI Response for a command that has no task slot (nothing to release).
    fn send_status_without_task(&mut self, itt: u32, status: ScsiStatus) {
        let exp_cmdsn = self.exp_cmdsn();
        let max_cmdsn = self.max_cmdsn();
        let mut repr = ScsiResponseRepr::new(itt, status as u8);
        repr.statsn = self.next_statsn();
        repr.expcmdsn = exp_cmdsn;
        repr.maxcmdsn = max_cmdsn;
        let mut bhs = [0u8; BHS_LEN];
        repr.emit(&mut bhs);
        self.tx.push_owned(bhs, Vec::new(), None);
    }

    pub(super) fn free_task(&mut self, ctx: &mut ReactorCtx, slot: usize) {
        let dev = self.tasks.get(slot).and_then(|t| self.target_device(t.lun));
        if let Some(task) = self.tasks.remove(slot) {
            if let Some(b) = task.data_out {
                ctx.free_buf(dev.as_ref(), b);
            }
            if let Some(b) = task.io_buf {
                ctx.free_buf(dev.as_ref(), b);
            }
        }
    }

    fn finish_aborted(&mut self, ctx: &mut ReactorCtx, slot: usize) {
        self.free_task(ctx, slot);
        self.tmf_task_gone(slot);
    }

    pub(super) fn send_reject(&mut self, reason: u8, rejected: &[u8; BHS_LEN]) {
        let repr = tandem_iscsi::wire::RejectRepr {
            reason,
            statsn: self.statsn,
            expcmdsn: self.exp_cmdsn(),
            maxcmdsn: self.max_cmdsn(),
            datasn: 0,
        };
        self.statsn = self.statsn.wrapping_add(1);
        let mut bhs = [0u8; BHS_LEN];
        repr.emit(&mut bhs);
        self.tx.push_owned(bhs, rejected.to_vec(), None);
    }
}

/// Where an accepted Data-Out's payload goes.
#[derive(Debug, Clone, Copy)]
pub(super) struct AcceptedData {
    pub slot: usize,
    pub buffer_offset: usize,
    pub burst_done: bool,
}
