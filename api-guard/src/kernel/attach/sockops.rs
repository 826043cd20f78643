//! The connection tracker (sock_ops) on a cgroup v2 directory, through a
//! cgroup link.

use std::{os::fd::AsFd as _, path::Path};

use anyhow::{Context as _, Result};
use aya::programs::{CgroupAttachMode, SockOps, links::FdLink};

use super::{Attached, pin_new, pinned_target_is, remove_pin};
use crate::{
    failure::Failure,
    kernel::{
        loader::Datapath,
        object::SOCKOPS_PROGRAM,
        preflight,
        sys::{self, LinkTarget},
    },
};

pub(super) fn attach(dp: &mut Datapath, cgroup: &Path, pin: Option<&Path>) -> Result<Attached> {
    let file = preflight::open_cgroup(cgroup)?;
    let prog: &mut SockOps = dp
        .ebpf
        .program_mut(SOCKOPS_PROGRAM)
        .context("the sock_ops program is missing from the object")?
        .try_into()
        .context("the sock_ops program has the wrong type")?;
    prog.load().map_err(|e| {
        Failure::Rejected(format!("the kernel rejected the sock_ops program: {e:#}"))
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
            let link = sys::open(pin)?;
            Ok(sys::link_update(link.as_fd(), prog_fd)?)
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
        Failure::Rejected(format!(
            "cannot attach the connection tracker to cgroup {}: {:#}",
            cgroup.display(),
            anyhow::Error::new(e)
        ))
    })?;
    if let Some(pin) = pin {
        let link = FdLink::try_from(prog.take_link(id)?)
            .context("the kernel has no cgroup bpf links (Linux 5.7 or newer)")?;
        pin_new(link, pin)?;
    }
    Ok(Attached::New)
}
