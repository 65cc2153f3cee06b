//! The durable copy of a cluster's policy ledger: the ConfigMap
//! `<cluster>-policy-ledger`, one data key per approval (the SigningRequest's
//! uid, valued with [`Ledger::stored`](crate::policy::Ledger::stored)), owned
//! by the MpcCluster.
//!
//! The requests' own `status.approvedAt` would make the counters survive a
//! restart too, but deleting approved requests would then reset them: a
//! spend limit anyone with `delete` on SigningRequests could undo. An
//! approval is therefore written here *before* the request's status says
//! `Approved`, and entries leave only once no limit period can count them.
//!
//! Writes are JSON merge patches that add one key (and drop expired ones), so
//! concurrent writers never overwrite each other's entries.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use torcus_crds::MpcCluster;

use crate::Result;
use crate::cluster_controller::FIELD_MANAGER;
use crate::resources::{self, Names};

/// The stored approvals of `mpc`'s ledger, uid to stored value; empty when
/// the ConfigMap does not exist yet.
pub async fn load(client: &Client, mpc: &MpcCluster) -> Result<BTreeMap<String, String>> {
    let name = Names::new(&mpc.name_any()).policy_ledger();
    let config_map = api(client, mpc).get_opt(&name).await?;
    Ok(config_map.and_then(|cm| cm.data).unwrap_or_default())
}

/// Adds `uid`'s approval to `mpc`'s ledger and drops the `expired` uids, in
/// one write; creates the ConfigMap on first use.
pub async fn append(client: &Client, mpc: &MpcCluster, uid: &str, stored: &str, expired: &[String]) -> Result<()> {
    let api = api(client, mpc);
    let name = Names::new(&mpc.name_any()).policy_ledger();
    let mut data = serde_json::Map::new();
    for uid in expired {
        data.insert(uid.clone(), serde_json::Value::Null);
    }
    data.insert(uid.to_owned(), serde_json::Value::String(stored.to_owned()));
    let patch = serde_json::json!({ "data": data });
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
    match api.patch(&name, &params, &Patch::Merge(&patch)).await {
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        other => return other.map(drop).map_err(Into::into),
    }
    let fresh = resources::policy_ledger(mpc, BTreeMap::from([(uid.to_owned(), stored.to_owned())]));
    match api.create(&PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() }, &fresh).await {
        // Another writer created it first: add to theirs.
        Err(kube::Error::Api(status)) if status.code == 409 => {
            api.patch(&name, &params, &Patch::Merge(&patch)).await.map(drop).map_err(Into::into)
        }
        other => other.map(drop).map_err(Into::into),
    }
}

fn api(client: &Client, mpc: &MpcCluster) -> Api<ConfigMap> {
    Api::namespaced(client.clone(), &mpc.namespace().unwrap_or_default())
}
