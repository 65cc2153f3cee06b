//! The grant issuer: the operator signs, with the cluster's Ed25519 grant
//! key, each permission for a set of nodes to run one session.

use ed25519_dalek::SigningKey;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};
use torcus_contract::{GRANT_VERSION, Grant, GrantKind, SignedGrant};
use torcus_crds::MpcCluster;
use zeroize::Zeroizing;

use crate::apiserver::scrub;
use crate::resources::Names;
use crate::{Error, Result};

/// How long a keygen grant stays valid: its participants check it when the
/// session is proposed, which is right after it is issued.
pub const KEYGEN_GRANT_TTL_SECS: u64 = 600;
/// How long a signing grant stays valid.
pub const SIGN_GRANT_TTL_SECS: u64 = 120;

/// Key of the grant key Secret holding the 32-byte Ed25519 seed.
pub const GRANT_PRIVATE_KEY: &str = "ed25519.seed";
/// Key of the grant key Secret holding the hex public key.
pub const GRANT_PUBLIC_KEY: &str = "ed25519.pub";

/// Loads the grant signing key of `mpc`, from the Secret the operator made
/// for it and no other: it must carry the cluster's owner reference and the
/// key `status.grantPublicKey` names. The key is zeroized when the returned value is
/// dropped.
pub async fn signing_key(client: &Client, mpc: &MpcCluster) -> Result<SigningKey> {
    let ns = mpc.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let name = Names::new(&mpc.name_any()).grant_key_secret();
    let mut secret = secrets.get(&name).await?;
    if !crate::resources::controlled_by(&secret.metadata, mpc) {
        scrub(&mut secret);
        return Err(Error::ForeignSecret(name));
    }
    let seed: Option<Zeroizing<[u8; 32]>> = secret
        .data
        .as_ref()
        .and_then(|d| d.get(GRANT_PRIVATE_KEY))
        .and_then(|v| <[u8; 32]>::try_from(v.0.as_slice()).ok())
        .map(Zeroizing::new);
    scrub(&mut secret);
    let seed = seed.ok_or_else(|| Error::GrantKey(name.clone()))?;
    let key = SigningKey::from_bytes(&seed);
    // The owner reference is anyone's to write; the key the cluster
    // controller took (and recorded) is the one its status publishes.
    let published = mpc.status.as_ref().and_then(|s| s.grant_public_key.as_deref());
    if published != Some(hex::encode(key.verifying_key().as_bytes()).as_str()) {
        return Err(Error::ForeignSecret(name));
    }
    Ok(key)
}

/// The fields that make a grant, so that a grant can be re-made exactly
/// (Ed25519 signatures are deterministic) from what a status recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantParts {
    /// Grant id.
    pub grant_id: [u8; 16],
    /// Nonce.
    pub nonce: [u8; 16],
    /// Participants, ascending.
    pub participants: Vec<u16>,
    /// Unix seconds issued.
    pub issued_at: u64,
    /// Unix seconds it expires.
    pub expires_at: u64,
}

impl GrantParts {
    /// Fresh parts: a random id and nonce, valid for `ttl_secs` from now.
    /// `participants` is chosen by the caller from the id (see
    /// [`torcus_contract::select_participants`]), so it comes as a function.
    pub fn fresh(ttl_secs: u64, participants: impl FnOnce(&[u8; 16]) -> Option<Vec<u16>>) -> Option<Self> {
        let grant_id = Grant::new_id();
        let participants = participants(&grant_id)?;
        let issued_at = torcus_contract::unix_now();
        Some(Self { grant_id, nonce: Grant::new_nonce(), participants, issued_at, expires_at: issued_at + ttl_secs })
    }
}

/// First bytes of what a grant proof signs: never a grant's canonical bytes
/// (those start with `torcus-grant-v3`), so a proof is never a grant
/// signature, nor the other way round.
const PROOF_DOMAIN: &[u8] = b"torcus-issued-grant-v1:";

/// What the operator signs to vouch for `body` on behalf of the request
/// (or ledger entry) with uid `uid`: `domain`, the uid's length and the uid,
/// then `body`. Each use has its own domain, so that no signature of one
/// kind passes for another, nor for a grant.
pub(crate) fn uid_bound(domain: &[u8], uid: &str, body: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(domain.len() + 8 + uid.len() + body.len());
    bytes.extend_from_slice(domain);
    bytes.extend_from_slice(&(uid.len() as u64).to_be_bytes());
    bytes.extend_from_slice(uid.as_bytes());
    bytes.extend_from_slice(body);
    bytes
}

fn proof_bytes(uid: &str, grant: &SignedGrant) -> Vec<u8> {
    uid_bound(PROOF_DOMAIN, uid, &grant.grant.canonical_bytes())
}

/// The proof, recorded in a SigningRequest's status, that the operator
/// issued `grant` for the request with uid `uid` (hex Ed25519 signature).
pub fn proof(key: &SigningKey, uid: &str, grant: &SignedGrant) -> String {
    use ed25519_dalek::Signer;
    hex::encode(key.sign(&proof_bytes(uid, grant)).to_bytes())
}

/// Whether `proof` (hex) is the issuer's proof for `grant` and request `uid`.
pub fn proves(issuer: &ed25519_dalek::VerifyingKey, uid: &str, grant: &SignedGrant, proof: &str) -> bool {
    let Ok(bytes) = <[u8; 64]>::try_from(hex::decode(proof).unwrap_or_default()) else { return false };
    issuer.verify_strict(&proof_bytes(uid, grant), &ed25519_dalek::Signature::from_bytes(&bytes)).is_ok()
}

/// Builds, checks and signs the grant for `kind` in cluster `ns/cluster`.
pub fn issue(key: &SigningKey, ns: &str, cluster: &str, kind: GrantKind, parts: &GrantParts) -> Result<SignedGrant> {
    let grant = Grant {
        version: GRANT_VERSION,
        grant_id: parts.grant_id,
        namespace: ns.to_owned(),
        cluster: cluster.to_owned(),
        kind,
        participants: parts.participants.clone(),
        nonce: parts.nonce,
        issued_at: parts.issued_at,
        expires_at: parts.expires_at,
    };
    grant.check().map_err(|e| Error::InvalidSpec(format!("grant would be malformed: {e}")))?;
    Ok(torcus_contract::sign(grant, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_parts_make_the_same_grant() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let parts = GrantParts::fresh(60, |_| Some(vec![0, 2])).unwrap();
        let kind = GrantKind::Sign {
            key: "default".into(),
            message: torcus_contract::SignMessage::Digest { digest: [1; 32] },
            derivation_path: vec![],
        };
        let a = issue(&key, "ns", "demo", kind.clone(), &parts).unwrap();
        let b = issue(&key, "ns", "demo", kind, &parts).unwrap();
        assert_eq!(a, b, "a restarted operator re-sends the grant it recorded, not a new one");
        let mut used = torcus_contract::MemoryUsedSessions::new();
        a.verify(&key.verifying_key(), 2, torcus_contract::unix_now(), &mut used).unwrap();
    }

    #[test]
    fn a_proof_binds_the_request_and_the_grant() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let parts = GrantParts::fresh(60, |_| Some(vec![0, 2])).unwrap();
        let kind = |digest| GrantKind::Sign {
            key: "default".into(),
            message: torcus_contract::SignMessage::Digest { digest },
            derivation_path: vec![],
        };
        let grant = issue(&key, "ns", "demo", kind([1; 32]), &parts).unwrap();
        let proof = proof(&key, "uid-1", &grant);
        assert!(proves(&key.verifying_key(), "uid-1", &grant, &proof));
        assert!(!proves(&key.verifying_key(), "uid-2", &grant, &proof), "another request");
        let other = issue(&key, "ns", "demo", kind([2; 32]), &parts).unwrap();
        assert!(!proves(&key.verifying_key(), "uid-1", &other, &proof), "another message");
        let stranger = SigningKey::from_bytes(&[4; 32]);
        assert!(!proves(&stranger.verifying_key(), "uid-1", &grant, &proof), "another key");
        assert!(!proves(&key.verifying_key(), "uid-1", &grant, &hex::encode(grant.signature)), "a grant signature");
        assert!(!proves(&key.verifying_key(), "uid-1", &grant, "zz"));
    }

    #[test]
    fn a_malformed_grant_is_not_signed() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let parts = GrantParts::fresh(60, |_| Some(vec![2, 0])).unwrap();
        let kind = GrantKind::keygen("default");
        assert!(issue(&key, "ns", "demo", kind, &parts).is_err());
    }
}
