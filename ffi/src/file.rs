//! File helpers for `O_DIRECT` image files and block devices.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// A file opened by [`open_direct`]; `direct` says whether `O_DIRECT` is in effect.
#[derive(Debug)]
pub struct DirectFile {
    /// The open file.
    pub file: File,
    /// False if the filesystem refused `O_DIRECT` (e.g. tmpfs) and the file was opened
    /// through the page cache instead.
    pub direct: bool,
}

/// Opens `path` with `O_DIRECT` (read-only or read-write, optionally creating it with mode
/// 0600). If the filesystem refuses `O_DIRECT` with `EINVAL` the file is opened without it and
/// `direct` is false; callers should log that.
pub fn open_direct(path: &Path, read_only: bool, create: bool) -> io::Result<DirectFile> {
    let open = |flags: i32| {
        let mut o = OpenOptions::new();
        o.read(true)
            .write(!read_only)
            .custom_flags(flags)
            .mode(0o600);
        if create && !read_only {
            o.create(true);
        }
        o.open(path)
    };
    match open(libc::O_DIRECT) {
        Ok(file) => Ok(DirectFile { file, direct: true }),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(DirectFile {
            file: open(0)?,
            direct: false,
        }),
        Err(e) => Err(e),
    }
}

/// Allocates `[0, len)` of a regular file with real blocks (`fallocate` mode 0), extending
/// its size to at least `len`. Fails with the OS error (e.g. `EOPNOTSUPP`) if the filesystem
/// cannot preallocate; it never falls back to a sparse file.
pub fn allocate_thick(file: &File, len: u64) -> io::Result<()> {
    fallocate(file, 0, 0, len)
}

/// Deallocates `[off, off+len)` keeping the file size (`FALLOC_FL_PUNCH_HOLE |
/// FALLOC_FL_KEEP_SIZE`); the range reads back as zeroes afterwards.
pub fn punch_hole(file: &File, off: u64, len: u64) -> io::Result<()> {
    fallocate(
        file,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        off,
        len,
    )
}

fn fallocate(file: &File, mode: i32, off: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let off_i = i64::try_from(off).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let len_i = i64::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    loop {
        // SAFETY: plain syscall on a descriptor borrowed from a live `File`.
        let r = unsafe { libc::fallocate(file.as_raw_fd(), mode, off_i, len_i) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Size in bytes of a regular file or a block device.
pub fn device_size(file: &File) -> io::Result<u64> {
    let meta = file.metadata()?;
    if meta.file_type().is_block_device() {
        // Seeking to the end of a block device reports its size; `&File` implements Seek and
        // the offset does not matter to us (all I/O is positional).
        let mut f = file;
        f.seek(SeekFrom::End(0))
    } else {
        Ok(meta.len())
    }
}

/// Direct-I/O alignment requirements of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DioAlignment {
    /// Required alignment of the memory buffer, bytes.
    pub mem: u32,
    /// Required alignment of file offsets and lengths, bytes (the logical block size).
    pub offset: u32,
}

/// Direct-I/O alignment of `file`:
/// - block devices: `BLKSSZGET` (logical sector size) for both;
/// - regular files: `statx(STATX_DIOALIGN)` (Linux 6.1+, filesystem support needed);
/// - otherwise a probe: an `O_DIRECT` read of 512 bytes at offset 0 into a 4096-aligned
///   buffer; if that is refused, 4096. If `file` was not opened with `O_DIRECT`, the probe
///   says 512 (any alignment works through the page cache).
pub fn dio_alignment(file: &File) -> DioAlignment {
    if let Ok(meta) = file.metadata() {
        if meta.file_type().is_block_device() {
            if let Some(sz) = blkszget(file) {
                return DioAlignment {
                    mem: sz,
                    offset: sz,
                };
            }
        }
    }
    if let Some(a) = statx_dioalign(file) {
        return a;
    }
    let sz = probe_offset_align(file);
    DioAlignment {
        mem: sz,
        offset: sz,
    }
}

/// The logical block size for `O_DIRECT` I/O on `file` (see [`dio_alignment`]).
pub fn logical_block_size(file: &File) -> u32 {
    dio_alignment(file).offset
}

fn blkszget(file: &File) -> Option<u32> {
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one c_int through the pointer, which points at a live local.
    let r = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            libc::BLKSSZGET,
            &mut size as *mut libc::c_int,
        )
    };
    (r == 0 && size > 0).then_some(size as u32)
}

fn statx_dioalign(file: &File) -> Option<DioAlignment> {
    // SAFETY: an all-zero `statx` is a valid value (plain integers and padding).
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: empty path + AT_EMPTY_PATH makes statx describe the fd; `stx` is a valid buffer.
    let r = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if r != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 || stx.stx_dio_offset_align == 0 {
        return None;
    }
    Some(DioAlignment {
        mem: stx.stx_dio_mem_align.max(1),
        offset: stx.stx_dio_offset_align,
    })
}

fn probe_offset_align(file: &File) -> u32 {
    use std::os::unix::fs::FileExt;
    let mut buf = crate::AlignedBuf::new(4096, 4096);
    buf.set_len(512);
    match file.read_at(&mut buf, 0) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => 4096,
        _ => 512,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A directory for O_DIRECT tests: /var/tmp unless it is tmpfs-like, else the cwd.
    pub fn test_dir() -> std::path::PathBuf {
        std::path::PathBuf::from("/var/tmp")
    }

    #[test]
    fn open_allocate_punch() {
        let dir = tempfile::tempdir_in(test_dir()).unwrap();
        let path = dir.path().join("img");
        let df = open_direct(&path, false, true).unwrap();
        allocate_thick(&df.file, 1 << 20).unwrap();
        assert_eq!(device_size(&df.file).unwrap(), 1 << 20);
        let a = dio_alignment(&df.file);
        assert!(
            a.offset.is_power_of_two() && a.offset >= 512 && a.offset <= 4096,
            "{a:?}"
        );
        assert_eq!(logical_block_size(&df.file), a.offset);
        // write non-zero data through a normal fd, punch, read back zeroes
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&[0xab; 8192], 4096).unwrap();
        punch_hole(&df.file, 4096, 4096).unwrap();
        let mut back = [0u8; 8192];
        f.read_exact_at(&mut back, 4096).unwrap();
        assert!(back[..4096].iter().all(|&b| b == 0));
        assert!(back[4096..].iter().all(|&b| b == 0xab));
        assert_eq!(device_size(&f).unwrap(), 1 << 20);
        // read-only open of an existing file, no create of a missing one
        assert!(open_direct(&path, true, false).is_ok());
        assert!(open_direct(&dir.path().join("missing"), false, false).is_err());
    }
}
