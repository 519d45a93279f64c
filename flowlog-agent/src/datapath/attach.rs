//! Hooking the programs into interfaces: TC on ingress and egress (TCX where the kernel has it,
//! clsact otherwise), or XDP on ingress with TC on egress.

use std::{fmt, io};

use aya::{
    Ebpf,
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
        tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions},
        xdp::XdpLinkId,
    },
    util::KernelVersion,
};

use super::{DatapathError, programs};

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
    ingress: IngressLink,
    egress: SchedClassifierLinkId,
}

#[derive(Debug)]
enum IngressLink {
    Tc(SchedClassifierLinkId),
    Xdp(XdpLinkId),
}

pub(super) fn load_programs(ebpf: &mut Ebpf) -> Result<(), DatapathError> {
    for name in [
        programs::TC_INGRESS,
        programs::TC_EGRESS,
        programs::REFERENCE_TC,
    ] {
        classifier(ebpf, name)?
            .load()
            .map_err(|source| DatapathError::Program { name, source })?;
    }
    for name in [
        programs::XDP_INGRESS,
        programs::REFERENCE_XDP,
        programs::CLOCK,
    ] {
        xdp(ebpf, name)?
            .load()
            .map_err(|source| DatapathError::Program { name, source })?;
    }
    Ok(())
}

pub(super) fn attach(
    ebpf: &mut Ebpf,
    interface: &str,
    ifindex: u32,
    hook: Hook,
    tc_mode: TcMode,
) -> Result<AttachedInterface, DatapathError> {
    let error = |what: &str, source: ProgramError| DatapathError::Attach {
        interface: interface.to_owned(),
        message: describe_attach_error(what, &source),
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
        programs::TC_EGRESS,
        interface,
        TcAttachType::Egress,
        tc_mode,
    )
    .map_err(|e| error("TC egress", e))?;
    let ingress = match hook {
        Hook::Tc => attach_tc(
            ebpf,
            programs::TC_INGRESS,
            interface,
            TcAttachType::Ingress,
            tc_mode,
        )
        .map(IngressLink::Tc)
        .map_err(|e| error("TC ingress", e)),
        Hook::Xdp => xdp(ebpf, programs::XDP_INGRESS)?
            .attach_to_if_index(ifindex, XdpMode::Driver)
            .map(IngressLink::Xdp)
            .map_err(|e| error("native XDP", e)),
    };
    let ingress = match ingress {
        Ok(link) => link,
        Err(e) => {
            // Leave nothing half attached.
            let _ = classifier(ebpf, programs::TC_EGRESS)?.detach(egress);
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

pub(super) fn detach(ebpf: &mut Ebpf, attached: AttachedInterface) -> Result<(), DatapathError> {
    let error = |source| DatapathError::Attach {
        interface: attached.name.clone(),
        message: format!("detaching: {source}"),
    };
    let egress = classifier(ebpf, programs::TC_EGRESS)?.detach(attached.egress);
    let ingress = match attached.ingress {
        IngressLink::Tc(link) => classifier(ebpf, programs::TC_INGRESS)?.detach(link),
        IngressLink::Xdp(link) => xdp(ebpf, programs::XDP_INGRESS)?.detach(link),
    };
    egress.and(ingress).map_err(error)
}

fn attach_tc(
    ebpf: &mut Ebpf,
    program: &'static str,
    interface: &str,
    attach_type: TcAttachType,
    tc_mode: TcMode,
) -> Result<SchedClassifierLinkId, ProgramError> {
    let options = match tc_mode {
        // Last in the chain: earlier programs' drops are theirs; we count what goes through.
        TcMode::Tcx => TcAttachOptions::TcxOrder(LinkOrder::default()),
        TcMode::Clsact => TcAttachOptions::Netlink(NlOptions::default()),
    };
    let classifier = classifier(ebpf, program).map_err(|_| ProgramError::NotLoaded)?;
    classifier.attach_with_options(interface, attach_type, options)
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
    format!("attaching {what}: {error}{hint}")
}
