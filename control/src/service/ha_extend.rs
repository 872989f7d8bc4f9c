//! Online extend of a replicated (HA) device: every node's copy grows before any node
//! reports the new size (docs/ha.md, "Extend of an HA device").
//!
//! Two phases, run by the node that received `tandem device extend`:
//! 1. **Grow** on every node (this one, then each partner through its API): the image file
//!    grows (with the intent recorded, so a restart before phase 2 rolls it back), then the
//!    replication engine grows its geometry (`GrowReplica`; refused unless every replica is
//!    synchronized). The LU keeps the old size, so no host command reaches the new blocks
//!    while some engine still has the old geometry, where a mirrored write beyond its end
//!    would be dropped.
//! 2. **Report** on every node: node.toml gets the new size and the LU grows, raising
//!    CAPACITY DATA HAS CHANGED (2A/09) on its nexuses.
//!
//! A node that cannot grow in phase 1 fails the extend before any node reports the new size.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use tandem_config::image_id;
use tandem_config::ipc::Request;
use tandem_config::{Backing, Size};

use super::{no_device, Node};
use crate::api_types::{Applied, DeviceExtend, ExtendPhase};
use crate::error::ApiError;
use crate::image;
use crate::replica::Peer;

/// A partner's phase 1 grows its image (thick allocation): allow for a slow disk.
const PARTNER_GROW_TIMEOUT: Duration = Duration::from_secs(600);

/// The whole extend of replicated `name` to `new_size` bytes, across every node.
pub async fn extend_replicated(
    node: &Arc<Node>,
    name: &str,
    new_size: u64,
) -> Result<Applied, ApiError> {
    let config = node.config().await;
    let d = config.device(name).ok_or_else(|| no_device(name))?;
    let repl = d
        .replication
        .as_ref()
        .ok_or_else(|| crate::replica::not_replicated(name))?;
    let mut partners = Vec::new();
    for p in &repl.partners {
        let server = config
            .servers
            .iter()
            .find(|s| s.name == p.name)
            .ok_or_else(|| {
                ApiError::conflict(format!(
                    "partner `{}` of `{name}` is not a known server here, so its copy cannot be grown; `tandem server add {} ADDR:PORT --token-file FILE` first",
                    p.name, p.name
                ))
            })?;
        partners.push(Peer::for_server(server)?.with_timeout(PARTNER_GROW_TIMEOUT));
    }
    // Phase 1: every copy and every engine grows; nothing reports the new size yet.
    node.grow_replica_copy(name, new_size).await?;
    for p in &partners {
        partner_phase(p, name, new_size, ExtendPhase::Grow)
            .await
            .map_err(|e| {
                ApiError::new(
                    e.status,
                    "partner_cannot_grow",
                    format!(
                        "extend of `{name}` failed: partner `{}` could not grow its copy ({}); no node reports the new size (the copies already grown keep unused blocks until an extend succeeds or they restart)",
                        p.name, e.message
                    ),
                )
            })?;
    }
    // Phase 2: every node reports the new size (unit attention on its nexuses).
    let applied = node.report_replica_size(name, new_size).await?;
    for p in &partners {
        partner_phase(p, name, new_size, ExtendPhase::Report)
            .await
            .map_err(|e| {
                ApiError::new(
                    e.status,
                    "partner_not_reported",
                    format!(
                        "extend of `{name}`: every copy grew and this node reports the new size, but partner `{}` did not ({}); run the extend again to finish it",
                        p.name, e.message
                    ),
                )
            })?;
    }
    Ok(applied)
}

async fn partner_phase(
    peer: &Peer,
    name: &str,
    new_size: u64,
    phase: ExtendPhase,
) -> Result<(), ApiError> {
    let body = serde_json::to_value(DeviceExtend {
        size: Size(new_size),
        phase: Some(phase),
    })
    .map_err(|e| ApiError::internal(e.to_string()))?;
    peer.call(
        "POST",
        &format!("/api/v1/devices/{}/extend", crate::client::segment(name)),
        Some(body),
    )
    .await
    .map(|_| ())
    .map_err(|e| peer.error(e))
}

impl Node {
    /// Phase 1 on this node: grows the image (intent recorded first) and the replication
    /// engine. Again with the same size after it succeeded: only the engine step runs (a
    /// no-op there too).
    pub async fn grow_replica_copy(&self, name: &str, new_size: u64) -> Result<(), ApiError> {
        let st = self.state.lock().await;
        let d = st.config.device(name).ok_or_else(|| no_device(name))?;
        if d.replication.is_none() {
            return Err(crate::replica::not_replicated(name));
        }
        if d.read_only {
            return Err(ApiError::conflict(format!(
                "device `{name}` is read-only and cannot be extended"
            )));
        }
        if new_size % u64::from(d.block_size) != 0 {
            return Err(ApiError::bad_request(format!(
                "new size {new_size} is not a multiple of the block size {}",
                d.block_size
            )));
        }
        let current = crate::replica::device_size(d);
        // The same size: this node reported it already (an extend run again after a partner
        // failed phase 2); only the engine step runs, a no-op.
        if new_size < current {
            return Err(ApiError::bad_request(format!(
                "new size {} is smaller than the current {} (devices only grow)",
                tandem_config::format_size(new_size),
                tandem_config::format_size(current)
            )));
        }
        match d.backing() {
            _ if new_size == current => {}
            Backing::Ram { .. } => {
                return Err(ApiError::conflict(format!(
                    "device `{name}` is a replicated RAM disk; extend of a replicated device needs image files or block devices"
                )))
            }
            Backing::File { path, .. } if !d.block_device => {
                let path = path.to_path_buf();
                let len = std::fs::metadata(&path).map_or(0, |m| m.len());
                if len != new_size {
                    // Only an image that is verifiably this device's may be grown.
                    let seed = d.effective_identity_seed(&st.config.node.name);
                    image_id::verify(
                        &path,
                        &image_id::Expected {
                            device: name,
                            identity_seed: &seed,
                            block_size: d.block_size,
                            size_bytes: d.size.map(Size::bytes),
                        },
                    )
                    .map_err(|e| {
                        ApiError::conflict(format!("device `{name}` cannot be extended: {e}"))
                    })?;
                    let p = path.clone();
                    tokio::task::spawn_blocking(move || grow_image(&p, new_size))
                        .await
                        .map_err(|e| ApiError::internal(e.to_string()))?
                        .map_err(|e| {
                            ApiError::internal(format!(
                                "growing the image of `{name}`: {e}; the device keeps its size"
                            ))
                        })?;
                }
            }
            // A block device: its size is the admin's; the data plane checks it.
            Backing::File { .. } => {}
        }
        drop(st);
        self.dataplane_call(Request::GrowReplica {
            name: name.to_string(),
            new_size_bytes: new_size,
        })
        .await
    }

    /// Phase 2 on this node: node.toml gets the new size and the LU reports it (CAPACITY
    /// DATA HAS CHANGED on its nexuses); the image's record drops its intent. Unchanged when
    /// the config has that size already.
    pub async fn report_replica_size(
        &self,
        name: &str,
        new_size: u64,
    ) -> Result<Applied, ApiError> {
        let mut st = self.state.lock().await;
        let mut new = st.config.clone();
        let d = new.device_mut(name).ok_or_else(|| no_device(name))?;
        if d.replication.is_none() {
            return Err(crate::replica::not_replicated(name));
        }
        if d.size == Some(Size(new_size)) {
            return Ok(Applied::Unchanged);
        }
        let image = (!d.block_device).then(|| d.file.clone()).flatten();
        d.size = Some(Size(new_size));
        let applied = self.commit(&mut st, new).await?;
        if let Some(path) = image {
            let written = tokio::task::spawn_blocking(move || finish_record(&path)).await;
            if !matches!(written, Ok(Ok(()))) {
                // The config is committed: the next start completes the record.
                tracing::warn!(device = %name, "could not clear the extend intent; the next start completes it");
            }
        }
        Ok(applied)
    }

    /// Sends one request to the data plane (503 when it is not connected).
    async fn dataplane_call(&self, request: Request) -> Result<(), ApiError> {
        let mut ipc = self.ipc.lock().await;
        let Some(client) = ipc.as_mut() else {
            return Err(ApiError::unavailable(self.not_connected_message()));
        };
        client
            .call_ok(request)
            .await
            .map(|_| ())
            .map_err(ApiError::dataplane)
    }
}

/// Records the intent to grow `path` to `new_size` in its identity record (kept: its
/// identity and generations), then grows the file. A restart before the config has the new
/// size cuts the tail off again (`image_id::verify`).
fn grow_image(path: &std::path::Path, new_size: u64) -> std::io::Result<()> {
    let mut record = read_record(path)?;
    record.pending_size_blocks = new_size / u64::from(record.block_size.max(1));
    image_id::write(path, &record)?;
    image::grow_thick(path, new_size, &AtomicU64::new(0))
}

/// The config has the new size: the record takes it as its size.
fn finish_record(path: &std::path::Path) -> std::io::Result<()> {
    let mut record = read_record(path)?;
    if record.pending_size_blocks != 0 {
        record.size_blocks = record.pending_size_blocks;
        record.pending_size_blocks = 0;
        image_id::write(path, &record)?;
    }
    Ok(())
}

fn read_record(path: &std::path::Path) -> std::io::Result<image_id::ImageRecord> {
    match image_id::read(path)? {
        Some(Ok(record)) => Ok(record),
        Some(Err(e)) => Err(std::io::Error::other(format!("identity record: {e}"))),
        None => Err(std::io::Error::other("the image has no identity record")),
    }
}
