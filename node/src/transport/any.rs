//! The transport a node runs, chosen at start-up by the cluster's
//! `transport` mode. [`Transport`] is not object-safe (its method returns
//! `impl Future`), so this enum dispatches instead. Every mode but `quic`
//! wraps its transport in [`AnyTransport::Sealed`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use super::hybrid::HybridTransport;
use super::quic::{PeerAddr, QuicTransport};
use super::relay::RelayTransport;
use super::seal::SealedTransport;
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
    /// Another of these, with every envelope sealed end to end.
    Sealed(Arc<SealedTransport<AnyTransport>>),
}

impl AnyTransport {
    /// Records where party `index` is reached (`host` is also its TLS name).
    pub fn set_peer(&self, index: u16, addr: SocketAddr, host: &str) {
        match self {
            Self::Quic(t) => t.set_peer(index, PeerAddr { addr, server_name: host.to_owned() }),
            Self::Hybrid(t) => t.primary().set_peer(index, PeerAddr { addr, server_name: host.to_owned() }),
            Self::Tcp(t) => t.set_peer(index, addr),
            Self::Relay(_) => {}
            Self::Sealed(t) => t.inner().set_peer(index, addr, host),
        }
    }

    /// Woken when a peer reached at its own address cannot be reached;
    /// `None` for the relay, which addresses no peer.
    pub fn peer_failures(&self) -> Option<Arc<tokio::sync::Notify>> {
        match self {
            Self::Quic(t) => Some(t.peer_failures()),
            Self::Hybrid(t) => Some(t.primary().peer_failures()),
            Self::Tcp(t) => Some(t.peer_failures()),
            Self::Relay(_) => None,
            Self::Sealed(t) => t.inner().peer_failures(),
        }
    }

    /// Dials party `index` ahead of the first message, where that means anything.
    pub async fn connect(&self, index: u16) -> Result<(), SendError> {
        match self {
            Self::Quic(t) => t.connect(index).await,
            Self::Hybrid(t) => t.primary().connect(index).await,
            Self::Tcp(_) | Self::Relay(_) => Ok(()),
            // Boxed: the future would otherwise contain itself.
            Self::Sealed(t) => Box::pin(t.inner().connect(index)).await,
        }
    }

    /// Whether peers are reached at their own addresses (not only through the relay).
    pub fn needs_addresses(&self) -> bool {
        match self {
            Self::Relay(_) => false,
            Self::Sealed(t) => t.inner().needs_addresses(),
            Self::Quic(_) | Self::Tcp(_) | Self::Hybrid(_) => true,
        }
    }

    /// Stops the transport, telling peers where the protocol allows.
    pub async fn close(&self) {
        match self {
            Self::Quic(t) => t.close().await,
            Self::Hybrid(t) => t.primary().close().await,
            Self::Tcp(t) => t.close().await,
            Self::Relay(_) => {}
            Self::Sealed(t) => Box::pin(t.inner().close()).await,
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
            Self::Sealed(t) => boxed_send(t.as_ref(), to, envelope).await,
        }
    }
}

/// `transport.send`, boxed: a sealed transport wraps an [`AnyTransport`], so
/// the future of one send would otherwise contain itself. Generic, so that
/// the future is known to be `Send` from the trait alone.
fn boxed_send<T: Transport>(
    transport: &T,
    to: u16,
    envelope: Envelope,
) -> Pin<Box<dyn Future<Output = Result<(), SendError>> + Send + '_>> {
    Box::pin(transport.send(to, envelope))
}
