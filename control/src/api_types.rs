//! JSON bodies of the management API, shared by the server and the `tandem` CLI.
//! `docs/api/openapi.yaml` describes the same shapes.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tandem_config::ipc::{DeviceStats, ReactorStats};
use tandem_config::{
    CacheMode, FailoverStrategy, JournalKind, LinkPair, PartnerConfig, Priority, ReplicationConfig,
    Size,
};

/// `POST /api/v1/devices`. Three forms:
/// - RAM disk: `ram: true` and `size`;
/// - new thick image: `size` and optionally `file` (full path) or `location` (directory; the
///   image is `LOCATION/NAME.img`, default the node's data dir); the file must not exist;
/// - attach an existing image: `file` without `size`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DeviceCreate {
    pub name: String,
    #[serde(default)]
    pub ram: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Size>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<PathBuf>,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_size: Option<Size>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_seed: Option<String>,
    /// Alias of the target created for the device (default: derived from the name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_alias: Option<String>,
    /// Do not create a target for the device.
    #[serde(default)]
    pub no_target: bool,
    /// `file` is a block device (never assumed: block devices are exempt from the image
    /// directories).
    #[serde(default)]
    pub block_device: bool,
}

/// Where a change stands in the data plane.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Applied {
    /// Saved and applied live.
    Applied,
    /// Saved; the data plane is not connected and loads it when it (re)starts.
    Pending,
    /// Saved; this control service runs without a data plane (`--no-dataplane`).
    Disabled,
    /// Nothing to do: the configuration already says so.
    Unchanged,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChangeResult {
    pub dataplane: Applied,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeviceInfo {
    pub name: String,
    /// `ram` or `file`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// Configured size, or the data plane's / the file's size for an attached image.
    pub size_bytes: u64,
    pub block_size: u32,
    pub read_only: bool,
    pub cache: CacheMode,
    pub cache_size_bytes: u64,
    pub identity_seed: String,
    /// IQNs of the targets exporting it.
    pub targets: Vec<String>,
    /// Data plane state (`online`, ...), `creating` while its image is built, `pending` when
    /// the data plane is not connected.
    pub state: String,
    /// Why a `failed` device is not served, and what to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub sessions: u32,
    /// Replicas of a replicated device (`GET /api/v1/devices/{name}` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<ReplicaListing>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeviceCreated {
    pub device: DeviceInfo,
    pub dataplane: Applied,
}

/// Answer to a create that builds an image: follow `GET /api/v1/jobs/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Accepted {
    pub job: JobInfo,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobInfo {
    pub id: u64,
    /// `create-image`.
    pub kind: String,
    pub device: String,
    /// `running`, `done` or `failed`.
    pub state: String,
    pub done_bytes: u64,
    pub total_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `POST /api/v1/devices/{name}/extend`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DeviceExtend {
    pub size: Size,
    /// Set only between nodes: one phase of the extend of a replicated device on the node
    /// that receives it (absent: the whole extend, across every node of the device).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ExtendPhase>,
}

/// The two phases of the extend of a replicated device (docs/ha.md, "Extend").
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ExtendPhase {
    /// Grow the image and the replication engine; the LU keeps reporting the old size.
    Grow,
    /// Report the new size: commit it to node.toml, the LU grows and raises CAPACITY DATA
    /// HAS CHANGED on its nexuses.
    Report,
}

/// `PUT /api/v1/devices/{name}/cache`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CacheSet {
    pub cache: CacheMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_size: Option<Size>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LunInfo {
    pub lun: u32,
    pub device: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChapInfo {
    pub username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutual_username: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TargetInfo {
    pub iqn: String,
    pub alias: String,
    pub luns: Vec<LunInfo>,
    pub allowed_initiators: Vec<String>,
    /// Secrets are never returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chap: Option<ChapInfo>,
    pub sessions: u32,
    pub initiators: Vec<String>,
}

/// `POST /api/v1/targets`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TargetCreate {
    pub alias: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iqn: Option<String>,
    pub luns: Vec<String>,
    #[serde(default)]
    pub allowed_initiators: Vec<String>,
}

/// `POST /api/v1/targets/{iqn}/acl`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AclAdd {
    pub initiator: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AclInfo {
    pub iqn: String,
    /// Empty: every initiator may log in.
    pub allowed_initiators: Vec<String>,
}

/// `POST /api/v1/servers`: another node, by its `node.name` and management API address.
/// With `token` (that node's API token) the node is checked at once (`GET /api/v1/status`
/// with the token: it must answer and call itself `name`) and the token is kept in
/// `DATA_DIR/servers/NAME.token` (0600) for the calls replication makes to it. Without a token
/// the server is only recorded (it cannot be a replica partner).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServerAdd {
    pub name: String,
    pub address: SocketAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// Items of `GET /api/v1/servers` (reachability checked live, short timeout).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServerInfo {
    pub name: String,
    pub address: SocketAddr,
    /// A token for this server is stored.
    #[serde(default)]
    pub token: bool,
    /// Whether its API answered just now (None: not checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reachable: Option<bool>,
    /// The node name it reported (needs the token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Why it is unreachable, or what is wrong with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How the new replica gets its first content (`replica add --init`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum InitMode {
    /// The partner's copy is filled from this node's device (full sync while hosts write).
    #[default]
    SyncFromExisting,
    /// Both copies are taken as zeroed (new device never written): no initial copy.
    Zeroed,
}

impl InitMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            InitMode::SyncFromExisting => "sync-from-existing",
            InitMode::Zeroed => "zeroed",
        }
    }
}

/// A link between an existing partner and the new one (three-way devices):
/// `link` is seen from `partner` (`PARTNER_IP:PORT=NEW_PARTNER_IP:PORT`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PeerLink {
    pub partner: String,
    pub link: LinkPair,
}

/// `POST /api/v1/devices/{name}/replicas`: add a replica of the device on `partner` (a
/// `[[server]]` with a token). Links are `LOCAL_IP:PORT=PARTNER_IP:PORT` seen from this node.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReplicaAdd {
    pub partner: String,
    pub sync_links: Vec<LinkPair>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub heartbeat_links: Vec<LinkPair>,
    /// Three-way: links between each existing partner and the new one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peer_sync_links: Vec<PeerLink>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peer_heartbeat_links: Vec<PeerLink>,
    /// Directory of the partner's image (and journal); default its data dir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partner_location: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverStrategy>,
    /// This node's priority (heartbeat failover); the partner gets the other one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal: Option<JournalKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal_location: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<InitMode>,
    /// Node majority: a `[[server]]` (known to every replica's node) holding the third vote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witness: Option<String>,
    /// Node majority: a lock file on a share both nodes mount (same path on both), the
    /// third vote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witness_file: Option<PathBuf>,
    /// Resync pacing target on every replica (ms, 0: off); default 10, or the existing
    /// replicas' when a third one is added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resync_latency_target_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplicaAdded {
    pub device: String,
    pub partner: String,
    pub node_id: u8,
    pub partner_node_id: u8,
    /// The partner's target for the device (None: the device has no target here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partner_target: Option<String>,
    pub init: InitMode,
    /// Where the change stands in this node's data plane (the device is re-opened).
    pub dataplane: Applied,
    pub partner_dataplane: Applied,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplicaRemoved {
    pub device: String,
    pub partner: String,
    /// The partner's device was removed there (false with `force` when it was unreachable).
    pub partner_cleaned: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    pub dataplane: Applied,
}

/// `PUT /api/v1/devices/{name}/replication`: make this node's device one replica of a
/// replicated device (used by the node running `replica add` on its partners). The secret
/// (64 hex characters) is written to a 0600 file here; `expect` guards against a device that
/// is not the same disk.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReplicationSet {
    pub replication: ReplicationSpec,
    pub secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<DeviceIdentity>,
    /// A new replicated device: how its first configuration is made (recorded on every node,
    /// for whichever one hosts the failover authority).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial: Option<crate::ha::InitialSync>,
}

/// `[device.replication]` without the secret file (each node chooses where it keeps it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReplicationSpec {
    pub node_id: u8,
    #[serde(default)]
    pub failover: FailoverStrategy,
    #[serde(default)]
    pub priority: Priority,
    #[serde(default)]
    pub journal: JournalKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal_location: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witness: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witness_file: Option<PathBuf>,
    #[serde(default = "default_resync_latency_target_ms")]
    pub resync_latency_target_ms: u64,
    pub partners: Vec<PartnerConfig>,
}

fn default_resync_latency_target_ms() -> u64 {
    tandem_config::DEFAULT_RESYNC_LATENCY_TARGET_MS
}

impl ReplicationSpec {
    pub fn from_config(r: &ReplicationConfig) -> Self {
        ReplicationSpec {
            node_id: r.node_id,
            failover: r.failover,
            priority: r.priority,
            journal: r.journal,
            journal_location: r.journal_location.clone(),
            witness: r.witness.clone(),
            witness_file: r.witness_file.clone(),
            resync_latency_target_ms: r.resync_latency_target_ms,
            partners: r.partners.clone(),
        }
    }

    pub fn into_config(self, secret_file: PathBuf) -> ReplicationConfig {
        ReplicationConfig {
            node_id: self.node_id,
            secret_file,
            failover: self.failover,
            priority: self.priority,
            journal: self.journal,
            journal_location: self.journal_location,
            witness: self.witness,
            witness_file: self.witness_file,
            resync_latency_target_ms: self.resync_latency_target_ms,
            partners: self.partners,
        }
    }
}

/// What makes two devices one disk for hosts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DeviceIdentity {
    pub size_bytes: u64,
    pub block_size: u32,
    pub identity_seed: String,
}

/// `GET /api/v1/devices/{name}/replicas` (and `replicas` in `GET /api/v1/devices/{name}`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplicaListing {
    pub device: String,
    pub node_id: u8,
    pub failover: FailoverStrategy,
    /// Epoch of the configuration this node's engine holds (None: unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    pub replicas: Vec<ReplicaRow>,
    /// The last split brain resolved for this device (`tandem device resolve`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<String>,
}

/// One replica of a device, as this node sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplicaRow {
    pub node: String,
    pub node_id: u8,
    /// This node's own replica.
    pub local: bool,
    /// `synchronized`, `syncing`, `not-synchronized`, `blocked`, `split-brain` or `unknown`.
    pub state: String,
    /// Resync progress (syncing, when this node sequences the resync).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_percent: Option<u8>,
    /// Regions copied / to copy by that resync (rate and ETA come from two reads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resync_done_regions: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resync_total_regions: Option<u64>,
    /// Why it is not synchronized / blocked / unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Orders the writes of the current epoch.
    pub sequencer: bool,
    /// Serves host I/O now (known for this node only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<bool>,
    pub journal: JournalKind,
    pub links: Vec<LinkRow>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirty_regions: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_mirrored: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LinkRow {
    /// `LOCAL_IP:PORT=PARTNER_IP:PORT` seen from this node.
    pub link: String,
    /// `sync` or `heartbeat`.
    pub kind: String,
    /// `up`, `down` or `unknown`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DataplaneInfo {
    /// `disabled`, `starting`, `running`, `restarting` or `stopped`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    pub restarts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusInfo {
    pub node: String,
    pub version: String,
    pub uptime_s: u64,
    pub api: String,
    pub portals: Vec<String>,
    pub config_path: String,
    pub dataplane: DataplaneInfo,
    pub devices: usize,
    pub targets: usize,
    pub servers: usize,
    pub sessions: u32,
}

/// `GET /api/v1/stats`: cumulative counters from the data plane, stamped with the time they
/// were read (rates come from differences between two reads).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StatsInfo {
    pub unix_ms: u64,
    pub devices: Vec<DeviceStats>,
    pub reactors: Vec<ReactorStats>,
}
