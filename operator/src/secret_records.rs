//! Which key material the operator made for a cluster (review finding 4).
//!
//! A controller owner reference proves nothing: whoever can read the
//! MpcCluster knows its uid and can write one into a Secret it plants. So
//! before the operator writes key material into a Secret, it records the
//! public half of that material in `status.secrets`, and a Secret holding
//! anything not recorded there is not its own and is refused.
//!
//! Recording comes first so that a reconcile cut short between the two
//! writes leaves a record without its Secret (the next reconcile makes the
//! key again and records that), never a Secret of the operator's own that it
//! would then refuse. A record lists every key a Secret may hold at once, so
//! a Secret being rewritten (a CA roll) is recorded with old and new keys
//! until the write is done.
//!
//! Clusters made before records existed (their status has a grant key but no
//! record of it) take their Secrets once more on the owner reference, and
//! record them; from then on the records decide.

use std::collections::BTreeMap;

use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use torcus_crds::MpcCluster;

use crate::Result;
use crate::apiserver::FIELD_MANAGER;

/// `status.secrets` as this reconcile knows it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Records {
    map: BTreeMap<String, Vec<String>>,
    /// What the status holds: `map` without what this reconcile has seen
    /// or written since it last published.
    persisted: BTreeMap<String, Vec<String>>,
    /// A cluster from before records: unrecorded Secrets with the owner
    /// reference are taken as the operator's.
    legacy: bool,
}

impl Records {
    /// The records in `mpc`'s status.
    pub fn of(mpc: &MpcCluster) -> Self {
        let status = mpc.status.as_ref();
        let map = status.and_then(|s| s.secrets.clone()).unwrap_or_default();
        let grant_key = crate::resources::Names::new(&mpc.name_any()).grant_key_secret();
        // The grant key is recorded before any status names it, so a status
        // with a grant key and no record of it was written by an older release.
        let legacy = status.is_some_and(|s| s.grant_public_key.is_some()) && !map.contains_key(&grant_key);
        Self { persisted: map.clone(), map, legacy }
    }

    /// Whether Secret `name`, holding the keys `found` (public halves, as
    /// [`ed25519`] and [`torcus_certs::fingerprints`] give them) and carrying
    /// the cluster's owner reference, is the operator's.
    ///
    /// A record made before store keys were recorded lists none: the store
    /// key found is then taken once (and recorded by [`Records::seen`]).
    pub fn owns(&self, name: &str, found: &[String]) -> bool {
        self.legacy
            || self.map.get(name).is_some_and(|recorded| {
                let stores_recorded = recorded.iter().any(|r| r.starts_with(STORE_PREFIX));
                found.iter().all(|key| recorded.contains(key) || (key.starts_with(STORE_PREFIX) && !stores_recorded))
            })
    }

    /// Notes that Secret `name`, found to be the operator's, holds `keys`:
    /// kept in its record (which, for a cluster from an older release, this
    /// starts) until the operator writes that Secret again.
    pub fn seen(&mut self, name: &str, keys: &[String]) {
        if let Some(wanted) = self.ahead(name, keys) {
            self.map.insert(name.to_owned(), wanted);
        }
    }

    /// Notes that the operator wrote Secret `name` with exactly `keys`.
    /// Published with the next status.
    pub fn set(&mut self, name: &str, keys: Vec<String>) {
        self.map.insert(name.to_owned(), keys);
    }

    /// The record to publish before Secret `name` is written with `keys`:
    /// what is recorded plus `keys`, or `None` when that is recorded already.
    fn ahead(&self, name: &str, keys: &[String]) -> Option<Vec<String>> {
        let recorded = self.map.get(name);
        let mut wanted = recorded.cloned().unwrap_or_default();
        for key in keys {
            if !wanted.contains(key) {
                wanted.push(key.clone());
            }
        }
        (recorded.map(Vec::len) != Some(wanted.len())).then_some(wanted)
    }

    /// The entries this reconcile changed (seen, adopted, or narrowed to
    /// what it wrote) and has not written to the status yet.
    fn changed(&self) -> BTreeMap<String, Vec<String>> {
        self.map
            .iter()
            .filter(|(name, keys)| self.persisted.get(*name) != Some(*keys))
            .map(|(n, k)| (n.clone(), k.clone()))
            .collect()
    }
}

/// The record form of an Ed25519 public key in hex.
pub fn ed25519(public_hex: &str) -> String {
    format!("ed25519:{public_hex}")
}

/// The record form of an X25519 public key in hex.
pub fn x25519(public_hex: &str) -> String {
    format!("x25519:{public_hex}")
}

/// The record form of a store key, by its check value
/// ([`torcus_contract::store_key_check`]).
pub fn store(check: &str) -> String {
    format!("{STORE_PREFIX}{check}")
}

const STORE_PREFIX: &str = "store:";

/// Records in `mpc`'s status that Secret `name` is about to hold `keys`,
/// unless that is recorded already. The record is read fresh from the API
/// (the reconcile's copy may be older than an earlier reconcile's record)
/// and written back with a merge patch of this one entry, on the version
/// read. Fails, and the Secret must then not be written, when the status
/// cannot be written. A cluster from an older release takes its Secrets on
/// the owner reference until its first full status, so nothing is written
/// ahead for it (that would end the taking half way).
pub async fn record_ahead(
    client: &kube::Client,
    mpc: &MpcCluster,
    records: &mut Records,
    name: &str,
    keys: &[String],
) -> Result<()> {
    if records.legacy {
        records.seen(name, keys);
        return Ok(());
    }
    let api: Api<MpcCluster> = Api::namespaced(client.clone(), &mpc.namespace().unwrap_or_default());
    // The object, not its status subresource: the operator may get
    // MpcClusters, and the status comes with them.
    let fresh = api.get(&mpc.name_any()).await?;
    let recorded = fresh.status.as_ref().and_then(|s| s.secrets.as_ref()).and_then(|s| s.get(name)).cloned();
    let mut wanted = recorded.clone().unwrap_or_default();
    for key in records.map.get(name).into_iter().flatten().chain(keys) {
        if !wanted.contains(key) {
            wanted.push(key.clone());
        }
    }
    if recorded.as_ref().map(Vec::len) != Some(wanted.len()) {
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": fresh.metadata.resource_version },
            "status": { "secrets": { name: wanted } },
        });
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
        api.patch_status(&mpc.name_any(), &params, &Patch::Merge(&patch)).await?;
    }
    records.persisted.insert(name.to_owned(), wanted.clone());
    records.map.insert(name.to_owned(), wanted);
    Ok(())
}

/// Writes to `mpc`'s status what this reconcile took or narrowed
/// ([`Records::seen`], [`Records::set`]), once it went through: a merge
/// patch of the changed entries. `status.secrets` is only ever written this
/// way and by [`record_ahead`], never by the status apply, so that no apply
/// made from an older copy can take a record back.
pub async fn persist(client: &kube::Client, mpc: &MpcCluster, records: &mut Records) -> Result<()> {
    let changed = records.changed();
    if changed.is_empty() {
        return Ok(());
    }
    let api: Api<MpcCluster> = Api::namespaced(client.clone(), &mpc.namespace().unwrap_or_default());
    let patch = serde_json::json!({ "status": { "secrets": changed } });
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
    api.patch_status(&mpc.name_any(), &params, &Patch::Merge(&patch)).await?;
    records.persisted.clone_from(&records.map);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use torcus_crds::MpcClusterStatus;

    fn cluster(status: Option<MpcClusterStatus>) -> MpcCluster {
        let mut mpc: MpcCluster = serde_json::from_value(serde_json::json!({
            "apiVersion": "mpc.torcus.io/v1alpha1",
            "kind": "MpcCluster",
            "metadata": {"name": "vault", "namespace": "ns", "uid": "u"},
            "spec": {"nodes": 3, "threshold": 2},
        }))
        .unwrap();
        mpc.status = status;
        mpc
    }

    #[test]
    fn a_new_cluster_owns_nothing_it_has_not_recorded() {
        for status in [None, Some(MpcClusterStatus::default())] {
            let records = Records::of(&cluster(status));
            assert!(!records.owns("vault-grant-key", &[ed25519("aa")]));
            assert!(!records.owns("vault-ca", &[]), "not even an empty Secret");
        }
    }

    #[test]
    fn a_recorded_secret_is_owned_only_with_the_recorded_keys() {
        let mut records = Records::of(&cluster(None));
        records.set("vault-ca", vec!["sha256:old".into(), "sha256:new".into()]);
        assert!(records.owns("vault-ca", &["sha256:new".into()]));
        assert!(records.owns("vault-ca", &["sha256:old".into(), "sha256:new".into()]));
        assert!(!records.owns("vault-ca", &["sha256:new".into(), "sha256:planted".into()]));
        assert!(!records.owns("vault-grant-key", &[ed25519("aa")]));
    }

    #[test]
    fn a_store_key_is_the_recorded_one_once_one_is_recorded() {
        let mut records = Records::of(&cluster(None));
        // Recorded before store keys were: the one found is taken, and kept.
        records.set("vault-node-0-keys", vec![ed25519("bb")]);
        assert!(records.owns("vault-node-0-keys", &[ed25519("bb"), store("s1")]));
        records.seen("vault-node-0-keys", &[ed25519("bb"), store("s1")]);
        assert!(records.owns("vault-node-0-keys", &[ed25519("bb"), store("s1")]));
        // From then on another store key (a patched Secret) is not the operator's.
        assert!(!records.owns("vault-node-0-keys", &[ed25519("bb"), store("s2")]));
        // Nor is an identity key of an older record.
        assert!(!records.owns("vault-node-0-keys", &[ed25519("cc"), store("s1")]));
    }

    #[test]
    fn a_secret_seen_keeps_its_record_whole() {
        let mut records = Records::of(&cluster(None));
        records.set("vault-ca", vec!["sha256:a".into(), "sha256:b".into()]);
        records.seen("vault-ca", &["sha256:b".into()]);
        assert_eq!(records.changed()["vault-ca"], ["sha256:a", "sha256:b"]);
    }

    #[test]
    fn writing_ahead_keeps_the_old_keys_until_the_write_is_done() {
        let mut records = Records::of(&cluster(None));
        assert_eq!(records.ahead("vault-ca", &["sha256:a".into()]), Some(vec!["sha256:a".to_owned()]));
        records.set("vault-ca", vec!["sha256:a".into()]);
        assert_eq!(records.ahead("vault-ca", &["sha256:a".into()]), None, "nothing new: no write");
        assert_eq!(
            records.ahead("vault-ca", &["sha256:b".into(), "sha256:a".into()]),
            Some(vec!["sha256:a".to_owned(), "sha256:b".to_owned()])
        );
    }

    #[test]
    fn a_cluster_from_an_older_release_takes_its_secrets_until_the_grant_key_is_recorded() {
        let old = MpcClusterStatus { grant_public_key: Some("aa".into()), ..MpcClusterStatus::default() };
        let mut records = Records::of(&cluster(Some(old.clone())));
        assert!(records.owns("vault-grant-key", &[ed25519("aa")]));
        assert!(records.owns("vault-node-0-keys", &[ed25519("bb")]));
        records.seen("vault-grant-key", &[ed25519("aa")]);
        records.seen("vault-node-0-keys", &[ed25519("bb")]);
        // A record written ahead of a CA roll does not end that by itself ...
        let mut partly = old.clone();
        partly.secrets = Some(BTreeMap::from([("vault-ca".to_owned(), vec!["sha256:a".to_owned()])]));
        assert!(Records::of(&cluster(Some(partly.clone()))).owns("vault-grant-key", &[ed25519("aa")]));
        // ... the status published with what was taken does: from then on
        // the records decide.
        partly.secrets = Some(records.changed());
        let records = Records::of(&cluster(Some(partly)));
        assert!(records.owns("vault-node-0-keys", &[ed25519("bb")]));
        assert!(!records.owns("vault-node-0-keys", &[ed25519("cc")]));
        assert!(!records.owns("vault-node-1-keys", &[ed25519("bb")]));
    }
}
