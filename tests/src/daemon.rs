//! The real `api-guard` binary, started inside a namespace and stopped by signal.

use std::{
    env,
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Child, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{
    netns::Netns,
    process::{kill, signal, wait_for_exit, wait_until},
};

/// The api-guard binary under test: `API_GUARD_BIN` (set by `cargo xtask test`), or
/// the one cargo built next to this test executable.
pub fn binary() -> PathBuf {
    if let Some(bin) = env::var_os("API_GUARD_BIN") {
        return bin.into();
    }
    // target/<profile>/deps/<test> → target/<profile>/api-guard
    let exe = env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("api-guard"))
        .expect("test executable under target/<profile>/deps")
}

/// A running daemon. Killed on drop if not stopped.
pub struct Daemon {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    /// The ingress program's id, from the daemon's ready line.
    pub prog_id: u32,
}

/// What a stopped daemon left behind.
#[derive(Debug)]
pub struct Stopped {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Stopped {
    /// The final report's JSON lines.
    pub fn report(&self) -> Result<Vec<Value>> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).with_context(|| format!("bad report line {l:?}")))
            .collect()
    }

    /// Requests the final report counted for `client` (0 when it is not listed).
    pub fn requests_from(&self, client: &str) -> Result<u64> {
        Ok(self
            .report()?
            .iter()
            .find(|v| v["type"] == "client" && v["client.address"] == client)
            .map_or(0, |v| v["requests"].as_u64().unwrap_or(0)))
    }

    /// A verdict counter from the final report, e.g. ("requests", "allowed").
    pub fn counter(&self, kind: &str, verdict: &str) -> Result<u64> {
        self.report()?
            .iter()
            .find(|v| v["type"] == "counters")
            .and_then(|v| v[kind][verdict].as_u64())
            .context("no counters in the report")
    }
}

impl Daemon {
    /// Starts `api-guard ARGS` in `ns` and waits until it reports ready.
    pub fn start(ns: &Netns, args: &[String]) -> Result<Self> {
        Self::start_wrapped(ns, &[], args)
    }

    /// As [`Self::start`], but through `wrapper`: a program and its arguments
    /// that exec the binary (appended after them), such as `setpriv
    /// --bounding-set=...`. The daemon's pid is then the wrapper's.
    pub fn start_wrapped(ns: &Netns, wrapper: &[&str], args: &[String]) -> Result<Self> {
        let bin = binary();
        let bin = bin.to_str().context("binary path")?;
        let mut cmd = match wrapper {
            [program, rest @ ..] => {
                let mut cmd = ns.command(program);
                cmd.args(rest).arg(bin);
                cmd
            }
            [] => ns.command(bin),
        };
        let mut child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {bin}"))?;
        // Both pipes are drained all along, so a chatty daemon never blocks on them.
        let (stdout, out_reader) = collect(child.stdout.take().context("stdout")?);
        let (stderr, err_reader) = collect(child.stderr.take().context("stderr")?);
        let mut daemon = Self {
            child,
            stdout,
            stderr,
            readers: vec![out_reader, err_reader],
            prog_id: 0,
        };
        // A hang guard, not a deadline: loading and verifying the programs on
        // two cores shared with other work has taken more than 30 s.
        wait_until(Duration::from_secs(120), "api-guard to be ready", || {
            if let Some(status) = daemon.child.try_wait()? {
                thread::sleep(Duration::from_millis(50));
                bail!(
                    "api-guard exited ({status}) before ready: {}",
                    daemon.stderr()
                );
            }
            Ok(daemon.stderr().contains("api-guard ready"))
        })?;
        daemon.prog_id = parse_prog_id(&daemon.stderr()).context("no prog_id in the ready line")?;
        Ok(daemon)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (SIGHUP, say) without waiting for anything.
    pub fn signal(&self, sig: libc::c_int) {
        signal(&self.child, sig);
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Stops the daemon with `sig` (SIGTERM or SIGINT) and collects its output.
    pub fn stop_with(mut self, sig: libc::c_int) -> Result<Stopped> {
        signal(&self.child, sig);
        let status = wait_for_exit(&mut self.child, Duration::from_secs(20))?;
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        Ok(Stopped {
            status,
            stdout: self.stdout.lock().unwrap().clone(),
            stderr: self.stderr(),
        })
    }

    pub fn stop(self) -> Result<Stopped> {
        self.stop_with(libc::SIGTERM)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// Reads a pipe line by line into a shared string, on its own thread.
fn collect(pipe: impl Read + Send + 'static) -> (Arc<Mutex<String>>, JoinHandle<()>) {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    let reader = thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let mut s = sink.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
    (text, reader)
}

fn parse_prog_id(stderr: &str) -> Option<u32> {
    let line = stderr.lines().find(|l| l.contains("api-guard ready"))?;
    // `prog_id=7` in text logs, `"prog_id":7` in JSON ones.
    let rest = &line[line.find("prog_id")? + "prog_id".len()..];
    rest.trim_start_matches(|c: char| !c.is_ascii_digit())
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// setpriv's flags for nobody with no capabilities (dropped before exec).
const NOBODY: [&str; 4] = [
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--inh-caps=-all",
];

/// The api-guard binary run as nobody with no capabilities.
pub fn unprivileged() -> std::process::Command {
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(NOBODY).arg(binary());
    cmd
}

/// As [`unprivileged`], inside `ns`.
pub fn unprivileged_in(ns: &Netns) -> std::process::Command {
    let mut cmd = ns.command("setpriv");
    cmd.args(NOBODY).arg(binary());
    cmd
}

/// Whether program `id` gets unloaded: the kernel frees a detached program from
/// a work queue, not at once. Waits for it, up to a minute (a hang guard: a
/// program still loaded by then is not going away).
pub fn program_unloaded(id: u32) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while program_loaded(id) {
        if std::time::Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
    true
}

/// Whether a BPF program with this id is still loaded.
pub fn program_loaded(id: u32) -> bool {
    std::process::Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
