//! Real `torcus-node` processes on 127.0.0.1: keygen and signing through
//! the HTTP API with operator-style grants, every signature checked with
//! libsecp256k1; forged, expired, replayed and non-member grants refused;
//! a restarted node signs with the share it stored.

use std::path::Path;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use torcus_contract::GrantKind;
use torcus_node::testing::Cluster;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_torcus-node"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_three_nodes_threshold_two_keygen_sign_refuse_restart() {
    let mut cluster = Cluster::new(binary(), 3, 2, "quic").await;
    cluster.wait_ready().await;
    let public_key = cluster.keygen("default").await;
    for (n, signers) in [vec![0, 1], vec![1, 2], vec![0, 2]].into_iter().enumerate() {
        let body = cluster.sign("default", signers, [n as u8 + 1; 32], vec![]).await;
        assert_eq!(body["publicKey"], public_key.as_str());
    }
    let derived = cluster.sign("default", vec![0, 2], [9; 32], vec![44, 60, 0, 0, 7]).await;
    assert_ne!(derived["publicKey"], public_key.as_str(), "a derived key signs");

    // Refusals, each with its reason.
    let digest = [3u8; 32];
    let sign_kind = || GrantKind::Sign { key: "default".into(), digest, derivation_path: vec![] };
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
    cluster.sign("default", vec![1, 2], [11; 32], vec![]).await;

    // A participant killed in the middle of a session ends it cleanly on
    // the initiator (an error answer, not a hang) within the idle timeout.
    let grant = loop {
        let kind = GrantKind::Sign { key: "default".into(), digest: [13; 32], derivation_path: vec![] };
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
        let kind = GrantKind::Sign { key: "default".into(), digest: [12; 32], derivation_path: vec![] };
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
        let body = cluster.sign("default", signers, [n as u8 + 21; 32], vec![]).await;
        assert_eq!(body["publicKey"], public_key.as_str());
    }
    cluster.sign("default", vec![0, 2], [23; 32], vec![1, 2, 3]).await;
    cluster.kill(0);
    cluster.start(0);
    cluster.wait_ready().await;
    cluster.sign("default", vec![0, 1], [24; 32], vec![]).await;
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
        let body = cluster.sign("default", signers, [n as u8 + 31; 32], vec![]).await;
        assert_eq!(body["publicKey"], public_key.as_str());
    }
    cluster.sign("default", vec![1, 3, 4], [34; 32], vec![7, 0]).await;
}
