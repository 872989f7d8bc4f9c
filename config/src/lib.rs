//! Tandem node configuration: the TOML schema (`node.toml`), validation with errors that name
//! the file, the key and the reason, atomic persistence, and the versioned IPC messages between
//! `tandem-control` and `tandem-dataplane`. See `docs/config.md`.
#![forbid(unsafe_code)]

mod error;
pub mod image_id;
pub mod ipc;
pub mod memory;
mod model;
pub mod names;
pub mod reconcile;
mod size;

pub use error::{ConfigError, FieldError, ValidationErrors};
pub use model::*;
pub use size::{format_size, format_size_approx, parse_size, Size, SizeError};

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Replaces `path` with `bytes` so that a crash at any point leaves either the old or the new
/// file, never a mix: write a temp file in the same directory (mode 0600), fsync it, rename it
/// over `path`, fsync the directory. The temp file is removed if any step fails.
pub fn save_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let path = path.as_ref();
    let file_name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "save_atomic: path has no file name",
        )
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(
        ".{}.tmp.{}.{}",
        file_name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests;
