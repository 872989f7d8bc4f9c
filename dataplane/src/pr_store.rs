//! Persistent-reservation state (APTPL) kept in a small file, replaced atomically so a
//! crash leaves either the old or the new state.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

pub struct FilePrStore {
    path: PathBuf,
}

impl FilePrStore {
    pub fn new(path: PathBuf) -> FilePrStore {
        FilePrStore { path }
    }
}

impl tandem_scsi::PrStore for FilePrStore {
    fn save(&self, blob: &[u8]) -> io::Result<()> {
        // `x.img.pr` → `x.img.pr.tmp`; 0600: reservation keys are not for other local users.
        let mut tmp_name = self.path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(".tmp");
        let tmp = self.path.with_file_name(tmp_name);
        let _ = fs::remove_file(&tmp);
        {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(blob)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    fn load(&self) -> io::Result<Option<Vec<u8>>> {
        match fs::read(&self.path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}
