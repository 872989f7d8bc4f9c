//! The file-share witness as pure decisions (no I/O, no clock of its own): node majority
//! with two data nodes whose third vote is a lock file on a share both mount (NFS, SMB).
//! `docs/ha.md` ("Node majority with a file-share witness") gives the argument; in short:
//!
//! - The file holds one [`LockRecord`]: the holder node, the device, the authority's newest
//!   configuration (and so its epoch), a counter that grows with every write, a random
//!   nonce per write, and a wall-clock expiry that is for people only (no decision reads it).
//! - Every write is a **claim** ([`ClaimAttempt`]): write the new record to a temp file and
//!   fsync it; read the file and check it is what the claimer expects; rename the temp file
//!   over it (the read and the rename must finish within `write_bound`); fsync the
//!   directory; wait `confirm_delay` (> `write_bound`) and read again: only if the file still
//!   holds exactly this record did the claim succeed. The claim then holds until its
//!   **start** (just before the first read) plus `file_lease`, on the claimer's monotonic
//!   clock.
//! - The holder renews (a claim that expects its own last record) every `file_lease / 3`.
//!   Another node claims only after it saw the same record (same counter and nonce)
//!   unchanged for longer than `file_lease + margin` on **its own** monotonic clock
//!   ([`Watch`]); wall clocks and their skew between nodes never enter a decision.
//! - Two successful claims never overlap: the later one's first read comes after the
//!   earlier one's write (the confirmation read proves nothing landed in between, and a
//!   write lands at most `write_bound` after its claim's first read). So a taker saw the
//!   earlier record and waited out its whole validity, and a renewing holder that finds
//!   another node's record gives up.
//! - The authority hosted by the holder grants leases that end no later than its claim
//!   ([`Hold::limit_lease`]), and a configuration leaves the process only once a claim
//!   that recorded it succeeded ([`Hold::may_deliver`]); a taker builds on the recorded
//!   configuration, so it never misses an epoch that was delivered.
//!
//! Locks of the file system (flock, fcntl) are not used: on NFS they depend on the lock
//! manager and its grace periods, on SMB on oplocks and the client's cache, and a lock held
//! by a node that is cut off is either kept forever or broken without the holder noticing.
//! Plain reads and renames behave the same everywhere.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tandem_ha::{EpochConfig, MemberState, NodeId};

use super::HaSettings;

pub const RECORD_VERSION: u32 = 1;
/// Largest lock file read (a record is well under 2 KiB).
pub const RECORD_BYTES_MAX: u64 = 64 << 10;

/// What the lock file holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockRecord {
    pub version: u32,
    pub device: String,
    /// The node that holds the witness's vote (and hosts the device's authority).
    pub holder: u8,
    /// Grows with every write, whoever writes.
    pub counter: u64,
    /// Random per write: two writes with the same counter are still told apart.
    pub nonce: u64,
    /// The newest configuration of the holder's authority (None: none yet, cold).
    pub config: Option<EpochConfig>,
    /// For people reading the file: when it was written and until when the holder
    /// counts on it, by the holder's wall clock. Never used in a decision.
    pub written_unix_ms: u64,
    pub expires_unix_ms: u64,
}

impl LockRecord {
    pub fn epoch(&self) -> u64 {
        self.config.as_ref().map_or(0, |c| c.epoch.0)
    }

    /// Same write (counter and nonce), whatever else.
    pub fn same_write(&self, other: &LockRecord) -> bool {
        self.counter == other.counter && self.nonce == other.nonce && self.holder == other.holder
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    record: LockRecord,
    /// SHA-256 of the record's JSON: a torn or edited file is refused, not half-read.
    sha256: String,
}

fn digest(record: &LockRecord) -> String {
    let body = serde_json::to_vec(record).unwrap_or_default();
    hex::encode(Sha256::digest(&body))
}

/// The file's bytes for `record`.
pub fn encode(record: &LockRecord) -> Vec<u8> {
    let env = Envelope {
        sha256: digest(record),
        record: record.clone(),
    };
    let mut v = serde_json::to_vec_pretty(&env).unwrap_or_default();
    v.push(b'\n');
    v
}

/// Parses the file's bytes: the record, checked (checksum, version, device).
pub fn decode(bytes: &[u8], device: &str) -> Result<LockRecord, String> {
    if bytes.len() as u64 > RECORD_BYTES_MAX {
        return Err(format!("{} bytes, at most {RECORD_BYTES_MAX}", bytes.len()));
    }
    let env: Envelope =
        serde_json::from_slice(bytes).map_err(|e| format!("not a lock record: {e}"))?;
    if digest(&env.record) != env.sha256 {
        return Err("checksum mismatch (torn or edited file)".into());
    }
    let r = env.record;
    if r.version != RECORD_VERSION {
        return Err(format!("version {} is not {RECORD_VERSION}", r.version));
    }
    if r.device != device {
        return Err(format!(
            "the lock file belongs to device `{}`, not `{device}` (one lock file per device)",
            r.device
        ));
    }
    Ok(r)
}

/// One read of the lock file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    /// No file yet (first start).
    Absent,
    Record(LockRecord),
    /// I/O error, corrupt, or another device's file: nothing is decided from it.
    Unreadable(String),
}

impl Observed {
    fn same(&self, other: &Observed) -> bool {
        match (self, other) {
            (Observed::Absent, Observed::Absent) => true,
            (Observed::Record(a), Observed::Record(b)) => a.same_write(b),
            _ => false,
        }
    }
}

/// Timings of the witness file, derived from the authority's lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long a successful claim holds, from its start, on the claimer's clock.
    pub file_lease: Duration,
    /// Clock-rate drift over a file lease, plus scheduling slack.
    pub margin: Duration,
    /// The holder renews this often (file_lease / 3).
    pub renew_every: Duration,
    /// A claim's first read plus its rename must finish within this, else it failed.
    pub write_bound: Duration,
    /// Wait between a claim's write and its confirmation read; more than `write_bound`.
    pub confirm_delay: Duration,
    /// How often a node that does not hold the file reads it.
    pub poll: Duration,
}

impl Timing {
    /// file lease = 2 x the authority's lease (3 s by default): a renewal must be confirmed
    /// (write + confirm delay) well within it, and leases granted from it stay useful.
    pub fn from_settings(s: &HaSettings) -> Timing {
        let file_lease = 2 * s.lease;
        Timing {
            file_lease,
            margin: s.margin,
            renew_every: file_lease / 3,
            write_bound: file_lease / 6,
            confirm_delay: file_lease / 6 + file_lease / 12,
            poll: (file_lease / 12).max(Duration::from_millis(50)),
        }
    }

    /// The rules the argument needs.
    pub fn check(&self) -> Result<(), String> {
        if self.confirm_delay <= self.write_bound {
            return Err("the confirm delay must exceed the write bound".into());
        }
        if self.renew_every + self.write_bound + self.confirm_delay >= self.file_lease {
            return Err("a renewal must be confirmed before the previous claim ends".into());
        }
        Ok(())
    }

    /// How long a record must stay unchanged before another node may claim.
    pub fn takeover_after(&self) -> Duration {
        self.file_lease + self.margin
    }
}

/// What a node that does not hold the file has seen: the current content and since when
/// (its monotonic clock) it is unchanged.
#[derive(Clone, Debug, Default)]
pub struct Watch {
    seen: Option<(Observed, Instant)>,
}

impl Watch {
    /// Records one read. An unreadable file forgets everything: the wait starts again.
    pub fn observe(&mut self, now: Instant, o: Observed) {
        if let Observed::Unreadable(_) = o {
            self.seen = None;
            return;
        }
        match &self.seen {
            Some((prev, _)) if prev.same(&o) => {}
            _ => self.seen = Some((o, now)),
        }
    }

    /// The current content, if readable.
    pub fn current(&self) -> Option<&Observed> {
        self.seen.as_ref().map(|(o, _)| o)
    }

    /// The content has not changed for longer than a file lease plus margin.
    pub fn stale(&self, now: Instant, t: &Timing) -> Option<&Observed> {
        let (o, since) = self.seen.as_ref()?;
        (now.saturating_duration_since(*since) > t.takeover_after()).then_some(o)
    }

    pub fn forget(&mut self) {
        self.seen = None;
    }
}

/// What a node that does not hold the file does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TakerDecision {
    Wait(&'static str),
    Claim(Box<ClaimPlan>),
}

/// Claim the file, expecting `expect` (the stale content), writing `config`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimPlan {
    pub expect: Observed,
    pub config: Option<EpochConfig>,
}

/// Whether this node (`me`, partner `partner`) claims the file, from what it watched and
/// the configurations it knows. `local_epoch`: the newest epoch this node's own authority
/// state ever issued (it may have issued one that was never recorded); the new
/// configuration goes above it and the recorded one. `has_local_state`: this node hosted the
/// device's authority before, or read a record from this lock file before; a missing file is
/// then not a first start.
pub fn decide_claim(
    watch: &Watch,
    now: Instant,
    t: &Timing,
    me: NodeId,
    has_local_state: bool,
    local_epoch: u64,
) -> TakerDecision {
    let Some(stale) = watch.stale(now, t) else {
        return TakerDecision::Wait("the lock file changed within a file lease plus margin");
    };
    match stale {
        Observed::Unreadable(_) => TakerDecision::Wait("the lock file is unreadable"),
        // First start: nobody ever wrote the file. A node that hosted this device's authority
        // before, or that read a record from the file before, must not start over from
        // nothing: the file was lost or replaced, or the share is not mounted (its bare mount
        // point is an empty local directory, where a claim would be seen by nobody else).
        Observed::Absent if has_local_state => TakerDecision::Wait(
            "the lock file is missing but this node hosted the authority or read the file before (share not mounted? file lost?): restore the file",
        ),
        Observed::Absent => TakerDecision::Claim(Box::new(ClaimPlan {
            expect: Observed::Absent,
            config: None,
        })),
        Observed::Record(r) => match takeover_config(r, me, local_epoch) {
            Ok(config) => TakerDecision::Claim(Box::new(ClaimPlan {
                expect: stale.clone(),
                config,
            })),
            Err(why) => TakerDecision::Wait(why),
        },
    }
}

/// The configuration a node that wins the file issues: the recorded one with the old
/// holder out (as the heartbeat takeover does), at an epoch above every one recorded or
/// issued here. Only a node synchronized in the recorded configuration may take over: it
/// holds every acknowledged write.
pub fn takeover_config(
    r: &LockRecord,
    me: NodeId,
    local_epoch: u64,
) -> Result<Option<EpochConfig>, &'static str> {
    let Some(recorded) = &r.config else {
        // Claimed before, but no configuration yet (a cold authority): start cold again.
        return Ok(None);
    };
    if recorded.state_of(me) != MemberState::Synchronized {
        return Err("this replica is not synchronized in the recorded configuration");
    }
    let mut base = recorded.clone();
    base.epoch.0 = base.epoch.0.max(local_epoch);
    let old = NodeId(r.holder);
    let next = if old == me || base.state_of(old) == MemberState::Out {
        base.next(&[])
    } else {
        base.next(&[(old, MemberState::Out)])
    };
    next.map(Some).ok_or("no synchronized member would remain")
}

/// One claim in progress: what it expects to read first and what it writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimAttempt {
    pub expect: Observed,
    pub record: LockRecord,
    pub started: Instant,
}

/// Why a claim failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimError {
    /// The first read was not what the claimer expected (someone wrote meanwhile).
    Changed,
    Unreadable(String),
    /// The first read plus the rename took longer than the bound.
    TooSlow(Duration),
    /// The confirmation read shows another write.
    Lost,
}

impl std::fmt::Display for ClaimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClaimError::Changed => write!(f, "the lock file changed before the write"),
            ClaimError::Unreadable(e) => write!(f, "{e}"),
            ClaimError::TooSlow(d) => write!(f, "the read and rename took {d:?}, too long"),
            ClaimError::Lost => write!(f, "the confirmation read did not find this record"),
        }
    }
}

impl ClaimAttempt {
    /// Builds the record of a claim by `me` after `previous` (the counter goes above it).
    pub fn new(
        started: Instant,
        device: &str,
        me: NodeId,
        expect: Observed,
        config: Option<EpochConfig>,
        nonce: u64,
    ) -> ClaimAttempt {
        let counter = match &expect {
            Observed::Record(r) => r.counter.saturating_add(1),
            _ => 1,
        };
        ClaimAttempt {
            record: LockRecord {
                version: RECORD_VERSION,
                device: device.to_string(),
                holder: me.0,
                counter,
                nonce,
                config,
                written_unix_ms: 0,
                expires_unix_ms: 0,
            },
            expect,
            started,
        }
    }

    /// Sets the wall-clock fields (for people reading the file; no decision uses them).
    pub fn stamp(mut self, now_unix_ms: u64, t: &Timing) -> ClaimAttempt {
        self.record.written_unix_ms = now_unix_ms;
        self.record.expires_unix_ms =
            now_unix_ms.saturating_add(u64::try_from(t.file_lease.as_millis()).unwrap_or(0));
        self
    }

    /// Checks the first read; Ok: go on and write.
    pub fn check_first_read(&self, o: &Observed) -> Result<(), ClaimError> {
        match o {
            Observed::Unreadable(e) => Err(ClaimError::Unreadable(e.clone())),
            o if o.same(&self.expect) => Ok(()),
            _ => Err(ClaimError::Changed),
        }
    }

    /// Checks that the write finished (at `written`) within the bound.
    pub fn check_written(&self, written: Instant, t: &Timing) -> Result<(), ClaimError> {
        let took = written.saturating_duration_since(self.started);
        if took > t.write_bound {
            return Err(ClaimError::TooSlow(took));
        }
        Ok(())
    }

    /// The confirmation read (made at least `confirm_delay` after the write): Ok is a hold
    /// until the claim's start plus the file lease.
    pub fn confirm(&self, o: &Observed, t: &Timing) -> Result<Hold, ClaimError> {
        match o {
            Observed::Record(r) if r == &self.record => Ok(Hold {
                until: self.started + t.file_lease,
                record: self.record.clone(),
            }),
            Observed::Unreadable(e) => Err(ClaimError::Unreadable(e.clone())),
            _ => Err(ClaimError::Lost),
        }
    }
}

/// A confirmed claim: this node holds the witness's vote until `until` (its monotonic
/// clock), with `record` in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    pub until: Instant,
    pub record: LockRecord,
}

impl Hold {
    pub fn valid(&self, now: Instant) -> bool {
        now < self.until
    }

    /// The lease the authority may grant at `now`: at most what is left of the hold (a
    /// lease counts from the node's request, which came before `now`). None when too
    /// little is left to be worth granting.
    pub fn limit_lease(&self, now: Instant, granted_ns: u64) -> Option<u64> {
        let left = self.until.checked_duration_since(now)?;
        let left_ns = u64::try_from(left.as_nanos()).unwrap_or(u64::MAX);
        let ns = granted_ns.min(left_ns);
        (ns >= 50_000_000).then_some(ns)
    }

    /// A configuration may leave the process only once a confirmed claim recorded it (or a
    /// newer one): a node that takes the file over builds on the recorded configuration.
    pub fn may_deliver(&self, config: &EpochConfig) -> bool {
        config.epoch.0 <= self.record.epoch()
    }

    /// Time to renew: a third of the file lease after the last claim started, or at once
    /// when the authority has a configuration not recorded yet.
    pub fn renew_due(&self, now: Instant, t: &Timing, authority_epoch: u64) -> bool {
        let started = self.until.checked_sub(t.file_lease).unwrap_or(self.until);
        now >= started + t.renew_every || authority_epoch > self.record.epoch()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV: &str = "vol";

    fn t() -> Timing {
        Timing::from_settings(&HaSettings::default())
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn cfg() -> EpochConfig {
        EpochConfig::initial(&[NodeId(1), NodeId(2)])
    }

    fn record(holder: u8, counter: u64, config: Option<EpochConfig>) -> LockRecord {
        LockRecord {
            version: RECORD_VERSION,
            device: DEV.into(),
            holder,
            counter,
            nonce: counter * 7 + u64::from(holder),
            config,
            written_unix_ms: 0,
            expires_unix_ms: 0,
        }
    }

    #[test]
    fn default_timing_keeps_its_rules() {
        let t = t();
        assert_eq!(t.check(), Ok(()));
        assert_eq!(t.file_lease, ms(3000));
        assert_eq!(t.takeover_after(), ms(3500));
    }

    #[test]
    fn encode_decode_and_refuse_corrupt_or_foreign() {
        let r = record(1, 5, Some(cfg()));
        let bytes = encode(&r);
        assert_eq!(decode(&bytes, DEV), Ok(r.clone()));
        assert!(decode(&bytes, "other")
            .unwrap_err()
            .contains("belongs to device"));
        // One digit changed: valid JSON, wrong checksum.
        let text = String::from_utf8(bytes.clone()).unwrap();
        let edited = text.replacen("\"counter\": 5", "\"counter\": 6", 1);
        assert_ne!(edited, text);
        assert!(decode(edited.as_bytes(), DEV)
            .unwrap_err()
            .contains("checksum"));
        // Torn write, garbage, empty, oversize.
        assert!(decode(&bytes[..bytes.len() / 2], DEV).is_err());
        assert!(decode(b"\x00\xff garbage", DEV).is_err());
        assert!(decode(b"", DEV).is_err());
        assert!(decode(&vec![b' '; 70_000], DEV).is_err());
    }

    #[test]
    fn takeover_only_after_lease_plus_margin_of_an_unchanged_record() {
        let t = t();
        let t0 = Instant::now();
        let mut w = Watch::default();
        let held = Observed::Record(record(1, 9, Some(cfg())));
        w.observe(t0, held.clone());
        for at in [0, 1000, 3000, 3500] {
            w.observe(t0 + ms(at), held.clone());
            assert!(
                matches!(
                    decide_claim(&w, t0 + ms(at), &t, NodeId(2), false, 0),
                    TakerDecision::Wait(_)
                ),
                "{at} ms"
            );
        }
        match decide_claim(&w, t0 + ms(3501), &t, NodeId(2), false, 0) {
            TakerDecision::Claim(p) => {
                assert_eq!(p.expect, held);
                let c = p.config.unwrap();
                assert_eq!(c.state_of(NodeId(1)), MemberState::Out);
                assert_eq!(c.sequencer, NodeId(2));
                assert!(c.epoch > cfg().epoch);
            }
            other => panic!("{other:?}"),
        }
        // A changed counter starts the wait again.
        w.observe(t0 + ms(3600), Observed::Record(record(1, 10, Some(cfg()))));
        assert!(matches!(
            decide_claim(&w, t0 + ms(7000), &t, NodeId(2), false, 0),
            TakerDecision::Wait(_)
        ));
        // An unreadable read starts it again too.
        w.observe(t0 + ms(7200), Observed::Unreadable("EIO".into()));
        w.observe(t0 + ms(7300), Observed::Record(record(1, 10, Some(cfg()))));
        assert!(matches!(
            decide_claim(&w, t0 + ms(10_000), &t, NodeId(2), false, 0),
            TakerDecision::Wait(_)
        ));
        assert!(matches!(
            decide_claim(&w, t0 + ms(10_801), &t, NodeId(2), false, 0),
            TakerDecision::Claim(_)
        ));
    }

    #[test]
    fn a_stale_replica_or_a_lost_file_never_takes_over() {
        let t = t();
        let t0 = Instant::now();
        let removed_me = cfg().next(&[(NodeId(2), MemberState::Out)]).unwrap();
        let mut w = Watch::default();
        w.observe(t0, Observed::Record(record(1, 3, Some(removed_me))));
        assert!(matches!(
            decide_claim(&w, t0 + ms(5000), &t, NodeId(2), false, 0),
            TakerDecision::Wait(_)
        ));
        let mut w = Watch::default();
        w.observe(t0, Observed::Absent);
        assert!(matches!(
            decide_claim(&w, t0 + ms(5000), &t, NodeId(2), true, 4),
            TakerDecision::Wait(_)
        ));
        assert!(matches!(
            decide_claim(&w, t0 + ms(5000), &t, NodeId(2), false, 0),
            TakerDecision::Claim(p) if p.config.is_none()
        ));
        let mut w = Watch::default();
        w.observe(t0, Observed::Unreadable("corrupt".into()));
        assert!(matches!(
            decide_claim(&w, t0 + ms(50_000), &t, NodeId(2), false, 0),
            TakerDecision::Wait(_)
        ));
    }

    #[test]
    fn the_new_epoch_is_above_what_this_node_issued() {
        let r = record(1, 3, Some(cfg()));
        let c = takeover_config(&r, NodeId(2), 7).unwrap().unwrap();
        assert_eq!(c.epoch.0, 8);
        let c = takeover_config(&r, NodeId(2), 0).unwrap().unwrap();
        assert_eq!(c.epoch.0, cfg().epoch.0 + 1);
        // Re-taking its own record (a restarted holder): nobody is removed.
        let c = takeover_config(&r, NodeId(1), 0).unwrap().unwrap();
        assert_eq!(c.state_of(NodeId(2)), MemberState::Synchronized);
    }

    #[test]
    fn clock_skew_is_irrelevant() {
        // The wall-clock fields may say anything (a node's clock hours off): the decision
        // is the same, because only the reader's monotonic clock counts.
        let t = t();
        let t0 = Instant::now();
        for (written, expires) in [(0, 0), (u64::MAX - 5, u64::MAX), (1, 2), (10_000_000, 1)] {
            let mut r = record(1, 4, Some(cfg()));
            r.written_unix_ms = written;
            r.expires_unix_ms = expires;
            let mut w = Watch::default();
            w.observe(t0, Observed::Record(r.clone()));
            w.observe(t0 + ms(2000), Observed::Record(r.clone()));
            assert!(matches!(
                decide_claim(&w, t0 + ms(3400), &t, NodeId(2), false, 0),
                TakerDecision::Wait(_)
            ));
            assert!(matches!(
                decide_claim(&w, t0 + ms(3600), &t, NodeId(2), false, 0),
                TakerDecision::Claim(_)
            ));
        }
    }

    #[test]
    fn leases_end_with_the_hold_and_only_recorded_configurations_leave() {
        let t = t();
        let t0 = Instant::now();
        let a = ClaimAttempt::new(t0, DEV, NodeId(1), Observed::Absent, Some(cfg()), 1);
        let hold = a.confirm(&Observed::Record(a.record.clone()), &t).unwrap();
        assert_eq!(hold.until, t0 + t.file_lease);
        assert_eq!(
            hold.limit_lease(t0 + ms(100), 1_500_000_000),
            Some(1_500_000_000)
        );
        assert_eq!(
            hold.limit_lease(t0 + ms(2000), 1_500_000_000),
            Some(1_000_000_000)
        );
        assert_eq!(hold.limit_lease(t0 + ms(2990), 1_500_000_000), None);
        assert_eq!(hold.limit_lease(t0 + ms(3000), 1_500_000_000), None);
        assert!(hold.may_deliver(&cfg()));
        let newer = cfg().next(&[(NodeId(2), MemberState::Out)]).unwrap();
        assert!(!hold.may_deliver(&newer));
        assert!(hold.renew_due(t0 + ms(10), &t, newer.epoch.0));
        assert!(!hold.renew_due(t0 + ms(10), &t, cfg().epoch.0));
        assert!(hold.renew_due(t0 + t.renew_every, &t, cfg().epoch.0));
    }

    #[test]
    fn a_claim_fails_on_a_changed_file_a_slow_write_or_a_lost_confirmation() {
        let t = t();
        let t0 = Instant::now();
        let mine = record(1, 3, Some(cfg()));
        let a = ClaimAttempt::new(
            t0,
            DEV,
            NodeId(1),
            Observed::Record(mine.clone()),
            Some(cfg()),
            99,
        );
        assert_eq!(a.record.counter, 4);
        assert_eq!(a.check_first_read(&Observed::Record(mine.clone())), Ok(()));
        // The holder finds another node's record: it gives up at once.
        assert_eq!(
            a.check_first_read(&Observed::Record(record(2, 4, Some(cfg())))),
            Err(ClaimError::Changed)
        );
        assert_eq!(
            a.check_first_read(&Observed::Absent),
            Err(ClaimError::Changed)
        );
        assert!(matches!(
            a.check_first_read(&Observed::Unreadable("EIO".into())),
            Err(ClaimError::Unreadable(_))
        ));
        assert_eq!(a.check_written(t0 + t.write_bound, &t), Ok(()));
        assert!(matches!(
            a.check_written(t0 + t.write_bound + ms(1), &t),
            Err(ClaimError::TooSlow(_))
        ));
        // Same counter, another nonce or holder: lost.
        let mut other = a.record.clone();
        other.nonce += 1;
        assert_eq!(
            a.confirm(&Observed::Record(other), &t),
            Err(ClaimError::Lost)
        );
        let mut other = a.record.clone();
        other.holder = 2;
        assert_eq!(
            a.confirm(&Observed::Record(other), &t),
            Err(ClaimError::Lost)
        );
    }

    /// A model of the shared file with writes landing at chosen instants, and two nodes
    /// running the claim protocol with random delays: successful claims never overlap,
    /// and a live holder that renews on time is never displaced.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    #[derive(Clone)]
    struct Write {
        at: Instant,
        record: LockRecord,
    }

    fn file_at(writes: &[Write], at: Instant) -> Observed {
        writes
            .iter()
            .filter(|w| w.at <= at)
            .max_by_key(|w| w.at)
            .map_or(Observed::Absent, |w| Observed::Record(w.record.clone()))
    }

    /// Runs node `me`'s claim that starts at `start`, with a first read after `r` ms and a
    /// write landing after `w` more ms (the caller knows the other node's writes up to
    /// then). Returns the hold if confirmed.
    fn run_claim(
        writes: &mut Vec<Write>,
        start: Instant,
        me: u8,
        expect: Observed,
        nonce: u64,
        (r, w): (u64, u64),
        t: &Timing,
    ) -> (Option<Hold>, Instant) {
        let a = ClaimAttempt::new(start, DEV, NodeId(me), expect, Some(cfg()), nonce);
        let first = file_at(writes, start + ms(r));
        if a.check_first_read(&first).is_err() {
            return (None, start + ms(r));
        }
        let landed = start + ms(r + w);
        writes.push(Write {
            at: landed,
            record: a.record.clone(),
        });
        if a.check_written(landed, t).is_err() {
            return (None, landed);
        }
        let confirm_at = landed + t.confirm_delay;
        (a.confirm(&file_at(writes, confirm_at), t).ok(), confirm_at)
    }

    #[test]
    fn two_takers_racing_end_with_one_holder() {
        let t = t();
        let mut one_holder = 0;
        for seed in 0..5000u64 {
            let mut rng = Lcg(seed);
            let t0 = Instant::now();
            // Both saw the file absent long enough and claim at nearly the same time: the
            // first read after `r` ms, the write lands `w` ms later (some too slow).
            let claims: Vec<(ClaimAttempt, Instant, Instant)> = (1..=2u8)
                .map(|me| {
                    let start = t0 + ms(rng.next(300));
                    let read = start + ms(rng.next(200));
                    let landed = read + ms(1 + rng.next(400));
                    let a = ClaimAttempt::new(
                        start,
                        DEV,
                        NodeId(me),
                        Observed::Absent,
                        None,
                        u64::from(me),
                    );
                    (a, read, landed)
                })
                .collect();
            // A node writes only if its first read found the file absent, i.e. the other's
            // write had not landed yet (both cannot have landed before the other's read).
            let wrote: Vec<bool> = (0..2)
                .map(|i| {
                    let (_, read, _) = &claims[i];
                    let (_, _, other_landed) = &claims[1 - i];
                    other_landed > read
                })
                .collect();
            let writes: Vec<Write> = (0..2)
                .filter(|&i| wrote[i])
                .map(|i| Write {
                    at: claims[i].2,
                    record: claims[i].0.record.clone(),
                })
                .collect();
            let mut holds = 0;
            for i in 0..2 {
                let (a, _, landed) = &claims[i];
                if !wrote[i] || a.check_written(*landed, &t).is_err() {
                    continue;
                }
                if a.confirm(&file_at(&writes, *landed + t.confirm_delay), &t)
                    .is_ok()
                {
                    holds += 1;
                }
            }
            assert!(holds <= 1, "seed {seed}: two holders");
            let in_time = (0..2)
                .filter(|&i| wrote[i] && claims[i].0.check_written(claims[i].2, &t).is_ok())
                .count();
            if in_time == 2 || (in_time == 1 && wrote.iter().filter(|w| **w).count() == 1) {
                assert_eq!(holds, 1, "seed {seed}: claims in time end with one holder");
            }
            one_holder += holds;
        }
        assert!(one_holder > 1000, "the model exercised successful claims");
    }

    #[test]
    fn a_live_holder_is_never_displaced_and_a_late_taker_finds_it() {
        let t = t();
        for seed in 0..500u64 {
            let mut rng = Lcg(seed);
            let t0 = Instant::now();
            let mut writes: Vec<Write> = Vec::new();
            // Node 1 claims the absent file, then renews every renew_every, each read and
            // write taking up to 250 ms. Node 2 reads every poll and claims when stale.
            let (h, _) = run_claim(&mut writes, t0, 1, Observed::Absent, 1, (5, 5), &t);
            let mut hold = h.expect("an uncontested claim succeeds");
            let mut watch = Watch::default();
            let mut now = t0;
            let end = t0 + ms(20_000);
            let mut next_renew = t0 + t.renew_every;
            let mut nonce = 10;
            while now < end {
                now += t.poll;
                if now >= next_renew {
                    nonce += 1;
                    let expect = Observed::Record(hold.record.clone());
                    let (h, _) = run_claim(
                        &mut writes,
                        now,
                        1,
                        expect,
                        nonce,
                        (rng.next(120), rng.next(120)),
                        &t,
                    );
                    hold = h.expect("a renewal in time succeeds");
                    next_renew = now + t.renew_every;
                }
                watch.observe(now, file_at(&writes, now));
                assert!(
                    matches!(
                        decide_claim(&watch, now, &t, NodeId(2), false, 0),
                        TakerDecision::Wait(_)
                    ),
                    "seed {seed}: a live holder must never look stale"
                );
            }
            // Node 1 dies now. Node 2 takes over only after its hold ended.
            let died_hold_until = hold.until;
            loop {
                now += t.poll;
                watch.observe(now, file_at(&writes, now));
                if let TakerDecision::Claim(p) = decide_claim(&watch, now, &t, NodeId(2), false, 0)
                {
                    let expect = p.expect;
                    assert!(now > died_hold_until + t.margin, "seed {seed}");
                    let (h, at) = run_claim(&mut writes, now, 2, expect, 999, (3, 3), &t);
                    assert!(h.is_some(), "seed {seed}");
                    assert!(at > died_hold_until);
                    break;
                }
                assert!(now < end + ms(10_000), "seed {seed}: never took over");
            }
        }
    }
}
