//! A BPF filesystem of a test's own, so the pin directories of the restart tests are theirs.

use std::{
    fs,
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A BPF filesystem mounted for the test (the agents run in their own mount namespaces under
/// `ip netns exec`, which see host mounts made before they start). Unmounted on drop.
pub struct Bpffs(pub PathBuf);

impl Bpffs {
    pub fn mount() -> Self {
        let path = PathBuf::from(format!(
            "/tmp/flowlog-bpffs-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&path)
            .status()
            .expect("mount");
        assert!(status.success(), "mounting bpffs on {}", path.display());
        Bpffs(path)
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = fs::remove_dir(&self.0);
    }
}
