//! Checks the capabilities the agent needs before it tries anything, so a missing one is named.

use std::fs;

/// A Linux capability the agent needs, with why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    pub name: &'static str,
    pub bit: u32,
    pub needed_for: &'static str,
}

const CAP_NET_ADMIN: Capability = Capability {
    name: "CAP_NET_ADMIN",
    bit: 12,
    needed_for: "attaching TC and XDP programs to interfaces",
};
const CAP_SYS_ADMIN_BIT: u32 = 21;
const CAP_BPF: Capability = Capability {
    name: "CAP_BPF",
    bit: 39,
    needed_for: "creating maps and loading eBPF programs",
};
const CAP_PERFMON: Capability = Capability {
    name: "CAP_PERFMON",
    bit: 38,
    needed_for: "the verifier's checks of direct packet access without Spectre masking",
};

#[derive(Debug, thiserror::Error)]
#[error(
    "missing capability {}: needed for {} (run flowlog-agent as root, or grant it CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)",
    .0.name, .0.needed_for
)]
pub struct MissingCapability(pub Capability);

/// Fails with the first capability the process lacks. CAP_SYS_ADMIN stands in for CAP_BPF and
/// CAP_PERFMON, as the kernel allows.
pub fn check() -> Result<(), MissingCapability> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    check_effective(effective_set(&status))
}

fn effective_set(proc_status: &str) -> u64 {
    proc_status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0)
}

fn check_effective(effective: u64) -> Result<(), MissingCapability> {
    let has = |bit: u32| effective & (1 << bit) != 0;
    let sys_admin = has(CAP_SYS_ADMIN_BIT);
    for capability in [CAP_NET_ADMIN, CAP_BPF, CAP_PERFMON] {
        let covered = capability.bit != CAP_NET_ADMIN.bit && sys_admin;
        if !has(capability.bit) && !covered {
            return Err(MissingCapability(capability));
        }
    }
    Ok(())
}

/// What the agent keeps once it runs: CAP_BPF for its maps and links, CAP_NET_ADMIN to attach
/// the interfaces that appear later. Loading programs (CAP_PERFMON) and mounting the BPF
/// filesystem (CAP_SYS_ADMIN) happen at start-up only. A kernel without CAP_BPF (before 5.8)
/// needs CAP_SYS_ADMIN in its place, which is kept then.
pub fn drop_to_running_set() -> std::io::Result<&'static str> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = effective_set(&status);
    if effective & (1 << CAP_BPF.bit) != 0 {
        crate::sys::keep_only_capabilities(&[CAP_BPF.bit, CAP_NET_ADMIN.bit])?;
        Ok("CAP_BPF, CAP_NET_ADMIN")
    } else {
        crate::sys::keep_only_capabilities(&[CAP_SYS_ADMIN_BIT, CAP_NET_ADMIN.bit])?;
        Ok("CAP_SYS_ADMIN, CAP_NET_ADMIN")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_effective_set() {
        let status = "Name:\tflowlog-agent\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective_set(status), 0x1ff_ffff_ffff);
        assert_eq!(effective_set("Name: x\n"), 0);
    }

    #[test]
    fn names_the_first_missing_capability() {
        let all = (1 << 12) | (1 << 38) | (1 << 39);
        assert!(check_effective(all).is_ok());
        assert!(
            check_effective((1 << 12) | (1 << 21)).is_ok(),
            "CAP_SYS_ADMIN covers BPF and PERFMON"
        );
        let error = check_effective(all & !(1 << 39)).unwrap_err();
        assert_eq!(error.0.name, "CAP_BPF");
        assert!(
            error
                .to_string()
                .starts_with("missing capability CAP_BPF: needed for creating maps")
        );
        assert_eq!(
            check_effective(1 << 21).unwrap_err().0.name,
            "CAP_NET_ADMIN"
        );
    }
}
