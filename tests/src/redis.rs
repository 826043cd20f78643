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
}

impl Redis {
    /// redis-server on every address of `ns`, port [`PORT`]; waits until it
    /// answers PING.
    pub fn start(ns: &Netns) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix(PREFIX).tempdir()?;
        let child = ns
            .command("redis-server")
            .args(["--port", &PORT.to_string()])
            .args(["--bind", "0.0.0.0", "--protected-mode", "no"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start redis-server (cargo xtask setup installs it)")?;
        let mut redis = Self { child, dir };
        wait_until(Duration::from_secs(10), "redis-server to answer", || {
            if let Some(status) = redis.child.try_wait()? {
                anyhow::bail!("redis-server exited ({status})");
            }
            Ok(redis.cli(ns, &["PING"]).is_ok_and(|o| o.trim() == "PONG"))
        })?;
        let _ = &redis.dir;
        Ok(redis)
    }

    /// `redis-cli ARGS` against this server, from inside `ns`.
    pub fn cli(&self, ns: &Netns, args: &[&str]) -> Result<String> {
        ns.exec(
            "redis-cli",
            &[&["-p", &PORT.to_string()][..], args].concat(),
        )
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
