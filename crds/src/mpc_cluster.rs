//! `MpcCluster`: one threshold-signing cluster of `nodes` parties, any
//! `threshold` of which can sign together.
//!
//! Validation lives in the schema (CEL `x-kubernetes-validations`) so that a
//! bad object is refused by the API server at admission, with a message a
//! person can act on, instead of reaching the operator at all.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Upper bound on `nodes`: every protocol round is all-to-all, so cost grows
/// with n²; beyond this a cluster should be split, not grown.
pub const MAX_NODES: u16 = 16;

/// The desired shape of a signing cluster.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "mpc.torcus.io",
    version = "v1alpha1",
    kind = "MpcCluster",
    namespaced,
    status = "MpcClusterStatus",
    shortname = "mpc",
    category = "torcus",
    derive = "PartialEq",
    doc = "A threshold-signing (MPC) cluster: `nodes` parties each holding one key share, any `threshold` of which sign together.",
    printcolumn(name = "Nodes", type_ = "integer", json_path = ".spec.nodes"),
    printcolumn(name = "Threshold", type_ = "integer", json_path = ".spec.threshold"),
    printcolumn(name = "Transport", type_ = "string", json_path = ".spec.transport.mode"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyNodes"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[kube(validation = Rule::new("size(self.metadata.name) <= 40 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("name must be a DNS label of at most 40 characters: it prefixes the names of the cluster's pods, Services and Secrets"))]
#[x_kube(validation = Rule::new("self.threshold <= self.nodes").message("threshold must not be greater than nodes"))]
#[x_kube(validation = Rule::new("!has(self.keySchemes) || self.keySchemes.all(k, k in self.keys)").message("every key in keySchemes must be listed in keys"))]
#[x_kube(validation = Rule::new("!has(self.keySchemes) || self.keySchemes.all(k, (has(oldSelf.keySchemes) && k in oldSelf.keySchemes) || !(k in oldSelf.keys))").message("a key's scheme is set when the key is added: a key that exists already keeps the scheme it was generated with"))]
#[x_kube(validation = Rule::new("!has(oldSelf.keySchemes) || (has(self.keySchemes) && oldSelf.keySchemes.all(k, k in self.keySchemes && self.keySchemes[k] == oldSelf.keySchemes[k]))").message("a key's scheme is immutable: keySchemes entries may be added with their keys, never removed or changed"))]
#[serde(rename_all = "camelCase")]
pub struct MpcClusterSpec {
    /// Number of parties (n). Immutable: changing it would need resharing the
    /// key, which cggmp24 does not offer.
    #[schemars(range(min = 2, max = 16))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("nodes is immutable: changing it would need resharing the key"))]
    pub nodes: u16,

    /// Number of parties that must take part in a signature (t), 2 ≤ t ≤ n.
    /// Immutable for the same reason as `nodes`.
    #[schemars(range(min = 2, max = 16))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("threshold is immutable: changing it would need resharing the key"))]
    pub threshold: u16,

    /// Elliptic curve of the keys. Immutable.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("curve is immutable"))]
    pub curve: Curve,

    /// How nodes exchange protocol messages.
    #[serde(default)]
    pub transport: TransportSpec,

    /// Names of the keys to generate. Keys may be added; a key is never
    /// removed, since its shares would be orphaned.
    #[serde(default = "default_keys")]
    #[schemars(
        length(min = 1, max = 16),
        inner(length(max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"))
    )]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[x_kube(validation = Rule::new("oldSelf.all(k, k in self)").message("keys may be added but not removed"))]
    pub keys: Vec<String>,

    /// The signature scheme of each key that is not threshold ECDSA on
    /// secp256k1 (the default for a key not named here), by key name:
    /// `schnorr-bip340` (Bitcoin Taproot, FROST) or `eddsa-ed25519` (FROST).
    /// Set when the key is added; immutable.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 16))]
    #[x_kube(validation = Rule::new("oldSelf.all(k, k in self && self[k] == oldSelf[k])").message("a key's scheme is immutable"))]
    pub key_schemes: std::collections::BTreeMap<String, KeyScheme>,

    /// Node container image. Defaults to the image the operator was started with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// Compute resources of each node container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Persistent storage for each node's key shares. Immutable: a
    /// StatefulSet's volume claims cannot change after creation.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("storage is immutable: the nodes' volume claims cannot change"))]
    pub storage: StorageSpec,

    /// Lifetime of the cluster's certificates.
    #[serde(default)]
    pub certificates: CertificatesSpec,

    /// Rules every SigningRequest against this cluster must pass.
    #[serde(default)]
    pub policy: PolicySpec,

    /// Background presignature pools: how deep, and for which derivation paths.
    #[serde(default)]
    pub presignatures: PresignatureSpec,
}

fn default_keys() -> Vec<String> {
    vec!["default".to_owned()]
}

/// Elliptic curve of a cluster's keys.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Curve {
    /// secp256k1, as used by Bitcoin and Ethereum (CGGMP24 threshold ECDSA).
    #[default]
    Secp256k1,
}

/// The signature scheme of a key.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum KeyScheme {
    /// Threshold ECDSA on secp256k1 (CGGMP24): Ethereum, Bitcoin before Taproot.
    #[default]
    EcdsaSecp256k1,
    /// BIP-340 Schnorr on secp256k1 (FROST), for the BIP-341 key-path spend
    /// of a Taproot output.
    SchnorrBip340,
    /// Ed25519 (RFC 8032, FROST): Solana, Cardano, Stellar and others.
    EddsaEd25519,
}

impl MpcClusterSpec {
    /// The scheme of key `key` (ECDSA unless `keySchemes` names another).
    pub fn scheme_of(&self, key: &str) -> KeyScheme {
        self.key_schemes.get(key).copied().unwrap_or_default()
    }
}

/// Transport settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TransportSpec {
    /// `quic` (mutual TLS, the default), `tcp` (signed frames), `http` (relayed
    /// through the operator) or `hybrid` (QUIC, relay when a peer is unreachable).
    #[serde(default)]
    pub mode: TransportMode,
}

/// How protocol messages travel between nodes.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TransportMode {
    /// QUIC with mutual TLS against the cluster CA.
    #[default]
    Quic,
    /// TCP with length-prefixed, Ed25519-signed frames.
    Tcp,
    /// HTTP relay through the operator.
    Http,
    /// QUIC first, the HTTP relay when a peer is unreachable.
    Hybrid,
}

impl TransportMode {
    /// The spelling used in the API and in node configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quic => "quic",
            Self::Tcp => "tcp",
            Self::Http => "http",
            Self::Hybrid => "hybrid",
        }
    }
}

/// Per-node persistent volume.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size of each node's volume, as a Kubernetes quantity.
    #[serde(default = "default_storage_size")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$"))]
    pub size: String,
    /// Storage class of the volumes; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

fn default_storage_size() -> String {
    "1Gi".to_owned()
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self { size: default_storage_size(), storage_class_name: None }
    }
}

/// Certificate lifetimes, as durations such as `2160h` or `90m`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("duration(self.renewBefore) < duration(self.validity)").message("renewBefore must be shorter than validity"))]
#[x_kube(validation = Rule::new("duration(self.validity) >= duration('1m') && duration(self.renewBefore) >= duration('1s') && duration(self.validity) - duration(self.renewBefore) >= duration('10s')").message("validity must be at least 1m, renewBefore at least 1s, and a certificate must be used for at least 10s before renewal"))]
pub struct CertificatesSpec {
    /// How long node and operator certificates are valid. The CA is valid for
    /// four times as long.
    #[serde(default = "default_validity")]
    #[schemars(regex(pattern = r"^([0-9]+(h|m|s))+$"))]
    pub validity: String,
    /// Renew a certificate when less than this is left of its validity.
    #[serde(default = "default_renew_before")]
    #[schemars(regex(pattern = r"^([0-9]+(h|m|s))+$"))]
    pub renew_before: String,
}

fn default_validity() -> String {
    "2160h".to_owned()
}

fn default_renew_before() -> String {
    "720h".to_owned()
}

impl Default for CertificatesSpec {
    fn default() -> Self {
        Self { validity: default_validity(), renew_before: default_renew_before() }
    }
}

/// Signing policy, evaluated by the operator before it issues a grant.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicySpec {
    /// Rate limits on granted requests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub rate_limits: Vec<RateLimit>,
    /// If set, only requests from these namespaces are granted. Requests from
    /// namespaces other than the cluster's own are granted only when listed
    /// here: unset, only the cluster's namespace may sign.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_namespaces: Option<Vec<String>>,
    /// Requests from these namespaces are denied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denied_namespaces: Vec<String>,
    /// If set, only requests whose `spec.labels` match this selector are granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_selector: Option<LabelSelector>,
    /// Requests whose `spec.labels` match this selector are denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denied_selector: Option<LabelSelector>,
    /// Largest payload, in bytes, a request may ask to hash and sign.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_payload_bytes: Option<u32>,
    /// UTC windows in which signing is allowed; any time when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub time_windows: Vec<TimeWindow>,
    /// Limits on the sum of a declared amount label per time window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub spend_limits: Vec<SpendLimit>,
}

/// At most `requests` granted per `period` within `scope`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.scope == 'label' ? has(self.label) : !has(self.label)").message("label is required with scope label, and allowed only with it"))]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// What the count is kept per: the whole cluster, each namespace, or
    /// each value of a request label (such as `requester`).
    pub scope: RateLimitScope,
    /// With scope `label`: the key in the requests' `spec.labels` whose
    /// values are counted apart. A request without it is denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub label: Option<String>,
    /// Requests allowed per period.
    #[schemars(range(min = 1))]
    pub requests: u32,
    /// Length of the window, such as `1m` or `24h`.
    #[schemars(regex(pattern = r"^([0-9]+(h|m|s))+$"))]
    pub period: String,
}

/// What a rate limit is counted per.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum RateLimitScope {
    /// One counter for the cluster.
    Cluster,
    /// One counter per requesting namespace.
    Namespace,
    /// One counter per value of the request label `label`.
    Label,
}

/// A daily UTC window, `start` inclusive and `end` exclusive, both `HH:MM`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TimeWindow {
    /// Start of the window, `HH:MM` UTC.
    #[schemars(regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub start: String,
    /// End of the window, `HH:MM` UTC; before `start` means it wraps midnight.
    #[schemars(regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub end: String,
}

/// The sum of label `amountLabel` over granted requests in `period` stays at
/// or below `limit`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SpendLimit {
    /// Request label holding a non-negative integer amount.
    pub amount_label: String,
    /// Largest total within one period.
    pub limit: u64,
    /// Length of the window, such as `24h`.
    #[schemars(regex(pattern = r"^([0-9]+(h|m|s))+$"))]
    pub period: String,
}

/// Background presignature pools.
///
/// A presignature signs one payload (hashed by the nodes) in milliseconds
/// instead of the full protocol's rounds. Each is made for one key, one
/// derivation path and one signer set, fixed before it exists: a request
/// for a path that is not listed here, or with a raw digest, runs the full
/// protocol.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PresignatureSpec {
    /// Presignatures each node keeps ready per key, path and signer set; 0
    /// turns pooling off.
    #[serde(default = "default_pool_size")]
    #[schemars(range(max = 64))]
    pub pool_size: u16,
    /// Derivation paths to keep presignatures for, such as `m` (the key
    /// itself, the default) or `m/44/60/0/0/0`; non-hardened, at most 8.
    #[serde(default = "default_presignature_paths")]
    #[schemars(length(max = 8), inner(length(max = 200), regex(pattern = r"^m(/[0-9]{1,10}){0,16}$")))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[x_kube(validation = Rule::new("self.all(p, p.split('/').all(c, c == 'm' || int(c) < 2147483648))").message("presignature paths must be non-hardened (every component below 2^31)"))]
    pub paths: Vec<String>,
}

fn default_pool_size() -> u16 {
    4
}

fn default_presignature_paths() -> Vec<String> {
    vec!["m".to_owned()]
}

impl Default for PresignatureSpec {
    fn default() -> Self {
        Self { pool_size: default_pool_size(), paths: default_presignature_paths() }
    }
}

/// What the operator has observed of a cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MpcClusterStatus {
    /// Coarse state for people and printer columns; conditions carry the detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ClusterPhase>,
    /// `Ready`, `CertificatesReady`, `NodesReady`, `KeysReady`, `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Nodes whose pod is ready.
    #[serde(default)]
    pub ready_nodes: u16,
    /// Per-node state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeStatus>,
    /// Generated keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeyStatus>,
    /// Hex Ed25519 public key that verifies the operator's grants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_public_key: Option<String>,
    /// Expiry of the certificates in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificates: Option<CertificatesStatus>,
    /// The key material the operator made for this cluster, by Secret name:
    /// the public half of each key it put there (`ed25519:<hex>` for the
    /// grant key and a node's identity, `sha256:<hex>` of the DER of each CA
    /// certificate). Written before the Secret is, so a Secret whose keys are
    /// not listed here was not made by the operator, whatever its owner
    /// references say, and is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<std::collections::BTreeMap<String, Vec<String>>>,
}

/// Coarse lifecycle of a cluster.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterPhase {
    /// Children are being created.
    Provisioning,
    /// Waiting for node pods to become ready.
    WaitingForNodes,
    /// Nodes are running the distributed key generation.
    GeneratingKeys,
    /// Every node and key is ready.
    Ready,
    /// Fewer nodes than wanted are ready, but at least `threshold`.
    Degraded,
    /// The operator cannot bring the cluster up; see the conditions.
    Failed,
}

/// One party of the cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// Party index, 0-based.
    pub index: u16,
    /// Pod name.
    pub pod: String,
    /// Pod IP, once it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Whether the node's pod is ready.
    pub ready: bool,
    /// Health score in [0, 1] from the registry, once the node reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_score: Option<f64>,
    /// Last heartbeat the registry received, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<String>,
    /// Whether the registry considers the node online.
    #[serde(default)]
    pub online: bool,
    /// The node's version, as it registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The schemes its build runs, each as `scheme protocol/version`; a node
    /// that registered without them is a build from before FROST, which runs
    /// `ecdsa-secp256k1` only. A session goes only to nodes that run its
    /// scheme.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schemes: Vec<String>,
    /// The transports it serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transports: Vec<String>,
    /// The key shares it holds, by name, as its last heartbeat said.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
}

/// One generated key.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeyStatus {
    /// Key name from `spec.keys`.
    pub name: String,
    /// The key's scheme; absent for ECDSA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<KeyScheme>,
    /// Public key, hex, in the scheme's own form: compressed SEC1 (33
    /// bytes) for ECDSA, x-only (32 bytes, BIP-340) for Schnorr, 32 bytes
    /// for Ed25519.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// `schnorr-bip340` only: the key as compressed SEC1 (33 bytes, hex),
    /// the form that, with `chainCode`, derives child keys (BIP-32 public
    /// derivation); `publicKey` is its x-only form, the Taproot internal key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compressed_public_key: Option<String>,
    /// `schnorr-bip340` only: the x-only output key (hex) of the Taproot
    /// output whose internal key is `publicKey`, with no script tree
    /// (BIP-341, BIP-86 style); the key its signatures verify under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taproot_output_key: Option<String>,
    /// `schnorr-bip340` only: the mainnet address (`bc1p…`, bech32m) of
    /// that Taproot output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitcoin_address: Option<String>,
    /// `eddsa-ed25519` only: the key in base58, as Solana shows addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub solana_address: Option<String>,
    /// Ethereum address of the key, `0x`-prefixed, EIP-55 checksummed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ethereum_address: Option<String>,
    /// SLIP-10 chain code, hex. With `publicKey` it is the extended public
    /// key (like an xpub) from which the operator derives, itself, the key a
    /// SigningRequest's `derivationPath` signs with, and checks the signature
    /// under it. Public material: it cannot sign, but links derived keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_code: Option<String>,
}

impl KeyStatus {
    /// The public key as the nodes report it: compressed SEC1 for both
    /// secp256k1 schemes (`compressedPublicKey` for BIP-340), 32 bytes for
    /// Ed25519.
    pub fn nodes_public_key(&self) -> Option<&str> {
        self.compressed_public_key.as_deref().or(self.public_key.as_deref())
    }
}

/// Certificate expiry, for people and alerts.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CertificatesStatus {
    /// When the current CA expires, RFC 3339.
    pub ca_not_after: String,
    /// When the first node or operator certificate expires, RFC 3339.
    pub earliest_leaf_not_after: String,
    /// Number of CA certificates nodes currently trust (2 during a CA roll).
    pub trusted_cas: u16,
}
