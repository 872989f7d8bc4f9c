//! Reservation checks (SPC-4 5.12 / SPC-2 RESERVE) and PERSISTENT RESERVE OUT.

use crate::cdb::ScsiCommand;
use crate::pr::{Access, PortId, PrError};
use crate::sense::Sense;
use crate::{Command, Nexus, Reply, Step};

use super::{check, done, param_list, LogicalUnit, State};

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

    pub(super) fn pr_out(
        &self,
        st: &mut State,
        cmd: &Command,
        service_action: u8,
        scope: u8,
        pr_type: u8,
        param_len: u32,
    ) -> Step {
        if st.spc2_holder.is_some_and(|h| h != cmd.nexus.id) {
            return done(Reply::conflict());
        }
        let param = match param_list(cmd.data_out, param_len) {
            Ok(p) => p,
            Err(s) => return check(s),
        };
        let me = PortId::of(cmd.nexus);
        let can_persist = self.pr_store.is_some();
        let fx = match st
            .pr
            .out(&me, service_action, scope, pr_type, param, can_persist)
        {
            Ok(fx) => fx,
            Err(PrError::Conflict) => return done(Reply::conflict()),
            Err(PrError::Check(s)) => return check(s),
        };
        for (id, ua) in &fx.uas {
            st.ua_for_port(id, *ua);
        }
        if fx.changed {
            if let Some(store) = &self.pr_store {
                if let Err(e) = store.save(&st.pr.encode()) {
                    tracing::error!(error = %e, "cannot persist reservation state");
                    return check(Sense::internal_target_failure());
                }
            }
        }
        done(Reply::good())
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
