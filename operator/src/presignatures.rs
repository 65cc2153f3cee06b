//! The operator's view of the nodes' presignature pools, and one
//! presignature reserved per signing session.
//!
//! A presignature can serve one session only, only among the signer set
//! that made it, only for the key and derivation path it was made for, and
//! only for a payload the nodes hash themselves; pools are tracked per
//! `namespace/cluster/key/path` ([`pool_id`]). When several requests of one signer set are signed at
//! once, each session's initiator must offer a different one, or all but
//! one of them fall back to the full protocol (hundreds of times slower).
//! The nodes cannot agree on that among themselves without another round
//! trip; the operator, which issues every grant, can: it hands each session
//! the id of a presignature that every member of its set holds and that no
//! other session was given (`PresignatureChoice::Id`), or tells the
//! initiator to offer none (`PresignatureChoice::None`) when no set has a
//! free one left.
//!
//! The view is refreshed from `GET /p2p/presignatures` at most every
//! [`REFRESH_AFTER`], in the background once a first view exists, so that
//! asking nodes busy presigning never holds up a signature. A reserved id
//! is never handed out again (it stays reserved for [`RESERVED_FOR`], far
//! longer than a grant lives, whatever a late answer from a node reports).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use torcus_contract::api::PresignaturePools;

use crate::node_client::{NodeAddr, NodeClient};

/// How long a view of the pools is taken as current.
pub const REFRESH_AFTER: Duration = Duration::from_millis(250);
/// How long a reserved id stays reserved: longer than a signing grant
/// lives, after which a presignature still in a pool was not used.
pub const RESERVED_FOR: Duration = Duration::from_secs(2 * crate::grants::SIGN_GRANT_TTL_SECS);

/// Presignature ids every member of a signer set holds, oldest first.
pub type Reported = BTreeMap<Vec<u16>, Vec<String>>;

/// The id under which the pools of `key` at `path` of cluster
/// `namespace/cluster` are tracked: `namespace/cluster/key/m/…`.
pub fn pool_id(namespace: &str, cluster: &str, key: &str, path: &[u32]) -> String {
    let mut id = format!("{namespace}/{cluster}/{key}/m");
    for index in path {
        id.push_str(&format!("/{index}"));
    }
    id
}

/// The pools of every `namespace/cluster/key/path` the operator signs with.
#[derive(Debug, Default)]
pub struct Presignatures {
    views: Mutex<HashMap<String, View>>,
}

#[derive(Debug, Default)]
struct View {
    /// When the nodes last answered, or when a refresh was last started.
    refreshed: Option<Instant>,
    /// Per signer set, ids every member holds that no session was given.
    free: BTreeMap<Vec<u16>, VecDeque<String>>,
    /// Ids given to sessions, and when.
    reserved: HashMap<String, Instant>,
}

/// Whether a pool's view should be refreshed before it is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// There is none yet: ask the nodes now.
    Missing,
    /// There is one, but it is old: use it, and refresh it in the
    /// background (this caller is the one to do it).
    Stale,
    /// Current.
    Fresh,
}

impl Presignatures {
    /// How current the view of `pool` is. A stale view is marked as being
    /// refreshed, so that only one caller refreshes it at a time.
    pub fn freshness(&self, pool: &str) -> Freshness {
        let mut views = self.lock();
        let view = views.entry(pool.to_owned()).or_default();
        match view.refreshed {
            None => Freshness::Missing,
            Some(at) if at.elapsed() >= REFRESH_AFTER => {
                view.refreshed = Some(Instant::now());
                Freshness::Stale
            }
            Some(_) => Freshness::Fresh,
        }
    }

    /// Takes in what the nodes reported for `pool`; ids already reserved
    /// stay out of it.
    pub fn update(&self, pool: &str, reported: Reported) {
        let mut views = self.lock();
        let view = views.entry(pool.to_owned()).or_default();
        view.reserved.retain(|_, at| at.elapsed() < RESERVED_FOR);
        let reserved = &view.reserved;
        view.free = reported
            .into_iter()
            .map(|(set, ids)| (set, ids.into_iter().filter(|id| !reserved.contains_key(id)).collect()))
            .collect();
        view.refreshed = Some(Instant::now());
    }

    /// Reserves, for one session, the oldest free presignature of the
    /// signer set of `pool` that has most free, among the sets of
    /// `threshold` parties all in `healthy`; `None` when no such set has one.
    ///
    /// Choosing and reserving are one step: sessions decided at the same
    /// time spread over the warm sets instead of all picking the warmest.
    pub fn reserve(&self, pool: &str, healthy: &[u16], threshold: u16) -> Option<(Vec<u16>, String)> {
        self.reserve_apart(pool, healthy, threshold, &[])
    }

    /// [`Self::reserve`], among the sets without a pair of `disputes` in them.
    pub fn reserve_apart(
        &self,
        pool: &str,
        healthy: &[u16],
        threshold: u16,
        disputes: &[crate::signers::Dispute],
    ) -> Option<(Vec<u16>, String)> {
        let mut views = self.lock();
        let view = views.get_mut(pool)?;
        let (set, ids) = view
            .free
            .iter_mut()
            .filter(|(set, ids)| {
                !ids.is_empty()
                    && set.len() == usize::from(threshold)
                    && set.iter().all(|i| healthy.contains(i))
                    && crate::signers::apart(set, disputes)
            })
            .max_by_key(|(set, ids)| (ids.len(), std::cmp::Reverse(*set)))?;
        let id = ids.pop_front()?;
        let set = set.clone();
        view.reserved.insert(id.clone(), Instant::now());
        Some((set, id))
    }

    /// Forgets the pools of a cluster (`namespace/cluster/`) that is gone.
    pub fn forget_cluster(&self, prefix: &str) {
        self.lock().retain(|pool, _| !pool.starts_with(prefix));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, View>> {
        self.views.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Asks every node of `nodes` (party, API URL) for its pools and keeps,
/// per signer set of `key` at `path`, the ids every member reports (see
/// [`tally`]). A node that does not answer makes its sets cold. Returns
/// the reports refused as well, to be counted.
pub async fn fetch(client: &NodeClient, nodes: &[(u16, NodeAddr)], key: &str, path: &[u32]) -> (Reported, u64) {
    let answers = futures::future::join_all(
        nodes
            .iter()
            .map(|(party, url)| async move { client.presignatures(url).await.ok().map(|pools| (*party, pools)) }),
    )
    .await;
    tally(answers.into_iter().flatten(), key, path)
}

/// Per signer set of `key` at `path`, the ids that every member of the set
/// reported (in the first member's order, which is oldest first), from
/// `(party, what that party's node answered)`. A node speaks only for
/// itself: a report for a set the reporting party is not in, or a second
/// report for the same set, is refused (and counted in the second value),
/// so that one node can neither make a set look warm nor outvote another.
pub fn tally(answers: impl IntoIterator<Item = (u16, PresignaturePools)>, key: &str, path: &[u32]) -> (Reported, u64) {
    let mut votes: BTreeMap<Vec<u16>, BTreeMap<u16, Vec<String>>> = BTreeMap::new();
    let mut refused = 0;
    for (party, pools) in answers {
        for pool in pools.pools.into_iter().filter(|p| p.key == key && p.path == path) {
            let ascending = pool.participants.windows(2).all(|w| w[0] < w[1]);
            if !ascending || !pool.participants.contains(&party) {
                refused += 1;
                continue;
            }
            match votes.entry(pool.participants).or_default().entry(party) {
                std::collections::btree_map::Entry::Vacant(vote) => {
                    vote.insert(pool.ids);
                }
                std::collections::btree_map::Entry::Occupied(_) => refused += 1,
            }
        }
    }
    let reported = votes
        .into_iter()
        .filter(|(set, members)| members.len() == set.len())
        .map(|(set, members)| {
            let mut lists = members.into_values();
            let mut ids = lists.next().unwrap_or_default();
            for other in lists {
                ids.retain(|id| other.contains(id));
            }
            (set, ids)
        })
        .collect();
    (reported, refused)
}

#[cfg(test)]
mod tests {
    use torcus_contract::api::PresignaturePool;

    use super::*;

    const POOL: &str = "ns/c/k";

    fn ids(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i}")).collect()
    }

    fn reserve_n(p: &Presignatures, healthy: &[u16], n: usize) -> Vec<(Vec<u16>, String)> {
        (0..n).filter_map(|_| p.reserve(POOL, healthy, 2)).collect()
    }

    #[test]
    fn concurrent_sessions_get_different_presignatures_spread_over_the_sets() {
        let p = Presignatures::default();
        p.update(POOL, [(vec![0, 1], ids("a", 2)), (vec![0, 2], ids("b", 3)), (vec![1, 2], ids("c", 2))].into());
        let given = reserve_n(&p, &[0, 1, 2], 8);
        let sets: Vec<&[u16]> = given.iter().map(|(set, _)| set.as_slice()).collect();
        // The set with most free first; ties go to the lower set.
        assert_eq!(sets, [&[0, 2][..], &[0, 1], &[0, 2], &[1, 2], &[0, 1], &[0, 2], &[1, 2]]);
        let mut all: Vec<&String> = given.iter().map(|(_, id)| id).collect();
        assert_eq!(all[..2], [&"b0".to_owned(), &"a0".to_owned()], "oldest first");
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 7, "each id once, and no more than were reported");
        assert_eq!(p.reserve("ns/other/k", &[0, 1, 2], 2), None, "a pool never seen");
    }

    #[test]
    fn only_healthy_sets_of_the_threshold_are_used() {
        let p = Presignatures::default();
        p.update(POOL, [(vec![0, 1], ids("a", 1)), (vec![0, 2], ids("b", 3)), (vec![0, 1, 2], ids("d", 5))].into());
        assert_eq!(reserve_n(&p, &[0, 1], 3), [(vec![0, 1], "a0".to_owned())], "node 2 is not healthy");
    }

    #[test]
    fn a_late_report_never_frees_a_reserved_presignature() {
        let p = Presignatures::default();
        p.update(POOL, [(vec![0, 1], ids("a", 2))].into());
        assert_eq!(p.reserve(POOL, &[0, 1], 2), Some((vec![0, 1], "a0".into())));
        // The nodes still hold a0 (its session has not taken it yet) and
        // have made a2 since.
        p.update(POOL, [(vec![0, 1], vec!["a0".into(), "a1".into(), "a2".into()])].into());
        let ids: Vec<String> = reserve_n(&p, &[0, 1], 3).into_iter().map(|(_, id)| id).collect();
        assert_eq!(ids, ["a1", "a2"]);
    }

    fn answer(pools: &[(&[u16], &[&str])]) -> PresignaturePools {
        PresignaturePools {
            pools: pools
                .iter()
                .map(|(set, ids)| PresignaturePool {
                    key: "k".into(),
                    participants: set.to_vec(),
                    ids: ids.iter().map(|id| (*id).to_owned()).collect(),
                    ..PresignaturePool::default()
                })
                .collect(),
        }
    }

    #[test]
    fn a_node_speaks_only_for_itself_and_once() {
        let honest_0 = answer(&[(&[0, 1], &["a", "b"]), (&[0, 2], &["c"])]);
        let honest_1 = answer(&[(&[0, 1], &["a", "b"])]);
        // Node 2 claims set {0, 1}, which it is not in, twice over, sets
        // out of order, and reports {0, 2} twice to outvote node 0.
        let hostile_2 = answer(&[
            (&[0, 1], &["a", "b", "x"]),
            (&[0, 1], &["y"]),
            (&[2, 0], &["c"]),
            (&[0, 2], &["c", "z"]),
            (&[0, 2], &["c", "z"]),
        ]);
        let (reported, refused) = tally([(0, honest_0), (1, honest_1), (2, hostile_2)], "k", &[]);
        assert_eq!(refused, 4);
        assert_eq!(reported.get(&vec![0, 1]), Some(&vec!["a".to_owned(), "b".to_owned()]));
        assert_eq!(reported.get(&vec![0, 2]), Some(&vec!["c".to_owned()]), "only what both members hold");
        assert_eq!(reported.len(), 2);

        // Without node 1's own report, {0, 1} is cold whatever node 2 says.
        let (reported, _) =
            tally([(0, answer(&[(&[0, 1], &["a"])])), (2, answer(&[(&[0, 1], &["a"]), (&[0, 1], &["a"])]))], "k", &[]);
        assert!(reported.is_empty(), "{reported:?}");
    }

    #[test]
    fn pool_ids_name_the_path() {
        assert_eq!(pool_id("ns", "c", "k", &[]), "ns/c/k/m");
        assert_eq!(pool_id("ns", "c", "k", &[44, 60, 0]), "ns/c/k/m/44/60/0");
        assert_ne!(pool_id("ns", "c", "k", &[1, 2]), pool_id("ns", "c", "k", &[12]));
        p_forgets_every_path_of_a_cluster();
    }

    fn p_forgets_every_path_of_a_cluster() {
        let p = Presignatures::default();
        for path in [&[][..], &[7]] {
            p.update(&pool_id("ns", "c", "k", path), [(vec![0, 1], ids("a", 1))].into());
        }
        p.forget_cluster("ns/c/");
        assert_eq!(p.reserve(&pool_id("ns", "c", "k", &[7]), &[0, 1], 2), None);
        assert_eq!(p.reserve(&pool_id("ns", "c", "k", &[]), &[0, 1], 2), None);
    }

    #[test]
    fn only_one_caller_refreshes_a_stale_view() {
        let p = Presignatures::default();
        assert_eq!(p.freshness(POOL), Freshness::Missing);
        p.update(POOL, Reported::new());
        assert_eq!(p.freshness(POOL), Freshness::Fresh);
        std::thread::sleep(REFRESH_AFTER);
        assert_eq!(p.freshness(POOL), Freshness::Stale);
        assert_eq!(p.freshness(POOL), Freshness::Fresh, "the first caller refreshes it");
        p.forget_cluster("ns/c/");
        assert_eq!(p.freshness(POOL), Freshness::Missing);
    }
}
