//! `spoof`: floods a test server from spoofed IPv4 sources through an AF_PACKET
//! socket, for the end-to-end flood tests. Run inside a client namespace:
//!
//! ```text
//! spoof --iface eth0 --dst-mac 02:..:01 --dst 198.18.0.1 --port 8080 \
//!       --src 198.19.0.1 --count 60000 [--repeats 1] [--pps 0] [--syn-only 1]
//! ```
//!
//! Each repeat walks the `--count` sources from `--src` upwards; each source sends
//! a SYN, then (unless `--syn-only 1`) a request segment (PSH|ACK carrying
//! `GET / HTTP/1.1`), both with
//! correct IPv4 and TCP checksums, in Ethernet frames to `--dst-mac`. `--pps`
//! caps the frame rate (0: as fast as the socket takes them). Ends with one line:
//! `spoof: sent F frames (S SYNs, R requests) from N sources in T s (P frames/s), E send errors`.
//!
//! Network rules: every address, source and destination, must lie in
//! 198.18.0.0/15; anything else is refused.

use std::{
    fs,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use api_guard_common::checksum;
use api_guard_tests::packet::{self, ETH_P_IP, IPPROTO_TCP, Tcp};

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

struct Args {
    iface: String,
    dst_mac: [u8; 6],
    dst: Ipv4Addr,
    port: u16,
    src: Ipv4Addr,
    count: u32,
    repeats: u32,
    pps: u64,
    syn_only: bool,
}

fn main() {
    match run() {
        Ok(summary) => println!("{summary}"),
        Err(e) => {
            eprintln!("spoof: {e:#}");
            std::process::exit(1);
        }
    }
}

fn run() -> Result<String> {
    let args = parse_args(std::env::args().skip(1))?;
    // Spoofed frames belong on a test's own links: only from a namespace the
    // harness made (named agt-…), and only onto a virtual interface (a veth),
    // never a NIC that reaches a real network.
    use std::os::unix::fs::MetadataExt as _;
    let me = fs::metadata("/proc/self/ns/net")?;
    let in_test_ns = fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(api_guard_tests::PREFIX)
        })
        .filter_map(|e| fs::metadata(e.path()).ok())
        .any(|m| (m.dev(), m.ino()) == (me.dev(), me.ino()));
    ensure!(
        in_test_ns,
        "refusing to send outside a test's network namespace (run it with ip netns exec {}…)",
        api_guard_tests::PREFIX
    );
    let sys = fs::canonicalize(format!("/sys/class/net/{}", args.iface))
        .with_context(|| format!("no interface {}", args.iface))?;
    ensure!(
        sys.starts_with("/sys/devices/virtual/"),
        "refusing to send on {}: not a virtual interface",
        args.iface
    );
    let src_mac = parse_mac(
        fs::read_to_string(format!("/sys/class/net/{}/address", args.iface))
            .with_context(|| format!("no interface {}", args.iface))?
            .trim(),
    )?;
    let sock = Socket::bind(&args.iface)?;

    let mut sender = Sender {
        sock,
        dst_mac: args.dst_mac,
        pps: args.pps,
        sent: 0,
        errors: 0,
        started: Instant::now(),
    };
    let first = u32::from(args.src);
    let (mut syns, mut requests) = (0u64, 0u64);
    for repeat in 0..args.repeats {
        for i in 0..args.count {
            let src = Ipv4Addr::from(first + i);
            // Ports and sequence numbers vary with the source and the repeat, as a
            // real flood's would.
            let sport = 1024 + (i.wrapping_add(repeat.wrapping_mul(7919)) % 64_000) as u16;
            let seq = i.wrapping_mul(2_654_435_761).wrapping_add(repeat);
            let syn = Tcp {
                sport,
                seq,
                ..Tcp::syn(args.port)
            };
            if sender.send(&frame(args.dst_mac, src_mac, src, args.dst, &syn))? {
                syns += 1;
            }
            if args.syn_only {
                continue;
            }
            let req = Tcp {
                sport,
                seq: seq.wrapping_add(1),
                ..Tcp::data(args.port, GET)
            };
            if sender.send(&frame(args.dst_mac, src_mac, src, args.dst, &req))? {
                requests += 1;
            }
        }
    }
    let secs = sender.started.elapsed().as_secs_f64();
    Ok(format!(
        "spoof: sent {} frames ({syns} SYNs, {requests} requests) from {} sources in {secs:.3} s ({:.0} frames/s), {} send errors",
        sender.sent,
        args.count,
        sender.sent as f64 / secs.max(1e-9),
        sender.errors,
    ))
}

/// An Ethernet frame from `src_mac` to `dst_mac` carrying `tcp` from `src` to
/// `dst`, with both checksums filled in.
fn frame(dst_mac: [u8; 6], src_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, tcp: &Tcp) -> Vec<u8> {
    let mut l4 = tcp.bytes();
    let check = tcp_checksum(src, dst, &l4);
    l4[16..18].copy_from_slice(&check.to_be_bytes());
    let l3 = packet::ipv4(src, dst, &[], IPPROTO_TCP, &l4);
    let mut b = Vec::with_capacity(14 + l3.len());
    b.extend(dst_mac);
    b.extend(src_mac);
    b.extend(ETH_P_IP.to_be_bytes());
    b.extend(l3);
    b
}

/// The TCP checksum of `segment` (its checksum field zero) over IPv4.
fn tcp_checksum(src: Ipv4Addr, dst: Ipv4Addr, segment: &[u8]) -> u16 {
    let sum = checksum::pseudo_header(&src.octets(), &dst.octets(), segment.len() as u32);
    let sum = checksum::add_words(sum, segment);
    // add_words takes whole words: an odd last byte is the high half of a word
    // padded with zero.
    let sum = match segment.len() % 2 {
        1 => sum + (u32::from(segment[segment.len() - 1]) << 8),
        _ => sum,
    };
    checksum::finish(sum)
}

struct Sender {
    sock: Socket,
    dst_mac: [u8; 6],
    pps: u64,
    sent: u64,
    errors: u64,
    started: Instant,
}

impl Sender {
    /// Sends one frame, pacing to `pps`; false when the kernel refused it for lack
    /// of buffers (counted). Other errors end the flood.
    fn send(&mut self, frame: &[u8]) -> Result<bool> {
        if self.pps > 0 && self.sent.is_multiple_of(256) {
            let due = Duration::from_secs_f64(self.sent as f64 / self.pps as f64);
            if let Some(ahead) = due.checked_sub(self.started.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
        match self.sock.send(frame, self.dst_mac) {
            Ok(()) => {
                self.sent += 1;
                Ok(true)
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                self.errors += 1;
                std::thread::yield_now();
                Ok(false)
            }
            Err(e) => Err(e).context("sendto"),
        }
    }
}

/// An AF_PACKET raw socket bound to one interface, for sending only.
struct Socket {
    fd: libc::c_int,
    ifindex: libc::c_int,
}

impl Socket {
    fn bind(iface: &str) -> Result<Self> {
        let name = std::ffi::CString::new(iface).context("interface name")?;
        // SAFETY: `name` is a valid NUL-terminated string for the whole call.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        ensure!(ifindex != 0, "no interface {iface}");
        // Protocol 0: the socket receives nothing, it only sends.
        // SAFETY: socket takes no pointers.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("socket(AF_PACKET)");
        }
        let sock = Self {
            fd,
            ifindex: ifindex as libc::c_int,
        };
        let addr = sock.addr(0, [0; 6]);
        // SAFETY: `addr` is a valid sockaddr_ll and the length is its size.
        let rc = unsafe {
            libc::bind(
                sock.fd,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("bind to {iface}"));
        }
        Ok(sock)
    }

    fn addr(&self, protocol: u16, mac: [u8; 6]) -> libc::sockaddr_ll {
        let mut sll_addr = [0u8; 8];
        sll_addr[..6].copy_from_slice(&mac);
        libc::sockaddr_ll {
            sll_family: libc::AF_PACKET as u16,
            sll_protocol: protocol.to_be(),
            sll_ifindex: self.ifindex,
            sll_hatype: 0,
            sll_pkttype: 0,
            sll_halen: 6,
            sll_addr,
        }
    }

    fn send(&self, frame: &[u8], dst_mac: [u8; 6]) -> std::io::Result<()> {
        let addr = self.addr(ETH_P_IP, dst_mac);
        // SAFETY: `frame` and `addr` are valid for the lengths given, for the whole
        // call; the kernel copies both before returning.
        let n = unsafe {
            libc::sendto(
                self.fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if n as usize != frame.len() {
            return Err(std::io::Error::other(format!(
                "short send: {n} of {} bytes",
                frame.len()
            )));
        }
        Ok(())
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours and closed once.
        unsafe {
            libc::close(self.fd);
        }
    }
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args> {
    let (mut iface, mut dst_mac, mut dst, mut port, mut src, mut count) =
        (None, None, None, None, None, None);
    let (mut repeats, mut pps, mut syn_only) = (1u32, 0u64, false);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        let bad = || format!("bad value for {flag}: {value:?}");
        match flag.as_str() {
            "--iface" => iface = Some(value.clone()),
            "--dst-mac" => dst_mac = Some(parse_mac(&value).with_context(bad)?),
            "--dst" => dst = Some(value.parse::<Ipv4Addr>().with_context(bad)?),
            "--port" => port = Some(value.parse::<u16>().with_context(bad)?),
            "--src" => src = Some(value.parse::<Ipv4Addr>().with_context(bad)?),
            "--count" => count = Some(value.parse::<u32>().with_context(bad)?),
            "--repeats" => repeats = value.parse().with_context(bad)?,
            "--pps" => pps = value.parse().with_context(bad)?,
            "--syn-only" => syn_only = value.parse::<u8>().with_context(bad)? != 0,
            _ => bail!("unknown flag {flag}"),
        }
    }
    let args = Args {
        iface: iface.context("--iface is required")?,
        dst_mac: dst_mac.context("--dst-mac is required")?,
        dst: dst.context("--dst is required")?,
        port: port.context("--port is required")?,
        src: src.context("--src is required")?,
        count: count.context("--count is required")?,
        repeats,
        pps,
        syn_only,
    };
    ensure!(args.count > 0, "--count must be at least 1");
    let last = u32::from(args.src)
        .checked_add(args.count - 1)
        .context("--src + --count overflows")?;
    for a in [args.dst, args.src, Ipv4Addr::from(last)] {
        ensure!(
            in_test_range(a),
            "{a} is outside 198.18.0.0/15, the only range this tool sends from or to"
        );
    }
    Ok(args)
}

/// Whether `a` lies in 198.18.0.0/15 (RFC 2544's benchmarking range).
fn in_test_range(a: Ipv4Addr) -> bool {
    u32::from(a) & 0xfffe_0000 == u32::from(Ipv4Addr::new(198, 18, 0, 0))
}

fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    ensure!(parts.len() == 6, "bad MAC address {s:?}");
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16).with_context(|| format!("bad MAC address {s:?}"))?;
    }
    Ok(mac)
}
