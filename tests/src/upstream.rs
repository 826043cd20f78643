//! A small HTTP upstream (Debian's python3) inside a namespace, answering
//! `/.../<ms>` after sleeping that many milliseconds: the known delays behind
//! an nginx `proxy_pass`. Killed on drop.

use std::{
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result};

use crate::{
    netns::Netns,
    process::{kill, wait_until},
};

const SCRIPT: &str = r#"
import sys, time
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        last = self.path.split("?")[0].rstrip("/").split("/")[-1]
        time.sleep((int(last) if last.isdigit() else 0) / 1000)
        body = b"slept\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

pub struct SleepyUpstream {
    child: Child,
    pub port: u16,
}

impl SleepyUpstream {
    pub fn start(ns: &Netns, port: u16) -> Result<Self> {
        let child = ns
            .command("/usr/bin/python3")
            .args(["-c", SCRIPT, &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start python3 (Debian's python3, from `cargo xtask setup`)")?;
        let mut up = Self { child, port };
        let filter = format!("sport = :{port}");
        wait_until(Duration::from_secs(10), "the upstream to listen", || {
            if let Some(status) = up.child.try_wait()? {
                anyhow::bail!("python3 exited ({status})");
            }
            Ok(!ns.exec("ss", &["-Hltn", &filter])?.trim().is_empty())
        })?;
        Ok(up)
    }
}

impl Drop for SleepyUpstream {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}
