//! `torcus-sandbox` as a person uses it: `up`, kubectl against the
//! kubeconfig it wrote, `status`, and `down` leaving no process behind.

use std::path::Path;
use std::process::{Command, Output};

fn sandbox(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_torcus-sandbox")).args(args).arg("--dir").arg(dir).output().unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A fresh folder for a sandbox; it is removed when the guard drops.
fn sandbox_dir() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sandbox");
    (tmp, dir)
}

fn repo() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty() && !stat.rsplit(')').next().unwrap_or_default().trim_start().starts_with('Z')
}

#[test]
fn up_status_kubectl_down() {
    let (_tmp, dir) = sandbox_dir();

    let up = sandbox(&dir, &["up"]);
    assert!(up.status.success(), "{}", text(&up));
    assert!(text(&up).contains("export KUBECONFIG="), "{}", text(&up));

    let status = sandbox(&dir, &["status"]);
    assert!(status.status.success(), "{}", text(&status));
    assert!(text(&status).contains("api server: ready"), "{}", text(&status));
    let pids: Vec<i32> = std::fs::read_to_string(dir.join("processes"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split("pid ").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect();
    let supervisor: i32 = std::fs::read_to_string(dir.join("sandbox.pid")).unwrap().trim().parse().unwrap();
    assert_eq!(pids.len(), 3, "etcd, kube-apiserver, kube-controller-manager");
    assert!(pids.iter().chain([&supervisor]).all(|p| alive(*p)));

    // A second `up` finds the running sandbox instead of starting another.
    let again = sandbox(&dir, &["up"]);
    assert!(again.status.success() && text(&again).contains("already running"), "{}", text(&again));

    // kubectl, as printed by `up`, works; the CRDs are installed and the operator acts.
    let kubectl = |args: &[&str]| {
        Command::new(dir.join("bin/kubectl"))
            .arg("--kubeconfig")
            .arg(dir.join("kubeconfig"))
            .args(args)
            .output()
            .unwrap()
    };
    let get = kubectl(&["get", "mpcclusters"]);
    assert!(get.status.success(), "{}", text(&get));
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/mpccluster.yaml");
    let apply = kubectl(&["apply", "-f", example.to_str().unwrap()]);
    assert!(apply.status.success(), "{}", text(&apply));
    let wait = kubectl(&[
        "wait",
        "--for=jsonpath={.status.conditions[?(@.type==\"CertificatesReady\")].status}=True",
        "mpc/demo",
        "--timeout=60s",
    ]);
    assert!(wait.status.success(), "{}", text(&wait));
    let sts = kubectl(&["get", "statefulsets", "-o", "name"]);
    assert_eq!(String::from_utf8_lossy(&sts.stdout).lines().count(), 3, "{}", text(&sts));

    let down = sandbox(&dir, &["down"]);
    assert!(down.status.success(), "{}", text(&down));
    for pid in pids.iter().chain([&supervisor]) {
        assert!(!alive(*pid), "process {pid} survived `down`");
    }
    let status = sandbox(&dir, &["status"]);
    assert!(!status.status.success() && text(&status).contains("not running"));
}

/// The README's run command, end to end: the sandbox, a 2-of-3 cluster that
/// generates its key, a SigningRequest that completes, and OpenSSL saying
/// the signature verifies. Nodes start from the test primes fixture here;
/// the script generates fresh primes when run by a person.
#[test]
fn demo_script_ends_with_a_signature_openssl_verifies() {
    let (_tmp, dir) = sandbox_dir();
    let (root, fixture) = (repo(), torcus_e2e::testing::primes_fixture());
    let demo = Command::new("bash")
        .arg(root.join("scripts/demo.sh"))
        .env("TORCUS_SANDBOX_DIR", &dir)
        .env("TORCUS_TEST_PRIMES_FIXTURE", &fixture)
        .output()
        .unwrap();
    let down = sandbox(&dir, &["down"]);
    let out = text(&demo);
    assert!(demo.status.success(), "{out}");
    assert!(out.contains("Verified OK"), "{out}");
    assert!(out.contains("public key: 0"), "{out}");
    let table = out.split("kubectl get signingrequests").nth(1).unwrap_or_default();
    assert!(table.contains("hello") && table.contains("Completed"), "{out}");
    assert!(down.status.success(), "{}", text(&down));
}

/// `examples/cross-namespace.yaml` on the sandbox (one operator for all
/// namespaces): a cluster in `vault` signs a request from `payments`, which
/// its policy names, and denies one from a namespace it does not.
#[test]
fn a_cluster_signs_for_another_namespace_only_when_its_policy_names_it() {
    use sha2::Digest;

    let (_tmp, dir) = sandbox_dir();
    let (root, fixture) = (repo(), torcus_e2e::testing::primes_fixture());
    let aux = torcus_e2e::testing::aux_fixture();
    let up = sandbox(
        &dir,
        &["up", "--test-primes-fixture", fixture.to_str().unwrap(), "--test-aux-fixture", aux.to_str().unwrap()],
    );
    assert!(up.status.success(), "{}", text(&up));
    let kubectl = |args: &[&str], stdin: Option<&str>| {
        use std::io::Write;
        let mut child = Command::new(dir.join("bin/kubectl"))
            .arg("--kubeconfig")
            .arg(dir.join("kubeconfig"))
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.unwrap_or_default().as_bytes()).unwrap();
        drop(input);
        child.wait_with_output().unwrap()
    };
    let run = |args: &[&str], stdin: Option<&str>| {
        let out = kubectl(args, stdin);
        assert!(out.status.success(), "kubectl {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let checks = || {
        let example = root.join("examples/cross-namespace.yaml");
        run(&["apply", "-f", example.to_str().unwrap()], None);
        let intruder = r#"
apiVersion: v1
kind: Namespace
metadata: {name: intruder}
---
apiVersion: mpc.torcus.io/v1alpha1
kind: SigningRequest
metadata: {name: invoice-43, namespace: intruder}
spec: {cluster: shared, clusterNamespace: vault, payload: "696e766f696365203433", hash: sha256}
"#;
        run(&["apply", "-f", "-"], Some(intruder));
        run(
            &["wait", "-n", "intruder", "--for=jsonpath={.status.phase}=Denied", "sr/invoice-43", "--timeout=60s"],
            None,
        );
        let reason = run(&["get", "-n", "intruder", "sr/invoice-43", "-o", "jsonpath={.status.reason}"], None);
        assert!(reason.starts_with("allowed-namespaces: "), "{reason}");

        run(
            &["wait", "-n", "payments", "--for=jsonpath={.status.phase}=Completed", "sr/invoice-42", "--timeout=600s"],
            None,
        );
        let key = run(&["get", "-n", "vault", "mpc/shared", "-o", "jsonpath={.status.keys[0].publicKey}"], None);
        let status = run(&["get", "-n", "payments", "sr/invoice-42", "-o", "jsonpath={.status}"], None);
        let status: serde_json::Value = serde_json::from_str(&status).unwrap();
        assert_eq!(status["publicKey"], key.as_str(), "signed with the vault cluster's key");
        // libsecp256k1, not the k256 the operator checks with.
        let signature = &status["signature"];
        let field = |name: &str| signature[name].as_str().unwrap_or_default().to_owned();
        let digest: [u8; 32] = sha2::Sha256::digest(b"invoice 42").into();
        let recovery_id = u8::try_from(signature["recoveryId"].as_u64().unwrap()).unwrap();
        torcus_e2e::independent::verify(&digest, &key, &field("r"), &field("s"), &field("der"), recovery_id)
            .expect("the signature verifies under the cluster's key");
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(checks));
    let down = sandbox(&dir, &["down"]);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    assert!(down.status.success(), "{}", text(&down));
}
