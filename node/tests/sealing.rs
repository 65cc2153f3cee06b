//! End-to-end sealing on real transports: what the relay stores and what a
//! TCP frame carries are ciphertext, and an envelope injected into the relay
//! in another party's name — in clear, or sealed with any key but that
//! party's — is dropped and counted as `unsealable`, while genuine ones
//! arrive intact.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use prometheus::Registry;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};
use torcus_node::engine::{Channel, Envelope};
use torcus_node::testing::RelayServer;
use torcus_node::transport::relay::{CLUSTER_HEADER, MESSAGES_PATH, PARTY_HEADER, RelayConfig, RelayTransport};
use torcus_node::transport::seal::{self, SealedTransport, Sealer};
use torcus_node::transport::tcp::{self, DEFAULT_WINDOW, TcpConfig, TcpTransport};
use torcus_node::transport::{Transport, TransportMetrics, frame};
use torcus_operator::relay::RelayLimits;
use zeroize::Zeroizing;

const CLUSTER: &str = "vault/demo";
/// What a keygen share might look like; must never be seen in transit.
const MARKER: &[u8] = b"SECRET-SHARE-MARKER-0123456789";

fn seal_seed(party: u16) -> Zeroizing<[u8; 32]> {
    Zeroizing::new([party as u8 + 50; 32])
}

/// Seal public keys of parties `0..3`.
fn publics() -> HashMap<u16, [u8; 32]> {
    (0..3).map(|i| (i, seal::public_key(&seal_seed(i)))).collect()
}

fn sealer(me: u16) -> Arc<Sealer> {
    Arc::new(Sealer::new(me, CLUSTER, seal_seed(me), &publics()).unwrap())
}

fn secret(from: u16, to: u16, seq: u64) -> Envelope {
    Envelope {
        session: [5; 32],
        channel: Channel::Protocol,
        from,
        to: Some(to),
        seq,
        payload: [MARKER, &seq.to_be_bytes()].concat(),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A node on the relay as `Args::run` builds one: its transport seals, and
/// an opener stands between what it receives and `incoming`.
struct Node {
    transport: SealedTransport<RelayTransport>,
    incoming: mpsc::Receiver<Envelope>,
    metrics: TransportMetrics,
    _stop: DropGuard,
}

fn relay_node(relay: SocketAddr, me: u16) -> Node {
    let metrics = TransportMetrics::register(&Registry::new(), "relay").unwrap();
    let (sealed_tx, sealed_rx) = mpsc::channel(1024);
    let (tx, incoming) = mpsc::channel(1024);
    let stop = CancellationToken::new();
    let config = RelayConfig { me, cluster: CLUSTER.into(), base_url: format!("http://{relay}"), signer: None };
    let relay = RelayTransport::start(config, sealed_tx, metrics.clone(), stop.clone());
    seal::spawn_opener(sealer(me), sealed_rx, metrics.dropped.clone(), tx);
    Node { transport: SealedTransport::new(relay, sealer(me)), incoming, metrics, _stop: stop.drop_guard() }
}

async fn post(relay: SocketAddr, party: u16, to: u16, envelope: &Envelope) -> reqwest::StatusCode {
    reqwest::Client::new()
        .post(format!("http://{relay}{MESSAGES_PATH}?to={to}"))
        .header(PARTY_HEADER, party)
        .header(CLUSTER_HEADER, CLUSTER)
        .body(frame::encode(envelope))
        .send()
        .await
        .unwrap()
        .status()
}

/// Everything queued for `party`, as the relay hands it out: the raw
/// response body and the envelopes in it.
async fn drain(relay: SocketAddr, party: u16) -> (Vec<u8>, Vec<Envelope>) {
    let body = reqwest::Client::new()
        .get(format!("http://{relay}{MESSAGES_PATH}?party={party}&wait_ms=0"))
        .header(CLUSTER_HEADER, CLUSTER)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    let mut envelopes = Vec::new();
    let mut rest = &body[..];
    while let Some((len, tail)) = rest.split_first_chunk::<4>() {
        let (frame_body, tail) = tail.split_at(u32::from_be_bytes(*len) as usize);
        envelopes.push(frame::decode(frame_body).unwrap());
        rest = tail;
    }
    (body, envelopes)
}

async fn recv(node: &mut Node) -> Envelope {
    tokio::time::timeout(Duration::from_secs(20), node.incoming.recv()).await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_only_ever_holds_ciphertext() {
    let server = RelayServer::start(RelayLimits::default()).await;
    let relay = server.addr();
    let node = relay_node(relay, 0);
    // Party 2 does not poll: what is queued for it stays for us to look at.
    node.transport.send(2, secret(0, 2, 1)).await.unwrap();
    node.transport.send(2, Envelope { to: None, ..secret(0, 2, 2) }).await.unwrap();
    let (stored, envelopes) = drain(relay, 2).await;
    assert_eq!(envelopes.len(), 2);
    assert!(!contains(&stored, MARKER), "the relay saw the plaintext");
    // Header in clear for routing; the payload opens for party 2 only.
    assert_eq!((envelopes[0].from, envelopes[0].to, envelopes[1].to), (0, Some(2), None));
    assert!(sealer(1).open(Envelope { to: Some(1), ..envelopes[0].clone() }).is_err());
    assert_eq!(sealer(2).open(envelopes[0].clone()).unwrap(), secret(0, 2, 1));
    assert_eq!(sealer(2).open(envelopes[1].clone()).unwrap(), Envelope { to: None, ..secret(0, 2, 2) });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_injected_into_the_relay_as_another_party_is_dropped_and_counted() {
    let server = RelayServer::start(RelayLimits::default()).await;
    let relay = server.addr();
    let mut receiver = relay_node(relay, 1);
    let sender = relay_node(relay, 0);
    // The relay's operator, or anyone who may post to it, knows every public
    // key but no node's seed. In party 0's name, in clear:
    assert!(post(relay, 0, 1, &secret(0, 1, 100)).await.is_success());
    // In party 2's name, sealed with a key of the forger's own:
    let mut forged_publics = publics();
    let forger_seed = Zeroizing::new([0xEE; 32]);
    forged_publics.insert(2, seal::public_key(&forger_seed));
    let forger = Sealer::new(2, CLUSTER, forger_seed, &forged_publics).unwrap();
    assert!(post(relay, 2, 1, &forger.seal(1, secret(2, 1, 101)).unwrap()).await.is_success());
    // A genuine envelope of party 0's, replayed as a broadcast:
    let genuine = sealer(0).seal(1, secret(0, 1, 102)).unwrap();
    assert!(post(relay, 0, 1, &Envelope { to: None, ..genuine }).await.is_success());
    // And then a real one, which arrives after them all.
    sender.transport.send(1, secret(0, 1, 7)).await.unwrap();
    assert_eq!(recv(&mut receiver).await, secret(0, 1, 7), "only the genuine envelope arrives, opened");
    assert_eq!(receiver.metrics.dropped.with_label_values(&["unsealable"]).get(), 3);
    assert_eq!(receiver.metrics.received.get(), 4, "the relay transport took them; the opener refused them");
    assert!(receiver.incoming.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_frame_carries_ciphertext_only() {
    let identity = |i: u16| SigningKey::from_bytes(&[i as u8 + 1; 32]);
    let peer_keys = (0..2).map(|i| (i, identity(i).verifying_key())).collect();
    let config = TcpConfig {
        me: 0,
        listen: "127.0.0.1:0".parse().unwrap(),
        peers: HashMap::new(),
        identity: identity(0),
        peer_keys,
        window: DEFAULT_WINDOW,
    };
    let (tx, _incoming) = mpsc::channel(16);
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let metrics = TransportMetrics::register(&Registry::new(), "tcp").unwrap();
    let tcp = TcpTransport::bind(config, tx, metrics, stop).unwrap();
    // Party 1 is a plain listener here: it sees exactly what is on the wire.
    let wiretap = TcpListener::bind("127.0.0.1:0").await.unwrap();
    tcp.set_peer(1, wiretap.local_addr().unwrap());

    // Unsealed, as before, the marker is in the frame: the tap does see it.
    tcp.send(1, secret(0, 1, 1)).await.unwrap();
    let (mut socket, _) = wiretap.accept().await.unwrap();
    let (_hello, wire) = (read_frame(&mut socket).await, read_frame(&mut socket).await);
    assert!(contains(&wire, MARKER));

    let sealed = SealedTransport::new(Arc::clone(&tcp), sealer(0));
    sealed.send(1, secret(0, 1, 2)).await.unwrap();
    let wire = read_frame(&mut socket).await;
    assert!(!contains(&wire, MARKER), "the TCP frame carries the plaintext");
    let envelope = frame::decode(&wire[4 + tcp::FRAME_HEADER..]).unwrap();
    assert_eq!(sealer(1).open(envelope).unwrap(), secret(0, 1, 2));
}

/// One length-prefixed frame from `socket`, prefix included.
async fn read_frame(socket: &mut TcpStream) -> Vec<u8> {
    let read = async {
        let mut len = [0u8; 4];
        socket.read_exact(&mut len).await.unwrap();
        let mut frame = len.to_vec();
        frame.resize(4 + u32::from_be_bytes(len) as usize, 0);
        socket.read_exact(&mut frame[4..]).await.unwrap();
        frame
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.unwrap()
}
