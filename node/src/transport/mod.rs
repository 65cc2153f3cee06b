//! Transports move [`Envelope`]s between the nodes of a cluster. Each one
//! authenticates the sender itself (QUIC: the party index in the peer's
//! certificate) and hands the engine only envelopes whose `from` it has
//! verified; anything else is dropped and counted. Every mode but pure QUIC
//! also seals each envelope end to end for its recipient ([`seal`]), since
//! neither TCP frames nor the operator's relay keep payloads confidential.

pub mod any;
pub mod frame;
pub mod hybrid;
pub mod quic;
pub mod relay;
pub mod seal;
pub mod tcp;

use std::future::Future;
use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

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

/// Longest a send may take, connecting included. A peer that keeps its
/// connection open but stops reading fills the flow-control window, and a
/// write then waits for it for ever: past this, the send fails, the
/// connection is dropped (a frame may be half written), and the failure is
/// counted as `send_timeout`.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends envelopes to other parties; received envelopes arrive on the
/// channel the transport was built with.
pub trait Transport: Send + Sync + 'static {
    /// Sends `envelope` to party `to`, in order with earlier sends to `to`.
    fn send(&self, to: u16, envelope: Envelope) -> impl Future<Output = Result<(), SendError>> + Send;
}

/// Counters of a transport, labelled with its name (`transport="quic"`).
#[derive(Clone, Debug)]
pub struct TransportMetrics {
    /// Envelopes sent.
    pub sent: IntCounter,
    /// Envelopes received and delivered.
    pub received: IntCounter,
    /// Envelopes dropped, by reason (`spoofed_sender`, `malformed_frame`, ...).
    pub dropped: IntCounterVec,
    /// Connections refused or failed, by reason.
    pub connection_failures: IntCounterVec,
    /// Woken when a peer could not be dialled or did not take a message in
    /// time: its address may be stale (a pod re-created on a new IP), and
    /// the node resolves its peers again.
    pub peer_unreachable: std::sync::Arc<tokio::sync::Notify>,
}

impl TransportMetrics {
    /// Registers the counters in `registry`.
    pub fn register(registry: &Registry, transport: &str) -> prometheus::Result<Self> {
        let labels = |name: &str, help: &str| Opts::new(name, help).const_label("transport", transport);
        let sent = IntCounter::with_opts(labels("torcus_p2p_messages_sent_total", "Protocol messages sent"))?;
        let received =
            IntCounter::with_opts(labels("torcus_p2p_messages_received_total", "Protocol messages received"))?;
        let dropped = IntCounterVec::new(
            labels("torcus_p2p_messages_dropped_total", "Protocol messages dropped, by reason"),
            &["reason"],
        )?;
        let connection_failures = IntCounterVec::new(
            labels("torcus_p2p_connection_failures_total", "Peer connections refused or failed, by reason"),
            &["reason"],
        )?;
        // The reasons every transport can give start at 0, so the series
        // exist (and rates work) before the first drop or failure.
        for reason in ["malformed_frame", "spoofed_sender", "unsealable"] {
            dropped.with_label_values(&[reason]);
        }
        for reason in ["connect", "handshake", "send_timeout"] {
            connection_failures.with_label_values(&[reason]);
        }
        registry.register(Box::new(sent.clone()))?;
        registry.register(Box::new(received.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        registry.register(Box::new(connection_failures.clone()))?;
        Ok(Self { sent, received, dropped, connection_failures, peer_unreachable: Default::default() })
    }

    /// Counts a failure to reach a peer (`connect`, `send_timeout`) and
    /// wakes whoever resolves peer addresses.
    pub fn peer_failed(&self, reason: &str) {
        self.connection_failures.with_label_values(&[reason]).inc();
        self.peer_unreachable.notify_one();
    }
}
