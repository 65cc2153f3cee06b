//! The test-only switches, in the binary `Dockerfile.node` builds: built here
//! with the Dockerfile's exact command, that binary has no flags for the
//! fixtures (safe primes, aux info) and refuses to start when a fixture's or
//! a test hook's environment variable is set. A node with public primes or aux
//! info would hold a key share anyone can recover; one with the corrupting
//! hook would break every session it joins.
//!
//! This is a test binary of its own: the release build takes both cores for
//! minutes, and cargo runs test binaries one after another, so no test that
//! waits on a node's readiness runs beside it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The release binary of `torcus-node` as `Dockerfile.node` builds it:
/// `cargo build --release --locked -p torcus-node --bin torcus-node`, run
/// here in the workspace (reused when it is up to date, as after `.ci/run`
/// built it up front).
fn product_binary() -> PathBuf {
    let dockerfile = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Dockerfile.node")).unwrap();
    let command = "cargo build --release --locked -p torcus-node --bin torcus-node";
    assert!(dockerfile.contains(command), "Dockerfile.node builds with `{command}`");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // As a shell runs it (and scripts/build-images.sh, before this test in
    // CI): without what cargo sets for test processes, which build scripts
    // may watch, so that the build is the one already made, not redone.
    let mut cargo = Command::new("cargo");
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let kept = ["CARGO_HOME", "CARGO_TARGET_DIR"].contains(&name.as_ref())
            || ["CARGO_BUILD_", "CARGO_REGISTRIES_", "CARGO_NET_", "CARGO_HTTP_"].iter().any(|p| name.starts_with(p));
        let injected = name.starts_with("CARGO")
            || ["RUSTUP_TOOLCHAIN", "RUSTUP_TOOLCHAIN_SOURCE", "RUST_RECURSION_COUNT", "LD_LIBRARY_PATH"]
                .contains(&name.as_ref());
        if injected && !kept {
            cargo.env_remove(name.as_ref());
        }
    }
    let status = cargo.current_dir(&workspace).args(command.split(' ').skip(1)).stdin(Stdio::null()).status().unwrap();
    assert!(status.success(), "{command}: {status}");
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace.join("target"));
    target.join("release/torcus-node")
}

#[test]
fn the_image_binary_refuses_the_test_fixtures_and_hooks() {
    let binary = product_binary();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/primes.json");
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], env: Option<(&str, &Path)>| {
        let mut command = Command::new(&binary);
        command.args(args).current_dir(dir.path()).env_remove("TORCUS_TEST_PRIMES_FIXTURE");
        if let Some((key, value)) = env {
            command.env(key, value);
        }
        let out = command.output().unwrap();
        (out.status, String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    let fixture_flag = format!("--test-primes-fixture={}", fixture.display());
    let (status, out) = run(&["serve", "--party-index=0", &fixture_flag], None);
    assert_eq!(status.code(), Some(2), "clap refuses an unknown flag: {out}");
    assert!(out.contains("unexpected argument '--test-primes-fixture"), "{out}");

    let aux = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/aux-info.json");
    let (status, out) = run(&["serve", "--party-index=0", &format!("--test-aux-fixture={}", aux.display())], None);
    assert_eq!(status.code(), Some(2), "clap refuses an unknown flag: {out}");
    assert!(out.contains("unexpected argument '--test-aux-fixture"), "{out}");

    // With the variables instead: refused before anything is read or bound
    // (the configuration named here does not even exist).
    for (variable, file) in [("TORCUS_TEST_PRIMES_FIXTURE", &fixture), ("TORCUS_TEST_AUX_FIXTURE", &aux)] {
        let (status, out) = run(
            &["serve", "--party-index=0", "--config=missing.json", "--tls-dir=.", "--data-dir=."],
            Some((variable, file)),
        );
        assert!(!status.success(), "{out}");
        assert!(out.contains(&format!("{variable} is set, but this build")), "{out}");
        assert!(out.contains("does not take test fixtures"), "{out}");
    }

    // The hooks that make a node tamper with its signing messages or run
    // its grant clock off: no flag, and their variables stop the node.
    for (flag, variable) in [
        ("--test-corrupt-signing=1", torcus_node::TEST_CORRUPT_ENV),
        ("--test-misbehaviour=replay", torcus_node::TEST_MISBEHAVIOUR_ENV),
        ("--test-clock-offset-secs=100", torcus_node::TEST_CLOCK_OFFSET_ENV),
    ] {
        let (status, out) = run(&["serve", "--party-index=0", flag], None);
        assert_eq!(status.code(), Some(2), "clap refuses an unknown flag: {out}");
        let name = flag.split('=').next().unwrap_or_default();
        assert!(out.contains(&format!("unexpected argument '{name}")), "{out}");
        let (status, out) = run(
            &["serve", "--party-index=0", "--config=missing.json", "--tls-dir=.", "--data-dir=."],
            Some((variable, Path::new("1"))),
        );
        assert!(!status.success(), "{out}");
        assert!(out.contains(&format!("{variable} is set, but this build")), "{out}");
        assert!(out.contains("has no test hooks"), "{out}");
    }
}
