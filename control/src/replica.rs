//! Replicated devices from the management side: registering partner nodes (`server add` with
//! a token), `replica add` / `replica remove` across nodes (this node calls its partners'
//! management APIs with their tokens), and the per-replica rows of `replica list` derived from
//! the engine's status.
//!
//! `replica add DEVICE --partner P` on node A, in this order (each step undone if a later one
//! fails):
//! 1. every check that needs no other node (device, partner, links, strategy, ids);
//! 2. `GET P/api/v1/status` (reachable, the token works, P calls itself P);
//! 3. `POST P/api/v1/devices`: the same size, block size, identity seed (serial, NAA, EUI-64),
//!    cache, target alias, image in `--partner-location` (a thick image is a job: followed);
//! 4. `PUT P/api/v1/devices/D/replication`: P's section (its id, links reversed, A and any
//!    third node as partners) and the cluster secret, which P writes to a 0600 file;
//! 5. three-way: the existing partner gets the new one (`GET`/`PUT .../replication`);
//! 6. A's own section, saved and applied: the data plane re-opens the device (its targets are
//!    re-created: sessions to this device reconnect; other devices are not touched).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tandem_config::ipc::HaDeviceStatus;
use tandem_config::{
    Backing, DeviceConfig, FailoverStrategy, JournalKind, LinkPair, NodeConfig, PartnerConfig,
    Priority, ReplicationConfig, ServerConfig,
};
use tandem_ha::MemberState;

use crate::api_types::*;
use crate::error::ApiError;
use crate::service::{no_device, Node};

/// At most this many replicas of one device (this node included).
pub const REPLICAS_MAX: usize = 3;
/// Timeouts towards other nodes.
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const PEER_TIMEOUT: Duration = Duration::from_secs(60);
/// `server list` checks each server with this timeout.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest token accepted for a server.
const TOKEN_LEN_MAX: usize = 256;

/// Serializes replica changes on this node (they span several calls to other nodes).
static REPLICA_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---- other nodes' APIs ---------------------------------------------------------------------

/// Another node's management API, called with its token.
#[derive(Clone)]
pub struct Peer {
    pub name: String,
    pub address: SocketAddr,
    token: String,
    timeout: Duration,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("Peer")
            .field("name", &self.name)
            .field("address", &self.address)
            .finish()
    }
}

/// A failed call to another node.
#[derive(Debug)]
pub enum PeerError {
    Unreachable(String),
    Status { status: u16, message: String },
    Decode(String),
}

impl Peer {
    pub fn new(name: &str, address: SocketAddr, token: &str) -> Peer {
        Peer {
            name: name.to_string(),
            address,
            token: token.to_string(),
            timeout: PEER_TIMEOUT,
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Peer {
        self.timeout = timeout;
        self
    }

    /// The peer of a `[[server]]` entry; 409 when it has no token.
    pub fn for_server(server: &ServerConfig) -> Result<Peer, ApiError> {
        let Some(file) = &server.token_file else {
            return Err(ApiError::conflict(format!(
                "server `{}` was added without a token; remove it and add it again with `tandem server add {} {} --token-file FILE` (that node's DATA_DIR/token)",
                server.name, server.name, server.address
            )));
        };
        let token = std::fs::read_to_string(file).map_err(|e| {
            ApiError::internal(format!(
                "cannot read the token of server `{}` from {}: {e}",
                server.name,
                file.display()
            ))
        })?;
        Ok(Peer::new(&server.name, server.address, token.trim()))
    }

    /// Blocking call (use through [`Peer::call`]).
    fn call_blocking(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), PeerError> {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(PEER_CONNECT_TIMEOUT.min(self.timeout))
            .timeout(self.timeout)
            .build();
        let req = agent
            .request(method, &format!("http://{}{}", self.address, path))
            .set("Authorization", &format!("Bearer {}", self.token));
        let result = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        let resp = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(t)) => return Err(PeerError::Unreachable(t.to_string())),
        };
        let status = resp.status();
        let text = resp
            .into_string()
            .map_err(|e| PeerError::Decode(e.to_string()))?;
        if status >= 400 {
            let message = serde_json::from_str::<crate::error::ErrorBody>(&text)
                .map(|e| e.error)
                .unwrap_or_else(|_| format!("HTTP {status}: {text}"));
            return Err(PeerError::Status { status, message });
        }
        let value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).map_err(|e| PeerError::Decode(format!("{e}: {text}")))?
        };
        Ok((status, value))
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), PeerError> {
        let (peer, method, path) = (self.clone(), method.to_string(), path.to_string());
        tokio::task::spawn_blocking(move || peer.call_blocking(&method, &path, body))
            .await
            .unwrap_or_else(|e| Err(PeerError::Unreachable(format!("task failed: {e}"))))
    }

    /// Calls and turns a failure into an API error that names the server.
    pub async fn request<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, T), ApiError> {
        let (status, v) = self
            .call(method, path, body)
            .await
            .map_err(|e| self.error(e))?;
        let t = serde_json::from_value(v)
            .map_err(|e| self.error(PeerError::Decode(format!("{method} {path}: {e}"))))?;
        Ok((status, t))
    }

    /// An API error for a failed call: 502 when the server cannot be reached or fails, its
    /// own 4xx otherwise (the message says which server answered).
    pub fn error(&self, e: PeerError) -> ApiError {
        let who = format!("server `{}` ({})", self.name, self.address);
        match e {
            PeerError::Unreachable(reason) => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "partner_unreachable",
                format!("cannot reach {who}: {reason}"),
            ),
            PeerError::Status { status: 401, .. } => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "partner_refused",
                format!(
                    "{who} refused the stored token; add the server again with its current token (`tandem server remove {n}`, `tandem server add {n} {} --token-file FILE`)",
                    self.address,
                    n = self.name
                ),
            ),
            PeerError::Status { status, message } if (400..500).contains(&status) => {
                ApiError::new(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
                    "partner_refused",
                    format!("{who} answered: {message}"),
                )
            }
            PeerError::Status { status, message } => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "partner_failed",
                format!("{who} failed (HTTP {status}): {message}"),
            ),
            PeerError::Decode(m) => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "partner_failed",
                format!("unexpected answer from {who}: {m}"),
            ),
        }
    }
}

/// Percent-encodes a path segment.
fn seg(s: &str) -> String {
    crate::client::segment(s)
}

// ---- servers -------------------------------------------------------------------------------

/// `DATA_DIR/servers/NAME.token`.
pub fn server_token_path(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("servers").join(format!("{name}.token"))
}

/// Checks a token's shape (it goes into an HTTP header).
pub fn check_token(token: &str) -> Result<&str, ApiError> {
    let t = token.trim();
    if t.is_empty() {
        return Err(ApiError::bad_request("`token` is empty"));
    }
    if t.len() > TOKEN_LEN_MAX || !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::bad_request(format!(
            "`token` must be at most {TOKEN_LEN_MAX} printable ASCII characters without spaces (the content of that node's DATA_DIR/token)"
        )));
    }
    Ok(t)
}

/// Writes `content` to `path` atomically with mode 0600 (directory created 0700).
pub fn write_secret_file(path: &Path, content: &str) -> Result<(), ApiError> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| ApiError::internal(format!("creating {}: {e}", dir.display())))?;
    }
    tandem_config::save_atomic(path, format!("{content}\n").as_bytes())
        .map_err(|e| ApiError::internal(format!("writing {}: {e}", path.display())))
}

/// Checks a server before it is saved: its API answers with `token` and it calls itself
/// `name`. Nothing is saved by this.
pub async fn verify_server(name: &str, address: SocketAddr, token: &str) -> Result<(), ApiError> {
    let peer = Peer::new(name, address, token).with_timeout(Duration::from_secs(5));
    match peer.call("GET", "/api/v1/status", None).await {
        Ok((_, v)) => {
            let node = v["node"].as_str().unwrap_or_default();
            if node != name {
                return Err(ApiError::bad_request(format!(
                    "the node at {address} is named `{node}`, not `{name}`: add it under its node name; nothing was saved"
                )));
            }
            Ok(())
        }
        Err(PeerError::Status { status: 401, .. }) => Err(ApiError::bad_request(format!(
            "the node at {address} refused the token (401): give the content of that node's DATA_DIR/token; nothing was saved"
        ))),
        Err(PeerError::Unreachable(reason)) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "partner_unreachable",
            format!("cannot reach a Tandem API at {address}: {reason}; nothing was saved"),
        )),
        Err(PeerError::Status { status, message }) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "partner_failed",
            format!("the node at {address} answered HTTP {status}: {message}; nothing was saved"),
        )),
        Err(PeerError::Decode(m)) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "partner_failed",
            format!("{address} is not a Tandem API ({m}); nothing was saved"),
        )),
    }
}

/// Checks one server live for `server list`.
pub async fn probe_server(server: &ServerConfig) -> ServerInfo {
    let mut info = ServerInfo {
        name: server.name.clone(),
        address: server.address,
        token: server.token_file.is_some(),
        reachable: None,
        node: None,
        error: None,
    };
    let token = match &server.token_file {
        Some(f) => match std::fs::read_to_string(f) {
            Ok(t) => t.trim().to_string(),
            Err(e) => {
                info.error = Some(format!("cannot read its token file {}: {e}", f.display()));
                String::new()
            }
        },
        None => String::new(),
    };
    let peer = Peer::new(&server.name, server.address, &token).with_timeout(PROBE_TIMEOUT);
    match peer.call("GET", "/api/v1/status", None).await {
        Ok((_, v)) => {
            info.reachable = Some(true);
            info.node = v["node"].as_str().map(str::to_string);
            if info.node.as_deref() != Some(server.name.as_str()) {
                info.error = Some(format!(
                    "it calls itself `{}`",
                    info.node.as_deref().unwrap_or("?")
                ));
            }
        }
        Err(PeerError::Status { status: 401, .. }) => {
            info.reachable = Some(true);
            if info.error.is_none() {
                info.error = Some(if server.token_file.is_some() {
                    "it refuses the stored token".to_string()
                } else {
                    "no token stored (add it again with --token-file)".to_string()
                });
            }
        }
        Err(PeerError::Unreachable(reason)) => {
            info.reachable = Some(false);
            info.error = Some(reason);
        }
        Err(e) => {
            info.reachable = Some(false);
            info.error = Some(format!("{e:?}"));
        }
    }
    info
}

// ---- checks --------------------------------------------------------------------------------

/// Every link endpoint this node listens on, with who uses it (`device`/`partner`), from
/// every replicated device except `skip_device`.
fn local_endpoints(config: &NodeConfig, skip_device: &str) -> Vec<(SocketAddr, String)> {
    let mut out = Vec::new();
    for d in config.devices.iter().filter(|d| d.name != skip_device) {
        if let Some(r) = &d.replication {
            for p in &r.partners {
                for l in p.sync_links.iter().chain(&p.heartbeat_links) {
                    out.push((l.local, format!("device `{}` (partner {})", d.name, p.name)));
                }
            }
        }
    }
    out
}

/// Checks the links of a replication section: at least one sync link per partner, usable
/// addresses, every local endpoint and every partner endpoint used once, none taken by
/// another device, a portal or the API. Errors name the field (`partners[0].sync_links[1]`).
pub fn check_links(
    config: &NodeConfig,
    device: &str,
    partners: &[PartnerConfig],
    api_addr: Option<SocketAddr>,
) -> Result<(), ApiError> {
    let taken = local_endpoints(config, device);
    let mut seen_local: Vec<(SocketAddr, String)> = Vec::new();
    for (pi, p) in partners.iter().enumerate() {
        if p.sync_links.is_empty() {
            return Err(ApiError::bad_request(format!(
                "partners[{pi}] ({}): at least one sync link is required",
                p.name
            )));
        }
        let mut seen_remote: Vec<SocketAddr> = Vec::new();
        let all = p
            .sync_links
            .iter()
            .enumerate()
            .map(|(i, l)| (format!("partners[{pi}].sync_links[{i}]"), l))
            .chain(
                p.heartbeat_links
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (format!("partners[{pi}].heartbeat_links[{i}]"), l)),
            );
        for (field, l) in all {
            for (side, a) in [("local", l.local), ("partner", l.partner)] {
                if a.port() == 0 {
                    return Err(ApiError::bad_request(format!(
                        "{field} `{l}`: the {side} port is 0"
                    )));
                }
                if a.ip().is_unspecified() || a.ip().is_multicast() {
                    return Err(ApiError::bad_request(format!(
                        "{field} `{l}`: the {side} address {} is not a unicast interface address",
                        a.ip()
                    )));
                }
            }
            if l.local == l.partner {
                return Err(ApiError::bad_request(format!(
                    "{field} `{l}`: both ends are the same address"
                )));
            }
            if l.local.is_ipv4() != l.partner.is_ipv4() {
                return Err(ApiError::bad_request(format!(
                    "{field} `{l}`: one end is IPv4 and the other IPv6"
                )));
            }
            if let Some((_, first)) = seen_local.iter().find(|(a, _)| *a == l.local) {
                return Err(ApiError::bad_request(format!(
                    "{field} `{l}`: local address {} is already used by {first}; every link needs its own port",
                    l.local
                )));
            }
            if seen_remote.contains(&l.partner) {
                return Err(ApiError::bad_request(format!(
                    "{field} `{l}`: partner address {} is used twice; every link needs its own port",
                    l.partner
                )));
            }
            if let Some((_, who)) = taken.iter().find(|(a, _)| *a == l.local) {
                return Err(ApiError::conflict(format!(
                    "{field} `{l}`: local address {} is already used by {who}",
                    l.local
                )));
            }
            if config.node.portals.contains(&l.local) {
                return Err(ApiError::conflict(format!(
                    "{field} `{l}`: local address {} is an iSCSI portal of this node",
                    l.local
                )));
            }
            if api_addr == Some(l.local) {
                return Err(ApiError::conflict(format!(
                    "{field} `{l}`: local address {} is this node's management API",
                    l.local
                )));
            }
            seen_local.push((l.local, field.clone()));
            seen_remote.push(l.partner);
        }
    }
    Ok(())
}

/// A witness file: an absolute path whose directory (the share, mounted at the same path on
/// every data node) exists here and is a directory; the file itself is made by the nodes.
fn check_witness_file(f: &std::path::Path, node: &str) -> Result<(), ApiError> {
    if !f.is_absolute() {
        return Err(ApiError::bad_request(format!(
            "witness file `{}` is not an absolute path",
            f.display()
        )));
    }
    if f.file_name().is_none() {
        return Err(ApiError::bad_request(format!(
            "witness file `{}` has no file name",
            f.display()
        )));
    }
    match f.parent() {
        Some(dir) if dir.is_dir() => {}
        _ => {
            return Err(ApiError::bad_request(format!(
                "witness file `{}`: its directory does not exist on node `{node}`; mount the share there (same path on every data node) first",
                f.display()
            )))
        }
    }
    if f.is_dir() {
        return Err(ApiError::bad_request(format!(
            "witness file `{}` is a directory",
            f.display()
        )));
    }
    Ok(())
}

/// Checks a replication section for this node: ids 1..=3 and distinct, partners distinct and
/// not this node, strategy options consistent, witness known, journal directory usable.
pub fn check_spec(
    config: &NodeConfig,
    device: &str,
    spec: &ReplicationSpec,
    api_addr: Option<SocketAddr>,
) -> Result<(), ApiError> {
    fn bad(m: impl Into<String>) -> ApiError {
        ApiError::bad_request(m)
    }
    if !(1..=REPLICAS_MAX as u8).contains(&spec.node_id) {
        return Err(bad(format!(
            "replication.node_id {} is outside 1..={REPLICAS_MAX}",
            spec.node_id
        )));
    }
    if spec.partners.is_empty() {
        return Err(bad(
            "replication.partners is empty: a replicated device has at least one partner",
        ));
    }
    if spec.partners.len() + 1 > REPLICAS_MAX {
        return Err(bad(format!(
            "replication.partners has {} entries; a device has at most {REPLICAS_MAX} replicas",
            spec.partners.len()
        )));
    }
    let mut ids = vec![spec.node_id];
    let mut names: Vec<&str> = Vec::new();
    for (i, p) in spec.partners.iter().enumerate() {
        if p.name == config.node.name {
            return Err(bad(format!(
                "replication.partners[{i}].name `{}` is this node",
                p.name
            )));
        }
        if !tandem_config::names::is_node_name(&p.name) {
            return Err(bad(format!(
                "replication.partners[{i}].name `{}` is not a node name ([a-z0-9-])",
                p.name
            )));
        }
        if names.contains(&p.name.as_str()) {
            return Err(bad(format!(
                "replication.partners[{i}]: partner `{}` is listed twice",
                p.name
            )));
        }
        if !(1..=REPLICAS_MAX as u8).contains(&p.node_id) || ids.contains(&p.node_id) {
            return Err(bad(format!(
                "replication.partners[{i}].node_id {}: node ids are 1..={REPLICAS_MAX} and distinct",
                p.node_id
            )));
        }
        ids.push(p.node_id);
        names.push(&p.name);
    }
    match (spec.failover, &spec.witness, &spec.witness_file) {
        (FailoverStrategy::Heartbeat, Some(_), _) | (FailoverStrategy::Heartbeat, _, Some(_)) => {
            return Err(bad(
                "a witness only applies to node-majority failover (`failover: node-majority`)",
            ))
        }
        (FailoverStrategy::NodeMajority, None, None) if spec.partners.len() + 1 < 3 => {
            return Err(bad(
                "node-majority failover with two replicas needs a third vote: a witness server (`--witness NAME`) or a witness file on a share (`--witness-file PATH`)",
            ))
        }
        (_, Some(w), Some(_)) => {
            return Err(bad(format!(
                "give a witness server (`{w}`) or a witness file, not both"
            )))
        }
        _ => {}
    }
    if let Some(w) = &spec.witness {
        if !config.servers.iter().any(|s| &s.name == w) {
            return Err(ApiError::not_found(format!(
                "witness `{w}` is not a known server on node `{}`; `tandem server add {w} ADDR:PORT` there first",
                config.node.name
            )));
        }
        if names.contains(&w.as_str()) {
            return Err(bad(format!(
                "witness `{w}` is a replica of the device; the witness must be another node"
            )));
        }
    }
    if let Some(f) = &spec.witness_file {
        check_witness_file(f, &config.node.name)?;
    }
    if let Some(dir) = &spec.journal_location {
        if spec.journal == JournalKind::Ram {
            return Err(bad(
                "a journal location applies to disk journals only (`--journal disk-failure|disk-continuous`)",
            ));
        }
        if !dir.is_absolute() {
            return Err(bad(format!(
                "journal location `{}` is not an absolute path",
                dir.display()
            )));
        }
        if !dir.is_dir() {
            return Err(bad(format!(
                "journal location {} is not a directory on node `{}`",
                dir.display(),
                config.node.name
            )));
        }
    }
    check_links(config, device, &spec.partners, api_addr)
}

/// Size of a device in bytes (configured, or its file's).
pub fn device_size(d: &DeviceConfig) -> u64 {
    match d.backing() {
        Backing::Ram { size_bytes } => size_bytes,
        Backing::File { path, size_bytes } => {
            size_bytes.unwrap_or_else(|| std::fs::metadata(path).map_or(0, |m| m.len()))
        }
    }
}

pub fn identity_of(config: &NodeConfig, d: &DeviceConfig) -> DeviceIdentity {
    DeviceIdentity {
        size_bytes: device_size(d),
        block_size: d.block_size,
        identity_seed: d.effective_identity_seed(&config.node.name),
    }
}

fn check_secret(secret: &str) -> Result<(), ApiError> {
    if secret.len() != 64 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request(
            "`secret` must be 64 hex characters (the cluster secret of the node adding the replica)",
        ));
    }
    Ok(())
}

fn read_secret(path: &Path) -> Result<String, ApiError> {
    let s = std::fs::read_to_string(path).map_err(|e| {
        ApiError::internal(format!(
            "cannot read the cluster secret {}: {e}",
            path.display()
        ))
    })?;
    let s = s.trim().to_string();
    check_secret(&s).map_err(|_| {
        ApiError::internal(format!(
            "{} does not hold a cluster secret (64 hex characters)",
            path.display()
        ))
    })?;
    Ok(s)
}

/// Where this node keeps `secret` for `device`: the node's `DATA_DIR/cluster.secret` when it
/// has none yet or holds the same; the device's current secret file if it holds it; else
/// `DATA_DIR/secrets/DEVICE.secret` (this node is in another cluster too). Returns the path
/// and whether the file must be written.
fn secret_location(
    data_dir: &Path,
    device: &DeviceConfig,
    secret: &str,
) -> Result<(PathBuf, bool), ApiError> {
    let holds = |p: &Path| std::fs::read_to_string(p).is_ok_and(|s| s.trim() == secret);
    if let Some(r) = &device.replication {
        if holds(&r.secret_file) {
            return Ok((r.secret_file.clone(), false));
        }
    }
    let cluster = data_dir.join("cluster.secret");
    if !cluster.exists() {
        return Ok((cluster, true));
    }
    if holds(&cluster) {
        return Ok((cluster, false));
    }
    let own = data_dir
        .join("secrets")
        .join(format!("{}.secret", device.name));
    Ok((own.clone(), !holds(&own)))
}

// ---- PUT/DELETE /devices/{name}/replication (the partner side) ---------------------------------

/// Makes this node's device a replica with `req.replication`, keeping `req.secret` in a
/// 0600 file. The device must exist (and match `req.expect`).
pub async fn set_replication(
    node: &Arc<Node>,
    device: &str,
    req: ReplicationSet,
) -> Result<Applied, ApiError> {
    check_secret(&req.secret)?;
    let config = node.config().await;
    let d = config.device(device).ok_or_else(|| no_device(device))?;
    if let Some(want) = &req.expect {
        let have = identity_of(&config, d);
        if have.size_bytes != want.size_bytes || have.block_size != want.block_size {
            return Err(ApiError::conflict(format!(
                "device `{device}` on node `{}` is {} bytes with {}-byte blocks; the replica must be {} bytes with {}-byte blocks",
                config.node.name, have.size_bytes, have.block_size, want.size_bytes, want.block_size
            )));
        }
        if have.identity_seed != want.identity_seed {
            return Err(ApiError::conflict(format!(
                "device `{device}` on node `{}` has identity seed `{}`, not `{}`: it is another disk",
                config.node.name, have.identity_seed, want.identity_seed
            )));
        }
    }
    check_spec(&config, device, &req.replication, api_addr(node))?;
    let (secret_file, write) = secret_location(&node.data_dir, d, &req.secret)?;
    if write {
        write_secret_file(&secret_file, &req.secret)?;
    }
    if let Some(initial) = req.initial {
        crate::ha::mark_initial(&node.data_dir, device, initial).map_err(|e| {
            ApiError::internal(format!("cannot record the initial sync of `{device}`: {e}"))
        })?;
    }
    let replication = req.replication.into_config(secret_file);
    node.change(|c| {
        let d = c.device_mut(device).ok_or_else(|| no_device(device))?;
        d.replication = Some(replication);
        Ok(())
    })
    .await
}

/// Makes the device a plain (single-node) device again.
pub async fn clear_replication(node: &Arc<Node>, device: &str) -> Result<Applied, ApiError> {
    node.change(|c| {
        let d = c.device_mut(device).ok_or_else(|| no_device(device))?;
        if d.replication.take().is_none() {
            return Err(not_replicated(device));
        }
        Ok(())
    })
    .await
}

pub fn not_replicated(device: &str) -> ApiError {
    ApiError::not_found(format!(
        "device `{device}` is not replicated; `tandem replica add {device} --partner NAME --sync-link L=P` makes it so"
    ))
}

fn api_addr(node: &Node) -> Option<SocketAddr> {
    node.api_addr.parse().ok()
}

// ---- replica add -----------------------------------------------------------------------------

/// The lowest node id not in `used`.
pub fn next_node_id(used: &[u8]) -> Option<u8> {
    (1..=REPLICAS_MAX as u8).find(|id| !used.contains(id))
}

/// Links of `peer_links` for existing partner `name`.
fn peer_links_for(links: &[PeerLink], name: &str) -> Vec<LinkPair> {
    links
        .iter()
        .filter(|l| l.partner == name)
        .map(|l| l.link)
        .collect()
}

/// Everything `replica add` decided before calling another node.
struct AddPlan {
    partner: Peer,
    existing: Vec<(Peer, PartnerConfig)>,
    local: ReplicationConfig,
    local_is_new: bool,
    partner_spec: ReplicationSpec,
    create: DeviceCreate,
    expect: DeviceIdentity,
    secret: String,
    secret_to_write: Option<PathBuf>,
    target_alias: Option<String>,
    init: InitMode,
    /// A device's first replica: how its first configuration is made (None for a third
    /// replica: the authority has a configuration already).
    initial: Option<crate::ha::InitialSync>,
}

fn plan_add(
    node: &Node,
    config: &NodeConfig,
    device: &str,
    req: &ReplicaAdd,
) -> Result<AddPlan, ApiError> {
    fn bad(m: impl Into<String>) -> ApiError {
        ApiError::bad_request(m)
    }
    let d = config.device(device).ok_or_else(|| no_device(device))?;
    let me = config.node.name.clone();
    if req.partner == me {
        return Err(bad(format!(
            "`{me}` is this node; the partner is another node (`tandem server list`)"
        )));
    }
    let server = config
        .servers
        .iter()
        .find(|s| s.name == req.partner)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no server named `{}`; add it first with `tandem server add {} ADDR:PORT --token-file FILE`",
                req.partner, req.partner
            ))
        })?;
    let existing = d.replication.clone();
    if let Some(r) = &existing {
        if r.partners.iter().any(|p| p.name == req.partner) {
            return Err(ApiError::conflict(format!(
                "`{}` already holds a replica of `{device}`; `tandem replica list {device}` shows them",
                req.partner
            )));
        }
        if r.partners.len() + 1 >= REPLICAS_MAX {
            return Err(ApiError::conflict(format!(
                "`{device}` already has {REPLICAS_MAX} replicas (the most a device has)"
            )));
        }
        // The add that makes a device three-way may move it to node majority: three data
        // nodes are their own majority (no witness), which two nodes cannot be, so a
        // two-way device could not have been created that way.
        let to_three_node_majority = req.failover == Some(FailoverStrategy::NodeMajority)
            && r.failover == FailoverStrategy::Heartbeat
            && r.partners.len() == 1
            && r.witness.is_none()
            && r.witness_file.is_none()
            && req.witness.is_none();
        let given_failover = req
            .failover
            .filter(|_| !to_three_node_majority)
            .map(|f| f as u8);
        for (field, given, have) in [
            ("failover", given_failover, r.failover as u8),
            ("journal", req.journal.map(|j| j as u8), r.journal as u8),
        ] {
            if given.is_some_and(|g| g != have) {
                return Err(ApiError::conflict(format!(
                    "`{device}` is already replicated with another `{field}`; a device has one setting for every replica"
                )));
            }
        }
        if req.witness_file.is_some() && req.witness_file != r.witness_file {
            return Err(ApiError::conflict(format!(
                "`{device}` is already replicated with witness file {:?}; a device has one witness",
                r.witness_file
            )));
        }
        if req.witness.is_some() && req.witness != r.witness {
            return Err(ApiError::conflict(format!(
                "`{device}` is already replicated with witness {:?}; a device has one witness",
                r.witness
            )));
        }
    }
    if d.read_only {
        return Err(ApiError::conflict(format!(
            "device `{device}` is read-only; only writable devices are replicated"
        )));
    }
    if req.sync_links.is_empty() {
        return Err(bad(
            "at least one sync link is required (`--sync-link LOCAL_IP:PORT=PARTNER_IP:PORT`)",
        ));
    }
    if let Some(loc) = &req.partner_location {
        if !loc.is_absolute() {
            return Err(bad(format!(
                "partner location `{}` is not an absolute path",
                loc.display()
            )));
        }
        if d.file.is_none() {
            return Err(bad(format!(
                "`{device}` is a RAM disk: its replica is a RAM disk too, drop `--partner-location`"
            )));
        }
    }
    let existing_partners = existing.as_ref().map_or(&[][..], |r| &r.partners[..]);
    for l in req.peer_sync_links.iter().chain(&req.peer_heartbeat_links) {
        if !existing_partners.iter().any(|p| p.name == l.partner) {
            return Err(bad(format!(
                "peer link `{}:{}`: `{}` is not an existing partner of `{device}`",
                l.partner, l.link, l.partner
            )));
        }
    }
    for p in existing_partners {
        if peer_links_for(&req.peer_sync_links, &p.name).is_empty() {
            return Err(bad(format!(
                "`{device}` is already replicated to `{}`: a third replica needs sync links between `{}` and `{}` too (`--peer-sync-link {}:ITS_IP:PORT=NEW_IP:PORT`)",
                p.name, p.name, req.partner, p.name
            )));
        }
    }
    let init = req.init.unwrap_or_default();
    if init == InitMode::Zeroed && existing.is_some() {
        return Err(bad(format!(
            "`--init zeroed` is for a device's first replica only: `{device}` already holds data mirrored to its partners"
        )));
    }

    let size = device_size(d);
    if size == 0 {
        return Err(ApiError::conflict(format!(
            "the size of `{device}` is unknown (its image is missing?); `tandem device show {device}`"
        )));
    }
    let own_id = existing.as_ref().map_or(1, |r| r.node_id);
    let mut used = vec![own_id];
    used.extend(existing_partners.iter().map(|p| p.node_id));
    let partner_id = next_node_id(&used)
        .ok_or_else(|| ApiError::conflict(format!("`{device}` has no free node id")))?;

    // This node's new section.
    // An existing device keeps its strategy, except that the add making it three-way may
    // move it to node majority (checked above).
    let failover = existing
        .as_ref()
        .map_or(req.failover.unwrap_or_default(), |r| {
            if r.partners.len() == 1 && req.failover == Some(FailoverStrategy::NodeMajority) {
                FailoverStrategy::NodeMajority
            } else {
                r.failover
            }
        });
    let journal = existing
        .as_ref()
        .map_or(req.journal.unwrap_or_default(), |r| r.journal);
    let priority = existing
        .as_ref()
        .map_or(req.priority.unwrap_or_default(), |r| r.priority);
    let witness = existing
        .as_ref()
        .map_or(req.witness.clone(), |r| r.witness.clone());
    let new_partner = PartnerConfig {
        name: req.partner.clone(),
        node_id: partner_id,
        sync_links: req.sync_links.clone(),
        heartbeat_links: req.heartbeat_links.clone(),
    };
    let mut partners = existing_partners.to_vec();
    partners.push(new_partner);
    let (secret_file, secret, secret_to_write) = match &existing {
        Some(r) => (r.secret_file.clone(), read_secret(&r.secret_file)?, None),
        None => {
            let path = node.data_dir.join("cluster.secret");
            if path.exists() {
                (path.clone(), read_secret(&path)?, None)
            } else {
                let mut raw = [0u8; 32];
                rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut raw);
                (path.clone(), hex::encode(raw), Some(path))
            }
        }
    };
    let local = ReplicationConfig {
        node_id: own_id,
        secret_file,
        failover,
        priority,
        journal,
        journal_location: existing
            .as_ref()
            .map_or(req.journal_location.clone(), |r| r.journal_location.clone()),
        witness: witness.clone(),
        witness_file: existing
            .as_ref()
            .map_or(req.witness_file.clone(), |r| r.witness_file.clone()),
        resync_latency_target_ms: existing.as_ref().map_or(
            req.resync_latency_target_ms
                .unwrap_or(tandem_config::DEFAULT_RESYNC_LATENCY_TARGET_MS),
            |r| r.resync_latency_target_ms,
        ),
        partners,
    };
    let spec = ReplicationSpec::from_config(&local);
    check_spec(config, device, &spec, api_addr(node)).map_err(|e| {
        // Field names as the request has them.
        ApiError {
            message: e
                .message
                .replace(
                    &format!("partners[{}].sync_links", local.partners.len() - 1),
                    "sync_links",
                )
                .replace(
                    &format!("partners[{}].heartbeat_links", local.partners.len() - 1),
                    "heartbeat_links",
                )
                .replace("replication.", ""),
            ..e
        }
    })?;

    // The partner's section: its id, this node and the other partners as its partners.
    let mut their_partners = vec![PartnerConfig {
        name: me.clone(),
        node_id: own_id,
        sync_links: req.sync_links.iter().map(|l| l.reversed()).collect(),
        heartbeat_links: req.heartbeat_links.iter().map(|l| l.reversed()).collect(),
    }];
    let mut existing_peers = Vec::new();
    for p in existing_partners {
        their_partners.push(PartnerConfig {
            name: p.name.clone(),
            node_id: p.node_id,
            sync_links: peer_links_for(&req.peer_sync_links, &p.name)
                .into_iter()
                .map(LinkPair::reversed)
                .collect(),
            heartbeat_links: peer_links_for(&req.peer_heartbeat_links, &p.name)
                .into_iter()
                .map(LinkPair::reversed)
                .collect(),
        });
        let s = config
            .servers
            .iter()
            .find(|s| s.name == p.name)
            .ok_or_else(|| {
                ApiError::conflict(format!(
                    "partner `{}` of `{device}` is not a known server here; `tandem server add {} ADDR:PORT --token-file FILE` first",
                    p.name, p.name
                ))
            })?;
        existing_peers.push((
            Peer::for_server(s)?,
            PartnerConfig {
                name: req.partner.clone(),
                node_id: partner_id,
                sync_links: peer_links_for(&req.peer_sync_links, &p.name),
                heartbeat_links: peer_links_for(&req.peer_heartbeat_links, &p.name),
            },
        ));
    }
    let partner_journal_location = match journal {
        JournalKind::Ram => None,
        _ => req.partner_location.clone(),
    };
    let partner_spec = ReplicationSpec {
        node_id: partner_id,
        failover,
        priority: match priority {
            Priority::First => Priority::Second,
            Priority::Second => Priority::First,
        },
        journal,
        journal_location: partner_journal_location,
        witness,
        witness_file: local.witness_file.clone(),
        resync_latency_target_ms: local.resync_latency_target_ms,
        partners: their_partners,
    };
    let target_alias = config
        .targets
        .iter()
        .find(|t| t.luns.iter().any(|l| l == device))
        .map(|t| t.alias.clone());
    let expect = identity_of(config, d);
    let create = DeviceCreate {
        name: device.to_string(),
        ram: d.file.is_none(),
        size: Some(tandem_config::Size(size)),
        location: req.partner_location.clone(),
        block_size: Some(d.block_size),
        cache: Some(d.cache),
        cache_size: d.cache_size,
        identity_seed: Some(expect.identity_seed.clone()),
        target_alias: target_alias.clone(),
        no_target: target_alias.is_none(),
        ..Default::default()
    };
    Ok(AddPlan {
        partner: Peer::for_server(server)?,
        existing: existing_peers,
        local_is_new: existing.is_none(),
        local,
        partner_spec,
        create,
        expect,
        secret,
        secret_to_write,
        target_alias,
        init,
        initial: existing.is_none().then_some(match init {
            InitMode::Zeroed => crate::ha::InitialSync::Zeroed,
            InitMode::SyncFromExisting => crate::ha::InitialSync::Source(tandem_ha::NodeId(own_id)),
        }),
    })
}

/// Follows an image-building job on another node until it ends.
async fn follow_job(peer: &Peer, mut job: JobInfo) -> Result<(), ApiError> {
    while job.state == "running" {
        tokio::time::sleep(Duration::from_millis(250)).await;
        job = peer
            .request::<JobInfo>("GET", &format!("/api/v1/jobs/{}", job.id), None)
            .await?
            .1;
    }
    if job.state == "failed" {
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "partner_failed",
            format!(
                "server `{}` could not build the image of `{}`: {}",
                peer.name,
                job.device,
                job.error.unwrap_or_default()
            ),
        ));
    }
    Ok(())
}

/// Removes the partner's device (undo of a failed add, or `replica remove`).
async fn remove_remote_device(
    peer: &Peer,
    device: &str,
    delete_file: bool,
) -> Result<(), ApiError> {
    match peer
        .call(
            "DELETE",
            &format!(
                "/api/v1/devices/{}?force=true&delete_file={delete_file}",
                seg(device)
            ),
            None,
        )
        .await
    {
        Ok(_) | Err(PeerError::Status { status: 404, .. }) => Ok(()),
        Err(e) => Err(peer.error(e)),
    }
}

async fn get_remote_replication(peer: &Peer, device: &str) -> Result<ReplicationConfig, ApiError> {
    Ok(peer
        .request::<ReplicationConfig>(
            "GET",
            &format!("/api/v1/devices/{}/replication", seg(device)),
            None,
        )
        .await?
        .1)
}

/// Registers this node (name, API address, token) as a server on `peer`, unless `peer`
/// knows a server of that name already. A node whose API listens on an unspecified address
/// (0.0.0.0) cannot say where it is reached: the admin adds it on the partner by hand.
async fn introduce_to(node: &Arc<Node>, peer: &Peer) -> Result<(), ApiError> {
    let me = node.config().await.node.name.clone();
    let (_, known) = peer
        .call("GET", "/api/v1/servers?check=false", None)
        .await
        .map_err(|e| peer.error(e))?;
    let known_here = known
        .as_array()
        .is_some_and(|list| list.iter().any(|s| s["name"] == me.as_str()));
    if known_here {
        return Ok(());
    }
    let Some(address) = api_addr(node).filter(|a| !a.ip().is_unspecified()) else {
        tracing::warn!(partner = %peer.name, api = %node.api_addr,
            "this node's API address cannot be given to the partner; add this node there with `tandem server add`");
        return Ok(());
    };
    let body = serde_json::to_value(ServerAdd {
        name: me,
        address,
        token: Some(node.token.clone()),
    })
    .map_err(|e| ApiError::internal(e.to_string()))?;
    let (status, answer) = peer
        .call("POST", "/api/v1/servers", Some(body))
        .await
        .map_err(|e| peer.error(e))?;
    if !(200..300).contains(&status) {
        tracing::warn!(partner = %peer.name, status, %answer,
            "the partner could not register this node; add it there with `tandem server add`");
    }
    Ok(())
}

async fn put_remote_replication(
    peer: &Peer,
    device: &str,
    body: &ReplicationSet,
) -> Result<Applied, ApiError> {
    let v = serde_json::to_value(body).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(peer
        .request::<ChangeResult>(
            "PUT",
            &format!("/api/v1/devices/{}/replication", seg(device)),
            Some(v),
        )
        .await?
        .1
        .dataplane)
}

/// Puts back the sections of partners changed by a failed add.
async fn restore(updated: &[(&Peer, ReplicationConfig)], device: &str, secret: &str) {
    for (p, old) in updated {
        let body = ReplicationSet {
            replication: ReplicationSpec::from_config(old),
            secret: secret.to_string(),
            expect: None,
            initial: None,
        };
        if let Err(e) = put_remote_replication(p, device, &body).await {
            tracing::warn!(partner = %p.name, device, error = %e.message, "could not restore a partner's replication section");
        }
    }
}

/// `POST /api/v1/devices/{name}/replicas`.
pub async fn add(
    node: &Arc<Node>,
    device: &str,
    req: ReplicaAdd,
) -> Result<ReplicaAdded, ApiError> {
    let _serial = REPLICA_LOCK.lock().await;
    let config = node.config().await;
    let plan = plan_add(node, &config, device, &req)?;
    let peer = &plan.partner;

    // The partner answers, with the token, under its name.
    let (_, status): (u16, Value) = peer.request("GET", "/api/v1/status", None).await?;
    if status["node"].as_str() != Some(peer.name.as_str()) {
        return Err(ApiError::conflict(format!(
            "the node at {} is now named `{}`, not `{}`",
            peer.address,
            status["node"].as_str().unwrap_or("?"),
            peer.name
        )));
    }
    match peer
        .call("GET", &format!("/api/v1/devices/{}", seg(device)), None)
        .await
    {
        Err(PeerError::Status { status: 404, .. }) => {}
        Ok(_) => {
            return Err(ApiError::conflict(format!(
                "server `{}` already has a device named `{device}`; remove it there or pick another device",
                peer.name
            )))
        }
        Err(e) => return Err(peer.error(e)),
    }
    // Existing partners (three-way) answer before anything changes.
    let mut existing_sections = Vec::new();
    for (p, _) in &plan.existing {
        existing_sections.push(get_remote_replication(p, device).await?);
    }

    // The partner must be able to reach this node's API too (its failover driver asks this
    // node's authority, or takes it over): register this node there unless it is known.
    introduce_to(node, peer).await?;

    // Create the partner's device.
    let body = serde_json::to_value(&plan.create).map_err(|e| ApiError::internal(e.to_string()))?;
    let (status, created) = peer
        .call("POST", "/api/v1/devices", Some(body))
        .await
        .map_err(|e| peer.error(e))?;
    if status == 202 {
        let accepted: Accepted = serde_json::from_value(created)
            .map_err(|e| peer.error(PeerError::Decode(e.to_string())))?;
        follow_job(peer, accepted.job).await?;
    }
    let created_file = !plan.create.ram;
    let undo_partner = || async {
        if let Err(e) = remove_remote_device(peer, device, created_file).await {
            tracing::warn!(partner = %peer.name, device, error = %e.message, "could not remove the partner's device after a failed replica add");
        }
    };

    if let Some(path) = &plan.secret_to_write {
        if let Err(e) = write_secret_file(path, &plan.secret) {
            undo_partner().await;
            return Err(e);
        }
    }
    let set = ReplicationSet {
        replication: plan.partner_spec.clone(),
        secret: plan.secret.clone(),
        expect: Some(plan.expect.clone()),
        initial: plan.initial,
    };
    let partner_applied = match put_remote_replication(peer, device, &set).await {
        Ok(a) => a,
        Err(e) => {
            undo_partner().await;
            return Err(e);
        }
    };

    // Three-way: every existing partner learns the new one.
    let mut updated: Vec<(&Peer, ReplicationConfig)> = Vec::new();
    for ((p, addition), old) in plan.existing.iter().zip(existing_sections) {
        let mut spec = ReplicationSpec::from_config(&old);
        // Every replica of a device has one strategy (the third add may change it).
        spec.failover = plan.local.failover;
        spec.partners.retain(|x| x.name != addition.name);
        spec.partners.push(addition.clone());
        let body = ReplicationSet {
            replication: spec,
            secret: plan.secret.clone(),
            expect: Some(plan.expect.clone()),
            initial: None,
        };
        if let Err(e) = put_remote_replication(p, device, &body).await {
            restore(&updated, device, &plan.secret).await;
            undo_partner().await;
            return Err(e);
        }
        updated.push((p, old));
    }

    // This node.
    if let Some(initial) = plan.initial {
        if let Err(e) = crate::ha::mark_initial(&node.data_dir, device, initial) {
            restore(&updated, device, &plan.secret).await;
            undo_partner().await;
            return Err(ApiError::internal(format!(
                "cannot record the initial sync of `{device}`: {e}"
            )));
        }
    }
    let local = plan.local.clone();
    let applied = node
        .change(|c| {
            let d = c.device_mut(device).ok_or_else(|| no_device(device))?;
            d.replication = Some(local);
            Ok(())
        })
        .await;
    let applied = match applied {
        Ok(a) => a,
        Err(e) => {
            restore(&updated, device, &plan.secret).await;
            undo_partner().await;
            if let (Some(path), true) = (&plan.secret_to_write, plan.local_is_new) {
                let _ = std::fs::remove_file(path);
            }
            return Err(e);
        }
    };
    tracing::info!(
        device,
        partner = %peer.name,
        node_id = plan.local.node_id,
        partner_node_id = plan.partner_spec.node_id,
        init = plan.init.as_str(),
        "replica added"
    );
    Ok(ReplicaAdded {
        device: device.to_string(),
        partner: peer.name.clone(),
        node_id: plan.local.node_id,
        partner_node_id: plan.partner_spec.node_id,
        partner_target: plan
            .target_alias
            .as_ref()
            .map(|a| format!("{}{}-{}", tandem_config::IQN_PREFIX, peer.name, a)),
        init: plan.init,
        dataplane: applied,
        partner_dataplane: partner_applied,
    })
}

// ---- replica remove --------------------------------------------------------------------------

/// `DELETE /api/v1/devices/{name}/replicas/{partner}`: the partner's device (and target) is
/// removed there (its image kept unless `delete_file`), the other partners forget it, and
/// this node's section loses it (the device is plain again when no partner is left). With
/// `force`, an unreachable partner is skipped (and reported).
pub async fn remove(
    node: &Arc<Node>,
    device: &str,
    partner: &str,
    force: bool,
    delete_file: bool,
) -> Result<ReplicaRemoved, ApiError> {
    let _serial = REPLICA_LOCK.lock().await;
    let config = node.config().await;
    let d = config.device(device).ok_or_else(|| no_device(device))?;
    let r = d
        .replication
        .clone()
        .ok_or_else(|| not_replicated(device))?;
    if !r.partners.iter().any(|p| p.name == partner) {
        return Err(ApiError::not_found(format!(
            "`{partner}` holds no replica of `{device}`; `tandem replica list {device}` shows them"
        )));
    }
    let peer_of = |name: &str| -> Result<Peer, ApiError> {
        let s = config
            .servers
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| {
                ApiError::conflict(format!(
                    "`{name}` is not a known server here, so its replica cannot be changed; `tandem server add {name} ADDR:PORT --token-file FILE`, or --force to change this node only"
                ))
            })?;
        Peer::for_server(s)
    };
    let mut warnings = Vec::new();
    let mut skip = |e: ApiError, what: &str| -> Result<(), ApiError> {
        if force {
            warnings.push(format!("{what}: {}", e.message));
            Ok(())
        } else {
            Err(ApiError {
                message: format!(
                    "{}; nothing was changed here (--force removes the replica on this node anyway)",
                    e.message
                ),
                ..e
            })
        }
    };
    // Check every node first, then change.
    let target = peer_of(partner);
    let target = match target {
        Ok(p) => match p.request::<Value>("GET", "/api/v1/status", None).await {
            Ok(_) => Some(p),
            Err(e) => {
                skip(e, &format!("partner `{partner}` not cleaned"))?;
                None
            }
        },
        Err(e) => {
            skip(e, &format!("partner `{partner}` not cleaned"))?;
            None
        }
    };
    let mut others = Vec::new();
    for p in r.partners.iter().filter(|p| p.name != partner) {
        let section = match peer_of(&p.name) {
            Ok(peer) => match get_remote_replication(&peer, device).await {
                Ok(section) => Some((peer, section)),
                Err(e) => {
                    skip(e, &format!("partner `{}` still lists `{partner}`", p.name))?;
                    None
                }
            },
            Err(e) => {
                skip(e, &format!("partner `{}` still lists `{partner}`", p.name))?;
                None
            }
        };
        others.extend(section);
    }
    // Only needed to rewrite the remaining partners' sections.
    let secret = if others.is_empty() {
        String::new()
    } else {
        read_secret(&r.secret_file)?
    };
    let mut partner_cleaned = false;
    if let Some(peer) = &target {
        match remove_remote_device(peer, device, delete_file).await {
            Ok(()) => partner_cleaned = true,
            Err(e) => skip(e, &format!("partner `{partner}` not cleaned"))?,
        }
    }
    for (peer, section) in others {
        let mut spec = ReplicationSpec::from_config(&section);
        spec.partners.retain(|p| p.name != partner);
        let result = if spec.partners.is_empty() {
            peer.request::<ChangeResult>(
                "DELETE",
                &format!("/api/v1/devices/{}/replication", seg(device)),
                None,
            )
            .await
            .map(|_| ())
        } else {
            put_remote_replication(
                &peer,
                device,
                &ReplicationSet {
                    replication: spec,
                    secret: secret.clone(),
                    expect: None,
                    initial: None,
                },
            )
            .await
            .map(|_| ())
        };
        if let Err(e) = result {
            skip(
                e,
                &format!("partner `{}` still lists `{partner}`", peer.name),
            )?;
        }
    }
    let applied = node
        .change(|c| {
            let d = c.device_mut(device).ok_or_else(|| no_device(device))?;
            if let Some(r) = &mut d.replication {
                r.partners.retain(|p| p.name != partner);
                if r.partners.is_empty() {
                    d.replication = None;
                }
            }
            Ok(())
        })
        .await?;
    Ok(ReplicaRemoved {
        device: device.to_string(),
        partner: partner.to_string(),
        partner_cleaned,
        warnings,
        dataplane: applied,
    })
}

// ---- replica list: rows from the engine's status ----------------------------------------------

fn link_rows(
    p: &PartnerConfig,
    status: Option<&tandem_config::ipc::HaPartnerStatus>,
) -> Vec<LinkRow> {
    let row = |l: &LinkPair, kind: &str| {
        let text = l.to_string();
        let live = status.and_then(|s| s.links.iter().find(|x| x.link == text));
        LinkRow {
            link: text,
            kind: kind.to_string(),
            state: match live {
                Some(x) if x.up => "up",
                Some(_) => "down",
                None => "unknown",
            }
            .to_string(),
            last_error: live.and_then(|x| x.last_error.clone()),
        }
    };
    p.sync_links
        .iter()
        .map(|l| row(l, "sync"))
        .chain(p.heartbeat_links.iter().map(|l| row(l, "heartbeat")))
        .collect()
}

/// Why a partner whose copy is smaller than this sequencer's is not synchronized, and what
/// finishes it (docs/ha.md, "Extend of an HA device").
fn size_refused_reason(r: tandem_config::ipc::HaSizeRefusal) -> String {
    format!(
        "its copy has {} blocks, this node's {}: it restarted during an extend; `tandem device extend DEVICE --size SIZE` again (the device's size on this node) grows it, then it resynchronizes",
        r.partner_blocks, r.own_blocks
    )
}

/// The rows of `replica list` for a device replicated with `repl` on node `me`, from the
/// engine's status (None: unknown). Pure: the state of each replica comes from the epoch
/// configuration the engine holds, this node's lease (serving) and the links:
/// - not in the configuration, or `Out`: `not-synchronized` with the reason;
/// - `Syncing`: `syncing` (with the percent when this node sequences the resync);
/// - `Synchronized`: `synchronized`, except `blocked` when it cannot serve: this node
///   without a valid lease, or a partner whose sync links are all down (a verdict is
///   pending);
/// - `split-brain` when `remote` (another replica's own status) shows it serving as
///   synchronized in a configuration that has this node out while this node serves in one
///   that has it out, with different data generations;
/// - `unknown` without a status.
pub fn replica_rows(
    me: &str,
    repl: &ReplicationConfig,
    status: Option<&HaDeviceStatus>,
    remote: &[HaDeviceStatus],
    split_brain: &[u8],
) -> ReplicaListing {
    let cfg = status.and_then(|s| s.config.as_ref());
    let mut rows = Vec::new();
    let member = |id: u8| cfg.and_then(|c| c.members.iter().find(|m| m.0 .0 == id).map(|m| m.1));
    let split = |id: u8| {
        let (Some(local), Some(c)) = (status, cfg) else {
            return false;
        };
        remote.iter().any(|r| {
            let Some(rc) = &r.config else { return false };
            r.node_id == id
                && local.serving
                && r.serving
                && member(id) != Some(MemberState::Synchronized)
                && rc
                    .members
                    .iter()
                    .find(|m| m.0 .0 == repl.node_id)
                    .map_or(true, |m| m.1 != MemberState::Synchronized)
                && rc.generation != c.generation
        })
    };
    let base = |node: &str, id: u8, local: bool| ReplicaRow {
        node: node.to_string(),
        node_id: id,
        local,
        state: "unknown".into(),
        progress_percent: None,
        resync_done_regions: None,
        resync_total_regions: None,
        reason: None,
        sequencer: cfg.is_some_and(|c| c.sequencer.0 == id),
        serving: None,
        journal: repl.journal,
        links: Vec::new(),
        dirty_regions: None,
        bytes_mirrored: None,
    };
    let not_member = |id: u8| {
        cfg.map(|c| {
            let left = c
                .left_at
                .iter()
                .find(|l| l.0 .0 == id)
                .map(|l| format!(", left at generation {}", l.1 .0))
                .unwrap_or_default();
            match member(id) {
                Some(MemberState::Out) => {
                    format!("out of the cluster in epoch {}{left}", c.epoch.0)
                }
                _ => format!("not a member of epoch {} (waiting to join)", c.epoch.0),
            }
        })
    };

    // This node.
    let mut mine = base(me, repl.node_id, true);
    match status {
        None => mine.reason = Some("no replication status from the data plane".into()),
        Some(s) => {
            mine.serving = Some(s.serving);
            match (cfg, member(repl.node_id)) {
                (None, _) => {
                    mine.state = "not-synchronized".into();
                    mine.reason = Some("no configuration from the failover authority yet".into());
                }
                (Some(_), Some(MemberState::Synchronized)) if s.serving => {
                    mine.state = "synchronized".into()
                }
                (Some(_), Some(MemberState::Synchronized)) => {
                    mine.state = "blocked".into();
                    mine.reason = Some(
                        "synchronized but not serving: no valid lease from the failover authority"
                            .into(),
                    );
                }
                (Some(c), Some(MemberState::Syncing)) => {
                    mine.state = "syncing".into();
                    mine.reason = Some(format!("receiving a resync from node {}", c.sequencer.0));
                }
                (Some(_), _) => {
                    mine.state = "not-synchronized".into();
                    mine.reason = not_member(repl.node_id);
                }
            }
        }
    }
    rows.push(mine);

    for p in &repl.partners {
        let ps = status.and_then(|s| s.partners.iter().find(|x| x.node_id == p.node_id));
        let mut row = base(&p.name, p.node_id, false);
        row.links = link_rows(p, ps);
        row.dirty_regions = ps.map(|x| x.dirty_regions);
        row.bytes_mirrored = ps.map(|x| x.bytes_mirrored);
        let links_down = ps.is_some()
            && row
                .links
                .iter()
                .filter(|l| l.kind == "sync")
                .all(|l| l.state == "down");
        match (status, cfg) {
            (None, _) => row.reason = Some("no replication status from the data plane".into()),
            (Some(_), None) => {
                row.state = "not-synchronized".into();
                row.reason = Some("no configuration from the failover authority yet".into());
            }
            (Some(_), Some(c)) => match member(p.node_id) {
                Some(MemberState::Synchronized) if links_down => {
                    row.state = "blocked".into();
                    row.reason = Some(
                        "every sync link is down; waiting for the failover authority's verdict"
                            .into(),
                    );
                }
                Some(MemberState::Synchronized) => row.state = "synchronized".into(),
                Some(MemberState::Syncing) if ps.is_some_and(|x| x.size_refused.is_some()) => {
                    let r = ps.and_then(|x| x.size_refused).expect("checked");
                    row.state = "not-synchronized".into();
                    row.reason = Some(size_refused_reason(r));
                }
                Some(MemberState::Syncing) => {
                    row.state = "syncing".into();
                    if let Some(x) = ps.filter(|x| x.resync_total_regions > 0) {
                        let pct = x.resync_done_regions.min(x.resync_total_regions) * 100
                            / x.resync_total_regions;
                        row.progress_percent = Some(pct as u8);
                        row.resync_done_regions = Some(x.resync_done_regions);
                        row.resync_total_regions = Some(x.resync_total_regions);
                    } else if c.sequencer.0 != repl.node_id {
                        row.reason = Some(format!("resync sequenced by node {}", c.sequencer.0));
                    }
                }
                _ => {
                    row.state = "not-synchronized".into();
                    let mut reason = not_member(p.node_id).unwrap_or_default();
                    if links_down {
                        reason.push_str("; every sync link is down");
                    }
                    row.reason = Some(reason);
                }
            },
        }
        let refused = [p.node_id, repl.node_id]
            .into_iter()
            .find(|id| split_brain.contains(id));
        if let Some(id) = refused {
            row.state = "split-brain".into();
            row.reason = Some(format!(
                "the failover authority refused node {id}'s join: its copy went on alone while the nodes could not reach each other (split brain); nothing is merged; `tandem device resolve DEVICE --keep NODE` decides which copy stays"
            ));
            if let Some(m) = rows.first_mut() {
                m.state = "split-brain".into();
                m.reason.clone_from(&row.reason);
            }
        } else if split(p.node_id) {
            row.state = "split-brain".into();
            row.reason = Some(
                "both nodes serve the device as the synchronized copy with different data: `tandem device resolve DEVICE --keep NODE` decides which copy stays (docs/operations.md)".into(),
            );
            if let Some(m) = rows.first_mut() {
                m.state = "split-brain".into();
                m.reason.clone_from(&row.reason);
            }
        }
        rows.push(row);
    }
    ReplicaListing {
        device: String::new(),
        node_id: repl.node_id,
        failover: repl.failover,
        epoch: cfg.map(|c| c.epoch.0),
        replicas: rows,
        resolution: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_config::ipc::{HaLinkStatus, HaPartnerStatus};
    use tandem_ha::{Epoch, EpochConfig, GenerationId, NodeId, ReplicaMeta};

    fn link(s: &str) -> LinkPair {
        s.parse().unwrap()
    }

    fn repl() -> ReplicationConfig {
        ReplicationConfig {
            node_id: 1,
            secret_file: "/x/cluster.secret".into(),
            failover: FailoverStrategy::Heartbeat,
            priority: Priority::First,
            journal: JournalKind::DiskFailure,
            journal_location: None,
            resync_latency_target_ms: tandem_config::DEFAULT_RESYNC_LATENCY_TARGET_MS,
            witness: None,
            witness_file: None,
            partners: vec![
                PartnerConfig {
                    name: "b".into(),
                    node_id: 2,
                    sync_links: vec![
                        link("10.0.0.1:7001=10.0.0.2:7001"),
                        link("10.1.0.1:7001=10.1.0.2:7001"),
                    ],
                    heartbeat_links: vec![link("10.2.0.1:7002=10.2.0.2:7002")],
                },
                PartnerConfig {
                    name: "c".into(),
                    node_id: 3,
                    sync_links: vec![link("10.0.0.1:7003=10.0.0.3:7003")],
                    heartbeat_links: vec![],
                },
            ],
        }
    }

    fn cfg(members: &[(u8, MemberState)]) -> EpochConfig {
        EpochConfig {
            epoch: Epoch(7),
            sequencer: NodeId(1),
            members: members.iter().map(|m| (NodeId(m.0), m.1)).collect(),
            generation: GenerationId(70),
            lineage: vec![],
            left_at: members
                .iter()
                .filter(|m| m.1 == MemberState::Out)
                .map(|m| (NodeId(m.0), GenerationId(60)))
                .collect(),
        }
    }

    fn partner(id: u8, links: &[(&str, bool)], done: u64, total: u64) -> HaPartnerStatus {
        HaPartnerStatus {
            name: format!("n{id}"),
            node_id: id,
            links: links
                .iter()
                .map(|(l, up)| HaLinkStatus {
                    link: l.to_string(),
                    up: *up,
                    last_error: (!up).then(|| "connection refused".to_string()),
                })
                .collect(),
            dirty_regions: 5,
            resync_done_regions: done,
            resync_total_regions: total,
            bytes_mirrored: 4096,
            dirty_list: Vec::new(),
            dirty_complete: true,
            size_refused: None,
        }
    }

    fn status(
        config: Option<EpochConfig>,
        serving: bool,
        partners: Vec<HaPartnerStatus>,
    ) -> HaDeviceStatus {
        HaDeviceStatus {
            node_id: 1,
            config,
            serving,
            meta: ReplicaMeta::default(),
            partners,
        }
    }

    fn states(l: &ReplicaListing) -> Vec<(&str, Option<u8>)> {
        l.replicas
            .iter()
            .map(|r| (r.state.as_str(), r.progress_percent))
            .collect()
    }

    #[test]
    fn unknown_without_status() {
        let l = replica_rows("a", &repl(), None, &[], &[]);
        assert_eq!(states(&l), vec![("unknown", None); 3]);
        assert_eq!(l.replicas[0].node, "a");
        assert!(l.replicas[0].local);
        assert_eq!(l.replicas[1].links.len(), 3);
        assert!(l.replicas[1].links.iter().all(|x| x.state == "unknown"));
        assert_eq!(l.replicas[1].links[2].kind, "heartbeat");
        assert_eq!(l.replicas[2].journal, JournalKind::DiskFailure);
        assert_eq!(l.epoch, None);
    }

    #[test]
    fn no_configuration_yet() {
        let l = replica_rows("a", &repl(), Some(&status(None, false, vec![])), &[], &[]);
        assert_eq!(states(&l), vec![("not-synchronized", None); 3]);
        assert!(l.replicas[0]
            .reason
            .as_ref()
            .unwrap()
            .contains("failover authority"));
    }

    #[test]
    fn synchronized_syncing_and_out() {
        use MemberState::*;
        let s = status(
            Some(cfg(&[(1, Synchronized), (2, Syncing), (3, Out)])),
            true,
            vec![
                partner(
                    2,
                    &[
                        ("10.0.0.1:7001=10.0.0.2:7001", true),
                        ("10.1.0.1:7001=10.1.0.2:7001", false),
                    ],
                    30,
                    120,
                ),
                partner(3, &[("10.0.0.1:7003=10.0.0.3:7003", false)], 0, 0),
            ],
        );
        let l = replica_rows("a", &repl(), Some(&s), &[], &[]);
        assert_eq!(
            states(&l),
            vec![
                ("synchronized", None),
                ("syncing", Some(25)),
                ("not-synchronized", None)
            ]
        );
        assert_eq!(l.epoch, Some(7));
        assert!(l.replicas[0].sequencer && !l.replicas[1].sequencer);
        assert_eq!(l.replicas[0].serving, Some(true));
        let b = &l.replicas[1];
        assert_eq!(b.links[0].state, "up");
        assert_eq!(b.links[1].state, "down");
        assert_eq!(b.links[1].last_error.as_deref(), Some("connection refused"));
        assert_eq!(b.links[2].state, "unknown", "heartbeat link not reported");
        assert_eq!(b.dirty_regions, Some(5));
        assert_eq!(b.bytes_mirrored, Some(4096));
        assert_eq!(
            (b.resync_done_regions, b.resync_total_regions),
            (Some(30), Some(120))
        );
        let c = l.replicas[2].reason.as_deref().unwrap();
        assert!(c.contains("out of the cluster in epoch 7"), "{c}");
        assert!(c.contains("left at generation 60"), "{c}");
        assert!(c.contains("every sync link is down"), "{c}");
    }

    /// A joiner refused for its smaller copy is `not-synchronized` with both sizes and the
    /// remedy, not `syncing` at 0 % forever.
    #[test]
    fn a_partner_refused_for_its_smaller_copy_is_not_synchronized() {
        use MemberState::*;
        let mut short = partner(2, &[("10.0.0.1:7001=10.0.0.2:7001", true)], 0, 0);
        short.size_refused = Some(tandem_config::ipc::HaSizeRefusal {
            partner_blocks: 131_072,
            own_blocks: 196_608,
        });
        let s = status(
            Some(cfg(&[(1, Synchronized), (2, Syncing), (3, Synchronized)])),
            true,
            vec![
                short,
                partner(3, &[("10.0.0.1:7003=10.0.0.3:7003", true)], 0, 0),
            ],
        );
        let l = replica_rows("a", &repl(), Some(&s), &[], &[]);
        assert_eq!(l.replicas[1].state, "not-synchronized");
        let why = l.replicas[1].reason.as_deref().unwrap();
        assert!(
            why.contains("131072 blocks") && why.contains("196608"),
            "{why}"
        );
        assert!(why.contains("tandem device extend"), "{why}");
    }

    #[test]
    fn blocked_without_lease_or_links() {
        use MemberState::*;
        let s = status(
            Some(cfg(&[
                (1, Synchronized),
                (2, Synchronized),
                (3, Synchronized),
            ])),
            false,
            vec![
                partner(
                    2,
                    &[
                        ("10.0.0.1:7001=10.0.0.2:7001", false),
                        ("10.1.0.1:7001=10.1.0.2:7001", false),
                    ],
                    0,
                    0,
                ),
                partner(3, &[("10.0.0.1:7003=10.0.0.3:7003", true)], 0, 0),
            ],
        );
        let l = replica_rows("a", &repl(), Some(&s), &[], &[]);
        assert_eq!(
            states(&l),
            vec![("blocked", None), ("blocked", None), ("synchronized", None)]
        );
        assert!(l.replicas[0].reason.as_ref().unwrap().contains("lease"));
        assert!(l.replicas[1].reason.as_ref().unwrap().contains("sync link"));
    }

    #[test]
    fn not_a_member_and_syncing_here() {
        use MemberState::*;
        let mut c = cfg(&[(1, Syncing), (2, Synchronized)]);
        c.sequencer = NodeId(2);
        let s = status(Some(c), false, vec![]);
        let l = replica_rows("a", &repl(), Some(&s), &[], &[]);
        assert_eq!(
            states(&l),
            vec![
                ("syncing", None),
                ("synchronized", None),
                ("not-synchronized", None)
            ]
        );
        assert!(l.replicas[0].reason.as_ref().unwrap().contains("node 2"));
        assert!(l.replicas[2]
            .reason
            .as_ref()
            .unwrap()
            .contains("not a member of epoch 7"));
        assert!(l.replicas[1].sequencer);
    }

    #[test]
    fn split_brain_needs_both_sides_serving_apart() {
        use MemberState::*;
        let here = status(Some(cfg(&[(1, Synchronized), (2, Out)])), true, vec![]);
        let mut theirs_cfg = cfg(&[(1, Out), (2, Synchronized)]);
        theirs_cfg.generation = GenerationId(71);
        theirs_cfg.sequencer = NodeId(2);
        let theirs = HaDeviceStatus {
            node_id: 2,
            ..status(Some(theirs_cfg.clone()), true, vec![])
        };
        let mut two = repl();
        two.partners.truncate(1);
        let l = replica_rows("a", &two, Some(&here), std::slice::from_ref(&theirs), &[]);
        assert_eq!(
            states(&l),
            vec![("split-brain", None), ("split-brain", None)]
        );
        // The other side not serving: just out.
        let idle = HaDeviceStatus {
            serving: false,
            ..theirs.clone()
        };
        let l = replica_rows("a", &two, Some(&here), &[idle], &[]);
        assert_eq!(
            states(&l),
            vec![("synchronized", None), ("not-synchronized", None)]
        );
        // Same generation: not diverged.
        let mut same = theirs;
        if let Some(c) = &mut same.config {
            c.generation = GenerationId(70);
        }
        let l = replica_rows("a", &two, Some(&here), &[same], &[]);
        assert_eq!(l.replicas[1].state, "not-synchronized");
        // A join refused by the authority (either side's node): both rows say split-brain,
        // even though the refused side no longer serves.
        for refused in [2u8, 1] {
            let l = replica_rows("a", &two, Some(&here), &[], &[refused]);
            assert_eq!(
                states(&l),
                vec![("split-brain", None), ("split-brain", None)]
            );
            assert!(l.replicas[1]
                .reason
                .as_ref()
                .unwrap()
                .contains("device resolve"));
        }
    }

    #[test]
    fn node_ids_are_the_lowest_free() {
        assert_eq!(next_node_id(&[1]), Some(2));
        assert_eq!(next_node_id(&[1, 2]), Some(3));
        assert_eq!(next_node_id(&[2, 3]), Some(1));
        assert_eq!(next_node_id(&[1, 2, 3]), None);
    }

    fn node_config() -> NodeConfig {
        let mut c = NodeConfig::default_ram(tandem_config::loopback_portal(3260));
        c.node.name = "a".into();
        c
    }

    fn spec(partners: Vec<PartnerConfig>) -> ReplicationSpec {
        ReplicationSpec {
            node_id: 1,
            failover: FailoverStrategy::Heartbeat,
            priority: Priority::First,
            journal: JournalKind::Ram,
            journal_location: None,
            resync_latency_target_ms: tandem_config::DEFAULT_RESYNC_LATENCY_TARGET_MS,
            witness: None,
            witness_file: None,
            partners,
        }
    }

    fn p(name: &str, id: u8, sync: &[&str]) -> PartnerConfig {
        PartnerConfig {
            name: name.into(),
            node_id: id,
            sync_links: sync.iter().map(|s| link(s)).collect(),
            heartbeat_links: vec![],
        }
    }

    #[test]
    fn spec_checks_are_precise() {
        let c = node_config();
        let ok = spec(vec![p("b", 2, &["127.0.0.1:7001=127.0.0.2:7001"])]);
        check_spec(&c, "d", &ok, None).unwrap();
        let cases: Vec<(ReplicationSpec, &str)> = vec![
            (spec(vec![]), "at least one partner"),
            (spec(vec![p("b", 2, &[])]), "at least one sync link"),
            (spec(vec![p("a", 2, &["127.0.0.1:7001=127.0.0.2:7001"])]), "is this node"),
            (spec(vec![p("b", 1, &["127.0.0.1:7001=127.0.0.2:7001"])]), "distinct"),
            (
                spec(vec![p("b", 2, &["127.0.0.1:7001=127.0.0.2:7001", "127.0.0.1:7001=127.0.0.2:7002"])]),
                "partners[0].sync_links[1] `127.0.0.1:7001=127.0.0.2:7002`: local address 127.0.0.1:7001 is already used",
            ),
            (
                spec(vec![p("b", 2, &["127.0.0.1:7001=127.0.0.2:7001", "127.0.0.1:7002=127.0.0.2:7001"])]),
                "partner address 127.0.0.2:7001 is used twice",
            ),
            (spec(vec![p("b", 2, &["0.0.0.0:7001=127.0.0.2:7001"])]), "not a unicast"),
            (spec(vec![p("b", 2, &["127.0.0.1:3260=127.0.0.2:7001"])]), "iSCSI portal"),
            (spec(vec![p("b", 2, &["127.0.0.1:7001=127.0.0.1:7001"])]), "same address"),
            (
                ReplicationSpec {
                    failover: FailoverStrategy::NodeMajority,
                    ..ok.clone()
                },
                "needs a third vote",
            ),
            (
                ReplicationSpec {
                    witness: Some("w".into()),
                    ..ok.clone()
                },
                "only applies to node-majority",
            ),
            (
                ReplicationSpec {
                    failover: FailoverStrategy::NodeMajority,
                    witness: Some("w".into()),
                    ..ok.clone()
                },
                "witness `w` is not a known server",
            ),
            (
                ReplicationSpec {
                    journal_location: Some("/tmp".into()),
                    ..ok.clone()
                },
                "disk journals only",
            ),
            (
                ReplicationSpec {
                    failover: FailoverStrategy::NodeMajority,
                    witness_file: Some("share/lock".into()),
                    ..ok.clone()
                },
                "not an absolute path",
            ),
            (
                ReplicationSpec {
                    failover: FailoverStrategy::NodeMajority,
                    witness_file: Some("/no/such/share/lock".into()),
                    ..ok.clone()
                },
                "its directory does not exist",
            ),
            (
                ReplicationSpec {
                    failover: FailoverStrategy::NodeMajority,
                    witness_file: Some("/tmp".into()),
                    ..ok.clone()
                },
                "is a directory",
            ),
            (
                ReplicationSpec {
                    witness_file: Some("/tmp/lock".into()),
                    ..ok.clone()
                },
                "only applies to node-majority",
            ),
        ];
        check_spec(
            &c,
            "d",
            &ReplicationSpec {
                failover: FailoverStrategy::NodeMajority,
                witness_file: Some("/tmp/tandem-witness-check".into()),
                ..ok.clone()
            },
            None,
        )
        .unwrap();
        for (s, needle) in cases {
            let e = check_spec(&c, "d", &s, None).unwrap_err();
            assert!(
                e.message.contains(needle),
                "`{needle}` not in `{}`",
                e.message
            );
            assert!(e.status.is_client_error(), "{e}");
        }
        // A link endpoint another device uses.
        let mut c2 = c.clone();
        let mut other = tandem_config::DeviceConfig::ram("other", 1 << 20);
        other.replication = Some(ok.clone().into_config("/s".into()));
        c2.devices.push(other);
        let e = check_spec(&c2, "d", &ok, None).unwrap_err();
        assert_eq!(e.status, StatusCode::CONFLICT);
        assert!(e.message.contains("device `other`"), "{}", e.message);
        check_spec(&c2, "other", &ok, None).unwrap();
    }

    #[test]
    fn secrets_and_tokens_are_checked() {
        assert!(check_secret(&"ab".repeat(32)).is_ok());
        assert!(check_secret("abc").is_err());
        assert!(check_secret(&"zz".repeat(32)).is_err());
        assert!(check_token(" t0k ").is_ok());
        assert!(check_token("a b").is_err());
        assert!(check_token("").is_err());
    }

    #[test]
    fn secret_files_are_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("servers").join("b.token");
        write_secret_file(&path, "tok").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "tok\n");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
    }

    #[test]
    fn the_secret_goes_where_this_node_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let secret = "ab".repeat(32);
        let mut d = tandem_config::DeviceConfig::ram("d1", 1 << 20);
        let cluster = dir.path().join("cluster.secret");
        // None yet: the node's cluster secret, to be written.
        assert_eq!(
            secret_location(dir.path(), &d, &secret).unwrap(),
            (cluster.clone(), true)
        );
        write_secret_file(&cluster, &secret).unwrap();
        assert_eq!(
            secret_location(dir.path(), &d, &secret).unwrap(),
            (cluster.clone(), false)
        );
        // Another cluster's secret: a file for this device.
        let other = "cd".repeat(32);
        let own = dir.path().join("secrets/d1.secret");
        assert_eq!(
            secret_location(dir.path(), &d, &other).unwrap(),
            (own.clone(), true)
        );
        write_secret_file(&own, &other).unwrap();
        d.replication = Some(spec(vec![]).into_config(own.clone()));
        assert_eq!(
            secret_location(dir.path(), &d, &other).unwrap(),
            (own, false)
        );
    }

    #[test]
    fn peer_debug_hides_the_token() {
        let p = Peer::new("b", "127.0.0.1:1".parse().unwrap(), "s3cr3t");
        assert!(!format!("{p:?}").contains("s3cr3t"));
    }
}
