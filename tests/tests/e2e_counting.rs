//! The real daemon, attached in a server namespace, counting the requests real
//! clients send to a real nginx over veth, on IPv4 and IPv6.

use anyhow::Result;
use api_guard_tests::{
    client::{Connections, Opts, curl, url},
    daemon::{program_loaded, program_unloaded},
    scenario::{API, OTHER, Scenario},
};

/// Sends `n` requests to `port` in the given way and returns the daemon's count
/// for the client after stopping it.
fn count(ipv6: bool, port: u16, n: usize, mode: Connections) -> Result<u64> {
    let s = Scenario::start(1, &[])?;
    let client = s.client(0);
    let urls: Vec<String> = (0..n)
        .map(|i| url(client.server(ipv6), port, &format!("/v1/items/{i}")))
        .collect();
    let batch = curl(&client.ns, &urls, Opts::new(mode))?;
    assert_eq!(batch.ok(), n, "{batch:?}");
    let expected_connects = match mode {
        Connections::KeepAlive => 1,
        _ => n as u32,
    };
    assert_eq!(batch.connects, expected_connects, "curl's connections");
    // nginx saw every request: the traffic was real.
    assert_eq!(
        s.served(&client.addr(ipv6).to_string(), port)?,
        n,
        "nginx's access log"
    );

    let prog_id = s.daemon.prog_id;
    let key = client.key(ipv6).to_string();
    let (stopped, ..) = s.stop()?;
    assert!(stopped.status.success(), "daemon exit: {stopped:?}");
    assert!(
        program_unloaded(prog_id),
        "the ingress program outlived the daemon"
    );
    let requests = stopped.requests_from(&key)?;
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
    let s = Scenario::start(1, &[])?;
    let prog_id = s.daemon.prog_id;
    assert!(program_loaded(prog_id));
    let stopped = s.daemon.stop_with(libc::SIGINT)?;
    assert!(stopped.status.success(), "{stopped:?}");
    assert!(program_unloaded(prog_id));
    assert!(stopped.stderr.contains("SIGINT"));
    Ok(())
}
