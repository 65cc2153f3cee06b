//! The `torcus-operator` binary as a user starts it: flags it documents,
//! bad flags refused with a message, no API server a clean error. (Building
//! this test also builds the binary, which the e2e tests run as a process.)

use std::process::Command;

fn operator() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_torcus-operator"));
    command.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
    command
}

#[test]
fn help_lists_the_flags_the_chart_sets() {
    let out = operator().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in ["--namespace", "--node-image", "--registry-url", "--http-addr", "--leader-election", "--lease-name"] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}

#[test]
fn a_malformed_flag_is_refused_with_its_name() {
    let out = operator().args(["--http-addr", "not-an-address"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("--http-addr") && err.contains("not-an-address"), "{err}");
}

#[test]
fn no_api_server_to_reach_is_an_error_not_a_panic() {
    let dir = std::env::temp_dir().join(format!("torcus-operator-cli-{}", std::process::id()));
    let out = operator()
        .env("KUBECONFIG", dir.join("missing-kubeconfig"))
        .env("HOME", &dir)
        .args(["--http-addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    // Says where it looked: in the cluster, and the kubeconfig it was given.
    assert!(err.contains("in-cluster") && err.contains("missing-kubeconfig"), "{err}");
}
