//! A reactor: one thread, pinned to one core, that owns its connections and its I/O
//! channels and polls them in a loop. Other threads talk to it only through its inbox.
//!
//! Idle policy (`PollMode::Adaptive`): after a poll that found no work the reactor keeps
//! spinning for `spin` (yielding the CPU between polls), then sleeps in `epoll_wait` on its
//! sockets and inbox eventfd, so a client sharing the machine is not starved.
//! `PollMode::Always` never sleeps, for dedicated cores.
//!
//! A reactor may also own userspace TCP stacks (smoltcp on a TAP, `net::utcp`): it polls
//! each one every loop (before the connections, for what arrived, and after them, for what
//! they queued), takes their new connections as its own, sleeps on their TAP descriptors,
//! and wakes in time for their timers.

use crate::conn::Connection;
use crate::net::utcp::{UserspaceStack, UtcpPortal};
use crate::net::{SocketIo, Transport};
use crate::reactor_ctx::{split_tag, ReactorCtx, ReactorMsg, Shared};
use crate::stats::ReactorStats;
use crossbeam_channel::Receiver;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::EventFd;
use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PollMode {
    Always,
    Adaptive,
}

#[derive(Clone, Debug)]
pub struct ReactorConfig {
    pub id: usize,
    pub core: Option<usize>,
    pub poll_mode: PollMode,
    /// How long an idle reactor keeps polling before it sleeps.
    pub spin: Duration,
    /// Socket I/O of kernel TCP connections: syscalls, or through the reactor's io_uring.
    pub socket_io: SocketIo,
}

/// Longest sleep, so connection timers (NOP pings, login timeouts) still run.
const SLEEP_MAX_MS: u16 = 100;
/// Messages taken from the inbox per loop.
const INBOX_PER_POLL: usize = 64;
/// Connections one reactor serves at most.
pub const CONNECTIONS_MAX: usize = 1024;
const WAKE_TOKEN: u64 = u64::MAX;
/// epoll tokens of userspace stacks count down from here (connection ids are u32).
const STACK_TOKEN_BASE: u64 = u64::MAX - 1;

/// Builds the userspace stacks handed to this reactor and watches their TAP descriptors.
fn start_stacks(reactor: usize, portals: Vec<UtcpPortal>, epoll: &Epoll) -> Vec<UserspaceStack> {
    let mut stacks = Vec::new();
    for p in portals {
        let portal = p.cfg.portal();
        match UserspaceStack::from_portal(p) {
            Ok(s) => {
                let token = STACK_TOKEN_BASE - stacks.len() as u64;
                if let Err(e) = epoll.add(s.poll_fd(), EpollEvent::new(EpollFlags::EPOLLIN, token))
                {
                    tracing::error!(reactor, %portal, error = %e, "cannot watch the TAP descriptor");
                }
                stacks.push(s);
            }
            Err(e) => {
                tracing::error!(reactor, %portal, error = %e, "userspace TCP portal failed to start")
            }
        }
    }
    stacks
}

/// Polls every userspace stack; returns the work done.
fn poll_stacks(stacks: &[UserspaceStack], now: Instant) -> usize {
    stacks.iter().map(|s| s.poll(now)).sum()
}

/// The epoll timeout: the sleep cap, shortened to the nearest userspace TCP timer or
/// connection deadline; at least 1 ms: timers already due ran while the reactor spun before
/// sleeping. (A parked task sets no deadline: the logical unit that deferred it wakes this
/// reactor through its inbox eventfd when it releases a range, from whichever thread.)
fn sleep_timeout(
    stacks: &[UserspaceStack],
    conn_deadline: Option<Instant>,
    now: Instant,
) -> EpollTimeout {
    let cap = Duration::from_millis(SLEEP_MAX_MS as u64);
    let next = stacks
        .iter()
        .filter_map(|s| s.poll_delay(now))
        .chain(conn_deadline.map(|d| d.saturating_duration_since(now)))
        .min()
        .unwrap_or(cap);
    let ms = next.min(cap).as_millis().clamp(1, SLEEP_MAX_MS as u128) as u16;
    EpollTimeout::from(ms)
}

pub fn run(
    cfg: ReactorConfig,
    shared: Arc<Shared>,
    inbox: Receiver<ReactorMsg>,
    wake: Arc<EventFd>,
    stats: Arc<ReactorStats>,
    utcp: Vec<UtcpPortal>,
) {
    if let Some(core) = cfg.core {
        if !tandem_ffi::pin_current_thread(core) {
            tracing::warn!(reactor = cfg.id, core, "could not pin reactor thread");
        }
    }
    let epoll = match Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(reactor = cfg.id, error = %e, "epoll_create failed; reactor stops");
            return;
        }
    };
    if let Err(e) = epoll.add(
        wake.as_fd(),
        EpollEvent::new(EpollFlags::EPOLLIN, WAKE_TOKEN),
    ) {
        tracing::error!(reactor = cfg.id, error = %e, "cannot watch the inbox eventfd");
    }
    let stacks = start_stacks(cfg.id, utcp, &epoll);
    let mut ctx = ReactorCtx::new(cfg.id, shared.clone());
    if let Some(fd) = ctx.io_wake_fd() {
        if let Err(e) = epoll.add(fd, EpollEvent::new(EpollFlags::EPOLLIN, WAKE_TOKEN)) {
            tracing::warn!(reactor = cfg.id, error = %e, "cannot watch disk completions");
        }
    }
    let mut conns: HashMap<u32, Connection> = HashMap::new();
    let mut watching_out: HashMap<u32, bool> = HashMap::new();
    let mut next_conn_id: u32 = 1;
    let mut completions = Vec::with_capacity(256);
    let mut closed = Vec::new();
    let mut idle_since: Option<Instant> = None;
    let mut events = [EpollEvent::empty(); 64];
    tracing::debug!(reactor = cfg.id, core = ?cfg.core, mode = ?cfg.poll_mode, "reactor started");
    'outer: loop {
        ctx.now = Instant::now();
        let mut work = 0usize;
        for _ in 0..INBOX_PER_POLL {
            let Ok(msg) = inbox.try_recv() else { break };
            work += 1;
            match msg {
                ReactorMsg::NewConnection(stream) => {
                    let transport = kernel_transport(&cfg, &ctx, stream);
                    admit(
                        &cfg,
                        &ctx,
                        &epoll,
                        &mut conns,
                        &mut watching_out,
                        &mut next_conn_id,
                        transport,
                    );
                }
                ReactorMsg::CloseConnection { conn_id } => {
                    if let Some(mut c) = conns.remove(&conn_id) {
                        if let Some(fd) = c.poll_fd() {
                            let _ = epoll.delete(fd);
                        }
                        c.kill(&mut ctx);
                        watching_out.remove(&conn_id);
                    }
                }
                ReactorMsg::CloseTarget { iqn } => {
                    let ids: Vec<u32> = conns
                        .iter()
                        .filter(|(_, c)| c.target_iqn() == Some(iqn.as_str()))
                        .map(|(id, _)| *id)
                        .collect();
                    for id in ids {
                        if let Some(mut c) = conns.remove(&id) {
                            if let Some(fd) = c.poll_fd() {
                                let _ = epoll.delete(fd);
                            }
                            c.kill(&mut ctx);
                            watching_out.remove(&id);
                        }
                    }
                }
                ReactorMsg::ForgetDevice { device_id } => ctx.forget_device(device_id),
                ReactorMsg::Shutdown => break 'outer,
            }
        }
        if !stacks.is_empty() {
            work += poll_stacks(&stacks, ctx.now);
            for s in &stacks {
                while let Some(t) = s.accept() {
                    work += 1;
                    admit(
                        &cfg,
                        &ctx,
                        &epoll,
                        &mut conns,
                        &mut watching_out,
                        &mut next_conn_id,
                        t,
                    );
                }
            }
        }
        for (id, conn) in conns.iter_mut() {
            let r = conn.poll(&mut ctx);
            work += r.work;
            if r.pdus > 0 {
                stats.pdus.fetch_add(r.pdus as u64, Ordering::Relaxed);
            }
            if r.closed {
                closed.push(*id);
            }
        }
        completions.clear();
        let n = ctx.poll_channels(&mut completions);
        if n > 0 {
            work += n;
            stats.ios.fetch_add(n as u64, Ordering::Relaxed);
            for c in completions.drain(..) {
                let (conn_id, slot) = split_tag(c.tag);
                if let Some(conn) = conns.get_mut(&conn_id) {
                    conn.on_io_complete(&mut ctx, slot, c);
                }
                // Otherwise the connection is gone; dropping the completion frees its buffer.
            }
        }
        if !stacks.is_empty() {
            // Send at once what the connections just queued.
            work += poll_stacks(&stacks, Instant::now());
        }
        for id in closed.drain(..) {
            if let Some(c) = conns.remove(&id) {
                if let Some(fd) = c.poll_fd() {
                    let _ = epoll.delete(fd);
                }
            }
            watching_out.remove(&id);
        }
        if let Some(h) = shared.reactor(cfg.id) {
            h.connections.store(conns.len(), Ordering::Relaxed);
        }
        if work > 0 {
            idle_since = None;
            stats.busy_polls.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        stats.idle_polls.fetch_add(1, Ordering::Relaxed);
        if cfg.poll_mode == PollMode::Always {
            std::hint::spin_loop();
            continue;
        }
        let since = *idle_since.get_or_insert(ctx.now);
        if ctx.now.duration_since(since) < cfg.spin || ctx.must_keep_polling() {
            // Spin phase, or work in flight that cannot wake us: keep polling, but give the
            // CPU to whoever else needs it (often the initiator on the same machine).
            std::thread::yield_now();
            continue;
        }
        let mut conn_deadline: Option<Instant> = None;
        for (id, conn) in conns.iter() {
            if let Some(d) = conn.next_deadline() {
                conn_deadline = Some(conn_deadline.map_or(d, |c| c.min(d)));
            }
            let want = conn.wants_write();
            if watching_out.get(id).copied() != Some(want) {
                if let Some(fd) = conn.poll_fd() {
                    let flags = if want {
                        EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT
                    } else {
                        EpollFlags::EPOLLIN
                    };
                    let _ = epoll.modify(fd, &mut EpollEvent::new(flags, *id as u64));
                }
                watching_out.insert(*id, want);
            }
        }
        // Nothing queued on the ring may wait for a wake-up only its completion could bring,
        // and nothing already completed may wait for one that will not come.
        if !ctx.ring_ready_to_sleep() {
            continue;
        }
        stats.sleeps.fetch_add(1, Ordering::Relaxed);
        let _ = epoll.wait(
            &mut events,
            sleep_timeout(&stacks, conn_deadline, Instant::now()),
        );
        let _ = wake.read();
    }
    for (_, mut c) in conns.drain() {
        c.kill(&mut ctx);
    }
    // Userspace connections just queued their FIN; send it (the kernel does this for its own
    // sockets after we exit). Bounded: a few polls, no waiting for the peer.
    for _ in 0..3 {
        if poll_stacks(&stacks, Instant::now()) == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    tracing::debug!(reactor = cfg.id, "reactor stopped");
}

/// The transport for an accepted kernel TCP socket, per `socket_io` (syscalls when the
/// reactor has no io_uring).
fn kernel_transport(
    cfg: &ReactorConfig,
    ctx: &ReactorCtx,
    stream: std::net::TcpStream,
) -> Box<dyn Transport> {
    match (cfg.socket_io, ctx.ring()) {
        (SocketIo::Uring, Some(ring)) => {
            Box::new(crate::net::uring_tcp::UringTcp::new(stream, ring))
        }
        _ => Box::new(crate::net::tcp::KernelTcp::from_prepared(stream)),
    }
}

/// Takes a new connection into this reactor (or refuses it at the connection limit).
fn admit(
    cfg: &ReactorConfig,
    ctx: &ReactorCtx,
    epoll: &Epoll,
    conns: &mut HashMap<u32, Connection>,
    watching_out: &mut HashMap<u32, bool>,
    next_conn_id: &mut u32,
    transport: Box<dyn Transport>,
) {
    let (shared, now) = (&ctx.shared, ctx.now);
    if conns.len() >= CONNECTIONS_MAX {
        tracing::warn!(
            reactor = cfg.id,
            "connection limit reached; refusing a connection"
        );
        return;
    }
    let id = *next_conn_id;
    *next_conn_id = next_conn_id.wrapping_add(1).max(1);
    let prelogin = transport.peer_addr().map(|peer| {
        let me = crate::session::ConnRef {
            reactor: cfg.id,
            conn_id: id,
        };
        let (guard, evicted) =
            shared
                .prelogin
                .enter(peer.ip(), shared.timers.prelogin_per_addr, me);
        if let Some(old) = evicted {
            tracing::warn!(reactor = cfg.id, %peer, old_conn = old.conn_id,
                "too many connections from this address still logging in; closing its oldest");
            evict(cfg, shared, epoll, conns, watching_out, old);
        }
        guard
    });
    let conn = Connection::new(id, cfg.id, transport, now, prelogin);
    if let Some(fd) = conn.poll_fd() {
        let _ = epoll.add(fd, EpollEvent::new(EpollFlags::EPOLLIN, id as u64));
    }
    watching_out.insert(id, false);
    conns.insert(id, conn);
}

/// Closes a pre-login connection evicted by a newer one from the same address: here if it
/// is ours, else through its reactor's inbox.
fn evict(
    cfg: &ReactorConfig,
    shared: &Shared,
    epoll: &Epoll,
    conns: &mut HashMap<u32, Connection>,
    watching_out: &mut HashMap<u32, bool>,
    old: crate::session::ConnRef,
) {
    if old.reactor == cfg.id {
        if let Some(mut c) = conns.remove(&old.conn_id) {
            if let Some(fd) = c.poll_fd() {
                let _ = epoll.delete(fd);
            }
            c.shutdown_transport();
            watching_out.remove(&old.conn_id);
        }
    } else if let Some(r) = shared.reactor(old.reactor) {
        if r.send(ReactorMsg::CloseConnection {
            conn_id: old.conn_id,
        })
        .is_err()
        {
            tracing::error!(
                reactor = old.reactor,
                conn = old.conn_id,
                "cannot reach a reactor to close an evicted pre-login connection"
            );
        }
    }
}
