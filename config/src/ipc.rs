//! Messages between `tandem-control` and `tandem-dataplane` over a local Unix stream socket.
//!
//! The data plane listens on the path given by `--control-socket PATH`; the control service
//! connects. Framing: one JSON [`Envelope`] per line (`\n`-terminated, UTF-8, at most
//! [`LINE_BYTES_MAX`] bytes). Every request gets exactly one response carrying the same `id`;
//! responses may come back in any order. A peer that receives an envelope whose `version` is
//! not [`IPC_VERSION`] answers `Error { code: VersionMismatch }` (id echoed) and may close.
//! Bump [`IPC_VERSION`] on any incompatible change.
//!
//! Example lines:
//! ```text
//! {"version":1,"id":1,"body":{"request":{"op":"hello"}}}
//! {"version":1,"id":1,"body":{"response":{"result":"ok"}}}
//! {"version":1,"id":2,"body":{"request":{"op":"extend_device","args":{"name":"disk1","new_size_bytes":2147483648}}}}
//! {"version":1,"id":2,"body":{"response":{"result":"error","data":{"code":"not_found","message":"no device disk1"}}}}
//! ```
//!
//! Semantics the data plane implements (control persists the config *before* sending):
//! - `AddDevice`: admit and open the backing store (an image must exist and match its identity
//!   record; nothing is created) and make it available for targets. Error `already_exists` if
//!   the name is taken, `bad_request` with the reason if the device cannot be admitted.
//! - `RetryDevice`: open a device that failed (at start, or an earlier retry) again with the
//!   given config; its unserved targets are served once all their devices are online.
//! - `RemoveDevice`: control first removes (or re-adds without it) every target that uses it;
//!   the data plane answers `busy` if a target still exports it.
//! - `ExtendDevice`: grow to `new_size_bytes` (multiple of the block size, larger than now);
//!   hosts get a CAPACITY DATA HAS CHANGED unit attention.
//! - `GrowReplica`: first phase of the extend of a replicated device: grow the local copy and
//!   the replication engine to `new_size_bytes`, but not the size the LU reports (hosts see
//!   nothing). Control sends it to every node of the device before any `ExtendDevice`.
//! - `AddTarget` / `RemoveTarget`: start/stop exporting; removing a target ends its sessions.
//!   `AddTarget`'s IQN is computed with [`crate::TargetConfig::iqn`] and the data plane's node name.
//! - `SetChap` / `SetAcl`: apply to new logins; existing sessions are kept.
//! - `Stats`: counters are cumulative since the data plane started; latency percentiles are
//!   over all I/Os completed since then.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::{CacheMode, Chap, DeviceConfig, TargetConfig};
use crate::size::Size;

/// Current protocol version; both sides must agree.
pub const IPC_VERSION: u32 = 1;
/// Longest line either side accepts, including the newline.
pub const LINE_BYTES_MAX: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub version: u32,
    /// Chosen by the requester, echoed in the response.
    pub id: u64,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Body {
    Request(Request),
    Response(Response),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", content = "args", rename_all = "snake_case")]
pub enum Request {
    /// First message on a connection; answered with `Ok` (or `Error{VersionMismatch}`).
    Hello,
    /// Answered with `Response::Status`.
    Status,
    AddDevice(DeviceConfig),
    RemoveDevice {
        name: String,
    },
    ExtendDevice {
        name: String,
        new_size_bytes: u64,
    },
    GrowReplica {
        name: String,
        new_size_bytes: u64,
    },
    SetCacheMode {
        name: String,
        cache: CacheMode,
        cache_size: Option<Size>,
    },
    AddTarget(TargetConfig),
    RemoveTarget {
        iqn: String,
    },
    SetChap {
        iqn: String,
        chap: Option<Chap>,
    },
    SetAcl {
        iqn: String,
        allowed_initiators: Vec<String>,
    },
    /// Answered with `Response::Stats`.
    Stats,
    /// Opens a failed device again with this (possibly updated) config, e.g. after its image
    /// was restored or re-bound; its targets are served once all their devices are.
    RetryDevice(DeviceConfig),
    /// Replicated devices: deliver the failover authority's updates to the device's engine
    /// and collect what the engine asks of the authority. Answered with `Response::Ha`.
    /// The control service calls it periodically (and at once after an update).
    HaExchange {
        device: String,
        updates: Vec<HaUpdate>,
    },
}

/// A configuration from the failover authority, with the lease it grants (if any).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaUpdate {
    pub config: tandem_ha::EpochConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<HaLease>,
}

/// A lease: this node may serve in `epoch` for `duration_ns` counted from `requested_at_ns`,
/// the data plane's own clock when it reported the lease request (echoed from
/// [`HaReport::now_ns`]). Counting from the request, not the grant, keeps the node's lease
/// ending before the authority's view of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaLease {
    pub epoch: tandem_ha::Epoch,
    pub requested_at_ns: u64,
    pub duration_ns: u64,
}

/// What a replicated device's engine asks of the authority, and its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaReport {
    /// The data plane's monotonic clock when this report was built.
    pub now_ns: u64,
    /// Requests for the authority (a lease request is always included while the device is a
    /// member).
    pub requests: Vec<tandem_ha::authority::ToAuthority>,
    pub status: HaDeviceStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaDeviceStatus {
    pub node_id: u8,
    /// The configuration this node's engine holds (none before the first one arrives).
    pub config: Option<tandem_ha::EpochConfig>,
    /// Serving host I/O now (synchronized member with a valid lease).
    pub serving: bool,
    pub meta: tandem_ha::ReplicaMeta,
    pub partners: Vec<HaPartnerStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaPartnerStatus {
    pub name: String,
    pub node_id: u8,
    pub links: Vec<HaLinkStatus>,
    /// Regions this node holds dirty for the partner (to copy when it returns).
    pub dirty_regions: u64,
    /// Resync towards the partner, when this node sequences one: regions copied / to copy.
    pub resync_done_regions: u64,
    pub resync_total_regions: u64,
    pub bytes_mirrored: u64,
    /// The first dirty regions (indices of 64 KiB regions, at most [`HA_DIRTY_LIST_MAX`]);
    /// `dirty_regions` is the full count. Listed before a split brain is resolved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dirty_list: Vec<u64>,
    /// The dirty bitmap holds every region this node wrote since the partner left (false
    /// after a restart of the data plane since then: the list may miss regions).
    #[serde(default)]
    pub dirty_complete: bool,
    /// This node sequences and refused the partner's sync because its copy is smaller
    /// (it restarted between the two phases of an extend): it stays not synchronized until
    /// the extend is finished for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_refused: Option<HaSizeRefusal>,
}

/// A joiner's copy smaller than the sequencer's geometry (`tandem_ha::Output::SyncSizeRefused`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaSizeRefusal {
    pub partner_blocks: u64,
    pub own_blocks: u64,
}

/// Most dirty regions listed per partner in [`HaPartnerStatus::dirty_list`].
pub const HA_DIRTY_LIST_MAX: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaLinkStatus {
    /// `LOCAL_IP:PORT=PARTNER_IP:PORT`
    pub link: String,
    pub up: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", content = "data", rename_all = "snake_case")]
pub enum Response {
    Ok,
    Error { code: ErrorCode, message: String },
    Status(StatusReport),
    Stats(StatsReport),
    Ha(HaReport),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed or breaks a rule (bad size, bad name...).
    BadRequest,
    NotFound,
    AlreadyExists,
    /// The object is in use (e.g. a device still exported by a target).
    Busy,
    /// The backing store failed (open, create, fallocate, resize...).
    Io,
    /// Understood but not supported by this data plane.
    Unsupported,
    VersionMismatch,
    Internal,
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        f.write_str(&s)
    }
}

/// What the data plane is serving right now.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub pid: u32,
    pub uptime_s: u64,
    /// Data plane software version.
    pub version: String,
    pub portals: Vec<String>,
    pub devices: Vec<DeviceStatus>,
    pub targets: Vec<TargetStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceStatus {
    pub name: String,
    pub size_bytes: u64,
    pub block_size: u32,
    pub read_only: bool,
    pub cache: CacheMode,
    /// Bytes of the RAM cache holding data not yet on disk (write-back only).
    #[serde(default)]
    pub cache_dirty_bytes: u64,
    /// `online`, `failed` or another data-plane-defined word.
    pub state: String,
    /// Why a `failed` device is not served, and what to do about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TargetStatus {
    pub iqn: String,
    pub luns: Vec<String>,
    pub sessions: u32,
    /// Names of the initiators logged in now.
    #[serde(default)]
    pub initiators: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsReport {
    pub devices: Vec<DeviceStats>,
    pub reactors: Vec<ReactorStats>,
}

/// Per-device counters, cumulative since the data plane started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceStats {
    pub name: String,
    pub read_ops: u64,
    pub write_ops: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub errors: u64,
    pub latency_us_p50: u64,
    pub latency_us_p99: u64,
    pub latency_us_p999: u64,
    /// Commands in flight now.
    pub queue_depth: u32,
    /// Sessions using the device now.
    pub sessions: u32,
}

/// Per-reactor counters, cumulative since the data plane started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReactorStats {
    pub core: u32,
    pub busy_polls: u64,
    pub idle_polls: u64,
    pub pdus: u64,
    pub ios: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    #[error("IPC line is {0} bytes, longer than the {LINE_BYTES_MAX}-byte limit")]
    TooLong(usize),
    #[error("malformed IPC message: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("IPC version {got} not supported (this side speaks {IPC_VERSION})")]
    Version { got: u32, id: u64 },
}

impl Envelope {
    pub fn request(id: u64, request: Request) -> Self {
        Envelope {
            version: IPC_VERSION,
            id,
            body: Body::Request(request),
        }
    }

    pub fn response(id: u64, response: Response) -> Self {
        Envelope {
            version: IPC_VERSION,
            id,
            body: Body::Response(response),
        }
    }

    /// One line of JSON, newline included.
    pub fn to_line(&self) -> String {
        // Plain data with string keys: serialization cannot fail.
        let mut line = serde_json::to_string(self).expect("Envelope serializes to JSON");
        line.push('\n');
        line
    }

    /// Parses one line (with or without its newline) and checks the version.
    pub fn from_line(line: &str) -> Result<Envelope, IpcError> {
        if line.len() > LINE_BYTES_MAX {
            return Err(IpcError::TooLong(line.len()));
        }
        let env: Envelope = serde_json::from_str(line.trim_end_matches(['\n', '\r']))?;
        if env.version != IPC_VERSION {
            return Err(IpcError::Version {
                got: env.version,
                id: env.id,
            });
        }
        Ok(env)
    }
}

impl Response {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Response::Error {
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_stable() {
        assert_eq!(
            Envelope::request(1, Request::Hello).to_line(),
            "{\"version\":1,\"id\":1,\"body\":{\"request\":{\"op\":\"hello\"}}}\n"
        );
        assert_eq!(
            Envelope::request(2, Request::ExtendDevice { name: "d".into(), new_size_bytes: 4096 }).to_line(),
            "{\"version\":1,\"id\":2,\"body\":{\"request\":{\"op\":\"extend_device\",\"args\":{\"name\":\"d\",\"new_size_bytes\":4096}}}}\n"
        );
        assert_eq!(
            Envelope::response(3, Response::error(ErrorCode::NotFound, "no")).to_line(),
            "{\"version\":1,\"id\":3,\"body\":{\"response\":{\"result\":\"error\",\"data\":{\"code\":\"not_found\",\"message\":\"no\"}}}}\n"
        );
        assert_eq!(
            Envelope::response(4, Response::Ok).to_line(),
            "{\"version\":1,\"id\":4,\"body\":{\"response\":{\"result\":\"ok\"}}}\n"
        );
    }

    #[test]
    fn every_message_round_trips() {
        let dev = DeviceConfig {
            cache: CacheMode::WriteBack,
            cache_size: Some(Size(1 << 26)),
            ..DeviceConfig::ram("d1", 1 << 30)
        };
        let chap = Chap {
            username: "u".into(),
            secret: "0123456789ab".into(),
            mutual_username: None,
            mutual_secret: None,
        };
        let requests = vec![
            Request::Hello,
            Request::Status,
            Request::AddDevice(dev),
            Request::AddDevice(DeviceConfig::file("f", "/tmp/f.img", Some(1 << 20))),
            Request::RemoveDevice { name: "d1".into() },
            Request::ExtendDevice {
                name: "d1".into(),
                new_size_bytes: 2 << 30,
            },
            Request::SetCacheMode {
                name: "d1".into(),
                cache: CacheMode::WriteThrough,
                cache_size: None,
            },
            Request::AddTarget(TargetConfig::for_device("d1", "d1")),
            Request::RemoveTarget {
                iqn: "iqn.2026-11.io.tandem:n-d1".into(),
            },
            Request::SetChap {
                iqn: "iqn.x".into(),
                chap: Some(chap),
            },
            Request::SetChap {
                iqn: "iqn.x".into(),
                chap: None,
            },
            Request::SetAcl {
                iqn: "iqn.x".into(),
                allowed_initiators: vec!["iqn.1994-05.com.redhat:a".into()],
            },
            Request::Stats,
            Request::RetryDevice(DeviceConfig::file("f", "/tmp/f.img", None)),
        ];
        for (i, r) in requests.into_iter().enumerate() {
            let env = Envelope::request(i as u64, r);
            assert_eq!(Envelope::from_line(&env.to_line()).unwrap(), env);
        }
        let responses = vec![
            Response::Ok,
            Response::error(ErrorCode::Busy, "in use"),
            Response::Status(StatusReport {
                pid: 7,
                devices: vec![DeviceStatus {
                    name: "d".into(),
                    state: "online".into(),
                    ..Default::default()
                }],
                targets: vec![TargetStatus {
                    iqn: "iqn.x".into(),
                    sessions: 2,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            Response::Stats(StatsReport {
                devices: vec![DeviceStats {
                    name: "d".into(),
                    read_ops: 5,
                    latency_us_p999: 9,
                    ..Default::default()
                }],
                reactors: vec![ReactorStats {
                    core: 1,
                    pdus: 3,
                    ..Default::default()
                }],
            }),
        ];
        for r in responses {
            let env = Envelope::response(9, r);
            assert_eq!(Envelope::from_line(&env.to_line()).unwrap(), env);
        }
    }

    #[test]
    fn refuses_other_versions_and_garbage() {
        let line = "{\"version\":2,\"id\":5,\"body\":{\"request\":{\"op\":\"hello\"}}}";
        assert!(matches!(
            Envelope::from_line(line),
            Err(IpcError::Version { got: 2, id: 5 })
        ));
        assert!(matches!(
            Envelope::from_line("{}"),
            Err(IpcError::Malformed(_))
        ));
        assert!(matches!(
            Envelope::from_line(
                "{\"version\":1,\"id\":1,\"body\":{\"request\":{\"op\":\"format_disk\"}}}"
            ),
            Err(IpcError::Malformed(_))
        ));
        assert!(matches!(
            Envelope::from_line(&"x".repeat(LINE_BYTES_MAX + 1)),
            Err(IpcError::TooLong(_))
        ));
        assert_eq!(ErrorCode::VersionMismatch.to_string(), "version_mismatch");
    }
}
