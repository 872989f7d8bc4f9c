//! Session life cycle: reinstatement by ISID, NOP-In pings that find dead initiators, and
//! sessions spread over several reactors.

use std::process::Command;
use std::time::{Duration, Instant};
use tandem_iscsi::wire::{Bhs, NopInRepr, Opcode};
use tandem_tests::e2e::conformance;
use tandem_tests::e2e::cunit::Outcome;
use tandem_tests::e2e::procs::Target;
use tandem_tests::e2e::raw::RawConn;

const INITIATOR: &str = "iqn.2026-11.io.tandem.test:sessions";

#[test]
fn login_with_same_isid_reinstates_the_session() {
    let t = Target::serve("reinstate", &["--ram", "16MiB", "--cores", "0,1"]);
    let mut first = RawConn::connect(t.portal);
    let (r1, _) = first.login(INITIATOR, Some(&t.iqn), &[]);
    assert_eq!(r1.status_class, 0);
    let mut second = RawConn::connect(t.portal);
    let (r2, _) = second.login(INITIATOR, Some(&t.iqn), &[]);
    assert_eq!(r2.status_class, 0);
    assert_ne!(r1.tsih, r2.tsih, "a reinstated session gets a new TSIH");
    assert!(
        first.closed_by_target(),
        "the old session must be closed on reinstatement"
    );
    // The new one works (its first command reports the new nexus' power-on UA).
    second.scsi(&[0u8; 6], 0, false, false, &[]);
    let pdu = second.recv().expect("TUR answer on the reinstated session");
    assert_eq!(pdu.opcode(), Some(Opcode::ScsiResponse));
}

#[test]
fn silent_initiator_is_pinged_then_dropped() {
    let t = Target::serve(
        "nop",
        &[
            "--ram",
            "16MiB",
            "--nop-interval",
            "1",
            "--nop-timeout",
            "2",
        ],
    );
    let mut c = RawConn::connect(t.portal);
    let (r, _) = c.login(INITIATOR, Some(&t.iqn), &[]);
    assert_eq!(r.status_class, 0);
    c.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let pdu = c.recv().expect("a NOP-In ping after 1 s of silence");
    assert_eq!(pdu.opcode(), Some(Opcode::NopIn));
    let nop = NopInRepr::parse(&Bhs::new_unchecked(&pdu.bhs[..])).unwrap();
    assert_eq!(nop.itt, u32::MAX, "a target ping carries the reserved ITT");
    assert_ne!(
        nop.ttt,
        u32::MAX,
        "a target ping asks for an answer (TTT set)"
    );
    let start = Instant::now();
    assert!(
        c.closed_by_target(),
        "an unanswered ping must end the connection"
    );
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn answered_pings_keep_the_session() {
    let t = Target::serve(
        "nop-ok",
        &[
            "--ram",
            "16MiB",
            "--nop-interval",
            "1",
            "--nop-timeout",
            "2",
        ],
    );
    let mut c = RawConn::connect(t.portal);
    let (r, _) = c.login(INITIATOR, Some(&t.iqn), &[]);
    assert_eq!(r.status_class, 0);
    c.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    for _ in 0..3 {
        let pdu = c.recv().expect("a NOP-In ping");
        let nop = NopInRepr::parse(&Bhs::new_unchecked(&pdu.bhs[..])).unwrap();
        let reply = tandem_iscsi::wire::NopOutRepr {
            immediate: true,
            lun: 0,
            itt: u32::MAX,
            ttt: nop.ttt,
            cmdsn: c.cmdsn,
            expstatsn: c.expstatsn,
        };
        let mut bhs = [0u8; 48];
        reply.emit(&mut bhs);
        c.send(bhs, &[]).unwrap();
    }
    // Still alive: a TUR gets an answer.
    c.scsi(&[0u8; 6], 0, false, false, &[]);
    loop {
        let pdu = c.recv().expect("the session is still up");
        if pdu.opcode() == Some(Opcode::ScsiResponse) {
            break;
        }
    }
}

#[test]
fn sessions_on_two_reactors_pass_io_suites() {
    let t = Target::serve("two-reactors", &["--ram", "128MiB", "--cores", "0,1"]);
    let url = t.url(0);
    let mut results = Vec::new();
    for suite in [
        "ALL.Read10",
        "ALL.Write10",
        "ALL.CompareAndWrite",
        "ALL.MultipathIO",
    ] {
        results.extend(conformance::run_suite(&url, suite, Duration::from_secs(90)));
    }
    let failed: Vec<_> = results
        .iter()
        .filter(|r| r.outcome == Outcome::Failed)
        .map(|r| r.name.clone())
        .collect();
    let expected =
        conformance::expected_failures(include_str!("../conformance/expected-failures.txt"));
    let unexpected: Vec<_> = failed
        .iter()
        .filter(|n| !expected.contains_key(*n))
        .collect();
    assert!(
        unexpected.is_empty(),
        "failures with two reactors: {unexpected:?}"
    );
    // Several concurrent logins land on both reactors and all work.
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let u = url.clone();
            std::thread::spawn(move || {
                Command::new("iscsi-inq")
                    .arg(u)
                    .output()
                    .map(|o| o.status.success())
                    .unwrap_or(false)
            })
        })
        .collect();
    for h in handles {
        assert!(h.join().unwrap(), "a concurrent login failed");
    }
}
