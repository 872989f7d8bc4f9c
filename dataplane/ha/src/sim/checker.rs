//! Per-block linearizability checker (Wing & Gong search with Lowe's memoisation).
//!
//! The contract is "one disk, linearizable per block": each block is a register. Every write
//! carries a value no other write uses, so a read names the write it saw. Operations whose
//! outcome is unknown (the host got NOT READY, or no answer) may have taken effect at any
//! moment after they were issued, or never: they never have to be placed, but may be.

use std::collections::HashSet;

/// What one operation did to one block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockOp {
    Write {
        value: u64,
    },
    Read {
        value: u64,
    },
    /// COMPARE AND WRITE that matched.
    Swap {
        expect: u64,
        value: u64,
    },
    /// COMPARE AND WRITE that answered MISCOMPARE.
    Mismatch {
        expect: u64,
    },
}

#[derive(Clone, Copy, Debug)]
pub struct Event {
    pub op: BlockOp,
    pub invoke: u64,
    /// `None`: outcome unknown (may take effect at any time after `invoke`, or never).
    pub response: Option<u64>,
    /// Index into the simulator's history, for the report.
    pub history_index: usize,
}

/// Check one block's history from initial value `initial`. `Ok(true)`: linearizable;
/// `Ok(false)`: the search budget ran out (inconclusive, counted by the caller); `Err` names
/// the operations that could not be placed.
pub fn check_block(initial: u64, events: &[Event], search_budget: usize) -> Result<bool, String> {
    let mut ev: Vec<Event> = events.to_vec();
    // An unknown-outcome write whose value nobody read can only matter to a MISCOMPARE, and
    // only if the block then held exactly the expected value; it is dropped when no MISCOMPARE
    // expects a value that some write wrote (keeps the search small when many writes failed).
    let read_values: HashSet<u64> = ev
        .iter()
        .filter_map(|e| match e.op {
            BlockOp::Read { value } => Some(value),
            BlockOp::Swap { expect, .. } => Some(expect),
            _ => None,
        })
        .collect();
    let written: HashSet<u64> = ev
        .iter()
        .filter_map(|e| match e.op {
            BlockOp::Write { value } | BlockOp::Swap { value, .. } => Some(value),
            _ => None,
        })
        .chain(std::iter::once(initial))
        .collect();
    let any_mismatch =
        ev.iter().any(|e| matches!(e.op, BlockOp::Mismatch { expect } if written.contains(&expect) && e.response.is_some()));
    ev.retain(|e| {
        e.response.is_some()
            || any_mismatch
            || match e.op {
                BlockOp::Write { value } | BlockOp::Swap { value, .. } => {
                    read_values.contains(&value)
                }
                _ => false,
            }
    });
    // Unknown reads/mismatches say nothing.
    ev.retain(|e| {
        e.response.is_some() || matches!(e.op, BlockOp::Write { .. } | BlockOp::Swap { .. })
    });
    ev.sort_by_key(|e| e.invoke);
    let n = ev.len();
    if n == 0 {
        return Ok(true);
    }
    let words = n.div_ceil(64);
    let mut seen: HashSet<(Vec<u64>, u64)> = HashSet::new();
    let mut stack: Vec<(Vec<u64>, u64)> = vec![(vec![0u64; words], initial)];
    let required: usize = ev.iter().filter(|e| e.response.is_some()).count();
    let mut budget = search_budget;
    let mut best: (usize, Vec<u64>, u64) = (0, vec![0u64; words], initial);
    while let Some((mut done, value)) = stack.pop() {
        if budget == 0 {
            // Give up without a verdict rather than run forever; counted by the caller.
            return Ok(false);
        }
        budget -= 1;
        let is_done = |d: &Vec<u64>, i: usize| d[i / 64] & (1 << (i % 64)) != 0;
        let horizon_of = |d: &Vec<u64>| {
            (0..n)
                .filter(|&i| !is_done(d, i))
                .filter_map(|i| ev[i].response)
                .min()
                .unwrap_or(u64::MAX)
        };
        // Reads (and MISCOMPAREs) that agree with the current value never hurt to place at
        // once: they change nothing and only widen what may come next.
        // Placing one only raises the horizon, so every pass places all that qualify; the
        // fixpoint is the same as placing them one at a time.
        loop {
            let horizon = horizon_of(&done);
            let mut placed_any = false;
            for i in 0..n {
                if !is_done(&done, i)
                    && ev[i].invoke <= horizon
                    && match ev[i].op {
                        BlockOp::Read { value: v } => v == value,
                        BlockOp::Mismatch { expect } => expect != value,
                        _ => false,
                    }
                {
                    done[i / 64] |= 1 << (i % 64);
                    placed_any = true;
                }
            }
            if !placed_any {
                break;
            }
        }
        let placed_required = (0..n)
            .filter(|&i| is_done(&done, i) && ev[i].response.is_some())
            .count();
        if placed_required == required {
            if std::env::var_os("TANDEM_SIM_CHECKER_STATS").is_some() {
                eprintln!("block: {n} events, {} states", search_budget - budget);
            }
            return Ok(true);
        }
        if placed_required > best.0 {
            best = (placed_required, done.clone(), value);
        }
        // Anything placed next must have started before every unplaced completed op ended.
        let horizon = horizon_of(&done);
        let mut next: Vec<(u64, usize, u64)> = Vec::new();
        for (i, e) in ev.iter().enumerate() {
            if is_done(&done, i) || e.invoke > horizon {
                continue;
            }
            let v = match e.op {
                BlockOp::Write { value: v } => Some(v),
                BlockOp::Swap { expect, value: v } => (expect == value).then_some(v),
                // Placed eagerly above, or not possible yet.
                BlockOp::Read { .. } | BlockOp::Mismatch { .. } => None,
            };
            if let Some(v) = v {
                next.push((e.response.unwrap_or(u64::MAX), i, v));
            }
        }
        // Depth first, most urgent (earliest response) first: pushed last.
        next.sort_by_key(|e| std::cmp::Reverse(e.0));
        for (_, i, v) in next {
            let mut d = done.clone();
            d[i / 64] |= 1 << (i % 64);
            if seen.insert((d.clone(), v)) {
                stack.push((d, v));
            }
        }
    }
    // Report where the deepest attempt got stuck: the value then, and the first completed
    // operations it could not place.
    let (placed, done, value) = best;
    let stuck: Vec<String> = (0..n)
        .filter(|&i| done[i / 64] & (1 << (i % 64)) == 0 && ev[i].response.is_some())
        .take(4)
        .map(|i| {
            format!(
                "#{} {:?} [{}, {:?}]",
                ev[i].history_index, ev[i].op, ev[i].invoke, ev[i].response
            )
        })
        .collect();
    Err(format!(
        "no linearization: at best {placed} of {required} completed operations placed, value then {value}; stuck at {}",
        stuck.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(op: BlockOp, invoke: u64, response: Option<u64>) -> Event {
        Event {
            op,
            invoke,
            response,
            history_index: 0,
        }
    }

    #[test]
    fn sequential_history_passes() {
        let h = [
            e(BlockOp::Write { value: 1 }, 0, Some(1)),
            e(BlockOp::Read { value: 1 }, 2, Some(3)),
        ];
        assert!(check_block(0, &h, 100_000).is_ok());
    }

    #[test]
    fn stale_read_after_acknowledged_write_fails() {
        let h = [
            e(BlockOp::Write { value: 1 }, 0, Some(1)),
            e(BlockOp::Read { value: 0 }, 2, Some(3)),
        ];
        assert!(check_block(0, &h, 100_000).is_err());
    }

    #[test]
    fn value_flip_back_fails() {
        // Two reads in sequence see the new and then the old value of a concurrent write.
        let h = [
            e(BlockOp::Write { value: 1 }, 0, Some(10)),
            e(BlockOp::Read { value: 1 }, 1, Some(2)),
            e(BlockOp::Read { value: 0 }, 3, Some(4)),
        ];
        assert!(check_block(0, &h, 100_000).is_err());
    }

    #[test]
    fn unknown_write_may_take_effect_late() {
        let h = [
            e(BlockOp::Write { value: 1 }, 0, None),
            e(BlockOp::Read { value: 0 }, 5, Some(6)),
            e(BlockOp::Read { value: 1 }, 7, Some(8)),
        ];
        assert!(check_block(0, &h, 100_000).is_ok());
    }

    #[test]
    fn compare_and_write_is_atomic() {
        // Two swaps expecting the same old value cannot both succeed.
        let h = [
            e(
                BlockOp::Swap {
                    expect: 0,
                    value: 1,
                },
                0,
                Some(5),
            ),
            e(
                BlockOp::Swap {
                    expect: 0,
                    value: 2,
                },
                0,
                Some(5),
            ),
        ];
        assert!(check_block(0, &h, 100_000).is_err());
        let ok = [
            e(
                BlockOp::Swap {
                    expect: 0,
                    value: 1,
                },
                0,
                Some(5),
            ),
            e(BlockOp::Mismatch { expect: 0 }, 0, Some(5)),
        ];
        assert!(check_block(0, &ok, 100_000).is_ok());
    }
}
