//! The end-to-end harness: real test hosts in network namespaces, a real nginx, real
//! clients, the real `api-guard` binary, and BPF_PROG_TEST_RUN for crafted packets.
//! Every resource is an RAII guard, removed on drop, so also when a test panics.
//!
//! Network rules: traffic stays inside namespaces the test made, addressed from
//! 198.18.0.0/15 and 2001:db8::/32.

pub mod attack;
pub mod bpf_maps;
pub mod bpffs;
pub mod cgroup;
pub mod client;
pub mod daemon;
pub mod deploy;
pub mod fleet;
pub mod haproxy;
pub mod netns;
pub mod nginx;
pub mod packet;
pub mod process;
pub mod prom;
pub mod prometheus;
pub mod redis;
pub mod scenario;
pub mod systemd;
pub mod testrun;
pub mod tls;
pub mod upstream;

/// Every namespace, directory and process name the harness makes starts with this,
/// so that `cargo xtask test` can prove nothing outlived the suite.
pub const PREFIX: &str = "agt-";
