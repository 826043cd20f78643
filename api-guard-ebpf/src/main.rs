//! api-guard's kernel programs. The XDP pre-filter (xdp.rs) drops denied and
//! blocked clients first; the TC ingress classifier is a pipeline of small
//! stages: parse → classify → stream (request starts per connection) → enforce →
//! count; the sock_ops program keeps each
//! client's count of open connections for `--max-conns`.
#![no_std]
#![no_main]
// Atomic adds on map values (see atomic.rs); the kernel crate builds on nightly.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod atomic;
mod budget;
mod chunk;
mod classify;
mod clock;
mod count;
mod egress;
mod enforce;
mod exchange;
mod forwarded;
mod keys;
mod maps;
mod parse;
mod proxy;
mod reset;
mod sample;
mod sockops;
mod stream;
mod tail;
mod tls;
mod xdp;

use api_guard_common::{
    client::ClientKey,
    config::{Config, flags},
    counters::{Event, Kind, Verdict},
    maps::{TAIL_JUDGE, TAIL_JUDGE_TLS, TAIL_KEYS, TAIL_PROXY, TAIL_RESET, TAIL_SAMPLE},
    ports,
};
use aya_ebpf::{
    bindings::{TC_ACT_PIPE, TC_ACT_SHOT},
    macros::{classifier, raw_tracepoint, sock_ops, uprobe, uretprobe, xdp},
    programs::{
        ProbeContext, RawTracePointContext, RetProbeContext, SockOpsContext, TcContext, XdpContext,
    },
};

use crate::{
    clock::Clock,
    count::Seen,
    maps::CONFIG,
    parse::{Skip, TcpPacket},
    stream::Accounted,
    tail::{Handoff, Judge},
};

/// Linear bytes to pull when headers lie in page fragments: as far as the parser
/// follows headers, plus a TCP header.
const PULL_LEN: u32 = (parse::MAX_L4_OFF + parse::TCP_MIN_HLEN) as u32;

/// The XDP pre-filter on the same interfaces (xdp.rs): drops denied and
/// blocked clients' packets before an skb exists; the rest go on to TC.
#[xdp]
pub fn api_guard_xdp(ctx: XdpContext) -> u32 {
    xdp::run(&ctx)
}

#[classifier]
pub fn api_guard_ingress(mut ctx: TcContext) -> i32 {
    try_ingress(&mut ctx)
}

/// Tail-called by the ingress program for every packet to a watched port that
/// the lists did not drop.
#[classifier]
pub fn api_guard_judge(mut ctx: TcContext) -> i32 {
    judge::<false, false>(&mut ctx)
}

/// The judge for a TLS port's packets (tls.rs): the uprobes' verdicts.
#[classifier]
pub fn api_guard_judge_tls(mut ctx: TcContext) -> i32 {
    judge::<false, true>(&mut ctx)
}

/// The proxied judge for a TLS port's packets.
#[classifier]
pub fn api_guard_judge_proxied_tls(mut ctx: TcContext) -> i32 {
    judge::<true, true>(&mut ctx)
}

/// The judge for a `--trusted-proxy` peer's packet, tail-called by the proxy
/// program: the same stages, with the client its PROXY header named. A
/// program of its own, so the verifier walks the direct judge's paths
/// unchanged (and the allowed path pays nothing for proxies).
#[classifier]
pub fn api_guard_judge_proxied(mut ctx: TcContext) -> i32 {
    judge::<true, false>(&mut ctx)
}

/// Tail-called by the ingress program for a packet from a `--trusted-proxy`
/// peer: who its client is (the connection's PROXY header); a segment that
/// carries no client's request yet, or is refused, is finished here, the rest
/// go on to the proxied judge.
#[classifier]
pub fn api_guard_proxy(mut ctx: TcContext) -> i32 {
    let (Some(j), Some(cfg)) = (Judge::load(&ctx), CONFIG.get(0)) else {
        count::verdict(Kind::Packets, Verdict::Malformed);
        return TC_ACT_PIPE;
    };
    let Some(source) = proxy::peer(&ctx, &j.pkt) else {
        count::verdict(Kind::Packets, Verdict::Malformed);
        return TC_ACT_PIPE;
    };
    let pkt = j.pkt;
    proxy::identify(&ctx, &pkt, &source, cfg);
    let p = proxy::outcome();
    // (verdict, reset, account in the stream stage)
    let mut decided = match p.identity {
        // Header bytes only: nobody to charge, nothing to limit.
        proxy::ID_PENDING => Some((Verdict::Allowed, false, true)),
        proxy::ID_MISSING => Some((Verdict::ProxyRefused, true, true)),
        proxy::ID_GAP => Some((Verdict::ProxyRefused, false, false)),
        // The lists hold for a named client as for a direct one; reset, as
        // the peer's connection is open already.
        proxy::ID_NAMED => match p.list {
            Some(v @ (Verdict::Denied | Verdict::Blocked)) => Some((v, true, false)),
            _ => None,
        },
        _ => None,
    };
    let mut clock = Clock::new();
    let named = true;
    let allowed = j.allowed || p.list == Some(Verdict::Allowed);
    if decided.is_none()
        && p.opened
        && let Some(state) = count::state(
            &ClientKey { addr: p.client }.bucketed(cfg.ipv6_prefix),
            &mut clock,
        )
    {
        // The client's connection begins here, where its header was decided
        // (the peer's SYN was no client's): counted and limited here, so the
        // judge's paths carry no connection.
        let ev = Seen {
            starts: 0,
            connection: true,
            named,
        };
        count::client(state, ev, &mut clock);
        let key = ClientKey { addr: p.client }.bucketed(cfg.ipv6_prefix);
        if !allowed
            && !enforce::is_blocked(state, &mut clock)
            && let Some(v) = enforce::connection(cfg, &key, state, &mut clock)
        {
            decided = Some((v, true, false));
        } else if p.identity == proxy::ID_NAMED && cfg.max_conns != 0 {
            proxy::count_open(&key);
        }
    }
    let Some((verdict, never, account)) = decided else {
        if p.opened {
            count::verdict(Kind::Connections, Verdict::Allowed);
        }
        let tls = classify::port_flags(&pkt) & ports::TLS != 0;
        if !tls && !allowed && p.identity == proxy::ID_PEER && cfg.has(flags::FORWARDED) {
            // `--trusted-hops`: its requests are charged to their forwarded
            // clients (the skb->cb handoff unchanged).
            Judge::call_forwarded(&mut ctx);
        }
        Judge::call_proxied(&mut ctx, tls);
        // Only reached if the proxied judge is not loaded: pass, counted.
        count::verdict(Kind::Packets, Verdict::Passed);
        return TC_ACT_PIPE;
    };
    let acct = if account {
        stream::account_loaded(&ctx, &pkt, &source.addr, Some(p.skip_before))
    } else {
        Accounted::NOTHING
    };
    let ev = Seen {
        starts: if account {
            acct.starts
        } else {
            // Dropped before the stream stage: told by its first bytes.
            first_bytes_only(&ctx, &pkt, p.opened).starts
        },
        connection: p.opened,
        // The sampler takes the client (named, or the peer) from the scratch.
        named: true,
    };
    finish(&mut ctx, cfg, &pkt, ev, verdict, &acct, never, &mut clock)
}

/// Tail-called by a judge (not a TLS port's) for a segment it let through
/// while key or route limits are set: those limits, then the judge's finish
/// (keys.rs).
#[classifier]
pub fn api_guard_keys(mut ctx: TcContext) -> i32 {
    let (Some(j), Some(cfg), Some(h)) = (Judge::load(&ctx), CONFIG.get(0), keys::handed()) else {
        count::verdict(Kind::Packets, Verdict::Malformed);
        return TC_ACT_PIPE;
    };
    let pkt = j.pkt;
    let mut clock = Clock::new();
    let (verdict, refused) = match keys::judge(&ctx, pkt.payload_off) {
        Some(v) => v,
        None => (Verdict::Allowed, 0),
    };
    if refused > h.ev.starts {
        // Heads that began in an earlier segment end in this one.
        count::requests(refused - h.ev.starts, verdict);
    }
    let acct = Accounted::from_parts(h.parts.0, h.parts.1, h.parts.2, true);
    finish(&mut ctx, cfg, &pkt, h.ev, verdict, &acct, false, &mut clock)
}

/// Tail-called by the proxy program for a trusted peer's segment whose
/// connection named no client by PROXY header, under `--trusted-hops` (not a
/// TLS port's, not an allowed peer's): each request whose head ends in the
/// segment is charged to the client its forwarded list names (forwarded.rs).
/// A segment refused on a single-client connection is dropped (or reset)
/// here; the rest go on to the proxied judge, with the peer exempt (it is
/// counted, never judged, for what it relays).
#[classifier]
pub fn api_guard_forwarded(mut ctx: TcContext) -> i32 {
    let (Some(j), Some(cfg)) = (Judge::load(&ctx), CONFIG.get(0)) else {
        count::verdict(Kind::Packets, Verdict::Malformed);
        return TC_ACT_PIPE;
    };
    let pkt = j.pkt;
    // The peer (the proxy program's outcome for a connection that named no
    // client), read in place.
    let Some(peer) = proxy::client() else {
        count::verdict(Kind::Packets, Verdict::Malformed);
        return TC_ACT_PIPE;
    };
    let mut clock = Clock::new();
    let mut through = true;
    if let Some((verdict, n)) = forwarded::judge(&ctx, &pkt, peer) {
        count::requests(n, verdict);
        if verdict != Verdict::ForwardedReported {
            count::verdict(Kind::Packets, verdict);
            match enforce::released(cfg, &mut clock) {
                Some(why) => {
                    count::verdict(Kind::Packets, why);
                    count::requests(n, why);
                }
                None => through = false,
            }
        }
        if !through {
            if verdict == Verdict::RateLimited && cfg.has(flags::ON_LIMIT_RESET) {
                return reset_forwarded(&mut ctx, &pkt);
            }
            return TC_ACT_SHOT;
        }
    }
    forwarded::commit();
    proxy::exempt();
    Judge::call_proxied(&mut ctx, false);
    // Only reached if the proxied judge is not loaded: pass, counted.
    count::verdict(Kind::Packets, Verdict::Passed);
    TC_ACT_PIPE
}

/// `--on-limit reset` for a segment the forwarded stage refused.
#[inline(always)]
fn reset_forwarded(ctx: &mut TcContext, pkt: &TcpPacket) -> i32 {
    Handoff::new(pkt, 0, Verdict::RateLimited as u32, true, true).call(ctx, TAIL_RESET);
    // Only reached if the reset rewriter is not loaded: dropped.
    TC_ACT_SHOT
}

/// Tail-called by the ingress program for `--on-limit reset`.
#[classifier]
pub fn api_guard_reset(ctx: TcContext) -> i32 {
    match Handoff::load(&ctx).map(|h| reset::rewrite(&ctx, &h)) {
        Some(Ok(())) => TC_ACT_PIPE,
        _ => TC_ACT_SHOT,
    }
}

/// Tail-called by the ingress program for a sampled request start; carries on
/// with the ingress program's decision.
#[classifier]
pub fn api_guard_sample(mut ctx: TcContext) -> i32 {
    let Some(h) = Handoff::load(&ctx) else {
        return TC_ACT_PIPE;
    };
    if let Some(cfg) = CONFIG.get(0)
        && budget::take()
    {
        let _ = sample::emit(&ctx, &h, cfg.capture_bytes);
    }
    if h.reset {
        h.call(&mut ctx, TAIL_RESET);
    }
    if h.drop { TC_ACT_SHOT } else { TC_ACT_PIPE }
}

/// The floor for benchmarks: a classifier that does nothing. Kernel-path costs
/// are quoted as a ratio to it, measured in the same run (never attached).
#[classifier]
pub fn api_guard_floor(_ctx: TcContext) -> i32 {
    TC_ACT_PIPE
}

/// Entry of libssl's `SSL_read` and `SSL_read_ex` (tls.rs).
#[uprobe]
pub fn api_guard_ssl_read_enter(ctx: ProbeContext) -> u32 {
    tls::enter(&ctx, api_guard_common::tls::CALL_READ);
    0
}

/// Entry of `SSL_do_handshake`: a connection followed from its first byte.
#[uprobe]
pub fn api_guard_ssl_handshake(ctx: ProbeContext) -> u32 {
    tls::handshake(&ctx);
    0
}

/// Return of `SSL_read`: the plaintext is read, counted and charged.
#[uretprobe]
pub fn api_guard_ssl_read_ret(ctx: RetProbeContext) -> u32 {
    tls::read_return(&ctx, false);
    0
}

/// Return of `SSL_read_ex`.
#[uretprobe]
pub fn api_guard_ssl_read_ex_ret(ctx: RetProbeContext) -> u32 {
    tls::read_return(&ctx, true);
    0
}

/// Entry of `SSL_write` and `SSL_write_ex`.
#[uprobe]
pub fn api_guard_ssl_write_enter(ctx: ProbeContext) -> u32 {
    tls::enter(&ctx, api_guard_common::tls::CALL_WRITE);
    0
}

/// The socket layer's `sock_recv_length` tracepoint (`struct sock *sk, int
/// ret, int flags`, from `sock_recvmsg`) during an `SSL_read`: the call's
/// socket. A raw tracepoint: it needs neither kprobes (not in every kernel)
/// nor tracefs.
#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn api_guard_sock_recv(ctx: RawTracePointContext) -> i32 {
    tls::saw_sock(
        ctx.arg::<u64>(0),
        ctx.arg::<u64>(1) as i32,
        api_guard_common::tls::CALL_READ,
    );
    0
}

/// `sock_send_length` during an `SSL_write`: the call's socket, and its
/// plaintext framed for response status lines (tls.rs).
#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn api_guard_sock_send(ctx: RawTracePointContext) -> i32 {
    tls::saw_sock(
        ctx.arg::<u64>(0),
        ctx.arg::<u64>(1) as i32,
        api_guard_common::tls::CALL_WRITE,
    );
    0
}

/// The server's answers on the same interfaces: response framing, pairing
/// with requests, status counts (egress.rs). Never drops anything.
#[classifier]
pub fn api_guard_egress(ctx: TcContext) -> i32 {
    if let Ok(pkt) = parse_tcp(&ctx) {
        egress::run(&ctx, &pkt);
    }
    TC_ACT_PIPE
}

#[sock_ops]
pub fn api_guard_sockops(ctx: SockOpsContext) -> u32 {
    sockops::handle(&ctx);
    // sock_ops programs return 1 for "handled"; the value changes nothing here.
    1
}

/// Returns the TC action.
#[inline(always)]
fn try_ingress(ctx: &mut TcContext) -> i32 {
    let pkt = match parse_tcp(ctx) {
        Ok(pkt) => pkt,
        Err(Skip::Opaque { l3_off, ipv6 }) => return opaque(ctx, l3_off, ipv6),
        Err(Skip::Malformed) => {
            count::verdict(Kind::Packets, Verdict::Malformed);
            return TC_ACT_PIPE;
        }
        Err(_) => {
            count::verdict(Kind::Packets, Verdict::Passed);
            return TC_ACT_PIPE;
        }
    };
    if !classify::is_watched(classify::port_flags(&pkt)) {
        count::verdict(Kind::Packets, Verdict::Passed);
        return TC_ACT_PIPE;
    }
    let Some(cfg) = CONFIG.get(0) else {
        return TC_ACT_PIPE;
    };
    let Ok(source) = parse::source(ctx, pkt.l3_off, pkt.ipv6) else {
        count::verdict(Kind::Packets, Verdict::Malformed);
        return TC_ACT_PIPE;
    };
    let connection = classify::is_connection_start(&pkt);
    let mut clock = Clock::new();

    // Lists match the address itself; per-client state is kept per bucket.
    // Denied and blocked networks are dropped before any per-client or
    // per-connection state: their requests are told by their first bytes only.
    let list = enforce::lists(cfg, &source, &mut clock);
    if let Some(v @ (Verdict::Denied | Verdict::Blocked)) = list {
        let ev = first_bytes_only(ctx, &pkt, connection);
        return finish(
            ctx,
            cfg,
            &pkt,
            ev,
            v,
            &Accounted::NOTHING,
            false,
            &mut clock,
        );
    }
    let allowed = list == Some(Verdict::Allowed);
    if cfg.has(flags::HAS_TRUSTED_PROXIES) && proxy::is_trusted(&source) {
        Judge::call(ctx, &pkt, allowed, TAIL_PROXY);
        // Only reached if the proxy program is not loaded: its peer is the client.
    }
    let judge = if classify::port_flags(&pkt) & ports::TLS != 0 {
        TAIL_JUDGE_TLS
    } else {
        TAIL_JUDGE
    };
    Judge::call(ctx, &pkt, allowed, judge);
    // Only reached if the judge is not loaded: pass, counted.
    count::verdict(Kind::Packets, Verdict::Passed);
    TC_ACT_PIPE
}

/// The judge: per-client state, the stream stage, limits, counts, sampling.
/// `PROXIED`: for a trusted peer's packet, whose client the proxy program
/// decided (`proxy::outcome`).
#[inline(always)]
fn judge<const PROXIED: bool, const TLS: bool>(ctx: &mut TcContext) -> i32 {
    let (Some(j), Some(cfg)) = (Judge::load(ctx), CONFIG.get(0)) else {
        count::verdict(Kind::Packets, Verdict::Malformed);
        return TC_ACT_PIPE;
    };
    let mut pkt = j.pkt;
    if PROXIED {
        // A trusted peer's SYN opens no client's connection: the proxy program
        // finishes it (header bytes pending). Telling the verifier so spares it
        // the stream stage's SYN paths.
        pkt.flags &= !parse::TCP_SYN;
    }
    let Ok(source) = parse::source(ctx, pkt.l3_off, pkt.ipv6) else {
        count::verdict(Kind::Packets, Verdict::Malformed);
        return TC_ACT_PIPE;
    };
    let mut key = source.bucketed(cfg.ipv6_prefix);
    let connection = classify::is_connection_start(&pkt);
    let mut clock = Clock::new();
    let mut allowed = j.allowed;
    let mut skip_before = None;
    // A trusted peer's packet: its client (named, or the peer) is the one in
    // `PROXY_SCRATCH` (for the sampler); a block resets the connection, which
    // the peer's handshake opened already. A constant, not a value: the
    // verifier walks no more paths than the direct judge's.
    let named = PROXIED;
    if PROXIED {
        // Values, not branches: the verifier walks the direct judge's paths.
        let p = proxy::outcome();
        skip_before = Some(p.skip_before);
        // The client's connection (where its header was decided) was counted
        // and limited by the proxy program: none here.
        key = ClientKey { addr: p.client }.bucketed(cfg.ipv6_prefix);
        allowed = allowed || p.list == Some(Verdict::Allowed);
    }
    // A TLS port's requests are counted by the libssl uprobes (tls.rs), which
    // leave their verdicts for the connection's next packet.
    let tls_port = TLS;
    let mut state = count::state(&key, &mut clock);
    if state.is_none() {
        // The client map refused the entry: fail open, but count it.
        count::event(Event::ClientsRefused);
    }
    if let Some(state) = state.as_deref_mut()
        && !allowed
        && enforce::is_blocked(state, &mut clock)
    {
        // Dropped whatever it carries: not worth the stream stage's scan.
        let mut ev = first_bytes_only(ctx, &pkt, connection);
        ev.named = named;
        count::client(state, ev, &mut clock);
        return finish(
            ctx,
            cfg,
            &pkt,
            ev,
            Verdict::Blocked,
            &Accounted::NOTHING,
            // A trusted peer's connection is open already (its handshake
            // passed): a drop would only stall it.
            named,
            &mut clock,
        );
    }
    // One call site for the stream stage, with or without the client's
    // entry: the verifier walks its scan once, not once per path (the judges
    // are near its limit of a million instructions).
    let (acct, tls_verdict) = if tls_port {
        (Accounted::NOTHING, tls::packet(ctx, &pkt, &source.addr))
    } else {
        (stream::account(ctx, &pkt, &source.addr, skip_before), None)
    };
    let Some(state) = state else {
        let ev = Seen {
            starts: acct.starts,
            connection,
            named,
        };
        return finish(
            ctx,
            cfg,
            &pkt,
            ev,
            Verdict::Allowed,
            &acct,
            false,
            &mut clock,
        );
    };
    let ev = Seen {
        starts: acct.starts,
        connection,
        named,
    };
    count::client(state, ev, &mut clock);
    let judged = if allowed {
        enforce::Judged {
            verdict: Verdict::Allowed,
            never: false,
        }
    } else if let Some(verdict) = tls_verdict {
        enforce::Judged {
            verdict,
            never: false,
        }
    } else if tls_port && connection && enforce::bucket_empty(cfg, &key, state, &mut clock) {
        // Its request could not be unread: no new connection until the bucket
        // would admit one.
        enforce::Judged {
            verdict: Verdict::ConnLimited,
            never: false,
        }
    } else {
        enforce::client(cfg, &key, state, ev, &mut clock)
    };
    if !TLS && judged.verdict == Verdict::Allowed && !allowed && cfg.has(flags::KEY_LIMITS) {
        // Key and route limits, in a program of their own (keys.rs), which
        // finishes the segment as below.
        keys::hand(&key, ev, acct.parts());
        Judge::call(ctx, &pkt, false, TAIL_KEYS);
        // Only reached if the key stage is not loaded (the loader always
        // fills its slot): passed, its accounting not kept (the next segment
        // is accounted again). Ending here keeps the verifier's walk of the
        // judge as it was.
        count::verdict(Kind::Packets, Verdict::Passed);
        return TC_ACT_PIPE;
    }
    finish(
        ctx,
        cfg,
        &pkt,
        ev,
        judged.verdict,
        &acct,
        judged.never,
        &mut clock,
    )
}

/// What a packet dropped before the stream stage carries: its requests told by
/// its first bytes only (a method token), not worth a scan.
#[inline(always)]
fn first_bytes_only(ctx: &TcContext, pkt: &TcpPacket, connection: bool) -> Seen {
    Seen {
        starts: classify::request_method(ctx, pkt).is_some() as u32,
        connection,
        named: false,
    }
}

/// Counts the verdict (and why a drop was let through), keeps the stream's
/// accounting if the segment goes through, samples, and returns the TC action; a
/// segment that can never be admitted, or any over-limit one under `--on-limit
/// reset`, becomes a RST toward the server.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn finish(
    ctx: &mut TcContext,
    cfg: &Config,
    pkt: &TcpPacket,
    ev: Seen,
    verdict: Verdict,
    acct: &Accounted,
    never: bool,
    clock: &mut Clock,
) -> i32 {
    count::verdicts(ev, verdict);
    // What happened to the packet: the verdict, or why a drop was let through.
    let mut outcome = verdict;
    if verdict != Verdict::Allowed
        && let Some(why) = enforce::released(cfg, clock)
    {
        count::verdicts(ev, why);
        outcome = why;
    }
    let drop = outcome == verdict && verdict != Verdict::Allowed;
    if !drop {
        acct.commit();
    }
    // `never`: the connection can never be admitted (a segment over the burst,
    // a trusted peer's connection refused or over a limit once open).
    let over_limit = matches!(
        verdict,
        Verdict::RateLimited | Verdict::KeyLimited | Verdict::RouteLimited
    );
    let reset = drop && (never || (over_limit && cfg.has(flags::ON_LIMIT_RESET)));
    if reset && never {
        count::event(Event::ConnectionsReset);
    }
    let first_off = acct.first_off;
    if ev.starts > 0 && sample::chosen(cfg) {
        Handoff::new(pkt, first_off, outcome as u32, reset, drop)
            .named(ev.named)
            .call(ctx, TAIL_SAMPLE);
        // Only reached if the sampler is not loaded: go on without a sample.
    }
    if reset {
        Handoff::new(pkt, first_off, outcome as u32, reset, drop).call(ctx, TAIL_RESET);
    }
    if drop { TC_ACT_SHOT } else { TC_ACT_PIPE }
}

/// A TCP packet whose TCP header cannot be read (see `Skip::Opaque`): dropped if
/// its source is denied or blocked, or its client blocked or out of request
/// tokens; else passed.
#[inline(always)]
fn opaque(ctx: &TcContext, l3_off: usize, ipv6: bool) -> i32 {
    let (Some(cfg), Ok(source)) = (CONFIG.get(0), parse::source(ctx, l3_off, ipv6)) else {
        count::verdict(Kind::Packets, Verdict::Passed);
        return TC_ACT_PIPE;
    };
    let mut clock = Clock::new();
    let verdict = match enforce::lists(cfg, &source, &mut clock) {
        Some(v @ (Verdict::Denied | Verdict::Blocked)) => Some(v),
        Some(_) => None,
        None => enforce::opaque(cfg, &source.bucketed(cfg.ipv6_prefix), &mut clock),
    };
    let Some(v) = verdict else {
        count::verdict(Kind::Packets, Verdict::Passed);
        return TC_ACT_PIPE;
    };
    count::verdict(Kind::Packets, v);
    if let Some(why) = enforce::released(cfg, &mut clock) {
        count::verdict(Kind::Packets, why);
        return TC_ACT_PIPE;
    }
    TC_ACT_SHOT
}

/// Parses to TCP, pulling the headers into the linear area once if they are not.
#[inline(always)]
fn parse_tcp(ctx: &TcContext) -> Result<TcpPacket, Skip> {
    match parse::tcp(ctx) {
        Err(Skip::NotLinear) => {
            let len = ctx.len().min(PULL_LEN);
            ctx.pull_data(len).map_err(|_| Skip::Malformed)?;
            match parse::tcp(ctx) {
                Err(Skip::NotLinear) => Err(Skip::Malformed),
                other => other,
            }
        }
        other => other,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
