//! api-guard: an eBPF host API traffic monitor and rate enforcer.
//!
//! The daemon is a few modules with one job each: `cli` (flags), `policy` (the
//! limits and networks the flags ask for), `preflight`
//! (privileges and interfaces, checked before anything is loaded), `loader` (load and
//! attach the kernel programs), `maps` (typed access to the kernel's maps), `report`
//! (what the daemon tells the operator) and `daemon` (the `run` command's life cycle).

pub mod access_log;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod control;
pub mod daemon;
pub mod failure;
pub mod loader;
pub mod maps;
pub mod metrics;
pub mod pins;
pub mod policy;
pub mod preflight;
pub mod report;
pub mod request;
#[cfg(test)]
mod request_props;
pub mod sampler;
