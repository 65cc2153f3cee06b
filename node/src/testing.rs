//! Test support: a cluster of real `torcus-node` processes on 127.0.0.1,
//! with its own CA, certificates, grant key and (for the http and hybrid
//! transports) an in-process relay; grants are made and signed the way the
//! operator does. Shared by the process tests and the benchmark.

use std::net::{IpAddr, Ipv4Addr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use torcus_certs::{CertificateAuthority, Identity, OffsetDateTime, Role};
use torcus_contract::api::{GrantRequest, PresignatureChoice};
use torcus_contract::{ClusterConfig, Grant, GrantKind, HashAlgorithm, Peer, SignMessage, SignedGrant};

#[derive(Debug)]
pub struct Cluster {
    _relay: Option<RelayServer>,
    /// The nodes' network namespaces, for clusters made with
    /// [`Cluster::in_netlab`]; `None` on loopback. Dropped after the nodes.
    pub lab: Option<crate::netlab::NetLab>,
    /// Each node's address: 127.0.0.1, or its own in the lab.
    hosts: Vec<IpAddr>,
    binary: PathBuf,
    dir: tempfile::TempDir,
    /// The configuration every node reads.
    pub config: ClusterConfig,
    /// The operator's grant signing key.
    pub grant_key: SigningKey,
    nodes: Vec<Option<Child>>,
    /// Whether nodes start with the aux info fixture (keygen without the
    /// aux info protocol) or generate aux info together.
    aux_fixture: bool,
    /// The nodes' plain HTTP ports (`/metrics`, `/healthz`, `/readyz`).
    metrics_ports: Vec<u16>,
    /// HTTPS client for the nodes' APIs, with the operator's certificate.
    pub http: reqwest::Client,
    /// The cluster CA, which also issues the certificates of a test's own clients.
    pub ca: CertificateAuthority,
    /// Starts the nodes some other way than as local processes of
    /// `binary` with the test fixtures (see [`Cluster::launched_by`]).
    launcher: Option<Launcher>,
}

/// What a node is started with, as its pod has it: its files (what the
/// pod's volumes hold) and its network namespace and address. The node is
/// configured as the pod configures it: it listens on its address on the
/// ports every pod uses, and takes everything else from its environment.
#[derive(Debug)]
pub struct NodeLaunch<'a> {
    /// The party index.
    pub index: u16,
    /// The folder holding `cluster.json` (the config volume).
    pub config_dir: &'a Path,
    /// The node's TLS folder (the `tls` volume).
    pub tls_dir: &'a Path,
    /// The node's data folder (its volume claim).
    pub data_dir: &'a Path,
    /// The node's network namespace (`/run/netns/…`): the pod's network.
    pub network_namespace: PathBuf,
    /// The node's address in it: the pod IP.
    pub pod_ip: IpAddr,
    /// Where the node's output goes.
    pub log: &'a Path,
}

/// Makes the command that runs a node, for [`Cluster::launched_by`]: a
/// container runtime running the node's image, for example. The cluster
/// kills the command's process when it is dropped or told to kill the node
/// ([`Cluster::kill`]); a runtime whose container outlives its process
/// (`runc run` does, when SIGKILLed) leaves stopping the container to the
/// launcher's owner, so such a cluster is not for tests that kill nodes.
pub struct Launcher(pub Box<dyn Fn(&NodeLaunch<'_>) -> Command + Send + Sync>);

impl std::fmt::Debug for Launcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Launcher")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.nodes.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A port of 127.0.0.1 free now for both TCP and UDP, from below the
/// kernel's ephemeral range (32768 and up unless configured otherwise).
/// A port from `bind(0)`, released for the node to bind a moment later,
/// can be taken in between by any process's next outgoing connection (a
/// 16-node cluster lost a node that way in CI); the kernel never hands out
/// ports from here, so only another harness could, and each test process
/// starts at its own offset.
fn free_port() -> u16 {
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let offset = std::process::id().wrapping_mul(2_654_435_761) % SPAN;
    for _ in 0..SPAN {
        let step = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = u16::try_from(FIRST + (offset + step) % SPAN).expect("below 32000");
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
            && UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free port from {FIRST} to {}", FIRST + SPAN)
}

/// A certificate of `ca` for party `i` of `vault/demo` (names `node-<i>`,
/// 127.0.0.1 and `host`), valid for an hour.
fn node_leaf(ca: &CertificateAuthority, i: u16, host: IpAddr) -> torcus_certs::IssuedCertificate {
    let identity = Identity { namespace: "vault".into(), cluster: "demo".into(), role: Role::Node { party_index: i } };
    let mut ips = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
    if !host.is_loopback() {
        ips.push(host);
    }
    ca.issue(&identity, &[format!("node-{i}")], &ips, torcus_certs::Duration::hours(1), OffsetDateTime::now_utc())
        .expect("the test CA issues a node certificate")
}

/// Replaces file `path` with `bytes` at once (written beside it, renamed
/// over it), as the kubelet swaps a Secret volume's files.
fn replace_file(path: &Path, bytes: &[u8]) {
    let aside = path.with_extension("new");
    std::fs::write(&aside, bytes).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

/// Writes node `i`'s TLS folder as the operator's Secret mounts it: a
/// certificate of `ca` for party `i` of `vault/demo` (names `node-<i>` and
/// 127.0.0.1), its key, the CA, and the node's identity and seal keys.
pub fn write_node_tls(tls: &Path, ca: &CertificateAuthority, i: u16, identity_key: &SigningKey, seal_seed: &[u8; 32]) {
    write_node_tls_for(tls, ca, i, IpAddr::V4(Ipv4Addr::LOCALHOST), identity_key, seal_seed);
}

/// [`write_node_tls`] for a node reached at `host`.
fn write_node_tls_for(
    tls: &Path,
    ca: &CertificateAuthority,
    i: u16,
    host: IpAddr,
    identity_key: &SigningKey,
    seal_seed: &[u8; 32],
) {
    std::fs::create_dir_all(tls).unwrap();
    let cert = node_leaf(ca, i, host);
    std::fs::write(tls.join("tls.crt"), &cert.cert_pem).unwrap();
    std::fs::write(tls.join("tls.key"), cert.key_pem.expose()).unwrap();
    std::fs::write(tls.join("ca.crt"), ca.cert_pem()).unwrap();
    std::fs::write(tls.join("identity.key"), hex::encode(identity_key.to_bytes())).unwrap();
    std::fs::write(tls.join("seal.key"), hex::encode(seal_seed)).unwrap();
}

/// The operator's relay, served on a loopback port until dropped.
#[derive(Debug)]
pub struct RelayServer {
    addr: std::net::SocketAddr,
    /// The registry of the relay's metrics.
    pub registry: prometheus::Registry,
    _stop: tokio_util::sync::DropGuard,
}

impl RelayServer {
    /// A relay with `limits` that takes any request's party header.
    pub async fn start(limits: torcus_operator::relay::RelayLimits) -> Self {
        Self::start_with(limits, |relay| relay).await
    }

    /// A relay with `limits`, made what it is by `build` (signed requests
    /// only, known clusters only).
    pub async fn start_with(
        limits: torcus_operator::relay::RelayLimits,
        build: impl FnOnce(torcus_operator::relay::Relay) -> torcus_operator::relay::Relay,
    ) -> Self {
        Self::start_on(IpAddr::V4(Ipv4Addr::LOCALHOST), limits, build).await
    }

    /// [`RelayServer::start_with`], listening on `ip`.
    pub async fn start_on(
        ip: IpAddr,
        limits: torcus_operator::relay::RelayLimits,
        build: impl FnOnce(torcus_operator::relay::Relay) -> torcus_operator::relay::Relay,
    ) -> Self {
        let registry = prometheus::Registry::new();
        let relay = std::sync::Arc::new(build(torcus_operator::relay::Relay::new(&registry, limits).unwrap()));
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.expect("a free port on the relay's address");
        let addr = listener.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let shutdown = stop.clone();
        let app = torcus_operator::relay::relay_router(std::sync::Arc::clone(&relay));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    shutdown.cancelled().await;
                    relay.close();
                })
                .await;
        });
        Self { addr, registry, _stop: stop.drop_guard() }
    }

    /// The relay's base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// One sample of the relay's metrics, `name{labels}` as the text format
    /// writes it; 0 when absent.
    pub fn sample(&self, name_and_labels: &str) -> f64 {
        samples(&self.registry).get(name_and_labels).copied().unwrap_or(0.0)
    }

    /// The relay's metric samples that are not zero.
    pub fn nonzero_samples(&self) -> std::collections::BTreeMap<String, f64> {
        samples(&self.registry).into_iter().filter(|(_, v)| *v != 0.0).collect()
    }
}

/// Every sample in `registry`, by `name{labels}` as the text format writes it.
pub fn samples(registry: &prometheus::Registry) -> std::collections::BTreeMap<String, f64> {
    let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather()).unwrap();
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter_map(|(name, value)| Some((name.to_owned(), value.parse().ok()?)))
        .collect()
}

/// The value of sample `name_and_labels` (as the text format writes it) in
/// a node's metrics text; 0 when absent.
pub fn sample(metrics: &str, name_and_labels: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .map_or(0.0, |value| value.trim().parse().expect("a number after the sample's name"))
}

/// The pregenerated primes fixture.
pub fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/primes.json")
}

/// The aux info fixture (`engine::AuxFixture`) for clusters of 3, 5, 7 and 16.
pub fn aux_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/aux-info.json")
}

/// The id under which nodes started with the aux info fixture hold their
/// part of it, for a cluster of `n` (the same on every node).
pub fn fixture_aux_id(n: u16) -> String {
    let json = std::fs::read(aux_fixture()).expect("the checked-in aux info fixture");
    crate::engine::fixture_aux_info(&json, n, 0).unwrap_or_else(|e| panic!("aux fixture for {n}: {e}")).0
}

/// Party `me`'s aux info for a cluster of `n` from the aux info fixture.
pub fn fixture_aux(n: u16, me: u16) -> crate::engine::Aux {
    let json = std::fs::read(aux_fixture()).unwrap();
    crate::engine::fixture_aux_info(&json, n, me).unwrap().1
}

impl Cluster {
    /// Starts `n` nodes of `binary` with threshold `t` over `transport`,
    /// presignature pools off (every signature runs the full protocol), the
    /// nodes' aux info from the fixture (keygen without the aux info
    /// protocol).
    pub async fn new(binary: &Path, n: u16, t: u16, transport: &str) -> Self {
        Self::with_presignatures(binary, n, t, transport, 0).await
    }

    /// Like [`Cluster::new`], with nodes that generate their aux info
    /// together in their first keygen (from the primes fixture), as
    /// product nodes do.
    pub async fn generating_aux(binary: &Path, n: u16, t: u16, transport: &str) -> Self {
        Self::build(binary, n, t, transport, (0, vec![vec![]]), false, None).await
    }

    /// Like [`Cluster::generating_aux`], with each node started by
    /// `launcher` with no test fixture and no test flag (a product build,
    /// which generates its own safe primes), in a network namespace of its
    /// own (see [`crate::netlab`]) where it listens on the ports every pod
    /// uses. `binary` is only named in messages. `None` where namespaces
    /// cannot be made and CI did not require them.
    pub async fn launched_by(binary: &Path, n: u16, t: u16, transport: &str, launcher: Launcher) -> Option<Self> {
        // No delay is added to these nodes: the lab's delay program is not needed.
        let lab = crate::netlab::NetLab::create(n, Path::new("/nonexistent/torcus-netem"))?;
        Some(Self::build_with(binary, n, t, transport, (0, vec![vec![]]), false, Some(lab), Some(launcher)).await)
    }

    /// Like [`Cluster::new`], each node in a network namespace of its own
    /// (see [`crate::netlab`]), so that a test can delay, drop and cut its
    /// packets; `None` where namespaces cannot be made and CI did not
    /// require them.
    pub async fn in_netlab(binary: &Path, n: u16, t: u16, transport: &str) -> Option<Self> {
        let netem = binary.with_file_name("torcus-netem");
        let lab = crate::netlab::NetLab::create(n, &netem)?;
        Some(Self::build(binary, n, t, transport, (0, vec![vec![]]), true, Some(lab)).await)
    }

    /// Like [`Cluster::new`], with pools of `pool_size` presignatures per
    /// key and signer set filled in the background, for the keys themselves.
    pub async fn with_presignatures(binary: &Path, n: u16, t: u16, transport: &str, pool_size: u16) -> Self {
        Self::with_presignature_paths(binary, n, t, transport, pool_size, vec![vec![]]).await
    }

    /// Like [`Cluster::with_presignatures`], with pools for each of `paths`.
    pub async fn with_presignature_paths(
        binary: &Path,
        n: u16,
        t: u16,
        transport: &str,
        pool_size: u16,
        paths: Vec<Vec<u32>>,
    ) -> Self {
        Self::build(binary, n, t, transport, (pool_size, paths), true, None).await
    }

    async fn build(
        binary: &Path,
        n: u16,
        t: u16,
        transport: &str,
        pool: (u16, Vec<Vec<u32>>),
        aux_fixture: bool,
        lab: Option<crate::netlab::NetLab>,
    ) -> Self {
        Self::build_with(binary, n, t, transport, pool, aux_fixture, lab, None).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn build_with(
        binary: &Path,
        n: u16,
        t: u16,
        transport: &str,
        (pool_size, paths): (u16, Vec<Vec<u32>>),
        aux_fixture: bool,
        lab: Option<crate::netlab::NetLab>,
        launcher: Option<Launcher>,
    ) -> Self {
        let hosts: Vec<IpAddr> =
            (0..n).map(|i| lab.as_ref().map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |lab| lab.host(i))).collect();
        let gateway = lab.as_ref().map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |lab| lab.gateway());
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::generate("test CA", torcus_certs::Duration::days(1), OffsetDateTime::now_utc())
            .unwrap();
        let grant_key = SigningKey::from_bytes(&[42; 32]);
        let mut config = ClusterConfig::sample("demo", "vault", n, t);
        config.transport = transport.to_owned();
        config.presignature_pool_size = pool_size;
        config.presignature_paths = paths;
        config.grant_public_key = hex::encode(grant_key.verifying_key().as_bytes());
        // The relay the operator serves in http and hybrid mode, here in-process.
        let mut relay = None;
        if transport == "http" || transport == "hybrid" {
            // As the operator serves it: requests signed by a node of this cluster only.
            let bundle = ca.cert_pem().to_owned();
            let server = RelayServer::start_on(gateway, Default::default(), |relay| {
                relay.with_signed_requests(move |cluster| (cluster == "vault/demo").then(|| bundle.clone()))
            })
            .await;
            config.registry_url = Some(server.url());
            relay = Some(server);
        }
        // Each launched node has an address of its own, and the pod's ports.
        let pod_ports = launcher.is_some();
        let port = |fixed: u16| if pod_ports { fixed } else { free_port() };
        config.peers = (0..n)
            .map(|index| Peer {
                index,
                host: hosts[usize::from(index)].to_string(),
                p2p_port: port(torcus_contract::P2P_PORT),
                http_port: port(torcus_contract::HTTP_PORT),
                identity_key: None,
                seal_key: None,
                // As the operator publishes it: the node checks its store key against it.
                store_key_check: Some(torcus_contract::store_key_check(&[index as u8 + 1; 32])),
            })
            .collect();
        // TCP frames are signed with a per-node Ed25519 identity.
        let identities: Vec<SigningKey> = (0..n).map(|i| SigningKey::from_bytes(&[100 + i as u8; 32])).collect();
        if transport == "tcp" {
            for (peer, key) in config.peers.iter_mut().zip(&identities) {
                peer.identity_key = Some(hex::encode(key.verifying_key().as_bytes()));
            }
        }
        // Every mode but quic seals messages end to end with per-node X25519 keys.
        let seal_seeds: Vec<[u8; 32]> = (0..n).map(|i| [200 + i as u8; 32]).collect();
        if transport != "quic" {
            for (peer, seed) in config.peers.iter_mut().zip(&seal_seeds) {
                peer.seal_key = Some(hex::encode(crate::transport::seal::public_key(seed)));
            }
        }
        std::fs::write(dir.path().join("cluster.json"), serde_json::to_vec(&config).unwrap()).unwrap();
        for i in 0..n {
            let tls = dir.path().join(format!("tls-{i}"));
            write_node_tls_for(
                &tls,
                &ca,
                i,
                hosts[usize::from(i)],
                &identities[usize::from(i)],
                &seal_seeds[usize::from(i)],
            );
            std::fs::write(tls.join("store.key"), hex::encode([i as u8 + 1; 32])).unwrap();
        }
        let operator = Identity { namespace: "vault".into(), cluster: "demo".into(), role: Role::Operator };
        let http = api_client(&ca, &operator);
        let mut cluster = Self {
            _relay: relay,
            lab,
            hosts,
            binary: binary.to_owned(),
            dir,
            config,
            grant_key,
            nodes: (0..n).map(|_| None).collect(),
            aux_fixture,
            metrics_ports: (0..n).map(|_| port(torcus_contract::METRICS_PORT)).collect(),
            http,
            ca,
            launcher,
        };
        for i in 0..n {
            cluster.start(i);
        }
        cluster
    }

    /// Starts (or restarts) node `i`.
    pub fn start(&mut self, i: u16) {
        self.start_with_args(i, &[]);
    }

    /// Starts (or restarts) node `i` with `args` added to its command line
    /// (test-only flags such as `--test-clock-offset-secs`).
    pub fn start_with_args(&mut self, i: u16, args: &[&str]) {
        let d = self.dir.path();
        if let Some(launcher) = &self.launcher {
            assert!(args.is_empty(), "a launched node takes no test flags: {args:?}");
            let (config_dir, tls_dir, data_dir) =
                (d.join("config"), d.join(format!("tls-{i}")), d.join(format!("data-{i}")));
            for dir in [&config_dir, &data_dir] {
                std::fs::create_dir_all(dir).unwrap();
            }
            std::fs::copy(d.join("cluster.json"), config_dir.join("cluster.json")).unwrap();
            let lab = self.lab.as_ref().expect("launched nodes run in the lab");
            let launch = NodeLaunch {
                index: i,
                config_dir: &config_dir,
                tls_dir: &tls_dir,
                data_dir: &data_dir,
                network_namespace: Path::new("/run/netns").join(lab.namespace(i)),
                pod_ip: self.hosts[usize::from(i)],
                log: &d.join(format!("node-{i}.log")),
            };
            let child = (launcher.0)(&launch).stdin(Stdio::null()).spawn().unwrap();
            self.nodes[usize::from(i)] = Some(child);
            return;
        }
        let log = std::fs::File::create(d.join(format!("node-{i}.log"))).unwrap();
        let mut command = match &self.lab {
            Some(lab) => lab.command(i, &self.binary),
            None => Command::new(&self.binary),
        };
        command.args(args);
        if self.aux_fixture {
            command.arg(format!("--test-aux-fixture={}", aux_fixture().display()));
        }
        let child = command
            .arg("serve")
            .arg(format!("--party-index={i}"))
            .arg(format!("--config={}", d.join("cluster.json").display()))
            .arg(format!("--tls-dir={}", d.join(format!("tls-{i}")).display()))
            .arg(format!("--data-dir={}", d.join(format!("data-{i}")).display()))
            .arg(format!("--listen-ip={}", self.hosts[usize::from(i)]))
            .arg(format!("--metrics-port={}", self.metrics_ports[usize::from(i)]))
            .arg(format!("--test-primes-fixture={}", fixture().display()))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.nodes[usize::from(i)] = Some(child);
    }

    /// Writes `bytes` as share `name` into node `i`'s share store, sealed
    /// with its store key, as a release before this one would have left it.
    pub fn put_share(&self, i: u16, name: &str, bytes: &[u8]) {
        self.store(i).put(name, bytes).unwrap();
    }

    /// Reads share `name` back from node `i`'s share store.
    pub fn get_share(&self, i: u16, name: &str) -> Option<Vec<u8>> {
        self.store(i).get(name).unwrap().map(|bytes| bytes.to_vec())
    }

    fn store(&self, i: u16) -> crate::store::ShareStore {
        let d = self.dir.path();
        let key = crate::store::StoreKey::from_file(d.join(format!("tls-{i}/store.key"))).unwrap();
        crate::store::ShareStore::open(d.join(format!("data-{i}/shares")), key).unwrap()
    }

    /// Waits up to `within` for node `i` to exit; its exit status, or `None`
    /// if it still runs.
    pub fn wait_exit(&mut self, i: u16, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        let child = self.nodes[usize::from(i)].as_mut()?;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.nodes[usize::from(i)] = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Process id of node `i` (panics if it is not running).
    pub fn pid(&self, i: u16) -> u32 {
        self.nodes[usize::from(i)].as_ref().expect("node is running").id()
    }

    /// Kills node `i`.
    pub fn kill(&mut self, i: u16) {
        if let Some(mut child) = self.nodes[usize::from(i)].take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// The CA the cluster started with.
    pub fn ca(&self) -> &CertificateAuthority {
        &self.ca
    }

    /// Rewrites every node's trust bundle (`ca.crt`) with `bundle` and, with
    /// `leaves_from`, its certificate and key with a new leaf of that CA:
    /// what the operator's renewal and CA roll do to the mounted Secrets.
    pub fn rewrite_tls(&self, bundle: &str, leaves_from: Option<&CertificateAuthority>) {
        for i in 0..self.config.nodes {
            let tls = self.tls_dir(i);
            if let Some(ca) = leaves_from {
                let cert = node_leaf(ca, i, self.host(i));
                replace_file(&tls.join("tls.key"), cert.key_pem.expose().as_bytes());
                replace_file(&tls.join("tls.crt"), cert.cert_pem.as_bytes());
            }
            replace_file(&tls.join("ca.crt"), bundle.as_bytes());
        }
    }

    /// From now on the test calls the nodes as the operator with a client
    /// certificate of `ca`, trusting the node certificates of the CAs in
    /// `bundle` (as the operator does through a CA roll).
    pub fn call_as_operator(&mut self, ca: &CertificateAuthority, bundle: &str) {
        let operator = Identity { namespace: "vault".into(), cluster: "demo".into(), role: Role::Operator };
        self.http = api_client_trusting(ca, &operator, bundle);
    }

    /// The relay the harness serves for the http and hybrid transports.
    pub fn relay(&self) -> Option<&RelayServer> {
        self._relay.as_ref()
    }

    /// Node `i`'s address.
    pub fn host(&self, i: u16) -> IpAddr {
        self.hosts[usize::from(i)]
    }

    /// Node `i`'s TLS folder (`tls.crt`, `tls.key`, `ca.crt`, its other keys).
    pub fn tls_dir(&self, i: u16) -> PathBuf {
        self.dir.path().join(format!("tls-{i}"))
    }

    /// URL of `path` on node `i`'s API (mutual TLS).
    pub fn url(&self, i: u16, path: &str) -> String {
        format!("https://{}:{}{path}", self.hosts[usize::from(i)], self.config.peers[usize::from(i)].http_port)
    }

    /// URL of `path` on node `i`'s plain HTTP port (`/metrics`, `/healthz`, `/readyz`).
    pub fn plain_url(&self, i: u16, path: &str) -> String {
        format!("http://{}:{}{path}", self.hosts[usize::from(i)], self.metrics_ports[usize::from(i)])
    }

    /// Waits until every running node is ready; fails at once, with its log,
    /// if one has exited.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        for i in (0..self.config.nodes).filter(|i| self.nodes[usize::from(*i)].is_some()) {
            loop {
                let ok =
                    self.http.get(self.plain_url(i, "/readyz")).send().await.is_ok_and(|r| r.status().is_success());
                if ok {
                    break;
                }
                assert!(!self.exited(i), "node {i} exited before it was ready:\n{}", self.log(i));
                assert!(Instant::now() < deadline, "node {i} not ready:\n{}", self.log(i));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Whether node `i`'s process has exited and not been reaped (a zombie,
    /// as `/proc` shows it); `wait_exit` reaps it.
    fn exited(&self, i: u16) -> bool {
        let Some(child) = &self.nodes[usize::from(i)] else { return true };
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap_or_default();
        // `pid (comm) state ...`; comm may hold spaces and parentheses.
        stat.rsplit_once(") ").is_none_or(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X'))
    }

    /// Node `i`'s log.
    pub fn log(&self, i: u16) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    /// Where node `i` writes its log.
    pub fn log_path(&self, i: u16) -> PathBuf {
        self.dir.path().join(format!("node-{i}.log"))
    }

    /// What a failed session leaves to read: the whole log of node `first`
    /// (its initiator) and the last lines of every other node's, since the
    /// cause is often on a participant.
    pub fn logs_after_failure(&self, first: u16) -> String {
        let mut out = format!("--- node {first} ---\n{}", self.log(first));
        for i in (0..self.config.nodes).filter(|i| *i != first) {
            let log = self.log(i);
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(12)..].join("\n");
            out.push_str(&format!("--- node {i} (last lines) ---\n{tail}\n"));
        }
        out
    }

    /// A grant signed with the cluster's grant key.
    pub fn grant(&self, kind: GrantKind, participants: Vec<u16>) -> SignedGrant {
        let now = torcus_contract::unix_now();
        let grant = Grant {
            version: torcus_contract::GRANT_VERSION,
            grant_id: Grant::new_id(),
            namespace: "vault".into(),
            cluster: "demo".into(),
            kind,
            participants,
            nonce: Grant::new_nonce(),
            issued_at: now,
            expires_at: now + 120,
        };
        torcus_contract::sign(grant, &self.grant_key)
    }

    /// POSTs a grant to node `i`; returns status and JSON body.
    pub async fn post(&self, i: u16, path: &str, grant: &SignedGrant) -> (u16, serde_json::Value) {
        self.post_json(i, path, &serde_json::json!({ "grant": grant })).await
    }

    /// POSTs `body` to node `i`; returns status and JSON body.
    pub async fn post_json(&self, i: u16, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let response = self
            .http
            .post(self.url(i, path))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(body).unwrap())
            .timeout(Duration::from_secs(300))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.bytes().await.unwrap();
        (status, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null))
    }

    /// Runs keygen from the right initiator and returns the public key,
    /// once every running node holds its share (the initiator answers when
    /// its own part is done; the others store theirs a moment later).
    pub async fn keygen(&self, key: &str) -> String {
        let kind = match self.aux_fixture {
            // The nodes hold the fixture's aux info under its id; a keygen
            // that names it (as the operator names the aux info its nodes
            // report) runs only the keygen rounds. Naming none would have
            // the nodes generate new aux info first.
            true => GrantKind::Keygen {
                key: key.into(),
                aux_info: Some(fixture_aux_id(self.config.nodes)),
                supersedes: Vec::new(),
            },
            false => GrantKind::keygen(key),
        };
        self.keygen_of(key, kind).await
    }

    /// Runs the keygen of a FROST key of `scheme` (no aux info) and
    /// returns its public key, once every running node holds its share.
    pub async fn keygen_frost(&self, key: &str, scheme: torcus_contract::Scheme) -> String {
        self.keygen_of(key, GrantKind::FrostKeygen { key: key.into(), scheme, supersedes: Vec::new() }).await
    }

    async fn keygen_of(&self, key: &str, kind: GrantKind) -> String {
        let all: Vec<u16> = (0..self.config.nodes).collect();
        let grant = self.grant(kind, all);
        let (status, body) = self.post(grant.grant.initiator(), "/p2p/keygen", &grant).await;
        assert_eq!(status, 200, "{body}\n{}", self.logs_after_failure(grant.grant.initiator()));
        let public_key = body["publicKey"].as_str().expect("publicKey").to_owned();
        for i in (0..self.config.nodes).filter(|i| self.nodes[usize::from(*i)].is_some()) {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let response = self.http.get(self.url(i, "/p2p/keys")).send().await.expect("keys");
                let keys: serde_json::Value =
                    serde_json::from_slice(&response.bytes().await.expect("body")).expect("json");
                let held = keys
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|k| k["name"] == key && k["publicKey"] == public_key.as_str());
                if held {
                    break;
                }
                assert!(Instant::now() < deadline, "node {i} holds no share of {key}: {keys}\n{}", self.log(i));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        public_key
    }

    /// Signs `message` through the initiator of a fresh grant and checks
    /// the result.
    pub async fn sign(&self, key: &str, signers: Vec<u16>, message: SignMessage, path: Vec<u32>) -> serde_json::Value {
        self.sign_with(key, signers, message, path, PresignatureChoice::Any).await
    }

    /// Like [`Self::sign`], naming the presignature to use as the operator does.
    pub async fn sign_with(
        &self,
        key: &str,
        signers: Vec<u16>,
        message: SignMessage,
        path: Vec<u32>,
        presignature: PresignatureChoice,
    ) -> serde_json::Value {
        let digest = message.digest().expect("ECDSA signs a digest");
        let grant = self.grant(GrantKind::Sign { key: key.into(), message, derivation_path: path }, signers);
        let request = GrantRequest { grant, presignature };
        let body = serde_json::to_value(&request).unwrap();
        let initiator = request.grant.grant.initiator();
        let (status, body) = self.post_json(initiator, "/p2p/sign", &body).await;
        assert_eq!(status, 200, "{body}\n{}", self.logs_after_failure(initiator));
        verify(&body, &digest);
        body
    }
}

impl Cluster {
    /// Signs `message` with the FROST key `key` of `scheme` through the
    /// initiator of a fresh grant; returns the node's answer (a
    /// `FrostSignatureOut`), for the caller to verify independently.
    pub async fn sign_frost(
        &self,
        key: &str,
        scheme: torcus_contract::Scheme,
        signers: Vec<u16>,
        message: SignMessage,
        path: Vec<u32>,
    ) -> torcus_contract::api::FrostSignatureOut {
        let kind = GrantKind::FrostSign { key: key.into(), scheme, message, derivation_path: path };
        let grant = self.grant(kind, signers);
        let initiator = grant.grant.initiator();
        let (status, body) = self.post(initiator, "/p2p/sign", &grant).await;
        assert_eq!(status, 200, "{body}\n{}", self.logs_after_failure(initiator));
        assert_eq!(body["type"], "frostSignature", "{body}");
        serde_json::from_value(body).expect("a FROST signature")
    }

    /// Node `i`'s keys (`GET /p2p/keys`) and aux info (`GET /p2p/aux-info`), as JSON.
    pub async fn keys_and_aux(&self, i: u16) -> (Vec<serde_json::Value>, serde_json::Value) {
        let get = |path: &str| {
            let request = self.http.get(self.url(i, path));
            async move { serde_json::from_slice(&request.send().await.unwrap().bytes().await.unwrap()).unwrap() }
        };
        let keys: serde_json::Value = get("/p2p/keys").await;
        let aux = get(torcus_contract::api::AUX_INFO_PATH).await;
        (keys.as_array().cloned().unwrap_or_default(), aux)
    }

    /// Node `i`'s presignature pools (`GET /p2p/presignatures`).
    pub async fn presignatures(&self, i: u16) -> torcus_contract::api::PresignaturePools {
        let response = self.http.get(self.url(i, "/p2p/presignatures")).send().await.expect("presignatures");
        assert!(response.status().is_success(), "GET /p2p/presignatures: {}", response.status());
        serde_json::from_slice(&response.bytes().await.expect("body")).expect("presignature pools")
    }

    /// Node `i`'s pool of `key` itself for the signer set `set`, if it lists one.
    pub async fn pool(&self, i: u16, key: &str, set: &[u16]) -> Option<torcus_contract::api::PresignaturePool> {
        self.pool_at(i, key, &[], set).await
    }

    /// Node `i`'s pool of `key` at `path` for the signer set `set`, if it lists one.
    pub async fn pool_at(
        &self,
        i: u16,
        key: &str,
        path: &[u32],
        set: &[u16],
    ) -> Option<torcus_contract::api::PresignaturePool> {
        self.presignatures(i).await.pools.into_iter().find(|p| p.key == key && p.path == path && p.participants == set)
    }

    /// What node `i` says of `session` (`GET /p2p/session/{id}`); `None`
    /// when it has not seen it.
    pub async fn session_status(&self, i: u16, session: &[u8; 32]) -> Option<torcus_contract::api::SessionStatus> {
        let path = torcus_contract::api::session_path(session);
        let response = self.http.get(self.url(i, &path)).send().await.expect("session status");
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return None;
        }
        assert!(response.status().is_success(), "GET {path}: {}", response.status());
        Some(serde_json::from_slice(&response.bytes().await.expect("body")).expect("a session status"))
    }

    /// Node `i`'s `/metrics` text.
    pub async fn metrics(&self, i: u16) -> String {
        self.http.get(self.plain_url(i, "/metrics")).send().await.expect("metrics").text().await.expect("metrics text")
    }
}

/// `text` without terminal colour sequences (ESC [ ... letter), as node
/// logs written to a file have them.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A raw digest to sign (always the full protocol).
pub fn digest(digest: [u8; 32]) -> SignMessage {
    SignMessage::Digest { digest }
}

/// A SHA-256 payload to sign (presignatures may sign it).
pub fn payload(bytes: &[u8]) -> SignMessage {
    SignMessage::payload(HashAlgorithm::Sha256, bytes.to_vec())
}

/// Checks r‖s against the returned public key with libsecp256k1, and the
/// recovery id by recovering the key.
pub fn verify(body: &serde_json::Value, digest: &[u8; 32]) {
    let hex_field = |f: &str| hex::decode(body[f].as_str().unwrap_or_else(|| panic!("no {f} in {body}"))).unwrap();
    let mut compact = [0u8; 64];
    compact[..32].copy_from_slice(&hex_field("r"));
    compact[32..].copy_from_slice(&hex_field("s"));
    let key = secp256k1::PublicKey::from_slice(&hex_field("publicKey")).unwrap();
    let message = secp256k1::Message::from_digest(*digest);
    let secp = secp256k1::Secp256k1::new();
    secp.verify_ecdsa(message, &secp256k1::ecdsa::Signature::from_compact(&compact).unwrap(), &key).unwrap();
    let der = secp256k1::ecdsa::Signature::from_der(&hex_field("der")).unwrap();
    secp.verify_ecdsa(message, &der, &key).unwrap();
    let recid = secp256k1::ecdsa::RecoveryId::try_from(body["recoveryId"].as_i64().unwrap() as i32).unwrap();
    let recoverable = secp256k1::ecdsa::RecoverableSignature::from_compact(&compact, recid).unwrap();
    assert_eq!(secp.recover_ecdsa(message, &recoverable).unwrap(), key, "recovery id recovers the key");
}

/// An HTTPS client of the nodes' APIs that presents a certificate of `ca`
/// for `identity` and trusts only `ca` (nodes' certificates list 127.0.0.1).
pub fn api_client(ca: &CertificateAuthority, identity: &Identity) -> reqwest::Client {
    api_client_trusting(ca, identity, ca.cert_pem())
}

/// Like [`api_client`], trusting the CAs of `bundle` for the server.
pub fn api_client_trusting(ca: &CertificateAuthority, identity: &Identity, bundle: &str) -> reqwest::Client {
    let cert = ca.issue(identity, &[], &[], torcus_certs::Duration::hours(1), OffsetDateTime::now_utc()).unwrap();
    let tls = torcus_certs::client_config(&cert.cert_pem, &cert.key_pem, bundle, &[crate::tls_listener::ALPN]).unwrap();
    reqwest::Client::builder().use_preconfigured_tls((*tls).clone()).no_proxy().build().unwrap()
}

/// A router for each of `nodes` (a transport and its incoming channel), fed
/// from that channel (control envelopes dropped): the routers and the
/// transports, in the order given.
pub fn routed<T>(
    nodes: Vec<(std::sync::Arc<T>, tokio::sync::mpsc::Receiver<crate::engine::Envelope>)>,
) -> (Vec<std::sync::Arc<crate::router::Router>>, Vec<std::sync::Arc<T>>) {
    nodes
        .into_iter()
        .map(|(transport, incoming)| {
            let router = crate::router::Router::new();
            router.spawn_inbound(incoming, None);
            (router, transport)
        })
        .unzip()
}

/// `cargo` as a shell runs it, for a build nested in a test: without what
/// cargo and rustup set for test processes (`CARGO_*`, the toolchain pin,
/// `LD_LIBRARY_PATH`, which build scripts watch) and without what changes
/// what is compiled (`RUSTFLAGS`, a rustc or wrapper such as `.ci/run`'s
/// clippy-driver, a target directory). Where crates come from
/// (`CARGO_HOME`, registry, network and HTTP settings) and the job count
/// stay. `scripts/shell-env.sh` drops the same list for
/// `scripts/build-images.sh` and `.ci/run`'s background builds: a build
/// from a test and one from them then share their artifacts.
pub fn shell_cargo() -> Command {
    let mut cargo = Command::new("cargo");
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let kept = ["CARGO_HOME", "CARGO_BUILD_JOBS"].contains(&name.as_ref())
            || ["CARGO_REGISTRIES_", "CARGO_NET_", "CARGO_HTTP_"].iter().any(|p| name.starts_with(p));
        let dropped = name.starts_with("CARGO")
            || [
                "RUSTFLAGS",
                "RUSTDOCFLAGS",
                "RUSTC",
                "RUSTDOC",
                "RUSTC_WRAPPER",
                "RUSTC_WORKSPACE_WRAPPER",
                "CLIPPY_ARGS",
                "RUSTUP_TOOLCHAIN",
                "RUSTUP_TOOLCHAIN_SOURCE",
                "RUST_RECURSION_COUNT",
                "LD_LIBRARY_PATH",
            ]
            .contains(&name.as_ref());
        if dropped && !kept {
            cargo.env_remove(name.as_ref());
        }
    }
    cargo
}

/// Asserts that `binary` is a product build of `torcus-node`, the one an
/// image holds: it has no flag for a test fixture (safe primes, aux info) or
/// a test hook, and refuses to start when a fixture's or a hook's
/// environment variable is set, before it reads anything. A node with
/// public primes or aux info would hold a key share anyone can recover; one
/// with a hook would break or skew every session it joins.
pub fn assert_refuses_test_switches(binary: &Path) {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let dir = tempfile::tempdir().expect("a scratch folder");
    let run = |args: &[&str], env: Option<(&str, &str)>| {
        let mut command = Command::new(binary);
        command.args(args).current_dir(dir.path()).stdin(Stdio::null());
        for variable in
            [crate::TEST_PRIMES_ENV, crate::TEST_AUX_ENV, crate::TEST_CORRUPT_ENV, crate::TEST_MISBEHAVIOUR_ENV]
                .into_iter()
                .chain([crate::TEST_CLOCK_OFFSET_ENV, crate::TEST_OLD_BUILD_ENV])
        {
            command.env_remove(variable);
        }
        if let Some((key, value)) = env {
            command.env(key, value);
        }
        let out = command.output().unwrap_or_else(|e| panic!("{}: {e}", binary.display()));
        (out.status, String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    let primes = fixtures.join("primes.json").display().to_string();
    let aux = fixtures.join("aux-info.json").display().to_string();
    // No such flags: clap refuses them as unknown.
    for flag in [
        format!("--test-primes-fixture={primes}"),
        format!("--test-aux-fixture={aux}"),
        "--test-corrupt-signing=1".to_owned(),
        "--test-misbehaviour=replay".to_owned(),
        "--test-clock-offset-secs=100".to_owned(),
        "--test-old-build-parties=1".to_owned(),
    ] {
        let (status, out) = run(&["serve", "--party-index=0", &flag], None);
        assert_eq!(status.code(), Some(2), "clap refuses {flag}: {out}");
        let name = flag.split('=').next().unwrap_or_default();
        assert!(out.contains(&format!("unexpected argument '{name}")), "{flag}: {out}");
    }
    // With the variables instead: refused before anything is read or bound
    // (the configuration named here does not even exist).
    let serve = ["serve", "--party-index=0", "--config=missing.json", "--tls-dir=.", "--data-dir=."];
    for (variable, value, says) in [
        (crate::TEST_PRIMES_ENV, primes.as_str(), "does not take test fixtures"),
        (crate::TEST_AUX_ENV, aux.as_str(), "does not take test fixtures"),
        (crate::TEST_CORRUPT_ENV, "1", "has no test hooks"),
        (crate::TEST_MISBEHAVIOUR_ENV, "replay", "has no test hooks"),
        (crate::TEST_CLOCK_OFFSET_ENV, "100", "has no test hooks"),
        (crate::TEST_OLD_BUILD_ENV, "1", "has no test hooks"),
    ] {
        let (status, out) = run(&serve, Some((variable, value)));
        assert!(!status.success(), "{variable}: {out}");
        assert!(out.contains(&format!("{variable} is set, but this build")), "{variable}: {out}");
        assert!(out.contains(says), "{variable}: {out}");
    }
}
