//! Mapping between `tandem_ha::Envelope<P>` and frames.
//!
//! The payload (host data) never passes through this module by value: [`encode_header`]
//! writes only the header and body, so the data plane can `writev` the header and then the
//! host's own buffer(s) in [`payload_parts`] order; [`decode`] returns an `Envelope<&[u8]>`
//! whose payload borrows the received frame.
//!
//! Every message type is described once in [`MSG_TYPES`] (code, name, allowed flags, whether
//! it carries a payload); the generic checks run off that table, and only the body fields
//! are per variant. To add a variant of `tandem_ha::Msg`: a code in [`msg_type`], a row in
//! [`MSG_TYPES`], an arm in `encode_body` and one in [`decode_frame`], a case in the
//! round-trip proptest, a line in docs/ha-wire.md. Until then sending it fails with
//! [`WireError::NoWireMapping`].

use tandem_ha::{
    BlockRange, Envelope, Epoch, ForwardedOp, GenerationId, Lba, Msg, NodeId, OpId, PrVersion,
    RegionIndex, ReplicaMeta, TaskMgmtKind, PR_BLOB_MAX,
};

use crate::error::WireError;
use crate::frame::{
    payload_crc32c, payload_crc32c_concat, Frame, HeaderRepr, Limits, BITMAP_BASES_MAX,
    BODY_LEN_MAX, FIXED_HEADER_LEN, HISTORY_MAX, REGIONS_PER_FRAME_MAX,
};

// The largest reservation frame (op id, version, two length-prefixed blobs) fits a body.
const _: () = assert!(9 + 16 + 2 * (4 + PR_BLOB_MAX) <= BODY_LEN_MAX);
use crate::handshake::HandshakeMsg;

/// Message type codes. Replication messages are below 0x30, link control (sequencing and
/// acknowledgement, see [`LinkMsg`]) 0x30..0x40, handshake messages from 0x40.
pub mod msg_type {
    pub const MIRROR: u8 = 0x01;
    pub const MIRROR_ACK: u8 = 0x02;
    pub const COMMIT: u8 = 0x03;
    pub const FORWARD: u8 = 0x04;
    pub const GRANT: u8 = 0x05;
    pub const RELEASE: u8 = 0x06;
    pub const UNCERTAIN: u8 = 0x07;
    pub const SYNC_OFFER: u8 = 0x08;
    pub const REGION_COPY: u8 = 0x09;
    pub const REGION_COPY_ACK: u8 = 0x0a;
    pub const SYNC_COMPLETE: u8 = 0x0b;
    pub const SYNC_COMPLETE_ACK: u8 = 0x0c;
    pub const COMMIT_QUERY: u8 = 0x0d;
    pub const TASK_MGMT: u8 = 0x0e;
    pub const TASK_MGMT_ACK: u8 = 0x0f;
    pub const PR_FORWARD: u8 = 0x10;
    pub const PR_APPLY: u8 = 0x11;
    pub const PR_APPLY_ACK: u8 = 0x12;
    pub const PR_DONE: u8 = 0x13;
    pub const ACK: u8 = 0x30;
    pub const START: u8 = 0x31;
    pub const HELLO: u8 = 0x40;
    pub const PROOF: u8 = 0x41;
}

/// Flag bits. Each type allows only the bits its table row lists; any other bit is an error,
/// so a later version cannot slip a meaning past this one.
pub mod flag {
    /// Mirror: `commit_follows`.
    pub const COMMIT_FOLLOWS: u8 = 0x01;
    /// Forward: the op is a compare-and-write (payload = verify bytes, then data bytes).
    pub const COMPARE_AND_WRITE: u8 = 0x01;
    /// Grant, PrDone: `applied`.
    pub const APPLIED: u8 = 0x01;
    /// SyncOffer: `journal_complete`.
    pub const JOURNAL_COMPLETE: u8 = 0x01;
    /// SyncOffer: the body ends with the joiner's size in blocks (u64). Without it (a peer
    /// that predates the field) the offer decodes with `num_blocks: None`.
    pub const HAS_SIZE: u8 = 0x02;
}

/// One row of the message type table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsgTypeInfo {
    pub code: u8,
    pub name: &'static str,
    pub flags_allowed: u8,
    pub carries_payload: bool,
    pub handshake: bool,
    /// Link control (0x30..0x40): sequencing and acknowledgement between the two ends.
    pub link_control: bool,
}

const fn row(
    code: u8,
    name: &'static str,
    flags_allowed: u8,
    carries_payload: bool,
) -> MsgTypeInfo {
    MsgTypeInfo {
        code,
        name,
        flags_allowed,
        carries_payload,
        handshake: code >= 0x40,
        link_control: code >= 0x30 && code < 0x40,
    }
}

/// Every message type this version knows. docs/ha-wire.md has the same table.
pub const MSG_TYPES: &[MsgTypeInfo] = &[
    row(msg_type::MIRROR, "Mirror", flag::COMMIT_FOLLOWS, true),
    row(msg_type::MIRROR_ACK, "MirrorAck", 0, false),
    row(msg_type::COMMIT, "Commit", 0, false),
    row(msg_type::FORWARD, "Forward", flag::COMPARE_AND_WRITE, true),
    row(msg_type::GRANT, "Grant", flag::APPLIED, false),
    row(msg_type::RELEASE, "Release", 0, false),
    row(msg_type::UNCERTAIN, "Uncertain", 0, false),
    row(
        msg_type::SYNC_OFFER,
        "SyncOffer",
        flag::JOURNAL_COMPLETE | flag::HAS_SIZE,
        false,
    ),
    row(msg_type::REGION_COPY, "RegionCopy", 0, true),
    row(msg_type::REGION_COPY_ACK, "RegionCopyAck", 0, false),
    row(msg_type::SYNC_COMPLETE, "SyncComplete", 0, false),
    row(msg_type::SYNC_COMPLETE_ACK, "SyncCompleteAck", 0, false),
    row(msg_type::COMMIT_QUERY, "CommitQuery", 0, false),
    row(msg_type::TASK_MGMT, "TaskMgmt", 0, false),
    row(msg_type::TASK_MGMT_ACK, "TaskMgmtAck", 0, false),
    row(msg_type::PR_FORWARD, "PrForward", 0, false),
    row(msg_type::PR_APPLY, "PrApply", 0, false),
    row(msg_type::PR_APPLY_ACK, "PrApplyAck", 0, false),
    row(msg_type::PR_DONE, "PrDone", flag::APPLIED, false),
    row(msg_type::ACK, "Ack", 0, false),
    row(msg_type::START, "Start", 0, false),
    row(msg_type::HELLO, "Hello", 0, false),
    row(msg_type::PROOF, "Proof", 0, false),
];

/// The table row for a type code.
pub fn type_info(code: u8) -> Option<&'static MsgTypeInfo> {
    MSG_TYPES.iter().find(|r| r.code == code)
}

/// What the data plane knows about a payload buffer without touching it again: its length
/// and the CRC32C computed where the data entered.
pub trait Payload {
    fn len_bytes(&self) -> usize;
    fn crc32c(&self) -> u32;
}

/// A payload described by length and CRC only (the buffer itself goes to writev).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PayloadDesc {
    pub len_bytes: usize,
    pub crc32c: u32,
}

impl PayloadDesc {
    pub fn of(bytes: &[u8]) -> Self {
        PayloadDesc {
            len_bytes: bytes.len(),
            crc32c: payload_crc32c(bytes),
        }
    }
}

impl Payload for PayloadDesc {
    fn len_bytes(&self) -> usize {
        self.len_bytes
    }
    fn crc32c(&self) -> u32 {
        self.crc32c
    }
}

impl Payload for &[u8] {
    fn len_bytes(&self) -> usize {
        self.len()
    }
    fn crc32c(&self) -> u32 {
        payload_crc32c(self)
    }
}

impl Payload for Vec<u8> {
    fn len_bytes(&self) -> usize {
        self.len()
    }
    fn crc32c(&self) -> u32 {
        payload_crc32c(self)
    }
}

/// The payload buffers of a message in the order they follow the header on the wire.
pub fn payload_parts<P>(msg: &Msg<P>) -> [Option<&P>; 2] {
    match msg {
        Msg::Mirror { data, .. } | Msg::RegionCopy { data, .. } => [Some(data), None],
        Msg::Forward { op, .. } => match op {
            ForwardedOp::Write { data } => [Some(data), None],
            ForwardedOp::CompareAndWrite { verify, data } => [Some(verify), Some(data)],
        },
        _ => [None, None],
    }
}

/// Little-endian body writer.
struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn op(&mut self, id: &OpId) {
        self.u8(id.origin.0);
        self.u64(id.n);
    }
    fn range(&mut self, r: &BlockRange) {
        self.u64(r.start.0);
        self.u32(r.len_blocks);
    }
    fn pr_version(&mut self, v: &PrVersion) {
        self.u64(v.epoch.0);
        self.u64(v.n);
    }
    fn blob(&mut self, bytes: &[u8], what: &'static str) -> Result<(), WireError> {
        check_list(what, bytes.len(), PR_BLOB_MAX)?;
        self.u32(bytes.len() as u32);
        self.0.extend_from_slice(bytes);
        Ok(())
    }
    fn regions(&mut self, regions: &[RegionIndex], what: &'static str) -> Result<(), WireError> {
        check_list(what, regions.len(), REGIONS_PER_FRAME_MAX)?;
        self.u32(regions.len() as u32);
        for r in regions {
            self.u64(r.0);
        }
        Ok(())
    }
    fn meta(&mut self, m: &ReplicaMeta) -> Result<(), WireError> {
        check_list("bitmap_base", m.bitmap_base.len(), BITMAP_BASES_MAX)?;
        check_list("history", m.history.len(), HISTORY_MAX)?;
        self.u64(m.current.0);
        self.u8(m.bitmap_base.len() as u8);
        for (node, gen) in &m.bitmap_base {
            self.u8(node.0);
            self.u64(gen.0);
        }
        self.u8(m.history.len() as u8);
        for g in &m.history {
            self.u64(g.0);
        }
        self.u64(m.epoch.0);
        self.u8(u8::from(m.was_sequencer));
        self.u64(m.version);
        Ok(())
    }
}

fn check_list(what: &'static str, count: usize, max: usize) -> Result<(), WireError> {
    if count > max {
        return Err(WireError::ListTooLong { what, count, max });
    }
    Ok(())
}

/// Little-endian body reader; every read is bounds-checked and fails with a typed error.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    msg_type: u8,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], msg_type: u8) -> Self {
        Reader { buf, msg_type }
    }
    fn err(&self, what: &'static str) -> WireError {
        WireError::Body {
            msg_type: self.msg_type,
            what,
        }
    }
    pub(crate) fn bytes<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        if self.buf.len() < N {
            return Err(self.err("body too short"));
        }
        let (head, rest) = self.buf.split_at(N);
        self.buf = rest;
        let mut a = [0u8; N];
        a.copy_from_slice(head);
        Ok(a)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.bytes::<1>()?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.bytes()?))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }
    fn bool(&mut self) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.err("boolean byte is neither 0 nor 1")),
        }
    }
    fn op(&mut self) -> Result<OpId, WireError> {
        Ok(OpId {
            origin: NodeId(self.u8()?),
            n: self.u64()?,
        })
    }
    fn range(&mut self) -> Result<BlockRange, WireError> {
        let start = self.u64()?;
        let len_blocks = self.u32()?;
        // The engine's BlockRange is never empty and never wraps; refuse both here rather
        // than let `BlockRange::end` overflow in the engine.
        if len_blocks == 0 {
            return Err(self.err("empty block range"));
        }
        if start.checked_add(u64::from(len_blocks)).is_none() {
            return Err(self.err("block range wraps past the last LBA"));
        }
        Ok(BlockRange {
            start: Lba(start),
            len_blocks,
        })
    }
    /// A counted list: the count is checked against `max` and against the bytes left
    /// before anything is allocated.
    fn count(
        &mut self,
        what: &'static str,
        max: usize,
        entry_len: usize,
    ) -> Result<usize, WireError> {
        let count = self.u32()? as usize;
        check_list(what, count, max)?;
        if count * entry_len > self.buf.len() {
            return Err(self.err("list count exceeds the body"));
        }
        Ok(count)
    }
    fn pr_version(&mut self) -> Result<PrVersion, WireError> {
        Ok(PrVersion {
            epoch: Epoch(self.u64()?),
            n: self.u64()?,
        })
    }
    /// A reservation blob: a u32 length (at most `PR_BLOB_MAX`, and no more than the bytes
    /// left) and the bytes.
    fn blob(&mut self, what: &'static str) -> Result<Vec<u8>, WireError> {
        let n = self.count(what, PR_BLOB_MAX, 1)?;
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head.to_vec())
    }
    fn regions(&mut self) -> Result<Vec<RegionIndex>, WireError> {
        let n = self.count("regions", REGIONS_PER_FRAME_MAX, 8)?;
        (0..n).map(|_| self.u64().map(RegionIndex)).collect()
    }
    fn meta(&mut self) -> Result<ReplicaMeta, WireError> {
        let current = GenerationId(self.u64()?);
        let nb = usize::from(self.u8()?);
        check_list("bitmap_base", nb, BITMAP_BASES_MAX)?;
        let bitmap_base = (0..nb)
            .map(|_| Ok((NodeId(self.u8()?), GenerationId(self.u64()?))))
            .collect::<Result<Vec<_>, WireError>>()?;
        let nh = usize::from(self.u8()?);
        check_list("history", nh, HISTORY_MAX)?;
        let history = (0..nh)
            .map(|_| self.u64().map(GenerationId))
            .collect::<Result<Vec<_>, WireError>>()?;
        Ok(ReplicaMeta {
            current,
            bitmap_base,
            history,
            epoch: Epoch(self.u64()?),
            was_sequencer: self.bool()?,
            version: self.u64()?,
        })
    }
    pub(crate) fn finish(self) -> Result<(), WireError> {
        if !self.buf.is_empty() {
            return Err(self.err("trailing bytes after the body"));
        }
        Ok(())
    }
}

/// Header fields that depend on the variant: type, flags, and the body written to `body`.
/// The wire code of a task management function (docs/ha-wire.md).
fn task_mgmt_code(kind: TaskMgmtKind) -> u8 {
    match kind {
        TaskMgmtKind::LunReset => 1,
        TaskMgmtKind::ClearTaskSet => 2,
    }
}

fn task_mgmt_kind(code: u8) -> Option<TaskMgmtKind> {
    match code {
        1 => Some(TaskMgmtKind::LunReset),
        2 => Some(TaskMgmtKind::ClearTaskSet),
        _ => None,
    }
}

fn encode_body<P>(
    msg: &Msg<P>,
    body: &mut Vec<u8>,
    describe: &impl Fn(&P) -> PayloadDesc,
) -> Result<(u8, u8), WireError> {
    let mut w = Writer(body);
    let flag_if = |b: bool, f: u8| if b { f } else { 0 };
    Ok(match msg {
        Msg::Mirror {
            id,
            range,
            commit_follows,
            ..
        } => {
            w.op(id);
            w.range(range);
            (
                msg_type::MIRROR,
                flag_if(*commit_follows, flag::COMMIT_FOLLOWS),
            )
        }
        Msg::MirrorAck { id } => {
            w.op(id);
            (msg_type::MIRROR_ACK, 0)
        }
        Msg::Commit { id } => {
            w.op(id);
            (msg_type::COMMIT, 0)
        }
        Msg::Forward { id, range, op } => {
            w.op(id);
            w.range(range);
            match op {
                ForwardedOp::Write { .. } => {
                    w.u32(0);
                    (msg_type::FORWARD, 0)
                }
                ForwardedOp::CompareAndWrite { verify, .. } => {
                    let verify_len_bytes = describe(verify).len_bytes;
                    let verify_len =
                        u32::try_from(verify_len_bytes).map_err(|_| WireError::FrameTooLarge {
                            len_bytes: verify_len_bytes,
                            max_bytes: u32::MAX as usize,
                        })?;
                    w.u32(verify_len);
                    (msg_type::FORWARD, flag::COMPARE_AND_WRITE)
                }
            }
        }
        Msg::Grant { id, applied } => {
            w.op(id);
            (msg_type::GRANT, flag_if(*applied, flag::APPLIED))
        }
        Msg::Release { id } => {
            w.op(id);
            (msg_type::RELEASE, 0)
        }
        Msg::Uncertain { regions } => {
            w.regions(regions, "Uncertain regions")?;
            (msg_type::UNCERTAIN, 0)
        }
        Msg::SyncOffer {
            meta,
            dirty,
            journal_complete,
            num_blocks,
        } => {
            w.meta(meta)?;
            w.regions(dirty, "SyncOffer dirty regions")?;
            if let Some(n) = num_blocks {
                w.u64(*n);
            }
            (
                msg_type::SYNC_OFFER,
                flag_if(*journal_complete, flag::JOURNAL_COMPLETE)
                    | flag_if(num_blocks.is_some(), flag::HAS_SIZE),
            )
        }
        Msg::RegionCopy { id, region, .. } => {
            w.op(id);
            w.u64(region.0);
            (msg_type::REGION_COPY, 0)
        }
        Msg::RegionCopyAck { id } => {
            w.op(id);
            (msg_type::REGION_COPY_ACK, 0)
        }
        Msg::SyncComplete { meta } => {
            w.meta(meta)?;
            (msg_type::SYNC_COMPLETE, 0)
        }
        Msg::SyncCompleteAck => (msg_type::SYNC_COMPLETE_ACK, 0),
        Msg::CommitQuery { id } => {
            w.op(id);
            (msg_type::COMMIT_QUERY, 0)
        }
        Msg::TaskMgmt { id, kind } => {
            w.op(id);
            w.u8(task_mgmt_code(*kind));
            (msg_type::TASK_MGMT, 0)
        }
        Msg::TaskMgmtAck { id } => {
            w.op(id);
            (msg_type::TASK_MGMT_ACK, 0)
        }
        Msg::PrForward {
            id,
            base,
            state,
            notice,
        } => {
            w.op(id);
            w.pr_version(base);
            w.blob(state, "PrForward state")?;
            w.blob(notice, "PrForward notice")?;
            (msg_type::PR_FORWARD, 0)
        }
        Msg::PrApply {
            id,
            version,
            state,
            notice,
        } => {
            w.op(id);
            w.pr_version(version);
            w.blob(state, "PrApply state")?;
            w.blob(notice, "PrApply notice")?;
            (msg_type::PR_APPLY, 0)
        }
        Msg::PrApplyAck { id } => {
            w.op(id);
            (msg_type::PR_APPLY_ACK, 0)
        }
        Msg::PrDone { id, applied } => {
            w.op(id);
            (msg_type::PR_DONE, flag_if(*applied, flag::APPLIED))
        }
        // tandem-ha grows variants while this crate is built against it; a variant without a
        // row here is a typed error on send (the link is not used for it), not a broken
        // build of every crate that depends on this one. Give it a code, a row and a body.
        #[allow(unreachable_patterns)]
        _ => return Err(WireError::NoWireMapping),
    })
}

/// Writes header and body for `env` into `out` (cleared first) and returns the whole frame
/// length (header plus payload). The payload itself is not written: send `out`, then the
/// buffers of [`payload_parts`] in order. Fails if a list or the payload exceeds `limits`,
/// so a sender never emits what its peer would refuse.
pub fn encode_header<P: Payload>(
    env: &Envelope<P>,
    limits: &Limits,
    out: &mut Vec<u8>,
) -> Result<usize, WireError> {
    encode_header_by(env, limits, out, |p| PayloadDesc {
        len_bytes: p.len_bytes(),
        crc32c: p.crc32c(),
    })
}

fn encode_header_by<P>(
    env: &Envelope<P>,
    limits: &Limits,
    out: &mut Vec<u8>,
    describe: impl Fn(&P) -> PayloadDesc,
) -> Result<usize, WireError> {
    out.clear();
    out.resize(FIXED_HEADER_LEN, 0);
    let (msg_type, flags) = encode_body(&env.msg, out, &describe)?;
    let (payload_len, payload_crc) = match payload_parts(&env.msg).map(|p| p.map(&describe)) {
        [None, _] => (0usize, 0u32),
        [Some(a), None] => (a.len_bytes, a.crc32c),
        [Some(a), Some(b)] => (
            a.len_bytes.saturating_add(b.len_bytes),
            payload_crc32c_concat(a.crc32c, b.crc32c, b.len_bytes),
        ),
    };
    finish_header(
        out,
        msg_type,
        flags,
        env.epoch.0,
        payload_len,
        payload_crc,
        limits,
    )
}

/// Fills the fixed header in front of a body already in `out[32..]`.
pub(crate) fn finish_header(
    out: &mut [u8],
    msg_type: u8,
    flags: u8,
    epoch: u64,
    payload_len: usize,
    payload_crc: u32,
    limits: &Limits,
) -> Result<usize, WireError> {
    if payload_len > limits.payload_len_max_bytes() as usize {
        return Err(WireError::PayloadTooLarge {
            payload_len_bytes: u32::try_from(payload_len).unwrap_or(u32::MAX),
            max_bytes: limits.payload_len_max_bytes(),
        });
    }
    let header_len = out.len();
    let repr = HeaderRepr {
        msg_type,
        flags,
        header_len: u16::try_from(header_len).map_err(|_| WireError::HeaderLen { header_len })?,
        payload_len: payload_len as u32,
        epoch,
        payload_crc,
    };
    let mut f = Frame::new_unchecked(&mut out[..]);
    repr.emit(&mut f);
    f.fill_header_crc();
    Ok(header_len + payload_len)
}

/// Encodes a whole frame (header, body and payload) into `out`. Copies the payload: for
/// small messages, tests and tools; the data path uses [`encode_header`] and writev.
pub fn encode<P: AsRef<[u8]>>(
    env: &Envelope<P>,
    limits: &Limits,
    out: &mut Vec<u8>,
) -> Result<(), WireError> {
    encode_header_by(env, limits, out, |p| PayloadDesc::of(p.as_ref()))?;
    for p in payload_parts(&env.msg).into_iter().flatten() {
        out.extend_from_slice(p.as_ref());
    }
    Ok(())
}

/// A decoded frame: replication traffic, link control or a handshake step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    Replication(Envelope<&'a [u8]>),
    Link(LinkMsg),
    Handshake(HandshakeMsg),
}

/// Link control: how the two ends of a peer session keep replication messages exactly once
/// and in order across links (docs/ha-wire.md, "Reliable delivery"). Sequence numbers count
/// the replication messages of one session (sender's boot id, receiver's boot id) from 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkMsg {
    /// Cumulative acknowledgement: the sender of this frame has delivered every replication
    /// message with a sequence number below `next` (the next one it expects). Also the
    /// keepalive of an idle link.
    Ack { next: u64 },
    /// The replication frames that follow on this link carry sequence numbers `first_seq`,
    /// `first_seq + 1`, ... (a sequence number is a frame's position after its Start).
    Start { first_seq: u64 },
}

impl LinkMsg {
    /// Encodes the whole frame (epoch 0, no payload) into `out` (cleared first).
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        out.clear();
        out.resize(FIXED_HEADER_LEN, 0);
        let (t, v) = match *self {
            LinkMsg::Ack { next } => (msg_type::ACK, next),
            LinkMsg::Start { first_seq } => (msg_type::START, first_seq),
        };
        out.extend_from_slice(&v.to_le_bytes());
        finish_header(out, t, 0, 0, 0, 0, &Limits::default())?;
        Ok(())
    }

    fn parse_body(msg_type: u8, r: &mut Reader<'_>) -> Result<Self, WireError> {
        match msg_type {
            msg_type::ACK => Ok(LinkMsg::Ack { next: r.u64()? }),
            msg_type::START => Ok(LinkMsg::Start {
                first_seq: r.u64()?,
            }),
            other => Err(WireError::UnknownType { msg_type: other }),
        }
    }
}

/// Decodes one whole frame (exactly header plus payload, as cut by
/// [`crate::FrameDecoder`]): header CRC, type table, flags, body, then the payload CRC, so
/// corrupted data never leaves this function. The payload borrows `frame`.
pub fn decode_frame<'a>(frame: &'a [u8], limits: &Limits) -> Result<Decoded<'a>, WireError> {
    let view = Frame::new_checked(frame)?;
    let hdr = HeaderRepr::parse(&view, limits)?;
    let announced = view.total_len();
    if frame.len() != announced {
        return Err(WireError::FrameLen {
            len_bytes: frame.len(),
            announced_bytes: announced,
        });
    }
    let info = type_info(hdr.msg_type).ok_or(WireError::UnknownType {
        msg_type: hdr.msg_type,
    })?;
    if hdr.flags & !info.flags_allowed != 0 {
        return Err(WireError::BadFlags {
            msg_type: hdr.msg_type,
            flags: hdr.flags,
        });
    }
    if !info.carries_payload && hdr.payload_len != 0 {
        return Err(WireError::UnexpectedPayload {
            msg_type: hdr.msg_type,
            payload_len_bytes: hdr.payload_len,
        });
    }
    let body = &frame[FIXED_HEADER_LEN..usize::from(hdr.header_len)];
    let payload = &frame[usize::from(hdr.header_len)..];
    let computed = payload_crc32c(payload);
    if computed != hdr.payload_crc {
        return Err(WireError::PayloadCrc {
            expected: hdr.payload_crc,
            computed,
        });
    }
    let mut r = Reader::new(body, hdr.msg_type);
    if info.link_control {
        // Like handshake frames, link control belongs to no epoch (one encoding per frame).
        if hdr.epoch != 0 {
            return Err(r.err("link control frame with a nonzero epoch"));
        }
        let m = LinkMsg::parse_body(hdr.msg_type, &mut r)?;
        r.finish()?;
        return Ok(Decoded::Link(m));
    }
    if info.handshake {
        // Handshake frames belong to no epoch; one fixed value keeps every frame's encoding
        // unique (the fuzz target re-encodes whatever decodes and compares bytes).
        if hdr.epoch != 0 {
            return Err(r.err("handshake frame with a nonzero epoch"));
        }
        let m = HandshakeMsg::parse_body(hdr.msg_type, &mut r)?;
        r.finish()?;
        return Ok(Decoded::Handshake(m));
    }
    let has = |f: u8| hdr.flags & f != 0;
    let msg = match hdr.msg_type {
        msg_type::MIRROR => Msg::Mirror {
            id: r.op()?,
            range: r.range()?,
            data: payload,
            commit_follows: has(flag::COMMIT_FOLLOWS),
        },
        msg_type::MIRROR_ACK => Msg::MirrorAck { id: r.op()? },
        msg_type::COMMIT => Msg::Commit { id: r.op()? },
        msg_type::FORWARD => {
            let id = r.op()?;
            let range = r.range()?;
            let verify_len = r.u32()? as usize;
            let op = if has(flag::COMPARE_AND_WRITE) {
                if verify_len > payload.len() {
                    return Err(r.err("verify length exceeds the payload"));
                }
                let (verify, data) = payload.split_at(verify_len);
                ForwardedOp::CompareAndWrite { verify, data }
            } else {
                if verify_len != 0 {
                    return Err(r.err("verify length on a plain write"));
                }
                ForwardedOp::Write { data: payload }
            };
            Msg::Forward { id, range, op }
        }
        msg_type::GRANT => Msg::Grant {
            id: r.op()?,
            applied: has(flag::APPLIED),
        },
        msg_type::RELEASE => Msg::Release { id: r.op()? },
        msg_type::UNCERTAIN => Msg::Uncertain {
            regions: r.regions()?,
        },
        msg_type::SYNC_OFFER => Msg::SyncOffer {
            meta: r.meta()?,
            dirty: r.regions()?,
            journal_complete: has(flag::JOURNAL_COMPLETE),
            num_blocks: if has(flag::HAS_SIZE) {
                Some(r.u64()?)
            } else {
                None
            },
        },
        msg_type::REGION_COPY => Msg::RegionCopy {
            id: r.op()?,
            region: RegionIndex(r.u64()?),
            data: payload,
        },
        msg_type::REGION_COPY_ACK => Msg::RegionCopyAck { id: r.op()? },
        msg_type::SYNC_COMPLETE => Msg::SyncComplete { meta: r.meta()? },
        msg_type::SYNC_COMPLETE_ACK => Msg::SyncCompleteAck,
        msg_type::COMMIT_QUERY => Msg::CommitQuery { id: r.op()? },
        msg_type::TASK_MGMT => {
            let id = r.op()?;
            let kind =
                task_mgmt_kind(r.u8()?).ok_or_else(|| r.err("unknown task management function"))?;
            Msg::TaskMgmt { id, kind }
        }
        msg_type::TASK_MGMT_ACK => Msg::TaskMgmtAck { id: r.op()? },
        msg_type::PR_FORWARD => Msg::PrForward {
            id: r.op()?,
            base: r.pr_version()?,
            state: r.blob("PrForward state")?,
            notice: r.blob("PrForward notice")?,
        },
        msg_type::PR_APPLY => Msg::PrApply {
            id: r.op()?,
            version: r.pr_version()?,
            state: r.blob("PrApply state")?,
            notice: r.blob("PrApply notice")?,
        },
        msg_type::PR_APPLY_ACK => Msg::PrApplyAck { id: r.op()? },
        msg_type::PR_DONE => Msg::PrDone {
            id: r.op()?,
            applied: has(flag::APPLIED),
        },
        // A row in MSG_TYPES without a decoder arm: refuse rather than guess.
        other => return Err(WireError::UnknownType { msg_type: other }),
    };
    r.finish()?;
    Ok(Decoded::Replication(Envelope {
        epoch: Epoch(hdr.epoch),
        msg,
    }))
}

/// Decodes one whole frame that must be replication traffic.
pub fn decode<'a>(frame: &'a [u8], limits: &Limits) -> Result<Envelope<&'a [u8]>, WireError> {
    match decode_frame(frame, limits)? {
        Decoded::Replication(env) => Ok(env),
        Decoded::Handshake(_) | Decoded::Link(_) => Err(WireError::NotReplication {
            msg_type: frame[crate::frame::field::MSG_TYPE],
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::field;

    fn op(origin: u8, n: u64) -> OpId {
        OpId {
            origin: NodeId(origin),
            n,
        }
    }

    /// Forward, compare-and-write, epoch 9, op n2#0x0102, LBA 16 + 1 block, verify "ab",
    /// data "cd".
    fn caw_bytes() -> Vec<u8> {
        let mut b = vec![
            b'T', b'N', b'D', b'M', 0x02, 0x00, // magic, version 2
            0x04, 0x01, // Forward, COMPARE_AND_WRITE
            57, 0x00, 0x00, 0x00, // header_len 57, reserved
            0x04, 0x00, 0x00, 0x00, // payload_len 4
            0x09, 0, 0, 0, 0, 0, 0, 0, // epoch 9
            0, 0, 0, 0, // payload crc (filled below)
            0, 0, 0, 0, // header crc (filled below)
            0x02, 0x02, 0x01, 0, 0, 0, 0, 0, 0, // op id: origin 2, n 0x0102
            0x10, 0, 0, 0, 0, 0, 0, 0, // start LBA 16
            0x01, 0, 0, 0, // 1 block
            0x02, 0, 0, 0, // verify_len 2
            b'a', b'b', b'c', b'd', // payload: verify, data
        ];
        b[field::PAYLOAD_CRC].copy_from_slice(&payload_crc32c(b"abcd").to_le_bytes());
        Frame::new_unchecked(&mut b[..57]).fill_header_crc();
        b
    }

    fn caw_env() -> Envelope<&'static [u8]> {
        Envelope {
            epoch: Epoch(9),
            msg: Msg::Forward {
                id: op(2, 0x0102),
                range: BlockRange::new(16, 1),
                op: ForwardedOp::CompareAndWrite {
                    verify: b"ab",
                    data: b"cd",
                },
            },
        }
    }

    #[test]
    fn deconstruct_compare_and_write() {
        let b = caw_bytes();
        assert_eq!(decode(&b, &Limits::default()).unwrap(), caw_env());
    }

    #[test]
    fn construct_compare_and_write_with_carried_crcs() {
        let mut out = Vec::new();
        encode(&caw_env(), &Limits::default(), &mut out).unwrap();
        assert_eq!(out, caw_bytes());
        // The data plane's way: CRCs computed where each buffer entered, combined here.
        let env = Envelope {
            epoch: Epoch(9),
            msg: Msg::Forward {
                id: op(2, 0x0102),
                range: BlockRange::new(16, 1),
                op: ForwardedOp::CompareAndWrite {
                    verify: PayloadDesc::of(b"ab"),
                    data: PayloadDesc::of(b"cd"),
                },
            },
        };
        let len = encode_header(&env, &Limits::default(), &mut out).unwrap();
        assert_eq!(len, 61);
        assert_eq!(out[..], caw_bytes()[..57]);
    }

    /// PrForward, PrApply (op id, version, two length-prefixed blobs), PrApplyAck, PrDone:
    /// round trip; flipped bytes and truncations never panic; blob bounds on both sides.
    #[test]
    fn reservation_frames() {
        let limits = Limits::default();
        let v = PrVersion {
            epoch: Epoch(7),
            n: 3,
        };
        for msg in [
            Msg::PrForward {
                id: op(2, 5),
                base: v,
                state: vec![1, 2, 3],
                notice: vec![9],
            },
            Msg::PrApply {
                id: op(1, 6),
                version: v,
                state: Vec::new(),
                notice: vec![4; 20],
            },
            Msg::PrApplyAck { id: op(2, 6) },
            Msg::PrDone {
                id: op(2, 5),
                applied: true,
            },
            Msg::PrDone {
                id: op(2, 5),
                applied: false,
            },
        ] {
            let env: Envelope<&[u8]> = Envelope {
                epoch: Epoch(8),
                msg,
            };
            let mut b = Vec::new();
            encode(&env, &limits, &mut b).unwrap();
            assert_eq!(decode(&b, &limits).unwrap(), env);
            // Any byte of the body changed (header CRC fixed up): refused or re-encodes to
            // exactly the same bytes; never a panic.
            for at in FIXED_HEADER_LEN..b.len() {
                for x in [0u8, 1, 0x7f, 0x80, 0xff] {
                    let mut bad = b.clone();
                    bad[at] = x;
                    Frame::new_unchecked(&mut bad[..]).fill_header_crc();
                    if let Ok(e) = decode(&bad, &limits) {
                        let mut again = Vec::new();
                        encode(&e, &limits, &mut again).unwrap();
                        assert_eq!(again, bad);
                    }
                }
            }
            for len in 0..b.len() {
                assert!(decode(&b[..len], &limits).is_err());
            }
        }
        // A blob over the bound is refused on send, and a length over the bound (or over
        // the body) on receive, before anything is allocated.
        let big: Envelope<&[u8]> = Envelope {
            epoch: Epoch(8),
            msg: Msg::PrApply {
                id: op(1, 1),
                version: v,
                state: vec![0; PR_BLOB_MAX + 1],
                notice: Vec::new(),
            },
        };
        assert!(encode(&big, &limits, &mut Vec::new()).is_err());
        let ok: Envelope<&[u8]> = Envelope {
            epoch: Epoch(8),
            msg: Msg::PrApply {
                id: op(1, 1),
                version: v,
                state: vec![0; PR_BLOB_MAX],
                notice: vec![0; PR_BLOB_MAX],
            },
        };
        let mut b = Vec::new();
        encode(&ok, &limits, &mut b).unwrap();
        assert_eq!(decode(&b, &limits).unwrap(), ok);
        let len_at = FIXED_HEADER_LEN + 9 + 16;
        for claimed in [PR_BLOB_MAX as u32 + 1, u32::MAX] {
            let mut bad = b.clone();
            bad[len_at..len_at + 4].copy_from_slice(&claimed.to_le_bytes());
            Frame::new_unchecked(&mut bad[..]).fill_header_crc();
            assert!(decode(&bad, &limits).is_err());
        }
    }

    /// TaskMgmt (op id, function code) and TaskMgmtAck (op id): round trip; an unknown
    /// function code, any flipped body byte and any truncation decode to an error or to a
    /// message that encodes back to the same bytes, never a panic.
    #[test]
    fn task_management_frames() {
        let limits = Limits::default();
        for kind in [TaskMgmtKind::LunReset, TaskMgmtKind::ClearTaskSet] {
            for msg in [
                Msg::TaskMgmt {
                    id: op(2, 77),
                    kind,
                },
                Msg::TaskMgmtAck { id: op(1, 78) },
            ] {
                let env: Envelope<&[u8]> = Envelope {
                    epoch: Epoch(5),
                    msg,
                };
                let mut b = Vec::new();
                encode(&env, &limits, &mut b).unwrap();
                assert_eq!(decode(&b, &limits).unwrap(), env);
                for at in FIXED_HEADER_LEN..b.len() {
                    for v in [0u8, 1, 2, 3, 0x7f, 0xff] {
                        let mut bad = b.clone();
                        bad[at] = v;
                        Frame::new_unchecked(&mut bad[..]).fill_header_crc();
                        if let Ok(e) = decode(&bad, &limits) {
                            let mut again = Vec::new();
                            encode(&e, &limits, &mut again).unwrap();
                            assert_eq!(again, bad);
                        }
                    }
                }
                for len in 0..b.len() {
                    assert!(decode(&b[..len], &limits).is_err());
                }
            }
        }
        let env: Envelope<&[u8]> = Envelope {
            epoch: Epoch(5),
            msg: Msg::TaskMgmt {
                id: op(2, 77),
                kind: TaskMgmtKind::LunReset,
            },
        };
        let mut b = Vec::new();
        encode(&env, &limits, &mut b).unwrap();
        assert_eq!(b.len(), FIXED_HEADER_LEN + 9 + 1);
        for code in [0u8, 3, 0xff] {
            let mut bad = b.clone();
            bad[FIXED_HEADER_LEN + 9] = code;
            Frame::new_unchecked(&mut bad[..]).fill_header_crc();
            assert!(matches!(
                decode(&bad, &limits),
                Err(WireError::Body { msg_type: 0x0e, .. })
            ));
        }
    }

    #[test]
    fn length_overflow_in_the_body() {
        let limits = Limits::default();
        // verify_len larger than the payload.
        let mut b = caw_bytes();
        b[53] = 5;
        Frame::new_unchecked(&mut b[..57]).fill_header_crc();
        assert!(matches!(
            decode(&b, &limits),
            Err(WireError::Body { msg_type: 4, .. })
        ));
        // A region count past the limit, and one past the body, on an Uncertain frame.
        let env: Envelope<&[u8]> = Envelope {
            epoch: Epoch(1),
            msg: Msg::Uncertain {
                regions: vec![RegionIndex(3), RegionIndex(4)],
            },
        };
        let mut u = Vec::new();
        encode(&env, &limits, &mut u).unwrap();
        assert_eq!(u.len(), 32 + 4 + 16);
        assert_eq!(u[32..36], [2, 0, 0, 0]);
        for (count, want_list_error) in [(4097u32, true), (3, false)] {
            let mut bad = u.clone();
            bad[32..36].copy_from_slice(&count.to_le_bytes());
            Frame::new_unchecked(&mut bad[..]).fill_header_crc();
            let e = decode(&bad, &limits).unwrap_err();
            assert_eq!(
                matches!(e, WireError::ListTooLong { .. }),
                want_list_error,
                "{e}"
            );
        }
        // Too many regions to send at all.
        let env: Envelope<&[u8]> = Envelope {
            epoch: Epoch(1),
            msg: Msg::Uncertain {
                regions: vec![RegionIndex(0); REGIONS_PER_FRAME_MAX + 1],
            },
        };
        assert!(matches!(
            encode(&env, &limits, &mut u),
            Err(WireError::ListTooLong { count: 4097, .. })
        ));
        // The frame is longer than its header says.
        let mut long = caw_bytes();
        long.push(0);
        assert!(matches!(
            decode(&long, &limits),
            Err(WireError::FrameLen { .. })
        ));
    }

    #[test]
    fn corrupted_payload_is_caught() {
        let mut b = caw_bytes();
        b[58] ^= 0x20;
        assert!(matches!(
            decode(&b, &Limits::default()),
            Err(WireError::PayloadCrc { .. })
        ));
    }

    #[test]
    fn unknown_type_flags_and_stray_payloads_are_refused() {
        let limits = Limits::default();
        let retype = |t: u8, flags: u8| {
            let mut b = caw_bytes();
            b[field::MSG_TYPE] = t;
            b[field::FLAGS] = flags;
            Frame::new_unchecked(&mut b[..57]).fill_header_crc();
            decode(&b, &limits).map(|_| ())
        };
        assert_eq!(
            retype(0x3f, 0),
            Err(WireError::UnknownType { msg_type: 0x3f })
        );
        assert_eq!(
            retype(0x04, 0x02),
            Err(WireError::BadFlags {
                msg_type: 4,
                flags: 2
            })
        );
        assert_eq!(
            retype(msg_type::COMMIT, 0),
            Err(WireError::UnexpectedPayload {
                msg_type: 3,
                payload_len_bytes: 4
            })
        );
    }

    #[test]
    fn empty_or_wrapping_ranges_are_refused() {
        for (start, len) in [(16u64, 0u32), (u64::MAX, 1)] {
            let mut b = caw_bytes();
            b[41..49].copy_from_slice(&start.to_le_bytes());
            b[49..53].copy_from_slice(&len.to_le_bytes());
            Frame::new_unchecked(&mut b[..57]).fill_header_crc();
            assert!(matches!(
                decode(&b, &Limits::default()),
                Err(WireError::Body { .. })
            ));
        }
    }

    #[test]
    fn the_largest_sync_offer_is_exactly_the_header_limit() {
        use crate::frame::HEADER_LEN_MAX;
        assert_eq!(HEADER_LEN_MAX, 33111, "docs/ha-wire.md states this number");
        let meta = ReplicaMeta {
            current: GenerationId(1),
            bitmap_base: vec![(NodeId(1), GenerationId(2)); BITMAP_BASES_MAX],
            history: vec![GenerationId(3); HISTORY_MAX],
            epoch: Epoch(4),
            was_sequencer: true,
            version: 5,
        };
        let env: Envelope<&[u8]> = Envelope {
            epoch: Epoch(4),
            msg: Msg::SyncOffer {
                meta: meta.clone(),
                dirty: vec![RegionIndex(7); REGIONS_PER_FRAME_MAX],
                journal_complete: true,
                num_blocks: Some(u64::MAX),
            },
        };
        let mut out = Vec::new();
        encode(&env, &Limits::default(), &mut out).unwrap();
        assert_eq!(out.len(), HEADER_LEN_MAX);
        assert_eq!(decode(&out, &Limits::default()).unwrap(), env);
        // One more history entry than allowed is refused on both sides.
        let mut long = meta;
        long.history.push(GenerationId(9));
        let env: Envelope<&[u8]> = Envelope {
            epoch: Epoch(4),
            msg: Msg::SyncComplete { meta: long },
        };
        assert!(matches!(
            encode(&env, &Limits::default(), &mut out),
            Err(WireError::ListTooLong {
                what: "history",
                ..
            })
        ));
    }

    /// A peer that predates the size in `SyncOffer` sends no `HAS_SIZE` flag and no size:
    /// its offer still decodes, with `num_blocks: None` (the sequencer then cannot check).
    #[test]
    fn a_sync_offer_without_a_size_still_decodes() {
        let offer = |num_blocks| Envelope::<&[u8]> {
            epoch: Epoch(3),
            msg: Msg::SyncOffer {
                meta: ReplicaMeta {
                    current: GenerationId(1),
                    bitmap_base: vec![],
                    history: vec![],
                    epoch: Epoch(3),
                    was_sequencer: false,
                    version: 1,
                },
                dirty: vec![RegionIndex(2)],
                journal_complete: true,
                num_blocks,
            },
        };
        let (mut old, mut new) = (Vec::new(), Vec::new());
        encode(&offer(None), &Limits::default(), &mut old).unwrap();
        encode(&offer(Some(196_608)), &Limits::default(), &mut new).unwrap();
        assert_eq!(
            new.len(),
            old.len() + 8,
            "the size is 8 bytes at the body's end"
        );
        assert_eq!(old[6], msg_type::SYNC_OFFER);
        assert_eq!(old[7], flag::JOURNAL_COMPLETE, "no HAS_SIZE flag");
        assert_eq!(new[7], flag::JOURNAL_COMPLETE | flag::HAS_SIZE);
        assert_eq!(decode(&old, &Limits::default()).unwrap(), offer(None));
        assert_eq!(
            decode(&new, &Limits::default()).unwrap(),
            offer(Some(196_608))
        );
        // The flag without the 8 bytes is a short body, refused.
        let mut lying = old.clone();
        lying[7] |= flag::HAS_SIZE;
        assert!(decode(&lying, &Limits::default()).is_err());
    }

    #[test]
    fn handshake_frames_carry_epoch_zero() {
        let mut b = Vec::new();
        HandshakeMsg::Proof { mac: [3; 32] }.encode(&mut b).unwrap();
        assert!(decode_frame(&b, &Limits::default()).is_ok());
        assert_eq!(
            decode(&b, &Limits::default()),
            Err(WireError::NotReplication { msg_type: 0x41 })
        );
        b[field::EPOCH.start] = 1;
        Frame::new_unchecked(&mut b[..]).fill_header_crc();
        assert!(matches!(
            decode_frame(&b, &Limits::default()),
            Err(WireError::Body { msg_type: 0x41, .. })
        ));
    }

    #[test]
    fn link_control_frames_round_trip() {
        let limits = Limits::default();
        for m in [
            LinkMsg::Ack { next: 0 },
            LinkMsg::Ack { next: u64::MAX },
            LinkMsg::Start { first_seq: 77 },
        ] {
            let mut b = Vec::new();
            m.encode(&mut b).unwrap();
            assert_eq!(b.len(), FIXED_HEADER_LEN + 8);
            assert_eq!(decode_frame(&b, &limits), Ok(Decoded::Link(m)));
            assert!(matches!(
                decode(&b, &limits),
                Err(WireError::NotReplication { .. })
            ));
            // Short body, nonzero epoch: malformed.
            let mut short = b[..b.len() - 1].to_vec();
            Frame::new_unchecked(&mut short[..]).set_header_len(39);
            Frame::new_unchecked(&mut short[..]).fill_header_crc();
            assert!(matches!(
                decode_frame(&short, &limits),
                Err(WireError::Body { .. })
            ));
            b[field::EPOCH.start] = 1;
            Frame::new_unchecked(&mut b[..]).fill_header_crc();
            assert!(matches!(
                decode_frame(&b, &limits),
                Err(WireError::Body { .. })
            ));
        }
    }

    #[test]
    fn every_table_row_has_a_distinct_code() {
        for (i, r) in MSG_TYPES.iter().enumerate() {
            assert!(
                MSG_TYPES[i + 1..].iter().all(|o| o.code != r.code),
                "{}",
                r.name
            );
            assert_eq!(type_info(r.code), Some(r));
        }
    }
}
