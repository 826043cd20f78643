//! The first-contact demo behind `cargo xtask demo`. It builds a small world out of
//! the test harness:
//! - a real nginx serving an API on port 8080 in a server network namespace;
//! - three clients, each in a namespace of its own: a good one (5 requests a
//!   second, with a bearer token), an abusive one (as fast as it can, 50
//!   connections at once) and one without credentials (2 requests a second);
//! - the real daemon guarding the API with a request limit, blocks and
//!   `--require-auth block`.
//!
//! It then shows `api-guard top` live for `--seconds` (60 by default), and at the
//! end what each client saw and what the daemon counted. `--check` turns the run
//! into a test: it fails unless the abusive client was limited, the good client
//! got every answer, and the client without credentials was flagged.
//!
//! Ctrl-C (SIGINT) or SIGTERM stops it early. The signal only sets a flag, so the
//! harness's guards drop normally: every namespace, process, mount and temporary
//! file the demo made is removed either way.

use std::{
    env,
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, IsTerminal as _, Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Stdio},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
        mpsc::{self, RecvTimeoutError},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use api_guard_tests::{
    PREFIX,
    bpffs::LOCK_DIR_ENV,
    client::url,
    daemon::{Daemon, Stopped},
    netns::{Client, Netns},
    process::{die_with_parent, kill},
    prom,
    scenario::{API, Scenario},
};
use serde_json::Value;

const USAGE: &str = "\
Usage: demo [--seconds N] [--check]

A live demo of api-guard: nginx and three clients (good, abusive, without
credentials) in network namespaces, the daemon enforcing its limits, and
`api-guard top` live. Needs root. Ctrl-C stops it and cleans up.

Options:
  --seconds N   how long the clients run [default: 60]
  --check       fail unless the abusive client was limited, the good client got
                every answer and the client without credentials was flagged
  -h, --help    print this help

Environment:
  API_GUARD_BIN  the api-guard binary [default: next to this program]
";

/// The daemon's policy for the demo (the interfaces, port and pin dir are added
/// by the harness).
const POLICY: [&str; 10] = [
    "--rate",
    "20",
    "--burst",
    "40",
    "--block-for",
    "30s",
    "--require-auth",
    "block",
    "--auth-failures",
    "10",
];

/// What the good and the abusive clients send as their credential.
const TOKEN: &str = "demo-token-not-a-secret";

/// Set by SIGINT and SIGTERM; everything polls it.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

extern "C" fn on_signal(_: libc::c_int) {
    // An atomic store is async-signal-safe.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Tells the client threads to stop when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// SIGINT and SIGTERM set `INTERRUPTED` instead of ending the process, so that
/// the guards drop and clean up.
fn catch_signals() -> Result<()> {
    // SIGHUP too: a closed terminal must still clean up.
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction is valid; the handler only stores to an
        // atomic, which is async-signal-safe.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("cannot install a signal handler");
        }
    }
    Ok(())
}

/// The three clients; client `i` of the topology plays `ROLES[i]`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Good,
    Abusive,
    NoCredentials,
}

const ROLES: [Role; 3] = [Role::Good, Role::Abusive, Role::NoCredentials];

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Good => "good",
            Role::Abusive => "abusive",
            Role::NoCredentials => "no credentials",
        }
    }

    fn does(self) -> &'static str {
        match self {
            Role::Good => "5 req/s, bearer token",
            Role::Abusive => "flood, 50 at once, bearer token",
            Role::NoCredentials => "2 req/s, no Authorization",
        }
    }

    fn user_agent(self) -> &'static str {
        match self {
            Role::Good => "demo-good-client/1.0",
            Role::Abusive => "demo-abusive-client/1.0",
            Role::NoCredentials => "demo-anonymous-client/1.0",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Role::Good => "/v1/orders?page=1",
            Role::Abusive => "/v1/search?q=everything",
            Role::NoCredentials => "/v1/items",
        }
    }
}

/// What one client saw of its requests.
#[derive(Clone, Copy, Default)]
struct Tally {
    /// Requests finished (answered, refused or timed out).
    done: u64,
    /// Answered 200.
    ok: u64,
    /// Answered with another status.
    other: u64,
    /// No answer within curl's time limit (dropped packets end this way).
    no_answer: u64,
}

impl Tally {
    fn record(&mut self, codes: &[u16]) {
        for &code in codes {
            self.done += 1;
            match code {
                200 => self.ok += 1,
                0 => self.no_answer += 1,
                _ => self.other += 1,
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Args {
    seconds: u64,
    check: bool,
}

fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<Option<Args>> {
    let mut args = Args {
        seconds: 60,
        check: false,
    };
    while let Some(arg) = argv.next() {
        let seconds = match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--check" => {
                args.check = true;
                continue;
            }
            "--seconds" => argv.next().context("--seconds needs a value")?,
            other => match other.strip_prefix("--seconds=") {
                Some(v) => v.to_string(),
                None => bail!("unknown argument {other:?} (see --help)"),
            },
        };
        args.seconds = seconds
            .parse()
            .ok()
            .filter(|&s| (1..=86_400).contains(&s))
            .with_context(|| format!("--seconds {seconds:?}: expected 1 to 86400"))?;
    }
    Ok(Some(args))
}

enum Outcome {
    Passed,
    Interrupted,
    CheckFailed(Vec<String>),
}

fn main() -> ExitCode {
    // Run by hand, the demo is a real deployment on this host: its daemon takes
    // its lock where the operator commands it prints look (the test suite gives
    // it a lock directory of its own instead).
    if env::var_os(LOCK_DIR_ENV).is_none() {
        // SAFETY: the first thing main does, before any thread exists, so
        // nothing reads the environment meanwhile.
        unsafe { env::set_var(LOCK_DIR_ENV, "/run/api-guard/locks") };
    }
    let args = match parse_args(env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("demo: {e:#}");
            return ExitCode::from(2);
        }
    };
    let result = run(&args);
    // Everything the demo made is gone by now: the guards dropped inside run.
    match result {
        Ok(Outcome::Passed) => ExitCode::SUCCESS,
        Ok(Outcome::Interrupted) => {
            println!("demo: interrupted; everything it started has been removed");
            ExitCode::from(130)
        }
        Ok(Outcome::CheckFailed(failures)) => {
            for f in &failures {
                eprintln!("demo: check failed: {f}");
            }
            ExitCode::FAILURE
        }
        Err(e) if interrupted() => {
            eprintln!("demo: interrupted ({e:#}); everything it started has been removed");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("demo: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The api-guard binary: `API_GUARD_BIN`, or the one next to this program (cargo
/// puts both in target/<profile>/). The harness reads `API_GUARD_BIN`, so it is
/// set here for it.
fn locate_daemon() -> Result<PathBuf> {
    let bin = match env::var_os("API_GUARD_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => env::current_exe()
            .context("cannot find this program's path")?
            .with_file_name("api-guard"),
    };
    ensure!(
        bin.is_file(),
        "no api-guard binary at {} (build it with `cargo build -p api-guard`, or set API_GUARD_BIN)",
        bin.display()
    );
    // SAFETY: called from main before any other thread exists.
    unsafe { env::set_var("API_GUARD_BIN", &bin) };
    Ok(bin)
}

fn run(args: &Args) -> Result<Outcome> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the demo needs root: it makes network namespaces and loads BPF programs (run `cargo xtask demo` as root)"
        );
    }
    let bin = locate_daemon()?;
    catch_signals()?;

    let logs = tempfile::Builder::new()
        .prefix(PREFIX)
        .tempdir()
        .context("cannot make a temporary directory for the access log")?;
    let access_log = logs.path().join("access.log");
    let access_log_arg = access_log.display().to_string();
    let mut flags: Vec<&str> = POLICY.to_vec();
    flags.extend(["--access-log", &access_log_arg, "--report-every", "10s"]);

    println!(
        "demo: starting nginx, {} clients in network namespaces and api-guard ...",
        ROLES.len()
    );
    let scenario = Scenario::start(ROLES.len(), &flags)
        .context("cannot start the demo's namespaces, nginx and daemon")?;
    if interrupted() {
        return Ok(Outcome::Interrupted);
    }

    let pin_dir = scenario.bpffs.pin_dir();
    let header = header(&scenario, &access_log);
    let tallies: [Mutex<Tally>; 3] = Default::default();
    let clients_stop = AtomicBool::new(false);
    let tty = std::io::stdout().is_terminal();
    print!("{header}");
    println!();

    // The clients run on scoped threads that borrow the scene; the live view runs
    // here until the time is up or a signal arrives.
    let started = Instant::now();
    let client_results: Vec<(String, Result<()>)> = thread::scope(|s| {
        let handles: Vec<_> = ROLES
            .iter()
            .zip(&scenario.topo.clients)
            .zip(&tallies)
            .map(|((&role, client), tally)| {
                let stop = &clients_stop;
                let h = s.spawn(move || match role {
                    Role::Good => paced(client, role, 5.0, tally, stop),
                    Role::NoCredentials => paced(client, role, 2.0, tally, stop),
                    Role::Abusive => flood(client, tally, stop),
                });
                (role, h)
            })
            .collect();
        // However the view ends, a panic included, the clients stop: the scope
        // joins them before anything unwinds further.
        let _stop_clients = StopOnDrop(&clients_stop);
        let view = LiveView {
            tty,
            header: &header,
            clients: &scenario.topo.clients,
            tallies: &tallies,
            daemon: &scenario.daemon,
            scrape: &|| scenario.scrape(),
            started,
            seconds: args.seconds,
        };
        let view_result = view.run(&bin, &pin_dir);
        clients_stop.store(true, Ordering::SeqCst);
        let mut results: Vec<(String, Result<()>)> = handles
            .into_iter()
            .map(|(role, h)| {
                let r = h
                    .join()
                    .unwrap_or_else(|_| Err(anyhow!("its thread panicked")));
                (format!("the {} client", role.name()), r)
            })
            .collect();
        results.push(("the live view".to_string(), view_result));
        results
    });

    let was_interrupted = interrupted();
    let ran_for = started.elapsed().as_secs_f64().round() as u64;
    println!();
    println!("demo: stopping the clients and the daemon ...");
    // The daemon's state just before it stops (blocks still in force), and its
    // metrics; both best effort (after Ctrl-C the daemon may be gone already).
    let status: Option<Value> = (!was_interrupted)
        .then(|| scenario.ctl(&["status", "--json"]).ok())
        .flatten()
        .filter(|o| o.status.success())
        .and_then(|o| serde_json::from_slice(&o.stdout).ok());
    let metrics = (!was_interrupted).then(|| scenario.scrape().ok()).flatten();
    let topo_clients: Vec<(String, Role)> = scenario
        .topo
        .clients
        .iter()
        .zip(ROLES)
        .map(|(c, r)| (c.addr4.to_string(), r))
        .collect();
    let (stopped, nginx, topo, bpffs) = scenario.stop().context("cannot stop the daemon")?;
    let served = nginx.access_log().unwrap_or_default();
    let log = read_access_log(&access_log);

    let tallies: Vec<Tally> = tallies.iter().map(|t| *lock(t)).collect();
    let summary = Summary {
        seconds: ran_for,
        clients: &topo_clients,
        tallies: &tallies,
        stopped: &stopped,
        status: status.as_ref(),
        metrics: metrics.as_deref(),
        served: &served,
        log: &log,
    };
    print!("{}", summary.render());

    // Clean up before the verdict, so that a failure message is the last word.
    drop(nginx);
    drop(topo);
    drop(bpffs);
    drop(logs);
    println!(
        "demo: cleaned up: namespaces, nginx, the daemon, its bpffs mount and the access log are gone"
    );

    if was_interrupted {
        return Ok(Outcome::Interrupted);
    }
    let mut failures: Vec<String> = client_results
        .into_iter()
        .filter_map(|(what, r)| r.err().map(|e| format!("{what}: {e:#}")))
        .collect();
    if !stopped.status.success() {
        failures.push(format!(
            "the daemon exited with {}; its log ends with:\n{}",
            stopped.status,
            tail(&stopped.stderr, 10)
        ));
    }
    if !failures.is_empty() {
        return Ok(Outcome::CheckFailed(failures));
    }
    if args.check {
        let failures = summary.check();
        if !failures.is_empty() {
            return Ok(Outcome::CheckFailed(failures));
        }
        println!("demo: check passed");
    }
    Ok(Outcome::Passed)
}

/// The lines above the live view: the policy, who is who, where to look.
fn header(scenario: &Scenario, access_log: &Path) -> String {
    let mut h = String::new();
    let _ = writeln!(
        h,
        "api-guard demo: nginx serves an API on port {API}; api-guard guards it with"
    );
    let _ = writeln!(h, "  {}", POLICY.join(" "));
    let roles: Vec<String> = scenario
        .topo
        .clients
        .iter()
        .zip(ROLES)
        .map(|(c, r)| format!("{} = {}", c.addr4, r.name()))
        .collect();
    let _ = writeln!(h, "clients: {}", roles.join(", "));
    let _ = writeln!(
        h,
        "metrics: ip netns exec {} curl -s http://127.0.0.1:9477/metrics",
        scenario.topo.server.name()
    );
    let _ = writeln!(h, "access log: {}", access_log.display());
    h
}

/// A client sending `per_sec` requests a second, each over a new connection, not
/// waiting for one answer before sending the next. At the end the good client
/// waits for its requests in flight (each must be answered); the other drops
/// them.
fn paced(
    c: &Client,
    role: Role,
    per_sec: f64,
    tally: &Mutex<Tally>,
    stop: &AtomicBool,
) -> Result<()> {
    let target = url(c.server4.into(), API, role.path());
    let finish = role == Role::Good;
    // A blocked client gets no answer: give up on a request after 2 s.
    let max_time = if finish { "5" } else { "2" };
    let period = Duration::from_secs_f64(1.0 / per_sec);
    let mut next = Instant::now();
    let mut flying: Vec<Child> = Vec::new();
    let result = (|| {
        loop {
            let stopping = stop.load(Ordering::SeqCst);
            if !stopping && Instant::now() >= next {
                let mut cmd = curl(&c.ns, role, max_time);
                cmd.arg(&target);
                flying.push(cmd.spawn().context("cannot start curl")?);
                next += period;
            }
            reap(&mut flying, tally)?;
            if stopping && (!finish || interrupted() || flying.is_empty()) {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(10));
        }
    })();
    for child in &mut flying {
        kill(child);
    }
    result
}

/// The abusive client: batches of 50 requests, all at once over new connections,
/// one batch after the other, until told to stop.
fn flood(c: &Client, tally: &Mutex<Tally>, stop: &AtomicBool) -> Result<()> {
    let target = url(c.server4.into(), API, Role::Abusive.path());
    while !stop.load(Ordering::SeqCst) && !interrupted() {
        let mut cmd = curl(&c.ns, Role::Abusive, "2");
        cmd.args([
            "-Z",
            "--parallel-immediate",
            "--parallel-max",
            "50",
            "-H",
            "Connection: close",
        ]);
        for _ in 0..50 {
            cmd.args(["-o", "/dev/null", &target]);
        }
        let mut child = cmd.spawn().context("cannot start curl")?;
        loop {
            if child.try_wait()?.is_some() {
                lock(tally).record(&codes(&mut child));
                break;
            }
            if stop.load(Ordering::SeqCst) {
                // The batch in flight is not counted.
                kill(&mut child);
                return Ok(());
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(())
}

/// curl in the client's namespace, printing each request's status on a line
/// (000 for no answer).
fn curl(ns: &Netns, role: Role, max_time: &str) -> Command {
    let mut cmd = ns.command("curl");
    cmd.args(["-s", "--max-time", max_time, "-A", role.user_agent()])
        .args(["-o", "/dev/null", "-w", "%{http_code}\\n"]);
    if role != Role::NoCredentials {
        cmd.args(["-H", &format!("Authorization: Bearer {TOKEN}")]);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    cmd
}

/// Records the curls that finished.
fn reap(flying: &mut Vec<Child>, tally: &Mutex<Tally>) -> Result<()> {
    let mut i = 0;
    while i < flying.len() {
        if flying[i].try_wait()?.is_some() {
            let mut child = flying.swap_remove(i);
            lock(tally).record(&codes(&mut child));
        } else {
            i += 1;
        }
    }
    Ok(())
}

/// The statuses a finished curl printed (0 for a line that is not one).
fn codes(child: &mut Child) -> Vec<u16> {
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut out);
    }
    out.lines().map(|l| l.trim().parse().unwrap_or(0)).collect()
}

/// `api-guard top` in live mode, its output read line by line on a thread.
struct Top {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Top {
    fn start(bin: &Path, pin_dir: &Path) -> Result<Self> {
        let mut cmd = Command::new(bin);
        cmd.args(["top", "-n", "10", "--interval", "1s", "--pin-dir"])
            .arg(pin_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        die_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot run {} top", bin.display()))?;
        let stdout = child.stdout.take().context("top's stdout")?;
        let stderr_pipe = child.stderr.take().context("top's stderr")?;
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        thread::spawn(move || {
            let mut text = String::new();
            let _ = BufReader::new(stderr_pipe).read_to_string(&mut text);
            *lock(&sink) = text;
        });
        Ok(Self {
            child,
            lines,
            stderr,
        })
    }
}

impl Drop for Top {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// The live view: `api-guard top`'s frames under the demo's header, each client's
/// row marked with its role, then what the clients saw and the daemon's log.
struct LiveView<'a> {
    tty: bool,
    header: &'a str,
    clients: &'a [Client],
    tallies: &'a [Mutex<Tally>; 3],
    daemon: &'a Daemon,
    /// The daemon's metrics, scraped once a frame: the auth checks happen in
    /// the daemon, not in the kernel maps top reads.
    scrape: &'a (dyn Fn() -> Result<String> + Sync),
    started: Instant,
    seconds: u64,
}

impl LiveView<'_> {
    fn run(&self, bin: &Path, pin_dir: &Path) -> Result<()> {
        let mut top = Top::start(bin, pin_dir)?;
        let deadline = self.started + Duration::from_secs(self.seconds);
        let mut frame: Vec<String> = Vec::new();
        let mut log_seen = self.daemon.stderr().lines().count();
        let mut top_gone = false;
        // After the deadline, only the frame being received is finished.
        while !interrupted() && (Instant::now() < deadline || !frame.is_empty()) {
            // top writes a frame at once and then sleeps for its interval: a
            // frame ends where the lines pause (or where the next one begins).
            match top.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    if line.starts_with("api-guard top") && !frame.is_empty() {
                        self.show(&std::mem::take(&mut frame), &mut log_seen);
                    }
                    frame.push(strip_ansi(&line));
                }
                Err(RecvTimeoutError::Timeout) => {
                    if !frame.is_empty() {
                        self.show(&std::mem::take(&mut frame), &mut log_seen);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    frame.clear();
                    // Ctrl-C on a terminal reaches top too: that is no news.
                    if !top_gone && !interrupted() {
                        top_gone = true;
                        let status = top.child.wait().context("cannot wait for top")?;
                        // Give the stderr reader a moment to take the last words.
                        thread::sleep(Duration::from_millis(100));
                        let why = lock(&top.stderr).trim().to_string();
                        println!(
                            "demo: api-guard top exited ({status}){}{why}; the clients keep running",
                            if why.is_empty() { "" } else { ": " }
                        );
                        if !status.success() {
                            bail!("api-guard top exited ({status}): {why}");
                        }
                    }
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
        Ok(())
    }

    fn show(&self, frame: &[String], log_seen: &mut usize) {
        let elapsed = self.started.elapsed().as_secs();
        let mut out = String::new();
        if self.tty {
            // Home, clear, redraw: one write per frame keeps it from flickering.
            out.push_str("\x1b[H\x1b[2J");
            out.push_str(self.header);
            let left = self.seconds.saturating_sub(elapsed);
            let _ = writeln!(out, "{left} s left; Ctrl-C stops the demo and cleans up\n");
        } else {
            let _ = writeln!(out, "--- {elapsed} s of {} ---", self.seconds);
        }
        for line in frame {
            out.push_str(&self.annotate(line));
            out.push('\n');
        }
        out.push('\n');
        out.push_str(&self.client_table());
        out.push_str(&self.auth_line());
        let log = self.daemon.stderr();
        let lines: Vec<&str> = log.lines().collect();
        // On a terminal the last few lines of the daemon's log; in a log file,
        // the lines that are new since the last frame.
        let from = if self.tty {
            lines.len().saturating_sub(3)
        } else {
            (*log_seen).min(lines.len())
        };
        if from < lines.len() {
            out.push_str("daemon log:\n");
            for l in &lines[from..] {
                let _ = writeln!(out, "  {}", short_log_line(l));
            }
        }
        *log_seen = lines.len();
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(out.as_bytes());
        let _ = stdout.flush();
    }

    /// A row of top's table that starts with a client's address, marked with
    /// its role.
    fn annotate(&self, line: &str) -> String {
        for (c, role) in self.clients.iter().zip(ROLES) {
            let addr = c.addr4.to_string();
            if line
                .strip_prefix(&addr)
                .is_some_and(|rest| rest.starts_with(' '))
            {
                return format!("{}  <- {}", line.trim_end(), role.name());
            }
        }
        line.to_string()
    }

    /// The daemon's authentication checks so far, from its metrics.
    fn auth_line(&self) -> String {
        match (self.scrape)() {
            Ok(m) => {
                let metric = |name: &str| prom::value(&m, name, &[]).unwrap_or(0.0);
                format!(
                    "auth: {} requests without credentials, {} clients blocked for it \
                     (api_guard_unauthenticated_requests_total, api_guard_auth_blocks_total)\n",
                    metric("api_guard_unauthenticated_requests_total"),
                    metric("api_guard_auth_blocks_total")
                )
            }
            Err(e) => format!("auth: cannot scrape the metrics: {e:#}\n"),
        }
    }

    /// What each client saw so far.
    fn client_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<12} {:<15} {:<32} {:>8} {:>8} {:>10}",
            "CLIENT", "ROLE", "SENDS", "DONE", "200 OK", "NO ANSWER"
        );
        for ((c, role), tally) in self.clients.iter().zip(ROLES).zip(self.tallies) {
            let t = *lock(tally);
            let _ = writeln!(
                out,
                "{:<12} {:<15} {:<32} {:>8} {:>8} {:>10}{}",
                c.addr4.to_string(),
                role.name(),
                role.does(),
                t.done,
                t.ok,
                t.no_answer,
                if t.other > 0 {
                    format!("  ({} other statuses)", t.other)
                } else {
                    String::new()
                }
            );
        }
        out
    }
}

/// Removes ANSI escape sequences (top writes none into a pipe, but a frame is
/// redrawn by this program, not by top).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(ch) = chars.next() {
        if ch == '\x1b' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}

/// A line of the daemon's log with its timestamp cut to the time of day
/// (`2026-11-28T03:36:43.420235Z WARN ...` → `03:36:43 WARN ...`), at most 160
/// characters.
fn short_log_line(line: &str) -> String {
    let short = match line.split_once(' ') {
        Some((stamp, rest))
            if stamp.len() > 19 && stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T' =>
        {
            format!("{} {}", &stamp[11..19], rest.trim_start())
        }
        _ => line.to_string(),
    };
    short.chars().take(160).collect()
}

/// The last `n` lines of `text`, indented.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("  {l}\n"))
        .collect()
}

/// What the daemon logged for one client.
#[derive(Default)]
struct Logged {
    requests: u64,
    /// Requests whose verdict was not `allowed` (dropped by the kernel).
    dropped: u64,
    /// Requests marked `api_guard.auth.missing`.
    auth_missing: u64,
}

/// The access log, per client address (lines that are not JSON are skipped).
fn read_access_log(path: &Path) -> Vec<(String, Logged)> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let mut per: Vec<(String, Logged)> = Vec::new();
    for v in text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        let Some(client) = v["client.address"].as_str() else {
            continue;
        };
        let i = match per.iter().position(|(c, _)| c == client) {
            Some(i) => i,
            None => {
                per.push((client.to_string(), Logged::default()));
                per.len() - 1
            }
        };
        let l = &mut per[i].1;
        l.requests += 1;
        if v["api_guard.verdict"]
            .as_str()
            .is_some_and(|v| v != "allowed")
        {
            l.dropped += 1;
        }
        if v["api_guard.auth.missing"] == true {
            l.auth_missing += 1;
        }
    }
    per
}

/// The end of the run: what each client saw, what nginx served, what the daemon
/// counted and logged.
struct Summary<'a> {
    seconds: u64,
    clients: &'a [(String, Role)],
    tallies: &'a [Tally],
    stopped: &'a Stopped,
    status: Option<&'a Value>,
    metrics: Option<&'a str>,
    served: &'a [api_guard_tests::nginx::AccessLine],
    log: &'a [(String, Logged)],
}

impl Summary<'_> {
    fn logged(&self, addr: &str) -> Option<&Logged> {
        self.log.iter().find(|(c, _)| c == addr).map(|(_, l)| l)
    }

    fn served(&self, addr: &str) -> usize {
        self.served
            .iter()
            .filter(|l| l.client == addr && l.server_port == API)
            .count()
    }

    /// Seconds left on the client's block when the run ended, if it was blocked:
    /// its own block (over a limit), or a block on its address (the
    /// `--require-auth block` kind).
    fn blocked_at_end(&self, addr: &str) -> Option<Option<u64>> {
        let status = self.status?;
        let own = status["blocked_clients"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|b| b["client"] == addr);
        let host = format!("{addr}/32");
        let net = status["blocked_networks"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|b| b["network"] == addr || b["network"] == host.as_str());
        own.or(net).map(|b| b["remaining_secs"].as_u64())
    }

    fn counter(&self, kind: &str, verdict: &str) -> u64 {
        self.stopped.counter(kind, verdict).unwrap_or(0)
    }

    fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "\n== after {} s ==", self.seconds);
        for ((addr, role), t) in self.clients.iter().zip(self.tallies) {
            let _ = write!(
                out,
                "{:<15} {addr}: sent {}, {} answered 200 OK",
                role.name(),
                t.done,
                t.ok
            );
            if t.no_answer > 0 {
                let _ = write!(out, ", {} unanswered", t.no_answer);
            }
            if t.other > 0 {
                let _ = write!(out, ", {} other statuses", t.other);
            }
            let _ = writeln!(out, "; nginx served {}", self.served(addr));
            let seen = self.stopped.requests_from(addr).unwrap_or(0);
            let _ = write!(out, "{:<15} api-guard saw {seen} request starts", "");
            if let Some(l) = self.logged(addr) {
                let _ = write!(
                    out,
                    ", logged {}: {} dropped, {} without credentials",
                    l.requests, l.dropped, l.auth_missing
                );
            }
            match self.blocked_at_end(addr) {
                Some(Some(left)) => {
                    let _ = write!(out, "; blocked at the end ({left} s left)");
                }
                Some(None) => {
                    let _ = write!(out, "; blocked at the end");
                }
                None => {}
            }
            out.push('\n');
        }
        let verdicts = |kind: &str| -> String {
            ["allowed", "rate_limited", "blocked", "conn_limited"]
                .iter()
                .map(|v| format!("{v}={}", self.counter(kind, v)))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let _ = writeln!(out, "daemon counters, requests: {}", verdicts("requests"));
        let _ = writeln!(out, "daemon counters, packets:  {}", verdicts("packets"));
        if let Some(m) = self.metrics {
            let metric = |name: &str| prom::value(m, name, &[]).unwrap_or(0.0);
            let _ = writeln!(
                out,
                "metrics: api_guard_unauthenticated_requests_total {}, api_guard_auth_blocks_total {}",
                metric("api_guard_unauthenticated_requests_total"),
                metric("api_guard_auth_blocks_total")
            );
        }
        out
    }

    /// `--check`: the abusive client limited, the good one untouched, the one
    /// without credentials flagged. Returns what failed.
    fn check(&self) -> Vec<String> {
        let mut failures = Vec::new();
        let drops = self.counter("packets", "rate_limited") + self.counter("packets", "blocked");
        for ((addr, role), t) in self.clients.iter().zip(self.tallies) {
            let logged = self.logged(addr);
            match role {
                Role::Abusive => {
                    let own = logged.map_or(0, |l| l.dropped);
                    let blocked = self.blocked_at_end(addr).is_some();
                    if drops == 0 || (own == 0 && !blocked) {
                        failures.push(format!(
                            "the abusive client {addr} was not limited: the daemon dropped {drops} packets \
                             (rate_limited + blocked), {own} of its logged requests were dropped, and it was \
                             {}blocked at the end",
                            if blocked { "" } else { "not " }
                        ));
                    } else {
                        println!(
                            "check: abusive client {addr} limited: {own} of its logged requests dropped, \
                             {drops} packets dropped in all{}",
                            if blocked { ", blocked at the end" } else { "" }
                        );
                    }
                }
                Role::Good => {
                    // It sends 5 a second; well under half of that means it barely ran.
                    let expected = self.seconds * 5 / 2;
                    if t.done < expected.max(1) || t.ok != t.done {
                        failures.push(format!(
                            "the good client {addr} sent {} requests (at least {} expected) and {} of them \
                             were answered 200 ({} unanswered, {} other statuses)",
                            t.done,
                            expected.max(1),
                            t.ok,
                            t.no_answer,
                            t.other
                        ));
                    } else {
                        println!(
                            "check: good client {addr} untouched: all {} of its requests answered 200",
                            t.done
                        );
                    }
                }
                Role::NoCredentials => {
                    let missing = logged.map_or(0, |l| l.auth_missing);
                    if missing == 0 {
                        failures.push(format!(
                            "the client without credentials {addr} was not seen as unauthenticated: none of its \
                             {} logged requests is marked api_guard.auth.missing",
                            logged.map_or(0, |l| l.requests)
                        ));
                    } else {
                        println!(
                            "check: client without credentials {addr} flagged: {missing} requests logged \
                             with api_guard.auth.missing"
                        );
                    }
                }
            }
        }
        failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_arguments() {
        let parse = |a: &[&str]| parse_args(a.iter().map(|s| s.to_string()));
        let a = parse(&["--seconds", "8", "--check"]).unwrap().unwrap();
        assert_eq!((a.seconds, a.check), (8, true));
        let a = parse(&["--seconds=15"]).unwrap().unwrap();
        assert_eq!((a.seconds, a.check), (15, false));
        assert_eq!(parse(&[]).unwrap().unwrap().seconds, 60);
        assert!(parse(&["--help"]).unwrap().is_none());
        assert!(parse(&["--seconds", "0"]).is_err());
        assert!(parse(&["--seconds"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
    }

    #[test]
    fn strips_ansi() {
        assert_eq!(strip_ansi("\x1b[2J\x1b[Hapi-guard top"), "api-guard top");
        assert_eq!(strip_ansi("plain"), "plain");
    }

    #[test]
    fn shortens_log_lines() {
        assert_eq!(
            short_log_line("2026-11-28T03:36:43.420235Z  WARN api_guard::sampler: blocked"),
            "03:36:43 WARN api_guard::sampler: blocked"
        );
        assert_eq!(short_log_line("plain line"), "plain line");
        assert_eq!(short_log_line(&"x".repeat(300)).len(), 160);
    }

    #[test]
    fn tallies_statuses() {
        let mut t = Tally::default();
        t.record(&[200, 200, 0, 429]);
        assert_eq!((t.done, t.ok, t.no_answer, t.other), (4, 2, 1, 1));
    }
}
