//! Persistent-reservation state (APTPL) kept in a small file, replaced atomically so a
//! crash leaves either the old or the new state, and the persister that writes it off the
//! reactor threads.
//!
//! A PERSISTENT RESERVE OUT that changes what must survive a power loss comes back from
//! the LU as `Step::Persist`; the reactor hands the blob to the persister thread through
//! [`PersistInbox::submit`] and carries on. The thread saves it (write, fsync, rename,
//! directory fsync) and sends a completion tagged like a block I/O back to the submitting
//! reactor's inbox, whose eventfd wakes that reactor; the connection then resumes the LU,
//! which applies the new state and answers only now that it is durable.

use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use tandem_bdev::{BdevError, Completion};
use tandem_ffi::EventFd;
use tandem_scsi::{CommitSignal, PrStore};

pub struct FilePrStore {
    path: PathBuf,
}

impl FilePrStore {
    pub fn new(path: PathBuf) -> FilePrStore {
        FilePrStore { path }
    }
}

impl PrStore for FilePrStore {
    fn save(&self, blob: &[u8]) -> io::Result<()> {
        // `x.img.pr` → `x.img.pr.tmp`; 0600: reservation keys are not for other local users.
        let mut tmp_name = self.path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(".tmp");
        let tmp = self.path.with_file_name(tmp_name);
        let _ = fs::remove_file(&tmp);
        {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(blob)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &self.path)?;
        // The rename is only durable once the directory is: without this a crash could
        // bring the old file back after the initiator was told the change is done.
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    fn load(&self) -> io::Result<Option<Vec<u8>>> {
        match fs::read(&self.path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Commits queued for the persister thread beyond which a submission is refused (the
/// command then fails) instead of blocking a reactor. Each LU has at most one commit in
/// flight, so this is only reached with more LUs than this committing at the same time.
const PERSIST_QUEUE: usize = 64;

struct Job {
    store: Arc<dyn PrStore>,
    blob: Vec<u8>,
    /// Tells the LU the outcome even if the command is gone by then; dropped unset
    /// (job never run) it means failed.
    signal: CommitSignal,
    tag: u64,
    reply: Sender<Completion>,
    wake: Arc<EventFd>,
}

/// The node's one persister thread, started on first use.
fn persister() -> Option<&'static Sender<Job>> {
    static TX: OnceLock<Option<Sender<Job>>> = OnceLock::new();
    TX.get_or_init(|| {
        let (tx, rx) = crossbeam_channel::bounded::<Job>(PERSIST_QUEUE);
        std::thread::Builder::new()
            .name("pr-persist".into())
            .spawn(move || persist_loop(rx))
            .map_err(|e| tracing::error!(error = %e, "cannot start the reservation persister"))
            .ok()
            .map(|_| tx)
    })
    .as_ref()
}

fn persist_loop(rx: Receiver<Job>) {
    for job in rx {
        let result = job.store.save(&job.blob).map_err(|e| {
            tracing::error!(error = %e, "cannot persist reservation state");
            BdevError::Io(e)
        });
        job.signal.set(result.is_ok());
        // The reactor may be gone (shutdown): then nobody waits for the answer.
        let _ = job.reply.send(Completion {
            tag: job.tag,
            result,
            buf: None,
        });
        let _ = job.wake.notify();
    }
}

/// One reactor's side of the persister: where its commits' completions arrive.
pub struct PersistInbox {
    tx: Sender<Completion>,
    rx: Receiver<Completion>,
    wake: Arc<EventFd>,
    in_flight: usize,
    /// Completions received whose eventfd notification has not been drained yet: the
    /// persister notifies after it sends, so a notification can arrive after its
    /// completion was taken; it must still be drained, or the eventfd would stay readable
    /// and keep waking an idle reactor.
    owed: u64,
}

impl PersistInbox {
    pub fn new() -> io::Result<PersistInbox> {
        // Unbounded on purpose: its size is bounded by the commits this reactor has in
        // flight, and the persister must never block on a slow reactor.
        let (tx, rx) = crossbeam_channel::unbounded();
        Ok(PersistInbox {
            tx,
            rx,
            wake: Arc::new(EventFd::new()?),
            in_flight: 0,
            owed: 0,
        })
    }

    /// Readable when completions are waiting.
    pub fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// Queues `blob` for `store`; its completion comes back with `tag`. False if the
    /// persister cannot take it now (the caller fails the command).
    pub fn submit(
        &mut self,
        tag: u64,
        store: Arc<dyn PrStore>,
        blob: Vec<u8>,
        signal: CommitSignal,
    ) -> bool {
        let Some(persister) = persister() else {
            return false;
        };
        let job = Job {
            store,
            blob,
            signal,
            tag,
            reply: self.tx.clone(),
            wake: Arc::clone(&self.wake),
        };
        match persister.try_send(job) {
            Ok(()) => {
                self.in_flight += 1;
                true
            }
            Err(TrySendError::Full(_)) => {
                tracing::warn!("reservation persister queue full");
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// Moves finished commits into `out`; returns how many.
    pub fn poll(&mut self, out: &mut Vec<Completion>) -> usize {
        // Nothing in flight and nothing to drain: no syscall on the hot path.
        if self.in_flight == 0 && self.owed == 0 {
            return 0;
        }
        let drained = self.wake.drain();
        let mut n = 0;
        while let Ok(c) = self.rx.try_recv() {
            out.push(c);
            n += 1;
        }
        self.in_flight = self.in_flight.saturating_sub(n);
        self.owed = (self.owed + n as u64).saturating_sub(drained);
        n
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};
    use tandem_scsi::{
        CacheMode, Command, IoOutcome, LogicalUnit, LuConfig, LuIdentity, Nexus, Reply, ReplyData,
        ScsiStatus, Step, TargetPort,
    };

    struct FailingStore;
    impl PrStore for FailingStore {
        fn save(&self, _: &[u8]) -> io::Result<()> {
            Err(io::Error::other("no space"))
        }
        fn load(&self) -> io::Result<Option<Vec<u8>>> {
            Ok(None)
        }
    }

    fn wait_for(inbox: &mut PersistInbox) -> Completion {
        let start = Instant::now();
        let mut out = Vec::new();
        while out.is_empty() {
            assert!(start.elapsed() < Duration::from_secs(10), "no completion");
            tandem_ffi::WakeSet::new()
                .and_then(|ws| {
                    ws.add(inbox.wake_fd())?;
                    ws.wait(100)
                })
                .expect("wait on the inbox eventfd");
            inbox.poll(&mut out);
        }
        assert_eq!(out.len(), 1);
        out.pop().expect("one completion")
    }

    fn lu(store: Arc<dyn PrStore>) -> LogicalUnit {
        struct Shared(Arc<dyn PrStore>);
        impl PrStore for Shared {
            fn save(&self, blob: &[u8]) -> io::Result<()> {
                self.0.save(blob)
            }
            fn load(&self) -> io::Result<Option<Vec<u8>>> {
                self.0.load()
            }
        }
        LogicalUnit::new(
            LuConfig {
                identity: LuIdentity::derive("pr-store-test"),
                block_size: 512,
                num_blocks: 64,
                read_only: false,
                cache: CacheMode::None,
                unmap_supported: false,
                max_transfer_blocks: 64,
            },
            Some(Box::new(Shared(store))),
        )
    }

    fn nexus() -> Nexus {
        Nexus {
            id: 1,
            initiator_name: "iqn.2026-11.test:host".into(),
            isid: [0x80, 0, 0, 0, 0, 1],
            port: TargetPort {
                relative_port_id: 1,
                tpg_id: 1,
                target_name: "iqn.2026-11.test:t".into(),
                tpgt: 1,
            },
        }
    }

    /// PERSISTENT RESERVE OUT / REGISTER AND IGNORE EXISTING KEY 0x55 with APTPL.
    fn register_aptpl(lu: &LogicalUnit, n: &Nexus) -> Step {
        let cdb = [0x5F, 6, 0, 0, 0, 0, 0, 0, 24, 0];
        let mut p = [0u8; 24];
        p[15] = 0x55;
        p[20] = 0x01;
        lu.execute(&Command {
            cdb: &cdb,
            data_out: &p,
            expected_in_len: 0,
            nexus: n,
        })
    }

    fn read_keys(lu: &LogicalUnit, n: &Nexus) -> Vec<u8> {
        let cdb = [0x5E, 0, 0, 0, 0, 0, 0, 0, 64, 0];
        match lu.execute(&Command {
            cdb: &cdb,
            data_out: &[],
            expected_in_len: 64,
            nexus: n,
        }) {
            Step::Done(Reply {
                data: ReplyData::Bytes(d),
                ..
            }) => d,
            other => panic!("READ KEYS: {other:?}"),
        }
    }

    /// The reactor's side: submit the commit, wait for its completion, resume the LU.
    fn commit_through_persister(lu: &LogicalUnit, n: &Nexus, step: Step) -> Reply {
        let mut inbox = PersistInbox::new().expect("eventfd");
        commit_through(&mut inbox, lu, n, step)
    }

    fn commit_through(inbox: &mut PersistInbox, lu: &LogicalUnit, n: &Nexus, step: Step) -> Reply {
        let Step::Persist(c) = step else {
            panic!("expected a commit, got {step:?}")
        };
        let (store, blob, signal, cont) = (c.store, c.blob, c.signal, c.cont);
        assert!(inbox.submit(7, store, blob, signal));
        let done = wait_for(inbox);
        assert_eq!(done.tag, 7);
        let outcome = match done.result {
            Ok(()) => IoOutcome::Ok { read_data: None },
            Err(_) => IoOutcome::MediumError,
        };
        match lu.resume(n, cont, outcome, &[]) {
            Step::Done(r) => r,
            other => panic!("resume: {other:?}"),
        }
    }

    #[test]
    fn commit_is_saved_off_thread_then_applied() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("lu.pr");
        let store: Arc<dyn PrStore> = Arc::new(FilePrStore::new(path.clone()));
        let unit = lu(Arc::clone(&store));
        let n = nexus();
        let step = register_aptpl(&unit, &n);
        // Not applied before it is durable.
        assert_eq!(&read_keys(&unit, &n)[4..8], &[0, 0, 0, 0]);
        let reply = commit_through_persister(&unit, &n, step);
        assert_eq!(reply.status, ScsiStatus::Good);
        assert_eq!(&read_keys(&unit, &n)[4..8], &[0, 0, 0, 8]);
        // Its notification is consumed too: an idle reactor is not woken again.
        let mut inbox = PersistInbox::new().expect("eventfd");
        let c = register_aptpl(&unit, &nexus());
        commit_through(&mut inbox, &unit, &n, c);
        let ws = tandem_ffi::WakeSet::new().expect("epoll");
        ws.add(inbox.wake_fd()).expect("watch");
        inbox.poll(&mut Vec::new());
        assert!(!ws.wait(0).expect("wait"), "eventfd left readable");
        assert!(!path.with_extension("tmp").exists());
        // What a restart loads is what the initiator was told.
        let again = lu(store);
        assert_eq!(&read_keys(&again, &n)[8..16], &0x55u64.to_be_bytes());
    }

    #[test]
    fn failed_save_leaves_the_state_and_fails_the_command() {
        let lu = lu(Arc::new(FailingStore));
        let n = nexus();
        let step = register_aptpl(&lu, &n);
        let reply = commit_through_persister(&lu, &n, step);
        assert_eq!(reply.status, ScsiStatus::CheckCondition);
        assert_eq!(
            reply.sense,
            Some(tandem_scsi::Sense::internal_target_failure())
        );
        assert_eq!(&read_keys(&lu, &n)[4..8], &[0, 0, 0, 0]);
    }
}
