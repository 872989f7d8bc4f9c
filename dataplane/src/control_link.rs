//! The local Unix socket on which `tandem-control` applies live changes and reads status
//! and statistics (newline-delimited JSON, `tandem_config::ipc`, versioned).

use crate::config_spec;
use crate::server::{LiveError, Server};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use tandem_config::ipc::{
    DeviceStats, DeviceStatus, Envelope, ErrorCode, IpcError, ReactorStats, Request, Response,
    StatsReport, StatusReport, TargetStatus, LINE_BYTES_MAX,
};
use tandem_config::NodeConfig;

/// Node-level facts the control link needs to turn config fragments into specs.
#[derive(Clone)]
pub struct NodeContext {
    pub config: NodeConfig,
    /// The directory of the config file (default image directory).
    pub config_dir: PathBuf,
}

pub struct ControlLink {
    path: PathBuf,
}

impl Drop for ControlLink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

pub fn spawn(path: PathBuf, server: Arc<Server>, ctx: NodeContext) -> std::io::Result<ControlLink> {
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::thread::Builder::new()
        .name("control-link".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(s) => {
                        let server = server.clone();
                        let ctx = ctx.clone();
                        let _ = std::thread::Builder::new()
                            .name("control-conn".into())
                            .spawn(move || serve_connection(s, &server, &ctx));
                    }
                    Err(e) => tracing::warn!(error = %e, "control socket accept failed"),
                }
            }
        })?;
    Ok(ControlLink { path })
}

fn serve_connection(stream: UnixStream, server: &Server, ctx: &NodeContext) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream.take(u64::MAX));
    let mut line = String::new();
    loop {
        line.clear();
        let limited = (&mut reader).take(LINE_BYTES_MAX as u64 + 1);
        let mut limited = BufReader::new(limited);
        match limited.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(_) => return,
        }
        let reply = match Envelope::from_line(&line) {
            Ok(env) => match env.body {
                tandem_config::ipc::Body::Request(req) => {
                    Envelope::response(env.id, handle(server, ctx, req))
                }
                tandem_config::ipc::Body::Response(_) => Envelope::response(
                    env.id,
                    Response::error(ErrorCode::BadRequest, "expected a request"),
                ),
            },
            Err(IpcError::Version { got, id }) => Envelope::response(
                id,
                Response::error(
                    ErrorCode::VersionMismatch,
                    format!("IPC version {got} not supported"),
                ),
            ),
            Err(e) => Envelope::response(0, Response::error(ErrorCode::BadRequest, e.to_string())),
        };
        if writer.write_all(reply.to_line().as_bytes()).is_err() {
            return;
        }
    }
}

fn live(r: Result<(), LiveError>) -> Response {
    match r {
        Ok(()) => Response::Ok,
        Err(e) => {
            let code = match &e {
                LiveError::BadRequest(_) => ErrorCode::BadRequest,
                LiveError::NotFound(_) => ErrorCode::NotFound,
                LiveError::AlreadyExists(_) => ErrorCode::AlreadyExists,
                LiveError::Busy(_) => ErrorCode::Busy,
                LiveError::Io(_) => ErrorCode::Io,
                LiveError::Unsupported(_) => ErrorCode::Unsupported,
            };
            Response::error(code, e.to_string())
        }
    }
}

pub fn handle(server: &Server, ctx: &NodeContext, req: Request) -> Response {
    tracing::debug!(?req, "control request");
    match req {
        Request::Hello => Response::Ok,
        Request::Status => Response::Status(status(server)),
        Request::Stats => Response::Stats(stats(server)),
        Request::AddDevice(d) => {
            live(server.add_device(&config_spec::device_spec(&ctx.config, &ctx.config_dir, &d)))
        }
        Request::RemoveDevice { name } => live(server.remove_device(&name)),
        Request::HaExchange { device, updates } => {
            match server.device(&device).and_then(|d| d.replica.clone()) {
                None => Response::error(
                    ErrorCode::NotFound,
                    format!("device {device} is not a replicated device served here"),
                ),
                Some(h) => match h.exchange(updates) {
                    Ok(report) => Response::Ha(report),
                    Err(e) => Response::error(ErrorCode::Internal, format!("device {device}: {e}")),
                },
            }
        }
        Request::RetryDevice(d) => {
            live(server.retry_device(&config_spec::device_spec(&ctx.config, &ctx.config_dir, &d)))
        }
        Request::ExtendDevice {
            name,
            new_size_bytes,
        } => live(server.extend_device(&name, new_size_bytes)),
        Request::GrowReplica {
            name,
            new_size_bytes,
        } => live(server.grow_replica(&name, new_size_bytes)),
        Request::SetCacheMode { name, cache, .. } => live(server.set_cache_mode(&name, cache)),
        Request::AddTarget(t) => {
            live(server.add_target(&config_spec::target_spec(&ctx.config, &t)))
        }
        Request::RemoveTarget { iqn } => live(server.remove_target(&iqn)),
        Request::SetChap { iqn, chap } => live(server.update_target_access(
            &iqn,
            Some(config_spec::auth_policy(chap.as_ref())),
            None,
        )),
        Request::SetAcl {
            iqn,
            allowed_initiators,
        } => live(server.update_target_access(&iqn, None, Some(allowed_initiators))),
    }
}

pub fn status(server: &Server) -> StatusReport {
    let failed: Vec<DeviceStatus> = server
        .failed
        .lock()
        .iter()
        .map(|f| DeviceStatus {
            name: f.spec.name.clone(),
            block_size: f.spec.block_size,
            read_only: f.spec.read_only,
            cache: match f.spec.cache {
                tandem_bdev::CacheMode::None => tandem_config::CacheMode::None,
                tandem_bdev::CacheMode::WriteThrough => tandem_config::CacheMode::WriteThrough,
                tandem_bdev::CacheMode::WriteBack => tandem_config::CacheMode::WriteBack,
            },
            state: "failed".into(),
            error: Some(f.reason.clone()),
            ..Default::default()
        })
        .collect();
    let mut devices: Vec<DeviceStatus> = server
        .devices
        .lock()
        .iter()
        .map(|d| {
            let info = d.bdev.info();
            DeviceStatus {
                name: d.name.clone(),
                size_bytes: d.lu.num_blocks() * d.lu.block_size() as u64,
                block_size: d.lu.block_size(),
                read_only: info.read_only,
                cache: info.cache,
                cache_dirty_bytes: 0,
                state: "online".into(),
                error: None,
            }
        })
        .collect();
    devices.extend(failed);
    let targets = server
        .shared
        .registry
        .targets()
        .iter()
        .map(|t| TargetStatus {
            iqn: t.iqn.clone(),
            luns: t.luns.iter().map(|d| d.name.clone()).collect(),
            sessions: server.shared.sessions.count_for_target(&t.iqn) as u32,
            initiators: Vec::new(),
        })
        .collect();
    StatusReport {
        pid: std::process::id(),
        uptime_s: server.started.elapsed().as_secs(),
        version: env!("CARGO_PKG_VERSION").into(),
        portals: server.portals.iter().map(|p| p.to_string()).collect(),
        devices,
        targets,
    }
}

pub fn stats(server: &Server) -> StatsReport {
    use std::sync::atomic::Ordering::Relaxed;
    let targets = server.shared.registry.targets();
    let devices = server
        .devices
        .lock()
        .iter()
        .map(|d| {
            let h = d.stats.latency_us.lock();
            let sessions = targets
                .iter()
                .filter(|t| t.luns.iter().any(|x| x.id == d.id))
                .map(|t| server.shared.sessions.count_for_target(&t.iqn) as u32)
                .sum();
            DeviceStats {
                name: d.name.clone(),
                read_ops: d.stats.read_ops.load(Relaxed),
                write_ops: d.stats.write_ops.load(Relaxed),
                read_bytes: d.stats.read_bytes.load(Relaxed),
                write_bytes: d.stats.write_bytes.load(Relaxed),
                errors: d.stats.errors.load(Relaxed),
                latency_us_p50: h.value_at_quantile(0.5),
                latency_us_p99: h.value_at_quantile(0.99),
                latency_us_p999: h.value_at_quantile(0.999),
                queue_depth: d.stats.in_flight.load(Relaxed) as u32,
                sessions,
            }
        })
        .collect();
    let reactors = server
        .shared
        .reactors
        .get()
        .map(|rs| {
            rs.iter()
                .enumerate()
                .map(|(i, r)| ReactorStats {
                    core: i as u32,
                    busy_polls: r.stats.busy_polls.load(Relaxed),
                    idle_polls: r.stats.idle_polls.load(Relaxed),
                    pdus: r.stats.pdus.load(Relaxed),
                    ios: r.stats.ios.load(Relaxed),
                })
                .collect()
        })
        .unwrap_or_default();
    StatsReport { devices, reactors }
}
