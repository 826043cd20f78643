//! Loads the kernel programs and attaches them. Attachments are bpf links (tcx on
//! the interfaces, a cgroup link for sock_ops). Unpinned, they go when the process
//! does. Pinned in the pin dir (see `pins`), they outlive it: a crashed or stopped
//! daemon's programs keep running from the pinned state, and the next daemon swaps
//! its programs into the same links atomically (no gap, no second attachment).

use anyhow::{Context as _, Result};
use api_guard_common::maps as names;
use std::{os::fd::AsFd as _, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, ProgramArray, RingBuf},
    programs::{
        CgroupAttachMode, SchedClassifier, SockOps, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
    },
};

use crate::failure::{ExitCode, Failure};
use crate::maps::KernelMaps;

/// The kernel programs, built by build.rs from `api-guard-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/api-guard"));

/// The TC ingress classifier's name in the object.
pub const INGRESS_PROGRAM: &str = "api_guard_ingress";
/// The reset rewriter, tail-called by the ingress program.
pub const RESET_PROGRAM: &str = "api_guard_reset";
/// The sampler, tail-called by the ingress program.
pub const SAMPLE_PROGRAM: &str = "api_guard_sample";
/// Tail-called by the ingress program for every packet to a watched port that
/// the lists did not drop.
pub const JUDGE_PROGRAM: &str = "api_guard_judge";
/// A classifier that does nothing: the floor benchmarks compare against.
pub const FLOOR_PROGRAM: &str = "api_guard_floor";
/// The connection tracker's name in the object.
pub const SOCKOPS_PROGRAM: &str = "api_guard_sockops";

/// What the kernel side is sized with at load time.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub max_clients: u32,
    /// Sample ring buffer size in bytes (a power of two, at least a page).
    pub ring_bytes: u32,
    /// Pin the operators' maps here, or adopt the ones already pinned here.
    pub pin_dir: Option<std::path::PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            max_clients: names::DEFAULT_MAX_CLIENTS,
            ring_bytes: api_guard_common::sample::DEFAULT_RING_BYTES,
            pin_dir: None,
        }
    }
}

/// The loaded kernel programs and their maps.
pub struct Datapath {
    ebpf: Ebpf,
}

impl Datapath {
    /// Loads the maps and the ingress program into the kernel (not attached yet).
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(names::CLIENTS, opts.max_clients)
            .map_max_entries(names::SAMPLES, opts.ring_bytes);
        let pins = opts
            .pin_dir
            .as_deref()
            .map(crate::pins::pin_paths)
            .unwrap_or_default();
        for (name, path) in &pins {
            // An existing pin is opened (adopted) rather than created.
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT).map_err(|e| {
            Failure::new(
                ExitCode::Environment,
                // With its causes: "failed to create map" alone hides an EPERM.
                format!(
                    "cannot load the BPF programs (is BPF enabled in this kernel?): {:#}",
                    anyhow::Error::new(e)
                ),
            )
        })?;
        // Before any program is verified against the maps.
        if let Some(dir) = &opts.pin_dir {
            check_adopted(&ebpf, dir)?;
        }
        ingress_mut(&mut ebpf)?.load().map_err(|e| {
            Failure::new(
                ExitCode::Environment,
                format!("the kernel rejected the ingress program: {e:#}"),
            )
        })?;
        load_tail(&mut ebpf, RESET_PROGRAM, names::TAIL_RESET)?;
        load_tail(&mut ebpf, SAMPLE_PROGRAM, names::TAIL_SAMPLE)?;
        load_tail(&mut ebpf, JUDGE_PROGRAM, names::TAIL_JUDGE)?;
        let mut datapath = Self { ebpf };
        // Never leave a new policy zeroed (a zero IPv6 prefix would lump every
        // IPv6 client together): watch-only until the caller sets its own. An
        // adopted policy stays until the caller replaces it.
        if datapath.config()?.ipv6_prefix == 0 {
            datapath.set_config(&api_guard_common::config::Config::unlimited())?;
        }
        Ok(datapath)
    }

    /// Attaches the ingress classifier to `iface` with a tcx link. With `pin`, the
    /// link is pinned there; a link already pinned there (an earlier daemon's) is
    /// taken over: this program replaces the old one in it, atomically.
    pub fn attach_ingress(&mut self, iface: &str, pin: Option<&Path>) -> Result<Attached> {
        let prog = ingress_mut(&mut self.ebpf)?;
        if let Some(pin) = pin.filter(|p| p.exists()) {
            // A renamed interface, or one moved away, leaves a link that is not
            // on `iface`: replaced, never taken over.
            let want = LinkTarget::Tcx {
                ifindex: crate::preflight::interface_index(iface)?,
            };
            let taken = pinned_target_is(pin, &want)
                .and_then(|()| Ok(PinnedLink::from_pin(pin)?))
                .and_then(|pinned| Ok(SchedClassifierLink::try_from(FdLink::from(pinned))?))
                .and_then(|link| Ok(prog.attach_to_link(link)?));
            match taken {
                Ok(_) => return Ok(Attached::TakenOver),
                // Its interface went away (the link is defunct), or it is not a
                // tcx link: replace it.
                Err(e) => {
                    tracing::warn!(pin = %pin.display(), "replacing a stale pinned link: {e:#}");
                    remove_pin(pin)?;
                }
            }
        }
        let id = prog.attach(iface, TcAttachType::Ingress).map_err(|e| {
            Failure::new(
                ExitCode::Environment,
                format!("cannot attach to the ingress of {iface}: {e}"),
            )
        })?;
        if let Some(pin) = pin {
            let link = FdLink::try_from(prog.take_link(id)?)
                .context("the kernel has no tcx links (api-guard needs Linux 6.6 or newer)")?;
            link.pin(pin)
                .with_context(|| format!("cannot pin the link at {}", pin.display()))?;
        }
        Ok(Attached::New)
    }

    /// Loads the connection tracker and attaches it to the cgroup v2 directory
    /// `cgroup` (the root: every socket on the host; it filters by namespace).
    /// Pinning and taking over work as for [`Self::attach_ingress`].
    pub fn attach_sockops(&mut self, cgroup: &Path, pin: Option<&Path>) -> Result<Attached> {
        let file = crate::preflight::open_cgroup(cgroup)?;
        let prog: &mut SockOps = self
            .ebpf
            .program_mut(SOCKOPS_PROGRAM)
            .context("the sock_ops program is missing from the object")?
            .try_into()
            .context("the sock_ops program has the wrong type")?;
        prog.load().map_err(|e| {
            Failure::new(
                ExitCode::Environment,
                format!("the kernel rejected the sock_ops program: {e:#}"),
            )
        })?;
        if let Some(pin) = pin.filter(|p| p.exists()) {
            // A swap, not detach-then-attach: a connection closing in between
            // would never be uncounted, nor one opened in an overlap counted once.
            use std::os::unix::fs::MetadataExt as _;
            // A cgroup's id is its directory's inode number.
            let want = LinkTarget::Cgroup {
                id: file.metadata()?.ino(),
            };
            let prog_fd = prog.fd()?.as_fd();
            let swapped = pinned_target_is(pin, &want).and_then(|()| {
                let link = link_sys::open(pin)?;
                Ok(link_sys::update(link.as_fd(), prog_fd)?)
            });
            match swapped {
                Ok(()) => return Ok(Attached::TakenOver),
                Err(e) => {
                    tracing::warn!(pin = %pin.display(), "replacing a stale pinned link: {e:#}");
                    remove_pin(pin)?;
                }
            }
        }
        // On kernels with cgroup bpf links (5.7+) aya attaches through a link, which
        // always coexists with other programs on the cgroup and refuses any attach
        // flag: so the mode is Single (no flags), not AllowMultiple.
        let id = prog.attach(&file, CgroupAttachMode::Single).map_err(|e| {
            Failure::new(
                ExitCode::Environment,
                format!(
                    "cannot attach the connection tracker to cgroup {}: {:#}",
                    cgroup.display(),
                    anyhow::Error::new(e)
                ),
            )
        })?;
        if let Some(pin) = pin {
            let link = FdLink::try_from(prog.take_link(id)?)
                .context("the kernel has no cgroup bpf links (Linux 5.7 or newer)")?;
            link.pin(pin)
                .with_context(|| format!("cannot pin the link at {}", pin.display()))?;
        }
        Ok(Attached::New)
    }

    /// Takes the sample ring buffer out, for the sampler task to own.
    pub fn take_samples(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(names::SAMPLES)
            .context("map SAMPLES missing (or already taken)")?;
        Ok(RingBuf::try_from(map)?)
    }

    /// How many clients the client map holds (an adopted map keeps its size).
    pub fn client_capacity(&self) -> Result<u32> {
        let map = self
            .ebpf
            .map(names::CLIENTS)
            .context("map CLIENTS missing")?;
        let aya::maps::Map::LruHashMap(data) = map else {
            anyhow::bail!("map CLIENTS is not an LRU hash");
        };
        Ok(data.info()?.max_entries())
    }

    /// The ingress program, for BPF_PROG_TEST_RUN.
    pub fn ingress(&self) -> Result<&SchedClassifier> {
        self.ebpf
            .program(INGRESS_PROGRAM)
            .context("the ingress program is missing from the object")?
            .try_into()
            .context("the ingress program is not a classifier")
    }

    /// Loads the do-nothing classifier that benchmarks measure the floor with.
    pub fn floor(&mut self) -> Result<&SchedClassifier> {
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(FLOOR_PROGRAM)
            .context("the floor program is missing from the object")?
            .try_into()?;
        if prog.fd().is_err() {
            prog.load()?;
        }
        Ok(prog)
    }

    /// The kernel's id of the ingress program (for `bpftool prog show id N`).
    pub fn ingress_id(&self) -> Result<u32> {
        Ok(self.ingress()?.info()?.id())
    }

    pub(crate) fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    pub(crate) fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}

/// How a program came to be attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// A new link.
    New,
    /// Swapped into the link an earlier daemon pinned.
    TakenOver,
}

fn remove_pin(pin: &Path) -> Result<()> {
    std::fs::remove_file(pin)
        .with_context(|| format!("cannot remove the stale pin {}", pin.display()))
}

/// What a pinned link is attached to.
#[derive(Debug, PartialEq, Eq)]
enum LinkTarget {
    Tcx { ifindex: u32 },
    Cgroup { id: u64 },
    Other,
}

/// Raw bpf(2) calls for pinned links that aya 0.14 does not offer: reading what
/// a link is attached to, and `BPF_LINK_UPDATE` on a cgroup link.
mod link_sys {
    use std::{
        io,
        os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        path::Path,
    };

    use super::LinkTarget;

    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    const BPF_LINK_UPDATE: libc::c_long = 29;
    const BPF_LINK_TYPE_CGROUP: u32 = 3;
    const BPF_LINK_TYPE_TCX: u32 = 11;

    /// bpf(2) with `attr`, a zero-filled `union bpf_attr` (the kernel rejects
    /// non-zero bytes past the fields a command reads).
    fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<libc::c_long> {
        // SAFETY: attr is a 128-byte, 8-aligned bpf_attr that outlives the call;
        // any pointers in it are set by the callers to live buffers.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                attr.as_mut_ptr(),
                std::mem::size_of_val(attr),
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    }

    /// Opens the object pinned at `pin`.
    pub fn open(pin: &Path) -> io::Result<OwnedFd> {
        let path = std::ffi::CString::new(pin.as_os_str().as_encoded_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mut attr = [0u64; 16];
        attr[0] = path.as_ptr() as u64; // pathname; bpf_fd, file_flags, path_fd 0
        let fd = bpf(BPF_OBJ_GET, &mut attr)?;
        // SAFETY: the kernel just returned this fd to us; nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    /// What the link `link` is attached to (`struct bpf_link_info`: type, id,
    /// prog_id, then the per-type union at byte 16).
    pub fn target(link: BorrowedFd<'_>) -> io::Result<LinkTarget> {
        let mut info = [0u64; 16];
        let mut attr = [0u64; 16];
        // bpf_fd (u32) and info_len (u32), then the info pointer.
        attr[0] = link.as_raw_fd() as u32 as u64 | ((std::mem::size_of_val(&info) as u64) << 32);
        attr[1] = info.as_mut_ptr() as u64;
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
        let link_type = info[0] as u32;
        Ok(match link_type {
            BPF_LINK_TYPE_TCX => LinkTarget::Tcx {
                ifindex: info[2] as u32,
            },
            BPF_LINK_TYPE_CGROUP => LinkTarget::Cgroup { id: info[2] },
            _ => LinkTarget::Other,
        })
    }

    /// `BPF_LINK_UPDATE`: `link` runs `prog` from now on.
    pub fn update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
        let mut attr = [0u64; 16];
        // link_fd, new_prog_fd; flags and old_prog_fd stay 0.
        attr[0] = link.as_raw_fd() as u32 as u64 | ((prog.as_raw_fd() as u32 as u64) << 32);
        bpf(BPF_LINK_UPDATE, &mut attr)?;
        Ok(())
    }
}

/// Whether the link pinned at `pin` is attached to `want`.
fn pinned_target_is(pin: &Path, want: &LinkTarget) -> Result<()> {
    let link = link_sys::open(pin)?;
    let found = link_sys::target(link.as_fd())?;
    anyhow::ensure!(&found == want, "it is attached to {found:?}, not {want:?}");
    Ok(())
}

/// Key and value sizes of the pinned maps, as this build lays them out.
fn expected_sizes(name: &str) -> Option<(usize, usize)> {
    use api_guard_common::{client, config, counters, network::NetKey};
    use std::mem::size_of;
    let lpm_key = size_of::<u32>() + size_of::<NetKey>();
    Some(match name {
        names::PORTS => (4, 1),
        names::CONFIG => (4, size_of::<config::Config>()),
        names::CLIENTS => (
            size_of::<client::ClientKey>(),
            size_of::<client::ClientState>(),
        ),
        names::ALLOW | names::DENY => (lpm_key, 1),
        names::BLOCKS => (lpm_key, 8),
        names::OVERRIDES => (lpm_key, size_of::<config::Limit>()),
        names::COUNTERS => (4, size_of::<counters::CounterBlock>()),
        names::EVENTS => (4, size_of::<counters::EventBlock>()),
        names::HEARTBEAT => (4, 8),
        _ => return None,
    })
}

/// Refuses pinned state laid out by another api-guard build: adopting it would
/// misread every entry.
fn check_adopted(ebpf: &Ebpf, dir: &Path) -> Result<()> {
    use aya::maps::Map;
    for name in crate::pins::PINNED {
        let Some((key, value)) = expected_sizes(name) else {
            continue;
        };
        let data = match ebpf.map(name) {
            Some(
                Map::Array(d)
                | Map::LruHashMap(d)
                | Map::LpmTrie(d)
                | Map::PerCpuArray(d)
                | Map::HashMap(d),
            ) => d,
            _ => continue,
        };
        let info = data.info()?;
        if (info.key_size() as usize, info.value_size() as usize) != (key, value) {
            return Err(Failure::new(
                ExitCode::Environment,
                format!(
                    "the pinned state in {} is from an incompatible api-guard (map {name} has {}-byte keys and {}-byte values, this build uses {key} and {value}); remove it with `api-guard detach --pin-dir {}`",
                    dir.display(),
                    info.key_size(),
                    info.value_size(),
                    dir.display()
                ),
            )
            .into());
        }
    }
    Ok(())
}

/// Loads a classifier that the ingress program tail-calls and puts it in its slot.
fn load_tail(ebpf: &mut Ebpf, name: &str, slot: u32) -> Result<()> {
    let prog: &mut SchedClassifier = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} is missing from the object"))?
        .try_into()
        .with_context(|| format!("program {name} is not a classifier"))?;
    prog.load().map_err(|e| {
        Failure::new(
            ExitCode::Environment,
            format!("the kernel rejected program {name}: {e:#}"),
        )
    })?;
    let fd = prog.fd()?.try_clone()?;
    let mut tails: ProgramArray<&mut MapData> =
        ProgramArray::try_from(ebpf.map_mut(names::TAILS).context("map TAILS missing")?)?;
    tails
        .set(slot, &fd, 0)
        .with_context(|| format!("cannot install {name}"))?;
    Ok(())
}

fn ingress_mut(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier> {
    ebpf.program_mut(INGRESS_PROGRAM)
        .context("the ingress program is missing from the object")?
        .try_into()
        .context("the ingress program is not a classifier")
}
