//! State that must outlive a moment: online extend seen by an open session (capacity-changed
//! unit attention), and persistent reservations with APTPL surviving a restart.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;
use tandem_tests::e2e::procs::{bin, free_port, scratch_dir, wait_for_port, Proc};
use tandem_tests::e2e::raw::RawConn;

const INITIATOR: &str = "iqn.2026-11.io.tandem.test:live";

fn read_capacity16(c: &mut RawConn) -> (u8, u64, Vec<u8>) {
    let cdb = [0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0];
    let r = c.command(&cdb, 32, &[], 0, 0);
    let last_lba = u64::from_be_bytes(r.data_in[..8].try_into().unwrap());
    (r.status, last_lba, r.sense)
}

fn serve(args: &[&str], socket: Option<&std::path::Path>) -> (Proc, std::net::SocketAddr, String) {
    let port = free_port();
    let portal: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let iqn = "iqn.2026-11.io.tandem:test-live".to_string();
    let mut cmd = Command::new(bin("tandem-dataplane"));
    if let Some(s) = socket {
        cmd.arg("--control-socket").arg(s);
    }
    cmd.arg("serve")
        .arg("--portal")
        .arg(portal.to_string())
        .arg("--iqn")
        .arg(&iqn)
        .args(args);
    cmd.env("TANDEM_LOG", "warn");
    let p = Proc::spawn(cmd, "tandem-dataplane");
    assert!(
        wait_for_port(portal, Duration::from_secs(20)),
        "target did not start"
    );
    (p, portal, iqn)
}

#[test]
fn online_extend_is_seen_by_an_open_session() {
    let dir = tempfile::Builder::new()
        .prefix("tandem-ext")
        .tempdir_in(scratch_dir())
        .unwrap();
    let img = dir.path().join("d.img");
    let sock = dir.path().join("dp.sock");
    let (_p, portal, iqn) = serve(
        &[
            "--file",
            img.to_str().unwrap(),
            "--size",
            "32MiB",
            "--alias",
            "disk0",
        ],
        Some(&sock),
    );
    let mut c = RawConn::connect(portal);
    let (r, _) = c.login(INITIATOR, Some(&iqn), &[]);
    assert_eq!(r.status_class, 0);
    let _ = c.command(&[0u8; 6], 0, &[], 0, 0); // power-on UA
    let (st, last, _) = read_capacity16(&mut c);
    assert_eq!((st, last), (0, 32 * 2048 - 1));

    // Extend through the control socket, as tandem-control does.
    let mut s = UnixStream::connect(&sock).expect("control socket");
    let req = r#"{"version":1,"id":7,"body":{"request":{"op":"extend_device","args":{"name":"disk0","new_size_bytes":67108864}}}}"#;
    s.write_all(format!("{req}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).unwrap();
    assert!(line.contains("\"ok\""), "extend refused: {line}");

    // The open session gets CAPACITY DATA HAS CHANGED, then the new size.
    let tur = c.command(&[0u8; 6], 0, &[], 0, 0);
    assert_eq!(tur.status, 2);
    assert_eq!(
        (tur.sense[2] & 0x0f, tur.sense[12], tur.sense[13]),
        (6, 0x2a, 0x09)
    );
    let (st, last, _) = read_capacity16(&mut c);
    assert_eq!((st, last), (0, 64 * 2048 - 1));
    assert_eq!(
        std::fs::metadata(&img).unwrap().len(),
        64 << 20,
        "the image file grew"
    );
}

#[test]
fn aptpl_registration_survives_a_restart() {
    let dir = tempfile::Builder::new()
        .prefix("tandem-pr")
        .tempdir_in(scratch_dir())
        .unwrap();
    let img = dir.path().join("d.img");
    let args = ["--file", img.to_str().unwrap(), "--size", "16MiB"];
    let key: u64 = 0x1122_3344_5566_7788;
    {
        let (mut p, portal, iqn) = serve(&args, None);
        let mut c = RawConn::connect(portal);
        let (r, _) = c.login(INITIATOR, Some(&iqn), &[]);
        assert_eq!(r.status_class, 0);
        let _ = c.command(&[0u8; 6], 0, &[], 0, 0);
        // PERSISTENT RESERVE OUT / REGISTER with APTPL.
        let mut params = [0u8; 24];
        params[8..16].copy_from_slice(&key.to_be_bytes());
        params[20] = 0x01;
        let cdb = [0x5f, 0x00, 0, 0, 0, 0, 0, 0, 24, 0];
        let r = c.command(&cdb, 0, &params, 24, 8192);
        assert_eq!(r.status, 0, "REGISTER with APTPL failed: {:?}", r.sense);
        assert!(p.terminate(Duration::from_secs(10)).is_some());
    }
    let (_p, portal, iqn) = serve(&args, None);
    let mut c = RawConn::connect(portal);
    let (r, _) = c.login(INITIATOR, Some(&iqn), &[]);
    assert_eq!(r.status_class, 0);
    let _ = c.command(&[0u8; 6], 0, &[], 0, 0);
    // PERSISTENT RESERVE IN / READ KEYS.
    let r = c.command(&[0x5e, 0x00, 0, 0, 0, 0, 0, 0x01, 0x00, 0], 256, &[], 0, 0);
    assert_eq!(r.status, 0);
    let list_len = u32::from_be_bytes(r.data_in[4..8].try_into().unwrap()) as usize;
    assert_eq!(list_len, 8, "one key after restart");
    assert_eq!(
        u64::from_be_bytes(r.data_in[8..16].try_into().unwrap()),
        key
    );
}
