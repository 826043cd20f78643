//! The TLS programs at the unit level, in aya's own pattern: uprobes on
//! functions of this test binary named like libssl's (`SSL_read`,
//! `SSL_read_ex`, `SSL_write`). The fake library reads a real TCP socket on
//! loopback (so the kernel's `sock_recv_length` tracepoint names the socket)
//! or hands out bytes it buffered (as libssl does with the rest of a record).
//! Judged by the kernel's own maps: the client's request count and the TLS
//! event counters.

use std::{
    collections::HashSet,
    ffi::c_void,
    io::Write as _,
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::Path,
};

use anyhow::{Result, ensure};
use api_guard::kernel::ring::SampleRing;
use api_guard::kernel::{Datapath, KernelMaps as _, LoadOptions, attach::ssl_sites};
use api_guard_common::{
    config::{Config, Limit},
    counters::{Kind, Verdict},
    exchange::{RESPONSE_PAIRED, ResponseBlock, ResponseCount as C, ResponseRecord},
    sample::{HEADER_LEN, NO_EXCHANGE, SampleHeader},
    tls::{SOURCE_TLS_READ, SOURCE_TLS_WRITE, TlsEvent},
};

/// What the fake `SSL*` points at: the socket, and plaintext "buffered".
struct FakeSsl {
    fd: i32,
    pending: Vec<u8>,
    /// Writes do not wait for room: like libssl on a non-blocking socket, a
    /// write that cannot finish returns -1 and must be repeated; `sent` is
    /// how much of it went out already.
    nonblocking: bool,
    sent: usize,
    /// Non-zero: libssl's partial-write mode (`SSL_MODE_ENABLE_PARTIAL_WRITE`),
    /// a write returns after one record of this many bytes.
    record: usize,
}

/// Like libssl's: plaintext from the buffer if any (no syscall), else from
/// the socket.
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn SSL_read(ssl: *mut c_void, buf: *mut u8, num: i32) -> i32 {
    // SAFETY: the test passes a live FakeSsl and a buffer of `num` bytes.
    let ssl = unsafe { &mut *(ssl as *mut FakeSsl) };
    let n = fill(ssl, buf, num as usize);
    std::hint::black_box(n as i32)
}

#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn SSL_read_ex(
    ssl: *mut c_void,
    buf: *mut u8,
    num: usize,
    readbytes: *mut usize,
) -> i32 {
    // SAFETY: as in SSL_read; `readbytes` is the caller's.
    let ssl = unsafe { &mut *(ssl as *mut FakeSsl) };
    let n = fill(ssl, buf, num);
    // SAFETY: the caller's out-parameter.
    unsafe { *readbytes = n };
    std::hint::black_box((n > 0) as i32)
}

/// The handshake (nothing to do here: the uprobe marks the SSL* fresh).
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn SSL_do_handshake(ssl: *mut c_void) -> i32 {
    std::hint::black_box(ssl);
    1
}

#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn SSL_write(ssl: *mut c_void, buf: *const u8, num: i32) -> i32 {
    // SAFETY: as in SSL_read.
    let ssl = unsafe { &mut *(ssl as *mut FakeSsl) };
    if !ssl.nonblocking {
        // SAFETY: a live socket and a buffer of `num` bytes.
        let n = unsafe { libc::send(ssl.fd, buf.cast(), num as usize, 0) };
        return std::hint::black_box(n as i32);
    }
    // libssl's way: the whole write (or in partial-write mode one record) or
    // -1 (to be repeated with the same arguments), sending what fits each time.
    let whole = if ssl.record > 0 {
        ssl.record.min(num as usize)
    } else {
        num as usize
    };
    while ssl.sent < whole {
        // SAFETY: a live socket; the rest of the caller's buffer.
        let n = unsafe {
            libc::send(
                ssl.fd,
                buf.add(ssl.sent).cast(),
                whole - ssl.sent,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return std::hint::black_box(-1);
        }
        ssl.sent += n as usize;
    }
    ssl.sent = 0;
    std::hint::black_box(whole as i32)
}

#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn SSL_write_ex(
    ssl: *mut c_void,
    buf: *const u8,
    num: usize,
    written: *mut usize,
) -> i32 {
    let n = SSL_write(ssl, buf, num as i32);
    // SAFETY: the caller's out-parameter.
    unsafe { *written = n.max(0) as usize };
    (n > 0) as i32
}

fn fill(ssl: &mut FakeSsl, buf: *mut u8, num: usize) -> usize {
    if !ssl.pending.is_empty() {
        let n = ssl.pending.len().min(num);
        // SAFETY: `buf` holds `num` >= n bytes.
        unsafe { std::ptr::copy_nonoverlapping(ssl.pending.as_ptr(), buf, n) };
        ssl.pending.drain(..n);
        return n;
    }
    // SAFETY: a live socket and a buffer of `num` bytes.
    let n = unsafe { libc::recv(ssl.fd, buf.cast(), num, 0) };
    n.max(0) as usize
}

fn read(ssl: &mut FakeSsl) -> usize {
    let mut buf = vec![0u8; 16384];
    SSL_read(
        (ssl as *mut FakeSsl).cast(),
        buf.as_mut_ptr(),
        buf.len() as i32,
    )
    .max(0) as usize
}

fn read_ex(ssl: &mut FakeSsl) -> usize {
    let mut buf = vec![0u8; 16384];
    let mut n = 0usize;
    SSL_read_ex(
        (ssl as *mut FakeSsl).cast(),
        buf.as_mut_ptr(),
        buf.len(),
        &mut n,
    );
    n
}

struct Scene {
    dp: Datapath,
    client: TcpStream,
    // Kept open: the server side of the connection.
    _server: TcpStream,
    ssl: Box<FakeSsl>,
    // Last: released after the programs are gone.
    _serial: std::sync::MutexGuard<'static, ()>,
}

/// One scene at a time: every scene's uprobes fire on every test's calls
/// (the same process), so counts are exact only with one loaded.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn scene(config: Config) -> Result<Scene> {
    scene_with(config, true)
}

/// `handshake` false: the connection was open before the programs were (its
/// plaintext is picked up mid-way).
fn scene_with(config: Config, handshake: bool) -> Result<Scene> {
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let mut dp = Datapath::load(&LoadOptions::default())?;
    dp.watch_ports(&[port])?;
    dp.set_config(&config)?;
    dp.tls_load(Path::new("/sys/kernel/btf/vmlinux"))?;
    let exe = Path::new("/proc/self/exe");
    dp.tls_attach(exe, &ssl_sites(exe)?, std::process::id())?;
    dp.tls_follow(&HashSet::from([std::process::id()]))?;
    let client = TcpStream::connect(("127.0.0.1", port))?;
    let (server, _) = listener.accept()?;
    let mut ssl = Box::new(FakeSsl {
        fd: server.as_raw_fd(),
        pending: Vec::new(),
        nonblocking: false,
        sent: 0,
        record: 0,
    });
    if handshake {
        SSL_do_handshake((&mut *ssl as *mut FakeSsl).cast());
    }
    Ok(Scene {
        dp,
        client,
        _server: server,
        ssl,
        _serial: serial,
    })
}

fn requests_from_loopback(dp: &Datapath) -> Result<u64> {
    Ok(dp
        .clients()?
        .iter()
        .filter(|c| c.addr.to_string() == "127.0.0.1")
        .map(|c| c.state.requests)
        .sum())
}

fn event(dp: &Datapath, e: TlsEvent) -> Result<u64> {
    Ok(dp.tls_events()?[e as usize])
}

#[test]
fn ssl_read_plaintext_is_counted_for_the_sockets_peer() -> Result<()> {
    let mut s = scene(Config::unlimited())?;
    // Two pipelined requests, read through the socket.
    s.client
        .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\n\r\n")?;
    let mut got = 0;
    while got < 45 {
        got += read(&mut s.ssl);
    }
    ensure!(
        requests_from_loopback(&s.dp)? == 2,
        "pipelined pair not counted 2"
    );
    ensure!(event(&s.dp, TlsEvent::Reads)? >= 1);

    // Plaintext libssl had buffered: no syscall in the call, so the
    // connection comes from the cache of this SSL*.
    s.ssl.pending = b"\r\nGET /c HTTP/1.1\r\n\r\n".to_vec();
    read(&mut s.ssl);
    ensure!(
        requests_from_loopback(&s.dp)? == 3,
        "buffered request not counted"
    );
    ensure!(event(&s.dp, TlsEvent::FromCache)? == 1);

    // Another SSL* never seen with a socket: counted as unattributed, not
    // charged to anyone.
    let mut stranger = FakeSsl {
        fd: -1,
        pending: b"GET /z HTTP/1.1\r\n\r\n".to_vec(),
        nonblocking: false,
        sent: 0,
        record: 0,
    };
    read(&mut stranger);
    ensure!(event(&s.dp, TlsEvent::Unattributed)? == 1);
    ensure!(requests_from_loopback(&s.dp)? == 3);

    // SSL_read_ex: the count comes through *readbytes; a Content-Length body
    // that looks like a request is skipped, as on the TC path.
    s.client.write_all(
        b"POST /d HTTP/1.1\r\nContent-Length: 19\r\n\r\nGET /x HTTP/1.1\r\n\r\nGET /e HTTP/1.1\r\n\r\n",
    )?;
    let mut got = 0;
    while got < 78 {
        got += read_ex(&mut s.ssl);
    }
    ensure!(
        requests_from_loopback(&s.dp)? == 5,
        "SSL_read_ex: counted {} of 5",
        requests_from_loopback(&s.dp)?
    );

    // SSL_write ties its SSL* to the connection too.
    let msg = b"HTTP/1.1 200 OK\r\n\r\n";
    SSL_write(
        (&mut *s.ssl as *mut FakeSsl).cast(),
        msg.as_ptr(),
        msg.len() as i32,
    );
    ensure!(event(&s.dp, TlsEvent::Writes)? == 1);
    let mut written = 0usize;
    SSL_write_ex(
        (&mut *s.ssl as *mut FakeSsl).cast(),
        msg.as_ptr(),
        msg.len(),
        &mut written,
    );
    ensure!(written == msg.len());
    ensure!(event(&s.dp, TlsEvent::Writes)? == 2);
    Ok(())
}

#[test]
fn requests_over_the_limit_are_counted_rate_limited_with_a_verdict_for_the_packet_path()
-> Result<()> {
    let mut config = Config::unlimited();
    // 1 a second, bursts of 2: the third of three requests in one read is over.
    config.requests = Limit::per_second(1, 2);
    let mut s = scene(config)?;
    s.client
        .write_all(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n")?;
    let mut got = 0;
    while got < 38 {
        got += read(&mut s.ssl);
    }
    s.client.write_all(b"GET /3 HTTP/1.1\r\n\r\n")?;
    let mut got = 0;
    while got < 19 {
        got += read(&mut s.ssl);
    }
    let c = s.dp.counters()?;
    ensure!(c.get(Kind::Requests, Verdict::Allowed) == 2, "{c:?}");
    ensure!(c.get(Kind::Requests, Verdict::RateLimited) == 1, "{c:?}");
    ensure!(event(&s.dp, TlsEvent::Verdicts)? == 1);
    Ok(())
}

#[test]
fn a_forged_syn_or_a_stray_rst_does_not_lift_a_tls_connections_verdict() -> Result<()> {
    use api_guard_tests::packet::{ETH_P_IP, IPPROTO_TCP, SYN, Tcp, ethernet, ipv4};
    use aya::programs::TestRun as _;
    const RST: u8 = 0x04;
    let mut config = Config::unlimited();
    // 1 a second, bursts of 1: the second request of the read is over.
    config.requests = Limit::per_second(1, 1);
    let mut s = scene(config)?;
    s.client
        .write_all(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n")?;
    let mut got = 0;
    while got < 38 {
        got += read(&mut s.ssl);
    }
    ensure!(event(&s.dp, TlsEvent::Verdicts)? == 1, "no verdict left");
    // Segments of the connection itself (127.0.0.1 both ends), run through
    // the ingress program: the server's socket is the real one.
    let sport = s.client.local_addr()?.port();
    let dport = s.client.peer_addr()?.port();
    let lo = std::net::Ipv4Addr::LOCALHOST;
    let run = |flags: u8, seq: u32, payload: &[u8]| -> Result<u32> {
        let tcp = Tcp {
            sport,
            seq,
            flags,
            ..Tcp::data(dport, payload)
        };
        let frame = ethernet(&[], ETH_P_IP, &ipv4(lo, lo, &[], IPPROTO_TCP, &tcp.bytes()));
        let out = s.dp.ingress()?.test_run(aya::programs::TestRunOptions {
            data_in: Some(&frame),
            data_out: Some(&mut vec![0u8; frame.len() + 256]),
            repeat: 1,
            ..Default::default()
        })?;
        Ok(out.return_value)
    };
    let data = Tcp::data(dport, b"").flags;
    const TC_ACT_SHOT: u32 = 2;
    ensure!(
        run(data, 77, b"\x17\x03\x03")? == TC_ACT_SHOT,
        "the verdict did not hold to begin with"
    );
    // A SYN into the open connection: the server's stack answers it with a
    // challenge ACK and keeps the connection, and so must the verdict.
    run(SYN, 1234, b"")?;
    ensure!(
        run(data, 77, b"\x17\x03\x03")? == TC_ACT_SHOT,
        "a forged SYN lifted the verdict"
    );
    // A RST whose number is not the one the server expects: the same.
    run(RST, 1234, b"")?;
    ensure!(
        run(data, 77, b"\x17\x03\x03")? == TC_ACT_SHOT,
        "a stray RST lifted the verdict"
    );
    Ok(())
}

fn responses(dp: &Datapath) -> Result<ResponseBlock> {
    dp.responses()
}

fn delta(dp: &Datapath, before: &ResponseBlock) -> Result<ResponseBlock> {
    let now = responses(dp)?;
    Ok(std::array::from_fn(|i| now[i] - before[i]))
}

/// Reads until `n` plaintext bytes came.
fn read_n(ssl: &mut FakeSsl, n: usize) {
    let mut got = 0;
    while got < n {
        got += read(ssl);
    }
}

fn write(ssl: &mut FakeSsl, msg: &[u8]) -> i32 {
    SSL_write((ssl as *mut FakeSsl).cast(), msg.as_ptr(), msg.len() as i32)
}

/// The TLS records on the ring: request samples' (number), responses'
/// (number, status, time to first byte).
fn drain(ring: &mut SampleRing) -> (Vec<u32>, Vec<(u32, u16, u64)>) {
    let (mut requests, mut answers) = (Vec::new(), Vec::new());
    while let Some(rec) = ring.next() {
        let hdr = SampleHeader::parse(&rec).unwrap().0;
        if hdr.source == SOURCE_TLS_READ {
            requests.push(hdr.exchange);
        } else if hdr.source == SOURCE_TLS_WRITE {
            let body = &rec[HEADER_LEN..];
            assert_eq!(body.len(), size_of::<ResponseRecord>());
            // SAFETY: the record's bytes hold a ResponseRecord (checked length).
            let r: ResponseRecord = unsafe { std::ptr::read_unaligned(body.as_ptr().cast()) };
            assert_eq!(r.flags & RESPONSE_PAIRED, RESPONSE_PAIRED);
            answers.push((hdr.exchange, r.status, r.ttfb_ns));
        }
    }
    (requests, answers)
}

#[test]
fn ssl_write_responses_pair_in_order_with_the_requests_ssl_read_numbered() -> Result<()> {
    let mut config = Config::unlimited();
    config.sample_below = u32::MAX;
    config.capture_bytes = 64;
    let mut s = scene(config)?;
    let mut ring = s.dp.take_samples()?;
    let before = responses(&s.dp)?;
    // Three pipelined requests in one read, the second a HEAD.
    let reqs: &[u8] = b"GET /a HTTP/1.1\r\n\r\nHEAD /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\n";
    s.client.write_all(reqs)?;
    read_n(&mut s.ssl, reqs.len());
    // The first answer's head and body in two writes (the body looks like a
    // status line); the HEAD's answer has a length but no body; then a 404.
    write(&mut s.ssl, b"HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\n");
    write(&mut s.ssl, b"HTTP/1.1 500 no\r\n");
    write(
        &mut s.ssl,
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
    );
    let d = delta(&s.dp, &before)?;
    ensure!(d[C::Paired as usize] == 3, "paired: {d:?}");
    ensure!(d[C::Class2xx as usize] == 2, "{d:?}");
    ensure!(
        d[C::Class4xx as usize] == 1 && d[C::Status404 as usize] == 1,
        "{d:?}"
    );
    ensure!(
        d[C::Class5xx as usize] == 0,
        "a body taken for a status line: {d:?}"
    );
    ensure!(
        d[C::Unseen as usize] == 0 && d[C::Lost as usize] == 0,
        "{d:?}"
    );
    ensure!(event(&s.dp, TlsEvent::ResponseWrites)? == 3);
    // The sampled request (the read's first) and its response share number 0.
    let (requests, answers) = drain(&mut ring);
    ensure!(requests == [0], "request samples: {requests:?}");
    ensure!(answers.len() == 1, "response records: {answers:?}");
    ensure!(answers[0].0 == 0 && answers[0].1 == 200 && answers[0].2 > 0);

    // One request more, read alone: sampled as number 3, answered 500.
    s.client.write_all(b"GET /d HTTP/1.1\r\n\r\n")?;
    read_n(&mut s.ssl, 19);
    write(
        &mut s.ssl,
        b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n",
    );
    let (requests, answers) = drain(&mut ring);
    ensure!(requests == [3], "{requests:?}");
    ensure!(answers.len() == 1 && answers[0].0 == 3 && answers[0].1 == 500);

    // An answer with no request behind it: counted, never paired; and nothing
    // after it is paired either.
    write(&mut s.ssl, b"HTTP/1.1 401 No\r\nContent-Length: 0\r\n\r\n");
    s.client.write_all(b"GET /e HTTP/1.1\r\n\r\n")?;
    read_n(&mut s.ssl, 19);
    write(&mut s.ssl, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let d = delta(&s.dp, &before)?;
    ensure!(d[C::Paired as usize] == 4, "{d:?}");
    ensure!(
        d[C::Unseen as usize] == 2 && d[C::Status401 as usize] == 1,
        "{d:?}"
    );
    let (_, answers) = drain(&mut ring);
    ensure!(answers.is_empty(), "mispaired: {answers:?}");
    Ok(())
}

#[test]
fn responses_on_a_connection_open_before_the_programs_are_counted_never_paired() -> Result<()> {
    let mut config = Config::unlimited();
    config.sample_below = u32::MAX;
    config.capture_bytes = 64;
    let mut s = scene_with(config, false)?;
    let mut ring = s.dp.take_samples()?;
    let before = responses(&s.dp)?;
    s.client.write_all(b"GET /a HTTP/1.1\r\n\r\n")?;
    read_n(&mut s.ssl, 19);
    write(
        &mut s.ssl,
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
    );
    let d = delta(&s.dp, &before)?;
    ensure!(d[C::Paired as usize] == 0, "{d:?}");
    ensure!(
        d[C::Unseen as usize] == 1 && d[C::Status404 as usize] == 1,
        "{d:?}"
    );
    let (requests, answers) = drain(&mut ring);
    ensure!(requests == [NO_EXCHANGE], "{requests:?}");
    ensure!(answers.is_empty(), "{answers:?}");
    Ok(())
}

/// A response whose body fills the socket, written as a server on a
/// non-blocking socket does (repeating a write that could not finish; in
/// partial-write mode going on from where a write stopped), then a second
/// one. Returns the writes not framed again.
fn fill_the_socket(record: usize) -> Result<()> {
    let mut s = scene(Config::unlimited())?;
    let before = responses(&s.dp)?;
    // Small buffers on both sides: the body fills them at once.
    for (fd, opt) in [
        (s.ssl.fd, libc::SO_SNDBUF),
        (s.client.as_raw_fd(), libc::SO_RCVBUF),
    ] {
        let size: libc::c_int = 4096;
        // SAFETY: a live socket and an int option.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&raw const size).cast(),
                size_of::<libc::c_int>() as u32,
            )
        };
        ensure!(rc == 0, "setsockopt");
    }
    s.ssl.nonblocking = true;
    s.ssl.record = record;
    s.client
        .write_all(b"GET /big HTTP/1.1\r\n\r\nGET /next HTTP/1.1\r\n\r\n")?;
    read_n(&mut s.ssl, 41);
    const CHUNK: usize = 65_536;
    const CHUNKS: usize = 8;
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
        CHUNK * CHUNKS
    );
    ensure!(write(&mut s.ssl, head.as_bytes()) > 0);
    // A body whose every part looks like a response: framed twice, one
    // would be counted.
    let mut chunk = b"HTTP/1.1 503 x\r\n\r\n".repeat(CHUNK / 18 + 1);
    chunk.truncate(CHUNK);
    s.client.set_nonblocking(true)?;
    let mut sink = vec![0u8; 1 << 20];
    let (mut repeats, mut rests) = (0, 0);
    for _ in 0..CHUNKS {
        let mut off = 0;
        while off < CHUNK {
            let n = write(&mut s.ssl, &chunk[off..]);
            if n < 0 {
                repeats += 1;
                // Room for the repeat: the client reads what came.
                while let Ok(n) = std::io::Read::read(&mut s.client, &mut sink) {
                    if n == 0 {
                        break;
                    }
                }
                continue;
            }
            off += n as usize;
            if off < CHUNK {
                rests += 1;
            }
        }
    }
    ensure!(repeats > 0, "the socket never filled: nothing repeated");
    ensure!(record == 0 || rests > 0, "no partial write");
    write(
        &mut s.ssl,
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
    );
    let d = delta(&s.dp, &before)?;
    let skipped = event(&s.dp, TlsEvent::WriteRetries)?;
    ensure!(
        skipped == repeats + rests,
        "{skipped} writes not framed again, of {repeats} repeats and {rests} rests"
    );
    ensure!(d[C::Paired as usize] == 2, "{d:?}");
    ensure!(d[C::Class5xx as usize] == 0, "{d:?}");
    ensure!(
        d[C::Status404 as usize] == 1 && d[C::Lost as usize] == 0,
        "{d:?}"
    );
    Ok(())
}

#[test]
fn a_write_repeated_after_a_full_socket_is_framed_once() -> Result<()> {
    fill_the_socket(0)
}

#[test]
fn the_rest_of_a_partial_write_is_framed_once() -> Result<()> {
    fill_the_socket(16_384)
}
