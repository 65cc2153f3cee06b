//! The protocol engine end to end in one process, over the in-memory
//! network: aux info, threshold keygen, and signing with and without a
//! presignature and with a derivation path. Every signature is checked with
//! libsecp256k1, an implementation that shares no code with cggmp24.

use std::sync::OnceLock;

use torcus_contract::HashAlgorithm;
use torcus_node::engine::{self, Message, Payload, Primes, Share, memory};

/// Safe primes are the slow part of aux info (tens of seconds per party);
/// tests take them from a fixture made once with `PregeneratedPrimes::generate`.
/// The product generates its own at start-up.
fn primes() -> &'static Vec<Primes> {
    static PRIMES: OnceLock<Vec<Primes>> = OnceLock::new();
    PRIMES.get_or_init(|| serde_json::from_str(include_str!("fixtures/primes.json")).expect("primes fixture"))
}

fn session(tag: &str) -> [u8; 32] {
    let mut id = [0u8; 32];
    id[..tag.len()].copy_from_slice(tag.as_bytes());
    id
}

/// Runs aux info and keygen for `n` parties with threshold `t`.
async fn cluster(n: u16, t: u16) -> Vec<Share> {
    let parties: Vec<u16> = (0..n).collect();
    let aux = futures::future::try_join_all(
        memory::network(session("aux"), &parties)
            .into_iter()
            .map(|net| engine::aux_info(b"test-aux", n, primes()[usize::from(net.me)].clone(), net)),
    );
    let keygen = futures::future::try_join_all(
        memory::network(session("keygen"), &parties).into_iter().map(|net| engine::keygen(b"test-keygen", n, t, net)),
    );
    let (aux, cores) = tokio::try_join!(aux, keygen).unwrap();
    cores.into_iter().zip(aux).map(|(core, aux)| engine::complete(core, aux).unwrap()).collect()
}

/// Checks `signature` over `digest` under `share`'s key (derived along
/// `path`) with libsecp256k1, and returns the compressed public key.
fn verify_independently(share: &Share, path: &[u32], digest: &[u8; 32], r: &[u8], s: &[u8]) {
    let public = engine::public_key(share, path).unwrap().to_bytes(true);
    let key = secp256k1::PublicKey::from_slice(&public).unwrap();
    let mut compact = [0u8; 64];
    compact[..32].copy_from_slice(r);
    compact[32..].copy_from_slice(s);
    let signature = secp256k1::ecdsa::Signature::from_compact(&compact).unwrap();
    let message = secp256k1::Message::from_digest(*digest);
    secp256k1::Secp256k1::verification_only().verify_ecdsa(message, &signature, &key).unwrap();
}

fn rs(signature: &engine::Signature) -> (Vec<u8>, Vec<u8>) {
    let (r, s) = engine::signature_bytes(signature);
    (r.to_vec(), s.to_vec())
}

async fn sign_full(shares: &[Share], signers: &[u16], message: Message<'_>, path: &[u32]) -> engine::Signature {
    let nets = memory::network(session("sign"), signers);
    let runs = nets.into_iter().map(|net| {
        let share = &shares[usize::from(net.me)];
        engine::sign(b"test-sign", share, message, path, net)
    });
    let signatures = futures::future::try_join_all(runs).await.unwrap();
    assert!(signatures.windows(2).all(|w| w[0] == w[1]), "every signer outputs the same signature");
    signatures[0]
}

/// Presigns for `path` among `signers`, then signs `payload` with the
/// presignatures (partial signatures issued and combined in this task).
async fn sign_presigned(shares: &[Share], signers: &[u16], payload: Payload<'_>, path: &[u32]) -> engine::Signature {
    let nets = memory::network(session("presign"), signers);
    let presigs = futures::future::try_join_all(
        nets.into_iter().map(|net| engine::presign(b"test-presign", &shares[usize::from(net.me)], path, net)),
    )
    .await
    .unwrap();
    let mut partials = std::collections::BTreeMap::new();
    let mut public = None;
    for (presig, i) in presigs.into_iter().zip(signers) {
        let (partial, data) = engine::partial_sign(presig, signers, path, payload).unwrap();
        partials.insert(*i, partial);
        public = Some(data);
    }
    engine::combine(&partials, &public.unwrap(), &shares[usize::from(signers[0])], payload, path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_parties_threshold_two() {
    let shares = cluster(3, 2).await;
    let key = shares[0].shared_public_key;
    assert!(shares.iter().all(|s| s.shared_public_key == key), "all parties agree on the public key");

    let digest = [7u8; 32];
    for signers in [[0, 1], [1, 2], [0, 2]] {
        let sig = sign_full(&shares, &signers, Message::Digest(&digest), &[]).await;
        let (r, s) = rs(&sig);
        verify_independently(&shares[0], &[], &digest, &r, &s);
    }
    for hash in [HashAlgorithm::Sha256, HashAlgorithm::Keccak256, HashAlgorithm::Sha256d] {
        let payload = Payload { hash, bytes: b"hello torcus" };
        let sig = sign_full(&shares, &[0, 1], Message::Payload(payload), &[]).await;
        let (r, s) = rs(&sig);
        verify_independently(&shares[0], &[], &payload.digest(), &r, &s);
        let sig = sign_presigned(&shares, &[0, 2], payload, &[]).await;
        let (r, s) = rs(&sig);
        verify_independently(&shares[0], &[], &payload.digest(), &r, &s);
    }

    // Non-hardened derivation: the signature verifies under the child key only.
    let path = [44, 60, 0, 7];
    let sig = sign_full(&shares, &[1, 2], Message::Digest(&digest), &path).await;
    let (r, s) = rs(&sig);
    verify_independently(&shares[0], &path, &digest, &r, &s);
    assert_ne!(engine::public_key(&shares[0], &path).unwrap(), *key);
    let payload = Payload { hash: HashAlgorithm::Keccak256, bytes: b"derived" };
    let sig = sign_presigned(&shares, &[0, 1], payload, &path).await;
    let (r, s) = rs(&sig);
    verify_independently(&shares[1], &path, &payload.digest(), &r, &s);

    // The child key the operator derives from public material only (what it
    // checks a signature under, without this engine) is the one the shares
    // sign with; a hardened index or a point off the curve is refused.
    let chain_code = engine::chain_code(&shares[0]).expect("keys are generated with a chain code");
    assert!(shares.iter().all(|s| engine::chain_code(s) == Some(chain_code)), "all parties agree on the chain code");
    let status = |public_key: &[u8]| torcus_crds::KeyStatus {
        name: "default".into(),
        public_key: Some(hex::encode(public_key)),
        chain_code: Some(hex::encode(chain_code)),
        ..torcus_crds::KeyStatus::default()
    };
    let derive = torcus_operator::crypto::signing_public_key;
    let child = derive(&status(&key.to_bytes(true)), &path).unwrap();
    assert_eq!(child, hex::encode(engine::public_key(&shares[2], &path).unwrap().to_bytes(true)));
    assert_eq!(derive(&status(&key.to_bytes(true)), &[]).unwrap(), hex::encode(key.to_bytes(true)));
    assert!(derive(&status(&key.to_bytes(true)), &[44, 1 << 31]).is_err());
    assert!(derive(&status(&[5; 33]), &path).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_party_outside_the_signer_set_cannot_join() {
    // Aux info from the fixture: the test above runs the protocol.
    let parties = [0u16, 1, 2];
    let cores = futures::future::try_join_all(
        memory::network(session("keygen"), &parties).into_iter().map(|net| engine::keygen(b"test-keygen", 3, 2, net)),
    )
    .await
    .unwrap();
    let shares: Vec<Share> = cores
        .into_iter()
        .zip(0..)
        .map(|(core, i)| engine::complete(core, torcus_node::testing::fixture_aux(3, i)).unwrap())
        .collect();
    let mut nets = memory::network(session("outsider"), &[0, 1]);
    let mut net = nets.remove(0);
    net.me = 2;
    let err = engine::sign(b"x", &shares[2], Message::Digest(&[1u8; 32]), &[], net).await.unwrap_err();
    assert!(matches!(err, engine::EngineError::NotAParticipant(2)));
}
