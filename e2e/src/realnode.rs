//! A real Kubernetes node for the sandbox (`torcus-sandbox up --real-node`):
//! the upstream kubelet, kube-proxy and kube-scheduler (from the control
//! plane's binary), containerd and its runc shim, the CNI bridge plugins and
//! CoreDNS (from `e2e/realnode/`'s Go module), and runc from Debian. Pods run
//! in real containers with their security context, resource limits, volumes
//! and probes, on a pod network of their own.
//!
//! Everything is confined to this machine. The node lives in a network
//! namespace of its own (`torcus-real`), joined to the host by one veth pair:
//! the host end ([`HOST_ADDRESS`]) is where the API server and CoreDNS
//! listen, the node end ([`NODE_ADDRESS`]) is the Node's InternalIP. Pods sit
//! on a bridge in the node's namespace ([`POD_SUBNET`]); their traffic to the
//! host is masqueraded behind the node's address, as on a real node. Only
//! one real node runs on a machine at a time (the names and addresses are
//! fixed): its sandbox holds [`LOCK`].
//!
//! The kubelet, containerd (and so its shims and runc) and kube-proxy share
//! a mount namespace of their own, kept in the node's folder: the kubelet's
//! volume mounts are seen by the runtime and by nothing else, and the paths
//! they write whatever their configuration says (`/run/containerd`,
//! `/var/lib/kubelet/device-plugins`, `/var/log/containers`,
//! `/var/lib/cni`) are folders of the node's own there, so a kubelet or
//! containerd the machine runs itself is never touched.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Node;
use kube::Api;

use crate::controlplane::{self, ControlPlane};
use crate::pki::REAL_NODE;
use crate::process::Process;

/// The node's network namespace.
pub const NETNS: &str = "torcus-real";
/// The host end of the node's veth: the API server and CoreDNS.
pub const HOST_ADDRESS: Ipv4Addr = Ipv4Addr::new(172, 31, 250, 1);
/// The node end: the Node's InternalIP.
pub const NODE_ADDRESS: Ipv4Addr = Ipv4Addr::new(172, 31, 250, 2);
/// The pods' subnet on the node's bridge.
pub const POD_SUBNET: &str = "10.244.0.0/24";
const HOST_VETH: &str = "torcus-real0";
/// Held by the sandbox that runs the real node; holds its folder's path.
pub const LOCK: &str = "/run/torcus-real.lock";
/// The kernel settings as they were before the kubelet changed them, kept
/// outside the node's folder (a killed test's folder may be gone when the
/// next node cleans up after it) until they are put back.
const SAVED_SYSCTLS: &str = "/run/torcus-real.sysctls";
/// Host folders made for the node's mount namespace's binds.
const MADE_FOLDERS: &str = "/run/torcus-real.made";
/// Host folders the node's mount namespace covers with its own (the first
/// two whole; under `/var/lib`, only what the kubelet and CNI write).
const PRIVATE_PATHS: [(&str, &str); 4] = [
    ("run", "/run"),
    ("var-log", "/var/log"),
    ("var-lib-kubelet", "/var/lib/kubelet"),
    ("var-lib-cni", "/var/lib/cni"),
];
/// The pod sandbox image, made by `e2e/realnode/pause-image.py`.
const PAUSE_IMAGE: &str = "localhost/torcus/pause:1";
/// Local PersistentVolumes made for the node StatefulSets' claims.
const VOLUMES: usize = 8;
/// The cgroup the kubelet puts its pods under (its `cgroupRoot`), in every
/// hierarchy: cleaning up touches this one and nothing of another kubelet
/// the machine may run.
const CGROUP_ROOT: &str = "torcus-real";
/// Kernel settings (under `/proc/sys`) the kubelet sets on start to what
/// it wants its pods to see (`setupKernelTunables`); put back when the node
/// stops.
pub const KUBELET_SYSCTLS: [&str; 6] = [
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];

/// The node's network: its namespace and veth pair. Dropping it deletes
/// both (and with the namespace, every pod network interface in it).
#[derive(Debug)]
pub struct Network {
    _lock: std::fs::File,
}

impl Network {
    /// Takes [`LOCK`] for the real node in `dir` (failing if another
    /// sandbox holds it), cleans up after any node whose sandbox was killed
    /// (the one the lock names, and `dir`'s), and makes the namespace and
    /// the veth pair.
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        let mut lock = lock()?.with_context(|| {
            format!(
                "another real node runs on this machine, in {} (its sandbox holds {LOCK}): stop it first with \
                 `torcus-sandbox down`",
                owner()
            )
        })?;
        clean_up_locked(dir);
        quietly("ip", &["netns", "del", NETNS]);
        quietly("ip", &["link", "del", HOST_VETH]);
        lock.set_len(0)?;
        std::io::Write::write_all(&mut lock, dir.display().to_string().as_bytes())?;
        run("ip", &["netns", "add", NETNS])?;
        let this = Self { _lock: lock };
        run("ip", &["link", "add", HOST_VETH, "type", "veth", "peer", "name", "eth0", "netns", NETNS])?;
        run("ip", &["addr", "add", &format!("{HOST_ADDRESS}/30"), "dev", HOST_VETH])?;
        run("ip", &["link", "set", HOST_VETH, "up"])?;
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["addr", "add", &format!("{NODE_ADDRESS}/30"), "dev", "eth0"],
            vec!["link", "set", "eth0", "up"],
            vec!["route", "add", "default", "via", &HOST_ADDRESS.to_string()],
        ] {
            let mut all = vec!["netns", "exec", NETNS, "ip"];
            all.extend(args);
            run("ip", &all)?;
        }
        Ok(this)
    }

    /// The host end's address, where the API server is to listen.
    pub fn host_address(&self) -> IpAddr {
        IpAddr::V4(HOST_ADDRESS)
    }
}

/// The folder of the real node [`LOCK`] names.
fn owner() -> String {
    std::fs::read_to_string(LOCK).unwrap_or_default().trim().to_owned()
}

/// [`LOCK`], taken; `None` if another process holds it.
fn lock() -> anyhow::Result<Option<std::fs::File>> {
    let file = std::fs::File::options().create(true).truncate(false).write(true).open(LOCK)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(anyhow::Error::new(e).context(LOCK)),
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        quietly("ip", &["netns", "del", NETNS]);
        quietly("ip", &["link", "del", HOST_VETH]);
        let _ = self._lock.set_len(0);
    }
}

/// The OCI archives of the two images (`scripts/build-images.sh`'s, in
/// `TORCUS_IMAGES_DIR` or `.cache/images/`), for the node's containerd.
pub fn images() -> anyhow::Result<Vec<PathBuf>> {
    let dir = std::env::var_os("TORCUS_IMAGES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/images"));
    ["torcus-node.oci.tar", "torcus-operator.oci.tar"]
        .into_iter()
        .map(|name| {
            let path = dir.join(name);
            anyhow::ensure!(
                path.is_file(),
                "no image archive {}: build the images first with scripts/build-images.sh",
                path.display()
            );
            Ok(path)
        })
        .collect()
}

/// The Go tools of the real node, built (or found up to date) by
/// `e2e/realnode/build.sh`: a folder with `containerd`,
/// `containerd-shim-runc-v2`, `ctr`, `coredns` and the CNI plugins.
pub fn tools() -> anyhow::Result<PathBuf> {
    crate::process::go_tool("TORCUS_REALNODE_DIR", "realnode/build.sh")
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out =
        Command::new(program).args(args).stdin(Stdio::null()).output().with_context(|| format!("running {program}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn quietly(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A running real node. [`RealNode::stop`] (or dropping it) stops its
/// processes, kills its containers, unmounts their volumes and puts back
/// the kernel settings the kubelet changed; the [`Network`] goes with it.
#[derive(Debug)]
pub struct RealNode {
    dir: PathBuf,
    // Stopped newest first: CoreDNS, scheduler, proxy, kubelet, containerd.
    processes: Vec<Process>,
    network: Option<Network>,
}

impl RealNode {
    /// Starts the node in `dir` (its own folder) for the control plane `cp`,
    /// which must listen on `network`'s host end, with the OCI archives in
    /// `images` imported into its containerd; returns once the Node is
    /// Ready and its volumes exist.
    pub async fn start(dir: &Path, cp: &ControlPlane, network: Network, images: &[PathBuf]) -> anyhow::Result<Self> {
        let tools = tools()?;
        let binary = controlplane::binary()?;
        std::fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        for (_, path) in PRIVATE_PATHS {
            anyhow::ensure!(
                !dir.starts_with(path),
                "the real node's folder {} is under {path}, which its mount namespace covers",
                dir.display()
            );
        }
        let logs = dir.join("logs");
        for sub in ["logs", "cni/net.d", "kubelet", "pods", "volume-plugins", "volumes"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let mut saved = String::new();
        for key in KUBELET_SYSCTLS {
            let value = std::fs::read_to_string(Path::new("/proc/sys").join(key))?;
            saved.push_str(&format!("{key}={}\n", value.trim()));
        }
        std::fs::write(SAVED_SYSCTLS, saved)?;
        make_cgroup_root()?;
        let namespace = mount_namespace(&dir)?;
        let mut this = Self { dir: dir.clone(), processes: Vec::new(), network: Some(network) };
        let kubeconfig = cp.kubeconfig();
        let node_kubeconfig = cp.dir().join("node.kubeconfig");
        let ca = cp.dir().join("pki/ca.crt");
        let files = Files { dir: &dir, tools: &tools, kubeconfig, ca: &ca };
        files.write()?;

        let in_node = |program: &Path| {
            // Both namespaces' files are opened before either is entered.
            let mut c = Command::new("nsenter");
            c.arg(format!("--mount={}", namespace.display())).arg(format!("--net=/run/netns/{NETNS}")).arg(program);
            c
        };

        let mut containerd = in_node(&tools.join("containerd"));
        containerd.arg("--config").arg(dir.join("containerd.toml"));
        containerd.env("PATH", path_with(&tools));
        this.processes.push(Process::spawn("containerd", containerd, &logs.join("containerd.log"))?);
        let socket = dir.join("containerd/containerd.sock");
        this.wait("containerd's socket", Duration::from_secs(30), || Ok(socket.exists())).await?;
        for image in std::iter::once(&tools.join("pause.oci.tar")).chain(images) {
            let out = Command::new(tools.join("ctr"))
                .arg("--address")
                .arg(&socket)
                .args(["-n", "k8s.io", "images", "import"])
                .arg(image)
                .output()?;
            anyhow::ensure!(
                out.status.success(),
                "importing {}: {}",
                image.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }

        let mut kubelet = in_node(&binary);
        kubelet
            .arg("kubelet")
            .arg(format!("--config={}", dir.join("kubelet.yaml").display()))
            .arg(format!("--kubeconfig={}", node_kubeconfig.display()))
            .arg(format!("--root-dir={}", dir.join("kubelet").display()))
            .arg(format!("--cert-dir={}", dir.join("kubelet/pki").display()))
            .arg(format!("--hostname-override={REAL_NODE}"))
            .arg(format!("--node-ip={NODE_ADDRESS}"))
            .arg("--v=1")
            .env("TORCUS_DIE_WITH_PARENT", "1");
        this.processes.push(Process::spawn("kubelet", kubelet, &logs.join("kubelet.log"))?);

        let mut proxy = in_node(&binary);
        proxy
            .arg("kube-proxy")
            .arg(format!("--config={}", dir.join("kube-proxy.yaml").display()))
            .env("TORCUS_DIE_WITH_PARENT", "1");
        this.processes.push(Process::spawn("kube-proxy", proxy, &logs.join("kube-proxy.log"))?);

        let mut scheduler = Command::new(&binary);
        scheduler
            .arg("kube-scheduler")
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--authentication-kubeconfig={}", kubeconfig.display()))
            .arg(format!("--authorization-kubeconfig={}", kubeconfig.display()))
            .args(["--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=0"])
            .env("TORCUS_DIE_WITH_PARENT", "1");
        this.processes.push(Process::spawn("kube-scheduler", scheduler, &logs.join("kube-scheduler.log"))?);

        let mut coredns = Command::new(tools.join("coredns"));
        coredns.arg("-conf").arg(dir.join("Corefile"));
        this.processes.push(Process::spawn("coredns", coredns, &logs.join("coredns.log"))?);

        let client = cp.client().await?;
        let nodes: Api<Node> = Api::all(client);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            this.check_running()?;
            let node = nodes.get_opt(REAL_NODE).await?;
            let ready = node
                .as_ref()
                .and_then(|n| n.status.as_ref()?.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            let tainted = node
                .as_ref()
                .and_then(|n| n.spec.as_ref()?.taints.as_ref())
                .is_some_and(|t| t.iter().any(|t| t.key.starts_with("node.kubernetes.io/")));
            if ready && !tainted {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "Node {REAL_NODE} not Ready and untainted after 120 s");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let out = cp.kubectl().args(["apply", "-f"]).arg(dir.join("storage.yaml")).output()?;
        anyhow::ensure!(out.status.success(), "applying the local volumes: {}", String::from_utf8_lossy(&out.stderr));
        Ok(this)
    }

    /// Process ids of the node's daemons, for the sandbox's `processes` file.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.processes.iter().map(|p| (p.name().to_owned(), p.id())).collect()
    }

    /// Fails if one of the node's daemons has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        self.processes.iter_mut().try_for_each(Process::check_running)
    }

    /// The node's folder (logs in `logs/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops everything: daemons, containers, mounts, network, settings.
    pub fn stop(&mut self) {
        while let Some(mut p) = self.processes.pop() {
            p.stop(Duration::from_secs(10));
        }
        // The lock is held (by the network, dropped after).
        clean_up_locked(&self.dir);
        drop(self.network.take());
    }

    async fn wait(
        &mut self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut() -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_running()?;
            if done()? {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "waited {timeout:?} for {what}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for RealNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Undoes what the real node in `dir` left behind, for a sandbox whose
/// supervisor was killed: takes [`LOCK`] (waiting a few seconds for a
/// supervisor that is dying to let go of it) and cleans up as
/// [`RealNode::stop`] does. While another sandbox's node holds the lock
/// (which cleaned up after this one when it started), only what names
/// `dir` is undone: the cgroups, settings and network are that node's.
pub fn cleanup_all(dir: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let lock = loop {
        if let Some(lock) = lock()? {
            break lock;
        }
        let holder = PathBuf::from(owner());
        if Instant::now() > deadline || holder != dir.canonicalize().unwrap_or_else(|_| dir.to_owned()) {
            clean_up_folders(&folders(dir, false));
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    clean_up_locked(dir);
    quietly("ip", &["netns", "del", NETNS]);
    quietly("ip", &["link", "del", HOST_VETH]);
    lock.set_len(0)?;
    Ok(())
}

/// With [`LOCK`] held: kills every process of the node in `dir` and of the
/// node the lock names (any process whose command line names a path in
/// their folders: containerd, its shims, the kubelet, kube-proxy, CoreDNS)
/// and of their pods (the cgroups under [`CGROUP_ROOT`]), unmounts what is
/// mounted under the folders, removes the cgroups and the host folders the
/// mount namespace made, and puts the kernel settings back. Safe to call
/// when there is nothing to undo.
fn clean_up_locked(dir: &Path) {
    // Twice: a pod's processes can fork while the first pass kills.
    for _ in 0..2 {
        for pid in kubepods_pids() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        clean_up_folders(&folders(dir, true));
    }
    remove_kubepods_cgroups();
    if let Ok(saved) = std::fs::read_to_string(SAVED_SYSCTLS) {
        for line in saved.lines() {
            if let Some((key, value)) = line.split_once('=') {
                let _ = std::fs::write(Path::new("/proc/sys").join(key), value);
            }
        }
        let _ = std::fs::remove_file(SAVED_SYSCTLS);
    }
    // Empty: everything the node wrote there went to its own folders.
    if let Ok(made) = std::fs::read_to_string(MADE_FOLDERS) {
        for path in made.lines() {
            let _ = std::fs::remove_dir(path);
        }
        let _ = std::fs::remove_file(MADE_FOLDERS);
    }
}

/// `dir`, and with `owner` the folder [`LOCK`] names: those that are a
/// node's folder (absolute, named `realnode`), as every process's arguments
/// are matched against them.
fn folders(dir: &Path, owner: bool) -> Vec<PathBuf> {
    let node_folder = |d: &Path| d.is_absolute() && d.components().count() > 2 && d.ends_with("realnode");
    let mut dirs: Vec<PathBuf> = Vec::new();
    let named = owner.then(|| PathBuf::from(self::owner()));
    for d in std::iter::once(dir.canonicalize().unwrap_or_else(|_| dir.to_owned())).chain(named) {
        if node_folder(&d) && !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    dirs
}

/// Kills the processes naming a path in `dirs` and unmounts what is mounted
/// under them.
fn clean_up_folders(dirs: &[PathBuf]) {
    for pid in dirs.iter().flat_map(|d| processes_naming(d)) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    std::thread::sleep(Duration::from_millis(200));
    let mut mounts: Vec<PathBuf> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(unescape_mount_path))
        .filter(|m| dirs.iter().any(|d| m.starts_with(d)))
        .collect();
    // Deepest first.
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    for m in mounts {
        let _ = Command::new("umount").arg("-l").arg(&m).stderr(Stdio::null()).status();
    }
}

/// A mount point as `/proc/self/mountinfo` writes it (space, tab, newline
/// and backslash as octal escapes), as a path.
fn unescape_mount_path(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal =
            bytes.get(i + 1..i + 4).filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if let Some(d) = octal {
            out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    PathBuf::from(std::ffi::OsString::from(String::from_utf8_lossy(&out).into_owned()))
}

/// Pids of the processes (this one aside) with an argument naming a path
/// in `dir`, on its own or as a flag's value (`--config=<dir>/...`).
fn processes_naming(dir: &Path) -> Vec<i32> {
    let Ok(procs) = std::fs::read_dir("/proc") else { return Vec::new() };
    let me = i32::try_from(std::process::id()).unwrap_or_default();
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
            cmdline.split(|b| *b == 0).any(|arg| {
                let arg = String::from_utf8_lossy(arg);
                let value = arg.split_once('=').map_or(arg.as_ref(), |(_, v)| v);
                Path::new(arg.as_ref()).starts_with(dir) || Path::new(value).starts_with(dir)
            })
        })
        .collect()
}

/// Makes the node's mount namespace, kept by a bind mount of it on
/// `dir/mntns/mnt` (on a private mount, as the kernel requires), with a
/// folder of the node's own over each of [`PRIVATE_PATHS`]. Host folders
/// that do not exist are made for the bind ([`MADE_FOLDERS`]) and removed
/// at cleanup.
fn mount_namespace(dir: &Path) -> anyhow::Result<PathBuf> {
    let holder = dir.join("mntns");
    std::fs::create_dir_all(&holder)?;
    let holder_text = holder.display().to_string();
    run("mount", &["--bind", &holder_text, &holder_text])?;
    run("mount", &["--make-private", &holder_text])?;
    let file = holder.join("mnt");
    std::fs::File::create(&file)?;
    let mut binds = Vec::new();
    for (name, path) in PRIVATE_PATHS {
        let own = dir.join("host").join(name);
        std::fs::create_dir_all(&own)?;
        if !Path::new(path).exists() {
            // Recorded first: a failure half-way still removes it.
            let mut made = std::fs::File::options().create(true).append(true).open(MADE_FOLDERS)?;
            std::io::Write::write_all(&mut made, format!("{path}\n").as_bytes())?;
            std::fs::create_dir_all(path)?;
        }
        binds.push(own.display().to_string());
        binds.push(path.to_owned());
    }
    // Inside the new namespace (private: nothing here reaches the host):
    // what was mounted below each path goes first, so the namespace does
    // not keep the host's mounts there alive, then the node's own folder.
    let script = "set -e; while [ $# -gt 0 ]; do umount -R -l \"$2\" 2>/dev/null || true; \
                  mount --bind \"$1\" \"$2\"; shift 2; done";
    let namespace = format!("--mount={}", file.display());
    let mut args = vec![namespace.as_str(), "--propagation", "private", "sh", "-c", script, "sh"];
    args.extend(binds.iter().map(String::as_str));
    run("unshare", &args)?;
    Ok(file)
}

/// Makes the kubelet's cgroup root in every hierarchy (it must exist); a
/// cpuset cgroup takes its parent's CPUs and memory nodes.
fn make_cgroup_root() -> anyhow::Result<()> {
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        // cgroup v2 alone (unified): one hierarchy, its root here. (This
        // machine has v1; this branch has not run on one.)
        let root = Path::new("/sys/fs/cgroup").join(CGROUP_ROOT);
        std::fs::create_dir_all(&root).with_context(|| format!("making {}", root.display()))?;
        return Ok(());
    }
    for h in std::fs::read_dir("/sys/fs/cgroup")?.flatten() {
        let path = h.path();
        let is_hierarchy = path.join("cgroup.procs").exists();
        if !is_hierarchy {
            continue;
        }
        let root = path.join(CGROUP_ROOT);
        std::fs::create_dir_all(&root).with_context(|| format!("making {}", root.display()))?;
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if let (Ok(value), true) = (std::fs::read_to_string(path.join(file)), root.join(file).exists()) {
                std::fs::write(root.join(file), value.trim())
                    .with_context(|| format!("{}", root.join(file).display()))?;
            }
        }
    }
    Ok(())
}

/// The pids in the kubelet's cgroups (under [`CGROUP_ROOT`] in the v1
/// `pids` hierarchy, or the unified one).
fn kubepods_pids() -> Vec<i32> {
    let mut out = Vec::new();
    for root in [
        format!("/sys/fs/cgroup/pids/{CGROUP_ROOT}"),
        format!("/sys/fs/cgroup/unified/{CGROUP_ROOT}"),
        format!("/sys/fs/cgroup/{CGROUP_ROOT}"),
    ] {
        walk(Path::new(&root), &mut |d| {
            if let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) {
                out.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
        });
    }
    out
}

/// Removes the kubelet's (now empty) cgroups in every hierarchy, deepest
/// first, so the next node starts from none.
fn remove_kubepods_cgroups() {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else { return };
    let unified = Path::new("/sys/fs/cgroup");
    for h in hierarchies.flatten().map(|h| h.path()).chain(std::iter::once(unified.to_owned())) {
        let mut dirs = Vec::new();
        walk(&h.join(CGROUP_ROOT), &mut |d| dirs.push(d.to_owned()));
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            let _ = std::fs::remove_dir(&d);
        }
    }
}

fn walk(dir: &Path, visit: &mut impl FnMut(&Path)) {
    if !dir.is_dir() {
        return;
    }
    visit(dir);
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), visit);
            }
        }
    }
}

fn path_with(tools: &Path) -> std::ffi::OsString {
    let mut path = tools.as_os_str().to_owned();
    if let Some(rest) = std::env::var_os("PATH") {
        path.push(":");
        path.push(rest);
    }
    path
}

/// The node's configuration files.
struct Files<'a> {
    dir: &'a Path,
    tools: &'a Path,
    kubeconfig: &'a Path,
    ca: &'a Path,
}

impl Files<'_> {
    fn write(&self) -> anyhow::Result<()> {
        let dir = self.dir.display();
        let tools = self.tools.display();
        let kubeconfig = self.kubeconfig.display();
        let ca = self.ca.display();
        let files = [
            // containerd 2's configuration (version 3). The CRI plugin may
            // not lower a container's OOM score below its own: this machine
            // withholds CAP_SYS_RESOURCE, as a container host may.
            (
                "containerd.toml",
                format!(
                    r#"version = 3
root = "{dir}/containerd/root"
state = "{dir}/containerd/state"
[grpc]
  address = "{dir}/containerd/containerd.sock"
[ttrpc]
  address = "{dir}/containerd/containerd.sock.ttrpc"
[plugins.'io.containerd.cri.v1.runtime']
  enable_selinux = false
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["{tools}"]
    conf_dir = "{dir}/cni/net.d"
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        Root = "{dir}/runc"
        SystemdCgroup = false
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{PAUSE_IMAGE}"
[plugins.'io.containerd.grpc.v1.cri']
  disable_tcp_service = true
[plugins.'io.containerd.nri.v1.nri']
  disable = true
"#
                ),
            ),
            (
                "cni/net.d/10-torcus.conflist",
                format!(
                    r#"{{
  "cniVersion": "1.0.0",
  "name": "torcus",
  "plugins": [
    {{"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
     "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "{POD_SUBNET}"}}]], "routes": [{{"dst": "0.0.0.0/0"}}],
              "dataDir": "{dir}/cni/ipam"}}}},
    {{"type": "portmap", "capabilities": {{"portMappings": true}}}},
    {{"type": "loopback"}}
  ]
}}
"#
                ),
            ),
            // cgroup v1 is what this machine has: allowed explicitly, as
            // Kubernetes 1.35+ asks. Eviction thresholds low enough that a
            // busy CI disk does not evict the test's pods.
            (
                "kubelet.yaml",
                format!(
                    r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /{CGROUP_ROOT}
containerRuntimeEndpoint: unix://{dir}/containerd/containerd.sock
address: {NODE_ADDRESS}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {ca}}}
authorization: {{mode: Webhook}}
clusterDomain: cluster.local
clusterDNS: [{HOST_ADDRESS}]
resolvConf: {dir}/resolv.conf
failSwapOn: false
podLogsDir: {dir}/pods
volumePluginDir: {dir}/volume-plugins
evictionHard: {{memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
maxPods: 50
"#
                ),
            ),
            // What pods with `dnsPolicy: Default` get: only cluster DNS,
            // never this machine's resolvers.
            ("resolv.conf", format!("nameserver {HOST_ADDRESS}\n")),
            (
                "kube-proxy.yaml",
                format!(
                    r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {{kubeconfig: {kubeconfig}}}
hostnameOverride: {REAL_NODE}
clusterCIDR: {POD_SUBNET}
bindAddress: {NODE_ADDRESS}
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: [primary]
conntrack: {{maxPerCore: 0}}
"#
                ),
            ),
            (
                "Corefile",
                format!(
                    r#".:53 {{
    bind {HOST_ADDRESS}
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 30
}}
"#
                ),
            ),
            ("storage.yaml", storage_yaml(self.dir)),
        ];
        for (name, text) in files {
            std::fs::write(self.dir.join(name), text).with_context(|| format!("writing {name}"))?;
        }
        Ok(())
    }
}

/// The default StorageClass (no provisioner: local volumes made here,
/// bound when a pod is scheduled) and the volumes, one folder each.
fn storage_yaml(dir: &Path) -> String {
    let mut yaml = String::from(
        "apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: local
  annotations: {storageclass.kubernetes.io/is-default-class: \"true\"}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Retain
",
    );
    for i in 0..VOLUMES {
        let path = dir.join(format!("volumes/pv{i}"));
        let _ = std::fs::create_dir_all(&path);
        yaml.push_str(&format!(
            "---
apiVersion: v1
kind: PersistentVolume
metadata: {{name: {REAL_NODE}-pv{i}}}
spec:
  capacity: {{storage: 1Gi}}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: local
  local: {{path: {}}}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions: [{{key: kubernetes.io/hostname, operator: In, values: [{REAL_NODE}]}}]
",
            path.display()
        ));
    }
    yaml
}
