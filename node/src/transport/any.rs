//! The transport a node runs, chosen at start-up by the cluster's
//! `transport` mode. [`Transport`] is not object-safe (its method returns
//! `impl Future`), so this enum dispatches instead.

use std::net::SocketAddr;
use std::sync::Arc;

use super::hybrid::HybridTransport;
use super::quic::{PeerAddr, QuicTransport};
use super::relay::RelayTransport;
use super::tcp::TcpTransport;
use super::{SendError, Transport};
use crate::engine::Envelope;

/// One of the node's transports.
#[derive(Debug, Clone)]
pub enum AnyTransport {
    /// QUIC with mutual TLS.
    Quic(Arc<QuicTransport>),
    /// TCP with signed frames.
    Tcp(Arc<TcpTransport>),
    /// HTTP relay through the operator.
    Relay(Arc<RelayTransport>),
    /// QUIC, falling back to the relay.
    Hybrid(Arc<HybridTransport<QuicTransport, RelayTransport>>),
}

impl AnyTransport {
    /// Records where party `index` is reached (`host` is also its TLS name).
    pub fn set_peer(&self, index: u16, addr: SocketAddr, host: &str) {
        match self {
            Self::Quic(t) => t.set_peer(index, PeerAddr { addr, server_name: host.to_owned() }),
            Self::Hybrid(t) => t.primary().set_peer(index, PeerAddr { addr, server_name: host.to_owned() }),
            Self::Tcp(t) => t.set_peer(index, addr),
            Self::Relay(_) => {}
        }
    }

    /// Dials party `index` ahead of the first message, where that means anything.
    pub async fn connect(&self, index: u16) -> Result<(), SendError> {
        match self {
            Self::Quic(t) => t.connect(index).await,
            Self::Hybrid(t) => t.primary().connect(index).await,
            Self::Tcp(_) | Self::Relay(_) => Ok(()),
        }
    }

    /// Whether peers are reached at their own addresses (not only through the relay).
    pub fn needs_addresses(&self) -> bool {
        !matches!(self, Self::Relay(_))
    }

    /// Stops the transport, telling peers where the protocol allows.
    pub async fn close(&self) {
        match self {
            Self::Quic(t) => t.close().await,
            Self::Hybrid(t) => t.primary().close().await,
            Self::Tcp(t) => t.close().await,
            Self::Relay(_) => {}
        }
    }
}

impl Transport for AnyTransport {
    async fn send(&self, to: u16, envelope: Envelope) -> Result<(), SendError> {
        match self {
            Self::Quic(t) => t.send(to, envelope).await,
            Self::Tcp(t) => t.send(to, envelope).await,
            Self::Relay(t) => t.send(to, envelope).await,
            Self::Hybrid(t) => t.send(to, envelope).await,
        }
    }
}
