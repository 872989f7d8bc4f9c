//! The logical unit: command dispatch, unit attentions, reservations and
//! the I/O state machine (`execute` -> `Step::Io` -> `resume` -> ...).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::cdb::{self, ScsiCommand};
use crate::inquiry::{self, VpdContext};
use crate::mode::{self, ModeContext};
use crate::pr::{PortId, PrState};
use crate::release::Releases;
use crate::rw::{ContKind, Inflight};
use crate::sense::Sense;
use crate::ua::UaTable;
use crate::{
    alua, luns, rsoc, AluaState, CacheMode, Command, DataOutFit, LuConfig, LuIdentity, LuIo, Nexus,
    PortGroup, PrStore, Reply, Step,
};

/// Mutable LU state, behind one mutex.
struct State {
    num_blocks: u64,
    cache: CacheMode,
    /// Current WCE (follows `cache`; MODE SELECT may change the reported value).
    wce: bool,
    /// Software write protect (control mode page SWP).
    swp: bool,
    alua: AluaState,
    groups: Option<Vec<PortGroup>>,
    /// For a replicated device: this node's (target port group, relative target port id),
    /// unique across the cluster, reported instead of the transport's single-node values so
    /// a host sees one port group per node (`set_cluster_port`).
    cluster_port: Option<(u16, u16)>,
    ua: UaTable,
    /// PR identity of every nexus we know, for addressing PR unit attentions.
    nexuses: HashMap<u64, PortId>,
    /// Initiator ports whose I_T nexus was lost (newest last, bounded): when
    /// the same port logs in again it is the same I_T nexus in SAM terms and
    /// sees I_T NEXUS LOSS OCCURRED rather than a power-on.
    lost: VecDeque<PortId>,
    /// SPC-2 RESERVE holder (nexus id).
    spc2_holder: Option<u64>,
    /// Persistent reservation state as durable: a PR OUT changes it only
    /// once its commit is (see `Step::Persist`).
    pr: PrState,
    /// The blob last known to be in the store, so a change that leaves it
    /// the same (no APTPL before or after) needs no commit.
    pr_durable: Option<Vec<u8>>,
    /// The PR OUT change being committed, at most one: applied once its
    /// commit is durable, dropped if it failed (see `settle_pr`).
    pr_pending: Option<PendingPr>,
    /// On a device that carries reservations across nodes: the version of `pr` (the base
    /// of this node's next change; see `reservations::apply_cluster_pr`).
    pr_version: (u64, u64),
}

/// A persistent-reservation change waiting for its commit.
struct PendingPr {
    next: PrState,
    uas: Vec<(PortId, Sense)>,
    blob: Vec<u8>,
    state: crate::rw::CommitState,
}

impl State {
    /// The nexus with this node's cluster-wide port ids, for the commands that report them.
    fn nexus_as_seen(&self, n: &Nexus) -> Nexus {
        let mut n = n.clone();
        if let Some((tpg_id, relative_port_id)) = self.cluster_port {
            n.port.tpg_id = tpg_id;
            n.port.relative_port_id = relative_port_id;
        }
        n
    }

    fn see(&mut self, n: &Nexus) {
        if !self.ua.is_tracked(n.id) {
            self.ua.track(n.id);
        }
        self.nexuses.entry(n.id).or_insert_with(|| PortId::of(n));
    }

    /// Queues `ua` for every nexus whose PR identity is `id`.
    fn ua_for_port(&mut self, id: &PortId, ua: Sense) {
        let targets: Vec<u64> = self
            .nexuses
            .iter()
            .filter(|(_, p)| *p == id)
            .map(|(n, _)| *n)
            .collect();
        for n in targets {
            self.ua.push(n, ua);
        }
    }
}

/// Bound on remembered lost initiator ports (older ones then simply see a
/// power-on UA when they return).
const LOST_PORTS_MAX: usize = 64;

/// One SCSI logical unit. `Send + Sync`: share it through an `Arc`.
pub struct LogicalUnit {
    identity: LuIdentity,
    block_size: u32,
    read_only: bool,
    unmap_supported: bool,
    max_transfer_blocks: u32,
    default_wce: bool,
    state: Mutex<State>,
    inflight: Inflight,
    /// Signalled by every release of a range in `inflight` or of a pending PR commit.
    releases: Arc<Releases>,
    pr_store: Option<Arc<dyn PrStore>>,
    /// The device runs COMPARE AND WRITE atomically itself (`LuIo::CompareAndWrite`).
    device_caw: std::sync::atomic::AtomicBool,
    /// The device orders reservation changes across nodes (`LuIo::ReservationChange`).
    cluster_pr: std::sync::atomic::AtomicBool,
    /// Counts LOGICAL UNIT RESETs, CLEAR TASK SETs and target resets: a command whose I/O
    /// started under an older value was aborted by one (see `resume`).
    abort_gen: std::sync::atomic::AtomicU64,
}

pub(super) fn done(r: Reply) -> Step {
    Step::Done(r)
}

pub(super) fn check(s: Sense) -> Step {
    Step::Done(Reply::check(&s))
}

impl LogicalUnit {
    /// Creates an LU; restores APTPL reservation state from `pr_store`.
    /// (Loading happens once, here, at device creation: not on an I/O path.)
    pub fn new(cfg: LuConfig, pr_store: Option<Box<dyn PrStore>>) -> LogicalUnit {
        let pr_store: Option<Arc<dyn PrStore>> = pr_store.map(Arc::from);
        let mut pr_durable = None;
        let pr = match pr_store.as_ref().map(|s| s.load()) {
            Some(Ok(Some(blob))) => match PrState::decode(&blob) {
                Some(pr) => {
                    pr_durable = Some(blob);
                    pr
                }
                None => {
                    tracing::warn!("ignoring malformed persistent reservation state");
                    PrState::default()
                }
            },
            Some(Err(e)) => {
                tracing::warn!(error = %e, "cannot load persistent reservation state");
                PrState::default()
            }
            _ => PrState::default(),
        };
        let wce = cfg.cache == CacheMode::WriteBack;
        let inflight: Inflight = Arc::default();
        let releases = Arc::clone(inflight.lock().releases());
        LogicalUnit {
            identity: cfg.identity,
            // Only 512 and 4096 are valid; anything else would break every
            // byte computation, so fall back to 512.
            block_size: if cfg.block_size == 4096 { 4096 } else { 512 },
            read_only: cfg.read_only,
            unmap_supported: cfg.unmap_supported,
            max_transfer_blocks: cfg.max_transfer_blocks,
            default_wce: wce,
            device_caw: std::sync::atomic::AtomicBool::new(false),
            cluster_pr: std::sync::atomic::AtomicBool::new(false),
            abort_gen: std::sync::atomic::AtomicU64::new(0),
            state: Mutex::new(State {
                num_blocks: cfg.num_blocks,
                cache: cfg.cache,
                wce,
                swp: false,
                alua: AluaState::ActiveOptimized,
                groups: None,
                cluster_port: None,
                ua: UaTable::default(),
                nexuses: HashMap::new(),
                lost: VecDeque::new(),
                spc2_holder: None,
                pr,
                pr_durable,
                pr_pending: None,
                pr_version: (0, 0),
            }),
            inflight,
            releases,
            pr_store,
        }
    }

    /// The release signal: a transport that parks a deferred command ([`Step::Defer`])
    /// reads its generation before executing and waits for the next release (see
    /// [`Releases`]).
    pub fn releases(&self) -> &Releases {
        &self.releases
    }

    /// Logical block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Largest transfer of one command in bytes, as advertised in VPD B0 (None: no limit
    /// advertised). The transport enforces this before any data moves.
    pub fn max_transfer_bytes(&self) -> Option<u64> {
        (self.max_transfer_blocks > 0)
            .then(|| u64::from(self.max_transfer_blocks) * u64::from(self.block_size))
    }

    /// Current capacity in logical blocks.
    pub fn num_blocks(&self) -> u64 {
        self.state.lock().num_blocks
    }

    fn bytes(&self, blocks: u64) -> Option<usize> {
        usize::try_from(blocks.checked_mul(u64::from(self.block_size))?).ok()
    }

    /// How much of `sent` bytes of Data-Out the command in `cdb` uses: WRITE
    /// and WRITE AND VERIFY take whole blocks up to their transfer length
    /// (see `write`); every other command's parameter data has its own
    /// length rules and no residual. The transport reports the difference
    /// as the command's residual; it never reads or rewrites the CDB itself.
    pub fn data_out_fit(&self, cdb: &[u8], sent: u32) -> DataOutFit {
        let wanted = match cdb::decode(cdb) {
            Ok(ScsiCommand::Write(rw) | ScsiCommand::WriteAndVerify { rw, .. }) => {
                u64::from(rw.blocks.0) * u64::from(self.block_size)
            }
            _ => return DataOutFit::Exact,
        };
        let sent = u64::from(sent);
        let diff = |d: u64| u32::try_from(d).unwrap_or(u32::MAX);
        match wanted.cmp(&sent) {
            std::cmp::Ordering::Equal => DataOutFit::Exact,
            std::cmp::Ordering::Greater => DataOutFit::Short(diff(wanted - sent)),
            std::cmp::Ordering::Less => DataOutFit::Long(diff(sent - wanted)),
        }
    }

    // ---- management hooks ---------------------------------------------------

    /// New I_T nexus. Unit attentions belong to the nexuses that existed when
    /// their event happened (SAM-5 5.14), so a new nexus inherits none of the
    /// pending ones: it sees only POWER ON, RESET, OR BUS DEVICE RESET
    /// OCCURRED, or I_T NEXUS LOSS OCCURRED if its initiator port lost its
    /// previous nexus (session reinstatement is the same I_T nexus).
    pub fn nexus_added(&self, nexus: &Nexus) {
        let mut st = self.state.lock();
        st.ua.forget(nexus.id);
        st.see(nexus);
        let id = PortId::of(nexus);
        let ua = match st.lost.iter().position(|p| *p == id) {
            Some(i) => {
                st.lost.remove(i);
                Sense::nexus_loss_occurred()
            }
            None => Sense::power_on_reset(),
        };
        st.ua.push(nexus.id, ua);
    }

    /// I_T nexus loss: drop its UAs and SPC-2 reservation; PR registrations
    /// stay. No other nexus is told (SPC-4 5.12 / SAM-5 6.3.4); the port
    /// itself is, if it comes back.
    pub fn nexus_removed(&self, nexus_id: u64) {
        let mut st = self.state.lock();
        st.ua.forget(nexus_id);
        if let Some(id) = st.nexuses.remove(&nexus_id) {
            // Another live nexus of the same port (a reinstatement that
            // overtook the old session's teardown) already had its own UA.
            if !st.nexuses.values().any(|p| *p == id) && !st.lost.contains(&id) {
                if st.lost.len() >= LOST_PORTS_MAX {
                    st.lost.pop_front();
                }
                st.lost.push_back(id);
            }
        }
        if st.spc2_holder == Some(nexus_id) {
            st.spc2_holder = None;
        }
    }

    /// LOGICAL UNIT RESET received on `from`: clears the SPC-2 reservation
    /// (PRs stay) and sets BUS DEVICE RESET FUNCTION OCCURRED for every I_T
    /// nexus that exists now, the one that asked included (SAM-5 6.3.3;
    /// libiscsi's MultipathIO.Reset checks every path, the resetting one
    /// too). Nexuses created later do not inherit it.
    pub fn lun_reset(&self, from: &Nexus) {
        self.reset(from, Sense::lun_reset_occurred());
    }

    /// TARGET WARM RESET (`cold == false`) or TARGET COLD RESET received on
    /// `from`, applied to this LU: a warm reset is a hard reset, reported
    /// like a LOGICAL UNIT RESET (BUS DEVICE RESET FUNCTION is its SCSI-2
    /// name); a cold reset is a power cycle and reports POWER ON OCCURRED
    /// to every nexus that survives it.
    pub fn target_reset(&self, from: &Nexus, cold: bool) {
        let ua = if cold {
            Sense::power_on_occurred()
        } else {
            Sense::lun_reset_occurred()
        };
        self.reset(from, ua);
    }

    fn reset(&self, from: &Nexus, ua: Sense) {
        let mut st = self.state.lock();
        st.see(from);
        self.reset_state(&mut st, ua);
    }

    /// What a reset does to the LU, wherever it came from: every task in the task set is
    /// aborted (commands of other nexuses still in I/O end TASK ABORTED, TAS=1), the SPC-2
    /// reservation is released, every nexus that exists now gets `ua`.
    fn reset_state(&self, st: &mut State, ua: Sense) {
        self.abort_all_tasks();
        st.spc2_holder = None;
        st.ua.push_all(ua, None);
    }

    fn abort_all_tasks(&self) {
        self.abort_gen
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    pub(crate) fn abort_gen(&self) -> u64 {
        self.abort_gen.load(std::sync::atomic::Ordering::Acquire)
    }

    /// CLEAR TASK SET received on `from`: every task of the LU is aborted, those of other
    /// nexuses still in I/O end TASK ABORTED (TAS=1, so no unit attention).
    pub fn clear_task_set(&self, from: &Nexus) {
        self.state.lock().see(from);
        self.abort_all_tasks();
    }

    /// A partner node of a replicated device received a LOGICAL UNIT RESET: it applies here
    /// as if received here, on every I_T nexus of this node (none of them asked).
    pub fn partner_lun_reset(&self) {
        let mut st = self.state.lock();
        self.reset_state(&mut st, Sense::lun_reset_occurred());
    }

    /// A partner node of a replicated device received a CLEAR TASK SET.
    pub fn partner_clear_task_set(&self) {
        self.abort_all_tasks();
    }

    /// The device grew or shrank: every nexus sees CAPACITY DATA HAS CHANGED.
    pub fn resize(&self, new_num_blocks: u64) {
        let mut st = self.state.lock();
        if st.num_blocks != new_num_blocks {
            st.num_blocks = new_num_blocks;
            st.ua.push_all(Sense::capacity_changed(), None);
        }
    }

    /// New ALUA state of this LU's port group; every nexus sees
    /// ASYMMETRIC ACCESS STATE CHANGED.
    pub fn set_alua_state(&self, state: AluaState) {
        let mut st = self.state.lock();
        if st.alua != state {
            st.alua = state;
            st.ua
                .push_all(Sense::asymmetric_access_state_changed(), None);
        }
    }

    /// A replicated device: this node's target port group and relative target port id, as
    /// reported in VPD 0x83 and REPORT TARGET PORT GROUPS on every nexus.
    pub fn set_cluster_port(&self, tpg_id: u16, relative_port_id: u16) {
        self.state.lock().cluster_port = Some((tpg_id, relative_port_id));
    }

    /// All port groups of the device (this node's and its partners') for
    /// REPORT TARGET PORT GROUPS. A change of any group's state is an ALUA UA.
    pub fn set_port_groups(&self, groups: Vec<PortGroup>) {
        let mut st = self.state.lock();
        let states = |g: &Option<Vec<PortGroup>>| {
            g.as_ref()
                .map(|v| v.iter().map(|x| (x.tpg_id, x.state)).collect::<Vec<_>>())
        };
        let changed = states(&st.groups) != states(&Some(groups.clone()));
        st.groups = Some(groups);
        if changed {
            st.ua
                .push_all(Sense::asymmetric_access_state_changed(), None);
        }
    }

    /// The device's cache policy changed; the caching page's WCE follows it
    /// (and overrides an earlier MODE SELECT).
    pub fn set_cache_mode(&self, mode: CacheMode) {
        let mut st = self.state.lock();
        st.cache = mode;
        let wce = mode == CacheMode::WriteBack;
        if st.wce != wce {
            st.wce = wce;
            st.ua.push_all(Sense::mode_parameters_changed(), None);
        }
    }

    // ---- command entry points -----------------------------------------------

    /// Starts a command. Checks run in SPC order: unit attention, CDB
    /// decoding, ALUA access state, reservation conflict, then the command.
    pub fn execute(&self, cmd: &Command) -> Step {
        // Read before the command does anything: a reset that comes later aborts it.
        let abort_gen = self.abort_gen();
        let mut step = self.execute_unchecked(cmd);
        if let Step::Io(plan) = &mut step {
            plan.cont.abort_gen = abort_gen;
        }
        step
    }

    fn execute_unchecked(&self, cmd: &Command) -> Step {
        let mut st = self.state.lock();
        st.see(cmd.nexus);
        if st.pr_pending.is_some() {
            // A commit whose command went away still takes effect once durable.
            reservations::settle_pr(&mut st);
        }
        let opcode = cmd.cdb.first().copied();
        // UAs are reported to every command but INQUIRY, REPORT LUNS and
        // REQUEST SENSE (which returns it as its data).
        let ua_exempt = matches!(
            opcode,
            Some(cdb::op::INQUIRY | cdb::op::REPORT_LUNS | cdb::op::REQUEST_SENSE)
        );
        if !ua_exempt {
            if let Some(ua) = st.ua.pop(cmd.nexus.id) {
                return check(ua);
            }
        }
        let decoded = match cdb::decode(cmd.cdb) {
            Ok(c) => c,
            Err(s) => return check(s),
        };
        if let Err(s) = alua::check(st.alua, &decoded) {
            return check(s);
        }
        if self.reservation_conflict(&st, cmd.nexus, &decoded) {
            return done(Reply::conflict());
        }
        self.dispatch(&mut st, cmd, decoded)
    }

    // ---- dispatch -----------------------------------------------------------

    fn dispatch(&self, st: &mut State, cmd: &Command, c: ScsiCommand) -> Step {
        use ScsiCommand as C;
        let nexus = cmd.nexus;
        match c {
            C::TestUnitReady | C::StartStopUnit { .. } => done(Reply::good()),
            // PRE-FETCH is a hint; the bdev cache decides what to keep.
            C::PreFetch { lba, blocks, .. } => {
                match check_range(st.num_blocks, lba, blocks.0.into()) {
                    Ok(()) => done(Reply::good()),
                    Err(s) => check(s),
                }
            }
            C::RequestSense { desc, alloc_len } => {
                // A pending UA first; otherwise the reason the LU cannot
                // serve media commands right now (SPC-4 6.39), else NO SENSE.
                let s = st.ua.pop(nexus.id).unwrap_or_else(|| match st.alua {
                    AluaState::Standby => Sense::alua_standby(),
                    AluaState::Unavailable => Sense::alua_unavailable(),
                    AluaState::Transitioning => Sense::alua_transitioning(),
                    _ => Sense::no_sense(),
                });
                let d = if desc {
                    s.to_descriptor()
                } else {
                    s.to_fixed()
                };
                done(Reply::data(d, alloc_len))
            }
            C::Inquiry {
                evpd,
                page,
                alloc_len,
            } => {
                let d = if evpd {
                    let nexus = &st.nexus_as_seen(nexus);
                    let ctx = VpdContext {
                        identity: &self.identity,
                        nexus,
                        block_size: self.block_size,
                        max_transfer_blocks: self.max_transfer_blocks,
                        unmap_supported: self.unmap_supported,
                    };
                    match inquiry::vpd(page, &ctx) {
                        Ok(d) => d,
                        Err(s) => return check(s),
                    }
                } else {
                    inquiry::standard(&self.identity)
                };
                done(Reply::data(d, alloc_len))
            }
            // REPORT LUNS is normally answered by the target (`report_luns`);
            // an LU asked directly only knows about itself, reported as LUN 0.
            C::ReportLuns { .. } => done(luns::report_luns(&[0], cmd.cdb)),
            C::ModeSense(ms) => match mode::mode_sense(&ms, &self.mode_ctx(st)) {
                Ok(d) => done(Reply::data(d, ms.alloc_len)),
                Err(s) => check(s),
            },
            C::ModeSelect {
                ten, sp, param_len, ..
            } => {
                let param = match param_list(cmd.data_out, param_len) {
                    Ok(p) => p,
                    Err(s) => return check(s),
                };
                match mode::mode_select(ten, sp, param, &self.mode_ctx(st)) {
                    Ok(change) => {
                        if let Some(wce) = change.wce {
                            st.wce = wce;
                        }
                        if let Some(swp) = change.swp {
                            st.swp = swp;
                        }
                        if change.wce.is_some() || change.swp.is_some() {
                            st.ua
                                .push_all(Sense::mode_parameters_changed(), Some(nexus.id));
                        }
                        done(Reply::good())
                    }
                    Err(s) => check(s),
                }
            }
            C::ReadCapacity10 => {
                let last = st.num_blocks.saturating_sub(1);
                let last = u32::try_from(last).unwrap_or(u32::MAX);
                let mut d = last.to_be_bytes().to_vec();
                d.extend_from_slice(&self.block_size.to_be_bytes());
                done(Reply::data(d, 8))
            }
            C::ReadCapacity16 { alloc_len } => {
                let mut d = vec![0u8; 32];
                d[0..8].copy_from_slice(&st.num_blocks.saturating_sub(1).to_be_bytes());
                d[8..12].copy_from_slice(&self.block_size.to_be_bytes());
                if self.unmap_supported {
                    d[14] = 0x80; // LBPME
                }
                done(Reply::data(d, alloc_len))
            }
            C::GetLbaStatus { lba, alloc_len } => {
                if lba.0 >= st.num_blocks {
                    return check(Sense::lba_out_of_range());
                }
                // We do not track mapping: everything from LBA on is reported mapped.
                let count = u32::try_from(st.num_blocks - lba.0).unwrap_or(u32::MAX);
                let mut d = 20u32.to_be_bytes().to_vec();
                d.extend_from_slice(&[0; 4]);
                d.extend_from_slice(&lba.0.to_be_bytes());
                d.extend_from_slice(&count.to_be_bytes());
                d.extend_from_slice(&[0; 4]);
                done(Reply::data(d, alloc_len))
            }
            C::Read(rw) => self.read(st, cmd, rw),
            C::Write(rw) => self.write(st, cmd, rw, false),
            C::WriteAndVerify { rw, bytchk } => self.write(st, cmd, rw, bytchk),
            C::Verify {
                lba,
                blocks,
                bytchk,
            } => self.verify(st, cmd, lba, blocks, bytchk),
            C::WriteSame {
                lba,
                blocks,
                unmap,
                anchor,
                ndob,
            } => self.write_same(st, cmd, lba, blocks, unmap, anchor, ndob),
            C::Unmap { anchor, param_len } => self.unmap(st, cmd, anchor, param_len),
            C::SynchronizeCache { lba, blocks, .. } => {
                if let Err(s) = check_range(st.num_blocks, lba, u64::from(blocks.0)) {
                    return check(s);
                }
                // IMMED is fine either way: the transport answers after the flush.
                io_step(LuIo::Flush, ContKind::Complete { is_write: true }, None)
            }
            C::CompareAndWrite { lba, blocks, fua } => {
                self.compare_and_write(st, cmd, lba, blocks, fua)
            }
            C::OrWrite(rw) => self.or_write(st, cmd, rw),
            C::WriteAtomic { rw, boundary } => self.write_atomic(st, cmd, rw, boundary),
            C::ReadDefectData {
                twelve,
                plist,
                glist,
                format,
                alloc_len,
            } => done(Reply::data(
                read_defect_data(twelve, plist, glist, format),
                alloc_len,
            )),
            C::ReportSupportedOpcodes {
                rctd,
                options,
                opcode,
                service_action,
                alloc_len,
            } => match rsoc::report(rctd, options, opcode, service_action) {
                Ok(d) => done(Reply::data(d, alloc_len)),
                Err(s) => check(s),
            },
            C::ReportTargetPortGroups {
                extended,
                alloc_len,
            } => {
                // The group of the asking port always shows the state this
                // LU enforces, so RTPG never disagrees with what commands see.
                let nexus = &st.nexus_as_seen(nexus);
                let groups: Vec<PortGroup> = match &st.groups {
                    Some(g) => g
                        .iter()
                        .map(|g| PortGroup {
                            state: if g.tpg_id == nexus.port.tpg_id {
                                st.alua
                            } else {
                                g.state
                            },
                            ..g.clone()
                        })
                        .collect(),
                    None => vec![PortGroup {
                        tpg_id: nexus.port.tpg_id,
                        state: st.alua,
                        relative_port_ids: vec![nexus.port.relative_port_id],
                    }],
                };
                done(Reply::data(
                    alua::report_target_port_groups(&groups, extended),
                    alloc_len,
                ))
            }
            C::PersistentReserveIn {
                service_action,
                alloc_len,
            } => match st.pr.read(service_action, self.pr_store.is_some()) {
                Ok(d) => done(Reply::data(d, alloc_len)),
                Err(s) => check(s),
            },
            C::PersistentReserveOut {
                service_action,
                scope,
                pr_type,
                param_len,
            } => self.pr_out(
                st,
                cmd.nexus,
                cmd.data_out,
                PrOutArgs {
                    service_action,
                    scope,
                    pr_type,
                    param_len,
                },
            ),
            C::Reserve => self.spc2_reserve(st, nexus),
            C::Release => self.spc2_release(st, nexus),
        }
    }

    fn mode_ctx(&self, st: &State) -> ModeContext {
        ModeContext {
            wce: st.wce,
            swp: st.swp,
            default_wce: self.default_wce,
            read_only: self.read_only,
            block_size: self.block_size,
            num_blocks: st.num_blocks,
        }
    }
}

/// The first `param_len` bytes of Data-Out; fewer bytes than announced is
/// an error in the command IU.
pub(super) fn param_list(data_out: &[u8], param_len: u32) -> Result<&[u8], Sense> {
    let n = usize::try_from(param_len).map_err(|_| Sense::invalid_field_in_iu())?;
    data_out.get(..n).ok_or_else(Sense::invalid_field_in_iu)
}

/// READ DEFECT DATA parameter data: an emulated medium has no defects, so
/// the requested lists are valid and empty, in the requested format.
fn read_defect_data(twelve: bool, plist: bool, glist: bool, format: u8) -> Vec<u8> {
    let flags = if plist { 0x10 } else { 0 } | if glist { 0x08 } else { 0 } | (format & 0x07);
    // (10): 4-byte header with a 16-bit length; (12): GENERATION CODE 0
    // (not supported) and a 32-bit length. DEFECT LIST LENGTH is 0 in both.
    let mut d = vec![0u8; if twelve { 8 } else { 4 }];
    d[1] = flags;
    d
}

mod block;
#[cfg(test)]
mod release_tests;
pub(crate) mod reservations;
pub(crate) use reservations::PrOutArgs;
#[cfg(test)]
mod tests;

use block::{check_range, io_step};
