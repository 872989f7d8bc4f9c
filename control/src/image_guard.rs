//! Checks on image paths and RAM sizes that need the file system or the machine, done before
//! a change is saved (the config crate checks what the text alone can show). The data plane
//! repeats them when it opens a device (`tandem_dataplane::admission`).
//!
//! - Paths are in normal form and confined to the image directories, also after resolving
//!   symlinks, so a token holder cannot create or attach files anywhere on the node.
//! - One device per underlying file: compared by (st_dev, st_ino), so `..`, symlink and hard
//!   link aliases of an image in use are refused.
//! - Block devices only when the request says `block_device`.
//! - RAM disks and caches follow the memory rule (`tandem_config::memory`).
//! - Orphaned temporaries of interrupted creates are removed at start.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use tandem_config::memory::{self, MemInfo};
use tandem_config::{check_confined, check_normal_path, Backing, NodeConfig};

use crate::error::ApiError;

/// Refuses `path` unless it is in normal form, inside `dirs` lexically and after resolving
/// symlinks (of the file if it exists, else of its directory).
pub fn confine(path: &Path, dirs: &[PathBuf]) -> Result<(), ApiError> {
    check_normal_path(path).map_err(ApiError::bad_request)?;
    let absolute: Vec<PathBuf> = dirs
        .iter()
        .map(|d| std::path::absolute(d).unwrap_or_else(|_| d.clone()))
        .collect();
    let lexical: Vec<&Path> = absolute.iter().map(PathBuf::as_path).collect();
    check_confined(path, &lexical).map_err(ApiError::bad_request)?;
    let real = match path.canonicalize() {
        Ok(p) => p,
        Err(_) => {
            let parent = path.parent().unwrap_or(Path::new("/"));
            let name = path.file_name().unwrap_or_default();
            parent
                .canonicalize()
                .map_err(|e| {
                    ApiError::bad_request(format!(
                        "directory {} is not usable: {e}",
                        parent.display()
                    ))
                })?
                .join(name)
        }
    };
    let inside = dirs
        .iter()
        .filter_map(|d| d.canonicalize().ok())
        .any(|d| real.starts_with(&d) && real != d);
    if inside {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{} resolves to {}, outside the image directories; use a path inside them or add a directory to `node.image_dirs`",
            path.display(),
            real.display()
        )))
    }
}

/// (st_dev, st_ino) of an existing file.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Refuses `path` when it is the same file as the image of another device in `config`.
pub fn unique_file(config: &NodeConfig, path: &Path, except: &str) -> Result<(), ApiError> {
    let Some(id) = file_id(path) else {
        return Ok(());
    };
    for d in config.devices.iter().filter(|d| d.name != except) {
        if let Backing::File { path: other, .. } = d.backing() {
            if file_id(other) == Some(id) {
                return Err(ApiError::conflict(format!(
                    "{} is the same file as {}, the image of device `{}`; one file backs at most one device",
                    path.display(),
                    other.display(),
                    d.name
                )));
            }
        }
    }
    Ok(())
}

/// Block devices must be asked for; regular files must not claim to be one.
pub fn check_kind(path: &Path, block_device: bool) -> Result<(), ApiError> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    match (meta.file_type().is_block_device(), block_device) {
        (true, false) => Err(ApiError::bad_request(format!(
            "{} is a block device; pass `block_device` (`--block-device`) to attach one",
            path.display()
        ))),
        (false, true) => Err(ApiError::bad_request(format!(
            "{} is not a block device",
            path.display()
        ))),
        _ => Ok(()),
    }
}

/// The memory rule for a change from `old` to `new` (a create or extend happening now).
pub fn check_ram(old: &NodeConfig, new: &NodeConfig) -> Result<(), ApiError> {
    let (before, after) = (old.ram_bytes(), new.ram_bytes());
    if after <= before {
        return Ok(());
    }
    let mem = MemInfo::read().map_err(|e| {
        ApiError::internal(format!(
            "cannot read /proc/meminfo to check the RAM size: {e}"
        ))
    })?;
    memory::check(&mem, after, after - before, true).map_err(ApiError::bad_request)
}

/// Removes `.NAME.partial` files (images whose create was interrupted) from `dirs`. Called at
/// start, before any create can run.
/// Looks one level of subdirectories deep too (`--location DIR/sub`).
pub fn clean_partials(dirs: &[PathBuf]) {
    for dir in dirs {
        clean_dir(dir, 1);
    }
}

fn clean_dir(dir: &Path, depth: u32) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if depth > 0 && entry.file_type().is_ok_and(|t| t.is_dir()) {
            clean_dir(&entry.path(), depth - 1);
            continue;
        }
        {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let is_partial = name.starts_with('.') && name.ends_with(".partial");
            let is_file = entry.file_type().is_ok_and(|t| t.is_file());
            if is_partial && is_file {
                let path = entry.path();
                match std::fs::remove_file(&path) {
                    Ok(()) => {
                        tracing::warn!(path = %path.display(), "removed the temporary image of an interrupted create")
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "could not remove the temporary image of an interrupted create")
                    }
                }
            }
        }
    }
}

/// Directories to clean at start: the image directories and every configured image's own.
pub fn partial_dirs(config: &NodeConfig, default_dir: &Path) -> Vec<PathBuf> {
    let mut dirs = config.allowed_image_dirs(default_dir);
    for d in &config.devices {
        if let Backing::File { path, .. } = d.backing() {
            if let Some(parent) = path.parent() {
                if !dirs.iter().any(|x| x == parent) {
                    dirs.push(parent.to_path_buf());
                }
            }
        }
    }
    dirs
}
