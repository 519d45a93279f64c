//! `cargo xtask setup`: installs what building flowlog needs and is missing, one line per step.
//! `run`, `test` and `bench` call it first. When everything is there it only probes (rustup,
//! `rustc --print sysroot`, `bpf-linker --version`, `ldd`) and changes nothing.
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use crate::{bpf_linker, cmd};

/// The toolchain that builds the eBPF crate (aya-build's `Toolchain::default()`).
const NIGHTLY: &str = "nightly";

pub fn setup() -> Result<()> {
    let sysroot = nightly_sysroot()?;
    step(
        "nightly toolchain",
        format!("found at {}", sysroot.display()),
    );
    ensure_rust_src()?;
    bpf_linker::ensure(&sysroot)?;
    step(
        "PATH of the commands xtask starts",
        format!("begins with {}", cmd::cargo_bin_dir()?.display()),
    );
    Ok(())
}

/// Prints one setup line: what was checked, and what came of it.
pub fn step(what: &str, outcome: impl std::fmt::Display) {
    eprintln!("setup: {what}: {outcome}");
}

fn nightly_sysroot() -> Result<PathBuf> {
    let mut rustc = cmd::command("rustc");
    rustc.args([&format!("+{NIGHTLY}"), "--print", "sysroot"]);
    let sysroot = cmd::probe(&mut rustc)
        .context("the nightly toolchain builds the eBPF crate; is it installed?")?;
    Ok(PathBuf::from(sysroot.trim()))
}

/// `-Z build-std=core` for the bpf target needs the nightly's library sources.
fn ensure_rust_src() -> Result<()> {
    let what = "rust-src for the nightly";
    let mut list = cmd::command("rustup");
    list.args(["component", "list", "--toolchain", NIGHTLY, "--installed"]);
    if has_component(&cmd::probe(&mut list)?, "rust-src") {
        step(what, "already installed");
        return Ok(());
    }
    let mut add = cmd::command("rustup");
    add.args(["component", "add", "rust-src", "--toolchain", NIGHTLY]);
    cmd::run(&mut add)?;
    step(what, "installed");
    Ok(())
}

/// Whether `rustup component list --installed` output names `component`.
fn has_component(list: &str, component: &str) -> bool {
    list.lines()
        .any(|line| line.split_whitespace().next() == Some(component))
}

/// Installs the Debian `package` (see [`apt_install`]) unless `binary` is already on PATH.
pub fn ensure_debian_package(binary: &str, package: &str) -> Result<()> {
    let what = format!("{binary} (Debian package {package})");
    if let Some(path) = cmd::which(binary) {
        step(&what, format!("found at {}", path.display()));
        return Ok(());
    }
    apt_install(package)?;
    match cmd::which(binary) {
        Some(path) => step(&what, format!("installed, {}", path.display())),
        None => bail!("installed the Debian package {package}, but {binary} is still not on PATH"),
    }
    Ok(())
}

/// Installs the Debian `package` unless `file` exists (for packages that install no command).
pub fn ensure_debian_file(file: &str, package: &str) -> Result<()> {
    let what = format!("{file} (Debian package {package})");
    if std::path::Path::new(file).exists() {
        step(&what, "found");
        return Ok(());
    }
    apt_install(package)?;
    if !std::path::Path::new(file).exists() {
        bail!("installed the Debian package {package}, but {file} is still missing");
    }
    step(&what, "installed");
    Ok(())
}

/// `apt-get install` as root, non-interactive. The package lists are refreshed only when the
/// install fails, since a fresh machine may have none yet but an update costs time on every
/// other.
fn apt_install(package: &str) -> Result<()> {
    let apt_get = |args: &[&str]| {
        let mut apt = cmd::command("apt-get");
        apt.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        apt
    };
    let install = ["install", "-y", "--no-install-recommends", package];
    if !cmd::status(&mut apt_get(&install))?.success() {
        cmd::run(&mut apt_get(&["update"]))?;
        cmd::run(&mut apt_get(&install))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_rust_src_in_the_installed_list() {
        let list = "cargo-x86_64-unknown-linux-gnu\nrust-src\nrustc-x86_64-unknown-linux-gnu\n";
        assert!(has_component(list, "rust-src"));
        let without = "cargo-x86_64-unknown-linux-gnu\nrust-std-x86_64-unknown-linux-gnu\n";
        assert!(!has_component(without, "rust-src"));
        assert!(!has_component("", "rust-src"));
    }

    #[test]
    fn a_binary_on_path_needs_no_package() {
        // `sh` is on every Debian machine, so this must neither install nor fail.
        ensure_debian_package("sh", "dash").unwrap();
    }
}
