//! One policy for every file and directory the agent writes (log streams, object sinks'
//! spools and journals, `file://` archives): files 0640, directories 0750, so the owner's group
//! (log readers) may read and nobody else may. The process mask is set to match at start-up,
//! so files created by libraries (object_store's local store) follow it too; files the agent
//! creates itself also ask for these modes explicitly.
//!
//! Configuration and policy files decide what the agent logs and enforces: one that any local
//! user can change is warned about.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

/// Mode of every file the agent creates.
pub const FILE_MODE: u32 = 0o640;
/// Mode of every directory the agent creates.
pub const DIR_MODE: u32 = 0o750;
/// The process mask that gives [`FILE_MODE`] and [`DIR_MODE`] to files and directories created
/// with the usual 0666 and 0777.
pub const UMASK: u32 = 0o027;

/// Why `path`, a file the agent reads its configuration or policy from, could be changed by any
/// local user: the file itself, or a directory it is in, is writable by others (a directory
/// with the sticky bit, like /tmp, only lets owners replace their files). `None` if it is safe,
/// or cannot be read (reading it reports that).
pub fn writable_by_others(path: &Path) -> Option<String> {
    let mode = |p: &Path| std::fs::metadata(p).ok().map(|m| m.permissions().mode());
    if mode(path)? & 0o002 != 0 {
        return Some(format!(
            "{} is writable by every local user (mode {:o}): anyone can change what the agent logs or enforces; chmod o-w it",
            path.display(),
            mode(path)? & 0o7777
        ));
    }
    let absolute = std::path::absolute(path).unwrap_or_else(|_| PathBuf::from(path));
    for directory in absolute.ancestors().skip(1) {
        let Some(mode) = mode(directory) else {
            continue;
        };
        if mode & 0o002 != 0 && mode & 0o1000 == 0 {
            return Some(format!(
                "{} is in {}, which every local user can write to (mode {:o}): anyone can replace it",
                path.display(),
                directory.display(),
                mode & 0o7777
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn world_writable_files_and_directories_are_named() {
        let dir = std::env::temp_dir().join(format!("flowlog-files-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let file = dir.join("policy.toml");
        fs::write(&file, "").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(writable_by_others(&file), None);

        fs::set_permissions(&file, fs::Permissions::from_mode(0o666)).unwrap();
        let warning = writable_by_others(&file).unwrap();
        assert!(
            warning.contains("writable by every local user (mode 666)"),
            "{warning}"
        );

        fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let warning = writable_by_others(&file).unwrap();
        assert!(
            warning.contains("which every local user can write to (mode 777)"),
            "{warning}"
        );
        // The sticky bit (as on /tmp) protects other users' files.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777)).unwrap();
        assert_eq!(writable_by_others(&file), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
