//! Kernel TCP through the reactor's io_uring (`socket_io = "uring"`): receives and sends are
//! queued on the ring the reactor enters once per pass for all its devices and sockets, so a
//! pass that reads PDUs, sends replies and submits disk I/O costs one system call, not one
//! per `recv`, `writev` and device.
//!
//! The [`Transport`] contract is kept: `recv` hands out bytes a completed RECV brought in
//! (and queues the next RECV once they are consumed); `send_vectored` copies into a staging
//! buffer and reports the bytes as taken; the staging buffer goes out as one SEND when the
//! previous one completed (short sends are resubmitted from where they stopped).
//!
//! Buffer lifetimes: a buffer moves into the ring with its SQE and comes back only with its
//! completion, so it outlives the kernel's use whatever happens to this transport. The
//! descriptor is the one thing to guard: a dropped transport first hands every queued SQE to
//! the kernel (which then holds its own reference to the socket), then asks it to cancel
//! them, and only then closes the descriptor, so a reused descriptor number can never
//! receive another connection's queued operation.

use super::Transport;
use std::io::{self, IoSlice};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, BorrowedFd};
use tandem_ffi::{AlignedBuf, RingOwner, SharedRing, UringCompletion};

/// Receive buffer: the most one RECV brings in.
const RX_BUF: usize = 64 << 10;
/// Each of the two send buffers (one in the kernel's hands, one filling).
const TX_BUF: usize = 128 << 10;

const RECV: u32 = 1;
const SEND: u32 = 2;
const CANCEL_RECV: u32 = 3;
const CANCEL_SEND: u32 = 4;

/// The receive side.
#[derive(Debug)]
enum Rx {
    /// A RECV is in the kernel's hands (with the buffer).
    InFlight,
    /// Bytes `start..end` of `buf` are waiting to be read; the next RECV is queued once they
    /// are all taken.
    Ready {
        buf: AlignedBuf,
        start: usize,
        end: usize,
    },
    /// The peer closed its side (or we shut down): `recv` returns 0.
    Eof,
}

/// The send side: at most one SEND in flight; `stage` fills meanwhile.
#[derive(Debug)]
struct Tx {
    stage: AlignedBuf,
    /// The buffer of the SEND in flight (`None`: no SEND in flight) is in the ring; this is
    /// how far it has gone and how much it holds.
    in_flight: Option<(usize, usize)>,
    /// The empty buffer, when no SEND is in flight.
    spare: Option<AlignedBuf>,
}

pub struct UringTcp {
    owner: RingOwner,
    rx: Rx,
    /// The receive buffer while no RECV is in flight and no data is waiting.
    rx_spare: Option<AlignedBuf>,
    tx: Tx,
    /// The first socket error (negative results other than retryable ones), reported by
    /// every later `recv` / `send_vectored`.
    error: Option<i32>,
    scratch: Vec<UringCompletion>,
    // Last: closed after `Drop::drop` has handed our SQEs to the kernel.
    stream: TcpStream,
}

impl UringTcp {
    /// Takes over a connected socket; queues its first RECV.
    pub fn new(stream: TcpStream, ring: &SharedRing) -> UringTcp {
        // Blocking mode: on an O_NONBLOCK socket a RECV with nothing to read completes at once
        // with EAGAIN (to be resubmitted, spinning); on a blocking one the kernel waits for
        // data inside the ring (it never blocks the reactor, which only submits).
        if let Err(e) = stream.set_nonblocking(false) {
            tracing::warn!(error = %e, "cannot make the socket blocking; receives will poll");
        }
        let mut t = UringTcp {
            owner: ring.owner(),
            rx: Rx::Eof,
            rx_spare: Some(AlignedBuf::new(RX_BUF, 4096)),
            tx: Tx {
                stage: empty(AlignedBuf::new(TX_BUF, 4096)),
                in_flight: None,
                spare: Some(empty(AlignedBuf::new(TX_BUF, 4096))),
            },
            error: None,
            scratch: Vec::with_capacity(8),
            stream,
        };
        t.start_recv();
        t
    }

    fn fd(&self) -> i32 {
        self.stream.as_raw_fd()
    }

    fn fail(&mut self, errno: i32) {
        self.error.get_or_insert(errno);
    }

    /// Queues a RECV into the spare receive buffer, unless one is in flight, data is
    /// waiting, or the connection is finished.
    fn start_recv(&mut self) {
        if self.error.is_some() {
            return;
        }
        let Some(buf) = self.rx_spare.take() else {
            return;
        };
        let (fd, ud) = (self.fd(), self.owner.user_data(RECV));
        match self.owner.submit(|r| r.submit_recv(fd, buf, ud)) {
            Ok(()) => self.rx = Rx::InFlight,
            Err((buf, e)) => {
                self.rx_spare = Some(buf);
                self.fail(e.raw_os_error().unwrap_or(nix::libc::EIO));
            }
        }
    }

    /// Sends `buf[off..len]`.
    fn submit_send(&mut self, buf: AlignedBuf, off: usize, len: usize) {
        let (fd, ud) = (self.fd(), self.owner.user_data(SEND));
        match self
            .owner
            .submit(|r| r.submit_send_at(fd, buf, off, len - off, ud))
        {
            Ok(()) => self.tx.in_flight = Some((off, len)),
            Err((buf, e)) => {
                self.tx.spare = Some(empty(buf));
                self.tx.in_flight = None;
                self.fail(e.raw_os_error().unwrap_or(nix::libc::EIO));
            }
        }
    }

    /// Sends what is staged if no SEND is in flight.
    fn start_send(&mut self) {
        if self.tx.in_flight.is_some() || self.tx.stage.is_empty() || self.error.is_some() {
            return;
        }
        let Some(spare) = self.tx.spare.take() else {
            return;
        };
        let full = std::mem::replace(&mut self.tx.stage, spare);
        let len = full.len();
        self.submit_send(full, 0, len);
    }

    fn on_completion(&mut self, c: UringCompletion) {
        let res = c.result;
        let retry = res == -nix::libc::EAGAIN || res == -nix::libc::EINTR;
        match RingOwner::low(c.user_data) {
            RECV => {
                let Some(buf) = c.buf else { return };
                if res > 0 {
                    self.rx = Rx::Ready {
                        buf,
                        start: 0,
                        end: res as usize,
                    };
                    return;
                }
                self.rx_spare = Some(buf);
                self.rx = Rx::Eof;
                if retry {
                    self.start_recv();
                } else if res < 0 && res != -nix::libc::ECANCELED {
                    self.fail(-res);
                }
            }
            SEND => {
                let Some(buf) = c.buf else { return };
                let Some((off, len)) = self.tx.in_flight.take() else {
                    self.tx.spare = Some(empty(buf));
                    return;
                };
                if retry {
                    return self.submit_send(buf, off, len);
                }
                if res <= 0 {
                    self.tx.spare = Some(empty(buf));
                    self.fail(if res == 0 { nix::libc::EPIPE } else { -res });
                    return;
                }
                let off = off + res as usize;
                if off < len {
                    // A short send: the rest goes next, before anything staged since.
                    return self.submit_send(buf, off, len);
                }
                self.tx.spare = Some(empty(buf));
                self.start_send();
            }
            // Cancel requests' own completions carry nothing to act on.
            _ => {}
        }
    }

    fn error(&self) -> Option<io::Error> {
        self.error.map(io::Error::from_raw_os_error)
    }
}

fn empty(mut b: AlignedBuf) -> AlignedBuf {
    b.set_len(0);
    b
}

impl Transport for UringTcp {
    fn recv(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.progress();
        match &mut self.rx {
            Rx::Ready { buf, start, end } => {
                let n = out.len().min(*end - *start);
                out[..n].copy_from_slice(&buf[*start..*start + n]);
                *start += n;
                if *start == *end {
                    if let Rx::Ready { buf, .. } = std::mem::replace(&mut self.rx, Rx::Eof) {
                        self.rx_spare = Some(buf);
                    }
                    self.start_recv();
                }
                Ok(n)
            }
            Rx::InFlight => Err(io::ErrorKind::WouldBlock.into()),
            Rx::Eof => match self.error() {
                Some(e) => Err(e),
                None => Ok(0),
            },
        }
    }

    fn send_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.progress();
        if let Some(e) = self.error() {
            return Err(e);
        }
        let stage = &mut self.tx.stage;
        let mut taken = 0;
        for b in bufs {
            let room = stage.capacity() - stage.len();
            let n = b.len().min(room);
            let at = stage.len();
            stage.set_len(at + n);
            stage[at..at + n].copy_from_slice(&b[..n]);
            taken += n;
            if n < b.len() {
                break;
            }
        }
        if taken == 0 && bufs.iter().any(|b| !b.is_empty()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.start_send();
        Ok(taken)
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        self.stream.local_addr().ok()
    }

    fn peer_addr(&self) -> Option<SocketAddr> {
        self.stream.peer_addr().ok()
    }

    fn shutdown(&mut self) {
        // Ends the RECV in flight (it completes with 0) and any SEND (EPIPE).
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// None: the reactor sleeps on its ring's eventfd, which a RECV in flight (always, while
    /// nothing waits to be read) or a SEND completing makes readable.
    fn poll_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    fn progress(&mut self) -> usize {
        let mut done = std::mem::take(&mut self.scratch);
        let n = self.owner.take(&mut done);
        for c in done.drain(..) {
            self.on_completion(c);
        }
        self.scratch = done;
        self.start_send();
        n
    }

    fn has_unsent(&self) -> bool {
        self.error.is_none() && (self.tx.in_flight.is_some() || !self.tx.stage.is_empty())
    }
}

impl Drop for UringTcp {
    fn drop(&mut self) {
        let ring = self.owner.ring().clone();
        // 1. Our queued SQEs reach the kernel while the descriptor is still ours.
        for _ in 0..8 {
            if !ring.needs_enter() {
                break;
            }
            let _ = ring.enter();
        }
        // 2. Whatever is in flight is cancelled (its buffer stays in the ring until the
        //    kernel answers; the completion then finds no owner and frees it).
        let _ = self.stream.shutdown(Shutdown::Both);
        let recv_in_flight = matches!(self.rx, Rx::InFlight);
        let send_in_flight = self.tx.in_flight.is_some();
        let (recv, send) = (self.owner.user_data(RECV), self.owner.user_data(SEND));
        let (c_recv, c_send) = (
            self.owner.user_data(CANCEL_RECV),
            self.owner.user_data(CANCEL_SEND),
        );
        self.owner.submit(|r| {
            if recv_in_flight {
                let _ = r.submit_cancel(recv, c_recv);
            }
            if send_in_flight {
                let _ = r.submit_cancel(send, c_send);
            }
        });
        // 3. The descriptor closes when `stream` drops, after this.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::time::{Duration, Instant};

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    /// Drives the ring like a reactor pass until `f` says done.
    fn pump<T>(ring: &SharedRing, mut f: impl FnMut() -> Option<T>) -> T {
        let t = Instant::now();
        loop {
            ring.enter().unwrap();
            if let Some(v) = f() {
                return v;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "timed out");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn echoes_large_data_in_both_directions_and_sees_the_close() {
        let ring = SharedRing::new(16).unwrap();
        let (peer, sock) = pair();
        let mut t = UringTcp::new(sock, &ring);
        // Peer -> transport: more than one receive buffer.
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let writer = {
            let mut p = peer.try_clone().unwrap();
            let d = data.clone();
            std::thread::spawn(move || p.write_all(&d).unwrap())
        };
        let mut got = Vec::new();
        let mut buf = vec![0u8; 10_000];
        pump(&ring, || {
            t.progress();
            match t.recv(&mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
            }
            (got.len() == data.len()).then_some(())
        });
        writer.join().unwrap();
        assert_eq!(got, data);
        // Transport -> peer: more than both send buffers, offered in odd slices.
        let reader = {
            let mut p = peer.try_clone().unwrap();
            let n = data.len();
            std::thread::spawn(move || {
                let mut v = vec![0u8; n];
                p.read_exact(&mut v).unwrap();
                v
            })
        };
        let mut off = 0;
        pump(&ring, || {
            if off < data.len() {
                let end = (off + 7777).min(data.len());
                let mid = (off + end) / 2;
                let iov = [IoSlice::new(&data[off..mid]), IoSlice::new(&data[mid..end])];
                match t.send_vectored(&iov) {
                    Ok(n) => off += n,
                    Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
                }
            } else {
                t.progress();
            }
            (off == data.len() && !t.has_unsent()).then_some(())
        });
        assert_eq!(reader.join().unwrap(), data);
        // The peer closes: recv reports the end.
        peer.shutdown(Shutdown::Both).unwrap();
        pump(&ring, || match t.recv(&mut buf) {
            Ok(0) => Some(()),
            Ok(_) => panic!("no data expected"),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => panic!("{e}"),
        });
    }

    #[test]
    fn dropping_with_a_receive_in_flight_cancels_it_and_frees_the_buffer() {
        let ring = SharedRing::new(16).unwrap();
        let (_peer, sock) = pair();
        let mut t = UringTcp::new(sock, &ring);
        for _ in 0..5 {
            ring.enter().unwrap();
            std::thread::sleep(Duration::from_millis(5));
            assert_eq!(
                t.progress(),
                0,
                "a RECV with nothing to read waits in the kernel"
            );
        }
        assert_eq!(ring.in_flight(), 1, "the RECV is in the kernel's hands");
        drop(t);
        let probe = ring.owner();
        pump(&ring, || {
            probe.take(&mut Vec::new());
            (ring.in_flight() == 0).then_some(())
        });
    }

    #[test]
    fn a_reset_peer_is_an_error_not_a_panic() {
        let ring = SharedRing::new(16).unwrap();
        let (peer, sock) = pair();
        let mut t = UringTcp::new(sock, &ring);
        // SO_LINGER 0: close sends RST.
        let s = socket2_linger0(peer);
        drop(s);
        let mut buf = [0u8; 16];
        let r = pump(&ring, || match t.recv(&mut buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            other => Some(other),
        });
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
        let big = vec![0u8; 4096];
        // Sending to a reset connection fails (maybe after one accepted copy).
        let r = pump(&ring, || match t.send_vectored(&[IoSlice::new(&big)]) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => Some(e),
            Ok(_) => None,
        });
        assert!(r.raw_os_error().is_some(), "{r}");
    }

    fn socket2_linger0(s: TcpStream) -> TcpStream {
        // std has no portable SO_LINGER setter; nix does.
        use nix::sys::socket::{setsockopt, sockopt::Linger};
        setsockopt(
            &s,
            Linger,
            &nix::libc::linger {
                l_onoff: 1,
                l_linger: 0,
            },
        )
        .unwrap();
        s
    }
}
