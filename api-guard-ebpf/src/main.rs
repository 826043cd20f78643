//! api-guard's kernel programs. The TC ingress classifier is a pipeline of small
//! stages: parse → classify → (enforce) → count.
#![no_std]
#![no_main]
// Atomic adds on map values (see count.rs); the kernel crate builds on nightly.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod classify;
mod count;
mod maps;
mod parse;

use api_guard_common::counters::{Kind, Verdict};
use aya_ebpf::{bindings::TC_ACT_PIPE, macros::classifier, programs::TcContext};

use crate::{
    count::Delta,
    parse::{Skip, TcpPacket},
};

/// Linear bytes to pull when headers lie in page fragments.
const PULL_LEN: u32 = 256;

#[classifier]
pub fn api_guard_ingress(ctx: TcContext) -> i32 {
    try_ingress(&ctx)
}

/// Returns the TC action. Every path passes the packet for now: the enforce stage
/// is where drops will be decided.
#[inline(always)]
fn try_ingress(ctx: &TcContext) -> i32 {
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
    let flags = classify::port_flags(&pkt);
    if !classify::is_watched(flags) {
        count::verdict(Kind::Packets, Verdict::Passed);
        return TC_ACT_PIPE;
    }
    let Ok(key) = parse::client_key(ctx, &pkt) else {
        count::verdict(Kind::Packets, Verdict::Malformed);
        return TC_ACT_PIPE;
    };
    let delta = Delta {
        requests: classify::request_method(ctx, &pkt).is_some() as u64,
        connections: classify::is_connection_start(&pkt) as u64,
    };
    count::client(&key, &delta);
    count::verdict(Kind::Packets, Verdict::Allowed);
    if delta.requests != 0 {
        count::verdict(Kind::Requests, Verdict::Allowed);
    }
    if delta.connections != 0 {
        count::verdict(Kind::Connections, Verdict::Allowed);
    }
    TC_ACT_PIPE
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
