//! Errors of the wire layer. Every one of them means the peer sent something this build does
//! not accept: the receiver logs it and closes that link (the engine sees the link go down and
//! moves its traffic to the partner's other links). None is retried on the same stream, because
//! after a bad frame the byte stream can no longer be trusted to be in step.

use thiserror::Error;

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum WireError {
    #[error("frame truncated: need {need_bytes} bytes, have {have_bytes}")]
    Truncated {
        need_bytes: usize,
        have_bytes: usize,
    },
    #[error("bad magic {got:02x?}: the peer does not speak the Tandem mirror protocol")]
    BadMagic { got: [u8; 4] },
    #[error("mirror protocol version {got} is not supported (this node speaks {supported}): upgrade both nodes to the same release")]
    UnsupportedVersion { got: u16, supported: u16 },
    #[error("reserved header bytes are not zero")]
    ReservedNotZero,
    #[error("header length {header_len} out of range")]
    HeaderLen { header_len: usize },
    #[error("payload of {payload_len_bytes} bytes exceeds the limit of {max_bytes}")]
    PayloadTooLarge {
        payload_len_bytes: u32,
        max_bytes: u32,
    },
    #[error("header CRC32C mismatch (frame says {expected:#010x}, computed {computed:#010x})")]
    HeaderCrc { expected: u32, computed: u32 },
    #[error("payload CRC32C mismatch (frame says {expected:#010x}, computed {computed:#010x}): data corrupted in transit")]
    PayloadCrc { expected: u32, computed: u32 },
    #[error("unknown message type {msg_type:#04x}")]
    UnknownType { msg_type: u8 },
    #[error("flags {flags:#04x} not allowed on message type {msg_type:#04x}")]
    BadFlags { msg_type: u8, flags: u8 },
    #[error(
        "message type {msg_type:#04x} carries no payload but announces {payload_len_bytes} bytes"
    )]
    UnexpectedPayload {
        msg_type: u8,
        payload_len_bytes: u32,
    },
    #[error("body of message type {msg_type:#04x} malformed: {what}")]
    Body { msg_type: u8, what: &'static str },
    #[error("{what} lists {count} entries, more than the limit of {max}")]
    ListTooLong {
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error("frame of {len_bytes} bytes exceeds the frame limit of {max_bytes}")]
    FrameTooLarge { len_bytes: usize, max_bytes: usize },
    #[error("frame is {len_bytes} bytes but its header announces {announced_bytes}")]
    FrameLen {
        len_bytes: usize,
        announced_bytes: usize,
    },
    #[error("message type {msg_type:#04x} is a handshake message, not a replication message")]
    NotReplication { msg_type: u8 },
    #[error("message type {msg_type:#04x} is not a handshake message")]
    NotHandshake { msg_type: u8 },
    #[error("this build has no wire mapping for a tandem-ha message variant: add its row to the message type table")]
    NoWireMapping,
    #[error("the decoder already failed on this stream; close the link")]
    DecoderFailed,
}
