//! Heartbeats between control services, over every sync link and every heartbeat link of a
//! replicated device (UDP, on each link's own addresses: the same IP:PORT as the link,
//! UDP instead of TCP).
//!
//! Datagram, version 2 (at most [`DATAGRAM_MAX`] bytes):
//! ```text
//! "THB2" | node id u8 | device length u8 | device | counter u64 BE | epoch u64 BE
//!        | flags u8 (bit 0: the sender hosts the device's authority; bit 1: the sender has
//!          lost the authority it follows, three-node majority; bit 2: an echo follows
//!          that means something)
//!        | incarnation u64 BE | echo incarnation u64 BE | echo counter u64 BE
//!        | HMAC-SHA256 (32)
//! ```
//! The incarnation is random, drawn at the sender's process start; the echo names the
//! newest heartbeat the sender has received from the receiver for this device (its
//! incarnation and counter; see [`super::echo`]: a restarted or paused two-node authority
//! waits for an echo of a heartbeat it sent after that). Version 1 (`"THB1"`, the same
//! without the three u64 after the flags) is still accepted: it has no incarnation and no
//! echo, so it is heard (for takeovers and announcements) but never ends such a wait.
//!
//! The MAC covers everything before it and the destination address (`IP:PORT`, not sent:
//! the receiver uses its own end of the link), keyed with the device's cluster secret
//! (`secret_file`); so a datagram is valid only on the link it was sent on. The counter is
//! the sender's clock in nanoseconds since the Unix epoch, raised by one when the clock does
//! not advance; a receiver accepts, per link, only counters above the last it accepted from
//! that node for that device, so a recorded datagram cannot be replayed (per link, because
//! datagrams on different links overtake each other). What a partner announces (epoch,
//! flags, echo) is taken from its newest heartbeat ([`super::echo::is_newer`]), not from
//! one overtaken on another link. Anything else is rejected, counted and logged (at most
//! once per 10 s per reason).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tandem_config::{LinkPair, NodeConfig, ReplicationConfig};
use tokio::net::UdpSocket;

use super::echo::{self, HeartbeatId};
use super::PeerView;
use crate::service::Node;

type HmacSha256 = Hmac<Sha256>;

const MAGIC_V1: &[u8; 4] = b"THB1";
const MAGIC: &[u8; 4] = b"THB2";
const MAC_LEN: usize = 32;
pub const DEVICE_NAME_MAX: usize = 64;
/// Counter, epoch, flags (both versions).
const FIXED_V1: usize = 8 + 8 + 1;
/// Then incarnation, echo incarnation, echo counter (version 2).
const FIXED_V2: usize = FIXED_V1 + 3 * 8;
pub const DATAGRAM_MAX: usize = 4 + 1 + 1 + DEVICE_NAME_MAX + FIXED_V2 + MAC_LEN;
const FLAG_HOSTS_AUTHORITY: u8 = 1;
const FLAG_LOST_AUTHORITY: u8 = 2;
const FLAG_ECHO: u8 = 4;

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
    /// The sender's process incarnation (0: a version 1 datagram, which has none).
    pub incarnation: u64,
    /// The newest heartbeat the sender has received from the receiver ([`super::echo`]).
    pub echo: Option<HeartbeatId>,
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
        if self.echo.is_some() {
            flags |= FLAG_ECHO;
        }
        b.push(flags);
        let echo = self.echo.unwrap_or_default();
        b.extend_from_slice(&self.incarnation.to_be_bytes());
        b.extend_from_slice(&echo.incarnation.to_be_bytes());
        b.extend_from_slice(&echo.counter.to_be_bytes());
        let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
        mac.update(&b);
        mac.update(dest.to_string().as_bytes());
        b.extend_from_slice(&mac.finalize().into_bytes());
        b
    }

    /// Parses without checking the MAC (the device name picks the secret). Version 1 and
    /// 2; lengths are checked before anything is read, so no input panics.
    pub fn parse(b: &[u8]) -> Result<(Heartbeat, &[u8], &[u8]), Reject> {
        if b.len() > DATAGRAM_MAX || b.len() < 4 + 2 + FIXED_V1 + MAC_LEN {
            return Err(Reject::Malformed);
        }
        let fixed = match &b[..4] {
            m if m == MAGIC => FIXED_V2,
            m if m == MAGIC_V1 => FIXED_V1,
            _ => return Err(Reject::Malformed),
        };
        let node_id = b[4];
        let n = usize::from(b[5]);
        if n == 0 || n > DEVICE_NAME_MAX || b.len() != 6 + n + fixed + MAC_LEN {
            return Err(Reject::Malformed);
        }
        let device = std::str::from_utf8(&b[6..6 + n]).map_err(|_| Reject::Malformed)?;
        let at = 6 + n;
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_be_bytes(a)
        };
        let flags = b[at + 16];
        let (incarnation, echo) = if fixed == FIXED_V2 {
            let echo = HeartbeatId {
                incarnation: u64_at(at + 25),
                counter: u64_at(at + 33),
            };
            (u64_at(at + 17), (flags & FLAG_ECHO != 0).then_some(echo))
        } else {
            (0, None)
        };
        let hb = Heartbeat {
            node_id,
            device: device.to_string(),
            counter: u64_at(at),
            epoch: u64_at(at + 8),
            hosts_authority: flags & FLAG_HOSTS_AUTHORITY != 0,
            lost_authority: flags & FLAG_LOST_AUTHORITY != 0,
            incarnation,
            echo,
        };
        let body_end = at + fixed;
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
    /// The newest heartbeat heard (what this node echoes back); the fields below are
    /// from it.
    newest: Option<HeartbeatId>,
    epoch: u64,
    hosts_authority: bool,
    lost_authority: bool,
    echo: Option<HeartbeatId>,
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
        let id = HeartbeatId {
            incarnation: hb.incarnation,
            counter: hb.counter,
        };
        if echo::is_newer(p.newest, id) {
            p.newest = Some(id);
            p.epoch = hb.epoch;
            p.hosts_authority = hb.hosts_authority;
            p.lost_authority = hb.lost_authority;
            p.echo = hb.echo;
        }
        Ok(())
    }

    /// The newest heartbeat heard from `node` for `device` (what this node echoes back).
    /// None for a version 1 sender (no incarnation to echo).
    pub fn newest_from(&self, device: &str, node: u8) -> Option<HeartbeatId> {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers
            .get(&(device.to_string(), node))
            .and_then(|p| p.newest)
            .filter(|id| id.incarnation != 0)
    }

    /// The echo in `node`'s newest heartbeat for `device`: the newest heartbeat of this
    /// node it had heard when it sent that one.
    pub fn echo_from(&self, device: &str, node: u8) -> Option<HeartbeatId> {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.get(&(device.to_string(), node)).and_then(|p| p.echo)
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

/// Binds one UDP socket per local link address (lazily, retried), sends heartbeats every
/// interval and receives on each socket.
pub fn start(node: Arc<Node>) {
    tokio::spawn(async move {
        let seq = node.ha.heartbeat_seq.clone();
        let mut sockets: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
        let mut failed_bind: HashMap<SocketAddr, Instant> = HashMap::new();
        let interval = node.ha.settings().heartbeat_interval;
        let mut every = tokio::time::interval(interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let config = node.config_arc();
            for (device, me, peer, link) in links(&config) {
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
                let id = seq.next();
                let hb = Heartbeat {
                    node_id: me,
                    device: device.clone(),
                    counter: id.counter,
                    incarnation: id.incarnation,
                    echo: node.ha.heartbeats.newest_from(&device, peer),
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
            incarnation: 1,
            echo: None,
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

    fn id(incarnation: u64, counter: u64) -> HeartbeatId {
        HeartbeatId {
            incarnation,
            counter,
        }
    }

    #[test]
    fn the_echo_round_trips_and_is_authenticated() {
        let secret = [3u8; 32];
        let mut h = hb(12);
        h.echo = Some(id(5, 77));
        let b = h.encode(&secret, dest());
        assert_eq!(b.len(), DATAGRAM_MAX - (DEVICE_NAME_MAX - "disk1".len()));
        assert_eq!(&b[..4], b"THB2");
        assert_eq!(Heartbeat::verify(&b, &secret, dest()).unwrap(), h);
        // No echo yet (nothing heard from the receiver): none comes out, whatever the bytes.
        h.echo = None;
        let b = h.encode(&secret, dest());
        assert_eq!(Heartbeat::verify(&b, &secret, dest()).unwrap().echo, None);
        // An echo's bytes are under the MAC: a forged echo is rejected.
        let mut h2 = hb(12);
        h2.echo = Some(id(5, 77));
        let mut forged = h2.encode(&secret, dest());
        let echo_counter_at = forged.len() - MAC_LEN - 1;
        forged[echo_counter_at] ^= 0x80;
        assert_eq!(
            Heartbeat::verify(&forged, &secret, dest()),
            Err(Reject::BadMac)
        );
    }

    /// A version 1 datagram (as an older control service sends): "THB1", no incarnation
    /// and no echo, MAC over its own bytes.
    fn encode_v1(h: &Heartbeat, secret: &[u8], dest: SocketAddr) -> Vec<u8> {
        let mut b = b"THB1".to_vec();
        b.push(h.node_id);
        b.push(h.device.len() as u8);
        b.extend_from_slice(h.device.as_bytes());
        b.extend_from_slice(&h.counter.to_be_bytes());
        b.extend_from_slice(&h.epoch.to_be_bytes());
        b.push(u8::from(h.hosts_authority) | FLAG_ECHO);
        let mut mac = HmacSha256::new_from_slice(secret).unwrap();
        mac.update(&b);
        mac.update(dest.to_string().as_bytes());
        b.extend_from_slice(&mac.finalize().into_bytes());
        b
    }

    #[test]
    fn a_version_1_datagram_is_heard_without_an_echo() {
        let secret = [4u8; 32];
        let b = encode_v1(&hb(9), &secret, dest());
        let got = Heartbeat::verify(&b, &secret, dest()).unwrap();
        assert_eq!(got.counter, 9);
        assert!(got.hosts_authority);
        assert_eq!(got.incarnation, 0);
        assert_eq!(got.echo, None, "the echo flag means nothing in version 1");
        // Truncated or padded to the other version's length: malformed, never a panic.
        for n in 0..b.len() {
            assert!(Heartbeat::verify(&b[..n], &secret, dest()).is_err());
        }
        let mut as_v2 = b.clone();
        as_v2[..4].copy_from_slice(b"THB2");
        assert_eq!(Heartbeat::parse(&as_v2).unwrap_err(), Reject::Malformed);
        let mut unknown = hb(1).encode(&secret, dest());
        unknown[..4].copy_from_slice(b"THB3");
        assert_eq!(Heartbeat::parse(&unknown).unwrap_err(), Reject::Malformed);
        // Nothing to echo back to a version 1 sender.
        let heard = Heard::default();
        let local: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        heard.accept(&got, local, Instant::now()).unwrap();
        assert_eq!(heard.newest_from("disk1", 2), None);
        assert!(heard.last_heard("disk1", 2).is_some());
    }

    #[test]
    fn announcements_come_from_the_newest_heartbeat_not_an_overtaken_one() {
        let heard = Heard::default();
        let (l1, l2): (SocketAddr, SocketAddr) = (
            "127.0.0.1:9000".parse().unwrap(),
            "127.0.0.1:9001".parse().unwrap(),
        );
        let t = Instant::now();
        let mut newer = hb(20);
        newer.echo = Some(id(9, 300));
        heard.accept(&newer, l1, t).unwrap();
        // Sent earlier, delayed on the other link: heard, but announces nothing.
        let mut older = hb(15);
        older.hosts_authority = false;
        older.echo = Some(id(9, 100));
        heard.accept(&older, l2, t).unwrap();
        assert_eq!(heard.hosts_authority("disk1", 2), Some(7));
        assert_eq!(heard.echo_from("disk1", 2), Some(id(9, 300)));
        assert_eq!(heard.newest_from("disk1", 2), Some(id(1, 20)));
        // The partner restarted (another incarnation; its clock may have stepped back).
        let mut restarted = hb(10);
        restarted.incarnation = 2;
        restarted.hosts_authority = false;
        restarted.echo = None;
        heard.accept(&restarted, l2, t).unwrap_err(); // replay check per link holds
        heard
            .accept(&restarted, "127.0.0.1:9002".parse().unwrap(), t)
            .unwrap();
        assert_eq!(heard.newest_from("disk1", 2), Some(id(2, 10)));
        assert_eq!(heard.echo_from("disk1", 2), None);
        assert_eq!(heard.hosts_authority("disk1", 2), None);
    }
}
