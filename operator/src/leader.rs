//! Leader election: one replica leads (a Lease), and labels its own pod so
//! that the chart's Service sends node registry and relay traffic to it
//! only; a replica starting in a crashed leader's pod clears that label.

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Label the leader puts on its own pod; the chart's Service selects it, so
/// the node registry and the relay are reached only on the leader.
pub const LEADER_LABEL: &str = "mpc.torcus.io/leader";

/// This replica's pod, when it runs in one (its name is the instance).
pub fn own_pod(instance: &str, pod_name: Option<&str>, namespace: &str) -> Option<(String, String)> {
    let pod = pod_name.filter(|p| *p == instance)?;
    Some((namespace.to_owned(), pod.to_owned()))
}

/// Removes [`LEADER_LABEL`] from every pod of this release in `ns` but
/// `own` (the release is told by `own`'s instance and name labels): the
/// lease is this replica's now, and a leader that crashed left its label.
pub async fn unlabel_former_leaders(client: &Client, ns: &str, own: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut selector = format!("{LEADER_LABEL}=true");
    match pods.get(own).await {
        Ok(pod) => {
            for label in ["app.kubernetes.io/instance", "app.kubernetes.io/name"] {
                if let Some(value) = pod.metadata.labels.as_ref().and_then(|l| l.get(label)) {
                    selector.push_str(&format!(",{label}={value}"));
                }
            }
        }
        Err(error) => {
            warn!(%error, "could not read own pod; leaving other pods' leader labels alone");
            return;
        }
    }
    match pods.list(&kube::api::ListParams::default().labels(&selector)).await {
        Ok(list) => {
            for pod in list.items.iter().filter(|p| kube::ResourceExt::name_any(*p) != own) {
                label_leader(client, ns, &kube::ResourceExt::name_any(pod), false).await;
            }
        }
        Err(error) => warn!(%error, "could not list pods labelled as leader"),
    }
}

/// Sets or removes [`LEADER_LABEL`] on pod `ns/pod`; a failure is logged
/// (the Service then has no endpoint until the next leader labels itself).
pub async fn label_leader(client: &Client, ns: &str, pod: &str, leader: bool) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let value = if leader { serde_json::json!("true") } else { serde_json::Value::Null };
    let patch = serde_json::json!({"metadata": {"labels": {LEADER_LABEL: value}}});
    match pods.patch(pod, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await {
        Ok(_) => info!(%pod, leader, "labelled own pod"),
        Err(error) => warn!(%pod, %error, "could not label own pod as leader"),
    }
}

/// Waits for the Lease `lease_name` in `lease_namespace` as `instance`:
/// `None` when `stop` comes first, else the task that cancels `stop` when
/// leadership is lost, and releases the Lease when it ends (so a standby
/// takes over without waiting for it to expire).
pub async fn lead(
    client: &Client,
    lease_name: &str,
    lease_namespace: &str,
    instance: &str,
    stop: &CancellationToken,
) -> Result<Option<JoinHandle<()>>, kube_lease_manager::LeaseManagerError> {
    let lease = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), lease_name)
        .with_namespace(lease_namespace)
        .with_identity(instance)
        .with_duration(15)
        .with_grace(5)
        .build()
        .await?;
    let (mut leader, lease_task) = lease.watch().await;
    info!(lease = %lease_name, %instance, "waiting for leadership");
    let acquired = tokio::select! {
        result = leader.wait_for(|is_leader| *is_leader) => result.is_ok(),
        () = stop.cancelled() => false,
    };
    if !acquired {
        // Closing the channel makes the lease task release the lease and end.
        drop(leader);
        let _ = lease_task.await;
        return Ok(None);
    }
    info!("acquired leadership");
    let lost = stop.clone();
    Ok(Some(tokio::spawn(async move {
        tokio::select! {
            _ = leader.wait_for(|is_leader| !*is_leader) => {
                warn!("lost leadership; stopping");
                lost.cancel();
            }
            () = lost.cancelled() => {}
        }
        // Closing the channel makes the lease task release the lease
        // and end, so a standby takes over without waiting for expiry.
        drop(leader);
        let _ = lease_task.await;
    })))
}
