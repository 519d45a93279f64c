//! The eBPF binary is linked (and code-generated) by `bpf-linker`, an undeclared dependency:
//! rebuild when it changes, and tell it how to generate code.
fn main() {
    if let Ok(bpf_linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
    // Packet headers sit at offsets with no alignment promise (14-byte Ethernet header, VLAN
    // tags, IPv4 options). Without this feature LLVM assembles every multi-byte field from single
    // bytes; with it, one load per field. The verifier accepts misaligned packet loads on
    // architectures with efficient unaligned access (x86-64, arm64), where flowlog runs.
    println!("cargo:rustc-link-arg-bins=--cpu-features=+allows-misaligned-mem-access");
}
