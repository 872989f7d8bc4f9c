//! A reactor: one thread, pinned to one core, that owns its connections and its I/O
//! channels and polls them in a loop. Other threads talk to it only through its inbox.
//!
//! Idle policy (`PollMode::Adaptive`): after a poll that found no work the reactor keeps
//! spinning for `spin` (yielding the CPU between polls), then sleeps in `epoll_wait` on its
//! sockets and inbox eventfd, so a client sharing the machine is not starved.
//! `PollMode::Always` never sleeps, for dedicated cores.

use crate::conn::Connection;
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
}

/// Longest sleep, so connection timers (NOP pings, login timeouts) still run.
const SLEEP_MAX_MS: u16 = 100;
/// Messages taken from the inbox per loop.
const INBOX_PER_POLL: usize = 64;
/// Connections one reactor serves at most.
pub const CONNECTIONS_MAX: usize = 1024;
const WAKE_TOKEN: u64 = u64::MAX;

pub fn run(
    cfg: ReactorConfig,
    shared: Arc<Shared>,
    inbox: Receiver<ReactorMsg>,
    wake: Arc<EventFd>,
    stats: Arc<ReactorStats>,
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
    let mut ctx = ReactorCtx::new(cfg.id, shared.clone());
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
                ReactorMsg::NewConnection(transport) => {
                    if conns.len() >= CONNECTIONS_MAX {
                        tracing::warn!(
                            reactor = cfg.id,
                            "connection limit reached; refusing a connection"
                        );
                        continue;
                    }
                    let id = next_conn_id;
                    next_conn_id = next_conn_id.wrapping_add(1).max(1);
                    let conn = Connection::new(id, cfg.id, transport, ctx.now);
                    if let Some(fd) = conn.poll_fd() {
                        let _ = epoll.add(fd, EpollEvent::new(EpollFlags::EPOLLIN, id as u64));
                    }
                    watching_out.insert(id, false);
                    conns.insert(id, conn);
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
                ReactorMsg::Shutdown => break 'outer,
            }
        }
        for (id, conn) in conns.iter_mut() {
            let r = conn.poll(&mut ctx);
            work += r.work;
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
        if ctx.now.duration_since(since) < cfg.spin || ctx.io_in_flight() > 0 {
            // Completions of in-flight disk I/O do not wake epoll; keep polling, but give the
            // CPU to whoever else needs it (often the initiator on the same machine).
            std::thread::yield_now();
            continue;
        }
        for (id, conn) in conns.iter() {
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
        stats.sleeps.fetch_add(1, Ordering::Relaxed);
        let _ = epoll.wait(&mut events, EpollTimeout::from(SLEEP_MAX_MS));
        let _ = wake.read();
    }
    for (_, mut c) in conns.drain() {
        c.kill(&mut ctx);
    }
    tracing::debug!(reactor = cfg.id, "reactor stopped");
}
