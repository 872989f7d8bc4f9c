//! Round trips for every message variant, and arbitrary bytes through the decoder.

use proptest::collection::vec;
use proptest::prelude::*;
use tandem_ha::{
    BlockRange, Envelope, Epoch, ForwardedOp, GenerationId, Lba, Msg, NodeId, OpId, RegionIndex,
    ReplicaMeta,
};
use tandem_mirror::frame::{BITMAP_BASES_MAX, HISTORY_MAX, REGIONS_PER_FRAME_MAX};
use tandem_mirror::{
    decode, decode_frame, encode, encode_header, payload_parts, Decoded, FrameDecoder,
    HandshakeMsg, Hello, Limits, PayloadDesc,
};

fn op_id() -> impl Strategy<Value = OpId> {
    (any::<u8>(), any::<u64>()).prop_map(|(o, n)| OpId {
        origin: NodeId(o),
        n,
    })
}

fn range() -> impl Strategy<Value = BlockRange> {
    (any::<u64>(), 1..=u32::MAX)
        .prop_filter("no wrap", |(s, l)| s.checked_add(u64::from(*l)).is_some())
        .prop_map(|(s, l)| BlockRange {
            start: Lba(s),
            len_blocks: l,
        })
}

fn data() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..600)
}

fn regions() -> impl Strategy<Value = Vec<RegionIndex>> {
    prop_oneof![
        vec(any::<u64>().prop_map(RegionIndex), 0..40),
        // Now and then the longest list a frame may carry.
        Just(vec![RegionIndex(u64::MAX); REGIONS_PER_FRAME_MAX]),
    ]
}

fn meta() -> impl Strategy<Value = ReplicaMeta> {
    (
        any::<u64>(),
        vec((any::<u8>(), any::<u64>()), 0..=BITMAP_BASES_MAX),
        vec(any::<u64>(), 0..=HISTORY_MAX),
        any::<u64>(),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(c, bb, h, e, ws, v)| ReplicaMeta {
            current: GenerationId(c),
            bitmap_base: bb
                .into_iter()
                .map(|(n, g)| (NodeId(n), GenerationId(g)))
                .collect(),
            history: h.into_iter().map(GenerationId).collect(),
            epoch: Epoch(e),
            was_sequencer: ws,
            version: v,
        })
}

fn msg() -> impl Strategy<Value = Msg<Vec<u8>>> {
    prop_oneof![
        (op_id(), range(), data(), any::<bool>()).prop_map(|(id, range, data, cf)| Msg::Mirror {
            id,
            range,
            data,
            commit_follows: cf
        }),
        op_id().prop_map(|id| Msg::MirrorAck { id }),
        op_id().prop_map(|id| Msg::Commit { id }),
        (op_id(), range(), data()).prop_map(|(id, range, data)| Msg::Forward {
            id,
            range,
            op: ForwardedOp::Write { data }
        }),
        (op_id(), range(), data(), data()).prop_map(|(id, range, verify, data)| Msg::Forward {
            id,
            range,
            op: ForwardedOp::CompareAndWrite { verify, data }
        }),
        (op_id(), any::<bool>()).prop_map(|(id, applied)| Msg::Grant { id, applied }),
        op_id().prop_map(|id| Msg::Release { id }),
        regions().prop_map(|regions| Msg::Uncertain { regions }),
        (meta(), regions(), any::<bool>(), any::<Option<u64>>()).prop_map(
            |(meta, dirty, jc, num_blocks)| Msg::SyncOffer {
                meta,
                dirty,
                journal_complete: jc,
                num_blocks,
            }
        ),
        (op_id(), any::<u64>(), data()).prop_map(|(id, r, data)| Msg::RegionCopy {
            id,
            region: RegionIndex(r),
            data
        }),
        op_id().prop_map(|id| Msg::RegionCopyAck { id }),
        meta().prop_map(|meta| Msg::SyncComplete { meta }),
        Just(Msg::SyncCompleteAck),
        op_id().prop_map(|id| Msg::CommitQuery { id }),
        (op_id(), any::<bool>()).prop_map(|(id, reset)| Msg::TaskMgmt {
            id,
            kind: if reset {
                tandem_ha::TaskMgmtKind::LunReset
            } else {
                tandem_ha::TaskMgmtKind::ClearTaskSet
            }
        }),
        op_id().prop_map(|id| Msg::TaskMgmtAck { id }),
        (op_id(), pr_version(), blob(), blob()).prop_map(|(id, base, state, notice)| {
            Msg::PrForward {
                id,
                base,
                state,
                notice,
            }
        }),
        (op_id(), pr_version(), blob(), blob()).prop_map(|(id, version, state, notice)| {
            Msg::PrApply {
                id,
                version,
                state,
                notice,
            }
        }),
        op_id().prop_map(|id| Msg::PrApplyAck { id }),
        (op_id(), any::<bool>()).prop_map(|(id, applied)| Msg::PrDone { id, applied }),
    ]
}

fn pr_version() -> impl Strategy<Value = tandem_ha::PrVersion> {
    (any::<u64>(), any::<u64>()).prop_map(|(e, n)| tandem_ha::PrVersion { epoch: Epoch(e), n })
}

/// Reservation blobs: mostly small, sometimes at the bound.
fn blob() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 0..300),
        1 => Just(vec![0xa5; tandem_ha::PR_BLOB_MAX]),
    ]
}

fn as_slices(m: &Msg<Vec<u8>>) -> Msg<&[u8]> {
    map(m, |p| &p[..])
}

/// The same message with each payload mapped by `f`.
fn map<'a, P, Q>(msg: &'a Msg<P>, mut f: impl FnMut(&'a P) -> Q) -> Msg<Q> {
    match msg {
        Msg::Mirror {
            id,
            range,
            data,
            commit_follows,
        } => Msg::Mirror {
            id: *id,
            range: *range,
            data: f(data),
            commit_follows: *commit_follows,
        },
        Msg::Forward { id, range, op } => Msg::Forward {
            id: *id,
            range: *range,
            op: match op {
                ForwardedOp::Write { data } => ForwardedOp::Write { data: f(data) },
                ForwardedOp::CompareAndWrite { verify, data } => ForwardedOp::CompareAndWrite {
                    verify: f(verify),
                    data: f(data),
                },
            },
        },
        Msg::RegionCopy { id, region, data } => Msg::RegionCopy {
            id: *id,
            region: *region,
            data: f(data),
        },
        Msg::MirrorAck { id } => Msg::MirrorAck { id: *id },
        Msg::Commit { id } => Msg::Commit { id: *id },
        Msg::Grant { id, applied } => Msg::Grant {
            id: *id,
            applied: *applied,
        },
        Msg::Release { id } => Msg::Release { id: *id },
        Msg::Uncertain { regions } => Msg::Uncertain {
            regions: regions.clone(),
        },
        Msg::SyncOffer {
            meta,
            dirty,
            journal_complete,
            num_blocks,
        } => Msg::SyncOffer {
            meta: meta.clone(),
            dirty: dirty.clone(),
            journal_complete: *journal_complete,
            num_blocks: *num_blocks,
        },
        Msg::RegionCopyAck { id } => Msg::RegionCopyAck { id: *id },
        Msg::SyncComplete { meta } => Msg::SyncComplete { meta: meta.clone() },
        Msg::SyncCompleteAck => Msg::SyncCompleteAck,
        Msg::CommitQuery { id } => Msg::CommitQuery { id: *id },
        Msg::TaskMgmt { id, kind } => Msg::TaskMgmt {
            id: *id,
            kind: *kind,
        },
        Msg::TaskMgmtAck { id } => Msg::TaskMgmtAck { id: *id },
        Msg::PrForward {
            id,
            base,
            state,
            notice,
        } => Msg::PrForward {
            id: *id,
            base: *base,
            state: state.clone(),
            notice: notice.clone(),
        },
        Msg::PrApply {
            id,
            version,
            state,
            notice,
        } => Msg::PrApply {
            id: *id,
            version: *version,
            state: state.clone(),
            notice: notice.clone(),
        },
        Msg::PrApplyAck { id } => Msg::PrApplyAck { id: *id },
        Msg::PrDone { id, applied } => Msg::PrDone {
            id: *id,
            applied: *applied,
        },
        // Variants added to tandem-ha later are not generated by `msg()` until they are mapped.
        #[allow(unreachable_patterns)]
        _ => unreachable!("a variant the generator does not produce"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_variant_round_trips(epoch in any::<u64>(), m in msg()) {
        let env = Envelope { epoch: Epoch(epoch), msg: m };
        let limits = Limits::default();
        let mut whole = Vec::new();
        encode(&env, &limits, &mut whole).unwrap();
        let got = decode(&whole, &limits).unwrap();
        let want = Envelope { epoch: env.epoch, msg: as_slices(&env.msg) };
        prop_assert_eq!(got, want);

        // The writev path yields the same bytes: header, then the parts in order.
        let described = Envelope {
            epoch: env.epoch,
            msg: map(&env.msg, |p| PayloadDesc::of(p)),
        };
        let mut header = Vec::new();
        let frame_len = encode_header(&described, &limits, &mut header).unwrap();
        for p in payload_parts(&env.msg).into_iter().flatten() {
            header.extend_from_slice(p);
        }
        prop_assert_eq!(frame_len, whole.len());
        prop_assert_eq!(header, whole);
    }

    #[test]
    fn streams_cut_anywhere_decode_the_same(
        ms in vec(msg(), 1..6),
        cuts in vec(1usize..5000, 1..20),
    ) {
        let limits = Limits::default();
        let mut stream = Vec::new();
        for (i, m) in ms.iter().enumerate() {
            let mut f = Vec::new();
            encode(&Envelope { epoch: Epoch(i as u64), msg: m.clone() }, &limits, &mut f).unwrap();
            stream.extend(f);
        }
        let mut d = FrameDecoder::new(limits);
        let mut rest = &stream[..];
        let mut got = 0;
        let mut i = 0;
        while !rest.is_empty() {
            let n = cuts[i % cuts.len()].min(rest.len());
            i += 1;
            prop_assert_eq!(d.feed(&rest[..n]), n);
            rest = &rest[n..];
            while let Some(f) = d.next_frame().unwrap() {
                let env = decode(f, &limits).unwrap();
                prop_assert_eq!(env.epoch, Epoch(got as u64));
                prop_assert_eq!(env.msg, as_slices(&ms[got]));
                got += 1;
            }
        }
        prop_assert_eq!(got, ms.len());
    }

    #[test]
    fn hello_round_trips(v in any::<u16>(), c in any::<[u8; 16]>(), n in any::<u8>(),
                         dev in any::<u64>(), link in any::<u16>(), nonce in any::<[u8; 32]>(),
                         boot_id in any::<u64>()) {
        let h = HandshakeMsg::Hello(Hello { version: v, cluster_id: c, node_id: NodeId(n),
                                            device_id: dev, link_id: link, nonce, boot_id });
        let mut out = Vec::new();
        h.encode(&mut out).unwrap();
        prop_assert_eq!(decode_frame(&out, &Limits::default()).unwrap(), Decoded::Handshake(h));
    }

    /// Whatever the bytes and however they are cut, the decoder returns: frames, `None`, or a
    /// typed error, never a panic, and never holds more than one largest frame.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..4096), piece in 1usize..300) {
        let limits = Limits::new(1024).unwrap();
        let _ = decode_frame(&bytes, &limits);
        let mut d = FrameDecoder::new(limits);
        for chunk in bytes.chunks(piece) {
            d.feed(chunk);
            prop_assert!(d.buffered() <= limits.frame_len_max_bytes());
            while let Ok(Some(f)) = d.next_frame() {
                let _ = decode_frame(f, &limits);
            }
        }
    }

    /// Valid frames with bytes flipped: still never a panic, and a flipped bit is caught.
    #[test]
    fn corrupted_frames_are_refused(m in msg(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let limits = Limits::default();
        let mut f = Vec::new();
        encode(&Envelope { epoch: Epoch(1), msg: m }, &limits, &mut f).unwrap();
        let i = at.index(f.len());
        f[i] ^= 1 << bit;
        prop_assert!(decode_frame(&f, &limits).is_err());
    }
}
