//! `tandem`: command-line client of the Tandem management API.
#![forbid(unsafe_code)]

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use serde::Serialize;
use tandem_config::ipc::DeviceStats;
use tandem_config::{
    format_size, format_size_approx, CacheMode, Chap, FailoverStrategy, JournalKind, LinkPair,
    Priority, Size,
};
use tandem_control::api_types::*;
use tandem_control::client::{exit, segment, Client, ClientError};

/// Manage a Tandem node: devices, targets, CHAP, ACLs, servers, statistics.
///
/// Exit codes: 0 ok, 1 failure, 2 bad usage, 3 API unreachable, 4 bad/missing token,
/// 5 not found, 6 conflict (exists, in use), 7 invalid request, 8 data plane not running.
#[derive(Parser, Debug)]
#[command(version, propagate_version = true)]
struct Cli {
    /// Management API URL.
    #[arg(
        long,
        global = true,
        env = "TANDEM_API",
        default_value = "http://127.0.0.1:3261"
    )]
    api: String,
    /// File holding the API token (written by tandem-control on first start).
    #[arg(
        long,
        global = true,
        env = "TANDEM_TOKEN_FILE",
        default_value = "/var/lib/tandem/token"
    )]
    token_file: PathBuf,
    /// Print JSON instead of tables (stable field names, see docs/api/openapi.yaml).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Node, data plane and API status.
    Status,
    /// Other nodes of the cluster.
    #[command(subcommand)]
    Server(ServerCmd),
    /// Virtual disks.
    #[command(subcommand)]
    Device(DeviceCmd),
    /// Replicas of a device on other nodes (HA devices).
    #[command(subcommand)]
    Replica(ReplicaCmd),
    /// iSCSI targets.
    #[command(subcommand)]
    Target(TargetCmd),
    /// CHAP credentials of a target.
    #[command(subcommand)]
    Chap(ChapCmd),
    /// Initiators allowed to log in to a target (empty list: everyone).
    #[command(subcommand)]
    Acl(AclCmd),
    /// I/O statistics: IOPS, throughput, latency percentiles, queue depth, sessions.
    Stats {
        /// Only this device.
        device: Option<String>,
        /// Refresh every interval, showing rates.
        #[arg(long, short)]
        watch: bool,
        /// Seconds between refreshes with --watch.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Stop after this many refreshes (default: until interrupted).
        #[arg(long)]
        count: Option<u64>,
    },
    /// Raw Prometheus metrics (what /metrics serves).
    Metrics,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand, Debug)]
enum ServerCmd {
    /// Add a node by its node name and management address (ip:port). With `--token-file FILE`
    /// (that node's DATA_DIR/token, written after `add`) the node is checked at once and can
    /// hold replicas; the token is copied to this node's DATA_DIR/servers/NAME.token (0600).
    Add {
        name: String,
        address: std::net::SocketAddr,
        /// That node's API token file (`--token-file FILE` after `server add` means this).
        #[arg(long = "partner-token-file", value_name = "FILE")]
        partner_token_file: Option<PathBuf>,
    },
    /// Known nodes, with whether each answers now.
    List {
        /// Do not contact the servers.
        #[arg(long)]
        no_check: bool,
    },
    Remove {
        name: String,
    },
}

/// Parses a kebab-case word into one of the configuration's enums.
fn kebab<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|e| e.to_string())
}

/// `NAME:LOCAL_IP:PORT=PARTNER_IP:PORT` (a link seen from existing partner NAME).
fn peer_link(s: &str) -> Result<PeerLink, String> {
    let (partner, link) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not EXISTING_PARTNER:ITS_IP:PORT=NEW_PARTNER_IP:PORT"))?;
    Ok(PeerLink {
        partner: partner.to_string(),
        link: link.parse()?,
    })
}

/// `--watch`: refresh, with a progress bar, rate and ETA for replicas being synchronized.
#[derive(clap::Args, Debug, Clone, Copy)]
struct WatchOpts {
    /// Refresh every interval (replicas: progress bar, rate and ETA while syncing).
    #[arg(long, short)]
    watch: bool,
    /// Seconds between refreshes with --watch.
    #[arg(long, default_value_t = 2.0, requires = "watch")]
    interval: f64,
    /// Stop after this many refreshes (default: until interrupted).
    #[arg(long, requires = "watch")]
    count: Option<u64>,
}

// Parsed once per run of the CLI: the size of its biggest variant (`Add`, with all of
// `replica add`'s options) costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum ReplicaCmd {
    /// Replicate DEVICE to a partner node: creates the partner's device (same size, block
    /// size and identifiers; its own target with the same alias), configures both nodes and
    /// re-opens the device here so replication starts. A second `replica add` with another
    /// partner makes the device three-way (give --peer-sync-link for the existing partner).
    Add {
        device: String,
        /// A server added with `tandem server add NAME ADDR --token-file FILE`.
        #[arg(long)]
        partner: String,
        /// LOCAL_IP:PORT=PARTNER_IP:PORT (repeat for several links).
        #[arg(long = "sync-link", required = true, value_name = "L=P")]
        sync_links: Vec<LinkPair>,
        /// LOCAL_IP:PORT=PARTNER_IP:PORT, heartbeat only.
        #[arg(long = "heartbeat-link", value_name = "L=P")]
        heartbeat_links: Vec<LinkPair>,
        /// Three-way: EXISTING_PARTNER:ITS_IP:PORT=NEW_PARTNER_IP:PORT.
        #[arg(long = "peer-sync-link", value_name = "NAME:L=P", value_parser = peer_link)]
        peer_sync_links: Vec<PeerLink>,
        #[arg(long = "peer-heartbeat-link", value_name = "NAME:L=P", value_parser = peer_link)]
        peer_heartbeat_links: Vec<PeerLink>,
        /// Directory of the partner's image (and disk journal); default its data dir.
        #[arg(long)]
        partner_location: Option<PathBuf>,
        /// heartbeat or node-majority.
        #[arg(long, value_parser = kebab::<FailoverStrategy>)]
        failover: Option<FailoverStrategy>,
        /// This node's priority (first or second); the partner gets the other.
        #[arg(long, value_parser = kebab::<Priority>)]
        priority: Option<Priority>,
        /// ram, disk-failure or disk-continuous.
        #[arg(long, value_parser = kebab::<JournalKind>)]
        journal: Option<JournalKind>,
        /// Directory of this node's disk journal.
        #[arg(long)]
        journal_location: Option<PathBuf>,
        /// sync-from-existing (default) or zeroed.
        #[arg(long, value_parser = kebab::<InitMode>)]
        init: Option<InitMode>,
        /// Node majority: the server holding the third vote.
        #[arg(long)]
        witness: Option<String>,
        /// Node majority: a lock file on a share both nodes mount at this same absolute
        /// path (NFS, SMB), the third vote.
        #[arg(long)]
        witness_file: Option<PathBuf>,
        /// Resync pacing: the host p99 latency (ms) a resync keeps, e.g. 10; 0 (the
        /// default) turns pacing off.
        #[arg(long)]
        resync_latency_target_ms: Option<u64>,
    },
    /// Remove the partner's replica: its device and target are removed there (image kept
    /// unless --delete-file), the other replicas forget it.
    Remove {
        device: String,
        #[arg(long)]
        partner: String,
        /// Go on when the partner cannot be reached (this node changes anyway).
        #[arg(long)]
        force: bool,
        /// Delete the partner's image file too.
        #[arg(long)]
        delete_file: bool,
    },
    /// Every replica of DEVICE: node, state, journal, links.
    List {
        device: String,
        #[command(flatten)]
        watch: WatchOpts,
    },
}

#[derive(clap::Args, Debug)]
struct DeviceOpts {
    /// Logical block size: 512 (Linux/Xen/KVM) or 4096 (Windows).
    #[arg(long, value_parser = ["512", "4096"])]
    block_size: Option<String>,
    /// RAM cache: none, write-through or write-back.
    #[arg(long)]
    cache: Option<CacheMode>,
    /// RAM cache size (e.g. 256MiB; default 64MiB).
    #[arg(long)]
    cache_size: Option<Size>,
    /// Alias of the target created for the device (IQN iqn.2026-11.io.tandem:<node>-<alias>).
    #[arg(long)]
    target_alias: Option<String>,
    /// Do not create a target.
    #[arg(long, conflicts_with = "target_alias")]
    no_target: bool,
    /// Seed of the device identifiers; HA partners use the same one.
    #[arg(long)]
    identity_seed: Option<String>,
}

#[derive(Subcommand, Debug)]
enum DeviceCmd {
    /// Create a thick-provisioned image (or a RAM disk with --ram) and a target for it.
    Create {
        name: String,
        /// Size, e.g. 10GiB, 512MiB (binary units).
        #[arg(long)]
        size: Size,
        /// Directory of the image (NAME.img); default: the node's data dir.
        #[arg(long, conflicts_with_all = ["file", "ram"])]
        location: Option<PathBuf>,
        /// Full path of the image instead of LOCATION/NAME.img.
        #[arg(long, conflicts_with = "ram")]
        file: Option<PathBuf>,
        /// A RAM disk (contents lost when the data plane stops).
        #[arg(long)]
        ram: bool,
        /// Return at once instead of waiting for the image to be built.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        opts: DeviceOpts,
    },
    /// Attach an existing image file or block device.
    Attach {
        name: String,
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        read_only: bool,
        /// FILE is a block device (required to use one; block devices are not confined to
        /// the image directories).
        #[arg(long)]
        block_device: bool,
        #[command(flatten)]
        opts: DeviceOpts,
    },
    List,
    Show {
        name: String,
        #[command(flatten)]
        watch: WatchOpts,
    },
    /// Bind the device's image file as it is now and open the device again: after restoring
    /// a missing image, or when its identity record is missing or does not match and you
    /// have checked that the file is the right one (docs/operations.md).
    Rebind {
        name: String,
    },
    /// End a split brain: keep NODE's copy; the other node's copy becomes a full-sync
    /// target and its writes since the split are discarded. Lists the discarded side's
    /// changed regions first; without --yes nothing changes.
    Resolve {
        name: String,
        /// The node whose copy stays (name or node id).
        #[arg(long)]
        keep: String,
        /// Write the discarded regions (JSON list, and the data of the first 4 MiB of them,
        /// hex) to this file before discarding.
        #[arg(long)]
        save_discarded: Option<std::path::PathBuf>,
        /// Do it (without: only show the list and what would happen).
        #[arg(long)]
        yes: bool,
    },
    /// Grow a device online; hosts see the new capacity. A replicated device grows on every
    /// node: every copy first, then every node reports the new size.
    Extend {
        name: String,
        /// New total size (larger than now).
        #[arg(long)]
        size: Size,
    },
    /// Change the RAM cache mode and size.
    Cache {
        name: String,
        #[arg(long)]
        mode: CacheMode,
        #[arg(long)]
        size: Option<Size>,
    },
    /// Remove a device and its target (refused while sessions are open, unless --force).
    Remove {
        name: String,
        /// End open sessions.
        #[arg(long)]
        force: bool,
        /// Also delete the image file.
        #[arg(long)]
        delete_file: bool,
    },
}

#[derive(Subcommand, Debug)]
enum TargetCmd {
    List,
    Show {
        iqn: String,
    },
    /// Create a target exporting devices as LUNs 0, 1, ... in the given order.
    Create {
        alias: String,
        #[arg(long = "lun", required = true, value_name = "DEVICE")]
        luns: Vec<String>,
        #[arg(long)]
        iqn: Option<String>,
    },
    Remove {
        iqn: String,
    },
}

#[derive(Subcommand, Debug)]
enum ChapCmd {
    /// Require CHAP on a target (mutual CHAP with --mutual-username/--mutual-secret).
    Set {
        iqn: String,
        #[arg(long)]
        username: String,
        /// 12-255 bytes; prefer --secret-file or TANDEM_CHAP_SECRET (keeps it out of shell history).
        #[arg(
            long,
            env = "TANDEM_CHAP_SECRET",
            hide_env_values = true,
            required_unless_present = "secret_file"
        )]
        secret: Option<String>,
        #[arg(long, conflicts_with = "secret")]
        secret_file: Option<PathBuf>,
        #[arg(long, requires = "mutual_secret")]
        mutual_username: Option<String>,
        #[arg(
            long,
            env = "TANDEM_CHAP_MUTUAL_SECRET",
            hide_env_values = true,
            requires = "mutual_username"
        )]
        mutual_secret: Option<String>,
    },
    /// Stop requiring CHAP.
    Clear { iqn: String },
}

#[derive(Subcommand, Debug)]
enum AclCmd {
    List { iqn: String },
    Add { iqn: String, initiator: String },
    Remove { iqn: String, initiator: String },
}

struct Ctx {
    client: Client,
    json: bool,
}

type Res = Result<(), CliError>;

#[derive(Debug)]
enum CliError {
    Client(ClientError),
    Other(i32, String),
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        CliError::Client(e)
    }
}

fn main() {
    // `tandem device show X | head -5`: end quietly when the reader goes away (issue 13, 13).
    tandem_ffi::default_sigpipe();
    let cli = Cli::parse_from(rewrite_partner_token_file(std::env::args_os().collect()));
    if let Command::Completions { shell } = &cli.command {
        clap_complete::generate(
            *shell,
            &mut Cli::command(),
            "tandem",
            &mut std::io::stdout(),
        );
        return;
    }
    let result = read_token(&cli.token_file).and_then(|token| {
        let ctx = Ctx {
            client: Client::new(&cli.api, &token),
            json: cli.json,
        };
        run(&ctx, cli.command)
    });
    match result {
        Ok(()) => std::process::exit(exit::OK),
        Err(CliError::Client(e)) => {
            let code = e.exit_code();
            let hint = match code {
                exit::AUTH => "\nhint: the token is in DATA_DIR/token (default /var/lib/tandem/token); pass it with --token-file",
                exit::UNAVAILABLE => "\nhint: `tandem status` shows the data plane state; `journalctl -u tandem-control` its log",
                _ => "",
            };
            eprintln!("tandem: {e}{hint}");
            std::process::exit(code);
        }
        Err(CliError::Other(code, msg)) => {
            eprintln!("tandem: {msg}");
            std::process::exit(code);
        }
    }
}

/// `tandem server add NAME ADDR --token-file FILE`: after `server add`, `--token-file` names
/// the partner's token (the CLI's own comes from a `--token-file` before `server`, or
/// TANDEM_TOKEN_FILE).
fn rewrite_partner_token_file(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    // The first two words that are not options (or values of the global ones).
    let mut words = Vec::new();
    let mut i = 1;
    while i < args.len() && words.len() < 2 {
        let a = &args[i];
        if a == "--api" || a == "--token-file" {
            i += 1;
        } else if !a.to_string_lossy().starts_with('-') {
            words.push(i);
        }
        i += 1;
    }
    let add = match words[..] {
        [s, a] if args[s] == "server" && args[a] == "add" => Some(a + 1),
        _ => None,
    };
    if let Some(start) = add {
        for a in &mut args[start..] {
            if a == "--token-file" {
                *a = "--partner-token-file".into();
            } else if let Some(v) = a.to_str().and_then(|s| s.strip_prefix("--token-file=")) {
                *a = format!("--partner-token-file={v}").into();
            }
        }
    }
    args
}

fn read_token(path: &PathBuf) -> Result<String, CliError> {
    std::fs::read_to_string(path).map(|t| t.trim().to_string()).map_err(|e| {
        CliError::Other(
            exit::AUTH,
            format!("cannot read the API token from {}: {e}\nrun as a user that can read it (root by default) or pass --token-file FILE", path.display()),
        )
    })
}

fn print_json<T: Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Prints rows as aligned columns.
fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    if rows.is_empty() {
        println!("(none)");
    }
    for r in rows {
        line(r);
    }
}

fn applied_note(a: Applied) -> &'static str {
    match a {
        Applied::Applied => "applied",
        Applied::Pending => "saved; the data plane is not running and will load it when it starts",
        Applied::Disabled => "saved (no data plane)",
        Applied::Unchanged => "nothing to change",
    }
}

fn done(ctx: &Ctx, what: String, r: ChangeResult) {
    if ctx.json {
        print_json(&r);
    } else {
        println!("{what}: {}", applied_note(r.dataplane));
    }
}

fn run(ctx: &Ctx, command: Command) -> Res {
    let c = &ctx.client;
    match command {
        Command::Completions { .. } => Ok(()),
        Command::Status => {
            let s: StatusInfo = c.get("/api/v1/status")?;
            if ctx.json {
                print_json(&s);
            } else {
                let dp = &s.dataplane;
                println!("node        {}", s.node);
                println!("version     {}", s.version);
                println!("api         {}", s.api);
                println!("portals     {}", s.portals.join(", "));
                println!("config      {}", s.config_path);
                println!(
                    "data plane  {}{}{}",
                    dp.state,
                    dp.pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
                    if dp.restarts > 0 {
                        format!(", {} restarts", dp.restarts)
                    } else {
                        String::new()
                    }
                );
                if let Some(e) = &dp.last_error {
                    println!("            last error: {e}");
                }
                if let Some(e) = &dp.last_exit {
                    println!("            last exit: {e}");
                }
                println!("devices     {}", s.devices);
                println!("targets     {}", s.targets);
                println!("sessions    {}", s.sessions);
                println!("servers     {}", s.servers);
                println!("uptime      {}s", s.uptime_s);
            }
            Ok(())
        }
        Command::Server(cmd) => match cmd {
            ServerCmd::Add {
                name,
                address,
                partner_token_file,
            } => {
                let token = match &partner_token_file {
                    Some(f) => Some(read_token(f)?),
                    None => None,
                };
                let (_, v): (u16, serde_json::Value) = c.send(
                    "POST",
                    "/api/v1/servers",
                    &ServerAdd {
                        name: name.clone(),
                        address,
                        token,
                    },
                )?;
                if ctx.json {
                    print_json(&v);
                } else if partner_token_file.is_some() {
                    println!("server {name} ({address}) added: reachable, token accepted");
                } else {
                    println!("server {name} ({address}) added (no token: not checked, cannot hold replicas)");
                }
                Ok(())
            }
            ServerCmd::List { no_check } => {
                let path = if no_check {
                    "/api/v1/servers?check=false"
                } else {
                    "/api/v1/servers"
                };
                let list: Vec<ServerInfo> = c.get(path)?;
                if ctx.json {
                    print_json(&list);
                } else {
                    table(
                        &["NAME", "ADDRESS", "TOKEN", "REACHABLE", "NODE", "NOTE"],
                        list.into_iter()
                            .map(|s| {
                                vec![
                                    s.name,
                                    s.address.to_string(),
                                    if s.token { "yes" } else { "no" }.to_string(),
                                    match s.reachable {
                                        Some(true) => "yes",
                                        Some(false) => "no",
                                        None => "-",
                                    }
                                    .to_string(),
                                    s.node.unwrap_or_else(|| "-".into()),
                                    s.error.unwrap_or_default(),
                                ]
                            })
                            .collect(),
                    );
                }
                Ok(())
            }
            ServerCmd::Remove { name } => {
                let r: ChangeResult = c.delete(&format!("/api/v1/servers/{}", segment(&name)))?;
                done(ctx, format!("server {name} removed"), r);
                Ok(())
            }
        },
        Command::Device(cmd) => device(ctx, cmd),
        Command::Replica(cmd) => replica(ctx, cmd),
        Command::Target(cmd) => target(ctx, cmd),
        Command::Chap(cmd) => chap(ctx, cmd),
        Command::Acl(cmd) => acl(ctx, cmd),
        Command::Stats {
            device,
            watch,
            interval,
            count,
        } => stats(ctx, device, watch, interval, count),
        Command::Metrics => {
            print!("{}", c.get_text("/metrics")?);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_rate_and_eta() {
        assert_eq!(progress_bar(0, 10), "[----------]");
        assert_eq!(progress_bar(42, 10), "[#####-----]");
        assert_eq!(progress_bar(100, 10), "[##########]");
        assert_eq!(progress_bar(250, 4), "[####]");
        assert_eq!(resync_rate(None, 10, 100, 1.0), None);
        assert_eq!(resync_rate(Some(10), 30, 100, 2.0), Some((10.0, Some(7.0))));
        assert_eq!(resync_rate(Some(30), 30, 100, 2.0), Some((0.0, None)));
        assert_eq!(format_eta(7.0), "7s");
        assert_eq!(format_eta(125.0), "2m05s");
        assert_eq!(format_eta(7322.0), "2h02m");
    }

    #[test]
    fn token_file_after_server_add_is_the_partners() {
        let args = |v: &[&str]| v.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        assert_eq!(
            rewrite_partner_token_file(args(&[
                "tandem",
                "--token-file",
                "mine",
                "server",
                "add",
                "b",
                "1.2.3.4:5",
                "--token-file",
                "theirs"
            ])),
            args(&[
                "tandem",
                "--token-file",
                "mine",
                "server",
                "add",
                "b",
                "1.2.3.4:5",
                "--partner-token-file",
                "theirs"
            ])
        );
        assert_eq!(
            rewrite_partner_token_file(args(&[
                "tandem",
                "server",
                "add",
                "b",
                "x:1",
                "--token-file=t"
            ])),
            args(&[
                "tandem",
                "server",
                "add",
                "b",
                "x:1",
                "--partner-token-file=t"
            ])
        );
        // Elsewhere it stays the CLI's own token.
        for v in [
            &["tandem", "server", "list", "--token-file", "t"][..],
            &[
                "tandem",
                "device",
                "create",
                "server",
                "--size",
                "1MiB",
                "--token-file",
                "add",
            ],
            &[
                "tandem",
                "--api",
                "server",
                "device",
                "add",
                "--token-file",
                "t",
            ],
        ] {
            assert_eq!(rewrite_partner_token_file(args(v)), args(v));
        }
        Cli::try_parse_from(rewrite_partner_token_file(args(&[
            "tandem",
            "server",
            "add",
            "b",
            "127.0.0.1:1",
            "--token-file",
            "t",
        ])))
        .unwrap();
    }
}

fn device_create_body(name: String, opts: DeviceOpts) -> DeviceCreate {
    DeviceCreate {
        name,
        block_size: opts.block_size.and_then(|b| b.parse().ok()),
        cache: opts.cache,
        cache_size: opts.cache_size,
        target_alias: opts.target_alias,
        no_target: opts.no_target,
        identity_seed: opts.identity_seed,
        ..Default::default()
    }
}

fn print_device(ctx: &Ctx, d: &DeviceInfo) {
    if ctx.json {
        print_json(d);
        return;
    }
    println!("name           {}", d.name);
    println!("kind           {}", d.kind);
    if let Some(f) = &d.file {
        println!("file           {}", f.display());
    }
    println!(
        "size           {} ({} bytes)",
        format_size_approx(d.size_bytes),
        d.size_bytes
    );
    println!("block size     {}", d.block_size);
    println!("read-only      {}", d.read_only);
    println!(
        "cache          {}{}",
        d.cache,
        if d.cache_size_bytes > 0 {
            format!(" ({})", format_size(d.cache_size_bytes))
        } else {
            String::new()
        }
    );
    println!("identity seed  {}", d.identity_seed);
    println!(
        "targets        {}",
        if d.targets.is_empty() {
            "-".to_string()
        } else {
            d.targets.join(", ")
        }
    );
    println!("state          {}", d.state);
    if let Some(e) = &d.error {
        println!("error          {e}");
    }
    println!("sessions       {}", d.sessions);
    if let Some(r) = &d.replication {
        println!(
            "replication    node id {}, {} failover{}",
            r.node_id,
            kebab_name(&r.failover),
            r.epoch.map(|e| format!(", epoch {e}")).unwrap_or_default()
        );
        println!();
        print_replicas(r);
    }
}

fn kebab_name<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// `synchronized`, `syncing 42%`, `not-synchronized`...
fn replica_state(r: &ReplicaRow) -> String {
    match r.progress_percent {
        Some(p) => format!("{} {p}%", r.state),
        None => r.state.clone(),
    }
}

fn print_replicas(l: &ReplicaListing) {
    let rows = l
        .replicas
        .iter()
        .map(|r| {
            let mut role = if r.local { "this node" } else { "partner" }.to_string();
            if r.sequencer {
                role.push_str(", sequencer");
            }
            vec![
                r.node.clone(),
                r.node_id.to_string(),
                role,
                replica_state(r),
                kebab_name(&r.journal),
                if r.local {
                    "-".to_string()
                } else {
                    r.links
                        .iter()
                        .map(|k| format!("{} {} {}", k.kind, k.link, k.state))
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            ]
        })
        .collect();
    table(&["NODE", "ID", "ROLE", "STATE", "JOURNAL", "LINKS"], rows);
    for r in &l.replicas {
        if let Some(reason) = &r.reason {
            println!("{}: {reason}", r.node);
        }
        for k in r.links.iter().filter(|k| k.last_error.is_some()) {
            println!(
                "{}: {} link {}: {}",
                r.node,
                k.kind,
                k.link,
                k.last_error.as_deref().unwrap_or_default()
            );
        }
    }
}

/// A text progress bar: `[########------------]`.
fn progress_bar(percent: u8, width: usize) -> String {
    let filled = (usize::from(percent.min(100)) * width)
        .div_ceil(100)
        .min(width);
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
}

/// Rate (regions/s) and ETA (s) of a resync between two reads `secs` apart.
fn resync_rate(prev: Option<u64>, done: u64, total: u64, secs: f64) -> Option<(f64, Option<f64>)> {
    let prev = prev?;
    let rate = done.saturating_sub(prev) as f64 / secs.max(1e-3);
    let eta = (rate > 0.0).then(|| total.saturating_sub(done) as f64 / rate);
    Some((rate, eta))
}

fn format_eta(secs: f64) -> String {
    let s = secs.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// Runs `show` every interval; after each table, one progress line per syncing replica.
fn watch_loop(
    ctx: &Ctx,
    opts: WatchOpts,
    mut show: impl FnMut(&Ctx) -> Result<Option<ReplicaListing>, CliError>,
) -> Res {
    let interval = Duration::from_secs_f64(opts.interval.max(0.1));
    let mut prev: std::collections::HashMap<String, u64> = Default::default();
    let mut last = std::time::Instant::now();
    let mut n = 0u64;
    loop {
        let listing = show(ctx)?;
        let secs = last.elapsed().as_secs_f64();
        last = std::time::Instant::now();
        for r in listing.iter().flat_map(|l| &l.replicas) {
            let (Some(pct), Some(done), Some(total)) = (
                r.progress_percent,
                r.resync_done_regions,
                r.resync_total_regions,
            ) else {
                continue;
            };
            if ctx.json {
                prev.insert(r.node.clone(), done);
                continue;
            }
            let rate = match resync_rate(prev.get(&r.node).copied(), done, total, secs) {
                Some((rate, eta)) => format!(
                    "  {rate:.0} regions/s  ETA {}",
                    eta.map_or("-".to_string(), format_eta)
                ),
                None => String::new(),
            };
            println!(
                "sync to {}: {} {pct:>3}% ({done}/{total} regions){rate}",
                r.node,
                progress_bar(pct, 30)
            );
            prev.insert(r.node.clone(), done);
        }
        let _ = std::io::stdout().flush();
        n += 1;
        if opts.count.is_some_and(|c| n >= c) {
            return Ok(());
        }
        std::thread::sleep(interval);
        if !ctx.json {
            println!();
        }
    }
}

fn replica(ctx: &Ctx, cmd: ReplicaCmd) -> Res {
    let c = &ctx.client;
    match cmd {
        ReplicaCmd::Add {
            device,
            partner,
            sync_links,
            heartbeat_links,
            peer_sync_links,
            peer_heartbeat_links,
            partner_location,
            failover,
            priority,
            journal,
            journal_location,
            init,
            witness,
            witness_file,
            resync_latency_target_ms,
        } => {
            if !ctx.json {
                eprintln!("creating the replica of {device} on {partner}...");
            }
            // The partner's thick image is built within this request.
            let (_, r): (u16, ReplicaAdded) = c.long(Duration::from_secs(24 * 3600)).send(
                "POST",
                &format!("/api/v1/devices/{}/replicas", segment(&device)),
                &ReplicaAdd {
                    partner,
                    sync_links,
                    heartbeat_links,
                    peer_sync_links,
                    peer_heartbeat_links,
                    partner_location,
                    failover,
                    priority,
                    journal,
                    journal_location,
                    init,
                    witness,
                    witness_file,
                    resync_latency_target_ms,
                },
            )?;
            if ctx.json {
                print_json(&r);
            } else {
                println!(
                    "replica of {} added on {} (node id {}; this node {}), initial content: {}",
                    r.device,
                    r.partner,
                    r.partner_node_id,
                    r.node_id,
                    r.init.as_str()
                );
                if let Some(t) = &r.partner_target {
                    println!("partner target {t}");
                }
                println!("this node: {}", applied_note(r.dataplane));
                println!("{}: {}", r.partner, applied_note(r.partner_dataplane));
                println!("follow the sync with `tandem replica list {}`", r.device);
            }
            Ok(())
        }
        ReplicaCmd::Remove {
            device,
            partner,
            force,
            delete_file,
        } => {
            let r: ReplicaRemoved = c.delete(&format!(
                "/api/v1/devices/{}/replicas/{}?force={force}&delete_file={delete_file}",
                segment(&device),
                segment(&partner)
            ))?;
            if ctx.json {
                print_json(&r);
            } else {
                for w in &r.warnings {
                    eprintln!("warning: {w}");
                }
                println!(
                    "replica of {} on {} removed{}: {}",
                    r.device,
                    r.partner,
                    if r.partner_cleaned {
                        ""
                    } else {
                        " here only (the partner was not cleaned)"
                    },
                    applied_note(r.dataplane)
                );
            }
            Ok(())
        }
        ReplicaCmd::List { device, watch } => {
            let path = format!("/api/v1/devices/{}/replicas", segment(&device));
            if !watch.watch {
                let l: ReplicaListing = c.get(&path)?;
                if ctx.json {
                    print_json(&l);
                } else {
                    print_replicas(&l);
                }
                return Ok(());
            }
            watch_loop(ctx, watch, |ctx| {
                let l: ReplicaListing = ctx.client.get(&path)?;
                if ctx.json {
                    println!("{}", serde_json::to_string(&l).unwrap_or_default());
                } else {
                    print_replicas(&l);
                }
                Ok(Some(l))
            })
        }
    }
}

/// Follows an image-building job, drawing progress on stderr when it is a terminal.
fn follow_job(ctx: &Ctx, mut job: JobInfo) -> Result<(), CliError> {
    let tty = std::io::stderr().is_terminal() && !ctx.json;
    let mut last_pct = None;
    while job.state == "running" {
        let pct = (job.done_bytes as f64 * 100.0 / job.total_bytes.max(1) as f64) as u64;
        if tty {
            eprint!(
                "\rbuilding image for {}: {pct:>3}% ({} of {})   ",
                job.device,
                format_size_approx(job.done_bytes),
                format_size_approx(job.total_bytes)
            );
            let _ = std::io::stderr().flush();
        } else if !ctx.json && last_pct.map_or(true, |p: u64| pct >= p + 10) {
            eprintln!("building image for {}: {pct}%", job.device);
            last_pct = Some(pct);
        }
        std::thread::sleep(Duration::from_millis(250));
        job = ctx.client.get(&format!("/api/v1/jobs/{}", job.id))?;
    }
    if tty {
        eprintln!(
            "\rbuilding image for {}: 100% ({})              ",
            job.device,
            format_size_approx(job.total_bytes)
        );
    } else if !ctx.json && job.state == "done" {
        eprintln!("building image for {}: 100%", job.device);
    }
    if job.state == "failed" {
        return Err(CliError::Other(
            exit::FAILURE,
            format!(
                "creating device {} failed: {}",
                job.device,
                job.error.unwrap_or_default()
            ),
        ));
    }
    let d: DeviceInfo = ctx
        .client
        .get(&format!("/api/v1/devices/{}", segment(&job.device)))?;
    if !ctx.json {
        println!("device {} created", d.name);
    }
    print_device(ctx, &d);
    Ok(())
}

fn submit_device(ctx: &Ctx, body: DeviceCreate, wait: bool) -> Res {
    let (status, v): (u16, serde_json::Value) =
        ctx.client.send("POST", "/api/v1/devices", &body)?;
    let bad =
        |e: serde_json::Error| CliError::Other(exit::FAILURE, format!("unexpected answer: {e}"));
    if status == 202 {
        let accepted: Accepted = serde_json::from_value(v).map_err(bad)?;
        if !wait {
            if ctx.json {
                print_json(&accepted);
            } else {
                println!(
                    "building image for {} (job {}); follow with `tandem device show {}`",
                    body.name, accepted.job.id, body.name
                );
            }
            return Ok(());
        }
        return follow_job(ctx, accepted.job);
    }
    let created: DeviceCreated = serde_json::from_value(v).map_err(bad)?;
    if ctx.json {
        print_json(&created);
    } else {
        println!(
            "device {} created: {}",
            created.device.name,
            applied_note(created.dataplane)
        );
        print_device(ctx, &created.device);
    }
    Ok(())
}

fn device(ctx: &Ctx, cmd: DeviceCmd) -> Res {
    let c = &ctx.client;
    match cmd {
        DeviceCmd::Create {
            name,
            size,
            location,
            file,
            ram,
            no_wait,
            opts,
        } => {
            let body = DeviceCreate {
                size: Some(size),
                location,
                file,
                ram,
                ..device_create_body(name, opts)
            };
            submit_device(ctx, body, !no_wait)
        }
        DeviceCmd::Attach {
            name,
            file,
            read_only,
            block_device,
            opts,
        } => {
            let body = DeviceCreate {
                file: Some(file),
                read_only,
                block_device,
                ..device_create_body(name, opts)
            };
            submit_device(ctx, body, true)
        }
        DeviceCmd::List => {
            let list: Vec<DeviceInfo> = c.get("/api/v1/devices")?;
            if ctx.json {
                print_json(&list);
            } else {
                let failed: Vec<(String, String)> = list
                    .iter()
                    .filter_map(|d| d.error.clone().map(|e| (d.name.clone(), e)))
                    .collect();
                let rows = list
                    .into_iter()
                    .map(|d| {
                        vec![
                            d.name,
                            d.kind,
                            format_size_approx(d.size_bytes),
                            d.block_size.to_string(),
                            d.cache.to_string(),
                            if d.read_only { "ro" } else { "rw" }.to_string(),
                            d.state,
                            d.sessions.to_string(),
                            d.targets.join(","),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "NAME", "KIND", "SIZE", "BLOCK", "CACHE", "MODE", "STATE", "SESSIONS",
                        "TARGET",
                    ],
                    rows,
                );
                for (name, error) in failed {
                    println!("{name}: {error}");
                }
            }
            Ok(())
        }
        DeviceCmd::Show { name, watch } => {
            let path = format!("/api/v1/devices/{}", segment(&name));
            if !watch.watch {
                let d: DeviceInfo = c.get(&path)?;
                print_device(ctx, &d);
                return Ok(());
            }
            watch_loop(ctx, watch, |ctx| {
                let d: DeviceInfo = ctx.client.get(&path)?;
                if ctx.json {
                    println!("{}", serde_json::to_string(&d).unwrap_or_default());
                } else {
                    print_device(ctx, &d);
                }
                Ok(d.replication)
            })
        }
        DeviceCmd::Rebind { name } => {
            let (_, r): (u16, DeviceCreated) = c.send(
                "POST",
                &format!("/api/v1/devices/{}/rebind", segment(&name)),
                &serde_json::json!({}),
            )?;
            if ctx.json {
                print_json(&r);
            } else {
                println!(
                    "device {name} re-bound ({}), state {}: {}",
                    format_size(r.device.size_bytes),
                    r.device.state,
                    applied_note(r.dataplane)
                );
            }
            Ok(())
        }
        DeviceCmd::Resolve {
            name,
            keep,
            save_discarded,
            yes,
        } => {
            let req = tandem_control::resolve::ResolveRequest {
                keep,
                yes,
                save_data: save_discarded.is_some() && yes,
            };
            let (_, r): (u16, tandem_control::resolve::ResolveReport) = c.send(
                "POST",
                &format!("/api/v1/devices/{}/resolve", segment(&name)),
                &req,
            )?;
            if let Some(path) = &save_discarded {
                let text =
                    serde_json::to_vec_pretty(&r).map_err(|e| CliError::Other(1, e.to_string()))?;
                std::fs::write(path, text)
                    .map_err(|e| CliError::Other(1, format!("{}: {e}", path.display())))?;
            }
            if ctx.json {
                print_json(&r);
                return Ok(());
            }
            println!(
                "split brain on {name}: keep {} (node {}), discard {} (node {})",
                r.kept.name, r.kept.node_id, r.discarded.name, r.discarded.node_id
            );
            println!(
                "regions {} changed since the split ({} in all{}):",
                r.discarded.name,
                r.regions_total,
                if r.journal_complete {
                    ""
                } else {
                    "; its journal was lost in a restart, so any region may differ"
                }
            );
            println!("{:>10} {:>16} {:>8}", "REGION", "OFFSET", "LENGTH");
            for row in &r.regions {
                println!("{:>10} {:>16} {:>8}", row.index, row.offset, row.length);
            }
            if (r.regions.len() as u64) < r.regions_total {
                println!(
                    "... {} more not listed",
                    r.regions_total - r.regions.len() as u64
                );
            }
            let verb = if r.applied { "done" } else { "would do" };
            for (i, step) in r.plan.iter().enumerate() {
                println!("{verb} {}: {step}", i + 1);
            }
            if let Some(path) = &save_discarded {
                println!(
                    "list{} saved to {}",
                    if r.data.is_empty() {
                        String::new()
                    } else {
                        format!(" and data of {} regions", r.data.len())
                    },
                    path.display()
                );
            }
            if !r.applied {
                println!("nothing changed; add --yes to do it");
            }
            Ok(())
        }
        DeviceCmd::Extend { name, size } => {
            let (_, r): (u16, DeviceCreated) = c.send(
                "POST",
                &format!("/api/v1/devices/{}/extend", segment(&name)),
                &DeviceExtend { size, phase: None },
            )?;
            if ctx.json {
                print_json(&r);
            } else {
                println!(
                    "device {name} extended to {}: {}",
                    format_size(r.device.size_bytes),
                    applied_note(r.dataplane)
                );
            }
            Ok(())
        }
        DeviceCmd::Cache { name, mode, size } => {
            let (_, r): (u16, DeviceCreated) = c.send(
                "PUT",
                &format!("/api/v1/devices/{}/cache", segment(&name)),
                &CacheSet {
                    cache: mode,
                    cache_size: size,
                },
            )?;
            if ctx.json {
                print_json(&r);
            } else {
                println!(
                    "device {name} cache {}: {}",
                    r.device.cache,
                    applied_note(r.dataplane)
                );
            }
            Ok(())
        }
        DeviceCmd::Remove {
            name,
            force,
            delete_file,
        } => {
            let r: ChangeResult = c.delete(&format!(
                "/api/v1/devices/{}?force={force}&delete_file={delete_file}",
                segment(&name)
            ))?;
            let what = if delete_file {
                format!("device {name} removed, image deleted")
            } else {
                format!("device {name} removed (image file kept)")
            };
            done(ctx, what, r);
            Ok(())
        }
    }
}

fn target(ctx: &Ctx, cmd: TargetCmd) -> Res {
    let c = &ctx.client;
    let show = |t: &TargetInfo| {
        println!("iqn        {}", t.iqn);
        println!("alias      {}", t.alias);
        for l in &t.luns {
            println!("lun {:<6} {}", l.lun, l.device);
        }
        println!(
            "acl        {}",
            if t.allowed_initiators.is_empty() {
                "everyone".to_string()
            } else {
                t.allowed_initiators.join(", ")
            }
        );
        println!(
            "chap       {}",
            match &t.chap {
                None => "off".to_string(),
                Some(ch) => format!(
                    "user {}{}",
                    ch.username,
                    ch.mutual_username
                        .as_ref()
                        .map(|m| format!(", mutual {m}"))
                        .unwrap_or_default()
                ),
            }
        );
        println!(
            "sessions   {}{}",
            t.sessions,
            if t.initiators.is_empty() {
                String::new()
            } else {
                format!(" ({})", t.initiators.join(", "))
            }
        );
    };
    match cmd {
        TargetCmd::List => {
            let list: Vec<TargetInfo> = c.get("/api/v1/targets")?;
            if ctx.json {
                print_json(&list);
            } else {
                let rows = list
                    .into_iter()
                    .map(|t| {
                        vec![
                            t.iqn,
                            t.luns
                                .iter()
                                .map(|l| format!("{}:{}", l.lun, l.device))
                                .collect::<Vec<_>>()
                                .join(","),
                            if t.chap.is_some() { "on" } else { "off" }.to_string(),
                            if t.allowed_initiators.is_empty() {
                                "any".to_string()
                            } else {
                                t.allowed_initiators.len().to_string()
                            },
                            t.sessions.to_string(),
                        ]
                    })
                    .collect();
                table(&["IQN", "LUNS", "CHAP", "ACL", "SESSIONS"], rows);
            }
            Ok(())
        }
        TargetCmd::Show { iqn } => {
            let t: TargetInfo = c.get(&format!("/api/v1/targets/{}", segment(&iqn)))?;
            if ctx.json {
                print_json(&t);
            } else {
                show(&t);
            }
            Ok(())
        }
        TargetCmd::Create { alias, luns, iqn } => {
            let (_, v): (u16, serde_json::Value) = c.send(
                "POST",
                "/api/v1/targets",
                &TargetCreate {
                    alias,
                    iqn,
                    luns,
                    allowed_initiators: vec![],
                },
            )?;
            if ctx.json {
                print_json(&v);
            } else {
                println!(
                    "target {} created",
                    v["target"]["iqn"].as_str().unwrap_or("?")
                );
            }
            Ok(())
        }
        TargetCmd::Remove { iqn } => {
            let r: ChangeResult = c.delete(&format!("/api/v1/targets/{}", segment(&iqn)))?;
            done(ctx, format!("target {iqn} removed"), r);
            Ok(())
        }
    }
}

fn read_secret(inline: Option<String>, file: Option<PathBuf>) -> Result<String, CliError> {
    match (inline, file) {
        (Some(s), _) => Ok(s),
        (None, Some(f)) => std::fs::read_to_string(&f)
            .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
            .map_err(|e| CliError::Other(exit::USAGE, format!("cannot read {}: {e}", f.display()))),
        (None, None) => Err(CliError::Other(
            exit::USAGE,
            "give --secret, --secret-file or TANDEM_CHAP_SECRET".into(),
        )),
    }
}

fn chap(ctx: &Ctx, cmd: ChapCmd) -> Res {
    match cmd {
        ChapCmd::Set {
            iqn,
            username,
            secret,
            secret_file,
            mutual_username,
            mutual_secret,
        } => {
            let chap = Chap {
                username,
                secret: read_secret(secret, secret_file)?,
                mutual_username,
                mutual_secret,
            };
            let (_, r): (u16, ChangeResult) = ctx.client.send(
                "PUT",
                &format!("/api/v1/targets/{}/chap", segment(&iqn)),
                &chap,
            )?;
            done(ctx, format!("CHAP set on {iqn}"), r);
        }
        ChapCmd::Clear { iqn } => {
            let r: ChangeResult = ctx
                .client
                .delete(&format!("/api/v1/targets/{}/chap", segment(&iqn)))?;
            done(ctx, format!("CHAP cleared on {iqn}"), r);
        }
    }
    Ok(())
}

fn acl(ctx: &Ctx, cmd: AclCmd) -> Res {
    let c = &ctx.client;
    match cmd {
        AclCmd::List { iqn } => {
            let a: AclInfo = c.get(&format!("/api/v1/targets/{}/acl", segment(&iqn)))?;
            if ctx.json {
                print_json(&a);
            } else if a.allowed_initiators.is_empty() {
                println!("every initiator may log in to {}", a.iqn);
            } else {
                table(
                    &["ALLOWED INITIATOR"],
                    a.allowed_initiators.into_iter().map(|i| vec![i]).collect(),
                );
            }
        }
        AclCmd::Add { iqn, initiator } => {
            let (_, r): (u16, ChangeResult) = c.send(
                "POST",
                &format!("/api/v1/targets/{}/acl", segment(&iqn)),
                &AclAdd {
                    initiator: initiator.clone(),
                },
            )?;
            done(ctx, format!("{initiator} allowed on {iqn}"), r);
        }
        AclCmd::Remove { iqn, initiator } => {
            let r: ChangeResult = c.delete(&format!(
                "/api/v1/targets/{}/acl/{}",
                segment(&iqn),
                segment(&initiator)
            ))?;
            done(ctx, format!("{initiator} removed from the ACL of {iqn}"), r);
        }
    }
    Ok(())
}

/// Rates between two reads of one device's counters.
#[derive(Serialize)]
struct Rates {
    device: String,
    read_iops: f64,
    write_iops: f64,
    read_bytes_per_s: f64,
    write_bytes_per_s: f64,
    errors: u64,
    latency_us_p50: u64,
    latency_us_p99: u64,
    latency_us_p999: u64,
    queue_depth: u32,
    sessions: u32,
}

fn rates(prev: &DeviceStats, cur: &DeviceStats, secs: f64) -> Rates {
    let per_s = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs.max(1e-3);
    Rates {
        device: cur.name.clone(),
        read_iops: per_s(prev.read_ops, cur.read_ops),
        write_iops: per_s(prev.write_ops, cur.write_ops),
        read_bytes_per_s: per_s(prev.read_bytes, cur.read_bytes),
        write_bytes_per_s: per_s(prev.write_bytes, cur.write_bytes),
        errors: cur.errors,
        latency_us_p50: cur.latency_us_p50,
        latency_us_p99: cur.latency_us_p99,
        latency_us_p999: cur.latency_us_p999,
        queue_depth: cur.queue_depth,
        sessions: cur.sessions,
    }
}

fn stats(ctx: &Ctx, device: Option<String>, watch: bool, interval: f64, count: Option<u64>) -> Res {
    let path = match &device {
        Some(d) => format!("/api/v1/stats/{}", segment(d)),
        None => "/api/v1/stats".to_string(),
    };
    let mut prev: StatsInfo = ctx.client.get(&path)?;
    if !watch {
        if ctx.json {
            print_json(&prev);
            return Ok(());
        }
        let rows = prev
            .devices
            .iter()
            .map(|d| {
                vec![
                    d.name.clone(),
                    d.read_ops.to_string(),
                    d.write_ops.to_string(),
                    format_size_approx(d.read_bytes),
                    format_size_approx(d.write_bytes),
                    format!(
                        "{}/{}/{}",
                        d.latency_us_p50, d.latency_us_p99, d.latency_us_p999
                    ),
                    d.queue_depth.to_string(),
                    d.errors.to_string(),
                    d.sessions.to_string(),
                ]
            })
            .collect();
        table(
            &[
                "DEVICE",
                "READS",
                "WRITES",
                "READ",
                "WRITTEN",
                "LAT us p50/p99/p99.9",
                "QD",
                "ERRORS",
                "SESSIONS",
            ],
            rows,
        );
        if device.is_none() && !prev.reactors.is_empty() {
            println!();
            let rows = prev
                .reactors
                .iter()
                .map(|r| {
                    let total = (r.busy_polls + r.idle_polls).max(1);
                    vec![
                        r.core.to_string(),
                        format!("{:.1}%", r.busy_polls as f64 * 100.0 / total as f64),
                        r.pdus.to_string(),
                        r.ios.to_string(),
                    ]
                })
                .collect();
            table(&["CORE", "BUSY", "PDUS", "IOS"], rows);
        }
        return Ok(());
    }
    let interval = Duration::from_secs_f64(interval.max(0.1));
    let mut n = 0u64;
    loop {
        std::thread::sleep(interval);
        let cur: StatsInfo = ctx.client.get(&path)?;
        let secs = cur.unix_ms.saturating_sub(prev.unix_ms) as f64 / 1000.0;
        let list: Vec<Rates> = cur
            .devices
            .iter()
            .map(|d| {
                let p = prev
                    .devices
                    .iter()
                    .find(|x| x.name == d.name)
                    .cloned()
                    .unwrap_or_default();
                rates(&p, d, secs)
            })
            .collect();
        if ctx.json {
            println!(
                "{}",
                serde_json::json!({ "unix_ms": cur.unix_ms, "devices": list })
            );
        } else {
            let rows = list
                .into_iter()
                .map(|r| {
                    vec![
                        r.device,
                        format!("{:.0}", r.read_iops),
                        format!("{:.0}", r.write_iops),
                        format!("{}/s", format_size_approx(r.read_bytes_per_s as u64)),
                        format!("{}/s", format_size_approx(r.write_bytes_per_s as u64)),
                        format!(
                            "{}/{}/{}",
                            r.latency_us_p50, r.latency_us_p99, r.latency_us_p999
                        ),
                        r.queue_depth.to_string(),
                        r.errors.to_string(),
                        r.sessions.to_string(),
                    ]
                })
                .collect();
            table(
                &[
                    "DEVICE",
                    "R IOPS",
                    "W IOPS",
                    "READ",
                    "WRITE",
                    "LAT us p50/p99/p99.9",
                    "QD",
                    "ERRORS",
                    "SESSIONS",
                ],
                rows,
            );
            println!();
        }
        let _ = std::io::stdout().flush();
        prev = cur;
        n += 1;
        if count.is_some_and(|c| n >= c) {
            return Ok(());
        }
    }
}
