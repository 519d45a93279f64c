//! apt with its own sources list, package lists, cache and status under a directory of xtask's
//! (`~/.cache/flowlog/kernels/apt/<kernel>`): Debian's kernel packages are resolved and
//! downloaded without touching the machine's apt set-up, whose configuration fragments
//! (proxies and the like) still apply. The archive's address is read from the machine's own
//! sources.
use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result, bail};

use crate::cmd;

/// How long package lists are trusted before the archive is asked again.
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// apt with its own sources, lists, cache and status, reading only the machine's
/// configuration fragments (proxies and the like).
pub struct PrivateApt {
    dir: PathBuf,
    suites: &'static [&'static str],
}

impl PrivateApt {
    /// An apt for Debian's `suites` (main component), with its state in `dir`.
    pub fn new(dir: &Path, suites: &'static [&'static str]) -> Result<Self> {
        for sub in [
            "lists/partial",
            "cache/archives/partial",
            "debs",
            "no-parts",
        ] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let status = dir.join("status");
        if !status.exists() {
            fs::write(&status, "").with_context(|| format!("creating {}", status.display()))?;
        }
        let (archive, security) = debian_archives()?;
        let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
        let sources: String = suites
            .iter()
            .map(|suite| {
                let uri = if suite.ends_with("-security") {
                    &security
                } else {
                    &archive
                };
                format!("deb [signed-by={keyring}] {uri} {suite} main\n")
            })
            .collect();
        let list = dir.join("sources.list");
        if fs::read_to_string(&list).ok().as_deref() != Some(sources.as_str()) {
            fs::write(&list, sources).with_context(|| format!("writing {}", list.display()))?;
        }
        Ok(Self {
            dir: dir.to_owned(),
            suites,
        })
    }

    fn command(&self, program: &str) -> std::process::Command {
        let d = |sub: &str| self.dir.join(sub).display().to_string();
        let mut command = cmd::command(program);
        for (key, value) in [
            ("Dir::Etc::SourceList", d("sources.list")),
            ("Dir::Etc::SourceParts", d("no-parts")),
            ("Dir::State", self.dir.display().to_string()),
            ("Dir::State::Lists", d("lists")),
            ("Dir::State::status", d("status")),
            ("Dir::Cache", d("cache")),
            ("Dir::Cache::archives", d("cache/archives")),
            ("APT::Architecture", "amd64".to_owned()),
            ("APT::Architectures", "amd64".to_owned()),
            ("Acquire::Languages", "none".to_owned()),
            // The downloads land in the cache directory of root, which apt's `_apt` user
            // cannot write.
            ("APT::Sandbox::User", "root".to_owned()),
        ] {
            command.arg("-o").arg(format!("{key}={value}"));
        }
        command.env("DEBIAN_FRONTEND", "noninteractive");
        command
    }

    /// Refreshes the package lists when they are older than a day.
    pub fn refresh(&self) -> Result<()> {
        let stamp = self.dir.join("lists/updated");
        let fresh = fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .is_ok_and(|t| SystemTime::now().duration_since(t).unwrap_or_default() < LISTS_MAX_AGE);
        if fresh {
            return Ok(());
        }
        let mut update = self.command("apt-get");
        update.args(["-q", "update"]);
        let output = update
            .output()
            .with_context(|| format!("cannot start `{}`", cmd::display(&update)))?;
        if !output.status.success() {
            bail!(
                "`apt-get update` for {} failed: {}",
                self.suites.join(", "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        fs::write(&stamp, "").with_context(|| format!("writing {}", stamp.display()))
    }

    /// Names of the packages that start with `prefix`.
    pub fn package_names(&self, prefix: &str) -> Result<Vec<String>> {
        let mut names = self.command("apt-cache");
        names.args(["pkgnames", prefix]);
        Ok(cmd::probe(&mut names)?.lines().map(str::to_owned).collect())
    }

    /// `apt-cache show` of the candidate version of `package`.
    pub fn show(&self, package: &str) -> Result<String> {
        let mut show = self.command("apt-cache");
        show.args(["show", "--no-all-versions", package]);
        cmd::probe(&mut show)
    }

    /// Downloads `packages` into an empty `debs` directory of its own and returns their files.
    pub fn download(&self, packages: &[String]) -> Result<Vec<PathBuf>> {
        let debs = self.dir.join("debs");
        self.clear_downloads()?;
        let mut download = self.command("apt-get");
        download
            .current_dir(&debs)
            .args(["-q", "download"])
            .args(packages);
        cmd::run(&mut download)?;
        Ok(fs::read_dir(&debs)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .collect())
    }

    /// Removes downloaded packages (once unpacked they are not needed).
    pub fn clear_downloads(&self) -> Result<()> {
        for old in fs::read_dir(self.dir.join("debs"))?.filter_map(|e| e.ok()) {
            let _ = fs::remove_file(old.path());
        }
        Ok(())
    }
}

/// The URIs of Debian's main and security archives as the machine's apt sources name them.
fn debian_archives() -> Result<(String, String)> {
    let mut texts = Vec::new();
    for path in ["/etc/apt/sources.list"] {
        if let Ok(text) = fs::read_to_string(path) {
            texts.push(text);
        }
    }
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        for entry in entries.filter_map(|e| e.ok()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".list") || name.ends_with(".sources") {
                texts.push(fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
    }
    let (mut archive, mut security) = (None, None);
    for (uri, suite) in texts.iter().flat_map(|text| source_entries(text)) {
        let slot = if suite.ends_with("-security") || uri.ends_with("-security") {
            &mut security
        } else {
            &mut archive
        };
        if slot.is_none() && uri.contains("debian") {
            *slot = Some(uri);
        }
    }
    match (archive, security) {
        (Some(archive), Some(security)) => Ok((archive, security)),
        (Some(archive), None) => {
            let security = format!("{}-security", archive.trim_end_matches('/'));
            Ok((archive, security))
        }
        _ => bail!(
            "the machine's apt sources name no Debian archive (the kernel matrix downloads Debian's kernels from it)"
        ),
    }
}

/// `(uri, suite)` pairs of a sources file, one-line (`deb URI SUITE ...`) or deb822 format.
fn source_entries(text: &str) -> Vec<(String, String)> {
    let mut entries = Vec::new();
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        if words.next() == Some("deb") {
            let mut rest: Vec<&str> = words.collect();
            if rest.first().is_some_and(|w| w.starts_with('[')) {
                let end = rest.iter().position(|w| w.ends_with(']')).unwrap_or(0);
                rest.drain(..=end);
            }
            if let [uri, suite, ..] = rest[..] {
                entries.push((uri.to_owned(), suite.to_owned()));
            }
        }
    }
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
                .unwrap_or_default()
        };
        if !field("Types").iter().any(|t| t == "deb") {
            continue;
        }
        for uri in field("URIs") {
            for suite in field("Suites") {
                entries.push((uri.clone(), suite));
            }
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_in_both_formats_give_their_archives() {
        let one_line = "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main\n\
                        # deb http://x/debian sid main\n";
        assert_eq!(
            source_entries(one_line),
            [(
                "http://mirror.example/debian".to_owned(),
                "bookworm".to_owned()
            )]
        );
        let deb822 = "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n\
                      Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n";
        assert_eq!(
            source_entries(deb822),
            [
                (
                    "http://mirror.example/debian".to_owned(),
                    "bookworm".to_owned()
                ),
                (
                    "http://mirror.example/debian".to_owned(),
                    "bookworm-updates".to_owned()
                ),
                (
                    "http://mirror.example/debian-security".to_owned(),
                    "bookworm-security".to_owned()
                ),
            ]
        );
    }
}
