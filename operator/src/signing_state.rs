//! What the SigningRequest controller keeps between reconciles: the policy
//! ledgers, the statuses it wrote, the presignature pools and what failed
//! attempts showed. Memory only; the API server holds the rest.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use torcus_crds::SigningRequestStatus;

use crate::policy::Ledger;
use crate::presignatures::Presignatures;
use crate::signers;

/// What the controller keeps between reconciles.
#[derive(Debug, Default)]
pub struct SigningState {
    /// Policy ledgers per `namespace/cluster`, built from the API on first use.
    pub(crate) ledgers: tokio::sync::Mutex<HashMap<String, Ledger>>,
    /// The last status written per request uid, with the resource version
    /// the write made, until the watch cache shows that version or a later
    /// one: a reconcile must never act on a status older than its own
    /// write, and must see what anyone else wrote after it.
    pub(crate) written: Mutex<HashMap<String, (Option<String>, SigningRequestStatus)>>,
    /// The nodes' presignature pools, and the presignature reserved for
    /// each session.
    pub presignatures: Arc<Presignatures>,
    /// Per request uid, what its failed attempts showed: the pairs of
    /// parties they put in dispute ([`signers`]) and how many failed with
    /// a participant down. Memory only: after a restart a request starts
    /// over with none, which costs at most attempts.
    failures: Mutex<HashMap<String, Failures>>,
    /// Per MpcCluster uid, the signing sessions it may run at once
    /// ([`SigningState::session_slot`]).
    slots: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
}

/// Signing sessions one node is given at once, on average: the full
/// protocol computes for about a second per party, and more sessions at
/// once only share the node's cores among them until their rounds miss the
/// idle timeout (measured: a burst of 48 full-protocol requests on a 2-of-3
/// cluster without this limit failed requests on silence).
pub const SESSIONS_PER_NODE: usize = 2;

/// The signing sessions a cluster of `nodes` with `threshold` runs at once:
/// each involves `threshold` nodes, so that on average each node runs
/// [`SESSIONS_PER_NODE`]; at least one.
pub fn cluster_sessions(nodes: u16, threshold: u16) -> usize {
    (SESSIONS_PER_NODE * usize::from(nodes) / usize::from(threshold.max(1))).max(1)
}

/// What the failed attempts of one request showed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Failures {
    /// The pairs of parties not to be put in one session again.
    pub disputes: Vec<signers::Dispute>,
    /// Attempts that failed while a participant had restarted or could
    /// not be reached.
    pub crashes: u16,
}

/// Requests whose failures are kept at once; beyond, all are forgotten.
const MAX_FAILED_REQUESTS: usize = 4096;

impl SigningState {
    /// Records a failed attempt of request `uid`: the `new` disputes it
    /// showed, and whether a participant had crashed (restarted, or did not
    /// answer). Returns what all its failed attempts showed.
    pub(crate) fn add_failure(&self, uid: &str, new: &[signers::Dispute], crashed: bool) -> Failures {
        let mut all = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        if all.len() >= MAX_FAILED_REQUESTS && !all.contains_key(uid) {
            all.clear();
        }
        let failures = all.entry(uid.to_owned()).or_default();
        for dispute in new {
            if !failures.disputes.contains(dispute) {
                failures.disputes.push(*dispute);
            }
        }
        failures.crashes = failures.crashes.saturating_add(u16::from(crashed));
        failures.clone()
    }

    /// A slot to run one signing session of cluster `uid` (of `nodes` with
    /// `threshold`), waiting up to `wait` for one; first come, first served.
    /// `None`: every slot stayed taken (the request waits, and says why).
    pub(crate) async fn session_slot(
        &self,
        uid: &str,
        nodes: u16,
        threshold: u16,
        wait: std::time::Duration,
    ) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let slots = {
            let mut all = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            let slots = all
                .entry(uid.to_owned())
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(cluster_sessions(nodes, threshold))));
            Arc::clone(slots)
        };
        tokio::time::timeout(wait, slots.acquire_owned()).await.ok()?.ok()
    }

    /// Forgets the session slots of cluster `uid`, which is being deleted
    /// (sessions holding one end on their own).
    pub(crate) fn forget_slots(&self, uid: &str) {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner).remove(uid);
    }

    /// Forgets the failures of request `uid`, which is over.
    pub(crate) fn settle(&self, uid: &str) {
        self.failures.lock().unwrap_or_else(PoisonError::into_inner).remove(uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_runs_about_two_sessions_per_node_at_once() {
        // (nodes, threshold) → sessions at once.
        for (nodes, threshold, sessions) in [(3, 2, 3), (5, 3, 3), (7, 4, 3), (16, 11, 2), (2, 2, 2), (1, 1, 2)] {
            assert_eq!(cluster_sessions(nodes, threshold), sessions, "{nodes}/{threshold}");
        }
        assert_eq!(cluster_sessions(3, 0), 6, "a zero threshold (refused at admission) divides by one");
    }

    #[tokio::test]
    async fn slots_are_per_cluster_and_taken_back_when_a_session_ends() {
        let state = SigningState::default();
        let wait = std::time::Duration::from_millis(50);
        let held: Vec<_> = futures::future::join_all((0..3).map(|_| state.session_slot("a", 3, 2, wait))).await;
        assert!(held.iter().all(Option::is_some), "three sessions of a 2-of-3 cluster at once");
        assert!(state.session_slot("a", 3, 2, wait).await.is_none(), "a fourth waits");
        assert!(state.session_slot("b", 3, 2, wait).await.is_some(), "another cluster has slots of its own");
        drop(held);
        assert!(state.session_slot("a", 3, 2, wait).await.is_some(), "an ended session frees its slot");
    }
}
