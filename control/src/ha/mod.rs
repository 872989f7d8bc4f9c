//! High availability in the control service (issue 11): the failover authority, the driver
//! that connects each replicated device's engine (in the data plane) to it, heartbeats
//! between control services, and the failover strategies. `docs/ha.md` ("The failover
//! authority in the control service") describes the rules.
//!
//! - [`authority_host`]: hosts `tandem_ha::authority::Authority` for a device, with its state
//!   persisted before any update built from it leaves the process.
//! - [`api`]: `POST /api/v1/ha/authority/{device}` for remote nodes, `GET /api/v1/ha/status`.
//! - [`driver`]: one task per replicated device: data plane <-> authority.
//! - [`membership`]: authenticated UDP heartbeats over every sync and heartbeat link.
//! - [`echo`]: what each heartbeat names and echoes, and the echo rule a restarted or
//!   paused two-node heartbeat authority waits for.
//! - [`strategy`]: pure decisions (where the authority is, when to take it over).
//! - [`file_witness`], [`file_witness_task`]: the file-share witness (a lock file on a share
//!   both data nodes mount): decisions, and the thread that reads and writes the file.
//!
//! The control service never sees user data: only configurations, leases and metadata.

pub mod api;
pub mod authority_host;
pub mod driver;
pub mod echo;
pub mod file_witness;
pub mod file_witness_task;
pub mod membership;
pub mod strategy;
pub mod vote_sim;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tandem_config::ipc::HaDeviceStatus;
use tandem_ha::{EpochConfig, NodeId};

use crate::service::Node;

pub use api::routes;
use authority_host::AuthorityHost;

/// Most devices a witness hosts an authority for (it creates them on request).
pub const WITNESS_DEVICES_MAX: usize = 1024;

/// What this control service is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// A data node: data plane, iSCSI, replicas.
    #[default]
    Node,
    /// A witness: control service only (no data plane, no iSCSI); hosts the failover
    /// authority of node-majority devices that name it.
    Witness,
}

/// Timings of the failover machinery. Defaults decide a lost partner within about 2 s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HaSettings {
    /// Lease the authority grants (counted by the node from its request).
    pub lease: Duration,
    /// Clock-drift margin the authority waits beyond a lease before removing its holder.
    pub margin: Duration,
    /// Heartbeat datagram interval, per link.
    pub heartbeat_interval: Duration,
    /// A link is down when nothing authentic arrived on it for this long.
    pub heartbeat_timeout: Duration,
    /// How often the driver exchanges with the data plane and the authority.
    pub exchange_interval: Duration,
    /// Timeout of one call to a remote authority.
    pub remote_timeout: Duration,
}

impl Default for HaSettings {
    fn default() -> Self {
        HaSettings {
            lease: Duration::from_millis(1500),
            margin: Duration::from_millis(500),
            heartbeat_interval: Duration::from_millis(200),
            heartbeat_timeout: Duration::from_millis(1500),
            exchange_interval: Duration::from_millis(100),
            remote_timeout: Duration::from_millis(1000),
        }
    }
}

impl HaSettings {
    /// The timing rules the safety argument needs (docs/ha.md, "Timing assumptions").
    pub fn check(&self) -> Result<(), String> {
        if self.margin <= self.heartbeat_interval {
            return Err(format!(
                "the lease margin ({:?}) must exceed the heartbeat interval ({:?}): a takeover counts silence from the last heartbeat, and the old authority may have granted a lease up to one interval later",
                self.margin, self.heartbeat_interval
            ));
        }
        if self.heartbeat_timeout < 2 * self.heartbeat_interval {
            return Err(format!(
                "the heartbeat timeout ({:?}) must be at least two intervals ({:?})",
                self.heartbeat_timeout, self.heartbeat_interval
            ));
        }
        if self.lease < 3 * self.exchange_interval {
            return Err(format!(
                "the lease ({:?}) must cover at least three exchanges ({:?} each) so that renewals arrive before it ends",
                self.lease, self.exchange_interval
            ));
        }
        Ok(())
    }
}

/// Where a device's authority runs, as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum AuthorityPlace {
    /// In this process.
    Local,
    /// On another node (a `[[server]]` name).
    Remote { server: String },
    /// Nowhere (configuration not supported yet): the device gets no lease and never serves.
    Unavailable { reason: String },
    /// With whichever data node holds the lock file (node majority with `witness_file`);
    /// the driver resolves it to `Local` or `Remote` (`file_witness_task::place`).
    FileWitness,
}

/// What the HA machinery knows about one device on this node (for the API and the CLI).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HaView {
    pub device: String,
    /// The engine's report from the last exchange with the data plane.
    pub status: Option<HaDeviceStatus>,
    pub authority: Option<AuthorityPlace>,
    /// The newest configuration this node has seen (from the engine or the authority).
    pub config: Option<EpochConfig>,
    /// Last error reaching the authority or the data plane.
    pub last_error: Option<String>,
    /// Per partner node id: seconds since an authentic heartbeat (None: never).
    pub partners: Vec<PeerView>,
    /// Heartbeats rejected (bad MAC, replay, unknown device or node, malformed).
    pub heartbeats_rejected: u64,
    /// This node took the authority over from the named node id (heartbeat strategy).
    pub took_over_from: Option<u8>,
    /// When the data plane last answered an exchange (for the heartbeat priority rule:
    /// a stale report says nothing about a data plane that has since died).
    #[serde(skip)]
    pub exchanged_at: Option<std::time::Instant>,
    /// When the last exchange that found the data plane serving started
    /// (`driver::leased_when_heard`).
    #[serde(skip)]
    pub served_at: Option<std::time::Instant>,
    /// Until when the authority's last answer leased this node, on this clock: the start of
    /// the exchange whose report the lease counts from, plus the lease. The node's own lease
    /// ends no earlier, and the authority's record of it later still
    /// (`driver::leased_when_heard`).
    #[serde(skip)]
    pub leased_until: Option<std::time::Instant>,
    /// Three data nodes under node majority: the node whose authority this node follows
    /// has been silent for longer than a lease plus margin (announced in heartbeats: this
    /// node's vote for a takeover).
    #[serde(default)]
    pub authority_lost: bool,
    /// File-share witness: this node holds the lock file for this many more ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witness_file_held_ms: Option<u64>,
    /// File-share witness: the last problem with the lock file on this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witness_file_error: Option<String>,
    /// Nodes the device's authority refused because their copy went on alone (split brain;
    /// from its last answer).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub split_brain: Vec<u8>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PeerView {
    pub node_id: u8,
    pub name: String,
    /// Links (`LOCAL=PARTNER`) with an authentic heartbeat within the timeout.
    pub links_up: Vec<String>,
    pub links_down: Vec<String>,
    pub last_heard_ms_ago: Option<u64>,
    /// The partner says it hosts the device's authority, at this epoch.
    pub hosts_authority_epoch: Option<u64>,
}

/// Per-node HA state, held by [`Node`].
#[derive(Default)]
pub struct HaState {
    settings: OnceLock<HaSettings>,
    role: OnceLock<Role>,
    pub(crate) views: Mutex<HashMap<String, HaView>>,
    /// Authorities hosted here, by device.
    pub(crate) hosts: Mutex<HashMap<String, AuthorityHost>>,
    pub(crate) heartbeats: membership::Heard,
    /// This process's heartbeats (incarnation and counter), shared by the sender and the
    /// authority hosts (`echo`).
    pub(crate) heartbeat_seq: Arc<echo::HeartbeatSeq>,
    /// Three-node majority: when each partner last asked an authority hosted here, by
    /// (device, node id). Such a request is that node's vote for this authority
    /// (`strategy::has_majority`).
    pub(crate) votes: Mutex<HashMap<(String, u8), Instant>>,
    /// File-share witness holds, by device (`file_witness_task`).
    pub(crate) witness: file_witness_task::Holds,
}

impl HaState {
    pub fn settings(&self) -> HaSettings {
        self.settings.get().copied().unwrap_or_default()
    }

    pub fn role(&self) -> Role {
        self.role.get().copied().unwrap_or_default()
    }

    /// `node` asked this node's authority for `device` just now (its vote).
    pub(crate) fn record_vote(&self, device: &str, node: u8, now: Instant) {
        let mut votes = self.votes.lock().unwrap_or_else(|e| e.into_inner());
        if votes.len() >= WITNESS_DEVICES_MAX * 3
            && !votes.contains_key(&(device.to_string(), node))
        {
            // Bounded: forget the oldest.
            if let Some(k) = votes
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(k, _)| k.clone())
            {
                votes.remove(&k);
            }
        }
        votes.insert((device.to_string(), node), now);
    }

    /// When `node` last asked this node's authority for `device`.
    pub(crate) fn last_vote(&self, device: &str, node: u8) -> Option<Instant> {
        let votes = self.votes.lock().unwrap_or_else(|e| e.into_inner());
        votes.get(&(device.to_string(), node)).copied()
    }

    pub(crate) fn view_mut<R>(&self, device: &str, f: impl FnOnce(&mut HaView) -> R) -> R {
        let mut views = self.views.lock().unwrap_or_else(|e| e.into_inner());
        let v = views.entry(device.to_string()).or_insert_with(|| HaView {
            device: device.to_string(),
            ..HaView::default()
        });
        f(v)
    }
}

/// The engine's last report for `device` (None: not replicated here, or no report yet).
/// For `tandem replica list` / `device show`.
pub fn ha_status(node: &Node, device: &str) -> Option<HaDeviceStatus> {
    ha_view(node, device).and_then(|v| v.status)
}

/// Everything this node knows about `device`'s replication (see [`HaView`]).
pub fn ha_view(node: &Node, device: &str) -> Option<HaView> {
    let mut view = node
        .ha
        .views
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(device)
        .cloned()?;
    let config = node.config_arc();
    if let Some(r) = config
        .devices
        .iter()
        .find(|d| d.name == device)
        .and_then(|d| d.replication.as_ref())
    {
        let settings = node.ha.settings();
        view.partners =
            node.ha
                .heartbeats
                .peer_views(device, r, Instant::now(), settings.heartbeat_timeout);
        view.heartbeats_rejected = node.ha.heartbeats.rejected();
        if r.witness_file.is_some() {
            view.witness_file_held_ms = file_witness_task::held_until_ms(node, device);
            view.witness_file_error = file_witness_task::last_error(node, device);
        }
    }
    Some(view)
}

/// Every device with HA state on this node.
pub fn ha_views(node: &Node) -> Vec<HaView> {
    let mut names: Vec<String> = node
        .ha
        .views
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .keys()
        .cloned()
        .collect();
    names.sort();
    names.iter().filter_map(|d| ha_view(node, d)).collect()
}

/// `DATA_DIR/ha`: authority state and markers.
pub fn ha_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("ha")
}

/// How a replicated device's first configuration is made, when its authority starts with no
/// state: written by `replica add` on every node (`DATA_DIR/ha/<device>.fresh`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitialSync {
    /// `--init zeroed`: every replica was created zeroed; all start synchronized.
    Zeroed,
    /// `--init sync-from-existing`: this node holds the data; the others start syncing from
    /// it (never the other way round, whatever order the nodes start in).
    Source(NodeId),
}

/// Records how `device`'s first configuration is made ([`InitialSync`]). Without a mark an
/// authority with no state starts cold and waits for every node's metadata.
pub fn mark_initial(data_dir: &Path, device: &str, initial: InitialSync) -> std::io::Result<()> {
    let dir = ha_dir(data_dir);
    std::fs::create_dir_all(&dir)?;
    let text = match initial {
        InitialSync::Zeroed => "zeroed\n".to_string(),
        InitialSync::Source(n) => format!("source={}\n", n.0),
    };
    tandem_config::save_atomic(dir.join(format!("{device}.fresh")), text.as_bytes())
}

/// The `--init zeroed` mark (see [`mark_initial`]).
pub fn mark_fresh(data_dir: &Path, device: &str) -> std::io::Result<()> {
    mark_initial(data_dir, device, InitialSync::Zeroed)
}

/// The device's initial-sync mark; an unreadable or unknown mark counts as none (cold start,
/// the safe side).
pub(crate) fn initial_mark(data_dir: &Path, device: &str) -> Option<InitialSync> {
    let text = std::fs::read_to_string(ha_dir(data_dir).join(format!("{device}.fresh"))).ok()?;
    match text.trim() {
        "zeroed" => Some(InitialSync::Zeroed),
        t => t
            .strip_prefix("source=")
            .and_then(|n| n.parse::<u8>().ok())
            .map(|n| InitialSync::Source(NodeId(n))),
    }
}

/// Reads a replication secret the way the data plane does: hex (what `tandem-control`
/// writes) or, if the file is not hex, its raw bytes; at least 16 bytes, at most 4 KiB of
/// file.
pub fn load_secret(path: &Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() > 4096 {
        return Err(format!("{}: larger than 4 KiB", path.display()));
    }
    let raw = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let text = std::str::from_utf8(&raw).map(str::trim).unwrap_or("");
    let secret = match hex::decode(text) {
        Ok(bytes) if !text.is_empty() => bytes,
        _ => raw,
    };
    if secret.len() < 16 {
        return Err(format!(
            "{}: {} bytes of secret, at least 16 needed",
            path.display(),
            secret.len()
        ));
    }
    Ok(secret)
}

/// Starts the HA machinery of this node: the authorities it hosts, one driver per
/// replicated device, the heartbeat sockets. Call once, after the node is built.
pub fn start(node: Arc<Node>, settings: HaSettings, role: Role) {
    let _ = node.ha.settings.set(settings);
    let _ = node.ha.role.set(role);
    if role == Role::Witness {
        // A witness hosts every authority it already had, and creates others on request.
        authority_host::load_existing(&node);
        tokio::spawn(authority_host::tick_all(node));
        return;
    }
    authority_host::load_existing(&node);
    tokio::spawn(authority_host::tick_all(node.clone()));
    membership::start(node.clone());
    tokio::spawn(drivers(node));
}

/// Starts a driver for every replicated device, now and whenever one appears (`replica
/// add` changes the configuration live); a driver ends when its device stops being
/// replicated here.
async fn drivers(node: Arc<Node>) {
    let mut running: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        every.tick().await;
        running.retain(|_, task| !task.is_finished());
        let config = node.config_arc();
        for d in config.devices.iter().filter(|d| d.replication.is_some()) {
            if !running.contains_key(&d.name) {
                running.insert(
                    d.name.clone(),
                    tokio::spawn(driver::run(node.clone(), d.name.clone())),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_hex_or_raw_and_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s");
        std::fs::write(&f, "00112233445566778899aabbccddeeff\n").unwrap();
        assert_eq!(
            load_secret(&f).unwrap(),
            hex::decode("00112233445566778899aabbccddeeff").unwrap()
        );
        std::fs::write(&f, "not hex but long enough").unwrap();
        assert_eq!(load_secret(&f).unwrap(), b"not hex but long enough");
        std::fs::write(&f, "0011").unwrap();
        assert!(load_secret(&f).is_err());
        std::fs::write(&f, vec![b'a'; 5000]).unwrap();
        assert!(load_secret(&f).is_err());
        assert!(load_secret(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn settings_rules() {
        assert_eq!(HaSettings::default().check(), Ok(()));
        let ms = Duration::from_millis;
        let bad = [
            HaSettings {
                margin: ms(200),
                ..HaSettings::default()
            },
            HaSettings {
                heartbeat_timeout: ms(300),
                ..HaSettings::default()
            },
            HaSettings {
                lease: ms(250),
                ..HaSettings::default()
            },
        ];
        for s in bad {
            assert!(s.check().is_err(), "{s:?}");
        }
    }
}
