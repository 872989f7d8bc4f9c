//! The logical unit: command dispatch, unit attentions, reservations and
//! the I/O state machine (`execute` -> `Step::Io` -> `resume` -> ...).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::cdb::{self, Blocks, Lba, RwCdb, ScsiCommand};
use crate::inquiry::{
    self, VpdContext, MAX_CAW_BLOCKS, MAX_UNMAP_DESCRIPTORS, MAX_UNMAP_LBA_COUNT,
    MAX_WRITE_SAME_BLOCKS,
};
use crate::mode::{self, ModeContext};
use crate::pr::{Access, PortId, PrError, PrState};
use crate::rw::{first_mismatch, try_acquire, ContKind, Continuation, Inflight, RangeGuard};
use crate::sense::Sense;
use crate::ua::UaTable;
use crate::{
    alua, luns, rsoc, AluaState, CacheMode, Command, IoOutcome, IoPlan, LuConfig, LuIdentity, LuIo,
    Nexus, PortGroup, PrStore, Reply, ReplyData, Step, WriteSource,
};

/// WRITE SAME expands its block into buffers of at most this many bytes.
const WRITE_SAME_CHUNK_BYTES: usize = 1 << 20;

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
    ua: UaTable,
    /// PR identity of every nexus we know, for addressing PR unit attentions.
    nexuses: HashMap<u64, PortId>,
    /// SPC-2 RESERVE holder (nexus id).
    spc2_holder: Option<u64>,
    pr: PrState,
}

impl State {
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
    pr_store: Option<Box<dyn PrStore>>,
}

/// Asks the transport for one I/O; the continuation remembers where it
/// started so a medium error can report that LBA in INFORMATION.
fn io_step(io: LuIo, kind: ContKind, guard: Option<RangeGuard>) -> Step {
    let io_lba = match &io {
        LuIo::Read { lba, .. } | LuIo::Write { lba, .. } => Some(*lba),
        LuIo::Flush | LuIo::Unmap { .. } => None,
    };
    Step::Io(IoPlan {
        io,
        cont: Continuation {
            kind,
            guard,
            io_lba,
        },
    })
}

fn done(r: Reply) -> Step {
    Step::Done(r)
}

fn check(s: Sense) -> Step {
    Step::Done(Reply::check(&s))
}

/// Where the transfer length sits in a CDB, for sense field pointers.
fn len_field_byte(cdb: &[u8]) -> u16 {
    match cdb.first().copied().unwrap_or(0) >> 5 {
        0 => 4,
        1 | 2 => 7,
        5 => 6,
        _ => 10,
    }
}

impl LogicalUnit {
    /// Creates an LU; restores APTPL reservation state from `pr_store`.
    pub fn new(cfg: LuConfig, pr_store: Option<Box<dyn PrStore>>) -> LogicalUnit {
        let pr = match pr_store.as_ref().map(|s| s.load()) {
            Some(Ok(Some(blob))) => PrState::decode(&blob).unwrap_or_else(|| {
                tracing::warn!("ignoring malformed persistent reservation state");
                PrState::default()
            }),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "cannot load persistent reservation state");
                PrState::default()
            }
            _ => PrState::default(),
        };
        let wce = cfg.cache == CacheMode::WriteBack;
        LogicalUnit {
            identity: cfg.identity,
            // Only 512 and 4096 are valid; anything else would break every
            // byte computation, so fall back to 512.
            block_size: if cfg.block_size == 4096 { 4096 } else { 512 },
            read_only: cfg.read_only,
            unmap_supported: cfg.unmap_supported,
            max_transfer_blocks: cfg.max_transfer_blocks,
            default_wce: wce,
            state: Mutex::new(State {
                num_blocks: cfg.num_blocks,
                cache: cfg.cache,
                wce,
                swp: false,
                alua: AluaState::ActiveOptimized,
                groups: None,
                ua: UaTable::default(),
                nexuses: HashMap::new(),
                spc2_holder: None,
                pr,
            }),
            inflight: Arc::default(),
            pr_store,
        }
    }

    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    pub fn num_blocks(&self) -> u64 {
        self.state.lock().num_blocks
    }

    fn bytes(&self, blocks: u64) -> Option<usize> {
        usize::try_from(blocks.checked_mul(u64::from(self.block_size))?).ok()
    }

    // ---- management hooks ---------------------------------------------------

    /// New I_T nexus: it first sees POWER ON, RESET, OR BUS DEVICE RESET OCCURRED.
    pub fn nexus_added(&self, nexus: &Nexus) {
        let mut st = self.state.lock();
        st.see(nexus);
        st.ua.push(nexus.id, Sense::power_on_reset());
    }

    /// I_T nexus loss: drop its UAs and SPC-2 reservation; PR registrations stay.
    pub fn nexus_removed(&self, nexus_id: u64) {
        let mut st = self.state.lock();
        st.ua.forget(nexus_id);
        st.nexuses.remove(&nexus_id);
        if st.spc2_holder == Some(nexus_id) {
            st.spc2_holder = None;
        }
    }

    /// LOGICAL UNIT RESET: clears the SPC-2 reservation, UA 29/03 to the others.
    pub fn lun_reset(&self, from: &Nexus) {
        let mut st = self.state.lock();
        st.see(from);
        st.spc2_holder = None;
        st.ua.push_all(Sense::lun_reset_occurred(), Some(from.id));
    }

    pub fn resize(&self, new_num_blocks: u64) {
        let mut st = self.state.lock();
        if st.num_blocks != new_num_blocks {
            st.num_blocks = new_num_blocks;
            st.ua.push_all(Sense::capacity_changed(), None);
        }
    }

    pub fn set_alua_state(&self, state: AluaState) {
        let mut st = self.state.lock();
        if st.alua != state {
            st.alua = state;
            st.ua
                .push_all(Sense::asymmetric_access_state_changed(), None);
        }
    }

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

    /// Starts a command.
    pub fn execute(&self, cmd: &Command) -> Step {
        let mut st = self.state.lock();
        st.see(cmd.nexus);
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

    /// Continues a command after the I/O of its last [`Step::Io`].
    pub fn resume(
        &self,
        _nexus: &Nexus,
        cont: Continuation,
        outcome: IoOutcome,
        data_out: &[u8],
    ) -> Step {
        let Continuation {
            kind,
            guard,
            io_lba,
        } = cont;
        let read_data = match outcome {
            IoOutcome::Ok { read_data } => read_data,
            IoOutcome::MediumError => {
                let write_like = matches!(
                    kind,
                    ContKind::Complete { is_write: true } | ContKind::WriteSame { .. }
                );
                let s = if write_like {
                    Sense::write_error()
                } else {
                    Sense::read_error()
                };
                // SBC-3: INFORMATION names the failing LBA; the bdev only
                // tells us the I/O failed, so report where it started.
                return check(match io_lba {
                    Some(lba) => s.with_info(lba),
                    None => s,
                });
            }
            IoOutcome::Failed => return check(Sense::internal_target_failure()),
        };
        match kind {
            ContKind::Read { len } => {
                if read_data.is_some_and(|d| d.len() < len) {
                    return check(Sense::internal_target_failure());
                }
                done(Reply {
                    status: crate::ScsiStatus::Good,
                    data: ReplyData::IoBuffer { len },
                    sense: None,
                })
            }
            ContKind::Complete { .. } => done(Reply::good()),
            ContKind::Verify {
                bytchk,
                bytes,
                block_size,
            } => {
                let Some(read) = read_data.and_then(|d| d.get(..bytes)) else {
                    return check(Sense::internal_target_failure());
                };
                let mismatch = if bytchk == 3 {
                    let Some(block) = data_out.get(..block_size) else {
                        return check(Sense::invalid_field_in_iu());
                    };
                    read.chunks(block_size.max(1))
                        .enumerate()
                        .find_map(|(i, c)| first_mismatch(c, block).map(|o| i * block_size + o))
                } else {
                    let Some(expected) = data_out.get(..bytes) else {
                        return check(Sense::invalid_field_in_iu());
                    };
                    first_mismatch(read, expected)
                };
                match mismatch {
                    Some(off) => check(Sense::miscompare(off as u64)),
                    None => done(Reply::good()),
                }
            }
            ContKind::CawRead {
                lba,
                blocks,
                fua,
                bytes,
            } => {
                let (Some(read), Some(verify)) = (
                    read_data.and_then(|d| d.get(..bytes)),
                    data_out.get(..bytes),
                ) else {
                    return check(Sense::internal_target_failure());
                };
                if let Some(off) = first_mismatch(read, verify) {
                    return check(Sense::miscompare(off as u64));
                }
                io_step(
                    LuIo::Write {
                        lba,
                        blocks,
                        src: WriteSource::DataOut {
                            offset: bytes,
                            len: bytes,
                        },
                        fua,
                    },
                    ContKind::Complete { is_write: true },
                    guard,
                )
            }
            ContKind::WriteSame {
                next_lba,
                remaining,
                block,
                chunk_blocks,
            } => {
                if remaining == 0 {
                    return done(Reply::good());
                }
                Self::write_same_chunk(next_lba, remaining, block, chunk_blocks, guard)
            }
        }
    }

    // ---- reservations -------------------------------------------------------

    fn access_class(cmd: &ScsiCommand) -> Access {
        use ScsiCommand as C;
        match cmd {
            C::Read(_)
            | C::Verify { .. }
            | C::ModeSense(_)
            | C::GetLbaStatus { .. }
            | C::PreFetch { .. } => Access::Read,
            C::Write(_)
            | C::WriteAndVerify { .. }
            | C::WriteSame { .. }
            | C::Unmap { .. }
            | C::SynchronizeCache { .. }
            | C::CompareAndWrite { .. }
            | C::ModeSelect { .. }
            | C::StartStopUnit { .. } => Access::Write,
            _ => Access::Always,
        }
    }

    fn reservation_conflict(&self, st: &State, nexus: &Nexus, cmd: &ScsiCommand) -> bool {
        use ScsiCommand as C;
        // RESERVE/RELEASE do their own checks.
        if matches!(cmd, C::Reserve | C::Release) {
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
        st.pr.conflicts(&PortId::of(nexus), Self::access_class(cmd))
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
            C::Write(rw) | C::WriteAndVerify { rw, .. } => self.write(st, cmd, rw),
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
                let default;
                let groups = match &st.groups {
                    Some(g) => g.as_slice(),
                    None => {
                        default = [PortGroup {
                            tpg_id: nexus.port.tpg_id,
                            state: st.alua,
                            relative_port_ids: vec![nexus.port.relative_port_id],
                        }];
                        &default[..]
                    }
                };
                done(Reply::data(
                    alua::report_target_port_groups(groups, extended),
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
            } => self.pr_out(st, cmd, service_action, scope, pr_type, param_len),
            C::Reserve => {
                let me = PortId::of(nexus);
                if st.pr.res.is_some() {
                    // SPC-4 5.12.3 (CRH=1): a PR holder's RESERVE is a no-op.
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
            C::Release => {
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

    /// DATA PROTECT for a read-only LU or under software write protect.
    fn check_writable(&self, st: &State) -> Result<(), Sense> {
        if self.read_only {
            return Err(Sense::write_protected());
        }
        if st.swp {
            return Err(Sense::software_write_protected());
        }
        Ok(())
    }

    /// Common checks of a data transfer: range, then MAXIMUM TRANSFER LENGTH.
    fn check_transfer(&self, st: &State, cdb: &[u8], lba: Lba, blocks: u64) -> Result<(), Sense> {
        check_range(st.num_blocks, lba, blocks)?;
        if self.max_transfer_blocks != 0 && blocks > u64::from(self.max_transfer_blocks) {
            return Err(Sense::invalid_field_cdb(len_field_byte(cdb), None));
        }
        Ok(())
    }

    fn read(&self, st: &State, cmd: &Command, rw: RwCdb) -> Step {
        if let Err(s) = self.check_transfer(st, cmd.cdb, rw.lba, rw.blocks.0.into()) {
            return check(s);
        }
        if rw.blocks.0 == 0 {
            return done(Reply::good());
        }
        let Some(len) = self.bytes(rw.blocks.0.into()) else {
            return check(Sense::invalid_field_cdb(len_field_byte(cmd.cdb), None));
        };
        io_step(
            LuIo::Read {
                lba: rw.lba.0,
                blocks: rw.blocks.0,
            },
            ContKind::Read { len },
            None,
        )
    }

    fn write(&self, st: &State, cmd: &Command, rw: RwCdb) -> Step {
        if let Err(s) = self.check_writable(st) {
            return check(s);
        }
        if let Err(s) = self.check_transfer(st, cmd.cdb, rw.lba, rw.blocks.0.into()) {
            return check(s);
        }
        if rw.blocks.0 == 0 {
            return done(Reply::good());
        }
        let Some(len) = self.bytes(rw.blocks.0.into()) else {
            return check(Sense::invalid_field_cdb(len_field_byte(cmd.cdb), None));
        };
        // Less Data-Out than the CDB says: reject without writing anything
        // (SAM-5 allows this answer for an overflow). More is ignored.
        if cmd.data_out.len() < len {
            return check(Sense::invalid_field_in_iu());
        }
        let Some(guard) = try_acquire(&self.inflight, rw.lba.0, rw.blocks.0.into(), false) else {
            return Step::Defer;
        };
        io_step(
            LuIo::Write {
                lba: rw.lba.0,
                blocks: rw.blocks.0,
                src: WriteSource::DataOut { offset: 0, len },
                fua: rw.fua,
            },
            ContKind::Complete { is_write: true },
            Some(guard),
        )
    }

    fn verify(&self, st: &State, cmd: &Command, lba: Lba, blocks: Blocks, bytchk: u8) -> Step {
        if let Err(s) = check_range(st.num_blocks, lba, blocks.0.into()) {
            return check(s);
        }
        // BYTCHK=0 asks for a medium check only; our media have no checkable
        // state beyond a read, which the bdev already verifies on every I/O.
        if blocks.0 == 0 || bytchk == 0 {
            return done(Reply::good());
        }
        if self.max_transfer_blocks != 0 && blocks.0 > self.max_transfer_blocks {
            return check(Sense::invalid_field_cdb(len_field_byte(cmd.cdb), None));
        }
        let (Some(bytes), Some(bs)) = (self.bytes(blocks.0.into()), self.bytes(1)) else {
            return check(Sense::invalid_field_cdb(len_field_byte(cmd.cdb), None));
        };
        let need = if bytchk == 3 { bs } else { bytes };
        if cmd.data_out.len() < need {
            return check(Sense::invalid_field_in_iu());
        }
        io_step(
            LuIo::Read {
                lba: lba.0,
                blocks: blocks.0,
            },
            ContKind::Verify {
                bytchk,
                bytes,
                block_size: bs,
            },
            None,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn write_same(
        &self,
        st: &State,
        cmd: &Command,
        lba: Lba,
        blocks: Blocks,
        unmap: bool,
        anchor: bool,
        ndob: bool,
    ) -> Step {
        if let Err(s) = self.check_writable(st) {
            return check(s);
        }
        // ANC_SUP=0: anchoring is not supported.
        if anchor {
            return check(Sense::invalid_field_cdb(1, Some(4)));
        }
        // WSNZ=1: a zero NUMBER OF LOGICAL BLOCKS is not "to the end".
        if blocks.0 == 0 {
            return check(Sense::invalid_field_cdb(len_field_byte(cmd.cdb), None));
        }
        if let Err(s) = check_range(st.num_blocks, lba, blocks.0.into()) {
            return check(s);
        }
        if u64::from(blocks.0) > MAX_WRITE_SAME_BLOCKS {
            return check(Sense::invalid_field_cdb(len_field_byte(cmd.cdb), None));
        }
        let Some(bs) = self.bytes(1) else {
            return check(Sense::internal_target_failure());
        };
        let block = if ndob {
            vec![0u8; bs]
        } else {
            // Exactly one block of Data-Out: more or less is a malformed command.
            if cmd.data_out.len() != bs {
                return check(Sense::invalid_field_in_iu());
            }
            cmd.data_out.to_vec()
        };
        let Some(guard) = try_acquire(&self.inflight, lba.0, blocks.0.into(), false) else {
            return Step::Defer;
        };
        // Unmap only when the result reads back as the block written: the
        // block must be zeros (the bdev returns zeros for unmapped blocks).
        if unmap && self.unmap_supported && block.iter().all(|&b| b == 0) {
            return io_step(
                LuIo::Unmap {
                    ranges: vec![(lba.0, blocks.0)],
                },
                ContKind::Complete { is_write: true },
                Some(guard),
            );
        }
        let chunk_blocks = u32::try_from((WRITE_SAME_CHUNK_BYTES / bs).max(1)).unwrap_or(1);
        Self::write_same_chunk(lba.0, blocks.0.into(), block, chunk_blocks, Some(guard))
    }

    fn write_same_chunk(
        lba: u64,
        remaining: u64,
        block: Vec<u8>,
        chunk_blocks: u32,
        guard: Option<RangeGuard>,
    ) -> Step {
        let n = remaining.min(u64::from(chunk_blocks)) as u32;
        let buf = block.repeat(n as usize);
        io_step(
            LuIo::Write {
                lba,
                blocks: n,
                src: WriteSource::Owned(buf),
                fua: false,
            },
            ContKind::WriteSame {
                next_lba: lba + u64::from(n),
                remaining: remaining - u64::from(n),
                block,
                chunk_blocks,
            },
            guard,
        )
    }

    fn unmap(&self, st: &State, cmd: &Command, anchor: bool, param_len: u32) -> Step {
        if !self.unmap_supported {
            return check(Sense::invalid_opcode());
        }
        if let Err(s) = self.check_writable(st) {
            return check(s);
        }
        if anchor {
            return check(Sense::invalid_field_cdb(1, Some(0)));
        }
        let param = match param_list(cmd.data_out, param_len) {
            Ok(p) => p,
            Err(s) => return check(s),
        };
        let ranges = match parse_unmap(param, st.num_blocks) {
            Ok(r) => r,
            Err(s) => return check(s),
        };
        if ranges.is_empty() {
            return done(Reply::good());
        }
        let lo = ranges.iter().map(|r| r.0).min().unwrap_or(0);
        let hi = ranges
            .iter()
            .map(|r| r.0 + u64::from(r.1))
            .max()
            .unwrap_or(0);
        let Some(guard) = try_acquire(&self.inflight, lo, hi - lo, false) else {
            return Step::Defer;
        };
        io_step(
            LuIo::Unmap { ranges },
            ContKind::Complete { is_write: true },
            Some(guard),
        )
    }

    fn compare_and_write(
        &self,
        st: &State,
        cmd: &Command,
        lba: Lba,
        blocks: Blocks,
        fua: bool,
    ) -> Step {
        if let Err(s) = self.check_writable(st) {
            return check(s);
        }
        if blocks.0 == 0 {
            return done(Reply::good());
        }
        let max = if self.max_transfer_blocks == 0 {
            MAX_CAW_BLOCKS
        } else {
            self.max_transfer_blocks.min(MAX_CAW_BLOCKS)
        };
        if blocks.0 > max {
            return check(Sense::invalid_field_cdb(13, None));
        }
        if let Err(s) = check_range(st.num_blocks, lba, blocks.0.into()) {
            return check(s);
        }
        let Some(bytes) = self.bytes(blocks.0.into()) else {
            return check(Sense::invalid_field_cdb(13, None));
        };
        // The Data-Out buffer is exactly the compare and the write data.
        if cmd.data_out.len() != 2 * bytes {
            return check(Sense::invalid_field_in_iu());
        }
        let Some(guard) = try_acquire(&self.inflight, lba.0, blocks.0.into(), true) else {
            return Step::Defer;
        };
        io_step(
            LuIo::Read {
                lba: lba.0,
                blocks: blocks.0,
            },
            ContKind::CawRead {
                lba: lba.0,
                blocks: blocks.0,
                fua,
                bytes,
            },
            Some(guard),
        )
    }

    fn pr_out(
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
}

/// The first `param_len` bytes of Data-Out; fewer bytes than announced is
/// an error in the command IU.
fn param_list(data_out: &[u8], param_len: u32) -> Result<&[u8], Sense> {
    let n = usize::try_from(param_len).map_err(|_| Sense::invalid_field_in_iu())?;
    data_out.get(..n).ok_or_else(Sense::invalid_field_in_iu)
}

/// Overflow-free range check: `lba + blocks <= num_blocks`.
fn check_range(num_blocks: u64, lba: Lba, blocks: u64) -> Result<(), Sense> {
    if lba.0 > num_blocks || num_blocks - lba.0 < blocks {
        return Err(Sense::lba_out_of_range());
    }
    Ok(())
}

/// Parses an UNMAP parameter list into (lba, blocks) ranges (SBC-3 5.28.2).
fn parse_unmap(p: &[u8], num_blocks: u64) -> Result<Vec<(u64, u32)>, Sense> {
    if p.is_empty() {
        return Ok(Vec::new());
    }
    if p.len() < 8 {
        return Err(Sense::param_list_length_error());
    }
    let data_len = usize::from(u16::from_be_bytes([p[0], p[1]]));
    let bd_len = usize::from(u16::from_be_bytes([p[2], p[3]]));
    if data_len > p.len() - 2 || bd_len > p.len() - 8 {
        return Err(Sense::param_list_length_error());
    }
    if bd_len / 16 > MAX_UNMAP_DESCRIPTORS as usize {
        return Err(Sense::invalid_field_param(2, None));
    }
    let mut ranges = Vec::new();
    let mut total: u64 = 0;
    for (i, d) in p[8..8 + bd_len].chunks_exact(16).enumerate() {
        let lba = u64::from_be_bytes(d[0..8].try_into().unwrap_or([0; 8]));
        let n = u32::from_be_bytes(d[8..12].try_into().unwrap_or([0; 4]));
        check_range(num_blocks, Lba(lba), n.into())?;
        total += u64::from(n);
        if total > u64::from(MAX_UNMAP_LBA_COUNT) {
            return Err(Sense::invalid_field_param((8 + 16 * i + 8) as u16, None));
        }
        if n > 0 {
            ranges.push((lba, n));
        }
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests;
