//! Each node on its own thread, as the data plane will run it: poll, then sleep in poll(2)
//! on `wait_fds` until `next_deadline`. Both directions at once, and a link cut mid-stream.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use common::*;
use tandem_synclink::PeerEvent;

/// Runs one node until it has sent `send_total` (all acknowledged) and received
/// `recv_total`, and the other node is done too. Returns what it received.
fn run(
    mut n: Node,
    send_total: u64,
    recv_total: usize,
    break_after: Option<u64>,
    done: Arc<AtomicUsize>,
) -> Vec<(u64, Option<tandem_mirror::SharedPayload>)> {
    let end = Instant::now() + TEST_LIMIT;
    let mut next = 0u64;
    let mut finished = false;
    let mut broke = false;
    let mut fds = Vec::new();
    loop {
        n.poll();
        send_some(&mut n, &mut next, send_total);
        if let Some(at) = break_after {
            if !broke && next >= at {
                if let Some(l) = n.pl.active_link() {
                    n.pl.debug_break_link(l);
                    broke = true;
                }
            }
        }
        if !finished && next == send_total && n.pl.unacked_msgs() == 0 && n.got.len() == recv_total
        {
            finished = true;
            done.fetch_add(1, Ordering::SeqCst);
        }
        if done.load(Ordering::SeqCst) == 2 {
            assert_eq!(broke, break_after.is_some());
            assert!(!broke || n.saw(|e| matches!(e, PeerEvent::LinkDown { .. })));
            return n.got;
        }
        assert!(
            Instant::now() < end,
            "node {} timed out: sent {next}, unacked {}, got {}, events {:?}",
            n.me,
            n.pl.unacked_msgs(),
            n.got.len(),
            n.events
        );
        fds.clear();
        n.pl.wait_fds(&mut fds);
        let now = Instant::now();
        let wait_ms = n.pl.next_deadline().map_or(100, |d| {
            d.saturating_duration_since(now).as_millis().min(100) as i32 + 1
        });
        // With messages still to queue and room in the window, do not sleep.
        let wait_ms = if next < send_total && n.pl.unacked_msgs() < 64 {
            0
        } else {
            wait_ms
        };
        tandem_ffi::poll_fds(&fds, wait_ms).unwrap();
    }
}

#[test]
fn two_threads_both_directions_with_a_cut_link() {
    init_tracing();
    let (la, lb) = links(11, 2);
    let a = Node::new(config(1, 2, la, 7));
    let b = Node::new(config(2, 1, lb, 8));
    let done = Arc::new(AtomicUsize::new(0));
    let (da, db) = (done.clone(), done);
    let ta = std::thread::spawn(move || run(a, 2000, 1000, Some(800), da));
    let tb = std::thread::spawn(move || run(b, 1000, 2000, Some(500), db));
    let got_a = ta.join().expect("node 1 thread");
    let got_b = tb.join().expect("node 2 thread");
    check_in_order(&got_b, 0);
    check_in_order(&got_a, 0);
    assert_eq!(got_b.len(), 2000);
    assert_eq!(got_a.len(), 1000);
}
