//! Data generations: which history a replica's bytes belong to, persisted with the replica.
//!
//! Modelled on DRBD's data-generation UUIDs. `current` names the history this replica holds;
//! `bitmap_base[p]` is the generation that partner `p` last shared with us (set when `p`
//! stopped receiving our writes; our dirty bitmap for `p` counts from there); `history` keeps
//! earlier `current` values so a partner that fell further behind is still recognised as
//! related (full sync rather than "unrelated data").
//!
//! | my side                          | peer side                        | decision              |
//! |----------------------------------|----------------------------------|-----------------------|
//! | current == peer.current          |                                  | in sync (union of bitmaps, may be empty) |
//! | bitmap_base[peer] == peer.current|                                  | fast sync, me → peer  |
//! |                                  | bitmap_base[me] == my current    | fast sync, peer → me  |
//! | history ∋ peer.current           |                                  | full sync, me → peer  |
//! |                                  | history ∋ my current             | full sync, peer → me  |
//! | bitmap_base[peer] == peer.bitmap_base[me] (both went on alone from the same point) | | split brain: never merged |
//! | otherwise                        |                                  | unrelated data: refused |

use crate::types::{Epoch, GenerationId, NodeId};

const HISTORY_LEN: usize = 4;

/// What a replica persists besides its data (the metadata write the engine asks for).
#[derive(Clone, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ReplicaMeta {
    pub current: GenerationId,
    pub bitmap_base: Vec<(NodeId, GenerationId)>,
    pub history: Vec<GenerationId>,
    /// The newest epoch this replica took part in.
    pub epoch: Epoch,
    /// This replica sequenced writes since it was last resynchronized: after a crash it may
    /// hold writes no partner saw, and no surviving bitmap names them, so it needs a full
    /// sync (unless its own journal survived).
    pub was_sequencer: bool,
    /// Bumped on every change so completions of persist requests can be matched.
    pub version: u64,
}

impl ReplicaMeta {
    pub fn new(current: GenerationId) -> Self {
        ReplicaMeta {
            current,
            ..Default::default()
        }
    }

    pub fn bitmap_base(&self, peer: NodeId) -> Option<GenerationId> {
        self.bitmap_base.iter().find(|b| b.0 == peer).map(|b| b.1)
    }

    /// Move to a new history: the old one goes to `history`, and every partner in `left_behind`
    /// that has no base yet gets the old one (its bitmap counts from here).
    pub fn advance(&mut self, next: GenerationId, left_behind: impl Iterator<Item = NodeId>) {
        if next == self.current {
            return;
        }
        for p in left_behind {
            if self.bitmap_base(p).is_none() {
                self.bitmap_base.push((p, self.current));
            }
        }
        self.history.insert(0, self.current);
        self.history.truncate(HISTORY_LEN);
        self.current = next;
    }

    /// `peer` holds our data again: its bitmap is gone.
    pub fn partner_synchronized(&mut self, peer: NodeId) {
        self.bitmap_base.retain(|b| b.0 != peer);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SyncDecision {
    InSync,
    FastFromMe,
    FastFromPeer,
    FullFromMe,
    FullFromPeer,
    SplitBrain,
    Unrelated,
}

/// Decide, from both sides' persisted generations, what a reconnect means.
pub fn compare(me: NodeId, mine: &ReplicaMeta, peer: NodeId, theirs: &ReplicaMeta) -> SyncDecision {
    if mine.current == theirs.current {
        return SyncDecision::InSync;
    }
    let my_base = mine.bitmap_base(peer);
    let their_base = theirs.bitmap_base(me);
    // One side still holds the generation the other moved on from: a plain fast sync (a
    // base left over on the side that did not move on says nothing).
    if my_base == Some(theirs.current) {
        return SyncDecision::FastFromMe;
    }
    if their_base == Some(mine.current) {
        return SyncDecision::FastFromPeer;
    }
    // Both moved on from the same shared generation, each without the other.
    if my_base.is_some() && my_base == their_base {
        return SyncDecision::SplitBrain;
    }
    if mine.history.contains(&theirs.current) {
        return SyncDecision::FullFromMe;
    }
    if theirs.history.contains(&mine.current) {
        return SyncDecision::FullFromPeer;
    }
    SyncDecision::Unrelated
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: NodeId = NodeId(1);
    const B: NodeId = NodeId(2);

    fn pair() -> (ReplicaMeta, ReplicaMeta) {
        (
            ReplicaMeta::new(GenerationId(10)),
            ReplicaMeta::new(GenerationId(10)),
        )
    }

    #[test]
    fn equal_generations_are_in_sync() {
        let (a, b) = pair();
        assert_eq!(compare(A, &a, B, &b), SyncDecision::InSync);
    }

    #[test]
    fn the_side_that_went_on_alone_is_the_fast_sync_source() {
        let (mut a, b) = pair();
        a.advance(GenerationId(20), [B].into_iter());
        assert_eq!(compare(A, &a, B, &b), SyncDecision::FastFromMe);
        assert_eq!(compare(B, &b, A, &a), SyncDecision::FastFromPeer);
    }

    #[test]
    fn both_alone_from_the_same_point_is_split_brain() {
        let (mut a, mut b) = pair();
        a.advance(GenerationId(20), [B].into_iter());
        b.advance(GenerationId(21), [A].into_iter());
        assert_eq!(compare(A, &a, B, &b), SyncDecision::SplitBrain);
        assert_eq!(compare(B, &b, A, &a), SyncDecision::SplitBrain);
    }

    #[test]
    fn a_lost_bitmap_base_falls_back_to_full_sync() {
        let (mut a, b) = pair();
        a.advance(GenerationId(20), [B].into_iter());
        a.partner_synchronized(B); // e.g. the base was dropped by a third partner's sync
        a.advance(GenerationId(30), std::iter::empty());
        assert_eq!(compare(A, &a, B, &b), SyncDecision::FullFromMe);
        assert_eq!(compare(B, &b, A, &a), SyncDecision::FullFromPeer);
    }

    #[test]
    fn a_stale_base_on_the_side_that_stayed_is_not_split_brain() {
        // 3 nodes: C left at 10 (A and B recorded it), then B left too, still at 10; A went
        // on to 20. B's base for C is stale, and C never moved on: A is the source.
        let (mut a, mut b) = pair();
        let c = NodeId(3);
        a.advance(GenerationId(20), [B, c].into_iter());
        b.bitmap_base.push((A, GenerationId(10)));
        assert_eq!(compare(A, &a, B, &b), SyncDecision::FastFromMe);
        assert_eq!(compare(B, &b, A, &a), SyncDecision::FastFromPeer);
    }

    #[test]
    fn unrelated_data_is_refused() {
        let a = ReplicaMeta::new(GenerationId(1));
        let b = ReplicaMeta::new(GenerationId(2));
        assert_eq!(compare(A, &a, B, &b), SyncDecision::Unrelated);
    }
}
