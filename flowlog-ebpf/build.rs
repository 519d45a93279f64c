//! The eBPF binary is linked by `bpf-linker`, an undeclared dependency: rebuild when it changes.
fn main() {
    if let Ok(bpf_linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
}
