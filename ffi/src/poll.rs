//! `poll(2)` over a list of descriptors with a read/write interest each: how a loop without
//! a reactor (tests, tools) sleeps on `tandem_synclink::PeerLinks::wait_fds`.

use std::io;
use std::os::fd::RawFd;

/// Waits up to `timeout_ms` (-1 = forever, 0 = just check) until one of `fds` is readable
/// (or, for entries with `want_write`, writable), or has an error or hangup. Returns how
/// many are ready; `EINTR` counts as none.
pub fn poll_fds(fds: &[(RawFd, bool)], timeout_ms: i32) -> io::Result<usize> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&(fd, want_write)| libc::pollfd {
            fd,
            events: libc::POLLIN | if want_write { libc::POLLOUT } else { 0 },
            revents: 0,
        })
        .collect();
    // SAFETY: `pfds` is a valid, initialised array of exactly `pfds.len()` pollfd entries
    // that lives across the call; the kernel writes only their `revents`.
    let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(r as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn readable_and_writable() {
        let (mut a, b) = UnixStream::pair().unwrap();
        assert_eq!(poll_fds(&[(b.as_raw_fd(), false)], 0).unwrap(), 0);
        assert_eq!(poll_fds(&[(b.as_raw_fd(), true)], 0).unwrap(), 1);
        a.write_all(b"x").unwrap();
        assert_eq!(poll_fds(&[(b.as_raw_fd(), false)], 100).unwrap(), 1);
        assert_eq!(poll_fds(&[], 0).unwrap(), 0);
    }
}
