//! Starts `tandem-dataplane --config DIR/node.toml --control-socket DIR/dataplane.sock`,
//! connects to its socket, and restarts it with exponential backoff when it exits.
//!
//! ```text
//!   starting --(Hello answered)--> running --(exit / hung)--> restarting --(backoff)--> starting
//!      |                                                                                  ^
//!      +--(spawn fails, exits, or no socket within STARTUP_TIMEOUT)--> stopped --(backoff)-+
//! ```
//! While a data plane starts, the config lock is held: it loads exactly the config that
//! `applied` then records, and no change slips in between.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::ipc_client::IpcClient;
use crate::service::Node;

/// How long a new data plane may take to open its control socket.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a data plane may take to stop after SIGTERM (flushing write-back caches).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A data plane that ran this long resets the backoff.
const STABLE_RUN: Duration = Duration::from_secs(60);

/// The data plane binary: `--dataplane-bin`, else `tandem-dataplane` next to this executable,
/// else `tandem-dataplane` on PATH.
pub fn default_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("tandem-dataplane")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("tandem-dataplane"))
}

pub async fn supervise(node: Arc<Node>, bin: PathBuf, mut shutdown: watch::Receiver<bool>) {
    let pid_file = node.data_dir.join("dataplane.pid");
    stop_stale(&pid_file, &node.socket_path).await;
    let mut backoff = BACKOFF_MIN;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let started = Instant::now();
        match start(&node, &bin, &pid_file).await {
            Ok(mut child) => {
                // Drop a restart request meant for a previous data plane.
                let _ =
                    tokio::time::timeout(Duration::ZERO, node.restart_dataplane.notified()).await;
                enum Event {
                    Exited(std::io::Result<std::process::ExitStatus>),
                    Hung,
                    Shutdown,
                }
                let event = tokio::select! {
                    status = child.wait() => Event::Exited(status),
                    _ = node.restart_dataplane.notified() => Event::Hung,
                    _ = shutdown.changed() => Event::Shutdown,
                };
                let status = match event {
                    Event::Exited(status) => status.map(|s| s.to_string()),
                    Event::Hung => {
                        tracing::warn!("data plane stopped answering; restarting it");
                        let _ = child.start_kill();
                        child
                            .wait()
                            .await
                            .map(|s| format!("killed after it stopped answering ({s})"))
                    }
                    Event::Shutdown => {
                        node.disconnected().await;
                        stop(&mut child).await;
                        let _ = std::fs::remove_file(&pid_file);
                        node.set_dataplane(|d| {
                            d.state = "stopped".into();
                            d.pid = None;
                        });
                        return;
                    }
                };
                node.disconnected().await;
                let exit = status.unwrap_or_else(|e| format!("wait failed: {e}"));
                tracing::error!(%exit, "data plane exited; restarting in {backoff:?}");
                node.set_dataplane(|d| {
                    d.state = "restarting".into();
                    d.pid = None;
                    d.restarts += 1;
                    d.last_exit = Some(exit);
                });
            }
            Err(e) => {
                tracing::error!(error = %e, "data plane did not start; retrying in {backoff:?}");
                node.set_dataplane(|d| {
                    d.state = "stopped".into();
                    d.pid = None;
                    d.last_error = Some(e);
                });
            }
        }
        if started.elapsed() > STABLE_RUN {
            backoff = BACKOFF_MIN;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Spawns the data plane and waits for its socket, holding the config lock throughout.
async fn start(node: &Node, bin: &Path, pid_file: &Path) -> Result<Child, String> {
    let mut st = node.lock_state().await;
    let _ = std::fs::remove_file(&node.socket_path);
    node.set_dataplane(|d| d.state = "starting".into());
    let mut child = Command::new(bin)
        .arg("--config")
        .arg(&node.config_path)
        .arg("--control-socket")
        .arg(&node.socket_path)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    let pid = child.id();
    if let Some(pid) = pid {
        if let Err(e) = tandem_config::save_atomic(pid_file, format!("{pid}\n").as_bytes()) {
            tracing::warn!(error = %e, "cannot write {}", pid_file.display());
        }
    }
    let socket = node.socket_path.clone();
    let connect = async {
        loop {
            match IpcClient::connect(&socket).await {
                Ok(client) => return client,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    };
    let outcome = tokio::select! {
        client = tokio::time::timeout(STARTUP_TIMEOUT, connect) => client.map_err(|_| {
            format!("no control socket at {} after {STARTUP_TIMEOUT:?}", socket.display())
        }),
        status = child.wait() => Err(match status {
            Ok(s) => format!("exited during startup ({s}); its log is in the tandem-control log"),
            Err(e) => format!("wait failed: {e}"),
        }),
    };
    match outcome {
        Ok(client) => {
            node.connected(&mut st, client).await;
            node.set_dataplane(|d| {
                d.state = "running".into();
                d.pid = pid;
                d.last_error = None;
            });
            tracing::info!(?pid, "data plane running");
            Ok(child)
        }
        Err(e) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            Err(e)
        }
    }
}

/// SIGTERM, then SIGKILL after [`STOP_TIMEOUT`].
async fn stop(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        if tokio::time::timeout(STOP_TIMEOUT, child.wait())
            .await
            .is_ok()
        {
            return;
        }
        tracing::warn!(
            pid,
            "data plane ignored SIGTERM for {STOP_TIMEOUT:?}; killing it"
        );
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// A data plane left running by a control service that was killed (SIGKILL) still holds the
/// portals: stop it if its command line names our socket.
async fn stop_stale(pid_file: &Path, socket: &Path) {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return;
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline);
    if !cmdline.contains("tandem-dataplane") || !cmdline.contains(&*socket.to_string_lossy()) {
        return;
    }
    tracing::warn!(pid, "stopping a data plane left over from a previous run");
    let pid = Pid::from_raw(pid);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline && kill(pid, None).is_ok() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = kill(pid, Signal::SIGKILL);
    let _ = std::fs::remove_file(pid_file);
}
