//! The operator's Prometheus metrics and its `/metrics`, `/healthz` and
//! `/readyz` endpoints.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::policy::Rule;

/// Every metric the operator exports, registered in its own registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Reconcile duration by controller.
    pub reconcile_duration: HistogramVec,
    /// Failed reconciles by controller and error kind.
    pub reconcile_errors: IntCounterVec,
    /// Certificates issued by kind (ca_created, ca_rolled, node, operator).
    pub certificates_issued: IntCounterVec,
    /// 1 while this replica leads and reconciles.
    pub leader: IntGauge,
    /// Keygens by outcome (completed, failed).
    pub keygens: IntCounterVec,
    /// SigningRequests entering each phase.
    pub signing_requests: IntCounterVec,
    /// Grants issued, by kind (keygen, sign).
    pub grants_issued: IntCounterVec,
    /// Grants a node refused or could not run, by reason.
    pub grants_rejected: IntCounterVec,
    /// Requests denied by policy, by rule.
    pub policy_denials: IntCounterVec,
    /// From SigningRequest creation to `Completed`.
    pub signing_latency: HistogramVec,
    /// Signing sessions by whether the initiator used a presignature
    /// ("presigned") or ran the full protocol ("full").
    pub initiator_sessions: IntCounterVec,
    /// Objects the operator did not make, or not as they are, refused
    /// instead of trusted, by kind: `status` (a SigningRequest status
    /// claiming a grant the operator did not issue for it), `secret` (a key
    /// or CA Secret this MpcCluster does not own), `pool_report` (a node's
    /// presignature report for a signer set it is not in, or twice),
    /// `ledger` (a policy ledger entry the grant key did not seal).
    pub untrusted_refused: IntCounterVec,
    /// Per MpcCluster (`namespace`, `mpccluster`): what the alerts compare.
    pub cluster: ClusterGauges,
}

/// Gauges per MpcCluster, set by the cluster reconciler, removed with the cluster.
#[derive(Debug, Clone)]
pub struct ClusterGauges {
    /// `spec.threshold`.
    pub threshold: IntGaugeVec,
    /// Nodes the registry sees online.
    pub nodes_online: IntGaugeVec,
    /// Per key: nodes not found without a share of it (spec.nodes minus
    /// those that answered they hold none).
    pub key_shares: IntGaugeVec,
    /// `spec.presignatures.poolSize` (0: pooling off).
    pub presignature_pool_size: IntGaugeVec,
    /// Earliest notAfter of the cluster's certificates, Unix seconds.
    pub certificate_expiry: GaugeVec,
}

impl ClusterGauges {
    /// Forgets the series of a deleted cluster with `keys`.
    pub fn remove(&self, namespace: &str, cluster: &str, keys: &[String]) {
        for key in keys {
            let _ = self.key_shares.remove_label_values(&[namespace, cluster, key.as_str()]);
        }
        let labels = [namespace, cluster];
        let _ = self.threshold.remove_label_values(&labels);
        let _ = self.nodes_online.remove_label_values(&labels);
        let _ = self.presignature_pool_size.remove_label_values(&labels);
        let _ = self.certificate_expiry.remove_label_values(&labels);
    }
}

impl Metrics {
    /// Creates and registers the metrics.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let reconcile_duration = HistogramVec::new(
            HistogramOpts::new("torcus_reconcile_duration_seconds", "Time spent in one reconcile")
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["controller"],
        )?;
        let reconcile_errors = IntCounterVec::new(
            Opts::new(
                "torcus_reconcile_errors_total",
                "Reconciles that failed, by the step that failed and error kind",
            ),
            &["controller", "step", "error"],
        )?;
        let certificates_issued = IntCounterVec::new(
            Opts::new("torcus_certificates_issued_total", "Certificates issued, by kind"),
            &["kind"],
        )?;
        let leader = IntGauge::new("torcus_operator_leader", "1 while this replica holds leadership and reconciles")?;
        let keygens = IntCounterVec::new(
            Opts::new("torcus_keygens_total", "Key generations, by outcome and scheme"),
            &["outcome", "scheme"],
        )?;
        let signing_requests = IntCounterVec::new(
            Opts::new("torcus_signing_requests_total", "SigningRequests entering a phase, by phase"),
            &["phase"],
        )?;
        let grants_issued = IntCounterVec::new(
            Opts::new("torcus_grants_issued_total", "Grants signed by the operator, by kind"),
            &["kind"],
        )?;
        for kind in ["keygen", "sign"] {
            grants_issued.with_label_values(&[kind]);
        }
        let grants_rejected = IntCounterVec::new(
            Opts::new("torcus_grants_rejected_total", "Grants that did not end in a session outcome, by reason"),
            &["reason"],
        )?;
        let policy_denials =
            IntCounterVec::new(Opts::new("torcus_policy_denials_total", "SigningRequests denied, by rule"), &["rule"])?;
        let signing_latency = HistogramVec::new(
            HistogramOpts::new(
                "torcus_signing_request_duration_seconds",
                "From SigningRequest creation to its final phase, by phase and key scheme",
            )
            .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
            &["phase", "scheme"],
        )?;
        let initiator_sessions = IntCounterVec::new(
            Opts::new("torcus_initiator_sessions_total", "Signing sessions the operator started, by initiator type"),
            &["type"],
        )?;
        let untrusted_refused = IntCounterVec::new(
            Opts::new(
                "torcus_untrusted_objects_refused_total",
                "Objects the operator refused to trust (forged status, foreign Secret, bad pool report), by kind",
            ),
            &["kind"],
        )?;
        for kind in ["status", "secret", "pool_report", "ledger"] {
            untrusted_refused.with_label_values(&[kind]);
        }
        // Known label values start at 0, so that the series exist before
        // the first occurrence: the dashboard's rates read 0, not "no data".
        for rule in Rule::ALL {
            policy_denials.with_label_values(&[rule.as_str()]);
        }
        // The reasons of `CallError::reason` that are the operator's own
        // (a node's refusals carry the node's reason).
        for reason in ["unreachable", "malformed_answer"] {
            grants_rejected.with_label_values(&[reason]);
        }
        // The controllers, their steps, and the labels of `Error::metric_label`.
        for (controller, steps) in crate::error::STEPS {
            for step in steps {
                for error in ["kube", "certs", "invalid_spec", "grant_key", "node_keys", "random", "foreign_secret"] {
                    reconcile_errors.with_label_values(&[controller, step, error]);
                }
            }
        }
        for c in [
            &keygens,
            &signing_requests,
            &grants_issued,
            &grants_rejected,
            &policy_denials,
            &initiator_sessions,
            &untrusted_refused,
        ] {
            registry.register(Box::new(c.clone()))?;
        }
        registry.register(Box::new(signing_latency.clone()))?;
        let per_cluster = ["namespace", "mpccluster"];
        let cluster = ClusterGauges {
            threshold: IntGaugeVec::new(
                Opts::new("torcus_mpccluster_threshold", "Parties needed to sign (spec.threshold)"),
                &per_cluster,
            )?,
            nodes_online: IntGaugeVec::new(
                Opts::new("torcus_mpccluster_nodes_online", "Nodes of the cluster the registry sees online"),
                &per_cluster,
            )?,
            key_shares: IntGaugeVec::new(
                Opts::new(
                    "torcus_mpccluster_key_shares",
                    "Nodes of the cluster not found without a share of the key (a node that answers holding none lost it)",
                ),
                &["namespace", "mpccluster", "key"],
            )?,
            presignature_pool_size: IntGaugeVec::new(
                Opts::new(
                    "torcus_mpccluster_presignature_pool_size",
                    "Presignatures each node keeps per signer set (0: pooling off)",
                ),
                &per_cluster,
            )?,
            certificate_expiry: GaugeVec::new(
                Opts::new(
                    "torcus_mpccluster_certificate_expiry_timestamp_seconds",
                    "Earliest notAfter of the cluster's CA and node certificates, Unix seconds",
                ),
                &per_cluster,
            )?,
        };
        registry.register(Box::new(cluster.threshold.clone()))?;
        registry.register(Box::new(cluster.nodes_online.clone()))?;
        registry.register(Box::new(cluster.key_shares.clone()))?;
        registry.register(Box::new(cluster.presignature_pool_size.clone()))?;
        registry.register(Box::new(cluster.certificate_expiry.clone()))?;
        registry.register(Box::new(reconcile_duration.clone()))?;
        registry.register(Box::new(reconcile_errors.clone()))?;
        registry.register(Box::new(certificates_issued.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        Ok(Self {
            registry,
            reconcile_duration,
            reconcile_errors,
            certificates_issued,
            leader,
            keygens,
            signing_requests,
            grants_issued,
            grants_rejected,
            policy_denials,
            signing_latency,
            initiator_sessions,
            untrusted_refused,
            cluster,
        })
    }

    /// The registry, for components that register their own metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Serves the metrics and health endpoints on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    extra: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(metrics)
        .merge(extra);
    if let Err(error) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
        tracing::warn!(%error, "metrics server stopped");
    }
}

async fn render(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics.render())
}

async fn ready(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    // A standby is ready too: it is up and will take over when the leader
    // goes. Reporting it unready would stall rolling updates of two replicas.
    (StatusCode::OK, if metrics.leader.get() == 1 { "leader" } else { "standby" })
}
