//! The HTTP relay's server half, which the operator mounts ([`relay_router`])
//! for clusters whose nodes cannot reach each other directly. Its wire
//! format is [`torcus_contract::relay`]; the nodes' client half is
//! `torcus_node::transport::relay`.
//!
//! # Security
//!
//! Nodes seal every payload they send through the relay end to end for its
//! recipient ((`torcus_node::transport::seal`)): the relay, and anyone who can reach it, can
//! neither read a protocol message nor forge one that the recipient opens.
//! What is left to the relay's own checks is who may queue and poll.
//!
//! **Who may queue and poll.** The operator builds its relay with
//! [`Relay::with_signed_requests`]: every request carries the sender's node
//! certificate, the time and a signature with the node's TLS key over the
//! method, cluster, party, query, time and body ([`signing_input`]). The
//! certificate must chain to the cluster's CA and name the very party the
//! request speaks for (a poll returns that party's own queue only), the time
//! must be within [`MAX_SKEW`] of the relay's clock, and a signature is
//! accepted once: refusals are counted as `unauthenticated`, `wrong_party`,
//! `foreign_cluster`, `stale` and `replayed`. A cluster without a trust
//! bundle is unknown (`404`, before a byte of body is read). Nodes sign with
//! `RequestSigner` (`torcus_node::transport::relay`). A relay made with [`Relay::new`] alone trusts the
//! party header; with [`Relay::with_authenticator`] it takes the identity
//! of a client certificate that a TLS terminator in front verified and
//! passed in as a [`PeerCertificate`] request extension
//! ([`identity_from_certificate`]).
//!
//! # Memory
//!
//! Everything the relay holds is bounded ([`RelayLimits`]): queued bytes per
//! recipient, per cluster and in all, the number of clusters, and the bytes
//! of bodies being read at once (counted from the declared length before a
//! byte is read). Every refusal is counted in `torcus_relay_rejected_total`.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use torcus_certs::{Identity, Role};
use torcus_contract::envelope as frame;
pub use torcus_contract::relay::*;
use tracing::debug;

/// Requests remembered against replay at most (about 100 bytes each); one
/// beyond them is refused as `busy` rather than let through.
pub const MAX_REMEMBERED: usize = 1 << 18;
/// Requests of one cluster remembered at most: a cluster's nodes cannot
/// take the memory of the others.
pub const MAX_REMEMBERED_PER_CLUSTER: usize = 1 << 16;
/// Longest the relay reads one body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest `<namespace>/<cluster>` (63 + 1 + 253).
const MAX_CLUSTER_LEN: usize = 317;

/// Serves the relay: `POST` and `GET` on [`MESSAGES_PATH`].
pub fn relay_router(relay: Arc<Relay>) -> axum::Router {
    axum::Router::new().route(MESSAGES_PATH, get(poll_handler).post(post_handler)).with_state(relay)
}

/// Bounds on what the relay holds. The defaults keep the relay (queued
/// messages plus bodies being read) under 128 MiB, half the operator's
/// default memory limit.
#[derive(Clone, Debug)]
pub struct RelayLimits {
    /// Messages queued for one recipient; more are refused with `429`.
    pub max_messages_per_recipient: usize,
    /// Bytes queued for one recipient; more are refused with `429`.
    pub max_bytes_per_recipient: usize,
    /// Bytes queued for all the recipients of one cluster; more are refused
    /// with `429`.
    pub max_bytes_per_cluster: usize,
    /// Bytes queued in all; more are refused with `503`.
    pub max_total_bytes: usize,
    /// Bytes of request bodies being read at once, counted from the
    /// declared length (a frame's limit when none is declared) before a byte
    /// is read; more are refused with `503`.
    pub max_body_bytes_in_flight: usize,
    /// Clusters with queues at once; a new one beyond is refused with `503`.
    pub max_clusters: usize,
    /// A queue neither posted to nor polled for this long is dropped, with
    /// whatever it holds (its recipient is gone).
    pub idle_ttl: Duration,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            max_messages_per_recipient: 4096,
            max_bytes_per_recipient: 16 << 20,
            max_bytes_per_cluster: 32 << 20,
            max_total_bytes: 96 << 20,
            max_body_bytes_in_flight: 32 << 20,
            max_clusters: 64,
            idle_ttl: Duration::from_secs(300),
        }
    }
}

/// The trust bundle (PEM) of a cluster (`<namespace>/<name>`) the relay
/// serves, `None` for any other: what signed requests are checked against.
pub type TrustBundles = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Whether the relay serves a cluster (`<namespace>/<name>`): the operator
/// answers for the clusters it manages, so that requests for any other are
/// refused before they cost memory.
pub type KnownClusters = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// The DER leaf certificate of the TLS client, which the TLS terminator in
/// front of [`relay_router`] inserts as a request extension once it has
/// verified the chain against the cluster CA.
#[derive(Clone, Debug)]
pub struct PeerCertificate(pub Vec<u8>);

/// Maps a verified client certificate to the identity it carries.
pub type PeerAuthenticator = Arc<dyn Fn(&PeerCertificate) -> Option<Identity> + Send + Sync>;

/// The authenticator for node certificates issued by the operator: the
/// identity in the certificate's URI SAN. The chain must have been verified
/// already; this only reads it.
pub fn identity_from_certificate(cert: &PeerCertificate) -> Option<Identity> {
    torcus_certs::peer_identity(&cert.0).ok()
}

/// Why the relay refused a request; each maps to an HTTP status and a
/// `reason` label of `torcus_relay_rejected_total`.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A required header is absent.
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// A header is not what it should be.
    #[error("malformed header {0}")]
    BadHeader(&'static str),
    /// The query string is not what it should be.
    #[error("malformed query: {0}")]
    BadQuery(String),
    /// An authenticator is configured and the request carries no identity
    /// it accepts.
    #[error("no authenticated node identity")]
    Unauthenticated,
    /// The authenticated identity is not a node of the named cluster.
    #[error("identity is not a node of cluster {0}")]
    ForeignCluster(String),
    /// The request speaks for another party than the one it is from.
    #[error("party {claimed} does not match the sender {actual}")]
    WrongParty {
        /// Party in the envelope or query.
        claimed: u16,
        /// Party of the header or certificate.
        actual: u16,
    },
    /// The body is larger than a frame may be.
    #[error("body of {0} bytes exceeds the frame limit")]
    TooLarge(usize),
    /// The body could not be read.
    #[error("reading the body: {0}")]
    Body(String),
    /// The body is not an envelope.
    #[error("malformed envelope: {0}")]
    Malformed(#[from] frame::FrameError),
    /// A broadcast envelope came without a recipient in the query.
    #[error("a broadcast needs a recipient (?to=<party>): the sender fans out")]
    NoRecipient,
    /// The query names another recipient than the envelope.
    #[error("recipient {query} in the query differs from the envelope's {envelope}")]
    RecipientMismatch {
        /// Recipient in the query.
        query: u16,
        /// Recipient in the envelope.
        envelope: u16,
    },
    /// The recipient's queue is at its limit; try later.
    #[error("queue of party {0} is full")]
    QueueFull(u16),
    /// The relay as a whole holds as much as it may; try later.
    #[error("relay is full")]
    RelayFull,
    /// The relay serves as many clusters as it may.
    #[error("relay serves too many clusters")]
    TooManyClusters,
    /// The cluster is not one the relay serves.
    #[error("no such cluster")]
    UnknownCluster,
    /// Too many bodies are being read at once, or too many signatures are
    /// remembered; try later.
    #[error("relay is busy")]
    Busy,
    /// A signed request's time is too far from the relay's clock.
    #[error("request time is more than 30 s from the relay's clock")]
    Stale,
    /// A signed request came again.
    #[error("request already seen")]
    Replayed,
}

impl RelayError {
    /// The HTTP status answered.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingHeader(_)
            | Self::BadHeader(_)
            | Self::BadQuery(_)
            | Self::Body(_)
            | Self::Malformed(_)
            | Self::NoRecipient
            | Self::RecipientMismatch { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthenticated | Self::Stale | Self::Replayed => StatusCode::UNAUTHORIZED,
            Self::ForeignCluster(_) | Self::WrongParty { .. } => StatusCode::FORBIDDEN,
            Self::UnknownCluster => StatusCode::NOT_FOUND,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::QueueFull(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::RelayFull | Self::TooManyClusters | Self::Busy => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `reason` label counted in `torcus_relay_rejected_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::MissingHeader(_) => "missing_header",
            Self::BadHeader(_) => "bad_header",
            Self::BadQuery(_) => "bad_query",
            Self::Unauthenticated => "unauthenticated",
            Self::ForeignCluster(_) => "foreign_cluster",
            Self::WrongParty { .. } => "wrong_party",
            Self::TooLarge(_) => "too_large",
            Self::Body(_) => "body",
            Self::Malformed(_) => "malformed_frame",
            Self::NoRecipient => "no_recipient",
            Self::RecipientMismatch { .. } => "recipient_mismatch",
            Self::QueueFull(_) => "queue_full",
            Self::RelayFull => "relay_full",
            Self::TooManyClusters => "too_many_clusters",
            Self::UnknownCluster => "unknown_cluster",
            Self::Busy => "busy",
            Self::Stale => "stale",
            Self::Replayed => "replayed",
        }
    }
}

impl IntoResponse for RelayError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (status, self.to_string()).into_response();
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// The relay's queues, limits and metrics.
pub struct Relay {
    limits: RelayLimits,
    state: Mutex<Queues>,
    /// `None` trusts the headers; see the module documentation.
    authenticator: Option<PeerAuthenticator>,
    /// `None` serves any cluster.
    known: Option<KnownClusters>,
    /// `Some`: every request must be signed by a node of its cluster.
    trust: Option<TrustBundles>,
    /// Signatures seen within [`MAX_SKEW`], against replay.
    seen: Mutex<Seen>,
    /// Budget of body bytes being read, in KiB permits.
    reading: Arc<tokio::sync::Semaphore>,
    metrics: RelayMetrics,
    /// Cancelled by [`Relay::close`]: waiting polls return at once, so a
    /// graceful shutdown of the server is not held up by long polls.
    closed: CancellationToken,
}

#[derive(Debug, Default)]
struct Queues {
    /// Cluster (`namespace/name`) → recipient → queue.
    clusters: HashMap<String, HashMap<u16, Queue>>,
    /// Cluster → bytes queued for all its recipients.
    cluster_bytes: HashMap<String, usize>,
    total_bytes: usize,
    last_sweep: Option<Instant>,
}

#[derive(Debug)]
struct Queue {
    frames: VecDeque<Bytes>,
    bytes: usize,
    last_active: Instant,
    /// Woken on every push; a waiting poll holds a clone, which also keeps
    /// the queue from being swept under it.
    notify: Arc<Notify>,
}

#[derive(Clone, Debug)]
struct RelayMetrics {
    messages: IntCounterVec,
    rejected: IntCounterVec,
    expired: IntCounter,
    queued_messages: IntGauge,
    queued_bytes: IntGauge,
}

impl Relay {
    /// An empty relay whose metrics are registered in `registry`. It trusts
    /// the party header until [`Relay::with_authenticator`] is used.
    pub fn new(registry: &Registry, limits: RelayLimits) -> prometheus::Result<Self> {
        let messages = IntCounterVec::new(
            Opts::new("torcus_relay_messages_total", "Protocol messages through the relay, by direction"),
            &["direction"],
        )?;
        let rejected = IntCounterVec::new(
            Opts::new("torcus_relay_rejected_total", "Relay requests refused, by reason"),
            &["reason"],
        )?;
        let expired = IntCounter::new(
            "torcus_relay_expired_total",
            "Relayed messages dropped because their recipient stopped polling",
        )?;
        let queued_messages = IntGauge::new("torcus_relay_queued_messages", "Messages waiting in the relay")?;
        let queued_bytes = IntGauge::new("torcus_relay_queued_bytes", "Bytes waiting in the relay")?;
        // Known from the start, so the series exist before the first message.
        for direction in ["in", "out"] {
            messages.with_label_values(&[direction]);
        }
        for reason in [
            "unauthenticated",
            "unknown_cluster",
            "wrong_party",
            "too_large",
            "malformed_frame",
            "queue_full",
            "relay_full",
            "busy",
            "stale",
            "replayed",
        ] {
            rejected.with_label_values(&[reason]);
        }
        registry.register(Box::new(messages.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        registry.register(Box::new(expired.clone()))?;
        registry.register(Box::new(queued_messages.clone()))?;
        registry.register(Box::new(queued_bytes.clone()))?;
        let reading = Arc::new(tokio::sync::Semaphore::new(kib(limits.max_body_bytes_in_flight)));
        Ok(Self {
            limits,
            state: Mutex::default(),
            authenticator: None,
            known: None,
            trust: None,
            seen: Mutex::default(),
            reading,
            metrics: RelayMetrics { messages, rejected, expired, queued_messages, queued_bytes },
            closed: CancellationToken::new(),
        })
    }

    /// Requires every request to carry a [`PeerCertificate`] that
    /// `authenticator` maps to a node of the named cluster whose party is
    /// the one the request speaks for.
    pub fn with_authenticator(
        mut self,
        authenticator: impl Fn(&PeerCertificate) -> Option<Identity> + Send + Sync + 'static,
    ) -> Self {
        self.authenticator = Some(Arc::new(authenticator));
        self
    }

    /// Serves only the clusters `known` answers for; others get `404`,
    /// counted as `unknown_cluster`, before their body is read.
    pub fn for_clusters(mut self, known: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        self.known = Some(Arc::new(known));
        self
    }

    /// Requires every request to be signed ([`signing_input`]) by the
    /// node it speaks for, with a certificate that chains to the bundle
    /// `trust` gives for its cluster; a cluster without one is unknown.
    pub fn with_signed_requests(mut self, trust: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        self.trust = Some(Arc::new(trust));
        self
    }

    /// Checks a request's signature: by a node certificate of `cluster`'s
    /// CA naming `party`, over this very request (its body by the digest it
    /// signs, `body_digest`), within [`MAX_SKEW`] of now, not seen before.
    fn verify_signed(
        &self,
        method: &str,
        cluster: &str,
        party: u16,
        query: &str,
        headers: &HeaderMap,
        body_digest: &[u8; 32],
    ) -> Result<(), RelayError> {
        let Some(trust) = &self.trust else { return Ok(()) };
        let bundle = trust(cluster).ok_or(RelayError::UnknownCluster)?;
        let now = unix_ms();
        let time =
            signed_header(headers, TIME_HEADER)?.parse::<u64>().map_err(|_| RelayError::BadHeader(TIME_HEADER))?;
        if time.abs_diff(now) > MAX_SKEW.as_millis() as u64 {
            return Err(RelayError::Stale);
        }
        let certificate = hex::decode(signed_header(headers, CERTIFICATE_HEADER)?)
            .map_err(|_| RelayError::BadHeader(CERTIFICATE_HEADER))?;
        let signature = hex::decode(signed_header(headers, SIGNATURE_HEADER)?)
            .map_err(|_| RelayError::BadHeader(SIGNATURE_HEADER))?;
        let input = signing_input(method, cluster, party, query, time, body_digest);
        let identity = torcus_certs::verify_signed_der(&certificate, &bundle, &input, &signature, offset_time(now))
            .map_err(|_| RelayError::Unauthenticated)?;
        if cluster.split_once('/') != Some((identity.namespace.as_str(), identity.cluster.as_str())) {
            return Err(RelayError::ForeignCluster(cluster.to_owned()));
        }
        match identity.role {
            Role::Node { party_index } if party_index == party => {}
            Role::Node { party_index } => return Err(RelayError::WrongParty { claimed: party, actual: party_index }),
            Role::Operator => return Err(RelayError::Unauthenticated),
        }
        // Keyed by what was signed, not by the signature: ECDSA signatures
        // are randomized and malleable, the request is not.
        self.seen.lock().unwrap_or_else(PoisonError::into_inner).remember(cluster, &input, now)
    }

    /// Whether this relay takes signed requests only.
    fn signed(&self) -> bool {
        self.trust.is_some()
    }

    fn check_known(&self, cluster: &str) -> Result<(), RelayError> {
        if let Some(trust) = &self.trust
            && trust(cluster).is_none()
        {
            return Err(RelayError::UnknownCluster);
        }
        match &self.known {
            Some(known) if !known(cluster) => Err(RelayError::UnknownCluster),
            _ => Ok(()),
        }
    }

    /// Makes waiting polls return now and later ones return at once.
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Checks that the caller may act as `party` of `cluster`.
    fn authenticate(&self, cert: Option<&PeerCertificate>, cluster: &str, party: u16) -> Result<(), RelayError> {
        // SECURITY: without an authenticator the party header is taken on
        // trust. Only acceptable behind mutual TLS with node certificates
        // whose identity is then checked here; see the module docs.
        let Some(authenticator) = &self.authenticator else { return Ok(()) };
        let identity = cert.and_then(|cert| authenticator(cert)).ok_or(RelayError::Unauthenticated)?;
        if cluster.split_once('/') != Some((identity.namespace.as_str(), identity.cluster.as_str())) {
            return Err(RelayError::ForeignCluster(cluster.to_owned()));
        }
        match identity.role {
            Role::Node { party_index } if party_index == party => Ok(()),
            Role::Node { party_index } => Err(RelayError::WrongParty { claimed: party, actual: party_index }),
            Role::Operator => Err(RelayError::Unauthenticated),
        }
    }

    /// Queues one frame body for `to` of `cluster`.
    fn push(&self, cluster: &str, to: u16, body: Bytes, now: Instant) -> Result<(), RelayError> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        self.sweep(&mut state, now);
        if !state.clusters.contains_key(cluster) && state.clusters.len() >= self.limits.max_clusters {
            return Err(RelayError::TooManyClusters);
        }
        if state.total_bytes + body.len() > self.limits.max_total_bytes {
            return Err(RelayError::RelayFull);
        }
        let in_cluster = state.cluster_bytes.get(cluster).copied().unwrap_or(0);
        if in_cluster + body.len() > self.limits.max_bytes_per_cluster {
            return Err(RelayError::QueueFull(to));
        }
        let queue = state.clusters.entry(cluster.to_owned()).or_default().entry(to).or_insert_with(|| Queue::new(now));
        if queue.frames.len() >= self.limits.max_messages_per_recipient
            || queue.bytes + body.len() > self.limits.max_bytes_per_recipient
        {
            return Err(RelayError::QueueFull(to));
        }
        let len = body.len();
        queue.bytes += len;
        queue.frames.push_back(body);
        queue.last_active = now;
        queue.notify.notify_waiters();
        *state.cluster_bytes.entry(cluster.to_owned()).or_default() += len;
        state.total_bytes += len;
        self.metrics.queued_messages.inc();
        self.metrics.queued_bytes.add(len as i64);
        Ok(())
    }

    /// Removes and returns what is queued for `party` of `cluster` (up to
    /// [`MAX_POLL_BYTES`], at least one frame), with the queue's wake-up.
    fn take(&self, cluster: &str, party: u16, now: Instant) -> Result<(Vec<Bytes>, Arc<Notify>), RelayError> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        self.sweep(&mut state, now);
        if !state.clusters.contains_key(cluster) && state.clusters.len() >= self.limits.max_clusters {
            return Err(RelayError::TooManyClusters);
        }
        let queue =
            state.clusters.entry(cluster.to_owned()).or_default().entry(party).or_insert_with(|| Queue::new(now));
        queue.last_active = now;
        let mut frames = Vec::new();
        let mut size = 0;
        while let Some(next) = queue.frames.front() {
            let framed = 4 + next.len();
            if !frames.is_empty() && size + framed > MAX_POLL_BYTES {
                break;
            }
            size += framed;
            // The loop condition saw a front element.
            frames.push(queue.frames.pop_front().expect("front exists"));
        }
        let taken: usize = frames.iter().map(Bytes::len).sum();
        queue.bytes -= taken;
        let notify = Arc::clone(&queue.notify);
        if let Some(bytes) = state.cluster_bytes.get_mut(cluster) {
            *bytes -= taken;
        }
        state.total_bytes -= taken;
        self.metrics.queued_messages.sub(frames.len() as i64);
        self.metrics.queued_bytes.sub(taken as i64);
        Ok((frames, notify))
    }

    /// Whether anything waits for `party` of `cluster`.
    fn pending(&self, cluster: &str, party: u16) -> bool {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.clusters.get(cluster).and_then(|c| c.get(&party)).is_some_and(|q| !q.frames.is_empty())
    }

    /// Drops idle queues (and their messages) and empty clusters; runs at
    /// most every quarter of the TTL.
    fn sweep(&self, state: &mut Queues, now: Instant) {
        let ttl = self.limits.idle_ttl;
        if state.last_sweep.is_some_and(|last| now.saturating_duration_since(last) < ttl / 4) {
            return;
        }
        state.last_sweep = Some(now);
        let (mut messages, mut bytes) = (0usize, 0usize);
        let Queues { clusters, cluster_bytes, .. } = state;
        for (cluster, queues) in clusters.iter_mut() {
            let mut dropped = 0;
            queues.retain(|_, queue| {
                let keep =
                    now.saturating_duration_since(queue.last_active) <= ttl || Arc::strong_count(&queue.notify) > 1;
                if !keep {
                    messages += queue.frames.len();
                    dropped += queue.bytes;
                }
                keep
            });
            if let Some(held) = cluster_bytes.get_mut(cluster) {
                *held -= dropped;
            }
            bytes += dropped;
        }
        clusters.retain(|_, queues| !queues.is_empty());
        cluster_bytes.retain(|cluster, _| clusters.contains_key(cluster));
        state.total_bytes -= bytes;
        self.metrics.expired.inc_by(messages as u64);
        self.metrics.queued_messages.sub(messages as i64);
        self.metrics.queued_bytes.sub(bytes as i64);
    }

    fn reject(&self, error: RelayError) -> Response {
        self.metrics.rejected.with_label_values(&[error.metric_label()]).inc();
        debug!(%error, "relay request refused");
        error.into_response()
    }
}

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("limits", &self.limits)
            .field("authenticated", &self.authenticator.is_some())
            .field("closed", &self.closed.is_cancelled())
            .finish_non_exhaustive()
    }
}

/// Requests accepted within the last `2 × MAX_SKEW`, by the digest of what
/// was signed.
#[derive(Debug, Default)]
struct Seen {
    /// Digest → arrival (Unix ms).
    at: HashMap<[u8; 16], u64>,
    /// The same with their cluster, in arrival order, to forget the oldest first.
    order: VecDeque<([u8; 16], u64, Arc<str>)>,
    /// Cluster → requests remembered.
    per_cluster: HashMap<Arc<str>, usize>,
}

impl Seen {
    fn remember(&mut self, cluster: &str, signed: &[u8], now: u64) -> Result<(), RelayError> {
        // A request is fresh while |now − time| ≤ MAX_SKEW, and its time is at
        // most MAX_SKEW after its arrival: 2 × MAX_SKEW after arriving, it
        // can no longer pass, and is forgotten.
        let keep = 2 * MAX_SKEW.as_millis() as u64;
        while let Some((digest, arrived, cluster)) = self.order.front()
            && arrived.saturating_add(keep) < now
        {
            if self.at.get(digest) == Some(arrived) {
                self.at.remove(digest);
            }
            if let Some(count) = self.per_cluster.get_mut(cluster) {
                *count -= 1;
                if *count == 0 {
                    self.per_cluster.remove(cluster);
                }
            }
            self.order.pop_front();
        }
        let digest = body_digest(signed);
        let mut key = [0; 16];
        key.copy_from_slice(&digest[..16]);
        if self.at.contains_key(&key) {
            return Err(RelayError::Replayed);
        }
        let of_cluster = self.per_cluster.get(cluster).copied().unwrap_or(0);
        if self.at.len() >= MAX_REMEMBERED || of_cluster >= MAX_REMEMBERED_PER_CLUSTER {
            return Err(RelayError::Busy);
        }
        let cluster: Arc<str> =
            self.per_cluster.get_key_value(cluster).map_or_else(|| cluster.into(), |(k, _)| Arc::clone(k));
        self.at.insert(key, now);
        self.order.push_back((key, now, Arc::clone(&cluster)));
        *self.per_cluster.entry(cluster).or_default() += 1;
        Ok(())
    }
}

fn offset_time(unix_ms: u64) -> torcus_certs::OffsetDateTime {
    let secs = i64::try_from(unix_ms / 1000).unwrap_or(i64::MAX);
    torcus_certs::OffsetDateTime::from_unix_timestamp(secs).unwrap_or_else(|_| torcus_certs::OffsetDateTime::now_utc())
}

/// A header of a signed request; its absence means the request is not signed.
fn signed_header<'h>(headers: &'h HeaderMap, name: &'static str) -> Result<&'h str, RelayError> {
    headers.get(name).ok_or(RelayError::Unauthenticated)?.to_str().map_err(|_| RelayError::BadHeader(name))
}

impl Queue {
    fn new(now: Instant) -> Self {
        Self { frames: VecDeque::new(), bytes: 0, last_active: now, notify: Arc::default() }
    }
}

async fn post_handler(
    State(relay): State<Arc<Relay>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    cert: Option<Extension<PeerCertificate>>,
    body: Body,
) -> Response {
    match post(&relay, query.as_deref(), &headers, cert.as_ref().map(|c| &c.0), body).await {
        Ok(()) => {
            relay.metrics.messages.with_label_values(&["in"]).inc();
            StatusCode::ACCEPTED.into_response()
        }
        Err(error) => relay.reject(error),
    }
}

async fn post(
    relay: &Relay,
    query: Option<&str>,
    headers: &HeaderMap,
    cert: Option<&PeerCertificate>,
    body: Body,
) -> Result<(), RelayError> {
    let cluster = cluster_header(headers)?;
    relay.check_known(cluster)?;
    let party = party_header(headers)?.ok_or(RelayError::MissingHeader(PARTY_HEADER))?;
    relay.authenticate(cert, cluster, party)?;
    let mut to = None;
    for (key, value) in query_pairs(query) {
        if key == "to" {
            to = Some(parse_party(value)?);
        }
    }
    // A signed request is authenticated before a byte of its body is read:
    // only a node of the cluster spends the relay's reading budget.
    let digest = match relay.signed() {
        true => {
            let digest = signed_header(headers, BODY_DIGEST_HEADER)?;
            let digest =
                <[u8; 32]>::try_from(hex::decode(digest).map_err(|_| RelayError::BadHeader(BODY_DIGEST_HEADER))?)
                    .map_err(|_| RelayError::BadHeader(BODY_DIGEST_HEADER))?;
            relay.verify_signed("POST", cluster, party, query.unwrap_or_default(), headers, &digest)?;
            Some(digest)
        }
        false => None,
    };
    let body = tokio::time::timeout(BODY_TIMEOUT, read_body(&relay.reading, headers, body))
        .await
        .map_err(|_| RelayError::Body("not received in time".into()))??;
    if digest.is_some_and(|digest| digest != body_digest(&body)) {
        return Err(RelayError::Unauthenticated);
    }
    let envelope = frame::decode(&body)?;
    if envelope.from != party {
        return Err(RelayError::WrongParty { claimed: envelope.from, actual: party });
    }
    let to = match (to, envelope.to) {
        (Some(query), Some(envelope)) if query != envelope => {
            return Err(RelayError::RecipientMismatch { query, envelope });
        }
        (Some(to), _) | (None, Some(to)) => to,
        (None, None) => return Err(RelayError::NoRecipient),
    };
    relay.push(cluster, to, body, Instant::now())
}

/// Reads at most [`frame::MAX_FRAME`] bytes of body, and no more than the
/// length declared, once `budget` (KiB permits) grants that length.
async fn read_body(budget: &Arc<tokio::sync::Semaphore>, headers: &HeaderMap, body: Body) -> Result<Bytes, RelayError> {
    let declared = match headers.get(header::CONTENT_LENGTH) {
        Some(value) => {
            let length = value.to_str().ok().and_then(|v| v.parse::<usize>().ok());
            Some(length.ok_or(RelayError::BadHeader("content-length"))?)
        }
        None => None,
    };
    let limit = declared.unwrap_or(frame::MAX_FRAME);
    if limit > frame::MAX_FRAME {
        return Err(RelayError::TooLarge(limit));
    }
    // Counted before a byte is read: a flood of large bodies is refused
    // here instead of held in memory.
    let permits = u32::try_from(kib(limit)).map_err(|_| RelayError::TooLarge(limit))?;
    let _reading = Arc::clone(budget).try_acquire_many_owned(permits).map_err(|_| RelayError::Busy)?;
    let mut out = Vec::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| RelayError::Body(e.to_string()))?;
        if out.len() + chunk.len() > limit {
            return Err(RelayError::TooLarge(out.len() + chunk.len()));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.into())
}

/// `bytes` in KiB permits, rounded up (at least one).
fn kib(bytes: usize) -> usize {
    bytes.div_ceil(1024).max(1)
}

async fn poll_handler(
    State(relay): State<Arc<Relay>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    cert: Option<Extension<PeerCertificate>>,
) -> Response {
    match poll(&relay, query.as_deref(), &headers, cert.as_ref().map(|c| &c.0)).await {
        Ok(frames) => {
            relay.metrics.messages.with_label_values(&["out"]).inc_by(frames.len() as u64);
            let mut body = Vec::with_capacity(frames.iter().map(|f| 4 + f.len()).sum());
            for frame in &frames {
                // Each frame passed the MAX_FRAME check, so its length fits u32.
                body.extend_from_slice(&(frame.len() as u32).to_be_bytes());
                body.extend_from_slice(frame);
            }
            ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response()
        }
        Err(error) => relay.reject(error),
    }
}

async fn poll(
    relay: &Relay,
    query: Option<&str>,
    headers: &HeaderMap,
    cert: Option<&PeerCertificate>,
) -> Result<Vec<Bytes>, RelayError> {
    let cluster = cluster_header(headers)?;
    relay.check_known(cluster)?;
    let (mut party, mut wait) = (None, Duration::ZERO);
    for (key, value) in query_pairs(query) {
        match key {
            "party" => party = Some(parse_party(value)?),
            "wait_ms" => {
                let ms: u64 = value.parse().map_err(|_| RelayError::BadQuery(format!("wait_ms={value}")))?;
                wait = Duration::from_millis(ms).min(MAX_WAIT);
            }
            _ => {}
        }
    }
    let party = party.ok_or_else(|| RelayError::BadQuery("party is required".into()))?;
    if let Some(header_party) = party_header(headers)?
        && header_party != party
    {
        return Err(RelayError::WrongParty { claimed: party, actual: header_party });
    }
    relay.authenticate(cert, cluster, party)?;
    if relay.signed() && party_header(headers)?.is_none() {
        return Err(RelayError::MissingHeader(PARTY_HEADER));
    }
    relay.verify_signed("GET", cluster, party, query.unwrap_or_default(), headers, &body_digest(&[]))?;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let (frames, notify) = relay.take(cluster, party, Instant::now())?;
        if !frames.is_empty() || tokio::time::Instant::now() >= deadline || relay.closed.is_cancelled() {
            return Ok(frames);
        }
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // A push between `take` and `enable` woke nobody: look again.
        if relay.pending(cluster, party) {
            continue;
        }
        tokio::select! {
            () = notified => {}
            () = tokio::time::sleep_until(deadline) => {}
            () = relay.closed.cancelled() => {}
        }
    }
}

fn cluster_header(headers: &HeaderMap) -> Result<&str, RelayError> {
    let value = headers.get(CLUSTER_HEADER).ok_or(RelayError::MissingHeader(CLUSTER_HEADER))?;
    let value = value.to_str().map_err(|_| RelayError::BadHeader(CLUSTER_HEADER))?;
    let well_formed = value.len() <= MAX_CLUSTER_LEN
        && value.split_once('/').is_some_and(|(namespace, name)| {
            let part =
                |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            part(namespace) && part(name)
        });
    if well_formed { Ok(value) } else { Err(RelayError::BadHeader(CLUSTER_HEADER)) }
}

fn party_header(headers: &HeaderMap) -> Result<Option<u16>, RelayError> {
    headers
        .get(PARTY_HEADER)
        .map(|v| v.to_str().ok().and_then(|v| v.parse().ok()).ok_or(RelayError::BadHeader(PARTY_HEADER)))
        .transpose()
}

fn parse_party(value: &str) -> Result<u16, RelayError> {
    value.parse().map_err(|_| RelayError::BadQuery(format!("not a party index: {value:?}")))
}

fn query_pairs(query: Option<&str>) -> impl Iterator<Item = (&str, &str)> {
    query.unwrap_or_default().split('&').filter_map(|pair| pair.split_once('='))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(limits: RelayLimits) -> Relay {
        Relay::new(&Registry::new(), limits).unwrap()
    }

    fn body(n: usize) -> Bytes {
        Bytes::from(vec![7; n])
    }

    #[test]
    fn frames_come_out_in_arrival_order_and_only_once() {
        let relay = relay(RelayLimits::default());
        let now = Instant::now();
        for i in 0..5u8 {
            relay.push("ns/a", 1, Bytes::from(vec![i]), now).unwrap();
        }
        let (frames, _) = relay.take("ns/a", 1, now).unwrap();
        assert_eq!(frames, (0..5u8).map(|i| Bytes::from(vec![i])).collect::<Vec<_>>());
        assert!(relay.take("ns/a", 1, now).unwrap().0.is_empty());
        assert!(relay.take("ns/b", 1, now).unwrap().0.is_empty(), "clusters are apart");
        assert_eq!(relay.metrics.queued_messages.get(), 0);
        assert_eq!(relay.metrics.queued_bytes.get(), 0);
    }

    #[test]
    fn per_recipient_total_and_cluster_limits_hold() {
        let relay = relay(RelayLimits {
            max_messages_per_recipient: 2,
            max_bytes_per_recipient: 100,
            max_total_bytes: 150,
            max_clusters: 2,
            ..RelayLimits::default()
        });
        let now = Instant::now();
        relay.push("ns/a", 1, body(10), now).unwrap();
        relay.push("ns/a", 1, body(10), now).unwrap();
        assert!(matches!(relay.push("ns/a", 1, body(10), now), Err(RelayError::QueueFull(1))));
        relay.push("ns/a", 2, body(80), now).unwrap();
        assert!(matches!(relay.push("ns/a", 2, body(30), now), Err(RelayError::QueueFull(2))), "bytes");
        relay.push("ns/b", 1, body(40), now).unwrap();
        assert!(matches!(relay.push("ns/b", 2, body(20), now), Err(RelayError::RelayFull)));
        assert!(matches!(relay.push("ns/c", 1, body(1), now), Err(RelayError::TooManyClusters)));
        assert_eq!(relay.metrics.queued_messages.get(), 4);
        assert_eq!(relay.metrics.queued_bytes.get(), 140);
        // Draining makes room again.
        assert_eq!(relay.take("ns/a", 1, now).unwrap().0.len(), 2);
        relay.push("ns/a", 1, body(10), now).unwrap();
    }

    #[test]
    fn a_request_is_remembered_as_long_as_it_could_pass() {
        let mut seen = Seen::default();
        let skew = MAX_SKEW.as_millis() as u64;
        let t0 = 1_000_000;
        seen.remember("ns/a", b"request", t0).unwrap();
        // Signed at t0 + skew, it arrived at t0 and stays fresh until t0 + 2 skew.
        assert!(matches!(seen.remember("ns/a", b"request", t0 + 2 * skew), Err(RelayError::Replayed)));
        seen.remember("ns/a", b"request", t0 + 2 * skew + 1).unwrap();
        // Another cluster has a share of its own.
        seen.remember("ns/b", b"another request", t0 + 2 * skew + 1).unwrap();
        assert_eq!(seen.per_cluster.len(), 2);
        assert_eq!(seen.at.len(), 2);
    }

    #[test]
    fn one_cluster_cannot_take_the_whole_relay() {
        let relay =
            relay(RelayLimits { max_bytes_per_cluster: 50, idle_ttl: Duration::ZERO, ..RelayLimits::default() });
        let now = Instant::now();
        relay.push("ns/a", 1, body(30), now).unwrap();
        assert!(matches!(relay.push("ns/a", 2, body(30), now), Err(RelayError::QueueFull(2))), "cluster bytes");
        relay.push("ns/b", 2, body(30), now).unwrap();
        assert_eq!(relay.take("ns/a", 1, now).unwrap().0.len(), 1);
        relay.push("ns/a", 2, body(30), now).unwrap();
        // Swept queues give their bytes back to their cluster.
        let later = now + Duration::from_secs(1);
        relay.sweep(&mut relay.state.lock().unwrap(), later);
        relay.push("ns/a", 2, body(50), later).unwrap();
    }

    #[test]
    fn a_poll_returns_at_most_max_poll_bytes_but_always_one_frame() {
        let relay = relay(RelayLimits { max_bytes_per_recipient: 64 << 20, ..RelayLimits::default() });
        let now = Instant::now();
        let big = frame::MAX_FRAME;
        for _ in 0..3 {
            relay.push("ns/a", 1, body(big), now).unwrap();
        }
        assert_eq!(relay.take("ns/a", 1, now).unwrap().0.len(), 1, "two would exceed the cap with prefixes");
        assert_eq!(relay.take("ns/a", 1, now).unwrap().0.len(), 1);
        assert_eq!(relay.take("ns/a", 1, now).unwrap().0.len(), 1);
    }

    #[test]
    fn idle_queues_expire_with_their_messages_unless_polled() {
        let ttl = Duration::from_secs(60);
        let relay = relay(RelayLimits { idle_ttl: ttl, max_clusters: 1, ..RelayLimits::default() });
        let t0 = Instant::now();
        relay.push("ns/a", 1, body(3), t0).unwrap();
        relay.push("ns/a", 1, body(3), t0).unwrap();
        // A waiting poll (holding the wake-up) keeps its queue alive.
        let (_, waiting) = relay.take("ns/a", 2, t0).unwrap();
        let later = t0 + ttl + Duration::from_secs(1);
        // The only cluster slot frees once the idle queue of "ns/a" is gone...
        assert!(matches!(relay.push("ns/b", 1, body(1), later), Err(RelayError::TooManyClusters)));
        assert_eq!(relay.metrics.expired.get(), 2);
        assert_eq!(relay.metrics.queued_messages.get(), 0);
        // ...but the polled one still holds it.
        drop(waiting);
        let much_later = later + ttl;
        relay.push("ns/b", 1, body(1), much_later).unwrap();
        assert_eq!(relay.metrics.queued_bytes.get(), 1);
    }

    #[test]
    fn an_authenticator_binds_party_and_cluster_to_the_certificate() {
        let relay = relay(RelayLimits::default()).with_authenticator(|cert: &PeerCertificate| {
            let party_index = u16::from(*cert.0.first()?);
            Some(Identity { namespace: "vault".into(), cluster: "demo".into(), role: Role::Node { party_index } })
        });
        let cert = PeerCertificate(vec![2]);
        relay.authenticate(Some(&cert), "vault/demo", 2).unwrap();
        assert!(matches!(
            relay.authenticate(Some(&cert), "vault/demo", 1),
            Err(RelayError::WrongParty { claimed: 1, actual: 2 })
        ));
        assert!(matches!(relay.authenticate(Some(&cert), "vault/other", 2), Err(RelayError::ForeignCluster(_))));
        assert!(matches!(relay.authenticate(None, "vault/demo", 2), Err(RelayError::Unauthenticated)));
        assert!(matches!(
            relay.authenticate(Some(&PeerCertificate(vec![])), "vault/demo", 2),
            Err(RelayError::Unauthenticated)
        ));
        // Without one, headers are trusted (behind mutual TLS only).
        Relay::new(&Registry::new(), RelayLimits::default()).unwrap().authenticate(None, "vault/demo", 2).unwrap();
    }

    #[test]
    fn headers_and_queries_are_checked() {
        let mut headers = HeaderMap::new();
        assert!(matches!(cluster_header(&headers), Err(RelayError::MissingHeader(_))));
        for bad in ["demo", "/demo", "vault/", "vault/demo/x", "vault/de mo"] {
            headers.insert(CLUSTER_HEADER, HeaderValue::from_static(bad));
            assert!(matches!(cluster_header(&headers), Err(RelayError::BadHeader(_))), "{bad}");
        }
        headers.insert(CLUSTER_HEADER, HeaderValue::from_static("vault/demo-1"));
        assert_eq!(cluster_header(&headers).unwrap(), "vault/demo-1");
        assert_eq!(party_header(&headers).unwrap(), None);
        headers.insert(PARTY_HEADER, HeaderValue::from_static("70000"));
        assert!(party_header(&headers).is_err());
        let pairs: Vec<_> = query_pairs(Some("party=1&wait_ms=5&junk")).collect();
        assert_eq!(pairs, [("party", "1"), ("wait_ms", "5")]);
    }
}
