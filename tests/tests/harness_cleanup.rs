//! The harness's guards remove what they made even when a test fails midway.

use std::{
    fs,
    panic::{self, AssertUnwindSafe},
    path::Path,
    process::Command,
};

use api_guard_tests::{
    bpffs::BpfFs,
    daemon::{Daemon, program_unloaded},
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

/// What a failed test had running, to look for afterwards.
struct Seen {
    namespaces: Vec<String>,
    pids: Vec<i32>,
    prog_id: u32,
    mount: String,
}

#[test]
fn a_failing_test_leaves_nothing_behind() {
    let mut seen = None;
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        let bpffs = BpfFs::mount().unwrap();
        let topo = Topology::new(2).unwrap();
        let _nginx = Nginx::start(&topo.server, &[8080]).unwrap();
        let mut args: Vec<String> = ["run", "--port", "8080", "--iface", "c0", "--iface", "c1"]
            .map(String::from)
            .into();
        args.extend(["--pin-dir".into(), bpffs.pin_dir().display().to_string()]);
        let daemon = Daemon::start(&topo.server, &args).unwrap();
        seen = Some(Seen {
            namespaces: std::iter::once(topo.server.name().to_string())
                .chain(topo.clients.iter().map(|c| c.ns.name().to_string()))
                .collect(),
            pids: topo.server.pids(),
            prog_id: daemon.prog_id,
            mount: bpffs.path().display().to_string(),
        });
        panic!("a test failing with everything running");
    }));
    assert!(result.is_err());
    let seen = seen.expect("the setup ran");
    assert!(
        seen.pids.len() >= 2,
        "nginx and the daemon ran in the server namespace: {:?}",
        seen.pids
    );
    let left = namespaces();
    for name in &seen.namespaces {
        assert!(
            !left.contains(name.as_str()),
            "namespace {name} left behind"
        );
    }
    for pid in &seen.pids {
        assert!(!alive(*pid), "process {pid} left behind");
    }
    assert!(
        program_unloaded(seen.prog_id),
        "BPF program {} left behind",
        seen.prog_id
    );
    let mounts = fs::read_to_string("/proc/mounts").unwrap();
    assert!(
        !mounts.contains(&seen.mount),
        "bpffs at {} left mounted",
        seen.mount
    );
}
