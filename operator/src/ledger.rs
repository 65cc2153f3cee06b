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
//!
//! Each entry is sealed: the stored approval with an Ed25519 signature by
//! the cluster's grant key over the request's uid and that approval
//! ([`seal`]). Whoever may write ConfigMaps in the namespace can still delete
//! entries (so ledger writers are policy administrators, as the README
//! says), but cannot add one: an entry that does not open ([`open`]) is
//! counted towards the limits (the safe side) and never taken as an
//! approval.

use std::collections::BTreeMap;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use torcus_crds::MpcCluster;

use crate::Result;
use crate::apiserver::FIELD_MANAGER;
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

/// First bytes of what a ledger entry's signature signs: never a grant's
/// nor a grant proof's.
const DOMAIN: &[u8] = b"torcus-ledger-entry-v1:";

/// A ledger entry as the ConfigMap holds it.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Sealed {
    /// [`Ledger::stored`](crate::policy::Ledger::stored)'s value.
    approval: String,
    /// Hex Ed25519 signature over [`DOMAIN`], the uid and `approval`.
    signature: String,
}

fn signed_bytes(uid: &str, approval: &str) -> Vec<u8> {
    crate::grants::uid_bound(DOMAIN, uid, approval.as_bytes())
}

/// The ConfigMap value for `uid`'s stored `approval`, signed with the grant key.
pub fn seal(key: &SigningKey, uid: &str, approval: &str) -> String {
    let signature = hex::encode(key.sign(&signed_bytes(uid, approval)).to_bytes());
    serde_json::to_string(&Sealed { approval: approval.to_owned(), signature }).unwrap_or_default()
}

/// What an entry says: the stored approval, and whether the grant key
/// `issuer` signed it for this uid (never, without a key). `None` for a
/// value that is not an entry at all. An entry of an earlier release (a
/// bare approval) opens unproven.
pub fn open(issuer: Option<&VerifyingKey>, uid: &str, value: &str) -> Option<(String, bool)> {
    match serde_json::from_str::<Sealed>(value) {
        Ok(sealed) => {
            let signature = <[u8; 64]>::try_from(hex::decode(&sealed.signature).unwrap_or_default())
                .map(|bytes| ed25519_dalek::Signature::from_bytes(&bytes));
            let proven = match (issuer, signature) {
                (Some(issuer), Ok(sig)) => issuer.verify_strict(&signed_bytes(uid, &sealed.approval), &sig).is_ok(),
                _ => false,
            };
            Some((sealed.approval, proven))
        }
        Err(_) if serde_json::from_str::<serde_json::Value>(value).is_ok() => Some((value.to_owned(), false)),
        Err(_) => None,
    }
}

fn api(client: &Client, mpc: &MpcCluster) -> Api<ConfigMap> {
    Api::namespaced(client.clone(), &mpc.namespace().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_opens_only_for_its_uid_under_its_key() {
        let key = SigningKey::from_bytes(&[5; 32]);
        let approval = r#"{"atMs":1,"namespace":"n","labels":{}}"#;
        let sealed = seal(&key, "uid-1", approval);
        assert_eq!(open(Some(&key.verifying_key()), "uid-1", &sealed), Some((approval.to_owned(), true)));
        assert_eq!(
            open(Some(&key.verifying_key()), "uid-2", &sealed),
            Some((approval.to_owned(), false)),
            "another uid"
        );
        let stranger = SigningKey::from_bytes(&[6; 32]);
        assert_eq!(open(Some(&stranger.verifying_key()), "uid-1", &sealed).map(|(_, p)| p), Some(false));
        let more = sealed.replace(r#"\"atMs\":1"#, r#"\"atMs\":2"#);
        assert_ne!(more, sealed);
        assert_eq!(open(Some(&key.verifying_key()), "uid-1", &more).map(|(_, p)| p), Some(false), "changed");
        assert_eq!(open(Some(&key.verifying_key()), "uid-1", approval), Some((approval.to_owned(), false)), "unsealed");
        assert_eq!(open(Some(&key.verifying_key()), "uid-1", "not json"), None);
        assert_eq!(open(None, "uid-1", &sealed), Some((approval.to_owned(), false)), "no key, no proof");
    }
}
