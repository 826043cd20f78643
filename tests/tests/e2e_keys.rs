//! Key and route limits end to end: real clients in their namespaces (one
//! with 50 addresses), real nginx, the real daemon; nginx's access log is the
//! judge of what was served. Over a limit, requests are dropped and the
//! client gives up after GIVE_UP, aborting its connection (a RST, so no
//! retransmission is served later).

use std::{
    io::{Read as _, Write as _},
    mem::size_of,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use api_guard_tests::{
    bpf_maps,
    netns::{Client, Netns},
    process::wait_until,
    scenario::{API, Scenario},
};

/// An over-limit request is dropped and retransmitted 200 ms later, then
/// 600 ms later: giving up at 400 ms leaves one retransmission, which a bucket
/// refilling at 1/s cannot admit while a test's requests start within 0.8 s.
const GIVE_UP: Duration = Duration::from_millis(400);

/// A TCP connection from `src` (one of the namespace's addresses) to `dst`.
fn connect_from(src: IpAddr, dst: SocketAddr) -> Result<TcpStream> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst.ip()) else {
        bail!("IPv4 only here");
    };
    let sin = |a: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: plain socket calls on a descriptor owned by the TcpStream below.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = TcpStream::from_raw_fd(fd);
        let local = sin(s, 0);
        let rc = libc::bind(
            fd,
            (&raw const local).cast(),
            size_of::<libc::sockaddr_in>() as u32,
        );
        ensure!(rc == 0, "bind {src}: {}", std::io::Error::last_os_error());
        let remote = sin(d, dst.port());
        let rc = libc::connect(
            fd,
            (&raw const remote).cast(),
            size_of::<libc::sockaddr_in>() as u32,
        );
        ensure!(
            rc == 0,
            "connect {dst}: {}",
            std::io::Error::last_os_error()
        );
        Ok(stream)
    }
}

/// Bytes sent but not yet acknowledged (SIOCOUTQ).
fn unacked(s: &TcpStream) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    if rc == 0 { n as usize } else { usize::MAX }
}

/// Closes with a RST: nothing left to retransmit.
fn abort(s: TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: SO_LINGER takes a struct linger.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const l).cast(),
            size_of::<libc::linger>() as u32,
        )
    };
}

/// Sends one request as `parts`, each its own segment (the next is written
/// once the previous one is acknowledged); true if answered 200 within
/// GIVE_UP of the last part.
fn request(src: IpAddr, dst: SocketAddr, parts: &[&[u8]]) -> Result<bool> {
    let mut s = connect_from(src, dst)?;
    s.set_nodelay(true)?;
    for (i, p) in parts.iter().enumerate() {
        s.write_all(p)?;
        if i + 1 < parts.len() {
            // A part not acknowledged was dropped: the request is refused.
            let start = Instant::now();
            while unacked(&s) != 0 {
                if start.elapsed() > GIVE_UP {
                    abort(s);
                    return Ok(false);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    s.set_read_timeout(Some(GIVE_UP))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => {
                abort(s);
                return Ok(false);
            }
        }
    }
    Ok(buf.starts_with(b"HTTP/1.1 200"))
}

fn head(path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut h = format!("GET {path} HTTP/1.1\r\nHost: api\r\nConnection: close\r\n");
    for (n, v) in headers {
        h.push_str(&format!("{n}: {v}\r\n"));
    }
    h.push_str("\r\n");
    h.into_bytes()
}

/// Requests nginx served whose URI starts with `path`.
fn served(s: &Scenario, path: &str) -> Result<usize> {
    Ok(s.nginx
        .access_log()?
        .iter()
        .filter(|l| l.uri.starts_with(path) && l.status == 200)
        .count())
}

/// Adds `n` more addresses to the client's link (198.18.i.10 ...).
fn more_addresses(c: &Client, n: u8) -> Result<Vec<IpAddr>> {
    let [a, b, i, _] = c.addr4.octets();
    let mut out = Vec::new();
    for k in 0..n {
        let addr = Ipv4Addr::new(a, b, i, 10 + k);
        c.ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        out.push(addr.into());
    }
    Ok(out)
}

fn api(c: &Client) -> SocketAddr {
    SocketAddr::new(c.server4.into(), API)
}

/// Runs `f` in the client's namespace.
fn within<T: Send>(ns: &Netns, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    ns.within(f)?
}

/// At most the burst plus what the rate refilled while the requests ran.
fn at_most(burst: usize, rate: f64, took: Duration) -> usize {
    burst + (rate * took.as_secs_f64()).ceil() as usize
}

#[test]
fn one_key_from_50_addresses_shares_a_bucket_and_two_keys_from_one_address_have_two() -> Result<()>
{
    let s = Scenario::start(2, &["--key-header", "X-API-Key", "--key-rate", "1:5"])?;
    let (many, one) = (s.client(0), s.client(1));
    let addrs = more_addresses(many, 50)?;
    let dst = api(many);
    let start = Instant::now();
    let ok = within(&many.ns, || {
        let mut ok = 0;
        for a in &addrs {
            ok += request(*a, dst, &[&head("/shared", &[("X-API-Key", "k-shared")])])? as usize;
        }
        Ok(ok)
    })?;
    let took = start.elapsed();
    let logged = served(&s, "/shared")?;
    // A client may give up on a request nginx served late: nginx is the judge.
    assert!(ok <= logged, "the clients saw {ok}, nginx served {logged}");
    assert!(logged >= 5, "the burst was served ({logged})");
    assert!(
        logged <= at_most(5, 1.0, took),
        "one bucket for 50 addresses: {logged} served in {took:?}"
    );
    // Two keys from one address: each its own burst.
    let dst = api(one);
    let src = one.addr4.into();
    let ok = within(&one.ns, || {
        let mut ok = 0;
        for key in ["k-a", "k-b"] {
            for _ in 0..5 {
                ok += request(src, dst, &[&head("/two", &[("x-api-key", key)])])? as usize;
            }
        }
        Ok(ok)
    })?;
    assert_eq!(ok, 10, "two keys, two buckets of 5");
    assert_eq!(served(&s, "/two")?, 10);
    let (stopped, ..) = s.stop()?;
    assert!(stopped.counter("requests", "key_limited")? >= 40);
    Ok(())
}

#[test]
fn header_name_case_and_a_key_in_the_second_segment_do_not_escape_the_key_limit() -> Result<()> {
    let s = Scenario::start(2, &["--key-header", "x-api-key", "--key-rate", "1:3"])?;
    let c = s.client(0);
    let (src, dst) = (c.addr4.into(), api(c));
    let start = Instant::now();
    let ok = within(&c.ns, || {
        let mut ok = 0;
        for name in ["x-api-key", "X-API-KEY", "X-Api-Key", "x-API-kEY"].repeat(3) {
            ok += request(src, dst, &[&head("/case", &[(name, "k-case")])])? as usize;
        }
        Ok(ok)
    })?;
    let took = start.elapsed();
    let ok = served(&s, "/case")?.max(ok);
    assert!(ok >= 3 && ok <= at_most(3, 1.0, took), "{ok} in {took:?}");

    // The key's value begins in the first segment and ends in the second.
    let c = s.client(1);
    let (src, dst) = (c.addr4.into(), api(c));
    let full = head("/split", &[("X-API-Key", "k-split-0123456789")]);
    let cut = full.windows(6).position(|w| w == b"k-spli").unwrap() + 4;
    let start = Instant::now();
    let ok = within(&c.ns, || {
        let mut ok = 0;
        for _ in 0..10 {
            ok += request(src, dst, &[&full[..cut], &full[cut..]])? as usize;
        }
        Ok(ok)
    })?;
    let took = start.elapsed();
    let ok = served(&s, "/split")?.max(ok);
    assert!(ok >= 3 && ok <= at_most(3, 1.0, took), "{ok} in {took:?}");
    let (stopped, ..) = s.stop()?;
    assert!(stopped.counter("requests", "key_limited")? >= 1);
    Ok(())
}

#[test]
fn a_query_string_never_escapes_a_route_limit() -> Result<()> {
    let s = Scenario::start(1, &["--route-limit", "GET /v1/login=1:3"])?;
    let c = s.client(0);
    let (src, dst) = (c.addr4.into(), api(c));
    let start = Instant::now();
    let (login, other) = within(&c.ns, || {
        let (mut login, mut other) = (0, 0);
        for i in 0..5 {
            login += request(src, dst, &[&head("/v1/login", &[])])? as usize;
            login += request(src, dst, &[&head(&format!("/v1/login?x={i}"), &[])])? as usize;
            other += request(src, dst, &[&head("/v1/other?x=1", &[])])? as usize;
        }
        Ok((login, other))
    })?;
    let took = start.elapsed();
    let login = served(&s, "/v1/login")?.max(login);
    assert!(
        login >= 3 && login <= at_most(3, 1.0, took),
        "{login} in {took:?}"
    );
    assert_eq!(other, 5, "another route is not limited");
    let (stopped, ..) = s.stop()?;
    assert!(stopped.counter("requests", "route_limited")? >= 1);
    Ok(())
}

#[test]
fn dry_run_counts_key_and_route_limits_and_drops_nothing() -> Result<()> {
    let s = Scenario::start(
        1,
        &[
            "--dry-run",
            "--key-header",
            "x-api-key",
            "--key-rate",
            "1:2",
            "--route-limit",
            "GET /dry=1:2",
        ],
    )?;
    let c = s.client(0);
    let (src, dst) = (c.addr4.into(), api(c));
    let ok = within(&c.ns, || {
        let mut ok = 0;
        for _ in 0..8 {
            ok += request(src, dst, &[&head("/keyed", &[("x-api-key", "k")])])? as usize;
            ok += request(src, dst, &[&head("/dry?x=1", &[])])? as usize;
        }
        Ok(ok)
    })?;
    assert_eq!(ok, 16, "nothing dropped");
    assert_eq!(served(&s, "/keyed")? + served(&s, "/dry")?, 16);
    let (stopped, ..) = s.stop()?;
    assert!(stopped.counter("requests", "key_limited")? >= 1);
    assert!(stopped.counter("requests", "route_limited")? >= 1);
    assert!(stopped.counter("requests", "would_drop")? >= 2);
    Ok(())
}

#[test]
fn a_live_limit_change_takes_effect_without_a_restart() -> Result<()> {
    let s = Scenario::start(1, &["--key-header", "x-api-key"])?;
    let c = s.client(0);
    let (src, dst) = (c.addr4.into(), api(c));
    let run = |path: &'static str, n: usize| {
        within(&c.ns, move || {
            let mut ok = 0;
            for _ in 0..n {
                ok += request(src, dst, &[&head(path, &[("x-api-key", "k-live")])])? as usize;
            }
            Ok(ok)
        })
    };
    assert_eq!(run("/before", 6)?, 6, "no limit yet");
    let out = s.ctl(&["limit", "--key-rate", "1:2"])?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = Instant::now();
    let ok = run("/after", 8)?;
    assert!(ok >= 2 && ok <= at_most(2, 1.0, start.elapsed()), "{ok}");
    let out = s.ctl(&["limit", "--route", "GET /route=1:1"])?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = s.ctl(&["limit", "--key-rate", "1000"])?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = Instant::now();
    let ok = run("/route", 6)?;
    assert!(ok >= 1 && ok <= at_most(1, 1.0, start.elapsed()), "{ok}");
    // A route limit without a key header is refused live as at start.
    let out = s.ctl(&["limit", "--route", "GET /bad?x=1"])?;
    assert!(!out.status.success());
    Ok(())
}

#[test]
fn no_credential_is_in_any_map_or_log() -> Result<()> {
    // 31 bytes: 7 past the last whole 8-byte word, the bytes a hash's
    // unfinished word would hold.
    const SECRET: &str = "Zq9Xv7Wk2Jb8Rm4Tn6Yp3Hs5Gd1Fc0L";
    assert_eq!(SECRET.len() % 8, 7);
    let log = tempfile::NamedTempFile::new()?;
    let log_path = log.path().display().to_string();
    let s = Scenario::start(
        1,
        &[
            "--key-header",
            "Authorization",
            "--key-rate",
            "1:2",
            "--route-limit",
            "GET /v1=1:2",
            "--sample",
            "1",
            "--access-log",
            &log_path,
        ],
    )?;
    let c = s.client(0);
    let (src, dst) = (c.addr4.into(), api(c));
    let bearer = format!("Bearer {SECRET}");
    within(&c.ns, || {
        for _ in 0..5 {
            request(src, dst, &[&head("/v1/x", &[("Authorization", &bearer)])])?;
        }
        Ok(())
    })?;
    // A hang guard, not a deadline.
    wait_until(Duration::from_secs(60), "the access log's lines", || {
        Ok(std::fs::read_to_string(log.path()).is_ok_and(|t| t.lines().count() >= 2))
    })?;
    let maps = bpf_maps::all_map_bytes(&s.topo.server)?;
    let names: Vec<&str> = maps.iter().map(|(n, _)| n.as_str()).collect();
    for want in [
        "KEY_POLICY",
        "LIMIT_BUCKETS",
        "KEY_CONNS",
        "KEY_SCRATCH",
        "CONNS",
    ] {
        assert!(names.contains(&want), "{want} was dumped: {names:?}");
    }
    // Any 3 bytes of the key, anywhere (ring buffers cannot be dumped).
    let holding = bpf_maps::maps_holding(&maps, SECRET.as_bytes(), 3);
    assert!(holding.is_empty(), "maps {holding:?} hold bytes of the key");
    let access = std::fs::read_to_string(log.path())?;
    assert!(
        !access.contains(&SECRET[..8]),
        "the access log holds the key"
    );
    // The log names the key by its fingerprint, and top by the same one.
    let logged: serde_json::Value = serde_json::from_str(access.lines().next().unwrap())?;
    let fingerprint = logged["api_guard.key"]
        .as_str()
        .context("the access log's key fingerprint")?
        .to_string();
    assert_eq!(fingerprint.len(), 8);
    let top = s.ctl(&["top", "--once", "--json", "--interval", "100ms"])?;
    let top_text = String::from_utf8_lossy(&top.stdout);
    assert!(!top_text.contains(&SECRET[..8]), "top shows the key");
    let frame: serde_json::Value = serde_json::from_str(top_text.lines().last().unwrap_or(""))?;
    let keys = frame["keys"].as_array().context("top's keys")?;
    assert!(
        keys.iter().any(|k| k["key"] == fingerprint.as_str()),
        "top shows {fingerprint}: {keys:?}"
    );
    assert!(
        !s.daemon.stderr().contains(&SECRET[..8]),
        "the daemon's log holds the key"
    );
    assert!(
        !s.daemon.stderr().contains(&SECRET[..8]),
        "the daemon's log holds the key"
    );
    let (stopped, ..) = s.stop()?;
    assert!(stopped.counter("requests", "key_limited")? >= 1);
    Ok(())
}
