//! The simulator's model of a logical unit's reservation logic (what `lu/reservations.rs`
//! does in the data plane, reduced to one WRITE EXCLUSIVE reservation held by a client):
//! the state blob, and what the LU answers by itself or asks the engine to order.

use crate::reservations::PrVersion;

/// The LU's reservation state blob: empty, or one byte naming the holder (client + 1).
pub(super) fn holder(state: &[u8]) -> Option<usize> {
    state.first().map(|&b| usize::from(b) - 1)
}

pub(super) fn held_by(client: usize) -> Vec<u8> {
    vec![u8::try_from(client + 1).expect("few clients")]
}

/// What the LU does with a host command before the engine sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum LuDecision {
    /// RESERVATION CONFLICT, answered by the LU.
    Conflict,
    /// GOOD with nothing to change (a holder reserving again, a non-holder releasing).
    Unchanged,
    /// A change for the engine to order: the new state, computed from `base`.
    Change { base: PrVersion, state: Vec<u8> },
    /// Not a reservation matter: the engine takes it.
    Pass,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PrCmd {
    Reserve,
    Release,
    Write,
    Other,
}

/// SPC-4 WRITE EXCLUSIVE, reduced: only the holder writes; anyone reads; RESERVE by
/// another conflicts; RELEASE by a non-holder is a no-op.
pub(super) fn decide(cmd: PrCmd, client: usize, version: PrVersion, state: &[u8]) -> LuDecision {
    let h = holder(state);
    let other_holds = h.is_some_and(|h| h != client);
    match cmd {
        PrCmd::Reserve if other_holds => LuDecision::Conflict,
        PrCmd::Reserve if h == Some(client) => LuDecision::Unchanged,
        PrCmd::Reserve => LuDecision::Change {
            base: version,
            state: held_by(client),
        },
        PrCmd::Release if h == Some(client) => LuDecision::Change {
            base: version,
            state: Vec::new(),
        },
        PrCmd::Release => LuDecision::Unchanged,
        PrCmd::Write if other_holds => LuDecision::Conflict,
        PrCmd::Write | PrCmd::Other => LuDecision::Pass,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_exclusive_reduced() {
        let v = PrVersion::default();
        let held = held_by(1);
        assert_eq!(holder(&held), Some(1));
        assert_eq!(decide(PrCmd::Write, 0, v, &held), LuDecision::Conflict);
        assert_eq!(decide(PrCmd::Write, 1, v, &held), LuDecision::Pass);
        assert_eq!(decide(PrCmd::Reserve, 0, v, &held), LuDecision::Conflict);
        assert_eq!(decide(PrCmd::Reserve, 1, v, &held), LuDecision::Unchanged);
        assert_eq!(decide(PrCmd::Release, 0, v, &held), LuDecision::Unchanged);
        assert_eq!(
            decide(PrCmd::Release, 1, v, &held),
            LuDecision::Change {
                base: v,
                state: Vec::new()
            }
        );
        assert_eq!(
            decide(PrCmd::Reserve, 2, v, &[]),
            LuDecision::Change {
                base: v,
                state: held_by(2)
            }
        );
        assert_eq!(decide(PrCmd::Other, 2, v, &held), LuDecision::Pass);
    }
}
