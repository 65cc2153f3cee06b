//! The process kubelet as a StatefulSet sees it: on the shared control
//! plane, a pod of a StatefulSet is bound, started with its volumes and
//! environment, probed, restarted, re-created with the same IP and volume,
//! and held down; the pod's program is `torcus-e2e-podstub`, which answers
//! the probes and tells what it sees.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use torcus_e2e::kubelet;
use torcus_e2e::testing::{TestNamespace, eventually};

const WAIT: Duration = Duration::from_secs(60);
const POD: &str = "stub-0-0";

fn condition(pod: &Pod, kind: &str) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == kind && c.status == "True"))
}

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .map_or(-1, |c| c.restart_count)
}

fn pod_ip(pod: &Pod) -> Option<IpAddr> {
    pod.status.as_ref()?.pod_ip.as_ref()?.parse().ok()
}

/// The pod once it runs and is ready (and `extra` holds).
async fn ready_pod(pods: &Api<Pod>, what: &str, extra: impl Fn(&Pod) -> bool) -> anyhow::Result<Pod> {
    eventually(what, WAIT, || async {
        let pod = pods.get_opt(POD).await?;
        Ok(pod.filter(|p| {
            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") && condition(p, "Ready") && extra(p)
        }))
    })
    .await
}

async fn get(ip: IpAddr, path: &str) -> anyhow::Result<String> {
    let (code, body) = kubelet::http_get(SocketAddr::new(ip, 8080), path, Duration::from_secs(5)).await?;
    anyhow::ensure!(code == 200, "GET {path}: HTTP {code}: {body}");
    Ok(body)
}

/// A file as the pod's process reads it.
async fn file(ip: IpAddr, path: &str) -> anyhow::Result<String> {
    get(ip, &format!("/file{path}")).await
}

fn stateful_set() -> anyhow::Result<StatefulSet> {
    let mount = |name: &str, path: &str| json!({ "name": name, "mountPath": path });
    let probe =
        |path: &str| json!({ "httpGet": { "path": path, "port": "http" }, "periodSeconds": 5, "failureThreshold": 2 });
    Ok(serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": { "name": "stub-0" },
        "spec": {
            "serviceName": "stub",
            "replicas": 1,
            "selector": { "matchLabels": { "app": "stub" } },
            "template": {
                "metadata": { "labels": { "app": "stub" } },
                "spec": {
                    "automountServiceAccountToken": false,
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": "node",
                        "image": "ghcr.io/torcus/torcus-node:test",
                        "args": ["serve", "--config", "/etc/torcus/config/cluster.json", "--state=/var/lib/torcus/state"],
                        "env": [
                            { "name": "TORCUS_TLS_DIR", "value": "/etc/torcus/tls" },
                            { "name": "TORCUS_TRUST_DIR", "value": "/etc/torcus/trust" },
                            { "name": "TORCUS_DATA_DIR", "value": "/var/lib/torcus" },
                            { "name": "POD_IP", "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } } },
                            { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                            { "name": "GREETING", "value": "hello $(POD_NAME)" },
                        ],
                        "ports": [{ "name": "http", "containerPort": 8080 }],
                        "readinessProbe": probe("/readyz"),
                        "livenessProbe": probe("/healthz"),
                        "volumeMounts": [
                            mount("tls", "/etc/torcus/tls"),
                            mount("trust", "/etc/torcus/trust"),
                            mount("config", "/etc/torcus/config"),
                            mount("data", "/var/lib/torcus"),
                            mount("tmp", "/tmp"),
                        ],
                    }],
                    "volumes": [
                        { "name": "tls", "secret": { "secretName": "tls", "defaultMode": 0o400 } },
                        { "name": "trust", "projected": { "sources": [
                            { "secret": { "name": "tls", "items": [{ "key": "ca.crt", "path": "ca.crt" }] } },
                            { "configMap": { "name": "config", "items": [{ "key": "cluster.json", "path": "bundle/cluster.json" }] } },
                            { "secret": { "name": "missing", "optional": true } },
                        ] } },
                        { "name": "config", "configMap": { "name": "config" } },
                        { "name": "tmp", "emptyDir": {} },
                    ],
                },
            },
            "volumeClaimTemplates": [{
                "metadata": { "name": "data" },
                "spec": { "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": "1Gi" } } },
            }],
        },
    }))?)
}

#[tokio::test]
async fn runs_a_stateful_set_pod_like_a_node() -> anyhow::Result<()> {
    let mut ns = TestNamespace::new("kubelet").await?;
    ns.start_kubelet_with(env!("CARGO_BIN_EXE_torcus-e2e-podstub").into()).await?;
    let pods: Api<Pod> = ns.api();
    let secrets: Api<Secret> = ns.api();
    let post = PostParams::default();

    let secret = json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "tls" },
        "stringData": { "tls.crt": "cert-v1", "ca.crt": "ca-v1" },
    });
    secrets.create(&post, &serde_json::from_value(secret)?).await?;
    let config = json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "config" },
        "data": { "cluster.json": "{\"parties\":3}" },
    });
    ns.api::<ConfigMap>().create(&post, &serde_json::from_value(config)?).await?;
    ns.api::<StatefulSet>().create(&post, &stateful_set()?).await?;

    // Bound to the kubelet's Node, running and ready on a loopback pod IP.
    let pod = ready_pod(&pods, "the pod running and ready", |_| true).await?;
    let node_name = ns.kubelet().node_name().to_owned();
    assert_eq!(pod.spec.as_ref().and_then(|s| s.node_name.as_deref()), Some(node_name.as_str()));
    let node = Api::<Node>::all(ns.client.clone()).get(&node_name).await?;
    let node_ready = node.status.and_then(|s| s.conditions).unwrap_or_default();
    assert!(node_ready.iter().any(|c| c.type_ == "Ready" && c.status == "True"), "{node_ready:?}");
    let ip = pod_ip(&pod).expect("a pod IP");
    assert!(matches!(ip, IpAddr::V4(v4) if v4.octets()[0] == 127 && v4.octets()[1] >= 100), "pod IP {ip}");
    assert_eq!(ns.kubelet().pod_ip(&ns.name, POD), Some(ip));
    assert_eq!(pod.status.as_ref().and_then(|s| s.host_ip.as_deref()), Some("127.0.0.1"));
    assert_eq!(restarts(&pod), 0);

    // The process sees its environment with container paths mapped to the
    // volumes, and the volumes' files.
    let info: Value = serde_json::from_str(&get(ip, "/info").await?)?;
    let env = |name: &str| info["env"][name].as_str().unwrap_or_default().to_owned();
    assert_eq!(env("POD_IP"), ip.to_string());
    assert_eq!(env("POD_NAME"), POD);
    assert_eq!(env("GREETING"), format!("hello {POD}"));
    assert_eq!(env("TORCUS_DIE_WITH_PARENT"), "1");
    assert!(env("TORCUS_TEST_PRIMES_FIXTURE").ends_with("primes.json"));
    // No cluster DNS: the pod's headless-Service name is in the kubelet's hosts file.
    let hosts = std::fs::read_to_string(env("TORCUS_HOSTS_FILE"))?;
    assert!(hosts.contains(&format!("{ip} {POD}.stub.{}.svc.cluster.local ", ns.name)), "{hosts}");
    let (tls, trust, data) = (env("TORCUS_TLS_DIR"), env("TORCUS_TRUST_DIR"), env("TORCUS_DATA_DIR"));
    assert!(!tls.starts_with("/etc/torcus") && !data.starts_with("/var/lib"), "{info}");
    let args: Vec<String> = serde_json::from_value(info["args"].clone())?;
    assert_eq!(args[1..3], ["serve".to_owned(), "--config".to_owned()], "{args:?}");
    assert_eq!(args[4], format!("--state={data}/state"));
    assert_eq!(file(ip, &args[3]).await?, "{\"parties\":3}");
    assert_eq!(file(ip, &format!("{tls}/tls.crt")).await?, "cert-v1");
    assert_eq!(file(ip, &format!("{trust}/ca.crt")).await?, "ca-v1");
    assert_eq!(file(ip, &format!("{trust}/bundle/cluster.json")).await?, "{\"parties\":3}");
    assert_eq!(file(ip, &format!("{data}/boots")).await?, "boot\n");

    // A rotated Secret shows up in the running pod's files.
    let rotate = json!({ "stringData": { "tls.crt": "cert-v2" } });
    secrets.patch("tls", &PatchParams::default(), &Patch::Merge(&rotate)).await?;
    eventually("the rotated certificate in the pod", WAIT, || async {
        Ok((file(ip, &format!("{tls}/tls.crt")).await? == "cert-v2").then_some(()))
    })
    .await?;

    // Readiness is what the probe answers.
    std::fs::write(format!("{data}/unready"), "")?;
    eventually("the pod not ready while its probe fails", WAIT, || async {
        let pod = pods.get(POD).await?;
        Ok((!condition(&pod, "Ready") && restarts(&pod) == 0).then_some(()))
    })
    .await?;
    std::fs::remove_file(format!("{data}/unready"))?;
    ready_pod(&pods, "the pod ready again", |_| true).await?;

    // Deleted, the pod is stopped gracefully and re-created by the
    // StatefulSet controller with the same IP and the same data.
    let uid = pod.metadata.uid.clone();
    pods.delete(POD, &DeleteParams::default()).await?;
    let pod = ready_pod(&pods, "the re-created pod running and ready", |p| p.metadata.uid != uid).await?;
    assert_eq!(pod_ip(&pod), Some(ip));
    let info: Value = serde_json::from_str(&get(ip, "/info").await?)?;
    assert_eq!(info["env"]["TORCUS_DATA_DIR"].as_str(), Some(data.as_str()));
    assert_eq!(file(ip, &format!("{data}/boots")).await?, "boot\nboot\n");
    let log = std::fs::read_to_string(ns.kubelet().log_path(&ns.name, POD))?;
    assert!(log.contains("podstub: stopped by SIGTERM"), "{log}");

    // A crash restarts the process.
    ns.kubelet().kill(&ns.name, POD)?;
    let pod = ready_pod(&pods, "the pod restarted once and ready", |p| restarts(p) == 1).await?;
    let status = pod.status.and_then(|s| s.container_statuses).unwrap_or_default();
    let last = status.first().and_then(|c| c.last_state.as_ref()?.terminated.as_ref()).map(|t| t.exit_code);
    assert_eq!(last, Some(137), "{status:?}");

    // Held down, it stays down and unready; released, it comes back.
    ns.kubelet().hold_down(&ns.name, POD, true);
    eventually("the held-down pod terminated and not ready", WAIT, || async {
        let pod = pods.get(POD).await?;
        let terminated = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref()?.first()?.state.as_ref()?.terminated.as_ref())
            .is_some();
        Ok((terminated && !condition(&pod, "Ready")).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(get(ip, "/healthz").await.is_err(), "a held-down pod answers");
    assert!(!condition(&pods.get(POD).await?, "Ready"));
    ns.kubelet().hold_down(&ns.name, POD, false);
    ready_pod(&pods, "the released pod ready", |p| restarts(p) == 2).await?;

    // Other images cannot run here, and say so.
    let other = json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "other" },
        "spec": { "automountServiceAccountToken": false, "containers": [{ "name": "c", "image": "busybox" }] },
    });
    pods.create(&post, &serde_json::from_value(other)?).await?;
    eventually("the busybox pod waiting with ImageNotRunnable", WAIT, || async {
        let pod = pods.get("other").await?;
        let reason =
            pod.status.and_then(|s| s.container_statuses?.first()?.state.as_ref()?.waiting.as_ref()?.reason.clone());
        Ok((reason.as_deref() == Some("ImageNotRunnable")).then_some(()))
    })
    .await?;

    ns.finish().await
}
