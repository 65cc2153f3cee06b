//! The Node object: registration, status and heartbeats.

use super::*;

pub(super) async fn register_node(shared: &Shared) -> anyhow::Result<()> {
    let name = &shared.config.node_name;
    let node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": arch(),
                "torcus.io/process-kubelet": "true",
            },
        },
        "spec": {},
    });
    let nodes: Api<Node> = Api::all(shared.client.clone());
    nodes.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(node)).await?;
    patch_node_status(shared).await
}

/// The architecture as Kubernetes names it.
pub(super) fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

pub(super) async fn patch_node_status(shared: &Shared) -> anyhow::Result<()> {
    let name = &shared.config.node_name;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let memory_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find(|l| l.starts_with("MemTotal:"))?.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(8 << 20);
    let resources = json!({
        "cpu": cpus.to_string(),
        "memory": format!("{memory_kib}Ki"),
        "pods": "110",
        "ephemeral-storage": "100Gi",
    });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let status = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": name },
        "status": {
            "conditions": [{
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "torcus process kubelet is posting ready status",
                "lastHeartbeatTime": now(),
                "lastTransitionTime": shared.started,
            }],
            "addresses": [
                { "type": "InternalIP", "address": HOST_IP },
                { "type": "Hostname", "address": name },
            ],
            "capacity": resources,
            "allocatable": resources,
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": kernel.trim(),
                "osImage": "torcus process kubelet",
                "containerRuntimeVersion": concat!("torcus-kubelet://", env!("CARGO_PKG_VERSION")),
                "kubeletVersion": concat!("v0.0.0-torcus-", env!("CARGO_PKG_VERSION")),
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": arch(),
            },
        },
    });
    let nodes: Api<Node> = Api::all(shared.client.clone());
    nodes.patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(status)).await?;
    Ok(())
}

/// Keeps the Node's Ready condition fresh.
pub(super) async fn heartbeat(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(HEARTBEAT) => {}
        }
        if let Err(e) = patch_node_status(&shared).await {
            warn!(error = format!("{e:#}"), "node heartbeat failed");
        }
    }
}
