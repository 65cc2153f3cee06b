//! How the operator talks to the API server, for every controller: one field
//! manager and server-side apply, Events that never fail a reconcile,
//! zeroized Secrets, and what a pod's readiness is.

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Secret};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use torcus_crds::MpcCluster;
use tracing::warn;
use zeroize::Zeroize;

use crate::Result;

/// Field manager of everything the operator applies.
pub const FIELD_MANAGER: &str = "torcus-operator";

/// Zeroizes a Secret's data in place (the API types do not do it on drop).
pub fn scrub(secret: &mut Secret) {
    for value in secret.data.iter_mut().flat_map(|d| d.values_mut()) {
        value.0.zeroize();
    }
}

/// Server-side applies `obj` under the operator's field manager and returns
/// what the API server stored.
pub async fn apply<K>(client: &Client, ns: &str, obj: &K) -> Result<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = obj.meta().name.clone().unwrap_or_default();
    Ok(api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(obj)).await?)
}

/// Publishes an Event; a failure to publish is logged, never fatal.
pub async fn event(recorder: &Recorder, mpc: &MpcCluster, type_: EventType, reason: &str, action: &str, note: String) {
    event_about(recorder, mpc, type_, reason, action, note, None).await;
}

/// Publishes an Event about `mpc` that names a second object.
pub async fn event_about(
    recorder: &Recorder,
    mpc: &MpcCluster,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
    secondary: Option<ObjectReference>,
) {
    let ev = Event { type_, reason: reason.to_owned(), note: Some(note), action: action.to_owned(), secondary };
    if let Err(error) = recorder.publish(&ev, &mpc.object_ref(&())).await {
        warn!(%error, reason, "could not publish event");
    }
}

/// Whether a pod's `Ready` condition is true.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
