//! The memory rule for RAM disks and RAM caches (documented in `docs/operations.md`):
//!
//! 1. Together, the RAM disks and RAM caches of a node may use at most
//!    [`RAM_SHARE_NUM`]/[`RAM_SHARE_DEN`] of the machine's memory (`MemTotal`). The total
//!    is the same at every start, so a config that was accepted keeps starting.
//! 2. A create or extend that adds RAM must also fit in `MemAvailable` at that moment, so a
//!    busy machine is not pushed into swapping or the OOM killer.
//!
//! The control service checks both before it saves a change; the data plane checks rule 1
//! again for each device it builds and fails that device alone when it does not fit.

use std::io;

pub const RAM_SHARE_NUM: u64 = 3;
pub const RAM_SHARE_DEN: u64 = 4;

/// `/proc/meminfo` figures in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemInfo {
    pub total: u64,
    pub available: u64,
}

impl MemInfo {
    pub fn read() -> io::Result<MemInfo> {
        let text = std::fs::read_to_string("/proc/meminfo")?;
        MemInfo::parse(&text).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "/proc/meminfo has no MemTotal/MemAvailable",
            )
        })
    }

    pub fn parse(text: &str) -> Option<MemInfo> {
        let field = |name: &str| {
            text.lines().find_map(|l| {
                let rest = l.strip_prefix(name)?.strip_prefix(':')?;
                let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
                kib.checked_mul(1024)
            })
        };
        Some(MemInfo {
            total: field("MemTotal")?,
            available: field("MemAvailable")?,
        })
    }

    /// Rule 1's limit.
    pub fn budget(&self) -> u64 {
        self.total / RAM_SHARE_DEN * RAM_SHARE_NUM
    }
}

/// Checks the rule for a node whose RAM disks and caches total `total_after` bytes once the
/// change is made, `added` of them new. `live` applies rule 2 (a create or extend now).
pub fn check(mem: &MemInfo, total_after: u64, added: u64, live: bool) -> Result<(), String> {
    let gib = |b: u64| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64);
    if total_after > mem.budget() {
        return Err(format!(
            "RAM disks and caches would total {}, over the limit of {} ({RAM_SHARE_NUM}/{RAM_SHARE_DEN} of the {} this machine has); \
             use an image file, a smaller size or a smaller cache",
            gib(total_after),
            gib(mem.budget()),
            gib(mem.total)
        ));
    }
    if live && added > mem.available {
        return Err(format!(
            "{} more RAM is needed but only {} is available now; free memory or use a smaller size",
            gib(added),
            gib(mem.available)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_rule() {
        let m = MemInfo::parse("MemTotal:  8388608 kB\nMemFree: 1 kB\nMemAvailable: 4194304 kB\n")
            .unwrap();
        assert_eq!(m.total, 8 << 30);
        assert_eq!(m.available, 4 << 30);
        assert_eq!(m.budget(), 6 << 30);
        assert!(check(&m, 6 << 30, 1 << 30, true).is_ok());
        assert!(check(&m, (6 << 30) + 1, 0, false)
            .unwrap_err()
            .contains("over the limit"));
        assert!(check(&m, 5 << 30, 5 << 30, true)
            .unwrap_err()
            .contains("available"));
        assert!(check(&m, 5 << 30, 5 << 30, false).is_ok());
        assert_eq!(MemInfo::parse("MemTotal: 1 kB\n"), None);
    }
}
