//! What the SigningRequest controller keeps between reconciles: the policy
//! ledgers, the statuses it wrote, the presignature pools and what failed
//! attempts showed. Memory only; the API server holds the rest.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

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
    slots: Mutex<HashMap<String, Arc<Slots>>>,
}

/// A request's place in its cluster's queue for a session slot: oldest
/// first (creation time in milliseconds, then uid).
pub(crate) type Ticket = (i64, String);

/// The session slots of one cluster, handed out in the order of the
/// requests' tickets.
#[derive(Debug, Default)]
struct Slots {
    queue: Mutex<Queue>,
    /// Woken when a slot is given back.
    freed: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Queue {
    /// Slots taken.
    taken: usize,
    /// The tickets of requests waiting, with when each lapses: a request
    /// that stopped asking (deleted, or failed for another reason) is
    /// dropped [`TICKET_GRACE`] after its last wait ended; one that asks
    /// again within it keeps its place.
    waiting: BTreeMap<Ticket, Instant>,
}

/// How long a waiting request keeps its place between two asks, beyond
/// the wait of one ask: its reconcile publishes that it is queued and
/// comes back within a few seconds.
const TICKET_GRACE: Duration = Duration::from_secs(15);
/// Requests one cluster's queue keeps a place for.
const MAX_WAITING: usize = 1024;
/// How often a waiting request looks at the queue again without being
/// woken (a ticket ahead of it may have lapsed).
const QUEUE_POLL: Duration = Duration::from_secs(1);

/// A session slot taken; given back when dropped.
#[derive(Debug)]
pub(crate) struct SessionSlot {
    slots: Arc<Slots>,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut queue = self.slots.queue.lock().unwrap_or_else(PoisonError::into_inner);
        queue.taken = queue.taken.saturating_sub(1);
        drop(queue);
        self.slots.freed.notify_waiters();
    }
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
    /// The sessions of attempts that failed while a participant had
    /// restarted or could not be reached (a set: each counts once).
    crashed: BTreeSet<String>,
}

impl Failures {
    /// How many attempts failed while a participant had crashed.
    pub fn crashes(&self) -> u16 {
        u16::try_from(self.crashed.len()).unwrap_or(u16::MAX)
    }
}

/// Requests whose failures are kept at once; beyond, all are forgotten.
const MAX_FAILED_REQUESTS: usize = 4096;

impl SigningState {
    /// Records a failed attempt of request `uid`: the `new` disputes it
    /// showed, and, when a participant had crashed (restarted, or did not
    /// answer), its session id. Returns what all its failed attempts
    /// showed; a session recorded again counts once.
    pub(crate) fn add_failure(&self, uid: &str, new: &[signers::Dispute], crashed: Option<&str>) -> Failures {
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
        // Bounded by the attempts a request has (see the controller's budget).
        if let Some(session) = crashed {
            failures.crashed.insert(session.to_owned());
        }
        failures.clone()
    }

    /// A slot to run one signing session of cluster `uid` (of `nodes` with
    /// `threshold`) for the request holding `ticket`, waiting up to `wait`
    /// for one. Slots go to the oldest ticket first, also across waits:
    /// `None` (every slot stayed taken, or went to older requests) keeps
    /// the request's place for when it asks again (it says why it waits
    /// meanwhile), so under a load above what the cluster can sign the
    /// oldest requests sign first, and none waits past its pending limit
    /// while newer ones go ahead.
    pub(crate) async fn session_slot(
        &self,
        uid: &str,
        nodes: u16,
        threshold: u16,
        ticket: &Ticket,
        wait: Duration,
    ) -> Option<SessionSlot> {
        let slots = {
            let mut all = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(all.entry(uid.to_owned()).or_default())
        };
        let capacity = cluster_sessions(nodes, threshold);
        let deadline = Instant::now() + wait;
        loop {
            // Registered before the queue is read: a slot given back after
            // the read wakes it.
            let freed = slots.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut queue = slots.queue.lock().unwrap_or_else(PoisonError::into_inner);
                let now = Instant::now();
                queue.waiting.retain(|_, lapses| *lapses > now);
                // Beyond the bound a request waits without a place, behind all.
                if queue.waiting.len() < MAX_WAITING || queue.waiting.contains_key(ticket) {
                    queue.waiting.insert(ticket.clone(), deadline + TICKET_GRACE);
                }
                let ahead = match queue.waiting.contains_key(ticket) {
                    true => queue.waiting.range(..ticket).count(),
                    false => queue.waiting.len(),
                };
                if queue.taken + ahead < capacity {
                    queue.taken += 1;
                    queue.waiting.remove(ticket);
                    return Some(SessionSlot { slots: Arc::clone(&slots) });
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let _ = tokio::time::timeout_at(deadline.min(now + QUEUE_POLL), freed).await;
        }
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

    #[test]
    fn a_crashed_attempt_counts_once_however_often_it_is_recorded() {
        let state = SigningState::default();
        assert_eq!(state.add_failure("r", &[], Some("s1")).crashes(), 1);
        assert_eq!(state.add_failure("r", &[], Some("s1")).crashes(), 1, "the same session again");
        assert_eq!(state.add_failure("r", &[], None).crashes(), 1, "a failure with every participant up");
        assert_eq!(state.add_failure("r", &[], Some("s2")).crashes(), 2);
        assert_eq!(state.add_failure("other", &[], Some("s1")).crashes(), 1, "per request");
        state.settle("r");
        assert_eq!(state.add_failure("r", &[], None).crashes(), 0, "forgotten once the request is over");
    }

    fn ticket(created: i64) -> Ticket {
        (created, format!("uid-{created}"))
    }

    #[tokio::test]
    async fn slots_are_per_cluster_and_taken_back_when_a_session_ends() {
        let state = SigningState::default();
        let wait = Duration::from_millis(50);
        let tickets: Vec<Ticket> = (0..5).map(ticket).collect();
        let held: Vec<_> =
            futures::future::join_all(tickets[..3].iter().map(|t| state.session_slot("a", 3, 2, t, wait))).await;
        assert!(held.iter().all(Option::is_some), "three sessions of a 2-of-3 cluster at once");
        assert!(state.session_slot("a", 3, 2, &tickets[3], wait).await.is_none(), "a fourth waits");
        assert!(
            state.session_slot("b", 3, 2, &tickets[4], wait).await.is_some(),
            "another cluster has slots of its own"
        );
        drop(held);
        assert!(state.session_slot("a", 3, 2, &tickets[3], wait).await.is_some(), "an ended session frees its slot");
    }

    #[tokio::test(start_paused = true)]
    async fn the_oldest_request_gets_the_next_slot_even_between_its_waits() {
        let state = SigningState::default();
        let wait = Duration::from_secs(20);
        // A 2-of-2 cluster: two sessions at once, both taken.
        let (first, second) = (
            state.session_slot("a", 2, 2, &ticket(1), wait).await,
            state.session_slot("a", 2, 2, &ticket(2), wait).await,
        );
        assert!(first.is_some() && second.is_some());
        // The old request waits its 20 s in vain and goes off to say so.
        assert!(state.session_slot("a", 2, 2, &ticket(10), wait).await.is_none());
        // A newer one is waiting when a slot comes free: it must not take
        // the old one's place, though the old one is not waiting just then.
        let newer = tokio::spawn({
            let state = Arc::new(state);
            let state2 = Arc::clone(&state);
            async move { (state2.session_slot("a", 2, 2, &ticket(20), Duration::from_secs(5)).await.is_some(), state) }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(first);
        let (newer_got_one, state) = newer.await.unwrap();
        assert!(!newer_got_one, "a newer request took the older one's slot");
        // The old one asks again and takes it.
        let old = state.session_slot("a", 2, 2, &ticket(10), wait).await;
        assert!(old.is_some(), "the oldest request gets the slot");
        // Both taken again; two more wait, the older one asks once only.
        assert!(state.session_slot("a", 2, 2, &ticket(20), Duration::from_millis(10)).await.is_none());
        assert!(state.session_slot("a", 2, 2, &ticket(5), Duration::from_millis(10)).await.is_none());
        drop(second);
        // A request that stops asking loses its place once its grace is
        // over: the slot is kept for it that long, not forever.
        let started = tokio::time::Instant::now();
        assert!(state.session_slot("a", 2, 2, &ticket(20), Duration::from_secs(60)).await.is_some());
        let waited = started.elapsed();
        assert!(waited >= TICKET_GRACE && waited <= TICKET_GRACE + QUEUE_POLL * 2, "waited {waited:?}");
    }
}
