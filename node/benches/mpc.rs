//! `cargo bench -p torcus-node --bench mpc [-- RUNS [FILTER...]]`
//!
//! One run, one table: the raw `cggmp24` library, with no Torcus around it,
//! beside `torcus-node` processes on 127.0.0.1 over each transport, for
//! n=3/t=2 and n=5/t=3. The raw library runs two ways
//! (`torcus_node::engine::raw`): each party on an OS thread of its own over
//! the library's in-memory network — the latency floor, what a node's
//! latency is held against — and every party in one task, one after
//! another — the protocol's total CPU cost, not a latency. Times are median
//! and spread (min–max) over RUNS runs (default 10). Aux info uses the
//! pregenerated primes fixture on both sides, so safe-prime generation is
//! not measured.
//!
//! The node rows run with presignature pools off, except "sign from a
//! presignature" (QUIC, n=3/t=2): a cluster with pools of 4 per signer set,
//! warmed up, then signing 3·RUNS payloads back to back through the HTTP API,
//! each time with a signer set whose pool is warm (as the operator picks),
//! while the nodes presign in the background. Below the table: that
//! sustained rate in signatures per second and the share that used a
//! presignature, beside the raw library's presigning rate on the same cores.
//!
//! "added latency" (QUIC, n=3/t=2, root only): each node in a network
//! namespace of its own with every packet it receives held 0, 50 and 200 ms
//! (`torcus_node::netlab`); p50 and p99 of 5·RUNS full-protocol signatures
//! each, and what the delay added to the p99 against the floor no
//! implementation can beat: 8 one-way hops (handshake, presigning rounds,
//! partial signatures, the request's arrival) times the delay.
//!
//! FILTERs, when given, keep only the setups whose name contains one of
//! them, e.g. `-- 5 "cggmp24 n=3" "quic n=3"` for the presignature numbers.

use std::path::Path;
use std::time::{Duration, Instant};

use torcus_node::engine::Primes;
use torcus_node::engine::raw::{self, Layout};
use torcus_node::testing::{Cluster, digest, fixture, payload};

type Row = (String, String, Option<Stats>);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let runs: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(10);
    let filters: Vec<&String> = args.iter().filter(|a| a.parse::<usize>().is_err()).collect();
    let wanted = |setup: &str| filters.is_empty() || filters.iter().any(|f| setup.contains(f.as_str()));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let primes: Vec<Primes> =
        serde_json::from_str(&std::fs::read_to_string(fixture()).expect("fixture")).expect("primes");
    let mut rows: Vec<Row> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    for (n, t) in [(3u16, 2u16), (5, 3)] {
        for layout in [Layout::Threads, Layout::OneTask] {
            let setup = format!("raw cggmp24 n={n} t={t}, {}", layout.label());
            if !wanted(&setup) {
                continue;
            }
            let raw_rows = raw_library(&setup, layout, n, t, runs, &primes);
            if n == 3 {
                let presign = raw_rows.iter().find(|(_, op, _)| op == "presignature").and_then(|(_, _, s)| s.as_ref());
                if let Some(presign) = presign {
                    notes.push(format!(
                        "{setup}: presigning for one signer set, one after another: {:.2} presignatures/s (median {})",
                        1.0 / presign.median().as_secs_f64(),
                        ms(presign.median())
                    ));
                }
            }
            rows.extend(raw_rows);
        }
        let transports: &[&str] = if n == 3 { &["quic", "tcp", "http", "hybrid"] } else { &["quic"] };
        for transport in transports.iter().filter(|tr| wanted(&format!("torcus-node {tr} n={n} t={t}"))) {
            let mut node_rows = runtime.block_on(nodes(n, t, transport, runs));
            if n == 3 && *transport == "quic" {
                let (latency, note) = runtime.block_on(warm_pool(n, t, transport, runs * 3));
                if let Some(last) = node_rows.last_mut() {
                    last.2 = latency;
                }
                notes.push(note);
            }
            rows.extend(node_rows);
        }
    }
    // FROST: the raw library (cggmp24's keygen on the scheme's curve, givre's
    // signing), each party on its own thread, beside nodes over QUIC.
    for scheme in [torcus_contract::Scheme::SchnorrBip340, torcus_contract::Scheme::EddsaEd25519] {
        let (n, t) = (3u16, 2u16);
        let setup = format!("raw frost {scheme} n={n} t={t}, {}", Layout::Threads.label());
        if wanted(&setup) {
            rows.extend(raw_frost(&setup, scheme, n, t, runs));
        }
        let setup = format!("torcus-node quic frost {scheme} n={n} t={t}");
        if wanted(&setup) {
            rows.extend(runtime.block_on(frost_nodes(&setup, scheme, n, t, runs)));
        }
    }
    let setup = "torcus-node quic n=3 t=2, added latency";
    if wanted(setup) {
        notes.extend(runtime.block_on(under_latency(runs * 5)));
    }
    println!("\n| setup | operation | median | min | max | runs |\n|---|---|---|---|---|---|");
    for (setup, op, stats) in rows {
        match stats {
            Some(s) => {
                println!("| {setup} | {op} | {} | {} | {} | {} |", ms(s.median()), ms(s.min()), ms(s.max()), s.0.len())
            }
            None => println!("| {setup} | {op} | n/a | | | |"),
        }
    }
    println!();
    for note in notes {
        println!("- {note}");
    }
}

/// Samples of one measurement.
struct Stats(Vec<Duration>);

impl Stats {
    fn median(&self) -> Duration {
        let mut v = self.0.clone();
        v.sort();
        v[v.len() / 2]
    }
    fn min(&self) -> Duration {
        self.0.iter().copied().min().unwrap_or_default()
    }
    fn max(&self) -> Duration {
        self.0.iter().copied().max().unwrap_or_default()
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Runs `f`, timing it.
async fn time<T, F: std::future::Future<Output = T>>(f: F) -> (T, Duration) {
    let started = Instant::now();
    let out = f.await;
    (out, started.elapsed())
}

/// The library alone, laid out as `layout`: aux info and keygen (up to 3
/// runs each), then `runs` times a full signing, a presignature, and a
/// signature from a presignature, of the first `t` parties.
fn raw_library(setup: &str, layout: Layout, n: u16, t: u16, runs: usize, primes: &[Primes]) -> Vec<Row> {
    eprintln!("{setup} ...");
    let few = runs.clamp(1, 3);
    let (mut aux, mut aux_times) = (Vec::new(), Vec::new());
    for run in 0..few {
        let (out, took) = raw::aux_info(layout, n, primes, &run.to_string());
        aux = out;
        aux_times.push(took);
    }
    let (mut shares, mut keygen_times) = (Vec::new(), Vec::new());
    for run in 0..few {
        let (out, took) = raw::keygen(layout, n, t, &aux, &run.to_string());
        shares = out;
        keygen_times.push(took);
    }
    let signers: Vec<u16> = (0..t).collect();
    let (mut sign, mut presign, mut presigned) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        sign.push(raw::sign(layout, &shares, &signers, &run.to_string()));
        let (made, used) = raw::presign_and_sign(layout, &shares, &signers, &run.to_string());
        presign.push(made);
        presigned.push(used);
    }
    [
        ("aux info", aux_times),
        ("keygen", keygen_times),
        ("presignature", presign),
        ("sign, full protocol", sign),
        ("sign from a presignature", presigned),
    ]
    .into_iter()
    .map(|(op, times)| (setup.to_owned(), op.to_owned(), Some(Stats(times))))
    .collect()
}

/// FROST keygen and signing in the raw library, each party on its own thread.
fn raw_frost(setup: &str, scheme: torcus_contract::Scheme, n: u16, t: u16, runs: usize) -> Vec<Row> {
    eprintln!("{setup} ...");
    let (mut shares, mut keygen) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let (out, took) = raw::frost_keygen(Layout::Threads, scheme, n, t, &run.to_string());
        shares = out;
        keygen.push(took);
    }
    let signers: Vec<u16> = (0..t).collect();
    let sign = (0..runs).map(|_| raw::frost_sign(Layout::Threads, &shares, &signers)).collect();
    vec![
        (setup.to_owned(), "keygen".into(), Some(Stats(keygen))),
        (setup.to_owned(), "sign, full protocol".into(), Some(Stats(sign))),
    ]
}

/// FROST keygen and signing on `torcus-node` processes over QUIC, through
/// their HTTP API (grant to answer).
async fn frost_nodes(setup: &str, scheme: torcus_contract::Scheme, n: u16, t: u16, runs: usize) -> Vec<Row> {
    eprintln!("{setup} ...");
    let cluster = Cluster::new(Path::new(env!("CARGO_BIN_EXE_torcus-node")), n, t, "quic").await;
    cluster.wait_ready().await;
    let mut keygen = Vec::new();
    for k in 0..runs {
        keygen.push(time(cluster.keygen_frost(&format!("f{k}"), scheme)).await.1);
    }
    let mut sign = Vec::new();
    for run in 0..runs {
        let signers: Vec<u16> =
            (0..t).map(|j| (j + run as u16) % n).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        let message = match scheme {
            torcus_contract::Scheme::EddsaEd25519 => {
                torcus_contract::SignMessage::Raw { message: format!("message {run}").into_bytes() }
            }
            _ => digest([run as u8; 32]),
        };
        sign.push(time(cluster.sign_frost("f0", scheme, signers, message, vec![])).await.1);
    }
    vec![
        (setup.to_owned(), "keygen (no aux info)".into(), Some(Stats(keygen))),
        (setup.to_owned(), "sign, full protocol (HTTP to signature)".into(), Some(Stats(sign))),
    ]
}

/// `torcus-node` processes over `transport`, driven through their HTTP API.
async fn nodes(n: u16, t: u16, transport: &str, runs: usize) -> Vec<Row> {
    let setup = format!("torcus-node {transport} n={n} t={t}");
    eprintln!("{setup} ...");
    let cluster = Cluster::new(Path::new(env!("CARGO_BIN_EXE_torcus-node")), n, t, transport).await;
    cluster.wait_ready().await;
    let (_, aux_and_keygen) = time(cluster.keygen("k0")).await;
    let mut keygen = Vec::new();
    for k in 1..=runs.clamp(1, 3) {
        keygen.push(time(cluster.keygen(&format!("k{k}"))).await.1);
    }
    let mut sign = Vec::new();
    for run in 0..runs {
        let signers: Vec<u16> =
            (0..t).map(|j| (j + run as u16) % n).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        sign.push(time(cluster.sign("k0", signers, digest([run as u8; 32]), vec![])).await.1);
    }
    vec![
        (setup.clone(), "aux info + keygen (first key)".into(), Some(Stats(vec![aux_and_keygen]))),
        (setup.clone(), "keygen".into(), Some(Stats(keygen))),
        (setup.clone(), "sign, full protocol (HTTP to signature)".into(), Some(Stats(sign))),
        (setup, "sign from a presignature".into(), None),
    ]
}

/// One-way hops, one after another, from the signing request to its answer
/// in a full-protocol session: the request's arrival, the handshake
/// (proposal, ack, start), the three presigning rounds and the partial
/// signatures (the answer leaves the lab undelayed). With every packet held
/// `d` on arrival, `HOPS · d` is waiting no implementation of this exchange
/// avoids; only computing that overlaps it can hide part of it.
const HOPS: u32 = 8;

/// Full-protocol signing, QUIC, n=3 t=2, each node in a namespace of its own
/// (`torcus_node::netlab`) with every packet it receives held 0, 50 and 200 ms:
/// `count` signatures each, p50 and p99; what the delay added to the p99
/// (over the clean p50) against the floor, `HOPS` times the delay. The
/// nodes use the aux info fixture, which has no multi-exponentiation
/// tables, so the clean time is a product node's and then some. Needs
/// root; says so otherwise.
async fn under_latency(count: usize) -> Vec<String> {
    let binary = Path::new(env!("CARGO_BIN_EXE_torcus-node"));
    let Some(mut cluster) = Cluster::in_netlab(binary, 3, 2, "quic").await else {
        return vec!["added latency: skipped (network namespaces need root, ip and iptables)".into()];
    };
    eprintln!("torcus-node quic n=3 t=2, added latency ...");
    cluster.wait_ready().await;
    cluster.keygen("k0").await;
    let sets = signer_sets(3, 2);
    let mut notes = Vec::new();
    let mut clean_p50 = Duration::ZERO;
    for delay in [0u64, 50, 200] {
        if delay > 0 {
            let lab = cluster.lab.as_mut().expect("a lab");
            (0..3).for_each(|i| lab.delay(i, delay));
        }
        let mut samples = Vec::with_capacity(count);
        for run in 0..count {
            let message = payload(&[(run % 256) as u8, delay as u8, 7]);
            samples.push(time(cluster.sign("k0", sets[run % sets.len()].clone(), message, vec![])).await.1);
        }
        samples.sort();
        let quantile = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
        let (p50, p99) = (quantile(0.5), quantile(0.99));
        if delay == 0 {
            clean_p50 = p50;
            notes.push(format!(
                "quic n=3 t=2, full protocol, clean namespaces: p50 {}, p99 {} over {count}",
                ms(p50),
                ms(p99)
            ));
        } else {
            // What the delay added, against the least it can add: computing
            // overlaps waiting, so this is a bound on the added time, not on
            // the whole.
            let floor = Duration::from_millis(delay) * HOPS;
            let added = p99.saturating_sub(clean_p50);
            notes.push(format!(
                "quic n=3 t=2, full protocol, +{delay} ms on every packet: p50 {}, p99 {} over {count}; \
                 p99 minus the clean p50: {} against the floor of {HOPS} hops x {delay} ms = {} ({:.2}x)",
                ms(p50),
                ms(p99),
                ms(added),
                ms(floor),
                added.as_secs_f64() / floor.as_secs_f64()
            ));
            let lab = cluster.lab.as_mut().expect("a lab");
            (0..3).for_each(|i| lab.heal(i));
        }
    }
    notes
}

/// Sustained signing with presignature pools (4 per set) over `transport`:
/// `count` payloads back to back, each with a warm signer set when one
/// exists. Returns the latency of the signatures that used a presignature,
/// and a line with the rate.
async fn warm_pool(n: u16, t: u16, transport: &str, count: usize) -> (Option<Stats>, String) {
    const POOL: u16 = 4;
    let setup = format!("torcus-node {transport} n={n} t={t}, pools of {POOL}");
    eprintln!("{setup} ...");
    let cluster =
        Cluster::with_presignatures(Path::new(env!("CARGO_BIN_EXE_torcus-node")), n, t, transport, POOL).await;
    cluster.wait_ready().await;
    cluster.keygen("k0").await;
    let sets = signer_sets(n, t);
    let (_, warm_up) = time(async {
        let deadline = Instant::now() + Duration::from_secs(600);
        while warmth(&cluster, &sets).await.iter().any(|depth| *depth < u32::from(POOL)) {
            assert!(Instant::now() < deadline, "pools did not fill");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let mut presigned = Vec::new();
    let mut full = 0usize;
    // Once the stock made before signing began is spent, what is left is
    // the steady state: presigning only in the gaps signing leaves.
    let stock = sets.len() * usize::from(POOL);
    let mut after_stock: (Option<Instant>, usize) = (None, 0);
    let started = Instant::now();
    for run in 0..count {
        if run == stock {
            after_stock.0 = Some(Instant::now());
        }
        // The operator's choice: a set whose pool is warm on every member,
        // the warmest first; otherwise any set, in turn.
        let depths = warmth(&cluster, &sets).await;
        let warmest = (0..sets.len()).max_by_key(|i| depths[*i]).filter(|i| depths[*i] > 0);
        let set = sets[warmest.unwrap_or(run % sets.len())].clone();
        let message = payload(format!("payment {run}").as_bytes());
        let (body, took) = time(cluster.sign("k0", set, message, vec![])).await;
        let used = body["presigned"] == true;
        if used {
            presigned.push(took);
        } else {
            full += 1;
        }
        if run >= stock {
            after_stock.1 += usize::from(used);
        }
    }
    let elapsed = started.elapsed();
    let mut note = format!(
        "{setup}: pools filled {:.1} s after keygen; {count} signatures back to back in {:.1} s = {:.2} signatures/s \
         ({} from a presignature, {full} full protocol, while presigning refilled)",
        warm_up.as_secs_f64(),
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64(),
        presigned.len(),
    );
    if let Some(since) = after_stock.0 {
        let tail = count - stock;
        let took = since.elapsed();
        note.push_str(&format!(
            "; after the first {stock} (the stock): {tail} in {:.1} s = {:.2} signatures/s, {} from a presignature",
            took.as_secs_f64(),
            tail as f64 / took.as_secs_f64(),
            after_stock.1
        ));
    }
    ((!presigned.is_empty()).then_some(Stats(presigned)), note)
}

/// Every signer set of `t` among `n` parties, ascending.
fn signer_sets(n: u16, t: u16) -> Vec<Vec<u16>> {
    (0..n).flat_map(|me| torcus_node::sessions::led_sets(me, n, t)).collect()
}

/// For each set, the smallest depth of its pool over its members.
async fn warmth(cluster: &Cluster, sets: &[Vec<u16>]) -> Vec<u32> {
    let mut pools = Vec::new();
    for i in 0..cluster.config.nodes {
        pools.extend(cluster.presignatures(i).await.pools.into_iter().map(|p| (i, p)));
    }
    sets.iter()
        .map(|set| {
            set.iter()
                .map(|member| {
                    pools
                        .iter()
                        .find(|(i, p)| i == member && p.key == "k0" && p.path.is_empty() && p.participants == *set)
                        .map_or(0, |(_, p)| p.depth)
                })
                .min()
                .unwrap_or(0)
        })
        .collect()
}
