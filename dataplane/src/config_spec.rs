//! Turns a validated node config (`tandem-config`) into the data plane's own description of
//! what to serve.

use crate::reactor::PollMode;
use crate::server::{Backing, DeviceSpec, NodeSpec, TargetSpec};
use std::path::Path;
use std::time::Duration;
use tandem_config::{DeviceConfig, NodeConfig, TargetConfig};
use tandem_iscsi::login::AuthPolicy;

/// How long an idle reactor spins before it sleeps (adaptive mode).
pub const DEFAULT_SPIN: Duration = Duration::from_micros(200);

pub fn load(path: &Path) -> Result<NodeSpec, String> {
    let cfg = NodeConfig::load(path).map_err(|e| e.to_string())?;
    Ok(node_spec(&cfg, &config_dir(path)))
}

/// The directory holding the config file: the default image directory when the config
/// names none (it is the control service's data dir).
pub fn config_dir(config_path: &Path) -> std::path::PathBuf {
    match config_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    }
}

/// `config_dir`: see [`config_dir`].
pub fn node_spec(cfg: &NodeConfig, config_dir: &Path) -> NodeSpec {
    NodeSpec {
        portals: cfg.node.portals.clone(),
        userspace_portals: Vec::new(),
        devices: cfg
            .devices
            .iter()
            .map(|d| device_spec(cfg, config_dir, d))
            .collect(),
        targets: cfg.targets.iter().map(|t| target_spec(cfg, t)).collect(),
        cores: cfg.node.cores.clone(),
        poll_mode: match cfg.node.poll_mode {
            tandem_config::PollMode::Adaptive => PollMode::Adaptive,
            tandem_config::PollMode::Always => PollMode::Always,
        },
        spin: DEFAULT_SPIN,
        timers: crate::reactor_ctx::ConnTimers {
            mem_budget_bytes: cfg
                .node
                .mem_budget
                .map(|s| s.bytes())
                .unwrap_or(crate::conn::DEFAULT_BUDGET_BYTES),
            ..Default::default()
        },
    }
}

/// The PR state file of an image: its full file name plus `.pr` (`x.img` → `x.img.pr`), so
/// `x.img` and `x.raw` never share one.
pub fn pr_state_beside(image: &Path) -> std::path::PathBuf {
    let mut name = image.file_name().unwrap_or_default().to_os_string();
    name.push(".pr");
    image.with_file_name(name)
}

pub fn device_spec(cfg: &NodeConfig, config_dir: &Path, d: &DeviceConfig) -> DeviceSpec {
    let backing = match d.backing() {
        tandem_config::Backing::Ram { size_bytes } => Backing::Ram { size_bytes },
        tandem_config::Backing::File { path, size_bytes } => Backing::File {
            path: path.to_path_buf(),
            size_bytes,
        },
    };
    // APTPL state lives in the data dir if there is one, else beside the image file.
    let pr_state_path = match (&cfg.node.data_dir, &backing) {
        (Some(dir), _) => Some(dir.join(format!("{}.pr", d.name))),
        (None, Backing::File { path, .. }) => Some(pr_state_beside(path)),
        (None, Backing::Ram { .. }) => None,
    };
    DeviceSpec {
        name: d.name.clone(),
        backing,
        block_size: d.block_size,
        read_only: d.read_only,
        cache: d.cache,
        cache_size_bytes: d.effective_cache_size(),
        identity_seed: d.effective_identity_seed(&cfg.node.name),
        pr_state_path,
        // Block devices carry no identity record (there is no place beside them for one).
        verify_identity: !d.block_device,
        create_if_missing: false,
        image_dirs: if d.block_device {
            Vec::new()
        } else {
            cfg.allowed_image_dirs(config_dir)
        },
        block_device: d.block_device,
    }
}

pub fn auth_policy(chap: Option<&tandem_config::Chap>) -> AuthPolicy {
    match chap {
        None => AuthPolicy::None,
        Some(c) => AuthPolicy::Chap {
            username: c.username.clone(),
            secret: c.secret.clone(),
            mutual: match (&c.mutual_username, &c.mutual_secret) {
                (Some(u), Some(s)) => Some((u.clone(), s.clone())),
                _ => None,
            },
        },
    }
}

pub fn target_spec(cfg: &NodeConfig, t: &TargetConfig) -> TargetSpec {
    TargetSpec {
        iqn: t.iqn(&cfg.node.name),
        alias: Some(t.alias.clone()),
        luns: t.luns.clone(),
        auth: auth_policy(t.chap.as_ref()),
        allowed_initiators: t.allowed_initiators.clone(),
    }
}
