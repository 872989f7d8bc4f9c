//! Deterministic LU identity: the same seed gives the same serial, NAA and
//! EUI-64 on every node, so multipath merges the paths of HA partners.

use crate::LuIdentity;

/// IEEE company ID used in NAA 6 / EUI-64 designators.
/// Placeholder: replace with the product's registered OUI before shipping.
const COMPANY_ID: u32 = 0x00_1C_7E;

/// 64-bit FNV-1a with a salt prefix: stable across versions and platforms
/// (unlike `DefaultHasher`), which is what an on-the-wire identity needs.
fn fnv1a64(salt: &[u8], data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in salt.iter().chain(data) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Final avalanche (splitmix64 finaliser) so similar seeds differ everywhere.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

impl LuIdentity {
    /// Builds an identity from `seed` (e.g. the device's cluster-wide UUID).
    pub fn derive(seed: &str) -> LuIdentity {
        let a = fnv1a64(b"tandem-serial", seed.as_bytes());
        let b = fnv1a64(b"tandem-naa-ext", seed.as_bytes());
        let c = fnv1a64(b"tandem-eui", seed.as_bytes());

        // NAA 6: 4-bit NAA, 24-bit company ID, 36-bit vendor specific
        // identifier, 64-bit vendor specific identifier extension.
        let vsid = a & 0x0000_000F_FFFF_FFFF;
        let hi: u64 = (6u64 << 60) | (u64::from(COMPANY_ID) << 36) | vsid;
        let mut naa = [0u8; 16];
        naa[..8].copy_from_slice(&hi.to_be_bytes());
        naa[8..].copy_from_slice(&b.to_be_bytes());

        // EUI-64: 24-bit company ID + 40-bit extension identifier.
        let eui = (u64::from(COMPANY_ID) << 40) | (c & 0x00FF_FFFF_FFFF);

        LuIdentity {
            vendor: "TANDEM".to_string(),
            product: "TANDEM-DISK".to_string(),
            revision: "0001".to_string(),
            serial: format!("{a:016x}"),
            naa,
            eui64: eui.to_be_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derive_is_deterministic_and_seed_sensitive() {
        let x = LuIdentity::derive("disk-1");
        assert_eq!(x, LuIdentity::derive("disk-1"));
        let y = LuIdentity::derive("disk-2");
        assert_ne!(x.serial, y.serial);
        assert_ne!(x.naa, y.naa);
        assert_ne!(x.eui64, y.eui64);
        assert_eq!(x.serial.len(), 16);
        assert!(x.serial.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(x.naa[0] >> 4, 6);
        assert_eq!(&x.eui64[..3], &[0x00, 0x1C, 0x7E]);
        assert_eq!(x.vendor, "TANDEM");
        assert_eq!(x.product, "TANDEM-DISK");
    }
}
