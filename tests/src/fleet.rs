//! A fleet: three API hosts (each a namespace with nginx and its own daemon,
//! pinning on a BPF filesystem of its own), a store namespace with a real
//! redis-server linked to every host, and one client namespace linked to every
//! host. The clients' addresses (198.18.1.0/24) sit on the client's loopback
//! and every host routes them through its own link, so one client address
//! reaches all three hosts, as behind a balancer.
//!
//! Links: host i is 198.18.(10+i).1 toward the client (`c0`, the interface the
//! daemon watches) and 198.18.(20+i).2 toward the store (`r0`); the store
//! answers on 198.18.(20+i).1.

use std::{
    net::Ipv4Addr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{
    bpffs::BpfFs,
    client::url,
    daemon::{Daemon, Stopped, binary},
    netns::Netns,
    nginx::Nginx,
    process::run,
    redis::{self, Redis},
    scenario::API,
};

pub const HOSTS: usize = 3;

/// One API host.
pub struct Host {
    // Fields drop in order: the daemon, nginx, the namespace, the pin mount.
    pub daemon: Option<Daemon>,
    pub nginx: Nginx,
    pub ns: Netns,
    pub bpffs: BpfFs,
    /// The host's address toward the client.
    pub addr: Ipv4Addr,
    /// The store's address on this host's link.
    pub store: Ipv4Addr,
}

pub struct Fleet {
    pub hosts: Vec<Host>,
    pub redis: Option<Redis>,
    pub client: Netns,
    pub store: Netns,
}

/// A client address on the client namespace's loopback, reachable from every host.
pub fn client_addr(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, i)
}

impl Fleet {
    /// The namespaces, Redis and nginx everywhere; no daemons yet.
    pub fn new(clients: u8) -> Result<Self> {
        let store = Netns::new("store")?;
        let client = Netns::new("fclient")?;
        for i in 1..=clients {
            client.ip(&[
                "addr",
                "add",
                &format!("{}/32", client_addr(i)),
                "dev",
                "lo",
            ])?;
        }
        let mut hosts = Vec::new();
        for i in 0..HOSTS {
            let ns = Netns::new(&format!("host{i}"))?;
            let n = i as u8;
            let addr = Ipv4Addr::new(198, 18, 10 + n, 1);
            let store_addr = Ipv4Addr::new(198, 18, 20 + n, 1);
            link(
                &ns,
                "c0",
                addr,
                &client,
                &format!("s{i}"),
                Ipv4Addr::new(198, 18, 10 + n, 2),
            )?;
            link(
                &ns,
                "r0",
                Ipv4Addr::new(198, 18, 20 + n, 2),
                &store,
                &format!("h{i}"),
                store_addr,
            )?;
            ns.ip(&[
                "route",
                "add",
                "198.18.1.0/24",
                "via",
                &format!("198.18.{}.2", 10 + n),
            ])?;
            let nginx = Nginx::start(&ns, &[API])?;
            hosts.push(Host {
                daemon: None,
                nginx,
                ns,
                bpffs: BpfFs::mount()?,
                addr,
                store: store_addr,
            });
        }
        let redis = Redis::start(&store)?;
        Ok(Self {
            hosts,
            redis: Some(redis),
            client,
            store,
        })
    }

    /// Starts host `i`'s daemon: watching the API port on its client link,
    /// syncing with the store over its own link, with the extra `flags`.
    pub fn start_daemon(&mut self, i: usize, flags: &[&str]) -> Result<()> {
        let url = format!("redis://{}:{}", self.hosts[i].store, redis::PORT);
        self.start_daemon_with(i, &[], &url, flags)
    }

    /// As [`Self::start_daemon`], through `wrapper` (see
    /// [`Daemon::start_wrapped`]) and with `url` for `--fleet`.
    pub fn start_daemon_with(
        &mut self,
        i: usize,
        wrapper: &[&str],
        url: &str,
        flags: &[&str],
    ) -> Result<()> {
        let host = &mut self.hosts[i];
        let mut args: Vec<String> = vec![
            "run".into(),
            "--port".into(),
            API.to_string(),
            "--iface".into(),
            "c0".into(),
            "--pin-dir".into(),
            host.bpffs.pin_dir().display().to_string(),
            "--cgroup".into(),
            host.nginx.cgroup().display().to_string(),
            "--fleet".into(),
            url.into(),
        ];
        args.extend(flags.iter().map(|f| f.to_string()));
        host.daemon = Some(Daemon::start_wrapped(&host.ns, wrapper, &args)?);
        Ok(())
    }

    /// Stops host `i`'s daemon with SIGTERM.
    pub fn stop_daemon(&mut self, i: usize) -> Result<Stopped> {
        let daemon = self.hosts[i].daemon.take().expect("a running daemon");
        daemon.stop()
    }

    /// Scrapes host `i`'s metrics.
    pub fn scrape(&self, i: usize) -> Result<String> {
        self.hosts[i].ns.exec(
            "curl",
            &["-sS", "--max-time", "10", "http://127.0.0.1:9477/metrics"],
        )
    }

    /// Runs an operator command against host `i`'s daemon; its output,
    /// whatever its exit status.
    pub fn ctl(&self, i: usize, args: &[&str]) -> Result<std::process::Output> {
        Ok(Command::new(binary())
            .args(args)
            .arg("--pin-dir")
            .arg(self.hosts[i].bpffs.pin_dir())
            .output()?)
    }

    /// Requests nginx on host `i` answered 200 to `client`.
    pub fn served(&self, i: usize, client: Ipv4Addr) -> Result<usize> {
        let c = client.to_string();
        Ok(self.hosts[i]
            .nginx
            .access_log()?
            .iter()
            .filter(|l| l.client == c && l.status == 200)
            .count())
    }

    /// Requests the three nginx served to `client`.
    pub fn served_total(&self, client: Ipv4Addr) -> Result<usize> {
        (0..HOSTS).map(|i| self.served(i, client)).sum()
    }

    /// `n` requests from `source`, spread round-robin over the hosts, started
    /// `per_second` apart whatever became of the earlier ones (curl paces only
    /// serial transfers, and a dropped one would hold the next back), each on a
    /// connection of its own that gives up after a second. How many nginx
    /// answered.
    pub fn round_robin(&self, source: Ipv4Addr, n: usize, per_second: u32) -> Result<usize> {
        let started = Instant::now();
        let src = source.to_string();
        let mut children = Vec::with_capacity(n);
        for k in 0..n {
            let due = started + Duration::from_secs_f64(k as f64 / f64::from(per_second));
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            let u = url(
                self.hosts[k % HOSTS].addr.into(),
                API,
                &format!("/v1/items/{k}"),
            );
            let child = self
                .client
                .command("curl")
                .args([
                    "-sS",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "1",
                ])
                .args(["--interface", &src, "-H", "Connection: close", &u])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot run curl")?;
            children.push(child);
        }
        let mut ok = 0;
        for child in children {
            let out = child.wait_with_output()?;
            ok += usize::from(String::from_utf8_lossy(&out.stdout).trim() == "200");
        }
        Ok(ok)
    }

    /// `redis-cli ARGS` from the store namespace.
    pub fn redis_cli(&self, args: &[&str]) -> Result<String> {
        self.redis
            .as_ref()
            .expect("redis runs")
            .cli(&self.store, args)
    }
}

/// A veth pair between `a` (interface `a_if`, address `a_addr`) and `b`.
fn link(
    a: &Netns,
    a_if: &str,
    a_addr: Ipv4Addr,
    b: &Netns,
    b_if: &str,
    b_addr: Ipv4Addr,
) -> Result<()> {
    run(Command::new("ip").args([
        "link",
        "add",
        a_if,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ]))?;
    for (ns, iface, addr) in [(a, a_if, a_addr), (b, b_if, b_addr)] {
        ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", iface])?;
        ns.ip(&["link", "set", iface, "up"])?;
        // Replies to the clients' loopback addresses leave by the link they came in.
        ns.exec("sysctl", &["-qw", "net.ipv4.conf.all.rp_filter=0"])?;
        ns.exec(
            "sysctl",
            &["-qw", &format!("net.ipv4.conf.{iface}.rp_filter=0")],
        )?;
    }
    Ok(())
}
