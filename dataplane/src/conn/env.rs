//! What a connection needs from its surroundings, as a narrow interface: the clock, node-wide
//! shared state, block-device submission, reservation commits, buffers, the reactor's
//! memory budget and the release signal parked tasks wait on.
//!
//! The reactor implements it with live device channels ([`ReactorCtx`]); the unit tests
//! implement it with a recorder, so the connection's reaction to PDUs and completions is
//! exercised without sockets or devices. Connection code takes it as `&mut impl ConnEnv`
//! (static dispatch), so on the reactor the clock, budget and buffer calls compile to direct,
//! inlinable calls as they did before the trait existed, not to an indirect call each.

use super::budget::MemBudget;
use crate::reactor_ctx::{ReactorCtx, Shared};
use crate::target::Device;
use std::sync::Arc;
use std::time::Instant;
use tandem_bdev::{AlignedBuf, BdevOp};
use tandem_scsi::{Continuation, PrCommit};

pub trait ConnEnv {
    fn now(&self) -> Instant;
    fn shared(&self) -> &Arc<Shared>;
    /// Starts one device operation; its completion comes back through
    /// `Connection::on_io_complete` with this tag. False: no channel (the command fails).
    fn submit(&mut self, dev: &Arc<Device>, tag: u64, op: BdevOp) -> bool;
    /// Hands a persistent-reservation commit to the persister; its completion comes back
    /// through `Connection::on_io_complete` with this tag. False: it cannot be queued (the
    /// caller resumes the LU with a failure). The continuation is returned either way.
    fn persist(&mut self, tag: u64, commit: PrCommit) -> (bool, Continuation);
    fn alloc_buf(&mut self, dev: Option<&Arc<Device>>, len: usize) -> AlignedBuf;
    fn free_buf(&mut self, dev: Option<&Arc<Device>>, buf: AlignedBuf);
    fn budget(&mut self) -> &mut MemBudget;
    /// A task was deferred on `dev` when its logical unit's release generation was `seen`:
    /// true = nothing released since, keep it parked (this reactor is woken at the next
    /// release, from whichever thread releases); false = released since, retry now.
    fn watch_release(&mut self, dev: &Arc<Device>, seen: u64) -> bool;
}

impl ConnEnv for ReactorCtx {
    fn now(&self) -> Instant {
        self.now
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    fn submit(&mut self, dev: &Arc<Device>, tag: u64, op: BdevOp) -> bool {
        ReactorCtx::submit(self, dev, tag, op)
    }

    fn persist(&mut self, tag: u64, commit: PrCommit) -> (bool, Continuation) {
        ReactorCtx::persist(self, tag, commit)
    }

    fn alloc_buf(&mut self, dev: Option<&Arc<Device>>, len: usize) -> AlignedBuf {
        ReactorCtx::alloc_buf(self, dev, len)
    }

    fn free_buf(&mut self, dev: Option<&Arc<Device>>, buf: AlignedBuf) {
        ReactorCtx::free_buf(self, dev, buf)
    }

    fn budget(&mut self) -> &mut MemBudget {
        &mut self.budget
    }

    fn watch_release(&mut self, dev: &Arc<Device>, seen: u64) -> bool {
        ReactorCtx::watch_release(self, dev, seen)
    }
}
