//! `cargo bench -p torcus-node --bench mpc [-- RUNS]`
//!
//! One run, one table: the raw `cggmp21` library in its in-process
//! simulation (`round_based::sim`, every party in one task, no
//! serialization, no network) beside `torcus-node` processes on 127.0.0.1
//! over each transport, for n=3/t=2 and n=5/t=3. Times are median and
//! spread (min–max) over RUNS runs (default 10). Aux info uses the
//! pregenerated primes fixture on both sides, so safe-prime generation is
//! not measured.

use std::path::Path;
use std::time::{Duration, Instant};

use cggmp21::round_based::sim::async_env;
use cggmp21::{ExecutionId, key_share::AuxInfo, security_level::SecurityLevel128, supported_curves::Secp256k1};
use rand_core::OsRng;
use torcus_node::engine::{self, Primes};
use torcus_node::testing::{Cluster, fixture};

type Row = (String, String, Option<Stats>);

fn main() {
    let runs: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(10);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let primes: Vec<Primes> =
        serde_json::from_str(&std::fs::read_to_string(fixture()).expect("fixture")).expect("primes");
    let mut rows: Vec<Row> = Vec::new();
    for (n, t) in [(3u16, 2u16), (5, 3)] {
        rows.extend(runtime.block_on(raw(n, t, runs, &primes)));
        let transports: &[&str] = if n == 3 { &["quic", "tcp", "http", "hybrid"] } else { &["quic"] };
        for transport in transports {
            rows.extend(runtime.block_on(nodes(n, t, transport, runs)));
        }
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

async fn time<T, F: std::future::Future<Output = T>>(f: F) -> (T, Duration) {
    let started = Instant::now();
    let out = f.await;
    (out, started.elapsed())
}

/// The library alone, in its simulation.
async fn raw(n: u16, t: u16, runs: usize, primes: &[Primes]) -> Vec<Row> {
    let setup = format!("raw cggmp21 n={n} t={t}");
    eprintln!("{setup} ...");
    let few = runs.clamp(1, 3);
    let mut aux_times = Vec::new();
    let mut aux: Vec<AuxInfo<SecurityLevel128>> = Vec::new();
    for run in 0..few {
        let eid = format!("bench-aux-{run}");
        let (out, d) = time(async_env::run(n, |i, party| {
            let primes = primes[usize::from(i)].clone();
            let eid = eid.clone();
            async move {
                cggmp21::aux_info_gen(ExecutionId::new(eid.as_bytes()), i, n, primes)
                    .precompute_multiexp_tables(true)
                    .precompute_crt(true)
                    .start(&mut OsRng, party)
                    .await
            }
        }))
        .await;
        aux = out.expect_ok().into_vec();
        aux_times.push(d);
    }
    let mut keygen_times = Vec::new();
    let mut cores = Vec::new();
    for run in 0..few {
        let eid = format!("bench-keygen-{run}");
        let (out, d) = time(async_env::run(n, |i, party| {
            let eid = eid.clone();
            async move {
                cggmp21::keygen::<Secp256k1>(ExecutionId::new(eid.as_bytes()), i, n)
                    .set_threshold(t)
                    .hd_wallet(true)
                    .start(&mut OsRng, party)
                    .await
            }
        }))
        .await;
        cores = out.expect_ok().into_vec();
        keygen_times.push(d);
    }
    let shares: Vec<engine::Share> =
        cores.into_iter().zip(aux).map(|(c, a)| engine::complete(c, a).expect("share")).collect();
    let signers: Vec<u16> = (0..t).collect();
    let digest = [5u8; 32];
    let (mut sign_times, mut presign_times, mut presigned_times) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let eid = format!("bench-sign-{run}");
        let (out, d) = time(async_env::run(t, |j, party| {
            let (eid, signers, share) =
                (eid.clone(), signers.clone(), shares[usize::from(signers[usize::from(j)])].clone());
            async move {
                cggmp21::signing(ExecutionId::new(eid.as_bytes()), j, &signers, &share)
                    .sign(&mut OsRng, party, engine::data_to_sign(&digest))
                    .await
            }
        }))
        .await;
        out.expect_ok();
        sign_times.push(d);

        let eid = format!("bench-presign-{run}");
        let (out, d) = time(async_env::run(t, |j, party| {
            let (eid, signers, share) =
                (eid.clone(), signers.clone(), shares[usize::from(signers[usize::from(j)])].clone());
            async move {
                cggmp21::signing(ExecutionId::new(eid.as_bytes()), j, &signers, &share)
                    .generate_presignature(&mut OsRng, party)
                    .await
            }
        }))
        .await;
        let presigs = out.expect_ok().into_vec();
        presign_times.push(d);
        let started = Instant::now();
        let partials: Vec<_> = presigs
            .into_iter()
            .zip(&signers)
            .map(|(p, i)| engine::partial_sign(p, &shares[usize::from(*i)], &digest, &[]).expect("partial"))
            .collect();
        engine::combine(&partials, &shares[0], &digest, &[]).expect("combine");
        presigned_times.push(started.elapsed());
    }
    vec![
        (setup.clone(), "aux info".into(), Some(Stats(aux_times))),
        (setup.clone(), "keygen".into(), Some(Stats(keygen_times))),
        (setup.clone(), "presignature".into(), Some(Stats(presign_times))),
        (setup.clone(), "sign, full protocol".into(), Some(Stats(sign_times))),
        (setup, "sign from a presignature".into(), Some(Stats(presigned_times))),
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
        sign.push(time(cluster.sign("k0", signers, [run as u8; 32], vec![])).await.1);
    }
    vec![
        (setup.clone(), "aux info + keygen (first key)".into(), Some(Stats(vec![aux_and_keygen]))),
        (setup.clone(), "keygen".into(), Some(Stats(keygen))),
        (setup.clone(), "sign, full protocol (HTTP to signature)".into(), Some(Stats(sign))),
        (setup, "sign from a presignature".into(), None),
    ]
}
