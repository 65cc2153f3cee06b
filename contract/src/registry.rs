//! The node registry's wire format: what a node sends the operator to register and
//! heartbeat, how it signs it, and what the operator answers about a cluster's nodes.
//!
//! A node signs with its TLS key: the body of every POST is a [`SignedMessage`] whose
//! `payload` is the exact JSON text of a [`RegistryMessage`], signed over
//! [`signing_input`] (the [`SIGNING_DOMAIN`] prefix, then the payload bytes), with the
//! node's leaf certificate alongside. The operator parses the payload it verified, never a
//! re-serialization, so both sides agree on the signed bytes without canonical JSON.
//!
//! All times are Unix milliseconds.

use serde::{Deserialize, Serialize};

use crate::Scheme;

/// `POST`: a node registers ([`RegistryMessage::Register`] in a [`SignedMessage`]).
pub const REGISTER_PATH: &str = "/registry/v1/register";
/// `POST`: a node heartbeats ([`RegistryMessage::Heartbeat`] in a [`SignedMessage`]).
pub const HEARTBEAT_PATH: &str = "/registry/v1/heartbeat";
/// `GET`: every registered node of a cluster, a list of [`NodeRecord`] ordered by party.
/// Route syntax; [`nodes_path`] fills it in.
pub const NODES_PATH: &str = "/registry/v1/clusters/{ns}/{cluster}/nodes";
/// `GET`: one node, a [`NodeRecord`]. Route syntax; [`node_path`] fills it in.
pub const NODE_PATH: &str = "/registry/v1/clusters/{ns}/{cluster}/nodes/{party}";
/// `GET`: a cluster's [`ClusterStats`]. Route syntax; [`stats_path`] fills it in.
pub const STATS_PATH: &str = "/registry/v1/clusters/{ns}/{cluster}/stats";

/// First bytes of every signed registry message, so that a signature made with a node's
/// TLS key for the registry is never valid for anything else, nor anything else for it.
pub const SIGNING_DOMAIN: &[u8] = b"torcus-registry-v1\0";
/// Largest request body the registry reads.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// How far a message's `sent_at` may be from the operator's clock, either way.
pub const MAX_CLOCK_SKEW_MS: u64 = 60_000;

/// The bytes a node signs and the operator verifies for `payload`.
pub fn signing_input(payload: &str) -> Vec<u8> {
    [SIGNING_DOMAIN, payload.as_bytes()].concat()
}

/// [`NODES_PATH`] for one cluster.
pub fn nodes_path(namespace: &str, cluster: &str) -> String {
    format!("/registry/v1/clusters/{namespace}/{cluster}/nodes")
}

/// [`NODE_PATH`] for one node.
pub fn node_path(namespace: &str, cluster: &str, party: u16) -> String {
    format!("/registry/v1/clusters/{namespace}/{cluster}/nodes/{party}")
}

/// [`STATS_PATH`] for one cluster.
pub fn stats_path(namespace: &str, cluster: &str) -> String {
    format!("/registry/v1/clusters/{namespace}/{cluster}/stats")
}

/// What a node signs: the kind is part of the signed text, so a registration can never be
/// replayed as a heartbeat or the other way round.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum RegistryMessage {
    /// Sent to [`REGISTER_PATH`].
    Register(Registration),
    /// Sent to [`HEARTBEAT_PATH`].
    Heartbeat(Heartbeat),
}

impl RegistryMessage {
    /// The node the message is about: `(namespace, cluster, party)`.
    pub fn node(&self) -> (&str, &str, u16) {
        match self {
            Self::Register(r) => (&r.namespace, &r.cluster, r.party),
            Self::Heartbeat(h) => (&h.namespace, &h.cluster, h.party),
        }
    }

    /// When the node signed it (Unix ms).
    pub fn sent_at(&self) -> u64 {
        match self {
            Self::Register(r) => r.sent_at,
            Self::Heartbeat(h) => h.sent_at,
        }
    }
}

/// A node announcing itself: where it can be reached, and which build it runs. Sent at
/// start-up, and again whenever the operator answers a heartbeat with 404 (it restarted and
/// forgot).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Registration {
    /// MpcCluster namespace.
    pub namespace: String,
    /// MpcCluster name.
    pub cluster: String,
    /// The node's party index.
    pub party: u16,
    /// The pod IP.
    pub address: String,
    /// HTTP API port.
    pub http_port: u16,
    /// Peer-to-peer port.
    pub p2p_port: u16,
    /// The node's version.
    pub version: String,
    /// When the node process started (Unix ms).
    pub started_at: u64,
    /// When this message was signed (Unix ms); must be within [`MAX_CLOCK_SKEW_MS`] of the
    /// operator's clock. Separate from `started_at` because a node may register long after
    /// it started (the operator was down, or restarted).
    pub sent_at: u64,
    /// What this build runs; absent from a build older than capabilities, which runs
    /// threshold ECDSA only (see [`Capabilities::of`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
}

/// Most schemes, transports or keys one message may list: more is refused, not cut.
pub const MAX_LISTED: usize = 16;
/// Longest protocol or transport name a message may carry.
pub const MAX_NAME_LEN: usize = 64;

/// What a node's build can run, as it registers: the operator grants a session only to
/// nodes that run its scheme, so during a rolling upgrade no session starts that an old
/// node cannot finish.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// The signature schemes it runs, each with the protocol it runs it with.
    pub schemes: Vec<SchemeSupport>,
    /// The grant format it verifies ([`crate::GRANT_VERSION`]).
    pub grant_version: u8,
    /// The transports it serves: `quic`, `tcp`, `http` (the relay), `hybrid`.
    pub transports: Vec<String>,
}

/// A scheme a node runs, and with what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SchemeSupport {
    /// The scheme's name ([`Scheme::as_str`]). A name, not a [`Scheme`]:
    /// a newer node may run a scheme this operator does not know, and its
    /// registration must still be taken.
    pub scheme: String,
    /// The protocol and its version, such as `cggmp24/0.7.0-alpha.3`.
    pub protocol: String,
}

impl Capabilities {
    /// Whether a node that registered with `capabilities` runs `scheme`. A registration
    /// without them comes from a build that predates FROST: ECDSA only.
    pub fn of(capabilities: Option<&Self>, scheme: Scheme) -> bool {
        match capabilities {
            Some(capabilities) => capabilities.schemes.iter().any(|s| s.scheme == scheme.as_str()),
            None => scheme == Scheme::EcdsaSecp256k1,
        }
    }

    /// Why these capabilities cannot be taken (too many entries, names too long), if so.
    pub fn invalid(&self) -> Option<&'static str> {
        if self.schemes.len() > MAX_LISTED || self.transports.len() > MAX_LISTED {
            return Some("too many schemes or transports");
        }
        let long = |s: &str| s.len() > MAX_NAME_LEN;
        let long_scheme = |s: &SchemeSupport| long(&s.scheme) || long(&s.protocol);
        if self.schemes.iter().any(long_scheme) || self.transports.iter().any(|t| long(t)) {
            return Some("a protocol or transport name is too long");
        }
        None
    }
}

/// A key share a node holds, as its heartbeat lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeldKey {
    /// Key name.
    pub name: String,
    /// Its scheme's name (a name, for the reason given at [`SchemeSupport`]).
    pub scheme: String,
}

/// Why a list of held keys cannot be taken, if so.
pub fn invalid_keys(keys: &[HeldKey]) -> Option<&'static str> {
    if keys.len() > MAX_LISTED {
        return Some("too many keys");
    }
    keys.iter()
        .any(|k| k.name.len() > MAX_NAME_LEN || k.scheme.len() > MAX_NAME_LEN)
        .then_some("a key name is too long")
}

/// A node saying it is alive, with its own session counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    /// MpcCluster namespace.
    pub namespace: String,
    /// MpcCluster name.
    pub cluster: String,
    /// The node's party index.
    pub party: u16,
    /// When this message was signed (Unix ms); must be within [`MAX_CLOCK_SKEW_MS`] of the
    /// operator's clock and later than the node's previous message.
    pub sent_at: u64,
    /// Sessions the node completed since it started, by its own count.
    pub sessions_ok: u64,
    /// Sessions that failed on the node since it started, by its own count.
    pub sessions_failed: u64,
    /// Seconds since the node process started.
    pub uptime_secs: u64,
    /// The key shares it holds now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<HeldKey>,
}

/// The body of a registry POST.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignedMessage {
    /// The JSON text of a [`RegistryMessage`], exactly as signed.
    pub payload: String,
    /// The node's leaf certificate in PEM (optionally followed by intermediates).
    pub certificate: String,
    /// Hex DER ECDSA P-256 SHA-256 signature over [`signing_input`]`(payload)`.
    pub signature: String,
}

/// What the operator knows about one node, computed when asked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    /// The node's party index.
    pub party: u16,
    /// The pod IP it registered with.
    pub address: String,
    /// HTTP API port.
    pub http_port: u16,
    /// Peer-to-peer port.
    pub p2p_port: u16,
    /// The node's version.
    pub version: String,
    /// Whether its last heartbeat (or registration) is recent enough.
    pub online: bool,
    /// 0.4·reliability + 0.3·latency score + 0.3·uptime score, in [0, 1].
    pub health_score: f64,
    /// Share of the sessions the operator saw succeed among those the node took part in.
    pub reliability: f64,
    /// 1 at 50 ms operator-observed latency or less, 0 at 2 s or more.
    pub latency_score: f64,
    /// Share of the recent past in which the node heartbeated on time.
    pub uptime_score: f64,
    /// When its last heartbeat arrived (Unix ms); `None` before the first one.
    pub last_heartbeat: Option<u64>,
    /// When it last registered (Unix ms).
    pub registered_at: u64,
    /// When the node process started, as it said (Unix ms).
    pub started_at: u64,
    /// Sessions the node completed, by its own last report.
    pub sessions_ok: u64,
    /// Sessions that failed on the node, by its own last report.
    pub sessions_failed: u64,
    /// What its build runs, as it registered (absent: an older build, ECDSA only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
    /// The key shares it holds, by its last heartbeat.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<HeldKey>,
}

/// A summary of one cluster's nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStats {
    /// Registered nodes.
    pub nodes: u32,
    /// Registered nodes that are online.
    pub online: u32,
    /// Registered nodes that are not.
    pub offline: u32,
    /// Mean health score of the registered nodes; 0 with none.
    pub average_health: f64,
    /// Heartbeats accepted from the cluster's nodes since the operator started.
    pub heartbeats_total: u64,
}

/// The body of every registry error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryError {
    /// What went wrong, for people.
    pub error: String,
    /// What went wrong, for programs: a short snake_case word such as `bad_signature`.
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat() -> Heartbeat {
        Heartbeat {
            namespace: "default".into(),
            cluster: "demo".into(),
            party: 2,
            sent_at: 1_900_000_000_000,
            sessions_ok: 7,
            sessions_failed: 1,
            uptime_secs: 60,
            keys: Vec::new(),
        }
    }

    #[test]
    fn messages_are_tagged_camel_case_json() {
        let message = RegistryMessage::Heartbeat(heartbeat());
        let json = serde_json::to_value(&message).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "kind": "heartbeat", "namespace": "default", "cluster": "demo", "party": 2,
                "sentAt": 1_900_000_000_000u64, "sessionsOk": 7, "sessionsFailed": 1, "uptimeSecs": 60,
            })
        );
        assert_eq!(serde_json::from_value::<RegistryMessage>(json).unwrap(), message);
        assert_eq!(message.node(), ("default", "demo", 2));
        assert_eq!(message.sent_at(), 1_900_000_000_000);

        let registration = Registration {
            namespace: "default".into(),
            cluster: "demo".into(),
            party: 0,
            address: "10.0.0.7".into(),
            http_port: 8080,
            p2p_port: 7443,
            version: "0.1.0".into(),
            started_at: 1,
            sent_at: 2,
            capabilities: None,
        };
        let json = serde_json::to_value(RegistryMessage::Register(registration.clone())).unwrap();
        assert_eq!(json["kind"], "register");
        assert_eq!(json["httpPort"], 8080);
        assert_eq!(json["startedAt"], 1);
        assert!(json.get("capabilities").is_none(), "an older build's registration, as it was");
    }

    #[test]
    fn a_registration_without_capabilities_runs_ecdsa_only() {
        assert!(Capabilities::of(None, Scheme::EcdsaSecp256k1));
        assert!(!Capabilities::of(None, Scheme::SchnorrBip340));
        let support = |scheme: Scheme| SchemeSupport { scheme: scheme.as_str().into(), protocol: "p/1".into() };
        let caps = Capabilities {
            schemes: vec![support(Scheme::EcdsaSecp256k1), support(Scheme::EddsaEd25519)],
            grant_version: crate::GRANT_VERSION,
            transports: vec!["quic".into()],
        };
        assert!(Capabilities::of(Some(&caps), Scheme::EddsaEd25519));
        assert!(!Capabilities::of(Some(&caps), Scheme::SchnorrBip340));
        assert_eq!(caps.invalid(), None);
        let many = Capabilities { transports: vec!["quic".into(); MAX_LISTED + 1], ..caps.clone() };
        assert!(many.invalid().is_some());
        let long = Capabilities {
            schemes: vec![
                support(Scheme::EcdsaSecp256k1),
                SchemeSupport { scheme: "s".into(), protocol: "x".repeat(65) },
            ],
            ..caps.clone()
        };
        // A scheme this build does not know is kept, not refused: a newer node's.
        let newer: Capabilities = serde_json::from_value(serde_json::json!({
            "schemes": [{"scheme": "ecdsa-secp256k1", "protocol": "p/1"}, {"scheme": "schnorr-musig9", "protocol": "p/9"}],
            "grantVersion": 9, "transports": ["quic"],
        }))
        .unwrap();
        assert!(
            Capabilities::of(Some(&newer), Scheme::EcdsaSecp256k1)
                && !Capabilities::of(Some(&newer), Scheme::EddsaEd25519)
        );
        assert!(long.invalid().is_some());
        let key = |name: &str| HeldKey { name: name.into(), scheme: Scheme::SchnorrBip340.as_str().into() };
        assert_eq!(invalid_keys(&[key("btc")]), None);
        assert!(invalid_keys(&vec![key("k"); MAX_LISTED + 1]).is_some());
        assert!(invalid_keys(&[key(&"k".repeat(65))]).is_some());
    }

    #[test]
    fn a_heartbeat_does_not_parse_as_a_registration() {
        let mut json = serde_json::to_value(RegistryMessage::Heartbeat(heartbeat())).unwrap();
        json["kind"] = "register".into();
        assert!(serde_json::from_value::<RegistryMessage>(json).is_err());
    }

    #[test]
    fn signing_input_is_domain_separated() {
        assert_eq!(signing_input("{}"), b"torcus-registry-v1\0{}");
    }

    #[test]
    fn paths_fill_the_routes() {
        let fill = |route: &str| route.replace("{ns}", "default").replace("{cluster}", "demo").replace("{party}", "3");
        assert_eq!(nodes_path("default", "demo"), fill(NODES_PATH));
        assert_eq!(node_path("default", "demo", 3), fill(NODE_PATH));
        assert_eq!(stats_path("default", "demo"), fill(STATS_PATH));
    }
}
