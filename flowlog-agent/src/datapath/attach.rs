//! Hooking the programs into interfaces: TC on ingress and egress (TCX where the kernel has it,
//! clsact otherwise), or XDP on ingress with TC on egress.

use std::{
    io,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::FdLink,
        tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions},
        xdp::XdpLinkId,
    },
};

use super::{
    CountingProgram, DatapathError, ProgramSet,
    hook::{Hook, TcMode},
    programs,
};
use crate::sys;

/// An interface with programs attached; detaching it (or dropping the `Datapath`) removes them.
#[derive(Debug)]
pub struct AttachedInterface {
    pub name: String,
    pub ifindex: u32,
    pub hook: Hook,
    pub tc_mode: TcMode,
    ingress: ProgramLink,
    egress: ProgramLink,
    /// Attached with a pin directory: the programs may stay attached when the agent stops
    /// (links pinned; clsact filters recognized by the programs pinned there).
    outlives_agent: bool,
    /// The build its programs come from.
    set: ProgramSet,
}

impl AttachedInterface {
    /// The names of its egress and ingress programs in the eBPF object.
    fn programs(&self) -> (&'static str, &'static str) {
        let ingress = match self.hook {
            Hook::Tc => CountingProgram::TcIngress,
            Hook::Xdp => CountingProgram::Xdp,
        };
        (
            self.set.name(CountingProgram::TcEgress),
            self.set.name(ingress),
        )
    }

    /// Whether its programs may stay attached after the agent, for the next one to adopt.
    pub fn is_pinned(&self) -> bool {
        self.outlives_agent
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
    /// A link a previous agent pinned at this path, to be taken over when the start commits
    /// ([`adopt_pending`]); until then it runs the previous agent's program, untouched.
    Adopting(PathBuf),
    /// A clsact filter a previous agent of this pin directory left, to be taken over in place
    /// (same priority and handle) when the start commits.
    AdoptingFilter {
        priority: u16,
        handle: u32,
    },
}

/// Where a link is pinned: `<links dir>/<if>-<ifindex>-<point>` (no dots: bpffs refuses them,
/// and interface names may have them, eth0.100).
fn pin_path(links: &Path, interface: &str, ifindex: u32, point: &str) -> PathBuf {
    let name = interface.replace('.', "_");
    links.join(format!("{name}-{ifindex}-{point}"))
}

/// The link a previous agent pinned for this interface and hook point, found by ifindex so a
/// renamed interface keeps its link.
fn pinned_link(links: &Path, ifindex: u32, point: &str) -> Option<PathBuf> {
    let suffix = format!("-{ifindex}-{point}");
    std::fs::read_dir(links)
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.ends_with(&suffix))
        })
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

/// How the programs hook into an interface, and where its links are pinned.
#[derive(Clone, Copy)]
pub(super) struct AttachPoint<'a> {
    pub interface: &'a str,
    pub ifindex: u32,
    pub hook: Hook,
    pub tc_mode: TcMode,
    /// The links directory, when links are pinned.
    pub pins: Option<&'a Path>,
    /// Whether links a previous agent pinned are taken over now, or only when the start commits.
    pub adopt_now: bool,
    /// The programs a previous agent of this pin directory left (behind its links, or pinned
    /// for its clsact filters): their clsact filters are taken over, not stacked on.
    pub own_programs: &'a [u32],
    /// The build of the programs to attach.
    pub set: ProgramSet,
}

/// Attaches the programs to one interface. With `pins` (a links directory) and TCX, the links
/// are pinned there; a link already pinned for the interface and hook (left by a previous agent)
/// is adopted: its program is replaced in one step, so no packet is missed or counted twice.
pub(super) fn attach(
    ebpf: &mut Ebpf,
    point: AttachPoint<'_>,
) -> Result<AttachedInterface, DatapathError> {
    let AttachPoint {
        interface,
        ifindex,
        hook,
        tc_mode,
        ..
    } = point;
    let error = |what: &str, source: ProgramError| DatapathError::Attach {
        interface: interface.to_owned(),
        message: describe_attach_error(what, &source),
    };
    if tc_mode == TcMode::Clsact {
        match tc::qdisc_add_clsact(interface) {
            Ok(()) => {}
            // Already there (another tool's, or the filters a previous agent left in it).
            Err(tc::TcError::IoError(e)) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(tc::TcError::AlreadyAttached) => {}
            Err(e) => {
                return Err(DatapathError::Attach {
                    interface: interface.to_owned(),
                    message: format!("adding the clsact qdisc: {e}"),
                });
            }
        }
    }
    let egress =
        attach_link(ebpf, point, LinkPoint::TcEgress).map_err(|e| error("TC egress", e))?;
    let ingress_point = match hook {
        Hook::Tc => LinkPoint::TcIngress,
        Hook::Xdp => LinkPoint::Xdp,
    };
    let ingress = match attach_link(ebpf, point, ingress_point) {
        Ok(link) => link,
        Err(e) => {
            // Leave nothing half attached (an adopted link is not touched until commit).
            let _ = release(ebpf, point.set.name(CountingProgram::TcEgress), egress);
            return Err(error(ingress_point.describe(), e));
        }
    };
    Ok(AttachedInterface {
        name: interface.to_owned(),
        ifindex,
        hook,
        tc_mode,
        ingress,
        egress,
        outlives_agent: point.pins.is_some(),
        set: point.set,
    })
}

/// One hook point of an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinkPoint {
    TcIngress,
    TcEgress,
    Xdp,
}

impl LinkPoint {
    fn program(self, set: ProgramSet) -> &'static str {
        set.name(match self {
            LinkPoint::TcIngress => CountingProgram::TcIngress,
            LinkPoint::TcEgress => CountingProgram::TcEgress,
            LinkPoint::Xdp => CountingProgram::Xdp,
        })
    }

    /// The last part of a pinned link's name.
    fn pin_name(self) -> &'static str {
        match self {
            LinkPoint::TcIngress => "tc_in",
            LinkPoint::TcEgress => "tc_eg",
            LinkPoint::Xdp => "xdp",
        }
    }

    fn tc_attach_type(self) -> TcAttachType {
        match self {
            LinkPoint::TcIngress => TcAttachType::Ingress,
            _ => TcAttachType::Egress,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            LinkPoint::TcIngress => "TC ingress",
            LinkPoint::TcEgress => "TC egress",
            LinkPoint::Xdp => "native XDP",
        }
    }
}

/// Attaches one program: adopts what a previous agent left for this point (its pinned link, or
/// its clsact filter; now, or later at commit), or attaches a new one, pinned if links are.
fn attach_link(
    ebpf: &mut Ebpf,
    point: AttachPoint<'_>,
    link_point: LinkPoint,
) -> Result<ProgramLink, ProgramError> {
    let Some(links) = point.pins else {
        return attach_new(ebpf, point, link_point, None);
    };
    if link_point != LinkPoint::Xdp && point.tc_mode == TcMode::Clsact {
        // Filters are not links: they cannot be pinned. A previous agent's filter is known by
        // its program, which it pinned.
        if let Some((priority, handle)) = own_filter(point, link_point == LinkPoint::TcIngress) {
            if !point.adopt_now {
                return Ok(ProgramLink::AdoptingFilter { priority, handle });
            }
            return adopt_filter(
                ebpf,
                point.set,
                point.interface,
                link_point,
                priority,
                handle,
            );
        }
        return attach_new(ebpf, point, link_point, None);
    }
    let wanted = pin_path(links, point.interface, point.ifindex, link_point.pin_name());
    if let Some(existing) = pinned_link(links, point.ifindex, link_point.pin_name()) {
        if !point.adopt_now {
            return Ok(ProgramLink::Adopting(existing));
        }
        if let Some(adopted) = adopt(ebpf, point.set, link_point, &existing, &wanted) {
            return Ok(adopted);
        }
    }
    attach_new(ebpf, point, link_point, Some(wanted))
}

/// The priority and handle of a clsact filter on this interface and direction that runs one of
/// `point.own_programs`.
fn own_filter(point: AttachPoint<'_>, ingress: bool) -> Option<(u16, u32)> {
    if point.own_programs.is_empty() {
        return None;
    }
    sys::attachments::clsact_filters(point.ifindex)
        .ok()?
        .into_iter()
        .find(|f| f.ingress == ingress && point.own_programs.contains(&f.program_id))
        .map(|f| (f.priority, f.handle))
}

/// Replaces the program of a clsact filter in place (a netlink change at the same priority and
/// handle, which cls_bpf applies atomically).
fn adopt_filter(
    ebpf: &mut Ebpf,
    set: ProgramSet,
    interface: &str,
    link_point: LinkPoint,
    priority: u16,
    handle: u32,
) -> Result<ProgramLink, ProgramError> {
    let attach_type = link_point.tc_attach_type();
    let link =
        tc::SchedClassifierLink::attached(interface, attach_type, priority, handle.into(), None)
            .map_err(|io_error| {
                ProgramError::SyscallError(aya::sys::SyscallError {
                    call: "clsact filter",
                    io_error,
                })
            })?;
    let program = classifier(ebpf, link_point.program(set)).map_err(|_| ProgramError::NotLoaded)?;
    let id = program.attach_to_link(link)?;
    Ok(ProgramLink::Tc(id))
}

/// Removes a clsact filter by its priority and handle (a previous agent's, not taken over).
pub(super) fn remove_filter(interface: &str, ingress: bool, priority: u16, handle: u32) {
    let attach_type = if ingress {
        TcAttachType::Ingress
    } else {
        TcAttachType::Egress
    };
    // Dropping a link built for a known filter detaches that filter.
    if let Ok(link) =
        tc::SchedClassifierLink::attached(interface, attach_type, priority, handle.into(), None)
    {
        drop(link);
    }
}

/// Takes over the links of `attached` that wait for the start to commit; a link that cannot be
/// taken over (its interface went away meanwhile) is replaced by a new one.
pub(super) fn adopt_pending(
    ebpf: &mut Ebpf,
    attached: &mut AttachedInterface,
    links: &Path,
) -> Result<(), DatapathError> {
    let ingress_point = match attached.hook {
        Hook::Tc => LinkPoint::TcIngress,
        Hook::Xdp => LinkPoint::Xdp,
    };
    let point = AttachPoint {
        interface: &attached.name,
        ifindex: attached.ifindex,
        hook: attached.hook,
        tc_mode: attached.tc_mode,
        pins: Some(links),
        adopt_now: true,
        own_programs: &[],
        set: attached.set,
    };
    for (link, link_point) in [
        (&mut attached.egress, LinkPoint::TcEgress),
        (&mut attached.ingress, ingress_point),
    ] {
        let adopted = match link {
            ProgramLink::AdoptingFilter { priority, handle } => adopt_filter(
                ebpf,
                point.set,
                point.interface,
                link_point,
                *priority,
                *handle,
            )
            .or_else(|_| attach_new(ebpf, point, link_point, None)),
            ProgramLink::Adopting(existing) => {
                let wanted = pin_path(links, point.interface, point.ifindex, link_point.pin_name());
                match adopt(ebpf, point.set, link_point, existing, &wanted) {
                    Some(adopted) => Ok(adopted),
                    None => attach_new(ebpf, point, link_point, Some(wanted)),
                }
            }
            _ => continue,
        };
        *link = adopted.map_err(|e| DatapathError::Attach {
            interface: point.interface.to_owned(),
            message: describe_attach_error(link_point.describe(), &e),
        })?;
    }
    Ok(())
}

/// Leaves the programs of `attached` attached after the agent: pinned links are held by their
/// pins; a clsact filter's link is forgotten, so aya does not detach it.
pub(super) fn leave_attached(ebpf: &mut Ebpf, attached: AttachedInterface) {
    let (egress_program, ingress_program) = attached.programs();
    for (program, link) in [
        (egress_program, attached.egress),
        (ingress_program, attached.ingress),
    ] {
        if let ProgramLink::Tc(id) = link
            && let Ok(classifier) = classifier(ebpf, program)
            && let Ok(link) = classifier.take_link(id)
        {
            std::mem::forget(link);
        }
    }
}

pub(super) fn detach(ebpf: &mut Ebpf, attached: AttachedInterface) -> Result<(), DatapathError> {
    let error = |source| DatapathError::Attach {
        interface: attached.name.clone(),
        message: format!("detaching: {source}"),
    };
    let (egress_program, ingress_program) = attached.programs();
    let egress = release(ebpf, egress_program, attached.egress);
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
        // Never taken over: it still belongs to the previous agent.
        ProgramLink::Adopting(_) | ProgramLink::AdoptingFilter { .. } => Ok(()),
    }
}

/// Replaces the program of the link pinned at `existing` with this agent's program for
/// `link_point`, and pins it under `wanted` (the interface's name may have changed). `None` if
/// there is no such link any more or it is no longer attached (its interface went away), in
/// which case its pin is removed.
fn adopt(
    ebpf: &mut Ebpf,
    set: ProgramSet,
    link_point: LinkPoint,
    existing: &Path,
    wanted: &Path,
) -> Option<ProgramLink> {
    let program = match link_point {
        LinkPoint::Xdp => xdp(ebpf, link_point.program(set)).ok()?.fd().ok()?,
        _ => classifier(ebpf, link_point.program(set)).ok()?.fd().ok()?,
    };
    let link = match sys::bpf_obj_get(existing)
        .and_then(|link| sys::bpf_link_update(link.as_fd(), program.as_fd()).map(|()| link))
    {
        Ok(link) => link,
        Err(error) => {
            tracing::warn!(pin = %existing.display(), %error, "stale pinned link removed");
            let _ = std::fs::remove_file(existing);
            return None;
        }
    };
    if existing != wanted {
        // Pinned under the new name first, so the link is held throughout.
        match sys::bpf_obj_pin(link.as_fd(), wanted) {
            Ok(()) => {
                let _ = std::fs::remove_file(existing);
                return Some(ProgramLink::Pinned(wanted.to_owned()));
            }
            Err(error) => {
                tracing::warn!(pin = %existing.display(), %error, "pinned link kept under its old name");
            }
        }
    }
    Some(ProgramLink::Pinned(existing.to_owned()))
}

/// Attaches a new link for `link_point`, pinned at `pin` if given.
fn attach_new(
    ebpf: &mut Ebpf,
    point: AttachPoint<'_>,
    link_point: LinkPoint,
    pin: Option<PathBuf>,
) -> Result<ProgramLink, ProgramError> {
    let taken = match link_point {
        LinkPoint::Xdp => {
            let program =
                xdp(ebpf, link_point.program(point.set)).map_err(|_| ProgramError::NotLoaded)?;
            let id = program.attach_to_if_index(point.ifindex, XdpMode::Driver)?;
            match &pin {
                None => return Ok(ProgramLink::Xdp(id)),
                Some(_) => program.take_link(id)?.try_into(),
            }
        }
        LinkPoint::TcIngress | LinkPoint::TcEgress => {
            let attach_type = link_point.tc_attach_type();
            let options = match point.tc_mode {
                // Last in the chain: earlier programs' drops are theirs; we count what goes
                // through.
                TcMode::Tcx => TcAttachOptions::TcxOrder(LinkOrder::default()),
                TcMode::Clsact => TcAttachOptions::Netlink(NlOptions::default()),
            };
            let program = classifier(ebpf, link_point.program(point.set))
                .map_err(|_| ProgramError::NotLoaded)?;
            let id = program.attach_with_options(point.interface, attach_type, options)?;
            // A clsact filter is no link: it cannot be pinned.
            match &pin {
                Some(_) if point.tc_mode == TcMode::Tcx => program.take_link(id)?.try_into(),
                _ => return Ok(ProgramLink::Tc(id)),
            }
        }
    };
    let link: FdLink = taken.map_err(|_| ProgramError::NotAttached)?;
    let path = pin.expect("pinned links only reach here");
    link.pin(&path).map_err(pin_error)?;
    Ok(ProgramLink::Pinned(path))
}

fn pin_error(error: aya::pin::PinError) -> ProgramError {
    ProgramError::SyscallError(aya::sys::SyscallError {
        call: "pinning a link",
        io_error: io::Error::other(error.to_string()),
    })
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
