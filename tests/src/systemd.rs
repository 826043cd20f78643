//! A real systemd, booted as PID 1 of PID, mount and cgroup namespaces of its own
//! inside a test network namespace, to run a unit file the way systemd runs it:
//! sandboxing, capabilities, seccomp, the environment file, reloads, restarts.
//!
//! In its mount namespace the host's unit and generator directories,
//! /etc/default, /usr/local, /run, /var and /tmp are empty tmpfs mounts,
//! /etc an overlay written only in the namespace (with a machine id generated
//! for the boot), /sys/fs/cgroup is its own cgroup subtree and /sys/fs/bpf a
//! bpffs of its own.
//! So it sees only the units a test gives it and writes nothing to the host's
//! files. It is killed, with everything it started, on drop, and its cgroup is
//! removed then.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use tempfile::TempDir;

use crate::{
    PREFIX,
    cgroup::Cgroup2Mount,
    netns::Netns,
    process::{die_with_parent, kill, run, wait_until},
};

/// systemd's own binary (Debian's package `systemd`).
pub const SYSTEMD: &str = "/lib/systemd/systemd";

/// Where the test's directory on the host shows inside (for output files).
pub const HOST_DIR: &str = "/run/agt-host";

/// Directories replaced by an empty tmpfs inside, in this order. Files a test
/// puts in must land under one of them (never on the host's file systems).
const COVERED: [&str; 10] = [
    "/tmp",
    "/var",
    "/usr/local",
    "/etc/default",
    "/etc/systemd/system",
    "/usr/lib/systemd/system",
    "/usr/lib/systemd/system-generators",
    "/usr/lib/systemd/system-environment-generators",
    "/etc/systemd/system-generators",
    "/usr/lib/systemd/system-preset",
];

/// Targets a service's default dependencies name; empty ones stand in for them.
const STUB_TARGETS: [&str; 10] = [
    "sysinit",
    "basic",
    "shutdown",
    "sockets",
    "paths",
    "timers",
    "network",
    "network-online",
    "multi-user",
    "agt-idle",
];

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A booted systemd. Killed, with its whole PID namespace, on drop.
pub struct Systemd {
    child: Child,
    /// systemd's pid on the host.
    init: i32,
    cgroup: PathBuf,
    // Dropped after the processes are gone: the staging directory, and a
    // cgroup2 mount of our own if the host had none.
    dir: TempDir,
    _cgroup2: Option<Cgroup2Mount>,
}

impl Systemd {
    /// Boots systemd in `ns` with `files` (path inside, contents) in place and
    /// `binaries` (path inside, file on the host) bind-mounted read-only. Units go
    /// under /etc/systemd/system. No unit starts until a test starts it.
    pub fn boot(ns: &Netns, files: &[(&str, &str)], binaries: &[(&str, &Path)]) -> Result<Self> {
        ensure!(Path::new(SYSTEMD).exists(), "{SYSTEMD} is missing");
        let dir = tempfile::Builder::new().prefix(PREFIX).tempdir()?;
        let stage = dir.path().join("files");
        fs::create_dir(&stage)?;
        // The host's files are reachable only until the tmpfs mounts cover
        // them: binaries are bound under /run first, files staged in HOST_DIR.
        let mut script = String::from(BOOT_RUN);
        for (i, (path, host)) in binaries.iter().enumerate() {
            covered(path)?;
            let host = host.to_str().context("binary path")?;
            ensure!(!host.contains('\''), "unsafe path {host:?}");
            script.push_str(&format!(
                "touch /run/agt-bin-{i}\nmount --bind -o ro '{host}' /run/agt-bin-{i}\n"
            ));
        }
        script.push_str(BOOT_COVER);
        for (i, (path, text)) in files.iter().enumerate() {
            covered(path)?;
            fs::write(stage.join(i.to_string()), text)?;
            script.push_str(&format!(
                "mkdir -p \"$(dirname '{path}')\"\ncp {HOST_DIR}/files/{i} '{path}'\n"
            ));
        }
        for (i, (path, _)) in binaries.iter().enumerate() {
            script.push_str(&format!(
                "mkdir -p \"$(dirname '{path}')\"\ntouch '{path}'\nmount --bind /run/agt-bin-{i} '{path}'\n"
            ));
        }
        for t in STUB_TARGETS {
            script.push_str(&format!(
                "printf '[Unit]\\nDescription=stand-in for {t}.target\\n' > /etc/systemd/system/{t}.target\n"
            ));
        }
        script.push_str(
            "printf '[Unit]\\nDescription=stand-in for system.slice\\n' > /etc/systemd/system/system.slice\n\
             export container=agt-test\n\
             exec /lib/systemd/systemd --unit=agt-idle.target --log-target=console --log-level=info\n",
        );

        let (root, cgroup2) = cgroup2_root()?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let cgroup = root.join(format!("{PREFIX}{}-{n}-systemd", std::process::id()));
        fs::create_dir(&cgroup).with_context(|| format!("cannot create {}", cgroup.display()))?;
        let log = fs::File::create(dir.path().join("boot.log"))?;
        let mut cmd = Command::new("sh");
        // Into the new cgroup first: it becomes the root of systemd's cgroup
        // namespace.
        cmd.args([
            "-c",
            "echo $$ > \"$AGT_CGROUP/cgroup.procs\" && exec ip netns exec \"$AGT_NETNS\" \
             unshare --pid --fork --kill-child --mount --mount-proc --cgroup --uts --ipc \
             sh -c \"$AGT_BOOT\"",
        ])
        .env("AGT_CGROUP", &cgroup)
        .env("AGT_NETNS", ns.name())
        .env("AGT_BOOT", &script)
        .env("AGT_STAGE", dir.path())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
        die_with_parent(&mut cmd);
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = fs::remove_dir(&cgroup);
                return Err(e).context("cannot start unshare");
            }
        };
        let mut sd = Self {
            init: 0,
            child,
            cgroup,
            dir,
            _cgroup2: cgroup2,
        };
        sd.wait_booted()?;
        Ok(sd)
    }

    fn wait_booted(&mut self) -> Result<()> {
        let unshare = self.child.id();
        wait_until(Duration::from_secs(20), "systemd to boot", || {
            if let Some(status) = self.child.try_wait()? {
                bail!("systemd's namespace exited ({status}): {}", self.boot_log());
            }
            if self.init == 0 {
                let children =
                    fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))
                        .unwrap_or_default();
                let Some(pid) = children.split_whitespace().next() else {
                    return Ok(false);
                };
                let pid: i32 = pid.parse()?;
                let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if comm.trim() != "systemd" {
                    return Ok(false);
                }
                self.init = pid;
            }
            let state = self.systemctl(&["is-system-running"])?;
            let state = String::from_utf8_lossy(&state.stdout);
            Ok(matches!(state.trim(), "running" | "degraded"))
        })
        .with_context(|| self.boot_log())
    }

    /// What systemd and the boot script wrote (for failure messages).
    pub fn boot_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("boot.log")).unwrap_or_default()
    }

    /// `systemctl ARGS` against this systemd, whatever its exit status.
    pub fn systemctl(&self, args: &[&str]) -> Result<Output> {
        self.command("systemctl")
            .arg("--no-pager")
            .args(args)
            .output()
            .context("cannot run systemctl")
    }

    /// `systemctl ARGS`, failing on a non-zero exit.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        run(self.command("systemctl").arg("--no-pager").args(args))
    }

    /// A property of a unit (`systemctl show -p NAME --value`).
    pub fn property(&self, unit: &str, name: &str) -> Result<String> {
        Ok(self
            .ctl(&["show", unit, "-p", name, "--value"])?
            .trim()
            .to_string())
    }

    /// A command run inside systemd's mount and PID namespaces (and so in the
    /// network namespace it was booted in).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.init.to_string(), "-m", "-p", "-n", program]);
        die_with_parent(&mut cmd);
        cmd
    }

    /// The host's side of [`HOST_DIR`]: `name` there.
    pub fn host_file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        if self.init > 0 {
            // SIGKILL to a PID namespace's init ends every process in it.
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(self.init, libc::SIGKILL);
            }
        }
        kill(&mut self.child);
        // The cgroups empty as their processes are reaped; then they can go.
        for _ in 0..250 {
            if remove_cgroup(&self.cgroup).is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("cannot remove the cgroup {}", self.cgroup.display());
    }
}

/// The start of the boot script (run by `sh -c` as PID 1 of the new
/// namespaces): a /run of its own, the test's directory in it.
const BOOT_RUN: &str = r#"set -e
mount --make-rprivate /
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/agt-host
mount --bind "$AGT_STAGE" /run/agt-host
"#;

/// Then the host's cgroup v2 mounts (other tests may have some) unmounted, the
/// host's directories covered, and mounts of its own.
const BOOT_COVER: &str = r#"awk '$3 == "cgroup2" { print $2 }' /proc/mounts | while read -r m; do umount -l "$m" || true; done
for d in /tmp /var /usr/local /etc/default /etc/systemd/system /usr/lib/systemd/system \
         /usr/lib/systemd/system-generators /usr/lib/systemd/system-environment-generators \
         /etc/systemd/system-generators /usr/lib/systemd/system-preset; do
    if [ -d "$d" ]; then mount -t tmpfs -o mode=0755 tmpfs "$d"; fi
done
chmod 1777 /tmp
# PID 1 tunes global sysctls (fs.file-max, fs.nr_open): they must not reach
# the host. The UTS namespace keeps the hostname its own.
mount --bind /proc/sys /proc/sys
mount -o remount,bind,ro /proc/sys
# PID 1 needs a machine id, and writes /etc/machine-id when there is none. Here
# it gets one generated for this boot, whether or not the host has one: /etc
# is an overlay whose writable layer is this namespace's /run, so nothing
# written to /etc reaches the host's. Mounts under /etc (a container's hosts
# or resolv.conf) are bound again on top.
awk '$2 ~ "^/etc/" { print $2 }' /proc/self/mounts > /run/agt-etc-mounts
mkdir -p /run/agt-etc/upper /run/agt-etc/work /run/agt-etc/kept
i=0
while read -r m; do
    i=$((i + 1))
    if [ -d "$m" ]; then mkdir "/run/agt-etc/kept/$i"; else touch "/run/agt-etc/kept/$i"; fi
    mount --bind "$m" "/run/agt-etc/kept/$i"
done < /run/agt-etc-mounts
mount -t overlay overlay -o lowerdir=/etc,upperdir=/run/agt-etc/upper,workdir=/run/agt-etc/work /etc
i=0
while read -r m; do
    i=$((i + 1))
    mount --move "/run/agt-etc/kept/$i" "$m"
done < /run/agt-etc-mounts
rm -f /etc/machine-id
tr -d '-' < /proc/sys/kernel/random/uuid > /etc/machine-id
mkdir -p /var/tmp /var/log /var/lib /usr/local/bin
chmod 1777 /var/tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf -o mode=0700 bpf /sys/fs/bpf
"#;

fn covered(path: &str) -> Result<()> {
    ensure!(
        !path.contains('\'') && !path.contains(".."),
        "unsafe path {path:?}"
    );
    ensure!(
        COVERED.iter().any(|d| path.starts_with(&format!("{d}/"))),
        "{path} is not under a directory the namespace replaces"
    );
    Ok(())
}

/// rmdir a cgroup and every cgroup under it, deepest first.
fn remove_cgroup(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_cgroup(&entry.path())?;
        }
    }
    fs::remove_dir(dir)
}

/// The host's cgroup v2 root: where it is mounted, or a mount of our own.
fn cgroup2_root() -> Result<(PathBuf, Option<Cgroup2Mount>)> {
    let mounts = fs::read_to_string("/proc/self/mounts")?;
    if let Some(dir) = mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
    }) {
        return Ok((dir, None));
    }
    let mount = Cgroup2Mount::new()?;
    Ok((mount.path().to_path_buf(), Some(mount)))
}
