//! The raw `cggmp24` library with no Torcus around it, for benchmarks to
//! print beside what they measure of Torcus (test-util builds only).
//!
//! Two ways to run the parties, measuring two different things:
//!
//! - [`Layout::Threads`]: each party on an OS thread of its own, connected by
//!   the library's in-memory network (no serialization, no sockets). With
//!   enough cores this is the protocol's latency floor: parties compute in
//!   parallel, as nodes do. The baseline a node's latency is held against.
//! - [`Layout::OneTask`]: every party in one task (`round_based::sim`), one
//!   after another: the protocol's total CPU cost, not a latency.

use std::time::{Duration, Instant};

use cggmp24::ExecutionId;
use cggmp24::round_based::sim::async_env;
use rand_core::OsRng;
use torcus_contract::HashAlgorithm;

use super::{Aux, Curve, Payload, Primes, Share};

/// How the parties of a raw run are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Each party on its own OS thread: latency.
    Threads,
    /// All parties in one task, one after another: CPU cost.
    OneTask,
}

impl Layout {
    /// How a table names it.
    pub fn label(self) -> &'static str {
        match self {
            Self::Threads => "party per thread (latency)",
            Self::OneTask => "parties in one task (CPU cost)",
        }
    }
}

/// Runs `party(i, mpc)` for every `i` in `0..n` as `layout` says, and
/// returns the outputs in party order with the wall time of the whole run.
fn run<M, F, Fut, O>(layout: Layout, n: u16, party: F) -> (Vec<O>, Duration)
where
    M: Clone + Send + Unpin + 'static,
    F: Fn(u16, cggmp24::round_based::MpcParty<M, async_env::MockedDelivery<M>>) -> Fut + Send + Sync,
    Fut: Future<Output = O> + Send,
    O: Send,
{
    let started = Instant::now();
    let outputs = match layout {
        Layout::OneTask => {
            let runtime =
                tokio::runtime::Builder::new_current_thread().build().expect("a current-thread runtime builds");
            runtime.block_on(async { async_env::run(n, &party).await.into_vec() })
        }
        Layout::Threads => {
            let mut network = async_env::Network::<M>::new();
            let parties: Vec<_> = (0..n).map(|_| network.add_party()).collect();
            std::thread::scope(|scope| {
                let handles: Vec<_> = parties
                    .into_iter()
                    .enumerate()
                    .map(|(i, p)| {
                        let party = &party;
                        // Party indices fit in u16: `n` is one.
                        scope.spawn(move || futures::executor::block_on(party(i as u16, p)))
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().expect("a party thread panicked")).collect()
            })
        }
    };
    (outputs, started.elapsed())
}

/// Aux info for `n` parties from `primes`, timed.
pub fn aux_info(layout: Layout, n: u16, primes: &[Primes], tag: &str) -> (Vec<Aux>, Duration) {
    let eid = format!("raw-aux-{tag}");
    let (out, took) = run(layout, n, |i, party| {
        let primes = primes[usize::from(i)].clone();
        let eid = eid.clone();
        async move {
            cggmp24::aux_info_gen(ExecutionId::new(eid.as_bytes()), i, n, primes)
                .enforce_reliable_broadcast(true)
                .precompute_multiexp_tables(true)
                .start(&mut OsRng, party)
                .await
                .expect("raw aux info")
        }
    });
    (out, took)
}

/// Aux info for `n` parties from `primes`, each party on its own thread,
/// without multi-exponentiation tables: what the aux info test fixture
/// (`engine::AuxFixture`) holds.
pub fn aux_info_for_fixture(n: u16, primes: &[Primes]) -> Vec<Aux> {
    let (out, _) = run(Layout::Threads, n, |i, party| {
        let primes = primes[usize::from(i)].clone();
        async move {
            cggmp24::aux_info_gen(ExecutionId::new(b"torcus-test-aux-fixture"), i, n, primes)
                .enforce_reliable_broadcast(true)
                .start(&mut OsRng, party)
                .await
                .expect("raw aux info")
        }
    });
    out
}

/// Threshold keygen of `t` of `n`, completed with `aux`, timed.
pub fn keygen(layout: Layout, n: u16, t: u16, aux: &[Aux], tag: &str) -> (Vec<Share>, Duration) {
    let eid = format!("raw-keygen-{tag}");
    let (cores, took) = run(layout, n, |i, party| {
        let eid = eid.clone();
        async move {
            cggmp24::keygen::<Curve>(ExecutionId::new(eid.as_bytes()), i, n)
                .set_threshold(t)
                .hd_wallet(true)
                .enforce_reliable_broadcast(true)
                .start(&mut OsRng, party)
                .await
                .expect("raw keygen")
        }
    });
    let shares = cores.into_iter().zip(aux).map(|(c, a)| super::complete(c, a.clone()).expect("share")).collect();
    (shares, took)
}

/// One full signing by `signers` (keygen indices) of a SHA-256 payload, timed.
pub fn sign(layout: Layout, shares: &[Share], signers: &[u16], tag: &str) -> Duration {
    let eid = format!("raw-sign-{tag}");
    let t = signers.len() as u16;
    let payload = Payload { hash: HashAlgorithm::Sha256, bytes: b"raw library baseline" };
    let (_, took) = run(layout, t, |j, party| {
        let (eid, share) = (eid.clone(), &shares[usize::from(signers[usize::from(j)])]);
        async move {
            cggmp24::signing(ExecutionId::new(eid.as_bytes()), j, signers, share)
                .enforce_reliable_broadcast(true)
                .sign(&mut OsRng, party, &payload.data_to_sign())
                .await
                .expect("raw signing")
        }
    });
    took
}

/// One presignature for `signers`, timed, and then the time to sign a
/// payload with it (partial signatures issued and combined in this thread).
pub fn presign_and_sign(layout: Layout, shares: &[Share], signers: &[u16], tag: &str) -> (Duration, Duration) {
    let eid = format!("raw-presign-{tag}");
    let t = signers.len() as u16;
    let (presigs, presign_took) = run(layout, t, |j, party| {
        let (eid, share) = (eid.clone(), &shares[usize::from(signers[usize::from(j)])]);
        async move {
            cggmp24::signing(ExecutionId::new(eid.as_bytes()), j, signers, share)
                .enforce_reliable_broadcast(true)
                .generate_presignature(&mut OsRng, party)
                .await
                .expect("raw presigning")
        }
    });
    let payload = Payload { hash: HashAlgorithm::Sha256, bytes: b"raw library baseline" };
    let started = Instant::now();
    let public = presigs[0].1.clone();
    let partials: Vec<_> =
        presigs.into_iter().map(|(secret, _)| secret.issue_partial_signature(payload.data_to_sign())).collect();
    let signature =
        cggmp24::PartialSignature::combine(&partials, &public, payload.data_to_sign()).expect("partials combine");
    signature.verify(&shares[0].shared_public_key, &payload.data_to_sign()).expect("the signature verifies");
    (presign_took, started.elapsed())
}

/// FROST keygen of a `scheme` key, `t` of `n` (cggmp24's keygen on the
/// scheme's curve, no aux info), timed.
pub fn frost_keygen(
    layout: Layout,
    scheme: torcus_contract::Scheme,
    n: u16,
    t: u16,
    tag: &str,
) -> (Vec<super::frost::FrostShare>, Duration) {
    use super::frost::FrostShare;
    use givre::generic_ec::curves::{Ed25519, Secp256k1};
    let eid = format!("raw-frost-keygen-{tag}");
    match scheme {
        torcus_contract::Scheme::EddsaEd25519 => {
            let (out, took) = run(layout, n, |i, party| {
                let eid = eid.clone();
                async move {
                    cggmp24::keygen::<Ed25519>(ExecutionId::new(eid.as_bytes()), i, n)
                        .set_threshold(t)
                        .hd_wallet(false)
                        .enforce_reliable_broadcast(true)
                        .start(&mut OsRng, party)
                        .await
                        .expect("raw FROST keygen")
                }
            });
            (out.into_iter().map(FrostShare::Ed25519).collect(), took)
        }
        _ => {
            let (out, took) = run(layout, n, |i, party| {
                let eid = eid.clone();
                async move {
                    cggmp24::keygen::<Secp256k1>(ExecutionId::new(eid.as_bytes()), i, n)
                        .set_threshold(t)
                        .hd_wallet(true)
                        .enforce_reliable_broadcast(true)
                        .start(&mut OsRng, party)
                        .await
                        .expect("raw FROST keygen")
                }
            });
            (out.into_iter().map(FrostShare::Bip340).collect(), took)
        }
    }
}

/// One FROST signing (givre's two rounds) by `signers` (keygen indices,
/// exactly the threshold), BIP-340 with the Taproot tweak or Ed25519, timed.
pub fn frost_sign(layout: Layout, shares: &[super::frost::FrostShare], signers: &[u16]) -> Duration {
    use super::frost::FrostShare;
    use givre::ciphersuite::{Bitcoin, Ed25519};
    let t = signers.len() as u16;
    let message = [7u8; 32];
    let (_, took) = match &shares[0] {
        FrostShare::Bip340(_) => run(layout, t, |j, party| {
            let FrostShare::Bip340(share) = &shares[usize::from(signers[usize::from(j)])] else {
                panic!("one scheme per key")
            };
            async move {
                givre::signing::<Bitcoin>(j, share, signers, &message)
                    .set_taproot_tweak(None)
                    .expect("a taproot tweak")
                    .sign(&mut OsRng, party)
                    .await
                    .expect("raw FROST signing");
            }
        }),
        FrostShare::Ed25519(_) => run(layout, t, |j, party| {
            let FrostShare::Ed25519(share) = &shares[usize::from(signers[usize::from(j)])] else {
                panic!("one scheme per key")
            };
            async move {
                givre::signing::<Ed25519>(j, share, signers, &message)
                    .sign(&mut OsRng, party)
                    .await
                    .expect("raw FROST signing");
            }
        }),
    };
    took
}
