//! Stage 5, sample: a fraction of request starts, with the kernel's verdict and
//! the first `capture_bytes` of the payload, copied into the `SAMPLES` ring
//! buffer for the daemon. The sample is built in per-CPU scratch space (it is too
//! large for the BPF stack), then copied out at its real length.

use api_guard_common::{
    config::Config,
    counters::Event,
    sample::{HEADER_LEN, MAX_CAPTURE, NO_EXCHANGE, SAMPLE_IPV6, SampleBuf, Source},
};
use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_skb_load_bytes},
    programs::TcContext,
};

use crate::{
    count, exchange,
    maps::{SAMPLE_SCRATCH, SAMPLES, STREAM_SCRATCH},
    parse::header,
    tail::Handoff,
};

/// Whether this request start is sampled (`--sample RATIO`).
#[inline(always)]
pub fn chosen(cfg: &Config) -> bool {
    match cfg.sample_below {
        0 => false,
        u32::MAX => true,
        below => {
            // SAFETY: bpf_get_prandom_u32 has no preconditions.
            (unsafe { bpf_get_prandom_u32() }) < below
        }
    }
}

/// The ring-buffer flags for one record (TC and TLS samples alike): a wakeup
/// of the daemon for each, or under `--sample-wakeup batched` only once
/// `WAKE_AT_BYTES` wait (the daemon reads on a timer besides). A wakeup is an
/// interrupt and a context switch on the sending CPU (about 10 µs a sample
/// inside a server's `SSL_read` on the project's VMs).
#[inline(always)]
pub fn wakeup() -> u64 {
    use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
    match crate::maps::CONFIG.get(0) {
        Some(cfg) if cfg.has(api_guard_common::config::flags::SAMPLE_WAKEUP_BATCHED) => {
            if crate::maps::SAMPLES.query(BPF_RB_AVAIL_DATA as u64)
                >= api_guard_common::sample::WAKE_AT_BYTES
            {
                BPF_RB_FORCE_WAKEUP as u64
            } else {
                BPF_RB_NO_WAKEUP as u64
            }
        }
        _ => 0,
    }
}

/// Emits one sample; a full ring buffer counts a lost sample.
#[inline(always)]
pub fn emit(ctx: &TcContext, h: &Handoff, capture_bytes: u32) -> Result<(), ()> {
    let buf = SAMPLE_SCRATCH.get_ptr_mut(0).ok_or(())?;
    // SAFETY: a per-CPU scratch entry, used by this program run only.
    let buf: &mut SampleBuf = unsafe { &mut *buf };
    let hdr = &mut buf.header;
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    hdr.ts_ns = unsafe { bpf_ktime_get_ns() };
    if h.ipv6 {
        hdr.client = *header::<16>(ctx, h.l3_off + 8).map_err(|_| ())?;
        hdr.server = *header::<16>(ctx, h.l3_off + 24).map_err(|_| ())?;
        hdr.flags = SAMPLE_IPV6;
    } else {
        let ip = header::<20>(ctx, h.l3_off).map_err(|_| ())?;
        hdr.client = mapped([ip[12], ip[13], ip[14], ip[15]]);
        hdr.server = mapped([ip[16], ip[17], ip[18], ip[19]]);
        hdr.flags = 0;
    }
    if h.named
        && let Some(client) = crate::proxy::named_client()
    {
        // A trusted peer's packet: the client its PROXY header named (or the
        // peer, if none).
        hdr.client = client;
    }
    let tcp = header::<20>(ctx, h.l4_off).map_err(|_| ())?;
    hdr.client_port = u16::from_be_bytes([tcp[0], tcp[1]]);
    hdr.server_port = u16::from_be_bytes([tcp[2], tcp[3]]);
    // The capture begins at the segment's first request start.
    if h.start_off > h.payload_len {
        return Err(());
    }
    let payload_off = h.l4_off + ((tcp[12] >> 4) as usize) * 4 + h.start_off;
    let payload_len = h.payload_len - h.start_off;
    hdr.source = Source::TcIngress as u16;
    hdr.verdict = h.verdict as u8;
    // SAFETY: the skb pointer is the program's own context.
    hdr.ifindex = unsafe { (*ctx.skb.skb).ingress_ifindex };
    hdr.payload_len = payload_len as u32;
    hdr.exchange = if h.drop { NO_EXCHANGE } else { numbered() };

    // The capture length, clamped so the verifier sees 1..=MAX_CAPTURE.
    let mut n = payload_len.min(capture_bytes as usize);
    n &= MAX_CAPTURE * 2 - 1;
    if n == 0 || n > MAX_CAPTURE {
        return Err(());
    }
    // SAFETY: the destination holds MAX_CAPTURE >= n bytes.
    let rc = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            payload_off as u32,
            buf.data.as_mut_ptr().cast(),
            n as u32,
        )
    };
    if rc != 0 {
        return Err(());
    }
    buf.header.captured = n as u32;
    // SAFETY: HEADER_LEN + n bytes of the scratch entry are initialised.
    let bytes = unsafe {
        core::slice::from_raw_parts((buf as *const SampleBuf).cast::<u8>(), HEADER_LEN + n)
    };
    let sent = SAMPLES.output::<[u8]>(bytes, wakeup());
    // The head may carry a credential: the ring hands it to the daemon, but
    // no map keeps it after this run.
    wipe(&mut buf.data, n);
    if sent.is_err() {
        count::event(Event::SamplesLost);
        return Err(());
    }
    count::event(Event::Sampled);
    Ok(())
}

/// The number of the sampled request on its connection, marked so that its
/// response is recorded too; `NO_EXCHANGE` if it has none.
#[inline(always)]
fn numbered() -> u32 {
    let Some(sc) = STREAM_SCRATCH.get_ptr(0) else {
        return NO_EXCHANGE;
    };
    // SAFETY: this CPU's scratch entry, filled by the judge that tail-called us.
    let sc = unsafe { &*sc };
    let index = sc.pushed.first_index;
    if index != NO_EXCHANGE && exchange::mark_sampled(&sc.key, index) {
        index
    } else {
        NO_EXCHANGE
    }
}

#[inline(always)]
fn mapped(v4: [u8; 4]) -> [u8; 16] {
    let [a, b, c, d] = v4;
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d]
}

/// Zeroes the first `n` captured bytes (a whole word at a time).
#[inline(always)]
pub fn wipe(data: &mut [u8; MAX_CAPTURE], n: usize) {
    let words = n.div_ceil(8);
    for i in 0..MAX_CAPTURE / 8 {
        if i >= words {
            break;
        }
        // SAFETY: word i lies within `data` (i < MAX_CAPTURE / 8).
        unsafe {
            core::ptr::write_volatile(data.as_mut_ptr().add(i * 8).cast::<[u8; 8]>(), [0; 8])
        };
    }
}
