//! Pure builders for the children of an `MpcCluster`: `&MpcCluster -> K8s
//! object`. The reconciler only decides what to issue and applies what these
//! return, so everything about the shape of a child is tested here without a
//! cluster.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ProjectedVolumeSource, ResourceRequirements, SeccompProfile,
    Secret, SecretProjection, SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
    VolumeProjection, VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};
use torcus_contract::{self as contract, ClusterConfig, Peer};
use torcus_crds::MpcCluster;

use crate::pki::Pki;

/// Label: the MpcCluster a child belongs to.
pub const LABEL_CLUSTER: &str = "mpc.torcus.io/cluster";
/// Label: the party index of a node's StatefulSet and pod.
pub const LABEL_PARTY: &str = "mpc.torcus.io/party-index";
/// Pod template annotation: digest of the node configuration, so a change
/// (such as the transport mode) rolls the nodes.
pub const ANNOTATION_CONFIG_HASH: &str = "mpc.torcus.io/config-hash";
/// Pod template annotation: digest of the rest of the template, so the
/// operator can pace a change across nodes ([`crate::rollout`]).
pub const ANNOTATION_TEMPLATE_HASH: &str = "mpc.torcus.io/template-hash";
/// UID and GID the node runs as (the distroless `nonroot` user).
pub const NODE_UID: i64 = 65532;

/// What the builders need beyond the MpcCluster itself.
#[derive(Clone, Debug)]
pub struct BuildContext {
    /// Image used when `spec.image` is unset.
    pub default_node_image: String,
    /// Registry/relay URL nodes report to, when the operator serves one.
    pub registry_url: Option<String>,
    /// Kubernetes cluster domain, for the nodes' DNS names.
    pub cluster_domain: String,
    /// How long a changed Secret takes to reach the pods that mount it
    /// ([`crate::pki::Lifetimes::propagation`]).
    pub secret_propagation: std::time::Duration,
}

/// Names of an MpcCluster's children, in one place.
#[derive(Clone, Debug)]
pub struct Names<'a> {
    cluster: &'a str,
}

impl<'a> Names<'a> {
    /// Names for the cluster called `cluster`.
    pub fn new(cluster: &'a str) -> Self {
        Self { cluster }
    }

    /// CA Secret: the CA certificate and key and the trust bundle.
    pub fn ca_secret(&self) -> String {
        format!("{}-ca", self.cluster)
    }

    /// TLS Secret of party `index`.
    pub fn node_secret(&self, index: u16) -> String {
        format!("{}-node-{index}", self.cluster)
    }

    /// Secret with node `index`'s long-lived keys: the key that encrypts its
    /// shares at rest, its Ed25519 identity for the TCP transport and its
    /// seal key. Owned by the MpcCluster and by the node's volume claim, so
    /// it lives as long as the shares it decrypts.
    pub fn node_keys_secret(&self, index: u16) -> String {
        format!("{}-node-{index}-keys", self.cluster)
    }

    /// The PersistentVolumeClaim the StatefulSet of party `index` makes for
    /// its pod's `data` volume (`<template>-<pod>`), where its shares are.
    pub fn data_claim(&self, index: u16) -> String {
        format!("{DATA_VOLUME}-{}", self.pod(index))
    }

    /// TLS client certificate the operator uses towards the nodes.
    pub fn operator_secret(&self) -> String {
        format!("{}-operator-client", self.cluster)
    }

    /// Ed25519 key the operator signs grants with.
    pub fn grant_key_secret(&self) -> String {
        format!("{}-grant-key", self.cluster)
    }

    /// Node configuration.
    pub fn config_map(&self) -> String {
        format!("{}-config", self.cluster)
    }

    /// The durable policy ledger (see `crate::ledger`).
    pub fn policy_ledger(&self) -> String {
        format!("{}-policy-ledger", self.cluster)
    }

    /// Headless Service giving each node a stable DNS name.
    pub fn service(&self) -> String {
        format!("{}-nodes", self.cluster)
    }

    /// StatefulSet of party `index`.
    pub fn stateful_set(&self, index: u16) -> String {
        format!("{}-{index}", self.cluster)
    }

    /// The one pod of party `index`'s StatefulSet.
    pub fn pod(&self, index: u16) -> String {
        format!("{}-0", self.stateful_set(index))
    }

    /// PodDisruptionBudget over all nodes.
    pub fn pdb(&self) -> String {
        self.cluster.to_owned()
    }
}

/// Labels every child carries.
pub fn labels(mpc: &MpcCluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "torcus-node".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), mpc.name_any()),
        ("app.kubernetes.io/managed-by".to_owned(), "torcus-operator".to_owned()),
        (LABEL_CLUSTER.to_owned(), mpc.name_any()),
    ])
}

/// Labels that select all node pods of a cluster.
pub fn node_selector(mpc: &MpcCluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "torcus-node".to_owned()),
        (LABEL_CLUSTER.to_owned(), mpc.name_any()),
    ])
}

fn party_selector(mpc: &MpcCluster, index: u16) -> BTreeMap<String, String> {
    let mut labels = node_selector(mpc);
    labels.insert(LABEL_PARTY.to_owned(), index.to_string());
    labels
}

/// Metadata of a child: name, namespace, labels and the controller owner
/// reference, so deleting the MpcCluster garbage-collects it.
pub fn child_meta(mpc: &MpcCluster, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: mpc.namespace(),
        labels: Some(labels(mpc)),
        owner_references: owner_reference(mpc).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// Whether `meta` names `mpc` as its controller: the mark of a child the
/// operator made for this very MpcCluster (its uid, not only its name). A
/// Secret without it was planted, or left by an earlier cluster of the
/// same name, and is never used.
pub fn controlled_by(meta: &ObjectMeta, mpc: &MpcCluster) -> bool {
    let Some(uid) = mpc.metadata.uid.as_deref() else { return false };
    meta.owner_references.iter().flatten().any(|o| {
        o.controller == Some(true)
            && o.uid == uid
            && o.kind == "MpcCluster"
            && o.api_version == "mpc.torcus.io/v1alpha1"
    })
}

fn owner_reference(mpc: &MpcCluster) -> Option<OwnerReference> {
    // `controller_owner_ref` is None only for an object without a UID, which
    // an object read from the API server always has.
    mpc.controller_owner_ref(&())
}

/// Stable DNS name of party `index`: `<pod>.<service>.<namespace>.svc.<domain>`.
pub fn node_host(mpc: &MpcCluster, index: u16, cluster_domain: &str) -> String {
    let names = Names::new(mpc.metadata.name.as_deref().unwrap_or_default());
    format!("{}.{}.{}.svc.{cluster_domain}", names.pod(index), names.service(), mpc.namespace().unwrap_or_default())
}

/// DNS names a node certificate carries: the FQDN and its shorter forms.
pub fn node_dns_names(mpc: &MpcCluster, index: u16, cluster_domain: &str) -> Vec<String> {
    let names = Names::new(mpc.metadata.name.as_deref().unwrap_or_default());
    let ns = mpc.namespace().unwrap_or_default();
    let short = format!("{}.{}", names.pod(index), names.service());
    vec![node_host(mpc, index, cluster_domain), format!("{short}.{ns}.svc"), format!("{short}.{ns}"), short]
}

/// A Secret holding `data`, owned by the cluster.
pub fn secret(mpc: &MpcCluster, name: String, type_: &str, data: BTreeMap<String, Vec<u8>>) -> Secret {
    Secret {
        metadata: child_meta(mpc, name),
        type_: Some(type_.to_owned()),
        data: Some(data.into_iter().map(|(k, v)| (k, ByteString(v))).collect()),
        ..Secret::default()
    }
}

/// A `kubernetes.io/tls` Secret: certificate, key and the CA trust bundle.
pub fn tls_secret(mpc: &MpcCluster, name: String, cert_pem: &str, key_pem: &str, trust_bundle_pem: &str) -> Secret {
    secret(
        mpc,
        name,
        "kubernetes.io/tls",
        BTreeMap::from([
            ("tls.crt".to_owned(), cert_pem.as_bytes().to_vec()),
            ("tls.key".to_owned(), key_pem.as_bytes().to_vec()),
            ("ca.crt".to_owned(), trust_bundle_pem.as_bytes().to_vec()),
        ]),
    )
}

/// The node's volume (claim template) holding its shares.
pub const DATA_VOLUME: &str = "data";

/// Key in the node keys Secret: hex key that encrypts the node's shares.
pub const NODE_STORE_KEY: &str = "store.key";
/// Key in the node keys Secret: hex Ed25519 seed of the node's TCP identity.
pub const NODE_IDENTITY_KEY: &str = "identity.key";
/// Key in the node keys Secret: hex X25519 seed of the node's seal key, to
/// which peers seal protocol messages end to end (every mode but `quic`).
pub const NODE_SEAL_KEY: &str = "seal.key";

/// The node keys Secret ([`Names::node_keys_secret`]); every value is hex.
pub fn node_keys_secret(
    mpc: &MpcCluster,
    index: u16,
    store_key_hex: &str,
    identity_seed_hex: &str,
    seal_seed_hex: &str,
) -> Secret {
    secret(
        mpc,
        Names::new(&mpc.name_any()).node_keys_secret(index),
        "Opaque",
        BTreeMap::from([
            (NODE_STORE_KEY.to_owned(), store_key_hex.as_bytes().to_vec()),
            (NODE_IDENTITY_KEY.to_owned(), identity_seed_hex.as_bytes().to_vec()),
            (NODE_SEAL_KEY.to_owned(), seal_seed_hex.as_bytes().to_vec()),
        ]),
    )
}

/// A node's public keys, as the configuration publishes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePublicKeys {
    /// Hex Ed25519 key that verifies the node's TCP frames.
    pub identity: String,
    /// Hex X25519 key to which peers seal messages for the node.
    pub seal: String,
    /// [`contract::store_key_check`] of its store key.
    pub store_check: String,
}

/// CA Secret key: the staged next CA certificate, during a roll.
pub const CA_NEXT_CERT: &str = "next.crt";
/// CA Secret key: the staged next CA key, during a roll.
pub const CA_NEXT_KEY: &str = "next.key";
/// CA Secret key: when the next CA was staged, RFC 3339.
pub const CA_NEXT_SINCE: &str = "next.since";

/// The CA Secret: the issuing CA (`tls.crt`, `tls.key`), the trust bundle
/// (`ca.crt`) and, during a roll, the staged next CA.
pub fn ca_secret(mpc: &MpcCluster, pki: &Pki) -> Secret {
    let mut data = BTreeMap::from([
        ("tls.crt".to_owned(), pki.ca.cert_pem().as_bytes().to_vec()),
        ("tls.key".to_owned(), pki.ca.key_pem().expose().as_bytes().to_vec()),
        ("ca.crt".to_owned(), pki.bundle.to_pem().into_bytes()),
    ]);
    if let Some((next, since)) = &pki.next {
        let since = since.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        data.insert(CA_NEXT_CERT.to_owned(), next.cert_pem().as_bytes().to_vec());
        data.insert(CA_NEXT_KEY.to_owned(), next.key_pem().expose().as_bytes().to_vec());
        data.insert(CA_NEXT_SINCE.to_owned(), since.into_bytes());
    }
    secret(mpc, Names::new(&mpc.name_any()).ca_secret(), "Opaque", data)
}

/// The configuration every node of the cluster reads.
///
/// `node_keys[i]` are node `i`'s public keys: the identity that verifies its
/// TCP frames and the seal key messages to it are sealed with.
pub fn cluster_config(
    mpc: &MpcCluster,
    grant_public_key_hex: &str,
    node_keys: &[NodePublicKeys],
    ctx: &BuildContext,
) -> ClusterConfig {
    let spec = &mpc.spec;
    ClusterConfig {
        cluster: mpc.name_any(),
        namespace: mpc.namespace().unwrap_or_default(),
        nodes: spec.nodes,
        threshold: spec.threshold,
        curve: "secp256k1".to_owned(),
        transport: spec.transport.mode.as_str().to_owned(),
        keys: spec.keys.clone(),
        grant_public_key: grant_public_key_hex.to_owned(),
        presignature_pool_size: spec.presignatures.pool_size,
        presignature_paths: presignature_paths(&spec.presignatures),
        registry_url: ctx.registry_url.clone(),
        peers: (0..spec.nodes)
            .map(|index| Peer {
                index,
                host: node_host(mpc, index, &ctx.cluster_domain),
                p2p_port: contract::P2P_PORT,
                http_port: contract::HTTP_PORT,
                identity_key: node_keys.get(usize::from(index)).map(|k| k.identity.clone()),
                seal_key: node_keys.get(usize::from(index)).map(|k| k.seal.clone()),
                store_key_check: node_keys.get(usize::from(index)).map(|k| k.store_check.clone()),
            })
            .collect(),
    }
}

/// The derivation paths of `spec.presignatures.paths`, parsed, without
/// repeats, in the order given. `check_spec` refuses a cluster with a path
/// that does not parse before anything is built; one that slipped past is
/// left out here rather than passed on.
pub fn presignature_paths(spec: &torcus_crds::PresignatureSpec) -> Vec<Vec<u32>> {
    let mut paths: Vec<Vec<u32>> = Vec::new();
    for path in spec.paths.iter().filter_map(|p| crate::crypto::derivation_path(Some(p)).ok()) {
        if !paths.contains(&path) {
            paths.push(path);
        }
    }
    paths.truncate(contract::MAX_PRESIGNATURE_PATHS);
    paths
}

/// ConfigMap carrying `cluster.json`.
pub fn config_map(mpc: &MpcCluster, config: &ClusterConfig) -> ConfigMap {
    // A ClusterConfig has only strings, integers and lists: serializing it
    // cannot fail.
    let json = serde_json::to_string_pretty(config).expect("ClusterConfig serializes");
    ConfigMap {
        metadata: child_meta(mpc, Names::new(&mpc.name_any()).config_map()),
        data: Some(BTreeMap::from([(contract::CONFIG_FILE.to_owned(), json)])),
        ..ConfigMap::default()
    }
}

/// The policy ledger ConfigMap holding `data`. Owned by the cluster, but
/// not labelled as a node resource: the cluster controller does not watch
/// it, so recording an approval does not reconcile the cluster.
pub fn policy_ledger(mpc: &MpcCluster, data: BTreeMap<String, String>) -> ConfigMap {
    let mut metadata = child_meta(mpc, Names::new(&mpc.name_any()).policy_ledger());
    if let Some(labels) = metadata.labels.as_mut() {
        labels.insert("app.kubernetes.io/name".to_owned(), "torcus-policy-ledger".to_owned());
    }
    ConfigMap { metadata, data: Some(data), ..ConfigMap::default() }
}

/// Digest of the node configuration, for the pod template annotation.
/// The key list is left out: nodes learn keys from keygen grants, so a
/// new key needs no restart.
pub fn config_hash(config: &ClusterConfig) -> String {
    let config = ClusterConfig { keys: Vec::new(), ..config.clone() };
    // Strings, integers and lists only: serializing cannot fail.
    let json = serde_json::to_vec(&config).expect("ClusterConfig serializes");
    hex::encode(&Sha256::digest(&json)[..8])
}

/// The template hash a StatefulSet's pod template, or a pod made from it,
/// carries.
pub fn template_hash(meta: Option<&ObjectMeta>) -> Option<String> {
    meta?.annotations.as_ref()?.get(ANNOTATION_TEMPLATE_HASH).cloned()
}

/// `template` with its own digest as [`ANNOTATION_TEMPLATE_HASH`].
fn hashed(mut template: PodTemplateSpec) -> PodTemplateSpec {
    // Plain Kubernetes types: serializing cannot fail.
    let json = serde_json::to_vec(&template).expect("PodTemplateSpec serializes");
    let hash = hex::encode(&Sha256::digest(&json)[..8]);
    let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
    meta.annotations.get_or_insert_with(BTreeMap::new).insert(ANNOTATION_TEMPLATE_HASH.to_owned(), hash);
    template
}

/// Headless Service: stable DNS per node, published before nodes are ready
/// because peers must reach each other to become ready at all.
pub fn headless_service(mpc: &MpcCluster) -> Service {
    let port = |name: &str, port: u16, protocol: &str| ServicePort {
        name: Some(name.to_owned()),
        port: i32::from(port),
        protocol: Some(protocol.to_owned()),
        target_port: Some(IntOrString::String(name.to_owned())),
        ..ServicePort::default()
    };
    Service {
        metadata: child_meta(mpc, Names::new(&mpc.name_any()).service()),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            publish_not_ready_addresses: Some(true),
            selector: Some(node_selector(mpc)),
            ports: Some(vec![
                port("http", contract::HTTP_PORT, "TCP"),
                port("quic", contract::P2P_PORT, "UDP"),
                port("p2p-tcp", contract::P2P_PORT, "TCP"),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// PodDisruptionBudget: voluntary disruptions may take down at most
/// `nodes − threshold` nodes, so `threshold` can always still sign.
pub fn pod_disruption_budget(mpc: &MpcCluster) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: child_meta(mpc, Names::new(&mpc.name_any()).pdb()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(i32::from(mpc.spec.nodes - mpc.spec.threshold))),
            selector: Some(LabelSelector { match_labels: Some(node_selector(mpc)), ..LabelSelector::default() }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

/// The StatefulSet of party `index`: one pod with its own TLS Secret and its
/// own volume.
///
/// Why one StatefulSet per party rather than one for all: a pod template is
/// shared by every replica, so a single StatefulSet could only mount a Secret
/// shared by all pods, handing every node every other node's TLS key and
/// letting one compromised pod impersonate any party. With one StatefulSet
/// per party each pod mounts exactly its own Secret, its party index is fixed
/// in its template instead of derived, and its volume (the key share) can
/// never be attached to another index.
pub fn stateful_set(mpc: &MpcCluster, index: u16, config_hash: &str, ctx: &BuildContext) -> StatefulSet {
    let names = Names::new(mpc.metadata.name.as_deref().unwrap_or_default());
    let mut pod_labels = labels(mpc);
    pod_labels.insert(LABEL_PARTY.to_owned(), index.to_string());
    let mut meta = child_meta(mpc, names.stateful_set(index));
    meta.labels = Some(pod_labels.clone());

    StatefulSet {
        metadata: meta,
        spec: Some(StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(names.service()),
            pod_management_policy: Some("Parallel".to_owned()),
            selector: LabelSelector { match_labels: Some(party_selector(mpc, index)), ..LabelSelector::default() },
            // Key shares outlive the MpcCluster object: deleting it by
            // mistake must not destroy the only copies of the shares.
            persistent_volume_claim_retention_policy: Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
                when_deleted: Some("Retain".to_owned()),
                when_scaled: Some("Retain".to_owned()),
            }),
            template: hashed(PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels.clone()),
                    annotations: Some(BTreeMap::from([(ANNOTATION_CONFIG_HASH.to_owned(), config_hash.to_owned())])),
                    ..ObjectMeta::default()
                }),
                spec: Some(node_pod_spec(mpc, index, ctx)),
            }),
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(DATA_VOLUME.to_owned()),
                    labels: Some(pod_labels),
                    ..ObjectMeta::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
                    storage_class_name: mpc.spec.storage.storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".to_owned(),
                            Quantity(mpc.spec.storage.size.clone()),
                        )])),
                        ..VolumeResourceRequirements::default()
                    }),
                    ..PersistentVolumeClaimSpec::default()
                }),
                ..PersistentVolumeClaim::default()
            }]),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

fn node_pod_spec(mpc: &MpcCluster, index: u16, ctx: &BuildContext) -> PodSpec {
    let names = Names::new(mpc.metadata.name.as_deref().unwrap_or_default());
    let env = |name: &str, value: String| EnvVar { name: name.to_owned(), value: Some(value), ..EnvVar::default() };
    let field_env = |name: &str, path: &str| EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: path.to_owned(), ..ObjectFieldSelector::default() }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    };
    let probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            // The plain port: the API port takes the operator's certificate only.
            port: IntOrString::String("metrics".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        ..Probe::default()
    };
    let port = |name: &str, port: u16, protocol: &str| ContainerPort {
        name: Some(name.to_owned()),
        container_port: i32::from(port),
        protocol: Some(protocol.to_owned()),
        ..ContainerPort::default()
    };

    PodSpec {
        // Nodes have no business with the Kubernetes API.
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(NODE_UID),
            run_as_group: Some(NODE_UID),
            fs_group: Some(NODE_UID),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".to_owned(), ..SeccompProfile::default() }),
            ..PodSecurityContext::default()
        }),
        containers: vec![Container {
            name: "node".to_owned(),
            image: Some(mpc.spec.image.clone().unwrap_or_else(|| ctx.default_node_image.clone())),
            args: Some(vec!["serve".to_owned()]),
            env: Some(vec![
                env(contract::ENV_PARTY_INDEX, index.to_string()),
                env(contract::ENV_CONFIG, format!("{}/{}", contract::CONFIG_DIR, contract::CONFIG_FILE)),
                env(contract::ENV_TLS_DIR, contract::TLS_DIR.to_owned()),
                env(contract::ENV_DATA_DIR, contract::DATA_DIR.to_owned()),
                field_env(contract::ENV_POD_IP, "status.podIP"),
                field_env("POD_NAME", "metadata.name"),
                field_env("POD_NAMESPACE", "metadata.namespace"),
            ]),
            ports: Some(vec![
                port("http", contract::HTTP_PORT, "TCP"),
                port("metrics", contract::METRICS_PORT, "TCP"),
                port("quic", contract::P2P_PORT, "UDP"),
                port("p2p-tcp", contract::P2P_PORT, "TCP"),
            ]),
            readiness_probe: Some(probe("/readyz", 5)),
            liveness_probe: Some(probe("/healthz", 10)),
            resources: Some(mpc.spec.resources.clone().unwrap_or_else(default_resources)),
            security_context: Some(SecurityContext {
                allow_privilege_escalation: Some(false),
                read_only_root_filesystem: Some(true),
                run_as_non_root: Some(true),
                capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_owned()]), ..Capabilities::default() }),
                ..SecurityContext::default()
            }),
            volume_mounts: Some(vec![
                mount("tls", contract::TLS_DIR, true),
                mount("config", contract::CONFIG_DIR, true),
                mount(DATA_VOLUME, contract::DATA_DIR, false),
                mount("tmp", "/tmp", false),
            ]),
            ..Container::default()
        }],
        volumes: Some(vec![
            Volume {
                // The certificate Secret (renewed in place) and the keys
                // Secret (created once) side by side in one folder, each
                // with only its own files: a key written into one Secret
                // cannot shadow a file of the other.
                name: "tls".to_owned(),
                projected: Some(ProjectedVolumeSource {
                    default_mode: Some(0o400),
                    sources: Some(
                        [
                            (names.node_secret(index), ["tls.crt", "tls.key", "ca.crt"]),
                            (names.node_keys_secret(index), [NODE_STORE_KEY, NODE_IDENTITY_KEY, NODE_SEAL_KEY]),
                        ]
                        .into_iter()
                        .map(|(name, files)| VolumeProjection {
                            secret: Some(SecretProjection {
                                name,
                                items: Some(
                                    files
                                        .into_iter()
                                        .map(|f| KeyToPath { key: f.to_owned(), path: f.to_owned(), mode: None })
                                        .collect(),
                                ),
                                ..SecretProjection::default()
                            }),
                            ..VolumeProjection::default()
                        })
                        .collect(),
                    ),
                }),
                ..Volume::default()
            },
            Volume {
                name: "config".to_owned(),
                config_map: Some(ConfigMapVolumeSource {
                    name: names.config_map(),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            },
            Volume { name: "tmp".to_owned(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Volume::default() },
        ]),
        ..PodSpec::default()
    }
}

/// Requests sized for keygen and signing on secp256k1; a cluster sets its own
/// in `spec.resources`.
fn default_resources() -> ResourceRequirements {
    let q = |s: &str| Quantity(s.to_owned());
    ResourceRequirements {
        requests: Some(BTreeMap::from([("cpu".to_owned(), q("250m")), ("memory".to_owned(), q("128Mi"))])),
        limits: Some(BTreeMap::from([("memory".to_owned(), q("512Mi"))])),
        ..ResourceRequirements::default()
    }
}

/// Fixture builders for tests in this crate and others.
#[cfg(any(test, feature = "test-util"))]
pub mod fixtures {
    use kube::api::ObjectMeta;
    use torcus_crds::{MpcCluster, MpcClusterSpec};

    /// A minimal MpcCluster as it would come back from the API server.
    pub fn cluster(name: &str, nodes: u16, threshold: u16) -> MpcCluster {
        let spec: MpcClusterSpec =
            serde_json::from_value(serde_json::json!({"nodes": nodes, "threshold": threshold})).expect("valid spec");
        let mut mpc = MpcCluster::new(name, spec);
        mpc.metadata = ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some("vault".to_owned()),
            uid: Some("0a0b0c0d-0000-4000-8000-000000000001".to_owned()),
            generation: Some(1),
            ..ObjectMeta::default()
        };
        mpc
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::cluster;
    use super::*;

    fn ctx() -> BuildContext {
        BuildContext {
            default_node_image: "torcus/torcus-node:test".into(),
            registry_url: Some("http://torcus-operator.torcus-system.svc:8080".into()),
            cluster_domain: "cluster.local".into(),
            secret_propagation: std::time::Duration::from_secs(300),
        }
    }

    #[test]
    fn pdb_allows_losing_n_minus_t() {
        for (n, t) in [(3, 2), (5, 3), (4, 4)] {
            let pdb = pod_disruption_budget(&cluster("demo", n, t));
            assert_eq!(pdb.spec.unwrap().max_unavailable, Some(IntOrString::Int(i32::from(n - t))));
        }
    }

    #[test]
    fn children_are_owned_by_the_cluster() {
        let mpc = cluster("demo", 3, 2);
        let sts = stateful_set(&mpc, 1, "abc", &ctx());
        let owner = &sts.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.kind, "MpcCluster");
        assert_eq!(owner.name, "demo");
        assert_eq!(owner.controller, Some(true));
        assert_eq!(sts.metadata.namespace.as_deref(), Some("vault"));
    }

    #[test]
    fn stateful_set_runs_one_locked_down_node_with_its_own_secret() {
        let mpc = cluster("demo", 3, 2);
        let sts = stateful_set(&mpc, 2, "abc", &ctx());
        assert_eq!(sts.metadata.name.as_deref(), Some("demo-2"));
        let spec = sts.spec.unwrap();
        assert_eq!(spec.replicas, Some(1));
        assert_eq!(spec.service_name.as_deref(), Some("demo-nodes"));
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.automount_service_account_token, Some(false));
        let tls = pod.volumes.unwrap().into_iter().find(|v| v.name == "tls").unwrap();
        let sources: Vec<(String, Vec<String>)> = tls
            .projected
            .unwrap()
            .sources
            .unwrap()
            .into_iter()
            .map(|p| p.secret.unwrap())
            .map(|s| (s.name, s.items.unwrap().into_iter().map(|i| i.key).collect()))
            .collect();
        // Each Secret projects only its own files.
        assert_eq!(sources[0], ("demo-node-2".into(), vec!["tls.crt".into(), "tls.key".into(), "ca.crt".into()]));
        assert_eq!(
            sources[1],
            ("demo-node-2-keys".into(), vec![NODE_STORE_KEY.into(), NODE_IDENTITY_KEY.into(), NODE_SEAL_KEY.into()])
        );
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("torcus/torcus-node:test"));
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        let readiness = c.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(readiness.path.as_deref(), Some("/readyz"));
        // Probes go to the plain port: the API takes the operator's certificate only.
        assert_eq!(readiness.port, IntOrString::String("metrics".into()));
        let metrics = c.ports.as_ref().unwrap().iter().find(|p| p.name.as_deref() == Some("metrics")).unwrap();
        assert_eq!(metrics.container_port, i32::from(contract::METRICS_PORT));
        assert!(c.resources.as_ref().unwrap().requests.as_ref().unwrap().contains_key("cpu"));
        let party = c.env.as_ref().unwrap().iter().find(|e| e.name == contract::ENV_PARTY_INDEX).unwrap();
        assert_eq!(party.value.as_deref(), Some("2"));
        let pvc = &spec.volume_claim_templates.unwrap()[0];
        assert_eq!(
            pvc.spec.as_ref().unwrap().resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0,
            "1Gi"
        );
        assert_eq!(
            spec.persistent_volume_claim_retention_policy.unwrap().when_deleted.as_deref(),
            Some("Retain"),
            "deleting the cluster must not delete key shares"
        );
    }

    #[test]
    fn spec_image_and_resources_win() {
        let mut mpc = cluster("demo", 3, 2);
        mpc.spec.image = Some("registry.example/node:1".into());
        mpc.spec.resources = Some(ResourceRequirements::default());
        let sts = stateful_set(&mpc, 0, "abc", &ctx());
        let c = &sts.spec.unwrap().template.spec.unwrap().containers[0];
        assert_eq!(c.image.as_deref(), Some("registry.example/node:1"));
        assert_eq!(c.resources, Some(ResourceRequirements::default()));
    }

    #[test]
    fn config_lists_every_peer_and_its_hash_follows_the_transport() {
        let mut mpc = cluster("demo", 5, 3);
        let keys: Vec<NodePublicKeys> = (0..5)
            .map(|i| NodePublicKeys {
                identity: format!("{i:064x}"),
                seal: format!("{:064x}", i + 100),
                store_check: format!("{:064x}", i + 200),
            })
            .collect();
        let config = cluster_config(&mpc, "ab", &keys, &ctx());
        config.check().unwrap();
        assert_eq!(config.peers[4].host, "demo-4-0.demo-nodes.vault.svc.cluster.local");
        assert_eq!(config.peers[4].identity_key.as_deref(), Some(keys[4].identity.as_str()));
        assert_eq!(config.peers[4].seal_key.as_deref(), Some(keys[4].seal.as_str()));
        assert_eq!(config.transport, "quic");
        let cm = config_map(&mpc, &config);
        let parsed = ClusterConfig::from_json(cm.data.unwrap()[contract::CONFIG_FILE].as_bytes()).unwrap();
        assert_eq!(parsed, config);

        mpc.spec.transport.mode = torcus_crds::TransportMode::Tcp;
        let changed = cluster_config(&mpc, "ab", &keys, &ctx());
        changed.check().unwrap();
        assert_ne!(config_hash(&config), config_hash(&changed), "a transport change must roll the nodes");
    }

    #[test]
    fn only_a_controller_reference_to_this_cluster_marks_a_child() {
        let mut mpc = cluster("demo", 3, 2);
        mpc.metadata.uid = Some("uid-1".into());
        let meta = child_meta(&mpc, "demo-grant-key".into());
        assert!(controlled_by(&meta, &mpc));
        let mut same_name = mpc.clone();
        same_name.metadata.uid = Some("uid-2".into());
        assert!(!controlled_by(&meta, &same_name), "an earlier cluster of the same name");
        assert!(!controlled_by(&ObjectMeta::default(), &mpc), "no owner at all");
        let mut owner_only = meta.clone();
        owner_only.owner_references.as_mut().unwrap()[0].controller = None;
        assert!(!controlled_by(&owner_only, &mpc), "an owner, not the controller");
    }

    #[test]
    fn node_keys_secret_holds_the_store_identity_and_seal_keys() {
        let s = node_keys_secret(&cluster("demo", 3, 2), 1, "aa", "bb", "cc");
        assert_eq!(s.metadata.name.as_deref(), Some("demo-node-1-keys"));
        assert_eq!(s.type_.as_deref(), Some("Opaque"));
        let data = s.data.unwrap();
        assert_eq!(data.keys().collect::<Vec<_>>(), [NODE_IDENTITY_KEY, NODE_SEAL_KEY, NODE_STORE_KEY]);
        assert_eq!((&data[NODE_STORE_KEY].0[..], &data[NODE_IDENTITY_KEY].0[..]), (&b"aa"[..], &b"bb"[..]));
        assert_eq!(data[NODE_SEAL_KEY].0, b"cc");
    }

    #[test]
    fn service_is_headless_and_publishes_unready_nodes() {
        let svc = headless_service(&cluster("demo", 3, 2)).spec.unwrap();
        assert_eq!(svc.cluster_ip.as_deref(), Some("None"));
        assert_eq!(svc.publish_not_ready_addresses, Some(true));
        assert_eq!(svc.selector.unwrap()[LABEL_CLUSTER], "demo");
    }

    #[test]
    fn tls_secret_has_the_standard_keys() {
        let s = tls_secret(&cluster("demo", 3, 2), "demo-node-0".into(), "CERT", "KEY", "CA");
        assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
        let data = s.data.unwrap();
        assert_eq!(data["tls.crt"].0, b"CERT");
        assert_eq!(data["ca.crt"].0, b"CA");
    }

    #[test]
    fn ca_secret_carries_the_staged_ca_only_during_a_roll() {
        use crate::pki::{self, Existing, Leaf, LeafRequest, Lifetimes};
        use torcus_certs::{Duration, OffsetDateTime};
        let mpc = cluster("demo", 3, 2);
        let lifetimes = Lifetimes {
            leaf_validity: Duration::days(90),
            renew_before: Duration::days(30),
            propagation: pki::DEFAULT_PROPAGATION,
        };
        let requests = BTreeMap::from([(Leaf::Operator, LeafRequest::default())]);
        let now = OffsetDateTime::now_utc();
        let plan = pki::plan("vault", "demo", &Existing::default(), &requests, lifetimes, now).unwrap();
        let data = ca_secret(&mpc, &plan).data.unwrap();
        assert_eq!(data["tls.crt"].0, plan.ca.cert_pem().as_bytes());
        assert!(!data.contains_key(CA_NEXT_CERT));

        let existing = Existing {
            ca: Some((plan.ca.cert_pem().to_owned(), plan.ca.key_pem().clone())),
            bundle: Some(plan.bundle.to_pem()),
            leaves: plan.leaves.clone(),
            next: None,
        };
        let staged = pki::plan("vault", "demo", &existing, &requests, lifetimes, now + Duration::days(300)).unwrap();
        let data = ca_secret(&mpc, &staged).data.unwrap();
        assert_eq!(data[CA_NEXT_CERT].0, staged.next.as_ref().unwrap().0.cert_pem().as_bytes());
        assert!(data.contains_key(CA_NEXT_SINCE));
    }

    #[test]
    fn dns_names_cover_short_and_full_forms() {
        let names = node_dns_names(&cluster("demo", 3, 2), 1, "cluster.local");
        assert!(names.contains(&"demo-1-0.demo-nodes.vault.svc.cluster.local".to_owned()));
        assert!(names.contains(&"demo-1-0.demo-nodes".to_owned()));
    }
}
