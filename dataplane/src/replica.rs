//! Starting the replication of an HA device: its sync links to every partner and the
//! replication thread (`tandem-replica`).

use std::sync::Arc;

use tandem_bdev::Bdev;
use tandem_replica::{Partner, ReplicaHandle, ReplicaOptions, ReplicatedBdev};

use crate::server::ReplicationSpec;

/// Wraps `local` (this node's copy) in a [`ReplicatedBdev`] whose partners are reached over
/// the configured sync links.
pub fn start(
    device: &str,
    local: Arc<dyn Bdev>,
    spec: &ReplicationSpec,
) -> Result<(Arc<ReplicatedBdev>, ReplicaHandle), String> {
    let me = tandem_ha::NodeId(spec.node_id);
    let opts = ReplicaOptions::new(me, spec.meta_path.clone());
    let mut partners = Vec::new();
    for p in &spec.partners {
        let cfg = tandem_synclink::PeerConfig::new(
            me,
            tandem_ha::NodeId(p.node_id),
            p.name.clone(),
            p.sync_links.clone(),
            spec.cluster_id,
            spec.device_id,
            spec.secret.clone(),
            u64::from(opts.boot_id),
        );
        let links = tandem_synclink::PeerLinks::new(cfg)
            .map_err(|e| format!("sync links to partner {}: {e}", p.name))?;
        partners.push(Partner {
            name: p.name.clone(),
            node_id: tandem_ha::NodeId(p.node_id),
            transport: Box::new(links),
        });
    }
    tracing::info!(
        device,
        node = spec.node_id,
        partners = partners.len(),
        "replicated device: replication thread starting"
    );
    ReplicatedBdev::start(local, opts, partners).map_err(|e| e.to_string())
}
