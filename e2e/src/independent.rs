//! Checks of what Torcus produced, made with code that shares nothing with
//! Torcus: libsecp256k1 (Bitcoin Core's library, through the `secp256k1`
//! crate) for ECDSA and BIP-340 signatures and public keys, the BIP-341
//! Taproot tweak and a BIP-32 public derivation written here from the
//! specifications, and OpenSSL (`openssl pkeyutl`) for Ed25519. The operator
//! checks signatures with k256 and ed25519-dalek and the nodes sign with
//! cggmp24 and givre, so neither may check its own work in a test.

use secp256k1::ecdsa::{RecoverableSignature, RecoveryId, Signature};
use secp256k1::{Message, PublicKey, Scalar, Secp256k1, XOnlyPublicKey};
use sha2::{Digest, Sha256, Sha512};
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
    let der = sig.der.as_deref().ok_or_else(|| fail("no DER in an ECDSA signature"))?;
    let recovery_id = sig.recovery_id.ok_or_else(|| fail("no recovery id in an ECDSA signature"))?;
    verify(digest, public_key_hex, &sig.r, &sig.s, der, recovery_id)
}

/// The x-only output key of the Taproot output whose internal key is the
/// compressed secp256k1 key `internal`, with no script tree (BIP-341):
/// P = lift_x(x(internal)), t = int(hash_TapTweak(x(P))), Q = P + t·G.
pub fn taproot_output_key(internal: &[u8]) -> Result<XOnlyPublicKey, Mismatch> {
    let secp = Secp256k1::verification_only();
    let key = PublicKey::from_slice(internal).map_err(|e| fail(format!("internal key: {e}")))?;
    let (x_only, _) = key.x_only_public_key();
    let tag = Sha256::digest(b"TapTweak");
    let tweak: [u8; 32] =
        Sha256::new().chain_update(tag).chain_update(tag).chain_update(x_only.serialize()).finalize().into();
    let tweak = Scalar::from_be_bytes(tweak).map_err(|_| fail("the tweak is not below n"))?;
    let (output, _) = x_only.add_tweak(&secp, &tweak).map_err(|e| fail(format!("tweak: {e}")))?;
    Ok(output)
}

/// The segwit v1 witness program's mainnet address, bech32m (BIP-350),
/// written here from the specification: `bc1p…`.
pub fn taproot_address(output: &XOnlyPublicKey) -> String {
    const CHARSET: &[u8; 32] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";
    fn polymod(values: &[u8]) -> u32 {
        const GEN: [u32; 5] = [0x3b6a_57b2, 0x2650_8e6d, 0x1ea1_19fa, 0x3d42_33dd, 0x2a14_62b3];
        let mut chk: u32 = 1;
        for v in values {
            let top = chk >> 25;
            chk = ((chk & 0x1ff_ffff) << 5) ^ u32::from(*v);
            for (i, g) in GEN.iter().enumerate() {
                if (top >> i) & 1 == 1 {
                    chk ^= g;
                }
            }
        }
        chk
    }
    // Witness version 1, then the 32-byte program regrouped into 5-bit words.
    let mut data = vec![1u8];
    let (mut acc, mut bits) = (0u32, 0u32);
    for byte in output.serialize() {
        acc = (acc << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            data.push(((acc >> bits) & 31) as u8);
        }
    }
    if bits > 0 {
        data.push(((acc << (5 - bits)) & 31) as u8);
    }
    let mut values: Vec<u8> = vec![3, 3, 0, 2, 3]; // "bc" expanded
    values.extend(&data);
    values.extend([0; 6]);
    let checksum = polymod(&values) ^ 0x2bc8_30a3; // the bech32m constant
    let mut out = String::from("bc1");
    for v in data {
        out.push(char::from(CHARSET[usize::from(v)]));
    }
    for i in 0..6 {
        out.push(char::from(CHARSET[((checksum >> (5 * (5 - i))) & 31) as usize]));
    }
    out
}

/// Base58 with Bitcoin's alphabet, as Solana writes keys: the bytes as one
/// big-endian number in base 58, a `1` for each leading zero byte.
pub fn base58(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    let mut digits: Vec<u8> = Vec::new(); // base 58, least significant first
    for byte in bytes {
        let mut carry = u32::from(*byte);
        for digit in &mut digits {
            carry += u32::from(*digit) << 8;
            *digit = (carry % 58) as u8;
            carry /= 58;
        }
        while carry > 0 {
            digits.push((carry % 58) as u8);
            carry /= 58;
        }
    }
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    std::iter::repeat_n('1', zeros).chain(digits.iter().rev().map(|d| char::from(ALPHABET[usize::from(*d)]))).collect()
}

/// Checks a BIP-340 signature (64 bytes, hex) over the 32-byte `message`
/// under the x-only key `key`, with libsecp256k1.
pub fn verify_bip340(message: &[u8; 32], key: &XOnlyPublicKey, signature_hex: &str) -> Result<(), Mismatch> {
    let mut bytes = [0u8; 64];
    hex::decode_to_slice(signature_hex, &mut bytes).map_err(|e| fail(format!("signature: {e}")))?;
    Secp256k1::verification_only()
        .verify_schnorr(&secp256k1::schnorr::Signature::from_byte_array(bytes), message, key)
        .map_err(|e| fail(format!("BIP-340 signature does not verify: {e}")))
}

/// Checks an Ed25519 signature (64 bytes, hex) over `message` under the
/// 32-byte key `public_key_hex` with OpenSSL's `pkeyutl -verify -rawin`
/// (RFC 8032 Ed25519, as OpenSSL implements it).
pub fn verify_ed25519_openssl(message: &[u8], public_key_hex: &str, signature_hex: &str) -> Result<(), Mismatch> {
    let key = hex::decode(public_key_hex).map_err(|e| fail(format!("public key: {e}")))?;
    let signature = hex::decode(signature_hex).map_err(|e| fail(format!("signature: {e}")))?;
    if key.len() != 32 || signature.len() != 64 {
        return Err(fail("an Ed25519 key is 32 bytes and a signature 64"));
    }
    let dir = tempfile::tempdir().map_err(|e| fail(e.to_string()))?;
    // SubjectPublicKeyInfo of an Ed25519 key (RFC 8410): a fixed prefix, then the key.
    let mut spki = hex::decode("302a300506032b6570032100").map_err(|e| fail(e.to_string()))?;
    spki.extend(&key);
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).map(|()| path).map_err(|e| fail(e.to_string()))
    };
    let (key_path, msg_path, sig_path) = (write("key.der", &spki)?, write("msg", message)?, write("sig", &signature)?);
    let out = std::process::Command::new("openssl")
        .args(["pkeyutl", "-verify", "-pubin", "-keyform", "DER", "-rawin", "-inkey"])
        .arg(&key_path)
        .arg("-in")
        .arg(&msg_path)
        .arg("-sigfile")
        .arg(&sig_path)
        .output()
        .map_err(|e| fail(format!("running openssl: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() && stdout.contains("Signature Verified Successfully") {
        Ok(())
    } else {
        Err(fail(format!("OpenSSL refuses the Ed25519 signature: {stdout}{}", String::from_utf8_lossy(&out.stderr))))
    }
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
    fn bip340_test_vector_zero_verifies_and_nothing_else_does() {
        // BIP-340 test vector 0 (bip340/test-vectors.csv).
        let key = XOnlyPublicKey::from_byte_array(
            hex::decode("F9308A019258C31049344F85F89D5229B531C845836F99B08601F113BCE036F9")
                .unwrap()
                .try_into()
                .unwrap(),
        )
        .unwrap();
        let signature = "E907831F80848D1069A5371B402410364BDF1C5F8307B0084C55F1CE2DCA821525F66A4A85EA8B71E482A74F382D2CE5EBEEE8FDB2172F477DF4900D310536C0";
        verify_bip340(&[0; 32], &key, signature).unwrap();
        assert!(verify_bip340(&[1; 32], &key, signature).is_err());
    }

    #[test]
    fn bip86_vectors_give_the_published_output_keys_and_addresses() {
        // BIP-86 test vectors: m/86'/0'/0'/0/0 and m/86'/0'/0'/0/1 (x-only internal keys).
        for (internal, output, address) in [
            (
                "cc8a4bc64d897bddc5fbc2f670f7a8ba0b386779106cf1223c6fc5d7cd6fc115",
                "a60869f0dbcf1dc659c9cecbaf8050135ea9e8cdc487053f1dc6880949dc684c",
                "bc1p5cyxnuxmeuwuvkwfem96lqzszd02n6xdcjrs20cac6yqjjwudpxqkedrcr",
            ),
            (
                "83dfe85a3151d2517290da461fe2815591ef69f2b18a2ce63f01697a8b313145",
                "a82f29944d65b86ae6b5e5cc75e294ead6c59391a1edc5e016e3498c67fc7bbb",
                "bc1p4qhjn9zdvkux4e44uhx8tc55attvtyu358kutcqkudyccelu0was9fqzwh",
            ),
        ] {
            // Either parity of the internal key gives the same output key.
            for prefix in ["02", "03"] {
                let key = taproot_output_key(&hex::decode(format!("{prefix}{internal}")).unwrap()).unwrap();
                assert_eq!(hex::encode(key.serialize()), output);
                assert_eq!(taproot_address(&key), address);
            }
        }
    }

    #[test]
    fn rfc8032_vectors_verify_with_openssl_and_a_changed_message_does_not() {
        // RFC 8032 §7.1, TEST 2 and TEST 3 (OpenSSL 3.0's pkeyutl cannot
        // read the empty message of TEST 1).
        let vectors = [
            (
                "af82",
                "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
                "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
            ),
            (
                "72",
                "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
                "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
            ),
        ];
        for (message, key, signature) in vectors {
            let message = hex::decode(message).unwrap();
            verify_ed25519_openssl(&message, key, signature).unwrap();
            let mut other = message.clone();
            other.push(0);
            assert!(verify_ed25519_openssl(&other, key, signature).is_err());
        }
    }

    #[test]
    fn base58_matches_known_encodings() {
        // The Solana system program's id (32 zero bytes) and Bitcoin's
        // base58 examples.
        assert_eq!(base58(&[0; 32]), "11111111111111111111111111111111");
        assert_eq!(base58(b"hello world"), "StV1DL6CwTryKyV");
        assert_eq!(base58(&[0, 0, 0x28, 0x7f, 0xb4, 0xcd]), "11233QC4");
    }

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
