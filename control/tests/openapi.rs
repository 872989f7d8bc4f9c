//! docs/api/openapi.yaml lists exactly the routes the server has.

use std::collections::BTreeSet;

#[test]
fn every_route_is_documented_and_every_documented_path_exists() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let api = std::fs::read_to_string(format!("{root}/control/src/api.rs")).unwrap();
    let yaml = std::fs::read_to_string(format!("{root}/docs/api/openapi.yaml")).unwrap();
    let served: BTreeSet<String> = api
        .split(".route(")
        .skip(1)
        .map(|rest| {
            // rustfmt may put the path on the next line.
            let rest = rest.trim_start().strip_prefix('"').unwrap();
            let path = &rest[..rest.find('"').unwrap()];
            let path = path
                .split('/')
                .map(|seg| {
                    seg.strip_prefix(':')
                        .map_or(seg.to_string(), |p| format!("{{{p}}}"))
                })
                .collect::<Vec<_>>()
                .join("/");
            if path == "/metrics" {
                path
            } else {
                format!("/api/v1{path}")
            }
        })
        .collect();
    let documented: BTreeSet<String> = yaml
        .lines()
        .filter_map(|l| l.strip_prefix("  /"))
        .map(|l| format!("/{}", l.trim_end_matches(':')))
        .collect();
    assert_eq!(served, documented);
}
