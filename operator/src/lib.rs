//! The Torcus operator: turns `MpcCluster` objects into running signing
//! clusters (certificates, grant key, configuration, Service, StatefulSets,
//! PodDisruptionBudget) and reports their state.
//!
//! `main` only parses [`Args`] and calls [`Args::run`]; tests call
//! [`Args::run`] directly with their own client and shutdown signal.

pub mod apiserver;
pub mod cluster_controller;
pub mod context;
pub mod crypto;
pub mod grants;
pub mod keygen;
pub mod ledger;
pub mod metrics;
pub mod node_client;
pub mod pki;
pub mod policy;
pub mod presignatures;
pub mod registry;
pub mod relay;
pub mod resources;
pub mod rollout;
pub mod secret_records;
pub mod signers;
pub mod signing_controller;
pub mod signing_state;
#[cfg(feature = "test-hooks")]
pub mod test_hooks;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;
use torcus_crds::{MpcCluster, SigningRequest};
use tracing::{info, warn};

pub use metrics::Metrics;

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or could not be reached.
    #[error("kubernetes api: {0}")]
    Kube(#[from] kube::Error),
    /// A certificate could not be issued or parsed.
    #[error("certificates: {0}")]
    Certs(#[from] torcus_certs::Error),
    /// The object's spec cannot be acted on; its status says why.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    /// The certificates cannot be planned (an unreadable CA is never replaced).
    #[error("certificates: {0}")]
    Pki(#[from] pki::PlanError),
    /// The grant key Secret exists but does not hold a consistent key.
    #[error("grant key secret {0} is malformed; refusing to replace it")]
    GrantKey(String),
    /// A node keys Secret exists but does not hold well-formed keys.
    #[error("node keys secret {0} is malformed; refusing to replace it")]
    NodeKeys(String),
    /// The operating system's random source failed.
    #[error("random source: {0}")]
    Random(String),
    /// A Secret the operator would use exists, but not as one it made for
    /// this MpcCluster: it is never used (its key could be anyone's).
    #[error(
        "Secret {0} was not made by the operator for this MpcCluster (it has no controller owner reference to it); \
         refusing to use it: delete it and the operator makes its own"
    )]
    ForeignSecret(String),
}

impl Error {
    /// Low-cardinality label for the error counter.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Certs(_) | Self::Pki(_) => "certs",
            Self::InvalidSpec(_) => "invalid_spec",
            Self::GrantKey(_) => "grant_key",
            Self::NodeKeys(_) => "node_keys",
            Self::Random(_) => "random",
            Self::ForeignSecret(_) => "foreign_secret",
        }
    }
}

/// Result with the operator's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

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

impl Args {
    /// Sets up logging from `RUST_LOG` and the `--log-format` flag.
    pub fn init_tracing(&self) {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn,torcus_operator=info"));
        let builder = tracing_subscriber::fmt().with_env_filter(filter);
        // A subscriber may already be set (tests); keeping it is fine.
        let _ = if self.log_format == "json" { builder.json().try_init() } else { builder.try_init() };
    }

    /// Runs the operator until `shutdown` completes or leadership is lost.
    pub async fn run(
        self,
        client: Client,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), RunError> {
        let Self {
            namespace,
            node_image,
            registry_url,
            cluster_domain,
            http_addr,
            leader_election,
            lease_name,
            lease_namespace,
            instance,
            pod_name,
            log_format: _,
            #[cfg(feature = "test-hooks")]
            test_hooks,
        } = self;
        let instance = instance.unwrap_or_else(default_instance);
        let instance_for_label = instance.clone();
        let metrics = Arc::new(Metrics::new()?);
        let stop = CancellationToken::new();
        {
            let stop = stop.clone();
            tokio::spawn(async move {
                shutdown.await;
                stop.cancel();
            });
        }

        let registry = Arc::new(registry::Registry::new(metrics.registry(), registry::RegistrySettings::default())?);
        // What the cluster controller issued: the registry and the relay
        // check nodes' certificates against it, and know no other cluster.
        let nodes = node_client::NodeClient::new();
        let relay = relay::Relay::new(metrics.registry(), relay::RelayLimits::default())?;
        // Every relay request is signed by the node it speaks for, with a
        // certificate of its cluster's CA; other clusters are unknown.
        let relay = Arc::new(relay.with_signed_requests({
            let nodes = nodes.clone();
            move |cluster| cluster.split_once('/').and_then(|(ns, name)| nodes.trust_bundle(ns, name))
        }));
        let extra =
            registry::router(registry.clone(), trust_lookup(nodes.clone())).merge(relay::relay_router(relay.clone()));
        let listener = tokio::net::TcpListener::bind(http_addr).await.map_err(|e| RunError::Bind(http_addr, e))?;
        info!(addr = %http_addr, "serving metrics, health, the node registry and the relay");
        let server = tokio::spawn(metrics::serve(listener, metrics.clone(), extra, {
            let (stop, relay) = (stop.clone(), relay.clone());
            async move {
                stop.cancelled().await;
                // Long polls return now, so the server stops without waiting.
                relay.close();
            }
        }));

        let mut lease_handle = None;
        // A replica starting in the pod of a leader that crashed must not
        // keep its label: the Service would send the registry and relay
        // traffic here while another replica leads.
        if let Some((ns, pod)) = own_pod(&instance_for_label, pod_name.as_deref(), &lease_namespace) {
            label_leader(&client, &ns, &pod, false).await;
        }
        if leader_election {
            let lease = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &lease_name)
                .with_namespace(&lease_namespace)
                .with_identity(&instance)
                .with_duration(15)
                .with_grace(5)
                .build()
                .await?;
            let (mut leader, lease_task) = lease.watch().await;
            info!(lease = %lease_name, %instance, "waiting for leadership");
            let acquired = tokio::select! {
                result = leader.wait_for(|is_leader| *is_leader) => result.is_ok(),
                () = stop.cancelled() => false,
            };
            if !acquired {
                // Closing the channel makes the lease task release the lease and end.
                drop(leader);
                let _ = lease_task.await;
                return Ok(());
            }
            info!("acquired leadership");
            let lost = stop.clone();
            lease_handle = Some(tokio::spawn(async move {
                tokio::select! {
                    _ = leader.wait_for(|is_leader| !*is_leader) => {
                        warn!("lost leadership; stopping");
                        lost.cancel();
                    }
                    () = lost.cancelled() => {}
                }
                // Closing the channel makes the lease task release the lease
                // and end, so a standby takes over without waiting for expiry.
                drop(leader);
                let _ = lease_task.await;
            }));
        }

        let mut ctx = context::Context::new(
            client.clone(),
            Recorder::new(client.clone(), Reporter { controller: "torcus-operator".into(), instance: Some(instance) }),
            resources::BuildContext { default_node_image: node_image, registry_url, cluster_domain },
            metrics.clone(),
            registry,
        );
        ctx.nodes = nodes;
        #[cfg(feature = "test-hooks")]
        {
            ctx.test_hooks = test_hooks;
        }
        let ctx = Arc::new(ctx);
        metrics.leader.set(1);
        let own_pod = own_pod(&instance_for_label, pod_name.as_deref(), &lease_namespace);
        if let Some((ns, pod)) = &own_pod {
            unlabel_former_leaders(&client, ns, pod).await;
            label_leader(&client, ns, pod, true).await;
        }
        let client_for_label = client.clone();
        let clusters = cluster_controller_stream(client.clone(), namespace.as_deref(), ctx.clone(), stop.clone());
        let requests = signing_controller_stream(client, namespace.as_deref(), ctx, stop.clone());
        // Running reconciles get a grace period to finish, then are dropped:
        // a grant is in the status before it is used, so the next leader
        // resumes whatever was cut short.
        let controllers = async { futures::join!(clusters, requests) };
        let grace = async {
            stop.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        tokio::select! {
            _ = controllers => info!("controllers stopped"),
            () = grace => warn!(grace_s = SHUTDOWN_GRACE.as_secs(), "reconciles still running at the end of the shutdown grace period; abandoned"),
        }
        if let Some((ns, pod)) = &own_pod {
            label_leader(&client_for_label, ns, pod, false).await;
        }
        metrics.leader.set(0);
        stop.cancel();
        let mut server = server;
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
            Ok(_) => info!("server stopped"),
            Err(_) => {
                server.abort();
                warn!(
                    grace_s = SHUTDOWN_GRACE.as_secs(),
                    "requests still open at the end of the shutdown grace period; abandoned"
                );
            }
        }
        if let Some(lease) = lease_handle {
            let _ = lease.await;
            info!("lease released");
        }
        Ok(())
    }
}

/// How long running reconciles, and then open requests to the operator's
/// server, may take to finish once the operator is asked to stop; well
/// inside a pod's default 30 s termination grace period.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why the operator could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The metrics address could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, #[source] std::io::Error),
    /// Leader election could not start.
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
}

/// Label the leader puts on its own pod; the chart's Service selects it, so
/// the node registry and the relay are reached only on the leader.
pub const LEADER_LABEL: &str = "mpc.torcus.io/leader";

/// This replica's pod, when it runs in one (its name is the instance).
fn own_pod(instance: &str, pod_name: Option<&str>, namespace: &str) -> Option<(String, String)> {
    let pod = pod_name.filter(|p| *p == instance)?;
    Some((namespace.to_owned(), pod.to_owned()))
}

/// Removes [`LEADER_LABEL`] from every pod of this release in `ns` but
/// `own` (the release is told by `own`'s instance and name labels): the
/// lease is this replica's now, and a leader that crashed left its label.
async fn unlabel_former_leaders(client: &Client, ns: &str, own: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut selector = format!("{LEADER_LABEL}=true");
    match pods.get(own).await {
        Ok(pod) => {
            for label in ["app.kubernetes.io/instance", "app.kubernetes.io/name"] {
                if let Some(value) = pod.metadata.labels.as_ref().and_then(|l| l.get(label)) {
                    selector.push_str(&format!(",{label}={value}"));
                }
            }
        }
        Err(error) => {
            warn!(%error, "could not read own pod; leaving other pods' leader labels alone");
            return;
        }
    }
    match pods.list(&kube::api::ListParams::default().labels(&selector)).await {
        Ok(list) => {
            for pod in list.items.iter().filter(|p| kube::ResourceExt::name_any(*p) != own) {
                label_leader(client, ns, &kube::ResourceExt::name_any(pod), false).await;
            }
        }
        Err(error) => warn!(%error, "could not list pods labelled as leader"),
    }
}

/// Sets or removes [`LEADER_LABEL`] on pod `ns/pod`; a failure is logged
/// (the Service then has no endpoint until the next leader labels itself).
async fn label_leader(client: &Client, ns: &str, pod: &str, leader: bool) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let value = if leader { serde_json::json!("true") } else { serde_json::Value::Null };
    let patch = serde_json::json!({"metadata": {"labels": {LEADER_LABEL: value}}});
    match pods.patch(pod, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await {
        Ok(_) => info!(%pod, leader, "labelled own pod"),
        Err(error) => warn!(%pod, %error, "could not label own pod as leader"),
    }
}

/// The trust bundle of cluster `name` in `ns` as the cluster controller
/// issued it, so that the registry checks a node's certificate against its
/// own cluster's CAs (old and new during a roll). From memory: a registry
/// POST, authenticated or not, costs no API call, and a cluster this
/// operator does not manage (or has not reconciled since it started) is
/// unknown whatever Secrets exist.
fn trust_lookup(nodes: node_client::NodeClient) -> registry::TrustLookup {
    Arc::new(move |ns: String, name: String| {
        let bundle = nodes.trust_bundle(&ns, &name);
        Box::pin(async move { bundle })
    })
}

/// A Lease identity unique per process even where every replica is PID 1
/// and `POD_NAME` is not given: the host name plus a random suffix.
fn default_instance() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim();
    let mut suffix = [0u8; 4];
    // Without randomness the host name alone still tells replicas apart on
    // separate pods; the suffix covers two processes on one host.
    let _ = getrandom::fill(&mut suffix);
    format!("{}-{}", if host.is_empty() { "torcus-operator" } else { host }, hex::encode(suffix))
}

/// Runs the SigningRequest controller until `stop` is cancelled.
async fn signing_controller_stream(
    client: Client,
    namespace: Option<&str>,
    ctx: Arc<context::Context>,
    stop: CancellationToken,
) {
    let api: Api<SigningRequest> = match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    Controller::new(api, watcher::Config::default())
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(signing_controller::reconcile, signing_controller::error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "signing controller event");
            }
        })
        .await;
}

/// Runs the MpcCluster controller until `stop` is cancelled.
async fn cluster_controller_stream(
    client: Client,
    namespace: Option<&str>,
    ctx: Arc<context::Context>,
    stop: CancellationToken,
) {
    fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    // Node resources only: the policy ledger ConfigMap changes with every
    // approval and is no reason to reconcile the cluster.
    let owned = watcher::Config::default()
        .labels("app.kubernetes.io/managed-by=torcus-operator,app.kubernetes.io/name=torcus-node");
    // Secrets are not watched: that would take the right to list and watch
    // every Secret in scope. The operator reads its own by name (get), and
    // a deleted or replaced one is seen at the next reconcile (every 15 s at
    // most once keys exist, every 5 s while a Secret is refused).
    Controller::new(api::<MpcCluster>(&client, namespace), watcher::Config::default())
        .owns(api::<ConfigMap>(&client, namespace), owned.clone())
        .owns(api::<Service>(&client, namespace), owned.clone())
        .owns(api::<StatefulSet>(&client, namespace), owned.clone())
        .owns(api::<PodDisruptionBudget>(&client, namespace), owned.clone())
        // Pods belong to the StatefulSets; their readiness and IPs feed the
        // cluster's status and certificates.
        .watches(api::<Pod>(&client, namespace), owned, |pod| {
            let cluster = pod.metadata.labels.as_ref()?.get(resources::LABEL_CLUSTER)?.clone();
            Some(ObjectRef::<MpcCluster>::new(&cluster).within(pod.metadata.namespace.as_deref()?))
        })
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(cluster_controller::reconcile, cluster_controller::error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                // Reconcile errors are counted in error_policy; these are
                // watch or queue errors, which the controller retries.
                tracing::debug!(%error, "controller event");
            }
        })
        .await;
}
