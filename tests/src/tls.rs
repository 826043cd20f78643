//! nginx serving the API over TLS (Debian's nginx-light, linked against the
//! system's libssl.so.3), with a certificate and key the test makes with
//! `openssl`, and a master process with a worker (so a reload brings new
//! workers). Stopped, and its files removed, on drop.

use std::{
    fs,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use tempfile::TempDir;

use crate::{
    PREFIX,
    netns::Netns,
    nginx::{AccessLine, parse_access_line},
    process::{kill, wait_until},
};

pub struct TlsNginx {
    child: Child,
    dir: TempDir,
    ns_name: String,
}

impl TlsNginx {
    /// nginx with TLS on `port` (IPv4 and IPv6).
    pub fn start(ns: &Netns, port: u16) -> Result<Self> {
        Self::start_with(ns, port, false)
    }

    /// With `http2`, nginx offers HTTP/2 by ALPN.
    pub fn start_with(ns: &Netns, port: u16, http2: bool) -> Result<Self> {
        Self::start_full(ns, port, http2, None)
    }

    /// With the server's `location` blocks given (replacing the one that
    /// answers 200 to everything).
    pub fn start_locations(ns: &Netns, port: u16, locations: &str) -> Result<Self> {
        Self::start_full(ns, port, false, Some(locations))
    }

    fn start_full(ns: &Netns, port: u16, http2: bool, locations: Option<&str>) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix(PREFIX).tempdir()?;
        let d = dir.path();
        let out = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=api.test",
            ])
            .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
            .arg("-keyout")
            .arg(d.join("key.pem"))
            .arg("-out")
            .arg(d.join("cert.pem"))
            .output()
            .context("cannot run openssl (cargo xtask setup installs it)")?;
        if !out.status.success() {
            bail!(
                "openssl req failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        fs::create_dir_all(d.join("www"))?;
        fs::write(d.join("www/ok.txt"), "ok\n")?;
        fs::write(d.join("nginx.conf"), config(d, port, http2, locations))?;
        let child = ns
            .command(&binary())
            .arg("-c")
            .arg(d.join("nginx.conf"))
            .arg("-p")
            .arg(d)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start nginx")?;
        let mut nginx = Self {
            child,
            dir,
            ns_name: ns.name().to_string(),
        };
        let filter = format!("sport = :{port}");
        wait_until(Duration::from_secs(10), "nginx to listen", || {
            if let Some(status) = nginx.child.try_wait()? {
                bail!("nginx exited ({status}): {}", nginx.error_log());
            }
            Ok(!ns.exec("ss", &["-Hltn", &filter])?.trim().is_empty())
        })?;
        wait_until(Duration::from_secs(10), "an nginx worker", || {
            Ok(!nginx.workers().is_empty())
        })?;
        Ok(nginx)
    }

    pub fn master(&self) -> u32 {
        self.child.id()
    }

    /// The worker processes now (children of the master).
    pub fn workers(&self) -> Vec<u32> {
        let path = format!("/proc/{0}/task/{0}/children", self.child.id());
        fs::read_to_string(path)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// `nginx -s reload`: new workers take over, the old ones finish.
    pub fn reload(&self) -> Result<()> {
        let before = self.workers();
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns_name, &binary()])
            .arg("-c")
            .arg(self.dir.path().join("nginx.conf"))
            .arg("-p")
            .arg(self.dir.path())
            .args(["-s", "reload"])
            .output()?;
        if !out.status.success() {
            bail!("nginx -s reload: {}", String::from_utf8_lossy(&out.stderr));
        }
        wait_until(Duration::from_secs(20), "new nginx workers", || {
            let now = self.workers();
            Ok(!now.is_empty() && now.iter().all(|w| !before.contains(w)))
        })
    }

    fn error_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// Every request nginx has logged so far.
    pub fn access_log(&self) -> Result<Vec<AccessLine>> {
        let text = fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        text.lines().map(parse_access_line).collect()
    }

    /// Requests nginx served (status 200) to `client`, and the distinct
    /// connections they came on (nginx's `$connection`, logged beside).
    pub fn served(&self, client: &str) -> Result<(usize, usize)> {
        let text = fs::read_to_string(self.dir.path().join("conns.log")).unwrap_or_default();
        let mut conns = std::collections::HashSet::new();
        let mut served = 0;
        for line in text.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            let [addr, conn, status] = f[..] else {
                bail!("unexpected line {line:?}");
            };
            if addr == client && status == "200" {
                served += 1;
                conns.insert(conn.to_string());
            }
        }
        Ok((served, conns.len()))
    }

    /// The certificate clients trust.
    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }
}

impl Drop for TlsNginx {
    fn drop(&mut self) {
        let workers = self.workers();
        kill(&mut self.child);
        for w in workers {
            // SAFETY: kill(2) on a pid; a stale one is at worst ESRCH.
            unsafe { libc::kill(w as i32, libc::SIGKILL) };
        }
    }
}

fn binary() -> String {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("nginx")
        .to_string()
}

fn config(dir: &std::path::Path, port: u16, http2: bool, locations: Option<&str>) -> String {
    let d = dir.display();
    let h2 = if http2 { " http2" } else { "" };
    let locations = match locations {
        Some(l) => l.to_string(),
        None => format!(
            r#"        location / {{
            default_type text/plain;
            root {d}/www;
            try_files /ok.txt =404;
        }}
"#
        ),
    };
    format!(
        r#"# Written by the api-guard test harness.
daemon off;
master_process on;
worker_processes 1;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format harness '$remote_addr $server_port $request_method $request_uri $status';
    log_format conns '$remote_addr $connection $status';
    access_log {d}/access.log harness;
    access_log {d}/conns.log conns;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 100000;
    server {{
        listen {port} ssl{h2};
        listen [::]:{port} ssl{h2};
        ssl_certificate {d}/cert.pem;
        ssl_certificate_key {d}/key.pem;
{locations}    }}
}}
"#
    )
}
