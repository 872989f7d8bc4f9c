//! The failover authority: the part of the control service (or witness) that issues
//! configurations and leases. The simulator and `tandem-control` run this same code. It is the single place that decides membership, so it
//! guarantees at most one configuration per epoch; it removes a member only after that
//! member's last lease has expired plus a margin, so a partitioned or paused loser has
//! stopped serving before anyone goes on without it.

use std::collections::BTreeMap;

use crate::generation::{compare, ReplicaMeta, SyncDecision};
use crate::membership::{EpochConfig, MemberState};
use crate::types::{Epoch, GenerationId, NodeId, Time};

/// Deliberate defects of the authority, for checker tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthorityBug {
    /// Removes a suspect at once instead of waiting out its lease.
    LeaseNotWaited,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToAuthority {
    LeaseRequest,
    Verdict { suspect: NodeId, epoch: Epoch },
    Join { meta: ReplicaMeta },
    Synchronized { node: NodeId, epoch: Epoch },
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Update {
    pub config: EpochConfig,
    pub lease_until: Option<Time>,
}

pub struct Authority {
    pub lease_ns: u64,
    pub margin_ns: u64,
    pub bug: Option<AuthorityBug>,
    data_nodes: Vec<NodeId>,
    /// `None` while cold (state lost): waiting for every node's metadata.
    config: Option<EpochConfig>,
    /// Every configuration ever issued, with the time it took effect here.
    pub history: Vec<(Time, EpochConfig)>,
    granted_until: BTreeMap<NodeId, Time>,
    /// Removals waiting for the suspect's lease to run out, with who asked.
    pending_removals: BTreeMap<NodeId, (Time, NodeId)>,
    cold_joins: BTreeMap<NodeId, ReplicaMeta>,
    last_epoch: Epoch,
}

impl Authority {
    pub fn new(
        initial: EpochConfig,
        lease_ns: u64,
        margin_ns: u64,
        bug: Option<AuthorityBug>,
    ) -> Self {
        let data_nodes = initial.members.iter().map(|m| m.0).collect();
        let last_epoch = initial.epoch;
        Authority {
            lease_ns,
            margin_ns,
            bug,
            data_nodes,
            history: vec![(Time(0), initial.clone())],
            config: Some(initial),
            granted_until: BTreeMap::new(),
            pending_removals: BTreeMap::new(),
            cold_joins: BTreeMap::new(),
            last_epoch,
        }
    }

    pub fn config(&self) -> Option<&EpochConfig> {
        self.config.as_ref()
    }

    /// The configuration in force at `t` (for the checker).
    pub fn config_at(&self, t: Time) -> Option<&EpochConfig> {
        self.history
            .iter()
            .rev()
            .find(|(at, _)| *at <= t)
            .map(|(_, c)| c)
    }

    /// The authority loses its state (e.g. the witness's disk together with every node's
    /// power): it rebuilds membership from the nodes' persisted generations.
    pub fn lose_state(&mut self) {
        self.config = None;
        self.pending_removals.clear();
        self.cold_joins.clear();
    }

    fn install(&mut self, now: Time, cfg: EpochConfig) {
        assert!(cfg.epoch > self.last_epoch, "epochs only grow");
        self.last_epoch = cfg.epoch;
        self.history.push((now, cfg.clone()));
        self.config = Some(cfg);
    }

    /// A message from `from`; returns the update to send back to it, if any.
    pub fn on_message(
        &mut self,
        now: Time,
        from: NodeId,
        msg: ToAuthority,
        pick: u64,
    ) -> Option<Update> {
        match msg {
            ToAuthority::LeaseRequest => {}
            ToAuthority::Verdict { suspect, epoch } => {
                let cfg = self.config.as_ref()?;
                if epoch == cfg.epoch
                    && cfg.state_of(from) == MemberState::Synchronized
                    && cfg.state_of(suspect) != MemberState::Out
                    && !self.pending_removals.contains_key(&suspect)
                {
                    let lease_end = self.granted_until.get(&suspect).copied().unwrap_or(Time(0));
                    let due = if self.bug == Some(AuthorityBug::LeaseNotWaited) {
                        now
                    } else {
                        now.max(lease_end.plus_ns(self.margin_ns))
                    };
                    self.pending_removals.insert(suspect, (due, from));
                    self.run_due(now);
                }
            }
            ToAuthority::Join { meta } => match &self.config {
                None => {
                    self.cold_joins.insert(from, meta);
                    self.try_cold_start(now, pick);
                }
                Some(cfg) => {
                    let state = cfg.state_of(from);
                    let others_synced = cfg.synchronized().any(|n| n != from);
                    // A synchronized member is demoted only by a request made in the current
                    // epoch (a restarted process asking to be resynchronized); an older
                    // request is stale and the node may be serving by now.
                    let current_request = meta.epoch == cfg.epoch;
                    if state == MemberState::Out
                        || (state == MemberState::Synchronized && others_synced && current_request)
                    {
                        if let Some(next) = cfg.next(&[(from, MemberState::Syncing)]) {
                            self.install(now, next);
                        }
                    }
                }
            },
            ToAuthority::Synchronized { node, epoch } => {
                let cfg = self.config.as_ref()?;
                if epoch == cfg.epoch
                    && cfg.sequencer == from
                    && cfg.state_of(node) == MemberState::Syncing
                {
                    if let Some(next) = cfg.next(&[(node, MemberState::Synchronized)]) {
                        self.install(now, next);
                    }
                }
            }
        }
        self.reply(now, from)
    }

    /// Removals whose lease wait is over.
    pub fn run_due(&mut self, now: Time) {
        // A request from a node that has since been removed itself no longer counts.
        if let Some(cfg) = &self.config {
            self.pending_removals
                .retain(|_, (_, by)| cfg.state_of(*by) == MemberState::Synchronized);
        }
        let due: Vec<NodeId> = self
            .pending_removals
            .iter()
            .filter(|(_, (t, _))| *t <= now)
            .map(|(&n, _)| n)
            .collect();
        for n in due {
            self.pending_removals.remove(&n);
            let Some(cfg) = &self.config else { continue };
            if cfg.state_of(n) == MemberState::Out {
                continue;
            }
            if let Some(next) = cfg.next(&[(n, MemberState::Out)]) {
                self.install(now, next);
            }
        }
    }

    pub fn next_due(&self) -> Option<Time> {
        self.pending_removals.values().map(|v| v.0).min()
    }

    fn reply(&mut self, now: Time, to: NodeId) -> Option<Update> {
        self.run_due(now);
        let cfg = self.config.clone()?;
        let serving_member =
            cfg.state_of(to) != MemberState::Out && !self.pending_removals.contains_key(&to);
        let lease_until = serving_member.then(|| {
            let until = now.plus_ns(self.lease_ns);
            let g = self.granted_until.entry(to).or_insert(until);
            *g = (*g).max(until);
            until
        });
        Some(Update {
            config: cfg,
            lease_until,
        })
    }

    /// After losing its state, the authority waits for every data node and then picks as
    /// the source a node whose generation is at least as new as every other's (the
    /// generation comparison), never two.
    fn try_cold_start(&mut self, now: Time, pick: u64) {
        if self.cold_joins.len() < self.data_nodes.len() {
            return;
        }
        let metas: Vec<(NodeId, ReplicaMeta)> = self
            .cold_joins
            .iter()
            .map(|(n, m)| (*n, m.clone()))
            .collect();
        let candidates: Vec<NodeId> = metas
            .iter()
            .filter(|(n, m)| {
                metas.iter().filter(|(o, _)| o != n).all(|(o, om)| {
                    matches!(
                        compare(*n, m, *o, om),
                        SyncDecision::InSync | SyncDecision::FastFromMe | SyncDecision::FullFromMe
                    )
                })
            })
            .map(|(n, _)| *n)
            .collect();
        if candidates.is_empty() {
            return; // split brain or unrelated data: an administrator decides
        }
        let source = candidates[(pick % candidates.len() as u64) as usize];
        let epoch = Epoch(
            metas
                .iter()
                .map(|(_, m)| m.epoch.0)
                .max()
                .unwrap_or(0)
                .max(self.last_epoch.0)
                + 1,
        );
        let members = self
            .data_nodes
            .iter()
            .map(|&n| {
                (
                    n,
                    if n == source {
                        MemberState::Synchronized
                    } else {
                        MemberState::Syncing
                    },
                )
            })
            .collect();
        let cfg = EpochConfig {
            epoch,
            sequencer: source,
            members,
            generation: GenerationId::for_config(epoch, source),
            lineage: Vec::new(),
            left_at: Vec::new(),
        };
        self.cold_joins.clear();
        self.install(now, cfg);
    }
}
