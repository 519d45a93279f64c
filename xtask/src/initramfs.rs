//! A cpio archive in the kernel's initramfs format ("newc"), written directly: the guest's whole
//! root filesystem, built from host files without a staging directory.
use std::{
    collections::BTreeSet,
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

/// What goes into the archive, by guest path. Parent directories are added as needed.
#[derive(Default)]
pub struct Initramfs {
    entries: Vec<(String, Entry)>,
    dirs: BTreeSet<String>,
}

enum Entry {
    Dir,
    File { source: PathBuf, mode: u32 },
    Bytes { data: Vec<u8>, mode: u32 },
    Symlink(String),
}

impl Initramfs {
    /// Adds the host file `source` at `guest` (absolute), with the host file's permissions.
    pub fn file(&mut self, guest: &str, source: &Path) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(source)
            .with_context(|| format!("{}", source.display()))?
            .permissions()
            .mode()
            & 0o7777;
        self.parents(guest);
        self.entries.push((
            guest.to_owned(),
            Entry::File {
                source: source.to_owned(),
                mode,
            },
        ));
        Ok(())
    }

    /// Adds a file with the given contents and permissions.
    pub fn bytes(&mut self, guest: &str, data: impl Into<Vec<u8>>, mode: u32) {
        self.parents(guest);
        self.entries.push((
            guest.to_owned(),
            Entry::Bytes {
                data: data.into(),
                mode,
            },
        ));
    }

    pub fn symlink(&mut self, guest: &str, target: &str) {
        self.parents(guest);
        self.entries
            .push((guest.to_owned(), Entry::Symlink(target.to_owned())));
    }

    pub fn dir(&mut self, guest: &str) {
        self.parents(guest);
        if self.dirs.insert(guest.to_owned()) {
            self.entries.push((guest.to_owned(), Entry::Dir));
        }
    }

    /// Whether something was added at `guest` already.
    pub fn contains(&self, guest: &str) -> bool {
        self.entries.iter().any(|(path, _)| path == guest)
    }

    fn parents(&mut self, guest: &str) {
        let mut parents: Vec<String> = Path::new(guest)
            .ancestors()
            .skip(1)
            .map(|p| p.to_string_lossy().into_owned())
            .filter(|p| p != "/" && !p.is_empty())
            .collect();
        parents.reverse();
        for parent in parents {
            if self.dirs.insert(parent.clone()) {
                self.entries.push((parent, Entry::Dir));
            }
        }
    }

    /// Writes the archive to `out`.
    pub fn write(&self, out: &Path) -> Result<()> {
        let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
        let mut writer = io::BufWriter::with_capacity(1 << 20, file);
        let mut inode = 1;
        for (path, entry) in &self.entries {
            let name = path.trim_start_matches('/');
            inode += 1;
            match entry {
                Entry::Dir => header(&mut writer, inode, 0o040755, 0, name)?,
                Entry::Symlink(target) => {
                    header(&mut writer, inode, 0o120777, target.len(), name)?;
                    data(&mut writer, target.as_bytes())?;
                }
                Entry::Bytes { data: bytes, mode } => {
                    header(&mut writer, inode, 0o100000 | mode, bytes.len(), name)?;
                    data(&mut writer, bytes)?;
                }
                Entry::File { source, mode } => {
                    let bytes = fs::read(source)
                        .with_context(|| format!("reading {}", source.display()))?;
                    header(&mut writer, inode, 0o100000 | mode, bytes.len(), name)?;
                    data(&mut writer, &bytes)?;
                }
            }
        }
        header(&mut writer, 0, 0, 0, "TRAILER!!!")?;
        writer.flush()?;
        Ok(())
    }
}

/// A newc header and the NUL-terminated name, padded to 4 bytes.
fn header(out: &mut impl Write, inode: u32, mode: u32, size: usize, name: &str) -> io::Result<()> {
    let fields = [
        inode,
        mode,
        0, // uid
        0, // gid
        1, // nlink
        0, // mtime
        size as u32,
        0, // devmajor
        0, // devminor
        0, // rdevmajor
        0, // rdevminor
        name.len() as u32 + 1,
        0, // check
    ];
    let mut head = String::from("070701");
    for field in fields {
        head.push_str(&format!("{field:08x}"));
    }
    out.write_all(head.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    pad(out, 110 + name.len() + 1)
}

fn data(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    out.write_all(bytes)?;
    pad(out, bytes.len())
}

fn pad(out: &mut impl Write, written: usize) -> io::Result<()> {
    let padding = (4 - written % 4) % 4;
    out.write_all(&[0; 3][..padding])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_padded_and_parents_come_first() {
        let mut archive = Initramfs::default();
        archive.bytes("/a/b", b"xyz".to_vec(), 0o755);
        let out = std::env::temp_dir().join(format!("xtask-initramfs-{}", std::process::id()));
        archive.write(&out).unwrap();
        let bytes = fs::read(&out).unwrap();
        let _ = fs::remove_file(&out);
        assert_eq!(bytes.len() % 4, 0);
        let text = String::from_utf8_lossy(&bytes);
        let dir = text.find("a\0").unwrap();
        let file = text.find("a/b\0").unwrap();
        assert!(dir < file);
        assert!(text.contains("xyz"));
        assert!(text.ends_with("TRAILER!!!\0\0\0\0") || text.contains("TRAILER!!!"));
        // The first header: magic, inode 2, a directory.
        assert!(text.starts_with("07070100000002000041ed"));
    }
}
