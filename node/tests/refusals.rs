//! What a node refuses to start with, as real processes.
//!
//! - A key share written by a cggmp21-based release: its aux info has
//!   another shape under CGGMP24, and the node says so and stops rather
//!   than reinterpret it; the share stays on the volume as it was.
//!
//! (What the image's binary refuses is in `image_binary.rs`: building it
//! takes both cores for minutes, so it runs in a test binary of its own, not
//! beside tests that wait on nodes.)
//!
//! And what a running node refuses: clients that open API connections and
//! never finish a handshake get a few slots of their own, not the node's.

use std::path::Path;
use std::time::Duration;

use torcus_node::testing::Cluster;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_torcus-node"))
}

/// The value of `torcus_node_api_refused_total{reason}` in node `i`'s metrics.
async fn api_refused(cluster: &Cluster, i: u16, reason: &str) -> f64 {
    let metrics = cluster.metrics(i).await;
    let prefix = format!("torcus_node_api_refused_total{{reason=\"{reason}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0.0, |v| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_from_one_address_leave_the_api_to_the_operator() {
    use torcus_node::tls_listener::{HANDSHAKE_TIMEOUT, MAX_HANDSHAKES_PER_ADDRESS};
    let cluster = Cluster::new(binary(), 3, 2, "quic").await;
    cluster.wait_ready().await;
    let port = cluster.config.peers[0].http_port;
    let attacker = |_| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        // Another loopback address than the harness's own client (127.0.0.1).
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        socket.connect(([127, 0, 0, 1], port).into()).await.unwrap()
    };
    // Connections that never send a ClientHello fill this address's slots.
    let mut stalled = Vec::new();
    for i in 0..MAX_HANDSHAKES_PER_ADDRESS {
        stalled.push(attacker(i).await);
    }
    let busy_before = api_refused(&cluster, 0, "busy").await;
    let handshakes_before = api_refused(&cluster, 0, "handshake").await;
    // One more from there is closed at once...
    let mut extra = attacker(0).await;
    let mut byte = [0; 1];
    let read = tokio::time::timeout(Duration::from_secs(2), tokio::io::AsyncReadExt::read(&mut extra, &mut byte)).await;
    assert!(matches!(read, Ok(Ok(0) | Err(_))), "the extra connection is closed: {read:?}");
    assert_eq!(api_refused(&cluster, 0, "busy").await, busy_before + 1.0);
    // ...while the operator is served.
    let keys = cluster.http.get(cluster.url(0, "/p2p/keys")).send().await.unwrap();
    assert_eq!(keys.status(), 200);
    // The stalled ones time out and are counted.
    tokio::time::sleep(HANDSHAKE_TIMEOUT + Duration::from_secs(1)).await;
    let handshakes = api_refused(&cluster, 0, "handshake").await;
    assert!(handshakes >= handshakes_before + MAX_HANDSHAKES_PER_ADDRESS as f64, "{handshakes}");
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cggmp21_key_share_stops_the_node_with_what_to_do() {
    let old = include_bytes!("fixtures/cggmp21-share.json");
    let mut cluster = Cluster::new(binary(), 3, 2, "quic").await;
    cluster.wait_ready().await;
    cluster.kill(1);
    cluster.put_share(1, "key-default", old);
    cluster.start(1);
    let status = cluster.wait_exit(1, Duration::from_secs(30)).expect("the node stops by itself");
    assert!(!status.success(), "{status}");
    let log = cluster.log(1);
    for expected in ["key-default", "cggmp21", "CGGMP24", "previous Torcus release", "generate a new key"] {
        assert!(log.contains(expected), "the log says {expected:?}:\n{log}");
    }
    assert_eq!(cluster.get_share(1, "key-default").as_deref(), Some(&old[..]), "the share is left as it was");

    // The other nodes are unaffected.
    for i in [0, 2] {
        let ready = cluster.http.get(cluster.plain_url(i, "/readyz")).send().await.unwrap();
        assert!(ready.status().is_success(), "node {i}");
    }
}

/// A store key other than the one the configuration names for the node (its
/// keys Secret patched after the operator read it, or a stale mount) is
/// never used: on a fresh volume, where nothing else would notice, the node
/// does not start and says why, so no share is ever sealed under it; with
/// the right key back it generates and signs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_key_the_configuration_does_not_name_stops_the_node() {
    let mut cluster = Cluster::new(binary(), 3, 2, "quic").await;
    cluster.wait_ready().await;
    cluster.kill(1);
    let key_file = cluster.tls_dir(1).join("store.key");
    let right = std::fs::read(&key_file).unwrap();
    std::fs::write(&key_file, hex::encode([0x66u8; 32])).unwrap();
    cluster.start(1);
    let status = cluster.wait_exit(1, Duration::from_secs(30)).expect("the node stops by itself");
    assert!(!status.success(), "{status}");
    let log = cluster.log(1);
    assert!(log.contains("store key is not the one the cluster configuration names for party 1"), "{log}");

    std::fs::write(&key_file, right).unwrap();
    cluster.start(1);
    cluster.wait_ready().await;
    cluster.keygen("default").await;
    let digest = [0x3c; 32];
    let body = cluster.sign("default", vec![0, 1], torcus_node::testing::digest(digest), vec![]).await;
    torcus_node::testing::verify(&body, &digest);
}
