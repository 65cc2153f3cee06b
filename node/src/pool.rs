//! Presignature pools: in memory only, never persisted, never logged.
//!
//! A presignature lets a signer set sign one message without the expensive
//! rounds of the protocol. It belongs to the exact set of signers that made
//! it, and using it for two messages leaks the key, so:
//!
//! - pools are kept per (key, derivation path, signer set) — a [`PoolId`] —
//!   the set as ascending party indices; a presignature is bound to its key,
//!   path and set before it is made, and serves no other;
//! - every presignature has a 32-byte id (the id of the session that made it,
//!   the same on every member of the set), by which all members find the same
//!   one;
//! - taking one removes it: [`Pools::take`] and [`Pools::take_oldest`] hand it
//!   over as a [`Taken`] exactly once, before any partial signature is issued,
//!   and nothing ever puts it back;
//! - a pool holds at most the configured number (the oldest goes), and all
//!   pools of a node together at most [`MAX_PRESIGNATURES`] (a new one is
//!   refused): keys × paths × signer sets × pool size can be large for a
//!   big cluster, and memory must stay bounded whatever the spec says.
//!
//! The pool holds any value (the node's is [`crate::engine::Presig`]) and
//! never looks inside it. Zeroization: the library's presignature does not
//! implement `Zeroize`, but its secret parts (k̃ and χ̃) are
//! `generic_ec::SecretScalar`s, heap-allocated behind an
//! `Arc<Zeroizing<Scalar>>` that wipes them when the last reference is
//! dropped. The pool never clones a presignature, so dropping one (taken and
//! discarded, evicted, or consumed by `issue_partial_signature`) wipes its
//! secrets. What cannot be wiped from here: the protocol state the library
//! keeps while generating one, and the stack temporaries of
//! `issue_partial_signature` (the library's own code). Γ, the public nonce
//! point, is not secret. Neither the presignature type nor the wrappers here
//! print their contents with `Debug`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use prometheus::{IntCounter, IntGaugeVec};
use torcus_contract::api::PresignaturePool;

/// Most presignatures one node holds over all its pools: a few MiB (one is
/// a point and two scalars, plus two points per signer of public data).
pub const MAX_PRESIGNATURES: usize = 4096;

/// What a pool is for: presignatures serve exactly one key, derivation path
/// and signer set.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PoolId {
    /// Key name.
    pub key: String,
    /// Derivation path (non-hardened indices; empty: the key itself).
    pub path: Vec<u32>,
    /// Signer set, ascending party indices.
    pub set: Vec<u16>,
}

impl PoolId {
    /// The pool of `key`, `path` and `set`.
    pub fn new(key: &str, path: &[u32], set: &[u16]) -> Self {
        Self { key: key.to_owned(), path: path.to_vec(), set: set.to_vec() }
    }
}

/// The presignature pools of one node.
pub struct Pools<P> {
    /// Presignatures kept per pool; 0 turns pools off.
    target: usize,
    /// Ordered, so listings are stable.
    inner: Mutex<BTreeMap<PoolId, Pool<P>>>,
    /// `torcus_presignature_pool_depth{key}`: the sum over the key's pools.
    depth: IntGaugeVec,
    /// Presignatures dropped unused (evicted, pruned, or taken for a session
    /// that then ran the full protocol or failed before signing).
    discarded: IntCounter,
}

struct Pool<P> {
    /// Oldest first.
    entries: VecDeque<([u8; 32], P)>,
    generated: u64,
    taken: u64,
}

impl<P> Default for Pool<P> {
    fn default() -> Self {
        Self { entries: VecDeque::new(), generated: 0, taken: 0 }
    }
}

impl<P> std::fmt::Debug for Pools<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Counts only: presignatures are secret.
        f.debug_struct("Pools").field("target", &self.target).field("pools", &self.snapshot()).finish()
    }
}

impl<P> Pools<P> {
    /// Empty pools of at most `target` presignatures each, reporting their
    /// depth per key to `depth` and what they drop unused to `discarded`.
    pub fn new(target: u16, depth: IntGaugeVec, discarded: IntCounter) -> Self {
        Self { target: usize::from(target), inner: Mutex::default(), depth, discarded }
    }

    /// Presignatures kept per pool; 0 when pools are off.
    pub fn target(&self) -> usize {
        self.target
    }

    /// Presignatures ready in pool `id`.
    pub fn depth(&self, id: &PoolId) -> usize {
        self.lock().get(id).map_or(0, |pool| pool.entries.len())
    }

    /// Ids of the presignatures ready in pool `id`, oldest first.
    pub fn ids(&self, id: &PoolId) -> Vec<[u8; 32]> {
        self.lock().get(id).map_or_else(Vec::new, |pool| pool.entries.iter().map(|(id, _)| *id).collect())
    }

    /// Whether every pool together holds [`MAX_PRESIGNATURES`]: nothing
    /// more is made until some are used.
    pub fn at_capacity(&self) -> bool {
        self.total(&self.lock()) >= MAX_PRESIGNATURES
    }

    /// Adds a freshly made presignature. When the pool is full the oldest
    /// one is dropped to make room. Returns false (and drops `presig`,
    /// counted as discarded) if the id is already in the pool, pools are
    /// off, or all pools together are at [`MAX_PRESIGNATURES`].
    pub fn insert(&self, id: &PoolId, presig_id: [u8; 32], presig: P) -> bool {
        if self.target == 0 {
            return false;
        }
        let mut inner = self.lock();
        let full = inner.get(id).is_some_and(|pool| pool.entries.len() >= self.target);
        if !full && self.total(&inner) >= MAX_PRESIGNATURES {
            self.discarded.inc();
            return false;
        }
        let pool = inner.entry(id.clone()).or_default();
        if pool.entries.iter().any(|(held, _)| *held == presig_id) {
            return false;
        }
        while pool.entries.len() >= self.target {
            pool.entries.pop_front();
            self.discarded.inc();
        }
        pool.entries.push_back((presig_id, presig));
        pool.generated += 1;
        self.update_depth(&inner, &id.key);
        true
    }

    /// Removes presignature `presig_id` of pool `id`, if held: from now on
    /// no other session can have it.
    pub fn take(&self, id: &PoolId, presig_id: &[u8; 32]) -> Option<Taken<P>> {
        self.take_where(id, |held| held == presig_id, false)
    }

    /// Removes the oldest presignature of pool `id`, if any.
    pub fn take_oldest(&self, id: &PoolId) -> Option<Taken<P>> {
        self.take_oldest_preferring(id, |_| true)
    }

    /// Removes the oldest presignature of pool `id` whose id `prefer`
    /// accepts, or else the oldest of all, if any.
    pub fn take_oldest_preferring(&self, id: &PoolId, prefer: impl Fn(&[u8; 32]) -> bool) -> Option<Taken<P>> {
        self.take_where(id, prefer, true)
    }

    fn take_where(&self, id: &PoolId, pick: impl Fn(&[u8; 32]) -> bool, or_oldest: bool) -> Option<Taken<P>> {
        let mut inner = self.lock();
        let pool = inner.get_mut(id)?;
        let position = match pool.entries.iter().position(|(held, _)| pick(held)) {
            Some(position) => position,
            None if or_oldest => 0,
            None => return None,
        };
        let (presig_id, presig) = pool.entries.remove(position)?;
        pool.taken += 1;
        self.update_depth(&inner, &id.key);
        Some(Taken { id: presig_id, presig: Some(presig), discarded: self.discarded.clone() })
    }

    /// Drops every presignature of pool `id` whose id is not in `keep`;
    /// returns how many went. Dropping is always safe: at worst a signing
    /// session runs the full protocol.
    pub fn retain(&self, id: &PoolId, keep: &[[u8; 32]]) -> usize {
        let mut inner = self.lock();
        let Some(pool) = inner.get_mut(id) else {
            return 0;
        };
        let before = pool.entries.len();
        pool.entries.retain(|(held, _)| keep.contains(held));
        let dropped = before - pool.entries.len();
        self.discarded.inc_by(dropped as u64);
        self.update_depth(&inner, &id.key);
        dropped
    }

    /// Every pool, for `GET /p2p/presignatures`.
    pub fn snapshot(&self) -> Vec<PresignaturePool> {
        self.lock()
            .iter()
            .map(|(id, pool)| PresignaturePool {
                key: id.key.clone(),
                path: id.path.clone(),
                participants: id.set.clone(),
                depth: u32::try_from(pool.entries.len()).unwrap_or(u32::MAX),
                ids: pool.entries.iter().map(|(id, _)| hex::encode(id)).collect(),
                generated: pool.generated,
                taken: pool.taken,
            })
            .collect()
    }

    fn total(&self, inner: &BTreeMap<PoolId, Pool<P>>) -> usize {
        inner.values().map(|pool| pool.entries.len()).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<PoolId, Pool<P>>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update_depth(&self, inner: &BTreeMap<PoolId, Pool<P>>, key: &str) {
        let total: usize = inner.iter().filter(|(id, _)| id.key == key).map(|(_, pool)| pool.entries.len()).sum();
        self.depth.with_label_values(&[key]).set(i64::try_from(total).unwrap_or(i64::MAX));
    }
}

/// A presignature taken out of its pool for one signing session. It is
/// either [consumed](Taken::consume) to issue one partial signature, or
/// dropped (and counted as discarded); it never goes back.
pub struct Taken<P> {
    id: [u8; 32],
    /// `Some` until consumed; `consume` takes `self`, so it runs once.
    presig: Option<P>,
    discarded: IntCounter,
}

impl<P> Taken<P> {
    /// The presignature's id.
    pub fn id(&self) -> [u8; 32] {
        self.id
    }

    /// Hands the presignature over to issue a partial signature.
    pub fn consume(mut self) -> P {
        // Invariant: `presig` is only emptied here, and this takes `self`.
        self.presig.take().expect("a taken presignature is consumed at most once")
    }
}

impl<P> Drop for Taken<P> {
    fn drop(&mut self) {
        if self.presig.take().is_some() {
            self.discarded.inc();
        }
    }
}

impl<P> std::fmt::Debug for Taken<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Taken").field("id", &hex::encode(self.id)).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use prometheus::Opts;

    use super::*;

    /// A presignature-shaped secret: the pool never looks inside.
    #[derive(Debug, PartialEq)]
    struct Secret(u64);

    fn pools(target: u16) -> (Pools<Secret>, IntGaugeVec, IntCounter) {
        let depth = IntGaugeVec::new(Opts::new("depth", "depth"), &["key"]).unwrap();
        let discarded = IntCounter::new("discarded", "discarded").unwrap();
        (Pools::new(target, depth.clone(), discarded.clone()), depth, discarded)
    }

    fn id(key: &str, path: &[u32], set: &[u16]) -> PoolId {
        PoolId::new(key, path, set)
    }

    #[test]
    fn take_removes_once() {
        let (pools, depth, _) = pools(4);
        let k01 = id("k", &[], &[0, 1]);
        assert!(pools.insert(&k01, [1; 32], Secret(1)));
        assert!(pools.insert(&k01, [2; 32], Secret(2)));
        assert!(!pools.insert(&k01, [2; 32], Secret(3)), "an id is held once");
        assert_eq!(pools.depth(&k01), 2);
        assert_eq!(depth.with_label_values(&["k"]).get(), 2);
        let taken = pools.take(&k01, &[2; 32]).expect("held");
        assert_eq!(taken.id(), [2; 32]);
        assert_eq!(taken.consume(), Secret(2));
        assert!(pools.take(&k01, &[2; 32]).is_none(), "gone after one take");
        assert_eq!(pools.ids(&k01), vec![[1; 32]]);
        assert_eq!(depth.with_label_values(&["k"]).get(), 1);
        let oldest = pools.take_oldest(&k01).expect("one left");
        assert_eq!(oldest.id(), [1; 32]);
        assert!(pools.take_oldest(&k01).is_none());
        assert!(pools.take(&k01, &[1; 32]).is_none());
        let snapshot = pools.snapshot();
        assert_eq!((snapshot[0].depth, snapshot[0].generated, snapshot[0].taken), (0, 2, 2));
    }

    #[test]
    fn bound_is_respected() {
        let (pools, _, discarded) = pools(2);
        let k02 = id("k", &[], &[0, 2]);
        for n in 1..=5u8 {
            assert!(pools.insert(&k02, [n; 32], Secret(u64::from(n))));
            assert!(pools.depth(&k02) <= 2);
        }
        assert_eq!(pools.ids(&k02), vec![[4; 32], [5; 32]], "the oldest go");
        assert_eq!(discarded.get(), 3);

        let (off, _, _) = super::tests::pools(0);
        assert!(!off.insert(&k02, [1; 32], Secret(1)));
        assert_eq!(off.depth(&k02), 0);
    }

    #[test]
    fn all_pools_together_are_bounded() {
        let (pools, _, discarded) = pools(64);
        let mut made = 0u32;
        'fill: for set in 0u16.. {
            for n in 0..64u32 {
                let mut presig_id = [0; 32];
                presig_id[..4].copy_from_slice(&made.to_be_bytes());
                if !pools.insert(&id("k", &[], &[set, set + 1]), presig_id, Secret(u64::from(n))) {
                    break 'fill;
                }
                made += 1;
            }
        }
        assert_eq!(made as usize, MAX_PRESIGNATURES);
        assert!(pools.at_capacity());
        assert_eq!(discarded.get(), 1, "the one refused");
        // A full pool still turns over: its oldest makes room.
        assert!(pools.insert(&id("k", &[], &[0, 1]), [0xff; 32], Secret(0)));
        drop(pools.take_oldest(&id("k", &[], &[1, 2])));
        assert!(!pools.at_capacity());
    }

    #[test]
    fn keys_paths_and_sets_are_distinct() {
        let (pools, depth, _) = pools(4);
        assert!(pools.insert(&id("k", &[], &[0, 1]), [1; 32], Secret(1)));
        assert!(pools.insert(&id("k", &[], &[1, 2]), [2; 32], Secret(2)));
        assert!(pools.insert(&id("other", &[], &[0, 1]), [3; 32], Secret(3)));
        assert!(pools.insert(&id("k", &[0, 7], &[0, 1]), [4; 32], Secret(4)));
        assert!(pools.take(&id("k", &[], &[0, 1]), &[2; 32]).is_none(), "another set's presignature");
        assert!(pools.take(&id("k", &[], &[0, 2]), &[1; 32]).is_none(), "no such set");
        assert!(pools.take(&id("other", &[], &[0, 1]), &[1; 32]).is_none(), "another key's presignature");
        assert!(pools.take(&id("k", &[0, 7], &[0, 1]), &[1; 32]).is_none(), "another path's presignature");
        assert!(pools.take(&id("k", &[0], &[0, 1]), &[4; 32]).is_none(), "a prefix of the path is another path");
        assert!(pools.take_oldest(&id("k", &[7], &[0, 1])).is_none(), "no pool for that path");
        assert!(pools.take(&id("missing", &[], &[0, 1]), &[1; 32]).is_none());
        assert_eq!(depth.with_label_values(&["k"]).get(), 3, "the gauge sums a key's pools");
        assert_eq!(depth.with_label_values(&["other"]).get(), 1);
        let listed: Vec<(String, Vec<u32>, Vec<u16>, u32)> =
            pools.snapshot().into_iter().map(|p| (p.key, p.path, p.participants, p.depth)).collect();
        assert_eq!(
            listed,
            vec![
                ("k".into(), vec![], vec![0, 1], 1),
                ("k".into(), vec![], vec![1, 2], 1),
                ("k".into(), vec![0, 7], vec![0, 1], 1),
                ("other".into(), vec![], vec![0, 1], 1),
            ]
        );
    }

    #[test]
    fn retain_and_discards_are_counted() {
        let (pools, _, discarded) = pools(4);
        let k01 = id("k", &[], &[0, 1]);
        for n in 1..=3u8 {
            pools.insert(&k01, [n; 32], Secret(u64::from(n)));
        }
        assert_eq!(pools.retain(&k01, &[[2; 32], [9; 32]]), 2);
        assert_eq!(pools.ids(&k01), vec![[2; 32]]);
        assert_eq!(pools.retain(&id("k", &[], &[5, 6]), &[]), 0);
        assert_eq!(discarded.get(), 2);
        // Taken and dropped unused: discarded; consumed: not.
        drop(pools.take_oldest(&k01));
        assert_eq!(discarded.get(), 3);
        pools.insert(&k01, [7; 32], Secret(7));
        let _presig = pools.take_oldest(&k01).expect("held").consume();
        assert_eq!(discarded.get(), 3);
    }

    #[test]
    fn preferred_ids_go_first() {
        let (pools, _, _) = pools(4);
        let k01 = id("k", &[], &[0, 1]);
        for n in 1..=3u8 {
            pools.insert(&k01, [n; 32], Secret(u64::from(n)));
        }
        assert_eq!(pools.take_oldest_preferring(&k01, |id| id[0] == 2).map(|t| t.id()), Some([2; 32]));
        assert_eq!(pools.take_oldest_preferring(&k01, |id| id[0] == 9).map(|t| t.id()), Some([1; 32]));
    }

    #[test]
    fn debug_shows_no_secret() {
        let (pools, _, _) = pools(4);
        let k01 = id("k", &[], &[0, 1]);
        pools.insert(&k01, [1; 32], Secret(41));
        let text = format!("{pools:?} {:?}", pools.take(&k01, &[1; 32]).expect("held"));
        assert!(text.contains("depth") && text.contains(&hex::encode([1u8; 32])), "{text}");
        assert!(!text.contains("Secret") && !text.contains("41"), "{text}");
    }
}
