//! Runs libiscsi's `iscsi-test-cu` one top-level suite per process, under a timeout, and
//! counts genuine passes, skips and failures.

use super::cunit::{self, Outcome, TestResult};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
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
    if suite == "ALL.MultipathIO" {
        // A second session to the same LUN stands in for a second path.
        return run_suite_on(&[url, url], suite, timeout);
    }
    run_suite_on(&[url], suite, timeout)
}

/// Runs one suite given one URL per path (`ALL.MultipathIO` takes two: e.g. two nodes'
/// targets of one replicated device).
pub fn run_suite_on(urls: &[&str], suite: &str, timeout: Duration) -> Vec<TestResult> {
    let mut args = vec![
        "--dataloss",
        "-i",
        INITIATOR_1,
        "-I",
        INITIATOR_2,
        "-v",
        "-t",
        suite,
    ];
    args.extend_from_slice(urls);
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
            failed_lines: Vec::new(),
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

/// The committed list of tests that pass although they print `[FAILED]`
/// (a helper checking an expected error logs it), with reasons.
pub const FAILED_LINES_ALLOWED: &str = include_str!("../../conformance/failed-lines-allowed.txt");

/// Where the per-suite lists of tests expected to pass live: one file per
/// `ALL.<suite>`, named `<suite>.txt`, one `Suite.Test` per line.
pub fn expected_passes_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance/expected-passes")
}

/// Parses one expected-passes file (`#` comments and blank lines ignored).
pub fn parse_expected_passes(text: &str) -> BTreeSet<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split_whitespace().next().unwrap_or(l).to_string())
        .collect()
}

/// What the committed files say a run must look like.
#[derive(Debug, Default)]
pub struct Expectations {
    /// Per `ALL.<suite>`: the tests that must pass genuinely (not skip).
    /// A suite missing here has no list yet, which is itself a failure.
    pub passes: BTreeMap<String, BTreeSet<String>>,
    /// Tests allowed to fail, with reasons.
    pub failures: BTreeMap<String, String>,
    /// Passing tests allowed to print `[FAILED]`, with reasons.
    pub failed_lines_ok: BTreeMap<String, String>,
}

impl Expectations {
    /// Loads the committed lists for `suites`.
    pub fn load(suites: &[String]) -> Expectations {
        let dir = expected_passes_dir();
        let passes = suites
            .iter()
            .filter_map(|s| {
                let file = dir.join(format!("{}.txt", s.trim_start_matches("ALL.")));
                let text = std::fs::read_to_string(file).ok()?;
                Some((s.clone(), parse_expected_passes(&text)))
            })
            .collect();
        Expectations {
            passes,
            failures: expected_failures(EXPECTED_FAILURES),
            failed_lines_ok: expected_failures(FAILED_LINES_ALLOWED),
        }
    }
}

/// Compares one run (results per `ALL.<suite>`) with the expectations and
/// returns every discrepancy, each one line. Empty means the run is as
/// committed: every listed pass passed (a skip is a regression), nothing
/// passes unlisted, no unlisted failure, no unlisted `[FAILED]` inside a
/// passing test, and no stale entry in either exception list.
pub fn check(runs: &BTreeMap<String, Vec<TestResult>>, exp: &Expectations) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen: BTreeMap<&str, &TestResult> = BTreeMap::new();
    for (suite, results) in runs {
        let short = suite.trim_start_matches("ALL.");
        let by_name: BTreeMap<&str, &TestResult> =
            results.iter().map(|r| (r.name.as_str(), r)).collect();
        seen.extend(by_name.iter().map(|(k, v)| (*k, *v)));
        match exp.passes.get(suite) {
            None => problems.push(format!(
                "{suite}: no expected-passes/{short}.txt (record one and review it)"
            )),
            Some(list) => {
                for name in list {
                    match by_name.get(name.as_str()) {
                        Some(r) if r.outcome == Outcome::Passed => {}
                        Some(r) if r.outcome == Outcome::Skipped => problems
                            .push(format!("{name}: expected to pass, skipped: {}", r.detail)),
                        Some(r) => problems.push(format!(
                            "{name}: expected to pass, failed: {}",
                            r.detail.lines().next().unwrap_or("")
                        )),
                        None => problems.push(format!("{name}: expected to pass, did not run")),
                    }
                }
                for r in results {
                    if r.outcome == Outcome::Passed && !list.contains(&r.name) {
                        problems.push(format!(
                            "{}: passes but is not in expected-passes/{short}.txt (add it)",
                            r.name
                        ));
                    }
                }
            }
        }
        for r in results {
            if r.outcome == Outcome::Failed && !exp.failures.contains_key(&r.name) {
                problems.push(format!(
                    "{}: unexpected failure: {}",
                    r.name,
                    r.detail.lines().next().unwrap_or("")
                ));
            }
            if r.outcome == Outcome::Passed
                && !r.failed_lines.is_empty()
                && !exp.failed_lines_ok.contains_key(&r.name)
            {
                problems.push(format!(
                    "{}: passed but printed {}",
                    r.name,
                    r.failed_lines.join(" | ")
                ));
            }
        }
    }
    // Stale exceptions: only for tests that ran, so running a subset of the
    // suites does not flag the others.
    for (name, r) in &seen {
        if exp.failures.contains_key(*name) && r.outcome != Outcome::Failed {
            problems.push(format!(
                "{name}: listed in expected-failures.txt but did not fail (remove it)"
            ));
        }
        if exp.failed_lines_ok.contains_key(*name)
            && (r.outcome != Outcome::Passed || r.failed_lines.is_empty())
        {
            problems.push(format!(
                "{name}: listed in failed-lines-allowed.txt but printed no [FAILED] (remove it)"
            ));
        }
    }
    problems
}

/// Writes the expected-passes files from a run (`TANDEM_CONFORMANCE_RECORD=1`);
/// the result is to be reviewed before it is committed.
pub fn record_passes(runs: &BTreeMap<String, Vec<TestResult>>) {
    let dir = expected_passes_dir();
    std::fs::create_dir_all(&dir).expect("create expected-passes/");
    for (suite, results) in runs {
        let short = suite.trim_start_matches("ALL.");
        let mut text = format!(
            "# Tests of {suite} that pass genuinely (not skipped) on the RAM and file devices.\n"
        );
        for r in results.iter().filter(|r| r.outcome == Outcome::Passed) {
            text.push_str(&r.name);
            text.push('\n');
        }
        std::fs::write(dir.join(format!("{short}.txt")), text).expect("write list");
    }
}

/// Runs every suite against `url` and panics, listing every discrepancy,
/// unless the run matches the committed expectations (see [`check`]).
pub fn run_and_check(label: &str, url: &str, suite_timeout: Duration) {
    let suites = suites();
    let mut runs = BTreeMap::new();
    for suite in &suites {
        runs.insert(suite.clone(), run_suite(url, suite, suite_timeout));
    }
    let all: Vec<TestResult> = runs.values().flatten().cloned().collect();
    let counts = report(label, &all);
    if std::env::var_os("TANDEM_CONFORMANCE_RECORD").is_some() {
        record_passes(&runs);
        eprintln!("[{label}] recorded expected passes; review them before committing");
        return;
    }
    assert!(
        counts.passed > 0,
        "[{label}] no test passed: the target is not serving"
    );
    let problems = check(&runs, &Expectations::load(&suites));
    assert!(
        problems.is_empty(),
        "[{label}] conformance differs from tests/conformance:\n{}",
        problems.join("\n")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str, outcome: Outcome, failed: &[&str]) -> TestResult {
        TestResult {
            name: name.into(),
            outcome,
            detail: "why".into(),
            failed_lines: failed.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn exp(passes: &[&str]) -> Expectations {
        let mut e = Expectations::default();
        e.passes.insert(
            "ALL.Read10".into(),
            passes.iter().map(|s| s.to_string()).collect(),
        );
        e
    }

    fn run(results: Vec<TestResult>) -> BTreeMap<String, Vec<TestResult>> {
        BTreeMap::from([("ALL.Read10".to_string(), results)])
    }

    #[test]
    fn matching_run_is_clean() {
        let e = exp(&["Read10.Simple"]);
        let runs = run(vec![
            r("Read10.Simple", Outcome::Passed, &[]),
            r("Read10.Dpo", Outcome::Skipped, &[]),
        ]);
        assert!(check(&runs, &e).is_empty());
    }

    #[test]
    fn a_pass_turned_skip_or_failure_or_missing_fails() {
        let e = exp(&["Read10.Simple", "Read10.Beyond", "Read10.Gone"]);
        let runs = run(vec![
            r("Read10.Simple", Outcome::Skipped, &[]),
            r("Read10.Beyond", Outcome::Failed, &[]),
        ]);
        let p = check(&runs, &e);
        assert!(p
            .iter()
            .any(|l| l.starts_with("Read10.Simple: expected to pass, skipped")));
        assert!(p
            .iter()
            .any(|l| l.starts_with("Read10.Beyond: expected to pass, failed")));
        assert!(p
            .iter()
            .any(|l| l.starts_with("Read10.Beyond: unexpected failure")));
        assert!(p
            .iter()
            .any(|l| l.starts_with("Read10.Gone: expected to pass, did not run")));
    }

    #[test]
    fn failed_line_inside_a_pass_fails_unless_listed() {
        let mut e = exp(&["Read10.Simple"]);
        let runs = run(vec![r("Read10.Simple", Outcome::Passed, &["[FAILED] x"])]);
        assert_eq!(check(&runs, &e).len(), 1);
        e.failed_lines_ok.insert(
            "Read10.Simple".into(),
            "helper logs the expected error".into(),
        );
        assert!(check(&runs, &e).is_empty());
        // Once it stops printing, the entry is stale.
        let clean = run(vec![r("Read10.Simple", Outcome::Passed, &[])]);
        assert!(check(&clean, &e)[0].contains("failed-lines-allowed.txt"));
    }

    #[test]
    fn stale_expected_failure_and_unlisted_pass_and_missing_list_fail() {
        let mut e = exp(&[]);
        e.failures.insert("Read10.Simple".into(), "old bug".into());
        let runs = run(vec![r("Read10.Simple", Outcome::Passed, &[])]);
        let p = check(&runs, &e);
        assert!(p
            .iter()
            .any(|l| l.contains("not in expected-passes/Read10.txt")));
        assert!(p.iter().any(|l| l.contains("did not fail (remove it)")));
        let none = check(&runs, &Expectations::default());
        assert!(none[0].contains("no expected-passes/Read10.txt"));
    }
}
