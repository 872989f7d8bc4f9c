//! Kernel TCP transport: a non-blocking `TcpStream` polled by the reactor.

use super::Transport;
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};

pub struct KernelTcp {
    stream: TcpStream,
}

/// Sets up an accepted socket for a reactor: non-blocking, no Nagle.
pub fn prepare(stream: TcpStream) -> io::Result<TcpStream> {
    stream.set_nonblocking(true)?;
    // Latency matters more than segment count: small responses must leave at once.
    stream.set_nodelay(true)?;
    Ok(stream)
}

impl KernelTcp {
    pub fn new(stream: TcpStream) -> io::Result<KernelTcp> {
        Ok(KernelTcp {
            stream: prepare(stream)?,
        })
    }
}

impl KernelTcp {
    /// Wraps a socket already set up by [`prepare`].
    pub fn from_prepared(stream: TcpStream) -> KernelTcp {
        KernelTcp { stream }
    }
}

impl Transport for KernelTcp {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }

    fn send_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.stream.write_vectored(bufs)
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        self.stream.local_addr().ok()
    }

    fn peer_addr(&self) -> Option<SocketAddr> {
        self.stream.peer_addr().ok()
    }

    fn shutdown(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    fn poll_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.stream.as_fd())
    }
}
