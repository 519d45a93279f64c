//! `cargo xtask lint`: rustfmt and clippy (warnings are errors) on both toolchains: stable for
//! the host crates, the nightly for the eBPF crate on its own target.
use anyhow::{Result, bail};

use crate::{cmd, setup};

pub fn lint() -> Result<()> {
    // The agent's build.rs links the eBPF object even under clippy: it needs bpf-linker.
    setup::setup()?;
    let checks: [&[&str]; 3] = [
        &["fmt", "--all", "--", "--check"],
        &[
            "clippy",
            "--release",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &[
            "+nightly",
            "clippy",
            "-p",
            "flowlog-ebpf",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ],
    ];
    let mut failed = 0;
    for args in checks {
        if !cmd::status(cmd::cargo().args(args))?.success() {
            failed += 1;
        }
    }
    if failed > 0 {
        bail!("{failed} of {} lint checks failed", checks.len());
    }
    eprintln!("all {} lint checks passed", checks.len());
    Ok(())
}
