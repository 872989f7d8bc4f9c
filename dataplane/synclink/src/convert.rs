//! A decoded message (payload borrowing the receive buffer) to one the engine keeps
//! (payload in its own shared buffer, with the CRC the frame carried).

use tandem_ha::{Envelope, ForwardedOp, Msg};
use tandem_mirror::{payload_crc32c, SharedPayload};

/// `frame_crc` is the payload CRC from the frame header, already checked by `decode`; it
/// is reused for a single-buffer payload. The two buffers of a compare-and-write get their
/// own CRCs. `None`: a variant this build cannot carry (close the link).
pub(crate) fn to_shared(env: Envelope<&[u8]>, frame_crc: u32) -> Option<Envelope<SharedPayload>> {
    let one = |b: &[u8]| SharedPayload::received(b, frame_crc);
    let own = |b: &[u8]| SharedPayload::received(b, payload_crc32c(b));
    let msg = match env.msg {
        Msg::Mirror {
            id,
            range,
            data,
            commit_follows,
        } => Msg::Mirror {
            id,
            range,
            data: one(data),
            commit_follows,
        },
        Msg::MirrorAck { id } => Msg::MirrorAck { id },
        Msg::Commit { id } => Msg::Commit { id },
        Msg::CommitQuery { id } => Msg::CommitQuery { id },
        Msg::Forward { id, range, op } => Msg::Forward {
            id,
            range,
            op: match op {
                ForwardedOp::Write { data } => ForwardedOp::Write { data: one(data) },
                ForwardedOp::CompareAndWrite { verify, data } => ForwardedOp::CompareAndWrite {
                    verify: own(verify),
                    data: own(data),
                },
            },
        },
        Msg::Grant { id, applied } => Msg::Grant { id, applied },
        Msg::Release { id } => Msg::Release { id },
        Msg::Uncertain { regions } => Msg::Uncertain { regions },
        Msg::SyncOffer {
            meta,
            dirty,
            journal_complete,
            num_blocks,
        } => Msg::SyncOffer {
            meta,
            dirty,
            journal_complete,
            num_blocks,
        },
        Msg::RegionCopy { id, region, data } => Msg::RegionCopy {
            id,
            region,
            data: one(data),
        },
        Msg::RegionCopyAck { id } => Msg::RegionCopyAck { id },
        Msg::SyncComplete { meta } => Msg::SyncComplete { meta },
        Msg::SyncCompleteAck => Msg::SyncCompleteAck,
        Msg::TaskMgmt { id, kind } => Msg::TaskMgmt { id, kind },
        Msg::TaskMgmtAck { id } => Msg::TaskMgmtAck { id },
        // Reservation states are owned bytes already (no payload buffer to share).
        Msg::PrForward {
            id,
            base,
            state,
            notice,
        } => Msg::PrForward {
            id,
            base,
            state,
            notice,
        },
        Msg::PrApply {
            id,
            version,
            state,
            notice,
        } => Msg::PrApply {
            id,
            version,
            state,
            notice,
        },
        Msg::PrApplyAck { id } => Msg::PrApplyAck { id },
        Msg::PrDone { id, applied } => Msg::PrDone { id, applied },
        // tandem-ha may grow variants before this crate learns them (as in tandem-mirror).
        #[allow(unreachable_patterns)]
        _ => return None,
    };
    Some(Envelope {
        epoch: env.epoch,
        msg,
    })
}
