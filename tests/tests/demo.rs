//! The demo behind `cargo xtask demo` (tests/src/bin/demo.rs), as CI runs it: a
//! short run with `--check`, which fails unless the abusive client was limited,
//! the good client got every answer and the client without credentials was
//! flagged; and a run stopped by Ctrl-C, which must leave nothing behind.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    os::unix::process::CommandExt as _,
    process::{Command, ExitStatus, Stdio},
    sync::{Mutex, mpsc},
    time::{Duration, Instant},
};

use api_guard_tests::{PREFIX, daemon::binary};

struct Run {
    pgid: i32,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// How a test stops the demo.
#[derive(Clone, Copy)]
enum Stop {
    /// Ctrl-C on a terminal: SIGINT to the whole process group, so every
    /// program the demo started gets it too.
    CtrlC,
    /// `kill PID`: SIGTERM to the demo alone, which must stop the rest itself.
    Kill,
}

/// Runs the demo with `args` in a process group of its own, as a terminal
/// would. With `interrupt`, stops it as told once stdout shows a line starting
/// with the given text. A demo still running after two minutes is stuck: it
/// gets SIGTERM (so it still cleans up) and the test fails.
fn demo(args: &[&str], interrupt: Option<(&str, Stop)>) -> Run {
    // One demo at a time: two floods at once on a small machine would judge
    // the machine, not api-guard.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut child = Command::new(env!("CARGO_BIN_EXE_demo"))
        .args(args)
        .env("API_GUARD_BIN", binary())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("cannot run the demo");
    let pgid = child.id() as i32;
    // Drained as it runs, so a chatty demo never blocks on a full pipe.
    let (lines_tx, lines) = mpsc::channel::<String>();
    let stdout_pipe = child.stdout.take().expect("stdout");
    let stdout = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stdout_pipe).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
            let _ = lines_tx.send(line);
        }
        text
    });
    let mut stderr_pipe = child.stderr.take().expect("stderr");
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut interrupt = interrupt;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            // SAFETY: kill on our own child's pid.
            unsafe { libc::kill(pgid, libc::SIGTERM) };
            let _ = child.wait();
            panic!("the demo hung: {}", stderr.join().unwrap_or_default());
        }
        match lines.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if interrupt.is_some_and(|(at, _)| line.starts_with(at)) => {
                let (pid, sig) = match interrupt.take().map(|(_, how)| how) {
                    Some(Stop::CtrlC) => (-pgid, libc::SIGINT),
                    _ => (pgid, libc::SIGTERM),
                };
                // SAFETY: kill on our child, or on the process group it leads.
                unsafe { libc::kill(pid, sig) };
            }
            _ => {}
        }
    };
    let run = Run {
        pgid,
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    };
    println!("{}", run.stdout);
    eprintln!("{}", run.stderr);
    run
}

#[test]
fn a_short_demo_limits_the_abuser_and_spares_the_good_client() {
    let out = demo(&["--seconds", "8", "--check"], None);
    assert!(
        out.status.success(),
        "the demo failed ({}): {}",
        out.status,
        out.stderr
    );
    // The header names each client's role by address.
    for (addr, role) in [
        ("198.18.0.2", "good"),
        ("198.18.1.2", "abusive"),
        ("198.18.2.2", "no credentials"),
    ] {
        assert!(
            out.stdout.contains(&format!("{addr} = {role}")),
            "the demo's output does not name {addr} as the {role} client"
        );
    }
    assert!(
        out.stdout.contains("demo: check passed"),
        "no check verdict"
    );
    // The live view is api-guard top's, one frame a second, with the auth
    // misses under it.
    assert!(
        out.stdout.contains("api-guard top:"),
        "no frame of api-guard top"
    );
    let misses = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("auth: "))
        .filter_map(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .fold(0.0, f64::max);
    assert!(
        misses > 0.0,
        "no frame counted a request without credentials"
    );
}

#[test]
fn ctrl_c_stops_the_demo_and_it_cleans_up() {
    stopped_early_leaves_nothing(Stop::CtrlC);
}

#[test]
fn a_killed_demo_stops_what_it_started_and_cleans_up() {
    stopped_early_leaves_nothing(Stop::Kill);
}

fn stopped_early_leaves_nothing(how: Stop) {
    let out = demo(&["--seconds", "60"], Some(("api-guard top:", how)));
    assert_eq!(out.status.code(), Some(130), "interrupted: {}", out.stderr);
    assert!(
        (out.stdout.clone() + &out.stderr).contains("everything it started has been removed"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    // Its namespaces (named after its pid) are gone, and so is every process
    // of its group (daemon, top, nginx, clients); the harness's leftover sweep
    // after the suite looks for mounts and programs.
    let mine = format!("{PREFIX}{}-", out_pid(&out.stdout));
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let netns = String::from_utf8_lossy(&netns.stdout);
    assert!(!netns.contains(&mine), "namespaces left: {netns}");
    // A hang guard, not a deadline: the group is already dying.
    let deadline = Instant::now() + Duration::from_secs(60);
    // SAFETY: signal 0 only asks whether any process of the group is left.
    while unsafe { libc::kill(-out.pgid, 0) } == 0 {
        assert!(
            Instant::now() < deadline,
            "processes of the demo's group are left"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The pid the demo's namespaces are named after, from its header line.
fn out_pid(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("metrics: ip netns exec "))
        .and_then(|rest| rest.strip_prefix(PREFIX))
        .and_then(|rest| rest.split('-').next())
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no namespace name in the demo's header: {stdout}"))
}
