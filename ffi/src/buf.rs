//! Heap buffers with a caller-chosen alignment.

use std::alloc::{self, Layout};
use std::fmt;
use std::io;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// A zero-initialised heap buffer whose start address is aligned to `align` bytes.
///
/// The buffer has a fixed `capacity` and a logical length `len <= capacity`; `Deref` gives
/// `[..len]`. All `capacity` bytes are always initialised (zeroed at allocation), so changing
/// the length never exposes uninitialised memory.
///
/// Moving an `AlignedBuf` does not move its heap memory: a pointer handed to the kernel stays
/// valid for as long as the buffer is alive (see [`crate::Uring`]).
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    capacity: usize,
    align: usize,
}

// SAFETY: `AlignedBuf` uniquely owns its allocation (like `Box<[u8]>`); no interior shared
// state, so moving it to another thread is sound.
unsafe impl Send for AlignedBuf {}
// SAFETY: `&AlignedBuf` only gives `&[u8]` access; shared reads from several threads are sound.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocates a zeroed buffer of `capacity` bytes aligned to `align`, with `len == capacity`.
    ///
    /// # Panics
    /// If `align` is not a power of two or `capacity` rounded up to `align` overflows `isize`
    /// (programming errors); aborts on out-of-memory like `Vec`. Use [`AlignedBuf::try_new`]
    /// for values that come from outside.
    pub fn new(capacity: usize, align: usize) -> AlignedBuf {
        match AlignedBuf::try_new(capacity, align) {
            Ok(b) => b,
            Err(e) => panic!("AlignedBuf::new({capacity}, {align}): {e}"),
        }
    }

    /// Like [`AlignedBuf::new`] but returns an error for a bad alignment or size.
    pub fn try_new(capacity: usize, align: usize) -> io::Result<AlignedBuf> {
        let layout = Layout::from_size_align(capacity, align).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "alignment must be a power of two and size must fit isize",
            )
        })?;
        if capacity == 0 {
            // No allocation; a well-aligned dangling pointer is valid for zero-length slices.
            let ptr = NonNull::new(align as *mut u8).unwrap_or(NonNull::dangling());
            return Ok(AlignedBuf {
                ptr,
                len: 0,
                capacity: 0,
                align,
            });
        }
        // SAFETY: `layout` has a non-zero size (checked above).
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout);
        };
        Ok(AlignedBuf {
            ptr,
            len: capacity,
            capacity,
            align,
        })
    }

    /// Logical length (bytes visible through `Deref`).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if `len() == 0`.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sets the logical length. Bytes beyond the old length keep whatever they last held.
    ///
    /// # Panics
    /// If `len > capacity()`.
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.capacity,
            "AlignedBuf::set_len({len}) beyond capacity {}",
            self.capacity
        );
        self.len = len;
    }

    /// Allocated size in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Alignment of the start address in bytes.
    pub fn align(&self) -> usize {
        self.align
    }

    /// The whole allocation, `[..capacity]`, regardless of `len`.
    pub fn as_full_slice(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `capacity` initialised bytes (zeroed at allocation, or
        // dangling+aligned with capacity 0) and we hold `&self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.capacity) }
    }

    /// The whole allocation, `[..capacity]`, mutably.
    pub fn as_full_slice_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_full_slice`, and `&mut self` guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.capacity) }
    }

    /// Raw start pointer, for handing to the kernel (crate-internal).
    pub(crate) fn raw_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.as_full_slice()[..self.len]
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        let len = self.len;
        &mut self.as_full_slice_mut()[..len]
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.capacity == 0 {
            return;
        }
        // SAFETY: allocated in `try_new` with exactly this size and alignment (validated there).
        unsafe {
            let layout = Layout::from_size_align_unchecked(self.capacity, self.align);
            alloc::dealloc(self.ptr.as_ptr(), layout);
        }
    }
}

impl fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .field("capacity", &self.capacity)
            .field("align", &self.align)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_and_zeroing() {
        for align in [1, 8, 512, 4096, 65536] {
            let b = AlignedBuf::new(3 * 4096 + 17, align);
            assert_eq!(b.as_ptr() as usize % align, 0);
            assert_eq!(b.len(), 3 * 4096 + 17);
            assert!(b.iter().all(|&x| x == 0));
        }
    }

    #[test]
    fn set_len_and_deref() {
        let mut b = AlignedBuf::new(8192, 4096);
        b.set_len(10);
        assert_eq!(b.len(), 10);
        b.copy_from_slice(b"0123456789");
        b.set_len(8192);
        assert_eq!(&b[..10], b"0123456789");
        assert_eq!(b.capacity(), 8192);
        b.set_len(0);
        assert!(b.is_empty());
    }

    #[test]
    #[should_panic]
    fn set_len_beyond_capacity_panics() {
        let mut b = AlignedBuf::new(16, 16);
        b.set_len(17);
    }

    #[test]
    fn zero_capacity_and_bad_align() {
        let b = AlignedBuf::new(0, 4096);
        assert!(b.is_empty());
        assert_eq!(b.as_ptr() as usize % 4096, 0);
        assert!(AlignedBuf::try_new(16, 3).is_err());
        assert!(AlignedBuf::try_new(usize::MAX, 4096).is_err());
    }

    #[test]
    fn send_to_other_thread() {
        let mut b = AlignedBuf::new(4096, 4096);
        b[0] = 7;
        let b = std::thread::spawn(move || b).join().unwrap();
        assert_eq!(b[0], 7);
    }
}
