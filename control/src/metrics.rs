//! `/metrics` in the Prometheus text exposition format (version 0.0.4).

use std::fmt::Write;

use tandem_config::ipc::HaDeviceStatus;
use tandem_config::NodeConfig;

use crate::api_types::{DataplaneInfo, StatsInfo};

/// Escapes a label value (`\`, `"` and newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
        } else {
            let _ = writeln!(self.out, "{name}{{{labels}}} {value}");
        }
    }
}

/// Renders node, data plane, device and reactor metrics. `stats` is None when the data plane
/// is not connected (then only the node-level series and the replication series are present).
/// `ha` holds the replication status of each replicated device (None: not known).
pub fn render(
    config: &NodeConfig,
    dataplane: &DataplaneInfo,
    uptime_s: u64,
    stats: Option<&StatsInfo>,
    ha: &[(String, Option<HaDeviceStatus>)],
) -> String {
    let mut out = String::new();
    render_replication(&mut out, config, ha);
    let mut f = Family { out: &mut out };
    let node = format!("node=\"{}\"", label(&config.node.name));

    f.head(
        "tandem_control_uptime_seconds",
        "gauge",
        "Seconds since tandem-control started.",
    );
    f.sample("tandem_control_uptime_seconds", &node, uptime_s);
    f.head(
        "tandem_dataplane_up",
        "gauge",
        "1 when the data plane is running and connected.",
    );
    f.sample("tandem_dataplane_up", &node, u8::from(stats.is_some()));
    f.head(
        "tandem_dataplane_restarts_total",
        "counter",
        "Data plane restarts by the supervisor.",
    );
    f.sample("tandem_dataplane_restarts_total", &node, dataplane.restarts);
    f.head("tandem_devices", "gauge", "Devices in the configuration.");
    f.sample("tandem_devices", &node, config.devices.len());
    f.head("tandem_targets", "gauge", "Targets in the configuration.");
    f.sample("tandem_targets", &node, config.targets.len());

    let Some(stats) = stats else {
        return out;
    };
    type Getter = fn(&tandem_config::ipc::DeviceStats) -> u64;
    let device_counters: [(&str, &str, &str, Getter); 10] = [
        (
            "tandem_device_read_ops_total",
            "counter",
            "Read commands completed.",
            |d| d.read_ops,
        ),
        (
            "tandem_device_write_ops_total",
            "counter",
            "Write commands completed.",
            |d| d.write_ops,
        ),
        (
            "tandem_device_read_bytes_total",
            "counter",
            "Bytes read.",
            |d| d.read_bytes,
        ),
        (
            "tandem_device_write_bytes_total",
            "counter",
            "Bytes written.",
            |d| d.write_bytes,
        ),
        (
            "tandem_device_errors_total",
            "counter",
            "Commands that failed.",
            |d| d.errors,
        ),
        (
            "tandem_device_queue_depth",
            "gauge",
            "Commands in flight.",
            |d| u64::from(d.queue_depth),
        ),
        (
            "tandem_device_sessions",
            "gauge",
            "iSCSI sessions using the device.",
            |d| u64::from(d.sessions),
        ),
        (
            "tandem_device_latency_p50_microseconds",
            "gauge",
            "Median command latency since the data plane started.",
            |d| d.latency_us_p50,
        ),
        (
            "tandem_device_latency_p99_microseconds",
            "gauge",
            "99th percentile command latency since the data plane started.",
            |d| d.latency_us_p99,
        ),
        (
            "tandem_device_latency_p999_microseconds",
            "gauge",
            "99.9th percentile command latency since the data plane started.",
            |d| d.latency_us_p999,
        ),
    ];
    let mut f = Family { out: &mut out };
    for (name, kind, help, get) in device_counters {
        f.head(name, kind, help);
        for d in &stats.devices {
            f.sample(
                name,
                &format!("{node},device=\"{}\"", label(&d.name)),
                get(d),
            );
        }
    }
    type RGetter = fn(&tandem_config::ipc::ReactorStats) -> u64;
    let reactor_counters: [(&str, &str, RGetter); 4] = [
        (
            "tandem_reactor_busy_polls_total",
            "Polls that found work.",
            |r| r.busy_polls,
        ),
        (
            "tandem_reactor_idle_polls_total",
            "Polls that found nothing to do.",
            |r| r.idle_polls,
        ),
        ("tandem_reactor_pdus_total", "iSCSI PDUs handled.", |r| {
            r.pdus
        }),
        ("tandem_reactor_ios_total", "Block I/Os completed.", |r| {
            r.ios
        }),
    ];
    for (name, help, get) in reactor_counters {
        f.head(name, "counter", help);
        for r in &stats.reactors {
            f.sample(name, &format!("{node},core=\"{}\"", r.core), get(r));
        }
    }
    out
}

/// Per replicated device and partner: status known, serving, replica state, link up, bytes
/// mirrored, resync progress, dirty regions.
fn render_replication(
    out: &mut String,
    config: &NodeConfig,
    ha: &[(String, Option<HaDeviceStatus>)],
) {
    if ha.is_empty() {
        return;
    }
    let mut f = Family { out };
    let node = format!("node=\"{}\"", label(&config.node.name));
    let dev = |d: &str| format!("{node},device=\"{}\"", label(d));
    let partner = |d: &str, p: &str| format!("{},partner=\"{}\"", dev(d), label(p));
    f.head(
        "tandem_replication_status_known",
        "gauge",
        "1 when the data plane reported the replicated device's status (the other series need it).",
    );
    for (d, s) in ha {
        f.sample(
            "tandem_replication_status_known",
            &dev(d),
            u8::from(s.is_some()),
        );
    }
    let known: Vec<(&str, &HaDeviceStatus)> = ha
        .iter()
        .filter_map(|(d, s)| s.as_ref().map(|s| (d.as_str(), s)))
        .collect();
    f.head(
        "tandem_replication_serving",
        "gauge",
        "1 while this node's replica serves host I/O (synchronized member with a valid lease).",
    );
    for (d, s) in &known {
        f.sample("tandem_replication_serving", &dev(d), u8::from(s.serving));
    }
    f.head(
        "tandem_replica_state",
        "gauge",
        "1 for the state of each replica as this node sees it (synchronized, syncing, not-synchronized, blocked, split-brain, unknown).",
    );
    for (d, s) in ha {
        let Some(repl) = config.device(d).and_then(|x| x.replication.as_ref()) else {
            continue;
        };
        let rows = crate::replica::replica_rows(&config.node.name, repl, s.as_ref(), &[], &[]);
        for r in rows.replicas {
            f.sample(
                "tandem_replica_state",
                &format!(
                    "{},replica=\"{}\",state=\"{}\"",
                    dev(d),
                    label(&r.node),
                    r.state
                ),
                1,
            );
        }
    }
    f.head(
        "tandem_replication_link_up",
        "gauge",
        "1 when the sync or heartbeat link to the partner is up.",
    );
    for (d, s) in &known {
        for p in &s.partners {
            for l in &p.links {
                f.sample(
                    "tandem_replication_link_up",
                    &format!("{},link=\"{}\"", partner(d, &p.name), label(&l.link)),
                    u8::from(l.up),
                );
            }
        }
    }
    type PGetter = fn(&tandem_config::ipc::HaPartnerStatus) -> u64;
    let partner_series: [(&str, &str, &str, PGetter); 4] = [
        (
            "tandem_replication_mirrored_bytes_total",
            "counter",
            "Bytes of host writes mirrored to the partner.",
            |p| p.bytes_mirrored,
        ),
        (
            "tandem_replication_dirty_regions",
            "gauge",
            "Regions this node holds dirty for the partner (copied when it returns).",
            |p| p.dirty_regions,
        ),
        (
            "tandem_replication_resync_done_regions",
            "gauge",
            "Regions copied to the partner by the running resync.",
            |p| p.resync_done_regions,
        ),
        (
            "tandem_replication_resync_total_regions",
            "gauge",
            "Regions the running resync to the partner copies.",
            |p| p.resync_total_regions,
        ),
    ];
    for (name, kind, help, get) in partner_series {
        f.head(name, kind, help);
        for (d, s) in &known {
            for p in &s.partners {
                f.sample(name, &partner(d, &p.name), get(p));
            }
        }
    }
    f.head(
        "tandem_replication_resync_progress_ratio",
        "gauge",
        "Resync progress towards the partner, 0..1 (1 when no resync runs).",
    );
    for (d, s) in &known {
        for p in &s.partners {
            let ratio = if p.resync_total_regions == 0 {
                1.0
            } else {
                p.resync_done_regions.min(p.resync_total_regions) as f64
                    / p.resync_total_regions as f64
            };
            f.sample(
                "tandem_replication_resync_progress_ratio",
                &partner(d, &p.name),
                ratio,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_config::ipc::{DeviceStats, ReactorStats};

    #[test]
    fn renders_prometheus_text() {
        let config = NodeConfig::default_ram(tandem_config::loopback_portal(3260));
        let dp = DataplaneInfo {
            state: "running".into(),
            pid: Some(1),
            restarts: 2,
            last_exit: None,
            last_error: None,
        };
        let stats = StatsInfo {
            unix_ms: 0,
            devices: vec![DeviceStats {
                name: "ram\"0".into(),
                read_ops: 7,
                latency_us_p99: 120,
                ..Default::default()
            }],
            reactors: vec![ReactorStats {
                core: 3,
                pdus: 9,
                ..Default::default()
            }],
        };
        let text = render(&config, &dp, 5, Some(&stats), &[]);
        assert!(
            text.contains("tandem_dataplane_up{node=\"tandem\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("tandem_dataplane_restarts_total{node=\"tandem\"} 2\n"));
        assert!(
            text.contains("tandem_device_read_ops_total{node=\"tandem\",device=\"ram\\\"0\"} 7\n"),
            "{text}"
        );
        assert!(text.contains(
            "tandem_device_latency_p99_microseconds{node=\"tandem\",device=\"ram\\\"0\"} 120\n"
        ));
        assert!(text.contains("tandem_reactor_pdus_total{node=\"tandem\",core=\"3\"} 9\n"));
        assert!(text.contains("# TYPE tandem_device_read_ops_total counter\n"));
        // Every sample line is `name{labels} value` or `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
        let down = render(&config, &dp, 5, None, &[]);
        assert!(down.contains("tandem_dataplane_up{node=\"tandem\"} 0\n"));
        assert!(!down.contains("tandem_device_read_ops_total"));
    }

    #[test]
    fn renders_replication_series() {
        use tandem_config::ipc::{HaLinkStatus, HaPartnerStatus};
        let mut config = NodeConfig::default_ram(tandem_config::loopback_portal(3260));
        let mut d = tandem_config::DeviceConfig::ram("d1", 1 << 20);
        d.replication = Some(tandem_config::ReplicationConfig {
            node_id: 1,
            secret_file: "/s".into(),
            failover: Default::default(),
            priority: Default::default(),
            journal: Default::default(),
            journal_location: None,
            resync_latency_target_ms: tandem_config::DEFAULT_RESYNC_LATENCY_TARGET_MS,
            witness: None,
            witness_file: None,
            partners: vec![tandem_config::PartnerConfig {
                name: "b".into(),
                node_id: 2,
                sync_links: vec!["127.0.0.1:7001=127.0.0.2:7001".parse().unwrap()],
                heartbeat_links: vec![],
            }],
        });
        config.devices.push(d.clone());
        let mut d2 = d.clone();
        d2.name = "d2".into();
        config.devices.push(d2);
        let status = HaDeviceStatus {
            node_id: 1,
            config: Some(tandem_ha::EpochConfig::initial(&[
                tandem_ha::NodeId(1),
                tandem_ha::NodeId(2),
            ])),
            serving: true,
            meta: Default::default(),
            partners: vec![HaPartnerStatus {
                name: "b".into(),
                node_id: 2,
                links: vec![HaLinkStatus {
                    link: "127.0.0.1:7001=127.0.0.2:7001".into(),
                    up: true,
                    last_error: None,
                }],
                dirty_regions: 3,
                resync_done_regions: 1,
                resync_total_regions: 4,
                bytes_mirrored: 8192,
                dirty_list: Vec::new(),
                dirty_complete: true,
                size_refused: None,
            }],
        };
        let dp = DataplaneInfo {
            state: "running".into(),
            pid: None,
            restarts: 0,
            last_exit: None,
            last_error: None,
        };
        let text = render(
            &config,
            &dp,
            1,
            None,
            &[("d1".into(), Some(status)), ("d2".into(), None)],
        );
        for want in [
            "tandem_replication_status_known{node=\"tandem\",device=\"d1\"} 1\n",
            "tandem_replication_status_known{node=\"tandem\",device=\"d2\"} 0\n",
            "tandem_replication_serving{node=\"tandem\",device=\"d1\"} 1\n",
            "tandem_replica_state{node=\"tandem\",device=\"d1\",replica=\"b\",state=\"synchronized\"} 1\n",
            "tandem_replica_state{node=\"tandem\",device=\"d2\",replica=\"b\",state=\"unknown\"} 1\n",
            "tandem_replication_link_up{node=\"tandem\",device=\"d1\",partner=\"b\",link=\"127.0.0.1:7001=127.0.0.2:7001\"} 1\n",
            "tandem_replication_mirrored_bytes_total{node=\"tandem\",device=\"d1\",partner=\"b\"} 8192\n",
            "tandem_replication_dirty_regions{node=\"tandem\",device=\"d1\",partner=\"b\"} 3\n",
            "tandem_replication_resync_progress_ratio{node=\"tandem\",device=\"d1\",partner=\"b\"} 0.25\n",
            "# TYPE tandem_replication_mirrored_bytes_total counter\n",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
        assert!(!text.contains("tandem_replication_serving{node=\"tandem\",device=\"d2\"}"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(
                line.rsplit(' ').next().unwrap().parse::<f64>().is_ok(),
                "{line}"
            );
        }
    }
}
