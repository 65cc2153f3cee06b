//! The HTTP relay on 127.0.0.1 with real nodes polling it: messages arrive
//! complete and in order through it, bad posts are refused with the right
//! status without stopping anyone else, clusters never see each other's
//! messages, the hybrid transport falls back to it and counts which path
//! delivered, and a whole keygen runs over it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus::Registry;
use reqwest::StatusCode;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};
use torcus_certs::{CertificateAuthority, Identity, OffsetDateTime, Role};
use torcus_node::engine::{self, Envelope};
use torcus_node::testing::{RelayServer, routed, samples};
use torcus_node::transport::hybrid::HybridTransport;
use torcus_node::transport::quic::{QuicConfig, QuicTransport};
use torcus_node::transport::relay::{
    self, CLUSTER_HEADER, MESSAGES_PATH, PARTY_HEADER, RelayConfig, RelayTransport, RequestSigner,
};
use torcus_node::transport::{SendError, Transport, TransportMetrics, frame};
use torcus_operator::relay::{Relay, RelayLimits};

const CLUSTER: &str = "vault/demo";

async fn serve_relay(limits: RelayLimits) -> RelayServer {
    RelayServer::start(limits).await
}

/// Like [`serve_relay`], with the relay made by `build` from a new one.
async fn serve_relay_with(limits: RelayLimits, build: impl FnOnce(Relay) -> Relay) -> RelayServer {
    RelayServer::start_with(limits, build).await
}

struct Node {
    transport: Arc<RelayTransport>,
    incoming: mpsc::Receiver<Envelope>,
    metrics: TransportMetrics,
    _stop: DropGuard,
}

fn node(relay: &RelayServer, cluster: &str, me: u16) -> Node {
    node_at(relay.url(), cluster, me)
}

/// A node whose relay is at `base_url`.
fn node_at(base_url: String, cluster: &str, me: u16) -> Node {
    let registry = Registry::new();
    let metrics = TransportMetrics::register(&registry, "relay").unwrap();
    let (tx, incoming) = mpsc::channel(1 << 16);
    let stop = CancellationToken::new();
    let config = RelayConfig { me, cluster: cluster.into(), base_url, signer: None };
    let transport = RelayTransport::start(config, tx, metrics.clone(), stop.clone());
    Node { transport, incoming, metrics, _stop: stop.drop_guard() }
}

fn env(from: u16, to: u16, seq: u64) -> Envelope {
    Envelope { session: [9; 32], from, to: Some(to), seq, payload: seq.to_be_bytes().to_vec(), ..Envelope::default() }
}

async fn recv(node: &mut Node) -> Envelope {
    tokio::time::timeout(Duration::from_secs(20), node.incoming.recv()).await.unwrap().unwrap()
}

/// Posts raw bytes to the relay as `party` of `cluster`.
async fn post(relay: &RelayServer, party: u16, cluster: &str, query: &str, body: Vec<u8>) -> StatusCode {
    reqwest::Client::new()
        .post(format!("{}{MESSAGES_PATH}{query}", relay.url()))
        .header(PARTY_HEADER, party)
        .header(CLUSTER_HEADER, cluster)
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
}

/// One immediate poll of `party` of `cluster`: its status and frame count.
async fn poll(relay: &RelayServer, party: u16, cluster: &str) -> (StatusCode, usize) {
    let response = reqwest::Client::new()
        .get(format!("{}{MESSAGES_PATH}?party={party}&wait_ms=0", relay.url()))
        .header(CLUSTER_HEADER, cluster)
        .send()
        .await
        .unwrap();
    let status = response.status();
    if !status.is_success() {
        return (status, 0);
    }
    let mut body = &response.bytes().await.unwrap()[..];
    let mut frames = 0;
    while let Some((len, rest)) = body.split_first_chunk::<4>() {
        body = &rest[u32::from_be_bytes(*len) as usize..];
        frames += 1;
    }
    (status, frames)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_arrives_once_and_in_order_through_the_relay() {
    const PER_PAIR: u64 = 2000;
    let relay = serve_relay(RelayLimits::default()).await;
    let mut nodes: Vec<Node> = (0..3).map(|i| node(&relay, CLUSTER, i)).collect();
    // One task per ordered pair: sends to different recipients race, sends
    // within a pair are in order.
    let mut senders = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        for to in (0..3u16).filter(|t| usize::from(*t) != i) {
            let transport = Arc::clone(&node.transport);
            senders.push(tokio::spawn(async move {
                for seq in 0..PER_PAIR {
                    transport.send(to, env(i as u16, to, seq)).await.unwrap();
                }
            }));
        }
    }
    for (i, node) in nodes.iter_mut().enumerate() {
        let mut next = [0u64; 3];
        for _ in 0..2 * PER_PAIR {
            let e = recv(node).await;
            assert_eq!(e.to, Some(i as u16));
            let expected = &mut next[usize::from(e.from)];
            assert_eq!(e.seq, *expected, "from {} to {i}: lost, duplicated or reordered", e.from);
            assert_eq!(e.payload, e.seq.to_be_bytes());
            *expected += 1;
        }
        assert_eq!(next.iter().sum::<u64>(), 2 * PER_PAIR);
    }
    for s in senders {
        s.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    for node in &mut nodes {
        assert!(node.incoming.try_recv().is_err(), "nothing extra");
        assert_eq!(node.metrics.sent.get(), 2 * PER_PAIR);
        assert_eq!(node.metrics.received.get(), 2 * PER_PAIR);
    }
    let total = (6 * PER_PAIR) as f64;
    assert_eq!(relay.sample(r#"torcus_relay_messages_total{direction="in"}"#), total);
    assert_eq!(relay.sample(r#"torcus_relay_messages_total{direction="out"}"#), total);
    assert_eq!(relay.sample("torcus_relay_queued_messages"), 0.0);
    assert_eq!(relay.sample("torcus_relay_queued_bytes"), 0.0);
}

#[tokio::test]
async fn a_broadcast_copy_stays_a_broadcast() {
    let relay = serve_relay(RelayLimits::default()).await;
    let sender = node(&relay, CLUSTER, 0);
    let mut receivers = [node(&relay, CLUSTER, 1), node(&relay, CLUSTER, 2)];
    let broadcast = Envelope { to: None, ..env(0, 0, 5) };
    for to in [1, 2] {
        sender.transport.send(to, broadcast.clone()).await.unwrap();
    }
    for receiver in &mut receivers {
        assert_eq!(recv(receiver).await, broadcast, "the engine must still see a broadcast");
    }
}

#[tokio::test]
async fn the_relay_serves_known_clusters_only_and_bounds_the_bodies_it_reads() {
    let limits = RelayLimits { max_body_bytes_in_flight: 64 << 10, ..RelayLimits::default() };
    let relay = serve_relay_with(limits, |relay| relay.for_clusters(|cluster| cluster == CLUSTER)).await;
    let body = |from, to, seq| frame::encode(&env(from, to, seq));

    // A cluster the relay does not serve: refused before anything is read or queued.
    assert_eq!(post(&relay, 1, "vault/invented", "", body(1, 0, 0)).await, StatusCode::NOT_FOUND);
    assert_eq!(poll(&relay, 0, "vault/invented").await.0, StatusCode::NOT_FOUND);
    assert_eq!(relay.sample(r#"torcus_relay_rejected_total{reason="unknown_cluster"}"#), 2.0);

    // A client that declares 60 KiB and sends nothing holds that much of
    // the 64 KiB budget; a second body that does not fit is refused at once.
    use tokio::io::AsyncWriteExt as _;
    let mut slow = tokio::net::TcpStream::connect(relay.addr()).await.unwrap();
    let head = format!(
        "POST {MESSAGES_PATH}?to=0 HTTP/1.1\r\nhost: relay\r\n{PARTY_HEADER}: 1\r\n{CLUSTER_HEADER}: {CLUSTER}\r\ncontent-length: {}\r\n\r\n",
        60 << 10
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let padded = frame::encode(&Envelope { payload: vec![0; 10 << 10], ..env(1, 0, 1) });
    let mut busy = StatusCode::ACCEPTED;
    for _ in 0..50 {
        busy = post(&relay, 1, CLUSTER, "", padded.clone()).await;
        if busy == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        // The slow request may not have reached its handler yet.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(busy, StatusCode::SERVICE_UNAVAILABLE, "the budget was held");
    assert!(relay.sample(r#"torcus_relay_rejected_total{reason="busy"}"#) >= 1.0);
    // The budget comes back with the connection, and honest messages flow.
    drop(slow);
    let mut zero = node(&relay, CLUSTER, 0);
    let mut delivered = false;
    for _ in 0..50 {
        if post(&relay, 1, CLUSTER, "", body(1, 0, 2)).await == StatusCode::ACCEPTED {
            delivered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(delivered, "the budget was released");
    // Padded posts accepted before the slow one held the budget come first.
    let mut got = recv(&mut zero).await;
    while got.seq == 1 {
        got = recv(&mut zero).await;
    }
    assert_eq!(got, env(1, 0, 2));
}

#[tokio::test]
async fn the_relay_refuses_bad_posts_and_keeps_serving_others() {
    let relay = serve_relay(RelayLimits { max_messages_per_recipient: 3, ..RelayLimits::default() }).await;
    let body = |from, to, seq| frame::encode(&env(from, to, seq));

    // Party 1 posting an envelope from party 2.
    assert_eq!(post(&relay, 1, CLUSTER, "", body(2, 0, 0)).await, StatusCode::FORBIDDEN);
    // Larger than a frame may be.
    assert_eq!(post(&relay, 1, CLUSTER, "", vec![0; frame::MAX_FRAME + 1]).await, StatusCode::PAYLOAD_TOO_LARGE);
    // A broadcast without a recipient, garbage, a bad cluster header.
    let broadcast = frame::encode(&Envelope { to: None, ..env(1, 0, 0) });
    assert_eq!(post(&relay, 1, CLUSTER, "", broadcast).await, StatusCode::BAD_REQUEST);
    assert_eq!(post(&relay, 1, CLUSTER, "", vec![1, 2, 3]).await, StatusCode::BAD_REQUEST);
    assert_eq!(post(&relay, 1, "no-slash", "", body(1, 0, 0)).await, StatusCode::BAD_REQUEST);
    // Party 2's queue fills up.
    for seq in 0..3 {
        assert_eq!(post(&relay, 1, CLUSTER, "", body(1, 2, seq)).await, StatusCode::ACCEPTED);
    }
    assert_eq!(post(&relay, 1, CLUSTER, "", body(1, 2, 3)).await, StatusCode::TOO_MANY_REQUESTS);

    // Others are still served: party 0 gets party 1's message.
    let mut zero = node(&relay, CLUSTER, 0);
    assert_eq!(post(&relay, 1, CLUSTER, "?to=0", body(1, 0, 7)).await, StatusCode::ACCEPTED);
    assert_eq!(recv(&mut zero).await, env(1, 0, 7));

    // Another cluster sees none of it; party 2 of this one gets its three.
    assert_eq!(poll(&relay, 2, "vault/other").await, (StatusCode::OK, 0));
    assert_eq!(poll(&relay, 0, "vault/other").await, (StatusCode::OK, 0));
    assert_eq!(poll(&relay, 2, CLUSTER).await, (StatusCode::OK, 3));
    assert_eq!(post(&relay, 1, CLUSTER, "", body(1, 2, 3)).await, StatusCode::ACCEPTED, "room again");

    for (reason, count) in [
        ("wrong_party", 1.0),
        ("too_large", 1.0),
        ("no_recipient", 1.0),
        ("malformed_frame", 1.0),
        ("bad_header", 1.0),
        ("queue_full", 1.0),
    ] {
        assert_eq!(relay.sample(&format!(r#"torcus_relay_rejected_total{{reason="{reason}"}}"#)), count, "{reason}");
    }
    assert_eq!(relay.sample(r#"torcus_relay_messages_total{direction="in"}"#), 5.0);
    assert_eq!(relay.sample("torcus_relay_queued_messages"), 1.0);
}

#[tokio::test]
async fn a_sender_retries_while_the_queue_is_full_and_keeps_the_order() {
    let relay = serve_relay(RelayLimits { max_messages_per_recipient: 2, ..RelayLimits::default() }).await;
    let sender = node(&relay, CLUSTER, 0);
    // The recipient starts polling only after the queue has filled.
    let sends = tokio::spawn({
        let transport = Arc::clone(&sender.transport);
        async move {
            for seq in 0..6 {
                transport.send(1, env(0, 1, seq)).await.unwrap();
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut receiver = node(&relay, CLUSTER, 1);
    for seq in 0..6 {
        assert_eq!(recv(&mut receiver).await.seq, seq);
    }
    sends.await.unwrap();
    assert!(sender.metrics.connection_failures.with_label_values(&["relay_busy"]).get() >= 1);
    assert!(relay.sample(r#"torcus_relay_rejected_total{reason="queue_full"}"#) >= 1.0);
}

#[tokio::test]
async fn a_send_to_an_unreachable_relay_fails_as_a_connection_error() {
    // A port that was bound a moment ago and is closed now.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let node = node_at(format!("http://{addr}"), CLUSTER, 0);
    let err = node.transport.send(1, env(0, 1, 0)).await.unwrap_err();
    assert!(matches!(err, SendError::Connection { party: 1, .. }), "{err}");
    assert!(node.metrics.connection_failures.with_label_values(&["connect"]).get() >= 6, "retried, bounded");
}

/// A transport that always fails to connect, and counts its tries.
#[derive(Debug, Default)]
struct Unreachable {
    attempts: AtomicU64,
}

impl Transport for Unreachable {
    async fn send(&self, to: u16, _envelope: Envelope) -> Result<(), SendError> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        Err(SendError::Connection { party: to, reason: "connection refused".into() })
    }
}

/// A direct path that hands envelopes straight to the recipient.
#[derive(Debug)]
struct Direct(mpsc::Sender<Envelope>);

impl Transport for Direct {
    async fn send(&self, to: u16, envelope: Envelope) -> Result<(), SendError> {
        self.0.send(envelope).await.map_err(|e| SendError::Connection { party: to, reason: e.to_string() })
    }
}

fn path(registry: &Registry, path: &str) -> f64 {
    samples(registry).get(&format!(r#"torcus_p2p_messages_total{{path="{path}"}}"#)).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn hybrid_relays_when_the_primary_cannot_connect() {
    let relay = serve_relay(RelayLimits::default()).await;
    let sender = node(&relay, CLUSTER, 0);
    let mut receiver = node(&relay, CLUSTER, 1);
    let registry = Registry::new();
    let primary = Arc::new(Unreachable::default());
    let hybrid = HybridTransport::new(Arc::clone(&primary), Arc::clone(&sender.transport), &registry).unwrap();
    for seq in 0..3 {
        hybrid.send(1, env(0, 1, seq)).await.unwrap();
    }
    for seq in 0..3 {
        assert_eq!(recv(&mut receiver).await, env(0, 1, seq));
    }
    assert_eq!(primary.attempts.load(Ordering::SeqCst), 1, "then relayed for the cool-down");
    assert!(hybrid.is_relayed(1));
    assert_eq!((path(&registry, "p2p"), path(&registry, "relay")), (0.0, 3.0));
    assert_eq!(relay.sample(r#"torcus_relay_messages_total{direction="in"}"#), 3.0);
}

#[tokio::test]
async fn hybrid_uses_a_working_primary() {
    let relay = serve_relay(RelayLimits::default()).await;
    let sender = node(&relay, CLUSTER, 0);
    let (tx, mut direct) = mpsc::channel(16);
    let registry = Registry::new();
    let hybrid = HybridTransport::new(Arc::new(Direct(tx)), Arc::clone(&sender.transport), &registry).unwrap();
    for seq in 0..3 {
        hybrid.send(1, env(0, 1, seq)).await.unwrap();
        assert_eq!(direct.recv().await.unwrap(), env(0, 1, seq));
    }
    assert!(!hybrid.is_relayed(1));
    assert_eq!((path(&registry, "p2p"), path(&registry, "relay")), (3.0, 0.0));
    assert_eq!(relay.sample(r#"torcus_relay_messages_total{direction="in"}"#), 0.0);
}

#[tokio::test]
async fn hybrid_over_quic_relays_to_a_peer_without_an_address() {
    let relay = serve_relay(RelayLimits::default()).await;
    let sender = node(&relay, CLUSTER, 0);
    let mut receiver = node(&relay, CLUSTER, 1);
    let ca =
        CertificateAuthority::generate("test CA", torcus_certs::Duration::days(1), OffsetDateTime::now_utc()).unwrap();
    let identity = Identity { namespace: "vault".into(), cluster: "demo".into(), role: Role::Node { party_index: 0 } };
    let cert = ca
        .issue(
            &identity,
            &["node-0".into()],
            &["127.0.0.1".parse().unwrap()],
            torcus_certs::Duration::hours(1),
            OffsetDateTime::now_utc(),
        )
        .unwrap();
    let registry = Registry::new();
    let stop = CancellationToken::new();
    let quic = QuicTransport::bind(
        QuicConfig {
            me: 0,
            namespace: "vault".into(),
            cluster: "demo".into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            peers: Default::default(),
            cert_chain_pem: cert.cert_pem.clone(),
            key: cert.key_pem.clone(),
            trust_bundle_pem: ca.cert_pem().to_owned(),
        },
        mpsc::channel(16).0,
        TransportMetrics::register(&registry, "quic").unwrap(),
        stop.clone(),
    )
    .unwrap();
    let _ = TransportMetrics::register(&registry, "relay").unwrap();
    let hybrid = HybridTransport::new(quic, Arc::clone(&sender.transport), &registry).unwrap();
    hybrid.send(1, env(0, 1, 42)).await.unwrap();
    assert_eq!(recv(&mut receiver).await, env(0, 1, 42));
    assert_eq!(path(&registry, "relay"), 1.0);
    hybrid.primary().close().await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keygen_over_the_relay() {
    let relay = serve_relay(RelayLimits::default()).await;
    let nodes: Vec<Node> = (0..3).map(|i| node(&relay, CLUSTER, i)).collect();
    let (nodes, guards): (Vec<_>, Vec<_>) = nodes.into_iter().map(|n| ((n.transport, n.incoming), n._stop)).unzip();
    let (routers, transports) = routed(nodes);
    let parties = [0u16, 1, 2];
    let cores = futures::future::try_join_all((0..3).map(|i| {
        let net = routers[i].session(Arc::clone(&transports[i]), [2; 32], i as u16, parties.to_vec());
        engine::keygen(b"keygen over relay", 3, 2, net)
    }))
    .await
    .unwrap();
    let keys: Vec<_> = cores.iter().map(|c| c.shared_public_key.to_bytes(true).to_vec()).collect();
    assert!(keys.iter().all(|k| *k == keys[0]), "every party holds the same public key");
    assert!(relay.sample(r#"torcus_relay_messages_total{direction="out"}"#) > 0.0);
    drop(guards);
}

/// A node's certificate of `ca` for party `party` of `vault/demo`.
fn node_cert(ca: &CertificateAuthority, party: u16) -> torcus_certs::IssuedCertificate {
    let identity =
        Identity { namespace: "vault".into(), cluster: "demo".into(), role: Role::Node { party_index: party } };
    ca.issue(&identity, &[], &[], torcus_certs::Duration::hours(1), OffsetDateTime::now_utc()).unwrap()
}

/// A raw relay request: `method` with `query` and `body` as `party` of
/// [`CLUSTER`], with `extra` headers; its status.
async fn raw(
    relay: &RelayServer,
    method: &str,
    party: u16,
    query: &str,
    body: Vec<u8>,
    extra: &[(&str, String)],
) -> StatusCode {
    let url = format!("{}{MESSAGES_PATH}?{query}", relay.url());
    let mut request = match method {
        "GET" => reqwest::Client::new().get(url),
        _ => reqwest::Client::new().post(url).body(body),
    };
    request = request.header(PARTY_HEADER, party).header(CLUSTER_HEADER, CLUSTER);
    for (name, value) in extra {
        request = request.header(*name, value);
    }
    request.send().await.unwrap().status()
}

/// The three signature headers, made by hand: `cert`'s key signs as
/// `party` at `time_ms`.
fn sign_as(
    cert: &torcus_certs::IssuedCertificate,
    method: &str,
    party: u16,
    query: &str,
    body: &[u8],
    time_ms: u64,
) -> Vec<(&'static str, String)> {
    use torcus_certs::rustls::pki_types::CertificateDer;
    use torcus_certs::rustls::pki_types::pem::PemObject as _;
    let digest = relay::body_digest(body);
    let input = relay::signing_input(method, CLUSTER, party, query, time_ms, &digest);
    let signature = torcus_certs::sign_with_key(&cert.key_pem, &input).unwrap();
    let der = CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).unwrap();
    vec![
        (relay::TIME_HEADER, time_ms.to_string()),
        (relay::CERTIFICATE_HEADER, hex::encode(der.as_ref())),
        (relay::SIGNATURE_HEADER, hex::encode(signature)),
        (relay::BODY_DIGEST_HEADER, hex::encode(digest)),
    ]
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_relay_serves_each_node_its_own_queue_only() {
    let ca =
        CertificateAuthority::generate("test CA", torcus_certs::Duration::days(1), OffsetDateTime::now_utc()).unwrap();
    let bundle = ca.cert_pem().to_owned();
    let relay = serve_relay_with(RelayLimits::default(), |r| {
        r.with_signed_requests(move |c| (c == CLUSTER).then(|| bundle.clone()))
    })
    .await;
    let certs: Vec<_> = (0..3).map(|i| node_cert(&ca, i)).collect();
    let signed_node = |me: u16| {
        let registry = Registry::new();
        let metrics = TransportMetrics::register(&registry, "relay").unwrap();
        let (tx, incoming) = mpsc::channel(1 << 10);
        let stop = CancellationToken::new();
        let signer =
            RequestSigner::fixed(certs[usize::from(me)].key_pem.clone(), &certs[usize::from(me)].cert_pem).unwrap();
        let config = RelayConfig { me, cluster: CLUSTER.into(), base_url: relay.url(), signer: Some(Arc::new(signer)) };
        let transport = RelayTransport::start(config, tx, metrics.clone(), stop.clone());
        Node { transport, incoming, metrics, _stop: stop.drop_guard() }
    };
    let (mut zero, one) = (signed_node(0), signed_node(1));
    one.transport.send(0, env(1, 0, 1)).await.unwrap();
    assert_eq!(recv(&mut zero).await, env(1, 0, 1), "signed requests flow");

    let body = frame::encode(&env(1, 0, 2));
    let reason = |r: &str| relay.sample(&format!(r#"torcus_relay_rejected_total{{reason="{r}"}}"#));
    // Unsigned: as the relay used to take them.
    assert_eq!(raw(&relay, "POST", 1, "to=0", body.clone(), &[]).await, StatusCode::UNAUTHORIZED);
    assert_eq!(raw(&relay, "GET", 0, "party=0&wait_ms=0", vec![], &[]).await, StatusCode::UNAUTHORIZED);
    // Party 1's key polling party 0's queue.
    let as_one = sign_as(&certs[1], "GET", 0, "party=0&wait_ms=0", &[], now_ms());
    assert_eq!(raw(&relay, "GET", 0, "party=0&wait_ms=0", vec![], &as_one).await, StatusCode::FORBIDDEN);
    // Signed for another body, another query, or long ago.
    let other_body = sign_as(&certs[1], "POST", 1, "to=0", b"something else", now_ms());
    assert_eq!(raw(&relay, "POST", 1, "to=0", body.clone(), &other_body).await, StatusCode::UNAUTHORIZED);
    let other_query = sign_as(&certs[1], "POST", 1, "to=2", &body, now_ms());
    assert_eq!(raw(&relay, "POST", 1, "to=0", body.clone(), &other_query).await, StatusCode::UNAUTHORIZED);
    let old = sign_as(&certs[1], "POST", 1, "to=0", &body, now_ms() - 60_000);
    assert_eq!(raw(&relay, "POST", 1, "to=0", body.clone(), &old).await, StatusCode::UNAUTHORIZED);
    // A certificate of another CA naming party 1.
    let foreign_ca =
        CertificateAuthority::generate("test CA", torcus_certs::Duration::days(1), OffsetDateTime::now_utc()).unwrap();
    let foreign = sign_as(&node_cert(&foreign_ca, 1), "POST", 1, "to=0", &body, now_ms());
    assert_eq!(raw(&relay, "POST", 1, "to=0", body.clone(), &foreign).await, StatusCode::UNAUTHORIZED);
    // A body other than the one signed for.
    let signed_for_other = sign_as(&certs[1], "POST", 1, "to=0", &frame::encode(&env(1, 0, 9)), now_ms());
    assert_eq!(raw(&relay, "POST", 1, "to=0", body.clone(), &signed_for_other).await, StatusCode::UNAUTHORIZED);
    // A good request, then the same one again, and then with another
    // signature over the same request (ECDSA signatures are randomized and
    // malleable: anyone who saw one can make another).
    let time = now_ms();
    let good = sign_as(&certs[1], "POST", 1, "to=0", &body, time);
    assert_eq!(raw(&relay, "POST", 1, "to=0", body.clone(), &good).await, StatusCode::ACCEPTED);
    assert_eq!(raw(&relay, "POST", 1, "to=0", body.clone(), &good).await, StatusCode::UNAUTHORIZED);
    let resigned = sign_as(&certs[1], "POST", 1, "to=0", &body, time);
    assert_ne!(resigned, good, "a second signature differs");
    assert_eq!(raw(&relay, "POST", 1, "to=0", body.clone(), &resigned).await, StatusCode::UNAUTHORIZED);
    assert_eq!(recv(&mut zero).await, env(1, 0, 2), "delivered once");

    // A client that is no node declares a large body and sends nothing: it
    // is refused at once, and takes none of the relay's reading budget.
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut slow = tokio::net::TcpStream::connect(relay.addr()).await.unwrap();
    let head = format!(
        "POST {MESSAGES_PATH}?to=0 HTTP/1.1\r\nhost: relay\r\n{PARTY_HEADER}: 1\r\n{CLUSTER_HEADER}: {CLUSTER}\r\ncontent-length: {}\r\n\r\n",
        frame::MAX_FRAME
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let mut answer = [0; 12];
    tokio::time::timeout(Duration::from_secs(5), slow.read_exact(&mut answer)).await.unwrap().unwrap();
    assert_eq!(&answer, b"HTTP/1.1 401", "refused before its body");

    assert_eq!(reason("unauthenticated"), 7.0);
    assert_eq!(reason("wrong_party"), 1.0);
    assert_eq!(reason("stale"), 1.0);
    assert_eq!(reason("replayed"), 2.0);
    // The honest nodes go on.
    one.transport.send(0, env(1, 0, 3)).await.unwrap();
    assert_eq!(recv(&mut zero).await, env(1, 0, 3));
}
