//! `cargo bench -p torcus-e2e --bench signing [-- REQUESTS] [burst]`
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
//! With `burst`, only the burst is measured. Beside them, in the same run,
//! the raw `cggmp21` library in its in-process simulation (no network, no
//! serialization): full signing, presigning and signing from a
//! presignature of 2 of 3 parties, and the peak resident memory of the node
//! processes.
//!
//! Nodes start from the test primes fixture, so safe-prime generation is
//! not measured.

use std::time::{Duration, Instant};

use kube::api::PostParams;
use kube::{Api, ResourceExt};
use torcus_crds::{MpcCluster, SigningPhase, SigningRequest};
use torcus_e2e::testing::{TestNamespace, eventually};

const POOL: u16 = 16;

fn main() {
    let requests: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(50);
    let burst_only = std::env::args().skip(1).any(|a| a == "burst");
    // The operator runs in this process: RUST_LOG shows what it decides.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(run(requests, burst_only));
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

async fn run(requests: usize, burst_only: bool) {
    let mut ns = TestNamespace::new("bench").await.expect("namespace");
    ns.start_kubelet().await.expect("kubelet");
    ns.start_operator();
    let clusters: Api<MpcCluster> = ns.api();
    let mut rows = Vec::new();
    if !burst_only {
        // One cluster at a time, so that one's background presigning does
        // not share the cores with the other's measurement.
        clusters.create(&PostParams::default(), &cluster("cold", 0)).await.expect("create cluster");
        wait_ready(&clusters, "cold").await;
        let (cold, node_only) = sequential(&ns, "cold", requests, None).await;
        rows.push(("no presignatures: creation → Completed".to_owned(), Stats(cold)));
        rows.push(("no presignatures: node-only signing (operator → initiator)".to_owned(), Stats(node_only)));
        clusters.delete("cold", &Default::default()).await.expect("delete cluster");
    }
    clusters.create(&PostParams::default(), &cluster("warm", POOL)).await.expect("create cluster");
    wait_ready(&clusters, "warm").await;
    wait_pools_full(&ns, "warm").await;
    if !burst_only {
        let (warm, warm_node) = sequential(&ns, "warm", requests, Some("warm")).await;
        rows.push(("warm pool: creation → Completed".to_owned(), Stats(warm)));
        rows.push(("warm pool: node-only signing (operator → initiator)".to_owned(), Stats(warm_node)));
    }

    wait_pools_full(&ns, "warm").await;
    let burst = usize::from(POOL) * 3;
    let presigned_before = presigned_sessions(&ns, "warm").await;
    let (took, completed, burst_total, burst_node) = burst_run(&ns, "warm", burst).await;
    let presigned = presigned_sessions(&ns, "warm").await - presigned_before;
    rows.push(("burst: start → each request seen final".to_owned(), burst_total));
    rows.push(("burst: node-only signing".to_owned(), burst_node));
    let peak_rss = node_peak_rss_kib(&ns);
    ns.finish().await.expect("cleanup");

    // The library alone, last: nothing else shares the cores then.
    let primes: Vec<torcus_node::engine::Primes> =
        serde_json::from_str(&std::fs::read_to_string(torcus_node::testing::fixture()).expect("primes fixture"))
            .expect("primes");
    for (op, times) in torcus_node::testing::raw_library::measure(3, 2, requests.min(20), &primes).await {
        if op != "aux info" && op != "keygen" {
            rows.push((format!("raw cggmp21 (in-process, 2 of 3): {op}"), Stats(times)));
        }
    }

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
    println!("presignatures used in the burst (each signer counts its own): {presigned} of {}", 2 * burst);
    for (pod, kib) in peak_rss {
        println!("peak resident memory of node {pod}: {:.1} MiB", kib as f64 / 1024.0);
    }
}

/// Peak resident set (VmHWM, KiB) of each node process still running.
fn node_peak_rss_kib(ns: &TestNamespace) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for i in 0..3 {
        let pod = format!("warm-{i}-0");
        let Some(pid) = ns.kubelet().pid(&ns.name, &pod) else { continue };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let hwm = status.lines().find_map(|l| l.strip_prefix("VmHWM:")?.trim().strip_suffix("kB")?.trim().parse().ok());
        if let Some(kib) = hwm {
            out.push((pod, kib));
        }
    }
    out
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

/// Creates `n` requests at once and watches them until all are final (or
/// two minutes passed); returns the time from the first create to the last
/// `Completed`, how many completed, when each was seen final (from the
/// first create), and their node-only times.
async fn burst_run(ns: &TestNamespace, cluster: &str, n: usize) -> (Duration, usize, Stats, Stats) {
    use futures::TryStreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let srs: Api<SigningRequest> = ns.api();
    let mut events = std::pin::pin!(
        watcher(srs.clone(), watcher::Config::default().labels("bench=burst")).default_backoff().applied_objects()
    );
    let started = Instant::now();
    let creates = (0..n).map(|i| {
        let srs = srs.clone();
        async move {
            let name = format!("burst-{i}");
            let mut sr = request(&name, cluster, 1000 + i);
            sr.metadata.labels = Some([("bench".to_owned(), "burst".to_owned())].into());
            srs.create(&PostParams::default(), &sr).await.expect("create");
        }
    });
    futures::future::join_all(creates).await;
    let mut last = started.elapsed();
    let mut finals = std::collections::BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while finals.len() < n {
        let Ok(Ok(Some(sr))) = tokio::time::timeout_at(deadline, events.try_next()).await else { break };
        let status = sr.status.clone().unwrap_or_default();
        if status.phase.is_some_and(SigningPhase::is_final) && !finals.contains_key(&sr.name_any()) {
            last = started.elapsed();
            finals.insert(sr.name_any(), (status, last));
        }
    }
    let completed = finals.values().filter(|(s, _)| s.phase == Some(SigningPhase::Completed)).count();
    for (name, (status, _)) in &finals {
        if status.phase != Some(SigningPhase::Completed) {
            eprintln!(
                "not completed: {name} phase {:?} attempts {} reason {:?}",
                status.phase, status.attempts, status.reason
            );
        }
    }
    // Per signer set: sessions that used a presignature, and ones that ran
    // the full protocol (from the initiators' session records).
    let mut by_set: std::collections::BTreeMap<Vec<u16>, (u32, u32)> = Default::default();
    for (status, _) in finals.values() {
        let (Some(initiator), Some(session)) = (status.initiator, status.session_id.as_deref()) else { continue };
        let Some(ip) = ns.kubelet().pod_ip(&ns.name, &format!("{cluster}-{initiator}-0")) else { continue };
        let path = format!("/p2p/session/{session}");
        let Ok((200, body)) = torcus_e2e::kubelet::http_get((ip, 8080).into(), &path, Duration::from_secs(2)).await
        else {
            continue;
        };
        let presigned = serde_json::from_str::<serde_json::Value>(&body)
            .is_ok_and(|v| v["outcome"]["presigned"].as_bool() == Some(true));
        let entry = by_set.entry(status.participants.clone()).or_default();
        if presigned { entry.0 += 1 } else { entry.1 += 1 }
    }
    for (set, (presigned, full)) in &by_set {
        println!("burst signer set {set:?}: {presigned} presigned, {full} full protocol");
    }
    let seen = Stats(finals.values().map(|(_, at)| *at).collect());
    let node = finals.values().filter_map(|(s, _)| s.timings.as_ref()?.signing_ms).map(Duration::from_millis);
    (last, completed, seen, Stats(node.collect()))
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
