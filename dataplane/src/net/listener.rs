//! Portal listeners: accept TCP connections and hand each to the least-loaded reactor.

use crate::net::tcp::prepare;
use crate::reactor_ctx::{ReactorMsg, Shared};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Connections accepted node-wide at most; beyond it new connections are closed at once.
pub const NODE_CONNECTIONS_MAX: usize = 4096;

pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let l = TcpListener::bind(addr)?;
    // Non-blocking so the accept loop can notice shutdown.
    l.set_nonblocking(true)?;
    Ok(l)
}

pub fn run(listener: TcpListener, shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    let local = listener.local_addr().ok();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                let Some(reactors) = shared.reactors.get() else {
                    continue;
                };
                let total: usize = reactors
                    .iter()
                    .map(|r| r.connections.load(Ordering::Relaxed))
                    .sum();
                if total >= NODE_CONNECTIONS_MAX {
                    tracing::warn!(%peer, "node connection limit reached; closing new connection");
                    continue;
                }
                let Some((idx, r)) = reactors
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, r)| r.connections.load(Ordering::Relaxed))
                else {
                    continue;
                };
                match prepare(stream) {
                    Ok(t) => {
                        // Count it now so a burst of accepts spreads over reactors.
                        r.connections.fetch_add(1, Ordering::Relaxed);
                        if r.send(ReactorMsg::NewConnection(t)).is_err() {
                            // Waited and still full: the socket is closed (the initiator
                            // sees a reset and retries), and the count given back.
                            r.connections.fetch_sub(1, Ordering::Relaxed);
                            tracing::error!(%peer, reactor = idx, "reactor inbox stays full; connection closed");
                        }
                    }
                    Err(e) => tracing::warn!(%peer, error = %e, "cannot set up accepted socket"),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => {
                tracing::warn!(portal = ?local, error = %e, "accept failed");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}
