# Sourced by scripts/build-images.sh and .ci/run: makes the environment of a
# cargo build nested in another (a test, CI's linted test build) that of a
# plain shell, so two such builds share their artifacts and nothing of the
# caller's changes what is compiled. Dropped: what cargo and rustup set for
# test processes (CARGO_*, LD_LIBRARY_PATH, the toolchain pin), and what
# changes the compile (RUSTFLAGS, a rustc or a wrapper such as CI's
# clippy-driver, a target or target directory of its own). Kept: where
# crates come from (CARGO_HOME, registries, network and HTTP settings) and
# the job count. torcus_node::testing::shell_cargo (node/src/testing.rs)
# keeps the same list for the tests' builds.
while read -r name; do
  case "$name" in
    CARGO_HOME | CARGO_REGISTRIES_* | CARGO_NET_* | CARGO_HTTP_* | CARGO_BUILD_JOBS) ;;
    CARGO | CARGO_* | RUSTFLAGS | RUSTDOCFLAGS | RUSTC | RUSTDOC | RUSTC_WRAPPER | RUSTC_WORKSPACE_WRAPPER \
      | CLIPPY_ARGS | RUSTUP_TOOLCHAIN | RUSTUP_TOOLCHAIN_SOURCE | RUST_RECURSION_COUNT | LD_LIBRARY_PATH) unset "$name" ;;
  esac
done < <(compgen -e)
