//! The published images, built and run: `scripts/build-images.sh` builds
//! `ghcr.io/torcus/torcus-node` and `ghcr.io/torcus/torcus-operator` from the
//! Dockerfiles with buildah (no Docker daemon), and these tests unpack the OCI
//! archives it writes (the files `ctr images import` would load) and run
//! them with runc, a real OCI runtime, under the security context their pods
//! get:
//! - three node containers, each configured from the operator's own
//!   StatefulSet for the party (user and groups, read-only root filesystem,
//!   no capabilities, no privilege escalation, the memory limit, the
//!   volumes at their mount paths with the files as the kubelet writes them
//!   for the pod's `fsGroup`), generate a BIP-340 key and sign with it, and
//!   the signature verifies with libsecp256k1;
//! - the operator's container, configured from the chart's Deployment and
//!   given its ServiceAccount's token where the kubelet puts it, leads,
//!   runs a cluster (whose nodes run on the process kubelet) on the chart's
//!   RBAC, and signs a request that libsecp256k1 verifies.
//!
//! The kernel's view of each container's process (user, groups,
//! capabilities, no-new-privileges, read-only root, memory cgroup) is
//! asserted. Each container runs under containerd's default seccomp profile
//! (`RuntimeDefault`, written by `e2e/seccomp` from containerd's source);
//! the node containers each have a network namespace of their own, as pods
//! do, and listen on the pods' ports, where the test runs the pods' probes.
//! What runc alone does not show, and the real kubelet would: the kubelet's
//! own handling of `fsGroup` and of the token (written here as it does
//! them); and the operator's container shares the host's network (it
//! reaches the API server on loopback).
//!
//! Needs root, buildah and runc (`.ci/run` installs them); without them the
//! tests say so and pass, unless `TORCUS_REQUIRE_IMAGES=1` (CI) makes that
//! a failure.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, PodSecurityContext, PodSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use torcus_contract::{HashAlgorithm, Scheme, SignMessage};
use torcus_crds::MpcCluster;
use torcus_e2e::independent;
use torcus_node::testing::{Cluster, Launcher, NodeLaunch};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

/// Why images cannot be built and run here, if they cannot.
fn missing_tools() -> Option<String> {
    let uid = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if status_field(&uid, "Uid").split_whitespace().nth(1) != Some("0") {
        return Some("not root (buildah's store and runc's containers need it)".into());
    }
    ["buildah", "runc"]
        .into_iter()
        .find(|tool| Command::new(tool).arg("--version").output().is_err())
        .map(|tool| format!("{tool} is not installed"))
}

/// Builds both images with `scripts/build-images.sh`, once for this test
/// process (its tests share the archives; the script holds a lock against
/// other callers and replaces each archive whole), and returns the folder
/// of their OCI archives (`TORCUS_IMAGES_DIR`, as the script takes it).
fn build_images() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let started = Instant::now();
            let out = Command::new("bash")
                .arg(repo().join("scripts/build-images.sh"))
                .current_dir(repo())
                .stdin(Stdio::null())
                .output()
                .unwrap();
            let report = String::from_utf8_lossy(&out.stdout).into_owned();
            let errors = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "build-images.sh: {}\n{report}{errors}", out.status);
            eprintln!("images built (or found up to date) in {:.0?}:\n{report}", started.elapsed());
            std::env::var_os("TORCUS_IMAGES_DIR").map(PathBuf::from).unwrap_or_else(|| repo().join(".cache/images"))
        })
        .clone()
}

/// Skips the test, unless CI requires it, where images cannot be built.
fn skip() -> bool {
    let Some(why) = missing_tools() else { return false };
    assert!(std::env::var("TORCUS_REQUIRE_IMAGES").as_deref() != Ok("1"), "TORCUS_REQUIRE_IMAGES=1, but {why}");
    eprintln!("skipping: {why}");
    true
}

/// An image unpacked from its OCI archive: its root filesystem and the
/// `config` of its image configuration.
struct Image {
    rootfs: PathBuf,
    config: Value,
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Unpacks the OCI archive `archive` into `into`: the index's one manifest,
/// its configuration, and its layers in order (tar reads gzip itself).
fn unpack(archive: &Path, into: &Path) -> Image {
    let layout = into.join("layout");
    let rootfs = into.join("rootfs");
    std::fs::create_dir_all(&layout).unwrap();
    std::fs::create_dir_all(&rootfs).unwrap();
    let tar = |file: &Path, dir: &Path| {
        let status = Command::new("tar").arg("-xf").arg(file).arg("-C").arg(dir).status().unwrap();
        assert!(status.success(), "tar -xf {}: {status}", file.display());
    };
    tar(archive, &layout);
    let blob =
        |digest: &Value| layout.join("blobs/sha256").join(digest.as_str().unwrap().trim_start_matches("sha256:"));
    let index = read_json(&layout.join("index.json"));
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1, "one image per archive: {index}");
    let manifest = read_json(&blob(&manifests[0]["digest"]));
    let config = read_json(&blob(&manifest["config"]["digest"]));
    for layer in manifest["layers"].as_array().unwrap() {
        tar(&blob(&layer["digest"]), &rootfs);
    }
    Image { rootfs, config: config["config"].clone() }
}

/// Containers of one test, deleted (killed first) when dropped.
struct Runc {
    state: PathBuf,
    ids: Mutex<Vec<String>>,
}

impl Runc {
    fn new(test: &str) -> Self {
        Self::sweep();
        let state = PathBuf::from(format!("/run/torcus-images-test-{}-{test}", std::process::id()));
        Self { state, ids: Mutex::new(Vec::new()) }
    }

    /// Deletes what an earlier test process that was killed (and so never
    /// dropped its `Runc`) left running: its containers, their state.
    fn sweep() {
        for entry in std::fs::read_dir("/run").into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.strip_prefix("torcus-images-test-").and_then(|r| r.split('-').next()) else {
                continue;
            };
            if Path::new("/proc").join(pid).exists() {
                continue;
            }
            let list = Command::new("runc").arg("--root").arg(entry.path()).args(["list", "-q"]).output();
            for id in list.iter().flat_map(|out| {
                String::from_utf8_lossy(&out.stdout).into_owned().lines().map(str::to_owned).collect::<Vec<_>>()
            }) {
                let _ = Command::new("runc").arg("--root").arg(entry.path()).args(["delete", "--force", &id]).status();
            }
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }

    /// `runc run` of the bundle in `bundle`, in the foreground: the
    /// command's process is the container's runtime, and the container's
    /// output is its output.
    fn run(&self, id: &str, bundle: &Path) -> Command {
        self.ids.lock().unwrap().push(id.to_owned());
        let mut command = Command::new("runc");
        command.arg("--root").arg(&self.state).args(["run", "--bundle"]).arg(bundle).arg(id);
        command
    }

    /// The container's first process, as the host sees it.
    fn pid(&self, id: &str) -> u32 {
        let out = Command::new("runc").arg("--root").arg(&self.state).args(["state", id]).output().unwrap();
        assert!(out.status.success(), "runc state {id}: {}", String::from_utf8_lossy(&out.stderr));
        let state: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(state["status"], "running", "{state}");
        u32::try_from(state["pid"].as_u64().unwrap()).unwrap()
    }
}

impl Drop for Runc {
    fn drop(&mut self) {
        for id in self.ids.lock().unwrap().drain(..) {
            let _ = Command::new("runc").arg("--root").arg(&self.state).args(["delete", "--force", &id]).status();
        }
        // runc removes each container's cgroups; their parent is ours (in
        // each v1 hierarchy, or at the top of the v2 one).
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
            let _ = std::fs::remove_dir(hierarchy.path().join("torcus-images-test"));
        }
        let _ = std::fs::remove_dir("/sys/fs/cgroup/torcus-images-test");
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

/// A volume of the pod, given to the container at a mount path.
enum Volume {
    /// A folder of the host (Secret, ConfigMap, claim), read-only or not.
    Folder(PathBuf),
    /// An `emptyDir` (on tmpfs here).
    Empty,
}

/// Memory quantities as the pod specs write them (`512Mi`, `1Gi`).
fn bytes(quantity: &str) -> i64 {
    let (number, unit) = quantity.split_at(quantity.find(|c: char| !c.is_ascii_digit()).unwrap_or(quantity.len()));
    let scale = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        other => panic!("unit {other} of {quantity}"),
    };
    number.parse::<i64>().unwrap() * scale
}

/// The OCI runtime configuration of `container` of a pod with security
/// context `pod`, as a kubelet and containerd give it: the image's
/// entrypoint and environment, the container's `args` and `env`, user and
/// groups, root filesystem, capabilities, no-new-privileges and memory limit
/// from the specs. Mounts come from the container's `volumeMounts`, their
/// sources from `volumes` (by name).
fn runtime_config(
    image: &Image,
    pod: &PodSecurityContext,
    container: &Container,
    args: &[String],
    env: &BTreeMap<String, String>,
    volumes: &BTreeMap<String, Volume>,
    cgroup: &str,
) -> Value {
    let context = container.security_context.clone().unwrap_or_default();
    let uid = context.run_as_user.or(pod.run_as_user).expect("the pod names its user");
    let gid = context.run_as_group.or(pod.run_as_group).expect("the pod names its group");
    if context.run_as_non_root.or(pod.run_as_non_root) == Some(true) {
        assert_ne!(uid, 0, "runAsNonRoot with user 0 would not start");
    }
    // Dropping ALL leaves no capability; nothing is added back.
    let drop = context.capabilities.as_ref().and_then(|c| c.drop.clone()).unwrap_or_default();
    assert_eq!(drop, ["ALL"], "the container drops every capability");
    let add = context.capabilities.as_ref().and_then(|c| c.add.clone()).unwrap_or_default();
    let capabilities: Vec<String> = add.iter().map(|c| format!("CAP_{c}")).collect();
    // The supplementary groups containerd gives (since CVE-2023-25173): the
    // primary group, then the pod's supplemental groups and fsGroup (the
    // image's /etc/group lists no member for user 65532).
    let mut groups = vec![gid];
    for group in pod.supplemental_groups.iter().flatten().chain(pod.fs_group.as_ref()) {
        if !groups.contains(group) {
            groups.push(*group);
        }
    }

    let mut process_env: Vec<String> =
        image.config["Env"].as_array().into_iter().flatten().map(|e| e.as_str().unwrap().to_owned()).collect();
    process_env.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
    let mut process_args: Vec<String> =
        image.config["Entrypoint"].as_array().unwrap().iter().map(|e| e.as_str().unwrap().to_owned()).collect();
    process_args.extend(args.iter().cloned());

    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
    ];
    for mount in container.volume_mounts.iter().flatten() {
        let read_only = mount.read_only == Some(true);
        match volumes.get(&mount.name).unwrap_or_else(|| panic!("no volume {} for the mount", mount.name)) {
            Volume::Folder(dir) => mounts.push(json!({
                "destination": mount.mount_path, "type": "bind", "source": dir,
                "options": ["rbind", if read_only { "ro" } else { "rw" }, "nosuid", "nodev"],
            })),
            Volume::Empty => mounts.push(json!({
                "destination": mount.mount_path, "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "nodev", "mode=1777"],
            })),
        }
    }
    // RuntimeDefault: containerd's default profile, as it gives it to a
    // container without capabilities (e2e/seccomp writes it).
    let profile = context.seccomp_profile.as_ref().or(pod.seccomp_profile.as_ref()).map(|p| p.type_.as_str());
    assert_eq!(profile, Some("RuntimeDefault"), "the pod runs under the runtime's seccomp profile");
    let seccomp = read_json(&repo().join("e2e/seccomp/runtime-default.json"));
    let limits = container.resources.as_ref().and_then(|r| r.limits.clone()).unwrap_or_default();
    let mut resources = json!({"devices": [{"allow": false, "access": "rwm"}]});
    if let Some(memory) = limits.get("memory") {
        resources["memory"] = json!({"limit": bytes(&memory.0)});
    }

    json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": false,
            "user": {"uid": uid, "gid": gid, "additionalGids": groups},
            "args": process_args,
            "env": process_env,
            "cwd": image.config["WorkingDir"].as_str().filter(|d| !d.is_empty()).unwrap_or("/"),
            "capabilities": {
                "bounding": capabilities, "effective": capabilities, "permitted": capabilities,
                "inheritable": [], "ambient": [],
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": context.allow_privilege_escalation == Some(false),
        },
        "root": {"path": image.rootfs, "readonly": context.read_only_root_filesystem == Some(true)},
        "hostname": "torcus",
        "mounts": mounts,
        "linux": {
            "cgroupsPath": cgroup,
            "resources": resources,
            "seccomp": seccomp,
            // The host's network (see the module comment); the rest private.
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    })
}

/// Writes `config` as the runtime configuration of bundle `dir`.
fn bundle(dir: &Path, config: &Value) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(config).unwrap()).unwrap();
    dir.to_owned()
}

/// The state of the container `id` (its first process), as the kernel
/// sees it: user and groups, capabilities, no-new-privileges, whether the
/// root filesystem is read-only, and the memory cgroup's limit.
fn assert_confined(runc: &Runc, id: &str, uid: i64, groups: &str, memory_limit: i64) {
    let file = assert_process_confined(runc.pid(id), uid, groups, memory_limit);
    assert!(file.contains(&format!("/torcus-images-test/{id}/")), "the container's own cgroup: {file}");
}

/// What [`assert_confined`] checks of process `pid`, whoever started it;
/// returns the file of its cgroup's memory limit.
fn assert_process_confined(pid: u32, uid: i64, groups: &str, memory_limit: i64) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = uid.to_string();
    assert_eq!(status_field(&status, "Uid").split_whitespace().collect::<Vec<_>>(), [uid.as_str(); 4], "{status}");
    assert_eq!(status_field(&status, "Gid").split_whitespace().collect::<Vec<_>>(), [uid.as_str(); 4], "{status}");
    assert_eq!(status_field(&status, "Groups"), groups, "{status}");
    for field in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(&status, field), "0000000000000000", "{field}: {status}");
    }
    assert_eq!(status_field(&status, "NoNewPrivs"), "1", "{status}");
    // Mode 2: a seccomp filter; one, the profile's.
    assert_eq!(status_field(&status, "Seccomp"), "2", "{status}");
    assert_eq!(status_field(&status, "Seccomp_filters"), "1", "{status}");
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root = mounts.lines().find(|l| l.split(' ').nth(4) == Some("/")).unwrap();
    assert!(root.split(' ').nth(5).unwrap().split(',').any(|o| o == "ro"), "read-only root: {root}");
    // The memory limit of the process's own cgroup: `memory.limit_in_bytes`
    // in the v1 memory hierarchy, `memory.max` in a v2 (unified) one.
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let v1 = cgroups.lines().find_map(|l| {
        let mut fields = l.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then(|| format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"))
    });
    let file = v1.unwrap_or_else(|| {
        let path = cgroups.lines().find_map(|l| l.strip_prefix("0::")).expect("a memory cgroup");
        format!("/sys/fs/cgroup{path}/memory.max")
    });
    let limit = std::fs::read_to_string(&file).unwrap();
    assert_eq!(limit.trim().parse::<i64>().unwrap(), memory_limit, "the pod's memory limit ({file})");
    file
}

/// Gives the volume `dir` to the pod's `fsGroup` as the kubelet's
/// `SetVolumeOwnership` does: every file and folder below it, recursively,
/// keeps its owner and gets group `group`, and its mode gains group read
/// (and write, unless `read_only`); folders also gain the execute bits and
/// set-group-ID. `files`: the mode a Secret or ConfigMap volume writes its
/// files with (`defaultMode`), before that; `None` keeps the files' own (a
/// claim's).
fn apply_fs_group(dir: &Path, group: u32, files: Option<u32>, read_only: bool) {
    let mask = if read_only { 0o440 } else { 0o660 };
    let mut pending = vec![dir.to_owned()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        std::os::unix::fs::lchown(&path, None, Some(group)).unwrap();
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = if meta.is_dir() {
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            (meta.permissions().mode() & 0o7777) | mask | 0o110 | 0o2000
        } else {
            files.unwrap_or(meta.permissions().mode() & 0o7777) | mask
        };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

fn status_field<'a>(status: &'a str, field: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))
        .unwrap_or_else(|| panic!("no {field} in\n{status}"))
        .trim()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_images_sign_under_the_pods_security_context() {
    if skip() {
        return;
    }
    let started = Instant::now();
    let images = build_images();
    let version = env!("CARGO_PKG_VERSION");
    let work = tempfile::tempdir().unwrap();

    // The node image: its configuration agrees with the pod the operator makes.
    let node = unpack(&images.join("torcus-node.oci.tar"), &work.path().join("node"));
    let mpc: MpcCluster =
        serde_yaml::from_str(&std::fs::read_to_string(repo().join("examples/mpccluster.yaml")).unwrap()).unwrap();
    let ctx = torcus_operator::resources::BuildContext {
        default_node_image: <torcus_operator::Args as clap::Parser>::try_parse_from(["torcus-operator"])
            .unwrap()
            .node_image,
        registry_url: None,
        cluster_domain: "cluster.local".into(),
        secret_propagation: std::time::Duration::from_secs(60),
    };
    let pod = |index: u16| -> PodSpec {
        let set = torcus_operator::resources::stateful_set(&mpc, index, "hash", &ctx);
        set.spec.unwrap().template.spec.unwrap()
    };
    let spec = pod(0);
    let container = &spec.containers[0];
    assert_eq!(container.image.as_deref(), Some(format!("ghcr.io/torcus/torcus-node:{version}").as_str()));
    let security = spec.security_context.clone().unwrap();
    assert_eq!(node.config["User"], format!("{0}:{0}", security.run_as_user.unwrap()), "{}", node.config);
    for port in container.ports.iter().flatten() {
        let key = format!("{}/{}", port.container_port, port.protocol.as_deref().unwrap_or("TCP").to_lowercase());
        assert!(node.config["ExposedPorts"].get(&key).is_some(), "the image exposes {key}: {}", node.config);
    }

    // Three node containers. The harness writes each node's files as the
    // operator's Secrets and ConfigMap hold them; here they become the pod's
    // volumes, with the ownership and modes the kubelet gives them.
    let runc = Arc::new(Runc::new("nodes"));
    let node_rootfs = Arc::new(node);
    let launcher = {
        let runc = Arc::clone(&runc);
        let image = Arc::clone(&node_rootfs);
        let bundles = work.path().join("bundles");
        let pods: Vec<PodSpec> = (0..3).map(pod).collect();
        Launcher(Box::new(move |launch: &NodeLaunch<'_>| {
            let spec = &pods[usize::from(launch.index)];
            let fs_group = u32::try_from(spec.security_context.as_ref().unwrap().fs_group.unwrap()).unwrap();
            let projected = spec.volumes.iter().flatten().find(|v| v.name == "tls").unwrap();
            let mode = u32::try_from(projected.projected.as_ref().unwrap().default_mode.unwrap()).unwrap();
            apply_fs_group(launch.tls_dir, fs_group, Some(mode), true);
            apply_fs_group(launch.config_dir, fs_group, Some(0o644), true);
            apply_fs_group(launch.data_dir, fs_group, None, false);
            let volumes = BTreeMap::from([
                ("tls".to_owned(), Volume::Folder(launch.tls_dir.to_owned())),
                ("config".to_owned(), Volume::Folder(launch.config_dir.to_owned())),
                (torcus_operator::resources::DATA_VOLUME.to_owned(), Volume::Folder(launch.data_dir.to_owned())),
                ("tmp".to_owned(), Volume::Empty),
            ]);
            // The container's own environment, with what the kubelet fills
            // in from the pod (its address, name and namespace).
            let host = launch.pod_ip.to_string();
            let container = &spec.containers[0];
            let env: BTreeMap<String, String> = container
                .env
                .iter()
                .flatten()
                .map(|e| {
                    let value = match e.value_from.as_ref().and_then(|v| v.field_ref.as_ref()) {
                        Some(field) if field.field_path == "status.podIP" => host.clone(),
                        Some(field) if field.field_path == "metadata.name" => format!("demo-node-{}-0", launch.index),
                        Some(field) if field.field_path == "metadata.namespace" => "default".to_owned(),
                        Some(field) => panic!("the node's pod asks for {} of itself", field.field_path),
                        None => e.value.clone().unwrap(),
                    };
                    (e.name.clone(), value)
                })
                .chain([("RUST_LOG".to_owned(), "info".to_owned())])
                .collect();
            // The pod's args; everything else comes from the environment.
            let id = format!("node-{}-{}", launch.index, std::process::id());
            let mut config = runtime_config(
                &image,
                spec.security_context.as_ref().unwrap(),
                container,
                container.args.as_deref().unwrap_or_default(),
                &env,
                &volumes,
                &format!("/torcus-images-test/{id}"),
            );
            // The pod's network: its own namespace and address.
            config["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .push(json!({"type": "network", "path": launch.network_namespace}));
            let bundle = bundle(&bundles.join(&id), &config);
            let _ = Command::new("runc").arg("--root").arg(&runc.state).args(["delete", "--force", &id]).status();
            let log = std::fs::File::create(launch.log).unwrap();
            let mut command = runc.run(&id, &bundle);
            command.stdout(log.try_clone().unwrap()).stderr(log);
            command
        }))
    };
    let binary = node_rootfs.rootfs.join("usr/local/bin/torcus-node");
    // The image's own binary is the product build: no test fixture or hook.
    torcus_node::testing::assert_refuses_test_switches(&binary);
    // And the home of its user is that user's (distroless makes it so).
    let home = std::fs::metadata(node_rootfs.rootfs.join("home/nonroot")).unwrap();
    let uid = u32::try_from(security.run_as_user.unwrap()).unwrap();
    assert_eq!(
        (std::os::unix::fs::MetadataExt::uid(&home), std::os::unix::fs::MetadataExt::gid(&home)),
        (uid, uid),
        "/home/nonroot in the image"
    );
    let cluster = Cluster::launched_by(&binary, 3, 2, "quic", launcher).await.expect("network namespaces (root)");
    cluster.wait_ready().await;

    // The pods' probes, as the kubelet runs them: each named port resolved
    // in the container's ports, asked at the pod's address.
    for i in 0..3 {
        let spec = pod(i);
        let container = &spec.containers[0];
        for probe in [&container.readiness_probe, &container.liveness_probe] {
            let get = probe.as_ref().and_then(|p| p.http_get.as_ref()).expect("an HTTP probe");
            let port = match &get.port {
                IntOrString::Int(port) => *port,
                IntOrString::String(name) => {
                    container.ports.iter().flatten().find(|p| p.name.as_ref() == Some(name)).unwrap().container_port
                }
            };
            let addr = std::net::SocketAddr::new(cluster.host(i), u16::try_from(port).unwrap());
            let path = get.path.as_deref().unwrap_or("/");
            let (status, body) = torcus_e2e::kubelet::http_get(addr, path, Duration::from_secs(5)).await.unwrap();
            assert_eq!(status, 200, "probe {addr}{path}: {body}");
        }
    }

    // Every node's process, as the kernel runs it.
    let uid = security.run_as_user.unwrap();
    let memory = bytes(&container.resources.as_ref().unwrap().limits.as_ref().unwrap()["memory"].0);
    for i in 0..3 {
        assert_confined(&runc, &format!("node-{i}-{}", std::process::id()), uid, &uid.to_string(), memory);
    }

    // A BIP-340 key, generated and used by the image's nodes; the signature
    // is checked with libsecp256k1 under the Taproot output key.
    let internal = cluster.keygen_frost("btc", Scheme::SchnorrBip340).await;
    let output = independent::taproot_output_key(&hex::decode(&internal).unwrap()).unwrap();
    let message: [u8; 32] = Sha256::digest(b"signed in a container").into();
    let signature = cluster
        .sign_frost(
            "btc",
            Scheme::SchnorrBip340,
            vec![0, 2],
            SignMessage::payload(HashAlgorithm::Sha256, b"signed in a container".to_vec()),
            vec![],
        )
        .await;
    independent::verify_bip340(&message, &output, &signature.signature).unwrap();
    eprintln!("a signature from the node image, {:.0?} after the build started", started.elapsed());

    // The share was written by the node's user into its volume, sealed.
    let data = cluster.tls_dir(0).with_file_name("data-0");
    let mut shares = Vec::new();
    let mut pending = vec![data.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                pending.push(entry.path());
            } else {
                shares.push(entry.path());
            }
        }
    }
    let owned: Vec<_> = shares
        .iter()
        .filter(|p| std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(p).unwrap()) == 65532)
        .collect();
    assert!(!owned.is_empty(), "files of uid 65532 in the data volume: {shares:?}");
}

/// The chart's operator Deployment, rendered by `helm template` for
/// `namespace` (watching only it): its pod spec.
fn chart_operator_pod(namespace: &str) -> PodSpec {
    let home = tempfile::tempdir().unwrap();
    let out = torcus_e2e::helm::command(home.path())
        .unwrap()
        .args(["template", "torcus", "--namespace", namespace, "--set", &format!("watchNamespaces={{{namespace}}}")])
        .arg(torcus_e2e::helm::chart_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "helm template: {}", String::from_utf8_lossy(&out.stderr));
    let yaml = String::from_utf8(out.stdout).unwrap();
    let deployment = yaml
        .split("\n---\n")
        .filter_map(|doc| serde_yaml::from_str::<serde_yaml::Value>(doc).ok())
        .find(|doc| doc["kind"] == "Deployment")
        .expect("the chart renders a Deployment");
    serde_yaml::from_value(deployment["spec"]["template"]["spec"].clone()).unwrap()
}

/// The operator's image in a container under the chart's pod: its
/// security context and memory limit, and the credentials the kubelet
/// gives it (the ServiceAccount's token, `ca.crt` and namespace at the
/// in-cluster path, and the `kubernetes` Service's address in the
/// environment). It leads, creates a cluster's children on the chart's
/// rights, issues the keygen and a signing grant, and the signature it
/// writes verifies with libsecp256k1. The cluster's nodes run on the
/// process kubelet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_image_signs_on_the_charts_rights() {
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::api::{Api, PostParams};
    use torcus_crds::{SigningPhase, SigningRequest};
    use torcus_e2e::testing::{TestNamespace, eventually};

    if skip() {
        return;
    }
    let images = build_images();
    let work = tempfile::tempdir().unwrap();
    let image = unpack(&images.join("torcus-operator.oci.tar"), &work.path().join("operator"));
    let mut ns = TestNamespace::new("image-operator").await.unwrap();
    let pod = chart_operator_pod(&ns.name);
    assert_eq!(pod.automount_service_account_token, None, "the operator's pod gets its ServiceAccount's token");
    let security = pod.security_context.clone().unwrap();
    let container = pod.containers[0].clone();
    assert_eq!(image.config["User"], format!("{0}:{0}", security.run_as_user.unwrap()), "{}", image.config);
    for port in container.ports.iter().flatten() {
        assert!(image.config["ExposedPorts"].get(format!("{}/tcp", port.container_port)).is_some(), "{}", image.config);
    }

    let (account, lease) = ns.apply_chart_rbac().unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some(account.as_str()));
    // The ServiceAccount volume as the kubelet writes it for a pod with a
    // user and no fsGroup: the token readable by that user only.
    let credentials = work.path().join("serviceaccount");
    std::fs::create_dir_all(&credentials).unwrap();
    let (server, ca) = ns.api_server().unwrap();
    std::fs::write(credentials.join("token"), ns.service_account_token(&account).unwrap()).unwrap();
    std::fs::write(credentials.join("ca.crt"), ca).unwrap();
    std::fs::write(credentials.join("namespace"), &ns.name).unwrap();
    let uid = security.run_as_user.unwrap();
    std::os::unix::fs::chown(credentials.join("token"), Some(u32::try_from(uid).unwrap()), None).unwrap();
    std::fs::set_permissions(credentials.join("token"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let address = server.trim_start_matches("https://").to_owned();
    let (host, port) = address.rsplit_once(':').unwrap();

    ns.start_kubelet().await.unwrap();
    ns.operator_pod("operator-a").await.unwrap();
    let service = ns.serve_leader_service().await.unwrap();
    let runc = Runc::new("operator");
    let id = format!("operator-{}", std::process::id());
    let operator = ns
        .spawn_operator_with("operator-a", &lease, |invocation| {
            // The chart's environment, what the kubelet fills in from the pod
            // included; the harness's arguments (its namespace, ports and
            // lease, which clap takes over the environment) and log filter
            // on top.
            let mut env: BTreeMap<String, String> = container
                .env
                .iter()
                .flatten()
                .map(|e| {
                    let value = match e.value_from.as_ref().and_then(|v| v.field_ref.as_ref()) {
                        Some(field) if field.field_path == "metadata.namespace" => ns.name.clone(),
                        Some(field) if field.field_path == "metadata.name" => "operator-a".to_owned(),
                        Some(field) => panic!("the operator's pod asks for {} of itself", field.field_path),
                        None => e.value.clone().unwrap_or_default(),
                    };
                    (e.name.clone(), value)
                })
                .collect();
            assert!(env.contains_key("TORCUS_LOG_FORMAT") && env.contains_key("TORCUS_WATCH_NAMESPACE"), "{env:?}");
            env.extend(invocation.env.iter().cloned());
            env.insert("KUBERNETES_SERVICE_HOST".into(), host.to_owned());
            env.insert("KUBERNETES_SERVICE_PORT".into(), port.to_owned());
            let mut container = container.clone();
            container.volume_mounts = Some(vec![k8s_openapi::api::core::v1::VolumeMount {
                name: "serviceaccount".into(),
                mount_path: "/var/run/secrets/kubernetes.io/serviceaccount".into(),
                read_only: Some(true),
                ..Default::default()
            }]);
            let volumes = BTreeMap::from([("serviceaccount".to_owned(), Volume::Folder(credentials.clone()))]);
            let config = runtime_config(
                &image,
                &security,
                &container,
                &invocation.args,
                &env,
                &volumes,
                &format!("/torcus-images-test/{id}"),
            );
            Ok(runc.run(&id, &bundle(&work.path().join("bundles").join(&id), &config)))
        })
        .unwrap();
    service.route(&operator);
    let leases: Api<Lease> = ns.api();
    eventually("the operator's container to lead", Duration::from_secs(60), || async {
        Ok(leases.get_opt(&lease).await?.and_then(|l| l.spec?.holder_identity).filter(|h| h == "operator-a"))
    })
    .await
    .unwrap();
    let memory = bytes(&container.resources.as_ref().unwrap().limits.as_ref().unwrap()["memory"].0);
    assert_confined(&runc, &id, uid, &uid.to_string(), memory);
    // The chart's probes, at the address the harness gave it (the host's
    // network: not the pod's port 8080, which tests side by side share).
    for probe in [&container.readiness_probe, &container.liveness_probe] {
        let get = probe.as_ref().and_then(|p| p.http_get.as_ref()).expect("an HTTP probe");
        assert_eq!(get.port, IntOrString::String("http".into()), "the probes use the container's port");
        let addr: std::net::SocketAddr = operator.url.trim_start_matches("http://").parse().unwrap();
        let path = get.path.as_deref().unwrap_or("/");
        let (status, body) = torcus_e2e::kubelet::http_get(addr, path, Duration::from_secs(5)).await.unwrap();
        assert_eq!(status, 200, "probe {addr}{path}: {body}");
    }

    let clusters: Api<MpcCluster> = ns.api();
    let mpc: MpcCluster = serde_json::from_value(json!({
        "apiVersion": "mpc.torcus.io/v1alpha1",
        "kind": "MpcCluster",
        "metadata": {"name": "vault"},
        "spec": {"nodes": 3, "threshold": 2, "transport": {"mode": "quic"}, "presignatures": {"poolSize": 0}},
    }))
    .unwrap();
    clusters.create(&PostParams::default(), &mpc).await.unwrap();
    let public_key = eventually("cluster Ready with its key", Duration::from_secs(420), || async {
        let status = clusters.get("vault").await?.status.unwrap_or_default();
        let ready = status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
        Ok(ready.then(|| status.keys.iter().find(|k| k.name == "default").and_then(|k| k.public_key.clone())).flatten())
    })
    .await
    .unwrap();
    let digest: [u8; 32] = Sha256::digest(b"granted by the operator's image").into();
    let srs: Api<SigningRequest> = ns.api();
    let sr: SigningRequest = serde_json::from_value(json!({
        "apiVersion": "mpc.torcus.io/v1alpha1",
        "kind": "SigningRequest",
        "metadata": {"name": "from-image"},
        "spec": {"cluster": "vault", "digest": hex::encode(digest)},
    }))
    .unwrap();
    srs.create(&PostParams::default(), &sr).await.unwrap();
    let done = eventually("the request to end", Duration::from_secs(120), || async {
        let sr = srs.get("from-image").await?;
        Ok(sr.status.filter(|s| s.phase.is_some_and(SigningPhase::is_final)))
    })
    .await
    .unwrap();
    assert_eq!(done.phase, Some(SigningPhase::Completed), "{done:?}");
    independent::verify_status(&done, &digest, &public_key).unwrap();
    // It stops on SIGTERM (runc passes it on), as a pod being replaced.
    let mut operator = operator;
    let ended = operator.terminate().await.unwrap();
    assert!(ended.success(), "the operator's container ended with {ended:?}");
    ns.finish().await.unwrap();
}

/// `torcus-sandbox down` of a sandbox folder when dropped: a failing
/// assertion leaves no real node running.
struct SandboxDown(PathBuf);

impl Drop for SandboxDown {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_torcus-sandbox")).arg("down").arg("--dir").arg(&self.0).output();
    }
}

/// The processes of a pod's containers, as the host sees them: those in
/// the pod's cgroup (named after its UID), but its sandbox's `pause`.
fn pod_processes(uid: &str) -> Vec<u32> {
    let cgroup = format!("/pod{uid}/");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| c.contains(&cgroup)))
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() != "pause"))
        .collect()
}

/// The production path, on a real node: `torcus-sandbox up --real-node`
/// (the upstream kubelet with containerd, runc and the bridge CNI,
/// kube-proxy and CoreDNS, in a network namespace of its own), the images
/// `scripts/build-images.sh` builds imported into its containerd, and then
/// what a user does: `helm install` of the chart, an MpcCluster applied
/// (`examples/mpccluster.yaml`), keygen (safe primes and all: the images
/// carry no fixture), a SigningRequest (`examples/signingrequest.yaml`)
/// whose signature libsecp256k1 verifies, and `helm uninstall`. The
/// operator runs as the chart's pods under its ServiceAccount and RBAC,
/// reaching the API server through the `kubernetes` Service; the nodes find
/// the operator and each other by their Service names through CoreDNS. The
/// kernel's view of every container's process is checked against the
/// chart's and the operator's security context and memory limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_on_a_real_node_signs() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, ListParams, PostParams};
    use torcus_crds::{ClusterPhase, SigningPhase, SigningRequest};
    use torcus_e2e::testing::eventually;

    if skip() {
        return;
    }
    let images = build_images();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("sandbox");
    // What the node must leave as it found it: the kernel settings the
    // kubelet changes, and the host folders a kubelet and containerd write
    // whatever their configuration says.
    let host_state = || {
        let sysctls: Vec<String> = torcus_e2e::realnode::KUBELET_SYSCTLS
            .iter()
            .map(|k| format!("{k}={}", std::fs::read_to_string(Path::new("/proc/sys").join(k)).unwrap().trim()))
            .collect();
        let folders: Vec<String> =
            ["/run/containerd", "/run/nri", "/var/lib/kubelet", "/var/lib/cni", "/var/log/containers", "/var/log/pods"]
                .iter()
                .map(|p| format!("{p}: {:?}", std::fs::read_dir(p).map(|d| d.count()).ok()))
                .collect();
        (sysctls, folders)
    };
    let before = host_state();
    let started = Instant::now();
    let up = Command::new(env!("CARGO_BIN_EXE_torcus-sandbox"))
        .args(["up", "--real-node", "--timeout-secs", "600", "--dir"])
        .arg(&dir)
        .env("TORCUS_IMAGES_DIR", &images)
        .output()
        .unwrap();
    let _down = SandboxDown(dir.clone());
    assert!(
        up.status.success(),
        "sandbox up --real-node: {}{}\n{}",
        String::from_utf8_lossy(&up.stdout),
        String::from_utf8_lossy(&up.stderr),
        std::fs::read_to_string(dir.join("sandbox.log")).unwrap_or_default()
    );
    eprintln!("real node up in {:.0?}", started.elapsed());
    let kubeconfig = dir.join("kubeconfig");
    let client = torcus_e2e::controlplane::client_for(&kubeconfig).await.unwrap();
    let helm = |args: &[&str]| {
        let out = torcus_e2e::helm::command(&work.path().join("helm"))
            .unwrap()
            .env("KUBECONFIG", &kubeconfig)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "helm {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let chart = torcus_e2e::helm::chart_dir();

    let installed = Instant::now();
    helm(&[
        "install",
        "torcus",
        chart.to_str().unwrap(),
        "--namespace",
        "torcus-system",
        "--create-namespace",
        "--wait",
        "--timeout",
        "5m",
    ]);
    eprintln!("helm install --wait done in {:.0?}", installed.elapsed());
    let system_pods: Api<Pod> = Api::namespaced(client.clone(), "torcus-system");
    let operators = system_pods.list(&ListParams::default().labels("app.kubernetes.io/name=torcus")).await.unwrap();
    assert_eq!(operators.items.len(), 2, "the chart's two operator replicas");
    let deployment: Api<Deployment> = Api::namespaced(client.clone(), "torcus-system");
    let chart_pod = deployment.get("torcus").await.unwrap().spec.unwrap().template.spec.unwrap();
    let chart_limit = bytes(&chart_pod.containers[0].resources.as_ref().unwrap().limits.as_ref().unwrap()["memory"].0);
    for pod in &operators.items {
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some(torcus_e2e::pki::REAL_NODE));
        assert_eq!(spec.service_account_name.as_deref(), Some("torcus"), "the chart's ServiceAccount");
        let status = pod.status.as_ref().unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        let processes = pod_processes(pod.metadata.uid.as_deref().unwrap());
        assert_eq!(processes.len(), 1, "one operator process in pod {:?}", pod.metadata.name);
        assert_process_confined(processes[0], 65532, "65532", chart_limit);
    }

    let mpc: MpcCluster =
        serde_yaml::from_str(&std::fs::read_to_string(repo().join("examples/mpccluster.yaml")).unwrap()).unwrap();
    let clusters: Api<MpcCluster> = Api::namespaced(client.clone(), "default");
    clusters.create(&PostParams::default(), &mpc).await.unwrap();
    let public_key = eventually("keygen on the real node", Duration::from_secs(1200), || async {
        let mpc = clusters.get("demo").await?;
        let status = mpc.status.unwrap_or_default();
        let key = status.keys.iter().find(|k| k.name == "default").and_then(|k| k.public_key.clone());
        anyhow::ensure!(status.phase == Some(ClusterPhase::Ready) && key.is_some(), "phase {:?}", status.phase);
        Ok(key)
    })
    .await
    .unwrap();

    let request: SigningRequest =
        serde_yaml::from_str(&std::fs::read_to_string(repo().join("examples/signingrequest.yaml")).unwrap()).unwrap();
    let payload = hex::decode(request.spec.payload.as_deref().unwrap()).unwrap();
    let requests: Api<SigningRequest> = Api::namespaced(client.clone(), "default");
    requests.create(&PostParams::default(), &request).await.unwrap();
    let status = eventually("the signature", Duration::from_secs(300), || async {
        let status = requests.get("hello").await?.status.unwrap_or_default();
        anyhow::ensure!(status.phase == Some(SigningPhase::Completed), "phase {:?}", status.phase);
        Ok(Some(status))
    })
    .await
    .unwrap();
    let digest: [u8; 32] = Sha256::digest(&payload).into();
    independent::verify_status(&status, &digest, &public_key).unwrap();
    eprintln!("helm install to the first verified signature on the real node: {:.0?}", installed.elapsed());

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let nodes = pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=torcus-node,app.kubernetes.io/instance=demo"))
        .await
        .unwrap();
    assert_eq!(nodes.items.len(), 3, "one pod per party");
    for pod in &nodes.items {
        let spec = pod.spec.as_ref().unwrap();
        let limit = bytes(&spec.containers[0].resources.as_ref().unwrap().limits.as_ref().unwrap()["memory"].0);
        let processes = pod_processes(pod.metadata.uid.as_deref().unwrap());
        assert_eq!(processes.len(), 1, "one node process in pod {:?}", pod.metadata.name);
        assert_process_confined(processes[0], 65532, "65532", limit);
    }

    helm(&["uninstall", "torcus", "--namespace", "torcus-system", "--wait", "--timeout", "2m"]);
    eventually("the operator's pods gone", Duration::from_secs(60), || async {
        let left = system_pods.list(&ListParams::default().labels("app.kubernetes.io/name=torcus")).await?;
        anyhow::ensure!(left.items.is_empty(), "{} operator pods left", left.items.len());
        Ok(Some(()))
    })
    .await
    .unwrap();

    // Every daemon of the node names a path in its folder (its
    // configuration, its socket): those running now, and none after `down`.
    let dir_text = dir.canonicalize().unwrap().display().to_string();
    let naming_dir = || -> Vec<String> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.parse::<u32>().is_ok()))
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains(&format!("{dir_text}/realnode/")))
            .collect()
    };
    let daemons = naming_dir();
    for daemon in
        ["/containerd ", "kubelet --config", "kube-proxy --config", "coredns -conf", "containerd-shim-runc-v2"]
    {
        assert!(daemons.iter().any(|c| c.contains(daemon)), "{daemon} runs: {daemons:#?}");
    }
    let namespace = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(dir.join("realnode/mntns/mnt")).unwrap());
    let kubelet_changed = host_state().0;
    let down = Command::new(env!("CARGO_BIN_EXE_torcus-sandbox")).arg("down").arg("--dir").arg(&dir).output().unwrap();
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
    assert_eq!(naming_dir(), Vec::<String>::new(), "no daemon of the node left");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&dir_text), "mounts left under the sandbox: {mounts}");
    // No process left in the node's mount namespace (the kernel frees it
    // with its last process and its last bind).
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(link) = std::fs::read_link(entry.path().join("ns/mnt")) {
            let name = entry.file_name();
            assert_ne!(link.to_string_lossy(), format!("mnt:[{namespace}]"), "{name:?} in the node's mount namespace");
        }
    }
    for root in ["/sys/fs/cgroup/pids/torcus-real", "/sys/fs/cgroup/torcus-real"] {
        assert!(!Path::new(root).exists(), "{root}: the node's cgroups are gone");
    }
    // The kubelet's own values (setupKernelTunables): where the machine's
    // differ, the kubelet changed them while it ran.
    let kubelet_values = ["vm/overcommit_memory=1", "vm/panic_on_oom=0", "kernel/panic=10", "kernel/panic_on_oops=1"];
    if before.0.iter().any(|v| !kubelet_values.contains(&v.as_str())) {
        assert_ne!(kubelet_changed, before.0, "the kubelet changed kernel settings while it ran");
    }
    assert_eq!(host_state(), before, "kernel settings and host folders as before the node");
    let namespaces = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&namespaces.stdout).contains(torcus_e2e::realnode::NETNS),
        "the node's network namespace is gone"
    );
    for pod in nodes.items.iter().chain(&operators.items) {
        assert_eq!(pod_processes(pod.metadata.uid.as_deref().unwrap()), Vec::<u32>::new(), "no container left running");
    }
}
