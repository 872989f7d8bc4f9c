//! Persistent reservations across the two nodes of a replicated device: two `tandem-control`
//! processes (each supervising its own `tandem-dataplane`) on 127.0.0.1 and 127.0.0.2, set up
//! with the `tandem` CLI; host sessions are raw iSCSI connections with their own initiator
//! names.
//!
//! 1. Host 1 registers (APTPL) and reserves WRITE EXCLUSIVE through node A. A write of host 2
//!    through node B, and host 1's own write through B (another I_T nexus: each node is its
//!    own target port), end RESERVATION CONFLICT; reads pass; host 1's write through A is
//!    GOOD.
//! 2. Host 2 registers through B and CLEARs through B: writes through A and B are GOOD again.
//! 3. Host 1 reserves again through A; node B is killed (-9) and restarted: once it is
//!    synchronized again it reports the reservation (READ RESERVATION) and refuses host 2's
//!    write, from the state it took with its resync (and its own APTPL store).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tandem_tests::e2e::cluster::{
    node_pair, scratch_root, sync_link, wait_until, LogsOnFailure, Node, DEVICE,
};
use tandem_tests::e2e::procs::free_port;
use tandem_tests::e2e::raw::{command_retrying, CommandResult, RawConn};

const GOOD: u8 = 0x00;
const RESERVATION_CONFLICT: u8 = 0x18;
const WRITE_EXCLUSIVE: u8 = 1;
const PATIENCE: Duration = Duration::from_secs(20);

/// One host session (its own initiator port) to `portal`.
fn session(portal: SocketAddr, target: &str, initiator: &str) -> RawConn {
    let mut c = RawConn::connect(portal);
    c.stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let (r, _) = c.login(initiator, Some(target), &[]);
    assert_eq!(r.status_class, 0, "login of {initiator} to {target}");
    c
}

fn host(n: &Node, which: u32) -> RawConn {
    session(
        n.portal,
        &n.iqn(),
        &format!("iqn.2026-12.io.tandem.test:pr-host{which}"),
    )
}

/// A command, retried while the node answers NOT READY or a unit attention (as multipath
/// does); the final answer.
fn run(c: &mut RawConn, cdb: &[u8], read_len: u32, data: &[u8]) -> CommandResult {
    command_retrying(c, cdb, read_len, data, PATIENCE).0
}

/// PERSISTENT RESERVE OUT with a 24-byte parameter list.
fn pr_out(c: &mut RawConn, sa: u8, ty: u8, key: u64, sa_key: u64, aptpl: bool) -> u8 {
    let cdb = [0x5F, sa, ty, 0, 0, 0, 0, 0, 24, 0];
    let mut p = [0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    p[20] = u8::from(aptpl);
    run(c, &cdb, 0, &p).status
}

/// READ RESERVATION: the holder's key and the type, if any.
fn read_reservation(c: &mut RawConn) -> Option<(u64, u8)> {
    let cdb = [0x5E, 1, 0, 0, 0, 0, 0, 0, 24, 0];
    let r = run(c, &cdb, 24, &[]);
    assert_eq!(r.status, GOOD, "READ RESERVATION: {:02x?}", r.sense);
    let len = u32::from_be_bytes(r.data_in[4..8].try_into().unwrap());
    (len >= 16).then(|| {
        (
            u64::from_be_bytes(r.data_in[8..16].try_into().unwrap()),
            r.data_in[21] & 0x0f,
        )
    })
}

fn block_size(c: &mut RawConn) -> usize {
    let r = run(c, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8, &[]);
    assert_eq!(r.status, GOOD);
    u32::from_be_bytes(r.data_in[4..8].try_into().unwrap()) as usize
}

fn write(c: &mut RawConn, lba: u32, bs: usize) -> u8 {
    let mut cdb = [0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
    run(c, &cdb, 0, &vec![0x5a; bs]).status
}

fn read(c: &mut RawConn, lba: u32, bs: usize) -> u8 {
    let mut cdb = [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
    run(c, &cdb, bs as u32, &[]).status
}

#[test]
fn reservations_bind_both_nodes_and_survive_a_restart() {
    let root = scratch_root("tandem-ha-pr");
    let (mut a, mut b) = node_pair(root.path());
    a.start();
    b.start();
    let _logs = LogsOnFailure::new(vec![a.log.clone(), b.log.clone()]);
    a.ok(&["device", "create", DEVICE, "--size", "64MiB"]);
    a.add_server(&b);
    b.add_server(&a);
    let link = sync_link(&a, &b, free_port());
    a.add_replica(&b, &link);
    wait_until(
        "both nodes serving and synchronized after replica add",
        Duration::from_secs(90),
        || a.synchronized(2) && b.synchronized(2),
    );

    // ---- 1. Reserved through A, refused through B.
    let mut h1a = host(&a, 1);
    let mut h1b = host(&b, 1);
    let mut h2b = host(&b, 2);
    let bs = block_size(&mut h1a);
    assert_eq!(
        pr_out(&mut h1a, 0, 0, 0, 0x11, true),
        GOOD,
        "REGISTER via A"
    );
    let t0 = Instant::now();
    assert_eq!(
        pr_out(&mut h1a, 1, WRITE_EXCLUSIVE, 0x11, 0, false),
        GOOD,
        "RESERVE via A"
    );
    eprintln!("MEASURE RESERVE through A answered in {:?}", t0.elapsed());
    assert_eq!(
        write(&mut h2b, 8, bs),
        RESERVATION_CONFLICT,
        "another host's write through B"
    );
    assert_eq!(
        write(&mut h1b, 8, bs),
        RESERVATION_CONFLICT,
        "the holder's initiator through B is another I_T nexus"
    );
    assert_eq!(read(&mut h2b, 8, bs), GOOD, "reads pass WRITE EXCLUSIVE");
    assert_eq!(write(&mut h1a, 8, bs), GOOD, "the holder writes through A");
    assert_eq!(read_reservation(&mut h2b), Some((0x11, WRITE_EXCLUSIVE)));

    // ---- 2. Cleared through B: writes through both nodes pass again.
    assert_eq!(
        pr_out(&mut h2b, 0, 0, 0, 0x22, false),
        GOOD,
        "REGISTER via B"
    );
    assert_eq!(write(&mut h2b, 9, bs), RESERVATION_CONFLICT);
    assert_eq!(pr_out(&mut h2b, 3, 0, 0x22, 0, false), GOOD, "CLEAR via B");
    let mut h3a = host(&a, 3);
    assert_eq!(
        write(&mut h3a, 9, bs),
        GOOD,
        "a write through A after the clear"
    );
    assert_eq!(
        write(&mut h2b, 10, bs),
        GOOD,
        "a write through B after the clear"
    );
    assert_eq!(read_reservation(&mut h3a), None);

    // ---- 3. Reserved again through A; B restarts and still enforces it.
    assert_eq!(
        pr_out(&mut h1a, 0, 0, 0, 0x33, true),
        GOOD,
        "REGISTER via A"
    );
    assert_eq!(
        pr_out(&mut h1a, 1, WRITE_EXCLUSIVE, 0x33, 0, false),
        GOOD,
        "RESERVE via A"
    );
    drop((h1b, h2b));
    b.kill();
    b.start();
    let t0 = Instant::now();
    wait_until(
        "node B synchronized again after its restart",
        Duration::from_secs(90),
        || a.synchronized(2) && b.synchronized(2),
    );
    eprintln!(
        "MEASURE node B synchronized {:?} after its restart",
        t0.elapsed()
    );
    let mut h2b = host(&b, 2);
    assert_eq!(read_reservation(&mut h2b), Some((0x33, WRITE_EXCLUSIVE)));
    assert_eq!(
        write(&mut h2b, 11, bs),
        RESERVATION_CONFLICT,
        "the restarted node enforces the reservation"
    );
    assert_eq!(write(&mut h1a, 11, bs), GOOD);
}
