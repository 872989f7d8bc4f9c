//! Decides whether a device may be opened, before anything is allocated or read: the data
//! plane's own check of what the control service already validated, because a hand-edited
//! `node.toml` or a changed disk reaches it without the control service's checks. A refusal
//! fails that device alone (see `Server::start`); it never stops the node.
//!
//! Checks: size bounds and the memory rule (`tandem_config::memory`); image files confined to
//! the image directories (compared after resolving symlinks); block devices only when flagged;
//! one device per underlying file (by device and inode, so `..` and symlink aliases of one
//! file cannot become two devices with separate caches); and the image's identity record
//! (`tandem_config::image_id`), which also finishes or undoes an interrupted extend.

use crate::server::{Backing, DeviceSpec};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use tandem_config::image_id::{self, Expected};
use tandem_config::memory::{self, MemInfo};

/// (st_dev, st_ino): what makes two paths one file.
pub type FileId = (u64, u64);

/// What an admitted device holds on to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claim {
    /// RAM disk plus RAM cache bytes.
    pub ram_bytes: u64,
    /// A RAM disk (grows in memory when extended).
    pub ram_disk: bool,
    /// (st_dev, st_ino) of the image file or block device.
    pub file_id: Option<FileId>,
    /// Size the file must be opened at (from the identity record), when checked.
    pub size_bytes: Option<u64>,
}

/// Checks `spec` against the devices already admitted (`others`). `mem`: the machine's
/// memory, or None to skip the memory rule (when /proc/meminfo cannot be read).
pub fn admit(spec: &DeviceSpec, others: &[Claim], mem: Option<&MemInfo>) -> Result<Claim, String> {
    let bs = u64::from(spec.block_size);
    if bs != 512 && bs != 4096 {
        return Err(format!("block size {bs} is not 512 or 4096"));
    }
    let cache = if spec.cache == tandem_bdev::CacheMode::None {
        0
    } else {
        spec.cache_size_bytes
    };
    if cache > tandem_config::RAM_BYTES_MAX {
        return Err(format!(
            "cache size {cache} is more than the largest supported, {}",
            tandem_config::RAM_BYTES_MAX
        ));
    }
    let mut claim = Claim::default();
    match &spec.backing {
        Backing::Ram { size_bytes } => {
            let size = *size_bytes;
            if size == 0 || size % bs != 0 || size > tandem_config::RAM_BYTES_MAX {
                return Err(format!(
                    "RAM size {size} must be a positive multiple of the block size {bs} and at most {}",
                    tandem_config::RAM_BYTES_MAX
                ));
            }
            claim.ram_bytes = size.saturating_add(cache);
            claim.ram_disk = true;
        }
        Backing::File { path, size_bytes } => {
            claim.ram_bytes = cache;
            let (file_id, size) = admit_file(spec, path, *size_bytes)?;
            if let Some(id) = file_id {
                if others.iter().any(|c| c.file_id == Some(id)) {
                    return Err(format!(
                        "{} is the same file as another device's image (by device and inode); \
                         one file backs at most one device",
                        path.display()
                    ));
                }
            }
            claim.file_id = file_id;
            claim.size_bytes = size;
        }
    }
    if let Some(mem) = mem {
        let total = others
            .iter()
            .map(|c| c.ram_bytes)
            .fold(claim.ram_bytes, u64::saturating_add);
        memory::check(mem, total, claim.ram_bytes, false)?;
    }
    Ok(claim)
}

fn admit_file(
    spec: &DeviceSpec,
    path: &Path,
    size_bytes: Option<u64>,
) -> Result<(Option<FileId>, Option<u64>), String> {
    let shown = path.display();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && spec.create_if_missing => {
            // `serve --file X --size S`: the command line asked for a new image.
            return Ok((None, size_bytes));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && spec.verify_identity => {
            // The identity check words this (the image is never recreated).
            return Err(image_id::verify(path, &expected(spec, size_bytes))
                .err()
                .unwrap_or_else(|| format!("image {shown} is missing")));
        }
        Err(e) => return Err(format!("cannot use {shown}: {e}")),
    };
    let id = Some((meta.dev(), meta.ino()));
    if meta.file_type().is_block_device() {
        if !spec.block_device {
            return Err(format!(
                "{shown} is a block device; set `block_device = true` on the device to use one"
            ));
        }
        return Ok((id, size_bytes));
    }
    if !meta.is_file() {
        return Err(format!("{shown} is not a regular file or block device"));
    }
    if spec.block_device {
        return Err(format!(
            "{shown} is a regular file but the device says `block_device = true`"
        ));
    }
    confine(path, &spec.image_dirs)?;
    if !spec.verify_identity {
        return Ok((id, size_bytes));
    }
    let v = image_id::verify(path, &expected(spec, size_bytes))?;
    if let Some(what) = &v.repaired {
        tracing::warn!(device = %spec.name, path = %shown, "{what}");
    }
    Ok((id, Some(v.size_bytes)))
}

fn expected(spec: &DeviceSpec, size_bytes: Option<u64>) -> Expected<'_> {
    Expected {
        device: &spec.name,
        identity_seed: &spec.identity_seed,
        block_size: spec.block_size,
        size_bytes,
    }
}

/// The file, with every symlink resolved, lies below one of `dirs` (also resolved). Empty
/// `dirs`: not confined (the `serve` command line names its file itself).
fn confine(path: &Path, dirs: &[PathBuf]) -> Result<(), String> {
    if dirs.is_empty() {
        return Ok(());
    }
    let real = path
        .canonicalize()
        .map_err(|e| format!("cannot resolve {}: {e}", path.display()))?;
    let inside = dirs
        .iter()
        .filter_map(|d| d.canonicalize().ok())
        .any(|d| real.starts_with(&d) && real != d);
    if inside {
        Ok(())
    } else {
        Err(format!(
            "{} (really {}) is outside the image directories ({}); move the image there or add its directory to `node.image_dirs`",
            path.display(),
            real.display(),
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}
