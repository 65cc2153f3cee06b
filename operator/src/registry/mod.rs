//! The node registry: nodes register and heartbeat, the operator keeps what they said in
//! memory, adds what it observed itself (session outcomes, latency), and answers who is
//! online and how healthy each node is.
//!
//! Writes are authenticated with the node's own TLS certificate: a POST carries a
//! [`SignedMessage`] whose certificate must chain to the cluster's trust bundle (from the
//! operator's [`TrustLookup`]), whose Torcus identity must be the very node the payload
//! speaks for, whose ECDSA signature must cover the exact payload text, and whose `sentAt`
//! must be within a minute of the operator's clock and later than the node's previous
//! message (so a captured heartbeat cannot keep a dead node online). Anything else is
//! refused with a JSON [`RegistryError`] and counted in `torcus_registry_rejected_total`.
//!
//! Reads (`GET .../nodes`, `.../nodes/{party}`, `.../stats`) are **not** authenticated: they
//! expose pod IPs, ports, versions and health, which is what `kubectl get mpc -o yaml`
//! already shows in the MpcCluster status to anyone who can reach the API; nothing in them
//! is secret or grants anything.
//!
//! State is in memory only. After an operator restart every node's next heartbeat gets 404,
//! and the node registers again; the health history starts afresh.
//!
//! Health is computed when asked, so a node that stopped heartbeating reads offline without a
//! sweeper: `health = 0.4·reliability + 0.3·latency score + 0.3·uptime score`, where
//! - reliability is the share of successful sessions among those the operator saw the node
//!   take part in within the window ([`NodeRegistry::record_outcome`]), 1 with none;
//! - latency score is 1 at an operator-observed latency ([`NodeRegistry::record_latency`],
//!   exponentially weighted) of 50 ms or less, falling linearly to 0 at 2 s, 1 with none;
//! - uptime score is the share of the window (or of the time since the node first registered,
//!   if shorter) covered by heartbeats, each heartbeat (and registration) covering the
//!   heartbeat interval after it plus a quarter interval of grace for jitter. Measured in
//!   time rather than by counting heartbeats per interval slot, it does not depend on where
//!   slot boundaries fall, and extra heartbeats cannot make up for missing ones.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::future::BoxFuture;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};
use torcus_certs::{Identity, OffsetDateTime, Role};
use torcus_contract::registry::{
    self, HEARTBEAT_PATH, MAX_BODY_BYTES, MAX_CLOCK_SKEW_MS, NODE_PATH, NODES_PATH, REGISTER_PATH, STATS_PATH,
};
use torcus_contract::{
    ClusterStats, Heartbeat, NodeRecord, Registration, RegistryError, RegistryMessage, SignedMessage,
};

mod health;
mod http;

use health::*;
pub use http::router;
use http::*;

/// Longest version string a registration may carry.
const MAX_VERSION_LEN: usize = 128;

/// Every value of the `reason` label of `torcus_registry_rejected_total`.
const REASONS: &[&str] = &[
    "too_large",
    "malformed",
    "wrong_kind",
    "unknown_cluster",
    "untrusted_certificate",
    "bad_signature",
    "identity_mismatch",
    "stale",
    "replayed",
    "not_registered",
];

/// Timing of the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegistrySettings {
    /// How often nodes are expected to heartbeat.
    pub heartbeat_interval: Duration,
    /// A node whose last heartbeat (or registration) is older than this is offline.
    pub stale_after: Duration,
    /// How far back reliability and uptime look.
    pub window: Duration,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(5),
            stale_after: Duration::from_secs(15),
            window: Duration::from_secs(600),
        }
    }
}

/// The trust bundle (PEM) of the cluster `(namespace, name)`, or `None` for a cluster the
/// operator does not manage. Called once per POST, so it should answer from a cache.
pub type TrustLookup = Arc<dyn Fn(String, String) -> BoxFuture<'static, Option<String>> + Send + Sync>;

/// The registry of every cluster's nodes, in memory.
#[derive(Debug)]
pub struct NodeRegistry {
    settings: RegistrySettings,
    state: Mutex<Known>,
    metrics: RegistryMetrics,
}

impl NodeRegistry {
    /// An empty registry whose metrics are registered in `metrics`.
    pub fn new(metrics: &prometheus::Registry, settings: RegistrySettings) -> prometheus::Result<Self> {
        Ok(Self { settings, state: Mutex::default(), metrics: RegistryMetrics::register(metrics)? })
    }

    /// The settings it was made with.
    pub fn settings(&self) -> RegistrySettings {
        self.settings
    }

    /// Records the outcome of a session the node took part in, as the operator saw it.
    /// Ignored for a node that is not registered.
    pub fn record_outcome(&self, namespace: &str, cluster: &str, party: u16, ok: bool) {
        self.record_outcome_at(namespace, cluster, party, ok, Instant::now());
    }

    /// Records a latency the operator observed talking to the node (e.g. a request's round
    /// trip). Ignored for a node that is not registered.
    pub fn record_latency(&self, namespace: &str, cluster: &str, party: u16, latency: Duration) {
        let mut state = self.lock();
        if let Some(node) = state.nodes.get_mut(&key(namespace, cluster, party)) {
            let sample = latency.as_secs_f64();
            node.latency = Some(node.latency.map_or(sample, |avg| avg + LATENCY_ALPHA * (sample - avg)));
        }
    }

    /// Every registered node of the cluster, by party index, as of now.
    pub fn nodes(&self, namespace: &str, cluster: &str) -> Vec<NodeRecord> {
        self.nodes_at(namespace, cluster, Now::system())
    }

    /// One node as of now, if it is registered.
    pub fn node(&self, namespace: &str, cluster: &str, party: u16) -> Option<NodeRecord> {
        self.nodes(namespace, cluster).into_iter().find(|node| node.party == party)
    }

    /// A summary of the cluster as of now.
    pub fn stats(&self, namespace: &str, cluster: &str) -> ClusterStats {
        let nodes = self.nodes(namespace, cluster);
        let count =
            |online: bool| u32::try_from(nodes.iter().filter(|n| n.online == online).count()).unwrap_or(u32::MAX);
        let average_health =
            if nodes.is_empty() { 0.0 } else { nodes.iter().map(|n| n.health_score).sum::<f64>() / nodes.len() as f64 };
        let heartbeats_total =
            self.lock().heartbeats.get(&(namespace.to_owned(), cluster.to_owned())).copied().unwrap_or(0);
        ClusterStats {
            nodes: u32::try_from(nodes.len()).unwrap_or(u32::MAX),
            online: count(true),
            offline: count(false),
            average_health,
            heartbeats_total,
        }
    }

    /// Drops everything known about the cluster, e.g. once its MpcCluster is deleted.
    pub fn forget_cluster(&self, namespace: &str, cluster: &str) {
        let mut state = self.lock();
        state.nodes.retain(|(ns, name, _), _| ns != namespace || name != cluster);
        state.heartbeats.remove(&(namespace.to_owned(), cluster.to_owned()));
        self.update_online(&state, Instant::now());
    }

    fn nodes_at(&self, namespace: &str, cluster: &str, now: Now) -> Vec<NodeRecord> {
        let state = self.lock();
        self.update_online(&state, now.instant);
        let range = key(namespace, cluster, 0)..=key(namespace, cluster, u16::MAX);
        state.nodes.range(range).map(|((_, _, party), node)| self.record(*party, node, now.instant)).collect()
    }

    fn record_outcome_at(&self, namespace: &str, cluster: &str, party: u16, ok: bool, now: Instant) {
        let bucket_width = self.bucket_width();
        let window = self.settings.window;
        let mut state = self.lock();
        let Some(node) = state.nodes.get_mut(&key(namespace, cluster, party)) else { return };
        node.prune_outcomes(now, window, bucket_width);
        let bucket = match node.outcomes.back_mut() {
            Some(bucket) if now.saturating_duration_since(bucket.start) < bucket_width => bucket,
            _ => {
                node.outcomes.push_back(OutcomeBucket { start: now, ok: 0, failed: 0 });
                // Just pushed.
                node.outcomes.back_mut().expect("a bucket")
            }
        };
        if ok {
            bucket.ok += 1;
        } else {
            bucket.failed += 1;
        }
    }

    /// Stores a verified registration. A node registering again keeps its history (its
    /// uptime shows the gap), but gets its new address.
    fn accept_registration(&self, registration: Registration, now: Now) -> Result<NodeRecord, Rejection> {
        let cover = self.cover();
        let mut state = self.lock();
        let party = registration.party;
        let node_key = key(&registration.namespace, &registration.cluster, party);
        let node = match state.nodes.entry(node_key) {
            Entry::Occupied(entry) => {
                let node = entry.into_mut();
                if registration.sent_at <= node.last_sent_at {
                    return Err(replayed());
                }
                node.registration = registration;
                node
            }
            Entry::Vacant(entry) => entry.insert(NodeState::new(registration, now.instant)),
        };
        node.last_sent_at = node.registration.sent_at;
        node.registered_at_ms = now.unix_ms;
        node.seen(now.instant, cover, self.settings.window);
        let record = self.record(party, node, now.instant);
        self.update_online(&state, now.instant);
        self.metrics.registrations.inc();
        Ok(record)
    }

    /// Stores a verified heartbeat of a registered node.
    fn accept_heartbeat(&self, heartbeat: Heartbeat, now: Now) -> Result<NodeRecord, Rejection> {
        let cover = self.cover();
        let mut state = self.lock();
        let node_key = key(&heartbeat.namespace, &heartbeat.cluster, heartbeat.party);
        let Some(node) = state.nodes.get_mut(&node_key) else {
            return Err(Rejection::new(StatusCode::NOT_FOUND, "not_registered", "node is not registered"));
        };
        if heartbeat.sent_at <= node.last_sent_at {
            return Err(replayed());
        }
        node.last_sent_at = heartbeat.sent_at;
        node.last_heartbeat_ms = Some(now.unix_ms);
        node.sessions_ok = heartbeat.sessions_ok;
        node.sessions_failed = heartbeat.sessions_failed;
        node.keys = heartbeat.keys;
        node.seen(now.instant, cover, self.settings.window);
        let record = self.record(heartbeat.party, node, now.instant);
        *state.heartbeats.entry((heartbeat.namespace, heartbeat.cluster)).or_default() += 1;
        self.update_online(&state, now.instant);
        self.metrics.heartbeats.inc();
        Ok(record)
    }

    fn record(&self, party: u16, node: &NodeState, now: Instant) -> NodeRecord {
        let RegistrySettings { stale_after, window, .. } = self.settings;
        let reliability = node.reliability(now, window, self.bucket_width());
        let latency_score = node.latency.map_or(1.0, latency_score);
        let uptime_score = node.uptime(now, window);
        let registration = &node.registration;
        NodeRecord {
            party,
            address: registration.address.clone(),
            http_port: registration.http_port,
            p2p_port: registration.p2p_port,
            version: registration.version.clone(),
            online: now.saturating_duration_since(node.last_seen) <= stale_after,
            health_score: health(reliability, latency_score, uptime_score),
            reliability,
            latency_score,
            uptime_score,
            last_heartbeat: node.last_heartbeat_ms,
            registered_at: node.registered_at_ms,
            started_at: registration.started_at,
            sessions_ok: node.sessions_ok,
            sessions_failed: node.sessions_failed,
            capabilities: registration.capabilities.clone(),
            keys: node.keys.clone(),
        }
    }

    fn update_online(&self, state: &Known, now: Instant) {
        let stale_after = self.settings.stale_after;
        let online = state.nodes.values().filter(|n| now.saturating_duration_since(n.last_seen) <= stale_after).count();
        self.metrics.nodes_online.set(i64::try_from(online).unwrap_or(i64::MAX));
    }

    /// How long one heartbeat keeps a node covered for the uptime score.
    fn cover(&self) -> Duration {
        self.settings.heartbeat_interval + self.settings.heartbeat_interval / 4
    }

    fn bucket_width(&self) -> Duration {
        (self.settings.window / OUTCOME_BUCKETS).max(Duration::from_millis(1))
    }

    fn lock(&self) -> MutexGuard<'_, Known> {
        // Every critical section leaves the maps consistent before anything can panic, so
        // the state behind a poisoned lock is still good.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Checks the fields of a registration the operator will hand out to others.
fn validate(registration: &Registration) -> Result<(), &'static str> {
    match registration.address.parse::<IpAddr>() {
        Ok(ip) if !ip.is_unspecified() => {}
        _ => return Err("address is not the pod IP"),
    }
    if registration.http_port == 0 || registration.p2p_port == 0 {
        return Err("port 0");
    }
    if registration.version.len() > MAX_VERSION_LEN {
        return Err("version is too long");
    }
    if let Some(why) = registration.capabilities.as_ref().and_then(|c| c.invalid()) {
        return Err(why);
    }
    Ok(())
}

fn offset_time(unix_ms: u64) -> OffsetDateTime {
    let nanos = i128::from(unix_ms) * 1_000_000;
    // Milliseconds since 1970 as u64 are far inside OffsetDateTime's range.
    OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

type NodeKey = (String, String, u16);

fn key(namespace: &str, cluster: &str, party: u16) -> NodeKey {
    (namespace.to_owned(), cluster.to_owned(), party)
}

/// The clock, read once per request: monotonic for durations, wall for what is shown.
#[derive(Clone, Copy, Debug)]
struct Now {
    instant: Instant,
    unix_ms: u64,
}

impl Now {
    fn system() -> Self {
        let unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        Self { instant: Instant::now(), unix_ms: u64::try_from(unix_ms).unwrap_or(u64::MAX) }
    }
}

/// Everything the registry knows.
#[derive(Debug, Default)]
struct Known {
    /// Ordered so that a cluster's nodes are one range, by party.
    nodes: BTreeMap<NodeKey, NodeState>,
    /// Accepted heartbeats per `(namespace, cluster)`.
    heartbeats: HashMap<(String, String), u64>,
}

#[derive(Debug)]
struct RegistryMetrics {
    heartbeats: IntCounter,
    registrations: IntCounter,
    rejected: IntCounterVec,
    nodes_online: IntGauge,
}

impl RegistryMetrics {
    fn register(registry: &prometheus::Registry) -> prometheus::Result<Self> {
        let heartbeats = IntCounter::new("torcus_registry_heartbeats_total", "Node heartbeats accepted")?;
        let registrations = IntCounter::new("torcus_registry_registrations_total", "Node registrations accepted")?;
        let rejected = IntCounterVec::new(
            Opts::new("torcus_registry_rejected_total", "Registry messages refused, by reason"),
            &["reason"],
        )?;
        let nodes_online = IntGauge::new("torcus_registry_nodes_online", "Registered nodes currently online")?;
        registry.register(Box::new(heartbeats.clone()))?;
        registry.register(Box::new(registrations.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        registry.register(Box::new(nodes_online.clone()))?;
        for reason in REASONS {
            rejected.with_label_values(&[*reason]);
        }
        Ok(Self { heartbeats, registrations, rejected, nodes_online })
    }
}

#[cfg(test)]
mod tests {
    use axum::http::Request;
    use serde_json::Value;
    use torcus_certs::{CertificateAuthority, IssuedCertificate};
    use tower::ServiceExt;

    use super::*;

    const NS: &str = "default";
    const CLUSTER: &str = "demo";

    struct Fixture {
        registry: Arc<NodeRegistry>,
        app: axum::Router,
        ca: CertificateAuthority,
        prometheus: prometheus::Registry,
    }

    fn fixture(settings: RegistrySettings) -> Fixture {
        let prometheus = prometheus::Registry::new();
        let registry = Arc::new(NodeRegistry::new(&prometheus, settings).unwrap());
        let ca = CertificateAuthority::generate("torcus demo CA", torcus_certs::Duration::days(1), now_utc()).unwrap();
        let bundle = ca.cert_pem().to_owned();
        let trust: TrustLookup = Arc::new(move |ns, cluster| {
            let bundle = (ns == NS && cluster == CLUSTER).then(|| bundle.clone());
            Box::pin(async move { bundle })
        });
        Fixture { app: router(registry.clone(), trust), registry, ca, prometheus }
    }

    fn now_utc() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn unix_ms() -> u64 {
        Now::system().unix_ms
    }

    fn node_identity(party_index: u16) -> Identity {
        Identity { namespace: NS.into(), cluster: CLUSTER.into(), role: Role::Node { party_index } }
    }

    fn leaf(ca: &CertificateAuthority, identity: &Identity) -> IssuedCertificate {
        ca.issue(identity, &[], &[], torcus_certs::Duration::hours(1), now_utc()).unwrap()
    }

    fn registration(party: u16) -> Registration {
        Registration {
            namespace: NS.into(),
            cluster: CLUSTER.into(),
            party,
            address: format!("10.0.0.{}", party + 10),
            http_port: 8080,
            p2p_port: 7443,
            version: "0.1.0".into(),
            started_at: unix_ms() - 1000,
            sent_at: unix_ms(),
            capabilities: None,
        }
    }

    fn heartbeat(party: u16, sent_at: u64) -> Heartbeat {
        Heartbeat {
            namespace: NS.into(),
            cluster: CLUSTER.into(),
            party,
            sent_at,
            sessions_ok: 3,
            sessions_failed: 1,
            uptime_secs: 1,
            keys: Vec::new(),
        }
    }

    fn sign(leaf: &IssuedCertificate, message: &RegistryMessage) -> SignedMessage {
        let payload = serde_json::to_string(message).unwrap();
        let signature = torcus_certs::sign_with_key(&leaf.key_pem, &registry::signing_input(&payload)).unwrap();
        SignedMessage { payload, certificate: leaf.cert_pem.clone(), signature: hex::encode(signature) }
    }

    async fn call(app: &axum::Router, request: Request<Body>) -> (StatusCode, Value) {
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    async fn post(app: &axum::Router, path: &str, body: impl Into<Body>) -> (StatusCode, Value) {
        let request = Request::post(path).header("content-type", "application/json").body(body.into()).unwrap();
        call(app, request).await
    }

    async fn post_signed(app: &axum::Router, path: &str, signed: &SignedMessage) -> (StatusCode, Value) {
        post(app, path, serde_json::to_vec(signed).unwrap()).await
    }

    async fn get_json(app: &axum::Router, path: &str) -> (StatusCode, Value) {
        call(app, Request::get(path).body(Body::empty()).unwrap()).await
    }

    fn rejected(f: &Fixture, reason: &str) -> u64 {
        f.registry.metrics.rejected.with_label_values(&[reason]).get()
    }

    /// Asserts the answer and that exactly one more rejection was counted for `reason`.
    async fn refused(f: &Fixture, path: &str, body: Vec<u8>, status: StatusCode, reason: &str) {
        let before = rejected(f, reason);
        let (got, json) = post(&f.app, path, body).await;
        assert_eq!((got, json["reason"].as_str()), (status, Some(reason)), "{json}");
        assert!(json["error"].is_string());
        assert_eq!(rejected(f, reason), before + 1, "{reason} not counted");
    }

    #[tokio::test]
    async fn register_heartbeat_list_get_and_stats() {
        let f = fixture(RegistrySettings::default());
        let (a, b) = (leaf(&f.ca, &node_identity(0)), leaf(&f.ca, &node_identity(1)));
        for (party, leaf) in [(1, &b), (0, &a)] {
            let message = RegistryMessage::Register(registration(party));
            let (status, record) = post_signed(&f.app, REGISTER_PATH, &sign(leaf, &message)).await;
            assert_eq!(status, StatusCode::OK, "{record}");
            assert_eq!(record["party"], party);
            assert_eq!(record["online"], true);
        }
        let (status, record) =
            post_signed(&f.app, HEARTBEAT_PATH, &sign(&a, &RegistryMessage::Heartbeat(heartbeat(0, unix_ms() + 1))))
                .await;
        assert_eq!(status, StatusCode::OK, "{record}");
        assert!(record["lastHeartbeat"].is_u64());

        let (status, list) = get_json(&f.app, &registry::nodes_path(NS, CLUSTER)).await;
        assert_eq!(status, StatusCode::OK);
        let list: Vec<NodeRecord> = serde_json::from_value(list).unwrap();
        assert_eq!(list.iter().map(|n| n.party).collect::<Vec<_>>(), [0, 1]);
        let first = &list[0];
        assert_eq!((first.address.as_str(), first.http_port, first.p2p_port), ("10.0.0.10", 8080, 7443));
        assert_eq!((first.sessions_ok, first.sessions_failed, first.version.as_str()), (3, 1, "0.1.0"));
        assert!(first.online && first.last_heartbeat.is_some() && list[1].last_heartbeat.is_none());
        // No outcomes or latency recorded, heartbeating since registration: full health.
        assert_eq!(
            (first.reliability, first.latency_score, first.uptime_score, first.health_score),
            (1.0, 1.0, 1.0, 1.0)
        );

        let (status, one) = get_json(&f.app, &registry::node_path(NS, CLUSTER, 1)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(serde_json::from_value::<NodeRecord>(one).unwrap().address, "10.0.0.11");
        let (status, missing) = get_json(&f.app, &registry::node_path(NS, CLUSTER, 7)).await;
        assert_eq!((status, missing["reason"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
        let (status, _) = get_json(&f.app, "/registry/v1/clusters/default/demo/nodes/x").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, empty) = get_json(&f.app, &registry::nodes_path(NS, "other")).await;
        assert_eq!((status, empty), (StatusCode::OK, Value::Array(vec![])));

        let (status, stats) = get_json(&f.app, &registry::stats_path(NS, CLUSTER)).await;
        assert_eq!(status, StatusCode::OK);
        let stats: ClusterStats = serde_json::from_value(stats).unwrap();
        assert_eq!(stats, ClusterStats { nodes: 2, online: 2, offline: 0, average_health: 1.0, heartbeats_total: 1 });

        let text = prometheus::TextEncoder::new().encode_to_string(&f.prometheus.gather()).unwrap();
        for line in [
            "torcus_registry_registrations_total 2",
            "torcus_registry_heartbeats_total 1",
            "torcus_registry_nodes_online 2",
            "torcus_registry_rejected_total{reason=\"stale\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }

        f.registry.forget_cluster(NS, CLUSTER);
        assert!(f.registry.nodes(NS, CLUSTER).is_empty());
        assert_eq!(f.registry.stats(NS, CLUSTER).heartbeats_total, 0);
        assert_eq!(f.registry.metrics.nodes_online.get(), 0);
    }

    #[tokio::test]
    async fn bad_messages_are_refused_and_counted() {
        let f = fixture(RegistrySettings::default());
        let me = leaf(&f.ca, &node_identity(0));
        let register = |r: Registration| serde_json::to_vec(&sign(&me, &RegistryMessage::Register(r))).unwrap();
        let unauthorized = StatusCode::UNAUTHORIZED;

        // A heartbeat before any registration: the node must register (again).
        let body = serde_json::to_vec(&sign(&me, &RegistryMessage::Heartbeat(heartbeat(0, unix_ms())))).unwrap();
        refused(&f, HEARTBEAT_PATH, body, StatusCode::NOT_FOUND, "not_registered").await;

        // A certificate from another CA, with the right identity.
        let other_ca = CertificateAuthority::generate("other CA", torcus_certs::Duration::days(1), now_utc()).unwrap();
        let intruder = leaf(&other_ca, &node_identity(0));
        let body = serde_json::to_vec(&sign(&intruder, &RegistryMessage::Register(registration(0)))).unwrap();
        refused(&f, REGISTER_PATH, body, unauthorized, "untrusted_certificate").await;

        // Party 1's certificate speaking for party 0; the operator's certificate; another cluster's name.
        let party_1 = leaf(&f.ca, &node_identity(1));
        let body = serde_json::to_vec(&sign(&party_1, &RegistryMessage::Register(registration(0)))).unwrap();
        refused(&f, REGISTER_PATH, body, StatusCode::FORBIDDEN, "identity_mismatch").await;
        let operator = leaf(&f.ca, &Identity { role: Role::Operator, ..node_identity(0) });
        let body = serde_json::to_vec(&sign(&operator, &RegistryMessage::Register(registration(0)))).unwrap();
        refused(&f, REGISTER_PATH, body, StatusCode::FORBIDDEN, "identity_mismatch").await;
        let elsewhere = Registration { cluster: "other".into(), ..registration(0) };
        refused(&f, REGISTER_PATH, register(elsewhere), unauthorized, "unknown_cluster").await;

        // Too old, too far ahead.
        for sent_at in [unix_ms() - 2 * MAX_CLOCK_SKEW_MS, unix_ms() + 2 * MAX_CLOCK_SKEW_MS] {
            refused(&f, REGISTER_PATH, register(Registration { sent_at, ..registration(0) }), unauthorized, "stale")
                .await;
        }

        // A payload changed after signing (another address), and a signature that is not one.
        let mut tampered = sign(&me, &RegistryMessage::Register(registration(0)));
        tampered.payload = tampered.payload.replace("10.0.0.10", "10.6.6.6");
        refused(&f, REGISTER_PATH, serde_json::to_vec(&tampered).unwrap(), unauthorized, "bad_signature").await;
        let mut garbage = sign(&me, &RegistryMessage::Register(registration(0)));
        garbage.signature = "00".into();
        refused(&f, REGISTER_PATH, serde_json::to_vec(&garbage).unwrap(), unauthorized, "bad_signature").await;

        // Shape: not JSON, not hex, bad address, a registration sent to the heartbeat endpoint, too big.
        refused(&f, REGISTER_PATH, b"{".to_vec(), StatusCode::BAD_REQUEST, "malformed").await;
        let mut not_hex = sign(&me, &RegistryMessage::Register(registration(0)));
        not_hex.signature = "zz".into();
        refused(&f, REGISTER_PATH, serde_json::to_vec(&not_hex).unwrap(), StatusCode::BAD_REQUEST, "malformed").await;
        for address in ["pod-0", "0.0.0.0"] {
            let bad_address = Registration { address: address.into(), ..registration(0) };
            refused(&f, REGISTER_PATH, register(bad_address), StatusCode::BAD_REQUEST, "malformed").await;
        }
        refused(&f, HEARTBEAT_PATH, register(registration(0)), StatusCode::BAD_REQUEST, "wrong_kind").await;
        let huge = vec![b' '; MAX_BODY_BYTES + 1];
        refused(&f, REGISTER_PATH, huge, StatusCode::PAYLOAD_TOO_LARGE, "too_large").await;

        // Nothing above registered anything.
        assert!(f.registry.nodes(NS, CLUSTER).is_empty());
        assert_eq!(f.registry.metrics.registrations.get(), 0);

        // A replayed registration or heartbeat, or one older than the last, is refused.
        let first = register(registration(0));
        let (status, _) = post(&f.app, REGISTER_PATH, first.clone()).await;
        assert_eq!(status, StatusCode::OK);
        refused(&f, REGISTER_PATH, first, unauthorized, "replayed").await;
        let sent_at = unix_ms() + 5;
        let body = serde_json::to_vec(&sign(&me, &RegistryMessage::Heartbeat(heartbeat(0, sent_at)))).unwrap();
        let (status, _) = post(&f.app, HEARTBEAT_PATH, body.clone()).await;
        assert_eq!(status, StatusCode::OK);
        refused(&f, HEARTBEAT_PATH, body, unauthorized, "replayed").await;
        let older = serde_json::to_vec(&sign(&me, &RegistryMessage::Heartbeat(heartbeat(0, sent_at - 1)))).unwrap();
        refused(&f, HEARTBEAT_PATH, older, unauthorized, "replayed").await;
        assert_eq!(f.registry.metrics.heartbeats.get(), 1);
    }

    #[tokio::test]
    async fn a_silent_node_goes_offline() {
        let settings = RegistrySettings {
            heartbeat_interval: Duration::from_millis(100),
            stale_after: Duration::from_millis(300),
            window: Duration::from_secs(10),
        };
        let f = fixture(settings);
        let me = leaf(&f.ca, &node_identity(0));
        let (status, _) =
            post_signed(&f.app, REGISTER_PATH, &sign(&me, &RegistryMessage::Register(registration(0)))).await;
        assert_eq!(status, StatusCode::OK);
        assert!(f.registry.node(NS, CLUSTER, 0).unwrap().online);

        tokio::time::sleep(Duration::from_millis(400)).await;
        let record = f.registry.node(NS, CLUSTER, 0).unwrap();
        assert!(!record.online);
        assert!(record.uptime_score < 0.5, "{record:?}");
        let stats = f.registry.stats(NS, CLUSTER);
        assert_eq!((stats.nodes, stats.online, stats.offline, stats.heartbeats_total), (1, 0, 1, 0));
        assert_eq!(f.registry.metrics.nodes_online.get(), 0);

        // A heartbeat brings it back.
        let hb = RegistryMessage::Heartbeat(heartbeat(0, unix_ms() + 1));
        let (status, record) = post_signed(&f.app, HEARTBEAT_PATH, &sign(&me, &hb)).await;
        assert_eq!((status, &record["online"]), (StatusCode::OK, &Value::Bool(true)));
        assert_eq!(f.registry.metrics.nodes_online.get(), 1);
    }

    /// A registry with one registered node at `t0`, 1 s heartbeats and a 10 s window.
    fn registered_at(t0: Now) -> NodeRegistry {
        let settings = RegistrySettings {
            heartbeat_interval: Duration::from_secs(1),
            stale_after: Duration::from_secs(3),
            window: Duration::from_secs(10),
        };
        let registry = NodeRegistry::new(&prometheus::Registry::new(), settings).unwrap();
        registry.accept_registration(Registration { sent_at: t0.unix_ms, ..registration(0) }, t0).unwrap();
        registry
    }

    fn after(t0: Now, d: Duration) -> Now {
        Now { instant: t0.instant + d, unix_ms: t0.unix_ms + u64::try_from(d.as_millis()).unwrap() }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn beat(registry: &NodeRegistry, at: Now) {
        registry.accept_heartbeat(heartbeat(0, at.unix_ms), at).unwrap();
    }

    fn approx(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn health_combines_reliability_latency_and_uptime() {
        let t0 = Now::system();
        let registry = registered_at(t0);
        for s in 1..=4 {
            beat(&registry, after(t0, secs(s)));
        }
        let t = t0.instant + secs(4);
        for ok in [true, true, true, false] {
            registry.record_outcome_at(NS, CLUSTER, 0, ok, t);
        }
        // One sample is the average: 1.025 s is halfway between 50 ms and 2 s.
        registry.record_latency(NS, CLUSTER, 0, Duration::from_millis(1025));
        let node = &registry.nodes_at(NS, CLUSTER, after(t0, secs(4)))[0];
        assert_eq!(node.reliability, 0.75);
        assert!(approx(node.latency_score, 0.5), "{node:?}");
        assert_eq!(node.uptime_score, 1.0);
        assert!(approx(node.health_score, 0.4 * 0.75 + 0.3 * 0.5 + 0.3 * 1.0), "{node:?}");

        // The average moves 30 % of the way to a new sample: 1.025 + 0.3·(0.05 − 1.025) s.
        registry.record_latency(NS, CLUSTER, 0, Duration::from_millis(50));
        let node = &registry.nodes_at(NS, CLUSTER, after(t0, secs(4)))[0];
        assert!(approx(node.latency_score, 1.0 - (0.7325 - 0.05) / 1.95), "{node:?}");

        // Outcomes leave the window.
        let later = &registry.nodes_at(NS, CLUSTER, after(t0, secs(20)))[0];
        assert_eq!(later.reliability, 1.0);

        // Unknown nodes are ignored.
        registry.record_outcome(NS, CLUSTER, 9, false);
        registry.record_latency(NS, CLUSTER, 9, secs(5));
        assert_eq!(registry.nodes(NS, CLUSTER).len(), 1);
    }

    #[test]
    fn latency_score_is_linear_between_50_ms_and_2_s() {
        assert_eq!(latency_score(0.0), 1.0);
        assert_eq!(latency_score(0.05), 1.0);
        assert!(approx(latency_score(1.025), 0.5));
        assert_eq!(latency_score(2.0), 0.0);
        assert_eq!(latency_score(30.0), 0.0);
    }

    #[test]
    fn uptime_counts_the_time_covered_by_heartbeats() {
        let t0 = Now::system();
        let registry = registered_at(t0);
        // Heartbeats at 1..=5 s, then silence: covered [0, 5 + 1.25) of [0, 10).
        for s in 1..=5 {
            beat(&registry, after(t0, secs(s)));
        }
        let uptime = |at: Duration| registry.nodes_at(NS, CLUSTER, after(t0, at))[0].uptime_score;
        assert_eq!(uptime(Duration::ZERO), 1.0);
        assert_eq!(uptime(secs(5)), 1.0);
        assert!(approx(uptime(secs(10)), 0.625));
        let at_10 = &registry.nodes_at(NS, CLUSTER, after(t0, secs(10)))[0];
        assert!(!at_10.online);

        // Back at 12 s and steady to 20 s: the window [10, 20) misses [10, 12).
        for s in 12..=20 {
            beat(&registry, after(t0, secs(s)));
        }
        assert!(approx(uptime(secs(20)), 0.8));
        // Heartbeating more often does not make up for the gap.
        for ms in (20_000..21_000).step_by(10) {
            beat(&registry, after(t0, Duration::from_millis(ms + 1)));
        }
        assert!(approx(uptime(secs(21)), 0.9));
        assert!(registry.lock().nodes.values().all(|n| n.covered.len() <= 2));
    }
}
