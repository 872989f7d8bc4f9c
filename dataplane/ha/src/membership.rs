//! A device's membership for one epoch, as decided by the failover authority.
//!
//! ```text
//!            join (verdict)            resync done (verdict)
//!   Out ─────────────────────► Syncing ──────────────────────► Synchronized
//!    ▲                            │                                  │
//!    └──── partner out verdict ───┴──────────────────────────────────┘
//! ```
//! Only `Synchronized` members serve host I/O. `Syncing` members receive every new write
//! (so a region already copied stays current) but serve nothing. `Out` members receive
//! nothing; every write marks its regions dirty for them.

use crate::types::{Epoch, GenerationId, NodeId};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MemberState {
    Synchronized,
    Syncing,
    Out,
}

/// One configuration of a replicated device. Issued only by the failover authority, which
/// guarantees that at most one configuration exists per epoch.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EpochConfig {
    pub epoch: Epoch,
    /// Orders every write of this epoch (holds the cluster-wide range locks). Sticky: it
    /// changes only when it leaves the synchronized set.
    pub sequencer: NodeId,
    pub members: Vec<(NodeId, MemberState)>,
    /// The data generation that the synchronized members hold in this epoch.
    pub generation: GenerationId,
    /// Earlier generations of the synchronized set, newest first (bounded): a replica that
    /// missed some configurations still learns the whole lineage of the data it holds.
    pub lineage: Vec<GenerationId>,
    /// For each member that is not synchronized: the generation the synchronized set held
    /// when it stopped being synchronized (what its copy and the survivors last shared).
    pub left_at: Vec<(NodeId, GenerationId)>,
}

/// How many earlier generations a configuration carries.
pub const LINEAGE_LEN: usize = 8;

impl EpochConfig {
    /// The first configuration of a device: every listed node synchronized, the lowest id
    /// sequences (all replicas start identical: created zeroed, or after an initial sync).
    pub fn initial(nodes: &[NodeId]) -> Self {
        let mut members: Vec<_> = nodes
            .iter()
            .map(|&n| (n, MemberState::Synchronized))
            .collect();
        members.sort_by_key(|m| m.0);
        let sequencer = members[0].0;
        EpochConfig {
            epoch: Epoch(1),
            sequencer,
            members,
            generation: GenerationId::for_config(Epoch(1), sequencer),
            lineage: Vec::new(),
            left_at: Vec::new(),
        }
    }

    pub fn state_of(&self, n: NodeId) -> MemberState {
        self.members
            .iter()
            .find(|m| m.0 == n)
            .map_or(MemberState::Out, |m| m.1)
    }

    /// Nodes that must receive every write of this epoch (everyone but the out ones).
    pub fn write_targets(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members
            .iter()
            .filter(|m| m.1 != MemberState::Out)
            .map(|m| m.0)
    }

    pub fn synchronized(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members
            .iter()
            .filter(|m| m.1 == MemberState::Synchronized)
            .map(|m| m.0)
    }

    pub fn left_at(&self, n: NodeId) -> Option<GenerationId> {
        self.left_at.iter().find(|l| l.0 == n).map(|l| l.1)
    }

    pub fn out_nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members
            .iter()
            .filter(|m| m.1 == MemberState::Out)
            .map(|m| m.0)
    }

    /// The next configuration: `changes` applied, a new epoch, the sequencer kept if it is
    /// still synchronized (else the lowest synchronized id), and a new generation when a
    /// member stopped receiving writes (the survivors' data now differ from its copy).
    pub fn next(&self, changes: &[(NodeId, MemberState)]) -> Option<EpochConfig> {
        let mut members = self.members.clone();
        let mut left_at = self.left_at.clone();
        let mut lost_member = false;
        for &(n, s) in changes {
            let before = members
                .iter()
                .find(|m| m.0 == n)
                .map_or(MemberState::Out, |m| m.1);
            if before == MemberState::Synchronized && s != MemberState::Synchronized {
                left_at.retain(|l| l.0 != n);
                left_at.push((n, self.generation));
            }
            if s == MemberState::Synchronized {
                left_at.retain(|l| l.0 != n);
            }
            // A member that stops being synchronized (out, or demoted to syncing after a
            // restart) no longer holds what the survivors write next: the survivors' data
            // becomes a new history, so a later comparison (e.g. an authority rebuilding
            // membership after losing its state) can never take the demoted copy for theirs.
            if (before != MemberState::Out && s == MemberState::Out)
                || (before == MemberState::Synchronized && s != MemberState::Synchronized)
            {
                lost_member = true;
            }
            match members.iter_mut().find(|m| m.0 == n) {
                Some(m) => m.1 = s,
                None => members.push((n, s)),
            }
        }
        members.sort_by_key(|m| m.0);
        let synced: Vec<NodeId> = members
            .iter()
            .filter(|m| m.1 == MemberState::Synchronized)
            .map(|m| m.0)
            .collect();
        let sequencer = if synced.contains(&self.sequencer) {
            self.sequencer
        } else {
            *synced.first()?
        };
        let epoch = Epoch(self.epoch.0 + 1);
        let mut lineage = self.lineage.clone();
        let generation = if lost_member {
            lineage.insert(0, self.generation);
            lineage.truncate(LINEAGE_LEN);
            GenerationId::for_config(epoch, sequencer)
        } else {
            self.generation
        };
        Some(EpochConfig {
            epoch,
            sequencer,
            members,
            generation,
            lineage,
            left_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losing_a_member_bumps_the_generation_and_keeps_a_live_sequencer() {
        let c1 = EpochConfig::initial(&[NodeId(1), NodeId(2)]);
        let c2 = c1.next(&[(NodeId(2), MemberState::Out)]).unwrap();
        assert_eq!(c2.sequencer, NodeId(1));
        assert_ne!(c2.generation, c1.generation);
        let c3 = c1.next(&[(NodeId(1), MemberState::Out)]).unwrap();
        assert_eq!(c3.sequencer, NodeId(2));
        let c4 = c2.next(&[(NodeId(2), MemberState::Syncing)]).unwrap();
        assert_eq!(
            c4.generation, c2.generation,
            "joining does not create a new history"
        );
        assert!(
            c2.next(&[(NodeId(1), MemberState::Out)]).is_none(),
            "no synchronized member left"
        );
    }
}
