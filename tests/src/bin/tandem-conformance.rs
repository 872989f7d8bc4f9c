//! Runs libiscsi's conformance suite against any target URL, one suite per process, and
//! prints genuine pass / skip / fail counts (used for the tgt baseline).
//!
//! `tandem-conformance iscsi://127.0.0.1:3260/iqn.../1 [--json FILE] [--timeout-s N]`

#![forbid(unsafe_code)]

use std::time::Duration;
use tandem_tests::e2e::conformance;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut url = None;
    let mut json = None;
    let mut timeout = Duration::from_secs(120);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--json" => json = args.next(),
            "--timeout-s" => {
                timeout =
                    Duration::from_secs(args.next().and_then(|s| s.parse().ok()).unwrap_or(120))
            }
            _ => url = Some(a),
        }
    }
    let Some(url) = url else {
        eprintln!("usage: tandem-conformance ISCSI_URL [--json FILE] [--timeout-s N]");
        std::process::exit(2);
    };
    let mut all = Vec::new();
    for s in conformance::suites() {
        all.extend(conformance::run_suite(&url, &s, timeout));
    }
    let c = conformance::report("target", &all);
    if let Some(path) = json {
        let v = serde_json::json!({ "url": url, "counts": c, "results": all });
        std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap_or_default())
            .expect("write JSON report");
    }
}
