//! Kernel TCP transport: a non-blocking `TcpStream` polled by the reactor.

use super::Transport;
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};

pub struct KernelTcp {
    stream: TcpStream,
}

impl KernelTcp {
    pub fn new(stream: TcpStream) -> io::Result<KernelTcp> {
        stream.set_nonblocking(true)?;
        // Latency matters more than segment count: small responses must leave at once.
        stream.set_nodelay(true)?;
        Ok(KernelTcp { stream })
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
