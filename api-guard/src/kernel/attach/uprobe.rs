//! The TLS programs: uprobes on a TLS library's `SSL_read`/`SSL_read_ex`/
//! `SSL_write`/`SSL_write_ex` (or the internal function each pair shares, see
//! [`ssl_sites`](super::ssl_sites)), attached per followed process so that the
//! kernel puts its breakpoints in those processes' memory only, the raw
//! tracepoints `sock_recv_length`/`sock_send_length` (fired by `sock_recvmsg`
//! and `sock_sendmsg` on the calling thread) that name the call's socket
//! (attached once; no kprobes, which not every kernel has),
//! and the maps that steer them: the processes followed, and the offsets of
//! `struct sock` taken from the kernel's BTF. Their links are not pinned: the
//! uprobes go with the daemon, and the TC path keeps connection-level
//! protection without them.

use std::{collections::HashSet, num::NonZeroU32, path::Path};

use anyhow::{Context as _, Result};
use api_guard_common::tls::{self as names, SockOffsets};
use aya::{
    maps::{Array, HashMap, MapData},
    programs::{
        RawTracePoint, UProbe,
        uprobe::{UProbeAttachLocation, UProbeLinkId, UProbeScope},
    },
};

pub use super::ssl_sites::{Site, SslSites, ssl_sites};
use crate::kernel::{btf, loader::Datapath};

/// The uprobes of one followed process: dropped with [`Datapath::tls_detach`].
pub struct TlsLinks(Vec<(&'static str, UProbeLinkId)>);

/// The raw tracepoints that name the socket of an SSL call, and their programs.
const TRACEPOINTS: [(&str, &str); 2] = [
    ("sock_recv_length", "api_guard_sock_recv"),
    ("sock_send_length", "api_guard_sock_send"),
];

/// The uprobe programs (loaded once; attached per process at the sites).
pub const UPROBE_PROGRAMS: [&str; 5] = [
    "api_guard_ssl_handshake",
    "api_guard_ssl_read_enter",
    "api_guard_ssl_read_ret",
    "api_guard_ssl_read_ex_ret",
    "api_guard_ssl_write_enter",
];

impl Datapath {
    /// Loads the TLS programs, writes the `struct sock` offsets from the
    /// kernel's BTF (`btf_path`), and attaches the raw tracepoints. Fails with the
    /// reason (no BTF, no uprobes in this kernel) and leaves nothing attached
    /// that would act without the uprobes.
    pub fn tls_load(&mut self, btf_path: &Path) -> Result<()> {
        let offsets = btf::sock_offsets(&btf::Btf::load(btf_path)?)?;
        let mut map: Array<&mut MapData, SockOffsets> = Array::try_from(
            self.ebpf
                .map_mut(names::TLS_OFFSETS)
                .context("map TLS_OFFSETS missing")?,
        )?;
        map.set(0, offsets, 0)
            .context("cannot write the socket offsets")?;
        for name in UPROBE_PROGRAMS {
            let prog: &mut UProbe = self
                .ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} is missing from the object"))?
                .try_into()?;
            if prog.fd().is_err() {
                prog.load()
                    .with_context(|| format!("the kernel rejected program {name}"))?;
            }
        }
        for (tracepoint, name) in TRACEPOINTS {
            let prog: &mut RawTracePoint = self
                .ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} is missing from the object"))?
                .try_into()?;
            if prog.fd().is_err() {
                prog.load()
                    .with_context(|| format!("the kernel rejected program {name}"))?;
                prog.attach(tracepoint).with_context(|| {
                    format!("cannot attach to the tracepoint {tracepoint} (Linux 6.5 or newer)")
                })?;
            }
        }
        Ok(())
    }

    /// Attaches the uprobes at `sites` of the TLS library (or executable) at
    /// `path`, for process `pid` only (the kernel installs the breakpoints in
    /// its memory alone; other users of the library do not trap). All or
    /// nothing: a failure detaches what was attached.
    pub fn tls_attach(&mut self, path: &Path, sites: &SslSites, pid: u32) -> Result<TlsLinks> {
        let scope =
            UProbeScope::OneProcess(NonZeroU32::new(pid).context("process 0 cannot be followed")?);
        let mut links = TlsLinks(Vec::new());
        for (site, name) in &sites.probes {
            let attached = self.tls_program(name).and_then(|prog| {
                let at = match site {
                    Site::Symbol(s) => UProbeAttachLocation::Symbol(s),
                    Site::Offset(o) => UProbeAttachLocation::AbsoluteOffset(*o),
                };
                prog.attach(at, path, scope).with_context(|| {
                    format!(
                        "cannot attach to {site:?} in {} for process {pid}",
                        path.display()
                    )
                })
            });
            match attached {
                Ok(id) => links.0.push((name, id)),
                Err(e) => {
                    self.tls_detach(links);
                    return Err(e);
                }
            }
        }
        Ok(links)
    }

    /// Detaches one process's uprobes (its process may be gone already).
    pub fn tls_detach(&mut self, links: TlsLinks) {
        for (name, id) in links.0 {
            if let Ok(prog) = self.tls_program(name) {
                let _ = prog.detach(id);
            }
        }
    }

    fn tls_program(&mut self, name: &str) -> Result<&mut UProbe> {
        Ok(self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} is missing from the object"))?
            .try_into()?)
    }

    /// Makes `pids` the processes whose SSL calls the uprobes follow.
    pub fn tls_follow(&mut self, pids: &HashSet<u32>) -> Result<()> {
        let mut map: HashMap<&mut MapData, u32, u8> = HashMap::try_from(
            self.ebpf
                .map_mut(names::TLS_PIDS)
                .context("map TLS_PIDS missing")?,
        )?;
        let old: Vec<u32> = map.keys().filter_map(|k| k.ok()).collect();
        for pid in old.iter().filter(|p| !pids.contains(p)) {
            let _ = map.remove(pid);
        }
        for pid in pids {
            map.insert(pid, 1, 0)
                .with_context(|| format!("cannot follow process {pid}"))?;
        }
        Ok(())
    }
}
