//! `/metrics` in the Prometheus text exposition format (version 0.0.4).

use std::fmt::Write;

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
/// is not connected (then only the node-level series are present).
pub fn render(
    config: &NodeConfig,
    dataplane: &DataplaneInfo,
    uptime_s: u64,
    stats: Option<&StatsInfo>,
) -> String {
    let mut out = String::new();
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
        let text = render(&config, &dp, 5, Some(&stats));
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
        let down = render(&config, &dp, 5, None);
        assert!(down.contains("tandem_dataplane_up{node=\"tandem\"} 0\n"));
        assert!(!down.contains("tandem_device_read_ops_total"));
    }
}
