//! Checks of what Torcus produced, made with code that shares nothing with
//! Torcus: libsecp256k1 (Bitcoin Core's library, through the `secp256k1`
//! crate) for signatures and public keys, and a BIP-32 public derivation
//! written here from the specification. The operator checks signatures with
//! k256 and the nodes sign with cggmp24, so neither may check its own work
//! in a test.

use secp256k1::ecdsa::{RecoverableSignature, RecoveryId, Signature};
use secp256k1::{Message, PublicKey, Scalar, Secp256k1};
use sha2::{Digest, Sha512};
use torcus_crds::SigningRequestStatus;

/// Why a signature or key is not what it claims.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Mismatch(String);

fn fail(what: impl Into<String>) -> Mismatch {
    Mismatch(what.into())
}

/// Checks the signature of a completed SigningRequest over `digest` under
/// the compressed public key `public_key_hex`: r and s verify (compact and
/// DER agree), s is low, and the recovery id recovers the key.
pub fn verify_status(status: &SigningRequestStatus, digest: &[u8; 32], public_key_hex: &str) -> Result<(), Mismatch> {
    let sig = status.signature.as_ref().ok_or_else(|| fail("no signature in status"))?;
    verify(digest, public_key_hex, &sig.r, &sig.s, &sig.der, sig.recovery_id)
}

/// Checks an ECDSA signature given as r, s and DER (hex) with its recovery
/// id, over `digest`, under `public_key_hex`.
pub fn verify(
    digest: &[u8; 32],
    public_key_hex: &str,
    r: &str,
    s: &str,
    der: &str,
    recovery_id: u8,
) -> Result<(), Mismatch> {
    let secp = Secp256k1::new();
    let key_bytes = hex::decode(public_key_hex).map_err(|e| fail(format!("public key: {e}")))?;
    let key = PublicKey::from_slice(&key_bytes).map_err(|e| fail(format!("public key: {e}")))?;
    let mut compact = [0u8; 64];
    hex::decode_to_slice(r, &mut compact[..32]).map_err(|e| fail(format!("r: {e}")))?;
    hex::decode_to_slice(s, &mut compact[32..]).map_err(|e| fail(format!("s: {e}")))?;
    let signature = Signature::from_compact(&compact).map_err(|e| fail(format!("r‖s: {e}")))?;
    let mut normalized = signature;
    normalized.normalize_s();
    if normalized != signature {
        return Err(fail("s is not low"));
    }
    let message = Message::from_digest(*digest);
    secp.verify_ecdsa(message, &signature, &key).map_err(|e| fail(format!("does not verify: {e}")))?;
    let der = hex::decode(der).map_err(|e| fail(format!("DER: {e}")))?;
    let from_der = Signature::from_der(&der).map_err(|e| fail(format!("DER: {e}")))?;
    if from_der != signature {
        return Err(fail("DER and r‖s differ"));
    }
    let id = RecoveryId::try_from(i32::from(recovery_id)).map_err(|e| fail(format!("recovery id: {e}")))?;
    let recoverable = RecoverableSignature::from_compact(&compact, id).map_err(|e| fail(format!("recovery: {e}")))?;
    let recovered = secp.recover_ecdsa(message, &recoverable).map_err(|e| fail(format!("recovery: {e}")))?;
    if recovered != key {
        return Err(fail("the recovery id does not recover the public key"));
    }
    Ok(())
}

/// BIP-32 public child derivation along non-hardened `path` from the
/// extended public key (`public_key`, compressed SEC1, and `chain_code`):
/// I = HMAC-SHA512(chain, serP(K) ‖ ser32(i)), K' = K + I_L·G, chain' = I_R.
/// SLIP-10 is the same for secp256k1. Returns the compressed child key.
pub fn bip32_child(public_key: &[u8], chain_code: &[u8; 32], path: &[u32]) -> Result<Vec<u8>, Mismatch> {
    let secp = Secp256k1::verification_only();
    let mut key = PublicKey::from_slice(public_key).map_err(|e| fail(format!("public key: {e}")))?;
    let mut chain = *chain_code;
    for &index in path {
        if index >= 1 << 31 {
            return Err(fail(format!("index {index} is hardened: a public key cannot derive it")));
        }
        let mut data = key.serialize().to_vec();
        data.extend(index.to_be_bytes());
        let i = hmac_sha512(&chain, &data);
        let mut tweak = [0u8; 32];
        tweak.copy_from_slice(&i[..32]);
        let tweak = Scalar::from_be_bytes(tweak).map_err(|_| fail("I_L is not below n (BIP-32: skip this index)"))?;
        key = key.add_exp_tweak(&secp, &tweak).map_err(|e| fail(format!("child key: {e}")))?;
        chain.copy_from_slice(&i[32..]);
    }
    Ok(key.serialize().to_vec())
}

/// HMAC-SHA512 (RFC 2104) with a 32-byte key.
fn hmac_sha512(key: &[u8; 32], data: &[u8]) -> [u8; 64] {
    let pad = |byte: u8| {
        let mut block = [byte; 128];
        block.iter_mut().zip(key).for_each(|(b, k)| *b ^= k);
        block
    };
    let inner = Sha512::new().chain_update(pad(0x36)).chain_update(data).finalize();
    Sha512::new().chain_update(pad(0x5c)).chain_update(inner).finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bip32_test_vector_one() {
        // BIP-32 test vector 1: the extended public key of m/0H, and its
        // non-hardened child m/0H/1 (from the specification).
        let parent = hex::decode("035a784662a4a20a65bf6aab9ae98a6c068a81c52e4b032c0fb5400c706cfccc56").unwrap();
        let chain: [u8; 32] = hex::decode("47fdacbd0f1097043b78c63c20c34ef4ed9a111d980047ad16282c7ae6236141")
            .unwrap()
            .try_into()
            .unwrap();
        let child = bip32_child(&parent, &chain, &[1]).unwrap();
        assert_eq!(hex::encode(child), "03501e454bf00751f24b1b489aa925215d66af2234e3891c3b21a52bedb3cd711c");
        assert!(bip32_child(&parent, &chain, &[1 << 31]).is_err());
    }

    #[test]
    fn hmac_sha512_matches_rfc_4231() {
        // RFC 4231 test case 2 has a 4-byte key; with a 32-byte key, case
        // 6-style inputs are not available, so check against the key padded
        // with zeros, which HMAC defines as the same key.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        let mac = hmac_sha512(&key, b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"
        );
    }
}
