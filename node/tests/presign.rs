//! Signing from presignatures as nodes do it, in one process over the
//! in-memory network: each signer of a set that is not a prefix of the
//! parties presigns, then issues its partial signature and exchanges it with
//! `engine::sign_presigned`; every signer ends with the same signature,
//! checked with libsecp256k1. A wrong or missing partial signature fails the
//! session (naming who sent a wrong one) instead of producing a bad
//! signature or hanging, and a presignature made for one path or signer set
//! refuses to sign for another. A hostile signer (garbage, a replayed
//! partial, silence) is named by the honest one.

use std::time::Duration;

use torcus_contract::HashAlgorithm;
use torcus_node::engine::{self, EngineError, Payload, Presig, Share, memory};
use torcus_node::hostile::{Hostile, Misbehaviour};
use torcus_node::testing::fixture_aux;

fn session(tag: &str) -> [u8; 32] {
    let mut id = [0u8; 32];
    id[..tag.len()].copy_from_slice(tag.as_bytes());
    id
}

/// Keygen for `n` parties with threshold `t`, aux info from the fixture
/// (the engine tests run the aux info protocol itself).
async fn cluster(n: u16, t: u16) -> Vec<Share> {
    let parties: Vec<u16> = (0..n).collect();
    let cores = futures::future::try_join_all(
        memory::network(session("keygen"), &parties).into_iter().map(|net| engine::keygen(b"test-keygen", n, t, net)),
    )
    .await
    .unwrap();
    cores.into_iter().zip(0..).map(|(core, i)| engine::complete(core, fixture_aux(n, i)).unwrap()).collect()
}

/// One presignature per signer of `set` for `path`, under the execution id
/// nodes use.
async fn presign(shares: &[Share], set: &[u16], path: &[u32], tag: &str) -> Vec<Presig> {
    let id = session(tag);
    let eid = torcus_contract::presign_execution_id("default", path, set, &id);
    let nets = memory::network(id, set);
    futures::future::try_join_all(
        nets.into_iter().map(|net| engine::presign(&eid, &shares[usize::from(net.me)], path, net)),
    )
    .await
    .unwrap()
}

fn verify_independently(share: &Share, path: &[u32], digest: &[u8; 32], signature: &engine::Signature) {
    let public = engine::public_key(share, path).unwrap().to_bytes(true);
    let key = secp256k1::PublicKey::from_slice(&public).unwrap();
    let mut compact = [0u8; 64];
    let (r, s) = engine::signature_bytes(signature);
    compact[..32].copy_from_slice(&r);
    compact[32..].copy_from_slice(&s);
    let signature = secp256k1::ecdsa::Signature::from_compact(&compact).unwrap();
    let message = secp256k1::Message::from_digest(*digest);
    secp256k1::Secp256k1::verification_only().verify_ecdsa(message, &signature, &key).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_signing_exchanges_partials_and_fails_safely() {
    let shares = cluster(3, 2).await;
    let set = [0u16, 2];

    for (n, path) in [vec![], vec![44, 60, 0, 5]].into_iter().enumerate() {
        let bytes = format!("payment {n}");
        let payload = Payload { hash: HashAlgorithm::Sha256d, bytes: bytes.as_bytes() };
        let presigs = presign(&shares, &set, &path, &format!("presign-{n}")).await;
        let nets = memory::network(session(&format!("sign-{n}")), &set);
        let runs = nets.into_iter().zip(presigs).map(|(net, presig)| {
            let share = &shares[usize::from(net.me)];
            let path = path.clone();
            async move { engine::sign_presigned(presig, share, payload, &path, net).await }
        });
        let signatures = futures::future::try_join_all(runs).await.unwrap();
        assert!(signatures.windows(2).all(|w| w[0] == w[1]), "every signer combines the same signature");
        verify_independently(&shares[1], &path, &payload.digest(), &signatures[0]);
    }

    // A presignature made for the key itself does not sign for a derived
    // path, nor for another signer set: bound before it existed.
    let presigs = presign(&shares, &set, &[], "presign-bound").await;
    let payload = Payload { hash: HashAlgorithm::Sha256, bytes: b"bound" };
    for (presig, asked) in presigs.into_iter().zip([(vec![0u16, 2], vec![7u32]), (vec![0, 1], vec![])]) {
        let err = engine::partial_sign(presig, &asked.0, &asked.1, payload).unwrap_err();
        assert!(matches!(err, EngineError::PresignatureMismatch { .. }), "{err}");
    }

    // One signer issues its partial signature over another payload: nobody
    // outputs a signature, and the others name it.
    let presigs = presign(&shares, &set, &[], "presign-bad").await;
    let nets = memory::network(session("sign-bad"), &set);
    let runs = nets.into_iter().zip(presigs).map(|(net, presig)| {
        let share = &shares[usize::from(net.me)];
        let bytes: &[u8] = if net.me == 2 { b"pay mallory" } else { b"pay alice" };
        let payload = Payload { hash: HashAlgorithm::Sha256, bytes };
        async move { (net.me, engine::sign_presigned(presig, share, payload, &[], net).await) }
    });
    for (me, result) in futures::future::join_all(runs).await {
        let other = if me == 0 { 2 } else { 0 };
        assert!(matches!(result, Err(EngineError::BadPartial(p)) if p == other), "party {me}: {result:?}");
    }

    // A signer that never sends its partial signature: the others stop at
    // the idle timeout.
    let mut presigs = presign(&shares, &set, &[], "presign-silent").await;
    presigs.pop();
    let mut nets = memory::network(session("sign-silent"), &set);
    let _silent = nets.pop();
    let payload = Payload { hash: HashAlgorithm::Sha256, bytes: b"silence" };
    let runs = nets.into_iter().zip(presigs).map(|(mut net, presig)| {
        net.idle_timeout = Some(Duration::from_millis(300));
        let share = &shares[usize::from(net.me)];
        let faults = net.faults.clone();
        async move { (engine::sign_presigned(presig, share, payload, &[], net).await, faults.accused()) }
    });
    for (result, accused) in futures::future::join_all(runs).await {
        assert!(matches!(result, Err(EngineError::Delivery(engine::DeliveryError::Silent(_)))), "{result:?}");
        let accused = accused.expect("the silent signer is named");
        assert_eq!((accused.party, accused.silent), (2, true), "{accused:?}");
    }

    // A hostile signer (the nodes' test hook between its protocol and the
    // network): garbage or the partial signature it sent in its previous
    // session, which the honest signer names, outputting nothing; or its
    // partial twice, which changes nothing.
    for mode in [Misbehaviour::Garbage, Misbehaviour::Duplicate, Misbehaviour::Replay] {
        let hostile = Hostile::new(mode);
        // What a replay replays: a session before, which signs.
        let sessions = if mode == Misbehaviour::Replay { 2 } else { 1 };
        for n in 0..sessions {
            let tag = format!("{mode:?}-{n}");
            let presigs = presign(&shares, &set, &[], &format!("presign-{tag}")).await;
            let nets = memory::network(session(&format!("sign-{tag}")), &set);
            let payload = Payload { hash: HashAlgorithm::Sha256, bytes: b"hostile" };
            let runs = nets.into_iter().zip(presigs).map(|(mut net, presig)| {
                if net.me == 2 {
                    hostile.wrap(&mut net);
                }
                net.idle_timeout = Some(Duration::from_secs(5));
                let share = &shares[usize::from(net.me)];
                let faults = net.faults.clone();
                async move { (net.me, engine::sign_presigned(presig, share, payload, &[], net).await, faults.accused()) }
            });
            let results = futures::future::join_all(runs).await;
            let (_, honest, accused) = results.into_iter().find(|(me, ..)| *me == 0).unwrap();
            match (mode, n) {
                // The exchange is one round: the honest signer is done with
                // the first copy and never reads the second.
                (Misbehaviour::Replay, 0) | (Misbehaviour::Duplicate, _) => {
                    verify_independently(&shares[0], &[], &payload.digest(), &honest.unwrap());
                }
                (Misbehaviour::Replay, _) => {
                    assert!(matches!(honest, Err(EngineError::BadPartial(2))), "{mode:?}: {honest:?}");
                }
                _ => {
                    assert!(honest.is_err(), "{mode:?}: {honest:?}");
                    let accused = accused.expect("the hostile signer is named");
                    assert_eq!((accused.party, accused.silent), (2, false), "{mode:?}: {accused:?}");
                }
            }
        }
    }
}
