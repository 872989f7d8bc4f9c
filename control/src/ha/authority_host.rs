//! Hosts the failover authority (`tandem_ha::authority::Authority`, the code the simulator
//! proves) for one replicated device, on the node that is its authority.
//!
//! - Time: the process's monotonic clock, as nanoseconds since the host was built.
//! - Durability: the state (newest epoch, configuration) is written to
//!   `DATA_DIR/ha/<device>.authority.json` (temp file, fsync, rename, fsync dir) before any
//!   update built from it leaves the process; a save that fails stops the host (every later
//!   request is refused), so a restarted authority never issues an epoch twice.
//! - Restart or pause: the leases granted before are not on disk, so for one lease plus
//!   margin after a restart the host passes no request to the authority: it grants no lease
//!   and changes no membership, and answers with the configuration only (the engine repeats
//!   its requests); a member that held a lease from the previous incarnation is never
//!   removed before that lease ended. A pause is a gap of more than half a lease between two
//!   calls (SIGSTOP, a starved process) and is treated the same way: while it was stopped,
//!   the partner may have taken the authority over (heartbeat strategy), and the quiet period
//!   leaves time to hear that before granting anything (see `supersede`). With two nodes
//!   under the heartbeat strategy it also waits for the partner's heartbeat echoing one
//!   this process sent after the restart or pause (`QuietPeriod::partner_heard`, `echo`).
//! - Superseded: a partner announces (authenticated heartbeats) that it hosts the same
//!   device's authority at a higher epoch, or at the same epoch while this node has priority
//!   second. This host then stops for good (persisted): it answers nothing, so the leases it
//!   granted lapse and its node serves nothing. Two authorities mean a split brain; an
//!   administrator resolves it (issue 11, item 4).
//! - No state yet: an initial configuration is issued only if
//!   `DATA_DIR/ha/<device>.fresh` says how the first configuration is made (`InitialSync`:
//!   created zeroed on every node, or synced from the node that holds the data);
//!   otherwise the authority starts cold (`lose_state`) and waits for every node's `Join`
//!   metadata, then picks the newest copy as the source.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tandem_ha::authority::{Authority, ToAuthority};
use tandem_ha::{Epoch, EpochConfig, GenerationId, NodeId, Time};

use super::echo::{echoes_after, HeartbeatId, HeartbeatSeq};
use super::{ha_dir, HaSettings, InitialSync};
use crate::service::Node;
use tandem_config::FailoverStrategy;

const STATE_VERSION: u32 = 1;
/// Largest epoch accepted from a node (the authority computes `epoch + 1`).
pub const EPOCH_MAX: u64 = u64::MAX >> 8;
/// Most requests handled in one call.
pub const REQUESTS_MAX: usize = 64;

/// What is on disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Persisted {
    pub version: u32,
    pub device: String,
    /// The device's data nodes.
    pub nodes: Vec<NodeId>,
    /// The newest epoch ever issued (also while cold).
    pub last_epoch: Epoch,
    /// The configuration in force (None: cold, waiting for every node's metadata).
    pub config: Option<EpochConfig>,
    /// Set when this node took the authority over from that node (heartbeat strategy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub took_over_from: Option<NodeId>,
    /// Set when another node's authority for this device superseded this one: (node, its
    /// epoch). A superseded authority answers nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<(NodeId, Epoch)>,
    /// Nodes refused a join because their copy went on alone (split brain), with the
    /// generation they hold. Their copies are never merged: an administrator decides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub split_brain: Vec<(NodeId, GenerationId)>,
    /// The last split brain an administrator resolved here (`tandem device resolve`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved: Option<Resolution>,
}

/// How a split brain was resolved: `kept`'s copy stays, `discarded`'s is fully resynced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resolution {
    pub kept: NodeId,
    pub discarded: NodeId,
    /// The epoch of this authority when it was resolved.
    pub epoch: Epoch,
}

/// Why a local authority stands down (see [`AuthorityHost::supersede`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StandDown {
    /// The partner took the authority over while this one was away (dead, paused) and this
    /// one never removed it: an ordinary takeover, nothing diverged.
    AfterTakeover,
    /// This authority had removed the node that now announces its own authority: both went
    /// on alone (a total partition), a split brain.
    SplitBrain,
    /// An administrator resolving a split brain discards this node's copy.
    Resolve,
    /// It had stood down already.
    Already,
}

/// An answer for one node: the configuration in force and, for a serving member, the
/// lease it may count from its own request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub config: EpochConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_duration_ns: Option<u64>,
    /// Nodes this authority refused because their copy went on alone (split brain), so that
    /// each side can report it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub split_brain: Vec<NodeId>,
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("authority state {path}: {reason}")]
    State { path: String, reason: String },
    #[error("the authority stopped after failing to save its state: {0}")]
    Stopped(String),
    #[error("node {0} is not a member of this device")]
    NotMember(u8),
    #[error("superseded by the authority on node {0} at epoch {1}: split brain, an administrator decides")]
    Superseded(u8, u64),
    #[error("{0}")]
    NoWitnessFile(String),
    #[error("this authority serves nodes {expected:?}, the request names {got:?}")]
    Nodes { expected: Vec<u8>, got: Vec<u8> },
}

pub struct AuthorityHost {
    pub device: String,
    path: PathBuf,
    authority: Authority,
    /// Built from a state file an earlier incarnation wrote (a restart).
    restarted: bool,
    base: Instant,
    /// No leases, no removals while quiet (restart, pause); on `time(now)`.
    quiet: QuietPeriod,
    /// This process's heartbeats (`HaState::heartbeat_seq`, given by
    /// [`AuthorityHost::require_partner`]): a wait for the partner that begins on a pause
    /// needs an echo of a heartbeat sent after the last one sent by then.
    heartbeats_sent: Arc<HeartbeatSeq>,
    /// For an authority reinstated by `device resolve`.
    lease_ns: u64,
    margin_ns: u64,
    saved: Persisted,
    failed: Option<String>,
}

/// The quiet period of a restarted or paused authority (see the module comment), on a
/// clock of nanoseconds. Pure, so that the vote simulation (`super::vote_sim`) runs the
/// same rule as this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuietPeriod {
    /// No leases, no removals before this.
    until_ns: u64,
    /// The last call (to detect pauses).
    last_seen_ns: u64,
    /// A gap longer than this between two calls is a pause: half a lease.
    pause_limit_ns: u64,
    /// A lease plus margin: every lease granted before has ended by then.
    quiet_for_ns: u64,
    /// Heartbeat strategy, two nodes ([`QuietPeriod::require_partner`]): after a restart
    /// or a pause the partner may have taken the authority over meanwhile, and only the
    /// partner can say so. Quiet until it echoes a heartbeat this process sent after this
    /// one (the last it had sent when the wait began; `super::echo`).
    partner_mode: bool,
    partner_wait_floor: Option<HeartbeatId>,
}

impl QuietPeriod {
    /// `restarted`: leases of an earlier incarnation may be out there, so the host starts
    /// quiet.
    pub fn new(settings: &HaSettings, now_ns: u64, restarted: bool) -> QuietPeriod {
        let quiet_for_ns = ns(settings.lease + settings.margin);
        QuietPeriod {
            until_ns: if restarted {
                now_ns.saturating_add(quiet_for_ns)
            } else {
                now_ns
            },
            last_seen_ns: now_ns,
            pause_limit_ns: ns(settings.lease / 2),
            quiet_for_ns,
            partner_mode: false,
            partner_wait_floor: None,
        }
    }

    /// Heartbeat strategy with two nodes: a host that restarted (`restarted`), or that is
    /// paused later, stays quiet until the partner has heard it again
    /// ([`QuietPeriod::partner_heard`]) as well as for a lease plus margin. A lease plus
    /// margin is not enough on its own: the partner may have taken over while this process
    /// was down, and if the partner is silent now (its control service down too) nothing
    /// here tells. Fail safe: with the partner gone for good, this authority grants nothing
    /// until it returns. `last_sent`: this process's last heartbeat so far; only an echo of
    /// a later one ends the wait.
    pub fn require_partner(&mut self, restarted: bool, last_sent: HeartbeatId) {
        self.partner_mode = true;
        if restarted {
            self.partner_wait_floor = Some(last_sent);
        }
    }

    /// The partner's newest heartbeat echoes `echo` (the newest heartbeat of this process
    /// it had heard). The wait ends if that is one sent after the wait began: the partner
    /// heard this process alive again before it sent that heartbeat, so that heartbeat
    /// announces a takeover it made (call this only after the announcement was checked for
    /// a superseding authority), or there was none, and the partner can make one only after
    /// hearing nothing from this node for a lease plus margin from then on. A heartbeat
    /// that merely arrived after the restart (sent before a takeover, or read from the
    /// socket buffer on resume) proves neither.
    pub fn partner_heard(&mut self, echo: Option<HeartbeatId>) {
        if self
            .partner_wait_floor
            .is_some_and(|floor| echoes_after(echo, floor))
        {
            self.partner_wait_floor = None;
        }
    }

    /// Waiting to hear the partner after a restart or a pause.
    pub fn awaits_partner(&self) -> bool {
        self.partner_wait_floor.is_some()
    }

    /// A call at `now_ns`, when this process's last heartbeat sent is `last_sent`. Returns
    /// the gap since the previous call if it was a pause (the host is then quiet again for
    /// a lease plus margin, and in partner mode waits for an echo of a later heartbeat).
    pub fn observe(&mut self, now_ns: u64, last_sent: HeartbeatId) -> Option<u64> {
        let gap = now_ns.saturating_sub(self.last_seen_ns);
        self.last_seen_ns = self.last_seen_ns.max(now_ns);
        if gap > self.pause_limit_ns {
            self.until_ns = self.until_ns.max(now_ns.saturating_add(self.quiet_for_ns));
            if self.partner_mode {
                self.partner_wait_floor = Some(last_sent);
            }
            return Some(gap);
        }
        None
    }

    /// Quiet until at least `until_ns` (a three-node authority without its majority).
    pub fn hold_until(&mut self, until_ns: u64) {
        self.until_ns = self.until_ns.max(until_ns);
    }

    pub fn is_quiet(&self, now_ns: u64) -> bool {
        now_ns < self.until_ns || self.partner_wait_floor.is_some()
    }
}

pub fn state_path(data_dir: &Path, device: &str) -> PathBuf {
    ha_dir(data_dir).join(format!("{device}.authority.json"))
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The first configuration of a device whose authority has no state: every replica
/// synchronized (created zeroed), or the source synchronized and every other node syncing
/// from it; None (cold start from the nodes' metadata) without a mark or with a source that
/// is not one of the nodes.
pub fn initial_config(initial: Option<InitialSync>, nodes: &[NodeId]) -> Option<EpochConfig> {
    match initial? {
        InitialSync::Zeroed => Some(EpochConfig::initial(nodes)),
        InitialSync::Source(source) => {
            if !nodes.contains(&source) {
                return None;
            }
            let mut config = EpochConfig::initial(nodes);
            config.sequencer = source;
            config.generation = tandem_ha::GenerationId::for_config(config.epoch, source);
            for m in &mut config.members {
                if m.0 != source {
                    m.1 = tandem_ha::MemberState::Syncing;
                }
            }
            Some(config)
        }
    }
}

impl AuthorityHost {
    /// Loads the device's state, or creates it (the initial configuration `initial` says,
    /// else cold). `nodes` are the device's data nodes; they must match the stored ones.
    pub fn open(
        data_dir: &Path,
        device: &str,
        nodes: &[NodeId],
        initial: Option<InitialSync>,
        settings: &HaSettings,
        now: Instant,
    ) -> Result<AuthorityHost, HostError> {
        let path = state_path(data_dir, device);
        let stored = Self::read(&path)?;
        let mut sorted = nodes.to_vec();
        sorted.sort();
        sorted.dedup();
        if let Some(s) = &stored {
            if !nodes.is_empty() && s.nodes != sorted {
                return Err(HostError::Nodes {
                    expected: s.nodes.iter().map(|n| n.0).collect(),
                    got: sorted.iter().map(|n| n.0).collect(),
                });
            }
        }
        let restarted = stored.is_some();
        let saved = match stored {
            Some(s) => s,
            None => {
                if sorted.len() < 2 {
                    return Err(HostError::State {
                        path: path.display().to_string(),
                        reason: "a replicated device needs two or three nodes".into(),
                    });
                }
                let config = initial_config(initial, &sorted);
                Persisted {
                    version: STATE_VERSION,
                    device: device.to_string(),
                    nodes: sorted,
                    last_epoch: config.as_ref().map_or(Epoch(0), |c| c.epoch),
                    config,
                    took_over_from: None,
                    superseded_by: None,
                    split_brain: Vec::new(),
                    resolved: None,
                }
            }
        };
        let mut host = Self::from_persisted(path, saved, settings, now, restarted);
        if !host.path.exists() {
            host.save()?;
        }
        Ok(host)
    }

    /// Builds a host around `saved` (a restart, or a takeover). `restarted`: leases of an
    /// earlier incarnation may be out there, so verdicts wait one lease plus margin.
    fn from_persisted(
        path: PathBuf,
        saved: Persisted,
        settings: &HaSettings,
        now: Instant,
        restarted: bool,
    ) -> AuthorityHost {
        let (lease_ns, margin_ns) = (ns(settings.lease), ns(settings.margin));
        let authority = match &saved.config {
            Some(c) => Authority::new(c.clone(), lease_ns, margin_ns, None),
            None => {
                let mut init = EpochConfig::initial(&saved.nodes);
                init.epoch = saved.last_epoch;
                let mut a = Authority::new(init, lease_ns, margin_ns, None);
                a.lose_state();
                a
            }
        };
        AuthorityHost {
            device: saved.device.clone(),
            path,
            authority,
            restarted,
            base: now,
            quiet: QuietPeriod::new(settings, 0, restarted),
            heartbeats_sent: Arc::new(HeartbeatSeq::default()),
            lease_ns,
            margin_ns,
            saved,
            failed: None,
        }
    }

    /// Takes the authority over (heartbeat strategy, second node): issues `config` (an
    /// epoch above every one this node saw) and persists it first.
    pub fn take_over(
        data_dir: &Path,
        device: &str,
        nodes: &[NodeId],
        config: EpochConfig,
        from: NodeId,
        settings: &HaSettings,
        now: Instant,
    ) -> Result<AuthorityHost, HostError> {
        let path = state_path(data_dir, device);
        if let Some(old) = Self::read(&path)? {
            if old.last_epoch >= config.epoch {
                return Err(HostError::State {
                    path: path.display().to_string(),
                    reason: format!(
                        "holds epoch {} already, takeover wanted {}",
                        old.last_epoch.0, config.epoch.0
                    ),
                });
            }
        }
        let mut sorted = nodes.to_vec();
        sorted.sort();
        sorted.dedup();
        let saved = Persisted {
            version: STATE_VERSION,
            device: device.to_string(),
            nodes: sorted,
            last_epoch: config.epoch,
            config: Some(config),
            took_over_from: Some(from),
            superseded_by: None,
            split_brain: Vec::new(),
            resolved: None,
        };
        // Leases granted by the old authority ended before the takeover was decided (the
        // decision waits lease + margin of silence), so no quiet period beyond that.
        let mut host = Self::from_persisted(path, saved, settings, now, false);
        host.save()?;
        Ok(host)
    }

    fn read(path: &Path) -> Result<Option<Persisted>, HostError> {
        let err = |reason: String| HostError::State {
            path: path.display().to_string(),
            reason,
        };
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(err(e.to_string())),
        };
        let p: Persisted = serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()))?;
        if p.version != STATE_VERSION {
            return Err(err(format!("version {} is not {STATE_VERSION}", p.version)));
        }
        Ok(Some(p))
    }

    fn save(&mut self) -> Result<(), HostError> {
        let result = (|| {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let text = serde_json::to_vec_pretty(&self.saved).map_err(std::io::Error::other)?;
            tandem_config::save_atomic(&self.path, &text)
        })();
        result.map_err(|e| {
            let reason = e.to_string();
            self.failed = Some(reason.clone());
            tracing::error!(device = %self.device, path = %self.path.display(), %reason,
                "cannot save the authority state: this authority stops answering");
            HostError::Stopped(reason)
        })
    }

    /// Saves if the authority's configuration changed. Must run before anything built from
    /// that configuration leaves the process.
    fn persist_changes(&mut self) -> Result<(), HostError> {
        if let Some(reason) = &self.failed {
            return Err(HostError::Stopped(reason.clone()));
        }
        let current = self.authority.config().cloned();
        if current == self.saved.config {
            return Ok(());
        }
        if let Some(c) = &current {
            self.saved.last_epoch = self.saved.last_epoch.max(c.epoch);
        }
        self.saved.config = current;
        self.save()
    }

    /// A gap of more than half a lease since the last call: this process was stopped or
    /// starved. Leases and removals wait again for a lease plus margin.
    fn observe(&mut self, now: Instant) {
        let t = self.time(now).0;
        if let Some(gap) = self.quiet.observe(t, self.heartbeats_sent.last_sent()) {
            tracing::warn!(device = %self.device, gap_ms = gap / 1_000_000,
                "the authority was paused: no leases or removals for a lease plus margin");
        }
    }

    fn check_live(&self) -> Result<(), HostError> {
        if let Some(reason) = &self.failed {
            return Err(HostError::Stopped(reason.clone()));
        }
        if let Some((n, e)) = self.saved.superseded_by {
            return Err(HostError::Superseded(n.0, e.0));
        }
        Ok(())
    }

    /// Another node hosts this device's authority at `epoch` and wins (see the module
    /// comment): stop for good, persisted. Says why, so that the log and the status tell an
    /// ordinary takeover (this authority was away) from a split brain (it had removed that
    /// node, which then went on alone too).
    pub fn supersede(&mut self, by: NodeId, epoch: Epoch) -> Result<StandDown, HostError> {
        if self.saved.superseded_by.is_some() {
            return Ok(StandDown::Already);
        }
        let kind = stand_down_kind(self.authority.config(), by);
        match kind {
            StandDown::SplitBrain => {
                tracing::error!(device = %self.device, by = by.0, epoch = epoch.0,
                own_epoch = self.saved.last_epoch.0,
                "split brain: this authority had removed node {} and that node hosts an authority of its own; \
                 this authority stops (its node's lease lapses, it serves nothing); \
                 `tandem device resolve` decides which copy stays", by.0)
            }
            _ => tracing::warn!(device = %self.device, by = by.0, epoch = epoch.0,
                own_epoch = self.saved.last_epoch.0,
                "node {} took this device's failover authority over while this node was away; \
                 this authority stands down and the node rejoins through the other one", by.0),
        }
        self.saved.superseded_by = Some((by, epoch));
        self.save()?;
        Ok(kind)
    }

    /// Stands down for `tandem device resolve` (this node's copy is discarded): like
    /// [`Self::supersede`], persisted, no lease granted from now on.
    pub fn stand_down_for_resolve(&mut self, kept: NodeId, epoch: Epoch) -> Result<(), HostError> {
        if let Some(reason) = &self.failed {
            return Err(HostError::Stopped(reason.clone()));
        }
        tracing::info!(device = %self.device, kept = kept.0, epoch = epoch.0,
            "split brain resolved by an administrator: this node's copy is discarded; its authority stands down");
        self.saved.superseded_by = Some((kept, epoch));
        self.saved.split_brain.clear();
        self.save()
    }

    /// `tandem device resolve` keeps this node's copy and discards `discarded`'s: the
    /// split-brain record of that node is cleared, so its next (blank) join makes it a
    /// full-sync target. An authority that stood down (the other side's had won) is
    /// reinstated at an epoch above `epoch_floor` and above every one it issued, quiet for
    /// a lease plus margin so that leases the other authority granted have ended first.
    pub fn keep_after_split_brain(
        &mut self,
        kept: NodeId,
        discarded: NodeId,
        epoch_floor: Epoch,
        now: Instant,
    ) -> Result<(), HostError> {
        if let Some(reason) = &self.failed {
            return Err(HostError::Stopped(reason.clone()));
        }
        for n in [kept, discarded] {
            if !self.saved.nodes.contains(&n) {
                return Err(HostError::NotMember(n.0));
            }
        }
        if self.saved.superseded_by.is_some() {
            let Some(cfg) = self.authority.config().cloned() else {
                return Err(HostError::State {
                    path: self.path.display().to_string(),
                    reason: "a cold authority cannot be reinstated".into(),
                });
            };
            let reinstated =
                reinstated_config(&cfg, discarded, self.saved.last_epoch.max(epoch_floor))
                    .ok_or_else(|| HostError::State {
                        path: self.path.display().to_string(),
                        reason: "no synchronized member would be left".into(),
                    })?;
            tracing::info!(device = %self.device, epoch = reinstated.epoch.0, discarded = discarded.0,
                "split brain resolved by an administrator: this copy stays; this authority is reinstated");
            self.saved.superseded_by = None;
            self.saved.last_epoch = reinstated.epoch;
            self.saved.config = Some(reinstated.clone());
            self.authority = Authority::new(reinstated, self.lease_ns, self.margin_ns, None);
            // Quiet for a lease plus margin, as after a restart: leases the other side's
            // authority granted end first.
            let t = self.time(now).0;
            self.quiet.hold_until(
                t.saturating_add(self.lease_ns)
                    .saturating_add(self.margin_ns),
            );
        } else {
            tracing::info!(device = %self.device, discarded = discarded.0,
                "split brain resolved by an administrator: this copy stays; node {} joins as a full-sync target", discarded.0);
        }
        self.saved.split_brain.retain(|&(n, _)| n != discarded);
        self.saved.resolved = Some(Resolution {
            kept,
            discarded,
            epoch: self.saved.last_epoch,
        });
        self.save()
    }

    /// Heartbeat strategy with two nodes ([`QuietPeriod::require_partner`]): after a restart
    /// (`restarted`) or a later pause, quiet until the partner echoes a heartbeat of `sent`
    /// (this process's heartbeats) made after the wait began.
    pub fn require_partner(&mut self, restarted: bool, sent: Arc<HeartbeatSeq>) {
        self.quiet.require_partner(restarted, sent.last_sent());
        self.heartbeats_sent = sent;
    }

    /// The partner's newest heartbeat echoes `echo` ([`QuietPeriod::partner_heard`]).
    pub fn partner_heard(&mut self, echo: Option<HeartbeatId>) {
        if self.quiet.awaits_partner() {
            self.quiet.partner_heard(echo);
            if !self.quiet.awaits_partner() {
                tracing::info!(device = %self.device, "the partner echoed a heartbeat sent after this authority's restart or pause: it may grant leases again");
            }
        }
    }

    /// Waiting for the partner's echo after a restart or a pause.
    pub fn awaits_partner(&self) -> bool {
        self.quiet.awaits_partner()
    }

    /// Grants no lease and runs no removal until `now + span` (three-node majority: this
    /// authority lost its majority, or has just been taken over). Requests still get the
    /// current configuration.
    pub fn hold(&mut self, now: Instant, span: Duration) {
        let until = self.time(now + span).0;
        self.quiet.hold_until(until);
    }

    /// The device gained a data node (`replica add` making it three-way): requests from it
    /// are accepted from now on; persisted. Nodes are only ever added here.
    pub fn widen_nodes(&mut self, nodes: &[NodeId]) -> Result<(), HostError> {
        let mut all = self.saved.nodes.clone();
        all.extend(
            nodes
                .iter()
                .copied()
                .filter(|n| !self.saved.nodes.contains(n)),
        );
        all.sort();
        if all == self.saved.nodes {
            return Ok(());
        }
        tracing::info!(device = %self.device, nodes = ?all.iter().map(|n| n.0).collect::<Vec<_>>(),
            "the device gained a data node: its authority accepts it");
        self.saved.nodes = all;
        self.save()
    }

    /// A node asking to join holds `current`. If that generation is not one the cluster's
    /// configuration knows (the current one, its lineage, or the one the node left at), the
    /// node's copy moved on without this authority: two authorities, split brain. Returns
    /// the generation then. A replica with no generation yet (new, or metadata lost) is a
    /// plain full-sync target.
    fn went_on_alone(&self, from: NodeId, current: GenerationId) -> Option<GenerationId> {
        let cfg = self.authority.config()?;
        let known = current.is_blank()
            || current == cfg.generation
            || cfg.lineage.contains(&current)
            || cfg.left_at(from) == Some(current);
        (!known).then_some(current)
    }

    fn refuse_join(&mut self, from: NodeId, current: GenerationId) -> Result<(), HostError> {
        if self
            .saved
            .split_brain
            .iter()
            .any(|&(n, g)| n == from && g == current)
        {
            return Ok(());
        }
        tracing::error!(device = %self.device, node = from.0, generation = current.0,
            "split brain: this node's copy went on alone (its generation is unknown to this authority); \
             its join is refused and nothing is merged; an administrator decides which copy stays");
        self.saved.split_brain.retain(|&(n, _)| n != from);
        self.saved.split_brain.push((from, current));
        self.save()
    }

    fn time(&self, now: Instant) -> Time {
        Time(ns(now.saturating_duration_since(self.base)))
    }

    pub fn nodes(&self) -> &[NodeId] {
        &self.saved.nodes
    }

    pub fn config(&self) -> Option<&EpochConfig> {
        self.authority.config()
    }

    pub fn persisted(&self) -> &Persisted {
        &self.saved
    }

    /// Requests from node `from`; returns what to answer it (persisted first).
    pub fn handle(
        &mut self,
        now: Instant,
        from: NodeId,
        requests: Vec<ToAuthority>,
        pick: u64,
    ) -> Result<Option<Grant>, HostError> {
        self.check_live()?;
        if !self.saved.nodes.contains(&from) {
            return Err(HostError::NotMember(from.0));
        }
        self.observe(now);
        let t = self.time(now);
        let quiet = self.quiet.is_quiet(t.0);
        let mut last = None;
        // While quiet, nothing reaches the authority (its replies grant leases, and every
        // call runs due removals): the node is told the configuration and asks again.
        let requests = if quiet { Vec::new() } else { requests };
        for r in requests.into_iter().take(REQUESTS_MAX) {
            if let ToAuthority::Join { meta } = &r {
                // The authority adds one to the largest epoch it is told of.
                if meta.epoch.0 > EPOCH_MAX {
                    tracing::warn!(device = %self.device, node = from.0, epoch = meta.epoch.0,
                        "join with an absurd epoch ignored");
                    continue;
                }
                if let Some(current) = self.went_on_alone(from, meta.current) {
                    self.refuse_join(from, current)?;
                    continue;
                }
            }
            if let Some(u) = self.authority.on_message(t, from, r, pick) {
                last = Some(u);
            }
        }
        if !quiet {
            self.authority.run_due(t);
        }
        self.persist_changes()?;
        let grant = match last {
            // Rebuild from the current configuration: a later request may have changed it.
            Some(u) => {
                let current = self.authority.config().cloned().unwrap_or(u.config);
                let lease = u.lease_until.map(|until| until.0.saturating_sub(t.0));
                let still_member = current.state_of(from) != tandem_ha::MemberState::Out;
                Some(Grant {
                    config: current,
                    lease_duration_ns: lease.filter(|_| still_member && !quiet),
                    split_brain: Vec::new(),
                })
            }
            // Nothing to ask (a node without its data plane): the configuration, no lease.
            None => self.authority.config().cloned().map(|config| Grant {
                config,
                lease_duration_ns: None,
                split_brain: Vec::new(),
            }),
        };
        let grant = grant.map(|mut g| {
            g.split_brain = self.saved.split_brain.iter().map(|&(n, _)| n).collect();
            g
        });
        Ok(grant)
    }

    /// Removals whose wait is over; persisted.
    pub fn tick(&mut self, now: Instant) -> Result<(), HostError> {
        if self.check_live().is_err() {
            return Ok(());
        }
        self.observe(now);
        let t = self.time(now);
        if self.quiet.is_quiet(t.0) {
            return Ok(());
        }
        self.authority.run_due(t);
        self.persist_changes()
    }
}

/// Why an authority that hears a partner's winning authority stands down: a split brain
/// if its own configuration had removed that partner (both went on alone), else an
/// ordinary takeover while this one was away.
pub fn stand_down_kind(own: Option<&EpochConfig>, by: NodeId) -> StandDown {
    match own {
        Some(c) if c.state_of(by) == tandem_ha::MemberState::Out => StandDown::SplitBrain,
        _ => StandDown::AfterTakeover,
    }
}

/// The configuration a reinstated authority issues after a resolve that keeps its copy:
/// `discarded` out (it rejoins blank, as a full-sync target), an epoch above `floor`.
/// None when no synchronized member would be left.
pub fn reinstated_config(
    cfg: &EpochConfig,
    discarded: NodeId,
    floor: Epoch,
) -> Option<EpochConfig> {
    let mut next = cfg.next(&[(discarded, tandem_ha::MemberState::Out)])?;
    next.epoch = Epoch(next.epoch.0.max(floor.0 + 1));
    Some(next)
}

/// The `Join` the driver adds for its engine when the authority's configuration has this
/// node out while the engine holds one at the same or a newer epoch in which it is
/// synchronized with another generation. The engine ignores a configuration that is not
/// newer than its own, so it would never ask to join: that is what two authorities leave
/// behind (both sides went on alone at the same epoch, a split brain). The join lets the
/// authority compare generations, refuse and record it (`split_brain`), and both sides
/// report it; a copy the authority does know simply rejoins.
pub fn split_brain_join(
    me: NodeId,
    engine: Option<&tandem_config::ipc::HaDeviceStatus>,
    authority: Option<&EpochConfig>,
) -> Option<ToAuthority> {
    let status = engine?;
    let mine = status.config.as_ref()?;
    let theirs = authority?;
    let diverged = theirs.state_of(me) == tandem_ha::MemberState::Out
        && mine.state_of(me) == tandem_ha::MemberState::Synchronized
        && mine.epoch >= theirs.epoch
        && mine.generation != theirs.generation
        && !status.meta.current.is_blank();
    diverged.then(|| ToAuthority::Join {
        meta: status.meta.clone(),
    })
}

/// Loads every authority this node hosted before (`DATA_DIR/ha/*.authority.json`).
pub fn load_existing(node: &Arc<Node>) {
    let dir = ha_dir(&node.data_dir);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    let settings = node.ha.settings();
    let mut hosts = node.ha.hosts.lock().unwrap_or_else(|e| e.into_inner());
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(device) = name.strip_suffix(".authority.json") else {
            continue;
        };
        if name.starts_with('.') || hosts.contains_key(device) {
            continue;
        }
        match AuthorityHost::open(&node.data_dir, device, &[], None, &settings, Instant::now()) {
            Ok(mut h) => {
                tracing::info!(
                    device,
                    epoch = h.saved.last_epoch.0,
                    "hosting the failover authority (state loaded)"
                );
                arm_partner_wait(node, device, &mut h, true);
                hosts.insert(device.to_string(), h);
            }
            Err(e) => tracing::error!(device, "cannot load the authority state: {e}"),
        }
    }
}

/// Runs due removals of every hosted authority, every 100 ms.
pub async fn tick_all(node: Arc<Node>) {
    let mut every = tokio::time::interval(Duration::from_millis(100));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let now = Instant::now();
        let mut hosts = node.ha.hosts.lock().unwrap_or_else(|e| e.into_inner());
        for (device, h) in hosts.iter_mut() {
            // Three-node majority: no removal without a majority (see the driver).
            if let Some(span) = super::driver::hold_without_majority(&node, device, now) {
                h.hold(now, span);
            }
            let _ = h.tick(now);
        }
    }
}

/// Handles requests for `device` if this node hosts its authority; `Ok(None)` if not.
pub fn handle_local(
    node: &Node,
    device: &str,
    from: NodeId,
    requests: Vec<ToAuthority>,
) -> Option<Result<Option<Grant>, HostError>> {
    // A file-witness authority answers only while this node holds the lock file.
    let gate = super::file_witness_task::gate(node, device);
    let mut hosts = node.ha.hosts.lock().unwrap_or_else(|e| e.into_inner());
    let h = hosts.get_mut(device)?;
    match gate {
        super::file_witness_task::Gate::Open => {
            Some(h.handle(Instant::now(), from, requests, rand::random()))
        }
        super::file_witness_task::Gate::Closed(why) => Some(Err(HostError::NoWitnessFile(why))),
        super::file_witness_task::Gate::Held(hold) => Some(
            h.handle(Instant::now(), from, requests, rand::random())
                .map(|g| super::file_witness_task::limit(&hold, Instant::now(), g)),
        ),
    }
}

/// Opens (or creates) the host for `device` if it is not there yet.
pub fn ensure_host(
    node: &Node,
    device: &str,
    nodes: &[NodeId],
    initial: Option<InitialSync>,
    limit: usize,
) -> Result<(), HostError> {
    let mut hosts = node.ha.hosts.lock().unwrap_or_else(|e| e.into_inner());
    if hosts.contains_key(device) {
        return Ok(());
    }
    if hosts.len() >= limit {
        return Err(HostError::State {
            path: device.to_string(),
            reason: format!("this node hosts {limit} authorities already"),
        });
    }
    let h = AuthorityHost::open(
        &node.data_dir,
        device,
        nodes,
        initial,
        &node.ha.settings(),
        Instant::now(),
    )?;
    tracing::info!(
        device,
        epoch = h.saved.last_epoch.0,
        cold = h.saved.config.is_none(),
        "hosting the failover authority"
    );
    let mut h = h;
    let restarted = h.restarted;
    arm_partner_wait(node, device, &mut h, restarted);
    hosts.insert(device.to_string(), h);
    Ok(())
}

/// Heartbeat strategy with two nodes: the host waits to hear the partner after a restart
/// or a pause ([`QuietPeriod::require_partner`]). Other placements need no such wait: a
/// witness or a three-node majority never has a rival that took over unseen.
pub fn arm_partner_wait(node: &Node, device: &str, h: &mut AuthorityHost, restarted: bool) {
    let config = node.config_arc();
    let two_node_heartbeat = config
        .device(device)
        .and_then(|d| d.replication.as_ref())
        .is_some_and(|r| r.failover == FailoverStrategy::Heartbeat && r.partners.len() == 1);
    if two_node_heartbeat {
        h.require_partner(restarted, node.ha.heartbeat_seq.clone());
    }
}

/// The partner of `device`'s newest heartbeat echoes `echo` ([`AuthorityHost::partner_heard`]).
pub fn partner_heard(node: &Node, device: &str, echo: Option<HeartbeatId>) {
    let mut hosts = node.ha.hosts.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(h) = hosts.get_mut(device) {
        h.partner_heard(echo);
    }
}

/// Holds the local authority of `device` for `span` ([`AuthorityHost::hold`]).
pub fn hold(node: &Node, device: &str, now: Instant, span: Duration) {
    let mut hosts = node.ha.hosts.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(h) = hosts.get_mut(device) {
        h.hold(now, span);
    }
}

/// Lets the local authority of `device` accept `nodes` ([`AuthorityHost::widen_nodes`]).
pub fn widen_nodes(node: &Node, device: &str, nodes: &[NodeId]) -> Result<(), HostError> {
    let mut hosts = node.ha.hosts.lock().unwrap_or_else(|e| e.into_inner());
    match hosts.get_mut(device) {
        Some(h) => h.widen_nodes(nodes),
        None => Ok(()),
    }
}

/// Stops the local authority of `device` (another node's wins); says why (None: no such
/// authority here, or its state could not be saved).
pub fn supersede(node: &Node, device: &str, by: NodeId, epoch: Epoch) -> Option<StandDown> {
    let mut hosts = node.ha.hosts.lock().unwrap_or_else(|e| e.into_inner());
    hosts.get_mut(device)?.supersede(by, epoch).ok()
}

/// The node whose authority superseded the one hosted here for `device`, if any.
pub fn superseded_by(node: &Node, device: &str) -> Option<NodeId> {
    let hosts = node.ha.hosts.lock().unwrap_or_else(|e| e.into_inner());
    hosts
        .get(device)
        .and_then(|h| h.saved.superseded_by)
        .map(|(n, _)| n)
}

/// Installs a takeover host (replacing at most a superseded one, kept until then as a record).
pub fn install(node: &Node, host: AuthorityHost) {
    let mut hosts = node.ha.hosts.lock().unwrap_or_else(|e| e.into_inner());
    hosts.insert(host.device.clone(), host);
}

pub fn hosts_device(node: &Node, device: &str) -> bool {
    node.ha
        .hosts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains_key(device)
}

/// The epoch of the live authority hosted here for `device`, if any (a superseded one
/// does not count: it is not announced and never competes again).
pub fn hosted_epoch(node: &Node, device: &str) -> Option<u64> {
    let hosts = node.ha.hosts.lock().unwrap_or_else(|e| e.into_inner());
    hosts
        .get(device)
        .filter(|h| h.saved.superseded_by.is_none())
        .map(|h| h.saved.last_epoch.0)
}

pub type Hosts = HashMap<String, AuthorityHost>;

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_ha::generation::ReplicaMeta;
    use tandem_ha::MemberState;

    fn settings() -> HaSettings {
        HaSettings::default()
    }

    const N1: NodeId = NodeId(1);
    const N2: NodeId = NodeId(2);
    const STEP: Duration = Duration::from_millis(100);

    #[test]
    fn a_restarted_two_node_heartbeat_authority_waits_for_an_echo_of_a_later_heartbeat() {
        let s = settings();
        let quiet = ns(s.lease + s.margin);
        let seq = HeartbeatSeq::new(11);
        let before_restart = seq.next();
        let mut q = QuietPeriod::new(&s, 0, true);
        q.require_partner(true, seq.last_sent());
        assert!(q.is_quiet(quiet + 1), "a lease plus margin is not enough");
        q.partner_heard(None);
        assert!(
            q.is_quiet(quiet + 1),
            "a heartbeat without an echo (version 1)"
        );
        q.partner_heard(Some(before_restart));
        assert!(
            q.is_quiet(quiet + 1),
            "an echo of a heartbeat sent before the wait began"
        );
        let other_process = HeartbeatId {
            incarnation: 12,
            counter: u64::MAX,
        };
        q.partner_heard(Some(other_process));
        assert!(q.is_quiet(quiet + 1), "an echo of another incarnation");
        let after = seq.next();
        q.partner_heard(Some(after));
        assert!(!q.is_quiet(quiet + 1));
        assert!(q.is_quiet(quiet - 1), "and still a lease plus margin");
        // Calls every 100 ms, then a pause: the wait is armed again, from the last
        // heartbeat sent by then.
        let mut t = 0;
        for _ in 0..30 {
            t += 100_000_000;
            seq.next();
            assert!(q.observe(t, seq.last_sent()).is_none());
        }
        let sent_before_pause = seq.next();
        t += ns(s.lease);
        assert!(
            q.observe(t, seq.last_sent()).is_some(),
            "a gap of a lease is a pause"
        );
        q.partner_heard(Some(sent_before_pause));
        assert!(
            q.is_quiet(t + quiet + 1),
            "after a pause, an echo of a heartbeat sent before it (the socket buffer) does not count"
        );
        q.partner_heard(Some(seq.next()));
        assert!(!q.is_quiet(t + quiet + 1));
        // Without `require_partner` (a witness, three nodes), a lease plus margin is enough.
        let plain = QuietPeriod::new(&s, 0, true);
        assert!(!plain.is_quiet(quiet + 1));
        // A takeover host (partner mode, not restarted) waits only after a pause.
        let mut taker = QuietPeriod::new(&s, 0, false);
        taker.require_partner(false, seq.last_sent());
        assert!(!taker.is_quiet(1));
        assert!(taker.observe(ns(s.lease), seq.last_sent()).is_some());
        assert!(taker.awaits_partner());
    }

    /// Ticks every 100 ms (as `tick_all` does) up to `until`.
    fn run_to(h: &mut AuthorityHost, now: &mut Instant, until: Instant) {
        while *now + STEP <= until {
            *now += STEP;
            h.tick(*now).unwrap();
        }
        *now = until;
        h.tick(*now).unwrap();
    }

    fn stored(dir: &Path) -> Persisted {
        AuthorityHost::read(&state_path(dir, "d")).unwrap().unwrap()
    }

    #[test]
    fn fresh_device_starts_synchronized_and_persists_before_answering() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let mut h = AuthorityHost::open(
            dir.path(),
            "d",
            &[N2, N1],
            Some(InitialSync::Zeroed),
            &settings(),
            t0,
        )
        .unwrap();
        assert_eq!(stored(dir.path()).config.unwrap().epoch, Epoch(1));
        let g = h
            .handle(t0, N1, vec![ToAuthority::LeaseRequest], 0)
            .unwrap()
            .unwrap();
        assert_eq!(g.config.state_of(N2), MemberState::Synchronized);
        assert_eq!(
            g.lease_duration_ns,
            Some(1_500_000_000),
            "a new authority has no earlier leases to wait out"
        );
    }

    #[test]
    fn not_fresh_starts_cold_and_waits_for_every_join() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let mut h = AuthorityHost::open(dir.path(), "d", &[N1, N2], None, &settings(), t0).unwrap();
        assert!(h.config().is_none());
        let meta = ReplicaMeta::default();
        let g = h
            .handle(t0, N1, vec![ToAuthority::Join { meta: meta.clone() }], 0)
            .unwrap();
        assert!(g.is_none(), "one join is not enough");
        let g = h
            .handle(t0, N2, vec![ToAuthority::Join { meta }], 0)
            .unwrap()
            .unwrap();
        assert!(g.config.epoch >= Epoch(1));
        assert_eq!(stored(dir.path()).config, Some(g.config));
    }

    #[test]
    fn removal_waits_for_lease_plus_margin_and_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings();
        let mut now = Instant::now();
        let mut h = AuthorityHost::open(
            dir.path(),
            "d",
            &[N1, N2],
            Some(InitialSync::Zeroed),
            &s,
            now,
        )
        .unwrap();
        let g = h
            .handle(now, N2, vec![ToAuthority::LeaseRequest], 0)
            .unwrap()
            .unwrap();
        assert!(g.lease_duration_ns.is_some());
        let v = ToAuthority::Verdict {
            suspect: N2,
            epoch: Epoch(1),
        };
        let asked = now;
        let g = h.handle(now, N1, vec![v], 0).unwrap().unwrap();
        assert_eq!(g.config.epoch, Epoch(1), "N2's lease still runs");
        // N2 asks again before the removal: pending removal, so no lease renewal.
        let g = h
            .handle(now, N2, vec![ToAuthority::LeaseRequest], 0)
            .unwrap()
            .unwrap();
        assert_eq!(g.lease_duration_ns, None);
        run_to(
            &mut h,
            &mut now,
            asked + s.lease + s.margin - Duration::from_millis(1),
        );
        assert_eq!(h.config().unwrap().epoch, Epoch(1));
        run_to(&mut h, &mut now, asked + s.lease + s.margin);
        let cfg = h.config().unwrap().clone();
        assert_eq!(cfg.epoch, Epoch(2));
        assert_eq!(cfg.state_of(N2), MemberState::Out);
        // Persisted at the tick, before anyone could be told.
        assert_eq!(stored(dir.path()).config, Some(cfg.clone()));
        // A restart continues from epoch 2: the next change is epoch 3, never 2 again.
        let mut now = Instant::now();
        let mut h = AuthorityHost::open(
            dir.path(),
            "d",
            &[N1, N2],
            Some(InitialSync::Zeroed),
            &s,
            now,
        )
        .unwrap();
        assert_eq!(h.config(), Some(&cfg));
        let meta = ReplicaMeta {
            epoch: Epoch(2),
            ..ReplicaMeta::default()
        };
        let join = vec![ToAuthority::Join { meta }];
        let g = h.handle(now, N2, join.clone(), 0).unwrap().unwrap();
        assert_eq!(g.config, cfg, "nothing changes right after a restart");
        assert_eq!(g.lease_duration_ns, None, "no leases right after a restart");
        let until = now + s.lease + s.margin;
        run_to(&mut h, &mut now, until);
        let g = h.handle(now, N2, join, 0).unwrap().unwrap();
        assert_eq!(g.config.epoch, Epoch(3));
        assert_eq!(g.config.state_of(N2), MemberState::Syncing);
        assert_eq!(stored(dir.path()).last_epoch, Epoch(3));
    }

    #[test]
    fn restarted_host_defers_verdicts_and_leases_for_a_lease_plus_margin() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings();
        let t0 = Instant::now();
        drop(
            AuthorityHost::open(
                dir.path(),
                "d",
                &[N1, N2],
                Some(InitialSync::Zeroed),
                &s,
                t0,
            )
            .unwrap(),
        );
        let mut now = t0;
        let mut h = AuthorityHost::open(
            dir.path(),
            "d",
            &[N1, N2],
            Some(InitialSync::Zeroed),
            &s,
            now,
        )
        .unwrap();
        let v = ToAuthority::Verdict {
            suspect: N2,
            epoch: Epoch(1),
        };
        let g = h.handle(now, N1, vec![v.clone()], 0).unwrap().unwrap();
        assert_eq!(g.lease_duration_ns, None);
        // The verdict was dropped, so even long after nothing happens without a new one.
        run_to(&mut h, &mut now, t0 + Duration::from_secs(5));
        assert_eq!(h.config().unwrap().epoch, Epoch(1));
        let g = h
            .handle(now, N1, vec![ToAuthority::LeaseRequest], 0)
            .unwrap()
            .unwrap();
        assert!(
            g.lease_duration_ns.is_some(),
            "leases again after the quiet period"
        );
        // Asked again: N2 never had a lease from this incarnation, so margin only.
        h.handle(now, N1, vec![v], 0).unwrap();
        let until = now + s.margin;
        run_to(&mut h, &mut now, until);
        assert_eq!(h.config().unwrap().state_of(N2), MemberState::Out);
    }

    #[test]
    fn a_pause_stops_leases_and_removals_for_a_lease_plus_margin() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings();
        let mut now = Instant::now();
        let mut h = AuthorityHost::open(
            dir.path(),
            "d",
            &[N1, N2],
            Some(InitialSync::Zeroed),
            &s,
            now,
        )
        .unwrap();
        h.handle(now, N2, vec![ToAuthority::LeaseRequest], 0)
            .unwrap();
        let v = ToAuthority::Verdict {
            suspect: N2,
            epoch: Epoch(1),
        };
        h.handle(now, N1, vec![v], 0).unwrap();
        // SIGSTOP for 5 s: the removal is overdue, but it waits a lease plus margin more.
        now += Duration::from_secs(5);
        let g = h
            .handle(now, N1, vec![ToAuthority::LeaseRequest], 0)
            .unwrap()
            .unwrap();
        assert_eq!(g.lease_duration_ns, None, "no lease right after a pause");
        assert_eq!(g.config.epoch, Epoch(1), "no removal right after a pause");
        let woke = now;
        run_to(&mut h, &mut now, woke + s.lease + s.margin - STEP);
        assert_eq!(h.config().unwrap().epoch, Epoch(1));
        run_to(&mut h, &mut now, woke + s.lease + s.margin);
        assert_eq!(h.config().unwrap().epoch, Epoch(2));
        let g = h
            .handle(now, N1, vec![ToAuthority::LeaseRequest], 0)
            .unwrap()
            .unwrap();
        assert!(g.lease_duration_ns.is_some());
    }

    #[test]
    fn a_superseded_authority_answers_nothing_even_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings();
        let t0 = Instant::now();
        let mut h = AuthorityHost::open(
            dir.path(),
            "d",
            &[N1, N2],
            Some(InitialSync::Zeroed),
            &s,
            t0,
        )
        .unwrap();
        assert_eq!(h.supersede(N2, Epoch(2)).unwrap(), StandDown::AfterTakeover);
        assert!(matches!(
            h.handle(t0, N1, vec![ToAuthority::LeaseRequest], 0),
            Err(HostError::Superseded(2, 2))
        ));
        let mut h = AuthorityHost::open(
            dir.path(),
            "d",
            &[N1, N2],
            Some(InitialSync::Zeroed),
            &s,
            t0,
        )
        .unwrap();
        assert!(matches!(
            h.handle(t0, N1, vec![ToAuthority::LeaseRequest], 0),
            Err(HostError::Superseded(2, 2))
        ));
        assert_eq!(stored(dir.path()).superseded_by, Some((N2, Epoch(2))));
    }

    #[test]
    fn a_node_that_went_on_alone_is_refused_and_recorded_as_split_brain() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings();
        let t0 = Instant::now();
        // Node 2 took over from node 1 (epoch 2, node 1 out, left at generation g1).
        let base = EpochConfig::initial(&[N1, N2]);
        let g1 = base.generation;
        let taken = base.next(&[(N1, MemberState::Out)]).unwrap();
        let mut h = AuthorityHost::take_over(dir.path(), "d", &[N1, N2], taken.clone(), N1, &s, t0)
            .unwrap();
        // Node 1 also went on alone in epoch 2 (its own authority removed node 2).
        let alone = base.next(&[(N2, MemberState::Out)]).unwrap().generation;
        assert_ne!(alone, taken.generation);
        let meta = |current| ReplicaMeta {
            current,
            epoch: Epoch(2),
            ..ReplicaMeta::default()
        };
        let g = h
            .handle(t0, N1, vec![ToAuthority::Join { meta: meta(alone) }], 0)
            .unwrap()
            .unwrap();
        assert_eq!(g.config, taken, "refused: nothing changes");
        assert_eq!(stored(dir.path()).split_brain, vec![(N1, alone)]);
        // A node that only fell behind (it holds the generation it left at) rejoins.
        let g = h
            .handle(t0, N1, vec![ToAuthority::Join { meta: meta(g1) }], 0)
            .unwrap()
            .unwrap();
        assert_eq!(g.config.epoch, Epoch(3));
        assert_eq!(g.config.state_of(N1), MemberState::Syncing);
        // So does a replica with no generation at all (new disk, lost metadata).
        let dir2 = tempfile::tempdir().unwrap();
        let mut h =
            AuthorityHost::take_over(dir2.path(), "d", &[N1, N2], taken.clone(), N1, &s, t0)
                .unwrap();
        let g = h
            .handle(
                t0,
                N1,
                vec![ToAuthority::Join {
                    meta: ReplicaMeta::default(),
                }],
                0,
            )
            .unwrap()
            .unwrap();
        assert_eq!(g.config.state_of(N1), MemberState::Syncing);
    }

    #[test]
    fn an_engine_stuck_on_its_own_equal_epoch_is_made_to_join() {
        let base = EpochConfig::initial(&[N1, N2]);
        let theirs = base.next(&[(N2, MemberState::Out)]).unwrap();
        let mine = base.next(&[(N1, MemberState::Out)]).unwrap();
        assert_eq!(mine.epoch, theirs.epoch);
        let status = tandem_config::ipc::HaDeviceStatus {
            node_id: 2,
            config: Some(mine.clone()),
            serving: false,
            meta: ReplicaMeta {
                current: mine.generation,
                epoch: mine.epoch,
                ..ReplicaMeta::default()
            },
            partners: vec![],
        };
        let join = split_brain_join(N2, Some(&status), Some(&theirs));
        assert!(
            matches!(join, Some(ToAuthority::Join { meta }) if meta.current == mine.generation)
        );
        // The authority's configuration is newer: the engine adopts it and joins itself.
        let newer = theirs.next(&[(N1, MemberState::Synchronized)]).unwrap();
        let newer = newer.next(&[(N2, MemberState::Out)]).unwrap_or(newer);
        assert!(newer.epoch > mine.epoch);
        assert!(split_brain_join(N2, Some(&status), Some(&newer)).is_none());
        // Same configuration: nothing to add.
        assert!(split_brain_join(N2, Some(&status), Some(&mine)).is_none());
        // Ordinary: this node is a member of the authority's configuration.
        assert!(split_brain_join(N2, Some(&status), Some(&base)).is_none());
        // The split brain then gets recorded by the authority (refused join).
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let mut h = AuthorityHost::take_over(
            dir.path(),
            "d",
            &[N1, N2],
            theirs.clone(),
            N2,
            &settings(),
            t0,
        )
        .unwrap();
        let g = h
            .handle(
                t0,
                N2,
                vec![split_brain_join(N2, Some(&status), Some(&theirs)).unwrap()],
                0,
            )
            .unwrap()
            .unwrap();
        assert_eq!(
            g.split_brain,
            vec![N2],
            "each side learns it from the answer"
        );
    }

    #[test]
    fn stand_down_tells_a_takeover_from_a_split_brain() {
        let base = EpochConfig::initial(&[N1, N2]);
        assert_eq!(stand_down_kind(Some(&base), N2), StandDown::AfterTakeover);
        let removed = base.next(&[(N2, MemberState::Out)]).unwrap();
        assert_eq!(stand_down_kind(Some(&removed), N2), StandDown::SplitBrain);
        assert_eq!(stand_down_kind(None, N2), StandDown::AfterTakeover);
    }

    #[test]
    fn resolve_keeps_a_stood_down_authority_at_a_newer_epoch_quietly() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings();
        let t0 = Instant::now();
        // Node 2 took over (epoch 2, node 1 out); node 1's authority also reached epoch 2.
        let base = EpochConfig::initial(&[N1, N2]);
        let taken = base.next(&[(N1, MemberState::Out)]).unwrap();
        let mut h = AuthorityHost::take_over(dir.path(), "d", &[N1, N2], taken.clone(), N1, &s, t0)
            .unwrap();
        assert_eq!(h.supersede(N1, Epoch(2)).unwrap(), StandDown::SplitBrain);
        assert!(h
            .handle(t0, N2, vec![ToAuthority::LeaseRequest], 0)
            .is_err());
        // Keep node 2: reinstated above every epoch either side issued.
        h.keep_after_split_brain(N2, N1, Epoch(5), t0).unwrap();
        let cfg = h.config().unwrap().clone();
        assert_eq!(cfg.epoch, Epoch(6));
        assert_eq!(
            cfg.generation, taken.generation,
            "the kept copy's data is unchanged"
        );
        assert_eq!(cfg.state_of(N1), MemberState::Out);
        let p = stored(dir.path());
        assert_eq!(p.superseded_by, None);
        assert_eq!(p.last_epoch, Epoch(6));
        assert_eq!(p.resolved.unwrap().kept, N2);
        // Quiet: no lease until the other authority's leases have surely ended.
        let g = h
            .handle(t0, N2, vec![ToAuthority::LeaseRequest], 0)
            .unwrap()
            .unwrap();
        assert_eq!(g.lease_duration_ns, None);
        let later = t0 + s.lease + s.margin + STEP;
        let mut now = t0;
        run_to(&mut h, &mut now, later);
        let g = h
            .handle(now, N2, vec![ToAuthority::LeaseRequest], 0)
            .unwrap()
            .unwrap();
        assert!(g.lease_duration_ns.is_some());
        // The discarded node joins blank: a full-sync target.
        let g = h
            .handle(
                now,
                N1,
                vec![ToAuthority::Join {
                    meta: ReplicaMeta::default(),
                }],
                0,
            )
            .unwrap()
            .unwrap();
        assert_eq!(g.config.state_of(N1), MemberState::Syncing);
    }

    #[test]
    fn resolve_on_a_live_authority_clears_the_record_and_a_discarded_one_stands_down() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings();
        let t0 = Instant::now();
        let base = EpochConfig::initial(&[N1, N2]);
        let taken = base.next(&[(N1, MemberState::Out)]).unwrap();
        let mut h = AuthorityHost::take_over(dir.path(), "d", &[N1, N2], taken.clone(), N1, &s, t0)
            .unwrap();
        let alone = base.next(&[(N2, MemberState::Out)]).unwrap().generation;
        let meta = ReplicaMeta {
            current: alone,
            epoch: Epoch(2),
            ..ReplicaMeta::default()
        };
        h.handle(t0, N1, vec![ToAuthority::Join { meta }], 0)
            .unwrap();
        assert_eq!(stored(dir.path()).split_brain.len(), 1);
        h.keep_after_split_brain(N2, N1, Epoch(2), t0).unwrap();
        let p = stored(dir.path());
        assert!(p.split_brain.is_empty());
        assert_eq!(
            p.config,
            Some(taken),
            "a live authority's configuration is unchanged"
        );
        // The other way round: this node's copy is discarded.
        h.stand_down_for_resolve(N1, Epoch(3)).unwrap();
        assert!(matches!(
            h.handle(t0, N2, vec![ToAuthority::LeaseRequest], 0),
            Err(HostError::Superseded(1, 3))
        ));
    }

    #[test]
    fn an_absurd_epoch_from_the_network_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let mut h = AuthorityHost::open(dir.path(), "d", &[N1, N2], None, &settings(), t0).unwrap();
        for n in [N1, N2] {
            let meta = ReplicaMeta {
                epoch: Epoch(u64::MAX),
                ..ReplicaMeta::default()
            };
            assert_eq!(
                h.handle(t0, n, vec![ToAuthority::Join { meta }], 0)
                    .unwrap(),
                None
            );
        }
        assert!(h.config().is_none());
    }

    #[test]
    fn stranger_and_node_mismatch_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let mut h = AuthorityHost::open(
            dir.path(),
            "d",
            &[N1, N2],
            Some(InitialSync::Zeroed),
            &settings(),
            t0,
        )
        .unwrap();
        assert!(matches!(
            h.handle(t0, NodeId(3), vec![ToAuthority::LeaseRequest], 0),
            Err(HostError::NotMember(3))
        ));
        drop(h);
        assert!(matches!(
            AuthorityHost::open(
                dir.path(),
                "d",
                &[N1, NodeId(3)],
                Some(InitialSync::Zeroed),
                &settings(),
                t0
            ),
            Err(HostError::Nodes { .. })
        ));
    }

    #[test]
    fn a_failed_save_stops_the_authority() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings();
        let mut now = Instant::now();
        let mut h = AuthorityHost::open(
            dir.path(),
            "d",
            &[N1, N2],
            Some(InitialSync::Zeroed),
            &s,
            now,
        )
        .unwrap();
        let v = ToAuthority::Verdict {
            suspect: N2,
            epoch: Epoch(1),
        };
        h.handle(now, N1, vec![v], 0).unwrap();
        // The state file's directory becomes a file: the save of epoch 2 fails.
        std::fs::remove_dir_all(dir.path().join("ha")).unwrap();
        std::fs::write(dir.path().join("ha"), b"x").unwrap();
        while now < Instant::now() + s.margin + STEP {
            now += STEP;
            let _ = h.tick(now);
        }
        assert!(matches!(
            h.handle(now, N1, vec![ToAuthority::LeaseRequest], 0),
            Err(HostError::Stopped(_))
        ));
    }

    #[test]
    fn takeover_needs_a_newer_epoch_and_is_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let base = EpochConfig::initial(&[N1, N2]);
        let next = base.next(&[(N1, MemberState::Out)]).unwrap();
        let h = AuthorityHost::take_over(
            dir.path(),
            "d",
            &[N1, N2],
            next.clone(),
            N1,
            &settings(),
            t0,
        )
        .unwrap();
        assert_eq!(h.persisted().took_over_from, Some(N1));
        assert_eq!(stored(dir.path()).config, Some(next.clone()));
        assert!(
            AuthorityHost::take_over(dir.path(), "d", &[N1, N2], next, N1, &settings(), t0)
                .is_err()
        );
    }
}
