//! Presignature pools: in memory only, never persisted, never logged.
//!
//! A presignature lets a signer set sign one message without the expensive
//! rounds of the protocol. It belongs to the exact set of signers that made
//! it, and using it for two messages leaks the key, so:
//!
//! - pools are kept per (key, signer set), the set as ascending party indices;
//! - every presignature has a 32-byte id (the id of the session that made it,
//!   the same on every member of the set), by which all members find the same
//!   one;
//! - taking one removes it: [`Pools::take`] and [`Pools::take_oldest`] hand it
//!   over as a [`Taken`] exactly once, before any partial signature is issued,
//!   and nothing ever puts it back;
//! - a pool holds at most the configured number per set (the oldest goes).
//!
//! Zeroization: `cggmp21::Presignature` does not implement `Zeroize`, but its
//! secret parts (k and χ) are `generic_ec::SecretScalar`s, heap-allocated
//! behind an `Arc<Zeroizing<Scalar>>` that wipes them when the last reference
//! is dropped. The pool never clones a presignature, so dropping one (taken
//! and discarded, evicted, or consumed by `issue_partial_signature`) wipes its
//! secrets. What cannot be wiped from here: the protocol state the library
//! keeps while generating one, and the stack temporaries of
//! `issue_partial_signature` and `set_derivation_path` (the library's own
//! code). R, the public nonce point, is not secret. Neither the presignature
//! type nor the wrappers here print their contents with `Debug`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use prometheus::{IntCounter, IntGaugeVec};
use torcus_contract::api::PresignaturePool;

use crate::engine::Presig;

/// The presignature pools of one node.
pub struct Pools {
    /// Presignatures kept per (key, signer set); 0 turns pools off.
    target: usize,
    /// Key → signer set → pool. Ordered, so listings are stable.
    inner: Mutex<BTreeMap<String, BTreeMap<Vec<u16>, Pool>>>,
    /// `torcus_presignature_pool_depth{key}`: the sum over the key's sets.
    depth: IntGaugeVec,
    /// Presignatures dropped unused (evicted, pruned, or taken for a session
    /// that then ran the full protocol or failed before signing).
    discarded: IntCounter,
}

#[derive(Default)]
struct Pool {
    /// Oldest first.
    entries: VecDeque<([u8; 32], Presig)>,
    generated: u64,
    taken: u64,
}

impl std::fmt::Debug for Pools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Counts only: presignatures are secret.
        f.debug_struct("Pools").field("target", &self.target).field("pools", &self.snapshot()).finish()
    }
}

impl Pools {
    /// Empty pools of at most `target` presignatures per (key, signer set),
    /// reporting their depth per key to `depth` and what they drop unused
    /// to `discarded`.
    pub fn new(target: u16, depth: IntGaugeVec, discarded: IntCounter) -> Self {
        Self { target: usize::from(target), inner: Mutex::default(), depth, discarded }
    }

    /// Presignatures kept per (key, signer set); 0 when pools are off.
    pub fn target(&self) -> usize {
        self.target
    }

    /// Presignatures ready for `key` and the signer set `set` (ascending).
    pub fn depth(&self, key: &str, set: &[u16]) -> usize {
        self.lock().get(key).and_then(|sets| sets.get(set)).map_or(0, |pool| pool.entries.len())
    }

    /// Ids of the presignatures ready for `key` and `set`, oldest first.
    pub fn ids(&self, key: &str, set: &[u16]) -> Vec<[u8; 32]> {
        self.lock()
            .get(key)
            .and_then(|sets| sets.get(set))
            .map_or_else(Vec::new, |pool| pool.entries.iter().map(|(id, _)| *id).collect())
    }

    /// Adds a freshly made presignature. When the pool is full the oldest
    /// one is dropped to make room. Returns false (and drops `presig`) if the
    /// id is already in the pool or pools are off.
    pub fn insert(&self, key: &str, set: &[u16], id: [u8; 32], presig: Presig) -> bool {
        if self.target == 0 {
            return false;
        }
        let mut inner = self.lock();
        let pool = inner.entry(key.to_owned()).or_default().entry(set.to_vec()).or_default();
        if pool.entries.iter().any(|(held, _)| *held == id) {
            return false;
        }
        while pool.entries.len() >= self.target {
            pool.entries.pop_front();
            self.discarded.inc();
        }
        pool.entries.push_back((id, presig));
        pool.generated += 1;
        self.update_depth(&inner, key);
        true
    }

    /// Removes presignature `id` of `key` and `set`, if held: from now on no
    /// other session can have it.
    pub fn take(&self, key: &str, set: &[u16], id: &[u8; 32]) -> Option<Taken> {
        let mut inner = self.lock();
        let pool = inner.get_mut(key)?.get_mut(set)?;
        let position = pool.entries.iter().position(|(held, _)| held == id)?;
        let (id, presig) = pool.entries.remove(position)?;
        pool.taken += 1;
        self.update_depth(&inner, key);
        Some(Taken { id, presig: Some(presig), discarded: self.discarded.clone() })
    }

    /// Removes the oldest presignature of `key` and `set`, if any.
    pub fn take_oldest(&self, key: &str, set: &[u16]) -> Option<Taken> {
        self.take_oldest_preferring(key, set, |_| true)
    }

    /// Removes the oldest presignature of `key` and `set` whose id `prefer`
    /// accepts, or else the oldest of all, if any.
    pub fn take_oldest_preferring(&self, key: &str, set: &[u16], prefer: impl Fn(&[u8; 32]) -> bool) -> Option<Taken> {
        let mut inner = self.lock();
        let pool = inner.get_mut(key)?.get_mut(set)?;
        let position = pool.entries.iter().position(|(id, _)| prefer(id)).unwrap_or(0);
        let (id, presig) = pool.entries.remove(position)?;
        pool.taken += 1;
        self.update_depth(&inner, key);
        Some(Taken { id, presig: Some(presig), discarded: self.discarded.clone() })
    }

    /// Drops every presignature of `key` and `set` whose id is not in
    /// `keep`; returns how many went. Dropping is always safe: at worst a
    /// signing session runs the full protocol.
    pub fn retain(&self, key: &str, set: &[u16], keep: &[[u8; 32]]) -> usize {
        let mut inner = self.lock();
        let Some(pool) = inner.get_mut(key).and_then(|sets| sets.get_mut(set)) else {
            return 0;
        };
        let before = pool.entries.len();
        pool.entries.retain(|(id, _)| keep.contains(id));
        let dropped = before - pool.entries.len();
        self.discarded.inc_by(dropped as u64);
        self.update_depth(&inner, key);
        dropped
    }

    /// Every pool, for `GET /p2p/presignatures`.
    pub fn snapshot(&self) -> Vec<PresignaturePool> {
        let inner = self.lock();
        inner
            .iter()
            .flat_map(|(key, sets)| {
                sets.iter().map(move |(set, pool)| PresignaturePool {
                    key: key.clone(),
                    participants: set.clone(),
                    depth: u32::try_from(pool.entries.len()).unwrap_or(u32::MAX),
                    ids: pool.entries.iter().map(|(id, _)| hex::encode(id)).collect(),
                    generated: pool.generated,
                    taken: pool.taken,
                })
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, BTreeMap<Vec<u16>, Pool>>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update_depth(&self, inner: &BTreeMap<String, BTreeMap<Vec<u16>, Pool>>, key: &str) {
        let total: usize = inner.get(key).map_or(0, |sets| sets.values().map(|pool| pool.entries.len()).sum());
        self.depth.with_label_values(&[key]).set(i64::try_from(total).unwrap_or(i64::MAX));
    }
}

/// A presignature taken out of its pool for one signing session. It is
/// either [consumed](Taken::consume) to issue one partial signature, or
/// dropped (and counted as discarded); it never goes back.
pub struct Taken {
    id: [u8; 32],
    /// `Some` until consumed; `consume` takes `self`, so it runs once.
    presig: Option<Presig>,
    discarded: IntCounter,
}

impl Taken {
    /// The presignature's id.
    pub fn id(&self) -> [u8; 32] {
        self.id
    }

    /// Hands the presignature over to issue a partial signature.
    pub fn consume(mut self) -> Presig {
        // Invariant: `presig` is only emptied here, and this takes `self`.
        self.presig.take().expect("a taken presignature is consumed at most once")
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        if self.presig.take().is_some() {
            self.discarded.inc();
        }
    }
}

impl std::fmt::Debug for Taken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Taken").field("id", &hex::encode(self.id)).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use cggmp21::generic_ec::{NonZero, Point, Scalar, SecretScalar};
    use prometheus::Opts;

    use super::*;

    /// A presignature-shaped value (not from a protocol run: the pool never
    /// looks inside).
    fn presig(seed: u64) -> Presig {
        let mut k = Scalar::from(seed + 1);
        let mut chi = Scalar::from(seed + 2);
        let r = NonZero::from_point(Point::generator() * Scalar::from(seed + 3)).expect("non-zero");
        Presig { R: r, k: SecretScalar::new(&mut k), chi: SecretScalar::new(&mut chi) }
    }

    fn pools(target: u16) -> (Pools, IntGaugeVec, IntCounter) {
        let depth = IntGaugeVec::new(Opts::new("depth", "depth"), &["key"]).unwrap();
        let discarded = IntCounter::new("discarded", "discarded").unwrap();
        (Pools::new(target, depth.clone(), discarded.clone()), depth, discarded)
    }

    #[test]
    fn take_removes_once() {
        let (pools, depth, _) = pools(4);
        assert!(pools.insert("k", &[0, 1], [1; 32], presig(1)));
        assert!(pools.insert("k", &[0, 1], [2; 32], presig(2)));
        assert!(!pools.insert("k", &[0, 1], [2; 32], presig(3)), "an id is held once");
        assert_eq!(pools.depth("k", &[0, 1]), 2);
        assert_eq!(depth.with_label_values(&["k"]).get(), 2);
        let taken = pools.take("k", &[0, 1], &[2; 32]).expect("held");
        assert_eq!(taken.id(), [2; 32]);
        assert!(pools.take("k", &[0, 1], &[2; 32]).is_none(), "gone after one take");
        assert_eq!(pools.ids("k", &[0, 1]), vec![[1; 32]]);
        assert_eq!(depth.with_label_values(&["k"]).get(), 1);
        let oldest = pools.take_oldest("k", &[0, 1]).expect("one left");
        assert_eq!(oldest.id(), [1; 32]);
        assert!(pools.take_oldest("k", &[0, 1]).is_none());
        assert!(pools.take("k", &[0, 1], &[1; 32]).is_none());
        let snapshot = pools.snapshot();
        assert_eq!((snapshot[0].depth, snapshot[0].generated, snapshot[0].taken), (0, 2, 2));
    }

    #[test]
    fn bound_is_respected() {
        let (pools, _, discarded) = pools(2);
        for id in 1..=5u8 {
            assert!(pools.insert("k", &[0, 2], [id; 32], presig(u64::from(id))));
            assert!(pools.depth("k", &[0, 2]) <= 2);
        }
        assert_eq!(pools.ids("k", &[0, 2]), vec![[4; 32], [5; 32]], "the oldest go");
        assert_eq!(discarded.get(), 3);

        let (off, _, _) = super::tests::pools(0);
        assert!(!off.insert("k", &[0, 2], [1; 32], presig(1)));
        assert_eq!(off.depth("k", &[0, 2]), 0);
    }

    #[test]
    fn sets_and_keys_are_distinct() {
        let (pools, depth, _) = pools(4);
        assert!(pools.insert("k", &[0, 1], [1; 32], presig(1)));
        assert!(pools.insert("k", &[1, 2], [2; 32], presig(2)));
        assert!(pools.insert("other", &[0, 1], [3; 32], presig(3)));
        assert!(pools.take("k", &[0, 1], &[2; 32]).is_none(), "another set's presignature");
        assert!(pools.take("k", &[0, 2], &[1; 32]).is_none(), "no such set");
        assert!(pools.take("other", &[0, 1], &[1; 32]).is_none(), "another key's presignature");
        assert!(pools.take("missing", &[0, 1], &[1; 32]).is_none());
        assert_eq!(depth.with_label_values(&["k"]).get(), 2, "the gauge sums a key's sets");
        assert_eq!(depth.with_label_values(&["other"]).get(), 1);
        let listed: Vec<(String, Vec<u16>, u32)> =
            pools.snapshot().into_iter().map(|p| (p.key, p.participants, p.depth)).collect();
        assert_eq!(
            listed,
            vec![("k".into(), vec![0, 1], 1), ("k".into(), vec![1, 2], 1), ("other".into(), vec![0, 1], 1)]
        );
    }

    #[test]
    fn retain_and_discards_are_counted() {
        let (pools, _, discarded) = pools(4);
        for id in 1..=3u8 {
            pools.insert("k", &[0, 1], [id; 32], presig(u64::from(id)));
        }
        assert_eq!(pools.retain("k", &[0, 1], &[[2; 32], [9; 32]]), 2);
        assert_eq!(pools.ids("k", &[0, 1]), vec![[2; 32]]);
        assert_eq!(pools.retain("k", &[5, 6], &[]), 0);
        assert_eq!(discarded.get(), 2);
        // Taken and dropped unused: discarded; consumed: not.
        drop(pools.take_oldest("k", &[0, 1]));
        assert_eq!(discarded.get(), 3);
        pools.insert("k", &[0, 1], [7; 32], presig(7));
        let _presig = pools.take_oldest("k", &[0, 1]).expect("held").consume();
        assert_eq!(discarded.get(), 3);
    }

    #[test]
    fn debug_shows_no_secret() {
        let (pools, _, _) = pools(4);
        pools.insert("k", &[0, 1], [1; 32], presig(41));
        let text = format!("{pools:?} {:?}", pools.take("k", &[0, 1], &[1; 32]).expect("held"));
        assert!(text.contains("depth") && text.contains(&hex::encode([1u8; 32])), "{text}");
        let secret = presig(41);
        let k = hex::encode(secret.k.as_ref().to_be_bytes());
        assert!(!text.contains(&k), "{text}");
    }
}
