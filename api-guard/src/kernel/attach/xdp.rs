//! The XDP pre-filter on an interface, in native (driver) mode only: generic
//! XDP runs after the skb is built, where it saves nothing over TC.

use std::path::Path;

use anyhow::{Context as _, Result};
use aya::programs::{
    XdpMode,
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
};

use super::{Attached, pin_new, pinned_target_is, remove_pin};
use crate::{
    failure::Failure,
    kernel::{
        loader::{Datapath, xdp_mut},
        preflight,
        sys::LinkTarget,
    },
};

pub(super) fn attach(dp: &mut Datapath, iface: &str, pin: Option<&Path>) -> Result<Attached> {
    let prog = xdp_mut(&mut dp.ebpf)?;
    if let Some(pin) = pin.filter(|p| p.exists()) {
        let want = LinkTarget::Xdp {
            ifindex: preflight::interface_index(iface)?,
        };
        let taken = pinned_target_is(pin, &want)
            .and_then(|()| Ok(PinnedLink::from_pin(pin)?))
            .and_then(|pinned| Ok(XdpLink::try_from(FdLink::from(pinned))?))
            .and_then(|link| Ok(prog.attach_to_link(link)?));
        match taken {
            Ok(_) => return Ok(Attached::TakenOver),
            Err(e) => {
                tracing::warn!(pin = %pin.display(), "replacing a stale pinned link: {e:#}");
                remove_pin(pin)?;
            }
        }
    }
    let id = prog.attach(iface, XdpMode::Driver).map_err(|e| {
        Failure::Rejected(format!(
            "cannot attach XDP in native mode to {iface}: {:#}",
            anyhow::Error::new(e)
        ))
    })?;
    if let Some(pin) = pin {
        // An XDP link: a netlink attachment could not be pinned.
        let link = FdLink::try_from(prog.take_link(id)?)
            .context("the kernel made no XDP link (api-guard needs Linux 6.6 or newer)")?;
        pin_new(link, pin)?;
    }
    Ok(Attached::New)
}
