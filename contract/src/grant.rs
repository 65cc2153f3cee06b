//! Grants: the operator's signed permission for an exact set of nodes to run
//! one MPC session (a key generation or one signature), and how a node checks
//! one before it takes part.
//!
//! The operator builds a [`Grant`], [`sign`]s its [`Grant::canonical_bytes`]
//! with the cluster's Ed25519 grant key and sends the [`SignedGrant`] as JSON.
//! A node accepts it only through [`SignedGrant::verify`]: version, shape,
//! signature, validity window, membership, and finally replay, so that a grant
//! that fails any other check never uses up its session id. Everything both
//! sides derive from a grant (session id, MPC execution id, initiator) comes
//! from the signed bytes, never from the JSON.
//!
//! A signing grant names what is signed as a [`SignMessage`]: a payload
//! with the hash the nodes apply to it themselves (the only kind a
//! presignature may sign), or a raw digest, which the nodes sign only with
//! the full interactive protocol. A payload grant also carries the digest
//! the issuer computed, and a grant whose payload does not hash to it is
//! refused by [`Grant::check`], on the issuer and on every node.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The only grant format version this crate issues and accepts.
pub const GRANT_VERSION: u8 = 3;
/// How far in the future `issued_at` may be before a grant is refused, to
/// absorb clock differences between the operator and the nodes.
pub const CLOCK_SKEW_SECS: u64 = 30;
/// First bytes of every [`Grant::canonical_bytes`], so a grant signature can
/// never be mistaken for a signature over anything else.
pub const GRANT_DOMAIN: &[u8] = b"torcus-grant-v3";
/// First hardened BIP-32 index; grants only carry non-hardened derivation
/// indices (the nodes derive child keys from the shared public key alone).
pub const HARDENED_INDEX: u32 = 1 << 31;
/// Deepest derivation path a grant may carry (BIP-32 stores depth in a byte).
pub const MAX_DERIVATION_DEPTH: usize = 255;
/// Largest payload a signing grant may carry: the most a SigningRequest may
/// hold (192 KiB, as base64).
pub const MAX_PAYLOAD_BYTES: usize = 192 * 1024;
/// Longest validity window a grant may have. A node remembers every session
/// id it accepted until the grant expires; this bound keeps that set (and
/// its file) to what arrives in one window, whatever the issuer writes.
/// The operator issues keygen grants for 10 minutes, signing grants for 2.
pub const MAX_GRANT_LIFETIME_SECS: u64 = 3600;

const SESSION_DOMAIN: &[u8] = b"torcus-session:";
const EXECUTION_DOMAIN: &[u8] = b"torcus-eid:";
const INITIATOR_DOMAIN: &[u8] = b"torcus-initiator:";

const KIND_KEYGEN: u8 = 0x01;
const KIND_SIGN: u8 = 0x02;
const KIND_FROST_KEYGEN: u8 = 0x03;
const KIND_FROST_SIGN: u8 = 0x04;
const MESSAGE_DIGEST: u8 = 0x01;
const MESSAGE_PAYLOAD: u8 = 0x02;
const MESSAGE_RAW: u8 = 0x03;

/// The signature scheme of a key. A key's scheme is fixed when it is
/// generated: a share is never used under another one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scheme {
    /// Threshold ECDSA on secp256k1 (CGGMP24), as Ethereum and Bitcoin's
    /// pre-Taproot outputs use.
    #[default]
    EcdsaSecp256k1,
    /// BIP-340 Schnorr on secp256k1 (FROST), signing for the BIP-341
    /// key-path spend of a Taproot output.
    SchnorrBip340,
    /// Ed25519 (RFC 8032, FROST), as Solana, Cardano and Stellar use.
    EddsaEd25519,
}

impl Scheme {
    /// Every scheme, in a fixed order.
    pub const ALL: [Self; 3] = [Self::EcdsaSecp256k1, Self::SchnorrBip340, Self::EddsaEd25519];

    /// The name used in the API, in grants' JSON and as a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EcdsaSecp256k1 => "ecdsa-secp256k1",
            Self::SchnorrBip340 => "schnorr-bip340",
            Self::EddsaEd25519 => "eddsa-ed25519",
        }
    }

    /// The scheme of an API name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Whether it is one of the FROST schemes (no aux info, no presignatures).
    pub fn is_frost(self) -> bool {
        !matches!(self, Self::EcdsaSecp256k1)
    }

    /// Whether keys of this scheme derive child keys (non-hardened BIP-32 /
    /// SLIP-10 on secp256k1). Ed25519 has no standard non-hardened
    /// derivation: its signing grants carry no path.
    pub fn derives(self) -> bool {
        !matches!(self, Self::EddsaEd25519)
    }

    /// Bytes of a public key as grants and the API carry it: compressed
    /// SEC1 on secp256k1, 32 bytes for Ed25519.
    pub fn public_key_len(self) -> usize {
        match self {
            Self::EcdsaSecp256k1 | Self::SchnorrBip340 => 33,
            Self::EddsaEd25519 => 32,
        }
    }

    fn tag(self) -> u8 {
        match self {
            Self::EcdsaSecp256k1 => 0x01,
            Self::SchnorrBip340 => 0x02,
            Self::EddsaEd25519 => 0x03,
        }
    }
}

impl std::fmt::Display for Scheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a payload is hashed into the digest that is signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HashAlgorithm {
    /// SHA-256.
    Sha256,
    /// Keccak-256, as Ethereum uses.
    Keccak256,
    /// SHA-256 of SHA-256, as Bitcoin's sighashes use.
    Sha256d,
}

impl HashAlgorithm {
    /// The digest of `payload`.
    pub fn digest(self, payload: &[u8]) -> [u8; 32] {
        match self {
            Self::Sha256 => Sha256::digest(payload).into(),
            Self::Keccak256 => sha3::Keccak256::digest(payload).into(),
            Self::Sha256d => Sha256::digest(Sha256::digest(payload)).into(),
        }
    }

    /// The name used in the API and in grants' JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Keccak256 => "keccak256",
            Self::Sha256d => "sha256d",
        }
    }

    fn tag(self) -> u8 {
        match self {
            Self::Sha256 => 0x01,
            Self::Keccak256 => 0x02,
            Self::Sha256d => 0x03,
        }
    }
}

/// What a signing grant signs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum SignMessage {
    /// A requester's 32-byte digest, whose preimage nobody here knows: the
    /// nodes sign it with the full interactive protocol only, never with a
    /// presignature (eprint 2021/1330 §1.1.2).
    Digest {
        /// The digest.
        #[serde(with = "hex")]
        digest: [u8; 32],
    },
    /// A payload every node hashes itself with `hash`; a presignature made
    /// for the grant's key, path and signer set may sign it.
    Payload {
        /// How the payload is hashed.
        hash: HashAlgorithm,
        /// The payload, at most [`MAX_PAYLOAD_BYTES`].
        #[serde(with = "hex")]
        payload: Vec<u8>,
        /// The digest the issuer computed (and checked the signature
        /// against); a payload that does not hash to it is refused.
        #[serde(with = "hex")]
        digest: [u8; 32],
    },
    /// A message signed as it is, with no hash applied by anybody: Ed25519
    /// (RFC 8032) hashes the message itself as part of the signature.
    /// Only an `eddsa-ed25519` grant carries it, and it carries nothing else.
    Raw {
        /// The message, at most [`MAX_PAYLOAD_BYTES`].
        #[serde(with = "hex")]
        message: Vec<u8>,
    },
}

impl SignMessage {
    /// A payload message, with its digest computed here.
    pub fn payload(hash: HashAlgorithm, payload: Vec<u8>) -> Self {
        let digest = hash.digest(&payload);
        Self::Payload { hash, payload, digest }
    }

    /// The 32-byte digest that is signed; none for a raw message.
    pub fn digest(&self) -> Option<[u8; 32]> {
        match self {
            Self::Digest { digest } | Self::Payload { digest, .. } => Some(*digest),
            Self::Raw { .. } => None,
        }
    }

    /// The bytes the signature scheme takes as its message: the digest, or
    /// the raw message.
    pub fn signed_bytes(&self) -> &[u8] {
        match self {
            Self::Digest { digest } | Self::Payload { digest, .. } => digest,
            Self::Raw { message } => message,
        }
    }

    /// Whether the nodes hash the message themselves.
    pub fn is_payload(&self) -> bool {
        matches!(self, Self::Payload { .. })
    }
}

impl std::fmt::Debug for SignMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A payload can be large: its length and digest say enough in logs.
        match self {
            Self::Digest { digest } => f.debug_struct("Digest").field("digest", &hex::encode(digest)).finish(),
            Self::Payload { hash, payload, digest } => f
                .debug_struct("Payload")
                .field("hash", hash)
                .field("bytes", &payload.len())
                .field("digest", &hex::encode(digest))
                .finish(),
            Self::Raw { message } => f.debug_struct("Raw").field("bytes", &message.len()).finish(),
        }
    }
}

/// What a grant allows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum GrantKind {
    /// Generate the threshold key `key`: aux info (unless every participant
    /// already holds the same), then keygen.
    Keygen {
        /// Key name, as listed in the cluster configuration.
        key: String,
        /// Id (64 hex digits) of the aux info every participant holds and
        /// reuses; absent, the participants first generate new aux info
        /// together, which replaces whatever each of them held.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        aux_info: Option<String>,
        /// Public keys (compressed, hex) of earlier runs of this keygen that
        /// ended on some nodes only. A node that holds `key` under one of
        /// them sets that share aside (never deletes it) for the new one; a
        /// node that holds `key` under any other public key refuses.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        supersedes: Vec<String>,
    },
    /// Sign one message with the key `key`, derived along `derivation_path`.
    Sign {
        /// Key name, as listed in the cluster configuration.
        key: String,
        /// What is signed: a payload the nodes hash, or a raw digest.
        message: SignMessage,
        /// Non-hardened BIP-32 child indices, each below [`HARDENED_INDEX`];
        /// empty signs with the key itself.
        derivation_path: Vec<u32>,
    },
    /// Generate the FROST key `key` of `scheme` (`schnorr-bip340` or
    /// `eddsa-ed25519`): keygen alone, with no aux info.
    FrostKeygen {
        /// Key name, as listed in the cluster configuration.
        key: String,
        /// The key's scheme; never `ecdsa-secp256k1`.
        scheme: Scheme,
        /// As for [`GrantKind::Keygen`]: public keys (hex, in the scheme's
        /// [`Scheme::public_key_len`]) of earlier runs that ended on some
        /// nodes only.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        supersedes: Vec<String>,
    },
    /// Sign one message with the FROST key `key` of `scheme`, with the full
    /// two-round protocol (FROST keeps no presignatures).
    FrostSign {
        /// Key name, as listed in the cluster configuration.
        key: String,
        /// The key's scheme: the nodes refuse a grant whose scheme is not
        /// the one their share was generated for.
        scheme: Scheme,
        /// What is signed: for `schnorr-bip340` a 32-byte digest (a
        /// requester's, such as a BIP-341 sighash, or a hashed payload), for
        /// `eddsa-ed25519` a raw message.
        message: SignMessage,
        /// Non-hardened BIP-32 child indices (`schnorr-bip340` only; empty
        /// for `eddsa-ed25519`).
        derivation_path: Vec<u32>,
    },
}

impl GrantKind {
    /// A keygen of `key` with new aux info that supersedes nothing.
    pub fn keygen(key: impl Into<String>) -> Self {
        Self::Keygen { key: key.into(), aux_info: None, supersedes: Vec::new() }
    }

    /// The key the grant is about.
    pub fn key(&self) -> &str {
        match self {
            Self::Keygen { key, .. }
            | Self::Sign { key, .. }
            | Self::FrostKeygen { key, .. }
            | Self::FrostSign { key, .. } => key,
        }
    }

    /// The scheme of the key the grant is about.
    pub fn scheme(&self) -> Scheme {
        match self {
            Self::Keygen { .. } | Self::Sign { .. } => Scheme::EcdsaSecp256k1,
            Self::FrostKeygen { scheme, .. } | Self::FrostSign { scheme, .. } => *scheme,
        }
    }

    /// Whether it generates a key (of any scheme).
    pub fn is_keygen(&self) -> bool {
        matches!(self, Self::Keygen { .. } | Self::FrostKeygen { .. })
    }
}

/// The operator's permission for `participants` to run one session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Grant {
    /// Format version, [`GRANT_VERSION`].
    pub version: u8,
    /// Random identifier chosen by the issuer ([`Grant::new_id`]).
    #[serde(with = "hex")]
    pub grant_id: [u8; 16],
    /// Namespace of the MpcCluster.
    pub namespace: String,
    /// Name of the MpcCluster.
    pub cluster: String,
    /// What the participants may do.
    pub kind: GrantKind,
    /// Party indices that take part, strictly ascending.
    pub participants: Vec<u16>,
    /// Fresh randomness ([`Grant::new_nonce`]); with `grant_id` it picks the
    /// initiator, so the issuer cannot steer that choice without re-rolling both.
    #[serde(with = "hex")]
    pub nonce: [u8; 16],
    /// Unix seconds at which the issuer made the grant.
    pub issued_at: u64,
    /// Unix seconds from which the grant is refused.
    pub expires_at: u64,
}

impl Grant {
    /// The deterministic, unambiguous encoding that the issuer signs.
    ///
    /// Integers are big-endian; every variable-length field is preceded by its
    /// length, so no two distinct grants share an encoding:
    ///
    /// | bytes   | field                                                    |
    /// |---------|----------------------------------------------------------|
    /// | 15      | domain tag `b"torcus-grant-v3"` ([`GRANT_DOMAIN`])       |
    /// | 1       | `version`                                                |
    /// | 16      | `grant_id`                                               |
    /// | 8 + n   | `namespace`: byte length as u64, then UTF-8 bytes        |
    /// | 8 + n   | `cluster`: byte length as u64, then UTF-8 bytes          |
    /// | 1       | kind tag: `0x01` keygen, `0x02` sign                     |
    /// | 8 + n   | `key`: byte length as u64, then UTF-8 bytes              |
    /// | 1 (+8+n)| keygen only: `aux_info`: 0 absent, or 1 then as `key`    |
    /// | 8 + …   | keygen only: `supersedes`: count as u64, then each as `key` |
    /// | 1 + …   | sign only: message tag, `0x01` digest then its 32 bytes, or `0x02` payload then the hash tag (`0x01` sha256, `0x02` keccak256, `0x03` sha256d), the payload's byte length as u64 and its bytes, and the 32-byte digest, or `0x03` raw message then its byte length as u64 and its bytes |
    /// | 8 + 4·k | sign only: `derivation_path`: count as u64, then each u32 |
    /// | 8 + 2·p | `participants`: count as u64, then each u16              |
    /// | 16      | `nonce`                                                  |
    /// | 8       | `issued_at` as u64                                       |
    /// | 8       | `expires_at` as u64                                      |
    ///
    /// A FROST grant has kind tag `0x03` (keygen) or `0x04` (sign), then the
    /// scheme tag (`0x02` schnorr-bip340, `0x03` eddsa-ed25519), then `key`;
    /// a FROST keygen continues with `supersedes`, a FROST sign with the
    /// message and `derivation_path`, each as above. ECDSA grants keep the
    /// layout they had, byte for byte.
    ///
    /// The JSON form is only how a grant travels; a change of this layout is a
    /// change of [`GRANT_VERSION`] and of the domain tag.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let Self { version, grant_id, namespace, cluster, kind, participants, nonce, issued_at, expires_at } = self;
        let payload_len = match kind {
            GrantKind::Sign { message, .. } | GrantKind::FrostSign { message, .. } => match message {
                SignMessage::Payload { payload, .. } => payload.len(),
                SignMessage::Raw { message } => message.len(),
                SignMessage::Digest { .. } => 0,
            },
            _ => 0,
        };
        let mut out = Vec::with_capacity(128 + namespace.len() + cluster.len() + payload_len);
        out.extend_from_slice(GRANT_DOMAIN);
        out.push(*version);
        out.extend_from_slice(grant_id);
        put_bytes(&mut out, namespace.as_bytes());
        put_bytes(&mut out, cluster.as_bytes());
        match kind {
            GrantKind::Keygen { key, aux_info, supersedes } => {
                out.push(KIND_KEYGEN);
                put_bytes(&mut out, key.as_bytes());
                match aux_info {
                    None => out.push(0),
                    Some(id) => {
                        out.push(1);
                        put_bytes(&mut out, id.as_bytes());
                    }
                }
                put_len(&mut out, supersedes.len());
                for public_key in supersedes {
                    put_bytes(&mut out, public_key.as_bytes());
                }
            }
            GrantKind::Sign { key, message, derivation_path } => {
                out.push(KIND_SIGN);
                put_bytes(&mut out, key.as_bytes());
                put_message(&mut out, message, derivation_path);
            }
            GrantKind::FrostKeygen { key, scheme, supersedes } => {
                out.push(KIND_FROST_KEYGEN);
                out.push(scheme.tag());
                put_bytes(&mut out, key.as_bytes());
                put_len(&mut out, supersedes.len());
                for public_key in supersedes {
                    put_bytes(&mut out, public_key.as_bytes());
                }
            }
            GrantKind::FrostSign { key, scheme, message, derivation_path } => {
                out.push(KIND_FROST_SIGN);
                out.push(scheme.tag());
                put_bytes(&mut out, key.as_bytes());
                put_message(&mut out, message, derivation_path);
            }
        }
        put_len(&mut out, participants.len());
        for party in participants {
            out.extend_from_slice(&party.to_be_bytes());
        }
        out.extend_from_slice(nonce);
        out.extend_from_slice(&issued_at.to_be_bytes());
        out.extend_from_slice(&expires_at.to_be_bytes());
        out
    }

    /// The session id: SHA-256(`b"torcus-session:"` ‖ canonical bytes). Nodes
    /// refuse a session id they have already used.
    pub fn session_id(&self) -> [u8; 32] {
        Sha256::new().chain_update(SESSION_DOMAIN).chain_update(self.canonical_bytes()).finalize().into()
    }

    /// The bytes handed to the MPC library as the session's unique
    /// ExecutionId: `b"torcus-eid:"` ‖ session id.
    pub fn execution_id(&self) -> Vec<u8> {
        [EXECUTION_DOMAIN, &self.session_id()].concat()
    }

    /// The participant that proposes and starts the session:
    /// `participants[u64_be(SHA-256(b"torcus-initiator:" ‖ grant_id ‖ nonce)[..8]) mod len]`.
    ///
    /// # Panics
    ///
    /// If `participants` is empty, which [`Grant::check`] (and so
    /// [`SignedGrant::verify`]) refuses.
    pub fn initiator(&self) -> u16 {
        let hash = Sha256::new()
            .chain_update(INITIATOR_DOMAIN)
            .chain_update(self.grant_id)
            .chain_update(self.nonce)
            .finalize();
        let mut first = [0; 8];
        first.copy_from_slice(&hash[..8]);
        // usize is at most 64 bits on every supported target, and the
        // remainder is below the length, so both casts are lossless.
        let position = u64::from_be_bytes(first) % self.participants.len() as u64;
        self.participants[position as usize]
    }

    /// A fresh random grant id.
    pub fn new_id() -> [u8; 16] {
        random()
    }

    /// A fresh random nonce.
    pub fn new_nonce() -> [u8; 16] {
        random()
    }

    /// Checks the version and the shape of the grant, not its signature nor
    /// its time window: participants non-empty and strictly ascending,
    /// derivation indices non-hardened and at most [`MAX_DERIVATION_DEPTH`] of
    /// them, a payload of at most [`MAX_PAYLOAD_BYTES`] that hashes to the
    /// digest the grant names, `expires_at` after `issued_at` and at most
    /// [`MAX_GRANT_LIFETIME_SECS`] later. The issuer runs it before signing.
    pub fn check(&self) -> Result<(), GrantError> {
        if self.version != GRANT_VERSION {
            return Err(GrantError::UnsupportedVersion(self.version));
        }
        let malformed = |m: String| Err(GrantError::Malformed(m));
        if self.participants.is_empty() {
            return malformed("no participants".into());
        }
        if let Some(pair) = self.participants.windows(2).find(|pair| pair[0] >= pair[1]) {
            return if pair[0] == pair[1] {
                malformed(format!("participant {} is listed twice", pair[0]))
            } else {
                malformed(format!("participants are not sorted ascending ({} before {})", pair[0], pair[1]))
            };
        }
        let hex_of = |s: &str, bytes: usize| {
            s.len() == 2 * bytes && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let scheme = self.kind.scheme();
        if let GrantKind::Keygen { aux_info: Some(id), .. } = &self.kind
            && !hex_of(id, 32)
        {
            return malformed(format!("aux info id {id:?} is not 64 lowercase hex digits"));
        }
        if let GrantKind::Keygen { supersedes, .. } | GrantKind::FrostKeygen { supersedes, .. } = &self.kind
            && let Some(pk) = supersedes.iter().find(|pk| !hex_of(pk, scheme.public_key_len()))
        {
            return malformed(format!(
                "superseded public key {pk:?} is not {} lowercase hex digits",
                2 * scheme.public_key_len()
            ));
        }
        if let GrantKind::FrostKeygen { scheme: Scheme::EcdsaSecp256k1, .. }
        | GrantKind::FrostSign { scheme: Scheme::EcdsaSecp256k1, .. } = &self.kind
        {
            return malformed("a FROST grant for an ecdsa-secp256k1 key".into());
        }
        if let GrantKind::Sign { derivation_path, message, .. }
        | GrantKind::FrostSign { derivation_path, message, .. } = &self.kind
        {
            match (scheme, message) {
                (Scheme::EddsaEd25519, SignMessage::Raw { .. }) => {}
                (Scheme::EddsaEd25519, _) => {
                    return malformed("an eddsa-ed25519 key signs a raw message, not a digest".into());
                }
                (_, SignMessage::Raw { .. }) => {
                    return malformed(format!("a {scheme} key signs a 32-byte digest, not a raw message"));
                }
                _ => {}
            }
            if !scheme.derives() && !derivation_path.is_empty() {
                return malformed(format!("a {scheme} key has no derivation"));
            }
            match message {
                SignMessage::Payload { hash, payload, digest } => {
                    if payload.len() > MAX_PAYLOAD_BYTES {
                        return malformed(format!("payload is {} bytes, above {MAX_PAYLOAD_BYTES}", payload.len()));
                    }
                    if hash.digest(payload) != *digest {
                        return Err(GrantError::DigestMismatch { hash: *hash });
                    }
                }
                SignMessage::Raw { message } if message.len() > MAX_PAYLOAD_BYTES => {
                    return malformed(format!("message is {} bytes, above {MAX_PAYLOAD_BYTES}", message.len()));
                }
                _ => {}
            }
            if derivation_path.len() > MAX_DERIVATION_DEPTH {
                return malformed(format!("derivation path is {} deep", derivation_path.len()));
            }
            if let Some(index) = derivation_path.iter().find(|index| **index >= HARDENED_INDEX) {
                return malformed(format!("derivation index {index} is hardened"));
            }
        }
        if self.expires_at <= self.issued_at {
            return malformed(format!("expires at {} but issued at {}", self.expires_at, self.issued_at));
        }
        if self.expires_at - self.issued_at > MAX_GRANT_LIFETIME_SECS {
            return malformed(format!(
                "valid for {} s; at most {MAX_GRANT_LIFETIME_SECS} s",
                self.expires_at - self.issued_at
            ));
        }
        Ok(())
    }
}

/// A grant with the issuer's Ed25519 signature over its canonical bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignedGrant {
    /// The grant as signed.
    pub grant: Grant,
    /// Ed25519 signature over [`Grant::canonical_bytes`].
    #[serde(with = "hex")]
    pub signature: [u8; 64],
}

/// Signs `grant` with the cluster's grant key. Run [`Grant::check`] first:
/// nodes refuse a malformed grant however it is signed.
pub fn sign(grant: Grant, key: &SigningKey) -> SignedGrant {
    let signature = key.sign(&grant.canonical_bytes()).to_bytes();
    SignedGrant { grant, signature }
}

impl SignedGrant {
    /// The grant, if it is well formed ([`Grant::check`]) and `issuer`
    /// signed it (strict Ed25519); nothing about time, membership or
    /// replay, and nothing recorded. [`SignedGrant::verify`] starts with it.
    pub fn authentic(&self, issuer: &VerifyingKey) -> Result<&Grant, GrantError> {
        let grant = &self.grant;
        grant.check()?;
        issuer
            .verify_strict(&grant.canonical_bytes(), &Signature::from_bytes(&self.signature))
            .map_err(|_| GrantError::BadSignature)?;
        Ok(grant)
    }

    /// Accepts the grant for party `me` at unix time `now`, or says why not.
    ///
    /// Checks, in order: version, shape ([`Grant::check`]), the signature by
    /// `issuer` (strict Ed25519: no small-order keys, no malleable
    /// signatures), not yet valid (`issued_at` more than [`CLOCK_SKEW_SECS`]
    /// after `now`), expired (`now >= expires_at`), membership of `me`, and
    /// last replay: the session id is recorded in `used`, and an id already
    /// there is refused. Only a grant that passed every other check records
    /// its session id.
    pub fn verify(
        &self,
        issuer: &VerifyingKey,
        me: u16,
        now: u64,
        used: &mut impl UsedSessions,
    ) -> Result<&Grant, GrantError> {
        let grant = self.authentic(issuer)?;
        if grant.issued_at > now.saturating_add(CLOCK_SKEW_SECS) {
            return Err(GrantError::NotYetValid { issued_at: grant.issued_at, now });
        }
        if now >= grant.expires_at {
            return Err(GrantError::Expired { expires_at: grant.expires_at, now });
        }
        if grant.participants.binary_search(&me).is_err() {
            return Err(GrantError::NotAMember { me });
        }
        if !used.insert(grant.session_id(), grant.expires_at)? {
            return Err(GrantError::Replayed);
        }
        Ok(grant)
    }
}

/// The session ids a node has already accepted.
pub trait UsedSessions {
    /// Records `session_id`, kept at least until `expires_at` (unix seconds).
    /// Returns `false` if it was already recorded. An implementation may
    /// forget ids whose `expires_at` has passed: such grants fail the expiry
    /// check before they get here.
    fn insert(&mut self, session_id: [u8; 32], expires_at: u64) -> Result<bool, io::Error>;
}

/// Used session ids kept in memory, for tests and for the operator side; a
/// node keeps its own on disk so that a restart does not reopen old grants.
#[derive(Debug)]
pub struct MemoryUsedSessions {
    /// Session id → `expires_at`.
    used: HashMap<[u8; 32], u64>,
    /// Unix seconds, for pruning; a plain function so tests can fix it.
    clock: fn() -> u64,
}

impl MemoryUsedSessions {
    /// An empty set that prunes by the system clock.
    pub fn new() -> Self {
        Self::with_clock(unix_now)
    }

    /// An empty set that prunes by `clock` (unix seconds). Use the clock that
    /// supplies `now` to [`SignedGrant::verify`].
    pub fn with_clock(clock: fn() -> u64) -> Self {
        Self { used: HashMap::new(), clock }
    }

    /// Number of ids held.
    pub fn len(&self) -> usize {
        self.used.len()
    }

    /// Whether no id is held.
    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }
}

impl Default for MemoryUsedSessions {
    fn default() -> Self {
        Self::new()
    }
}

impl UsedSessions for MemoryUsedSessions {
    fn insert(&mut self, session_id: [u8; 32], expires_at: u64) -> Result<bool, io::Error> {
        let now = (self.clock)();
        // Same boundary as the expiry check: from `expires_at` on, the grant
        // is refused before replay is looked at.
        self.used.retain(|_, expires_at| *expires_at > now);
        match self.used.entry(session_id) {
            Entry::Occupied(_) => Ok(false),
            Entry::Vacant(entry) => {
                entry.insert(expires_at);
                Ok(true)
            }
        }
    }
}

/// Why a node refuses a grant.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// The signature is not the cluster grant key's over these exact bytes.
    #[error("grant signature does not verify with the issuer key")]
    BadSignature,
    /// The grant's validity has ended.
    #[error(
        "grant expired at {expires_at}, {} s before this node's clock (now {now}): a slow issuer, or a node clock ahead",
        .now.saturating_sub(*.expires_at)
    )]
    Expired {
        /// The grant's `expires_at`.
        expires_at: u64,
        /// The verifier's time.
        now: u64,
    },
    /// The grant was issued further in the future than the allowed clock skew.
    #[error(
        "grant is issued at {issued_at}, {} s ahead of this node's clock (now {now}), beyond the {} s of skew allowed",
        .issued_at.saturating_sub(*.now),
        CLOCK_SKEW_SECS
    )]
    NotYetValid {
        /// The grant's `issued_at`.
        issued_at: u64,
        /// The verifier's time.
        now: u64,
    },
    /// The verifying party is not among the participants.
    #[error("party {me} is not a participant of the grant")]
    NotAMember {
        /// The verifying party.
        me: u16,
    },
    /// The grant's session id has been used already.
    #[error("grant session id has already been used")]
    Replayed,
    /// The grant is well-signed JSON of the wrong shape.
    #[error("grant is malformed: {0}")]
    Malformed(String),
    /// The grant is of a format version this node does not know.
    #[error("grant version {0} is not supported")]
    UnsupportedVersion(u8),
    /// The payload of a signing grant does not hash to the digest the grant
    /// names: the issuer recorded (and will check the signature against)
    /// another message than the one the nodes would sign.
    #[error("the grant's payload does not hash ({}) to the digest the grant names", hash.as_str())]
    DigestMismatch {
        /// The hash the grant names.
        hash: HashAlgorithm,
    },
    /// The used-session store could not record the session id.
    #[error("cannot record the grant session id")]
    Storage(#[from] io::Error),
}

impl GrantError {
    /// A low-cardinality label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadSignature => "bad_signature",
            Self::Expired { .. } => "expired",
            Self::NotYetValid { .. } => "not_yet_valid",
            Self::NotAMember { .. } => "not_a_member",
            Self::Replayed => "replayed",
            Self::Malformed(_) => "malformed",
            Self::UnsupportedVersion(_) => "unsupported_version",
            Self::DigestMismatch { .. } => "digest_mismatch",
            Self::Storage(_) => "storage",
        }
    }
}

/// The system clock in unix seconds, for callers of [`SignedGrant::verify`].
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs())
}

fn put_message(out: &mut Vec<u8>, message: &SignMessage, derivation_path: &[u32]) {
    match message {
        SignMessage::Digest { digest } => {
            out.push(MESSAGE_DIGEST);
            out.extend_from_slice(digest);
        }
        SignMessage::Payload { hash, payload, digest } => {
            out.push(MESSAGE_PAYLOAD);
            out.push(hash.tag());
            put_bytes(out, payload);
            out.extend_from_slice(digest);
        }
        SignMessage::Raw { message } => {
            out.push(MESSAGE_RAW);
            put_bytes(out, message);
        }
    }
    put_len(out, derivation_path.len());
    for index in derivation_path {
        out.extend_from_slice(&index.to_be_bytes());
    }
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    // usize is at most 64 bits on every supported target: lossless.
    out.extend_from_slice(&(len as u64).to_be_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_len(out, bytes.len());
    out.extend_from_slice(bytes);
}

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0; N];
    // The OS random source is there on every platform a node or the operator
    // runs on; without it no grant can be issued safely, so stopping is right.
    getrandom::fill(&mut bytes).expect("the operating system random source failed");
    bytes
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashSet;

    use super::*;

    /// The tests' Unix time.
    pub(crate) const NOW: u64 = 1_750_000_000;

    /// A grant to sign a raw digest with key `default` under `path`, issued
    /// at [`NOW`] to `participants` for a minute.
    pub(crate) fn sign_grant(participants: Vec<u16>, path: Vec<u32>) -> Grant {
        Grant {
            version: GRANT_VERSION,
            grant_id: [1; 16],
            namespace: "payments".into(),
            cluster: "demo".into(),
            kind: GrantKind::Sign {
                key: "default".into(),
                message: SignMessage::Digest { digest: [9; 32] },
                derivation_path: path,
            },
            participants,
            nonce: [3; 16],
            issued_at: NOW,
            expires_at: NOW + 60,
        }
    }

    fn grant() -> Grant {
        sign_grant(vec![0, 2, 4], vec![0, 7])
    }

    fn issuer() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    fn used() -> MemoryUsedSessions {
        MemoryUsedSessions::with_clock(|| NOW)
    }

    /// A named change to a grant.
    type Mutation = (&'static str, fn(&mut Grant));

    /// Single-field changes that keep the grant well-formed, party 2 a member
    /// and the version supported.
    fn mutations() -> Vec<Mutation> {
        fn path(g: &mut Grant) -> &mut Vec<u32> {
            match &mut g.kind {
                GrantKind::Sign { derivation_path, .. } => derivation_path,
                _ => unreachable!("the sample grant is an ECDSA sign grant"),
            }
        }
        vec![
            ("grant id", |g| g.grant_id[15] ^= 1),
            ("namespace", |g| g.namespace.push('x')),
            ("cluster", |g| g.cluster.push('x')),
            ("namespace/cluster boundary", |g| {
                g.namespace = "payment".into();
                g.cluster = "sdemo".into();
            }),
            ("key", |g| {
                if let GrantKind::Sign { key, .. } = &mut g.kind {
                    key.push('x');
                }
            }),
            ("kind", |g| g.kind = GrantKind::Keygen { key: "default".into(), aux_info: None, supersedes: vec![] }),
            ("aux info", |g| {
                g.kind = GrantKind::Keygen { key: "default".into(), aux_info: Some("0".repeat(64)), supersedes: vec![] }
            }),
            ("supersedes", |g| {
                g.kind = GrantKind::Keygen {
                    key: "default".into(),
                    aux_info: None,
                    supersedes: vec![format!("03{}", "1".repeat(64))],
                }
            }),
            ("digest", |g| {
                if let GrantKind::Sign { message: SignMessage::Digest { digest }, .. } = &mut g.kind {
                    digest[31] ^= 1;
                }
            }),
            ("digest to payload", |g| {
                if let GrantKind::Sign { message, .. } = &mut g.kind {
                    *message = SignMessage::payload(HashAlgorithm::Sha256, b"hello torcus".to_vec());
                }
            }),
            ("payload hash", |g| {
                if let GrantKind::Sign { message, .. } = &mut g.kind {
                    *message = SignMessage::payload(HashAlgorithm::Sha256d, b"hello torcus".to_vec());
                }
            }),
            ("payload bytes", |g| {
                if let GrantKind::Sign { message, .. } = &mut g.kind {
                    *message = SignMessage::payload(HashAlgorithm::Sha256, b"hello torcut".to_vec());
                }
            }),
            ("scheme", |g| {
                if let GrantKind::Sign { key, message, derivation_path } = g.kind.clone() {
                    g.kind = GrantKind::FrostSign { key, scheme: Scheme::SchnorrBip340, message, derivation_path };
                }
            }),
            ("frost keygen", |g| {
                g.kind =
                    GrantKind::FrostKeygen { key: "default".into(), scheme: Scheme::SchnorrBip340, supersedes: vec![] }
            }),
            ("frost keygen scheme", |g| {
                g.kind =
                    GrantKind::FrostKeygen { key: "default".into(), scheme: Scheme::EddsaEd25519, supersedes: vec![] }
            }),
            ("raw message", |g| {
                g.kind = GrantKind::FrostSign {
                    key: "default".into(),
                    scheme: Scheme::EddsaEd25519,
                    message: SignMessage::Raw { message: b"hello torcus".to_vec() },
                    derivation_path: vec![],
                }
            }),
            ("derivation index", |g| path(g)[1] += 1),
            ("derivation order", |g| path(g).reverse()),
            ("derivation longer", |g| path(g).push(0)),
            ("derivation empty", |g| path(g).clear()),
            ("participant", |g| g.participants = vec![0, 2, 3]),
            ("participant removed", |g| g.participants = vec![0, 2]),
            ("participant added", |g| g.participants = vec![0, 1, 2, 4]),
            ("nonce", |g| g.nonce[0] ^= 0x80),
            ("issued at", |g| g.issued_at -= 1),
            ("expires at", |g| g.expires_at += 1),
        ]
    }

    #[test]
    fn schemes_take_only_the_messages_and_paths_they_sign() {
        let frost = |scheme, message, derivation_path| {
            let mut g = grant();
            g.kind = GrantKind::FrostSign { key: "k".into(), scheme, message, derivation_path };
            g.check()
        };
        let raw = || SignMessage::Raw { message: b"m".to_vec() };
        let digest = || SignMessage::Digest { digest: [1; 32] };
        let payload = || SignMessage::payload(HashAlgorithm::Sha256, b"m".to_vec());
        frost(Scheme::EddsaEd25519, raw(), vec![]).unwrap();
        frost(Scheme::SchnorrBip340, digest(), vec![1, 2]).unwrap();
        frost(Scheme::SchnorrBip340, payload(), vec![]).unwrap();
        for (scheme, message, path, why) in [
            (Scheme::EddsaEd25519, digest(), vec![], "signs a raw message, not a digest"),
            (Scheme::EddsaEd25519, payload(), vec![], "signs a raw message, not a digest"),
            (Scheme::EddsaEd25519, raw(), vec![0], "has no derivation"),
            (Scheme::SchnorrBip340, raw(), vec![], "signs a 32-byte digest"),
            (Scheme::EcdsaSecp256k1, digest(), vec![], "a FROST grant for an ecdsa-secp256k1 key"),
            (Scheme::SchnorrBip340, digest(), vec![HARDENED_INDEX], "hardened"),
        ] {
            match frost(scheme, message, path) {
                Err(GrantError::Malformed(m)) => assert!(m.contains(why), "{scheme}: {m}"),
                other => panic!("{scheme}: {other:?}"),
            }
        }
        let mut ecdsa = grant();
        ecdsa.kind = GrantKind::Sign { key: "k".into(), message: raw(), derivation_path: vec![] };
        assert!(matches!(ecdsa.check(), Err(GrantError::Malformed(m)) if m.contains("not a raw message")));
        let mut big = grant();
        big.kind = GrantKind::FrostSign {
            key: "k".into(),
            scheme: Scheme::EddsaEd25519,
            message: SignMessage::Raw { message: vec![0; MAX_PAYLOAD_BYTES + 1] },
            derivation_path: vec![],
        };
        assert!(matches!(big.check(), Err(GrantError::Malformed(_))));
        for scheme in Scheme::ALL {
            assert_eq!(Scheme::parse(scheme.as_str()), Some(scheme));
            assert_eq!(serde_json::to_value(scheme).unwrap(), scheme.as_str());
        }
    }

    #[test]
    fn canonical_bytes_change_with_every_field() {
        let base = grant();
        let mut seen = HashSet::from([base.canonical_bytes()]);
        let mut versioned = base.clone();
        versioned.version = GRANT_VERSION + 1;
        assert!(seen.insert(versioned.canonical_bytes()), "version");
        for (name, mutate) in mutations() {
            let mut g = base.clone();
            mutate(&mut g);
            assert_ne!(g, base, "{name} did not change the grant");
            g.check().unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(seen.insert(g.canonical_bytes()), "{name} collides with another grant");
            assert_ne!(g.session_id(), base.session_id(), "{name}");
        }
    }

    #[test]
    fn canonical_layout_is_pinned() {
        let g = Grant {
            version: 3,
            grant_id: [0xaa; 16],
            namespace: "ns".into(),
            cluster: "c".into(),
            kind: GrantKind::Keygen { key: "k".into(), aux_info: None, supersedes: vec![] },
            participants: vec![1, 0x0203],
            nonce: [0xbb; 16],
            issued_at: 5,
            expires_at: 0x0102,
        };
        let mut expected = b"torcus-grant-v3".to_vec();
        expected.push(3);
        expected.extend([0xaa; 16]);
        expected.extend([0, 0, 0, 0, 0, 0, 0, 2, b'n', b's']);
        expected.extend([0, 0, 0, 0, 0, 0, 0, 1, b'c']);
        expected.extend([0x01, 0, 0, 0, 0, 0, 0, 0, 1, b'k']);
        expected.extend([0, 0, 0, 0, 0, 0, 0, 0, 0]);
        expected.extend([0, 0, 0, 0, 0, 0, 0, 2, 0, 1, 2, 3]);
        expected.extend([0xbb; 16]);
        expected.extend([0, 0, 0, 0, 0, 0, 0, 5]);
        expected.extend([0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(g.canonical_bytes(), expected);

        let mut sign = grant();
        sign.kind = GrantKind::Sign {
            key: "k".into(),
            message: SignMessage::Digest { digest: [0xcc; 32] },
            derivation_path: vec![0x0a0b_0c0d],
        };
        let bytes = sign.canonical_bytes();
        let mut kind = vec![0x02, 0, 0, 0, 0, 0, 0, 0, 1, b'k', 0x01];
        kind.extend([0xcc; 32]);
        kind.extend([0, 0, 0, 0, 0, 0, 0, 1, 0x0a, 0x0b, 0x0c, 0x0d]);
        assert!(bytes.windows(kind.len()).any(|w| w == kind), "sign kind layout");

        let message = SignMessage::payload(HashAlgorithm::Keccak256, b"xy".to_vec());
        let digest = message.digest().unwrap();
        sign.kind = GrantKind::Sign { key: "k".into(), message, derivation_path: vec![] };
        sign.check().unwrap();
        let bytes = sign.canonical_bytes();
        let mut kind = vec![0x02, 0, 0, 0, 0, 0, 0, 0, 1, b'k', 0x02, 0x02, 0, 0, 0, 0, 0, 0, 0, 2, b'x', b'y'];
        kind.extend(digest);
        kind.extend([0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(bytes.windows(kind.len()).any(|w| w == kind), "payload layout");

        let mut keygen = g.clone();
        let (aux, pk) = ("a".repeat(64), format!("02{}", "b".repeat(64)));
        keygen.kind = GrantKind::Keygen { key: "k".into(), aux_info: Some(aux.clone()), supersedes: vec![pk.clone()] };
        keygen.check().unwrap();
        let mut kind = vec![0x01, 0, 0, 0, 0, 0, 0, 0, 1, b'k', 1, 0, 0, 0, 0, 0, 0, 0, 64];
        kind.extend(aux.as_bytes());
        kind.extend([0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 66]);
        kind.extend(pk.as_bytes());
        let bytes = keygen.canonical_bytes();
        assert!(bytes.windows(kind.len()).any(|w| w == kind), "keygen kind layout");
        for bad in [
            GrantKind::Keygen { key: "k".into(), aux_info: Some("AA".repeat(32)), supersedes: vec![] },
            GrantKind::Keygen { key: "k".into(), aux_info: None, supersedes: vec!["02".into()] },
        ] {
            let g = Grant { kind: bad, ..g.clone() };
            assert!(matches!(g.check(), Err(GrantError::Malformed(_))), "{:?}", g.kind);
        }

        // FROST: kind tag, scheme tag, then the rest as for ECDSA.
        let mut frost = g.clone();
        frost.kind = GrantKind::FrostSign {
            key: "k".into(),
            scheme: Scheme::EddsaEd25519,
            message: SignMessage::Raw { message: b"xy".to_vec() },
            derivation_path: vec![],
        };
        frost.check().unwrap();
        let kind = [
            0x04, 0x03, 0, 0, 0, 0, 0, 0, 0, 1, b'k', 0x03, 0, 0, 0, 0, 0, 0, 0, 2, b'x', b'y', 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert!(frost.canonical_bytes().windows(kind.len()).any(|w| w == kind), "frost sign layout");
        let ed_key = "c".repeat(64);
        frost.kind =
            GrantKind::FrostKeygen { key: "k".into(), scheme: Scheme::SchnorrBip340, supersedes: vec![ed_key.clone()] };
        assert!(matches!(frost.check(), Err(GrantError::Malformed(_))), "a 32-byte key superseded for a secp256k1 key");
        frost.kind =
            GrantKind::FrostKeygen { key: "k".into(), scheme: Scheme::EddsaEd25519, supersedes: vec![ed_key.clone()] };
        frost.check().unwrap();
        let mut kind = vec![0x03, 0x03, 0, 0, 0, 0, 0, 0, 0, 1, b'k', 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 64];
        kind.extend(ed_key.as_bytes());
        assert!(frost.canonical_bytes().windows(kind.len()).any(|w| w == kind), "frost keygen layout");

        let mut eid = b"torcus-eid:".to_vec();
        eid.extend(g.session_id());
        assert_eq!(g.execution_id(), eid);
        let mut preimage = b"torcus-session:".to_vec();
        preimage.extend(expected);
        assert_eq!(g.session_id(), <[u8; 32]>::from(Sha256::digest(&preimage)));
    }

    #[test]
    fn json_round_trip_keeps_the_signed_bytes() {
        let signed = sign(grant(), &issuer());
        let json = serde_json::to_string(&signed).unwrap();
        let back: SignedGrant = serde_json::from_str(&json).unwrap();
        assert_eq!(back, signed);
        assert_eq!(back.grant.canonical_bytes(), signed.grant.canonical_bytes());
        assert_eq!(serde_json::to_string(&back).unwrap(), json);
        back.verify(&issuer().verifying_key(), 2, NOW, &mut used()).unwrap();

        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let g = &value["grant"];
        assert_eq!(g["grantId"], "01".repeat(16));
        assert_eq!(g["nonce"], "03".repeat(16));
        assert_eq!(g["issuedAt"], NOW);
        assert_eq!(g["kind"]["type"], "sign");
        assert_eq!(g["kind"]["message"], serde_json::json!({"type": "digest", "digest": "09".repeat(32)}));
        assert_eq!(g["kind"]["derivationPath"], serde_json::json!([0, 7]));
        assert_eq!(value["signature"], hex::encode(signed.signature));

        let keygen =
            Grant { kind: GrantKind::Keygen { key: "default".into(), aux_info: None, supersedes: vec![] }, ..grant() };
        let value = serde_json::to_value(&keygen).unwrap();
        assert_eq!(value["kind"], serde_json::json!({"type": "keygen", "key": "default"}));
        assert_eq!(serde_json::from_value::<Grant>(value).unwrap(), keygen);

        let payload = SignMessage::payload(HashAlgorithm::Sha256d, b"abc".to_vec());
        let value = serde_json::to_value(&payload).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "type": "payload",
                "hash": "sha256d",
                "payload": "616263",
                "digest": "4f8b42c22dd3729b519ba6f68d2da7cc5b2d606d05daed5ad5128cc03e6c6358",
            })
        );
        assert_eq!(serde_json::from_value::<SignMessage>(value).unwrap(), payload);
    }

    #[test]
    fn payload_hashes_are_the_published_ones() {
        let digests = [
            (HashAlgorithm::Sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
            (HashAlgorithm::Keccak256, "4e03657aea45a94fc7d47ba826c8d667c0d1e6e33a64a036ec44f58fa12d6c45"),
            (HashAlgorithm::Sha256d, "4f8b42c22dd3729b519ba6f68d2da7cc5b2d606d05daed5ad5128cc03e6c6358"),
        ];
        for (hash, expected) in digests {
            assert_eq!(hex::encode(hash.digest(b"abc")), expected, "{}", hash.as_str());
        }
    }

    #[test]
    fn a_payload_that_does_not_hash_to_the_digest_is_refused_before_anything_is_used() {
        let key = issuer().verifying_key();
        let mut message = SignMessage::payload(HashAlgorithm::Keccak256, b"transfer 1 ETH".to_vec());
        if let SignMessage::Payload { payload, .. } = &mut message {
            // The digest still names the first payload.
            *payload = b"transfer 9 ETH".to_vec();
        }
        let g = Grant { kind: GrantKind::Sign { key: "default".into(), message, derivation_path: vec![] }, ..grant() };
        assert!(matches!(g.check(), Err(GrantError::DigestMismatch { hash: HashAlgorithm::Keccak256 })));
        let mut used = used();
        let err = sign(g, &issuer()).verify(&key, 2, NOW, &mut used).unwrap_err();
        assert_eq!(err.reason(), "digest_mismatch");
        assert!(err.to_string().contains("keccak256"), "{err}");
        assert!(used.is_empty(), "a refused grant uses up no session id");

        let big = SignMessage::payload(HashAlgorithm::Sha256, vec![0; MAX_PAYLOAD_BYTES + 1]);
        let g =
            Grant { kind: GrantKind::Sign { key: "default".into(), message: big, derivation_path: vec![] }, ..grant() };
        assert!(matches!(g.check(), Err(GrantError::Malformed(m)) if m.contains("payload")));
        let most = SignMessage::payload(HashAlgorithm::Sha256, vec![0; MAX_PAYLOAD_BYTES]);
        let g = Grant {
            kind: GrantKind::Sign { key: "default".into(), message: most, derivation_path: vec![] },
            ..grant()
        };
        g.check().unwrap();
    }

    #[test]
    fn json_refuses_unknown_fields_and_bad_hex() {
        let mut value = serde_json::to_value(sign(grant(), &issuer())).unwrap();
        value["grant"]["maxAmount"] = 1.into();
        assert!(serde_json::from_value::<SignedGrant>(value).is_err());
        let mut value = serde_json::to_value(sign(grant(), &issuer())).unwrap();
        value["signature"] = "00".repeat(63).into();
        assert!(serde_json::from_value::<SignedGrant>(value).is_err());
        let mut value = serde_json::to_value(grant()).unwrap();
        value["grantId"] = "zz".repeat(16).into();
        assert!(serde_json::from_value::<Grant>(value).is_err());
    }

    #[test]
    fn valid_grant_verifies() {
        let signed = sign(grant(), &issuer());
        let key = issuer().verifying_key();
        for me in [0, 2, 4] {
            // Each node has its own used set.
            assert_eq!(signed.verify(&key, me, NOW, &mut used()).unwrap(), &signed.grant);
        }
        // Within the clock skew, and up to the last second.
        signed.verify(&key, 2, NOW - CLOCK_SKEW_SECS, &mut used()).unwrap();
        signed.verify(&key, 2, NOW + 59, &mut used()).unwrap();
        let mut store = used();
        signed.verify(&key, 2, NOW, &mut store).unwrap();
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn refusals_name_the_reason_and_consume_nothing() {
        let key = issuer().verifying_key();
        let good = sign(grant(), &issuer());
        let resign = |mutate: fn(&mut Grant)| {
            let mut g = grant();
            mutate(&mut g);
            sign(g, &issuer())
        };
        let mut bad_bit = good.clone();
        bad_bit.signature[10] ^= 1;
        let cases: Vec<(&str, SignedGrant, u16, u64, &str)> = vec![
            ("forged", sign(grant(), &SigningKey::from_bytes(&[8; 32])), 2, NOW, "bad_signature"),
            ("flipped signature bit", bad_bit, 2, NOW, "bad_signature"),
            ("zero signature", SignedGrant { signature: [0; 64], ..good.clone() }, 2, NOW, "bad_signature"),
            ("expired", good.clone(), 2, NOW + 60, "expired"),
            ("long expired", good.clone(), 2, NOW + 10_000, "expired"),
            ("not yet valid", good.clone(), 2, NOW - CLOCK_SKEW_SECS - 1, "not_yet_valid"),
            ("non-member", good.clone(), 3, NOW, "not_a_member"),
            ("unsorted", resign(|g| g.participants = vec![0, 4, 2]), 2, NOW, "malformed"),
            ("duplicate", resign(|g| g.participants = vec![0, 2, 2, 4]), 2, NOW, "malformed"),
            ("empty", resign(|g| g.participants.clear()), 2, NOW, "malformed"),
            (
                "hardened",
                resign(|g| {
                    g.kind = GrantKind::Sign {
                        key: "default".into(),
                        message: SignMessage::Digest { digest: [9; 32] },
                        derivation_path: vec![0, 1 << 31],
                    }
                }),
                2,
                NOW,
                "malformed",
            ),
            (
                "too deep",
                resign(|g| {
                    g.kind = GrantKind::Sign {
                        key: "k".into(),
                        message: SignMessage::Digest { digest: [9; 32] },
                        derivation_path: vec![0; 256],
                    }
                }),
                2,
                NOW,
                "malformed",
            ),
            ("expires before issued", resign(|g| g.expires_at = g.issued_at), 2, NOW, "malformed"),
            (
                "valid too long",
                resign(|g| g.expires_at = g.issued_at + MAX_GRANT_LIFETIME_SECS + 1),
                2,
                NOW,
                "malformed",
            ),
            ("version", resign(|g| g.version = GRANT_VERSION + 1), 2, NOW, "unsupported_version"),
        ];
        let mut used = used();
        for (name, signed, me, now, reason) in cases {
            let err = signed.verify(&key, me, now, &mut used).unwrap_err();
            assert_eq!(err.reason(), reason, "{name}: {err}");
            assert!(used.is_empty(), "{name} consumed a session id");
        }
        // The same grant, refused above for its context, is still usable.
        good.verify(&key, 2, NOW, &mut used).unwrap();
    }

    #[test]
    fn refusals_carry_details() {
        let key = issuer().verifying_key();
        let signed = sign(grant(), &issuer());
        let err = signed.verify(&key, 2, NOW + 61, &mut used()).unwrap_err();
        assert!(matches!(err, GrantError::Expired { expires_at, now } if expires_at == NOW + 60 && now == NOW + 61));
        assert!(err.to_string().contains("1 s before this node's clock"), "{err}");
        let err = signed.verify(&key, 2, NOW - 31, &mut used()).unwrap_err();
        assert!(matches!(err, GrantError::NotYetValid { issued_at: NOW, now } if now == NOW - 31));
        assert!(
            err.to_string().contains("31 s ahead of this node's clock") && err.to_string().contains("30 s of skew"),
            "{err}"
        );
        let err = signed.verify(&key, 9, NOW, &mut used()).unwrap_err();
        assert!(matches!(err, GrantError::NotAMember { me: 9 }));
        let err = sign(Grant { version: 0, ..grant() }, &issuer()).verify(&key, 2, NOW, &mut used()).unwrap_err();
        assert!(matches!(err, GrantError::UnsupportedVersion(0)));
        let hardened = Grant {
            kind: GrantKind::Sign {
                key: "k".into(),
                message: SignMessage::Digest { digest: [0; 32] },
                derivation_path: vec![HARDENED_INDEX],
            },
            ..grant()
        };
        let err = sign(hardened, &issuer()).verify(&key, 2, NOW, &mut used()).unwrap_err();
        assert!(matches!(&err, GrantError::Malformed(m) if m.contains("hardened")), "{err}");
        let duplicate = Grant { participants: vec![2, 2], ..grant() };
        let err = sign(duplicate, &issuer()).verify(&key, 2, NOW, &mut used()).unwrap_err();
        assert!(matches!(&err, GrantError::Malformed(m) if m.contains("twice")), "{err}");
    }

    #[test]
    fn tampering_after_signing_breaks_the_signature() {
        let key = issuer().verifying_key();
        for (name, mutate) in mutations() {
            let mut signed = sign(grant(), &issuer());
            mutate(&mut signed.grant);
            let mut used = used();
            let err = signed.verify(&key, 2, NOW, &mut used).unwrap_err();
            assert!(matches!(err, GrantError::BadSignature), "{name}: {err}");
            assert!(used.is_empty(), "{name}");
        }
    }

    #[test]
    fn authentic_checks_shape_and_signature_and_records_nothing() {
        let key = issuer().verifying_key();
        let signed = sign(grant(), &issuer());
        assert_eq!(signed.authentic(&key).unwrap(), &signed.grant);
        // Authentic again: nothing was recorded, and time is not looked at.
        assert!(signed.authentic(&key).is_ok());
        let mut tampered = signed.clone();
        tampered.grant.participants = vec![0, 1];
        assert!(matches!(tampered.authentic(&key), Err(GrantError::BadSignature)));
        // No participants: refused as malformed, where `initiator` would panic.
        let empty = sign(Grant { participants: vec![], ..grant() }, &issuer());
        assert!(matches!(empty.authentic(&key), Err(GrantError::Malformed(m)) if m.contains("no participants")));
        let stranger = SigningKey::from_bytes(&[9; 32]).verifying_key();
        assert!(matches!(signed.authentic(&stranger), Err(GrantError::BadSignature)));
    }

    #[test]
    fn replay_is_refused() {
        let key = issuer().verifying_key();
        let signed = sign(grant(), &issuer());
        let mut used = used();
        signed.verify(&key, 2, NOW, &mut used).unwrap();
        let err = signed.verify(&key, 2, NOW + 1, &mut used).unwrap_err();
        assert!(matches!(err, GrantError::Replayed));
        // A re-serialized copy is the same session.
        let copy: SignedGrant = serde_json::from_slice(&serde_json::to_vec(&signed).unwrap()).unwrap();
        assert!(matches!(copy.verify(&key, 2, NOW, &mut used), Err(GrantError::Replayed)));
        // A new grant for the same work is a new session.
        let fresh = sign(Grant { grant_id: [2; 16], ..grant() }, &issuer());
        fresh.verify(&key, 2, NOW, &mut used).unwrap();
    }

    #[test]
    fn storage_failure_is_reported() {
        #[derive(Debug)]
        struct Broken;
        impl UsedSessions for Broken {
            fn insert(&mut self, _: [u8; 32], _: u64) -> Result<bool, io::Error> {
                Err(io::Error::other("disk full"))
            }
        }
        let err = sign(grant(), &issuer()).verify(&issuer().verifying_key(), 2, NOW, &mut Broken).unwrap_err();
        assert_eq!(err.reason(), "storage");
        assert_eq!(std::error::Error::source(&err).unwrap().to_string(), "disk full");
    }

    #[test]
    fn memory_used_sessions_prunes_expired_entries() {
        let mut used = MemoryUsedSessions::with_clock(|| NOW);
        assert!(used.insert([1; 32], NOW - 1).unwrap());
        assert!(used.insert([2; 32], NOW + 1).unwrap());
        assert_eq!(used.len(), 1, "the expired entry went on the second insert");
        assert!(!used.insert([2; 32], NOW + 1).unwrap());
        assert!(used.insert([1; 32], NOW + 5).unwrap());
    }

    #[test]
    fn error_labels_and_messages() {
        let errors = [
            GrantError::BadSignature,
            GrantError::Expired { expires_at: 1, now: 2 },
            GrantError::NotYetValid { issued_at: 2, now: 1 },
            GrantError::NotAMember { me: 1 },
            GrantError::Replayed,
            GrantError::Malformed("x".into()),
            GrantError::UnsupportedVersion(9),
            GrantError::DigestMismatch { hash: HashAlgorithm::Sha256 },
            GrantError::Storage(io::Error::other("x")),
        ];
        let labels: HashSet<_> = errors.iter().map(GrantError::reason).collect();
        assert_eq!(labels.len(), errors.len());
        for e in &errors {
            assert!(e.reason().chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{}", e.reason());
            assert!(e.to_string().starts_with(char::is_lowercase), "{e}");
        }
    }

    #[test]
    fn initiator_is_a_deterministic_member() {
        let g = grant();
        assert!(g.participants.contains(&g.initiator()));
        assert_eq!(g.initiator(), g.clone().initiator());
        // Only grant id and nonce choose it.
        let other = Grant { namespace: "other".into(), expires_at: NOW + 1, ..g.clone() };
        assert_eq!(other.initiator(), g.initiator());
        let single = Grant { participants: vec![6], ..g };
        assert_eq!(single.initiator(), 6);
    }

    #[test]
    fn initiator_spreads_over_members() {
        let participants = vec![1, 3, 5, 7, 9];
        let mut chosen = HashSet::new();
        for _ in 0..300 {
            let g = Grant {
                grant_id: Grant::new_id(),
                nonce: Grant::new_nonce(),
                participants: participants.clone(),
                ..grant()
            };
            let initiator = g.initiator();
            assert!(participants.contains(&initiator));
            chosen.insert(initiator);
        }
        assert_eq!(chosen.len(), participants.len(), "chosen: {chosen:?}");
    }

    #[test]
    fn new_ids_are_random() {
        assert_ne!(Grant::new_id(), Grant::new_id());
        assert_ne!(Grant::new_nonce(), Grant::new_nonce());
    }
}
