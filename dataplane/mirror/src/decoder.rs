//! Cutting frames out of a byte stream that arrives in arbitrary pieces.
//!
//! Invariants:
//! * `start <= end <= buf.len() <= limits.frame_len_max_bytes()`: the decoder never holds
//!   more than one largest frame, whatever the peer sends.
//! * The fixed header is checked (magic, version, lengths) as soon as its 32 bytes are in,
//!   and the header CRC as soon as the body is in, so a peer cannot make us wait for (or
//!   buffer) a payload announced by a header we would refuse.
//! * After any error the decoder is failed for good: the stream is out of step and the link
//!   must be closed. Unlike the iSCSI receive path there is no resync after an oversize
//!   frame, because the peer is our own software and an oversize frame means a bug or an
//!   attack.

use crate::error::WireError;
use crate::frame::{Frame, Limits, FIXED_HEADER_LEN};

/// Bytes the buffer grows by when the caller reads straight into it; a read is never
/// larger than one largest frame in total.
const READ_CHUNK_BYTES: usize = 64 * 1024;

pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    limits: Limits,
    failed: bool,
}

impl FrameDecoder {
    pub fn new(limits: Limits) -> FrameDecoder {
        FrameDecoder {
            buf: Vec::new(),
            start: 0,
            end: 0,
            limits,
            failed: false,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Bytes received but not yet handed out as a frame.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Moves the unread bytes to the front so the free tail is as long as it can be.
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    fn room_max(&self) -> usize {
        self.limits.frame_len_max_bytes()
    }

    /// Copies as much of `input` as the bound allows and returns how many bytes it took.
    /// Less than all of it means: take frames out with [`Self::next_frame`], then feed the
    /// rest. A full buffer always holds a complete frame (or an error), so this never stalls.
    pub fn feed(&mut self, input: &[u8]) -> usize {
        if self.failed {
            return 0;
        }
        self.compact();
        let take = input.len().min(self.room_max() - self.end);
        if self.buf.len() < self.end + take {
            self.buf.resize(self.end + take, 0);
        }
        self.buf[self.end..self.end + take].copy_from_slice(&input[..take]);
        self.end += take;
        take
    }

    /// The free tail to read the socket into directly (no copy); report what was read with
    /// [`Self::advance`]. Empty when the buffer is full or the decoder failed.
    pub fn free_space(&mut self) -> &mut [u8] {
        if self.failed {
            return &mut [];
        }
        self.compact();
        let want = (self.end + READ_CHUNK_BYTES).min(self.room_max());
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        &mut self.buf[self.end..]
    }

    /// `n` bytes were written into [`Self::free_space`].
    pub fn advance(&mut self, n: usize) {
        assert!(
            self.end + n <= self.buf.len(),
            "advance past the free space"
        );
        self.end += n;
    }

    fn fail(&mut self, e: WireError) -> WireError {
        self.failed = true;
        e
    }

    /// The next complete frame (header and payload, ready for [`crate::decode_frame`]), or
    /// `None` until more bytes arrive.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, WireError> {
        if self.failed {
            return Err(WireError::DecoderFailed);
        }
        let avail = &self.buf[self.start..self.end];
        if avail.len() < FIXED_HEADER_LEN {
            return Ok(None);
        }
        let view = Frame::new_unchecked(avail);
        if let Err(e) = view.check_fixed(&self.limits) {
            return Err(self.fail(e));
        }
        let header_len = usize::from(view.header_len());
        let total = view.total_len();
        if avail.len() < header_len {
            return Ok(None);
        }
        let computed = view.compute_header_crc();
        if computed != Some(view.header_crc()) {
            let e = WireError::HeaderCrc {
                expected: view.header_crc(),
                computed: computed.unwrap_or(0),
            };
            return Err(self.fail(e));
        }
        debug_assert!(total <= self.room_max(), "check_fixed bounds the frame");
        if avail.len() < total {
            return Ok(None);
        }
        let frame_start = self.start;
        self.start += total;
        if self.start == self.end {
            // Nothing left over: the next read starts at the front without a copy. The bytes
            // handed out stay in place until the caller's borrow ends.
            self.start = 0;
            self.end = 0;
        }
        Ok(Some(&self.buf[frame_start..frame_start + total]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};
    use tandem_ha::{BlockRange, Envelope, Epoch, Msg, NodeId, OpId};

    fn mirror(n: u64, data: &[u8]) -> Vec<u8> {
        let env = Envelope {
            epoch: Epoch(3),
            msg: Msg::Mirror {
                id: OpId {
                    origin: NodeId(1),
                    n,
                },
                range: BlockRange::new(n * 8, 1),
                data,
                commit_follows: n.is_multiple_of(2),
            },
        };
        let mut out = Vec::new();
        encode(&env, &Limits::default(), &mut out).unwrap();
        out
    }

    #[test]
    fn frames_split_across_pieces_and_many_per_piece() {
        let mut stream = Vec::new();
        for n in 0..5u64 {
            stream.extend(mirror(n, &vec![n as u8; 100 + n as usize * 37]));
        }
        for piece in [1usize, 3, 31, 32, 33, 200, stream.len()] {
            let mut d = FrameDecoder::new(Limits::default());
            let mut got = Vec::new();
            for chunk in stream.chunks(piece) {
                assert_eq!(d.feed(chunk), chunk.len());
                while let Some(f) = d.next_frame().unwrap() {
                    let env = decode(f, &Limits::default()).unwrap();
                    match env.msg {
                        Msg::Mirror { id, data, .. } => got.push((id.n, data.len())),
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }
            assert_eq!(got.len(), 5, "piece size {piece}");
            assert_eq!(got[4], (4, 100 + 4 * 37));
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn reading_into_free_space_works_the_same() {
        let stream = mirror(7, &[9u8; 5000]);
        let mut d = FrameDecoder::new(Limits::default());
        let mut fed = 0;
        let mut frames = 0;
        while fed < stream.len() {
            let space = d.free_space();
            let n = space.len().min(stream.len() - fed).min(777);
            space[..n].copy_from_slice(&stream[fed..fed + n]);
            d.advance(n);
            fed += n;
            while let Some(f) = d.next_frame().unwrap() {
                decode(f, &Limits::default()).unwrap();
                frames += 1;
            }
        }
        assert_eq!(frames, 1);
    }

    #[test]
    fn oversize_payload_is_refused_before_it_is_buffered() {
        let limits = Limits::new(1024).unwrap();
        let big = mirror(1, &[0u8; 2048]);
        let mut d = FrameDecoder::new(limits);
        // Only the header arrives: the error comes without waiting for the payload.
        d.feed(&big[..FIXED_HEADER_LEN]);
        assert!(matches!(
            d.next_frame(),
            Err(WireError::PayloadTooLarge {
                payload_len_bytes: 2048,
                max_bytes: 1024
            })
        ));
        assert_eq!(d.next_frame(), Err(WireError::DecoderFailed));
        assert_eq!(d.feed(&big), 0);
        assert!(d.free_space().is_empty());
    }

    #[test]
    fn buffering_is_bounded() {
        let limits = Limits::new(64).unwrap();
        let mut d = FrameDecoder::new(limits);
        let junk = vec![0u8; limits.frame_len_max_bytes() * 2];
        assert_eq!(d.feed(&junk), limits.frame_len_max_bytes());
        assert!(matches!(d.next_frame(), Err(WireError::BadMagic { .. })));
    }

    #[test]
    fn corrupted_header_fails_the_stream() {
        let mut f = mirror(2, &[1, 2, 3]);
        f[FIXED_HEADER_LEN + 1] ^= 1; // op id byte
        let mut d = FrameDecoder::new(Limits::default());
        d.feed(&f);
        assert!(matches!(d.next_frame(), Err(WireError::HeaderCrc { .. })));
    }
}
