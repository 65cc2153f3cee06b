//! Key generation, driven by the operator: once every node of a cluster is
//! ready, one keygen grant per missing key goes to the grant's initiator,
//! which runs aux info and threshold keygen with all the others.
//!
//! A keygen takes from seconds to minutes, so it runs in a task of its own
//! (one per cluster at a time); the cluster's reconcile only starts it and
//! picks up what it learned. Before issuing a grant the task asks every node
//! which keys and which aux info it holds ([`plan`]):
//!
//! - every node holds the key under one public key: a keygen that finished
//!   while the operator was away (or whose answer was lost) is recorded, not
//!   run twice;
//! - some nodes hold it (a run that ended on some nodes only, never recorded
//!   nor used): the new grant *supersedes* those public keys, and the nodes
//!   holding them set those shares aside;
//! - every node holds the same aux info: the grant names it and it is
//!   reused; otherwise the keygen generates new aux info first.
//!
//! A key is recorded only once every node lists it under the public key and
//! the chain code the initiator reported: a participant that failed at the
//! very end makes the next run supersede it, instead of a key some nodes
//! cannot sign with. Nodes that list the same public key under different
//! chain codes are a conflict, not a key: the chain code decides every
//! derived address, so the key is not recorded, `KeysReady` is false with
//! the reason, and a Warning Event names the nodes (looked at again every
//! [`CONFLICT_RECHECK`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kube::runtime::events::{EventType, Recorder};
use kube::{Client, ResourceExt};
use torcus_contract::api::Outcome;
use torcus_contract::{GrantKind, Scheme};
use torcus_crds::{KeyStatus, MpcCluster};
use tracing::{info, warn};

use crate::apiserver::event;
use crate::crypto;
use crate::grants::{self, GrantParts};
use crate::metrics::Metrics;
use crate::node_client::{NodeAddr, NodeClient};

/// Pause after a failed keygen before the next try.
pub const RETRY_AFTER: Duration = Duration::from_secs(10);
/// How long every node has to list a key its initiator reported.
const CONFIRM_WITHIN: Duration = Duration::from_secs(30);
/// How often a key whose nodes disagree is surveyed again.
pub const CONFLICT_RECHECK: Duration = Duration::from_secs(60);

/// What a keygen uses of the operator: the API client (to read the grant
/// key), the Event recorder, the nodes' client and the keygen counter.
#[derive(Clone)]
pub struct KeygenEnv {
    /// API client.
    pub client: Client,
    /// Event recorder.
    pub recorder: Recorder,
    /// Client of the nodes' API.
    pub nodes: NodeClient,
    /// Operator metrics (`torcus_keygens_total`).
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for KeygenEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeygenEnv").finish_non_exhaustive()
    }
}

/// Keygens in flight and what they learned, per MpcCluster uid and key (a
/// cluster deleted and made again under its name starts afresh).
#[derive(Debug, Default)]
pub struct Keygens {
    state: Mutex<HashMap<String, State>>,
}

#[derive(Debug, Clone)]
enum State {
    Running,
    Failed {
        at: Instant,
    },
    /// The nodes disagree on what the key is.
    Conflict {
        at: Instant,
        reason: String,
    },
    Done(KeyStatus),
}

fn any_running(state: &HashMap<String, State>, mpc: &MpcCluster) -> bool {
    mpc.spec.keys.iter().any(|key| matches!(state.get(&id(mpc, key)), Some(State::Running)))
}

fn id(mpc: &MpcCluster, key: &str) -> String {
    format!(
        "{}/{key}",
        mpc.uid().unwrap_or_else(|| format!("{}/{}", mpc.namespace().unwrap_or_default(), mpc.name_any()))
    )
}

impl Keygens {
    /// The keys of `mpc` generated while this operator ran (the status may
    /// not show them yet).
    pub fn learned(&self, mpc: &MpcCluster) -> Vec<KeyStatus> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        mpc.spec
            .keys
            .iter()
            .filter_map(|key| match state.get(&id(mpc, key)) {
                Some(State::Done(status)) => Some(status.clone()),
                _ => None,
            })
            .collect()
    }

    /// The keys of `mpc` whose nodes disagree, with why.
    pub fn conflicts(&self, mpc: &MpcCluster) -> Vec<(String, String)> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        mpc.spec
            .keys
            .iter()
            .filter_map(|key| match state.get(&id(mpc, key)) {
                Some(State::Conflict { reason, .. }) => Some((key.clone(), reason.clone())),
                _ => None,
            })
            .collect()
    }

    /// Whether a keygen of `mpc` runs now.
    pub fn running(&self, mpc: &MpcCluster) -> bool {
        any_running(&self.state.lock().unwrap_or_else(PoisonError::into_inner), mpc)
    }

    /// Starts a keygen for the first of `missing` that is neither done nor
    /// waiting out a failure, unless one of `mpc` runs: keygens of a
    /// cluster run one after the other, each deciding on aux info from
    /// what the previous one left. `node_urls[i]` is node i's API.
    pub fn start(self: &Arc<Self>, env: &KeygenEnv, mpc: &MpcCluster, missing: &[String], node_urls: &[NodeAddr]) {
        let next = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            if any_running(&state, mpc) {
                return;
            }
            // FROST keys first: they need no aux info, so they never wait
            // behind an ECDSA key's safe primes.
            let frost = |key: &&String| crypto::scheme(mpc.spec.scheme_of(key)).is_frost();
            let mut ordered = missing.iter().filter(frost).chain(missing.iter().filter(|key| !frost(key)));
            let next = ordered.find(|key| match state.get(&id(mpc, key)) {
                Some(State::Running | State::Done(_)) => false,
                Some(State::Failed { at }) => at.elapsed() >= RETRY_AFTER,
                Some(State::Conflict { at, .. }) => at.elapsed() >= CONFLICT_RECHECK,
                None => true,
            });
            if let Some(key) = next {
                state.insert(id(mpc, key), State::Running);
            }
            next
        };
        if let Some(key) = next {
            let id = id(mpc, key);
            let (keygens, env, mpc, key, urls) =
                (Arc::clone(self), env.clone(), mpc.clone(), key.clone(), node_urls.to_vec());
            tokio::spawn(async move {
                let result = run(&env, &mpc, &key, &urls).await;
                let scheme = crypto::scheme(mpc.spec.scheme_of(&key)).as_str();
                let next = match result {
                    Ok(status) => State::Done(status),
                    Err(KeygenError::Conflict(reason)) => {
                        warn!(cluster = %mpc.name_any(), %key, %reason, "nodes disagree on a key");
                        env.metrics.keygens.with_label_values(&["conflict", scheme]).inc();
                        let note = format!("key {key} is not recorded: {reason}");
                        event(&env.recorder, &mpc, EventType::Warning, "KeyConflict", "GenerateKey", note).await;
                        State::Conflict { at: Instant::now(), reason }
                    }
                    Err(KeygenError::Failed(message)) => {
                        warn!(cluster = %mpc.name_any(), %key, %message, "keygen failed");
                        env.metrics.keygens.with_label_values(&["failed", scheme]).inc();
                        let note = format!("key {key}: {message}; retrying in {}s", RETRY_AFTER.as_secs());
                        event(&env.recorder, &mpc, EventType::Warning, "KeygenFailed", "GenerateKey", note).await;
                        State::Failed { at: Instant::now() }
                    }
                };
                keygens.state.lock().unwrap_or_else(PoisonError::into_inner).insert(id, next);
            });
        }
    }
}

/// What one node holds that a keygen decides on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeHolds {
    /// The key's public key and chain code, if the node holds it.
    pub key: Option<(String, Option<String>)>,
    /// The node's aux info id.
    pub aux_info: Option<String>,
}

/// What to do about a missing key, given what each node holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// Every node holds it under one public key and one chain code: record it.
    Record { public_key: String, chain_code: Option<String> },
    /// Run a keygen with these grant fields.
    Generate { aux_info: Option<String>, supersedes: Vec<String> },
    /// Every node holds the same public key, but they report different
    /// chain codes: neither recorded nor generated again.
    Conflict { reason: String },
}

/// Why a keygen task ended without a key.
#[derive(Debug)]
enum KeygenError {
    /// Retry after [`RETRY_AFTER`].
    Failed(String),
    /// The nodes disagree on the key; see [`Plan::Conflict`].
    Conflict(String),
}

impl From<String> for KeygenError {
    fn from(message: String) -> Self {
        Self::Failed(message)
    }
}

impl From<&str> for KeygenError {
    fn from(message: &str) -> Self {
        Self::Failed(message.to_owned())
    }
}

/// Public keys an MpcCluster allows a keygen to supersede although enough
/// nodes hold them to sign (comma-separated, on the MpcCluster).
pub const ANNOTATION_SUPERSEDE: &str = "mpc.torcus.io/supersede-keys";

/// Decides on a keygen of a key that the cluster's status does not list.
///
/// That the status does not list it does not prove it was never used: a
/// cluster deleted and applied again over its retained volumes, one of them
/// lost since, has an empty status and a key that `threshold` nodes can
/// still sign with. So a public key that at least `threshold` nodes hold is
/// never superseded unless `allowed` names it: the plan is a conflict that
/// says so. A key fewer nodes hold cannot sign, and is superseded (its
/// shares are set aside, not deleted).
pub fn plan(nodes: &[NodeHolds], threshold: u16, allowed: &[String]) -> Plan {
    let keys: Vec<_> = nodes.iter().map(|n| n.key.clone()).collect();
    if let Some(Some((public_key, chain_code))) = keys.first()
        && keys.iter().all(|k| k.as_ref().map(|(pk, _)| pk) == Some(public_key))
    {
        if let Some(reason) = chain_code_conflict(keys.iter().map(|k| k.as_ref().and_then(|(_, cc)| cc.as_ref()))) {
            return Plan::Conflict { reason };
        }
        return Plan::Record { public_key: public_key.clone(), chain_code: chain_code.clone() };
    }
    let mut supersedes: Vec<String> = keys.iter().flatten().map(|(pk, _)| pk.clone()).collect();
    supersedes.sort();
    supersedes.dedup();
    for public_key in &supersedes {
        let holders: Vec<usize> = keys
            .iter()
            .enumerate()
            .filter(|(_, k)| k.as_ref().is_some_and(|(pk, _)| pk == public_key))
            .map(|(i, _)| i)
            .collect();
        if holders.len() >= usize::from(threshold) && !allowed.contains(public_key) {
            let missing: Vec<usize> = (0..keys.len()).filter(|i| !holders.contains(i)).collect();
            return Plan::Conflict {
                reason: format!(
                    "nodes {holders:?} hold it under public key {public_key}, enough to sign with it, and nodes \
                     {missing:?} do not: it may be in use (a volume lost since, say), so no keygen runs over it. \
                     Restore the missing shares, or, if that key was never used, name it in the annotation \
                     {ANNOTATION_SUPERSEDE} to generate a new one"
                ),
            };
        }
    }
    let aux_info = match nodes.first().and_then(|n| n.aux_info.clone()) {
        Some(id) if nodes.iter().all(|n| n.aux_info.as_ref() == Some(&id)) => Some(id),
        _ => None,
    };
    Plan::Generate { aux_info, supersedes }
}

/// Asks every node what it holds of `key`; any node that does not answer
/// fails the lot (deciding without it could supersede its share).
/// A node that holds the key under another scheme fails the lot too: its
/// share is of another key, which no keygen supersedes.
async fn survey(nodes: &NodeClient, key: &str, scheme: Scheme, urls: &[NodeAddr]) -> Result<Vec<NodeHolds>, String> {
    let mut holds = Vec::with_capacity(urls.len());
    for (i, url) in urls.iter().enumerate() {
        let keys = nodes.keys(url).await.map_err(|e| format!("node {i} did not list its keys: {e}"))?;
        let aux_info = nodes.aux_info(url).await.map_err(|e| format!("node {i} did not name its aux info: {e}"))?;
        let held = keys.into_iter().find(|k| k.name == key);
        if let Some(other) = held.as_ref().filter(|k| k.scheme != scheme) {
            return Err(format!(
                "node {i} holds key {key} as a {} key, but the cluster names it {scheme}; \
                 the share stays, and the key is not generated again",
                other.scheme
            ));
        }
        let key = held.map(|k| (k.public_key, k.chain_code));
        holds.push(NodeHolds { key, aux_info });
    }
    Ok(holds)
}

/// The nodes' chain codes (in party order) disagree: why, naming the nodes.
fn chain_code_conflict<'a>(codes: impl Iterator<Item = Option<&'a String>>) -> Option<String> {
    let codes: Vec<Option<&String>> = codes.collect();
    let first = *codes.first()?;
    if codes.iter().all(|c| *c == first) {
        return None;
    }
    let mut groups: Vec<(Option<&String>, Vec<usize>)> = Vec::new();
    for (party, code) in codes.iter().enumerate() {
        match groups.iter_mut().find(|(c, _)| c == code) {
            Some((_, parties)) => parties.push(party),
            None => groups.push((*code, vec![party])),
        }
    }
    let described: Vec<String> = groups
        .iter()
        .map(|(code, parties)| match code {
            Some(code) => format!("nodes {parties:?} report chain code {}…", &code[..code.len().min(16)]),
            None => format!("nodes {parties:?} report none"),
        })
        .collect();
    Some(format!(
        "the nodes hold the same public key but disagree on its chain code, which decides every derived address \
         ({}); a node's share or its answers are not to be trusted",
        described.join("; ")
    ))
}

async fn run(env: &KeygenEnv, mpc: &MpcCluster, key: &str, urls: &[NodeAddr]) -> Result<KeyStatus, KeygenError> {
    let ns = mpc.namespace().unwrap_or_default();
    let name = mpc.name_any();
    let n = usize::from(mpc.spec.nodes);

    let allowed: Vec<String> = mpc
        .annotations()
        .get(ANNOTATION_SUPERSEDE)
        .map(|v| v.split(',').map(|k| k.trim().to_owned()).filter(|k| !k.is_empty()).collect())
        .unwrap_or_default();
    let scheme = crypto::scheme(mpc.spec.scheme_of(key));
    let surveyed = survey(&env.nodes, key, scheme, urls).await?;
    let (aux_info, supersedes) = match plan(&surveyed, mpc.spec.threshold, &allowed) {
        Plan::Record { public_key, chain_code } => {
            info!(cluster = %name, %key, "every node holds the key already; recording it");
            return Ok(key_status(key, scheme, &public_key, chain_code)?);
        }
        Plan::Conflict { reason } => return Err(KeygenError::Conflict(reason)),
        Plan::Generate { aux_info, supersedes } => (aux_info, supersedes),
    };
    if !supersedes.is_empty() {
        let note = format!(
            "key {key}: an earlier keygen ended on some nodes only (public keys {}); the new one supersedes it",
            supersedes.join(", ")
        );
        event(&env.recorder, mpc, EventType::Warning, "KeygenSupersedes", "GenerateKey", note).await;
    }

    let signing_key = grants::signing_key(&env.client, mpc).await.map_err(|e| e.to_string())?;
    let all: Vec<u16> = (0..mpc.spec.nodes).collect();
    let parts = GrantParts::fresh(grants::KEYGEN_GRANT_TTL_SECS, |_| Some(all)).ok_or("no participants")?;
    let kind = match scheme {
        Scheme::EcdsaSecp256k1 => GrantKind::Keygen { key: key.to_owned(), aux_info, supersedes },
        // No aux info: FROST needs no Paillier keys.
        _ => GrantKind::FrostKeygen { key: key.to_owned(), scheme, supersedes },
    };
    let grant = grants::issue(&signing_key, &ns, &name, kind, &parts).map_err(|e| e.to_string())?;
    env.metrics.grants_issued.with_label_values(&["keygen"]).inc();
    let initiator = grant.grant.initiator();
    let url = urls.get(usize::from(initiator)).ok_or("initiator has no address")?;
    let note = format!("generating {scheme} key {key} with {n} nodes; party {initiator} initiates");
    event(&env.recorder, mpc, EventType::Normal, "KeygenStarted", "GenerateKey", note).await;
    let started = Instant::now();
    match env.nodes.keygen(url, &grant).await {
        Ok(Outcome::Keygen { key: got, scheme: got_scheme, public_key, chain_code })
            if got == key && got_scheme == scheme =>
        {
            confirm(&env.nodes, key, &public_key, chain_code.as_ref(), urls).await?;
            let status = key_status(key, scheme, &public_key, chain_code)?;
            let address = [&status.ethereum_address, &status.bitcoin_address, &status.solana_address]
                .into_iter()
                .find_map(|a| a.as_deref())
                .unwrap_or_default();
            let note = format!(
                "generated {scheme} key {key}: public key {}, address {address} in {:.1}s",
                status.public_key.as_deref().unwrap_or_default(),
                started.elapsed().as_secs_f64()
            );
            info!(cluster = %name, "{note}");
            env.metrics.keygens.with_label_values(&["completed", scheme.as_str()]).inc();
            event(&env.recorder, mpc, EventType::Normal, "KeyGenerated", "GenerateKey", note).await;
            Ok(status)
        }
        Ok(other) => Err(format!("initiator answered {other:?} to a keygen").into()),
        Err(e) => Err(e.to_string().into()),
    }
}

/// Waits until every node lists `key` under `public_key` and the same chain
/// code as the initiator; a node that lists the public key under another
/// chain code is a conflict at once.
async fn confirm(
    nodes: &NodeClient,
    key: &str,
    public_key: &str,
    chain_code: Option<&String>,
    urls: &[NodeAddr],
) -> Result<(), KeygenError> {
    let deadline = Instant::now() + CONFIRM_WITHIN;
    loop {
        let mut lacking = Vec::new();
        let mut codes = Vec::new();
        for (i, url) in urls.iter().enumerate() {
            let listed = nodes.keys(url).await.ok().and_then(|keys| {
                keys.into_iter().find(|k| k.name == key && k.public_key == public_key).map(|k| k.chain_code)
            });
            match listed {
                Some(code) => codes.push(code),
                None => lacking.push(i),
            }
        }
        if lacking.is_empty() {
            let reported = std::iter::once(chain_code).chain(codes.iter().map(Option::as_ref));
            return match chain_code_conflict(reported) {
                // Party numbers in the message count the initiator first.
                Some(reason) => Err(KeygenError::Conflict(format!("{reason} (the initiator's answer listed first)"))),
                None => Ok(()),
            };
        }
        if Instant::now() >= deadline {
            return Err(KeygenError::Failed(format!(
                "the initiator generated {public_key}, but nodes {lacking:?} do not list it after {}s; \
                 the next keygen supersedes it",
                CONFIRM_WITHIN.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn key_status(key: &str, scheme: Scheme, public_key: &str, chain_code: Option<String>) -> Result<KeyStatus, String> {
    crypto::key_status(key, scheme, public_key, chain_code)
        .map_err(|e| format!("the nodes' public key {public_key}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holds(key: Option<&str>, aux: Option<&str>) -> NodeHolds {
        NodeHolds { key: key.map(|k| (k.to_owned(), Some("cc".to_owned()))), aux_info: aux.map(str::to_owned) }
    }

    #[test]
    fn a_key_every_node_holds_is_recorded() {
        let nodes = [holds(Some("02aa"), Some("x")), holds(Some("02aa"), Some("x")), holds(Some("02aa"), None)];
        assert_eq!(plan(&nodes, 2, &[]), Plan::Record { public_key: "02aa".into(), chain_code: Some("cc".into()) });
    }

    #[test]
    fn a_key_whose_nodes_disagree_on_the_chain_code_is_not_recorded() {
        let with_code = |code: Option<&str>| NodeHolds {
            key: Some(("02aa".to_owned(), code.map(str::to_owned))),
            aux_info: Some("x".into()),
        };
        let nodes =
            [with_code(Some(&"c".repeat(64))), with_code(Some(&"d".repeat(64))), with_code(Some(&"c".repeat(64)))];
        let Plan::Conflict { reason } = plan(&nodes, 2, &[]) else { panic!("{:?}", plan(&nodes, 2, &[])) };
        assert!(
            reason.contains("nodes [0, 2] report chain code cccc")
                && reason.contains("nodes [1] report chain code dddd"),
            "{reason}"
        );
        let nodes = [with_code(Some(&"c".repeat(64))), with_code(None), with_code(Some(&"c".repeat(64)))];
        let Plan::Conflict { reason } = plan(&nodes, 2, &[]) else { panic!("{:?}", plan(&nodes, 2, &[])) };
        assert!(reason.contains("nodes [1] report none"), "{reason}");
        let nodes = [with_code(None), with_code(None), with_code(None)];
        assert_eq!(plan(&nodes, 2, &[]), Plan::Record { public_key: "02aa".into(), chain_code: None });
    }

    #[test]
    fn shared_aux_info_is_reused_and_partial_keys_are_superseded() {
        let nodes = [holds(None, None), holds(None, None), holds(None, None)];
        assert_eq!(plan(&nodes, 2, &[]), Plan::Generate { aux_info: None, supersedes: vec![] });

        let nodes = [holds(None, Some("x")), holds(None, Some("x")), holds(None, Some("x"))];
        assert_eq!(plan(&nodes, 2, &[]), Plan::Generate { aux_info: Some("x".into()), supersedes: vec![] });

        // Aux info on some nodes only: new aux info for all.
        let nodes = [holds(None, Some("x")), holds(None, Some("x")), holds(None, None)];
        assert_eq!(plan(&nodes, 2, &[]), Plan::Generate { aux_info: None, supersedes: vec![] });

        // A run that ended on one node only: that key cannot sign.
        let nodes = [holds(Some("02bb"), Some("y")), holds(None, Some("x")), holds(None, Some("x"))];
        assert_eq!(plan(&nodes, 2, &[]), Plan::Generate { aux_info: None, supersedes: vec!["02bb".into()] });
    }

    #[test]
    fn a_key_enough_nodes_hold_to_sign_is_not_superseded_unless_named() {
        // Two of three nodes hold 02aa: with threshold 2 it can sign, and
        // may be in use (a cluster applied again after a volume was lost).
        let nodes = [holds(Some("02bb"), Some("y")), holds(Some("02aa"), Some("x")), holds(Some("02aa"), Some("x"))];
        let Plan::Conflict { reason } = plan(&nodes, 2, &[]) else { panic!("{:?}", plan(&nodes, 2, &[])) };
        assert!(reason.contains("nodes [1, 2] hold it under public key 02aa") && reason.contains("nodes [0] do not"));
        assert!(reason.contains(ANNOTATION_SUPERSEDE), "{reason}");
        // Named by whoever may edit the MpcCluster: generated over.
        let allowed = ["02aa".to_owned()];
        let expected = Plan::Generate { aux_info: None, supersedes: vec!["02aa".into(), "02bb".into()] };
        assert_eq!(plan(&nodes, 2, &allowed), expected);
        // With threshold 3, two holders cannot sign: superseded.
        assert_eq!(plan(&nodes, 3, &[]), expected);
        let nodes = [holds(None, Some("x")), holds(Some("02aa"), Some("x")), holds(Some("02aa"), Some("x"))];
        assert!(matches!(plan(&nodes, 2, &[]), Plan::Conflict { .. }));
    }
}
