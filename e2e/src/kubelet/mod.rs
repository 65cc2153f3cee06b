//! A *process kubelet* for the local control plane: it registers a Node,
//! binds the pods no scheduler binds, and runs each pod's container as a
//! local process (the `torcus-node` binary for `torcus-node` images), with
//! Secret, ConfigMap, projected, emptyDir and PVC volumes as folders under a
//! work dir, a loopback pod IP (or, for network fault tests, a network
//! namespace per pod that the test made, see [`KubeletConfig::network`]),
//! probes, restarts and pod status like the real kubelet reports. Everything
//! else about a pod (resources, security contexts, init containers, images)
//! is out of scope.
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

mod binary;
mod env;
mod node;
mod pods;
mod probes;
mod volumes;
mod worker;

pub use binary::{node_binary, operator_binary};
use env::*;
use node::*;
use pods::*;
use probes::*;
pub use probes::{http_get, https_get};
use volumes::*;
use worker::*;

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
    /// A pod deleted and made again gets a new IP, as on a real cluster
    /// (by default a pod name keeps its IP for the kubelet's life).
    pub new_ip_on_recreate: bool,
    /// Pods in network namespaces: each pod name, in the order pods first
    /// get an IP, takes one of the lab's namespaces and its address as pod
    /// IP, and its processes run inside it (see
    /// [`KubeletHandle::network_slot`]). By default pods share this
    /// machine's network on loopback IPs.
    pub network: Option<PodNetwork>,
}

/// Network namespaces for pods ([`KubeletConfig::network`]), made (and
/// removed) by the test, which injects faults in them.
#[derive(Clone, Debug, Default)]
pub struct PodNetwork {
    /// Each namespace's name and the address its interface has.
    pub namespaces: Vec<(String, Ipv4Addr)>,
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
        let hosts = config.work_dir.join("hosts");
        std::fs::write(&hosts, "127.0.0.1 localhost\n::1 localhost\n")?;
        let hosts_mount = hosts_mount_works(&hosts);
        if !hosts_mount {
            warn!(
                "no mount namespaces here (not root?): node processes resolve pod DNS names through the registry only"
            );
        }
        let shared = Arc::new(Shared {
            client: client.clone(),
            subnet: pick_subnet(),
            started: now(),
            state: Mutex::new(State::default()),
            hosts_mount,
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

    /// Whether node processes resolve pod DNS names (their `/etc/hosts` is
    /// the kubelet's hosts file): where mount namespaces are allowed.
    pub fn resolves_pod_names(&self) -> bool {
        self.shared.hosts_mount
    }

    /// The IP of pod `name` in `namespace`, once it has one; stable for the
    /// kubelet's life, also across deletion and re-creation of the pod
    /// (unless [`KubeletConfig::new_ip_on_recreate`]).
    pub fn pod_ip(&self, namespace: &str, name: &str) -> Option<IpAddr> {
        self.shared.lock().ips.get(&key(namespace, name)).map(|ip| IpAddr::V4(*ip))
    }

    /// Which of the [`KubeletConfig::network`] lab's namespaces pod `name`
    /// runs in, once it has an IP.
    pub fn network_slot(&self, namespace: &str, name: &str) -> Option<u16> {
        self.shared.lock().network_slots.get(&key(namespace, name)).copied()
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
    /// Whether processes get the hosts file as their `/etc/hosts`.
    hosts_mount: bool,
}

#[derive(Debug, Default)]
struct State {
    /// Kept while the pod's name may come back (unless
    /// [`KubeletConfig::new_ip_on_recreate`]).
    ips: HashMap<PodKey, Ipv4Addr>,
    /// The current worker of each pod name.
    pods: HashMap<PodKey, Slot>,
    /// Pods kept down by [`KubeletHandle::hold_down`].
    held: HashSet<PodKey>,
    /// DNS names of the pods, for the hosts file.
    hosts: BTreeMap<PodKey, Vec<String>>,
    /// IPs of deleted pods, not handed out again while others are free.
    retired: HashSet<Ipv4Addr>,
    /// The lab namespace of each pod name ([`KubeletConfig::network`]).
    network_slots: HashMap<PodKey, u16>,
    /// The hosts file as last written.
    hosts_text: String,
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
        if let Some(network) = &self.config.network {
            // A namespace per pod name, kept for the kubelet's life.
            let next = u16::try_from(state.network_slots.len()).ok()?;
            let slot = *state.network_slots.entry(key.clone()).or_insert(next);
            let Some((_, ip)) = network.namespaces.get(usize::from(slot)) else {
                warn!(pod = ?key, namespaces = network.namespaces.len(), "no network namespace left for the pod");
                return None;
            };
            state.ips.insert(key.clone(), *ip);
            return Some(*ip);
        }
        let (a, b) = self.subnet;
        let used: HashSet<Ipv4Addr> = state.ips.values().chain(&state.retired).copied().collect();
        let ip = match (2..=254).map(|d| Ipv4Addr::new(127, a, b, d)).find(|ip| !used.contains(ip)) {
            Some(ip) => ip,
            None => match state.retired.iter().next().copied() {
                Some(retired) => {
                    state.retired.remove(&retired);
                    retired
                }
                None => {
                    let idle = state.ips.keys().find(|k| !state.pods.contains_key(*k))?.clone();
                    state.ips.remove(&idle)?
                }
            },
        };
        state.ips.insert(key.clone(), ip);
        Some(ip)
    }

    /// The pod `key` was deleted: with [`KubeletConfig::new_ip_on_recreate`]
    /// its IP goes, and the pod made again under its name gets another.
    fn release_ip(&self, key: &PodKey) {
        if self.config.new_ip_on_recreate {
            let mut state = self.lock();
            if let Some(ip) = state.ips.remove(key) {
                state.retired.insert(ip);
            }
        }
    }

    /// `program args` run in pod `key`'s network namespace, when pods have
    /// namespaces (`ip netns exec` enters it and execs the program, which
    /// keeps the process id).
    fn in_network(&self, key: &PodKey, program: PathBuf, args: Vec<String>) -> (PathBuf, Vec<String>) {
        let slot = self.lock().network_slots.get(key).copied();
        let namespace = slot.and_then(|slot| self.config.network.as_ref()?.namespaces.get(usize::from(slot)));
        match namespace {
            Some((namespace, _)) => {
                let mut wrapped =
                    vec!["netns".to_owned(), "exec".to_owned(), namespace.clone(), program.display().to_string()];
                wrapped.extend(args);
                (PathBuf::from("ip"), wrapped)
            }
            None => (program, args),
        }
    }

    fn is_held(&self, key: &PodKey) -> bool {
        self.lock().held.contains(key)
    }

    fn hosts_file(&self) -> PathBuf {
        self.config.work_dir.join("hosts")
    }

    /// Records the DNS names of a pod at its current IP and rewrites the
    /// hosts file: what cluster DNS answers for the pods of a headless
    /// Service. Rewritten in place, since it is bind-mounted over each
    /// process's `/etc/hosts` (see [`hosts_mount_works`]); a lookup at the
    /// very moment of a rewrite may find nothing and is retried, as a DNS
    /// lookup that times out would be.
    fn set_hosts(&self, key: &PodKey, names: Vec<String>) {
        let mut state = self.lock();
        state.hosts.insert(key.clone(), names);
        let mut text = String::from("# written by the torcus process kubelet\n127.0.0.1 localhost\n::1 localhost\n");
        for (key, names) in &state.hosts {
            if let (Some(ip), false) = (state.ips.get(key), names.is_empty()) {
                text.push_str(&format!("{ip} {}\n", names.join(" ")));
            }
        }
        if text == state.hosts_text {
            return;
        }
        match std::fs::write(self.hosts_file(), &text) {
            Ok(()) => state.hosts_text = text,
            Err(e) => warn!(error = %e, "hosts file not written"),
        }
    }
}

/// The program and arguments that run `program` with `hosts` as its
/// `/etc/hosts`, as a real kubelet mounts a pod's hosts file into its
/// containers: util-linux `unshare` gives it a mount namespace of its own
/// (private, so nothing leaks back), a bind mount puts the file in place,
/// and the shell `exec`s the program, which keeps the process id.
fn with_hosts(hosts: &Path, program: &Path, args: &[String]) -> (PathBuf, Vec<String>) {
    let mut wrapped = vec![
        "--mount".to_owned(),
        "--propagation".to_owned(),
        "private".to_owned(),
        "sh".to_owned(),
        "-c".to_owned(),
        r#"mount --bind "$0" /etc/hosts && exec "$@""#.to_owned(),
        hosts.display().to_string(),
        program.display().to_string(),
    ];
    wrapped.extend(args.iter().cloned());
    (PathBuf::from("unshare"), wrapped)
}

/// Whether [`with_hosts`] works here (a mount namespace needs
/// CAP_SYS_ADMIN; `unshare` and `mount` come with util-linux): tried on
/// `true`.
fn hosts_mount_works(hosts: &Path) -> bool {
    let (program, args) = with_hosts(hosts, Path::new("true"), &[]);
    std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_differ_and_avoid_127_0_0() {
        let a = pick_subnet();
        let b = pick_subnet();
        assert_ne!(a, b);
        assert!((100..=250).contains(&a.0));
    }
}
