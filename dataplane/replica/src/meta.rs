//! The replica metadata ([`ReplicaMeta`]) on disk: JSON, replaced atomically (temporary file,
//! fsync, rename, fsync of the directory), so a crash leaves the old or the new version.

use std::io::Write;
use std::path::PathBuf;

use tandem_ha::ReplicaMeta;

/// Where a replica's metadata lives; `None` keeps it in memory (RAM devices).
pub struct MetaStore {
    path: Option<PathBuf>,
}

/// The metadata of a copy that holds no replicated history: a generation of its own, unique
/// to this start, so the generation comparison never finds it "in sync" with another copy
/// (two blank copies are not the same data: one may be an existing disk, the other a new
/// empty one). Such a copy is fully synchronized from the sequencer, or, when every copy is
/// blank and no initial configuration was recorded, an administrator decides.
pub fn blank_meta() -> ReplicaMeta {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let unique = nanos ^ (u64::from(std::process::id()) << 40);
    ReplicaMeta::new(tandem_ha::GenerationId::blank(unique))
}

impl MetaStore {
    pub fn new(path: Option<PathBuf>) -> MetaStore {
        MetaStore { path }
    }

    /// The stored metadata; absent means a replica that was never synchronized (a RAM
    /// device's is never stored): see [`blank_meta`].
    pub fn load(&self) -> Result<ReplicaMeta, String> {
        let Some(path) = &self.path else {
            return Ok(blank_meta());
        };
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{}: not valid replica metadata: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(blank_meta()),
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
        let a = s.load().unwrap();
        let b = MetaStore::new(None).load().unwrap();
        assert_ne!(a.current, b.current, "two blank copies never look in sync");
        assert_eq!(
            tandem_ha::compare(tandem_ha::NodeId(1), &a, tandem_ha::NodeId(2), &b),
            tandem_ha::SyncDecision::Unrelated
        );
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
