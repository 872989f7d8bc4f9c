//! Builds a running data plane from a node description: devices, targets, reactors and
//! portal listeners; and takes it down cleanly (write-back caches flushed).

use crate::admission::{self, Claim};
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
use tandem_config::memory::{self, MemInfo};
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
    /// Check the image's identity record (`tandem_config::image_id`) before serving it.
    /// Devices from a node config always do; `serve` on the command line does not.
    pub verify_identity: bool,
    /// Create a missing image (only `serve --file X --size S`, where the command line asks
    /// for it). A node config never creates images: that is the `create` call's job.
    pub create_if_missing: bool,
    /// Image files must lie below one of these (after resolving symlinks); empty: anywhere.
    pub image_dirs: Vec<PathBuf>,
    /// The file is a block device, said explicitly.
    pub block_device: bool,
    /// `[device.replication]`: this device is one replica of an HA device, served through
    /// the replication engine. `Err`: the replication settings cannot be used (the device
    /// fails with that reason rather than being served unreplicated).
    pub replication: Option<Result<ReplicationSpec, String>>,
}

/// How this node's replica of an HA device reaches its partners.
#[derive(Clone)]
pub struct ReplicationSpec {
    pub node_id: u8,
    /// The per-cluster secret sync links authenticate with (at least 16 bytes).
    pub secret: Vec<u8>,
    pub cluster_id: [u8; 16],
    pub device_id: u64,
    /// Where the replica metadata is kept (`None`: in memory).
    pub meta_path: Option<PathBuf>,
    /// Resync pacing target (0: a fixed window); see `ReplicationConfig`.
    pub resync_latency_target_ms: u64,
    pub partners: Vec<tandem_config::PartnerConfig>,
    /// The sync journal's kind, and the directory of a disk journal.
    pub journal: tandem_ha::journal::JournalKind,
    pub journal_dir: Option<PathBuf>,
}

impl std::fmt::Debug for ReplicationSpec {
    // The secret never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationSpec")
            .field("node_id", &self.node_id)
            .field("device_id", &self.device_id)
            .field("meta_path", &self.meta_path)
            .field("resync_latency_target_ms", &self.resync_latency_target_ms)
            .field("journal", &self.journal)
            .field("journal_dir", &self.journal_dir)
            .field("partners", &self.partners)
            .finish_non_exhaustive()
    }
}

/// A configured device that could not be opened: not served, shown with its reason.
#[derive(Clone, Debug)]
pub struct FailedDevice {
    pub spec: DeviceSpec,
    pub reason: String,
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
    /// Socket I/O of kernel TCP connections (see `net::SocketIo`).
    pub socket_io: crate::net::SocketIo,
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

/// Opens a device without admission (tests and tools); `Server` admits first
/// ([`crate::admission::admit`]).
pub fn build_device(spec: &DeviceSpec) -> Result<Arc<Device>, ServerError> {
    build_device_sized(spec, None)
}

/// `verified_size`: the size the identity record vouches for, which the file must have.
fn build_device_sized(
    spec: &DeviceSpec,
    verified_size: Option<u64>,
) -> Result<Arc<Device>, ServerError> {
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
            // try_open_ram refuses what it cannot hold (open_ram would hand back a disk
            // with block size 0, and the geometry below would divide by it).
            tandem_bdev::try_open_ram(
                &spec.name,
                spec.block_size,
                size_bytes / spec.block_size as u64,
            )
            .map_err(|e| err(format!("RAM disk of {size_bytes} bytes: {e}")))?
        }
        Backing::File { path, size_bytes } => {
            if !spec.create_if_missing && !path.exists() {
                return Err(err(format!(
                    "image {} is missing; it is never recreated (restore it, or create the device anew)",
                    path.display()
                )));
            }
            // Only `serve` passes a size to open_file, because open_file creates a missing
            // file when given one; a node config opens the file as it is and compares after,
            // so an image deleted after admission is not recreated either.
            let want = verified_size.or(*size_bytes);
            let bdev = tandem_bdev::open_file(&tandem_bdev::FileConfig {
                name: spec.name.clone(),
                path: path.clone(),
                size_bytes: if spec.create_if_missing { want } else { None },
                block_size: spec.block_size,
                read_only: spec.read_only,
            })
            .map_err(|e| err(format!("{}: {e}", path.display())))?;
            let info = bdev.info();
            let have = info.num_blocks.saturating_mul(u64::from(info.block_size));
            if let Some(want) = want.filter(|w| *w != have) {
                return Err(err(format!(
                    "{} is {have} bytes but should be {want}; refusing to serve it",
                    path.display()
                )));
            }
            bdev
        }
    };
    let bdev = if spec.cache == CacheMode::None {
        bdev
    } else {
        tandem_bdev::with_cache(bdev, spec.cache, spec.cache_size_bytes)
    };
    let info = bdev.info();
    if info.block_size == 0 || info.num_blocks == 0 {
        return Err(err(format!(
            "unusable geometry: block size {}, {} blocks",
            info.block_size, info.num_blocks
        )));
    }
    let cache = spec.cache;
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
    let lu = Arc::new(lu);
    // A replicated device: every host I/O goes through the replication engine (outermost);
    // the LU's ALUA state follows the engine (unavailable until it serves).
    let (bdev, replica, ha_node) = match &spec.replication {
        None => (bdev, None, None),
        Some(Err(reason)) => return Err(err(format!("replication: {reason}"))),
        Some(Ok(r)) => {
            let (dev, handle) =
                crate::replica::start(&spec.name, bdev, r, lu.clone()).map_err(err)?;
            (
                dev as Arc<dyn tandem_bdev::Bdev>,
                Some(handle),
                Some(r.node_id),
            )
        }
    };
    // A device that runs COMPARE AND WRITE atomically itself (replicated: cluster-wide)
    // gets it as one operation; others get the LU's local read, compare and write.
    lu.set_device_compare_and_write(bdev.atomic_compare_and_write());
    let mut dev = Device::new(spec.name.clone(), bdev, lu);
    dev.replica = replica;
    dev.ha_node = ha_node;
    Ok(Arc::new(dev))
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
    // A target of a replicated device is this node's port in the device's cluster: its
    // port group and relative port are the node's id there, so every node's ports differ.
    let ha_node = luns.iter().find_map(|d| d.ha_node).map(u16::from);
    Ok(Target {
        iqn: spec.iqn.clone(),
        alias: spec.alias.clone(),
        luns,
        auth: spec.auth.clone(),
        allowed_initiators: spec.allowed_initiators.clone(),
        tpg_id: ha_node.unwrap_or(crate::target::LOCAL_TPG_ID),
        relative_port_id: ha_node.unwrap_or(crate::target::LOCAL_RELATIVE_PORT_ID),
    })
}

pub struct Server {
    pub shared: Arc<Shared>,
    pub devices: parking_lot::Mutex<Vec<Arc<Device>>>,
    /// Configured devices that could not be opened (not served; the rest of the node is).
    pub failed: parking_lot::Mutex<Vec<FailedDevice>>,
    /// Targets not served because a LUN's device failed; kept so the control service can
    /// still change or remove them.
    pub unserved_targets: parking_lot::Mutex<Vec<TargetSpec>>,
    /// What each open device holds (RAM, file identity), by device name.
    claims: parking_lot::Mutex<Vec<(String, Claim)>>,
    mem: Option<MemInfo>,
    pub portals: Vec<SocketAddr>,
    pub started: std::time::Instant,
    reactor_threads: parking_lot::Mutex<Vec<JoinHandle<()>>>,
    listener_threads: parking_lot::Mutex<Vec<JoinHandle<()>>>,
    stop: Arc<AtomicBool>,
}

/// Admits and opens one device against the claims of those already open.
fn open_admitted(
    spec: &DeviceSpec,
    claims: &[(String, Claim)],
    mem: Option<&MemInfo>,
) -> Result<(Arc<Device>, Claim), String> {
    let others: Vec<Claim> = claims
        .iter()
        .filter(|(n, _)| *n != spec.name)
        .map(|(_, c)| c.clone())
        .collect();
    let claim = admission::admit(spec, &others, mem)?;
    let dev = build_device_sized(spec, claim.size_bytes).map_err(|e| e.to_string())?;
    Ok((dev, claim))
}

impl Server {
    pub fn start(spec: NodeSpec) -> Result<Server, ServerError> {
        let mem = match MemInfo::read() {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read /proc/meminfo; RAM devices are not bounded by memory");
                None
            }
        };
        // One device's problem fails that device only: the rest of the node serves.
        let mut devices: Vec<Arc<Device>> = Vec::new();
        let mut claims: Vec<(String, Claim)> = Vec::new();
        let mut failed = Vec::new();
        for d in &spec.devices {
            match open_admitted(d, &claims, mem.as_ref()) {
                Ok((dev, claim)) => {
                    devices.push(dev);
                    claims.push((d.name.clone(), claim));
                }
                Err(reason) => {
                    tracing::error!(device = %d.name, %reason, "device failed; it is not served");
                    failed.push(FailedDevice {
                        spec: d.clone(),
                        reason,
                    });
                }
            }
        }
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
        let mut unserved_targets = Vec::new();
        for t in &spec.targets {
            match build_target(t, &devices) {
                Ok(target) => registry.add_target(target),
                Err(e) => {
                    tracing::error!(target = %t.iqn, error = %e, "target not served: a device it exports failed");
                    unserved_targets.push(t.clone());
                }
            }
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
                    socket_io: spec.socket_io,
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
            failed: parking_lot::Mutex::new(failed),
            unserved_targets: parking_lot::Mutex::new(unserved_targets),
            claims: parking_lot::Mutex::new(claims),
            mem,
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
        if self.device(&spec.name).is_some() || self.failed_device(&spec.name).is_some() {
            return Err(LiveError::AlreadyExists(format!(
                "device {} already exists",
                spec.name
            )));
        }
        let mut claims = self.claims.lock();
        let (dev, claim) = open_admitted(spec, &claims, self.mem.as_ref())
            .map_err(|e| LiveError::BadRequest(format!("device {}: {e}", spec.name)))?;
        claims.push((spec.name.clone(), claim));
        self.devices.lock().push(dev);
        Ok(())
    }

    /// Opens a failed device again (its image restored or re-bound). On success its targets
    /// whose devices are all online are served; on failure the new reason is kept.
    pub fn retry_device(&self, spec: &DeviceSpec) -> Result<(), LiveError> {
        if self.device(&spec.name).is_some() {
            return Ok(());
        }
        if self.failed_device(&spec.name).is_none() {
            return Err(LiveError::NotFound(format!("no device {}", spec.name)));
        }
        let mut claims = self.claims.lock();
        match open_admitted(spec, &claims, self.mem.as_ref()) {
            Err(reason) => {
                if let Some(f) = self
                    .failed
                    .lock()
                    .iter_mut()
                    .find(|f| f.spec.name == spec.name)
                {
                    f.spec = spec.clone();
                    f.reason = reason.clone();
                }
                Err(LiveError::BadRequest(format!(
                    "device {} still fails: {reason}",
                    spec.name
                )))
            }
            Ok((dev, claim)) => {
                claims.push((spec.name.clone(), claim));
                drop(claims);
                self.failed.lock().retain(|f| f.spec.name != spec.name);
                self.devices.lock().push(dev);
                tracing::info!(device = %spec.name, "failed device is online again");
                let devices = self.devices.lock().clone();
                let mut unserved = self.unserved_targets.lock();
                let mut still = Vec::new();
                for t in unserved.drain(..) {
                    match build_target(&t, &devices) {
                        Ok(target) => self.shared.registry.add_target(target),
                        Err(_) => still.push(t),
                    }
                }
                *unserved = still;
                Ok(())
            }
        }
    }

    pub fn failed_device(&self, name: &str) -> Option<FailedDevice> {
        self.failed
            .lock()
            .iter()
            .find(|f| f.spec.name == name)
            .cloned()
    }

    fn refuse_failed(&self, name: &str) -> LiveError {
        match self.failed_device(name) {
            Some(f) => LiveError::Busy(format!(
                "device {name} is failed ({}); fix that first",
                f.reason
            )),
            None => LiveError::NotFound(format!("no device {name}")),
        }
    }

    /// Removes a device no target exports any more (remove or change the target first).
    pub fn remove_device(&self, name: &str) -> Result<(), LiveError> {
        let Some(dev) = self.device(name) else {
            let mut failed = self.failed.lock();
            let before = failed.len();
            failed.retain(|f| f.spec.name != name);
            if failed.len() == before {
                return Err(LiveError::NotFound(format!("no device {name}")));
            }
            return Ok(());
        };
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
        self.claims.lock().retain(|(n, _)| n != name);
        let device_id = dev.id;
        self.broadcast(|| ReactorMsg::ForgetDevice { device_id });
        dev.bdev
            .flush_blocking()
            .map_err(|e| LiveError::Io(e.to_string()))?;
        Ok(())
    }

    /// Grows a device online; every session sees CAPACITY DATA HAS CHANGED.
    pub fn extend_device(&self, name: &str, new_size_bytes: u64) -> Result<(), LiveError> {
        let dev = self.device(name).ok_or_else(|| self.refuse_failed(name))?;
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
        // A RAM disk that grows takes more memory: the memory rule applies (issue 13, 8).
        let mut claims = self.claims.lock();
        let total_before: u64 = claims
            .iter()
            .map(|(_, c)| c.ram_bytes)
            .fold(0, u64::saturating_add);
        let own = claims.iter_mut().find(|(n, _)| n == name);
        let mut grown_claim = None;
        if let Some((_, claim)) = own {
            let max = if claim.ram_disk {
                tandem_config::RAM_BYTES_MAX
            } else {
                tandem_config::DEVICE_BYTES_MAX
            };
            if new_size_bytes > max {
                return Err(LiveError::BadRequest(format!(
                    "new size {new_size_bytes} is more than the largest supported, {max}"
                )));
            }
            if claim.ram_disk {
                let added = (blocks - dev.lu.num_blocks()).saturating_mul(bs);
                if let Some(mem) = &self.mem {
                    memory::check(mem, total_before.saturating_add(added), added, true)
                        .map_err(LiveError::BadRequest)?;
                }
                grown_claim = Some((claim, added));
            }
        }
        dev.bdev
            .resize(blocks)
            .map_err(|e| LiveError::Io(e.to_string()))?;
        dev.lu.resize(blocks);
        if let Some((claim, added)) = grown_claim {
            claim.ram_bytes = claim.ram_bytes.saturating_add(added);
        }
        drop(claims);
        tracing::info!(device = %name, blocks, "device extended");
        Ok(())
    }

    /// First phase of the extend of a replicated device: the local copy and the replication
    /// engine grow, the LU keeps reporting the old size (the second phase, `extend_device`,
    /// raises CAPACITY DATA HAS CHANGED once every node has grown). Only replicated devices.
    pub fn grow_replica(&self, name: &str, new_size_bytes: u64) -> Result<(), LiveError> {
        let dev = self.device(name).ok_or_else(|| self.refuse_failed(name))?;
        if dev.replica.is_none() {
            return Err(LiveError::BadRequest(format!(
                "device {name} is not replicated"
            )));
        }
        let bs = dev.lu.block_size() as u64;
        if !new_size_bytes.is_multiple_of(bs) || new_size_bytes / bs < dev.lu.num_blocks() {
            return Err(LiveError::BadRequest(format!(
                "new size {new_size_bytes} is not a multiple of the block size {bs}, or smaller than the current size"
            )));
        }
        dev.bdev
            .resize(new_size_bytes / bs)
            .map_err(|e| LiveError::Io(e.to_string()))?;
        tracing::info!(device = %name, blocks = new_size_bytes / bs, "replicated device grown (LU size unchanged)");
        Ok(())
    }

    pub fn set_cache_mode(&self, name: &str, mode: CacheMode) -> Result<(), LiveError> {
        let dev = self.device(name).ok_or_else(|| self.refuse_failed(name))?;
        dev.bdev
            .set_cache_mode(mode)
            .map_err(|e| LiveError::Unsupported(e.to_string()))?;
        dev.lu.set_cache_mode(mode);
        Ok(())
    }

    pub fn add_target(&self, spec: &TargetSpec) -> Result<(), LiveError> {
        if self.shared.registry.target(&spec.iqn).is_some() {
            return Err(LiveError::AlreadyExists(format!(
                "target {} already exists",
                spec.iqn
            )));
        }
        let mut unserved = self.unserved_targets.lock();
        if unserved
            .iter()
            .any(|t| t.iqn.eq_ignore_ascii_case(&spec.iqn))
        {
            return Err(LiveError::AlreadyExists(format!(
                "target {} already exists (not served: a device it exports failed)",
                spec.iqn
            )));
        }
        if spec.luns.iter().any(|l| self.failed_device(l).is_some()) {
            tracing::warn!(target = %spec.iqn, "target not served: a device it exports failed");
            unserved.push(spec.clone());
            return Ok(());
        }
        let devices = self.devices.lock().clone();
        let t = build_target(spec, &devices).map_err(|e| LiveError::NotFound(e.to_string()))?;
        self.shared.registry.add_target(t);
        Ok(())
    }

    /// Removes a target and closes its sessions.
    pub fn remove_target(&self, iqn: &str) -> Result<(), LiveError> {
        if !self.shared.registry.remove_target(iqn) {
            let mut unserved = self.unserved_targets.lock();
            let before = unserved.len();
            unserved.retain(|t| !t.iqn.eq_ignore_ascii_case(iqn));
            if unserved.len() == before {
                return Err(LiveError::NotFound(format!("no target {iqn}")));
            }
            return Ok(());
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
            tpg_id: t.tpg_id,
            relative_port_id: t.relative_port_id,
        });
        if ok {
            return Ok(());
        }
        let mut unserved = self.unserved_targets.lock();
        match unserved
            .iter_mut()
            .find(|t| t.iqn.eq_ignore_ascii_case(iqn))
        {
            Some(t) => {
                if let Some(auth) = auth {
                    t.auth = auth;
                }
                if let Some(allowed) = allowed {
                    t.allowed_initiators = allowed;
                }
                Ok(())
            }
            None => Err(LiveError::NotFound(format!("no target {iqn}"))),
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
