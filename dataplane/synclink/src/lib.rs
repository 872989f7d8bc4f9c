//! Reliable, authenticated, ordered delivery of replication messages between two nodes over
//! one or more TCP sync links (docs/ha-wire.md, "Reliable delivery").
//!
//! * Every link is a TCP connection that opens with the HMAC handshake of `tandem-mirror`
//!   (Hello carries the boot ids, so a restarted peer is recognized). Both nodes listen; the
//!   node with the lower id dials, from its link's local IP.
//! * Each replication message of a session (this node's boot id, the peer's boot id) gets a
//!   sequence number from 0. One link at a time carries them (the *active* link, the lowest
//!   authenticated one); the others are hot standby (authenticated, keepalives only).
//!   Ordering matters more than striping.
//! * A link that starts carrying messages sends `Start { first_seq }`; the frames that
//!   follow are numbered by position. The receiver delivers only the next expected number,
//!   drops lower ones (resends after a failover) and refuses a gap (closes the link).
//! * The receiver acknowledges cumulatively (`Ack { next }`), after each poll that received
//!   messages and as the keepalive of an idle link. The sender keeps what is not
//!   acknowledged (bounded: `unacked_max_msgs`, `unacked_max_bytes`) and, when the active
//!   link fails, sends it again, in order, on the next link.
//!
//! No async runtime: non-blocking sockets, [`PeerLinks::poll`] does all the work, and the
//! caller sleeps on [`PeerLinks::wait_fds`] until [`PeerLinks::next_deadline`] (for
//! example with `tandem_ffi::poll_fds`). Writes to a connection the peer reset rely on
//! SIGPIPE being ignored, as it is in every Rust binary that does not reset it (only the
//! `tandem` CLI does).
//!
//! ```no_run
//! # use tandem_synclink::{PeerConfig, PeerLinks, PeerEvent};
//! # use tandem_ha::NodeId;
//! let link = "127.0.0.1:7000=127.0.0.2:7000".parse().unwrap();
//! let secret = b"the cluster secret, 16 bytes or more".to_vec();
//! let cfg = PeerConfig::new(NodeId(1), NodeId(2), "node-b".into(), vec![link],
//!     [7; 16], 42, secret, 1);
//! let mut links = PeerLinks::new(cfg)?;
//! let (mut events, mut fds) = (Vec::new(), Vec::new());
//! loop {
//!     links.poll(std::time::Instant::now(), &mut events);
//!     for e in events.drain(..) {
//!         if let PeerEvent::Message(env) = e { /* to the engine */ }
//!     }
//!     fds.clear();
//!     links.wait_fds(&mut fds);
//!     let ms = links.next_deadline().map_or(100, |d| {
//!         d.saturating_duration_since(std::time::Instant::now()).as_millis() as i32 + 1
//!     });
//!     tandem_ffi::poll_fds(&fds, ms)?;
//! }
//! # Ok::<(), std::io::Error>(())
//! ```
#![forbid(unsafe_code)]

mod conn;
mod convert;

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tandem_config::ipc::HaLinkStatus;
use tandem_config::LinkPair;
use tandem_ha::{Envelope, NodeId};
use tandem_mirror::handshake::HANDSHAKE_TIMEOUT_NS;
use tandem_mirror::{
    encode_header, payload_parts, Frame, FrameDecoder, Handshake, Inbound, Limits, LinkConfig,
    LinkMsg, LinkSession, Role, SharedPayload, WireError,
};
use tracing::{debug, info, warn};

use conn::{Conn, OutFrame, Phase, ReadOutcome, Unacked, READ_BUDGET_BYTES};

/// Connections accepted on one link that have not authenticated yet; more are closed at
/// once, so a stranger cannot exhaust descriptors.
const PENDING_ACCEPTS_MAX_PER_LINK: usize = 4;
/// Control frames queued on one connection at most (handshake, Start, Ack).
const CTL_QUEUE_MAX: usize = 8;
/// Connections accepted per listener per poll.
const ACCEPTS_MAX_PER_POLL: usize = 16;

#[derive(Clone)]
pub struct PeerConfig {
    pub me: NodeId,
    pub peer: NodeId,
    pub peer_name: String,
    /// `link.local` = this node's address, `link.partner` = the peer's. Both nodes list the
    /// links in the same order: the index is the link id the handshake checks.
    pub links: Vec<LinkPair>,
    pub cluster_id: [u8; 16],
    pub device_id: u64,
    pub secret: Vec<u8>,
    pub limits: Limits,
    /// This process incarnation (differs on every start).
    pub boot_id: u64,
    /// Most messages sent and not yet acknowledged (default 4096).
    pub unacked_max_msgs: usize,
    /// Most bytes (headers and payloads) sent and not yet acknowledged (default 64 MiB).
    pub unacked_max_bytes: usize,
    /// How long the dialing side waits before dialing a failed link again (default 200 ms).
    pub reconnect_interval: Duration,
    /// An idle link sends a keepalive (an Ack) after this long (default 100 ms).
    pub keepalive: Duration,
    /// A link on which nothing arrived this long is closed (default 1 s).
    pub dead_after: Duration,
}

impl PeerConfig {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        me: NodeId,
        peer: NodeId,
        peer_name: String,
        links: Vec<LinkPair>,
        cluster_id: [u8; 16],
        device_id: u64,
        secret: Vec<u8>,
        boot_id: u64,
    ) -> Self {
        PeerConfig {
            me,
            peer,
            peer_name,
            links,
            cluster_id,
            device_id,
            secret,
            limits: Limits::default(),
            boot_id,
            unacked_max_msgs: 4096,
            unacked_max_bytes: 64 * 1024 * 1024,
            reconnect_interval: Duration::from_millis(200),
            keepalive: Duration::from_millis(100),
            // Well inside the replication engine's peer timeout (1 s): a cut link must be
            // found dead, and its unacknowledged messages resent on another link, before
            // the engine takes the silence for a lost partner and asks for a verdict (seen
            // in tests/tests/ha_netns.rs with 1 s here: one of two links cut, the partner
            // removed and resynchronized).
            dead_after: Duration::from_millis(600),
        }
    }
}

impl std::fmt::Debug for PeerConfig {
    // The secret never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerConfig")
            .field("me", &self.me)
            .field("peer", &self.peer)
            .field("peer_name", &self.peer_name)
            .field("links", &self.links)
            .field("device_id", &self.device_id)
            .field("boot_id", &self.boot_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// The unacknowledged window is full: keep the message and retry after `poll`.
    Full,
    /// The message cannot be put on the wire (payload over the limit, a list too long, or a
    /// variant without a wire mapping): a bug in the caller; nothing was queued.
    Unencodable(WireError),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Full => write!(f, "unacknowledged window full"),
            SendError::Unencodable(e) => write!(f, "message cannot be encoded: {e}"),
        }
    }
}

impl std::error::Error for SendError {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    Message(Envelope<SharedPayload>),
    /// First authenticated link to this peer incarnation (also right after `PeerRestarted`).
    Connected {
        peer_boot_id: u64,
    },
    /// The peer is a new incarnation (restarted): everything queued for the old one was dropped.
    PeerRestarted {
        peer_boot_id: u64,
    },
    /// No authenticated link left (messages stay queued and are resent when a link returns).
    AllLinksDown,
    LinkUp {
        link: usize,
    },
    /// An authenticated link closed. Refused connections (handshake failures, strangers) are
    /// logged and shown in `status()`, not reported here.
    LinkDown {
        link: usize,
        reason: String,
    },
}

struct LinkState {
    pair: LinkPair,
    /// Dialer: when to dial next if there is no connection.
    next_dial: Instant,
    last_error: Option<String>,
}

/// The session with the peer: what is sent and not acknowledged, and what was delivered.
struct Session {
    /// The peer incarnation of the session; `None` before the first authenticated link.
    peer_boot: Option<u64>,
    unacked: Unacked,
    /// Sequence number of the next message to deliver from the peer.
    rx_next: u64,
    /// The connection carrying our messages.
    active: Option<u64>,
}

pub struct PeerLinks {
    cfg: PeerConfig,
    listeners: Vec<TcpListener>,
    links: Vec<LinkState>,
    conns: Vec<Conn>,
    sess: Session,
    dialer: bool,
    next_conn_id: u64,
    /// Time zero of the handshake clocks (they count nanoseconds).
    t0: Instant,
    bytes_sent: u64,
    was_up: bool,
    duplicates_dropped: u64,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.bind(&SockAddr::from(addr))?;
    s.listen(64)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Starts a non-blocking connect from the link's local IP; `Ok(true)` if already connected.
fn dial(pair: &LinkPair) -> io::Result<(TcpStream, bool)> {
    let s = Socket::new(
        Domain::for_address(pair.partner),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    s.set_nonblocking(true)?;
    s.bind(&SockAddr::from(SocketAddr::new(pair.local.ip(), 0)))?;
    let done = match s.connect(&SockAddr::from(pair.partner)) {
        Ok(()) => true,
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => false,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
        Err(e) => return Err(e),
    };
    Ok((s.into(), done))
}

impl PeerLinks {
    /// Binds a non-blocking listener on every link's local address (SO_REUSEADDR). Both
    /// nodes listen; the node with the lower node id dials (binding its link's local IP,
    /// port 0, connecting to `link.partner`).
    pub fn new(cfg: PeerConfig) -> io::Result<PeerLinks> {
        if cfg.me == cfg.peer {
            return Err(invalid(format!("peer {} is this node", cfg.peer)));
        }
        if cfg.links.is_empty() || cfg.links.len() > usize::from(u16::MAX) {
            return Err(invalid(format!(
                "{} sync links to {}: need 1 ..= 65535",
                cfg.links.len(),
                cfg.peer_name
            )));
        }
        if cfg.secret.len() < tandem_mirror::handshake::SECRET_LEN_MIN {
            return Err(invalid(
                "per-cluster secret shorter than 16 bytes: regenerate it with tandem-control"
                    .into(),
            ));
        }
        if cfg.unacked_max_msgs == 0 || cfg.unacked_max_bytes == 0 {
            return Err(invalid(
                "the unacknowledged window must not be empty".into(),
            ));
        }
        let hour = Duration::from_secs(3600);
        if cfg.keepalive.is_zero()
            || cfg.dead_after <= cfg.keepalive
            || cfg.dead_after > hour
            || cfg.reconnect_interval.is_zero()
            || cfg.reconnect_interval > hour
        {
            return Err(invalid(format!(
                "sync link timers: need 0 < keepalive ({:?}) < dead_after ({:?}) <= 1 h \
                 and 0 < reconnect_interval ({:?}) <= 1 h",
                cfg.keepalive, cfg.dead_after, cfg.reconnect_interval
            )));
        }
        let mut listeners = Vec::with_capacity(cfg.links.len());
        for l in &cfg.links {
            listeners.push(listen(l.local).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("sync link {l}: listen on {}: {e}", l.local),
                )
            })?);
        }
        let now = Instant::now();
        let links = cfg
            .links
            .iter()
            .map(|&pair| LinkState {
                pair,
                next_dial: now,
                last_error: None,
            })
            .collect();
        Ok(PeerLinks {
            dialer: cfg.me < cfg.peer,
            cfg,
            listeners,
            links,
            conns: Vec::new(),
            sess: Session {
                peer_boot: None,
                unacked: Unacked::default(),
                rx_next: 0,
                active: None,
            },
            next_conn_id: 1,
            t0: now,
            bytes_sent: 0,
            was_up: false,
            duplicates_dropped: 0,
        })
    }

    /// Queue a message for the peer. Delivered exactly once and in order to the peer's
    /// current incarnation, across link failures (unacknowledged messages are resent on
    /// another link or after reconnect). `Err(SendError::Full)` when the unacked window is
    /// full: the caller keeps the message and retries after poll.
    pub fn send(&mut self, env: Envelope<SharedPayload>) -> Result<(), SendError> {
        let u = &self.sess.unacked;
        if u.frames.len() >= self.cfg.unacked_max_msgs {
            return Err(SendError::Full);
        }
        let mut header = Vec::new();
        let len =
            encode_header(&env, &self.cfg.limits, &mut header).map_err(SendError::Unencodable)?;
        // One message larger than the byte window still goes, alone.
        if !u.frames.is_empty() && u.bytes + len > self.cfg.unacked_max_bytes {
            return Err(SendError::Full);
        }
        let [a, b] = payload_parts(&env.msg);
        let frame = OutFrame {
            header: header.into(),
            parts: [a.cloned(), b.cloned()],
        };
        let u = &mut self.sess.unacked;
        u.bytes += len;
        u.frames.push_back(frame);
        Ok(())
    }

    fn now_ns(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.t0).as_nanos()).unwrap_or(u64::MAX)
    }

    fn new_conn(
        &mut self,
        link: usize,
        role: Role,
        stream: TcpStream,
        peer_addr: SocketAddr,
        connecting: bool,
        now: Instant,
    ) -> Result<(), String> {
        let lc = LinkConfig {
            cluster_id: self.cfg.cluster_id,
            node_id: self.cfg.me,
            peer_node_id: self.cfg.peer,
            device_id: self.cfg.device_id,
            link_id: link as u16,
            boot_id: self.cfg.boot_id,
            secret: self.cfg.secret.clone(),
        };
        let hs = Handshake::new(lc, role, rand::random::<[u8; 32]>(), self.now_ns(now))
            .map_err(|e| e.to_string())?;
        let mut hello = Vec::new();
        hs.hello().encode(&mut hello).map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let mut c = Conn {
            id: self.next_conn_id,
            link,
            role,
            stream,
            peer_addr,
            phase: if connecting {
                Phase::Connecting
            } else {
                Phase::Handshaking
            },
            session: LinkSession::new(hs, self.cfg.limits),
            decoder: FrameDecoder::new(self.cfg.limits),
            peer_boot: None,
            ctl: Default::default(),
            partial: None,
            data_next: None,
            rx_seq: None,
            ack_sent: None,
            ack_due: false,
            last_rx: now,
            last_tx: now,
            opened: now,
        };
        c.ctl.push_back(OutFrame::control(hello));
        self.next_conn_id += 1;
        self.conns.push(c);
        Ok(())
    }

    fn accept(&mut self, now: Instant) {
        for link in 0..self.listeners.len() {
            // `poll` runs on every loop of a busy replication thread, and Linux's accept4
            // allocates (and frees) a socket, inode and file even when it returns EAGAIN:
            // measured at a fifth of that thread's CPU under 4 KiB writes. A zero-timeout
            // poll(2) on the listener costs no allocation. An error: try accept anyway.
            let fd = self.listeners[link].as_raw_fd();
            if !tandem_ffi::wait_readable(fd, 0).unwrap_or(true) {
                continue;
            }
            for _ in 0..ACCEPTS_MAX_PER_POLL {
                let (stream, addr) = match self.listeners[link].accept() {
                    Ok(x) => x,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        // EMFILE and the like: try again on the next poll.
                        debug!(link, error = %e, "sync link accept failed");
                        break;
                    }
                };
                let pending = self
                    .conns
                    .iter()
                    .filter(|c| c.link == link && c.role == Role::Acceptor && !c.is_up())
                    .count();
                if pending >= PENDING_ACCEPTS_MAX_PER_LINK {
                    // Evict the oldest: the peer authenticates within milliseconds, so a
                    // few silent strangers cannot keep it out until their handshake deadline.
                    if let Some(i) = self
                        .conns
                        .iter()
                        .enumerate()
                        .filter(|(_, c)| c.link == link && c.role == Role::Acceptor && !c.is_up())
                        .min_by_key(|(_, c)| c.id)
                        .map(|(i, _)| i)
                    {
                        let old = self.conns.swap_remove(i);
                        let _ = old.stream.shutdown(std::net::Shutdown::Both);
                        self.note_error(
                            link,
                            old.peer_addr,
                            "too many unauthenticated connections: closed the oldest".into(),
                        );
                    }
                }
                if let Err(e) = stream.set_nonblocking(true) {
                    debug!(peer = %addr, link, error = %e, "sync link: set_nonblocking failed");
                    continue;
                }
                if let Err(e) = self.new_conn(link, Role::Acceptor, stream, addr, false, now) {
                    warn!(peer = %addr, link, "sync link: {e}");
                }
            }
        }
    }

    fn dial_links(&mut self, now: Instant) {
        if !self.dialer {
            return;
        }
        for link in 0..self.links.len() {
            if now < self.links[link].next_dial
                || self
                    .conns
                    .iter()
                    .any(|c| c.link == link && (c.role == Role::Initiator || c.is_up()))
            {
                continue;
            }
            let pair = self.links[link].pair;
            self.links[link].next_dial = now + self.cfg.reconnect_interval;
            match dial(&pair) {
                Ok((stream, done)) => {
                    if let Err(e) =
                        self.new_conn(link, Role::Initiator, stream, pair.partner, !done, now)
                    {
                        warn!(peer = %pair.partner, link, "sync link: {e}");
                    }
                }
                Err(e) => self.note_error(link, pair.partner, format!("connect: {e}")),
            }
        }
    }

    /// Records a link's error; logged at warn the first time, at debug while it repeats.
    fn note_error(&mut self, link: usize, peer: SocketAddr, reason: String) {
        let l = &mut self.links[link];
        if l.last_error.as_deref() == Some(reason.as_str()) {
            debug!(peer = %peer, link, peer_name = %self.cfg.peer_name, "sync link: {reason}");
        } else {
            warn!(peer = %peer, link, peer_name = %self.cfg.peer_name, "sync link: {reason}");
            l.last_error = Some(reason);
        }
    }

    /// All non-blocking work: accept, connect, handshake, read, decode, check payload CRC,
    /// write queued frames (writev, no payload copy), cumulative acks, keepalives,
    /// dead-link detection, reconnect. Appends events.
    pub fn poll(&mut self, now: Instant, events: &mut Vec<PeerEvent>) {
        self.accept(now);
        self.dial_links(now);
        let mut closing: Vec<(u64, String)> = Vec::new();

        // Connect completion, then everything that arrived.
        for i in 0..self.conns.len() {
            let c = &mut self.conns[i];
            if matches!(c.phase, Phase::Connecting) {
                match c.stream.take_error() {
                    Ok(None) => {}
                    Ok(Some(e)) | Err(e) => {
                        closing.push((c.id, format!("connect: {e}")));
                        continue;
                    }
                }
                if c.stream.peer_addr().is_err() {
                    continue; // still connecting
                }
                c.phase = Phase::Handshaking;
                c.last_rx = now;
            }
            if let Err(reason) = self.read_conn(i, now, events) {
                closing.push((self.conns[i].id, reason));
            }
        }
        self.close_conns(&mut closing, now, events);

        // A restart of the peer or a replaced connection leaves conns that must go.
        let peer_boot = self.sess.peer_boot;
        for c in &self.conns {
            if c.is_up() && c.peer_boot != peer_boot {
                closing.push((c.id, "belongs to an earlier incarnation of the peer".into()));
            } else if c.is_up()
                && self
                    .conns
                    .iter()
                    .any(|n| n.is_up() && n.link == c.link && n.id > c.id)
            {
                closing.push((c.id, "replaced by a newer connection on this link".into()));
            }
        }
        self.close_conns(&mut closing, now, events);

        self.ensure_active();
        self.timers(now, &mut closing);
        self.close_conns(&mut closing, now, events);

        for c in &mut self.conns {
            if let Err(e) = c.flush(&self.sess.unacked, now, &mut self.bytes_sent) {
                closing.push((c.id, format!("write: {e}")));
            }
        }
        self.close_conns(&mut closing, now, events);
        // A link lost while writing: move the traffic at once rather than on the next poll.
        if self.sess.active.is_none() && self.ensure_active() {
            for c in &mut self.conns {
                if let Err(e) = c.flush(&self.sess.unacked, now, &mut self.bytes_sent) {
                    closing.push((c.id, format!("write: {e}")));
                }
            }
            self.close_conns(&mut closing, now, events);
        }
    }

    /// Reads and handles everything one connection has. `Err`: close it, with the reason.
    fn read_conn(
        &mut self,
        i: usize,
        now: Instant,
        events: &mut Vec<PeerEvent>,
    ) -> Result<(), String> {
        let mut budget = READ_BUDGET_BYTES;
        let mut full_before = false;
        loop {
            let r = self.conns[i]
                .read_some(&mut budget)
                .map_err(|e| format!("read: {e}"))?;
            if matches!(r, ReadOutcome::Data) {
                // Bytes arrived: the link is alive even while a large frame is still coming.
                self.conns[i].last_rx = now;
            }
            self.handle_frames(i, now, events)?;
            match r {
                ReadOutcome::Data => full_before = false,
                ReadOutcome::Eof => return Err("closed by the peer".into()),
                ReadOutcome::Stop => return Ok(()),
                // A full buffer holds a whole frame, which handle_frames took out; twice in
                // a row would be a decoder bug: close rather than spin.
                ReadOutcome::Full if full_before => return Err("receive buffer stalled".into()),
                ReadOutcome::Full => full_before = true,
            }
        }
    }

    fn handle_frames(
        &mut self,
        i: usize,
        now: Instant,
        events: &mut Vec<PeerEvent>,
    ) -> Result<(), String> {
        let Self {
            conns,
            sess,
            cfg,
            duplicates_dropped,
            ..
        } = self;
        let c = &mut conns[i];
        let Conn {
            decoder,
            session,
            ctl,
            phase,
            peer_boot,
            rx_seq,
            ack_due,
            ack_sent,
            last_rx,
            link,
            id,
            ..
        } = c;
        loop {
            let frame = match decoder.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("malformed frame from peer: {e}")),
            };
            *last_rx = now;
            tracing::trace!(conn = *id, len = frame.len(), "frame in");
            let was_auth = session.is_authenticated();
            let inbound = session.on_frame(frame).map_err(|e| e.to_string())?;
            match inbound {
                Inbound::Handshake { reply } => {
                    if let Some(m) = reply {
                        ctl.push_back(encode_ctl(|b| m.encode(b))?);
                    }
                    if !was_auth && session.is_authenticated() {
                        let Some(hello) = session.handshake().peer() else {
                            return Err("authenticated without a peer Hello".into());
                        };
                        let boot = hello.boot_id;
                        *phase = Phase::Up;
                        *peer_boot = Some(boot);
                        match sess.peer_boot {
                            None => {
                                info!(peer_name = %cfg.peer_name, peer_boot_id = boot, "sync link: peer connected");
                                sess.peer_boot = Some(boot);
                                events.push(PeerEvent::Connected { peer_boot_id: boot });
                            }
                            Some(old) if old == boot => {}
                            Some(old) => {
                                warn!(peer_name = %cfg.peer_name, old_boot_id = old, peer_boot_id = boot,
                                      dropped_msgs = sess.unacked.frames.len(),
                                      "sync link: peer restarted; messages queued for its previous incarnation dropped");
                                sess.peer_boot = Some(boot);
                                sess.unacked.reset();
                                sess.rx_next = 0;
                                sess.active = None;
                                events.push(PeerEvent::PeerRestarted { peer_boot_id: boot });
                                events.push(PeerEvent::Connected { peer_boot_id: boot });
                            }
                        }
                        info!(peer_name = %cfg.peer_name, link = *link, conn = *id, "sync link up");
                        events.push(PeerEvent::LinkUp { link: *link });
                        // Tell the peer where we are: it frees what we already have.
                        let next = sess.rx_next;
                        ctl.push_back(encode_ctl(|b| LinkMsg::Ack { next }.encode(b))?);
                        *ack_sent = Some(next);
                    }
                }
                Inbound::Link(m) => {
                    if *peer_boot != sess.peer_boot {
                        return Err("belongs to an earlier incarnation of the peer".into());
                    }
                    match m {
                        LinkMsg::Ack { next } => {
                            if next > sess.unacked.next_seq() {
                                return Err(format!(
                                    "peer acknowledges message {next}, only {} were sent",
                                    sess.unacked.next_seq()
                                ));
                            }
                            sess.unacked.ack(next);
                        }
                        LinkMsg::Start { first_seq } => {
                            if first_seq > sess.rx_next {
                                return Err(format!(
                                    "peer starts at message {first_seq}, this node expects {}: a gap",
                                    sess.rx_next
                                ));
                            }
                            *rx_seq = Some(first_seq);
                        }
                    }
                }
                Inbound::Message(env) => {
                    if *peer_boot != sess.peer_boot {
                        return Err("belongs to an earlier incarnation of the peer".into());
                    }
                    let Some(seq) = *rx_seq else {
                        return Err("replication frame before Start".into());
                    };
                    *rx_seq = Some(seq + 1);
                    *ack_due = true;
                    if seq < sess.rx_next {
                        *duplicates_dropped += 1;
                        continue;
                    }
                    if seq > sess.rx_next {
                        return Err(format!(
                            "message {seq} arrived, this node expects {}: a gap",
                            sess.rx_next
                        ));
                    }
                    let crc = Frame::new_unchecked(frame).payload_crc();
                    let Some(env) = convert::to_shared(env, crc) else {
                        return Err("a message variant this build cannot deliver".into());
                    };
                    sess.rx_next += 1;
                    events.push(PeerEvent::Message(env));
                }
            }
        }
    }

    /// Closes connections (each once), logs, and reports link and session events.
    fn close_conns(
        &mut self,
        closing: &mut Vec<(u64, String)>,
        now: Instant,
        events: &mut Vec<PeerEvent>,
    ) {
        for (id, reason) in closing.drain(..) {
            let Some(i) = self.conns.iter().position(|c| c.id == id) else {
                continue;
            };
            let mut c = self.conns.swap_remove(i);
            if !c.is_up() && !reason.starts_with("write") {
                // Best effort: our Proof, so a refused peer logs the refusal too.
                let _ = c.flush(&self.sess.unacked, now, &mut self.bytes_sent);
            }
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
            if self.sess.active == Some(id) {
                self.sess.active = None;
            }
            if c.role == Role::Initiator {
                self.links[c.link].next_dial = now + self.cfg.reconnect_interval;
            }
            if c.is_up() {
                warn!(peer = %c.peer_addr, link = c.link, peer_name = %self.cfg.peer_name, conn = c.id,
                      "sync link down: {reason}");
                self.links[c.link].last_error = Some(reason.clone());
                events.push(PeerEvent::LinkDown {
                    link: c.link,
                    reason,
                });
            } else {
                self.note_error(c.link, c.peer_addr, reason);
            }
        }
        let up = self.is_up();
        if self.was_up && !up {
            warn!(peer_name = %self.cfg.peer_name, queued_msgs = self.sess.unacked.frames.len(),
                  "sync links: all links to the peer are down");
            events.push(PeerEvent::AllLinksDown);
        }
        self.was_up = up;
    }

    /// Picks the link that carries our messages if none does: the lowest authenticated one.
    /// It starts with the oldest unacknowledged message. `true` if one was picked.
    fn ensure_active(&mut self) -> bool {
        if self.sess.active.is_some() {
            return false;
        }
        let Some(c) = self
            .conns
            .iter_mut()
            .filter(|c| c.is_up())
            .min_by_key(|c| c.link)
        else {
            return false;
        };
        let first_seq = self.sess.unacked.base;
        match encode_ctl(|b| LinkMsg::Start { first_seq }.encode(b)) {
            Ok(f) => c.ctl.push_back(f),
            Err(_) => return false,
        }
        c.data_next = Some(first_seq);
        self.sess.active = Some(c.id);
        debug!(
            link = c.link,
            first_seq, "sync link carries the messages now"
        );
        true
    }

    fn timers(&mut self, now: Instant, closing: &mut Vec<(u64, String)>) {
        let now_ns = self.now_ns(now);
        let rx_next = self.sess.rx_next;
        for c in &mut self.conns {
            if !c.is_up() {
                if let Err(e) = c.session.handshake_mut().on_tick(now_ns) {
                    closing.push((c.id, format!("handshake: {e}")));
                }
                continue;
            }
            if now.saturating_duration_since(c.last_rx) >= self.cfg.dead_after {
                closing.push((
                    c.id,
                    format!("nothing received for {:?}", self.cfg.dead_after),
                ));
                continue;
            }
            let idle = now.saturating_duration_since(c.last_tx) >= self.cfg.keepalive
                && c.ctl.is_empty()
                && c.partial.is_none();
            let news = c.ack_due && c.ack_sent != Some(rx_next);
            // A peer that sends but does not read cannot grow the queue: later acks cover
            // earlier ones, so one may be skipped.
            if (news || idle) && c.ctl.len() < CTL_QUEUE_MAX {
                tracing::trace!(
                    conn = c.id,
                    link = c.link,
                    next = rx_next,
                    news,
                    "ack queued"
                );
                match encode_ctl(|b| LinkMsg::Ack { next: rx_next }.encode(b)) {
                    Ok(f) => c.ctl.push_back(f),
                    Err(e) => closing.push((c.id, e)),
                }
                c.ack_sent = Some(rx_next);
            }
            c.ack_due = false;
        }
    }

    /// fds the caller's sleep should wait on: (fd, want_write). Readable listeners and
    /// sockets, writable when output is queued (or a connect is in progress).
    pub fn wait_fds(&self, out: &mut Vec<(RawFd, bool)>) {
        for l in &self.listeners {
            out.push((l.as_raw_fd(), false));
        }
        for c in &self.conns {
            out.push((c.stream.as_raw_fd(), c.wants_write(&self.sess.unacked)));
        }
    }

    /// How long the caller may sleep at most before poll must run again (timers:
    /// keepalive, reconnect, dead link, handshake deadline).
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut d: Option<Instant> = None;
        let mut at = |t: Instant| d = Some(d.map_or(t, |d| d.min(t)));
        for c in &self.conns {
            if c.is_up() {
                at(c.last_tx + self.cfg.keepalive);
                at(c.last_rx + self.cfg.dead_after);
            } else {
                at(c.opened
                    + Duration::from_nanos(HANDSHAKE_TIMEOUT_NS)
                    + Duration::from_millis(1));
            }
        }
        if self.dialer {
            for (i, l) in self.links.iter().enumerate() {
                if !self
                    .conns
                    .iter()
                    .any(|c| c.link == i && (c.role == Role::Initiator || c.is_up()))
                {
                    at(l.next_dial);
                }
            }
        }
        d
    }

    pub fn status(&self) -> Vec<HaLinkStatus> {
        self.links
            .iter()
            .enumerate()
            .map(|(i, l)| HaLinkStatus {
                link: l.pair.to_string(),
                up: self.conns.iter().any(|c| c.link == i && c.is_up()),
                last_error: l.last_error.clone(),
            })
            .collect()
    }

    /// At least one authenticated link.
    pub fn is_up(&self) -> bool {
        self.conns.iter().any(Conn::is_up)
    }

    /// Header and payload bytes written to the links (all frames), for metrics.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent
    }

    /// Messages queued and not yet acknowledged by the peer.
    pub fn unacked_msgs(&self) -> usize {
        self.sess.unacked.frames.len()
    }

    /// Messages that arrived twice (resent after a link failure) and were dropped.
    pub fn duplicates_dropped(&self) -> u64 {
        self.duplicates_dropped
    }

    /// The link indexes currently authenticated.
    pub fn links_up(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .conns
            .iter()
            .filter(|c| c.is_up())
            .map(|c| c.link)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The link carrying this node's messages now, if any.
    pub fn active_link(&self) -> Option<usize> {
        let id = self.sess.active?;
        self.conns.iter().find(|c| c.id == id).map(|c| c.link)
    }

    /// Test hook: breaks every connection of link `i` as a cable cut would (both directions
    /// shut at once, nothing more is written). The next poll sees it fail.
    pub fn debug_break_link(&mut self, i: usize) {
        for c in self.conns.iter().filter(|c| c.link == i) {
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// One control frame, encoded.
fn encode_ctl(f: impl FnOnce(&mut Vec<u8>) -> Result<(), WireError>) -> Result<OutFrame, String> {
    let mut b = Vec::new();
    f(&mut b).map_err(|e| format!("encode: {e}"))?;
    Ok(OutFrame::control(b))
}
