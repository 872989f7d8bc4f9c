//! Contract j at the engine level: the writes a node holds for a partner that does not
//! answer are bounded by count and bytes; beyond the bound a write ends NOT READY at once and
//! the engine asks for a verdict about the partner without waiting for the peer timeout; the
//! "partner out" verdict completes the held writes.

use tandem_ha::{
    BlockRange, Engine, Envelope, EpochConfig, Geometry, HostCmd, HostStatus, HostTag, Input,
    LocalResult, MemberState, Msg, NodeId, Options, Output, RegionIndex, Time,
};

const N1: NodeId = NodeId(1);
const N2: NodeId = NodeId(2);
const MS: u64 = 1_000_000;

fn geometry() -> Geometry {
    Geometry {
        block_size_bytes: 512,
        num_blocks: 64,
        region_blocks: 4,
    }
}

/// The sequencer of a two-node device, configured, leased and with its metadata durable.
fn sequencer(opts: Options) -> (Engine<u64>, EpochConfig) {
    sequencer_with(opts, true)
}

/// `report`: the partner reports its uncertain regions (else the new sequencer's gate stays
/// closed and host commands queue behind it).
fn sequencer_with(opts: Options, report: bool) -> (Engine<u64>, EpochConfig) {
    let cfg = EpochConfig::initial(&[N1, N2]);
    let mut e = Engine::new_device(N1, geometry(), &cfg, opts);
    let mut out = Vec::new();
    e.handle(Time(0), Input::Config(cfg.clone()), &mut out);
    e.handle(
        Time(0),
        Input::Lease {
            epoch: cfg.epoch,
            until: Time(10_000 * MS),
        },
        &mut out,
    );
    // The partner's (empty) report of uncertain regions opens the new sequencer's gate.
    if report {
        let msg = Msg::Uncertain {
            regions: Vec::new(),
        };
        e.handle(
            Time(0),
            Input::Peer {
                from: N2,
                env: Envelope {
                    epoch: cfg.epoch,
                    msg,
                },
            },
            &mut out,
        );
    }
    persist(&mut e, Time(0), &out);
    (e, cfg)
}

/// Acknowledge every metadata write and local I/O in `out` (the local disk answers; the
/// partner never does). Returns what that produced.
fn persist(e: &mut Engine<u64>, now: Time, out: &[Output<u64>]) -> Vec<Output<u64>> {
    let mut more = Vec::new();
    for o in out {
        match o {
            Output::PersistMeta(m) => {
                e.handle(now, Input::MetaPersisted { version: m.version }, &mut more)
            }
            Output::Local { io, .. } => e.handle(
                now,
                Input::LocalDone {
                    io: *io,
                    result: LocalResult::Done,
                },
                &mut more,
            ),
            _ => {}
        }
    }
    if more
        .iter()
        .any(|o| matches!(o, Output::PersistMeta(_) | Output::Local { .. }))
    {
        let again = persist(e, now, &more);
        more.extend(again);
    }
    more
}

fn write(e: &mut Engine<u64>, now: Time, tag: u64, start: u64, len: u32) -> Vec<Output<u64>> {
    let mut out = Vec::new();
    e.handle(
        now,
        Input::Host {
            tag: HostTag(tag),
            cmd: HostCmd::Write {
                range: BlockRange::new(start, len),
                data: tag,
            },
        },
        &mut out,
    );
    let more = persist(e, now, &out);
    out.extend(more);
    out
}

fn completions(out: &[Output<u64>]) -> Vec<(u64, HostStatus<u64>)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Complete { tag, status } => Some((tag.0, status.clone())),
            _ => None,
        })
        .collect()
}

fn verdicts(out: &[Output<u64>]) -> Vec<NodeId> {
    out.iter()
        .filter_map(|o| match o {
            Output::VerdictRequest { suspect, .. } => Some(*suspect),
            _ => None,
        })
        .collect()
}

#[test]
fn the_default_bound_is_1000_writes_and_64_mib() {
    let o = Options::default();
    assert_eq!(o.held_writes_max, 1000);
    assert_eq!(o.held_bytes_max, 64 << 20);
}

#[test]
fn writes_beyond_the_count_bound_are_refused_and_the_partner_is_judged_at_once() {
    let opts = Options {
        held_writes_max: 4,
        ..Options::default()
    };
    let (mut e, cfg) = sequencer(opts);
    let now = Time(MS); // far below the 1 s peer timeout
    for i in 0..4 {
        let out = write(&mut e, now, i, i * 4, 1);
        assert!(
            out.iter()
                .any(|o| matches!(o, Output::Send { to, env } if *to == N2 && matches!(env.msg, Msg::Mirror { .. }))),
            "mirrored to the partner: {out:?}"
        );
        assert!(completions(&out).is_empty(), "held for the partner's ack");
        assert!(
            verdicts(&out).is_empty(),
            "no verdict before the bound or the timeout"
        );
    }
    assert_eq!(e.held_writes(), (4, 4 * 512));
    assert_eq!(e.held_writes(), e.held_writes_recount());

    let out = write(&mut e, now, 99, 40, 1);
    assert_eq!(completions(&out), vec![(99, HostStatus::NotReady)]);
    assert_eq!(verdicts(&out), vec![N2], "the partner is judged at once");
    assert_eq!(
        e.held_writes(),
        (4, 4 * 512),
        "the refused write is not held"
    );
    assert_eq!(e.refused_over_bound(), 1);

    // The authority declares the partner out: the held writes complete, dirty for it.
    let cfg2 = cfg.next(&[(N2, MemberState::Out)]).expect("n1 stays");
    let mut out = Vec::new();
    e.handle(now, Input::Config(cfg2), &mut out);
    let more = persist(&mut e, now, &out);
    out.extend(more);
    let mut done = completions(&out);
    done.sort_by_key(|c| c.0);
    assert_eq!(
        done,
        (0..4)
            .map(|i| (i, HostStatus::Good { data: None }))
            .collect::<Vec<_>>()
    );
    assert_eq!(e.held_writes(), (0, 0));
    let dirty: Vec<RegionIndex> = e.dirty_for(N2).iter().collect();
    assert_eq!(dirty, (0..4).map(RegionIndex).collect::<Vec<_>>());
    // And new writes are taken again (the partner is out: nothing holds them).
    let out = write(&mut e, now, 100, 44, 1);
    assert_eq!(
        completions(&out),
        vec![(100, HostStatus::Good { data: None })]
    );
}

#[test]
fn the_byte_bound_counts_data_and_a_lone_large_write_still_passes() {
    let opts = Options {
        held_bytes_max: 2 * 512,
        ..Options::default()
    };
    let (mut e, _) = sequencer(opts);
    let now = Time(MS);
    // Larger than the bound, but nothing else is held: taken (never refused forever).
    let out = write(&mut e, now, 1, 0, 4);
    assert!(completions(&out).is_empty());
    assert_eq!(e.held_writes(), (1, 4 * 512));
    let out = write(&mut e, now, 2, 8, 1);
    assert_eq!(completions(&out), vec![(2, HostStatus::NotReady)]);
    assert_eq!(verdicts(&out), vec![N2]);
    // Reads are not held data: still served.
    let mut out = Vec::new();
    e.handle(
        now,
        Input::Host {
            tag: HostTag(3),
            cmd: HostCmd::Read {
                range: BlockRange::new(16, 1),
            },
        },
        &mut out,
    );
    assert!(
        out.iter().any(|o| matches!(o, Output::Local { .. })),
        "a read goes to the local disk: {out:?}"
    );
}

#[test]
fn writes_queued_behind_a_closed_gate_count_too() {
    let opts = Options {
        held_writes_max: 2,
        ..Options::default()
    };
    // The partner never reports: the new sequencer's gate stays closed.
    let (mut e, _) = sequencer_with(opts, false);
    let now = Time(MS);
    for i in 0..2 {
        let out = write(&mut e, now, i, i * 4, 1);
        assert!(out.is_empty(), "queued behind the gate: {out:?}");
    }
    assert_eq!(e.held_writes(), (2, 2 * 512));
    assert_eq!(e.held_writes(), e.held_writes_recount());
    let out = write(&mut e, now, 9, 20, 1);
    assert_eq!(completions(&out), vec![(9, HostStatus::NotReady)]);
    assert_eq!(verdicts(&out), vec![N2]);
}

#[test]
fn a_held_write_is_answered_not_ready_when_the_lease_ends_and_only_once() {
    let (mut e, cfg) = sequencer(Options::default());
    let out = write(&mut e, Time(MS), 7, 0, 1);
    assert!(completions(&out).is_empty(), "held for the silent partner");

    // Still leased: the write waits (the partner may answer yet).
    let mut out = Vec::new();
    e.handle(Time(9_000 * MS), Input::Tick, &mut out);
    assert!(completions(&out).is_empty(), "{out:?}");

    // The lease ends while the partner is still silent: the host hears NOT READY now, not
    // when the links return, and retries through another node.
    let mut out = Vec::new();
    e.handle(Time(10_001 * MS), Input::Tick, &mut out);
    assert_eq!(completions(&out), vec![(7, HostStatus::NotReady)]);
    let mut out = Vec::new();
    e.handle(Time(10_002 * MS), Input::Tick, &mut out);
    assert!(completions(&out).is_empty(), "answered once: {out:?}");

    // The write itself went on: when the partner is declared out it ends inside the
    // engine, and its completion is not passed to the host a second time.
    let cfg2 = cfg.next(&[(N2, MemberState::Out)]).expect("n1 stays");
    let now = Time(10_003 * MS);
    let mut out = Vec::new();
    e.handle(now, Input::Config(cfg2.clone()), &mut out);
    let more = persist(&mut e, now, &out);
    out.extend(more);
    assert!(completions(&out).is_empty(), "no second answer: {out:?}");
    assert_eq!(e.held_writes(), (0, 0));

    // With a new lease, writes are answered as usual.
    let mut out = Vec::new();
    e.handle(
        now,
        Input::Lease {
            epoch: cfg2.epoch,
            until: Time(20_000 * MS),
        },
        &mut out,
    );
    let out = write(&mut e, now, 8, 8, 1);
    assert_eq!(
        completions(&out),
        vec![(8, HostStatus::Good { data: None })]
    );
}

/// Contract g: a node paused past its lease may find the partner's ack in its socket when it
/// wakes, before any tick. That write was answered by nobody yet; it must end NOT READY, never
/// GOOD, whatever input comes first.
#[test]
fn an_ack_read_after_the_lease_ended_does_not_acknowledge_the_write() {
    let (mut e, cfg) = sequencer(Options::default());
    let out = write(&mut e, Time(MS), 7, 0, 1);
    assert!(completions(&out).is_empty(), "held for the partner");
    let id = out
        .iter()
        .find_map(|o| match o {
            Output::Send { to, env } if *to == N2 => match env.msg {
                Msg::Mirror { id, .. } => Some(id),
                _ => None,
            },
            _ => None,
        })
        .expect("the write is mirrored to the partner");

    // Paused until after the lease; the first thing read on waking is the partner's ack.
    let mut out = Vec::new();
    e.handle(
        Time(10_001 * MS),
        Input::Peer {
            from: N2,
            env: Envelope {
                epoch: cfg.epoch,
                msg: Msg::MirrorAck { id },
            },
        },
        &mut out,
    );
    let more = persist(&mut e, Time(10_001 * MS), &out);
    out.extend(more);
    assert_eq!(completions(&out), vec![(7, HostStatus::NotReady)]);

    // And only once.
    let mut out = Vec::new();
    e.handle(Time(10_002 * MS), Input::Tick, &mut out);
    assert!(completions(&out).is_empty(), "answered once: {out:?}");
}
