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
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use flowlog_common::maps::{
    ACL_ACTIONS, ACL_RULES, CONNECTIONS, EPOCH, EXCLUSION_COUNT, EXCLUSIONS, FLOWS, POLICY_ACTIVE,
    POLICY_CONFIG, RULE_PORTS, RULE_PREFIXES, RULE_WORDS, SG_RULES, SKIP_OVERFLOW, SKIPPED, STATS,
    STATS_REPORTED,
};

use super::DatapathError;
use crate::sys;

/// Version of the pinned maps' layout (keys, values, meanings).
pub const LAYOUT_VERSION: u32 = 1;

/// The maps that outlive an agent.
pub const PINNED_MAPS: [&str; 26] = [
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
    RULE_PREFIXES[0],
    RULE_PREFIXES[1],
    RULE_PORTS[0],
    RULE_PORTS[1],
    RULE_WORDS[0],
    RULE_WORDS[1],
    ACL_ACTIONS[0],
    ACL_ACTIONS[1],
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
    /// Directories this start created, removed again if it is refused.
    created: Vec<PathBuf>,
}

fn error(path: &Path, what: &str, source: io::Error) -> DatapathError {
    DatapathError::Pins(format!("{what} {}: {source}", path.display()))
}

/// A link pinned under `<pin dir>/v<LAYOUT>/links/`, as its name tells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedLinkName {
    /// The interface's name when the link was pinned (dots written as `_`).
    pub interface: String,
    pub ifindex: u32,
    /// `tc_in`, `tc_eg` or `xdp`.
    pub point: String,
}

impl PinnedLinkName {
    /// Parses `<if>-<ifindex>-<point>`; the interface name may hold dashes itself.
    pub fn parse(name: &str) -> Option<Self> {
        let (rest, point) = name.rsplit_once('-')?;
        let (interface, ifindex) = rest.rsplit_once('-')?;
        if interface.is_empty() || !["tc_in", "tc_eg", "xdp"].contains(&point) {
            return None;
        }
        Some(Self {
            interface: interface.to_owned(),
            ifindex: ifindex.parse().ok()?,
            point: point.to_owned(),
        })
    }
}

impl Pins {
    /// Checks that `dir` is on a BPF filesystem (mounting one on `/sys/fs/bpf` if that is where
    /// it should be and none is), creates the directories and locks them.
    pub(super) fn prepare(dir: &Path) -> Result<Self, DatapathError> {
        let bpffs_root = Path::new("/sys/fs/bpf");
        if dir.starts_with(bpffs_root)
            && !sys::is_bpffs(bpffs_root).map_err(|e| error(bpffs_root, "checking", e))?
        {
            sys::mount_bpffs(bpffs_root).map_err(|e| error(bpffs_root, "mounting bpffs on", e))?;
            tracing::info!(path = %bpffs_root.display(), "mounted a BPF filesystem");
        }
        let root = dir.join(format!("v{LAYOUT_VERSION}"));
        // Innermost last, so a refused start removes them in reverse.
        let mut created: Vec<PathBuf> =
            [root.join("maps"), root.join("links"), root.join("programs")]
                .iter()
                .flat_map(|path| path.ancestors().map(Path::to_path_buf).collect::<Vec<_>>())
                .filter(|path| path.starts_with(dir) && !path.exists())
                .collect();
        created.sort();
        created.dedup();
        for sub in ["maps", "links", "programs"] {
            let path = root.join(sub);
            fs::create_dir_all(&path).map_err(|e| error(&path, "creating", e))?;
        }
        let mut pins = Self {
            root: root.clone(),
            _lock: sys::lock_directory(&root).map_err(|e| lock_error(dir, &root, e))?,
            reused: false,
            created,
        };
        let existing = root.join("maps");
        if !sys::is_bpffs(&existing).map_err(|e| error(&existing, "checking", e))? {
            pins.abandon();
            return Err(DatapathError::Pins(format!(
                "{} is not on a BPF filesystem (mount one with `mount -t bpf bpf DIR`)",
                dir.display()
            )));
        }
        pins.reused = existing.join(EPOCH).exists();
        Ok(pins)
    }

    pub(super) fn map_path(&self, name: &str) -> PathBuf {
        self.root.join("maps").join(name)
    }

    pub(super) fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    pub(super) fn program_path(&self, name: &str) -> PathBuf {
        self.root.join("programs").join(name)
    }

    /// The programs a previous agent left running: behind its pinned links, and pinned for
    /// its clsact filters.
    pub(super) fn own_programs(&self) -> Vec<u32> {
        own_programs(&self.root)
    }

    /// The links pinned now, by the names they were pinned under.
    pub(super) fn links(&self) -> Vec<(PathBuf, PinnedLinkName)> {
        let Ok(entries) = fs::read_dir(self.links_dir()) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let name = PinnedLinkName::parse(entry.file_name().to_str()?)?;
                Some((entry.path(), name))
            })
            .collect()
    }

    /// The capacity of the flow maps pinned here, if there are any.
    pub(super) fn pinned_flow_capacity(&self) -> Result<Option<u32>, DatapathError> {
        let path = self.map_path(FLOWS[0]);
        if !path.exists() {
            return Ok(None);
        }
        let map = aya::maps::MapData::from_pin(&path).map_err(|e| DatapathError::Map {
            name: FLOWS[0],
            source: e,
        })?;
        let info = map.info().map_err(|e| DatapathError::Map {
            name: FLOWS[0],
            source: e,
        })?;
        Ok(Some(info.max_entries()))
    }

    /// A refused start: removes the directories it created (empty again by now).
    pub(super) fn abandon(&mut self) {
        for path in self.created.drain(..).rev() {
            let _ = fs::remove_dir(&path);
        }
    }

    /// The start went through: what it created stays.
    pub(super) fn keep(&mut self) {
        self.created.clear();
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

/// The programs behind the links pinned under `root`, and the programs pinned there.
fn own_programs(root: &Path) -> Vec<u32> {
    let pinned = |sub: &str| {
        fs::read_dir(root.join(sub))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|entry| sys::bpf_obj_get(&entry.path()).ok())
            .collect::<Vec<_>>()
    };
    let links = pinned("links")
        .into_iter()
        .filter_map(|link| Some(sys::attachments::link_info(link.as_fd()).ok()?.program_id));
    let programs = pinned("programs")
        .into_iter()
        .filter_map(|program| sys::attachments::program_id(program.as_fd()).ok());
    links.chain(programs).collect()
}

/// What a pin directory holds, for `check`: whether an agent runs with it now, and the programs
/// behind its pinned links (which an agent with this directory takes over).
pub fn inspect(dir: &Path) -> (bool, Vec<u32>) {
    let root = dir.join(format!("v{LAYOUT_VERSION}"));
    let in_use = matches!(
        sys::lock_directory(&root),
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK)
    );
    (in_use, own_programs(&root))
}

fn lock_error(dir: &Path, root: &Path, e: io::Error) -> DatapathError {
    match e.raw_os_error() {
        Some(libc::EWOULDBLOCK) => DatapathError::Pins(format!(
            "another flowlog-agent is using {} (one agent per pin directory)",
            dir.display()
        )),
        _ => error(root, "locking", e),
    }
}

/// Removes a pin directory's maps and links: programs attached through its links detach, and
/// the counts in its maps are gone. `flowlog-agent detach` does this; it refuses while an agent
/// holds the directory (that agent would go on counting into maps nobody can open any more).
pub fn remove_pins(dir: &Path) -> Result<usize, DatapathError> {
    let mut removed = 0;
    let root = dir.join(format!("v{LAYOUT_VERSION}"));
    let _lock = match sys::lock_directory(&root) {
        Ok(lock) => Some(lock),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(match e.raw_os_error() {
                Some(libc::EWOULDBLOCK) => DatapathError::Pins(format!(
                    "a running flowlog-agent is using {}: stop it first (with --on-exit detach, or then run detach)",
                    dir.display()
                )),
                _ => error(&root, "locking", e),
            });
        }
    };
    // clsact filters are not held by pins: remove those running this directory's programs.
    let programs = own_programs(&root);
    for link in sys::list_links().map_err(|e| error(dir, "listing interfaces for", e))? {
        for filter in sys::attachments::clsact_filters(link.ifindex).unwrap_or_default() {
            if programs.contains(&filter.program_id) {
                super::attach::remove_filter(
                    &link.name,
                    filter.ingress,
                    filter.priority,
                    filter.handle,
                );
                removed += 1;
            }
        }
    }
    for sub in ["links", "maps", "programs"] {
        let path = root.join(sub);
        let Ok(entries) = fs::read_dir(&path) else {
            continue;
        };
        for entry in entries {
            let entry = entry.map_err(|e| error(&path, "listing", e))?.path();
            fs::remove_file(&entry).map_err(|e| error(&entry, "removing", e))?;
            removed += 1;
        }
        fs::remove_dir(&path).map_err(|e| error(&path, "removing", e))?;
    }
    let _ = fs::remove_dir(&root);
    let _ = fs::remove_dir(dir);
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_link_names_parse_from_the_right() {
        assert_eq!(
            PinnedLinkName::parse("veth-a_1-12-tc_in"),
            Some(PinnedLinkName {
                interface: "veth-a_1".into(),
                ifindex: 12,
                point: "tc_in".into()
            })
        );
        assert_eq!(
            PinnedLinkName::parse("eth0-2-xdp").map(|n| n.ifindex),
            Some(2)
        );
        for bad in ["eth0-x-xdp", "eth0-2-tc", "-2-xdp", "xdp"] {
            assert_eq!(PinnedLinkName::parse(bad), None, "{bad}");
        }
    }
}
