//! The `run` command: check, load, attach, report until SIGINT/SIGTERM, detach.

use std::io;

use anyhow::Result;
use api_guard_common::counters::Event;
use tokio::{
    signal::unix::{SignalKind, signal},
    time::{MissedTickBehavior, interval},
};
use tracing::info;

use crate::{
    cli::RunArgs,
    failure::{ExitCode, Failure},
    loader::{Datapath, LoadOptions},
    policy::Policy,
    preflight::{self, Cgroup2},
    report,
};

pub async fn run(args: RunArgs) -> Result<()> {
    let policy = args
        .policy()
        .map_err(|e| Failure::new(ExitCode::Usage, e))?;
    preflight::check_privileges()?;
    for iface in &args.ifaces {
        preflight::interface_index(iface)?;
    }

    let mut datapath = Datapath::load(&LoadOptions {
        max_clients: args.max_clients,
    })?;
    datapath.watch_ports(&args.ports)?;
    // Kept until exit: a cgroup hierarchy api-guard mounted itself is unmounted then.
    let _cgroup = apply_policy(&mut datapath, &policy, &args)?;
    for iface in &args.ifaces {
        datapath.attach_ingress(iface)?;
    }
    info!(
        ifaces = ?args.ifaces,
        ports = ?args.ports,
        max_clients = args.max_clients,
        prog_id = datapath.ingress_id()?,
        "api-guard ready"
    );

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut ticker = (!args.report_every.is_zero()).then(|| {
        let mut t = interval(args.report_every);
        t.set_missed_tick_behavior(MissedTickBehavior::Delay);
        t
    });

    loop {
        tokio::select! {
            _ = sigint.recv() => { info!("SIGINT: stopping"); break; }
            _ = sigterm.recv() => { info!("SIGTERM: stopping"); break; }
            _ = async { ticker.as_mut().unwrap().tick().await }, if ticker.is_some() => {
                let clients = datapath.clients()?.len();
                info!("{}", report::summary(clients, &datapath.counters()?));
            }
        }
    }

    // Read the final state while the programs are still loaded, then detach.
    let clients = datapath.clients()?;
    let created = datapath.event(Event::ClientsCreated)?;
    let counters = datapath.counters()?;
    drop(datapath);
    info!("detached from {:?}", args.ifaces);
    report::write_final(&mut io::stdout().lock(), &clients, created, &counters)
}

/// Attaches the connection tracker if the policy needs it, then pushes the policy
/// into the maps.
fn apply_policy(
    datapath: &mut Datapath,
    policy: &Policy,
    args: &RunArgs,
) -> Result<Option<Cgroup2>> {
    let mut cgroup = None;
    let mut cookie = 0;
    if policy.max_conns.is_some() {
        let root = match &args.cgroup {
            Some(dir) => Cgroup2::Mounted(dir.clone()),
            None => Cgroup2::find_or_mount()?,
        };
        datapath.attach_sockops(root.path())?;
        cookie = preflight::netns_cookie()?;
        cgroup = Some(root);
    }
    datapath.apply_policy(policy, cookie)?;
    Ok(cgroup)
}
