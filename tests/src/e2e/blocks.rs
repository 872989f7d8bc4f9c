//! Test data and CDBs for the end-to-end tests that write and read blocks through a target.

/// `len` bytes of a deterministic pattern (xorshift32 seeded by `seed`): distinct seeds give
/// distinct data, so a block read back names the write it came from.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// WRITE(16) of `blocks` blocks at `lba`.
pub fn write16(lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x8a;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// READ(16) of `blocks` blocks at `lba`.
pub fn read16(lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = write16(lba, blocks);
    c[0] = 0x88;
    c
}
