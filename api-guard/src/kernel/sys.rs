//! Raw bpf(2) calls that aya 0.14 does not offer: opening a pinned object,
//! reading what a link is attached to, `BPF_LINK_UPDATE` on a cgroup link, and
//! `BPF_MAP_LOOKUP_BATCH`. The only `libc::SYS_bpf` calls in the crate.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::Path,
};

use aya::maps::MapData;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_TYPE_CGROUP: u32 = 3;
const BPF_LINK_TYPE_TCX: u32 = 11;
const BPF_LINK_TYPE_XDP: u32 = 6;

/// What a pinned link is attached to.
#[derive(Debug, PartialEq, Eq)]
pub enum LinkTarget {
    Tcx { ifindex: u32 },
    Cgroup { id: u64 },
    Xdp { ifindex: u32 },
    Other,
}

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
pub fn link_target(link: BorrowedFd<'_>) -> io::Result<LinkTarget> {
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
        BPF_LINK_TYPE_XDP => LinkTarget::Xdp {
            ifindex: info[2] as u32,
        },
        _ => LinkTarget::Other,
    })
}

/// `BPF_LINK_UPDATE`: `link` runs `prog` from now on.
pub fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = [0u64; 16];
    // link_fd, new_prog_fd; flags and old_prog_fd stay 0.
    attr[0] = link.as_raw_fd() as u32 as u64 | ((prog.as_raw_fd() as u32 as u64) << 32);
    bpf(BPF_LINK_UPDATE, &mut attr)?;
    Ok(())
}

/// Entries read per `BPF_MAP_LOOKUP_BATCH` call.
const BATCH: u32 = 4096;

/// Every entry of a hash map through `BPF_MAP_LOOKUP_BATCH`, handed to `each`
/// a batch at a time: one syscall per [`BATCH`] entries, where aya's iterator
/// makes two per entry, and no copy of the whole map. Entries evicted meanwhile
/// are simply not seen; none is seen twice.
pub fn lookup_batch<K: aya::Pod, V: aya::Pod>(
    map: &MapData,
    mut each: impl FnMut(&[K], &[V]),
) -> io::Result<()> {
    // The kernel writes key_size and value_size bytes an entry: the buffers
    // must be laid out exactly so.
    let info = map.info().map_err(io::Error::other)?;
    if (info.key_size() as usize, info.value_size() as usize)
        != (std::mem::size_of::<K>(), std::mem::size_of::<V>())
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the map's key or value size is not the type's",
        ));
    }
    let fd = map.fd().as_fd().as_raw_fd();
    let mut keys: Vec<K> = Vec::with_capacity(BATCH as usize);
    let mut values: Vec<V> = Vec::with_capacity(BATCH as usize);
    // The kernel's opaque position in the table (a bucket index for hashes).
    let (mut token_in, mut token_out) = (0u64, 0u64);
    let mut first = true;
    loop {
        // `union bpf_attr`'s batch member: in_batch, out_batch, keys, values,
        // count, map_fd, elem_flags, flags; zero past it.
        let mut attr = [0u64; 16];
        attr[0] = if first {
            0
        } else {
            &token_in as *const u64 as u64
        };
        attr[1] = &mut token_out as *mut u64 as u64;
        attr[2] = keys.as_mut_ptr() as u64;
        attr[3] = values.as_mut_ptr() as u64;
        attr[4] = u64::from(BATCH) | ((fd as u32 as u64) << 32);
        // keys and values have room for BATCH entries of exactly the map's key
        // and value sizes (checked above); the tokens hold the kernel's u32 or
        // u64 position.
        let err = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr).err();
        // The kernel wrote back how many entries it filled in, error or not.
        let count = (attr[4] as u32).min(BATCH) as usize;
        // SAFETY: the kernel initialised `count` keys and values (Pod: any
        // bytes are valid values), within the capacity reserved above.
        unsafe {
            keys.set_len(count);
            values.set_len(count);
        }
        each(&keys, &values);
        keys.clear();
        values.clear();
        match err {
            None => {}
            // The end of the table.
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Some(e) => return Err(e),
        }
        token_in = token_out;
        first = false;
    }
}
