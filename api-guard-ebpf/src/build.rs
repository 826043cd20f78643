use which::which;

/// Building the eBPF object needs bpf-linker; rebuild when it changes, so a linker
/// rebuilt against another LLVM takes effect (as aya-template does).
fn main() {
    let bpf_linker = which("bpf-linker").unwrap();
    println!("cargo:rerun-if-changed={}", bpf_linker.to_str().unwrap());
    // BPF cpu v3: atomic fetch and compare-and-swap (the bucket update in
    // enforce.rs), and 32-bit sub-registers. Linux 5.12+; api-guard needs 6.6.
    println!("cargo:rustc-link-arg-bins=--cpu=v3");
}
