//! Deferred commands across reactors, with real processes and sockets: two sessions on two
//! reactors increment one counter block with COMPARE AND WRITE. Overlapping CAWs are
//! deferred by the logical unit and parked until the other's range is released, which may
//! happen on the other reactor (its release must wake this one). Every increment that was
//! answered GOOD must be in the final count (atomicity), and the run must not crawl at the
//! pace of a fallback timer.

use std::time::{Duration, Instant};
use tandem_tests::e2e::blocks::read16;
use tandem_tests::e2e::procs::Target;
use tandem_tests::e2e::raw::RawConn;

const BS: usize = 512;
const ROUNDS: u64 = 300;

fn caw16(lba: u64) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x89;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[13] = 1;
    c
}

fn block_of(counter: u64) -> Vec<u8> {
    let mut b = vec![0u8; BS];
    b[..8].copy_from_slice(&counter.to_le_bytes());
    b
}

fn session(t: &Target, name: &str) -> RawConn {
    let mut c = RawConn::connect(t.portal);
    let (r, _) = c.login(name, Some(&t.iqn), &[("ImmediateData", "Yes")]);
    assert_eq!(r.status_class, 0, "login of {name}");
    // Clear the power-on unit attention.
    let _ = c.command(&[0u8; 6], 0, &[], 0, 0);
    c
}

fn read_counter(c: &mut RawConn) -> u64 {
    let r = c.command(&read16(0, 1), BS as u32, &[], 0, 0);
    assert_eq!(r.status, 0, "read of the counter block");
    u64::from_le_bytes(r.data_in[..8].try_into().expect("8 bytes"))
}

/// Increments the counter `rounds` times with compare-and-write; returns the miscompares.
fn increment(mut c: RawConn, rounds: u64) -> u64 {
    let mut seen = read_counter(&mut c);
    let mut miscompares = 0;
    let mut done = 0;
    while done < rounds {
        let mut data = block_of(seen);
        data.extend(block_of(seen + 1));
        let r = c.command(&caw16(0), 0, &data, data.len(), 65536);
        match r.status {
            0 => {
                done += 1;
                seen += 1;
            }
            2 if r.sense.len() > 2 && r.sense[2] & 0x0f == 0x0e => {
                // The other session got there first: read the new value and retry.
                miscompares += 1;
                seen = read_counter(&mut c);
            }
            s => panic!("COMPARE AND WRITE answered status {s}, sense {:?}", r.sense),
        }
    }
    miscompares
}

#[test]
fn compare_and_write_from_two_reactors_parks_and_wakes_across_reactors() {
    let t = Target::serve("parking", &["--ram", "16MiB", "--cores", "0,1"]);
    let a = session(&t, "iqn.2026-11.io.tandem.test:park-a");
    let b = session(&t, "iqn.2026-11.io.tandem.test:park-b");
    let t0 = Instant::now();
    let ta = std::thread::spawn(move || increment(a, ROUNDS));
    let tb = std::thread::spawn(move || increment(b, ROUNDS));
    let (ma, mb) = (ta.join().unwrap(), tb.join().unwrap());
    let took = t0.elapsed();
    let mut c = session(&t, "iqn.2026-11.io.tandem.test:park-check");
    assert_eq!(
        read_counter(&mut c),
        2 * ROUNDS,
        "every increment answered GOOD is in the count"
    );
    eprintln!(
        "{} increments from two reactors in {took:?} ({ma} + {mb} miscompares)",
        2 * ROUNDS
    );
    // A missed wake-up costs up to the reactor's 100 ms sleep cap; even on a loaded
    // 2-core machine 600 round trips take a few seconds at most.
    assert!(
        took < Duration::from_secs(30),
        "{took:?}: deferred commands wait for a fallback timer?"
    );
}
