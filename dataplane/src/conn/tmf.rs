//! Task management functions (RFC 7143 §11.5, SAM-5 semantics for in-flight commands).
//!
//! A task whose I/O is with the device cannot be recalled; it is marked aborted, its result
//! is dropped when it completes, and the TMF response waits until every such task is gone,
//! so the initiator never sees a response for an aborted task after the TMF response.

use super::env::ConnEnv;
use super::task::Stage;
use super::{sn_le, ConnCore};
use crate::reactor_ctx::make_tag;
use tandem_bdev::{BdevOp, TaskMgmt};
use tandem_iscsi::wire::tmf_response::{
    FUNCTION_COMPLETE, FUNCTION_NOT_SUPPORTED, LUN_DOES_NOT_EXIST,
    TASK_ALLEGIANCE_REASSIGNMENT_NOT_SUPPORTED as REASSIGN_NOT_SUPPORTED, TASK_DOES_NOT_EXIST,
};
use tandem_iscsi::wire::{
    reject, Bhs, TaskMgmtRequestRepr, TaskMgmtResponseRepr, TmfFunction, BHS_LEN,
};

pub(super) struct PendingTmf {
    itt: u32,
    response: u8,
    waiting: Vec<usize>,
    /// The device's own part (a replicated device carrying the function to its partner
    /// nodes), by its completion slot; the response waits for it too.
    device: Option<usize>,
}

/// Completion slots of the devices' parts of task management functions: above every task
/// slot, so `on_io_complete` tells them apart. The low bits count per connection.
pub(super) const TMF_SLOT_BASE: usize = 0x8000_0000;
const TMF_SLOT_MASK: usize = 0x7fff_ffff;

/// FUNCTION REJECTED (RFC 7143 11.6.1): the function could not be carried to every node.
const FUNCTION_REJECTED: u8 = 255;

impl ConnCore {
    pub(super) fn on_tmf(&mut self, ctx: &mut impl ConnEnv, bhs: &[u8; BHS_LEN]) {
        let req = match TaskMgmtRequestRepr::parse(&Bhs::new_unchecked(&bhs[..])) {
            Ok(r) => r,
            Err(_) => {
                self.send_reject(reject::INVALID_PDU_FIELD, bhs);
                return;
            }
        };
        if self.session.as_ref().map(|s| s.discovery).unwrap_or(true) {
            self.send_reject(reject::PROTOCOL_ERROR, bhs);
            return;
        }
        if !self.accept_cmdsn(req.cmdsn, req.immediate) {
            return;
        }
        let lun_no = super::scsi::decode_lun(req.lun);
        let target = self.session.as_ref().and_then(|s| s.target.clone());
        let nexus = self.session.as_ref().map(|s| s.nexus.clone());
        let mut device_op: Option<(std::sync::Arc<crate::target::Device>, TaskMgmt)> = None;
        let (response, waiting) = match req.function {
            TmfFunction::AbortTask => match self.tasks.slot_of(req.rtt) {
                Some(slot)
                    if self
                        .tasks
                        .get(slot)
                        .map(|t| t.lun == req.lun)
                        .unwrap_or(false) =>
                {
                    (FUNCTION_COMPLETE, self.abort_slots(ctx, vec![slot]))
                }
                _ => {
                    // RFC 7143 §11.5.1: a task not received yet (RefCmdSN still inside the
                    // window ExpCmdSN..MaxCmdSN, and before the TMF) counts as received and
                    // aborted. One already answered (RefCmdSN below ExpCmdSN) does not exist.
                    let exp = self.exp_cmdsn();
                    if sn_le(exp, req.refcmdsn)
                        && sn_le(req.refcmdsn, req.cmdsn)
                        && req.refcmdsn != req.cmdsn
                    {
                        (FUNCTION_COMPLETE, Vec::new())
                    } else {
                        (TASK_DOES_NOT_EXIST, Vec::new())
                    }
                }
            },
            // ABORT TASK SET aborts this I_T nexus's tasks only: local to this connection.
            TmfFunction::AbortTaskSet => {
                let slots = self.slots_for_lun(Some(req.lun));
                (FUNCTION_COMPLETE, self.abort_slots(ctx, slots))
            }
            // CLEAR TASK SET aborts the tasks of every I_T nexus, on every node of a
            // replicated device.
            TmfFunction::ClearTaskSet => {
                let slots = self.slots_for_lun(Some(req.lun));
                let waiting = self.abort_slots(ctx, slots);
                if let (Some(dev), Some(n)) =
                    (target.as_ref().and_then(|t| t.lun(lun_no).cloned()), &nexus)
                {
                    dev.lu.clear_task_set(n);
                    device_op = Some((dev, TaskMgmt::ClearTaskSet));
                }
                (FUNCTION_COMPLETE, waiting)
            }
            TmfFunction::LogicalUnitReset => {
                match target.as_ref().and_then(|t| t.lun(lun_no).cloned()) {
                    Some(dev) => {
                        let slots = self.slots_for_lun(Some(req.lun));
                        let waiting = self.abort_slots(ctx, slots);
                        if let Some(n) = &nexus {
                            dev.lu.lun_reset(n);
                        }
                        device_op = Some((dev, TaskMgmt::LunReset));
                        (FUNCTION_COMPLETE, waiting)
                    }
                    None => (LUN_DOES_NOT_EXIST, Vec::new()),
                }
            }
            TmfFunction::TargetWarmReset | TmfFunction::TargetColdReset => {
                let slots = self.slots_for_lun(None);
                let waiting = self.abort_slots(ctx, slots);
                if let (Some(t), Some(n)) = (&target, &nexus) {
                    let cold = matches!(req.function, TmfFunction::TargetColdReset);
                    for dev in &t.luns {
                        dev.lu.target_reset(n, cold);
                    }
                }
                (FUNCTION_COMPLETE, waiting)
            }
            TmfFunction::TaskReassign => (REASSIGN_NOT_SUPPORTED, Vec::new()),
            _ => (FUNCTION_NOT_SUPPORTED, Vec::new()),
        };
        tracing::info!(conn = self.id, function = ?req.function, rtt = req.rtt, response, "task management");
        let cold =
            matches!(req.function, TmfFunction::TargetColdReset) && response == FUNCTION_COMPLETE;
        // A replicated device carries the function to its partner nodes; the response waits
        // until they applied it (docs/ha.md, "Task management across nodes").
        let device = device_op
            .filter(|(dev, _)| dev.bdev.cluster_task_management())
            .and_then(|(dev, function)| {
                let slot = TMF_SLOT_BASE | (self.next_tmf_slot & TMF_SLOT_MASK);
                self.next_tmf_slot = self.next_tmf_slot.wrapping_add(1);
                let op = BdevOp::TaskManagement { function };
                ctx.submit(&dev, make_tag(self.id, slot), op)
                    .then_some(slot)
            });
        if waiting.is_empty() && device.is_none() {
            self.send_tmf_response(req.itt, response);
        } else {
            self.pending_tmf.push(PendingTmf {
                itt: req.itt,
                response,
                waiting,
                device,
            });
        }
        if cold {
            // A cold reset drops every connection of the target; ours goes after the response.
            self.phase = super::Phase::Closing;
        }
    }

    fn slots_for_lun(&self, lun: Option<u64>) -> Vec<usize> {
        self.tasks
            .slots()
            .filter(|&s| {
                self.tasks
                    .get(s)
                    .map(|t| lun.is_none_or(|l| t.lun == l))
                    .unwrap_or(false)
            })
            .collect()
    }

    /// Aborts the given tasks; returns those whose I/O is still with the device. Aborting
    /// is a transition: a task that has not reached the device is freed at once; one in I/O
    /// becomes `Aborted` and is freed by its last completion; one already answered
    /// (`Responding`) is not aborted: its response is on the way.
    fn abort_slots(&mut self, ctx: &mut impl ConnEnv, slots: Vec<usize>) -> Vec<usize> {
        let mut waiting = Vec::new();
        for slot in slots {
            let Some(t) = self.tasks.get_mut(slot) else {
                continue;
            };
            tracing::debug!(
                conn = self.id,
                itt = t.itt,
                stage = t.stage.name(),
                "aborting task"
            );
            match std::mem::replace(&mut t.stage, Stage::Moving) {
                Stage::InIo(io) | Stage::Aborted(io) => {
                    t.stage = Stage::Aborted(io);
                    waiting.push(slot);
                }
                Stage::Responding(r) => t.stage = Stage::Responding(r),
                other => {
                    t.stage = other;
                    self.ready.retain(|&s| s != slot);
                    self.parked.retain(|&s| s != slot);
                    self.held.retain(|&s| s != slot);
                    self.free_task(ctx, slot);
                }
            }
        }
        waiting
    }

    /// The device's part of a task management function completed (`slot` at or above
    /// [`TMF_SLOT_BASE`]). Failed (this node stopped serving before every partner applied
    /// it): FUNCTION REJECTED, so the initiator retries it, through another node.
    pub(super) fn tmf_device_done(&mut self, slot: usize, c: tandem_bdev::Completion) {
        let failed = c.result.is_err();
        if let Err(e) = &c.result {
            tracing::warn!(conn = self.id, error = %e, "task management not carried to every node");
        }
        for p in self.pending_tmf.iter_mut() {
            if p.device == Some(slot) {
                p.device = None;
                if failed {
                    p.response = FUNCTION_REJECTED;
                }
            }
        }
        self.send_finished_tmfs();
    }

    /// Called when an aborted task's I/O has finished and the task is gone.
    pub(super) fn tmf_task_gone(&mut self, slot: usize) {
        for p in self.pending_tmf.iter_mut() {
            p.waiting.retain(|&s| s != slot);
        }
        self.send_finished_tmfs();
    }

    fn send_finished_tmfs(&mut self) {
        let finished = |p: &PendingTmf| p.waiting.is_empty() && p.device.is_none();
        let done: Vec<(u32, u8)> = self
            .pending_tmf
            .iter()
            .filter(|p| finished(p))
            .map(|p| (p.itt, p.response))
            .collect();
        self.pending_tmf.retain(|p| !finished(p));
        for (itt, response) in done {
            self.send_tmf_response(itt, response);
        }
    }

    fn send_tmf_response(&mut self, itt: u32, response: u8) {
        let repr = TaskMgmtResponseRepr {
            response,
            itt,
            statsn: self.next_statsn(),
            expcmdsn: self.exp_cmdsn(),
            maxcmdsn: self.max_cmdsn(),
        };
        let mut bhs = [0u8; BHS_LEN];
        repr.emit(&mut bhs);
        self.tx.push_owned(bhs, Vec::new(), None);
    }
}
