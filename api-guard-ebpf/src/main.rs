//! api-guard's kernel programs. The TC ingress classifier is a pipeline of small
//! stages: parse → classify → enforce → count; the sock_ops program keeps each
//! client's count of open connections for `--max-conns`.
#![no_std]
#![no_main]
// Atomic adds on map values (see atomic.rs); the kernel crate builds on nightly.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod atomic;
mod classify;
mod count;
mod enforce;
mod maps;
mod parse;
mod reset;
mod sockops;

use api_guard_common::{
    config::flags,
    counters::{Kind, Verdict},
};
use aya_ebpf::{
    bindings::{TC_ACT_PIPE, TC_ACT_SHOT},
    helpers::bpf_ktime_get_ns,
    macros::{classifier, sock_ops},
    programs::{SockOpsContext, TcContext},
};

use crate::{
    count::Seen,
    maps::CONFIG,
    parse::{Skip, TcpPacket},
};

/// Linear bytes to pull when headers lie in page fragments.
const PULL_LEN: u32 = 256;

#[classifier]
pub fn api_guard_ingress(mut ctx: TcContext) -> i32 {
    try_ingress(&mut ctx)
}

/// Tail-called by the ingress program for `--on-limit reset`.
#[classifier]
pub fn api_guard_reset(ctx: TcContext) -> i32 {
    match reset::from_tail_call(&ctx) {
        Ok(()) => TC_ACT_PIPE,
        Err(()) => TC_ACT_SHOT,
    }
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
    let Ok(key) = parse::client_key(ctx, &pkt) else {
        count::verdict(Kind::Packets, Verdict::Malformed);
        return TC_ACT_PIPE;
    };
    let key = key.bucketed(cfg.ipv6_prefix);
    let ev = Seen {
        request: classify::request_method(ctx, &pkt).is_some(),
        connection: classify::is_connection_start(&pkt),
    };

    let verdict = match enforce::lists(cfg, &key) {
        // Denied networks are dropped before any per-client state is kept.
        Some(Verdict::Denied) => Verdict::Denied,
        list => {
            // SAFETY: bpf_ktime_get_ns has no preconditions.
            let now = unsafe { bpf_ktime_get_ns() };
            match count::state(&key) {
                Some(state) => {
                    count::client(state, ev, now);
                    match list {
                        Some(allowed) => allowed,
                        None => enforce::client(cfg, &key, state, ev, now),
                    }
                }
                // The client map refused the entry: fail open, but count it.
                None => Verdict::Allowed,
            }
        }
    };
    count::verdicts(ev, verdict);
    if verdict == Verdict::Allowed {
        return TC_ACT_PIPE;
    }
    if cfg.has(flags::DRY_RUN) {
        count::verdicts(ev, Verdict::WouldDrop);
        return TC_ACT_PIPE;
    }
    if verdict == Verdict::RateLimited && cfg.has(flags::ON_LIMIT_RESET) {
        reset::tail_call(ctx, &pkt);
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
