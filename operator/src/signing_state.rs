//! What the SigningRequest controller keeps between reconciles: the policy
//! ledgers, the statuses it wrote, the presignature pools and the disputes
//! of failed attempts. Memory only; the API server holds the rest.

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
    /// Per request uid, the pairs of parties its failed attempts put in
    /// dispute ([`signers`]). Memory only: after a restart a request starts
    /// over with none, which costs at most attempts.
    disputes: Mutex<HashMap<String, Vec<signers::Dispute>>>,
}

/// Requests whose disputes are kept at once; beyond, all are forgotten.
const MAX_DISPUTED_REQUESTS: usize = 4096;

impl SigningState {
    /// Records `new` disputes for request `uid`; returns all of its disputes.
    pub(crate) fn add_disputes(&self, uid: &str, new: &[signers::Dispute]) -> Vec<signers::Dispute> {
        let mut all = self.disputes.lock().unwrap_or_else(PoisonError::into_inner);
        if all.len() >= MAX_DISPUTED_REQUESTS && !all.contains_key(uid) {
            all.clear();
        }
        let disputes = all.entry(uid.to_owned()).or_default();
        for dispute in new {
            if !disputes.contains(dispute) {
                disputes.push(*dispute);
            }
        }
        disputes.clone()
    }

    /// Forgets the disputes of request `uid`, which is over.
    pub(crate) fn settle(&self, uid: &str) {
        self.disputes.lock().unwrap_or_else(PoisonError::into_inner).remove(uid);
    }
}
