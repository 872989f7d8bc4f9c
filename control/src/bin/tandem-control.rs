//! `tandem-control`: the node's control service.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use tandem_control::server::{self, Options, DEFAULT_API};

/// Tandem control service: owns DATA_DIR/node.toml, runs and supervises the data plane,
/// serves the management API (token in DATA_DIR/token).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Directory holding node.toml, token, dataplane.sock and (by default) new images.
    #[arg(long, env = "TANDEM_DATA_DIR", default_value = "/var/lib/tandem")]
    data_dir: PathBuf,
    /// Address of the management API.
    #[arg(long, env = "TANDEM_API_ADDR", default_value = DEFAULT_API)]
    api: SocketAddr,
    /// iSCSI portal (ip:port); repeat for several. Replaces the configured portals.
    #[arg(long = "portal", value_name = "ADDR:PORT")]
    portals: Vec<SocketAddr>,
    /// Node name for a new configuration (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// Data plane binary (default: tandem-dataplane next to this program, else on PATH).
    #[arg(long, value_name = "PATH")]
    dataplane_bin: Option<PathBuf>,
    /// A directory image files may live in (besides the data dir); repeat for several.
    /// Replaces `node.image_dirs` in node.toml. Absolute, without `..`.
    #[arg(long = "image-dir", value_name = "DIR")]
    image_dirs: Vec<PathBuf>,
    /// Do not start a data plane: API and configuration only.
    #[arg(long, conflicts_with = "dataplane_bin")]
    no_dataplane: bool,
    /// `node` (data node) or `witness` (control service only: no data plane, no iSCSI;
    /// holds the failover authority of node-majority devices that name it).
    #[arg(long, value_enum, default_value = "node")]
    role: tandem_control::ha::Role,
    /// Lease the failover authority grants, in ms.
    #[arg(long, value_name = "MS", default_value_t = 1500, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    ha_lease_ms: u64,
    /// Clock-drift margin the authority waits beyond a lease, in ms.
    #[arg(long, value_name = "MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    ha_margin_ms: u64,
    /// Heartbeat interval per link, in ms.
    #[arg(long, value_name = "MS", default_value_t = 200, value_parser = clap::value_parser!(u64).range(10..=10_000))]
    heartbeat_interval_ms: u64,
    /// A link is down after this long without an authentic heartbeat, in ms.
    #[arg(long, value_name = "MS", default_value_t = 1500, value_parser = clap::value_parser!(u64).range(50..=60_000))]
    heartbeat_timeout_ms: u64,
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let witness = args.role == tandem_control::ha::Role::Witness;
    let dataplane_bin = if args.no_dataplane || witness {
        None
    } else {
        Some(
            args.dataplane_bin
                .unwrap_or_else(tandem_control::supervisor::default_binary),
        )
    };
    let opts = Options {
        data_dir: args.data_dir,
        api: args.api,
        portals: args.portals,
        node_name: args.node_name,
        dataplane_bin,
        image_dirs: args.image_dirs,
        role: args.role,
        ha: tandem_control::ha::HaSettings {
            lease: Duration::from_millis(args.ha_lease_ms),
            margin: Duration::from_millis(args.ha_margin_ms),
            heartbeat_interval: Duration::from_millis(args.heartbeat_interval_ms),
            heartbeat_timeout: Duration::from_millis(args.heartbeat_timeout_ms),
            ..Default::default()
        },
    };
    if let Err(e) = opts.ha.check() {
        eprintln!("tandem-control: {e}");
        std::process::exit(2);
    }
    if let Err(e) = server::run(opts, server::shutdown_signal()).await {
        eprintln!("tandem-control: {e}");
        std::process::exit(1);
    }
}
