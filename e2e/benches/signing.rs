//! `cargo bench -p torcus-e2e --bench signing [-- REQUESTS]`
//!
//! The control plane end to end on the local API server, release build:
//! latency from SigningRequest creation to `Completed` as a client sees it
//! (create, then poll), over REQUESTS sequential requests (default 50):
//!
//! - without presignatures (`presignatures.poolSize: 0`: every request runs
//!   the full signing protocol), beside the node-only time of the same
//!   requests (the operator's call to the initiator, `status.timings.signingMs`);
//! - with a warm pool (each request waits until every pool is full again, so
//!   that no presigning shares the cores while it is measured);
//! - and the burst rate: as many requests as the pools hold, created at
//!   once, completed per second.
//!
//! Nodes start from the test primes fixture, so safe-prime generation is
//! not measured.

use std::time::{Duration, Instant};

use kube::Api;
use kube::api::PostParams;
use torcus_crds::{MpcCluster, SigningPhase, SigningRequest};
use torcus_e2e::testing::{TestNamespace, eventually};

const POOL: u16 = 16;

fn main() {
    let requests: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(50);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(run(requests));
}

async fn wait_ready(clusters: &Api<MpcCluster>, name: &str) {
    eventually(&format!("cluster {name} Ready"), Duration::from_secs(600), || async {
        let mpc = clusters.get(name).await?;
        let ready = mpc.status.iter().flat_map(|s| &s.conditions).any(|c| c.type_ == "Ready" && c.status == "True");
        Ok(ready.then_some(()))
    })
    .await
    .expect("cluster ready");
}

async fn run(requests: usize) {
    let mut ns = TestNamespace::new("bench").await.expect("namespace");
    ns.start_kubelet().await.expect("kubelet");
    ns.start_operator();
    let clusters: Api<MpcCluster> = ns.api();
    // One cluster at a time, so that one's background presigning does not
    // share the cores with the other's measurement.
    clusters.create(&PostParams::default(), &cluster("cold", 0)).await.expect("create cluster");
    wait_ready(&clusters, "cold").await;
    let mut rows = Vec::new();
    let (cold, node_only) = sequential(&ns, "cold", requests, None).await;
    rows.push(("no presignatures: creation → Completed".to_owned(), Stats(cold)));
    rows.push(("no presignatures: node-only signing (operator → initiator)".to_owned(), Stats(node_only)));
    clusters.delete("cold", &Default::default()).await.expect("delete cluster");
    clusters.create(&PostParams::default(), &cluster("warm", POOL)).await.expect("create cluster");
    wait_ready(&clusters, "warm").await;
    wait_pools_full(&ns, "warm").await;
    let (warm, warm_node) = sequential(&ns, "warm", requests, Some("warm")).await;
    rows.push(("warm pool: creation → Completed".to_owned(), Stats(warm)));
    rows.push(("warm pool: node-only signing (operator → initiator)".to_owned(), Stats(warm_node)));

    wait_pools_full(&ns, "warm").await;
    let burst = usize::from(POOL) * 3;
    let (took, completed) = burst_run(&ns, "warm", burst).await;
    let presigned = presigned_sessions(&ns, "warm").await;

    println!("\n| measurement | median | p90 | min | max | n |\n|---|---|---|---|---|---|");
    for (name, s) in &rows {
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            ms(s.quantile(0.5)),
            ms(s.quantile(0.9)),
            ms(s.quantile(0.0)),
            ms(s.quantile(1.0)),
            s.0.len()
        );
    }
    println!(
        "\nburst from warm pools: {burst} requests created at once, {completed} Completed in {:.2} s: {:.1} requests/s",
        took.as_secs_f64(),
        completed as f64 / took.as_secs_f64()
    );
    println!("presignatures consumed on cluster warm (both signers of a session count one): {presigned}");
    ns.finish().await.expect("cleanup");
}

fn cluster(name: &str, pool: u16) -> MpcCluster {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "mpc.torcus.io/v1alpha1",
        "kind": "MpcCluster",
        "metadata": {"name": name},
        "spec": {"nodes": 3, "threshold": 2, "presignatures": {"poolSize": pool}},
    }))
    .expect("cluster")
}

fn request(name: &str, cluster: &str, i: usize) -> SigningRequest {
    let mut digest = [0u8; 32];
    digest[..8].copy_from_slice(&(i as u64).to_be_bytes());
    digest[8..8 + name.len().min(24)].copy_from_slice(&name.as_bytes()[..name.len().min(24)]);
    serde_json::from_value(serde_json::json!({
        "apiVersion": "mpc.torcus.io/v1alpha1",
        "kind": "SigningRequest",
        "metadata": {"name": name},
        "spec": {"cluster": cluster, "digest": hex::encode(digest)},
    }))
    .expect("request")
}

/// Creates `n` requests one after the other, each once the previous one
/// completed (and, with `warm_cluster`, once a signer set is warm again);
/// returns client-side latencies and the operator's node-only times.
async fn sequential(
    ns: &TestNamespace,
    cluster: &str,
    n: usize,
    warm_cluster: Option<&str>,
) -> (Vec<Duration>, Vec<Duration>) {
    let srs: Api<SigningRequest> = ns.api();
    let (mut total, mut node) = (Vec::new(), Vec::new());
    for i in 0..n {
        if let Some(c) = warm_cluster {
            // Warm and idle: every pool full again, so no presigning shares
            // the two cores (with the API server, etcd and the operator)
            // while the request is measured.
            wait_pools_full(ns, c).await;
        }
        let name = format!("{cluster}-{i}");
        let started = Instant::now();
        srs.create(&PostParams::default(), &request(&name, cluster, i)).await.expect("create request");
        let sr = loop {
            let sr = srs.get(&name).await.expect("get request");
            if sr.status.as_ref().and_then(|s| s.phase).is_some_and(SigningPhase::is_final) {
                break sr;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        total.push(started.elapsed());
        let status = sr.status.expect("status");
        assert_eq!(status.phase, Some(SigningPhase::Completed), "{name}: {:?}", status.reason);
        if let Some(signing) = status.timings.and_then(|t| t.signing_ms) {
            node.push(Duration::from_millis(signing));
        }
    }
    (total, node)
}

async fn burst_run(ns: &TestNamespace, cluster: &str, n: usize) -> (Duration, usize) {
    let srs: Api<SigningRequest> = ns.api();
    let started = Instant::now();
    let creates = (0..n).map(|i| {
        let srs = srs.clone();
        async move {
            let name = format!("burst-{i}");
            srs.create(&PostParams::default(), &request(&name, cluster, 1000 + i)).await.expect("create");
        }
    });
    futures::future::join_all(creates).await;
    let mut done = 0;
    while done < n && started.elapsed() < Duration::from_secs(120) {
        let list = srs.list(&Default::default()).await.expect("list");
        done = list
            .items
            .iter()
            .filter(|sr| sr.metadata.name.as_deref().is_some_and(|n| n.starts_with("burst-")))
            .filter(|sr| sr.status.as_ref().and_then(|s| s.phase) == Some(SigningPhase::Completed))
            .count();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = started.elapsed();
    for sr in srs.list(&Default::default()).await.expect("list").items {
        let status = sr.status.clone().unwrap_or_default();
        if sr.metadata.name.as_deref().is_some_and(|n| n.starts_with("burst-"))
            && status.phase != Some(SigningPhase::Completed)
        {
            eprintln!(
                "not completed: {:?} phase {:?} attempts {} reason {:?}",
                sr.metadata.name, status.phase, status.attempts, status.reason
            );
        }
    }
    (took, done)
}

/// Presignatures per signer set of `cluster`, from every node's API.
async fn pool_depths(ns: &TestNamespace, cluster: &str) -> Vec<u64> {
    let mut depths = Vec::new();
    for i in 0..3 {
        let Some(ip) = ns.kubelet().pod_ip(&ns.name, &format!("{cluster}-{i}-0")) else { continue };
        let Ok((200, body)) =
            torcus_e2e::kubelet::http_get((ip, 8080).into(), "/p2p/presignatures", Duration::from_secs(2)).await
        else {
            continue;
        };
        let pools: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        for pool in pools["pools"].as_array().into_iter().flatten() {
            depths.push(pool["depth"].as_u64().unwrap_or(0));
        }
    }
    depths
}

async fn wait_pools_full(ns: &TestNamespace, cluster: &str) {
    let deadline = Instant::now() + Duration::from_secs(600);
    let started = Instant::now();
    loop {
        let depths = pool_depths(ns, cluster).await;
        // Each of the 3 signer sets is held by its 2 members.
        if depths.len() >= 6 && depths.iter().all(|d| *d >= u64::from(POOL)) {
            break;
        }
        assert!(Instant::now() < deadline, "pools did not fill: {depths:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tracing::debug!("pools full after {:.1} s", started.elapsed().as_secs_f64());
}

async fn presigned_sessions(ns: &TestNamespace, cluster: &str) -> f64 {
    let mut total = 0.0;
    for i in 0..3 {
        let Some(ip) = ns.kubelet().pod_ip(&ns.name, &format!("{cluster}-{i}-0")) else { continue };
        if let Ok((_, text)) =
            torcus_e2e::kubelet::http_get((ip, 8080).into(), "/metrics", Duration::from_secs(2)).await
        {
            total += text
                .lines()
                .filter(|l| l.starts_with("torcus_presignatures_used_total"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>();
        }
    }
    total
}

struct Stats(Vec<Duration>);

impl Stats {
    fn quantile(&self, q: f64) -> Duration {
        let mut v = self.0.clone();
        v.sort();
        if v.is_empty() {
            return Duration::ZERO;
        }
        v[((v.len() - 1) as f64 * q).round() as usize]
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}
