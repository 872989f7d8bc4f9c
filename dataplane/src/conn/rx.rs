//! Resumable PDU framing over a byte stream.
//!
//! Bytes from the socket land in one receive buffer; [`RxBuffer::next_frame`] cuts complete
//! PDUs out of it (BHS, AHS, header digest, data, padding, data digest) without copying and
//! returns `None` when a PDU is still incomplete, so a short read simply continues at the
//! next poll. Many PDUs are parsed per socket read.

use std::ops::Range;
use tandem_iscsi::digest::crc32c;
use tandem_iscsi::wire::{pad4, Bhs, BHS_LEN};

/// Largest AHS the BHS can announce (TotalAHSLength is one byte of 4-byte words).
const AHS_LEN_MAX: usize = 255 * 4;

#[derive(Clone, Copy, Debug)]
pub struct FrameLimits {
    pub header_digest: bool,
    pub data_digest: bool,
    /// Largest data segment we accept (our declared MaxRecvDataSegmentLength).
    pub max_data_len: usize,
}

/// One complete PDU in the receive buffer.
pub struct Frame {
    pub bhs: [u8; BHS_LEN],
    /// The data segment (without padding) as a range of [`RxBuffer::bytes`].
    pub data: Range<usize>,
}

#[derive(Debug)]
pub enum FrameEvent {
    Pdu(Frame),
    /// The data segment is larger than we allow; the header is given so the caller can
    /// reject it, and its data is skipped.
    Oversize {
        bhs: [u8; BHS_LEN],
        data_len: usize,
    },
    /// The header digest does not match: the stream cannot be trusted any more.
    HeaderDigestError,
    /// The data digest does not match; the PDU is dropped.
    DataDigestError {
        bhs: [u8; BHS_LEN],
    },
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Frame(op={:#x}, data={:?})",
            self.bhs[0] & 0x3f,
            self.data
        )
    }
}

pub struct RxBuffer {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes of an oversize data segment still to be thrown away.
    skip: usize,
}

impl RxBuffer {
    pub fn new(capacity: usize) -> RxBuffer {
        RxBuffer {
            buf: vec![0; capacity],
            start: 0,
            end: 0,
            skip: 0,
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Makes room for a PDU of up to `frame_max` bytes and returns the free tail to read into.
    pub fn free_space(&mut self, frame_max: usize) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.buf.len() - self.start < frame_max {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < frame_max {
            self.buf.resize(frame_max, 0);
        }
        &mut self.buf[self.end..]
    }

    pub fn advance_end(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
        // Throw away skipped bytes as soon as they arrive.
        let dropped = self.skip.min(self.end - self.start);
        self.start += dropped;
        self.skip -= dropped;
    }

    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// The largest single PDU the buffer must hold for these limits.
    pub fn frame_max(limits: &FrameLimits) -> usize {
        BHS_LEN + AHS_LEN_MAX + 4 + pad4(limits.max_data_len) + 4
    }

    pub fn next_frame(&mut self, limits: &FrameLimits) -> Option<FrameEvent> {
        if self.skip > 0 {
            return None;
        }
        let avail = &self.buf[self.start..self.end];
        if avail.len() < BHS_LEN {
            return None;
        }
        let view = Bhs::new_unchecked(&avail[..BHS_LEN]);
        let ahs_len = view.total_ahs_len();
        let data_len = view.data_segment_len() as usize;
        let mut bhs = [0u8; BHS_LEN];
        bhs.copy_from_slice(&avail[..BHS_LEN]);
        let hdr_digest_len = if limits.header_digest { 4 } else { 0 };
        let header_len = BHS_LEN + ahs_len + hdr_digest_len;
        let data_digest_len = if limits.data_digest && data_len > 0 {
            4
        } else {
            0
        };
        let total = header_len + pad4(data_len) + data_digest_len;
        if data_len > limits.max_data_len {
            if avail.len() < header_len {
                return None;
            }
            if limits.header_digest && !header_digest_ok(&avail[..header_len]) {
                return Some(FrameEvent::HeaderDigestError);
            }
            let have = avail.len();
            let drop_now = have.min(total);
            self.start += drop_now;
            self.skip = total - drop_now;
            return Some(FrameEvent::Oversize { bhs, data_len });
        }
        if avail.len() < total {
            return None;
        }
        if limits.header_digest && !header_digest_ok(&avail[..header_len]) {
            return Some(FrameEvent::HeaderDigestError);
        }
        let data_start = self.start + header_len;
        if data_digest_len == 4 {
            let padded = pad4(data_len);
            let digest_at = data_start + padded;
            let expect = u32::from_le_bytes([
                self.buf[digest_at],
                self.buf[digest_at + 1],
                self.buf[digest_at + 2],
                self.buf[digest_at + 3],
            ]);
            if crc32c(&self.buf[data_start..data_start + padded]) != expect {
                self.start += total;
                return Some(FrameEvent::DataDigestError { bhs });
            }
        }
        self.start += total;
        Some(FrameEvent::Pdu(Frame {
            bhs,
            data: data_start..data_start + data_len,
        }))
    }
}

/// A PDU whose header is complete but whose data is still arriving.
#[derive(Debug, Clone, Copy)]
pub struct PartialPdu {
    pub bhs: [u8; BHS_LEN],
    header_len: usize,
    pub data_len: usize,
}

impl RxBuffer {
    /// The next PDU if its header is here but its data is not complete yet (and there is no
    /// data digest to check), so the caller can receive the rest straight into its own
    /// buffer instead of through this one.
    pub fn peek_partial(&self, limits: &FrameLimits) -> Option<PartialPdu> {
        if self.skip > 0 || limits.data_digest {
            return None;
        }
        let avail = &self.buf[self.start..self.end];
        if avail.len() < BHS_LEN {
            return None;
        }
        let view = Bhs::new_unchecked(&avail[..BHS_LEN]);
        let data_len = view.data_segment_len() as usize;
        let header_len = BHS_LEN + view.total_ahs_len() + if limits.header_digest { 4 } else { 0 };
        if data_len > limits.max_data_len
            || avail.len() < header_len
            || avail.len() >= header_len + pad4(data_len)
        {
            return None;
        }
        if limits.header_digest && !header_digest_ok(&avail[..header_len]) {
            return None;
        }
        let mut bhs = [0u8; BHS_LEN];
        bhs.copy_from_slice(&avail[..BHS_LEN]);
        Some(PartialPdu {
            bhs,
            header_len,
            data_len,
        })
    }

    /// Takes the partial PDU's header and the data bytes already buffered; returns their
    /// range in [`RxBuffer::bytes`] (valid until the next read). The caller receives the
    /// remaining `data_len - range.len()` bytes itself, then calls `skip` for the padding.
    pub fn take_partial(&mut self, p: &PartialPdu) -> Range<usize> {
        let data_start = self.start + p.header_len;
        let data_end = self.end.min(data_start + p.data_len);
        self.start = data_end.max(data_start);
        data_start..self.start
    }

    /// Drops the next `n` bytes of the stream, buffered or not yet received.
    pub fn skip(&mut self, n: usize) {
        let now = n.min(self.end - self.start);
        self.start += now;
        self.skip += n - now;
    }
}

fn header_digest_ok(header_with_digest: &[u8]) -> bool {
    let n = header_with_digest.len() - 4;
    let d = &header_with_digest[n..];
    crc32c(&header_with_digest[..n]) == u32::from_le_bytes([d[0], d[1], d[2], d[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_pdu_hands_out_header_and_buffered_data() {
        let l = limits();
        let mut rx = RxBuffer::new(1024);
        let mut stream = pdu(0x05, &[9u8; 6000]);
        stream.extend(pdu(0x00, b"next"));
        feed(&mut rx, &stream[..100]);
        let p = rx.peek_partial(&l).expect("header complete, data not");
        assert_eq!(p.data_len, 6000);
        let r = rx.take_partial(&p);
        assert_eq!(r.len(), 100 - BHS_LEN);
        // The caller receives the remaining data itself, then drops the padding.
        rx.skip(pad4(6000) - 6000);
        let rest = &stream[BHS_LEN + pad4(6000)..];
        feed(&mut rx, rest);
        assert!(matches!(rx.next_frame(&l), Some(FrameEvent::Pdu(f)) if f.bhs[0] == 0));
    }

    fn limits() -> FrameLimits {
        FrameLimits {
            header_digest: false,
            data_digest: false,
            max_data_len: 8192,
        }
    }

    fn pdu(opcode: u8, data: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; BHS_LEN];
        v[0] = opcode;
        let n = data.len() as u32;
        v[5] = (n >> 16) as u8;
        v[6] = (n >> 8) as u8;
        v[7] = n as u8;
        v.extend_from_slice(data);
        v.resize(BHS_LEN + pad4(data.len()), 0);
        v
    }

    fn feed(rx: &mut RxBuffer, bytes: &[u8]) {
        let l = limits();
        let space = rx.free_space(RxBuffer::frame_max(&l));
        space[..bytes.len()].copy_from_slice(bytes);
        rx.advance_end(bytes.len());
    }

    #[test]
    fn frames_split_across_reads_and_many_per_read() {
        let mut rx = RxBuffer::new(1024);
        let mut stream = pdu(0x00, b"hello");
        stream.extend(pdu(0x01, b""));
        let (a, b) = stream.split_at(30);
        feed(&mut rx, a);
        assert!(rx.next_frame(&limits()).is_none());
        feed(&mut rx, b);
        match rx.next_frame(&limits()) {
            Some(FrameEvent::Pdu(f)) => assert_eq!(&rx.bytes()[f.data], b"hello"),
            other => panic!("unexpected {other:?}"),
        }
        match rx.next_frame(&limits()) {
            Some(FrameEvent::Pdu(f)) => {
                assert_eq!(f.bhs[0], 0x01);
                assert!(f.data.is_empty())
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(rx.next_frame(&limits()).is_none());
    }

    #[test]
    fn oversize_data_is_skipped_and_stream_resyncs() {
        let mut rx = RxBuffer::new(1024);
        let big = vec![7u8; 9000];
        let mut stream = pdu(0x05, &big);
        stream.extend(pdu(0x00, b"ok"));
        let mut events = Vec::new();
        for chunk in stream.chunks(700) {
            feed(&mut rx, chunk);
            while let Some(ev) = rx.next_frame(&limits()) {
                events.push(ev);
            }
        }
        assert!(matches!(
            events[0],
            FrameEvent::Oversize { data_len: 9000, .. }
        ));
        assert!(matches!(&events[1], FrameEvent::Pdu(f) if f.bhs[0] == 0));
        assert_eq!(events.len(), 2);
    }

    #[test]
    fn bad_data_digest_is_reported() {
        let l = FrameLimits {
            header_digest: true,
            data_digest: true,
            max_data_len: 8192,
        };
        let mut v = pdu(0x00, b"");
        v.truncate(BHS_LEN);
        v[7] = 4;
        let hd = crc32c(&v);
        v.extend_from_slice(&hd.to_le_bytes());
        v.extend_from_slice(b"abcd");
        v.extend_from_slice(&0xdeadbeefu32.to_le_bytes());
        let mut rx = RxBuffer::new(1024);
        let space = rx.free_space(RxBuffer::frame_max(&l));
        space[..v.len()].copy_from_slice(&v);
        rx.advance_end(v.len());
        assert!(matches!(
            rx.next_frame(&l),
            Some(FrameEvent::DataDigestError { .. })
        ));
    }
}
