//! Which interfaces a flow log covers (its scope, as AWS's interface, subnet or VPC): names
//! and globs, interfaces holding an address inside given CIDRs, or every non-loopback
//! interface.

use std::{io, net::IpAddr};

use crate::{
    policy::Network,
    sys::{self, LinkName},
};

/// An interface of this network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub ifindex: u32,
    pub loopback: bool,
    /// The IPv4 and IPv6 addresses it holds.
    pub addresses: Vec<IpAddr>,
}

impl From<LinkName> for Interface {
    fn from(link: LinkName) -> Self {
        Self {
            name: link.name,
            ifindex: link.ifindex,
            loopback: link.loopback,
            addresses: Vec::new(),
        }
    }
}

/// Every interface of the agent's network namespace, with its addresses.
pub fn list() -> io::Result<Vec<Interface>> {
    let mut interfaces: Vec<Interface> = sys::list_links()?
        .into_iter()
        .map(Interface::from)
        .collect();
    for (ifindex, address) in sys::interface_addresses()? {
        if let Some(interface) = interfaces.iter_mut().find(|i| i.ifindex == ifindex) {
            interface.addresses.push(address);
        }
    }
    Ok(interfaces)
}

/// A scope entry refused; shown as the flag (`--interface ...`), [`SelectorError::describe`]
/// for the file's words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SelectorError {
    BadGlob { pattern: String, reason: String },
    Empty(String),
}

impl std::fmt::Display for SelectorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "--interface {}", self.describe())
    }
}

impl std::error::Error for SelectorError {}

impl SelectorError {
    /// The refused value and why, without naming where it was written.
    pub fn describe(&self) -> String {
        match self {
            SelectorError::BadGlob { pattern, reason } => format!("{pattern:?}: {reason}"),
            SelectorError::Empty(name) => format!("{name:?}: empty interface name"),
        }
    }
}

/// A flow log's scope: exact names, which must exist, globs, which may match nothing
/// (interfaces come and go), and networks, matching the interfaces that hold an address inside
/// one. None at all means every non-loopback interface (`all`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InterfaceSelector {
    names: Vec<String>,
    globs: Vec<glob::Pattern>,
    networks: Vec<Network>,
}

/// The outcome of matching a selector against the interfaces that exist.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Selection {
    pub matched: Vec<Interface>,
    /// Exact names that do not exist (an error at start-up).
    pub missing: Vec<String>,
    /// Globs that matched nothing (a warning).
    pub unmatched_globs: Vec<String>,
}

impl InterfaceSelector {
    pub fn parse<S: AsRef<str>>(arguments: &[S]) -> Result<Self, SelectorError> {
        let mut selector = Self::default();
        for argument in arguments {
            let argument = argument.as_ref();
            if argument.is_empty() {
                return Err(SelectorError::Empty(argument.to_owned()));
            }
            if argument.contains(['*', '?', '[']) {
                let pattern = glob::Pattern::new(argument).map_err(|e| SelectorError::BadGlob {
                    pattern: argument.to_owned(),
                    reason: e.msg.to_owned(),
                })?;
                selector.globs.push(pattern);
            } else {
                selector.names.push(argument.to_owned());
            }
        }
        Ok(selector)
    }

    /// Adds a network: interfaces holding an address inside it match too.
    pub fn with_networks(mut self, networks: Vec<Network>) -> Self {
        self.networks.extend(networks);
        self
    }

    /// Whether this selector takes every non-loopback interface.
    pub fn is_default(&self) -> bool {
        self.names.is_empty() && self.globs.is_empty() && self.networks.is_empty()
    }

    pub fn matches(&self, interface: &Interface) -> bool {
        if self.is_default() {
            return !interface.loopback;
        }
        self.names.contains(&interface.name)
            || self.globs.iter().any(|glob| glob.matches(&interface.name))
            || self.networks.iter().any(|network| {
                interface
                    .addresses
                    .iter()
                    .any(|address| network.contains(*address))
            })
    }

    pub fn select(&self, available: &[Interface]) -> Selection {
        let matched: Vec<Interface> = available
            .iter()
            .filter(|interface| self.matches(interface))
            .cloned()
            .collect();
        let missing = self
            .names
            .iter()
            .filter(|name| !available.iter().any(|i| &i.name == *name))
            .cloned()
            .collect();
        let unmatched_globs = self
            .globs
            .iter()
            .filter(|glob| !available.iter().any(|i| glob.matches(&i.name)))
            .map(|glob| glob.as_str().to_owned())
            .collect();
        Selection {
            matched,
            missing,
            unmatched_globs,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An interface without addresses (shared with other modules' tests).
    pub(crate) fn interface(name: &str, ifindex: u32, loopback: bool) -> Interface {
        Interface {
            name: name.into(),
            ifindex,
            loopback,
            addresses: Vec::new(),
        }
    }

    #[test]
    fn networks_select_the_interfaces_holding_an_address_inside() {
        let mut host = host();
        host[1].addresses = vec!["10.1.2.3".parse().unwrap(), "fd00::7".parse().unwrap()];
        host[2].addresses = vec!["192.0.2.1".parse().unwrap()];
        let network = |text| crate::policy::parse_network(text).unwrap();
        let selector = InterfaceSelector::default().with_networks(vec![network("10.0.0.0/8")]);
        assert_eq!(names(&selector.select(&host)), ["eth0"]);
        let selector = InterfaceSelector::default().with_networks(vec![network("fd00::/8")]);
        assert_eq!(names(&selector.select(&host)), ["eth0"]);
        let selector = InterfaceSelector::parse(&["veth9*"])
            .unwrap()
            .with_networks(vec![network("192.0.2.0/24")]);
        assert_eq!(names(&selector.select(&host)), ["veth1a2b", "veth9f00"]);
        let selector = InterfaceSelector::default().with_networks(vec![network("172.16.0.0/12")]);
        assert!(selector.select(&host).matched.is_empty());
    }

    fn host() -> Vec<Interface> {
        vec![
            interface("lo", 1, true),
            interface("eth0", 2, false),
            interface("veth1a2b", 7, false),
            interface("veth9f00", 8, false),
        ]
    }

    fn names(selection: &Selection) -> Vec<&str> {
        selection.matched.iter().map(|i| i.name.as_str()).collect()
    }

    #[test]
    fn default_takes_every_non_loopback_interface() {
        let selection = InterfaceSelector::parse::<&str>(&[])
            .unwrap()
            .select(&host());
        assert_eq!(names(&selection), ["eth0", "veth1a2b", "veth9f00"]);
    }

    #[test]
    fn names_and_globs_select_what_they_say() {
        let selector = InterfaceSelector::parse(&["eth0", "veth*"]).unwrap();
        assert_eq!(
            names(&selector.select(&host())),
            ["eth0", "veth1a2b", "veth9f00"]
        );
        let selector = InterfaceSelector::parse(&["lo"]).unwrap();
        assert_eq!(names(&selector.select(&host())), ["lo"]);
    }

    #[test]
    fn a_missing_name_is_reported_and_an_empty_glob_is_noted() {
        let selection = InterfaceSelector::parse(&["eth9", "tap*"])
            .unwrap()
            .select(&host());
        assert!(selection.matched.is_empty());
        assert_eq!(selection.missing, ["eth9"]);
        assert_eq!(selection.unmatched_globs, ["tap*"]);
    }

    #[test]
    fn a_bad_glob_names_itself() {
        let error = InterfaceSelector::parse(&["eth[0"]).unwrap_err();
        assert!(
            error.to_string().starts_with("--interface \"eth[0\""),
            "{error}"
        );
    }
}
