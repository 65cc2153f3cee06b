//! The plan of an MpcCluster reconcile, which runs as a named pipeline:
//! observe (read the pods, StatefulSets, registry and keygens into
//! [`Observed`]), certificates and keys (planned by [`crate::pki`]), plan
//! (this module), apply, and status. Everything here is a pure function of
//! the spec and of what was observed — which StatefulSets may roll now, what
//! the status says, whether a keygen starts, when to look again — so it is
//! table-tested without an API server.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use torcus_contract::registry::NodeRecord;
use torcus_crds::{CertificatesStatus, ClusterPhase, KeyStatus, MpcCluster, MpcClusterStatus, NodeStatus};

use crate::node_keys::Claim;
use crate::pki::{self, Lifetimes};
use crate::resources::Names;
use crate::rollout;

/// Longest the operator waits before looking at a cluster again, even when
/// nothing changed (certificate renewal is time-driven).
pub const MAX_REQUEUE: Duration = Duration::from_secs(300);

/// How often a cluster looks again while a rollout holds nodes back.
const ROLLOUT_RECHECK: Duration = Duration::from_secs(2);

/// How often a cluster looks again while one of its keygens runs (it
/// reports back without an event on the MpcCluster).
const KEYGEN_RUNNING_RECHECK: Duration = Duration::from_secs(1);

/// How often a cluster with keys missing and no keygen running looks again
/// (a keygen waiting out a failure, nodes not all ready).
const KEYGEN_PENDING_RECHECK: Duration = Duration::from_secs(5);

/// What the reconcile observed of one node.
#[derive(Clone, Debug, Default)]
pub struct NodeSeen {
    /// Its pod's IP, once it has one.
    pub pod_ip: Option<String>,
    /// Whether its pod exists and is ready.
    pub pod_ready: bool,
    /// Template hash of the pod (`None`: no pod, or not one the operator made).
    pub pod_template: Option<String>,
    /// Template hash of its StatefulSet (`None`: no StatefulSet yet).
    pub sts_template: Option<String>,
    /// Whether its StatefulSet reports a ready replica.
    pub sts_ready: bool,
    /// What the node registry knows of it.
    pub record: Option<NodeRecord>,
    /// Its volume claim, once the StatefulSet has made it.
    pub claim: Option<Claim>,
}

/// Everything a reconcile reads about a cluster besides its Secrets.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Node `i` at index `i`, one per node of the spec.
    pub nodes: Vec<NodeSeen>,
    /// Keys generated while this operator ran (the status may not show them yet).
    pub learned_keys: Vec<KeyStatus>,
    /// Keys whose nodes disagree, with why.
    pub conflicts: Vec<(String, String)>,
    /// Why no key may be generated yet, from the keys step: node keys
    /// Secrets not yet bound to their volumes, or retained from a deleted
    /// cluster and not yet shown to open the shares (see `crate::node_keys`).
    pub keygen_held: Vec<String>,
    /// Recorded keys some nodes answered they hold no share of (a volume
    /// lost or replaced): key name and those parties.
    pub shares_lost: Vec<(String, Vec<u16>)>,
}

/// What the spec says that the API server's schema cannot check, or that an
/// object admitted before the schema could: refused with a message, never a
/// panic.
pub fn check_spec(mpc: &MpcCluster) -> Result<Lifetimes, String> {
    let spec = &mpc.spec;
    if spec.threshold < 2 || spec.threshold > spec.nodes || spec.nodes > torcus_crds::MAX_NODES {
        return Err(format!(
            "threshold {} of {} nodes is not allowed: need 2 ≤ threshold ≤ nodes ≤ {}",
            spec.threshold,
            spec.nodes,
            torcus_crds::MAX_NODES
        ));
    }
    let duration = |field: &str, text: &str| {
        pki::parse_duration(text)
            .filter(|d| d.is_positive())
            .ok_or_else(|| format!("certificates.{field} {text:?} is not a duration like 2160h"))
    };
    if spec.presignatures.paths.len() > torcus_contract::MAX_PRESIGNATURE_PATHS {
        return Err(format!(
            "presignatures.paths lists {} paths; at most {}",
            spec.presignatures.paths.len(),
            torcus_contract::MAX_PRESIGNATURE_PATHS
        ));
    }
    for path in &spec.presignatures.paths {
        crate::crypto::derivation_path(Some(path)).map_err(|e| format!("presignatures.paths: {e}"))?;
    }
    let leaf_validity = duration("validity", &spec.certificates.validity)?;
    let renew_before = duration("renewBefore", &spec.certificates.renew_before)?;
    if renew_before >= leaf_validity {
        return Err("certificates.renewBefore must be shorter than certificates.validity".into());
    }
    Ok(Lifetimes { leaf_validity, renew_before, propagation: pki::DEFAULT_PROPAGATION })
}

/// Which of the nodes' StatefulSets to apply now (`true`), given the
/// template hash each should have (`desired[i]` for node `i`); the others
/// keep what they run until the nodes already rolling are settled again,
/// within the budget of the PodDisruptionBudget (see [`rollout`]).
pub fn rollout(mpc: &MpcCluster, desired: &[String], observed: &Observed) -> Vec<bool> {
    let nodes: Vec<rollout::Node> = desired
        .iter()
        .enumerate()
        .map(|(index, desired)| {
            let seen = observed.nodes.get(index).cloned().unwrap_or_default();
            let settled = seen.pod_ready && seen.sts_template.is_some() && seen.pod_template == seen.sts_template;
            rollout::Node { desired: desired.clone(), current: seen.sts_template, settled }
        })
        .collect();
    let budget = usize::from(mpc.spec.nodes.saturating_sub(mpc.spec.threshold));
    rollout::plan(budget, &nodes)
}

/// What the status step writes and starts.
#[derive(Clone, Debug)]
pub struct StatusPlan {
    /// The status to publish.
    pub status: MpcClusterStatus,
    /// Keys the spec lists that have no public key yet, in spec order.
    pub missing_keys: Vec<String>,
    /// The missing keys whose keygen may start: every node runs the key's
    /// scheme (a FROST key waits for nodes on a build from before FROST).
    pub startable_keys: Vec<String>,
    /// When keys are missing and every node is ready with an address: each
    /// node's pod IP (node `i` at index `i`), for a keygen to run on.
    pub keygen_on: Option<Vec<String>>,
    /// How many nodes the registry sees online.
    pub online: usize,
}

/// The status a reconcile that went through reports, and whether a keygen
/// can start.
pub fn status(
    mpc: &MpcCluster,
    observed: &Observed,
    grant_public_key: String,
    certificates: CertificatesStatus,
) -> StatusPlan {
    let names = Names::new(mpc.metadata.name.as_deref().unwrap_or_default());
    let nodes: Vec<NodeStatus> = (0..mpc.spec.nodes)
        .map(|index| {
            let seen = observed.nodes.get(usize::from(index)).cloned().unwrap_or_default();
            let record = seen.record.as_ref();
            NodeStatus {
                index,
                address: seen.pod_ip.clone(),
                ready: seen.pod_ready && seen.sts_ready,
                pod: names.pod(index),
                // Rounded, so the status changes when the health does, not every heartbeat.
                health_score: record.map(|r| (r.health_score * 100.0).round() / 100.0),
                last_heartbeat: record.and_then(|r| r.last_heartbeat).map(heartbeat_time),
                online: record.is_some_and(|r| r.online),
                version: record.map(|r| r.version.clone()),
                schemes: record.map(node_schemes).unwrap_or_default(),
                transports: record
                    .and_then(|r| r.capabilities.as_ref())
                    .map(|c| c.transports.clone())
                    .unwrap_or_default(),
                keys: record.map(|r| r.keys.iter().map(|k| k.name.clone()).collect()).unwrap_or_default(),
            }
        })
        .collect();
    let online = observed.nodes.iter().filter(|n| n.record.as_ref().is_some_and(|r| r.online)).count();
    let keys = merged_keys(mpc, observed.learned_keys.clone());
    let missing_keys: Vec<String> = mpc
        .spec
        .keys
        .iter()
        .filter(|k| !keys.iter().any(|s| &s.name == *k && s.public_key.is_some()))
        .cloned()
        .collect();
    // A keygen runs on every node: a FROST key's waits until every node's
    // build runs its scheme (ECDSA runs on every build).
    let lacking = |key: &String| -> Vec<u16> {
        let scheme = crate::crypto::scheme(mpc.spec.scheme_of(key));
        if !scheme.is_frost() {
            return Vec::new();
        }
        (0..mpc.spec.nodes)
            .filter(|i| {
                let record = observed.nodes.get(usize::from(*i)).and_then(|n| n.record.as_ref());
                !record.is_some_and(|r| torcus_contract::registry::Capabilities::of(r.capabilities.as_ref(), scheme))
            })
            .collect()
    };
    let waiting: Vec<String> = missing_keys
        .iter()
        .filter_map(|key| {
            let lacking = lacking(key);
            (!lacking.is_empty()).then(|| {
                format!(
                    "key {key} ({}) waits for nodes {lacking:?}, whose build does not run its scheme, or which have \
                     not registered with this operator yet: its keygen starts once every node does",
                    crate::crypto::scheme(mpc.spec.scheme_of(key))
                )
            })
        })
        .collect();
    let startable_keys: Vec<String> = missing_keys.iter().filter(|k| lacking(k).is_empty()).cloned().collect();
    let addresses: Option<Vec<String>> = nodes.iter().map(|n| n.address.clone().filter(|_| n.ready)).collect();
    let keygen_on = addresses.filter(|_| !missing_keys.is_empty() && observed.keygen_held.is_empty());
    let mut status = cluster_status(mpc, nodes, keys, grant_public_key, certificates);
    if !missing_keys.is_empty() {
        report_keys_waiting(&mut status, &waiting);
        report_keygen_held(&mut status, &observed.keygen_held);
    }
    report_key_conflicts(&mut status, &observed.conflicts);
    report_shares_lost(mpc, &mut status, &observed.shares_lost);
    StatusPlan { status, missing_keys, startable_keys, keygen_on, online }
}

/// The schemes a node's record says it runs, as status shows them.
fn node_schemes(record: &torcus_contract::NodeRecord) -> Vec<String> {
    match &record.capabilities {
        Some(capabilities) => capabilities.schemes.iter().map(|s| format!("{} {}", s.scheme, s.protocol)).collect(),
        // Registered without capabilities: a build from before FROST.
        None => vec![torcus_contract::Scheme::EcdsaSecp256k1.to_string()],
    }
}

/// What decides when a cluster is looked at again.
#[derive(Clone, Copy, Debug)]
pub struct Wake {
    /// Until the next certificate renewal or CA step is due.
    pub certificates_due: Duration,
    /// Whether the rollout held a node back.
    pub rollout_waits: bool,
    /// Whether keys are missing.
    pub keys_missing: bool,
    /// Whether a keygen of the cluster runs.
    pub keygen_running: bool,
    /// How long a silent node stays online in the registry.
    pub stale_after: Duration,
}

/// When to look at a cluster again: when certificates are due, but sooner
/// while a rollout waits or keys are missing, and otherwise as often as a
/// node can go stale in the registry, so that `status.nodes` shows a silent
/// node offline without any event about it. Never sooner than a second.
pub fn requeue(wake: Wake) -> Duration {
    let soon = if wake.rollout_waits {
        ROLLOUT_RECHECK
    } else if wake.keys_missing && wake.keygen_running {
        KEYGEN_RUNNING_RECHECK
    } else if wake.keys_missing {
        KEYGEN_PENDING_RECHECK
    } else {
        wake.stale_after
    };
    wake.certificates_due.clamp(Duration::from_secs(1), soon.max(Duration::from_secs(1)))
}

/// Delay before retry number `failures` (1-based) of a failed reconcile:
/// 1 s doubling to [`MAX_REQUEUE`].
pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(9)).min(MAX_REQUEUE)
}

/// A heartbeat's Unix milliseconds as RFC 3339, to the second.
fn heartbeat_time(ms: u64) -> String {
    let secs = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    Timestamp::from_second(secs).map(|t| t.to_string()).unwrap_or_default()
}

/// The keys in `mpc`'s status, with `learned` added or updated.
fn merged_keys(mpc: &MpcCluster, learned: Vec<KeyStatus>) -> Vec<KeyStatus> {
    let mut keys: Vec<KeyStatus> = mpc.status.as_ref().map(|s| s.keys.clone()).unwrap_or_default();
    for key in learned {
        match keys.iter_mut().find(|k| k.name == key.name) {
            Some(existing) => *existing = key,
            None => keys.push(key),
        }
    }
    keys
}

/// A recorded key that some nodes hold no share of leaves the cluster
/// Degraded (not Ready), saying which nodes and whether the rest can sign.
fn report_shares_lost(mpc: &MpcCluster, status: &mut MpcClusterStatus, lost: &[(String, Vec<u16>)]) {
    let lost: Vec<&(String, Vec<u16>)> = lost.iter().filter(|(_, parties)| !parties.is_empty()).collect();
    if lost.is_empty() {
        return;
    }
    let (n, t) = (usize::from(mpc.spec.nodes), usize::from(mpc.spec.threshold));
    let message: Vec<String> = lost
        .iter()
        .map(|(key, parties)| {
            let holders = n.saturating_sub(parties.len());
            let can = if holders >= t { "still signs with the rest" } else { "cannot sign" };
            format!(
                "key {key}: nodes {parties:?} hold no share of it (a volume lost or replaced); {holders} of {n} \
                 nodes hold it, {t} needed: the cluster {can}, and no keygen runs over it"
            )
        })
        .collect();
    for condition in &mut status.conditions {
        match condition.type_.as_str() {
            "Degraded" => {
                condition.status = "True".to_owned();
                condition.reason = "ShareLost".to_owned();
                condition.message = message.join("; ");
            }
            "Ready" => {
                condition.status = "False".to_owned();
                condition.reason = "ShareLost".to_owned();
                condition.message = "a node lost its share of a key".to_owned();
            }
            _ => {}
        }
    }
    if status.phase == Some(ClusterPhase::Ready) {
        status.phase = Some(ClusterPhase::Degraded);
    }
}

/// Says in `KeysReady` why missing keys are not generated yet.
/// Marks `KeysReady` false with the keys that wait for nodes able to run
/// their scheme, naming them.
fn report_keys_waiting(status: &mut MpcClusterStatus, waiting: &[String]) {
    if waiting.is_empty() {
        return;
    }
    if let Some(condition) = status.conditions.iter_mut().find(|c| c.type_ == "KeysReady") {
        condition.status = "False".to_owned();
        condition.reason = "WaitingForCapableNodes".to_owned();
        condition.message = waiting.join("; ");
    }
}

fn report_keygen_held(status: &mut MpcClusterStatus, held: &[String]) {
    if held.is_empty() {
        return;
    }
    if let Some(condition) = status.conditions.iter_mut().find(|c| c.type_ == "KeysReady") {
        condition.status = "False".to_owned();
        condition.reason = "NodeKeysPending".to_owned();
        condition.message = held.join("; ");
    }
}

/// Marks `KeysReady` false for keys whose nodes disagree (a key in conflict
/// is never in `status.keys`, so the cluster is not ready already), with
/// the reason instead of "pending".
fn report_key_conflicts(status: &mut MpcClusterStatus, conflicts: &[(String, String)]) {
    if conflicts.is_empty() {
        return;
    }
    let message: Vec<String> = conflicts.iter().map(|(key, reason)| format!("key {key}: {reason}")).collect();
    if let Some(condition) = status.conditions.iter_mut().find(|c| c.type_ == "KeysReady") {
        condition.status = "False".to_owned();
        condition.reason = "KeyConflict".to_owned();
        condition.message = message.join("; ");
    }
}

/// The status of a cluster with these nodes, keys and certificates.
fn cluster_status(
    mpc: &MpcCluster,
    nodes: Vec<NodeStatus>,
    keys: Vec<KeyStatus>,
    grant_public_key: String,
    certificates: CertificatesStatus,
) -> MpcClusterStatus {
    let spec = &mpc.spec;
    let ready = u16::try_from(nodes.iter().filter(|n| n.ready).count()).unwrap_or(u16::MAX);
    let generation = mpc.metadata.generation;
    let keys_ready = spec.keys.iter().all(|k| keys.iter().any(|s| &s.name == k && s.public_key.is_some()));

    let mut conditions = Vec::new();
    let mut set = |type_: &str, ok: bool, reason: &str, message: String| {
        conditions.push(condition(mpc, type_, ok, reason, message, generation));
    };
    set(
        "CertificatesReady",
        true,
        "Issued",
        format!("CA and {} node certificates are valid; {} CA(s) trusted", spec.nodes, certificates.trusted_cas),
    );
    let all_ready = ready == spec.nodes;
    set(
        "NodesReady",
        all_ready,
        if all_ready { "AllNodesReady" } else { "WaitingForNodes" },
        format!("{ready}/{} nodes ready", spec.nodes),
    );
    set(
        "KeysReady",
        keys_ready,
        if keys_ready { "KeysGenerated" } else { "KeygenPending" },
        if keys_ready {
            format!("{} key(s) generated", spec.keys.len())
        } else {
            "key generation starts once every node is ready".to_owned()
        },
    );
    let degraded = !all_ready && ready >= spec.threshold && keys_ready;
    set(
        "Degraded",
        degraded,
        if degraded { "NodesUnavailable" } else { "AsExpected" },
        if degraded {
            format!(
                "{ready}/{} nodes ready: signing still possible, with no margin for further loss below {}",
                spec.nodes, spec.threshold
            )
        } else {
            String::new()
        },
    );
    let all_good = all_ready && keys_ready;
    set(
        "Ready",
        all_good,
        if all_good { "Ready" } else { "NotReady" },
        if all_good { "cluster can sign".to_owned() } else { "cluster cannot sign yet".to_owned() },
    );

    let phase = if all_good {
        ClusterPhase::Ready
    } else if degraded {
        ClusterPhase::Degraded
    } else if all_ready {
        ClusterPhase::GeneratingKeys
    } else {
        ClusterPhase::WaitingForNodes
    };
    MpcClusterStatus {
        phase: Some(phase),
        conditions,
        observed_generation: generation,
        ready_nodes: ready,
        nodes,
        keys,
        grant_public_key: Some(grant_public_key),
        certificates: Some(certificates),
        secrets: None,
    }
}

/// The status of a cluster whose reconcile cannot go on: the last status,
/// `Failed`, with `Ready` false saying why.
pub fn failed_status(mpc: &MpcCluster, reason: &str, message: &str) -> MpcClusterStatus {
    let mut status = mpc.status.clone().unwrap_or_default();
    let generation = mpc.metadata.generation;
    status.phase = Some(ClusterPhase::Failed);
    status.observed_generation = generation;
    status.conditions.retain(|c| c.type_ != "Ready");
    status.conditions.push(condition(mpc, "Ready", false, reason, message.to_owned(), generation));
    status
}

/// A condition that keeps its `lastTransitionTime` while its status holds.
fn condition(
    mpc: &MpcCluster,
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let previous = mpc.status.iter().flat_map(|s| &s.conditions).find(|c| c.type_ == type_ && c.status == status);
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: previous
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| Time(Timestamp::now())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::fixtures::cluster;

    fn certs() -> CertificatesStatus {
        CertificatesStatus { ca_not_after: "x".into(), earliest_leaf_not_after: "y".into(), trusted_cas: 1 }
    }

    /// Nodes as observed, one letter each: `n` no pod or StatefulSet yet;
    /// `r` ready and `d` down on the current template "a"; `o` ready and
    /// `x` down on an old template "o". Every pod has an IP.
    fn seen(code: &str) -> Observed {
        let nodes = code
            .chars()
            .enumerate()
            .map(|(i, c)| {
                let ip = Some(format!("10.0.0.{i}"));
                match c {
                    'r' => NodeSeen {
                        pod_ip: ip,
                        pod_ready: true,
                        pod_template: Some("a".into()),
                        sts_template: Some("a".into()),
                        sts_ready: true,
                        record: None,
                        claim: None,
                    },
                    'o' => NodeSeen {
                        pod_ip: ip,
                        pod_ready: true,
                        pod_template: Some("o".into()),
                        sts_template: Some("o".into()),
                        sts_ready: true,
                        record: None,
                        claim: None,
                    },
                    'd' | 'x' => {
                        let template = Some(if c == 'd' { "a" } else { "o" }.to_owned());
                        NodeSeen {
                            pod_ip: ip,
                            pod_template: template.clone(),
                            sts_template: template,
                            ..NodeSeen::default()
                        }
                    }
                    _ => NodeSeen::default(),
                }
            })
            .collect();
        Observed { nodes, ..Observed::default() }
    }

    fn with_key(mut mpc: MpcCluster) -> MpcCluster {
        mpc.status = Some(MpcClusterStatus {
            keys: vec![KeyStatus { name: "default".into(), public_key: Some("02ab".into()), ..KeyStatus::default() }],
            ..MpcClusterStatus::default()
        });
        mpc
    }

    fn cond<'a>(s: &'a MpcClusterStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn the_phase_follows_nodes_and_keys() {
        // (nodes observed, key generated already, phase, nodes ready, keygen starts)
        let table = [
            ("nnn", false, ClusterPhase::WaitingForNodes, 0, false),
            ("rdn", false, ClusterPhase::WaitingForNodes, 1, false),
            ("rrd", false, ClusterPhase::WaitingForNodes, 2, false),
            ("rrr", false, ClusterPhase::GeneratingKeys, 3, true),
            ("rrr", true, ClusterPhase::Ready, 3, false),
            ("rdr", true, ClusterPhase::Degraded, 2, false),
            ("rdd", true, ClusterPhase::WaitingForNodes, 1, false),
        ];
        for (code, generated, phase, ready, keygen) in table {
            let mpc = cluster("demo", 3, 2);
            let mpc = if generated { with_key(mpc) } else { mpc };
            let plan = status(&mpc, &seen(code), "ab".into(), certs());
            let s = &plan.status;
            assert_eq!(s.phase, Some(phase), "{code} generated={generated}");
            assert_eq!(s.ready_nodes, ready, "{code}");
            assert_eq!(cond(s, "NodesReady").message, format!("{ready}/3 nodes ready"));
            assert_eq!(cond(s, "Ready").status, if phase == ClusterPhase::Ready { "True" } else { "False" });
            assert_eq!(cond(s, "Degraded").status, if phase == ClusterPhase::Degraded { "True" } else { "False" });
            assert_eq!(cond(s, "CertificatesReady").status, "True");
            assert_eq!(plan.missing_keys.is_empty(), generated);
            assert_eq!(plan.keygen_on.is_some(), keygen, "{code} generated={generated}");
            assert!(s.conditions.iter().all(|c| c.observed_generation == Some(1)));
            assert_eq!(s.grant_public_key.as_deref(), Some("ab"));
        }
    }

    #[test]
    fn a_keygen_runs_on_every_nodes_address_in_node_order() {
        let plan = status(&cluster("demo", 3, 2), &seen("rrr"), "ab".into(), certs());
        assert_eq!(plan.keygen_on, Some(vec!["10.0.0.0".into(), "10.0.0.1".into(), "10.0.0.2".into()]));
        assert_eq!(plan.missing_keys, ["default"]);
        // A ready node without an address yet: no keygen.
        let mut observed = seen("rrr");
        observed.nodes[1].pod_ip = None;
        assert_eq!(status(&cluster("demo", 3, 2), &observed, "ab".into(), certs()).keygen_on, None);
    }

    #[test]
    fn no_keygen_while_a_node_keys_secret_is_unbound_or_unproven() {
        let mut observed = seen("rrr");
        observed.keygen_held = vec!["node 1 holds retained keys; waiting for it to show its volume".into()];
        let plan = status(&cluster("demo", 3, 2), &observed, "ab".into(), certs());
        assert_eq!(plan.keygen_on, None);
        assert_eq!(plan.missing_keys, ["default"]);
        let keys_ready = cond(&plan.status, "KeysReady");
        assert_eq!((keys_ready.status.as_str(), keys_ready.reason.as_str()), ("False", "NodeKeysPending"));
        assert!(keys_ready.message.contains("node 1 holds retained keys"), "{}", keys_ready.message);
        // A key already recorded is not held back by it.
        let plan = status(&with_key(cluster("demo", 3, 2)), &observed, "ab".into(), certs());
        assert_eq!(plan.status.phase, Some(ClusterPhase::Ready));
    }

    #[test]
    fn a_lost_share_degrades_the_cluster_and_names_the_node() {
        let mut observed = seen("rrr");
        observed.shares_lost = vec![("default".into(), vec![1])];
        let plan = status(&with_key(cluster("demo", 3, 2)), &observed, "ab".into(), certs());
        assert_eq!(plan.status.phase, Some(ClusterPhase::Degraded));
        let degraded = cond(&plan.status, "Degraded");
        assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("True", "ShareLost"));
        assert!(degraded.message.contains("nodes [1] hold no share") && degraded.message.contains("still signs"));
        assert_eq!(cond(&plan.status, "Ready").status, "False");
        // The key stays recorded: nothing to generate.
        assert!(plan.missing_keys.is_empty() && plan.keygen_on.is_none());
        // Two of three lost with threshold 2: it cannot sign.
        observed.shares_lost = vec![("default".into(), vec![0, 1])];
        let plan = status(&with_key(cluster("demo", 3, 2)), &observed, "ab".into(), certs());
        assert!(cond(&plan.status, "Degraded").message.contains("cannot sign"));
        // Nothing lost: as before.
        observed.shares_lost = vec![("default".into(), vec![])];
        let plan = status(&with_key(cluster("demo", 3, 2)), &observed, "ab".into(), certs());
        assert_eq!(plan.status.phase, Some(ClusterPhase::Ready));
    }

    #[test]
    fn keys_learned_this_run_count_before_the_status_shows_them() {
        let mut observed = seen("rrr");
        observed.learned_keys =
            vec![KeyStatus { name: "default".into(), public_key: Some("03cd".into()), ..KeyStatus::default() }];
        let plan = status(&cluster("demo", 3, 2), &observed, "ab".into(), certs());
        assert_eq!(plan.status.phase, Some(ClusterPhase::Ready));
        assert_eq!(plan.status.keys[0].public_key.as_deref(), Some("03cd"));
        assert!(plan.missing_keys.is_empty() && plan.keygen_on.is_none());
    }

    #[test]
    fn keys_whose_nodes_disagree_say_so() {
        let mut observed = seen("rrr");
        let plan = status(&cluster("demo", 3, 2), &observed, "ab".into(), certs());
        assert_eq!(cond(&plan.status, "KeysReady").reason, "KeygenPending");
        observed.conflicts = vec![("default".into(), "they disagree on the chain code".into())];
        let plan = status(&cluster("demo", 3, 2), &observed, "ab".into(), certs());
        let keys_ready = cond(&plan.status, "KeysReady");
        assert_eq!((keys_ready.status.as_str(), keys_ready.reason.as_str()), ("False", "KeyConflict"));
        assert_eq!(keys_ready.message, "key default: they disagree on the chain code");
        assert_eq!(cond(&plan.status, "Ready").status, "False");
    }

    #[test]
    fn node_status_shows_the_registry_rounded() {
        let mut observed = seen("rrd");
        observed.nodes[0].record = Some(NodeRecord {
            party: 0,
            address: "10.0.0.0".into(),
            http_port: 8080,
            p2p_port: 9000,
            version: "test".into(),
            online: true,
            health_score: 0.8749,
            reliability: 1.0,
            latency_score: 1.0,
            uptime_score: 0.5,
            last_heartbeat: Some(1_700_000_000_999),
            registered_at: 1_699_999_000_000,
            started_at: 1_699_999_000_000,
            sessions_ok: 3,
            sessions_failed: 0,
            capabilities: None,
            keys: Vec::new(),
        });
        let plan = status(&cluster("demo", 3, 2), &observed, "ab".into(), certs());
        let node = &plan.status.nodes[0];
        assert_eq!((node.online, node.health_score), (true, Some(0.87)));
        assert_eq!(node.last_heartbeat.as_deref(), Some("2023-11-14T22:13:20Z"));
        assert_eq!(node.pod, "demo-0-0");
        assert!(!plan.status.nodes[1].online && plan.status.nodes[1].health_score.is_none());
        assert!(!plan.status.nodes[2].ready);
        assert_eq!(plan.online, 1);
    }

    #[test]
    fn transition_time_is_kept_while_the_status_holds() {
        let mut mpc = cluster("demo", 3, 2);
        let first = status(&mpc, &seen("nnn"), "ab".into(), certs()).status;
        mpc.status = Some(first.clone());
        std::thread::sleep(Duration::from_millis(5));
        let second = status(&mpc, &seen("rnn"), "ab".into(), certs()).status;
        assert_eq!(cond(&first, "NodesReady").last_transition_time, cond(&second, "NodesReady").last_transition_time);
        let failed = failed_status(&mpc, "CAUnreadable", "repair it");
        assert_eq!(failed.phase, Some(ClusterPhase::Failed));
        assert_eq!(
            (cond(&failed, "Ready").reason.as_str(), cond(&failed, "Ready").message.as_str()),
            ("CAUnreadable", "repair it")
        );
        assert_eq!(failed.nodes, first.nodes);
    }

    #[test]
    fn a_new_template_rolls_within_the_disruption_budget() {
        // (nodes, threshold, observed, apply now)
        let table: [(u16, u16, &str, &[bool]); 6] = [
            (3, 2, "nnn", &[true, true, true]),
            (3, 2, "ooo", &[true, false, false]),
            (5, 3, "ooooo", &[true, true, false, false, false]),
            // Node 0 restarting on the new template: the others wait.
            (3, 2, "doo", &[true, false, false]),
            // Node 0 back: the next one goes.
            (3, 2, "roo", &[true, true, false]),
            // A node down anyway is updated and uses up the budget.
            (3, 2, "oxo", &[false, true, false]),
        ];
        for (nodes, threshold, code, expected) in table {
            let mpc = cluster("demo", nodes, threshold);
            let desired = vec!["a".to_owned(); usize::from(nodes)];
            assert_eq!(rollout(&mpc, &desired, &seen(code)), expected, "{code} of {nodes}/{threshold}");
        }
    }

    #[test]
    fn a_cluster_is_looked_at_again_as_soon_as_something_is_due() {
        let wake = |due: u64, rollout_waits, keys_missing, keygen_running| Wake {
            certificates_due: Duration::from_secs(due),
            rollout_waits,
            keys_missing,
            keygen_running,
            stale_after: Duration::from_secs(30),
        };
        // (wake, requeue in seconds)
        let table = [
            (wake(3600, false, false, false), 30),
            (wake(3600, true, true, true), 2),
            (wake(3600, false, true, true), 1),
            (wake(3600, false, true, false), 5),
            (wake(10, false, false, false), 10),
            (wake(0, false, false, false), 1),
        ];
        for (wake, secs) in table {
            assert_eq!(requeue(wake), Duration::from_secs(secs), "{wake:?}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        let delays: Vec<u64> = [1, 2, 3, 9, 10, 50].map(|n| backoff(n).as_secs()).to_vec();
        assert_eq!(delays, [1, 2, 4, 256, 300, 300]);
    }

    #[test]
    fn spec_checks_explain_themselves() {
        let mut mpc = cluster("demo", 3, 2);
        mpc.spec.threshold = 4;
        assert!(check_spec(&mpc).unwrap_err().contains("threshold 4 of 3 nodes"));
        let mut mpc = cluster("demo", 3, 2);
        mpc.spec.certificates.renew_before = "5000h".into();
        assert!(check_spec(&mpc).unwrap_err().contains("renewBefore"));
        let mut mpc = cluster("demo", 3, 2);
        mpc.spec.certificates.validity = "soon".into();
        assert!(check_spec(&mpc).unwrap_err().contains("validity"));
        assert!(check_spec(&cluster("demo", 3, 2)).is_ok());
    }
}
