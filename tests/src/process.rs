//! Child processes that cannot outlive the test that started them.

use std::{
    io::Read,
    os::unix::process::CommandExt,
    process::{Child, Command, Output, Stdio},
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

/// Runs a command that must exit by itself (a daemon that should refuse to
/// start, say) and returns its output, whatever its exit status. Still running
/// after `hang_guard`, it is killed and that is an error, with its stderr: the
/// guard keeps a test from hanging, it does not judge speed, so make it generous.
pub fn output_within(cmd: &mut Command, hang_guard: Duration) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    // Drained all along, so a chatty child never blocks on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let exited = wait_for_exit(&mut child, hang_guard);
    if exited.is_err() {
        kill(&mut child);
    }
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    match exited {
        Ok(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        Err(e) => bail!(
            "{cmd:?} kept running ({e}); its stderr: {}",
            String::from_utf8_lossy(&stderr)
        ),
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
