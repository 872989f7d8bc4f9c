//! Startup and shutdown of `tandem-control`.

use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use tandem_config::{loopback_portal, names::is_node_name, NodeConfig};
use tokio::sync::watch;

use crate::service::Node;

pub const DEFAULT_API: &str = "127.0.0.1:3261";

pub struct Options {
    pub data_dir: PathBuf,
    pub api: SocketAddr,
    /// Replaces the configured portals when not empty.
    pub portals: Vec<SocketAddr>,
    /// Node name for a new configuration (default: the host name, else "tandem").
    pub node_name: Option<String>,
    /// None: run without a data plane (API and persistence only).
    pub dataplane_bin: Option<PathBuf>,
    /// Replaces `node.image_dirs` when not empty.
    pub image_dirs: Vec<PathBuf>,
    /// Data node or witness (`--role witness`: no data plane, hosts failover authorities).
    pub role: crate::ha::Role,
    /// Lease, margin and heartbeat timings.
    pub ha: crate::ha::HaSettings,
}

/// The host name if it is a valid node name.
fn host_node_name() -> Option<String> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = host.trim().split('.').next()?.to_ascii_lowercase();
    is_node_name(&name).then_some(name)
}

/// Removes temp files a killed save left behind (`.node.toml.tmp.*`).
fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name()
            .to_string_lossy()
            .starts_with(".node.toml.tmp.")
        {
            tracing::info!(path = %e.path().display(), "removing a temp file left by an interrupted save");
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Loads `DIR/node.toml` (or creates an empty one), applies `--portal`, loads or creates the
/// token. Refuses to start on an invalid config rather than overwrite it.
pub fn prepare(opts: &Options) -> Result<(NodeConfig, String), String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&opts.data_dir)
        .map_err(|e| format!("cannot create data dir {}: {e}", opts.data_dir.display()))?;
    remove_stale_temps(&opts.data_dir);
    let path = opts.data_dir.join("node.toml");
    let fix = "fix the file (or move it away to start empty) and start again";
    let mut config = if path.exists() {
        // Overrides apply before the rules: `--image-dir` can admit images that an older
        // node.toml keeps outside the data dir.
        NodeConfig::load_unvalidated(&path).map_err(|e| format!("{e}\n{fix}"))?
    } else {
        let name = opts
            .node_name
            .clone()
            .or_else(host_node_name)
            .unwrap_or_else(|| "tandem".into());
        let portals = if opts.portals.is_empty() {
            vec![loopback_portal(3260)]
        } else {
            opts.portals.clone()
        };
        tracing::info!(%name, "no configuration yet: creating {}", path.display());
        NodeConfig::empty(&name, portals)
    };
    if !opts.portals.is_empty() {
        config.node.portals = opts.portals.clone();
    }
    if !opts.image_dirs.is_empty() {
        config.node.image_dirs = opts.image_dirs.clone();
    }
    config.validate().map_err(|errors| {
        let e = tandem_config::ConfigError::Invalid {
            origin: path.display().to_string(),
            errors,
        };
        format!("{e}\n{fix}")
    })?;
    if !path.exists() || NodeConfig::load(&path).ok().as_ref() != Some(&config) {
        config.save(&path).map_err(|e| e.to_string())?;
    }
    let token_path = opts.data_dir.join("token");
    let token = crate::token::load_or_create(&token_path)
        .map_err(|e| format!("token file {}: {e}", token_path.display()))?;
    Ok((config, token))
}

/// The API speaks plain HTTP: beyond loopback the token and CHAP secrets cross the network
/// in the clear, so say so (issue 13, Low 15).
pub fn api_exposure_warning(api: SocketAddr) -> Option<String> {
    (!api.ip().is_loopback()).then(|| {
        format!(
            "--api {api} is reachable beyond this machine over plain HTTP: the token and CHAP \
             secrets cross the network unencrypted; listen on 127.0.0.1 and put a TLS reverse \
             proxy in front (docs/operations.md)"
        )
    })
}

/// Runs until `shutdown` fires: API server plus data plane supervisor.
pub async fn run(
    opts: Options,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let (config, token) = prepare(&opts)?;
    // No create runs yet: any `.NAME.partial` is from one a crash interrupted (issue 13, 12).
    crate::image_guard::clean_partials(&crate::image_guard::partial_dirs(&config, &opts.data_dir));
    if let Some(warning) = api_exposure_warning(opts.api) {
        tracing::warn!(api = %opts.api, "{warning}");
        eprintln!("tandem-control: warning: {warning}");
    }
    let listener = tokio::net::TcpListener::bind(opts.api)
        .await
        .map_err(|e| format!("cannot listen on {} for the API: {e}", opts.api))?;
    let api_addr = listener.local_addr().map_err(|e| e.to_string())?;
    let node = Node::new(
        opts.data_dir.clone(),
        config,
        api_addr.to_string(),
        token,
        opts.dataplane_bin.is_some(),
    );
    crate::ha::start(node.clone(), opts.ha, opts.role);
    let (stop_tx, stop_rx) = watch::channel(false);
    let supervisor = opts.dataplane_bin.clone().map(|bin| {
        tracing::info!(bin = %bin.display(), "supervising the data plane");
        tokio::spawn(crate::supervisor::supervise(node.clone(), bin, stop_rx))
    });
    // Tests and scripts read this line to find the port.
    println!(
        "tandem-control: api http://{api_addr} data-dir {}",
        opts.data_dir.display()
    );
    tracing::info!(%api_addr, token_file = %opts.data_dir.join("token").display(), "management API listening");
    let app = crate::ha::routes(node.clone()).merge(crate::api::router(node.clone()));
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    let _ = stop_tx.send(true);
    if let Some(s) = supervisor {
        let _ = s.await;
    }
    served.map_err(|e| format!("API server: {e}"))
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_beyond_loopback_is_warned_about() {
        for quiet in ["127.0.0.1:3261", "127.0.1.5:3261", "[::1]:3261"] {
            assert_eq!(
                api_exposure_warning(quiet.parse().unwrap()),
                None,
                "{quiet}"
            );
        }
        for loud in ["0.0.0.0:3261", "10.1.2.3:3261", "[::]:3261"] {
            let w = api_exposure_warning(loud.parse().unwrap()).unwrap();
            assert!(
                w.contains("plain HTTP") && w.contains("reverse proxy"),
                "{w}"
            );
        }
    }
}
