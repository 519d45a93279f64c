//! One owner per interface. flowlog programs on an interface that this agent's pin directory
//! does not hold belong to someone else: an agent with another `--pin-dir` (running, or stopped
//! with its programs kept), or an agent without pins whose clsact filters outlived it (filters
//! are not links: a killed agent leaves them). They would go on counting into maps nobody
//! drains and enforcing a policy nobody configured; stacking this agent's programs on top would
//! hide that. `run` refuses, naming them, unless told to take them over; `check` reports them.

use std::{fmt, io};

use aya::programs::{SchedClassifier, TcAttachType};

use super::DatapathError;
use crate::{interfaces::Interface, sys::attachments};

/// Every flowlog program's name starts with this.
const PROGRAM_PREFIX: &str = "flowlog_";

/// A flowlog program attached to an interface by someone other than this agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForeignProgram {
    pub interface: String,
    pub ifindex: u32,
    pub hook: ForeignHook,
    pub program: String,
    pub program_id: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForeignHook {
    /// A TCX link (ingress or egress).
    Tcx {
        ingress: bool,
    },
    /// A filter under the clsact qdisc.
    Clsact {
        ingress: bool,
    },
    Xdp,
}

impl fmt::Display for ForeignProgram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hook = match self.hook {
            ForeignHook::Tcx { ingress: true } => "TCX ingress",
            ForeignHook::Tcx { ingress: false } => "TCX egress",
            ForeignHook::Clsact { ingress: true } => "clsact ingress filter",
            ForeignHook::Clsact { ingress: false } => "clsact egress filter",
            ForeignHook::Xdp => "XDP",
        };
        write!(
            f,
            "{}: {hook} program {} (id {})",
            self.interface, self.program, self.program_id
        )
    }
}

/// The flowlog programs attached to `interfaces` other than `own` (the programs behind the
/// links pinned in this agent's pin directory, which it takes over).
pub fn find(interfaces: &[Interface], own: &[u32]) -> io::Result<Vec<ForeignProgram>> {
    let mut found = Vec::new();
    for interface in interfaces {
        let mut add = |hook, program_id: u32, program: String| {
            if program.starts_with(PROGRAM_PREFIX) && !own.contains(&program_id) {
                found.push(ForeignProgram {
                    interface: interface.name.clone(),
                    ifindex: interface.ifindex,
                    hook,
                    program,
                    program_id,
                });
            }
        };
        for (ingress, attach_type) in [(true, TcAttachType::Ingress), (false, TcAttachType::Egress)]
        {
            // Kernels without TCX (before 6.6) refuse the query: nothing can be there.
            let Ok((_, programs)) = SchedClassifier::query_tcx(&interface.name, attach_type) else {
                continue;
            };
            for program in programs {
                let name = program.name_as_str().unwrap_or_default().to_owned();
                add(ForeignHook::Tcx { ingress }, program.id(), name);
            }
        }
        for filter in attachments::clsact_filters(interface.ifindex)? {
            // aya names a filter after its program; the program's own name is checked too.
            let name = attachments::program_name(filter.program_id).unwrap_or(filter.name);
            add(
                ForeignHook::Clsact {
                    ingress: filter.ingress,
                },
                filter.program_id,
                name,
            );
        }
        if let Some(program_id) = attachments::xdp_program(interface.ifindex)? {
            let name = attachments::program_name(program_id).unwrap_or_default();
            add(ForeignHook::Xdp, program_id, name);
        }
    }
    Ok(found)
}

/// Removes foreign programs (`--take-over`). What they counted stays in their maps, which
/// nobody drains: as with `flowlog-agent detach`, it is discarded.
pub fn remove(foreign: &[ForeignProgram]) -> Result<(), DatapathError> {
    let error = |program: &ForeignProgram, message: String| DatapathError::Attach {
        interface: program.interface.clone(),
        message: format!("taking over {program}: {message}"),
    };
    let mut links = None;
    for program in foreign {
        match program.hook {
            ForeignHook::Clsact { ingress } => {
                let attach_type = if ingress {
                    TcAttachType::Ingress
                } else {
                    TcAttachType::Egress
                };
                match aya::programs::tc::qdisc_detach_program(
                    &program.interface,
                    attach_type,
                    &program.program,
                ) {
                    Ok(()) => {}
                    // Removed with an earlier filter of the same name.
                    Err(aya::programs::tc::TcError::IoError(e))
                        if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(error(program, e.to_string())),
                }
            }
            ForeignHook::Tcx { .. } | ForeignHook::Xdp => {
                // Links are found by their program: the kernel has no query from hook to link
                // for XDP, and a TCX query answers with program ids.
                let all = match &links {
                    Some(all) => all,
                    None => {
                        links.insert(link_programs().map_err(|e| error(program, e.to_string()))?)
                    }
                };
                let Some((link, _)) = all.iter().find(|(_, p)| *p == program.program_id) else {
                    return Err(error(
                        program,
                        "it is not attached through a BPF link; remove it with `ip link set dev IF xdp off` or `tc filter del`".into(),
                    ));
                };
                attachments::detach_link(*link).map_err(|e| error(program, e.to_string()))?;
            }
        }
        tracing::warn!(program = %program, "took over: removed a flowlog program this agent does not own; what it had counted is discarded");
    }
    Ok(())
}

/// Every BPF link with the program it runs.
fn link_programs() -> io::Result<Vec<(u32, u32)>> {
    let mut out = Vec::new();
    for id in attachments::link_ids()? {
        if let Some(program) = attachments::link_program(id)? {
            out.push((id, program));
        }
    }
    Ok(out)
}
