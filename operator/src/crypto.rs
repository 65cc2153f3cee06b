//! What the operator computes about keys and signatures itself, without
//! trusting the nodes: the message a SigningRequest asks to sign and its
//! digest, the public forms and addresses of a key (Ethereum, Taproot,
//! Solana), the key a derived signature verifies under, and whether a
//! returned signature verifies, for every scheme.

use base64::Engine as _;
use k256::ecdsa::signature::hazmat::PrehashVerifier;
use k256::ecdsa::{RecoveryId, Signature, VerifyingKey};
use sha3::{Digest, Keccak256};
use torcus_contract::api::{FrostSignatureOut, SignatureOut};
use torcus_contract::{Scheme, SignMessage};
use torcus_crds::{HashAlgorithm, KeyScheme, KeyStatus, PayloadEncoding, SigningRequestSpec};

/// Why a request or a signature is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// The digest is not 32 bytes of hex.
    #[error("digest is not 64 hex digits")]
    Digest,
    /// The payload does not decode.
    #[error("payload is not valid {0}")]
    Payload(&'static str),
    /// A payload larger than a grant may carry.
    #[error("payload is {0} bytes, above the {max} a request may sign", max = torcus_contract::MAX_PAYLOAD_BYTES)]
    PayloadTooLarge(usize),
    /// Neither or both of digest and payload.
    #[error("exactly one of digest or payload must be set")]
    NothingToSign,
    /// The derivation path is malformed or hardened.
    #[error("derivation path {0:?} is not a non-hardened path like m/0/7")]
    Path(String),
    /// A public key does not parse.
    #[error("public key is not a compressed secp256k1 point")]
    PublicKey,
    /// The signature does not verify.
    #[error("signature does not verify: {0}")]
    Signature(String),
    /// A derivation path for a key that cannot derive.
    #[error("key {0} has no chain code, so it cannot derive keys; sign without a derivation path")]
    NoChainCode(String),
    /// Derivation failed.
    #[error("cannot derive along the path: {0}")]
    Derivation(String),
    /// The request asks of the key what its scheme does not do.
    #[error("{0}")]
    Scheme(String),
}

/// The contract's name of a key scheme.
pub fn scheme(key: KeyScheme) -> Scheme {
    match key {
        KeyScheme::EcdsaSecp256k1 => Scheme::EcdsaSecp256k1,
        KeyScheme::SchnorrBip340 => Scheme::SchnorrBip340,
        KeyScheme::EddsaEd25519 => Scheme::EddsaEd25519,
    }
}

/// What a request signs with a key of `scheme`: as [`message`] for the
/// secp256k1 schemes; for Ed25519 the payload itself, unhashed, and
/// neither a digest nor a hash.
pub fn message_for(spec: &SigningRequestSpec, scheme: Scheme) -> Result<SignMessage, CryptoError> {
    if scheme != Scheme::EddsaEd25519 {
        return message(spec);
    }
    if spec.digest.is_some() {
        return Err(CryptoError::Scheme(format!(
            "key {} is an eddsa-ed25519 key, which signs a message, not a digest: set payload to the message",
            spec.key
        )));
    }
    if spec.hash.is_some() {
        return Err(CryptoError::Scheme(format!(
            "key {} is an eddsa-ed25519 key, which signs the payload as it is (Ed25519 hashes it itself): unset hash",
            spec.key
        )));
    }
    if spec.derivation_path.is_some() {
        return Err(CryptoError::Scheme(format!(
            "key {} is an eddsa-ed25519 key, which has no standard non-hardened derivation: unset derivationPath",
            spec.key
        )));
    }
    let message = payload_bytes(spec)?.ok_or(CryptoError::NothingToSign)?;
    if message.len() > torcus_contract::MAX_PAYLOAD_BYTES {
        return Err(CryptoError::PayloadTooLarge(message.len()));
    }
    Ok(SignMessage::Raw { message })
}

/// The payload's bytes, decoded as the request says.
pub fn payload_bytes(spec: &SigningRequestSpec) -> Result<Option<Vec<u8>>, CryptoError> {
    let Some(payload) = &spec.payload else { return Ok(None) };
    match spec.payload_encoding.unwrap_or_default() {
        PayloadEncoding::Hex => hex::decode(payload.strip_prefix("0x").unwrap_or(payload))
            .map(Some)
            .map_err(|_| CryptoError::Payload("hex")),
        PayloadEncoding::Base64 => base64::engine::general_purpose::STANDARD
            .decode(payload)
            .map(Some)
            .map_err(|_| CryptoError::Payload("base64")),
    }
}

/// What a request signs, as a grant carries it: its payload with the hash
/// the nodes apply to it (and the digest computed here), or its raw digest.
pub fn message(spec: &SigningRequestSpec) -> Result<SignMessage, CryptoError> {
    match (&spec.digest, payload_bytes(spec)?) {
        (Some(digest), None) => {
            let mut out = [0; 32];
            hex::decode_to_slice(digest.strip_prefix("0x").unwrap_or(digest), &mut out)
                .map_err(|_| CryptoError::Digest)?;
            Ok(SignMessage::Digest { digest: out })
        }
        (None, Some(payload)) => {
            if payload.len() > torcus_contract::MAX_PAYLOAD_BYTES {
                return Err(CryptoError::PayloadTooLarge(payload.len()));
            }
            let hash = match spec.hash.unwrap_or_default() {
                HashAlgorithm::Sha256 => torcus_contract::HashAlgorithm::Sha256,
                HashAlgorithm::Keccak256 => torcus_contract::HashAlgorithm::Keccak256,
                HashAlgorithm::Sha256d => torcus_contract::HashAlgorithm::Sha256d,
            };
            Ok(SignMessage::payload(hash, payload))
        }
        _ => Err(CryptoError::NothingToSign),
    }
}

/// The 32-byte digest to sign: the request's digest, or the hash of its payload.
pub fn digest(spec: &SigningRequestSpec) -> Result<[u8; 32], CryptoError> {
    message(spec)?.digest().ok_or(CryptoError::NothingToSign)
}

/// `m/0/7` → `[0, 7]`; every index non-hardened.
pub fn derivation_path(path: Option<&str>) -> Result<Vec<u32>, CryptoError> {
    let Some(path) = path else { return Ok(Vec::new()) };
    let bad = || CryptoError::Path(path.to_owned());
    let mut parts = path.split('/');
    if parts.next() != Some("m") {
        return Err(bad());
    }
    parts.map(|p| p.parse::<u32>().ok().filter(|i| *i < torcus_contract::HARDENED_INDEX).ok_or_else(bad)).collect()
}

/// The public key (hex) a signature with `key` along `path` verifies
/// under, derived here from public material:
/// - ECDSA: the key itself, or the child key the operator derives from its
///   public key and chain code (SLIP-10, as the nodes sign), compressed;
/// - BIP-340: the x-only output key of the Taproot output whose internal
///   key is that (derived) key, with no script tree (BIP-341);
/// - Ed25519: the key itself (no derivation).
pub fn signing_public_key(key: &KeyStatus, path: &[u32]) -> Result<String, CryptoError> {
    match key.scheme.unwrap_or_default() {
        KeyScheme::EcdsaSecp256k1 => {
            let public_key = key.public_key.as_deref().ok_or(CryptoError::PublicKey)?;
            derive_secp256k1(key, public_key, path)
        }
        KeyScheme::SchnorrBip340 => {
            let internal = key.compressed_public_key.as_deref().ok_or(CryptoError::PublicKey)?;
            let internal = hex::decode(derive_secp256k1(key, internal, path)?).map_err(|_| CryptoError::PublicKey)?;
            taproot_output_key(&internal).map(hex::encode)
        }
        KeyScheme::EddsaEd25519 => {
            if !path.is_empty() {
                return Err(CryptoError::Scheme(format!("key {} is an eddsa-ed25519 key: no derivation", key.name)));
            }
            key.public_key.clone().ok_or(CryptoError::PublicKey)
        }
    }
}

/// The compressed secp256k1 key `public_key` of `key` (hex), derived along
/// `path` with the key's chain code.
fn derive_secp256k1(key: &KeyStatus, public_key: &str, path: &[u32]) -> Result<String, CryptoError> {
    if path.is_empty() {
        return Ok(public_key.to_owned());
    }
    let chain_code = key.chain_code.as_deref().ok_or_else(|| CryptoError::NoChainCode(key.name.clone()))?;
    let mut code = [0; 32];
    hex::decode_to_slice(chain_code, &mut code)
        .map_err(|_| CryptoError::Derivation("chain code is not 64 hex digits".into()))?;
    let parent = hex::decode(public_key).map_err(|_| CryptoError::PublicKey)?;
    let point =
        generic_ec::Point::<generic_ec::curves::Secp256k1>::from_bytes(&parent).map_err(|_| CryptoError::PublicKey)?;
    let parent = hd_wallet::ExtendedPublicKey { public_key: point, chain_code: code };
    let child = <hd_wallet::Slip10 as hd_wallet::HdWallet<_>>::try_derive_child_public_key_with_path(
        &parent,
        path.iter().map(|i| hd_wallet::NonHardenedIndex::try_from(*i)),
    )
    .map_err(|e| CryptoError::Derivation(e.to_string()))?;
    Ok(hex::encode(child.public_key.to_bytes(true)))
}

/// The x-only output key (BIP-341) of the Taproot output whose internal
/// key is the compressed secp256k1 key `internal`, with no script tree:
/// Q = lift_x(x(P)) + int(hash_TapTweak(x(P)))·G, as the nodes tweak.
pub fn taproot_output_key(internal: &[u8]) -> Result<[u8; 32], CryptoError> {
    use givre::Ciphersuite as _;
    use givre::ciphersuite::Bitcoin;
    use givre::generic_ec::{NonZero, Point, curves::Secp256k1};
    let point = Point::<Secp256k1>::from_bytes(internal).map_err(|_| CryptoError::PublicKey)?;
    let point = NonZero::from_point(point).ok_or(CryptoError::PublicKey)?;
    let output = givre::signing::taproot::tweak_public_key::<Bitcoin>(Bitcoin::normalize_point(point), None)
        .ok_or_else(|| CryptoError::Derivation("the Taproot tweak is undefined for this key".into()))?;
    Bitcoin::normalize_point(output).to_bytes().as_ref().try_into().map_err(|_| CryptoError::PublicKey)
}

/// The mainnet Taproot address (`bc1p…`, segwit v1, bech32m) of an x-only
/// output key.
pub fn taproot_address(output_key: &[u8; 32]) -> Result<String, CryptoError> {
    bech32::segwit::encode_v1(bech32::hrp::BC, output_key).map_err(|e| CryptoError::Derivation(e.to_string()))
}

/// What status shows of a key of `scheme` the nodes generated, from the
/// public key they report (compressed SEC1 on secp256k1, 32 bytes for
/// Ed25519) and chain code: the key in the scheme's own form and its
/// address. Fails on a key that is not a valid point of the scheme.
pub fn key_status(
    name: &str,
    scheme: Scheme,
    public_key: &str,
    chain_code: Option<String>,
) -> Result<KeyStatus, CryptoError> {
    let mut status = KeyStatus { name: name.to_owned(), chain_code, ..KeyStatus::default() };
    // As this operator writes hex (lowercase), whatever the nodes sent.
    let public_key = &hex::encode(hex::decode(public_key).map_err(|_| CryptoError::PublicKey)?);
    match scheme {
        Scheme::EcdsaSecp256k1 => {
            status.ethereum_address = Some(ethereum_address(public_key)?);
            status.public_key = Some(public_key.to_owned());
        }
        Scheme::SchnorrBip340 => {
            let key = parse_public_key(public_key)?;
            let compressed = key.to_encoded_point(true);
            let output = taproot_output_key(compressed.as_bytes())?;
            status.scheme = Some(KeyScheme::SchnorrBip340);
            status.public_key = Some(hex::encode(&compressed.as_bytes()[1..]));
            status.compressed_public_key = Some(public_key.to_owned());
            status.taproot_output_key = Some(hex::encode(output));
            status.bitcoin_address = Some(taproot_address(&output)?);
        }
        Scheme::EddsaEd25519 => {
            let mut bytes = [0u8; 32];
            hex::decode_to_slice(public_key, &mut bytes).map_err(|_| CryptoError::PublicKey)?;
            ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| CryptoError::PublicKey)?;
            status.scheme = Some(KeyScheme::EddsaEd25519);
            status.public_key = Some(public_key.to_owned());
            status.solana_address = Some(bs58::encode(bytes).into_string());
            // Ed25519 keys do not derive: a chain code would only mislead.
            status.chain_code = None;
        }
    }
    Ok(status)
}

/// Checks a FROST signature the nodes returned for `message`, under
/// `public_key_hex` (from [`signing_public_key`]): BIP-340 with k256's
/// Schnorr verifier, Ed25519 with ed25519-dalek's strict verification. The
/// key the nodes name must be that key.
pub fn verify_frost(
    scheme: Scheme,
    public_key_hex: &str,
    message: &SignMessage,
    sig: &FrostSignatureOut,
) -> Result<(), CryptoError> {
    let fail = |m: &str| CryptoError::Signature(m.to_owned());
    if sig.scheme != scheme {
        return Err(fail(&format!("a {} signature for a {scheme} key", sig.scheme)));
    }
    if !sig.public_key.eq_ignore_ascii_case(public_key_hex) {
        return Err(fail("the nodes signed under another key"));
    }
    let mut key = [0u8; 32];
    hex::decode_to_slice(public_key_hex, &mut key).map_err(|_| CryptoError::PublicKey)?;
    let mut bytes = [0u8; 64];
    hex::decode_to_slice(&sig.signature, &mut bytes).map_err(|_| fail("the signature is not 64 bytes of hex"))?;
    match scheme {
        Scheme::SchnorrBip340 => {
            let key = k256::schnorr::VerifyingKey::from_bytes(&key).map_err(|_| CryptoError::PublicKey)?;
            let signature = k256::schnorr::Signature::try_from(&bytes[..]).map_err(|e| fail(&e.to_string()))?;
            key.verify_raw(message.signed_bytes(), &signature).map_err(|e| fail(&e.to_string()))
        }
        Scheme::EddsaEd25519 => {
            let key = ed25519_dalek::VerifyingKey::from_bytes(&key).map_err(|_| CryptoError::PublicKey)?;
            key.verify_strict(message.signed_bytes(), &ed25519_dalek::Signature::from_bytes(&bytes))
                .map_err(|e| fail(&e.to_string()))
        }
        Scheme::EcdsaSecp256k1 => Err(fail("an ECDSA key does not sign with FROST")),
    }
}

/// EIP-55 checksummed Ethereum address of a compressed public key (hex).
pub fn ethereum_address(public_key_hex: &str) -> Result<String, CryptoError> {
    let key = parse_public_key(public_key_hex)?;
    let uncompressed = key.to_encoded_point(false);
    let hash = Keccak256::digest(&uncompressed.as_bytes()[1..]);
    let address = hex::encode(&hash[12..]);
    let checksum = hex::encode(Keccak256::digest(address.as_bytes()));
    let mixed: String = address
        .chars()
        .zip(checksum.chars())
        .map(|(c, h)| if c.is_ascii_alphabetic() && h >= '8' { c.to_ascii_uppercase() } else { c })
        .collect();
    Ok(format!("0x{mixed}"))
}

fn parse_public_key(hex_key: &str) -> Result<VerifyingKey, CryptoError> {
    let bytes = hex::decode(hex_key).map_err(|_| CryptoError::PublicKey)?;
    if bytes.len() != 33 {
        return Err(CryptoError::PublicKey);
    }
    VerifyingKey::from_sec1_bytes(&bytes).map_err(|_| CryptoError::PublicKey)
}

/// Checks a signature the nodes returned: low-s, valid under `public_key`
/// for `digest`, its DER matching r and s, and its recovery id recovering
/// that same key.
pub fn verify(public_key_hex: &str, digest: &[u8; 32], sig: &SignatureOut) -> Result<(), CryptoError> {
    let key = parse_public_key(public_key_hex)?;
    let fail = |m: &str| CryptoError::Signature(m.to_owned());
    let mut rs = [0u8; 64];
    hex::decode_to_slice(&sig.r, &mut rs[..32]).map_err(|_| fail("r is not 32 bytes of hex"))?;
    hex::decode_to_slice(&sig.s, &mut rs[32..]).map_err(|_| fail("s is not 32 bytes of hex"))?;
    let signature = Signature::from_slice(&rs).map_err(|e| fail(&e.to_string()))?;
    if signature.normalize_s().is_some() {
        return Err(fail("s is not normalized to the lower half"));
    }
    key.verify_prehash(digest, &signature).map_err(|e| fail(&e.to_string()))?;
    if hex::encode(signature.to_der().as_bytes()) != sig.der.to_ascii_lowercase() {
        return Err(fail("DER encoding does not match r and s"));
    }
    let recovery = RecoveryId::from_byte(sig.recovery_id).ok_or_else(|| fail("recovery id out of range"))?;
    let recovered =
        VerifyingKey::recover_from_prehash(digest, &signature, recovery).map_err(|e| fail(&e.to_string()))?;
    if recovered != key {
        return Err(fail("recovery id does not recover the public key"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use k256::ecdsa::SigningKey;

    use super::*;

    #[test]
    fn derived_keys_follow_bip32_public_derivation() {
        // BIP-32 test vector 1: the extended public key of m/0H, and its
        // child m/0H/1.
        let key = KeyStatus {
            name: "default".into(),
            public_key: Some("035a784662a4a20a65bf6aab9ae98a6c068a81c52e4b032c0fb5400c706cfccc56".into()),
            chain_code: Some("47fdacbd0f1097043b78c63c20c34ef4ed9a111d980047ad16282c7ae6236141".into()),
            ..KeyStatus::default()
        };
        assert_eq!(
            signing_public_key(&key, &[1]).unwrap(),
            "03501e454bf00751f24b1b489aa925215d66af2234e3891c3b21a52bedb3cd711c"
        );
        assert_eq!(signing_public_key(&key, &[]).unwrap(), key.public_key.clone().unwrap());
        assert!(matches!(signing_public_key(&key, &[1 << 31]), Err(CryptoError::Derivation(_))));
        let no_chain = KeyStatus { chain_code: None, ..key.clone() };
        assert_eq!(signing_public_key(&no_chain, &[1]), Err(CryptoError::NoChainCode("default".into())));
        assert_eq!(signing_public_key(&no_chain, &[]).unwrap(), key.public_key.unwrap());
    }

    #[test]
    fn taproot_keys_and_addresses_match_bip86() {
        // BIP-86 test vector m/86'/0'/0'/0/0: internal key, output key, address.
        let internal = "cc8a4bc64d897bddc5fbc2f670f7a8ba0b386779106cf1223c6fc5d7cd6fc115";
        let output = "a60869f0dbcf1dc659c9cecbaf8050135ea9e8cdc487053f1dc6880949dc684c";
        for prefix in ["02", "03"] {
            let compressed = format!("{prefix}{internal}");
            let key = taproot_output_key(&hex::decode(&compressed).unwrap()).unwrap();
            assert_eq!(hex::encode(key), output);
            let status = key_status("btc", Scheme::SchnorrBip340, &compressed, Some("cc".repeat(32))).unwrap();
            assert_eq!(status.public_key.as_deref(), Some(internal), "x-only");
            assert_eq!(status.compressed_public_key.as_deref(), Some(compressed.as_str()));
            assert_eq!(status.taproot_output_key.as_deref(), Some(output));
            assert_eq!(
                status.bitcoin_address.as_deref(),
                Some("bc1p5cyxnuxmeuwuvkwfem96lqzszd02n6xdcjrs20cac6yqjjwudpxqkedrcr")
            );
            assert_eq!(signing_public_key(&status, &[]).unwrap(), output, "a key-path spend signs under Q");
            assert_ne!(signing_public_key(&status, &[1]).unwrap(), output, "a derived key is another");
        }
    }

    #[test]
    fn frost_signatures_are_checked_against_published_vectors() {
        // BIP-340 test vector 0, with k256's verifier.
        let bip340 = FrostSignatureOut {
            scheme: Scheme::SchnorrBip340,
            signature: "e907831f80848d1069a5371b402410364bdf1c5f8307b0084c55f1ce2dca821525f66a4a85ea8b71e482a74f382d2ce5ebeee8fdb2172f477df4900d310536c0".into(),
            public_key: "f9308a019258c31049344f85f89d5229b531c845836f99b08601f113bce036f9".into(),
        };
        let zero = SignMessage::Digest { digest: [0; 32] };
        verify_frost(Scheme::SchnorrBip340, &bip340.public_key, &zero, &bip340).unwrap();
        let one = SignMessage::Digest { digest: [1; 32] };
        assert!(verify_frost(Scheme::SchnorrBip340, &bip340.public_key, &one, &bip340).is_err());
        assert!(verify_frost(Scheme::EddsaEd25519, &bip340.public_key, &zero, &bip340).is_err(), "another scheme");
        // RFC 8032 TEST 2, with ed25519-dalek's strict verification.
        let ed = FrostSignatureOut {
            scheme: Scheme::EddsaEd25519,
            signature: "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00".into(),
            public_key: "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c".into(),
        };
        let message = SignMessage::Raw { message: vec![0x72] };
        verify_frost(Scheme::EddsaEd25519, &ed.public_key, &message, &ed).unwrap();
        let other = SignMessage::Raw { message: vec![0x73] };
        assert!(verify_frost(Scheme::EddsaEd25519, &ed.public_key, &other, &ed).is_err());
        let mut elsewhere = ed.clone();
        elsewhere.public_key = "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025".into();
        assert!(verify_frost(Scheme::EddsaEd25519, &ed.public_key, &message, &elsewhere).is_err(), "the nodes' key");
        let status = key_status("sol", Scheme::EddsaEd25519, &ed.public_key, Some("cc".repeat(32))).unwrap();
        assert_eq!(status.chain_code, None, "Ed25519 keys do not derive");
        assert_eq!(
            status.solana_address.as_deref().map(|a| bs58::decode(a).into_vec().unwrap()),
            Some(hex::decode(&ed.public_key).unwrap())
        );
        assert!(signing_public_key(&status, &[0]).is_err());
    }

    #[test]
    fn ed25519_keys_sign_a_message_and_nothing_else() {
        let mut s = spec();
        s.payload = Some("68656c6c6f".into());
        assert_eq!(message_for(&s, Scheme::EddsaEd25519).unwrap(), SignMessage::Raw { message: b"hello".to_vec() });
        assert!(matches!(message_for(&s, Scheme::SchnorrBip340).unwrap(), SignMessage::Payload { .. }));
        let mut hashed = s.clone();
        hashed.hash = Some(HashAlgorithm::Sha256);
        let mut derived = s.clone();
        derived.derivation_path = Some("m/0".into());
        let mut digest = spec();
        digest.digest = Some("ab".repeat(32));
        for (bad, says) in [(hashed, "unset hash"), (derived, "derivationPath"), (digest, "not a digest")] {
            match message_for(&bad, Scheme::EddsaEd25519) {
                Err(CryptoError::Scheme(m)) => assert!(m.contains(says), "{m}"),
                other => panic!("{other:?}"),
            }
        }
    }

    fn spec() -> SigningRequestSpec {
        SigningRequestSpec {
            cluster: "demo".into(),
            cluster_namespace: None,
            key: "default".into(),
            digest: None,
            payload: None,
            payload_encoding: None,
            hash: None,
            derivation_path: None,
            labels: Default::default(),
        }
    }

    #[test]
    fn digest_comes_from_the_digest_or_the_hashed_payload() {
        let mut s = spec();
        s.digest = Some(format!("0x{}", "ab".repeat(32)));
        assert_eq!(digest(&s).unwrap(), [0xab; 32]);

        let mut s = spec();
        s.payload = Some(hex::encode(b"hello"));
        assert_eq!(
            hex::encode(digest(&s).unwrap()),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        s.hash = Some(HashAlgorithm::Keccak256);
        assert_eq!(
            hex::encode(digest(&s).unwrap()),
            "1c8aff950685c2ed4bc3174f3472287b56d9517b9c948127319a09a7a36deac8"
        );
        s.payload = Some("aGVsbG8=".into());
        s.payload_encoding = Some(PayloadEncoding::Base64);
        assert_eq!(
            hex::encode(digest(&s).unwrap()),
            "1c8aff950685c2ed4bc3174f3472287b56d9517b9c948127319a09a7a36deac8"
        );
        s.hash = Some(HashAlgorithm::Sha256d);
        assert_eq!(
            hex::encode(digest(&s).unwrap()),
            "9595c9df90075148eb06860365df33584b75bff782a510c6cd4883a419833d50"
        );
        assert!(matches!(message(&s).unwrap(), SignMessage::Payload { payload, .. } if payload == b"hello"));

        let mut s = spec();
        s.digest = Some("ab".repeat(32));
        assert_eq!(message(&s).unwrap(), SignMessage::Digest { digest: [0xab; 32] }, "a digest stays a digest");
        let mut s = spec();
        s.payload = Some("00".repeat(torcus_contract::MAX_PAYLOAD_BYTES + 1));
        assert_eq!(digest(&s), Err(CryptoError::PayloadTooLarge(torcus_contract::MAX_PAYLOAD_BYTES + 1)));
        let mut s = spec();
        s.digest = Some("zz".into());
        assert_eq!(digest(&s), Err(CryptoError::Digest));
        assert_eq!(digest(&spec()), Err(CryptoError::NothingToSign));
    }

    #[test]
    fn paths_are_non_hardened() {
        assert_eq!(derivation_path(Some("m/0/7")).unwrap(), [0, 7]);
        assert_eq!(derivation_path(Some("m")).unwrap(), Vec::<u32>::new());
        assert!(derivation_path(Some("m/2147483648")).is_err());
        assert!(derivation_path(Some("0/1")).is_err());
        assert!(derivation_path(Some("m/x")).is_err());
    }

    #[test]
    fn ethereum_address_matches_a_known_vector() {
        // Private key 1: the generator point; its address is well known.
        let key = SigningKey::from_slice(&[[0u8; 31].as_slice(), &[1]].concat()).unwrap();
        let public = hex::encode(key.verifying_key().to_encoded_point(true).as_bytes());
        assert_eq!(ethereum_address(&public).unwrap(), "0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf");
        assert_eq!(ethereum_address("02ab"), Err(CryptoError::PublicKey));
    }

    #[test]
    fn only_a_correct_signature_verifies() {
        let key = SigningKey::from_slice(&[7u8; 32]).unwrap();
        let public = hex::encode(key.verifying_key().to_encoded_point(true).as_bytes());
        let digest = [9u8; 32];
        let (sig, recid) = key.sign_prehash_recoverable(&digest).unwrap();
        let (sig, recid) = match sig.normalize_s() {
            Some(n) => (n, RecoveryId::new(!recid.is_y_odd(), recid.is_x_reduced())),
            None => (sig, recid),
        };
        let bytes = sig.to_bytes();
        let out = SignatureOut {
            r: hex::encode(&bytes[..32]),
            s: hex::encode(&bytes[32..]),
            recovery_id: recid.to_byte(),
            der: hex::encode(sig.to_der().as_bytes()),
            public_key: public.clone(),
            presigned: false,
        };
        verify(&public, &digest, &out).unwrap();
        assert!(verify(&public, &[8u8; 32], &out).is_err(), "another digest");
        let other = SigningKey::from_slice(&[8u8; 32]).unwrap();
        let other = hex::encode(other.verifying_key().to_encoded_point(true).as_bytes());
        assert!(verify(&other, &digest, &out).is_err(), "another key");
        let mut flipped = out.clone();
        flipped.recovery_id ^= 1;
        assert!(verify(&public, &digest, &flipped).is_err(), "wrong recovery id");
        let mut high = out.clone();
        let s = k256::NonZeroScalar::try_from(&bytes[32..]).unwrap();
        high.s = hex::encode((-*s).to_bytes());
        assert!(verify(&public, &digest, &high).is_err(), "high s");
    }
}
