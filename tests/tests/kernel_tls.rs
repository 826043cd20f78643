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
use api_guard::kernel::{Datapath, KernelMaps as _, LoadOptions, attach::ssl_sites};
use api_guard_common::{
    config::{Config, Limit},
    counters::{Kind, Verdict},
    tls::TlsEvent,
};

/// What the fake `SSL*` points at: the socket, and plaintext "buffered".
struct FakeSsl {
    fd: i32,
    pending: Vec<u8>,
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
    // SAFETY: a live socket and a buffer of `num` bytes.
    let n = unsafe { libc::send(ssl.fd, buf.cast(), num as usize, 0) };
    std::hint::black_box(n as i32)
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
}

fn scene(config: Config) -> Result<Scene> {
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
    });
    SSL_do_handshake((&mut *ssl as *mut FakeSsl).cast());
    Ok(Scene {
        dp,
        client,
        _server: server,
        ssl,
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
