//! Contract l at the engine level: a replica's engine grows (geometry and every journal
//! bitmap) only while every replica is synchronized and no resync runs; writes to the new
//! blocks then go to every replica and, once a partner is out, are recorded for it.

use tandem_ha::{
    BlockRange, Engine, Envelope, EpochConfig, Geometry, GrowRefused, HostCmd, HostTag, Input,
    LocalResult, MemberState, Msg, NodeId, Options, Output, PlantedBug, RegionIndex, Time,
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

/// Feeds `input`, then acknowledges every metadata write and local I/O it causes.
fn feed(e: &mut Engine<u64>, now: Time, input: Input<u64>) -> Vec<Output<u64>> {
    let mut out = Vec::new();
    e.handle(now, input, &mut out);
    let mut i = 0;
    while i < out.len() {
        let next = match &out[i] {
            Output::PersistMeta(m) => Some(Input::MetaPersisted { version: m.version }),
            Output::Local { io, .. } => Some(Input::LocalDone {
                io: *io,
                result: LocalResult::Done,
            }),
            _ => None,
        };
        if let Some(input) = next {
            let mut more = Vec::new();
            e.handle(now, input, &mut more);
            out.extend(more);
        }
        i += 1;
    }
    out
}

/// The sequencer of a two-node device, configured, leased, its gate open.
fn sequencer() -> (Engine<u64>, EpochConfig) {
    let cfg = EpochConfig::initial(&[N1, N2]);
    let mut e = Engine::new_device(N1, geometry(), &cfg, Options::default());
    feed(&mut e, Time(0), Input::Config(cfg.clone()));
    feed(
        &mut e,
        Time(0),
        Input::Lease {
            epoch: cfg.epoch,
            until: Time(10_000 * MS),
        },
    );
    let env = Envelope {
        epoch: cfg.epoch,
        msg: Msg::Uncertain {
            regions: Vec::new(),
        },
    };
    feed(&mut e, Time(0), Input::Peer { from: N2, env });
    (e, cfg)
}

fn write(e: &mut Engine<u64>, tag: u64, start: u64, len: u32) -> Vec<Output<u64>> {
    feed(
        e,
        Time(MS),
        Input::Host {
            tag: HostTag(tag),
            cmd: HostCmd::Write {
                range: BlockRange::new(start, len),
                data: tag,
            },
        },
    )
}

#[test]
fn grows_only_while_every_replica_is_synchronized() {
    let (mut e, cfg) = sequencer();
    assert!(matches!(
        e.grow(32),
        Err(GrowRefused::Shrink { current: 64 })
    ));
    assert_eq!(e.grow(64), Ok(()), "the same size is a no-op");
    let out_cfg = cfg.next(&[(N2, MemberState::Out)]).expect("n1 stays");
    feed(&mut e, Time(MS), Input::Config(out_cfg));
    let refused = e.grow(128).expect_err("a partner is out");
    assert_eq!(
        refused,
        GrowRefused::NotSynchronized {
            node: N2,
            state: MemberState::Out
        }
    );
    assert!(refused.to_string().contains("not synchronized"));
    assert_eq!(e.geometry().num_blocks, 64, "nothing changed");
}

#[test]
fn a_grown_engine_mirrors_and_journals_the_new_blocks() {
    let (mut e, cfg) = sequencer();
    e.grow(128).expect("both synchronized");
    assert_eq!(e.geometry().num_blocks, 128);
    assert_eq!(e.geometry().num_regions(), 32);
    // A write beyond the old end goes to the partner like any other.
    let out = write(&mut e, 1, 100, 4);
    assert!(
        out.iter().any(|o| matches!(
            o,
            Output::Send { to, env } if *to == N2 && matches!(env.msg, Msg::Mirror { .. })
        )),
        "mirrored: {out:?}"
    );
    // Once the partner is out, writes to the new regions are recorded for it.
    let out_cfg = cfg.next(&[(N2, MemberState::Out)]).expect("n1 stays");
    feed(&mut e, Time(2 * MS), Input::Config(out_cfg));
    write(&mut e, 2, 120, 8);
    let dirty = e.dirty_for(N2);
    assert!(dirty.is_set(RegionIndex(30)) && dirty.is_set(RegionIndex(31)));
}

fn offers(out: &[Output<u64>]) -> Vec<Envelope<u64>> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { to, env } if *to == N1 && matches!(env.msg, Msg::SyncOffer { .. }) => {
                Some(env.clone())
            }
            _ => None,
        })
        .collect()
}

/// A two-node device grown to 128 blocks on N1 while N2 came back with 64 (it restarted
/// between the two phases of an extend): N1 sequences, N2 is syncing. Returns both engines
/// and N2's first sync offer.
fn short_joiner(bug: Option<PlantedBug>) -> (Engine<u64>, Engine<u64>, Envelope<u64>) {
    let (mut seq, cfg) = sequencer();
    seq.grow(128).expect("both synchronized");
    // Written and acknowledged by both before N2 went: only the generation says so.
    write(&mut seq, 1, 100, 4);
    let out_cfg = cfg.next(&[(N2, MemberState::Out)]).expect("n1 stays");
    feed(&mut seq, Time(2 * MS), Input::Config(out_cfg.clone()));
    let syncing = out_cfg
        .next(&[(N2, MemberState::Syncing)])
        .expect("n1 stays");
    feed(&mut seq, Time(3 * MS), Input::Config(syncing.clone()));
    let opts = Options {
        planted_bug: bug,
        ..Options::default()
    };
    let mut joiner = Engine::new_device(N2, geometry(), &cfg, opts);
    feed(&mut joiner, Time(3 * MS), Input::Config(syncing));
    let offer = offers(&feed(&mut joiner, Time(3 * MS), Input::Tick))
        .pop()
        .or_else(|| offers(&feed(&mut joiner, Time(4_000 * MS), Input::Tick)).pop())
        .expect("the joiner offers");
    (seq, joiner, offer)
}

fn planned(out: &[Output<u64>]) -> Option<(u64, bool)> {
    out.iter().find_map(|o| match o {
        Output::ResyncPlanned {
            node,
            regions,
            full,
        } if *node == N2 => Some((*regions, full.is_some())),
        _ => None,
    })
}

/// The joiner's size travels with its offer; a sequencer with a larger geometry refuses it
/// (typed, with both sizes) and plans no resync, instead of copying to a copy that would
/// drop everything beyond its end.
#[test]
fn a_smaller_joiner_is_refused_with_both_sizes() {
    let (mut seq, _joiner, offer) = short_joiner(None);
    let Msg::SyncOffer { num_blocks, .. } = &offer.msg else {
        unreachable!()
    };
    assert_eq!(*num_blocks, Some(64));
    let out = feed(
        &mut seq,
        Time(5 * MS),
        Input::Peer {
            from: N2,
            env: offer,
        },
    );
    assert!(
        out.contains(&Output::SyncSizeRefused {
            node: N2,
            joiner_blocks: 64,
            sequencer_blocks: 128
        }),
        "{out:?}"
    );
    assert_eq!(planned(&out), None, "no resync towards a short copy");
    // A write beyond the joiner's end is not mirrored to it (it would drop it and never
    // acknowledge), it completes, and its region is recorded for the joiner's resync.
    let out = write(&mut seq, 7, 120, 4);
    assert!(
        !out.iter()
            .any(|o| matches!(o, Output::Send { to, env } if *to == N2
            && matches!(env.msg, Msg::Mirror { .. }))),
        "{out:?}"
    );
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Complete { tag, .. } if *tag == HostTag(7))));
    assert!(seq.dirty_for(N2).is_set(RegionIndex(30)));
    // Within its end, it is mirrored as usual.
    let out = write(&mut seq, 8, 8, 4);
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Send { to, env } if *to == N2
        && matches!(env.msg, Msg::Mirror { .. }))));
}

/// The repair: the joiner grows although it is not synchronized (the others' states do not
/// matter for a copy that is resynchronized anyway), offers again with the new size and
/// the grown regions marked dirty, and the sequencer copies at least every region from the
/// joiner's old end on (block 100 was acknowledged by the joiner before its image was cut
/// back; no journal bitmap records it).
#[test]
fn a_grown_joiner_is_resynchronized_including_its_new_tail() {
    let (mut seq, mut joiner, offer) = short_joiner(None);
    feed(
        &mut seq,
        Time(5 * MS),
        Input::Peer {
            from: N2,
            env: offer,
        },
    );
    assert_eq!(joiner.grow(128), Ok(()), "a syncing replica may grow");
    let offer = offers(&feed(&mut joiner, Time(10_000 * MS), Input::Tick))
        .pop()
        .expect("the joiner offers again");
    let Msg::SyncOffer {
        num_blocks, dirty, ..
    } = &offer.msg
    else {
        unreachable!()
    };
    assert_eq!(*num_blocks, Some(128));
    assert!(
        (16..32).all(|r| dirty.contains(&RegionIndex(r))),
        "the grown regions are dirty: {dirty:?}"
    );
    let out = feed(
        &mut seq,
        Time(11_000 * MS),
        Input::Peer {
            from: N2,
            env: offer,
        },
    );
    let (regions, _full) = planned(&out).expect("a resync is planned");
    assert!(regions >= 16, "at least the tail: {regions}");
    let to_copy = seq.dirty_for(N2);
    assert!(
        (16..32).all(|r| to_copy.is_set(RegionIndex(r))),
        "every region from the old end on is copied"
    );
}

/// Planted bug: a sequencer that ignores the size plans a resync towards the short copy
/// (which would drop every region copy and mirrored write beyond its end).
#[test]
fn planted_join_size_ignored_plans_a_resync_to_a_short_copy() {
    let (_, _, offer) = short_joiner(None);
    let (mut seq, _) = sequencer_with_bug(PlantedBug::JoinSizeIgnored);
    let out = feed(
        &mut seq,
        Time(5 * MS),
        Input::Peer {
            from: N2,
            env: offer,
        },
    );
    assert!(
        planned(&out).is_some()
            && !out
                .iter()
                .any(|o| matches!(o, Output::SyncSizeRefused { .. })),
        "the planted bug plans a resync to a 64-block copy: {out:?}"
    );
}

/// `short_joiner`'s sequencer with `bug` planted (the offer comes from an honest joiner).
fn sequencer_with_bug(bug: PlantedBug) -> (Engine<u64>, EpochConfig) {
    let cfg = EpochConfig::initial(&[N1, N2]);
    let opts = Options {
        planted_bug: Some(bug),
        ..Options::default()
    };
    let mut e = Engine::new_device(N1, geometry(), &cfg, opts);
    feed(&mut e, Time(0), Input::Config(cfg.clone()));
    feed(
        &mut e,
        Time(0),
        Input::Lease {
            epoch: cfg.epoch,
            until: Time(10_000 * MS),
        },
    );
    let env = Envelope {
        epoch: cfg.epoch,
        msg: Msg::Uncertain {
            regions: Vec::new(),
        },
    };
    feed(&mut e, Time(0), Input::Peer { from: N2, env });
    e.grow(128).expect("both synchronized");
    let out_cfg = cfg.next(&[(N2, MemberState::Out)]).expect("n1 stays");
    feed(&mut e, Time(2 * MS), Input::Config(out_cfg.clone()));
    let syncing = out_cfg
        .next(&[(N2, MemberState::Syncing)])
        .expect("n1 stays");
    feed(&mut e, Time(3 * MS), Input::Config(syncing.clone()));
    (e, syncing)
}
