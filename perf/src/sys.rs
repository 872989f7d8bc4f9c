//! Process accounting: our own CPU time (getrusage) and other processes' CPU time and memory
//! from /proc.

use std::time::Duration;

/// User and system CPU time.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CpuTimes {
    pub user_s: f64,
    pub sys_s: f64,
}

impl CpuTimes {
    pub fn total_s(&self) -> f64 {
        self.user_s + self.sys_s
    }

    pub fn since(&self, earlier: &CpuTimes) -> CpuTimes {
        CpuTimes {
            user_s: self.user_s - earlier.user_s,
            sys_s: self.sys_s - earlier.sys_s,
        }
    }
}

fn tv(t: nix::sys::time::TimeVal) -> f64 {
    Duration::new(t.tv_sec() as u64, (t.tv_usec() as u32) * 1000).as_secs_f64()
}

/// CPU time of this process, all threads (getrusage RUSAGE_SELF).
pub fn self_cpu() -> CpuTimes {
    use nix::sys::resource::{getrusage, UsageWho};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => CpuTimes {
            user_s: tv(u.user_time()),
            sys_s: tv(u.system_time()),
        },
        Err(_) => CpuTimes::default(),
    }
}

/// CPU time of all waited-for children (getrusage RUSAGE_CHILDREN).
pub fn children_cpu() -> CpuTimes {
    use nix::sys::resource::{getrusage, UsageWho};
    match getrusage(UsageWho::RUSAGE_CHILDREN) {
        Ok(u) => CpuTimes {
            user_s: tv(u.user_time()),
            sys_s: tv(u.system_time()),
        },
        Err(_) => CpuTimes::default(),
    }
}

fn clock_ticks() -> f64 {
    // sysconf(_SC_CLK_TCK); 100 on every Linux we run on.
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map(|v| v as f64)
        .unwrap_or(100.0)
}

/// utime+stime of a process (all its threads, reaped or alive) from /proc/PID/stat.
pub fn proc_cpu(pid: u32) -> Option<CpuTimes> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    let hz = clock_ticks();
    Some(CpuTimes {
        user_s: f.get(11)?.parse::<f64>().ok()? / hz,
        sys_s: f.get(12)?.parse::<f64>().ok()? / hz,
    })
}

/// VmRSS and VmHWM of a process, in KiB.
pub fn proc_rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// The 1-minute load average and the whole `uptime`-style line.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
