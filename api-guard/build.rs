//! Builds the kernel programs (`api-guard-ebpf`, for bpfel-unknown-none on the
//! nightly toolchain) into OUT_DIR, where `loader.rs` embeds them.

use aya_build::{Package, Toolchain, build_ebpf};

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../api-guard-ebpf");
    build_ebpf(
        [Package {
            name: "api-guard-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
