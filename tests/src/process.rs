//! Child processes that cannot outlive the test that started them.

use std::{
    os::unix::process::CommandExt,
    process::{Child, Command},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// Makes the kernel kill the child when the thread that spawned it exits, which
/// covers a test process that dies without unwinding (a signal, an abort).
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// Runs a command to completion and returns its stdout; fails with its stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Sends `signal` to a child.
pub fn signal(child: &Child, signal: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; the pid is our own child,
    // not yet reaped, so it cannot name another process.
    unsafe {
        libc::kill(child.id() as libc::pid_t, signal);
    }
}

/// Kills and reaps a child if it still runs.
pub fn kill(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// Waits for a child to exit, up to `timeout`.
pub fn wait_for_exit(child: &mut Child, timeout: Duration) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            bail!("process {} did not exit within {timeout:?}", child.id());
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `ready` every 20 ms until it returns true, up to `timeout`.
pub fn wait_until(
    timeout: Duration,
    what: &str,
    mut ready: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if ready()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}
