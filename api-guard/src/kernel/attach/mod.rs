//! Attachments: where a kernel program runs, one kind per file (the TC ingress
//! classifier, the sock_ops connection tracker; TC egress and uprobes join as
//! new kinds). Each is a bpf link. Unpinned, it goes when the process does.
//! Pinned in the pin dir, it outlives it: a crashed or stopped daemon's programs
//! keep running from the pinned state, and the next daemon swaps its programs
//! into the same links atomically (no gap, no second attachment).

mod sockops;
mod ssl_sites;
mod tc;
mod uprobe;
mod xdp;

pub use uprobe::{Site, SslSites, TlsLinks, ssl_sites};

use std::{
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

use super::{
    layout,
    loader::Datapath,
    sys::{self, LinkTarget},
};

/// Where a program is attached.
#[derive(Clone, Copy, Debug)]
pub enum Attachment<'a> {
    /// The ingress classifier on an interface, through a tcx link.
    TcIngress { iface: &'a str },
    /// The egress classifier (responses) on an interface, through a tcx link.
    TcEgress { iface: &'a str },
    /// The XDP pre-filter on an interface, in native (driver) mode, through
    /// an XDP link.
    Xdp { iface: &'a str },
    /// The connection tracker on a cgroup v2 directory (the root: every socket
    /// on the host; it filters by network namespace).
    SockOps { cgroup: &'a Path },
}

impl Attachment<'_> {
    /// Where its link is pinned in the pin dir `dir`.
    pub fn pin(&self, dir: &Path) -> PathBuf {
        match self {
            Attachment::TcIngress { iface } => layout::ingress_link(dir, iface),
            Attachment::TcEgress { iface } => layout::egress_link(dir, iface),
            Attachment::Xdp { iface } => layout::xdp_link(dir, iface),
            Attachment::SockOps { .. } => layout::sockops_link(dir),
        }
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

impl Datapath {
    /// Attaches a program where `what` says. With `pin`, its link is pinned
    /// there; a link already pinned there (an earlier daemon's) and attached to
    /// the same place is taken over: this program replaces the old one in it,
    /// atomically. A pinned link attached elsewhere is replaced, never taken over.
    pub fn attach(&mut self, what: Attachment<'_>, pin: Option<&Path>) -> Result<Attached> {
        match what {
            Attachment::TcIngress { iface } => {
                tc::attach(self, iface, aya::programs::TcAttachType::Ingress, pin)
            }
            Attachment::TcEgress { iface } => {
                tc::attach(self, iface, aya::programs::TcAttachType::Egress, pin)
            }
            Attachment::Xdp { iface } => xdp::attach(self, iface, pin),
            Attachment::SockOps { cgroup } => sockops::attach(self, cgroup, pin),
        }
    }
}

/// Pins a link just made at `pin`, so it outlives the process.
fn pin_new(link: aya::programs::links::FdLink, pin: &Path) -> Result<()> {
    link.pin(pin)
        .with_context(|| format!("cannot pin the link at {}", pin.display()))?;
    Ok(())
}

fn remove_pin(pin: &Path) -> Result<()> {
    std::fs::remove_file(pin)
        .with_context(|| format!("cannot remove the stale pin {}", pin.display()))
}

/// Whether the link pinned at `pin` is attached to `want`.
fn pinned_target_is(pin: &Path, want: &LinkTarget) -> Result<()> {
    let link = sys::open(pin)?;
    let found = sys::link_target(link.as_fd())?;
    anyhow::ensure!(&found == want, "it is attached to {found:?}, not {want:?}");
    Ok(())
}
