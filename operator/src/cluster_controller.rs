//! The MpcCluster reconciler: keeps a cluster's certificates, grant key,
//! configuration, Service, StatefulSets and PodDisruptionBudget in shape with
//! server-side apply, and reports what it sees in the status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use torcus_certs::{IssuedCertificate, OffsetDateTime, SecretPem};
use torcus_crds::{CertificatesStatus, MpcCluster, MpcClusterStatus};
use tracing::{info, warn};
use zeroize::Zeroizing;

use crate::apiserver::{FIELD_MANAGER, apply, event, event_about, pod_ready, scrub};
use crate::cluster_plan::{self, NodeSeen, Observed, failed_status};
use crate::context::Context;
use crate::grants::{GRANT_PRIVATE_KEY, GRANT_PUBLIC_KEY};
use crate::keygen::KeygenEnv;
use crate::node_client::NodeAddr;
use crate::node_keys::{self, Claim};
use crate::pki::{self, Leaf, LeafRequest};
use crate::resources::{self, LABEL_CLUSTER, Names, NodePublicKeys};
use crate::secret_records::{self, Records};
use crate::{Error, Result};

/// Brings one MpcCluster's children in line with its spec.
pub async fn reconcile(mpc: Arc<MpcCluster>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let mut step = "observe";
    let result = reconcile_inner(&mpc, &ctx, &mut step).await.map_err(Error::at(step));
    ctx.metrics.reconcile_duration.with_label_values(&["mpccluster"]).observe(started.elapsed().as_secs_f64());
    match result.as_ref().map_err(Error::cause) {
        Ok(_) => {
            ctx.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&key(&mpc));
        }
        // The API server refused something: say so where a person looks.
        Err(Error::Kube(kube::Error::Api(status))) => {
            let message = format!("the API server refused a change: {}", status.message);
            event(&ctx.recorder, &mpc, EventType::Warning, "ApplyFailed", "Reconcile", message).await;
        }
        Err(_) => {}
    }
    result
}

/// Counts the failure and retries with exponential backoff (1 s doubling to
/// 5 min); a spec the operator cannot use waits for the object to change; a
/// Secret it does not own is looked at again every few seconds.
pub fn error_policy(mpc: Arc<MpcCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_errors.with_label_values(&["mpccluster", error.step(), error.metric_label()]).inc();
    warn!(cluster = %mpc.name_any(), namespace = ?mpc.namespace(), %error, "reconcile failed");
    if matches!(error.cause(), Error::InvalidSpec(_)) {
        return Action::await_change();
    }
    // Cured by someone deleting a Secret the operator does not watch (it
    // is not the cluster's child): looked at again every few seconds.
    if matches!(error.cause(), Error::ForeignSecret(_)) {
        return Action::requeue(FOREIGN_SECRET_RECHECK);
    }
    let mut failures = ctx.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let n = failures.entry(key(&mpc)).or_insert(0);
    *n = n.saturating_add(1);
    Action::requeue(cluster_plan::backoff(*n))
}

/// How often a cluster with a Secret it does not own looks again.
const FOREIGN_SECRET_RECHECK: StdDuration = StdDuration::from_secs(5);

fn key(mpc: &MpcCluster) -> String {
    format!("{}/{}", mpc.namespace().unwrap_or_default(), mpc.name_any())
}

/// `step` follows the reconcile through its steps ([`crate::error::STEPS`]),
/// so that a failure is counted under the one it happened in.
async fn reconcile_inner(mpc: &MpcCluster, ctx: &Arc<Context>, step: &mut &'static str) -> Result<Action> {
    let name = mpc.name_any();
    let ns = mpc.namespace().ok_or_else(|| Error::InvalidSpec("MpcCluster has no namespace".into()))?;
    if mpc.metadata.deletion_timestamp.is_some() {
        // Children go with the owner references; the registry forgets it.
        ctx.registry.forget_cluster(&ns, &name);
        ctx.signing.presignatures.forget_cluster(&format!("{ns}/{name}/"));
        ctx.nodes.forget(&ns, &name);
        ctx.metrics.cluster.remove(&ns, &name, &mpc.spec.keys);
        ctx.shares_lost
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&mpc.uid().unwrap_or_default());
        ctx.signing.forget_slots(&mpc.uid().unwrap_or_default());
        return Ok(Action::await_change());
    }
    let lifetimes = match cluster_plan::check_spec(mpc) {
        Ok(l) => pki::Lifetimes {
            propagation: torcus_certs::Duration::try_from(ctx.build.secret_propagation).unwrap_or(l.propagation),
            ..l
        },
        Err(message) => {
            publish_status(ctx, mpc, failed_status(mpc, "InvalidSpec", &message)).await?;
            return Err(Error::InvalidSpec(message));
        }
    };
    let names = Names::new(&name);
    let now = OffsetDateTime::now_utc();
    let mut recorded = Records::of(mpc);

    let observed = observe(ctx, mpc, &ns).await?;

    // Certificates: keep what is good, issue what is not.
    *step = "certificates";
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let (existing, tampered) = match read_existing_pki(&secrets, mpc, &mut recorded).await {
        Err(e @ Error::ForeignSecret(_)) => return refuse_foreign_secret(ctx, mpc, e).await,
        other => other?,
    };
    for name in tampered {
        ctx.metrics.untrusted_refused.with_label_values(&["secret"]).inc();
        let note = format!("Secret {name} trusts a CA this cluster's operator did not make; issuing it again");
        warn!(cluster = %mpc.name_any(), namespace = %ns, "{note}");
        event(&ctx.recorder, mpc, EventType::Warning, "SecretRepaired", "CheckSecrets", note).await;
    }
    let mut requests = BTreeMap::new();
    for index in 0..mpc.spec.nodes {
        let seen = observed.nodes.get(usize::from(index));
        let ips = seen.and_then(|n| n.pod_ip.as_deref()?.parse().ok()).into_iter().collect();
        let dns_names = resources::node_dns_names(mpc, index, &ctx.build.cluster_domain);
        requests.insert(Leaf::Node(index), LeafRequest { dns_names, ips });
    }
    requests.insert(Leaf::Operator, LeafRequest::default());
    let pki = match pki::plan(&ns, &name, &existing, &requests, lifetimes, now) {
        Ok(pki) => pki,
        Err(e @ pki::PlanError::CaUnreadable(_)) => {
            let message = format!("{e}: repair or delete Secret {}", names.ca_secret());
            event(&ctx.recorder, mpc, EventType::Warning, "CAUnreadable", "IssueCertificate", message.clone()).await;
            publish_status(ctx, mpc, failed_status(mpc, "CAUnreadable", &message)).await?;
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    let bundle = pki.bundle.to_pem();
    // Recorded before it is written: see `secret_records`.
    let authorities = ca_fingerprints(&pki)?;
    secret_records::record_ahead(&ctx.client, mpc, &mut recorded, &names.ca_secret(), &authorities).await?;
    apply_secret(ctx, &ns, resources::ca_secret(mpc, &pki)).await?;
    recorded.set(&names.ca_secret(), authorities);
    for (leaf, cert) in &pki.leaves {
        let secret_name = match leaf {
            Leaf::Node(i) => names.node_secret(*i),
            Leaf::Operator => names.operator_secret(),
        };
        let secret = resources::tls_secret(mpc, secret_name, &cert.cert_pem, cert.key_pem.expose(), &bundle);
        apply_secret(ctx, &ns, secret).await?;
        if *leaf == Leaf::Operator {
            // The nodes serve only this certificate, and are trusted only under this bundle.
            ctx.nodes.trust(&ns, &name, &bundle, &cert.cert_pem, &cert.key_pem);
        }
    }
    for change in &pki.changes {
        info!(cluster = %name, namespace = %ns, "{change}");
        ctx.metrics.certificates_issued.with_label_values(&[change_kind(change)]).inc();
        // Events are grouped by reason and related object, so name the
        // Secret: each one gets its own series instead of one "x6" line.
        let (secret_name, reason, type_) = match change {
            pki::Change::CaCreated => (names.ca_secret(), "CACreated", EventType::Normal),
            pki::Change::CaReplaced => (names.ca_secret(), "CAReplaced", EventType::Warning),
            pki::Change::CaStaged => (names.ca_secret(), "CAStaged", EventType::Normal),
            pki::Change::CaPromoted => (names.ca_secret(), "CAPromoted", EventType::Normal),
            pki::Change::LeafIssued(Leaf::Node(i), _) => {
                (names.node_secret(*i), "CertificateIssued", EventType::Normal)
            }
            pki::Change::LeafIssued(Leaf::Operator, _) => {
                (names.operator_secret(), "CertificateIssued", EventType::Normal)
            }
        };
        let related = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Secret".into()),
            name: Some(secret_name),
            namespace: Some(ns.clone()),
            ..ObjectReference::default()
        };
        event_about(&ctx.recorder, mpc, type_, reason, "IssueCertificate", change.to_string(), Some(related)).await;
    }

    // The grant key and the node keys come after the certificates, so a
    // broken key Secret cannot stop certificate renewal.
    *step = "keys";
    let keys = async {
        let grant_public_key = ensure_grant_key(ctx, mpc, &ns, &mut recorded).await?;
        let mut node_keys = Vec::with_capacity(usize::from(mpc.spec.nodes));
        for index in 0..mpc.spec.nodes {
            let claim = observed.nodes.get(usize::from(index)).and_then(|n| n.claim.as_ref());
            node_keys.push(ensure_node_keys(ctx, mpc, &ns, index, claim, &mut recorded).await?);
        }
        Ok((grant_public_key, node_keys))
    };
    let (grant_public_key, node_keys) = match keys.await {
        Ok(keys) => keys,
        Err(e @ Error::ForeignSecret(_)) => return refuse_foreign_secret(ctx, mpc, e).await,
        Err(e @ (Error::GrantKey(_) | Error::NodeKeys(_))) => {
            let reason = if matches!(e, Error::GrantKey(_)) { "GrantKeyUnreadable" } else { "NodeKeysUnreadable" };
            let message = e.to_string();
            event(&ctx.recorder, mpc, EventType::Warning, reason, "CreateKeys", message.clone()).await;
            publish_status(ctx, mpc, failed_status(mpc, reason, &message)).await?;
            return Err(e);
        }
        Err(e) => return Err(e),
    };

    // Configuration, addressing and the nodes themselves.
    *step = "children";
    let identity_keys: Vec<NodePublicKeys> = node_keys.iter().map(|k| k.public.clone()).collect();
    let config = resources::cluster_config(mpc, &grant_public_key, &identity_keys, &ctx.build);
    let config_hash = resources::config_hash(&config);
    apply(&ctx.client, &ns, &resources::config_map(mpc, &config)).await?;
    apply(&ctx.client, &ns, &resources::headless_service(mpc)).await?;
    // The nodes, rolled within the disruption budget: a StatefulSet held
    // back keeps the template it runs.
    let desired: Vec<StatefulSet> =
        (0..mpc.spec.nodes).map(|index| resources::stateful_set(mpc, index, &config_hash, &ctx.build)).collect();
    let hashes: Vec<String> = desired
        .iter()
        .map(|sts| resources::template_hash(sts.spec.as_ref().and_then(|s| s.template.metadata.as_ref())))
        .map(Option::unwrap_or_default)
        .collect();
    let go = cluster_plan::rollout(mpc, &hashes, &observed);
    for (sts, _) in desired.iter().zip(&go).filter(|(_, go)| **go) {
        apply(&ctx.client, &ns, sts).await?;
    }
    apply(&ctx.client, &ns, &resources::pod_disruption_budget(mpc)).await?;

    // Keys retained from a deleted cluster are taken, or replaced, once
    // their nodes show what their volumes hold.
    *step = "retained";
    let mut keygen_held = Vec::new();
    for (index, keys) in (0..mpc.spec.nodes).zip(&node_keys) {
        let seen = observed.nodes.get(usize::from(index));
        if let Some(retained) = &keys.retained {
            keygen_held.extend(settle_retained(ctx, mpc, &ns, index, retained, seen, &mut recorded).await?);
        } else if !keys.bound {
            keygen_held.push(format!("node {index}'s keys Secret is not bound to its volume claim yet"));
        }
        // A node not yet restarted with what it is to run (new keys, say)
        // takes part in no keygen.
        if seen.and_then(|n| n.pod_template.as_ref()) != hashes.get(usize::from(index)) {
            keygen_held.push(format!("node {index} does not run its current configuration yet"));
        }
    }

    // Keygens, gauges and status.
    *step = "status";
    // What the keygens learned is looked at last, as close to publishing as
    // possible: a keygen that ended during this reconcile shows in this
    // status, not one requeue later (a SigningRequest may already be signed
    // with the key by then).
    let gauges = &ctx.metrics.cluster;
    let shares_lost = shares_lost(ctx, mpc, &ns, &observed).await;
    for (key, parties) in &shares_lost {
        let holders = mpc.spec.nodes.saturating_sub(u16::try_from(parties.len()).unwrap_or(u16::MAX));
        gauges.key_shares.with_label_values(&[ns.as_str(), name.as_str(), key.as_str()]).set(i64::from(holders));
    }
    ctx.shares_lost
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(mpc.uid().unwrap_or_default(), shares_lost.iter().cloned().collect());
    let observed = Observed {
        learned_keys: ctx.keygens.learned(mpc),
        conflicts: ctx.keygens.conflicts(mpc),
        keygen_held,
        shares_lost,
        ..observed
    };
    let plan = cluster_plan::status(mpc, &observed, grant_public_key, certificates_status(&pki)?);
    let labels = [ns.as_str(), name.as_str()];
    gauges.threshold.with_label_values(&labels).set(i64::from(mpc.spec.threshold));
    gauges.presignature_pool_size.with_label_values(&labels).set(i64::from(mpc.spec.presignatures.pool_size));
    gauges.nodes_online.with_label_values(&labels).set(i64::try_from(plan.online).unwrap_or(i64::MAX));
    let earliest = pki
        .leaves
        .values()
        .filter_map(|c| torcus_certs::inspect(&c.cert_pem).ok())
        .map(|i| i.not_after)
        .chain([pki.ca.not_after()])
        .min();
    if let Some(earliest) = earliest {
        gauges.certificate_expiry.with_label_values(&labels).set(earliest.unix_timestamp() as f64);
    }
    if let Some(ips) = &plan.keygen_on {
        let urls: Vec<NodeAddr> = (0..mpc.spec.nodes)
            .zip(ips)
            .map(|(index, ip)| NodeAddr::new(&ns, &name, index, ip, torcus_contract::HTTP_PORT))
            .collect();
        let env = KeygenEnv {
            client: ctx.client.clone(),
            recorder: ctx.recorder.clone(),
            nodes: ctx.nodes.clone(),
            metrics: Arc::clone(&ctx.metrics),
        };
        ctx.keygens.start(&env, mpc, &plan.startable_keys, &urls);
    }
    secret_records::persist(&ctx.client, mpc, &mut recorded).await?;
    let old_phase = mpc.status.as_ref().and_then(|s| s.phase);
    if old_phase != plan.status.phase {
        let phase = plan.status.phase.map(|p| format!("{p:?}")).unwrap_or_default();
        event(&ctx.recorder, mpc, EventType::Normal, "PhaseChanged", "Reconcile", format!("phase is now {phase}"))
            .await;
    }
    publish_status(ctx, mpc, plan.status).await?;

    Ok(Action::requeue(cluster_plan::requeue(cluster_plan::Wake {
        certificates_due: StdDuration::try_from(pki.due - OffsetDateTime::now_utc()).unwrap_or(StdDuration::ZERO),
        rollout_waits: go.contains(&false),
        keys_missing: !plan.missing_keys.is_empty(),
        keygen_running: ctx.keygens.running(mpc),
        stale_after: ctx.registry.settings().stale_after,
    })))
}

/// Observe: the cluster's pods and StatefulSets and what the node registry
/// knows of its nodes.
async fn observe(ctx: &Context, mpc: &MpcCluster, ns: &str) -> Result<Observed> {
    let name = mpc.name_any();
    let names = Names::new(&name);
    let selector = ListParams::default().labels(&format!("{LABEL_CLUSTER}={name}"));
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), ns).list(&selector).await?;
    let sets = Api::<StatefulSet>::namespaced(ctx.client.clone(), ns).list(&selector).await?;
    let records = ctx.registry.nodes(ns, &name);
    // By name: a claim is the StatefulSet's whatever its labels say.
    let claims_api = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), ns);
    let mut claims = Vec::with_capacity(usize::from(mpc.spec.nodes));
    for index in 0..mpc.spec.nodes {
        let claim = claims_api.get_opt(&names.data_claim(index)).await?;
        claims.push(claim.and_then(|c| Some(Claim { uid: c.metadata.uid?, name: c.metadata.name? })));
    }
    let nodes = (0..mpc.spec.nodes)
        .zip(claims)
        .map(|(index, claim)| {
            let pod = pods.items.iter().find(|p| p.name_any() == names.pod(index));
            let sts = sets.items.iter().find(|s| s.name_any() == names.stateful_set(index));
            NodeSeen {
                pod_ip: pod.and_then(|p| p.status.as_ref()?.pod_ip.clone()),
                pod_ready: pod.is_some_and(pod_ready),
                pod_template: pod.and_then(|p| resources::template_hash(Some(&p.metadata))),
                sts_template: sts.and_then(|s| resources::template_hash(s.spec.as_ref()?.template.metadata.as_ref())),
                sts_ready: sts.and_then(|s| s.status.as_ref()?.ready_replicas).unwrap_or(0) >= 1,
                record: records.iter().find(|r| r.party == index).cloned(),
                claim,
            }
        })
        .collect();
    // The keygens are looked at in the status step, as late as possible.
    Ok(Observed { nodes, ..Observed::default() })
}

/// Each recorded key with the parties whose node, ready and asked now, lists
/// no share of it under its public key: a volume lost or replaced. A node
/// that does not answer (down, restarting) is not counted: that is what
/// `status.nodes` and the registry show.
async fn shares_lost(ctx: &Context, mpc: &MpcCluster, ns: &str, observed: &Observed) -> Vec<(String, Vec<u16>)> {
    let recorded: Vec<(String, String)> = mpc
        .status
        .iter()
        .flat_map(|s| &s.keys)
        .filter_map(|k| Some((k.name.clone(), k.nodes_public_key()?.to_owned())))
        .collect();
    if recorded.is_empty() {
        return Vec::new();
    }
    let name = mpc.name_any();
    let asks = (0..mpc.spec.nodes).zip(&observed.nodes).filter(|(_, n)| n.pod_ready).filter_map(|(index, n)| {
        let addr = NodeAddr::new(ns, &name, index, n.pod_ip.as_deref()?, torcus_contract::HTTP_PORT);
        Some(async move { (index, tokio::time::timeout(StdDuration::from_secs(2), ctx.nodes.keys(&addr)).await) })
    });
    let answers: Vec<(u16, Vec<torcus_contract::api::KeyInfo>)> = futures::future::join_all(asks)
        .await
        .into_iter()
        .filter_map(|(index, answer)| Some((index, answer.ok()?.ok()?)))
        .collect();
    recorded
        .into_iter()
        .map(|(key, public_key)| {
            let lost = answers
                .iter()
                .filter(|(_, held)| !held.iter().any(|k| k.name == key && k.public_key == public_key))
                .map(|(index, _)| *index)
                .collect();
            (key, lost)
        })
        .collect()
}

/// A Secret the cluster needs exists but is not the operator's: nothing of
/// it is used (no configuration, no certificate, no grant comes from it),
/// the cluster's status and a Warning Event say which, and the reconcile
/// fails, to be retried with backoff, until someone deletes it.
async fn refuse_foreign_secret(ctx: &Context, mpc: &MpcCluster, error: Error) -> Result<Action> {
    ctx.metrics.untrusted_refused.with_label_values(&["secret"]).inc();
    let message = error.to_string();
    warn!(cluster = %mpc.name_any(), namespace = ?mpc.namespace(), "{message}");
    event(&ctx.recorder, mpc, EventType::Warning, "SecretNotOwned", "CheckSecrets", message.clone()).await;
    publish_status(ctx, mpc, failed_status(mpc, "SecretNotOwned", &message)).await?;
    Err(error)
}

/// Returns the hex public key of the cluster's grant signing key, creating
/// the key once. The Secret is created, never patched: a key is not rotated
/// behind anyone's back. If the Secret was deleted, a new key is made and a
/// Warning Event says so, since every grant from then on verifies only under
/// the new key.
async fn ensure_grant_key(ctx: &Context, mpc: &MpcCluster, ns: &str, records: &mut Records) -> Result<String> {
    let name = Names::new(&mpc.name_any()).grant_key_secret();
    let make = || {
        let seed = random_key()?;
        let public = hex::encode(ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key().as_bytes());
        Ok(resources::secret(
            mpc,
            name.clone(),
            "Opaque",
            BTreeMap::from([
                (GRANT_PRIVATE_KEY.to_owned(), seed.to_vec()),
                (GRANT_PUBLIC_KEY.to_owned(), public.into_bytes()),
            ]),
        ))
    };
    let keys_of = |public: &String| vec![secret_records::ed25519(public)];
    let (public, created) = get_or_create_secret(ctx, mpc, ns, &name, records, make, grant_public_key, keys_of)
        .await?
        .ok_or_else(|| Error::GrantKey(name.clone()))?;
    let previous = mpc.status.as_ref().and_then(|s| s.grant_public_key.as_deref());
    if !created {
        // The owner reference is anyone's to write: a key other than the
        // one this cluster has been using is not taken over silently.
        if let Some(previous) = previous
            && previous != public
        {
            return Err(Error::ForeignSecret(name));
        }
        return Ok(public);
    }
    match previous {
        Some(previous) if previous != public => {
            let note =
                format!("grant key Secret {name} was missing; created a new grant key {public} (was {previous})");
            warn!(cluster = %mpc.name_any(), namespace = %ns, "{note}");
            event(&ctx.recorder, mpc, EventType::Warning, "GrantKeyReplaced", "CreateGrantKey", note).await;
        }
        _ => {
            event(
                &ctx.recorder,
                mpc,
                EventType::Normal,
                "GrantKeyCreated",
                "CreateGrantKey",
                format!("created grant key {public}"),
            )
            .await
        }
    }
    Ok(public)
}

/// Node `index`'s keys as the keys step leaves them.
struct NodeKeys {
    /// What the configuration publishes of them.
    public: NodePublicKeys,
    /// Whether the Secret is bound to the node's volume claim, so that it
    /// outlives the cluster exactly as long as the shares do.
    bound: bool,
    /// A Secret retained from a deleted cluster of this name, not taken yet.
    retained: Option<Retained>,
}

/// A node keys Secret retained from a deleted cluster (see `crate::node_keys`).
struct Retained {
    name: String,
    claim: Claim,
    /// The version read: it is taken or replaced only as it was read.
    resource_version: Option<String>,
    owners: Vec<OwnerReference>,
    /// Check value of its store key, taken if the shares prove it.
    store_check: String,
}

/// Returns node `index`'s keys (TCP identity and seal key public halves),
/// creating its keys Secret (share encryption key, TCP identity, seal key)
/// once and binding it to the node's volume `claim`. Like the grant key, it
/// is created, and its keys are never replaced: a new share encryption key
/// would leave the shares on the node's volume unreadable, so a Warning says
/// so when a lost Secret had to be replaced after keys were generated. A
/// Secret made before messages were sealed gets a seal key added. A Secret
/// this cluster did not make is refused, unless it was retained with the
/// node's volume from a deleted cluster of the same name: then it is
/// returned as such, for [`settle_retained`] to decide on.
async fn ensure_node_keys(
    ctx: &Context,
    mpc: &MpcCluster,
    ns: &str,
    index: u16,
    claim: Option<&Claim>,
    records: &mut Records,
) -> Result<NodeKeys> {
    let name = Names::new(&mpc.name_any()).node_keys_secret(index);
    let make = || {
        let store = Zeroizing::new(hex::encode(random_key()?));
        let identity = Zeroizing::new(hex::encode(random_key()?));
        let seal = Zeroizing::new(hex::encode(random_key()?));
        Ok(resources::node_keys_secret(mpc, index, &store, &identity, &seal))
    };
    let found = get_or_create_secret(ctx, mpc, ns, &name, records, make, node_public_keys, node_keys_records).await;
    // A cluster that has a key never takes a Secret it has no record of: a
    // retained one is a candidate only for a cluster applied again, before
    // any key is recorded.
    let keyless =
        !mpc.status.iter().flat_map(|s| &s.keys).any(|k| k.public_key.is_some()) && ctx.keygens.learned(mpc).is_empty();
    let (stored, created) = match found {
        Err(Error::ForeignSecret(foreign)) if keyless => {
            return retained_node_keys(ctx, mpc, ns, &name, claim).await?.ok_or(Error::ForeignSecret(foreign));
        }
        found => found?.ok_or_else(|| Error::NodeKeys(name.clone()))?,
    };
    let had_keys = mpc.status.iter().flat_map(|s| &s.keys).any(|k| k.public_key.is_some());
    if created && had_keys {
        let note = format!(
            "node keys Secret {name} was missing; created new keys, so the shares already on node {index} \
             can no longer be decrypted"
        );
        warn!(cluster = %mpc.name_any(), namespace = %ns, "{note}");
        event(&ctx.recorder, mpc, EventType::Warning, "NodeKeysReplaced", "CreateNodeKeys", note).await;
    }
    let (seal, resource_version) = match stored.seal {
        Some(seal) => (seal, stored.resource_version),
        // Bound at the next reconcile: the version read is gone.
        None => (add_seal_key(ctx, mpc, records, &name, stored.resource_version).await?, None),
    };
    let bound = match claim {
        None => false,
        Some(claim) if node_keys::bound_to(&stored.owners, claim) => true,
        Some(claim) => {
            let bound = bind_node_keys(ctx, mpc, &name, resource_version, &stored.owners, claim, None).await?;
            if bound {
                info!(cluster = %mpc.name_any(), namespace = %ns, secret = %name, claim = %claim.name, "node keys bound to the node's volume claim");
            }
            bound
        }
    };
    let public = NodePublicKeys { identity: stored.identity, seal, store_check: stored.store_check };
    Ok(NodeKeys { public, bound, retained: None })
}

/// The public keys of a node keys Secret, as records list them (the store
/// key is symmetric: to plant a Secret that matches them, one must have read
/// the operator's).
fn node_keys_records(stored: &StoredNodeKeys) -> Vec<String> {
    [secret_records::ed25519(&stored.identity), secret_records::store(&stored.store_check)]
        .into_iter()
        .chain(stored.seal.as_deref().map(secret_records::x25519))
        .collect()
}

/// Node keys Secret `name` as a candidate retained with `claim` from a
/// deleted cluster of this name, if it is one (see `crate::node_keys`).
async fn retained_node_keys(
    ctx: &Context,
    mpc: &MpcCluster,
    ns: &str,
    name: &str,
    claim: Option<&Claim>,
) -> Result<Option<NodeKeys>> {
    let (Some(claim), Some(uid)) = (claim, mpc.metadata.uid.as_deref()) else { return Ok(None) };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let Some(mut secret) = secrets.get_opt(name).await? else { return Ok(None) };
    let stored = node_public_keys(&secret);
    scrub(&mut secret);
    let owners = secret.metadata.owner_references.unwrap_or_default();
    let Some(stored) = stored.filter(|_| node_keys::retained_for(&owners, uid, claim)) else { return Ok(None) };
    let Some(seal) = stored.seal.clone() else { return Ok(None) };
    Ok(Some(NodeKeys {
        public: NodePublicKeys { identity: stored.identity, seal, store_check: stored.store_check.clone() },
        bound: true,
        retained: Some(Retained {
            name: name.to_owned(),
            claim: claim.clone(),
            resource_version: stored.resource_version,
            owners,
            store_check: stored.store_check,
        }),
    }))
}

/// Makes node keys Secret `name` this cluster's and binds it to `claim`:
/// its owner references become the cluster (controller) and the claim, and,
/// with `data`, its keys are replaced. A merge patch, only on the version
/// read. Returns whether it was patched (`false`: it changed meanwhile).
async fn bind_node_keys(
    ctx: &Context,
    mpc: &MpcCluster,
    name: &str,
    resource_version: Option<String>,
    owners: &[OwnerReference],
    claim: &Claim,
    data: Option<BTreeMap<String, k8s_openapi::ByteString>>,
) -> Result<bool> {
    let Some(cluster) = mpc.controller_owner_ref(&()) else { return Ok(false) };
    if resource_version.is_none() {
        return Ok(false);
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &mpc.namespace().unwrap_or_default());
    let mut patch = Secret {
        metadata: ObjectMeta {
            resource_version,
            owner_references: Some(node_keys::owners_for(owners, cluster, claim)),
            ..ObjectMeta::default()
        },
        data,
        ..Secret::default()
    };
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
    let patched = secrets.patch(name, &params, &Patch::Merge(&patch)).await;
    scrub(&mut patch);
    match patched {
        Ok(mut stored) => {
            scrub(&mut stored);
            Ok(true)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Decides on a node keys Secret retained from a deleted cluster once node
/// `index` (running on it) says which keys its volume holds. Shares that its
/// store key opened prove the store key, and it is taken; nothing proves the
/// identity and seal keys (whoever may patch the Secret could have written
/// them), so they are always made anew. A volume without shares (a fresh
/// one) proves nothing: all three keys are made anew, so nothing is ever
/// generated under keys this cluster did not make. The Secret is then
/// recorded and bound, and the node restarts on its new configuration.
/// Returns why key generation waits.
async fn settle_retained(
    ctx: &Context,
    mpc: &MpcCluster,
    ns: &str,
    index: u16,
    retained: &Retained,
    seen: Option<&NodeSeen>,
    records: &mut Records,
) -> Result<Option<String>> {
    let name = &retained.name;
    let waiting =
        |why: String| Some(format!("node {index} runs on keys Secret {name}, retained from a deleted cluster: {why}"));
    let Some(ip) = seen.filter(|n| n.pod_ready).and_then(|n| n.pod_ip.as_deref()) else {
        return Ok(waiting("decided once the node starts and shows the shares on its volume".into()));
    };
    let addr = NodeAddr::new(ns, &mpc.name_any(), index, ip, torcus_contract::HTTP_PORT);
    let held = match ctx.nodes.keys(&addr).await {
        Ok(held) => held,
        Err(e) => return Ok(waiting(format!("decided once the node says which shares its volume holds ({e})"))),
    };
    let keep_store = !held.is_empty();
    let (identity, seal) = (random_key()?, random_key()?);
    let store = if keep_store { None } else { Some(random_key()?) };
    let store_check = match &store {
        Some(store) => torcus_contract::store_key_check(store),
        None => retained.store_check.clone(),
    };
    let keys = vec![
        secret_records::ed25519(&hex::encode(
            ed25519_dalek::SigningKey::from_bytes(&identity).verifying_key().as_bytes(),
        )),
        secret_records::store(&store_check),
        secret_records::x25519(&hex::encode(torcus_contract::seal::public_key(&seal))),
    ];
    // Only this attempt's keys are on record for it: an attempt that loses
    // a race leaves nothing behind to pile up.
    records.set(name, Vec::new());
    secret_records::record_ahead(&ctx.client, mpc, records, name, &keys).await?;
    let hex_value = |seed: &[u8; 32]| k8s_openapi::ByteString(hex::encode(seed).into_bytes());
    let mut data = BTreeMap::from([
        (resources::NODE_IDENTITY_KEY.to_owned(), hex_value(&identity)),
        (resources::NODE_SEAL_KEY.to_owned(), hex_value(&seal)),
    ]);
    if let Some(store) = &store {
        data.insert(resources::NODE_STORE_KEY.to_owned(), hex_value(store));
    }
    let (version, owners) = (retained.resource_version.clone(), &retained.owners);
    if !bind_node_keys(ctx, mpc, name, version, owners, &retained.claim, Some(data)).await? {
        return Ok(waiting("it changed while being decided on; looked at again".into()));
    }
    records.set(name, keys);
    let claim = &retained.claim.name;
    if keep_store {
        let held: Vec<&str> = held.iter().map(|k| k.name.as_str()).collect();
        let note = format!(
            "node {index}'s volume {claim} holds shares of keys {held:?} that the store key retained in {name} \
             opens: the store key is taken; the node's identity and seal keys are made anew"
        );
        info!(cluster = %mpc.name_any(), namespace = %ns, "{note}");
        event(&ctx.recorder, mpc, EventType::Normal, "NodeKeysAdopted", "AdoptNodeKeys", note).await;
        return Ok(waiting("its store key is taken; the node restarts with new identity and seal keys".into()));
    }
    ctx.metrics.untrusted_refused.with_label_values(&["secret"]).inc();
    let note = format!(
        "keys Secret {name} was retained with volume claim {claim} from a deleted cluster, but node {index}'s \
         volume holds no share it opens: not taken; node {index} gets new keys and restarts with them"
    );
    warn!(cluster = %mpc.name_any(), namespace = %ns, "{note}");
    event(&ctx.recorder, mpc, EventType::Warning, "RetainedKeysRefused", "AdoptNodeKeys", note).await;
    Ok(waiting("replaced with new keys; the node restarts with them".into()))
}

/// Adds a fresh seal key to node keys Secret `name`, which has none: a JSON
/// merge patch that sets only that key, and only on the version of the
/// Secret that was read. Returns the seal public key the Secret then holds.
async fn add_seal_key(
    ctx: &Context,
    mpc: &MpcCluster,
    records: &mut Records,
    name: &str,
    resource_version: Option<String>,
) -> Result<String> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &mpc.namespace().unwrap_or_default());
    let seed = random_key()?;
    let public = hex::encode(torcus_contract::seal::public_key(&seed));
    secret_records::record_ahead(&ctx.client, mpc, records, name, &[secret_records::x25519(&public)]).await?;
    let seed = Zeroizing::new(hex::encode(seed.as_slice()));
    let mut patch = Secret {
        metadata: ObjectMeta {
            // A precondition: a Secret changed since it was read is not patched (409).
            resource_version,
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            resources::NODE_SEAL_KEY.to_owned(),
            k8s_openapi::ByteString(seed.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    };
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
    let patched = secrets.patch(name, &params, &Patch::Merge(&patch)).await;
    scrub(&mut patch);
    let mut stored = match patched {
        Ok(stored) => {
            info!(namespace = ?mpc.namespace(), secret = %name, "added a seal key to the node keys");
            stored
        }
        // Changed meanwhile (another reconcile may have added one): use what is there.
        Err(kube::Error::Api(e)) if e.code == 409 => secrets.get(name).await?,
        Err(e) => return Err(e.into()),
    };
    let keys = node_public_keys(&stored);
    scrub(&mut stored);
    keys.and_then(|k| k.seal).ok_or_else(|| Error::NodeKeys(name.to_owned()))
}

/// 32 random bytes.
fn random_key() -> Result<Zeroizing<[u8; 32]>> {
    let mut key = Zeroizing::new([0u8; 32]);
    getrandom::fill(key.as_mut()).map_err(|e| Error::Random(e.to_string()))?;
    Ok(key)
}

/// Reads what `read` takes from Secret `name`, creating the Secret with
/// `make` first when it does not exist. Returns `None` when the Secret
/// exists but `read` finds nothing usable in it (it is then left alone),
/// and whether this call created it. Key material is wiped from every copy.
///
/// An existing Secret is taken only if it carries the cluster's owner
/// reference and its keys (`keys_of` what `read` took) are in `records`; a
/// new one is recorded there before it is created.
#[allow(clippy::too_many_arguments)]
async fn get_or_create_secret<T>(
    ctx: &Context,
    mpc: &MpcCluster,
    ns: &str,
    name: &str,
    records: &mut Records,
    make: impl FnOnce() -> Result<Secret>,
    read: fn(&Secret) -> Option<T>,
    keys_of: fn(&T) -> Vec<String>,
) -> Result<Option<(T, bool)>> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let take = |mut secret: Secret, records: &mut Records| {
        let value = read(&secret);
        scrub(&mut secret);
        let owned = resources::controlled_by(&secret.metadata, mpc)
            && value.as_ref().is_none_or(|v| records.owns(name, &keys_of(v)));
        if !owned {
            return Err(Error::ForeignSecret(name.to_owned()));
        }
        if let Some(v) = &value {
            records.seen(name, &keys_of(v));
        }
        Ok(value)
    };
    if let Some(secret) = secrets.get_opt(name).await? {
        return Ok(take(secret, records)?.map(|v| (v, false)));
    }
    let mut secret = make()?;
    let value = read(&secret);
    let keys = value.as_ref().map(keys_of).unwrap_or_default();
    if let Err(e) = secret_records::record_ahead(&ctx.client, mpc, records, name, &keys).await {
        scrub(&mut secret);
        return Err(e);
    }
    let created = secrets
        .create(&PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() }, &secret)
        .await;
    scrub(&mut secret);
    match created {
        Ok(mut stored) => {
            scrub(&mut stored);
            records.set(name, keys);
            Ok(value.map(|v| (v, true)))
        }
        // Another writer won the race: use what it made, if it is ours.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(take(secrets.get(name).await?, records)?.map(|v| (v, false))),
        Err(e) => Err(e.into()),
    }
}

/// What a node keys Secret holds, as public keys.
#[derive(Debug)]
struct StoredNodeKeys {
    /// Hex Ed25519 identity public key.
    identity: String,
    /// Hex X25519 seal public key; `None` in a Secret made before messages
    /// were sealed.
    seal: Option<String>,
    /// [`torcus_contract::store_key_check`] of its store key.
    store_check: String,
    /// The version read, the precondition of adding a seal key.
    resource_version: Option<String>,
    /// Its owner references.
    owners: Vec<OwnerReference>,
}

/// The public keys of the seeds in a node keys Secret, when the Secret holds
/// a well-formed store key and identity seed, and a well-formed seal seed or
/// none.
fn node_public_keys(secret: &Secret) -> Option<StoredNodeKeys> {
    let data = secret.data.as_ref()?;
    let hex32 = |key: &str| -> Option<Zeroizing<[u8; 32]>> {
        let text = std::str::from_utf8(&data.get(key)?.0).ok()?;
        let mut out = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), out.as_mut()).ok()?;
        Some(out)
    };
    let store_check = torcus_contract::store_key_check(&*hex32(resources::NODE_STORE_KEY)?);
    let seed = hex32(resources::NODE_IDENTITY_KEY)?;
    let identity = hex::encode(ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key().as_bytes());
    // Absent is fine (added later); present and malformed is not.
    let seal = match data.contains_key(resources::NODE_SEAL_KEY) {
        true => Some(hex::encode(torcus_contract::seal::public_key(&*hex32(resources::NODE_SEAL_KEY)?))),
        false => None,
    };
    Some(StoredNodeKeys {
        identity,
        seal,
        store_check,
        resource_version: secret.metadata.resource_version.clone(),
        owners: secret.metadata.owner_references.clone().unwrap_or_default(),
    })
}

fn grant_public_key(secret: &Secret) -> Option<String> {
    let data = secret.data.as_ref()?;
    let seed: [u8; 32] = data.get(GRANT_PRIVATE_KEY)?.0.as_slice().try_into().ok()?;
    let seed = Zeroizing::new(seed);
    let public = hex::encode(ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key().as_bytes());
    // The stored public key is for people; the seed is the truth.
    (data.get(GRANT_PUBLIC_KEY).map(|p| p.0.as_slice()) == Some(public.as_bytes())).then_some(public)
}

/// The certificates in the cluster's Secrets, as far as they are the
/// operator's. A CA Secret without the owner reference, or holding a CA
/// certificate the records do not list, is refused. A leaf Secret with the
/// owner reference but a CA the records do not list in its `ca.crt` (a
/// Secret writer adding trust to the node that mounts it) is not taken: its
/// name is returned, and the planner issues that leaf again, so the apply
/// overwrites what was written into it.
async fn read_existing_pki(
    secrets: &Api<Secret>,
    mpc: &MpcCluster,
    records: &mut Records,
) -> Result<(pki::Existing, Vec<String>)> {
    let names = Names::new(mpc.metadata.name.as_deref().unwrap_or_default());
    let ca_name = names.ca_secret();
    let field = |s: &Secret, key: &str| {
        s.data.as_ref().and_then(|d| d.get(key)).and_then(|v| String::from_utf8(v.0.clone()).ok())
    };
    // Every CA certificate a Secret carries must be the operator's: CA
    // certificates are recorded under the CA Secret's name, whichever
    // Secret (CA, or leaf in `ca.crt`) holds them. Text that does not parse
    // is not the operator's either.
    let mut recorded_cas = |secret: &Secret, pem_keys: &[&str]| {
        let mut found = Vec::new();
        for pem in pem_keys.iter().filter_map(|key| field(secret, key)) {
            match torcus_certs::fingerprints(&pem) {
                Ok(prints) => found.extend(prints),
                Err(_) => return false,
            }
        }
        let ours = records.owns(&ca_name, &found);
        if ours {
            records.seen(&ca_name, &found);
        }
        ours
    };
    let mut existing = pki::Existing::default();
    if let Some(mut ca) = secrets.get_opt(&ca_name).await? {
        let ours = resources::controlled_by(&ca.metadata, mpc)
            && recorded_cas(&ca, &["tls.crt", resources::CA_NEXT_CERT, "ca.crt"]);
        if !ours {
            scrub(&mut ca);
            return Err(Error::ForeignSecret(ca_name));
        }
        // A CA Secret that exists is taken as it is, even half empty: the
        // planner refuses to replace what it cannot read.
        existing.ca = Some((
            field(&ca, "tls.crt").unwrap_or_default(),
            SecretPem::new(field(&ca, "tls.key").unwrap_or_default()),
        ));
        let since = field(&ca, resources::CA_NEXT_SINCE)
            .and_then(|t| OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).ok());
        if let (Some(cert), Some(key), Some(since)) =
            (field(&ca, resources::CA_NEXT_CERT), field(&ca, resources::CA_NEXT_KEY), since)
        {
            existing.next = Some((cert, SecretPem::new(key), since));
        }
        existing.bundle = field(&ca, "ca.crt");
        scrub(&mut ca);
    }
    let leaves = (0..mpc.spec.nodes)
        .map(|i| (Leaf::Node(i), names.node_secret(i)))
        .chain([(Leaf::Operator, names.operator_secret())]);
    let mut tampered = Vec::new();
    for (leaf, secret_name) in leaves {
        if let Some(mut s) = secrets.get_opt(&secret_name).await? {
            if !resources::controlled_by(&s.metadata, mpc) {
                scrub(&mut s);
                return Err(Error::ForeignSecret(secret_name));
            }
            if !recorded_cas(&s, &["ca.crt"]) {
                scrub(&mut s);
                tampered.push(secret_name);
                continue;
            }
            if let (Some(cert_pem), Some(key)) = (field(&s, "tls.crt"), field(&s, "tls.key")) {
                existing.leaves.insert(leaf, IssuedCertificate { cert_pem, key_pem: SecretPem::new(key) });
            }
            // Without a CA Secret, the bundle the nodes hold says which CAs
            // their certificates chain to; the new CA must trust them too.
            if existing.bundle.is_none() {
                existing.bundle = field(&s, "ca.crt");
            }
            scrub(&mut s);
        }
    }
    Ok((existing, tampered))
}

/// The record of the CA Secret `pki` leads to: every CA certificate in it.
fn ca_fingerprints(pki: &pki::Pki) -> Result<Vec<String>> {
    let mut keys = Vec::new();
    let next = pki.next.as_ref().map(|(n, _)| n.cert_pem());
    for pem in [Some(pki.ca.cert_pem()), next, Some(&pki.bundle.to_pem())].into_iter().flatten() {
        for key in torcus_certs::fingerprints(pem)? {
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    Ok(keys)
}

fn change_kind(change: &pki::Change) -> &'static str {
    match change {
        pki::Change::CaCreated => "ca_created",
        pki::Change::CaReplaced => "ca_replaced",
        pki::Change::CaStaged => "ca_staged",
        pki::Change::CaPromoted => "ca_promoted",
        pki::Change::LeafIssued(Leaf::Node(_), _) => "node",
        pki::Change::LeafIssued(Leaf::Operator, _) => "operator",
    }
}

fn certificates_status(pki: &pki::Pki) -> Result<CertificatesStatus> {
    let mut earliest = None;
    for cert in pki.leaves.values() {
        let not_after = torcus_certs::inspect(&cert.cert_pem)?.not_after;
        earliest = Some(earliest.map_or(not_after, |e: OffsetDateTime| e.min(not_after)));
    }
    let rfc3339 = |t: OffsetDateTime| t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    Ok(CertificatesStatus {
        ca_not_after: rfc3339(pki.ca.not_after()),
        earliest_leaf_not_after: earliest.map(rfc3339).unwrap_or_default(),
        trusted_cas: u16::try_from(pki.bundle.len()).unwrap_or(u16::MAX),
    })
}

async fn publish_status(ctx: &Context, mpc: &MpcCluster, mut status: MpcClusterStatus) -> Result<()> {
    // `status.secrets` is written by merge patches only (`secret_records`):
    // never applied, so an apply made from an older copy cannot take a
    // record back.
    status.secrets = mpc.status.as_ref().and_then(|s| s.secrets.clone());
    if mpc.status.as_ref() == Some(&status) {
        return Ok(());
    }
    status.secrets = None;
    let api: Api<MpcCluster> = Api::namespaced(ctx.client.clone(), &mpc.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": MpcCluster::api_version(&()),
        "kind": MpcCluster::kind(&()),
        "status": status,
    });
    api.patch_status(&mpc.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await?;
    Ok(())
}

/// Applies a Secret and wipes the key material from both copies in memory.
async fn apply_secret(ctx: &Context, ns: &str, mut secret: Secret) -> Result<()> {
    let result = apply(&ctx.client, ns, &secret).await;
    scrub(&mut secret);
    scrub(&mut result?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::fixtures::cluster;

    #[test]
    fn grant_key_secret_must_be_consistent() {
        let mpc = cluster("demo", 3, 2);
        let seed = [7u8; 32];
        let public = hex::encode(ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key().as_bytes());
        let good = resources::secret(
            &mpc,
            "k".into(),
            "Opaque",
            BTreeMap::from([
                (GRANT_PRIVATE_KEY.to_owned(), seed.to_vec()),
                (GRANT_PUBLIC_KEY.to_owned(), public.clone().into_bytes()),
            ]),
        );
        assert_eq!(grant_public_key(&good), Some(public));
        let bad = resources::secret(
            &mpc,
            "k".into(),
            "Opaque",
            BTreeMap::from([
                (GRANT_PRIVATE_KEY.to_owned(), seed.to_vec()),
                (GRANT_PUBLIC_KEY.to_owned(), b"00".to_vec()),
            ]),
        );
        assert_eq!(grant_public_key(&bad), None);
    }

    #[test]
    fn node_keys_without_a_seal_key_are_read_and_a_malformed_one_is_not() {
        let mpc = cluster("demo", 3, 2);
        let (store, identity, seal) = (hex::encode([1; 32]), hex::encode([2; 32]), hex::encode([3; 32]));
        let mut secret = resources::node_keys_secret(&mpc, 0, &store, &identity, &seal);
        secret.metadata.resource_version = Some("17".into());
        let keys = node_public_keys(&secret).unwrap();
        let identity_public = hex::encode(ed25519_dalek::SigningKey::from_bytes(&[2; 32]).verifying_key().as_bytes());
        assert_eq!(keys.identity, identity_public);
        assert_eq!(keys.seal, Some(hex::encode(torcus_contract::seal::public_key(&[3; 32]))));
        assert_eq!(keys.resource_version.as_deref(), Some("17"));
        // Made before messages were sealed: readable, with no seal key yet.
        let data = secret.data.as_mut().unwrap();
        data.remove(resources::NODE_SEAL_KEY);
        let keys = node_public_keys(&secret).unwrap();
        assert_eq!((keys.identity.as_str(), keys.seal), (identity_public.as_str(), None));
        // Present but not a seed: unreadable, and left alone.
        let data = secret.data.as_mut().unwrap();
        data.insert(resources::NODE_SEAL_KEY.to_owned(), k8s_openapi::ByteString(b"nope".to_vec()));
        assert!(node_public_keys(&secret).is_none());
    }
}
