//! A device's disk journal in two slot files, `<dir>/<device>.ha-journal.0` and `.1`.
//!
//! fsync discipline: every record is written whole to the slot that does *not* hold the
//! newest good record (truncate, write, `fdatasync`), so a crash mid-write leaves the other
//! slot intact; the directory is fsynced once when a slot file is first created. The
//! replication thread writes a record before it acts on any other output of the same engine
//! step (the engine puts `PersistJournal` first), so a region is in the durable activity log
//! before a write to it is submitted, and a partner's bit before the write that set it.
//! Reading: the valid record with the higher sequence number wins; if neither slot is valid
//! (both corrupt, or never written), the journal is treated as lost: every partner's bitmap
//! is incomplete and the next resync is full. Never a panic.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use tandem_ha::journal::{JournalRecord, PersistedJournal};

use crate::journal_codec::{decode, encode, newest, Record};

pub struct JournalStore {
    paths: [PathBuf; 2],
    dir: PathBuf,
    num_regions: u64,
    /// The slot the next record goes to, and its sequence number.
    next_slot: usize,
    next_seq: u64,
    /// The durable state (records carry only what changed; the file holds everything).
    state: PersistedJournal,
    dir_synced: bool,
    /// Records written since start (reported by tests and logs).
    pub writes: u64,
}

/// What was found at start.
pub enum Loaded {
    /// Nothing written yet (a new device or a first start with this journal kind).
    Empty,
    Found(PersistedJournal),
    /// Slots exist but none is valid: the reason, for the log. Treated as lost.
    Corrupt(String),
}

impl JournalStore {
    pub fn open(dir: &Path, device: &str, num_regions: u64) -> (JournalStore, Loaded) {
        let paths = [0, 1].map(|i| dir.join(format!("{device}.ha-journal.{i}")));
        let bytes: Vec<Option<Vec<u8>>> = paths.iter().map(|p| std::fs::read(p).ok()).collect();
        let found = newest([bytes[0].as_deref(), bytes[1].as_deref()]);
        let mut store = JournalStore {
            paths,
            dir: dir.to_path_buf(),
            num_regions,
            next_slot: 0,
            next_seq: 1,
            state: PersistedJournal::default(),
            dir_synced: false,
            writes: 0,
        };
        let loaded = match found {
            Some((slot, rec)) if rec.num_regions == num_regions => {
                store.next_slot = 1 - slot;
                store.next_seq = rec.seq + 1;
                store.state = rec.journal.clone();
                Loaded::Found(rec.journal)
            }
            Some((slot, rec)) => {
                store.next_slot = 1 - slot;
                store.next_seq = rec.seq + 1;
                Loaded::Corrupt(format!(
                    "journal for {} regions, device has {num_regions}",
                    rec.num_regions
                ))
            }
            None if bytes.iter().all(Option::is_none) => Loaded::Empty,
            None => {
                let why: Vec<String> = bytes
                    .iter()
                    .flatten()
                    .map(|b| decode(b).err().map(|e| e.to_string()).unwrap_or_default())
                    .collect();
                Loaded::Corrupt(why.join("; "))
            }
        };
        (store, loaded)
    }

    /// Removes both slots (after a failed write: a restart must not trust an old record).
    pub fn discard(&self) {
        for p in &self.paths {
            let _ = std::fs::remove_file(p);
        }
        let _ = File::open(&self.dir).and_then(|d| d.sync_all());
    }

    /// Makes `rec` durable (blocking: one write and one fdatasync of the slot file).
    pub fn persist(&mut self, rec: &JournalRecord) -> Result<(), String> {
        self.state.apply(rec);
        let bytes = encode(&Record {
            seq: self.next_seq,
            num_regions: self.num_regions,
            journal: self.state.clone(),
        });
        let path = &self.paths[self.next_slot];
        let err = |e: std::io::Error| format!("{}: {e}", path.display());
        let created = !path.exists();
        let mut f: File = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)
            .map_err(err)?;
        f.write_all(&bytes).map_err(err)?;
        f.sync_data().map_err(err)?;
        if created || !self.dir_synced {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| format!("{}: {e}", self.dir.display()))?;
            self.dir_synced = true;
        }
        self.next_slot = 1 - self.next_slot;
        self.next_seq += 1;
        self.writes += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_ha::journal::{DirtyBitmap, PartnerRecord};
    use tandem_ha::{NodeId, RegionIndex};

    fn rec(region: u64) -> JournalRecord {
        let mut d = DirtyBitmap::new(100);
        d.set(RegionIndex(region));
        JournalRecord {
            partners: Some(vec![PartnerRecord {
                partner: NodeId(2),
                complete: true,
                dirty: d,
            }]),
            activity: Some(vec![RegionIndex(region)]),
        }
    }

    #[test]
    fn newest_record_survives_a_torn_write_of_the_next() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut s, loaded) = JournalStore::open(dir.path(), "d", 100);
        assert!(matches!(loaded, Loaded::Empty));
        s.persist(&rec(1)).expect("persist");
        s.persist(&rec(2)).expect("persist");
        let (_, loaded) = JournalStore::open(dir.path(), "d", 100);
        let Loaded::Found(j) = loaded else {
            panic!("expected a journal")
        };
        assert_eq!(j.activity, vec![RegionIndex(2)]);
        // Tear the newest slot (.1 holds seq 2): the older record is used.
        let p = dir.path().join("d.ha-journal.1");
        let b = std::fs::read(&p).expect("read");
        std::fs::write(&p, &b[..b.len() - 3]).expect("tear");
        let (mut s, loaded) = JournalStore::open(dir.path(), "d", 100);
        let Loaded::Found(j) = loaded else {
            panic!("expected the older journal")
        };
        assert_eq!(j.activity, vec![RegionIndex(1)]);
        // The next record replaces the torn slot, not the good one.
        s.persist(&rec(3)).expect("persist");
        let (_, loaded) = JournalStore::open(dir.path(), "d", 100);
        let Loaded::Found(j) = loaded else {
            panic!("expected a journal")
        };
        assert_eq!(j.activity, vec![RegionIndex(3)]);
    }

    #[test]
    fn both_slots_corrupt_or_wrong_size_is_lost_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        for i in 0..2 {
            std::fs::write(dir.path().join(format!("d.ha-journal.{i}")), b"garbage").expect("w");
        }
        let (_, loaded) = JournalStore::open(dir.path(), "d", 100);
        assert!(matches!(loaded, Loaded::Corrupt(_)));
        let (mut s, _) = JournalStore::open(dir.path(), "e", 100);
        s.persist(&rec(1)).expect("persist");
        let (_, loaded) = JournalStore::open(dir.path(), "e", 200);
        assert!(matches!(loaded, Loaded::Corrupt(_)));
    }
}
