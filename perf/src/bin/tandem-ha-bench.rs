//! Cost of the replication engine itself on the no-conflict write path, next to what it
//! must stay small against: a network round trip (loopback TCP ping-pong, measured in the
//! same run, so the ratio holds on a noisy machine).
//!
//! ```text
//! tandem-ha-bench [--writes N]
//! ```
//! Two engines (sequencer and partner) exchange every message in memory; the time per write
//! covers all engine work on both nodes for one 4 KiB write (host input, mirror, local
//! completions, ack, host completion), for a write taken by the sequencer and for one
//! forwarded by the partner.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

use tandem_ha::{
    BlockRange, Engine, EpochConfig, Geometry, HostCmd, HostTag, Input, LocalResult, NodeId,
    Options, Output, Time,
};

type Eng = Engine<()>;

fn pair() -> (Eng, Eng) {
    let cfg = EpochConfig::initial(&[NodeId(1), NodeId(2)]);
    let geo = Geometry::with_64k_regions(512, 1 << 30);
    let mut a = Engine::new_device(NodeId(1), geo, &cfg, Options::default());
    let mut b = Engine::new_device(NodeId(2), geo, &cfg, Options::default());
    for first in 0..2 {
        let mut out = Vec::new();
        let e = if first == 0 { &mut a } else { &mut b };
        e.handle(Time(1), Input::Config(cfg.clone()), &mut out);
        e.handle(
            Time(1),
            Input::Lease {
                epoch: cfg.epoch,
                until: Time(u64::MAX),
            },
            &mut out,
        );
        let version = e.meta().version;
        e.handle(Time(1), Input::MetaPersisted { version }, &mut out);
        // Deliver the start-up messages (the partner's empty uncertain-region report).
        pump(&mut a, &mut b, first, out, Time(1));
    }
    (a, b)
}

/// Feed outputs of each engine to the other (and complete local I/O at once) until quiet.
/// Returns the host completions seen.
fn pump(a: &mut Eng, b: &mut Eng, first: usize, mut out: Vec<Output<()>>, now: Time) -> usize {
    let mut completions = 0;
    let mut queue: Vec<(usize, Output<()>)> = out.drain(..).map(|o| (first, o)).collect();
    let mut scratch = Vec::with_capacity(16);
    while let Some((from, o)) = queue.pop() {
        let (me, other) = if from == 0 {
            (&mut *a, &mut *b)
        } else {
            (&mut *b, &mut *a)
        };
        match o {
            Output::Local { io, op } => {
                let result = match op {
                    tandem_ha::LocalOp::Read { .. } => LocalResult::ReadData(()),
                    _ => LocalResult::Done,
                };
                me.handle(now, Input::LocalDone { io, result }, &mut scratch);
                queue.extend(scratch.drain(..).map(|o| (from, o)));
            }
            Output::Send { env, .. } => {
                let sender = me.node();
                other.handle(now, Input::Peer { from: sender, env }, &mut scratch);
                queue.extend(scratch.drain(..).map(|o| (1 - from, o)));
            }
            Output::Complete { .. } => completions += 1,
            _ => {}
        }
    }
    completions
}

fn bench(writes: u64, through_partner: bool) -> f64 {
    let (mut a, mut b) = pair();
    let started = Instant::now();
    let mut done = 0;
    for i in 0..writes {
        let mut out = Vec::with_capacity(8);
        let range = BlockRange::new((i * 8) % (1 << 29), 8); // 4 KiB, never overlapping in flight
        let cmd = HostCmd::Write { range, data: () };
        let now = Time(2);
        let (engine, first) = if through_partner {
            (&mut b, 1)
        } else {
            (&mut a, 0)
        };
        engine.handle(
            now,
            Input::Host {
                tag: HostTag(i),
                cmd,
            },
            &mut out,
        );
        done += pump(&mut a, &mut b, first, out, now);
    }
    assert_eq!(done as u64, writes, "every write completes");
    started.elapsed().as_nanos() as f64 / writes as f64
}

fn loopback_rtt_ns(rounds: u32) -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("address");
    let echo = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_nodelay(true).ok();
        let mut buf = [0u8; 64];
        while s.read_exact(&mut buf).is_ok() {
            if s.write_all(&buf).is_err() {
                break;
            }
        }
    });
    let mut c = TcpStream::connect(addr).expect("connect");
    c.set_nodelay(true).ok();
    let mut buf = [0u8; 64];
    let started = Instant::now();
    for _ in 0..rounds {
        c.write_all(&buf).expect("send");
        c.read_exact(&mut buf).expect("receive");
    }
    let ns = started.elapsed().as_nanos() as f64 / f64::from(rounds);
    drop(c);
    echo.join().ok();
    ns
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let writes = args
        .iter()
        .position(|a| a == "--writes")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000u64);
    bench(writes / 10, false); // warm up
    let at_sequencer = bench(writes, false);
    let forwarded = bench(writes, true);
    let rtt = loopback_rtt_ns(20_000);
    println!("engine work per 4 KiB write, both nodes together (no conflict):");
    println!(
        "  taken by the sequencer : {at_sequencer:8.0} ns  ({:.3}x a loopback TCP round trip)",
        at_sequencer / rtt
    );
    println!(
        "  forwarded by a partner : {forwarded:8.0} ns  ({:.3}x a loopback TCP round trip)",
        forwarded / rtt
    );
    println!("  loopback TCP round trip: {rtt:8.0} ns (64-byte ping-pong, same run)");
    println!(
        "  writes per second through one engine pair: {:.0}",
        1e9 / at_sequencer
    );
}
