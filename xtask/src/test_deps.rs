//! What the integration tests need beyond the agent: a Python virtual environment with a real
//! S3-compatible server (moto's standalone server, with boto3 as the reference client) and two
//! independent Parquet readers (pyarrow, and `parquet`, which knows only Parquet 1.0
//! encodings). It lives in a stable place named after a hash of its requirements, so checkouts
//! that pin different ones never recreate each other's, and is created once; a second run only
//! reads its stamp file.
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use crate::{cmd, setup::step};

/// Tells the tests where the environment is.
pub const VENV_ENV: &str = "FLOWLOG_TEST_VENV";

/// Pinned so every machine tests against the same server and reader.
const REQUIREMENTS: &[&str] = &[
    "moto[server]==5.2.5",
    "pyarrow==26.0.1",
    // parquet-python: PLAIN and PLAIN_DICTIONARY pages only, snappy through python-snappy.
    "parquet==1.3.1",
    "python-snappy==0.7.3",
];

pub fn venv_dir() -> Result<PathBuf> {
    Ok(cmd::home()?.join(format!(
        ".local/share/flowlog-test-venv-{:08x}",
        requirements_hash(REQUIREMENTS)
    )))
}

/// FNV-1a of the requirements, folded to 32 bits: stable across runs and Rust versions.
fn requirements_hash(requirements: &[&str]) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in requirements.join("\n").bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash ^ (hash >> 32)) as u32
}

pub fn ensure() -> Result<PathBuf> {
    let what = "Python test environment (moto S3 server, boto3, pyarrow, parquet)";
    let venv = venv_dir()?;
    let stamp = venv.join("flowlog-requirements.txt");
    let wanted = REQUIREMENTS.join("\n");
    let python = venv.join("bin/python");
    if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&wanted) {
        step(what, format!("found at {}", venv.display()));
        return Ok(venv);
    }
    let mut create = cmd::command("python3");
    create.args(["-m", "venv", "--clear"]).arg(&venv);
    if !cmd::status(&mut create)?.success() {
        // Debian's own python3 needs python3-venv for `-m venv`.
        let mut apt = cmd::command("apt-get");
        apt.args(["install", "-y", "--no-install-recommends", "python3-venv"])
            .env("DEBIAN_FRONTEND", "noninteractive");
        cmd::run(&mut apt)?;
        cmd::run(&mut create)?;
    }
    let mut pip = cmd::command(&python);
    pip.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ])
    .args(REQUIREMENTS);
    cmd::run(&mut pip)?;
    for binary in ["moto_server"] {
        if !venv.join("bin").join(binary).exists() {
            bail!(
                "installed {REQUIREMENTS:?}, but {binary} is missing from {}",
                venv.display()
            );
        }
    }
    std::fs::write(&stamp, &wanted).with_context(|| format!("writing {}", stamp.display()))?;
    step(what, format!("installed at {}", venv.display()));
    Ok(venv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directory_changes_with_the_requirements() {
        assert_ne!(
            requirements_hash(&["pyarrow==26.0.1"]),
            requirements_hash(&["pyarrow==26.0.2"])
        );
        // Stable across runs and Rust versions (FNV-1a, computed independently).
        assert_eq!(
            requirements_hash(&["moto[server]==5.2.5", "pyarrow==26.0.1"]),
            0x823a7b2c
        );
        let dir = venv_dir().unwrap();
        let name = dir.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with("flowlog-test-venv-") && name.len() == 26,
            "{name}"
        );
    }
}
