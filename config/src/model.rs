//! The node configuration: what `node.toml` holds.

use std::collections::HashSet;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, FieldError, ValidationErrors};
use crate::names::{is_alias, is_device_name, is_node_name, validate_iscsi_name};
use crate::size::{format_size, Size};

/// Prefix of every generated target IQN; the suffix is `<node>-<alias>`.
pub const IQN_PREFIX: &str = "iqn.2026-11.io.tandem:";
/// Cache size used when `cache` is not `none` and `cache_size` is not given.
pub const DEFAULT_CACHE_SIZE: u64 = 64 << 20;
/// Limits on what one node serves; a config over them is refused.
pub const DEVICES_MAX: usize = 1024;
pub const TARGETS_MAX: usize = 1024;
pub const LUNS_PER_TARGET_MAX: usize = 256;
pub const PORTALS_MAX: usize = 64;
pub const INITIATORS_PER_TARGET_MAX: usize = 1024;
/// Largest config file `load` reads.
pub const CONFIG_FILE_BYTES_MAX: u64 = 4 << 20;
/// CHAP secret length bounds in bytes (RFC 3720 recommends at least 12; many initiators cap at 16).
pub const CHAP_SECRET_LEN_MIN: usize = 12;
pub const CHAP_SECRET_LEN_MAX: usize = 255;
/// Identity seeds longer than this are refused.
pub const IDENTITY_SEED_LEN_MAX: usize = 255;
/// Largest RAM disk or RAM cache (the RAM block device's own limit); the memory rule
/// (`crate::memory`) usually refuses far less.
pub const RAM_BYTES_MAX: u64 = 1 << 48;
/// Largest image file device (1 PiB).
pub const DEVICE_BYTES_MAX: u64 = 1 << 50;
/// Entries in `node.image_dirs`.
pub const IMAGE_DIRS_MAX: usize = 64;
/// Replica node ids of a replicated device are 1..=this.
pub const REPLICA_NODE_ID_MAX: u8 = 3;
/// Partners of one replica (three-way at most).
pub const REPLICA_PARTNERS_MAX: usize = 2;
/// Sync links, and heartbeat links, per partner.
pub const REPLICA_LINKS_MAX: usize = 4;

/// Everything a node serves. See `docs/config.md`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub node: NodeSection,
    #[serde(default, rename = "device", skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceConfig>,
    #[serde(default, rename = "target", skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetConfig>,
    /// Other nodes of the cluster (for replication). The data plane ignores them for now.
    #[serde(default, rename = "server", skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<ServerConfig>,
}

/// `[[server]]`: another Tandem node, known by its management API address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The other node's `node.name`.
    pub name: String,
    /// Its management API (`ip:port`, usually port 3261).
    pub address: SocketAddr,
    /// File holding that node's API token (0600), for calls this node makes to it
    /// (creating partner devices, relaying to the failover authority).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

/// `[node]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// `[a-z0-9-]+`; part of every generated IQN.
    pub name: String,
    /// iSCSI portals (`ip:port`), at least one.
    pub portals: Vec<SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// More directories image files may live in (and below), besides `data_dir` (or, without
    /// it, the directory holding `node.toml`). See [`NodeConfig::allowed_image_dirs`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_dirs: Vec<PathBuf>,
    /// Reactor cores; empty means "let the data plane choose".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cores: Vec<usize>,
    #[serde(default)]
    pub poll_mode: PollMode,
    /// Socket I/O of kernel TCP connections: per-connection syscalls (default) or through
    /// each reactor's io_uring.
    #[serde(default, skip_serializing_if = "SocketIo::is_default")]
    pub socket_io: SocketIo,
    /// Memory budget per reactor for write buffers and unsent read data (default 256 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_budget: Option<Size>,
}

/// Smallest and largest accepted `node.mem_budget`.
pub const MEM_BUDGET_MIN: u64 = 16 << 20;
pub const MEM_BUDGET_MAX: u64 = 1 << 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PollMode {
    /// Spin while busy, park on eventfd/io_uring when idle.
    #[default]
    Adaptive,
    /// Never park (lowest latency, burns the cores).
    Always,
}

/// `node.socket_io`: how reactors read and write kernel TCP sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SocketIo {
    /// `recv` / `writev` system calls per connection.
    #[default]
    Syscalls,
    /// RECV / SEND on the reactor's io_uring, submitted with device I/O in one enter.
    Uring,
}

impl SocketIo {
    fn is_default(&self) -> bool {
        *self == SocketIo::default()
    }
}

/// `[[device]]`: a RAM disk (`ram_size`) or an image file (`file`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// `[A-Za-z0-9_-]+`, unique on the node.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram_size: Option<Size>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// For `file`: the image's size (it must match the image and its identity record);
    /// optional for an attached image. Loading a config never creates an image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Size>,
    #[serde(default)]
    pub read_only: bool,
    /// `file` is a block device. Must be said explicitly: block devices are exempt from
    /// `image_dirs`, so only an admin editing the config can hand one out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub block_device: bool,
    #[serde(default = "default_block_size")]
    pub block_size: u32,
    #[serde(default)]
    pub cache: CacheMode,
    /// Defaults to [`DEFAULT_CACHE_SIZE`] when `cache` is not `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_size: Option<Size>,
    /// Serial, NAA and EUI-64 identifiers are derived from it; default `"<node>-<device>"`.
    /// HA partners set the same seed so hosts see one device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_seed: Option<String>,
    /// `[device.replication]`: this device is one replica of a replicated (HA) device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<ReplicationConfig>,
}

/// `[device.replication]`: how this node's replica of an HA device reaches its partners.
/// Both (all three) nodes hold the same device with the same `identity_seed`, size and
/// block size; each lists the others as partners.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationConfig {
    /// This node's id within the device's cluster (1..=3, unique among its replicas; the
    /// lowest synchronized id sequences writes).
    pub node_id: u8,
    /// File holding the per-cluster secret (hex, generated by `tandem-control`) that sync
    /// links authenticate with (HMAC-SHA256 challenge).
    pub secret_file: PathBuf,
    #[serde(default)]
    pub failover: FailoverStrategy,
    /// Heartbeat strategy: the node whose replica keeps serving when sync links fail but a
    /// heartbeat link still works.
    #[serde(default)]
    pub priority: Priority,
    #[serde(default)]
    pub journal: JournalKind,
    /// Directory for `disk-failure` / `disk-continuous` journals (default: the data dir).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal_location: Option<PathBuf>,
    /// Node-majority: the witness server (a `[[server]]` name) that holds the third vote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witness: Option<String>,
    /// Node-majority: a lock file on a share every node mounts, instead of a witness node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witness_file: Option<PathBuf>,
    /// Resync pacing: the p99 latency of host commands on this node that a resync (fast or
    /// full) should keep; the resync window shrinks when host commands are slower and grows
    /// back otherwise, never below 1/16 of one region copy (so a resync always ends). 0 turns
    /// pacing off (a fixed window of 4 region copies).
    #[serde(default = "default_resync_latency_target_ms")]
    pub resync_latency_target_ms: u64,
    #[serde(default, rename = "partner", skip_serializing_if = "Vec::is_empty")]
    pub partners: Vec<PartnerConfig>,
}

/// The default resync pacing target: 0, pacing off (a fixed window of 4 copies). Pacing is
/// opt-in until it is measured on a quiet machine: its only run (on a machine whose CPU load
/// alone put host p99 above any target) made the resync 4.6 times as long with no lower host
/// latency (docs/ha.md, "Pacing by host latency"). 10 ms is the suggested value to try: above
/// what a host sees from a healthy replicated SSD at low queue depth, below what stalls it.
pub const DEFAULT_RESYNC_LATENCY_TARGET_MS: u64 = 0;

/// A bound longer than this is no bound (a host would time out first).
pub const RESYNC_LATENCY_TARGET_MS_MAX: u64 = 60_000;

fn default_resync_latency_target_ms() -> u64 {
    DEFAULT_RESYNC_LATENCY_TARGET_MS
}

/// `[[device.replication.partner]]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartnerConfig {
    /// The partner's node name (a `[[server]]` entry when managed through the API).
    pub name: String,
    pub node_id: u8,
    /// Sync links, `LOCAL_IP:PORT=PARTNER_IP:PORT`: this node listens on LOCAL and the
    /// partner on PARTNER; the node with the lower id dials.
    pub sync_links: Vec<LinkPair>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub heartbeat_links: Vec<LinkPair>,
}

/// `LOCAL_IP:PORT=PARTNER_IP:PORT` (serialized as that string).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinkPair {
    pub local: SocketAddr,
    pub partner: SocketAddr,
}

impl LinkPair {
    /// The same link seen from the partner's side.
    pub fn reversed(self) -> LinkPair {
        LinkPair {
            local: self.partner,
            partner: self.local,
        }
    }
}

impl std::fmt::Display for LinkPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.local, self.partner)
    }
}

impl std::str::FromStr for LinkPair {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (l, p) = s
            .split_once('=')
            .ok_or_else(|| format!("link {s:?} is not LOCAL_IP:PORT=PARTNER_IP:PORT"))?;
        let parse = |a: &str| {
            a.trim()
                .parse::<SocketAddr>()
                .map_err(|e| format!("link {s:?}: {a:?} is not IP:PORT ({e})"))
        };
        Ok(LinkPair {
            local: parse(l)?,
            partner: parse(p)?,
        })
    }
}

impl Serialize for LinkPair {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LinkPair {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailoverStrategy {
    #[default]
    Heartbeat,
    NodeMajority,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Priority {
    #[default]
    First,
    Second,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JournalKind {
    #[default]
    Ram,
    DiskFailure,
    DiskContinuous,
}

fn default_block_size() -> u32 {
    512
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheMode {
    #[default]
    None,
    WriteThrough,
    WriteBack,
}

impl CacheMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            CacheMode::None => "none",
            CacheMode::WriteThrough => "write-through",
            CacheMode::WriteBack => "write-back",
        }
    }
}

impl fmt::Display for CacheMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for CacheMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(CacheMode::None),
            "write-through" => Ok(CacheMode::WriteThrough),
            "write-back" => Ok(CacheMode::WriteBack),
            other => Err(format!(
                "unknown cache mode `{other}`: use none, write-through or write-back"
            )),
        }
    }
}

/// What backs a device, derived from `ram_size` / `file`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing<'a> {
    Ram {
        size_bytes: u64,
    },
    File {
        path: &'a Path,
        size_bytes: Option<u64>,
    },
}

impl DeviceConfig {
    /// A RAM disk with defaults (512-byte blocks, no cache).
    pub fn ram(name: &str, size_bytes: u64) -> Self {
        DeviceConfig {
            name: name.to_string(),
            ram_size: Some(Size(size_bytes)),
            file: None,
            size: None,
            read_only: false,
            block_device: false,
            block_size: default_block_size(),
            cache: CacheMode::None,
            cache_size: None,
            identity_seed: None,
            replication: None,
        }
    }

    /// An image file with defaults; `size_bytes` None attaches an existing file as it is.
    pub fn file(name: &str, path: impl Into<PathBuf>, size_bytes: Option<u64>) -> Self {
        DeviceConfig {
            ram_size: None,
            file: Some(path.into()),
            size: size_bytes.map(Size),
            ..DeviceConfig::ram(name, 0)
        }
    }

    /// The backing store. Only meaningful on a validated config (exactly one is set).
    pub fn backing(&self) -> Backing<'_> {
        match (&self.ram_size, &self.file) {
            (_, Some(path)) => Backing::File {
                path,
                size_bytes: self.size.map(Size::bytes),
            },
            (Some(size), None) => Backing::Ram {
                size_bytes: size.bytes(),
            },
            (None, None) => Backing::Ram { size_bytes: 0 },
        }
    }

    /// Cache size in effect: 0 when `cache = "none"`, else `cache_size` or the default.
    pub fn effective_cache_size(&self) -> u64 {
        match self.cache {
            CacheMode::None => 0,
            _ => self.cache_size.map_or(DEFAULT_CACHE_SIZE, Size::bytes),
        }
    }

    /// Seed for the device identifiers: `identity_seed` or `"<node>-<device>"`.
    pub fn effective_identity_seed(&self, node_name: &str) -> String {
        match &self.identity_seed {
            Some(seed) => seed.clone(),
            None => format!("{node_name}-{}", self.name),
        }
    }
}

/// `[[target]]`: an iSCSI target exporting devices as LUNs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// `[a-z0-9.-]+`; the IQN is `iqn.2026-11.io.tandem:<node>-<alias>` unless `iqn` is set.
    pub alias: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iqn: Option<String>,
    /// Device names; LUN numbers are the positions (first is LUN 0).
    pub luns: Vec<String>,
    /// Initiator names allowed to log in; empty means everyone.
    #[serde(default)]
    pub allowed_initiators: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chap: Option<Chap>,
}

/// The architecture docs call this `Target`; same type.
pub type Target = TargetConfig;

impl TargetConfig {
    /// A target for one device with no CHAP and no ACL.
    pub fn for_device(alias: &str, device: &str) -> Self {
        TargetConfig {
            alias: alias.to_string(),
            iqn: None,
            luns: vec![device.to_string()],
            allowed_initiators: Vec::new(),
            chap: None,
        }
    }

    /// The target's IQN: the explicit `iqn`, or `iqn.2026-11.io.tandem:<node>-<alias>`.
    pub fn iqn(&self, node_name: &str) -> String {
        match &self.iqn {
            Some(iqn) => iqn.clone(),
            None => format!("{IQN_PREFIX}{node_name}-{}", self.alias),
        }
    }
}

/// `[target.chap]`: one-way CHAP (initiator proves itself), optionally mutual.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chap {
    pub username: String,
    pub secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutual_username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutual_secret: Option<String>,
}

impl fmt::Debug for Chap {
    /// Secrets are never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chap")
            .field("username", &self.username)
            .field("secret", &"<redacted>")
            .field("mutual_username", &self.mutual_username)
            .field(
                "mutual_secret",
                &self.mutual_secret.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl NodeConfig {
    /// Reads, parses and validates a config file. Errors name the file, the key and the reason.
    pub fn load(path: impl AsRef<Path>) -> Result<NodeConfig, ConfigError> {
        let path = path.as_ref();
        let config = NodeConfig::load_unvalidated(path)?;
        config.validate().map_err(|errors| ConfigError::Invalid {
            origin: path.display().to_string(),
            errors,
        })?;
        Ok(config)
    }

    /// Reads and parses a config file without the rules, so a caller can apply overrides
    /// (e.g. `tandem-control --image-dir`) before it validates.
    pub fn load_unvalidated(path: impl AsRef<Path>) -> Result<NodeConfig, ConfigError> {
        let path = path.as_ref();
        let origin = path.display().to_string();
        let io_err = |source| ConfigError::Io {
            origin: origin.clone(),
            source,
        };
        let len = std::fs::metadata(path).map_err(io_err)?.len();
        if len > CONFIG_FILE_BYTES_MAX {
            return Err(ConfigError::TooLarge {
                origin,
                len,
                max: CONFIG_FILE_BYTES_MAX,
            });
        }
        let text = std::fs::read_to_string(path).map_err(io_err)?;
        NodeConfig::parse_unvalidated(&text, &origin)
    }

    /// Parses and validates TOML text; `origin` names it in errors (a path, `"<api>"`, ...).
    pub fn from_toml_str(text: &str, origin: &str) -> Result<NodeConfig, ConfigError> {
        let config = NodeConfig::parse_unvalidated(text, origin)?;
        config.validate().map_err(|errors| ConfigError::Invalid {
            origin: origin.to_string(),
            errors,
        })?;
        Ok(config)
    }

    fn parse_unvalidated(text: &str, origin: &str) -> Result<NodeConfig, ConfigError> {
        let deserializer = toml::Deserializer::new(text);
        let config: NodeConfig = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let line_col = inner.span().map(|span| line_col(text, span.start));
            ConfigError::Parse {
                origin: origin.to_string(),
                key: if key == "." { None } else { Some(key) },
                line: line_col.map(|(l, _)| l),
                column: line_col.map(|(_, c)| c),
                reason: inner.message().trim().to_string(),
            }
        })?;
        Ok(config)
    }

    /// Serializes to TOML (round-trips through [`NodeConfig::from_toml_str`]).
    pub fn to_toml_string(&self) -> String {
        // Serializing these plain types to TOML cannot fail: no maps with non-string keys,
        // no values after tables (the field order puts [node] first).
        toml::to_string_pretty(self).expect("NodeConfig always serializes to TOML")
    }

    /// Validates and saves atomically (see [`crate::save_atomic`]); the file gets mode 0600
    /// because it may hold CHAP secrets.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), ConfigError> {
        let path = path.as_ref();
        let origin = path.display().to_string();
        self.validate().map_err(|errors| ConfigError::Invalid {
            origin: origin.clone(),
            errors,
        })?;
        crate::save_atomic(path, self.to_toml_string().as_bytes())
            .map_err(|source| ConfigError::Io { origin, source })
    }

    /// The embedded default: node "tandem", one 1 GiB RAM disk "ram0" exported by target
    /// alias "ram0" on `portal`.
    pub fn default_ram(portal: SocketAddr) -> NodeConfig {
        NodeConfig {
            node: NodeSection {
                name: "tandem".to_string(),
                portals: vec![portal],
                data_dir: None,
                image_dirs: Vec::new(),
                cores: Vec::new(),
                poll_mode: PollMode::Adaptive,
                socket_io: SocketIo::Syscalls,
                mem_budget: None,
            },
            devices: vec![DeviceConfig::ram("ram0", 1 << 30)],
            targets: vec![TargetConfig::for_device("ram0", "ram0")],
            servers: Vec::new(),
        }
    }

    /// An empty node (no devices, no targets) with the given name and portals.
    pub fn empty(name: &str, portals: Vec<SocketAddr>) -> NodeConfig {
        NodeConfig {
            node: NodeSection {
                name: name.to_string(),
                portals,
                data_dir: None,
                image_dirs: Vec::new(),
                cores: Vec::new(),
                poll_mode: PollMode::Adaptive,
                socket_io: SocketIo::Syscalls,
                mem_budget: None,
            },
            devices: Vec::new(),
            targets: Vec::new(),
            servers: Vec::new(),
        }
    }

    pub fn device(&self, name: &str) -> Option<&DeviceConfig> {
        self.devices.iter().find(|d| d.name == name)
    }

    pub fn device_mut(&mut self, name: &str) -> Option<&mut DeviceConfig> {
        self.devices.iter_mut().find(|d| d.name == name)
    }

    /// The target whose IQN (explicit or generated) is `iqn`, compared case-insensitively.
    pub fn target_by_iqn(&self, iqn: &str) -> Option<&TargetConfig> {
        self.targets
            .iter()
            .find(|t| t.iqn(&self.node.name).eq_ignore_ascii_case(iqn))
    }

    pub fn target_by_iqn_mut(&mut self, iqn: &str) -> Option<&mut TargetConfig> {
        let node = self.node.name.clone();
        self.targets
            .iter_mut()
            .find(|t| t.iqn(&node).eq_ignore_ascii_case(iqn))
    }

    /// `[device.replication]` of one device (`at` is its key, `device[i].replication`).
    fn validate_replication(&self, r: &ReplicationConfig, at: &str, errs: &mut Problems) {
        let key = |field: &str| format!("{at}.{field}");
        let id_ok = |id: u8| (1..=REPLICA_NODE_ID_MAX).contains(&id);
        if !id_ok(r.node_id) {
            errs.add(
                key("node_id"),
                format!(
                    "{} is not a node id: use 1..={REPLICA_NODE_ID_MAX}",
                    r.node_id
                ),
            );
        }
        if let Err(reason) = check_normal_path(&r.secret_file) {
            errs.add(key("secret_file"), reason);
        }
        if let Some(dir) = &r.journal_location {
            if let Err(reason) = check_normal_path(dir) {
                errs.add(key("journal_location"), reason);
            }
        }
        if r.resync_latency_target_ms > RESYNC_LATENCY_TARGET_MS_MAX {
            errs.add(
                key("resync_latency_target_ms"),
                format!(
                    "{} ms: use 0 (no pacing) to {RESYNC_LATENCY_TARGET_MS_MAX}",
                    r.resync_latency_target_ms
                ),
            );
        }
        if r.partners.is_empty() || r.partners.len() > REPLICA_PARTNERS_MAX {
            errs.add(
                key("partner"),
                format!(
                    "{} partners: a replicated device has 1 or {REPLICA_PARTNERS_MAX} partners",
                    r.partners.len()
                ),
            );
        }
        let mut ids = HashSet::from([r.node_id]);
        let mut names = HashSet::new();
        let mut locals = HashSet::new();
        for (j, p) in r.partners.iter().enumerate() {
            let pkey = |field: &str| format!("{at}.partner[{j}].{field}");
            if !is_node_name(&p.name) {
                errs.add(
                    pkey("name"),
                    format!("`{}` is not a valid node name", p.name),
                );
            } else if !names.insert(p.name.as_str()) || p.name == self.node.name {
                errs.add(
                    pkey("name"),
                    format!("`{}` is this node or another partner", p.name),
                );
            }
            if !id_ok(p.node_id) {
                errs.add(
                    pkey("node_id"),
                    format!(
                        "{} is not a node id: use 1..={REPLICA_NODE_ID_MAX}",
                        p.node_id
                    ),
                );
            } else if !ids.insert(p.node_id) {
                errs.add(
                    pkey("node_id"),
                    format!(
                        "node id {} is used twice (this node's and every partner's must differ)",
                        p.node_id
                    ),
                );
            }
            if p.sync_links.is_empty() {
                errs.add(
                    pkey("sync_links"),
                    "at least one sync link is needed".into(),
                );
            }
            for (field, links) in [
                ("sync_links", &p.sync_links),
                ("heartbeat_links", &p.heartbeat_links),
            ] {
                if links.len() > REPLICA_LINKS_MAX {
                    errs.add(
                        pkey(field),
                        format!("{} links, at most {REPLICA_LINKS_MAX} allowed", links.len()),
                    );
                }
                for (k, l) in links.iter().enumerate() {
                    if l.local.port() == 0 || l.partner.port() == 0 {
                        errs.add(format!("{}[{k}]", pkey(field)), format!("`{l}`: port 0"));
                    } else if l.local == l.partner {
                        errs.add(
                            format!("{}[{k}]", pkey(field)),
                            format!("`{l}`: local and partner address are the same"),
                        );
                    } else if !locals.insert(l.local) {
                        errs.add(
                            format!("{}[{k}]", pkey(field)),
                            format!(
                                "`{}` is the local end of another link of this device",
                                l.local
                            ),
                        );
                    }
                }
            }
        }
        match r.failover {
            FailoverStrategy::Heartbeat => {
                if r.witness.is_some() || r.witness_file.is_some() {
                    errs.add(
                        key("witness"),
                        "a witness holds a vote under `failover = \"node-majority\"` only".into(),
                    );
                }
            }
            FailoverStrategy::NodeMajority => {
                if r.witness.is_some() && r.witness_file.is_some() {
                    errs.add(
                        key("witness"),
                        "set `witness` (a witness node) or `witness_file` (a lock file), not both"
                            .into(),
                    );
                }
                if let Some(w) = &r.witness {
                    if !self.servers.iter().any(|s| &s.name == w) {
                        errs.add(
                            key("witness"),
                            format!("no [[server]] named `{w}` (add the witness node with `tandem server add`)"),
                        );
                    }
                }
                if let Some(f) = &r.witness_file {
                    if let Err(reason) = check_normal_path(f) {
                        errs.add(key("witness_file"), reason);
                    }
                }
                if r.partners.len() == 1 && r.witness.is_none() && r.witness_file.is_none() {
                    errs.add(
                        key("failover"),
                        "node majority with two data nodes needs a third vote: set `witness` or `witness_file`".into(),
                    );
                }
            }
        }
    }

    /// Checks everything serde cannot: names, uniqueness, references, sizes, limits.
    /// Returns every problem found, each with its key (`device[1].block_size`) and reason.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errs = Problems::default();

        // [node]
        let node = &self.node;
        if !is_node_name(&node.name) {
            errs.add(
                "node.name".into(),
                format!(
                    "`{}` is not a valid node name: use 1-63 characters from [a-z0-9-], not starting or ending with '-'",
                    node.name
                ),
            );
        }
        if let Some(b) = node.mem_budget {
            if !(MEM_BUDGET_MIN..=MEM_BUDGET_MAX).contains(&b.bytes()) {
                errs.add(
                    "node.mem_budget".into(),
                    format!(
                        "{} is outside {} .. {}",
                        format_size(b.bytes()),
                        format_size(MEM_BUDGET_MIN),
                        format_size(MEM_BUDGET_MAX)
                    ),
                );
            }
        }
        if node.portals.is_empty() {
            errs.add(
                "node.portals".into(),
                "at least one iSCSI portal (ip:port) is required, e.g. [\"127.0.0.1:3260\"]".into(),
            );
        }
        if node.portals.len() > PORTALS_MAX {
            errs.add(
                "node.portals".into(),
                format!(
                    "{} portals given, at most {PORTALS_MAX} allowed",
                    node.portals.len()
                ),
            );
        }
        let mut seen_portals = HashSet::new();
        for (i, portal) in node.portals.iter().enumerate() {
            if portal.port() == 0 {
                errs.add(
                    format!("node.portals[{i}]"),
                    format!("`{portal}`: port 0 is not a usable portal"),
                );
            }
            if portal.ip().is_multicast() {
                errs.add(
                    format!("node.portals[{i}]"),
                    format!("`{portal}`: multicast address"),
                );
            }
            if !seen_portals.insert(portal) {
                errs.add(
                    format!("node.portals[{i}]"),
                    format!("`{portal}` is listed twice"),
                );
            }
        }
        let mut seen_cores = HashSet::new();
        for (i, core) in node.cores.iter().enumerate() {
            if !seen_cores.insert(core) {
                errs.add(
                    format!("node.cores[{i}]"),
                    format!("core {core} is listed twice"),
                );
            }
        }
        if let Some(dir) = &node.data_dir {
            if let Err(reason) = check_normal_path(dir) {
                errs.add("node.data_dir".into(), reason);
            }
        }
        if node.image_dirs.len() > IMAGE_DIRS_MAX {
            errs.add(
                "node.image_dirs".into(),
                format!(
                    "{} directories, at most {IMAGE_DIRS_MAX} allowed",
                    node.image_dirs.len()
                ),
            );
        }
        for (i, dir) in node.image_dirs.iter().enumerate() {
            if let Err(reason) = check_normal_path(dir) {
                errs.add(format!("node.image_dirs[{i}]"), reason);
            }
        }
        // Without `data_dir` the default image directory is the control data dir, which the
        // text does not say: the control service and the data plane confine those paths.
        let confined_to: Vec<&Path> = match &node.data_dir {
            Some(dir) => std::iter::once(dir.as_path())
                .chain(node.image_dirs.iter().map(PathBuf::as_path))
                .collect(),
            None => Vec::new(),
        };

        // [[device]]
        if self.devices.len() > DEVICES_MAX {
            errs.add(
                "device".into(),
                format!(
                    "{} devices, at most {DEVICES_MAX} allowed",
                    self.devices.len()
                ),
            );
        }
        let mut device_names = HashSet::new();
        let mut files = HashSet::new();
        for (i, d) in self.devices.iter().enumerate() {
            let key = |field: &str| format!("device[{i}].{field}");
            if !is_device_name(&d.name) {
                errs.add(
                    key("name"),
                    format!(
                        "`{}` is not a valid device name: use 1-64 characters from [A-Za-z0-9_-]",
                        d.name
                    ),
                );
            } else if !device_names.insert(d.name.as_str()) {
                errs.add(key("name"), format!("device `{}` is defined twice", d.name));
            }
            if d.block_size != 512 && d.block_size != 4096 {
                errs.add(
                    key("block_size"),
                    format!(
                        "{} is not supported: use 512 (Linux/Xen/KVM) or 4096 (Windows)",
                        d.block_size
                    ),
                );
            }
            let bs = u64::from(d.block_size);
            let check_size = |errs: &mut Problems, field: &str, size: Size| {
                let max = if field == "size" {
                    DEVICE_BYTES_MAX
                } else {
                    RAM_BYTES_MAX
                };
                if size.0 == 0 {
                    errs.add(key(field), "size must be greater than 0".into());
                } else if size.0 > max {
                    errs.add(
                        key(field),
                        format!(
                            "{} is more than the largest supported, {}",
                            format_size(size.0),
                            format_size(max)
                        ),
                    );
                } else if (bs == 512 || bs == 4096) && size.0 % bs != 0 {
                    errs.add(
                        key(field),
                        format!(
                            "{} ({} bytes) is not a multiple of the block size {bs}",
                            format_size(size.0),
                            size.0
                        ),
                    );
                }
            };
            match (&d.ram_size, &d.file) {
                (Some(_), Some(_)) => errs.add(
                    key("file"),
                    "set exactly one of `ram_size` (RAM disk) or `file` (image file), not both"
                        .into(),
                ),
                (None, None) => errs.add(
                    format!("device[{i}]"),
                    format!(
                        "device `{}` needs `ram_size` (RAM disk) or `file` (image file)",
                        d.name
                    ),
                ),
                (Some(size), None) => {
                    check_size(&mut errs, "ram_size", *size);
                    if d.block_device {
                        errs.add(
                            key("block_device"),
                            "a RAM disk is not a block device: drop `block_device`".into(),
                        );
                    }
                    if d.size.is_some() {
                        errs.add(
                            key("size"),
                            "`size` is for image files; a RAM disk's size is `ram_size`".into(),
                        );
                    }
                }
                (None, Some(path)) => {
                    if let Err(reason) = check_normal_path(path) {
                        errs.add(key("file"), reason);
                    } else if !d.block_device && !confined_to.is_empty() {
                        if let Err(reason) = check_confined(path, &confined_to) {
                            errs.add(key("file"), reason);
                        }
                    }
                    if path.is_absolute() && !files.insert(path.as_path()) {
                        errs.add(
                            key("file"),
                            format!("`{}` is already used by another device", path.display()),
                        );
                    }
                    if let Some(size) = d.size {
                        check_size(&mut errs, "size", size);
                    }
                }
            }
            match (d.cache, d.cache_size) {
                (CacheMode::None, Some(_)) => errs.add(
                    key("cache_size"),
                    "`cache_size` needs `cache` = \"write-through\" or \"write-back\"".into(),
                ),
                (_, Some(size)) => check_size(&mut errs, "cache_size", size),
                _ => {}
            }
            if let Some(seed) = &d.identity_seed {
                if seed.is_empty()
                    || seed.len() > IDENTITY_SEED_LEN_MAX
                    || seed.chars().any(char::is_control)
                {
                    errs.add(
                        key("identity_seed"),
                        format!("must be 1-{IDENTITY_SEED_LEN_MAX} bytes of printable text"),
                    );
                }
            }
            if let Some(r) = &d.replication {
                self.validate_replication(r, &key("replication"), &mut errs);
            }
        }

        // [[target]]
        if self.targets.len() > TARGETS_MAX {
            errs.add(
                "target".into(),
                format!(
                    "{} targets, at most {TARGETS_MAX} allowed",
                    self.targets.len()
                ),
            );
        }
        let mut iqns = HashSet::new();
        let mut aliases = HashSet::new();
        for (i, t) in self.targets.iter().enumerate() {
            let key = |field: &str| format!("target[{i}].{field}");
            if !is_alias(&t.alias) {
                errs.add(
                    key("alias"),
                    format!(
                        "`{}` is not a valid target alias: use 1-64 characters from [a-z0-9.-] (it becomes part of the IQN)",
                        t.alias
                    ),
                );
            } else if !aliases.insert(t.alias.as_str()) {
                errs.add(
                    key("alias"),
                    format!("alias `{}` is used by two targets", t.alias),
                );
            }
            if let Some(iqn) = &t.iqn {
                if let Err(reason) = validate_iscsi_name(iqn) {
                    errs.add(key("iqn"), reason);
                }
            }
            let iqn = t.iqn(&node.name).to_ascii_lowercase();
            if t.iqn.is_none() && is_node_name(&node.name) && is_alias(&t.alias) {
                if let Err(reason) = validate_iscsi_name(&iqn) {
                    errs.add(key("alias"), format!("generated IQN is invalid: {reason}"));
                }
            }
            if !iqns.insert(iqn.clone()) {
                errs.add(key("iqn"), format!("IQN `{iqn}` is used by two targets"));
            }
            if t.luns.is_empty() {
                errs.add(
                    key("luns"),
                    "a target needs at least one LUN (a device name)".into(),
                );
            }
            if t.luns.len() > LUNS_PER_TARGET_MAX {
                errs.add(
                    key("luns"),
                    format!(
                        "{} LUNs, at most {LUNS_PER_TARGET_MAX} allowed",
                        t.luns.len()
                    ),
                );
            }
            let mut luns = HashSet::new();
            for (j, lun) in t.luns.iter().enumerate() {
                if self.device(lun).is_none() {
                    errs.add(
                        format!("target[{i}].luns[{j}]"),
                        format!("no device named `{lun}` (define it in a [[device]] table)"),
                    );
                } else if !luns.insert(lun.as_str()) {
                    errs.add(
                        format!("target[{i}].luns[{j}]"),
                        format!("device `{lun}` is already LUN of this target"),
                    );
                }
            }
            if t.allowed_initiators.len() > INITIATORS_PER_TARGET_MAX {
                errs.add(
                    key("allowed_initiators"),
                    format!(
                        "{} initiators, at most {INITIATORS_PER_TARGET_MAX} allowed",
                        t.allowed_initiators.len()
                    ),
                );
            }
            let mut initiators = HashSet::new();
            for (j, name) in t.allowed_initiators.iter().enumerate() {
                if let Err(reason) = validate_iscsi_name(name) {
                    errs.add(format!("target[{i}].allowed_initiators[{j}]"), reason);
                } else if !initiators.insert(name.to_ascii_lowercase()) {
                    errs.add(
                        format!("target[{i}].allowed_initiators[{j}]"),
                        format!("`{name}` is listed twice"),
                    );
                }
            }
            if let Some(chap) = &t.chap {
                for (field, reason) in chap.problems() {
                    errs.add(format!("target[{i}].chap.{field}"), reason);
                }
            }
        }

        // [[server]]
        let mut servers = HashSet::new();
        for (i, server) in self.servers.iter().enumerate() {
            if !is_node_name(&server.name) {
                errs.add(
                    format!("server[{i}].name"),
                    format!("`{}` is not a valid node name: use [a-z0-9-]", server.name),
                );
            } else if server.name == node.name {
                errs.add(
                    format!("server[{i}].name"),
                    "is this node's own name".into(),
                );
            } else if !servers.insert(server.name.as_str()) {
                errs.add(
                    format!("server[{i}].name"),
                    format!("server `{}` is listed twice", server.name),
                );
            }
            if server.address.port() == 0 {
                errs.add(
                    format!("server[{i}].address"),
                    "port 0 is not usable".into(),
                );
            }
        }

        if errs.0.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(errs.0))
        }
    }
}

impl NodeConfig {
    /// Where image files may live (and below): `node.data_dir` (else `default_dir`, the
    /// directory holding `node.toml`, i.e. the control data dir) and every `node.image_dirs`.
    pub fn allowed_image_dirs(&self, default_dir: &Path) -> Vec<PathBuf> {
        let home = self.node.data_dir.as_deref().unwrap_or(default_dir);
        let mut dirs = vec![home.to_path_buf()];
        dirs.extend(self.node.image_dirs.iter().cloned());
        dirs
    }

    /// Bytes of RAM the node's RAM disks and caches take together (see `crate::memory`).
    pub fn ram_bytes(&self) -> u64 {
        self.devices.iter().map(DeviceConfig::ram_bytes).sum()
    }
}

impl DeviceConfig {
    /// Bytes of RAM this device takes: its RAM disk plus its cache.
    pub fn ram_bytes(&self) -> u64 {
        self.ram_size
            .map_or(0, Size::bytes)
            .saturating_add(self.effective_cache_size())
    }
}

/// An absolute path in normal form: no `.` or `..` components, no `//` or trailing `/`, so
/// what is stored is what is meant and two spellings of one file cannot both pass.
pub fn check_normal_path(path: &Path) -> Result<(), String> {
    use std::path::Component;
    if !path.is_absolute() {
        return Err(format!("`{}` must be an absolute path", path.display()));
    }
    if path
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(format!(
            "`{}` contains `.` or `..`: write the path without them",
            path.display()
        ));
    }
    let rebuilt: PathBuf = path.components().collect();
    if rebuilt.as_os_str() != path.as_os_str() {
        return Err(format!(
            "`{}` is not in normal form: write it as `{}`",
            path.display(),
            rebuilt.display()
        ));
    }
    Ok(())
}

/// `path` lies below one of `dirs` (compared by components, both in normal form).
pub fn check_confined(path: &Path, dirs: &[&Path]) -> Result<(), String> {
    if dirs.iter().any(|d| path.starts_with(d) && path != *d) {
        return Ok(());
    }
    Err(format!(
        "`{}` is outside the image directories ({}); put images there or add a directory to `node.image_dirs`",
        path.display(),
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

impl Chap {
    /// Every problem with these credentials, as (field, reason).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let check_user = |out: &mut Vec<_>, field, user: &str| {
            if user.is_empty() || user.len() > 255 || user.chars().any(|c| c.is_control()) {
                out.push((field, "must be 1-255 bytes of printable text".to_string()));
            }
        };
        let check_secret = |out: &mut Vec<_>, field, secret: &str| {
            if !(CHAP_SECRET_LEN_MIN..=CHAP_SECRET_LEN_MAX).contains(&secret.len()) {
                out.push((
                    field,
                    format!(
                        "is {} bytes; CHAP secrets must be {CHAP_SECRET_LEN_MIN}-{CHAP_SECRET_LEN_MAX} bytes (12-16 works with every initiator)",
                        secret.len()
                    ),
                ));
            }
        };
        check_user(&mut out, "username", &self.username);
        check_secret(&mut out, "secret", &self.secret);
        match (&self.mutual_username, &self.mutual_secret) {
            (None, None) => {}
            (Some(user), Some(secret)) => {
                check_user(&mut out, "mutual_username", user);
                check_secret(&mut out, "mutual_secret", secret);
                if *secret == self.secret {
                    out.push((
                        "mutual_secret",
                        "must differ from `secret` (RFC 3720 section 8.2.1)".to_string(),
                    ));
                }
            }
            (Some(_), None) => out.push((
                "mutual_secret",
                "`mutual_username` is set but `mutual_secret` is missing".into(),
            )),
            (None, Some(_)) => out.push((
                "mutual_username",
                "`mutual_secret` is set but `mutual_username` is missing".into(),
            )),
        }
        out
    }
}

#[derive(Default)]
struct Problems(Vec<FieldError>);

impl Problems {
    fn add(&mut self, key: String, reason: String) {
        self.0.push(FieldError { key, reason });
    }
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// A portal on 127.0.0.1 (handy for tests and the default config).
pub fn loopback_portal(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}
