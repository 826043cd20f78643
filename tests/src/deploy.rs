//! The deployment files (packaging/, deploy/) as the tests read them.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use serde_json::Value;

pub const UNIT: &str = "packaging/api-guard.service";
pub const ENV_FILE: &str = "packaging/api-guard.default";
pub const DAEMONSET: &str = "deploy/kubernetes/daemonset.yaml";
pub const PROMETHEUS: &str = "deploy/prometheus/prometheus.yml";
pub const PROMETHEUS_K8S: &str = "deploy/prometheus/prometheus-kubernetes.yml";
pub const RULES: &str = "deploy/prometheus/api-guard.rules.yml";
pub const RULES_TEST: &str = "deploy/prometheus/api-guard.rules.test.yml";
pub const DASHBOARD: &str = "deploy/grafana/api-guard.json";

/// The workspace's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

/// A file of the workspace, by its path from the root.
pub fn read(rel: &str) -> Result<String> {
    fs::read_to_string(repo().join(rel)).with_context(|| format!("cannot read {rel}"))
}

/// Every PromQL expression (`expr`) of a Grafana dashboard's panels.
pub fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(e)) = m.get("expr") {
                    out.push(e.clone());
                }
                m.values().for_each(|v| walk(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut exprs = Vec::new();
    walk(&dashboard["panels"], &mut exprs);
    exprs
}

/// The metric names a PromQL expression uses: the `api_guard_*` ones and `up`
/// (words outside quoted label values).
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in expr.chars().chain([' ']) {
        if !quoted && (c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            word.push(c);
            continue;
        }
        if word.starts_with("api_guard_") || word == "up" {
            names.insert(word.clone());
        } else if word.starts_with("http_server_") {
            // OpenTelemetry-named histograms: the family, not its series.
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| word.strip_suffix(s))
                .unwrap_or(&word);
            names.insert(family.to_string());
        }
        word.clear();
        if c == '"' {
            quoted = !quoted;
        }
    }
    names
}

/// A dashboard expression with Grafana's variables as a test sets them: every
/// instance, and `rate_interval` for `$__rate_interval`.
pub fn with_grafana_vars(expr: &str, rate_interval: &str) -> String {
    expr.replace("$__rate_interval", rate_interval)
        .replace("$instance", ".*")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_skip_functions_labels_and_values() {
        let e = r#"sum by (verdict) (rate(api_guard_requests_total{job="api-guard", verdict=~"up|api_guard_x"}[1m])) / up"#;
        let names: Vec<String> = metric_names(e).into_iter().collect();
        assert_eq!(names, ["api_guard_requests_total", "up"]);
    }
}
