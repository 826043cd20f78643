//! Who the client is, end to end: a real HAProxy in TCP mode (`send-proxy-v2`)
//! in front of a real nginx (`listen ... proxy_protocol`), the real daemon
//! trusting the balancer (`--trusted-proxy`). Judged by nginx's access log, where
//! each request's client is the one nginx read from the PROXY header
//! (`$proxy_protocol_addr`): the buckets are the real clients', the balancer is
//! never limited, and a direct client forging a header is charged itself.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Instant,
};

use anyhow::{Context as _, Result};
use api_guard_tests::{
    PREFIX,
    bpffs::BpfFs,
    client::{Connections, Opts, curl, url},
    daemon::Daemon,
    haproxy::Haproxy,
    netns::{Netns, Topology},
    nginx::Nginx,
    process::wait_until,
};

const API: u16 = 8080;
/// nginx's HTTPS port (the PROXY header before the ClientHello).
const TLS: u16 = 8443;
/// Requests a client may send at once, and per second after.
const BURST: u64 = 3;
const RATE: u64 = 1;

/// The balancer's listening addresses (on its loopback), and the clients'.
const LB_LISTEN4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
const LB_LISTEN6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1);

fn client4(i: u8) -> IpAddr {
    Ipv4Addr::new(198, 19, 0, 10 + i).into()
}

fn client6(i: u8) -> IpAddr {
    Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x10 + i as u16).into()
}

/// Client host 0 is the balancer (its clients live on its loopback, as if
/// behind it); client host 1 reaches nginx directly.
struct Scene {
    _daemon: Daemon,
    /// The daemon's access log (`--access-log`).
    log: std::path::PathBuf,
    _log_dir: tempfile::TempDir,
    _haproxy: Haproxy,
    nginx: Nginx,
    topo: Topology,
    _bpffs: BpfFs,
}

impl Scene {
    fn start() -> Result<Self> {
        Self::start_with(RATE, BURST, &[])
    }

    /// With the request limit `rate`:`burst` and the daemon's `extra` flags.
    fn start_with(rate: u64, burst: u64, extra: &[&str]) -> Result<Self> {
        let bpffs = BpfFs::mount()?;
        let log_dir = tempfile::Builder::new().prefix(PREFIX).tempdir()?;
        let log = log_dir.path().join("access.log");
        let topo = Topology::new(2)?;
        let lb = &topo.clients[0];
        lb.ns.ip(&["link", "set", "lo", "up"])?;
        lb.ns
            .ip(&["addr", "add", &format!("{LB_LISTEN4}/32"), "dev", "lo"])?;
        lb.ns.ip(&[
            "addr",
            "add",
            &format!("{LB_LISTEN6}/128"),
            "dev",
            "lo",
            "nodad",
        ])?;
        for i in 0..50u8 {
            for a in [client4(i), client6(i)] {
                let (plen, nodad) = if a.is_ipv4() {
                    (32, None)
                } else {
                    (128, Some("nodad"))
                };
                let cidr = format!("{a}/{plen}");
                let mut args = vec!["addr", "add", cidr.as_str(), "dev", "lo"];
                args.extend(nodad);
                lb.ns.ip(&args)?;
            }
        }
        let nginx = Nginx::start_proxy_protocol(&topo.server, &[API], &[TLS])?;
        // IPv4 clients reach nginx over IPv4, IPv6 clients over IPv6.
        let haproxy = Haproxy::start(
            &lb.ns,
            &[
                (
                    SocketAddr::new(LB_LISTEN4.into(), API),
                    SocketAddr::new(lb.server4.into(), API),
                ),
                (
                    SocketAddr::new(LB_LISTEN6.into(), API),
                    SocketAddr::new(lb.server6.into(), API),
                ),
                (
                    SocketAddr::new(LB_LISTEN4.into(), TLS),
                    SocketAddr::new(lb.server4.into(), TLS),
                ),
            ],
        )?;
        let mut args: Vec<String> = [
            "run",
            "--port",
            &API.to_string(),
            "--port",
            &TLS.to_string(),
            "--pin-dir",
            &bpffs.pin_dir().display().to_string(),
            "--cgroup",
            &nginx.cgroup().display().to_string(),
            "--rate",
            &rate.to_string(),
            "--burst",
            &burst.to_string(),
            // Refused at once, never served late by a retransmission.
            "--on-limit",
            "reset",
            // One bucket per IPv6 client here, not per /64.
            "--ipv6-prefix",
            "128",
            "--trusted-proxy",
            &lb.addr4.to_string(),
            "--trusted-proxy",
            &lb.addr6.to_string(),
            "--access-log",
            &log.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for iface in &topo.server_ifaces {
            args.extend(["--iface".into(), iface.clone()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let daemon = Daemon::start(&topo.server, &args)?;
        Ok(Self {
            _daemon: daemon,
            log,
            _log_dir: log_dir,
            _haproxy: haproxy,
            nginx,
            topo,
            _bpffs: bpffs,
        })
    }

    fn balancer(&self) -> &Netns {
        &self.topo.clients[0].ns
    }

    /// `n` requests for `path` from `client`, each on a new connection through
    /// the balancer, one after another; returns how long they took.
    fn via_balancer(&self, client: IpAddr, path: &str, n: usize) -> Result<f64> {
        let listen: IpAddr = if client.is_ipv4() {
            LB_LISTEN4.into()
        } else {
            LB_LISTEN6.into()
        };
        let urls = vec![url(listen, API, path); n];
        let t = Instant::now();
        curl(
            self.balancer(),
            &urls,
            Opts::new(Connections::New).source(client),
        )?;
        Ok(t.elapsed().as_secs_f64())
    }

    /// Requests nginx served (200) for `path` to the client it read as `client`.
    fn served(&self, client: IpAddr, path: &str) -> Result<usize> {
        Ok(self
            .nginx
            .access_log()?
            .iter()
            .filter(|l| l.client == client.to_string() && l.uri == path && l.status == 200)
            .count())
    }
}

impl Scene {
    /// The clients of the access log's lines for `path`, once `n` are there
    /// (it is flushed every second).
    fn logged_clients(&self, path: &str, n: usize) -> Result<Vec<String>> {
        let read = || -> Result<Vec<String>> {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let mut clients = Vec::new();
            // Whole lines only: the daemon may be writing the last one.
            let whole = text.rfind('\n').map_or("", |end| &text[..end]);
            for line in whole.lines() {
                let v: serde_json::Value = serde_json::from_str(line)?;
                if v["url.path"] == path {
                    clients.push(v["client.address"].as_str().unwrap_or("").to_string());
                }
            }
            Ok(clients)
        };
        wait_until(
            std::time::Duration::from_secs(30),
            "the access log's lines",
            || Ok(read()?.len() >= n),
        )?;
        read()
    }
}

/// What a bucket of BURST and RATE may admit over `secs`, one more for the
/// bucket's edge.
fn at_most(secs: f64) -> usize {
    (BURST as f64 + RATE as f64 * secs).floor() as usize + 1
}

fn balancer_clients_are_each_limited_and_the_balancer_never(ipv6: bool) -> Result<()> {
    let s = Scene::start()?;
    let client = |i| if ipv6 { client6(i) } else { client4(i) };
    // 40 clients behind the one balancer, each within its own burst: all
    // served. Were the balancer the client, BURST in all would be.
    for i in 0..40 {
        s.via_balancer(client(i), "/each", BURST as usize)?;
    }
    for i in 0..40 {
        assert_eq!(
            s.served(client(i), "/each")?,
            BURST as usize,
            "client {} behind the balancer",
            client(i)
        );
    }
    // The daemon's access log names the same clients, never the balancer.
    let logged = s.logged_clients("/each", 40 * BURST as usize)?;
    let want: std::collections::BTreeSet<String> = (0..40).map(|i| client(i).to_string()).collect();
    let got: std::collections::BTreeSet<String> = logged.iter().cloned().collect();
    assert_eq!(got, want, "access log clients");
    // One client over its own limit: held to its bucket.
    const SENT: usize = 12;
    let secs = s.via_balancer(client(45), "/heavy", SENT)?;
    let heavy = s.served(client(45), "/heavy")?;
    assert!(
        heavy >= BURST as usize && heavy <= at_most(secs) && heavy < SENT,
        "the heavy client was served {heavy} of {SENT} in {secs:.2} s"
    );
    // ... and no one else is: a fresh client behind the same balancer.
    s.via_balancer(client(46), "/after", BURST as usize)?;
    assert_eq!(s.served(client(46), "/after")?, BURST as usize);
    Ok(())
}

#[test]
fn ipv4_clients_behind_haproxy_are_limited_each_and_the_balancer_never() -> Result<()> {
    balancer_clients_are_each_limited_and_the_balancer_never(false)
}

#[test]
fn ipv6_clients_behind_haproxy_are_limited_each_and_the_balancer_never() -> Result<()> {
    balancer_clients_are_each_limited_and_the_balancer_never(true)
}

/// Sends a PROXY v2 header naming `named`, then a request for `path`, on one
/// connection from the direct client's host to nginx; returns nginx's status
/// (0: no answer, as when the connection is reset).
fn forged(ns: &Netns, server: IpAddr, named: Ipv4Addr, path: &str) -> Result<u16> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[0x21, 0x11, 0, 12]);
    header.extend_from_slice(&named.octets());
    header.extend_from_slice(&[198, 18, 1, 1, 0xd4, 0x31, 0x1f, 0x90]);
    let request = format!("GET {path} HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n");
    let wire = [header, request.into_bytes()].concat();
    ns.within(|| -> Result<u16> {
        let mut s = std::net::TcpStream::connect_timeout(
            &SocketAddr::new(server, API),
            std::time::Duration::from_secs(10),
        )?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
        s.write_all(&wire)?;
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer);
        Ok(text
            .strip_prefix("HTTP/1.1 ")
            .and_then(|t| t.get(..3))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0))
    })?
    .context("forged request")
}

#[test]
fn a_direct_client_forging_a_proxy_header_is_charged_itself() -> Result<()> {
    let s = Scene::start()?;
    let victim = Ipv4Addr::new(198, 19, 0, 10);
    let direct = &s.topo.clients[1];
    // nginx believes any header (it has no list of trusted balancers); the
    // kernel charges the forger's own address: it is held to one bucket.
    const SENT: usize = 10;
    let t = Instant::now();
    for _ in 0..SENT {
        forged(&direct.ns, direct.server4.into(), victim, "/forged")?;
    }
    let secs = t.elapsed().as_secs_f64();
    let forged_served = s.served(victim.into(), "/forged")?;
    assert!(
        forged_served >= 1 && forged_served <= at_most(secs) && forged_served < SENT,
        "forged requests served {forged_served} of {SENT} in {secs:.2} s"
    );
    // The victim's own bucket is untouched by all that.
    s.via_balancer(victim.into(), "/real", BURST as usize)?;
    assert_eq!(s.served(victim.into(), "/real")?, BURST as usize);
    Ok(())
}

/// Opens connections through the balancer, `(source, path)` each, all held
/// open at once: a request on each (keep-alive), its status read (0: no
/// answer, the connection reset). Python's sockets: std cannot bind a source
/// address before connecting.
fn held(ns: &Netns, conns: &[(IpAddr, &str)]) -> Result<Vec<u16>> {
    let script = r#"
import socket, sys
out, socks = [], []
for arg in sys.argv[2:]:
    src, path = arg.split(",")
    fam = socket.AF_INET6 if ":" in src else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.bind((src, 0))
    s.settimeout(5)
    s.connect((sys.argv[1], 8080))
    socks.append(s)
    s.sendall(("GET %s HTTP/1.1\r\nHost: api\r\n\r\n" % path).encode())
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    out.append(data[9:12].decode() if data.startswith(b"HTTP/1.1 ") else "0")
print(" ".join(out))
"#;
    let mut args = vec!["-c".to_string(), script.to_string(), LB_LISTEN4.to_string()];
    args.extend(conns.iter().map(|(src, path)| format!("{src},{path}")));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ns.exec("python3", &argv)?;
    out.split_whitespace()
        .map(|s| s.parse::<u16>().context("status"))
        .collect()
}

#[test]
fn max_conns_holds_each_client_behind_haproxy_and_never_the_balancer() -> Result<()> {
    // Requests are not what is limited here.
    let s = Scene::start_with(1000, 1000, &["--max-conns", "2"])?;
    let (a, b) = (client4(0), client4(1));
    // a holds three connections at once: the third is refused (reset); b's
    // two pass, though the balancer then holds four to nginx.
    let statuses = held(
        s.balancer(),
        &[
            (a, "/held/a1"),
            (a, "/held/a2"),
            (a, "/held/a3"),
            (b, "/held/b1"),
            (b, "/held/b2"),
        ],
    )?;
    assert_eq!(statuses, [200, 200, 0, 200, 200]);
    let log = s.nginx.access_log()?;
    let served = |path: &str| {
        log.iter()
            .filter(|l| l.uri == path && l.status == 200)
            .count()
    };
    assert_eq!(
        (served("/held/a1"), served("/held/a2"), served("/held/a3")),
        (1, 1, 0)
    );
    // Once they close, a's count comes down again: two at once, served.
    wait_until(
        std::time::Duration::from_secs(30),
        "nginx's connections from the balancer to close",
        || {
            Ok(s.topo
                .server
                .exec("ss", &["-Htn", "state", "connected", "( sport = :8080 )"])?
                .trim()
                .is_empty())
        },
    )?;
    let r = held(s.balancer(), &[(a, "/again"), (a, "/again")])?;
    assert_eq!(r, [200, 200]);
    Ok(())
}

/// One HTTPS request for `path` from `client` through the balancer, on a new
/// connection; its status (0: none, as when the connection is reset).
fn https(ns: &Netns, client: IpAddr, path: &str) -> Result<u16> {
    let url = format!("https://{}{path}", SocketAddr::new(LB_LISTEN4.into(), TLS));
    let out = ns
        .command("curl")
        .args([
            "-sk",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(["-H", "Connection: close", "--interface"])
        .arg(client.to_string())
        .arg(&url)
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0))
}

#[test]
fn tls_clients_behind_haproxy_are_held_to_their_own_conn_rate() -> Result<()> {
    const CONN_BURST: usize = 2;
    let s = Scene::start_with(1000, 1000, &["--conn-rate", "1", "--conn-burst", "2"])?;
    let served = |client: IpAddr| -> Result<usize> {
        Ok(s.nginx
            .access_log()?
            .iter()
            .filter(|l| l.client == client.to_string() && l.server_port == TLS && l.status == 200)
            .count())
    };
    // Each of 10 clients within its own burst: all served over TLS.
    for i in 0..10 {
        for _ in 0..CONN_BURST {
            assert_eq!(https(s.balancer(), client4(i), "/tls")?, 200, "client {i}");
        }
    }
    for i in 0..10 {
        assert_eq!(served(client4(i))?, CONN_BURST);
    }
    // One client opening connections faster: held to its own bucket.
    const SENT: usize = 8;
    let heavy = client4(20);
    let t = Instant::now();
    for _ in 0..SENT {
        https(s.balancer(), heavy, "/tls")?;
    }
    let secs = t.elapsed().as_secs_f64();
    let n = served(heavy)?;
    let bound = CONN_BURST + secs.floor() as usize + 1;
    assert!(
        n >= CONN_BURST && n <= bound && n < SENT,
        "the heavy TLS client was served {n} of {SENT} in {secs:.2} s"
    );
    Ok(())
}

/// Requests inside TLS behind the balancer, counted by the libssl uprobes
/// (`--tls auto`), are charged to the client the PROXY header named: ten
/// clients each within their own burst are all served (charged to the
/// balancer, the eleventh request would be over its burst and its connection
/// reset), and the daemon's access log names each client, never the balancer.
#[test]
fn tls_requests_behind_haproxy_are_charged_to_the_named_clients() -> Result<()> {
    let s = Scene::start_with(RATE, BURST, &["--tls", "auto"])?;
    wait_until(
        std::time::Duration::from_secs(10),
        "the daemon to follow nginx's libssl",
        || Ok(s._daemon.stderr().contains("TLS: following")),
    )?;
    const CLIENTS: u8 = 10;
    for i in 0..CLIENTS {
        for _ in 0..BURST {
            assert_eq!(
                https(s.balancer(), client4(i), "/tls-named")?,
                200,
                "client {i}"
            );
        }
    }
    let served = s
        .nginx
        .access_log()?
        .iter()
        .filter(|l| l.uri == "/tls-named" && l.status == 200)
        .count();
    assert_eq!(served, CLIENTS as usize * BURST as usize);
    let logged = s.logged_clients("/tls-named", CLIENTS as usize * BURST as usize)?;
    let balancer = s.topo.clients[0].addr4.to_string();
    assert!(
        !logged.contains(&balancer),
        "the balancer was charged: {logged:?}"
    );
    for i in 0..CLIENTS {
        let c = client4(i).to_string();
        assert_eq!(
            logged.iter().filter(|l| **l == c).count(),
            BURST as usize,
            "client {c} in {logged:?}"
        );
    }
    Ok(())
}
