//! The node's exported targets and devices as the data plane sees them: who may log in to
//! what, which LUNs a target has, and which portals advertise it.

use parking_lot::RwLock;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tandem_bdev::Bdev;
use tandem_iscsi::discovery::TargetListing;
use tandem_iscsi::login::{AuthPolicy, TargetDirectory, TargetLimits, TargetPolicy};
use tandem_scsi::LogicalUnit;

/// The node's ALUA target port group and relative target port. One group per node, so a
/// partner node's paths land in a different group.
pub const LOCAL_TPG_ID: u16 = 1;
pub const LOCAL_RELATIVE_PORT_ID: u16 = 1;
/// Target portal group tag of every portal of this node.
pub const PORTAL_GROUP_TAG: u16 = 1;

static NEXT_DEVICE_ID: AtomicU64 = AtomicU64::new(1);

/// A block device and the SCSI logical unit that presents it.
pub struct Device {
    pub id: u64,
    pub name: String,
    pub bdev: Arc<dyn Bdev>,
    pub lu: Arc<LogicalUnit>,
    pub stats: crate::stats::DeviceStats,
    /// A replicated device: the control link's way into its replication thread.
    pub replica: Option<tandem_replica::ReplicaHandle>,
    /// A replicated device: this node's id in the device's cluster (its ALUA port group).
    pub ha_node: Option<u8>,
}

impl Device {
    pub fn new(name: String, bdev: Arc<dyn Bdev>, lu: Arc<LogicalUnit>) -> Device {
        Device {
            id: NEXT_DEVICE_ID.fetch_add(1, Ordering::Relaxed),
            name,
            bdev,
            lu,
            stats: Default::default(),
            replica: None,
            ha_node: None,
        }
    }
}

pub struct Target {
    pub iqn: String,
    pub alias: Option<String>,
    pub luns: Vec<Arc<Device>>,
    pub auth: AuthPolicy,
    pub allowed_initiators: Vec<String>,
    /// This node's ALUA target port group and relative target port for this target's
    /// nexuses: [`LOCAL_TPG_ID`] / [`LOCAL_RELATIVE_PORT_ID`], or for a target of a replicated
    /// device the node's id in the device's cluster (unique across its nodes).
    pub tpg_id: u16,
    pub relative_port_id: u16,
}

impl Target {
    pub fn lun(&self, lun: u64) -> Option<&Arc<Device>> {
        self.luns.get(usize::try_from(lun).ok()?)
    }

    pub fn lun_ids(&self) -> Vec<u64> {
        (0..self.luns.len() as u64).collect()
    }
}

pub struct Registry {
    targets: RwLock<Vec<Arc<Target>>>,
    portals: RwLock<Vec<SocketAddr>>,
    limits: TargetLimits,
    discovery_auth: RwLock<AuthPolicy>,
}

impl Registry {
    pub fn new(portals: Vec<SocketAddr>) -> Registry {
        Registry {
            targets: RwLock::new(Vec::new()),
            portals: RwLock::new(portals),
            limits: TargetLimits::default(),
            discovery_auth: RwLock::new(AuthPolicy::None),
        }
    }

    pub fn add_target(&self, t: Target) {
        let mut ts = self.targets.write();
        ts.retain(|x| x.iqn != t.iqn);
        ts.push(Arc::new(t));
    }

    pub fn remove_target(&self, iqn: &str) -> bool {
        let mut ts = self.targets.write();
        let before = ts.len();
        ts.retain(|x| x.iqn != iqn);
        ts.len() != before
    }

    /// Replaces a target's definition (same IQN) without touching its sessions: they keep
    /// the `Arc` they logged in with until they log out; new logins see the new one.
    pub fn update_target(&self, iqn: &str, f: impl FnOnce(&Target) -> Target) -> bool {
        let mut ts = self.targets.write();
        if let Some(pos) = ts.iter().position(|x| x.iqn == iqn) {
            let new = f(&ts[pos]);
            ts[pos] = Arc::new(new);
            true
        } else {
            false
        }
    }

    pub fn target(&self, iqn: &str) -> Option<Arc<Target>> {
        self.targets.read().iter().find(|t| t.iqn == iqn).cloned()
    }

    pub fn targets(&self) -> Vec<Arc<Target>> {
        self.targets.read().clone()
    }

    pub fn portals(&self) -> Vec<SocketAddr> {
        self.portals.read().clone()
    }

    /// SendTargets listing: every portal of every target. A wildcard portal (0.0.0.0) is
    /// replaced by the address the initiator reached us on, which it can certainly reach.
    pub fn listings(&self, reached_on: Option<SocketAddr>) -> Vec<(TargetListing, Vec<String>)> {
        let portals = self.portals();
        let addrs: Vec<(String, u16)> = portals
            .iter()
            .map(|p| {
                let addr = match (p.ip().is_unspecified(), reached_on) {
                    (true, Some(local)) => SocketAddr::new(local.ip(), p.port()),
                    _ => *p,
                };
                (addr.to_string(), PORTAL_GROUP_TAG)
            })
            .collect();
        self.targets
            .read()
            .iter()
            .map(|t| {
                (
                    TargetListing {
                        name: t.iqn.clone(),
                        addresses: addrs.clone(),
                    },
                    t.allowed_initiators.clone(),
                )
            })
            .collect()
    }
}

impl TargetDirectory for Registry {
    fn lookup(&self, target_name: &str) -> Option<TargetPolicy> {
        let t = self.target(target_name)?;
        Some(TargetPolicy {
            name: t.iqn.clone(),
            alias: t.alias.clone(),
            tpgt: PORTAL_GROUP_TAG,
            auth: t.auth.clone(),
            allowed_initiators: t.allowed_initiators.clone(),
            limits: self.limits.clone(),
        })
    }

    fn discovery_auth(&self) -> AuthPolicy {
        self.discovery_auth.read().clone()
    }

    fn discovery_limits(&self) -> TargetLimits {
        self.limits.clone()
    }
}
