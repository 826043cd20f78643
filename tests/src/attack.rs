//! Attack clients for the enforcement attack suite (tests/tests/e2e_attack.rs):
//! real TCP sockets (std + libc) that write HTTP/1.1 requests in the shapes that
//! evade a per-segment request count, and a polite client to judge the limit by.
//!
//! Call them on a thread inside a client namespace ([`crate::netns::Netns::within`]):
//! a socket belongs to the namespace of the thread that made it.
//!
//! How segmentation is forced, with no raw socket: every socket has TCP_NODELAY,
//! so each write leaves at once as its own segment as long as nothing is queued
//! before it. With [`Pace::AckEach`] the writer then waits until the kernel says
//! every byte written so far is acknowledged (`ioctl(TIOCOUTQ)`, which is
//! SIOCOUTQ for TCP: bytes not yet ACKed, sent or not) before the next write, so
//! no two writes can share a segment. [`Pace::BackToBack`] writes without waiting:
//! what TCP merges (queued data behind a drop, retransmissions) is then the point.

use std::{
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

/// A liveness guard, not a timing assertion: a polite request that gets no
/// answer at all in this long means the scene is broken.
pub const STALL: Duration = Duration::from_secs(60);

/// `GET path` with a Host header: one request head, nothing else.
pub fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: api\r\n\r\n").into_bytes()
}

/// `POST path` whose body is `body`, framed by Content-Length.
pub fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: api\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// How the chunks of an attack reach the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    /// Each chunk written at once after the previous one (TCP_NODELAY).
    BackToBack,
    /// Each chunk written only once every byte before it is ACKed: one chunk,
    /// one segment.
    AckEach,
}

/// Bytes written together as one unit: `requests` whole requests, cut into
/// `chunks` (each chunk one write). A connection lost mid-round abandons the
/// round, so a round is counted as sent only when all of it was written.
#[derive(Clone, Debug)]
pub struct Round {
    pub chunks: Vec<Vec<u8>>,
    pub requests: usize,
}

impl Round {
    /// `bytes` (holding `requests` requests) in one write.
    pub fn whole(bytes: Vec<u8>, requests: usize) -> Self {
        Self {
            chunks: vec![bytes],
            requests,
        }
    }

    /// `bytes` cut before each of `cuts` (increasing offsets into `bytes`;
    /// offsets 0 and past the end are ignored).
    pub fn cut(bytes: &[u8], cuts: &[usize], requests: usize) -> Self {
        let mut chunks = Vec::new();
        let mut from = 0;
        for &c in cuts {
            if c > from && c < bytes.len() {
                chunks.push(bytes[from..c].to_vec());
                from = c;
            }
        }
        chunks.push(bytes[from..].to_vec());
        Self { chunks, requests }
    }
}

/// One attacker's plan.
#[derive(Clone, Debug)]
pub struct Attack {
    pub rounds: Vec<Round>,
    pub pace: Pace,
    /// T: when it passes, the attacker stops and resets its connection, so
    /// nothing it sent can be served later.
    pub duration: Duration,
    /// Opens a new connection when one is lost (reset, closed by the server)
    /// and goes on with the next round; without it the attack ends there.
    pub reconnect: bool,
    /// Waits for every answer of a round before the next round (a polite
    /// client); otherwise answers are read as they come.
    pub wait_answers: bool,
    /// Pause between rounds.
    pub gap: Duration,
}

impl Attack {
    pub fn new(rounds: Vec<Round>, pace: Pace, duration: Duration) -> Self {
        Self {
            rounds,
            pace,
            duration,
            reconnect: true,
            wait_answers: false,
            gap: Duration::ZERO,
        }
    }

    /// Requests in the whole plan.
    pub fn planned(&self) -> usize {
        self.rounds.iter().map(|r| r.requests).sum()
    }
}

/// What an attacker did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Outcome {
    /// Requests completely written (whole rounds).
    pub sent: usize,
    /// Responses read (status lines), whatever the status.
    pub answers: usize,
    pub connections: usize,
    /// Connections lost under the attacker (reset or closed by the server).
    pub lost: usize,
    /// TCP retransmissions over all its connections (`tcpi_total_retrans`).
    pub retransmits: u32,
    /// From the first connect to the reset of the last connection: the T of
    /// the bound.
    pub elapsed: Duration,
}

/// Runs `attack` against `server`; call it inside the client's namespace.
pub fn run(attack: &Attack, server: SocketAddr) -> Result<Outcome> {
    let start = Instant::now();
    let deadline = start + attack.duration;
    let mut out = Outcome::default();
    let mut conn: Option<Conn> = None;
    for round in &attack.rounds {
        if Instant::now() >= deadline {
            break;
        }
        if conn.is_none() {
            if out.connections > 0 && !attack.reconnect {
                break;
            }
            conn = Some(Conn::open(server)?);
            out.connections += 1;
        }
        let c = conn.as_mut().expect("just opened");
        let mut step = Ok(true);
        for chunk in &round.chunks {
            step = c.write_all(chunk, deadline);
            if attack.pace == Pace::AckEach && matches!(step, Ok(true)) {
                step = c.wait_acked(deadline);
            }
            if !matches!(step, Ok(true)) {
                break;
            }
        }
        if matches!(step, Ok(true)) {
            c.sent += round.requests;
            out.sent += round.requests;
            if attack.wait_answers {
                step = c.wait_answers(deadline);
            }
        }
        match step {
            Ok(true) => {}
            Ok(false) => break,
            Err(_) => {
                out.lost += 1;
                conn.take().expect("open").close(&mut out);
                continue;
            }
        }
        if !attack.gap.is_zero() {
            thread::sleep(attack.gap);
        }
    }
    if let Some(mut c) = conn.take() {
        // Whatever is still owed comes back until T, not after.
        if c.wait_answers(deadline).is_err() {
            out.lost += 1;
        }
        c.close(&mut out);
    }
    out.elapsed = start.elapsed();
    Ok(out)
}

/// A client connection: nonblocking, TCP_NODELAY, answers counted as they
/// arrive, reset (never closed gracefully) at the end.
struct Conn {
    stream: TcpStream,
    sent: usize,
    answers: usize,
    /// Bytes of "HTTP/1.1 " matched so far (status lines may span reads).
    matched: usize,
}

const STATUS_LINE: &[u8] = b"HTTP/1.1 ";

impl Conn {
    fn open(server: SocketAddr) -> Result<Self> {
        let stream =
            TcpStream::connect(server).with_context(|| format!("cannot connect to {server}"))?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        Ok(Self {
            stream,
            sent: 0,
            answers: 0,
            matched: 0,
        })
    }

    /// Reads whatever has arrived; an error when the server closed or reset.
    fn pump(&mut self) -> io::Result<()> {
        let mut buf = [0u8; 16384];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    for &b in &buf[..n] {
                        // 'H' appears only first in the pattern, so on a
                        // mismatch matching restarts at this byte or at 0.
                        if b == STATUS_LINE[self.matched] {
                            self.matched += 1;
                            if self.matched == STATUS_LINE.len() {
                                self.answers += 1;
                                self.matched = 0;
                            }
                        } else {
                            self.matched = usize::from(b == STATUS_LINE[0]);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Sleeps until the socket is readable (or writable, with `out`), for a
    /// millisecond at most, then reads what came.
    fn idle(&mut self, out: bool) -> io::Result<()> {
        let mut pfd = libc::pollfd {
            fd: self.stream.as_raw_fd(),
            events: libc::POLLIN | if out { libc::POLLOUT } else { 0 },
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, 1) };
        self.pump()
    }

    /// Writes all of `bytes`; false when the deadline passed first.
    fn write_all(&mut self, bytes: &[u8], deadline: Instant) -> io::Result<bool> {
        let mut off = 0;
        while off < bytes.len() {
            self.pump()?;
            match self.stream.write(&bytes[off..]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Ok(false);
                    }
                    self.idle(true)?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Bytes written but not yet acknowledged by the server.
    fn unacked(&self) -> io::Result<i32> {
        let mut n: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int.
        let rc = unsafe { libc::ioctl(self.stream.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n)
    }

    /// Waits until every byte written is ACKed; false when the deadline passed.
    fn wait_acked(&mut self, deadline: Instant) -> io::Result<bool> {
        loop {
            self.pump()?;
            if self.unacked()? == 0 {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            self.idle(false)?;
        }
    }

    /// Waits until every request sent has its answer; false when the deadline
    /// passed.
    fn wait_answers(&mut self, deadline: Instant) -> io::Result<bool> {
        loop {
            self.pump()?;
            if self.answers >= self.sent {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            self.idle(false)?;
        }
    }

    /// Adds this connection's figures to `out` and resets it: SO_LINGER 0
    /// makes close send an RST and discard whatever is still queued, so no
    /// retransmission of it can reach the server later.
    fn close(self, out: &mut Outcome) {
        out.answers += self.answers;
        out.retransmits += retransmits(&self.stream);
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt reads one linger struct of the given size.
        unsafe {
            libc::setsockopt(
                self.stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
    }
}

/// `tcpi_total_retrans` of a TCP socket (0 if the kernel would not say).
fn retransmits(stream: &TcpStream) -> u32 {
    // SAFETY: tcp_info is plain integers; all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc == 0 { info.tcpi_total_retrans } else { 0 }
}

/// What a polite client saw.
#[derive(Clone, Debug, Default)]
pub struct Polite {
    /// The status of each request, in order (0: no status line came back).
    pub statuses: Vec<u16>,
    /// TCP retransmissions over all its connections: a request the kernel
    /// dropped is retransmitted, so any at all means it was limited.
    pub retransmits: u32,
}

impl Polite {
    pub fn add(&mut self, status: u16, retransmits: u32) {
        self.statuses.push(status);
        self.retransmits += retransmits;
    }
}

/// One request on a new connection (`Connection: close`), waiting for the
/// whole answer; returns its status and the connection's retransmissions.
pub fn polite_request(server: SocketAddr, path: &str) -> Result<(u16, u32)> {
    let mut s =
        TcpStream::connect(server).with_context(|| format!("cannot connect to {server}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(STALL))?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)
        .with_context(|| format!("no answer to {path}"))?;
    let status = answer
        .strip_prefix(STATUS_LINE)
        .and_then(|r| r.get(..3))
        .and_then(|code| std::str::from_utf8(code).ok()?.parse().ok())
        .unwrap_or(0);
    Ok((status, retransmits(&s)))
}

/// A well-behaved client: one request per `gap` on a new connection each,
/// until `stop` is set and it has sent at least `min`.
pub fn polite(server: SocketAddr, gap: Duration, min: usize, stop: &AtomicBool) -> Result<Polite> {
    let mut p = Polite::default();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) || p.statuses.len() < min {
        let (status, retrans) = polite_request(server, &format!("/polite/{i}"))?;
        p.add(status, retrans);
        i += 1;
        thread::sleep(gap);
    }
    Ok(p)
}

/// A small deterministic generator (SplitMix64) for the seeded mutation test.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_keeps_every_byte_in_order() {
        let r = Round::cut(b"GET / HTTP/1.1\r\n\r\n", &[0, 2, 2, 5, 99], 1);
        assert_eq!(r.chunks.concat(), b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(r.chunks[0], b"GE");
        assert_eq!(r.chunks[1], b"T /");
        assert_eq!(r.chunks.len(), 3);
    }

    #[test]
    fn post_frames_its_body() {
        let p = post("/p", b"GET / HTTP/1.1\r\n\r\n");
        assert!(p.starts_with(b"POST /p HTTP/1.1\r\nHost: api\r\nContent-Length: 18\r\n\r\nGET"));
    }
}
