//! A real HAProxy (Debian's package) in TCP mode inside a namespace: an L4 load
//! balancer that keeps no client address in the packets and names each client
//! in a PROXY protocol v2 header (`send-proxy-v2`) to the server behind it.

use std::{
    fs,
    net::SocketAddr,
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result};
use tempfile::TempDir;

use crate::{
    PREFIX,
    netns::Netns,
    process::{kill, wait_until},
};

/// HAProxy forwarding each `(listen, server)` pair, with a PROXY v2 header on
/// every connection to the server. Stopped, and its files removed, on drop.
pub struct Haproxy {
    child: Child,
    _dir: TempDir,
}

impl Haproxy {
    pub fn start(ns: &Netns, routes: &[(SocketAddr, SocketAddr)]) -> Result<Self> {
        let binary = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .context("haproxy is not installed (cargo xtask setup installs it)")?;
        let dir = tempfile::Builder::new().prefix(PREFIX).tempdir()?;
        let conf = dir.path().join("haproxy.cfg");
        fs::write(&conf, config(routes))?;
        let mut child = ns
            .command(binary)
            // -db: in the foreground, so the guard's kill stops it.
            .args(["-db", "-f"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start haproxy")?;
        for (listen, _) in routes {
            let filter = format!("sport = :{}", listen.port());
            wait_until(Duration::from_secs(10), "haproxy to listen", || {
                if let Some(status) = child.try_wait()? {
                    let mut err = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        use std::io::Read as _;
                        let _ = e.read_to_string(&mut err);
                    }
                    anyhow::bail!("haproxy exited ({status}): {err}");
                }
                Ok(!ns.exec("ss", &["-Hltn", &filter])?.trim().is_empty())
            })?;
        }
        Ok(Self { child, _dir: dir })
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

fn config(routes: &[(SocketAddr, SocketAddr)]) -> String {
    let mut c = String::from(
        "# Written by the api-guard test harness.\n\
         global\n    maxconn 1024\n\
         defaults\n    mode tcp\n    timeout connect 10s\n    timeout client 60s\n    timeout server 60s\n",
    );
    for (i, (listen, server)) in routes.iter().enumerate() {
        c.push_str(&format!(
            "frontend fe{i}\n    bind {listen}\n    default_backend be{i}\n\
             backend be{i}\n    server api {server} send-proxy-v2\n"
        ));
    }
    c
}
