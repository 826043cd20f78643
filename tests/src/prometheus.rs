//! A real Prometheus server (Debian's package) inside a namespace, listening on
//! loopback there, its configuration and storage in a temporary directory, and
//! queried through its HTTP API with curl inside the same namespace. Killed, and
//! its files removed, on drop. (prom.rs reads exposition text; this is the server.)

use std::{
    fs,
    path::Path,
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;
use tempfile::TempDir;

use crate::{
    PREFIX,
    netns::Netns,
    process::{kill, run, wait_until},
};

/// Where the server listens inside its namespace.
pub const ADDR: &str = "127.0.0.1:9090";

pub struct Prometheus {
    child: Child,
    ns: String,
    // Dropped after the process is killed (fields drop after `drop` runs).
    dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus in `ns` with `config` as its prometheus.yml and `files`
    /// (name, contents) beside it, such as the rule files it names.
    pub fn start(ns: &Netns, config: &str, files: &[(&str, &str)]) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix(PREFIX).tempdir()?;
        let conf = dir.path().join("prometheus.yml");
        fs::write(&conf, config)?;
        for (name, text) in files {
            ensure!(!name.contains('/'), "a file name, not a path: {name}");
            fs::write(dir.path().join(name), text)?;
        }
        let log = fs::File::create(dir.path().join("prometheus.log"))?;
        let child = ns
            .command(&binary())
            .arg(format!("--config.file={}", conf.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={ADDR}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start prometheus")?;
        let mut prom = Self {
            child,
            ns: ns.name().to_string(),
            dir,
        };
        wait_until(Duration::from_secs(30), "prometheus to be ready", || {
            if let Some(status) = prom.child.try_wait()? {
                bail!("prometheus exited ({status}): {}", prom.log());
            }
            Ok(prom.get("/-/ready").is_ok())
        })?;
        Ok(prom)
    }

    /// Prometheus's own log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// GET `path` with `params` (url-encoded); the body, or an error on a
    /// failed request or an HTTP error.
    fn get_with(&self, path: &str, params: &[(&str, &str)]) -> Result<String> {
        let url = format!("http://{ADDR}{path}");
        let mut args = vec![
            "netns".to_string(),
            "exec".into(),
            self.ns.clone(),
            "curl".into(),
            "-sS".into(),
            "--fail-with-body".into(),
            "--max-time".into(),
            "10".into(),
            "-G".into(),
            url,
        ];
        for (k, v) in params {
            args.extend(["--data-urlencode".into(), format!("{k}={v}")]);
        }
        run(std::process::Command::new("ip").args(&args))
    }

    fn get(&self, path: &str) -> Result<String> {
        self.get_with(path, &[])
    }

    /// An API call's `data`, after checking its status.
    fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value> {
        let body = self.get_with(path, params)?;
        let v: Value = serde_json::from_str(&body).with_context(|| format!("not JSON: {body}"))?;
        ensure!(v["status"] == "success", "{path} {params:?}: {body}");
        Ok(v["data"].clone())
    }

    /// An instant query's result vector (`/api/v1/query`).
    pub fn query(&self, expr: &str) -> Result<Vec<Value>> {
        let data = self.api("/api/v1/query", &[("query", expr)])?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// The single value of an instant query, None when it returned no series.
    pub fn value(&self, expr: &str) -> Result<Option<f64>> {
        let result = self.query(expr)?;
        match result.as_slice() {
            [] => Ok(None),
            [one] => {
                let v = one["value"][1].as_str().context("no value")?;
                Ok(Some(v.parse()?))
            }
            many => bail!("{expr} returned {} series: {many:?}", many.len()),
        }
    }

    /// A range query's series over the last `seconds`, one point a second
    /// (`/api/v1/query_range`).
    pub fn query_range(&self, expr: &str, seconds: u64) -> Result<Vec<Value>> {
        let end = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let (start, end) = ((end - seconds).to_string(), end.to_string());
        let data = self.api(
            "/api/v1/query_range",
            &[
                ("query", expr),
                ("start", &start),
                ("end", &end),
                ("step", "1"),
            ],
        )?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// The alerts pending or firing now (`/api/v1/alerts`).
    pub fn alerts(&self) -> Result<Vec<Value>> {
        let data = self.api("/api/v1/alerts", &[])?;
        Ok(data["alerts"].as_array().cloned().unwrap_or_default())
    }

    /// The scrape targets and their health (`/api/v1/targets`).
    pub fn targets(&self) -> Result<Vec<Value>> {
        let data = self.api("/api/v1/targets", &[])?;
        Ok(data["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

fn binary() -> String {
    ["/usr/bin/prometheus", "/usr/sbin/prometheus"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("prometheus")
        .to_string()
}
