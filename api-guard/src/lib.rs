//! api-guard: an eBPF host API traffic monitor and rate enforcer.
//!
//! One request's way through the daemon reads top to bottom (see
//! ARCHITECTURE.md): the kernel's record → `sources` → `pipeline` → `detect` →
//! `enforce` / `sinks`. Each module imports only from the ones below it in
//! this list of layers, and `kernel` from none of them.
//!
//! - `failure`: typed failures and their exit codes (a leaf);
//! - `clock`: the kernel's clock and wall-clock time (a leaf);
//! - `periodic`: a job on a thread of its own, every period (a leaf);
//! - `kernel`: the only code that imports aya or calls bpf(2): the embedded
//!   programs, the pin-dir layout, typed maps, attachments, pins, preflight
//!   checks, the sample ring, the heartbeat;
//! - `policy`: the limits and networks the flags ask for, compiled into the
//!   kernel's policy tables (pure);
//! - `sources`: kernel records to owned events, one `Source` per producer, and
//!   the one ring reader;
//! - `pipeline`: pure stages on events (the HTTP head parser);
//! - `detect`: detectors that turn events into findings (`--require-auth`);
//! - `enforce`: the one userspace writer of kernel verdicts (blocks, expiry);
//! - `sinks`: the access log, the Prometheus metrics, the report;
//! - `cli`: the flags, parsed and checked (plain values out);
//! - `commands`: the operator commands, one file each;
//! - `daemon`: the `run` command's life cycle and its sample flow.
//!
//! Without the `bpf` feature (on by default) the crate builds with no eBPF
//! toolchain and embeds no kernel programs: for the pure logic, which the fuzz
//! target and the property tests use as a library.

pub mod cli;
pub mod clock;
pub mod commands;
pub mod daemon;
pub mod detect;
pub mod enforce;
pub mod failure;
pub mod kernel;
pub mod periodic;
pub mod pipeline;
pub mod policy;
pub mod sinks;
pub mod sources;
