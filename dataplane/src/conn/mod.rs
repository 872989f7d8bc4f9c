//! One iSCSI connection: framing, login, full-feature phase, task execution.
//!
//! A connection lives on one reactor for its whole life. `poll` reads what the socket has,
//! handles a bounded number of PDUs, runs ready tasks and writes what the socket takes;
//! block-device completions come back through `on_io_complete`.

mod budget;
#[cfg(test)]
mod conn_tests;
mod env;
mod login;
mod misc;
mod rx;
mod scsi;
mod task;
mod tmf;
mod tx;

pub use budget::{MemBudget, DEFAULT_BUDGET_BYTES};
pub use env::ConnEnv;
pub use rx::{FrameEvent, FrameLimits, RxBuffer};

/// Data-Out segments at least this long are received straight into the task's aligned
/// buffer (no copy through the receive buffer).
const DIRECT_RX_MIN: usize = 16 * 1024;

/// A Data-Out whose payload is being received straight into its task's buffer.
#[derive(Debug, Clone, Copy)]
struct DirectRx {
    accepted: scsi::AcceptedData,
    next: usize,
    end: usize,
    pad: usize,
    len: usize,
}

use crate::net::Transport;
use crate::session::{ConnRef, SessionKey};
use crate::target::Target;
use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::Instant;
use tandem_iscsi::login::LoginState;
use tandem_iscsi::params::SessionParams;
use tandem_iscsi::wire::{Bhs, Opcode, BHS_LEN};

use tandem_scsi::Nexus;
use task::TaskTable;
use tx::{TaskBuffers, TxQueue, TX_QUEUE_SOFT_MAX};

/// PDUs handled per connection per poll, so one busy initiator cannot starve the others.
const PDUS_PER_POLL: usize = 32;
/// Socket reads per poll.
const READS_PER_POLL: usize = 4;
/// Data segment limit during login (RFC 7143 §6.1: 8192 bytes).
const LOGIN_DATA_MAX: usize = 8192;
/// Size of the CmdSN window we advertise (ExpCmdSN..=MaxCmdSN).
const CMD_WINDOW: u32 = task::TASKS_MAX as u32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Login,
    FullFeature,
    /// Logout answered or fatal error: send what is queued, then close.
    Closing,
}

pub(crate) struct Session {
    key: SessionKey,
    discovery: bool,
    tsih: u16,
    params: SessionParams,
    target: Option<Arc<Target>>,
    /// Shared so the I/O path can hold it without copying its strings.
    nexus: std::sync::Arc<Nexus>,
    exp_cmdsn: u32,
    /// Highest MaxCmdSN advertised so far.
    max_cmdsn: u32,
}

pub struct PollResult {
    pub work: usize,
    /// PDUs received in this poll.
    pub pdus: usize,
    pub closed: bool,
}

pub struct Connection {
    pub id: u32,
    transport: Box<dyn Transport>,
    rx: RxBuffer,
    direct: Option<DirectRx>,
    pdus_seen: usize,
    /// Since when a closing connection waits for its transport to send what it took (a
    /// queued transport, `uring_tcp`); bounded, so a peer that never reads cannot keep it.
    closing_unsent_since: Option<Instant>,
    core: ConnCore,
}

pub(crate) struct ConnCore {
    id: u32,
    reactor: usize,
    phase: Phase,
    limits: FrameLimits,
    tx: TxQueue,
    statsn: u32,
    login: Option<LoginState>,
    session: Option<Session>,
    tasks: TaskTable,
    ready: VecDeque<usize>,
    /// Deferred tasks (conflicting range in flight), retried when their LU signals a
    /// release. Capacity for every slot, so parking never allocates.
    parked: Vec<usize>,
    /// Tasks waiting for the memory budget (write buffers, read replies), oldest first.
    held: VecDeque<usize>,
    /// Budget epoch at the last refusal: held tasks are retried only after a release.
    held_epoch: u64,
    /// Budget bytes held by this connection's tasks.
    mem_held: u64,
    released: Vec<usize>,
    pending_tmf: Vec<tmf::PendingTmf>,
    /// Counter for the completion slots of task management functions' device parts.
    next_tmf_slot: usize,
    pending_text: Option<misc::PendingText>,
    text_in: Option<misc::CollectingText>,
    local_addr: Option<std::net::SocketAddr>,
    peer: String,
    peer_ip: Option<std::net::IpAddr>,
    created: Instant,
    last_rx: Instant,
    ping: Option<(u32, Instant)>,
    next_ttt: u32,
    op_scratch: Vec<tandem_bdev::BdevOp>,
    /// Send-queue progress: (bytes written so far, when that count last changed).
    tx_progress: (u64, Instant),
    /// Our place in the per-address count of connections still logging in.
    prelogin: Option<crate::session::PreloginGuard>,
}

impl Connection {
    pub fn new(
        id: u32,
        reactor: usize,
        transport: Box<dyn Transport>,
        now: Instant,
        prelogin: Option<crate::session::PreloginGuard>,
    ) -> Connection {
        let limits = FrameLimits {
            header_digest: false,
            data_digest: false,
            max_data_len: LOGIN_DATA_MAX,
        };
        let local_addr = transport.local_addr();
        let peer_addr = transport.peer_addr();
        let peer = peer_addr
            .map(|a| a.to_string())
            .unwrap_or_else(|| "?".into());
        tracing::debug!(conn = id, %peer, "connection accepted");
        Connection {
            id,
            transport,
            rx: RxBuffer::new(RxBuffer::frame_max(&limits)),
            direct: None,
            pdus_seen: 0,
            closing_unsent_since: None,
            core: ConnCore {
                id,
                reactor,
                phase: Phase::Login,
                limits,
                tx: TxQueue::default(),
                statsn: rand_u32(),
                login: Some(LoginState::new(rand::random())),
                session: None,
                tasks: TaskTable::new(),
                ready: VecDeque::with_capacity(task::TASKS_MAX + task::IMMEDIATE_SLOTS),
                parked: Vec::with_capacity(task::TASKS_MAX + task::IMMEDIATE_SLOTS),
                held: VecDeque::with_capacity(task::TASKS_MAX + task::IMMEDIATE_SLOTS),
                held_epoch: 0,
                mem_held: 0,
                released: Vec::new(),
                pending_tmf: Vec::new(),
                next_tmf_slot: 0,
                pending_text: None,
                text_in: None,
                local_addr,
                peer,
                peer_ip: peer_addr.map(|a| a.ip()),
                created: now,
                last_rx: now,
                ping: None,
                next_ttt: 1,
                op_scratch: Vec::with_capacity(4),
                tx_progress: (0, now),
                prelogin,
            },
        }
    }

    pub fn poll_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.transport.poll_fd()
    }

    /// When this connection next needs a poll even if nothing arrives, so the reactor can
    /// sleep until then instead of spinning.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.core.next_deadline()
    }

    pub fn wants_write(&self) -> bool {
        !self.core.tx.is_empty()
    }

    pub fn target_iqn(&self) -> Option<&str> {
        self.core
            .session
            .as_ref()
            .and_then(|s| s.target.as_ref())
            .map(|t| t.iqn.as_str())
    }

    pub fn poll(&mut self, ctx: &mut impl ConnEnv) -> PollResult {
        let mut work = self.transport.progress();
        let mut closed = false;
        if self.core.phase != Phase::Closing {
            match self.read_and_handle(ctx) {
                Ok(n) => work += n,
                Err(e) => {
                    if e.kind() != io::ErrorKind::UnexpectedEof {
                        tracing::debug!(conn = self.id, peer = %self.core.peer, error = %e, "connection read failed");
                    }
                    closed = true;
                }
            }
        }
        work += self.core.run_ready(ctx);
        work += self.core.timers(ctx);
        if let Err(e) = self.flush(ctx) {
            tracing::debug!(conn = self.id, error = %e, "connection write failed");
            closed = true;
        }
        if self.core.phase == Phase::Closing && self.core.tx.is_empty() {
            if !self.transport.has_unsent() {
                closed = true;
            } else {
                let since = *self.closing_unsent_since.get_or_insert(ctx.now());
                if ctx.now().duration_since(since) > ctx.shared().timers.nop_timeout {
                    tracing::debug!(conn = self.id, "closing with bytes the peer never took");
                    closed = true;
                }
            }
        }
        if closed {
            self.close(ctx);
        }
        PollResult {
            work,
            pdus: std::mem::take(&mut self.pdus_seen),
            closed,
        }
    }

    /// Continues a direct receive; returns (bytes received, still in progress).
    fn direct_receive(&mut self, ctx: &mut impl ConnEnv) -> io::Result<(usize, bool)> {
        let Some(mut d) = self.direct else {
            return Ok((0, false));
        };
        let mut got = 0;
        for _ in 0..READS_PER_POLL {
            if d.next == d.end {
                break;
            }
            let Some(buf) = self.core.data_out_buf(d.accepted.slot) else {
                return Err(io::Error::other("task vanished during a direct receive"));
            };
            match self.transport.recv(&mut buf[d.next..d.end]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    d.next += n;
                    got += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if d.next < d.end {
            self.direct = Some(d);
            return Ok((got, true));
        }
        self.direct = None;
        self.rx.skip(d.pad);
        self.core.data_out_landed(ctx, d.accepted, d.len);
        Ok((got.max(1), false))
    }

    /// If the next PDU is a large Data-Out whose data has not all arrived, accepts its
    /// header and switches to receiving its payload straight into the task buffer.
    fn start_direct_receive(&mut self, ctx: &mut impl ConnEnv) -> bool {
        let limits = self.core.limits;
        let Some(p) = self.rx.peek_partial(&limits) else {
            return false;
        };
        if p.data_len < DIRECT_RX_MIN
            || Bhs::new_unchecked(&p.bhs[..]).opcode() != Some(Opcode::DataOut)
        {
            return false;
        }
        let accepted = self.core.accept_data_out(ctx, &p.bhs, p.data_len);
        let have = self.rx.take_partial(&p);
        let pad = tandem_iscsi::wire::pad4(p.data_len) - p.data_len;
        let Some(accepted) = accepted else {
            // Refused (and answered): throw its data away as it arrives.
            self.rx.skip(p.data_len - have.len() + pad);
            return true;
        };
        let start = accepted.buffer_offset;
        let n = have.len();
        if let Some(buf) = self.core.data_out_buf(accepted.slot) {
            buf[start..start + n].copy_from_slice(&self.rx.bytes()[have]);
        }
        self.direct = Some(DirectRx {
            accepted,
            next: start + n,
            end: start + p.data_len,
            pad,
            len: p.data_len,
        });
        true
    }

    fn read_and_handle(&mut self, ctx: &mut impl ConnEnv) -> io::Result<usize> {
        let mut work = 0;
        if self.direct.is_some() {
            let (n, pending) = self.direct_receive(ctx)?;
            work += n.min(1);
            if pending {
                return Ok(work);
            }
        }
        for _ in 0..READS_PER_POLL {
            if self.core.tx.len() >= TX_QUEUE_SOFT_MAX {
                break;
            }
            let frame_max = RxBuffer::frame_max(&self.core.limits);
            if self.rx.buffered() >= frame_max {
                break;
            }
            let space = self.rx.free_space(frame_max);
            match self.transport.recv(space) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    self.rx.advance_end(n);
                    self.core.last_rx = ctx.now();
                    work += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        let mut handled = 0;
        while handled < PDUS_PER_POLL && self.core.phase != Phase::Closing {
            let limits = self.core.limits;
            if self.core.phase == Phase::FullFeature && self.start_direct_receive(ctx) {
                handled += 1;
                if self.direct.is_some() {
                    let (_, pending) = self.direct_receive(ctx)?;
                    if pending {
                        break;
                    }
                }
                continue;
            }
            let Some(ev) = self.rx.next_frame(&limits) else {
                break;
            };
            handled += 1;
            self.core.handle_event(ctx, ev, self.rx.bytes());
            // Login may have changed the limits (digests, segment size) for the next PDU.
        }
        self.pdus_seen += handled;
        Ok(work + handled)
    }

    fn flush(&mut self, ctx: &mut impl ConnEnv) -> io::Result<()> {
        self.core.flush(ctx, self.transport.as_mut())
    }

    /// Ends the connection: the session (single connection per session) goes with it.
    fn close(&mut self, ctx: &mut impl ConnEnv) {
        self.transport.shutdown();
        self.core.teardown(ctx);
    }

    /// Closes the socket of a connection that never logged in (nothing else to tear down).
    pub fn shutdown_transport(&mut self) {
        self.transport.shutdown();
    }

    /// Forced close from another thread's request (reinstatement, target removal).
    pub fn kill(&mut self, ctx: &mut impl ConnEnv) {
        tracing::info!(conn = self.id, peer = %self.core.peer, "closing connection on request");
        self.close(ctx);
    }

    pub fn on_io_complete(
        &mut self,
        ctx: &mut impl ConnEnv,
        slot: usize,
        c: tandem_bdev::Completion,
    ) {
        self.core.on_io_complete(ctx, slot, c);
    }
}

impl TaskBuffers for TaskTable {
    fn task_buf(&self, slot: usize) -> &[u8] {
        match self.get(slot).map(|t| &t.stage) {
            Some(task::Stage::Responding(r)) => r.io_buf.as_deref().unwrap_or(&[]),
            _ => &[],
        }
    }
}

impl ConnCore {
    /// Writes what the transport takes; frees the tasks whose last PDU has left.
    fn flush(&mut self, ctx: &mut impl ConnEnv, transport: &mut dyn Transport) -> io::Result<()> {
        let mut released = std::mem::take(&mut self.released);
        let r = self.tx.flush(transport, &self.tasks, &mut released);
        for slot in released.drain(..) {
            self.free_task(ctx, slot);
        }
        self.released = released;
        r
    }

    fn conn_ref(&self) -> ConnRef {
        ConnRef {
            reactor: self.reactor,
            conn_id: self.id,
        }
    }

    fn handle_event(&mut self, ctx: &mut impl ConnEnv, ev: FrameEvent, bytes: &[u8]) {
        match ev {
            FrameEvent::Pdu(frame) => {
                let data = &bytes[frame.data.clone()];
                self.handle_pdu(ctx, &frame.bhs, data);
            }
            FrameEvent::Oversize { bhs, data_len } => {
                tracing::warn!(conn = self.id, peer = %self.peer, data_len, limit = self.limits.max_data_len,
                    "PDU data segment larger than negotiated; rejected");
                if self.phase == Phase::Login {
                    self.phase = Phase::Closing;
                } else {
                    self.send_reject(tandem_iscsi::wire::reject::PROTOCOL_ERROR, &bhs);
                }
            }
            FrameEvent::HeaderDigestError => {
                tracing::warn!(conn = self.id, peer = %self.peer, "header digest error; closing the connection");
                self.phase = Phase::Closing;
            }
            FrameEvent::DataDigestError { bhs } => {
                tracing::warn!(conn = self.id, peer = %self.peer, "data digest error; PDU rejected");
                self.send_reject(tandem_iscsi::wire::reject::DATA_DIGEST_ERROR, &bhs);
            }
        }
    }

    fn handle_pdu(&mut self, ctx: &mut impl ConnEnv, bhs: &[u8; BHS_LEN], data: &[u8]) {
        let view = Bhs::new_unchecked(&bhs[..]);
        let Some(op) = view.opcode() else {
            tracing::warn!(
                conn = self.id,
                opcode = view.opcode_raw(),
                "unknown opcode; rejected"
            );
            if self.phase == Phase::Login {
                self.phase = Phase::Closing;
            } else {
                self.send_reject(tandem_iscsi::wire::reject::COMMAND_NOT_SUPPORTED, bhs);
            }
            return;
        };
        if self.phase == Phase::Login {
            if op == Opcode::LoginRequest {
                self.on_login(ctx, bhs, data);
            } else {
                tracing::warn!(conn = self.id, ?op, "PDU before login completed; closing");
                self.phase = Phase::Closing;
            }
            return;
        }
        match op {
            Opcode::ScsiCommand => self.on_scsi_command(ctx, bhs, data),
            Opcode::DataOut => self.on_data_out(ctx, bhs, data),
            Opcode::NopOut => self.on_nop_out(bhs, data),
            Opcode::TaskMgmtRequest => self.on_tmf(ctx, bhs),
            Opcode::TextRequest => self.on_text(ctx, bhs, data),
            Opcode::LogoutRequest => self.on_logout(ctx, bhs),
            Opcode::LoginRequest => {
                tracing::warn!(
                    conn = self.id,
                    "login request in full feature phase; rejected"
                );
                self.send_reject(tandem_iscsi::wire::reject::PROTOCOL_ERROR, bhs);
            }
            Opcode::SnackRequest => {
                // ErrorRecoveryLevel 0: we never retransmit.
                self.send_reject(tandem_iscsi::wire::reject::PROTOCOL_ERROR, bhs);
            }
            _ => {
                tracing::warn!(
                    conn = self.id,
                    ?op,
                    "target-only opcode from initiator; rejected"
                );
                self.send_reject(tandem_iscsi::wire::reject::PROTOCOL_ERROR, bhs);
            }
        }
    }

    /// Advances ExpCmdSN for a non-immediate PDU. Returns false if the CmdSN is outside the
    /// window: RFC 7143 §4.2.2.1 says such a PDU is silently ignored.
    fn accept_cmdsn(&mut self, cmdsn: u32, immediate: bool) -> bool {
        let Some(s) = self.session.as_mut() else {
            return false;
        };
        if immediate {
            return true;
        }
        let in_window = sn_le(s.exp_cmdsn, cmdsn) && sn_le(cmdsn, s.max_cmdsn);
        if !in_window {
            tracing::warn!(
                conn = self.id,
                cmdsn,
                exp = s.exp_cmdsn,
                "CmdSN outside the window; PDU ignored"
            );
            return false;
        }
        // One connection per session: TCP keeps order, so a gap can only be initiator
        // numbering; we follow it rather than stall.
        s.exp_cmdsn = cmdsn.wrapping_add(1);
        true
    }

    fn exp_cmdsn(&self) -> u32 {
        self.session.as_ref().map(|s| s.exp_cmdsn).unwrap_or(0)
    }

    /// MaxCmdSN we advertise: the room left in the task table, but never below what we
    /// advertised before (the initiator may already be sending up to it). `accept_cmdsn`
    /// admits exactly this window, so MaxCmdSN+1 is always ignored.
    fn max_cmdsn(&mut self) -> u32 {
        let free = (task::TASKS_MAX - self.tasks.len().min(task::TASKS_MAX)) as u32;
        let Some(s) = self.session.as_mut() else {
            return 0;
        };
        let candidate = s.exp_cmdsn.wrapping_add(free.max(1)).wrapping_sub(1);
        if !sn_le(candidate, s.max_cmdsn) {
            s.max_cmdsn = candidate;
        }
        s.max_cmdsn
    }

    fn next_statsn(&mut self) -> u32 {
        let s = self.statsn;
        self.statsn = self.statsn.wrapping_add(1);
        s
    }

    fn new_ttt(&mut self) -> u32 {
        let t = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == u32::MAX {
            self.next_ttt = 1;
        }
        t
    }

    /// Nothing a connection holds needs a timed wake-up: parked tasks are woken by their
    /// logical unit's release signal (`Releases`), and connection timers (NOP-In, login and
    /// send timeouts) have second granularity and run within the reactor's 100 ms sleep cap.
    /// That cap is also the documented fallback should a release wake-up ever be missed:
    /// every poll re-checks the parked tasks' release generations.
    fn next_deadline(&self) -> Option<Instant> {
        None
    }

    fn timers(&mut self, ctx: &mut impl ConnEnv) -> usize {
        match self.phase {
            Phase::Login => {
                if ctx.now().duration_since(self.created) > ctx.shared().timers.login_timeout {
                    tracing::warn!(conn = self.id, peer = %self.peer, "login not finished in time; closing");
                    self.phase = Phase::Closing;
                    return 1;
                }
                0
            }
            Phase::FullFeature => {
                let timers = ctx.shared().timers;
                let now = ctx.now();
                // An initiator that stops reading its replies holds its share of the memory
                // budget; after as long as a silent initiator is tolerated, it is closed.
                let sent = self.tx.bytes_sent();
                if self.tx.is_empty() || sent != self.tx_progress.0 {
                    self.tx_progress = (sent, now);
                } else if now.duration_since(self.tx_progress.1)
                    > timers.nop_timeout + timers.nop_interval.unwrap_or_default()
                {
                    tracing::warn!(conn = self.id, peer = %self.peer,
                        "initiator does not read its replies; closing");
                    self.phase = Phase::Closing;
                    return 1;
                }
                self.nop_ping(now, timers)
            }
            Phase::Closing => 0,
        }
    }

    fn teardown(&mut self, ctx: &mut impl ConnEnv) {
        self.phase = Phase::Closing;
        let slots: Vec<usize> = self.tasks.slots().collect();
        for slot in slots {
            let in_io = self
                .tasks
                .get(slot)
                .map(|t| matches!(t.stage, task::Stage::InIo(_) | task::Stage::Aborted(_)))
                .unwrap_or(false);
            if in_io {
                // Its completion will find no connection (the buffer is dropped then); the
                // budget it holds is given back now.
                self.release(ctx, slot, true, true);
            } else {
                self.free_task(ctx, slot);
            }
        }
        if let Some(s) = self.session.take() {
            if let Some(t) = &s.target {
                for dev in &t.luns {
                    dev.lu.nexus_removed(s.nexus.id);
                }
            }
            ctx.shared().sessions.remove(&s.key, self.conn_ref());
            tracing::info!(conn = self.id, peer = %self.peer, initiator = %s.key.initiator,
                target = %s.key.target, tsih = s.tsih, "session closed");
        }
    }
}

/// Serial number arithmetic (RFC 1982) for CmdSN/StatSN.
pub(crate) fn sn_le(a: u32, b: u32) -> bool {
    a == b || (b.wrapping_sub(a) as i32) > 0
}

fn rand_u32() -> u32 {
    // Initial StatSN: any value; derive it from the clock rather than pull in a RNG here.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (t.subsec_nanos() ^ (t.as_secs() as u32).rotate_left(16)) & 0x0fff_ffff
}

#[cfg(test)]
mod tests {
    use super::sn_le;

    #[test]
    fn serial_number_compare_wraps() {
        assert!(sn_le(5, 5));
        assert!(sn_le(5, 6));
        assert!(!sn_le(6, 5));
        assert!(sn_le(u32::MAX, 0));
        assert!(!sn_le(0, u32::MAX));
    }
}
