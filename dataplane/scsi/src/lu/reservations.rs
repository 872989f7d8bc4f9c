//! Reservation checks (SPC-4 5.12 / SPC-2 RESERVE) and PERSISTENT RESERVE OUT.

use crate::cdb::ScsiCommand;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::pr::{Access, PortId, PrError, PrState};
use crate::rw::{
    CommitSignal, CommitState, ContKind, COMMIT_DURABLE, COMMIT_FAILED, COMMIT_PENDING,
};
use crate::sense::Sense;
use crate::{Continuation, IoOutcome, Nexus, PrCommit, Reply, Step};

use super::{check, done, param_list, LogicalUnit, PendingPr, State};
use crate::{IoPlan, LuIo};

/// The CDB fields of a PERSISTENT RESERVE OUT (kept to compute it again).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PrOutArgs {
    pub service_action: u8,
    pub scope: u8,
    pub pr_type: u8,
    pub param_len: u32,
}

/// Largest encoded state a change may carry across nodes (the replication engine's bound,
/// `tandem_ha::PR_BLOB_MAX`; this crate does not depend on it).
pub const CLUSTER_PR_BLOB_MAX: usize = 16 * 1024;

/// Unit attentions of a change, as they travel to the other nodes: count `u16`, then per
/// entry initiator name (length `u16`, bytes), ISID (6), relative port `u16`, ASC, ASCQ
/// (the sense key is always UNIT ATTENTION).
pub(crate) fn encode_notice(uas: &[(PortId, Sense)]) -> Vec<u8> {
    let mut b = Vec::new();
    let n = u16::try_from(uas.len()).unwrap_or(u16::MAX);
    b.extend_from_slice(&n.to_le_bytes());
    for (id, s) in uas.iter().take(usize::from(n)) {
        let name = id.initiator.as_bytes();
        let len = u16::try_from(name.len()).unwrap_or(u16::MAX);
        b.extend_from_slice(&len.to_le_bytes());
        b.extend_from_slice(&name[..usize::from(len)]);
        b.extend_from_slice(&id.isid);
        b.extend_from_slice(&id.rel_port.to_le_bytes());
        b.push(s.asc);
        b.push(s.ascq);
    }
    b
}

/// The inverse of [`encode_notice`]; `None` for anything malformed (it came off the wire).
pub(crate) fn decode_notice(b: &[u8]) -> Option<Vec<(PortId, Sense)>> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if b.len() < n {
            return None;
        }
        let (h, t) = b.split_at(n);
        *b = t;
        Some(h)
    }
    let mut b = b;
    let n = u16::from_le_bytes(take(&mut b, 2)?.try_into().ok()?);
    let mut out = Vec::new();
    for _ in 0..n {
        let len = u16::from_le_bytes(take(&mut b, 2)?.try_into().ok()?);
        let initiator = String::from_utf8(take(&mut b, usize::from(len))?.to_vec()).ok()?;
        let isid: [u8; 6] = take(&mut b, 6)?.try_into().ok()?;
        let rel_port = u16::from_le_bytes(take(&mut b, 2)?.try_into().ok()?);
        let sense = take(&mut b, 2)?;
        out.push((
            PortId {
                initiator,
                isid,
                rel_port,
            },
            Sense::new(crate::sense::SenseKey::UnitAttention, sense[0], sense[1]),
        ));
    }
    b.is_empty().then_some(out)
}

/// Settles the pending commit if its outcome is known: durable, its state
/// becomes the LU's; failed, it is dropped. Returns the pending commit's
/// outcome (`None`: there was none).
pub(super) fn settle_pr(st: &mut State) -> Option<u8> {
    let outcome = st.pr_pending.as_ref()?.state.load(Ordering::Acquire);
    if outcome != COMMIT_PENDING {
        if let Some(p) = st.pr_pending.take() {
            if outcome == COMMIT_DURABLE {
                st.pr_durable = Some(p.blob);
                apply_pr(st, p.next, p.uas);
            }
        }
    }
    Some(outcome)
}

/// Makes `next` the LU's reservation state and queues its unit attentions
/// for the nexuses that exist now.
fn apply_pr(st: &mut State, next: PrState, uas: Vec<(PortId, Sense)>) {
    st.pr = next;
    for (id, ua) in &uas {
        st.ua_for_port(id, *ua);
    }
}

impl LogicalUnit {
    pub(super) fn access_class(cmd: &ScsiCommand) -> Access {
        use ScsiCommand as C;
        match cmd {
            C::Read(_)
            | C::Verify { .. }
            | C::ModeSense(_)
            | C::GetLbaStatus { .. }
            | C::ReadDefectData { .. }
            | C::PreFetch { .. } => Access::Read,
            C::Write(_)
            | C::WriteAndVerify { .. }
            | C::WriteSame { .. }
            | C::Unmap { .. }
            | C::SynchronizeCache { .. }
            | C::CompareAndWrite { .. }
            | C::OrWrite(_)
            | C::WriteAtomic { .. }
            | C::ModeSelect { .. }
            | C::StartStopUnit { .. } => Access::Write,
            _ => Access::Always,
        }
    }

    pub(super) fn reservation_conflict(
        &self,
        st: &State,
        nexus: &Nexus,
        cmd: &ScsiCommand,
    ) -> bool {
        use ScsiCommand as C;
        // RESERVE/RELEASE do their own checks.
        if matches!(cmd, C::Reserve | C::Release) {
            return false;
        }
        // Hot path: no reservation of either kind, nothing to check.
        if st.spc2_holder.is_none() && st.pr.res.is_none() {
            return false;
        }
        if let Some(holder) = st.spc2_holder {
            if holder != nexus.id {
                let allowed = matches!(
                    cmd,
                    C::Inquiry { .. }
                        | C::ReportLuns { .. }
                        | C::RequestSense { .. }
                        | C::ReportTargetPortGroups { .. }
                        | C::ReportSupportedOpcodes { .. }
                        | C::PersistentReserveIn { .. }
                );
                if !allowed {
                    return true;
                }
            }
        }
        // No persistent reservation: nothing can conflict, and the hot path builds no
        // port identity (which would allocate for every command).
        if !st.pr.is_reserved() {
            return false;
        }
        st.pr.conflicts(&PortId::of(nexus), Self::access_class(cmd))
    }

    /// PERSISTENT RESERVE OUT: computes the new state from the durable one
    /// without touching it; if the store's content must change, hands the
    /// new state to the transport as a [`Step::Persist`] and applies it in
    /// `resume` once durable. Nothing here blocks.
    pub(super) fn pr_out(
        &self,
        st: &mut State,
        nexus: &Nexus,
        data_out: &[u8],
        args: PrOutArgs,
    ) -> Step {
        let PrOutArgs {
            service_action,
            scope,
            pr_type,
            param_len,
        } = args;
        if st.spc2_holder.is_some_and(|h| h != nexus.id) {
            return done(Reply::conflict());
        }
        let param = match param_list(data_out, param_len) {
            Ok(p) => p,
            Err(s) => return check(s),
        };
        // Another PR OUT is being committed: its outcome decides the state
        // this one must start from.
        if settle_pr(st) == Some(COMMIT_PENDING) {
            return Step::Defer;
        }
        let me = PortId::of(nexus);
        let mut next = st.pr.clone();
        let fx = match next.out(
            &me,
            service_action,
            scope,
            pr_type,
            param,
            self.pr_store.is_some(),
        ) {
            Ok(fx) => fx,
            Err(PrError::Conflict) => return done(Reply::conflict()),
            Err(PrError::Check(s)) => return check(s),
        };
        if self.cluster_reservations() && fx.changed {
            // Ordered by the device against changes through every node; applied here (and
            // saved, with APTPL) by `apply_cluster_pr` before the I/O completes.
            let state = next.encode_full();
            if state.len() > CLUSTER_PR_BLOB_MAX {
                return check(Sense::insufficient_registration_resources());
            }
            return Step::Io(IoPlan {
                io: LuIo::ReservationChange {
                    base: st.pr_version,
                    state,
                    notice: encode_notice(&fx.uas),
                },
                cont: Continuation {
                    kind: ContKind::PrCluster { args },
                    guard: None,
                    io_lba: None,
                    abort_gen: 0,
                },
            });
        }
        let store = match &self.pr_store {
            Some(store) if fx.changed => store,
            // Nothing to make durable: apply now.
            _ => {
                apply_pr(st, next, fx.uas);
                return done(Reply::good());
            }
        };
        let blob = next.encode();
        if st.pr_durable.as_deref() == Some(blob.as_slice()) {
            // The store already holds exactly this (e.g. no APTPL before or
            // after): the change is as durable as it needs to be.
            apply_pr(st, next, fx.uas);
            return done(Reply::good());
        }
        let state: CommitState = Arc::default();
        st.pr_pending = Some(PendingPr {
            next,
            uas: fx.uas,
            blob: blob.clone(),
            state: Arc::clone(&state),
        });
        Step::Persist(PrCommit {
            blob,
            store: Arc::clone(store),
            signal: CommitSignal {
                state: Arc::clone(&state),
                releases: Arc::clone(&self.releases),
            },
            cont: Continuation {
                kind: ContKind::PrCommit { state },
                guard: None,
                io_lba: None,
                abort_gen: 0,
            },
        })
    }

    /// Whether reservation changes go to the device to be ordered across nodes.
    pub fn cluster_reservations(&self) -> bool {
        self.cluster_pr.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The device serving this LU carries reservation changes across nodes
    /// (`tandem_bdev::Bdev::cluster_reservations`): PR OUT becomes a
    /// [`LuIo::ReservationChange`], and the state comes back through
    /// [`LogicalUnit::apply_cluster_pr`] on every node.
    pub fn set_cluster_reservations(&self, on: bool) {
        self.cluster_pr
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// The reservation state as this LU holds it, encoded (what it loaded at start).
    pub fn pr_state_blob(&self) -> Vec<u8> {
        self.state.lock().pr.encode_full()
    }

    /// Makes `state` (of version `version`) this LU's reservation state and raises
    /// `notice`'s unit attentions on this node's nexuses; with a store, saves it first
    /// (blocks for that: the replication thread calls this before acknowledging the
    /// change). Malformed input (from a partner) is logged and changes nothing.
    pub fn apply_cluster_pr(&self, version: (u64, u64), state: &[u8], notice: &[u8]) {
        // An empty state is a device that was never given one (nothing registered).
        let next = if state.is_empty() {
            Some(PrState::default())
        } else {
            PrState::decode_full(state)
        };
        let uas = if notice.is_empty() {
            Some(Vec::new())
        } else {
            decode_notice(notice)
        };
        let (Some(next), Some(uas)) = (next, uas) else {
            tracing::error!("reservation state from a partner is malformed; not applied");
            return;
        };
        if let Some(store) = &self.pr_store {
            // The store keeps the APTPL image (nothing but a header without APTPL).
            let image = next.encode();
            let known = self.state.lock().pr_durable.as_deref() == Some(image.as_slice());
            if !known {
                if let Err(e) = store.save(&image) {
                    tracing::error!(error = %e, "reservation state not saved");
                } else {
                    self.state.lock().pr_durable = Some(image);
                }
            }
        }
        let mut st = self.state.lock();
        st.pr_version = version;
        apply_pr(&mut st, next, uas);
        drop(st);
        self.releases.released();
    }

    /// Ends a [`LuIo::ReservationChange`]: GOOD once applied everywhere (the state is in
    /// place already); computed again if another change came first.
    pub(super) fn finish_pr_cluster(
        &self,
        nexus: &Nexus,
        args: PrOutArgs,
        outcome: IoOutcome,
        data_out: &[u8],
    ) -> Step {
        match outcome {
            IoOutcome::Ok { .. } => done(Reply::good()),
            IoOutcome::Miscompare { .. } => {
                let mut st = self.state.lock();
                self.pr_out(&mut st, nexus, data_out, args)
            }
            IoOutcome::NotReady => check(Sense::alua_unavailable()),
            _ => check(Sense::internal_target_failure()),
        }
    }

    /// Ends a [`Step::Persist`]: answers GOOD if the commit is durable (its
    /// state then applied), else keeps the old state and fails the command.
    pub(super) fn finish_pr_commit(&self, kind: ContKind, outcome: &IoOutcome) -> Step {
        let ContKind::PrCommit { state } = kind else {
            return check(Sense::internal_target_failure());
        };
        // The outcome the transport reports is the signal's, unless the
        // signal already said it.
        let reported = if matches!(outcome, IoOutcome::Ok { .. }) {
            COMMIT_DURABLE
        } else {
            COMMIT_FAILED
        };
        let _ = state.compare_exchange(
            COMMIT_PENDING,
            reported,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        {
            let mut st = self.state.lock();
            if st
                .pr_pending
                .as_ref()
                .is_some_and(|p| Arc::ptr_eq(&p.state, &state))
            {
                settle_pr(&mut st);
            }
        }
        // (The lock is released: logging may block.)
        match state.load(Ordering::Acquire) {
            COMMIT_DURABLE => done(Reply::good()),
            _ => {
                // HARDWARE ERROR / INTERNAL TARGET FAILURE: the target's own
                // reservation store failed, not the medium the command
                // addresses (so not MEDIUM ERROR, which names an LBA) and not
                // a transient condition (BUSY would be retried forever). The
                // state is unchanged, so the initiator may safely retry or
                // report it; Linux passes it up instead of retrying blindly.
                tracing::error!("persistent reservation change not durable; state unchanged");
                check(Sense::internal_target_failure())
            }
        }
    }
    /// SPC-2 RESERVE(6)/(10), with the SPC-4 5.12.3 exceptions (CRH=1)
    /// when a persistent reservation exists.
    pub(super) fn spc2_reserve(&self, st: &mut State, nexus: &Nexus) -> Step {
        let me = PortId::of(nexus);
        if st.pr.res.is_some() {
            // A persistent reservation holder's RESERVE is a no-op.
            return done(if st.pr.is_holder(&me) {
                Reply::good()
            } else {
                Reply::conflict()
            });
        }
        match st.spc2_holder {
            Some(h) if h != nexus.id => done(Reply::conflict()),
            _ => {
                st.spc2_holder = Some(nexus.id);
                done(Reply::good())
            }
        }
    }

    /// SPC-2 RELEASE(6)/(10).
    pub(super) fn spc2_release(&self, st: &mut State, nexus: &Nexus) -> Step {
        let me = PortId::of(nexus);
        if st.pr.res.is_some() {
            return done(if st.pr.key_of(&me).is_some() {
                Reply::good()
            } else {
                Reply::conflict()
            });
        }
        // Releasing a reservation held by someone else is a no-op.
        if st.spc2_holder == Some(nexus.id) {
            st.spc2_holder = None;
        }
        done(Reply::good())
    }
}
