//! QUIC transport (quinn + rustls): mutual TLS against the cluster CA.
//!
//! Who sent a message is read from the peer's certificate — the party index
//! in its `spiffe://…/party/<i>` identity — never from the message: an
//! envelope whose `from` differs from the certificate's index is dropped and
//! counted. A peer whose certificate is not a node of this very cluster is
//! refused at connection time. Each direction between two nodes uses one
//! long-lived unidirectional stream, so messages arrive in the order sent;
//! a broken connection is re-established on the next send.
//!
//! Every stream starts with a hello naming the sender's boot id (random per
//! process). When a peer's boot id changes, the peer restarted: the
//! connection this node held to its previous run is dead, so it is dropped
//! at once instead of swallowing messages until the idle timeout. A node
//! dials every peer when it starts, so its peers learn of the restart
//! before anything is sent.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, SendStream};
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;
use torcus_certs::{Role, SecretPem};
use tracing::{debug, warn};

use super::{SEND_TIMEOUT, SendError, Transport, TransportMetrics, frame};
use crate::engine::{Channel, Envelope};

/// ALPN protocol of node-to-node traffic.
pub const ALPN: &[u8] = b"torcus-p2p/1";
/// How long a connection attempt may take before the peer counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Most connections one peer may hold open to this node at once.
const MAX_CONNECTIONS_PER_PEER: usize = 4;

/// Where a peer listens and the name its certificate carries.
#[derive(Clone, Debug)]
pub struct PeerAddr {
    /// UDP address.
    pub addr: SocketAddr,
    /// TLS server name (a DNS SAN of the peer's certificate).
    pub server_name: String,
}

/// Everything a QUIC transport needs.
#[derive(Clone, Debug)]
pub struct QuicConfig {
    /// This node's party index.
    pub me: u16,
    /// Namespace of the cluster; peers must be nodes of the same cluster.
    pub namespace: String,
    /// Name of the cluster.
    pub cluster: String,
    /// Local UDP address to bind.
    pub listen: SocketAddr,
    /// Other parties.
    pub peers: HashMap<u16, PeerAddr>,
    /// This node's certificate chain (PEM).
    pub cert_chain_pem: String,
    /// This node's private key.
    pub key: SecretPem,
    /// CAs to trust (PEM bundle).
    pub trust_bundle_pem: String,
}

/// Why the transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    /// TLS configuration failed.
    #[error("tls: {0}")]
    Tls(#[from] torcus_certs::Error),
    /// rustls configuration unusable for QUIC.
    #[error("quic tls: {0}")]
    QuicTls(String),
    /// The socket could not be bound.
    #[error("binding {0}: {1}")]
    Bind(SocketAddr, #[source] std::io::Error),
    /// The metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// A running QUIC transport.
#[derive(Debug)]
pub struct QuicTransport {
    me: u16,
    namespace: String,
    cluster: String,
    endpoint: Endpoint,
    /// What this node dials with: its certificate and the CAs it trusts now.
    client: std::sync::RwLock<quinn::ClientConfig>,
    peers: std::sync::RwLock<HashMap<u16, PeerAddr>>,
    outbound: Mutex<HashMap<u16, Arc<Outbound>>>,
    /// One connection attempt per peer at a time, without holding
    /// `outbound`: a peer slow to answer never holds up sends to the others.
    connecting: std::sync::Mutex<HashMap<u16, Arc<Mutex<()>>>>,
    metrics: TransportMetrics,
    incoming: mpsc::Sender<Envelope>,
    shutdown: CancellationToken,
    /// Random per process: tells peers this is a new run.
    boot_id: [u8; 16],
    /// The boot id each peer last greeted with.
    peer_boots: std::sync::Mutex<HashMap<u16, Vec<u8>>>,
}

/// The endpoint's server and client configurations for this certificate,
/// key and trust bundle.
fn quic_configs(
    cert_chain_pem: &str,
    key: &SecretPem,
    trust_bundle_pem: &str,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), QuicError> {
    let server_tls = torcus_certs::server_config(cert_chain_pem, key, trust_bundle_pem, &[ALPN])?;
    let client_tls = torcus_certs::client_config(cert_chain_pem, key, trust_bundle_pem, &[ALPN])?;
    let mut transport_config = quinn::TransportConfig::default();
    transport_config
        .max_concurrent_uni_streams(8u32.into())
        .max_concurrent_bidi_streams(0u32.into())
        .keep_alive_interval(Some(Duration::from_secs(2)))
        .max_idle_timeout(Some(Duration::from_secs(10).try_into().map_err(|e| QuicError::QuicTls(format!("{e}")))?));
    let transport_config = Arc::new(transport_config);
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(
        QuicServerConfig::try_from(server_tls).map_err(|e| QuicError::QuicTls(e.to_string()))?,
    ));
    server.transport_config(transport_config.clone());
    let mut client = quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(client_tls).map_err(|e| QuicError::QuicTls(e.to_string()))?,
    ));
    client.transport_config(transport_config);
    Ok((server, client))
}

#[derive(Debug)]
struct Outbound {
    connection: Connection,
    stream: Mutex<SendStream>,
    /// The address it was dialled at (not `remote_address()`, which an
    /// IPv6 endpoint reports IPv4-mapped).
    dialled: SocketAddr,
}

impl QuicTransport {
    /// Binds the endpoint and starts accepting peers; received envelopes go
    /// to `incoming` until `shutdown` is cancelled.
    pub fn bind(
        config: QuicConfig,
        incoming: mpsc::Sender<Envelope>,
        metrics: TransportMetrics,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, QuicError> {
        let QuicConfig { me, namespace, cluster, listen, peers, cert_chain_pem, key, trust_bundle_pem } = config;
        let (server, client) = quic_configs(&cert_chain_pem, &key, &trust_bundle_pem)?;
        let endpoint = Endpoint::server(server, listen).map_err(|e| QuicError::Bind(listen, e))?;

        let mut boot_id = [0u8; 16];
        getrandom::fill(&mut boot_id).map_err(|e| QuicError::QuicTls(format!("random boot id: {e}")))?;
        let this = Arc::new(Self {
            me,
            namespace,
            cluster,
            endpoint,
            client: std::sync::RwLock::new(client),
            peers: std::sync::RwLock::new(peers),
            outbound: Mutex::new(HashMap::new()),
            connecting: std::sync::Mutex::new(HashMap::new()),
            metrics,
            incoming,
            shutdown,
            boot_id,
            peer_boots: std::sync::Mutex::new(HashMap::new()),
        });
        tokio::spawn(Arc::clone(&this).accept_loop());
        Ok(this)
    }

    /// Replaces this node's certificate, key and trust bundle: connections
    /// made from now on, dialled or accepted, use them; connections already
    /// open keep what they were authenticated with, so no session in flight
    /// is cut. Nothing changes when the new files do not make a configuration.
    pub fn reload_tls(&self, cert_chain_pem: &str, key: &SecretPem, trust_bundle_pem: &str) -> Result<(), QuicError> {
        let (server, client) = quic_configs(cert_chain_pem, key, trust_bundle_pem)?;
        self.endpoint.set_server_config(Some(server));
        *self.client.write().unwrap_or_else(std::sync::PoisonError::into_inner) = client;
        Ok(())
    }

    /// Woken when a peer cannot be reached ([`TransportMetrics::peer_failed`]).
    pub fn peer_failures(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.metrics.peer_unreachable)
    }

    /// Sets or replaces where party `index` is reached (addresses become
    /// known as pods start, and change when a pod is made again).
    pub fn set_peer(&self, index: u16, peer: PeerAddr) {
        self.peers.write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(index, peer);
    }

    /// Connects to party `to` now rather than on the first send. A node does
    /// this for every peer when it starts, so peers that still hold a
    /// connection to its previous run switch to the new one at once.
    pub async fn connect(&self, to: u16) -> Result<(), SendError> {
        self.outbound(to).await.map(|_| ())
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Closes every connection and waits until peers were told.
    pub async fn close(&self) {
        self.endpoint.close(0u32.into(), b"shutdown");
        self.endpoint.wait_idle().await;
    }

    async fn accept_loop(self: Arc<Self>) {
        let shutdown = self.shutdown.clone();
        let per_peer: Arc<std::sync::Mutex<HashMap<u16, usize>>> = Arc::default();
        loop {
            let connecting = tokio::select! {
                c = self.endpoint.accept() => match c { Some(c) => c, None => break },
                () = shutdown.cancelled() => break,
            };
            let this = Arc::clone(&self);
            let per_peer = Arc::clone(&per_peer);
            tokio::spawn(async move {
                let connection = match connecting.await {
                    Ok(c) => c,
                    Err(error) => {
                        // Includes handshakes refused by the certificate verifier.
                        this.metrics.connection_failures.with_label_values(&["handshake"]).inc();
                        debug!(%error, "inbound handshake failed");
                        return;
                    }
                };
                let Some(peer) = this.authenticate(&connection) else { return };
                {
                    let mut counts = per_peer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    let count = counts.entry(peer).or_default();
                    if *count >= MAX_CONNECTIONS_PER_PEER {
                        this.metrics.connection_failures.with_label_values(&["connection_limit"]).inc();
                        connection.close(2u32.into(), b"too many connections");
                        return;
                    }
                    *count += 1;
                }
                this.serve_connection(peer, connection).await;
                let mut counts = per_peer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Some(count) = counts.get_mut(&peer) {
                    *count = count.saturating_sub(1);
                }
            });
        }
    }

    /// The party index of a connected peer, if its certificate names a node
    /// of this cluster; otherwise the connection is closed and counted.
    fn authenticate(&self, connection: &Connection) -> Option<u16> {
        let identity = connection
            .peer_identity()
            .and_then(|any| any.downcast::<Vec<torcus_certs::rustls::pki_types::CertificateDer<'static>>>().ok())
            .and_then(|chain| chain.first().and_then(|leaf| torcus_certs::peer_identity(leaf).ok()));
        match identity {
            Some(id) if id.namespace == self.namespace && id.cluster == self.cluster => match id.role {
                Role::Node { party_index } if party_index != self.me => Some(party_index),
                _ => {
                    self.metrics.connection_failures.with_label_values(&["not_a_peer"]).inc();
                    connection.close(1u32.into(), b"not a peer node");
                    None
                }
            },
            _ => {
                self.metrics.connection_failures.with_label_values(&["foreign_identity"]).inc();
                connection.close(1u32.into(), b"not a node of this cluster");
                None
            }
        }
    }

    async fn serve_connection(&self, peer: u16, connection: Connection) {
        let (incoming, shutdown) = (&self.incoming, &self.shutdown);
        loop {
            let mut stream = tokio::select! {
                s = connection.accept_uni() => match s { Ok(s) => s, Err(_) => return },
                () = shutdown.cancelled() => return,
            };
            loop {
                match frame::read(&mut stream).await {
                    Ok(Some(env)) if env.from == peer && env.channel == Channel::Hello => {
                        self.greeted(peer, env.payload).await;
                    }
                    Ok(Some(env)) if env.from == peer => {
                        self.metrics.received.inc();
                        if incoming.send(env).await.is_err() {
                            return;
                        }
                    }
                    Ok(Some(env)) => {
                        // The certificate says who sent it; the message lied.
                        self.metrics.dropped.with_label_values(&["spoofed_sender"]).inc();
                        warn!(peer, claimed = env.from, "dropped a message claiming another party index");
                    }
                    Ok(None) => break,
                    // The connection went away (a peer that stops closes it):
                    // no message was dropped, the stream just ended.
                    Err(frame::FrameError::Io(error)) => {
                        self.metrics.connection_failures.with_label_values(&["stream_ended"]).inc();
                        tracing::debug!(peer, %error, "stream ended");
                        return;
                    }
                    Err(error) => {
                        self.metrics.dropped.with_label_values(&["malformed_frame"]).inc();
                        warn!(peer, %error, "malformed frame; closing the connection");
                        connection.close(3u32.into(), b"malformed frame");
                        return;
                    }
                }
            }
        }
    }

    /// Drops `out` as the way to `to`, unless a newer connection replaced it.
    async fn forget(&self, to: u16, out: &Arc<Outbound>) {
        let mut outbound = self.outbound.lock().await;
        if outbound.get(&to).is_some_and(|o| Arc::ptr_eq(o, out)) {
            outbound.remove(&to);
        }
    }

    /// Records a peer's boot id; a new one means the peer restarted, and the
    /// connection held to its previous run is dropped.
    async fn greeted(&self, peer: u16, boot_id: Vec<u8>) {
        let restarted = {
            let mut boots = self.peer_boots.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let previous = boots.insert(peer, boot_id.clone());
            previous.is_some_and(|p| p != boot_id)
        };
        if restarted {
            // A pod made again may be on a new IP: look it up again.
            self.metrics.peer_unreachable.notify_one();
            if let Some(stale) = self.outbound.lock().await.remove(&peer) {
                debug!(peer, "peer restarted; dropping the connection to its previous run");
                stale.connection.close(0u32.into(), b"peer restarted");
            }
        }
    }

    /// The open connection to `to`, if there is one, to the address `to` has
    /// now: one to an address it had before (a pod made again on a new IP)
    /// is closed, not written into until it times out.
    async fn cached(&self, to: u16) -> Option<Arc<Outbound>> {
        let now_at = self.peers.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(&to).map(|p| p.addr);
        let mut outbound = self.outbound.lock().await;
        match outbound.get(&to) {
            Some(existing)
                if existing.connection.close_reason().is_none()
                    && now_at.is_none_or(|addr| addr == existing.dialled) =>
            {
                Some(Arc::clone(existing))
            }
            Some(existing) => {
                existing.connection.close(0u32.into(), b"peer moved");
                outbound.remove(&to);
                None
            }
            None => None,
        }
    }

    async fn outbound(&self, to: u16) -> Result<Arc<Outbound>, SendError> {
        if let Some(existing) = self.cached(to).await {
            return Ok(existing);
        }
        let gate = Arc::clone(
            self.connecting.lock().unwrap_or_else(std::sync::PoisonError::into_inner).entry(to).or_default(),
        );
        let _connecting = gate.lock().await;
        // Another send may have connected while this one waited.
        if let Some(existing) = self.cached(to).await {
            return Ok(existing);
        }
        let peer = self
            .peers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&to)
            .cloned()
            .ok_or(SendError::NoRoute(to))?;
        let failed = |reason: String| {
            self.metrics.peer_failed("connect");
            SendError::Connection { party: to, reason }
        };
        let client = self.client.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let connecting =
            self.endpoint.connect_with(client, peer.addr, &peer.server_name).map_err(|e| failed(e.to_string()))?;
        let connection = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| failed(format!("no answer from {} within {CONNECT_TIMEOUT:?}", peer.addr)))?
            .map_err(|e| failed(e.to_string()))?;
        // The server name proves the certificate is for that address; the
        // identity must also be that very party.
        if self.authenticate(&connection) != Some(to) {
            connection.close(1u32.into(), b"wrong party");
            return Err(failed(format!("peer at {} is not party {to}", peer.addr)));
        }
        let mut stream = connection.open_uni().await.map_err(|e| failed(e.to_string()))?;
        let hello = Envelope {
            channel: Channel::Hello,
            from: self.me,
            to: Some(to),
            payload: self.boot_id.to_vec(),
            ..Envelope::default()
        };
        frame::write(&mut stream, &hello).await.map_err(|e| failed(e.to_string()))?;
        let out = Arc::new(Outbound { connection, stream: Mutex::new(stream), dialled: peer.addr });
        self.outbound.lock().await.insert(to, Arc::clone(&out));
        Ok(out)
    }
}

impl Transport for QuicTransport {
    async fn send(&self, to: u16, envelope: Envelope) -> Result<(), SendError> {
        // The connection the send is on, to drop that one (and no other) if
        // the deadline passes: a frame may be half written on it.
        let using = std::sync::Mutex::new(None);
        match tokio::time::timeout(SEND_TIMEOUT, self.send_now(to, envelope, &using)).await {
            Ok(sent) => sent,
            Err(_) => {
                self.metrics.peer_failed("send_timeout");
                let stuck = using.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
                if let Some(stuck) = stuck {
                    stuck.connection.close(0u32.into(), b"send timeout");
                    self.forget(to, &stuck).await;
                }
                Err(SendError::Connection {
                    party: to,
                    reason: format!("did not take a message within {SEND_TIMEOUT:?}"),
                })
            }
        }
    }
}

impl QuicTransport {
    async fn send_now(
        &self,
        to: u16,
        envelope: Envelope,
        using: &std::sync::Mutex<Option<Arc<Outbound>>>,
    ) -> Result<(), SendError> {
        // One retry: a cached connection may have died since its last use.
        for attempt in 0..2 {
            let out = self.outbound(to).await?;
            *using.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::clone(&out));
            let mut stream = out.stream.lock().await;
            match frame::write(&mut *stream, &envelope).await {
                Ok(()) => {
                    self.metrics.sent.inc();
                    return Ok(());
                }
                Err(frame::FrameError::TooLarge(n)) => return Err(SendError::TooLarge(n)),
                Err(error) => {
                    drop(stream);
                    out.connection.close(0u32.into(), b"stream failed");
                    self.forget(to, &out).await;
                    if attempt == 1 {
                        return Err(SendError::Connection { party: to, reason: error.to_string() });
                    }
                }
            }
        }
        Err(SendError::NoRoute(to))
    }
}
