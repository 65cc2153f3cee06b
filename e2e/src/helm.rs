//! Helm for the chart tests: the upstream `helm` command, built from its Go
//! module by `e2e/helm/build.sh` (cached in `.cache/helm/`) the first time it
//! is asked for, like the control plane.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;

/// The Helm binary: `TORCUS_HELM_BIN` if set, otherwise built (or found up
/// to date) by `e2e/helm/build.sh`.
pub fn binary() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("TORCUS_HELM_BIN") {
        return Ok(bin.into());
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("helm/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    anyhow::ensure!(out.status.success(), "{} failed; is Go installed?", script.display());
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

/// `helm`, ready for arguments, with its cache, configuration and data
/// folders in `home` so that it neither reads nor writes the user's.
pub fn command(home: &Path) -> anyhow::Result<Command> {
    let mut c = Command::new(binary()?);
    for (var, dir) in [("HELM_CACHE_HOME", "cache"), ("HELM_CONFIG_HOME", "config"), ("HELM_DATA_HOME", "data")] {
        c.env(var, home.join(dir));
    }
    // A kubeconfig of the environment is none of a chart test's business.
    c.env("KUBECONFIG", home.join("no-kubeconfig"));
    Ok(c)
}

/// The chart in the repository, `charts/torcus`.
pub fn chart_dir() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/torcus");
    path.canonicalize().unwrap_or(path)
}
