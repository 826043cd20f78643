//! K6: TLS. nginx terminating TLS with the system's libssl, wrk over https,
//! with and without api-guard following nginx's SSL_read with uprobes; and
//! the TLS programs' own cost per request from the kernel's BPF run-time
//! statistics (BPF_ENABLE_STATS, on only while the daemon runs).

use std::{collections::HashMap, time::Duration};

use anyhow::{Context as _, Result};
use api_guard::kernel::{
    Datapath, LoadOptions,
    attach::{Site, SslSites},
};
use api_guard_tests::{
    bpffs::BpfFs,
    client::{parse_wrk, wrk},
    daemon::Daemon,
    netns::Topology,
    process::wait_until,
    tls::TlsNginx,
};
use aya::programs::loaded_programs;

use super::{Options, RUNS, Row, Section, Stat};

const PORT: u16 = 8443;

/// The TLS programs as the kernel names them (15 characters).
fn is_tls_program(name: &str) -> bool {
    name.starts_with("api_guard_ssl") || name.starts_with("api_guard_sock")
}

/// Run time, run count and name of every TLS program loaded now, by id.
fn tls_stats() -> HashMap<u32, (Duration, u64, String)> {
    loaded_programs()
        .filter_map(|p| p.ok())
        .filter(|p| p.name_as_str().is_some_and(is_tls_program))
        .map(|p| {
            let name = p.name_as_str().unwrap_or_default().to_string();
            (p.id(), (p.run_time(), p.run_count(), name))
        })
        .collect()
}

/// "12345 requests in 8.00s" → 12345.
fn wrk_requests(report: &str) -> Option<u64> {
    report
        .lines()
        .find_map(|l| l.trim().split_once(" requests in"))
        .and_then(|(n, _)| n.trim().parse().ok())
}

// Two functions of this binary for the trap rows: the same work behind a first
// instruction the kernel single-steps under a breakpoint (`sub $n,%rsp`, as
// OpenSSL's SSL_read opens) and one it emulates (`push`, as its internal
// ssl_read_internal opens).
std::arch::global_asm!(
    ".globl bench_trap_stepped",
    ".type bench_trap_stepped,@function",
    "bench_trap_stepped:",
    "sub rsp, 0x18",
    "add rsp, 0x18",
    "lea rax, [rdi + 1]",
    "ret",
    ".size bench_trap_stepped, .-bench_trap_stepped",
    ".globl bench_trap_emulated",
    ".type bench_trap_emulated,@function",
    "bench_trap_emulated:",
    "push r13",
    "pop r13",
    "lea rax, [rdi + 1]",
    "ret",
    ".size bench_trap_emulated, .-bench_trap_emulated",
);

unsafe extern "C" {
    fn bench_trap_stepped(x: u64) -> u64;
    fn bench_trap_emulated(x: u64) -> u64;
}

/// ns per call of `f`, `calls` times.
fn per_call(f: unsafe extern "C" fn(u64) -> u64, calls: u64) -> f64 {
    let start = std::time::Instant::now();
    let mut acc = 0u64;
    for i in 0..calls {
        // SAFETY: both functions only compute on their argument.
        acc = acc.wrapping_add(unsafe { f(std::hint::black_box(i)) });
    }
    std::hint::black_box(acc);
    start.elapsed().as_nanos() as f64 / calls as f64
}

/// The cost of one uprobe hit on this kernel and machine: this binary's two
/// functions called with no probe, with an entry probe, and with an entry and
/// a return probe (TLS programs that return at once for a process not
/// followed), attached to this process only.
fn trap_rows(runs: usize) -> Result<Vec<Row>> {
    const CALLS: u64 = 20_000;
    let exe = std::path::Path::new("/proc/self/exe");
    let shapes: [(&str, &'static str, unsafe extern "C" fn(u64) -> u64); 2] = [
        (
            "first instruction single-stepped (sub $n,%rsp, as SSL_read)",
            "bench_trap_stepped",
            bench_trap_stepped,
        ),
        (
            "first instruction emulated (push, as OpenSSL's internal read/write)",
            "bench_trap_emulated",
            bench_trap_emulated,
        ),
    ];
    let mut dp = Datapath::load(&LoadOptions::default())?;
    dp.tls_load(std::path::Path::new("/sys/kernel/btf/vmlinux"))?;
    let mut rows = Vec::new();
    for (what, symbol, f) in shapes {
        let mut entry = Vec::new();
        let mut both = Vec::new();
        for _ in 0..runs {
            let bare = per_call(f, CALLS);
            for (with_return, out) in [(false, &mut entry), (true, &mut both)] {
                let mut probes = vec![(Site::Symbol(symbol), "api_guard_ssl_handshake")];
                if with_return {
                    probes.push((Site::Symbol(symbol), "api_guard_ssl_read_ex_ret"));
                }
                let sites = SslSites {
                    probes,
                    how: String::new(),
                };
                let links = dp.tls_attach(exe, &sites, std::process::id())?;
                out.push(per_call(f, CALLS) - bare);
                dp.tls_detach(links);
            }
        }
        rows.push(Row {
            case: format!("uprobe hit, {what}"),
            figures: vec![
                ("entry probe ns/call".into(), Stat::of(entry).show(0)),
                (
                    "entry and return probe ns/call".into(),
                    Stat::of(both).show(0),
                ),
            ],
            target: None,
        });
    }
    Ok(rows)
}

/// Per program name: ns per request and runs per request, one of each a run.
type ByProgram = std::collections::BTreeMap<String, (Vec<f64>, Vec<f64>)>;

pub(super) fn k6(o: &Options) -> Result<Section> {
    let traps = trap_rows(if o.quick { 3 } else { RUNS })?;
    let secs = if o.quick { 2 } else { 8 };
    let runs = if o.quick { 3 } else { RUNS };
    let configs: [(&str, Option<&[&str]>); 3] = [
        ("no api-guard", None),
        (
            "api-guard --tls auto, defaults (--sample 1.0, --sample-budget 1000/s, --sample-wakeup batched)",
            Some(&["--rate", "1000000"]),
        ),
        (
            "api-guard --tls auto, --sample 0.01",
            Some(&["--rate", "1000000", "--sample", "0.01"]),
        ),
    ];
    let n = configs.len();
    let mut rps = vec![Vec::new(); n];
    let mut p99 = vec![Vec::new(); n];
    let mut rel_rps = vec![Vec::new(); n];
    let mut rel_p99 = vec![Vec::new(); n];
    let mut ns_per_request = vec![Vec::new(); n];
    let mut counted_share = vec![Vec::new(); n];
    // Per program: ns per request and runs per request, by set-up.
    let mut by_program: Vec<ByProgram> = vec![Default::default(); n];
    for _ in 0..runs {
        let mut base = None;
        for (i, (_, flags)) in configs.iter().enumerate() {
            let bpffs = BpfFs::mount()?;
            let topo = Topology::new(1)?;
            let nginx = TlsNginx::start(&topo.server, PORT)?;
            let before = tls_stats();
            let daemon = match flags {
                Some(flags) => {
                    let mut args: Vec<String> =
                        vec!["run".into(), "--port".into(), PORT.to_string()];
                    for iface in &topo.server_ifaces {
                        args.extend(["--iface".into(), iface.clone()]);
                    }
                    args.extend(["--pin-dir".into(), bpffs.pin_dir().display().to_string()]);
                    args.extend(["--access-log".into(), "/dev/null".into()]);
                    args.extend(flags.iter().map(|f| f.to_string()));
                    let d = Daemon::start(&topo.server, &args)?;
                    wait_until(
                        Duration::from_secs(10),
                        "the daemon to follow nginx",
                        || Ok(d.stderr().contains("TLS: following")),
                    )?;
                    Some(d)
                }
                None => None,
            };
            // Kernel run-time statistics while this run lasts (the fd turns
            // them off when it closes).
            let stats_on = daemon
                .is_some()
                .then(|| aya::sys::enable_stats(aya::sys::Stats::RunTime))
                .transpose()
                .context("cannot turn on BPF run-time statistics")?;
            let start = tls_stats();
            let c = &topo.clients[0];
            let url = format!("https://{}:{PORT}/bench", c.server4);
            let report = wrk(&c.ns, &url, 50, Duration::from_secs(secs))?;
            let end = tls_stats();
            drop(stats_on);
            let r =
                parse_wrk(&report).with_context(|| format!("unreadable wrk report:\n{report}"))?;
            let done = wrk_requests(&report).context("no request count in wrk's report")?;
            if let Some(d) = daemon {
                // Only this daemon's programs: those loaded since `before`.
                let mut ns = 0.0;
                let mut per_name: HashMap<&str, (f64, f64)> = HashMap::new();
                for (id, (t, runs, name)) in end.iter().filter(|(id, _)| !before.contains_key(id)) {
                    let (t0, r0) = start.get(id).map_or((Duration::ZERO, 0), |s| (s.0, s.1));
                    let t = t.saturating_sub(t0).as_nanos() as f64;
                    ns += t;
                    let e = per_name.entry(name.as_str()).or_default();
                    e.0 += t;
                    e.1 += runs.saturating_sub(r0) as f64;
                }
                ns_per_request[i].push(ns / done.max(1) as f64);
                for (name, (t, runs)) in per_name {
                    let e = by_program[i].entry(name.to_string()).or_default();
                    e.0.push(t / done.max(1) as f64);
                    e.1.push(runs / done.max(1) as f64);
                }
                let stopped = d.stop()?;
                let counted = stopped.counter("requests", "allowed")?;
                counted_share[i].push(counted as f64 / done.max(1) as f64);
            }
            drop(nginx);
            drop(topo);
            drop(bpffs);
            let (b_rps, b_p99) = *base.get_or_insert((r.requests_per_sec, r.p99_ms));
            rps[i].push(r.requests_per_sec);
            p99[i].push(r.p99_ms);
            rel_rps[i].push(r.requests_per_sec / b_rps);
            rel_p99[i].push(r.p99_ms / b_p99);
        }
    }
    let mut notes = Vec::new();
    for (i, (name, flags)) in configs.iter().enumerate() {
        if flags.is_none() {
            continue;
        }
        let parts: Vec<String> = by_program[i]
            .iter()
            .map(|(prog, (ns, runs))| {
                format!(
                    "`{prog}` {} ns/request ({} runs/request)",
                    Stat::of(ns.clone()).show(0),
                    Stat::of(runs.clone()).show(2)
                )
            })
            .collect();
        notes.push(format!(
            "Program time by program, {name}: {}.",
            parts.join("; ")
        ));
    }
    let mut rows = Vec::new();
    for (i, (name, flags)) in configs.iter().enumerate() {
        let tput = Stat::of(rel_rps[i].clone());
        let lat = Stat::of(rel_p99[i].clone());
        let mut figures = vec![
            ("req/s".into(), Stat::of(rps[i].clone()).show(0)),
            ("p99 ms".into(), Stat::of(p99[i].clone()).show(3)),
            ("throughput ×".into(), tput.show(3)),
            ("p99 ×".into(), lat.show(3)),
        ];
        if flags.is_some() {
            figures.push((
                "uprobe programs ns/request".into(),
                Stat::of(ns_per_request[i].clone()).show(0),
            ));
            figures.push((
                "requests counted / completed by wrk".into(),
                Stat::of(counted_share[i].clone()).show(3),
            ));
        }
        rows.push(Row {
            case: name.to_string(),
            figures,
            target: (i == 1).then(|| {
                (
                    "throughput ≥ 0.95×, p99 ≤ 1.10× at the default sampling".to_string(),
                    tput.median >= 0.95 && lat.median <= 1.10,
                )
            }),
        });
    }
    Ok(Section {
        title: "K6 — TLS requests through libssl uprobes".into(),
        about: format!(
            "nginx (master and one worker, TLS with the system's libssl.so.3, ECDSA P-256 certificate) in a server namespace, `wrk -t2 -c50 -d{secs}s --latency` over https from a client namespace, {runs} runs; each run measures the set-ups back to back and the ratios are to the run's own no-api-guard figures. api-guard follows nginx's SSL_read/SSL_write (`--tls auto`, uprobes attached to nginx's processes only, at the internal function SSL_read/SSL_read_ex share and the one SSL_write/SSL_write_ex share) under a limit high enough to admit everything, access log to /dev/null. The program cost is the kernel's run time of the TLS programs (read entry and return, write entry, the socket tracepoints, which run on every socket read and write of the host) from BPF_ENABLE_STATS, divided by the requests wrk completed; it leaves out the uprobe hit itself (breakpoint, emulation or single step, return trampoline), which the two `uprobe hit` rows measure: 20000 calls of a function of the bench binary with an entry probe, then with an entry and a return probe (TLS programs that return at once), less the same calls without, for a first instruction the kernel must single-step under the breakpoint (`sub $n,%rsp`, how SSL_read opens) and one it emulates (`push`, how OpenSSL's internal functions open). Other processes that attach uprobes to libssl.so.3 for every process (an older api-guard) make nginx and wrk trap in every set-up. \"Requests counted\" is the daemon's allowed-request counter over wrk's completed requests (wrk's last in-flight requests count at the server but not at wrk)."
        ),
        rows: rows.into_iter().chain(traps).collect(),
        notes,
    })
}
