//! The wiring: the operator's server (metrics, health, node registry and
//! relay), leadership, and the two controllers, until shutdown.

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

use crate::{
    Args, Metrics, cli, cluster_controller, context, leader, metrics, node_client, registry, relay, resources,
    signing_controller,
};

impl Args {
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
            secret_propagation,
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
        let instance = instance.unwrap_or_else(cli::default_instance);
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

        let registry =
            Arc::new(registry::NodeRegistry::new(metrics.registry(), registry::RegistrySettings::default())?);
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
        if let Some((ns, pod)) = leader::own_pod(&instance_for_label, pod_name.as_deref(), &lease_namespace) {
            leader::label_leader(&client, &ns, &pod, false).await;
        }
        if leader_election {
            match leader::lead(&client, &lease_name, &lease_namespace, &instance, &stop).await? {
                Some(handle) => lease_handle = Some(handle),
                // Stopped before it led.
                None => return Ok(()),
            }
        }

        let mut ctx = context::Context::new(
            client.clone(),
            Recorder::new(client.clone(), Reporter { controller: "torcus-operator".into(), instance: Some(instance) }),
            resources::BuildContext {
                default_node_image: node_image,
                registry_url,
                cluster_domain,
                secret_propagation,
            },
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
        let own_pod = leader::own_pod(&instance_for_label, pod_name.as_deref(), &lease_namespace);
        if let Some((ns, pod)) = &own_pod {
            leader::unlabel_former_leaders(&client, ns, pod).await;
            leader::label_leader(&client, ns, pod, true).await;
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
            leader::label_leader(&client_for_label, ns, pod, false).await;
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
