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
    /// Its records' `interface-type` ([`interface_type`]); `None` if the kernel did not say.
    pub interface_type: Option<&'static str>,
}

impl From<LinkName> for Interface {
    fn from(link: LinkName) -> Self {
        Self {
            name: link.name,
            ifindex: link.ifindex,
            loopback: link.loopback,
            addresses: Vec::new(),
            interface_type: None,
        }
    }
}

/// Every interface of the agent's network namespace, with its addresses and kind.
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
    // The kind only names records: an interface whose kind cannot be read still works.
    match sys::attachments::link_kinds() {
        Ok(kinds) => {
            for (ifindex, kind) in kinds {
                if let Some(interface) = interfaces.iter_mut().find(|i| i.ifindex == ifindex) {
                    interface.interface_type = Some(interface_type(kind.as_deref()));
                }
            }
        }
        Err(error) => tracing::debug!(%error, "link kinds unreadable; interface-type is -"),
    }
    Ok(interfaces)
}

/// The `interface-type` of an interface of Linux link kind `kind`: the kind as the kernel
/// names it (`veth`, `bridge`, `vlan`, `bond`, `vxlan`, `wireguard`, `tun`, ...), and
/// `interface` for a device without a kind, a NIC (EC2's name for an instance's own network
/// interface). Kinds are interned: the kernel has a few dozen, so the set stays small.
pub fn interface_type(kind: Option<&str>) -> &'static str {
    const KNOWN: &[&str] = &[
        "veth",
        "bridge",
        "vlan",
        "bond",
        "team",
        "vxlan",
        "geneve",
        "wireguard",
        "tun",
        "macvlan",
        "macvtap",
        "ipvlan",
        "ipvtap",
        "dummy",
        "vrf",
        "gre",
        "gretap",
        "ip6gre",
        "ipip",
        "sit",
        "ip6tnl",
        "netkit",
        "veth",
        "ifb",
        "macsec",
        "bareudp",
        "nlmon",
    ];
    static INTERNED: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let Some(kind) = kind.filter(|k| !k.is_empty()) else {
        return "interface";
    };
    if let Some(known) = KNOWN.iter().find(|k| **k == kind) {
        return known;
    }
    // Written into space-separated records: one token of printable ASCII.
    if !kind.bytes().all(|b| b.is_ascii_graphic()) {
        return "other";
    }
    let mut interned = INTERNED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(found) = interned.iter().find(|k| **k == kind) {
        return found;
    }
    let leaked: &'static str = Box::leak(kind.to_owned().into_boxed_str());
    interned.push(leaked);
    leaked
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
            interface_type: None,
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
    fn interface_types_are_link_kinds_or_interface() {
        assert_eq!(interface_type(None), "interface");
        assert_eq!(interface_type(Some("")), "interface");
        assert_eq!(interface_type(Some("veth")), "veth");
        assert_eq!(interface_type(Some("bridge")), "bridge");
        let odd = interface_type(Some("xfrm"));
        assert_eq!(odd, "xfrm");
        assert!(
            std::ptr::eq(odd, interface_type(Some("xfrm"))),
            "interned once"
        );
        assert_eq!(interface_type(Some("a b")), "other");
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
