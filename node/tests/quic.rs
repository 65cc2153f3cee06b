//! The QUIC transport on 127.0.0.1 with real certificates: messages arrive
//! complete and in order, peers outside the cluster CA are refused, a
//! message claiming another party index is dropped and counted, garbage
//! does not stop a node, and a whole keygen and signing runs over it.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use torcus_certs::{CertificateAuthority, Identity, IssuedCertificate, OffsetDateTime, Role};
use torcus_node::engine::{self, Envelope};
use torcus_node::testing::routed;
use torcus_node::transport::Transport;
use torcus_node::transport::TransportMetrics;
use torcus_node::transport::quic::{PeerAddr, QuicConfig, QuicTransport};

fn ca() -> CertificateAuthority {
    CertificateAuthority::generate("test CA", torcus_certs::Duration::days(1), OffsetDateTime::now_utc()).unwrap()
}

fn node_cert(ca: &CertificateAuthority, cluster: &str, index: u16) -> IssuedCertificate {
    let identity =
        Identity { namespace: "vault".into(), cluster: cluster.into(), role: Role::Node { party_index: index } };
    ca.issue(
        &identity,
        &[format!("node-{index}")],
        &["127.0.0.1".parse().unwrap()],
        torcus_certs::Duration::hours(1),
        OffsetDateTime::now_utc(),
    )
    .unwrap()
}

struct Node {
    transport: Arc<QuicTransport>,
    incoming: mpsc::Receiver<Envelope>,
    metrics: TransportMetrics,
    registry: Registry,
    _stop: tokio_util::sync::DropGuard,
}

fn start(index: u16, cert: &IssuedCertificate, trust: &str) -> Node {
    start_with_queue(index, cert, trust, 1 << 16)
}

/// A node whose inbound queue holds `queue` envelopes: once that is full and
/// nobody takes from it, the node stops reading its connections.
fn start_with_queue(index: u16, cert: &IssuedCertificate, trust: &str, queue: usize) -> Node {
    let registry = Registry::new();
    let metrics = TransportMetrics::register(&registry, "quic").unwrap();
    let (tx, incoming) = mpsc::channel(queue);
    let stop = CancellationToken::new();
    let config = QuicConfig {
        me: index,
        namespace: "vault".into(),
        cluster: "demo".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        peers: HashMap::new(),
        cert_chain_pem: cert.cert_pem.clone(),
        key: cert.key_pem.clone(),
        trust_bundle_pem: trust.to_owned(),
    };
    let transport = QuicTransport::bind(config, tx, metrics.clone(), stop.clone()).unwrap();
    Node { transport, incoming, metrics, registry, _stop: stop.drop_guard() }
}

fn addr(node: &Node) -> SocketAddr {
    node.transport.local_addr().unwrap()
}

/// `n` nodes of one cluster, each knowing every other's address.
fn cluster(n: u16) -> Vec<Node> {
    let ca = ca();
    let nodes: Vec<Node> = (0..n).map(|i| start(i, &node_cert(&ca, "demo", i), ca.cert_pem())).collect();
    for a in &nodes {
        for (j, b) in nodes.iter().enumerate() {
            a.transport.set_peer(j as u16, PeerAddr { addr: addr(b), server_name: format!("node-{j}") });
        }
    }
    nodes
}

fn env(from: u16, to: u16, seq: u64) -> Envelope {
    Envelope { session: [9; 32], from, to: Some(to), seq, payload: seq.to_be_bytes().to_vec(), ..Envelope::default() }
}

fn dropped(node: &Node, reason: &str) -> u64 {
    node.metrics.dropped.with_label_values(&[reason]).get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_arrives_once_and_in_order() {
    let mut nodes = cluster(3);
    let parties = nodes.iter_mut().map(|n| (Arc::clone(&n.transport), &mut n.incoming, &n.metrics)).collect();
    common::every_message_arrives_once_and_in_order(parties, 2000).await;
}

#[tokio::test]
async fn a_peer_from_another_ca_is_refused() {
    let nodes = cluster(2);
    // An impostor with a certificate for party 1 from its own CA: it does
    // not trust the real node either, so the handshake fails at once.
    let rogue_ca = ca();
    let rogue = start(1, &node_cert(&rogue_ca, "demo", 1), rogue_ca.cert_pem());
    rogue.transport.set_peer(0, PeerAddr { addr: addr(&nodes[0]), server_name: "node-0".into() });
    let err = rogue.transport.send(0, env(1, 0, 0)).await.unwrap_err();
    assert!(err.to_string().contains("connection to party 0"), "{err}");
    assert!(rogue.metrics.connection_failures.with_label_values(&["connect"]).get() >= 1);
    assert_eq!(nodes[0].metrics.received.get(), 0);
}

#[tokio::test]
async fn the_server_refuses_a_client_certificate_from_another_ca() {
    let real = ca();
    let server = start(0, &node_cert(&real, "demo", 0), real.cert_pem());
    let rogue_ca = ca();
    let trust_both = format!("{}{}", real.cert_pem(), rogue_ca.cert_pem());
    let rogue = start(1, &node_cert(&rogue_ca, "demo", 1), &trust_both);
    rogue.transport.set_peer(0, PeerAddr { addr: addr(&server), server_name: "node-0".into() });
    // The client may get as far as sending before the server's refusal
    // lands; either way nothing is delivered and the server counts it.
    let _ = rogue.transport.send(0, env(1, 0, 0)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.metrics.received.get(), 0);
    assert!(server.metrics.connection_failures.with_label_values(&["handshake"]).get() >= 1);
}

#[tokio::test]
async fn a_node_of_another_cluster_is_refused() {
    let shared = ca();
    let server = start(0, &node_cert(&shared, "demo", 0), shared.cert_pem());
    let other = start(1, &node_cert(&shared, "other-cluster", 1), shared.cert_pem());
    other.transport.set_peer(0, PeerAddr { addr: addr(&server), server_name: "node-0".into() });
    let _ = other.transport.send(0, env(1, 0, 0)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.metrics.received.get(), 0);
    assert!(server.metrics.connection_failures.with_label_values(&["foreign_identity"]).get() >= 1);
}

#[tokio::test]
async fn a_message_claiming_another_party_is_dropped_and_counted() {
    let mut nodes = cluster(3);
    // Party 1 (by certificate) claims to be party 2.
    nodes[1].transport.send(0, env(2, 0, 0)).await.unwrap();
    nodes[1].transport.send(0, env(1, 0, 1)).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), nodes[0].incoming.recv()).await.unwrap().unwrap();
    assert_eq!((got.from, got.seq), (1, 1), "only the honest message arrives");
    assert_eq!(dropped(&nodes[0], "spoofed_sender"), 1);
    let text = prometheus::TextEncoder::new().encode_to_string(&nodes[0].registry.gather()).unwrap();
    assert!(
        text.contains(r#"torcus_p2p_messages_dropped_total{reason="spoofed_sender",transport="quic"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn random_datagrams_do_not_stop_a_node() {
    let mut nodes = cluster(3);
    // Random datagrams at the QUIC port.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..500u32 {
        let junk: Vec<u8> = (0..(i % 1200 + 1)).map(|b| (b as u8).wrapping_mul(31).wrapping_add(i as u8)).collect();
        socket.send_to(&junk, addr(&nodes[0])).unwrap();
    }
    // The honest path still works afterwards.
    nodes[1].transport.send(0, env(1, 0, 7)).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), nodes[0].incoming.recv()).await.unwrap().unwrap();
    assert_eq!(got.seq, 7);
}

#[tokio::test]
async fn an_oversized_frame_closes_only_that_connection() {
    let real = ca();
    let mut server = start(0, &node_cert(&real, "demo", 0), real.cert_pem());
    // A raw QUIC client holding a genuine certificate for party 1.
    let cert = node_cert(&real, "demo", 1);
    let tls = torcus_certs::client_config(
        &cert.cert_pem,
        &cert.key_pem,
        real.cert_pem(),
        &[torcus_node::transport::quic::ALPN],
    )
    .unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    )));
    let conn = endpoint.connect(addr(&server), "node-0").unwrap().await.unwrap();
    let mut stream = conn.open_uni().await.unwrap();
    stream.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    stream.write_all(&[0; 64]).await.unwrap();
    let _ = stream.finish();
    let reason = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await.unwrap();
    assert!(reason.to_string().contains("malformed frame"), "{reason}");
    assert_eq!(server.metrics.dropped.with_label_values(&["malformed_frame"]).get(), 1);

    // Party 2 still gets through.
    let honest = start(2, &node_cert(&real, "demo", 2), real.cert_pem());
    honest.transport.set_peer(0, PeerAddr { addr: addr(&server), server_name: "node-0".into() });
    honest.transport.send(0, env(2, 0, 1)).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), server.incoming.recv()).await.unwrap().unwrap();
    assert_eq!(got.from, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keygen_and_signing_over_quic() {
    let nodes = cluster(3);
    let (nodes, guards): (Vec<_>, Vec<_>) = nodes.into_iter().map(|n| ((n.transport, n.incoming), n._stop)).unzip();
    let (routers, transports) = routed(nodes);
    let parties = vec![0u16, 1, 2];
    let net = |i: usize, session: u8, parties: &[u16]| {
        routers[i].session(Arc::clone(&transports[i]), [session; 32], i as u16, parties.to_vec())
    };
    // Aux info from the fixture (the processes tests run the aux info
    // protocol over QUIC); keygen and signing over these transports.
    let cores = futures::future::try_join_all((0..3).map(|i| engine::keygen(b"keygen", 3, 2, net(i, 2, &parties))))
        .await
        .unwrap();
    let shares: Vec<_> = cores
        .into_iter()
        .enumerate()
        .map(|(i, c)| engine::complete(c, torcus_node::testing::fixture_aux(3, i as u16)).unwrap())
        .collect();

    let digest = [5u8; 32];
    let signers = [0u16, 2];
    let sigs = futures::future::try_join_all(signers.iter().map(|&i| {
        let message = engine::Message::Digest(&digest);
        engine::sign(b"sign", &shares[usize::from(i)], message, &[], net(usize::from(i), 3, &signers))
    }))
    .await
    .unwrap();
    let public = shares[0].shared_public_key.to_bytes(true);
    drop(guards);
    let mut compact = [0u8; 64];
    let (r, s) = engine::signature_bytes(&sigs[0]);
    compact[..32].copy_from_slice(&r);
    compact[32..].copy_from_slice(&s);
    secp256k1::Secp256k1::verification_only()
        .verify_ecdsa(
            secp256k1::Message::from_digest(digest),
            &secp256k1::ecdsa::Signature::from_compact(&compact).unwrap(),
            &secp256k1::PublicKey::from_slice(&public).unwrap(),
        )
        .unwrap();
}

/// A peer that keeps its connection open (QUIC keep-alives and all) but
/// stops reading: its flow-control window fills and a write to it would
/// wait for ever. Each send fails within `SEND_TIMEOUT`, counted as
/// `send_timeout`, and names the peer; sends to the other peers go through
/// meanwhile and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_fails_sends_within_the_deadline() {
    let ca = ca();
    let sender = start(0, &node_cert(&ca, "demo", 0), ca.cert_pem());
    let stalled = start_with_queue(1, &node_cert(&ca, "demo", 1), ca.cert_pem(), 1);
    let mut healthy = start(2, &node_cert(&ca, "demo", 2), ca.cert_pem());
    for (j, peer) in [&sender, &stalled, &healthy].into_iter().enumerate() {
        sender.transport.set_peer(j as u16, PeerAddr { addr: addr(peer), server_name: format!("node-{j}") });
    }
    common::sends_to_a_stalled_peer_fail_within_the_deadline(
        Arc::clone(&sender.transport),
        &sender.metrics,
        &mut healthy.incoming,
        64 * 1024,
    )
    .await;
    drop(stalled);
}
