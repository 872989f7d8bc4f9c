//! Transports: the iSCSI code reads and writes bytes through [`Transport`] and cannot tell
//! kernel TCP from the userspace (smoltcp) stack.

pub mod listener;
pub mod tcp;
pub mod uring_tcp;
pub mod utcp;

use std::io::{self, IoSlice};
use std::net::SocketAddr;

/// A non-blocking, stream-oriented byte pipe to one initiator.
///
/// `recv` and `send_vectored` return `ErrorKind::WouldBlock` instead of waiting; the reactor
/// polls them again later. `Ok(0)` from `recv` means the peer closed the stream.
///
/// Not `Send`: a userspace TCP connection is a handle into its reactor's stack. Transports
/// that cross threads (kernel TCP from the listener thread) travel as
/// `Box<dyn Transport + Send>`.
pub trait Transport {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    fn send_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    fn local_addr(&self) -> Option<SocketAddr>;
    fn peer_addr(&self) -> Option<SocketAddr>;
    fn shutdown(&mut self);
    /// The descriptor the reactor sleeps on when idle, if the transport has one.
    fn poll_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>>;
    /// Takes in what finished since the last call (completed receives and sends of a
    /// transport that queues its I/O, `uring_tcp`); returns how much, as work done. The
    /// connection calls it at the start of every poll.
    fn progress(&mut self) -> usize {
        0
    }
    /// True while bytes `send_vectored` took have not all been handed to the kernel's socket
    /// yet (a queued transport): a closing connection waits for them before it shuts down.
    fn has_unsent(&self) -> bool {
        false
    }
}

/// How the reactors do socket I/O on kernel TCP connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SocketIo {
    /// `recv` and `writev` system calls per connection per pass (the default).
    #[default]
    Syscalls,
    /// RECV and SEND queued on the reactor's io_uring, entered once per pass together with
    /// device I/O (`uring_tcp`).
    Uring,
}
