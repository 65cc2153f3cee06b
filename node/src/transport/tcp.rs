//! TCP transport: length-prefixed frames with a size cap, each message signed
//! by the sender's Ed25519 identity, with a timestamp window against replay.
//!
//! Who sent a message is proven by its signature, checked with the key of
//! the party it names; that party must also be the one the connection
//! authenticated as and the envelope's `from`. A dialer opens each
//! connection with a hello — a signed frame with an empty body — and
//! nothing else is read until the hello checks out. Signatures cover the
//! receiver's index, so a message for A cannot be replayed to B; timestamps
//! outside ±window are refused and each (sender, nonce) is accepted once
//! within the window. Each direction between two nodes uses one long-lived
//! connection, so messages arrive in the order sent; a broken connection is
//! re-established on the next send.
//!
//! Frame layout (big-endian): `len u32 ‖ sender u16 ‖ timestamp_ms u64 ‖
//! nonce u64 ‖ signature[64] ‖ envelope body` (body as in [`frame`]), with
//! `len` counting everything after itself and at most [`MAX_FRAME`]. The
//! signature is Ed25519 over `SIGNATURE_DOMAIN ‖ sender ‖ receiver u16 ‖
//! timestamp_ms ‖ nonce ‖ envelope body`; see [`sign_frame`].

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, debug_span, warn};

use super::frame::{self, MAX_FRAME};
use super::{SEND_TIMEOUT, SendError, Transport, TransportMetrics};
use crate::engine::Envelope;

/// Prefix of every signed message, so a signature made here means nothing
/// anywhere else.
pub const SIGNATURE_DOMAIN: &[u8] = b"torcus-tcp-v1";
/// Bytes of a frame before the envelope body: sender, timestamp, nonce and
/// signature.
pub const FRAME_HEADER: usize = 2 + 8 + 8 + SIGNATURE_LEN;
/// Where the signature starts within a frame body (after the length prefix).
pub const SIGNATURE_OFFSET: usize = 2 + 8 + 8;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Default tolerance between a message's timestamp and the receiver's clock.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(30);

/// Most connections one peer may hold open to this node at once.
const MAX_CONNECTIONS_PER_PEER: usize = 4;
/// Most connections still waiting for their hello, in all.
const MAX_PENDING: usize = 64;
/// Most connections still waiting for their hello from one IP address, so
/// that one host cannot take every pending slot.
const MAX_PENDING_PER_IP: usize = 16;
/// How long a new connection has to present its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long dialing a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Sustained messages per second one connection may deliver.
const RATE_PER_SEC: f64 = 20_000.0;
/// Messages one connection may deliver in a burst.
const RATE_BURST: f64 = 20_000.0;
/// Most (timestamp, nonce) pairs remembered per peer. Beyond this the peer
/// is sending faster than the replay ledger can vouch for, and further
/// messages are refused (fail closed) until old entries age out.
const MAX_REMEMBERED: usize = 1 << 17;

/// Everything a TCP transport needs.
#[derive(Clone)]
pub struct TcpConfig {
    /// This node's party index.
    pub me: u16,
    /// Local TCP address to bind.
    pub listen: SocketAddr,
    /// Where other parties listen.
    pub peers: HashMap<u16, SocketAddr>,
    /// This node's signing identity.
    pub identity: SigningKey,
    /// Public identities of the parties; a dialer or sender not listed here
    /// is refused.
    pub peer_keys: HashMap<u16, VerifyingKey>,
    /// How far a message's timestamp may be from this node's clock
    /// ([`DEFAULT_WINDOW`]); also how long nonces are remembered.
    pub window: Duration,
}

impl std::fmt::Debug for TcpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self { me, listen, peers, identity: _, peer_keys, window } = self;
        f.debug_struct("TcpConfig")
            .field("me", me)
            .field("listen", listen)
            .field("peers", peers)
            .field("identity", &"<redacted>")
            .field("peer_keys", peer_keys)
            .field("window", window)
            .finish()
    }
}

/// Why the transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    /// The socket could not be bound.
    #[error("binding {0}: {1}")]
    Bind(SocketAddr, #[source] std::io::Error),
    /// `peer_keys` lists another key for this node than its identity.
    #[error("peer_keys[{0}] is not this node's identity")]
    IdentityMismatch(u16),
}

/// A running TCP transport.
pub struct TcpTransport {
    me: u16,
    identity: SigningKey,
    peer_keys: HashMap<u16, VerifyingKey>,
    window_ms: u64,
    local_addr: SocketAddr,
    peers: std::sync::RwLock<HashMap<u16, SocketAddr>>,
    /// One slot per peer: its lock orders the sends to that peer, and a slow
    /// connect to one peer does not hold up the others.
    outbound: std::sync::Mutex<HashMap<u16, Arc<Mutex<Option<Outbound>>>>>,
    /// Nonces accepted per peer, shared by all of the peer's connections.
    ledgers: std::sync::Mutex<HashMap<u16, Ledger>>,
    /// Next nonce; starts at a random value so restarts do not reuse nonces.
    next_nonce: AtomicU64,
    metrics: TransportMetrics,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTransport")
            .field("me", &self.me)
            .field("local_addr", &self.local_addr)
            .field("window_ms", &self.window_ms)
            .finish_non_exhaustive()
    }
}

/// The write side of a connection to a peer.
#[derive(Debug)]
struct Outbound {
    stream: OwnedWriteHalf,
    /// Cancelled once the peer closed the connection or a write failed.
    closed: CancellationToken,
}

impl Drop for Outbound {
    fn drop(&mut self) {
        // Ends the task watching the read half.
        self.closed.cancel();
    }
}

impl TcpTransport {
    /// Binds the listener and starts accepting peers; received envelopes go
    /// to `incoming` until `shutdown` is cancelled. Must be called within a
    /// Tokio runtime.
    pub fn bind(
        config: TcpConfig,
        incoming: mpsc::Sender<Envelope>,
        metrics: TransportMetrics,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, TcpError> {
        let TcpConfig { me, listen, peers, identity, peer_keys, window } = config;
        if peer_keys.get(&me).is_some_and(|key| *key != identity.verifying_key()) {
            return Err(TcpError::IdentityMismatch(me));
        }
        let listener = listen_on(listen).map_err(|e| TcpError::Bind(listen, e))?;
        let local_addr = listener.local_addr().map_err(|e| TcpError::Bind(listen, e))?;
        let this = Arc::new(Self {
            me,
            identity,
            peer_keys,
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            local_addr,
            peers: std::sync::RwLock::new(peers),
            outbound: std::sync::Mutex::default(),
            ledgers: std::sync::Mutex::default(),
            // A clock-derived start is good enough should the OS have no randomness.
            next_nonce: AtomicU64::new(getrandom::u64().unwrap_or_else(|_| unix_ms(SystemTime::now()) << 20)),
            metrics,
            stop: shutdown.child_token(),
            tasks: TaskTracker::new(),
        });
        this.tasks.spawn(
            Arc::clone(&this).accept_loop(listener, incoming).instrument(debug_span!("tcp_accept", me, %local_addr)),
        );
        Ok(this)
    }

    /// Woken when a peer cannot be reached ([`TransportMetrics::peer_failed`]).
    pub fn peer_failures(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.metrics.peer_unreachable)
    }

    /// Sets or replaces where party `index` is reached (addresses become
    /// known as pods start, and change when a pod is made again).
    pub fn set_peer(&self, index: u16, addr: SocketAddr) {
        self.peers.write().unwrap_or_else(PoisonError::into_inner).insert(index, addr);
    }

    /// The bound TCP address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local_addr)
    }

    /// Stops accepting, closes every connection and waits for the
    /// transport's tasks to end.
    pub async fn close(&self) {
        self.stop.cancel();
        let slots: Vec<_> =
            self.outbound.lock().unwrap_or_else(PoisonError::into_inner).drain().map(|(_, slot)| slot).collect();
        for slot in slots {
            // Sends select on `stop`, so the slot is released promptly.
            if let Some(mut out) = slot.lock().await.take() {
                let _ = out.stream.shutdown().await;
            }
        }
        self.tasks.close();
        self.tasks.wait().await;
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener, incoming: mpsc::Sender<Envelope>) {
        let pending = Arc::new(Semaphore::new(MAX_PENDING));
        let pending_per_ip: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>> = Arc::default();
        let per_peer: Arc<std::sync::Mutex<HashMap<u16, usize>>> = Arc::default();
        loop {
            let (socket, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Typically out of file descriptors; back off rather than spin.
                        self.metrics.connection_failures.with_label_values(&["accept"]).inc();
                        warn!(%error, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = self.stop.cancelled() => break,
            };
            let Some(pending) = Pending::take(&pending, &pending_per_ip, remote.ip()) else {
                self.metrics.connection_failures.with_label_values(&["pending_limit"]).inc();
                debug!(%remote, "too many connections awaiting their hello; refused");
                continue;
            };
            let this = Arc::clone(&self);
            let incoming = incoming.clone();
            let per_peer = Arc::clone(&per_peer);
            self.tasks.spawn(
                async move {
                    let hello = tokio::select! {
                        hello = tokio::time::timeout(HELLO_TIMEOUT, this.handshake(socket)) => hello,
                        () = this.stop.cancelled() => return,
                    };
                    drop(pending);
                    let (peer, reader) = match hello {
                        Ok(Ok(authenticated)) => authenticated,
                        Ok(Err(reason)) => {
                            this.metrics.connection_failures.with_label_values(&[reason.label()]).inc();
                            debug!(reason = reason.label(), "hello refused; closing");
                            return;
                        }
                        Err(_) => {
                            this.metrics.connection_failures.with_label_values(&["hello_timeout"]).inc();
                            debug!("no hello in time; closing");
                            return;
                        }
                    };
                    let Some(_slot) = PeerSlot::take(&per_peer, peer) else {
                        this.metrics.connection_failures.with_label_values(&["connection_limit"]).inc();
                        debug!(peer, "too many connections from this peer; closing");
                        return;
                    };
                    this.serve_connection(peer, reader, incoming).instrument(debug_span!("peer", peer)).await;
                }
                .instrument(debug_span!("tcp_inbound", me = self.me, %remote)),
            );
        }
    }

    /// Reads and checks the hello; the authenticated party index and the
    /// stream to read its messages from. Nothing is ever written to an
    /// inbound connection.
    async fn handshake(&self, socket: TcpStream) -> Result<(u16, BufReader<TcpStream>), Reject> {
        let mut reader = BufReader::with_capacity(64 << 10, socket);
        // A hello is exactly a header: an unauthenticated peer cannot make
        // this node allocate more.
        let body = match frame::read_body(&mut reader, FRAME_HEADER).await {
            Ok(Some(body)) if body.len() == FRAME_HEADER => body,
            Ok(None) => return Err(Reject::NoHello),
            Ok(Some(_)) | Err(_) => return Err(Reject::MalformedHello),
        };
        let now = unix_ms(SystemTime::now());
        let sealed = self.open(&body, now)?;
        if sealed.sender == self.me {
            return Err(Reject::UnknownPeer);
        }
        self.remember(sealed.sender, sealed.timestamp_ms, sealed.nonce, now)?;
        Ok((sealed.sender, reader))
    }

    async fn serve_connection(&self, peer: u16, mut reader: BufReader<TcpStream>, incoming: mpsc::Sender<Envelope>) {
        let mut bucket = TokenBucket::new(RATE_PER_SEC, RATE_BURST);
        loop {
            let body = tokio::select! {
                body = frame::read_body(&mut reader, MAX_FRAME) => body,
                () = self.stop.cancelled() => return,
            };
            let body = match body {
                Ok(Some(body)) => body,
                Ok(None) => return,
                Err(error) => {
                    self.metrics.dropped.with_label_values(&["malformed_frame"]).inc();
                    warn!(peer, %error, "malformed frame; closing the connection");
                    return;
                }
            };
            if !bucket.take(Instant::now()) {
                self.metrics.dropped.with_label_values(&["rate_limited"]).inc();
                debug!(peer, "message over the rate limit dropped");
                continue;
            }
            match self.accept_message(peer, &body) {
                Ok(env) => {
                    self.metrics.received.inc();
                    tokio::select! {
                        sent = incoming.send(env) => if sent.is_err() { return },
                        () = self.stop.cancelled() => return,
                    }
                }
                Err(reason) => {
                    self.metrics.dropped.with_label_values(&[reason.label()]).inc();
                    if reason.closes_connection() {
                        warn!(peer, reason = reason.label(), "refused message; closing the connection");
                        return;
                    }
                    if reason != Reject::SpoofedSender {
                        // Late or repeated (a resend after a broken connection
                        // repeats its nonce): not worth a warning each.
                        debug!(peer, reason = reason.label(), "dropped a message");
                    }
                }
            }
        }
    }

    /// Checks one message frame from a connection authenticated as `peer`.
    fn accept_message(&self, peer: u16, body: &[u8]) -> Result<Envelope, Reject> {
        let now = unix_ms(SystemTime::now());
        let sealed = self.open(body, now)?;
        let env = frame::decode(sealed.body).map_err(|_| Reject::Malformed)?;
        if sealed.sender != peer || env.from != peer {
            // The connection (and signature) say who sent it; the message lied.
            warn!(peer, signer = sealed.sender, claimed = env.from, "dropped a message claiming another party index");
            return Err(Reject::SpoofedSender);
        }
        self.remember(sealed.sender, sealed.timestamp_ms, sealed.nonce, now)?;
        Ok(env)
    }

    /// Parses a frame body and checks its signature (for this node as the
    /// receiver) and timestamp.
    fn open<'a>(&self, body: &'a [u8], now_ms: u64) -> Result<Sealed<'a>, Reject> {
        open_frame(body, self.me, &self.peer_keys, self.window_ms, now_ms)
    }

    /// Records that `sender` used `nonce`; refuses a nonce seen within the window.
    fn remember(&self, sender: u16, timestamp_ms: u64, nonce: u64, now_ms: u64) -> Result<(), Reject> {
        let mut ledgers = self.ledgers.lock().unwrap_or_else(PoisonError::into_inner);
        ledgers.entry(sender).or_default().admit(timestamp_ms, nonce, now_ms.saturating_sub(self.window_ms))
    }

    /// Signs `body` for party `to` into a complete frame.
    fn seal(&self, to: u16, body: &[u8]) -> Result<Vec<u8>, SendError> {
        if FRAME_HEADER + body.len() > MAX_FRAME {
            return Err(SendError::TooLarge(FRAME_HEADER + body.len()));
        }
        let nonce = self.next_nonce.fetch_add(1, Ordering::Relaxed);
        Ok(sign_frame(&self.identity, self.me, to, unix_ms(SystemTime::now()), nonce, body))
    }

    fn slot(&self, to: u16) -> Arc<Mutex<Option<Outbound>>> {
        let mut outbound = self.outbound.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(outbound.entry(to).or_default())
    }

    /// Dials party `to`, says hello and starts watching for the peer closing.
    async fn connect(&self, to: u16) -> Result<Outbound, SendError> {
        let addr = self
            .peers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&to)
            .copied()
            .ok_or(SendError::NoRoute(to))?;
        let failed = |reason: String| {
            self.metrics.peer_failed("connect");
            SendError::Connection { party: to, reason }
        };
        let connected = tokio::select! {
            connected = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)) => connected,
            () = self.stop.cancelled() => return Err(SendError::Connection { party: to, reason: "transport closed".into() }),
        };
        let socket = match connected {
            Ok(Ok(socket)) => socket,
            Ok(Err(error)) => return Err(failed(format!("connecting to {addr}: {error}"))),
            Err(_) => return Err(failed(format!("connecting to {addr}: timed out"))),
        };
        socket.set_nodelay(true).map_err(|e| failed(e.to_string()))?;
        let (mut reader, mut writer) = socket.into_split();
        let hello = self.seal(to, &[])?;
        writer.write_all(&hello).await.map_err(|e| failed(format!("hello to {addr}: {e}")))?;
        let closed = CancellationToken::new();
        let watch = closed.clone();
        let stop = self.stop.clone();
        self.tasks.spawn(
            async move {
                // The peer never writes on this connection: any return from
                // `read` means it closed (or broke) the connection.
                let mut byte = [0u8; 1];
                tokio::select! {
                    _ = reader.read(&mut byte) => debug!("peer closed the connection"),
                    () = watch.cancelled() => {}
                    () = stop.cancelled() => {}
                }
                watch.cancel();
            }
            .instrument(debug_span!("tcp_outbound", me = self.me, to, %addr)),
        );
        Ok(Outbound { stream: writer, closed })
    }
}

impl Transport for TcpTransport {
    async fn send(&self, to: u16, envelope: Envelope) -> Result<(), SendError> {
        match tokio::time::timeout(SEND_TIMEOUT, self.send_now(to, envelope)).await {
            Ok(sent) => sent,
            Err(_) => {
                self.metrics.peer_failed("send_timeout");
                // A frame may be half written: the next send connects afresh.
                *self.slot(to).lock().await = None;
                Err(SendError::Connection {
                    party: to,
                    reason: format!("did not take a message within {SEND_TIMEOUT:?}"),
                })
            }
        }
    }
}

impl TcpTransport {
    async fn send_now(&self, to: u16, envelope: Envelope) -> Result<(), SendError> {
        let wire = self.seal(to, &frame::encode(&envelope))?;
        let slot = self.slot(to);
        let mut out = slot.lock().await;
        // One retry: a cached connection may have died since its last use.
        // Resending the same signed bytes is harmless: the receiver accepts
        // a nonce once.
        for attempt in 0..2 {
            if self.stop.is_cancelled() {
                return Err(SendError::Connection { party: to, reason: "transport closed".into() });
            }
            if out.as_ref().is_none_or(|o| o.closed.is_cancelled()) {
                *out = Some(self.connect(to).await?);
            }
            // Invariant: set just above.
            let stream = &mut out.as_mut().expect("connected above").stream;
            let written = tokio::select! {
                written = stream.write_all(&wire) => written,
                () = self.stop.cancelled() => Err(std::io::ErrorKind::ConnectionAborted.into()),
            };
            match written {
                Ok(()) => {
                    self.metrics.sent.inc();
                    return Ok(());
                }
                Err(error) => {
                    *out = None;
                    if attempt == 1 {
                        return Err(SendError::Connection { party: to, reason: error.to_string() });
                    }
                }
            }
        }
        Err(SendError::NoRoute(to))
    }
}

/// Lays out a complete wire frame — length prefix included — of `body`
/// from `sender` to `receiver`, signed with `key` (the sender's identity).
/// A hello is a frame with an empty body.
pub fn sign_frame(key: &SigningKey, sender: u16, receiver: u16, timestamp_ms: u64, nonce: u64, body: &[u8]) -> Vec<u8> {
    let signature = key.sign(&signed_message(sender, receiver, timestamp_ms, nonce, body));
    let len = FRAME_HEADER + body.len();
    let mut out = Vec::with_capacity(4 + len);
    // Callers keep frames within MAX_FRAME, far below u32::MAX; a larger
    // one is refused by the receiver.
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&sender.to_be_bytes());
    out.extend_from_slice(&timestamp_ms.to_be_bytes());
    out.extend_from_slice(&nonce.to_be_bytes());
    out.extend_from_slice(&signature.to_bytes());
    out.extend_from_slice(body);
    out
}

/// The bytes a frame's signature covers.
pub fn signed_message(sender: u16, receiver: u16, timestamp_ms: u64, nonce: u64, body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNATURE_DOMAIN.len() + 2 + 2 + 8 + 8 + body.len());
    message.extend_from_slice(SIGNATURE_DOMAIN);
    message.extend_from_slice(&sender.to_be_bytes());
    message.extend_from_slice(&receiver.to_be_bytes());
    message.extend_from_slice(&timestamp_ms.to_be_bytes());
    message.extend_from_slice(&nonce.to_be_bytes());
    message.extend_from_slice(body);
    message
}

/// Milliseconds since the Unix epoch, as frames carry them.
pub fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Parses a frame body received by party `me` and checks its signature
/// (by the sender it names, among `peer_keys`, for `me`) and its timestamp
/// (within `window_ms` of `now_ms`).
pub(crate) fn open_frame<'a>(
    body: &'a [u8],
    me: u16,
    peer_keys: &HashMap<u16, VerifyingKey>,
    window_ms: u64,
    now_ms: u64,
) -> Result<Sealed<'a>, Reject> {
    let sealed = Sealed::parse(body).ok_or(Reject::Malformed)?;
    let key = peer_keys.get(&sealed.sender).ok_or(Reject::UnknownPeer)?;
    let message = signed_message(sealed.sender, me, sealed.timestamp_ms, sealed.nonce, sealed.body);
    key.verify_strict(&message, &sealed.signature).map_err(|_| Reject::BadSignature)?;
    if sealed.timestamp_ms.abs_diff(now_ms) > window_ms {
        return Err(Reject::StaleTimestamp);
    }
    Ok(sealed)
}

/// A frame body split into its fields (not yet verified).
#[derive(Debug)]
pub(crate) struct Sealed<'a> {
    pub(crate) sender: u16,
    pub(crate) timestamp_ms: u64,
    pub(crate) nonce: u64,
    signature: Signature,
    pub(crate) body: &'a [u8],
}

impl<'a> Sealed<'a> {
    fn parse(frame: &'a [u8]) -> Option<Self> {
        let (header, body) = frame.split_at_checked(FRAME_HEADER)?;
        let (sender, rest) = header.split_first_chunk::<2>()?;
        let (timestamp_ms, rest) = rest.split_first_chunk::<8>()?;
        let (nonce, signature) = rest.split_first_chunk::<8>()?;
        Some(Self {
            sender: u16::from_be_bytes(*sender),
            timestamp_ms: u64::from_be_bytes(*timestamp_ms),
            nonce: u64::from_be_bytes(*nonce),
            signature: Signature::from_bytes(signature.try_into().ok()?),
            body,
        })
    }
}

/// Why a hello or message was refused; the label is the metric's `reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reject {
    /// The connection ended before a hello.
    NoHello,
    /// The first frame is not a hello.
    MalformedHello,
    /// The frame cannot be parsed.
    Malformed,
    /// The named sender has no key here (or is this node).
    UnknownPeer,
    /// The signature does not verify with the named sender's key.
    BadSignature,
    /// The timestamp is outside the window.
    StaleTimestamp,
    /// The nonce was already used within the window.
    Replayed,
    /// Signed or sent by another party than the envelope names.
    SpoofedSender,
    /// The peer's replay ledger is full.
    RateLimited,
}

impl Reject {
    fn label(self) -> &'static str {
        match self {
            Self::NoHello => "no_hello",
            Self::MalformedHello => "malformed_hello",
            Self::Malformed => "malformed_frame",
            Self::UnknownPeer => "unknown_peer",
            Self::BadSignature => "bad_signature",
            Self::StaleTimestamp => "stale_timestamp",
            Self::Replayed => "replayed",
            Self::SpoofedSender => "spoofed_sender",
            Self::RateLimited => "rate_limited",
        }
    }

    /// Whether the connection is no longer worth reading: its peer sends
    /// garbage or forgeries rather than merely late or repeated messages.
    fn closes_connection(self) -> bool {
        matches!(self, Self::Malformed | Self::MalformedHello | Self::UnknownPeer | Self::BadSignature)
    }
}

/// Nonces one peer used within the window, so each is accepted once.
#[derive(Debug, Default)]
struct Ledger {
    /// Nonce → timestamp of the message that used it.
    seen: HashMap<u64, u64>,
    /// The same entries by time, to forget them once they leave the window.
    by_time: BTreeSet<(u64, u64)>,
}

impl Ledger {
    /// Accepts `nonce` once; forgets entries older than `horizon_ms` (their
    /// replays are refused as stale).
    fn admit(&mut self, timestamp_ms: u64, nonce: u64, horizon_ms: u64) -> Result<(), Reject> {
        while let Some(&(time, old)) = self.by_time.first() {
            if time >= horizon_ms {
                break;
            }
            self.by_time.pop_first();
            self.seen.remove(&old);
        }
        if self.seen.contains_key(&nonce) {
            return Err(Reject::Replayed);
        }
        if self.seen.len() >= MAX_REMEMBERED {
            return Err(Reject::RateLimited);
        }
        self.seen.insert(nonce, timestamp_ms);
        self.by_time.insert((timestamp_ms, nonce));
        Ok(())
    }
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: f64, burst: f64) -> Self {
        Self { rate, burst, tokens: burst, last: Instant::now() }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A connection's place among those awaiting their hello; released on drop.
#[derive(Debug)]
struct Pending {
    _permit: OwnedSemaphorePermit,
    per_ip: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl Pending {
    fn take(
        total: &Arc<Semaphore>,
        per_ip: &Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
        ip: IpAddr,
    ) -> Option<Self> {
        let permit = Arc::clone(total).try_acquire_owned().ok()?;
        let mut counts = per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(ip).or_default();
        if *count >= MAX_PENDING_PER_IP {
            return None;
        }
        *count += 1;
        Some(Self { _permit: permit, per_ip: Arc::clone(per_ip), ip })
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut counts = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// One of a peer's [`MAX_CONNECTIONS_PER_PEER`] inbound connections;
/// released on drop.
#[derive(Debug)]
struct PeerSlot {
    counts: Arc<std::sync::Mutex<HashMap<u16, usize>>>,
    peer: u16,
}

impl PeerSlot {
    fn take(counts: &Arc<std::sync::Mutex<HashMap<u16, usize>>>, peer: u16) -> Option<Self> {
        let mut map = counts.lock().unwrap_or_else(PoisonError::into_inner);
        let count = map.entry(peer).or_default();
        if *count >= MAX_CONNECTIONS_PER_PEER {
            return None;
        }
        *count += 1;
        Some(Self { counts: Arc::clone(counts), peer })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = map.get_mut(&self.peer) {
            *count = count.saturating_sub(1);
        }
    }
}

fn listen_on(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

#[cfg(test)]
mod tests {
    use super::frame::FrameError;
    use super::*;

    #[test]
    fn a_frame_parses_back_into_its_fields() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let wire = sign_frame(&key, 3, 5, 1234, 99, b"body");
        assert_eq!(u32::from_be_bytes(wire[..4].try_into().unwrap()) as usize, FRAME_HEADER + 4);
        let sealed = Sealed::parse(&wire[4..]).unwrap();
        assert_eq!((sealed.sender, sealed.timestamp_ms, sealed.nonce, sealed.body), (3, 1234, 99, &b"body"[..]));
        let message = signed_message(3, 5, 1234, 99, b"body");
        assert!(key.verifying_key().verify_strict(&message, &sealed.signature).is_ok());
        // Bound to the receiver: the same frame does not verify for party 6.
        let elsewhere = signed_message(3, 6, 1234, 99, b"body");
        assert!(key.verifying_key().verify_strict(&elsewhere, &sealed.signature).is_err());
        assert!(Sealed::parse(&wire[4..wire.len() - 5]).is_none());
    }

    #[test]
    fn the_ledger_accepts_a_nonce_once_and_forgets_it_after_the_window() {
        let mut ledger = Ledger::default();
        assert_eq!(ledger.admit(1000, 7, 0), Ok(()));
        assert_eq!(ledger.admit(1000, 7, 0), Err(Reject::Replayed));
        assert_eq!(ledger.admit(1500, 7, 0), Err(Reject::Replayed), "same nonce, other timestamp");
        assert_eq!(ledger.admit(1000, 8, 0), Ok(()));
        assert_eq!(ledger.admit(3000, 9, 2000), Ok(()));
        assert_eq!(ledger.seen.len(), 1, "entries before the horizon are pruned");
        assert_eq!(ledger.by_time.len(), 1);
    }

    #[test]
    fn the_ledger_is_bounded() {
        let mut ledger = Ledger::default();
        for nonce in 0..MAX_REMEMBERED as u64 {
            ledger.admit(10, nonce, 0).unwrap();
        }
        assert_eq!(ledger.admit(10, u64::MAX, 0), Err(Reject::RateLimited));
        assert_eq!(ledger.admit(20, u64::MAX, 11), Ok(()), "room again once old entries age out");
    }

    #[test]
    fn the_token_bucket_refills_at_its_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket { rate: 10.0, burst: 3.0, tokens: 3.0, last: start };
        assert!((0..3).all(|_| bucket.take(start)));
        assert!(!bucket.take(start));
        assert!(bucket.take(start + Duration::from_millis(100)));
        assert!(!bucket.take(start + Duration::from_millis(100)));
        let later = start + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| bucket.take(later)).count(), 3, "never more than the burst");
    }

    #[test]
    fn debug_redacts_the_signing_key() {
        let key = SigningKey::from_bytes(&[0xAB; 32]);
        let config = TcpConfig {
            me: 0,
            listen: "127.0.0.1:0".parse().unwrap(),
            peers: HashMap::new(),
            identity: key,
            peer_keys: HashMap::new(),
            window: DEFAULT_WINDOW,
        };
        let text = format!("{config:?}");
        assert!(text.contains("<redacted>"), "{text}");
        assert!(!text.contains("171"), "no byte of the secret (0xAB = 171): {text}");
    }

    #[tokio::test]
    async fn read_body_refuses_oversized_and_truncated_frames() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        assert!(matches!(frame::read_body(&mut b, MAX_FRAME).await, Err(FrameError::TooLarge(_))));
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&100u32.to_be_bytes()).await.unwrap();
        a.write_all(&[0; 10]).await.unwrap();
        drop(a);
        assert!(matches!(frame::read_body(&mut b, MAX_FRAME).await, Err(FrameError::Io(_))));
        let (a, mut b) = tokio::io::duplex(1 << 16);
        drop(a);
        assert!(matches!(frame::read_body(&mut b, MAX_FRAME).await, Ok(None)));
    }
}
