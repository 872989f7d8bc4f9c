//! PeerLinks over real TCP on 127.77.x.y: delivery, failover, authentication, restart,
//! hostile streams, the send window. Every test fails after `TEST_LIMIT` instead of hanging.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use tandem_mirror::frame::{Frame, HeaderRepr};
use tandem_mirror::SharedPayload;
use tandem_synclink::{PeerEvent, PeerLinks, SendError};

fn connected(n: &Node) -> bool {
    n.saw(|e| matches!(e, PeerEvent::Connected { .. }))
}

#[test]
fn messages_arrive_in_order_with_payloads_intact_both_ways() {
    init_tracing();
    let (la, lb) = links(1, 1);
    let mut a = Node::new(config(1, 2, la, 1001));
    let mut b = Node::new(config(2, 1, lb, 2001));
    // Queued before any link exists: delivered once one comes up.
    let total = 3000u64;
    let (mut next_a, mut next_b) = (0u64, 0u64);
    send_some(&mut a, &mut next_a, 10);
    run_until(&mut a, &mut b, |a, b| {
        send_some(a, &mut next_a, total);
        send_some(b, &mut next_b, total / 2);
        a.got.len() as u64 == total / 2 && b.got.len() as u64 == total
    });
    check_in_order(&b.got, 0);
    check_in_order(&a.got, 0);
    assert!(a.saw(|e| *e == PeerEvent::Connected { peer_boot_id: 2001 }));
    assert!(b.saw(|e| *e == PeerEvent::Connected { peer_boot_id: 1001 }));
    assert!(a.saw(|e| *e == PeerEvent::LinkUp { link: 0 }));
    let payload_bytes: u64 = (0..total)
        .filter(|n| n % 5 != 4)
        .map(|n| payload_len(n) as u64)
        .sum();
    assert!(a.pl.bytes_sent() > payload_bytes);
    // Everything gets acknowledged.
    run_until(&mut a, &mut b, |a, b| {
        a.pl.unacked_msgs() == 0 && b.pl.unacked_msgs() == 0
    });
    assert_eq!(a.pl.duplicates_dropped() + b.pl.duplicates_dropped(), 0);
    let st = a.pl.status();
    assert_eq!(st.len(), 1);
    assert!(st[0].up);
    assert!(!a.saw(|e| matches!(e, PeerEvent::LinkDown { .. })));
}

#[test]
fn a_broken_link_moves_traffic_to_the_other_exactly_once_in_order() {
    init_tracing();
    let (la, lb) = links(2, 2);
    let mut a = Node::new(config(1, 2, la, 11));
    let mut b = Node::new(config(2, 1, lb, 22));
    run_until(&mut a, &mut b, |a, b| {
        a.pl.links_up().len() == 2 && b.pl.links_up().len() == 2
    });
    let total = 4000u64;
    let mut next = 0u64;
    // Break the sender's active link while a window of messages is in flight.
    let mut broke = Vec::new();
    run_until(&mut a, &mut b, |a, b| {
        send_some(a, &mut next, total);
        let got = b.got.len();
        if broke.is_empty() && got >= 500 {
            let l = a.pl.active_link().expect("an active link");
            a.pl.debug_break_link(l);
            broke.push(l);
            return false;
        }
        // The second break on the receiver's side, once the first link is back.
        if broke.len() == 1
            && got >= 1500
            && a.pl.links_up().len() == 2
            && b.pl.links_up().len() == 2
        {
            // The link node 1 sends on now, cut at node 2's end.
            let l = a.pl.active_link().expect("an active link");
            b.pl.debug_break_link(l);
            broke.push(l);
        }
        b.got.len() as u64 == total && broke.len() == 2
    });
    check_in_order(&b.got, 0);
    assert_eq!(broke.len(), 2);
    assert_ne!(
        broke[0], broke[1],
        "both links carried traffic and failed once"
    );
    eprintln!(
        "resent messages dropped as duplicates: {}",
        b.pl.duplicates_dropped()
    );
    assert!(a.saw(|e| matches!(e, PeerEvent::LinkDown { .. })));
    assert!(b.saw(|e| matches!(e, PeerEvent::LinkDown { .. })));
    // One link was left at every moment: never all down, one incarnation.
    assert!(!a.saw(|e| *e == PeerEvent::AllLinksDown));
    assert!(!a.saw(|e| matches!(e, PeerEvent::PeerRestarted { .. })));

    // Both links cut: everything stays queued and arrives after the reconnect.
    run_until(&mut a, &mut b, |a, b| {
        a.pl.links_up().len() == 2 && b.pl.links_up().len() == 2
    });
    a.pl.debug_break_link(0);
    a.pl.debug_break_link(1);
    let total2 = total + 300;
    run_until(&mut a, &mut b, |a, b| {
        send_some(a, &mut next, total2);
        a.saw(|e| *e == PeerEvent::AllLinksDown) && b.saw(|e| *e == PeerEvent::AllLinksDown)
    });
    run_until(&mut a, &mut b, |a, _| {
        send_some(a, &mut next, total2);
        a.pl.is_up()
    });
    run_until(&mut a, &mut b, |a, b| {
        send_some(a, &mut next, total2);
        b.got.len() as u64 == total2
    });
    check_in_order(&b.got, 0);
    assert_eq!(
        a.events
            .iter()
            .filter(|e| matches!(e, PeerEvent::Connected { .. }))
            .count(),
        1,
        "a reconnect to the same incarnation is not a new Connected"
    );
}

#[test]
fn a_wrong_secret_is_refused_and_never_connects() {
    init_tracing();
    let (la, lb) = links(3, 1);
    let mut a = Node::new(config(1, 2, la, 1));
    let mut cb = config(2, 1, lb, 2);
    cb.secret = b"another secret, also 32 bytes..".to_vec();
    let mut b = Node::new(cb);
    a.pl.send(message(1, 0)).unwrap();
    b.pl.send(message(2, 0)).unwrap();
    run_until(&mut a, &mut b, |a, b| {
        let refused = |n: &Node| {
            n.pl.status()[0]
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("proof does not verify"))
        };
        refused(a) && refused(b)
    });
    // Let it retry a few times: still nothing.
    run_for(&mut a, &mut b, Duration::from_millis(700));
    for n in [&a, &b] {
        assert!(!connected(n), "{:?}", n.events);
        assert!(n.got.is_empty());
        assert!(!n.pl.is_up());
        assert!(!n.pl.status()[0].up);
    }
}

#[test]
fn a_restarted_peer_is_recognized() {
    init_tracing();
    let (la, lb) = links(4, 2);
    let mut a = Node::new(config(1, 2, la, 100));
    let mut b = Node::new(config(2, 1, lb.clone(), 200));
    let mut next = 0u64;
    run_until(&mut a, &mut b, |a, b| {
        send_some(a, &mut next, 50);
        b.got.len() == 50
    });
    check_in_order(&b.got, 0);
    // Node 2 stops; node 1 goes on queueing for it.
    drop(b);
    let end = Instant::now() + TEST_LIMIT;
    while !a.saw(|e| *e == PeerEvent::AllLinksDown) {
        a.poll();
        send_some(&mut a, &mut next, 60);
        assert!(Instant::now() < end, "{:?}", a.events);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(a.saw(|e| matches!(e, PeerEvent::LinkDown { .. })));
    assert_eq!(a.pl.unacked_msgs(), 10);
    // Node 2 starts again: a new incarnation.
    let mut b = Node::new(config(2, 1, lb, 201));
    run_until(&mut a, &mut b, |a, b| {
        connected(a) && connected(b) && a.pl.is_up()
    });
    assert!(a.saw(|e| *e == PeerEvent::PeerRestarted { peer_boot_id: 201 }));
    assert!(a.saw(|e| *e == PeerEvent::Connected { peer_boot_id: 201 }));
    assert!(b.saw(|e| *e == PeerEvent::Connected { peer_boot_id: 100 }));
    assert!(!b.saw(|e| matches!(e, PeerEvent::PeerRestarted { .. })));
    // What was queued for the old incarnation is gone; new messages flow both ways.
    assert_eq!(a.pl.unacked_msgs(), 0);
    let (mut na, mut nb) = (1000u64, 0u64);
    run_until(&mut a, &mut b, |a, b| {
        send_some(a, &mut na, 1100);
        send_some(b, &mut nb, 100);
        b.got.len() == 100 && a.got.len() == 100
    });
    check_in_order(&b.got, 1000);
    check_in_order(&a.got, 0);
}

/// Reads until the peer closes the connection; false if it stays open past `limit`.
fn closed_by_peer(s: &mut TcpStream, poll: &mut dyn FnMut(), limit: Duration) -> bool {
    s.set_nonblocking(true).unwrap();
    let end = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        poll();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {} // its Hello
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return true, // reset
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

#[test]
fn garbage_and_oversize_streams_are_closed_and_a_good_peer_still_connects() {
    init_tracing();
    let (la, lb) = links(5, 1);
    let listen: SocketAddr = lb[0].local;
    let mut b = Node::new(config(2, 1, lb, 2));
    let mut poll_b = || b.poll();

    // Random bytes.
    let mut junk = TcpStream::connect(listen).unwrap();
    let bytes: Vec<u8> = (0..10_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    junk.write_all(&bytes).unwrap();
    assert!(closed_by_peer(
        &mut junk,
        &mut poll_b,
        Duration::from_secs(3)
    ));

    // A well-formed header announcing a payload over the limit (refused before it arrives).
    let mut big = vec![0u8; 32];
    let mut f = Frame::new_unchecked(&mut big[..]);
    HeaderRepr {
        msg_type: 0x01,
        flags: 0,
        header_len: 32,
        payload_len: 1 << 30,
        epoch: 1,
        payload_crc: 0,
    }
    .emit(&mut f);
    f.fill_header_crc();
    let mut over = TcpStream::connect(listen).unwrap();
    over.write_all(&big).unwrap();
    assert!(closed_by_peer(
        &mut over,
        &mut poll_b,
        Duration::from_secs(3)
    ));

    // A replication frame before the handshake.
    let mut early = TcpStream::connect(listen).unwrap();
    let mut frame = Vec::new();
    let env = message(1, 4); // a Commit
    tandem_mirror::encode(
        &tandem_ha::Envelope {
            epoch: env.epoch,
            msg: match env.msg {
                tandem_ha::Msg::Commit { id } => tandem_ha::Msg::<&[u8]>::Commit { id },
                _ => unreachable!(),
            },
        },
        &Default::default(),
        &mut frame,
    )
    .unwrap();
    early.write_all(&frame).unwrap();
    assert!(closed_by_peer(
        &mut early,
        &mut poll_b,
        Duration::from_secs(3)
    ));

    let err = b.pl.status()[0].last_error.clone().unwrap_or_default();
    assert!(err.contains("before the link is authenticated"), "{err}");
    // Silent strangers fill every unauthenticated slot (until their handshake deadline):
    // the oldest is evicted and the peer still gets in.
    let _silent: Vec<TcpStream> = (0..6)
        .map(|_| TcpStream::connect(listen).unwrap())
        .collect();
    let mut a = Node::new(config(1, 2, la, 1));
    a.pl.send(message(1, 0)).unwrap();
    run_until(&mut a, &mut b, |_, b| b.got.len() == 1);
    check_in_order(&b.got, 0);
    assert!(!b.saw(|e| matches!(e, PeerEvent::LinkDown { .. })));
}

#[test]
fn a_full_window_refuses_then_drains() {
    init_tracing();
    let (la, lb) = links(6, 1);
    let mut ca = config(1, 2, la, 1);
    ca.unacked_max_msgs = 8;
    ca.unacked_max_bytes = 200 * 1024;
    let mut a = Node::new(ca);
    // No peer yet: nothing is acknowledged.
    for n in 0..8 {
        a.pl.send(message(1, n * 5 + 4)).unwrap(); // Commits: no payload
    }
    assert_eq!(a.pl.send(message(1, 44)), Err(SendError::Full));
    assert_eq!(a.pl.unacked_msgs(), 8);
    a.poll();
    assert_eq!(a.pl.send(message(1, 44)), Err(SendError::Full));

    let mut b = Node::new(config(2, 1, lb, 2));
    run_until(&mut a, &mut b, |a, _| a.pl.unacked_msgs() == 0);
    assert_eq!(b.got.len(), 8);
    a.pl.send(message(1, 44)).unwrap();

    // The byte bound: one message larger than the window still goes alone, then Full.
    run_until(&mut a, &mut b, |a, _| a.pl.unacked_msgs() == 0);
    let big = |n: u64| tandem_ha::Envelope {
        epoch: tandem_ha::Epoch(1),
        msg: tandem_ha::Msg::Mirror {
            id: tandem_ha::OpId {
                origin: tandem_ha::NodeId(1),
                n,
            },
            range: tandem_ha::BlockRange::new(0, 64),
            data: SharedPayload::from_host(&vec![n as u8; 256 * 1024]),
            commit_follows: false,
        },
    };
    a.pl.send(big(100)).unwrap();
    assert_eq!(a.pl.send(big(101)), Err(SendError::Full));
    run_until(&mut a, &mut b, |a, _| a.pl.send(big(101)).is_ok());
    run_until(&mut a, &mut b, |_, b| b.got.len() == 11);
    let ns: Vec<u64> = b.got.iter().map(|g| g.0).collect();
    assert_eq!(ns, vec![4, 9, 14, 19, 24, 29, 34, 39, 44, 100, 101]);
}

#[test]
fn oversize_messages_are_refused_on_send() {
    let (la, _) = links(7, 1);
    let mut ca = config(1, 2, la, 1);
    ca.limits = tandem_mirror::Limits::new(4096).unwrap();
    let mut pl = PeerLinks::new(ca).unwrap();
    let m = message(1, 7); // 1 MiB
    assert!(matches!(pl.send(m), Err(SendError::Unencodable(_))));
    assert_eq!(pl.unacked_msgs(), 0);
}

#[test]
fn the_caller_can_sleep_on_fds_and_deadline() {
    let (la, _) = links(8, 2);
    let pl = PeerLinks::new(config(1, 2, la, 1)).unwrap();
    let mut fds = Vec::new();
    pl.wait_fds(&mut fds);
    assert_eq!(fds.len(), 2, "one listener per link");
    assert!(fds.iter().all(|(_, w)| !w));
    // The dialer has to dial now.
    assert!(pl.next_deadline().unwrap() <= Instant::now());
}

#[test]
fn idle_links_stay_up_on_keepalives() {
    init_tracing();
    let (la, lb) = links(9, 2);
    let mut a = Node::new(config(1, 2, la, 1));
    let mut b = Node::new(config(2, 1, lb, 2));
    run_until(&mut a, &mut b, |a, b| {
        a.pl.links_up().len() == 2 && b.pl.links_up().len() == 2
    });
    run_for(&mut a, &mut b, Duration::from_millis(2500));
    for n in [&a, &b] {
        assert!(
            !n.saw(|e| matches!(e, PeerEvent::LinkDown { .. })),
            "{:?}",
            n.events
        );
        assert_eq!(n.pl.links_up(), vec![0, 1]);
        // Idle: the caller sleeps on readability only (listeners and both links), until
        // the next keepalive is due.
        let mut fds = Vec::new();
        n.pl.wait_fds(&mut fds);
        assert_eq!(fds.len(), 4);
        assert!(fds.iter().all(|&(_, w)| !w), "{fds:?}");
        let d = n.pl.next_deadline().unwrap();
        assert!(d <= Instant::now() + Duration::from_millis(100));
    }
}

#[test]
fn a_silent_peer_is_declared_dead() {
    init_tracing();
    let (_, lb) = links(13, 1);
    let listen = lb[0].local;
    let mut cb = config(2, 1, lb, 2);
    cb.keepalive = Duration::from_millis(50);
    cb.dead_after = Duration::from_millis(300);
    let mut b = Node::new(cb);
    // Authenticates, then neither sends nor closes (a pulled cable looks like this).
    let _s = fake_node1(listen, &mut b, 1);
    let t = Instant::now();
    let end = t + TEST_LIMIT;
    while !b.saw(|e| matches!(e, PeerEvent::LinkDown { .. })) {
        b.poll();
        assert!(Instant::now() < end);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
    assert!(b.saw(
        |e| matches!(e, PeerEvent::LinkDown { reason, .. } if reason.contains("nothing received"))
    ));
    assert!(b.saw(|e| *e == PeerEvent::AllLinksDown));
}

/// A hand-driven node 1: authenticates on link 0 of node 2 with the right secret, then
/// behaves as the test wants.
fn fake_node1(listen: SocketAddr, b: &mut Node, boot_id: u64) -> TcpStream {
    use tandem_mirror::{Handshake, HandshakeMsg, Inbound, Limits, LinkConfig, LinkSession, Role};
    let mut s = TcpStream::connect(listen).unwrap();
    s.set_nonblocking(true).unwrap();
    let cfg = LinkConfig {
        cluster_id: [9; 16],
        node_id: tandem_ha::NodeId(1),
        peer_node_id: tandem_ha::NodeId(2),
        device_id: 77,
        link_id: 0,
        boot_id,
        secret: SECRET.to_vec(),
    };
    let hs = Handshake::new(cfg, Role::Initiator, [0x42; 32], 0).unwrap();
    let mut out = Vec::new();
    hs.hello().encode(&mut out).unwrap();
    s.write_all(&out).unwrap();
    let mut session = LinkSession::new(hs, Limits::default());
    let mut dec = tandem_mirror::FrameDecoder::new(Limits::default());
    let end = Instant::now() + Duration::from_secs(5);
    while !session.is_authenticated() {
        assert!(Instant::now() < end, "fake node 1: no handshake");
        b.poll();
        let space = dec.free_space();
        match s.read(space) {
            Ok(0) => panic!("node 2 closed the fake's connection"),
            Ok(n) => dec.advance(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
        while let Some(f) = dec.next_frame().unwrap() {
            if let Inbound::Handshake { reply: Some(m) } = session.on_frame(f).unwrap() {
                let HandshakeMsg::Proof { .. } = m else {
                    panic!()
                };
                m.encode(&mut out).unwrap();
                s.write_all(&out).unwrap();
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    s
}

fn mirror_frame(n: u64) -> Vec<u8> {
    let data = payload(n);
    let env: tandem_ha::Envelope<&[u8]> = tandem_ha::Envelope {
        epoch: tandem_ha::Epoch(3),
        msg: tandem_ha::Msg::Mirror {
            id: tandem_ha::OpId {
                origin: tandem_ha::NodeId(1),
                n,
            },
            range: tandem_ha::BlockRange::new(8, 8),
            data: &data,
            commit_follows: false,
        },
    };
    let mut f = Vec::new();
    tandem_mirror::encode(&env, &Default::default(), &mut f).unwrap();
    f
}

fn link_frame(m: tandem_mirror::LinkMsg) -> Vec<u8> {
    let mut f = Vec::new();
    m.encode(&mut f).unwrap();
    f
}

#[test]
fn a_bad_payload_crc_or_a_sequence_gap_closes_the_link() {
    init_tracing();
    let (la, lb) = links(10, 1);
    let listen = lb[0].local;
    let mut b = Node::new(config(2, 1, lb, 2));

    // Authenticated, then a Mirror whose payload was corrupted on the way.
    let mut s = fake_node1(listen, &mut b, 1);
    let mut bytes = link_frame(tandem_mirror::LinkMsg::Start { first_seq: 0 });
    let mut m = mirror_frame(1); // a payload of 549 bytes
    let last = m.len() - 1;
    m[last] ^= 0x01;
    bytes.extend_from_slice(&m);
    s.write_all(&bytes).unwrap();
    assert!(closed_by_peer(
        &mut s,
        &mut || b.poll(),
        Duration::from_secs(3)
    ));
    let err = b.pl.status()[0].last_error.clone().unwrap_or_default();
    assert!(err.contains("payload CRC32C mismatch"), "{err}");
    assert!(b.got.is_empty());
    assert!(b.saw(|e| matches!(e, PeerEvent::LinkDown { link: 0, .. })));

    // A Start past the next expected message (a gap).
    let mut s = fake_node1(listen, &mut b, 1);
    s.write_all(&link_frame(tandem_mirror::LinkMsg::Start { first_seq: 5 }))
        .unwrap();
    assert!(closed_by_peer(
        &mut s,
        &mut || b.poll(),
        Duration::from_secs(3)
    ));
    let err = b.pl.status()[0].last_error.clone().unwrap_or_default();
    assert!(err.contains("a gap"), "{err}");

    // An ack for messages node 2 never sent.
    let mut s = fake_node1(listen, &mut b, 1);
    s.write_all(&link_frame(tandem_mirror::LinkMsg::Ack { next: 1 }))
        .unwrap();
    assert!(closed_by_peer(
        &mut s,
        &mut || b.poll(),
        Duration::from_secs(3)
    ));
    let err = b.pl.status()[0].last_error.clone().unwrap_or_default();
    assert!(err.contains("acknowledges message 1"), "{err}");

    // A duplicate is dropped, the next one delivered.
    let mut s = fake_node1(listen, &mut b, 1);
    let mut bytes = link_frame(tandem_mirror::LinkMsg::Start { first_seq: 0 });
    bytes.extend_from_slice(&mirror_frame(0));
    bytes.extend_from_slice(&link_frame(tandem_mirror::LinkMsg::Start { first_seq: 0 }));
    bytes.extend_from_slice(&mirror_frame(0));
    bytes.extend_from_slice(&mirror_frame(1));
    s.write_all(&bytes).unwrap();
    let end = Instant::now() + TEST_LIMIT;
    while b.got.len() < 2 {
        b.poll();
        assert!(Instant::now() < end);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(b.got.iter().map(|g| g.0).collect::<Vec<_>>(), vec![0, 1]);
    assert_eq!(b.pl.duplicates_dropped(), 1);
    drop(s);

    // The real node 1 (another incarnation: boot ids differ on every start) gets in.
    let mut a = Node::new(config(1, 2, la, 5));
    let mut next = 2u64;
    run_until(&mut a, &mut b, |a, b| {
        send_some(a, &mut next, 10);
        b.got.len() == 10
    });
    assert!(b.saw(|e| *e == PeerEvent::PeerRestarted { peer_boot_id: 5 }));
    check_in_order(&b.got, 0);
}

#[test]
fn bad_configurations_are_refused() {
    let (la, _) = links(12, 1);
    let mut c = config(1, 2, la.clone(), 1);
    c.secret = b"short".to_vec();
    assert!(PeerLinks::new(c).is_err());
    let mut c = config(1, 2, la.clone(), 1);
    c.dead_after = c.keepalive;
    assert!(PeerLinks::new(c).is_err());
    let mut c = config(1, 2, la.clone(), 1);
    c.reconnect_interval = Duration::MAX;
    assert!(PeerLinks::new(c).is_err());
    assert!(PeerLinks::new(config(1, 1, la.clone(), 1)).is_err());
    assert!(PeerLinks::new(config(1, 2, Vec::new(), 1)).is_err());
    let mut c = config(1, 2, la, 1);
    c.unacked_max_msgs = 0;
    assert!(PeerLinks::new(c).is_err());
}

#[test]
fn a_restart_is_recognized_while_the_old_connection_still_looks_up() {
    init_tracing();
    let (la, lb) = links(14, 1);
    let listen = lb[0].local;
    let mut b = Node::new(config(2, 1, lb, 2));
    // Node 1's previous incarnation: authenticated, its connection half-open (no FIN).
    let _old = fake_node1(listen, &mut b, 1);
    b.poll();
    assert!(b.pl.is_up());
    assert!(b.saw(|e| *e == PeerEvent::Connected { peer_boot_id: 1 }));
    b.pl.send(message(2, 0)).unwrap(); // for the old incarnation: dropped
                                       // Node 1 restarted (dialer side) and reconnects the same link.
    let mut a = Node::new(config(1, 2, la, 3));
    run_until(&mut a, &mut b, |_, b| {
        b.saw(|e| *e == PeerEvent::PeerRestarted { peer_boot_id: 3 })
    });
    run_until(&mut a, &mut b, |_, b| {
        b.saw(|e| {
            matches!(e, PeerEvent::LinkDown { reason, .. } if reason.contains("earlier incarnation"))
        })
    });
    assert!(!b.saw(|e| *e == PeerEvent::AllLinksDown));
    assert_eq!(b.pl.unacked_msgs(), 0);
    let mut next = 10u64;
    run_until(&mut a, &mut b, |_, b| {
        send_some(b, &mut next, 20);
        b.pl.unacked_msgs() == 0 && next == 20
    });
    run_until(&mut a, &mut b, |a, _| a.got.len() == 10);
    check_in_order(&a.got, 10);
    assert!(b.pl.is_up() && a.pl.is_up());
}
