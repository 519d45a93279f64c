//! The pin directory: maps and links kept in a BPF filesystem so that counting goes on while no
//! agent runs, and the next agent picks up exactly where the last one stopped.
//!
//! ```text
//! <pin dir>/v<LAYOUT>/maps/<MAP>              every map the programs count or decide with
//! <pin dir>/v<LAYOUT>/links/<if>-<ifindex>-<hook>   TCX and XDP links (no dots: bpffs refuses them)
//! ```
//!
//! The layout version changes whenever a map's key or value layout does: an agent never adopts
//! maps it cannot read.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use flowlog_common::maps::{
    ACL_RULES, CONNECTIONS, EPOCH, EXCLUSION_COUNT, EXCLUSIONS, FLOWS, POLICY_ACTIVE,
    POLICY_CONFIG, SG_RULES, SKIP_OVERFLOW, SKIPPED, STATS, STATS_REPORTED,
};

use super::DatapathError;
use crate::sys;

/// Version of the pinned maps' layout (keys, values, meanings).
pub const LAYOUT_VERSION: u32 = 1;

/// The maps that outlive an agent.
pub const PINNED_MAPS: [&str; 18] = [
    EPOCH,
    FLOWS[0],
    FLOWS[1],
    SKIPPED[0],
    SKIPPED[1],
    SKIP_OVERFLOW,
    STATS,
    STATS_REPORTED,
    POLICY_ACTIVE,
    POLICY_CONFIG[0],
    POLICY_CONFIG[1],
    ACL_RULES[0],
    ACL_RULES[1],
    SG_RULES[0],
    SG_RULES[1],
    EXCLUSIONS,
    EXCLUSION_COUNT,
    CONNECTIONS,
];

pub(super) struct Pins {
    root: PathBuf,
    /// Held while the agent runs: two agents counting into the same maps would each drain part.
    _lock: fs::File,
    /// Maps were already pinned there: counts of a previous agent carry over.
    pub reused: bool,
}

fn error(path: &Path, what: &str, source: io::Error) -> DatapathError {
    DatapathError::Pins(format!("{what} {}: {source}", path.display()))
}

impl Pins {
    /// Checks that `dir` is on a BPF filesystem (mounting one on `/sys/fs/bpf` if that is where
    /// it should be and none is) and creates the directories.
    pub(super) fn prepare(dir: &Path) -> Result<Self, DatapathError> {
        let bpffs_root = Path::new("/sys/fs/bpf");
        if dir.starts_with(bpffs_root)
            && !sys::is_bpffs(bpffs_root).map_err(|e| error(bpffs_root, "checking", e))?
        {
            sys::mount_bpffs(bpffs_root).map_err(|e| error(bpffs_root, "mounting bpffs on", e))?;
            tracing::info!(path = %bpffs_root.display(), "mounted a BPF filesystem");
        }
        let root = dir.join(format!("v{LAYOUT_VERSION}"));
        for sub in ["maps", "links"] {
            let path = root.join(sub);
            fs::create_dir_all(&path).map_err(|e| error(&path, "creating", e))?;
        }
        let existing = root.join("maps");
        if !sys::is_bpffs(&existing).map_err(|e| error(&existing, "checking", e))? {
            return Err(DatapathError::Pins(format!(
                "{} is not on a BPF filesystem (mount one with `mount -t bpf bpf DIR`)",
                dir.display()
            )));
        }
        let lock = sys::lock_directory(&root).map_err(|e| match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => DatapathError::Pins(format!(
                "another flowlog-agent is using {} (one agent per pin directory)",
                dir.display()
            )),
            _ => error(&root, "locking", e),
        })?;
        let reused = existing.join(EPOCH).exists();
        Ok(Self {
            root,
            _lock: lock,
            reused,
        })
    }

    pub(super) fn map_path(&self, name: &str) -> PathBuf {
        self.root.join("maps").join(name)
    }

    pub(super) fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    /// Removes every pinned link but `keep`; returns the names removed.
    pub(super) fn remove_links_except(&self, keep: &[&Path]) -> Result<Vec<String>, DatapathError> {
        let dir = self.root.join("links");
        let mut removed = Vec::new();
        let entries = fs::read_dir(&dir).map_err(|e| error(&dir, "listing", e))?;
        for entry in entries {
            let path = entry.map_err(|e| error(&dir, "listing", e))?.path();
            if !keep.contains(&path.as_path()) {
                fs::remove_file(&path).map_err(|e| error(&path, "removing", e))?;
                removed.push(
                    path.file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
        Ok(removed)
    }
}

/// Removes a pin directory's maps and links: programs attached through its links detach, and
/// the counts in its maps are gone. `flowlog-agent detach` does this.
pub fn remove_pins(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    let root = dir.join(format!("v{LAYOUT_VERSION}"));
    for sub in ["links", "maps"] {
        let path = root.join(sub);
        let Ok(entries) = fs::read_dir(&path) else {
            continue;
        };
        for entry in entries {
            fs::remove_file(entry?.path())?;
            removed += 1;
        }
        fs::remove_dir(&path)?;
    }
    let _ = fs::remove_dir(&root);
    let _ = fs::remove_dir(dir);
    Ok(removed)
}
