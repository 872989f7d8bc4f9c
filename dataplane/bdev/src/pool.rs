//! Per-channel pools of aligned buffers in power-of-two size classes.

use crate::{AlignedBuf, BUF_ALIGN};

const MIN_CLASS_SHIFT: u32 = 12; // 4 KiB
const MAX_CLASS_SHIFT: u32 = 22; // 4 MiB
const CLASSES: usize = (MAX_CLASS_SHIFT - MIN_CLASS_SHIFT + 1) as usize;
/// Bytes kept per size class (at least 2 buffers per class).
const BYTES_PER_CLASS: usize = 16 << 20;

/// A free list of aligned buffers per size class (4 KiB .. 4 MiB, powers of two). Owned by
/// one channel; in steady state `alloc`/`free` allocate nothing. Larger requests are
/// allocated exactly and freed on return. Each class keeps at most 16 MiB (min 2 buffers).
#[derive(Debug)]
pub struct BufPool {
    align: usize,
    classes: Vec<Vec<AlignedBuf>>,
    allocations: u64,
}

impl Default for BufPool {
    fn default() -> Self {
        BufPool::new(BUF_ALIGN)
    }
}

impl BufPool {
    /// A pool handing out buffers aligned to `align` (at least [`BUF_ALIGN`]; rounded up to
    /// a power of two).
    pub fn new(align: usize) -> BufPool {
        let align = align
            .max(BUF_ALIGN)
            .checked_next_power_of_two()
            .unwrap_or(BUF_ALIGN);
        BufPool {
            align,
            classes: (0..CLASSES).map(|_| Vec::new()).collect(),
            allocations: 0,
        }
    }

    fn class_of(len: usize) -> Option<usize> {
        let cap = len.max(1 << MIN_CLASS_SHIFT).checked_next_power_of_two()?;
        let shift = cap.trailing_zeros();
        (shift <= MAX_CLASS_SHIFT).then(|| (shift - MIN_CLASS_SHIFT) as usize)
    }

    /// A buffer with `len() == len`. Its contents are unspecified (recycled buffers keep old
    /// data); callers overwrite or zero it.
    pub fn alloc(&mut self, len: usize) -> AlignedBuf {
        let mut buf = match Self::class_of(len) {
            Some(c) => match self.classes[c].pop() {
                Some(b) => b,
                None => {
                    self.allocations += 1;
                    AlignedBuf::new(1usize << (c as u32 + MIN_CLASS_SHIFT), self.align)
                }
            },
            None => {
                self.allocations += 1;
                let cap = len.div_ceil(self.align).saturating_mul(self.align);
                AlignedBuf::new(cap, self.align)
            }
        };
        buf.set_len(len);
        buf
    }

    /// Takes a buffer back (any buffer: foreign sizes or alignments are simply dropped).
    pub fn free(&mut self, buf: AlignedBuf) {
        let cap = buf.capacity();
        if !cap.is_power_of_two() || buf.align() < self.align {
            return;
        }
        if let Some(c) = Self::class_of(cap) {
            if 1usize << (c as u32 + MIN_CLASS_SHIFT) == cap {
                let limit = (BYTES_PER_CLASS / cap).max(2);
                if self.classes[c].len() < limit {
                    self.classes[c].push(buf);
                }
            }
        }
    }

    /// Buffers currently held.
    pub fn cached(&self) -> usize {
        self.classes.iter().map(Vec::len).sum()
    }

    /// Fresh allocations made so far (for tests and metrics).
    pub fn allocations(&self) -> u64 {
        self.allocations
    }

    /// Alignment of handed-out buffers.
    pub fn align(&self) -> usize {
        self.align
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_and_reuse() {
        let mut p = BufPool::new(4096);
        let a = p.alloc(512);
        assert_eq!((a.len(), a.capacity()), (512, 4096));
        assert_eq!(a.as_ptr() as usize % 4096, 0);
        let b = p.alloc(5000);
        assert_eq!(b.capacity(), 8192);
        p.free(a);
        p.free(b);
        assert_eq!(p.cached(), 2);
        let n = p.allocations();
        for _ in 0..100 {
            let x = p.alloc(4096);
            let y = p.alloc(8000);
            p.free(x);
            p.free(y);
        }
        assert_eq!(p.allocations(), n, "steady state allocates nothing");
        let big = p.alloc(5 << 20);
        assert_eq!(big.len(), 5 << 20);
        p.free(big);
        assert_eq!(p.cached(), 2);
        p.free(AlignedBuf::new(4096, 8)); // foreign alignment: dropped
        p.free(AlignedBuf::new(3000, 4096)); // odd size: dropped
        assert_eq!(p.cached(), 2);
        let z = p.alloc(0);
        assert_eq!(z.len(), 0);
    }

    #[test]
    fn bounded() {
        let mut p = BufPool::new(4096);
        let bufs: Vec<_> = (0..10).map(|_| p.alloc(4 << 20)).collect();
        for b in bufs {
            p.free(b);
        }
        assert_eq!(p.cached(), 4);
    }
}
