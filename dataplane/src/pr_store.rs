//! Persistent-reservation state (APTPL) kept in a small file, replaced atomically so a
//! crash leaves either the old or the new state.

use std::fs::{self, File};
use std::io::{self, Write};
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
        let tmp = self.path.with_extension("tmp");
        {
            let mut f = File::create(&tmp)?;
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
