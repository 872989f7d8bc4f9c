//! The send queue: PDUs waiting for the socket, written with one `writev` for many PDUs.
//!
//! A PDU's data either is owned by the queue entry or stays in the task's I/O buffer (so a
//! read goes from the device buffer to the socket without a copy); such an entry names the
//! task slot, and the slot is only released after its last PDU has left.

use crate::net::Transport;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::ops::Range;
use tandem_iscsi::digest::crc32c;
use tandem_iscsi::wire::{pad4, BHS_LEN};

/// Most iovecs handed to one `writev` call.
const IOVECS_MAX: usize = 64;
/// Upper bound on queued PDUs per connection; the connection stops reading new commands
/// while the queue is this long, so a slow reader cannot make us buffer without limit.
pub const TX_QUEUE_SOFT_MAX: usize = 1024;

pub enum OutData {
    None,
    Owned(Vec<u8>),
    /// Bytes `range` of the I/O buffer of task `slot`.
    TaskBuf {
        slot: usize,
        range: Range<usize>,
    },
}

pub struct OutPdu {
    header: [u8; BHS_LEN + 4],
    header_len: usize,
    data: OutData,
    data_len: usize,
    trailer: [u8; 8],
    trailer_len: usize,
    sent: usize,
    /// Task slot to release once this PDU is completely sent.
    pub release_slot: Option<usize>,
}

impl OutPdu {
    fn total_len(&self) -> usize {
        self.header_len + self.data_len + self.trailer_len
    }
}

#[derive(Clone, Copy, Default)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

#[derive(Default)]
pub struct TxQueue {
    queue: VecDeque<OutPdu>,
    pub digests: Digests,
    /// Bytes written to the transport so far (to notice a peer that stopped reading).
    sent: u64,
}

/// Gives the queue access to task I/O buffers for `OutData::TaskBuf` entries.
pub trait TaskBuffers {
    fn task_buf(&self, slot: usize) -> &[u8];
}

impl TxQueue {
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn bytes_sent(&self) -> u64 {
        self.sent
    }

    /// Queues a PDU whose data the queue owns.
    pub fn push_owned(&mut self, bhs: [u8; BHS_LEN], data: Vec<u8>, release_slot: Option<usize>) {
        let (len, digest) = self.data_meta(&data);
        let d = if data.is_empty() {
            OutData::None
        } else {
            OutData::Owned(data)
        };
        self.push_raw(bhs, d, len, digest, release_slot);
    }

    /// Queues a PDU whose data stays in task `slot`'s I/O buffer; `bytes` are those bytes.
    pub fn push_task_data(
        &mut self,
        bhs: [u8; BHS_LEN],
        slot: usize,
        range: Range<usize>,
        bytes: &[u8],
        release_slot: Option<usize>,
    ) {
        let (len, digest) = self.data_meta(bytes);
        self.push_raw(
            bhs,
            OutData::TaskBuf { slot, range },
            len,
            digest,
            release_slot,
        );
    }

    fn data_meta(&self, bytes: &[u8]) -> (usize, Option<u32>) {
        let pad = pad4(bytes.len()) - bytes.len();
        let digest = (self.digests.data && !bytes.is_empty()).then(|| crc32c_extend(bytes, pad));
        (bytes.len(), digest)
    }

    fn push_raw(
        &mut self,
        mut bhs: [u8; BHS_LEN],
        data: OutData,
        data_len: usize,
        digest: Option<u32>,
        release_slot: Option<usize>,
    ) {
        bhs[5] = (data_len >> 16) as u8;
        bhs[6] = (data_len >> 8) as u8;
        bhs[7] = data_len as u8;
        let mut header = [0u8; BHS_LEN + 4];
        header[..BHS_LEN].copy_from_slice(&bhs);
        let mut header_len = BHS_LEN;
        if self.digests.header {
            header[BHS_LEN..].copy_from_slice(&crc32c(&bhs).to_le_bytes());
            header_len += 4;
        }
        let pad = pad4(data_len) - data_len;
        let mut trailer = [0u8; 8];
        let mut trailer_len = pad;
        if let Some(d) = digest {
            trailer[pad..pad + 4].copy_from_slice(&d.to_le_bytes());
            trailer_len += 4;
        }
        self.queue.push_back(OutPdu {
            header,
            header_len,
            data,
            data_len,
            trailer,
            trailer_len,
            sent: 0,
            release_slot,
        });
    }

    /// Writes as much as the socket takes. Returns the task slots whose last PDU has left.
    pub fn flush(
        &mut self,
        transport: &mut dyn Transport,
        bufs: &dyn TaskBuffers,
        released: &mut Vec<usize>,
    ) -> io::Result<()> {
        while !self.queue.is_empty() {
            // A fixed array, not a Vec: the send path allocates nothing.
            let mut iov: [IoSlice<'_>; IOVECS_MAX] = [IoSlice::new(&[]); IOVECS_MAX];
            let mut n_iov = 0usize;
            for pdu in self.queue.iter() {
                if n_iov + 3 > IOVECS_MAX {
                    break;
                }
                let data: &[u8] = match &pdu.data {
                    OutData::None => &[],
                    OutData::Owned(v) => &v[..],
                    OutData::TaskBuf { slot, range } => {
                        let b = bufs.task_buf(*slot);
                        b.get(range.clone()).unwrap_or(&[])
                    }
                };
                let parts: [&[u8]; 3] = [
                    &pdu.header[..pdu.header_len],
                    data,
                    &pdu.trailer[..pdu.trailer_len],
                ];
                let mut skip = pdu.sent;
                for part in parts {
                    if skip >= part.len() {
                        skip -= part.len();
                        continue;
                    }
                    iov[n_iov] = IoSlice::new(&part[skip..]);
                    n_iov += 1;
                    skip = 0;
                }
            }
            let written = match transport.send_vectored(&iov[..n_iov]) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "peer closed")),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.sent += written as u64;
            let mut left = written;
            while left > 0 {
                let Some(front) = self.queue.front_mut() else {
                    break;
                };
                let remaining = front.total_len() - front.sent;
                if left >= remaining {
                    left -= remaining;
                    if let Some(slot) = front.release_slot {
                        released.push(slot);
                    }
                    self.queue.pop_front();
                } else {
                    front.sent += left;
                    left = 0;
                }
            }
        }
        Ok(())
    }
}

/// CRC32C over `data` followed by `pad` zero bytes (the data digest covers the padding).
fn crc32c_extend(data: &[u8], pad: usize) -> u32 {
    let zeros = [0u8; 3];
    let c = crc32c::crc32c(data);
    crc32c::crc32c_append(c, &zeros[..pad])
}
