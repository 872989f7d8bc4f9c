//! The node's control state: the configuration (owned, saved atomically before anything is
//! applied), the data plane connection, and image-building jobs.
//!
//! Every change goes through [`Node::commit`]: validate, save `node.toml`, then send the
//! requests that [`tandem_config::reconcile::plan`] derives from the difference between what
//! the data plane has (`applied`) and the new config. If the data plane refuses one, the old
//! config is saved back and the requests already applied are undone the same way, so the
//! file and the data plane never disagree after an answer. When the data plane is not
//! connected the change stays saved and the data plane loads it when it starts.
//!
//! Lock order: `state` before `ipc`. Holding `state` serializes changes.

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tandem_config::ipc::{Request, Response, StatsReport, StatusReport};
use tandem_config::names::alias_for_device;
use tandem_config::reconcile::{apply, plan};
use tandem_config::{Backing, DeviceConfig, NodeConfig, TargetConfig};
use tokio::sync::{Mutex, MutexGuard, Notify};

use crate::api_types::*;
use crate::error::ApiError;
use crate::image;
use crate::image_guard;
use crate::ipc_client::{CallError, IpcClient};
use tandem_config::image_id::{self, ImageRecord};

mod ha_extend;
pub use ha_extend::extend_replicated;

/// How long a Status or Stats query may take.
const QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Jobs remembered after they finish.
const JOBS_KEPT_MAX: usize = 64;

pub struct ConfigState {
    pub config: NodeConfig,
    /// What the data plane serves (None: not connected).
    pub applied: Option<NodeConfig>,
}

struct Job {
    info: JobInfo,
    done: Arc<AtomicU64>,
}

#[derive(Default)]
struct Jobs {
    next_id: u64,
    list: VecDeque<Job>,
    /// Device names being created (reserved until the job ends).
    reserved: HashSet<String>,
}

pub struct Node {
    pub data_dir: PathBuf,
    pub config_path: PathBuf,
    pub socket_path: PathBuf,
    pub api_addr: String,
    pub token: String,
    pub dataplane_enabled: bool,
    state: Mutex<ConfigState>,
    /// Copy of `state.config` for readers, so reads never wait behind a change or a data
    /// plane start (which hold `state`).
    published: std::sync::Mutex<Arc<NodeConfig>>,
    ipc: Mutex<Option<IpcClient>>,
    pub(crate) dataplane: std::sync::Mutex<DataplaneInfo>,
    jobs: std::sync::Mutex<Jobs>,
    /// Asks the supervisor to restart a data plane that stopped answering.
    pub(crate) restart_dataplane: Notify,
    started: Instant,
    /// Failover authority, HA drivers, heartbeats (`crate::ha`).
    pub ha: crate::ha::HaState,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Node {
    pub fn new(
        data_dir: PathBuf,
        config: NodeConfig,
        api_addr: String,
        token: String,
        dataplane_enabled: bool,
    ) -> Arc<Node> {
        let dataplane = DataplaneInfo {
            state: if dataplane_enabled {
                "starting"
            } else {
                "disabled"
            }
            .to_string(),
            pid: None,
            restarts: 0,
            last_exit: None,
            last_error: None,
        };
        Arc::new(Node {
            config_path: data_dir.join("node.toml"),
            socket_path: data_dir.join("dataplane.sock"),
            data_dir,
            api_addr,
            token,
            dataplane_enabled,
            published: std::sync::Mutex::new(Arc::new(config.clone())),
            state: Mutex::new(ConfigState {
                config,
                applied: None,
            }),
            ipc: Mutex::new(None),
            dataplane: std::sync::Mutex::new(dataplane),
            jobs: std::sync::Mutex::new(Jobs::default()),
            restart_dataplane: Notify::new(),
            started: Instant::now(),
            ha: crate::ha::HaState::default(),
        })
    }

    /// The configuration as last saved.
    pub async fn config(&self) -> NodeConfig {
        NodeConfig::clone(&self.published.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The configuration as last saved, without waiting (for checks inside a change).
    pub fn config_snapshot(&self) -> NodeConfig {
        NodeConfig::clone(&self.published.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The configuration as last saved, shared (no copy): for frequent readers.
    pub fn config_arc(&self) -> Arc<NodeConfig> {
        self.published
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn publish(&self, config: &NodeConfig) {
        *self.published.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(config.clone());
    }

    pub(crate) async fn lock_state(&self) -> MutexGuard<'_, ConfigState> {
        self.state.lock().await
    }

    /// Called by the supervisor with the state lock held, once the data plane has loaded
    /// `state.config` and answered Hello.
    pub(crate) async fn connected(&self, state: &mut ConfigState, client: IpcClient) {
        state.applied = Some(state.config.clone());
        *self.ipc.lock().await = Some(client);
        self.ha.dataplane_changed();
    }

    pub(crate) async fn disconnected(&self) {
        let mut st = self.state.lock().await;
        st.applied = None;
        *self.ipc.lock().await = None;
        // The exited data plane's replication reports must not be shown as the new one's.
        self.ha.dataplane_changed();
    }

    pub fn dataplane_info(&self) -> DataplaneInfo {
        self.dataplane
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set_dataplane(&self, f: impl FnOnce(&mut DataplaneInfo)) {
        f(&mut self.dataplane.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Sends a read-only request (Status, Stats) if the data plane is connected.
    pub async fn query(&self, request: Request) -> Result<Response, ApiError> {
        let mut ipc = self.ipc.lock().await;
        let Some(client) = ipc.as_mut() else {
            return Err(ApiError::unavailable(self.not_connected_message()));
        };
        match client.call(request, QUERY_TIMEOUT).await {
            Ok(Response::Error { code, message }) => {
                Err(ApiError::dataplane(CallError::Refused { code, message }))
            }
            Ok(response) => Ok(response),
            Err(e) => Err(ApiError::unavailable(format!("data plane: {e}"))),
        }
    }

    fn not_connected_message(&self) -> String {
        let d = self.dataplane_info();
        if !self.dataplane_enabled {
            "this control service runs without a data plane (--no-dataplane)".to_string()
        } else {
            format!(
                "the data plane is not running (state {}{}); see `tandem status` and the tandem-control log",
                d.state,
                d.last_error.map(|e| format!(": {e}")).unwrap_or_default()
            )
        }
    }

    pub async fn dataplane_status(&self) -> Option<StatusReport> {
        match self.query(Request::Status).await {
            Ok(Response::Status(s)) => Some(s),
            _ => None,
        }
    }

    pub async fn stats(&self) -> Result<StatsInfo, ApiError> {
        match self.query(Request::Stats).await? {
            Response::Stats(StatsReport { devices, reactors }) => Ok(StatsInfo {
                unix_ms: unix_ms(),
                devices,
                reactors,
            }),
            other => Err(ApiError::internal(format!(
                "data plane answered Stats with {other:?}"
            ))),
        }
    }

    /// Applies `edit` to a copy of the config and commits it.
    pub async fn change<F>(&self, edit: F) -> Result<Applied, ApiError>
    where
        F: FnOnce(&mut NodeConfig) -> Result<(), ApiError>,
    {
        let mut st = self.state.lock().await;
        let mut new = st.config.clone();
        edit(&mut new)?;
        self.commit(&mut st, new).await
    }

    /// Validates, saves, then applies `new` to the data plane (see the module docs).
    pub(crate) async fn commit(
        &self,
        st: &mut ConfigState,
        new: NodeConfig,
    ) -> Result<Applied, ApiError> {
        new.validate().map_err(ApiError::invalid)?;
        if new == st.config {
            return Ok(Applied::Unchanged);
        }
        save(&self.config_path, &new).await?;
        let old = std::mem::replace(&mut st.config, new.clone());
        self.publish(&new);
        if !self.dataplane_enabled {
            return Ok(Applied::Disabled);
        }
        let mut ipc = self.ipc.lock().await;
        let (Some(applied), Some(client)) = (st.applied.as_mut(), ipc.as_mut()) else {
            return Ok(Applied::Pending);
        };
        for request in plan(applied, &new) {
            tracing::info!(?request, "applying");
            if let Err(e) = client.call_ok(request.clone()).await {
                tracing::warn!(error = %e, ?request, "data plane did not apply a change; rolling back");
                let connection_lost = !matches!(e, CallError::Refused { .. });
                if let Err(save_err) = save(&self.config_path, &old).await {
                    tracing::error!(error = %save_err.message, "could not restore the previous config");
                }
                self.publish(&old);
                st.config = old;
                if connection_lost {
                    // What the data plane has is unknown: restart it from the saved config.
                    // (If it died, the supervisor sees the exit first; it drops this request
                    // once the next data plane has started, under the same state lock.)
                    st.applied = None;
                    *ipc = None;
                    self.restart_dataplane.notify_one();
                } else {
                    for undo in plan(applied, &st.config) {
                        match client.call_ok(undo.clone()).await {
                            Ok(_) => {
                                apply(applied, &undo);
                            }
                            Err(e) => {
                                tracing::error!(error = %e, ?undo, "could not undo a partial change")
                            }
                        }
                    }
                }
                return Err(ApiError::dataplane(e));
            }
            apply(applied, &request);
        }
        Ok(Applied::Applied)
    }

    /// Closes `device` in the data plane (the targets exporting it too), runs `closed` while
    /// nothing holds it open, then opens both again as configured. Used to discard a copy
    /// after a split brain (its replica metadata is replaced while the replica is stopped).
    /// If the reopening fails the device stays closed (it serves nothing) and the error
    /// says so; a restart of the data plane opens it from the saved configuration.
    pub async fn reopen_device<T>(
        &self,
        device: &str,
        closed: impl FnOnce(&NodeConfig) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let mut st = self.state.lock().await;
        let config = st.config.clone();
        if config.device(device).is_none() {
            return Err(no_device(device));
        }
        if !self.dataplane_enabled {
            return closed(&config);
        }
        let mut without = config.clone();
        without.devices.retain(|d| d.name != device);
        without
            .targets
            .retain(|t| !t.luns.iter().any(|l| l == device));
        let mut ipc = self.ipc.lock().await;
        let (Some(applied), Some(client)) = (st.applied.as_mut(), ipc.as_mut()) else {
            return Err(ApiError::unavailable(self.not_connected_message()));
        };
        for request in plan(applied, &without) {
            tracing::info!(?request, "closing for a reopen");
            client
                .call_ok(request.clone())
                .await
                .map_err(ApiError::dataplane)?;
            apply(applied, &request);
        }
        let result = closed(&config);
        for request in plan(applied, &config) {
            tracing::info!(?request, "reopening");
            if let Err(e) = client.call_ok(request.clone()).await {
                tracing::error!(error = %e, ?request, "could not reopen the device; it stays closed");
                return Err(ApiError::dataplane(e));
            }
            apply(applied, &request);
        }
        result
    }

    // ---- devices -------------------------------------------------------------------------

    /// Default directory for new images: `node.data_dir`, else the control data dir.
    fn image_dir(&self, config: &NodeConfig) -> PathBuf {
        config
            .node
            .data_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.clone())
    }

    pub fn device_info(
        &self,
        config: &NodeConfig,
        d: &DeviceConfig,
        dp: Option<&StatusReport>,
    ) -> DeviceInfo {
        let node = &config.node.name;
        let targets: Vec<&TargetConfig> = config
            .targets
            .iter()
            .filter(|t| t.luns.contains(&d.name))
            .collect();
        let dp_dev = dp.and_then(|s| s.devices.iter().find(|x| x.name == d.name));
        let (kind, file, configured) = match d.backing() {
            Backing::Ram { size_bytes } => ("ram", None, Some(size_bytes)),
            Backing::File { path, size_bytes } => ("file", Some(path.to_path_buf()), size_bytes),
        };
        let size_bytes = configured
            .or(dp_dev.map(|x| x.size_bytes).filter(|s| *s > 0))
            .or_else(|| {
                file.as_ref()
                    .and_then(|f| std::fs::metadata(f).ok())
                    .map(|m| m.len())
            })
            .unwrap_or(0);
        let sessions = dp
            .map(|s| {
                s.targets
                    .iter()
                    .filter(|t| {
                        targets
                            .iter()
                            .any(|c| c.iqn(node).eq_ignore_ascii_case(&t.iqn))
                    })
                    .map(|t| t.sessions)
                    .sum()
            })
            .unwrap_or(0);
        let error = dp_dev.and_then(|x| x.error.clone());
        let state = match (dp_dev, dp) {
            (Some(x), _) => x.state.clone(),
            (None, Some(_)) => "missing".to_string(),
            (None, None) if !self.dataplane_enabled => "disabled".to_string(),
            (None, None) => "pending".to_string(),
        };
        DeviceInfo {
            name: d.name.clone(),
            kind: kind.to_string(),
            file,
            size_bytes,
            block_size: d.block_size,
            read_only: d.read_only,
            cache: d.cache,
            cache_size_bytes: d.effective_cache_size(),
            identity_seed: d.effective_identity_seed(node),
            targets: targets.iter().map(|t| t.iqn(node)).collect(),
            state,
            error,
            sessions,
            replication: None,
        }
    }

    pub async fn list_devices(&self) -> Vec<DeviceInfo> {
        let config = self.config().await;
        let dp = self.dataplane_status().await;
        let mut out = Vec::new();
        for d in &config.devices {
            out.push(self.device_info(&config, d, dp.as_ref()));
        }
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        for job in jobs.list.iter().filter(|j| j.info.state == "running") {
            if !out.iter().any(|d| d.name == job.info.device) {
                out.push(DeviceInfo {
                    name: job.info.device.clone(),
                    kind: "file".into(),
                    file: None,
                    size_bytes: job.info.total_bytes,
                    block_size: 0,
                    read_only: false,
                    cache: Default::default(),
                    cache_size_bytes: 0,
                    identity_seed: String::new(),
                    targets: vec![],
                    state: "creating".into(),
                    error: None,
                    sessions: 0,
                    replication: None,
                });
            }
        }
        out
    }

    pub async fn get_device(&self, name: &str) -> Result<DeviceInfo, ApiError> {
        self.list_devices()
            .await
            .into_iter()
            .find(|d| d.name == name)
            .ok_or_else(|| no_device(name))
    }

    /// Builds the device (and target) a create request asks for, checked against `config`.
    fn plan_create(
        &self,
        config: &NodeConfig,
        req: &DeviceCreate,
    ) -> Result<(DeviceConfig, Option<TargetConfig>, bool), ApiError> {
        if config.device(&req.name).is_some() {
            return Err(ApiError::conflict(format!(
                "device `{}` already exists; pick another name or `tandem device remove {}` first",
                req.name, req.name
            )));
        }
        let mut device = DeviceConfig::ram(&req.name, 0);
        let mut build_image = false;
        if req.ram {
            if req.file.is_some() || req.location.is_some() {
                return Err(ApiError::bad_request(
                    "a RAM disk has no file: drop `file`/`location` or `ram`",
                ));
            }
            device.ram_size = Some(
                req.size
                    .ok_or_else(|| ApiError::bad_request("a RAM disk needs `size`"))?,
            );
        } else {
            device.ram_size = None;
            let path = match (&req.file, &req.location) {
                (Some(_), Some(_)) => {
                    return Err(ApiError::bad_request("give `file` or `location`, not both"))
                }
                (Some(f), None) => f.clone(),
                (None, Some(dir)) => dir.join(format!("{}.img", req.name)),
                (None, None) => self.image_dir(config).join(format!("{}.img", req.name)),
            };
            if !path.is_absolute() {
                return Err(ApiError::bad_request(format!(
                    "`{}` is not an absolute path",
                    path.display()
                )));
            }
            if req.block_device {
                if req.size.is_some() {
                    return Err(ApiError::bad_request(
                        "a block device is attached, not created: drop `size`",
                    ));
                }
                tandem_config::check_normal_path(&path).map_err(ApiError::bad_request)?;
            } else {
                image_guard::confine(&path, &config.allowed_image_dirs(&self.data_dir))?;
            }
            image_guard::check_kind(&path, req.block_device)?;
            match (std::fs::metadata(&path), req.size) {
                (Ok(_), Some(_)) => {
                    return Err(ApiError::conflict(format!(
                        "{} already exists: attach it with `tandem device attach {} --file {}` or choose another location",
                        path.display(),
                        req.name,
                        path.display()
                    )))
                }
                (Err(_), Some(_)) => {
                    let parent = path.parent().unwrap_or(Path::new("/"));
                    if !parent.is_dir() {
                        return Err(ApiError::bad_request(format!("directory {} does not exist", parent.display())));
                    }
                    build_image = true;
                }
                (Ok(meta), None) => {
                    image_guard::unique_file(config, &path, &req.name)?;
                    if !(meta.is_file() || std::os::unix::fs::FileTypeExt::is_block_device(&meta.file_type())) {
                        return Err(ApiError::bad_request(format!("{} is not a regular file or block device", path.display())));
                    }
                    let bs = u64::from(req.block_size.unwrap_or(512));
                    if meta.is_file() && (meta.len() == 0 || meta.len() % bs != 0) {
                        return Err(ApiError::bad_request(format!(
                            "{} is {} bytes, not a non-zero multiple of the block size {bs}",
                            path.display(),
                            meta.len()
                        )));
                    }
                }
                (Err(e), None) => {
                    return Err(ApiError::bad_request(format!(
                        "cannot attach {}: {e}; to create a new image give a size (`tandem device create {} --size SIZE`)",
                        path.display(),
                        req.name
                    )))
                }
            }
            device.file = Some(path);
            device.size = req.size;
            device.block_device = req.block_device;
        }
        device.read_only = req.read_only;
        if let Some(bs) = req.block_size {
            device.block_size = bs;
        }
        device.cache = req.cache.unwrap_or_default();
        device.cache_size = req.cache_size;
        device.identity_seed = req.identity_seed.clone();
        let target = (!req.no_target).then(|| {
            TargetConfig::for_device(
                &req.target_alias
                    .clone()
                    .unwrap_or_else(|| alias_for_device(&req.name)),
                &req.name,
            )
        });
        // Check every rule now, before an image is built.
        let mut candidate = config.clone();
        candidate.devices.push(device.clone());
        candidate.targets.extend(target.clone());
        candidate.validate().map_err(ApiError::invalid)?;
        image_guard::check_ram(config, &candidate)?;
        Ok((device, target, build_image))
    }

    fn add_to(
        config: &mut NodeConfig,
        device: &DeviceConfig,
        target: &Option<TargetConfig>,
    ) -> Result<(), ApiError> {
        if config.device(&device.name).is_some() {
            return Err(ApiError::conflict(format!(
                "device `{}` already exists",
                device.name
            )));
        }
        config.devices.push(device.clone());
        config.targets.extend(target.clone());
        Ok(())
    }

    /// Creates or attaches a device. A new image is built in the background: the answer is
    /// then a job to follow.
    pub async fn create_device(
        self: &Arc<Self>,
        req: DeviceCreate,
    ) -> Result<Result<DeviceCreated, JobInfo>, ApiError> {
        let config = self.config().await;
        {
            let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
            if jobs.reserved.contains(&req.name) {
                return Err(ApiError::conflict(format!(
                    "device `{}` is being created; follow it with `tandem device show {}`",
                    req.name, req.name
                )));
            }
        }
        let (device, target, build_image) = self.plan_create(&config, &req)?;
        if !build_image {
            // Attaching is the explicit step that binds an existing image to this device.
            let wrote_record = bind_existing(&device, &config.node.name)?;
            let applied = match self.change(|c| Self::add_to(c, &device, &target)).await {
                Ok(a) => a,
                Err(e) => {
                    if let (Some(path), true) = (&device.file, wrote_record) {
                        let _ = std::fs::remove_file(image_id::record_path(path));
                    }
                    return Err(e);
                }
            };
            let config = self.config().await;
            let dp = self.dataplane_status().await;
            let info = self.device_info(
                &config,
                config.device(&device.name).unwrap_or(&device),
                dp.as_ref(),
            );
            return Ok(Ok(DeviceCreated {
                device: info,
                dataplane: applied,
            }));
        }
        let total = device.size.map_or(0, |s| s.bytes());
        let record = ImageRecord::new(
            &device.effective_identity_seed(&config.node.name),
            device.block_size,
            total,
        );
        let done = Arc::new(AtomicU64::new(0));
        let info = {
            let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
            if !jobs.reserved.insert(req.name.clone()) {
                return Err(ApiError::conflict(format!(
                    "device `{}` is being created",
                    req.name
                )));
            }
            jobs.next_id += 1;
            let info = JobInfo {
                id: jobs.next_id,
                kind: "create-image".into(),
                device: req.name.clone(),
                state: "running".into(),
                done_bytes: 0,
                total_bytes: total,
                error: None,
            };
            jobs.list.push_back(Job {
                info: info.clone(),
                done: done.clone(),
            });
            while jobs.list.len() > JOBS_KEPT_MAX {
                jobs.list.pop_front();
            }
            info
        };
        let node = self.clone();
        let id = info.id;
        tokio::spawn(async move {
            let path = device.file.clone().unwrap_or_default();
            // Order for crash safety: the image is built under a temporary name and renamed,
            // then bound (identity record), then the config is saved. A crash before the save
            // leaves no device (an orphan image that `attach` can take, or a temporary that
            // the next start removes); after it, the device with its image.
            let build = {
                let (path, done) = (path.clone(), done.clone());
                tokio::task::spawn_blocking(move || {
                    image::create_thick(&path, total, &done)?;
                    image_id::write(&path, &record).inspect_err(|_| {
                        let _ = std::fs::remove_file(&path);
                    })
                })
                .await
            };
            let result = match build {
                Ok(Ok(())) => node
                    .change(|c| Self::add_to(c, &device, &target))
                    .await
                    .map(|_| ())
                    .map_err(|e| {
                        let _ = std::fs::remove_file(&path);
                        let _ = std::fs::remove_file(image_id::record_path(&path));
                        e.message
                    }),
                Ok(Err(e)) => Err(format!("creating {}: {e}", path.display())),
                Err(e) => Err(format!("image task failed: {e}")),
            };
            if let Err(e) = &result {
                tracing::warn!(device = %device.name, error = %e, "device creation failed");
            }
            let mut jobs = node.jobs.lock().unwrap_or_else(|e| e.into_inner());
            jobs.reserved.remove(&device.name);
            if let Some(job) = jobs.list.iter_mut().find(|j| j.info.id == id) {
                job.info.state = if result.is_ok() { "done" } else { "failed" }.into();
                job.info.error = result.err();
            }
        });
        Ok(Err(info))
    }

    pub fn job(&self, id: u64) -> Option<JobInfo> {
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.list.iter().find(|j| j.info.id == id).map(|j| {
            let mut info = j.info.clone();
            info.done_bytes = j.done.load(Ordering::Relaxed);
            info
        })
    }

    pub async fn extend_device(&self, name: &str, new_size: u64) -> Result<Applied, ApiError> {
        let mut st = self.state.lock().await;
        let mut new = st.config.clone();
        let node_name = new.node.name.clone();
        let d = new.device_mut(name).ok_or_else(|| no_device(name))?;
        if d.replication.is_some() {
            // Growing one node's copy alone would let a host write beyond the partners' end.
            return Err(ApiError::conflict(format!(
                "device `{name}` is replicated: it is extended on every node at once (POST /api/v1/devices/{name}/extend without a phase)"
            )));
        }
        if d.read_only {
            return Err(ApiError::conflict(format!(
                "device `{name}` is read-only and cannot be extended"
            )));
        }
        let current = match d.backing() {
            Backing::Ram { size_bytes } => size_bytes,
            Backing::File { path, size_bytes } => {
                size_bytes.unwrap_or_else(|| std::fs::metadata(path).map_or(0, |m| m.len()))
            }
        };
        if new_size <= current {
            return Err(ApiError::bad_request(format!(
                "new size {} must be larger than the current {} (devices only grow)",
                tandem_config::format_size(new_size),
                tandem_config::format_size(current)
            )));
        }
        if new_size % u64::from(d.block_size) != 0 {
            return Err(ApiError::bad_request(format!(
                "new size {new_size} is not a multiple of the block size {}",
                d.block_size
            )));
        }
        let Some(path) = d.file.clone() else {
            d.ram_size = Some(tandem_config::Size(new_size));
            image_guard::check_ram(&st.config, &new)?;
            return self.commit(&mut st, new).await;
        };
        if d.block_device {
            d.size = Some(tandem_config::Size(new_size));
            new.validate().map_err(ApiError::invalid)?;
            return self.commit(&mut st, new).await;
        }
        let (seed, block_size) = (d.effective_identity_seed(&node_name), d.block_size);
        // Only an image that is verifiably this device's may be grown (and re-recorded).
        image_id::verify(
            &path,
            &image_id::Expected {
                device: name,
                identity_seed: &seed,
                block_size,
                size_bytes: d.size.map(tandem_config::Size::bytes),
            },
        )
        .map_err(|e| ApiError::conflict(format!("device `{name}` cannot be extended: {e}")))?;
        d.size = Some(tandem_config::Size(new_size));
        new.validate().map_err(ApiError::invalid)?;
        // Crash-safe order (issue 13, High 3): record the intent in the identity record,
        // grow the file, commit the config (the commit point), then clear the intent. A
        // restart in between finishes the extend if the config has the new size, or cuts
        // the never-served tail off if it does not (`tandem_config::image_id::verify`).
        let mut record = ImageRecord::new(&seed, block_size, current);
        record.pending_size_blocks = new_size / u64::from(block_size);
        {
            let (p, record) = (path.clone(), record.clone());
            tokio::task::spawn_blocking(move || image_id::write(&p, &record))
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?
                .map_err(|e| {
                    ApiError::internal(format!(
                        "recording the extend in {}: {e}; nothing was changed",
                        image_id::record_path(&path).display()
                    ))
                })?;
        }
        let undo = |path: PathBuf, record: ImageRecord| async move {
            let _ = tokio::task::spawn_blocking(move || {
                let cut = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(record.size_bytes()));
                let mut clean = record;
                clean.pending_size_blocks = 0;
                cut.and_then(|()| image_id::write(&path, &clean))
            })
            .await;
        };
        let grown = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                image::grow_thick(&path, new_size, &AtomicU64::new(0))
            })
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
        };
        if let Err(e) = grown {
            undo(path, record).await;
            return Err(ApiError::internal(format!(
                "growing the image: {e}; the device keeps its size"
            )));
        }
        match self.commit(&mut st, new).await {
            Ok(applied) => {
                let mut done = record;
                done.size_blocks = done.pending_size_blocks;
                done.pending_size_blocks = 0;
                let p = path.clone();
                let written = tokio::task::spawn_blocking(move || image_id::write(&p, &done)).await;
                if !matches!(written, Ok(Ok(()))) {
                    // The config is committed: the next start completes the record.
                    tracing::warn!(path = %path.display(), "could not clear the extend intent; the next start completes it");
                }
                Ok(applied)
            }
            Err(e) => {
                // The config was restored by commit; undo the file too unless the new size
                // reached node.toml (then the next start completes it).
                if st.config.device(name).and_then(|d| d.size)
                    != Some(tandem_config::Size(new_size))
                {
                    undo(path, record).await;
                }
                Err(e)
            }
        }
    }

    /// Re-binds a device's image as it is now (writes a new identity record from the config
    /// and the file's size) and opens it again: the documented way back from a missing or
    /// mismatched identity record, after the admin has made sure the file is the right one.
    pub async fn rebind_device(&self, name: &str) -> Result<Applied, ApiError> {
        let mut st = self.state.lock().await;
        let mut new = st.config.clone();
        let node_name = new.node.name.clone();
        let d = new.device_mut(name).ok_or_else(|| no_device(name))?;
        let Some(path) = d.file.clone() else {
            return Err(ApiError::bad_request(format!(
                "device `{name}` is a RAM disk; there is no image to bind"
            )));
        };
        if d.block_device {
            return Err(ApiError::bad_request(format!(
                "device `{name}` is a block device; block devices carry no identity record"
            )));
        }
        let meta = std::fs::metadata(&path).map_err(|e| {
            ApiError::conflict(format!(
                "cannot bind {}: {e}; restore the image first (it is never recreated)",
                path.display()
            ))
        })?;
        let bs = u64::from(d.block_size);
        if !meta.is_file() || meta.len() == 0 || meta.len() % bs != 0 {
            return Err(ApiError::bad_request(format!(
                "{} is not a regular file of a non-zero multiple of {bs} bytes",
                path.display()
            )));
        }
        if d.size.is_some() {
            d.size = Some(tandem_config::Size(meta.len()));
        }
        let device = d.clone();
        new.validate().map_err(ApiError::invalid)?;
        image_guard::confine(&path, &new.allowed_image_dirs(&self.data_dir))?;
        image_guard::unique_file(&new, &path, name)?;
        let record = ImageRecord::new(
            &device.effective_identity_seed(&node_name),
            device.block_size,
            meta.len(),
        );
        let p = path.clone();
        tokio::task::spawn_blocking(move || image_id::write(&p, &record))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| ApiError::internal(format!("writing the identity record: {e}")))?;
        tracing::warn!(device = %name, path = %path.display(), bytes = meta.len(), "image re-bound by the admin");
        if new != st.config {
            save(&self.config_path, &new).await?;
            st.config = new.clone();
            self.publish(&new);
        }
        if !self.dataplane_enabled {
            return Ok(Applied::Disabled);
        }
        let mut ipc = self.ipc.lock().await;
        let (Some(applied), Some(client)) = (st.applied.as_mut(), ipc.as_mut()) else {
            return Ok(Applied::Pending);
        };
        let request = tandem_config::ipc::Request::RetryDevice(device);
        client
            .call_ok(request.clone())
            .await
            .map_err(ApiError::dataplane)?;
        apply(applied, &request);
        Ok(Applied::Applied)
    }

    /// Removes a device and its targets (a target with other LUNs keeps them). Refused with
    /// 409 while initiators are logged in, unless `force`.
    pub async fn remove_device(
        &self,
        name: &str,
        force: bool,
        delete_file: bool,
    ) -> Result<Applied, ApiError> {
        let config = self.config().await;
        let device = config
            .device(name)
            .cloned()
            .ok_or_else(|| no_device(name))?;
        if !force {
            if let Some(dp) = self.dataplane_status().await {
                let info = self.device_info(&config, &device, Some(&dp));
                if info.sessions > 0 {
                    return Err(ApiError::conflict(format!(
                        "device `{name}` has {} open session(s); log the initiators out first, or use --force to end them",
                        info.sessions
                    )));
                }
            }
        }
        let applied = self
            .change(|c| {
                if c.device(name).is_none() {
                    return Err(no_device(name));
                }
                c.devices.retain(|d| d.name != name);
                for t in &mut c.targets {
                    t.luns.retain(|l| l != name);
                }
                c.targets.retain(|t| !t.luns.is_empty());
                Ok(())
            })
            .await?;
        if delete_file {
            if let Backing::File { path, .. } = device.backing() {
                if let Err(e) = std::fs::remove_file(path) {
                    tracing::warn!(path = %path.display(), error = %e, "could not delete the image");
                }
            }
        }
        Ok(applied)
    }

    pub fn uptime_s(&self) -> u64 {
        self.started.elapsed().as_secs()
    }
}

pub fn no_device(name: &str) -> ApiError {
    ApiError::not_found(format!(
        "no device named `{name}`; `tandem device list` shows them"
    ))
}

pub fn no_target(iqn: &str) -> ApiError {
    ApiError::not_found(format!(
        "no target with IQN `{iqn}`; `tandem target list` shows them"
    ))
}

/// Binds an existing regular file to `device` for an attach: writes its identity record if it
/// has none; keeps a record that already says the same; refuses one for another identity.
/// Returns whether a record was written.
fn bind_existing(device: &DeviceConfig, node_name: &str) -> Result<bool, ApiError> {
    let Some(path) = device.file.as_deref() else {
        return Ok(false);
    };
    if device.block_device {
        return Ok(false);
    }
    let len = std::fs::metadata(path)
        .map_err(|e| ApiError::bad_request(format!("cannot attach {}: {e}", path.display())))?
        .len();
    let seed = device.effective_identity_seed(node_name);
    let rec_path = image_id::record_path(path);
    match image_id::read(path) {
        Err(e) => Err(ApiError::internal(format!(
            "cannot read {}: {e}",
            rec_path.display()
        ))),
        Ok(None) => {
            image_id::write(path, &ImageRecord::new(&seed, device.block_size, len)).map_err(
                |e| ApiError::internal(format!("writing {}: {e}", rec_path.display())),
            )?;
            Ok(true)
        }
        Ok(Some(Ok(r))) if r.identity_seed == seed && r.block_size == device.block_size => {
            // Same identity: attaching binds the file as it is now (its size and inode).
            image_id::write(path, &ImageRecord::new(&seed, device.block_size, len)).map_err(
                |e| ApiError::internal(format!("writing {}: {e}", rec_path.display())),
            )?;
            Ok(false)
        }
        Ok(Some(Ok(r))) => Err(ApiError::conflict(format!(
            "{} binds this image to identity `{}` ({} bytes, block size {}); attach it with `--identity-seed {}` \
             to keep that identity, or delete {} to bind it anew",
            rec_path.display(),
            r.identity_seed,
            r.size_bytes(),
            r.block_size,
            r.identity_seed,
            rec_path.display()
        ))),
        Ok(Some(Err(e))) => Err(ApiError::conflict(format!(
            "{} {e}; delete it to bind the image anew",
            rec_path.display()
        ))),
    }
}

/// Saves off the async threads.
async fn save(path: &Path, config: &NodeConfig) -> Result<(), ApiError> {
    let (path, config) = (path.to_path_buf(), config.clone());
    tokio::task::spawn_blocking(move || config.save(&path))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| {
            ApiError::internal(format!(
                "saving the configuration failed, nothing was changed: {e}"
            ))
        })
}
