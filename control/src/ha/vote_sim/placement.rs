//! Where the authority of the simulated device runs: the part of the model that differs
//! between failover strategies. A shape is a [`Placement`]; further placements (three data
//! nodes with a majority takeover, a file-share witness) plug in here.

use tandem_config::{FailoverStrategy, PartnerConfig, Priority, ReplicationConfig};
use tandem_ha::NodeId;

/// What a link carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    /// A sync link between two data nodes: the engines' traffic and heartbeats.
    Sync,
    /// A heartbeat-only link between two data nodes.
    Heartbeat,
    /// The management network: calls to a remote authority's API.
    Mgmt,
}

impl LinkKind {
    /// Heartbeats run on every sync and heartbeat link (`membership.rs`).
    pub fn carries_heartbeats(self) -> bool {
        matches!(self, LinkKind::Sync | LinkKind::Heartbeat)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    pub a: usize,
    pub b: usize,
    pub kind: LinkKind,
}

impl Link {
    pub fn joins(&self, p: usize, q: usize) -> bool {
        (self.a == p && self.b == q) || (self.a == q && self.b == p)
    }

    pub fn touches(&self, p: usize) -> bool {
        self.a == p || self.b == p
    }
}

/// A shape of the simulated cluster. Participants `0..data_nodes()` are data nodes (node
/// ids 1, 2, ...); a witness, if any, comes last.
pub trait Placement {
    fn name(&self) -> &'static str;
    fn data_nodes(&self) -> usize;
    /// A witness node (control service only) hosts the authority.
    fn has_witness(&self) -> bool;
    /// The device's replication settings as data node `node` sees them; the real
    /// `strategy::authority_place` and `strategy::decide_takeover` read them.
    fn replication(&self, node: usize) -> ReplicationConfig;
    fn links(&self) -> Vec<Link>;
    /// The strategy's documented split-brain price: every heartbeat-carrying link between
    /// two live data nodes cut. Faults that would cause it are not injected when this is
    /// true (see docs/ha.md, "The split-brain price").
    fn keeps_a_heartbeat_link(&self) -> bool;
    /// After everything heals, the cluster must serve again within the bound (else only
    /// reported).
    fn liveness_asserted(&self) -> bool;
}

pub fn participant_name(p: usize, data_nodes: usize) -> String {
    if p < data_nodes {
        format!("n{}", p + 1)
    } else {
        "w".to_string()
    }
}

pub fn node_id(p: usize) -> NodeId {
    NodeId(p as u8 + 1)
}

fn replication(
    node: usize,
    data_nodes: usize,
    failover: FailoverStrategy,
    priority: Priority,
    witness: Option<String>,
) -> ReplicationConfig {
    // The first partner of node 2 is node 1 (the authority by configuration), and the
    // other way round: `decide_takeover` looks at the first partner.
    let partners = (0..data_nodes)
        .filter(|&q| q != node)
        .map(|q| PartnerConfig {
            name: participant_name(q, data_nodes),
            node_id: node_id(q).0,
            sync_links: Vec::new(),
            heartbeat_links: Vec::new(),
        })
        .collect();
    ReplicationConfig {
        node_id: node_id(node).0,
        secret_file: "/simulated".into(),
        failover,
        priority,
        journal: Default::default(),
        journal_location: None,
        resync_latency_target_ms: tandem_config::DEFAULT_RESYNC_LATENCY_TARGET_MS,
        witness,
        witness_file: None,
        partners,
    }
}

fn data_links(sync: usize, heartbeat: usize) -> Vec<Link> {
    let mut v = Vec::new();
    for _ in 0..sync {
        v.push(Link {
            a: 0,
            b: 1,
            kind: LinkKind::Sync,
        });
    }
    for _ in 0..heartbeat {
        v.push(Link {
            a: 0,
            b: 1,
            kind: LinkKind::Heartbeat,
        });
    }
    v.push(Link {
        a: 0,
        b: 1,
        kind: LinkKind::Mgmt,
    });
    v
}

/// `hb2`: heartbeat strategy, two data nodes (n1 priority first, n2 second), two sync links
/// and one heartbeat link, symmetric takeover.
pub struct HeartbeatPair;

impl Placement for HeartbeatPair {
    fn name(&self) -> &'static str {
        "hb2"
    }
    fn data_nodes(&self) -> usize {
        2
    }
    fn has_witness(&self) -> bool {
        false
    }
    fn replication(&self, node: usize) -> ReplicationConfig {
        let priority = if node == 0 {
            Priority::First
        } else {
            Priority::Second
        };
        replication(node, 2, FailoverStrategy::Heartbeat, priority, None)
    }
    fn links(&self) -> Vec<Link> {
        data_links(2, 1)
    }
    fn keeps_a_heartbeat_link(&self) -> bool {
        true
    }
    fn liveness_asserted(&self) -> bool {
        // A superseded authority or a refused takeover can leave the pair waiting for an
        // administrator; reported, not asserted.
        false
    }
}

/// `w2`: node majority, two data nodes and a witness node hosting the authority.
pub struct WitnessPair;

impl Placement for WitnessPair {
    fn name(&self) -> &'static str {
        "w2"
    }
    fn data_nodes(&self) -> usize {
        2
    }
    fn has_witness(&self) -> bool {
        true
    }
    fn replication(&self, node: usize) -> ReplicationConfig {
        replication(
            node,
            2,
            FailoverStrategy::NodeMajority,
            Priority::First,
            Some("w".into()),
        )
    }
    fn links(&self) -> Vec<Link> {
        let mut v = data_links(2, 1);
        for n in 0..2 {
            v.push(Link {
                a: n,
                b: 2,
                kind: LinkKind::Mgmt,
            });
        }
        v
    }
    fn keeps_a_heartbeat_link(&self) -> bool {
        false
    }
    fn liveness_asserted(&self) -> bool {
        true
    }
}
