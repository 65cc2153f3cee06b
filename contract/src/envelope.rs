//! One protocol message between two parties of a session, and its binary
//! form, which every transport carries (QUIC and TCP streams frame it, the
//! HTTP relay queues it): the nodes and the operator's relay read and write
//! it the same way.
//!
//! Layout (big-endian): `session[32] ‖ channel u8 (0 protocol, 1 control,
//! 2 hello) ‖ from u16 ‖ to u16 (0xFFFF = broadcast) ‖ seq u64 ‖ payload`.

use serde::{Deserialize, Serialize};

/// One protocol message between two parties of a session, as transports
/// carry it. `from` is what the transport authenticated (for QUIC, the party
/// index in the peer's certificate), never what the sender claims.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Session the message belongs to.
    pub session: [u8; 32],
    /// Session control (Proposal, Ack, Start, Abort) or protocol traffic.
    pub channel: Channel,
    /// Sending party (keygen index).
    pub from: u16,
    /// Receiving party, or `None` for a broadcast.
    pub to: Option<u16>,
    /// Per-sender sequence number within the session.
    pub seq: u64,
    /// The protocol message, serialized.
    pub payload: Vec<u8>,
}

/// What an envelope carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Channel {
    /// A message of the MPC protocol.
    #[default]
    Protocol,
    /// A session control message ([`crate::Control`], JSON).
    Control,
    /// A transport's own greeting (the sender's boot id); never reaches a session.
    Hello,
}

/// Largest frame body accepted: far above the largest CGGMP24 message
/// (aux info proofs, a few hundred KiB for n = 16), far below memory trouble.
pub const MAX_FRAME: usize = 8 << 20;
const HEADER: usize = 32 + 1 + 2 + 2 + 8;
const BROADCAST: u16 = u16::MAX;

/// Why bytes are not a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// The body is shorter than an envelope header.
    #[error("frame of {0} bytes is too short for an envelope")]
    TooShort(usize),
    /// The channel byte names no known channel.
    #[error("unknown channel {0}")]
    UnknownChannel(u8),
    /// The stream failed or ended mid-frame.
    #[error("reading a frame: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes an envelope's body.
pub fn encode(env: &Envelope) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + env.payload.len());
    out.extend_from_slice(&env.session);
    out.push(match env.channel {
        Channel::Protocol => 0,
        Channel::Control => 1,
        Channel::Hello => 2,
    });
    out.extend_from_slice(&env.from.to_be_bytes());
    out.extend_from_slice(&env.to.unwrap_or(BROADCAST).to_be_bytes());
    out.extend_from_slice(&env.seq.to_be_bytes());
    out.extend_from_slice(&env.payload);
    out
}

/// Decodes an envelope's body.
pub fn decode(body: &[u8]) -> Result<Envelope, FrameError> {
    if body.len() < HEADER {
        return Err(FrameError::TooShort(body.len()));
    }
    let (session, rest) = body.split_at(32);
    let channel = match rest[0] {
        0 => Channel::Protocol,
        1 => Channel::Control,
        2 => Channel::Hello,
        other => return Err(FrameError::UnknownChannel(other)),
    };
    let rest = &rest[1..];
    let u16_at = |i: usize| u16::from_be_bytes([rest[i], rest[i + 1]]);
    let to = u16_at(2);
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&rest[4..12]);
    Ok(Envelope {
        session: session.try_into().map_err(|_| FrameError::TooShort(body.len()))?,
        channel,
        from: u16_at(0),
        to: (to != BROADCAST).then_some(to),
        seq: u64::from_be_bytes(seq),
        payload: rest[12..].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_what_is_no_envelope() {
        for to in [Some(2), None] {
            let env =
                Envelope { session: [3; 32], channel: Channel::Control, from: 1, to, seq: 42, payload: b"hi".to_vec() };
            assert_eq!(decode(&encode(&env)).unwrap(), env);
        }
        assert!(matches!(decode(&[0; HEADER - 1]), Err(FrameError::TooShort(_))));
        let mut unknown = vec![0; HEADER];
        unknown[32] = 3;
        assert!(matches!(decode(&unknown), Err(FrameError::UnknownChannel(3))));
    }
}
