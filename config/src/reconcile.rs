//! Turning a config change into the IPC requests that apply it live, and replaying requests on
//! a config model (to track what the data plane has).
//!
//! [`plan`] diffs two *valid* configs and returns requests in a safe order:
//! 1. `RemoveTarget` for targets that went away or must be re-created (LUNs/alias changed, or a
//!    device they export must be re-created);
//! 2. `RemoveDevice` for devices that went away or changed in a way that cannot be applied live
//!    (file, block size, read-only, identity, or shrinking);
//! 3. `AddDevice`, `ExtendDevice` (size grew), `SetCacheMode` (cache or cache size changed);
//! 4. `AddTarget` for new/re-created targets (they carry their CHAP and ACL);
//! 5. `SetChap` / `SetAcl` for kept targets whose CHAP or ACL changed.
//!
//! [`apply`] performs one request on a config, so `apply(plan(a, b))` on `a` gives `b`'s
//! devices and targets (node section and servers are not part of the data plane's live state).

use std::collections::HashSet;

use crate::ipc::Request;
use crate::model::{Backing, DeviceConfig, NodeConfig, TargetConfig};
use crate::size::Size;

/// Size of a device as configured (`ram_size` or `size`), None for a file attached as it is.
fn configured_size(d: &DeviceConfig) -> Option<u64> {
    match d.backing() {
        Backing::Ram { size_bytes } => Some(size_bytes),
        Backing::File { size_bytes, .. } => size_bytes,
    }
}

/// True when `new` differs from `old` only in size (grown), cache mode or cache size.
fn live_changeable(old: &DeviceConfig, new: &DeviceConfig) -> bool {
    let grown_or_same = match (configured_size(old), configured_size(new)) {
        (Some(a), Some(b)) => b >= a,
        (None, _) => true,
        (Some(_), None) => false,
    };
    let strip = |d: &DeviceConfig| DeviceConfig {
        ram_size: d.ram_size.map(|_| Size(0)),
        size: None,
        cache: Default::default(),
        cache_size: None,
        ..d.clone()
    };
    grown_or_same && strip(old) == strip(new)
}

/// The requests that take a data plane serving `from` to serving `to`.
pub fn plan(from: &NodeConfig, to: &NodeConfig) -> Vec<Request> {
    let mut out = Vec::new();
    let node = &to.node.name;
    let old_node = &from.node.name;

    let recreated_devices: HashSet<&str> = from
        .devices
        .iter()
        .filter(|old| match to.device(&old.name) {
            None => true,
            Some(new) => !live_changeable(old, new),
        })
        .map(|d| d.name.as_str())
        .collect();

    let target_key = |t: &TargetConfig, n: &str| t.iqn(n).to_ascii_lowercase();
    let same_export = |a: &TargetConfig, b: &TargetConfig| a.alias == b.alias && a.luns == b.luns;
    let mut kept_targets = Vec::new();
    for old in &from.targets {
        let key = target_key(old, old_node);
        let new = to.targets.iter().find(|t| target_key(t, node) == key);
        match new {
            Some(new)
                if same_export(old, new)
                    && !old
                        .luns
                        .iter()
                        .any(|l| recreated_devices.contains(l.as_str())) =>
            {
                kept_targets.push((old, new));
            }
            _ => out.push(Request::RemoveTarget {
                iqn: old.iqn(old_node),
            }),
        }
    }
    for name in from.devices.iter().map(|d| d.name.as_str()) {
        if recreated_devices.contains(name) {
            out.push(Request::RemoveDevice {
                name: name.to_string(),
            });
        }
    }
    for new in &to.devices {
        match from.device(&new.name) {
            Some(old) if !recreated_devices.contains(old.name.as_str()) => {
                if let (Some(a), Some(b)) = (configured_size(old), configured_size(new)) {
                    if b > a {
                        out.push(Request::ExtendDevice {
                            name: new.name.clone(),
                            new_size_bytes: b,
                        });
                    }
                } else if let (None, Some(b)) = (configured_size(old), configured_size(new)) {
                    out.push(Request::ExtendDevice {
                        name: new.name.clone(),
                        new_size_bytes: b,
                    });
                }
                if old.cache != new.cache
                    || old.effective_cache_size() != new.effective_cache_size()
                {
                    out.push(Request::SetCacheMode {
                        name: new.name.clone(),
                        cache: new.cache,
                        cache_size: new.cache_size,
                    });
                }
            }
            _ => out.push(Request::AddDevice(new.clone())),
        }
    }
    let kept: HashSet<String> = kept_targets
        .iter()
        .map(|(_, new)| target_key(new, node))
        .collect();
    for new in &to.targets {
        if !kept.contains(&target_key(new, node)) {
            out.push(Request::AddTarget(new.clone()));
        }
    }
    for (old, new) in kept_targets {
        let iqn = new.iqn(node);
        if old.chap != new.chap {
            out.push(Request::SetChap {
                iqn: iqn.clone(),
                chap: new.chap.clone(),
            });
        }
        if old.allowed_initiators != new.allowed_initiators {
            out.push(Request::SetAcl {
                iqn,
                allowed_initiators: new.allowed_initiators.clone(),
            });
        }
    }
    out
}

/// Performs `request` on `config` as the data plane would. Returns false (and changes nothing)
/// when the request does not fit the config (unknown name, duplicate, read-only request).
pub fn apply(config: &mut NodeConfig, request: &Request) -> bool {
    let node = config.node.name.clone();
    match request {
        // GrowReplica changes no configuration: the LU keeps its size until ExtendDevice.
        Request::Hello
        | Request::Status
        | Request::Stats
        | Request::HaExchange { .. }
        | Request::GrowReplica { .. } => false,
        Request::AddDevice(d) => {
            if config.device(&d.name).is_some() {
                return false;
            }
            config.devices.push(d.clone());
            true
        }
        Request::RetryDevice(d) => match config.device_mut(&d.name) {
            Some(old) => {
                *old = d.clone();
                true
            }
            None => false,
        },
        Request::RemoveDevice { name } => {
            let before = config.devices.len();
            config.devices.retain(|d| d.name != *name);
            before != config.devices.len()
        }
        Request::ExtendDevice {
            name,
            new_size_bytes,
        } => match config.device_mut(name) {
            Some(d) => {
                if d.ram_size.is_some() {
                    d.ram_size = Some(Size(*new_size_bytes));
                } else {
                    d.size = Some(Size(*new_size_bytes));
                }
                true
            }
            None => false,
        },
        Request::SetCacheMode {
            name,
            cache,
            cache_size,
        } => match config.device_mut(name) {
            Some(d) => {
                d.cache = *cache;
                d.cache_size = *cache_size;
                true
            }
            None => false,
        },
        Request::AddTarget(t) => {
            if config.target_by_iqn(&t.iqn(&node)).is_some() {
                return false;
            }
            config.targets.push(t.clone());
            true
        }
        Request::RemoveTarget { iqn } => {
            let before = config.targets.len();
            config
                .targets
                .retain(|t| !t.iqn(&node).eq_ignore_ascii_case(iqn));
            before != config.targets.len()
        }
        Request::SetChap { iqn, chap } => match config.target_by_iqn_mut(iqn) {
            Some(t) => {
                t.chap = chap.clone();
                true
            }
            None => false,
        },
        Request::SetAcl {
            iqn,
            allowed_initiators,
        } => match config.target_by_iqn_mut(iqn) {
            Some(t) => {
                t.allowed_initiators = allowed_initiators.clone();
                true
            }
            None => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{loopback_portal, CacheMode, Chap};

    fn base() -> NodeConfig {
        let mut c = NodeConfig::empty("n1", vec![loopback_portal(3260)]);
        c.devices.push(DeviceConfig::ram("a", 1 << 20));
        c.devices
            .push(DeviceConfig::file("b", "/b.img", Some(1 << 20)));
        c.targets.push(TargetConfig::for_device("a", "a"));
        c.targets.push(TargetConfig::for_device("b", "b"));
        c.validate().unwrap();
        c
    }

    /// plan(from, to) applied to from gives to (up to device/target order).
    fn check(from: &NodeConfig, to: &NodeConfig) -> Vec<Request> {
        to.validate().unwrap();
        let reqs = plan(from, to);
        let mut cur = from.clone();
        for r in &reqs {
            assert!(apply(&mut cur, r), "request did not apply: {r:?}");
        }
        let sorted = |c: &NodeConfig| {
            let mut d = c.devices.clone();
            d.sort_by(|x, y| x.name.cmp(&y.name));
            let mut t = c.targets.clone();
            t.sort_by(|x, y| x.alias.cmp(&y.alias));
            (d, t)
        };
        assert_eq!(sorted(&cur), sorted(to));
        reqs
    }

    #[test]
    fn no_change_no_requests() {
        assert_eq!(check(&base(), &base()), vec![]);
    }

    #[test]
    fn add_and_remove() {
        let from = base();
        let mut to = base();
        to.devices.push(DeviceConfig::ram("c", 1 << 20));
        to.targets.push(TargetConfig::for_device("c", "c"));
        let reqs = check(&from, &to);
        assert!(
            matches!(&reqs[..], [Request::AddDevice(d), Request::AddTarget(t)] if d.name == "c" && t.alias == "c")
        );
        let reqs = check(&to, &from);
        assert_eq!(
            reqs,
            vec![
                Request::RemoveTarget {
                    iqn: "iqn.2026-11.io.tandem:n1-c".into()
                },
                Request::RemoveDevice { name: "c".into() },
            ]
        );
    }

    #[test]
    fn extend_cache_chap_acl_are_live() {
        let from = base();
        let mut to = base();
        to.device_mut("a").unwrap().ram_size = Some(Size(2 << 20));
        to.device_mut("b").unwrap().cache = CacheMode::WriteBack;
        to.targets[0].chap = Some(Chap {
            username: "u".into(),
            secret: "0123456789ab".into(),
            mutual_username: None,
            mutual_secret: None,
        });
        to.targets[1].allowed_initiators = vec!["iqn.1994-05.com.redhat:h".into()];
        let reqs = check(&from, &to);
        assert_eq!(reqs.len(), 4, "{reqs:?}");
        assert!(reqs.iter().all(|r| !matches!(
            r,
            Request::RemoveTarget { .. } | Request::RemoveDevice { .. }
        )));
    }

    #[test]
    fn incompatible_changes_recreate_device_and_its_targets() {
        let from = base();
        let mut to = base();
        to.device_mut("b").unwrap().block_size = 4096;
        let reqs = check(&from, &to);
        assert!(matches!(&reqs[0], Request::RemoveTarget { iqn } if iqn.ends_with("n1-b")));
        assert!(matches!(&reqs[1], Request::RemoveDevice { name } if name == "b"));
        // Shrinking is not live either.
        let mut to = base();
        to.device_mut("a").unwrap().ram_size = Some(Size(1 << 19));
        assert_eq!(check(&from, &to).len(), 4);
        // Changing a target's LUNs re-creates only that target.
        let mut to = base();
        to.targets[1].luns = vec!["b".into(), "a".into()];
        let reqs = check(&from, &to);
        assert_eq!(reqs.len(), 2, "{reqs:?}");
    }

    #[test]
    fn attached_file_gets_size_on_extend() {
        let mut from = base();
        from.device_mut("b").unwrap().size = None;
        let to = base();
        assert_eq!(
            check(&from, &to),
            vec![Request::ExtendDevice {
                name: "b".into(),
                new_size_bytes: 1 << 20
            }]
        );
    }

    #[test]
    fn apply_refuses_what_does_not_fit() {
        let mut c = base();
        assert!(!apply(&mut c, &Request::RemoveDevice { name: "zz".into() }));
        assert!(!apply(
            &mut c,
            &Request::AddDevice(DeviceConfig::ram("a", 512))
        ));
        assert!(!apply(
            &mut c,
            &Request::SetAcl {
                iqn: "iqn.x:y".into(),
                allowed_initiators: vec![]
            }
        ));
        assert!(!apply(&mut c, &Request::Stats));
        assert_eq!(c, base());
    }
}
