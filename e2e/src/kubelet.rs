//! A *process kubelet* for the local control plane: it registers a Node,
//! binds the pods no scheduler binds, and runs each pod's container as a
//! local process (the `torcus-node` binary for `torcus-node` images), with
//! Secret, ConfigMap, projected, emptyDir and PVC volumes as folders under a
//! work dir, a loopback pod IP, probes, restarts and pod status like the real
//! kubelet reports. Everything else about a pod (resources, security
//! contexts, init containers, images) is out of scope.
//!
//! Work dir layout: `pods/<ns>_<pod>_<uid>/volumes/<volume>` (removed with the
//! pod), `pvc/<ns>/<claim>` (kept: the node's key shares live there),
//! `logs/<ns>_<pod>.log` (stdout and stderr of every run, appended), `hosts`
//! (the pods' DNS names, see [`HOSTS_FILE_ENV`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Component, Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{
    Binding, ConfigMap, Container, ContainerPort, KeyToPath, Node, ObjectReference, Pod, Probe, Secret, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, ResourceExt as _};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, debug, info, info_span, warn};

/// Field manager of everything the kubelet writes.
pub const FIELD_MANAGER: &str = "torcus-kubelet";

/// Environment variable every started process carries, naming the kubelet's
/// work dir: how `torcus-sandbox down` finds processes a dead supervisor left.
pub const WORK_DIR_ENV: &str = "TORCUS_KUBELET_WORK_DIR";

/// Environment variable every started process carries, naming a file in
/// `/etc/hosts` format with the DNS names of the kubelet's pods
/// (`<hostname>.<subdomain>.<namespace>.svc.cluster.local`, as a headless
/// Service gives StatefulSet pods): there is no cluster DNS here.
pub const HOSTS_FILE_ENV: &str = "TORCUS_HOSTS_FILE";

/// The cluster domain of the pod DNS names in the hosts file.
const CLUSTER_DOMAIN: &str = "cluster.local";

const HOST_IP: &str = "127.0.0.1";
/// How often Secret, ConfigMap and downward API volumes are rewritten.
const RESYNC: Duration = Duration::from_secs(2);
/// Retry interval for a pod that cannot start yet (missing Secret, ...).
const PREPARE_RETRY: Duration = Duration::from_secs(2);
const HEARTBEAT: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A run this long resets the restart backoff.
const BACKOFF_RESET: Duration = Duration::from_secs(60);
const MAX_GRACE: Duration = Duration::from_secs(10);

/// What a kubelet runs and where.
#[derive(Clone, Debug)]
pub struct KubeletConfig {
    /// Name of the Node it registers and binds pods to.
    pub node_name: String,
    /// Only pods of this namespace; every namespace when `None`.
    pub namespace: Option<String>,
    /// The program a `torcus-node` image runs (any executable).
    pub node_binary: PathBuf,
    /// Pod folders, persistent volume folders and logs.
    pub work_dir: PathBuf,
    /// Added to the environment of every process, after the pod's own.
    pub extra_env: Vec<(String, String)>,
}

/// Entry point: [`Kubelet::start`].
#[derive(Debug)]
pub struct Kubelet;

impl Kubelet {
    /// Registers the Node and starts watching pods, on the current tokio
    /// runtime. The processes stop with [`KubeletHandle::stop`] or when the
    /// handle is dropped.
    pub async fn start(client: Client, config: KubeletConfig) -> anyhow::Result<KubeletHandle> {
        std::fs::create_dir_all(config.work_dir.join("logs"))
            .with_context(|| format!("creating {}", config.work_dir.display()))?;
        let work_dir = config.work_dir.canonicalize()?;
        let config = KubeletConfig { work_dir, ..config };
        anyhow::ensure!(config.node_binary.is_file(), "node binary {} does not exist", config.node_binary.display());
        let shared = Arc::new(Shared {
            client: client.clone(),
            subnet: pick_subnet(),
            started: now(),
            state: Mutex::new(State::default()),
            config,
        });
        register_node(&shared).await.context("registering the Node")?;
        let (a, b) = shared.subnet;
        info!(node = shared.config.node_name, subnet = format!("127.{a}.{b}.0/24"), "kubelet started");

        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let span = info_span!("kubelet", node = shared.config.node_name);
        tasks.spawn(heartbeat(shared.clone(), stop.clone()).instrument(span.clone()));
        tasks.spawn(watch_pods(shared.clone(), stop.clone(), tasks.clone()).instrument(span));
        Ok(KubeletHandle { shared, stop, tasks })
    }
}

/// A running kubelet. Dropping it kills every process it started.
pub struct KubeletHandle {
    shared: Arc<Shared>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl std::fmt::Debug for KubeletHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletHandle").field("config", &self.shared.config).finish_non_exhaustive()
    }
}

impl KubeletHandle {
    /// Name of its Node.
    pub fn node_name(&self) -> &str {
        &self.shared.config.node_name
    }

    /// Its work dir (canonical).
    pub fn work_dir(&self) -> &Path {
        &self.shared.config.work_dir
    }

    /// The IP of pod `name` in `namespace`, once it has one; stable for the
    /// kubelet's life, also across deletion and re-creation of the pod.
    pub fn pod_ip(&self, namespace: &str, name: &str) -> Option<IpAddr> {
        self.shared.lock().ips.get(&key(namespace, name)).map(|ip| IpAddr::V4(*ip))
    }

    /// The process id of the pod's running process.
    pub fn pid(&self, namespace: &str, name: &str) -> Option<u32> {
        self.shared.lock().pods.get(&key(namespace, name)).and_then(|slot| slot.pid)
    }

    /// Kills the pod's process with SIGKILL, like a crash; it restarts as
    /// any exited process does.
    pub fn kill(&self, namespace: &str, name: &str) -> anyhow::Result<()> {
        let pid = self.pid(namespace, name);
        let pid = pid.with_context(|| format!("pod {namespace}/{name} has no running process"))?;
        signal_group(pid, Signal::SIGKILL);
        Ok(())
    }

    /// With `down`, kills the pod's process and keeps it down (also for a
    /// re-created pod of that name), reported as terminated and not ready:
    /// a dead machine. With `!down`, lets it start again.
    pub fn hold_down(&self, namespace: &str, name: &str, down: bool) {
        let key = key(namespace, name);
        let mut state = self.shared.lock();
        if down {
            state.held.insert(key.clone());
        } else {
            state.held.remove(&key);
        }
        if let Some(slot) = state.pods.get(&key) {
            if down && let Some(pid) = slot.pid {
                signal_group(pid, Signal::SIGKILL);
            }
            slot.poke.notify_one();
        }
    }

    /// The file the pod's output is appended to.
    pub fn log_path(&self, namespace: &str, name: &str) -> PathBuf {
        self.shared.log_path(&key(namespace, name))
    }

    /// Where volume `volume` of the current pod `name` is materialized, once
    /// the pod has been prepared.
    pub fn volume_dir(&self, namespace: &str, name: &str, volume: &str) -> Option<PathBuf> {
        self.shared.lock().pods.get(&key(namespace, name)).and_then(|slot| slot.volumes.get(volume).cloned())
    }

    /// Kills every process, waits for the kubelet's tasks and deletes its
    /// Node.
    pub async fn stop(self) {
        self.stop.cancel();
        self.tasks.close();
        if tokio::time::timeout(Duration::from_secs(20), self.tasks.wait()).await.is_err() {
            warn!(node = self.node_name(), "kubelet tasks did not stop in time");
        }
        let nodes: Api<Node> = Api::all(self.shared.client.clone());
        let deleted = tokio::time::timeout(
            Duration::from_secs(5),
            nodes.delete(&self.shared.config.node_name, &DeleteParams::default()),
        )
        .await;
        if !matches!(deleted, Ok(Ok(_))) {
            debug!(node = self.node_name(), "node not deleted");
        }
    }
}

impl Drop for KubeletHandle {
    fn drop(&mut self) {
        self.stop.cancel();
        // The tasks may never run again (their runtime may be ending): kill
        // the processes here, synchronously.
        for slot in self.shared.lock().pods.values() {
            if let Some(pid) = slot.pid {
                signal_group(pid, Signal::SIGKILL);
            }
        }
    }
}

/// Processes started by the kubelet with `work_dir` that still run (found
/// through [`WORK_DIR_ENV`] in their environment).
pub fn processes(work_dir: &Path) -> Vec<u32> {
    let marker = format!("{WORK_DIR_ENV}={}", work_dir.display());
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == marker.as_bytes()))
        })
        .collect()
}

/// The `torcus-node` binary: `$TORCUS_NODE_BIN` if set, else next to the
/// current executable or in its parent folder (test binaries live in
/// `target/<profile>/deps/`), else built once with cargo into the same
/// target folder and profile.
pub fn node_binary() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("TORCUS_NODE_BIN") {
        let bin = PathBuf::from(bin);
        anyhow::ensure!(bin.is_file(), "TORCUS_NODE_BIN={} is not a file", bin.display());
        return Ok(bin);
    }
    let exe = std::env::current_exe().context("locating the current executable")?;
    let dir = exe.parent().context("the current executable has no folder")?.to_owned();
    let profile_dir = if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().context("deps folder without a parent")?.to_owned()
    } else {
        dir.clone()
    };
    let find = || [dir.join("torcus-node"), profile_dir.join("torcus-node")].into_iter().find(|p| p.is_file());
    if let Some(bin) = find() {
        return Ok(bin);
    }
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    BUILT.get_or_init(|| build_node(&profile_dir).map_err(|e| format!("{e:#}"))).clone().map_err(anyhow::Error::msg)?;
    find()
        .with_context(|| format!("torcus-node was built but is not in {}; set TORCUS_NODE_BIN", profile_dir.display()))
}

fn build_node(profile_dir: &Path) -> anyhow::Result<()> {
    let profile = profile_dir.file_name().and_then(|n| n.to_str()).context("profile folder has no name")?;
    let target_dir = profile_dir.parent().context("profile folder has no parent")?;
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cargo = std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    // With the test-only primes fixture flag: the harness hands nodes the
    // fixture whenever a test asks for it.
    cargo.current_dir(&workspace).args(["build", "-p", "torcus-node", "--bin", "torcus-node", "--features"]);
    cargo.args(["test-fixtures,test-hooks", "--target-dir"]);
    cargo.arg(target_dir);
    match profile {
        "debug" => {}
        "release" => {
            cargo.arg("--release");
        }
        other => {
            cargo.args(["--profile", other]);
        }
    }
    eprintln!("torcus-node not found next to the executable; building it ({profile})");
    let status = cargo.stdin(Stdio::null()).stdout(Stdio::inherit()).stderr(Stdio::inherit()).status();
    let status = status.context("running cargo to build torcus-node; set TORCUS_NODE_BIN instead")?;
    anyhow::ensure!(status.success(), "cargo build -p torcus-node failed ({status}); set TORCUS_NODE_BIN instead");
    Ok(())
}

/// A plain HTTP/1.0 GET to `addr`, returning status code and body; used for
/// probes and by tests.
pub async fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<(u16, String)> {
    http_request(addr, &addr.to_string(), path, &[], timeout).await
}

async fn http_request(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        exchange(stream, addr, host, path, headers).await
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| anyhow::anyhow!("no answer within {timeout:?}"))?
}

/// An HTTP/1.0 GET over TLS with `tls` (which says whom to trust and which
/// certificate to present) to `addr`, with `server_name` as the TLS server
/// name; returns status code and body.
pub async fn https_get(
    addr: SocketAddr,
    tls: Arc<torcus_certs::rustls::ClientConfig>,
    server_name: &str,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    let name = torcus_certs::rustls::pki_types::ServerName::try_from(server_name.to_owned())?;
    let get = async {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let stream = tokio_rustls::TlsConnector::from(tls).connect(name, stream).await?;
        exchange(stream, addr, server_name, path, &[]).await
    };
    tokio::time::timeout(timeout, get).await.map_err(|_| anyhow::anyhow!("no answer within {timeout:?}"))?
}

async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(String, String)],
) -> anyhow::Result<(u16, String)> {
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: torcus-kubelet\r\nAccept: */*\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("malformed HTTP response from {addr}"))?;
    Ok((code, body.to_owned()))
}

type PodKey = (String, String);

fn key(namespace: &str, name: &str) -> PodKey {
    (namespace.to_owned(), name.to_owned())
}

/// State shared by the kubelet's tasks and the handle.
struct Shared {
    config: KubeletConfig,
    client: Client,
    /// Pod IPs are `127.<a>.<b>.2..=254`, the /24 chosen at random at start
    /// so that kubelets of different processes do not collide.
    subnet: (u8, u8),
    /// The node's Ready transition time.
    started: String,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Never released while the pod's name may come back.
    ips: HashMap<PodKey, Ipv4Addr>,
    /// The current worker of each pod name.
    pods: HashMap<PodKey, Slot>,
    /// Pods kept down by [`KubeletHandle::hold_down`].
    held: HashSet<PodKey>,
    /// DNS names of the pods, for the hosts file.
    hosts: BTreeMap<PodKey, Vec<String>>,
}

/// What the handle needs of a pod's worker.
#[derive(Debug)]
struct Slot {
    uid: String,
    /// Process group of the running process.
    pid: Option<u32>,
    volumes: HashMap<String, PathBuf>,
    poke: Arc<Notify>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn log_path(&self, key: &PodKey) -> PathBuf {
        self.config.work_dir.join("logs").join(format!("{}_{}.log", key.0, key.1))
    }

    fn pods_api(&self, namespace: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// The pod's IP: the one it had, else a free one, else one of a pod
    /// name that has no worker now.
    fn allocate_ip(&self, key: &PodKey) -> Option<Ipv4Addr> {
        let mut state = self.lock();
        if let Some(ip) = state.ips.get(key) {
            return Some(*ip);
        }
        let (a, b) = self.subnet;
        let used: HashSet<Ipv4Addr> = state.ips.values().copied().collect();
        let ip = match (2..=254).map(|d| Ipv4Addr::new(127, a, b, d)).find(|ip| !used.contains(ip)) {
            Some(ip) => ip,
            None => {
                let idle = state.ips.keys().find(|k| !state.pods.contains_key(*k))?.clone();
                state.ips.remove(&idle)?
            }
        };
        state.ips.insert(key.clone(), ip);
        Some(ip)
    }

    fn is_held(&self, key: &PodKey) -> bool {
        self.lock().held.contains(key)
    }

    fn hosts_file(&self) -> PathBuf {
        self.config.work_dir.join("hosts")
    }

    /// Records the DNS names of a pod and rewrites the hosts file
    /// (atomically: a reader sees the old or the new file).
    fn set_hosts(&self, key: &PodKey, names: Vec<String>) {
        let mut state = self.lock();
        if state.hosts.get(key) == Some(&names) {
            return;
        }
        state.hosts.insert(key.clone(), names);
        let mut text = String::from("# written by the torcus process kubelet\n");
        for (key, names) in &state.hosts {
            if let (Some(ip), false) = (state.ips.get(key), names.is_empty()) {
                text.push_str(&format!("{ip} {}\n", names.join(" ")));
            }
        }
        let path = self.hosts_file();
        let tmp = path.with_file_name(".hosts.kubelet-tmp");
        if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path)) {
            warn!(error = %e, "hosts file not written");
        }
    }
}

/// A random /24 in 127.100.0.0 – 127.250.255.0, not used by another kubelet
/// of this process.
fn pick_subnet() -> (u8, u8) {
    static TAKEN: Mutex<BTreeSet<(u8, u8)>> = Mutex::new(BTreeSet::new());
    let mut taken = TAKEN.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        let r = random_u64();
        let subnet = (100 + (r % 151) as u8, (r >> 8) as u8);
        if taken.insert(subnet) {
            return subnet;
        }
    }
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    h.finish()
}

/// Now, as Kubernetes writes times.
fn now() -> String {
    match serde_json::to_value(Time(k8s_openapi::jiff::Timestamp::now())) {
        Ok(Value::String(s)) => s,
        _ => String::new(),
    }
}

fn signal_group(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = killpg(Pid::from_raw(pid), signal);
    }
}

async fn register_node(shared: &Shared) -> anyhow::Result<()> {
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
fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

async fn patch_node_status(shared: &Shared) -> anyhow::Result<()> {
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
async fn heartbeat(shared: Arc<Shared>, stop: CancellationToken) {
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

/// Watches pods: binds unbound ones to this node and hands the ones bound
/// to it to a worker each.
async fn watch_pods(shared: Arc<Shared>, stop: CancellationToken, tasks: TaskTracker) {
    let api: Api<Pod> = match &shared.config.namespace {
        Some(ns) => Api::namespaced(shared.client.clone(), ns),
        None => Api::all(shared.client.clone()),
    };
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut workers: HashMap<String, watch::Sender<Pod>> = HashMap::new();
    let mut binding: HashSet<String> = HashSet::new();
    let mut listed: Option<HashSet<String>> = None;
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => break,
            event = stream.next() => event,
        };
        let Some(event) = event else { break };
        let pod = match event {
            Err(e) => {
                warn!(error = %e, "pod watch failed; retrying");
                continue;
            }
            Ok(watcher::Event::Init) => {
                listed = Some(HashSet::new());
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(listed) = listed.take() {
                    // Pods deleted while the watch was down.
                    workers.retain(|uid, _| listed.contains(uid));
                }
                continue;
            }
            Ok(watcher::Event::Delete(pod)) => {
                let uid = pod.uid().unwrap_or_default();
                workers.remove(&uid);
                binding.remove(&uid);
                continue;
            }
            Ok(watcher::Event::InitApply(pod)) => {
                if let Some(listed) = listed.as_mut() {
                    listed.insert(pod.uid().unwrap_or_default());
                }
                pod
            }
            Ok(watcher::Event::Apply(pod)) => pod,
        };
        let Some(uid) = pod.uid() else { continue };
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
        if node.is_empty() {
            if pod.metadata.deletion_timestamp.is_none() && binding.insert(uid) {
                let span = info_span!("bind", ns = pod.namespace(), pod = pod.name_any());
                tasks.spawn(bind(shared.clone(), pod, stop.clone()).instrument(span));
            }
        } else if node == shared.config.node_name {
            binding.remove(&uid);
            match workers.get(&uid) {
                // A closed channel: the worker finished (it deleted the pod).
                Some(tx) => {
                    let _ = tx.send(pod);
                }
                None => {
                    let (tx, rx) = watch::channel(pod.clone());
                    workers.insert(uid, tx);
                    let span = info_span!("pod", ns = pod.namespace(), pod = pod.name_any());
                    match Worker::new(shared.clone(), pod, rx, stop.clone()) {
                        Some(worker) => {
                            tasks.spawn(worker.run().instrument(span));
                        }
                        None => warn!(parent: &span, "pod without namespace or name; skipped"),
                    }
                }
            }
        }
    }
}

async fn bind(shared: Arc<Shared>, pod: Pod, stop: CancellationToken) {
    let (Some(namespace), Some(name)) = (pod.metadata.namespace.clone(), pod.metadata.name.clone()) else { return };
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.clone()),
            uid: pod.metadata.uid.clone(),
            ..ObjectMeta::default()
        },
        target: ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("Node".to_owned()),
            name: Some(shared.config.node_name.clone()),
            ..ObjectReference::default()
        },
    };
    let api = shared.pods_api(&namespace);
    for attempt in 1..=5 {
        match api.create_subresource::<_, Value>("binding", &name, &PostParams::default(), &binding).await {
            Ok(_) => {
                debug!("bound");
                return;
            }
            // Bound elsewhere meanwhile, or gone.
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => return,
            Err(e) => {
                warn!(attempt, error = %e, "binding failed");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

/// Why a pod's container is not running.
#[derive(Clone, Debug, PartialEq)]
struct Waiting {
    reason: String,
    message: String,
}

impl Waiting {
    fn new(reason: &str, message: impl Into<String>) -> Self {
        Self { reason: reason.to_owned(), message: message.into() }
    }
}

/// The container of a pod, as far as the kubelet is concerned.
#[derive(Debug)]
enum Run {
    /// Not started: it cannot be yet, or cannot at all.
    Waiting(Waiting),
    Running(Proc),
    /// Exited; restarts at `at`.
    BackOff {
        at: Instant,
        message: String,
    },
    /// Kept down by `hold_down`.
    Held,
    /// Exited for good (restart policy Never or OnFailure).
    Done,
}

/// A running process, in a process group of its own.
#[derive(Debug)]
struct Proc {
    child: tokio::process::Child,
    pid: u32,
    started_at: String,
    since: Instant,
    /// Reaped: the process group id may belong to someone else by now.
    exited: bool,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.exited {
            signal_group(self.pid, Signal::SIGKILL);
        }
    }
}

/// How a run ended.
#[derive(Clone, Debug)]
struct Terminated {
    exit_code: i32,
    signal: Option<i32>,
    reason: String,
    started_at: String,
    finished_at: String,
}

impl Terminated {
    fn to_json(&self) -> Value {
        let mut t = json!({
            "exitCode": self.exit_code,
            "reason": self.reason,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
        });
        if let Some(signal) = self.signal {
            t["signal"] = json!(signal);
        }
        t
    }
}

/// Everything needed to start (and restart) the container.
#[derive(Debug)]
struct Launch {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    cwd: PathBuf,
    readiness: Option<Probe>,
    liveness: Option<Probe>,
    ports: Vec<ContainerPort>,
    /// Volumes rewritten on every resync: (volume, folder).
    synced: Vec<(Volume, PathBuf)>,
}

#[derive(Debug, Default)]
struct ProbeState {
    next: Option<Instant>,
    successes: i32,
    failures: i32,
}

/// Files a Secret, ConfigMap, projected or downward API volume holds:
/// relative path → (content, mode).
type Files = BTreeMap<PathBuf, (Vec<u8>, u32)>;

/// One pod (one UID) bound to this node.
struct Worker {
    shared: Arc<Shared>,
    api: Api<Pod>,
    key: PodKey,
    uid: String,
    pod: Pod,
    updates: watch::Receiver<Pod>,
    poke: Arc<Notify>,
    stop: CancellationToken,
    /// `<work_dir>/pods/<ns>_<pod>_<uid>`.
    dir: PathBuf,
    log: PathBuf,
    ip: Option<Ipv4Addr>,
    start_time: String,
    launch: Option<Launch>,
    run: Run,
    prepare_at: Option<Instant>,
    resync_at: Option<Instant>,
    /// Files last written per volume, to remove those that went away.
    written: HashMap<String, BTreeSet<PathBuf>>,
    restart_count: i32,
    /// Consecutive quick exits, for the backoff.
    crashes: u32,
    ever_started: bool,
    last: Option<Terminated>,
    ready: bool,
    readiness: ProbeState,
    liveness: ProbeState,
    /// Condition type → (status, last transition time).
    conditions: BTreeMap<&'static str, (bool, String)>,
    /// Status last written, to write only changes.
    reported: Option<Value>,
}

enum Wake {
    Stop,
    Gone,
    Update,
    Poke,
    Exited(std::io::Result<ExitStatus>),
    Prepare,
    Restart,
    Readiness,
    Liveness,
    Resync,
}

impl Worker {
    fn new(shared: Arc<Shared>, pod: Pod, updates: watch::Receiver<Pod>, stop: CancellationToken) -> Option<Self> {
        let namespace = pod.metadata.namespace.clone()?;
        let name = pod.metadata.name.clone()?;
        let uid = pod.metadata.uid.clone()?;
        let dir = shared.config.work_dir.join("pods").join(format!("{namespace}_{name}_{uid}"));
        let poke = Arc::new(Notify::new());
        let key = key(&namespace, &name);
        let log = shared.log_path(&key);
        shared
            .lock()
            .pods
            .insert(key.clone(), Slot { uid: uid.clone(), pid: None, volumes: HashMap::new(), poke: poke.clone() });
        Some(Self {
            api: shared.pods_api(&namespace),
            shared,
            key,
            uid,
            pod,
            updates,
            poke,
            stop,
            dir,
            log,
            ip: None,
            start_time: now(),
            launch: None,
            run: Run::Waiting(Waiting::new("ContainerCreating", "")),
            prepare_at: None,
            resync_at: None,
            written: HashMap::new(),
            restart_count: 0,
            crashes: 0,
            ever_started: false,
            last: None,
            ready: false,
            readiness: ProbeState::default(),
            liveness: ProbeState::default(),
            conditions: BTreeMap::new(),
            reported: None,
        })
    }

    async fn run(mut self) {
        let terminal =
            matches!(self.pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"));
        if terminal {
            // Finished under an earlier kubelet: nothing to run, only to delete.
            self.run = Run::Done;
        } else if self.pod.metadata.deletion_timestamp.is_none() {
            self.try_prepare().await;
        }
        loop {
            if self.pod.metadata.deletion_timestamp.is_some() {
                self.terminate_and_delete().await;
                break;
            }
            if !terminal {
                self.report().await;
            }
            let restart_at = match &self.run {
                Run::BackOff { at, .. } => Some(*at),
                _ => None,
            };
            let (prepare_at, ready_at, live_at, resync_at) =
                (self.prepare_at, self.readiness.next, self.liveness.next, self.resync_at);
            let wake = tokio::select! {
                () = self.stop.cancelled() => Wake::Stop,
                changed = self.updates.changed() => if changed.is_ok() { Wake::Update } else { Wake::Gone },
                () = self.poke.notified() => Wake::Poke,
                status = exited(&mut self.run) => Wake::Exited(status),
                () = sleep_until(prepare_at) => Wake::Prepare,
                () = sleep_until(restart_at) => Wake::Restart,
                () = sleep_until(ready_at) => Wake::Readiness,
                () = sleep_until(live_at) => Wake::Liveness,
                () = sleep_until(resync_at) => Wake::Resync,
            };
            match wake {
                Wake::Stop => {
                    self.kill().await;
                    break;
                }
                Wake::Gone => {
                    info!("pod is gone from the API; killing its process");
                    self.kill().await;
                    break;
                }
                Wake::Update => self.pod = self.updates.borrow_and_update().clone(),
                Wake::Poke => self.apply_hold().await,
                Wake::Exited(status) => self.exited(status, None),
                Wake::Prepare => self.try_prepare().await,
                Wake::Restart => self.spawn(),
                Wake::Readiness => self.probe_readiness().await,
                Wake::Liveness => self.probe_liveness().await,
                Wake::Resync => self.resync().await,
            }
        }
        let mut state = self.shared.lock();
        if state.pods.get(&self.key).is_some_and(|slot| slot.uid == self.uid) {
            state.pods.remove(&self.key);
        }
        drop(state);
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    fn restart_policy(&self) -> &str {
        self.pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()).unwrap_or("Always")
    }

    /// Prepares the container (volumes, environment) and starts it, or
    /// tells why it cannot and retries later.
    async fn try_prepare(&mut self) {
        self.prepare_at = None;
        match self.prepare().await {
            Ok(launch) => {
                let volumes = launch.synced.iter().map(|(v, dir)| (v.name.clone(), dir.clone()));
                let mut all: HashMap<String, PathBuf> = volumes.collect();
                all.extend(self.mounted_volumes());
                if let Some(slot) = self.shared.lock().pods.get_mut(&self.key) {
                    slot.volumes = all;
                }
                self.launch = Some(launch);
                self.resync_at = Some(Instant::now() + RESYNC);
                self.spawn();
            }
            Err(waiting) => {
                if !matches!(&self.run, Run::Waiting(w) if *w == waiting) {
                    warn!(reason = waiting.reason, message = waiting.message, "container cannot start");
                    log_line(&self.log, &format!("cannot start: {}: {}", waiting.reason, waiting.message));
                }
                self.run = Run::Waiting(waiting);
                self.prepare_at = Some(Instant::now() + PREPARE_RETRY);
            }
        }
    }

    /// Host folders of the volumes that are not resynced (emptyDir, PVC, ...).
    fn mounted_volumes(&self) -> Vec<(String, PathBuf)> {
        let volumes = self.pod.spec.as_ref().and_then(|s| s.volumes.clone()).unwrap_or_default();
        volumes.iter().filter_map(|v| Some((v.name.clone(), self.plain_volume_dir(v)?))).collect()
    }

    async fn prepare(&mut self) -> Result<Launch, Waiting> {
        let spec = self.pod.spec.clone().unwrap_or_default();
        if spec.containers.len() != 1 {
            return Err(Waiting::new(
                "Unsupported",
                format!("the process kubelet runs pods of one container; this one has {}", spec.containers.len()),
            ));
        }
        if spec.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
            return Err(Waiting::new("Unsupported", "the process kubelet does not run init containers"));
        }
        let container = spec.containers[0].clone();
        let image = container.image.clone().unwrap_or_default();
        if !image.contains("torcus-node") {
            return Err(Waiting::new(
                "ImageNotRunnable",
                format!("image {image:?} has no local program; the process kubelet runs torcus-node images only"),
            ));
        }
        let ip = self.shared.allocate_ip(&self.key).ok_or_else(|| Waiting::new("NoPodIP", "no free pod IP"))?;
        self.ip = Some(ip);
        let hostname = spec.hostname.clone().filter(|h| !h.is_empty()).unwrap_or_else(|| self.key.1.clone());
        let names = match spec.subdomain.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => {
                let service = format!("{hostname}.{sub}.{}.svc", self.key.0);
                vec![format!("{service}.{CLUSTER_DOMAIN}"), service]
            }
            None => Vec::new(),
        };
        self.shared.set_hosts(&self.key, names);

        let creating = |message: String| Waiting::new("ContainerCreating", message);
        let mut folders: HashMap<String, PathBuf> = HashMap::new();
        let mut synced = Vec::new();
        for volume in spec.volumes.as_deref().unwrap_or_default() {
            if let Some(dir) = self.plain_volume_dir(volume) {
                std::fs::create_dir_all(&dir)
                    .map_err(|e| creating(format!("volume {:?}: creating {}: {e}", volume.name, dir.display())))?;
                folders.insert(volume.name.clone(), dir);
            } else if let Some(files) = self.volume_files(volume).await.map_err(creating)? {
                let dir = self.dir.join("volumes").join(&volume.name);
                self.write_volume(&volume.name, &dir, &files)
                    .map_err(|e| creating(format!("volume {:?}: {e}", volume.name)))?;
                folders.insert(volume.name.clone(), dir.clone());
                synced.push((volume.clone(), dir));
            } else {
                return Err(Waiting::new(
                    "Unsupported",
                    format!("volume {:?} is of a kind the process kubelet does not support", volume.name),
                ));
            }
        }

        let config_error = |message: String| Waiting::new("CreateContainerConfigError", message);
        let mut mounts: Vec<(String, PathBuf)> = Vec::new();
        for mount in container.volume_mounts.as_deref().unwrap_or_default() {
            let dir = folders
                .get(&mount.name)
                .ok_or_else(|| config_error(format!("volume mount {:?}: no such volume", mount.name)))?;
            let dir = match mount.sub_path.as_deref().filter(|p| !p.is_empty()) {
                Some(sub) => {
                    let sub = relative(sub).map_err(|e| config_error(format!("subPath {sub:?}: {e}")))?;
                    let dir = dir.join(sub);
                    let _ = std::fs::create_dir_all(&dir);
                    dir
                }
                None => dir.clone(),
            };
            mounts.push((mount.mount_path.trim_end_matches('/').to_owned(), dir));
        }

        let mut env = self.container_env(&container).await.map_err(config_error)?;
        for (_, value) in &mut env {
            *value = rewrite(value, &mounts);
        }
        let args =
            container.args.clone().unwrap_or_default().iter().map(|a| rewrite(&expand(a, &env), &mounts)).collect();
        if container.command.as_ref().is_some_and(|c| !c.is_empty()) {
            debug!(command = ?container.command, "container command ignored; the image's program runs");
        }
        env.extend(self.shared.config.extra_env.iter().cloned());
        env.push(("HOSTNAME".to_owned(), hostname));
        env.push(("PATH".to_owned(), std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".to_owned())));
        env.push(("TORCUS_DIE_WITH_PARENT".to_owned(), "1".to_owned()));
        env.push((WORK_DIR_ENV.to_owned(), self.shared.config.work_dir.display().to_string()));
        env.push((HOSTS_FILE_ENV.to_owned(), self.shared.hosts_file().display().to_string()));
        let cwd = match container.working_dir.as_deref() {
            Some(dir) if !dir.is_empty() => PathBuf::from(rewrite(dir, &mounts)),
            _ => self.dir.clone(),
        };
        std::fs::create_dir_all(&cwd).map_err(|e| config_error(format!("working dir {}: {e}", cwd.display())))?;
        Ok(Launch {
            program: self.shared.config.node_binary.clone(),
            args,
            env,
            cwd,
            readiness: container.readiness_probe.clone(),
            liveness: container.liveness_probe.clone(),
            ports: container.ports.clone().unwrap_or_default(),
            synced,
        })
    }

    /// The folder of an emptyDir, PVC, ephemeral or hostPath volume; `None`
    /// for other kinds.
    fn plain_volume_dir(&self, volume: &Volume) -> Option<PathBuf> {
        let namespace = &self.key.0;
        let pvc = self.shared.config.work_dir.join("pvc").join(namespace);
        if volume.empty_dir.is_some() {
            Some(self.dir.join("volumes").join(&volume.name))
        } else if let Some(claim) = &volume.persistent_volume_claim {
            relative(&claim.claim_name).ok().map(|c| pvc.join(c))
        } else if volume.ephemeral.is_some() {
            relative(&format!("{}-{}", self.key.1, volume.name)).ok().map(|c| pvc.join(c))
        } else {
            volume.host_path.as_ref().map(|h| PathBuf::from(&h.path))
        }
    }

    /// Files of a Secret, ConfigMap, projected or downward API volume;
    /// `Ok(None)` for other kinds.
    async fn volume_files(&self, volume: &Volume) -> Result<Option<Files>, String> {
        let mut files = Files::new();
        if let Some(s) = &volume.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            let optional = s.optional.unwrap_or(false);
            if let Some(data) = self.secret(&name, optional).await? {
                key_files(
                    &mut files,
                    &data,
                    s.items.as_deref(),
                    s.default_mode,
                    optional,
                    &format!("secret {name:?}"),
                )?;
            }
        } else if let Some(c) = &volume.config_map {
            let optional = c.optional.unwrap_or(false);
            if let Some(data) = self.config_map(&c.name, optional).await? {
                let what = format!("configmap {:?}", c.name);
                key_files(&mut files, &data, c.items.as_deref(), c.default_mode, optional, &what)?;
            }
        } else if let Some(p) = &volume.projected {
            for source in p.sources.as_deref().unwrap_or_default() {
                if let Some(s) = &source.secret {
                    let optional = s.optional.unwrap_or(false);
                    if let Some(data) = self.secret(&s.name, optional).await? {
                        let what = format!("secret {:?}", s.name);
                        key_files(&mut files, &data, s.items.as_deref(), p.default_mode, optional, &what)?;
                    }
                } else if let Some(c) = &source.config_map {
                    let optional = c.optional.unwrap_or(false);
                    if let Some(data) = self.config_map(&c.name, optional).await? {
                        let what = format!("configmap {:?}", c.name);
                        key_files(&mut files, &data, c.items.as_deref(), p.default_mode, optional, &what)?;
                    }
                } else if let Some(d) = &source.downward_api {
                    for item in d.items.as_deref().unwrap_or_default() {
                        self.downward_file(&mut files, &item.path, item.field_ref.as_ref(), item.mode, p.default_mode)?;
                    }
                } else {
                    debug!(volume = volume.name, "projected source not supported; left out");
                }
            }
        } else if let Some(d) = &volume.downward_api {
            for item in d.items.as_deref().unwrap_or_default() {
                self.downward_file(&mut files, &item.path, item.field_ref.as_ref(), item.mode, d.default_mode)?;
            }
        } else {
            return Ok(None);
        }
        Ok(Some(files))
    }

    fn downward_file(
        &self,
        files: &mut Files,
        path: &str,
        field: Option<&k8s_openapi::api::core::v1::ObjectFieldSelector>,
        mode: Option<i32>,
        default_mode: Option<i32>,
    ) -> Result<(), String> {
        let Some(field) = field else {
            return Err(format!("downward API file {path:?}: only fieldRef is supported"));
        };
        let value = match field.field_path.as_str() {
            "metadata.labels" => map_lines(self.pod.metadata.labels.as_ref()),
            "metadata.annotations" => map_lines(self.pod.metadata.annotations.as_ref()),
            other => self.field(other)?,
        };
        files.insert(relative(path)?, (value.into_bytes(), file_mode(mode.or(default_mode))));
        Ok(())
    }

    async fn secret(&self, name: &str, optional: bool) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
        let api: Api<Secret> = Api::namespaced(self.shared.client.clone(), &self.key.0);
        match api.get_opt(name).await.map_err(|e| format!("secret {name:?}: {e}"))? {
            Some(secret) => {
                let data = secret.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0));
                Ok(Some(data.collect()))
            }
            None if optional => Ok(None),
            None => Err(format!("secret {name:?} not found")),
        }
    }

    async fn config_map(&self, name: &str, optional: bool) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
        let api: Api<ConfigMap> = Api::namespaced(self.shared.client.clone(), &self.key.0);
        match api.get_opt(name).await.map_err(|e| format!("configmap {name:?}: {e}"))? {
            Some(cm) => {
                let text = cm.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes()));
                let binary = cm.binary_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0));
                Ok(Some(text.chain(binary).collect()))
            }
            None if optional => Ok(None),
            None => Err(format!("configmap {name:?} not found")),
        }
    }

    /// Writes a volume's files, replacing each changed one atomically
    /// (temporary file, then rename) and removing those that went away.
    fn write_volume(&mut self, volume: &str, dir: &Path, files: &Files) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (path, (content, mode)) in files {
            let target = dir.join(path);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let unchanged = std::fs::read(&target).is_ok_and(|old| old == *content)
                && std::fs::metadata(&target).is_ok_and(|m| m.permissions().mode() & 0o777 == *mode);
            if unchanged {
                continue;
            }
            let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let tmp = target.with_file_name(format!(".{name}.kubelet-tmp"));
            std::fs::write(&tmp, content)?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(*mode))?;
            std::fs::rename(&tmp, &target)?;
        }
        let now: BTreeSet<PathBuf> = files.keys().cloned().collect();
        if let Some(before) = self.written.get(volume) {
            for gone in before.difference(&now) {
                let _ = std::fs::remove_file(dir.join(gone));
            }
        }
        self.written.insert(volume.to_owned(), now);
        Ok(())
    }

    /// Rewrites Secret, ConfigMap and downward API volumes (certificates
    /// rotate in place).
    async fn resync(&mut self) {
        self.resync_at = Some(Instant::now() + RESYNC);
        let Some(launch) = &self.launch else { return };
        let volumes = launch.synced.clone();
        for (volume, dir) in volumes {
            match self.volume_files(&volume).await {
                Ok(Some(files)) => {
                    if let Err(e) = self.write_volume(&volume.name, &dir, &files) {
                        warn!(volume = volume.name, error = %e, "volume not updated");
                    }
                }
                Ok(None) => {}
                Err(e) => debug!(volume = volume.name, error = e, "volume not updated"),
            }
        }
    }

    /// The container's environment: `envFrom`, then `env`, with `$(VAR)`
    /// references expanded.
    async fn container_env(&self, container: &Container) -> Result<Vec<(String, String)>, String> {
        let mut env: Vec<(String, String)> = Vec::new();
        fn set(env: &mut Vec<(String, String)>, name: String, value: String) {
            match env.iter_mut().find(|(n, _)| *n == name) {
                Some(var) => var.1 = value,
                None => env.push((name, value)),
            }
        }
        for from in container.env_from.as_deref().unwrap_or_default() {
            let prefix = from.prefix.clone().unwrap_or_default();
            let data = if let Some(c) = &from.config_map_ref {
                self.config_map(&c.name, c.optional.unwrap_or(false)).await?
            } else if let Some(s) = &from.secret_ref {
                self.secret(&s.name, s.optional.unwrap_or(false)).await?
            } else {
                None
            };
            for (k, v) in data.unwrap_or_default() {
                set(&mut env, format!("{prefix}{k}"), String::from_utf8_lossy(&v).into_owned());
            }
        }
        for var in container.env.as_deref().unwrap_or_default() {
            let value = match &var.value_from {
                None => expand(var.value.as_deref().unwrap_or_default(), &env),
                Some(from) => {
                    if let Some(field) = &from.field_ref {
                        self.field(&field.field_path)?
                    } else if let Some(r) = &from.config_map_key_ref {
                        let optional = r.optional.unwrap_or(false);
                        match self.config_map(&r.name, optional).await?.and_then(|d| d.get(&r.key).cloned()) {
                            Some(v) => String::from_utf8_lossy(&v).into_owned(),
                            None if optional => continue,
                            None => {
                                return Err(format!("env {}: key {:?} not in configmap {:?}", var.name, r.key, r.name));
                            }
                        }
                    } else if let Some(r) = &from.secret_key_ref {
                        let optional = r.optional.unwrap_or(false);
                        match self.secret(&r.name, optional).await?.and_then(|d| d.get(&r.key).cloned()) {
                            Some(v) => String::from_utf8_lossy(&v).into_owned(),
                            None if optional => continue,
                            None => {
                                return Err(format!("env {}: key {:?} not in secret {:?}", var.name, r.key, r.name));
                            }
                        }
                    } else {
                        return Err(format!(
                            "env {}: only fieldRef, configMapKeyRef and secretKeyRef are supported",
                            var.name
                        ));
                    }
                }
            };
            set(&mut env, var.name.clone(), value);
        }
        Ok(env)
    }

    /// A downward API field of the pod.
    fn field(&self, path: &str) -> Result<String, String> {
        let meta = &self.pod.metadata;
        let ip = self.ip.map(|ip| ip.to_string()).unwrap_or_default();
        let in_map = |map: Option<&BTreeMap<String, String>>, prefix: &str| {
            let k = path.strip_prefix(prefix)?.strip_suffix("']")?;
            Some(map.and_then(|m| m.get(k).cloned()).unwrap_or_default())
        };
        let spec = self.pod.spec.as_ref();
        let value = match path {
            "metadata.name" => meta.name.clone().unwrap_or_default(),
            "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
            "metadata.uid" => self.uid.clone(),
            "spec.nodeName" => self.shared.config.node_name.clone(),
            "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()).unwrap_or_default(),
            "status.podIP" | "status.podIPs" => ip,
            "status.hostIP" | "status.hostIPs" => HOST_IP.to_owned(),
            _ => in_map(meta.labels.as_ref(), "metadata.labels['")
                .or_else(|| in_map(meta.annotations.as_ref(), "metadata.annotations['"))
                .ok_or_else(|| format!("field {path:?} is not supported"))?,
        };
        Ok(value)
    }

    /// Starts the container's process (or notes why not).
    fn spawn(&mut self) {
        if self.shared.is_held(&self.key) {
            self.run = Run::Held;
            return;
        }
        let Some(launch) = &self.launch else { return };
        let log = &self.log;
        let restart = if self.ever_started { self.restart_count + 1 } else { 0 };
        log_line(&self.log, &format!("starting {} {:?} (restart {restart})", launch.program.display(), launch.args));
        let started = (|| {
            let out = std::fs::File::options().create(true).append(true).open(log)?;
            let err = out.try_clone()?;
            let mut command = tokio::process::Command::new(&launch.program);
            command
                .args(&launch.args)
                .env_clear()
                .envs(launch.env.iter().map(|(k, v)| (k, v)))
                .current_dir(&launch.cwd)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .process_group(0)
                .kill_on_drop(true);
            command.spawn()
        })();
        if self.ever_started {
            self.restart_count += 1;
        }
        self.ever_started = true;
        match started.and_then(|child| child.id().map(|pid| (child, pid)).ok_or(std::io::ErrorKind::NotFound.into())) {
            Ok((child, pid)) => {
                info!(pid, restarts = self.restart_count, "process started");
                if let Some(slot) = self.shared.lock().pods.get_mut(&self.key) {
                    slot.pid = Some(pid);
                }
                let since = Instant::now();
                self.run = Run::Running(Proc { child, pid, started_at: now(), since, exited: false });
                self.ready = launch.readiness.is_none();
                self.readiness = ProbeState {
                    next: launch.readiness.as_ref().map(|_| since + Duration::from_millis(200)),
                    ..ProbeState::default()
                };
                self.liveness = ProbeState {
                    next: launch
                        .liveness
                        .as_ref()
                        .map(|p| since + secs(p.initial_delay_seconds, 0) + secs(p.period_seconds, 10)),
                    ..ProbeState::default()
                };
            }
            Err(e) => {
                warn!(error = %e, "process did not start");
                log_line(&self.log, &format!("cannot start the process: {e}"));
                let t = now();
                self.last = Some(Terminated {
                    exit_code: 128,
                    signal: None,
                    reason: "StartError".to_owned(),
                    started_at: t.clone(),
                    finished_at: t,
                });
                self.back_off(Duration::ZERO);
            }
        }
    }

    /// Handles the end of the process: restart with backoff, keep it down,
    /// or leave it finished, by the restart policy.
    fn exited(&mut self, status: std::io::Result<ExitStatus>, reason: Option<&str>) {
        let Run::Running(mut proc) = std::mem::replace(&mut self.run, Run::Done) else { return };
        proc.exited = true;
        if let Some(slot) = self.shared.lock().pods.get_mut(&self.key) {
            slot.pid = None;
        }
        let (exit_code, signal) = match &status {
            Ok(s) => match (s.code(), s.signal()) {
                (Some(code), _) => (code, None),
                (None, Some(sig)) => (128 + sig, Some(sig)),
                (None, None) => (255, None),
            },
            Err(_) => (255, None),
        };
        let held = self.shared.is_held(&self.key);
        let reason = match reason {
            Some(r) => r,
            None if held => "HeldDown",
            None if exit_code == 0 => "Completed",
            None => "Error",
        };
        info!(exit_code, reason, "process exited");
        log_line(&self.log, &format!("process exited with code {exit_code} ({reason})"));
        self.last = Some(Terminated {
            exit_code,
            signal,
            reason: reason.to_owned(),
            started_at: proc.started_at.clone(),
            finished_at: now(),
        });
        self.ready = false;
        self.readiness = ProbeState::default();
        self.liveness = ProbeState::default();
        let restart = match self.restart_policy() {
            "Never" => false,
            "OnFailure" => exit_code != 0,
            _ => true,
        };
        if held {
            self.run = Run::Held;
        } else if restart {
            self.back_off(proc.since.elapsed());
        } else {
            self.run = Run::Done;
        }
    }

    fn back_off(&mut self, ran: Duration) {
        if ran >= BACKOFF_RESET {
            self.crashes = 0;
        }
        let delay = Duration::from_secs(1 << self.crashes.min(4)).min(MAX_BACKOFF);
        self.crashes += 1;
        let message = format!("back-off {}s restarting failed container", delay.as_secs());
        self.run = Run::BackOff { at: Instant::now() + delay, message };
    }

    /// Follows a change of `hold_down`.
    async fn apply_hold(&mut self) {
        let held = self.shared.is_held(&self.key);
        match (&mut self.run, held) {
            (Run::Running(proc), true) => {
                signal_group(proc.pid, Signal::SIGKILL);
                let status = proc.child.wait().await;
                self.exited(status, Some("HeldDown"));
            }
            (Run::BackOff { .. }, true) => self.run = Run::Held,
            (Run::Held, false) => {
                if self.launch.is_some() {
                    self.spawn();
                } else {
                    self.try_prepare().await;
                }
            }
            _ => {}
        }
    }

    async fn probe_readiness(&mut self) {
        let (Some(launch), Some(ip), Run::Running(_)) = (&self.launch, self.ip, &self.run) else {
            self.readiness.next = None;
            return;
        };
        let Some(probe) = launch.readiness.clone() else { return };
        let result = run_probe(&probe, ip, &launch.ports).await;
        let period = secs(probe.period_seconds, 10).min(Duration::from_secs(1));
        self.readiness.next = Some(Instant::now() + period);
        match result {
            Ok(()) => {
                self.readiness.failures = 0;
                self.readiness.successes += 1;
                if !self.ready && self.readiness.successes >= probe.success_threshold.unwrap_or(1).max(1) {
                    info!("ready");
                    self.ready = true;
                }
            }
            Err(e) => {
                self.readiness.successes = 0;
                self.readiness.failures += 1;
                if self.ready && self.readiness.failures >= probe.failure_threshold.unwrap_or(3).max(1) {
                    info!(error = e, "not ready");
                    self.ready = false;
                }
            }
        }
    }

    async fn probe_liveness(&mut self) {
        let (Some(launch), Some(ip), Run::Running(_)) = (&self.launch, self.ip, &self.run) else {
            self.liveness.next = None;
            return;
        };
        let Some(probe) = launch.liveness.clone() else { return };
        let result = run_probe(&probe, ip, &launch.ports).await;
        self.liveness.next = Some(Instant::now() + secs(probe.period_seconds, 10));
        match result {
            Ok(()) => self.liveness.failures = 0,
            Err(e) => {
                self.liveness.failures += 1;
                if self.liveness.failures >= probe.failure_threshold.unwrap_or(3).max(1) {
                    warn!(error = e, "liveness probe failed; restarting the process");
                    log_line(&self.log, &format!("liveness probe failed: {e}; killing the process"));
                    if let Run::Running(proc) = &mut self.run {
                        signal_group(proc.pid, Signal::SIGKILL);
                        let status = proc.child.wait().await;
                        self.exited(status, Some("Error"));
                    }
                }
            }
        }
    }

    /// Kills the process at once and waits for it.
    async fn kill(&mut self) {
        if let Run::Running(proc) = &mut self.run {
            signal_group(proc.pid, Signal::SIGKILL);
            let _ = proc.child.wait().await;
            proc.exited = true;
        }
        if let Some(slot) = self.shared.lock().pods.get_mut(&self.key) {
            slot.pid = None;
        }
    }

    /// The pod is being deleted: SIGTERM, SIGKILL after the grace period
    /// (at most 10 s), then delete the pod object for good.
    async fn terminate_and_delete(&mut self) {
        if let Run::Running(proc) = &mut self.run {
            let grace = self
                .pod
                .metadata
                .deletion_grace_period_seconds
                .or_else(|| self.pod.spec.as_ref()?.termination_grace_period_seconds)
                .unwrap_or(30);
            let grace = Duration::from_secs(u64::try_from(grace).unwrap_or(0)).min(MAX_GRACE);
            info!(?grace, "pod deleted; stopping its process");
            log_line(&self.log, "pod deleted; sending SIGTERM");
            signal_group(proc.pid, Signal::SIGTERM);
            let status = match tokio::time::timeout(grace, proc.child.wait()).await {
                Ok(status) => status,
                Err(_) => {
                    log_line(&self.log, "grace period over; sending SIGKILL");
                    signal_group(proc.pid, Signal::SIGKILL);
                    proc.child.wait().await
                }
            };
            self.exited(status, None);
        }
        self.run = Run::Done;
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions { uid: Some(self.uid.clone()), resource_version: None }),
            ..DeleteParams::default()
        };
        let name = self.key.1.clone();
        for attempt in 1..=30 {
            match self.api.delete(&name, &params).await {
                Ok(_) => return,
                // Gone already, or a new pod of that name.
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => return,
                Err(e) => warn!(attempt, error = %e, "deleting the pod failed"),
            }
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Writes the pod status if it changed since the last write.
    async fn report(&mut self) {
        let status = self.status();
        if self.reported.as_ref() == Some(&status) {
            return;
        }
        let patch = json!({ "metadata": { "uid": self.uid }, "status": status });
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PatchParams::default() };
        match self.api.patch_status(&self.key.1, &params, &Patch::Merge(&patch)).await {
            Ok(_) => self.reported = Some(status),
            Err(e) => debug!(error = %e, "pod status not written"),
        }
    }

    fn status(&mut self) -> Value {
        let running = matches!(self.run, Run::Running(_));
        let ready = running && self.ready;
        let phase = match &self.run {
            Run::Done if self.last.as_ref().is_some_and(|t| t.exit_code == 0) => "Succeeded",
            Run::Done if self.restart_policy() != "Always" => "Failed",
            _ if self.ever_started => "Running",
            _ => "Pending",
        };
        let prepared = self.launch.is_some();
        let conditions = vec![
            self.condition("PodReadyToStartContainers", prepared),
            self.condition("Initialized", true),
            self.condition("Ready", ready),
            self.condition("ContainersReady", ready),
            self.condition("PodScheduled", true),
        ];
        let state = match &self.run {
            Run::Waiting(w) => json!({ "waiting": { "reason": w.reason, "message": w.message } }),
            Run::Running(proc) => json!({ "running": { "startedAt": proc.started_at } }),
            Run::BackOff { message, .. } => json!({ "waiting": { "reason": "CrashLoopBackOff", "message": message } }),
            Run::Held | Run::Done => match &self.last {
                Some(t) => json!({ "terminated": t.to_json() }),
                None => json!({ "waiting": { "reason": "HeldDown", "message": "kept down by the test" } }),
            },
        };
        let last_state = match (&self.run, &self.last) {
            (Run::Held | Run::Done, _) | (_, None) => json!({}),
            (_, Some(t)) => json!({ "terminated": t.to_json() }),
        };
        let image_id = self.launch.as_ref().map(|l| format!("torcus-kubelet://{}", l.program.display()));
        let containers = self.pod.spec.as_ref().map(|s| s.containers.clone()).unwrap_or_default();
        let statuses: Vec<Value> = containers
            .iter()
            .map(|c| {
                let mut status = json!({
                    "name": c.name,
                    "image": c.image.clone().unwrap_or_default(),
                    "imageID": image_id.clone().unwrap_or_default(),
                    "ready": ready,
                    "started": running,
                    "restartCount": self.restart_count,
                    "state": state,
                    "lastState": last_state,
                });
                if let Run::Running(proc) = &self.run {
                    status["containerID"] = json!(format!("torcus-kubelet://{}", proc.pid));
                }
                status
            })
            .collect();
        let mut status = json!({
            "phase": phase,
            "hostIP": HOST_IP,
            "hostIPs": [{ "ip": HOST_IP }],
            "startTime": self.start_time,
            "conditions": conditions,
            "containerStatuses": statuses,
        });
        if let Some(ip) = self.ip {
            status["podIP"] = json!(ip.to_string());
            status["podIPs"] = json!([{ "ip": ip.to_string() }]);
        }
        status
    }

    fn condition(&mut self, kind: &'static str, on: bool) -> Value {
        let entry = self.conditions.entry(kind).or_insert_with(|| (on, now()));
        if entry.0 != on {
            *entry = (on, now());
        }
        let mut condition = json!({
            "type": kind,
            "status": if on { "True" } else { "False" },
            "lastProbeTime": null,
            "lastTransitionTime": entry.1,
        });
        if !on && matches!(kind, "Ready" | "ContainersReady") {
            condition["reason"] = json!("ContainersNotReady");
        }
        condition
    }
}

/// A line from the kubelet in a pod's log.
fn log_line(log: &Path, line: &str) {
    use std::io::Write as _;
    if let Ok(mut file) = std::fs::File::options().create(true).append(true).open(log) {
        let _ = writeln!(file, "==> torcus-kubelet {}: {line}", now());
    }
}

/// Waits for the process to end; never, when none runs.
async fn exited(run: &mut Run) -> std::io::Result<ExitStatus> {
    match run {
        Run::Running(proc) => proc.child.wait().await,
        _ => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn secs(value: Option<i32>, default: u64) -> Duration {
    Duration::from_secs(value.and_then(|v| u64::try_from(v).ok()).filter(|v| *v > 0).unwrap_or(default))
}

/// Runs one probe against the pod IP: HTTP GET (2xx and 3xx pass) or TCP
/// connect. Exec and gRPC probes are not supported and pass.
async fn run_probe(probe: &Probe, ip: Ipv4Addr, ports: &[ContainerPort]) -> Result<(), String> {
    let timeout = secs(probe.timeout_seconds, 1);
    let port = |port: &IntOrString| match port {
        IntOrString::Int(p) => u16::try_from(*p).map_err(|_| format!("port {p} out of range")),
        IntOrString::String(name) => ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("no container port named {name:?}")),
    };
    let host_ip = |host: Option<&String>| -> Result<IpAddr, String> {
        match host.filter(|h| !h.is_empty()) {
            Some(h) => h.parse().map_err(|_| format!("probe host {h:?} is not an IP")),
            None => Ok(IpAddr::V4(ip)),
        }
    };
    if let Some(get) = &probe.http_get {
        let addr = SocketAddr::new(host_ip(get.host.as_ref())?, port(&get.port)?);
        if get.scheme.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("https")) {
            // No TLS client here: a connection has to do.
            return tcp_probe(addr, timeout).await;
        }
        let headers: Vec<(String, String)> =
            get.http_headers.iter().flatten().map(|h| (h.name.clone(), h.value.clone())).collect();
        let path = get.path.as_deref().filter(|p| !p.is_empty()).unwrap_or("/");
        let (code, _) =
            http_request(addr, &addr.to_string(), path, &headers, timeout).await.map_err(|e| format!("{e:#}"))?;
        return if (200..400).contains(&code) { Ok(()) } else { Err(format!("HTTP {code} from {path}")) };
    }
    if let Some(tcp) = &probe.tcp_socket {
        let addr = SocketAddr::new(host_ip(tcp.host.as_ref())?, port(&tcp.port)?);
        return tcp_probe(addr, timeout).await;
    }
    Ok(())
}

async fn tcp_probe(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("connecting to {addr}: {e}")),
        Err(_) => Err(format!("connecting to {addr}: timed out")),
    }
}

/// Files of a Secret or ConfigMap: every key, or the `items` mapping.
fn key_files(
    files: &mut Files,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    optional: bool,
    what: &str,
) -> Result<(), String> {
    match items {
        None => {
            for (k, v) in data {
                files.insert(relative(k)?, (v.clone(), file_mode(default_mode)));
            }
        }
        Some(items) => {
            for item in items {
                match data.get(&item.key) {
                    Some(v) => {
                        files.insert(relative(&item.path)?, (v.clone(), file_mode(item.mode.or(default_mode))));
                    }
                    None if optional => {}
                    None => return Err(format!("{what}: no key {:?}", item.key)),
                }
            }
        }
    }
    Ok(())
}

/// A file's mode: the volume's, always readable by its owner (us).
fn file_mode(mode: Option<i32>) -> u32 {
    mode.and_then(|m| u32::try_from(m).ok()).unwrap_or(0o644) & 0o777 | 0o400
}

/// `path` if it is relative and stays inside its folder.
fn relative(path: &str) -> Result<PathBuf, String> {
    let p = Path::new(path);
    let inside = !path.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    if inside { Ok(p.to_owned()) } else { Err(format!("path {path:?} must be relative, without `..`")) }
}

fn map_lines(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter().flatten().map(|(k, v)| format!("{k}={v:?}\n")).collect()
}

/// Expands `$(VAR)` from `env` as Kubernetes does: unknown references stay
/// as they are, `$$` is a `$`.
fn expand(value: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.iter().rev().find(|(n, _)| n == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&rest[i..i + end + 3]),
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Rewrites a path under a volume mount to the host folder of that volume
/// (longest mount wins, on path component boundaries); `--flag=<path>` is
/// rewritten after the `=`. Anything else is returned unchanged.
fn rewrite(value: &str, mounts: &[(String, PathBuf)]) -> String {
    if value.starts_with('-')
        && let Some((flag, path)) = value.split_once('=')
        && path.starts_with('/')
    {
        return format!("{flag}={}", rewrite(path, mounts));
    }
    let under = |mount: &str| {
        let mount = if mount.is_empty() { "/" } else { mount };
        if value == mount {
            Some("")
        } else if mount == "/" {
            value.strip_prefix('/')
        } else {
            value.strip_prefix(mount)?.strip_prefix('/')
        }
    };
    let best = mounts.iter().filter_map(|(m, host)| Some((m.len(), host, under(m)?))).max_by_key(|(len, ..)| *len);
    match best {
        Some((_, host, "")) => host.display().to_string(),
        Some((_, host, rest)) => host.join(rest).display().to_string(),
        None => value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounts() -> Vec<(String, PathBuf)> {
        vec![
            ("/etc/torcus/tls".to_owned(), PathBuf::from("/w/tls")),
            ("/etc/torcus".to_owned(), PathBuf::from("/w/etc")),
            ("/tmp".to_owned(), PathBuf::from("/w/tmp")),
        ]
    }

    #[test]
    fn rewrites_paths_under_mounts() {
        let m = mounts();
        assert_eq!(rewrite("/etc/torcus/tls", &m), "/w/tls");
        assert_eq!(rewrite("/etc/torcus/tls/ca.crt", &m), "/w/tls/ca.crt");
        assert_eq!(rewrite("/etc/torcus/config/cluster.json", &m), "/w/etc/config/cluster.json");
        assert_eq!(rewrite("/etc/torcus-other", &m), "/etc/torcus-other");
        assert_eq!(rewrite("/tmpfoo", &m), "/tmpfoo");
        assert_eq!(rewrite("--config=/etc/torcus/tls/x", &m), "--config=/w/tls/x");
        assert_eq!(rewrite("serve", &m), "serve");
        assert_eq!(rewrite("relative/etc/torcus", &m), "relative/etc/torcus");
    }

    #[test]
    fn expands_references_like_kubernetes() {
        let env = vec![("A".to_owned(), "1".to_owned()), ("B".to_owned(), "two".to_owned())];
        assert_eq!(expand("$(A)-$(B)", &env), "1-two");
        assert_eq!(expand("$(C) stays", &env), "$(C) stays");
        assert_eq!(expand("$$(A) escaped", &env), "$(A) escaped");
        assert_eq!(expand("$ alone $(", &env), "$ alone $(");
    }

    #[test]
    fn volume_paths_stay_inside() {
        assert!(relative("a/b.crt").is_ok());
        assert!(relative("../x").is_err());
        assert!(relative("/abs").is_err());
        assert!(relative("").is_err());
    }

    #[test]
    fn items_map_keys_to_paths() {
        let data = BTreeMap::from([("k".to_owned(), b"v".to_vec()), ("other".to_owned(), b"o".to_vec())]);
        let items = [KeyToPath { key: "k".to_owned(), path: "sub/file".to_owned(), mode: Some(0o400) }];
        let mut files = Files::new();
        key_files(&mut files, &data, Some(&items), None, false, "secret").unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[Path::new("sub/file")], (b"v".to_vec(), 0o400));
        let missing = [KeyToPath { key: "nope".to_owned(), path: "f".to_owned(), mode: None }];
        assert!(key_files(&mut Files::new(), &data, Some(&missing), None, false, "secret").is_err());
        assert!(key_files(&mut Files::new(), &data, Some(&missing), None, true, "secret").is_ok());
    }

    #[test]
    fn subnets_differ_and_avoid_127_0_0() {
        let a = pick_subnet();
        let b = pick_subnet();
        assert_ne!(a, b);
        assert!((100..=250).contains(&a.0));
    }
}
