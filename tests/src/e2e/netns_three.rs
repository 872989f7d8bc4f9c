//! Three data nodes in network namespaces under node majority (issue 11): node-a, node-b and
//! node-c ([`Member::Node`] 1 to 3), each running its own `tandem-control` and
//! `tandem-dataplane` in its own namespace, one host namespace for the initiator and the
//! CLI. Every pair of nodes has two sync links (`sync0`, `sync1`) and one heartbeat link
//! (`hb0`); pairs are told apart by port, since every node has one address per network.
//! Made with the CLI only: `replica add` to node-b, then to node-c (`--peer-sync-link` for
//! the node-b–node-c pair, `--failover node-majority`).
//!
//! Also REPORT TARGET PORT GROUPS through a path, as a host's ALUA handler sends it.

use std::time::{Duration, Instant};

use crate::e2e::host_io::{login, PathSpec};
use crate::netns::{Member, Topology};

use super::netns_cluster::{
    link, wait_until, ClusterNode, LogsOnFailure, HEARTBEAT_PORT, SYNC_PORT,
};

/// Three nodes with one replicated device. Dropped in field order: logs printed on failure,
/// processes and namespaces torn down, then the data removed.
pub struct ThreeNodeCluster {
    pub logs: LogsOnFailure,
    pub topo: Topology,
    /// node-a, node-b, node-c.
    pub nodes: [ClusterNode; 3],
    pub device: String,
    _root: tempfile::TempDir,
}

/// The port offset of the link between nodes `i` and `j` (0-based): every pair has its own
/// port on each network (a node's link sockets are bound to its one address there).
fn pair_port(base: u16, i: usize, j: usize) -> u16 {
    let (lo, hi) = (i.min(j), i.max(j));
    base + match (lo, hi) {
        (0, 1) => 0,
        (0, 2) => 1,
        _ => 2,
    }
}

impl ThreeNodeCluster {
    /// Starts the three nodes and configures `device` of `size` (e.g. "32MiB"); waits until
    /// all three are synchronized. None (with the reason printed) when network namespaces
    /// cannot be made here.
    pub fn start(scratch_prefix: &str, device: &str, size: &str) -> Option<ThreeNodeCluster> {
        if let Some(why) = crate::netns::unavailable() {
            eprintln!("SKIP: {why}");
            return None;
        }
        let mut topo = match Topology::builder()
            .nodes(3)
            .witness(false)
            .hosts(1)
            .portals(1)
            .build()
        {
            Ok(t) => t,
            Err(e) => {
                eprintln!("SKIP: cannot create the network namespaces: {e}");
                return None;
            }
        };
        let root = tempfile::Builder::new()
            .prefix(scratch_prefix)
            .tempdir_in(super::procs::scratch_dir())
            .unwrap();
        let nodes = [
            ClusterNode::new(&topo, root.path(), Member::Node(1), "node-a"),
            ClusterNode::new(&topo, root.path(), Member::Node(2), "node-b"),
            ClusterNode::new(&topo, root.path(), Member::Node(3), "node-c"),
        ];
        let logs = LogsOnFailure(nodes.iter().map(|n| n.log.clone()).collect());
        eprintln!("topology {} (namespaces {}-*)", topo.id(), topo.id());
        for n in &nodes {
            n.start(&mut topo);
        }
        let c = ThreeNodeCluster {
            logs,
            topo,
            nodes,
            device: device.to_string(),
            _root: root,
        };
        c.configure(size);
        Some(c)
    }

    /// `--sync-link` and `--heartbeat-link` values between nodes `i` and `j`, from `i`.
    fn links(&self, i: usize, j: usize) -> (Vec<String>, String) {
        let (t, mi, mj) = (&self.topo, self.nodes[i].member, self.nodes[j].member);
        let sync = ["sync0", "sync1"]
            .iter()
            .map(|net| link(t, mi, mj, net, pair_port(SYNC_PORT, i, j)))
            .collect();
        let hb = link(t, mi, mj, "hb0", pair_port(HEARTBEAT_PORT, i, j));
        (sync, hb)
    }

    fn configure(&self, size: &str) {
        let t = &self.topo;
        let [a, b, _] = &self.nodes;
        let device = self.device.as_str();
        a.ok(t, &["device", "create", device, "--size", size]);
        // Every node registers the two others: any of them may host the authority.
        for on in &self.nodes {
            for other in self.nodes.iter().filter(|o| o.name != on.name) {
                let api = other.api.to_string();
                let token = other.token_file().display().to_string();
                on.ok(
                    t,
                    &["server", "add", &other.name, &api, "--token-file", &token],
                );
            }
        }
        let t0 = Instant::now();
        let (sync_ab, hb_ab) = self.links(0, 1);
        let mut args: Vec<String> = ["replica", "add", device, "--partner", "node-b"]
            .map(String::from)
            .to_vec();
        for l in sync_ab {
            args.extend(["--sync-link".into(), l]);
        }
        args.extend(["--heartbeat-link".into(), hb_ab]);
        args.extend(["--init".into(), "zeroed".into()]);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        a.ok(t, &argv);
        wait_until(
            "node-a and node-b synchronized after the first replica add",
            Duration::from_secs(60),
            || a.synchronized(t, device, 2) && b.synchronized(t, device, 2),
        );
        let (sync_ac, hb_ac) = self.links(0, 2);
        let (sync_bc, hb_bc) = self.links(1, 2);
        let mut args: Vec<String> = ["replica", "add", device, "--partner", "node-c"]
            .map(String::from)
            .to_vec();
        for l in sync_ac {
            args.extend(["--sync-link".into(), l]);
        }
        for l in sync_bc {
            args.extend(["--peer-sync-link".into(), format!("node-b:{l}")]);
        }
        args.extend(["--heartbeat-link".into(), hb_ac]);
        args.extend(["--peer-heartbeat-link".into(), format!("node-b:{hb_bc}")]);
        args.extend(["--failover".into(), "node-majority".into()]);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        a.ok(t, &argv);
        let took = wait_until(
            "all three serving and synchronized after the second replica add",
            Duration::from_secs(90),
            || self.all_synchronized(),
        );
        eprintln!(
            "all three synchronized {took:?} after the second replica add ({:?} in all)",
            t0.elapsed()
        );
        a.ok(t, &["replica", "list", device]);
    }

    /// Every node serves and sees all three synchronized with every sync link up.
    pub fn all_synchronized(&self) -> bool {
        self.nodes
            .iter()
            .all(|n| n.synchronized(&self.topo, &self.device, 3))
    }

    /// The host's path to node `n` (its first portal).
    pub fn path(&self, n: &ClusterNode) -> PathSpec {
        PathSpec {
            node: n.name.clone(),
            portal: n.portals[0],
            iqn: n.iqn(&self.device),
        }
    }

    /// The authority state `n` keeps on disk for the device (only on a node that hosts or
    /// hosted one).
    pub fn authority_state(&self, n: &ClusterNode) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(
            n.dir
                .join("ha")
                .join(format!("{}.authority.json", self.device)),
        )
        .ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The HA view of the device on `n` (`GET /api/v1/ha/status/DEVICE`).
    pub fn ha_view(&self, n: &ClusterNode) -> Option<serde_json::Value> {
        n.api_get(&self.topo, &format!("/api/v1/ha/status/{}", self.device))
    }

    /// Node id within the device of each node name, from `n`'s `replica list`.
    pub fn node_ids(&self, n: &ClusterNode) -> Vec<(String, u16)> {
        n.replicas(&self.topo, &self.device)
            .and_then(|l| {
                l["replicas"].as_array().map(|rs| {
                    rs.iter()
                        .filter_map(|r| {
                            Some((
                                r["node"].as_str()?.to_string(),
                                r["node_id"].as_u64()? as u16,
                            ))
                        })
                        .collect()
                })
            })
            .unwrap_or_default()
    }
}

/// Asymmetric access state codes in REPORT TARGET PORT GROUPS (SPC-4).
pub const ALUA_ACTIVE_OPTIMIZED: u8 = 0x0;
pub const ALUA_UNAVAILABLE: u8 = 0x3;

/// REPORT TARGET PORT GROUPS through `path` on a fresh session from `host`: (target port
/// group id, asymmetric access state) per group. None when the command fails.
pub fn report_target_port_groups(
    topo: &Topology,
    host: Member,
    path: &PathSpec,
) -> Option<Vec<(u16, u8)>> {
    let mut c = login(topo, host, path, "iqn.2026-11.io.tandem.test:rtpg");
    const ALLOC: u32 = 512;
    // MAINTENANCE IN, service action REPORT TARGET PORT GROUPS, length-only header.
    let mut cdb = [0u8; 12];
    cdb[0] = 0xA3;
    cdb[1] = 0x0A;
    cdb[6..10].copy_from_slice(&ALLOC.to_be_bytes());
    let mut r = c.command(&cdb, ALLOC, &[], 0, 0);
    if r.status == 2 && r.sense.get(2).is_some_and(|k| k & 0x0f == 6) {
        // UNIT ATTENTION after a configuration change: once more.
        r = c.command(&cdb, ALLOC, &[], 0, 0);
    }
    if r.status != 0 {
        eprintln!(
            "RTPG through {}: status {} sense {:02x?}",
            path.node, r.status, r.sense
        );
        return None;
    }
    parse_rtpg(&r.data_in)
}

/// Parses length-only REPORT TARGET PORT GROUPS data; None when it is malformed.
pub fn parse_rtpg(d: &[u8]) -> Option<Vec<(u16, u8)>> {
    let len = u32::from_be_bytes(d.get(0..4)?.try_into().ok()?) as usize;
    let body = d.get(4..4 + len)?;
    let mut out = Vec::new();
    let mut k = 0;
    while k < body.len() {
        let desc = body.get(k..k + 8)?;
        let state = desc[0] & 0x0f;
        let id = u16::from_be_bytes([desc[2], desc[3]]);
        let ports = usize::from(desc[7]);
        out.push((id, state));
        k += 8 + 4 * ports;
    }
    Some(out)
}

/// The RTPG state of the group of node `id`, as seen through `path`.
pub fn alua_state_of(groups: &[(u16, u8)], id: u16) -> Option<u8> {
    groups.iter().find(|(g, _)| *g == id).map(|(_, s)| *s)
}

/// Waits until `f` holds, for at most `limit`; how long it took, or None (no panic).
pub fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f() {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtpg_data_is_parsed_per_group() {
        // Two groups: 1 active/optimized with one port, 3 unavailable with one port.
        let mut d = vec![0, 0, 0, 24];
        d.extend([0x00, 0x8f, 0, 1, 0, 2, 0, 1, 0, 0, 0, 1]);
        d.extend([0x03, 0x8f, 0, 3, 0, 2, 0, 1, 0, 0, 0, 3]);
        assert_eq!(parse_rtpg(&d), Some(vec![(1, 0), (3, 3)]));
        assert_eq!(parse_rtpg(&d[..10]), None);
    }

    #[test]
    fn pairs_have_distinct_ports() {
        assert_eq!(pair_port(7100, 0, 1), pair_port(7100, 1, 0));
        let mut ports = vec![
            pair_port(7100, 0, 1),
            pair_port(7100, 0, 2),
            pair_port(7100, 1, 2),
        ];
        ports.dedup();
        assert_eq!(ports.len(), 3);
    }
}
