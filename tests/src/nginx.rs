//! A real nginx (Debian's package) serving a tiny API inside a namespace.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result};
use tempfile::TempDir;

use crate::{
    PREFIX,
    cgroup::TestCgroup,
    netns::Netns,
    process::{kill, wait_until},
};

/// One line of nginx's access log (the format the harness configures).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLine {
    pub client: String,
    pub server_port: u16,
    pub method: String,
    pub uri: String,
    pub status: u16,
}

/// nginx listening on `ports` (IPv4 and IPv6) and answering 200 "ok" to everything.
/// It runs in a cgroup of its own, where the daemon's connection tracker is
/// attached (`--cgroup`): it sees nginx's sockets and nothing of the host's.
/// Stopped, and its files and cgroup removed, on drop.
pub struct Nginx {
    child: Child,
    dir: TempDir,
    // Dropped last: removable once nginx is gone.
    cgroup: TestCgroup,
}

impl Nginx {
    pub fn start(ns: &Netns, ports: &[u16]) -> Result<Self> {
        Self::start_with(ns, ports, None)
    }

    /// nginx with `limit_req` per client address: `rate` requests a second with
    /// bursts of `burst`, answered 429 beyond (the usual proxy-side limiter).
    pub fn start_with(ns: &Netns, ports: &[u16], limit_req: Option<(u32, u32)>) -> Result<Self> {
        Self::start_config(ns, ports, &[], limit_req, false, None, "")
    }

    /// nginx behind a load balancer: every listen takes a PROXY protocol
    /// header (`listen ... proxy_protocol`), and the access log's client is the
    /// one the header names (`$proxy_protocol_addr`), as nginx reads it. The
    /// `tls_ports` serve HTTPS with a self-signed certificate made here by
    /// openssl (the header comes before the TLS ClientHello).
    pub fn start_proxy_protocol(ns: &Netns, ports: &[u16], tls_ports: &[u16]) -> Result<Self> {
        Self::start_config(ns, ports, tls_ports, None, true, None, "")
    }

    /// nginx whose server block has `locations` (nginx `location` blocks)
    /// instead of the harness's answer-200-to-everything one.
    pub fn start_locations(ns: &Netns, ports: &[u16], locations: &str) -> Result<Self> {
        Self::start_config(ns, ports, &[], None, false, Some(locations), "")
    }

    /// nginx as an L7 reverse proxy on `port` in front of `upstream`: each
    /// request forwarded with `X-Forwarded-For: $proxy_add_x_forwarded_for`
    /// over HTTP/1.1. `keepalive`: idle upstream connections kept (0: a new
    /// one per request), so that clients' requests share (are pooled on) one
    /// upstream connection.
    pub fn start_l7_proxy(
        ns: &Netns,
        port: u16,
        upstream: std::net::SocketAddr,
        keepalive: u32,
    ) -> Result<Self> {
        let keep = match keepalive {
            0 => String::new(),
            k => format!(" keepalive {k};"),
        };
        let http = format!("    upstream api_upstream {{ server {upstream};{keep} }}\n");
        let location = r#"        location / {
            proxy_pass http://api_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }
"#;
        Self::start_config(ns, &[port], &[], None, false, Some(location), &http)
    }

    #[allow(clippy::too_many_arguments)]
    fn start_config(
        ns: &Netns,
        ports: &[u16],
        tls_ports: &[u16],
        limit_req: Option<(u32, u32)>,
        proxy_protocol: bool,
        locations: Option<&str>,
        http_extra: &str,
    ) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix(PREFIX).tempdir()?;
        let conf = dir.path().join("nginx.conf");
        if !tls_ports.is_empty() {
            crate::process::run(
                std::process::Command::new("openssl")
                    .args([
                        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    ])
                    .args(["-subj", "/CN=api"])
                    .arg("-keyout")
                    .arg(dir.path().join("key.pem"))
                    .arg("-out")
                    .arg(dir.path().join("cert.pem")),
            )
            .context("cannot make a certificate with openssl")?;
        }
        fs::write(
            &conf,
            config(
                dir.path(),
                ports,
                tls_ports,
                limit_req,
                proxy_protocol,
                locations,
                http_extra,
            ),
        )?;
        fs::create_dir_all(dir.path().join("www"))?;
        fs::write(dir.path().join("www/ok.txt"), "ok\n")?;
        let cgroup = TestCgroup::new("nginx")?;
        let mut cmd = ns.command(&nginx_binary());
        cgroup.enter_on_exec(&mut cmd)?;
        let child = cmd
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start nginx")?;
        let mut nginx = Self { child, dir, cgroup };
        for &port in ports.iter().chain(tls_ports) {
            let filter = format!("sport = :{port}");
            wait_until(Duration::from_secs(10), "nginx to listen", || {
                if let Some(status) = nginx.child.try_wait()? {
                    anyhow::bail!("nginx exited ({status}): {}", nginx.error_log());
                }
                Ok(!ns.exec("ss", &["-Hltn", &filter])?.trim().is_empty())
            })?;
        }
        Ok(nginx)
    }

    /// The nginx process (master_process off: the one process that serves).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// nginx's cgroup (for `--cgroup`).
    pub fn cgroup(&self) -> &Path {
        self.cgroup.path()
    }

    /// nginx's error log so far (for a failing test's message).
    pub fn error_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// Every request nginx has logged so far, with its timing (`timed.log`).
    pub fn timed_log(&self) -> Result<Vec<TimedLine>> {
        let text = fs::read_to_string(self.dir.path().join("timed.log")).unwrap_or_default();
        text.lines().map(parse_timed_line).collect()
    }

    /// Every request nginx has logged so far.
    pub fn access_log(&self) -> Result<Vec<AccessLine>> {
        let text = fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        text.lines().map(parse_access_line).collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

fn nginx_binary() -> String {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("nginx")
        .to_string()
}

fn config(
    dir: &Path,
    ports: &[u16],
    tls_ports: &[u16],
    limit_req: Option<(u32, u32)>,
    proxy_protocol: bool,
    locations: Option<&str>,
    http_extra: &str,
) -> String {
    let d = dir.display();
    let (zone, limit) = match limit_req {
        Some((rate, burst)) => (
            format!(
                "    limit_req_zone $binary_remote_addr zone=api:10m rate={rate}r/s;\n    limit_req_status 429;\n"
            ),
            format!("            limit_req zone=api burst={burst} nodelay;\n"),
        ),
        None => (String::new(), String::new()),
    };
    let pp = if proxy_protocol {
        " proxy_protocol"
    } else {
        ""
    };
    let mut listens: String = ports
        .iter()
        .map(|p| format!("        listen {p}{pp};\n        listen [::]:{p}{pp};\n"))
        .collect();
    for p in tls_ports {
        listens.push_str(&format!(
            "        listen {p} ssl{pp};\n        listen [::]:{p} ssl{pp};\n"
        ));
    }
    if !tls_ports.is_empty() {
        listens.push_str(&format!(
            "        ssl_certificate {d}/cert.pem;\n        ssl_certificate_key {d}/key.pem;\n",
            d = dir.display()
        ));
    }
    let client = if proxy_protocol {
        "$proxy_protocol_addr"
    } else {
        "$remote_addr"
    };
    let temp = |name: &str| -> PathBuf { dir.join(name) };
    let default_location = format!(
        r#"        location / {{
{limit}            default_type text/plain;
            # A file, not "return": return answers in the rewrite phase, before
            # limit_req (preaccess) would ever run.
            root {d}/www;
            try_files /ok.txt =404;
        }}
"#
    );
    let locations = locations.unwrap_or(&default_location);
    format!(
        r#"# Written by the api-guard test harness.
daemon off;
master_process off;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format harness '{client} $server_port $request_method $request_uri $status';
    access_log {d}/access.log harness;
    log_format timed '$remote_addr $remote_port $request_method $request_uri $status $request_time $connection $connection_requests';
    access_log {d}/timed.log timed;
    client_body_temp_path {body};
    proxy_temp_path {proxy};
    fastcgi_temp_path {fastcgi};
    uwsgi_temp_path {uwsgi};
    scgi_temp_path {scgi};
    keepalive_requests 100000;
{zone}{http_extra}    server {{
{listens}{locations}    }}
}}
"#,
        body = temp("body").display(),
        proxy = temp("proxy").display(),
        fastcgi = temp("fastcgi").display(),
        uwsgi = temp("uwsgi").display(),
        scgi = temp("scgi").display(),
    )
}

pub(crate) fn parse_access_line(line: &str) -> Result<AccessLine> {
    let f: Vec<&str> = line.split(' ').collect();
    let [client, port, method, uri, status] = f[..] else {
        anyhow::bail!("unexpected access log line {line:?}");
    };
    Ok(AccessLine {
        client: client.to_string(),
        server_port: port.parse()?,
        method: method.to_string(),
        uri: uri.to_string(),
        status: status.parse()?,
    })
}

/// One line of nginx's timed log: the request, its status and nginx's own
/// `$request_time` (first request byte read to the log write, in ms).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimedLine {
    pub client: String,
    pub client_port: u16,
    pub method: String,
    pub uri: String,
    pub status: u16,
    pub request_time_ms: u64,
    /// nginx's connection serial number, and the request's number on it (from 1).
    pub connection: u64,
    pub connection_requests: u64,
}

fn parse_timed_line(line: &str) -> Result<TimedLine> {
    let f: Vec<&str> = line.split(' ').collect();
    let [client, port, method, uri, status, time, conn, conn_req] = f[..] else {
        anyhow::bail!("unexpected timed log line {line:?}");
    };
    let (secs, millis) = time
        .split_once('.')
        .with_context(|| format!("request time {time:?}"))?;
    Ok(TimedLine {
        client: client.to_string(),
        client_port: port.parse()?,
        method: method.to_string(),
        uri: uri.to_string(),
        status: status.parse()?,
        request_time_ms: secs.parse::<u64>()? * 1000 + millis.parse::<u64>()?,
        connection: conn.parse()?,
        connection_requests: conn_req.parse()?,
    })
}
