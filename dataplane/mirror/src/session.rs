//! One sync link after the bytes are framed: the handshake gate in front of the decoder.
//! Until the peer is authenticated only handshake frames are accepted; afterwards only
//! replication frames.

use tandem_ha::Envelope;
use thiserror::Error;

use crate::codec::{decode_frame, Decoded, LinkMsg};
use crate::error::WireError;
use crate::frame::Limits;
use crate::handshake::{AuthError, Handshake, HandshakeMsg};

/// Why a link must be closed. Both kinds are logged with the peer address and the link id.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum LinkError {
    #[error("malformed frame from peer: {0}")]
    Wire(#[from] WireError),
    #[error("peer failed authentication: {0}")]
    Auth(#[from] AuthError),
}

/// What one inbound frame means for the caller.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// A handshake step; send the reply if there is one.
    Handshake { reply: Option<HandshakeMsg> },
    /// Replication traffic from an authenticated peer, for the engine.
    Message(Envelope<&'a [u8]>),
    /// Link control (sequencing, acknowledgement) from an authenticated peer.
    Link(LinkMsg),
}

pub struct LinkSession {
    handshake: Handshake,
    limits: Limits,
}

impl LinkSession {
    pub fn new(handshake: Handshake, limits: Limits) -> Self {
        LinkSession { handshake, limits }
    }

    pub fn handshake(&self) -> &Handshake {
        &self.handshake
    }

    pub fn handshake_mut(&mut self) -> &mut Handshake {
        &mut self.handshake
    }

    pub fn is_authenticated(&self) -> bool {
        self.handshake.is_authenticated()
    }

    /// Handles one whole frame cut by the [`crate::FrameDecoder`].
    pub fn on_frame<'a>(&mut self, frame: &'a [u8]) -> Result<Inbound<'a>, LinkError> {
        match decode_frame(frame, &self.limits)? {
            Decoded::Handshake(m) => Ok(Inbound::Handshake {
                reply: self.handshake.on_message(&m)?,
            }),
            Decoded::Replication(env) if self.handshake.is_authenticated() => {
                Ok(Inbound::Message(env))
            }
            Decoded::Link(m) if self.handshake.is_authenticated() => Ok(Inbound::Link(m)),
            Decoded::Replication(_) | Decoded::Link(_) => Err(AuthError::NotAuthenticated {
                msg_type: frame[crate::frame::field::MSG_TYPE],
            }
            .into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::encode;
    use crate::handshake::{LinkConfig, Role};
    use tandem_ha::{Epoch, Msg, NodeId, OpId};

    fn session(me: u8, peer: u8, role: Role, nonce: u8) -> LinkSession {
        let cfg = LinkConfig {
            cluster_id: [1; 16],
            node_id: NodeId(me),
            peer_node_id: NodeId(peer),
            device_id: 5,
            link_id: 0,
            boot_id: u64::from(me),
            secret: vec![0x5a; 32],
        };
        LinkSession::new(
            Handshake::new(cfg, role, [nonce; 32], 0).unwrap(),
            Limits::default(),
        )
    }

    fn commit_frame() -> Vec<u8> {
        let env: Envelope<&[u8]> = Envelope {
            epoch: Epoch(1),
            msg: Msg::Commit {
                id: OpId {
                    origin: NodeId(2),
                    n: 1,
                },
            },
        };
        let mut out = Vec::new();
        encode(&env, &Limits::default(), &mut out).unwrap();
        out
    }

    fn frame(m: &HandshakeMsg) -> Vec<u8> {
        let mut out = Vec::new();
        m.encode(&mut out).unwrap();
        out
    }

    #[test]
    fn replication_before_authentication_is_refused() {
        let mut a = session(1, 2, Role::Initiator, 1);
        assert_eq!(
            a.on_frame(&commit_frame()),
            Err(LinkError::Auth(AuthError::NotAuthenticated {
                msg_type: 0x03
            }))
        );
    }

    #[test]
    fn handshake_over_frames_then_traffic_flows() {
        let mut a = session(1, 2, Role::Initiator, 1);
        let mut b = session(2, 1, Role::Acceptor, 2);
        let (ha, hb) = (frame(&a.handshake().hello()), frame(&b.handshake().hello()));
        let Inbound::Handshake { reply: Some(pa) } = a.on_frame(&hb).unwrap() else {
            panic!("no proof")
        };
        let Inbound::Handshake { reply: Some(pb) } = b.on_frame(&ha).unwrap() else {
            panic!("no proof")
        };
        // Half way: B has not proven itself yet, so A still refuses traffic.
        assert!(a.on_frame(&commit_frame()).is_err());
        let mut a = session(1, 2, Role::Initiator, 1);
        a.on_frame(&hb).unwrap();
        a.on_frame(&frame(&pb)).unwrap();
        b.on_frame(&frame(&pa)).unwrap();
        assert!(a.is_authenticated() && b.is_authenticated());
        assert!(matches!(
            b.on_frame(&commit_frame()).unwrap(),
            Inbound::Message(_)
        ));
        assert_eq!(
            b.on_frame(&ha),
            Err(LinkError::Auth(AuthError::AlreadyAuthenticated))
        );
    }
}
