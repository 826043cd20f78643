//! Builds the kernel programs (`api-guard-ebpf`, for bpfel-unknown-none on the
//! nightly toolchain) into OUT_DIR, where `kernel/object.rs` embeds them. Only
//! with the `bpf` feature (the default): without it, nothing is built and the
//! crate needs no eBPF toolchain.

fn main() -> anyhow::Result<()> {
    #[cfg(feature = "bpf")]
    {
        use aya_build::{Package, Toolchain, build_ebpf};
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../api-guard-ebpf");
        build_ebpf(
            [Package {
                name: "api-guard-ebpf",
                root_dir: root,
                ..Default::default()
            }],
            Toolchain::default(),
        )?;
    }
    Ok(())
}
