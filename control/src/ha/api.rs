//! HA endpoints of the management API, behind the same bearer token as the rest:
//!
//! - `POST /api/v1/ha/authority/{device}`: a node's requests to the device's failover
//!   authority hosted here. Body [`AuthorityRequest`], answer [`AuthorityReply`]. 409 when
//!   this node does not host that authority; 503 when the authority stopped (its state
//!   could not be saved). A witness (`--role witness`) creates the authority on first
//!   contact from the request's `nodes`.
//! - `GET /api/v1/ha/status`: [`HaView`] of every replicated device on this node, plus the
//!   authorities hosted here.
//! - `GET /api/v1/ha/status/{device}`: one device's [`HaView`].

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tandem_config::names::is_device_name;
use tandem_config::REPLICA_NODE_ID_MAX;

use super::authority_host::{self, HostError, Persisted};
use super::driver::{AuthorityReply, AuthorityRequest};
use super::{strategy, HaView, Role, WITNESS_DEVICES_MAX};
use crate::error::ApiError;
use crate::service::Node;
use crate::token::constant_time_eq;
use tandem_ha::authority::ToAuthority;
use tandem_ha::NodeId;

/// Largest request body.
pub const BODY_BYTES_MAX: usize = 64 << 10;

/// The HA routes, with their own token check (same token, same comparison as the rest of
/// the API); mounted by `server::run`.
pub fn routes(node: Arc<Node>) -> Router {
    Router::new()
        .route("/api/v1/ha/authority/:device", post(authority))
        .route("/api/v1/ha/status", get(status_all))
        .route("/api/v1/ha/status/:device", get(status_one))
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .route_layer(middleware::from_fn_with_state(node.clone(), auth))
        .with_state(node)
}

async fn auth(State(node): State<Arc<Node>>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(t) if constant_time_eq(t.as_bytes(), node.token.as_bytes()) => next.run(request).await,
        _ => ApiError::unauthorized(
            "missing or wrong `Authorization: Bearer <token>`; the token is in DATA_DIR/token",
        )
        .into_response(),
    }
}

fn host_error(e: HostError) -> ApiError {
    match e {
        HostError::Stopped(_) => ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "authority_stopped",
            e.to_string(),
        ),
        HostError::Superseded(..) | HostError::NoWitnessFile(_) => {
            ApiError::conflict(e.to_string())
        }
        HostError::NotMember(_) | HostError::Nodes { .. } => ApiError::bad_request(e.to_string()),
        HostError::State { .. } => ApiError::internal(e.to_string()),
    }
}

/// Checks a request from the network before it reaches the authority.
pub fn check_request(device: &str, req: &AuthorityRequest) -> Result<(), ApiError> {
    if !is_device_name(device) {
        return Err(ApiError::bad_request(format!(
            "`{device}` is not a device name"
        )));
    }
    let id_ok = |n: u8| (1..=REPLICA_NODE_ID_MAX).contains(&n);
    if !id_ok(req.from.0) {
        return Err(ApiError::bad_request(format!(
            "`from` {} is not a node id",
            req.from.0
        )));
    }
    if req.nodes.len() > usize::from(REPLICA_NODE_ID_MAX) || req.nodes.iter().any(|n| !id_ok(n.0)) {
        return Err(ApiError::bad_request("`nodes`: at most 3 ids, each 1..=3"));
    }
    if req.requests.len() > authority_host::REQUESTS_MAX {
        return Err(ApiError::bad_request(format!(
            "{} requests, at most {} allowed",
            req.requests.len(),
            authority_host::REQUESTS_MAX
        )));
    }
    Ok(())
}

async fn authority(
    State(node): State<Arc<Node>>,
    Path(device): Path<String>,
    body: Bytes,
) -> Result<Json<AuthorityReply>, ApiError> {
    let req: AuthorityRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    check_request(&device, &req)?;
    if let Some(config) = req.hand_back.clone() {
        return hand_back(&node, &device, &req, config);
    }
    if !authority_host::hosts_device(&node, &device) {
        if node.ha.role() != Role::Witness {
            return Err(ApiError::conflict(format!(
                "this node does not host the failover authority of `{device}`"
            )));
        }
        if req.nodes.len() < 2 || !req.nodes.contains(&req.from) {
            return Err(ApiError::bad_request(
                "`nodes` must list the device's two or three node ids, the sender's included",
            ));
        }
        authority_host::ensure_host(&node, &device, &req.nodes, req.initial, WITNESS_DEVICES_MAX)
            .map_err(host_error)?;
    }
    // Witness pair: a data node knows a newer epoch (the data nodes took the vote over).
    if node.ha.role() == Role::Witness
        && authority_host::fence_witness(&node, &device, req.from, req.fence)
    {
        return Err(ApiError::conflict(format!(
            "the data nodes took the vote of `{device}` over (epoch {}): this witness stood down",
            req.fence.unwrap_or(0)
        )));
    }
    // A request that reached this authority is its sender's vote (three-node majority).
    node.ha
        .record_vote(&device, req.from.0, std::time::Instant::now());
    let (me, turned, requests) = turn_verdicts(&node, &device, req.from, req.requests);
    if !turned.is_empty() {
        if let Some(Err(e)) = authority_host::handle_local(&node, &device, me, turned) {
            return Err(host_error(e));
        }
    }
    match authority_host::handle_local(&node, &device, req.from, requests) {
        Some(Ok(update)) => Ok(Json(AuthorityReply { update })),
        Some(Err(e)) => Err(host_error(e)),
        None => Err(ApiError::conflict(format!(
            "this node does not host the failover authority of `{device}`"
        ))),
    }
}

/// Witness pair: a data node hands the vote back to this witness (`witness_pair`). Only a
/// witness accepts it, with a configuration whose members are the request's nodes.
fn hand_back(
    node: &Node,
    device: &str,
    req: &AuthorityRequest,
    config: tandem_ha::EpochConfig,
) -> Result<Json<AuthorityReply>, ApiError> {
    if node.ha.role() != Role::Witness {
        return Err(ApiError::conflict("only a witness takes a hand-back"));
    }
    let members_known = config.members.iter().all(|m| req.nodes.contains(&m.0));
    if req.nodes.len() < 2
        || !req.nodes.contains(&req.from)
        || !members_known
        || config.epoch.0 > authority_host::EPOCH_MAX
    {
        return Err(ApiError::bad_request(
            "hand-back: `nodes` must list the device's nodes, the sender's and every member included",
        ));
    }
    authority_host::accept_hand_back(node, device, &req.nodes, config)
        .map_err(|e| ApiError::conflict(e.to_string()))?;
    Ok(Json(AuthorityReply { update: None }))
}

/// Splits a partner's requests: verdicts about this node that the heartbeat strategy's
/// priority turns against the asker ([`strategy::verdict_suspect`]) become this node's own
/// verdicts about the asker (returned with this node's id); the rest go on as sent.
fn turn_verdicts(
    node: &Node,
    device: &str,
    from: NodeId,
    requests: Vec<ToAuthority>,
) -> (NodeId, Vec<ToAuthority>, Vec<ToAuthority>) {
    let config = node.config_arc();
    let Some(r) = config.device(device).and_then(|d| d.replication.as_ref()) else {
        return (from, Vec::new(), requests);
    };
    let me = NodeId(r.node_id);
    let lease = node.ha.settings().lease;
    let local_serving = node
        .ha
        .views
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(device)
        .is_some_and(|v| {
            v.status.as_ref().is_some_and(|s| s.serving)
                && v.exchanged_at.is_some_and(|t| t.elapsed() < lease)
        });
    let mut turned = Vec::new();
    let mut rest = Vec::new();
    for q in requests {
        match q {
            ToAuthority::Verdict { suspect, epoch }
                if strategy::verdict_suspect(r, from, suspect, local_serving) != suspect =>
            {
                tracing::info!(
                    device,
                    asker = from.0,
                    epoch = epoch.0,
                    "heartbeat strategy: node {} asks for a verdict about this node (priority first, serving); the node with priority second stops instead",
                    from.0
                );
                turned.push(ToAuthority::Verdict {
                    suspect: from,
                    epoch,
                });
            }
            q => rest.push(q),
        }
    }
    (me, turned, rest)
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct HaStatusAll {
    pub role: Role,
    pub devices: Vec<HaView>,
    /// Authorities hosted here (their persisted state).
    pub authorities: Vec<Persisted>,
}

async fn status_all(State(node): State<Arc<Node>>) -> Json<HaStatusAll> {
    let mut authorities: Vec<Persisted> = node
        .ha
        .hosts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .map(|h| h.persisted().clone())
        .collect();
    authorities.sort_by(|a, b| a.device.cmp(&b.device));
    Json(HaStatusAll {
        role: node.ha.role(),
        devices: super::ha_views(&node),
        authorities,
    })
}

async fn status_one(
    State(node): State<Arc<Node>>,
    Path(device): Path<String>,
) -> Result<Json<HaView>, ApiError> {
    super::ha_view(&node, &device)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no replicated device `{device}` on this node")))
}
