//! An io_uring wrapper that owns every I/O buffer while the kernel may use it.
//!
//! Each submission moves its [`AlignedBuf`] into an in-flight table keyed by `user_data`;
//! the buffer comes back only inside the matching [`UringCompletion`]. Dropping the
//! [`Uring`] waits for everything still in flight, so the kernel can never write into freed
//! memory. This is the only place where buffer pointers are handed to the kernel.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use io_uring::{opcode, squeue, types, IoUring};

use crate::{AlignedBuf, EventFd};

/// One finished operation.
#[derive(Debug)]
pub struct UringCompletion {
    /// The `user_data` given at submission.
    pub user_data: u64,
    /// The raw result: bytes transferred (may be short) or `-errno`.
    pub result: i32,
    /// The buffer of a read or write, handed back; `None` for fsync/fallocate.
    pub buf: Option<AlignedBuf>,
}

impl UringCompletion {
    /// The result as `io::Result<bytes>`.
    pub fn io_result(&self) -> io::Result<usize> {
        if self.result < 0 {
            Err(io::Error::from_raw_os_error(-self.result))
        } else {
            Ok(self.result as usize)
        }
    }
}

/// io_uring instance plus the table of operations the kernel currently owns.
///
/// Submissions are queued in the submission ring and handed to the kernel by
/// [`Uring::flush_submissions`] or [`Uring::wait`]; if the ring is full they wait in an
/// internal overflow queue (bounded only by what the caller keeps in flight).
pub struct Uring {
    ring: IoUring,
    /// user_data -> buffer (None for operations without a buffer). An entry exists from the
    /// moment an SQE referencing the buffer is built until its CQE has been reaped.
    in_flight: HashMap<u64, Option<AlignedBuf>>,
    /// Built SQEs that did not fit into the submission ring yet.
    overflow: VecDeque<squeue::Entry>,
    /// `io_uring_enter` calls made so far (for measuring syscalls per I/O).
    enters: u64,
}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uring")
            .field("in_flight", &self.in_flight.len())
            .field("overflow", &self.overflow.len())
            .finish()
    }
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

impl Uring {
    /// Creates a ring with `entries` submission slots (rounded up to a power of two by the
    /// kernel; completion ring twice that).
    pub fn new(entries: u32) -> io::Result<Uring> {
        let ring = IoUring::new(entries.max(1))?;
        Ok(Uring {
            ring,
            in_flight: HashMap::with_capacity(entries as usize),
            overflow: VecDeque::new(),
            enters: 0,
        })
    }

    /// Operations submitted (or queued) and not yet reaped.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// `io_uring_enter` calls made by this ring so far.
    pub fn enters(&self) -> u64 {
        self.enters
    }

    /// True if some built SQE has not been handed to the kernel yet, or the kernel holds
    /// completions that did not fit the completion ring (an enter moves them over).
    pub fn needs_enter(&mut self) -> bool {
        if !self.overflow.is_empty() {
            return true;
        }
        let sq = self.ring.submission();
        !sq.is_empty() || sq.cq_overflow()
    }

    /// Whether completions wait in the completion ring (a memory read, no system call).
    pub fn completions_ready(&mut self) -> bool {
        !self.ring.completion().is_empty()
    }

    /// Receives up to `buf.capacity()` bytes from socket `fd` into `buf` (`buf.len()` is set
    /// to the capacity; the completion's result says how much arrived, 0 = peer closed).
    pub fn submit_recv(
        &mut self,
        fd: RawFd,
        mut buf: AlignedBuf,
        user_data: u64,
    ) -> Result<(), (AlignedBuf, io::Error)> {
        let cap = buf.capacity();
        if let Err(e) = self.check_common(cap, 0, user_data) {
            return Err((buf, e));
        }
        buf.set_len(cap);
        let sqe = opcode::Recv::new(types::Fd(fd), buf.raw_ptr(), cap as u32)
            .build()
            .user_data(user_data);
        self.enqueue(sqe, user_data, Some(buf));
        Ok(())
    }

    /// Sends `buf[buf_off..buf_off+len]` on socket `fd` (`MSG_NOSIGNAL`: a closed peer is an
    /// `EPIPE` result, not a signal). The result may be short: resubmit the rest.
    pub fn submit_send_at(
        &mut self,
        fd: RawFd,
        mut buf: AlignedBuf,
        buf_off: usize,
        len: usize,
        user_data: u64,
    ) -> Result<(), (AlignedBuf, io::Error)> {
        match buf_off.checked_add(len) {
            Some(end) if end <= buf.len() => {}
            _ => return Err((buf, invalid("send range beyond buffer length"))),
        }
        if let Err(e) = self.check_common(len, 0, user_data) {
            return Err((buf, e));
        }
        // SAFETY (pointer arithmetic): buf_off + len <= len() <= capacity.
        let ptr = unsafe { buf.raw_ptr().add(buf_off) };
        let sqe = opcode::Send::new(types::Fd(fd), ptr.cast_const(), len as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(user_data);
        self.enqueue(sqe, user_data, Some(buf));
        Ok(())
    }

    /// Asks the kernel to cancel the operation submitted as `target` (its own completion
    /// then comes with `-ECANCELED`, or normally if it finished first). The cancel request
    /// completes as `user_data`, with 0, `-ENOENT` or `-EALREADY`.
    pub fn submit_cancel(&mut self, target: u64, user_data: u64) -> io::Result<()> {
        self.check_common(0, 0, user_data)?;
        let sqe = opcode::AsyncCancel::new(target)
            .build()
            .user_data(user_data);
        self.enqueue(sqe, user_data, None);
        Ok(())
    }

    /// Reads `len` bytes at file `offset` into `buf[..len]`; sets `buf.len() = len`.
    pub fn submit_read(
        &mut self,
        fd: RawFd,
        buf: AlignedBuf,
        len: usize,
        offset: u64,
        user_data: u64,
    ) -> Result<(), (AlignedBuf, io::Error)> {
        self.submit_read_at(fd, buf, 0, len, offset, user_data)
    }

    /// Reads `len` bytes at file `offset` into `buf[buf_off..buf_off+len]` (for resubmitting
    /// the rest of a short read); sets `buf.len() = buf_off + len`.
    pub fn submit_read_at(
        &mut self,
        fd: RawFd,
        mut buf: AlignedBuf,
        buf_off: usize,
        len: usize,
        offset: u64,
        user_data: u64,
    ) -> Result<(), (AlignedBuf, io::Error)> {
        let end = match buf_off.checked_add(len) {
            Some(end) if end <= buf.capacity() => end,
            _ => return Err((buf, invalid("read range beyond buffer capacity"))),
        };
        if let Err(e) = self.check_common(len, offset, user_data) {
            return Err((buf, e));
        }
        buf.set_len(end);
        // SAFETY (pointer arithmetic): buf_off + len <= capacity, so the pointer stays inside
        // (or one past) the allocation.
        let ptr = unsafe { buf.raw_ptr().add(buf_off) };
        let sqe = opcode::Read::new(types::Fd(fd), ptr, len as u32)
            .offset(offset)
            .build()
            .user_data(user_data);
        self.enqueue(sqe, user_data, Some(buf));
        Ok(())
    }

    /// Writes `buf[..len]` at file `offset` (`len <= buf.len()`).
    pub fn submit_write(
        &mut self,
        fd: RawFd,
        buf: AlignedBuf,
        len: usize,
        offset: u64,
        user_data: u64,
    ) -> Result<(), (AlignedBuf, io::Error)> {
        self.submit_write_at(fd, buf, 0, len, offset, user_data, false)
    }

    /// Writes `buf[buf_off..buf_off+len]` at file `offset` (`buf_off + len <= buf.len()`).
    /// `dsync` sets `RWF_DSYNC` (the data is durable when the write completes, like FUA).
    #[allow(clippy::too_many_arguments)]
    pub fn submit_write_at(
        &mut self,
        fd: RawFd,
        mut buf: AlignedBuf,
        buf_off: usize,
        len: usize,
        offset: u64,
        user_data: u64,
        dsync: bool,
    ) -> Result<(), (AlignedBuf, io::Error)> {
        match buf_off.checked_add(len) {
            Some(end) if end <= buf.len() => {}
            _ => return Err((buf, invalid("write range beyond buffer length"))),
        }
        if let Err(e) = self.check_common(len, offset, user_data) {
            return Err((buf, e));
        }
        // SAFETY (pointer arithmetic): buf_off + len <= len() <= capacity.
        let ptr = unsafe { buf.raw_ptr().add(buf_off) };
        let flags = if dsync { libc::RWF_DSYNC } else { 0 };
        let sqe = opcode::Write::new(types::Fd(fd), ptr.cast_const(), len as u32)
            .offset(offset)
            .rw_flags(flags)
            .build()
            .user_data(user_data);
        self.enqueue(sqe, user_data, Some(buf));
        Ok(())
    }

    /// `fsync` (or `fdatasync` if `datasync`) of `fd`.
    pub fn submit_fsync(&mut self, fd: RawFd, datasync: bool, user_data: u64) -> io::Result<()> {
        self.check_common(0, 0, user_data)?;
        let flags = if datasync {
            types::FsyncFlags::DATASYNC
        } else {
            types::FsyncFlags::empty()
        };
        let sqe = opcode::Fsync::new(types::Fd(fd))
            .flags(flags)
            .build()
            .user_data(user_data);
        self.enqueue(sqe, user_data, None);
        Ok(())
    }

    /// `fallocate(fd, mode, offset, len)`; for discard use
    /// `FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`.
    pub fn submit_fallocate(
        &mut self,
        fd: RawFd,
        mode: i32,
        offset: u64,
        len: u64,
        user_data: u64,
    ) -> io::Result<()> {
        self.check_common(0, offset, user_data)?;
        if len > i64::MAX as u64 {
            return Err(invalid("fallocate length too large"));
        }
        let sqe = opcode::Fallocate::new(types::Fd(fd), len)
            .offset(offset)
            .mode(mode)
            .build()
            .user_data(user_data);
        self.enqueue(sqe, user_data, None);
        Ok(())
    }

    fn check_common(&self, len: usize, offset: u64, user_data: u64) -> io::Result<()> {
        if len > u32::MAX as usize {
            return Err(invalid("I/O length exceeds u32"));
        }
        if offset > i64::MAX as u64 {
            return Err(invalid("file offset exceeds i64"));
        }
        if self.in_flight.contains_key(&user_data) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "user_data already in flight",
            ));
        }
        Ok(())
    }

    /// Records the buffer as owned-by-the-kernel, then queues the SQE.
    fn enqueue(&mut self, sqe: squeue::Entry, user_data: u64, buf: Option<AlignedBuf>) {
        // The buffer's heap memory does not move when the `AlignedBuf` is moved into the map.
        self.in_flight.insert(user_data, buf);
        if self.overflow.is_empty() && self.try_push(&sqe) {
            return;
        }
        if self.overflow.is_empty() {
            // Ring full: hand what we have to the kernel and retry once.
            self.enters += 1;
            let _ = self.ring.submit();
            if self.try_push(&sqe) {
                return;
            }
        }
        self.overflow.push_back(sqe);
    }

    fn try_push(&mut self, sqe: &squeue::Entry) -> bool {
        let mut sq = self.ring.submission();
        // SAFETY: every pointer in `sqe` refers to a buffer stored in `self.in_flight`, which
        // keeps it alive and unmoved until the matching CQE is reaped (and `Drop` waits for
        // all in-flight operations), so the kernel never sees a dangling pointer.
        unsafe { sq.push(sqe).is_ok() }
    }

    fn drain_overflow(&mut self) {
        while let Some(sqe) = self.overflow.front() {
            let sqe = sqe.clone();
            if !self.try_push(&sqe) {
                break;
            }
            self.overflow.pop_front();
        }
    }

    /// Hands all queued submissions to the kernel without waiting. Returns how many the
    /// kernel accepted. `EBUSY`/`EAGAIN` (completion ring overflowing) are not errors: reap and
    /// try again later. Makes no system call when there is nothing to hand over (completions
    /// are read from shared memory by [`Uring::reap`] without one).
    pub fn flush_submissions(&mut self) -> io::Result<usize> {
        let mut total = 0;
        loop {
            self.drain_overflow();
            if !self.needs_enter() {
                return Ok(total);
            }
            self.enters += 1;
            let n = match self.ring.submit() {
                Ok(n) => n,
                Err(e) if is_transient(&e) => return Ok(total),
                Err(e) => return Err(e),
            };
            total += n;
            if self.overflow.is_empty() || n == 0 {
                return Ok(total);
            }
        }
    }

    /// Submits queued entries and waits until at least `min_complete` completions are ready
    /// (clamped to what is in flight) or `timeout` passes. Timeouts and signals are not errors.
    pub fn wait(&mut self, min_complete: usize, timeout: Option<Duration>) -> io::Result<()> {
        self.drain_overflow();
        let want = min_complete.min(self.in_flight.len());
        self.enters += 1;
        let r = match timeout {
            None => self.ring.submit_and_wait(want),
            Some(t) => {
                let ts = types::Timespec::new()
                    .sec(t.as_secs())
                    .nsec(t.subsec_nanos());
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(want, &args)
            }
        };
        match r {
            Ok(_) => Ok(()),
            Err(e) if is_transient(&e) || e.raw_os_error() == Some(libc::ETIME) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Moves all ready completions into `out` (with their buffers). Returns how many.
    pub fn reap(&mut self, out: &mut Vec<UringCompletion>) -> usize {
        let mut n = 0;
        let mut cq = self.ring.completion();
        cq.sync();
        for cqe in &mut cq {
            let user_data = cqe.user_data();
            let buf = self.in_flight.remove(&user_data).flatten();
            out.push(UringCompletion {
                user_data,
                result: cqe.result(),
                buf,
            });
            n += 1;
        }
        n
    }

    /// Makes `efd` readable whenever a completion is posted, so a reactor can sleep in
    /// epoll. The kernel holds its own reference to the eventfd.
    pub fn register_eventfd(&mut self, efd: &EventFd) -> io::Result<()> {
        self.ring.submitter().register_eventfd(efd.as_raw_fd())
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBUSY) | Some(libc::EAGAIN) | Some(libc::EINTR)
    )
}

impl Drop for Uring {
    fn drop(&mut self) {
        // The kernel may still write into buffers in the in-flight table: wait for every
        // operation before the buffers are freed. If the ring stops making progress (should
        // not happen), leak the buffers rather than free memory the kernel might touch.
        let mut done = Vec::new();
        let mut stuck = 0;
        while !self.in_flight.is_empty() {
            self.drain_overflow();
            let r = self.ring.submit_and_wait(1);
            done.clear();
            let n = self.reap(&mut done);
            if n == 0 && r.as_ref().is_err_and(|e| !is_transient(e)) {
                stuck += 1;
                if stuck > 1000 {
                    for (_, buf) in self.in_flight.drain() {
                        std::mem::forget(buf);
                    }
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file::tests::test_dir;
    use crate::{allocate_thick, open_direct};
    use std::os::fd::AsRawFd;

    fn reap_all(ring: &mut Uring, n: usize) -> Vec<UringCompletion> {
        let mut out = Vec::new();
        while out.len() < n {
            ring.wait(n - out.len(), Some(Duration::from_secs(5)))
                .unwrap();
            ring.reap(&mut out);
        }
        out
    }

    #[test]
    fn direct_write_read_round_trip() {
        let dir = tempfile::tempdir_in(test_dir()).unwrap();
        let df = open_direct(&dir.path().join("img"), false, true).unwrap();
        assert!(df.direct, "expected O_DIRECT support on {:?}", test_dir());
        allocate_thick(&df.file, 1 << 20).unwrap();
        let fd = df.file.as_raw_fd();
        let mut ring = Uring::new(8).unwrap();
        let mut buf = AlignedBuf::new(8192, 4096);
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        ring.submit_write(fd, buf, 8192, 65536, 1).unwrap();
        assert_eq!(ring.in_flight(), 1);
        ring.flush_submissions().unwrap();
        let c = reap_all(&mut ring, 1);
        assert_eq!((c[0].user_data, c[0].result), (1, 8192));
        let back = c.into_iter().next().unwrap().buf.unwrap();
        assert_eq!(back.len(), 8192);
        ring.submit_fsync(fd, true, 2).unwrap();
        let rbuf = AlignedBuf::new(8192, 4096);
        ring.submit_read(fd, rbuf, 8192, 65536, 3).unwrap();
        let c = reap_all(&mut ring, 2);
        assert_eq!(ring.in_flight(), 0);
        for c in c {
            match c.user_data {
                2 => assert_eq!(c.result, 0),
                3 => {
                    assert_eq!(c.result, 8192);
                    assert_eq!(&c.buf.unwrap()[..], &back[..]);
                }
                other => panic!("unexpected {other}"),
            }
        }
    }

    #[test]
    fn misaligned_direct_io_reported_in_completion() {
        let dir = tempfile::tempdir_in(test_dir()).unwrap();
        let df = open_direct(&dir.path().join("img"), false, true).unwrap();
        allocate_thick(&df.file, 1 << 20).unwrap();
        let mut ring = Uring::new(4).unwrap();
        let buf = AlignedBuf::new(4096, 4096);
        ring.submit_read(df.file.as_raw_fd(), buf, 4096, 100, 9)
            .unwrap();
        let c = reap_all(&mut ring, 1);
        // Most filesystems refuse unaligned O_DIRECT (EINVAL); some serve it anyway (e.g.
        // from unwritten extents). Either way the result is reported and the buffer returned.
        assert!(
            c[0].result == -libc::EINVAL || c[0].result == 4096,
            "{}",
            c[0].result
        );
        assert!(c[0].buf.is_some());
    }

    #[test]
    fn rejects_bad_submissions() {
        let mut ring = Uring::new(4).unwrap();
        let (b, e) = ring
            .submit_read(0, AlignedBuf::new(4096, 4096), 8192, 0, 1)
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let mut small = b;
        small.set_len(100);
        let (_, e) = ring.submit_write(0, small, 4096, 0, 1).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let f = tempfile::tempfile_in(test_dir()).unwrap();
        ring.submit_fsync(f.as_raw_fd(), false, 5).unwrap();
        assert_eq!(
            ring.submit_fsync(f.as_raw_fd(), false, 5)
                .unwrap_err()
                .kind(),
            io::ErrorKind::AlreadyExists
        );
        let c = reap_all(&mut ring, 1);
        assert_eq!(c[0].result, 0);
    }

    #[test]
    fn short_read_at_eof_and_resubmit() {
        let dir = tempfile::tempdir_in(test_dir()).unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 6000]).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        let mut ring = Uring::new(4).unwrap();
        ring.submit_read(f.as_raw_fd(), AlignedBuf::new(8192, 4096), 8192, 0, 1)
            .unwrap();
        let c = reap_all(&mut ring, 1);
        assert_eq!(c[0].result, 6000);
        let buf = c.into_iter().next().unwrap().buf.unwrap();
        ring.submit_read_at(f.as_raw_fd(), buf, 6000, 2192, 6000, 2)
            .unwrap();
        let c = reap_all(&mut ring, 1);
        assert_eq!(c[0].result, 0);
        assert_eq!(c[0].buf.as_ref().unwrap().len(), 8192);
    }

    #[test]
    fn overflowing_submission_queue() {
        let f = tempfile::tempfile_in(test_dir()).unwrap();
        f.set_len(1 << 20).unwrap();
        let mut ring = Uring::new(4).unwrap();
        for i in 0..100u64 {
            let mut b = AlignedBuf::new(4096, 4096);
            b[0] = i as u8;
            ring.submit_write(f.as_raw_fd(), b, 4096, i * 4096 % (1 << 20), i)
                .unwrap();
        }
        assert_eq!(ring.in_flight(), 100);
        let c = reap_all(&mut ring, 100);
        assert_eq!(c.len(), 100);
        assert!(c.iter().all(|c| c.result == 4096 && c.buf.is_some()));
        assert_eq!(ring.in_flight(), 0);
    }

    #[test]
    fn eventfd_wakes_on_completion() {
        let f = tempfile::tempfile_in(test_dir()).unwrap();
        let efd = EventFd::new().unwrap();
        let mut ring = Uring::new(4).unwrap();
        ring.register_eventfd(&efd).unwrap();
        assert!(!crate::wait_readable(efd.as_raw_fd(), 0).unwrap());
        ring.submit_fsync(f.as_raw_fd(), false, 1).unwrap();
        ring.flush_submissions().unwrap();
        assert!(crate::wait_readable(efd.as_raw_fd(), 5000).unwrap());
        efd.drain();
        let mut out = Vec::new();
        ring.reap(&mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn drop_waits_for_in_flight() {
        let f = tempfile::tempfile_in(test_dir()).unwrap();
        f.set_len(64 << 20).unwrap();
        let mut ring = Uring::new(16).unwrap();
        for i in 0..64u64 {
            ring.submit_read(
                f.as_raw_fd(),
                AlignedBuf::new(1 << 20, 4096),
                1 << 20,
                i << 20,
                i,
            )
            .unwrap();
        }
        ring.flush_submissions().unwrap();
        drop(ring); // must not free buffers under the kernel's feet
    }

    #[test]
    fn wait_timeout_returns() {
        let mut ring = Uring::new(4).unwrap();
        let t = std::time::Instant::now();
        ring.wait(1, Some(Duration::from_millis(10))).unwrap();
        assert!(t.elapsed() < Duration::from_secs(2));
    }
}
