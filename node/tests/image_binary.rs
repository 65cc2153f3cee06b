//! The test-only switches, in the binary `Dockerfile.node` builds: built here
//! with the Dockerfile's exact command, as `scripts/build-images.sh` builds
//! it, that binary has no flags for the fixtures (safe primes, aux info) or
//! the test hooks, and refuses to start when one's environment variable is
//! set. (`e2e/tests/workload_images.rs` checks the same of the binary inside
//! the built image.)
//!
//! This is a test binary of its own: the release build takes both cores for
//! minutes, and cargo runs test binaries one after another, so no test that
//! waits on a node's readiness runs beside it.

use std::path::{Path, PathBuf};
use std::process::Stdio;

/// The release binary of `torcus-node` as `Dockerfile.node` builds it:
/// `cargo build --release --locked -p torcus-node --bin torcus-node`, run
/// in the workspace exactly as `scripts/build-images.sh` runs it (reused
/// when that is up to date, as after `.ci/run` built it beside the tests).
fn product_binary() -> PathBuf {
    let dockerfile = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Dockerfile.node")).unwrap();
    let command = "cargo build --release --locked -p torcus-node --bin torcus-node";
    assert!(dockerfile.contains(command), "Dockerfile.node builds with `{command}`");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap();
    // The script's environment (its list is `shell_cargo`'s).
    let mut cargo = torcus_node::testing::shell_cargo();
    let target = workspace.join("target/image");
    cargo.env("CARGO_TARGET_DIR", &target);
    let status = cargo.current_dir(&workspace).args(command.split(' ').skip(1)).stdin(Stdio::null()).status().unwrap();
    assert!(status.success(), "{command}: {status}");
    target.join("release/torcus-node")
}

#[test]
fn the_image_binary_refuses_the_test_fixtures_and_hooks() {
    torcus_node::testing::assert_refuses_test_switches(&product_binary());
}
