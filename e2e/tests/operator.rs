//! The operator against a real API server: CRDs, admission, children,
//! self-healing, garbage collection, status, renewal and leader election.
//! Each test has its own namespace and its own operator.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use torcus_certs::{OffsetDateTime, Role};
use torcus_contract::ClusterConfig;
use torcus_crds::{ClusterPhase, MpcCluster, SigningRequest};
use torcus_e2e::testing::{TestNamespace, eventually};

const WAIT: Duration = Duration::from_secs(60);

fn cluster(name: &str, nodes: u16, threshold: u16) -> MpcCluster {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "mpc.torcus.io/v1alpha1",
        "kind": "MpcCluster",
        "metadata": {"name": name},
        "spec": {"nodes": nodes, "threshold": threshold},
    }))
    .unwrap()
}

fn secret_text(s: &Secret, key: &str) -> String {
    String::from_utf8(s.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

async fn wait_for_status(ns: &TestNamespace, name: &str) -> MpcCluster {
    let api: Api<MpcCluster> = ns.api();
    eventually("cluster status with certificates", WAIT, || async {
        let mpc = api.get(name).await?;
        let ok = mpc.status.as_ref().is_some_and(|s| {
            s.conditions.iter().any(|c| c.type_ == "CertificatesReady" && c.status == "True")
                && s.grant_public_key.is_some()
        });
        Ok(ok.then_some(mpc))
    })
    .await
    .unwrap()
}

/// Waits for a Warning Event with `reason` in the test's namespace.
async fn wait_warning(ns: &TestNamespace, reason: &str) {
    let events: Api<Event> = ns.api();
    eventually(&format!("a {reason} warning"), WAIT, || async {
        let list = events.list(&ListParams::default()).await?;
        Ok(list
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some(reason) && e.type_.as_deref() == Some("Warning"))
            .then_some(()))
    })
    .await
    .unwrap();
}

/// Waits until cluster `vault` is not Ready because Secret `secret` is not
/// the operator's.
async fn wait_secret_refused(clusters: &Api<MpcCluster>, secret: &str) {
    eventually(&format!("the cluster to refuse the planted {secret}"), WAIT, || async {
        let mpc = clusters.get("vault").await?;
        let ready = mpc.status.iter().flat_map(|s| &s.conditions).find(|c| c.type_ == "Ready").cloned();
        Ok(ready.filter(|c| c.status == "False" && c.reason == "SecretNotOwned" && c.message.contains(secret)))
    })
    .await
    .unwrap();
}

/// An error's message as the API server wrote it.
fn api_message(e: kube::Error) -> String {
    match e {
        kube::Error::Api(status) => status.message.clone(),
        other => panic!("expected a refusal from the API server, got {other:?}"),
    }
}

#[tokio::test]
async fn admission_refuses_bad_objects_with_readable_messages() {
    let ns = TestNamespace::new("admission").await.unwrap();
    let clusters: Api<MpcCluster> = ns.api();
    let pp = PostParams::default();

    let e = clusters.create(&pp, &cluster("four-of-three", 3, 4)).await.unwrap_err();
    assert!(api_message(e).contains("threshold must not be greater than nodes"));
    let e = clusters.create(&pp, &cluster("alone", 1, 1)).await.unwrap_err();
    assert!(api_message(e).contains("should be greater than or equal to 2"));
    let e = clusters.create(&pp, &cluster("huge", 40, 2)).await.unwrap_err();
    assert!(api_message(e).contains("should be less than or equal to 16"));
    // Names prefix pods, Services and Secrets, so they must fit those rules.
    let e = clusters.create(&pp, &cluster("has.dots", 3, 2)).await.unwrap_err();
    assert!(api_message(e).contains("name must be a DNS label"));
    let e = clusters.create(&pp, &cluster(&"x".repeat(41), 3, 2)).await.unwrap_err();
    assert!(api_message(e).contains("name must be a DNS label"));
    let mut short = cluster("short-lived", 3, 2);
    short.spec.certificates.validity = "30s".into();
    short.spec.certificates.renew_before = "10s".into();
    let e = clusters.create(&pp, &short).await.unwrap_err();
    assert!(api_message(e).contains("validity must be at least 1m"));

    clusters.create(&pp, &cluster("good", 3, 2)).await.unwrap();
    for (patch, expected) in [
        (serde_json::json!({"spec": {"threshold": 3}}), "threshold is immutable"),
        (serde_json::json!({"spec": {"nodes": 5}}), "nodes is immutable"),
        (serde_json::json!({"spec": {"keys": ["other"]}}), "keys may be added but not removed"),
        (
            serde_json::json!({"spec": {"certificates": {"validity": "1h", "renewBefore": "2h"}}}),
            "renewBefore must be shorter",
        ),
        (serde_json::json!({"spec": {"storage": {"size": "5Gi"}}}), "storage is immutable"),
        (
            serde_json::json!({"spec": {"policy": {"rateLimits": [{"scope": "label", "requests": 1, "period": "1m"}]}}}),
            "label is required with scope label",
        ),
        (
            serde_json::json!({"spec": {"policy": {"rateLimits": [{"scope": "cluster", "label": "x", "requests": 1, "period": "1m"}]}}}),
            "label is required with scope label, and allowed only with it",
        ),
    ] {
        let e = clusters.patch("good", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap_err();
        let message = api_message(e);
        assert!(message.contains(expected), "{message}");
    }
    // Adding a key is allowed.
    let added = serde_json::json!({"spec": {"keys": ["default", "treasury"]}});
    clusters.patch("good", &PatchParams::default(), &Patch::Merge(&added)).await.unwrap();

    // What a person sees from kubectl.
    let out = ns
        .kubectl()
        .args(["patch", "mpc", "good", "--type=merge", "-p", r#"{"spec":{"threshold":3}}"#])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("threshold is immutable"));

    let requests: Api<SigningRequest> = ns.api();
    let request = |spec: serde_json::Value| -> SigningRequest {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "mpc.torcus.io/v1alpha1", "kind": "SigningRequest",
            "metadata": {"name": "r"}, "spec": spec,
        }))
        .unwrap()
    };
    let digest = "ab".repeat(32);
    for (spec, expected) in [
        (serde_json::json!({"cluster": "good", "digest": "zz"}), "spec.digest"),
        (serde_json::json!({"cluster": "good", "digest": digest, "payload": "00"}), "exactly one of digest or payload"),
        (serde_json::json!({"cluster": "good"}), "exactly one of digest or payload"),
        (serde_json::json!({"cluster": "good", "digest": digest, "hash": "sha256"}), "hash applies only to payload"),
        (serde_json::json!({"cluster": "good", "digest": digest, "derivationPath": "m/0'/1"}), "spec.derivationPath"),
        (serde_json::json!({"cluster": "good", "digest": digest, "derivationPath": "m/2147483648"}), "non-hardened"),
        (serde_json::json!({"cluster": "good", "payload": "zz"}), "payload must be hex"),
        (serde_json::json!({"cluster": "good", "payload": "abc"}), "payload must be hex"),
        (serde_json::json!({"cluster": "good", "payload": "aGk", "payloadEncoding": "base64"}), "payload must be hex"),
        (serde_json::json!({"cluster": "good", "digest": null, "payload": null}), "exactly one of digest or payload"),
        (
            serde_json::json!({"cluster": "good", "clusterNamespace": "Not_A_Namespace", "digest": digest}),
            "spec.clusterNamespace",
        ),
    ] {
        let e = requests.create(&pp, &request(spec.clone())).await.unwrap_err();
        let message = api_message(e);
        assert!(message.contains(expected), "{spec}: {message}");
    }
    requests
        .create(&pp, &request(serde_json::json!({"cluster": "good", "digest": digest, "derivationPath": "m/44/60/0"})))
        .await
        .unwrap();
    // An explicit null is the same as leaving the field out: no way around
    // "exactly one of digest or payload".
    let mut r = request(serde_json::json!({"cluster": "good", "digest": digest, "payload": null}));
    r.metadata.name = Some("null-payload".into());
    let stored = requests.create(&pp, &r).await.unwrap();
    assert_eq!(stored.spec.payload, None);
    for (name, spec) in [
        ("hex", serde_json::json!({"cluster": "good", "payload": "0xdeadbeef", "hash": "keccak256"})),
        ("b64", serde_json::json!({"cluster": "good", "payload": "aGk=", "payloadEncoding": "base64"})),
    ] {
        let mut r = request(spec);
        r.metadata.name = Some(name.into());
        requests.create(&pp, &r).await.unwrap();
    }
    let changed = serde_json::json!({"spec": {"digest": "cd".repeat(32)}});
    let e = requests.patch("r", &PatchParams::default(), &Patch::Merge(&changed)).await.unwrap_err();
    assert!(api_message(e).contains("spec is immutable"));

    // Every example the README points to is accepted as it is written
    // (cross-namespace.yaml creates its own namespaces: the sandbox test
    // applies it).
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().is_some_and(|n| n == "cross-namespace.yaml") {
            continue;
        }
        let out = ns.kubectl().args(["apply", "--dry-run=server", "-f"]).arg(&path).output().unwrap();
        assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
        checked += 1;
    }
    assert!(checked >= 5, "examples/ holds the cluster, policy and request examples");
    ns.finish().await.unwrap();
}

#[tokio::test]
async fn operator_creates_every_child_with_the_right_contents() {
    let mut ns = TestNamespace::new("children").await.unwrap();
    ns.start_operator();
    let clusters: Api<MpcCluster> = ns.api();
    clusters.create(&PostParams::default(), &cluster("vault", 5, 3)).await.unwrap();
    let mpc = wait_for_status(&ns, "vault").await;
    let status = mpc.status.clone().unwrap();
    let uid = mpc.uid().unwrap();
    let owned_by_cluster = |meta: &kube::api::ObjectMeta| {
        meta.owner_references
            .iter()
            .flatten()
            .any(|o| o.uid == uid && o.kind == "MpcCluster" && o.controller == Some(true))
    };

    // Certificates: every node certificate verifies against the CA Secret and names its own party.
    let secrets: Api<Secret> = ns.api();
    let ca = secrets.get("vault-ca").await.unwrap();
    assert!(owned_by_cluster(&ca.metadata));
    let bundle = secret_text(&ca, "ca.crt");
    assert!(bundle.contains(secret_text(&ca, "tls.crt").trim()));
    let now = OffsetDateTime::now_utc();
    for index in 0..5u16 {
        let s = secrets.get(&format!("vault-node-{index}")).await.unwrap();
        assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
        assert!(owned_by_cluster(&s.metadata));
        let cert = secret_text(&s, "tls.crt");
        torcus_certs::verify_leaf(&cert, &bundle, now).unwrap();
        let info = torcus_certs::inspect(&cert).unwrap();
        let identity = info.identity.unwrap();
        assert_eq!(identity.role, Role::Node { party_index: index });
        assert_eq!((identity.namespace.as_str(), identity.cluster.as_str()), (ns.name.as_str(), "vault"));
        assert!(info.dns_names.contains(&format!("vault-{index}-0.vault-nodes.{}.svc.cluster.local", ns.name)));
        assert_eq!(secret_text(&s, "ca.crt"), bundle);
    }
    let operator = secrets.get("vault-operator-client").await.unwrap();
    torcus_certs::verify_leaf(&secret_text(&operator, "tls.crt"), &bundle, now).unwrap();
    assert_eq!(
        torcus_certs::inspect(&secret_text(&operator, "tls.crt")).unwrap().identity.unwrap().role,
        Role::Operator
    );

    // Grant key: status shows the public half of the Secret's key.
    let grant = secrets.get("vault-grant-key").await.unwrap();
    let seed: [u8; 32] = grant.data.as_ref().unwrap()["ed25519.seed"].0.as_slice().try_into().unwrap();
    let public = hex::encode(ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key().as_bytes());
    assert_eq!(status.grant_public_key.as_deref(), Some(public.as_str()));

    // Configuration: every peer, the transport, the grant key.
    let cm: Api<ConfigMap> = ns.api();
    let cm = cm.get("vault-config").await.unwrap();
    assert!(owned_by_cluster(&cm.metadata));
    let config = ClusterConfig::from_json(cm.data.unwrap()["cluster.json"].as_bytes()).unwrap();
    assert_eq!((config.nodes, config.threshold, config.transport.as_str()), (5, 3, "quic"));
    assert_eq!(config.grant_public_key, public);
    assert_eq!(config.peers.len(), 5);

    let svc: Api<Service> = ns.api();
    let svc = svc.get("vault-nodes").await.unwrap();
    assert_eq!(svc.spec.unwrap().cluster_ip.as_deref(), Some("None"));

    let sts: Api<StatefulSet> = ns.api();
    for index in 0..5 {
        let s = sts.get(&format!("vault-{index}")).await.unwrap();
        assert!(owned_by_cluster(&s.metadata));
        let pod = s.spec.unwrap().template.spec.unwrap();
        let secrets: Vec<String> = pod
            .volumes
            .unwrap()
            .into_iter()
            .flat_map(|v| v.projected.and_then(|p| p.sources).unwrap_or_default())
            .filter_map(|source| source.secret.map(|s| s.name))
            .collect();
        let own = [format!("vault-node-{index}"), format!("vault-node-{index}-keys")];
        assert_eq!(secrets, own, "each pod mounts only its own certificate and keys");
        assert_eq!(pod.containers[0].security_context.as_ref().unwrap().read_only_root_filesystem, Some(true));
    }

    let pdb: Api<PodDisruptionBudget> = ns.api();
    let pdb = pdb.get("vault").await.unwrap();
    assert_eq!(pdb.spec.unwrap().max_unavailable, Some(IntOrString::Int(2)));

    // Status conditions carry the generation they describe.
    assert_eq!(status.phase, Some(ClusterPhase::WaitingForNodes));
    assert_eq!(status.ready_nodes, 0);
    for t in ["Ready", "CertificatesReady", "NodesReady", "KeysReady", "Degraded"] {
        let c = status.conditions.iter().find(|c| c.type_ == t).unwrap_or_else(|| panic!("no {t} condition"));
        assert_eq!(c.observed_generation, Some(1), "{t}");
    }
    assert_eq!(status.nodes.len(), 5);
    assert_eq!(status.certificates.as_ref().unwrap().trusted_cas, 1);

    // Events tell what happened.
    let events: Api<Event> = ns.api();
    let reasons = eventually("events", WAIT, || async {
        let list = events.list(&ListParams::default()).await?;
        let reasons: Vec<String> = list
            .items
            .iter()
            .filter(|e| e.involved_object.name.as_deref() == Some("vault"))
            .filter_map(|e| e.reason.clone())
            .collect();
        Ok((reasons.iter().any(|r| r == "PhaseChanged")).then_some(reasons))
    })
    .await
    .unwrap();
    for r in ["GrantKeyCreated", "CertificateIssued", "PhaseChanged"] {
        assert!(reasons.iter().any(|x| x == r), "no {r} event in {reasons:?}");
    }

    // What a person sees.
    let out = ns.kubectl().args(["get", "mpc"]).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("NODES")
            && table.contains("THRESHOLD")
            && table.contains("TRANSPORT")
            && table.contains("PHASE"),
        "{table}"
    );
    assert!(table.contains("WaitingForNodes"), "{table}");
    ns.finish().await.unwrap();
}

#[tokio::test]
async fn deleted_children_come_back_without_cutting_trust() {
    let mut ns = TestNamespace::new("heal").await.unwrap();
    ns.start_operator();
    let clusters: Api<MpcCluster> = ns.api();
    clusters.create(&PostParams::default(), &cluster("demo", 3, 2)).await.unwrap();
    let before = wait_for_status(&ns, "demo").await.status.unwrap();
    let secrets: Api<Secret> = ns.api();
    let ca_before = secret_text(&secrets.get("demo-ca").await.unwrap(), "tls.crt");
    let node_before = secret_text(&secrets.get("demo-node-1").await.unwrap(), "tls.crt");

    // With the operator stopped, so no reconcile in flight puts back what it
    // read a moment before the deletion.
    ns.stop_operator().await.unwrap();
    let dp = DeleteParams::default();
    secrets.delete("demo-node-1", &dp).await.unwrap();
    ns.api::<StatefulSet>().delete("demo-2", &dp).await.unwrap();
    ns.api::<ConfigMap>().delete("demo-config", &dp).await.unwrap();
    ns.api::<PodDisruptionBudget>().delete("demo", &dp).await.unwrap();
    ns.api::<Service>().delete("demo-nodes", &dp).await.unwrap();
    ns.start_operator();

    eventually("deleted children to come back", WAIT, || async {
        let back = secrets.get_opt("demo-node-1").await?.is_some()
            && ns
                .api::<StatefulSet>()
                .get_opt("demo-2")
                .await?
                .is_some_and(|s| s.metadata.deletion_timestamp.is_none())
            && ns.api::<ConfigMap>().get_opt("demo-config").await?.is_some()
            && ns.api::<PodDisruptionBudget>().get_opt("demo").await?.is_some()
            && ns.api::<Service>().get_opt("demo-nodes").await?.is_some();
        Ok(back.then_some(()))
    })
    .await
    .unwrap();

    // A new certificate for node 1, under the same CA: nothing else had to change.
    let ca = secrets.get("demo-ca").await.unwrap();
    assert_eq!(secret_text(&ca, "tls.crt"), ca_before);
    let node = secret_text(&secrets.get("demo-node-1").await.unwrap(), "tls.crt");
    assert_ne!(node, node_before);
    torcus_certs::verify_leaf(&node, &secret_text(&ca, "ca.crt"), OffsetDateTime::now_utc()).unwrap();
    // The grant key was not touched.
    let after = clusters.get("demo").await.unwrap().status.unwrap();
    assert_eq!(after.grant_public_key, before.grant_public_key);

    // Losing the CA Secret makes a new CA, loudly, and keeps trusting the
    // old one, so nodes still on their old certificates are not cut off.
    let old_leaf = node;
    ns.stop_operator().await.unwrap();
    secrets.delete("demo-ca", &dp).await.unwrap();
    ns.start_operator();
    let new_ca = eventually("a new CA", WAIT, || async {
        Ok(secrets.get_opt("demo-ca").await?.map(|s| secret_text(&s, "tls.crt")).filter(|c| *c != ca_before))
    })
    .await
    .unwrap();
    let bundle = eventually("node 0 to carry the new bundle", WAIT, || async {
        let s = secrets.get("demo-node-0").await?;
        let bundle = secret_text(&s, "ca.crt");
        Ok(bundle.contains(new_ca.trim()).then_some(bundle))
    })
    .await
    .unwrap();
    let now = OffsetDateTime::now_utc();
    torcus_certs::verify_leaf(&old_leaf, &bundle, now).unwrap();
    torcus_certs::verify_leaf(&secret_text(&secrets.get("demo-node-0").await.unwrap(), "tls.crt"), &bundle, now)
        .unwrap();
    wait_warning(&ns, "CAReplaced").await;
    ns.finish().await.unwrap();
}

/// Whoever may create Secrets in the namespace plants a grant key it knows
/// before the cluster exists (and node keys later), to sign grants the nodes would
/// accept. The operator uses neither: the cluster says which Secret is not
/// its own, a Warning Event too, the refusal is counted, and no
/// configuration, StatefulSet or certificate comes from them. Deleted, the
/// operator makes its own, and the cluster comes up under that key.
#[tokio::test]
async fn planted_secrets_are_refused_and_never_reach_the_nodes() {
    use k8s_openapi::ByteString;
    let mut ns = TestNamespace::new("planted").await.unwrap();
    let secrets: Api<Secret> = ns.api();
    let seed = [0x42u8; 32];
    let planted_key = hex::encode(ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key().as_bytes());
    let planted = |name: &str, data: Vec<(&str, Vec<u8>)>| -> Secret {
        let mut secret: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"mpc.torcus.io/cluster": "vault"}},
            "type": "Opaque",
        }))
        .unwrap();
        secret.data = Some(data.into_iter().map(|(k, v)| (k.to_owned(), ByteString(v))).collect());
        secret
    };
    let grant_key =
        planted("vault-grant-key", vec![("ed25519.seed", seed.to_vec()), ("ed25519.pub", planted_key.clone().into())]);
    secrets.create(&PostParams::default(), &grant_key).await.unwrap();
    ns.start_operator();
    let clusters: Api<MpcCluster> = ns.api();
    clusters.create(&PostParams::default(), &cluster("vault", 3, 2)).await.unwrap();

    wait_secret_refused(&clusters, "vault-grant-key").await;
    wait_warning(&ns, "SecretNotOwned").await;
    let metrics = ns.operator_metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("torcus_untrusted_objects_refused_total{kind=\"secret\"}") && !l.ends_with(" 0")),
        "{metrics}"
    );
    // Nothing of it reached anything a node reads.
    let configs: Api<ConfigMap> = ns.api();
    if let Some(config) = configs.get_opt("vault-config").await.unwrap() {
        let json = &config.data.unwrap()["cluster.json"];
        assert!(!json.contains(&planted_key), "{json}");
    }
    assert!(ns.api::<StatefulSet>().list(&ListParams::default()).await.unwrap().items.is_empty());
    let mpc = clusters.get("vault").await.unwrap();
    assert_ne!(mpc.status.unwrap().grant_public_key.as_deref(), Some(planted_key.as_str()));
    // The planted Secret is left as it was: the operator does not take it over.
    let still = secrets.get("vault-grant-key").await.unwrap();
    assert!(still.metadata.owner_references.as_ref().is_none_or(Vec::is_empty));
    assert_eq!(secret_text(&still, "ed25519.pub"), planted_key);

    // A planted node keys Secret (a share encryption key and a TCP identity
    // the attacker knows) is refused the same way, once the grant key is
    // the operator's.
    let node_keys = planted("vault-node-1-keys", vec![("store.key", hex::encode([7u8; 32]).into())]);
    secrets.create(&PostParams::default(), &node_keys).await.unwrap();
    secrets.delete("vault-grant-key", &DeleteParams::default()).await.unwrap();
    wait_secret_refused(&clusters, "vault-node-1-keys").await;
    assert!(ns.api::<StatefulSet>().list(&ListParams::default()).await.unwrap().items.is_empty());

    // Gone: the operator makes its own, and the nodes get that key.
    secrets.delete("vault-node-1-keys", &DeleteParams::default()).await.unwrap();
    let mpc = wait_for_status(&ns, "vault").await;
    let own_key = mpc.status.unwrap().grant_public_key.unwrap();
    assert_ne!(own_key, planted_key);
    let config =
        eventually("the configuration", WAIT, || async { Ok(configs.get_opt("vault-config").await?) }).await.unwrap();
    let config: ClusterConfig = serde_json::from_str(&config.data.unwrap()["cluster.json"]).unwrap();
    assert_eq!(config.grant_public_key, own_key);
    let own = secrets.get("vault-grant-key").await.unwrap();
    assert!(own.metadata.owner_references.unwrap_or_default().iter().any(|o| o.controller == Some(true)));
    ns.finish().await.unwrap();
}

/// An owner reference is no proof: whoever can read the MpcCluster knows its
/// uid and can write one. Planted with it between the cluster's creation and
/// the operator's first look (a CA the attacker holds, a grant key it
/// knows), or written into the operator's own CA Secret later, key material
/// is still refused: it is not among the keys the operator recorded in
/// `status.secrets` before writing its own. A rogue CA written into a node's
/// TLS Secret is written over. The operator's own Secrets, by contrast, are
/// taken again by a restarted operator.
#[tokio::test]
async fn secrets_planted_with_a_forged_owner_reference_are_refused() {
    use k8s_openapi::ByteString;
    let mut ns = TestNamespace::new("forged-owner").await.unwrap();
    let secrets: Api<Secret> = ns.api();
    let clusters: Api<MpcCluster> = ns.api();
    // The cluster exists; no operator has looked at it yet.
    let uid = clusters.create(&PostParams::default(), &cluster("vault", 3, 2)).await.unwrap().uid().unwrap();
    let planted = |name: &str, data: Vec<(&str, Vec<u8>)>| -> Secret {
        let mut secret: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name,
                "labels": {"mpc.torcus.io/cluster": "vault"},
                "ownerReferences": [{
                    "apiVersion": "mpc.torcus.io/v1alpha1", "kind": "MpcCluster", "name": "vault",
                    "uid": uid, "controller": true, "blockOwnerDeletion": true,
                }],
            },
            "type": "Opaque",
        }))
        .unwrap();
        secret.data = Some(data.into_iter().map(|(k, v)| (k.to_owned(), ByteString(v))).collect());
        secret
    };
    let now = OffsetDateTime::now_utc();
    let rogue_ca =
        torcus_certs::CertificateAuthority::generate("rogue", torcus_certs::Duration::days(30), now).unwrap();
    let rogue_fingerprint = torcus_certs::fingerprints(rogue_ca.cert_pem()).unwrap().remove(0);
    let rogue_ca_pem = rogue_ca.cert_pem().as_bytes().to_vec();
    let ca = planted(
        "vault-ca",
        vec![
            ("tls.crt", rogue_ca_pem.clone()),
            ("tls.key", rogue_ca.key_pem().expose().as_bytes().to_vec()),
            ("ca.crt", rogue_ca_pem.clone()),
        ],
    );
    secrets.create(&PostParams::default(), &ca).await.unwrap();
    let seed = [0x42u8; 32];
    let planted_key = hex::encode(ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key().as_bytes());
    let grant_key =
        planted("vault-grant-key", vec![("ed25519.seed", seed.to_vec()), ("ed25519.pub", planted_key.clone().into())]);
    secrets.create(&PostParams::default(), &grant_key).await.unwrap();
    ns.start_operator();

    // The CA first: nothing is issued under it.
    wait_secret_refused(&clusters, "vault-ca").await;
    wait_warning(&ns, "SecretNotOwned").await;
    for leaf in ["vault-node-0", "vault-operator-client"] {
        assert!(secrets.get_opt(leaf).await.unwrap().is_none(), "{leaf} issued under a planted CA");
    }
    assert!(ns.api::<StatefulSet>().list(&ListParams::default()).await.unwrap().items.is_empty());

    // Gone, the operator makes its own CA, and refuses the grant key next.
    secrets.delete("vault-ca", &DeleteParams::default()).await.unwrap();
    wait_secret_refused(&clusters, "vault-grant-key").await;
    let bundle = secret_text(&secrets.get("vault-node-0").await.unwrap(), "ca.crt");
    assert!(!torcus_certs::fingerprints(&bundle).unwrap().contains(&rogue_fingerprint));
    let configs: Api<ConfigMap> = ns.api();
    assert!(configs.get_opt("vault-config").await.unwrap().is_none(), "configuration written from a planted key");
    assert!(ns.api::<StatefulSet>().list(&ListParams::default()).await.unwrap().items.is_empty());
    let status = clusters.get("vault").await.unwrap().status.unwrap();
    let recorded = status.secrets.unwrap_or_default();
    assert!(!recorded.values().flatten().any(|k| *k == rogue_fingerprint || k.ends_with(&planted_key)), "{recorded:?}");

    // Gone too: the cluster comes up under the operator's own keys, each recorded.
    secrets.delete("vault-grant-key", &DeleteParams::default()).await.unwrap();
    let status = wait_for_status(&ns, "vault").await.status.unwrap();
    let own_key = status.grant_public_key.unwrap();
    assert_ne!(own_key, planted_key);
    let recorded = status.secrets.unwrap();
    assert_eq!(recorded["vault-grant-key"], [format!("ed25519:{own_key}")]);
    for index in 0..3 {
        assert!(recorded.contains_key(&format!("vault-node-{index}-keys")), "{recorded:?}");
    }
    let own_ca = secret_text(&secrets.get("vault-ca").await.unwrap(), "tls.crt");
    assert!(recorded["vault-ca"].contains(&torcus_certs::fingerprints(&own_ca).unwrap()[0]));
    let config =
        eventually("the configuration", WAIT, || async { Ok(configs.get_opt("vault-config").await?) }).await.unwrap();
    let config: ClusterConfig = serde_json::from_str(&config.data.unwrap()["cluster.json"]).unwrap();
    assert_eq!(config.grant_public_key, own_key);

    // A restarted operator takes its own Secrets: it gets as far as the
    // StatefulSets, and refuses nothing.
    ns.stop_operator().await.unwrap();
    ns.api::<StatefulSet>().delete_collection(&DeleteParams::default(), &ListParams::default()).await.unwrap();
    ns.start_operator();
    eventually("the restarted operator to make the StatefulSets again", WAIT, || async {
        Ok((ns.api::<StatefulSet>().list(&ListParams::default()).await?.items.len() == 3).then_some(()))
    })
    .await
    .unwrap();
    let metrics = ns.operator_metrics().await;
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("torcus_untrusted_objects_refused_total{kind=\"secret\"}") && !l.ends_with(" 0")),
        "{metrics}"
    );

    // The rogue CA written into a node's TLS Secret (a Secret writer making
    // that node trust it) is written over: the leaf is issued again. Written
    // while no operator runs, so that no reconcile in flight overwrites it
    // unseen (every reconcile applies the leaf Secrets).
    ns.stop_operator().await.unwrap();
    let mut leaf = secrets.get("vault-node-0").await.unwrap();
    let mut trusted = leaf.data.as_ref().unwrap()["ca.crt"].0.clone();
    trusted.extend_from_slice(&rogue_ca_pem);
    leaf.data.as_mut().unwrap().insert("ca.crt".into(), ByteString(trusted));
    secrets.replace("vault-node-0", &PostParams::default(), &leaf).await.unwrap();
    ns.start_operator();
    eventually("the node's Secret to lose the rogue CA", WAIT, || async {
        let bundle = secret_text(&secrets.get("vault-node-0").await?, "ca.crt");
        Ok((!torcus_certs::fingerprints(&bundle)?.contains(&rogue_fingerprint)).then_some(()))
    })
    .await
    .unwrap();
    wait_warning(&ns, "SecretRepaired").await;

    // Written into the operator's own CA Secret, indented out of sight of a
    // strict PEM reader (which the planner's lenient one would still
    // trust), it is refused, and reaches no node.
    ns.stop_operator().await.unwrap();
    let mut ca = secrets.get("vault-ca").await.unwrap();
    let mut trusted = ca.data.as_ref().unwrap()["ca.crt"].0.clone();
    let indented: String = rogue_ca.cert_pem().lines().map(|l| format!("  {l}\n")).collect();
    trusted.extend_from_slice(indented.as_bytes());
    ca.data.as_mut().unwrap().insert("ca.crt".into(), ByteString(trusted));
    secrets.replace("vault-ca", &PostParams::default(), &ca).await.unwrap();
    ns.start_operator();
    wait_secret_refused(&clusters, "vault-ca").await;
    let bundle = secret_text(&secrets.get("vault-node-0").await.unwrap(), "ca.crt");
    assert!(!torcus_certs::fingerprints(&bundle).unwrap().contains(&rogue_fingerprint));
    ns.finish().await.unwrap();
}

/// Deleting an MpcCluster collects everything it owns but the keys Secrets
/// of its retained volumes (which decrypt the shares on them); deleting the
/// volume claims collects those too.
#[tokio::test]
async fn deleting_the_cluster_removes_its_children_and_its_volumes_keep_their_keys() {
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    let mut ns = TestNamespace::new("gc").await.unwrap();
    ns.start_operator();
    let clusters: Api<MpcCluster> = ns.api();
    clusters.create(&PostParams::default(), &cluster("gone", 3, 2)).await.unwrap();
    wait_for_status(&ns, "gone").await;
    let claims: Api<PersistentVolumeClaim> = ns.api();
    let labelled = || ListParams::default().labels("mpc.torcus.io/cluster=gone");
    // Bound to their claims before the cluster goes.
    eventually("the keys Secrets bound to the volume claims", WAIT, || async {
        let bound = ns
            .api::<Secret>()
            .list(&labelled())
            .await?
            .items
            .iter()
            .filter(|s| s.metadata.owner_references.iter().flatten().any(|o| o.kind == "PersistentVolumeClaim"))
            .count();
        Ok((bound == 3).then_some(()))
    })
    .await
    .unwrap();
    clusters.delete("gone", &DeleteParams::foreground()).await.unwrap();
    let secret_names = || async {
        let secrets = ns.api::<Secret>().list(&labelled()).await?.items;
        Ok::<_, anyhow::Error>(secrets.iter().map(ResourceExt::name_any).collect::<Vec<_>>())
    };
    eventually("children to be garbage-collected", WAIT, || async {
        let left = ns.api::<StatefulSet>().list(&ListParams::default()).await?.items.len()
            + ns.api::<ConfigMap>().list(&labelled()).await?.items.len()
            + ns.api::<PodDisruptionBudget>().list(&ListParams::default()).await?.items.len()
            + usize::from(clusters.get_opt("gone").await?.is_some());
        let secrets = secret_names().await?;
        Ok((left == 0 && secrets == ["gone-node-0-keys", "gone-node-1-keys", "gone-node-2-keys"]).then_some(()))
    })
    .await
    .unwrap();
    for claim in claims.list(&labelled()).await.unwrap().items {
        claims.delete(&claim.name_any(), &DeleteParams::default()).await.unwrap();
    }
    eventually("the keys Secrets collected with the claims", WAIT, || async {
        Ok(secret_names().await?.is_empty().then_some(()))
    })
    .await
    .unwrap();
    ns.finish().await.unwrap();
}

#[tokio::test]
async fn certificates_are_renewed_before_they_expire() {
    let mut ns = TestNamespace::new("renew").await.unwrap();
    ns.start_operator();
    let clusters: Api<MpcCluster> = ns.api();
    let mut mpc = cluster("short", 3, 2);
    // Leaves live 90 s and are renewed with 80 s left: the first renewal is due after about 10 s.
    mpc.spec.certificates.validity = "90s".into();
    mpc.spec.certificates.renew_before = "80s".into();
    clusters.create(&PostParams::default(), &mpc).await.unwrap();
    wait_for_status(&ns, "short").await;
    let secrets: Api<Secret> = ns.api();
    let first = torcus_certs::inspect(&secret_text(&secrets.get("short-node-0").await.unwrap(), "tls.crt")).unwrap();
    let renewed = eventually("node certificate renewal", WAIT, || async {
        let cert = secret_text(&secrets.get("short-node-0").await?, "tls.crt");
        let info = torcus_certs::inspect(&cert)?;
        Ok((info.serial_hex != first.serial_hex).then_some((cert, info)))
    })
    .await
    .unwrap();
    assert!(renewed.1.not_after > first.not_after);
    let bundle = secret_text(&secrets.get("short-ca").await.unwrap(), "ca.crt");
    torcus_certs::verify_leaf(&renewed.0, &bundle, OffsetDateTime::now_utc()).unwrap();
    ns.finish().await.unwrap();
}

/// A leader that crashed (SIGKILL: no chance to take its label off) leaves
/// `mpc.torcus.io/leader` on its pod, and the Service would split the
/// registry and relay traffic between it and the new leader. The next
/// leader takes it off the crashed one's pod (and only off its own
/// release's), labels its own, and takes that off when it stops.
#[tokio::test]
async fn a_new_leader_takes_the_label_off_a_crashed_leaders_pod() {
    use k8s_openapi::api::core::v1::Pod;
    let mut ns = TestNamespace::new("leader-label").await.unwrap();
    let pods: Api<Pod> = ns.api();
    // Operator pods as the chart makes them; no kubelet runs them here,
    // only their labels matter.
    for (name, instance, leader) in
        [("torcus-a", "torcus", true), ("torcus-b", "torcus", false), ("other-a", "other", true)]
    {
        let mut labels =
            serde_json::json!({"app.kubernetes.io/name": "torcus", "app.kubernetes.io/instance": instance});
        if leader {
            labels["mpc.torcus.io/leader"] = "true".into();
        }
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"containers": [{"name": "operator", "image": "torcus/torcus-operator:e2e"}]},
        }))
        .unwrap();
        // The namespace's default ServiceAccount may be a moment behind it.
        eventually(&format!("pod {name} created"), WAIT, || async {
            Ok(pods.create(&PostParams::default(), &pod).await.ok().map(drop))
        })
        .await
        .unwrap();
    }
    let leader = |pod: Pod| pod.labels().get("mpc.torcus.io/leader").cloned();
    ns.start_operator_in_pod("torcus-b");
    eventually("the label moved from the crashed leader's pod to the new leader's", WAIT, || async {
        let moved = leader(pods.get("torcus-a").await?).is_none()
            && leader(pods.get("torcus-b").await?).as_deref() == Some("true");
        Ok(moved.then_some(()))
    })
    .await
    .unwrap();
    assert_eq!(leader(pods.get("other-a").await.unwrap()).as_deref(), Some("true"), "another release's pod");
    ns.stop_operator().await.unwrap();
    assert_eq!(leader(pods.get("torcus-b").await.unwrap()), None, "a leader that stops takes its label off");
    ns.finish().await.unwrap();
}

#[tokio::test]
async fn leadership_hands_over_through_the_lease() {
    let mut ns = TestNamespace::new("leader").await.unwrap();
    ns.start_operator();
    let leases: Api<Lease> = ns.api();
    let holder = eventually("a lease holder", WAIT, || async {
        Ok(leases.get_opt("torcus-operator").await?.and_then(|l| l.spec?.holder_identity))
    })
    .await
    .unwrap();

    // A second operator waits: the first keeps reconciling alone. Stopping
    // the first hands over, and the second reconciles new clusters.
    let mut standby = ns.second();
    standby.start_operator_as("standby");
    // While the first runs, the standby does not take the Lease.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = leases.get("torcus-operator").await.unwrap().spec.unwrap().holder_identity.unwrap();
    assert_eq!(still, holder);
    ns.stop_operator().await.unwrap();
    let clusters: Api<MpcCluster> = ns.api();
    clusters.create(&PostParams::default(), &cluster("after-handover", 3, 2)).await.unwrap();
    wait_for_status(&ns, "after-handover").await;
    let holder = leases.get("torcus-operator").await.unwrap().spec.unwrap().holder_identity.unwrap();
    assert_eq!(holder, "standby");
    standby.stop_operator().await.unwrap();
    ns.finish().await.unwrap();
}
