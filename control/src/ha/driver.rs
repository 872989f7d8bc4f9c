//! One task per replicated device: every `exchange_interval` (100 ms), and at once after a
//! new configuration, it
//! 1. sends `HaExchange` to the local data plane with the updates not yet delivered, and
//!    takes the engine's requests and status from the report;
//! 2. hands the requests to the device's authority (in this process, or by HTTP to the
//!    authority node's API with its `[[server]]` address and token file);
//! 3. turns the answer into an `HaUpdate` whose lease counts from the report's `now_ns`
//!    (the data plane's clock when it asked), for the next exchange;
//! 4. under the Heartbeat strategy, on the second node, decides whether to take the
//!    authority over ([`super::strategy::decide_takeover`]); with three data nodes under
//!    node majority, any node may, with the third node's agreement
//!    ([`super::strategy::decide_majority_takeover`]).
//!
//! Three data nodes under node majority: the node holding the authority follows it by the
//! heartbeat announcements (highest epoch), a hosted authority stands down when a partner
//! knows a newer epoch, and it holds (no lease, no removal) while fewer than one partner
//! asked it within a lease (its majority).
//!
//! A data plane that is down (or absent: `--no-dataplane`) is retried quietly; the driver
//! still polls the authority for the configuration, so that the takeover decision knows
//! the newest one. Without leases the engine serves nothing (fail safe).

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tandem_config::ipc::{HaLease, HaUpdate, Request, Response};
use tandem_config::{NodeConfig, ReplicationConfig};
use tandem_ha::authority::ToAuthority;
use tandem_ha::{EpochConfig, NodeId};

use super::authority_host::{self, AuthorityHost, Grant};
use super::file_witness_task;
use super::strategy::{self, HeardPartner, MajorityTakeoverInput, Takeover, TakeoverInput};
use super::{AuthorityPlace, HaSettings};
use crate::service::Node;

/// Updates kept for a data plane that does not answer (oldest dropped).
const PENDING_MAX: usize = 4;
/// Largest answer accepted from a remote authority.
const REPLY_BYTES_MAX: u64 = 256 << 10;
/// Largest token file read.
const TOKEN_BYTES_MAX: u64 = 4096;

/// Body of `POST /api/v1/ha/authority/{device}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorityRequest {
    /// The asking node's id within the device.
    pub from: NodeId,
    /// The device's data nodes (lets a witness create the authority on first contact).
    #[serde(default)]
    pub nodes: Vec<NodeId>,
    /// How the first configuration is made, when the authority has no state yet (the
    /// sender's `replica add` mark; see `InitialSync`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial: Option<super::InitialSync>,
    /// What the node's engine asks (empty: just tell me the configuration).
    #[serde(default)]
    pub requests: Vec<ToAuthority>,
}

/// Answer of `POST /api/v1/ha/authority/{device}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorityReply {
    /// None while the authority is cold (waiting for every node's metadata).
    pub update: Option<Grant>,
}

fn newer(a: Option<EpochConfig>, b: Option<&EpochConfig>) -> Option<EpochConfig> {
    match (a, b) {
        (Some(a), Some(b)) if b.epoch > a.epoch => Some(b.clone()),
        (Some(a), _) => Some(a),
        (None, b) => b.cloned(),
    }
}

pub async fn run(node: Arc<Node>, device: String) {
    let settings = node.ha.settings();
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(settings.remote_timeout)
        .timeout(settings.remote_timeout)
        .build();
    let mut pending: Vec<HaUpdate> = Vec::new();
    let mut last_answer: Option<Instant> = None;
    // Three-node majority: when each partner's authority last answered, by node id.
    let mut answered_by: HashMap<u8, Instant> = HashMap::new();
    let mut every = tokio::time::interval(settings.exchange_interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut at_once = false;
    // The authority's last configuration (see `authority_host::split_brain_join`).
    let mut last_grant: Option<EpochConfig> = None;
    tracing::info!(%device, "HA driver started");
    loop {
        if !at_once {
            every.tick().await;
        }
        let was_at_once = std::mem::take(&mut at_once);
        let config = node.config_arc();
        let Some(r) = config.device(&device).and_then(|d| d.replication.clone()) else {
            tracing::info!(%device, "HA driver stops: the device is no longer replicated here");
            node.ha
                .views
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&device);
            return;
        };

        // 1. The data plane.
        let mut requests = Vec::new();
        let mut now_ns = None;
        let mut engine_status = None;
        let mut engine_epoch = None;
        // When the exchange whose report a lease would count from started.
        let mut reported_from = None;
        if node.dataplane_enabled {
            let call = Request::HaExchange {
                device: device.clone(),
                updates: pending.clone(),
            };
            // Before the call: the report's `serving` holds at some instant after this.
            let asked_at = Instant::now();
            match node.query(call).await {
                Ok(Response::Ha(report)) => {
                    pending.clear();
                    now_ns = Some(report.now_ns);
                    reported_from = Some(asked_at);
                    requests = report.requests;
                    requests.truncate(authority_host::REQUESTS_MAX);
                    engine_epoch = report.status.config.as_ref().map(|c| c.epoch);
                    engine_status = Some(report.status.clone());
                    node.ha.view_mut(&device, |v| {
                        v.config = newer(v.config.take(), report.status.config.as_ref());
                        if report.status.serving {
                            v.served_at = Some(asked_at);
                        }
                        v.status = Some(report.status);
                        v.exchanged_at = Some(Instant::now());
                    });
                }
                Ok(other) => note_error(&node, &device, format!("data plane answered {other:?}")),
                Err(e) => note_error(&node, &device, format!("data plane: {}", e.message)),
            }
        }

        // 2. The authority.
        let three = strategy::is_three_node_majority(&r);
        let heard = if three {
            heard_partners(&node, &device, &r, &settings)
        } else {
            Vec::new()
        };
        if three {
            check_stand_down(&node, &device, &r, &heard);
        } else {
            // The echo in the partner's newest heartbeat, taken before the announcement is
            // checked, so the heartbeat that ends a restarted or paused authority's wait for
            // its partner (`echo`) is one whose announcement was checked.
            let echo = r
                .partners
                .first()
                .and_then(|p| node.ha.heartbeats.echo_from(&device, p.node_id));
            check_superseded(&node, &device, &r, &settings);
            authority_host::partner_heard(&node, &device, echo);
        }
        let hosted = authority_host::hosts_device(&node, &device);
        let superseded = authority_host::superseded_by(&node, &device).map(|n| n.0);
        let place = if three {
            majority_place(&node, &device, &r, &heard)
        } else {
            match strategy::authority_place(&r, hosted, superseded) {
                AuthorityPlace::FileWitness => {
                    file_witness_task::ensure_running(&node, &device);
                    file_witness_task::place(&node, &device, &r)
                }
                p => p,
            }
        };
        let nodes = strategy::device_nodes(&r);
        let me = NodeId(r.node_id);
        let initial = super::initial_mark(&node.data_dir, &device);
        if let Some(join) =
            authority_host::split_brain_join(me, engine_status.as_ref(), last_grant.as_ref())
        {
            requests.push(join);
        }
        let answer = match &place {
            AuthorityPlace::Local => {
                if !hosted {
                    if let Err(e) =
                        authority_host::ensure_host(&node, &device, &nodes, initial, usize::MAX)
                    {
                        note_error(&node, &device, e.to_string());
                    }
                } else if let Err(e) = authority_host::widen_nodes(&node, &device, &nodes) {
                    note_error(&node, &device, e.to_string());
                }
                if let Some(span) = hold_without_majority(&node, &device, Instant::now()) {
                    authority_host::hold(&node, &device, Instant::now(), span);
                }
                authority_host::handle_local(&node, &device, me, requests)
                    .unwrap_or(Ok(None))
                    .map_err(|e| e.to_string())
            }
            AuthorityPlace::Remote { server } => {
                let body = AuthorityRequest {
                    from: me,
                    nodes: nodes.clone(),
                    initial,
                    requests,
                };
                remote_call(&agent, &config, server, &device, body).await
            }
            AuthorityPlace::Unavailable { reason } => Err(reason.clone()),
            AuthorityPlace::FileWitness => Err("unresolved file witness".into()),
        };
        node.ha
            .view_mut(&device, |v| v.authority = Some(place.clone()));
        match answer {
            Ok(grant) => {
                last_answer = Some(Instant::now());
                if let AuthorityPlace::Remote { server } = &place {
                    if let Some(p) = r.partners.iter().find(|p| &p.name == server) {
                        answered_by.insert(p.node_id, Instant::now());
                    }
                }
                node.ha.view_mut(&device, |v| v.last_error = None);
                if let Some(g) = grant {
                    last_grant = Some(g.config.clone());
                    node.ha.view_mut(&device, |v| {
                        v.config = newer(v.config.take(), Some(&g.config));
                        v.split_brain = g.split_brain.iter().map(|n| n.0).collect();
                    });
                    if let (Some(d), Some(from)) = (g.lease_duration_ns, reported_from) {
                        let until = from + Duration::from_nanos(d);
                        node.ha.view_mut(&device, |v| v.leased_until = Some(until));
                    }
                    if let Some(update) = to_update(g, now_ns) {
                        // One immediate exchange at most: a data plane that does not take
                        // the configuration must not make this loop spin.
                        at_once =
                            !was_at_once && engine_epoch.is_none_or_older(update.config.epoch);
                        pending.push(update);
                        if pending.len() > PENDING_MAX {
                            pending.remove(0);
                        }
                    }
                }
            }
            Err(e) => note_error(&node, &device, format!("authority: {e}")),
        }

        // 3. Take the authority over?
        if three {
            consider_majority_takeover(&node, &device, &r, &settings, &place, &heard, &answered_by);
        } else {
            consider_takeover(&node, &device, &r, &settings, last_answer);
        }
    }
}

/// The update for the data plane from the authority's answer to requests the data plane
/// reported at `report_now_ns` (its own clock). The lease counts from that instant, which
/// is before the authority received the requests: the node's lease ends before the
/// authority's record of it. None without a report (nothing to answer).
pub fn to_update(grant: Grant, report_now_ns: Option<u64>) -> Option<HaUpdate> {
    let at = report_now_ns?;
    let lease = grant.lease_duration_ns.map(|d| HaLease {
        epoch: grant.config.epoch,
        requested_at_ns: at,
        duration_ns: d,
    });
    Some(HaUpdate {
        config: grant.config,
        lease,
    })
}

trait OlderThan {
    fn is_none_or_older(&self, e: tandem_ha::Epoch) -> bool;
}

impl OlderThan for Option<tandem_ha::Epoch> {
    fn is_none_or_older(&self, e: tandem_ha::Epoch) -> bool {
        match self {
            Some(mine) => *mine < e,
            None => true,
        }
    }
}

fn note_error(node: &Node, device: &str, e: String) {
    node.ha.view_mut(device, |v| {
        if v.last_error.as_deref() != Some(e.as_str()) {
            tracing::debug!(%device, "HA: {e}");
        }
        v.last_error = Some(e);
    });
}

/// A partner hosting this device's authority too (a takeover this node did not see: a
/// pause, a total partition) wins with a higher epoch, or with the same epoch if this node
/// has priority second ([`strategy::superseded`]); the local authority then stops.
fn check_superseded(node: &Node, device: &str, r: &ReplicationConfig, settings: &HaSettings) {
    // Under a file witness the lock file alone says who hosts the authority.
    if r.witness_file.is_some() {
        return;
    }
    let Some(mine) = authority_host::hosted_epoch(node, device) else {
        return;
    };
    let now = Instant::now();
    for p in &r.partners {
        let Some(theirs) = node.ha.heartbeats.hosts_authority_recent(
            device,
            p.node_id,
            now,
            settings.heartbeat_timeout,
        ) else {
            continue;
        };
        if strategy::superseded(mine, theirs, r.priority) {
            let why = authority_host::supersede(
                node,
                device,
                NodeId(p.node_id),
                tandem_ha::Epoch(theirs),
            );
            let what = match why {
                Some(authority_host::StandDown::SplitBrain) => "split brain: ",
                _ => "",
            };
            node.ha.view_mut(device, |v| {
                v.last_error = Some(format!(
                    "{what}node {} hosts this device's authority at epoch {theirs} (this node's: {mine}); this authority stood down",
                    p.name
                ))
            });
        }
    }
}

// ---- Three data nodes under node majority (strategy: `decide_majority_takeover`) ----

/// What each partner said in a heartbeat within the timeout.
fn heard_partners(
    node: &Node,
    device: &str,
    r: &ReplicationConfig,
    settings: &HaSettings,
) -> Vec<HeardPartner> {
    let now = Instant::now();
    r.partners
        .iter()
        .filter_map(|p| {
            let h =
                node.ha
                    .heartbeats
                    .recent(device, p.node_id, now, settings.heartbeat_timeout)?;
            Some(HeardPartner {
                id: NodeId(p.node_id),
                epoch: h.epoch,
                hosts_authority: h.hosts_authority,
                lost_authority: h.lost_authority,
            })
        })
        .collect()
}

/// Where this node asks, as an [`AuthorityPlace`].
fn majority_place(
    node: &Node,
    device: &str,
    r: &ReplicationConfig,
    heard: &[HeardPartner],
) -> AuthorityPlace {
    let hosting_live = authority_host::hosted_epoch(node, device).is_some();
    let superseded = authority_host::superseded_by(node, device);
    let known = node
        .ha
        .view_mut(device, |v| v.config.as_ref().map_or(0, |c| c.epoch.0));
    let me = NodeId(r.node_id);
    match strategy::majority_place(
        me,
        &strategy::device_nodes(r),
        hosting_live,
        superseded,
        known,
        heard,
    ) {
        Ok(n) if n == me => AuthorityPlace::Local,
        Ok(n) => match r.partners.iter().find(|p| p.node_id == n.0) {
            Some(p) => AuthorityPlace::Remote {
                server: p.name.clone(),
            },
            None => AuthorityPlace::Unavailable {
                reason: format!("node {} is not a partner", n.0),
            },
        },
        Err(reason) => AuthorityPlace::Unavailable { reason },
    }
}

/// The authority hosted here stands down when a partner knows a newer epoch
/// ([`strategy::majority_stand_down`]): it is kept as a record and answers nothing.
fn check_stand_down(node: &Node, device: &str, r: &ReplicationConfig, heard: &[HeardPartner]) {
    let Some(mine) = authority_host::hosted_epoch(node, device) else {
        return;
    };
    if let Some((by, epoch)) = strategy::majority_stand_down(NodeId(r.node_id), mine, heard) {
        tracing::warn!(%device, by = by.0, epoch, own_epoch = mine,
            "a partner knows a newer configuration of this device (the authority was taken over \
             while this node was away or cut off): the authority hosted here stands down");
        authority_host::supersede(node, device, by, tandem_ha::Epoch(epoch));
        node.ha.view_mut(device, |v| {
            v.last_error = Some(format!(
                "the authority hosted here (epoch {mine}) stood down: node {} knows epoch {epoch}",
                by.0
            ))
        });
    }
}

/// The votes window: a partner that asked this node's authority within a lease counts.
fn vote_window(settings: &HaSettings) -> Duration {
    settings.lease
}

/// Three-node majority: if the authority hosted here for `device` has no majority (no
/// partner asked it within [`vote_window`]), how long to hold it (a lease plus margin, so
/// that leases resume only after a majority has been back for that long). None otherwise.
pub(crate) fn hold_without_majority(node: &Node, device: &str, now: Instant) -> Option<Duration> {
    let config = node.config_arc();
    let r = config.device(device).and_then(|d| d.replication.as_ref())?;
    if !strategy::is_three_node_majority(r) {
        return None;
    }
    let settings = node.ha.settings();
    let ages: Vec<Option<Duration>> = r
        .partners
        .iter()
        .map(|p| {
            node.ha
                .last_vote(device, p.node_id)
                .map(|t| now.saturating_duration_since(t))
        })
        .collect();
    let nodes = r.partners.len() + 1;
    (!strategy::has_majority(nodes, &ages, vote_window(&settings)))
        .then_some(settings.lease + settings.margin)
}

/// How long a new authority waits before its first lease or removal: the old authority may
/// have counted a vote until the third node switched to the new one (a heartbeat interval
/// and an exchange, plus a call still under way: the remote timeout), kept its majority for
/// a vote window after that, and its node's lease runs a lease beyond; plus the margin.
fn takeover_quiet(settings: &HaSettings) -> Duration {
    settings.remote_timeout
        + settings.heartbeat_interval
        + settings.exchange_interval
        + vote_window(settings)
        + settings.lease
        + settings.margin
}

fn consider_majority_takeover(
    node: &Arc<Node>,
    device: &str,
    r: &ReplicationConfig,
    settings: &HaSettings,
    place: &AuthorityPlace,
    heard: &[HeardPartner],
    answered_by: &HashMap<u8, Instant>,
) {
    let now = Instant::now();
    let lease_plus_margin = settings.lease + settings.margin;
    // The node this one follows (none when it hosts the authority or follows nobody).
    let authority = match place {
        AuthorityPlace::Remote { server } => r.partners.iter().find(|p| &p.name == server),
        _ => None,
    };
    let Some(authority) = authority else {
        node.ha.view_mut(device, |v| v.authority_lost = false);
        return;
    };
    let heard_at = node.ha.heartbeats.last_heard(device, authority.node_id);
    let last = match (heard_at, answered_by.get(&authority.node_id).copied()) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let silent_for = last.map(|t| now.saturating_duration_since(t));
    let lost = silent_for.is_some_and(|s| s > lease_plus_margin);
    node.ha.view_mut(device, |v| v.authority_lost = lost);
    let newest = node.ha.view_mut(device, |v| v.config.clone());
    let input = MajorityTakeoverInput {
        me: NodeId(r.node_id),
        hosting: authority_host::hosted_epoch(node, device).is_some(),
        authority: NodeId(authority.node_id),
        silent_for,
        lease_plus_margin,
        other: heard.iter().find(|p| p.id.0 != authority.node_id).cloned(),
        newest,
    };
    let Takeover::TakeOver(config) = strategy::decide_majority_takeover(&input) else {
        return;
    };
    let epoch = config.epoch.0;
    match AuthorityHost::take_over(
        &node.data_dir,
        device,
        &strategy::device_nodes(r),
        config,
        NodeId(authority.node_id),
        settings,
        now,
    ) {
        Ok(mut host) => {
            host.hold(now, takeover_quiet(settings));
            tracing::warn!(%device, from = %authority.name, epoch,
                "the authority node was silent to both other nodes for longer than a lease plus \
                 margin: this node takes the failover authority over with the third node's vote \
                 (two of three)");
            authority_host::install(node, host);
            node.ha.view_mut(device, |v| {
                v.took_over_from = Some(authority.node_id);
                v.authority_lost = false;
            });
        }
        Err(e) => note_error(node, device, format!("takeover: {e}")),
    }
}

/// Whether this node's data plane held a lease when the authority node was last heard at
/// `last`, give or take half the margin: an exchange that started at `served_at` reported
/// it serving, so its lease ran past `served_at`; if that is no earlier than `last` minus
/// half the margin, the lease ran past that point. What [`TakeoverInput::leased_when_last_heard`]
/// needs: the authority removes a member only a margin after that member's lease ended, so
/// it had not removed this node when it was last heard. Measured from when an exchange
/// started, not from when it ended or when the driver looks, so a slow call to a cut-off
/// authority in between does not make a lease that ran look stale.
fn leased_when_heard(
    node: &Node,
    device: &str,
    last: Option<Instant>,
    settings: &HaSettings,
) -> bool {
    let half_margin = settings.margin / 2;
    let (served_at, leased_until) = node.ha.view_mut(device, |v| (v.served_at, v.leased_until));
    match (last, leased_when(served_at, leased_until)) {
        (Some(last), Some(held)) => held + half_margin >= last,
        _ => false,
    }
}

/// The latest instant this node is known to have held a lease: the last exchange that found
/// its data plane serving, or the end of the last lease the authority granted it, whichever
/// is later. A grant is as good a proof as serving: the authority removes a member only a
/// margin after the last lease it granted that member ended. Without the grant, a stop of the
/// authority node during a slow call (more than half the margin after the exchange started)
/// left `served_at` older than the last heartbeat for good, since this node never serves
/// again without a takeover: no takeover ever (`tests/tests/ha_netns_faults.rs`, SIGSTOP).
pub fn leased_when<T: Ord + Copy>(served_at: Option<T>, leased_until: Option<T>) -> Option<T> {
    served_at.max(leased_until)
}

fn consider_takeover(
    node: &Arc<Node>,
    device: &str,
    r: &ReplicationConfig,
    settings: &HaSettings,
    last_answer: Option<Instant>,
) {
    let Some(first) = r.partners.first() else {
        return;
    };
    let now = Instant::now();
    let heard = node.ha.heartbeats.last_heard(device, first.node_id);
    let last = match (heard, last_answer) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let newest = node.ha.view_mut(device, |v| v.config.clone());
    let leased_when_last_heard = leased_when_heard(node, device, last, settings);
    let input = TakeoverInput {
        strategy: r.failover,
        priority: r.priority,
        // A superseded authority is kept only as a record: it does not count as hosting.
        hosting: authority_host::hosts_device(node, device)
            && authority_host::superseded_by(node, device).is_none(),
        partners: r.partners.len(),
        me: NodeId(r.node_id),
        authority: NodeId(first.node_id),
        silent_for: last.map(|t| now.saturating_duration_since(t)),
        lease_plus_margin: settings.lease + settings.margin,
        leased_when_last_heard,
        newest,
    };
    let Takeover::TakeOver(config) = strategy::decide_takeover(&input) else {
        return;
    };
    let epoch = config.epoch.0;
    match AuthorityHost::take_over(
        &node.data_dir,
        device,
        &strategy::device_nodes(r),
        config,
        NodeId(first.node_id),
        settings,
        now,
    ) {
        Ok(mut host) => {
            // Paused later, the taker waits for its partner's echo too (as the sim does).
            authority_host::arm_partner_wait(node, device, &mut host, false);
            tracing::warn!(%device, from = %first.name, epoch,
                "the authority node was silent on every link for longer than a lease plus margin: \
                 this node takes the failover authority over and goes on without it \
                 (if that node is alive behind a total partition, this is a split brain)");
            authority_host::install(node, host);
            node.ha
                .view_mut(device, |v| v.took_over_from = Some(first.node_id));
        }
        Err(e) => note_error(node, device, format!("takeover: {e}")),
    }
}

/// Calls the authority on `server` (a `[[server]]` entry with a token file).
async fn remote_call(
    agent: &ureq::Agent,
    config: &NodeConfig,
    server: &str,
    device: &str,
    body: AuthorityRequest,
) -> Result<Option<Grant>, String> {
    let s = config
        .servers
        .iter()
        .find(|s| s.name == server)
        .ok_or_else(|| format!("no [[server]] named `{server}` (tandem server add)"))?;
    let token_file = s
        .token_file
        .clone()
        .ok_or_else(|| format!("[[server]] `{server}` has no token_file"))?;
    let url = format!(
        "http://{}/api/v1/ha/authority/{}",
        s.address,
        crate::client::segment(device)
    );
    let agent = agent.clone();
    let work = move || -> Result<Option<Grant>, String> {
        let mut token = String::new();
        std::fs::File::open(&token_file)
            .and_then(|f| f.take(TOKEN_BYTES_MAX).read_to_string(&mut token))
            .map_err(|e| format!("token file {}: {e}", token_file.display()))?;
        let value = serde_json::to_value(&body).map_err(|e| e.to_string())?;
        let resp = agent
            .post(&url)
            .set("Authorization", &format!("Bearer {}", token.trim()))
            .send_json(value);
        let resp = match resp {
            Ok(r) => r,
            Err(ureq::Error::Status(code, r)) => {
                let mut text = String::new();
                let _ = r.into_reader().take(4096).read_to_string(&mut text);
                return Err(format!("{url}: HTTP {code}: {}", text.trim()));
            }
            Err(e) => return Err(format!("{url}: {e}")),
        };
        let mut bytes = Vec::new();
        resp.into_reader()
            .take(REPLY_BYTES_MAX)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("{url}: {e}"))?;
        let reply: AuthorityReply =
            serde_json::from_slice(&bytes).map_err(|e| format!("{url}: bad answer: {e}"))?;
        Ok(reply.update)
    };
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(format!("authority call: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::authority_host::AuthorityHost;
    use std::time::Duration;

    /// The instant a node is known to have held a lease is the later of the last exchange
    /// that found it serving and the end of the last lease granted to it; a lease granted
    /// after the last serving report (the authority node stopped during the next call)
    /// still counts (`ha_netns_faults`, SIGSTOP of the authority host).
    #[test]
    fn a_granted_lease_counts_as_held_until_it_ends() {
        assert_eq!(leased_when::<u64>(None, None), None);
        assert_eq!(leased_when(Some(10u64), None), Some(10));
        assert_eq!(leased_when(None, Some(30u64)), Some(30));
        assert_eq!(leased_when(Some(10u64), Some(30)), Some(30));
        assert_eq!(leased_when(Some(40u64), Some(30)), Some(40));
        // The rule as `leased_when_heard` applies it: served 400 ms before the last
        // heartbeat (more than half the margin), but leased for a second from then.
        let t0 = Instant::now();
        let half_margin = HaSettings::default().margin / 2;
        let last_heard = t0 + Duration::from_millis(400);
        assert!(t0 + half_margin < last_heard);
        let held = leased_when(Some(t0), Some(t0 + Duration::from_millis(1000))).unwrap();
        assert!(held + half_margin >= last_heard);
    }

    /// The node's lease (its clock, from its request) ends no later than the authority's
    /// record of it (the authority's clock, from its receipt), and the authority removes the
    /// node only a margin after that: for any delay between request and receipt.
    #[test]
    fn the_nodes_lease_ends_before_the_authority_can_remove_it() {
        let s = HaSettings::default();
        for delay_ms in [0u64, 1, 50, 100] {
            let dir = tempfile::tempdir().unwrap();
            let mut now = Instant::now();
            let mut h = AuthorityHost::open(
                dir.path(),
                "d",
                &[NodeId(1), NodeId(2)],
                Some(super::super::InitialSync::Zeroed),
                &s,
                now,
            )
            .unwrap();
            // Node 2 reports a lease request at its clock 7 s; the authority gets it later.
            let node_clock_at_request = 7_000_000_000u64;
            let delay = Duration::from_millis(delay_ms);
            now += delay;
            let received = now;
            let g = h
                .handle(received, NodeId(2), vec![ToAuthority::LeaseRequest], 0)
                .unwrap()
                .unwrap();
            let u = to_update(g, Some(node_clock_at_request)).unwrap();
            let lease = u.lease.unwrap();
            assert_eq!(lease.requested_at_ns, node_clock_at_request);
            assert_eq!(lease.epoch, u.config.epoch);
            // The node serves until (in its clock) request + duration, i.e. at most
            // `duration` after the request, so at most `duration` after the receipt.
            let node_lease = Duration::from_nanos(lease.duration_ns);
            assert!(node_lease <= s.lease);
            // The other node asks for a verdict at once; removal happens no earlier than
            // receipt + lease + margin.
            let v = ToAuthority::Verdict {
                suspect: NodeId(2),
                epoch: u.config.epoch,
            };
            h.handle(received, NodeId(1), vec![v], 0).unwrap();
            let mut removed_at = None;
            for _ in 0..40 {
                now += Duration::from_millis(100);
                h.tick(now).unwrap();
                if h.config().unwrap().state_of(NodeId(2)) == tandem_ha::MemberState::Out {
                    removed_at = Some(now);
                    break;
                }
            }
            let removed_at = removed_at.expect("removed eventually");
            assert!(
                removed_at.duration_since(received) >= node_lease + s.margin,
                "delay {delay_ms} ms: removed {:?} after the receipt, the node's lease is {:?}",
                removed_at.duration_since(received),
                node_lease
            );
        }
    }

    /// Three-node majority: an authority without a majority holds (no lease, no removal)
    /// and resumes once the hold is over; a takeover's quiet period is longer than the
    /// time the old authority can still count a vote plus its node's lease.
    #[test]
    fn a_held_authority_grants_no_lease_and_removes_nobody() {
        let s = HaSettings::default();
        let dir = tempfile::tempdir().unwrap();
        let mut now = Instant::now();
        let nodes = [NodeId(1), NodeId(2), NodeId(3)];
        let mut h = AuthorityHost::open(
            dir.path(),
            "d",
            &nodes,
            Some(super::super::InitialSync::Zeroed),
            &s,
            now,
        )
        .unwrap();
        let span = s.lease + s.margin;
        h.hold(now, span);
        let g = h
            .handle(now, NodeId(1), vec![ToAuthority::LeaseRequest], 0)
            .unwrap()
            .unwrap();
        assert_eq!(g.lease_duration_ns, None, "held: no lease");
        let v = ToAuthority::Verdict {
            suspect: NodeId(2),
            epoch: g.config.epoch,
        };
        h.handle(now, NodeId(1), vec![v], 0).unwrap();
        for _ in 0..15 {
            now += Duration::from_millis(100);
            h.tick(now).unwrap();
        }
        assert_eq!(
            h.config().unwrap().state_of(NodeId(2)),
            tandem_ha::MemberState::Synchronized,
            "held: nobody removed"
        );
        // In small steps: a jump would look like a paused process (another hold).
        for _ in 0..20 {
            now += Duration::from_millis(100);
            h.tick(now).unwrap();
        }
        let g = h
            .handle(now, NodeId(1), vec![ToAuthority::LeaseRequest], 0)
            .unwrap()
            .unwrap();
        assert!(
            g.lease_duration_ns.is_some(),
            "the hold is over: leases again"
        );
        assert!(
            takeover_quiet(&s)
                > s.remote_timeout + s.heartbeat_interval + vote_window(&s) + s.lease
        );
    }

    /// A device that becomes three-way: its authority accepts the new node once widened.
    #[test]
    fn a_widened_authority_accepts_the_third_node() {
        let s = HaSettings::default();
        let dir = tempfile::tempdir().unwrap();
        let now = Instant::now();
        let mut h = AuthorityHost::open(
            dir.path(),
            "d",
            &[NodeId(1), NodeId(2)],
            Some(super::super::InitialSync::Zeroed),
            &s,
            now,
        )
        .unwrap();
        assert!(h.handle(now, NodeId(3), vec![], 0).is_err());
        h.widen_nodes(&[NodeId(1), NodeId(2), NodeId(3)]).unwrap();
        assert!(h.handle(now, NodeId(3), vec![], 0).is_ok());
        assert_eq!(h.nodes(), &[NodeId(1), NodeId(2), NodeId(3)]);
    }

    #[test]
    fn no_report_no_update_and_no_lease_for_a_non_member() {
        let cfg = EpochConfig::initial(&[NodeId(1), NodeId(2)]);
        let g = Grant {
            config: cfg.clone(),
            lease_duration_ns: None,
            split_brain: Vec::new(),
        };
        assert_eq!(to_update(g.clone(), None), None);
        let u = to_update(g, Some(5)).unwrap();
        assert_eq!(u.lease, None);
        assert_eq!(u.config, cfg);
    }

    #[test]
    fn newest_configuration_wins() {
        let c1 = EpochConfig::initial(&[NodeId(1), NodeId(2)]);
        let c2 = c1
            .next(&[(NodeId(2), tandem_ha::MemberState::Out)])
            .unwrap();
        assert_eq!(newer(Some(c1.clone()), Some(&c2)), Some(c2.clone()));
        assert_eq!(newer(Some(c2.clone()), Some(&c1)), Some(c2.clone()));
        assert_eq!(newer(None, Some(&c1)), Some(c1.clone()));
        assert_eq!(newer(Some(c1.clone()), None), Some(c1));
    }
}
