//! Starting the replication of an HA device: its sync links to every partner and the
//! replication thread (`tandem-replica`).

use std::sync::Arc;

use tandem_bdev::Bdev;
use tandem_ha::MemberState;
use tandem_replica::{Partner, ReplicaHandle, ReplicaOptions, ReplicaState, ReplicatedBdev};
use tandem_scsi::{AluaState, LogicalUnit, PortGroup};

use crate::server::ReplicationSpec;

/// The ALUA view of a replicated device: one target port group per node (its id in the
/// device's cluster, also its relative port id). This node's group is active/optimized while
/// its replica serves; a partner's while the configuration has it synchronized; otherwise
/// unavailable (NOT READY 04/0C, so multipath uses another node).
pub fn alua_groups(me: u8, nodes: &[u8], s: &ReplicaState) -> (AluaState, Vec<PortGroup>) {
    let mine = if s.serving {
        AluaState::ActiveOptimized
    } else {
        AluaState::Unavailable
    };
    let mut ids = nodes.to_vec();
    ids.push(me);
    ids.sort_unstable();
    ids.dedup();
    let groups = ids
        .iter()
        .map(|&n| PortGroup {
            tpg_id: u16::from(n),
            state: if n == me {
                mine
            } else if s
                .config
                .as_ref()
                .is_some_and(|c| c.state_of(tandem_ha::NodeId(n)) == MemberState::Synchronized)
            {
                AluaState::ActiveOptimized
            } else {
                AluaState::Unavailable
            },
            relative_port_ids: vec![u16::from(n)],
        })
        .collect();
    (mine, groups)
}

/// Wraps `local` (this node's copy) in a [`ReplicatedBdev`] whose partners are reached over
/// the configured sync links; `lu`'s ALUA states follow the replica.
pub fn start(
    device: &str,
    local: Arc<dyn Bdev>,
    spec: &ReplicationSpec,
    lu: Arc<LogicalUnit>,
) -> Result<(Arc<ReplicatedBdev>, ReplicaHandle), String> {
    let me = tandem_ha::NodeId(spec.node_id);
    let mut opts = ReplicaOptions::new(me, spec.meta_path.clone());
    opts.engine.resync_pacing = (spec.resync_latency_target_ms > 0)
        .then(|| tandem_ha::PacingConfig::with_target_ms(spec.resync_latency_target_ms));
    opts.engine.journal = spec.journal;
    opts.journal_dir = spec.journal_dir.clone();
    let partner_ids: Vec<u8> = spec.partners.iter().map(|p| p.node_id).collect();
    let initial = ReplicaState {
        serving: false,
        config: None,
    };
    let (state, groups) = alua_groups(spec.node_id, &partner_ids, &initial);
    lu.set_alua_state(state);
    lu.set_port_groups(groups);
    let node_id = spec.node_id;
    let name = device.to_string();
    // A LOGICAL UNIT RESET or CLEAR TASK SET received by a partner node applies here too,
    // before the partner answers its host.
    let reset_lu = Arc::clone(&lu);
    opts.on_task_mgmt = Some(Box::new(move |f: tandem_bdev::TaskMgmt| match f {
        tandem_bdev::TaskMgmt::LunReset => reset_lu.partner_lun_reset(),
        tandem_bdev::TaskMgmt::ClearTaskSet => reset_lu.partner_clear_task_set(),
    }));
    // Reservation changes (this node's and the partners') become this LU's state, saved
    // with APTPL, before the change is acknowledged; the state loaded at start is what
    // this node pushes if it sequences before another state reaches it.
    lu.set_cluster_reservations(true);
    opts.pr_state = lu.pr_state_blob();
    let pr_lu = Arc::clone(&lu);
    opts.on_pr_apply = Some(Box::new(move |a: tandem_replica::PrApply| {
        pr_lu.apply_cluster_pr((a.version.epoch, a.version.n), &a.state, &a.notice);
    }));
    opts.on_state = Some(Box::new(move |s: &ReplicaState| {
        let (state, groups) = alua_groups(node_id, &partner_ids, s);
        tracing::info!(device = %name, serving = s.serving, epoch = ?s.config.as_ref().map(|c| c.epoch.0), ?state, "replica state");
        lu.set_alua_state(state);
        lu.set_port_groups(groups);
    }));
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

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_ha::{EpochConfig, NodeId};

    #[test]
    fn one_port_group_per_node_following_the_configuration() {
        let cfg = EpochConfig::initial(&[NodeId(1), NodeId(2)]);
        let s = ReplicaState {
            serving: true,
            config: Some(cfg.clone()),
        };
        let (mine, g) = alua_groups(2, &[1], &s);
        assert_eq!(mine, AluaState::ActiveOptimized);
        let states: Vec<_> = g
            .iter()
            .map(|g| (g.tpg_id, g.state, g.relative_port_ids.clone()))
            .collect();
        assert_eq!(
            states,
            vec![
                (1, AluaState::ActiveOptimized, vec![1]),
                (2, AluaState::ActiveOptimized, vec![2])
            ]
        );
        // Node 1 out; this node's lease ran out: both unavailable.
        let out = cfg.next(&[(NodeId(1), MemberState::Out)]).unwrap();
        let s = ReplicaState {
            serving: false,
            config: Some(out),
        };
        let (mine, g) = alua_groups(2, &[1], &s);
        assert_eq!(mine, AluaState::Unavailable);
        assert!(g.iter().all(|g| g.state == AluaState::Unavailable));
        // Before any configuration.
        let (_, g) = alua_groups(
            1,
            &[2, 3],
            &ReplicaState {
                serving: false,
                config: None,
            },
        );
        assert_eq!(
            g.iter().map(|g| g.tpg_id).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
    }
}
