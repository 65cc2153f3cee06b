//! Key generation, driven by the operator: once every node of a cluster is
//! ready, one keygen grant per missing key goes to the grant's initiator,
//! which runs aux info and threshold keygen with all the others.
//!
//! A keygen takes from seconds to minutes, so it runs in a task of its own;
//! the cluster's reconcile only starts it and picks up what it learned.
//! Before issuing a grant the task asks every node which keys it already
//! holds: a keygen that finished while the operator was away (or whose
//! answer was lost) is recorded, not run twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::runtime::events::EventType;
use torcus_contract::GrantKind;
use torcus_contract::api::Outcome;
use torcus_crds::{KeyStatus, MpcCluster};
use tracing::{info, warn};

use crate::cluster_controller::{Context, event};
use crate::crypto;
use crate::grants::{self, GrantParts};

/// Pause after a failed keygen before the next try.
pub const RETRY_AFTER: Duration = Duration::from_secs(10);

/// Keygens in flight and what they learned, per `namespace/cluster/key`.
#[derive(Debug, Default)]
pub struct Keygens {
    state: Mutex<HashMap<String, State>>,
}

#[derive(Debug, Clone)]
enum State {
    Running,
    Failed { at: Instant },
    Done(KeyStatus),
}

fn id(mpc: &MpcCluster, key: &str) -> String {
    format!("{}/{}/{key}", mpc.namespace().unwrap_or_default(), mpc.name_any())
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

    /// Whether a keygen of `mpc` runs now.
    pub fn running(&self, mpc: &MpcCluster) -> bool {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        mpc.spec.keys.iter().any(|key| matches!(state.get(&id(mpc, key)), Some(State::Running)))
    }

    /// Starts a keygen for each of `missing` that is neither running nor
    /// waiting out a failure. `node_urls[i]` is node i's API.
    pub fn start(&self, ctx: &Arc<Context>, mpc: &MpcCluster, missing: &[String], node_urls: &[String]) {
        for key in missing {
            let id = id(mpc, key);
            {
                let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                match state.get(&id) {
                    Some(State::Running | State::Done(_)) => continue,
                    Some(State::Failed { at }) if at.elapsed() < RETRY_AFTER => continue,
                    _ => {}
                }
                state.insert(id.clone(), State::Running);
            }
            let (ctx, mpc, key, urls) = (Arc::clone(ctx), mpc.clone(), key.clone(), node_urls.to_vec());
            tokio::spawn(async move {
                let result = run(&ctx, &mpc, &key, &urls).await;
                let next = match result {
                    Ok(status) => State::Done(status),
                    Err(message) => {
                        warn!(cluster = %mpc.name_any(), %key, %message, "keygen failed");
                        ctx.metrics.keygens.with_label_values(&["failed"]).inc();
                        let note = format!("key {key}: {message}; retrying in {}s", RETRY_AFTER.as_secs());
                        event(&ctx, &mpc, EventType::Warning, "KeygenFailed", "GenerateKey", note).await;
                        State::Failed { at: Instant::now() }
                    }
                };
                ctx.keygens.state.lock().unwrap_or_else(PoisonError::into_inner).insert(id, next);
            });
        }
    }
}

async fn run(ctx: &Context, mpc: &MpcCluster, key: &str, urls: &[String]) -> Result<KeyStatus, String> {
    let ns = mpc.namespace().unwrap_or_default();
    let name = mpc.name_any();
    let n = usize::from(mpc.spec.nodes);

    // A keygen that already happened: every node holds the key.
    let mut held = Vec::new();
    for url in urls {
        if let Ok(keys) = ctx.nodes.keys(url).await
            && let Some(found) = keys.into_iter().find(|k| k.name == key)
        {
            held.push((found.public_key, found.chain_code));
        }
    }
    if held.len() == n && held.windows(2).all(|w| w[0] == w[1]) {
        info!(cluster = %name, %key, "every node holds the key already; recording it");
        return key_status(key, &held[0].0, held[0].1.clone());
    }
    if !held.is_empty() {
        return Err(format!(
            "{} of {n} nodes hold a key named {key}, the others do not; it cannot be generated again under that name",
            held.len()
        ));
    }

    let signing_key = grants::signing_key(ctx, &ns, &name).await.map_err(|e| e.to_string())?;
    let all: Vec<u16> = (0..mpc.spec.nodes).collect();
    let parts = GrantParts::fresh(grants::KEYGEN_GRANT_TTL_SECS, |_| Some(all)).ok_or("no participants")?;
    let grant = grants::issue(&signing_key, &ns, &name, GrantKind::Keygen { key: key.to_owned() }, &parts)
        .map_err(|e| e.to_string())?;
    let initiator = grant.grant.initiator();
    let url = urls.get(usize::from(initiator)).ok_or("initiator has no address")?;
    let note = format!("generating key {key} with {n} nodes; party {initiator} initiates");
    event(ctx, mpc, EventType::Normal, "KeygenStarted", "GenerateKey", note).await;
    let started = Instant::now();
    match ctx.nodes.keygen(url, &grant).await {
        Ok(Outcome::Keygen { key: got, public_key, chain_code }) if got == key => {
            let status = key_status(key, &public_key, chain_code)?;
            let note = format!(
                "generated key {key}: public key {public_key}, address {} in {:.1}s",
                status.ethereum_address.as_deref().unwrap_or_default(),
                started.elapsed().as_secs_f64()
            );
            info!(cluster = %name, "{note}");
            ctx.metrics.keygens.with_label_values(&["completed"]).inc();
            event(ctx, mpc, EventType::Normal, "KeyGenerated", "GenerateKey", note).await;
            Ok(status)
        }
        Ok(other) => Err(format!("initiator answered {other:?} to a keygen")),
        Err(e) => Err(e.to_string()),
    }
}

fn key_status(key: &str, public_key: &str, chain_code: Option<String>) -> Result<KeyStatus, String> {
    let address = crypto::ethereum_address(public_key).map_err(|e| e.to_string())?;
    Ok(KeyStatus {
        name: key.to_owned(),
        public_key: Some(public_key.to_owned()),
        ethereum_address: Some(address),
        chain_code,
    })
}
