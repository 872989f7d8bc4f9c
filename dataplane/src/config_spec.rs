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
        socket_io: match cfg.node.socket_io {
            tandem_config::SocketIo::Syscalls => crate::net::SocketIo::Syscalls,
            tandem_config::SocketIo::Uring => crate::net::SocketIo::Uring,
        },
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
        replication: d.replication.as_ref().map(|r| {
            replication_spec(cfg, config_dir, d, r)
                .map_err(|e| format!("[device.replication] of {}: {e}", d.name))
        }),
    }
}

/// The replica metadata of a device: `<data_dir>/<device>.ha-meta`, else beside the image
/// (`x.img.ha-meta`); a RAM device without a data dir keeps it in memory.
pub fn ha_meta_path(cfg: &NodeConfig, d: &DeviceConfig) -> Option<std::path::PathBuf> {
    match (&cfg.node.data_dir, d.backing()) {
        (Some(dir), _) => Some(dir.join(format!("{}.ha-meta", d.name))),
        (None, tandem_config::Backing::File { path, .. }) => {
            let mut name = path.file_name().unwrap_or_default().to_os_string();
            name.push(".ha-meta");
            Some(path.with_file_name(name))
        }
        (None, tandem_config::Backing::Ram { .. }) => None,
    }
}

/// Reads the cluster secret: hex (what `tandem-control` writes) or, if the file is not hex,
/// its raw bytes; at least 16 bytes either way.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, String> {
    let raw = std::fs::read(path).map_err(|e| format!("secret file {}: {e}", path.display()))?;
    let text = std::str::from_utf8(&raw).map(str::trim).unwrap_or("");
    let secret =
        if !text.is_empty() && text.len() & 1 == 0 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..text.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap_or(0))
                .collect()
        } else {
            raw
        };
    if secret.len() < 16 {
        return Err(format!(
            "secret file {}: {} bytes of secret; at least 16 are required",
            path.display(),
            secret.len()
        ));
    }
    Ok(secret)
}

fn replication_spec(
    cfg: &NodeConfig,
    config_dir: &Path,
    d: &DeviceConfig,
    r: &tandem_config::ReplicationConfig,
) -> Result<crate::server::ReplicationSpec, String> {
    use sha2::Digest;
    let secret_path = if r.secret_file.is_absolute() {
        r.secret_file.clone()
    } else {
        config_dir.join(&r.secret_file)
    };
    let secret = read_secret(&secret_path)?;
    // Every replica of the device shares its identity seed, so these agree across nodes.
    let seed = d.effective_identity_seed(&cfg.node.name);
    let cluster = sha2::Sha256::digest(format!("tandem-cluster:{seed}").as_bytes());
    let device = sha2::Sha256::digest(format!("tandem-device:{seed}").as_bytes());
    let mut cluster_id = [0u8; 16];
    cluster_id.copy_from_slice(&cluster[..16]);
    let mut device_id = [0u8; 8];
    device_id.copy_from_slice(&device[..8]);
    Ok(crate::server::ReplicationSpec {
        node_id: r.node_id,
        secret,
        cluster_id,
        device_id: u64::from_be_bytes(device_id),
        meta_path: ha_meta_path(cfg, d),
        resync_latency_target_ms: r.resync_latency_target_ms,
        partners: r.partners.clone(),
        journal: match r.journal {
            tandem_config::JournalKind::Ram => tandem_ha::journal::JournalKind::Ram,
            tandem_config::JournalKind::DiskFailure => tandem_ha::journal::JournalKind::DiskFailure,
            tandem_config::JournalKind::DiskContinuous => {
                tandem_ha::journal::JournalKind::DiskContinuous
            }
        },
        // `journal_location`, else beside the replica metadata (the data dir).
        journal_dir: match &r.journal_location {
            Some(dir) if dir.is_absolute() => Some(dir.clone()),
            Some(dir) => Some(config_dir.join(dir)),
            None => ha_meta_path(cfg, d)
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .filter(|p| !p.as_os_str().is_empty()),
        },
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, secret_file: &str) -> NodeConfig {
        let text = format!(
            r#"[node]
name = "node1"
portals = ["127.0.0.1:3260"]
data_dir = "{dir}"

[[device]]
name = "ha"
ram_size = "16MiB"
identity_seed = "shared-seed"

[device.replication]
node_id = 1
secret_file = "{dir}/{secret_file}"

[[device.replication.partner]]
name = "node2"
node_id = 2
sync_links = ["127.0.0.1:7000=127.0.0.2:7000"]
"#,
            dir = dir.display()
        );
        NodeConfig::from_toml_str(&text, "test").unwrap()
    }

    fn spec(dir: &Path, secret_file: &str) -> Result<crate::server::ReplicationSpec, String> {
        let cfg = config(dir, secret_file);
        device_spec(&cfg, dir, &cfg.devices[0]).replication.unwrap()
    }

    #[test]
    fn replication_secret_hex_raw_short_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("hex"), "00112233445566778899aabbccddeeff\n").unwrap();
        let s = spec(d, "hex").unwrap();
        assert_eq!(s.secret.len(), 16);
        assert_eq!(s.secret[15], 0xff);
        assert_eq!(s.meta_path, Some(d.join("ha.ha-meta")));
        assert_eq!(s.partners[0].node_id, 2);
        // Ids depend on the identity seed only: every replica derives the same ones.
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join("hex"), "ffeeddccbbaa99887766554433221100").unwrap();
        let s2 = spec(other.path(), "hex").unwrap();
        assert_eq!((s.cluster_id, s.device_id), (s2.cluster_id, s2.device_id));

        std::fs::write(d.join("raw"), b"not hex but twenty bytes").unwrap();
        assert_eq!(spec(d, "raw").unwrap().secret, b"not hex but twenty bytes");

        std::fs::write(d.join("short"), "0011223344").unwrap();
        let e = spec(d, "short").unwrap_err();
        assert!(e.contains("at least 16"), "{e}");
        let e = spec(d, "absent").unwrap_err();
        assert!(e.contains("absent"), "{e}");
        // The reason reaches the device's failure.
        let cfg = config(d, "short");
        let ds = device_spec(&cfg, d, &cfg.devices[0]);
        let e = crate::server::build_device(&ds).err().unwrap().to_string();
        assert!(
            e.contains("replication") && e.contains("at least 16"),
            "{e}"
        );
    }
}
