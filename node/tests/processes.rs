//! Real `torcus-node` processes on 127.0.0.1: keygen and signing through
//! the HTTP API with operator-style grants, every signature checked with
//! libsecp256k1; forged, expired, replayed and non-member grants refused;
//! a restarted node signs with the share it stored; presignature pools fill
//! in the background and signing uses each presignature once.

use std::path::Path;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use torcus_contract::api::PresignatureChoice;
use torcus_contract::{GrantKind, HashAlgorithm, SignMessage};
use torcus_node::testing::{Cluster, digest, payload};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_torcus-node"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_three_nodes_threshold_two_keygen_sign_refuse_restart() {
    let mut cluster = Cluster::new(binary(), 3, 2, "quic").await;
    cluster.wait_ready().await;
    let public_key = cluster.keygen("default").await;
    // Payloads the nodes hash themselves, with each hash, and a raw digest:
    // all through the full protocol here (no pools).
    let messages = [
        SignMessage::payload(HashAlgorithm::Sha256, b"hello torcus".to_vec()),
        SignMessage::payload(HashAlgorithm::Keccak256, b"hello torcus".to_vec()),
        SignMessage::payload(HashAlgorithm::Sha256d, b"hello torcus".to_vec()),
        digest([1; 32]),
    ];
    for (message, signers) in messages.into_iter().zip([vec![0, 1], vec![1, 2], vec![0, 2], vec![0, 1]]) {
        let body = cluster.sign("default", signers, message, vec![]).await;
        assert_eq!(body["publicKey"], public_key.as_str());
        assert_eq!(body["presigned"], false, "{body}");
    }
    let derived = cluster.sign("default", vec![0, 2], digest([9; 32]), vec![44, 60, 0, 0, 7]).await;
    assert_ne!(derived["publicKey"], public_key.as_str(), "a derived key signs");

    // Refusals, each with its reason.
    let sign_kind = || GrantKind::Sign { key: "default".into(), message: digest([3; 32]), derivation_path: vec![] };
    let good = cluster.grant(sign_kind(), vec![0, 1]);
    let initiator = good.grant.initiator();
    let other = if initiator == 0 { 1 } else { 0 };
    let (status, body) = cluster.post(other, "/p2p/sign", &good).await;
    assert_eq!((status, body["initiator"].as_u64()), (409, Some(u64::from(initiator))));

    let mut forged = good.clone();
    forged.signature = torcus_contract::sign(forged.grant.clone(), &SigningKey::from_bytes(&[7; 32])).signature;
    let (status, body) = cluster.post(initiator, "/p2p/sign", &forged).await;
    assert_eq!((status, body["reason"].as_str()), (403, Some("bad_signature")));

    let mut expired = cluster.grant(sign_kind(), vec![0, 1]).grant;
    expired.issued_at -= 600;
    expired.expires_at = expired.issued_at + 60;
    let expired = torcus_contract::sign(expired, &cluster.grant_key);
    let (status, body) = cluster.post(expired.grant.initiator(), "/p2p/sign", &expired).await;
    assert_eq!((status, body["reason"].as_str()), (403, Some("expired")));

    let (status, _) = cluster.post(initiator, "/p2p/sign", &good).await;
    assert_eq!(status, 200);
    let (status, body) = cluster.post(initiator, "/p2p/sign", &good).await;
    assert_eq!((status, body["reason"].as_str()), (403, Some("replayed")), "one grant, one signature");

    let outsider = cluster.grant(sign_kind(), vec![1, 2]);
    let (status, body) = cluster.post(0, "/p2p/sign", &outsider).await;
    assert_eq!((status, body["reason"].as_str()), (403, Some("not_a_member")));

    let metrics = cluster.http.get(cluster.url(initiator, "/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"torcus_node_grants_rejected_total{reason="replayed"} 1"#), "{metrics}");

    // A restarted node signs with the share it stored.
    cluster.kill(1);
    cluster.start(1);
    cluster.wait_ready().await;
    cluster.sign("default", vec![1, 2], digest([11; 32]), vec![]).await;

    // A participant killed in the middle of a session ends it cleanly on
    // the initiator (an error answer, not a hang) within the idle timeout.
    let grant = loop {
        let kind = GrantKind::Sign { key: "default".into(), message: digest([13; 32]), derivation_path: vec![] };
        let grant = cluster.grant(kind, vec![0, 1]);
        if grant.grant.initiator() == 1 {
            break grant;
        }
    };
    let victim = cluster.pid(0);
    let started = Instant::now();
    let ((status, body), ()) = tokio::join!(cluster.post(1, "/p2p/sign", &grant), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        std::process::Command::new("kill").arg("-9").arg(victim.to_string()).status().unwrap();
    });
    assert!(status == 503 || status == 500, "{status} {body}");
    assert!(started.elapsed() < Duration::from_secs(40), "took {:?}", started.elapsed());
    cluster.kill(0);

    // A participant that is gone turns into an abort naming it, not a hang.
    cluster.kill(2);
    let grant = loop {
        let kind = GrantKind::Sign { key: "default".into(), message: digest([12; 32]), derivation_path: vec![] };
        let grant = cluster.grant(kind, vec![1, 2]);
        if grant.grant.initiator() == 1 {
            break grant;
        }
    };
    let started = Instant::now();
    let (status, body) = cluster.post(grant.grant.initiator(), "/p2p/sign", &grant).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains('2') || body["error"].as_str().unwrap().contains("no start"),
        "{body}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// Keygen, signing with two signer sets and an HD path, and a restarted
/// node signing again, over `transport`.
async fn keygen_and_sign_over(transport: &str) {
    let mut cluster = Cluster::new(binary(), 3, 2, transport).await;
    cluster.wait_ready().await;
    let public_key = cluster.keygen("default").await;
    for (n, signers) in [vec![0, 1], vec![1, 2]].into_iter().enumerate() {
        let body = cluster.sign("default", signers, payload(&[n as u8 + 21; 40]), vec![]).await;
        assert_eq!(body["publicKey"], public_key.as_str());
    }
    cluster.sign("default", vec![0, 2], digest([23; 32]), vec![1, 2, 3]).await;
    cluster.kill(0);
    cluster.start(0);
    cluster.wait_ready().await;
    cluster.sign("default", vec![0, 1], digest([24; 32]), vec![]).await;
    let metrics = cluster.http.get(cluster.url(0, "/metrics")).send().await.unwrap().text().await.unwrap();
    let label = match transport {
        "http" => "relay",
        "hybrid" => "quic",
        other => other,
    };
    assert!(metrics.contains(&format!(r#"torcus_p2p_messages_sent_total{{transport="{label}"}}"#)), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_three_nodes() {
    keygen_and_sign_over("tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_relay_three_nodes() {
    keygen_and_sign_over("http").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_three_nodes() {
    keygen_and_sign_over("hybrid").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_five_nodes_threshold_three() {
    let cluster = Cluster::new(binary(), 5, 3, "quic").await;
    cluster.wait_ready().await;
    let public_key = cluster.keygen("default").await;
    for (n, signers) in [vec![0, 1, 2], vec![2, 3, 4], vec![0, 2, 4]].into_iter().enumerate() {
        let body = cluster.sign("default", signers, digest([n as u8 + 31; 32]), vec![]).await;
        assert_eq!(body["publicKey"], public_key.as_str());
    }
    cluster.sign("default", vec![1, 3, 4], digest([34; 32]), vec![7, 0]).await;
}

/// Presignature pools over QUIC, 3 nodes, threshold 2, 2 per signer set:
/// the pools fill in the background on every member of every set; a signature
/// from a warm set uses one presignature (`presigned: true`, checked with
/// libsecp256k1, also with a derivation path), which leaves the pool of each
/// signer exactly once and is refilled; a drained pool falls back to the full
/// protocol; no two signatures share a nonce (r), which is what reusing a
/// presignature would look like; the initiator offers exactly the
/// presignature the issuer names, or none; and a dead member does not stop the
/// presigner from refilling the sets it is not in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_presignature_pools_fill_sign_and_refill() {
    // Pools for the key itself and for one derived path.
    const POOLED: [u32; 4] = [44, 60, 0, 3];
    let paths = vec![vec![], POOLED.to_vec()];
    let mut cluster = Cluster::with_presignature_paths(binary(), 3, 2, "quic", 2, paths).await;
    cluster.wait_ready().await;
    let public_key = cluster.keygen("default").await;
    let sets: [&[u16]; 3] = [&[0, 1], &[0, 2], &[1, 2]];
    let started = Instant::now();
    wait_for_pools(&cluster, &sets, 2, Duration::from_secs(180)).await;
    wait_for_pools_at(&cluster, &POOLED, &sets, 2, Duration::from_secs(180)).await;
    eprintln!("pools of 2 filled on every member of 3 sets and 2 paths {:?} after keygen", started.elapsed());
    let metrics = cluster.metrics(0).await;
    assert!(metrics.contains(r#"torcus_presignature_pool_depth{key="default"} 8"#), "{metrics}");
    assert!(metrics.contains(r#"torcus_node_sessions_total{kind="presign",outcome="completed"}"#), "{metrics}");

    let mut tally = Tally::default();

    // What a presignature must never sign, against full pools: a raw digest
    // (the nodes do not know its preimage) and a path made after the fact
    // (no pool for it). Both run the full protocol and leave every pool as
    // it was.
    let before = all_pools(&cluster).await;
    for (message, path) in [(digest([9; 32]), vec![]), (digest([9; 32]), POOLED.to_vec()), (payload(b"m/7"), vec![7])] {
        let body = cluster.sign("default", vec![0, 2], message.clone(), path.clone()).await;
        assert_eq!(body["presigned"], false, "{message:?} at {path:?}: {body}");
        assert!(tally.nonces.insert(body["r"].as_str().unwrap().to_owned()));
    }
    // The initiator offers none for a digest even when the issuer names one.
    let held = cluster.pool(0, "default", &[0, 2]).await.expect("pool").ids;
    let body = cluster
        .sign_with("default", vec![0, 2], digest([8; 32]), vec![], PresignatureChoice::Id(held[0].clone()))
        .await;
    assert_eq!(body["presigned"], false, "{body}");
    assert_eq!(all_pools(&cluster).await, before, "no pool moved for a digest or an unpooled path");

    // Payloads sign from a presignature of their key and path, root key
    // and derived key alike.
    for set in [&[0u16, 1][..], &[0, 1], &[1, 2], &[0, 2]] {
        let (body, presigned) = tally.sign(&cluster, set, vec![]).await;
        assert!(presigned, "{set:?}: {body}");
        assert_eq!(body["publicKey"], public_key.as_str());
    }
    let (body, presigned) = tally.sign(&cluster, &[1, 2], POOLED.to_vec()).await;
    assert!(presigned, "{body}");
    assert_ne!(body["publicKey"], public_key.as_str(), "signed by the derived key");

    // The presigner refills what signing took.
    let started = Instant::now();
    wait_for_pools(&cluster, &sets, 2, Duration::from_secs(180)).await;
    wait_for_pools_at(&cluster, &POOLED, &sets, 2, Duration::from_secs(180)).await;
    eprintln!("refilled after {:?}", started.elapsed());

    // Back to back: two presignatures, then (unless a refill won the race)
    // the full protocol. Every signature verifies either way.
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        outcomes.push(tally.sign(&cluster, &[0, 2], vec![]).await.1);
    }
    assert!(outcomes[0] && outcomes[1], "{outcomes:?}");
    eprintln!("back to back, presigned: {outcomes:?}");

    // Each node counted exactly the presignatures it signed with.
    for i in 0..3u16 {
        let metrics = cluster.metrics(i).await;
        let used = format!("torcus_presignatures_used_total {}\n", tally.presigned_by[usize::from(i)]);
        assert!(metrics.contains(&used), "party {i}: expected {used}{metrics}");
    }

    // The issuer's choice: the initiator offers exactly the presignature the
    // request names (both members list the same ones), or none at all.
    wait_for_pools(&cluster, &[&[0, 2]], 2, Duration::from_secs(120)).await;
    let ids_of =
        async |cluster: &Cluster| pools_of(cluster, &[0, 2]).await.into_iter().map(|p| p.ids).collect::<Vec<_>>();
    let held = ids_of(&cluster).await;
    assert_eq!(held[0], held[1], "members of {{0, 2}} list different presignatures");
    let (oldest, newest) = (held[0][0].clone(), held[0][1].clone());
    let body =
        cluster.sign_with("default", vec![0, 2], payload(b"201"), vec![], PresignatureChoice::Id(newest.clone())).await;
    assert_eq!(body["presigned"], true, "{body}");
    for member in ids_of(&cluster).await {
        assert!(!member.contains(&newest) && member.contains(&oldest), "only the named one went: {member:?}");
    }
    let not_held = PresignatureChoice::Id(hex::encode([7u8; 32]));
    for (message, choice) in [(payload(b"202"), PresignatureChoice::None), (payload(b"203"), not_held)] {
        let body = cluster.sign_with("default", vec![0, 2], message, vec![], choice.clone()).await;
        assert_eq!(body["presigned"], false, "{choice:?}: {body}");
        for member in ids_of(&cluster).await {
            assert!(member.contains(&oldest), "{choice:?} took a presignature: {member:?}");
        }
    }
    let grant = cluster.grant(
        GrantKind::Sign { key: "default".into(), message: payload(b"204"), derivation_path: vec![] },
        vec![0, 2],
    );
    let bad = serde_json::json!({ "grant": grant, "presignature": { "id": "not hex" } });
    let (status, body) = cluster.post_json(grant.grant.initiator(), "/p2p/sign", &bad).await;
    assert_eq!(status, 400, "{body}");

    // A grant whose payload does not hash to the digest it names is refused
    // by every node, before it uses anything up.
    let mut message = payload(b"transfer 1");
    if let SignMessage::Payload { payload, .. } = &mut message {
        *payload = b"transfer 9".to_vec();
    }
    let mut forged = cluster
        .grant(GrantKind::Sign { key: "default".into(), message: payload(b"x"), derivation_path: vec![] }, vec![0, 2])
        .grant;
    forged.kind = GrantKind::Sign { key: "default".into(), message, derivation_path: vec![] };
    let forged = torcus_contract::sign(forged, &cluster.grant_key);
    for party in [0, 2] {
        let (status, body) = cluster.post(party, "/p2p/sign", &forged).await;
        assert_eq!((status, body["reason"].as_str()), (403, Some("digest_mismatch")), "party {party}: {body}");
    }

    // Node 2 dies; set {0, 1} still refills (node 0 gives up on {0, 2} for
    // a while instead of waiting on it).
    tally.sign(&cluster, &[0, 2], vec![]).await;
    cluster.kill(2);
    for _ in 0..2 {
        tally.sign(&cluster, &[0, 1], vec![]).await;
    }
    let started = Instant::now();
    wait_for_pools(&cluster, &[&[0, 1]], 2, Duration::from_secs(90)).await;
    eprintln!("{{0, 1}} refilled {:?} after node 2 died", started.elapsed());
    let (body, presigned) = tally.sign(&cluster, &[0, 1], vec![]).await;
    assert!(presigned, "{body}");
}

/// Signatures made so far: their nonces, and how many each party made from
/// a presignature.
#[derive(Default)]
struct Tally {
    nonces: std::collections::HashSet<String>,
    presigned_by: [u64; 3],
    count: u32,
}

impl Tally {
    /// Signs a fresh payload with `set` at `path` and checks what the pools
    /// of that path say about it.
    async fn sign(&mut self, cluster: &Cluster, set: &[u16], path: Vec<u32>) -> (serde_json::Value, bool) {
        self.count += 1;
        let before = pools_at(cluster, &path, set).await;
        let message = payload(format!("payment {}", self.count).as_bytes());
        let body = cluster.sign("default", set.to_vec(), message, path.clone()).await;
        assert!(self.nonces.insert(body["r"].as_str().unwrap().to_owned()), "a nonce was used twice: {body}");
        let presigned = body["presigned"].as_bool().expect("presigned");
        if presigned {
            for (&member, (before, after)) in set.iter().zip(before.iter().zip(pools_at(cluster, &path, set).await)) {
                self.presigned_by[usize::from(member)] += 1;
                assert_eq!(after.taken, before.taken + 1, "party {member} took exactly one: {before:?} {after:?}");
                let refilled = after.generated - before.generated;
                assert_eq!(after.depth, before.depth - 1 + refilled as u32, "party {member}: {before:?} {after:?}");
            }
        }
        (body, presigned)
    }
}

/// Every pool of every node, as (party, pool).
async fn all_pools(cluster: &Cluster) -> Vec<(u16, torcus_contract::api::PresignaturePool)> {
    let mut all = Vec::new();
    for party in 0..3 {
        all.extend(cluster.presignatures(party).await.pools.into_iter().map(|pool| (party, pool)));
    }
    all
}

/// The pools of the key itself for `set` on each of its members, in the
/// order of `set`.
async fn pools_of(cluster: &Cluster, set: &[u16]) -> Vec<torcus_contract::api::PresignaturePool> {
    pools_at(cluster, &[], set).await
}

/// The pools of `path` for `set` on each of its members, in the order of `set`.
async fn pools_at(cluster: &Cluster, path: &[u32], set: &[u16]) -> Vec<torcus_contract::api::PresignaturePool> {
    let mut pools = Vec::new();
    for &member in set {
        let pool = cluster.pool_at(member, "default", path, set).await;
        pools.push(pool.unwrap_or_else(|| panic!("party {member}: no pool {set:?} at {path:?}")));
    }
    pools
}

/// Waits until every member of every set holds `depth` presignatures of the
/// key itself (never more), or fails after `limit`.
async fn wait_for_pools(cluster: &Cluster, sets: &[&[u16]], depth: u32, limit: Duration) {
    wait_for_pools_at(cluster, &[], sets, depth, limit).await
}

/// Like [`wait_for_pools`], for the pools of `path`.
async fn wait_for_pools_at(cluster: &Cluster, path: &[u32], sets: &[&[u16]], depth: u32, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let mut missing = Vec::new();
        for set in sets {
            for &member in *set {
                let held = cluster.pool_at(member, "default", path, set).await.map_or(0, |p| p.depth);
                assert!(held <= depth, "party {member} holds {held} presignatures of {set:?}");
                if held < depth {
                    missing.push((member, set.to_vec(), held));
                }
            }
        }
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pools not filled after {limit:?}: {missing:?}\n--- node 0\n{}\n--- node 1\n{}",
            cluster.log(0),
            cluster.log(1)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Presigning and signing from a presignature through the operator's relay,
/// where every message is sealed end to end and the sender is known only by
/// its seal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_relay_presigned_signature() {
    let cluster = Cluster::with_presignatures(binary(), 3, 2, "http", 1).await;
    cluster.wait_ready().await;
    cluster.keygen("default").await;
    wait_for_pools(&cluster, &[&[0, 1], &[0, 2], &[1, 2]], 1, Duration::from_secs(120)).await;
    let body = cluster.sign("default", vec![0, 2], payload(b"relayed"), vec![]).await;
    assert_eq!(body["presigned"], true, "{body}");
    let pool = cluster.pool(2, "default", &[0, 2]).await.expect("pool");
    assert_eq!(pool.taken, 1, "{pool:?}");
}
