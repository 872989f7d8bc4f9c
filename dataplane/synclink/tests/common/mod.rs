//! Two `PeerLinks` on loopback addresses, polled alternately in one thread.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use tandem_config::LinkPair;
use tandem_ha::{BlockRange, Envelope, Epoch, Msg, NodeId, OpId};
use tandem_mirror::SharedPayload;
use tandem_synclink::{PeerConfig, PeerEvent, PeerLinks, SendError};

pub const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
/// Every test gives up (fails) after this long instead of hanging.
pub const TEST_LIMIT: Duration = Duration::from_secs(30);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "tandem_synclink=info".into()),
        )
        .try_init();
}

/// A free port on `ip` (probe and release; the nodes bind with SO_REUSEADDR).
pub fn free_port(ip: IpAddr) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn ip(net: u8, host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 77, net, host))
}

/// `n` links between 127.77.net.1 (node 1) and 127.77.net.2 (node 2), as each node sees them.
pub fn links(net: u8, n: usize) -> (Vec<LinkPair>, Vec<LinkPair>) {
    let (a, b) = (ip(net, 1), ip(net, 2));
    let mut la = Vec::new();
    for _ in 0..n {
        la.push(LinkPair {
            local: SocketAddr::new(a, free_port(a)),
            partner: SocketAddr::new(b, free_port(b)),
        });
    }
    let lb = la.iter().map(|l| l.reversed()).collect();
    (la, lb)
}

pub fn config(me: u8, peer: u8, links: Vec<LinkPair>, boot_id: u64) -> PeerConfig {
    PeerConfig::new(
        NodeId(me),
        NodeId(peer),
        format!("node{peer}"),
        links,
        [9; 16],
        77,
        SECRET.to_vec(),
        boot_id,
    )
}

pub struct Node {
    pub pl: PeerLinks,
    pub events: Vec<PeerEvent>,
    /// Messages received, in order: (op n, payload).
    pub got: Vec<(u64, Option<SharedPayload>)>,
    pub me: u8,
}

impl Node {
    pub fn new(cfg: PeerConfig) -> Node {
        let me = cfg.me.0;
        Node {
            pl: PeerLinks::new(cfg).unwrap(),
            events: Vec::new(),
            got: Vec::new(),
            me,
        }
    }

    pub fn poll(&mut self) {
        let start = self.events.len();
        self.pl.poll(Instant::now(), &mut self.events);
        for e in &self.events[start..] {
            if let PeerEvent::Message(env) = e {
                self.got.push(match &env.msg {
                    Msg::Mirror { id, data, .. } => (id.n, Some(data.clone())),
                    Msg::Commit { id } => (id.n, None),
                    other => panic!("unexpected message {other:?}"),
                });
            }
        }
        // Keep the event log small: messages are in `got`.
        self.events.retain(|e| !matches!(e, PeerEvent::Message(_)));
    }

    pub fn saw(&self, f: impl Fn(&PeerEvent) -> bool) -> bool {
        self.events.iter().any(f)
    }
}

/// The payload of message `n` (sizes mixed, from empty to 1 MiB).
pub fn payload_len(n: u64) -> usize {
    if n % 250 == 7 {
        1024 * 1024
    } else if n.is_multiple_of(7) {
        (n as usize * 131) % 65536
    } else {
        512 + (n as usize * 37) % 3584
    }
}

/// Distinct per message, and cheap to build in a debug build (a test that stops polling
/// for a second would see its links declared dead).
pub fn payload(n: u64) -> Vec<u8> {
    let len = payload_len(n);
    let mut v = vec![(n as u8) ^ 0x5a; len];
    if len >= 16 {
        v[..8].copy_from_slice(&n.to_le_bytes());
        v[len - 8..].copy_from_slice(&(!n).to_le_bytes());
    }
    v
}

/// Message `n` from node `origin`: a Mirror with its payload, or (every 5th) a Commit.
pub fn message(origin: u8, n: u64) -> Envelope<SharedPayload> {
    let id = OpId {
        origin: NodeId(origin),
        n,
    };
    let msg = if n % 5 == 4 {
        Msg::Commit { id }
    } else {
        Msg::Mirror {
            id,
            range: BlockRange::new(n * 8, 8),
            data: SharedPayload::from_host(&payload(n)),
            commit_follows: n.is_multiple_of(2),
        }
    };
    Envelope {
        epoch: Epoch(3),
        msg,
    }
}

/// Checks that `got` is exactly messages `0..got.len()` from `from`, in order, intact.
pub fn check_in_order(got: &[(u64, Option<SharedPayload>)], first: u64) {
    for (i, (n, p)) in got.iter().enumerate() {
        assert_eq!(
            *n,
            first + i as u64,
            "message {i} out of order or duplicated"
        );
        match p {
            Some(p) => {
                assert!(p.is_intact(), "message {n}: payload CRC");
                assert!(
                    p.as_slice() == &payload(*n)[..],
                    "message {n}: payload bytes"
                );
            }
            None => assert_eq!(n % 5, 4, "message {n} lost its payload"),
        }
    }
}

/// Sends messages `next..total` from `node` as far as the window allows, at most 32 per
/// call (building payloads in a debug build is slow; a loop that polls rarely starves its
/// links like any caller would).
pub fn send_some(node: &mut Node, next: &mut u64, total: u64) {
    let stop = total.min(*next + 32);
    while *next < stop {
        match node.pl.send(message(node.me, *next)) {
            Ok(()) => *next += 1,
            Err(SendError::Full) => return,
            Err(e) => panic!("send: {e}"),
        }
    }
}

/// Polls both nodes until `done` says so; fails after [`TEST_LIMIT`].
pub fn run_until(a: &mut Node, b: &mut Node, mut done: impl FnMut(&mut Node, &mut Node) -> bool) {
    let end = Instant::now() + TEST_LIMIT;
    loop {
        a.poll();
        b.poll();
        if done(a, b) {
            return;
        }
        assert!(
            Instant::now() < end,
            "timed out; node 1 events {:?} status {:?}; node 2 events {:?} status {:?}",
            a.events,
            a.pl.status(),
            b.events,
            b.pl.status()
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Polls both nodes for `d`.
pub fn run_for(a: &mut Node, b: &mut Node, d: Duration) {
    let end = Instant::now() + d;
    run_until(a, b, |_, _| Instant::now() >= end);
}
