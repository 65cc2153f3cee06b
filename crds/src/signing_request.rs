//! `SigningRequest`: a request to sign one payload (hashed by the nodes
//! themselves) or one raw digest with a key of an `MpcCluster`.
//!
//! The spec is immutable: what was approved is exactly what gets signed. A
//! payload may be signed from a presignature (milliseconds); a raw digest,
//! whose preimage no node knows, always runs the full interactive protocol
//! (eprint 2021/1330 §1.1.2: presignatures over chosen digests allow forgery).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What to sign, and with which key.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "mpc.torcus.io",
    version = "v1alpha1",
    kind = "SigningRequest",
    namespaced,
    status = "SigningRequestStatus",
    shortname = "sr",
    category = "torcus",
    derive = "PartialEq",
    doc = "A request to sign a digest, or the hash of a payload, with a key of an MpcCluster in this namespace or, when the cluster's policy allows it, in another.",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.cluster"),
    printcolumn(name = "Key", type_ = "string", json_path = ".spec.key"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Protocol", type_ = "string", json_path = ".status.protocol", priority = 1),
    printcolumn(name = "Signature", type_ = "string", json_path = ".status.signature.short"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("spec is immutable: create a new SigningRequest instead"))]
#[x_kube(validation = Rule::new("has(self.digest) != has(self.payload)").message("exactly one of digest or payload must be set"))]
#[x_kube(validation = Rule::new("has(self.payload) || !has(self.hash)").message("hash applies only to payload"))]
#[x_kube(validation = Rule::new("has(self.payload) || !has(self.payloadEncoding)").message("payloadEncoding applies only to payload"))]
#[x_kube(validation = Rule::new("!has(self.payload) || (has(self.payloadEncoding) && self.payloadEncoding == 'base64' ? self.payload.matches('^[A-Za-z0-9+/]*={0,2}$') && size(self.payload) % 4 == 0 : self.payload.matches('^(0x)?([0-9a-fA-F]{2})*$'))").message("payload must be hex (an even number of hex digits) or, with payloadEncoding base64, padded standard base64"))]
#[serde(rename_all = "camelCase")]
pub struct SigningRequestSpec {
    /// Name of the MpcCluster, in `clusterNamespace`.
    #[schemars(length(min = 1, max = 63))]
    pub cluster: String,

    /// Namespace of the MpcCluster; this request's namespace when unset. A
    /// request from another namespace is denied unless the cluster's policy
    /// lists this request's namespace in `allowedNamespaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"))]
    pub cluster_namespace: Option<String>,

    /// Name of the key within the cluster.
    #[serde(default = "default_key")]
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"))]
    pub key: String,

    /// The 32-byte message digest to sign, as 64 hex digits. Its preimage is
    /// unknown to the nodes, so it is always signed with the full
    /// interactive protocol, never from a presignature; prefer `payload`.
    /// For a `schnorr-bip340` key, the BIP-341 sighash to sign. Refused for
    /// an `eddsa-ed25519` key, which signs a message, not a digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(0x)?[0-9a-fA-F]{64}$"))]
    pub digest: Option<String>,

    /// A payload to hash with `hash` and sign, encoded as `payloadEncoding`
    /// (at most 128 KiB as hex, 192 KiB as base64). Every node hashes it
    /// itself, so it may be signed from a presignature. For an
    /// `eddsa-ed25519` key the payload is the message, signed as it is
    /// (Ed25519 hashes it as part of the signature), so `hash` must be unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 262_144))]
    pub payload: Option<String>,

    /// Encoding of `payload`: `hex` (default) or `base64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_encoding: Option<PayloadEncoding>,

    /// Hash applied to `payload`: `sha256` (default), `keccak256`
    /// (Ethereum) or `sha256d` (double SHA-256, Bitcoin's sighashes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<HashAlgorithm>,

    /// Non-hardened BIP-32 style derivation path, such as `m/0/7`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 200), regex(pattern = r"^m(/[0-9]{1,10}){0,16}$"))]
    #[x_kube(validation = Rule::new("self.split('/').all(c, c == 'm' || int(c) < 2147483648)").message("derivationPath components must be non-hardened (below 2^31)"))]
    pub derivation_path: Option<String>,

    /// Free-form labels the cluster's policy can read (requester, amount, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

fn default_key() -> String {
    "default".to_owned()
}

/// Encoding of a payload.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PayloadEncoding {
    /// Hex digits, optionally `0x`-prefixed.
    #[default]
    Hex,
    /// Standard base64 with padding.
    Base64,
}

/// Hash applied to a payload before signing.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HashAlgorithm {
    /// SHA-256.
    #[default]
    Sha256,
    /// Keccak-256, as Ethereum uses.
    Keccak256,
    /// SHA-256 of SHA-256, as Bitcoin's sighashes use.
    Sha256d,
}

/// What happened to a request.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SigningRequestStatus {
    /// Pending → Approved → Signing → Completed, or Denied / Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<SigningPhase>,
    /// The signature, once `Completed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
    /// Compressed public key (hex) the signature verifies under, after derivation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// Which signing protocol produced the signature: `presigned` (from a
    /// presignature made for this key, path and signer set) or `full` (the
    /// interactive protocol).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<SigningProtocol>,
    /// Why the full protocol ran although the cluster keeps presignatures:
    /// `raw-digest` (a digest is never signed from a presignature),
    /// `path-not-pooled` (no pool for this derivation path), `pool-empty`
    /// (none free for any healthy signer set), `not-held` (a participant did
    /// not hold the one reserved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_reason: Option<String>,
    /// Party indices that signed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub participants: Vec<u16>,
    /// Party index of the node that ran the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initiator: Option<u16>,
    /// Identifier of the grant the operator issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
    /// Identifier of the signing session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The rest of the grant of the current attempt, so that an operator
    /// that restarts re-sends the same grant instead of issuing a second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<IssuedGrant>,
    /// How long the steps took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<Timings>,
    /// Why the request was denied or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the operator approved the request, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_at: Option<String>,
    /// When the request reached a final phase, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    /// Signing sessions tried.
    #[serde(default)]
    pub attempts: u16,
    /// Detail behind the phase.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The parts of an issued grant that are not elsewhere in the status.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IssuedGrant {
    /// The grant's nonce, hex.
    pub nonce: String,
    /// Unix seconds the grant was issued at.
    pub issued_at: u64,
    /// Unix seconds from which the grant is refused.
    pub expires_at: u64,
    /// The operator's proof that it issued this grant for this request:
    /// an Ed25519 signature by the cluster's grant key over the request's
    /// uid and the grant (hex). The operator resumes a grant only when it
    /// checks out: whoever may write a status cannot make one up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<String>,
}

/// Durations of a request's steps, in milliseconds.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Timings {
    /// From creation to the grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_ms: Option<u64>,
    /// The signing call to the initiator, for the attempt that succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_ms: Option<u64>,
    /// From creation to the final phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_ms: Option<u64>,
}

/// How a signature was made.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SigningProtocol {
    /// From a presignature: one round of partial signatures.
    Presigned,
    /// The full interactive signing protocol.
    Full,
}

/// Lifecycle of a SigningRequest.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SigningPhase {
    /// Accepted, not yet checked against policy.
    Pending,
    /// Policy passed; a grant is issued.
    Approved,
    /// A signing session is running.
    Signing,
    /// Signed; the signature is verified and in status.
    Completed,
    /// Refused by policy; `reason` names the rule.
    Denied,
    /// Could not be signed; `reason` says why.
    Failed,
}

impl SigningPhase {
    /// Whether nothing more will happen to the request.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Denied | Self::Failed)
    }
}

/// A signature: ECDSA over secp256k1, BIP-340 Schnorr or Ed25519, as the
/// key's scheme is.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Signature {
    /// The key's scheme; absent for ECDSA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<crate::KeyScheme>,
    /// r, 32 bytes hex: ECDSA's r, BIP-340's x(R), or Ed25519's encoded R.
    pub r: String,
    /// s, 32 bytes hex: ECDSA's s (normalized to the lower half of the
    /// order), BIP-340's s (big-endian), or Ed25519's S (little-endian).
    pub s: String,
    /// The whole signature as the scheme writes it, hex: r ‖ s (64 bytes;
    /// for BIP-340 and Ed25519 the standard encoding).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<String>,
    /// ECDSA only: recovery id (0 or 1) for public-key recovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_id: Option<u8>,
    /// ECDSA only: ASN.1 DER encoding, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub der: Option<String>,
    /// First bytes of r‖s for printer columns.
    pub short: String,
}
