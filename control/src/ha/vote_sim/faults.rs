//! Faults injected during the active phase, about one every 150 to 900 ms of simulated
//! time.

use super::placement::Placement;
use super::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// One link cut (messages in flight on it are lost).
    Cut(usize),
    Heal(usize),
    /// Every sync link between the data nodes cut (heartbeat links stay as they are).
    CutSync,
    /// Every link of a participant cut.
    Isolate(usize),
    /// The control service of a participant crashes (its durable state survives) and
    /// restarts after `down_ms`. The data plane of a data node keeps running.
    CrashControl {
        p: usize,
        down_ms: u64,
    },
    /// The whole node (control service and data plane) is stopped (SIGSTOP) for `ms`.
    Pause {
        p: usize,
        ms: u64,
    },
    HealLinks,
}

/// What the fault picker needs to know of the world.
pub struct View<'a> {
    pub up: &'a [bool],
    pub participants: usize,
}

pub fn pick(rng: &mut Rng, placement: &dyn Placement, view: &View<'_>) -> Option<Fault> {
    let links = placement.links();
    let fault = match rng.range(0, 100) {
        0..=24 => Fault::Cut(rng.range(0, links.len() as u64) as usize),
        25..=44 => Fault::Heal(rng.range(0, links.len() as u64) as usize),
        45..=54 => Fault::CutSync,
        55..=62 => Fault::Isolate(rng.range(0, view.participants as u64) as usize),
        63..=77 => Fault::CrashControl {
            p: rng.range(0, view.participants as u64) as usize,
            down_ms: if rng.chance(50) {
                rng.range(50, 1000)
            } else {
                rng.range(1000, 5000)
            },
        },
        78..=91 => Fault::Pause {
            p: rng.range(0, view.participants as u64) as usize,
            // Mostly longer than a lease plus margin (2 s); sometimes a short stall.
            ms: if rng.chance(70) {
                rng.range(1600, 6000)
            } else {
                rng.range(100, 1600)
            },
        },
        _ => Fault::HealLinks,
    };
    // The heartbeat strategy's documented price: never leave two data nodes without a
    // heartbeat-carrying link (a total partition between them splits the brain by design).
    if placement.keeps_a_heartbeat_link() {
        let mut up = view.up.to_vec();
        match fault {
            Fault::Cut(l) => up[l] = false,
            Fault::CutSync => {
                for (l, link) in links.iter().enumerate() {
                    if link.kind == super::placement::LinkKind::Sync {
                        up[l] = false;
                    }
                }
            }
            Fault::Isolate(p) => {
                for (l, link) in links.iter().enumerate() {
                    if link.touches(p) {
                        up[l] = false;
                    }
                }
            }
            _ => {}
        }
        let n = placement.data_nodes();
        for a in 0..n {
            for b in a + 1..n {
                let any = links
                    .iter()
                    .enumerate()
                    .any(|(l, k)| up[l] && k.joins(a, b) && k.kind.carries_heartbeats());
                if !any {
                    return None;
                }
            }
        }
    }
    Some(fault)
}
