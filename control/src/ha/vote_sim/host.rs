//! The authority host of the simulation: `authority_host::AuthorityHost` without files or
//! `Instant`. It runs the real `tandem_ha::authority::Authority` and the real quiet period
//! (`authority_host::QuietPeriod`, with the heartbeat echo rule of `echo`). Modelled rather than shared (the host's `handle` does
//! file I/O): the order of `handle` and `tick` (quiet requests dropped, due removals run,
//! persisted before the answer leaves), `take_over`, and `supersede`. Not modelled: the
//! refusal of a join from a copy that went on alone (split brain, which the simulated
//! shapes never reach) and the limits on hostile input.

use tandem_ha::authority::{Authority, AuthorityBug, ToAuthority};
use tandem_ha::{Epoch, EpochConfig, MemberState, NodeId, Time};

use crate::ha::authority_host::{Grant, QuietPeriod};
use crate::ha::echo::HeartbeatId;
use crate::ha::HaSettings;

/// What the host keeps on disk (`authority_host::Persisted`, the parts that matter here).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Durable {
    pub last_epoch: Epoch,
    pub config: Option<EpochConfig>,
    pub took_over_from: Option<NodeId>,
    pub superseded_by: Option<(NodeId, Epoch)>,
}

pub struct SimHost {
    authority: Authority,
    quiet: QuietPeriod,
    /// The host's clock origin (local ns), as `AuthorityHost::base`.
    base: u64,
    nodes: Vec<NodeId>,
    pub saved: Durable,
    /// `saved` changed since the world last wrote it to the durable store.
    pub dirty: bool,
    /// Entries of `authority.history` already reported to the checker.
    reported: usize,
    /// `VoteBug::NoEchoWait`: any heartbeat heard after the wait began ends it, as before
    /// the echo; when the wait began (host clock) and this process's incarnation.
    no_echo_wait: Option<(Option<u64>, u64)>,
}

fn ns(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl SimHost {
    /// `AuthorityHost::from_persisted`. `restarted`: quiet for a lease plus margin.
    pub fn from_durable(
        saved: Durable,
        nodes: &[NodeId],
        settings: &HaSettings,
        now: u64,
        restarted: bool,
        bug: Option<AuthorityBug>,
    ) -> SimHost {
        let (lease_ns, margin_ns) = (ns(settings.lease), ns(settings.margin));
        let authority = match &saved.config {
            Some(c) => Authority::new(c.clone(), lease_ns, margin_ns, bug),
            None => {
                let mut init = EpochConfig::initial(nodes);
                init.epoch = saved.last_epoch;
                let mut a = Authority::new(init, lease_ns, margin_ns, bug);
                a.lose_state();
                a
            }
        };
        SimHost {
            authority,
            quiet: QuietPeriod::new(settings, 0, restarted),
            base: now,
            nodes: nodes.to_vec(),
            saved,
            dirty: false,
            reported: 1,
            no_echo_wait: None,
        }
    }

    /// A first start with the `--init zeroed` mark: every replica synchronized.
    pub fn fresh(
        nodes: &[NodeId],
        settings: &HaSettings,
        now: u64,
        bug: Option<AuthorityBug>,
    ) -> SimHost {
        let config = EpochConfig::initial(nodes);
        let saved = Durable {
            last_epoch: config.epoch,
            config: Some(config),
            took_over_from: None,
            superseded_by: None,
        };
        let mut h = SimHost::from_durable(saved, nodes, settings, now, false, bug);
        h.dirty = true;
        h
    }

    /// `AuthorityHost::require_partner` (heartbeat strategy, two nodes): `last_sent` is
    /// this control service's last heartbeat so far.
    pub fn require_partner(&mut self, now: u64, restarted: bool, last_sent: HeartbeatId) {
        self.quiet.require_partner(restarted, last_sent);
        if let Some(b) = &mut self.no_echo_wait {
            b.1 = last_sent.incarnation;
        }
        self.note_wait(now);
    }

    /// Plants `VoteBug::NoEchoWait`.
    pub fn plant_no_echo_wait(&mut self) {
        self.no_echo_wait = Some((None, 0));
    }

    /// `AuthorityHost::partner_heard`: the partner's newest heartbeat echoes `echo`; it
    /// arrived at `heard_at` (used only by the planted bug).
    pub fn partner_heard(&mut self, echo: Option<HeartbeatId>, heard_at: u64) {
        let t = self.time(heard_at);
        if let Some((Some(from), incarnation)) = self.no_echo_wait {
            if t > from {
                // Planted: any heartbeat heard after the wait began counts.
                self.quiet.partner_heard(Some(HeartbeatId {
                    incarnation,
                    counter: u64::MAX,
                }));
            }
        }
        self.quiet.partner_heard(echo);
        if !self.quiet.awaits_partner() {
            if let Some(b) = &mut self.no_echo_wait {
                b.0 = None;
            }
        }
    }

    /// For the planted bug: when the current wait for the partner began.
    fn note_wait(&mut self, now: u64) {
        let t = self.time(now);
        let awaits = self.quiet.awaits_partner();
        if let Some(b) = &mut self.no_echo_wait {
            b.0 = awaits.then_some(t);
        }
    }

    /// `QuietPeriod::observe`, for the planted bug noting when a pause re-arms the wait.
    fn observe(&mut self, t: u64, last_sent: HeartbeatId) {
        if self.quiet.observe(t, last_sent).is_some() {
            if let Some(b) = &mut self.no_echo_wait {
                b.0 = self.quiet.awaits_partner().then_some(t);
            }
        }
    }

    fn time(&self, now: u64) -> u64 {
        now.saturating_sub(self.base)
    }

    pub fn config(&self) -> Option<&EpochConfig> {
        self.authority.config()
    }

    pub fn superseded(&self) -> bool {
        self.saved.superseded_by.is_some()
    }

    /// The epoch announced in heartbeats (`authority_host::hosted_epoch`).
    pub fn hosted_epoch(&self) -> Option<u64> {
        (!self.superseded()).then_some(self.saved.last_epoch.0)
    }

    /// Configurations the authority issued since the last call (for the checker).
    pub fn newly_issued(&mut self) -> Vec<EpochConfig> {
        let new = self.authority.history[self.reported..]
            .iter()
            .map(|(_, c)| c.clone())
            .collect();
        self.reported = self.authority.history.len();
        new
    }

    fn persist_changes(&mut self) {
        let current = self.authority.config().cloned();
        if current == self.saved.config {
            return;
        }
        if let Some(c) = &current {
            self.saved.last_epoch = self.saved.last_epoch.max(c.epoch);
        }
        self.saved.config = current;
        self.dirty = true;
    }

    /// `AuthorityHost::handle`; `last_sent`: this control service's last heartbeat.
    pub fn handle(
        &mut self,
        now: u64,
        from: NodeId,
        requests: Vec<ToAuthority>,
        pick: u64,
        last_sent: HeartbeatId,
    ) -> Result<Option<Grant>, String> {
        if let Some((n, e)) = self.saved.superseded_by {
            return Err(format!("superseded by node {} at epoch {}", n.0, e.0));
        }
        if !self.nodes.contains(&from) {
            return Err(format!("node {} is not a member", from.0));
        }
        let t = self.time(now);
        self.observe(t, last_sent);
        let quiet = self.quiet.is_quiet(t);
        let requests = if quiet { Vec::new() } else { requests };
        let mut last = None;
        for r in requests {
            if let Some(u) = self.authority.on_message(Time(t), from, r, pick) {
                last = Some(u);
            }
        }
        if !quiet {
            self.authority.run_due(Time(t));
        }
        self.persist_changes();
        Ok(match last {
            Some(u) => {
                let current = self.authority.config().cloned().unwrap_or(u.config);
                let lease = u.lease_until.map(|until| until.0.saturating_sub(t));
                let still_member = current.state_of(from) != MemberState::Out;
                Some(Grant {
                    config: current,
                    lease_duration_ns: lease.filter(|_| still_member && !quiet),
                    split_brain: Vec::new(),
                })
            }
            None => self.authority.config().cloned().map(|config| Grant {
                config,
                lease_duration_ns: None,
                split_brain: Vec::new(),
            }),
        })
    }

    /// `AuthorityHost::tick`: due removals, every 100 ms.
    pub fn tick(&mut self, now: u64, last_sent: HeartbeatId) {
        if self.superseded() {
            return;
        }
        let t = self.time(now);
        self.observe(t, last_sent);
        if self.quiet.is_quiet(t) {
            return;
        }
        self.authority.run_due(Time(t));
        self.persist_changes();
    }

    /// `AuthorityHost::supersede`: stop for good, persisted.
    pub fn supersede(&mut self, by: NodeId, epoch: Epoch) {
        if self.saved.superseded_by.is_none() {
            self.saved.superseded_by = Some((by, epoch));
            self.dirty = true;
        }
    }
}
