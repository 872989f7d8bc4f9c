//! Malformed and hostile input: the target answers with Reject, a login failure or CHECK
//! CONDITION as the protocol says, logs it, and keeps serving everyone else.

use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;
use tandem_iscsi::wire::{reject, Bhs, NopOutRepr, Opcode, RejectRepr, ScsiResponseRepr, BHS_LEN};
use tandem_tests::e2e::procs::Target;
use tandem_tests::e2e::raw::RawConn;

const INITIATOR: &str = "iqn.2026-11.io.tandem.test:bad-input";

fn still_serves(t: &Target) {
    let out = Command::new("iscsi-inq")
        .arg(t.url(0))
        .output()
        .expect("run iscsi-inq");
    assert!(
        out.status.success(),
        "target stopped serving: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("TANDEM"));
}

fn logged_in(t: &Target) -> RawConn {
    let mut c = RawConn::connect(t.portal);
    let (resp, _) = c.login(INITIATOR, Some(&t.iqn), &[]);
    assert_eq!(
        (resp.status_class, resp.status_detail),
        (0, 0),
        "login failed"
    );
    // A new I_T nexus first gets POWER ON/RESET unit attention (29/00): take it here.
    let itt = c.scsi(&[0u8; 6], 0, false, false, &[]);
    let pdu = c.recv().expect("TUR response");
    let r = ScsiResponseRepr::parse(&Bhs::new_unchecked(&pdu.bhs[..])).expect("parse");
    assert_eq!(r.itt, itt);
    assert_eq!(
        r.status, 2,
        "the first command of a new nexus reports the power-on unit attention"
    );
    assert_eq!((pdu.data[2 + 2] & 0x0f, pdu.data[2 + 12]), (0x06, 0x29));
    c
}

fn tur_is_good(c: &mut RawConn) {
    let itt = c.scsi(&[0u8; 6], 0, false, false, &[]);
    let pdu = c.recv().expect("TUR response");
    assert_eq!(pdu.opcode(), Some(Opcode::ScsiResponse));
    let r = ScsiResponseRepr::parse(&Bhs::new_unchecked(&pdu.bhs[..])).expect("parse");
    assert_eq!(r.itt, itt);
    assert_eq!(r.status, 0, "TEST UNIT READY not GOOD");
}

#[test]
fn garbage_before_login_closes_only_that_connection() {
    let t = Target::serve("garbage", &["--ram", "16MiB"]);
    let mut c = RawConn::connect(t.portal);
    c.send_raw(&[0xffu8; BHS_LEN]).unwrap();
    assert!(c.closed_by_target());
    still_serves(&t);
}

#[test]
fn scsi_command_before_login_is_refused() {
    let t = Target::serve("early", &["--ram", "16MiB"]);
    let mut c = RawConn::connect(t.portal);
    c.scsi(&[0u8; 6], 0, false, false, &[]);
    assert!(
        c.closed_by_target(),
        "a command before login must end the connection"
    );
    still_serves(&t);
}

#[test]
fn truncated_pdu_and_disconnect_do_not_hurt() {
    let t = Target::serve("trunc", &["--ram", "16MiB"]);
    for _ in 0..20 {
        let mut c = RawConn::connect(t.portal);
        c.send_raw(&[0x43, 0x87, 0, 0, 0, 0, 1]).unwrap();
    }
    still_serves(&t);
}

#[test]
fn unknown_opcode_gets_reject_command_not_supported() {
    let t = Target::serve("unknown-op", &["--ram", "16MiB"]);
    let mut c = logged_in(&t);
    let mut bhs = [0u8; BHS_LEN];
    bhs[0] = 0x1f;
    bhs[16..20].copy_from_slice(&77u32.to_be_bytes());
    c.send(bhs, &[]).unwrap();
    let pdu = c.recv().expect("a Reject");
    assert_eq!(pdu.opcode(), Some(Opcode::Reject));
    let r = RejectRepr::parse(&Bhs::new_unchecked(&pdu.bhs[..])).unwrap();
    assert_eq!(r.reason, reject::COMMAND_NOT_SUPPORTED);
    assert_eq!(
        &pdu.data[..BHS_LEN],
        &bhs[..],
        "the Reject carries the rejected header"
    );
    tur_is_good(&mut c);
}

#[test]
fn oversize_data_segment_is_rejected_and_skipped() {
    let t = Target::serve("oversize", &["--ram", "16MiB"]);
    let mut c = logged_in(&t);
    let itt = c.itt();
    let nop = NopOutRepr {
        immediate: true,
        lun: 0,
        itt,
        ttt: u32::MAX,
        cmdsn: c.cmdsn,
        expstatsn: c.expstatsn,
    };
    let mut bhs = [0u8; BHS_LEN];
    nop.emit(&mut bhs);
    // 2 MiB: far beyond the 256 KiB MaxRecvDataSegmentLength the target declares.
    c.send(bhs, &vec![0x5a; 2 << 20]).unwrap();
    let pdu = c.recv().expect("a Reject");
    assert_eq!(pdu.opcode(), Some(Opcode::Reject));
    let r = RejectRepr::parse(&Bhs::new_unchecked(&pdu.bhs[..])).unwrap();
    assert_eq!(r.reason, reject::PROTOCOL_ERROR);
    // The stream stays in sync: the next command works.
    tur_is_good(&mut c);
}

#[test]
fn out_of_window_cmdsn_is_ignored() {
    let t = Target::serve("cmdsn", &["--ram", "16MiB"]);
    let mut c = logged_in(&t);
    let good = c.cmdsn;
    c.cmdsn = good.wrapping_add(100_000);
    c.scsi(&[0u8; 6], 0, false, false, &[]);
    c.stream
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    assert!(
        c.recv().is_err(),
        "a command outside the CmdSN window must be silently ignored"
    );
    c.stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    c.cmdsn = good;
    tur_is_good(&mut c);
}

#[test]
fn garbage_login_keys_fail_the_login() {
    let t = Target::serve("badkeys", &["--ram", "16MiB"]);
    let mut c = RawConn::connect(t.portal);
    let (resp, _) = c.login(
        INITIATOR,
        Some(&t.iqn),
        &[
            ("MaxRecvDataSegmentLength", "not-a-number"),
            ("X\u{1}bad", "1"),
        ],
    );
    assert_ne!(
        resp.status_class, 0,
        "a login with malformed keys must not succeed"
    );
    still_serves(&t);
}

#[test]
fn unknown_target_gets_not_found() {
    let t = Target::serve("nf", &["--ram", "16MiB"]);
    let mut c = RawConn::connect(t.portal);
    let (resp, _) = c.login(INITIATOR, Some("iqn.2026-11.io.tandem:nobody"), &[]);
    assert_eq!((resp.status_class, resp.status_detail), (2, 3));
}

#[test]
fn read_beyond_capacity_gets_lba_out_of_range() {
    let t = Target::serve("eol", &["--ram", "16MiB"]);
    let mut c = logged_in(&t);
    // READ(10) of one block at LBA 0x00ffffff, far beyond 16 MiB / 512.
    let itt = c.scsi(
        &[0x28, 0, 0, 0xff, 0xff, 0xff, 0, 0, 1, 0],
        512,
        true,
        false,
        &[],
    );
    let pdu = c.recv().expect("a response");
    assert_eq!(pdu.opcode(), Some(Opcode::ScsiResponse));
    let r = ScsiResponseRepr::parse(&Bhs::new_unchecked(&pdu.bhs[..])).unwrap();
    assert_eq!(r.itt, itt);
    assert_eq!(r.status, 2, "CHECK CONDITION expected");
    let sense = &pdu.data[2..];
    assert_eq!(
        (sense[2] & 0x0f, sense[12], sense[13]),
        (0x05, 0x21, 0x00),
        "ILLEGAL REQUEST / LBA OUT OF RANGE"
    );
}

#[test]
fn chap_wrong_secret_is_refused_right_secret_accepted() {
    let secret = "correct-horse-battery";
    let t = Target::serve(
        "chap",
        &[
            "--ram",
            "16MiB",
            "--chap-user",
            "alice",
            "--chap-secret",
            secret,
        ],
    );
    let url = |user: &str, pass: &str| format!("iscsi://{user}%{pass}@{}/{}/0", t.portal, t.iqn);
    let bad = Command::new("iscsi-inq")
        .arg(url("alice", "wrong-secret-123"))
        .output()
        .unwrap();
    assert!(
        !bad.status.success(),
        "login with a wrong CHAP secret must fail"
    );
    let none = Command::new("iscsi-inq").arg(t.url(0)).output().unwrap();
    assert!(
        !none.status.success(),
        "login without CHAP must fail when CHAP is required"
    );
    let good = Command::new("iscsi-inq")
        .arg(url("alice", secret))
        .output()
        .unwrap();
    assert!(
        good.status.success(),
        "login with the right secret failed: {}",
        String::from_utf8_lossy(&good.stderr)
    );
}

#[test]
fn acl_refuses_other_initiators() {
    let t = Target::serve(
        "acl",
        &[
            "--ram",
            "16MiB",
            "--allow-initiator",
            "iqn.2026-11.io.tandem.test:allowed",
        ],
    );
    let mut c = RawConn::connect(t.portal);
    let (resp, _) = c.login("iqn.2026-11.io.tandem.test:stranger", Some(&t.iqn), &[]);
    assert_eq!(
        (resp.status_class, resp.status_detail),
        (2, 2),
        "authorization failure expected"
    );
    let mut ok = RawConn::connect(t.portal);
    let (resp, _) = ok.login("iqn.2026-11.io.tandem.test:allowed", Some(&t.iqn), &[]);
    assert_eq!(resp.status_class, 0);
}

#[test]
fn hundreds_of_idle_connections_do_not_block_service() {
    let t = Target::serve("idle", &["--ram", "16MiB"]);
    let idle: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(t.portal).expect("idle connection"))
        .collect();
    still_serves(&t);
    let mut c = logged_in(&t);
    tur_is_good(&mut c);
    drop(idle);
    still_serves(&t);
}
