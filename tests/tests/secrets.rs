//! Issue 13 (Low 15): `serve --chap-secret` put the secret on the command line, readable by
//! every local user. The secret now comes from a file or the environment, and the command-line
//! form warns.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;
use tandem_tests::e2e::procs::{bin, free_port, wait_for_port, Proc, Target};

const SECRET: &str = "correct-horse-battery";

fn login(t_portal: SocketAddr, iqn: &str, secret: &str) -> bool {
    Command::new("iscsi-inq")
        .arg(format!("iscsi://alice%{secret}@{t_portal}/{iqn}/0"))
        .output()
        .expect("iscsi-inq (libiscsi-bin)")
        .status
        .success()
}

#[test]
fn chap_secret_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("chap");
    std::fs::write(&file, format!("{SECRET}\n")).unwrap();
    let t = Target::serve(
        "chapfile",
        &[
            "--ram",
            "16MiB",
            "--chap-user",
            "alice",
            "--chap-secret-file",
            file.to_str().unwrap(),
        ],
    );
    assert!(!login(t.portal, &t.iqn, "wrong-secret-123"));
    assert!(
        login(t.portal, &t.iqn, SECRET),
        "the file's secret (newline dropped) works"
    );
}

#[test]
fn chap_secret_from_the_environment() {
    let portal: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let iqn = "iqn.2026-11.io.tandem:test-chapenv";
    let mut cmd = Command::new(bin("tandem-dataplane"));
    cmd.args([
        "serve",
        "--ram",
        "16MiB",
        "--chap-user",
        "alice",
        "--iqn",
        iqn,
    ])
    .arg("--portal")
    .arg(portal.to_string())
    .env("TANDEM_CHAP_SECRET", SECRET)
    .env("TANDEM_LOG", "warn");
    let _p = Proc::spawn(cmd, "tandem-dataplane");
    assert!(wait_for_port(portal, Duration::from_secs(20)));
    assert!(!login(portal, iqn, "wrong-secret-123"));
    assert!(login(portal, iqn, SECRET));
}

#[test]
fn command_line_secret_warns_and_bad_secrets_are_refused() {
    let run = |args: &[&str]| {
        Command::new(bin("tandem-dataplane"))
            .args(["serve", "--ram", "16MiB", "--portal", "127.0.0.1:1"])
            .args(args)
            .env_remove("TANDEM_CHAP_SECRET")
            .output()
            .unwrap()
    };
    // Too short to serve, so the process ends after the warning.
    let out = run(&["--chap-user", "alice", "--chap-secret", "short"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("visible to every local user"), "{err}");
    assert!(err.contains("5 bytes"), "{err}");
    let out = run(&[
        "--chap-user",
        "alice",
        "--chap-secret-file",
        "/nonexistent/chap",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("/nonexistent/chap"),
        "{err}"
    );
    let out = run(&["--chap-user", "alice"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("needs a secret"),
        "{err}"
    );
}
