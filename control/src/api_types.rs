//! JSON bodies of the management API, shared by the server and the `tandem` CLI.
//! `docs/api/openapi.yaml` describes the same shapes.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tandem_config::ipc::{DeviceStats, ReactorStats};
use tandem_config::{CacheMode, Size};

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

/// `POST /api/v1/servers`, and the items of `GET /api/v1/servers`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServerInfo {
    pub name: String,
    pub address: SocketAddr,
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
