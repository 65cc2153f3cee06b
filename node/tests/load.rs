//! Load test of every transport between three node processes: 20 400
//! protocol messages (16 B to 512 KiB) go through each of QUIC, TCP, the
//! HTTP relay and hybrid, and none may be lost, duplicated, reordered within
//! its session or altered. Another Rust MPC network gave up on QUIC after it
//! lost messages; this shows ours does not.
//!
//! # How it runs
//!
//! Each transport test writes a cluster directory the way the operator
//! would (a CA and node certificates, Ed25519 identities, seal keys,
//! `cluster.json`), serves the relay in-process for `http` and `hybrid` as
//! the operator does, and starts three copies of this very test binary
//! running only [`peer_process`] with `TORCUS_LOAD_PEER=<party>`. Without
//! that variable `peer_process` returns at once: in a plain `cargo test` it
//! is an empty test that passes.
//!
//! A peer builds its transport as `Args::run` does (the same constructors,
//! channels, sealing wrapper and opener), binds port 0 on 127.0.0.1 and
//! publishes the address in the directory. Once all three are up, every peer
//! sends [`PER_STREAM`] envelopes to each other peer in each of
//! [`SESSIONS`] sessions, one task per (session, recipient), so sessions and
//! recipients race while each stream stays in order. A sender numbers its
//! envelopes per session across both recipients: the `i`-th envelope for
//! the recipient at position `p` of its two peers has `seq = 2i + p`. The
//! payload's length and bytes are a function of (session, from, to, seq) —
//! SHA-256 in counter mode — so the receiver checks each byte against what
//! the header says it is. Each peer writes a JSON report of what it sent
//! and got, and of its transport counters; the test reads the three
//! reports and checks them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use ed25519_dalek::SigningKey;
use prometheus::{IntCounterVec, Registry};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use torcus_certs::{CertificateAuthority, OffsetDateTime, SecretPem};
use torcus_contract::ClusterConfig;
use torcus_node::engine::{Channel, Envelope};
use torcus_node::testing::{RelayServer, samples, write_node_tls};
use torcus_node::transport::any::AnyTransport;
use torcus_node::transport::hybrid::HybridTransport;
use torcus_node::transport::quic::{QuicConfig, QuicTransport};
use torcus_node::transport::relay::{RelayConfig, RelayTransport};
use torcus_node::transport::seal::{self, SealedTransport, Sealer};
use torcus_node::transport::tcp::{DEFAULT_WINDOW, TcpConfig, TcpTransport};
use torcus_node::transport::{Transport, TransportMetrics};
use torcus_operator::relay::RelayLimits;

/// Node processes.
const PARTIES: u16 = 3;
/// Sessions every peer sends in, concurrently.
const SESSIONS: usize = 2;
/// Envelopes per (session, sender, recipient): 3 × 2 × 2 × 1 700 = 20 400
/// per transport, 3 400 per ordered pair of nodes.
const PER_STREAM: u64 = 1_700;
/// How long the test waits for its peer processes.
const PARENT_DEADLINE: Duration = Duration::from_secs(180);
/// How long a peer runs at most, start-up and shutdown included.
const PEER_DEADLINE: Duration = Duration::from_secs(160);
/// How long a peer waits for the others at each rendezvous.
const RENDEZVOUS: Duration = Duration::from_secs(30);
/// A receiver that got nothing for this long stops waiting.
const IDLE: Duration = Duration::from_secs(30);
/// How long a receiver keeps listening after the last expected envelope,
/// for duplicates.
const LINGER: Duration = Duration::from_millis(500);

/// Environment of a peer process: its party index; without it,
/// [`peer_process`] does nothing.
const ENV_PEER: &str = "TORCUS_LOAD_PEER";
/// Environment of a peer process: the cluster directory.
const ENV_DIR: &str = "TORCUS_LOAD_DIR";
/// Environment of a peer process: the transport mode.
const ENV_MODE: &str = "TORCUS_LOAD_MODE";

/// One load test at a time: three processes of one transport already share
/// the two cores, and each throughput figure should be its own.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_loses_duplicates_and_reorders_nothing_between_three_processes() {
    load("quic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_loses_duplicates_and_reorders_nothing_between_three_processes() {
    load("tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_relay_loses_duplicates_and_reorders_nothing_between_three_processes() {
    load("http").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_loses_duplicates_and_reorders_nothing_between_three_processes() {
    load("hybrid").await;
}

/// The body of a peer process, which the transport tests start as
/// `<this binary> --exact peer_process --nocapture` with [`ENV_PEER`],
/// [`ENV_DIR`] and [`ENV_MODE`] set. Without [`ENV_PEER`] (any ordinary
/// test run) it returns at once and passes.
#[test]
fn peer_process() {
    let Ok(party) = std::env::var(ENV_PEER) else { return };
    let me: u16 = party.parse().expect("TORCUS_LOAD_PEER is a party index");
    let dir = PathBuf::from(std::env::var(ENV_DIR).expect("TORCUS_LOAD_DIR is set"));
    let mode = std::env::var(ENV_MODE).expect("TORCUS_LOAD_MODE is set");
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn,torcus_node=info"))
        .try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let report = runtime.block_on(async {
        tokio::time::timeout(PEER_DEADLINE, run_peer(me, &mode, &dir))
            .await
            .unwrap_or_else(|_| panic!("peer {me} ran out of time"))
            .unwrap_or_else(|e| panic!("peer {me}: {e:#}"))
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    write_atomically(&dir.join(format!("report-{me}.json")), &serde_json::to_vec_pretty(&report).unwrap()).unwrap();
}

/// Runs the three peers of `mode` and checks their reports.
async fn load(mode: &str) {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let relay = match mode {
        "http" | "hybrid" => Some(RelayServer::start(RelayLimits::default()).await),
        _ => None,
    };
    write_cluster(dir.path(), mode, relay.as_ref().map(|r| r.url()));

    let started = Instant::now();
    let mut peers = Peers::spawn(dir.path(), mode);
    let statuses = peers.wait(PARENT_DEADLINE).await;
    let wall = started.elapsed();
    let logs = || peers.logs();
    for (party, status) in statuses.iter().enumerate() {
        match status {
            Some(status) if status.success() => {}
            Some(status) => panic!("{mode}: peer {party} failed ({status})\n{}", logs()),
            None => panic!("{mode}: peer {party} still running after {PARENT_DEADLINE:?}; killed\n{}", logs()),
        }
    }
    let reports: Vec<Report> = (0..PARTIES)
        .map(|i| {
            let path = dir.path().join(format!("report-{i}.json"));
            let text = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}\n{}", path.display(), logs()));
            serde_json::from_slice(&text).unwrap()
        })
        .collect();

    let totals = Totals::of(&reports);
    let expected = u64::from(PARTIES) * u64::from(PARTIES - 1) * SESSIONS as u64 * PER_STREAM;
    let summary = totals.summary(mode, wall);
    println!("{summary}");
    if let Some(relay) = &relay {
        println!("load[{mode}]: relay counters {:?}", relay.nonzero_samples());
    }
    let detail = || format!("{summary}\n{}\n{}", serde_json::to_string_pretty(&reports).unwrap(), logs());
    assert!(expected >= 10_000, "the issue asks for at least 10 000 messages");
    assert_eq!(totals.send_errors, 0, "{mode}: sends failed\n{}", detail());
    assert_eq!(totals.sent, expected, "{mode}: not everything was sent\n{}", detail());
    assert_eq!(totals.distinct, totals.sent, "{mode}: lost messages\n{}", detail());
    assert_eq!(totals.delivered, totals.sent, "{mode}: extra deliveries\n{}", detail());
    assert_eq!(totals.duplicates, 0, "{mode}: duplicated messages\n{}", detail());
    assert_eq!(totals.out_of_order, 0, "{mode}: reordered within a session\n{}", detail());
    assert_eq!(totals.checksum_failures, 0, "{mode}: altered messages\n{}", detail());
    assert_eq!(totals.unexpected, 0, "{mode}: misaddressed or unknown messages\n{}", detail());
    assert_eq!(totals.dropped, 0.0, "{mode}: the transports dropped messages\n{}", detail());
    if let Some(relay) = &relay {
        assert_eq!(relay.sample("torcus_relay_expired_total"), 0.0, "{mode}: the relay expired messages");
        assert_eq!(relay.sample("torcus_relay_queued_messages"), 0.0, "{mode}: left in the relay");
    }
}

/// What one peer process saw; written as `report-<party>.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Report {
    party: u16,
    mode: String,
    /// Per (session, recipient).
    sent: Vec<SendReport>,
    /// Per (session, sender).
    received: Vec<StreamReport>,
    /// Envelopes of no known session or stream, not for this party, or not
    /// protocol traffic.
    unexpected: u64,
    /// Dialing a peer ahead of the first message failed (not fatal).
    connect_errors: Vec<String>,
    /// Unix time in ms when this peer started sending.
    first_send_ms: u64,
    /// Unix time in ms when the last expected envelope arrived.
    last_receive_ms: u64,
    /// Counters of the transport's registry (`name{labels}` → value).
    metrics: BTreeMap<String, f64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct SendReport {
    session: usize,
    to: u16,
    sent: u64,
    bytes: u64,
    errors: u64,
    first_error: Option<String>,
    /// Whether the sending task ended (rather than being abandoned).
    finished: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct StreamReport {
    session: usize,
    from: u16,
    /// Envelopes handed over, duplicates included.
    delivered: u64,
    /// Different envelopes handed over.
    distinct: u64,
    /// Envelopes handed over again.
    duplicates: u64,
    /// Envelopes that arrived after a later one of the same stream.
    out_of_order: u64,
    /// Envelopes never handed over.
    missing: u64,
    /// Envelopes whose payload is not what their header says.
    checksum_failures: u64,
    bytes: u64,
    /// The first thing that went wrong, for the failure message.
    first_problem: Option<String>,
}

/// The reports of all peers, added up.
#[derive(Debug, Default)]
struct Totals {
    sent: u64,
    send_errors: u64,
    delivered: u64,
    distinct: u64,
    duplicates: u64,
    out_of_order: u64,
    checksum_failures: u64,
    unexpected: u64,
    bytes: u64,
    dropped: f64,
    first_send_ms: u64,
    last_receive_ms: u64,
    /// Counters other than the sent/received ones that are not zero
    /// (connection failures, hybrid paths), summed over the peers.
    notable: BTreeMap<String, f64>,
}

impl Totals {
    fn of(reports: &[Report]) -> Self {
        let mut totals = Self { first_send_ms: u64::MAX, ..Self::default() };
        for report in reports {
            for sent in &report.sent {
                totals.sent += sent.sent;
                totals.send_errors += sent.errors + u64::from(!sent.finished);
            }
            for stream in &report.received {
                totals.delivered += stream.delivered;
                totals.distinct += stream.distinct;
                totals.duplicates += stream.duplicates;
                totals.out_of_order += stream.out_of_order;
                totals.checksum_failures += stream.checksum_failures;
                totals.bytes += stream.bytes;
            }
            totals.unexpected += report.unexpected;
            totals.first_send_ms = totals.first_send_ms.min(report.first_send_ms);
            totals.last_receive_ms = totals.last_receive_ms.max(report.last_receive_ms);
            for (name, value) in &report.metrics {
                if name.starts_with("torcus_p2p_messages_dropped_total") {
                    totals.dropped += value;
                }
                let routine = name.starts_with("torcus_p2p_messages_sent_total")
                    || name.starts_with("torcus_p2p_messages_received_total");
                if !routine && *value != 0.0 {
                    *totals.notable.entry(name.clone()).or_default() += value;
                }
            }
        }
        totals
    }

    /// Counts and throughput, for the log and the issue.
    fn summary(&self, mode: &str, wall: Duration) -> String {
        let seconds = Duration::from_millis(self.last_receive_ms.saturating_sub(self.first_send_ms)).as_secs_f64();
        let rate = |n: f64| if seconds > 0.0 { n / seconds } else { 0.0 };
        format!(
            "load[{mode}]: {} sent, {} delivered ({} distinct), {} duplicated, {} reordered, {} altered, {} \
             unexpected, {} dropped; {:.1} MB in {seconds:.2} s from first send to last receipt: {:.0} msg/s, \
             {:.1} MB/s (payload generation and checks included; {:.1} s with process start-up); counters: {:?}",
            self.sent,
            self.delivered,
            self.distinct,
            self.duplicates,
            self.out_of_order,
            self.checksum_failures,
            self.unexpected,
            self.dropped,
            self.bytes as f64 / 1e6,
            rate(self.delivered as f64),
            rate(self.bytes as f64 / 1e6),
            wall.as_secs_f64(),
            self.notable,
        )
    }
}

// ---------------------------------------------------------------------------
// The test process: cluster directory, relay, peer processes.

/// Writes what the operator hands each node: `cluster.json`, and per party
/// `tls-<i>/` with certificate, key, CA, Ed25519 identity and seal seed.
fn write_cluster(dir: &Path, mode: &str, relay_url: Option<String>) {
    let ca = CertificateAuthority::generate("load test CA", torcus_certs::Duration::days(1), OffsetDateTime::now_utc())
        .unwrap();
    let mut config = ClusterConfig::sample("demo", "vault", PARTIES, 2);
    config.transport = mode.to_owned();
    config.registry_url = relay_url;
    let identities: Vec<SigningKey> = (0..PARTIES).map(|i| SigningKey::from_bytes(&[100 + i as u8; 32])).collect();
    let seal_seeds: Vec<[u8; 32]> = (0..PARTIES).map(|i| [200 + i as u8; 32]).collect();
    for (i, peer) in config.peers.iter_mut().enumerate() {
        // The TLS name; the address comes from the peer's `addr-<i>` file,
        // as a node takes it from the registry when DNS does not resolve.
        peer.host = format!("node-{i}");
        if mode == "tcp" {
            peer.identity_key = Some(hex::encode(identities[i].verifying_key().as_bytes()));
        }
        if mode != "quic" {
            peer.seal_key = Some(hex::encode(seal::public_key(&seal_seeds[i])));
        }
    }
    std::fs::write(dir.join("cluster.json"), serde_json::to_vec(&config).unwrap()).unwrap();
    for i in 0..PARTIES {
        let tls = dir.join(format!("tls-{i}"));
        write_node_tls(&tls, &ca, i, &identities[usize::from(i)], &seal_seeds[usize::from(i)]);
    }
}

/// The peer processes of one test; killed if still running when dropped.
struct Peers {
    dir: PathBuf,
    children: Vec<Option<Child>>,
}

impl Peers {
    fn spawn(dir: &Path, mode: &str) -> Self {
        let exe = std::env::current_exe().unwrap();
        let children = (0..PARTIES)
            .map(|i| {
                let log = std::fs::File::create(dir.join(format!("peer-{i}.log"))).unwrap();
                let child = Command::new(&exe)
                    .args(["--exact", "peer_process", "--nocapture", "--test-threads=1"])
                    .env(ENV_PEER, i.to_string())
                    .env(ENV_DIR, dir)
                    .env(ENV_MODE, mode)
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().unwrap())
                    .stderr(log)
                    .spawn()
                    .unwrap();
                Some(child)
            })
            .collect();
        Self { dir: dir.to_owned(), children }
    }

    /// Waits until every peer exits or `limit` passes; the exit statuses,
    /// `None` for a peer killed at the limit.
    async fn wait(&mut self, limit: Duration) -> Vec<Option<ExitStatus>> {
        let deadline = Instant::now() + limit;
        let mut statuses = vec![None; self.children.len()];
        while Instant::now() < deadline && statuses.iter().any(Option::is_none) {
            for (status, child) in statuses.iter_mut().zip(&mut self.children) {
                if status.is_none()
                    && let Some(child) = child
                {
                    *status = child.try_wait().unwrap();
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.kill();
        statuses
    }

    /// Kills the peers still running.
    fn kill(&mut self) {
        for mut child in self.children.iter_mut().filter_map(Option::take) {
            if child.try_wait().ok().flatten().is_none() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }

    /// The end of every peer's log.
    fn logs(&self) -> String {
        (0..PARTIES)
            .map(|i| {
                let log = std::fs::read_to_string(self.dir.join(format!("peer-{i}.log"))).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("--- peer {i} (last lines) ---\n{}", tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// A peer process.

/// Builds the transport, meets the other peers, sends and receives
/// everything, meets them again (so nobody closes while its messages are in
/// flight) and reports.
async fn run_peer(me: u16, mode: &str, dir: &Path) -> anyhow::Result<Report> {
    let node = build_node(me, mode, dir).context("building the transport")?;
    let address = node.local_addr.map_or_else(|| "relay".to_owned(), |a| a.to_string());
    write_atomically(&dir.join(format!("addr-{me}")), address.as_bytes())?;
    let addresses = rendezvous(dir, "addr").await?;

    let mut report = Report { party: me, mode: mode.to_owned(), ..Report::default() };
    if node.transport.needs_addresses() {
        for peer in others(me) {
            let addr: SocketAddr = addresses[usize::from(peer)].parse().context("a peer's address")?;
            node.transport.set_peer(peer, addr, &node.config.peers[usize::from(peer)].host);
            // As a starting node does; a failure here is not fatal there either.
            if let Err(error) = node.transport.connect(peer).await {
                report.connect_errors.push(format!("party {peer}: {error}"));
            }
        }
    }
    write_atomically(&dir.join(format!("ready-{me}")), b"")?;
    rendezvous(dir, "ready").await?;

    report.first_send_ms = unix_ms();
    let mut senders = Vec::new();
    for session in 0..SESSIONS {
        for to in others(me) {
            let task = tokio::spawn(send_stream(Arc::clone(&node.transport), mode.to_owned(), session, me, to));
            senders.push((session, to, task));
        }
    }
    let Node { transport, mut incoming, registry, stop, .. } = node;
    let mut tracker = Tracker::new(me, mode);
    report.last_receive_ms = tracker.receive(&mut incoming).await;
    report.unexpected = tracker.unexpected;
    report.received = tracker.streams;

    let join_by = tokio::time::Instant::now() + RENDEZVOUS;
    for (session, to, task) in senders {
        let abort = task.abort_handle();
        match tokio::time::timeout_at(join_by, task).await {
            Ok(Ok(sent)) => report.sent.push(sent),
            Ok(Err(error)) => bail!("a sending task failed: {error}"),
            Err(_) => {
                abort.abort();
                let first_error = Some("still sending; abandoned".into());
                report.sent.push(SendReport { session, to, first_error, ..SendReport::default() });
            }
        }
    }
    write_atomically(&dir.join(format!("done-{me}")), b"")?;
    rendezvous(dir, "done").await?;
    // Counted while every transport is still open, so that the counts are
    // of the exchange alone, not of the shutdown.
    report.metrics = samples(&registry);
    write_atomically(&dir.join(format!("counted-{me}")), b"")?;
    let counted = rendezvous(dir, "counted").await;
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), transport.close()).await;
    counted?;
    Ok(report)
}

/// A peer's transport, built as `Args::run` builds it.
struct Node {
    config: ClusterConfig,
    transport: Arc<AnyTransport>,
    /// Where opened envelopes arrive (what the node's router reads).
    incoming: mpsc::Receiver<Envelope>,
    registry: Registry,
    stop: CancellationToken,
    /// The bound peer-to-peer address; `None` on the relay alone.
    local_addr: Option<SocketAddr>,
}

/// Builds the transport of `mode` for party `me` from the cluster directory,
/// with the same constructors, channel sizes, sealing wrapper and opener as
/// `Args::run`; only the listen port differs (0, published afterwards).
fn build_node(me: u16, mode: &str, dir: &Path) -> anyhow::Result<Node> {
    let tls_dir = dir.join(format!("tls-{me}"));
    let identity = torcus_node::Identity::load(me, &dir.join("cluster.json"), &tls_dir)?;
    let cluster = identity.config;
    anyhow::ensure!(cluster.transport == mode, "cluster.json is for {}", cluster.transport);
    let read = |name: &str| std::fs::read_to_string(tls_dir.join(name)).with_context(|| name.to_owned());
    let cert_chain_pem = read("tls.crt")?;
    let key = SecretPem::new(read("tls.key")?);
    let trust_bundle_pem = read("ca.crt")?;
    let listen: SocketAddr = "127.0.0.1:0".parse()?;
    let registry = Registry::new();
    let stop = CancellationToken::new();
    let (incoming_tx, incoming) = mpsc::channel(1 << 14);
    let (sealed_tx, sealed_rx) = mpsc::channel(1 << 14);
    let sealer = match mode {
        "tcp" | "http" | "hybrid" => {
            let seed = seal::read_seed(&tls_dir.join("seal.key"))?;
            Some(Arc::new(Sealer::from_config(me, &cluster, seed)?))
        }
        _ => None,
    };
    let quic = |incoming_tx: mpsc::Sender<Envelope>| -> anyhow::Result<Arc<QuicTransport>> {
        let config = QuicConfig {
            me,
            namespace: cluster.namespace.clone(),
            cluster: cluster.cluster.clone(),
            listen,
            peers: Default::default(),
            cert_chain_pem: cert_chain_pem.clone(),
            key: key.clone(),
            trust_bundle_pem: trust_bundle_pem.clone(),
        };
        let metrics = TransportMetrics::register(&registry, "quic")?;
        Ok(QuicTransport::bind(config, incoming_tx, metrics, stop.clone())?)
    };
    let relay = |incoming_tx: mpsc::Sender<Envelope>| -> anyhow::Result<(Arc<RelayTransport>, IntCounterVec)> {
        let base_url = cluster.registry_url.clone().context("http without a registry URL")?;
        let cluster_name = format!("{}/{}", cluster.namespace, cluster.cluster);
        let config = RelayConfig { me, cluster: cluster_name, base_url, signer: None };
        let metrics = TransportMetrics::register(&registry, "relay")?;
        let dropped = metrics.dropped.clone();
        Ok((RelayTransport::start(config, incoming_tx, metrics, stop.clone()), dropped))
    };
    let (transport, unsealable, local_addr) = match mode {
        "quic" => {
            let quic = quic(incoming_tx.clone())?;
            let addr = quic.local_addr()?;
            (AnyTransport::Quic(quic), None, Some(addr))
        }
        "http" => {
            let (relay, dropped) = relay(sealed_tx)?;
            (AnyTransport::Relay(relay), Some(dropped), None)
        }
        "hybrid" => {
            let primary = quic(sealed_tx.clone())?;
            let addr = primary.local_addr()?;
            let (fallback, dropped) = relay(sealed_tx)?;
            let hybrid = HybridTransport::new(primary, fallback, &registry)?;
            (AnyTransport::Hybrid(Arc::new(hybrid)), Some(dropped), Some(addr))
        }
        "tcp" => {
            let seed = read("identity.key")?;
            let bytes: [u8; 32] = hex::decode(seed.trim())?.try_into().map_err(|_| anyhow::anyhow!("identity.key"))?;
            let identity = SigningKey::from_bytes(&bytes);
            let mut peer_keys = std::collections::HashMap::new();
            for peer in &cluster.peers {
                let hex_key = peer.identity_key.as_deref().context("no identity key")?;
                let bytes: [u8; 32] = hex::decode(hex_key)?.try_into().map_err(|_| anyhow::anyhow!("identity key"))?;
                peer_keys.insert(peer.index, ed25519_dalek::VerifyingKey::from_bytes(&bytes)?);
            }
            let config =
                TcpConfig { me, listen, peers: Default::default(), identity, peer_keys, window: DEFAULT_WINDOW };
            let metrics = TransportMetrics::register(&registry, "tcp")?;
            let dropped = metrics.dropped.clone();
            let tcp = TcpTransport::bind(config, sealed_tx, metrics, stop.clone())?;
            let addr = tcp.local_addr()?;
            (AnyTransport::Tcp(tcp), Some(dropped), Some(addr))
        }
        other => bail!("unknown transport {other:?}"),
    };
    let transport = match (sealer, unsealable) {
        (Some(sealer), Some(dropped)) => {
            seal::spawn_opener(Arc::clone(&sealer), sealed_rx, dropped, incoming_tx);
            AnyTransport::Sealed(Arc::new(SealedTransport::new(Arc::new(transport), sealer)))
        }
        _ => transport,
    };
    Ok(Node { config: cluster, transport: Arc::new(transport), incoming, registry, stop, local_addr })
}

/// Sends the [`PER_STREAM`] envelopes of one (session, recipient), in order.
async fn send_stream(transport: Arc<AnyTransport>, mode: String, session: usize, me: u16, to: u16) -> SendReport {
    let id = session_id(&mode, session);
    let position = position(me, to);
    let mut report = SendReport { session, to, ..SendReport::default() };
    for i in 0..PER_STREAM {
        let seq = 2 * i + position;
        let payload = payload(&id, me, to, seq);
        let len = payload.len() as u64;
        let envelope = Envelope { session: id, channel: Channel::Protocol, from: me, to: Some(to), seq, payload };
        match transport.send(to, envelope).await {
            Ok(()) => {
                report.sent += 1;
                report.bytes += len;
            }
            Err(error) => {
                report.errors += 1;
                report.first_error.get_or_insert_with(|| format!("seq {seq}: {error}"));
            }
        }
    }
    report.finished = true;
    report
}

/// What a receiver has seen of each (session, sender).
struct Tracker {
    me: u16,
    sessions: Vec<[u8; 32]>,
    streams: Vec<StreamReport>,
    /// Per stream, which of its envelopes came, by index `seq / 2`.
    seen: Vec<Vec<bool>>,
    /// Per stream, the highest index that came.
    highest: Vec<Option<u64>>,
    unexpected: u64,
}

impl Tracker {
    fn new(me: u16, mode: &str) -> Self {
        let mut streams = Vec::new();
        for session in 0..SESSIONS {
            for from in others(me) {
                streams.push(StreamReport {
                    session,
                    from,
                    delivered: 0,
                    distinct: 0,
                    duplicates: 0,
                    out_of_order: 0,
                    missing: PER_STREAM,
                    checksum_failures: 0,
                    bytes: 0,
                    first_problem: None,
                });
            }
        }
        Self {
            me,
            sessions: (0..SESSIONS).map(|s| session_id(mode, s)).collect(),
            seen: streams.iter().map(|_| vec![false; PER_STREAM as usize]).collect(),
            highest: vec![None; streams.len()],
            streams,
            unexpected: 0,
        }
    }

    /// Receives until every expected envelope came (and [`LINGER`] more),
    /// nothing came for [`IDLE`], or `incoming` closed; the Unix time in ms
    /// of the last expected envelope.
    async fn receive(&mut self, incoming: &mut mpsc::Receiver<Envelope>) -> u64 {
        let expected = self.streams.len() as u64 * PER_STREAM;
        let mut distinct = 0;
        let mut last = unix_ms();
        while distinct < expected {
            match tokio::time::timeout(IDLE, incoming.recv()).await {
                Ok(Some(envelope)) => {
                    if self.record(envelope) {
                        distinct += 1;
                        last = unix_ms();
                    }
                }
                Ok(None) | Err(_) => return last,
            }
        }
        let linger = tokio::time::Instant::now() + LINGER;
        while let Ok(Some(envelope)) = tokio::time::timeout_at(linger, incoming.recv()).await {
            self.record(envelope);
        }
        last
    }

    /// Checks one envelope; whether it is one not seen before.
    fn record(&mut self, envelope: Envelope) -> bool {
        let session = self.sessions.iter().position(|s| *s == envelope.session);
        let from = envelope.from;
        let stream = session.and_then(|session| {
            self.streams.iter().position(|s| s.session == session && s.from == from && from != self.me)
        });
        let (Some(stream), Some(to)) = (stream, envelope.to) else {
            self.unexpected += 1;
            return false;
        };
        let seq = envelope.seq;
        let index = seq / 2;
        if to != self.me
            || envelope.channel != Channel::Protocol
            || seq % 2 != position(from, self.me)
            || index >= PER_STREAM
        {
            self.unexpected += 1;
            return false;
        }
        let report = &mut self.streams[stream];
        report.delivered += 1;
        let seen = &mut self.seen[stream][index as usize];
        if *seen {
            report.duplicates += 1;
            report.first_problem.get_or_insert_with(|| format!("seq {seq} again"));
            return false;
        }
        *seen = true;
        report.distinct += 1;
        report.missing -= 1;
        report.bytes += envelope.payload.len() as u64;
        let highest = &mut self.highest[stream];
        if let Some(h) = *highest
            && index < h
        {
            report.out_of_order += 1;
            report.first_problem.get_or_insert_with(|| format!("seq {seq} after seq {}", 2 * h + seq % 2));
        }
        *highest = Some(highest.map_or(index, |h| h.max(index)));
        if envelope.payload != payload(&envelope.session, from, to, seq) {
            report.checksum_failures += 1;
            report.first_problem.get_or_insert_with(|| format!("seq {seq}: payload altered"));
        }
        true
    }
}

// ---------------------------------------------------------------------------
// Helpers.

/// The parties other than `me`, in index order.
fn others(me: u16) -> impl Iterator<Item = u16> {
    (0..PARTIES).filter(move |p| *p != me)
}

/// Where `to` is among the peers of `from` (0 or 1): the parity of the
/// sequence numbers `from` gives it.
fn position(from: u16, to: u16) -> u64 {
    others(from).position(|p| p == to).expect("a peer") as u64
}

/// The id of session `index` of a run of `mode`.
fn session_id(mode: &str, index: usize) -> [u8; 32] {
    Sha256::new()
        .chain_update(b"torcus-load-session")
        .chain_update(mode.as_bytes())
        .chain_update((index as u64).to_be_bytes())
        .finalize()
        .into()
}

/// The payload of envelope (session, from, to, seq): [`payload_len`] bytes
/// of SHA-256 in counter mode over those fields, so any altered byte, any
/// truncation and any envelope handed over under another header shows.
fn payload(session: &[u8; 32], from: u16, to: u16, seq: u64) -> Vec<u8> {
    let len = payload_len(session, from, to, seq);
    // 44 bytes of fields and 4 of counter: one compression per block.
    let fields = Sha256::new()
        .chain_update(session)
        .chain_update(from.to_be_bytes())
        .chain_update(to.to_be_bytes())
        .chain_update(seq.to_be_bytes());
    let mut out = Vec::with_capacity(len + 32);
    let mut block = 0u32;
    while out.len() < len {
        out.extend_from_slice(&fields.clone().chain_update(block.to_be_bytes()).finalize());
        block += 1;
    }
    out.truncate(len);
    out
}

/// 16 B to 64 KiB, log-uniform, for most envelopes; about one in 512
/// between 256 and 512 KiB; and in every stream the extremes (16 B, 64 KiB
/// and 512 KiB) among its first envelopes.
fn payload_len(session: &[u8; 32], from: u16, to: u16, seq: u64) -> usize {
    match seq / 2 {
        0 => return 16,
        1 => return 64 << 10,
        2 => return 512 << 10,
        _ => {}
    }
    let digest = Sha256::new()
        .chain_update(b"len")
        .chain_update(session)
        .chain_update(from.to_be_bytes())
        .chain_update(to.to_be_bytes())
        .chain_update(seq.to_be_bytes())
        .finalize();
    let h = u64::from_be_bytes(digest[..8].try_into().unwrap());
    if h % 512 == 0 {
        (256 << 10) + ((h >> 16) % (256 << 10)) as usize + 1
    } else {
        let exponent = ((h >> 16) % 4097) as f64 / 4096.0 * 12.0;
        (16.0 * exponent.exp2()) as usize
    }
}

/// Writes `path` so that no reader sees it half written.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, bytes)?;
    std::fs::rename(partial, path)
}

/// Waits until every party wrote `<stage>-<party>`; their contents.
async fn rendezvous(dir: &Path, stage: &str) -> anyhow::Result<Vec<String>> {
    let deadline = Instant::now() + RENDEZVOUS;
    loop {
        let contents: Vec<Option<String>> =
            (0..PARTIES).map(|i| std::fs::read_to_string(dir.join(format!("{stage}-{i}"))).ok()).collect();
        if contents.iter().all(Option::is_some) {
            return Ok(contents.into_iter().flatten().collect());
        }
        if Instant::now() >= deadline {
            bail!("not every peer reached {stage:?} within {RENDEZVOUS:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every sample of `registry` as `name{labels}` → value.
fn unix_ms() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}
