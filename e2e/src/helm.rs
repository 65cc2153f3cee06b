//! Helm for the chart tests: the upstream `helm` command, built from its Go
//! module by `e2e/helm/build.sh` (cached in `.cache/helm/`) the first time it
//! is asked for, like the control plane; and the metric names the chart's
//! alerts and dashboard query, for the tests that check they are exported.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;

/// The Helm binary: `TORCUS_HELM_BIN` if set, otherwise built (or found up
/// to date) by `e2e/helm/build.sh`.
pub fn binary() -> anyhow::Result<PathBuf> {
    crate::process::go_tool("TORCUS_HELM_BIN", "helm/build.sh")
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

/// Every `torcus_…` metric name the chart's alert rules
/// (`templates/prometheusrule.yaml`) and its Grafana dashboard
/// (`files/dashboards/torcus.json`) query, exactly as they write it: a
/// histogram appears as its `_bucket`, `_sum` or `_count` series.
///
/// Read from the chart's sources, so it needs no Helm: the rules' `expr`
/// blocks hold no template that yields a metric name (the chart test
/// compares these names with those of the rendered PrometheusRule).
pub fn chart_metric_names() -> anyhow::Result<BTreeSet<String>> {
    let rules_path = chart_dir().join("templates/prometheusrule.yaml");
    let rules = std::fs::read_to_string(&rules_path).with_context(|| format!("reading {}", rules_path.display()))?;
    let alert_exprs = rule_exprs(&rules);
    anyhow::ensure!(!alert_exprs.is_empty(), "no `expr:` in {}", rules_path.display());

    let dashboard_path = chart_dir().join("files/dashboards/torcus.json");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&dashboard_path).with_context(|| format!("reading {}", dashboard_path.display()))?,
    )
    .with_context(|| format!("parsing {}", dashboard_path.display()))?;
    let mut dashboard_exprs = Vec::new();
    collect_exprs(&dashboard, &mut dashboard_exprs);
    anyhow::ensure!(!dashboard_exprs.is_empty(), "no query `expr` in {}", dashboard_path.display());

    Ok(alert_exprs.iter().chain(&dashboard_exprs).flat_map(|e| metric_names(e)).collect())
}

/// The `torcus_…` metric names in a PromQL expression.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("torcus_") {
        let start = i + at;
        let boundary = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = expr[start..]
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .map_or(expr.len(), |n| start + n);
        if boundary {
            names.insert(expr[start..end].to_owned());
        }
        i = end;
    }
    names
}

/// The `expr:` values of a rule file (or its Helm template): a block
/// scalar (`expr: |`) runs while lines are indented deeper than its key.
fn rule_exprs(rules: &str) -> Vec<String> {
    let indent = |line: &str| line.len() - line.trim_start().len();
    let mut exprs = Vec::new();
    let mut lines = rules.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(value) = line.trim_start().strip_prefix("expr:") else { continue };
        let value = value.trim();
        if value.starts_with('|') || value.starts_with('>') {
            let key_indent = indent(line);
            let mut block = String::new();
            while let Some(next) = lines.next_if(|l| l.trim().is_empty() || indent(l) > key_indent) {
                block.push_str(next.trim());
                block.push('\n');
            }
            exprs.push(block);
        } else {
            exprs.push(value.to_owned());
        }
    }
    exprs
}

/// Every `expr` of a Grafana dashboard's targets.
fn collect_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::String(expr)) = map.get("expr") {
                out.push(expr.clone());
            }
            map.values().for_each(|v| collect_exprs(v, out));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}
