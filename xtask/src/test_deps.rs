//! What the integration tests need beyond the agent: a Python virtual environment with a real
//! S3-compatible server (moto's standalone server, with boto3 as the reference client) and an
//! independent Parquet reader (pyarrow). It lives in a stable place and is created once; a
//! second run only reads its stamp file.
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use crate::{cmd, setup::step};

/// Tells the tests where the environment is.
pub const VENV_ENV: &str = "FLOWLOG_TEST_VENV";

/// Pinned so every machine tests against the same server and reader.
const REQUIREMENTS: &[&str] = &["moto[server]==5.2.5", "pyarrow==26.0.1"];

pub fn venv_dir() -> Result<PathBuf> {
    Ok(cmd::home()?.join(".local/share/flowlog-test-venv"))
}

pub fn ensure() -> Result<PathBuf> {
    let what = "Python test environment (moto S3 server, boto3, pyarrow)";
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
