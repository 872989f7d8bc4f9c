//! The mirror protocol on Tandem sync links: pure logic, no I/O (docs/ha-wire.md).
//!
//! * [`frame`]: the fixed 32-byte header as a zero-copy view ([`Frame`]) and [`HeaderRepr`],
//!   with a CRC32C over header and body and another over the payload, and the [`Limits`].
//! * [`codec`]: `tandem_ha::Envelope<P>` to and from frames; the payload never passes through
//!   by value ([`encode_header`] + writev on send, [`decode`] borrows it on receive).
//! * [`decoder`]: [`FrameDecoder`] cuts frames out of a stream that arrives in any pieces,
//!   buffering at most one largest frame.
//! * [`LinkMsg`]: link control (cumulative Ack, Start of a sequence) for exactly-once,
//!   in-order delivery across links (the crate tandem-synclink drives it).
//! * [`handshake`]: the HMAC-SHA256 mutual authentication that opens each link, and
//!   [`session`]: the gate that refuses replication traffic before it.
//!
//! Contract: no function here panics on bytes from the peer; every refusal is a typed error
//! after which the caller logs and closes that link.
//!
//! ```
//! use tandem_ha::{Envelope, Epoch, Msg, NodeId, OpId, BlockRange};
//! use tandem_mirror::{decode, encode_header, payload_parts, FrameDecoder, Limits, PayloadDesc};
//!
//! let host_data = vec![0xabu8; 4096];
//! // Where the host data enters: one CRC, carried with the buffer.
//! let desc = PayloadDesc::of(&host_data);
//! let env = Envelope { epoch: Epoch(4), msg: Msg::Mirror {
//!     id: OpId { origin: NodeId(1), n: 9 }, range: BlockRange::new(80, 8),
//!     data: desc, commit_follows: false } };
//! let mut header = Vec::new();
//! let frame_len = encode_header(&env, &Limits::default(), &mut header).unwrap();
//! assert_eq!(payload_parts(&env.msg)[0], Some(&desc));
//! // The socket: header and host buffer back to back (writev), arriving in two pieces.
//! let mut rx = FrameDecoder::new(Limits::default());
//! rx.feed(&header);
//! assert!(rx.next_frame().unwrap().is_none());
//! rx.feed(&host_data);
//! let frame = rx.next_frame().unwrap().unwrap();
//! assert_eq!(frame.len(), frame_len);
//! let got = decode(frame, &Limits::default()).unwrap();
//! assert!(matches!(got.msg, Msg::Mirror { data, .. } if data == &host_data[..]));
//! ```
#![forbid(unsafe_code)]

pub mod codec;
pub mod decoder;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod session;
pub mod shared;

pub use codec::{
    decode, decode_frame, encode, encode_header, payload_parts, type_info, Decoded, LinkMsg,
    MsgTypeInfo, Payload, PayloadDesc, MSG_TYPES,
};
pub use decoder::FrameDecoder;
pub use error::WireError;
pub use frame::{payload_crc32c, payload_crc32c_concat, Frame, HeaderRepr, Limits};
pub use handshake::{AuthError, Handshake, HandshakeMsg, Hello, LinkConfig, Role};
pub use session::{Inbound, LinkError, LinkSession};
pub use shared::SharedPayload;
