//! A whole end-to-end scene: client namespaces, a server namespace with nginx,
//! and the real daemon watching the API port there, pinning its maps on a BPF
//! filesystem of the scene's own.

use std::process::{Command, Output};

use anyhow::Result;

use crate::{
    bpffs::BpfFs,
    daemon::{Daemon, Stopped, binary},
    netns::{Client, Topology},
    nginx::Nginx,
};

/// The port nginx serves the API on, watched by the daemon.
pub const API: u16 = 8080;
/// A second nginx port the daemon does not watch.
pub const OTHER: u16 = 8081;

pub struct Scenario {
    // Fields drop in order: the daemon, nginx, the namespaces, the pin mount.
    pub daemon: Daemon,
    pub nginx: Nginx,
    pub topo: Topology,
    pub bpffs: BpfFs,
}

impl Scenario {
    /// `clients` client hosts, nginx on API and OTHER, and `api-guard run`
    /// watching API on every server interface with the extra `flags`.
    pub fn start(clients: usize, flags: &[&str]) -> Result<Self> {
        Self::start_wrapped(clients, &[], flags)
    }

    /// As [`Self::start`], with the daemon started through `wrapper` (see
    /// [`Daemon::start_wrapped`]).
    pub fn start_wrapped(clients: usize, wrapper: &[&str], flags: &[&str]) -> Result<Self> {
        let bpffs = BpfFs::mount()?;
        let topo = Topology::new(clients)?;
        let nginx = Nginx::start(&topo.server, &[API, OTHER])?;
        let daemon = Daemon::start_wrapped(
            &topo.server,
            wrapper,
            &daemon_args(&topo, &bpffs, &nginx, flags),
        )?;
        Ok(Self {
            daemon,
            nginx,
            topo,
            bpffs,
        })
    }

    /// As [`Self::start`], with nginx serving `locations` (nginx `location`
    /// blocks) on API and OTHER.
    pub fn start_locations(clients: usize, locations: &str, flags: &[&str]) -> Result<Self> {
        let bpffs = BpfFs::mount()?;
        let topo = Topology::new(clients)?;
        let nginx = Nginx::start_locations(&topo.server, &[API, OTHER], locations)?;
        let daemon = Daemon::start(&topo.server, &daemon_args(&topo, &bpffs, &nginx, flags))?;
        Ok(Self {
            daemon,
            nginx,
            topo,
            bpffs,
        })
    }

    /// A scene around what [`Self::stop`] left: a new daemon with `flags` on
    /// the same pin directory.
    pub fn resume(nginx: Nginx, topo: Topology, bpffs: BpfFs, flags: &[&str]) -> Result<Self> {
        let daemon = Daemon::start(&topo.server, &daemon_args(&topo, &bpffs, &nginx, flags))?;
        Ok(Self {
            daemon,
            nginx,
            topo,
            bpffs,
        })
    }

    /// Stops the daemon with `sig` (SIGTERM, or SIGKILL for a crash) and starts
    /// a new one on the same pin directory with `flags`.
    pub fn restart(self, sig: libc::c_int, flags: &[&str]) -> Result<(Stopped, Scenario)> {
        let Scenario {
            daemon,
            nginx,
            topo,
            bpffs,
        } = self;
        let stopped = daemon.stop_with(sig)?;
        let daemon = Daemon::start(&topo.server, &daemon_args(&topo, &bpffs, &nginx, flags))?;
        Ok((
            stopped,
            Scenario {
                daemon,
                nginx,
                topo,
                bpffs,
            },
        ))
    }

    pub fn client(&self, i: usize) -> &Client {
        &self.topo.clients[i]
    }

    /// Requests nginx served to `client` (an address as nginx logs it) on `port`.
    pub fn served(&self, client: &str, port: u16) -> Result<usize> {
        Ok(self
            .nginx
            .access_log()?
            .iter()
            .filter(|l| l.client == client && l.server_port == port)
            .count())
    }

    /// Scrapes the daemon's metrics (default address, inside the server
    /// namespace).
    pub fn scrape(&self) -> Result<String> {
        self.topo.server.exec(
            "curl",
            &["-sS", "--max-time", "10", "http://127.0.0.1:9477/metrics"],
        )
    }

    /// Runs an operator command (`status`, `block` ...) against this scene's
    /// daemon, from the host; returns its output, whatever its exit status.
    pub fn ctl(&self, args: &[&str]) -> Result<Output> {
        Ok(Command::new(binary())
            .args(args)
            .arg("--pin-dir")
            .arg(self.bpffs.pin_dir())
            .output()?)
    }

    /// Stops the daemon (SIGTERM) and returns what it left; the rest stays up
    /// until the returned guards drop.
    pub fn stop(self) -> Result<(Stopped, Nginx, Topology, BpfFs)> {
        let Scenario {
            daemon,
            nginx,
            topo,
            bpffs,
        } = self;
        Ok((daemon.stop()?, nginx, topo, bpffs))
    }
}

/// `api-guard run` on every server interface, watching API, pinning in `bpffs`,
/// with the connection tracker (when `--max-conns` asks for it) on nginx's
/// cgroup, never the host's root.
fn daemon_args(topo: &Topology, bpffs: &BpfFs, nginx: &Nginx, flags: &[&str]) -> Vec<String> {
    let mut args = vec!["run".to_string(), "--port".into(), API.to_string()];
    for iface in &topo.server_ifaces {
        args.extend(["--iface".into(), iface.clone()]);
    }
    args.extend(["--pin-dir".into(), bpffs.pin_dir().display().to_string()]);
    args.extend(["--cgroup".into(), nginx.cgroup().display().to_string()]);
    args.extend(flags.iter().map(|f| f.to_string()));
    args
}
