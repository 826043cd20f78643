//! TLS plaintext: uprobes on libssl's `SSL_read`/`SSL_read_ex` (and
//! `SSL_write`/`SSL_write_ex` for attribution) in the processes that serve
//! watched ports. The entry keeps the call's `SSL*` and buffer per thread; a
//! `tcp_recvmsg` kprobe on the same thread during the call names the socket;
//! the return reads the plaintext, counts its request starts with the TC path's
//! framing (`api_guard_common::stream`), and charges the same client state and
//! buckets (`count`, `enforce`). A request over the limit cannot be unread: its
//! verdict goes to `TLS_VERDICTS`, which the TC judge acts on at the
//! connection's next packet ([`packet`]).

use core::ffi::c_void;

use api_guard_common::{
    client::ClientKey,
    conn::ConnKey,
    counters::{Event, Verdict},
    exchange::{Exchange, REPLY_RETRY, ResponseCount, class_of, watched_status},
    ports,
    response::{REPLY_BODY, REPLY_DONE, Reply, Step},
    sample::{HEADER_LEN, MAX_CAPTURE, NO_EXCHANGE, SAMPLE_IPV6, SampleBuf},
    stream::{Framing, MODE_BODY, MODE_OPAQUE},
    tls::{
        AF_INET, AF_INET6, CALL_NONE, CALL_READ, CALL_SLOTS, CALL_WRITE, ConnVerdict, PID_SLOTS,
        SOURCE_TLS_READ, SOURCE_TLS_WRITE, SSL_SLOTS, STATUS_SLOTS, STREAM_H2, SockOffsets, SslKey,
        TLS_EVENT_SLOTS, TlsCall, TlsEvent, TlsStatus, TlsStatusKey, TlsStream, VERDICT_SLOTS,
    },
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_loop, bpf_probe_read_kernel,
        generated::bpf_probe_read_user,
    },
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::{ProbeContext, RetProbeContext, TcContext},
};

use crate::{
    clock::Clock,
    count::{self, Seen},
    egress::{self, ReplyScratch},
    enforce,
    exchange::{self as fifo, Pushed},
    maps::{CONFIG, CONNS, EXCHANGES, PORTS, SAMPLE_SCRATCH, SAMPLES},
    parse::{TCP_ACK, TCP_SYN, TcpPacket},
    sample,
};

/// Processes whose SSL calls are followed (tgid → 1), filled by the daemon.
#[map(name = "TLS_PIDS")]
static TLS_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(PID_SLOTS, 0);

/// SSL calls in progress, by pid_tgid (LRU: a thread that dies mid-call must
/// not hold a slot for ever).
#[map(name = "TLS_CALLS")]
static TLS_CALLS: LruHashMap<u64, TlsCall> = LruHashMap::with_max_entries(CALL_SLOTS, 0);

/// (tgid, SSL*) → its connection, for plaintext returned from libssl's buffer
/// without a `tcp_recvmsg` during the call.
#[map(name = "TLS_SSL_CONNS")]
static TLS_SSL_CONNS: LruHashMap<SslKey, ConnKey> = LruHashMap::with_max_entries(SSL_SLOTS, 0);

/// `SSL*`s whose handshake this program saw (`SSL_do_handshake`): their first
/// plaintext is the stream's first byte.
#[map(name = "TLS_FRESH")]
static TLS_FRESH: LruHashMap<SslKey, u8> = LruHashMap::with_max_entries(SSL_SLOTS, 0);

/// Where the request parser stands in each TLS connection's plaintext.
#[map(name = "TLS_STREAMS")]
static TLS_STREAMS: LruHashMap<ConnKey, TlsStream> = LruHashMap::with_max_entries(SSL_SLOTS, 0);

/// Connections with an over-limit request: the TC judge drops or resets their
/// next packets.
#[map(name = "TLS_VERDICTS")]
static TLS_VERDICTS: LruHashMap<ConnKey, ConnVerdict> =
    LruHashMap::with_max_entries(VERDICT_SLOTS, 0);

/// Set (1) once a followed process entered an SSL call; until then the
/// socket tracepoints, which fire on every socket read and write of the host,
/// return at once. A server that links libssl but serves plaintext on the
/// watched ports (nginx built with TLS support) never sets it, and pays no
/// lookup of `TLS_CALLS` on its sockets. Never cleared: a call in progress
/// must always find its socket, and it can only be in progress after an entry.
#[map(name = "TLS_ARMED")]
static TLS_ARMED: Array<u32> = Array::with_max_entries(1, 0);

/// Field offsets of `struct sock`, from the kernel's BTF (written by the daemon).
#[map(name = "TLS_OFFSETS")]
static TLS_OFFSETS: Array<SockOffsets> = Array::with_max_entries(1, 0);

#[map(name = "TLS_EVENTS")]
static TLS_EVENTS: PerCpuArray<[u64; TLS_EVENT_SLOTS as usize]> =
    PerCpuArray::with_max_entries(1, 0);

/// What the daemon found per (port, process), for `api-guard status`: written
/// by the daemon, pinned, never read here.
#[map(name = "TLS_STATUS")]
static TLS_STATUS: HashMap<TlsStatusKey, TlsStatus> = HashMap::with_max_entries(STATUS_SLOTS, 0);

/// Per-CPU space of the uprobe programs: the connection key and the scan.
#[map(name = "TLS_SCRATCH")]
static TLS_SCRATCH: PerCpuArray<TlsScratch> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU space of the `SSL_write` path: the response framing (egress.rs's
/// state, in an entry of its own: the TC egress program may run in a softirq
/// on the same CPU).
#[map(name = "TLS_WRITE_SCRATCH")]
static TLS_WRITE_SCRATCH: PerCpuArray<ReplyScratch> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU space of the TC judge's TLS step (a map of its own: a packet's
/// softirq can interrupt a uprobe program on the same CPU).
#[map(name = "TLS_TC_KEY")]
static TLS_TC_KEY: PerCpuArray<ConnKey> = PerCpuArray::with_max_entries(1, 0);

/// `first` when no request starts in the plaintext.
const NO_START: u32 = u32::MAX;
/// Plaintext bytes scanned per return at most (`SSL_read` returns at most a
/// record, 16 KiB; `SSL_read_ex` with a large buffer may return more). Past
/// it, the stream errs high: one more start, and untrusted from there.
const MAX_SCAN: u32 = 1 << 20;
/// Plaintext bytes of one write framed at most (bodies are skipped whole):
/// past it the connection's responses are not framed any more.
const MAX_WRITE: u32 = 1 << 30;
/// Plaintext bytes the write scan reads from the process at once.
const CHUNK: u32 = 64;

#[repr(C)]
pub struct TlsScratch {
    key: ConnKey,
    stream: TlsStream,
    cur: Cursor,
    word: [u8; 8],
    /// The requests of this read, numbered for their responses (exchange.rs).
    pushed: Pushed,
    /// A new connection's FIFO entry, built here (too large for the stack).
    fresh: Exchange,
    /// A request start's first bytes, to tell a `HEAD`.
    method: [u8; 8],
}

#[repr(C)]
struct Cursor {
    /// The plaintext in the process's memory.
    buf: u64,
    pos: u32,
    end: u32,
    starts: u32,
    first: u32,
    word_at: u32,
    /// Bytes of `word` that are valid.
    word_len: u32,
    /// Bit i: start i is a `HEAD`.
    heads: u32,
    /// A start past 32, or whose method could not be read.
    unknown: u32,
}

#[inline(always)]
fn event(e: TlsEvent) {
    if let Some(block) = TLS_EVENTS.get_ptr_mut(0) {
        // SAFETY: this CPU's block; the index is in range by type.
        unsafe { (*block)[e as usize] += 1 };
    }
}

/// Entry of `SSL_read`/`SSL_read_ex` (`SSL *ssl, void *buf, int/size_t num,
/// size_t *readbytes`) or of `SSL_write`/`SSL_write_ex` (`kind`).
#[inline(always)]
pub fn enter(ctx: &ProbeContext, kind: u32) {
    let id = bpf_get_current_pid_tgid();
    if TLS_PIDS.get_ptr(&((id >> 32) as u32)).is_none() {
        return;
    }
    if let Some(armed) = TLS_ARMED.get_ptr_mut(0) {
        // SAFETY: the map's one value; written only while still 0, so the
        // line is not bounced between CPUs on every call.
        unsafe {
            if *armed == 0 {
                *armed = 1;
            }
        }
    }
    let call = TlsCall {
        ssl: ctx.arg::<u64>(0).unwrap_or(0),
        buf: ctx.arg::<u64>(1).unwrap_or(0),
        readbytes: ctx.arg::<u64>(3).unwrap_or(0),
        len: ctx.arg::<u64>(2).unwrap_or(0),
        sock: 0,
        kind,
        _pad: 0,
    };
    match TLS_CALLS.get_ptr_mut(&id) {
        // The thread's entry from its last call: rewritten in place.
        // SAFETY: a live map value of this thread, which only this thread writes.
        Some(c) => unsafe { *c = call },
        None => {
            let _ = TLS_CALLS.insert(&id, &call, 0);
        }
    }
}

/// This thread's call in progress, taken (its entry marked idle, not removed).
#[inline(always)]
fn take_call(id: u64) -> Option<TlsCall> {
    let c = TLS_CALLS.get_ptr_mut(&id)?;
    // SAFETY: a live map value of this thread, which only this thread writes.
    let c = unsafe { &mut *c };
    if c.kind == CALL_NONE {
        return None;
    }
    let call = *c;
    c.kind = CALL_NONE;
    Some(call)
}

/// Entry of `SSL_do_handshake` (`SSL *ssl`): a connection whose plaintext
/// will be seen from its first byte.
#[inline(always)]
pub fn handshake(ctx: &ProbeContext) {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if TLS_PIDS.get_ptr(&tgid).is_none() {
        return;
    }
    let key = SslKey {
        tgid,
        _pad: 0,
        ssl: ctx.arg::<u64>(0).unwrap_or(0),
    };
    let _ = TLS_FRESH.insert(&key, &1, 0);
}

/// `sock_recv_length`/`sock_send_length` (`struct sock *sk, int ret, ...`):
/// the socket of the SSL call this thread is in, if any. A write is tied to
/// its connection here, at its first send, and its plaintext (still the
/// caller's buffer: the call has not returned) is framed for responses:
/// `SSL_write` needs no return probe. `ret` < 0 (a full socket) means libssl
/// will have the same write repeated.
#[inline(always)]
pub fn saw_sock(sk: u64, ret: i32, kind: u32) {
    // An array's lookup is a load (the verifier inlines it): nothing else runs
    // on the host's sockets before a followed process makes an SSL call (its
    // entry probe arms this before the call's first send).
    if TLS_ARMED.get(0).is_none_or(|a| *a == 0) {
        return;
    }
    let id = bpf_get_current_pid_tgid();
    let Some(call) = TLS_CALLS.get_ptr_mut(&id) else {
        return;
    };
    // SAFETY: a live map value of this thread's call.
    let call = unsafe { &mut *call };
    if call.kind != kind {
        return;
    }
    if call.sock != 0 {
        if kind == CALL_WRITE && ret < 0 && call.sock == sk {
            // A later record of this write found the socket full.
            let call = *call;
            retry_pending(&call, (id >> 32) as u32);
        }
        return;
    }
    call.sock = sk;
    if kind == CALL_WRITE {
        let call = *call;
        let Some(sc) = TLS_WRITE_SCRATCH.get_ptr_mut(0) else {
            return;
        };
        // SAFETY: this CPU's scratch entry, used by this program run only.
        let sc = unsafe { &mut *sc };
        if attribute(&call, (id >> 32) as u32, &mut sc.key).is_ok() {
            event(TlsEvent::Writes);
            respond(&call, sc, ret);
        }
    }
}

/// Frames a write's plaintext on the connection in `sc.key`: each final
/// status pops the request it answers, as TC egress does for plaintext.
#[inline(always)]
fn respond(call: &TlsCall, sc: &mut ReplyScratch, ret: i32) {
    let Some(flags) = PORTS.get(sc.key.server_port as u32) else {
        return;
    };
    if *flags & ports::WATCHED == 0 || call.len == 0 {
        return;
    }
    let Some(ex) = EXCHANGES.get_ptr_mut(&sc.key) else {
        // No request numbered on it (picked up mid-way, never exact, or
        // evicted): a status line at the write's start is counted, unpaired.
        untracked(call.buf, call.len);
        return;
    };
    // SAFETY: a live map value (RCU); the write path writes only the response
    // side's fields back.
    sc.ex = unsafe { *ex };
    let len32 = call.len as u32;
    let end32 = call.buf.wrapping_add(call.len) as u32;
    // libssl's rule: after a write that could not finish, the same write
    // comes again (its buffer may have moved).
    let repeat = sc.ex.reply_flags & REPLY_RETRY != 0 && sc.ex.write_len == len32;
    // The rest of a partial write: the same buffer from further in, ending
    // where the framed one ended. (A reused buffer written again from its
    // start ends elsewhere unless as long, and then it is not shorter.)
    let rest = sc.ex.reply_seq == end32 && len32 < sc.ex.write_len;
    sc.ex.reply_flags &= !REPLY_RETRY;
    if repeat || rest {
        // Its bytes were framed with the write they belong to.
        event(TlsEvent::WriteRetries);
    } else {
        event(TlsEvent::ResponseWrites);
        frame_write(sc, call.buf, call.len);
        sc.ex.reply_seq = end32;
        sc.ex.write_len = len32;
    }
    if ret < 0 {
        sc.ex.reply_flags |= REPLY_RETRY;
    }
    // SAFETY: as above; the request side's fields are left alone.
    unsafe {
        (*ex).head = sc.ex.head;
        (*ex).reply = sc.ex.reply;
        (*ex).reply_flags = sc.ex.reply_flags;
        (*ex).reply_seq = sc.ex.reply_seq;
        (*ex).write_len = sc.ex.write_len;
    }
}

/// A later send of a write found the socket full: the write will be repeated
/// (or, for a write that was itself a repeat or a rest, that one).
#[inline(always)]
fn retry_pending(call: &TlsCall, tgid: u32) {
    let ssl = SslKey {
        tgid,
        _pad: 0,
        ssl: call.ssl,
    };
    // SAFETY: a live map value, copied out at once.
    let Some(key) = TLS_SSL_CONNS.get_ptr(&ssl).map(|k| unsafe { *k }) else {
        return;
    };
    if let Some(ex) = EXCHANGES.get_ptr_mut(&key) {
        // SAFETY: a live map value; response-side fields only.
        unsafe { (*ex).reply_flags |= REPLY_RETRY };
    }
}

/// What the write scan's `bpf_loop` callback gets.
#[repr(C)]
struct WriteScan {
    sc: *mut ReplyScratch,
}

/// Frames `len` plaintext bytes at `buf` with the connection's response
/// framing (in `sc.ex`).
#[inline(always)]
fn frame_write(sc: &mut ReplyScratch, buf: u64, len: u64) {
    if sc.ex.reply.mode == REPLY_DONE {
        if sc.ex.reply.is_lost() {
            // Not framed any more, still counted: a status line at the
            // write's start, unpaired.
            untracked(buf, len);
        }
        return;
    }
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    sc.now = unsafe { bpf_ktime_get_ns() };
    sc.buf = buf;
    sc.pos = 0;
    sc.end = if len > MAX_WRITE as u64 {
        MAX_WRITE
    } else {
        len as u32
    };
    sc.word_at = u32::MAX;
    sc.word_len = 0;
    let mut s = WriteScan {
        sc: sc as *mut ReplyScratch,
    };
    // Each round takes a byte, a skimmed word or a whole body; a body needs a
    // head of at least 16 bytes before it, so heads of MAX_SCAN bytes at most
    // are always framed to their end.
    let heads = if sc.end > MAX_SCAN { MAX_SCAN } else { sc.end };
    // SAFETY: the callback gets `s`, which lives on this frame for the whole loop.
    unsafe {
        bpf_loop(
            heads + heads / 8 + 4,
            write_round as *mut c_void,
            (&raw mut s).cast(),
            0,
        )
    };
    // The last bytes read are the response's: no map keeps them.
    sc.plain = [0; 72];
    if (sc.pos < sc.end || len > MAX_WRITE as u64) && sc.ex.reply.mode != REPLY_DONE {
        // Not framed to the end (a read failed, or a head past the bound):
        // where the next response begins is unknown.
        sc.ex.reply = Reply::lost();
        fifo::count(ResponseCount::Lost, 1);
    } else if sc.ex.reply.is_lost() {
        fifo::count(ResponseCount::Lost, 1);
    }
}

/// One round of the write scan: a body skipped, a head word skimmed, a byte.
extern "C" fn write_round(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `WriteScan` that `frame_write` passed to bpf_loop.
    let s = unsafe { &*(ctx as *const WriteScan) };
    // SAFETY: this CPU's scratch entry, set by `frame_write`.
    let sc = unsafe { &mut *s.sc };
    if sc.pos >= sc.end || sc.ex.reply.mode == REPLY_DONE {
        return 1;
    }
    if sc.ex.reply.mode == REPLY_BODY {
        let n = sc.ex.reply.skip_body((sc.end - sc.pos) as u64);
        sc.pos += n as u32;
        return 0;
    }
    if sc.pos < sc.word_at || sc.pos - sc.word_at >= sc.word_len {
        // The next CHUNK bytes, or the last few: never before the buffer's
        // start. One helper call for 64 bytes, not 8: most of a response
        // head is skimmed a word at a time.
        let left = sc.end - sc.pos;
        let n = if left >= CHUNK {
            CHUNK
        } else {
            left & (CHUNK - 1)
        };
        // SAFETY: `plain` holds CHUNK + 8 bytes and n <= CHUNK.
        let rc = unsafe {
            bpf_probe_read_user(
                sc.plain.as_mut_ptr().cast(),
                n,
                (sc.buf + sc.pos as u64) as *const c_void,
            )
        };
        if rc != 0 || n == 0 {
            event(TlsEvent::ReadFailed);
            return 1;
        }
        sc.word_at = sc.pos;
        sc.word_len = n;
    }
    let idx = (sc.pos - sc.word_at) & (CHUNK - 1);
    // SAFETY: idx < CHUNK and `plain` holds CHUNK + 8 bytes, so the 8 bytes
    // from idx are in it; those past `word_len` are stale, and `skim` is told
    // how many are not.
    let word = u64::from_le(unsafe {
        core::ptr::read_unaligned(sc.plain.as_ptr().add(idx as usize) as *const u64)
    });
    let left = sc.word_len - idx;
    let k = sc.ex.reply.skim(word, if left < 8 { left } else { 8 });
    if k > 0 {
        sc.pos += k;
        return 0;
    }
    if sc.ex.reply.step(word as u8) == Step::Status {
        egress::answered(sc, SOURCE_TLS_WRITE);
    }
    sc.pos += 1;
    0
}

/// A write on a connection whose responses are not framed: a status line at
/// its very start is counted, unpaired (as TC egress counts a segment's).
#[inline(always)]
fn untracked(buf: u64, len: u64) {
    if len < 12 {
        return;
    }
    // SAFETY: reads the process's memory through the checked helper.
    let Ok(line) = (unsafe { aya_ebpf::helpers::bpf_probe_read_user(buf as *const [u8; 12]) })
    else {
        return;
    };
    let mut r = Reply::start();
    for b in line {
        if r.step(b) == Step::Status {
            if r.is_interim() {
                fifo::count(ResponseCount::Interim, 1);
                return;
            }
            if let Some(c) = class_of(r.status) {
                fifo::count(c, 1);
            }
            if let Some(c) = watched_status(r.status) {
                fifo::count(c, 1);
            }
            fifo::count(ResponseCount::Unseen, 1);
            return;
        }
    }
}

/// Return of `SSL_read` (`ex` false: the return value is the byte count) or
/// `SSL_read_ex` and the internal function it shares with `SSL_read` (above 0
/// on success, the count in `*readbytes`).
#[inline(always)]
pub fn read_return(ctx: &RetProbeContext, ex: bool) {
    let id = bpf_get_current_pid_tgid();
    let Some(call) = take_call(id) else {
        return;
    };
    if call.kind != CALL_READ {
        return;
    }
    let ret: i64 = ctx.ret::<i32>() as i64;
    let n: u64 = if ex {
        if ret <= 0 {
            return;
        }
        // SAFETY: reads the process's `size_t` through the checked helper.
        match unsafe { aya_ebpf::helpers::bpf_probe_read_user(call.readbytes as *const u64) } {
            Ok(n) => n,
            Err(_) => {
                event(TlsEvent::ReadFailed);
                return;
            }
        }
    } else if ret > 0 {
        ret as u64
    } else {
        return;
    };
    if n == 0 {
        return;
    }
    let Some(sc) = TLS_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch entry, used by this program run.
    let sc = unsafe { &mut *sc };
    if attribute(&call, (id >> 32) as u32, &mut sc.key).is_err() {
        return;
    }
    let port = sc.key.server_port;
    let Some(flags) = PORTS.get_ptr_mut(port as u32) else {
        return;
    };
    // SAFETY: a live array slot.
    let flags = unsafe { &mut *flags };
    if *flags & ports::WATCHED == 0 {
        return;
    }
    if *flags & ports::TLS == 0 {
        // The port serves TLS: the TC path leaves its requests to the uprobes.
        *flags |= ports::TLS;
    }
    event(TlsEvent::Reads);
    sc.stream = stream_of(
        &sc.key,
        &SslKey {
            tgid: (id >> 32) as u32,
            _pad: 0,
            ssl: call.ssl,
        },
    );
    let len = if n > MAX_SCAN as u64 {
        MAX_SCAN
    } else {
        n as u32
    };
    if sc.stream.framing == Framing::start() && opens_h2(call.buf, len) {
        sc.stream.flags |= STREAM_H2;
        sc.stream.framing.mode = MODE_OPAQUE;
        event(TlsEvent::H2Streams);
    }
    let fresh = sc.stream.framing.is_fresh();
    let (starts, first) = if sc.stream.flags & STREAM_H2 != 0 {
        (0, NO_START)
    } else {
        scan(sc, call.buf, len)
    };
    let starts = if n > MAX_SCAN as u64 {
        sc.stream.framing.distrust();
        starts + 1
    } else {
        starts
    };
    // Numbered for their responses (`SSL_write`), in the FIFO TC egress uses
    // for plaintext, with this return's time as their arrival.
    sc.pushed = Pushed {
        starts,
        heads: sc.cur.heads,
        first_off: first,
        unknown: sc.cur.unknown,
        fresh: fresh as u32,
        ack: 0,
        first_index: NO_EXCHANGE,
        _pad: 0,
    };
    let exact = sc.stream.framing.is_exact() && sc.stream.flags & STREAM_H2 == 0;
    fifo::push(&sc.key, &mut sc.pushed, exact, &mut sc.fresh);
    match TLS_STREAMS.get_ptr_mut(&sc.key) {
        // In place: one thread reads a connection at a time (libssl is not
        // used on one SSL* from two threads at once).
        // SAFETY: a live map value of this connection.
        Some(s) => unsafe { *s = sc.stream },
        None => {
            let _ = TLS_STREAMS.insert(&sc.key, &sc.stream, 0);
        }
    }
    if starts == 0 {
        return;
    }
    let verdict = charge(&sc.key, starts);
    if let Some(cfg) = CONFIG.get(0)
        && sample::chosen(cfg)
        && first != NO_START
        && crate::budget::take()
    {
        let index = sc.pushed.first_index;
        let index = if index != NO_EXCHANGE && fifo::mark_sampled(&sc.key, index) {
            index
        } else {
            NO_EXCHANGE
        };
        emit(
            &sc.key,
            call.buf,
            first,
            len,
            verdict,
            cfg.capture_bytes,
            index,
        );
    }
}

/// The connection of the call: the socket seen during it (cached for later
/// calls), else the cache.
#[inline(always)]
fn attribute(call: &TlsCall, tgid: u32, key: &mut ConnKey) -> Result<(), ()> {
    let ssl = SslKey {
        tgid,
        _pad: 0,
        ssl: call.ssl,
    };
    if call.sock != 0 && sock_conn(call.sock, key).is_ok() {
        // An LRU update only when the SSL* is new or moved (a reused pointer).
        // SAFETY: a live map value, read at once.
        let cached = TLS_SSL_CONNS
            .get_ptr(&ssl)
            .is_some_and(|k| unsafe { *k } == *key);
        if !cached {
            let _ = TLS_SSL_CONNS.insert(&ssl, key, 0);
        }
        return Ok(());
    }
    // SAFETY: a live map value, copied out at once.
    match TLS_SSL_CONNS.get_ptr(&ssl).map(|k| unsafe { *k }) {
        Some(k) => {
            *key = k;
            event(TlsEvent::FromCache);
            Ok(())
        }
        None => {
            event(TlsEvent::Unattributed);
            Err(())
        }
    }
}

/// The 4-tuple of a `struct sock *`, read at the offsets the daemon took from
/// the kernel's BTF. The client is the peer.
#[inline(always)]
fn sock_conn(sk: u64, key: &mut ConnKey) -> Result<(), ()> {
    let off = TLS_OFFSETS.get(0).ok_or(())?;
    if off.ready == 0 {
        return Err(());
    }
    let family: u16 = kread(sk, off.family)?;
    match family {
        AF_INET => {
            key.client = mapped(kread(sk, off.daddr)?);
            key.server = mapped(kread(sk, off.rcv_saddr)?);
        }
        AF_INET6 => {
            key.client = kread(sk, off.v6_daddr)?;
            key.server = kread(sk, off.v6_rcv_saddr)?;
        }
        _ => return Err(()),
    }
    let dport: u16 = kread(sk, off.dport)?;
    let num: u16 = kread(sk, off.num)?;
    key.client_port = u16::from_be(dport);
    key.server_port = num;
    key._pad = 0;
    Ok(())
}

/// A `T` at `off` bytes into the kernel object at `base`.
#[inline(always)]
fn kread<T>(base: u64, off: u32) -> Result<T, ()> {
    // SAFETY: kernel memory read through the checked helper, which fails
    // (rather than faults) on a bad address.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }.map_err(|_| ())
}

/// The connection's parser: kept, or new. A stream whose handshake was seen,
/// or that the TC path saw from its first byte (a trusted start that turned
/// opaque at the ClientHello), starts at its first request; one picked up
/// later (the daemon started on open connections, an evicted entry) is
/// untrusted, erring high.
#[inline(always)]
fn stream_of(key: &ConnKey, ssl: &SslKey) -> TlsStream {
    // SAFETY: live map values, copied out at once.
    if let Some(s) = TLS_STREAMS.get_ptr(key).map(|s| unsafe { *s }) {
        return s;
    }
    let handshake = TLS_FRESH.get_ptr(ssl).is_some();
    if handshake {
        let _ = TLS_FRESH.remove(ssl);
    }
    // SAFETY: a live map value, copied out at once.
    let tc = CONNS.get_ptr(key).map(|c| unsafe { (*c).framing });
    let fresh = handshake || tc.is_some_and(|f| f.mode == MODE_OPAQUE && f.is_trusted());
    TlsStream {
        framing: if fresh {
            Framing::start()
        } else {
            count::event(Event::StreamsUntrusted);
            Framing::untrusted()
        },
        flags: 0,
        _pad: 0,
    }
}

/// Whether the plaintext opens with the HTTP/2 connection preface.
#[inline(always)]
fn opens_h2(buf: u64, len: u32) -> bool {
    if len < 8 {
        return false;
    }
    // SAFETY: reads the process's memory through the checked helper.
    match unsafe { aya_ebpf::helpers::bpf_probe_read_user(buf as *const [u8; 8]) } {
        Ok(b) => &b == b"PRI * HT",
        Err(_) => false,
    }
}

/// What the `bpf_loop` callback gets.
#[repr(C)]
struct Scan {
    sc: *mut TlsScratch,
}

/// Scans `len` plaintext bytes at `buf` with the stream's framing; returns the
/// request starts and the offset of the first.
#[inline(always)]
fn scan(sc: &mut TlsScratch, buf: u64, len: u32) -> (u32, u32) {
    sc.cur = Cursor {
        buf,
        pos: 0,
        end: len,
        starts: 0,
        first: NO_START,
        word_at: u32::MAX,
        word_len: 0,
        heads: 0,
        unknown: 0,
    };
    let mut s = Scan { sc };
    // As in stream.rs: each round parses a byte, skims up to 8, or skips a body.
    let rounds = len + len / 8 + 4;
    // SAFETY: the callback gets `s`, which lives on this frame for the whole loop.
    unsafe { bpf_loop(rounds, scan_round as *mut c_void, (&raw mut s).cast(), 0) };
    // The last word read may be a credential's: no map keeps it.
    sc.word = [0; 8];
    let c = &sc.cur;
    let mut starts = c.starts;
    if c.pos < c.end {
        // A read of the plaintext failed, or the bound was reached: err high.
        starts += 1;
        sc.stream.framing.distrust();
        event(TlsEvent::ReadFailed);
    }
    (starts, c.first)
}

extern "C" fn scan_round(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Scan` that `scan` passed to bpf_loop.
    let s = unsafe { &*(ctx as *const Scan) };
    // SAFETY: this CPU's scratch entry, set by `scan`.
    let sc = unsafe { &mut *s.sc };
    let c = &mut sc.cur;
    let f = &mut sc.stream.framing;
    if c.pos >= c.end {
        return 1;
    }
    if f.mode == MODE_BODY {
        let n = f.skip_body((c.end - c.pos) as u64);
        c.pos += n as u32;
        return 0;
    }
    if c.pos < c.word_at || c.pos - c.word_at >= c.word_len {
        // The next 8 bytes, or the last few: never before the buffer's start.
        let left = c.end - c.pos;
        let n = if left >= 8 { 8 } else { left & 7 };
        sc.word = [0; 8];
        // SAFETY: `word` holds 8 bytes and n <= 8.
        let rc = unsafe {
            bpf_probe_read_user(
                sc.word.as_mut_ptr().cast(),
                n,
                (c.buf + c.pos as u64) as *const c_void,
            )
        };
        if rc != 0 || n == 0 {
            return 1;
        }
        c.word_at = c.pos;
        c.word_len = n;
    }
    let idx = (c.pos - c.word_at) & 7;
    let avail = c.word_len - idx;
    let k = f.skim(u64::from_le_bytes(sc.word) >> (8 * idx), avail);
    if k > 0 {
        c.pos += k;
        return 0;
    }
    let b = sc.word[idx as usize];
    if f.step(b) {
        if b == b'H' {
            // A HEAD's response has no body: the write path must know.
            note_head(c, &mut sc.method);
        }
        c.starts += 1;
        if c.first == NO_START {
            c.first = c.pos;
        }
    }
    c.pos += 1;
    0
}

/// Notes whether the request starting at `c.pos` (with an `H`) is a `HEAD`.
#[inline(always)]
fn note_head(c: &mut Cursor, method: &mut [u8; 8]) {
    if c.starts >= 32 || c.end - c.pos < 5 {
        c.unknown = 1;
        return;
    }
    // SAFETY: `method` holds 8 >= 5 bytes; the helper checks the source.
    let rc = unsafe {
        bpf_probe_read_user(
            method.as_mut_ptr().cast(),
            5,
            (c.buf + c.pos as u64) as *const c_void,
        )
    };
    if rc != 0 {
        c.unknown = 1;
    } else if method[..5] == *b"HEAD " {
        c.heads |= 1 << c.starts;
    }
}

/// Who a connection's requests are charged to: the client a trusted proxy's
/// PROXY header named (proxy.rs, read by the TC path before the ClientHello),
/// else its peer. Without this a balancer in front of a TLS port would be
/// charged for every client behind it.
#[inline(always)]
fn client_of(cfg: &api_guard_common::config::Config, conn: &ConnKey) -> [u8; 16] {
    crate::proxy::named_by_conn(cfg, conn).unwrap_or(conn.client)
}

/// Charges `starts` requests of the connection's client as the TC judge does:
/// lists, blocks, the request bucket; counts them by verdict; an over-limit
/// verdict goes to the packet path. Returns the verdict.
#[inline(always)]
fn charge(conn: &ConnKey, starts: u32) -> Verdict {
    let Some(cfg) = CONFIG.get(0) else {
        return Verdict::Allowed;
    };
    let mut clock = Clock::new();
    let source = ClientKey {
        addr: client_of(cfg, conn),
    };
    let ev = Seen {
        starts,
        connection: false,
        named: false,
    };
    let verdict = match enforce::lists(cfg, &source, &mut clock) {
        Some(v) => v,
        None => {
            let key = source.bucketed(cfg.ipv6_prefix);
            match count::state(&key, &mut clock) {
                None => {
                    count::event(Event::ClientsRefused);
                    Verdict::Allowed
                }
                Some(state) => {
                    let blocked = enforce::is_blocked(state, &mut clock);
                    count::client(state, ev, &mut clock);
                    if blocked {
                        Verdict::Blocked
                    } else {
                        enforce::client(cfg, &key, state, ev, &mut clock).verdict
                    }
                }
            }
        }
    };
    count::requests(starts, verdict);
    if verdict == Verdict::Allowed {
        return verdict;
    }
    if let Some(why) = enforce::released(cfg, &mut clock) {
        count::requests(starts, why);
        return why;
    }
    if verdict == Verdict::RateLimited {
        let _ = TLS_VERDICTS.insert(conn, &(Verdict::RateLimited as u32), 0);
        event(TlsEvent::Verdicts);
    }
    verdict
}

/// Emits a sample of the plaintext from the first request start.
#[inline(always)]
fn emit(
    key: &ConnKey,
    buf: u64,
    first: u32,
    len: u32,
    verdict: Verdict,
    capture: u32,
    exchange: u32,
) {
    let Some(b) = SAMPLE_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a per-CPU scratch entry, used by this program run only.
    let b: &mut SampleBuf = unsafe { &mut *b };
    if first >= len {
        return;
    }
    let hdr = &mut b.header;
    // SAFETY: no preconditions.
    hdr.ts_ns = unsafe { bpf_ktime_get_ns() };
    hdr.client = match CONFIG.get(0) {
        Some(cfg) => client_of(cfg, key),
        None => key.client,
    };
    hdr.server = key.server;
    hdr.flags = if is_mapped(&hdr.client) {
        0
    } else {
        SAMPLE_IPV6
    };
    hdr.client_port = key.client_port;
    hdr.server_port = key.server_port;
    hdr.source = SOURCE_TLS_READ;
    hdr.verdict = verdict as u8;
    hdr.ifindex = 0;
    hdr.payload_len = len - first;
    // The request's number on its connection: its response (`SSL_write`)
    // carries the same, for the daemon's join.
    hdr.exchange = exchange;
    let mut n = ((len - first) as usize).min(capture as usize);
    n &= MAX_CAPTURE * 2 - 1;
    if n == 0 || n > MAX_CAPTURE {
        return;
    }
    // SAFETY: the destination holds MAX_CAPTURE >= n bytes.
    let rc = unsafe {
        bpf_probe_read_user(
            b.data.as_mut_ptr().cast(),
            n as u32,
            (buf + first as u64) as *const c_void,
        )
    };
    if rc != 0 {
        event(TlsEvent::ReadFailed);
        return;
    }
    b.header.captured = n as u32;
    // SAFETY: HEADER_LEN + n bytes of the scratch entry are initialised.
    let bytes = unsafe {
        core::slice::from_raw_parts((b as *const SampleBuf).cast::<u8>(), HEADER_LEN + n)
    };
    let sent = SAMPLES.output::<[u8]>(bytes, crate::sample::wakeup());
    // The head may carry a credential: the ring hands it to the daemon, but
    // no map keeps it after this run.
    crate::sample::wipe(&mut b.data, n);
    if sent.is_err() {
        count::event(Event::SamplesLost);
        return;
    }
    count::event(Event::Sampled);
}

/// The TC judge's step for a packet to a TLS port: no request counting here
/// (the uprobes count the plaintext); a SYN opens the connection's stream
/// fresh; a client's RST forgets it. Returns the verdict the uprobes left for
/// the connection, if any.
///
/// A SYN or RST that the server's stack would not take (a SYN into an open
/// connection, a RST whose number is not the next one expected: RFC 5961
/// answers both with a challenge ACK) leaves the stream and its verdict as
/// they were: otherwise a client over its limit could forge one to lift its
/// verdict, or to restart the framing in the middle of a body.
#[inline(always)]
pub fn packet(ctx: &TcContext, pkt: &TcpPacket, client: &[u8; 16]) -> Option<Verdict> {
    let key = TLS_TC_KEY.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch entry, used by this program run only.
    let key = unsafe { &mut *key };
    let seq = crate::stream::conn_key(ctx, pkt, client, key)?;
    let key: &ConnKey = key;
    if pkt.flags & (TCP_SYN | TCP_ACK) == TCP_SYN
        && crate::stream::server_next(ctx, pkt, key).is_none()
    {
        let s = TlsStream {
            framing: Framing::start(),
            flags: 0,
            _pad: 0,
        };
        let _ = TLS_STREAMS.insert(key, &s, 0);
        let _ = TLS_VERDICTS.remove(key);
        return None;
    }
    TLS_VERDICTS.get_ptr(key)?;
    if pkt.flags & TCP_RST != 0 {
        match crate::stream::server_next(ctx, pkt, key) {
            // The server keeps the connection: so does its verdict.
            Some((rcv_nxt, _)) if rcv_nxt != seq => {}
            _ => {
                // The client gave up the connection: nothing left to stop.
                let _ = TLS_VERDICTS.remove(key);
                let _ = TLS_STREAMS.remove(key);
                return None;
            }
        }
    }
    Some(Verdict::RateLimited)
}

const TCP_RST: u8 = 0x04;

#[inline(always)]
fn mapped(v4: [u8; 4]) -> [u8; 16] {
    let [a, b, c, d] = v4;
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d]
}

#[inline(always)]
fn is_mapped(a: &[u8; 16]) -> bool {
    a[..10] == [0; 10] && a[10] == 0xff && a[11] == 0xff
}

const _: () = assert!(core::mem::size_of::<Scan>() == 8);
