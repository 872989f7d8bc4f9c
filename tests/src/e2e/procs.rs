//! Starting and stopping the processes under test.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the workspace's binaries are: `$TANDEM_BIN_DIR`, else `target/release` or
/// `target/debug` (whichever has the newer `tandem-dataplane`).
pub fn bin(name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf();
    if let Ok(dir) = std::env::var("TANDEM_BIN_DIR") {
        // Relative paths are taken from the workspace root (cargo runs tests in tests/).
        return root.join(dir).join(name);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    let candidates = [
        target.join("release").join(name),
        target.join("debug").join(name),
    ];
    let newest = candidates
        .iter()
        .filter_map(|p| {
            p.metadata()
                .and_then(|m| m.modified())
                .ok()
                .map(|t| (t, p.clone()))
        })
        .max_by_key(|(t, _)| *t)
        .map(|(_, p)| p);
    newest.unwrap_or_else(|| {
        panic!("{name} is not built: run `cargo build --bins` (or set TANDEM_BIN_DIR) before the end-to-end tests")
    })
}

/// A free TCP port on 127.0.0.1 (bound and released; small race accepted in tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A child process killed (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn spawn(mut cmd: Command, name: &str) -> Proc {
        cmd.stdin(Stdio::null());
        // ETXTBSY: a test that has just copied the binary can find it "busy" while another
        // test thread's fork still holds the copy's write descriptor (until that child
        // execs). The race is in the test harness, not the target; try again briefly.
        let mut attempts = 0;
        let child = loop {
            match cmd.spawn() {
                Ok(child) => break child,
                Err(e) if e.raw_os_error() == Some(libc_etxtbsy()) && attempts < 50 => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("cannot start {name}: {e}"),
            }
        };
        Proc {
            child,
            name: name.to_string(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits up to `timeout` for a clean exit; returns the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        self.child.wait().ok();
        None
    }

    /// User + system CPU time the process used so far, in clock ticks (USER_HZ, 100 a
    /// second on Linux).
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .expect("read /proc/PID/stat");
        // Fields after the command name (in parentheses, which may hold spaces).
        let rest = &stat[stat.rfind(')').expect("comm field") + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.is_running() {
            self.terminate(Duration::from_secs(5));
        }
    }
}

/// A `tandem-dataplane serve` on a free loopback port.
pub struct Target {
    pub proc: Proc,
    pub portal: SocketAddr,
    pub iqn: String,
}

impl Target {
    /// `extra` are additional `serve` arguments (e.g. `--ram 128MiB`).
    pub fn serve(alias: &str, extra: &[&str]) -> Target {
        let port = free_port();
        let portal: SocketAddr = format!("127.0.0.1:{port}")
            .parse()
            .expect("valid socket address");
        let iqn = format!("iqn.2026-11.io.tandem:test-{alias}");
        let mut cmd = Command::new(bin("tandem-dataplane"));
        cmd.arg("serve")
            .arg("--portal")
            .arg(portal.to_string())
            .arg("--iqn")
            .arg(&iqn)
            .arg("--alias")
            .arg(alias);
        cmd.args(extra);
        // Runs a whole test file over the other socket I/O path:
        // TANDEM_SOCKET_IO=uring cargo test -p tandem-tests --test data_integrity
        if let Some(io) = std::env::var_os("TANDEM_SOCKET_IO") {
            if !extra.contains(&"--socket-io") {
                cmd.arg("--socket-io").arg(io);
            }
        }
        if std::env::var_os("TANDEM_LOG").is_none() {
            cmd.env("TANDEM_LOG", "warn");
        }
        let mut proc = Proc::spawn(cmd, "tandem-dataplane");
        if !wait_for_port(portal, Duration::from_secs(20)) {
            let _ = proc.child.kill();
            panic!("tandem-dataplane did not start listening on {portal}");
        }
        Target { proc, portal, iqn }
    }

    pub fn url(&self, lun: u32) -> String {
        format!("iscsi://{}/{}/{}", self.portal, self.iqn, lun)
    }
}

/// A directory on a real disk filesystem (O_DIRECT does not work on tmpfs, which /tmp
/// may be): `$TANDEM_SCRATCH`, else /var/tmp.
pub fn scratch_dir() -> PathBuf {
    std::env::var_os("TANDEM_SCRATCH")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"))
}

/// errno ETXTBSY ("Text file busy") on Linux.
const fn libc_etxtbsy() -> i32 {
    26
}
