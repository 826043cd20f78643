//! Test hosts: network namespaces joined by veth pairs.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, Result};

use crate::{
    PREFIX,
    process::{die_with_parent, run},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace, deleted on drop together with every process inside it.
pub struct Netns {
    name: String,
}

impl Netns {
    /// A new namespace with its loopback up; `role` only makes the name readable.
    pub fn new(role: &str) -> Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{n}-{role}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside this namespace and dies with the test.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        die_with_parent(&mut cmd);
        cmd
    }

    /// Runs `program args` inside the namespace and returns its stdout.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        run(self.command(program).args(args))
    }

    /// `ip -n NS args`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Runs `f` on a thread that has entered this namespace: a thread's network
    /// namespace is its own, so the test's other threads stay where they are.
    pub fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        use std::os::fd::AsRawFd as _;
        let ns = std::fs::File::open(format!("/run/netns/{}", self.name))?;
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: setns on an open namespace file; it moves only this
                    // thread, which ends with `f`.
                    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                    anyhow::ensure!(
                        rc == 0,
                        "cannot enter {}: {}",
                        self.name,
                        std::io::Error::last_os_error()
                    );
                    Ok(f())
                })
                .join()
                .map_err(|_| anyhow::anyhow!("a thread inside {} panicked", self.name))?
        })
    }

    /// The programs attached to `iface`'s tcx ingress, in run order.
    pub fn tcx_ingress(&self, iface: &str) -> Result<Vec<u32>> {
        use aya::programs::{SchedClassifier, tc::TcAttachType};
        let (_, progs) =
            self.within(|| SchedClassifier::query_tcx(iface, TcAttachType::Ingress))??;
        Ok(progs.iter().map(|p| p.id()).collect())
    }

    /// A counter the namespace's kernel keeps, from /proc/net/snmp or
    /// /proc/net/netstat: `group` is the line's prefix ("Tcp", "TcpExt", "Ip"),
    /// `name` the counter ("InCsumErrors", "EstabResets" ...).
    pub fn snmp(&self, group: &str, name: &str) -> Result<u64> {
        let prefix = format!("{group}:");
        for file in ["/proc/net/snmp", "/proc/net/netstat"] {
            let text = self.exec("cat", &[file])?;
            let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
            if let (Some(names), Some(values)) = (lines.next(), lines.next())
                && let Some((_, v)) = names
                    .split_whitespace()
                    .zip(values.split_whitespace())
                    .find(|(n, _)| *n == name)
            {
                return v
                    .parse()
                    .with_context(|| format!("{group} {name} in {file}: {v:?}"));
            }
        }
        anyhow::bail!("no {group} {name} in /proc/net/snmp or /proc/net/netstat")
    }

    /// PIDs of the processes inside the namespace.
    pub fn pids(&self) -> Vec<i32> {
        run(Command::new("ip").args(["netns", "pids", &self.name]))
            .map(|out| {
                out.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for pid in self.pids() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        // Deleting the namespace destroys its veth ends (and so their peers).
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A client host: its own namespace, linked to the server by one veth pair.
pub struct Client {
    pub ns: Netns,
    pub addr4: Ipv4Addr,
    pub addr6: Ipv6Addr,
    /// The server's addresses on this client's link.
    pub server4: Ipv4Addr,
    pub server6: Ipv6Addr,
}

impl Client {
    pub fn addrs(&self) -> [IpAddr; 2] {
        [self.addr4.into(), self.addr6.into()]
    }

    /// The server's address on this link in the given family.
    pub fn server(&self, ipv6: bool) -> IpAddr {
        if ipv6 {
            self.server6.into()
        } else {
            self.server4.into()
        }
    }

    /// This client's address in the given family.
    pub fn addr(&self, ipv6: bool) -> IpAddr {
        if ipv6 {
            self.addr6.into()
        } else {
            self.addr4.into()
        }
    }

    /// The address api-guard keys this client by: IPv4 as is, IPv6 as its /64
    /// (the default `--ipv6-prefix`).
    pub fn key(&self, ipv6: bool) -> IpAddr {
        if ipv6 {
            let s = self.addr6.segments();
            Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0).into()
        } else {
            self.addr4.into()
        }
    }
}

/// A server namespace and `n` client namespaces. Link `i` is 198.18.i.0/24 and
/// 2001:db8:i::/64: the server is .1 / ::1 on interface `c{i}`, the client .2 / ::2
/// on `eth0`.
pub struct Topology {
    // Clients first: fields drop in order, and the server outlives its peers.
    pub clients: Vec<Client>,
    pub server: Netns,
    pub server_ifaces: Vec<String>,
}

impl Topology {
    pub fn new(clients: usize) -> Result<Self> {
        assert!(clients <= 250, "one /24 per client link");
        let server = Netns::new("server")?;
        let mut topo = Self {
            clients: Vec::with_capacity(clients),
            server,
            server_ifaces: Vec::new(),
        };
        for i in 0..clients {
            let ns = Netns::new(&format!("client{i}"))?;
            let iface = format!("c{i}");
            run(Command::new("ip").args([
                "link",
                "add",
                &iface,
                "netns",
                topo.server.name(),
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns.name(),
            ]))?;
            let client = Client {
                ns,
                addr4: Ipv4Addr::new(198, 18, i as u8, 2),
                addr6: Ipv6Addr::new(0x2001, 0xdb8, i as u16, 0, 0, 0, 0, 2),
                server4: Ipv4Addr::new(198, 18, i as u8, 1),
                server6: Ipv6Addr::new(0x2001, 0xdb8, i as u16, 0, 0, 0, 0, 1),
            };
            configure(&topo.server, &iface, client.server4, client.server6)?;
            configure(&client.ns, "eth0", client.addr4, client.addr6)?;
            topo.server_ifaces.push(iface);
            topo.clients.push(client);
        }
        Ok(topo)
    }
}

fn configure(ns: &Netns, iface: &str, v4: Ipv4Addr, v6: Ipv6Addr) -> Result<()> {
    ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", iface])?;
    // nodad: the address is usable at once instead of after duplicate detection.
    ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", iface, "nodad"])?;
    ns.ip(&["link", "set", iface, "up"])?;
    Ok(())
}
