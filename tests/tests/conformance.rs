//! libiscsi's `iscsi-test-cu` against a RAM device and a file device. Every test must pass
//! (or be skipped) except those listed, with a reason, in tests/conformance/expected-failures.txt.

use std::time::Duration;
use tandem_tests::e2e::conformance::run_and_check;
use tandem_tests::e2e::procs::{scratch_dir, Target};

const SUITE_TIMEOUT: Duration = Duration::from_secs(90);

#[test]
fn iscsi_test_cu_ram_device() {
    let t = Target::serve("ram", &["--ram", "256MiB"]);
    run_and_check("ram", &t.url(0), SUITE_TIMEOUT);
}

#[test]
fn iscsi_test_cu_file_device() {
    let dir = tempfile::Builder::new()
        .prefix("tandem-conf")
        .tempdir_in(scratch_dir())
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
    run_and_check("file", &t.url(0), SUITE_TIMEOUT);
}
