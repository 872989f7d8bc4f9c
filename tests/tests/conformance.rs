//! libiscsi's `iscsi-test-cu` against a RAM device and a file device. Every test must pass
//! (or be skipped) except those listed, with a reason, in tests/conformance/expected-failures.txt.

use std::time::Duration;
use tandem_tests::e2e::conformance::{self, expected_failures};
use tandem_tests::e2e::cunit::Outcome;
use tandem_tests::e2e::procs::Target;

const SUITE_TIMEOUT: Duration = Duration::from_secs(90);

fn run_all(label: &str, target: &Target) {
    let expected = expected_failures(include_str!("../conformance/expected-failures.txt"));
    let url = target.url(0);
    let mut results = Vec::new();
    for suite in conformance::suites() {
        results.extend(conformance::run_suite(&url, &suite, SUITE_TIMEOUT));
    }
    let counts = conformance::report(label, &results);
    let unexpected: Vec<String> = results
        .iter()
        .filter(|r| r.outcome == Outcome::Failed && !expected.contains_key(&r.name))
        .map(|r| format!("{}: {}", r.name, r.detail.lines().next().unwrap_or("")))
        .collect();
    for r in results
        .iter()
        .filter(|r| r.outcome != Outcome::Failed && expected.contains_key(&r.name))
    {
        eprintln!(
            "[{label}] note: {} is listed as an expected failure but did not fail",
            r.name
        );
    }
    assert!(
        counts.passed > 0,
        "no test passed: the target is not serving"
    );
    assert!(
        unexpected.is_empty(),
        "[{label}] unexpected failures:\n{}",
        unexpected.join("\n")
    );
}

#[test]
fn iscsi_test_cu_ram_device() {
    let t = Target::serve("ram", &["--ram", "256MiB"]);
    run_all("ram", &t);
}

#[test]
fn iscsi_test_cu_file_device() {
    let dir = tempfile::Builder::new()
        .prefix("tandem-conf")
        .tempdir_in(tandem_tests::e2e::procs::scratch_dir())
        .expect("temp dir");
    let img = dir.path().join("disk.img");
    let t = Target::serve(
        "file",
        &[
            "--file",
            img.to_str().expect("utf-8 path"),
            "--size",
            "256MiB",
        ],
    );
    run_all("file", &t);
}
