//! The file-share witness's I/O: one thread per device with `witness_file`, reading and
//! writing the lock file with plain file operations, and the gate the device's authority
//! passes through on this node. The decisions are in [`super::file_witness`].
//!
//! - Not holding: read the file every `poll`; claim it once it stayed unchanged for a file
//!   lease plus margin and this replica may take over; on success, host the authority
//!   (the configuration the claim recorded, above every epoch seen).
//! - Holding: renew every third of the file lease, and at once when the authority has a
//!   configuration the file does not record yet. A renewal that fails (I/O error, slow
//!   write, another node's record) ends the hold at once: the authority here answers
//!   nothing more, so this node's lease and the partner's lapse.
//!
//! A thread, not a task: a read or write on a share that hangs must not stall the runtime,
//! and the hold's end is fixed when a claim starts, so a hanging claim only delays nothing
//! but itself.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tandem_config::ReplicationConfig;
use tandem_ha::NodeId;

use super::authority_host::{self, AuthorityHost, Grant};
use super::file_witness::{
    decide_claim, decode, encode, ClaimAttempt, ClaimError, Hold, Observed, TakerDecision, Timing,
    RECORD_BYTES_MAX,
};
use super::{strategy, AuthorityPlace};
use crate::service::Node;

/// Per device: the current hold (None: this node does not hold the file) and what went
/// wrong last. An entry exists while the device's thread runs.
#[derive(Clone, Debug, Default)]
pub struct WitnessState {
    pub hold: Option<Hold>,
    pub last_error: Option<String>,
}

pub type Holds = Mutex<HashMap<String, WitnessState>>;

/// Reads the lock file: absent, a checked record, or why not.
pub fn read_lock(path: &Path, device: &str) -> Observed {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Observed::Absent,
        Err(e) => return Observed::Unreadable(format!("{}: {e}", path.display())),
    };
    let mut bytes = Vec::new();
    if let Err(e) = file.take(RECORD_BYTES_MAX + 1).read_to_end(&mut bytes) {
        return Observed::Unreadable(format!("{}: {e}", path.display()));
    }
    match decode(&bytes, device) {
        Ok(r) => Observed::Record(r),
        Err(e) => Observed::Unreadable(format!("{}: {e}", path.display())),
    }
}

/// One claim. The new record is written to a temp file in the same directory and fsynced
/// first (the slow part, outside the bound); then the first read, the rename, and only the
/// read and the rename count against the write bound (the record is visible to other nodes
/// from the rename on); then the directory is fsynced, and after the confirm delay the file
/// is read again. The hold counts from just before the first read.
fn run_claim(path: &Path, device: &str, a: &ClaimAttempt, t: &Timing) -> Result<Hold, ClaimError> {
    let io = |e: std::io::Error| ClaimError::Unreadable(format!("{}: {e}", path.display()));
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.{}.{:016x}.tmp",
        a.record.holder, a.record.nonce
    ));
    let prepared = (|| {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(&encode(&a.record))?;
        f.sync_all()
    })();
    if let Err(e) = prepared {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    let mut a = a.clone();
    a.started = Instant::now();
    let swapped = a
        .check_first_read(&read_lock(path, device))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(io));
    if let Err(e) = swapped {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    a.check_written(Instant::now(), t)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    std::thread::sleep(t.confirm_delay);
    a.confirm(&read_lock(path, device), t)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0))
}

/// Starts the device's witness thread unless it runs.
pub fn ensure_running(node: &Arc<Node>, device: &str) {
    let mut holds = node.ha.witness.lock().unwrap_or_else(|e| e.into_inner());
    if holds.contains_key(device) {
        return;
    }
    holds.insert(device.to_string(), WitnessState::default());
    let (node2, dev) = (node.clone(), device.to_string());
    let spawned = std::thread::Builder::new()
        .name(format!("witness-{device}"))
        .spawn(move || run(node2, dev));
    if let Err(e) = spawned {
        holds.remove(device);
        tracing::error!(device, "cannot start the witness file thread: {e}");
    }
}

fn publish(node: &Node, device: &str, hold: Option<Hold>, error: Option<String>) {
    let mut holds = node.ha.witness.lock().unwrap_or_else(|e| e.into_inner());
    let e = holds.entry(device.to_string()).or_default();
    e.hold = hold;
    // A success clears the last problem; a failure replaces it.
    e.last_error = error;
}

fn witness_config(node: &Node, device: &str) -> Option<ReplicationConfig> {
    node.config_arc()
        .device(device)
        .and_then(|d| d.replication.clone())
        .filter(|r| r.witness.is_none() && r.witness_file.is_some())
}

fn run(node: Arc<Node>, device: String) {
    let settings = node.ha.settings();
    let t = Timing::from_settings(&settings);
    let mut watch = super::file_witness::Watch::default();
    let mut hold: Option<Hold> = None;
    let mut last_wait = "";
    let mut last_unreadable = String::new();
    let mut record_seen = false;
    let mut missing_reported = false;
    tracing::info!(%device, "witness file thread started");
    loop {
        std::thread::sleep(t.poll);
        let Some(r) = witness_config(&node, &device) else {
            tracing::info!(%device, "witness file thread stops: the device has no witness file here");
            node.ha
                .witness
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&device);
            return;
        };
        let Some(path) = r.witness_file.clone() else {
            continue;
        };
        let me = NodeId(r.node_id);
        let now = Instant::now();
        if let Some(h) = hold.clone() {
            if !h.valid(now) {
                tracing::error!(%device, "the witness file hold ended before a renewal: this node stops granting leases");
                hold = None;
                publish(
                    &node,
                    &device,
                    None,
                    Some("the hold ended before a renewal".into()),
                );
                continue;
            }
            let current = authority_config(&node, &device);
            let epoch = current.as_ref().map_or(0, |c| c.epoch.0);
            if !h.renew_due(now, &t, epoch) {
                continue;
            }
            let config = current.or_else(|| h.record.config.clone());
            let a = ClaimAttempt::new(
                now,
                &device,
                me,
                Observed::Record(h.record.clone()),
                config,
                rand::random(),
            )
            .stamp(unix_ms(), &t);
            match run_claim(&path, &device, &a, &t) {
                Ok(new) => {
                    hold = Some(new.clone());
                    publish(&node, &device, Some(new), None);
                }
                Err(e) => {
                    let why = format!("cannot renew the witness file {}: {e}", path.display());
                    tracing::error!(%device, "{why}: this node stops granting leases at once (its partner may take over after a file lease plus margin)");
                    hold = None;
                    watch.forget();
                    publish(&node, &device, None, Some(why));
                }
            }
            continue;
        }

        let seen = read_lock(&path, &device);
        if let Observed::Unreadable(e) = &seen {
            if *e != last_unreadable {
                tracing::error!(%device, "witness file unreadable, nothing is decided from it: {e}");
                last_unreadable = e.clone();
                publish(&node, &device, None, Some(e.clone()));
            }
        } else {
            last_unreadable.clear();
        }
        if matches!(seen, Observed::Record(_)) && !record_seen {
            record_seen = mark_record_seen(&node, &device);
        }
        let absent = matches!(seen, Observed::Absent);
        watch.observe(now, seen);
        let (has_local, local_epoch) = local_state(&node, &device);
        // A missing file on a node that knew it: the share is not mounted here, or the file
        // was lost. Shown in the HA view (`witness_file_error`), once per disappearance.
        if absent && has_local && !missing_reported {
            let why = format!(
                "the witness file {} is missing although this node read it or hosted the authority before: is the share mounted? (no takeover from here until it is back)",
                path.display()
            );
            tracing::error!(%device, "{why}");
            publish(&node, &device, None, Some(why));
        }
        missing_reported = absent && has_local;
        let (expect, config) = match decide_claim(&watch, now, &t, me, has_local, local_epoch) {
            TakerDecision::Wait(why) => {
                if why != last_wait {
                    tracing::debug!(%device, "witness file: {why}");
                    last_wait = why;
                }
                continue;
            }
            TakerDecision::Claim(plan) => (plan.expect, plan.config),
        };
        let previous = match &expect {
            Observed::Record(rec) => Some(NodeId(rec.holder)),
            _ => None,
        };
        let a = ClaimAttempt::new(
            Instant::now(),
            &device,
            me,
            expect,
            config.clone(),
            rand::random(),
        )
        .stamp(unix_ms(), &t);
        match run_claim(&path, &device, &a, &t) {
            Ok(h) => match host_authority(&node, &device, &r, config, previous) {
                Ok(()) => {
                    tracing::warn!(%device, counter = h.record.counter, epoch = h.record.epoch(),
                        "this node holds the witness file and hosts the device's failover authority");
                    hold = Some(h.clone());
                    publish(&node, &device, Some(h), None);
                }
                Err(e) => {
                    // The file says this node holds it; without an authority it grants
                    // nothing, and the partner takes over after a file lease plus margin.
                    tracing::error!(%device, "won the witness file but cannot host the authority: {e}");
                    watch.forget();
                    publish(&node, &device, None, Some(e));
                }
            },
            Err(e) => {
                tracing::info!(%device, "claim of the witness file failed: {e}");
                watch.forget();
            }
        }
    }
}

/// The configuration of the authority hosted here (live or not).
fn authority_config(node: &Node, device: &str) -> Option<tandem_ha::EpochConfig> {
    let hosts = node.ha.hosts.lock().unwrap_or_else(|e| e.into_inner());
    hosts.get(device).and_then(|h| h.config().cloned())
}

/// Whether this node hosted the device's authority before or read a record from its lock
/// file before (either way a missing file is no first start), and the newest epoch it issued.
fn local_state(node: &Node, device: &str) -> (bool, u64) {
    let seen = record_seen_path(&node.data_dir, device).exists();
    let hosts = node.ha.hosts.lock().unwrap_or_else(|e| e.into_inner());
    match hosts.get(device) {
        Some(h) => (true, h.persisted().last_epoch.0),
        None => (
            seen || authority_host::state_path(&node.data_dir, device).exists(),
            0,
        ),
    }
}

/// The durable mark that this node has read a record from the device's lock file. Without
/// it, a node that never hosted the authority took its share's bare mount point (the share
/// unmounted: an empty local directory) for a first start, claimed a lock file there after
/// a file lease plus margin and hosted an authority beside the real holder's
/// (`tests/tests/ha_file_witness.rs`, the share lost by the node without the lock).
fn record_seen_path(data_dir: &Path, device: &str) -> std::path::PathBuf {
    super::ha_dir(data_dir).join(format!("{device}.witness-seen"))
}

/// Writes the mark (and syncs it); whether it is now on disk.
fn mark_record_seen(node: &Node, device: &str) -> bool {
    let path = record_seen_path(&node.data_dir, device);
    let write = || -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let f = std::fs::File::create(&path)?;
        f.sync_all()?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    match write() {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(%device, "cannot record that the witness file was read: {e}");
            false
        }
    }
}

/// After a won claim: the authority with the recorded configuration (a takeover), or, with
/// none recorded yet, the device's first configuration (or a cold start).
fn host_authority(
    node: &Node,
    device: &str,
    r: &ReplicationConfig,
    config: Option<tandem_ha::EpochConfig>,
    previous: Option<NodeId>,
) -> Result<(), String> {
    let nodes = strategy::device_nodes(r);
    match config {
        Some(c) => {
            let host = AuthorityHost::take_over(
                &node.data_dir,
                device,
                &nodes,
                c,
                previous.unwrap_or(NodeId(r.node_id)),
                &node.ha.settings(),
                Instant::now(),
            )
            .map_err(|e| e.to_string())?;
            authority_host::install(node, host);
            Ok(())
        }
        None => {
            let initial = super::initial_mark(&node.data_dir, device);
            authority_host::ensure_host(node, device, &nodes, initial, usize::MAX)
                .map_err(|e| e.to_string())
        }
    }
}

/// What the device's authority on this node may do now.
pub enum Gate {
    /// Not a file-witness device: no limit.
    Open,
    /// A file-witness device whose file this node does not hold: answer nothing.
    Closed(String),
    /// Held: leases end with the hold, and only recorded configurations leave.
    Held(Hold),
}

pub fn gate(node: &Node, device: &str) -> Gate {
    if witness_config(node, device).is_none() {
        return Gate::Open;
    }
    let holds = node.ha.witness.lock().unwrap_or_else(|e| e.into_inner());
    match holds.get(device).and_then(|w| w.hold.clone()) {
        Some(h) if h.valid(Instant::now()) => Gate::Held(h),
        _ => Gate::Closed(format!(
            "this node does not hold the witness file of `{device}`"
        )),
    }
}

/// Applies a hold to an answer of the authority: the lease is cut to what is left of the
/// hold, and a configuration the file does not record yet is held back (the next renewal,
/// due at once, records it; the engine asks again).
pub fn limit(hold: &Hold, now: Instant, grant: Option<Grant>) -> Option<Grant> {
    let mut g = grant?;
    if !hold.may_deliver(&g.config) {
        return None;
    }
    g.lease_duration_ns = g.lease_duration_ns.and_then(|ns| hold.limit_lease(now, ns));
    Some(g)
}

/// Where the authority is for a file-witness device: here while this node holds the file
/// and hosts it, else with the partner (which answers only while it holds the file).
pub fn place(node: &Node, device: &str, r: &ReplicationConfig) -> AuthorityPlace {
    if matches!(gate(node, device), Gate::Held(_)) && authority_host::hosts_device(node, device) {
        return AuthorityPlace::Local;
    }
    match r.partners.first() {
        Some(p) => AuthorityPlace::Remote {
            server: p.name.clone(),
        },
        None => AuthorityPlace::Unavailable {
            reason: "no partner".into(),
        },
    }
}

/// The last problem with the device's lock file on this node (for the status view).
pub fn last_error(node: &Node, device: &str) -> Option<String> {
    let holds = node.ha.witness.lock().unwrap_or_else(|e| e.into_inner());
    holds.get(device).and_then(|w| w.last_error.clone())
}

/// The current hold (for the status view).
pub fn held_until_ms(node: &Node, device: &str) -> Option<u64> {
    match gate(node, device) {
        Gate::Held(h) => Some(
            u64::try_from(
                h.until
                    .saturating_duration_since(Instant::now())
                    .as_millis(),
            )
            .unwrap_or(0),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn reads_absent_record_and_refuses_garbage_or_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        assert_eq!(read_lock(&p, "vol"), Observed::Absent);
        std::fs::write(&p, b"garbage").unwrap();
        assert!(matches!(read_lock(&p, "vol"), Observed::Unreadable(_)));
        assert!(matches!(
            read_lock(dir.path(), "vol"),
            Observed::Unreadable(_)
        ));
        // A claim through the real file: written, confirmed, read back.
        let t = Timing {
            confirm_delay: Duration::from_millis(20),
            ..Timing::from_settings(&super::super::HaSettings::default())
        };
        let a = ClaimAttempt::new(
            Instant::now(),
            "vol",
            NodeId(1),
            Observed::Unreadable(String::new()),
            None,
            7,
        );
        // Garbage in the file: the claim is refused, never panics.
        assert!(run_claim(&p, "vol", &a, &t).is_err());
        std::fs::remove_file(&p).unwrap();
        let a = ClaimAttempt::new(Instant::now(), "vol", NodeId(1), Observed::Absent, None, 7);
        let h = run_claim(&p, "vol", &a, &t).unwrap();
        assert_eq!(read_lock(&p, "vol"), Observed::Record(h.record));
        // Another device's file is refused.
        assert!(matches!(read_lock(&p, "other"), Observed::Unreadable(_)));
        // A directory that does not exist (the share is gone): the claim fails.
        let gone = dir.path().join("missing").join("lock");
        let a = ClaimAttempt::new(Instant::now(), "vol", NodeId(1), Observed::Absent, None, 8);
        assert!(run_claim(&gone, "vol", &a, &t).is_err());
    }
}
