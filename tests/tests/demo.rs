//! The demo behind `cargo xtask demo` (tests/src/bin/demo.rs), as CI runs it: a
//! short run with `--check`, which fails unless the abusive client was limited,
//! the good client got every answer and the client without credentials was
//! flagged.

use std::{
    io::Read as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use api_guard_tests::daemon::binary;

#[test]
fn a_short_demo_limits_the_abuser_and_spares_the_good_client() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_demo"))
        .args(["--seconds", "8", "--check"])
        .env("API_GUARD_BIN", binary())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run the demo");
    // Drained as it runs, so a chatty demo never blocks on a full pipe.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    // An 8-second demo that runs for two minutes is stuck: stop it (SIGTERM, so
    // it still cleans up) and fail.
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            // SAFETY: kill on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
            panic!("the demo hung: {}", stderr.join().unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = std::process::Output {
        status,
        stdout: stdout.join().unwrap_or_default().into_bytes(),
        stderr: stderr.join().unwrap_or_default().into_bytes(),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "the demo failed ({}): {stderr}",
        out.status
    );
    // The header names each client's role by address.
    for (addr, role) in [
        ("198.18.0.2", "good"),
        ("198.18.1.2", "abusive"),
        ("198.18.2.2", "no credentials"),
    ] {
        assert!(
            stdout.contains(&format!("{addr} = {role}")),
            "the demo's output does not name {addr} as the {role} client"
        );
    }
    assert!(stdout.contains("demo: check passed"), "no check verdict");
    // The live view is api-guard top's, one frame a second.
    assert!(
        stdout.contains("api-guard top:"),
        "no frame of api-guard top"
    );
}
