//! Large transfers through every data path (immediate data, R2T bursts with large and small
//! Data-Out segments, multi-PDU Data-In) read back byte for byte, on RAM and O_DIRECT files.

use tandem_tests::e2e::blocks::{pattern, read16, write16};
use tandem_tests::e2e::procs::{scratch_dir, Target};
use tandem_tests::e2e::raw::RawConn;

const INITIATOR: &str = "iqn.2026-11.io.tandem.test:integrity";

fn exercise(t: &Target) {
    let mut c = RawConn::connect(t.portal);
    let keys = [
        ("MaxRecvDataSegmentLength", "262144"),
        ("FirstBurstLength", "65536"),
        ("MaxBurstLength", "262144"),
        ("ImmediateData", "Yes"),
        ("InitialR2T", "Yes"),
    ];
    let (r, _) = c.login(INITIATOR, Some(&t.iqn), &keys);
    assert_eq!(r.status_class, 0);
    // Clear the power-on unit attention.
    let ua = c.command(&[0u8; 6], 0, &[], 0, 0);
    assert_eq!(ua.status, 2);
    // (bytes, immediate bytes, Data-Out segment size)
    let cases = [
        (4096usize, 4096usize, 8192usize),
        (65536, 8192, 65536),
        (1 << 20, 32768, 262144),
        (1 << 20, 0, 8192),
        (3 << 20, 65536, 131072),
    ];
    for (i, (len, imm, seg)) in cases.into_iter().enumerate() {
        let lba = (i as u64) * 8192;
        let blocks = (len / 512) as u32;
        let data = pattern(len, i as u32 + 1);
        let w = c.command(&write16(lba, blocks), 0, &data, imm, seg);
        assert_eq!(w.status, 0, "write case {i} failed, sense {:?}", w.sense);
        let rd = c.command(&read16(lba, blocks), len as u32, &[], 0, 0);
        assert_eq!(rd.status, 0, "read case {i} failed, sense {:?}", rd.sense);
        assert!(
            rd.data_in == data,
            "case {i}: data read back differs from data written"
        );
    }
}

#[test]
fn large_transfers_round_trip_on_ram() {
    let t = Target::serve("integrity-ram", &["--ram", "64MiB"]);
    exercise(&t);
}

#[test]
fn large_transfers_round_trip_on_direct_file() {
    let dir = tempfile::Builder::new()
        .prefix("tandem-int")
        .tempdir_in(scratch_dir())
        .unwrap();
    let img = dir.path().join("d.img");
    let t = Target::serve(
        "integrity-file",
        &["--file", img.to_str().unwrap(), "--size", "64MiB"],
    );
    exercise(&t);
}

#[test]
fn write_back_cache_round_trips_and_survives_restart() {
    let dir = tempfile::Builder::new()
        .prefix("tandem-wb")
        .tempdir_in(scratch_dir())
        .unwrap();
    let img = dir.path().join("d.img");
    let args = [
        "--file",
        img.to_str().unwrap(),
        "--size",
        "64MiB",
        "--cache",
        "write-back",
        "--cache-size",
        "16MiB",
    ];
    let data = pattern(1 << 20, 99);
    {
        let mut t = Target::serve("wb", &args);
        exercise(&t);
        let mut c = RawConn::connect(t.portal);
        let (r, _) = c.login(
            INITIATOR,
            Some(&t.iqn),
            &[("MaxRecvDataSegmentLength", "262144")],
        );
        assert_eq!(r.status_class, 0);
        let _ = c.command(&[0u8; 6], 0, &[], 0, 0);
        let w = c.command(&write16(40_000, 2048), 0, &data, 0, 65536);
        assert_eq!(w.status, 0);
        // SIGTERM must flush the write-back cache before exit.
        let st = t.proc.terminate(std::time::Duration::from_secs(20));
        assert!(
            st.map(|s| s.success()).unwrap_or(false),
            "clean exit on SIGTERM"
        );
    }
    let bytes = std::fs::read(&img).unwrap();
    let at = 40_000 * 512;
    assert!(
        bytes[at..at + data.len()] == data[..],
        "write-back data did not reach the file"
    );
}
