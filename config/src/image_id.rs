//! The identity record that binds an image file to its device: `<image file name>.tandem`
//! beside the image (a sidecar, so the image itself stays byte-identical to what hosts wrote,
//! which replication compares and copies).
//!
//! Why: an image that went missing (a mount that failed at boot), was swapped for another file
//! or was truncated must never be served under the device's identity. The data plane checks
//! the record before it opens an image and fails that device only when anything disagrees.
//! It also carries the intent of an interrupted extend so a restart can finish or undo it.
//!
//! Format (version 1, 4096 bytes, little-endian; documented in `docs/operations.md`):
//!
//! | offset | size | field                                                        |
//! |-------:|-----:|--------------------------------------------------------------|
//! | 0      | 8    | magic `TANDEMID`                                             |
//! | 8      | 4    | format version (1)                                           |
//! | 12     | 4    | record length (4096)                                         |
//! | 16     | 4    | logical block size                                           |
//! | 20     | 4    | flags (0; reserved)                                          |
//! | 24     | 8    | size in blocks                                               |
//! | 32     | 8    | pending extend: new size in blocks, 0 when none              |
//! | 40     | 8    | created/updated, Unix seconds                                |
//! | 48     | 2    | identity seed length (1..=255)                               |
//! | 50     | 255  | identity seed (serial, NAA and EUI-64 derive from it)        |
//! | 320    | 8    | inode number of the image file when bound (0 = not checked)  |
//! | 512    | 8    | replication: current data generation (0 = none yet)         |
//! | 520    | 32   | replication: bitmap generation per partner (4 slots)         |
//! | 552    | 128  | replication: generation history (16 slots)                   |
//! | 680    | ...  | reserved, zero                                               |
//! | 4092   | 4    | CRC32C of bytes 0..4092                                      |

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 8] = b"TANDEMID";
pub const VERSION: u32 = 1;
pub const RECORD_BYTES: usize = 4096;
/// Suffix appended to the image's full file name.
pub const SUFFIX: &str = ".tandem";
pub const PARTNER_SLOTS: usize = 4;
pub const HISTORY_SLOTS: usize = 16;
const SEED_MAX: usize = 255;
const CRC_AT: usize = RECORD_BYTES - 4;

/// Replication data generations (DRBD-style UUIDs). Unused until replication lands; kept here
/// so a replica's record needs no new format.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Generations {
    pub current: u64,
    pub bitmap: [u64; PARTNER_SLOTS],
    pub history: [u64; HISTORY_SLOTS],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    pub block_size: u32,
    pub size_blocks: u64,
    /// New size of an extend that was started but not confirmed done.
    pub pending_size_blocks: u64,
    pub updated_unix_s: u64,
    pub identity_seed: String,
    /// The image file's inode when it was bound: a file copied or moved over the image (same
    /// name, same size) is a different inode. 0: not checked.
    pub inode: u64,
    pub generations: Generations,
}

/// The sidecar path for `image`: `x.img` → `x.img.tandem`.
pub fn record_path(image: &Path) -> PathBuf {
    let mut name = image.file_name().unwrap_or_default().to_os_string();
    name.push(SUFFIX);
    image.with_file_name(name)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    Length(usize),
    Magic,
    Version(u32),
    Crc,
    Field(&'static str),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Length(n) => write!(f, "is {n} bytes, not {RECORD_BYTES}"),
            DecodeError::Magic => f.write_str("is not a Tandem identity record (bad magic)"),
            DecodeError::Version(v) => write!(
                f,
                "has format version {v}; this Tandem reads version {VERSION} (upgrade Tandem)"
            ),
            DecodeError::Crc => f.write_str("is corrupt (checksum mismatch)"),
            DecodeError::Field(name) => write!(f, "is corrupt (invalid {name})"),
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl ImageRecord {
    pub fn new(identity_seed: &str, block_size: u32, size_bytes: u64) -> ImageRecord {
        ImageRecord {
            block_size,
            size_blocks: size_bytes / u64::from(block_size.max(1)),
            pending_size_blocks: 0,
            updated_unix_s: 0,
            identity_seed: identity_seed.to_string(),
            inode: 0,
            generations: Generations::default(),
        }
    }

    pub fn size_bytes(&self) -> u64 {
        self.size_blocks.saturating_mul(u64::from(self.block_size))
    }

    pub fn pending_bytes(&self) -> u64 {
        self.pending_size_blocks
            .saturating_mul(u64::from(self.block_size))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; RECORD_BYTES];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(RECORD_BYTES as u32).to_le_bytes());
        b[16..20].copy_from_slice(&self.block_size.to_le_bytes());
        b[24..32].copy_from_slice(&self.size_blocks.to_le_bytes());
        b[32..40].copy_from_slice(&self.pending_size_blocks.to_le_bytes());
        b[40..48].copy_from_slice(&self.updated_unix_s.to_le_bytes());
        // Seeds are validated to at most 255 bytes; a longer one is cut rather than panic.
        let seed = &self.identity_seed.as_bytes()[..self.identity_seed.len().min(SEED_MAX)];
        b[48..50].copy_from_slice(&(seed.len() as u16).to_le_bytes());
        b[50..50 + seed.len()].copy_from_slice(seed);
        b[320..328].copy_from_slice(&self.inode.to_le_bytes());
        b[512..520].copy_from_slice(&self.generations.current.to_le_bytes());
        for (i, g) in self.generations.bitmap.iter().enumerate() {
            b[520 + 8 * i..528 + 8 * i].copy_from_slice(&g.to_le_bytes());
        }
        for (i, g) in self.generations.history.iter().enumerate() {
            b[552 + 8 * i..560 + 8 * i].copy_from_slice(&g.to_le_bytes());
        }
        let crc = crc32c::crc32c(&b[..CRC_AT]);
        b[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<ImageRecord, DecodeError> {
        if b.len() != RECORD_BYTES {
            return Err(DecodeError::Length(b.len()));
        }
        if &b[0..8] != MAGIC {
            return Err(DecodeError::Magic);
        }
        if crc32c::crc32c(&b[..CRC_AT]) != u32_at(b, CRC_AT) {
            return Err(DecodeError::Crc);
        }
        let version = u32_at(b, 8);
        if version != VERSION {
            return Err(DecodeError::Version(version));
        }
        if u32_at(b, 12) as usize != RECORD_BYTES {
            return Err(DecodeError::Field("record length"));
        }
        let block_size = u32_at(b, 16);
        if !block_size.is_power_of_two() || !(512..=65536).contains(&block_size) {
            return Err(DecodeError::Field("block size"));
        }
        let seed_len = usize::from(u16::from_le_bytes([b[48], b[49]]));
        if seed_len == 0 || seed_len > SEED_MAX {
            return Err(DecodeError::Field("identity seed length"));
        }
        let identity_seed = std::str::from_utf8(&b[50..50 + seed_len])
            .map_err(|_| DecodeError::Field("identity seed"))?
            .to_string();
        let mut generations = Generations {
            current: u64_at(b, 512),
            ..Default::default()
        };
        for (i, g) in generations.bitmap.iter_mut().enumerate() {
            *g = u64_at(b, 520 + 8 * i);
        }
        for (i, g) in generations.history.iter_mut().enumerate() {
            *g = u64_at(b, 552 + 8 * i);
        }
        Ok(ImageRecord {
            block_size,
            size_blocks: u64_at(b, 24),
            pending_size_blocks: u64_at(b, 32),
            updated_unix_s: u64_at(b, 40),
            identity_seed,
            inode: u64_at(b, 320),
            generations,
        })
    }
}

/// Reads the record of `image`. `Ok(None)` when there is none.
pub fn read(image: &Path) -> io::Result<Option<Result<ImageRecord, DecodeError>>> {
    let path = record_path(image);
    match std::fs::metadata(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
        // Never read an arbitrarily large file someone put there.
        Ok(m) if m.len() != RECORD_BYTES as u64 => {
            return Ok(Some(Err(DecodeError::Length(
                usize::try_from(m.len()).unwrap_or(usize::MAX),
            ))))
        }
        Ok(_) => {}
    }
    let bytes = std::fs::read(&path)?;
    Ok(Some(ImageRecord::decode(&bytes)))
}

/// Writes the record of `image` atomically (temp file, fsync, rename, fsync of the directory),
/// so a crash leaves the old or the new record, never a torn one.
/// The record takes the image's current inode (the image must exist).
pub fn write(image: &Path, record: &ImageRecord) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut record = record.clone();
    record.inode = std::fs::metadata(image)?.ino();
    record.updated_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    crate::save_atomic(record_path(image), &record.encode())
}

/// What the configuration expects of an image.
#[derive(Debug, Clone)]
pub struct Expected<'a> {
    pub device: &'a str,
    pub identity_seed: &'a str,
    pub block_size: u32,
    /// `size` from the config; None for an image attached at its own size.
    pub size_bytes: Option<u64>,
}

/// The image may be served at `size_bytes`; `repaired` says what an interrupted change needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub size_bytes: u64,
    pub repaired: Option<String>,
}

/// Checks `image` against its record and the config, and finishes or undoes an interrupted
/// extend: the config is the commit point, so a pending extend whose new size reached the
/// config is completed, one that did not is rolled back (the grown tail was never served, so
/// cutting it loses nothing). Every refusal says what the admin can do.
pub fn verify(image: &Path, want: &Expected) -> Result<Verified, String> {
    let shown = image.display();
    let rebind = format!(
        "if this file really is device `{}`'s image, bind it with `tandem device rebind {}`",
        want.device, want.device
    );
    let meta = match std::fs::metadata(image) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(format!(
                "image {shown} is missing (a mount that did not come up, or a moved file?); \
                 it is never recreated: restore the file and run `tandem device rebind {}`, \
                 or remove the device",
                want.device
            ))
        }
        Err(e) => return Err(format!("cannot stat image {shown}: {e}")),
    };
    if !meta.is_file() {
        return Err(format!("{shown} is not a regular file"));
    }
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    let rec_path = record_path(image);
    let mut rec = match read(image) {
        Err(e) => return Err(format!("cannot read {}: {e}", rec_path.display())),
        Ok(None) => {
            return Err(format!(
                "identity record {} is missing, so nothing proves {shown} is this device's image; {rebind}",
                rec_path.display()
            ))
        }
        Ok(Some(Err(e))) => {
            return Err(format!(
                "identity record {} {e}; {rebind}",
                rec_path.display()
            ))
        }
        Ok(Some(Ok(r))) => r,
    };
    if rec.identity_seed != want.identity_seed {
        return Err(format!(
            "{shown} belongs to identity `{}`, not `{}` (a swapped file?); {rebind}",
            rec.identity_seed, want.identity_seed
        ));
    }
    if rec.inode != 0 && rec.inode != inode {
        return Err(format!(
            "{shown} was replaced by another file since it was bound (inode {inode}, bound {}): \
             a copy or restore over the image?; {rebind}",
            rec.inode
        ));
    }
    if rec.block_size != want.block_size {
        return Err(format!(
            "{shown} was bound with block size {}, the config says {}; fix block_size or {rebind}",
            rec.block_size, want.block_size
        ));
    }
    let mut len = meta.len();
    let mut repaired = None;
    if rec.pending_size_blocks != 0 {
        let (old, new) = (rec.size_bytes(), rec.pending_bytes());
        let configured = want.size_bytes.unwrap_or(old);
        if configured == new && len == new {
            repaired = Some(format!("completed an interrupted extend to {new} bytes"));
            rec.size_blocks = rec.pending_size_blocks;
        } else if configured == old && len >= old {
            if len > old {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(image)
                    .and_then(|f| f.set_len(old).and_then(|()| f.sync_all()));
                f.map_err(|e| format!("undoing an interrupted extend of {shown}: {e}"))?;
                len = old;
            }
            repaired = Some(format!(
                "rolled back an interrupted extend (to {new} bytes); the size stays {old} bytes"
            ));
        } else {
            return Err(format!(
                "an extend of {shown} from {old} to {new} bytes was interrupted, but the file is {len} bytes \
                 and the config says {configured}; {rebind}"
            ));
        }
        rec.pending_size_blocks = 0;
        write(image, &rec).map_err(|e| format!("updating {}: {e}", rec_path.display()))?;
    }
    let size = rec.size_bytes();
    if len != size {
        return Err(format!(
            "{shown} is {len} bytes but was bound at {size} bytes (truncated or swapped?); {rebind}"
        ));
    }
    if let Some(configured) = want.size_bytes {
        if configured != size {
            return Err(format!(
                "the config says {configured} bytes but {shown} was bound at {size} bytes; {rebind}"
            ));
        }
    }
    Ok(Verified {
        size_bytes: size,
        repaired,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected(size: Option<u64>) -> Expected<'static> {
        Expected {
            device: "d",
            identity_seed: "n1-d",
            block_size: 512,
            size_bytes: size,
        }
    }

    fn image(dir: &Path, len: u64) -> PathBuf {
        let p = dir.join("d.img");
        std::fs::File::create(&p).unwrap().set_len(len).unwrap();
        p
    }

    #[test]
    fn round_trip_and_path() {
        let mut r = ImageRecord::new("seed", 4096, 1 << 20);
        r.generations.current = 7;
        r.generations.bitmap[3] = 9;
        r.generations.history[15] = 11;
        let b = r.encode();
        assert_eq!(b.len(), RECORD_BYTES);
        assert_eq!(ImageRecord::decode(&b).unwrap(), r);
        assert_eq!(
            record_path(Path::new("/a/x.img")),
            Path::new("/a/x.img.tandem")
        );
    }

    #[test]
    fn corruption_is_detected() {
        let good = ImageRecord::new("seed", 512, 4096).encode();
        let mut flipped = good.clone();
        flipped[30] ^= 1;
        assert_eq!(ImageRecord::decode(&flipped), Err(DecodeError::Crc));
        let mut magic = good.clone();
        magic[0] = b'X';
        assert_eq!(ImageRecord::decode(&magic), Err(DecodeError::Magic));
        assert_eq!(
            ImageRecord::decode(&good[..100]),
            Err(DecodeError::Length(100))
        );
    }

    #[test]
    fn missing_image_and_record_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = verify(&dir.path().join("d.img"), &expected(Some(4096))).unwrap_err();
        assert!(
            err.contains("missing") && err.contains("never recreated"),
            "{err}"
        );
        assert!(!dir.path().join("d.img").exists(), "nothing was created");
        let img = image(dir.path(), 4096);
        let err = verify(&img, &expected(Some(4096))).unwrap_err();
        assert!(
            err.contains("identity record") && err.contains("rebind"),
            "{err}"
        );
        std::fs::write(record_path(&img), b"garbage").unwrap();
        let err = verify(&img, &expected(Some(4096))).unwrap_err();
        assert!(err.contains("bytes, not 4096"), "{err}");
    }

    #[test]
    fn swapped_truncated_or_resized_images_refused() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path(), 8192);
        write(&img, &ImageRecord::new("other", 512, 8192)).unwrap();
        assert!(verify(&img, &expected(None))
            .unwrap_err()
            .contains("belongs to identity"));
        write(&img, &ImageRecord::new("n1-d", 512, 8192)).unwrap();
        assert_eq!(verify(&img, &expected(None)).unwrap().size_bytes, 8192);
        std::fs::File::options()
            .write(true)
            .open(&img)
            .unwrap()
            .set_len(4096)
            .unwrap();
        assert!(verify(&img, &expected(None))
            .unwrap_err()
            .contains("truncated"));
        std::fs::File::options()
            .write(true)
            .open(&img)
            .unwrap()
            .set_len(8192)
            .unwrap();
        assert!(verify(&img, &expected(Some(16384)))
            .unwrap_err()
            .contains("config says"));
        // Another file of the same size moved over the image is caught by its inode.
        let other = dir.path().join("other.img");
        std::fs::File::create(&other)
            .unwrap()
            .set_len(8192)
            .unwrap();
        std::fs::rename(&other, &img).unwrap();
        assert!(verify(&img, &expected(None))
            .unwrap_err()
            .contains("replaced by another file"));
    }

    #[test]
    fn interrupted_extend_rolls_back_before_the_config_commit() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path(), 4096);
        let mut r = ImageRecord::new("n1-d", 512, 4096);
        r.pending_size_blocks = 64;
        write(&img, &r).unwrap();
        // Killed while growing: the file is part-way, the config still says the old size.
        std::fs::File::options()
            .write(true)
            .open(&img)
            .unwrap()
            .set_len(20480)
            .unwrap();
        let v = verify(&img, &expected(Some(4096))).unwrap();
        assert_eq!(v.size_bytes, 4096);
        assert!(v.repaired.unwrap().contains("rolled back"));
        assert_eq!(std::fs::metadata(&img).unwrap().len(), 4096);
        let after = read(&img).unwrap().unwrap().unwrap();
        assert_eq!(after.pending_size_blocks, 0);
        assert_eq!(verify(&img, &expected(Some(4096))).unwrap().repaired, None);
    }

    #[test]
    fn interrupted_extend_completes_after_the_config_commit() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path(), 32768);
        let mut r = ImageRecord::new("n1-d", 512, 4096);
        r.pending_size_blocks = 64;
        write(&img, &r).unwrap();
        let v = verify(&img, &expected(Some(32768))).unwrap();
        assert_eq!(v.size_bytes, 32768);
        assert!(v.repaired.unwrap().contains("completed"));
        let after = read(&img).unwrap().unwrap().unwrap();
        assert_eq!((after.size_blocks, after.pending_size_blocks), (64, 0));
    }
}
