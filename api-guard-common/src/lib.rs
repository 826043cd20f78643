//! Definitions shared by the kernel programs (`api-guard-ebpf`) and the daemon
//! (`api-guard`). Everything here is `no_std` and `#[repr(C)]` so both sides read the
//! same bytes. What userspace adds (under the `user` feature: `aya::Pod`, names,
//! conversions) sits beside each module in `<module>/user.rs`, so the kernel's
//! view of a module is one file and the user view another.
#![no_std]

pub mod budget;
pub mod checksum;
pub mod client;
pub mod config;
pub mod conn;
pub mod counters;
pub mod detect;
pub mod exchange;
pub mod forwarded;
pub mod http;
pub mod keys;
pub mod maps;
pub mod network;
pub mod ports;
pub mod proxy;
pub mod response;
pub mod sample;
pub mod stream;
pub mod tls;
