//! The kernel programs this daemon embeds, and their names in the object.
//!
//! build.rs builds `api-guard-ebpf` into OUT_DIR with the `bpf` feature (on by
//! default). Without it the crate builds with no eBPF toolchain, for its pure
//! logic (the fuzz target, property tests), and [`OBJECT`] is empty: loading
//! fails with one line saying so.

/// The kernel programs, built by build.rs from `api-guard-ebpf`.
#[cfg(feature = "bpf")]
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/api-guard"));
/// Built without the `bpf` feature: no kernel programs.
#[cfg(not(feature = "bpf"))]
pub static OBJECT: &[u8] = &[];

/// The TC ingress classifier's name in the object.
pub const INGRESS_PROGRAM: &str = "api_guard_ingress";
/// The reset rewriter, tail-called by the ingress program.
pub const RESET_PROGRAM: &str = "api_guard_reset";
/// The sampler, tail-called by the ingress program.
pub const SAMPLE_PROGRAM: &str = "api_guard_sample";
/// Tail-called by the ingress program for every packet to a watched port that
/// the lists did not drop: per-client state, the stream stage, limits, counts.
pub const JUDGE_PROGRAM: &str = "api_guard_judge";
/// Tail-called by the ingress program for a `--trusted-proxy` peer's packet:
/// who its client is (the connection's PROXY header), then the judge.
pub const PROXY_PROGRAM: &str = "api_guard_proxy";
/// The judge for a trusted peer's packets, tail-called by the proxy program.
pub const JUDGE_PROXIED_PROGRAM: &str = "api_guard_judge_proxied";
/// The judges for a TLS port's packets (direct and proxied).
pub const JUDGE_TLS_PROGRAM: &str = "api_guard_judge_tls";
pub const JUDGE_PROXIED_TLS_PROGRAM: &str = "api_guard_judge_proxied_tls";
/// A classifier that does nothing: the floor benchmarks compare against.
pub const FLOOR_PROGRAM: &str = "api_guard_floor";
/// The key stage (key and route limits), tail-called by the judges.
pub const KEYS_PROGRAM: &str = "api_guard_keys";
/// The forwarded stage (`--trusted-hops`), tail-called by the proxied judge.
pub const FORWARDED_PROGRAM: &str = "api_guard_forwarded";
/// The connection tracker's name in the object.
pub const SOCKOPS_PROGRAM: &str = "api_guard_sockops";
/// The TC egress classifier: response framing, pairing and status counts.
pub const EGRESS_PROGRAM: &str = "api_guard_egress";
/// The XDP pre-filter: denied and blocked clients dropped before TC.
pub const XDP_PROGRAM: &str = "api_guard_xdp";
