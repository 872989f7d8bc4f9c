//! The management API: HTTP+JSON under `/api/v1/`, Prometheus text at `/metrics`, every route
//! behind a bearer token. `docs/api/openapi.yaml` describes it.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tandem_config::ipc::{HaDeviceStatus, StatusReport};
use tandem_config::{Chap, NodeConfig, ReplicationConfig, ServerConfig, TargetConfig};

use crate::api_types::*;
use crate::error::ApiError;
use crate::service::{no_target, Node};
use crate::token::constant_time_eq;

type ApiResult<T> = Result<T, ApiError>;

pub fn router(node: Arc<Node>) -> Router {
    let v1 = Router::new()
        .route("/status", get(status))
        .route("/devices", get(list_devices).post(create_device))
        .route("/devices/:name", get(show_device).delete(remove_device))
        .route("/devices/:name/extend", post(extend_device))
        .route("/devices/:name/rebind", post(rebind_device))
        .route("/devices/:name/cache", put(set_cache))
        .route(
            "/devices/:name/replication",
            get(get_replication)
                .put(put_replication)
                .delete(delete_replication),
        )
        .route(
            "/devices/:name/replicas",
            get(list_replicas).post(add_replica),
        )
        .route("/devices/:name/replicas/:partner", delete(remove_replica))
        .route("/devices/:name/ha-status", get(get_ha_status))
        .route("/devices/:name/resolve", post(resolve_split_brain))
        .route("/devices/:name/resolve/local", post(resolve_local))
        .route("/jobs/:id", get(show_job))
        .route("/targets", get(list_targets).post(create_target))
        .route("/targets/:iqn", get(show_target).delete(remove_target))
        .route("/targets/:iqn/chap", put(set_chap).delete(clear_chap))
        .route("/targets/:iqn/acl", get(show_acl).post(acl_add))
        .route("/targets/:iqn/acl/:initiator", delete(acl_remove))
        .route("/servers", get(list_servers).post(add_server))
        .route("/servers/:name", delete(remove_server))
        .route("/stats", get(stats))
        .route("/stats/:device", get(device_stats));
    Router::new()
        .nest("/api/v1", v1)
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(node.clone(), auth))
        .with_state(node)
}

/// 401 unless `Authorization: Bearer <token>` matches, compared in constant time.
async fn auth(State(node): State<Arc<Node>>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(t) if constant_time_eq(t.as_bytes(), node.token.as_bytes()) => next.run(request).await,
        Some(_) => ApiError::unauthorized(
            "wrong token: use the one in DATA_DIR/token (tandem --token-file FILE)",
        )
        .into_response(),
        None => ApiError::unauthorized(
            "missing `Authorization: Bearer <token>` header; the token is in DATA_DIR/token",
        )
        .into_response(),
    }
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!(
        "no endpoint {method} {uri}; see docs/api/openapi.yaml"
    ))
}

/// Parses a JSON body; errors name the field (`size`, `luns[2]`) and the reason.
fn parse<T: DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request needs a JSON body"));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            ApiError::bad_request(format!("invalid JSON body: {inner}"))
        } else {
            ApiError::bad_request(format!("invalid JSON body at `{path}`: {inner}"))
        }
    })
}

fn flag(query: &HashMap<String, String>, name: &str) -> ApiResult<bool> {
    match query.get(name).map(String::as_str) {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "query parameter `{name}` must be true or false, not `{other}`"
        ))),
    }
}

fn check_query(query: &HashMap<String, String>, allowed: &[&str]) -> ApiResult<()> {
    match query.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ApiError::bad_request(format!(
            "unknown query parameter `{k}` (allowed: {})",
            allowed.join(", ")
        ))),
        None => Ok(()),
    }
}

async fn status(State(node): State<Arc<Node>>) -> ApiResult<Json<StatusInfo>> {
    let config = node.config().await;
    let dp = node.dataplane_status().await;
    Ok(Json(StatusInfo {
        node: config.node.name.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_s: node.uptime_s(),
        api: node.api_addr.clone(),
        portals: config.node.portals.iter().map(|p| p.to_string()).collect(),
        config_path: node.config_path.display().to_string(),
        dataplane: node.dataplane_info(),
        devices: config.devices.len(),
        targets: config.targets.len(),
        servers: config.servers.len(),
        sessions: dp.map_or(0, |s| s.targets.iter().map(|t| t.sessions).sum()),
    }))
}

async fn list_devices(State(node): State<Arc<Node>>) -> Json<Vec<DeviceInfo>> {
    Json(node.list_devices().await)
}

async fn show_device(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
) -> ApiResult<Json<DeviceInfo>> {
    let mut info = node.get_device(&name).await?;
    info.replication = replica_listing(&node, &name).await;
    Ok(Json(info))
}

// ---- replication ---------------------------------------------------------------------------

/// The latest replication status of `device` from this node's data plane, None when it is
/// not known. The failover driver's last report from the data plane: everything that shows
/// live replication state (replica list, device show, ha-status, metrics) reads it here.
pub async fn ha_status(node: &Node, device: &str) -> Option<HaDeviceStatus> {
    crate::ha::ha_status(node, device)
}

/// The replica rows of a replicated device (None: not replicated).
async fn replica_listing(node: &Arc<Node>, device: &str) -> Option<ReplicaListing> {
    let config = node.config().await;
    let repl = config.device(device)?.replication.clone()?;
    let local = ha_status(node, device).await;
    // A split brain needs this node serving: only then are the partners asked.
    let remote = match &local {
        Some(s) if s.serving => remote_statuses(&config, device, &repl).await,
        _ => Vec::new(),
    };
    let split_brain = node.ha.view_mut(device, |v| v.split_brain.clone());
    let mut listing = crate::replica::replica_rows(
        &config.node.name,
        &repl,
        local.as_ref(),
        &remote,
        &split_brain,
    );
    listing.device = device.to_string();
    if let Some(note) = crate::resolve::resolution_note(node, device) {
        let text = note.text();
        for row in &mut listing.replicas {
            if row.node_id == note.discarded.node_id && row.state != "synchronized" {
                row.reason = Some(format!("full sync: {text}"));
            }
        }
        listing.resolution = Some(text);
    }
    Some(listing)
}

/// The partners' own statuses (for split-brain), asked with a short timeout; a partner that
/// does not answer is left out.
async fn remote_statuses(
    config: &NodeConfig,
    device: &str,
    repl: &ReplicationConfig,
) -> Vec<HaDeviceStatus> {
    let mut out = Vec::new();
    for p in &repl.partners {
        let Some(server) = config.servers.iter().find(|s| s.name == p.name) else {
            continue;
        };
        let Ok(peer) = crate::replica::Peer::for_server(server) else {
            continue;
        };
        let peer = peer.with_timeout(crate::replica::PROBE_TIMEOUT);
        let path = format!(
            "/api/v1/devices/{}/ha-status",
            crate::client::segment(device)
        );
        if let Ok((_, v)) = peer.call("GET", &path, None).await {
            if let Ok(s) = serde_json::from_value::<HaDeviceStatus>(v) {
                out.push(s);
            }
        }
    }
    out
}

async fn get_replication(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
) -> ApiResult<Json<ReplicationConfig>> {
    let config = node.config().await;
    let d = config
        .device(&name)
        .ok_or_else(|| crate::service::no_device(&name))?;
    d.replication
        .clone()
        .map(Json)
        .ok_or_else(|| crate::replica::not_replicated(&name))
}

async fn put_replication(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<ChangeResult>> {
    let req: ReplicationSet = parse(&body)?;
    let applied = crate::replica::set_replication(&node, &name, req).await?;
    Ok(Json(ChangeResult { dataplane: applied }))
}

async fn delete_replication(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
) -> ApiResult<Json<ChangeResult>> {
    let applied = crate::replica::clear_replication(&node, &name).await?;
    Ok(Json(ChangeResult { dataplane: applied }))
}

async fn list_replicas(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
) -> ApiResult<Json<ReplicaListing>> {
    if node.config().await.device(&name).is_none() {
        return Err(crate::service::no_device(&name));
    }
    replica_listing(&node, &name)
        .await
        .map(Json)
        .ok_or_else(|| crate::replica::not_replicated(&name))
}

async fn add_replica(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: ReplicaAdd = parse(&body)?;
    let added = crate::replica::add(&node, &name, req).await?;
    Ok((StatusCode::CREATED, Json(added)).into_response())
}

async fn remove_replica(
    State(node): State<Arc<Node>>,
    Path((name, partner)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<ReplicaRemoved>> {
    check_query(&query, &["force", "delete_file"])?;
    crate::replica::remove(
        &node,
        &name,
        &partner,
        flag(&query, "force")?,
        flag(&query, "delete_file")?,
    )
    .await
    .map(Json)
}

/// `tandem device resolve`: ends a split brain, keeping one node's copy.
async fn resolve_split_brain(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<crate::resolve::ResolveReport>> {
    let req: crate::resolve::ResolveRequest = parse(&body)?;
    crate::resolve::resolve(&node, &name, req).await.map(Json)
}

/// One node's part of a resolve (what the node running it calls on each side).
async fn resolve_local(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let step: crate::resolve::LocalStep = parse(&body)?;
    crate::resolve::local_step(&node, &name, step)
        .await
        .map(Json)
}

/// This node's own engine status for the device (what partners read to detect a split
/// brain); 503 while it is not known.
async fn get_ha_status(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
) -> ApiResult<Json<HaDeviceStatus>> {
    let config = node.config().await;
    let d = config
        .device(&name)
        .ok_or_else(|| crate::service::no_device(&name))?;
    if d.replication.is_none() {
        return Err(crate::replica::not_replicated(&name));
    }
    ha_status(&node, &name).await.map(Json).ok_or_else(|| {
        ApiError::unavailable(format!(
            "no replication status for `{name}` yet (the data plane has not reported one)"
        ))
    })
}

async fn create_device(State(node): State<Arc<Node>>, body: Bytes) -> ApiResult<Response> {
    let req: DeviceCreate = parse(&body)?;
    Ok(match node.create_device(req).await? {
        Ok(created) => (StatusCode::CREATED, Json(created)).into_response(),
        Err(job) => (StatusCode::ACCEPTED, Json(Accepted { job })).into_response(),
    })
}

async fn remove_device(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<ChangeResult>> {
    check_query(&query, &["force", "delete_file"])?;
    let applied = node
        .remove_device(&name, flag(&query, "force")?, flag(&query, "delete_file")?)
        .await?;
    Ok(Json(ChangeResult { dataplane: applied }))
}

async fn extend_device(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<DeviceCreated>> {
    let req: DeviceExtend = parse(&body)?;
    let replicated = node
        .config()
        .await
        .device(&name)
        .is_some_and(|d| d.replication.is_some());
    let applied = match req.phase {
        None if replicated => {
            crate::service::extend_replicated(&node, &name, req.size.bytes()).await?
        }
        None => node.extend_device(&name, req.size.bytes()).await?,
        Some(ExtendPhase::Grow) => {
            node.grow_replica_copy(&name, req.size.bytes()).await?;
            Applied::Applied
        }
        Some(ExtendPhase::Report) => node.report_replica_size(&name, req.size.bytes()).await?,
    };
    Ok(Json(DeviceCreated {
        device: node.get_device(&name).await?,
        dataplane: applied,
    }))
}

async fn rebind_device(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
) -> ApiResult<Json<DeviceCreated>> {
    let applied = node.rebind_device(&name).await?;
    Ok(Json(DeviceCreated {
        device: node.get_device(&name).await?,
        dataplane: applied,
    }))
}

async fn set_cache(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<DeviceCreated>> {
    let req: CacheSet = parse(&body)?;
    let applied = node
        .change(|c| {
            let d = c
                .device_mut(&name)
                .ok_or_else(|| crate::service::no_device(&name))?;
            d.cache = req.cache;
            d.cache_size = req.cache_size;
            // A bigger cache takes more memory: the memory rule (docs/operations.md).
            let old = node.config_snapshot();
            crate::image_guard::check_ram(&old, c)
        })
        .await?;
    Ok(Json(DeviceCreated {
        device: node.get_device(&name).await?,
        dataplane: applied,
    }))
}

async fn show_job(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> ApiResult<Json<JobInfo>> {
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::bad_request(format!("job id `{id}` is not a number")))?;
    node.job(id).map(Json).ok_or_else(|| {
        ApiError::not_found(format!(
            "no job {id} (finished jobs are kept for a while only)"
        ))
    })
}

fn target_info(config: &NodeConfig, t: &TargetConfig, dp: Option<&StatusReport>) -> TargetInfo {
    let iqn = t.iqn(&config.node.name);
    let live = dp.and_then(|s| s.targets.iter().find(|x| x.iqn.eq_ignore_ascii_case(&iqn)));
    TargetInfo {
        alias: t.alias.clone(),
        luns: t
            .luns
            .iter()
            .enumerate()
            .map(|(i, d)| LunInfo {
                lun: i as u32,
                device: d.clone(),
            })
            .collect(),
        allowed_initiators: t.allowed_initiators.clone(),
        chap: t.chap.as_ref().map(|c| ChapInfo {
            username: c.username.clone(),
            mutual_username: c.mutual_username.clone(),
        }),
        sessions: live.map_or(0, |x| x.sessions),
        initiators: live.map(|x| x.initiators.clone()).unwrap_or_default(),
        iqn,
    }
}

async fn list_targets(State(node): State<Arc<Node>>) -> Json<Vec<TargetInfo>> {
    let config = node.config().await;
    let dp = node.dataplane_status().await;
    Json(
        config
            .targets
            .iter()
            .map(|t| target_info(&config, t, dp.as_ref()))
            .collect(),
    )
}

async fn show_target(
    State(node): State<Arc<Node>>,
    Path(iqn): Path<String>,
) -> ApiResult<Json<TargetInfo>> {
    let config = node.config().await;
    let t = config.target_by_iqn(&iqn).ok_or_else(|| no_target(&iqn))?;
    let dp = node.dataplane_status().await;
    Ok(Json(target_info(&config, t, dp.as_ref())))
}

async fn create_target(State(node): State<Arc<Node>>, body: Bytes) -> ApiResult<Response> {
    let req: TargetCreate = parse(&body)?;
    let target = TargetConfig {
        alias: req.alias,
        iqn: req.iqn,
        luns: req.luns,
        allowed_initiators: req.allowed_initiators,
        chap: None,
    };
    let applied = node
        .change(|c| {
            let iqn = target.iqn(&c.node.name);
            if c.target_by_iqn(&iqn).is_some() {
                return Err(ApiError::conflict(format!("target `{iqn}` already exists")));
            }
            c.targets.push(target.clone());
            Ok(())
        })
        .await?;
    let config = node.config().await;
    let info = target_info(&config, config.targets.last().unwrap_or(&target), None);
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "target": info, "dataplane": applied })),
    )
        .into_response())
}

async fn remove_target(
    State(node): State<Arc<Node>>,
    Path(iqn): Path<String>,
) -> ApiResult<Json<ChangeResult>> {
    let applied = node
        .change(|c| {
            let before = c.targets.len();
            let name = c.node.name.clone();
            c.targets
                .retain(|t| !t.iqn(&name).eq_ignore_ascii_case(&iqn));
            if before == c.targets.len() {
                return Err(no_target(&iqn));
            }
            Ok(())
        })
        .await?;
    Ok(Json(ChangeResult { dataplane: applied }))
}

async fn edit_target(
    node: &Node,
    iqn: &str,
    edit: impl FnOnce(&mut TargetConfig) -> ApiResult<()>,
) -> ApiResult<Applied> {
    node.change(|c| edit(c.target_by_iqn_mut(iqn).ok_or_else(|| no_target(iqn))?))
        .await
}

async fn set_chap(
    State(node): State<Arc<Node>>,
    Path(iqn): Path<String>,
    body: Bytes,
) -> ApiResult<Json<ChangeResult>> {
    let chap: Chap = parse(&body)?;
    let applied = edit_target(&node, &iqn, |t| {
        t.chap = Some(chap);
        Ok(())
    })
    .await?;
    Ok(Json(ChangeResult { dataplane: applied }))
}

async fn clear_chap(
    State(node): State<Arc<Node>>,
    Path(iqn): Path<String>,
) -> ApiResult<Json<ChangeResult>> {
    let applied = edit_target(&node, &iqn, |t| {
        t.chap = None;
        Ok(())
    })
    .await?;
    Ok(Json(ChangeResult { dataplane: applied }))
}

async fn show_acl(
    State(node): State<Arc<Node>>,
    Path(iqn): Path<String>,
) -> ApiResult<Json<AclInfo>> {
    let config = node.config().await;
    let t = config.target_by_iqn(&iqn).ok_or_else(|| no_target(&iqn))?;
    Ok(Json(AclInfo {
        iqn: t.iqn(&config.node.name),
        allowed_initiators: t.allowed_initiators.clone(),
    }))
}

async fn acl_add(
    State(node): State<Arc<Node>>,
    Path(iqn): Path<String>,
    body: Bytes,
) -> ApiResult<Json<ChangeResult>> {
    let req: AclAdd = parse(&body)?;
    let applied = edit_target(&node, &iqn, |t| {
        if t.allowed_initiators
            .iter()
            .any(|i| i.eq_ignore_ascii_case(&req.initiator))
        {
            return Err(ApiError::conflict(format!(
                "`{}` is already allowed",
                req.initiator
            )));
        }
        t.allowed_initiators.push(req.initiator);
        Ok(())
    })
    .await?;
    Ok(Json(ChangeResult { dataplane: applied }))
}

async fn acl_remove(
    State(node): State<Arc<Node>>,
    Path((iqn, initiator)): Path<(String, String)>,
) -> ApiResult<Json<ChangeResult>> {
    let applied = edit_target(&node, &iqn, |t| {
        let before = t.allowed_initiators.len();
        t.allowed_initiators
            .retain(|i| !i.eq_ignore_ascii_case(&initiator));
        if before == t.allowed_initiators.len() {
            return Err(ApiError::not_found(format!(
                "`{initiator}` is not in the ACL of `{iqn}`"
            )));
        }
        Ok(())
    })
    .await?;
    Ok(Json(ChangeResult { dataplane: applied }))
}

async fn list_servers(
    State(node): State<Arc<Node>>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<Vec<ServerInfo>>> {
    check_query(&query, &["check"])?;
    let check = !query.contains_key("check") || flag(&query, "check")?;
    let config = node.config().await;
    // All at once: one after another would take up to PROBE_TIMEOUT per server.
    let handles: Vec<_> = config
        .servers
        .iter()
        .cloned()
        .map(|s| {
            tokio::spawn(async move {
                if check {
                    crate::replica::probe_server(&s).await
                } else {
                    ServerInfo {
                        name: s.name.clone(),
                        address: s.address,
                        token: s.token_file.is_some(),
                        reachable: None,
                        node: None,
                        error: None,
                    }
                }
            })
        })
        .collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.map_err(|e| ApiError::internal(e.to_string()))?);
    }
    Ok(Json(out))
}

async fn add_server(State(node): State<Arc<Node>>, body: Bytes) -> ApiResult<Response> {
    let req: ServerAdd = parse(&body)?;
    let server = ServerConfig {
        name: req.name.clone(),
        address: req.address,
        token_file: None,
    };
    // Rules first (name, duplicates), then the other node, then save.
    let mut candidate = node.config().await;
    if candidate.servers.iter().any(|s| s.name == req.name) {
        return Err(ApiError::conflict(format!(
            "server `{}` is already known",
            req.name
        )));
    }
    candidate.servers.push(server.clone());
    candidate.validate().map_err(ApiError::invalid)?;
    let token_file = match &req.token {
        None => None,
        Some(t) => {
            let t = crate::replica::check_token(t)?;
            crate::replica::verify_server(&req.name, req.address, t).await?;
            let path = crate::replica::server_token_path(&node.data_dir, &req.name);
            crate::replica::write_secret_file(&path, t)?;
            Some(path)
        }
    };
    let saved = ServerConfig {
        token_file: token_file.clone(),
        ..server
    };
    let applied = node
        .change(|c| {
            if c.servers.iter().any(|s| s.name == saved.name) {
                return Err(ApiError::conflict(format!(
                    "server `{}` is already known",
                    saved.name
                )));
            }
            c.servers.push(saved.clone());
            Ok(())
        })
        .await;
    let applied = match applied {
        Ok(a) => a,
        Err(e) => {
            if let Some(p) = &token_file {
                let _ = std::fs::remove_file(p);
            }
            return Err(e);
        }
    };
    let info = ServerInfo {
        name: req.name,
        address: req.address,
        token: token_file.is_some(),
        reachable: req.token.as_ref().map(|_| true),
        node: None,
        error: None,
    };
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "server": info, "dataplane": applied })),
    )
        .into_response())
}

async fn remove_server(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
) -> ApiResult<Json<ChangeResult>> {
    let mut token_file = None;
    let applied = node
        .change(|c| {
            if let Some(d) = c.devices.iter().find(|d| {
                d.replication.as_ref().is_some_and(|r| {
                    r.partners.iter().any(|p| p.name == name) || r.witness.as_deref() == Some(&name)
                })
            }) {
                return Err(ApiError::conflict(format!(
                    "server `{name}` is a replica partner or witness of device `{}`; `tandem replica remove {} --partner {name}` first",
                    d.name, d.name
                )));
            }
            let before = c.servers.len();
            token_file = c
                .servers
                .iter()
                .find(|s| s.name == name)
                .and_then(|s| s.token_file.clone());
            c.servers.retain(|s| s.name != name);
            if before == c.servers.len() {
                return Err(ApiError::not_found(format!(
                    "no server named `{name}`; `tandem server list` shows them"
                )));
            }
            Ok(())
        })
        .await?;
    // The token copy this node made is removed with the server.
    if let Some(p) = token_file {
        if p == crate::replica::server_token_path(&node.data_dir, &name) {
            let _ = std::fs::remove_file(p);
        }
    }
    Ok(Json(ChangeResult { dataplane: applied }))
}

async fn stats(State(node): State<Arc<Node>>) -> ApiResult<Json<StatsInfo>> {
    node.stats().await.map(Json)
}

async fn device_stats(
    State(node): State<Arc<Node>>,
    Path(device): Path<String>,
) -> ApiResult<Json<StatsInfo>> {
    if node.config().await.device(&device).is_none() {
        return Err(crate::service::no_device(&device));
    }
    let mut s = node.stats().await?;
    s.devices.retain(|d| d.name == device);
    Ok(Json(s))
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    let config = node.config().await;
    let stats = node.stats().await.ok();
    let mut ha = Vec::new();
    for d in config.devices.iter().filter(|d| d.replication.is_some()) {
        ha.push((d.name.clone(), ha_status(&node, &d.name).await));
    }
    let text = crate::metrics::render(
        &config,
        &node.dataplane_info(),
        node.uptime_s(),
        stats.as_ref(),
        &ha,
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
