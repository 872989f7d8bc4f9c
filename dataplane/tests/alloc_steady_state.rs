//! The I/O path allocates nothing in steady state: a counting global allocator watches a
//! real data plane (in this process) while libiscsi clients drive reads and writes.
//! Login, logout and connection setup allocate; per-command work must not.

use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tandem_bdev::CacheMode;
use tandem_dataplane::net::SocketIo;
use tandem_dataplane::reactor::PollMode;
use tandem_dataplane::server::{Backing, DeviceSpec, NodeSpec, Server, TargetSpec};
use tandem_iscsi::login::AuthPolicy;

#[global_allocator]
static GLOBAL: tandem_ffi::alloc_count::CountingAllocator =
    tandem_ffi::alloc_count::CountingAllocator;

fn ops(server: &Server) -> u64 {
    let d = server.device("disk").expect("device");
    d.stats.read_ops.load(Ordering::Relaxed) + d.stats.write_ops.load(Ordering::Relaxed)
}

#[test]
fn reads_and_writes_do_not_allocate_per_command() {
    steady_state(SocketIo::Syscalls);
}

/// The same with socket I/O through the reactor's io_uring (`socket_io = "uring"`).
#[test]
fn reads_and_writes_do_not_allocate_per_command_with_uring_sockets() {
    steady_state(SocketIo::Uring);
}

fn steady_state(socket_io: SocketIo) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let portal: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let iqn = "iqn.2026-11.io.tandem:test-alloc".to_string();
    let server = Server::start(NodeSpec {
        portals: vec![portal],
        devices: vec![DeviceSpec {
            name: "disk".into(),
            backing: Backing::Ram {
                size_bytes: 64 << 20,
            },
            block_size: 512,
            read_only: false,
            cache: CacheMode::None,
            cache_size_bytes: 0,
            identity_seed: "alloc-test".into(),
            pr_state_path: None,
            verify_identity: false,
            create_if_missing: false,
            image_dirs: Vec::new(),
            block_device: false,
            replication: None,
        }],
        targets: vec![TargetSpec {
            iqn: iqn.clone(),
            alias: None,
            luns: vec!["disk".into()],
            auth: AuthPolicy::None,
            allowed_initiators: vec![],
        }],
        cores: vec![],
        poll_mode: PollMode::Adaptive,
        spin: Duration::from_micros(200),
        timers: Default::default(),
        userspace_portals: vec![],
        socket_io,
    })
    .expect("start data plane");
    let url = format!("iscsi://{portal}/{iqn}/0");
    let perf = |secs: &str| {
        let st = Command::new("iscsi-perf")
            .args(["-m", "16", "-b", "8", "-r", "-t", secs, &url])
            .output()
            .expect("iscsi-perf (libiscsi-bin)");
        assert!(
            st.status.success(),
            "iscsi-perf failed: {}",
            String::from_utf8_lossy(&st.stderr)
        );
    };
    // Warm up: buffer pools, task tables and queues reach their working size.
    perf("1");
    let (a0, o0) = (tandem_ffi::alloc_count::allocations(), ops(&server));
    perf("2");
    let writes = Command::new("iscsi-test-cu")
        .args(["--dataloss", "-t", "ALL.Write10.Async", &url])
        .output()
        .expect("iscsi-test-cu");
    assert!(writes.status.success());
    let (a1, o1) = (tandem_ffi::alloc_count::allocations(), ops(&server));
    let ios = o1 - o0;
    let allocs = a1 - a0;
    let per_io = allocs as f64 / ios as f64;
    eprintln!("steady state ({socket_io:?}): {allocs} allocations for {ios} I/Os ({per_io:.4} per I/O), two logins included");
    assert!(
        ios > 1000,
        "the clients did too little I/O to judge ({ios})"
    );
    // What remains is per session (login, text, logout), not per command.
    assert!(per_io < 0.05, "{per_io:.3} allocations per I/O");
    server.shutdown();
}
