//! The payload handle the data plane gives the engine: host data shared (not copied) between
//! the local write and every partner's send queue, with the CRC32C computed once where the
//! data entered from the host and checked again before it reaches a partner's disk.

use std::sync::Arc;

use crate::codec::Payload;
use crate::frame::payload_crc32c;

#[derive(Clone, PartialEq, Eq)]
pub struct SharedPayload {
    bytes: Arc<[u8]>,
    crc32c: u32,
}

impl SharedPayload {
    /// Host data entering the cluster: its CRC is computed here, once.
    pub fn from_host(bytes: &[u8]) -> Self {
        SharedPayload {
            crc32c: payload_crc32c(bytes),
            bytes: Arc::from(bytes),
        }
    }

    /// Data received from a partner together with the CRC its frame carried; see
    /// [`SharedPayload::is_intact`].
    pub fn received(bytes: &[u8], crc32c: u32) -> Self {
        SharedPayload {
            bytes: Arc::from(bytes),
            crc32c,
        }
    }

    /// The bytes still match the CRC computed where they entered (end-to-end check before
    /// they are written to a disk).
    pub fn is_intact(&self) -> bool {
        payload_crc32c(&self.bytes) == self.crc32c
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes
    }
}

impl AsRef<[u8]> for SharedPayload {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Payload for SharedPayload {
    fn len_bytes(&self) -> usize {
        self.bytes.len()
    }
    fn crc32c(&self) -> u32 {
        self.crc32c
    }
}

impl std::fmt::Debug for SharedPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SharedPayload({} bytes, crc {:08x})",
            self.bytes.len(),
            self.crc32c
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flipped_bit_is_caught() {
        let p = SharedPayload::from_host(&[7u8; 4096]);
        assert!(p.is_intact());
        let mut bad = p.as_slice().to_vec();
        bad[100] ^= 1;
        assert!(!SharedPayload::received(&bad, p.crc32c()).is_intact());
    }
}
