//! The Torcus MPC node: one party of a threshold-signing cluster.
//!
//! It loads the cluster configuration and its TLS identity as the operator's
//! StatefulSet hands them over, opens its encrypted share store, connects to
//! its peers over the configured transport, and serves the HTTP API through
//! which grants start key generation and signing sessions.

pub mod api;
pub mod engine;
#[cfg(feature = "fuzz-checks")]
pub mod fuzz_checks;
#[cfg(feature = "test-hooks")]
pub mod hostile;
pub mod identity;
pub mod metrics;
#[cfg(feature = "test-util")]
pub mod netlab;
pub mod pool;
pub mod presign_schedule;
pub mod registry_client;
pub mod router;
pub mod sessions;
pub mod store;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod tls_listener;
pub mod tls_reload;
pub mod transport;
pub mod used_sessions;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use torcus_contract as contract;
use tracing::{info, warn};

pub use identity::{Identity, IdentityError};

#[cfg(feature = "test-fixtures")]
use crate::engine::Primes;
use crate::metrics::NodeMetrics;
use crate::router::Router;
use crate::sessions::{Sessions, SessionsParts};
use crate::transport::TransportMetrics;
use crate::transport::any::AnyTransport;
use crate::transport::hybrid::HybridTransport;
use crate::transport::quic::{QuicConfig, QuicTransport};
use crate::transport::relay::{RelayConfig, RelayTransport};
use crate::transport::tcp::{TcpConfig, TcpTransport};

/// Command-line and environment configuration of a node.
#[derive(Clone, Debug, clap::Parser)]
#[command(name = "torcus-node", version, about = "One party of a Torcus threshold-signing cluster")]
pub struct Args {
    /// What to do; `serve` is the only command.
    #[arg(default_value = "serve")]
    pub command: String,

    /// This node's party index (0-based).
    #[arg(long, env = contract::ENV_PARTY_INDEX)]
    pub party_index: u16,

    /// Path of the cluster configuration (`cluster.json`).
    #[arg(long, env = contract::ENV_CONFIG, default_value = "/etc/torcus/config/cluster.json")]
    pub config: PathBuf,

    /// Folder holding `tls.crt`, `tls.key` and `ca.crt`.
    #[arg(long, env = contract::ENV_TLS_DIR, default_value = contract::TLS_DIR)]
    pub tls_dir: PathBuf,

    /// Folder for key shares and the used-session set (the pod's volume).
    #[arg(long, env = contract::ENV_DATA_DIR, default_value = contract::DATA_DIR)]
    pub data_dir: PathBuf,

    /// File holding the 64-hex-digit key that encrypts shares at rest;
    /// `<tls-dir>/store.key` when unset.
    #[arg(long, env = "TORCUS_STORE_KEY_FILE")]
    pub store_key_file: Option<PathBuf>,

    /// Address to listen on (the pod IP).
    #[arg(long, env = contract::ENV_POD_IP, default_value = "0.0.0.0")]
    pub listen_ip: IpAddr,

    /// Port of the API (mutual TLS, the operator only); the
    /// configuration's port for this party when unset.
    #[arg(long, env = "TORCUS_HTTP_PORT")]
    pub http_port: Option<u16>,

    /// Port of `/metrics`, `/healthz` and `/readyz` in plain HTTP.
    #[arg(long, env = "TORCUS_METRICS_PORT", default_value_t = contract::METRICS_PORT)]
    pub metrics_port: u16,

    /// Peer-to-peer port; the configuration's port for this party when unset.
    #[arg(long, env = "TORCUS_P2P_PORT")]
    pub p2p_port: Option<u16>,

    /// TEST ONLY: take the safe primes for aux info from this JSON file (a
    /// list indexed by party) instead of generating them. Safe primes must
    /// be secret and fresh: only builds with the `test-fixtures` feature
    /// have this flag, and `Dockerfile.node` builds without it.
    #[cfg(feature = "test-fixtures")]
    #[arg(long, env = TEST_PRIMES_ENV, hide = true)]
    pub test_primes_fixture: Option<PathBuf>,

    /// TEST ONLY: a node with no aux info stores its own from this JSON
    /// file (`engine::AuxFixture`) at start-up, so that keygens name it
    /// instead of running the aux info protocol. Public Paillier keys: only
    /// builds with the `test-fixtures` feature have this flag.
    #[cfg(feature = "test-fixtures")]
    #[arg(long, env = TEST_AUX_ENV, hide = true)]
    pub test_aux_fixture: Option<PathBuf>,

    /// TEST ONLY: the node whose party index this is tampers with what it
    /// sends in every signing session, as `--test-misbehaviour` says (a
    /// compromised node). Only builds with the `test-hooks` feature have
    /// this flag.
    #[cfg(feature = "test-hooks")]
    #[arg(long, env = TEST_CORRUPT_ENV, hide = true)]
    pub test_corrupt_signing: Option<u16>,

    /// TEST ONLY: how the node of `--test-corrupt-signing` misbehaves.
    /// Only builds with the `test-hooks` feature have this flag.
    #[cfg(feature = "test-hooks")]
    #[arg(long, env = TEST_MISBEHAVIOUR_ENV, hide = true, value_enum, default_value = "garbage")]
    pub test_misbehaviour: hostile::Misbehaviour,

    /// TEST ONLY: this node's clock for grants runs this many seconds off
    /// the system clock (negative: behind), as a node whose clock drifted.
    /// Only builds with the `test-hooks` feature have this flag.
    #[cfg(feature = "test-hooks")]
    #[arg(long, env = TEST_CLOCK_OFFSET_ENV, hide = true, allow_hyphen_values = true)]
    pub test_clock_offset_secs: Option<i64>,

    /// TEST ONLY: a file listing party indices (separated by spaces, commas
    /// or lines); the node whose index it lists at start-up plays a build
    /// from before FROST: it advertises, and runs, threshold ECDSA only. A
    /// rolling upgrade's old node. Only builds with the `test-hooks` feature
    /// have this flag.
    #[cfg(feature = "test-hooks")]
    #[arg(long, env = TEST_OLD_BUILD_ENV, hide = true)]
    pub test_old_build_parties: Option<PathBuf>,
}

/// The environment variable of the test-only misbehaving node; refused like
/// [`TEST_PRIMES_ENV`] by a build without the `test-hooks` feature.
pub const TEST_CORRUPT_ENV: &str = "TORCUS_TEST_CORRUPT_SIGNING";
/// The environment variable of the test-only misbehaviour's kind; refused
/// like [`TEST_CORRUPT_ENV`].
pub const TEST_MISBEHAVIOUR_ENV: &str = "TORCUS_TEST_MISBEHAVIOUR";
/// The environment variable of the test-only clock offset; refused like
/// [`TEST_CORRUPT_ENV`].
pub const TEST_CLOCK_OFFSET_ENV: &str = "TORCUS_TEST_CLOCK_OFFSET_SECS";
/// The environment variable of the test-only older build; refused like
/// [`TEST_CORRUPT_ENV`].
pub const TEST_OLD_BUILD_ENV: &str = "TORCUS_TEST_OLD_BUILD_PARTIES";

/// The environment variable of the test-only primes fixture. A build
/// without the `test-fixtures` feature refuses to start when it is set,
/// rather than ignore it silently.
pub const TEST_PRIMES_ENV: &str = "TORCUS_TEST_PRIMES_FIXTURE";
/// The environment variable of the test-only aux info fixture; refused
/// like [`TEST_PRIMES_ENV`].
pub const TEST_AUX_ENV: &str = "TORCUS_TEST_AUX_FIXTURE";

/// Why a node could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line names no known command.
    #[error("unknown command {0:?}; expected `serve`")]
    UnknownCommand(String),
    /// Configuration or certificate are unusable.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The grant public key in the configuration is malformed.
    #[error("grant public key in the configuration is not a hex Ed25519 key")]
    GrantKey,
    /// The store key is not the one the configuration names for this node.
    #[error(
        "the store key is not the one the cluster configuration names for party {0}: its keys Secret changed \
         after the operator read it (or the mount is stale); not starting on it"
    )]
    StoreKeyMismatch(u16),
    /// The configured transport is not available.
    #[error("transport {0:?} is not available")]
    Transport(String),
    /// The QUIC transport could not start.
    #[error(transparent)]
    Quic(#[from] transport::quic::QuicError),
    /// The share store could not be opened.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// A file could not be read or written.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// The session logic could not start.
    #[error(transparent)]
    Session(#[from] sessions::SessionError),
    /// The HTTP address could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, #[source] std::io::Error),
    /// The metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The API's TLS configuration could not be made.
    #[error("API TLS: {0}")]
    ApiTls(String),
    /// The HTTP server failed.
    #[error("http server: {0}")]
    Serve(#[source] std::io::Error),
    /// The test primes fixture is unusable.
    #[error("primes fixture: {0}")]
    Primes(String),
    /// A test fixture was asked of a build without them.
    #[error(
        "{0} is set, but this build of torcus-node does not take test fixtures (a node with public safe primes or \
         aux info would hold a key share anyone can recover); unset it"
    )]
    TestFixtureInProduct(&'static str),
    /// A test hook was asked of a build without them.
    #[error("{0} is set, but this build of torcus-node has no test hooks (they make a node misbehave); unset it")]
    TestHookInProduct(&'static str),
}

impl Args {
    /// Sets up logging from `RUST_LOG`.
    pub fn init_tracing(&self) {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
    }

    /// Runs the node until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), Error> {
        let Self {
            command,
            party_index: me,
            config,
            tls_dir,
            data_dir,
            store_key_file,
            listen_ip,
            http_port,
            metrics_port,
            p2p_port,
            #[cfg(feature = "test-fixtures")]
            test_primes_fixture,
            #[cfg(feature = "test-fixtures")]
            test_aux_fixture,
            #[cfg(feature = "test-hooks")]
            test_corrupt_signing,
            #[cfg(feature = "test-hooks")]
            test_misbehaviour,
            #[cfg(feature = "test-hooks")]
            test_clock_offset_secs,
            #[cfg(feature = "test-hooks")]
            test_old_build_parties,
        } = self;
        if command != "serve" {
            return Err(Error::UnknownCommand(command));
        }
        #[cfg(not(feature = "test-fixtures"))]
        for variable in [TEST_PRIMES_ENV, TEST_AUX_ENV] {
            if std::env::var_os(variable).is_some() {
                return Err(Error::TestFixtureInProduct(variable));
            }
        }
        #[cfg(not(feature = "test-hooks"))]
        for variable in [TEST_CORRUPT_ENV, TEST_MISBEHAVIOUR_ENV, TEST_CLOCK_OFFSET_ENV, TEST_OLD_BUILD_ENV] {
            if std::env::var_os(variable).is_some() {
                return Err(Error::TestHookInProduct(variable));
            }
        }
        let tls_files = tls_reload::TlsFiles { dir: tls_dir.clone(), config: config.clone(), me };
        // Before reading: a change made meanwhile is then seen as one.
        let tls_stamps = tls_files.stamps();
        let identity = Identity::load(me, &config, &tls_dir)?;
        let cluster = identity.config.clone();
        let read = |path: PathBuf| std::fs::read_to_string(&path).map_err(|e| Error::Io(path.display().to_string(), e));
        let cert_chain_pem = read(tls_dir.join("tls.crt"))?;
        let key = torcus_certs::SecretPem::new(read(tls_dir.join("tls.key"))?);
        let trust_bundle_pem = read(tls_dir.join("ca.crt"))?;
        let grant_key = hex::decode(&cluster.grant_public_key)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .and_then(|b| ed25519_dalek::VerifyingKey::from_bytes(&b).ok())
            .ok_or(Error::GrantKey)?;
        let own = &cluster.peers[usize::from(me)];
        let http_addr = SocketAddr::new(listen_ip, http_port.unwrap_or(own.http_port));
        let p2p_addr = SocketAddr::new(listen_ip, p2p_port.unwrap_or(own.p2p_port));

        let store_key = store::StoreKey::from_file(store_key_file.unwrap_or_else(|| tls_dir.join("store.key")))?;
        // Configurations of older operators name none.
        if own.store_key_check.as_ref().is_some_and(|check| *check != store_key.check()) {
            return Err(Error::StoreKeyMismatch(me));
        }
        let store = store::ShareStore::open(data_dir.join("shares"), store_key)?;
        #[cfg(feature = "test-fixtures")]
        if let Some(path) = &test_aux_fixture {
            let json = std::fs::read(path).map_err(|e| Error::Io(path.display().to_string(), e))?;
            let (id, aux) = engine::fixture_aux_info(&json, cluster.nodes, me).map_err(Error::Primes)?;
            sessions::seed_aux_info(&store, id, aux)?;
        }
        let used_path = data_dir.join("used-sessions");
        let mut used = used_sessions::FileUsedSessions::open(&used_path)
            .map_err(|e| Error::Io(used_path.display().to_string(), e))?;
        // Whatever expired while the node was down goes before it serves.
        let records = used.records();
        used.compact(contract::unix_now()).map_err(|e| Error::Io(used_path.display().to_string(), e))?;
        info!(records, live = used.len(), "used-session file compacted");

        let stop = CancellationToken::new();
        let metrics = NodeMetrics::new()?;
        metrics.ready.set(1);
        let (incoming_tx, incoming) = mpsc::channel(1 << 14);
        // Every mode but pure QUIC seals envelopes end to end (`transport::seal`):
        // its transports deliver to `sealed_tx`, and an opener passes on what opens.
        let (sealed_tx, sealed_rx) = mpsc::channel(1 << 14);
        let sealer = match cluster.transport.as_str() {
            "tcp" | "http" | "hybrid" => Some(Arc::new(
                transport::seal::read_seed(&tls_dir.join("seal.key"))
                    .and_then(|seed| transport::seal::Sealer::from_config(me, &cluster, seed))
                    .map_err(|e| Error::Transport(format!("{}: {e}", cluster.transport)))?,
            )),
            _ => None,
        };
        let quic = |incoming_tx: mpsc::Sender<engine::Envelope>| -> Result<Arc<QuicTransport>, Error> {
            let config = QuicConfig {
                me,
                namespace: cluster.namespace.clone(),
                cluster: cluster.cluster.clone(),
                listen: p2p_addr,
                peers: Default::default(),
                cert_chain_pem: cert_chain_pem.clone(),
                key: key.clone(),
                trust_bundle_pem: trust_bundle_pem.clone(),
            };
            let transport_metrics = TransportMetrics::register(&metrics.registry, "quic")?;
            Ok(QuicTransport::bind(config, incoming_tx, transport_metrics, stop.clone())?)
        };
        let relay = |incoming_tx: mpsc::Sender<engine::Envelope>| -> Result<(Arc<RelayTransport>, _), Error> {
            let base_url =
                cluster.registry_url.clone().ok_or_else(|| Error::Transport("http without a registry URL".into()))?;
            let signer = Some(Arc::new(transport::relay::RequestSigner::from_tls_dir(tls_dir.clone())));
            let cluster_name = format!("{}/{}", cluster.namespace, cluster.cluster);
            let config = RelayConfig { me, cluster: cluster_name, base_url, signer };
            let transport_metrics = TransportMetrics::register(&metrics.registry, "relay")?;
            let dropped = transport_metrics.dropped.clone();
            Ok((RelayTransport::start(config, incoming_tx, transport_metrics, stop.clone()), dropped))
        };
        // With the sealed modes, the counter of envelopes that do not open.
        let (transport, unsealable) = match cluster.transport.as_str() {
            "quic" => (AnyTransport::Quic(quic(incoming_tx.clone())?), None),
            "http" => {
                let (relay, dropped) = relay(sealed_tx)?;
                (AnyTransport::Relay(relay), Some(dropped))
            }
            "hybrid" => {
                let primary = quic(sealed_tx.clone())?;
                // Counted with the relay: its path is where a sender is only claimed.
                let (fallback, dropped) = relay(sealed_tx)?;
                let hybrid = HybridTransport::new(primary, fallback, &metrics.registry)?;
                (AnyTransport::Hybrid(Arc::new(hybrid)), Some(dropped))
            }
            "tcp" => {
                let seed = zeroize::Zeroizing::new(read(tls_dir.join("identity.key"))?);
                let identity = own_identity(&seed, &cluster, me).map_err(Error::Transport)?;
                let mut peer_keys = std::collections::HashMap::new();
                for peer in &cluster.peers {
                    let key = peer
                        .identity_key
                        .as_deref()
                        .and_then(|k| hex::decode(k).ok())
                        .and_then(|b| <[u8; 32]>::try_from(b).ok())
                        .and_then(|b| ed25519_dalek::VerifyingKey::from_bytes(&b).ok())
                        .ok_or_else(|| Error::Transport(format!("tcp: no identity key for party {}", peer.index)))?;
                    peer_keys.insert(peer.index, key);
                }
                let config = TcpConfig {
                    me,
                    listen: p2p_addr,
                    peers: Default::default(),
                    identity,
                    peer_keys,
                    window: transport::tcp::DEFAULT_WINDOW,
                };
                let transport_metrics = TransportMetrics::register(&metrics.registry, "tcp")?;
                let dropped = transport_metrics.dropped.clone();
                let tcp = TcpTransport::bind(config, sealed_tx, transport_metrics, stop.clone())
                    .map_err(|e| Error::Transport(e.to_string()))?;
                (AnyTransport::Tcp(tcp), Some(dropped))
            }
            other => return Err(Error::Transport(other.to_owned())),
        };
        // QUIC takes a renewed certificate or trust bundle without a restart.
        let quic_transport = match &transport {
            AnyTransport::Quic(quic) => Some(Arc::clone(quic)),
            AnyTransport::Hybrid(hybrid) => Some(Arc::clone(hybrid.primary())),
            _ => None,
        };
        if let Some(quic) = quic_transport {
            let reloads = metrics.tls_reloads.clone();
            tokio::spawn(tls_reload::run(tls_files, tls_stamps, quic, reloads, stop.clone()));
        }
        let transport = match (sealer, unsealable) {
            (Some(sealer), Some(dropped)) => {
                transport::seal::spawn_opener(Arc::clone(&sealer), sealed_rx, dropped, incoming_tx);
                AnyTransport::Sealed(Arc::new(transport::seal::SealedTransport::new(Arc::new(transport), sealer)))
            }
            _ => transport,
        };
        let transport = Arc::new(transport);
        let registry = match &cluster.registry_url {
            Some(url) => Some(Arc::new(
                registry_client::RegistryClient::from_tls_dir(
                    url,
                    &cluster.namespace,
                    &cluster.cluster,
                    me,
                    tls_dir.clone(),
                )
                .map_err(|e| Error::Transport(format!("registry client: {e}")))?,
            )),
            None => None,
        };
        let announced = Arc::new(std::sync::atomic::AtomicBool::new(false));
        tokio::spawn(resolve_peers(
            Arc::clone(&transport),
            cluster.clone(),
            me,
            registry.clone(),
            Arc::clone(&announced),
            metrics.peer_addresses.clone(),
            stop.clone(),
        ));

        let router = Router::new();
        #[cfg(feature = "test-fixtures")]
        let primes_fixture = match test_primes_fixture {
            Some(path) => Some(fixture_primes(&path, me)?),
            None => None,
        };
        #[cfg(not(feature = "test-fixtures"))]
        let primes_fixture = None;
        #[cfg_attr(not(feature = "test-hooks"), expect(unused_mut, reason = "only a test hook narrows it"))]
        let mut schemes = engine::schemes();
        #[cfg_attr(not(feature = "test-hooks"), expect(unused_mut, reason = "only a test hook sets it"))]
        let mut old_build = false;
        #[cfg(feature = "test-hooks")]
        if let Some(path) = &test_old_build_parties {
            let listed = std::fs::read_to_string(path).unwrap_or_default();
            let parties = listed.split(|c: char| c.is_whitespace() || c == ',').filter_map(|p| p.parse::<u16>().ok());
            if parties.into_iter().any(|p| p == me) {
                warn!("playing a build from before FROST (test hook): ECDSA only, no capabilities advertised");
                schemes.retain(|s| s.scheme == contract::Scheme::EcdsaSecp256k1.as_str());
                old_build = true;
            }
        }
        let sessions = Sessions::new(SessionsParts {
            me,
            nodes: cluster.nodes,
            threshold: cluster.threshold,
            presignature_pool_size: cluster.presignature_pool_size,
            presignature_paths: cluster.presignature_paths.clone(),
            namespace: cluster.namespace.clone(),
            cluster: cluster.cluster.clone(),
            grant_key,
            transport: Arc::clone(&transport),
            router: Arc::clone(&router),
            store,
            primes_fixture,
            used,
            metrics: metrics.clone(),
            schemes: schemes.iter().filter_map(|s| contract::Scheme::parse(&s.scheme)).collect(),
        })?;
        #[cfg(feature = "test-hooks")]
        if test_corrupt_signing == Some(me) {
            sessions.misbehave(test_misbehaviour);
        }
        #[cfg(feature = "test-hooks")]
        if let Some(offset) = test_clock_offset_secs {
            sessions.set_clock_offset(offset);
        }
        sessions.spawn_presigner(stop.clone());
        let (control_tx, mut control_rx) = mpsc::channel(1024);
        router.spawn_inbound(incoming, Some(control_tx));
        {
            let sessions = Arc::clone(&sessions);
            tokio::spawn(async move {
                while let Some(env) = control_rx.recv().await {
                    sessions.on_control(env).await;
                }
            });
        }
        sessions.prepare_primes(true);

        let ready: api::ReadyCheck = {
            let (me, config, tls_dir, metrics) = (me, config.clone(), tls_dir.clone(), metrics.clone());
            Arc::new(move || {
                // Secrets are rotated in place: check what is mounted now.
                let ok = Identity::load(me, &config, &tls_dir).map(|_| ()).map_err(|e| e.to_string()).and_then(|()| {
                    // Not ready before it has tried every peer once.
                    match announced.load(std::sync::atomic::Ordering::Acquire) {
                        true => Ok(()),
                        false => Err("still reaching out to peers".to_owned()),
                    }
                });
                metrics.ready.set(i64::from(ok.is_ok()));
                ok
            })
        };
        if let Some(client) = registry {
            let registration = contract::registry::Registration {
                namespace: cluster.namespace.clone(),
                cluster: cluster.cluster.clone(),
                party: me,
                address: listen_ip.to_string(),
                http_port: http_addr.port(),
                p2p_port: p2p_addr.port(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                started_at: unix_millis(),
                sent_at: unix_millis(),
                // A build from before capabilities sent none (test hook).
                capabilities: (!old_build).then(|| contract::registry::Capabilities {
                    schemes,
                    grant_version: contract::GRANT_VERSION,
                    transports: vec![cluster.transport.to_string()],
                }),
            };
            let (held, sessions) = (Arc::clone(&sessions), metrics.sessions.clone());
            let stats = move || {
                let count = |outcome: &str| -> u64 {
                    ["keygen", "sign", "any"]
                        .iter()
                        .map(|kind| sessions.get_metric_with_label_values(&[kind, outcome]).map_or(0, |c| c.get()))
                        .sum()
                };
                let completed = count("completed");
                let failed: u64 = ["aborted", "timeout", "unreachable", "misbehaved", "silent", "protocol", "storage"]
                    .iter()
                    .map(|o| count(o))
                    .sum();
                (completed, failed, held.held_keys())
            };
            registry_client::spawn_heartbeats(client, registration, HEARTBEAT_INTERVAL, stats, stop.clone());
        }
        let access = api::Access {
            operator: torcus_certs::Identity {
                namespace: cluster.namespace.clone(),
                cluster: cluster.cluster.clone(),
                role: torcus_certs::Role::Operator,
            },
            refused: metrics.api_refused.clone(),
        };
        let app = api::router(Arc::clone(&sessions), Arc::clone(&ready), access);
        let listener = tokio::net::TcpListener::bind(http_addr).await.map_err(|e| Error::Bind(http_addr, e))?;
        let listener =
            tls_listener::TlsListener::start(listener, tls_dir.clone(), metrics.api_refused.clone(), stop.clone())
                .map_err(Error::ApiTls)?;
        // Health answers only once the API listens.
        let metrics_addr = SocketAddr::new(listen_ip, metrics_port);
        let plain = tokio::net::TcpListener::bind(metrics_addr).await.map_err(|e| Error::Bind(metrics_addr, e))?;
        let plain_app = api::plain_router(ready, metrics.registry.clone());
        let stopping = stop.clone();
        tokio::spawn(async move {
            let served = axum::serve(plain, plain_app).with_graceful_shutdown(stopping.cancelled_owned()).await;
            if let Err(error) = served {
                warn!(%error, "metrics server stopped");
            }
        });
        info!(me, %http_addr, %metrics_addr, %p2p_addr, transport = %cluster.transport, "node serving");
        let stopping = stop.clone();
        let served = axum::serve(listener, app.into_make_service_with_connect_info::<tls_listener::Caller>())
            .with_graceful_shutdown(async move {
                shutdown.await;
                stopping.cancel();
            })
            .await
            .map_err(Error::Serve);
        stop.cancel();
        transport.close().await;
        served
    }
}

/// This node's TCP identity from the hex seed in `identity.key`, which must
/// be the key the cluster configuration names for it: a Secret changed after
/// the operator read it (or a stale mount) does not run.
fn own_identity(
    seed_hex: &str,
    cluster: &contract::ClusterConfig,
    me: u16,
) -> Result<ed25519_dalek::SigningKey, String> {
    let identity = hex::decode(seed_hex.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .map(|b| ed25519_dalek::SigningKey::from_bytes(&zeroize::Zeroizing::new(b)))
        .ok_or("tcp: identity.key is not a hex Ed25519 seed")?;
    let named = cluster.peers.iter().find(|p| p.index == me).and_then(|p| p.identity_key.as_deref());
    if named != Some(hex::encode(identity.verifying_key().as_bytes()).as_str()) {
        return Err(format!(
            "tcp: identity.key is not the identity the cluster configuration names for party {me}; \
             its keys Secret changed after the operator read it: not starting on it"
        ));
    }
    Ok(identity)
}

/// How often the node tells the registry it is alive.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

fn unix_millis() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// Longest a peer's DNS lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// The first address `host` resolves to, within [`LOOKUP_TIMEOUT`]; `None`
/// when it does not resolve, takes too long, or the node stops.
async fn lookup(host: &str, port: u16, stop: &CancellationToken) -> Vec<SocketAddr> {
    tokio::select! {
        found = tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((host, port))) => {
            found.ok().and_then(Result::ok).map(Iterator::collect).unwrap_or_default()
        }
        () = stop.cancelled() => Vec::new(),
    }
}

/// `host`'s addresses, asked twice, a moment apart, when the first answer
/// is empty: a name that does not resolve for an instant (a hosts file
/// being rewritten, a DNS server restarting) is not a reason to look
/// elsewhere.
async fn lookup_twice(host: &str, port: u16, stop: &CancellationToken) -> Vec<SocketAddr> {
    let found = lookup(host, port, stop).await;
    if !found.is_empty() {
        return found;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    lookup(host, port, stop).await
}

/// How often peer addresses are looked up again when nothing failed.
const PEER_RECHECK: Duration = Duration::from_secs(30);
/// Least time between two lookups that failures woke.
const PEER_RECHECK_MIN: Duration = Duration::from_secs(1);

/// Keeps every peer's address current for the node's life. A peer is looked
/// up by its stable DNS name (the headless Service's record, as a real
/// cluster's DNS serves it) and, where that name does not resolve (no
/// cluster DNS, as under a process kubelet without mount namespaces), by the
/// address it registered with the operator's registry. Lookups run until
/// every peer is known, then again whenever a peer cannot be dialled or does
/// not take a message (a pod made again on a new IP), and every
/// [`PEER_RECHECK`]. A changed address replaces the old one, and the
/// transport drops its connection to the old. The peer's identity is still
/// checked by the transport (its certificate, its sealed frames), so a wrong
/// address can only make it unreachable.
async fn resolve_peers(
    transport: Arc<AnyTransport>,
    cluster: contract::ClusterConfig,
    me: u16,
    registry: Option<Arc<registry_client::RegistryClient>>,
    announced: Arc<std::sync::atomic::AtomicBool>,
    addresses: prometheus::IntCounterVec,
    stop: CancellationToken,
) {
    let peers: Vec<contract::Peer> = cluster.peers.into_iter().filter(|p| p.index != me).collect();
    let Some(failures) = transport.peer_failures().filter(|_| transport.needs_addresses()) else {
        announced.store(true, std::sync::atomic::Ordering::Release);
        return;
    };
    // Where each known peer is, and whether its DNS name said so.
    let mut known: std::collections::HashMap<u16, (SocketAddr, bool)> = std::collections::HashMap::new();
    while !stop.is_cancelled() {
        let mut registered = None;
        // All names at once: a lookup that times out holds up no other.
        let answers =
            futures::future::join_all(peers.iter().map(|peer| lookup_twice(&peer.host, peer.p2p_port, &stop))).await;
        for (peer, dns) in peers.iter().zip(answers) {
            // Once its DNS name answered, a peer's address comes from there
            // only: the registry may still hold the address it just left.
            if dns.is_empty() && known.get(&peer.index).is_some_and(|(_, by_dns)| *by_dns) {
                continue;
            }
            let current = known.get(&peer.index).map(|(at, _)| *at);
            let found = match dns.first() {
                // The address in use while the name still gives it: answers
                // with several addresses may come in any order.
                Some(first) => Some((current.filter(|at| dns.contains(at)).unwrap_or(*first), "dns")),
                None => {
                    if registered.is_none() {
                        registered = Some(match &registry {
                            Some(client) => client.nodes().await.unwrap_or_default(),
                            None => Vec::new(),
                        });
                    }
                    registered.iter().flatten().find(|r| r.party == peer.index && r.online).and_then(|record| {
                        Some((SocketAddr::new(record.address.parse().ok()?, record.p2p_port), "registry"))
                    })
                }
            };
            let Some((addr, source)) = found else { continue };
            if let Some((at, by_dns)) = known.get_mut(&peer.index)
                && *at == addr
            {
                *by_dns |= source == "dns";
                continue;
            }
            let first = known.insert(peer.index, (addr, source == "dns")).is_none();
            transport.set_peer(peer.index, addr, &peer.host);
            addresses.with_label_values(&[source]).inc();
            if first {
                // Announce this run; a peer that is down dials in when it starts.
                if let Err(error) = transport.connect(peer.index).await {
                    tracing::debug!(peer = peer.index, %error, "peer not reachable yet");
                }
            } else {
                info!(peer = peer.index, %addr, source, "peer moved; its new address is used from now on");
            }
        }
        announced.store(true, std::sync::atomic::Ordering::Release);
        let wait = if known.len() < peers.len() { Duration::from_secs(2) } else { PEER_RECHECK };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = failures.notified() => {
                tokio::select! {
                    () = tokio::time::sleep(PEER_RECHECK_MIN) => {}
                    () = stop.cancelled() => {}
                }
            }
            () = stop.cancelled() => {}
        }
    }
    if known.len() < peers.len() {
        warn!(count = peers.len() - known.len(), "stopped resolving peers");
    }
}

#[cfg(feature = "test-fixtures")]
fn fixture_primes(path: &std::path::Path, me: u16) -> Result<Primes, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io(path.display().to_string(), e))?;
    let mut all: Vec<Primes> = serde_json::from_str(&text).map_err(|e| Error::Primes(e.to_string()))?;
    if usize::from(me) >= all.len() {
        return Err(Error::Primes(format!("no primes for party {me}")));
    }
    warn!("using safe primes from a test fixture: never do this outside tests");
    Ok(all.swap_remove(usize::from(me)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tcp_identity_runs_only_if_the_configuration_names_it() {
        let seed = [5u8; 32];
        let public = hex::encode(ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key().as_bytes());
        let mut cluster = contract::ClusterConfig::sample("demo", "default", 3, 2);
        cluster.peers[1].identity_key = Some(public);
        assert!(own_identity(&format!("{}\n", hex::encode(seed)), &cluster, 1).is_ok());
        // Another seed (the Secret patched after the operator read it).
        let err = own_identity(&hex::encode([6u8; 32]), &cluster, 1).unwrap_err();
        assert!(err.contains("party 1") && err.contains("not starting"), "{err}");
        // No key named for this party, or not a seed at all.
        assert!(own_identity(&hex::encode(seed), &cluster, 2).is_err());
        assert!(own_identity("zz", &cluster, 1).unwrap_err().contains("not a hex Ed25519 seed"));
    }
}
