//! `torcus-sandbox`: a local Kubernetes with Torcus in it, for people (like
//! `kind create cluster`). `up` starts a supervisor in the background that
//! runs the control plane, the operator and a process kubelet (Node
//! `torcus-local`, running the `torcus-node` pods as local processes);
//! `status` and `down` find it through the files it keeps in its folder.
//! `up --real-node` runs a real node instead (`crate::realnode`: the
//! upstream kubelet, containerd, runc, bridge CNI, kube-proxy, CoreDNS) and
//! no operator, for the Helm chart to install.
//!
//! Folder layout: `kubeconfig`, `bin/kubectl`, `sandbox.pid` (supervisor),
//! `ready` (written once everything is up), `sandbox.log`, `logs/`, `etcd/`,
//! `kubelet/` (pod folders, volumes and pod logs).

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;

use crate::controlplane::{self, ControlPlane};
use crate::kubelet::{Kubelet, KubeletConfig};

/// Command line of `torcus-sandbox`.
#[derive(Debug, clap::Parser)]
#[command(
    name = "torcus-sandbox",
    version,
    about = "A local Kubernetes control plane with the Torcus operator, on loopback"
)]
pub struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, clap::Subcommand)]
enum Cmd {
    /// Start the sandbox in the background and return once it is ready.
    Up {
        /// Folder for the sandbox's state, kubeconfig and logs.
        #[arg(long, default_value = ".torcus-sandbox")]
        dir: PathBuf,
        /// How long to wait for it to become ready.
        #[arg(long, default_value = "300")]
        timeout_secs: u64,
        /// Run pods on a real node (upstream kubelet, containerd, runc,
        /// bridge CNI, kube-proxy, CoreDNS) instead of the process kubelet,
        /// with no operator: install it with the Helm chart. Needs root.
        #[arg(long)]
        real_node: bool,
        #[command(flatten)]
        fixtures: Fixtures,
    },
    /// Tell whether the sandbox is running and ready.
    Status {
        /// The sandbox's folder.
        #[arg(long, default_value = ".torcus-sandbox")]
        dir: PathBuf,
    },
    /// Stop the sandbox and every process it started.
    Down {
        /// The sandbox's folder.
        #[arg(long, default_value = ".torcus-sandbox")]
        dir: PathBuf,
    },
    /// Run the sandbox in the foreground (what `up` starts in the background).
    Run {
        /// The sandbox's folder.
        #[arg(long, default_value = ".torcus-sandbox")]
        dir: PathBuf,
        /// See `up --real-node`.
        #[arg(long)]
        real_node: bool,
        #[command(flatten)]
        fixtures: Fixtures,
    },
}

/// TEST ONLY: public fixtures the nodes take instead of generating their
/// own (a node given them holds a key share anyone can recover).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Fixtures {
    /// Nodes take their safe primes from this file.
    #[arg(long, hide = true)]
    test_primes_fixture: Option<PathBuf>,
    /// Nodes store their aux info from this file (keygen without the aux
    /// info protocol).
    #[arg(long, hide = true)]
    test_aux_fixture: Option<PathBuf>,
}

impl Fixtures {
    /// The files, made absolute, with the node variable each is passed in.
    fn resolved(&self) -> anyhow::Result<Vec<(&'static str, PathBuf)>> {
        let mut out = Vec::new();
        for (flag, variable, path) in [
            ("--test-primes-fixture", "TORCUS_TEST_PRIMES_FIXTURE", &self.test_primes_fixture),
            ("--test-aux-fixture", "TORCUS_TEST_AUX_FIXTURE", &self.test_aux_fixture),
        ] {
            if let Some(path) = path {
                let path = path.canonicalize().with_context(|| format!("{flag} {}", path.display()))?;
                out.push((variable, path));
            }
        }
        Ok(out)
    }

    /// The same as command-line arguments.
    fn args(&self) -> anyhow::Result<Vec<std::ffi::OsString>> {
        let mut out = Vec::new();
        for (variable, path) in self.resolved()? {
            let flag = match variable {
                "TORCUS_TEST_PRIMES_FIXTURE" => "--test-primes-fixture",
                _ => "--test-aux-fixture",
            };
            out.push(flag.into());
            out.push(path.into_os_string());
        }
        Ok(out)
    }
}

impl Args {
    /// Carries out the command.
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Cmd::Up { dir, timeout_secs, real_node, fixtures } => {
                up(&dir, Duration::from_secs(timeout_secs), real_node, &fixtures).await
            }
            Cmd::Status { dir } => status(&dir).await,
            Cmd::Down { dir } => down(&dir),
            Cmd::Run { dir, real_node, fixtures } => supervise(&dir, real_node, &fixtures).await,
        }
    }
}

async fn up(dir: &Path, timeout: Duration, real_node: bool, fixtures: &Fixtures) -> anyhow::Result<()> {
    let made = !dir.exists();
    std::fs::create_dir_all(dir)?;
    let dir = dir.canonicalize()?;
    if let Some(pid) = running_pid(&dir) {
        if dir.join("ready").exists() {
            println!("sandbox already running (pid {pid})");
            print_usage(&dir);
            return Ok(());
        }
        anyhow::bail!(
            "a sandbox (pid {pid}) is starting or stuck in {}; run `torcus-sandbox down` first",
            dir.display()
        );
    }
    let _ = std::fs::remove_file(dir.join("ready"));
    // The folder holds the admin kubeconfig and the control plane's keys:
    // one `up` made is for root's eyes only (one given may be shared).
    if made {
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    }
    // Build (or find) the control plane and the node now, so progress shows here.
    controlplane::binary()?;
    let mut supervisor = Command::new(std::env::current_exe()?);
    if real_node {
        crate::realnode::tools()?;
        crate::realnode::images()?;
    } else {
        supervisor.env("TORCUS_NODE_BIN", crate::kubelet::node_binary()?);
    }

    let log = std::fs::File::create(dir.join("sandbox.log"))?;
    supervisor.arg("run").arg("--dir").arg(&dir);
    supervisor.args(fixtures.args()?);
    if real_node {
        supervisor.arg("--real-node");
    }
    let mut child = supervisor
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group, so a Ctrl-C in this terminal does not reach it.
        .process_group(0)
        .spawn()
        .context("starting the sandbox supervisor")?;
    let started = Instant::now();
    eprintln!("starting the sandbox in {} ...", dir.display());
    loop {
        if dir.join("ready").exists() {
            break;
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!(
                "the sandbox exited with {status} while starting; {}:\n{}",
                dir.join("sandbox.log").display(),
                crate::process::tail(&dir.join("sandbox.log"), 40)
            );
        }
        if started.elapsed() > timeout {
            let _ = down(&dir);
            anyhow::bail!("the sandbox was not ready after {timeout:?}; see {}", dir.join("sandbox.log").display());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("sandbox is up in {:.1}s (pid {})", started.elapsed().as_secs_f64(), child.id());
    print_usage(&dir);
    Ok(())
}

fn print_usage(dir: &Path) {
    let kubeconfig = dir.join("kubeconfig");
    let kubectl = dir.join("bin/kubectl");
    println!(
        "\nUse it with:\n  export KUBECONFIG={}\n  {} get mpcclusters -A\n\n(`{}` is the upstream kubectl; any kubectl works with that kubeconfig.)\nStop it with: torcus-sandbox down --dir {}",
        kubeconfig.display(),
        kubectl.display(),
        kubectl.display(),
        dir.display()
    );
}

async fn status(dir: &Path) -> anyhow::Result<()> {
    let Some(pid) = running_pid(dir) else {
        println!("sandbox: not running");
        std::process::exit(1);
    };
    let client = controlplane::client_for(&dir.join("kubeconfig")).await?;
    let ready = client.request_text(http::Request::get("/readyz").body(Vec::new())?).await;
    let api = match ready {
        Ok(text) if text == "ok" => "ready".to_owned(),
        Ok(text) => format!("not ready ({text})"),
        Err(e) => format!("unreachable ({e})"),
    };
    println!("sandbox: running (supervisor pid {pid})");
    println!("api server: {api}");
    if dir.join("realnode").exists() {
        let state = if dir.join("ready").exists() { "ready" } else { "starting" };
        println!("real node: {} ({state}; no operator: install the Helm chart)", crate::pki::REAL_NODE);
    } else {
        println!("operator: {}", if dir.join("ready").exists() { "running" } else { "starting" });
    }
    println!("kubeconfig: {}", dir.join("kubeconfig").display());
    if let Ok(pids) = std::fs::read_to_string(dir.join("processes")) {
        print!("{pids}");
    }
    Ok(())
}

/// Stops the supervisor (which stops its children) and makes sure every
/// process it recorded, and every pod process of its kubelet, is gone.
fn down(dir: &Path) -> anyhow::Result<()> {
    let dir = &dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let Some(pid) = running_pid(dir) else {
        // A supervisor that was killed leaves what it started: the real
        // node's daemons and containers in particular (the control plane
        // and the process kubelet's pods end with it).
        for child in recorded_pids(dir) {
            let _ = kill(child, Signal::SIGKILL);
        }
        stop_pods(dir);
        if dir.join("realnode").exists() {
            crate::realnode::cleanup_all(&dir.join("realnode"))?;
        }
        for file in ["ready", "processes"] {
            let _ = std::fs::remove_file(dir.join(file));
        }
        println!("sandbox: not running");
        return Ok(());
    };
    let pid = Pid::from_raw(pid);
    kill(pid, Signal::SIGTERM).context("signalling the sandbox")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    // Anything still there (the supervisor stuck, or a child it lost) goes
    // the hard way: the supervisor's process group, then each recorded pid.
    if alive(pid) {
        let _ = nix::sys::signal::killpg(pid, Signal::SIGKILL);
        let _ = kill(pid, Signal::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    for child in recorded_pids(dir) {
        if alive(child) {
            let _ = kill(child, Signal::SIGKILL);
        }
    }
    stop_pods(dir);
    // What a supervisor stopped cleanly left is nothing; one killed left
    // the node as it was.
    if dir.join("realnode").exists() {
        crate::realnode::cleanup_all(&dir.join("realnode"))?;
    }
    for file in ["sandbox.pid", "ready", "processes"] {
        let _ = std::fs::remove_file(dir.join(file));
    }
    println!("sandbox: stopped");
    Ok(())
}

/// Waits for the pod processes of the sandbox's kubelet to be gone: those
/// of a supervisor that died end by themselves once they notice
/// (TORCUS_DIE_WITH_PARENT); after a few seconds, the rest the hard way.
fn stop_pods(dir: &Path) {
    let kubelet = dir.join("kubelet");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<Pid> = crate::kubelet::processes(&kubelet)
            .into_iter()
            .filter_map(|p| i32::try_from(p).ok())
            .map(Pid::from_raw)
            .filter(|p| alive(*p))
            .collect();
        if left.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            for pod in left {
                let _ = kill(pod, Signal::SIGKILL);
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The foreground supervisor: control plane, CRDs, operator, kubelet;
/// stops on SIGTERM or Ctrl-C.
async fn supervise(dir: &Path, real_node: bool, fixtures: &Fixtures) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let dir = dir.canonicalize()?;
    std::fs::write(dir.join("sandbox.pid"), std::process::id().to_string())?;
    let result = if real_node { supervise_real_node(&dir).await } else { supervise_inner(&dir, fixtures).await };
    for file in ["sandbox.pid", "ready", "processes"] {
        let _ = std::fs::remove_file(dir.join(file));
    }
    result
}

async fn supervise_inner(dir: &Path, fixtures: &Fixtures) -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn,kube_client::client::builder=off".into()),
        )
        .try_init();
    // State from an earlier run would hold another CA's certificates (and
    // the kubelet's volumes shares of clusters that no longer exist).
    if dir.join("realnode").exists() {
        crate::realnode::cleanup_all(&dir.join("realnode"))?;
    }
    for stale in ["etcd", "pki", "apiserver", "kubelet", "realnode"] {
        let _ = std::fs::remove_dir_all(dir.join(stale));
    }
    let mut cp = ControlPlane::start(dir).await?;
    cp.install_crds().await?;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    let _ = std::fs::remove_file(bin.join("kubectl"));
    std::os::unix::fs::symlink(controlplane::binary()?, bin.join("kubectl"))?;

    let stop = CancellationToken::new();
    let client = cp.client().await?;
    let mut operator = crate::testing::operator_args("default");
    operator.namespace = None;
    operator.node_image = concat!("ghcr.io/torcus/torcus-node:", env!("CARGO_PKG_VERSION")).to_owned();
    operator.instance = Some("sandbox".to_owned());
    let metrics_addr = operator.http_addr;
    let mut operator = tokio::spawn(operator.run(client.clone(), stop.clone().cancelled_owned()));

    let kubelet_dir = dir.join("kubelet");
    let kubelet = Kubelet::start(
        client,
        KubeletConfig {
            node_name: "torcus-local".to_owned(),
            namespace: None,
            node_binary: crate::kubelet::node_binary()?,
            work_dir: kubelet_dir.clone(),
            extra_env: fixtures
                .resolved()?
                .into_iter()
                .map(|(variable, path)| (variable.to_owned(), path.display().to_string()))
                .collect(),
            new_ip_on_recreate: false,
            network: None,
        },
    )
    .await?;

    let mut processes: String = cp.pids().iter().map(|(name, pid)| format!("{name}: pid {pid}\n")).collect();
    processes.push_str(&format!("operator: in the supervisor, metrics at http://{metrics_addr}/metrics\n"));
    processes.push_str(&format!(
        "kubelet: in the supervisor, Node torcus-local, pods and their logs in {}\n",
        kubelet_dir.display()
    ));
    std::fs::write(dir.join("processes"), processes)?;
    std::fs::write(dir.join("ready"), "")?;
    tracing::info!(server = cp.server(), "sandbox ready");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut watchdog = tokio::time::interval(Duration::from_secs(2));
    let outcome = loop {
        tokio::select! {
            _ = term.recv() => break Ok(()),
            _ = tokio::signal::ctrl_c() => break Ok(()),
            _ = watchdog.tick() => if let Err(e) = cp.check_running() { break Err(e) },
            ended = &mut operator => {
                break Err(anyhow::anyhow!("the operator stopped: {:?}", ended.map(|r| r.map_err(|e| e.to_string()))));
            }
        }
    };
    tracing::info!("stopping the sandbox");
    stop.cancel();
    if !operator.is_finished() {
        let _ = tokio::time::timeout(Duration::from_secs(10), operator).await;
    }
    kubelet.stop().await;
    cp.stop();
    outcome
}

/// The supervisor's pid, if the pid file names a live sandbox supervisor (a
/// stale file after a reboot may name some unrelated process).
fn running_pid(dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(dir.join("sandbox.pid")).ok()?.trim().parse().ok()?;
    (alive(Pid::from_raw(pid)) && runs(Pid::from_raw(pid), "torcus-sandbox")).then_some(pid)
}

/// Control plane pids the supervisor recorded that still run the control plane.
fn recorded_pids(dir: &Path) -> Vec<Pid> {
    std::fs::read_to_string(dir.join("processes"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split("pid ").nth(1)?.split_whitespace().next()?.parse().ok())
        .map(Pid::from_raw)
        .filter(|pid| runs(*pid, "torcus-controlplane") || runs(*pid, "/realnode/bin/"))
        .collect()
}

/// Whether process `pid` runs a program whose path contains `program`.
fn runs(pid: Pid, program: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .and_then(|cmdline| cmdline.split(|b| *b == 0).next().map(|argv0| String::from_utf8_lossy(argv0).into_owned()))
        .is_some_and(|argv0| argv0.contains(program))
}

fn alive(pid: Pid) -> bool {
    // Signal 0 checks existence; a zombie child of ours still counts as gone
    // once reaped, which `up` never leaves around (it exits).
    kill(pid, None).is_ok() && !is_zombie(pid)
}

fn is_zombie(pid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next().map(|rest| rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// The supervisor of `up --real-node`: the node's network, the control
/// plane on its host end and the real node, with the images of
/// `scripts/build-images.sh` imported; no operator (the Helm chart installs
/// it, as a pod).
async fn supervise_real_node(dir: &Path) -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn,kube_client::client::builder=off".into()),
        )
        .try_init();
    // From the start: a `down` (or an `up` that timed out) while the node
    // starts stops it cleanly, instead of killing this process and
    // orphaning the daemons.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let images = crate::realnode::images()?;
    let starting = async {
        // Takes the machine's real-node lock and cleans up after a node
        // whose sandbox was killed; only then is the old state removed.
        let network = crate::realnode::Network::create(&dir.join("realnode"))?;
        for stale in ["etcd", "pki", "apiserver", "realnode"] {
            let _ = std::fs::remove_dir_all(dir.join(stale));
        }
        let cp = ControlPlane::start_on(dir, network.host_address()).await?;
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin)?;
        let _ = std::fs::remove_file(bin.join("kubectl"));
        std::os::unix::fs::symlink(controlplane::binary()?, bin.join("kubectl"))?;
        let node = crate::realnode::RealNode::start(&dir.join("realnode"), &cp, network, &images).await?;
        anyhow::Ok((cp, node))
    };
    // Dropping a half-started node or control plane stops what it started.
    let (mut cp, mut node) = tokio::select! {
        started = starting => started?,
        _ = term.recv() => {
            tracing::info!("stopped while starting");
            return Ok(());
        }
    };
    let processes: String =
        cp.pids().into_iter().chain(node.pids()).map(|(name, pid)| format!("{name}: pid {pid}\n")).collect();
    std::fs::write(dir.join("processes"), processes)?;
    std::fs::write(dir.join("ready"), "")?;
    tracing::info!(server = cp.server(), node = crate::pki::REAL_NODE, "sandbox ready");
    let mut watchdog = tokio::time::interval(Duration::from_secs(2));
    let outcome = loop {
        tokio::select! {
            _ = term.recv() => break Ok(()),
            _ = tokio::signal::ctrl_c() => break Ok(()),
            _ = watchdog.tick() => if let Err(e) = cp.check_running().and_then(|()| node.check_running()) { break Err(e) },
        }
    };
    tracing::info!("stopping the sandbox");
    node.stop();
    cp.stop();
    outcome
}
