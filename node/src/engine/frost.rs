//! FROST threshold Schnorr signatures with the `givre` crate: BIP-340 on
//! secp256k1, tweaked for the BIP-341 key-path spend of a Taproot output,
//! and Ed25519 (RFC 8032).
//!
//! The keys come from the same distributed key generation as the ECDSA
//! keys (cggmp24's, run over the same [`SessionNet`]), without aux info:
//! FROST needs no Paillier keys, so a FROST keygen never waits for safe
//! primes. Signing is givre's interactive two-round protocol: every run
//! draws fresh nonces, which live only in that run's memory. There are no
//! presignatures for FROST keys.
//!
//! A share is stored with a format tag per scheme, so a BIP-340 share is
//! never read as an ECDSA share of the same curve, nor the other way round.

use cggmp24::ExecutionId;
use cggmp24::hd_wallet::Slip10;
use givre::ciphersuite::{Bitcoin, Ciphersuite, Ed25519};
use givre::generic_ec::curves::{Ed25519 as EdCurve, Secp256k1};
use givre::generic_ec::{NonZero, Point};
use rand_core::OsRng;
use serde::Serialize;
use torcus_contract::Scheme;
use zeroize::Zeroizing;

use super::{EngineError, SessionNet, ShareFormatError, blame, delivery, position};

/// A FROST key share on secp256k1 (BIP-340 keys).
pub type Bip340Share = givre::KeyShare<Secp256k1>;
/// A FROST key share on edwards25519.
pub type Ed25519Share = givre::KeyShare<EdCurve>;

/// Format tag of a stored BIP-340 share.
pub const BIP340_FORMAT: &str = "torcus-key-share/frost-bip340";
/// Format tag of a stored Ed25519 share.
pub const ED25519_FORMAT: &str = "torcus-key-share/frost-ed25519";

/// A FROST key share of either scheme.
#[derive(Clone)]
pub enum FrostShare {
    /// BIP-340 Schnorr on secp256k1.
    Bip340(Bip340Share),
    /// Ed25519.
    Ed25519(Ed25519Share),
}

impl std::fmt::Debug for FrostShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret share: the scheme and the public key only.
        f.debug_struct("FrostShare")
            .field("scheme", &self.scheme())
            .field("public_key", &hex::encode(self.public_key()))
            .finish_non_exhaustive()
    }
}

impl FrostShare {
    /// The share's scheme.
    pub fn scheme(&self) -> Scheme {
        match self {
            Self::Bip340(_) => Scheme::SchnorrBip340,
            Self::Ed25519(_) => Scheme::EddsaEd25519,
        }
    }

    /// The shared public key as the API carries it: compressed SEC1 (33
    /// bytes, the untweaked key derivation starts from) for BIP-340, 32
    /// bytes for Ed25519.
    pub fn public_key(&self) -> Vec<u8> {
        match self {
            Self::Bip340(share) => share.shared_public_key.to_bytes(true).to_vec(),
            Self::Ed25519(share) => share.shared_public_key.to_bytes(true).to_vec(),
        }
    }

    /// The chain code, when the key derives children (BIP-340 only).
    pub fn chain_code(&self) -> Option<[u8; 32]> {
        match self {
            Self::Bip340(share) => share.chain_code,
            Self::Ed25519(_) => None,
        }
    }

    /// The share as it is stored, tagged with its scheme's format.
    pub fn encode(&self) -> Result<Zeroizing<Vec<u8>>, EngineError> {
        #[derive(Serialize)]
        struct Tagged<'a, S> {
            format: &'static str,
            share: &'a S,
        }
        match self {
            Self::Bip340(share) => super::secret_json(&Tagged { format: BIP340_FORMAT, share }),
            Self::Ed25519(share) => super::secret_json(&Tagged { format: ED25519_FORMAT, share }),
        }
    }

    /// Reads a share [`FrostShare::encode`] wrote (`bytes`, tagged
    /// `format`); `None` when `format` is not a FROST format. The library
    /// validates the share as it reads it (points on the curve and in the
    /// prime-order subgroup, the secret share matching its public share).
    pub fn decode(format: &str, bytes: &[u8]) -> Option<Result<Self, ShareFormatError>> {
        match format {
            BIP340_FORMAT => Some(super::typed_share(bytes).map(Self::Bip340)),
            ED25519_FORMAT => Some(super::typed_share(bytes).map(Self::Ed25519)),
            _ => None,
        }
    }

    /// Parties that sign together: exactly the threshold.
    pub fn min_signers(&self) -> u16 {
        match self {
            Self::Bip340(share) => share.min_signers(),
            Self::Ed25519(share) => share.min_signers(),
        }
    }
}

/// Runs the distributed key generation (`t` of `n`) of a FROST key of
/// `scheme` for party `net.me`: cggmp24's threshold keygen with reliable
/// broadcast, on the scheme's curve, HD-enabled on secp256k1. No aux info.
pub async fn keygen(scheme: Scheme, eid: &[u8], n: u16, t: u16, net: SessionNet) -> Result<FrostShare, EngineError> {
    let (i, parties) = (net.me, net.parties.clone());
    // The execution id names the scheme: the same grant bytes can never
    // run keygen on two curves.
    let eid = [eid, b"/", scheme.as_str().as_bytes()].concat();
    match scheme {
        Scheme::SchnorrBip340 => cggmp24::keygen::<Secp256k1>(ExecutionId::new(&eid), i, n)
            .set_threshold(t)
            .hd_wallet(true)
            .enforce_reliable_broadcast(true)
            .start(&mut OsRng, delivery(net)?)
            .await
            .map(FrostShare::Bip340)
            .map_err(|e| blame(e, &parties, i)),
        // No derivation for Ed25519 keys (see `Scheme::derives`): no chain code.
        Scheme::EddsaEd25519 => cggmp24::keygen::<EdCurve>(ExecutionId::new(&eid), i, n)
            .set_threshold(t)
            .hd_wallet(false)
            .enforce_reliable_broadcast(true)
            .start(&mut OsRng, delivery(net)?)
            .await
            .map(FrostShare::Ed25519)
            .map_err(|e| blame(e, &parties, i)),
        Scheme::EcdsaSecp256k1 => Err(EngineError::InvalidShare("an ECDSA key is not a FROST key".into())),
    }
}

/// A FROST signature and the key it verifies under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrostSignature {
    /// BIP-340 (x(R) ‖ s) or RFC 8032 (R ‖ S).
    pub signature: [u8; 64],
    /// The x-only Taproot output key (BIP-340), or the Ed25519 key.
    pub public_key: [u8; 32],
}

/// Runs FROST signing among `net.parties` (exactly the threshold) over
/// `message`: for BIP-340 a 32-byte digest, signed for the key-path spend
/// of the Taproot output of the key derived along `path` (the BIP-341 tweak
/// with no script tree); for Ed25519 the raw message, under the key itself.
/// givre checks the aggregate signature before it returns it.
pub async fn sign(
    share: &FrostShare,
    message: &[u8],
    path: &[u32],
    net: SessionNet,
) -> Result<FrostSignature, EngineError> {
    let (parties, me) = (net.parties.clone(), net.me);
    let i = position(&parties, me)?;
    let path_error = |e: givre::key_share::HdError<_>| EngineError::DerivationPath(e.to_string());
    let mut signature = [0u8; 64];
    match share {
        FrostShare::Bip340(share) => {
            let mut builder = givre::signing::<Bitcoin>(i, share, &parties, message);
            if !path.is_empty() {
                builder = builder.set_derivation_path(path.iter().copied()).map_err(path_error)?;
            }
            let sig = builder
                .set_taproot_tweak(None)
                .map_err(|e| frost_error(&e, &parties, me))?
                .sign(&mut OsRng, delivery(net)?)
                .await
                .map_err(|e| frost_error(&e, &parties, me))?;
            sig.write_to_slice(&mut signature);
        }
        FrostShare::Ed25519(share) => {
            if !path.is_empty() {
                return Err(EngineError::DerivationPath("an Ed25519 key has no derivation".into()));
            }
            let sig = givre::signing::<Ed25519>(i, share, &parties, message)
                .sign(&mut OsRng, delivery(net)?)
                .await
                .map_err(|e| frost_error(&e, &parties, me))?;
            sig.write_to_slice(&mut signature);
        }
    }
    Ok(FrostSignature { signature, public_key: signing_key(share, path)? })
}

/// The key a signature of `share` along `path` verifies under: the x-only
/// output key of the Taproot output whose internal key is the (derived)
/// key, with no script tree, for BIP-340; the key itself for Ed25519.
pub fn signing_key(share: &FrostShare, path: &[u32]) -> Result<[u8; 32], EngineError> {
    match share {
        FrostShare::Bip340(share) => {
            let internal: Point<Secp256k1> = if path.is_empty() {
                *share.shared_public_key
            } else {
                share
                    .derive_child_public_key::<Slip10, _>(path.iter().copied())
                    .map_err(|e| EngineError::DerivationPath(e.to_string()))?
                    .public_key
            };
            let internal = NonZero::from_point(internal).ok_or(EngineError::Combine)?;
            let normalized = Bitcoin::normalize_point(internal);
            let output =
                givre::signing::taproot::tweak_public_key::<Bitcoin>(normalized, None).ok_or(EngineError::Combine)?;
            let bytes = Bitcoin::normalize_point(output).to_bytes();
            bytes.as_ref().try_into().map_err(|_| EngineError::Combine)
        }
        FrostShare::Ed25519(share) => {
            if !path.is_empty() {
                return Err(EngineError::DerivationPath("an Ed25519 key has no derivation".into()));
            }
            share.shared_public_key.to_bytes(true).as_ref().try_into().map_err(|_| EngineError::Combine)
        }
    }
}

/// A givre signing error. givre names no party for a bad signature share
/// (it has no identifiable abort); in a session of two, this node computed
/// its own share honestly, so an aggregate that does not verify is the
/// other party's doing, and it is named, as for ECDSA.
fn frost_error(error: &givre::signing::full_signing::FullSigningError, parties: &[u16], me: u16) -> EngineError {
    let debug = format!("{error:?}");
    let reason = format!("FROST signing: {error}");
    if let [a, b] = parties
        && debug.contains("InvalidSig")
    {
        return EngineError::Blamed { party: if *a == me { *b } else { *a }, reason };
    }
    EngineError::Frost(reason)
}
