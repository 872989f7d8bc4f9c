//! `tandem device resolve DEVICE --keep NODE`: the way out of a split brain.
//!
//! A split brain is recorded by the live failover authority (`split_brain` in its state)
//! when a node whose copy went on alone asks to join; nothing is merged (docs/ha.md). An
//! administrator then picks the copy that stays. This module, run on any node of the
//! device (it reaches the partner through its `[[server]]` entry and token, as
//! `replica add` does):
//! 1. asks both nodes for their facts (`POST .../resolve/local {step: facts}`): the
//!    authority each hosts (live or stood down, its split-brain record, its newest epoch)
//!    and the engine's status, whose per-partner dirty list is what the discarded side
//!    wrote while its partner was out;
//! 2. refuses when no split brain is recorded, or the node named is not one of the device's;
//! 3. lists the discarded side's changed regions (index, offset, length) and what would
//!    happen; without `yes` it stops there;
//! 4. discards on the other node (`discard` step): its authority, if live, stands down
//!    (persisted, no more leases), the engine is waited out until it serves nothing, the
//!    device is closed in the data plane, the listed regions are read from the image (at
//!    most [`SAVE_BYTES_MAX`], when asked), the replica metadata (`.ha-meta`) is deleted so
//!    that the copy starts with a *blank* generation (a plain full-sync target, never a
//!    split-brain side), and the device is opened again;
//! 5. keeps on the chosen node (`keep` step): its authority clears the split-brain record
//!    of the discarded node, or, if it had stood down, is reinstated at an epoch above
//!    every one either side issued, quiet for a lease plus margin so that every lease the
//!    other authority granted has ended before it grants one.
//!
//! The discarded node then joins as a full-sync target and both end `synchronized`. The
//! two sides never serve at once: the discarded side is waited out until it serves nothing
//! before its copy changes, and a reinstated authority grants nothing for a lease plus margin.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tandem_config::ipc::HaDeviceStatus;
use tandem_config::{Backing, DeviceConfig, NodeConfig};
use tandem_ha::{Epoch, NodeId};

use crate::error::ApiError;
use crate::replica::{device_size, not_replicated, Peer};
use crate::service::{no_device, Node};

/// The journal's region size (`Geometry::with_64k_regions`, the data plane's geometry).
pub const REGION_BYTES: u64 = 64 << 10;
/// Most bytes of discarded data returned for `--save-discarded` (64 regions): the answer
/// carries them hex-encoded and crosses up to two HTTP hops, each read with a 10 MB limit.
pub const SAVE_BYTES_MAX: u64 = 4 << 20;
/// How long the discarded side may keep serving after its authority stood down (its lease
/// runs out first; the rest is margin for a loaded machine).
const STOP_SERVING_WAIT: Duration = Duration::from_secs(10);

/// Body of `POST /api/v1/devices/{name}/resolve`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    /// The node whose copy stays: its name or its node id within the device.
    pub keep: String,
    /// Do it; without, only the list of discarded regions and the plan are returned.
    #[serde(default)]
    pub yes: bool,
    /// Return the data of the discarded regions too (at most [`SAVE_BYTES_MAX`]).
    #[serde(default)]
    pub save_data: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRef {
    pub name: String,
    pub node_id: u8,
}

/// One changed region of the discarded copy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionRow {
    pub index: u64,
    pub offset: u64,
    pub length: u64,
}

/// Data of one discarded region, read from the discarded copy before it was discarded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedRegion {
    pub index: u64,
    pub offset: u64,
    pub data_hex: String,
}

/// Answer of `POST /api/v1/devices/{name}/resolve`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolveReport {
    pub device: String,
    pub kept: NodeRef,
    pub discarded: NodeRef,
    /// Regions the discarded side wrote while the kept side was out (first ones).
    pub regions: Vec<RegionRow>,
    /// How many regions that side holds dirty in all (more than listed when the list was cut).
    pub regions_total: u64,
    /// The discarded side kept its dirty bitmap since the split (false after a restart of
    /// its data plane: then any region may differ).
    pub journal_complete: bool,
    pub region_bytes: u64,
    /// The data of the first listed regions (only with `save_data` and `yes`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data: Vec<SavedRegion>,
    pub data_bound_bytes: u64,
    /// Done (`yes`) or only shown.
    pub applied: bool,
    /// What happens (or happened), in order.
    pub plan: Vec<String>,
}

/// Body of `POST /api/v1/devices/{name}/resolve/local`: one node's part.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case", deny_unknown_fields)]
pub enum LocalStep {
    /// What this node knows (answer: [`LocalFacts`]).
    Facts,
    /// Discard this node's copy in favour of `kept` (answer: [`Discarded`]).
    Discard {
        kept: NodeRef,
        /// The newest epoch either side issued.
        epoch: u64,
        /// Regions whose data to return (bounded by [`SAVE_BYTES_MAX`]).
        #[serde(default)]
        save_regions: Vec<u64>,
    },
    /// Keep this node's copy; `discarded` rejoins as a full-sync target (answer: null).
    Keep {
        discarded: NodeRef,
        /// The newest epoch either side issued.
        epoch: u64,
    },
}

/// The failover authority a node hosts for the device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorityFacts {
    /// Not stood down (superseded): it answers and grants leases.
    pub live: bool,
    pub last_epoch: u64,
    /// Nodes it refused because their copy went on alone.
    pub split_brain: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalFacts {
    pub node: NodeRef,
    pub authority: Option<AuthorityFacts>,
    pub status: Option<HaDeviceStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discarded {
    #[serde(default)]
    pub data: Vec<SavedRegion>,
}

/// Recorded on both nodes after a resolve (`DATA_DIR/ha/<device>.resolved.json`), shown
/// by `replica list` / `device show` as the reason for the discarded side's full sync.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolutionNote {
    pub kept: NodeRef,
    pub discarded: NodeRef,
    pub at_unix_secs: u64,
}

impl ResolutionNote {
    pub fn text(&self) -> String {
        format!(
            "split brain resolved, kept node {} ({}); the copy on {} was discarded and fully resynchronized from it",
            self.kept.name, self.kept.node_id, self.discarded.name
        )
    }
}

fn note_path(node: &Node, device: &str) -> PathBuf {
    crate::ha::ha_dir(&node.data_dir).join(format!("{device}.resolved.json"))
}

/// The resolution recorded here for `device`, if any.
pub fn resolution_note(node: &Node, device: &str) -> Option<ResolutionNote> {
    let bytes = std::fs::read(note_path(node, device)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn write_note(node: &Node, device: &str, note: &ResolutionNote) -> Result<(), ApiError> {
    let path = note_path(node, device);
    let text = serde_json::to_vec_pretty(note).map_err(|e| ApiError::internal(e.to_string()))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ApiError::internal(e.to_string()))?;
    }
    tandem_config::save_atomic(&path, &text)
        .map_err(|e| ApiError::internal(format!("{}: {e}", path.display())))
}

// ---- pure decisions ------------------------------------------------------------------------

/// The node `keep` names among `nodes` (by name, or by node id).
pub fn pick_kept<'a>(nodes: &'a [NodeRef], keep: &str) -> Option<&'a NodeRef> {
    nodes
        .iter()
        .find(|n| n.name == keep)
        .or_else(|| nodes.iter().find(|n| n.node_id.to_string() == keep))
}

/// Whether a live authority of either side records a split brain between the two nodes;
/// the reason why not otherwise.
pub fn check_split_brain(kept: &LocalFacts, discarded: &LocalFacts) -> Result<(), String> {
    let ids = [kept.node.node_id, discarded.node.node_id];
    let recorded = [kept, discarded].iter().any(|f| {
        f.authority
            .as_ref()
            .is_some_and(|a| a.live && a.split_brain.iter().any(|n| ids.contains(n)))
    });
    if recorded {
        Ok(())
    } else {
        Err("no split brain is recorded for this device (the failover authority refused no node's join); \
             `tandem replica list` shows the replicas' states, and a copy that only fell behind resynchronizes by itself"
            .into())
    }
}

/// The newest epoch either side's authority issued.
pub fn epoch_floor(facts: &[&LocalFacts]) -> u64 {
    facts
        .iter()
        .filter_map(|f| f.authority.as_ref().map(|a| a.last_epoch))
        .chain(facts.iter().filter_map(|f| {
            f.status
                .as_ref()
                .and_then(|s| s.config.as_ref())
                .map(|c| c.epoch.0)
        }))
        .max()
        .unwrap_or(0)
}

/// The discarded side's changed regions: its dirty list for the kept node, as rows with
/// byte offsets and lengths (the last region may be short). Returns (rows, total, complete).
pub fn discarded_regions(
    discarded: &LocalFacts,
    kept: u8,
    device_bytes: u64,
) -> (Vec<RegionRow>, u64, bool) {
    let Some(p) = discarded
        .status
        .as_ref()
        .and_then(|s| s.partners.iter().find(|p| p.node_id == kept))
    else {
        return (Vec::new(), 0, false);
    };
    let rows = p
        .dirty_list
        .iter()
        .map(|&index| {
            let offset = index.saturating_mul(REGION_BYTES);
            RegionRow {
                index,
                offset,
                length: REGION_BYTES.min(device_bytes.saturating_sub(offset)),
            }
        })
        .collect();
    (rows, p.dirty_regions, p.dirty_complete)
}

/// The regions whose data fits in [`SAVE_BYTES_MAX`], in order.
pub fn regions_to_save(rows: &[RegionRow]) -> Vec<u64> {
    let mut total = 0u64;
    rows.iter()
        .take_while(|r| {
            total += r.length;
            total <= SAVE_BYTES_MAX
        })
        .map(|r| r.index)
        .collect()
}

fn plan_lines(kept: &NodeRef, discarded: &NodeRef, save: bool) -> Vec<String> {
    let mut plan = vec![format!(
        "on {}: its failover authority (if it serves) stands down, and its copy is waited out until it serves nothing",
        discarded.name
    )];
    if save {
        plan.push(format!(
            "on {}: the listed regions are read from its copy (at most {} MiB)",
            discarded.name,
            SAVE_BYTES_MAX >> 20
        ));
    }
    plan.push(format!(
        "on {}: the device is closed, its replica metadata is deleted (a blank generation), and it is opened again",
        discarded.name
    ));
    plan.push(format!(
        "on {}: its authority forgets the split brain (or is reinstated at a newer epoch); its copy stays",
        kept.name
    ));
    plan.push(format!(
        "{} joins as a full-sync target: every region is copied from {}; its writes since the split are lost",
        discarded.name, kept.name
    ));
    plan
}

// ---- orchestration (the node the administrator asked) ---------------------------------------

enum Side {
    Local,
    Remote(Peer),
}

async fn call_step<T: serde::de::DeserializeOwned>(
    node: &Arc<Node>,
    side: &Side,
    device: &str,
    step: LocalStep,
) -> Result<T, ApiError> {
    match side {
        Side::Local => {
            let v = local_step(node, device, step).await?;
            serde_json::from_value(v).map_err(|e| ApiError::internal(e.to_string()))
        }
        Side::Remote(peer) => {
            let body =
                serde_json::to_value(&step).map_err(|e| ApiError::internal(e.to_string()))?;
            let peer = peer.clone().with_timeout(Duration::from_secs(60));
            let path = format!(
                "/api/v1/devices/{}/resolve/local",
                crate::client::segment(device)
            );
            peer.request::<T>("POST", &path, Some(body))
                .await
                .map(|(_, t)| t)
        }
    }
}

/// `POST /api/v1/devices/{name}/resolve`.
pub async fn resolve(
    node: &Arc<Node>,
    device: &str,
    req: ResolveRequest,
) -> Result<ResolveReport, ApiError> {
    let config = node.config().await;
    let d = config.device(device).ok_or_else(|| no_device(device))?;
    let r = d
        .replication
        .clone()
        .ok_or_else(|| not_replicated(device))?;
    let me = NodeRef {
        name: config.node.name.clone(),
        node_id: r.node_id,
    };
    let mut nodes = vec![me.clone()];
    nodes.extend(r.partners.iter().map(|p| NodeRef {
        name: p.name.clone(),
        node_id: p.node_id,
    }));
    let kept = pick_kept(&nodes, &req.keep).cloned().ok_or_else(|| {
        ApiError::not_found(format!(
            "`{}` is not a node of `{device}` (its nodes: {})",
            req.keep,
            nodes
                .iter()
                .map(|n| format!("{} (id {})", n.name, n.node_id))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    if nodes.len() != 2 {
        return Err(ApiError::conflict(format!(
            "`{device}` has {} replicas; resolve handles two-node devices only",
            nodes.len()
        )));
    }
    let discarded = nodes
        .iter()
        .find(|n| n.node_id != kept.node_id)
        .cloned()
        .ok_or_else(|| ApiError::internal("no other node"))?;
    let side = |n: &NodeRef| -> Result<Side, ApiError> {
        if n.node_id == me.node_id {
            return Ok(Side::Local);
        }
        let server = config
            .servers
            .iter()
            .find(|s| s.name == n.name)
            .ok_or_else(|| {
                ApiError::conflict(format!(
                    "`{}` is not a known server here; `tandem server add {} ADDR:PORT --token-file FILE`",
                    n.name, n.name
                ))
            })?;
        Peer::for_server(server).map(Side::Remote)
    };
    let (kept_side, discarded_side) = (side(&kept)?, side(&discarded)?);
    let kept_facts: LocalFacts = call_step(node, &kept_side, device, LocalStep::Facts).await?;
    let discarded_facts: LocalFacts =
        call_step(node, &discarded_side, device, LocalStep::Facts).await?;
    check_split_brain(&kept_facts, &discarded_facts).map_err(ApiError::conflict)?;
    let (regions, regions_total, journal_complete) =
        discarded_regions(&discarded_facts, kept.node_id, device_size(d));
    let epoch = epoch_floor(&[&kept_facts, &discarded_facts]);
    let mut report = ResolveReport {
        device: device.to_string(),
        kept: kept.clone(),
        discarded: discarded.clone(),
        regions_total,
        journal_complete,
        region_bytes: REGION_BYTES,
        data: Vec::new(),
        data_bound_bytes: SAVE_BYTES_MAX,
        applied: false,
        plan: plan_lines(&kept, &discarded, req.save_data),
        regions,
    };
    if !req.yes {
        return Ok(report);
    }
    tracing::warn!(device, kept = %kept.name, discarded = %discarded.name, regions_total,
        "resolving a split brain: the discarded copy's writes since the split are dropped");
    let save_regions = if req.save_data {
        regions_to_save(&report.regions)
    } else {
        Vec::new()
    };
    let done: Discarded = call_step(
        node,
        &discarded_side,
        device,
        LocalStep::Discard {
            kept: kept.clone(),
            epoch,
            save_regions,
        },
    )
    .await?;
    report.data = done.data;
    let _: Value = call_step(
        node,
        &kept_side,
        device,
        LocalStep::Keep {
            discarded: discarded.clone(),
            epoch,
        },
    )
    .await?;
    report.applied = true;
    Ok(report)
}

// ---- one node's part -----------------------------------------------------------------------

/// `POST /api/v1/devices/{name}/resolve/local`.
pub async fn local_step(
    node: &Arc<Node>,
    device: &str,
    step: LocalStep,
) -> Result<Value, ApiError> {
    let config = node.config().await;
    let d = config.device(device).ok_or_else(|| no_device(device))?;
    let r = d
        .replication
        .clone()
        .ok_or_else(|| not_replicated(device))?;
    let me = NodeRef {
        name: config.node.name.clone(),
        node_id: r.node_id,
    };
    match step {
        LocalStep::Facts => {
            let authority = authority_facts(node, device);
            let status = crate::ha::ha_status(node, device);
            to_json(&LocalFacts {
                node: me,
                authority,
                status,
            })
        }
        LocalStep::Discard {
            kept,
            epoch,
            save_regions,
        } => {
            if kept.node_id == me.node_id {
                return Err(ApiError::bad_request("this node is the one kept"));
            }
            stand_down(node, device, NodeId(kept.node_id), Epoch(epoch))?;
            wait_not_serving(node, device).await?;
            let note = ResolutionNote {
                kept,
                discarded: me,
                at_unix_secs: unix_now(),
            };
            let data = node
                .reopen_device(device, |cfg| {
                    discard_closed(cfg, device, &save_regions).map_err(ApiError::internal)
                })
                .await?;
            write_note(node, device, &note)?;
            to_json(&Discarded { data })
        }
        LocalStep::Keep { discarded, epoch } => {
            if discarded.node_id == me.node_id {
                return Err(ApiError::bad_request("this node is the one discarded"));
            }
            let mut hosts = node.ha.hosts.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(h) = hosts.get_mut(device) {
                h.keep_after_split_brain(
                    NodeId(me.node_id),
                    NodeId(discarded.node_id),
                    Epoch(epoch),
                    Instant::now(),
                )
                .map_err(|e| ApiError::internal(e.to_string()))?;
            }
            drop(hosts);
            write_note(
                node,
                device,
                &ResolutionNote {
                    kept: me,
                    discarded,
                    at_unix_secs: unix_now(),
                },
            )?;
            Ok(Value::Null)
        }
    }
}

fn to_json<T: Serialize>(v: &T) -> Result<Value, ApiError> {
    serde_json::to_value(v).map_err(|e| ApiError::internal(e.to_string()))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn authority_facts(node: &Node, device: &str) -> Option<AuthorityFacts> {
    let hosts = node.ha.hosts.lock().unwrap_or_else(|e| e.into_inner());
    let p = hosts.get(device)?.persisted();
    Some(AuthorityFacts {
        live: p.superseded_by.is_none(),
        last_epoch: p.last_epoch.0,
        split_brain: p.split_brain.iter().map(|(n, _)| n.0).collect(),
    })
}

fn stand_down(node: &Node, device: &str, kept: NodeId, epoch: Epoch) -> Result<(), ApiError> {
    let mut hosts = node.ha.hosts.lock().unwrap_or_else(|e| e.into_inner());
    match hosts.get_mut(device) {
        Some(h) => h
            .stand_down_for_resolve(kept, epoch)
            .map_err(|e| ApiError::internal(e.to_string())),
        None => Ok(()),
    }
}

/// Waits until this node's engine serves nothing (its lease lapsed), so that the two sides
/// never serve at once and the copy does not change under the discard.
async fn wait_not_serving(node: &Node, device: &str) -> Result<(), ApiError> {
    let until = Instant::now() + STOP_SERVING_WAIT;
    loop {
        let serving = crate::ha::ha_status(node, device).is_some_and(|s| s.serving);
        if !serving || !node.dataplane_enabled {
            return Ok(());
        }
        if Instant::now() >= until {
            return Err(ApiError::conflict(format!(
                "`{device}` still serves on this node {} s after its authority stood down; nothing was discarded",
                STOP_SERVING_WAIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The replica metadata file of `d` (as the data plane places it: in the node's data dir,
/// else beside the image).
pub fn meta_path(cfg: &NodeConfig, d: &DeviceConfig) -> Option<PathBuf> {
    match (&cfg.node.data_dir, d.backing()) {
        (Some(dir), _) => Some(dir.join(format!("{}.ha-meta", d.name))),
        (None, Backing::File { path, .. }) => {
            let mut name = path.file_name().unwrap_or_default().to_os_string();
            name.push(".ha-meta");
            Some(path.with_file_name(name))
        }
        (None, Backing::Ram { .. }) => None,
    }
}

/// While the device is closed in the data plane: reads the regions to save from the image,
/// then deletes the replica metadata (the copy restarts with a blank generation).
fn discard_closed(
    cfg: &NodeConfig,
    device: &str,
    save_regions: &[u64],
) -> Result<Vec<SavedRegion>, String> {
    let d = cfg.device(device).ok_or("the device went away")?;
    let mut data = Vec::new();
    if !save_regions.is_empty() {
        if let Backing::File { path, .. } = d.backing() {
            let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let len = f.metadata().map_err(|e| e.to_string())?.len();
            let mut budget = SAVE_BYTES_MAX;
            for &index in save_regions {
                let offset = index.saturating_mul(REGION_BYTES);
                let n = REGION_BYTES.min(len.saturating_sub(offset)).min(budget);
                if n == 0 {
                    break;
                }
                let mut buf = vec![0u8; n as usize];
                f.read_exact_at(&mut buf, offset)
                    .map_err(|e| format!("{} at {offset}: {e}", path.display()))?;
                budget -= n;
                data.push(SavedRegion {
                    index,
                    offset,
                    data_hex: hex::encode(&buf),
                });
            }
        }
    }
    if let Some(meta) = meta_path(cfg, d) {
        match std::fs::remove_file(&meta) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", meta.display())),
        }
    }
    tracing::warn!(
        device,
        "split brain resolve: this copy's replica metadata was deleted; it rejoins as a full-sync target"
    );
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_config::ipc::HaPartnerStatus;

    fn n(name: &str, id: u8) -> NodeRef {
        NodeRef {
            name: name.into(),
            node_id: id,
        }
    }

    fn facts(id: u8, authority: Option<AuthorityFacts>) -> LocalFacts {
        LocalFacts {
            node: n(if id == 1 { "a" } else { "b" }, id),
            authority,
            status: None,
        }
    }

    fn auth(live: bool, epoch: u64, split: &[u8]) -> Option<AuthorityFacts> {
        Some(AuthorityFacts {
            live,
            last_epoch: epoch,
            split_brain: split.to_vec(),
        })
    }

    #[test]
    fn keep_names_a_node_by_name_or_id() {
        let nodes = [n("a", 1), n("b", 2)];
        assert_eq!(pick_kept(&nodes, "b").unwrap().node_id, 2);
        assert_eq!(pick_kept(&nodes, "1").unwrap().name, "a");
        assert!(pick_kept(&nodes, "c").is_none());
        assert!(pick_kept(&nodes, "3").is_none());
    }

    #[test]
    fn resolve_needs_a_split_brain_recorded_by_a_live_authority() {
        let a = facts(1, auth(true, 2, &[2]));
        let b = facts(2, auth(false, 2, &[]));
        assert!(check_split_brain(&a, &b).is_ok());
        assert!(check_split_brain(&b, &a).is_ok(), "whichever side is kept");
        let quiet = facts(1, auth(true, 2, &[]));
        assert!(check_split_brain(&quiet, &b)
            .unwrap_err()
            .contains("no split brain"));
        // A record on an authority that stood down does not count.
        let stood_down = facts(1, auth(false, 2, &[2]));
        assert!(check_split_brain(&stood_down, &b).is_err());
        assert!(check_split_brain(&facts(1, None), &facts(2, None)).is_err());
        assert_eq!(epoch_floor(&[&a, &facts(2, auth(false, 5, &[]))]), 5);
    }

    #[test]
    fn discarded_regions_have_offsets_lengths_and_a_bound() {
        let mut b = facts(2, None);
        b.status = Some(HaDeviceStatus {
            node_id: 2,
            config: None,
            serving: false,
            meta: Default::default(),
            partners: vec![HaPartnerStatus {
                name: "a".into(),
                node_id: 1,
                links: vec![],
                dirty_regions: 3,
                resync_done_regions: 0,
                resync_total_regions: 0,
                bytes_mirrored: 0,
                dirty_list: vec![0, 5, 15],
                dirty_complete: true,
                size_refused: None,
            }],
        });
        // A device of 15.5 regions: the last one is short.
        let size = 15 * REGION_BYTES + REGION_BYTES / 2;
        let (rows, total, complete) = discarded_regions(&b, 1, size);
        assert_eq!(total, 3);
        assert!(complete);
        assert_eq!(
            rows,
            vec![
                RegionRow {
                    index: 0,
                    offset: 0,
                    length: REGION_BYTES
                },
                RegionRow {
                    index: 5,
                    offset: 5 * REGION_BYTES,
                    length: REGION_BYTES
                },
                RegionRow {
                    index: 15,
                    offset: 15 * REGION_BYTES,
                    length: REGION_BYTES / 2
                },
            ]
        );
        assert_eq!(discarded_regions(&b, 3, size).1, 0, "no such partner");
        let many: Vec<RegionRow> = (0..100)
            .map(|i| RegionRow {
                index: i,
                offset: i * REGION_BYTES,
                length: REGION_BYTES,
            })
            .collect();
        assert_eq!(
            regions_to_save(&many).len() as u64,
            SAVE_BYTES_MAX / REGION_BYTES
        );
    }

    #[test]
    fn discard_reads_the_regions_then_deletes_the_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("d.img");
        let mut bytes = vec![0u8; 4 * REGION_BYTES as usize];
        bytes[REGION_BYTES as usize * 2] = 0xab;
        std::fs::write(&img, &bytes).unwrap();
        let meta = dir.path().join("d.img.ha-meta");
        std::fs::write(&meta, b"{}").unwrap();
        let text = format!(
            "[node]\nname = \"a\"\nportals = [\"127.0.0.1:3260\"]\n\n[[device]]\nname = \"d\"\nfile = \"{}\"\n",
            img.display()
        );
        let cfg: NodeConfig = toml_cfg(&text);
        let data = discard_closed(&cfg, "d", &[2]).unwrap();
        assert_eq!(data.len(), 1);
        assert_eq!(data[0].offset, 2 * REGION_BYTES);
        assert!(data[0].data_hex.starts_with("ab00"));
        assert!(!meta.exists(), "the copy restarts blank");
        // Nothing to delete a second time is fine.
        assert!(discard_closed(&cfg, "d", &[]).unwrap().is_empty());
    }

    fn toml_cfg(text: &str) -> NodeConfig {
        tandem_config::NodeConfig::from_toml_str(text, "test").unwrap()
    }
}
