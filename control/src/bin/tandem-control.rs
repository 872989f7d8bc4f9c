//! `tandem-control`: the node's control service.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

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
    let dataplane_bin = if args.no_dataplane {
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
    };
    if let Err(e) = server::run(opts, server::shutdown_signal()).await {
        eprintln!("tandem-control: {e}");
        std::process::exit(1);
    }
}
