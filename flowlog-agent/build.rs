//! Builds the eBPF object (`flowlog-ebpf`'s `flowlog` binary) with aya-build into `OUT_DIR`,
//! where `datapath::load` embeds it.
//!
//! With `AYA_BUILD_SKIP=1` (for `cargo check`/`clippy` on a machine without bpf-linker) an empty
//! stub is written instead; an agent built that way refuses to start and says why.
use std::{env, fs, path::PathBuf};

fn main() -> aya_build::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        fs::write(out_dir.join("flowlog"), [])?;
        return Ok(());
    }
    let ebpf_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"))
        .join("../flowlog-ebpf");
    let ebpf_dir = ebpf_dir.to_str().expect("the workspace path is UTF-8");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "flowlog-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
