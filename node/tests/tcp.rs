//! The TCP transport on 127.0.0.1 with real sockets: messages arrive
//! complete and in order; forged, stale, replayed and spoofed messages are
//! dropped and counted; garbage, oversized frames and unknown dialers close
//! only their own connection; idle and surplus sockets cannot pile up.
//! Forged frames are built by hand with `sign_frame`, as an attacker would.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use ed25519_dalek::{SigningKey, VerifyingKey};
use prometheus::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use torcus_node::engine::Envelope;
use torcus_node::transport::frame::{self, MAX_FRAME};
use torcus_node::transport::tcp::{self, DEFAULT_WINDOW, SIGNATURE_OFFSET, TcpConfig, TcpTransport};
use torcus_node::transport::{Transport, TransportMetrics};

fn key(index: u16) -> SigningKey {
    SigningKey::from_bytes(&[index as u8 + 1; 32])
}

/// Public keys of parties `0..n`.
fn keys(n: u16) -> HashMap<u16, VerifyingKey> {
    (0..n).map(|i| (i, key(i).verifying_key())).collect()
}

struct Node {
    transport: Arc<TcpTransport>,
    incoming: mpsc::Receiver<Envelope>,
    metrics: TransportMetrics,
    registry: Registry,
    _stop: tokio_util::sync::DropGuard,
}

fn start(index: u16, identity: SigningKey, peer_keys: HashMap<u16, VerifyingKey>) -> Node {
    start_with_queue(index, identity, peer_keys, 1 << 16)
}

/// A node whose inbound queue holds `queue` envelopes: once that is full and
/// nobody takes from it, the node stops reading its connections.
fn start_with_queue(index: u16, identity: SigningKey, peer_keys: HashMap<u16, VerifyingKey>, queue: usize) -> Node {
    let registry = Registry::new();
    let metrics = TransportMetrics::register(&registry, "tcp").unwrap();
    let (tx, incoming) = mpsc::channel(queue);
    let stop = CancellationToken::new();
    let config = TcpConfig {
        me: index,
        listen: "127.0.0.1:0".parse().unwrap(),
        peers: HashMap::new(),
        identity,
        peer_keys,
        window: DEFAULT_WINDOW,
    };
    let transport = TcpTransport::bind(config, tx, metrics.clone(), stop.clone()).unwrap();
    Node { transport, incoming, metrics, registry, _stop: stop.drop_guard() }
}

/// `n` nodes, each knowing every other's address and key.
fn cluster(n: u16) -> Vec<Node> {
    let nodes: Vec<Node> = (0..n).map(|i| start(i, key(i), keys(n))).collect();
    for a in &nodes {
        for (j, b) in nodes.iter().enumerate() {
            a.transport.set_peer(j as u16, b.transport.local_addr().unwrap());
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

fn failures(node: &Node, reason: &str) -> u64 {
    node.metrics.connection_failures.with_label_values(&[reason]).get()
}

fn now_ms() -> u64 {
    tcp::unix_ms(SystemTime::now())
}

/// A fresh nonce for hand-made frames.
fn nonce() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1 << 40);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A frame from `sender` to `receiver` carrying `envelope`, signed by
/// party `signer`.
fn forged(signer: u16, sender: u16, receiver: u16, timestamp_ms: u64, envelope: &Envelope) -> Vec<u8> {
    tcp::sign_frame(&key(signer), sender, receiver, timestamp_ms, nonce(), &frame::encode(envelope))
}

/// An honest frame from `from` to `to`, signed now.
fn signed(from: u16, to: u16, envelope: &Envelope) -> Vec<u8> {
    forged(from, from, to, now_ms(), envelope)
}

fn hello(from: u16, to: u16) -> Vec<u8> {
    tcp::sign_frame(&key(from), from, to, now_ms(), nonce(), &[])
}

/// A raw socket to `node`.
async fn raw(node: &Node) -> TcpStream {
    TcpStream::connect(node.transport.local_addr().unwrap()).await.unwrap()
}

/// A raw socket to `node` (party 0, the one attacked in these tests) that
/// said hello as party `from`.
async fn raw_as(node: &Node, from: u16) -> TcpStream {
    let mut socket = raw(node).await;
    socket.write_all(&hello(from, 0)).await.unwrap();
    socket
}

/// The node closes `socket`: reading ends (EOF, or a reset when bytes were
/// left unread).
async fn assert_closed(socket: &mut TcpStream) {
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(8), socket.read(&mut buf)).await.expect("socket still open");
    assert!(matches!(read, Ok(0) | Err(_)), "the node wrote {read:?}");
}

/// Still open: a read neither ends nor fails for a while.
async fn assert_open(socket: &mut TcpStream) {
    let mut buf = [0u8; 64];
    assert!(tokio::time::timeout(Duration::from_millis(200), socket.read(&mut buf)).await.is_err(), "closed");
}

async fn recv(node: &mut Node) -> Envelope {
    tokio::time::timeout(Duration::from_secs(5), node.incoming.recv()).await.expect("nothing arrived").unwrap()
}

/// Waits until `condition` holds (metrics are counted by other tasks).
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    for _ in 0..250 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_arrives_once_and_in_order() {
    let mut nodes = cluster(3);
    let parties = nodes.iter_mut().map(|n| (Arc::clone(&n.transport), &mut n.incoming, &n.metrics)).collect();
    common::every_message_arrives_once_and_in_order(parties, 2000).await;
    for node in &nodes {
        for reason in ["bad_signature", "stale_timestamp", "replayed", "spoofed_sender", "rate_limited"] {
            assert_eq!(dropped(node, reason), 0, "{reason}");
        }
    }
}

#[tokio::test]
async fn a_bad_signature_is_dropped_and_closes_its_connection() {
    let mut nodes = cluster(3);
    let mut socket = raw_as(&nodes[0], 1).await;
    socket.write_all(&signed(1, 0, &env(1, 0, 0))).await.unwrap();
    let mut tampered = signed(1, 0, &env(1, 0, 1));
    tampered[4 + SIGNATURE_OFFSET] ^= 1;
    socket.write_all(&tampered).await.unwrap();
    assert_eq!(recv(&mut nodes[0]).await.seq, 0, "the honest message before it arrives");
    assert_closed(&mut socket).await;
    assert_eq!(dropped(&nodes[0], "bad_signature"), 1);

    // Party 2 keeps getting through, and so does party 1 over its own transport.
    nodes[2].transport.send(0, env(2, 0, 5)).await.unwrap();
    let got = recv(&mut nodes[0]).await;
    assert_eq!((got.from, got.seq), (2, 5));
    nodes[1].transport.send(0, env(1, 0, 6)).await.unwrap();
    let got = recv(&mut nodes[0]).await;
    assert_eq!((got.from, got.seq), (1, 6));
    assert_eq!(nodes[0].metrics.received.get(), 3);
    let text = prometheus::TextEncoder::new().encode_to_string(&nodes[0].registry.gather()).unwrap();
    assert!(text.contains(r#"torcus_p2p_messages_dropped_total{reason="bad_signature",transport="tcp"} 1"#), "{text}");
}

#[tokio::test]
async fn a_message_signed_for_another_receiver_is_refused() {
    let mut nodes = cluster(3);
    // Genuinely signed by party 1, but for party 2: replaying it to party 0 fails.
    let mut socket = raw_as(&nodes[0], 1).await;
    socket.write_all(&signed(1, 2, &env(1, 0, 0))).await.unwrap();
    assert_closed(&mut socket).await;
    assert_eq!(dropped(&nodes[0], "bad_signature"), 1);
    // Likewise a hello meant for party 2.
    let mut socket = raw(&nodes[0]).await;
    socket.write_all(&hello(1, 2)).await.unwrap();
    socket.write_all(&signed(1, 0, &env(1, 0, 1))).await.unwrap();
    assert_closed(&mut socket).await;
    assert_eq!(failures(&nodes[0], "bad_signature"), 1);
    assert_eq!(nodes[0].metrics.received.get(), 0);
    assert!(nodes[0].incoming.try_recv().is_err());
}

#[tokio::test]
async fn a_stale_timestamp_is_dropped_and_counted() {
    let mut nodes = cluster(2);
    let mut socket = raw_as(&nodes[0], 1).await;
    let late = now_ms() - DEFAULT_WINDOW.as_millis() as u64 - 1000;
    let early = now_ms() + DEFAULT_WINDOW.as_millis() as u64 + 1000;
    socket.write_all(&forged(1, 1, 0, late, &env(1, 0, 0))).await.unwrap();
    socket.write_all(&forged(1, 1, 0, early, &env(1, 0, 1))).await.unwrap();
    socket.write_all(&signed(1, 0, &env(1, 0, 2))).await.unwrap();
    assert_eq!(recv(&mut nodes[0]).await.seq, 2, "only the timely message arrives");
    assert_eq!(dropped(&nodes[0], "stale_timestamp"), 2);
    // A late message is not a forgery: the connection stays open.
    assert_open(&mut socket).await;
    assert_eq!(nodes[0].metrics.received.get(), 1);

    // A stale hello is refused outright.
    let mut socket = raw(&nodes[0]).await;
    socket.write_all(&tcp::sign_frame(&key(1), 1, 0, late, nonce(), &[])).await.unwrap();
    assert_closed(&mut socket).await;
    assert_eq!(failures(&nodes[0], "stale_timestamp"), 1);
}

#[tokio::test]
async fn a_replayed_frame_is_delivered_once() {
    let mut nodes = cluster(2);
    let mut socket = raw_as(&nodes[0], 1).await;
    let first = signed(1, 0, &env(1, 0, 0));
    socket.write_all(&first).await.unwrap();
    socket.write_all(&first).await.unwrap();
    socket.write_all(&signed(1, 0, &env(1, 0, 1))).await.unwrap();
    assert_eq!(recv(&mut nodes[0]).await.seq, 0);
    assert_eq!(recv(&mut nodes[0]).await.seq, 1);
    assert_eq!(dropped(&nodes[0], "replayed"), 1);
    assert_open(&mut socket).await;

    // Nonces are remembered per peer, not per connection.
    let mut again = raw_as(&nodes[0], 1).await;
    again.write_all(&first).await.unwrap();
    eventually("the second replay", || dropped(&nodes[0], "replayed") == 2).await;

    // A replayed hello opens nothing.
    let greeting = hello(1, 0);
    let mut original = raw(&nodes[0]).await;
    original.write_all(&greeting).await.unwrap();
    let mut copy = raw(&nodes[0]).await;
    copy.write_all(&greeting).await.unwrap();
    assert_closed(&mut copy).await;
    assert_eq!(failures(&nodes[0], "replayed"), 1);

    assert_eq!(nodes[0].metrics.received.get(), 2);
    assert!(nodes[0].incoming.try_recv().is_err(), "nothing extra");
}

#[tokio::test]
async fn a_message_claiming_another_party_is_dropped_and_counted() {
    let mut nodes = cluster(3);
    // Party 1 (by its key) sends an envelope that claims to come from party 2.
    nodes[1].transport.send(0, env(2, 0, 0)).await.unwrap();
    nodes[1].transport.send(0, env(1, 0, 1)).await.unwrap();
    let got = recv(&mut nodes[0]).await;
    assert_eq!((got.from, got.seq), (1, 1), "only the honest message arrives");
    assert_eq!(dropped(&nodes[0], "spoofed_sender"), 1);

    // A connection authenticated as party 1 relays a frame genuinely signed
    // by party 2: still not party 1's to send.
    let mut socket = raw_as(&nodes[0], 1).await;
    socket.write_all(&signed(2, 0, &env(2, 0, 2))).await.unwrap();
    socket.write_all(&signed(1, 0, &env(1, 0, 3))).await.unwrap();
    assert_eq!(recv(&mut nodes[0]).await.seq, 3);
    assert_eq!(dropped(&nodes[0], "spoofed_sender"), 2);
    assert_eq!(nodes[0].metrics.received.get(), 2);
    let text = prometheus::TextEncoder::new().encode_to_string(&nodes[0].registry.gather()).unwrap();
    assert!(text.contains(r#"torcus_p2p_messages_dropped_total{reason="spoofed_sender",transport="tcp"} 2"#), "{text}");
}

#[tokio::test]
async fn random_bytes_close_the_socket_and_the_node_keeps_serving() {
    let mut nodes = cluster(3);
    let junk: Vec<u8> = (0..2000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    // Instead of a hello.
    let mut socket = raw(&nodes[0]).await;
    socket.write_all(&junk).await.unwrap();
    assert_closed(&mut socket).await;
    assert_eq!(failures(&nodes[0], "malformed_hello"), 1);
    // After a valid hello, framed so that the length is plausible.
    let mut socket = raw_as(&nodes[0], 1).await;
    socket.write_all(&500u32.to_be_bytes()).await.unwrap();
    socket.write_all(&junk[..500]).await.unwrap();
    assert_closed(&mut socket).await;
    // Garbage in the sender field or the signature: unknown peer or forgery.
    eventually("the junk frame counted", || {
        dropped(&nodes[0], "bad_signature") + dropped(&nodes[0], "unknown_peer") == 1
    })
    .await;
    // A frame too short to hold a header.
    let mut socket = raw_as(&nodes[0], 1).await;
    socket.write_all(&3u32.to_be_bytes()).await.unwrap();
    socket.write_all(b"abc").await.unwrap();
    assert_closed(&mut socket).await;
    assert_eq!(dropped(&nodes[0], "malformed_frame"), 1);

    nodes[1].transport.send(0, env(1, 0, 7)).await.unwrap();
    assert_eq!(recv(&mut nodes[0]).await.seq, 7);
    assert_eq!(nodes[0].metrics.received.get(), 1);
}

#[tokio::test]
async fn an_oversized_length_prefix_closes_only_that_connection() {
    let mut nodes = cluster(3);
    // Before the hello: a hello has a fixed size, anything else is refused.
    let mut socket = raw(&nodes[0]).await;
    socket.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    assert_closed(&mut socket).await;
    assert_eq!(failures(&nodes[0], "malformed_hello"), 1);

    // After the hello, on one of two connections of party 1.
    let mut bystander = raw_as(&nodes[0], 1).await;
    let mut socket = raw_as(&nodes[0], 1).await;
    socket.write_all(&(MAX_FRAME as u32 + 1).to_be_bytes()).await.unwrap();
    socket.write_all(&[0; 64]).await.unwrap();
    assert_closed(&mut socket).await;
    assert_eq!(dropped(&nodes[0], "malformed_frame"), 1);

    // The other connection still delivers, and so does party 2.
    assert_open(&mut bystander).await;
    bystander.write_all(&signed(1, 0, &env(1, 0, 1))).await.unwrap();
    assert_eq!(recv(&mut nodes[0]).await.seq, 1);
    nodes[2].transport.send(0, env(2, 0, 2)).await.unwrap();
    let got = recv(&mut nodes[0]).await;
    assert_eq!((got.from, got.seq), (2, 2));
}

#[tokio::test]
async fn a_dialer_with_an_unknown_key_is_refused_at_hello() {
    let mut server = start(0, key(0), keys(3));
    // Claims to be party 1 but holds another key.
    let rogue = start(1, SigningKey::from_bytes(&[0xEE; 32]), HashMap::from([(0, key(0).verifying_key())]));
    rogue.transport.set_peer(0, server.transport.local_addr().unwrap());
    // The dialer may get as far as writing before the refusal lands.
    let _ = rogue.transport.send(0, env(1, 0, 0)).await;
    eventually("the refused hello", || failures(&server, "bad_signature") == 1).await;

    // A party index the node has no key for.
    let outsider = SigningKey::from_bytes(&[0xDD; 32]);
    let mut socket = raw(&server).await;
    socket.write_all(&tcp::sign_frame(&outsider, 7, 0, now_ms(), nonce(), &[])).await.unwrap();
    let sneaky = tcp::sign_frame(&outsider, 7, 0, now_ms(), nonce(), &frame::encode(&env(7, 0, 1)));
    socket.write_all(&sneaky).await.unwrap();
    assert_closed(&mut socket).await;
    assert_eq!(failures(&server, "unknown_peer"), 1);

    // A node dialing itself is no peer either.
    let mut socket = raw(&server).await;
    socket.write_all(&hello(0, 0)).await.unwrap();
    assert_closed(&mut socket).await;
    assert_eq!(failures(&server, "unknown_peer"), 2);

    assert_eq!(server.metrics.received.get(), 0);
    assert!(server.incoming.try_recv().is_err());
}

#[tokio::test]
async fn a_peer_may_hold_at_most_four_connections() {
    let mut nodes = cluster(2);
    let mut sockets = Vec::new();
    for _ in 0..4 {
        sockets.push(raw_as(&nodes[0], 1).await);
    }
    let mut fifth = raw_as(&nodes[0], 1).await;
    assert_closed(&mut fifth).await;
    assert_eq!(failures(&nodes[0], "connection_limit"), 1);
    for (seq, socket) in sockets.iter_mut().enumerate() {
        socket.write_all(&signed(1, 0, &env(1, 0, seq as u64))).await.unwrap();
        assert_eq!(recv(&mut nodes[0]).await.seq, seq as u64);
    }
    // Once one closes (and the node noticed), a new one is welcome.
    drop(sockets.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut sixth = raw_as(&nodes[0], 1).await;
    sixth.write_all(&signed(1, 0, &env(1, 0, 9))).await.unwrap();
    assert_eq!(recv(&mut nodes[0]).await.seq, 9);
    assert_eq!(failures(&nodes[0], "connection_limit"), 1);
}

#[tokio::test]
async fn sockets_awaiting_their_hello_are_capped_and_time_out() {
    let mut nodes = cluster(2);
    let mut idle = Vec::new();
    for _ in 0..16 {
        idle.push(raw(&nodes[0]).await);
    }
    // One more from the same address is closed at once.
    let mut surplus = raw(&nodes[0]).await;
    assert_closed(&mut surplus).await;
    assert_eq!(failures(&nodes[0], "pending_limit"), 1);

    // The idle ones are closed once the hello timeout passes.
    for socket in &mut idle {
        assert_closed(socket).await;
    }
    assert_eq!(failures(&nodes[0], "hello_timeout"), 16);

    nodes[1].transport.send(0, env(1, 0, 3)).await.unwrap();
    assert_eq!(recv(&mut nodes[0]).await.seq, 3);
}

#[tokio::test]
async fn a_broken_outbound_connection_is_re_established() {
    let mut nodes = cluster(2);
    nodes[1].transport.send(0, env(1, 0, 0)).await.unwrap();
    assert_eq!(recv(&mut nodes[0]).await.seq, 0);
    // Party 0 restarts on a new port: the old connection breaks.
    let old = nodes.remove(0);
    drop(old);
    let mut restarted = start(0, key(0), keys(2));
    nodes[0].transport.set_peer(0, restarted.transport.local_addr().unwrap());
    tokio::time::sleep(Duration::from_millis(200)).await;
    nodes[0].transport.send(0, env(1, 0, 1)).await.unwrap();
    assert_eq!(recv(&mut restarted).await.seq, 1);
}

#[tokio::test]
async fn close_stops_accepting_and_fails_later_sends() {
    let nodes = cluster(2);
    nodes[1].transport.send(0, env(1, 0, 0)).await.unwrap();
    let addr = nodes[0].transport.local_addr().unwrap();
    tokio::time::timeout(Duration::from_secs(5), nodes[0].transport.close()).await.expect("close hangs");
    assert!(TcpStream::connect(addr).await.is_err(), "still listening");
    assert!(nodes[0].transport.send(1, env(0, 1, 0)).await.is_err());
}

#[tokio::test]
async fn a_config_whose_identity_is_not_its_listed_key_is_refused() {
    let (tx, _rx) = mpsc::channel(1);
    let metrics = TransportMetrics::register(&Registry::new(), "tcp").unwrap();
    let config = TcpConfig {
        me: 1,
        listen: "127.0.0.1:0".parse().unwrap(),
        peers: HashMap::new(),
        identity: key(2),
        peer_keys: keys(3),
        window: DEFAULT_WINDOW,
    };
    let err = TcpTransport::bind(config, tx, metrics, CancellationToken::new()).unwrap_err();
    assert!(matches!(err, tcp::TcpError::IdentityMismatch(1)), "{err}");
}

/// A peer that keeps its connection open but stops reading: the kernel's
/// buffers fill and a write would wait for ever. Each send fails within
/// `SEND_TIMEOUT`, counted as `send_timeout`, and names the peer; sends to
/// the other peers go through meanwhile and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_fails_sends_within_the_deadline() {
    let sender = start(0, key(0), keys(3));
    let stalled = start_with_queue(1, key(1), keys(3), 1);
    let mut healthy = start(2, key(2), keys(3));
    for (j, peer) in [&sender, &stalled, &healthy].into_iter().enumerate() {
        sender.transport.set_peer(j as u16, peer.transport.local_addr().unwrap());
    }
    common::sends_to_a_stalled_peer_fail_within_the_deadline(
        Arc::clone(&sender.transport),
        &sender.metrics,
        &mut healthy.incoming,
        256 * 1024,
    )
    .await;
    drop(stalled);
}
