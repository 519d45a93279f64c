//! The kernels of the test matrix: Debian's own packages, resolved and downloaded through a
//! private apt configuration (`apt.rs`), so the machine's apt set-up is never touched.
//!
//! Each kernel is unpacked once into `~/.cache/flowlog/kernels/with-<modules>/<release>/`: the uncompressed
//! `vmlinux` (booted through its PVH entry, faster under TCG than the compressed image) and the
//! few modules the tests need, decompressed and listed in load order in `modules.order`. A later
//! run finds it there and downloads nothing; the archive is asked again for a newer release at
//! most once a day, and when it cannot be reached the newest cached release is used.
use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

use crate::{apt::PrivateApt, cmd, setup::step};

/// A kernel of the matrix, as named on the command line (`--kernels 5.10,6.1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelSpec {
    pub name: &'static str,
    /// Debian suites that carry it, newest last.
    suites: &'static [&'static str],
    /// The upstream version prefix of its `linux-image-*-amd64` packages; empty for "the
    /// newest in these suites".
    version_prefix: &'static str,
}

/// Debian's kernels the matrix boots: the LTS kernels of the last three Debian releases, and
/// the newest backport.
pub const MATRIX: &[KernelSpec] = &[
    KernelSpec {
        name: "5.10",
        suites: &["bullseye", "bullseye-security"],
        version_prefix: "5.10.",
    },
    KernelSpec {
        name: "6.1",
        suites: &["bookworm", "bookworm-security"],
        version_prefix: "6.1.",
    },
    KernelSpec {
        name: "6.12",
        suites: &["trixie", "trixie-security"],
        version_prefix: "6.12.",
    },
    KernelSpec {
        name: "newest",
        suites: &["trixie-backports"],
        version_prefix: "",
    },
];

/// Modules the tests need that Debian builds as modules (veth pairs, clsact, TC BPF filters).
const MODULES: &[&str] = &["veth", "sch_ingress", "cls_bpf", "act_bpf"];

/// A kernel ready to boot.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub spec: KernelSpec,
    /// `uname -r` of the kernel, e.g. `6.1.0-57-amd64`.
    pub release: String,
    /// The uncompressed kernel image (an ELF with a PVH entry point).
    pub vmlinux: PathBuf,
    /// Decompressed modules, in the order to load them.
    pub modules: Vec<PathBuf>,
}

impl Kernel {
    /// `(major, minor)` of the release.
    pub fn version(&self) -> (u32, u32) {
        version_of(&self.release)
    }
}

/// `(major, minor)` of a release such as `6.12.118+deb13-amd64` or `5.10.0-46-amd64`.
pub fn version_of(release: &str) -> (u32, u32) {
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse().unwrap_or(0));
    (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0))
}

/// The specs named by `--kernels` (a comma-separated list of matrix names).
pub fn parse_list(list: &str) -> Result<Vec<KernelSpec>> {
    list.split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(|name| {
            MATRIX
                .iter()
                .find(|spec| spec.name == name)
                .copied()
                .with_context(|| {
                    let names: Vec<&str> = MATRIX.iter().map(|s| s.name).collect();
                    format!(
                        "--kernels: unknown kernel {name:?}; expected host or {}",
                        names.join(", ")
                    )
                })
        })
        .collect()
}

fn cache_root() -> Result<PathBuf> {
    Ok(cmd::home()?.join(".cache/flowlog/kernels"))
}

/// Where kernels unpacked with this checkout's module list live: one directory per list, so
/// checkouts (branches) that need other modules share the cache without ever loading a module
/// they did not ask for, and without unpacking in turn over each other.
fn unpacked_root(root: &Path) -> PathBuf {
    root.join(format!("with-{}", MODULES.join(",")))
}

/// Resolves, downloads (if not cached) and unpacks the kernel of `spec`.
pub fn ensure(spec: KernelSpec) -> Result<Kernel> {
    let root = cache_root()?;
    let apt = PrivateApt::new(&root.join("apt").join(spec.name), spec.suites)?;
    let release = match newest_release(&apt, spec) {
        Ok(release) => release,
        Err(error) => match newest_cached(&unpacked_root(&root), spec)? {
            Some(release) => {
                step(
                    &format!("kernel {}", spec.name),
                    format!("archive unavailable ({error:#}); using the cached {release}"),
                );
                release
            }
            None => return Err(error.context(format!("resolving kernel {}", spec.name))),
        },
    };
    let dir = unpacked_root(&root).join(&release);
    if let Some(kernel) = load_cached(spec, &release, &dir)? {
        step(
            &format!("kernel {}", spec.name),
            format!("{release}, cached in {}", dir.display()),
        );
        return Ok(kernel);
    }
    let kernel = fetch(&apt, spec, &release, &dir)?;
    step(
        &format!("kernel {}", spec.name),
        format!("{release}, downloaded into {}", dir.display()),
    );
    Ok(kernel)
}

/// The newest release of `spec` unpacked in the cache, if any.
fn newest_cached(root: &Path, spec: KernelSpec) -> Result<Option<String>> {
    let Ok(entries) = fs::read_dir(root) else {
        return Ok(None);
    };
    let mut releases: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join(READY_STAMP).exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|r| {
            fs::read_to_string(root.join(r).join(READY_STAMP))
                .ok()
                .as_deref()
                == Some(spec.name)
        })
        .collect();
    releases.sort_by(|a, b| compare_versions(a, b));
    Ok(releases.pop())
}

/// Written last when a kernel is unpacked; holds the spec's name.
const READY_STAMP: &str = "ready";

fn load_cached(spec: KernelSpec, release: &str, dir: &Path) -> Result<Option<Kernel>> {
    if !dir.join(READY_STAMP).exists() {
        return Ok(None);
    }
    let order = fs::read_to_string(dir.join("modules.order"))
        .with_context(|| format!("reading {}", dir.join("modules.order").display()))?;
    Ok(Some(Kernel {
        spec,
        release: release.to_owned(),
        vmlinux: dir.join("vmlinux"),
        modules: order
            .lines()
            .map(|name| dir.join("modules").join(name))
            .collect(),
    }))
}

/// Compares two releases by their numeric parts (`6.12.118+deb13` > `6.12.9+deb13`).
fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    let numbers = |s: &str| -> Vec<u64> {
        s.split(|c: char| !c.is_ascii_digit())
            .filter(|n| !n.is_empty())
            .map(|n| n.parse().unwrap_or(0))
            .collect()
    };
    numbers(a).cmp(&numbers(b))
}

/// The release of the newest `linux-image-<release>-amd64` of `spec` in its suites.
fn newest_release(apt: &PrivateApt, spec: KernelSpec) -> Result<String> {
    apt.refresh()?;
    let names = apt.package_names("linux-image-")?;
    let mut releases: Vec<&str> = names
        .iter()
        .filter_map(|name| name.strip_prefix("linux-image-")?.strip_suffix("-amd64"))
        .filter(|release| {
            release.starts_with(spec.version_prefix)
                && release.starts_with(|c: char| c.is_ascii_digit())
                // Flavours (cloud, rt) and debug/unsigned packages end differently.
                && !release.contains("-cloud")
                && !release.contains("-rt")
        })
        .collect();
    releases.sort_by(|a, b| compare_versions(a, b));
    match releases.last() {
        Some(release) => Ok(format!("{release}-amd64")),
        None => bail!(
            "no linux-image-{}*-amd64 in {}",
            spec.version_prefix,
            spec.suites.join(", ")
        ),
    }
}

/// Downloads the kernel's packages and unpacks what the matrix needs into `dir`.
fn fetch(apt: &PrivateApt, spec: KernelSpec, release: &str, dir: &Path) -> Result<Kernel> {
    // From 6.19 on, linux-image-X is a small package depending on linux-binary-X (the
    // image) and linux-modules-X; before, it holds both.
    let image = format!("linux-image-{release}");
    let depends = apt.show(&image)?;
    let mut packages = vec![image];
    for part in ["linux-binary-", "linux-modules-"] {
        let name = format!("{part}{release}");
        if depends.contains(&name) {
            packages.push(name);
        }
    }
    let debs = apt.download(&packages)?;
    let unpacked = dir.with_file_name(format!("{release}.unpacking"));
    let _ = fs::remove_dir_all(&unpacked);
    fs::create_dir_all(&unpacked)?;
    for deb in &debs {
        let mut extract = cmd::command("dpkg-deb");
        extract.arg("-x").arg(deb).arg(&unpacked);
        cmd::run(&mut extract)?;
    }
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir.join("modules"))?;
    let vmlinuz = [
        unpacked.join(format!("boot/vmlinuz-{release}")),
        unpacked.join(format!("usr/lib/modules/{release}/vmlinuz")),
    ]
    .into_iter()
    .find(|p| p.exists())
    .with_context(|| format!("no vmlinuz for {release} in {}", packages.join(", ")))?;
    extract_vmlinux(&vmlinuz, &dir.join("vmlinux"))?;
    let module_root = [
        unpacked.join(format!("lib/modules/{release}")),
        unpacked.join(format!("usr/lib/modules/{release}")),
    ]
    .into_iter()
    .find(|p| p.exists())
    .with_context(|| format!("no modules for {release}"))?;
    let mut order = Vec::new();
    for module in MODULES {
        add_module(&module_root, module, &dir.join("modules"), &mut order)?;
    }
    fs::write(dir.join("modules.order"), order.join("\n") + "\n")?;
    fs::write(dir.join(READY_STAMP), spec.name)?;
    let _ = fs::remove_dir_all(&unpacked);
    apt.clear_downloads()?;
    load_cached(spec, release, dir)?.context("the kernel just unpacked is incomplete")
}

/// Decompresses the kernel ELF embedded in a bzImage: the first xz or zstd stream whose output
/// starts with the ELF magic.
fn extract_vmlinux(vmlinuz: &Path, out: &Path) -> Result<()> {
    let image = fs::read(vmlinuz).with_context(|| format!("reading {}", vmlinuz.display()))?;
    let formats: [(&[u8], &str, &[&str]); 2] = [
        (b"\xfd7zXZ\x00", "xz", &["-dc", "--single-stream"]),
        (b"\x28\xb5\x2f\xfd", "zstd", &["-dcq"]),
    ];
    for (magic, program, args) in formats {
        let Some(offset) = image.windows(magic.len()).position(|w| w == magic) else {
            continue;
        };
        let mut child = cmd::command(program)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {program}"))?;
        let mut stdin = child.stdin.take().context("stdin")?;
        let input = image[offset..].to_vec();
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            // The stream is followed by the rest of the image: the decompressor stops reading
            // (and the write fails) once its stream ends.
            let _ = stdin.write_all(&input);
        });
        let output = child.wait_with_output()?;
        let _ = writer.join();
        if output.stdout.starts_with(b"\x7fELF") {
            fs::write(out, &output.stdout).with_context(|| format!("writing {}", out.display()))?;
            return Ok(());
        }
    }
    bail!("{}: no xz or zstd kernel inside", vmlinuz.display())
}

/// Adds `name` and the modules it depends on (first) to `order`, decompressed into `out`.
fn add_module(root: &Path, name: &str, out: &Path, order: &mut Vec<String>) -> Result<()> {
    let file_name = format!("{name}.ko");
    if order.contains(&file_name) {
        return Ok(());
    }
    let found = find_module(root, name)?
        .with_context(|| format!("no module {name} in {}", root.display()))?;
    let target = out.join(&file_name);
    let found_name = found.to_string_lossy();
    if found_name.ends_with(".ko") {
        fs::copy(&found, &target)?;
    } else {
        let program = if found_name.ends_with(".xz") {
            "xz"
        } else {
            "zstd"
        };
        let output = cmd::command(program).arg("-dcq").arg(&found).output()?;
        if !output.status.success() {
            bail!(
                "{program} -dc {}: {}",
                found.display(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        fs::write(&target, output.stdout)?;
    }
    let mut modinfo = cmd::command("modinfo");
    modinfo.args(["-F", "depends"]).arg(&target);
    let depends = cmd::probe(&mut modinfo)?;
    for dependency in depends.trim().split(',').filter(|d| !d.is_empty()) {
        add_module(root, dependency, out, order)?;
    }
    order.push(file_name);
    Ok(())
}

/// The file of module `name` (`.ko`, `.ko.xz` or `.ko.zst`) under `root/kernel`.
fn find_module(root: &Path, name: &str) -> Result<Option<PathBuf>> {
    let wanted: Vec<String> = ["ko", "ko.xz", "ko.zst"]
        .iter()
        .flat_map(|ext| {
            [
                format!("{name}.{ext}"),
                format!("{}.{ext}", name.replace('_', "-")),
            ]
        })
        .collect();
    let mut stack = vec![root.join("kernel")];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)?.filter_map(|e| e.ok()) {
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(path);
            } else if wanted.iter().any(|w| entry.file_name().to_str() == Some(w)) {
                return Ok(Some(path));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_their_numbers() {
        assert!(compare_versions("6.12.118+deb13", "6.12.9+deb13").is_gt());
        assert!(compare_versions("5.10.0-46", "5.10.0-9").is_gt());
        assert!(compare_versions("7.3.4+deb13", "7.2.12+deb13").is_gt());
        assert_eq!(version_of("6.12.118+deb13-amd64"), (6, 12));
        assert_eq!(version_of("5.10.0-46-amd64"), (5, 10));
    }

    #[test]
    fn kernel_lists_name_matrix_kernels() {
        let specs = parse_list("5.10, newest").unwrap();
        assert_eq!(
            specs.iter().map(|s| s.name).collect::<Vec<_>>(),
            ["5.10", "newest"]
        );
        assert!(parse_list("4.19").is_err());
    }
}
