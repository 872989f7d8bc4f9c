//! Runs libiscsi's `iscsi-test-cu` one top-level suite per process, under a timeout, and
//! counts genuine passes, skips and failures.

use super::cunit::{self, Outcome, TestResult};
use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const INITIATOR_1: &str = "iqn.2026-11.io.tandem.test:initiator-1";
pub const INITIATOR_2: &str = "iqn.2026-11.io.tandem.test:initiator-2";

/// The top-level `ALL.<suite>` names `iscsi-test-cu -l` lists.
pub fn suites() -> Vec<String> {
    let out = Command::new("iscsi-test-cu")
        .arg("-l")
        .output()
        .expect("iscsi-test-cu is installed (Debian package libiscsi-bin)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("ALL.") && l.matches('.').count() == 1)
        .map(str::to_string)
        .collect()
}

/// Runs one suite; a suite that outlives `timeout` is killed and its unfinished test fails.
pub fn run_suite(url: &str, suite: &str, timeout: Duration) -> Vec<TestResult> {
    let mut args = vec![
        "--dataloss",
        "-i",
        INITIATOR_1,
        "-I",
        INITIATOR_2,
        "-v",
        "-t",
        suite,
        url,
    ];
    if suite == "ALL.MultipathIO" {
        // A second session to the same LUN stands in for a second path.
        args.push(url);
    }
    let mut child = Command::new("iscsi-test-cu")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start iscsi-test-cu");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let mut timed_out = false;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if start.elapsed() > timeout {
            timed_out = true;
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = out_reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    let mut results = cunit::parse(&out);
    cunit::attach_failure_details(&out, &mut results);
    if results.is_empty() {
        // The suite never started a test (e.g. could not log in): count it as one failure.
        let why = if timed_out {
            "timed out before any test".to_string()
        } else {
            format!("no test ran: {}", err.trim())
        };
        results.push(TestResult {
            name: format!("{}.(suite)", suite.trim_start_matches("ALL.")),
            outcome: Outcome::Failed,
            detail: why,
        });
    }
    if timed_out {
        for r in results.iter_mut().filter(|r| r.detail == "did not finish") {
            r.detail = format!("suite killed after {}s", timeout.as_secs());
        }
    }
    results
}

#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Counts {
    pub passed: usize,
    pub skipped: usize,
    pub failed: usize,
}

pub fn counts(results: &[TestResult]) -> Counts {
    let mut c = Counts::default();
    for r in results {
        match r.outcome {
            Outcome::Passed => c.passed += 1,
            Outcome::Skipped => c.skipped += 1,
            Outcome::Failed => c.failed += 1,
        }
    }
    c
}

/// Reads the committed list of tests allowed to fail: `Suite.Test  reason` per line,
/// `#` comments and blank lines ignored.
pub fn expected_failures(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| match l.split_once(char::is_whitespace) {
            Some((name, reason)) => (name.to_string(), reason.trim().to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect()
}

/// Prints one line per failure and skip, then the totals.
pub fn report(label: &str, results: &[TestResult]) -> Counts {
    let c = counts(results);
    for r in results {
        match r.outcome {
            Outcome::Failed => eprintln!(
                "[{label}] FAIL {}: {}",
                r.name,
                r.detail.lines().next().unwrap_or("")
            ),
            Outcome::Skipped => eprintln!("[{label}] skip {}: {}", r.name, r.detail),
            Outcome::Passed => {}
        }
    }
    eprintln!(
        "[{label}] iscsi-test-cu: {} genuine passes, {} skipped, {} failed, of {} tests",
        c.passed,
        c.skipped,
        c.failed,
        results.len()
    );
    c
}

/// The committed list of tests allowed to fail, with reasons.
pub const EXPECTED_FAILURES: &str = include_str!("../../conformance/expected-failures.txt");

/// Runs every suite against `url` and panics if a test fails that is not in the committed
/// list of expected failures (or if nothing passed at all).
pub fn run_and_check(label: &str, url: &str, suite_timeout: Duration) {
    let expected = expected_failures(EXPECTED_FAILURES);
    let mut results = Vec::new();
    for suite in suites() {
        results.extend(run_suite(url, &suite, suite_timeout));
    }
    let counts = report(label, &results);
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
        "[{label}] no test passed: the target is not serving"
    );
    assert!(
        unexpected.is_empty(),
        "[{label}] unexpected failures:\n{}",
        unexpected.join("\n")
    );
}
