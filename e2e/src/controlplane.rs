//! A real Kubernetes control plane on loopback: upstream etcd,
//! kube-apiserver and kube-controller-manager from the binary
//! `e2e/controlplane/` builds, on free 127.0.0.1 ports with fresh
//! certificates, plus a kubeconfig for clients and kubectl. For the sandbox's
//! real node the API server listens on the host end of the node's veth
//! instead ([`ControlPlane::start_on`]), where the node's kubelet and pods
//! reach it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::pki;
use crate::process::{Process, free_port};

/// Controllers the tests and the sandbox need: StatefulSets make pods, the
/// garbage collector follows owner references, the disruption controller
/// keeps PodDisruptionBudget status, the PVC protection controller lets a
/// claim no pod uses be deleted, and the rest make namespaces usable.
const CONTROLLERS: &str = "statefulset-controller,garbage-collector-controller,namespace-controller,\
serviceaccount-controller,serviceaccount-token-controller,disruption-controller,endpointslice-controller,\
endpoints-controller,root-ca-certificate-publisher-controller,pod-garbage-collector-controller,\
persistentvolumeclaim-protection-controller";

/// What a real node needs besides: the node lifecycle controller takes the
/// `not-ready` taint off a Ready node, and the PV binder binds the node
/// StatefulSets' claims to the sandbox's local volumes, and the Helm chart
/// installs the operator as a Deployment.
const REAL_NODE_CONTROLLERS: &str =
    "node-lifecycle-controller,persistentvolume-binder-controller,deployment-controller,replicaset-controller";

/// A running local control plane. Dropping it stops every process.
#[derive(Debug)]
pub struct ControlPlane {
    dir: PathBuf,
    binary: PathBuf,
    kubeconfig: PathBuf,
    server: String,
    // Dropped in reverse start order: controller manager, API server, etcd.
    processes: Vec<Process>,
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and kube-controller-manager with their
    /// state in `dir`, and returns once the API server is ready.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        Self::start_on(dir, IpAddr::from([127, 0, 0, 1])).await
    }

    /// [`Self::start`] with the API server on `address` (its advertised
    /// address too, so the `kubernetes` Service's endpoint). An address other
    /// than loopback is for a real node: the controllers it needs run too.
    pub async fn start_on(dir: &Path, address: IpAddr) -> anyhow::Result<Self> {
        let binary = binary()?;
        std::fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        let pki = pki::write(&dir.join("pki"), address)?;
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs)?;

        let etcd_port = free_port()?;
        let etcd_peer_port = free_port()?;
        let api_port = free_port()?;
        let server = format!("https://{}", std::net::SocketAddr::new(address, api_port));
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            kubeconfig_yaml(&server, &pki.ca_pem, "torcus-admin", &pki.admin_crt, &pki.admin_key),
        )?;
        if !address.is_loopback() {
            let node = kubeconfig_yaml(&server, &pki.ca_pem, pki::REAL_NODE, &pki.node_crt, &pki.node_key);
            std::fs::write(dir.join("node.kubeconfig"), node)?;
        }

        let mut processes = Vec::new();
        let component = |name: &str| {
            let mut c = Command::new(&binary);
            c.arg(name).env("TORCUS_DIE_WITH_PARENT", "1");
            c
        };

        let mut etcd = component("etcd");
        let client_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer_port}");
        etcd.args(["--name", "torcus", "--log-level", "warn"])
            .arg(format!("--data-dir={}", dir.join("etcd").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=torcus={peer_url}"))
            // The data is throwaway; fsync only costs time.
            .arg("--unsafe-no-fsync");
        processes.push(Process::spawn("etcd", etcd, &logs.join("etcd.log"))?);

        let mut apiserver = component("kube-apiserver");
        apiserver
            .arg(format!("--etcd-servers={client_url}"))
            .arg(format!("--bind-address={address}"))
            .arg(format!("--advertise-address={address}"))
            // A real kubelet (logs, exec) is reached at its node's address,
            // with a client certificate.
            .arg("--kubelet-preferred-address-types=InternalIP")
            .arg(format!("--kubelet-client-certificate={}", pki.kubelet_client_crt.display()))
            .arg(format!("--kubelet-client-key={}", pki.kubelet_client_key.display()))
            .arg(format!("--secure-port={api_port}"))
            .arg(format!("--tls-cert-file={}", pki.server_crt.display()))
            .arg(format!("--tls-private-key-file={}", pki.server_key.display()))
            .arg(format!("--client-ca-file={}", pki.ca_crt.display()))
            .arg(format!("--service-account-key-file={}", pki.sa_pub.display()))
            .arg(format!("--service-account-signing-key-file={}", pki.sa_key.display()))
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            // Node first, as kubeadm sets it: a real node's kubelet reads
            // only what its own pods use.
            .arg("--authorization-mode=Node,RBAC")
            .arg("--enable-admission-plugins=NodeRestriction")
            .arg(format!("--cert-dir={}", dir.join("apiserver").display()))
            .args(["--enable-priority-and-fairness=false", "--profiling=false", "--v=0"]);
        processes.push(Process::spawn("kube-apiserver", apiserver, &logs.join("kube-apiserver.log"))?);

        let mut this =
            Self { dir: dir.clone(), binary: binary.clone(), kubeconfig: kubeconfig.clone(), server, processes };
        this.wait_ready(Duration::from_secs(120)).await?;

        let mut manager = component("kube-controller-manager");
        manager
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(if address.is_loopback() {
                format!("--controllers={CONTROLLERS}")
            } else {
                format!("--controllers={CONTROLLERS},{REAL_NODE_CONTROLLERS}")
            })
            .args(["--leader-elect=false", "--use-service-account-credentials=false"])
            .arg(format!("--service-account-private-key-file={}", pki.sa_key.display()))
            .arg(format!("--root-ca-file={}", pki.ca_crt.display()))
            .args(["--bind-address=127.0.0.1", "--secure-port=0", "--v=0"]);
        this.processes.push(Process::spawn(
            "kube-controller-manager",
            manager,
            &logs.join("kube-controller-manager.log"),
        )?);
        Ok(this)
    }

    /// Path of the admin kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// URL of the API server.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Folder holding state, PKI and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Process ids of the control plane, for `status` and leak checks.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.processes.iter().map(|p| (p.name().to_owned(), p.id())).collect()
    }

    /// Fails if a control plane process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        self.processes.iter_mut().try_for_each(Process::check_running)
    }

    /// An admin client.
    pub async fn client(&self) -> anyhow::Result<Client> {
        client_for(&self.kubeconfig).await
    }

    /// `kubectl --kubeconfig <this>`, ready for more arguments.
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("kubectl").arg(format!("--kubeconfig={}", self.kubeconfig.display()));
        c
    }

    /// Applies the CRDs from `crds/yaml/` and waits until they are served.
    pub async fn install_crds(&self) -> anyhow::Result<()> {
        let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/yaml");
        let out = self.kubectl().args(["apply", "--server-side", "-f"]).arg(&crds).output()?;
        anyhow::ensure!(
            out.status.success(),
            "kubectl apply of the CRDs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = self
            .kubectl()
            .args([
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd/mpcclusters.mpc.torcus.io",
                "crd/signingrequests.mpc.torcus.io",
            ])
            .output()?;
        anyhow::ensure!(out.status.success(), "CRDs not established: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    }

    /// Stops every process, newest first.
    pub fn stop(&mut self) {
        while let Some(mut p) = self.processes.pop() {
            p.stop(Duration::from_secs(10));
        }
    }

    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let client = self.client().await?;
        loop {
            self.check_running()?;
            let ready = client.request_text(http::Request::get("/readyz").body(Vec::new())?).await;
            if matches!(ready.as_deref(), Ok("ok")) {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "kube-apiserver not ready after {timeout:?}: {ready:?}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A client from a kubeconfig file.
pub async fn client_for(kubeconfig: &Path) -> anyhow::Result<Client> {
    let config =
        kube::Config::from_custom_kubeconfig(Kubeconfig::read_from(kubeconfig)?, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// The control plane binary: `TORCUS_CONTROLPLANE_BIN` if set, otherwise
/// built (or found up to date) by `e2e/controlplane/build.sh`.
pub fn binary() -> anyhow::Result<PathBuf> {
    crate::process::go_tool("TORCUS_CONTROLPLANE_BIN", "controlplane/build.sh")
}

fn kubeconfig_yaml(server: &str, ca: &str, user: &str, crt: &str, key: &str) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: torcus
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    client-certificate-data: {crt}
    client-key-data: {key}
contexts:
- name: torcus
  context:
    cluster: torcus
    user: {user}
current-context: torcus
",
        ca = b64(ca),
        crt = b64(crt),
        key = b64(key),
    )
}
