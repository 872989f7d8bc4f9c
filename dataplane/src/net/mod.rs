//! Transports: the iSCSI code reads and writes bytes through [`Transport`] and cannot tell
//! kernel TCP from the userspace (smoltcp) stack.

pub mod listener;
pub mod tcp;
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
}
