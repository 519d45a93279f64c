//! bpf-linker, built against the nightly's own libLLVM as TOOLCHAIN.md says: the nightly's
//! libLLVM is symlinked into a stable prefix whose `lib/` becomes the binary's RUNPATH, and
//! bpf-linker is built with `LLVM_PREFIX` pointing there.
//!
//! It is left alone when `bpf-linker --version` prints the pinned version and the libLLVM it
//! loads (per `ldd`) is the nightly's current one. A nightly whose libLLVM file name changed
//! leaves the old symlink dangling: the symlinks are redone and bpf-linker rebuilt.
use std::{
    fs, io,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, anyhow};

use crate::{cmd, setup::step};

const VERSION: &str = "0.13.0";
/// The bpf-linker feature for the nightly's LLVM major version.
const LLVM_FEATURE: &str = "llvm-22";

pub fn ensure(nightly_sysroot: &Path) -> Result<()> {
    let nightly_lib = nightly_sysroot.join("lib");
    let names = fs::read_dir(&nightly_lib)
        .with_context(|| format!("cannot list {}", nightly_lib.display()))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .collect::<Vec<_>>();
    let llvm = nightly_lib.join(
        pick_llvm_dylib(&names)
            .with_context(|| format!("looking for libLLVM in {}", nightly_lib.display()))?,
    );

    let prefix = cmd::home()?.join(".local/share/flowlog-llvm");
    let changed = link_llvm(&prefix.join("lib"), &llvm)?;
    step(
        "libLLVM symlinks for bpf-linker",
        format!(
            "{} -> {}: {}",
            prefix.join("lib").display(),
            llvm.display(),
            if changed {
                "linked"
            } else {
                "already in place"
            }
        ),
    );

    let what = format!("bpf-linker {VERSION} linked against the nightly's libLLVM");
    match check(&llvm) {
        Ok(path) => step(&what, format!("already installed at {}", path.display())),
        Err(reason) => {
            step(&what, format!("installing, because {reason}"));
            install(&prefix)?;
            let path =
                check(&llvm).map_err(|reason| anyhow!("installed bpf-linker, but {reason}"))?;
            step(&what, format!("installed at {}", path.display()));
        }
    }
    Ok(())
}

/// The nightly's libLLVM among the file names of its `lib/`: `libLLVM.so.<version>-rust-...`.
/// (`libLLVM-<major>-rust-....so` beside it is a linker script, not the library.)
fn pick_llvm_dylib(names: &[String]) -> Result<&str> {
    let mut found = names.iter().filter(|name| name.starts_with("libLLVM.so."));
    match (found.next(), found.next()) {
        (Some(name), None) => Ok(name),
        (None, _) => Err(anyhow!("no libLLVM.so.* (the nightly ships one)")),
        (Some(a), Some(b)) => Err(anyhow!("more than one libLLVM.so.*: {a}, {b}")),
    }
}

/// Makes `lib_dir/libLLVM.so` (for the link step) and `lib_dir/<llvm's name>` (for the loader)
/// point at `llvm`, and removes dangling `libLLVM*` links an earlier nightly left. Returns
/// whether anything changed.
fn link_llvm(lib_dir: &Path, llvm: &Path) -> Result<bool> {
    fs::create_dir_all(lib_dir).with_context(|| format!("cannot create {}", lib_dir.display()))?;
    let so = llvm.file_name().context("libLLVM's path has a file name")?;
    let mut changed = false;
    for entry in fs::read_dir(lib_dir)? {
        let path = entry?.path();
        let stale = path.file_name().is_some_and(|name| {
            name.to_string_lossy().starts_with("libLLVM") && name != "libLLVM.so" && name != so
        });
        // `exists` follows the link: false for a link whose target is gone.
        if stale && path.is_symlink() && !path.exists() {
            fs::remove_file(&path)?;
            changed = true;
        }
    }
    for name in [Path::new("libLLVM.so"), Path::new(so)] {
        let link = lib_dir.join(name);
        if fs::read_link(&link).is_ok_and(|target| target == llvm) {
            continue;
        }
        match fs::remove_file(&link) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => {
                return Err(err).with_context(|| format!("cannot replace {}", link.display()));
            }
            _ => {}
        }
        symlink(llvm, &link).with_context(|| format!("cannot create {}", link.display()))?;
        changed = true;
    }
    Ok(changed)
}

/// The bpf-linker found on the children's PATH if it is the pinned version and loads `llvm`;
/// otherwise why not.
fn check(llvm: &Path) -> Result<PathBuf, String> {
    let path = cmd::which("bpf-linker").ok_or("it is not on PATH")?;
    let output = cmd::probe(cmd::command(&path).arg("--version"))
        .map_err(|err| format!("`bpf-linker --version` failed: {err:#}"))?;
    match parse_version(&output) {
        Some(VERSION) => {}
        Some(other) => return Err(format!("{} is version {other}", path.display())),
        None => return Err(format!("`bpf-linker --version` printed {output:?}")),
    }
    let ldd = cmd::probe(cmd::command("ldd").arg(&path))
        .map_err(|err| format!("cannot tell which libLLVM it loads: {err:#}"))?;
    match loaded_llvm(&ldd) {
        None => Err(format!("{} loads no shared libLLVM", path.display())),
        Some(Loaded::NotFound(name)) => Err(format!("its {name} is not found")),
        Some(Loaded::At(lib)) if same_file(Path::new(lib), llvm) => Ok(path),
        Some(Loaded::At(lib)) => Err(format!("it loads {lib}, not {}", llvm.display())),
    }
}

/// The version in `bpf-linker --version` output (`bpf-linker 0.13.0`).
fn parse_version(output: &str) -> Option<&str> {
    let word = output.lines().next()?.split_whitespace().last()?;
    Some(word.strip_prefix('v').unwrap_or(word))
}

#[derive(Debug, PartialEq)]
enum Loaded<'a> {
    At(&'a str),
    NotFound(&'a str),
}

/// Where the libLLVM line of `ldd`'s output says it is loaded from.
fn loaded_llvm(ldd: &str) -> Option<Loaded<'_>> {
    let line = ldd
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("libLLVM"))?;
    let (name, place) = line.split_once(" => ")?;
    if place.trim() == "not found" {
        return Some(Loaded::NotFound(name.trim()));
    }
    let path = place.split(" (").next()?.trim();
    Some(Loaded::At(path))
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn install(prefix: &Path) -> Result<()> {
    let mut cargo = cmd::cargo();
    // Outside the workspace, so its `.cargo/config.toml` cannot change how bpf-linker is built.
    cargo.current_dir(prefix).env("LLVM_PREFIX", prefix).args([
        "install",
        "bpf-linker",
        "--version",
        VERSION,
        "--locked",
        "--no-default-features",
        "--features",
        LLVM_FEATURE,
        // Replaces a bpf-linker of the same version built against another libLLVM.
        "--force",
    ]);
    cmd::run(&mut cargo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_version_line() {
        assert_eq!(parse_version("bpf-linker 0.13.0\n"), Some("0.13.0"));
        assert_eq!(parse_version("bpf-linker v0.9.15"), Some("0.9.15"));
        assert_eq!(parse_version(""), None);
    }

    #[test]
    fn reads_the_libllvm_line_of_ldd() {
        let found = "\tlinux-vdso.so.1 (0x00007ffd)\n\
            \tlibLLVM.so.22.1-rust-1.97.0-nightly => /root/.local/share/flowlog-llvm/lib/libLLVM.so.22.1-rust-1.97.0-nightly (0x00007f03)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f02)\n";
        assert_eq!(
            loaded_llvm(found),
            Some(Loaded::At(
                "/root/.local/share/flowlog-llvm/lib/libLLVM.so.22.1-rust-1.97.0-nightly"
            ))
        );
        let missing = "\tlibLLVM.so.21.1-rust-1.96.0-nightly => not found\n";
        assert_eq!(
            loaded_llvm(missing),
            Some(Loaded::NotFound("libLLVM.so.21.1-rust-1.96.0-nightly"))
        );
        assert_eq!(loaded_llvm("\tlibc.so.6 => /lib/libc.so.6 (0x1)\n"), None);
    }

    #[test]
    fn picks_the_library_not_the_linker_script() {
        let names = [
            "libLLVM-22-rust-1.97.0-nightly.so",
            "libLLVM.so.22.1-rust-1.97.0-nightly",
            "librustc_driver-b5a965480ee51f9a.so",
        ]
        .map(String::from);
        assert_eq!(
            pick_llvm_dylib(&names).unwrap(),
            "libLLVM.so.22.1-rust-1.97.0-nightly"
        );
        assert!(pick_llvm_dylib(&names[2..]).is_err());
    }

    /// A scratch directory under the system's temp dir, removed on drop.
    struct Scratch(PathBuf);
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn links_once_and_relinks_when_the_nightly_changes() {
        let dir = std::env::temp_dir().join(format!("xtask-link-llvm-{}", std::process::id()));
        let scratch = Scratch(dir);
        let (nightly, lib) = (scratch.0.join("nightly"), scratch.0.join("prefix/lib"));
        fs::create_dir_all(&nightly).unwrap();
        let old = nightly.join("libLLVM.so.22.1-rust-1.97.0-nightly");
        fs::write(&old, "old").unwrap();

        assert!(link_llvm(&lib, &old).unwrap());
        assert!(
            !link_llvm(&lib, &old).unwrap(),
            "a second run changes nothing"
        );
        assert_eq!(fs::read_link(lib.join("libLLVM.so")).unwrap(), old);

        // A new nightly: rustup removed the old library and shipped one with another name.
        fs::remove_file(&old).unwrap();
        let new = nightly.join("libLLVM.so.23.1-rust-1.98.0-nightly");
        fs::write(&new, "new").unwrap();
        assert!(link_llvm(&lib, &new).unwrap());
        let mut names = fs::read_dir(&lib)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect::<Vec<_>>();
        names.sort();
        assert_eq!(names, ["libLLVM.so", "libLLVM.so.23.1-rust-1.98.0-nightly"]);
        assert_eq!(fs::read_to_string(lib.join("libLLVM.so")).unwrap(), "new");
        assert!(!link_llvm(&lib, &new).unwrap());
    }
}
