//! Bad input to the real binary: one clear line on stderr and a documented exit code.
//!
//! Each run is inside a network namespace of the test's own: `lo` is that
//! namespace's loopback, the metrics port its own, and `ip netns exec` gives it
//! a mount namespace with a /sys of its own, so the default pin dir (and a bpffs
//! mounted for it) never reach the host. Every case must exit by itself: one
//! still running after a minute (a daemon that started where it should have
//! refused) is killed, with the namespace, and fails the test.

use std::{
    process::{Command, Output},
    time::Duration,
};

use api_guard_tests::{
    daemon::{binary, unprivileged_in},
    netns::Netns,
    process::output_within,
};

/// Keeps a case from hanging; no case comes near it.
const HANG_GUARD: Duration = Duration::from_secs(60);

/// `program` (and its arguments, set by `args`) run in a namespace of its own.
fn in_netns(program: &str, args: impl FnOnce(&mut Command)) -> Output {
    let ns = Netns::new("cli").expect("a network namespace");
    let mut cmd = ns.command(program);
    args(&mut cmd);
    output_within(&mut cmd, HANG_GUARD).expect("api-guard exits")
}

fn api_guard_env(env: &[(&str, &str)], args: &[&str]) -> Output {
    let bin = binary();
    in_netns(bin.to_str().expect("utf-8 path"), |cmd| {
        cmd.args(args).envs(env.iter().copied());
    })
}

fn api_guard(args: &[&str]) -> Output {
    api_guard_env(&[], args)
}

/// Asserts the exit code and that stderr is exactly one line, the documented
/// `api-guard: error: ...`, mentioning `needle`.
fn assert_fails(out: &Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert!(stderr.contains(needle), "{needle:?} not in {stderr:?}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("api-guard: error: "), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing on stdout");
}

#[test]
fn unknown_interface_is_one_line_and_exit_4() {
    let out = api_guard(&["run", "--iface", "no-such-if9", "--port", "8080"]);
    assert_fails(&out, 4, "no network interface named \"no-such-if9\"");
}

#[test]
fn an_interface_without_ethernet_headers_is_refused_not_left_unguarded() {
    // A tun device (WireGuard and ipip are alike: frames start at the IP
    // header), made inside the case's own namespace.
    let bin = binary();
    let script = format!(
        "ip tuntap add dev agt-tun0 mode tun && ip link set agt-tun0 up && exec {} run --iface agt-tun0 --port 8080",
        bin.display()
    );
    let out = in_netns("sh", |cmd| {
        cmd.args(["-c", &script]);
    });
    assert_fails(&out, 4, "interface agt-tun0 has no Ethernet header");
}

#[test]
fn ports_out_of_range_exit_2() {
    for port in ["0", "65536", "http"] {
        let out = api_guard(&["run", "--iface", "lo", "--port", port]);
        assert_fails(&out, 2, "--port");
    }
}

#[test]
fn detector_flags_are_checked_before_anything_is_attached() {
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "--iface", "lo", "--port", "80"];
        args.extend_from_slice(extra);
        api_guard(&args)
    };
    assert_fails(&run(&["--detect", "bola=block"]), 2, "--block-for");
    assert_fails(&run(&["--detect", "bola=maybe"]), 2, "off, log, block");
    assert_fails(&run(&["--detect", "auth=block"]), 2, "--require-auth");
    assert_fails(
        &run(&["--detect-threshold", "bola@orders=5"]),
        2,
        "template",
    );
    assert_fails(&run(&["--detect-window", "5s"]), 2, "at least 1m");
    // A findings log that cannot be read is a clear error, not a panic.
    assert_fails(
        &api_guard(&["report", "--findings-log", "/nonexistent/findings.log"]),
        1,
        "cannot read the findings log",
    );
}

#[test]
fn missing_flags_exit_2() {
    assert_fails(&api_guard(&["run", "--port", "80"]), 2, "--iface");
    assert_fails(&api_guard(&["run", "--iface", "lo"]), 2, "--port");
    assert_fails(
        &api_guard(&[
            "run",
            "--iface",
            "lo",
            "--port",
            "80",
            "--report-every",
            "30",
        ]),
        2,
        "unit",
    );
}

#[test]
fn unprivileged_user_is_refused_with_exit_3() {
    let ns = Netns::new("cli").expect("a network namespace");
    let mut cmd = unprivileged_in(&ns);
    cmd.args(["run", "--iface", "lo", "--port", "8080"]);
    let out = output_within(&mut cmd, HANG_GUARD).expect("setpriv exits");
    assert_fails(&out, 3, "needs root");
}

#[test]
fn bad_policy_flags_exit_2_with_the_reason() {
    let base = ["run", "--iface", "lo", "--port", "8080"];
    for (extra, needle) in [
        (&["--deny", "198.18.0.0/33"][..], "not a network"),
        (&["--allow", "example.com"], "not a network"),
        (&["--rate", "0"], "--rate"),
        (&["--burst", "0", "--rate", "5"], "--burst"),
        (&["--ipv6-prefix", "129"], "--ipv6-prefix"),
        (&["--block-for", "30", "--rate", "5"], "unit"),
        (&["--limit", "198.18.0.0/24=0"], "from 1 to"),
        (&["--on-limit", "explode"], "--on-limit"),
        (
            &["--auth-header", "Authorization:"],
            "not an HTTP header name",
        ),
        (&["--max-clients", "0"], "--max-clients"),
        (&["--unknown-flag"], "unexpected argument '--unknown-flag'"),
    ] {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        assert_fails(&api_guard(&args), 2, needle);
    }
    // Combinations clap cannot see: one line from api-guard itself.
    let mut args = base.to_vec();
    args.extend_from_slice(&["--burst", "5"]);
    let out = api_guard(&args);
    assert_fails(&out, 2, "--burst needs --rate");
}

#[test]
fn flags_read_from_the_environment_and_the_command_line_wins() {
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let mut argv = vec!["run"];
        argv.extend_from_slice(args);
        api_guard_env(env, &argv)
    };
    // Every required flag from the environment: it gets as far as the interface.
    let out = run(
        &[
            ("API_GUARD_IFACE", "no-such-if7"),
            ("API_GUARD_PORT", "80,8080"),
        ],
        &[],
    );
    assert_fails(&out, 4, "no network interface named \"no-such-if7\"");
    // A list's items are each checked.
    let out = run(
        &[("API_GUARD_IFACE", "lo"), ("API_GUARD_PORT", "80,0")],
        &[],
    );
    assert_fails(&out, 2, "--port");
    // A bad value names the variable it came from.
    let out = run(
        &[("API_GUARD_RATE", "lots")],
        &["--iface", "lo", "--port", "80"],
    );
    assert_fails(&out, 2, "--rate");
    // The command line wins over the environment.
    let out = run(
        &[("API_GUARD_IFACE", "lo")],
        &["--iface", "no-such-if6", "--port", "80"],
    );
    assert_fails(&out, 4, "no-such-if6");
    // Booleans take 1/yes/on too: --dry-run from the environment gets as far
    // as the interface.
    let out = run(
        &[("API_GUARD_DRY_RUN", "1")],
        &["--iface", "no-such-if5", "--port", "80"],
    );
    assert_fails(&out, 4, "no-such-if5");
    // Durations with units from the environment too.
    let out = run(
        &[("API_GUARD_HEARTBEAT_TIMEOUT", "1s")],
        &["--iface", "lo", "--port", "80"],
    );
    assert_fails(&out, 2, "at least 2s");
}

#[test]
fn completions_and_man_page_are_generated() {
    let out = api_guard(&["completions", "bash"]);
    assert!(out.status.success());
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(
        script.contains("complete -F _api__guard") && script.contains("--fail-mode"),
        "{script}"
    );
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        assert!(
            api_guard(&["completions", shell]).status.success(),
            "{shell}"
        );
    }
    assert_fails(&api_guard(&["completions", "tcsh"]), 2, "tcsh");

    let out = api_guard(&["man"]);
    assert!(out.status.success());
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.contains(".TH api-guard"), "{page}");
    let run = api_guard(&["man", "run"]);
    assert!(run.status.success());
    let run_page = String::from_utf8_lossy(&run.stdout);
    assert!(
        run_page.contains(".TH api-guard-run") && run_page.contains("fail\\-mode"),
        "{run_page}"
    );
    assert_fails(&api_guard(&["man", "nosuch"]), 2, "no command named");
    assert!(
        page.starts_with(".ie") || page.contains(".TH api-guard"),
        "{page}"
    );
    // man itself renders it, when installed.
    if let Ok(rendered) = Command::new("man")
        .args(["-l", "-"])
        .env("MANWIDTH", "100")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .and_then(|mut man| {
            use std::io::Write as _;
            man.stdin.take().expect("stdin").write_all(&out.stdout)?;
            man.wait_with_output()
        })
        && rendered.status.success()
    {
        let text = String::from_utf8_lossy(&rendered.stdout);
        assert!(text.contains("api-guard"), "{text}");
    }
}

#[test]
fn help_has_examples_and_names_the_environment() {
    let out = api_guard(&["run", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("Examples:"), "{help}");
    assert!(help.contains("[env: API_GUARD_RATE=]"), "{help}");
    assert!(help.contains("--fail-mode"), "{help}");
    for command in [
        "status", "top", "block", "unblock", "limit", "detach", "report",
    ] {
        let out = api_guard(&[command, "--help"]);
        assert!(out.status.success(), "{command}");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains(&format!("Examples:\n  api-guard {command}"))
                || help.contains(&format!(
                    "Examples:\n  systemctl stop api-guard && api-guard {command}"
                )),
            "{command}: {help}"
        );
    }
}

#[test]
fn a_kernel_without_btf_is_one_line_and_exit_4() {
    // The daemon in a mount namespace of its own (private: nothing reaches the
    // host's mounts) where /sys/kernel/btf is an empty tmpfs: to it, the kernel
    // publishes no BTF. The pin dir cannot be made, so a daemon that missed the
    // check would stop there, with another message.
    let out = in_netns("unshare", |cmd| {
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount -t tmpfs none /sys/kernel/btf && exec \"$0\" run --iface lo --port 8080 --pin-dir /proc/api-guard-no-pins",
        ])
        .arg(binary());
    });
    assert_fails(&out, 4, "CONFIG_DEBUG_INFO_BTF");
}

#[test]
fn a_pin_dir_off_bpffs_is_one_line_and_exit_4() {
    let out = api_guard(&[
        "run",
        "--iface",
        "lo",
        "--port",
        "8080",
        "--pin-dir",
        "/proc/api-guard-no-pins",
    ]);
    assert_fails(&out, 4, "is not on a BPF filesystem");
    // It names no mount over the parent (/proc here).
    assert!(!String::from_utf8_lossy(&out.stderr).contains("bpf /proc"));
}

#[test]
fn trusted_hops_with_key_or_route_limits_is_refused_not_half_applied() {
    // The forwarded stage does not run the key stage: such limits would bind
    // direct clients and not the proxy's. Refused before anything attaches.
    let base = [
        "run",
        "--iface",
        "lo",
        "--port",
        "8080",
        "--trusted-proxy",
        "198.18.0.0/24",
        "--trusted-hops",
        "1",
    ];
    for extra in [
        &["--key-header", "X-API-Key", "--key-rate", "5"][..],
        &["--route-limit", "GET /v1/=5"],
    ] {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        assert_fails(&api_guard(&args), 2, "--trusted-hops cannot be combined");
    }
}

#[test]
fn bad_fleet_flags_exit_2_with_the_reason() {
    let base = ["run", "--iface", "lo", "--port", "8080"];
    for (flags, needle) in [
        (&["--fleet", "http://198.18.0.1:6379"][..], "redis://"),
        (&["--fleet", "redis://198.18.0.1:http"], "is not a port"),
        (&["--fleet", "redis://198.18.0.1:6379/x"], "database number"),
        (&["--fleet-rate", "10"], "--fleet"),
        (
            &["--fleet", "redis://198.18.0.1", "--fleet-rate", "0"],
            "rate must be",
        ),
        (
            &["--fleet", "redis://198.18.0.1", "--fleet-rate", "10"],
            "--fleet-hosts",
        ),
        (
            &[
                "--fleet",
                "redis://198.18.0.1",
                "--fleet-rate",
                "100:10",
                "--fleet-hosts",
                "3",
            ],
            "shorter than --fleet-sync",
        ),
        (
            &["--fleet", "redis://198.18.0.1", "--fleet-sync", "1ms"],
            "at least 50ms",
        ),
        (
            &["--fleet", "redis://198.18.0.1", "--fleet-name", "a b"],
            "fleet name",
        ),
        (
            &["--fleet", "redis://198.18.0.1", "--fleet-hosts", "0"],
            "--fleet-hosts",
        ),
        (
            &["--fleet", "redis://198.18.0.1", "--fleet-fallback", "maybe"],
            "--fleet-fallback",
        ),
    ] {
        let mut args = base.to_vec();
        args.extend_from_slice(flags);
        let out = api_guard(&args);
        assert_fails(&out, 2, needle);
    }
}
