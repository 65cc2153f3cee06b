//! The `torcus-node` binary pods of `torcus-node` images run: found next to
//! the test executable, or built with the test-only features.

use super::*;

/// The `torcus-node` binary: `$TORCUS_NODE_BIN` if set, else next to the
/// current executable or in its parent folder (test binaries live in
/// `target/<profile>/deps/`), else built once with cargo into the same
/// target folder and profile.
pub fn node_binary() -> anyhow::Result<PathBuf> {
    if let Some(bin) = named_by("TORCUS_NODE_BIN")? {
        return Ok(bin);
    }
    let (dirs, profile_dir) = binary_dirs()?;
    let find = || dirs.iter().map(|d| d.join("torcus-node")).find(|p| p.is_file());
    if let Some(bin) = find() {
        return Ok(bin);
    }
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    BUILT.get_or_init(|| build_node(&profile_dir).map_err(|e| format!("{e:#}"))).clone().map_err(anyhow::Error::msg)?;
    find()
        .with_context(|| format!("torcus-node was built but is not in {}; set TORCUS_NODE_BIN", profile_dir.display()))
}

/// The `torcus-operator` binary: `$TORCUS_OPERATOR_BIN` if set, else next
/// to the current executable or in its parent folder, where `cargo test
/// --workspace` builds it (the operator's own integration tests need it).
pub fn operator_binary() -> anyhow::Result<PathBuf> {
    if let Some(bin) = named_by("TORCUS_OPERATOR_BIN")? {
        return Ok(bin);
    }
    let (dirs, profile_dir) = binary_dirs()?;
    dirs.iter().map(|d| d.join("torcus-operator")).find(|p| p.is_file()).with_context(|| {
        format!(
            "no torcus-operator in {}: run `cargo build -p torcus-operator` or set TORCUS_OPERATOR_BIN",
            profile_dir.display()
        )
    })
}

/// The binary environment variable `variable` names, if it is set: it
/// must be a file.
fn named_by(variable: &str) -> anyhow::Result<Option<PathBuf>> {
    let Some(bin) = std::env::var_os(variable).map(PathBuf::from) else { return Ok(None) };
    anyhow::ensure!(bin.is_file(), "{variable}={} is not a file", bin.display());
    Ok(Some(bin))
}

/// Where the workspace's binaries are, next to the current (test)
/// executable: its folder and the profile folder above `deps/`; and that
/// profile folder.
fn binary_dirs() -> anyhow::Result<([PathBuf; 2], PathBuf)> {
    let exe = std::env::current_exe().context("locating the current executable")?;
    let dir = exe.parent().context("the current executable has no folder")?.to_owned();
    let profile_dir = if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().context("deps folder without a parent")?.to_owned()
    } else {
        dir.clone()
    };
    Ok(([dir, profile_dir.clone()], profile_dir))
}

pub(super) fn build_node(profile_dir: &Path) -> anyhow::Result<()> {
    let profile = profile_dir.file_name().and_then(|n| n.to_str()).context("profile folder has no name")?;
    let target_dir = profile_dir.parent().context("profile folder has no parent")?;
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cargo = std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    // With the test-only primes fixture flag: the harness hands nodes the
    // fixture whenever a test asks for it.
    cargo.current_dir(&workspace).args(["build", "-p", "torcus-node", "--bin", "torcus-node", "--features"]);
    cargo.args(["test-fixtures,test-hooks", "--target-dir"]);
    cargo.arg(target_dir);
    match profile {
        "debug" => {}
        "release" => {
            cargo.arg("--release");
        }
        other => {
            cargo.args(["--profile", other]);
        }
    }
    eprintln!("torcus-node not found next to the executable; building it ({profile})");
    let status = cargo.stdin(Stdio::null()).stdout(Stdio::inherit()).stderr(Stdio::inherit()).status();
    let status = status.context("running cargo to build torcus-node; set TORCUS_NODE_BIN instead")?;
    anyhow::ensure!(status.success(), "cargo build -p torcus-node failed ({status}); set TORCUS_NODE_BIN instead");
    Ok(())
}
