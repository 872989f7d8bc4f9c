//! SCSI commands over iSCSI: command PDUs, Data-Out collection with R2T, running the
//! logical unit's steps against the block device, and Data-In / SCSI Response.
//!
//! Every task moves through [`Stage`] (see `task.rs` for the diagram); each transition is
//! one function here. Large buffers are granted from the reactor's memory budget before
//! they are allocated: a write's buffer before its first R2T (or at once if unsolicited
//! data comes with it), a read's reply buffer before its I/O starts.

use super::env::ConnEnv;
use super::task::{
    Collecting, InIo, IoFailure, OutBuf, Parked, Planned, R2tSet, R2tWindow, Ready, Reservation,
    Residual, Responding, Stage, Task,
};
use super::{ConnCore, Phase};
use crate::reactor_ctx::make_tag;
use crate::target::Device;
use std::sync::Arc;
use tandem_bdev::{AlignedBuf, BdevOp, Completion};
use tandem_iscsi::wire::{
    reject, Bhs, DataInRepr, DataOutRepr, R2tRepr, ScsiCommandRepr, ScsiResponseRepr, BHS_LEN,
};
use tandem_scsi::{
    Command, DataOutFit, IoOutcome, IoPlan, LuIo, PrCommit, Reply, ReplyData, ScsiStatus, Sense,
    Step, WriteSource,
};

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

/// The largest transfer a command to `dev` may announce: the LU's advertised maximum
/// (VPD B0), else the block layer's.
fn max_transfer(dev: Option<&Arc<Device>>) -> u64 {
    dev.and_then(|d| d.lu.max_transfer_bytes())
        .unwrap_or(tandem_bdev::MAX_IO_BYTES)
        .min(tandem_bdev::MAX_IO_BYTES)
}

/// The device behind `lun` of the session's target, borrowed from the session field alone
/// so the caller may change the task table meanwhile: no reference-count traffic (two
/// atomic read-modify-writes) per command on the write path.
fn session_device(session: &Option<super::Session>, lun: u64) -> Option<&Arc<Device>> {
    session.as_ref()?.target.as_ref()?.lun(decode_lun(lun))
}

impl ConnCore {
    fn target_device(&self, lun: u64) -> Option<Arc<Device>> {
        let s = self.session.as_ref()?;
        s.target.as_ref()?.lun(decode_lun(lun)).cloned()
    }

    pub(super) fn on_scsi_command(
        &mut self,
        ctx: &mut impl ConnEnv,
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
        if !self.tasks.has_room(cmd.immediate) {
            // Within the window but no room (e.g. many answers still being sent): answer
            // TASK SET FULL so the initiator retries, never drop the command.
            tracing::debug!(conn = self.id, itt = cmd.itt, "task table full");
            self.send_status_without_task(cmd.itt, ScsiStatus::TaskSetFull);
            return;
        }
        let (immediate_ok, first_burst, initial_r2t) = match self.session.as_ref() {
            Some(s) => (
                s.params.immediate_data,
                s.params.first_burst_length,
                s.params.initial_r2t,
            ),
            None => return,
        };
        let mut early: Option<Reply> = None;
        let mut stage = Stage::Ready(Ready { data_out: None });
        let mut needs_buf_now = false;
        if cmd.write {
            if !data.is_empty() && !immediate_ok {
                self.send_reject(reject::PROTOCOL_ERROR, bhs);
                return;
            }
            if data.len() as u64 > cmd.edtl as u64 || data.len() as u64 > first_burst as u64 {
                self.send_reject(reject::PROTOCOL_ERROR, bhs);
                return;
            }
            let unsolicited_end = if initial_r2t {
                data.len() as u32
            } else {
                cmd.edtl.min(first_burst)
            };
            let dev = self.target_device(cmd.lun);
            // Bidirectional commands are not supported; writes beyond the maximum transfer
            // are refused before any buffer is granted or any data moves.
            if cmd.read || cmd.edtl as u64 > max_transfer(dev.as_ref()) {
                early = Some(Reply::check(&Sense::invalid_field_cdb_unpointed()));
            }
            needs_buf_now = unsolicited_end > 0;
            stage = Stage::Collecting(Collecting {
                buf: None,
                received: 0,
                unsolicited_end,
                unsolicited_datasn: 0,
                next_r2t_offset: unsolicited_end,
                r2tsn: 0,
                r2ts: R2tSet::default(),
            });
        }
        let task = Task {
            itt: cmd.itt,
            lun: cmd.lun,
            cdb: cmd.cdb,
            edtl: cmd.edtl,
            read: cmd.read,
            write: cmd.write,
            started: ctx.now(),
            residual: Residual::None,
            mem: Reservation::default(),
            stage,
        };
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
            self.send_reply(ctx, slot, reply, None);
            return;
        }
        if !cmd.write {
            self.ready.push_back(slot);
            return;
        }
        if needs_buf_now {
            // Unsolicited data is on its way: its buffer cannot wait for memory.
            if !self.grant_write(ctx, slot) {
                tracing::debug!(
                    conn = self.id,
                    itt = cmd.itt,
                    "memory budget spent; TASK SET FULL"
                );
                self.send_reply(ctx, slot, status_only(ScsiStatus::TaskSetFull), None);
                return;
            }
            if let Some(Stage::Collecting(c)) = self.tasks.get_mut(slot).map(|t| &mut t.stage) {
                if let Some(buf) = c.buf.as_mut() {
                    buf[..data.len()].copy_from_slice(data);
                    c.received = data.len() as u32;
                }
            }
        }
        if data.len() as u32 >= cmd.edtl {
            self.data_complete(slot);
        } else {
            self.issue_r2ts(ctx, slot);
        }
    }

    /// Grants a write its Data-Out buffer from the memory budget; false = not now.
    fn grant_write(&mut self, ctx: &mut impl ConnEnv, slot: usize) -> bool {
        let Some(t) = self.tasks.get(slot) else {
            return false;
        };
        let Stage::Collecting(c) = &t.stage else {
            return false;
        };
        if c.buf.is_some() {
            return true;
        }
        let len = t.edtl as u64;
        if !ctx.budget().try_take(self.mem_held, len) {
            self.held_epoch = ctx.budget().epoch();
            return false;
        }
        let buf = ctx.alloc_buf(session_device(&self.session, t.lun), len as usize);
        self.mem_held += len;
        let t = self.tasks.get_mut(slot).expect("checked above");
        t.mem.write += len;
        if let Stage::Collecting(c) = &mut t.stage {
            c.buf = Some(buf);
        }
        true
    }

    fn hold(&mut self, slot: usize) {
        if !self.held.contains(&slot) {
            self.held.push_back(slot);
        }
    }

    /// Sends R2Ts for the part of the write not covered by unsolicited data, keeping at
    /// most MaxOutstandingR2T outstanding, each at most MaxBurstLength long. Nothing is
    /// asked for until the buffer it lands in is granted (held otherwise).
    fn issue_r2ts(&mut self, ctx: &mut impl ConnEnv, slot: usize) {
        let Some(s) = self.session.as_ref() else {
            return;
        };
        let max_outstanding = s.params.max_outstanding_r2t.max(1) as usize;
        let max_burst = s.params.max_burst_length.max(512);
        let needs_grant = matches!(
            self.tasks.get(slot).map(|t| &t.stage),
            Some(Stage::Collecting(Collecting { buf: None, .. }))
        );
        if needs_grant {
            // First come, first served: a newer command does not overtake held ones.
            if !self.held.is_empty() || !self.grant_write(ctx, slot) {
                self.hold(slot);
                return;
            }
        }
        let exp_cmdsn = self.exp_cmdsn();
        let max_cmdsn = self.max_cmdsn();
        loop {
            let statsn = self.statsn;
            let ttt = self.next_ttt;
            let Some(t) = self.tasks.get_mut(slot) else {
                return;
            };
            let (lun, itt, edtl) = (t.lun, t.itt, t.edtl);
            let Stage::Collecting(c) = &mut t.stage else {
                return;
            };
            if c.r2ts.len() >= max_outstanding || c.r2ts.is_full() || c.next_r2t_offset >= edtl {
                return;
            }
            let offset = c.next_r2t_offset;
            let len = (edtl - offset).min(max_burst);
            let r2tsn = c.r2tsn;
            c.r2tsn = c.r2tsn.wrapping_add(1);
            c.next_r2t_offset = offset + len;
            c.r2ts.push(R2tWindow {
                ttt,
                offset,
                len,
                received: 0,
                next_datasn: 0,
            });
            let _ = self.new_ttt();
            let repr = R2tRepr {
                lun,
                itt,
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

    pub(super) fn on_data_out(&mut self, ctx: &mut impl ConnEnv, bhs: &[u8; BHS_LEN], data: &[u8]) {
        let Some(accepted) = self.accept_data_out(ctx, bhs, data.len()) else {
            return;
        };
        if let Some(buf) = self.data_out_buf(accepted.slot) {
            let start = accepted.buffer_offset;
            buf[start..start + data.len()].copy_from_slice(data);
        }
        self.data_out_landed(ctx, accepted, data.len());
    }

    /// Checks a Data-Out header against its task (ITT, TTT, offsets, DataSN) and does the
    /// R2T bookkeeping. Returns where its `len` data bytes go, or None if they are to be
    /// dropped (the PDU was answered with a Reject or the command has failed).
    pub(super) fn accept_data_out(
        &mut self,
        ctx: &mut impl ConnEnv,
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
        let edtl = t.edtl;
        let Stage::Collecting(c) = &mut t.stage else {
            self.send_reject(reject::PROTOCOL_ERROR, bhs);
            return None;
        };
        let end = d.buffer_offset as u64 + len as u64;
        if end > edtl as u64 || c.buf.is_none() {
            tracing::warn!(
                conn = self.id,
                itt = d.itt,
                "Data-Out beyond the expected length or not asked for; rejected"
            );
            self.send_reject(reject::PROTOCOL_ERROR, bhs);
            return None;
        }
        let mut burst_done = false;
        let datasn_ok;
        if d.ttt == u32::MAX {
            if end > c.unsolicited_end as u64 {
                self.send_reject(reject::PROTOCOL_ERROR, bhs);
                return None;
            }
            datasn_ok = d.datasn == c.unsolicited_datasn;
            c.unsolicited_datasn = c.unsolicited_datasn.wrapping_add(1);
        } else {
            let Some(w) = c.r2ts.find_mut(d.ttt) else {
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
                c.r2ts.remove(ttt);
            }
        }
        if !datasn_ok {
            // ErrorRecoveryLevel 0 cannot ask for the missing PDU again: the command fails
            // (later Data-Out for it is rejected) rather than write data out of order.
            tracing::warn!(
                conn = self.id,
                itt = d.itt,
                datasn = d.datasn,
                "Data-Out with wrong DataSN; command aborted"
            );
            self.send_reply(ctx, slot, Reply::check(&Sense::data_phase_error()), None);
            return None;
        }
        Some(AcceptedData {
            slot,
            buffer_offset: d.buffer_offset as usize,
            burst_done,
        })
    }

    /// The data of an accepted Data-Out is in the task's buffer: count it, and run the
    /// command or ask for the next burst.
    pub(super) fn data_out_landed(
        &mut self,
        ctx: &mut impl ConnEnv,
        accepted: AcceptedData,
        len: usize,
    ) {
        let slot = accepted.slot;
        let Some(t) = self.tasks.get_mut(slot) else {
            return;
        };
        let edtl = t.edtl;
        let Stage::Collecting(c) = &mut t.stage else {
            return;
        };
        c.received = c.received.saturating_add(len as u32);
        if c.received >= edtl && c.r2ts.is_empty() {
            self.data_complete(slot);
        } else if accepted.burst_done {
            self.issue_r2ts(ctx, slot);
        }
    }

    /// Collecting → Ready: every byte is here. The LU says once, now, how much of the
    /// Data-Out the command uses (the residual), so a deferred re-run keeps it.
    fn data_complete(&mut self, slot: usize) {
        let Some(t) = self.tasks.get_mut(slot) else {
            return;
        };
        let dev = session_device(&self.session, t.lun);
        let data_out = match std::mem::replace(&mut t.stage, Stage::Moving) {
            Stage::Collecting(c) => c.buf,
            other => {
                t.stage = other;
                return;
            }
        };
        t.stage = Stage::Ready(Ready { data_out });
        if let Some(dev) = dev {
            // The LU decides how much of the Data-Out the command uses; we report the
            // difference as the residual (RFC 7143 §11.4.5.2).
            let residual = match dev.lu.data_out_fit(&t.cdb, t.edtl) {
                DataOutFit::Exact => Residual::None,
                DataOutFit::Short(r) => Residual::Overflow(r),
                DataOutFit::Long(r) => Residual::Underflow(r),
            };
            t.residual = residual;
            // Data beyond what the command uses is dropped now, so the write can take the
            // buffer as it is instead of copying the part it needs.
            if let (Residual::Underflow(r), Stage::Ready(Ready { data_out: Some(b) })) =
                (residual, &mut t.stage)
            {
                let keep = b.len().saturating_sub(r as usize);
                b.set_len(keep);
            }
        }
        self.ready.push_back(slot);
    }

    /// The Data-Out buffer of a task, for receiving straight from the socket.
    pub(super) fn data_out_buf(&mut self, slot: usize) -> Option<&mut [u8]> {
        match &mut self.tasks.get_mut(slot)?.stage {
            Stage::Collecting(c) => c.buf.as_deref_mut(),
            _ => None,
        }
    }

    pub(super) fn run_ready(&mut self, ctx: &mut impl ConnEnv) -> usize {
        let mut n = 0;
        if self.phase == Phase::Closing {
            return 0;
        }
        if !self.held.is_empty() && ctx.budget().epoch() != self.held_epoch {
            n += self.retry_held(ctx);
        }
        if !self.parked.is_empty() {
            n += self.unpark_released(ctx);
        }
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

    /// Moves the parked tasks whose logical unit released something since they were
    /// deferred back to the ready queue; the others stay parked, registered for the next
    /// release (which wakes this reactor from whichever thread releases). No timer: a
    /// reactor with only parked work sleeps. Returns the tasks moved.
    fn unpark_released(&mut self, ctx: &mut impl ConnEnv) -> usize {
        let mut moved = 0;
        let (tasks, ready) = (&mut self.tasks, &mut self.ready);
        // `retain` keeps the list's capacity: no allocation per check.
        self.parked.retain(|&slot| {
            let Some(t) = tasks.get_mut(slot) else {
                return false;
            };
            // Anything else is a stale entry (the task was freed, its slot maybe reused).
            let Stage::Deferred(p) = &t.stage else {
                return false;
            };
            if ctx.watch_release(&p.dev, p.seen) {
                return true;
            }
            if let Stage::Deferred(p) = std::mem::replace(&mut t.stage, Stage::Moving) {
                t.stage = Stage::Ready(p.ready);
                ready.push_back(slot);
                moved += 1;
            }
            false
        });
        moved
    }

    /// Gives waiting tasks the memory they wait for, oldest first; stops at the first that
    /// still cannot have it.
    fn retry_held(&mut self, ctx: &mut impl ConnEnv) -> usize {
        let mut n = 0;
        while let Some(&slot) = self.held.front() {
            let granted = match self.tasks.get(slot).map(|t| &t.stage) {
                Some(Stage::Collecting(Collecting { buf: None, .. })) => {
                    let ok = self.grant_write(ctx, slot);
                    if ok {
                        self.held.pop_front();
                        self.issue_r2ts(ctx, slot);
                    }
                    ok
                }
                Some(Stage::HeldForMemory(p)) => {
                    let need = planned_read_len(&p.io, self.block_size_of(slot));
                    let ok = self.reserve_read(ctx, slot, need);
                    if ok {
                        self.held.pop_front();
                        self.resume_planned(ctx, slot);
                    }
                    ok
                }
                // Gone or moved on (aborted): forget it.
                _ => {
                    self.held.pop_front();
                    true
                }
            };
            if !granted {
                break;
            }
            n += 1;
        }
        n
    }

    fn block_size_of(&self, slot: usize) -> u64 {
        self.tasks
            .get(slot)
            .and_then(|t| self.target_device(t.lun))
            .map(|d| d.lu.block_size() as u64)
            .unwrap_or(512)
    }

    /// Takes budget for `need` bytes of read data (beyond what the task holds already).
    fn reserve_read(&mut self, ctx: &mut impl ConnEnv, slot: usize, need: u64) -> bool {
        let Some(t) = self.tasks.get(slot) else {
            return false;
        };
        let more = need.saturating_sub(t.mem.read);
        if more == 0 {
            return true;
        }
        if !ctx.budget().try_take(self.mem_held, more) {
            self.held_epoch = ctx.budget().epoch();
            return false;
        }
        self.mem_held += more;
        if let Some(t) = self.tasks.get_mut(slot) {
            t.mem.read += more;
        }
        true
    }

    fn resume_planned(&mut self, ctx: &mut impl ConnEnv, slot: usize) {
        let Some(dev) = self.tasks.get(slot).and_then(|t| self.target_device(t.lun)) else {
            return;
        };
        let Some(t) = self.tasks.get_mut(slot) else {
            return;
        };
        match std::mem::replace(&mut t.stage, Stage::Moving) {
            Stage::HeldForMemory(p) => self.submit_io(ctx, slot, &dev, p.io, p.cont, p.data_out),
            other => t.stage = other,
        }
    }

    fn execute(&mut self, ctx: &mut impl ConnEnv, slot: usize) {
        let Some(t) = self.tasks.get(slot) else {
            return;
        };
        if !matches!(t.stage, Stage::Ready(_)) {
            return;
        }
        let cdb = t.cdb;
        let edtl = t.edtl;
        let lun = t.lun;
        let Some(target) = self.session.as_ref().and_then(|s| s.target.clone()) else {
            return;
        };
        if cdb[0] == tandem_scsi::cdb::op::REPORT_LUNS {
            let reply = tandem_scsi::report_luns(&target.lun_ids(), &cdb);
            self.send_reply(ctx, slot, reply, None);
            return;
        }
        let Some(dev) = target.lun(decode_lun(lun)).cloned() else {
            let reply = tandem_scsi::lun_not_present(&cdb);
            self.send_reply(ctx, slot, reply, None);
            return;
        };
        // Disjoint field borrows: no reference-count traffic per command.
        let Some(session) = self.session.as_ref() else {
            return;
        };
        let t = self.tasks.get_mut(slot).expect("checked above");
        let data_out = match std::mem::replace(&mut t.stage, Stage::Moving) {
            Stage::Ready(r) => r.data_out,
            _ => None,
        };
        // Read before the LU looks for conflicts, so a release in between is not missed.
        let seen = dev.lu.releases().generation();
        let step = dev.lu.execute(&Command {
            cdb: &t.cdb,
            data_out: data_out.as_deref().unwrap_or(&[]),
            expected_in_len: edtl,
            nexus: &session.nexus,
        });
        self.handle_step(ctx, slot, &dev, (step, seen), data_out, None);
    }

    fn handle_step(
        &mut self,
        ctx: &mut impl ConnEnv,
        slot: usize,
        dev: &Arc<Device>,
        (step, seen): (Step, u64),
        data_out: Option<AlignedBuf>,
        io_buf: Option<AlignedBuf>,
    ) {
        match step {
            Step::Done(reply) => {
                if reply.status != ScsiStatus::Good {
                    dev.stats.count_error();
                }
                if let Some(started) = self.tasks.get(slot).map(|t| t.started) {
                    let us = ctx.now().saturating_duration_since(started).as_micros() as u64;
                    dev.stats.record_latency_us(us);
                }
                if let Some(b) = data_out {
                    ctx.free_buf(Some(dev), b);
                }
                let keep = matches!(reply.data, ReplyData::IoBuffer { .. });
                let io_buf = match io_buf {
                    Some(b) if !keep => {
                        ctx.free_buf(Some(dev), b);
                        None
                    }
                    other => other,
                };
                self.send_reply(ctx, slot, reply, io_buf)
            }
            Step::Defer => {
                if let Some(b) = io_buf {
                    ctx.free_buf(Some(dev), b);
                }
                // Parked until the LU releases something (checked, and registered for a
                // wake-up, by the next `run_ready`).
                if let Some(t) = self.tasks.get_mut(slot) {
                    t.stage = Stage::Deferred(Parked {
                        ready: Ready { data_out },
                        dev: Arc::clone(dev),
                        seen,
                    });
                    self.parked.push(slot);
                } else if let Some(b) = data_out {
                    ctx.free_buf(Some(dev), b);
                }
            }
            Step::Io(IoPlan { io, cont }) => {
                if let Some(b) = io_buf {
                    ctx.free_buf(Some(dev), b);
                }
                self.submit_io(ctx, slot, dev, io, cont, data_out)
            }
            Step::Persist(commit) => {
                if let Some(b) = io_buf {
                    ctx.free_buf(Some(dev), b);
                }
                self.submit_persist(ctx, slot, dev, commit, data_out)
            }
        }
    }

    /// Ready → InIo for a reservation change: it waits for the persister thread like an
    /// I/O for its device, and its completion comes back through `on_io_complete`, which
    /// resumes the LU; the LU answers only once the change is durable.
    fn submit_persist(
        &mut self,
        ctx: &mut impl ConnEnv,
        slot: usize,
        dev: &Arc<Device>,
        commit: PrCommit,
        data_out: Option<AlignedBuf>,
    ) {
        let (queued, cont) = ctx.persist(make_tag(self.id, slot), commit);
        if !queued {
            let Some(nexus) = self.session.as_ref().map(|s| s.nexus.clone()) else {
                if let Some(b) = data_out {
                    ctx.free_buf(Some(dev), b);
                }
                return;
            };
            let seen = dev.lu.releases().generation();
            let step = dev.lu.resume(
                &nexus,
                cont,
                IoOutcome::Failed,
                data_out.as_deref().unwrap_or(&[]),
            );
            return self.handle_step(ctx, slot, dev, (step, seen), data_out, None);
        }
        let Some(t) = self.tasks.get_mut(slot) else {
            if let Some(b) = data_out {
                ctx.free_buf(Some(dev), b);
            }
            return;
        };
        t.stage = Stage::InIo(InIo {
            cont: Some(cont),
            pending: 1,
            failure: None,
            data_out: data_out.map_or(OutBuf::None, OutBuf::Here),
            io_buf: None,
            reading: false,
        });
        dev.stats
            .in_flight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn submit_io(
        &mut self,
        ctx: &mut impl ConnEnv,
        slot: usize,
        dev: &Arc<Device>,
        io: LuIo,
        cont: tandem_scsi::Continuation,
        mut data_out: Option<AlignedBuf>,
    ) {
        let bs = dev.lu.block_size() as u64;
        if let LuIo::Read { .. } = io {
            let need = planned_read_len(&io, bs);
            let covered = self.tasks.get(slot).is_some_and(|t| t.mem.read >= need);
            // First come, first served: a newer read does not overtake held ones.
            if !covered && (!self.held.is_empty() || !self.reserve_read(ctx, slot, need)) {
                // Its reply could not be buffered: wait for memory before reading at all.
                if let Some(t) = self.tasks.get_mut(slot) {
                    t.stage = Stage::HeldForMemory(Planned { io, cont, data_out });
                    self.hold(slot);
                }
                return;
            }
        }
        let tag = make_tag(self.id, slot);
        // Reused scratch list (keeps its capacity): no allocation per I/O.
        let mut ops = std::mem::take(&mut self.op_scratch);
        ops.clear();
        let mut out_buf = OutBuf::None;
        let reading = matches!(io, LuIo::Read { .. });
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
                        let whole = data_out
                            .as_ref()
                            .map(|b| offset == 0 && src_len == b.len() && src_len == len)
                            .unwrap_or(false);
                        if whole {
                            out_buf = OutBuf::WithDevice;
                            data_out.take().expect("checked above")
                        } else {
                            let mut b = ctx.alloc_buf(Some(dev), len);
                            let src = data_out
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
            LuIo::CompareAndWrite { lba, blocks, fua } => {
                let len = (blocks as u64 * bs) as usize;
                dev.stats.count_write(len as u64);
                // The Data-Out buffer is exactly compare ‖ write data (the LU checked): it
                // goes to the device as it is and comes back in the completion.
                let buf = match data_out.take() {
                    Some(b) if b.len() == 2 * len => {
                        out_buf = OutBuf::WithDevice;
                        b
                    }
                    other => {
                        let mut b = ctx.alloc_buf(Some(dev), 2 * len);
                        let src = other.as_deref().unwrap_or(&[]);
                        let n = src.len().min(2 * len);
                        b[..n].copy_from_slice(&src[..n]);
                        b[n..].fill(0);
                        data_out = other;
                        b
                    }
                };
                ops.push(BdevOp::CompareAndWrite {
                    offset: lba * bs,
                    buf,
                    fua,
                });
            }
            LuIo::Flush => ops.push(BdevOp::Flush),
            LuIo::ReservationChange {
                base,
                state,
                notice,
            } => ops.push(BdevOp::ReservationChange {
                base: tandem_bdev::PrVersionId {
                    epoch: base.0,
                    n: base.1,
                },
                state,
                notice,
            }),
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
        if let OutBuf::None = out_buf {
            if let Some(b) = data_out {
                out_buf = OutBuf::Here(b);
            }
        }
        let Some(t) = self.tasks.get_mut(slot) else {
            return;
        };
        t.stage = Stage::InIo(InIo {
            cont: Some(cont),
            pending: 0,
            failure: None,
            data_out: out_buf,
            io_buf: None,
            reading,
        });
        dev.stats
            .in_flight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut submitted = 0u32;
        let mut refused = false;
        for op in ops.drain(..) {
            if !refused && ctx.submit(dev, tag, op) {
                submitted += 1;
            } else {
                refused = true;
            }
        }
        self.op_scratch = ops;
        if let Some(Stage::InIo(io)) = self.tasks.get_mut(slot).map(|t| &mut t.stage) {
            io.pending = submitted;
            if refused {
                io.failure = Some(IoFailure::Other);
                if matches!(io.data_out, OutBuf::WithDevice) && submitted == 0 {
                    // The buffer went down with the refused operation.
                    io.data_out = OutBuf::None;
                }
            }
        }
        if refused && submitted == 0 {
            // Nothing reached the device: no completion will come; answer now.
            dev.stats
                .in_flight
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            self.respond_failed_submit(ctx, slot);
        }
    }

    fn respond_failed_submit(&mut self, ctx: &mut impl ConnEnv, slot: usize) {
        // LOGICAL UNIT COMMUNICATION FAILURE is not quite it; INTERNAL TARGET FAILURE is.
        self.send_reply(
            ctx,
            slot,
            Reply::check(&Sense::internal_target_failure()),
            None,
        );
    }

    pub(super) fn on_io_complete(&mut self, ctx: &mut impl ConnEnv, slot: usize, c: Completion) {
        if slot >= super::tmf::TMF_SLOT_BASE {
            return self.tmf_device_done(slot, c);
        }
        let dev = self.tasks.get(slot).and_then(|t| self.target_device(t.lun));
        let Some(t) = self.tasks.get_mut(slot) else {
            if let Some(b) = c.buf {
                ctx.free_buf(dev.as_ref(), b);
            }
            return;
        };
        let aborted = matches!(t.stage, Stage::Aborted(_));
        let (Stage::InIo(io) | Stage::Aborted(io)) = &mut t.stage else {
            // A completion for no I/O of this task: ignore it (its buffer is freed).
            if let Some(b) = c.buf {
                ctx.free_buf(dev.as_ref(), b);
            }
            return;
        };
        io.pending = io.pending.saturating_sub(1);
        if let Err(e) = &c.result {
            let failure = match e {
                tandem_bdev::BdevError::Io(_) => IoFailure::Medium,
                tandem_bdev::BdevError::NotReady => IoFailure::NotReady,
                tandem_bdev::BdevError::Miscompare { offset } => IoFailure::Miscompare(*offset),
                _ => IoFailure::Other,
            };
            if let IoFailure::Miscompare(offset) = failure {
                tracing::debug!(device = ?dev.as_ref().map(|d| &d.name), offset, "compare and write: miscompare");
            } else if failure == IoFailure::NotReady {
                tracing::debug!(device = ?dev.as_ref().map(|d| &d.name), "replica not serving: NOT READY");
            } else {
                tracing::warn!(device = ?dev.as_ref().map(|d| &d.name), error = %e, "block device I/O failed");
            }
            // A replica that does not serve now: multipath retries on another node. Once any
            // part of a command is NOT READY the whole command is (never MEDIUM ERROR).
            if io.failure != Some(IoFailure::NotReady) {
                io.failure = Some(failure);
            }
        }
        if let Some(buf) = c.buf {
            if matches!(io.data_out, OutBuf::WithDevice) {
                io.data_out = OutBuf::Here(buf);
            } else if io.reading && io.io_buf.is_none() {
                io.io_buf = Some(buf);
            } else {
                ctx.free_buf(dev.as_ref(), buf);
            }
        }
        if io.pending > 0 {
            return;
        }
        if let Some(d) = &dev {
            d.stats
                .in_flight
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        if aborted {
            self.finish_aborted(ctx, slot);
            return;
        }
        let Some(dev) = dev else {
            return;
        };
        let Some(nexus) = self.session.as_ref().map(|s| s.nexus.clone()) else {
            return;
        };
        let t = self.tasks.get_mut(slot).expect("checked above");
        let Stage::InIo(io) = std::mem::replace(&mut t.stage, Stage::Moving) else {
            return;
        };
        let Some(cont) = io.cont else {
            return;
        };
        let data_out = match io.data_out {
            OutBuf::Here(b) => Some(b),
            _ => None,
        };
        let io_buf = io.io_buf;
        let outcome = match io.failure {
            None => IoOutcome::Ok {
                read_data: io_buf.as_deref(),
            },
            Some(IoFailure::Medium) => IoOutcome::MediumError,
            Some(IoFailure::NotReady) => IoOutcome::NotReady,
            Some(IoFailure::Miscompare(offset)) => IoOutcome::Miscompare { offset },
            Some(IoFailure::Other) => IoOutcome::Failed,
        };
        let seen = dev.lu.releases().generation();
        let step = dev
            .lu
            .resume(&nexus, cont, outcome, data_out.as_deref().unwrap_or(&[]));
        self.handle_step(ctx, slot, &dev, (step, seen), data_out, io_buf);
    }

    /// Gives back budget the task no longer needs.
    pub(super) fn release(&mut self, ctx: &mut impl ConnEnv, slot: usize, write: bool, read: bool) {
        let Some(t) = self.tasks.get_mut(slot) else {
            return;
        };
        let mut n = 0;
        if write {
            n += std::mem::take(&mut t.mem.write);
        }
        if read {
            n += std::mem::take(&mut t.mem.read);
        }
        if n > 0 {
            self.mem_held -= n;
            ctx.budget().give(n);
        }
    }

    /// Queues Data-In and/or SCSI Response for a finished task: any stage → Responding.
    pub(super) fn send_reply(
        &mut self,
        ctx: &mut impl ConnEnv,
        slot: usize,
        reply: Reply,
        io_buf: Option<AlignedBuf>,
    ) {
        let exp_cmdsn = self.exp_cmdsn();
        let max_cmdsn = self.max_cmdsn();
        let Some(params) = self.session.as_ref().map(|s| s.params.clone()) else {
            return;
        };
        let Some(t) = self.tasks.get_mut(slot) else {
            return;
        };
        if matches!(t.stage, Stage::Aborted(_)) {
            return;
        }
        let keep_read = io_buf.is_some();
        let previous = std::mem::replace(&mut t.stage, Stage::Responding(Responding { io_buf }));
        let itt = t.itt;
        let lun = t.lun;
        let edtl = t.edtl as usize;
        let read = t.read;
        let write = t.write;
        let write_residual = t.residual;
        if stage_holds_buffers(&previous) {
            // Usually not: on the I/O path the buffers were handed on before the answer.
            let dev = self.target_device(lun);
            free_stage_buffers(ctx, dev.as_ref(), previous);
        }
        self.release(ctx, slot, true, !keep_read);
        let t = self.tasks.get(slot).expect("checked above");
        let (data_len, owned): (usize, Option<Vec<u8>>) = match reply.data {
            ReplyData::None => (0, None),
            ReplyData::Bytes(v) => (v.len(), Some(v)),
            ReplyData::IoBuffer { len } => (len.min(task_io_len(t)), None),
        };
        // RFC 7143 §11.4.5.2: data the command produced beyond what the initiator expects
        // (EDTL, or nothing at all without the R bit) is an overflow residual.
        let transferable = if read { edtl } else { 0 };
        let send_len = data_len.min(transferable);
        let (under, over, residual) = if data_len > transferable {
            (false, true, (data_len - transferable) as u32)
        } else if read && data_len < edtl {
            (true, false, (edtl - data_len) as u32)
        } else if write {
            match write_residual {
                Residual::None => (false, false, 0),
                Residual::Overflow(r) => (false, true, r),
                Residual::Underflow(r) => (true, false, r),
            }
        } else if !read && edtl > 0 {
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
                    let bytes = match &t.stage {
                        Stage::Responding(r) => r.io_buf.as_deref().unwrap_or(&[]),
                        _ => &[],
                    };
                    let bytes = bytes.get(offset..offset + len).unwrap_or(&[]);
                    self.tx
                        .push_task_data(bhs, slot, offset..offset + len, bytes, release);
                }
            }
            datasn += 1;
            offset += len;
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

    /// Removes a task and everything it holds (buffers, budget). The caller makes sure no
    /// I/O of it is still with the device (see `Stage::Aborted`).
    pub(super) fn free_task(&mut self, ctx: &mut impl ConnEnv, slot: usize) {
        let dev = self.tasks.get(slot).and_then(|t| self.target_device(t.lun));
        self.release(ctx, slot, true, true);
        if let Some(task) = self.tasks.remove(slot) {
            free_stage_buffers(ctx, dev.as_ref(), task.stage);
        }
    }

    fn finish_aborted(&mut self, ctx: &mut impl ConnEnv, slot: usize) {
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

/// Bytes a planned read brings into memory.
fn planned_read_len(io: &LuIo, block_size: u64) -> u64 {
    match io {
        LuIo::Read { blocks, .. } => *blocks as u64 * block_size,
        _ => 0,
    }
}

fn task_io_len(t: &Task) -> usize {
    match &t.stage {
        Stage::Responding(r) => r.io_buf.as_ref().map(|b| b.len()).unwrap_or(0),
        _ => 0,
    }
}

fn stage_holds_buffers(stage: &Stage) -> bool {
    match stage {
        Stage::Collecting(c) => c.buf.is_some(),
        Stage::Ready(r) | Stage::Deferred(Parked { ready: r, .. }) => r.data_out.is_some(),
        Stage::HeldForMemory(p) => p.data_out.is_some(),
        Stage::InIo(io) | Stage::Aborted(io) => {
            matches!(io.data_out, OutBuf::Here(_)) || io.io_buf.is_some()
        }
        Stage::Responding(r) => r.io_buf.is_some(),
        Stage::Moving => false,
    }
}

/// Returns the buffers a stage holds to the pool.
fn free_stage_buffers(ctx: &mut impl ConnEnv, dev: Option<&Arc<Device>>, stage: Stage) {
    let mut free = |b: Option<AlignedBuf>| {
        if let Some(b) = b {
            ctx.free_buf(dev, b);
        }
    };
    match stage {
        Stage::Collecting(c) => free(c.buf),
        Stage::Ready(r) | Stage::Deferred(Parked { ready: r, .. }) => free(r.data_out),
        Stage::HeldForMemory(p) => free(p.data_out),
        Stage::InIo(io) | Stage::Aborted(io) => {
            if let OutBuf::Here(b) = io.data_out {
                free(Some(b));
            }
            free(io.io_buf);
        }
        Stage::Responding(r) => free(r.io_buf),
        Stage::Moving => {}
    }
}

fn status_only(status: ScsiStatus) -> Reply {
    Reply {
        status,
        data: ReplyData::None,
        sense: None,
    }
}

/// Where an accepted Data-Out's payload goes.
#[derive(Debug, Clone, Copy)]
pub(super) struct AcceptedData {
    pub slot: usize,
    pub buffer_offset: usize,
    pub burst_done: bool,
}
