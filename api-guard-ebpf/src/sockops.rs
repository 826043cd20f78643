//! Open connections per client, for `--max-conns`: +1 when a connection to a
//! watched port is established (passive side), -1 when it closes, kept in
//! `OPEN_CONNS` where the client map's eviction cannot reset them. Attached to the
//! cgroup v2 root, it sees every socket on the host, so it only counts those of the
//! daemon's network namespace.

use core::ptr::read_volatile;

use api_guard_common::{client::ClientKey, config::flags, counters::Event};
use aya_ebpf::{
    bindings::{
        BPF_NOEXIST, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, BPF_TCP_CLOSE,
    },
    helpers::bpf_get_netns_cookie,
    programs::SockOpsContext,
};

use crate::{
    atomic, classify, count,
    maps::{CLIENTS, CONFIG, OPEN_CONNS},
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

#[inline(always)]
pub fn handle(ctx: &SockOpsContext) {
    let op = ctx.op();
    if op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB && op != BPF_SOCK_OPS_STATE_CB {
        return;
    }
    // Counts are kept whatever `max_conns` is now: it may be switched on live.
    let Some(cfg) = CONFIG.get(0) else { return };
    // SAFETY: the context pointer is the program's own, valid for this call.
    let cookie = unsafe { bpf_get_netns_cookie(ctx.ops as *mut _) };
    if cfg.netns_cookie != 0 && cookie != cfg.netns_cookie {
        return;
    }
    // local_port is in host byte order.
    let port = ctx.local_port() as u16;
    if !classify::is_watched(classify::flags_of_port(port)) {
        return;
    }
    // Read the peer address fields unconditionally, each with its own load: if
    // LLVM merges the IPv4 and IPv6 loads behind a computed pointer, the verifier
    // refuses the access ("dereference of modified ctx ptr").
    let ops = ctx.ops;
    // SAFETY: `ops` is the program's context; the fields are readable in sock_ops.
    let (family, ip4, ip6) = unsafe {
        (
            read_volatile(&raw const (*ops).family),
            read_volatile(&raw const (*ops).remote_ip4),
            [
                read_volatile(&raw const (*ops).remote_ip6[0]),
                read_volatile(&raw const (*ops).remote_ip6[1]),
                read_volatile(&raw const (*ops).remote_ip6[2]),
                read_volatile(&raw const (*ops).remote_ip6[3]),
            ],
        )
    };
    let key = match family {
        AF_INET => ClientKey::v4(ip4.to_ne_bytes()),
        AF_INET6 => {
            let mut addr = [0u8; 16];
            addr[0..4].copy_from_slice(&ip6[0].to_ne_bytes());
            addr[4..8].copy_from_slice(&ip6[1].to_ne_bytes());
            addr[8..12].copy_from_slice(&ip6[2].to_ne_bytes());
            addr[12..16].copy_from_slice(&ip6[3].to_ne_bytes());
            // A dual-stack socket reports an IPv4 peer as ::ffff:a.b.c.d, which is
            // exactly the key the ingress program uses for that IPv4 client.
            ClientKey::v6(addr)
        }
        _ => return,
    };
    // A trusted proxy's connections are its clients', not its own: never
    // counted against the proxy (it would hit --max-conns for all of them). The
    // client its header named was counted by the proxy program; it is taken
    // out when the connection closes.
    if cfg.has(flags::HAS_TRUSTED_PROXIES) && crate::proxy::is_trusted(&key) {
        if op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB {
            let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
        } else if ctx.arg(1) == BPF_TCP_CLOSE {
            crate::proxy::closed(ctx, &key, port, cfg.ipv6_prefix);
        }
        return;
    }
    let key = key.bucketed(cfg.ipv6_prefix);
    let open = if op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB {
        // Ask for state changes on this socket, to see it close.
        let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
        if OPEN_CONNS.get_ptr_mut(&key).is_none()
            && OPEN_CONNS.insert(&key, &0, BPF_NOEXIST as u64).is_err()
            && OPEN_CONNS.get_ptr_mut(&key).is_none()
        {
            count::event(Event::OpenConnsFull);
            return;
        }
        let Some(n) = OPEN_CONNS.get_ptr_mut(&key) else {
            return;
        };
        // SAFETY: the map value lives for this program run (RCU).
        let n = unsafe { &mut *n };
        atomic::add(n, 1);
        atomic::read(n)
    } else if ctx.arg(1) == BPF_TCP_CLOSE {
        let Some(n) = OPEN_CONNS.get_ptr_mut(&key) else {
            return;
        };
        // SAFETY: as above. Never below zero: a close racing another close, or
        // one for a count that was never raised, stops at zero.
        let left = atomic::dec_floor(unsafe { &mut *n });
        if left == 0 {
            // Entries exist only while connections are open, so the map holds
            // the clients with open connections, not every client ever seen.
            let _ = OPEN_CONNS.remove(&key);
        }
        left
    } else {
        return;
    };
    // A copy in the client's state for status and top (eviction resets the copy,
    // never the count).
    if let Some(state) = CLIENTS.get_ptr_mut(&key) {
        // SAFETY: the map value lives for this program run (RCU).
        atomic::write(unsafe { &mut (*state).open_conns }, open);
    }
}
