//! FROST keys on real `torcus-node` processes over QUIC: a BIP-340 key and
//! an Ed25519 key generated next to an ECDSA key, each signed with by
//! different signer sets, and every signature checked by code that is not
//! the nodes': libsecp256k1 (BIP-340, with the BIP-341 Taproot tweak
//! computed here) and ed25519-dalek's strict verification (RFC 8032). Grants
//! that mix up schemes, or that FROST cannot run, are refused with a reason.

use std::path::Path;

use sha2::{Digest, Sha256};
use torcus_contract::{GrantKind, HashAlgorithm, Scheme, SignMessage};
use torcus_node::testing::{Cluster, digest};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_torcus-node"))
}

/// The x-only output key of the Taproot output with internal key
/// `internal` (compressed SEC1) and no script tree, per BIP-341:
/// Q = lift_x(x(P)) + int(H_TapTweak(x(P)))·G, with libsecp256k1.
fn taproot_output_key(internal: &[u8]) -> secp256k1::XOnlyPublicKey {
    let secp = secp256k1::Secp256k1::verification_only();
    let (x_only, _) = secp256k1::PublicKey::from_slice(internal).unwrap().x_only_public_key();
    let tag = Sha256::digest(b"TapTweak");
    let tweak: [u8; 32] =
        Sha256::new().chain_update(tag).chain_update(tag).chain_update(x_only.serialize()).finalize().into();
    let (output, _) = x_only.add_tweak(&secp, &secp256k1::Scalar::from_be_bytes(tweak).unwrap()).unwrap();
    output
}

fn verify_bip340(message: &[u8; 32], output: &secp256k1::XOnlyPublicKey, signature_hex: &str) -> Result<(), String> {
    let bytes: [u8; 64] = hex::decode(signature_hex).unwrap().try_into().unwrap();
    let secp = secp256k1::Secp256k1::verification_only();
    secp.verify_schnorr(&secp256k1::schnorr::Signature::from_byte_array(bytes), message, output)
        .map_err(|e| e.to_string())
}

fn verify_ed25519(message: &[u8], public_key_hex: &str, signature_hex: &str) -> Result<(), String> {
    let key: [u8; 32] = hex::decode(public_key_hex).unwrap().try_into().unwrap();
    let signature: [u8; 64] = hex::decode(signature_hex).unwrap().try_into().unwrap();
    let key = ed25519_dalek::VerifyingKey::from_bytes(&key).map_err(|e| e.to_string())?;
    key.verify_strict(message, &ed25519_dalek::Signature::from_bytes(&signature)).map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bip340_and_ed25519_keys_sign_next_to_an_ecdsa_key() {
    let cluster = Cluster::new(binary(), 3, 2, "quic").await;
    cluster.wait_ready().await;
    let aux_before = cluster.keys_and_aux(0).await.1;
    let ecdsa = cluster.keygen("eth").await;
    let taproot = cluster.keygen_frost("btc", Scheme::SchnorrBip340).await;
    let solana = cluster.keygen_frost("sol", Scheme::EddsaEd25519).await;
    assert_eq!(hex::decode(&taproot).unwrap().len(), 33, "the untweaked key, compressed: {taproot}");
    assert_eq!(hex::decode(&solana).unwrap().len(), 32, "an Ed25519 key: {solana}");
    assert_ne!(ecdsa, taproot);
    // The nodes list every key with its scheme; FROST keygen left the aux
    // info (which only ECDSA needs) as it was.
    let (keys, aux_after) = cluster.keys_and_aux(1).await;
    let scheme_of = |name: &str| keys.iter().find(|k| k["name"] == name).map(|k| k["scheme"].clone());
    assert_eq!(scheme_of("eth"), Some(serde_json::Value::Null), "ECDSA is the default and not written: {keys:?}");
    assert_eq!(scheme_of("btc"), Some("schnorr-bip340".into()));
    assert_eq!(scheme_of("sol"), Some("eddsa-ed25519".into()));
    assert_eq!(aux_before, aux_after, "a FROST keygen does not touch aux info");

    // BIP-340: a requester's 32-byte digest (a BIP-341 sighash) and a
    // payload the nodes hash, each by another signer set, for the key-path
    // spend of the output whose internal key is the generated key.
    let output = taproot_output_key(&hex::decode(&taproot).unwrap());
    let payload = SignMessage::payload(HashAlgorithm::Sha256, b"a taproot spend".to_vec());
    for (message, signers) in [(digest([5; 32]), vec![0, 1]), (payload, vec![1, 2])] {
        let signed_digest = message.digest().unwrap();
        let out = cluster.sign_frost("btc", Scheme::SchnorrBip340, signers, message, vec![]).await;
        assert_eq!(out.scheme, Scheme::SchnorrBip340);
        assert_eq!(out.public_key, hex::encode(output.serialize()), "the Taproot output key");
        verify_bip340(&signed_digest, &output, &out.signature).unwrap();
        assert!(verify_bip340(&[6; 32], &output, &out.signature).is_err(), "it verifies for its message only");
    }

    // Ed25519: the message itself, as Solana signs a transaction message.
    let message = b"a Solana transaction message, signed as it is".to_vec();
    let out = cluster
        .sign_frost("sol", Scheme::EddsaEd25519, vec![0, 2], SignMessage::Raw { message: message.clone() }, vec![])
        .await;
    assert_eq!(out.public_key, solana);
    verify_ed25519(&message, &solana, &out.signature).unwrap();
    assert!(verify_ed25519(b"another message", &solana, &out.signature).is_err());

    // The ECDSA key still signs.
    cluster.sign("eth", vec![0, 2], digest([7; 32]), vec![]).await;

    // Refusals, each with its reason, and nothing run.
    let cluster = &cluster;
    let refused = |kind: GrantKind, signers: Vec<u16>| {
        let grant = cluster.grant(kind, signers);
        async move { cluster.post(grant.grant.initiator(), "/p2p/sign", &grant).await }
    };
    // A key used under another scheme than its own.
    let (status, body) = refused(
        GrantKind::FrostSign {
            key: "eth".into(),
            scheme: Scheme::SchnorrBip340,
            message: digest([1; 32]),
            derivation_path: vec![],
        },
        vec![0, 1],
    )
    .await;
    assert_eq!((status, body["reason"].as_str()), (409, Some("wrong_scheme")), "{body}");
    let (status, body) =
        refused(GrantKind::Sign { key: "btc".into(), message: digest([1; 32]), derivation_path: vec![] }, vec![0, 1])
            .await;
    assert_eq!((status, body["reason"].as_str()), (409, Some("wrong_scheme")), "{body}");
    // Ed25519 signs a message, never a digest; and has no derivation.
    let (status, body) = refused(
        GrantKind::FrostSign {
            key: "sol".into(),
            scheme: Scheme::EddsaEd25519,
            message: digest([1; 32]),
            derivation_path: vec![],
        },
        vec![0, 1],
    )
    .await;
    assert_eq!((status, body["reason"].as_str()), (403, Some("malformed")), "{body}");
    let (status, body) = refused(
        GrantKind::FrostSign {
            key: "sol".into(),
            scheme: Scheme::EddsaEd25519,
            message: SignMessage::Raw { message: b"m".to_vec() },
            derivation_path: vec![1],
        },
        vec![0, 1],
    )
    .await;
    assert_eq!((status, body["reason"].as_str()), (403, Some("malformed")), "{body}");
    // A keygen of another scheme never replaces a FROST share, even one
    // that names its public key as superseded.
    let grant = cluster.grant(
        GrantKind::Keygen { key: "btc".into(), aux_info: None, supersedes: vec![taproot.clone()] },
        vec![0, 1, 2],
    );
    let (status, body) = cluster.post(grant.grant.initiator(), "/p2p/keygen", &grant).await;
    assert_eq!((status, body["reason"].as_str()), (409, Some("wrong_scheme")), "{body}");
    // FROST signs with exactly the threshold.
    let (status, body) = refused(
        GrantKind::FrostSign {
            key: "btc".into(),
            scheme: Scheme::SchnorrBip340,
            message: digest([1; 32]),
            derivation_path: vec![],
        },
        vec![0, 1, 2],
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap_or_default().contains("exactly 2 signers"), "{body}");
}
