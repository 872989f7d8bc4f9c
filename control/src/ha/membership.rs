//! Heartbeats between control services, over every sync link and every heartbeat link of a
//! replicated device (UDP, on each link's own addresses: the same IP:PORT as the link,
//! UDP instead of TCP).
//!
//! Datagram (at most [`DATAGRAM_MAX`] bytes):
//! ```text
//! "THB1" | node id u8 | device length u8 | device | counter u64 BE | epoch u64 BE
//!        | flags u8 (bit 0: the sender hosts the device's authority; bit 1: the sender has
//!          lost the authority it follows, three-node majority) | HMAC-SHA256 (32)
//! ```
//! The MAC covers everything before it and the destination address (`IP:PORT`, not sent:
//! the receiver uses its own end of the link), keyed with the device's cluster secret
//! (`secret_file`); so a datagram is valid only on the link it was sent on. The counter is
//! the sender's clock in nanoseconds since the Unix epoch, raised by one when the clock does
//! not advance; a receiver accepts, per link, only counters above the last it accepted from
//! that node for that device, so a recorded datagram cannot be replayed (per link, because
//! datagrams on different links overtake each other). Anything else is rejected, counted and logged (at most once per 10 s per
//! reason).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tandem_config::{LinkPair, NodeConfig, ReplicationConfig};
use tokio::net::UdpSocket;

use super::PeerView;
use crate::service::Node;

type HmacSha256 = Hmac<Sha256>;

const MAGIC: &[u8; 4] = b"THB1";
const MAC_LEN: usize = 32;
pub const DEVICE_NAME_MAX: usize = 64;
pub const DATAGRAM_MAX: usize = 4 + 1 + 1 + DEVICE_NAME_MAX + 8 + 8 + 1 + MAC_LEN;
const FLAG_HOSTS_AUTHORITY: u8 = 1;
const FLAG_LOST_AUTHORITY: u8 = 2;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    pub node_id: u8,
    pub device: String,
    pub counter: u64,
    /// The newest epoch the sender knows for the device.
    pub epoch: u64,
    pub hosts_authority: bool,
    /// Three data nodes under node majority: the sender has heard nothing from the node
    /// whose authority it follows for longer than a lease plus margin (its vote for a
    /// takeover; see `strategy::decide_majority_takeover`).
    pub lost_authority: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Reject {
    #[error("malformed datagram")]
    Malformed,
    #[error("unknown device")]
    UnknownDevice,
    #[error("sender is not a partner of the device")]
    UnknownNode,
    #[error("bad MAC (wrong cluster secret?)")]
    BadMac,
    #[error("replayed or old counter")]
    Replay,
}

impl Heartbeat {
    /// The datagram for the link whose far end is `dest`.
    pub fn encode(&self, secret: &[u8], dest: SocketAddr) -> Vec<u8> {
        let dev = self.device.as_bytes();
        let dev = &dev[..dev.len().min(DEVICE_NAME_MAX)];
        let mut b = Vec::with_capacity(DATAGRAM_MAX);
        b.extend_from_slice(MAGIC);
        b.push(self.node_id);
        b.push(dev.len() as u8);
        b.extend_from_slice(dev);
        b.extend_from_slice(&self.counter.to_be_bytes());
        b.extend_from_slice(&self.epoch.to_be_bytes());
        let mut flags = 0;
        if self.hosts_authority {
            flags |= FLAG_HOSTS_AUTHORITY;
        }
        if self.lost_authority {
            flags |= FLAG_LOST_AUTHORITY;
        }
        b.push(flags);
        let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
        mac.update(&b);
        mac.update(dest.to_string().as_bytes());
        b.extend_from_slice(&mac.finalize().into_bytes());
        b
    }

    /// Parses without checking the MAC (the device name picks the secret).
    pub fn parse(b: &[u8]) -> Result<(Heartbeat, &[u8], &[u8]), Reject> {
        if b.len() > DATAGRAM_MAX || b.len() < 4 + 2 + 17 + MAC_LEN || &b[..4] != MAGIC {
            return Err(Reject::Malformed);
        }
        let node_id = b[4];
        let n = usize::from(b[5]);
        if n == 0 || n > DEVICE_NAME_MAX || b.len() != 6 + n + 17 + MAC_LEN {
            return Err(Reject::Malformed);
        }
        let device = std::str::from_utf8(&b[6..6 + n]).map_err(|_| Reject::Malformed)?;
        let at = 6 + n;
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_be_bytes(a)
        };
        let hb = Heartbeat {
            node_id,
            device: device.to_string(),
            counter: u64_at(at),
            epoch: u64_at(at + 8),
            hosts_authority: b[at + 16] & FLAG_HOSTS_AUTHORITY != 0,
            lost_authority: b[at + 16] & FLAG_LOST_AUTHORITY != 0,
        };
        let body_end = at + 17;
        Ok((hb, &b[..body_end], &b[body_end..]))
    }

    /// Parses and checks the MAC with `secret`, for a datagram that arrived on `local`.
    pub fn verify(b: &[u8], secret: &[u8], local: SocketAddr) -> Result<Heartbeat, Reject> {
        let (hb, body, tag) = Heartbeat::parse(b)?;
        let mut mac = HmacSha256::new_from_slice(secret).map_err(|_| Reject::BadMac)?;
        mac.update(body);
        mac.update(local.to_string().as_bytes());
        mac.verify_slice(tag).map_err(|_| Reject::BadMac)?;
        Ok(hb)
    }
}

/// What was heard from one partner of one device.
#[derive(Clone, Debug, Default)]
struct Peer {
    /// By the local address of the link it arrived on: when, and the last counter.
    links: HashMap<SocketAddr, (Instant, u64)>,
    last_any: Option<Instant>,
    epoch: u64,
    hosts_authority: bool,
    lost_authority: bool,
}

/// A partner's last heartbeat, heard recently ([`Heard::recent`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecentPeer {
    /// The newest epoch it knows (or hosts at).
    pub epoch: u64,
    pub hosts_authority: bool,
    pub lost_authority: bool,
}

/// Authentic heartbeats received, and rejections (shared by the receive loops).
#[derive(Default)]
pub struct Heard {
    peers: Mutex<HashMap<(String, u8), Peer>>,
    rejected: AtomicU64,
    last_log: Mutex<HashMap<Reject, Instant>>,
    /// Secrets by file, re-read at most every [`SECRET_REFRESH`] (datagrams arrive at
    /// network rate; the file is not read for each).
    secrets: Mutex<HashMap<std::path::PathBuf, CachedSecret>>,
}

/// When it was read, and the secret (None: unreadable).
type CachedSecret = (Instant, Option<Vec<u8>>);

const SECRET_REFRESH: Duration = Duration::from_secs(5);

impl Heard {
    /// Accepts `hb` (already authenticated) arriving on the link whose local end is `local`.
    pub fn accept(&self, hb: &Heartbeat, local: SocketAddr, now: Instant) -> Result<(), Reject> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let p = peers.entry((hb.device.clone(), hb.node_id)).or_default();
        if p.links.get(&local).is_some_and(|l| hb.counter <= l.1) {
            return Err(Reject::Replay);
        }
        p.links.insert(local, (now, hb.counter));
        p.last_any = Some(now);
        p.epoch = hb.epoch;
        p.hosts_authority = hb.hosts_authority;
        p.lost_authority = hb.lost_authority;
        Ok(())
    }

    pub fn reject(&self, why: Reject, from: SocketAddr, now: Instant) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last_log.lock().unwrap_or_else(|e| e.into_inner());
        let due = match last.get(&why) {
            Some(t) => now.duration_since(*t) >= Duration::from_secs(10),
            None => true,
        };
        if due {
            last.insert(why, now);
            tracing::warn!(%from, reason = %why, "heartbeat rejected");
        }
    }

    /// The secret in `path` (cached; None if it cannot be read).
    pub fn secret(&self, path: &std::path::Path, now: Instant) -> Option<Vec<u8>> {
        let mut cache = self.secrets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, s)) = cache.get(path) {
            if now.saturating_duration_since(*at) < SECRET_REFRESH {
                return s.clone();
            }
        }
        let s = match super::load_secret(path) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("heartbeats: cluster secret: {e}");
                None
            }
        };
        cache.insert(path.to_path_buf(), (now, s.clone()));
        s
    }

    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// When anything authentic last came from `node` for `device`.
    pub fn last_heard(&self, device: &str, node: u8) -> Option<Instant> {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers
            .get(&(device.to_string(), node))
            .and_then(|p| p.last_any)
    }

    /// The epoch `node` announced hosting an authority at, if it does.
    pub fn hosts_authority(&self, device: &str, node: u8) -> Option<u64> {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers
            .get(&(device.to_string(), node))
            .filter(|p| p.hosts_authority)
            .map(|p| p.epoch)
    }

    /// Like [`Heard::hosts_authority`], from a heartbeat heard within `timeout`.
    pub fn hosts_authority_recent(
        &self,
        device: &str,
        node: u8,
        now: Instant,
        timeout: Duration,
    ) -> Option<u64> {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers
            .get(&(device.to_string(), node))
            .filter(|p| p.hosts_authority)
            .filter(|p| {
                p.last_any
                    .is_some_and(|t| now.saturating_duration_since(t) < timeout)
            })
            .map(|p| p.epoch)
    }

    /// What `node` said in its last heartbeat for `device`, if one came within `timeout`.
    pub fn recent(
        &self,
        device: &str,
        node: u8,
        now: Instant,
        timeout: Duration,
    ) -> Option<RecentPeer> {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers
            .get(&(device.to_string(), node))
            .filter(|p| {
                p.last_any
                    .is_some_and(|t| now.saturating_duration_since(t) < timeout)
            })
            .map(|p| RecentPeer {
                epoch: p.epoch,
                hosts_authority: p.hosts_authority,
                lost_authority: p.lost_authority,
            })
    }

    pub fn peer_views(
        &self,
        device: &str,
        r: &ReplicationConfig,
        now: Instant,
        timeout: Duration,
    ) -> Vec<PeerView> {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        r.partners
            .iter()
            .map(|p| {
                let heard = peers.get(&(device.to_string(), p.node_id));
                let mut v = PeerView {
                    node_id: p.node_id,
                    name: p.name.clone(),
                    last_heard_ms_ago: heard
                        .and_then(|h| h.last_any)
                        .map(|t| now.saturating_duration_since(t).as_millis() as u64),
                    hosts_authority_epoch: heard.filter(|h| h.hosts_authority).map(|h| h.epoch),
                    ..PeerView::default()
                };
                for l in p.sync_links.iter().chain(&p.heartbeat_links) {
                    let up = heard
                        .and_then(|h| h.links.get(&l.local))
                        .is_some_and(|t| now.saturating_duration_since(t.0) < timeout);
                    if up {
                        v.links_up.push(l.to_string());
                    } else {
                        v.links_down.push(l.to_string());
                    }
                }
                v
            })
            .collect()
    }
}

/// Every (device, partner node id, link) this node sends heartbeats on.
pub fn links(config: &NodeConfig) -> Vec<(String, u8, u8, LinkPair)> {
    let mut out = Vec::new();
    for d in &config.devices {
        let Some(r) = &d.replication else { continue };
        for p in &r.partners {
            for l in p.sync_links.iter().chain(&p.heartbeat_links) {
                out.push((d.name.clone(), r.node_id, p.node_id, *l));
            }
        }
    }
    out
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Counters: the wall clock in ns, strictly increasing within the process.
struct Counter(AtomicU64);

impl Counter {
    fn next(&self) -> u64 {
        let now = unix_ns();
        let mut prev = self.0.load(Ordering::Relaxed);
        loop {
            let n = now.max(prev + 1);
            match self
                .0
                .compare_exchange(prev, n, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return n,
                Err(p) => prev = p,
            }
        }
    }
}

/// Binds one UDP socket per local link address (lazily, retried), sends heartbeats every
/// interval and receives on each socket.
pub fn start(node: Arc<Node>) {
    tokio::spawn(async move {
        let counter = Counter(AtomicU64::new(0));
        let mut sockets: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
        let mut failed_bind: HashMap<SocketAddr, Instant> = HashMap::new();
        let interval = node.ha.settings().heartbeat_interval;
        let mut every = tokio::time::interval(interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let config = node.config_arc();
            for (device, me, _peer, link) in links(&config) {
                let Some(r) = config.device(&device).and_then(|d| d.replication.as_ref()) else {
                    continue;
                };
                let Some(secret) = node.ha.heartbeats.secret(&r.secret_file, Instant::now()) else {
                    continue;
                };
                let sock = match sockets.get(&link.local) {
                    Some(s) => s.clone(),
                    None => {
                        let now = Instant::now();
                        if failed_bind
                            .get(&link.local)
                            .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(5))
                        {
                            continue;
                        }
                        match UdpSocket::bind(link.local).await {
                            Ok(s) => {
                                let s = Arc::new(s);
                                sockets.insert(link.local, s.clone());
                                tokio::spawn(receive(node.clone(), s.clone(), link.local));
                                s
                            }
                            Err(e) => {
                                tracing::warn!(local = %link.local, "cannot bind the heartbeat socket (retrying): {e}");
                                failed_bind.insert(link.local, now);
                                continue;
                            }
                        }
                    }
                };
                let epoch_hosted = super::authority_host::hosted_epoch(&node, &device);
                let known = node
                    .ha
                    .view_mut(&device, |v| v.config.as_ref().map_or(0, |c| c.epoch.0));
                let hb = Heartbeat {
                    node_id: me,
                    device: device.clone(),
                    counter: counter.next(),
                    epoch: epoch_hosted.unwrap_or(0).max(known),
                    hosts_authority: epoch_hosted.is_some(),
                    lost_authority: node.ha.view_mut(&device, |v| v.authority_lost),
                };
                // A cut link fails here or silently; either way the peer times it out.
                let _ = sock
                    .send_to(&hb.encode(&secret, link.partner), link.partner)
                    .await;
            }
        }
    });
}

async fn receive(node: Arc<Node>, sock: Arc<UdpSocket>, local: SocketAddr) {
    let mut buf = [0u8; DATAGRAM_MAX + 1];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(%local, "heartbeat receive: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let now = Instant::now();
        let result = check(&node, &buf[..n], local, now);
        if let Err(why) = result {
            node.ha.heartbeats.reject(why, from, now);
        }
    }
}

fn check(node: &Node, datagram: &[u8], local: SocketAddr, now: Instant) -> Result<(), Reject> {
    let (claimed, _, _) = Heartbeat::parse(datagram)?;
    let config = node.config_arc();
    let r = config
        .device(&claimed.device)
        .and_then(|d| d.replication.as_ref())
        .ok_or(Reject::UnknownDevice)?;
    let partner = r
        .partners
        .iter()
        .find(|p| p.node_id == claimed.node_id)
        .ok_or(Reject::UnknownNode)?;
    // It must arrive on one of that partner's links.
    if !partner
        .sync_links
        .iter()
        .chain(&partner.heartbeat_links)
        .any(|l| l.local == local)
    {
        return Err(Reject::UnknownNode);
    }
    let secret = node
        .ha
        .heartbeats
        .secret(&r.secret_file, now)
        .ok_or(Reject::BadMac)?;
    let hb = Heartbeat::verify(datagram, &secret, local)?;
    node.ha.heartbeats.accept(&hb, local, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest() -> SocketAddr {
        "127.0.0.2:7000".parse().unwrap()
    }

    fn hb(counter: u64) -> Heartbeat {
        Heartbeat {
            node_id: 2,
            device: "disk1".into(),
            counter,
            epoch: 7,
            hosts_authority: true,
            lost_authority: false,
        }
    }

    #[test]
    fn round_trip_and_mac() {
        let secret = [7u8; 32];
        let b = hb(5).encode(&secret, dest());
        assert!(b.len() <= DATAGRAM_MAX);
        assert_eq!(Heartbeat::verify(&b, &secret, dest()).unwrap(), hb(5));
        assert_eq!(
            Heartbeat::verify(&b, &[8u8; 32], dest()),
            Err(Reject::BadMac)
        );
        // Valid only on the link it was sent on.
        let other: SocketAddr = "127.0.0.2:7001".parse().unwrap();
        assert_eq!(Heartbeat::verify(&b, &secret, other), Err(Reject::BadMac));
        // Every single-bit flip is caught.
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 1;
            assert!(
                Heartbeat::verify(&c, &secret, dest()).is_err(),
                "flip at {i}"
            );
        }
    }

    #[test]
    fn malformed_input_never_panics() {
        let secret = [1u8; 16];
        let good = hb(1).encode(&secret, dest());
        for n in 0..good.len() {
            assert!(Heartbeat::verify(&good[..n], &secret, dest()).is_err());
        }
        let mut long = good.clone();
        long.push(0);
        assert_eq!(
            Heartbeat::verify(&long, &secret, dest()),
            Err(Reject::Malformed)
        );
        let mut bad_len = good.clone();
        bad_len[5] = 200;
        assert_eq!(Heartbeat::parse(&bad_len).unwrap_err(), Reject::Malformed);
        let mut x = 0x1234_5678u32;
        for _ in 0..2000 {
            let n = (x % 140) as usize;
            let v: Vec<u8> = (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = Heartbeat::verify(&v, &secret, dest());
        }
    }

    #[test]
    fn replays_and_old_counters_are_rejected() {
        let heard = Heard::default();
        let local: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let t = Instant::now();
        heard.accept(&hb(10), local, t).unwrap();
        assert_eq!(heard.accept(&hb(10), local, t), Err(Reject::Replay));
        assert_eq!(heard.accept(&hb(9), local, t), Err(Reject::Replay));
        heard.accept(&hb(11), local, t).unwrap();
        // Another link has its own window: datagrams on different links overtake.
        let local2: SocketAddr = "127.0.0.1:9001".parse().unwrap();
        heard.accept(&hb(8), local2, t).unwrap();
        assert_eq!(heard.accept(&hb(8), local2, t), Err(Reject::Replay));
        assert_eq!(heard.hosts_authority("disk1", 2), Some(7));
        assert_eq!(heard.last_heard("disk1", 2), Some(t));
        assert_eq!(heard.last_heard("disk1", 3), None);
    }

    #[test]
    fn counters_increase() {
        let c = Counter(AtomicU64::new(u64::MAX / 2 + unix_ns()));
        let a = c.next();
        assert!(c.next() > a);
    }
}
