//! A classifier on an interface, through a tcx link: the ingress program
//! (requests) or the egress program (responses).

use std::path::Path;

use anyhow::{Context as _, Result};
use aya::programs::{
    TcAttachType,
    links::{FdLink, PinnedLink},
    tc::SchedClassifierLink,
};

use super::{Attached, pin_new, pinned_target_is, remove_pin};
use crate::{
    failure::Failure,
    kernel::{
        loader::{Datapath, egress_mut, ingress_mut},
        preflight,
        sys::LinkTarget,
    },
};

pub(super) fn attach(
    dp: &mut Datapath,
    iface: &str,
    side: TcAttachType,
    pin: Option<&Path>,
) -> Result<Attached> {
    let (prog, name) = match side {
        TcAttachType::Egress => (egress_mut(&mut dp.ebpf)?, "egress"),
        _ => (ingress_mut(&mut dp.ebpf)?, "ingress"),
    };
    if let Some(pin) = pin.filter(|p| p.exists()) {
        // A renamed interface, or one moved away, leaves a link that is not
        // on `iface`: replaced, never taken over.
        let want = LinkTarget::Tcx {
            ifindex: preflight::interface_index(iface)?,
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
    let id = prog
        .attach(iface, side)
        .map_err(|e| Failure::Rejected(format!("cannot attach to the {name} of {iface}: {e}")))?;
    if let Some(pin) = pin {
        let link = FdLink::try_from(prog.take_link(id)?)
            .context("the kernel has no tcx links (api-guard needs Linux 6.6 or newer)")?;
        pin_new(link, pin)?;
    }
    Ok(Attached::New)
}
