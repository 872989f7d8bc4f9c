//! Helpers for the control service's process tests: start `tandem-control` on a free
//! 127.0.0.1 port, run the `tandem` CLI against it, find the data plane binary.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const CONTROL: &str = env!("CARGO_BIN_EXE_tandem-control");
pub const CLI: &str = env!("CARGO_BIN_EXE_tandem");

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `tandem-dataplane`: from `TANDEM_BIN_DIR` (CI sets it), else next to our binaries.
/// Panics with what to do when it is missing: these tests must not pass silently.
pub fn dataplane_bin() -> PathBuf {
    let dir = std::env::var_os("TANDEM_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(CONTROL).parent().unwrap().to_path_buf());
    let bin = dir.join("tandem-dataplane");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p tandem-dataplane`, or --release with TANDEM_BIN_DIR=target/release)",
        bin.display()
    );
    bin
}

/// Panics unless the libiscsi command-line tools are installed.
pub fn require_libiscsi() {
    for tool in ["iscsi-inq", "iscsi-readcapacity16", "iscsi-perf"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).exists()))
            .unwrap_or(false);
        assert!(
            found,
            "{tool} not found: install libiscsi-bin (scripts/install-deps.sh)"
        );
    }
}

pub struct Control {
    pub child: Child,
    pub api: String,
    pub data_dir: PathBuf,
}

impl Control {
    /// Starts tandem-control on a free API port with `extra` arguments.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Control {
        Self::try_start(data_dir, extra).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_start(data_dir: &Path, extra: &[&str]) -> Result<Control, String> {
        Self::try_start_at(data_dir, "127.0.0.1:0", extra)
    }

    /// Starts tandem-control with its API on `api` (e.g. `127.0.0.2:0`).
    pub fn try_start_at(data_dir: &Path, api: &str, extra: &[&str]) -> Result<Control, String> {
        let mut child = Command::new(CONTROL)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--api", api])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run tandem-control");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("tandem-control: api ") {
                    let _ = tx.send(
                        rest.split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_string(),
                    );
                }
            }
        });
        let (etx, erx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[control] {line}");
                all.push_str(&line);
                all.push('\n');
            }
            let _ = etx.send(all);
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(api) => Ok(Control {
                child,
                api,
                data_dir: data_dir.to_path_buf(),
            }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(erx.recv_timeout(Duration::from_secs(5)).unwrap_or_default())
            }
        }
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("token"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Runs `tandem --api .. --token-file .. ARGS`.
    pub fn cli(&self, args: &[&str]) -> Output {
        let out = Command::new(CLI)
            .args(["--api", &self.api, "--token-file"])
            .arg(self.data_dir.join("token"))
            .args(args)
            .output()
            .expect("run tandem");
        eprintln!(
            "$ tandem {}\n{}{}-> {:?}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            out.status.code()
        );
        out
    }

    /// Runs the CLI and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "tandem {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs the CLI with --json and parses stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).expect("CLI printed JSON")
    }

    /// Raw HTTP call; returns (status, body).
    pub fn http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, String) {
        http_call(&self.api, method, path, token, body)
    }

    /// SIGTERM and wait (graceful: the data plane is stopped too).
    pub fn stop(mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            for _ in 0..200 {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// One HTTP call to a control API at `api` (`http://ip:port`); returns (status, body).
pub fn http_call(
    api: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let mut req = ureq::request(method, &format!("{}{}", api, path));
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let result = match body {
        Some(b) => req.set("Content-Type", "application/json").send_string(b),
        None => req.call(),
    };
    match result {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("{method} {path}: {e}"),
    }
}
