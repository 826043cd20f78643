#![no_std]
// This crate is a binary for bpfel-unknown-none; the library target only exists so
// that api-guard can name it as a build dependency (see api-guard/build.rs).
