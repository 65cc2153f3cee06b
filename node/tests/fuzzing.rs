//! Runs every cargo-fuzz target of `fuzz/` for a fixed time
//! (`TORCUS_FUZZ_SECONDS`, default 15) from its seed corpus, on nightly
//! with libFuzzer and AddressSanitizer. New inputs go to a temporary
//! corpus, not into the repository. A crash fails the test and leaves its
//! input in `fuzz/artifacts/<target>/`: fix the bug, then move the input to
//! `fuzz/regressions/<target>/`, where `fuzz_corpora.rs` replays it on
//! every run. CI installs cargo-fuzz and sets `TORCUS_REQUIRE_FUZZ`, so
//! there a missing toolchain fails; elsewhere the test says it did not run.
//!
//! It lives in `torcus-node` (whose tests run after the end-to-end ones) so
//! that CI can build the targets beforehand, in the background at low
//! priority beside the end-to-end tests; `cargo fuzz build` here then finds
//! them built, as run from a shell (see `fuzz_command`).

use std::path::Path;

#[test]
fn every_fuzz_target_runs_clean_for_its_time() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    // `shell_cargo` runs the rustup proxy on the PATH, which understands
    // `+nightly` (`$CARGO` is the stable toolchain's own cargo, which does
    // not).
    let fuzz_command = || {
        // As from a shell (`.ci/run` builds the targets beforehand from
        // one): the outer cargo's toolchain must not pin the inner one to
        // stable, and nothing build scripts watch may differ.
        let mut command = torcus_node::testing::shell_cargo();
        command.current_dir(&fuzz).args(["+nightly", "fuzz"]);
        command
    };
    let available = fuzz_command().arg("--version").output().is_ok_and(|o| o.status.success());
    if !available {
        assert!(
            std::env::var_os("TORCUS_REQUIRE_FUZZ").is_none(),
            "TORCUS_REQUIRE_FUZZ is set but `cargo +nightly fuzz` does not run: install cargo-fuzz and a nightly toolchain"
        );
        eprintln!("NOT RUN: fuzzing needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`)");
        return;
    }
    let seconds = std::env::var("TORCUS_FUZZ_SECONDS").unwrap_or_else(|_| "15".into());
    let listed = fuzz_command().arg("list").output().unwrap();
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let targets: Vec<String> = String::from_utf8(listed.stdout).unwrap().lines().map(str::to_owned).collect();
    // Every check the corpus replay runs has its target (the protocol
    // message target has no stable check: it needs the MPC engine).
    for (name, _) in torcus_contract::fuzz_checks::TARGETS {
        assert!(targets.iter().any(|t| t == name), "fuzz/ has no target {name}: {targets:?}");
    }
    // Every target built first (one cargo build for all), then run two at
    // a time: libFuzzer runs a target on one core, and CI has two.
    let built = fuzz_command().arg("build").output().unwrap();
    assert!(built.status.success(), "cargo fuzz build failed:\n{}", String::from_utf8_lossy(&built.stderr));
    let run = |target: &str| {
        let scratch = tempfile::tempdir().unwrap();
        fuzz_command()
            .args(["run", target])
            .arg(scratch.path())
            .arg(fuzz.join("corpus").join(target))
            .args(["--", &format!("-max_total_time={seconds}"), "-rss_limit_mb=1024", "-print_final_stats=1"])
            .output()
            .unwrap()
    };
    for pair in targets.chunks(2) {
        std::thread::scope(|scope| {
            let running: Vec<_> = pair.iter().map(|target| scope.spawn(|| run(target))).collect();
            for (target, running) in pair.iter().zip(running) {
                let out = running.join().expect("a fuzz run's thread");
                let log = String::from_utf8_lossy(&out.stderr);
                assert!(out.status.success(), "fuzz target {target} failed:\n{log}");
                let runs = log.lines().find(|l| l.starts_with("stat::number_of_executed_units:")).unwrap_or("no stats");
                eprintln!("{target}: {runs}");
            }
        });
    }
}
