//! TAP devices: attach to (or create) a named Linux TAP interface and move whole Ethernet
//! frames through it with non-blocking reads and writes.
//!
//! Unlike smoltcp's own `TunTapInterface`, nothing here panics on an I/O error (a TAP whose
//! link is set down answers `EIO`): every error is returned to the caller.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// An open TAP interface (`IFF_TAP | IFF_NO_PI`, non-blocking, close-on-exec).
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
}

fn ifreq_named(name: &str) -> io::Result<libc::ifreq> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "bad interface name {name:?} (1 to {} bytes, no NUL)",
                libc::IFNAMSIZ - 1
            ),
        ));
    }
    // SAFETY: `ifreq` is plain old data (a name array and a union of integers, arrays and
    // pointers); all-zero bytes are a valid value of it.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Ok(ifr)
}

impl Tap {
    /// Attaches to the TAP interface `name`, creating it if it does not exist (which needs
    /// CAP_NET_ADMIN unless it is a persistent TAP owned by this user).
    pub fn open(name: &str) -> io::Result<Tap> {
        let mut ifr = ifreq_named(name)?;
        // SAFETY: the path is a NUL-terminated literal; plain open(2).
        let raw = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a freshly opened descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one `ifreq`, which lives on our stack for the
        // whole call.
        let rc = unsafe {
            libc::ioctl(
                fd.as_raw_fd(),
                libc::TUNSETIFF as _,
                &mut ifr as *mut libc::ifreq,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Tap {
            fd,
            name: name.to_string(),
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interface's IP MTU (without the 14-byte Ethernet header), as configured now.
    pub fn ip_mtu(&self) -> io::Result<usize> {
        let mut ifr = ifreq_named(&self.name)?;
        // SAFETY: plain socket(2) with constant arguments.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a freshly created descriptor that nothing else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: SIOCGIFMTU fills `ifru_mtu` of the `ifreq` that lives on our stack.
        let rc = unsafe {
            libc::ioctl(
                sock.as_raw_fd(),
                libc::SIOCGIFMTU as _,
                &mut ifr as *mut libc::ifreq,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: after a successful SIOCGIFMTU the union holds the MTU as an int.
        let mtu = unsafe { ifr.ifr_ifru.ifru_mtu };
        usize::try_from(mtu)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("negative MTU {mtu}")))
    }

    /// Reads one frame; `WouldBlock` when none is queued. A frame longer than `buf` is
    /// truncated by the kernel.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: reads at most `buf.len()` bytes into memory we borrow mutably.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Writes one frame.
    pub fn write(&self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: writes `frame.len()` bytes from memory we borrow.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_names() {
        assert!(Tap::open("").is_err());
        assert!(Tap::open("a-name-that-is-far-too-long").is_err());
        assert!(Tap::open("nul\0name").is_err());
    }
}
