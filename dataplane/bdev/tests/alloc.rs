//! Steady-state I/O allocates nothing: counted with a global counting allocator (its own
//! test binary, one test, so no other thread allocates meanwhile).

use std::sync::Arc;

use tandem_bdev::*;
use tandem_ffi::alloc_count::{allocations, CountingAllocator};

#[global_allocator]
static A: CountingAllocator = CountingAllocator;

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Runs `n` random 4 KiB reads/writes (queue depth 8) and returns allocations per op.
fn allocs_per_op(dev: &Arc<dyn Bdev>, n: usize, blocks: u64, out: &mut Vec<Completion>) -> f64 {
    let mut ch = dev.channel().unwrap();
    let mut rng = Rng(0x1234_5678);
    let mut run = |count: usize, ch: &mut Box<dyn BdevChannel>, out: &mut Vec<Completion>| {
        let mut submitted = 0;
        let mut done = 0;
        while done < count {
            while submitted < count && submitted - done < 8 {
                let off = rng.below(blocks) * 4096;
                let op = if rng.below(2) == 0 {
                    BdevOp::Write {
                        offset: off,
                        buf: ch.alloc_buf(4096),
                        fua: false,
                    }
                } else {
                    BdevOp::Read {
                        offset: off,
                        len: 4096,
                    }
                };
                ch.submit(submitted as u64, op);
                submitted += 1;
            }
            ch.poll(out);
            for c in out.drain(..) {
                assert!(c.result.is_ok());
                if let Some(b) = c.buf {
                    ch.free_buf(b);
                }
                done += 1;
            }
        }
        while ch.in_flight() > 0 {
            ch.poll(out);
        }
    };
    run(n, &mut ch, out); // warm up: pools, maps, cache lines
    let before = allocations();
    run(n, &mut ch, out);
    (allocations() - before) as f64 / n as f64
}

#[test]
fn steady_state_io_does_not_allocate() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let blocks = 256; // 1 MiB working set
    let file = |name: &str| {
        open_file(&FileConfig {
            name: name.into(),
            path: dir.path().join(name),
            size_bytes: Some(blocks * 4096),
            block_size: 4096,
            read_only: false,
        })
        .unwrap()
    };
    let mut out = Vec::with_capacity(64);
    let mut results = Vec::new();
    results.push((
        "ram",
        allocs_per_op(&open_ram("r", 4096, blocks), 4000, blocks, &mut out),
    ));
    results.push(("file", allocs_per_op(&file("f"), 4000, blocks, &mut out)));
    for (name, mode) in [
        ("cache none", CacheMode::None),
        ("cache write-through", CacheMode::WriteThrough),
        ("cache write-back", CacheMode::WriteBack),
    ] {
        let dev = with_cache(file(name), mode, 4 << 20);
        results.push((name, allocs_per_op(&dev, 4000, blocks, &mut out)));
    }
    for (name, per_op) in &results {
        eprintln!("{name:24} {per_op:.4} allocations per I/O");
    }
    for (name, per_op) in results {
        assert!(per_op < 0.01, "{name}: {per_op} allocations per I/O");
    }
}
