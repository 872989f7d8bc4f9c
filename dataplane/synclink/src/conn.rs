//! One TCP connection of a sync link: the socket, its frame decoder and handshake gate, and
//! its output (control frames, then the session's replication frames from a cursor),
//! written with `writev` straight from the host's buffers.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Instant;

use tandem_mirror::{FrameDecoder, LinkSession, Role, SharedPayload};

/// Most buffers handed to one `writev` (well under IOV_MAX).
const IOV_MAX_PER_WRITE: usize = 64;
/// Most bytes offered to one `writev`; the kernel takes what fits in the socket buffer.
const BYTES_MAX_PER_WRITE: usize = 4 * 1024 * 1024;
/// Most bytes read from one connection per poll, so one busy link cannot starve the others.
pub(crate) const READ_BUDGET_BYTES: usize = 8 * 1024 * 1024;

/// One frame ready to go: header and body encoded once, the payload shared with the caller
/// (not copied). Cloning is cheap (reference counts).
#[derive(Clone)]
pub(crate) struct OutFrame {
    pub header: Arc<[u8]>,
    pub parts: [Option<SharedPayload>; 2],
}

impl OutFrame {
    pub fn control(bytes: Vec<u8>) -> OutFrame {
        OutFrame {
            header: Arc::from(bytes),
            parts: [None, None],
        }
    }

    pub fn len(&self) -> usize {
        self.header.len()
            + self
                .parts
                .iter()
                .flatten()
                .map(|p| p.as_slice().len())
                .sum::<usize>()
    }

    /// Appends this frame's buffers, without the first `skip` bytes, to `iov`.
    fn push_slices<'a>(&'a self, mut skip: usize, iov: &mut Vec<IoSlice<'a>>) {
        let bufs = std::iter::once(&self.header[..])
            .chain(self.parts.iter().flatten().map(|p| p.as_slice()));
        for b in bufs {
            if skip >= b.len() {
                skip -= b.len();
                continue;
            }
            iov.push(IoSlice::new(&b[skip..]));
            skip = 0;
        }
    }
}

/// The replication frames of the session not yet acknowledged by the peer, oldest first.
/// `base` is the sequence number of the front; sequence numbers start at 0 per session.
#[derive(Default)]
pub(crate) struct Unacked {
    pub base: u64,
    pub frames: VecDeque<OutFrame>,
    pub bytes: usize,
}

impl Unacked {
    /// Sequence number the next message will get.
    pub fn next_seq(&self) -> u64 {
        self.base + self.frames.len() as u64
    }

    pub fn get(&self, seq: u64) -> Option<&OutFrame> {
        let i = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        self.frames.get(i)
    }

    /// The peer has delivered everything below `next`.
    pub fn ack(&mut self, next: u64) {
        while self.base < next {
            let Some(f) = self.frames.pop_front() else {
                break;
            };
            self.bytes -= f.len();
            self.base += 1;
        }
    }

    /// A new peer incarnation: nothing queued for the old one is sent, numbering restarts.
    pub fn reset(&mut self) {
        *self = Unacked::default();
    }
}

pub(crate) enum ReadOutcome {
    /// Bytes arrived (or the read was interrupted): read again.
    Data,
    /// Nothing more now (would block, or the budget is spent).
    Stop,
    /// The decoder's buffer is full (it then holds a whole frame): take frames out first.
    Full,
    /// The peer closed the connection.
    Eof,
}

pub(crate) enum Phase {
    /// Non-blocking connect in progress (dialer only).
    Connecting,
    /// Hello/Proof exchange running.
    Handshaking,
    /// Authenticated and accepted into the session.
    Up,
}

pub(crate) struct Conn {
    pub id: u64,
    pub link: usize,
    pub role: Role,
    pub stream: TcpStream,
    pub peer_addr: SocketAddr,
    pub phase: Phase,
    pub session: LinkSession,
    pub decoder: FrameDecoder,
    /// The peer's boot id, once authenticated.
    pub peer_boot: Option<u64>,
    /// Control frames (handshake, Ack, Start); they go before any replication frame.
    pub ctl: VecDeque<OutFrame>,
    /// A frame of which only the first `.1` bytes have been written.
    pub partial: Option<(OutFrame, usize)>,
    /// While this connection carries the session's replication frames: the sequence number
    /// of the next one to write.
    pub data_next: Option<u64>,
    /// Sequence number of the next replication frame to arrive (set by the peer's Start).
    pub rx_seq: Option<u64>,
    /// Last Ack value queued on this connection.
    pub ack_sent: Option<u64>,
    /// Replication frames arrived in this poll: acknowledge them.
    pub ack_due: bool,
    pub last_rx: Instant,
    pub last_tx: Instant,
    /// When the connection was opened (handshake deadline).
    pub opened: Instant,
}

impl Conn {
    pub fn is_up(&self) -> bool {
        matches!(self.phase, Phase::Up)
    }

    /// Output is waiting for the socket to become writable.
    pub fn wants_write(&self, unacked: &Unacked) -> bool {
        matches!(self.phase, Phase::Connecting)
            || self.partial.is_some()
            || !self.ctl.is_empty()
            || self.data_next.is_some_and(|d| d < unacked.next_seq())
    }

    /// Writes as much queued output as the socket takes. `Ok` also when it would block.
    pub fn flush(
        &mut self,
        unacked: &Unacked,
        now: Instant,
        bytes_sent: &mut u64,
    ) -> io::Result<()> {
        if matches!(self.phase, Phase::Connecting) {
            return Ok(());
        }
        loop {
            // Frames acknowledged (through another link) before this one wrote them are
            // gone: restart the numbering at the oldest frame still kept. The receiver has
            // delivered everything before it, so the Start leaves no gap.
            if let Some(d) = self.data_next {
                if d < unacked.base {
                    let mut b = Vec::new();
                    tandem_mirror::LinkMsg::Start {
                        first_seq: unacked.base,
                    }
                    .encode(&mut b)
                    .map_err(|e| io::Error::other(e.to_string()))?;
                    self.ctl.push_back(OutFrame::control(b));
                    self.data_next = Some(unacked.base);
                }
            }
            let written = {
                let mut iov: Vec<IoSlice<'_>> = Vec::with_capacity(IOV_MAX_PER_WRITE);
                let mut offered = 0usize;
                if let Some((f, off)) = &self.partial {
                    f.push_slices(*off, &mut iov);
                    offered += f.len() - off;
                }
                let mut all_ctl = true;
                for f in &self.ctl {
                    if iov.len() >= IOV_MAX_PER_WRITE - 3 || offered >= BYTES_MAX_PER_WRITE {
                        all_ctl = false;
                        break;
                    }
                    f.push_slices(0, &mut iov);
                    offered += f.len();
                }
                // Replication frames only after every control frame (`consume` relies on
                // this order, and a Start must precede the frames it numbers).
                if let (true, Some(mut seq)) = (all_ctl, self.data_next) {
                    while iov.len() < IOV_MAX_PER_WRITE - 3 && offered < BYTES_MAX_PER_WRITE {
                        let Some(f) = unacked.get(seq) else { break };
                        f.push_slices(0, &mut iov);
                        offered += f.len();
                        seq += 1;
                    }
                }
                if iov.is_empty() {
                    return Ok(());
                }
                match self.stream.write_vectored(&iov) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            *bytes_sent += written as u64;
            self.last_tx = now;
            self.consume(written, unacked);
        }
    }

    /// `n` bytes went out: drop what was written whole, remember a frame cut in the middle.
    fn consume(&mut self, mut n: usize, unacked: &Unacked) {
        if let Some((f, off)) = &mut self.partial {
            let rest = f.len() - *off;
            if n < rest {
                *off += n;
                return;
            }
            n -= rest;
            self.partial = None;
        }
        while n > 0 {
            let Some(len) = self.ctl.front().map(OutFrame::len) else {
                break;
            };
            let Some(f) = self.ctl.pop_front() else { break };
            if n < len {
                self.partial = Some((f, n));
                return;
            }
            n -= len;
        }
        while n > 0 {
            let Some(seq) = self.data_next else { return };
            let Some(f) = unacked.get(seq) else { return };
            let len = f.len();
            self.data_next = Some(seq + 1);
            if n < len {
                // The frame stays alive here even if an ack frees it from the window.
                self.partial = Some((f.clone(), n));
                return;
            }
            n -= len;
        }
    }

    /// One read into the decoder's free space (never more than `budget`).
    pub fn read_some(&mut self, budget: &mut usize) -> io::Result<ReadOutcome> {
        if *budget == 0 {
            return Ok(ReadOutcome::Stop);
        }
        let space = self.decoder.free_space();
        if space.is_empty() {
            return Ok(ReadOutcome::Full);
        }
        let want = space.len().min(*budget);
        match self.stream.read(&mut space[..want]) {
            Ok(0) => Ok(ReadOutcome::Eof),
            Ok(n) => {
                self.decoder.advance(n);
                *budget -= n;
                Ok(ReadOutcome::Data)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(ReadOutcome::Stop),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(ReadOutcome::Data),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(header_len: usize, payload_len: usize) -> OutFrame {
        OutFrame {
            header: vec![1u8; header_len].into(),
            parts: [
                (payload_len > 0).then(|| SharedPayload::from_host(&vec![2u8; payload_len])),
                None,
            ],
        }
    }

    #[test]
    fn the_window_frees_in_order_and_counts_bytes() {
        let mut u = Unacked::default();
        for i in 0..5 {
            let f = frame(40, i * 100);
            u.bytes += f.len();
            u.frames.push_back(f);
        }
        assert_eq!(u.next_seq(), 5);
        assert_eq!(u.bytes, 5 * 40 + 1000);
        u.ack(2);
        assert_eq!((u.base, u.frames.len(), u.bytes), (2, 3, 3 * 40 + 900));
        assert!(u.get(1).is_none());
        assert_eq!(u.get(4).map(OutFrame::len), Some(440));
        assert!(u.get(5).is_none());
        u.ack(1); // stale: nothing happens
        assert_eq!(u.base, 2);
        u.ack(9); // past the end: stops at the end (the caller refuses such acks)
        assert_eq!((u.base, u.bytes), (5, 0));
        u.reset();
        assert_eq!(u.next_seq(), 0);
    }

    #[test]
    fn slices_skip_what_was_written() {
        let f = OutFrame {
            header: vec![1u8; 4].into(),
            parts: [
                Some(SharedPayload::from_host(&[2u8; 3])),
                Some(SharedPayload::from_host(&[3u8; 2])),
            ],
        };
        for skip in 0..f.len() {
            let mut iov = Vec::new();
            f.push_slices(skip, &mut iov);
            let bytes: Vec<u8> = iov.iter().flat_map(|s| s.iter().copied()).collect();
            assert_eq!(bytes, [1, 1, 1, 1, 2, 2, 2, 3, 3][skip..]);
        }
    }
}
