//! `cargo bench -p torcus-e2e --bench signing [-- REQUESTS] [burst | ready | sustained [minutes=M] [rate=R]]`
//!
//! The control plane end to end on the local API server, release build:
//! latency from SigningRequest creation to `Completed` as a client sees it
//! (create, then poll), over REQUESTS sequential requests (default 50):
//!
//! - raw digests without presignatures (`presignatures.poolSize: 0`), beside
//!   the node-only time of the same requests (the operator's call to the
//!   initiator, `status.timings.signingMs`);
//! - payloads with warm pools (each request waits until every pool is full
//!   again, so that no presigning shares the cores while it is measured);
//! - raw digests against the same warm pools: always the full protocol;
//! - and the burst rate: as many payload requests as the pools hold,
//!   created at once, completed per second.
//!
//! With `burst`, only the burst is measured. Beside them, in the same run,
//! the raw `cggmp24` library (`torcus_node::engine::raw`), each party on a
//! thread of its own (latency) and all parties in one task (CPU cost): full
//! signing, presigning and signing from a presignature of 2 of 3 parties,
//! and the peak resident memory of the node processes.
//!
//! Nodes start from the test primes fixture, so safe-prime generation is
//! not measured — except with `ready`, which measures only `kubectl apply`
//! → `Ready` of a 2-of-3 cluster whose nodes generate their own primes.
//!
//! With `sustained`, a steady stream instead: payload requests created at R
//! per second (default 0.5) for M minutes (default 10), open loop (each at
//! its time, whether or not earlier ones finished), on a 2-of-3 cluster with
//! warm pools of 16. Reports signatures per second, creation → Completed
//! latency, the share served from presignatures, pool depth and requests in
//! flight every 30 s, and peak resident memory of the nodes (against the
//! 512 MiB limit their pods get) and of this process (the operator, with
//! the harness, against the chart's 256 MiB); every request must complete,
//! once (node session counters), and the raw library's presignature rate
//! with each party on its own thread is the ceiling it is compared with.

use std::time::{Duration, Instant};

use kube::api::PostParams;
use kube::{Api, ResourceExt};
use torcus_crds::{MpcCluster, SigningPhase, SigningProtocol, SigningRequest};
use torcus_e2e::testing::{TestNamespace, eventually};

const POOL: u16 = 16;

fn main() {
    let requests: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(50);
    let burst_only = std::env::args().skip(1).any(|a| a == "burst");
    let ready_only = std::env::args().skip(1).any(|a| a == "ready");
    let sustained_run = std::env::args().skip(1).any(|a| a == "sustained");
    let setting = |name: &str, default: f64| -> f64 {
        std::env::args().skip(1).find_map(|a| a.strip_prefix(&format!("{name}="))?.parse().ok()).unwrap_or(default)
    };
    // The operator runs in this process: RUST_LOG shows what it decides.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    if ready_only {
        runtime.block_on(ready_with_real_primes());
        return;
    }
    let (mut rows, mut notes) = if sustained_run {
        runtime.block_on(sustained(setting("minutes", 10.0), setting("rate", 0.5)))
    } else {
        runtime.block_on(run(requests, burst_only))
    };
    drop(runtime);
    // The library alone, last: nothing else shares the cores then.
    let primes: Vec<torcus_node::engine::Primes> =
        serde_json::from_str(&std::fs::read_to_string(torcus_node::testing::fixture()).expect("primes fixture"))
            .expect("primes");
    rows.extend(raw_library(requests.min(20), &primes));
    if sustained_run {
        // The ceiling: one presignature at a time, each party on a thread
        // (so on a core) of its own, back to back.
        let presign = rows.iter().find(|(name, _)| name.contains("party per thread") && name.ends_with("presignature"));
        if let Some((_, stats)) = presign {
            let ceiling = 1.0 / stats.quantile(0.5).as_secs_f64();
            notes.push(format!(
                "ceiling from the raw library (presignatures back to back, a thread per party, p50): {ceiling:.2} per second"
            ));
        }
    }

    println!("\n| measurement | p50 | p90 | p99 | min | max | n |\n|---|---|---|---|---|---|---|");
    for (name, s) in &rows {
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} |",
            ms(s.quantile(0.5)),
            ms(s.quantile(0.9)),
            ms(s.quantile(0.99)),
            ms(s.quantile(0.0)),
            ms(s.quantile(1.0)),
            s.0.len()
        );
    }
    println!();
    for note in notes {
        println!("{note}");
    }
}

/// `kubectl apply` of a 2-of-3 cluster → `Ready`, nodes generating their
/// own safe primes (four 1536-bit primes per node for CGGMP24).
async fn ready_with_real_primes() {
    let mut ns = TestNamespace::new("bench-ready").await.expect("namespace");
    ns.start_kubelet_generating_primes().await.expect("kubelet");
    ns.start_operator();
    let clusters: Api<MpcCluster> = ns.api();
    let started = Instant::now();
    clusters.create(&PostParams::default(), &cluster("fresh", 0)).await.expect("create cluster");
    wait_ready(&clusters, "fresh").await;
    println!(
        "\nkubectl apply → Ready, 2-of-3, safe primes generated by the nodes: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    ns.finish().await.expect("cleanup");
}

/// Presigning, full signing and signing from a presignature with the raw
/// library, 2 of 3, in both layouts.
fn raw_library(runs: usize, primes: &[torcus_node::engine::Primes]) -> Vec<(String, Stats)> {
    use torcus_node::engine::raw::{self, Layout};
    let mut rows = Vec::new();
    for layout in [Layout::Threads, Layout::OneTask] {
        let (aux, _) = raw::aux_info(layout, 3, primes, "bench");
        let (shares, _) = raw::keygen(layout, 3, 2, &aux, "bench");
        let (mut sign, mut presign, mut presigned) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..runs {
            sign.push(raw::sign(layout, &shares, &[0, 1], &run.to_string()));
            let (made, used) = raw::presign_and_sign(layout, &shares, &[0, 1], &run.to_string());
            presign.push(made);
            presigned.push(used);
        }
        let label = layout.label();
        rows.push((format!("raw cggmp24 2 of 3, {label}: presignature"), Stats(presign)));
        rows.push((format!("raw cggmp24 2 of 3, {label}: sign, full protocol"), Stats(sign)));
        rows.push((format!("raw cggmp24 2 of 3, {label}: sign from a presignature"), Stats(presigned)));
    }
    rows
}

async fn wait_ready(clusters: &Api<MpcCluster>, name: &str) {
    eventually(&format!("cluster {name} Ready"), Duration::from_secs(900), || async {
        let mpc = clusters.get(name).await?;
        let ready = mpc.status.iter().flat_map(|s| &s.conditions).any(|c| c.type_ == "Ready" && c.status == "True");
        Ok(ready.then_some(()))
    })
    .await
    .expect("cluster ready");
}

/// What a measured request asks to sign.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A SHA-256 payload: the nodes hash it, a presignature may sign it.
    Payload,
    /// A raw digest: always the full protocol.
    Digest,
}

async fn run(requests: usize, burst_only: bool) -> (Vec<(String, Stats)>, Vec<String>) {
    let mut ns = TestNamespace::new("bench").await.expect("namespace");
    ns.start_kubelet().await.expect("kubelet");
    ns.start_operator();
    let clusters: Api<MpcCluster> = ns.api();
    let (mut rows, mut notes) = (Vec::new(), Vec::new());
    if !burst_only {
        // One cluster at a time, so that one's background presigning does
        // not share the cores with the other's measurement.
        clusters.create(&PostParams::default(), &cluster("cold", 0)).await.expect("create cluster");
        wait_ready(&clusters, "cold").await;
        let (cold, node_only) = sequential(&ns, "cold", requests, None, Kind::Digest).await;
        rows.push(("no pools, raw digest: creation → Completed".to_owned(), Stats(cold)));
        rows.push(("no pools, raw digest: node-only signing (operator → initiator)".to_owned(), Stats(node_only)));
        clusters.delete("cold", &Default::default()).await.expect("delete cluster");
    }
    clusters.create(&PostParams::default(), &cluster("warm", POOL)).await.expect("create cluster");
    wait_ready(&clusters, "warm").await;
    let started = Instant::now();
    wait_pools_full(&ns, "warm").await;
    notes.push(format!(
        "pools of {POOL} per signer set filled {:.1} s after the cluster was Ready",
        started.elapsed().as_secs_f64()
    ));
    if !burst_only {
        let (warm, warm_node) = sequential(&ns, "warm", requests, Some("warm"), Kind::Payload).await;
        rows.push(("warm pools, payload: creation → Completed".to_owned(), Stats(warm)));
        rows.push(("warm pools, payload: node-only signing (operator → initiator)".to_owned(), Stats(warm_node)));
        let (digest, digest_node) = sequential(&ns, "warm", requests, Some("warm"), Kind::Digest).await;
        rows.push(("warm pools, raw digest (full protocol): creation → Completed".to_owned(), Stats(digest)));
        rows.push(("warm pools, raw digest: node-only signing".to_owned(), Stats(digest_node)));
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
    notes.push(format!(
        "burst from warm pools: {burst} payload requests created at once, {completed} Completed in {:.2} s: {:.1} requests/s",
        took.as_secs_f64(),
        completed as f64 / took.as_secs_f64()
    ));
    notes.push(format!("presignatures used in the burst (each signer counts its own): {presigned} of {}", 2 * burst));
    for (pod, kib) in peak_rss {
        notes.push(format!("peak resident memory of node {pod}: {:.1} MiB", kib as f64 / 1024.0));
    }
    (rows, notes)
}

/// Peak resident set (VmHWM, KiB) of each node process of cluster `warm`
/// still running.
fn node_peak_rss_kib(ns: &TestNamespace) -> Vec<(String, u64)> {
    cluster_memory_kib(ns, "warm", "VmHWM")
}

/// `field` (`VmHWM` or `VmRSS`, KiB) of each node process of `cluster`.
fn cluster_memory_kib(ns: &TestNamespace, cluster: &str, field: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for i in 0..3 {
        let pod = format!("{cluster}-{i}-0");
        let Some(pid) = ns.kubelet().pid(&ns.name, &pod) else { continue };
        if let Some(kib) = memory_kib(&pid.to_string(), field) {
            out.push((pod, kib));
        }
    }
    out
}

/// `field` of `/proc/<pid>/status`, KiB.
fn memory_kib(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse().ok())
}

/// The steady stream (see the module's documentation).
async fn sustained(minutes: f64, rate: f64) -> (Vec<(String, Stats)>, Vec<String>) {
    use futures::TryStreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    const NAME: &str = "steady";
    let mut ns = TestNamespace::new("bench-steady").await.expect("namespace");
    ns.start_kubelet().await.expect("kubelet");
    ns.start_operator();
    let clusters: Api<MpcCluster> = ns.api();
    clusters.create(&PostParams::default(), &cluster(NAME, POOL)).await.expect("create cluster");
    wait_ready(&clusters, NAME).await;
    wait_pools_full(&ns, NAME).await;
    let sessions_before = sign_sessions(&ns, NAME).await;

    let total = (minutes * 60.0 * rate).round().max(1.0) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let srs: Api<SigningRequest> = ns.api();
    let mut events = std::pin::pin!(
        watcher(srs.clone(), watcher::Config::default().labels("bench=steady")).default_backoff().applied_objects()
    );
    let started = tokio::time::Instant::now();
    // Open loop: request i is created at `started + i × interval`.
    let creator = {
        let srs = srs.clone();
        tokio::spawn(async move {
            let mut created = Vec::with_capacity(total);
            for i in 0..total {
                tokio::time::sleep_until(started + interval * u32::try_from(i).expect("count")).await;
                let name = format!("steady-{i}");
                let mut sr = request(&name, NAME, i, Kind::Payload);
                sr.metadata.labels = Some([("bench".to_owned(), "steady".to_owned())].into());
                srs.create(&PostParams::default(), &sr).await.expect("create");
                created.push(started.elapsed());
            }
            created
        })
    };
    let mut finals: std::collections::BTreeMap<usize, (torcus_crds::SigningRequestStatus, Duration)> =
        Default::default();
    let mut samples = Vec::new();
    let mut next_sample = started;
    let deadline = started + interval * u32::try_from(total).expect("count") + Duration::from_secs(180);
    while finals.len() < total && tokio::time::Instant::now() < deadline {
        if tokio::time::Instant::now() >= next_sample {
            next_sample += Duration::from_secs(30);
            let depths = pool_depths(&ns, NAME).await;
            let rss: u64 = cluster_memory_kib(&ns, NAME, "VmRSS").iter().map(|(_, k)| k).max().copied().unwrap_or(0);
            samples.push((
                started.elapsed(),
                depths.iter().sum::<u64>(),
                depths.iter().min().copied(),
                finals.len(),
                rss,
            ));
        }
        let wait = next_sample.min(deadline);
        let Ok(Ok(Some(sr))) = tokio::time::timeout_at(wait, events.try_next()).await else { continue };
        let status = sr.status.clone().unwrap_or_default();
        let index = sr.name_any().strip_prefix("steady-").and_then(|i| i.parse().ok());
        if let Some(index) = index
            && status.phase.is_some_and(SigningPhase::is_final)
            && !finals.contains_key(&index)
        {
            finals.insert(index, (status, started.elapsed()));
        }
    }
    let created = creator.await.expect("creator");
    let completed: Vec<_> = finals.values().filter(|(s, _)| s.phase == Some(SigningPhase::Completed)).collect();
    let presigned = completed.iter().filter(|(s, _)| s.protocol == Some(SigningProtocol::Presigned)).count();
    let latency: Vec<Duration> =
        finals.iter().filter_map(|(i, (_, seen))| Some(seen.saturating_sub(*created.get(*i)?))).collect();
    let node: Vec<Duration> =
        completed.iter().filter_map(|(s, _)| s.timings.as_ref()?.signing_ms).map(Duration::from_millis).collect();
    let span = finals.values().map(|(_, at)| *at).max().unwrap_or_default();
    let sessions = sign_sessions(&ns, NAME).await - sessions_before;
    let peak_nodes = cluster_memory_kib(&ns, NAME, "VmHWM");
    let peak_self = memory_kib("self", "VmHWM").unwrap_or(0);
    ns.finish().await.expect("cleanup");

    let mut notes = vec![
        format!(
            "sustained: {total} payload requests at {rate} per second over {minutes} minutes: {} completed, {} final otherwise, {} not final by the deadline",
            completed.len(),
            finals.len() - completed.len(),
            total - finals.len()
        ),
        format!(
            "sustained: {:.3} signatures per second (completed / time from the first creation to the last final)",
            completed.len() as f64 / span.as_secs_f64()
        ),
        format!("sustained: served from presignatures: {presigned} of {} completed", completed.len()),
        format!("sustained: signing sessions completed on the nodes: {sessions} (two per request expected: {})", 2 * completed.len()),
        "sustained: every 30 s — time s | presignatures held (sum over members) | least in a pool | requests final | largest node RSS MiB".to_owned(),
    ];
    for (at, sum, min, done, rss) in samples {
        notes.push(format!(
            "  {:>6.0} | {sum:>4} | {:>3} | {done:>5} | {:.1}",
            at.as_secs_f64(),
            min.map_or("-".to_owned(), |m| m.to_string()),
            rss as f64 / 1024.0
        ));
    }
    for (pod, kib) in peak_nodes {
        notes.push(format!(
            "sustained: peak resident memory of node {pod}: {:.1} MiB of its 512 MiB limit",
            kib as f64 / 1024.0
        ));
    }
    notes.push(format!(
        "sustained: peak resident memory of this process (operator, API clients, the harness): {:.1} MiB (the chart limits the operator to 256 MiB)",
        peak_self as f64 / 1024.0
    ));
    let rows = vec![
        ("sustained: creation → seen final".to_owned(), Stats(latency)),
        ("sustained: node-only signing".to_owned(), Stats(node)),
    ];
    (rows, notes)
}

/// Signing sessions the nodes of `cluster` completed, summed (each
/// participant counts its own).
async fn sign_sessions(ns: &TestNamespace, cluster: &str) -> f64 {
    let mut total = 0.0;
    for i in 0..3 {
        if let Ok((_, text)) = ns.node_plain_get(cluster, i, "/metrics").await {
            total += text
                .lines()
                .filter(|l| l.starts_with("torcus_node_sessions_total") && l.contains(r#"kind="sign""#))
                .filter(|l| l.contains(r#"outcome="completed""#))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>();
        }
    }
    total
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

fn request(name: &str, cluster: &str, i: usize, kind: Kind) -> SigningRequest {
    let what = match kind {
        Kind::Payload => serde_json::json!({"payload": hex::encode(format!("{name} {i}"))}),
        Kind::Digest => {
            let mut digest = [0u8; 32];
            digest[..8].copy_from_slice(&(i as u64).to_be_bytes());
            digest[8..8 + name.len().min(24)].copy_from_slice(&name.as_bytes()[..name.len().min(24)]);
            serde_json::json!({"digest": hex::encode(digest)})
        }
    };
    let mut spec = serde_json::json!({"cluster": cluster});
    if let (Some(spec), Some(what)) = (spec.as_object_mut(), what.as_object()) {
        spec.extend(what.clone());
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "mpc.torcus.io/v1alpha1",
        "kind": "SigningRequest",
        "metadata": {"name": name},
        "spec": spec,
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
    kind: Kind,
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
        let name = format!("{cluster}-{kind:?}-{i}").to_lowercase();
        let started = Instant::now();
        srs.create(&PostParams::default(), &request(&name, cluster, i, kind)).await.expect("create request");
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
        let expected = match (kind, warm_cluster) {
            (Kind::Payload, Some(_)) => SigningProtocol::Presigned,
            _ => SigningProtocol::Full,
        };
        assert_eq!(status.protocol, Some(expected), "{name}: {:?}", status.protocol_reason);
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
            let mut sr = request(&name, cluster, 1000 + i, Kind::Payload);
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
        let path = format!("/p2p/session/{session}");
        let Ok((200, body)) = ns.node_api_get(cluster, initiator, &path).await else {
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
        let Ok((200, body)) = ns.node_api_get(cluster, i, "/p2p/presignatures").await else {
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
        if let Ok((_, text)) = ns.node_plain_get(cluster, i, "/metrics").await {
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
