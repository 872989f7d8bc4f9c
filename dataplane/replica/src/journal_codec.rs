//! The sync journal's on-disk record (disk-failure and disk-continuous journals): pure
//! encoding and decoding, no I/O (see `journal_store` for the files and the fsync order).
//!
//! One record holds the whole durable journal: the bitmaps of the partners being tracked
//! and the activity log. Little-endian:
//!
//! ```text
//! magic "TNDMJRNL" | version u32 (1) | seq u64 | num_regions u64
//! | partners u32 | activity u32
//! | per partner: node u8, complete u8, ceil(num_regions / 64) words u64
//! | per activity region: index u64
//! | crc32c u32 of everything before it
//! ```
//!
//! A torn or corrupt record fails the length or CRC check and is ignored (the store keeps two
//! slots, so the previous good record remains). Decoding never panics on any input.

use tandem_ha::journal::{DirtyBitmap, PartnerRecord, PersistedJournal};
use tandem_ha::{NodeId, RegionIndex};

const MAGIC: &[u8; 8] = b"TNDMJRNL";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 8 + 8 + 4 + 4;
/// More partners than any device has (a device has at most three replicas).
const PARTNERS_MAX: u32 = 8;
/// Regions of the largest device a record may describe (64 KiB regions: 16 PiB).
const REGIONS_MAX: u64 = 1 << 38;

#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    Short,
    Magic,
    Version(u32),
    Length,
    Checksum,
    Content(&'static str),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Short => write!(f, "record too short"),
            DecodeError::Magic => write!(f, "not a journal record"),
            DecodeError::Version(v) => write!(f, "unknown journal version {v}"),
            DecodeError::Length => write!(f, "record length does not match its header (torn)"),
            DecodeError::Checksum => write!(f, "checksum mismatch (torn or corrupt)"),
            DecodeError::Content(why) => write!(f, "invalid content: {why}"),
        }
    }
}

/// One decoded record: its sequence number (the newer of two valid slots wins) and content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub num_regions: u64,
    pub journal: PersistedJournal,
}

pub fn encode(rec: &Record) -> Vec<u8> {
    let words = rec.num_regions.div_ceil(64) as usize;
    let mut b = Vec::with_capacity(
        HEADER_LEN
            + rec.journal.partners.len() * (2 + 8 * words)
            + rec.journal.activity.len() * 8
            + 4,
    );
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&rec.seq.to_le_bytes());
    b.extend_from_slice(&rec.num_regions.to_le_bytes());
    b.extend_from_slice(&(rec.journal.partners.len() as u32).to_le_bytes());
    b.extend_from_slice(&(rec.journal.activity.len() as u32).to_le_bytes());
    for p in &rec.journal.partners {
        b.push(p.partner.0);
        b.push(u8::from(p.complete));
        for w in p.dirty.words() {
            b.extend_from_slice(&w.to_le_bytes());
        }
    }
    for r in &rec.journal.activity {
        b.extend_from_slice(&r.0.to_le_bytes());
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

pub fn decode(b: &[u8]) -> Result<Record, DecodeError> {
    if b.len() < HEADER_LEN + 4 {
        return Err(DecodeError::Short);
    }
    if &b[..8] != MAGIC {
        return Err(DecodeError::Magic);
    }
    let version = u32_at(b, 8);
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    let seq = u64_at(b, 12);
    let num_regions = u64_at(b, 20);
    let partners = u32_at(b, 28);
    let activity = u32_at(b, 32);
    if num_regions > REGIONS_MAX || partners > PARTNERS_MAX || u64::from(activity) > num_regions {
        return Err(DecodeError::Content("counts beyond limits"));
    }
    let words = num_regions.div_ceil(64) as usize;
    let expected = HEADER_LEN as u64
        + u64::from(partners) * (2 + 8 * words as u64)
        + u64::from(activity) * 8
        + 4;
    if b.len() as u64 != expected {
        return Err(DecodeError::Length);
    }
    let body = b.len() - 4;
    if crc32c::crc32c(&b[..body]) != u32_at(b, body) {
        return Err(DecodeError::Checksum);
    }
    let mut at = HEADER_LEN;
    let mut journal = PersistedJournal::default();
    for _ in 0..partners {
        let node = b[at];
        let complete = match b[at + 1] {
            0 => false,
            1 => true,
            _ => return Err(DecodeError::Content("complete flag")),
        };
        at += 2;
        let w: Vec<u64> = (0..words).map(|i| u64_at(b, at + 8 * i)).collect();
        at += 8 * words;
        let dirty = DirtyBitmap::from_words(num_regions, w)
            .ok_or(DecodeError::Content("bits beyond the last region"))?;
        if node == 0 || journal.partners.iter().any(|p| p.partner.0 == node) {
            return Err(DecodeError::Content("partner id"));
        }
        journal.partners.push(PartnerRecord {
            partner: NodeId(node),
            complete,
            dirty,
        });
    }
    for _ in 0..activity {
        let r = u64_at(b, at);
        at += 8;
        if r >= num_regions {
            return Err(DecodeError::Content("activity region beyond the device"));
        }
        journal.activity.push(RegionIndex(r));
    }
    Ok(Record {
        seq,
        num_regions,
        journal,
    })
}

/// The newest valid record of the two slots, if any (a torn newer one leaves the older).
pub fn newest(slots: [Option<&[u8]>; 2]) -> Option<(usize, Record)> {
    let mut best: Option<(usize, Record)> = None;
    for (i, s) in slots.iter().enumerate() {
        let Some(rec) = s.and_then(|s| decode(s).ok()) else {
            continue;
        };
        if best.as_ref().is_none_or(|(_, b)| rec.seq > b.seq) {
            best = Some((i, rec));
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A record of `n` regions (at least 3), with hot regions inside the device.
    fn sample(seq: u64, n: u64) -> Record {
        assert!(n >= 3, "sample needs 3 regions");
        let mut d = DirtyBitmap::new(n);
        d.set(RegionIndex(n - 1));
        d.set(RegionIndex(0));
        Record {
            seq,
            num_regions: n,
            journal: PersistedJournal {
                partners: vec![PartnerRecord {
                    partner: NodeId(2),
                    complete: true,
                    dirty: d,
                }],
                activity: vec![RegionIndex(3 % n), RegionIndex(n - 2)],
            },
        }
    }

    #[test]
    fn round_trip() {
        let r = sample(7, 130);
        assert_eq!(decode(&encode(&r)), Ok(r));
    }

    #[test]
    fn torn_newer_slot_falls_back_to_the_older() {
        let old = encode(&sample(4, 100));
        let new = encode(&sample(5, 100));
        let torn = &new[..new.len() / 2];
        let (slot, rec) = newest([Some(&old), Some(torn)]).expect("old is valid");
        assert_eq!((slot, rec.seq), (0, 4));
        let (slot, rec) = newest([Some(&old), Some(&new)]).expect("both valid");
        assert_eq!((slot, rec.seq), (1, 5));
        assert!(newest([None, Some(torn)]).is_none());
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let good = encode(&sample(1, 70));
        for i in 0..good.len() * 8 {
            let mut b = good.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(decode(&b).is_err(), "flip of bit {i} not detected");
        }
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn any_prefix_or_overwrite_is_rejected_or_exact(
            seq in any::<u64>(),
            n in 1u64..300,
            cut in any::<prop::sample::Index>(),
            junk in proptest::collection::vec(any::<u8>(), 1..16),
        ) {
            let r = sample(seq, n.max(3));
            let good = encode(&r);
            // A write torn at any point leaves a prefix: never accepted.
            let at = cut.index(good.len());
            prop_assert!(decode(&good[..at]).is_err());
            // A torn overwrite of an older record: new bytes, then stale ones.
            let mut mixed = good.clone();
            for (i, j) in junk.iter().enumerate() {
                let k = (at + i) % mixed.len();
                mixed[k] ^= j | 1;
            }
            prop_assert!(decode(&mixed).is_err());
            prop_assert_eq!(decode(&good), Ok(r));
        }
    }
}
