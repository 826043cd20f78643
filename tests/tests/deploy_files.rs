//! The deployment files against the real daemon: the systemd unit (verified by
//! systemd-analyze, booted under a real systemd, its capability set proved
//! enough and each capability in it proved needed), the Kubernetes DaemonSet
//! (same capabilities, mounts, metrics), the Prometheus configuration and rules
//! (promtool) and the Grafana dashboard (every query names metrics a real
//! daemon exports, and parses).

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use api_guard_tests::{
    PREFIX,
    bpffs::BpfFs,
    cgroup::TestCgroup,
    client::{Connections, Opts, burst, curl, url},
    daemon::binary,
    deploy::{
        DAEMONSET, DASHBOARD, ENV_FILE, PROMETHEUS, PROMETHEUS_K8S, RULES, RULES_TEST, UNIT,
        dashboard_exprs, metric_names, read, repo, with_grafana_vars,
    },
    netns::Topology,
    nginx::Nginx,
    process::{output_within, run, wait_until},
    prom,
    scenario::{API, Scenario},
    systemd::{HOST_DIR, SYSTEMD, Systemd},
};
use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;

// ---------------------------------------------------------------------------
// The unit file and capabilities

/// Every value of `key=` in the unit, in order (lines may repeat a key).
fn directive(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(&format!("{key}=")))
        .map(str::to_string)
        .collect()
}

/// The unit's CapabilityBoundingSet, e.g. ["CAP_BPF", "CAP_NET_ADMIN", ...].
fn unit_caps() -> Result<BTreeSet<String>> {
    let unit = read(UNIT)?;
    let bounding = directive(&unit, "CapabilityBoundingSet");
    ensure!(bounding.len() == 1, "one CapabilityBoundingSet= line");
    let caps: BTreeSet<String> = bounding[0].split_whitespace().map(str::to_string).collect();
    let ambient: BTreeSet<String> = directive(&unit, "AmbientCapabilities")
        .iter()
        .flat_map(|l| l.split_whitespace().map(str::to_string))
        .collect();
    ensure!(
        ambient == caps,
        "AmbientCapabilities {ambient:?} != {caps:?}"
    );
    Ok(caps)
}

/// capabilities(7) numbers.
const CAP_NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

fn cap_mask<'a>(caps: impl IntoIterator<Item = &'a String>) -> Result<u64> {
    let mut mask = 0;
    for cap in caps {
        let name = cap.strip_prefix("CAP_").context("a CAP_ name")?;
        let bit = CAP_NAMES
            .iter()
            .position(|n| *n == name)
            .with_context(|| format!("unknown capability {cap}"))?;
        mask |= 1u64 << bit;
    }
    Ok(mask)
}

/// setpriv's flags for root's uid with only `caps`: the bounding set limits
/// what root gets at exec, and no inheritable (so no ambient) capability.
fn setpriv<'a>(caps: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    let list: Vec<String> = caps
        .into_iter()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    vec![
        "setpriv".into(),
        format!("--bounding-set=-all,{}", list.join(",")),
        "--inh-caps=-all".into(),
    ]
}

/// A capability set ("CapEff", "CapBnd" ...) from a /proc/PID/status text.
fn caps_in(status: &str, field: &str) -> Result<u64> {
    Ok(u64::from_str_radix(&field_in(status, field)?, 16)?)
}

fn field_in(status: &str, field: &str) -> Result<String> {
    Ok(status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .with_context(|| format!("no {field} in {status}"))?
        .trim()
        .to_string())
}

fn proc_caps(pid: u32, field: &str) -> Result<u64> {
    caps_in(&fs::read_to_string(format!("/proc/{pid}/status"))?, field)
}

#[test]
fn systemd_analyze_verifies_the_unit() -> Result<()> {
    // `cargo xtask setup` installs systemd: its absence is a failure, not a skip.
    let analyze = which("systemd-analyze")
        .context("systemd-analyze is not installed (cargo xtask setup installs it)")?;
    // The unit as installed, but with ExecStart= naming the binary under test
    // (verify checks that the executable exists).
    let dir = tempfile::Builder::new().prefix(PREFIX).tempdir()?;
    let unit = read(UNIT)?;
    assert_eq!(
        directive(&unit, "ExecStart"),
        ["/usr/local/bin/api-guard run"],
        "the unit runs the installed daemon with flags from its environment"
    );
    let bin = binary();
    let path = dir.path().join("api-guard.service");
    fs::write(
        &path,
        unit.replace("/usr/local/bin/api-guard", bin.to_str().context("path")?),
    )?;
    let out = Command::new(&analyze).arg("verify").arg(&path).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    assert!(
        !stderr.contains("api-guard.service"),
        "systemd-analyze verify warns: {stderr}"
    );

    // The sandbox: systemd's own exposure score (0 is the most locked down, 10
    // the least) stays at 2.5 or below.
    let out = Command::new(&analyze)
        .args(["security", "--offline=true", "--threshold=25"])
        .arg(&path)
        .output()?;
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exposure above 2.5: {}",
        report.lines().last().unwrap_or_default()
    );

    // Exit codes 2, 3 and 4 would fail the same way again: no restart.
    assert_eq!(directive(&unit, "Restart"), ["on-failure"]);
    assert_eq!(directive(&unit, "RestartPreventExitStatus"), ["2 3 4"]);
    assert_eq!(
        directive(&unit, "EnvironmentFile"),
        ["/etc/default/api-guard"]
    );
    Ok(())
}

/// The daemon with exactly the unit's capabilities (root's uid, bounding set
/// cut down to them, as systemd does) loads, attaches its ingress program and
/// its connection tracker, and enforces a request limit.
#[test]
fn the_units_capabilities_are_enough_to_run_and_enforce() -> Result<()> {
    let caps = unit_caps()?;
    assert!(
        !caps.contains("CAP_SYS_ADMIN"),
        "CAP_SYS_ADMIN would make CAP_BPF and CAP_PERFMON moot"
    );
    let mask = cap_mask(&caps)?;
    let wrapper = setpriv(&caps);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    // The connection tracker goes on nginx's cgroup (the scene's --cgroup).
    let s = Scenario::start_wrapped(
        1,
        &wrapper,
        &["--rate", "5", "--burst", "5", "--max-conns", "50"],
    )?;
    // setpriv exec'd the daemon: one pid.
    let pid = s.daemon.pid();
    assert_eq!(
        fs::read_to_string(format!("/proc/{pid}/comm"))?.trim(),
        "api-guard"
    );
    assert_eq!(proc_caps(pid, "CapEff")?, mask, "effective capabilities");
    assert_eq!(proc_caps(pid, "CapBnd")?, mask, "bounding set");
    assert_eq!(proc_caps(pid, "CapAmb")?, 0, "ambient");

    let client = s.client(0);
    let ok = burst(client, None, 30, Duration::from_secs(2))?;
    assert!(
        (5..30).contains(&ok),
        "{ok} of 30 answered under --rate 5 --burst 5"
    );
    let metrics = s.scrape()?;
    let limited = prom::value(
        &metrics,
        "api_guard_requests_total",
        &[("verdict", "rate_limited")],
    )
    .context("no rate_limited series")?;
    assert!(limited > 0.0, "{metrics}");

    let (stopped, ..) = s.stop()?;
    assert!(stopped.status.success(), "{stopped:?}");
    assert!(stopped.counter("requests", "rate_limited")? > 0);
    Ok(())
}

/// Runs `api-guard run` in `ns` through `wrapper` and waits for it to exit,
/// killing it (and failing) if it is still running after 60 s.
fn run_until_exit(topo: &Topology, wrapper: &[String], args: &[&str]) -> Result<Output> {
    let mut cmd = topo.server.command(&wrapper[0]);
    cmd.args(&wrapper[1..]).arg(binary()).arg("run").args(args);
    output_within(&mut cmd, Duration::from_secs(60))
}

/// Each capability of the unit is asked for: without any one of them the daemon
/// refuses to start, with exit code 3 or 4 and one clear line naming it. (That
/// the kernel itself refuses the programs without CAP_BPF or CAP_PERFMON, which
/// is why the daemon asks, is shown in kernel_testrun.rs.)
#[test]
fn each_capability_of_the_unit_is_needed() -> Result<()> {
    let caps = unit_caps()?;
    let topo = Topology::new(1)?;
    // The connection tracker's cgroup: the test's own, not the host's root.
    let cgroup = TestCgroup::new("caps")?;
    let cgroup_dir = cgroup.path().to_str().context("cgroup path")?;
    for missing in &caps {
        let bpffs = BpfFs::mount()?;
        let pin_dir = bpffs.pin_dir();
        let rest: Vec<&String> = caps.iter().filter(|c| *c != missing).collect();
        let out = run_until_exit(
            &topo,
            &setpriv(rest),
            &[
                "--iface",
                &topo.server_ifaces[0],
                "--port",
                "8080",
                "--pin-dir",
                pin_dir.to_str().context("path")?,
                "--max-conns",
                "50",
                "--cgroup",
                cgroup_dir,
            ],
        )?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let code = out.status.code();
        assert!(
            matches!(code, Some(3 | 4)),
            "without {missing}: exit {code:?}: {stderr}"
        );
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("api-guard: error:"))
            .collect();
        assert_eq!(errors.len(), 1, "without {missing}: {stderr}");
        // The line says what is missing: the capability, or the kernel's refusal.
        let line = errors[0];
        let name = missing.trim_start_matches("CAP_");
        assert!(
            line.contains(name) || line.contains("Permission denied"),
            "without {missing}: {line}"
        );
    }

    // Without CAP_SYS_ADMIN the daemon cannot mount cgroup v2 itself: with
    // none in sight (unmounted in the daemon's own mount namespace, which `ip
    // netns exec` made) --max-conns fails with exit 4. That is why the unit
    // relies on systemd's mounts. /run is a tmpfs of that mount namespace, so
    // the mount point the daemon makes there never reaches the host's /run.
    let bpffs = BpfFs::mount()?;
    let mut wrapper: Vec<String> = [
        "sh",
        "-c",
        "mount -t tmpfs agt-run /run && awk '$3 == \"cgroup2\" { print $2 }' /proc/mounts | while read -r m; do umount -l \"$m\"; done; exec \"$@\"",
        "sh",
    ]
    .map(String::from)
    .to_vec();
    wrapper.extend(setpriv(&caps));
    let out = run_until_exit(
        &topo,
        &wrapper,
        &[
            "--iface",
            &topo.server_ifaces[0],
            "--port",
            "8080",
            "--pin-dir",
            bpffs.pin_dir().to_str().context("path")?,
            "--max-conns",
            "50",
        ],
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("cgroup v2"), "{stderr}");
    Ok(())
}

// ---------------------------------------------------------------------------
// The unit under a real systemd

/// The shipped environment file with `values` set (uncommented or added).
fn env_file_with(values: &[(&str, &str)]) -> Result<String> {
    let mut lines: Vec<String> = read(ENV_FILE)?.lines().map(str::to_string).collect();
    for (key, value) in values {
        let line = format!("{key}={value}");
        match lines
            .iter()
            .position(|l| l.trim_start_matches('#').starts_with(&format!("{key}=")))
        {
            Some(i) => lines[i] = line,
            None => lines.push(line),
        }
    }
    Ok(lines.join("\n") + "\n")
}

/// Boots systemd in the server namespace with the shipped unit, `env` as
/// /etc/default/api-guard and the binary under test at /usr/local/bin. The one
/// addition, a drop-in, sends the daemon's stdout and stderr to files the test
/// reads ([`Systemd::host_file`]).
fn boot_with(topo: &Topology, env: &str) -> Result<Systemd> {
    let unit = read(UNIT)?;
    let output = format!(
        "[Service]\nStandardOutput=append:{HOST_DIR}/stdout\nStandardError=append:{HOST_DIR}/stderr\n"
    );
    Systemd::boot(
        &topo.server,
        &[
            ("/etc/systemd/system/api-guard.service", &unit),
            (
                "/etc/systemd/system/api-guard.service.d/test-output.conf",
                &output,
            ),
            ("/etc/default/api-guard", env),
        ],
        &[("/usr/local/bin/api-guard", &binary())],
    )
}

/// The shipped unit, its environment file and the daemon, as systemd runs them:
/// sandboxed, with the unit's capabilities only, enforcing, reloading its log,
/// restarted after a crash, stopped cleanly; and not restarted after exit 4.
#[test]
fn the_unit_runs_the_daemon_under_systemd() -> Result<()> {
    anyhow::ensure!(
        Path::new(SYSTEMD).exists(),
        "{SYSTEMD} is not installed (cargo xtask setup installs systemd)"
    );
    // The booted systemd gets a machine id generated in its own mount
    // namespace, whether or not the host has one; the host's stays as it was.
    let host_machine_id = fs::read_to_string("/etc/machine-id").ok();
    let topo = Topology::new(1)?;
    let _nginx = Nginx::start(&topo.server, &[API])?;
    let env = env_file_with(&[
        ("API_GUARD_IFACE", &topo.server_ifaces[0]),
        ("API_GUARD_PORT", &API.to_string()),
        ("API_GUARD_RATE", "5"),
        ("API_GUARD_BURST", "5"),
        ("API_GUARD_MAX_CONNS", "50"),
        ("API_GUARD_ACCESS_LOG", "/var/log/api-guard/access.log"),
        ("API_GUARD_REPORT_EVERY", "0"),
    ])?;
    let sd = boot_with(&topo, &env)?;
    let machine_id = run(sd.command("cat").arg("/etc/machine-id"))?;
    let machine_id = machine_id.trim();
    assert!(
        machine_id.len() == 32 && machine_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{machine_id:?}"
    );
    assert_ne!(
        Some(machine_id),
        host_machine_id.as_deref().map(str::trim),
        "systemd's own machine id, not the host's"
    );
    let stderr = || fs::read_to_string(sd.host_file("stderr")).unwrap_or_default();
    let ready_count = || stderr().matches("api-guard ready").count();

    sd.ctl(&["start", "api-guard"])?;
    wait_until(Duration::from_secs(20), "the service to be ready", || {
        ensure!(
            sd.property("api-guard", "ActiveState")? != "failed",
            "the service failed: {}",
            stderr()
        );
        Ok(ready_count() == 1)
    })?;
    // MainPID is a pid in systemd's PID namespace: read its status there.
    let pid = sd.property("api-guard", "MainPID")?;
    let status = run(sd.command("cat").arg(format!("/proc/{pid}/status")))?;
    assert_eq!(field_in(&status, "Name")?, "api-guard");
    let caps = unit_caps()?;
    assert_eq!(caps_in(&status, "CapEff")?, cap_mask(&caps)?, "effective");
    assert_eq!(caps_in(&status, "CapBnd")?, cap_mask(&caps)?, "bounding");
    assert_eq!(field_in(&status, "NoNewPrivs")?, "1");
    assert_eq!(field_in(&status, "Seccomp")?, "2", "a seccomp filter");

    // Enforcing: a burst over the limit loses requests; the loopback scrape
    // passes IPAddressAllow=localhost.
    let client = &topo.clients[0];
    let ok = burst(client, None, 30, Duration::from_secs(2))?;
    assert!(
        (5..30).contains(&ok),
        "{ok} of 30 answered under --rate 5 --burst 5"
    );
    let metrics = topo.server.exec(
        "curl",
        &["-sS", "--max-time", "10", "http://127.0.0.1:9477/metrics"],
    )?;
    let limited = prom::value(
        &metrics,
        "api_guard_requests_total",
        &[("verdict", "rate_limited")],
    );
    assert!(limited.is_some_and(|v| v > 0.0), "{metrics}");

    // The access log lands in the logs directory; reload reopens it.
    let log_lines = |sd: &Systemd| -> Result<usize> {
        Ok(run(sd.command("cat").arg("/var/log/api-guard/access.log"))?
            .lines()
            .count())
    };
    wait_until(Duration::from_secs(5), "the access log", || {
        Ok(log_lines(&sd).unwrap_or(0) >= ok)
    })?;
    sd.ctl(&["reload", "api-guard"])?;
    wait_until(Duration::from_secs(5), "SIGHUP to be handled", || {
        Ok(stderr().contains("SIGHUP"))
    })?;

    // A crash (SIGKILL) is restarted after RestartSec, and the new daemon
    // adopts the pinned state.
    sd.ctl(&["kill", "-s", "KILL", "api-guard"])?;
    wait_until(Duration::from_secs(15), "the restart", || {
        Ok(ready_count() == 2)
    })?;
    assert_eq!(sd.property("api-guard", "NRestarts")?, "1");
    assert!(
        stderr().contains("adopted the pinned state"),
        "{}",
        stderr()
    );

    // A stop is clean: exit 0 and the final report on stdout.
    sd.ctl(&["stop", "api-guard"])?;
    assert_eq!(sd.property("api-guard", "Result")?, "success");
    assert_eq!(sd.property("api-guard", "ExecMainStatus")?, "0");
    let stdout = fs::read_to_string(sd.host_file("stdout"))?;
    assert!(
        stdout.lines().any(|l| l.contains("\"type\":\"counters\"")),
        "{stdout}"
    );
    drop(sd);

    // Exit code 4 (no such interface) is not restarted.
    let env = env_file_with(&[
        ("API_GUARD_IFACE", "agt-nosuch0"),
        ("API_GUARD_PORT", &API.to_string()),
    ])?;
    let sd = boot_with(&topo, &env)?;
    sd.ctl(&["start", "api-guard"]).ok();
    wait_until(Duration::from_secs(10), "the service to fail", || {
        Ok(sd.property("api-guard", "ActiveState")? == "failed")
    })?;
    assert_eq!(sd.property("api-guard", "ExecMainStatus")?, "4");
    let restart_sec: u64 = directive(&read(UNIT)?, "RestartSec")[0].parse()?;
    thread::sleep(Duration::from_secs(restart_sec + 1));
    assert_eq!(sd.property("api-guard", "NRestarts")?, "0");
    assert_eq!(sd.property("api-guard", "ActiveState")?, "failed");
    let stderr = fs::read_to_string(sd.host_file("stderr"))?;
    assert!(stderr.contains("agt-nosuch0"), "{stderr}");
    drop(sd);
    assert_eq!(
        fs::read_to_string("/etc/machine-id").ok(),
        host_machine_id,
        "the host's /etc/machine-id is untouched"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Flags named by the environment files

/// The long flags of `api-guard run`, from its help.
fn run_flags() -> Result<BTreeSet<String>> {
    let help = run(Command::new(binary()).args(["run", "--help"]))?;
    Ok(help
        .split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == '(')
        .filter_map(|w| w.strip_prefix("--"))
        .map(|w| {
            w.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .filter(|w| !w.is_empty())
        .collect())
}

/// API_GUARD_MAX_CLIENTS → max-clients.
fn flag_of(var: &str) -> Option<String> {
    Some(
        var.strip_prefix("API_GUARD_")?
            .to_lowercase()
            .replace('_', "-"),
    )
}

#[test]
fn environment_files_name_real_flags() -> Result<()> {
    let flags = run_flags()?;
    assert!(
        flags.contains("max-clients") && flags.contains("iface"),
        "{flags:?}"
    );

    // The example environment file: every variable, set or commented.
    let mut named = BTreeSet::new();
    for line in read(ENV_FILE)?.lines() {
        let line = line.trim_start_matches('#');
        if let Some((key, _)) = line.split_once('=')
            && key.starts_with("API_GUARD_")
        {
            let flag = flag_of(key).context("a variable")?;
            assert!(flags.contains(&flag), "{ENV_FILE}: {key}: no --{flag}");
            named.insert(flag);
        }
    }
    // It documents every flag of `run` (but --help).
    for flag in &flags {
        assert!(
            flag == "help" || named.contains(flag),
            "{ENV_FILE} does not mention API_GUARD_{}",
            flag.to_uppercase().replace('-', "_")
        );
    }

    // The DaemonSet's ConfigMap and container environment.
    for (key, _) in configmap_data()? {
        let flag = flag_of(&key).with_context(|| format!("ConfigMap key {key}"))?;
        assert!(flags.contains(&flag), "ConfigMap {key}: no --{flag}");
    }
    for env in container()?["env"].as_sequence().context("env")? {
        let key = env["name"].as_str().context("name")?;
        if let Some(flag) = flag_of(key) {
            assert!(flags.contains(&flag), "env {key}: no --{flag}");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Kubernetes

fn k8s_docs() -> Result<Vec<Yaml>> {
    read(DAEMONSET)?
        .split("\n---\n")
        .map(|d| Ok(serde_yaml_ng::from_str(d)?))
        .collect()
}

fn doc(kind: &str) -> Result<Yaml> {
    k8s_docs()?
        .into_iter()
        .find(|d| d["kind"] == kind)
        .with_context(|| format!("no {kind} in {DAEMONSET}"))
}

fn container() -> Result<Yaml> {
    let ds = doc("DaemonSet")?;
    let containers = ds["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .context("containers")?;
    ensure!(containers.len() == 1, "one container");
    Ok(containers[0].clone())
}

fn configmap_data() -> Result<Vec<(String, String)>> {
    let cm = doc("ConfigMap")?;
    cm["data"]
        .as_mapping()
        .context("ConfigMap data")?
        .iter()
        .map(|(k, v)| {
            Ok((
                k.as_str().context("key")?.to_string(),
                v.as_str().context("a string value")?.to_string(),
            ))
        })
        .collect()
}

fn strs(v: &Yaml) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_daemonset_matches_the_unit() -> Result<()> {
    let docs = k8s_docs()?;
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        ["Namespace", "ServiceAccount", "ConfigMap", "DaemonSet"]
    );
    let ns = doc("Namespace")?["metadata"]["name"].clone();
    for d in &docs[1..] {
        assert_eq!(d["metadata"]["namespace"], ns, "{:?}", d["kind"]);
    }

    let ds = doc("DaemonSet")?;
    assert_eq!(ds["apiVersion"], "apps/v1");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(
        spec["hostNetwork"],
        Yaml::Bool(true),
        "the node's interfaces"
    );
    assert_ne!(
        spec["hostPID"],
        Yaml::Bool(true),
        "no need for the host's PIDs"
    );
    let selector = &ds["spec"]["selector"]["matchLabels"];
    for (k, v) in selector.as_mapping().context("selector")? {
        assert_eq!(&ds["spec"]["template"]["metadata"]["labels"][k], v);
    }

    let c = container()?;
    assert_eq!(strs(&c["command"]), ["/usr/local/bin/api-guard", "run"]);
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], Yaml::Bool(false));
    assert_eq!(sc["allowPrivilegeEscalation"], Yaml::Bool(false));
    assert_eq!(strs(&sc["capabilities"]["drop"]), ["ALL"]);
    let k8s_caps: BTreeSet<String> = strs(&sc["capabilities"]["add"])
        .into_iter()
        .map(|c| format!("CAP_{c}"))
        .collect();
    assert_eq!(k8s_caps, unit_caps()?, "the same capabilities as the unit");

    // Volumes: the host's bpffs at /sys/fs/bpf (the pins outlive the pod),
    // the host's cgroup v2 root, the pin-dir locks.
    let volumes = spec["volumes"].as_sequence().context("volumes")?;
    let host_path = |name: &Yaml| -> Option<String> {
        volumes
            .iter()
            .find(|v| &v["name"] == name)
            .and_then(|v| v["hostPath"]["path"].as_str().map(str::to_string))
    };
    let mounts = c["volumeMounts"].as_sequence().context("volumeMounts")?;
    let mount_of = |host: &str| -> Option<&Yaml> {
        mounts
            .iter()
            .find(|m| host_path(&m["name"]).as_deref() == Some(host))
    };
    let bpf = mount_of("/sys/fs/bpf").context("no /sys/fs/bpf volume")?;
    assert_eq!(
        bpf["mountPath"], "/sys/fs/bpf",
        "the default --pin-dir's parent"
    );
    assert!(bpf["readOnly"] != Yaml::Bool(true));
    // Bidirectional propagation is refused for unprivileged containers; the
    // host's mount shows through with HostToContainer.
    assert_eq!(bpf["mountPropagation"], "HostToContainer");
    let cgroup = mount_of("/sys/fs/cgroup").context("no /sys/fs/cgroup volume")?;
    let cgroup_path = cgroup["mountPath"].as_str().context("mountPath")?;
    let data = configmap_data()?;
    let flag = |key: &str| data.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    assert_eq!(
        flag("API_GUARD_CGROUP").as_deref(),
        Some(cgroup_path),
        "--cgroup names the host's cgroup root as mounted"
    );
    let run_mount = mount_of("/run/api-guard").context("no /run/api-guard volume")?;
    assert_eq!(run_mount["mountPath"], "/run/api-guard");
    assert!(flag("API_GUARD_IFACE").is_some() && flag("API_GUARD_PORT").is_some());
    assert_eq!(
        strs(&Yaml::Sequence(
            c["envFrom"]
                .as_sequence()
                .context("envFrom")?
                .iter()
                .map(|e| e["configMapRef"]["name"].clone())
                .collect()
        )),
        [doc("ConfigMap")?["metadata"]["name"]
            .as_str()
            .context("name")?]
    );

    // Metrics: on the pod's (node's) address, the port declared, scraped by
    // annotation, and probed.
    let env = c["env"].as_sequence().context("env")?;
    let addr = env
        .iter()
        .find(|e| e["name"] == "API_GUARD_METRICS_ADDR")
        .context("API_GUARD_METRICS_ADDR")?;
    let addr = addr["value"].as_str().context("value")?;
    let (host, port) = addr.rsplit_once(':').context("host:port")?;
    let pod_ip = env
        .iter()
        .find(|e| e["name"] == "POD_IP")
        .context("POD_IP")?;
    assert_eq!(pod_ip["valueFrom"]["fieldRef"]["fieldPath"], "status.podIP");
    assert_eq!(host, "$(POD_IP)");
    let ports = c["ports"].as_sequence().context("ports")?;
    let metrics = ports
        .iter()
        .find(|p| p["name"] == "metrics")
        .context("a metrics port")?;
    assert_eq!(
        metrics["containerPort"]
            .as_u64()
            .map(|p| p.to_string())
            .as_deref(),
        Some(port)
    );
    let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"].as_str(), Some(port));
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(c[probe]["httpGet"]["path"], "/metrics", "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"], "metrics", "{probe}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Prometheus

fn promtool(args: &[&str], dir: &Path) -> Result<String> {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "promtool {args:?}: {text}");
    Ok(text)
}

#[test]
fn prometheus_files_pass_promtool() -> Result<()> {
    let dir = repo().join("deploy/prometheus");
    promtool(&["check", "config", "prometheus.yml"], &dir)?;
    let rules = promtool(&["check", "rules", "api-guard.rules.yml"], &dir)?;
    assert!(rules.contains("SUCCESS"), "{rules}");
    // The rules' own unit tests: each alert fires on the series it is for,
    // and not before.
    promtool(&["test", "rules", "api-guard.rules.test.yml"], &dir)?;
    assert!(read(RULES_TEST)?.contains("api-guard.rules.yml"));

    // The shipped scrape config targets the daemon's default --metrics-addr.
    let conf: Yaml = serde_yaml_ng::from_str(&read(PROMETHEUS)?)?;
    let job = &conf["scrape_configs"][0];
    assert_eq!(job["job_name"], "api-guard");
    assert_eq!(
        strs(&job["static_configs"][0]["targets"]),
        ["127.0.0.1:9477"]
    );

    // The Kubernetes one: Debian's promtool is built without kubernetes_sd, so
    // promtool checks a copy whose discovery is a static list (the relabeling
    // and rules are checked as they are), and the discovery is checked here.
    let k8s: Yaml = serde_yaml_ng::from_str(&read(PROMETHEUS_K8S)?)?;
    let job = &k8s["scrape_configs"][0];
    assert_eq!(job["job_name"], "api-guard");
    let sd = &job["kubernetes_sd_configs"][0];
    assert_eq!(sd["role"], "pod");
    let ds = doc("DaemonSet")?;
    assert_eq!(
        strs(&sd["namespaces"]["names"]),
        [ds["metadata"]["namespace"].as_str().context("ns")?]
    );
    let relabel = serde_yaml_ng::to_string(&job["relabel_configs"])?;
    for (annotation, meta) in [
        (
            "prometheus.io/scrape",
            "__meta_kubernetes_pod_annotation_prometheus_io_scrape",
        ),
        (
            "prometheus.io/port",
            "__meta_kubernetes_pod_annotation_prometheus_io_port",
        ),
        (
            "prometheus.io/path",
            "__meta_kubernetes_pod_annotation_prometheus_io_path",
        ),
    ] {
        assert!(
            !ds["spec"]["template"]["metadata"]["annotations"][annotation].is_null(),
            "the DaemonSet has no {annotation}"
        );
        assert!(
            relabel.contains(meta),
            "the scrape config ignores {annotation}"
        );
    }
    let mut checked = k8s.clone();
    let job = &mut checked["scrape_configs"][0];
    job.as_mapping_mut()
        .context("job")?
        .remove("kubernetes_sd_configs")
        .context("kubernetes_sd_configs")?;
    job["static_configs"] = serde_yaml_ng::from_str("[{targets: ['198.18.0.1:9477']}]")?;
    let tmp = tempfile::Builder::new().prefix(PREFIX).tempdir()?;
    fs::write(
        tmp.path().join("prometheus.yml"),
        serde_yaml_ng::to_string(&checked)?,
    )?;
    fs::copy(repo().join(RULES), tmp.path().join("api-guard.rules.yml"))?;
    promtool(&["check", "config", "prometheus.yml"], tmp.path())?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Grafana

/// The metric families a real daemon exports, after some traffic (the top
/// clients gauge exists only while clients send).
fn exported_metrics() -> Result<BTreeSet<String>> {
    let s = Scenario::start(1, &[])?;
    let client = s.client(0);
    let urls: Vec<String> = (0..20)
        .map(|i| url(client.server(false), API, &format!("/v1/items/{i}")))
        .collect();
    curl(&client.ns, &urls, Opts::new(Connections::KeepAlive))?;
    let mut text = String::new();
    wait_until(Duration::from_secs(15), "the top clients gauge", || {
        text = s.scrape()?;
        Ok(text.contains("api_guard_top_client_requests_per_second{"))
    })?;
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

#[test]
fn the_dashboard_and_rules_use_only_exported_metrics() -> Result<()> {
    let dash: Json = serde_json::from_str(&read(DASHBOARD)?)?;
    let exported = exported_metrics()?;
    assert!(
        exported.contains("api_guard_requests_total"),
        "{exported:?}"
    );

    // The data source is a variable, and every panel and query uses it.
    let vars = dash["templating"]["list"]
        .as_array()
        .context("templating")?;
    let ds_var = vars
        .iter()
        .find(|v| v["type"] == "datasource")
        .context("no data source variable")?;
    assert_eq!(ds_var["query"], "prometheus");
    let uid = format!("${{{}}}", ds_var["name"].as_str().context("name")?);
    let panels = dash["panels"].as_array().context("panels")?;
    assert!(!panels.is_empty());
    for p in panels {
        assert_eq!(p["datasource"]["uid"], uid.as_str(), "panel {}", p["title"]);
        for t in p["targets"].as_array().context("targets")? {
            assert_eq!(t["datasource"]["uid"], uid.as_str(), "panel {}", p["title"]);
        }
    }

    // Every metric a query names is one the daemon exports, and every metric
    // it exports is on the dashboard.
    let exprs = dashboard_exprs(&dash);
    let mut used = BTreeSet::new();
    for e in &exprs {
        let names = metric_names(e);
        assert!(!names.is_empty(), "{e} names no api-guard metric");
        for n in &names {
            // The fleet's series exist with --fleet only (a Redis):
            // e2e_fleet checks them against a fleet daemon.
            assert!(
                n == "up" || exported.contains(n) || n.starts_with("api_guard_fleet_"),
                "{e}: {n} is not exported: {exported:?}"
            );
        }
        used.extend(names);
    }
    for var in vars.iter().filter(|v| v["type"] == "query") {
        for n in metric_names(var["definition"].as_str().context("definition")?) {
            assert!(exported.contains(&n), "variable {}: {n}", var["name"]);
        }
    }
    for n in &exported {
        assert!(used.contains(n), "the dashboard does not show {n}");
    }

    // Every query parses: promtool checks them as recording rules.
    let tmp = tempfile::Builder::new().prefix(PREFIX).tempdir()?;
    let rules: Vec<Yaml> = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let mut m = serde_yaml_ng::Mapping::new();
            m.insert("record".into(), format!("dashboard:query{i}").into());
            m.insert("expr".into(), with_grafana_vars(e, "1m").into());
            Yaml::Mapping(m)
        })
        .collect();
    let doc = serde_yaml_ng::to_string(&serde_json::json!({
        "groups": [{"name": "dashboard", "rules": rules}]
    }))?;
    fs::write(tmp.path().join("dashboard.rules.yml"), doc)?;
    promtool(&["check", "rules", "dashboard.rules.yml"], tmp.path())?;

    // The alerting rules name exported metrics only.
    let rules: Yaml = serde_yaml_ng::from_str(&read(RULES)?)?;
    let mut alerts = 0;
    for group in rules["groups"].as_sequence().context("groups")? {
        for rule in group["rules"].as_sequence().context("rules")? {
            let expr = rule["expr"].as_str().context("expr")?;
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{expr}");
            for n in names {
                // As on the dashboard: e2e_fleet checks the fleet's series.
                assert!(
                    n == "up" || exported.contains(&n) || n.starts_with("api_guard_fleet_"),
                    "rule {:?}: {n}",
                    rule["alert"]
                );
            }
            alerts += 1;
        }
    }
    assert!(alerts >= 5, "{alerts} alerts");
    Ok(())
}

fn which(name: &str) -> Result<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .with_context(|| format!("{name} not found"))
}
