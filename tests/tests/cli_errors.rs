//! Bad input to the real binary: one clear line on stderr and a documented exit code.

use std::process::{Command, Output};

use api_guard_tests::daemon::{binary, unprivileged};

fn api_guard(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .output()
        .expect("run api-guard")
}

/// Asserts the exit code and that stderr is exactly one line mentioning `needle`.
fn assert_fails(out: &Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert!(stderr.contains(needle), "{needle:?} not in {stderr:?}");
    assert!(out.stdout.is_empty(), "nothing on stdout");
}

#[test]
fn unknown_interface_is_one_line_and_exit_4() {
    let out = api_guard(&["run", "--iface", "no-such-if9", "--port", "8080"]);
    assert_fails(&out, 4, "no network interface named \"no-such-if9\"");
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
}

#[test]
fn ports_out_of_range_exit_2() {
    for port in ["0", "65536", "http"] {
        let out = api_guard(&["run", "--iface", "lo", "--port", port]);
        assert_fails(&out, 2, "--port");
    }
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
    let out = unprivileged()
        .args(["run", "--iface", "lo", "--port", "8080"])
        .output()
        .expect("run setpriv");
    assert_fails(&out, 3, "needs root");
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
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
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
}
