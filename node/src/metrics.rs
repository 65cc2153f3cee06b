//! The node's Prometheus metrics.

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Every metric of the node's own logic (transports register theirs in the
/// same registry).
#[derive(Clone, Debug)]
pub struct NodeMetrics {
    /// The registry everything is in.
    pub registry: Registry,
    /// Sessions by kind (`keygen`, `sign`, `presign`; `any` for a grant
    /// session that failed) and outcome (`completed` or a failure reason).
    pub sessions: IntCounterVec,
    /// Duration of the MPC part of sessions, by kind.
    pub session_duration: HistogramVec,
    /// Grants refused, by reason.
    pub grants_rejected: IntCounterVec,
    /// Control messages that were malformed or for no known session.
    pub dropped_control: IntCounter,
    /// Proposals sent or received again, by event: `resent` (the initiator
    /// sent one again to a party that had not acked), `acked_again` (a
    /// participant answered a repeat with its ack), `ignored` (a repeat of
    /// one not acked yet or of a session already run here).
    pub proposals_repeated: IntCounterVec,
    /// Calls to the API refused before any handler ran, by reason:
    /// `handshake` (no client certificate, one of another CA, not TLS),
    /// `not_operator` (a valid certificate that is not this cluster's
    /// operator's, such as a node's), `busy` (too many handshakes at once).
    pub api_refused: IntCounterVec,
    /// 1 while configuration and TLS identity check out.
    pub ready: IntGauge,
    /// Changed TLS files taken for QUIC (`ok`) or refused (`refused`).
    pub tls_reloads: IntCounterVec,
    /// Peer addresses taken (a peer's first, or a changed one), by where
    /// they came from: `dns` (the peer's stable DNS name) or `registry`.
    pub peer_addresses: IntCounterVec,
    /// Presignatures ready, per key (summed over signer sets: sets would
    /// multiply the series).
    pub presignature_pool_depth: IntGaugeVec,
    /// Presignatures made by presigning sessions.
    pub presignatures_generated: IntCounter,
    /// Presignatures that issued a partial signature.
    pub presignatures_used: IntCounter,
    /// Presignatures dropped unused: evicted from a full pool, pruned because
    /// another member lost them, or taken for a session that then ran the
    /// full protocol or failed before signing.
    pub presignatures_discarded: IntCounter,
}

impl NodeMetrics {
    /// Creates the metrics in a fresh registry.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let sessions = IntCounterVec::new(
            Opts::new("torcus_node_sessions_total", "Sessions by kind and outcome"),
            &["kind", "outcome"],
        )?;
        let session_duration = HistogramVec::new(
            HistogramOpts::new("torcus_node_session_duration_seconds", "Time the MPC protocol of a session took")
                .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]),
            &["kind"],
        )?;
        let grants_rejected = IntCounterVec::new(
            Opts::new("torcus_node_grants_rejected_total", "Grants refused, by reason"),
            &["reason"],
        )?;
        // Known reasons start at 0 so that the series exist before the first
        // refusal: those of `GrantError::reason`, and the node's own.
        for reason in [
            "bad_signature",
            "expired",
            "not_yet_valid",
            "not_a_member",
            "replayed",
            "malformed",
            "unsupported_version",
            "storage",
            "wrong_cluster",
        ] {
            grants_rejected.with_label_values(&[reason]);
        }
        let api_refused = IntCounterVec::new(
            Opts::new("torcus_node_api_refused_total", "Calls to the node API refused before a handler, by reason"),
            &["reason"],
        )?;
        for reason in ["handshake", "not_operator", "busy"] {
            api_refused.with_label_values(&[reason]);
        }
        registry.register(Box::new(api_refused.clone()))?;
        let tls_reloads = IntCounterVec::new(
            Opts::new("torcus_node_tls_reloads_total", "Changed TLS files taken for QUIC or refused, by outcome"),
            &["outcome"],
        )?;
        for outcome in ["ok", "refused"] {
            tls_reloads.with_label_values(&[outcome]);
        }
        registry.register(Box::new(tls_reloads.clone()))?;
        let peer_addresses = IntCounterVec::new(
            Opts::new("torcus_node_peer_addresses_total", "Peer addresses taken (first or changed), by source"),
            &["source"],
        )?;
        for source in ["dns", "registry"] {
            peer_addresses.with_label_values(&[source]);
        }
        registry.register(Box::new(peer_addresses.clone()))?;
        let dropped_control =
            IntCounter::new("torcus_node_control_dropped_total", "Control messages malformed or for no session")?;
        let proposals_repeated = IntCounterVec::new(
            Opts::new("torcus_node_proposals_repeated_total", "Session proposals sent or received again, by event"),
            &["event"],
        )?;
        for event in ["resent", "acked_again", "ignored"] {
            proposals_repeated.with_label_values(&[event]);
        }
        registry.register(Box::new(proposals_repeated.clone()))?;
        let ready = IntGauge::new("torcus_node_ready", "1 while the node's configuration and TLS identity check out")?;
        registry.register(Box::new(sessions.clone()))?;
        registry.register(Box::new(session_duration.clone()))?;
        registry.register(Box::new(grants_rejected.clone()))?;
        registry.register(Box::new(dropped_control.clone()))?;
        let presignature_pool_depth = IntGaugeVec::new(
            Opts::new("torcus_presignature_pool_depth", "Presignatures ready in memory, per key (all signer sets)"),
            &["key"],
        )?;
        let presignatures_generated =
            IntCounter::new("torcus_presignatures_generated_total", "Presignatures made by presigning sessions")?;
        let presignatures_used =
            IntCounter::new("torcus_presignatures_used_total", "Presignatures that issued a partial signature")?;
        let presignatures_discarded = IntCounter::new(
            "torcus_presignatures_discarded_total",
            "Presignatures dropped without issuing a partial signature",
        )?;
        registry.register(Box::new(ready.clone()))?;
        registry.register(Box::new(presignature_pool_depth.clone()))?;
        registry.register(Box::new(presignatures_generated.clone()))?;
        registry.register(Box::new(presignatures_used.clone()))?;
        registry.register(Box::new(presignatures_discarded.clone()))?;
        Ok(Self {
            registry,
            sessions,
            session_duration,
            grants_rejected,
            dropped_control,
            proposals_repeated,
            api_refused,
            tls_reloads,
            peer_addresses,
            ready,
            presignature_pool_depth,
            presignatures_generated,
            presignatures_used,
            presignatures_discarded,
        })
    }
}
