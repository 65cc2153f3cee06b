//! The Torcus MPC node.
//!
//! This is the node's skeleton: it loads the cluster configuration and its
//! TLS identity as the operator's StatefulSet hands them over, checks that
//! they belong together, and serves `/healthz`, `/readyz` and `/metrics`. The
//! protocol engine and transports build on it.

pub mod engine;
pub mod identity;
pub mod router;
pub mod store;
pub mod transport;
pub mod used_sessions;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{Encoder, IntGauge, Registry, TextEncoder};
use torcus_contract as contract;
use tracing::{info, warn};

pub use identity::{Identity, IdentityError};

/// Command-line and environment configuration of a node.
#[derive(Clone, Debug, clap::Parser)]
#[command(name = "torcus-node", version, about = "One party of a Torcus threshold-signing cluster")]
pub struct Args {
    /// What to do; `serve` is the only command so far.
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

    /// Folder for key shares (the pod's volume).
    #[arg(long, env = contract::ENV_DATA_DIR, default_value = contract::DATA_DIR)]
    pub data_dir: PathBuf,

    /// Address to listen on (the pod IP).
    #[arg(long, env = contract::ENV_POD_IP, default_value = "0.0.0.0")]
    pub listen_ip: IpAddr,

    /// Port of the HTTP API, health and metrics.
    #[arg(long, env = "TORCUS_HTTP_PORT", default_value_t = contract::HTTP_PORT)]
    pub http_port: u16,
}

impl Args {
    /// Sets up logging from `RUST_LOG`.
    pub fn init_tracing(&self) {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
    }

    /// Serves until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), Error> {
        let Self { command, party_index, config, tls_dir, data_dir: _, listen_ip, http_port } = self;
        if command != "serve" {
            return Err(Error::UnknownCommand(command));
        }
        let addr = SocketAddr::new(listen_ip, http_port);
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| Error::Bind(addr, e))?;
        info!(%addr, party_index, "node listening");
        serve(listener, Node::new(party_index, config, tls_dir)?, shutdown).await
    }
}

/// Why a node could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line names no known command.
    #[error("unknown command {0:?}; expected `serve`")]
    UnknownCommand(String),
    /// The HTTP address could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, #[source] std::io::Error),
    /// The metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The HTTP server failed.
    #[error("http server: {0}")]
    Serve(#[source] std::io::Error),
}

/// A node's state as far as this skeleton goes.
#[derive(Debug)]
pub struct Node {
    party_index: u16,
    config: PathBuf,
    tls_dir: PathBuf,
    registry: Registry,
    ready: IntGauge,
}

impl Node {
    /// A node of party `party_index` reading its files from the given paths.
    pub fn new(party_index: u16, config: PathBuf, tls_dir: PathBuf) -> prometheus::Result<Arc<Self>> {
        let registry = Registry::new();
        let ready = IntGauge::new("torcus_node_ready", "1 while the node's configuration and TLS identity check out")?;
        registry.register(Box::new(ready.clone()))?;
        Ok(Arc::new(Self { party_index, config, tls_dir, registry, ready }))
    }

    /// Loads configuration and identity afresh (Secrets are rotated in place).
    pub fn check(&self) -> Result<Identity, IdentityError> {
        let identity = Identity::load(self.party_index, &self.config, &self.tls_dir);
        self.ready.set(i64::from(identity.is_ok()));
        identity
    }
}

/// Serves the node's HTTP endpoints on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    node: Arc<Node>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    if let Err(error) = node.check() {
        warn!(%error, "not ready yet");
    }
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(node);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await.map_err(Error::Serve)
}

async fn readyz(State(node): State<Arc<Node>>) -> impl IntoResponse {
    match node.check() {
        Ok(identity) => {
            (StatusCode::OK, format!("ready: party {} of {}", identity.party_index, identity.config.cluster))
        }
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {error}")),
    }
}

async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let mut out = Vec::new();
    let _ = TextEncoder::new().encode(&node.registry.gather(), &mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
