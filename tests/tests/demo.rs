//! The demo behind `cargo xtask demo` (tests/src/bin/demo.rs), as CI runs it: a
//! short run with `--check`, which fails unless the abusive client was limited,
//! the good client got every answer and the client without credentials was
//! flagged.

use std::process::Command;

use api_guard_tests::daemon::binary;

#[test]
fn a_short_demo_limits_the_abuser_and_spares_the_good_client() {
    let out = Command::new(env!("CARGO_BIN_EXE_demo"))
        .args(["--seconds", "8", "--check"])
        .env("API_GUARD_BIN", binary())
        .output()
        .expect("cannot run the demo");
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
