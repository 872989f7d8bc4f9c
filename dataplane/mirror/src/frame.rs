//! The fixed frame header, in the style of smoltcp's `wire` module.
//!
//! ```text
//!  0       4       6   7   8       10      12              16
//!  +-------+-------+---+---+-------+-------+---------------+
//!  | magic |version|typ|flg|hdr_len|reservd|  payload_len  |
//!  +-------+-------+---+---+-------+-------+---------------+
//!  16                              24              28              32
//!  +-------------------------------+---------------+---------------+
//!  |             epoch             |  payload_crc  |  header_crc   |
//!  +-------------------------------+---------------+---------------+
//!  32 .. hdr_len: the message body (typed fields, see `codec`)
//!  hdr_len .. hdr_len + payload_len: the payload (host data, written by writev as is)
//! ```
//!
//! All integers are little endian. `header_crc` is a CRC32C over bytes `0..28` followed by
//! the body (`32..hdr_len`), so one bad bit anywhere in the header or body is caught before
//! any field is trusted. `payload_crc` is computed where the host data entered the cluster
//! and checked before the data reaches the partner's disk.
//!
//! [`Frame::new_checked`] checks the length once; after it no getter can fail or panic.

use crate::error::WireError;

/// A byte range inside the header.
pub type Field = core::ops::Range<usize>;

/// The first four bytes of every frame: "TNDM".
pub const MAGIC: [u8; 4] = *b"TNDM";
/// The one protocol version this build speaks. Bump on any change to the layout or meaning of
/// any field; a peer with another version is refused at once (no negotiation).
pub const PROTOCOL_VERSION: u16 = 2;

pub mod field {
    use super::Field;
    pub const MAGIC: Field = 0..4;
    pub const VERSION: Field = 4..6;
    pub const MSG_TYPE: usize = 6;
    pub const FLAGS: usize = 7;
    pub const HEADER_LEN: Field = 8..10;
    /// Must be zero: a later version can give it meaning only together with a version bump.
    pub const RESERVED: Field = 10..12;
    pub const PAYLOAD_LEN: Field = 12..16;
    pub const EPOCH: Field = 16..24;
    pub const PAYLOAD_CRC: Field = 24..28;
    pub const HEADER_CRC: Field = 28..32;
    /// The message body starts here and ends at `header_len`.
    pub const BODY: usize = 32;
}

/// Length of the fixed part of the header.
pub const FIXED_HEADER_LEN: usize = field::BODY;

/// Most regions one `Uncertain` or `SyncOffer` frame may list. A longer list is split by the
/// sender (one region list of 4096 entries is 32 KiB; the header length field is 16 bits).
pub const REGIONS_PER_FRAME_MAX: usize = 4096;
/// Most `bitmap_base` entries in a `ReplicaMeta` (one per partner; clusters have 2-3 nodes).
pub const BITMAP_BASES_MAX: usize = 16;
/// Most `history` generations in a `ReplicaMeta` (the engine keeps 4).
pub const HISTORY_MAX: usize = 16;

/// Largest encoded `ReplicaMeta`: current, epoch, version (3 × 8), was_sequencer (1), two
/// counts (2 × 1), the lists.
pub const META_LEN_MAX: usize = 8 * 3 + 1 + 2 + BITMAP_BASES_MAX * 9 + HISTORY_MAX * 8;
/// Largest body of any message: `SyncOffer` (meta, region count, regions, size).
pub const BODY_LEN_MAX: usize = META_LEN_MAX + 4 + REGIONS_PER_FRAME_MAX * 8 + 8;
/// Largest header (fixed part plus body) any frame may announce.
pub const HEADER_LEN_MAX: usize = FIXED_HEADER_LEN + BODY_LEN_MAX;
const _: () = assert!(HEADER_LEN_MAX <= u16::MAX as usize);

/// Default largest payload: 8 MiB, the largest host write we accept (MaxBurstLength-sized
/// writes are mirrored whole) and twice a 64 KiB region copy with room to spare.
pub const PAYLOAD_LEN_MAX_DEFAULT_BYTES: u32 = 8 * 1024 * 1024;
/// No configuration may raise the payload limit past this: the decoder buffers one whole
/// frame, so this bounds its memory per link.
pub const PAYLOAD_LEN_CEILING_BYTES: u32 = 64 * 1024 * 1024;

/// What a receiver is willing to accept from a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    payload_len_max_bytes: u32,
}

impl Limits {
    /// Limits with the given largest payload; `None` past [`PAYLOAD_LEN_CEILING_BYTES`].
    pub fn new(payload_len_max_bytes: u32) -> Option<Limits> {
        (payload_len_max_bytes <= PAYLOAD_LEN_CEILING_BYTES).then_some(Limits {
            payload_len_max_bytes,
        })
    }

    pub fn payload_len_max_bytes(&self) -> u32 {
        self.payload_len_max_bytes
    }

    /// Largest whole frame: the largest header plus the largest payload.
    pub fn frame_len_max_bytes(&self) -> usize {
        HEADER_LEN_MAX + self.payload_len_max_bytes as usize
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            payload_len_max_bytes: PAYLOAD_LEN_MAX_DEFAULT_BYTES,
        }
    }
}

/// CRC32C of a payload. The data plane computes it once, where the host's data enters, and
/// carries it with the buffer to [`crate::encode_header`]; the receiver checks it in
/// [`crate::decode`] before the data can reach its disk.
pub fn payload_crc32c(payload: &[u8]) -> u32 {
    crc32c::crc32c(payload)
}

/// CRC32C of two payloads sent back to back (compare-and-write: verify then data), from
/// their own CRCs, so neither buffer has to be read again.
pub fn payload_crc32c_concat(first_crc: u32, second_crc: u32, second_len_bytes: usize) -> u32 {
    crc32c::crc32c_combine(first_crc, second_crc, second_len_bytes)
}

/// A zero-copy view over a frame (or at least its fixed header).
#[derive(Debug, Clone)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

fn le16(b: &[u8], f: Field) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[f]);
    u16::from_le_bytes(a)
}
fn le32(b: &[u8], f: Field) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[f]);
    u32::from_le_bytes(a)
}
fn le64(b: &[u8], f: Field) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[f]);
    u64::from_le_bytes(a)
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// A view without any check; accessors may panic on a short buffer. Prefer `new_checked`.
    pub const fn new_unchecked(buffer: T) -> Frame<T> {
        Frame { buffer }
    }

    /// A view over a buffer that holds at least the fixed header; after this no getter panics.
    pub fn new_checked(buffer: T) -> Result<Frame<T>, WireError> {
        let f = Frame::new_unchecked(buffer);
        f.check_len()?;
        Ok(f)
    }

    pub fn check_len(&self) -> Result<(), WireError> {
        let len = self.buffer.as_ref().len();
        if len < FIXED_HEADER_LEN {
            return Err(WireError::Truncated {
                need_bytes: FIXED_HEADER_LEN,
                have_bytes: len,
            });
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn magic(&self) -> [u8; 4] {
        let mut m = [0u8; 4];
        m.copy_from_slice(&self.buffer.as_ref()[field::MAGIC]);
        m
    }
    pub fn version(&self) -> u16 {
        le16(self.buffer.as_ref(), field::VERSION)
    }
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::MSG_TYPE]
    }
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }
    pub fn header_len(&self) -> u16 {
        le16(self.buffer.as_ref(), field::HEADER_LEN)
    }
    pub fn reserved(&self) -> u16 {
        le16(self.buffer.as_ref(), field::RESERVED)
    }
    pub fn payload_len(&self) -> u32 {
        le32(self.buffer.as_ref(), field::PAYLOAD_LEN)
    }
    pub fn epoch(&self) -> u64 {
        le64(self.buffer.as_ref(), field::EPOCH)
    }
    pub fn payload_crc(&self) -> u32 {
        le32(self.buffer.as_ref(), field::PAYLOAD_CRC)
    }
    pub fn header_crc(&self) -> u32 {
        le32(self.buffer.as_ref(), field::HEADER_CRC)
    }

    /// Whole frame length the header announces (header plus payload), without overflow.
    pub fn total_len(&self) -> usize {
        usize::from(self.header_len()) + self.payload_len() as usize
    }

    /// CRC32C the header should carry: bytes `0..28`, then the body. `None` while the buffer
    /// does not yet hold the whole announced header.
    pub fn compute_header_crc(&self) -> Option<u32> {
        let b = self.buffer.as_ref();
        let hl = usize::from(self.header_len());
        if hl < FIXED_HEADER_LEN || b.len() < hl {
            return None;
        }
        let crc = crc32c::crc32c(&b[..field::HEADER_CRC.start]);
        Some(crc32c::crc32c_append(crc, &b[field::BODY..hl]))
    }

    /// The message body, if the buffer holds it (`32..header_len`).
    pub fn body(&self) -> Option<&[u8]> {
        let hl = usize::from(self.header_len());
        self.buffer.as_ref().get(FIXED_HEADER_LEN..hl)
    }

    /// The payload, if the buffer holds all of it.
    pub fn payload(&self) -> Option<&[u8]> {
        let hl = usize::from(self.header_len());
        self.buffer.as_ref().get(hl..self.total_len())
    }

    /// Checks everything the fixed header alone can tell, in the order a receiver must:
    /// magic and version first (a stranger or another version must not be parsed further),
    /// then lengths against `limits`. The body and payload need not be present yet.
    pub fn check_fixed(&self, limits: &Limits) -> Result<(), WireError> {
        self.check_len()?;
        if self.magic() != MAGIC {
            return Err(WireError::BadMagic { got: self.magic() });
        }
        if self.version() != PROTOCOL_VERSION {
            return Err(WireError::UnsupportedVersion {
                got: self.version(),
                supported: PROTOCOL_VERSION,
            });
        }
        if self.reserved() != 0 {
            return Err(WireError::ReservedNotZero);
        }
        let hl = usize::from(self.header_len());
        if !(FIXED_HEADER_LEN..=HEADER_LEN_MAX).contains(&hl) {
            return Err(WireError::HeaderLen { header_len: hl });
        }
        if self.payload_len() > limits.payload_len_max_bytes() {
            return Err(WireError::PayloadTooLarge {
                payload_len_bytes: self.payload_len(),
                max_bytes: limits.payload_len_max_bytes(),
            });
        }
        Ok(())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    pub fn set_magic(&mut self) {
        self.buffer.as_mut()[field::MAGIC].copy_from_slice(&MAGIC);
    }
    pub fn set_version(&mut self, v: u16) {
        self.buffer.as_mut()[field::VERSION].copy_from_slice(&v.to_le_bytes());
    }
    pub fn set_msg_type(&mut self, t: u8) {
        self.buffer.as_mut()[field::MSG_TYPE] = t;
    }
    pub fn set_flags(&mut self, f: u8) {
        self.buffer.as_mut()[field::FLAGS] = f;
    }
    pub fn set_header_len(&mut self, l: u16) {
        self.buffer.as_mut()[field::HEADER_LEN].copy_from_slice(&l.to_le_bytes());
    }
    pub fn set_reserved(&mut self, r: u16) {
        self.buffer.as_mut()[field::RESERVED].copy_from_slice(&r.to_le_bytes());
    }
    pub fn set_payload_len(&mut self, l: u32) {
        self.buffer.as_mut()[field::PAYLOAD_LEN].copy_from_slice(&l.to_le_bytes());
    }
    pub fn set_epoch(&mut self, e: u64) {
        self.buffer.as_mut()[field::EPOCH].copy_from_slice(&e.to_le_bytes());
    }
    pub fn set_payload_crc(&mut self, c: u32) {
        self.buffer.as_mut()[field::PAYLOAD_CRC].copy_from_slice(&c.to_le_bytes());
    }
    pub fn set_header_crc(&mut self, c: u32) {
        self.buffer.as_mut()[field::HEADER_CRC].copy_from_slice(&c.to_le_bytes());
    }
    /// Computes and stores the header CRC; the body must already be in place.
    pub fn fill_header_crc(&mut self) {
        if let Some(crc) = self.compute_header_crc() {
            self.set_header_crc(crc);
        }
    }
}

/// The fixed header as plain values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderRepr {
    pub msg_type: u8,
    pub flags: u8,
    pub header_len: u16,
    pub payload_len: u32,
    pub epoch: u64,
    pub payload_crc: u32,
}

impl HeaderRepr {
    /// Parses and checks the fixed header and the header CRC (the body must be present).
    /// Never panics, whatever the bytes.
    pub fn parse<T: AsRef<[u8]>>(frame: &Frame<T>, limits: &Limits) -> Result<Self, WireError> {
        frame.check_fixed(limits)?;
        let hl = usize::from(frame.header_len());
        let Some(computed) = frame.compute_header_crc() else {
            return Err(WireError::Truncated {
                need_bytes: hl,
                have_bytes: frame.buffer.as_ref().len(),
            });
        };
        if computed != frame.header_crc() {
            return Err(WireError::HeaderCrc {
                expected: frame.header_crc(),
                computed,
            });
        }
        Ok(HeaderRepr {
            msg_type: frame.msg_type(),
            flags: frame.flags(),
            header_len: frame.header_len(),
            payload_len: frame.payload_len(),
            epoch: frame.epoch(),
            payload_crc: frame.payload_crc(),
        })
    }

    pub fn buffer_len(&self) -> usize {
        FIXED_HEADER_LEN
    }

    /// Writes the fixed header except the header CRC (the body comes after; see
    /// [`Frame::fill_header_crc`]).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut Frame<T>) {
        frame.set_magic();
        frame.set_version(PROTOCOL_VERSION);
        frame.set_msg_type(self.msg_type);
        frame.set_flags(self.flags);
        frame.set_header_len(self.header_len);
        frame.set_reserved(0);
        frame.set_payload_len(self.payload_len);
        frame.set_epoch(self.epoch);
        frame.set_payload_crc(self.payload_crc);
        frame.set_header_crc(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Commit frame (type 3) with body origin=2, n=7, epoch 5, no payload.
    const COMMIT: [u8; 41] = [
        b'T', b'N', b'D', b'M', // magic
        0x02, 0x00, // version 2
        0x03, // type Commit
        0x00, // flags
        41, 0x00, // header_len
        0x00, 0x00, // reserved
        0x00, 0x00, 0x00, 0x00, // payload_len
        0x05, 0, 0, 0, 0, 0, 0, 0, // epoch 5
        0x00, 0x00, 0x00, 0x00, // payload crc (crc32c of nothing)
        0x00, 0x00, 0x00, 0x00, // header crc, filled by `commit_bytes`
        0x02, // op origin
        0x07, 0, 0, 0, 0, 0, 0, 0, // op n
    ];

    fn commit_bytes() -> Vec<u8> {
        let mut b = COMMIT.to_vec();
        Frame::new_unchecked(&mut b[..]).fill_header_crc();
        b
    }

    #[test]
    fn deconstruct() {
        let b = commit_bytes();
        let f = Frame::new_checked(&b[..]).unwrap();
        assert_eq!(f.magic(), MAGIC);
        assert_eq!(f.version(), 2);
        assert_eq!(f.msg_type(), 3);
        assert_eq!(f.flags(), 0);
        assert_eq!(f.header_len(), 41);
        assert_eq!(f.payload_len(), 0);
        assert_eq!(f.epoch(), 5);
        assert_eq!(f.body().unwrap(), &COMMIT[32..]);
        assert_eq!(f.payload().unwrap(), &[] as &[u8]);
        let r = HeaderRepr::parse(&f, &Limits::default()).unwrap();
        assert_eq!(r.epoch, 5);
        assert_eq!(r.payload_crc, payload_crc32c(&[]));
        assert_eq!(payload_crc32c(&[]), 0);
    }

    #[test]
    fn construct() {
        let mut b = vec![0xa5u8; 41];
        let repr = HeaderRepr {
            msg_type: 3,
            flags: 0,
            header_len: 41,
            payload_len: 0,
            epoch: 5,
            payload_crc: 0,
        };
        let mut f = Frame::new_unchecked(&mut b[..]);
        repr.emit(&mut f);
        f.into_inner()[32..].copy_from_slice(&COMMIT[32..]);
        Frame::new_unchecked(&mut b[..]).fill_header_crc();
        assert_eq!(b, commit_bytes());
    }

    #[test]
    fn length_overflow() {
        let b = commit_bytes();
        // Shorter than the fixed header.
        assert_eq!(
            Frame::new_checked(&b[..31]).unwrap_err(),
            WireError::Truncated {
                need_bytes: 32,
                have_bytes: 31
            }
        );
        // Fixed header present but the body is cut: the header CRC cannot be checked.
        let f = Frame::new_checked(&b[..40]).unwrap();
        assert!(matches!(
            HeaderRepr::parse(&f, &Limits::default()),
            Err(WireError::Truncated { need_bytes: 41, .. })
        ));
        // A header length larger than any body, and a payload over the limit.
        let mut big = b.clone();
        Frame::new_unchecked(&mut big[..]).set_header_len(u16::MAX);
        assert!(matches!(
            Frame::new_unchecked(&big[..]).check_fixed(&Limits::default()),
            Err(WireError::HeaderLen { .. })
        ));
        let mut big = b.clone();
        Frame::new_unchecked(&mut big[..]).set_payload_len(u32::MAX);
        assert_eq!(
            Frame::new_unchecked(&big[..]).total_len(),
            41 + u32::MAX as usize
        );
        assert!(matches!(
            Frame::new_unchecked(&big[..]).check_fixed(&Limits::default()),
            Err(WireError::PayloadTooLarge { .. })
        ));
        // A header length shorter than the fixed part.
        let mut small = b;
        Frame::new_unchecked(&mut small[..]).set_header_len(8);
        assert!(matches!(
            Frame::new_unchecked(&small[..]).check_fixed(&Limits::default()),
            Err(WireError::HeaderLen { header_len: 8 })
        ));
        assert_eq!(Frame::new_unchecked(&small[..]).body(), None);
    }

    #[test]
    fn other_versions_and_strangers_are_refused() {
        let mut b = commit_bytes();
        Frame::new_unchecked(&mut b[..]).set_version(3);
        assert_eq!(
            Frame::new_unchecked(&b[..]).check_fixed(&Limits::default()),
            Err(WireError::UnsupportedVersion {
                got: 3,
                supported: 2
            })
        );
        b[0] = b'X';
        assert!(matches!(
            Frame::new_unchecked(&b[..]).check_fixed(&Limits::default()),
            Err(WireError::BadMagic { .. })
        ));
    }

    #[test]
    fn a_flipped_bit_in_the_body_fails_the_header_crc() {
        let mut b = commit_bytes();
        b[35] ^= 0x10;
        assert!(matches!(
            HeaderRepr::parse(&Frame::new_unchecked(&b[..]), &Limits::default()),
            Err(WireError::HeaderCrc { .. })
        ));
    }

    #[test]
    fn limits_have_a_ceiling() {
        assert!(Limits::new(PAYLOAD_LEN_CEILING_BYTES + 1).is_none());
        let l = Limits::new(4096).unwrap();
        assert_eq!(l.frame_len_max_bytes(), HEADER_LEN_MAX + 4096);
    }
}
