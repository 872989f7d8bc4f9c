//! The LU signals every release a deferred command can wait on (see `crate::release`).

use super::*;
use crate::TargetPort;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

fn nexus(id: u64) -> Nexus {
    Nexus {
        id,
        initiator_name: format!("iqn.2026-01.test:host{id}"),
        isid: [0x80, 0, 0, 0, 0, id as u8],
        port: TargetPort {
            relative_port_id: 1,
            tpg_id: 7,
            target_name: "iqn.2026-11.io.tandem:n1-disk".into(),
            tpgt: 1,
        },
    }
}

fn lu(store: Option<Box<dyn PrStore>>) -> (LogicalUnit, Arc<AtomicU64>) {
    let lu = LogicalUnit::new(
        LuConfig {
            identity: LuIdentity::derive("disk-under-test"),
            block_size: 512,
            num_blocks: 1024,
            read_only: false,
            cache: CacheMode::WriteBack,
            unmap_supported: true,
            max_transfer_blocks: 128,
        },
        store,
    );
    let woken = Arc::new(AtomicU64::new(0));
    let w = Arc::clone(&woken);
    assert!(lu.releases().set_waker(Box::new(move |bits| {
        w.fetch_or(bits, SeqCst);
    })));
    (lu, woken)
}

fn exec(lu: &LogicalUnit, n: &Nexus, cdb: &[u8], data_out: &[u8]) -> Step {
    lu.execute(&Command {
        cdb,
        data_out,
        expected_in_len: 0,
        nexus: n,
    })
}

#[test]
fn a_deferred_write_is_woken_when_the_conflicting_range_is_released() {
    let (lu, woken) = lu(None);
    let (a, b) = (nexus(1), nexus(2));
    let mut caw = [0u8; 16];
    caw[0] = 0x89;
    caw[2..10].copy_from_slice(&8u64.to_be_bytes());
    caw[13] = 1;
    let Step::Io(held) = exec(&lu, &a, &caw, &[0u8; 1024]) else {
        panic!("COMPARE AND WRITE should start its read")
    };
    let write = [0x2A, 0, 0, 0, 0, 8, 0, 0, 1, 0];
    let seen = lu.releases().generation();
    assert!(matches!(exec(&lu, &b, &write, &[0u8; 512]), Step::Defer));
    assert!(lu.releases().watch(2, seen), "nothing released: wait");
    assert_eq!(woken.load(SeqCst), 0);
    drop(held);
    assert_eq!(woken.load(SeqCst), 1 << 2, "the waiter was woken");
    assert!(!lu.releases().watch(2, seen), "and told to retry");
    assert!(matches!(exec(&lu, &b, &write, &[0u8; 512]), Step::Io(_)));
}

#[derive(Default)]
struct NullStore;

impl PrStore for NullStore {
    fn save(&self, _: &[u8]) -> std::io::Result<()> {
        Ok(())
    }
    fn load(&self) -> std::io::Result<Option<Vec<u8>>> {
        Ok(None)
    }
}

#[test]
fn a_deferred_pr_out_is_woken_when_the_pending_commit_settles() {
    let (lu, woken) = lu(Some(Box::new(NullStore)));
    let (a, b) = (nexus(1), nexus(2));
    let register = |key: u64| {
        let mut c = [0u8; 10];
        c[0] = 0x5F;
        c[8] = 24;
        let mut p = vec![0u8; 24];
        p[8..16].copy_from_slice(&key.to_be_bytes());
        p[20] = 0x01; // APTPL: the change must be made durable
        (c, p)
    };
    let (c1, p1) = register(0xAB);
    let Step::Persist(commit) = exec(&lu, &a, &c1, &p1) else {
        panic!("expected a commit")
    };
    let (c2, p2) = register(0xCD);
    let seen = lu.releases().generation();
    assert!(matches!(exec(&lu, &b, &c2, &p2), Step::Defer));
    assert!(lu.releases().watch(0, seen));
    // The persister reports the save: the waiter is woken before anyone resumes the LU.
    commit.signal.set(true);
    assert_eq!(woken.load(SeqCst), 1);
    assert!(!lu.releases().watch(0, seen));
    assert!(matches!(exec(&lu, &b, &c2, &p2), Step::Persist(_)));
}
