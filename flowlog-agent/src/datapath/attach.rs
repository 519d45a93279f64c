//! Hooking the programs into interfaces: TC on ingress and egress (TCX where the kernel has it,
//! clsact otherwise), or XDP on ingress with TC on egress.

use std::{
    fmt, io,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{
        LinkOrder, ProgramError, ProgramFd, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::FdLink,
        tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions},
        xdp::XdpLinkId,
    },
    util::KernelVersion,
};

use super::{CountingProgram, DatapathError, ProgramSet, programs};
use crate::sys;

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
        match KernelVersion::current() {
            Ok(version) if version >= KernelVersion::new(6, 6, 0) => TcMode::Tcx,
            _ => TcMode::Clsact,
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

/// An interface with programs attached; detaching it (or dropping the `Datapath`) removes them.
#[derive(Debug)]
pub struct AttachedInterface {
    pub name: String,
    pub ifindex: u32,
    pub hook: Hook,
    pub tc_mode: TcMode,
    ingress: ProgramLink,
    egress: ProgramLink,
}

impl AttachedInterface {
    /// Whether its programs are attached through pinned links, which outlive the agent.
    pub fn is_pinned(&self) -> bool {
        matches!(self.egress, ProgramLink::Pinned(_))
    }

    pub(super) fn pinned_paths(&self) -> impl Iterator<Item = &Path> {
        [&self.ingress, &self.egress]
            .into_iter()
            .filter_map(|link| match link {
                ProgramLink::Pinned(path) => Some(path.as_path()),
                _ => None,
            })
    }
}

#[derive(Debug)]
enum ProgramLink {
    Tc(SchedClassifierLinkId),
    Xdp(XdpLinkId),
    /// A link pinned at this path: the pin holds it; removing the pin detaches it.
    Pinned(PathBuf),
}

/// Loads (verifies) the counting programs of `set` and the helper programs; the other build's
/// programs stay unloaded (an older kernel refuses them).
pub(super) fn load_programs(ebpf: &mut Ebpf, set: ProgramSet) -> Result<(), DatapathError> {
    for name in [
        set.name(CountingProgram::TcIngress),
        set.name(CountingProgram::TcEgress),
        programs::REFERENCE_TC,
    ] {
        classifier(ebpf, name)?
            .load()
            .map_err(|source| DatapathError::Program { name, source })?;
    }
    for name in [
        set.name(CountingProgram::Xdp),
        programs::REFERENCE_XDP,
        programs::CLOCK,
    ] {
        xdp(ebpf, name)?
            .load()
            .map_err(|source| DatapathError::Program { name, source })?;
    }
    Ok(())
}

/// Attaches the programs to one interface. With `pins` (a links directory) and TCX, the links
/// are pinned there; a link already pinned for the interface and hook (left by a previous agent)
/// is adopted: its program is replaced in one step, so no packet is missed or counted twice.
pub(super) fn attach(
    ebpf: &mut Ebpf,
    set: ProgramSet,
    interface: &str,
    ifindex: u32,
    hook: Hook,
    tc_mode: TcMode,
    pins: Option<&Path>,
) -> Result<AttachedInterface, DatapathError> {
    let error = |what: &str, source: ProgramError| DatapathError::Attach {
        interface: interface.to_owned(),
        message: describe_attach_error(what, &source),
    };
    // clsact filters are not links: they cannot be pinned, and are detached with the agent.
    let pins = pins.filter(|_| tc_mode == TcMode::Tcx);
    // bpffs refuses names with dots (reserved), and interface names may have them (eth0.100).
    let pin_path = |point: &str| {
        let name = interface.replace('.', "_");
        pins.map(|dir| dir.join(format!("{name}-{ifindex}-{point}")))
    };
    if tc_mode == TcMode::Clsact {
        match tc::qdisc_add_clsact(interface) {
            Ok(()) => {}
            Err(tc::TcError::IoError(e)) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(DatapathError::Attach {
                    interface: interface.to_owned(),
                    message: format!("adding the clsact qdisc: {e}"),
                });
            }
        }
    }
    let egress = attach_tc(
        ebpf,
        set.name(CountingProgram::TcEgress),
        interface,
        TcAttachType::Egress,
        tc_mode,
        pin_path("tc_eg"),
    )
    .map_err(|e| error("TC egress", e))?;
    let ingress = match hook {
        Hook::Tc => attach_tc(
            ebpf,
            set.name(CountingProgram::TcIngress),
            interface,
            TcAttachType::Ingress,
            tc_mode,
            pin_path("tc_in"),
        )
        .map_err(|e| error("TC ingress", e)),
        Hook::Xdp => attach_xdp(
            ebpf,
            set.name(CountingProgram::Xdp),
            ifindex,
            pin_path("xdp"),
        )
        .map_err(|e| error("native XDP", e)),
    };
    let ingress = match ingress {
        Ok(link) => link,
        Err(e) => {
            // Leave nothing half attached.
            let _ = release(ebpf, set.name(CountingProgram::TcEgress), egress);
            return Err(e);
        }
    };
    Ok(AttachedInterface {
        name: interface.to_owned(),
        ifindex,
        hook,
        tc_mode,
        ingress,
        egress,
    })
}

pub(super) fn detach(
    ebpf: &mut Ebpf,
    set: ProgramSet,
    attached: AttachedInterface,
) -> Result<(), DatapathError> {
    let error = |source| DatapathError::Attach {
        interface: attached.name.clone(),
        message: format!("detaching: {source}"),
    };
    let ingress_program = set.name(match attached.hook {
        Hook::Tc => CountingProgram::TcIngress,
        Hook::Xdp => CountingProgram::Xdp,
    });
    let egress = release(ebpf, set.name(CountingProgram::TcEgress), attached.egress);
    let ingress = release(ebpf, ingress_program, attached.ingress);
    egress.and(ingress).map_err(error)
}

/// Detaches one program: an owned link through aya, a pinned one by removing its pin.
fn release(ebpf: &mut Ebpf, program: &'static str, link: ProgramLink) -> Result<(), ProgramError> {
    match link {
        ProgramLink::Tc(id) => classifier(ebpf, program)
            .map_err(|_| ProgramError::NotLoaded)?
            .detach(id),
        ProgramLink::Xdp(id) => xdp(ebpf, program)
            .map_err(|_| ProgramError::NotLoaded)?
            .detach(id),
        ProgramLink::Pinned(path) => std::fs::remove_file(&path).map_err(|io_error| {
            ProgramError::SyscallError(aya::sys::SyscallError {
                call: "unlink(pinned link)",
                io_error,
            })
        }),
    }
}

/// Replaces the program of the link pinned at `path` with `program`, if there is such a link and
/// it is still attached. A link that cannot be updated (its interface went away) is unpinned.
fn adopt(program: &ProgramFd, path: &Path) -> bool {
    if !path.exists() {
        return false;
    }
    let updated =
        sys::bpf_obj_get(path).and_then(|link| sys::bpf_link_update(link.as_fd(), program.as_fd()));
    match updated {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(pin = %path.display(), %error, "stale pinned link removed");
            let _ = std::fs::remove_file(path);
            false
        }
    }
}

fn attach_xdp(
    ebpf: &mut Ebpf,
    program: &'static str,
    ifindex: u32,
    pin: Option<PathBuf>,
) -> Result<ProgramLink, ProgramError> {
    let program = xdp(ebpf, program).map_err(|_| ProgramError::NotLoaded)?;
    if let Some(path) = &pin
        && adopt(program.fd()?, path)
    {
        return Ok(ProgramLink::Pinned(path.clone()));
    }
    let id = program.attach_to_if_index(ifindex, XdpMode::Driver)?;
    match pin {
        None => Ok(ProgramLink::Xdp(id)),
        Some(path) => {
            let link: FdLink = program
                .take_link(id)?
                .try_into()
                .map_err(|_| ProgramError::NotAttached)?;
            link.pin(&path).map_err(pin_error)?;
            Ok(ProgramLink::Pinned(path))
        }
    }
}

fn pin_error(error: aya::pin::PinError) -> ProgramError {
    ProgramError::SyscallError(aya::sys::SyscallError {
        call: "pinning a link",
        io_error: io::Error::other(error.to_string()),
    })
}

fn attach_tc(
    ebpf: &mut Ebpf,
    program: &'static str,
    interface: &str,
    attach_type: TcAttachType,
    tc_mode: TcMode,
    pin: Option<PathBuf>,
) -> Result<ProgramLink, ProgramError> {
    let options = match tc_mode {
        // Last in the chain: earlier programs' drops are theirs; we count what goes through.
        TcMode::Tcx => TcAttachOptions::TcxOrder(LinkOrder::default()),
        TcMode::Clsact => TcAttachOptions::Netlink(NlOptions::default()),
    };
    let classifier = classifier(ebpf, program).map_err(|_| ProgramError::NotLoaded)?;
    if let Some(path) = &pin
        && adopt(classifier.fd()?, path)
    {
        return Ok(ProgramLink::Pinned(path.clone()));
    }
    let id = classifier.attach_with_options(interface, attach_type, options)?;
    match pin {
        None => Ok(ProgramLink::Tc(id)),
        Some(path) => {
            let link: FdLink = classifier
                .take_link(id)?
                .try_into()
                .map_err(|_| ProgramError::NotAttached)?;
            link.pin(&path).map_err(pin_error)?;
            Ok(ProgramLink::Pinned(path))
        }
    }
}

fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, DatapathError> {
    let program = ebpf.program_mut(name).ok_or(DatapathError::Program {
        name,
        source: ProgramError::NotLoaded,
    })?;
    program
        .try_into()
        .map_err(|source| DatapathError::Program { name, source })
}

fn xdp<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, DatapathError> {
    let program = ebpf.program_mut(name).ok_or(DatapathError::Program {
        name,
        source: ProgramError::NotLoaded,
    })?;
    program
        .try_into()
        .map_err(|source| DatapathError::Program { name, source })
}

/// Turns an attach failure into a sentence an operator can act on.
fn describe_attach_error(what: &str, error: &ProgramError) -> String {
    let os_error = match error {
        ProgramError::SyscallError(e) => e.io_error.raw_os_error(),
        _ => None,
    };
    let hint = match os_error {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            " (permission denied: needs CAP_NET_ADMIN and CAP_BPF)"
        }
        Some(libc::EOPNOTSUPP) if what == "native XDP" => {
            " (the driver has no native XDP; use --hook tc or --hook auto)"
        }
        Some(libc::ENODEV) => " (the interface is gone)",
        Some(libc::EEXIST) | Some(libc::EBUSY) if what == "native XDP" => {
            " (another XDP program is attached; use --hook tc)"
        }
        _ => "",
    };
    let detail = match error {
        ProgramError::SyscallError(e) => format!(": {}", e.io_error),
        _ => String::new(),
    };
    format!("attaching {what}: {error}{detail}{hint}")
}
