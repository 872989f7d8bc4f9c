//! The authenticated handshake that opens every sync link, as a pure state machine (sans-IO:
//! the caller moves bytes, supplies the random nonce and the time).
//!
//! ```text
//!   initiator (dialed)                         acceptor (accepted)
//!     Hello{v, cluster, node, device, link, nonce_i, boot_i}  ──►
//!                 ◄──  Hello{v, cluster, node, device, link, nonce_a, boot_a}
//!     Proof{HMAC(secret, "initiator->acceptor" ‖ ctx)} ──►
//!                 ◄──  Proof{HMAC(secret, "acceptor->initiator" ‖ ctx)}
//!   ctx = version ‖ cluster ‖ device ‖ link ‖ initiator node ‖ acceptor node ‖ nonce_i ‖ nonce_a
//!         ‖ boot_i ‖ boot_a
//! ```
//!
//! Both sides send Hello at once and their Proof as soon as they have the peer's Hello; the
//! two Hellos and the two Proofs may cross on the wire. A side is authenticated when the
//! peer's Proof verifies (HMAC's own constant-time compare). Why each piece is there:
//! * both nonces: a proof from an earlier session (old nonces) never verifies again (replay);
//! * the direction label: a peer cannot send our own proof back to us as its own (reflection),
//!   because the proof we expect is over the other label;
//! * node ids in role order, cluster, device and link: a proof for one link, device, cluster
//!   or pair of nodes is worthless on any other.
//!
//! What it does not do: it authenticates the peer when the link opens, like iSCSI CHAP; the
//! frames after it carry CRCs, not MACs, so an attacker who can rewrite TCP segments on the
//! sync network can still tamper after the handshake. Sync links belong on a private network.
//!
//! ```text
//!   AwaitHello ──Hello ok──► AwaitProof ──Proof ok──► Authenticated
//!        │                      │
//!        └──── any error ───────┴──────────────────► Failed (close the link)
//! ```

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tandem_ha::NodeId;
use thiserror::Error;

use crate::codec::{finish_header, msg_type, Reader};
use crate::error::WireError;
use crate::frame::{Limits, FIXED_HEADER_LEN, PROTOCOL_VERSION};

type HmacSha256 = Hmac<Sha256>;

pub const NONCE_LEN: usize = 32;
pub const MAC_LEN: usize = 32;
pub const CLUSTER_ID_LEN: usize = 16;
/// Shortest per-cluster secret accepted: 128 bits (control generates 32 random bytes).
pub const SECRET_LEN_MIN: usize = 16;
/// A link that is not authenticated this long after it opened is closed, so a stranger
/// cannot hold connection slots open by sending nothing.
pub const HANDSHAKE_TIMEOUT_NS: u64 = 5_000_000_000;

const LABEL_INITIATOR: &[u8] = b"tandem-mirror proof initiator->acceptor";
const LABEL_ACCEPTOR: &[u8] = b"tandem-mirror proof acceptor->initiator";

/// Which side of the TCP connection this node is; it fixes the direction labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// This node dialed the link.
    Initiator,
    /// This node accepted the link.
    Acceptor,
}

/// What this node expects of one sync link.
#[derive(Clone, PartialEq, Eq)]
pub struct LinkConfig {
    pub cluster_id: [u8; CLUSTER_ID_LEN],
    pub node_id: NodeId,
    /// The partner this link must reach; any other node id is refused.
    pub peer_node_id: NodeId,
    pub device_id: u64,
    pub link_id: u16,
    /// This process incarnation (differs on every start). Carried in Hello and bound into
    /// both proofs, so a peer learns, authenticated, that this node restarted.
    pub boot_id: u64,
    /// The per-cluster secret that tandem-control generates and distributes.
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for LinkConfig {
    // The secret never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkConfig")
            .field("cluster_id", &self.cluster_id)
            .field("node_id", &self.node_id)
            .field("peer_node_id", &self.peer_node_id)
            .field("device_id", &self.device_id)
            .field("link_id", &self.link_id)
            .field("boot_id", &self.boot_id)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    pub cluster_id: [u8; CLUSTER_ID_LEN],
    pub node_id: NodeId,
    pub device_id: u64,
    pub link_id: u16,
    pub nonce: [u8; NONCE_LEN],
    /// The sender's process incarnation (`LinkConfig::boot_id`).
    pub boot_id: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeMsg {
    Hello(Hello),
    Proof { mac: [u8; MAC_LEN] },
}

impl HandshakeMsg {
    pub(crate) fn parse_body(msg_type: u8, r: &mut Reader<'_>) -> Result<Self, WireError> {
        match msg_type {
            msg_type::HELLO => Ok(HandshakeMsg::Hello(Hello {
                version: r.u16()?,
                cluster_id: r.bytes()?,
                node_id: NodeId(r.u8()?),
                device_id: r.u64()?,
                link_id: r.u16()?,
                nonce: r.bytes()?,
                boot_id: r.u64()?,
            })),
            msg_type::PROOF => Ok(HandshakeMsg::Proof { mac: r.bytes()? }),
            other => Err(WireError::NotHandshake { msg_type: other }),
        }
    }

    /// Encodes the whole frame (epoch 0, no payload) into `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        out.clear();
        out.resize(FIXED_HEADER_LEN, 0);
        let t = match self {
            HandshakeMsg::Hello(h) => {
                out.extend_from_slice(&h.version.to_le_bytes());
                out.extend_from_slice(&h.cluster_id);
                out.push(h.node_id.0);
                out.extend_from_slice(&h.device_id.to_le_bytes());
                out.extend_from_slice(&h.link_id.to_le_bytes());
                out.extend_from_slice(&h.nonce);
                out.extend_from_slice(&h.boot_id.to_le_bytes());
                msg_type::HELLO
            }
            HandshakeMsg::Proof { mac } => {
                out.extend_from_slice(mac);
                msg_type::PROOF
            }
        };
        finish_header(out, t, 0, 0, 0, 0, &Limits::default())?;
        Ok(())
    }

    fn name(&self) -> &'static str {
        match self {
            HandshakeMsg::Hello(_) => "Hello",
            HandshakeMsg::Proof { .. } => "Proof",
        }
    }
}

/// Why a handshake failed. Each one closes the link and is logged with the peer's address;
/// none is retried on the same connection (the peer reconnects with fresh nonces).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum AuthError {
    #[error(
        "per-cluster secret shorter than {SECRET_LEN_MIN} bytes: regenerate it with tandem-control"
    )]
    WeakSecret,
    #[error("peer speaks mirror protocol version {got}, this node {supported}: upgrade both nodes to the same release")]
    Version { got: u16, supported: u16 },
    #[error("peer belongs to another cluster: check the partner address of this sync link")]
    ClusterMismatch,
    #[error("peer says it is node {got}, this link leads to node {expected}")]
    UnexpectedPeer { expected: NodeId, got: NodeId },
    #[error("peer is configured for device {got}, this link for device {expected}")]
    DeviceMismatch { expected: u64, got: u64 },
    #[error("peer is configured as link {got}, this side as link {expected}")]
    LinkMismatch { expected: u16, got: u16 },
    #[error("peer sent our own nonce back: a reflected or looped-back connection")]
    ReflectedNonce,
    #[error(
        "peer's proof does not verify: wrong per-cluster secret, or a replayed or reflected proof"
    )]
    BadProof,
    #[error("handshake message {got} out of order (expected {expected})")]
    OutOfOrder {
        expected: &'static str,
        got: &'static str,
    },
    #[error("message type {msg_type:#04x} before the link is authenticated")]
    NotAuthenticated { msg_type: u8 },
    #[error("handshake message after the link was authenticated")]
    AlreadyAuthenticated,
    #[error("peer did not authenticate within {HANDSHAKE_TIMEOUT_NS} ns")]
    Timeout,
    #[error("the handshake already failed; close the link")]
    Failed,
}

#[derive(Clone, Debug)]
enum State {
    AwaitHello,
    AwaitProof { peer: Hello },
    Authenticated { peer: Hello },
    Failed,
}

pub struct Handshake {
    cfg: LinkConfig,
    role: Role,
    nonce: [u8; NONCE_LEN],
    started_ns: u64,
    state: State,
}

impl Handshake {
    /// `nonce` must be fresh random bytes (the caller owns the random source); `now_ns` is
    /// when the connection opened.
    pub fn new(
        cfg: LinkConfig,
        role: Role,
        nonce: [u8; NONCE_LEN],
        now_ns: u64,
    ) -> Result<Handshake, AuthError> {
        if cfg.secret.len() < SECRET_LEN_MIN {
            return Err(AuthError::WeakSecret);
        }
        Ok(Handshake {
            cfg,
            role,
            nonce,
            started_ns: now_ns,
            state: State::AwaitHello,
        })
    }

    /// Our Hello: send it as soon as the connection is up.
    pub fn hello(&self) -> HandshakeMsg {
        HandshakeMsg::Hello(Hello {
            version: PROTOCOL_VERSION,
            cluster_id: self.cfg.cluster_id,
            node_id: self.cfg.node_id,
            device_id: self.cfg.device_id,
            link_id: self.cfg.link_id,
            nonce: self.nonce,
            boot_id: self.cfg.boot_id,
        })
    }

    pub fn is_authenticated(&self) -> bool {
        matches!(self.state, State::Authenticated { .. })
    }

    /// The peer's Hello once it is authenticated.
    pub fn peer(&self) -> Option<&Hello> {
        match &self.state {
            State::Authenticated { peer } => Some(peer),
            _ => None,
        }
    }

    /// Call on every poll: fails the handshake once the deadline has passed.
    pub fn on_tick(&mut self, now_ns: u64) -> Result<(), AuthError> {
        match self.state {
            State::Authenticated { .. } => Ok(()),
            State::Failed => Err(AuthError::Failed),
            _ if now_ns.saturating_sub(self.started_ns) > HANDSHAKE_TIMEOUT_NS => {
                self.state = State::Failed;
                Err(AuthError::Timeout)
            }
            _ => Ok(()),
        }
    }

    /// Feeds one handshake message; returns the message to send back, if any. Any error
    /// leaves the machine failed.
    pub fn on_message(&mut self, msg: &HandshakeMsg) -> Result<Option<HandshakeMsg>, AuthError> {
        let r = self.step(msg);
        if r.is_err() {
            self.state = State::Failed;
        }
        r
    }

    fn step(&mut self, msg: &HandshakeMsg) -> Result<Option<HandshakeMsg>, AuthError> {
        match (&self.state, msg) {
            (State::Failed, _) => Err(AuthError::Failed),
            (State::Authenticated { .. }, _) => Err(AuthError::AlreadyAuthenticated),
            (State::AwaitHello, HandshakeMsg::Hello(peer)) => {
                self.check_hello(peer)?;
                let peer = *peer;
                let mac = self.proof(&peer, self.role);
                self.state = State::AwaitProof { peer };
                Ok(Some(HandshakeMsg::Proof { mac }))
            }
            (State::AwaitProof { peer }, HandshakeMsg::Proof { mac }) => {
                let peer = *peer;
                let peer_role = match self.role {
                    Role::Initiator => Role::Acceptor,
                    Role::Acceptor => Role::Initiator,
                };
                let expected = self.mac_for(&peer, peer_role);
                // Constant time: `verify_slice` compares without an early exit.
                expected
                    .verify_slice(mac)
                    .map_err(|_| AuthError::BadProof)?;
                self.state = State::Authenticated { peer };
                Ok(None)
            }
            (State::AwaitHello, other) => Err(AuthError::OutOfOrder {
                expected: "Hello",
                got: other.name(),
            }),
            (State::AwaitProof { .. }, other) => Err(AuthError::OutOfOrder {
                expected: "Proof",
                got: other.name(),
            }),
        }
    }

    fn check_hello(&self, peer: &Hello) -> Result<(), AuthError> {
        if peer.version != PROTOCOL_VERSION {
            return Err(AuthError::Version {
                got: peer.version,
                supported: PROTOCOL_VERSION,
            });
        }
        if peer.cluster_id != self.cfg.cluster_id {
            return Err(AuthError::ClusterMismatch);
        }
        if peer.node_id != self.cfg.peer_node_id {
            return Err(AuthError::UnexpectedPeer {
                expected: self.cfg.peer_node_id,
                got: peer.node_id,
            });
        }
        if peer.device_id != self.cfg.device_id {
            return Err(AuthError::DeviceMismatch {
                expected: self.cfg.device_id,
                got: peer.device_id,
            });
        }
        if peer.link_id != self.cfg.link_id {
            return Err(AuthError::LinkMismatch {
                expected: self.cfg.link_id,
                got: peer.link_id,
            });
        }
        if peer.nonce == self.nonce {
            return Err(AuthError::ReflectedNonce);
        }
        Ok(())
    }

    /// The proof the side in `prover` sends on this link.
    fn proof(&self, peer: &Hello, prover: Role) -> [u8; MAC_LEN] {
        self.mac_for(peer, prover).finalize().into_bytes().into()
    }

    fn mac_for(&self, peer: &Hello, prover: Role) -> HmacSha256 {
        // HMAC takes keys of any length; the error arm cannot happen.
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.cfg.secret)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        let (init_node, acc_node, init_nonce, acc_nonce, init_boot, acc_boot) = match self.role {
            Role::Initiator => (
                self.cfg.node_id,
                peer.node_id,
                &self.nonce,
                &peer.nonce,
                self.cfg.boot_id,
                peer.boot_id,
            ),
            Role::Acceptor => (
                peer.node_id,
                self.cfg.node_id,
                &peer.nonce,
                &self.nonce,
                peer.boot_id,
                self.cfg.boot_id,
            ),
        };
        mac.update(match prover {
            Role::Initiator => LABEL_INITIATOR,
            Role::Acceptor => LABEL_ACCEPTOR,
        });
        mac.update(&PROTOCOL_VERSION.to_le_bytes());
        mac.update(&self.cfg.cluster_id);
        mac.update(&self.cfg.device_id.to_le_bytes());
        mac.update(&self.cfg.link_id.to_le_bytes());
        mac.update(&[init_node.0, acc_node.0]);
        mac.update(init_nonce);
        mac.update(acc_nonce);
        mac.update(&init_boot.to_le_bytes());
        mac.update(&acc_boot.to_le_bytes());
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: NodeId = NodeId(1);
    const B: NodeId = NodeId(2);

    fn cfg(me: NodeId, peer: NodeId) -> LinkConfig {
        LinkConfig {
            cluster_id: [7; 16],
            node_id: me,
            peer_node_id: peer,
            device_id: 42,
            link_id: 1,
            boot_id: 100 + u64::from(me.0),
            secret: b"0123456789abcdef0123456789abcdef".to_vec(),
        }
    }

    fn pair(nonce_a: u8, nonce_b: u8) -> (Handshake, Handshake) {
        (
            Handshake::new(cfg(A, B), Role::Initiator, [nonce_a; 32], 0).unwrap(),
            Handshake::new(cfg(B, A), Role::Acceptor, [nonce_b; 32], 0).unwrap(),
        )
    }

    /// Runs both sides to the end; returns each side's proof.
    fn run(a: &mut Handshake, b: &mut Handshake) -> (HandshakeMsg, HandshakeMsg) {
        let (ha, hb) = (a.hello(), b.hello());
        let pa = a.on_message(&hb).unwrap().unwrap();
        let pb = b.on_message(&ha).unwrap().unwrap();
        assert_eq!(a.on_message(&pb).unwrap(), None);
        assert_eq!(b.on_message(&pa).unwrap(), None);
        (pa, pb)
    }

    #[test]
    fn both_sides_authenticate() {
        let (mut a, mut b) = pair(1, 2);
        run(&mut a, &mut b);
        assert!(a.is_authenticated() && b.is_authenticated());
        assert_eq!(a.peer().unwrap().node_id, B);
        assert_eq!(b.peer().unwrap().node_id, A);
        assert_eq!(a.peer().unwrap().boot_id, 102);
        assert_eq!(b.peer().unwrap().boot_id, 101);
        assert_eq!(
            a.on_message(&b.hello()),
            Err(AuthError::AlreadyAuthenticated)
        );
    }

    #[test]
    fn wrong_secret_fails_both_ways() {
        let (mut a, _) = pair(1, 2);
        let mut other = cfg(B, A);
        other.secret = b"another secret of 32 bytes......".to_vec();
        let mut b = Handshake::new(other, Role::Acceptor, [2; 32], 0).unwrap();
        let pa = a.on_message(&b.hello()).unwrap().unwrap();
        let pb = b.on_message(&a.hello()).unwrap().unwrap();
        assert_eq!(a.on_message(&pb), Err(AuthError::BadProof));
        assert_eq!(b.on_message(&pa), Err(AuthError::BadProof));
        assert!(!a.is_authenticated());
        assert_eq!(a.on_message(&pb), Err(AuthError::Failed));
    }

    #[test]
    fn a_forged_boot_id_fails_the_proof() {
        // A man in the middle rewrites B's boot id (to fake or hide a restart): A's check of
        // B's proof covers the boot id A saw, so it fails.
        let (mut a, mut b) = pair(1, 2);
        let mut hb = match b.hello() {
            HandshakeMsg::Hello(h) => h,
            _ => unreachable!(),
        };
        hb.boot_id ^= 1;
        a.on_message(&HandshakeMsg::Hello(hb)).unwrap();
        let pb = b.on_message(&a.hello()).unwrap().unwrap();
        assert_eq!(a.on_message(&pb), Err(AuthError::BadProof));
    }

    #[test]
    fn reflected_proof_is_refused() {
        // An attacker without the secret answers A's dial claiming to be B, then sends A's
        // own proof back as its own. Without the direction label it would verify.
        let (mut a, _) = pair(1, 2);
        let mut attacker_hello = match a.hello() {
            HandshakeMsg::Hello(h) => h,
            _ => unreachable!(),
        };
        attacker_hello.node_id = B;
        attacker_hello.nonce = [9; 32];
        let pa = a
            .on_message(&HandshakeMsg::Hello(attacker_hello))
            .unwrap()
            .unwrap();
        assert_eq!(a.on_message(&pa), Err(AuthError::BadProof));
    }

    #[test]
    fn mirrored_hello_is_refused() {
        // A's own Hello sent back to it: wrong node id, and with the node id forged, A's nonce.
        let (mut a, _) = pair(1, 2);
        assert!(matches!(
            a.on_message(&a.hello()),
            Err(AuthError::UnexpectedPeer { .. })
        ));
        let (mut a, _) = pair(1, 2);
        let mut h = match a.hello() {
            HandshakeMsg::Hello(h) => h,
            _ => unreachable!(),
        };
        h.node_id = B;
        assert_eq!(
            a.on_message(&HandshakeMsg::Hello(h)),
            Err(AuthError::ReflectedNonce)
        );
    }

    #[test]
    fn replayed_proof_from_an_earlier_session_is_refused() {
        let (mut a, mut b) = pair(1, 2);
        let (_, old_pb) = run(&mut a, &mut b);
        // A new session: A has a fresh nonce, the replaying attacker reuses B's old Hello.
        let (mut a2, b_old) = pair(3, 2);
        a2.on_message(&b_old.hello()).unwrap();
        assert_eq!(a2.on_message(&old_pb), Err(AuthError::BadProof));
    }

    #[test]
    fn wrong_version_cluster_device_link_and_peer_are_refused() {
        let base = match pair(1, 2).1.hello() {
            HandshakeMsg::Hello(h) => h,
            _ => unreachable!(),
        };
        type Edit = fn(&mut Hello);
        let cases: [(Edit, AuthError); 5] = [
            (
                |h| h.version = 3,
                AuthError::Version {
                    got: 3,
                    supported: 2,
                },
            ),
            (|h| h.cluster_id[0] ^= 1, AuthError::ClusterMismatch),
            (
                |h| h.node_id = NodeId(3),
                AuthError::UnexpectedPeer {
                    expected: B,
                    got: NodeId(3),
                },
            ),
            (
                |h| h.device_id = 43,
                AuthError::DeviceMismatch {
                    expected: 42,
                    got: 43,
                },
            ),
            (
                |h| h.link_id = 2,
                AuthError::LinkMismatch {
                    expected: 1,
                    got: 2,
                },
            ),
        ];
        for (edit, want) in cases {
            let (mut a, _) = pair(1, 2);
            let mut h = base;
            edit(&mut h);
            assert_eq!(a.on_message(&HandshakeMsg::Hello(h)), Err(want));
        }
    }

    #[test]
    fn proof_before_hello_is_out_of_order() {
        let (mut a, _) = pair(1, 2);
        assert_eq!(
            a.on_message(&HandshakeMsg::Proof { mac: [0; 32] }),
            Err(AuthError::OutOfOrder {
                expected: "Hello",
                got: "Proof"
            })
        );
        let (mut a, b) = pair(1, 2);
        a.on_message(&b.hello()).unwrap();
        assert!(matches!(
            a.on_message(&b.hello()),
            Err(AuthError::OutOfOrder { .. })
        ));
    }

    #[test]
    fn weak_secret_and_timeout() {
        let mut c = cfg(A, B);
        c.secret = b"short".to_vec();
        assert!(matches!(
            Handshake::new(c, Role::Initiator, [0; 32], 0),
            Err(AuthError::WeakSecret)
        ));
        let (mut a, _) = pair(1, 2);
        assert_eq!(a.on_tick(HANDSHAKE_TIMEOUT_NS), Ok(()));
        assert_eq!(a.on_tick(HANDSHAKE_TIMEOUT_NS + 1), Err(AuthError::Timeout));
        assert_eq!(a.on_tick(0), Err(AuthError::Failed));
    }

    #[test]
    fn secret_is_not_in_debug_output() {
        assert!(!format!("{:?}", cfg(A, B)).contains("0123456789"));
    }
}
