//! Contract l at the engine level: a replica's engine grows (geometry and every journal
//! bitmap) only while every replica is synchronized and no resync runs; writes to the new
//! blocks then go to every replica and, once a partner is out, are recorded for it.

use tandem_ha::{
    BlockRange, Engine, Envelope, EpochConfig, Geometry, GrowRefused, HostCmd, HostTag, Input,
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
