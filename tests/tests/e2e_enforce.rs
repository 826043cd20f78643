//! Enforcement end to end: real clients in their namespaces, real nginx, the real
//! daemon dropping in the kernel of the server namespace.

use std::{
    net::IpAddr,
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::Result;
use api_guard_tests::{
    client::{self, Connections, Opts, curl, url, wrk},
    netns::Client,
    process::{kill, wait_until},
    scenario::{API, Scenario},
};

/// `n` new connections at once from `client`, each given `max_time`.
fn burst(client: &Client, n: usize, max_time: Duration) -> Result<usize> {
    burst_from(client, None, n, max_time)
}

fn burst_from(
    client: &Client,
    source: Option<IpAddr>,
    n: usize,
    max_time: Duration,
) -> Result<usize> {
    client::burst(client, source, n, max_time)
}

/// An over-limit request is dropped and retransmitted 200 ms later, then 600 ms
/// later. Giving up at 400 ms leaves one retransmission, so a bucket refilling at
/// 1/s can admit none of them as long as a test's bursts start within 0.8 s of
/// each other.
const SHORT: Duration = Duration::from_millis(400);

/// For bursts that must all be answered: a hang guard, not a deadline, so a
/// slow answer still counts (SHORT is only for bursts that expect drops).
const EVERY: Duration = Duration::from_secs(30);

/// These tests share two CPUs with a flood; one at a time keeps their timing
/// assumptions true (other test binaries still run in parallel with nothing).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn a_flood_is_held_to_burst_plus_rate_while_a_legitimate_client_is_served() -> Result<()> {
    let _serial = serial();
    const RATE: u64 = 40;
    const BURST: u64 = 20;
    const SECS: u64 = 6;
    let s = Scenario::start(
        2,
        &["--rate", &RATE.to_string(), "--burst", &BURST.to_string()],
    )?;
    let (abuser, legit) = (s.client(0), s.client(1));

    // The legitimate client: 5 requests a second, one connection each, all along,
    // while the abuser floods over 100 connections.
    let legit_url = url(legit.server4.into(), API, "/legit");
    let flood_url = url(abuser.server4.into(), API, "/flood");
    let (report, (legit_ok, legit_sent)) = thread::scope(|scope| -> Result<_> {
        let legit_thread = scope.spawn(|| -> Result<(usize, usize)> {
            let (mut ok, mut sent) = (0, 0);
            let end = Instant::now() + Duration::from_secs(SECS);
            while Instant::now() < end {
                ok += curl(
                    &legit.ns,
                    std::slice::from_ref(&legit_url),
                    Opts::new(Connections::New),
                )?
                .ok();
                sent += 1;
                thread::sleep(Duration::from_millis(200));
            }
            Ok((ok, sent))
        });
        let report = wrk(&abuser.ns, &flood_url, 100, Duration::from_secs(SECS))?;
        Ok((report, legit_thread.join().unwrap()?))
    })?;
    assert_eq!(legit_ok, legit_sent, "every legitimate request succeeded");

    let admitted = s.served(&abuser.addr4.to_string(), API)? as f64;
    let expected = (BURST + RATE * SECS) as f64;
    let (stopped, ..) = s.stop()?;
    let dropped = stopped.counter("requests", "rate_limited")?;
    eprintln!(
        "flood: nginx served {admitted} of the abuser's requests, expected {expected}; {dropped} dropped\n{report}"
    );
    assert!(
        (admitted - expected).abs() <= expected * 0.10,
        "admitted {admitted}, expected {expected} ± 10%"
    );
    assert!(dropped > 0);
    Ok(())
}

#[test]
fn deny_drops_allow_bypasses_and_network_limits_apply_most_specific_first() -> Result<()> {
    let _serial = serial();
    // Clients 0, 1, 2 are 198.18.0.2, 198.18.1.2, 198.18.2.2.
    let s = Scenario::start(
        4,
        &[
            "--rate",
            "1",
            "--burst",
            "2",
            "--deny",
            "198.18.1.0/24",
            "--allow",
            "198.18.2.2",
            "--limit",
            "198.18.0.0/16=1:4",
            "--limit",
            "198.18.3.0/24=1:6",
        ],
    )?;
    assert_eq!(burst(s.client(1), 3, SHORT)?, 0, "denied");
    assert_eq!(s.served("198.18.1.2", API)?, 0);
    assert_eq!(burst(s.client(2), 12, EVERY)?, 12, "allowed, never limited");
    assert_eq!(burst(s.client(0), 10, SHORT)?, 4, "the /16 override");
    assert_eq!(
        burst(s.client(3), 10, SHORT)?,
        6,
        "the /24 override wins over the /16"
    );
    let (stopped, ..) = s.stop()?;
    // Denied at XDP (native on veth) or, where it is not attached, in TC.
    assert!(
        stopped.counter("connections", "denied")? + stopped.counter("connections", "xdp_denied")?
            >= 3
    );
    // 6 + 4 over the limits at least (retransmissions are judged, and counted, again).
    assert!(stopped.counter("requests", "rate_limited")? >= 10);
    Ok(())
}

#[test]
fn ipv6_clients_in_one_64_share_a_bucket() -> Result<()> {
    let _serial = serial();
    let s = Scenario::start(2, &["--rate", "1", "--burst", "4"])?;
    let c0 = s.client(0);
    // A second address in client 0's /64.
    let other: IpAddr = "2001:db8:0:0:ffff::3".parse()?;
    c0.ns.ip(&[
        "addr",
        "add",
        &format!("{other}/64"),
        "dev",
        "eth0",
        "nodad",
    ])?;
    assert_eq!(burst_from(c0, Some(c0.addr6.into()), 3, EVERY)?, 3);
    assert_eq!(
        burst_from(c0, Some(other), 3, SHORT)?,
        1,
        "one token left in the shared /64 bucket"
    );
    let c1 = s.client(1);
    assert_eq!(
        burst_from(c1, Some(c1.addr6.into()), 4, EVERY)?,
        4,
        "another /64, its own bucket"
    );
    Ok(())
}

#[test]
fn block_for_blocks_then_expires() -> Result<()> {
    let _serial = serial();
    let s = Scenario::start(1, &["--rate", "1", "--burst", "2", "--block-for", "2s"])?;
    let c = s.client(0);
    assert_eq!(burst(c, 3, SHORT)?, 2);
    // Blocked now: even a new connection gets nowhere.
    assert_eq!(burst(c, 1, SHORT)?, 0);
    thread::sleep(Duration::from_millis(2200));
    assert_eq!(burst(c, 1, Duration::from_secs(3))?, 1, "the block expired");
    let (stopped, ..) = s.stop()?;
    assert!(
        stopped.counter("connections", "blocked")?
            + stopped.counter("connections", "xdp_blocked")?
            >= 1
    );
    Ok(())
}

#[test]
fn conn_rate_bites_at_its_number() -> Result<()> {
    let _serial = serial();
    let s = Scenario::start(1, &["--conn-rate", "1", "--conn-burst", "3"])?;
    assert_eq!(burst(s.client(0), 8, SHORT)?, 3);
    let (stopped, ..) = s.stop()?;
    assert!(stopped.counter("connections", "conn_limited")? >= 5);
    Ok(())
}

/// Holds an idle TCP connection to the API open from the client until killed.
fn hold_connection(c: &Client) -> Result<Child> {
    let target = format!("exec 3<>/dev/tcp/{}/{API}; exec sleep 30", c.server4);
    Ok(c.ns
        .command("bash")
        .args(["-c", &target])
        .stdout(Stdio::null())
        .spawn()?)
}

fn established(s: &Scenario) -> Result<usize> {
    let out = s
        .topo
        .server
        .exec("ss", &["-Htn", "state", "established", "( sport = :8080 )"])?;
    Ok(out.lines().count())
}

#[test]
fn max_conns_bites_at_its_number() -> Result<()> {
    let _serial = serial();
    let s = Scenario::start(1, &["--max-conns", "2"])?;
    let c = s.client(0);
    let mut holders = vec![hold_connection(c)?, hold_connection(c)?];
    wait_until(Duration::from_secs(5), "two held connections", || {
        Ok(established(&s)? == 2)
    })?;
    assert_eq!(burst(c, 1, SHORT)?, 0, "a third connection is refused");
    kill(&mut holders[0]);
    wait_until(
        Duration::from_secs(5),
        "the server to see the close",
        || Ok(established(&s)? == 1),
    )?;
    assert_eq!(
        burst(c, 1, Duration::from_secs(3))?,
        1,
        "room again after a close"
    );
    for h in &mut holders {
        kill(h);
    }
    let (stopped, ..) = s.stop()?;
    assert!(stopped.counter("connections", "conn_limited")? >= 1);
    Ok(())
}

/// Turns transmit checksum offload off on the client's link (the ethtool
/// ioctl, from Python: ETHTOOL_STXCSUM, then ETHTOOL_GTXCSUM to check). Over a
/// veth an offloaded segment reaches the server marked as checked already
/// (CHECKSUM_PARTIAL), and its kernel would verify nothing; without offload the
/// client's stack sums every segment in software and the server's kernel checks
/// each one, the rewritten ones too.
const NO_TX_OFFLOAD: &str = r#"
import array, fcntl, socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
def ethtool(cmd, value=0):
    buf = array.array("I", [cmd, value])
    fcntl.ioctl(s, 0x8946, struct.pack("16sP16x", b"eth0", buf.buffer_info()[0]))
    return buf[1]
ethtool(0x17, 0)
assert ethtool(0x16) == 0, "tx checksumming still on"
"#;

/// Sends the server, on a closed port, one TCP segment whose checksum is wrong
/// (a raw socket: the kernel sends it as given, no offload).
const BAD_CHECKSUM: &str = r#"
import socket, struct, sys
server, client = sys.argv[1], sys.argv[2]
v6 = ":" in server
fam = socket.AF_INET6 if v6 else socket.AF_INET
tcp = struct.pack("!HHIIBBHHH", 40000, 9, 1, 0, 5 << 4, 0x02, 1024, 0, 0)
pseudo = (socket.inet_pton(fam, client) + socket.inet_pton(fam, server)
          + (struct.pack("!IxxxB", len(tcp), 6) if v6 else struct.pack("!xBH", 6, len(tcp))))
words = pseudo + tcp
total = sum(struct.unpack("!%dH" % (len(words) // 2), words))
while total >> 16:
    total = (total & 0xffff) + (total >> 16)
good = ~total & 0xffff
bad = good ^ 0x5a5a
tcp = tcp[:16] + struct.pack("!H", bad) + tcp[18:]
r = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_TCP)
r.sendto(tcp, (server, 0))
"#;

#[test]
fn on_limit_reset_resets_the_client_and_closes_the_server_side() -> Result<()> {
    let _serial = serial();
    let s = Scenario::start(1, &["--rate", "1", "--burst", "1", "--on-limit", "reset"])?;
    let c = s.client(0);
    c.ns.exec("python3", &["-c", NO_TX_OFFLOAD])?;
    let server = &s.topo.server;
    for ipv6 in [false, true] {
        let (server_addr, client_addr) = (c.server(ipv6), c.addr(ipv6));
        let family = if ipv6 { "IPv6" } else { "IPv4" };
        // The judge is awake: a segment with a bad checksum from this link is
        // counted by the server's kernel as one.
        let csum_errors = server.snmp("Tcp", "InCsumErrors")?;
        c.ns.exec(
            "python3",
            &[
                "-c",
                BAD_CHECKSUM,
                &server_addr.to_string(),
                &client_addr.to_string(),
            ],
        )?;
        wait_until(
            Duration::from_secs(10),
            "the server to count the bad checksum",
            || Ok(server.snmp("Tcp", "InCsumErrors")? == csum_errors + 1),
        )?;

        let resets = server.snmp("Tcp", "EstabResets")?;
        // One keep-alive connection: the first request passes, the second is over.
        let script = format!(
            r#"
import socket, sys
s = socket.create_connection(("{server_addr}", {API}), timeout=5)
req = b"GET /r HTTP/1.1\r\nHost: api\r\n\r\n"
s.sendall(req)
assert b"200 OK" in s.recv(4096)
s.sendall(req)
try:
    data = s.recv(4096)
    print("closed" if not data else "answered")
except ConnectionResetError:
    print("reset")
except socket.timeout:
    print("timeout")
"#
        );
        let out = c.ns.exec("python3", &["-c", &script])?;
        assert_eq!(out.trim(), "reset", "{family}: the client sees a reset");
        assert_eq!(
            s.served(&client_addr.to_string(), API)?,
            1,
            "{family}: nginx never saw the second request"
        );
        // The server's kernel took the rewritten segment for a valid RST: it
        // tore the established connection down (no socket of this client is
        // left in any state), and no checksum it checked was wrong.
        let dst = if ipv6 {
            format!("[{client_addr}]")
        } else {
            client_addr.to_string()
        };
        let left = server.exec("ss", &["-Htan", "dst", &dst, "( sport = :8080 )"])?;
        assert_eq!(left.trim(), "", "{family}: the server side is gone");
        assert_eq!(
            server.snmp("Tcp", "EstabResets")? - resets,
            1,
            "{family}: one established connection reset by a received RST"
        );
        assert_eq!(
            server.snmp("Tcp", "InCsumErrors")?,
            csum_errors + 1,
            "{family}: the rewritten RST's checksum is right (only the control was wrong)"
        );
    }
    assert_eq!(established(&s)?, 0, "the server side is closed");
    let (stopped, ..) = s.stop()?;
    // The reset requests, and their retransmissions until the bucket refilled.
    assert!(stopped.counter("requests", "rate_limited")? >= 2);
    Ok(())
}

#[test]
fn dry_run_drops_nothing_and_counts_what_it_would_have() -> Result<()> {
    let _serial = serial();
    let s = Scenario::start(1, &["--rate", "1", "--burst", "2", "--dry-run"])?;
    assert_eq!(burst(s.client(0), 6, EVERY)?, 6);
    let (stopped, ..) = s.stop()?;
    assert_eq!(stopped.counter("requests", "would_drop")?, 4);
    assert_eq!(stopped.counter("requests", "rate_limited")?, 4);
    assert_eq!(stopped.counter("requests", "allowed")?, 2);
    Ok(())
}
