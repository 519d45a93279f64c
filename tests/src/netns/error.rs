//! What can go wrong while setting up a test topology.

use std::{fmt, io, net::IpAddr, process::ExitStatus};

use super::MAX_IFNAME_LEN;

#[derive(Debug)]
pub enum Error {
    /// A command could not be started.
    Spawn {
        command: String,
        source: io::Error,
    },
    /// A command exited with a failure.
    Command {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
    /// An address outside 198.18.0.0/15 and fd00::/8, or a prefix reaching outside them.
    AddressNotAllowed {
        addr: IpAddr,
        prefix_len: u8,
    },
    InvalidInterfaceName(String),
    /// A sysctl outside `net.`, which would change the host, or a key that is not a plain path.
    SysctlNotAllowed(String),
    /// An `ip` command that names a namespace other than a test namespace.
    OutsideTestNamespaces(String),
    Io {
        context: String,
        source: io::Error,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Spawn { command, source } => write!(f, "cannot run `{command}`: {source}"),
            Self::Command {
                command,
                status,
                stderr,
            } => write!(f, "`{command}` failed ({status}): {}", stderr.trim()),
            Self::AddressNotAllowed { addr, prefix_len } => write!(
                f,
                "{addr}/{prefix_len} is outside the test ranges 198.18.0.0/15 and fd00::/8"
            ),
            Self::InvalidInterfaceName(name) => write!(
                f,
                "invalid interface name {name:?} (1 to {MAX_IFNAME_LEN} characters, no '/', \
                 '@', ':' or whitespace)"
            ),
            Self::SysctlNotAllowed(key) => {
                write!(f, "sysctl {key:?} is not a per-namespace net.* key")
            }
            Self::OutsideTestNamespaces(command) => {
                write!(f, "`ip {command}` reaches outside the test namespaces")
            }
            Self::Io { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Spawn { source, .. } | Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
