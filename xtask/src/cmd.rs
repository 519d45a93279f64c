//! Running commands. Everything that builds, installs or runs something goes through [`run`],
//! [`status`] or [`exec`], which echo `+ KEY=VALUE program args` to stderr first so CI logs show
//! what happened. Read-only probes ([`probe`]) are not echoed: the setup step that uses them
//! prints one line saying what it checked.
//!
//! Every child gets a PATH that starts with cargo's bin directory, because the agent's build.rs
//! (through aya-build) finds `bpf-linker` through PATH and setup installs it there.
use std::{
    env,
    ffi::{OsStr, OsString},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::OnceLock,
};

use anyhow::{Context, Result, bail};

/// The workspace root: xtask's parent directory.
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
}

/// Where cargo puts build output: `$CARGO_TARGET_DIR` when set, else `<root>/target`.
pub fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace_root().join(dir),
        _ => workspace_root().join("target"),
    }
}

/// `$HOME`, needed for cargo's default home and the LLVM prefix.
pub fn home() -> Result<PathBuf> {
    match env::var_os("HOME") {
        Some(home) if !home.is_empty() => Ok(PathBuf::from(home)),
        _ => bail!("HOME is not set"),
    }
}

/// `$CARGO_HOME/bin` (default `$HOME/.cargo/bin`): where `cargo install` puts bpf-linker.
pub fn cargo_bin_dir() -> Result<PathBuf> {
    let cargo_home = match env::var_os("CARGO_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => home()?.join(".cargo"),
    };
    Ok(cargo_home.join("bin"))
}

/// The PATH every child runs with.
pub fn child_path() -> &'static OsString {
    static PATH: OnceLock<OsString> = OnceLock::new();
    PATH.get_or_init(|| {
        let current = env::var_os("PATH").unwrap_or_default();
        match cargo_bin_dir() {
            Ok(bin) => prepend_path(&bin, &current),
            Err(_) => current,
        }
    })
}

/// `dir` followed by `path`, unless `dir` already comes first.
fn prepend_path(dir: &Path, path: &OsStr) -> OsString {
    if path.is_empty() {
        return dir.as_os_str().to_os_string();
    }
    let mut dirs: Vec<PathBuf> = env::split_paths(path).collect();
    if dirs.first().map(PathBuf::as_path) != Some(dir) {
        dirs.insert(0, dir.to_path_buf());
    }
    env::join_paths(dirs).unwrap_or_else(|_| path.to_os_string())
}

/// The first executable file called `name` on the children's PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    env::split_paths(child_path())
        .map(|dir| dir.join(name))
        .find(|file| {
            file.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// A command for `program` that runs in the workspace root with the children's PATH.
pub fn command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(workspace_root()).env("PATH", child_path());
    cmd
}

/// `cargo` (rustup's proxy, found through the children's PATH) in the workspace root.
pub fn cargo() -> Command {
    command("cargo")
}

/// Echoes and runs `cmd`, failing unless it exits successfully.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = status(cmd)?;
    if !status.success() {
        bail!("`{}` failed: {status}", display(cmd));
    }
    Ok(())
}

/// Echoes and runs `cmd`, returning how it exited.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    eprintln!("+ {}", display(cmd));
    cmd.status()
        .with_context(|| format!("cannot start `{}`", display(cmd)))
}

/// Echoes `cmd` and replaces this process with it, so the terminal's Ctrl-C reaches it directly
/// and its exit status (or the signal that ended it) is ours. Returns only if exec failed.
pub fn exec(cmd: &mut Command) -> anyhow::Error {
    eprintln!("+ {}", display(cmd));
    let err = cmd.exec();
    anyhow::Error::new(err).context(format!("cannot exec `{}`", display(cmd)))
}

/// Runs `cmd` silently and returns its standard output, failing (with its standard error) unless
/// it exits successfully.
pub fn probe(cmd: &mut Command) -> Result<String> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{}`", display(cmd)))?;
    if !output.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            display(cmd),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `KEY=VALUE program args`, shell-quoted; PATH is left out (it is the same for every child).
pub fn display(cmd: &Command) -> String {
    let envs = cmd
        .get_envs()
        .filter(|(key, _)| *key != "PATH")
        .filter_map(|(key, value)| Some((key, value?)))
        .map(|(key, value)| format!("{}={}", key.to_string_lossy(), quote(value)));
    let words = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(quote);
    envs.chain(words).collect::<Vec<_>>().join(" ")
}

/// `word` as a shell would need it written.
fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./=:+,@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_only_what_needs_it() {
        let mut cmd = Command::new("cargo");
        cmd.args(["test", "--", "it's", "a b", ""])
            .env("LLVM_PREFIX", "/root/x")
            .env("PATH", "/bin");
        assert_eq!(
            display(&cmd),
            r"LLVM_PREFIX=/root/x cargo test -- 'it'\''s' 'a b' ''"
        );
    }

    #[test]
    fn prepend_path_adds_the_dir_once() {
        let dir = Path::new("/root/.cargo/bin");
        assert_eq!(
            prepend_path(dir, OsStr::new("/usr/bin:/bin")),
            "/root/.cargo/bin:/usr/bin:/bin"
        );
        assert_eq!(
            prepend_path(dir, OsStr::new("/root/.cargo/bin:/bin")),
            "/root/.cargo/bin:/bin"
        );
        assert_eq!(
            prepend_path(dir, OsStr::new("/bin:/root/.cargo/bin")),
            "/root/.cargo/bin:/bin:/root/.cargo/bin"
        );
        assert_eq!(prepend_path(dir, OsStr::new("")), "/root/.cargo/bin");
    }
}
