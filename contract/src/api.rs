//! The node's HTTP API as both sides see it: what the operator sends to
//! `POST /p2p/keygen` and `POST /p2p/sign`, and what the node answers there
//! and at `GET /p2p/session/{id}` and `GET /p2p/keys`.

use serde::{Deserialize, Serialize};

use crate::{Scheme, SignedGrant};

/// Path of the keygen endpoint.
pub const KEYGEN_PATH: &str = "/p2p/keygen";
/// Path of the signing endpoint.
pub const SIGN_PATH: &str = "/p2p/sign";
/// Path of the key list.
pub const KEYS_PATH: &str = "/p2p/keys";
/// Path of the id of the aux info a node holds.
pub const AUX_INFO_PATH: &str = "/p2p/aux-info";
/// Path of the presignature pools a node holds.
pub const PRESIGNATURES_PATH: &str = "/p2p/presignatures";

/// Path of a session's state, by hex session id.
pub fn session_path(session_id: &[u8; 32]) -> String {
    format!("/p2p/session/{}", hex::encode(session_id))
}

/// Body of the session endpoints.
#[derive(Debug, Serialize, Deserialize)]
pub struct GrantRequest {
    /// The grant that authorises the session.
    pub grant: SignedGrant,
    /// For a signing grant: which presignature the initiator offers. Not
    /// part of the grant: which presignature is used does not change what
    /// is signed, and each is still used at most once.
    #[serde(default, skip_serializing_if = "PresignatureChoice::is_any")]
    pub presignature: PresignatureChoice,
}

/// Which presignature a signing session's initiator offers.
///
/// The issuer reserves one presignature per session from the pools the
/// nodes list, so that concurrent sessions of one signer set never contend
/// for the same one (the loser would run the full protocol).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PresignatureChoice {
    /// The initiator's own choice (a node driven directly, or a grant sent
    /// again after its issuer lost what it had reserved).
    #[default]
    Any,
    /// None: the issuer has none free for this signer set, and any the
    /// initiator holds are reserved for other sessions.
    None,
    /// This one (hex id, as `GET /p2p/presignatures` lists it), or none.
    Id(String),
}

impl PresignatureChoice {
    /// Whether the initiator chooses.
    pub fn is_any(&self) -> bool {
        matches!(self, Self::Any)
    }
}

/// An error answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for people.
    pub error: String,
    /// Low-cardinality reason.
    pub reason: String,
    /// Who to ask instead, when this node is not the initiator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initiator: Option<u16>,
    /// The participant held responsible for a failed session: one that
    /// could not be sent to, sent a message that did not decode, or sent
    /// an Abort (see [`Self::accuser`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blamed: Option<u16>,
    /// Who holds [`Self::blamed`] responsible, when not the answering node
    /// itself: the participant whose Abort named it. Either of the two may
    /// be lying, so the issuer does not put them in one session again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuser: Option<u16>,
}

/// What a session produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase", tag = "type")]
pub enum Outcome {
    /// A key was generated.
    Keygen {
        /// Key name.
        key: String,
        /// The key's scheme.
        #[serde(default, skip_serializing_if = "is_ecdsa")]
        scheme: Scheme,
        /// Public key, hex: compressed SEC1 on secp256k1 (both schemes),
        /// 32 bytes for Ed25519.
        public_key: String,
        /// SLIP-10 chain code, hex (see [`KeyInfo::chain_code`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        chain_code: Option<String>,
    },
    /// A message was signed (ECDSA).
    Signature(SignatureOut),
    /// A message was signed with a FROST key.
    FrostSignature(FrostSignatureOut),
}

/// A BIP-340 or Ed25519 signature as the API returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FrostSignatureOut {
    /// The key's scheme.
    pub scheme: Scheme,
    /// The 64-byte signature, hex: BIP-340 (x(R) ‖ s) or RFC 8032 (R ‖ S).
    pub signature: String,
    /// The key it verifies under, hex: the x-only Taproot output key
    /// (BIP-341 key-path spend) for `schnorr-bip340`, the 32-byte Ed25519
    /// key for `eddsa-ed25519`.
    pub public_key: String,
}

fn is_ecdsa(scheme: &Scheme) -> bool {
    *scheme == Scheme::EcdsaSecp256k1
}

/// An ECDSA signature as the API returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignatureOut {
    /// r, 32 bytes hex.
    pub r: String,
    /// s, 32 bytes hex (low-s).
    pub s: String,
    /// Recovery id, 0 or 1.
    pub recovery_id: u8,
    /// ASN.1 DER, hex.
    pub der: String,
    /// The (derived) public key it verifies under, compressed hex.
    pub public_key: String,
    /// Whether the signers used a presignature from their pool (true) or
    /// ran the full signing protocol (false).
    #[serde(default)]
    pub presigned: bool,
}

/// State of a session, for `GET /p2p/session/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase", tag = "state")]
pub enum SessionStatus {
    /// Handshake in progress.
    Proposed,
    /// The protocol runs.
    Running,
    /// Finished.
    Completed {
        /// What it produced.
        outcome: Outcome,
    },
    /// Did not finish.
    Failed {
        /// Why.
        reason: String,
        /// The participant held responsible, as in [`ErrorBody::blamed`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        blamed: Option<u16>,
        /// Who holds it responsible, as in [`ErrorBody::accuser`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        accuser: Option<u16>,
    },
}

/// Which aux info a node holds, as `GET /p2p/aux-info` says: the operator
/// names it in a keygen grant when every node holds the same, so that it is
/// reused; otherwise the keygen generates new aux info first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuxInfoId {
    /// Id (64 hex digits), or none.
    pub id: Option<String>,
}

/// One key a node holds, as `GET /p2p/keys` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyInfo {
    /// Key name.
    pub name: String,
    /// The key's scheme.
    #[serde(default, skip_serializing_if = "is_ecdsa")]
    pub scheme: Scheme,
    /// Public key, hex, as in [`Outcome::Keygen`].
    pub public_key: String,
    /// SLIP-10 chain code, hex: with the public key, the extended public
    /// key every derived key comes from. Public material (like an xpub):
    /// it lets its holder derive, not sign, but also link derived keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_code: Option<String>,
}

/// The presignature pools of a node, as `GET /p2p/presignatures` lists them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresignaturePools {
    /// One entry per (key, derivation path, signer set) this node holds
    /// presignatures for, or has made or used some for since it started.
    pub pools: Vec<PresignaturePool>,
}

/// The presignatures of one key, derivation path and signer set on one node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresignaturePool {
    /// Key name.
    pub key: String,
    /// The derivation path the presignatures are bound to (empty: the key
    /// itself): they sign only for this path.
    #[serde(default)]
    pub path: Vec<u32>,
    /// The signer set, ascending: only a signing session among exactly these
    /// parties can use the presignatures.
    pub participants: Vec<u16>,
    /// Presignatures ready now.
    pub depth: u32,
    /// Their ids (hex), oldest first. An id says nothing about the
    /// presignature's secret; it names it in a session's handshake.
    #[serde(default)]
    pub ids: Vec<String>,
    /// Presignatures made for this pool since the node started.
    #[serde(default)]
    pub generated: u64,
    /// Presignatures taken out of this pool for signing sessions since the
    /// node started (each at most once; whether or not the session then
    /// completed with it).
    #[serde(default)]
    pub taken: u64,
}
