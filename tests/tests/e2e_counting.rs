//! The real daemon, attached in a server namespace, counting the requests real
//! clients send to a real nginx over veth, on IPv4 and IPv6.

use anyhow::Result;
use api_guard_tests::{
    client::{Connections, curl, url},
    daemon::{Daemon, program_loaded},
    netns::Topology,
    nginx::Nginx,
};

const API: u16 = 8080;
const OTHER: u16 = 8081;

/// A server with nginx on both ports, one client, and the daemon watching API only.
struct Setup {
    daemon: Daemon,
    // Drop order: daemon, nginx, then the namespaces.
    nginx: Nginx,
    topo: Topology,
}

fn setup() -> Result<Setup> {
    let topo = Topology::new(1)?;
    let nginx = Nginx::start(&topo.server, &[API, OTHER])?;
    let mut args = vec!["run".to_string(), "--port".into(), API.to_string()];
    for iface in &topo.server_ifaces {
        args.extend(["--iface".into(), iface.clone()]);
    }
    let daemon = Daemon::start(&topo.server, &args)?;
    Ok(Setup {
        daemon,
        nginx,
        topo,
    })
}

/// Sends `n` requests to `port` in the given way and returns the daemon's count
/// for the client after stopping it.
fn count(ipv6: bool, port: u16, n: usize, mode: Connections) -> Result<u64> {
    let s = setup()?;
    let client = &s.topo.clients[0];
    let urls: Vec<String> = (0..n)
        .map(|i| url(client.server(ipv6), port, &format!("/v1/items/{i}")))
        .collect();
    let batch = curl(&client.ns, &urls, mode)?;
    assert!(batch.statuses.iter().all(|&c| c == 200), "{batch:?}");
    let expected_connects = match mode {
        Connections::New => n as u32,
        Connections::KeepAlive => 1,
    };
    assert_eq!(batch.connects, expected_connects, "curl's connections");

    // nginx saw every request: the traffic was real.
    let served = s.nginx.access_log()?;
    let from_client = served
        .iter()
        .filter(|l| l.client == client.addr(ipv6).to_string() && l.server_port == port)
        .count();
    assert_eq!(from_client, n, "nginx's access log");

    let prog_id = s.daemon.prog_id;
    let stopped = s.daemon.stop()?;
    assert!(stopped.status.success(), "daemon exit: {stopped:?}");
    assert!(
        !program_loaded(prog_id),
        "the ingress program outlived the daemon"
    );
    let requests = stopped.requests_from(&client.key(ipv6).to_string())?;
    if port == API {
        assert_eq!(stopped.counter("requests", "allowed")?, requests);
        assert_eq!(
            stopped.counter("connections", "allowed")?,
            u64::from(expected_connects)
        );
    }
    Ok(requests)
}

#[test]
fn ipv4_new_connections_are_counted_exactly() -> Result<()> {
    assert_eq!(count(false, API, 5, Connections::New)?, 5);
    Ok(())
}

#[test]
fn ipv4_keepalive_requests_are_counted_exactly() -> Result<()> {
    assert_eq!(count(false, API, 7, Connections::KeepAlive)?, 7);
    Ok(())
}

#[test]
fn ipv6_new_connections_are_counted_exactly() -> Result<()> {
    assert_eq!(count(true, API, 5, Connections::New)?, 5);
    Ok(())
}

#[test]
fn ipv6_keepalive_requests_are_counted_exactly() -> Result<()> {
    assert_eq!(count(true, API, 7, Connections::KeepAlive)?, 7);
    Ok(())
}

#[test]
fn other_ports_count_nothing() -> Result<()> {
    assert_eq!(count(false, OTHER, 4, Connections::New)?, 0);
    assert_eq!(count(true, OTHER, 4, Connections::KeepAlive)?, 0);
    Ok(())
}

#[test]
fn sigint_also_stops_cleanly() -> Result<()> {
    let s = setup()?;
    let prog_id = s.daemon.prog_id;
    assert!(program_loaded(prog_id));
    let stopped = s.daemon.stop_with(libc::SIGINT)?;
    assert!(stopped.status.success(), "{stopped:?}");
    assert!(!program_loaded(prog_id));
    assert!(stopped.stderr.contains("SIGINT"));
    Ok(())
}
