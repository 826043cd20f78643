//! A real redis-server (Debian's package) inside a test namespace: no
//! persistence, its files in a directory of its own; killed on drop.

use std::{
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result};
use tempfile::TempDir;

use crate::{
    PREFIX,
    netns::Netns,
    process::{kill, signal, wait_until},
};

pub const PORT: u16 = 6379;

pub struct Redis {
    child: Child,
    dir: TempDir,
    /// What redis-cli needs besides the port (TLS, password).
    cli_args: Vec<String>,
}

impl Redis {
    /// redis-server on every address of `ns`, port [`PORT`]; waits until it
    /// answers PING.
    pub fn start(ns: &Netns) -> Result<Self> {
        Self::start_with(ns, &["--port", &PORT.to_string()], &[])
    }

    /// As [`Self::start`], with `server_args` choosing the port (`--port`, or
    /// `--port 0 --tls-port` and the TLS files) and any password, and
    /// `cli_args` what redis-cli then needs.
    pub fn start_with(ns: &Netns, server_args: &[&str], cli_args: &[&str]) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix(PREFIX).tempdir()?;
        let child = ns
            .command("redis-server")
            .args(server_args)
            .args(["--bind", "0.0.0.0", "--protected-mode", "no"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start redis-server (cargo xtask setup installs it)")?;
        let mut redis = Self {
            child,
            dir,
            cli_args: cli_args.iter().map(|a| a.to_string()).collect(),
        };
        let mut last = String::new();
        wait_until(Duration::from_secs(10), "redis-server to answer", || {
            if let Some(status) = redis.child.try_wait()? {
                anyhow::bail!("redis-server exited ({status})");
            }
            let answer = redis.cli(ns, &["PING"]);
            last = format!("{answer:?}");
            Ok(answer.is_ok_and(|o| o.trim() == "PONG"))
        })
        .with_context(|| format!("redis-cli PING: {last}"))?;
        let _ = &redis.dir;
        Ok(redis)
    }

    /// `redis-cli ARGS` against this server, from inside `ns`.
    pub fn cli(&self, ns: &Netns, args: &[&str]) -> Result<String> {
        let port = PORT.to_string();
        let mut all: Vec<&str> = vec!["-p", &port];
        all.extend(self.cli_args.iter().map(String::as_str));
        all.extend_from_slice(args);
        ns.exec("redis-cli", &all)
    }

    /// Stops answering without closing anything (SIGSTOP): a Redis that is
    /// slow, not gone. [`Self::resume`] undoes it.
    pub fn pause(&self) {
        signal(&self.child, libc::SIGSTOP);
    }

    pub fn resume(&self) {
        signal(&self.child, libc::SIGCONT);
    }

    /// Kills it (its data is gone with it).
    pub fn kill(mut self) {
        signal(&self.child, libc::SIGCONT);
        kill(&mut self.child);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        signal(&self.child, libc::SIGCONT);
        kill(&mut self.child);
    }
}
