//! The driver's part for node majority with a witness node (`witness_pair` has the rules):
//! where a data node asks, the fence it sends to the witness (persisted before it first asks
//! its partner's authority), the takeover of the vote when the witness is lost, and the
//! hand-back to the witness when it answers again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_config::{NodeConfig, ReplicationConfig};
use tandem_ha::NodeId;

use super::authority_host::{self, AuthorityHost};
use super::driver::{remote_call, AuthorityRequest};
use super::strategy::{self, HeardPartner};
use super::witness_pair::{self, PairPlace, PairTakeover, PairTakeoverInput};
use super::{ha_dir, AuthorityPlace, HaSettings};
use crate::service::Node;

/// What the driver keeps between steps for a witness pair.
pub struct PairState {
    /// The fence persisted on this node (`DATA_DIR/ha/<device>.fence`).
    persisted_fence: u64,
    /// When the witness last answered a request (not a refusal); at first, when this
    /// driver started. A node that restarted while the witness was fenced or gone must be
    /// able to vote too (a local fault that looks like a lost witness is harmless: the
    /// takeover also needs the partner's vote, and a witness that neither node reaches
    /// grants nothing).
    pub witness_answered: Option<Instant>,
    /// The last answer of the authority asked was "cold" (no configuration yet): send the
    /// engine's metadata as a join (a synchronized engine never asks to join by itself).
    pub cold: bool,
    /// A probe of the witness (and hand-back) is under way.
    probing: Arc<AtomicBool>,
    last_probe: Option<Instant>,
}

fn fence_path(node: &Node, device: &str) -> std::path::PathBuf {
    ha_dir(&node.data_dir).join(format!("{device}.fence"))
}

impl PairState {
    pub fn load(node: &Node, device: &str) -> PairState {
        let persisted_fence = std::fs::read_to_string(fence_path(node, device))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        PairState {
            persisted_fence,
            witness_answered: Some(Instant::now()),
            cold: false,
            probing: Arc::new(AtomicBool::new(false)),
            last_probe: None,
        }
    }
}

/// The partner's heartbeat, if heard within the timeout.
fn partner(heard: &[HeardPartner]) -> Option<&HeardPartner> {
    heard.first()
}

fn known_epoch(node: &Node, device: &str) -> u64 {
    node.ha
        .view_mut(device, |v| v.config.as_ref().map_or(0, |c| c.epoch.0))
}

/// Where this data node asks ([`witness_pair::pair_place`]). Before its first request to
/// the partner's authority, the partner's announced epoch is persisted as the fence, so that
/// after a restart of this control service the witness is still fenced.
pub fn place(
    node: &Node,
    device: &str,
    r: &ReplicationConfig,
    heard: &[HeardPartner],
    st: &mut PairState,
) -> AuthorityPlace {
    let hosting_live = authority_host::hosted_epoch(node, device).is_some();
    let p = partner(heard);
    match witness_pair::pair_place(hosting_live, p, known_epoch(node, device)) {
        PairPlace::Here => AuthorityPlace::Local,
        PairPlace::Partner => {
            let epoch = p.map_or(0, |p| p.epoch);
            if epoch > st.persisted_fence {
                let path = fence_path(node, device);
                let saved = std::fs::create_dir_all(ha_dir(&node.data_dir))
                    .and_then(|_| tandem_config::save_atomic(&path, epoch.to_string().as_bytes()));
                if let Err(e) = saved {
                    // Without the fence on disk this node must not vote for the partner.
                    return AuthorityPlace::Unavailable {
                        reason: format!("cannot save the witness fence {}: {e}", path.display()),
                    };
                }
                st.persisted_fence = epoch;
            }
            match r.partners.first() {
                Some(p) => AuthorityPlace::Remote {
                    server: p.name.clone(),
                },
                None => AuthorityPlace::Unavailable {
                    reason: "no partner".into(),
                },
            }
        }
        PairPlace::Witness => match &r.witness {
            Some(w) => AuthorityPlace::Remote { server: w.clone() },
            None => AuthorityPlace::Unavailable {
                reason: "no witness".into(),
            },
        },
    }
}

/// The fence for a request to the witness ([`witness_pair::fence`]).
pub fn fence(node: &Node, device: &str, heard: &[HeardPartner], st: &PairState) -> u64 {
    witness_pair::fence(
        known_epoch(node, device),
        partner(heard).map(|p| p.epoch),
        st.persisted_fence,
    )
}

/// Whether `place` is the witness.
pub fn is_witness(r: &ReplicationConfig, place: &AuthorityPlace) -> bool {
    matches!(place, AuthorityPlace::Remote { server } if Some(server) == r.witness.as_ref())
}

/// Sets the "lost authority" flag of this node's heartbeats (its vote for a takeover) and
/// takes the vote over when [`witness_pair::decide_pair_takeover`] says so.
pub fn consider_takeover(
    node: &Arc<Node>,
    device: &str,
    r: &ReplicationConfig,
    settings: &HaSettings,
    place: &AuthorityPlace,
    heard: &[HeardPartner],
    st: &PairState,
) {
    let now = Instant::now();
    let lease_plus_margin = settings.lease + settings.margin;
    let follows_witness = is_witness(r, place);
    let silent = st
        .witness_answered
        .map(|t| now.saturating_duration_since(t));
    let lost = follows_witness && silent.is_some_and(|s| s > lease_plus_margin);
    node.ha.view_mut(device, |v| v.authority_lost = lost);
    let input = PairTakeoverInput {
        me: NodeId(r.node_id),
        hosting: authority_host::hosted_epoch(node, device).is_some(),
        follows_witness,
        witness_silent_for: silent,
        lease_plus_margin,
        partner: partner(heard).cloned(),
        newest: node.ha.view_mut(device, |v| v.config.clone()),
    };
    let PairTakeover::TakeOver { last_epoch } = witness_pair::decide_pair_takeover(&input) else {
        return;
    };
    match AuthorityHost::take_over_cold(
        &node.data_dir,
        device,
        &strategy::device_nodes(r),
        last_epoch,
        settings,
        now,
    ) {
        Ok(mut host) => {
            // No lease before the partner's vote has been in for a lease plus margin (the
            // driver renews the hold while the partner has not asked).
            host.hold(now, lease_plus_margin);
            tracing::warn!(%device, epoch = last_epoch.0,
                "the witness answered neither data node for longer than a lease plus margin: \
                 this node takes the vote over with its partner's (two of three); the authority \
                 starts cold and picks the newer copy once both nodes sent their metadata");
            authority_host::install(node, host);
            node.ha.view_mut(device, |v| {
                v.took_over_from = Some(authority_host::WITNESS_NODE.0);
                v.authority_lost = false;
            });
        }
        Err(e) => node.ha.view_mut(device, |v| {
            v.last_error = Some(format!("takeover from the witness: {e}"))
        }),
    }
}

/// On the data node hosting the authority: at most once per `every`, asks the witness (with
/// the fence, which stands a returning witness down); if it answers at all and the authority
/// here has a configuration, it stands down and hands the vote back
/// ([`witness_pair::should_hand_back`]). Runs in its own task, so that a dead witness never
/// delays the exchanges with the data plane.
#[allow(clippy::too_many_arguments)]
pub fn maybe_hand_back(
    node: &Arc<Node>,
    device: &str,
    r: &ReplicationConfig,
    config: &Arc<NodeConfig>,
    agent: &ureq::Agent,
    st: &mut PairState,
    every: Duration,
) {
    let hosting_live = authority_host::hosted_epoch(node, device);
    // Also while cold: the probe alone fences a returning witness (its first request tells
    // it); the hand-back needs a configuration.
    let Some(hosted) = hosting_live else { return };
    let Some(witness) = r.witness.clone() else {
        return;
    };
    let now = Instant::now();
    if st
        .last_probe
        .is_some_and(|t| now.saturating_duration_since(t) < every)
    {
        return;
    }
    if st.probing.swap(true, Ordering::SeqCst) {
        return;
    }
    st.last_probe = Some(now);
    let probing = st.probing.clone();
    let (node, device, config, agent) = (
        node.clone(),
        device.to_string(),
        config.clone(),
        agent.clone(),
    );
    let me = NodeId(r.node_id);
    let nodes = strategy::device_nodes(r);
    tokio::spawn(async move {
        let probe = AuthorityRequest {
            from: me,
            nodes: nodes.clone(),
            initial: None,
            requests: Vec::new(),
            fence: Some(hosted),
            hand_back: None,
        };
        let answer = remote_call(&agent, &config, &witness, &device, probe).await;
        // Any HTTP answer (a fenced witness answers 409) means the witness is back.
        let reached = match &answer {
            Ok(_) => true,
            Err(e) => e.contains(": HTTP "),
        };
        let proceed = reached
            && witness_pair::should_hand_back(
                authority_host::hosted_epoch(&node, &device).is_some(),
                authority_host::has_config(&node, &device),
                reached,
            );
        if proceed {
            match authority_host::stand_down_for_witness(&node, &device) {
                Some(Ok(Some(back))) => {
                    let epoch = back.epoch.0;
                    let body = AuthorityRequest {
                        from: me,
                        nodes,
                        initial: None,
                        requests: Vec::new(),
                        fence: None,
                        hand_back: Some(back),
                    };
                    match remote_call(&agent, &config, &witness, &device, body).await {
                        Ok(_) => {
                            tracing::info!(%device, epoch, "the vote is back with the witness")
                        }
                        // The witness then stays fenced: both nodes lose it again and take
                        // the vote over anew (fail safe: this authority stood down first).
                        Err(e) => {
                            tracing::warn!(%device, epoch, "hand-back to the witness failed: {e}")
                        }
                    }
                }
                Some(Err(e)) => tracing::warn!(%device, "cannot stand down for the witness: {e}"),
                _ => {}
            }
        }
        probing.store(false, Ordering::SeqCst);
    });
}
