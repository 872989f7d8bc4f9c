//! The safety checks, run after every step of the simulation.
//!
//! 1. **No two sides acknowledging writes in diverging configurations.** Two data nodes
//!    that serve at the same instant must each be a member (not out) of the other's
//!    configuration, so every write of either goes to the other as well, and equal epochs
//!    must carry equal configurations. Not "the same epoch": when a join completes
//!    (`Syncing` to `Synchronized`), the joiner serves in the new epoch while the
//!    sequencer may still serve in the old one, where the joiner is a syncing write
//!    target; the engine's fencing holds the joiner's messages until the sequencer
//!    catches up. A node serving in a configuration where the other serving node is out
//!    goes on without it: that is the divergence.
//! 2. **Served generations form one line.** Whenever a node serves, the generation of its
//!    configuration must be the newest one served so far or a descendant of it (the
//!    lineage of every configuration ever issued). A node serving an older or an unrelated
//!    generation after another was served would acknowledge writes on a copy that lacks
//!    acknowledged writes: the data-level split brain, even if the two never overlap in
//!    time.
//! 3. **One configuration per epoch**, across every authority that ever issued one.
//! 4. **Epochs issued by one participant strictly increase**, including across restarts
//!    and takeovers; a restarted authority must come back with at least the newest epoch
//!    it issued.

use std::collections::{BTreeMap, BTreeSet};

use tandem_ha::{Epoch, EpochConfig, GenerationId, MemberState, NodeId};

/// Which check failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ViolationKind {
    /// Check 1: two nodes serving at once, one going on without the other.
    DivergingServing,
    /// Check 2: a node serves an ancestor of a generation already served.
    OlderGeneration,
    /// Check 2: a node serves a generation unrelated to the newest one served.
    UnrelatedGeneration,
    /// Check 3.
    TwoConfigurationsOneEpoch,
    /// Check 4: an authority issued an epoch not above its previous one.
    EpochNotIncreasing,
    /// Check 4: a restarted authority came back below an epoch it had issued.
    EpochLost,
    /// No node served within the bound after everything healed (asserted shapes only).
    Liveness,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub kind: ViolationKind,
    pub text: String,
}

impl Violation {
    pub fn new(kind: ViolationKind, text: String) -> Violation {
        Violation { kind, text }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.text)
    }
}

#[derive(Default)]
pub struct Checker {
    issued: BTreeMap<Epoch, (usize, EpochConfig)>,
    max_issued: BTreeMap<usize, Epoch>,
    /// Every generation an issued configuration names as an older one of its own.
    parents: BTreeMap<GenerationId, BTreeSet<GenerationId>>,
    /// The configuration of the newest generation served so far.
    newest_served: Option<EpochConfig>,
    pub issued_count: u64,
}

/// A serving data node: participant, node id, its configuration.
pub struct Serving<'a> {
    pub participant: usize,
    pub node: NodeId,
    pub config: &'a EpochConfig,
}

impl Checker {
    /// `by` issued `config` (a new epoch).
    pub fn issued(&mut self, by: usize, config: &EpochConfig) -> Result<(), Violation> {
        self.issued_count += 1;
        if let Some(prev) = self.max_issued.get(&by) {
            if config.epoch <= *prev {
                return Err(Violation::new(ViolationKind::EpochNotIncreasing, format!(
                    "participant {by} issued epoch {} after epoch {}: epochs of one authority must strictly increase",
                    config.epoch.0, prev.0
                )));
            }
        }
        self.max_issued.insert(by, config.epoch);
        match self.issued.get(&config.epoch) {
            Some((other, c)) if c != config => {
                return Err(Violation::new(ViolationKind::TwoConfigurationsOneEpoch, format!(
                    "two configurations at epoch {}: participant {other} issued {c:?}, participant {by} issued {config:?}",
                    config.epoch.0
                )));
            }
            Some(_) => {}
            None => {
                self.issued.insert(config.epoch, (by, config.clone()));
            }
        }
        let parents = self.parents.entry(config.generation).or_default();
        for g in &config.lineage {
            if *g != config.generation {
                parents.insert(*g);
            }
        }
        Ok(())
    }

    /// Participant `by` opened its authority from its durable state, whose newest epoch is
    /// `last_epoch`.
    pub fn restarted(&mut self, by: usize, last_epoch: Option<Epoch>) -> Result<(), Violation> {
        match (self.max_issued.get(&by), last_epoch) {
            (Some(issued), Some(kept)) if kept < *issued => Err(Violation::new(ViolationKind::EpochLost, format!(
                "participant {by} restarted its authority at epoch {} but had issued epoch {}: an issued epoch was not persisted",
                kept.0, issued.0
            ))),
            (Some(issued), None) => Err(Violation::new(ViolationKind::EpochLost, format!(
                "participant {by} restarted without its authority state but had issued epoch {}",
                issued.0
            ))),
            _ => Ok(()),
        }
    }

    /// `a` descends from (or is) `b`, by the lineages of every issued configuration.
    fn descends(&self, a: GenerationId, b: GenerationId) -> bool {
        let mut seen = BTreeSet::new();
        let mut todo = vec![a];
        while let Some(g) = todo.pop() {
            if g == b {
                return true;
            }
            if seen.insert(g) {
                if let Some(ps) = self.parents.get(&g) {
                    todo.extend(ps.iter().copied());
                }
            }
        }
        false
    }

    /// The data nodes serving at this instant.
    pub fn serving(&mut self, serving: &[Serving<'_>]) -> Result<(), Violation> {
        for (i, a) in serving.iter().enumerate() {
            for b in &serving[i + 1..] {
                let mutual = a.config.state_of(b.node) != MemberState::Out
                    && b.config.state_of(a.node) != MemberState::Out;
                let same_epoch_differs = a.config.epoch == b.config.epoch && a.config != b.config;
                if !mutual || same_epoch_differs {
                    return Err(Violation::new(ViolationKind::DivergingServing, format!(
                        "two nodes serve in diverging configurations: node {} in epoch {} {:?}, node {} in epoch {} {:?}",
                        a.node.0, a.config.epoch.0, a.config.members, b.node.0, b.config.epoch.0, b.config.members
                    )));
                }
            }
        }
        for s in serving {
            let c = s.config;
            let Some(newest) = &self.newest_served else {
                self.newest_served = Some(c.clone());
                continue;
            };
            if c.generation == newest.generation {
                if c.epoch > newest.epoch {
                    self.newest_served = Some(c.clone());
                }
            } else if self.descends(c.generation, newest.generation) {
                self.newest_served = Some(c.clone());
            } else {
                let (kind, how) = if self.descends(newest.generation, c.generation) {
                    (ViolationKind::OlderGeneration, "an older generation than")
                } else {
                    (
                        ViolationKind::UnrelatedGeneration,
                        "a generation unrelated to",
                    )
                };
                return Err(Violation::new(kind, format!(
                    "node {} (participant {}) serves {how} the newest one served: its epoch {} generation {:#x}, after epoch {} generation {:#x} was served; writes acknowledged there are missing here",
                    s.node.0, s.participant, c.epoch.0, c.generation.0, newest.epoch.0, newest.generation.0
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> Vec<NodeId> {
        vec![NodeId(1), NodeId(2)]
    }

    #[test]
    fn two_configurations_at_one_epoch_are_caught() {
        let c1 = EpochConfig::initial(&pair());
        let a = c1.next(&[(NodeId(2), MemberState::Out)]).unwrap();
        let b = c1.next(&[(NodeId(1), MemberState::Out)]).unwrap();
        let mut k = Checker::default();
        k.issued(0, &c1).unwrap();
        k.issued(0, &a).unwrap();
        assert!(k
            .issued(1, &b)
            .unwrap_err()
            .text
            .contains("two configurations"));
        assert!(k
            .issued(0, &a)
            .unwrap_err()
            .text
            .contains("strictly increase"));
        assert!(k.restarted(0, Some(c1.epoch)).is_err());
        assert!(k.restarted(0, Some(a.epoch)).is_ok());
    }

    #[test]
    fn serving_rules() {
        let c1 = EpochConfig::initial(&pair());
        let alone = c1.next(&[(NodeId(2), MemberState::Out)]).unwrap();
        let mut k = Checker::default();
        k.issued(0, &c1).unwrap();
        k.issued(0, &alone).unwrap();
        let s = |p: usize, c| Serving {
            participant: p,
            node: NodeId(p as u8 + 1),
            config: c,
        };
        k.serving(&[s(0, &c1), s(1, &c1)]).unwrap();
        assert!(k.serving(&[s(0, &alone), s(1, &c1)]).is_err());
        k.serving(&[s(0, &alone)]).unwrap();
        // Node 2 serving the old generation after node 1 went on alone: writes lost.
        assert!(k.serving(&[s(1, &c1)]).unwrap_err().text.contains("older"));
    }
}
