//! Test scaffolding on the local control plane: one control plane per test
//! binary, and for each test its own namespace with its own operator
//! watching only that namespace (linkerd's `with_temp_ns`) and, when the
//! test runs pods, its own process kubelet.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

use crate::controlplane::{self, ControlPlane};
use crate::kubelet::{Kubelet, KubeletConfig, KubeletHandle};

/// What tests need of the shared control plane.
#[derive(Clone, Debug)]
pub struct Shared {
    /// Admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// The control plane binary, for kubectl.
    pub binary: PathBuf,
}

/// Starts the control plane on first use and keeps it for the life of the
/// test process. It lives on a thread of its own with its own runtime, since
/// each test has its own runtime that ends with the test; the processes end
/// with the test process (they watch their parent).
pub fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        // The operator runs in the test process: TORCUS_TEST_LOG (an
        // EnvFilter, such as `torcus_operator=debug`) shows what it does.
        if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("TORCUS_TEST_LOG") {
            let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("controlplane".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                remove_stale_dirs();
                let dir = tempfile::Builder::new().prefix("torcus-e2e-").tempdir().expect("temp dir").keep();
                std::fs::write(dir.join("owner.pid"), std::process::id().to_string()).expect("write owner.pid");
                let started = runtime.block_on(async {
                    let cp = ControlPlane::start(&dir).await?;
                    cp.install_crds().await?;
                    anyhow::Ok(cp)
                });
                match started {
                    Ok(cp) => {
                        let shared = Shared {
                            kubeconfig: cp.kubeconfig().to_owned(),
                            binary: controlplane::binary().expect("binary"),
                        };
                        tx.send(Ok(shared)).expect("test thread waits");
                        // Keep the control plane (and its Drop) parked here for the process's life.
                        loop {
                            std::thread::park();
                        }
                    }
                    Err(e) => tx.send(Err(format!("{e:#}"))).expect("test thread waits"),
                }
            })
            .expect("spawn control plane thread");
        match rx.recv().expect("control plane thread answers") {
            Ok(shared) => shared,
            Err(e) => panic!("local control plane did not start: {e}"),
        }
    })
}

/// The control plane's folder outlives its test process (nothing drops a
/// static); remove the folders whose owner process is gone.
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let owned = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("torcus-e2e-"));
        let owner = std::fs::read_to_string(path.join("owner.pid")).ok().and_then(|p| p.trim().parse::<u32>().ok());
        if owned && owner.is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// A namespace of one test, with an operator watching only it. When a test
/// fails, dropping it prints what the namespace held, for the log.
pub struct TestNamespace {
    /// Admin client.
    pub client: Client,
    /// The namespace's name.
    pub name: String,
    operator: Option<(CancellationToken, tokio::task::JoinHandle<anyhow::Result<()>>)>,
    kubelet: Option<KubeletHandle>,
    /// The registry URL the nodes are given: the first operator's address,
    /// kept across operator restarts so the node configuration stays put.
    registry_url: Option<String>,
    /// Made by [`Self::second`]: its operator listens on a port of its own.
    is_second: bool,
    /// This test's place among the clusters that run at once.
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Handed to every operator this namespace starts.
    test_hooks: torcus_operator::test_hooks::TestHooks,
    /// Its kubelet gives a re-created pod a new IP.
    new_ips: bool,
    /// Network namespaces its pods run in ([`Self::in_network_namespaces`]).
    network: Option<crate::kubelet::PodNetwork>,
}

/// How many tests of one test binary run node processes at once
/// (`TORCUS_E2E_CLUSTERS`, default 3). MPC rounds are CPU-bound: on a small
/// machine more clusters at once only make each one slower, until the
/// timeouts meant for a dead peer fire on a live one.
fn cluster_slots() -> std::sync::Arc<tokio::sync::Semaphore> {
    static SLOTS: OnceLock<std::sync::Arc<tokio::sync::Semaphore>> = OnceLock::new();
    SLOTS
        .get_or_init(|| {
            let n = std::env::var("TORCUS_E2E_CLUSTERS").ok().and_then(|v| v.parse().ok()).unwrap_or(3usize);
            std::sync::Arc::new(tokio::sync::Semaphore::new(n.max(1)))
        })
        .clone()
}

impl std::fmt::Debug for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNamespace").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let out = self
                .kubectl()
                .args(["get", "mpc,sr,statefulsets,pods,services,pdb,secrets,configmaps,leases,events", "-o", "wide"])
                .output();
            if let Ok(out) = out {
                eprintln!(
                    "--- namespace {} at the failure ---\n{}{}",
                    self.name,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            if let Some(kubelet) = &self.kubelet {
                let logs = kubelet.work_dir().join("logs");
                let mut files: Vec<PathBuf> =
                    std::fs::read_dir(&logs).into_iter().flatten().flatten().map(|e| e.path()).collect();
                files.sort();
                for file in files {
                    eprintln!("--- {} (last lines) ---\n{}", file.display(), crate::process::tail(&file, 40));
                }
            }
        }
        // Dropping the kubelet kills its processes.
    }
}

impl TestNamespace {
    /// Creates a fresh namespace `torcus-<prefix>-<random>`.
    pub async fn new(prefix: &str) -> anyhow::Result<Self> {
        let shared = shared();
        let client = controlplane::client_for(&shared.kubeconfig).await?;
        let suffix: String = format!("{:08x}", rand_u32());
        let name = format!("torcus-{prefix}-{suffix}");
        let ns = Namespace {
            metadata: kube::api::ObjectMeta { name: Some(name.clone()), ..Default::default() },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await?;
        let registry_url = operator_args(&name).registry_url;
        Ok(Self {
            client,
            name,
            operator: None,
            kubelet: None,
            registry_url,
            is_second: false,
            _slot: None,
            test_hooks: Default::default(),
            new_ips: false,
            network: None,
        })
    }

    /// Another handle on the same namespace, for a second operator.
    pub fn second(&self) -> Self {
        Self {
            client: self.client.clone(),
            name: self.name.clone(),
            operator: None,
            kubelet: None,
            registry_url: self.registry_url.clone(),
            is_second: true,
            _slot: None,
            test_hooks: self.test_hooks,
            new_ips: self.new_ips,
            network: self.network.clone(),
        }
    }

    /// Makes the kubelet this namespace starts give a pod deleted and made
    /// again a new IP, as a real cluster does.
    pub fn new_ips_on_recreate(&mut self) {
        self.new_ips = true;
    }

    /// Makes the kubelet this namespace starts run its pods in `network`'s
    /// namespaces (one each), which the test made on a bridge whose address
    /// in the test's namespace is `gateway`: the operator listens there,
    /// and the nodes reach it there. Before the kubelet and the operator
    /// start. The test keeps what made the namespaces until this is
    /// dropped (declared before it).
    pub fn in_network_namespaces(&mut self, network: crate::kubelet::PodNetwork, gateway: std::net::IpAddr) {
        assert!(self.kubelet.is_none() && self.operator.is_none(), "before the kubelet and the operator start");
        let port = crate::process::free_port().expect("a free port");
        self.registry_url = Some(format!("http://{gateway}:{port}"));
        self.network = Some(network);
    }

    /// Makes every operator this namespace starts from now on misbehave as
    /// `hooks` say.
    pub fn operator_test_hooks(&mut self, hooks: torcus_operator::test_hooks::TestHooks) {
        self.test_hooks = hooks;
    }

    /// The first operator's `/metrics` text.
    ///
    /// # Panics
    /// If no operator address is known or it does not answer: a mistake in
    /// the test, or the failure it looks for.
    pub async fn operator_metrics(&self) -> String {
        let url = self.operator_url().expect("an operator URL");
        let addr: std::net::SocketAddr = url.trim_start_matches("http://").parse().expect("a loopback address");
        let (code, body) =
            crate::kubelet::http_get(addr, "/metrics", Duration::from_secs(5)).await.expect("operator /metrics");
        assert_eq!(code, 200, "{body}");
        body
    }

    /// A TLS client of party `party` of `cluster`'s node API that presents
    /// the certificate in Secret `secret` (`tls.crt`, `tls.key`, `ca.crt`)
    /// and accepts only that party's certificate, as the operator does.
    pub async fn node_api_tls(
        &self,
        cluster: &str,
        party: u16,
        secret: &str,
    ) -> anyhow::Result<std::sync::Arc<torcus_certs::rustls::ClientConfig>> {
        let secret = self.api::<k8s_openapi::api::core::v1::Secret>().get(secret).await?;
        let data = secret.data.unwrap_or_default();
        let field = |name: &str| -> anyhow::Result<String> {
            let bytes = data.get(name).ok_or_else(|| anyhow::anyhow!("no {name} in the Secret"))?;
            Ok(String::from_utf8(bytes.0.clone())?)
        };
        let expected = torcus_certs::Identity {
            namespace: self.name.clone(),
            cluster: cluster.to_owned(),
            role: torcus_certs::Role::Node { party_index: party },
        };
        let key = torcus_certs::SecretPem::new(field("tls.key")?);
        let alpn: &[&[u8]] = &[b"http/1.1"];
        Ok(torcus_certs::client_config_for(&field("tls.crt")?, &key, &field("ca.crt")?, &expected, alpn)?)
    }

    /// GET of `path` on party `party` of `cluster`'s node API, as the
    /// operator calls it (mutual TLS with `<cluster>-operator-client`).
    pub async fn node_api_get(&self, cluster: &str, party: u16, path: &str) -> anyhow::Result<(u16, String)> {
        let tls = self.node_api_tls(cluster, party, &format!("{cluster}-operator-client")).await?;
        let addr = self.node_addr(cluster, party, torcus_contract::HTTP_PORT)?;
        crate::kubelet::https_get(addr, tls, &addr.ip().to_string(), path, Duration::from_secs(5)).await
    }

    /// GET of `path` on party `party` of `cluster`'s plain HTTP port
    /// (`/metrics`, `/healthz`, `/readyz`).
    pub async fn node_plain_get(&self, cluster: &str, party: u16, path: &str) -> anyhow::Result<(u16, String)> {
        let addr = self.node_addr(cluster, party, torcus_contract::METRICS_PORT)?;
        crate::kubelet::http_get(addr, path, Duration::from_secs(5)).await
    }

    /// Party `party` of `cluster`'s pod address with `port`.
    pub fn node_addr(&self, cluster: &str, party: u16, port: u16) -> anyhow::Result<std::net::SocketAddr> {
        let pod = format!("{cluster}-{party}-0");
        let ip = self.kubelet().pod_ip(&self.name, &pod).ok_or_else(|| anyhow::anyhow!("{pod} has no IP"))?;
        Ok(std::net::SocketAddr::new(ip, port))
    }

    /// The first operator's HTTP address as a URL (`http://127.0.0.1:<port>`):
    /// its `/metrics`, and the registry and relay its nodes are given.
    pub fn operator_url(&self) -> Option<&str> {
        self.registry_url.as_deref()
    }

    /// Starts a process kubelet for this namespace's pods (Node
    /// `local-<namespace>`), running `torcus-node` with the test primes and
    /// aux info fixtures: keygens name the fixture's aux info and take
    /// milliseconds.
    pub async fn start_kubelet(&mut self) -> anyhow::Result<()> {
        self.start_kubelet_with(crate::kubelet::node_binary()?).await
    }

    /// Like [`Self::start_kubelet`], without the aux info fixture: nodes
    /// run the aux info protocol in their first keygen (from the primes
    /// fixture), as product nodes do.
    pub async fn start_kubelet_generating_aux(&mut self) -> anyhow::Result<()> {
        let primes = vec![("TORCUS_TEST_PRIMES_FIXTURE".to_owned(), primes_fixture().display().to_string())];
        self.start_kubelet_as(crate::kubelet::node_binary()?, primes).await
    }

    /// Like [`Self::start_kubelet`], without fixtures: nodes generate their
    /// own safe primes, as in a product (minutes on 2 cores).
    pub async fn start_kubelet_generating_primes(&mut self) -> anyhow::Result<()> {
        self.start_kubelet_as(crate::kubelet::node_binary()?, Vec::new()).await
    }

    /// Like [`Self::start_kubelet`], with `node_binary` as the program of
    /// `torcus-node` images.
    pub async fn start_kubelet_with(&mut self, node_binary: PathBuf) -> anyhow::Result<()> {
        self.start_kubelet_with_env(node_binary, Vec::new()).await
    }

    /// Like [`Self::start_kubelet_with`], with `env` added to every node's
    /// environment (a test hook, say).
    pub async fn start_kubelet_with_env(
        &mut self,
        node_binary: PathBuf,
        env: Vec<(String, String)>,
    ) -> anyhow::Result<()> {
        let mut fixtures = vec![
            ("TORCUS_TEST_PRIMES_FIXTURE".to_owned(), primes_fixture().display().to_string()),
            ("TORCUS_TEST_AUX_FIXTURE".to_owned(), aux_fixture().display().to_string()),
        ];
        fixtures.extend(env);
        self.start_kubelet_as(node_binary, fixtures).await
    }

    async fn start_kubelet_as(&mut self, node_binary: PathBuf, extra_env: Vec<(String, String)>) -> anyhow::Result<()> {
        anyhow::ensure!(self.kubelet.is_none(), "a kubelet already runs for {}", self.name);
        if self._slot.is_none() && !self.is_second {
            self._slot = Some(cluster_slots().acquire_owned().await?);
        }
        let dir = shared().kubeconfig.parent().map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
        let config = KubeletConfig {
            node_name: format!("local-{}", self.name),
            namespace: Some(self.name.clone()),
            node_binary,
            work_dir: dir.join(format!("kubelet-{}", self.name)),
            extra_env,
            new_ip_on_recreate: self.new_ips,
            network: self.network.clone(),
        };
        self.kubelet = Some(Kubelet::start(self.client.clone(), config).await?);
        Ok(())
    }

    /// The kubelet of [`Self::start_kubelet`].
    ///
    /// # Panics
    /// If no kubelet was started: a mistake in the test.
    pub fn kubelet(&self) -> &KubeletHandle {
        self.kubelet.as_ref().expect("start_kubelet before using the kubelet")
    }

    /// Stops the kubelet (killing its processes) and deletes its Node.
    pub async fn stop_kubelet(&mut self) {
        if let Some(kubelet) = self.kubelet.take() {
            kubelet.stop().await;
        }
    }

    /// Starts an operator watching only this namespace, leader election on
    /// with its Lease in this namespace.
    pub fn start_operator(&mut self) {
        self.start_with(operator_args(&self.name));
    }

    /// Like [`Self::start_operator`], with `instance` as its Lease identity.
    pub fn start_operator_as(&mut self, instance: &str) {
        let mut args = operator_args(&self.name);
        args.instance = Some(instance.to_owned());
        self.start_with(args);
    }

    /// Like [`Self::start_operator_as`], as if it ran in pod `pod` of this
    /// namespace (its name is its instance): it labels that pod while it leads.
    pub fn start_operator_in_pod(&mut self, pod: &str) {
        let mut args = operator_args(&self.name);
        args.instance = Some(pod.to_owned());
        args.pod_name = Some(pod.to_owned());
        self.start_with(args);
    }

    /// Like [`Self::start_operator`], talking to the API server through
    /// `client` (e.g. one that impersonates the chart's ServiceAccount),
    /// with its arguments changed by `edit`.
    pub fn start_operator_with_client(&mut self, client: Client, edit: impl FnOnce(&mut torcus_operator::Args)) {
        let mut args = operator_args(&self.name);
        edit(&mut args);
        self.start_with_client(args, Some(client));
    }

    fn start_with(&mut self, args: torcus_operator::Args) {
        self.start_with_client(args, None);
    }

    fn start_with_client(&mut self, mut args: torcus_operator::Args, client: Option<Client>) {
        args.test_hooks = self.test_hooks;
        // The same address after a restart; a second operator beside the
        // first listens elsewhere but hands out the same registry URL.
        if let Some(url) = &self.registry_url {
            if !self.is_second
                && let Some(first) = url.strip_prefix("http://").and_then(|a| a.parse().ok())
            {
                args.http_addr = first;
            }
            args.registry_url = Some(url.clone());
        }
        let stop = CancellationToken::new();
        let client = client.unwrap_or_else(|| self.client.clone());
        let shutdown = stop.clone().cancelled_owned();
        self.operator = Some((stop, tokio::spawn(async move { Ok(args.run(client, shutdown).await?) })));
    }

    /// Stops the operator and returns how it ended.
    pub async fn stop_operator(&mut self) -> anyhow::Result<()> {
        if let Some((stop, task)) = self.operator.take() {
            stop.cancel();
            tokio::time::timeout(Duration::from_secs(30), task).await???;
        }
        Ok(())
    }

    /// `kubectl` in this namespace.
    pub fn kubectl(&self) -> std::process::Command {
        let shared = shared();
        let mut c = std::process::Command::new(&shared.binary);
        c.arg("kubectl")
            .arg(format!("--kubeconfig={}", shared.kubeconfig.display()))
            .arg(format!("--namespace={}", self.name));
        c
    }

    /// An Api for namespaced objects in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Stops the operator and the kubelet and deletes the namespace.
    pub async fn finish(mut self) -> anyhow::Result<()> {
        self.stop_operator().await?;
        self.stop_kubelet().await;
        Api::<Namespace>::all(self.client.clone()).delete(&self.name, &DeleteParams::default()).await?;
        Ok(())
    }
}

/// Operator configuration for a test namespace.
///
/// The operator listens on a free loopback port, which is also the registry
/// and relay URL its nodes are given.
pub fn operator_args(namespace: &str) -> torcus_operator::Args {
    let port = crate::process::free_port().expect("a free loopback port");
    torcus_operator::Args {
        namespace: Some(namespace.to_owned()),
        node_image: "torcus/torcus-node:e2e".to_owned(),
        registry_url: Some(format!("http://127.0.0.1:{port}")),
        cluster_domain: "cluster.local".to_owned(),
        secret_propagation: std::time::Duration::from_secs(300),
        http_addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        leader_election: true,
        lease_name: "torcus-operator".to_owned(),
        lease_namespace: namespace.to_owned(),
        instance: None,
        pod_name: None,
        log_format: "plain".to_owned(),
        test_hooks: Default::default(),
    }
}

/// The safe primes fixture that lets `torcus-node` skip generating primes
/// (a hidden, test-only flag of the node).
pub fn primes_fixture() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../node/tests/fixtures/primes.json");
    path.canonicalize().unwrap_or(path)
}

/// The aux info fixture (a hidden, test-only flag of the node): keygens
/// name it instead of running the aux info protocol.
pub fn aux_fixture() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../node/tests/fixtures/aux-info.json");
    path.canonicalize().unwrap_or(path)
}

/// Polls `check` until it returns `Some` or `timeout` passes; the error
/// names what was awaited and the last thing seen.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = String::from("nothing yet");
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; last error: {last}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Changes cluster `cluster` to transport `mode` and watches its pods until
/// every one runs the new configuration: never more than one of the three
/// is down (gone, terminating or not ready) at a time. Gives up after `within`.
pub async fn roll_transport(ns: &TestNamespace, cluster: &str, mode: &str, within: Duration) {
    use k8s_openapi::api::core::v1::Pod;
    use kube::ResourceExt as _;
    const HASH: &str = "mpc.torcus.io/config-hash";
    let pods: Api<Pod> = ns.api();
    let hashes = |list: &[Pod]| -> Vec<Option<String>> {
        (0..3)
            .map(|i| {
                let pod = list.iter().find(|p| p.name_any() == format!("{cluster}-{i}-0"))?;
                pod.annotations().get(HASH).cloned()
            })
            .collect()
    };
    let before = hashes(&pods.list(&kube::api::ListParams::default()).await.unwrap().items);
    assert!(before.iter().all(Option::is_some), "{before:?}");
    let clusters: Api<torcus_crds::MpcCluster> = ns.api();
    let patch = serde_json::json!({"spec": {"transport": {"mode": mode}}});
    clusters.patch(cluster, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await.unwrap();

    let mut most_down = 0;
    let mut rolled = 0;
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        let list = pods.list(&kube::api::ListParams::default()).await.unwrap().items;
        let mut down = 0;
        rolled = 0;
        for (i, old) in before.iter().enumerate() {
            let pod = list.iter().find(|p| p.name_any() == format!("{cluster}-{i}-0"));
            let ready = pod.is_some_and(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && p.status
                        .iter()
                        .flat_map(|s| s.conditions.iter().flatten())
                        .any(|c| c.type_ == "Ready" && c.status == "True")
            });
            down += usize::from(!ready);
            let hash = pod.and_then(|p| p.annotations().get(HASH).cloned());
            rolled += usize::from(ready && hash.is_some() && hash != *old);
        }
        most_down = most_down.max(down);
        if rolled == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(rolled, 3, "every node runs the {mode} configuration");
    assert_eq!(most_down, 1, "the nodes rolled one at a time");
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    h.finish() as u32
}

/// Tool `name` of Debian's `prometheus` package (`promtool`, `prometheus`)
/// on the PATH. CI installs the package (`.ci/run`) and sets
/// `TORCUS_REQUIRE_PROMTOOL`, so there a missing tool fails the test;
/// elsewhere it is said, loudly, that `what` was not done, and `None`
/// returned.
pub fn prometheus_tool(name: &str, what: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("TORCUS_REQUIRE_PROMTOOL").is_none(),
            "{name} not found: install Debian's `prometheus` package"
        );
        eprintln!("NOTE: {name} not found (Debian package `prometheus`); {what}");
    }
    found
}

/// An operator run as the `torcus-operator` binary, in a process of its own,
/// as a pod of the chart's Deployment runs it. Dropping it stops it.
#[derive(Debug)]
pub struct OperatorProcess {
    /// Its Lease identity.
    pub instance: String,
    /// Its API and metrics address (`http://…`).
    pub url: String,
    process: crate::process::Process,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl OperatorProcess {
    /// Kills it with SIGKILL, as the kernel's OOM killer or a node failure
    /// would: no handler runs. Returns how it ended.
    pub fn kill(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.process.kill()
    }

    /// Stops it as the kubelet stops a pod that a rollout replaces: SIGTERM,
    /// then 30 s (the pod's default grace period) to exit.
    pub async fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.process.terminate(Duration::from_secs(30)).await
    }

    /// Fails with the end of its log if it has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        self.process.check_running()
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- operator {} (last lines) ---\n{}", self.instance, crate::process::tail(&self.log, 60));
        }
    }
}

impl TestNamespace {
    /// Applies the Helm chart's ServiceAccount, Role, RoleBinding and leader
    /// election Role, rendered for an operator that watches only this
    /// namespace; returns the ServiceAccount's name and the Lease the chart
    /// lets it hold.
    pub fn apply_chart_rbac(&self) -> anyhow::Result<(String, String)> {
        let home = tempfile::tempdir()?;
        let out = crate::helm::command(home.path())?
            .args([
                "template",
                "torcus",
                "--namespace",
                &self.name,
                "--set",
                &format!("watchNamespaces={{{}}}", self.name),
            ])
            .arg(crate::helm::chart_dir())
            .output()?;
        anyhow::ensure!(out.status.success(), "helm template: {}", String::from_utf8_lossy(&out.stderr));
        let yaml = String::from_utf8(out.stdout)?;
        let rbac: Vec<serde_yaml::Value> = yaml
            .split("\n---\n")
            .filter_map(|doc| serde_yaml::from_str::<serde_yaml::Value>(doc).ok())
            .filter(|doc| ["ServiceAccount", "Role", "RoleBinding"].iter().any(|k| doc["kind"] == *k))
            .collect();
        let account = rbac
            .iter()
            .find(|d| d["kind"] == "ServiceAccount")
            .and_then(|d| d["metadata"]["name"].as_str())
            .context("the chart renders no ServiceAccount")?
            .to_owned();
        let lease = rbac
            .iter()
            .filter(|d| d["kind"] == "Role")
            .flat_map(|d| d["rules"].as_sequence().into_iter().flatten())
            .find_map(|rule| rule["resourceNames"][0].as_str())
            .context("the leader election Role names no Lease")?
            .to_owned();
        let docs: Vec<String> = rbac.iter().map(serde_yaml::to_string).collect::<Result<_, _>>()?;
        let mut apply = self.kubectl().args(["apply", "-f", "-"]).stdin(std::process::Stdio::piped()).spawn()?;
        std::io::Write::write_all(apply.stdin.as_mut().context("kubectl stdin")?, docs.join("---\n").as_bytes())?;
        drop(apply.stdin.take());
        anyhow::ensure!(apply.wait()?.success(), "kubectl apply of the chart's RBAC failed");
        Ok((account, lease))
    }

    /// A token the API server issues (TokenRequest) for ServiceAccount
    /// `account` of this namespace, valid for two hours.
    pub fn service_account_token(&self, account: &str) -> anyhow::Result<String> {
        let out = self.kubectl().args(["create", "token", account, "--duration=2h"]).output()?;
        anyhow::ensure!(out.status.success(), "kubectl create token: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    }

    /// The API server's URL and its CA certificate (PEM), as a pod finds
    /// them: the `kubernetes` Service's address and the ServiceAccount
    /// volume's `ca.crt`.
    pub fn api_server(&self) -> anyhow::Result<(String, Vec<u8>)> {
        use base64::Engine as _;
        let admin: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&shared().kubeconfig)?)?;
        let cluster = &admin["clusters"][0]["cluster"];
        let server = cluster["server"].as_str().context("admin kubeconfig has no server")?;
        let ca = cluster["certificate-authority-data"].as_str().context("admin kubeconfig has no CA data")?;
        Ok((server.to_owned(), base64::engine::general_purpose::STANDARD.decode(ca)?))
    }

    /// A kubeconfig file in `dir` that authenticates as ServiceAccount
    /// `account` of this namespace, with a token the API server issued for
    /// it (TokenRequest), and nothing else.
    pub fn service_account_kubeconfig(&self, account: &str, dir: &Path) -> anyhow::Result<PathBuf> {
        use base64::Engine as _;
        let token = self.service_account_token(account)?;
        let (server, ca) = self.api_server()?;
        let ca = base64::engine::general_purpose::STANDARD.encode(ca);
        let config = serde_yaml::to_string(&serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "local", "cluster": {"server": server, "certificate-authority-data": ca}}],
            "users": [{"name": account, "user": {"token": token}}],
            "contexts": [{"name": account, "context": {"cluster": "local", "user": account, "namespace": self.name}}],
            "current-context": account,
        }))?;
        let path = dir.join(format!("{account}.kubeconfig"));
        std::fs::write(&path, config)?;
        Ok(path)
    }

    /// Starts the `torcus-operator` binary as `instance`, authenticated by
    /// `kubeconfig`, watching only this namespace, in the leader election for
    /// `lease`, on a free loopback port. It runs as pod `instance` of this
    /// namespace (`POD_NAME`, as the chart sets it), which it labels while
    /// it leads; [`Self::operator_pod`] makes that pod and
    /// [`Self::serve_leader_service`] routes the nodes to it.
    pub fn spawn_operator_process(
        &self,
        instance: &str,
        kubeconfig: &Path,
        lease: &str,
    ) -> anyhow::Result<OperatorProcess> {
        self.spawn_operator_with(instance, lease, |invocation| {
            let mut command = std::process::Command::new(crate::kubelet::operator_binary()?);
            command
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("KUBECONFIG", kubeconfig)
                .envs(invocation.env.iter().map(|(k, v)| (k, v)))
                .args(&invocation.args);
            Ok(command)
        })
    }

    /// Like [`Self::spawn_operator_process`], with the operator run by the
    /// command `make` returns for its environment and arguments (a
    /// container runtime running the operator's image, for example), which
    /// gives it its credentials.
    pub fn spawn_operator_with(
        &self,
        instance: &str,
        lease: &str,
        make: impl FnOnce(&OperatorInvocation) -> anyhow::Result<std::process::Command>,
    ) -> anyhow::Result<OperatorProcess> {
        let registry_url = self.registry_url.clone().context("no registry URL")?;
        let http_addr = format!("127.0.0.1:{}", crate::process::free_port()?);
        let dir = tempfile::tempdir()?;
        let log = dir.path().join(format!("{instance}.log"));
        let invocation = OperatorInvocation {
            env: vec![("RUST_LOG".into(), "info".into()), ("POD_NAME".into(), instance.into())],
            args: [
                "--namespace",
                &self.name,
                "--node-image",
                "torcus/torcus-node:e2e",
                "--registry-url",
                &registry_url,
                "--http-addr",
                &http_addr,
                "--lease-name",
                lease,
                "--lease-namespace",
                &self.name,
                "--instance",
                instance,
            ]
            .map(str::to_owned)
            .to_vec(),
        };
        let process = crate::process::Process::spawn(&format!("operator {instance}"), make(&invocation)?, &log)?;
        Ok(OperatorProcess {
            instance: instance.to_owned(),
            url: format!("http://{http_addr}"),
            process,
            log,
            _dir: dir,
        })
    }
}

/// How [`TestNamespace::spawn_operator_with`] runs an operator: its
/// environment and arguments, without credentials.
#[derive(Debug)]
pub struct OperatorInvocation {
    /// Environment variables (log filter, pod name).
    pub env: Vec<(String, String)>,
    /// Command-line arguments.
    pub args: Vec<String>,
}

impl TestNamespace {
    /// An operator pod as the chart's Deployment makes it, for
    /// [`Self::spawn_operator_process`]`(name, …)` to run as: only its
    /// labels matter (no kubelet runs it).
    pub async fn operator_pod(&self, name: &str) -> anyhow::Result<()> {
        use k8s_openapi::api::core::v1::Pod;
        let labels: serde_json::Map<String, serde_json::Value> =
            OPERATOR_POD_LABELS.iter().map(|(k, v)| ((*k).to_owned(), (*v).into())).collect();
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"containers": [{"name": "operator", "image": "torcus/torcus-operator:e2e"}]},
        }))?;
        let pods: Api<Pod> = self.api();
        // The namespace's default ServiceAccount may be a moment behind it.
        eventually(&format!("operator pod {name} created"), Duration::from_secs(30), || async {
            Ok(pods.create(&PostParams::default(), &pod).await.ok().map(drop))
        })
        .await
    }

    /// The chart's operator Service on loopback, at the registry and relay
    /// URL the nodes are given: it selects, as the Service does, the
    /// operator pod labelled `mpc.torcus.io/leader=true` (as the endpoints
    /// controller would, every 200 ms, leaving out pods being deleted) and
    /// forwards each new connection to the operator process that runs as
    /// that pod ([`LeaderService::route`]); to any of them, when more than
    /// one is labelled. With no such pod, connections are closed, as a
    /// Service without endpoints refuses them.
    pub async fn serve_leader_service(&self) -> anyhow::Result<LeaderService> {
        use k8s_openapi::api::core::v1::Pod;
        let url = self.registry_url.clone().context("no registry URL")?;
        let listener = tokio::net::TcpListener::bind(url.trim_start_matches("http://")).await?;
        let pods: Api<Pod> = self.api();
        let selector =
            OPERATOR_POD_LABELS.iter().fold(format!("{LEADER_LABEL}=true"), |s, (k, v)| format!("{s},{k}={v}"));
        let (endpoint, current) = tokio::sync::watch::channel(Vec::<String>::new());
        let stop = CancellationToken::new();
        let backends = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
        let most_endpoints = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let endpoints = tokio::spawn({
            let (stop, backends, most) = (stop.clone(), backends.clone(), most_endpoints.clone());
            async move {
                while !stop.is_cancelled() {
                    if let Ok(list) = pods.list(&kube::api::ListParams::default().labels(&selector)).await {
                        let routes = backends.lock().map(|b| b.clone()).unwrap_or_default();
                        // A pod being deleted leaves the endpoints at once.
                        let labelled: Vec<String> = list
                            .items
                            .iter()
                            .filter(|pod| pod.metadata.deletion_timestamp.is_none())
                            .filter_map(|pod| {
                                let name = kube::ResourceExt::name_any(pod);
                                let (_, url) = routes.iter().find(|(n, _)| *n == name)?;
                                Some(url.trim_start_matches("http://").to_owned())
                            })
                            .collect();
                        most.fetch_max(labelled.len(), std::sync::atomic::Ordering::Relaxed);
                        endpoint.send_if_modified(|e| std::mem::replace(e, labelled.clone()) != labelled);
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
        let forwarder = tokio::spawn({
            let stop = stop.clone();
            async move {
                loop {
                    let (mut inbound, _) = tokio::select! {
                        accepted = listener.accept() => match accepted {
                            Ok(a) => a,
                            Err(_) => {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                        },
                        () = stop.cancelled() => return,
                    };
                    // Like kube-proxy: any of the endpoints, per connection.
                    let Some(backend) = ({
                        let endpoints = current.borrow();
                        endpoints.get(usize::try_from(rand_u32()).unwrap_or(0) % endpoints.len().max(1)).cloned()
                    }) else {
                        continue;
                    };
                    let stop = stop.clone();
                    tokio::spawn(async move {
                        let Ok(mut outbound) = tokio::net::TcpStream::connect(&backend).await else { return };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            () = stop.cancelled() => {}
                        }
                    });
                }
            }
        });
        Ok(LeaderService { stop, backends, most_endpoints, tasks: vec![endpoints, forwarder] })
    }
}

/// The labels of the chart's operator pods (release `torcus`), which its
/// Service selects on, with the leader label.
const OPERATOR_POD_LABELS: [(&str, &str); 2] =
    [("app.kubernetes.io/name", "torcus"), ("app.kubernetes.io/instance", "torcus")];
const LEADER_LABEL: &str = "mpc.torcus.io/leader";

/// See [`TestNamespace::serve_leader_service`]; stops when dropped.
#[derive(Debug)]
pub struct LeaderService {
    stop: CancellationToken,
    backends: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
    most_endpoints: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl LeaderService {
    /// Lets the Service reach `operator` (running as the pod of its
    /// instance's name) when that pod is the one labelled leader.
    pub fn route(&self, operator: &OperatorProcess) {
        if let Ok(mut backends) = self.backends.lock() {
            backends.push((operator.instance.clone(), operator.url.clone()));
        }
    }

    /// The most live operator pods the Service ever selected at once:
    /// above 1, relay frames were split between two replicas.
    pub fn most_endpoints(&self) -> usize {
        self.most_endpoints.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for LeaderService {
    fn drop(&mut self) {
        self.stop.cancel();
        for task in &self.tasks {
            task.abort();
        }
    }
}
