//! The SigningRequest controller: the grant-issuing control plane.
//!
//! For each request it checks the cluster and key, runs the cluster's
//! policy, picks `threshold` healthy participants from a fresh grant id,
//! records the grant in the status *before* it is used, asks the grant's
//! initiator to run the session, verifies the signature against the key,
//! and writes `Completed`. A failed attempt is retried with a new grant and
//! a new participant set while enough healthy nodes remain.
//!
//! Unforgeable: a payload travels in the grant and every node hashes it
//! itself; only then may a presignature sign it, and only one made for the
//! request's key, derivation path and signer set. A raw digest always runs
//! the full protocol (the operator reserves no presignature for it, and the
//! nodes would not use one). `status.protocol` says which ran, and
//! `status.protocolReason` why the full protocol ran where pools exist.
//!
//! Exactly once: a grant is written to the status before it is sent, and a
//! request found in `Signing` (an operator that restarted, or a retry) first
//! asks the initiator how that grant's session went. A finished session is
//! taken as it is; one that never started gets the same grant again (the
//! node refuses a grant it has used); only a session that failed gets a new
//! grant. No grant is ever issued twice for the same attempt.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use torcus_contract::api::{FrostSignatureOut, Outcome, PresignatureChoice, SessionStatus, SignatureOut};
use torcus_contract::{GrantKind, Scheme, SignMessage, SignedGrant};
use torcus_crds::{
    IssuedGrant, KeyStatus, MpcCluster, Signature, SigningPhase, SigningProtocol, SigningRequest, SigningRequestStatus,
    Timings,
};
use tracing::{debug, info, warn};

use crate::apiserver::FIELD_MANAGER;
use crate::context::Context;
use crate::grants::{self, GrantParts};
use crate::node_client::{self, NodeAddr};
use crate::policy::{self, Approval, Ledger};
use crate::presignatures::{self, Freshness};
use crate::resources::{LABEL_CLUSTER, LABEL_PARTY};
use crate::{Error, Result, crypto, signers};

/// Signing attempts (each with its own grant) before a request fails.
pub const MAX_ATTEMPTS: u16 = 4;
/// How long a request may wait for its cluster's key or nodes.
pub const PENDING_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest a request waits in one reconcile for a session slot of its
/// cluster before it says it is queued (and tries again).
const QUEUE_WAIT: Duration = Duration::from_secs(20);
/// How long approvals stay in memory under a policy without rate or spend
/// limits, for a limit added later to count them.
const UNLIMITED_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// A failure that names nobody.
const NO_FAULT: (Option<u16>, Option<u16>) = (None, None);
/// What a signing session may take before it runs, on top of
/// [`node_client::sign_call_timeout`]: the nodes' handshake.
const HANDSHAKE_ALLOWANCE: Duration = Duration::from_secs(15);

/// Parties a new attempt leaves out: `always`, and `if_enough_remain` while
/// a signer set remains without them.
#[derive(Clone, Copy, Debug, Default)]
struct LeftOut<'a> {
    always: &'a [u16],
    if_enough_remain: &'a [u16],
}

/// What the participants of a failed attempt know of its session.
enum Elsewhere {
    /// It completed on one of them: its outcome.
    Completed(Outcome),
    /// It is still running on one of them.
    Running,
    /// Neither. `lost`: the participants that did not answer, or have no
    /// record of the session (restarted since, or never reached).
    Unknown { lost: Vec<u16> },
}

/// The grant a status records, re-made from it and the spec.
enum Recorded {
    /// With the operator's proof that it issued it for this request.
    Proven(SignedGrant),
    /// Without: never sent. The grant, when the fields make one, and why
    /// it is not taken as the operator's.
    Unproven(Option<SignedGrant>, String),
}

/// A grant ready to send, to whom, and the presignature it is to use.
struct Attempt {
    grant: SignedGrant,
    url: NodeAddr,
    presignature: PresignatureChoice,
}

/// Why no presignature was reserved for a request although the cluster
/// keeps pools, as `status.protocolReason` says it.
pub mod full_protocol_reason {
    /// A raw digest: never signed from a presignature.
    pub const RAW_DIGEST: &str = "raw-digest";
    /// No pool for the request's derivation path.
    pub const PATH_NOT_POOLED: &str = "path-not-pooled";
    /// No free presignature for any healthy signer set.
    pub const POOL_EMPTY: &str = "pool-empty";
    /// A participant did not hold the presignature reserved for the session.
    pub const NOT_HELD: &str = "not-held";
}

/// Grant refusals a new grant for the same request cannot cure: the nodes
/// refused what the request asks, not the moment or the signer set.
const FINAL_REFUSALS: [&str; 3] = ["digest_mismatch", "malformed", "unsupported_version"];

/// Reconciles one SigningRequest.
pub async fn reconcile(sr: Arc<SigningRequest>, ctx: Arc<Context>) -> Result<Action> {
    let started = std::time::Instant::now();
    let result = Reconcile::new(&sr, &ctx).run().await;
    ctx.metrics.reconcile_duration.with_label_values(&["signingrequest"]).observe(started.elapsed().as_secs_f64());
    result
}

/// Retries after a failure to reach the API server.
pub fn error_policy(sr: Arc<SigningRequest>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_errors.with_label_values(&["signingrequest", error.step(), error.metric_label()]).inc();
    warn!(request = %sr.name_any(), namespace = ?sr.namespace(), %error, "signing request reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

struct Reconcile<'a> {
    sr: &'a SigningRequest,
    ctx: &'a Context,
    /// Namespace of the request.
    ns: String,
    /// Namespace of its MpcCluster: the grant's, the nodes', the ledger's.
    cluster_ns: String,
    uid: String,
    status: SigningRequestStatus,
    /// The scheme of the request's key, once its cluster was read (a
    /// metrics label; `unknown` before).
    scheme: &'static str,
}

/// A node of the cluster as the controller sees it.
#[derive(Debug, Clone)]
struct Node {
    url: NodeAddr,
    healthy: bool,
    /// What the node's build runs, as it registered (`None`: not
    /// registered, or a build from before capabilities).
    capabilities: Option<torcus_contract::registry::Capabilities>,
}

impl Node {
    /// Whether the node can run a session of `scheme`. Every build runs
    /// ECDSA; a FROST scheme only a node that registered saying so.
    fn runs(&self, scheme: Scheme) -> bool {
        !scheme.is_frost() || torcus_contract::registry::Capabilities::of(self.capabilities.as_ref(), scheme)
    }
}

impl<'a> Reconcile<'a> {
    fn new(sr: &'a SigningRequest, ctx: &'a Context) -> Self {
        let uid = sr.metadata.uid.clone().unwrap_or_default();
        let cached = sr.status.clone().unwrap_or_default();
        let status = {
            let mut written = ctx.signing.written.lock().unwrap_or_else(PoisonError::into_inner);
            match written.get(&uid) {
                Some((version, w)) if !caught_up(sr.metadata.resource_version.as_deref(), version.as_deref()) => {
                    w.clone()
                }
                Some(_) => {
                    written.remove(&uid);
                    cached
                }
                None => cached,
            }
        };
        let ns = sr.namespace().unwrap_or_default();
        let cluster_ns = sr.spec.cluster_namespace.clone().unwrap_or_else(|| ns.clone());
        Self { sr, ctx, ns, cluster_ns, uid, status, scheme: "unknown" }
    }

    async fn run(mut self) -> Result<Action> {
        if self.sr.metadata.deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        let (step, result) = match next_step(&self.status) {
            Step::Done => return Ok(Action::await_change()),
            Step::Resume => ("resume", self.resume().await),
            Step::Decide => ("decide", self.decide().await),
        };
        // The cluster says so too; the request waits (and times out)
        // rather than retry as an error for ever.
        let result = match result {
            Err(Error::ForeignSecret(name)) => {
                self.wait("GrantKeyNotOwned", format!("the cluster's grant key Secret {name} is not the operator's"))
                    .await
            }
            other => other,
        };
        result.map_err(Error::at(step))
    }

    /// A new (or waiting) request: validate, run the policy, issue a grant.
    async fn decide(&mut self) -> Result<Action> {
        let spec = &self.sr.spec;
        if let Err(e) = crypto::message(spec) {
            return self.fail("InvalidRequest", e.to_string()).await;
        }
        let path = match crypto::derivation_path(spec.derivation_path.as_deref()) {
            Ok(p) => p,
            Err(e) => return self.fail("InvalidRequest", e.to_string()).await,
        };
        let Some(mpc) = self.cluster().await? else {
            let message = format!("no MpcCluster named {} in namespace {}", spec.cluster, self.cluster_ns);
            return self.fail("UnknownCluster", message).await;
        };
        if !mpc.spec.keys.contains(&spec.key) {
            let message =
                format!("cluster {} has no key named {} (keys: {})", spec.cluster, spec.key, mpc.spec.keys.join(", "));
            return self.fail("UnknownKey", message).await;
        }
        self.scheme = crypto::scheme(mpc.spec.scheme_of(&spec.key)).as_str();
        // What the key's scheme signs: an Ed25519 key takes no digest, no
        // hash and no path. Refused before the policy counts the request.
        let kind = match self.kind(&mpc) {
            Ok(kind) => kind,
            Err(e) => return self.fail("InvalidRequest", e.to_string()).await,
        };
        // Policy first: a denial needs no nodes. Decision and count in one
        // step under the ledger lock; an approval is recorded once. The
        // status's `approvedAt` is never taken as the approval: only the
        // operator's own ledger says a request was approved.
        let now = SystemTime::now();
        if let Err(denial) = self.admit(&mpc, now).await? {
            return self.deny(denial).await;
        }
        if self.status.approved_at.is_none() {
            self.status.approved_at = Some(rfc3339(now));
        }
        let Some(key) = self.key(&mpc) else {
            return self.wait("WaitingForKey", format!("key {} is not generated yet", spec.key)).await;
        };
        // The key the signature must verify under, derived here from public
        // material: never taken from the nodes' answer.
        let public_key = match crypto::signing_public_key(&key, &path) {
            Ok(k) => k,
            Err(e) => return self.fail("InvalidRequest", e.to_string()).await,
        };
        if !self.credentials_loaded(&mpc) {
            let message = format!("the operator has not loaded cluster {}'s certificates yet", mpc.name_any());
            return self.wait("WaitingForNodes", message).await;
        }
        let nodes = self.nodes(&mpc).await?;
        let healthy: Vec<u16> = healthy_indices(&nodes);
        if healthy.len() < usize::from(mpc.spec.threshold) {
            let message =
                format!("{} of {} nodes healthy; {} needed", healthy.len(), mpc.spec.nodes, mpc.spec.threshold);
            return self.wait("WaitingForNodes", message).await;
        }
        // During a rolling upgrade, only nodes whose build runs the key's
        // scheme take part: no session starts that one cannot finish.
        let scheme = kind.scheme();
        let lacking: Vec<u16> = healthy.iter().copied().filter(|i| !nodes[i].runs(scheme)).collect();
        if healthy.len() - lacking.len() < usize::from(mpc.spec.threshold) {
            let message = format!(
                "{} of {} healthy nodes run {scheme}; {} needed: nodes {lacking:?} run a build without it \
                 (a rolling upgrade in progress?), or have not registered with this operator yet",
                healthy.len() - lacking.len(),
                healthy.len(),
                mpc.spec.threshold
            );
            return self.wait("WaitingForCapableNodes", message).await;
        }
        // Admission: at most so many sessions of this cluster at once (see
        // `SESSIONS_PER_NODE`); the others queue here, oldest first, and
        // say so when the wait is long.
        let Some(_slot) = self.session_slot(&mpc).await else {
            let running = crate::signing_state::cluster_sessions(mpc.spec.nodes, mpc.spec.threshold);
            let message = format!(
                "queued: cluster {} runs {running} signing sessions at once, all taken for {}s",
                mpc.name_any(),
                QUEUE_WAIT.as_secs()
            );
            return self.wait("Queued", message).await;
        };
        self.status.public_key = Some(public_key);
        self.status.reason = None;
        let attempt = match self.new_attempt(&mpc, &nodes, kind, LeftOut::default(), &[]).await {
            Ok(next) => next,
            Err(Error::InvalidSpec(message)) => return self.wait("WaitingForNodes", message).await,
            Err(e) => return Err(e),
        };
        self.publish(SigningPhase::Signing).await?;
        self.sign(&mpc, attempt).await
    }

    /// The request's MpcCluster; `None` when there is none, or when the
    /// operator may not read that namespace (it watches another one).
    async fn cluster(&self) -> Result<Option<MpcCluster>> {
        let clusters: Api<MpcCluster> = Api::namespaced(self.ctx.client.clone(), &self.cluster_ns);
        match clusters.get_opt(&self.sr.spec.cluster).await {
            Err(kube::Error::Api(status)) if status.code == 403 => Ok(None),
            other => Ok(other?),
        }
    }

    /// A request in `Signing` with a recorded grant: find out how it went.
    async fn resume(&mut self) -> Result<Action> {
        // A 403 here is an error to retry, not a missing cluster: the cluster
        // was readable when this grant was issued.
        let clusters: Api<MpcCluster> = Api::namespaced(self.ctx.client.clone(), &self.cluster_ns);
        let Some(mpc) = clusters.get_opt(&self.sr.spec.cluster).await? else {
            return self.fail("UnknownCluster", "the MpcCluster was deleted while signing".into()).await;
        };
        self.scheme = crypto::scheme(mpc.spec.scheme_of(&self.sr.spec.key)).as_str();
        // The key the signature must verify under, from the cluster's
        // status, never from the request's.
        let spec_path = crypto::derivation_path(self.sr.spec.derivation_path.as_deref()).unwrap_or_default();
        if let Some(key) = self.key(&mpc)
            && let Ok(public_key) = crypto::signing_public_key(&key, &spec_path)
        {
            self.status.public_key = Some(public_key);
        }
        let grant = match self.recorded_grant(&mpc).await? {
            Recorded::Proven(grant) => grant,
            Recorded::Unproven(grant, why) => {
                // Nothing is sent for it. But a session it names may have
                // run (a grant of a release that recorded no proof): a
                // completed one is taken, its signature checked like any.
                if let Some(grant) = grant {
                    let nodes = self.nodes(&mpc).await?;
                    if let Some(node) = nodes.get(&grant.grant.initiator())
                        && let Ok(Some(SessionStatus::Completed { outcome })) =
                            self.ctx.nodes.session(&node.url, &grant.grant.session_id()).await
                    {
                        return self.complete(outcome, None, &mpc).await;
                    }
                }
                return self.refuse_status(why).await;
            }
        };
        // Just after a start, the cluster controller may not have loaded the
        // certificate the nodes are called with: not a failed attempt.
        if !self.credentials_loaded(&mpc) && grant.grant.expires_at > torcus_contract::unix_now() {
            debug!(request = %self.sr.name_any(), namespace = %self.ns, "waiting for the cluster's certificates");
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        let nodes = self.nodes(&mpc).await?;
        let initiator = grant.grant.initiator();
        // What follows may send a grant (this one, or a retry's): under a
        // session slot, as in `decide` (after a restart, every request in
        // flight comes through here at once).
        let Some(_slot) = self.session_slot(&mpc).await else {
            return Ok(Action::requeue(Duration::from_secs(1)));
        };
        let Some(url) = nodes.get(&initiator).map(|n| n.url.clone()) else {
            return self.retry(&mpc, &nodes, format!("initiator {initiator} has no address"), NO_FAULT).await;
        };
        match self.ctx.nodes.session(&url, &grant.grant.session_id()).await {
            Ok(Some(SessionStatus::Completed { outcome })) => self.complete(outcome, None, &mpc).await,
            Ok(Some(SessionStatus::Proposed | SessionStatus::Running)) => {
                Ok(Action::requeue(Duration::from_millis(500)))
            }
            Ok(Some(SessionStatus::Failed { reason, blamed, accuser })) => {
                self.retry(&mpc, &nodes, reason, (blamed, accuser)).await
            }
            // What was reserved for it is not known after a restart: the
            // initiator chooses. Unless the session ran without it: an
            // initiator killed after its session completed has forgotten it.
            Ok(None) if grant.grant.expires_at > torcus_contract::unix_now() + 5 => {
                match self.attempt_elsewhere(&mpc, &nodes).await {
                    Elsewhere::Completed(outcome) => self.complete(outcome, None, &mpc).await,
                    Elsewhere::Running => Ok(Action::requeue(Duration::from_secs(1))),
                    Elsewhere::Unknown { .. } => {
                        self.sign(&mpc, Attempt { grant, url, presignature: PresignatureChoice::Any }).await
                    }
                }
            }
            Ok(None) => self.retry(&mpc, &nodes, "the grant expired before its session ran".into(), NO_FAULT).await,
            Err(e) => self.retry(&mpc, &nodes, e.to_string(), NO_FAULT).await,
        }
    }

    /// A slot to run one signing session of `mpc`, waiting up to
    /// [`QUEUE_WAIT`] (see `SigningState::session_slot`).
    async fn session_slot(&self, mpc: &MpcCluster) -> Option<crate::signing_state::SessionSlot> {
        let uid = mpc.uid().unwrap_or_default();
        let created = self.sr.metadata.creation_timestamp.as_ref().map_or(0, |t| t.0.as_millisecond());
        let ticket = (created, self.uid.clone());
        self.ctx.signing.session_slot(&uid, mpc.spec.nodes, mpc.spec.threshold, &ticket, QUEUE_WAIT).await
    }

    /// Sends the attempt's grant to its initiator and records the outcome.
    async fn sign(&mut self, mpc: &MpcCluster, attempt: Attempt) -> Result<Action> {
        match self.ctx.nodes.sign(&attempt.url, &attempt.grant, attempt.presignature).await {
            Ok((outcome, took)) => self.complete(outcome, Some(took), mpc).await,
            Err(e) if is_final_refusal(&e.reason()) => {
                self.ctx.metrics.grants_rejected.with_label_values(&[&e.reason()]).inc();
                self.fail("GrantRefused", format!("the nodes refused the grant: {e}")).await
            }
            Err(e) => {
                self.ctx.metrics.grants_rejected.with_label_values(&[&e.reason()]).inc();
                let nodes = self.nodes(mpc).await?;
                self.retry(mpc, &nodes, e.to_string(), e.fault()).await
            }
        }
    }

    /// Checks and records a session's outcome.
    async fn complete(&mut self, outcome: Outcome, took: Option<Duration>, mpc: &MpcCluster) -> Result<Action> {
        let pools = mpc.spec.presignatures.pool_size > 0;
        if let Err((reason, message)) = self.check_outcome(mpc, &outcome) {
            return self.fail(reason, message).await;
        }
        // FROST keeps no presignatures: always the full protocol, with no
        // reason to give for it.
        let (signature, presigned, ecdsa) = match &outcome {
            Outcome::Signature(sig) => (signature_status(sig), sig.presigned, true),
            Outcome::FrostSignature(sig) => (frost_signature_status(sig), false, false),
            Outcome::Keygen { .. } => {
                return self.fail("ProtocolError", "the initiator answered with a key, not a signature".into()).await;
            }
        };
        let cluster = &self.sr.spec.cluster;
        for party in &self.status.participants {
            self.ctx.registry.record_outcome(&self.cluster_ns, cluster, *party, true);
        }
        if let (Some(initiator), Some(took)) = (self.status.initiator, took) {
            self.ctx.registry.record_latency(&self.cluster_ns, cluster, initiator, took);
        }
        let initiator_type = if presigned { "presigned" } else { "full" };
        self.ctx.metrics.initiator_sessions.with_label_values(&[initiator_type]).inc();
        if presigned {
            self.status.protocol = Some(SigningProtocol::Presigned);
            self.status.protocol_reason = None;
        } else {
            self.status.protocol = Some(SigningProtocol::Full);
            // The reason recorded when no presignature was reserved;
            // otherwise one was, and a participant did not hold it.
            if !ecdsa {
                self.status.protocol_reason = None;
            } else if self.status.protocol_reason.is_none() && pools {
                self.status.protocol_reason = Some(full_protocol_reason::NOT_HELD.to_owned());
            }
        }
        self.status.signature = Some(signature);
        let timings = self.status.timings.get_or_insert_with(Timings::default);
        timings.signing_ms = took.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.status.reason = None;
        self.ctx.signing.settle(&self.uid);
        self.publish(SigningPhase::Completed).await?;
        Ok(Action::await_change())
    }

    /// Whether `outcome` is a signature of this request: of the key's
    /// scheme, over its message, under the key recorded before the grant was
    /// issued (the cluster's key, or the one the operator derived from it).
    /// Else the failure's reason and message.
    fn check_outcome(&self, mpc: &MpcCluster, outcome: &Outcome) -> std::result::Result<(), (&'static str, String)> {
        let scheme = self.key_scheme(mpc).map_err(|e| ("InvalidRequest", e.to_string()))?;
        match (scheme, outcome) {
            (Scheme::EcdsaSecp256k1, Outcome::Signature(sig)) => self.check_signature(sig),
            (Scheme::SchnorrBip340 | Scheme::EddsaEd25519, Outcome::FrostSignature(sig)) => {
                let under = self.status.public_key.clone().unwrap_or_default();
                let message =
                    crypto::message_for(&self.sr.spec, scheme).map_err(|e| ("InvalidRequest", e.to_string()))?;
                crypto::verify_frost(scheme, &under, &message, sig)
                    .map_err(|e| ("SignatureInvalid", format!("the returned signature was refused: {e}")))
            }
            _ => {
                Err(("ProtocolError", format!("the initiator answered with something other than a {scheme} signature")))
            }
        }
    }

    /// Whether `sig` is this request's ECDSA signature (see `check_outcome`).
    fn check_signature(&self, sig: &SignatureOut) -> std::result::Result<(), (&'static str, String)> {
        let under = self.status.public_key.clone().unwrap_or_default();
        let digest = crypto::digest(&self.sr.spec).map_err(|e| ("InvalidRequest", e.to_string()))?;
        crypto::verify(&under, &digest, sig)
            .map_err(|e| ("SignatureInvalid", format!("the returned signature was refused: {e}")))?;
        if sig.public_key != under {
            let message = format!("the initiator reports key {} for a signature under {under}", sig.public_key);
            return Err(("SignatureInvalid", message));
        }
        Ok(())
    }

    /// Starts another attempt after a failed one, or fails the request.
    /// `fault` is whom the initiator held responsible and who accused it
    /// (see [`signers`]): the two are not put in one session of this
    /// request again while other signers remain, so one node breaking every
    /// session it is in cannot make a request fail.
    async fn retry(
        &mut self,
        mpc: &MpcCluster,
        nodes: &BTreeMap<u16, Node>,
        why: String,
        fault: (Option<u16>, Option<u16>),
    ) -> Result<Action> {
        // A failed call is not always a failed session: the initiator may
        // have been killed, or its answer lost, after the session completed.
        // A new grant would sign the message a second time; every
        // participant ends a session with the signature, so ask them first.
        let lost = match self.attempt_elsewhere(mpc, nodes).await {
            Elsewhere::Completed(outcome) => {
                info!(request = %self.sr.name_any(), namespace = %self.ns, %why, "the failed call's session completed: its signature is taken from a participant");
                return self.complete(outcome, None, mpc).await;
            }
            // Ends within the session's deadline; asked again then.
            Elsewhere::Running => return Ok(Action::requeue(Duration::from_secs(1))),
            Elsewhere::Unknown { lost } => lost,
        };
        warn!(request = %self.sr.name_any(), namespace = %self.ns, attempt = self.status.attempts, %why, ?fault, ?lost, "signing attempt failed");
        let new = match self.status.initiator {
            Some(initiator) => signers::disputes(initiator, &self.status.participants, fault.0, fault.1),
            None => Vec::new(),
        };
        // Counted once per session, however often this runs for it (a
        // reconcile that failed after this line comes back here).
        let crashed = match (lost.is_empty(), &self.status.session_id) {
            (false, Some(session)) => Some(session.as_str()),
            _ => None,
        };
        let failures = self.ctx.signing.add_failure(&self.uid, &new, crashed);
        let budget = AttemptBudget::of(mpc.spec.nodes, mpc.spec.threshold);
        if let Some(spent) = budget.spent(self.status.attempts, failures.crashes()) {
            let message = format!("{} attempts failed ({spent}); the last: {why}", self.status.attempts);
            return self.fail("SigningFailed", message).await;
        }
        let disputes = failures.disputes;
        // Nodes that do not answer now are left out of the next attempt.
        let unresponsive = self.unresponsive(nodes).await;
        for party in &unresponsive {
            self.ctx.registry.record_outcome(&self.cluster_ns, &mpc.name_any(), *party, false);
        }
        let kind = match self.kind(mpc) {
            Ok(kind) => kind,
            Err(e) => return self.fail("InvalidRequest", e.to_string()).await,
        };
        // So, while enough others remain, are the parties that had lost the
        // session: one just restarted, or one that claims to have (an
        // attempt it breaks that way costs it its place in the next).
        self.status.reason = Some(format!("attempt {} failed: {why}", self.status.attempts));
        let left_out = LeftOut { always: &unresponsive, if_enough_remain: &lost };
        let attempt = match self.new_attempt(mpc, nodes, kind, left_out, &disputes).await {
            Ok(next) => next,
            Err(Error::InvalidSpec(message)) => return self.fail("NotEnoughNodes", message).await,
            Err(e) => return Err(e),
        };
        self.publish(SigningPhase::Signing).await?;
        // An Event's note holds at most 1 kB.
        let why: String = why.chars().take(600).collect();
        let note = format!(
            "attempt {} failed: {why}; attempt {} with parties {:?}, party {} initiates",
            self.status.attempts - 1,
            self.status.attempts,
            self.status.participants,
            self.status.initiator.unwrap_or_default()
        );
        // An action of its own per attempt: Events of one reason and action
        // are folded into one series, which would keep only the first note.
        self.event(EventType::Warning, "Retrying".to_owned(), format!("SignAttempt{}", self.status.attempts), note);
        Box::pin(self.sign(mpc, attempt)).await
    }

    /// Picks participants for a new grant (a signer set with a free
    /// presignature first), records the grant in the status (not yet
    /// published) and returns it with the initiator's URL and the
    /// presignature reserved for it.
    async fn new_attempt(
        &mut self,
        mpc: &MpcCluster,
        nodes: &BTreeMap<u16, Node>,
        kind: GrantKind,
        left_out: LeftOut<'_>,
        disputes: &[signers::Dispute],
    ) -> Result<Attempt> {
        // Nor a node that holds no share of the key (a volume lost).
        let lost = self.ctx.shares_lost(mpc, kind.key());
        let threshold = mpc.spec.threshold;
        // Nor one whose build does not run the key's scheme.
        let scheme = kind.scheme();
        let mut healthy: Vec<u16> = healthy_indices(nodes)
            .into_iter()
            .filter(|i| !left_out.always.contains(i) && !lost.contains(i))
            .filter(|i| nodes.get(i).is_some_and(|node| node.runs(scheme)))
            .collect();
        let fewer: Vec<u16> = healthy.iter().copied().filter(|i| !left_out.if_enough_remain.contains(i)).collect();
        if fewer.len() >= usize::from(threshold) {
            healthy = fewer;
        }
        let pools = mpc.spec.presignatures.pool_size > 0;
        // Only a payload the nodes hash, at a path pooled before the
        // presignatures were made, may use one.
        let usable = match &kind {
            GrantKind::Sign { message: SignMessage::Payload { .. }, derivation_path, .. } => {
                match crate::resources::presignature_paths(&mpc.spec.presignatures).contains(derivation_path) {
                    true => Ok(derivation_path.clone()),
                    false => Err(full_protocol_reason::PATH_NOT_POOLED),
                }
            }
            _ => Err(full_protocol_reason::RAW_DIGEST),
        };
        let reserved = match (&usable, pools) {
            (Ok(path), true) => {
                let pool = self.pool_id(kind.key(), path);
                self.refresh_pools(&pool, nodes, &healthy, kind.key(), path).await;
                self.ctx.signing.presignatures.reserve_apart(&pool, &healthy, threshold, disputes)
            }
            _ => None,
        };
        self.status.protocol_reason = match (pools, &usable, &reserved) {
            // FROST keeps no presignatures: there is no reason to give.
            _ if kind.scheme().is_frost() => None,
            (false, ..) | (true, Ok(_), Some(_)) => None,
            (true, Err(reason), _) => Some((*reason).to_owned()),
            (true, Ok(_), None) => Some(full_protocol_reason::POOL_EMPTY.to_owned()),
        };
        self.status.protocol = None;
        let warm: Vec<Vec<u16>> = reserved.iter().map(|(set, _)| set.clone()).collect();
        let parts = GrantParts::fresh(grants::SIGN_GRANT_TTL_SECS, |id| {
            let usual = || torcus_contract::select_participants_preferring(id, &healthy, threshold, &warm);
            signers::choose_apart(&healthy, threshold, disputes, usual).or_else(usual)
        })
        .ok_or_else(|| {
            Error::InvalidSpec(format!("{} healthy nodes answer; {threshold} needed to sign", healthy.len()))
        })?;
        let key = grants::signing_key(&self.ctx.client, mpc).await?;
        let grant = grants::issue(&key, &self.cluster_ns, &mpc.name_any(), kind, &parts)?;
        // Over the grant as the status and the spec make it again.
        let proof = grants::proof(&key, &self.uid, &grant);
        #[cfg(feature = "test-hooks")]
        let grant = self.ctx.test_hooks.tamper(grant, &key);
        self.ctx.metrics.grants_issued.with_label_values(&["sign"]).inc();
        let initiator = grant.grant.initiator();
        // The initiator is one of the healthy nodes the participants come from.
        let url = nodes
            .get(&initiator)
            .map(|n| n.url.clone())
            .ok_or_else(|| Error::InvalidSpec(format!("initiator {initiator} is not among the nodes found")))?;
        let presignature = match reserved {
            Some((set, id)) if set == parts.participants => PresignatureChoice::Id(id),
            // Any the nodes hold are reserved for other sessions; FROST
            // has none.
            _ if pools || scheme.is_frost() => PresignatureChoice::None,
            _ => PresignatureChoice::Any,
        };
        debug!(request = %self.sr.name_any(), ?healthy, participants = ?parts.participants, ?presignature, "issued a signing grant");
        self.status.attempts = self.status.attempts.saturating_add(1);
        self.status.participants = parts.participants.clone();
        self.status.initiator = Some(initiator);
        self.status.grant_id = Some(hex::encode(parts.grant_id));
        self.status.session_id = Some(hex::encode(grant.grant.session_id()));
        self.status.grant = Some(IssuedGrant {
            nonce: hex::encode(parts.nonce),
            issued_at: parts.issued_at,
            expires_at: parts.expires_at,
            proof: Some(proof),
        });
        if self.status.timings.as_ref().and_then(|t| t.approval_ms).is_none() {
            self.status.timings.get_or_insert_with(Timings::default).approval_ms = Some(self.age_ms());
        }
        Ok(Attempt { grant, url, presignature })
    }

    fn pool_id(&self, key: &str, path: &[u32]) -> String {
        presignatures::pool_id(&self.cluster_ns, &self.sr.spec.cluster, key, path)
    }

    /// Brings the view of `pool` up to date: at once when there is none
    /// yet, else in the background when it is old, so that nodes busy
    /// presigning never hold up a signature.
    async fn refresh_pools(&self, pool: &str, nodes: &BTreeMap<u16, Node>, healthy: &[u16], key: &str, path: &[u32]) {
        let members: Vec<(u16, NodeAddr)> =
            healthy.iter().filter_map(|i| nodes.get(i).map(|n| (*i, n.url.clone()))).collect();
        let presignatures = &self.ctx.signing.presignatures;
        let refused = self.ctx.metrics.untrusted_refused.with_label_values(&["pool_report"]);
        match presignatures.freshness(pool) {
            Freshness::Fresh => {}
            Freshness::Missing => {
                let (reported, bad) = presignatures::fetch(&self.ctx.nodes, &members, key, path).await;
                refused.inc_by(bad);
                presignatures.update(pool, reported);
            }
            Freshness::Stale => {
                let (presignatures, client, pool, key, path) =
                    (Arc::clone(presignatures), self.ctx.nodes.clone(), pool.to_owned(), key.to_owned(), path.to_vec());
                tokio::spawn(async move {
                    let (reported, bad) = presignatures::fetch(&client, &members, &key, &path).await;
                    refused.inc_by(bad);
                    presignatures.update(&pool, reported);
                });
            }
        }
    }

    /// The scheme of the request's key: the one it was generated with, once
    /// it exists (status is what the nodes hold; a spec that says otherwise
    /// is refused, not followed), else the spec's.
    fn key_scheme(&self, mpc: &MpcCluster) -> std::result::Result<Scheme, crypto::CryptoError> {
        let spec = crypto::scheme(mpc.spec.scheme_of(&self.sr.spec.key));
        let Some(key) = self.key(mpc) else { return Ok(spec) };
        let generated = crypto::scheme(key.scheme.unwrap_or_default());
        if generated != spec {
            return Err(crypto::CryptoError::Scheme(format!(
                "key {} was generated as a {generated} key, but the cluster's keySchemes now says {spec}; \
                 a key's scheme cannot change",
                key.name
            )));
        }
        Ok(generated)
    }

    /// The grant the spec asks for of a key of `mpc`, but for the parts
    /// only a grant has.
    fn kind(&self, mpc: &MpcCluster) -> std::result::Result<GrantKind, crypto::CryptoError> {
        let spec = &self.sr.spec;
        let scheme = self.key_scheme(mpc)?;
        let message = crypto::message_for(spec, scheme)?;
        let path = crypto::derivation_path(spec.derivation_path.as_deref())?;
        Ok(match scheme {
            Scheme::EcdsaSecp256k1 => GrantKind::Sign { key: spec.key.clone(), message, derivation_path: path },
            _ => GrantKind::FrostSign { key: spec.key.clone(), scheme, message, derivation_path: path },
        })
    }

    /// Re-makes the grant recorded in the status (Ed25519 signatures are
    /// deterministic) from the spec and the status's grant fields, and
    /// checks the status's proof that the operator issued exactly that
    /// grant for this request. The inner `Err` says why the status is not
    /// the operator's: it is then never acted on.
    async fn recorded_grant(&self, mpc: &MpcCluster) -> Result<Recorded> {
        let Some(issued) = self.status.grant.as_ref() else {
            return Ok(Recorded::Unproven(None, "no grant recorded".into()));
        };
        let hex16 = |s: Option<&str>, what: &str| -> std::result::Result<[u8; 16], String> {
            let mut out = [0; 16];
            hex::decode_to_slice(s.unwrap_or_default(), &mut out)
                .map_err(|_| format!("the recorded {what} is not hex"))?;
            Ok(out)
        };
        let parts = match (hex16(self.status.grant_id.as_deref(), "grantId"), hex16(Some(&issued.nonce), "nonce")) {
            (Ok(grant_id), Ok(nonce)) => GrantParts {
                grant_id,
                nonce,
                participants: self.status.participants.clone(),
                issued_at: issued.issued_at,
                expires_at: issued.expires_at,
            },
            (Err(why), _) | (_, Err(why)) => return Ok(Recorded::Unproven(None, why)),
        };
        let kind = match self.kind(mpc) {
            Ok(kind) => kind,
            Err(e) => return Ok(Recorded::Unproven(None, e.to_string())),
        };
        let key = grants::signing_key(&self.ctx.client, mpc).await?;
        let grant = match grants::issue(&key, &self.cluster_ns, &mpc.name_any(), kind, &parts) {
            Ok(grant) => grant,
            Err(e) => return Ok(Recorded::Unproven(None, e.to_string())),
        };
        match issued.proof.as_deref() {
            Some(proof) if grants::proves(&key.verifying_key(), &self.uid, &grant, proof) => {
                Ok(Recorded::Proven(grant))
            }
            Some(_) => {
                Ok(Recorded::Unproven(Some(grant), "its proof is not the operator's for this request and grant".into()))
            }
            None => Ok(Recorded::Unproven(Some(grant), "it carries no proof that the operator issued it".into())),
        }
    }

    /// A status claiming a grant the operator did not issue for this
    /// request (written by someone else, or changed since): counted, said
    /// in a Warning Event, and the request decided again from its spec,
    /// policy first, as if it were new.
    async fn refuse_status(&mut self, why: String) -> Result<Action> {
        self.ctx.metrics.untrusted_refused.with_label_values(&["status"]).inc();
        let note =
            format!("the status records a grant the operator did not issue for this request ({why}); deciding again");
        warn!(request = %self.sr.name_any(), namespace = %self.ns, "{note}");
        self.event(EventType::Warning, "StatusRefused".into(), "Sign".into(), note);
        // Clear what was claimed, whoever wrote it (a merge patch removes
        // fields another manager owns; the operator's apply would not).
        let api: Api<SigningRequest> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let clear = serde_json::json!({"status": {
            "approvedAt": null, "grant": null, "grantId": null, "sessionId": null, "participants": null,
            "initiator": null, "signature": null, "publicKey": null, "protocol": null, "protocolReason": null,
        }});
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
        api.patch_status(&self.sr.name_any(), &params, &Patch::Merge(&clear)).await?;
        self.status = SigningRequestStatus::default();
        Box::pin(self.decide()).await
    }

    /// The request's key, once generated: from the cluster's status, or
    /// from a keygen that finished but is not in the status yet.
    fn key(&self, mpc: &MpcCluster) -> Option<KeyStatus> {
        let from_status = mpc.status.iter().flat_map(|s| &s.keys).find(|k| k.name == self.sr.spec.key).cloned();
        from_status
            .or_else(|| self.ctx.keygens.learned(mpc).into_iter().find(|k| k.name == self.sr.spec.key))
            .filter(|k| k.public_key.is_some())
    }

    /// Whether the cluster controller has loaded the certificate the nodes
    /// of `mpc` are called with (it does on its first reconcile).
    fn credentials_loaded(&self, mpc: &MpcCluster) -> bool {
        self.ctx.nodes.trust_bundle(&self.cluster_ns, &mpc.name_any()).is_some()
    }

    /// The cluster's nodes by party index: API URL from the pod IP, healthy
    /// when the pod is ready and the registry does not say it is offline.
    async fn nodes(&self, mpc: &MpcCluster) -> Result<BTreeMap<u16, Node>> {
        let pods: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.cluster_ns);
        let pods = pods.list(&ListParams::default().labels(&format!("{LABEL_CLUSTER}={}", mpc.name_any()))).await?;
        let offline = self.ctx.offline_nodes(mpc);
        let cluster = mpc.name_any();
        let sets: Api<StatefulSet> = Api::namespaced(self.ctx.client.clone(), &self.cluster_ns);
        let sets = sets.list(&ListParams::default().labels(&format!("{LABEL_CLUSTER}={cluster}"))).await?;
        let mut nodes = BTreeMap::new();
        for (index, pod) in node_pods(mpc, &pods.items, &sets.items) {
            let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) else { continue };
            let ready = pod.metadata.deletion_timestamp.is_none() && crate::apiserver::pod_ready(pod);
            let url = NodeAddr::new(&self.cluster_ns, &cluster, index, &ip, torcus_contract::HTTP_PORT);
            let capabilities = self.ctx.registry.node(&self.cluster_ns, &cluster, index).and_then(|r| r.capabilities);
            nodes.insert(index, Node { url, healthy: ready && !offline.contains(&index), capabilities });
        }
        Ok(nodes)
    }

    /// What the participants of the recorded attempt say of its session:
    /// completed on any of them with a signature that checks out for this
    /// request (a participant's word is not taken: one that answers junk
    /// is passed over), still running on any (only while its grant could
    /// still be running: a node whose status is stuck cannot hold the
    /// request), or neither (failed, or not known to the nodes that answer).
    async fn attempt_elsewhere(&self, mpc: &MpcCluster, nodes: &BTreeMap<u16, Node>) -> Elsewhere {
        let session = self.status.session_id.as_deref().and_then(|id| hex::decode(id).ok());
        let Some(session) = session.and_then(|bytes| <[u8; 32]>::try_from(bytes).ok()) else {
            return Elsewhere::Unknown { lost: Vec::new() };
        };
        let asks = self
            .status
            .participants
            .iter()
            .filter_map(|party| nodes.get(party).map(|node| (*party, node)))
            .map(|(party, node)| async move { (party, self.ctx.nodes.session(&node.url, &session).await) });
        let mut running = false;
        let mut lost: Vec<u16> =
            self.status.participants.iter().copied().filter(|party| !nodes.contains_key(party)).collect();
        for (party, answer) in futures::future::join_all(asks).await {
            match answer {
                Ok(Some(SessionStatus::Completed { outcome })) if !matches!(outcome, Outcome::Keygen { .. }) => {
                    match self.check_outcome(mpc, &outcome) {
                        Ok(()) => return Elsewhere::Completed(outcome),
                        Err((_, why)) => {
                            warn!(request = %self.sr.name_any(), %why, "a participant reported a signature that does not check out")
                        }
                    }
                }
                Ok(Some(SessionStatus::Proposed | SessionStatus::Running)) => running = true,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => lost.push(party),
            }
        }
        // The longest the session can run: its handshake, the nodes'
        // deadline for its signers, and the call's margin.
        let issued_at = self.status.grant.as_ref().map_or(0, |g| g.issued_at);
        let longest = node_client::sign_call_timeout(self.status.participants.len()) + HANDSHAKE_ALLOWANCE;
        let overdue = torcus_contract::unix_now() > issued_at.saturating_add(longest.as_secs());
        if running && !overdue { Elsewhere::Running } else { Elsewhere::Unknown { lost } }
    }

    /// Parties whose API does not answer a health check within a second.
    async fn unresponsive(&self, nodes: &BTreeMap<u16, Node>) -> Vec<u16> {
        let checks = nodes.iter().map(|(index, node)| async move {
            (!self.ctx.nodes.healthy(&node.url, Duration::from_secs(1)).await).then_some(*index)
        });
        futures::future::join_all(checks).await.into_iter().flatten().collect()
    }

    /// Runs the cluster's policy on this request at `now`, recording it as
    /// approved when it passes: in memory, and, when the policy has rate or
    /// spend limits, durably in the cluster's ledger ConfigMap before the
    /// caller writes `Approved`. If that write fails, the approval is taken
    /// back and the error retried.
    async fn admit(&self, mpc: &MpcCluster, now: SystemTime) -> Result<Result<(), policy::Denial>> {
        let spec = &self.sr.spec;
        let policy = &mpc.spec.policy;
        let payload_bytes = crypto::payload_bytes(spec).ok().flatten().map(|p| p.len());
        let limits = policy::longest_period(policy);
        let mut ledgers = self.ctx.signing.ledgers.lock().await;
        let key = format!("{}/{}", self.cluster_ns, spec.cluster);
        let ledger = match ledgers.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(self.load_ledger(mpc).await?),
        };
        if let Some(cutoff) = now.checked_sub(limits.unwrap_or(UNLIMITED_RETENTION)) {
            ledger.forget_before(cutoff);
        }
        // Approved by this operator (in memory, or in the ledger it wrote):
        // not decided again. An `approvedAt` in the status alone proves
        // nothing (whoever may write a status can set it).
        let known = ledger.approved(&self.uid);
        if known && self.status.approved_at.is_some() {
            return Ok(Ok(()));
        }
        if !known {
            let request = policy::Request {
                uid: &self.uid,
                namespace: &self.ns,
                cluster_namespace: &self.cluster_ns,
                labels: &spec.labels,
                payload_bytes,
                at: now,
            };
            if let Err(denial) = ledger.admit(policy, &request) {
                return Ok(Err(denial));
            }
        }
        // Written again for a known uid too (the write is idempotent): it
        // may have been approved in memory only, under a policy without
        // limits, before its status could be written.
        if limits.is_some()
            && let Some(stored) = ledger.stored(&self.uid, policy)
        {
            let expired = ledger.expired();
            let sealed = match grants::signing_key(&self.ctx.client, mpc).await {
                Ok(key) => crate::ledger::seal(&key, &self.uid, &stored),
                Err(e) => {
                    if !known {
                        ledger.remove(&self.uid);
                    }
                    return Err(e);
                }
            };
            match crate::ledger::append(&self.ctx.client, mpc, &self.uid, &sealed, &expired).await {
                Ok(()) => ledger.synced(&expired),
                // The API server refuses the write itself (the ConfigMap
                // would be too large): a denial with the reason, not a retry
                // that never ends.
                Err(Error::Kube(kube::Error::Api(status))) if matches!(status.code, 413 | 422) => {
                    ledger.remove(&self.uid);
                    let message =
                        format!("the cluster's policy ledger cannot record this approval: {}", status.message);
                    return Ok(Err(policy::Denial { rule: policy::Rule::RateLimit, message }));
                }
                Err(e) => {
                    if !known {
                        ledger.remove(&self.uid);
                    }
                    return Err(e);
                }
            }
        }
        Ok(Ok(()))
    }

    /// The cluster's ledger as the API holds it: the approved requests of
    /// the cluster's namespace that still exist (first, with all their
    /// labels, so that a limit added since counts them in full), then the
    /// ledger ConfigMap, which also holds the deleted ones and those from
    /// other namespaces.
    async fn load_ledger(&self, mpc: &MpcCluster) -> Result<Ledger> {
        let cluster = mpc.name_any();
        let mut ledger = Ledger::new();
        let api: Api<SigningRequest> = Api::namespaced(self.ctx.client.clone(), &self.cluster_ns);
        let all = api.list(&ListParams::default()).await?;
        let same_cluster = |sr: &&SigningRequest| {
            sr.spec.cluster == cluster && sr.spec.cluster_namespace.as_ref().is_none_or(|ns| *ns == self.cluster_ns)
        };
        for approval in all.items.iter().filter(same_cluster).filter_map(Approval::from_signing_request) {
            ledger.record(approval);
        }
        // Without the grant key (not made yet, or refused as not the
        // operator's), no entry can be proven: all count, none approves.
        let issuer = match grants::signing_key(&self.ctx.client, mpc).await {
            Ok(key) => Some(key.verifying_key()),
            Err(Error::ForeignSecret(_) | Error::GrantKey(_)) => None,
            Err(Error::Kube(kube::Error::Api(status))) if status.code == 404 => None,
            Err(e) => return Err(e),
        };
        for (uid, value) in crate::ledger::load(&self.ctx.client, mpc).await? {
            let recorded = match crate::ledger::open(issuer.as_ref(), &uid, &value) {
                Some((approval, true)) => ledger.record_stored(&uid, &approval),
                Some((approval, false)) => {
                    warn!(cluster, uid, "policy ledger entry is not sealed by the grant key: counted, not trusted");
                    self.ctx.metrics.untrusted_refused.with_label_values(&["ledger"]).inc();
                    ledger.record_unproven(&uid, &approval)
                }
                None => false,
            };
            if !recorded && !ledger.contains(&uid) {
                warn!(cluster, uid, "policy ledger entry does not parse; skipped");
            }
        }
        Ok(ledger)
    }

    async fn wait(&mut self, reason: &str, message: String) -> Result<Action> {
        if self.age_ms() > u64::try_from(PENDING_TIMEOUT.as_millis()).unwrap_or(u64::MAX) {
            return self.fail(reason, format!("gave up after {}s: {message}", PENDING_TIMEOUT.as_secs())).await;
        }
        self.status.reason = Some(message.clone());
        let phase = if self.status.approved_at.is_some() {
            self.set_condition("Approved", true, "PolicyPassed", "the cluster's policy allows this request".into());
            SigningPhase::Approved
        } else {
            self.set_condition("Approved", false, reason, message);
            SigningPhase::Pending
        };
        self.publish(phase).await?;
        Ok(Action::requeue(Duration::from_secs(2)))
    }

    async fn deny(&mut self, denial: policy::Denial) -> Result<Action> {
        let rule = denial.rule.as_str();
        self.ctx.metrics.policy_denials.with_label_values(&[rule]).inc();
        self.status.reason = Some(format!("{rule}: {}", denial.message));
        self.set_condition("Approved", false, &camel(rule), denial.message);
        self.publish(SigningPhase::Denied).await?;
        Ok(Action::await_change())
    }

    async fn fail(&mut self, reason: &str, message: String) -> Result<Action> {
        self.ctx.signing.settle(&self.uid);
        self.status.reason = Some(message.clone());
        self.set_condition("Completed", false, reason, message);
        self.publish(SigningPhase::Failed).await?;
        Ok(Action::await_change())
    }

    fn set_condition(&mut self, type_: &str, ok: bool, reason: &str, message: String) {
        let status = if ok { "True" } else { "False" };
        let conditions = &mut self.status.conditions;
        let keep =
            conditions.iter().find(|c| c.type_ == type_ && c.status == status).map(|c| c.last_transition_time.clone());
        conditions.retain(|c| c.type_ != type_);
        conditions.push(Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message,
            observed_generation: self.sr.metadata.generation,
            last_transition_time: keep.unwrap_or_else(|| Time(Timestamp::now())),
        });
    }

    /// Writes the status with `phase`, and an Event and a count when the
    /// phase changed.
    async fn publish(&mut self, phase: SigningPhase) -> Result<()> {
        let old = self.status.phase;
        self.status.phase = Some(phase);
        self.status.observed_generation = self.sr.metadata.generation;
        if phase.is_final() {
            self.status.completed_at = Some(rfc3339(SystemTime::now()));
            self.status.timings.get_or_insert_with(Timings::default).total_ms = Some(self.age_ms());
            let message = self.status.reason.clone().unwrap_or_default();
            match phase {
                SigningPhase::Completed => self.set_condition("Completed", true, "Signed", "signature verified".into()),
                SigningPhase::Denied => {}
                _ => {
                    let reason =
                        self.status.conditions.iter().find(|c| c.type_ == "Completed").map(|c| c.reason.clone());
                    self.set_condition("Completed", false, &reason.unwrap_or_else(|| "Failed".into()), message);
                }
            }
        }
        if phase == SigningPhase::Signing {
            self.set_condition("Approved", true, "PolicyPassed", "the cluster's policy allows this request".into());
        }
        let api: Api<SigningRequest> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let patch = serde_json::json!({
            "apiVersion": SigningRequest::api_version(&()),
            "kind": SigningRequest::kind(&()),
            "status": self.status,
        });
        let stored = api
            .patch_status(&self.sr.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
            .await?;
        self.ctx
            .signing
            .written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(self.uid.clone(), (stored.metadata.resource_version, self.status.clone()));
        if old != Some(phase) {
            self.announce(old, phase);
        }
        Ok(())
    }

    /// Counts the phase change and publishes its Event in the background, so
    /// that Events never hold up signing.
    fn announce(&self, old: Option<SigningPhase>, phase: SigningPhase) {
        let name = format!("{phase:?}");
        self.ctx.metrics.signing_requests.with_label_values(&[&name]).inc();
        if phase.is_final() {
            let seconds = self.age_ms() as f64 / 1000.0;
            self.ctx.metrics.signing_latency.with_label_values(&[&name, self.scheme]).observe(seconds);
        }
        let note = match phase {
            SigningPhase::Signing if old == Some(SigningPhase::Signing) => return,
            SigningPhase::Signing => format!(
                "approved; grant {} for parties {:?}, party {} initiates",
                self.status.grant_id.as_deref().unwrap_or_default(),
                self.status.participants,
                self.status.initiator.unwrap_or_default()
            ),
            SigningPhase::Completed => format!(
                "signed in {} attempt(s); r = {}",
                self.status.attempts,
                self.status.signature.as_ref().map(|s| s.r.as_str()).unwrap_or_default()
            ),
            _ => self.status.reason.clone().unwrap_or_default(),
        };
        info!(request = %self.sr.name_any(), namespace = %self.ns, phase = %name, "{note}");
        let type_ = if matches!(phase, SigningPhase::Denied | SigningPhase::Failed) {
            EventType::Warning
        } else {
            EventType::Normal
        };
        self.event(type_, name, "Sign".into(), note);
    }

    /// Publishes an Event about the request in the background, so that
    /// Events never hold up signing.
    fn event(&self, type_: EventType, reason: String, action: String, note: String) {
        let recorder = self.ctx.recorder.clone();
        let reference = self.sr.object_ref(&());
        tokio::spawn(async move {
            let ev = Event { type_, reason, note: Some(note), action, secondary: None };
            if let Err(error) = recorder.publish(&ev, &reference).await {
                warn!(%error, "could not publish event");
            }
        });
    }

    fn age_ms(&self) -> u64 {
        let created = self.sr.metadata.creation_timestamp.as_ref().map(|t| t.0.as_millisecond());
        let now = Timestamp::now().as_millisecond();
        created.map(|c| u64::try_from(now - c).unwrap_or(0)).unwrap_or(0)
    }
}

/// What a reconcile does with a request, from its status alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Completed, Denied or Failed: nothing more.
    Done,
    /// In `Signing` with a recorded grant: find out how that attempt went
    /// (the grant is resumed only if its signature proves it the operator's).
    Resume,
    /// Anything else, whatever the status claims (`approvedAt` included):
    /// validate, run the policy, issue a grant.
    Decide,
}

fn next_step(status: &SigningRequestStatus) -> Step {
    match status.phase {
        Some(phase) if phase.is_final() => Step::Done,
        Some(SigningPhase::Signing) if status.grant.is_some() => Step::Resume,
        _ => Step::Decide,
    }
}

/// Attempts a request of a cluster of `nodes` with `threshold` gets before
/// it fails: [`MAX_ATTEMPTS`], or enough for a node that breaks every
/// session to meet each honest party it could be put with once (see
/// [`signers`]), if that is more.
fn attempts_allowed(nodes: u16, threshold: u16) -> u16 {
    MAX_ATTEMPTS.max(nodes.saturating_sub(threshold).saturating_add(2))
}

/// Failed attempts a request may have when a participant of each had
/// restarted or could not be reached, as a multiple of
/// [`attempts_allowed`]: a crashed node is no reason to give up on a
/// request, but a request cannot retry forever either.
const CRASH_ALLOWANCE: u16 = 3;

/// How many failed attempts a request may have before it fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AttemptBudget {
    /// Attempts that failed with every participant up and knowing the
    /// session: the protocol failed, or a party broke it.
    faults: u16,
    /// Attempts in all, however they failed.
    total: u16,
}

impl AttemptBudget {
    fn of(nodes: u16, threshold: u16) -> Self {
        let faults = attempts_allowed(nodes, threshold);
        Self { faults, total: faults.saturating_mul(CRASH_ALLOWANCE) }
    }

    /// After `attempts` failed, `crashes` of them with a participant that
    /// had restarted or did not answer: `None` while another may run, else
    /// which limit was reached.
    fn spent(self, attempts: u16, crashes: u16) -> Option<String> {
        let faults = attempts.saturating_sub(crashes);
        if faults >= self.faults {
            Some(format!("{faults} with every participant up, the most allowed"))
        } else if attempts >= self.total {
            Some(format!(
                "{crashes} of them with a participant restarted or unreachable; {} in all is the most allowed",
                self.total
            ))
        } else {
            None
        }
    }
}

/// Whether the nodes' refusal of a grant is one a new grant for the same
/// request cannot cure.
fn is_final_refusal(reason: &str) -> bool {
    FINAL_REFUSALS.contains(&reason)
}

/// Whether an object at resource version `cached` is at least as new as
/// the write that returned `written`. Resource versions are etcd revisions
/// (numbers) on every API server Torcus runs on; anything else is compared
/// for equality only.
fn caught_up(cached: Option<&str>, written: Option<&str>) -> bool {
    match (cached.and_then(|v| v.parse::<u64>().ok()), written.and_then(|v| v.parse::<u64>().ok())) {
        (Some(cached), Some(written)) => cached >= written,
        _ => cached.is_some() && cached == written,
    }
}

fn healthy_indices(nodes: &BTreeMap<u16, Node>) -> Vec<u16> {
    nodes.iter().filter(|(_, n)| n.healthy).map(|(i, _)| *i).collect()
}

fn signature_status(sig: &SignatureOut) -> Signature {
    Signature {
        scheme: None,
        r: sig.r.clone(),
        s: sig.s.clone(),
        bytes: Some(format!("{}{}", sig.r, sig.s)),
        recovery_id: Some(sig.recovery_id),
        der: Some(sig.der.clone()),
        short: format!("{}…", &sig.r[..sig.r.len().min(16)]),
    }
}

/// A checked FROST signature (64 bytes of hex) as status shows it.
fn frost_signature_status(sig: &FrostSignatureOut) -> Signature {
    let (r, s) = sig.signature.split_at(sig.signature.len() / 2);
    let scheme = match sig.scheme {
        Scheme::SchnorrBip340 => torcus_crds::KeyScheme::SchnorrBip340,
        Scheme::EddsaEd25519 => torcus_crds::KeyScheme::EddsaEd25519,
        Scheme::EcdsaSecp256k1 => torcus_crds::KeyScheme::EcdsaSecp256k1,
    };
    Signature {
        scheme: Some(scheme),
        r: r.to_owned(),
        s: s.to_owned(),
        bytes: Some(sig.signature.clone()),
        recovery_id: None,
        der: None,
        short: format!("{}…", &sig.signature[..sig.signature.len().min(16)]),
    }
}

fn rfc3339(t: SystemTime) -> String {
    Timestamp::try_from(t).map(|t| t.to_string()).unwrap_or_default()
}

/// `rate-limit` → `RateLimit`, for condition reasons.
fn camel(rule: &str) -> String {
    rule.split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        })
        .collect()
}

/// The pods among `pods` that are the cluster's nodes, with their party
/// index. Labels are anyone's to set: a node is the pod of its party's
/// StatefulSet, by name and by the uid of that StatefulSet, which must be the
/// operator's own (controlled by `mpc`), or no node at all. A pod planted with
/// a forged owner reference cannot guess that uid.
fn node_pods<'p>(mpc: &MpcCluster, pods: &'p [Pod], sets: &[StatefulSet]) -> Vec<(u16, &'p Pod)> {
    let cluster = mpc.name_any();
    let names = crate::resources::Names::new(&cluster);
    let set_uid = |index: u16| {
        sets.iter()
            .find(|s| s.name_any() == names.stateful_set(index) && crate::resources::controlled_by(&s.metadata, mpc))
            .and_then(|s| s.metadata.uid.as_deref())
    };
    pods.iter()
        .filter_map(|pod| {
            let index = pod.labels().get(LABEL_PARTY)?.parse::<u16>().ok()?;
            let uid = (index < mpc.spec.nodes).then(|| set_uid(index)).flatten();
            let of_its_set = uid.is_some_and(|uid| {
                pod.metadata.owner_references.iter().flatten().any(|o| {
                    o.controller == Some(true)
                        && o.kind == "StatefulSet"
                        && o.name == names.stateful_set(index)
                        && o.uid == uid
                })
            });
            if pod.name_any() != names.pod(index) || !of_its_set {
                debug!(pod = %pod.name_any(), index, "a pod with a node's labels that is not that node's; ignored");
                return None;
            }
            Some((index, pod))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The operator's StatefulSets of a 3-node cluster, with uids, and the
    /// pod each one runs.
    fn operator_sets_and_pods(mpc: &MpcCluster) -> (Vec<StatefulSet>, Vec<Pod>) {
        let ctx = crate::resources::BuildContext {
            default_node_image: "torcus/torcus-node:test".into(),
            registry_url: None,
            cluster_domain: "cluster.local".into(),
            secret_propagation: std::time::Duration::from_secs(300),
        };
        let mut sets = Vec::new();
        let mut pods = Vec::new();
        for index in 0..mpc.spec.nodes {
            let mut set = crate::resources::stateful_set(mpc, index, "hash", &ctx);
            set.metadata.uid = Some(format!("5e7-{index}"));
            pods.push(pod_of(&set, index, "demo", set.metadata.uid.clone().unwrap()));
            sets.push(set);
        }
        (sets, pods)
    }

    /// A pod with party `index`'s labels, named `name`-`index`-0, whose
    /// controller is the StatefulSet named like `set` with uid `uid`.
    fn pod_of(set: &StatefulSet, index: u16, name: &str, uid: String) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some(format!("{name}-{index}-0"));
        pod.metadata.labels = set.spec.as_ref().and_then(|s| s.template.metadata.as_ref()?.labels.clone());
        pod.metadata.owner_references = Some(vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "apps/v1".into(),
            kind: "StatefulSet".into(),
            name: set.name_any(),
            uid,
            controller: Some(true),
            ..Default::default()
        }]);
        pod
    }

    fn indices(found: &[(u16, &Pod)]) -> Vec<u16> {
        found.iter().map(|(index, _)| *index).collect()
    }

    #[test]
    fn a_node_is_the_pod_of_the_operators_own_stateful_set() {
        let mpc = crate::resources::fixtures::cluster("demo", 3, 2);
        let (sets, pods) = operator_sets_and_pods(&mpc);
        assert_eq!(indices(&node_pods(&mpc, &pods, &sets)), [0, 1, 2]);

        // Party 1's pod, replaced by one naming its set with a guessed uid.
        let mut planted = pods.clone();
        planted[1] = pod_of(&sets[1], 1, "demo", "0a0b0c0d-0000-4000-8000-000000000001".into());
        assert_eq!(indices(&node_pods(&mpc, &planted, &sets)), [0, 2], "a forged owner uid");

        // Party 1's labels on a pod of another name, owned right.
        let mut renamed = pods.clone();
        renamed[1].metadata.name = Some("rogue".into());
        assert_eq!(indices(&node_pods(&mpc, &renamed, &sets)), [0, 2], "another name");

        // A party the cluster does not have, with a set and pod of its own.
        let (more_sets, more_pods) = operator_sets_and_pods(&crate::resources::fixtures::cluster("demo", 4, 2));
        assert_eq!(indices(&node_pods(&mpc, &more_pods, &more_sets)), [0, 1, 2], "index 3 of 3 nodes");

        // The set itself planted: named right, but controlled by another
        // MpcCluster (or by none).
        let mut foreign = sets.clone();
        foreign[2].metadata.owner_references.as_mut().unwrap()[0].uid = "another-cluster".into();
        assert_eq!(indices(&node_pods(&mpc, &pods, &foreign)), [0, 1], "a set the cluster does not control");
        foreign[2].metadata.owner_references = None;
        assert_eq!(indices(&node_pods(&mpc, &pods, &foreign)), [0, 1], "a set with no owner");

        // A pod with no controller, or a party label that is no number.
        let mut loose = pods.clone();
        loose[0].metadata.owner_references.as_mut().unwrap()[0].controller = None;
        loose[2].labels_mut().insert(LABEL_PARTY.into(), "two".into());
        assert_eq!(indices(&node_pods(&mpc, &loose, &sets)), [1]);
    }

    #[test]
    fn a_status_says_what_happens_next_but_never_approves() {
        let status = |phase, grant: bool, approved: bool| SigningRequestStatus {
            phase,
            grant: grant.then(IssuedGrant::default),
            approved_at: approved.then(|| "2026-01-01T00:00:00Z".to_owned()),
            ..SigningRequestStatus::default()
        };
        for phase in [SigningPhase::Completed, SigningPhase::Denied, SigningPhase::Failed] {
            assert_eq!(next_step(&status(Some(phase), true, true)), Step::Done, "{phase:?}");
        }
        assert_eq!(next_step(&status(Some(SigningPhase::Signing), true, false)), Step::Resume);
        // Signing without a grant, or any claim of approval: the policy runs.
        assert_eq!(next_step(&status(Some(SigningPhase::Signing), false, true)), Step::Decide);
        for phase in [None, Some(SigningPhase::Pending), Some(SigningPhase::Approved)] {
            assert_eq!(next_step(&status(phase, false, true)), Step::Decide, "{phase:?}");
            assert_eq!(next_step(&status(phase, true, true)), Step::Decide, "{phase:?} with a grant");
        }
    }

    #[test]
    fn a_request_gets_enough_attempts_to_get_around_one_bad_node() {
        // (nodes, threshold) → attempts: at least MAX_ATTEMPTS, and n − t + 2.
        for ((n, t), attempts) in [((3, 2), 4), ((4, 4), 4), ((5, 2), 5), ((7, 3), 6), ((16, 2), 16)] {
            assert_eq!(attempts_allowed(n, t), attempts, "{n} nodes, threshold {t}");
        }
        // A threshold above the node count (refused at admission) gives no fewer.
        assert_eq!(attempts_allowed(2, 3), MAX_ATTEMPTS);
    }

    #[test]
    fn attempts_lost_to_crashed_nodes_do_not_use_up_the_budget_for_faults() {
        let budget = AttemptBudget::of(5, 3);
        assert_eq!(budget, AttemptBudget { faults: MAX_ATTEMPTS, total: MAX_ATTEMPTS * CRASH_ALLOWANCE });
        // Four failures with every participant up: the request fails.
        assert_eq!(budget.spent(3, 0), None);
        assert!(budget.spent(4, 0).is_some_and(|why| why.contains("4 with every participant up")));
        // Four failures, one of them while a participant was down: one more.
        assert_eq!(budget.spent(4, 1), None);
        assert!(budget.spent(5, 1).is_some());
        // Crashes alone: up to the total, not beyond.
        assert_eq!(budget.spent(11, 11), None);
        assert!(budget.spent(12, 12).is_some_and(|why| why.contains("12 in all")));
        assert!(budget.spent(12, 9).is_some());
    }

    #[test]
    fn only_refusals_of_the_request_itself_are_final() {
        for reason in ["digest_mismatch", "malformed", "unsupported_version"] {
            assert!(is_final_refusal(reason), "{reason}");
        }
        for reason in ["expired", "replayed", "not_a_participant", "busy", "unreachable", "misbehaved", ""] {
            assert!(!is_final_refusal(reason), "{reason}");
        }
    }

    #[test]
    fn a_cache_behind_the_last_write_is_not_acted_on() {
        assert!(!caught_up(Some("41"), Some("42")), "the cache has not seen the write");
        assert!(caught_up(Some("42"), Some("42")));
        assert!(caught_up(Some("57"), Some("42")), "someone wrote after it: that is what counts");
        assert!(!caught_up(None, Some("42")));
        assert!(caught_up(Some("v2"), Some("v2")) && !caught_up(Some("v3"), Some("v2")));
    }

    #[test]
    fn rules_become_condition_reasons() {
        assert_eq!(camel("rate-limit"), "RateLimit");
        assert_eq!(camel("max-payload-size"), "MaxPayloadSize");
    }

    #[test]
    fn the_short_signature_is_a_prefix_of_r() {
        let sig = SignatureOut {
            r: "ab".repeat(32),
            s: "cd".repeat(32),
            recovery_id: 1,
            der: String::new(),
            public_key: String::new(),
            presigned: false,
        };
        assert_eq!(signature_status(&sig).short, format!("{}…", "ab".repeat(8)));
    }
}
