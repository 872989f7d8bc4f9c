//! Wake-up primitives: a non-blocking eventfd and a small epoll set that merges several
//! readiness sources into one file descriptor.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// A non-blocking, close-on-exec Linux eventfd used as a counter-style wake-up signal.
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// Creates an eventfd with counter 0 (`EFD_NONBLOCK | EFD_CLOEXEC`).
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: plain syscall with constant flags; no pointers involved.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
        Ok(EventFd {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Makes the eventfd readable (adds 1 to its counter). Never blocks; a saturated counter
    /// (EAGAIN) already means "readable", so it is not an error.
    pub fn notify(&self) -> io::Result<()> {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live local `u64` to an fd we own.
        let n = unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Resets the counter to 0 so the fd is no longer readable. Returns the drained count.
    pub fn drain(&self) -> u64 {
        let mut value: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live local `u64` from an fd we own.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut value as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        if n == std::mem::size_of::<u64>() as isize {
            value
        } else {
            0
        }
    }

    /// The raw descriptor (for epoll or io_uring registration).
    pub fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for WakeSet {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.epfd.as_fd()
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// An epoll instance used purely as a *merged readiness fd*: it is readable whenever any
/// descriptor added to it is readable (level-triggered). A layer that has to wake its owner
/// for several reasons (its own eventfd plus an inner device's eventfd) exposes this fd.
///
/// The caller keeps the added descriptors open for as long as they are in the set (closing
/// one removes it from the epoll set automatically, which is harmless).
#[derive(Debug)]
pub struct WakeSet {
    epfd: OwnedFd,
}

impl WakeSet {
    /// Creates an empty set.
    pub fn new() -> io::Result<WakeSet> {
        // SAFETY: plain syscall with a constant flag.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh descriptor owned by nobody else.
        Ok(WakeSet {
            epfd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Adds `fd` (watched for readability, level-triggered).
    pub fn add(&self, fd: RawFd) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: fd as u64,
        };
        // SAFETY: `ev` is a live, initialised epoll_event; the kernel copies it.
        let r = unsafe { libc::epoll_ctl(self.epfd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout_ms` (-1 = forever) for any member to be readable; returns whether
    /// one is. Mostly for tests: reactors put [`WakeSet::as_raw_fd`] in their own epoll.
    pub fn wait(&self, timeout_ms: i32) -> io::Result<bool> {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: `ev` is a valid buffer for exactly one event (maxevents = 1).
        let r = unsafe { libc::epoll_wait(self.epfd.as_raw_fd(), &mut ev, 1, timeout_ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(e);
        }
        Ok(r > 0)
    }

    /// The epoll descriptor; readable while any member is readable.
    pub fn as_raw_fd(&self) -> RawFd {
        self.epfd.as_raw_fd()
    }
}

/// Waits up to `timeout_ms` (-1 = forever, 0 = just check) for `fd` to become readable.
/// Returns true if it is. For simple blocking waits outside reactors (shutdown flushes,
/// tests). `EINTR` counts as "not readable yet".
pub fn wait_readable(fd: RawFd, timeout_ms: i32) -> io::Result<bool> {
    poll_readable(fd, timeout_ms).or_else(|e| {
        if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        }
    })
}

fn poll_readable(fd: RawFd, timeout_ms: i32) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is a valid array of one pollfd.
    let r = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r > 0 && (pfd.revents & libc::POLLIN) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eventfd_notify_drain() {
        let e = EventFd::new().unwrap();
        assert!(!poll_readable(e.as_raw_fd(), 0).unwrap());
        e.notify().unwrap();
        e.notify().unwrap();
        assert!(poll_readable(e.as_raw_fd(), 0).unwrap());
        assert_eq!(e.drain(), 2);
        assert!(!poll_readable(e.as_raw_fd(), 0).unwrap());
        assert_eq!(e.drain(), 0);
    }

    #[test]
    fn wakeset_merges() {
        let a = EventFd::new().unwrap();
        let b = EventFd::new().unwrap();
        let w = WakeSet::new().unwrap();
        w.add(a.as_raw_fd()).unwrap();
        w.add(b.as_raw_fd()).unwrap();
        assert!(!poll_readable(w.as_raw_fd(), 0).unwrap());
        b.notify().unwrap();
        assert!(poll_readable(w.as_raw_fd(), 0).unwrap());
        assert!(w.wait(0).unwrap());
        b.drain();
        assert!(!w.wait(0).unwrap());
        let a = std::sync::Arc::new(a);
        let a2 = a.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            a2.notify().unwrap();
        });
        assert!(w.wait(5000).unwrap());
        t.join().unwrap();
        assert_eq!(a.drain(), 1);
    }
}
