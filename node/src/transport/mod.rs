//! Transports move [`Envelope`]s between the nodes of a cluster. Each one
//! authenticates the sender itself (QUIC: the party index in the peer's
//! certificate) and hands the engine only envelopes whose `from` it has
//! verified; anything else is dropped and counted.

pub mod frame;
pub mod quic;

use std::future::Future;

use crate::engine::Envelope;

/// Why a message could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No address is known for the party.
    #[error("no route to party {0}")]
    NoRoute(u16),
    /// The connection could not be made or broke.
    #[error("connection to party {party}: {reason}")]
    Connection {
        /// The peer.
        party: u16,
        /// What went wrong.
        reason: String,
    },
    /// The envelope is larger than a frame may be.
    #[error("message of {0} bytes exceeds the frame limit")]
    TooLarge(usize),
}

/// Sends envelopes to other parties; received envelopes arrive on the
/// channel the transport was built with.
pub trait Transport: Send + Sync + 'static {
    /// Sends `envelope` to party `to`, in order with earlier sends to `to`.
    fn send(&self, to: u16, envelope: Envelope) -> impl Future<Output = Result<(), SendError>> + Send;
}
