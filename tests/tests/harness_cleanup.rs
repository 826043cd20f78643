//! The harness's guards remove what they made even when a test fails midway.

use std::{
    panic::{self, AssertUnwindSafe},
    path::Path,
    process::Command,
};

use api_guard_tests::{
    daemon::{Daemon, program_loaded},
    netns::Topology,
    nginx::Nginx,
};

fn namespaces() -> String {
    String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned()
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn a_failing_test_leaves_nothing_behind() {
    let mut seen = None;
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        let topo = Topology::new(2).unwrap();
        let _nginx = Nginx::start(&topo.server, &[8080]).unwrap();
        let args: Vec<String> = ["run", "--port", "8080", "--iface", "c0", "--iface", "c1"]
            .map(String::from)
            .into();
        let daemon = Daemon::start(&topo.server, &args).unwrap();
        let names: Vec<String> = std::iter::once(topo.server.name().to_string())
            .chain(topo.clients.iter().map(|c| c.ns.name().to_string()))
            .collect();
        seen = Some((names, topo.server.pids(), daemon.prog_id));
        panic!("a test failing with everything running");
    }));
    assert!(result.is_err());
    let (names, pids, prog_id) = seen.expect("the setup ran");
    assert!(
        pids.len() >= 2,
        "nginx and the daemon ran in the server namespace: {pids:?}"
    );
    let left = namespaces();
    for name in &names {
        assert!(
            !left.contains(name.as_str()),
            "namespace {name} left behind"
        );
    }
    for pid in pids {
        assert!(!alive(pid), "process {pid} left behind");
    }
    assert!(
        !program_loaded(prog_id),
        "BPF program {prog_id} left behind"
    );
}
