//! Which hook each interface gets, decided in one place for `run` and `check` alike: the
//! operator's choice (`--hook`, `--tc-mode`), what the driver says of native XDP (Linux 6.3+
//! says), and what the kernel has (TCX from 6.6).

use std::{fmt, fs, path::Path};

use crate::{interfaces::Interface, sys};

/// How the operator asked interfaces to be hooked (`--hook`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum HookChoice {
    /// XDP on devices whose driver runs it natively without giving up receive offloads, TC
    /// everywhere else (veth, bridges, tunnels, paravirtual NICs).
    #[default]
    Auto,
    /// TC on ingress and egress.
    Tc,
    /// Native (driver) XDP on ingress, TC on egress. Generic (skb) XDP is never used: it sees
    /// GRO super-packets without their segment count and costs more than TC.
    Xdp,
}

/// How one interface is hooked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Tc,
    Xdp,
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Hook::Tc => "tc",
            Hook::Xdp => "xdp",
        })
    }
}

/// How the operator asked TC programs to be attached (`--tc-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TcModeChoice {
    /// TCX where the kernel has it (Linux 6.6+), clsact otherwise.
    #[default]
    Auto,
    Tcx,
    Clsact,
}

impl TcModeChoice {
    pub fn resolve(self) -> TcMode {
        match self {
            TcModeChoice::Auto => TcMode::for_running_kernel(),
            TcModeChoice::Tcx => TcMode::Tcx,
            TcModeChoice::Clsact => TcMode::Clsact,
        }
    }
}

/// How TC programs are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcMode {
    /// BPF links on the TCX hook (Linux 6.6 and later): owned by the agent, gone with it.
    Tcx,
    /// Filters under a clsact qdisc (older kernels).
    Clsact,
}

impl TcMode {
    /// TCX when the running kernel has it (6.6 and later), clsact otherwise.
    pub fn for_running_kernel() -> Self {
        if super::has_tcx() {
            TcMode::Tcx
        } else {
            TcMode::Clsact
        }
    }
}

impl fmt::Display for TcMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TcMode::Tcx => "tcx",
            TcMode::Clsact => "clsact",
        })
    }
}

/// Drivers of hypervisor NICs whose native XDP turns off receive offloads (LRO/GRO on the
/// host side), costing more throughput than TC: like veth, measured at -55% here.
const PARAVIRTUAL_DRIVERS: &[&str] = &["virtio_net", "hv_netvsc", "xen-netfront", "vmxnet3"];

/// The ingress hook `choice` gives this interface (`auto`: native XDP where it pays, see
/// [`prefers_native_xdp`]).
pub fn for_interface(choice: HookChoice, interface: &Interface) -> Hook {
    match choice {
        HookChoice::Tc => Hook::Tc,
        HookChoice::Xdp => Hook::Xdp,
        HookChoice::Auto if prefers_native_xdp(interface) => Hook::Xdp,
        HookChoice::Auto => Hook::Tc,
    }
}

/// Whether `--hook auto` should try native XDP on this interface: only on a physical device
/// (one with a bus device in sysfs) whose driver is not a paravirtual one. Virtual devices (veth,
/// bridges, tunnels, dummy) have no bus device.
pub fn prefers_native_xdp(interface: &Interface) -> bool {
    prefers_native_xdp_in(Path::new("/sys/class/net"), interface)
}

fn prefers_native_xdp_in(sysfs_net: &Path, interface: &Interface) -> bool {
    let dir = sysfs_net.join(&interface.name);
    // sysfs shows the namespace it was mounted in; trust it only if it shows this interface.
    let same_interface = fs::read_to_string(dir.join("ifindex"))
        .is_ok_and(|index| index.trim() == interface.ifindex.to_string());
    if !same_interface || !dir.join("device").exists() {
        return false;
    }
    let driver = fs::read_link(dir.join("device/driver"))
        .ok()
        .and_then(|path| path.file_name().map(|n| n.to_string_lossy().into_owned()));
    match driver {
        Some(driver) => !PARAVIRTUAL_DRIVERS.contains(&driver.as_str()),
        None => false,
    }
}

/// What an interface's driver says of native XDP (`NETDEV_A_DEV_XDP_FEATURES`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NativeXdp {
    Yes,
    No,
    /// The kernel does not say (before Linux 6.3).
    NotSaid,
    /// It could not be asked.
    Unknown,
}

impl fmt::Display for NativeXdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NativeXdp::Yes => "native XDP yes",
            NativeXdp::No => "native XDP no",
            NativeXdp::NotSaid => "native XDP unknown (the kernel does not say before Linux 6.3)",
            NativeXdp::Unknown => "native XDP unknown",
        })
    }
}

/// What the driver of `ifindex` says of native XDP.
pub fn native_xdp(ifindex: u32) -> NativeXdp {
    match sys::xdp_features(ifindex) {
        Ok(Some(features)) if features & 1 != 0 => NativeXdp::Yes,
        Ok(Some(_)) => NativeXdp::No,
        Ok(None) => NativeXdp::NotSaid,
        Err(_) => NativeXdp::Unknown,
    }
}

/// The ingress hook `run` plans for an interface. An explicit `--hook xdp` on a driver that
/// says it has no native XDP is refused here, before anything is attached; `auto` falls back to
/// TC when attaching.
pub fn plan(choice: HookChoice, interface: &Interface) -> Result<Hook, String> {
    let hook = for_interface(choice, interface);
    if hook == Hook::Xdp
        && choice == HookChoice::Xdp
        && native_xdp(interface.ifindex) == NativeXdp::No
    {
        return Err(
            "its driver has no native XDP (as the kernel says); use --hook tc or --hook auto"
                .into(),
        );
    }
    Ok(hook)
}

/// How TC programs attach on this kernel; an explicit `--tc-mode tcx` where there is none is
/// refused here rather than at the first attach.
pub fn plan_tc_mode(choice: TcModeChoice) -> Result<TcMode, String> {
    let tc_mode = choice.resolve();
    if choice == TcModeChoice::Tcx && TcMode::for_running_kernel() == TcMode::Clsact {
        let kernel = sys::kernel_release();
        return Err(format!(
            "--tc-mode tcx: this kernel ({kernel}) has no TCX, which came in Linux 6.6; use --tc-mode auto or clsact"
        ));
    }
    Ok(tc_mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interfaces::tests::interface;

    #[test]
    fn native_xdp_only_for_physical_non_paravirtual_devices() {
        let root = std::env::temp_dir().join(format!("flowlog-sysfs-{}", std::process::id()));
        let make = |name: &str, ifindex: u32, driver: Option<&str>| {
            let dir = root.join(name);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("ifindex"), format!("{ifindex}\n")).unwrap();
            if let Some(driver) = driver {
                let drivers = root.join("drivers").join(driver);
                fs::create_dir_all(&drivers).unwrap();
                fs::create_dir_all(dir.join("device")).unwrap();
                std::os::unix::fs::symlink(&drivers, dir.join("device/driver")).unwrap();
            }
        };
        make("ens1", 3, Some("mlx5_core"));
        make("eth0", 2, Some("virtio_net"));
        make("veth0", 4, None);
        assert!(prefers_native_xdp_in(&root, &interface("ens1", 3, false)));
        assert!(!prefers_native_xdp_in(&root, &interface("eth0", 2, false)));
        assert!(!prefers_native_xdp_in(&root, &interface("veth0", 4, false)));
        // sysfs of another namespace: a different ifindex under the same name.
        assert!(!prefers_native_xdp_in(&root, &interface("ens1", 9, false)));
        fs::remove_dir_all(&root).unwrap();
    }
}
