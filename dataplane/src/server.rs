//! Builds a running data plane from a node description: devices, targets, reactors and
//! portal listeners; and takes it down cleanly (write-back caches flushed).

use crate::net::listener;
use crate::net::utcp::{UtcpConfig, UtcpPortal};
use crate::pr_store::FilePrStore;
use crate::reactor::{self, PollMode, ReactorConfig};
use crate::reactor_ctx::{ReactorHandle, ReactorMsg, Shared};
use crate::stats::ReactorStats;
use crate::target::{Device, Registry, Target};
use nix::sys::eventfd::{EfdFlags, EventFd};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tandem_bdev::CacheMode;
use tandem_iscsi::login::AuthPolicy;
use tandem_scsi::{LogicalUnit, LuConfig, LuIdentity};

/// Largest single transfer we advertise (VPD B0) and accept.
/// The one maximum-transfer figure: the LU advertises it (VPD B0) and the connection layer
/// enforces it before any data moves; the block layer's own limit is only a backstop.
const MAX_TRANSFER_BYTES: u64 = 8 * 1024 * 1024;
const _: () = assert!(MAX_TRANSFER_BYTES <= tandem_bdev::MAX_IO_BYTES);
const INBOX_CAPACITY: usize = 4096;

#[derive(Clone, Debug)]
pub enum Backing {
    Ram {
        size_bytes: u64,
    },
    File {
        path: PathBuf,
        size_bytes: Option<u64>,
    },
}

#[derive(Clone, Debug)]
pub struct DeviceSpec {
    pub name: String,
    pub backing: Backing,
    pub block_size: u32,
    pub read_only: bool,
    pub cache: CacheMode,
    pub cache_size_bytes: u64,
    pub identity_seed: String,
    /// Where persistent reservation state (APTPL) is kept, if anywhere.
    pub pr_state_path: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct TargetSpec {
    pub iqn: String,
    pub alias: Option<String>,
    pub luns: Vec<String>,
    pub auth: AuthPolicy,
    pub allowed_initiators: Vec<String>,
}

/// A portal served by the userspace TCP stack (smoltcp) on a TAP device instead of the
/// kernel: `cidr` is the stack's own address on the TAP's link, e.g. "10.213.0.2/24".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserspacePortal {
    pub tap: String,
    pub cidr: String,
    pub port: u16,
}

#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub portals: Vec<SocketAddr>,
    /// Userspace TCP portals (none by default); portal i is served by reactor i mod n.
    pub userspace_portals: Vec<UserspacePortal>,
    pub devices: Vec<DeviceSpec>,
    pub targets: Vec<TargetSpec>,
    pub cores: Vec<usize>,
    pub poll_mode: PollMode,
    pub spin: Duration,
    pub timers: crate::reactor_ctx::ConnTimers,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("device {name}: {reason}")]
    Device { name: String, reason: String },
    #[error("target {iqn}: LUN refers to unknown device {device}")]
    UnknownLun { iqn: String, device: String },
    #[error("cannot listen on portal {portal}: {source}")]
    Listen {
        portal: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

pub fn build_device(spec: &DeviceSpec) -> Result<Arc<Device>, ServerError> {
    let err = |reason: String| ServerError::Device {
        name: spec.name.clone(),
        reason,
    };
    if spec.block_size != 512 && spec.block_size != 4096 {
        return Err(err(format!(
            "block size {} is not 512 or 4096",
            spec.block_size
        )));
    }
    let bdev = match &spec.backing {
        Backing::Ram { size_bytes } => {
            if *size_bytes == 0 || size_bytes % spec.block_size as u64 != 0 {
                return Err(err(format!(
                    "RAM size {size_bytes} is not a positive multiple of the block size"
                )));
            }
            tandem_bdev::open_ram(
                &spec.name,
                spec.block_size,
                size_bytes / spec.block_size as u64,
            )
        }
        Backing::File { path, size_bytes } => tandem_bdev::open_file(&tandem_bdev::FileConfig {
            name: spec.name.clone(),
            path: path.clone(),
            size_bytes: *size_bytes,
            block_size: spec.block_size,
            read_only: spec.read_only,
        })
        .map_err(|e| err(format!("{}: {e}", path.display())))?,
    };
    let bdev = if spec.cache == CacheMode::None {
        bdev
    } else {
        tandem_bdev::with_cache(bdev, spec.cache, spec.cache_size_bytes)
    };
    let info = bdev.info();
    let cache = match spec.cache {
        CacheMode::None => tandem_scsi::CacheMode::None,
        CacheMode::WriteThrough => tandem_scsi::CacheMode::WriteThrough,
        CacheMode::WriteBack => tandem_scsi::CacheMode::WriteBack,
    };
    let pr_store = spec
        .pr_state_path
        .clone()
        .map(|p| Box::new(FilePrStore::new(p)) as Box<dyn tandem_scsi::PrStore>);
    let lu = LogicalUnit::new(
        LuConfig {
            identity: LuIdentity::derive(&spec.identity_seed),
            block_size: info.block_size,
            num_blocks: info.num_blocks,
            read_only: spec.read_only,
            cache,
            unmap_supported: !spec.read_only,
            max_transfer_blocks: (MAX_TRANSFER_BYTES / info.block_size as u64) as u32,
        },
        pr_store,
    );
    tracing::info!(device = %spec.name, block_size = info.block_size, blocks = info.num_blocks,
        cache = ?spec.cache, read_only = spec.read_only, "device ready");
    Ok(Arc::new(Device::new(spec.name.clone(), bdev, Arc::new(lu))))
}

pub fn build_target(spec: &TargetSpec, devices: &[Arc<Device>]) -> Result<Target, ServerError> {
    let mut luns = Vec::with_capacity(spec.luns.len());
    for name in &spec.luns {
        let dev =
            devices
                .iter()
                .find(|d| &d.name == name)
                .ok_or_else(|| ServerError::UnknownLun {
                    iqn: spec.iqn.clone(),
                    device: name.clone(),
                })?;
        luns.push(dev.clone());
    }
    Ok(Target {
        iqn: spec.iqn.clone(),
        alias: spec.alias.clone(),
        luns,
        auth: spec.auth.clone(),
        allowed_initiators: spec.allowed_initiators.clone(),
    })
}

pub struct Server {
    pub shared: Arc<Shared>,
    pub devices: parking_lot::Mutex<Vec<Arc<Device>>>,
    pub portals: Vec<SocketAddr>,
    pub started: std::time::Instant,
    reactor_threads: parking_lot::Mutex<Vec<JoinHandle<()>>>,
    listener_threads: parking_lot::Mutex<Vec<JoinHandle<()>>>,
    stop: Arc<AtomicBool>,
}

impl Server {
    pub fn start(spec: NodeSpec) -> Result<Server, ServerError> {
        let devices: Vec<Arc<Device>> = spec
            .devices
            .iter()
            .map(build_device)
            .collect::<Result<_, _>>()?;
        let mut listeners = Vec::new();
        let mut portals = Vec::new();
        for p in &spec.portals {
            let l =
                listener::bind(*p).map_err(|source| ServerError::Listen { portal: *p, source })?;
            portals.push(l.local_addr().unwrap_or(*p));
            listeners.push(l);
        }
        let mut utcp = Vec::new();
        let mut advertised = portals.clone();
        for u in &spec.userspace_portals {
            let cfg = UtcpConfig::new(&u.tap, &u.cidr, u.port)
                .map_err(|e| ServerError::Other(format!("userspace portal {}: {e}", u.tap)))?;
            let p = UtcpPortal::open(cfg).map_err(|e| {
                ServerError::Other(format!("userspace portal on TAP {}: {e}", u.tap))
            })?;
            advertised.push(p.cfg.portal());
            utcp.push(p);
        }
        // SendTargets lists the userspace portals too.
        let registry = Arc::new(Registry::new(advertised));
        for t in &spec.targets {
            registry.add_target(build_target(t, &devices)?);
        }
        let shared = Arc::new(Shared::new(registry, spec.timers));
        let cores: Vec<Option<usize>> = if spec.cores.is_empty() {
            vec![None]
        } else {
            spec.cores.iter().map(|c| Some(*c)).collect()
        };
        let mut handles = Vec::new();
        let mut reactor_threads = Vec::new();
        let mut pending = Vec::new();
        for (id, core) in cores.iter().enumerate() {
            let (tx, rx) = crossbeam_channel::bounded(INBOX_CAPACITY);
            let wake = Arc::new(
                EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
                    .map_err(|e| ServerError::Other(format!("eventfd: {e}")))?,
            );
            let stats = Arc::new(ReactorStats::default());
            handles.push(ReactorHandle {
                tx,
                wake: wake.clone(),
                connections: AtomicUsize::new(0),
                stats: stats.clone(),
            });
            pending.push((
                ReactorConfig {
                    id,
                    core: *core,
                    poll_mode: spec.poll_mode,
                    spin: spec.spin,
                },
                rx,
                wake,
                stats,
            ));
        }
        let _ = shared.reactors.set(handles);
        let mut utcp_for: Vec<Vec<UtcpPortal>> = (0..pending.len()).map(|_| Vec::new()).collect();
        for (i, p) in utcp.into_iter().enumerate() {
            utcp_for[i % pending.len()].push(p);
        }
        for ((cfg, rx, wake, stats), u) in pending.into_iter().zip(utcp_for) {
            let sh = shared.clone();
            let name = format!("reactor-{}", cfg.id);
            let h = std::thread::Builder::new()
                .name(name)
                .spawn(move || reactor::run(cfg, sh, rx, wake, stats, u))
                .map_err(|e| ServerError::Other(format!("spawn reactor: {e}")))?;
            reactor_threads.push(h);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut listener_threads = Vec::new();
        for l in listeners {
            let sh = shared.clone();
            let st = stop.clone();
            let name = format!("listen-{}", l.local_addr().map(|a| a.port()).unwrap_or(0));
            let h = std::thread::Builder::new()
                .name(name)
                .spawn(move || listener::run(l, sh, st))
                .map_err(|e| ServerError::Other(format!("spawn listener: {e}")))?;
            listener_threads.push(h);
        }
        for p in &portals {
            tracing::info!(portal = %p, "listening");
        }
        Ok(Server {
            shared,
            devices: parking_lot::Mutex::new(devices),
            portals,
            started: std::time::Instant::now(),
            reactor_threads: parking_lot::Mutex::new(reactor_threads),
            listener_threads: parking_lot::Mutex::new(listener_threads),
            stop,
        })
    }

    /// Stops accepting, closes every connection, and flushes every device's cache.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.listener_threads.lock().drain(..) {
            let _ = h.join();
        }
        self.broadcast(|| ReactorMsg::Shutdown);
        for h in self.reactor_threads.lock().drain(..) {
            let _ = h.join();
        }
        for d in self.devices.lock().iter() {
            if let Err(e) = d.bdev.flush_blocking() {
                tracing::error!(device = %d.name, error = %e, "flush at shutdown failed");
            } else {
                tracing::info!(device = %d.name, "flushed");
            }
        }
    }
}

/// Live changes, applied without restarting anything else.
impl Server {
    pub fn broadcast(&self, msg: impl Fn() -> ReactorMsg) {
        if let Some(rs) = self.shared.reactors.get() {
            for (i, r) in rs.iter().enumerate() {
                if r.send(msg()).is_err() {
                    // The reactor did not take a control message within the bounded wait:
                    // it is stuck or gone; say so loudly rather than carry on as if applied.
                    tracing::error!(reactor = i, "reactor did not accept a control message");
                }
            }
        }
    }

    pub fn device(&self, name: &str) -> Option<Arc<Device>> {
        self.devices.lock().iter().find(|d| d.name == name).cloned()
    }

    pub fn add_device(&self, spec: &DeviceSpec) -> Result<(), LiveError> {
        if self.device(&spec.name).is_some() {
            return Err(LiveError::AlreadyExists(format!(
                "device {} already exists",
                spec.name
            )));
        }
        let dev = build_device(spec).map_err(|e| LiveError::Io(e.to_string()))?;
        self.devices.lock().push(dev);
        Ok(())
    }

    /// Removes a device no target exports any more (remove or change the target first).
    pub fn remove_device(&self, name: &str) -> Result<(), LiveError> {
        let dev = self
            .device(name)
            .ok_or_else(|| LiveError::NotFound(format!("no device {name}")))?;
        let users: Vec<String> = self
            .shared
            .registry
            .targets()
            .iter()
            .filter(|t| t.luns.iter().any(|d| d.id == dev.id))
            .map(|t| t.iqn.clone())
            .collect();
        if !users.is_empty() {
            return Err(LiveError::Busy(format!(
                "device {name} is exported by {}; remove the target first",
                users.join(", ")
            )));
        }
        self.devices.lock().retain(|d| d.id != dev.id);
        let device_id = dev.id;
        self.broadcast(|| ReactorMsg::ForgetDevice { device_id });
        dev.bdev
            .flush_blocking()
            .map_err(|e| LiveError::Io(e.to_string()))?;
        Ok(())
    }

    /// Grows a device online; every session sees CAPACITY DATA HAS CHANGED.
    pub fn extend_device(&self, name: &str, new_size_bytes: u64) -> Result<(), LiveError> {
        let dev = self
            .device(name)
            .ok_or_else(|| LiveError::NotFound(format!("no device {name}")))?;
        let bs = dev.lu.block_size() as u64;
        if !new_size_bytes.is_multiple_of(bs) {
            return Err(LiveError::BadRequest(format!(
                "new size {new_size_bytes} is not a multiple of the block size {bs}"
            )));
        }
        let blocks = new_size_bytes / bs;
        if blocks <= dev.lu.num_blocks() {
            return Err(LiveError::BadRequest(format!(
                "new size {new_size_bytes} is not larger than the current {} bytes (devices only grow)",
                dev.lu.num_blocks() * bs
            )));
        }
        dev.bdev
            .resize(blocks)
            .map_err(|e| LiveError::Io(e.to_string()))?;
        dev.lu.resize(blocks);
        tracing::info!(device = %name, blocks, "device extended");
        Ok(())
    }

    pub fn set_cache_mode(&self, name: &str, mode: CacheMode) -> Result<(), LiveError> {
        let dev = self
            .device(name)
            .ok_or_else(|| LiveError::NotFound(format!("no device {name}")))?;
        dev.bdev
            .set_cache_mode(mode)
            .map_err(|e| LiveError::Unsupported(e.to_string()))?;
        dev.lu.set_cache_mode(match mode {
            CacheMode::None => tandem_scsi::CacheMode::None,
            CacheMode::WriteThrough => tandem_scsi::CacheMode::WriteThrough,
            CacheMode::WriteBack => tandem_scsi::CacheMode::WriteBack,
        });
        Ok(())
    }

    pub fn add_target(&self, spec: &TargetSpec) -> Result<(), LiveError> {
        if self.shared.registry.target(&spec.iqn).is_some() {
            return Err(LiveError::AlreadyExists(format!(
                "target {} already exists",
                spec.iqn
            )));
        }
        let devices = self.devices.lock().clone();
        let t = build_target(spec, &devices).map_err(|e| LiveError::NotFound(e.to_string()))?;
        self.shared.registry.add_target(t);
        Ok(())
    }

    /// Removes a target and closes its sessions.
    pub fn remove_target(&self, iqn: &str) -> Result<(), LiveError> {
        if !self.shared.registry.remove_target(iqn) {
            return Err(LiveError::NotFound(format!("no target {iqn}")));
        }
        self.broadcast(|| ReactorMsg::CloseTarget {
            iqn: iqn.to_string(),
        });
        Ok(())
    }

    /// Changes who may log in (CHAP, ACL). Sessions already logged in stay; new logins
    /// follow the new rules.
    pub fn update_target_access(
        &self,
        iqn: &str,
        auth: Option<AuthPolicy>,
        allowed: Option<Vec<String>>,
    ) -> Result<(), LiveError> {
        let ok = self.shared.registry.update_target(iqn, |t| Target {
            iqn: t.iqn.clone(),
            alias: t.alias.clone(),
            luns: t.luns.clone(),
            auth: auth.clone().unwrap_or_else(|| t.auth.clone()),
            allowed_initiators: allowed
                .clone()
                .unwrap_or_else(|| t.allowed_initiators.clone()),
        });
        if ok {
            Ok(())
        } else {
            Err(LiveError::NotFound(format!("no target {iqn}")))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Unsupported(String),
}
