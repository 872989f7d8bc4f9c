//! Limits of the connection layer against hostile or careless initiators, on a real
//! `tandem-dataplane`: memory stays within the per-reactor budget however much data
//! initiators announce or leave unread, idle connections cannot lock out logins, and CHAP
//! guessing is throttled. Each test also checks that another session is served meanwhile.
//!
//! Memory is watched through /proc/PID/status (VmRSS); a watchdog kills the target as soon
//! as it passes the bound, so a regression fails the test instead of exhausting the machine.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_iscsi::wire::{Bhs, DataOutRepr, Opcode, R2tRepr, ScsiCommandRepr, BHS_LEN};
use tandem_tests::e2e::procs::Target;
use tandem_tests::e2e::raw::RawConn;

const MIB: u64 = 1 << 20;

fn rss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Samples the target's RSS every 20 ms; past `limit` it records the breach and kills the
/// target (SIGKILL) so a regression cannot take the machine's memory.
struct Watchdog {
    peak: Arc<AtomicU64>,
    breached: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn start(pid: u32, limit: u64) -> Watchdog {
        let peak = Arc::new(AtomicU64::new(0));
        let breached = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, b, s) = (peak.clone(), breached.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Some(rss) = rss_bytes(pid) else { return };
                p.fetch_max(rss, Ordering::Relaxed);
                if rss > limit {
                    eprintln!(
                        "target RSS {} MiB passed the bound of {} MiB: killing it",
                        rss >> 20,
                        limit >> 20
                    );
                    b.store(true, Ordering::Relaxed);
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Watchdog {
            peak,
            breached,
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (u64, bool) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (
            self.peak.load(Ordering::Relaxed),
            self.breached.load(Ordering::Relaxed),
        )
    }
}

fn login(t: &Target, initiator: &str) -> RawConn {
    let mut c = RawConn::connect(t.portal);
    let (resp, _) = c.login(initiator, Some(&t.iqn), &[]);
    assert_eq!(
        (resp.status_class, resp.status_detail),
        (0, 0),
        "login of {initiator} refused"
    );
    c
}

fn scsi_cmd(c: &mut RawConn, cdb: [u8; 16], edtl: u32, read: bool, write: bool, immediate: bool) {
    let itt = c.itt();
    let repr = ScsiCommandRepr {
        immediate,
        final_flag: true,
        read,
        write,
        attr: 1,
        lun: 0,
        itt,
        edtl,
        cmdsn: c.cmdsn,
        expstatsn: c.expstatsn,
        cdb,
    };
    if !immediate {
        c.cmdsn = c.cmdsn.wrapping_add(1);
    }
    let mut bhs = [0u8; BHS_LEN];
    repr.emit(&mut bhs);
    c.send(bhs, &[]).expect("send command");
}

fn rw16(op: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// A well-behaved session: write 4 KiB, read it back, within `deadline`.
fn other_session_is_served(t: &Target, deadline: Duration) -> Duration {
    let start = Instant::now();
    let mut c = RawConn::connect(t.portal);
    c.stream
        .set_read_timeout(Some(deadline))
        .expect("set timeout");
    let (resp, _) = c.login("iqn.2026-11.io.tandem:bystander", Some(&t.iqn), &[]);
    assert_eq!(resp.status_class, 0, "bystander login refused");
    // A new nexus first sees a unit attention (power on / reset): take it.
    let _ = c.command(&[0u8; 6], 0, &[], 0, 8192);
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    let mut cdb = [0u8; 10];
    cdb[0] = 0x2a;
    cdb[2..6].copy_from_slice(&100u32.to_be_bytes());
    cdb[8] = 8;
    let w = c.command(&cdb, 0, &data, data.len(), 8192);
    assert_eq!(w.status, 0, "bystander write failed");
    cdb[0] = 0x28;
    let r = c.command(&cdb, 4096, &[], 0, 8192);
    assert_eq!(r.status, 0, "bystander read failed");
    assert_eq!(r.data_in, data);
    let took = start.elapsed();
    assert!(took < deadline, "bystander took {took:?}");
    took
}

const BUDGET: u64 = 64 * MIB;
/// RSS allowed above the idle baseline beyond the budget: the 16 MiB RAM disk as it gets
/// written, receive buffers, buffer-pool caches, task tables, thread stacks.
const MARGIN: u64 = 64 * MIB;

#[test]
fn slow_writers_announcing_huge_writes_stay_within_the_memory_budget() {
    let t = Target::serve(
        "slowwrite",
        &[
            "--ram",
            "16MiB",
            "--mem-budget",
            "64MiB",
            "--nop-interval",
            "0",
        ],
    );
    let pid = t.proc.pid();
    // Warm up (first login, first I/O) before taking the baseline.
    other_session_is_served(&t, Duration::from_secs(10));
    let baseline = rss_bytes(pid).expect("target RSS");
    let dog = Watchdog::start(pid, baseline + BUDGET + MARGIN);
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for n in 0..16 {
        let portal = t.portal;
        let iqn = t.iqn.clone();
        let stop = stop.clone();
        writers.push(std::thread::spawn(move || {
            let mut c = RawConn::connect(portal);
            let (resp, _) = c.login(&format!("iqn.2026-11.io.tandem:slow{n}"), Some(&iqn), &[]);
            assert_eq!(resp.status_class, 0);
            c.stream
                .set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            // 128 in the CmdSN window plus 16 immediate: 144 writes announced, 8 MiB each
            // (the maximum transfer), plus a few of 32 MiB that must be refused at once.
            for i in 0..144u32 {
                let lba = (i as u64 % 2) * 16384;
                let (edtl, blocks) = if i % 36 == 35 {
                    (32 << 20, 65536)
                } else {
                    (8 << 20, 16384)
                };
                scsi_cmd(&mut c, rw16(0x8a, lba, blocks), edtl, false, true, i >= 128);
            }
            let chunk = vec![0x5au8; 8192];
            while !stop.load(Ordering::Relaxed) {
                let Ok(pdu) = c.recv() else { continue };
                if pdu.opcode() != Some(Opcode::R2T) {
                    continue;
                }
                let r = R2tRepr::parse(&Bhs::new_unchecked(&pdu.bhs[..])).unwrap();
                // Slowly: 8 KiB every 2 ms (4 MiB/s per connection).
                let mut off = r.buffer_offset;
                let end = off + r.desired_len;
                let mut sn = 0;
                while off < end && !stop.load(Ordering::Relaxed) {
                    let n = (end - off).min(8192);
                    let d = DataOutRepr {
                        final_flag: off + n == end,
                        lun: 0,
                        itt: r.itt,
                        ttt: r.ttt,
                        expstatsn: c.expstatsn,
                        datasn: sn,
                        buffer_offset: off,
                    };
                    let mut bhs = [0u8; BHS_LEN];
                    d.emit(&mut bhs);
                    if c.send(bhs, &chunk[..n as usize]).is_err() {
                        return;
                    }
                    sn += 1;
                    off += n;
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_secs(3));
    let took = other_session_is_served(&t, Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.join();
    }
    let (peak, breached) = dog.finish();
    eprintln!(
        "slow writers: baseline {} MiB, peak {} MiB (bound {} MiB), bystander served in {took:?}",
        baseline / MIB,
        peak / MIB,
        (baseline + BUDGET + MARGIN) / MIB
    );
    assert!(!breached, "RSS passed the budget: peak {} MiB", peak / MIB);
}

#[test]
fn readers_that_never_read_replies_stay_within_the_memory_budget() {
    let t = Target::serve(
        "noread",
        &[
            "--ram",
            "16MiB",
            "--mem-budget",
            "64MiB",
            "--nop-interval",
            "0",
        ],
    );
    let pid = t.proc.pid();
    other_session_is_served(&t, Duration::from_secs(10));
    let baseline = rss_bytes(pid).expect("target RSS");
    let dog = Watchdog::start(pid, baseline + BUDGET + MARGIN);
    let mut hogs = Vec::new();
    for n in 0..4 {
        let mut c = login(&t, &format!("iqn.2026-11.io.tandem:noread{n}"));
        for i in 0..144u32 {
            let lba = (i as u64 % 2) * 16384;
            scsi_cmd(
                &mut c,
                rw16(0x88, lba, 16384),
                8 << 20,
                true,
                false,
                i >= 128,
            );
        }
        // Never read: the replies pile up on the target's side.
        hogs.push(c);
    }
    std::thread::sleep(Duration::from_secs(3));
    let took = other_session_is_served(&t, Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(2));
    let (peak, breached) = dog.finish();
    eprintln!(
        "non-reading clients: baseline {} MiB, peak {} MiB (bound {} MiB), bystander served in {took:?}",
        baseline / MIB,
        peak / MIB,
        (baseline + BUDGET + MARGIN) / MIB
    );
    assert!(!breached, "RSS passed the budget: peak {} MiB", peak / MIB);
    drop(hogs);
}

/// A TCP connection from a chosen loopback source address.
fn connect_from(src: Ipv4Addr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    let SocketAddr::V4(dst) = dst else {
        return Err(std::io::Error::other("IPv4 only"));
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(src, 0)))?;
    connect(fd.as_raw_fd(), &SockaddrIn::from(dst))?;
    Ok(TcpStream::from(fd))
}

#[test]
fn idle_connections_from_one_address_do_not_lock_out_a_login() {
    // 1100 sockets here and as many in the target (which inherits our limit): raise the
    // soft descriptor limit, which is often 1024.
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    let want = 4096.min(hard);
    if want < 2400 {
        eprintln!("skipped: the descriptor limit ({hard}) is too low for this test");
        return;
    }
    if soft < want {
        setrlimit(Resource::RLIMIT_NOFILE, want, hard).expect("setrlimit");
    }
    let t = Target::serve("flood", &["--ram", "16MiB"]);
    // More idle connections than one reactor admits (1024), all from 127.0.0.2.
    let src = Ipv4Addr::new(127, 0, 0, 2);
    let mut idle = Vec::new();
    for _ in 0..1100 {
        match connect_from(src, t.portal) {
            Ok(s) => idle.push(s),
            Err(e) => panic!("connect from {src}: {e}"),
        }
    }
    // Let the target take them all in.
    std::thread::sleep(Duration::from_millis(500));
    let mut c = RawConn::connect(t.portal);
    let (resp, _) = c.login("iqn.2026-11.io.tandem:legit", Some(&t.iqn), &[]);
    assert_eq!(
        (resp.status_class, resp.status_detail),
        (0, 0),
        "a legitimate login was locked out by idle connections"
    );
    let _ = IpAddr::V4(src);
    drop(idle);
}

#[test]
fn failed_chap_attempts_are_rate_limited() {
    let secret = "correct-horse-battery";
    let t = Target::serve(
        "chapthrottle",
        &[
            "--ram",
            "16MiB",
            "--chap-user",
            "alice",
            "--chap-secret",
            secret,
        ],
    );
    let url = |pass: &str| format!("iscsi://alice%{pass}@{}/{}/0", t.portal, t.iqn);
    let inq = |pass: &str| {
        Command::new("iscsi-inq")
            .arg(url(pass))
            .output()
            .expect("iscsi-inq (libiscsi-bin)")
            .status
            .success()
    };
    for _ in 0..4 {
        assert!(!inq("wrong-secret-123"));
    }
    // Blocked now: even the right secret is refused for a while.
    assert!(
        !inq(secret),
        "the right secret was accepted right after four failures: no throttling"
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(inq(secret), "the block must end");
}

/// Issue reproduction: MaxBurstLength=512 offered with FirstBurstLength=65536 was answered
/// with both unchanged; an 8 KiB write with immediate data up to the answered first burst
/// was then rejected and never completed.
#[test]
fn first_burst_is_negotiated_no_larger_than_max_burst_and_writes_complete() {
    let t = Target::serve("burst", &["--ram", "16MiB"]);
    let mut c = RawConn::connect(t.portal);
    let (resp, data) = c.login(
        "iqn.2026-11.io.tandem:burst",
        Some(&t.iqn),
        &[
            ("MaxBurstLength", "512"),
            ("FirstBurstLength", "65536"),
            ("ImmediateData", "Yes"),
        ],
    );
    assert_eq!(resp.status_class, 0);
    let keys = tandem_iscsi::text::parse_pairs(&data, &tandem_iscsi::text::TextLimits::DEFAULT)
        .expect("login keys");
    let get = |k: &str| {
        keys.iter()
            .find(|(kk, _)| kk == k)
            .and_then(|(_, v)| v.parse::<u32>().ok())
            .unwrap_or_else(|| panic!("{k} not answered"))
    };
    let (fbl, mbl) = (get("FirstBurstLength"), get("MaxBurstLength"));
    assert_eq!(mbl, 512);
    assert!(fbl <= mbl, "FirstBurstLength {fbl} > MaxBurstLength {mbl}");
    // Take the power-on unit attention, then write 8 KiB with the answered first burst as
    // immediate data: it must complete.
    let _ = c.command(&[0u8; 6], 0, &[], 0, 512);
    let payload: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    let mut cdb = [0u8; 10];
    cdb[0] = 0x2a;
    cdb[8] = 16;
    let w = c.command(&cdb, 0, &payload, fbl as usize, 512);
    assert_eq!(w.status, 0, "8 KiB write with immediate data failed");
    cdb[0] = 0x28;
    let r = c.command(&cdb, 8192, &[], 0, 512);
    assert_eq!(r.status, 0);
    assert_eq!(r.data_in, payload);
}

/// Issue reproduction: READ(16) sent without the R bit, or with EDTL 0, returned GOOD with
/// no data and no residual. RFC 7143 §11.4.5.2: the data the command produced beyond what
/// the initiator expects is an overflow residual.
#[test]
fn read_without_r_bit_or_with_edtl_zero_reports_an_overflow_residual() {
    use tandem_iscsi::wire::ScsiResponseRepr;
    let t = Target::serve("residual", &["--ram", "16MiB"]);
    let mut c = login(&t, "iqn.2026-11.io.tandem:residual");
    let _ = c.command(&[0u8; 6], 0, &[], 0, 8192);
    for (edtl, r_bit) in [(4096u32, false), (0, true), (0, false)] {
        c.scsi(&rw16(0x88, 0, 8), edtl, r_bit, false, &[]);
        let pdu = c.recv().expect("answer");
        assert_eq!(
            pdu.opcode(),
            Some(Opcode::ScsiResponse),
            "no Data-In expected (EDTL {edtl}, R {r_bit})"
        );
        let r = ScsiResponseRepr::parse(&Bhs::new_unchecked(&pdu.bhs[..])).unwrap();
        assert_eq!(r.status, 0);
        assert!(r.flags.overflow, "overflow bit (EDTL {edtl}, R {r_bit})");
        assert_eq!(r.residual, 4096, "residual (EDTL {edtl}, R {r_bit})");
    }
}
