//! Loads the kernel programs and their maps (adopting pinned ones), and hands
//! out what each part of the daemon needs: attachments (see `attach`), the
//! sample ring, and map handles of their own for tasks that must not wait on
//! each other.

use std::os::fd::AsFd as _;

use anyhow::{Context as _, Result};
use api_guard_common::maps as names;
use aya::{
    Ebpf, EbpfLoader,
    maps::{Map, MapData, ProgramArray, RingBuf},
    programs::{SchedClassifier, Xdp},
};

use super::{
    adopt, layout,
    object::{
        EGRESS_PROGRAM, FLOOR_PROGRAM, FORWARDED_PROGRAM, INGRESS_PROGRAM, JUDGE_PROGRAM,
        JUDGE_PROXIED_PROGRAM, JUDGE_PROXIED_TLS_PROGRAM, JUDGE_TLS_PROGRAM, KEYS_PROGRAM, OBJECT,
        PROXY_PROGRAM, RESET_PROGRAM, SAMPLE_PROGRAM, XDP_PROGRAM,
    },
    ring::SampleRing,
    source::{MapSet, MapSource},
};
use crate::failure::Failure;

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

/// One map's size as the kernel accounts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapMemory {
    pub max_entries: u32,
    /// Entries in it now.
    pub held: usize,
    /// Bytes charged for it (fdinfo `memlock`): a preallocated LRU hash is
    /// charged for every entry it can hold, full or not.
    pub memlock: u64,
}

/// The loaded kernel programs and their maps.
pub struct Datapath {
    pub(super) ebpf: Ebpf,
}

impl Datapath {
    /// Loads the maps and the ingress program into the kernel (not attached yet).
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        if OBJECT.is_empty() {
            return Err(Failure::KernelLacks(
                "this api-guard was built without its kernel programs (the `bpf` feature)".into(),
            )
            .into());
        }
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(names::CLIENTS, opts.max_clients)
            .map_max_entries(names::SAMPLES, opts.ring_bytes);
        let pins = opts
            .pin_dir
            .as_deref()
            .map(layout::pin_paths)
            .unwrap_or_default();
        for (name, path) in &pins {
            // An existing pin is opened (adopted) rather than created.
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT).map_err(|e| {
            // With its causes: "failed to create map" alone hides an EPERM.
            Failure::KernelLacks(format!(
                "cannot load the BPF programs (is BPF enabled in this kernel?): {:#}",
                anyhow::Error::new(e)
            ))
        })?;
        // Before any program is verified against the maps.
        if let Some(dir) = &opts.pin_dir {
            adopt::check(&ebpf, dir)?;
        }
        ingress_mut(&mut ebpf)?.load().map_err(|e| {
            Failure::Rejected(format!("the kernel rejected the ingress program: {e:#}"))
        })?;
        load_tail(&mut ebpf, RESET_PROGRAM, names::TAIL_RESET)?;
        load_tail(&mut ebpf, SAMPLE_PROGRAM, names::TAIL_SAMPLE)?;
        load_tail(&mut ebpf, JUDGE_PROGRAM, names::TAIL_JUDGE)?;
        egress_mut(&mut ebpf)?.load().map_err(|e| {
            Failure::Rejected(format!("the kernel rejected the egress program: {e:#}"))
        })?;
        xdp_mut(&mut ebpf)?.load().map_err(|e| {
            Failure::Rejected(format!("the kernel rejected the XDP program: {e:#}"))
        })?;
        load_tail(&mut ebpf, PROXY_PROGRAM, names::TAIL_PROXY)?;
        load_tail(&mut ebpf, JUDGE_PROXIED_PROGRAM, names::TAIL_JUDGE_PROXIED)?;
        load_tail(&mut ebpf, JUDGE_TLS_PROGRAM, names::TAIL_JUDGE_TLS)?;
        load_tail(
            &mut ebpf,
            JUDGE_PROXIED_TLS_PROGRAM,
            names::TAIL_JUDGE_PROXIED_TLS,
        )?;
        load_tail(&mut ebpf, KEYS_PROGRAM, names::TAIL_KEYS)?;
        load_tail(&mut ebpf, FORWARDED_PROGRAM, names::TAIL_FORWARDED)?;
        let mut datapath = Self { ebpf };
        if std::env::var_os("API_GUARD_VERIFIER_STATS").is_some() {
            // How close each program came to the verifier's limit (for
            // whoever changes the datapath).
            for (name, n) in datapath.verified_instructions() {
                eprintln!("verifier: {name} {n} instructions processed");
            }
        }
        // The keyed hash's secret: new at each start, in a map never pinned,
        // never logged.
        datapath.set_key_secret(&random_secret()?)?;
        // Never leave a new policy zeroed (a zero IPv6 prefix would lump every
        // IPv6 client together): watch-only until the caller sets its own. An
        // adopted policy stays until the caller replaces it.
        use super::maps::KernelMaps as _;
        if datapath.config()?.ipv6_prefix == 0 {
            datapath.set_config(&api_guard_common::config::Config::unlimited())?;
        }
        Ok(datapath)
    }

    /// Instructions the verifier processed for each loaded program (its limit
    /// is a million: the judges, which inline the stream stage's scans, come
    /// nearest to it), by program name.
    pub fn verified_instructions(&self) -> Vec<(String, u32)> {
        let mut out: Vec<(String, u32)> = self
            .ebpf
            .programs()
            .filter_map(|(name, prog)| {
                let n = prog.info().ok()?.verified_instruction_count()?;
                Some((name.to_string(), n))
            })
            .collect();
        out.sort();
        out
    }

    /// Takes the sample ring buffer out, for the sample task to own.
    pub fn take_samples(&mut self) -> Result<SampleRing> {
        let map = self
            .ebpf
            .take_map(names::SAMPLES)
            .context("map SAMPLES missing (or already taken)")?;
        Ok(SampleRing::new(RingBuf::try_from(map)?))
    }

    /// Handles of its own to the maps `wanted`, for one task: each on a new
    /// file descriptor, so the task reads and writes them without a lock shared
    /// with any other task (the kernel serialises each map update itself).
    pub fn handles(&self, what: &'static str, wanted: &[&'static str]) -> Result<MapSet> {
        let mut maps = std::collections::HashMap::new();
        for &name in wanted {
            maps.insert(name, self.handle(name)?);
        }
        Ok(MapSet::new(what, maps))
    }

    /// A new handle to the map `name`.
    pub fn handle(&self, name: &str) -> Result<Map> {
        let data = match self.map(name)? {
            Map::Array(d)
            | Map::HashMap(d)
            | Map::LruHashMap(d)
            | Map::LpmTrie(d)
            | Map::PerCpuArray(d)
            | Map::PerCpuHashMap(d)
            | Map::ProgramArray(d)
            | Map::RingBuf(d) => d,
            _ => anyhow::bail!("map {name} is of a kind api-guard does not share"),
        };
        let fd = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .with_context(|| format!("cannot open map {name} again"))?;
        Ok(Map::from_map_data(MapData::from_fd(fd)?)?)
    }

    /// How many clients the client map holds (an adopted map keeps its size).
    pub fn client_capacity(&self) -> Result<u32> {
        let aya::maps::Map::LruHashMap(data) = self.map(names::CLIENTS)? else {
            anyhow::bail!("map CLIENTS is not an LRU hash");
        };
        Ok(data.info()?.max_entries())
    }

    /// The request/response FIFO map (`EXCHANGES`) as the kernel accounts it:
    /// its bound, the connections it holds now, and the bytes the kernel
    /// charges for it (the `memlock` of its fdinfo, what bpftool shows).
    pub fn exchanges_memory(&self) -> Result<MapMemory> {
        use std::os::fd::AsRawFd as _;
        const KEY: usize = size_of::<api_guard_common::conn::ConnKey>();
        const VALUE: usize = size_of::<api_guard_common::exchange::Exchange>();
        let aya::maps::Map::LruHashMap(data) = self.map(names::EXCHANGES)? else {
            anyhow::bail!("map EXCHANGES is not an LRU hash");
        };
        let max_entries = data.info()?.max_entries();
        let fd = data.fd().as_fd().as_raw_fd();
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
            .context("cannot read the map's fdinfo")?;
        let memlock = info
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .context("no memlock in the map's fdinfo")?;
        let map: aya::maps::HashMap<&MapData, [u8; KEY], [u8; VALUE]> =
            aya::maps::HashMap::try_from(self.map(names::EXCHANGES)?)?;
        let held = map.keys().filter(|k| k.is_ok()).count();
        Ok(MapMemory {
            max_entries,
            held,
            memlock,
        })
    }

    /// The ingress program, for BPF_PROG_TEST_RUN.
    pub fn ingress(&self) -> Result<&SchedClassifier> {
        self.ebpf
            .program(INGRESS_PROGRAM)
            .context("the ingress program is missing from the object")?
            .try_into()
            .context("the ingress program is not a classifier")
    }

    /// The egress program, for BPF_PROG_TEST_RUN.
    pub fn egress(&self) -> Result<&SchedClassifier> {
        self.ebpf
            .program(EGRESS_PROGRAM)
            .context("the egress program is missing from the object")?
            .try_into()
            .context("the egress program is not a classifier")
    }

    /// The XDP pre-filter, for BPF_PROG_TEST_RUN.
    pub fn xdp(&self) -> Result<&Xdp> {
        self.ebpf
            .program(XDP_PROGRAM)
            .context("the XDP program is missing from the object")?
            .try_into()
            .context("the XDP program is not an XDP program")
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
}

impl MapSource for Datapath {
    fn map(&self, name: &str) -> Result<&Map> {
        self.ebpf
            .map(name)
            .with_context(|| format!("map {name} missing"))
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut Map> {
        self.ebpf
            .map_mut(name)
            .with_context(|| format!("map {name} missing"))
    }
}

/// Loads a classifier that the ingress program tail-calls and puts it in its slot.
fn load_tail(ebpf: &mut Ebpf, name: &str, slot: u32) -> Result<()> {
    let prog: &mut SchedClassifier = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} is missing from the object"))?
        .try_into()
        .with_context(|| format!("program {name} is not a classifier"))?;
    prog.load()
        .map_err(|e| Failure::Rejected(format!("the kernel rejected program {name}: {e:#}")))?;
    let fd = prog.fd()?.try_clone()?;
    let mut tails: ProgramArray<&mut MapData> =
        ProgramArray::try_from(ebpf.map_mut(names::TAILS).context("map TAILS missing")?)?;
    tails
        .set(slot, &fd, 0)
        .with_context(|| format!("cannot install {name}"))?;
    Ok(())
}

pub(super) fn ingress_mut(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier> {
    ebpf.program_mut(INGRESS_PROGRAM)
        .context("the ingress program is missing from the object")?
        .try_into()
        .context("the ingress program is not a classifier")
}

pub(super) fn egress_mut(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier> {
    ebpf.program_mut(EGRESS_PROGRAM)
        .context("the egress program is missing from the object")?
        .try_into()
        .context("the egress program is not a classifier")
}

pub(super) fn xdp_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    ebpf.program_mut(XDP_PROGRAM)
        .context("the XDP program is missing from the object")?
        .try_into()
        .context("the XDP program is not an XDP program")
}

/// 128 random bits from the kernel (getrandom(2) through /dev/urandom, which
/// does not block once the pool is initialised).
fn random_secret() -> Result<[u64; 2]> {
    use std::io::Read as _;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("cannot read /dev/urandom for the key hash's secret")?;
    let (lo, hi) = b.split_at(8);
    Ok([
        u64::from_le_bytes(lo.try_into().expect("8 bytes")),
        u64::from_le_bytes(hi.try_into().expect("8 bytes")),
    ])
}
