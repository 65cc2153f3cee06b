//! The Helm chart `charts/torcus` with a real Helm (built from its Go
//! module): it lints, it renders with the default values and with every
//! optional part switched on, the local API server accepts what it renders
//! (server-side dry run), its CRDs are the generated ones, its images are the
//! ones the Dockerfiles build, and Prometheus's `promtool` accepts its alert
//! rules and fires them when it should.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Once;

use clap::CommandFactory as _;
use serde_yaml::Value;
use torcus_e2e::helm;
use torcus_e2e::testing::{self, prometheus_tool};

/// Release name; it contains the chart's name, so objects are called `torcus`.
const RELEASE: &str = "torcus";
/// Namespace the chart is rendered for.
const NAMESPACE: &str = "torcus-system";
/// Values with every optional part on (the chart-testing `ci/` convention).
const ALL_FEATURES: &str = "ci/all-features-values.yaml";
/// Namespaces [`ALL_FEATURES`] names: the watched one and the dashboards'.
const ALL_FEATURES_NAMESPACES: [&str; 2] = ["torcus-signers", "torcus-monitoring"];

/// Metrics the alerts or the dashboard use that no crate may define yet;
/// until they are exported, the alerts on them stay silent and their panels
/// empty. A name neither defined nor listed here fails
/// [`every_metric_the_chart_uses_exists`].
const PENDING_METRICS: &[&str] = &[
    // Node, per key: being added with the presignature pool.
    "torcus_presignature_pool_depth",
];

#[test]
fn chart_crds_are_the_generated_ones() {
    let generated = repo().join("crds/yaml");
    let in_chart = helm::chart_dir().join("crds");
    let names = |dir: &Path| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(
        names(&in_chart),
        names(&generated),
        "charts/torcus/crds/ must hold exactly the files of crds/yaml/ (cp crds/yaml/*.yaml charts/torcus/crds/)"
    );
    for name in names(&generated) {
        assert!(
            std::fs::read(generated.join(&name)).unwrap() == std::fs::read(in_chart.join(&name)).unwrap(),
            "charts/torcus/crds/{name} differs from crds/yaml/{name}; copy it again: cp crds/yaml/*.yaml charts/torcus/crds/"
        );
    }
}

#[test]
fn chart_version_and_images_match_the_workspace() {
    let chart: Value = serde_yaml::from_str(&read(&helm::chart_dir().join("Chart.yaml"))).unwrap();
    let values: Value = serde_yaml::from_str(&read(&helm::chart_dir().join("values.yaml"))).unwrap();
    let app_version = chart["appVersion"].as_str().unwrap();
    assert_eq!(app_version, env!("CARGO_PKG_VERSION"), "Chart.yaml appVersion is the workspace version");

    let operator_image = values["image"]["repository"].as_str().unwrap();
    let node_image = values["nodeImage"]["repository"].as_str().unwrap();
    assert_eq!(operator_image, "ghcr.io/torcus/torcus-operator");
    assert_eq!(node_image, "ghcr.io/torcus/torcus-node");
    assert_eq!(
        format!("{node_image}:{app_version}"),
        operator_default("node_image"),
        "the chart's node image is the operator's default"
    );

    for (dockerfile, package) in [("Dockerfile.operator", "torcus-operator"), ("Dockerfile.node", "torcus-node")] {
        let text = read(&repo().join(dockerfile));
        for needle in [
            format!("cargo build --release --locked -p {package} --bin {package}"),
            // Upstream's bases by default; scripts/build-images.sh names local ones.
            "ARG RUST_IMAGE=rust:1-bookworm\n".to_owned(),
            "ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot\n".to_owned(),
            "FROM ${RUST_IMAGE} AS build\n".to_owned(),
            "FROM ${RUNTIME_IMAGE}\n".to_owned(),
            format!("USER {uid}:{uid}", uid = torcus_operator::resources::NODE_UID),
            format!("ENTRYPOINT [\"/usr/local/bin/{package}\"]"),
        ] {
            assert!(text.contains(&needle), "{dockerfile} lacks `{needle}`");
        }
        // The image is the runtime stage: the last one.
        let last = text.lines().rfind(|l| l.starts_with("FROM "));
        assert_eq!(last, Some("FROM ${RUNTIME_IMAGE}"), "{dockerfile}'s last stage");
    }
}

/// The operator image needs no MPC engine: the operator links neither
/// cggmp24 nor GMP (its Dockerfile installs no m4), and the node's does.
#[test]
fn the_operator_links_no_mpc_engine() {
    let tree = |package: &str| {
        let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        cargo.current_dir(repo()).args(["tree", "--locked", "-e", "normal", "--prefix", "none"]);
        let out = run(cargo.args(["-p", package]));
        assert!(out.status.success(), "cargo tree -p {package}:\n{}", text(&out));
        String::from_utf8_lossy(&out.stdout).lines().map(|l| l.split(' ').next().unwrap_or("").to_owned()).collect()
    };
    let engine = ["cggmp24", "rug", "gmp-mpfr-sys", "torcus-node"];
    let operator: BTreeSet<String> = tree("torcus-operator");
    assert!(operator.contains("hd-wallet") && operator.contains("kube"), "{operator:?}");
    for crate_ in engine {
        assert!(!operator.contains(crate_), "torcus-operator links {crate_}");
    }
    let node: BTreeSet<String> = tree("torcus-node");
    assert!(node.contains("cggmp24") && node.contains("gmp-mpfr-sys"), "the check sees the node's engine: {node:?}");
    let dockerfile = read(&repo().join("Dockerfile.operator"));
    let installs_m4 = dockerfile.lines().any(|l| !l.trim_start().starts_with('#') && l.contains("m4"));
    assert!(!installs_m4, "Dockerfile.operator installs m4:\n{dockerfile}");
}

#[test]
fn chart_lints() {
    let home = tempfile::tempdir().unwrap();
    for values in [None, Some(ALL_FEATURES)] {
        let mut lint = helm_command(home.path());
        lint.args(["lint", "--strict"]).arg(helm::chart_dir());
        if let Some(values) = values {
            lint.arg("--values").arg(helm::chart_dir().join(values));
        }
        let out = run(&mut lint);
        assert!(out.status.success(), "helm lint ({values:?}) failed:\n{}", text(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("0 chart(s) failed"), "{}", text(&out));
    }
}

#[test]
fn default_values_render_a_cluster_wide_operator_the_api_server_accepts() {
    let docs = render(&[]);
    assert_eq!(
        kinds(&docs),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ]
        .map(str::to_owned)
        .into(),
        "default values render the operator only"
    );

    let deployment = find(&docs, "Deployment", RELEASE);
    assert_eq!(deployment["spec"]["replicas"], 2);
    let env = container_env(deployment);
    assert!(!env.iter().any(|(k, _)| k == "TORCUS_WATCH_NAMESPACE"), "watches every namespace: {env:?}");
    assert_eq!(env_value(&env, "TORCUS_REGISTRY_URL"), format!("http://{RELEASE}.{NAMESPACE}.svc:8080"));
    assert_eq!(env_value(&env, "TORCUS_NODE_IMAGE"), operator_default("node_image"));
    assert_eq!(env_value(&env, "TORCUS_LEADER_ELECTION"), "true");
    assert_eq!(env_value(&env, "TORCUS_LEASE_NAME"), RELEASE);
    assert_eq!(env_value(&env, "TORCUS_SECRET_PROPAGATION"), operator_default("secret_propagation"));
    assert_eq!(env_value(&env, "POD_NAME"), "fieldRef:metadata.name");
    assert_eq!(env_value(&env, "POD_NAMESPACE"), "fieldRef:metadata.namespace");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], format!("ghcr.io/torcus/torcus-operator:{}", env!("CARGO_PKG_VERSION")));
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"], true);

    assert_least_privilege(find(&docs, "ClusterRole", RELEASE));
    let lease_role = find(&docs, "Role", &format!("{RELEASE}-leader-election"));
    assert_eq!(lease_role["metadata"]["namespace"], NAMESPACE);
    assert_eq!(lease_role["rules"][1]["resourceNames"][0], RELEASE, "get and patch only its own Lease");

    dry_run(&render(&["--include-crds"]), &[]);
}

#[test]
fn helm_installs_and_uninstalls_the_chart() {
    let shared = testing::shared();
    let home = tempfile::tempdir().unwrap();
    let helm = || {
        let mut c = helm_command(home.path());
        c.env("KUBECONFIG", &shared.kubeconfig);
        c
    };
    // Names of its own: cluster-wide objects must not meet the dry runs'.
    let (release, namespace) = ("torcus-smoke", "torcus-smoke");
    let out =
        run(helm().args(["install", release, "--namespace", namespace, "--create-namespace"]).arg(helm::chart_dir()));
    assert!(out.status.success(), "helm install failed:\n{}", text(&out));
    assert!(text(&out).contains("STATUS: deployed"), "{}", text(&out));
    assert!(text(&out).contains(&format!("http://{release}.{namespace}.svc:8080")), "NOTES: {}", text(&out));

    let out = run(Command::new(&shared.binary)
        .arg("kubectl")
        .arg(format!("--kubeconfig={}", shared.kubeconfig.display()))
        .args(["get", "deployment,service,serviceaccount,role,rolebinding", "--namespace", namespace, "-o", "name"]));
    assert!(out.status.success(), "{}", text(&out));
    let listed = String::from_utf8_lossy(&out.stdout);
    for object in [
        format!("deployment.apps/{release}"),
        format!("service/{release}"),
        format!("serviceaccount/{release}"),
        format!("role.rbac.authorization.k8s.io/{release}-leader-election"),
    ] {
        assert!(listed.contains(&object), "{object} not installed: {listed}");
    }

    let out = run(helm().args(["uninstall", release, "--namespace", namespace, "--wait"]));
    assert!(out.status.success(), "helm uninstall failed:\n{}", text(&out));
}

#[test]
fn every_optional_part_renders_and_the_api_server_accepts_it() {
    let values = helm::chart_dir().join(ALL_FEATURES);
    let values_arg = format!("--values={}", values.display());
    let docs = render(&[&values_arg]);
    let kinds = kinds(&docs);
    for kind in ["Role", "RoleBinding", "ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap", "NetworkPolicy"]
    {
        assert!(kinds.contains(kind), "{kind} missing from {kinds:?}");
    }
    assert!(!kinds.contains("ClusterRole"), "one watched namespace needs nothing cluster-wide: {kinds:?}");

    let [watched, monitoring] = ALL_FEATURES_NAMESPACES;
    let role = find(&docs, "Role", RELEASE);
    assert_eq!(role["metadata"]["namespace"], watched);
    assert_least_privilege(role);
    let env = container_env(find(&docs, "Deployment", RELEASE));
    assert_eq!(env_value(&env, "TORCUS_WATCH_NAMESPACE"), watched);
    assert_eq!(env_value(&env, "TORCUS_NODE_IMAGE"), "registry.example.com/torcus/torcus-node:test");
    assert_eq!(env_value(&env, "TORCUS_CLUSTER_DOMAIN"), "cluster.example");
    assert_eq!(env_value(&env, "TORCUS_LEASE_NAME"), "torcus-leader");

    let node_policy = find(&docs, "NetworkPolicy", &format!("{RELEASE}-nodes"));
    assert_eq!(node_policy["metadata"]["namespace"], watched, "the node policy goes where the nodes run");
    assert_eq!(node_policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/managed-by"], "torcus-operator");

    let pod_monitor = find(&docs, "PodMonitor", &format!("{RELEASE}-nodes"));
    assert_eq!(pod_monitor["spec"]["namespaceSelector"]["matchNames"][0], watched);
    assert_eq!(pod_monitor["spec"]["podMetricsEndpoints"][0]["port"], "metrics");

    let dashboards = find(&docs, "ConfigMap", &format!("{RELEASE}-dashboards"));
    assert_eq!(dashboards["metadata"]["namespace"], monitoring);
    assert_eq!(dashboards["metadata"]["labels"]["grafana_dashboard"], "1");
    let json = dashboards["data"]["torcus.json"].as_str().expect("the dashboard JSON");
    let dashboard: serde_json::Value = serde_json::from_str(json).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "torcus-overview");

    dry_run(&render(&["--include-crds", &values_arg]), &ALL_FEATURES_NAMESPACES);
}

#[test]
fn values_the_operator_cannot_honour_are_refused() {
    let home = tempfile::tempdir().unwrap();
    for (set, message) in [
        ("watchNamespaces={a,b}", "watches one namespace or all of them"),
        ("leaderElection.enabled=false", "replicaCount > 1 needs leaderElection.enabled"),
        ("secretPropagation=5 minutes", "secretPropagation"),
        ("secretPropagation=0s", "secretPropagation"),
    ] {
        let out = run(helm_command(home.path())
            .args(["template", RELEASE, "--namespace", NAMESPACE, "--set", set])
            .arg(helm::chart_dir()));
        assert!(!out.status.success(), "{set} rendered");
        assert!(text(&out).contains(message), "{set}: {}", text(&out));
    }
    // One replica needs no leader election.
    let out = run(helm_command(home.path())
        .args(["template", RELEASE, "--namespace", NAMESPACE, "--set", "leaderElection.enabled=false,replicaCount=1"])
        .arg(helm::chart_dir()));
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn promtool_accepts_the_alert_rules_and_they_fire() {
    let Some(promtool) = prometheus_tool("promtool", "the alert rules were not checked") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, serde_yaml::to_string(&prometheus_rule_spec()).unwrap()).unwrap();
    let out = run(Command::new(&promtool).arg("check").arg("rules").arg(&rules));
    assert!(out.status.success(), "promtool check rules:\n{}", text(&out));

    std::fs::write(dir.path().join("test.yaml"), ALERT_TESTS).unwrap();
    let out = run(Command::new(&promtool).args(["test", "rules", "test.yaml"]).current_dir(dir.path()));
    assert!(out.status.success(), "promtool test rules:\n{}", text(&out));
}

#[test]
fn every_metric_the_chart_uses_exists() {
    let defined = defined_metrics();
    assert!(defined.contains("torcus_signing_requests_total"), "found no metric definitions: {defined:?}");
    let used = helm::chart_metric_names().unwrap();
    assert!(used.len() > 20, "the alerts and the dashboard query metrics: {used:?}");
    // The names are read from the template; those of the rendered rules must be among them.
    let mut rendered = BTreeSet::new();
    for group in prometheus_rule_spec()["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            rendered.extend(helm::metric_names(rule["expr"].as_str().unwrap()));
        }
    }
    let missed: Vec<_> = rendered.difference(&used).collect();
    assert!(missed.is_empty(), "the rendered alert rules use metrics chart_metric_names() missed: {missed:?}");

    let base = |name: &str| -> String {
        ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|b| defined.contains(*b)))
            .unwrap_or(name)
            .to_owned()
    };
    let unknown: Vec<_> = used
        .iter()
        .map(|n| base(n))
        .filter(|n| !defined.contains(n) && !PENDING_METRICS.contains(&n.as_str()))
        .collect();
    assert!(unknown.is_empty(), "the chart uses metrics nothing defines: {unknown:?}");
    let pending: Vec<_> = PENDING_METRICS.iter().filter(|n| !defined.contains(**n)).collect();
    if !pending.is_empty() {
        eprintln!("NOTE: metrics the alerts and dashboard use that are not exported yet: {pending:?}");
    }
}

/// promtool unit tests of the alerts: quorum at risk and lost, signing
/// failures, an operator without a leader.
const ALERT_TESTS: &str = r#"
rule_files: [rules.yaml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'torcus_mpccluster_threshold{namespace="vault", mpccluster="demo"}'
        values: '2x20'
      - series: 'torcus_mpccluster_nodes_online{namespace="vault", mpccluster="demo"}'
        values: '3x5 2x5 1x10'
      - series: 'torcus_signing_requests_total{phase="Completed", job="torcus", namespace="torcus-system"}'
        values: '0+10x40'
      - series: 'torcus_signing_requests_total{phase="Failed", job="torcus", namespace="torcus-system"}'
        values: '0x20 0+5x20'
      - series: 'up{job="torcus", namespace="torcus-system"}'
        values: '1x40'
      - series: 'torcus_operator_leader{job="torcus", namespace="torcus-system", instance="a"}'
        values: '1x10 0x30'
    alert_rule_test:
      - eval_time: 4m
        alertname: TorcusQuorumAtRisk
        exp_alerts: []
      - eval_time: 9m
        alertname: TorcusQuorumAtRisk
        exp_alerts:
          - exp_labels: {severity: warning, team: signing, namespace: vault, mpccluster: demo}
            exp_annotations:
              summary: MpcCluster vault/demo is one node from losing its quorum
              description: '2 nodes are online or hold a share of each key, no more than the threshold: one more node lost and the cluster cannot sign (a lost share shows in the MpcCluster''s Degraded condition).'
      - eval_time: 9m
        alertname: TorcusQuorumLost
        exp_alerts: []
      - eval_time: 14m
        alertname: TorcusQuorumLost
        exp_alerts:
          - exp_labels: {severity: critical, team: signing, namespace: vault, mpccluster: demo}
            exp_annotations:
              summary: MpcCluster vault/demo cannot sign
              description: 'Only 1 of its nodes are online or hold a share of each key, fewer than its threshold: no signer set can be formed, so every SigningRequest waits or fails.'
      - eval_time: 15m
        alertname: TorcusSigningFailuresRising
        exp_alerts: []
      - eval_time: 40m
        alertname: TorcusSigningFailuresRising
        exp_alerts:
          - exp_labels: {severity: warning, team: signing}
            exp_annotations:
              summary: SigningRequests are failing
              description: 'More than 10% of the SigningRequests that finished in the last 15 minutes ended Failed (currently 33.33%); see their status.reason.'
      - eval_time: 12m
        alertname: TorcusOperatorNoLeader
        exp_alerts: []
      - eval_time: 20m
        alertname: TorcusOperatorNoLeader
        exp_alerts:
          - exp_labels: {severity: critical, team: signing}
            exp_annotations:
              summary: No Torcus operator replica holds the leader Lease
              description: 'Replicas are up but none leads, so none reconciles or issues grants (see the Lease torcus-leader in torcus-system).'
      - eval_time: 20m
        alertname: TorcusOperatorDown
        exp_alerts: []
  # Every node online, but one lost its volume: two of three hold the key.
  - interval: 1m
    input_series:
      - series: 'torcus_mpccluster_threshold{namespace="vault", mpccluster="lost"}'
        values: '2x20'
      - series: 'torcus_mpccluster_nodes_online{namespace="vault", mpccluster="lost"}'
        values: '3x20'
      - series: 'torcus_mpccluster_key_shares{namespace="vault", mpccluster="lost", key="default"}'
        values: '3x5 2x15'
    alert_rule_test:
      - eval_time: 4m
        alertname: TorcusQuorumAtRisk
        exp_alerts: []
      - eval_time: 9m
        alertname: TorcusQuorumAtRisk
        exp_alerts:
          - exp_labels: {severity: warning, team: signing, namespace: vault, mpccluster: lost}
            exp_annotations:
              summary: MpcCluster vault/lost is one node from losing its quorum
              description: '2 nodes are online or hold a share of each key, no more than the threshold: one more node lost and the cluster cannot sign (a lost share shows in the MpcCluster''s Degraded condition).'
      - eval_time: 9m
        alertname: TorcusQuorumLost
        exp_alerts: []
"#;

fn repo() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    path.canonicalize().unwrap_or(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn run(command: &mut Command) -> Output {
    command.output().unwrap_or_else(|e| panic!("running {command:?}: {e}"))
}

/// `helm` with its folders in `home`; builds it on first use.
fn helm_command(home: &Path) -> Command {
    helm::command(home).unwrap_or_else(|e| panic!("helm: {e:#}"))
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The default value of an operator flag, as clap has it.
fn operator_default(id: &str) -> String {
    let command = torcus_operator::Args::command();
    let arg = command.get_arguments().find(|a| a.get_id() == id).unwrap_or_else(|| panic!("no operator flag {id}"));
    arg.get_default_values()[0].to_string_lossy().into_owned()
}

/// `helm template` of the chart for [`RELEASE`] in [`NAMESPACE`], split
/// into its documents.
fn render(args: &[&str]) -> Vec<Value> {
    let home = tempfile::tempdir().unwrap();
    let out = run(helm_command(home.path())
        .args(["template", RELEASE, "--namespace", NAMESPACE])
        .args(args)
        .arg(helm::chart_dir()));
    assert!(out.status.success(), "helm template {args:?} failed:\n{}", text(&out));
    let yaml = String::from_utf8(out.stdout).unwrap();
    // Helm separates documents with a bare `---` line; none occurs inside one.
    yaml.split("\n---\n")
        .map(|doc| serde_yaml::from_str::<Value>(doc).unwrap_or_else(|e| panic!("{e}: {doc}")))
        .filter(|doc| !doc.is_null())
        .collect()
}

fn kinds(docs: &[Value]) -> BTreeSet<String> {
    docs.iter().map(|d| d["kind"].as_str().unwrap().to_owned()).collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {:?}", kinds(docs)))
}

/// The operator container's environment: name and value, or
/// `fieldRef:<path>` for the downward API.
fn container_env(deployment: &Value) -> Vec<(String, String)> {
    let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"].as_sequence().unwrap();
    env.iter()
        .map(|e| {
            let value = match e["value"].as_str() {
                Some(v) => v.to_owned(),
                None => format!("fieldRef:{}", e["valueFrom"]["fieldRef"]["fieldPath"].as_str().unwrap()),
            };
            (e["name"].as_str().unwrap().to_owned(), value)
        })
        .collect()
}

fn env_value(env: &[(String, String)], name: &str) -> String {
    env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_else(|| panic!("no {name} in {env:?}"))
}

/// The operator's rules in the namespaces it manages: the verbs it uses and
/// no others; nothing it only reads may be written.
fn assert_least_privilege(role: &Value) {
    let mut granted = BTreeSet::new();
    for rule in role["rules"].as_sequence().unwrap() {
        for group in rule["apiGroups"].as_sequence().unwrap() {
            for resource in rule["resources"].as_sequence().unwrap() {
                for verb in rule["verbs"].as_sequence().unwrap() {
                    granted.insert(format!(
                        "{}/{} {}",
                        group.as_str().unwrap(),
                        resource.as_str().unwrap(),
                        verb.as_str().unwrap()
                    ));
                }
            }
        }
    }
    let mut expected = BTreeSet::new();
    for verb in ["get", "list", "watch"] {
        expected.insert(format!("mpc.torcus.io/mpcclusters {verb}"));
        expected.insert(format!("mpc.torcus.io/signingrequests {verb}"));
    }
    expected.insert("mpc.torcus.io/mpcclusters/status patch".to_owned());
    expected.insert("mpc.torcus.io/signingrequests/status patch".to_owned());
    for resource in ["/configmaps", "/services", "apps/statefulsets", "policy/poddisruptionbudgets"] {
        for verb in ["get", "list", "watch", "create", "patch"] {
            expected.insert(format!("{resource} {verb}"));
        }
    }
    // Secrets by name only: never listed or watched.
    for verb in ["get", "create", "patch"] {
        expected.insert(format!("/secrets {verb}"));
    }
    expected.insert("/pods list".to_owned());
    expected.insert("/pods watch".to_owned());
    expected.insert("/persistentvolumeclaims get".to_owned());
    expected.insert("events.k8s.io/events create".to_owned());
    expected.insert("events.k8s.io/events patch".to_owned());
    assert_eq!(granted, expected, "the operator's rules");
}

/// Applies `docs` with a server-side dry run on the local API server, after
/// creating `namespaces` (and [`NAMESPACE`]) and the Prometheus Operator's
/// CRDs; every object must be accepted.
fn dry_run(docs: &[Value], namespaces: &[&str]) {
    let shared = testing::shared();
    monitoring_crds();
    let kubectl = || {
        let mut c = Command::new(&shared.binary);
        c.arg("kubectl").arg(format!("--kubeconfig={}", shared.kubeconfig.display()));
        c
    };
    let namespace_docs: String = [NAMESPACE]
        .iter()
        .chain(namespaces)
        .map(|ns| format!("---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"))
        .collect();
    apply(kubectl().args(["apply", "--server-side", "-f", "-"]), &namespace_docs);

    let manifests: String = docs.iter().map(|d| format!("---\n{}", serde_yaml::to_string(d).unwrap())).collect();
    let out = apply(kubectl().args(["apply", "--server-side", "--dry-run=server", "-f", "-"]), &manifests);
    let accepted = out.lines().filter(|l| l.contains("serverside-applied (server dry run)")).count();
    assert_eq!(accepted, docs.len(), "every rendered object is accepted:\n{out}");
}

/// Runs `command` with `stdin` and returns its standard output; panics with
/// its output when it fails.
fn apply(command: &mut Command, stdin: &str) -> String {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {command:?}: {e}"));
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{command:?} failed:\n{}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// Minimal CRDs of the Prometheus Operator's ServiceMonitor, PodMonitor and
/// PrometheusRule (any content), so that the API server knows the kinds.
fn monitoring_crds() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let shared = testing::shared();
        let crd = |kind: &str, plural: &str| {
            format!(
                "---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: {plural}.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  names: {{kind: {kind}, plural: {plural}, singular: {singular}, listKind: {kind}List}}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          x-kubernetes-preserve-unknown-fields: true
",
                singular = plural.trim_end_matches('s'),
            )
        };
        let crds = [
            ("ServiceMonitor", "servicemonitors"),
            ("PodMonitor", "podmonitors"),
            ("PrometheusRule", "prometheusrules"),
        ]
        .map(|(kind, plural)| crd(kind, plural))
        .concat();
        let kubectl = || {
            let mut c = Command::new(&shared.binary);
            c.arg("kubectl").arg(format!("--kubeconfig={}", shared.kubeconfig.display()));
            c
        };
        apply(kubectl().args(["apply", "--server-side", "-f", "-"]), &crds);
        let out = run(kubectl().args([
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/servicemonitors.monitoring.coreos.com",
            "crd/podmonitors.monitoring.coreos.com",
            "crd/prometheusrules.monitoring.coreos.com",
        ]));
        assert!(out.status.success(), "monitoring CRDs not established:\n{}", text(&out));
    });
}

/// The `spec` of the PrometheusRule the chart renders with every part on:
/// a Prometheus rule file.
fn prometheus_rule_spec() -> Value {
    let values = format!("--values={}", helm::chart_dir().join(ALL_FEATURES).display());
    let docs = render(&[&values]);
    find(&docs, "PrometheusRule", RELEASE)["spec"].clone()
}

/// Every `torcus_…` metric name defined as a string literal in the
/// operator's and the node's sources.
fn defined_metrics() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut dirs = vec![repo().join("operator/src"), repo().join("node/src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let source = read(&path);
                names.extend(source.split('"').skip(1).step_by(2).filter(|s| is_metric_name(s)).map(str::to_owned));
            }
        }
    }
    names
}

fn is_metric_name(s: &str) -> bool {
    s.starts_with("torcus_")
        && s.len() > 7
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}
