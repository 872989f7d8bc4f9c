//! How the replication thread reaches one partner: a small trait the sync-link crate
//! (`tandem-synclink`) implements, and an in-process implementation for tests.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::Mutex;
use tandem_config::ipc::HaLinkStatus;
use tandem_ffi::EventFd;
use tandem_ha::{Envelope, NodeId};
use tandem_mirror::SharedPayload;

/// What happened on the links to one partner.
#[derive(Debug)]
pub enum PeerEvent {
    /// A message from the partner, in order, exactly once per partner incarnation.
    Message(Envelope<SharedPayload>),
    /// The first link to the partner came up.
    Connected { peer_boot_id: u64 },
    /// The partner process restarted (messages to its former incarnation are lost).
    PeerRestarted { peer_boot_id: u64 },
    /// No link to the partner is up.
    AllLinksDown,
    /// One link came up.
    LinkUp { link: String },
    /// One link went down.
    LinkDown { link: String, reason: String },
}

/// The send queue towards the partner is full: keep the message and try again later.
/// Boxed: the rare path should not make every `send` result as large as a `SyncOffer`.
#[derive(Debug)]
pub struct Full(pub Box<Envelope<SharedPayload>>);

/// One partner's sync links, driven by the replication thread (non-blocking).
pub trait PeerTransport: Send {
    /// Queues a message; exactly-once, in-order delivery to the partner's current incarnation.
    fn send(&mut self, env: Envelope<SharedPayload>) -> Result<(), Full>;
    /// Does socket work and appends what happened.
    fn poll(&mut self, now: Instant, events: &mut Vec<PeerEvent>);
    /// Descriptors to wait on when idle, with whether writability matters.
    fn wait_fds(&self, fds: &mut Vec<(RawFd, bool)>);
    /// When `poll` must run again at the latest (timers).
    fn next_deadline(&self) -> Option<Instant>;
    /// Per-link state for the control service.
    fn status(&self) -> Vec<HaLinkStatus>;
    /// Whether any link is up.
    fn is_up(&self) -> bool;
    /// Payload and frame bytes sent so far.
    fn bytes_sent(&self) -> u64;
}

type Inbox = (Sender<Envelope<SharedPayload>>, Arc<EventFd>, u64);

/// An in-process "network" for tests: transports register an inbox per (me, peer) pair;
/// a message to a partner that is not registered (stopped) is lost, like on a dead link.
#[derive(Default, Clone)]
pub struct MemNet {
    inner: Arc<Mutex<MemNetInner>>,
}

#[derive(Default)]
struct MemNetInner {
    /// (receiver node, sender node) → inbox.
    inboxes: HashMap<(NodeId, NodeId), Inbox>,
    next_incarnation: u64,
    /// Pairs whose link is cut (both directions).
    cut: Vec<(NodeId, NodeId)>,
}

impl MemNet {
    pub fn new() -> MemNet {
        MemNet::default()
    }

    /// The transport `me` uses to reach `peer`.
    pub fn transport(&self, me: NodeId, peer: NodeId) -> std::io::Result<MemTransport> {
        let (tx, rx) = crossbeam_channel::bounded(65536);
        let wake = Arc::new(EventFd::new()?);
        let mut g = self.inner.lock();
        g.next_incarnation += 1;
        let incarnation = g.next_incarnation;
        g.inboxes
            .insert((me, peer), (tx, wake.clone(), incarnation));
        Ok(MemTransport {
            net: self.clone(),
            me,
            peer,
            rx,
            wake,
            incarnation,
            peer_seen: None,
            sent: 0,
        })
    }

    /// Delivers `env` to `to` as if `from` had sent it (tests of what a partner may send).
    pub fn inject(&self, from: NodeId, to: NodeId, env: Envelope<SharedPayload>) -> bool {
        let g = self.inner.lock();
        let Some((tx, wake, _)) = g.inboxes.get(&(to, from)) else {
            return false;
        };
        let ok = tx.try_send(env).is_ok();
        let _ = wake.notify();
        ok
    }

    /// Cuts or heals the link between two nodes (messages sent while cut are lost).
    pub fn set_cut(&self, a: NodeId, b: NodeId, cut: bool) {
        let mut g = self.inner.lock();
        g.cut.retain(|p| *p != (a, b) && *p != (b, a));
        if cut {
            g.cut.push((a, b));
        }
    }
}

/// One direction pair of the in-process network.
pub struct MemTransport {
    net: MemNet,
    me: NodeId,
    peer: NodeId,
    rx: Receiver<Envelope<SharedPayload>>,
    wake: Arc<EventFd>,
    incarnation: u64,
    peer_seen: Option<u64>,
    sent: u64,
}

impl Drop for MemTransport {
    fn drop(&mut self) {
        let mut g = self.net.inner.lock();
        if g.inboxes
            .get(&(self.me, self.peer))
            .is_some_and(|i| i.2 == self.incarnation)
        {
            g.inboxes.remove(&(self.me, self.peer));
        }
    }
}

impl PeerTransport for MemTransport {
    fn send(&mut self, env: Envelope<SharedPayload>) -> Result<(), Full> {
        let g = self.net.inner.lock();
        if g.cut
            .iter()
            .any(|p| *p == (self.me, self.peer) || *p == (self.peer, self.me))
        {
            return Ok(());
        }
        let Some((tx, wake, _)) = g.inboxes.get(&(self.peer, self.me)) else {
            return Ok(()); // partner down: lost
        };
        self.sent += tandem_mirror::payload_parts(&env.msg)
            .iter()
            .flatten()
            .map(|p| p.as_slice().len() as u64)
            .sum::<u64>()
            + 32;
        match tx.try_send(env) {
            Ok(()) => {
                let _ = wake.notify();
                Ok(())
            }
            Err(TrySendError::Full(env)) => Err(Full(Box::new(env))),
            Err(TrySendError::Disconnected(_)) => Ok(()),
        }
    }

    fn poll(&mut self, _now: Instant, events: &mut Vec<PeerEvent>) {
        self.wake.drain();
        let peer_inc = self
            .net
            .inner
            .lock()
            .inboxes
            .get(&(self.peer, self.me))
            .map(|i| i.2);
        if peer_inc != self.peer_seen {
            match (self.peer_seen, peer_inc) {
                (None, Some(b)) => events.push(PeerEvent::Connected { peer_boot_id: b }),
                (Some(_), Some(b)) => events.push(PeerEvent::PeerRestarted { peer_boot_id: b }),
                (_, None) => events.push(PeerEvent::AllLinksDown),
            }
            self.peer_seen = peer_inc;
        }
        for _ in 0..1024 {
            match self.rx.try_recv() {
                Ok(env) => events.push(PeerEvent::Message(env)),
                Err(_) => break,
            }
        }
        if !self.rx.is_empty() {
            let _ = self.wake.notify();
        }
    }

    fn wait_fds(&self, fds: &mut Vec<(RawFd, bool)>) {
        fds.push((self.wake.as_raw_fd(), false));
    }

    fn next_deadline(&self) -> Option<Instant> {
        // Partner arrival and departure are only noticed by polling: a slow timer.
        Some(Instant::now() + std::time::Duration::from_millis(100))
    }

    fn status(&self) -> Vec<HaLinkStatus> {
        vec![HaLinkStatus {
            link: format!("mem:{}={}", self.me, self.peer),
            up: self.is_up(),
            last_error: None,
        }]
    }

    fn is_up(&self) -> bool {
        self.net
            .inner
            .lock()
            .inboxes
            .contains_key(&(self.peer, self.me))
    }

    fn bytes_sent(&self) -> u64 {
        self.sent
    }
}

/// The sync links of `tandem-synclink` as a partner transport.
impl PeerTransport for tandem_synclink::PeerLinks {
    fn send(&mut self, env: Envelope<SharedPayload>) -> Result<(), Full> {
        // Cheap: the payload is reference-counted. Kept for a full window.
        let copy = env.clone();
        match tandem_synclink::PeerLinks::send(self, env) {
            Ok(()) => Ok(()),
            Err(tandem_synclink::SendError::Full) => Err(Full(Box::new(copy))),
            Err(e) => {
                // A message without a wire form is a bug here, not the peer's doing: it is
                // dropped (the engine's timeouts and retries take over) and logged.
                tracing::error!(error = %e, "replication message not sent");
                Ok(())
            }
        }
    }

    fn poll(&mut self, now: Instant, events: &mut Vec<PeerEvent>) {
        let mut evs = Vec::new();
        tandem_synclink::PeerLinks::poll(self, now, &mut evs);
        // Link names only for the (rare) link events: status() formats every link's
        // addresses, and this runs on every loop of the replication thread (it was a tenth
        // of that thread's CPU under 4 KiB writes).
        let mut links: Option<Vec<HaLinkStatus>> = None;
        let mut name = |i: usize| {
            links
                .get_or_insert_with(|| tandem_synclink::PeerLinks::status(self))
                .get(i)
                .map_or_else(|| format!("link {i}"), |l| l.link.clone())
        };
        for e in evs {
            use tandem_synclink::PeerEvent as E;
            events.push(match e {
                E::Message(env) => PeerEvent::Message(env),
                E::Connected { peer_boot_id } => PeerEvent::Connected { peer_boot_id },
                E::PeerRestarted { peer_boot_id } => PeerEvent::PeerRestarted { peer_boot_id },
                E::AllLinksDown => PeerEvent::AllLinksDown,
                E::LinkUp { link } => PeerEvent::LinkUp { link: name(link) },
                E::LinkDown { link, reason } => PeerEvent::LinkDown {
                    link: name(link),
                    reason,
                },
            });
        }
    }

    fn wait_fds(&self, fds: &mut Vec<(RawFd, bool)>) {
        tandem_synclink::PeerLinks::wait_fds(self, fds)
    }

    fn next_deadline(&self) -> Option<Instant> {
        tandem_synclink::PeerLinks::next_deadline(self)
    }

    fn status(&self) -> Vec<HaLinkStatus> {
        tandem_synclink::PeerLinks::status(self)
    }

    fn is_up(&self) -> bool {
        tandem_synclink::PeerLinks::is_up(self)
    }

    fn bytes_sent(&self) -> u64 {
        tandem_synclink::PeerLinks::bytes_sent(self)
    }
}
