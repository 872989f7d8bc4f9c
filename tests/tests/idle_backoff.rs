//! An idle data plane sleeps: once its sessions are gone its reactor backs off to a few
//! wake-ups a second, with either socket I/O path. On these two-core machines a reactor
//! that keeps polling starves the initiator and the partner node, and every measurement
//! taken next to it is wrong (an io_uring reactor once spun at half a core for good after
//! its last session closed, which cut a file-backed target next to it to 169 IOPS).

use std::process::Command;
use std::time::Duration;
use tandem_tests::e2e::procs::{bin, Target};

/// A real client's whole life: discovery, login, a burst of writes and reads, logout
/// (the target closes each connection with its receive still in flight).
fn burst_with_a_real_client(t: &Target) {
    let out = Command::new(bin("tandem-loadgen"))
        .args(["--portal", &t.portal.to_string(), "--rw", "randrw"])
        .args(["--qd", "4", "--ops", "2000"])
        .output()
        .expect("run tandem-loadgen");
    assert!(
        out.status.success(),
        "tandem-loadgen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn idle_cpu_after_sessions(socket_io: &str) -> u64 {
    let t = Target::serve(
        &format!("idle-{socket_io}"),
        &["--ram", "16MiB", "--socket-io", socket_io],
    );
    for _ in 0..3 {
        burst_with_a_real_client(&t);
    }
    // The spin phase after the last work is 200 µs; give the close a moment, then count.
    std::thread::sleep(Duration::from_millis(300));
    let before = t.proc.cpu_ticks();
    std::thread::sleep(Duration::from_secs(2));
    t.proc.cpu_ticks() - before
}

#[test]
fn an_idle_reactor_sleeps_after_its_sessions_close() {
    for io in ["syscalls", "uring"] {
        let ticks = idle_cpu_after_sessions(io);
        eprintln!("socket_io {io}: {ticks} ticks of CPU in 2 s idle");
        // A sleeping reactor wakes at most 10 times a second (its 100 ms cap): well under
        // one tick. Spinning, even while yielding, costs tens of ticks (96 seen).
        assert!(
            ticks <= 10,
            "socket_io {io}: the idle data plane used {ticks} ticks (of 200) in 2 s: it does not sleep"
        );
    }
}
