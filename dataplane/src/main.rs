//! `tandem-dataplane`: serve iSCSI targets from a node config file, or one device from the
//! command line (`serve`) for quick exports, tests and benchmarks.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand, ValueEnum};
use nix::sys::signal::{SigSet, Signal};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use tandem_bdev::CacheMode;
use tandem_dataplane::reactor::PollMode;
use tandem_dataplane::server::{
    Backing, DeviceSpec, NodeSpec, Server, TargetSpec, UserspacePortal,
};
use tandem_iscsi::login::AuthPolicy;

#[derive(Parser, Debug)]
#[command(
    name = "tandem-dataplane",
    version,
    about = "Tandem data plane: iSCSI targets on polled reactors"
)]
struct Cli {
    /// Node configuration (TOML); see docs/config.md.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Unix socket on which tandem-control sends live changes.
    #[arg(long, value_name = "PATH")]
    control_socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve one device as LUN 0 of one target, configured from the command line.
    Serve(ServeArgs),
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// iSCSI portal to listen on (repeatable).
    #[arg(
        long = "portal",
        value_name = "ADDR:PORT",
        default_value = "127.0.0.1:3260"
    )]
    portals: Vec<SocketAddr>,
    /// Also serve on a userspace TCP stack (smoltcp) attached to TAP device TAP, with its
    /// own address IP/PREFIX on the TAP's link, port PORT (default 3260). Repeatable.
    #[arg(long = "utcp", value_name = "TAP,IP/PREFIX[,PORT]", value_parser = parse_utcp)]
    utcp: Vec<UserspacePortal>,
    /// Target IQN (default: iqn.2026-11.io.tandem:<node>-<alias>).
    #[arg(long)]
    iqn: Option<String>,
    /// Node name used in the generated IQN and the device identity.
    #[arg(long, default_value = "tandem")]
    node: String,
    /// Device / target alias.
    #[arg(long, default_value = "disk0")]
    alias: String,
    /// Serve a RAM disk of this size (e.g. 1GiB).
    #[arg(long, value_name = "SIZE", conflicts_with = "file")]
    ram: Option<String>,
    /// Serve an image file (created thick if missing; then --size is required).
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// Size of a new image file.
    #[arg(long, value_name = "SIZE")]
    size: Option<String>,
    /// Logical block size: 512 (Linux, Xen, KVM hosts) or 4096 (Windows hosts).
    #[arg(long, default_value_t = 512, value_parser = parse_block_size)]
    block_size: u32,
    #[arg(long, value_enum, default_value_t = CacheArg::None)]
    cache: CacheArg,
    /// RAM cache size (default 256MiB when a cache is enabled).
    #[arg(long, value_name = "SIZE")]
    cache_size: Option<String>,
    #[arg(long)]
    read_only: bool,
    /// Reactor cores, e.g. "0,1" or "0-3" (default: one unpinned reactor).
    #[arg(long, value_name = "LIST")]
    cores: Option<String>,
    #[arg(long, value_enum, default_value_t = PollArg::Adaptive)]
    poll_mode: PollArg,
    /// Socket I/O of kernel TCP connections: `recv`/`writev` syscalls, or RECV/SEND queued on
    /// each reactor's io_uring with its device I/O (one `io_uring_enter` per reactor pass).
    #[arg(long, value_enum, default_value_t = SocketIoArg::Syscalls)]
    socket_io: SocketIoArg,
    /// Identity seed for serial / NAA / EUI-64 (an HA partner uses the same).
    #[arg(long)]
    identity_seed: Option<String>,
    /// Adaptive mode: how long an idle reactor keeps polling before it sleeps (µs).
    #[arg(long, value_name = "US", default_value_t = 200)]
    spin_us: u64,
    /// Ping an idle initiator with NOP-In after this many seconds (0: never).
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    nop_interval: u64,
    /// Close the connection when a ping stays unanswered this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 15)]
    nop_timeout: u64,
    /// A connection must finish login within this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    login_timeout: u64,
    /// Connections from one address that may be logging in at once (a newer one closes the
    /// oldest).
    #[arg(long, value_name = "N", default_value_t = 16)]
    prelogin_per_addr: usize,
    /// Memory budget per reactor for write buffers and unsent read data (e.g. 256MiB).
    #[arg(long, value_name = "SIZE", default_value = "256MiB")]
    mem_budget: String,
    /// CHAP user name the initiator must present (with a secret from --chap-secret-file,
    /// TANDEM_CHAP_SECRET or --chap-secret).
    #[arg(long)]
    chap_user: Option<String>,
    /// File holding the CHAP secret (trailing newline ignored); preferred: unlike the
    /// command line, it is not visible to other local users.
    #[arg(
        long,
        value_name = "PATH",
        requires = "chap_user",
        conflicts_with = "chap_secret"
    )]
    chap_secret_file: Option<PathBuf>,
    /// The CHAP secret itself. Visible to every local user in the process list: prefer
    /// --chap-secret-file or the TANDEM_CHAP_SECRET environment variable.
    #[arg(long, requires = "chap_user")]
    chap_secret: Option<String>,
    /// Allow only this initiator IQN (repeatable; default: everyone).
    #[arg(long = "allow-initiator", value_name = "IQN")]
    allow_initiators: Vec<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum CacheArg {
    None,
    WriteThrough,
    WriteBack,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum PollArg {
    Always,
    Adaptive,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum SocketIoArg {
    Syscalls,
    Uring,
}

fn parse_cores(s: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: usize = a
                .trim()
                .parse()
                .map_err(|_| format!("bad core list {s:?}"))?;
            let b: usize = b
                .trim()
                .parse()
                .map_err(|_| format!("bad core list {s:?}"))?;
            if a > b || b - a > 1024 {
                return Err(format!("bad core range {part:?}"));
            }
            out.extend(a..=b);
        } else {
            out.push(part.parse().map_err(|_| format!("bad core list {s:?}"))?);
        }
    }
    Ok(out)
}

fn parse_utcp(s: &str) -> Result<UserspacePortal, String> {
    let mut parts = s.split(',').map(str::trim);
    let (Some(tap), Some(cidr)) = (parts.next(), parts.next()) else {
        return Err(format!("{s:?} is not TAP,IP/PREFIX[,PORT]"));
    };
    let port = match parts.next() {
        Some(p) => p.parse().map_err(|_| format!("bad port {p:?} in {s:?}"))?,
        None => 3260,
    };
    if parts.next().is_some() {
        return Err(format!("{s:?} is not TAP,IP/PREFIX[,PORT]"));
    }
    // Validate now so a typo fails at the command line, not at start.
    tandem_dataplane::net::utcp::UtcpConfig::new(tap, cidr, port)?;
    Ok(UserspacePortal {
        tap: tap.to_string(),
        cidr: cidr.to_string(),
        port,
    })
}

fn parse_block_size(s: &str) -> Result<u32, String> {
    match s {
        "512" => Ok(512),
        "4096" => Ok(4096),
        _ => Err(format!("block size must be 512 or 4096, not {s}")),
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    tandem_config::parse_size(s).map_err(|e| e.to_string())
}

/// The CHAP secret from --chap-secret-file, else TANDEM_CHAP_SECRET, else --chap-secret (with
/// a warning: the command line is visible to every local user). Lengths follow the config
/// rule (12-255 bytes).
fn chap_secret(a: &ServeArgs) -> Result<Option<String>, String> {
    let secret = if let Some(path) = &a.chap_secret_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--chap-secret-file {}: {e}", path.display()))?;
        Some(text.trim_end_matches(['\n', '\r']).to_string())
    } else if let Some(s) = std::env::var("TANDEM_CHAP_SECRET")
        .ok()
        .filter(|_| a.chap_secret.is_none())
    {
        Some(s)
    } else if let Some(s) = &a.chap_secret {
        eprintln!(
            "tandem-dataplane: warning: --chap-secret is visible to every local user (ps, /proc); \
             use --chap-secret-file FILE or TANDEM_CHAP_SECRET"
        );
        Some(s.clone())
    } else {
        None
    };
    if a.chap_user.is_none() {
        return Ok(None);
    }
    if let Some(s) = &secret {
        let (min, max) = (
            tandem_config::CHAP_SECRET_LEN_MIN,
            tandem_config::CHAP_SECRET_LEN_MAX,
        );
        if !(min..=max).contains(&s.len()) {
            return Err(format!(
                "the CHAP secret is {} bytes; use {min}-{max} (12-16 works with every initiator)",
                s.len()
            ));
        }
    }
    Ok(secret)
}

fn serve_spec(a: ServeArgs) -> Result<NodeSpec, String> {
    let backing = match (&a.ram, &a.file) {
        (Some(r), None) => Backing::Ram {
            size_bytes: parse_size(r)?,
        },
        (None, Some(p)) => Backing::File {
            path: p.clone(),
            size_bytes: a.size.as_deref().map(parse_size).transpose()?,
        },
        (None, None) => return Err("give --ram SIZE or --file PATH".into()),
        (Some(_), Some(_)) => return Err("--ram and --file exclude each other".into()),
    };
    let cache = match a.cache {
        CacheArg::None => CacheMode::None,
        CacheArg::WriteThrough => CacheMode::WriteThrough,
        CacheArg::WriteBack => CacheMode::WriteBack,
    };
    let cache_size_bytes = a
        .cache_size
        .as_deref()
        .map(parse_size)
        .transpose()?
        .unwrap_or(256 << 20);
    // The command line names the device itself, so a block device needs no extra flag.
    let is_block_device = match &backing {
        Backing::File { path, .. } => std::fs::metadata(path)
            .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type())),
        Backing::Ram { .. } => false,
    };
    let pr_state_path = match &backing {
        Backing::File { path, .. } => Some(tandem_dataplane::config_spec::pr_state_beside(path)),
        Backing::Ram { .. } => None,
    };
    let iqn = a
        .iqn
        .clone()
        .unwrap_or_else(|| format!("iqn.2026-11.io.tandem:{}-{}", a.node, a.alias));
    let secret = chap_secret(&a)?;
    let auth = match (a.chap_user, secret) {
        (Some(username), Some(secret)) => AuthPolicy::Chap {
            username,
            secret,
            mutual: None,
        },
        (Some(_), None) => {
            return Err(
                "--chap-user needs a secret: --chap-secret-file FILE, TANDEM_CHAP_SECRET, or --chap-secret"
                    .into(),
            )
        }
        _ => AuthPolicy::None,
    };
    Ok(NodeSpec {
        portals: a.portals,
        userspace_portals: a.utcp,
        devices: vec![DeviceSpec {
            name: a.alias.clone(),
            backing,
            block_size: a.block_size,
            read_only: a.read_only,
            cache,
            cache_size_bytes,
            identity_seed: a
                .identity_seed
                .unwrap_or_else(|| format!("{}-{}", a.node, a.alias)),
            pr_state_path,
            // The command line names the file and, with --size, asks for it to be created.
            verify_identity: false,
            create_if_missing: true,
            image_dirs: Vec::new(),
            block_device: is_block_device,
            replication: None,
        }],
        targets: vec![TargetSpec {
            iqn,
            alias: Some(a.alias.clone()),
            luns: vec![a.alias],
            auth,
            allowed_initiators: a.allow_initiators,
        }],
        cores: a
            .cores
            .as_deref()
            .map(parse_cores)
            .transpose()?
            .unwrap_or_default(),
        poll_mode: match a.poll_mode {
            PollArg::Always => PollMode::Always,
            PollArg::Adaptive => PollMode::Adaptive,
        },
        spin: std::time::Duration::from_micros(a.spin_us),
        socket_io: match a.socket_io {
            SocketIoArg::Syscalls => tandem_dataplane::net::SocketIo::Syscalls,
            SocketIoArg::Uring => tandem_dataplane::net::SocketIo::Uring,
        },
        timers: tandem_dataplane::reactor_ctx::ConnTimers {
            nop_interval: (a.nop_interval > 0)
                .then(|| std::time::Duration::from_secs(a.nop_interval)),
            nop_timeout: std::time::Duration::from_secs(a.nop_timeout.max(1)),
            login_timeout: std::time::Duration::from_secs(a.login_timeout.max(1)),
            prelogin_per_addr: a.prelogin_per_addr.max(1),
            mem_budget_bytes: parse_size(&a.mem_budget)?,
        },
    })
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TANDEM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let mut node_config: Option<tandem_config::NodeConfig> = None;
    let mut config_dir = std::path::PathBuf::from(".");
    let serve_mode = matches!(cli.command, Some(Command::Serve(_)));
    let spec = match (cli.command, cli.config) {
        (Some(Command::Serve(a)), None) => serve_spec(a),
        (None, Some(path)) => match tandem_config::NodeConfig::load(&path) {
            Ok(cfg) => {
                config_dir = tandem_dataplane::config_spec::config_dir(&path);
                let spec = tandem_dataplane::config_spec::node_spec(&cfg, &config_dir);
                node_config = Some(cfg);
                Ok(spec)
            }
            Err(e) => Err(e.to_string()),
        },
        (Some(_), Some(_)) => Err("use either --config FILE or `serve`, not both".into()),
        (None, None) => {
            // The embedded default: a 1 GiB RAM disk on 127.0.0.1:3260, so a fresh clone
            // serves something with no configuration at all.
            let cfg = tandem_config::NodeConfig::default_ram(tandem_config::loopback_portal(3260));
            tracing::info!(
                "no --config given: serving the embedded default (RAM disk on 127.0.0.1:3260)"
            );
            let spec = tandem_dataplane::config_spec::node_spec(&cfg, &config_dir);
            node_config = Some(cfg);
            Ok(spec)
        }
    };
    let spec = match spec {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tandem-dataplane: {e}");
            return ExitCode::from(2);
        }
    };
    // Block the stop signals in every thread (threads inherit the mask) and wait for them
    // here, so shutdown runs in ordinary code rather than in a signal handler.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    if let Err(e) = signals.thread_block() {
        eprintln!("tandem-dataplane: cannot block signals: {e}");
        return ExitCode::FAILURE;
    }
    let server = match Server::start(spec) {
        Ok(s) => std::sync::Arc::new(s),
        Err(e) => {
            eprintln!("tandem-dataplane: {e}");
            return ExitCode::FAILURE;
        }
    };
    if serve_mode {
        // `serve` exports exactly one device: without it there is nothing to serve.
        if let Some(f) = server.failed.lock().first() {
            eprintln!("tandem-dataplane: device {}: {}", f.spec.name, f.reason);
            server.shutdown();
            return ExitCode::FAILURE;
        }
    }
    let control = match cli.control_socket {
        Some(p) => {
            let ctx = tandem_dataplane::control_link::NodeContext {
                config: node_config.unwrap_or_else(|| {
                    tandem_config::NodeConfig::empty("tandem", server.portals.clone())
                }),
                config_dir,
            };
            match tandem_dataplane::control_link::spawn(p.clone(), server.clone(), ctx) {
                Ok(c) => Some(c),
                Err(e) => {
                    eprintln!(
                        "tandem-dataplane: cannot open control socket {}: {e}",
                        p.display()
                    );
                    server.shutdown();
                    return ExitCode::FAILURE;
                }
            }
        }
        None => None,
    };
    match signals.wait() {
        Ok(sig) => tracing::info!(signal = ?sig, "stopping"),
        Err(e) => tracing::error!(error = %e, "sigwait failed; stopping"),
    }
    drop(control);
    server.shutdown();
    ExitCode::SUCCESS
}
