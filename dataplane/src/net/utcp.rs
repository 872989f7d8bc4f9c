//! Userspace TCP: a smoltcp stack over a TAP device, owned and polled by one reactor.
//!
//! The stack answers ARP for its own IPv4 address, keeps a small pool of listening sockets
//! on the portal port (smoltcp has no accept backlog: one listening socket holds one
//! handshake), and hands every established connection to the reactor as a [`Transport`]
//! that reads and writes the socket's buffers. Everything lives on the reactor thread
//! (`Rc<RefCell<..>>`), so nothing here locks.
//!
//! Bounds: at most `max_connections + LISTEN_BACKLOG` sockets in all, whatever their state
//! (listening, in a handshake, open, closing), each with fixed receive and send buffers; at most [`INGRESS_BUDGET`]
//! frames read and [`EGRESS_BUDGET`] poll rounds sent per `poll`; a closed connection keeps
//! its socket for at most [`CLOSE_LINGER`] to finish its FIN handshake, then is reset.
//!
//! Waking: connections have no descriptor of their own ([`Transport::poll_fd`] is `None`);
//! the reactor sleeps on the stack's TAP descriptor ([`UserspaceStack::poll_fd`]) and caps
//! its sleep with [`UserspaceStack::poll_delay`] so smoltcp's timers (retransmission,
//! delayed ACK, zero-window probes) run on time. See docs/architecture.md, "Userspace TCP".

use super::Transport;
use smoltcp::iface::{
    Config, Interface, PollIngressSingleResult, PollResult, SocketHandle, SocketSet,
};
use smoltcp::phy::{Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, IpEndpoint, Ipv4Cidr};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;
use tandem_ffi::Tap;

/// Listening sockets kept ready for concurrent handshakes.
pub const LISTEN_BACKLOG: usize = 4;
/// Frames read from the TAP per poll.
pub const INGRESS_BUDGET: usize = 256;
/// Egress rounds per poll (each round sends at most one segment per socket).
pub const EGRESS_BUDGET: usize = 256;
/// How long a connection the reactor dropped may take to close gracefully before it is reset.
pub const CLOSE_LINGER: Duration = Duration::from_secs(5);
/// A handshake that does not complete in this time frees its listening socket.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Data unacknowledged for this long ends the connection (reset), like a kernel user timeout.
const USER_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest Ethernet frame we read or write (the TAP's MTU may not exceed it).
const FRAME_MAX: usize = 65_535 + 14;
const ETH_HEADER: usize = 14;

/// Defaults sized for iSCSI: a 1 MiB send buffer holds several 128 KiB Data-In sequences.
pub const DEFAULT_RX_BUFFER: usize = 512 * 1024;
pub const DEFAULT_TX_BUFFER: usize = 1024 * 1024;
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;

/// What one userspace portal serves on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UtcpConfig {
    pub tap: String,
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
    pub port: u16,
    pub max_connections: usize,
    pub rx_buffer: usize,
    pub tx_buffer: usize,
}

impl UtcpConfig {
    /// `cidr` is `A.B.C.D/PREFIX`, the stack's own address on the TAP's link.
    pub fn new(tap: &str, cidr: &str, port: u16) -> Result<UtcpConfig, String> {
        if tap.is_empty()
            || tap.len() > 15
            || tap.contains('/')
            || tap.contains(char::is_whitespace)
        {
            return Err(format!(
                "bad TAP name {tap:?} (1 to 15 characters, no '/' or spaces)"
            ));
        }
        let (ip, prefix) = cidr
            .split_once('/')
            .ok_or_else(|| format!("{cidr:?} is not IPv4/PREFIX"))?;
        let addr: Ipv4Addr = ip
            .trim()
            .parse()
            .map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
        let prefix_len: u8 = prefix
            .trim()
            .parse()
            .map_err(|_| format!("{prefix:?} is not a prefix length"))?;
        if !(1..=32).contains(&prefix_len) {
            return Err(format!("prefix length {prefix_len} is not within 1..=32"));
        }
        if addr.is_unspecified() || addr.is_multicast() || addr.is_broadcast() || addr.is_loopback()
        {
            return Err(format!("{addr} cannot be a portal address"));
        }
        if port == 0 {
            return Err("port 0 is not a portal port".into());
        }
        Ok(UtcpConfig {
            tap: tap.to_string(),
            addr,
            prefix_len,
            port,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            rx_buffer: DEFAULT_RX_BUFFER,
            tx_buffer: DEFAULT_TX_BUFFER,
        })
    }

    /// The portal address initiators connect to.
    pub fn portal(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.addr), self.port)
    }

    /// A stable, locally administered unicast MAC derived from the TAP name and address.
    fn mac(&self) -> EthernetAddress {
        // FNV-1a: no dependency, and the same portal gets the same MAC across restarts so the
        // kernel's neighbour entry stays valid.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.tap.bytes().chain(self.addr.octets()) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        let b = h.to_be_bytes();
        EthernetAddress([0x02, b[1], b[2], b[3], b[4], b[5]])
    }
}

/// A TAP interface opened before the reactor starts (so a missing device fails the start),
/// ready to be moved to the reactor thread that builds its [`UserspaceStack`].
pub struct UtcpPortal {
    pub cfg: UtcpConfig,
    tap: Tap,
}

impl UtcpPortal {
    pub fn open(cfg: UtcpConfig) -> io::Result<UtcpPortal> {
        let tap = Tap::open(&cfg.tap)?;
        let mtu = tap.ip_mtu()?;
        if !(576..=FRAME_MAX - ETH_HEADER).contains(&mtu) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("TAP {} has MTU {mtu}, outside 576..=65535", cfg.tap),
            ));
        }
        Ok(UtcpPortal { cfg, tap })
    }
}

#[derive(Default, Debug, Clone, Copy)]
struct DevCounters {
    rx_frames: u64,
    tx_frames: u64,
    rx_errors: u64,
    tx_errors: u64,
}

/// smoltcp's view of the TAP: one reusable buffer each way, errors counted, never a panic.
struct TapDevice {
    tap: Tap,
    /// Ethernet MTU (IP MTU + header), fixed when the stack starts.
    mtu: usize,
    rx: Vec<u8>,
    tx: Vec<u8>,
    counters: DevCounters,
    last_error: Option<(io::ErrorKind, std::time::Instant)>,
}

fn log_error(
    last: &mut Option<(io::ErrorKind, std::time::Instant)>,
    tap: &str,
    what: &str,
    e: &io::Error,
) {
    // At most one line a second per error kind, so a TAP that is down does not flood the log.
    let now = std::time::Instant::now();
    let quiet = matches!(last, Some((k, t)) if *k == e.kind() && now.duration_since(*t) < Duration::from_secs(1));
    if !quiet {
        tracing::warn!(tap, error = %e, "userspace TCP: TAP {what} failed");
        *last = Some((e.kind(), now));
    }
}

struct TapRx<'a> {
    frame: &'a [u8],
}

struct TapTx<'a> {
    tap: &'a Tap,
    buf: &'a mut Vec<u8>,
    counters: &'a mut DevCounters,
    last_error: &'a mut Option<(io::ErrorKind, std::time::Instant)>,
}

impl smoltcp::phy::RxToken for TapRx<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(self.frame)
    }
}

impl smoltcp::phy::TxToken for TapTx<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let len = len.min(FRAME_MAX);
        if self.buf.len() < len {
            self.buf.resize(len, 0);
        }
        let frame = &mut self.buf[..len];
        let r = f(frame);
        match self.tap.write(frame) {
            Ok(_) => self.counters.tx_frames += 1,
            Err(e) => {
                // A dropped frame is what a NIC does too; TCP retransmits it.
                self.counters.tx_errors += 1;
                if e.kind() != io::ErrorKind::WouldBlock {
                    log_error(self.last_error, self.tap.name(), "write", &e);
                }
            }
        }
        r
    }
}

impl Device for TapDevice {
    type RxToken<'a> = TapRx<'a>;
    type TxToken<'a> = TapTx<'a>;

    fn receive(&mut self, _now: smoltcp::time::Instant) -> Option<(TapRx<'_>, TapTx<'_>)> {
        let TapDevice {
            tap,
            rx,
            tx,
            counters,
            last_error,
            ..
        } = self;
        match tap.read(rx) {
            Ok(0) => None,
            Ok(n) => {
                counters.rx_frames += 1;
                Some((
                    TapRx { frame: &rx[..n] },
                    TapTx {
                        tap,
                        buf: tx,
                        counters,
                        last_error,
                    },
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => {
                counters.rx_errors += 1;
                log_error(last_error, tap.name(), "read", &e);
                None
            }
        }
    }

    fn transmit(&mut self, _now: smoltcp::time::Instant) -> Option<TapTx<'_>> {
        let TapDevice {
            tap,
            tx,
            counters,
            last_error,
            ..
        } = self;
        Some(TapTx {
            tap,
            buf: tx,
            counters,
            last_error,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.mtu;
        caps
    }
}

struct Inner {
    iface: Interface,
    dev: TapDevice,
    sockets: SocketSet<'static>,
    cfg: UtcpConfig,
    epoch: std::time::Instant,
    /// Sockets listening (or in a handshake) on the portal port.
    listeners: Vec<SocketHandle>,
    /// Established, not yet taken by `accept`.
    ready: VecDeque<SocketHandle>,
    /// Held by a live transport.
    active: usize,
    /// Dropped by their transport; closing, reset at the deadline.
    closing: Vec<(SocketHandle, smoltcp::time::Instant)>,
}

fn smol_now(epoch: std::time::Instant, now: std::time::Instant) -> smoltcp::time::Instant {
    let us = now.saturating_duration_since(epoch).as_micros();
    smoltcp::time::Instant::from_micros(i64::try_from(us).unwrap_or(i64::MAX))
}

fn smol_duration(d: Duration) -> smoltcp::time::Duration {
    smoltcp::time::Duration::from_micros(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn endpoint_addr(ep: IpEndpoint) -> SocketAddr {
    SocketAddr::new(IpAddr::from(ep.addr), ep.port)
}

impl Inner {
    fn sockets_in_use(&self) -> usize {
        self.listeners.len() + self.ready.len() + self.active + self.closing.len()
    }

    fn sockets_max(&self) -> usize {
        self.cfg.max_connections + LISTEN_BACKLOG
    }

    fn new_listener(&mut self) -> bool {
        let rx = tcp::SocketBuffer::new(vec![0u8; self.cfg.rx_buffer]);
        let tx = tcp::SocketBuffer::new(vec![0u8; self.cfg.tx_buffer]);
        let mut s = tcp::Socket::new(rx, tx);
        if let Err(e) = s.listen(self.cfg.port) {
            tracing::error!(error = ?e, "userspace TCP: cannot listen");
            return false;
        }
        // Latency over segment count, as with TCP_NODELAY on kernel sockets.
        s.set_nagle_enabled(false);
        s.set_timeout(Some(smol_duration(HANDSHAKE_TIMEOUT)));
        let h = self.sockets.add(s);
        self.listeners.push(h);
        true
    }

    /// Keeps `LISTEN_BACKLOG` sockets listening while the connection bound allows.
    fn replenish(&mut self) {
        while self.listeners.len() < LISTEN_BACKLOG && self.sockets_in_use() < self.sockets_max() {
            if !self.new_listener() {
                break;
            }
        }
    }

    /// Moves listeners that completed a handshake to `ready`; re-arms failed ones.
    fn promote(&mut self) -> usize {
        let mut n = 0;
        let mut i = 0;
        while i < self.listeners.len() {
            let h = self.listeners[i];
            let s = self.sockets.get_mut::<tcp::Socket>(h);
            match s.state() {
                tcp::State::Listen | tcp::State::SynReceived => i += 1,
                tcp::State::Closed => {
                    // The handshake failed or timed out: listen again on the same socket.
                    if s.listen(self.cfg.port).is_err() {
                        self.listeners.swap_remove(i);
                        self.sockets.remove(h);
                    } else {
                        i += 1;
                    }
                }
                _ => {
                    // Established (or already past it: the peer may have sent data and FIN).
                    s.set_timeout(Some(smol_duration(USER_TIMEOUT)));
                    self.listeners.swap_remove(i);
                    self.ready.push_back(h);
                    n += 1;
                }
            }
        }
        n
    }

    /// Frees sockets of dropped transports once closed, or resets them at their deadline.
    fn reap(&mut self, now: smoltcp::time::Instant) {
        let mut i = 0;
        while i < self.closing.len() {
            let (h, deadline) = self.closing[i];
            let s = self.sockets.get_mut::<tcp::Socket>(h);
            match s.state() {
                tcp::State::Closed | tcp::State::TimeWait => {
                    self.closing.swap_remove(i);
                    self.sockets.remove(h);
                }
                _ if now >= deadline => {
                    // Sends one RST at the next egress; removed once Closed.
                    s.abort();
                    i += 1;
                }
                _ => i += 1,
            }
        }
    }

    fn release(&mut self, h: SocketHandle) {
        self.active = self.active.saturating_sub(1);
        let deadline =
            smol_now(self.epoch, std::time::Instant::now()) + smol_duration(CLOSE_LINGER);
        let s = self.sockets.get_mut::<tcp::Socket>(h);
        s.close();
        self.closing.push((h, deadline));
    }
}

/// A smoltcp stack on one TAP device serving one iSCSI portal. Not `Send`: it lives on the
/// reactor thread that built it, and so do the transports it hands out.
pub struct UserspaceStack {
    inner: Rc<RefCell<Inner>>,
    /// A duplicate of the TAP descriptor for the reactor's epoll set.
    wake_fd: OwnedFd,
    portal: SocketAddr,
}

impl UserspaceStack {
    /// Opens the TAP `cfg.tap` and builds the stack (a convenience for tests and tools; the
    /// server opens the TAP first with [`UtcpPortal::open`]).
    pub fn new(cfg: UtcpConfig) -> io::Result<UserspaceStack> {
        UserspaceStack::from_portal(UtcpPortal::open(cfg)?)
    }

    pub fn from_portal(p: UtcpPortal) -> io::Result<UserspaceStack> {
        let UtcpPortal { cfg, tap } = p;
        let mtu = tap.ip_mtu()?.min(FRAME_MAX - ETH_HEADER) + ETH_HEADER;
        let wake_fd = tap.as_fd().try_clone_to_owned()?;
        let mut dev = TapDevice {
            tap,
            mtu,
            rx: vec![0u8; mtu],
            tx: vec![0u8; mtu],
            counters: DevCounters::default(),
            last_error: None,
        };
        let epoch = std::time::Instant::now();
        let mut config = Config::new(HardwareAddress::Ethernet(cfg.mac()));
        config.random_seed = rand::random();
        let mut iface = Interface::new(config, &mut dev, smol_now(epoch, epoch));
        let cidr = IpCidr::Ipv4(Ipv4Cidr::new(cfg.addr, cfg.prefix_len));
        iface.update_ip_addrs(|addrs| {
            // Capacity is at least one address; a full list cannot happen on a new interface.
            let _ = addrs.push(cidr);
        });
        let portal = cfg.portal();
        let mut inner = Inner {
            iface,
            dev,
            sockets: SocketSet::new(Vec::new()),
            cfg,
            epoch,
            listeners: Vec::new(),
            ready: VecDeque::new(),
            active: 0,
            closing: Vec::new(),
        };
        inner.replenish();
        tracing::info!(portal = %portal, tap = %inner.cfg.tap, mtu = mtu - ETH_HEADER, mac = %inner.cfg.mac(),
            "userspace TCP portal listening");
        Ok(UserspaceStack {
            inner: Rc::new(RefCell::new(inner)),
            wake_fd,
            portal,
        })
    }

    pub fn portal(&self) -> SocketAddr {
        self.portal
    }

    /// Reads and processes frames, sends what the sockets have queued, runs timers, and
    /// readies new connections for [`accept`](Self::accept). Returns the work done (frames
    /// moved plus connections established): 0 means nothing happened.
    pub fn poll(&self, now: std::time::Instant) -> usize {
        let mut g = self.inner.borrow_mut();
        let inner = &mut *g;
        let ts = smol_now(inner.epoch, now);
        let before = inner.dev.counters.rx_frames + inner.dev.counters.tx_frames;
        for _ in 0..INGRESS_BUDGET {
            if inner
                .iface
                .poll_ingress_single(ts, &mut inner.dev, &mut inner.sockets)
                == PollIngressSingleResult::None
            {
                break;
            }
        }
        for _ in 0..EGRESS_BUDGET {
            if inner
                .iface
                .poll_egress(ts, &mut inner.dev, &mut inner.sockets)
                == PollResult::None
            {
                break;
            }
        }
        let accepted = inner.promote();
        inner.reap(ts);
        inner.replenish();
        let after = inner.dev.counters.rx_frames + inner.dev.counters.tx_frames;
        (after - before) as usize + accepted
    }

    /// How long the stack may sleep before a timer is due; `None` if no timer is pending.
    pub fn poll_delay(&self, now: std::time::Instant) -> Option<Duration> {
        let mut g = self.inner.borrow_mut();
        let inner = &mut *g;
        let ts = smol_now(inner.epoch, now);
        inner
            .iface
            .poll_delay(ts, &inner.sockets)
            .map(|d| Duration::from_micros(d.total_micros()))
    }

    /// The next established connection, if any.
    pub fn accept(&self) -> Option<Box<dyn Transport>> {
        let mut g = self.inner.borrow_mut();
        let h = g.ready.pop_front()?;
        let s = g.sockets.get_mut::<tcp::Socket>(h);
        let local = s.local_endpoint().map(endpoint_addr).unwrap_or(self.portal);
        let peer = s.remote_endpoint().map(endpoint_addr);
        g.active += 1;
        drop(g);
        Some(Box::new(UtcpConn {
            stack: self.inner.clone(),
            handle: h,
            local,
            peer,
            shut: false,
        }))
    }

    /// The descriptor the reactor sleeps on: readable when a frame arrives.
    pub fn poll_fd(&self) -> BorrowedFd<'_> {
        self.wake_fd.as_fd()
    }

    /// (connections live, sockets in use, frames in, frames out, TAP errors).
    pub fn stats(&self) -> (usize, usize, u64, u64, u64) {
        let g = self.inner.borrow();
        let c = g.dev.counters;
        (
            g.active,
            g.sockets_in_use(),
            c.rx_frames,
            c.tx_frames,
            c.rx_errors + c.tx_errors,
        )
    }
}

/// One connection of a [`UserspaceStack`].
struct UtcpConn {
    stack: Rc<RefCell<Inner>>,
    handle: SocketHandle,
    local: SocketAddr,
    peer: Option<SocketAddr>,
    shut: bool,
}

fn reset_error() -> io::Error {
    io::Error::from(io::ErrorKind::ConnectionReset)
}

impl Transport for UtcpConn {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.shut || buf.is_empty() {
            return Ok(0);
        }
        let mut g = self.stack.borrow_mut();
        let s = g.sockets.get_mut::<tcp::Socket>(self.handle);
        match s.recv_slice(buf) {
            Ok(0) => Err(io::ErrorKind::WouldBlock.into()),
            Ok(n) => Ok(n),
            Err(tcp::RecvError::Finished) => Ok(0),
            Err(tcp::RecvError::InvalidState) => match s.state() {
                // Not yet open (cannot happen for an accepted socket, but harmless).
                tcp::State::SynReceived | tcp::State::Listen => {
                    Err(io::ErrorKind::WouldBlock.into())
                }
                _ => Err(reset_error()),
            },
        }
    }

    fn send_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if self.shut {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let mut g = self.stack.borrow_mut();
        let s = g.sockets.get_mut::<tcp::Socket>(self.handle);
        if !s.may_send() {
            return Err(if s.state() == tcp::State::Closed {
                reset_error()
            } else {
                io::ErrorKind::BrokenPipe.into()
            });
        }
        let mut total = 0;
        let mut wanted = 0;
        for b in bufs {
            wanted += b.len();
            let n = s.send_slice(b).map_err(|_| reset_error())?;
            total += n;
            if n < b.len() {
                break;
            }
        }
        if total == 0 && wanted > 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(total)
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        Some(self.local)
    }

    fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer
    }

    fn shutdown(&mut self) {
        if !self.shut {
            self.shut = true;
            if let Ok(mut g) = self.stack.try_borrow_mut() {
                g.sockets.get_mut::<tcp::Socket>(self.handle).close();
            }
        }
    }

    /// None: every connection of the stack shares the TAP, which the reactor watches once
    /// through [`UserspaceStack::poll_fd`]. (Registering it per connection would let one
    /// connection's close remove the watch of all, and EPOLLOUT on a TAP says nothing about
    /// a socket's send buffer.)
    fn poll_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
}

impl Drop for UtcpConn {
    fn drop(&mut self) {
        match self.stack.try_borrow_mut() {
            Ok(mut g) => g.release(self.handle),
            // Only a re-entrant drop could get here; the socket then stays until the stack goes.
            Err(_) => tracing::error!(
                "userspace TCP: stack busy while dropping a connection; socket leaked"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_and_rejects() {
        let c = UtcpConfig::new("tap0", "10.213.0.2/24", 3260).expect("valid");
        assert_eq!(c.portal(), "10.213.0.2:3260".parse().expect("addr"));
        assert_eq!(c.prefix_len, 24);
        assert!(UtcpConfig::new("tap0", "10.213.0.2", 3260).is_err());
        assert!(UtcpConfig::new("tap0", "10.213.0.2/33", 3260).is_err());
        assert!(UtcpConfig::new("tap0", "10.213.0.2/0", 3260).is_err());
        assert!(UtcpConfig::new("tap0", "0.0.0.0/24", 3260).is_err());
        assert!(UtcpConfig::new("tap0", "127.0.0.1/8", 3260).is_err());
        assert!(UtcpConfig::new("", "10.0.0.1/24", 3260).is_err());
        assert!(UtcpConfig::new("a-very-long-tap-name", "10.0.0.1/24", 3260).is_err());
        assert!(UtcpConfig::new("tap0", "10.0.0.1/24", 0).is_err());
        assert!(UtcpConfig::new("tap0", "x/24", 3260).is_err());
    }

    #[test]
    fn mac_is_stable_and_local_unicast() {
        let a = UtcpConfig::new("tap0", "10.213.0.2/24", 3260).expect("valid");
        let b = UtcpConfig::new("tap0", "10.213.0.2/24", 3261).expect("valid");
        assert_eq!(a.mac(), b.mac());
        let m = a.mac().0;
        assert_eq!(m[0] & 0x03, 0x02, "locally administered, unicast");
    }
}
