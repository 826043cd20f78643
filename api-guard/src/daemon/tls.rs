//! `--tls auto`: finds the processes listening on the watched ports in this
//! network namespace (/proc/net/tcp{,6} → socket inode → /proc/PID/fd), their
//! TLS library (libssl in /proc/PID/maps, or OpenSSL linked into the executable
//! with its symbols), attaches the uprobes to each such process (the kernel
//! puts the breakpoints in that process's memory only, so the library's other
//! users, clients on the same host included, never trap), and tells the kernel
//! which processes to follow. Rescanned every second, so new workers, reloads
//! and restarts are covered within a second; a process that is gone has its
//! uprobes detached. What cannot be followed is named once in the log, and its
//! port keeps connection-level protection.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use api_guard_common::tls::TlsEvent;
use tracing::{info, warn};

use crate::kernel::{
    Datapath, KernelMaps as _,
    attach::{SslSites, TlsLinks, ssl_sites},
    btf::VMLINUX,
};

/// What was found for one listening process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// Its TLS library, followed.
    Followed { library: PathBuf },
    /// Why its TLS is not seen.
    NotSeen { why: String },
}

/// A process whose uprobes are attached.
struct Probed {
    /// Its start time (a pid reused by a new process is a new process).
    start: u64,
    library: (u64, u64),
    links: TlsLinks,
}

pub struct TlsWatch {
    ports: Vec<u16>,
    /// Where to probe each library file, by (device, inode), or why not.
    sites: HashMap<(u64, u64), Result<SslSites, String>>,
    /// Processes whose uprobes are attached, by pid.
    probed: HashMap<u32, Probed>,
    /// Processes whose attach failed (pid, start time), with the reason.
    failed: HashMap<(u32, u64), String>,
    followed: HashSet<u32>,
    /// What was last logged per (port, pid).
    reported: BTreeMap<(u16, u32), Found>,
    /// Ports whose listeners could not be found in /proc (logged once).
    hidden: HashSet<u16>,
    h2_logged: bool,
}

impl TlsWatch {
    /// Loads the TLS programs; None (after one log line) where this kernel
    /// cannot run them: the ports keep connection-level protection.
    pub fn start(dp: &mut Datapath, ports: &[u16]) -> Option<Self> {
        if let Err(e) = dp.tls_load(Path::new(VMLINUX)) {
            warn!(
                "TLS requests will not be seen (TLS ports keep connection-level protection): {e:#}"
            );
            return None;
        }
        Some(Self {
            ports: ports.to_vec(),
            sites: HashMap::new(),
            probed: HashMap::new(),
            failed: HashMap::new(),
            followed: HashSet::new(),
            reported: BTreeMap::new(),
            hidden: HashSet::new(),
            h2_logged: false,
        })
    }

    /// One scan of the listeners: attaches to new libraries, follows the
    /// processes, logs what changed.
    pub fn rescan(&mut self, dp: &mut Datapath) {
        let listeners = listening_inodes(&self.ports);
        let serving = processes_holding(&listeners);
        let mut changed = false;
        // A port listened on by no process this daemon can see (their /proc
        // entries need ptrace access: CAP_SYS_PTRACE for other users' and
        // more privileged processes).
        for &port in listeners.values() {
            let seen = serving.values().any(|ports| ports.contains(&port));
            if !seen && self.hidden.insert(port) {
                changed = true;
                warn!(
                    port,
                    "TLS: the processes listening on this port cannot be read in /proc (the daemon needs CAP_SYS_PTRACE for other users' processes): its TLS requests are not seen"
                );
            } else if seen && self.hidden.remove(&port) {
                changed = true;
            }
        }
        // Processes gone (or replaced under the same pid): their uprobes go.
        let gone: Vec<u32> = self
            .probed
            .iter()
            .filter(|(pid, p)| !serving.contains_key(pid) || start_time(**pid) != Some(p.start))
            .map(|(&pid, _)| pid)
            .collect();
        for pid in gone {
            if let Some(p) = self.probed.remove(&pid) {
                dp.tls_detach(p.links);
            }
        }
        self.failed.retain(|(pid, _), _| serving.contains_key(pid));
        let mut follow = HashSet::new();
        for (&pid, ports) in &serving {
            let found = match tls_library(pid) {
                Err(why) => Found::NotSeen { why },
                Ok((library, id)) => match self.probe(dp, pid, &library, id) {
                    Err(why) => Found::NotSeen { why },
                    Ok(()) => {
                        follow.insert(pid);
                        Found::Followed {
                            library: display_path(pid, &library),
                        }
                    }
                },
            };
            for &port in ports {
                if self.reported.get(&(port, pid)) != Some(&found) {
                    let comm = comm(pid);
                    match &found {
                        Found::Followed { library } => info!(
                            port, pid, process = %comm, library = %library.display(),
                            probes = %self.how(pid),
                            "TLS: following the process's SSL_read/SSL_write"
                        ),
                        Found::NotSeen { why } => warn!(
                            port, pid, process = %comm,
                            "TLS requests of this process are not seen (connection-level protection only): {why}"
                        ),
                    }
                    self.reported.insert((port, pid), found.clone());
                    changed = true;
                }
            }
        }
        let before = self.reported.len();
        self.reported
            .retain(|(_, pid), _| serving.contains_key(pid));
        if self.reported.len() != before || changed {
            let mut entries: Vec<(u16, u32, bool, String)> = self
                .reported
                .iter()
                .map(|(&(port, pid), found)| match found {
                    Found::Followed { library } => (
                        port,
                        pid,
                        true,
                        format!("{} ({})", library.display(), comm(pid)),
                    ),
                    Found::NotSeen { why } => {
                        (port, pid, false, format!("{} ({})", why, comm(pid)))
                    }
                })
                .collect();
            for &port in &self.hidden {
                entries.push((
                    port,
                    0,
                    false,
                    "its listening processes cannot be read in /proc (CAP_SYS_PTRACE)".into(),
                ));
            }
            if let Err(e) = dp.set_tls_status(&entries) {
                warn!("cannot record the TLS status for `api-guard status`: {e:#}");
            }
        }
        if follow != self.followed {
            match dp.tls_follow(&follow) {
                Ok(()) => self.followed = follow,
                Err(e) => warn!("cannot update the processes TLS follows: {e:#}"),
            }
        }
        if !self.h2_logged
            && dp
                .tls_events()
                .is_ok_and(|e| e[TlsEvent::H2Streams as usize] > 0)
        {
            self.h2_logged = true;
            info!(
                "HTTP/2 inside TLS seen: its connections are counted, its requests are not parsed yet"
            );
        }
    }
}

impl TlsWatch {
    /// Makes sure `pid`'s uprobes are attached to `library` (file `id`); or
    /// why they cannot be.
    fn probe(
        &mut self,
        dp: &mut Datapath,
        pid: u32,
        library: &Path,
        id: (u64, u64),
    ) -> Result<(), String> {
        let start = start_time(pid).ok_or_else(|| format!("process {pid} is gone"))?;
        if let Some(p) = self.probed.get(&pid) {
            if p.library == id {
                return Ok(());
            }
            // The process mapped another library (an exec): probe that one.
            if let Some(p) = self.probed.remove(&pid) {
                dp.tls_detach(p.links);
            }
        }
        if let Some(e) = self.failed.get(&(pid, start)) {
            return Err(e.clone());
        }
        let sites = self
            .sites
            .entry(id)
            .or_insert_with(|| ssl_sites(library).map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| format!("its TLS library cannot be probed: {e}"))?;
        match dp.tls_attach(library, sites, pid) {
            Ok(links) => {
                self.probed.insert(
                    pid,
                    Probed {
                        start,
                        library: id,
                        links,
                    },
                );
                Ok(())
            }
            Err(e) => {
                let why = format!("uprobes cannot attach: {e:#}");
                self.failed.insert((pid, start), why.clone());
                Err(why)
            }
        }
    }

    /// Where `pid`'s uprobes sit, for the log.
    fn how(&self, pid: u32) -> String {
        self.probed
            .get(&pid)
            .and_then(|p| self.sites.get(&p.library))
            .and_then(|s| s.as_ref().ok())
            .map(|s| s.how.clone())
            .unwrap_or_default()
    }
}

/// A process's start time (clock ticks since boot, /proc/PID/stat field 22).
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields are
    // counted from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Socket inodes listening on `ports` in this network namespace, with their port.
fn listening_inodes(ports: &[u16]) -> HashMap<u64, u16> {
    let mut found = HashMap::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let Some(port) = f[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok())
            else {
                continue;
            };
            if ports.contains(&port)
                && let Ok(inode) = f[9].parse::<u64>()
                && inode != 0
            {
                found.insert(inode, port);
            }
        }
    }
    found
}

/// Processes holding one of the sockets, with the ports they serve.
fn processes_holding(sockets: &HashMap<u64, u16>) -> BTreeMap<u32, Vec<u16>> {
    let mut found: BTreeMap<u32, Vec<u16>> = BTreeMap::new();
    if sockets.is_empty() {
        return found;
    }
    let Ok(procs) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(link) = fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = link
                .to_str()
                .and_then(|l| l.strip_prefix("socket:["))
                .and_then(|l| l.strip_suffix(']'))
                .and_then(|l| l.parse::<u64>().ok())
            else {
                continue;
            };
            if let Some(&port) = sockets.get(&inode) {
                let ports = found.entry(pid).or_default();
                if !ports.contains(&port) {
                    ports.push(port);
                }
            }
        }
    }
    found
}

/// The file to attach to for `pid` (as this daemon reaches it) and its
/// (device, inode); or why there is none.
fn tls_library(pid: u32) -> Result<(PathBuf, (u64, u64)), String> {
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let maps = fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|e| format!("cannot read /proc/{pid}/maps: {e}"))?;
    let lib = mapped_libssl(&maps);
    let target = match lib {
        Some(MappedLib {
            path,
            inode,
            deleted,
        }) => {
            let target = root.join(path.trim_start_matches('/'));
            // A library replaced on disk (a package upgrade renames the new
            // file over it) under a running server: its path names the new
            // file, which the server never runs. Probing it would say
            // "followed" and see nothing. (Inodes are not compared: on
            // overlayfs the maps and stat(2) may name different layers.)
            if deleted {
                return Err(format!(
                    "its {path} (inode {inode}) was replaced on disk after it started: restart it to be followed"
                ));
            }
            target
        }
        None => {
            let exe = PathBuf::from(format!("/proc/{pid}/exe"));
            match executable_tls(&exe) {
                ExeTls::OpenSsl => exe,
                ExeTls::Go => {
                    return Err(
                        "a Go program (crypto/tls): its TLS functions are not followed".into(),
                    );
                }
                ExeTls::Stripped => {
                    return Err(
                        "no libssl in its maps, and its executable is stripped (a static TLS library cannot be found)"
                            .into(),
                    );
                }
                ExeTls::None => {
                    return Err(
                        "no libssl in its maps and no SSL_read in its executable (plaintext, or another TLS library such as BoringSSL without OpenSSL's symbols)"
                            .into(),
                    );
                }
            }
        }
    };
    let meta =
        fs::metadata(&target).map_err(|e| format!("cannot open {}: {e}", target.display()))?;
    Ok((target, (meta.dev(), meta.ino())))
}

/// The libssl a process has mapped, as its `/proc/PID/maps` names it.
#[derive(Debug, PartialEq)]
struct MappedLib<'a> {
    path: &'a str,
    inode: u64,
    /// The kernel marked the path " (deleted)": the file it names is gone.
    deleted: bool,
}

fn mapped_libssl(maps: &str) -> Option<MappedLib<'_>> {
    maps.lines().find_map(|line| {
        // address perms offset dev inode path[ (deleted)]
        let mut rest = line;
        let mut inode = None;
        for _ in 0..5 {
            rest = rest.trim_start();
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            inode = rest[..end].parse::<u64>().ok();
            rest = &rest[end..];
        }
        let rest = rest.trim();
        let (path, deleted) = match rest.strip_suffix(" (deleted)") {
            Some(p) => (p, true),
            None => (rest, false),
        };
        let name = Path::new(path).file_name()?.to_str()?;
        name.starts_with("libssl.so").then_some(MappedLib {
            path,
            inode: inode?,
            deleted,
        })
    })
}

enum ExeTls {
    OpenSsl,
    Go,
    Stripped,
    None,
}

/// What the executable's ELF says of its TLS: OpenSSL linked in with its
/// symbols, a Go program, stripped, or none.
fn executable_tls(exe: &Path) -> ExeTls {
    use object::{Object as _, ObjectSymbol as _};
    let Ok(data) = fs::read(exe) else {
        return ExeTls::None;
    };
    let Ok(file) = object::File::parse(&*data) else {
        return ExeTls::None;
    };
    let has = |name: &str| {
        file.symbols()
            .chain(file.dynamic_symbols())
            .any(|s| s.name() == Ok(name))
    };
    if has("SSL_read") {
        return ExeTls::OpenSsl;
    }
    if file.section_by_name(".go.buildinfo").is_some() {
        return ExeTls::Go;
    }
    if file.symbols().next().is_none() {
        return ExeTls::Stripped;
    }
    ExeTls::None
}

/// The library's path as the process sees it (for the log).
fn display_path(pid: u32, target: &Path) -> PathBuf {
    let root = format!("/proc/{pid}/root");
    match target.strip_prefix(&root) {
        Ok(rest) => Path::new("/").join(rest),
        Err(_) => target.to_path_buf(),
    }
}

fn comm(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_libssl_replaced_on_disk_is_told_apart() {
        let maps = "\
55d0c0000000-55d0c0001000 r--p 00000000 08:01 131 /usr/sbin/nginx
7f0000000000-7f0000001000 r-xp 00020000 08:01 4242    /usr/lib/x86_64-linux-gnu/libssl.so.3 (deleted)
";
        assert_eq!(
            super::mapped_libssl(maps),
            Some(super::MappedLib {
                path: "/usr/lib/x86_64-linux-gnu/libssl.so.3",
                inode: 4242,
                deleted: true
            })
        );
        let live = "7f00-7f01 r-xp 00000000 fd:00 77 /opt/my ssl/libssl.so.1.1\n";
        assert_eq!(
            super::mapped_libssl(live),
            Some(super::MappedLib {
                path: "/opt/my ssl/libssl.so.1.1",
                inode: 77,
                deleted: false
            })
        );
        assert_eq!(
            super::mapped_libssl("7f00-7f01 r-xp 0 08:01 5 /lib/libc.so.6\n"),
            None
        );
    }

    use super::*;

    #[test]
    fn a_process_start_time_is_read_and_a_missing_process_has_none() {
        let me = std::process::id();
        let t = start_time(me).expect("this process has a start time");
        assert_eq!(start_time(me), Some(t));
        assert_eq!(start_time(u32::MAX), None);
    }

    #[test]
    fn this_test_binary_has_no_tls_library() {
        // The test binary links no libssl; its own ELF is read.
        let exe = Path::new("/proc/self/exe");
        assert!(matches!(
            executable_tls(exe),
            ExeTls::None | ExeTls::Stripped
        ));
    }
}
