//! Parses the output of libiscsi's `iscsi-test-cu` (CUnit "verbose" mode).
//!
//! CUnit reports a test that printed `[SKIPPED]` as passed; we count those separately, so a
//! "pass" here is a genuine pass.

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Outcome {
    Passed,
    Skipped,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TestResult {
    /// `Suite.Test`, e.g. `Read10.Simple`.
    pub name: String,
    pub outcome: Outcome,
    /// Failure or skip details as printed.
    pub detail: String,
    /// `[FAILED]` lines the test printed before its verdict: a helper that
    /// saw a wrong answer but did not assert, so CUnit may still say passed.
    /// Lines after the verdict belong to the teardown or suite cleanup.
    pub failed_lines: Vec<String>,
}

/// Parses one `iscsi-test-cu` run. Tests that started but never finished (the suite hung
/// and was killed) are reported as failed with detail "did not finish".
pub fn parse(output: &str) -> Vec<TestResult> {
    let mut results = Vec::new();
    let mut suite = String::new();
    let mut current: Option<(String, String)> = None;
    for line in output.lines() {
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix("Suite: ") {
            suite = rest.trim().to_string();
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix("Test: ") {
            if let Some((name, _)) = current.take() {
                results.push(finish(name, Outcome::Failed, "did not finish".into()));
            }
            let (name, tail) = match rest.split_once(" ...") {
                Some((n, t)) => (n.trim().to_string(), t.to_string()),
                None => (rest.trim().to_string(), String::new()),
            };
            let full = format!("{suite}.{name}");
            current = Some((full, String::new()));
            if let Some(done) = consume(&mut current, &tail) {
                results.push(done);
            }
            continue;
        }
        if trimmed.starts_with("Run Summary:") {
            if let Some((name, _)) = current.take() {
                results.push(finish(name, Outcome::Failed, "did not finish".into()));
            }
            continue;
        }
        if current.is_some() {
            if let Some(done) = consume(&mut current, line) {
                results.push(done);
            }
        }
    }
    if let Some((name, _)) = current.take() {
        results.push(finish(name, Outcome::Failed, "did not finish".into()));
    }
    results
}

fn finish(name: String, outcome: Outcome, detail: String) -> TestResult {
    TestResult {
        name,
        outcome,
        detail: detail.trim().to_string(),
        failed_lines: Vec::new(),
    }
}

/// The part of a line printed before CUnit's "passed" verdict, if the line
/// carries that verdict.
fn before_passed(t: &str) -> Option<&str> {
    if t.trim_start().starts_with("passed") {
        return Some("");
    }
    if let Some(i) = t.find("...passed") {
        return Some(&t[..i]);
    }
    t.strip_suffix("passed")
}

/// Adds one line of a running test's output; returns the result if the line ends the test.
fn consume(current: &mut Option<(String, String)>, line: &str) -> Option<TestResult> {
    let (_, text) = current.as_mut()?;
    let t = line.trim_end();
    // CUnit ends a test with "passed" or "FAILED" at the end of a line; "[FAILED]" inside a
    // line is the test's own log and decides nothing.
    // CUnit prints its verdict right after " ..." or at the start of a line; a test's
    // teardown may log more on the same line after it.
    let lead = t.trim_start();
    let inside = before_passed(t);
    let ends_failed = t.ends_with("...FAILED") || lead == "FAILED" || lead.starts_with("FAILED ");
    text.push_str(inside.unwrap_or(line));
    text.push('\n');
    if inside.is_some() {
        let (name, text) = current.take()?;
        let outcome = if text.contains("[SKIPPED]") {
            Outcome::Skipped
        } else {
            Outcome::Passed
        };
        let detail = if outcome == Outcome::Skipped {
            first_skip_reason(&text)
        } else {
            String::new()
        };
        let mut r = finish(name, outcome, detail);
        r.failed_lines = text
            .lines()
            .filter(|l| l.contains("[FAILED]"))
            .map(|l| l.trim().to_string())
            .collect();
        return Some(r);
    }
    if ends_failed {
        let (name, text) = current.take()?;
        return Some(finish(name, Outcome::Failed, text));
    }
    None
}

fn first_skip_reason(text: &str) -> String {
    text.lines()
        .find_map(|l| l.split_once("[SKIPPED]").map(|(_, r)| r.trim().to_string()))
        .unwrap_or_default()
}

/// CUnit prints the failure detail lines after "FAILED"; attach them to the last failure.
pub fn attach_failure_details(output: &str, results: &mut [TestResult]) {
    let mut lines = output.lines().peekable();
    let mut idx = 0usize;
    while let Some(line) = lines.next() {
        if line.contains("FAILED") {
            while idx < results.len() && results[idx].outcome != Outcome::Failed {
                idx += 1;
            }
            let mut detail = String::new();
            while let Some(next) = lines.peek() {
                let n = next.trim_start();
                if n.starts_with("Test: ")
                    || n.starts_with("Run Summary")
                    || n.starts_with("Suite: ")
                {
                    break;
                }
                detail.push_str(n);
                detail.push('\n');
                lines.next();
            }
            if let Some(r) = results.get_mut(idx) {
                r.detail = detail.trim().to_string();
            }
            idx += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Suite: CompareAndWrite
  Test: Simple ...    [SKIPPED] COMPAREANDWRITE is not implemented.
    [SKIPPED] COMPAREANDWRITE is not implemented.
passed
  Test: DpoFua ...passed
  Test: Miscompare ...FAILED
    1. test_compareandwrite_miscompare.c:92  - status == SCSI_STATUS_CHECK_CONDITION
  Test: Unwritten ...
Run Summary:    Type  Total    Ran Passed Failed Inactive
";

    #[test]
    fn verdict_followed_by_teardown_log_counts() {
        let out = "Suite: Reserve6\n  Test: LUNReset ...    [FAILED] RESERVE6 command: failed\npassed    [FAILED] PRIN command: failed\n";
        let r = parse(out);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].outcome, Outcome::Passed);
        // The RESERVE6 line is the test's own; the PRIN line comes from the
        // suite cleanup after the verdict.
        assert_eq!(r[0].failed_lines, vec!["[FAILED] RESERVE6 command: failed"]);
    }

    #[test]
    fn failed_lines_inside_a_passed_test_are_kept() {
        let out = "Suite: iSCSIdatasn\n  Test: iSCSIDataSnInvalid ...\n    Send writes\n    [FAILED] WRITE10 command: failed\n    more\npassed\n  Test: Clean ...passed\n";
        let r = parse(out);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].outcome, Outcome::Passed);
        assert_eq!(r[0].failed_lines, vec!["[FAILED] WRITE10 command: failed"]);
        assert!(r[1].failed_lines.is_empty());
    }

    #[test]
    fn skipped_passed_failed_and_unfinished_are_told_apart() {
        let mut r = parse(SAMPLE);
        attach_failure_details(SAMPLE, &mut r);
        let got: Vec<(&str, Outcome)> = r.iter().map(|t| (t.name.as_str(), t.outcome)).collect();
        assert_eq!(
            got,
            vec![
                ("CompareAndWrite.Simple", Outcome::Skipped),
                ("CompareAndWrite.DpoFua", Outcome::Passed),
                ("CompareAndWrite.Miscompare", Outcome::Failed),
                ("CompareAndWrite.Unwritten", Outcome::Failed),
            ]
        );
        assert_eq!(r[0].detail, "COMPAREANDWRITE is not implemented.");
        assert!(r[2].detail.contains("test_compareandwrite_miscompare.c:92"));
        assert_eq!(r[3].detail, "did not finish");
    }
}
