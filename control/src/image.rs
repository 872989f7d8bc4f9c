//! Thick-provisioned image files: created or grown with every block allocated up front.
//!
//! Allocation goes through `tandem_ffi::allocate_thick` (fallocate mode 0) in steps of
//! [`STEP_BYTES`] so callers can show progress; a filesystem that cannot preallocate gets
//! zeroes written instead (slower, same result). A new image is built under a temporary name
//! (`.NAME.partial`) and renamed into place when complete, so a crash never leaves a short
//! image under the real name.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes allocated per step (progress granularity).
pub const STEP_BYTES: u64 = 256 << 20;
/// Zero-fill buffer size for filesystems without fallocate.
const ZERO_CHUNK_BYTES: usize = 1 << 20;

/// Where a new image is built before it is renamed to `path`.
pub fn partial_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.partial"))
}

/// Creates `path` with `size_bytes` allocated; fails if it exists. `done` counts bytes
/// allocated so far.
pub fn create_thick(path: &Path, size_bytes: u64, done: &AtomicU64) -> io::Result<()> {
    if path.exists() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} already exists", path.display()),
        ));
    }
    let partial = partial_path(path);
    let result = (|| {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&partial)?;
        allocate(&file, 0, size_bytes, done)?;
        file.sync_all()?;
        std::fs::rename(&partial, path)?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

/// Grows an existing image to `new_size_bytes`, allocating the new part. Refuses to shrink.
pub fn grow_thick(path: &Path, new_size_bytes: u64, done: &AtomicU64) -> io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    let len = file.metadata()?.len();
    if new_size_bytes < len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is {len} bytes; images can only grow", path.display()),
        ));
    }
    allocate(&file, len, new_size_bytes, done)?;
    file.sync_all()
}

fn allocate(file: &File, from: u64, to: u64, done: &AtomicU64) -> io::Result<()> {
    let mut end = from;
    while end < to {
        end = (end + STEP_BYTES).min(to);
        match tandem_ffi::allocate_thick(file, end) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(95) /* EOPNOTSUPP */ => return zero_fill(file, from, to, done),
            Err(e) => return Err(e),
        }
        done.store(end - from, Ordering::Relaxed);
    }
    Ok(())
}

fn zero_fill(mut file: &File, from: u64, to: u64, done: &AtomicU64) -> io::Result<()> {
    let zeros = vec![0u8; ZERO_CHUNK_BYTES];
    file.seek(SeekFrom::Start(from))?;
    let mut pos = from;
    while pos < to {
        let n = (to - pos).min(ZERO_CHUNK_BYTES as u64) as usize;
        file.write_all(&zeros[..n])?;
        pos += n as u64;
        done.store(pos - from, Ordering::Relaxed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn create_and_grow_allocate_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.img");
        let done = AtomicU64::new(0);
        create_thick(&path, 3 * STEP_BYTES / 2, &done).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 3 * STEP_BYTES / 2);
        assert!(
            meta.blocks() * 512 >= meta.len(),
            "not thick: {} blocks",
            meta.blocks()
        );
        assert_eq!(done.load(Ordering::Relaxed), 3 * STEP_BYTES / 2);
        assert!(!partial_path(&path).exists());
        assert_eq!(
            create_thick(&path, 4096, &done).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );

        grow_thick(&path, 2 * STEP_BYTES, &done).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 2 * STEP_BYTES);
        assert!(meta.blocks() * 512 >= meta.len());
        assert!(grow_thick(&path, 4096, &done).is_err());
    }

    #[test]
    fn failure_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir/d.img");
        assert!(create_thick(&path, 4096, &AtomicU64::new(0)).is_err());
        assert!(!partial_path(&path).exists());
    }
}
