//! Node keys Secrets live exactly as long as the volumes whose shares they
//! decrypt.
//!
//! A node keys Secret (`<cluster>-node-<i>-keys`: store key, TCP identity,
//! seal key) is owned by its MpcCluster (the controller) and, once the
//! StatefulSet has made it, by the node's PersistentVolumeClaim. The garbage
//! collector deletes an object only when every owner is gone, so deleting the
//! MpcCluster leaves the Secret with the retained volume, and deleting the
//! claim deletes it. Key generation waits until every node's Secret is bound
//! to its claim, so no share is ever written that a deleted cluster would
//! take the key of.
//!
//! An MpcCluster applied again under the same name finds Secrets it has no
//! record of (records live in the status of the cluster that was deleted).
//! Taking one on its owner references would reopen the planted-Secret door:
//! anyone who can create Secrets can write a claim's uid into one. So, for a
//! cluster that has no key yet, a Secret bound to the node's current claim
//! and to no live controller is a *candidate*: it is mounted, and key
//! generation is held back, until the node it is mounted in shows over
//! mutual TLS that its volume holds key shares the candidate's store key
//! opens. That proves the store key, and only it: the store key is taken,
//! the identity and seal keys (which anyone who may patch the Secret could
//! have written) are made anew, the Secret is recorded and bound
//! (`NodeKeysAdopted`), and the node restarts on them. The keygen's survey
//! then finds the key on every node and records it without generating
//! anything. A node whose volume holds no share (a fresh volume) proves
//! nothing: all three keys are made anew before anything is generated
//! (`RetainedKeysRefused`). A candidate whose store key does not open the
//! shares on the volume leaves that node failing to start and the cluster
//! waiting, with the reason in `KeysReady`. A cluster with a key never takes
//! an unrecorded Secret.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

/// A node's PersistentVolumeClaim, as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// Its name ([`crate::resources::Names::data_claim`]).
    pub name: String,
    /// Its uid: a claim deleted and made again is another volume.
    pub uid: String,
}

const CLUSTER_KIND: &str = "MpcCluster";
const CLAIM_KIND: &str = "PersistentVolumeClaim";

/// The owner reference that binds a Secret to `claim` (not its controller:
/// the MpcCluster is).
pub fn claim_reference(claim: &Claim) -> OwnerReference {
    OwnerReference {
        api_version: "v1".to_owned(),
        kind: CLAIM_KIND.to_owned(),
        name: claim.name.clone(),
        uid: claim.uid.clone(),
        controller: None,
        block_owner_deletion: None,
    }
}

/// Whether `owners` include `claim` (this very claim: same uid).
pub fn bound_to(owners: &[OwnerReference], claim: &Claim) -> bool {
    owners.iter().any(|o| o.kind == CLAIM_KIND && o.api_version == "v1" && o.name == claim.name && o.uid == claim.uid)
}

/// Whether a Secret with `owners` is a candidate retained for `claim` from a
/// deleted MpcCluster of the same name: bound to the claim, and controlled
/// by nothing but MpcClusters other than `cluster_uid` (the one of the same
/// name that was deleted; names are unique, so it is gone).
pub fn retained_for(owners: &[OwnerReference], cluster_uid: &str, claim: &Claim) -> bool {
    let controllers_gone =
        owners.iter().filter(|o| o.controller == Some(true)).all(|o| o.kind == CLUSTER_KIND && o.uid != cluster_uid);
    bound_to(owners, claim) && controllers_gone
}

/// The owner references a node keys Secret is to carry: `cluster` (the
/// live MpcCluster's controller reference) and `claim`, in place of any
/// other MpcCluster or claim of that name; anything else is kept.
pub fn owners_for(existing: &[OwnerReference], cluster: OwnerReference, claim: &Claim) -> Vec<OwnerReference> {
    let mut owners: Vec<OwnerReference> = existing
        .iter()
        .filter(|o| o.kind != CLUSTER_KIND && !(o.kind == CLAIM_KIND && o.name == claim.name))
        .cloned()
        .collect();
    owners.push(cluster);
    owners.push(claim_reference(claim));
    owners
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(uid: &str) -> OwnerReference {
        OwnerReference {
            api_version: "mpc.torcus.io/v1alpha1".into(),
            kind: CLUSTER_KIND.into(),
            name: "vault".into(),
            uid: uid.into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    fn claim(uid: &str) -> Claim {
        Claim { name: "data-vault-0-0".into(), uid: uid.into() }
    }

    #[test]
    fn a_secret_is_retained_for_the_claim_it_names_once_its_cluster_is_gone() {
        let old = [cluster("old"), claim_reference(&claim("c1"))];
        // The cluster applied again has another uid.
        assert!(retained_for(&old, "new", &claim("c1")));
        // The garbage collector took the deleted cluster's reference off.
        assert!(retained_for(&[claim_reference(&claim("c1"))], "new", &claim("c1")));
        // Still the live cluster's: not a candidate, it is owned.
        assert!(!retained_for(&old, "old", &claim("c1")));
        // A claim made again is a fresh volume.
        assert!(!retained_for(&old, "new", &claim("c2")));
        // Unbound: not retained, whatever else it says.
        assert!(!retained_for(&[cluster("old")], "new", &claim("c1")));
        // Controlled by something else altogether.
        let mut other = cluster("x");
        other.kind = "Deployment".into();
        assert!(!retained_for(&[other, claim_reference(&claim("c1"))], "new", &claim("c1")));
    }

    #[test]
    fn binding_replaces_stale_owners_and_keeps_the_rest() {
        let mut foreign = cluster("f");
        foreign.kind = "ConfigMap".into();
        foreign.controller = None;
        let existing = [cluster("old"), claim_reference(&claim("c0")), foreign.clone()];
        let owners = owners_for(&existing, cluster("new"), &claim("c1"));
        assert_eq!(owners, [foreign, cluster("new"), claim_reference(&claim("c1"))]);
        assert!(bound_to(&owners, &claim("c1")));
        assert!(!bound_to(&owners, &claim("c0")));
        assert_eq!(owners.iter().filter(|o| o.controller == Some(true)).count(), 1);
    }
}
