//! The operator's command line and environment.

use std::net::SocketAddr;

#[cfg(feature = "test-hooks")]
use crate::test_hooks;

/// Command-line and environment configuration of the operator.
#[derive(Clone, Debug, clap::Parser)]
#[command(name = "torcus-operator", version, about = "Runs Torcus MPC signing clusters on Kubernetes")]
pub struct Args {
    /// Watch only this namespace; all namespaces when unset.
    #[arg(long, env = "TORCUS_WATCH_NAMESPACE")]
    pub namespace: Option<String>,

    /// Node image for clusters that do not set `spec.image`.
    #[arg(long, env = "TORCUS_NODE_IMAGE", default_value = concat!("ghcr.io/torcus/torcus-node:", env!("CARGO_PKG_VERSION")))]
    pub node_image: String,

    /// Registry and relay URL the nodes report to.
    #[arg(long, env = "TORCUS_REGISTRY_URL")]
    pub registry_url: Option<String>,

    /// Kubernetes cluster DNS domain.
    #[arg(long, env = "TORCUS_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,

    /// Address of the metrics and health endpoints.
    #[arg(long, env = "TORCUS_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,

    /// Take part in leader election, so only one replica acts at a time.
    #[arg(long, env = "TORCUS_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,

    /// Name of the leader election Lease.
    #[arg(long, env = "TORCUS_LEASE_NAME", default_value = "torcus-operator")]
    pub lease_name: String,

    /// Namespace of the leader election Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,

    /// Identity in the Lease and in Events (the pod name).
    #[arg(long, env = "POD_NAME")]
    pub instance: Option<String>,

    /// The pod this replica runs in, which it labels while it leads; the
    /// chart sets `POD_NAME` for both. Unset outside a pod.
    #[arg(long, env = "POD_NAME", hide = true)]
    pub pod_name: Option<String>,

    /// How long kubelets may take to show a changed Secret in the pods that
    /// mount it (their sync period plus cache TTL, with margin). A staged CA
    /// is trusted this long before it issues anything, so no node meets a
    /// certificate from a CA it does not trust yet.
    #[arg(long, env = "TORCUS_SECRET_PROPAGATION", default_value = "5m", value_parser = parse_propagation)]
    pub secret_propagation: std::time::Duration,

    /// Log format: `plain` or `json`.
    #[arg(long, env = "TORCUS_LOG_FORMAT", default_value = "plain")]
    pub log_format: String,

    /// TEST ONLY: ways for an end-to-end test to make this operator
    /// misbehave. Only in builds with the `test-hooks` feature (the e2e
    /// crate's); never settable from the command line.
    #[cfg(feature = "test-hooks")]
    #[arg(skip)]
    pub test_hooks: test_hooks::TestHooks,
}

fn parse_propagation(text: &str) -> Result<std::time::Duration, String> {
    crate::pki::parse_duration(text)
        .filter(|d| d.is_positive())
        .and_then(|d| std::time::Duration::try_from(d).ok())
        .ok_or_else(|| format!("{text:?} is not a duration like 5m or 90s"))
}

impl Args {
    /// Sets up logging from `RUST_LOG` and the `--log-format` flag.
    pub fn init_tracing(&self) {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn,torcus_operator=info"));
        let builder = tracing_subscriber::fmt().with_env_filter(filter);
        // A subscriber may already be set (tests); keeping it is fine.
        let _ = if self.log_format == "json" { builder.json().try_init() } else { builder.try_init() };
    }
}

/// A Lease identity unique per process even where every replica is PID 1
/// and `POD_NAME` is not given: the host name plus a random suffix.
pub fn default_instance() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim();
    let mut suffix = [0u8; 4];
    // Without randomness the host name alone still tells replicas apart on
    // separate pods; the suffix covers two processes on one host.
    let _ = getrandom::fill(&mut suffix);
    format!("{}-{}", if host.is_empty() { "torcus-operator" } else { host }, hex::encode(suffix))
}
