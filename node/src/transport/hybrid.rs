//! Hybrid transport: direct (QUIC) first, the HTTP relay when a peer cannot
//! be reached directly.
//!
//! A send goes through the primary transport. When that fails to connect
//! (or knows no address yet), the same envelope goes through the fallback,
//! and a peer the primary could not connect to is marked *relayed* for a
//! cool-down: sends to it go straight to the fallback until the cool-down
//! ends, then the primary is tried again. `torcus_p2p_messages_total{path}`
//! counts which path delivered each message (`p2p` or `relay`), the ratio
//! the dashboards show.
//!
//! Ordering: each path keeps the order of one sender → recipient pair, but
//! when a peer switches path mid-session, messages sent on the new path may
//! overtake those still in flight on the old one (the relay's queue is only
//! read at the next poll; a QUIC stream's buffered bytes may still be
//! travelling). The MPC sessions tolerate this: the round router buffers
//! incoming messages by round and a sender sends each kind of message once
//! per round, so the order across rounds does not matter. Session control
//! is ordered by causality rather than by the path (Start follows the Acks,
//! which follow the Proposal).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus::{IntCounterVec, Opts, Registry};
use tracing::{debug, info};

use super::{SendError, Transport};
use crate::engine::Envelope;

/// How long a peer the primary could not reach stays on the fallback.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(30);

/// Sends through `primary`, falling back to `fallback` per peer.
#[derive(Debug)]
pub struct HybridTransport<P: Transport, R: Transport> {
    primary: Arc<P>,
    fallback: Arc<R>,
    /// Peers on the fallback, and until when.
    relayed: Mutex<HashMap<u16, Instant>>,
    cooldown: Duration,
    /// `torcus_p2p_messages_total{path="p2p"|"relay"}`.
    paths: IntCounterVec,
}

impl<P: Transport, R: Transport> HybridTransport<P, R> {
    /// Combines two running transports (both delivering to the same incoming
    /// channel) and registers the path counter in `registry`.
    pub fn new(primary: Arc<P>, fallback: Arc<R>, registry: &Registry) -> prometheus::Result<Self> {
        let paths = IntCounterVec::new(
            Opts::new("torcus_p2p_messages_total", "Protocol messages sent, by the path that delivered them"),
            &["path"],
        )?;
        registry.register(Box::new(paths.clone()))?;
        Ok(Self { primary, fallback, relayed: Mutex::default(), cooldown: DEFAULT_COOLDOWN, paths })
    }

    /// Sets how long a peer stays on the fallback after the primary failed.
    pub fn with_cooldown(mut self, cooldown: Duration) -> Self {
        self.cooldown = cooldown;
        self
    }

    /// The direct transport.
    pub fn primary(&self) -> &Arc<P> {
        &self.primary
    }

    /// The relay transport.
    pub fn fallback(&self) -> &Arc<R> {
        &self.fallback
    }

    /// Whether sends to `peer` currently skip the primary.
    pub fn is_relayed(&self, peer: u16) -> bool {
        let mut relayed = self.relayed.lock().unwrap_or_else(PoisonError::into_inner);
        match relayed.get(&peer) {
            Some(until) if Instant::now() < *until => true,
            Some(_) => {
                relayed.remove(&peer);
                info!(peer, "relay cool-down over; trying the direct path again");
                false
            }
            None => false,
        }
    }

    async fn relay(&self, to: u16, envelope: Envelope) -> Result<(), SendError> {
        self.fallback.send(to, envelope).await?;
        self.paths.with_label_values(&["relay"]).inc();
        Ok(())
    }
}

impl<P: Transport, R: Transport> Transport for HybridTransport<P, R> {
    async fn send(&self, to: u16, envelope: Envelope) -> Result<(), SendError> {
        if self.is_relayed(to) {
            return self.relay(to, envelope).await;
        }
        // The primary consumes the envelope; keep a copy for the fallback.
        match self.primary.send(to, envelope.clone()).await {
            Ok(()) => {
                self.paths.with_label_values(&["p2p"]).inc();
                Ok(())
            }
            Err(SendError::Connection { reason, .. }) => {
                info!(peer = to, %reason, cooldown = ?self.cooldown, "direct path failed; relaying");
                self.relayed.lock().unwrap_or_else(PoisonError::into_inner).insert(to, Instant::now() + self.cooldown);
                self.relay(to, envelope).await
            }
            // No address yet (the peer's pod is starting): relay this one
            // but try directly next time, as the address may come any moment.
            Err(SendError::NoRoute(_)) => {
                debug!(peer = to, "no direct address; relaying");
                self.relay(to, envelope).await
            }
            // Too large for any path.
            Err(error @ SendError::TooLarge(_)) => Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// The error a stub fails with, for a given peer.
    type Failure = fn(u16) -> SendError;

    /// Fails with `failing` while it is set, and counts what it sends.
    #[derive(Debug, Default)]
    struct Stub {
        failing: Mutex<Option<Failure>>,
        attempts: AtomicU64,
        sent: AtomicU64,
    }

    impl Stub {
        fn failing(error: Failure) -> Arc<Self> {
            Arc::new(Self { failing: Mutex::new(Some(error)), ..Self::default() })
        }
    }

    impl Transport for Stub {
        async fn send(&self, to: u16, _envelope: Envelope) -> Result<(), SendError> {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            match *self.failing.lock().unwrap() {
                Some(error) => Err(error(to)),
                None => {
                    self.sent.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            }
        }
    }

    fn refused(party: u16) -> SendError {
        SendError::Connection { party, reason: "refused".into() }
    }

    fn count(hybrid: &HybridTransport<Stub, Stub>, path: &str) -> u64 {
        hybrid.paths.with_label_values(&[path]).get()
    }

    #[tokio::test]
    async fn a_failed_peer_is_relayed_for_the_cooldown_then_tried_directly() {
        let primary = Stub::failing(refused);
        let fallback = Arc::new(Stub::default());
        let hybrid = HybridTransport::new(Arc::clone(&primary), Arc::clone(&fallback), &Registry::new())
            .unwrap()
            .with_cooldown(Duration::from_millis(200));
        hybrid.send(1, Envelope::default()).await.unwrap();
        hybrid.send(1, Envelope::default()).await.unwrap();
        assert_eq!(primary.attempts.load(Ordering::SeqCst), 1, "the second send skipped the primary");
        assert!(hybrid.is_relayed(1));
        assert!(!hybrid.is_relayed(2), "per peer");
        assert_eq!((count(&hybrid, "p2p"), count(&hybrid, "relay")), (0, 2));

        *primary.failing.lock().unwrap() = None;
        tokio::time::sleep(Duration::from_millis(250)).await;
        hybrid.send(1, Envelope::default()).await.unwrap();
        assert_eq!(primary.sent.load(Ordering::SeqCst), 1, "back on the direct path");
        assert_eq!((count(&hybrid, "p2p"), count(&hybrid, "relay")), (1, 2));
        assert!(!hybrid.is_relayed(1));
    }

    #[tokio::test]
    async fn no_route_relays_without_a_cooldown() {
        let primary = Stub::failing(SendError::NoRoute);
        let fallback = Arc::new(Stub::default());
        let hybrid = HybridTransport::new(Arc::clone(&primary), Arc::clone(&fallback), &Registry::new()).unwrap();
        hybrid.send(3, Envelope::default()).await.unwrap();
        hybrid.send(3, Envelope::default()).await.unwrap();
        assert_eq!(primary.attempts.load(Ordering::SeqCst), 2);
        assert!(!hybrid.is_relayed(3));
        assert_eq!(fallback.sent.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn too_large_is_not_retried_elsewhere_and_fallback_errors_surface() {
        let hybrid = HybridTransport::new(
            Stub::failing(|_| SendError::TooLarge(9)),
            Arc::new(Stub::default()),
            &Registry::new(),
        )
        .unwrap();
        assert!(matches!(hybrid.send(1, Envelope::default()).await, Err(SendError::TooLarge(9))));
        assert_eq!(hybrid.fallback().attempts.load(Ordering::SeqCst), 0);

        let hybrid = HybridTransport::new(Stub::failing(refused), Stub::failing(refused), &Registry::new()).unwrap();
        assert!(matches!(hybrid.send(1, Envelope::default()).await, Err(SendError::Connection { party: 1, .. })));
        assert_eq!((count(&hybrid, "p2p"), count(&hybrid, "relay")), (0, 0), "only deliveries count");
    }
}
