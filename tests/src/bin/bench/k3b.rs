//! K3b: floods the XDP pre-filter is for, TC only against native XDP, side by
//! side in each run. A raw-socket sender (`spoof`) in a client namespace sends
//! (a) one blocked client's SYNs and requests, (b) SYNs from tens of thousands
//! of spoofed sources in a denied network, to the server's veth, where the
//! daemon drops them in TC (`--xdp off`) or in XDP (`--xdp native`). On veth
//! the receive side runs in softirq on the sending CPU, so the machine's
//! softirq time during the flood is what dropping cost; packets dropped per
//! softirq CPU-second is the per-core drop rate.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context as _, Result, ensure};
use api_guard_tests::{
    bpffs::BpfFs,
    daemon::{Daemon, binary},
    netns::{Client, Topology},
    nginx::Nginx,
    process::wait_until,
    scenario::API,
};
use aya::programs::loaded_programs;
use serde_json::Value;

use super::{Options, RUNS, Row, Section, Stat, softirq_secs};

/// The flooder's first spoofed source; the blocked client is this one alone.
const FIRST_SOURCE: &str = "198.19.0.1";
const DENIED: &str = "198.19.0.0/16";
/// Spoofed sources of the SYN flood.
const SOURCES: u32 = 60_000;

struct Flood {
    name: &'static str,
    flags: &'static [&'static str],
    /// spoof's --count and --syn-only
    count: u32,
    syn_only: bool,
}

const FLOODS: [Flood; 2] = [
    Flood {
        name: "a blocked client's flood (SYN + request, one source, blocked by --block-for)",
        flags: &["--rate", "1", "--burst", "1", "--block-for", "1h"],
        count: 1,
        syn_only: false,
    },
    Flood {
        name: "spoofed SYN flood from a denied network (60000 sources)",
        flags: &["--deny", DENIED],
        count: SOURCES,
        syn_only: true,
    },
];

const MODES: [(&str, &str); 2] = [("TC only", "off"), ("native XDP", "native")];

/// What one flood did.
struct Measured {
    sent: f64,
    secs: f64,
    dropped: f64,
    softirq: f64,
    /// The XDP or ingress program's own ns per run (BPF stats).
    prog_ns: f64,
}

fn spoof_bin() -> Result<std::path::PathBuf> {
    let bin = std::env::current_exe()?.with_file_name("spoof");
    ensure!(
        bin.exists(),
        "{} is missing (cargo build --release -p api-guard-tests --bin spoof)",
        bin.display()
    );
    Ok(bin)
}

/// Runs spoof in `from`'s namespace; returns (frames sent, seconds).
fn spoof(from: &Client, mac: &str, count: u32, repeats: u32, syn_only: bool) -> Result<(f64, f64)> {
    let out = from
        .ns
        .command(spoof_bin()?.to_str().context("spoof path")?)
        .args(["--iface", "eth0", "--dst-mac", mac])
        .args(["--dst", &from.server4.to_string()])
        .args(["--port", &API.to_string()])
        .args(["--src", FIRST_SOURCE, "--count", &count.to_string()])
        .args(["--repeats", &repeats.to_string()])
        .args(["--syn-only", if syn_only { "1" } else { "0" }])
        .output()
        .context("cannot run spoof")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "spoof failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "spoof: sent F frames (...) from N sources in T s (...)"
    let words: Vec<&str> = stdout.split_whitespace().collect();
    let at = |label: &str| -> Option<f64> {
        let i = words.iter().position(|w| *w == label)?;
        words
            .get(i.checked_sub(1)?)?
            .trim_start_matches('(')
            .parse()
            .ok()
    };
    Ok((at("frames").context("frames")?, at("s").context("seconds")?))
}

fn status(pin_dir: &Path) -> Result<Value> {
    let out = Command::new(binary())
        .args(["status", "--json", "--pin-dir"])
        .arg(pin_dir)
        .output()?;
    ensure!(out.status.success(), "status: {out:?}");
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Packets dropped, by any drop verdict, XDP's or TC's.
fn dropped(status: &Value) -> f64 {
    [
        "denied",
        "blocked",
        "xdp_denied",
        "xdp_blocked",
        "rate_limited",
        "conn_limited",
    ]
    .iter()
    .filter_map(|v| status["counters"]["packets"][v].as_u64())
    .sum::<u64>() as f64
}

/// Run time and count of the loaded programs named `name` (the kernel's
/// 15-character names).
fn prog_stats(name: &str) -> (Duration, u64) {
    loaded_programs()
        .filter_map(|p| p.ok())
        .filter(|p| p.name_as_str() == Some(name))
        .fold((Duration::ZERO, 0), |(t, n), p| {
            (t + p.run_time(), n + p.run_count())
        })
}

fn flood_once(flood: &Flood, xdp: &str, repeats: u32) -> Result<Measured> {
    let bpffs = BpfFs::mount()?;
    let topo = Topology::new(1)?;
    let nginx = Nginx::start(&topo.server, &[API])?;
    let mut args: Vec<String> = ["run", "--port", &API.to_string(), "--iface"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(topo.server_ifaces[0].clone());
    args.extend(["--pin-dir".into(), bpffs.pin_dir().display().to_string()]);
    args.extend([
        "--access-log".into(),
        "/dev/null".into(),
        "--xdp".into(),
        xdp.into(),
    ]);
    args.extend(flood.flags.iter().map(|f| f.to_string()));
    let daemon = Daemon::start(&topo.server, &args)?;
    let c = &topo.clients[0];
    let mac = topo
        .server
        .exec(
            "cat",
            &[&format!("/sys/class/net/{}/address", topo.server_ifaces[0])],
        )?
        .trim()
        .to_string();
    if flood.count == 1 {
        // Over the limit once: blocked from then on.
        spoof(c, &mac, 1, 2, false)?;
        wait_until(Duration::from_secs(30), "the flooder to be blocked", || {
            Ok(status(&bpffs.pin_dir())?["blocked_clients"]
                .as_array()
                .is_some_and(|a| !a.is_empty()))
        })?;
    }
    // The kernel keeps 15 characters of a program's name.
    let prog = if xdp == "off" {
        "api_guard_ingre"
    } else {
        "api_guard_xdp"
    };
    let before = dropped(&status(&bpffs.pin_dir())?);
    let (t0, n0) = prog_stats(prog);
    let soft0 = softirq_secs();
    let (sent, secs) = spoof(c, &mac, flood.count, repeats, flood.syn_only)?;
    let softirq = softirq_secs() - soft0;
    let (t1, n1) = prog_stats(prog);
    let after = dropped(&status(&bpffs.pin_dir())?);
    let stopped = daemon.stop()?;
    ensure!(stopped.status.success(), "daemon: {}", stopped.stderr);
    drop(nginx);
    Ok(Measured {
        sent,
        secs,
        dropped: after - before,
        softirq,
        prog_ns: (t1 - t0).as_nanos() as f64 / (n1 - n0).max(1) as f64,
    })
}

pub fn k3b(o: &Options) -> Result<Section> {
    let runs = if o.quick { 3 } else { RUNS };
    // Frames a flood sends: about 1.2 M (0.3 M quick) each.
    let frames: u32 = if o.quick { 300_000 } else { 1_200_000 };
    // Run time statistics for the programs' own cost (off again on drop).
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).ok();
    let cells = FLOODS.len() * MODES.len();
    let mut per_core = vec![Vec::new(); cells];
    let mut drop_rate = vec![Vec::new(); cells];
    let mut softirq_share = vec![Vec::new(); cells];
    let mut sent_rate = vec![Vec::new(); cells];
    let mut dropped_share = vec![Vec::new(); cells];
    let mut prog_ns = vec![Vec::new(); cells];
    let mut gain = vec![Vec::new(); FLOODS.len()];
    for _ in 0..runs {
        for (f, flood) in FLOODS.iter().enumerate() {
            let per_pass = if flood.syn_only { 1 } else { 2 } * flood.count;
            let repeats = (frames / per_pass).max(1);
            let mut tc = 0.0;
            for (m, (_, xdp)) in MODES.iter().enumerate() {
                let r = flood_once(flood, xdp, repeats)?;
                let i = f * MODES.len() + m;
                let core = r.dropped / r.softirq.max(1e-3);
                per_core[i].push(core);
                drop_rate[i].push(r.dropped / r.secs);
                softirq_share[i].push(100.0 * r.softirq / r.secs);
                sent_rate[i].push(r.sent / r.secs);
                dropped_share[i].push(100.0 * r.dropped / r.sent.max(1.0));
                prog_ns[i].push(r.prog_ns);
                if m == 0 {
                    tc = core;
                } else {
                    gain[f].push(core / tc.max(1.0));
                }
            }
        }
    }
    let mut rows = Vec::new();
    for (f, flood) in FLOODS.iter().enumerate() {
        for (m, (mode, _)) in MODES.iter().enumerate() {
            let i = f * MODES.len() + m;
            let mut figures = vec![
                (
                    "frames sent/s".into(),
                    Stat::of(sent_rate[i].clone()).show(0),
                ),
                (
                    "dropped %".into(),
                    Stat::of(dropped_share[i].clone()).show(1),
                ),
                ("dropped/s".into(), Stat::of(drop_rate[i].clone()).show(0)),
                (
                    "softirq CPU % (of one core)".into(),
                    Stat::of(softirq_share[i].clone()).show(1),
                ),
                (
                    "dropped per softirq CPU-second".into(),
                    Stat::of(per_core[i].clone()).show(0),
                ),
                (
                    "program ns/packet".into(),
                    Stat::of(prog_ns[i].clone()).show(0),
                ),
            ];
            if m == 1 {
                figures.push((
                    "per-core drop rate × TC only".into(),
                    Stat::of(gain[f].clone()).show(2),
                ));
            }
            rows.push(Row {
                case: format!("{}: {mode}", flood.name),
                figures,
                target: None,
            });
        }
    }
    Ok(Section {
        title: "K3b — floods dropped in TC against native XDP".into(),
        about: format!(
            "A raw-socket sender (`spoof`, AF_PACKET) in a client namespace sends about {frames} frames a flood as fast as its socket takes them to the server's veth, where the daemon drops them with `--xdp off` (TC ingress) or `--xdp native`; {runs} runs, each running both floods in both modes back to back, the ratio taken within the run. veth runs its receive side (XDP, or the skb path and TC) in softirq on the sending CPU, so the machine's softirq time during the flood is the cost of dropping: dropped per softirq CPU-second is the per-core drop rate. The program's own ns/packet come from the kernel's BPF run-time statistics."
        ),
        rows,
        notes: vec![
            "The sender is one thread making one `sendto` a frame, on the same two cores, so the frames offered per second are the sender's limit, not the drop path's: the per-core figure (drops per softirq CPU-second) is the comparison. Softirq time is the whole machine's, other work included.".into(),
        ],
    })
}
