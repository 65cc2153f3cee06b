//! Real `torcus-node` processes on 127.0.0.1: keygen and signing through
//! the HTTP API with operator-style grants, every signature checked with
//! libsecp256k1; forged, expired, replayed and non-member grants refused;
//! a restarted node signs with the share it stored.

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use torcus_certs::{CertificateAuthority, Identity, OffsetDateTime, Role};
use torcus_contract::{ClusterConfig, Grant, GrantKind, Peer, SignedGrant};

struct Cluster {
    _relay: Option<tokio::task::JoinHandle<()>>,
    dir: tempfile::TempDir,
    config: ClusterConfig,
    grant_key: SigningKey,
    nodes: Vec<Option<Child>>,
    http: reqwest::Client,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.nodes.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_tcp() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn free_udp() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/primes.json")
}

impl Cluster {
    async fn new(n: u16, t: u16, transport: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::generate("test CA", torcus_certs::Duration::days(1), OffsetDateTime::now_utc())
            .unwrap();
        let grant_key = SigningKey::from_bytes(&[42; 32]);
        let mut config = ClusterConfig::sample("demo", "vault", n, t);
        config.transport = transport.to_owned();
        config.grant_public_key = hex::encode(grant_key.verifying_key().as_bytes());
        // The relay the operator serves in http and hybrid mode, here in-process.
        let mut relay_task = None;
        if transport == "http" || transport == "hybrid" {
            let relay =
                torcus_node::transport::relay::Relay::new(&prometheus::Registry::new(), Default::default()).unwrap();
            let app = torcus_node::transport::relay::relay_router(std::sync::Arc::new(relay));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            config.registry_url = Some(format!("http://{}", listener.local_addr().unwrap()));
            relay_task = Some(tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            }));
        }
        config.peers = (0..n)
            .map(|index| Peer {
                index,
                host: "127.0.0.1".into(),
                p2p_port: free_udp(),
                http_port: free_tcp(),
                identity_key: None,
            })
            .collect();
        // TCP frames are signed with a per-node Ed25519 identity.
        let identities: Vec<SigningKey> = (0..n).map(|i| SigningKey::from_bytes(&[100 + i as u8; 32])).collect();
        if transport == "tcp" {
            for (peer, key) in config.peers.iter_mut().zip(&identities) {
                peer.identity_key = Some(hex::encode(key.verifying_key().as_bytes()));
            }
        }
        std::fs::write(dir.path().join("cluster.json"), serde_json::to_vec(&config).unwrap()).unwrap();
        for i in 0..n {
            let tls = dir.path().join(format!("tls-{i}"));
            std::fs::create_dir_all(&tls).unwrap();
            let identity =
                Identity { namespace: "vault".into(), cluster: "demo".into(), role: Role::Node { party_index: i } };
            let cert = ca
                .issue(
                    &identity,
                    &[format!("node-{i}")],
                    &["127.0.0.1".parse().unwrap()],
                    torcus_certs::Duration::hours(1),
                    OffsetDateTime::now_utc(),
                )
                .unwrap();
            std::fs::write(tls.join("tls.crt"), &cert.cert_pem).unwrap();
            std::fs::write(tls.join("tls.key"), cert.key_pem.expose()).unwrap();
            std::fs::write(tls.join("ca.crt"), ca.cert_pem()).unwrap();
            std::fs::write(tls.join("store.key"), hex::encode([i as u8 + 1; 32])).unwrap();
            std::fs::write(tls.join("identity.key"), hex::encode(identities[usize::from(i)].to_bytes())).unwrap();
        }
        let mut cluster = Self {
            _relay: relay_task,
            dir,
            config,
            grant_key,
            nodes: (0..n).map(|_| None).collect(),
            http: reqwest::Client::new(),
        };
        for i in 0..n {
            cluster.start(i);
        }
        cluster
    }

    fn start(&mut self, i: u16) {
        let d = self.dir.path();
        let log = std::fs::File::create(d.join(format!("node-{i}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_torcus-node"))
            .arg("serve")
            .arg(format!("--party-index={i}"))
            .arg(format!("--config={}", d.join("cluster.json").display()))
            .arg(format!("--tls-dir={}", d.join(format!("tls-{i}")).display()))
            .arg(format!("--data-dir={}", d.join(format!("data-{i}")).display()))
            .arg("--listen-ip=127.0.0.1")
            .arg(format!("--test-primes-fixture={}", fixture().display()))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.nodes[usize::from(i)] = Some(child);
    }

    fn kill(&mut self, i: u16) {
        if let Some(mut child) = self.nodes[usize::from(i)].take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    fn url(&self, i: u16, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.config.peers[usize::from(i)].http_port)
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        for i in (0..self.config.nodes).filter(|i| self.nodes[usize::from(*i)].is_some()) {
            loop {
                let ok = self.http.get(self.url(i, "/readyz")).send().await.is_ok_and(|r| r.status().is_success());
                if ok {
                    break;
                }
                assert!(Instant::now() < deadline, "node {i} not ready:\n{}", self.log(i));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    fn log(&self, i: u16) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node-{i}.log"))).unwrap_or_default()
    }

    fn grant(&self, kind: GrantKind, participants: Vec<u16>) -> SignedGrant {
        let now = torcus_contract::unix_now();
        let grant = Grant {
            version: 1,
            grant_id: Grant::new_id(),
            namespace: "vault".into(),
            cluster: "demo".into(),
            kind,
            participants,
            nonce: Grant::new_nonce(),
            issued_at: now,
            expires_at: now + 120,
        };
        torcus_contract::sign(grant, &self.grant_key)
    }

    async fn post(&self, i: u16, path: &str, grant: &SignedGrant) -> (u16, serde_json::Value) {
        let response = self
            .http
            .post(self.url(i, path))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&serde_json::json!({ "grant": grant })).unwrap())
            .timeout(Duration::from_secs(300))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.bytes().await.unwrap();
        (status, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null))
    }

    /// Runs keygen from the right initiator and returns the public key.
    async fn keygen(&self, key: &str) -> String {
        let all: Vec<u16> = (0..self.config.nodes).collect();
        let grant = self.grant(GrantKind::Keygen { key: key.into() }, all);
        let (status, body) = self.post(grant.grant.initiator(), "/p2p/keygen", &grant).await;
        assert_eq!(status, 200, "{body}\n{}", self.log(grant.grant.initiator()));
        body["publicKey"].as_str().unwrap().to_owned()
    }

    /// Signs through the initiator of a fresh grant and checks the result.
    async fn sign(&self, key: &str, signers: Vec<u16>, digest: [u8; 32], path: Vec<u32>) -> serde_json::Value {
        let grant = self.grant(GrantKind::Sign { key: key.into(), digest, derivation_path: path }, signers);
        let (status, body) = self.post(grant.grant.initiator(), "/p2p/sign", &grant).await;
        assert_eq!(status, 200, "{body}");
        verify(&body, &digest);
        body
    }
}

/// Checks r‖s against the returned public key with libsecp256k1, and the
/// recovery id by recovering the key.
fn verify(body: &serde_json::Value, digest: &[u8; 32]) {
    let hex_field = |f: &str| hex::decode(body[f].as_str().unwrap_or_else(|| panic!("no {f} in {body}"))).unwrap();
    let mut compact = [0u8; 64];
    compact[..32].copy_from_slice(&hex_field("r"));
    compact[32..].copy_from_slice(&hex_field("s"));
    let key = secp256k1::PublicKey::from_slice(&hex_field("publicKey")).unwrap();
    let message = secp256k1::Message::from_digest(*digest);
    let secp = secp256k1::Secp256k1::new();
    secp.verify_ecdsa(message, &secp256k1::ecdsa::Signature::from_compact(&compact).unwrap(), &key).unwrap();
    let der = secp256k1::ecdsa::Signature::from_der(&hex_field("der")).unwrap();
    secp.verify_ecdsa(message, &der, &key).unwrap();
    let recid = secp256k1::ecdsa::RecoveryId::try_from(body["recoveryId"].as_i64().unwrap() as i32).unwrap();
    let recoverable = secp256k1::ecdsa::RecoverableSignature::from_compact(&compact, recid).unwrap();
    assert_eq!(secp.recover_ecdsa(message, &recoverable).unwrap(), key, "recovery id recovers the key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_three_nodes_threshold_two_keygen_sign_refuse_restart() {
    let mut cluster = Cluster::new(3, 2, "quic").await;
    cluster.wait_ready().await;
    let public_key = cluster.keygen("default").await;
    // The initiator answers once its own part is done; the others store
    // their shares a moment later.
    for i in 0..3 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let response = cluster.http.get(cluster.url(i, "/p2p/keys")).send().await.unwrap();
            let keys: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
            if keys[0]["publicKey"] == public_key.as_str() {
                break;
            }
            assert!(Instant::now() < deadline, "node {i} holds no share of {public_key}: {keys}\n{}", cluster.log(i));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

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
    let mut cluster = Cluster::new(3, 2, transport).await;
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
    let cluster = Cluster::new(5, 3, "quic").await;
    cluster.wait_ready().await;
    let public_key = cluster.keygen("default").await;
    for (n, signers) in [vec![0, 1, 2], vec![2, 3, 4], vec![0, 2, 4]].into_iter().enumerate() {
        let body = cluster.sign("default", signers, [n as u8 + 31; 32], vec![]).await;
        assert_eq!(body["publicKey"], public_key.as_str());
    }
    cluster.sign("default", vec![1, 3, 4], [34; 32], vec![7, 0]).await;
}
