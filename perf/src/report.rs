//! Turning a bench [`Report`] into goals (issue 3, item 5), a Markdown table and an SVG plot.

use std::fmt::Write as _;

use crate::bench::{Backing, BenchConfig, Client, Goal, Report, Row, Workload};

fn find(r: &Report, b: Backing, c: Client, w: Workload) -> Option<&Row> {
    r.rows
        .iter()
        .find(|row| row.backing == b && row.client == c && row.workload == w)
}

fn pct(x: f64) -> String {
    format!("{:.0} %", x * 100.0)
}

/// "≥" goal: measured/goal ratio.
fn at_least(name: String, measured: f64, goal: f64, unit: &str, show: &str) -> Goal {
    let pass = measured >= goal;
    Goal {
        name,
        measured: show.to_string(),
        goal: format!("≥ {goal:.2}{unit}"),
        pass: Some(pass),
        margin: if pass {
            format!("met, {} above", pct(measured / goal - 1.0))
        } else {
            format!(
                "missed by {} (reaches {} of goal)",
                pct(1.0 - measured / goal),
                pct(measured / goal)
            )
        },
    }
}

/// "≤" goal.
fn at_most(name: String, measured: f64, goal: f64, unit: &str, show: &str) -> Goal {
    let pass = measured <= goal;
    Goal {
        name,
        measured: show.to_string(),
        goal: format!("≤ {goal:.2}{unit}"),
        pass: Some(pass),
        margin: if pass {
            format!("met, {} under", pct(1.0 - measured / goal))
        } else {
            format!("missed: {} over", pct(measured / goal - 1.0))
        },
    }
}

fn missing(name: String, goal: &str, why: &str) -> Goal {
    Goal {
        name,
        measured: "n/a".into(),
        goal: goal.into(),
        pass: None,
        margin: why.into(),
    }
}

const RR32: Workload = Workload::new(false, true, 4096, 32);
const RW32: Workload = Workload::new(true, true, 4096, 32);
const RR1: Workload = Workload::new(false, true, 4096, 1);
const RW1: Workload = Workload::new(true, true, 4096, 1);
const SR128: Workload = Workload::new(false, false, 131_072, 8);

/// The targets of issue 3 item 5, each with measured value, goal and pass/miss.
pub fn goals(r: &Report, _cfg: &BenchConfig) -> Vec<Goal> {
    let mut g = Vec::new();
    let clients = [Client::Loadgen, Client::Fio, Client::IscsiPerf];
    // 1. QD32 RAM IOPS ≥ 2× tgt, p99 ≤ 0.5× tgt.
    for (w, wname) in [(RR32, "4K randread QD32"), (RW32, "4K randwrite QD32")] {
        for c in clients {
            let Some(row) = find(r, Backing::Ram, c, w) else {
                continue;
            };
            let name = format!("{wname} RAM IOPS vs tgt ({})", c.name());
            match row.iops_ratio {
                Some(x) => g.push(at_least(
                    name,
                    x,
                    2.0,
                    "×",
                    &format!("{x:.2}× ({:.0} vs {:.0})", row.tandem.iops, row.tgt.iops),
                )),
                None => g.push(missing(name, "≥ 2.00×", "no successful runs")),
            }
            if let Some(x) = row.p99_ratio {
                g.push(at_most(
                    format!("{wname} RAM p99 vs tgt ({})", c.name()),
                    x,
                    0.5,
                    "×",
                    &format!(
                        "{x:.2}× ({:.0} vs {:.0} µs)",
                        row.tandem.p99_us.unwrap_or(0.0),
                        row.tgt.p99_us.unwrap_or(0.0)
                    ),
                ));
            }
            if let Some(x) = row.cpu_per_io_ratio {
                g.push(at_most(
                    format!("{wname} RAM target CPU/IO vs tgt ({})", c.name()),
                    x,
                    1.0 / 3.0,
                    "×",
                    &format!(
                        "{x:.2}× ({:.1} vs {:.1} µs/IO)",
                        row.tandem.target_cpu_us_per_io, row.tgt.target_cpu_us_per_io
                    ),
                ));
            }
        }
    }
    // 2. QD1 latency ≤ 0.7× tgt (median latency; p50).
    for (w, wname) in [(RR1, "4K randread QD1"), (RW1, "4K randwrite QD1")] {
        for c in [Client::Loadgen, Client::Fio] {
            let Some(row) = find(r, Backing::Ram, c, w) else {
                continue;
            };
            if let (Some(a), Some(b)) = (row.tandem.p50_us, row.tgt.p50_us) {
                let x = a / b;
                g.push(at_most(
                    format!("{wname} RAM p50 latency vs tgt ({})", c.name()),
                    x,
                    0.7,
                    "×",
                    &format!(
                        "{x:.2}× (p50 {a:.1} vs {b:.1} µs; mean {:.1} vs {:.1} µs)",
                        row.tandem.mean_us.unwrap_or(0.0),
                        row.tgt.mean_us.unwrap_or(0.0)
                    ),
                ));
            }
        }
    }
    // 3. Our client is at least as cheap as iscsi-perf.
    for (b, tname) in [
        (crate::bench::TargetKind::Tandem, "Tandem"),
        (crate::bench::TargetKind::Tgt, "tgt"),
    ] {
        let lg = find(r, Backing::Ram, Client::Loadgen, RR32);
        let ip = find(r, Backing::Ram, Client::IscsiPerf, RR32);
        let name =
            format!("loadgen IOPS per client CPU-s vs iscsi-perf (4K randread QD32, {tname} RAM)");
        match (lg, ip) {
            (Some(lg), Some(ip)) => {
                let (a, bb) = match b {
                    crate::bench::TargetKind::Tandem => (&lg.tandem, &ip.tandem),
                    crate::bench::TargetKind::Tgt => (&lg.tgt, &ip.tgt),
                };
                if a.client_iops_per_cpu_s > 0.0 && bb.client_iops_per_cpu_s > 0.0 {
                    let x = a.client_iops_per_cpu_s / bb.client_iops_per_cpu_s;
                    g.push(at_least(
                        name,
                        x,
                        1.0,
                        "×",
                        &format!(
                            "{x:.2}× ({:.0} vs {:.0} IOPS/CPU-s)",
                            a.client_iops_per_cpu_s, bb.client_iops_per_cpu_s
                        ),
                    ));
                } else {
                    g.push(missing(name, "≥ 1.00×", "no CPU figures"));
                }
            }
            _ => g.push(missing(name, "≥ 1.00×", "rows not measured")),
        }
    }
    // 4. File-backed 4K randread QD32 ≥ 85 % of raw fio.
    // The better of the raw-disk measurements before and after the target runs.
    let raw = ["4K randread QD32", "4K randread QD32 (end)"]
        .iter()
        .filter_map(|k| r.limits.raw_fio.get(*k))
        .filter_map(|v| v.get("iops").and_then(|x| x.as_f64()))
        .reduce(f64::max);
    for c in clients {
        let Some(row) = find(r, Backing::File, c, RR32) else {
            continue;
        };
        let name = format!("4K randread QD32 file-backed vs raw fio ({})", c.name());
        match raw {
            Some(raw) if raw > 0.0 && row.tandem.iops > 0.0 => {
                let x = row.tandem.iops / raw;
                g.push(at_least(
                    name,
                    x,
                    0.85,
                    "",
                    &format!("{} ({:.0} vs {:.0} IOPS)", pct(x), row.tandem.iops, raw),
                ));
            }
            _ => g.push(missing(name, "≥ 85 %", "raw fio or Tandem run missing")),
        }
    }
    // 5. 128K sequential read ≥ 75 % of iperf3.
    for c in clients {
        let Some(row) = find(r, Backing::Ram, c, SR128) else {
            continue;
        };
        let name = format!("128K seqread RAM vs iperf3 loopback ({})", c.name());
        match r.limits.iperf3_mb_s {
            Some(bw) if bw > 0.0 && row.tandem.mb_s > 0.0 => {
                let x = row.tandem.mb_s / bw;
                g.push(at_least(
                    name,
                    x,
                    0.75,
                    "",
                    &format!("{} ({:.0} vs {:.0} MB/s)", pct(x), row.tandem.mb_s, bw),
                ));
            }
            _ => g.push(missing(name, "≥ 75 %", "iperf3 or Tandem run missing")),
        }
    }
    // 6. RSS ≤ 64 MiB plus configured cache (none here) — and plus the RAM disk for RAM backing.
    for b in [Backing::File, Backing::Ram] {
        let rss = r
            .rows
            .iter()
            .filter(|row| row.backing == b)
            .map(|row| row.tandem.target_rss_mib)
            .fold(0.0, f64::max);
        if rss <= 0.0 {
            continue;
        }
        let disk = if b == Backing::Ram {
            r.setup
                .get("lun_size_mib")
                .and_then(|s| s.parse::<f64>().ok())
                .unwrap_or(0.0)
        } else {
            0.0
        };
        let over = rss - disk;
        g.push(at_most(
            format!("Tandem RSS, {b:?} backing (minus RAM disk {disk:.0} MiB)"),
            over.max(0.0),
            64.0,
            " MiB",
            &format!("{over:.1} MiB (RSS {rss:.1} MiB)"),
        ));
    }
    g
}

fn f0(x: f64) -> String {
    if x > 0.0 {
        format!("{x:.0}")
    } else {
        "-".into()
    }
}

fn f1(x: f64) -> String {
    if x > 0.0 {
        format!("{x:.1}")
    } else {
        "-".into()
    }
}

fn lat(m: &crate::bench::Median) -> String {
    match (m.p50_us, m.p99_us, m.p99_9_us) {
        (Some(a), Some(b), Some(c)) => format!("{a:.0}/{b:.0}/{c:.0}"),
        _ => "-".into(),
    }
}

fn rat(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into())
}

/// The Markdown report.
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Tandem vs tgt — {} on {} ({} run)\n",
        r.date, r.host, r.mode
    );
    let _ = writeln!(s, "- load before: `{}`", r.load_before);
    let _ = writeln!(s, "- load after: `{}`", r.load_after);
    let _ = writeln!(s, "- {} cores, kernel {}", r.nproc, r.kernel);
    for (k, v) in &r.setup {
        let _ = writeln!(s, "- {k}: {v}");
    }
    let _ = writeln!(s, "\n## Machine limits\n");
    if let Some(g) = r.limits.iperf3_gbit_s {
        let _ = writeln!(
            s,
            "- iperf3 loopback (256 KiB writes, best of {:?} Gbit/s): {:.1} Gbit/s ({:.0} MB/s)",
            r.limits
                .iperf3_runs_gbit_s
                .iter()
                .map(|x| (x * 10.0).round() / 10.0)
                .collect::<Vec<_>>(),
            g,
            r.limits.iperf3_mb_s.unwrap_or(0.0)
        );
    }
    for (k, v) in &r.limits.raw_fio {
        let _ = writeln!(
            s,
            "- raw fio (io_uring, O_DIRECT, image file) {k}: {:.0} IOPS, {:.1} MB/s, p50 {:.0} µs, p99 {:.0} µs",
            v.get("iops").and_then(|x| x.as_f64()).unwrap_or(0.0),
            v.get("mb_s").and_then(|x| x.as_f64()).unwrap_or(0.0),
            v.get("p50_us").and_then(|x| x.as_f64()).unwrap_or(0.0),
            v.get("p99_us").and_then(|x| x.as_f64()).unwrap_or(0.0),
        );
    }
    if !r.idle_cpu_s_per_s.is_empty() {
        let idle: Vec<String> = r
            .idle_cpu_s_per_s
            .iter()
            .map(|(k, v)| format!("{k} {:.1} %", v * 100.0))
            .collect();
        let _ = writeln!(
            s,
            "- idle target CPU (1 s, no clients): {}",
            idle.join(", ")
        );
    }
    let _ = writeln!(s, "\n## Results (medians of the A/B repetitions)\n");
    let _ = writeln!(
        s,
        "IOPS and MB/s as the client reports them; latency p50/p99/p99.9 in µs (iscsi-perf reports none); \
         target CPU = utime+stime of the target process (tgtd with all its threads) per I/O, and over the run time (core busy, 100 % = one core); \
         client CPU = user+sys seconds of the client process per run; RSS of the target after the runs.\n"
    );
    let _ = writeln!(
        s,
        "| backing | client | workload | Tandem IOPS | tgt IOPS | IOPS ratio | Tandem MB/s | tgt MB/s | Tandem lat p50/p99/p99.9 | tgt lat p50/p99/p99.9 | p99 ratio | Tandem CPU µs/IO | tgt CPU µs/IO | CPU ratio | target core busy T/t | client CPU s T/t | client IOPS/CPU-s T/t | RSS MiB T/t |"
    );
    let _ = writeln!(
        s,
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    );
    for row in &r.rows {
        let (a, b) = (&row.tandem, &row.tgt);
        let _ = writeln!(
            s,
            "| {:?} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0}/{:.0} % | {:.2}/{:.2} | {}/{} | {}/{} |",
            row.backing,
            row.client.name(),
            row.label,
            f0(a.iops),
            f0(b.iops),
            rat(row.iops_ratio),
            f1(a.mb_s),
            f1(b.mb_s),
            lat(a),
            lat(b),
            rat(row.p99_ratio),
            f1(a.target_cpu_us_per_io),
            f1(b.target_cpu_us_per_io),
            rat(row.cpu_per_io_ratio),
            a.target_core_busy * 100.0,
            b.target_core_busy * 100.0,
            a.client_cpu_s,
            b.client_cpu_s,
            f0(a.client_iops_per_cpu_s),
            f0(b.client_iops_per_cpu_s),
            f0(a.target_rss_mib),
            f0(b.target_rss_mib),
        );
    }
    let _ = writeln!(s, "\n## Goals (issue 3, item 5)\n");
    let _ = writeln!(s, "| goal | measured | target | result |");
    let _ = writeln!(s, "|---|---|---|---|");
    for g in &r.goals {
        let res = match g.pass {
            Some(true) => "PASS",
            Some(false) => "MISS",
            None => "n/a",
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} — {} |",
            g.name, g.measured, g.goal, res, g.margin
        );
    }
    if !r.failures.is_empty() {
        let _ = writeln!(s, "\n## Failures\n");
        for f in &r.failures {
            let _ = writeln!(s, "- {f}");
        }
    }
    s
}

/// Latency-percentile plot (SVG): x = percentile on a "nines" scale, y = latency (log µs), one
/// line per target and workload, from our load generator on the RAM-backed targets.
pub fn svg(r: &Report) -> String {
    type Series = (String, &'static str, bool, Vec<(f64, f64)>);
    let series: Vec<Series> = {
        let mut v = Vec::new();
        // One colour per workload: Tandem solid, tgt dashed.
        let palette = [
            ("#1f77b4", "#1f77b4"),
            ("#d62728", "#d62728"),
            ("#2ca02c", "#2ca02c"),
            ("#9467bd", "#9467bd"),
        ];
        let wanted = [RR1, RR32, RW1, RW32];
        for (i, w) in wanted.iter().enumerate() {
            if let Some(row) = find(r, Backing::Ram, Client::Loadgen, *w) {
                let (ca, cb) = palette[i % palette.len()];
                if !row.tandem.percentiles.is_empty() {
                    v.push((
                        format!("Tandem {}", w.label()),
                        ca,
                        false,
                        row.tandem.percentiles.clone(),
                    ));
                }
                if !row.tgt.percentiles.is_empty() {
                    v.push((
                        format!("tgt {}", w.label()),
                        cb,
                        true,
                        row.tgt.percentiles.clone(),
                    ));
                }
            }
        }
        v
    };
    let (w, h) = (900.0, 560.0);
    let (left, right, top, bottom) = (80.0, 260.0, 40.0, 60.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let nines = |p: f64| -> f64 { -(1.0 - (p / 100.0).min(0.99999)).log10() };
    let x_max = 5.0;
    let mut y_min = f64::MAX;
    let mut y_max: f64 = 1.0;
    for (_, _, _, pts) in &series {
        for &(_, us) in pts {
            if us > 0.0 {
                y_min = y_min.min(us);
                y_max = y_max.max(us);
            }
        }
    }
    if y_min == f64::MAX {
        y_min = 1.0;
    }
    let ly0 = y_min.log10().floor();
    let ly1 = y_max.log10().ceil().max(ly0 + 1.0);
    let xp = |p: f64| left + nines(p) / x_max * pw;
    let yp = |us: f64| top + ph - (us.max(1e-3).log10() - ly0) / (ly1 - ly0) * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">Latency percentiles, RAM-backed, tandem-loadgen ({} {})</text>"#,
        left + pw / 2.0,
        r.host,
        r.date
    );
    for (p, label) in [
        (0.0, "0"),
        (50.0, "50"),
        (90.0, "90"),
        (99.0, "99"),
        (99.9, "99.9"),
        (99.99, "99.99"),
        (99.999, "99.999"),
    ] {
        let x = xp(p);
        let _ = writeln!(
            s,
            r##"<line x1="{x}" y1="{top}" x2="{x}" y2="{}" stroke="#ddd"/><text x="{x}" y="{}" text-anchor="middle">{label}</text>"##,
            top + ph,
            top + ph + 18.0
        );
    }
    let mut e = ly0;
    while e <= ly1 {
        for m in [1.0, 2.0, 5.0] {
            let v = 10f64.powf(e) * m;
            if v.log10() > ly1 + 1e-9 {
                continue;
            }
            let y = yp(v);
            let _ = writeln!(
                s,
                r##"<line x1="{left}" y1="{y}" x2="{}" y2="{y}" stroke="{}"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
                left + pw,
                if m == 1.0 { "#ccc" } else { "#eee" },
                left - 6.0,
                y + 4.0,
                if v >= 1.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v}")
                }
            );
        }
        e += 1.0;
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile</text><text x="20" y="{}" transform="rotate(-90 20 {})" text-anchor="middle">latency (µs, log)</text>"#,
        left + pw / 2.0,
        h - 15.0,
        top + ph / 2.0,
        top + ph / 2.0
    );
    let _ = writeln!(
        s,
        r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
    );
    for (i, (name, color, dashed, pts)) in series.iter().enumerate() {
        let path: Vec<String> = pts
            .iter()
            .filter(|(_, us)| *us > 0.0)
            .map(|&(p, us)| format!("{:.1},{:.1}", xp(p), yp(us)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" {} points="{}"/>"#,
            if *dashed {
                r#"stroke-dasharray="6 4""#
            } else {
                ""
            },
            path.join(" ")
        );
        let ly = top + 10.0 + i as f64 * 20.0;
        let lx = left + pw + 15.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2" {}/><text x="{}" y="{}">{name}</text>"#,
            lx + 30.0,
            if *dashed {
                r#"stroke-dasharray="6 4""#
            } else {
                ""
            },
            lx + 36.0,
            ly + 4.0
        );
    }
    let _ = writeln!(s, "</svg>");
    s
}
