use which::which;

/// Building the eBPF object needs bpf-linker; rebuild when it changes, so a linker
/// rebuilt against another LLVM takes effect (as aya-template does).
fn main() {
    let bpf_linker = which("bpf-linker").unwrap();
    println!("cargo:rerun-if-changed={}", bpf_linker.to_str().unwrap());
}
