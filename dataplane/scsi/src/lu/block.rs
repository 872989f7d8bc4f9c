//! Block commands (SBC-3): READ, WRITE, VERIFY, WRITE SAME, UNMAP,
//! COMPARE AND WRITE, ORWRITE, WRITE ATOMIC, and the `resume` state machine
//! that finishes them.

use crate::cdb::{Blocks, Lba, RwCdb};
use crate::inquiry::{
    AtomicLimits, MAX_CAW_BLOCKS, MAX_UNMAP_DESCRIPTORS, MAX_UNMAP_LBA_COUNT, MAX_WRITE_SAME_BLOCKS,
};
use crate::rw::{first_mismatch, try_acquire, ContKind, Continuation, RangeGuard};
use crate::sense::Sense;
use crate::{
    CacheMode, Command, IoOutcome, IoPlan, LuIo, Nexus, Reply, ReplyData, Step, WriteSource,
};

use super::{check, done, param_list, LogicalUnit, State};

/// WRITE SAME expands its block into buffers of at most this many bytes.
pub(super) const WRITE_SAME_CHUNK_BYTES: usize = 1 << 20;

impl LogicalUnit {
    /// Continues a command after the I/O of its last [`Step::Io`]. A command that a
    /// LOGICAL UNIT RESET or CLEAR TASK SET aborted meanwhile (through this node or a
    /// partner) ends TASK ABORTED: it is never answered GOOD, and a multi-step command
    /// (ORWRITE, WRITE AND VERIFY) takes no further step.
    pub fn resume(
        &self,
        nexus: &Nexus,
        cont: Continuation,
        outcome: IoOutcome,
        data_out: &[u8],
    ) -> Step {
        let abort_gen = cont.abort_gen;
        if abort_gen != self.abort_gen() && !matches!(cont.kind, ContKind::PrCommit { .. }) {
            // (A PR commit always settles: its state is durable or not, whoever asked.)
            return done(Reply::task_aborted());
        }
        let mut step = self.resume_unchecked(nexus, cont, outcome, data_out);
        if let Step::Io(plan) = &mut step {
            plan.cont.abort_gen = abort_gen;
        }
        step
    }

    fn resume_unchecked(
        &self,
        nexus: &Nexus,
        cont: Continuation,
        outcome: IoOutcome,
        data_out: &[u8],
    ) -> Step {
        let Continuation {
            kind,
            guard,
            io_lba,
            abort_gen: _,
        } = cont;
        if matches!(kind, ContKind::PrCommit { .. }) {
            return self.finish_pr_commit(kind, &outcome);
        }
        if let ContKind::PrCluster { args } = kind {
            return self.finish_pr_cluster(nexus, args, outcome, data_out);
        }
        let read_data = match outcome {
            IoOutcome::Ok { read_data } => read_data,
            IoOutcome::MediumError => {
                let write_like = matches!(
                    kind,
                    ContKind::Complete { is_write: true }
                        | ContKind::WriteSame { .. }
                        | ContKind::WriteThenVerify { .. }
                        | ContKind::CawByDevice
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
            IoOutcome::NotReady => return check(Sense::alua_unavailable()),
            IoOutcome::Miscompare { offset } => {
                return check(match kind {
                    ContKind::CawByDevice => Sense::miscompare(offset),
                    // Only a device-run COMPARE AND WRITE compares.
                    _ => Sense::internal_target_failure(),
                });
            }
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
            ContKind::Complete { .. } | ContKind::CawByDevice => done(Reply::good()),
            // Taken before the outcome is read (its failure is not an LBA's).
            ContKind::PrCommit { .. } | ContKind::PrCluster { .. } => {
                check(Sense::internal_target_failure())
            }
            ContKind::WriteThenVerify { lba, blocks, bytes } => {
                let Some(bs) = self.bytes(1) else {
                    return check(Sense::internal_target_failure());
                };
                // Read back what was just written; the range stays held.
                io_step(
                    LuIo::Read { lba, blocks },
                    ContKind::Verify {
                        bytchk: 1,
                        bytes,
                        block_size: bs,
                    },
                    guard,
                )
            }
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
                let (Some(read), Some(verify), Some(_)) = (
                    read_data.and_then(|d| d.get(..bytes)),
                    data_out.get(..bytes),
                    // The write phase needs the second half too.
                    data_out.get(bytes..2 * bytes),
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
            ContKind::OrRead {
                lba,
                blocks,
                fua,
                bytes,
            } => {
                let (Some(read), Some(mask)) = (
                    read_data.and_then(|d| d.get(..bytes)),
                    data_out.get(..bytes),
                ) else {
                    return check(Sense::internal_target_failure());
                };
                let merged: Vec<u8> = read.iter().zip(mask).map(|(a, b)| a | b).collect();
                // The range stays held until the merged blocks are written.
                io_step(
                    LuIo::Write {
                        lba,
                        blocks,
                        src: WriteSource::Owned(merged),
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
                fua,
            } => {
                if remaining == 0 {
                    return done(Reply::good());
                }
                Self::write_same_chunk(next_lba, remaining, block, chunk_blocks, fua, guard)
            }
        }
    }

    /// Tells the LU whether its device runs COMPARE AND WRITE itself, atomically against
    /// every write it takes (`tandem_bdev::Bdev::atomic_compare_and_write`, true for a
    /// replicated device). Then COMPARE AND WRITE becomes one [`LuIo::CompareAndWrite`];
    /// otherwise the LU reads, compares and writes under its own range lock.
    pub fn set_device_compare_and_write(&self, on: bool) {
        self.device_caw
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// DATA PROTECT for a read-only LU or under software write protect.
    pub(super) fn check_writable(&self, st: &State) -> Result<(), Sense> {
        if self.read_only {
            return Err(Sense::write_protected());
        }
        if st.swp {
            return Err(Sense::software_write_protected());
        }
        Ok(())
    }

    /// FUA to use for a write: the host's bit, or always when the host
    /// turned the write cache off (MODE SELECT WCE=0) while the device
    /// still caches writes: WCE=0 promises every write is durable on GOOD.
    pub(super) fn effective_fua(st: &State, fua: bool) -> bool {
        fua || (!st.wce && st.cache == CacheMode::WriteBack)
    }

    /// Common checks of a data transfer: range, then MAXIMUM TRANSFER LENGTH.
    pub(super) fn check_transfer(
        &self,
        st: &State,
        cdb: &[u8],
        lba: Lba,
        blocks: u64,
    ) -> Result<(), Sense> {
        check_range(st.num_blocks, lba, blocks)?;
        if self.max_transfer_blocks != 0 && blocks > u64::from(self.max_transfer_blocks) {
            return Err(Sense::invalid_field_cdb(len_field_byte(cdb), None));
        }
        Ok(())
    }

    pub(super) fn read(&self, st: &State, cmd: &Command, rw: RwCdb) -> Step {
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

    /// WRITE and WRITE AND VERIFY; with `verify_bytes` the written blocks
    /// are read back and compared with the Data-Out buffer (BYTCHK=1).
    pub(super) fn write(&self, st: &State, cmd: &Command, rw: RwCdb, verify_bytes: bool) -> Step {
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
        // Less Data-Out than the CDB says (an overflow, reported by the
        // transport from `data_out_fit`): the whole blocks that were sent are
        // written, as RFC 7143 11.4.5.2 lets the target use the data it got;
        // a partial block cannot be written, so nothing is. More is ignored.
        let mut blocks = rw.blocks.0;
        let mut len = len;
        if cmd.data_out.len() < len {
            let bs = self.block_size as usize;
            if !cmd.data_out.len().is_multiple_of(bs) {
                return check(Sense::invalid_field_in_iu());
            }
            len = cmd.data_out.len();
            blocks = (len / bs) as u32;
            if blocks == 0 {
                return done(Reply::good());
            }
        }
        let Some(guard) = try_acquire(&self.inflight, rw.lba.0, blocks.into(), false) else {
            return Step::Defer;
        };
        io_step(
            LuIo::Write {
                lba: rw.lba.0,
                blocks,
                src: WriteSource::DataOut { offset: 0, len },
                fua: Self::effective_fua(st, rw.fua),
            },
            if verify_bytes {
                ContKind::WriteThenVerify {
                    lba: rw.lba.0,
                    blocks,
                    bytes: len,
                }
            } else {
                ContKind::Complete { is_write: true }
            },
            Some(guard),
        )
    }

    pub(super) fn verify(
        &self,
        st: &State,
        cmd: &Command,
        lba: Lba,
        blocks: Blocks,
        bytchk: u8,
    ) -> Step {
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
    pub(super) fn write_same(
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
        // LBPWS/LBPWS10=0 without unmap support: the UNMAP bit is invalid.
        if unmap && !self.unmap_supported {
            return check(Sense::invalid_field_cdb(1, Some(3)));
        }
        if let Err(s) = check_range(st.num_blocks, lba, blocks.0.into()) {
            return check(s);
        }
        // WSNZ=0: NUMBER OF LOGICAL BLOCKS 0 means through the last LBA
        // (at most MAXIMUM WRITE SAME LENGTH, like any other length).
        let count = match blocks.0 {
            0 => st.num_blocks - lba.0,
            n => u64::from(n),
        };
        if count > MAX_WRITE_SAME_BLOCKS {
            return check(Sense::invalid_field_cdb(len_field_byte(cmd.cdb), None));
        }
        let Ok(count) = u32::try_from(count) else {
            return check(Sense::invalid_field_cdb(len_field_byte(cmd.cdb), None));
        };
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
        // 0 blocks at the capacity: nothing left to write.
        if count == 0 {
            return done(Reply::good());
        }
        let Some(guard) = try_acquire(&self.inflight, lba.0, count.into(), false) else {
            return Step::Defer;
        };
        // Unmap only when the result reads back as the block written: the
        // block must be zeros (the bdev returns zeros for unmapped blocks).
        if unmap && self.unmap_supported && block.iter().all(|&b| b == 0) {
            return io_step(
                LuIo::Unmap {
                    ranges: vec![(lba.0, count)],
                },
                ContKind::Complete { is_write: true },
                Some(guard),
            );
        }
        let chunk_blocks = u32::try_from((WRITE_SAME_CHUNK_BYTES / bs).max(1)).unwrap_or(1);
        let fua = Self::effective_fua(st, false);
        Self::write_same_chunk(lba.0, count.into(), block, chunk_blocks, fua, Some(guard))
    }

    pub(super) fn write_same_chunk(
        lba: u64,
        remaining: u64,
        block: Vec<u8>,
        chunk_blocks: u32,
        fua: bool,
        guard: Option<RangeGuard>,
    ) -> Step {
        let n = remaining.min(u64::from(chunk_blocks)) as u32;
        let buf = block.repeat(n as usize);
        io_step(
            LuIo::Write {
                lba,
                blocks: n,
                src: WriteSource::Owned(buf),
                fua,
            },
            ContKind::WriteSame {
                next_lba: lba + u64::from(n),
                remaining: remaining - u64::from(n),
                block,
                chunk_blocks,
                fua,
            },
            guard,
        )
    }

    pub(super) fn unmap(&self, st: &State, cmd: &Command, anchor: bool, param_len: u32) -> Step {
        // Write protection first: a read-only LU has no unmap support, yet
        // its answer to UNMAP is that the medium is write protected.
        if let Err(s) = self.check_writable(st) {
            return check(s);
        }
        if !self.unmap_supported {
            return check(Sense::invalid_opcode());
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

    pub(super) fn compare_and_write(
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
            // Nothing to compare, but Data-Out sent for it means the CDB
            // disagrees with the transfer (e.g. 256 blocks truncated to 0).
            if !cmd.data_out.is_empty() {
                return check(Sense::invalid_field_cdb(13, None));
            }
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
        // The Data-Out buffer is exactly the compare and the write data;
        // anything else means NUMBER OF LOGICAL BLOCKS is wrong.
        if cmd.data_out.len() != 2 * bytes {
            return check(Sense::invalid_field_cdb(13, None));
        }
        let Some(guard) = try_acquire(&self.inflight, lba.0, blocks.0.into(), true) else {
            return Step::Defer;
        };
        let fua = Self::effective_fua(st, fua);
        if self.device_caw.load(std::sync::atomic::Ordering::Relaxed) {
            // A compare on this node's copy would not be atomic against writes the device
            // takes elsewhere (a replicated device's partners): the device does it all. The
            // local range stays held too, so this node's own overlapping writes wait as for
            // the local path.
            return io_step(
                LuIo::CompareAndWrite {
                    lba: lba.0,
                    blocks: blocks.0,
                    fua,
                },
                ContKind::CawByDevice,
                Some(guard),
            );
        }
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

    /// ORWRITE(16): read the blocks, OR the Data-Out buffer into them and
    /// write the result, holding the range exclusively throughout so no
    /// overlapping write lands between the read and the write.
    pub(super) fn or_write(&self, st: &State, cmd: &Command, rw: RwCdb) -> Step {
        if let Err(s) = self.check_writable(st) {
            return check(s);
        }
        if let Err(s) = self.check_transfer(st, cmd.cdb, rw.lba, rw.blocks.0.into()) {
            return check(s);
        }
        if rw.blocks.0 == 0 {
            return done(Reply::good());
        }
        let Some(bytes) = self.bytes(rw.blocks.0.into()) else {
            return check(Sense::invalid_field_cdb(len_field_byte(cmd.cdb), None));
        };
        if cmd.data_out.len() < bytes {
            return check(Sense::invalid_field_in_iu());
        }
        let Some(guard) = try_acquire(&self.inflight, rw.lba.0, rw.blocks.0.into(), true) else {
            return Step::Defer;
        };
        io_step(
            LuIo::Read {
                lba: rw.lba.0,
                blocks: rw.blocks.0,
            },
            ContKind::OrRead {
                lba: rw.lba.0,
                blocks: rw.blocks.0,
                fua: Self::effective_fua(st, rw.fua),
                bytes,
            },
            Some(guard),
        )
    }

    /// WRITE ATOMIC(16): one write within the VPD 0xB0 atomic limits, with
    /// its range held exclusively so overlapping writes are ordered around
    /// it, never interleaved with it.
    pub(super) fn write_atomic(&self, st: &State, cmd: &Command, rw: RwCdb, boundary: u16) -> Step {
        /// TRANSFER LENGTH is bytes 12..14 of WRITE ATOMIC(16).
        const LEN_BYTE: u16 = 12;
        if let Err(s) = self.check_writable(st) {
            return check(s);
        }
        let blocks = rw.blocks.0;
        if let Err(s) = check_range(st.num_blocks, rw.lba, blocks.into()) {
            return check(s);
        }
        // MAXIMUM ATOMIC BOUNDARY SIZE is 0: only ATOMIC BOUNDARY 0 is valid.
        if boundary != 0 {
            return check(Sense::invalid_field_cdb(10, None));
        }
        if blocks == 0 {
            return done(Reply::good());
        }
        let lim = AtomicLimits::new(self.block_size, self.max_transfer_blocks);
        if blocks > lim.max_blocks || !blocks.is_multiple_of(lim.granularity.max(1)) {
            return check(Sense::invalid_field_cdb(LEN_BYTE, None));
        }
        if !rw.lba.0.is_multiple_of(u64::from(lim.alignment.max(1))) {
            return check(Sense::invalid_field_cdb(2, None));
        }
        let Some(len) = self.bytes(blocks.into()) else {
            return check(Sense::invalid_field_cdb(LEN_BYTE, None));
        };
        if cmd.data_out.len() < len {
            return check(Sense::invalid_field_in_iu());
        }
        let Some(guard) = try_acquire(&self.inflight, rw.lba.0, blocks.into(), true) else {
            return Step::Defer;
        };
        io_step(
            LuIo::Write {
                lba: rw.lba.0,
                blocks,
                src: WriteSource::DataOut { offset: 0, len },
                fua: Self::effective_fua(st, rw.fua),
            },
            ContKind::Complete { is_write: true },
            Some(guard),
        )
    }
}

/// Asks the transport for one I/O; the continuation remembers where it
/// started so a medium error can report that LBA in INFORMATION.
pub(super) fn io_step(io: LuIo, kind: ContKind, guard: Option<RangeGuard>) -> Step {
    let io_lba = match &io {
        LuIo::Read { lba, .. } | LuIo::Write { lba, .. } | LuIo::CompareAndWrite { lba, .. } => {
            Some(*lba)
        }
        LuIo::Flush | LuIo::Unmap { .. } | LuIo::ReservationChange { .. } => None,
    };
    Step::Io(IoPlan {
        io,
        cont: Continuation {
            kind,
            guard,
            io_lba,
            // Set by `LogicalUnit::execute` / `resume` when the step leaves the LU.
            abort_gen: 0,
        },
    })
}

/// Where the transfer length sits in a CDB, for sense field pointers.
pub(super) fn len_field_byte(cdb: &[u8]) -> u16 {
    match cdb.first().copied().unwrap_or(0) >> 5 {
        0 => 4,
        1 | 2 => 7,
        5 => 6,
        _ => 10,
    }
}

/// Overflow-free range check: `lba + blocks <= num_blocks`.
pub(super) fn check_range(num_blocks: u64, lba: Lba, blocks: u64) -> Result<(), Sense> {
    if lba.0 > num_blocks || num_blocks - lba.0 < blocks {
        return Err(Sense::lba_out_of_range());
    }
    Ok(())
}

/// Parses an UNMAP parameter list into (lba, blocks) ranges (SBC-3 5.28.2).
pub(super) fn parse_unmap(p: &[u8], num_blocks: u64) -> Result<Vec<(u64, u32)>, Sense> {
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
