//! The replica metadata ([`ReplicaMeta`]) on disk: JSON, replaced atomically (temporary file,
//! fsync, rename, fsync of the directory), so a crash leaves the old or the new version.

use std::io::Write;
use std::path::PathBuf;

use tandem_ha::ReplicaMeta;

/// Where a replica's metadata lives; `None` keeps it in memory (RAM devices).
pub struct MetaStore {
    path: Option<PathBuf>,
}

impl MetaStore {
    pub fn new(path: Option<PathBuf>) -> MetaStore {
        MetaStore { path }
    }

    /// The stored metadata; absent means a replica that was never synchronized (full sync).
    pub fn load(&self) -> Result<ReplicaMeta, String> {
        let Some(path) = &self.path else {
            return Ok(ReplicaMeta::default());
        };
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{}: not valid replica metadata: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ReplicaMeta::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Makes `meta` durable (blocking: a few milliseconds, only on membership changes).
    pub fn save(&self, meta: &ReplicaMeta) -> Result<(), String> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let err = |e: std::io::Error| format!("{}: {e}", path.display());
        let json = serde_json::to_vec_pretty(meta).map_err(|e| e.to_string())?;
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or_else(|| std::path::Path::new("."));
        let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(".tmp");
        let tmp = dir.join(tmp_name);
        {
            let mut f = std::fs::File::create(&tmp).map_err(err)?;
            f.write_all(&json).map_err(err)?;
            f.sync_all().map_err(err)?;
        }
        std::fs::rename(&tmp, path).map_err(err)?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_absent() {
        let dir = tempfile::tempdir().unwrap();
        let s = MetaStore::new(Some(dir.path().join("d.ha-meta")));
        assert_eq!(s.load().unwrap(), ReplicaMeta::default());
        let m = ReplicaMeta {
            version: 7,
            was_sequencer: true,
            ..Default::default()
        };
        s.save(&m).unwrap();
        assert_eq!(s.load().unwrap(), m);
        std::fs::write(dir.path().join("d.ha-meta"), b"{garbage").unwrap();
        assert!(s.load().is_err());
    }
}
