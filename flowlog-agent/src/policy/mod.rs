//! The policy file (`--policy FILE`, TOML): network ACL and security group, read, checked as a
//! whole (an error names the file, the line and the reason) and compiled into the rule tables
//! the kernel programs evaluate.
//!
//! The policy's story, in the order a packet meets it:
//! 1. here: the file is read, checked and compiled ([`Policy::load`], [`Policy::compile`]);
//!    what rules and exclusions match is in `matcher.rs`, exclusions in `exclusion.rs`;
//! 2. `flowlog_common::policy`: the layout both sides share (rules, slot settings, the
//!    connection table's entries, the `POLICY_ACTIVE` word);
//! 3. `datapath/policy_slots.rs`: a compiled policy written into the slot the programs do not
//!    use, then made live by one store;
//! 4. `flowlog-ebpf/src/decide.rs`: per packet, the live slot, the connection table and, when not
//!    cached, the rules; the semantics it applies (layer order, connection tracking) are
//!    host-tested in `flowlog-ebpf/src/policy.rs`.
//!
//! ```toml
//! mode = "enforce"             # or "audit"
//! [acl]
//! default = "deny"
//! [[acl.rule]]
//! number = 100
//! direction = "ingress"
//! protocol = "udp"
//! cidr = "198.18.0.0/15"
//! ports = "8000-8100"
//! action = "allow"
//! [security_group]
//! [[security_group.ingress]]
//! protocol = "tcp"
//! ports = "22"
//! cidr = "0.0.0.0/0"
//! ```

mod exclusion;
mod index;
mod matcher;

use std::{
    ops::Range,
    path::{Path, PathBuf},
};

pub use exclusion::Exclusion;
pub use index::{IndexFull, RuleIndex};
pub use matcher::{Matcher, Network, parse_network};
use matcher::{family_mismatch, parse_ports};

use flowlog_common::policy::{
    MAX_ACL_RULES, MAX_SG_RULES, MODE_AUDIT, MODE_ENFORCE, PolicyConfig, RULE_ALLOW, RULE_DENY,
    Rule, TABLE_ACL_EG, TABLE_ACL_IN, TABLE_SG_EG, TABLE_SG_IN, fast_path_shift,
};
use serde::Deserialize;
use toml::Spanned;

/// Idle timeouts of connection state: TCP, UDP, other protocols (AWS security-group defaults:
/// 5 days for established TCP, 180 s for UDP streams, 60 s for the rest).
pub const IDLE_TIMEOUTS_SECS: [u64; 3] = [432_000, 180, 60];

#[derive(Debug, thiserror::Error)]
#[error("policy {}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct PolicyError {
    pub path: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

/// A checked policy, ready to be compiled for the kernel.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub audit: bool,
    pub acl: Option<Acl>,
    pub security_group: Option<SecurityGroup>,
    /// The rule index of the compiled tables, built when the policy is read: a policy too large
    /// for it is refused then, like any other problem of the file.
    index: RuleIndex,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Acl {
    pub default_allow: bool,
    /// In ascending rule number.
    pub rules: Vec<AclRule>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AclRule {
    pub number: u32,
    pub ingress: bool,
    pub matcher: Matcher,
    pub allow: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SecurityGroup {
    pub ingress: Vec<Matcher>,
    /// `None`: no egress section, every outbound connection is allowed.
    pub egress: Option<Vec<Matcher>>,
}

// The file as written. Values that need checking keep their span, for the line number.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    mode: Option<Spanned<String>>,
    acl: Option<AclFile>,
    security_group: Option<SecurityGroupFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AclFile {
    default: Option<Spanned<String>>,
    #[serde(default)]
    rule: Vec<Spanned<AclRuleFile>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AclRuleFile {
    number: Spanned<i64>,
    direction: Spanned<String>,
    protocol: Spanned<toml::Value>,
    cidr: Spanned<String>,
    ports: Option<Spanned<toml::Value>>,
    action: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecurityGroupFile {
    #[serde(default)]
    ingress: Vec<Spanned<SgRuleFile>>,
    egress: Option<Vec<Spanned<SgRuleFile>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SgRuleFile {
    protocol: Spanned<toml::Value>,
    cidr: Spanned<String>,
    ports: Option<Spanned<toml::Value>>,
}

/// A reason and where it applies.
#[derive(Debug)]
struct Problem {
    span: Option<Range<usize>>,
    message: String,
}

fn problem<T>(span: Range<usize>, message: impl Into<String>) -> Result<T, Problem> {
    Err(Problem {
        span: Some(span),
        message: message.into(),
    })
}

impl Policy {
    /// Reads and checks a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|error| PolicyError {
            path: path.to_owned(),
            line: None,
            message: error.to_string(),
        })?;
        Self::parse(&text).map_err(|problem| PolicyError {
            path: path.to_owned(),
            line: problem.span.map(|span| line_of(&text, span.start)),
            message: problem.message,
        })
    }

    fn parse(text: &str) -> Result<Self, Problem> {
        let file: PolicyFile = toml::from_str(text).map_err(|error| Problem {
            span: error.span(),
            message: error.message().trim().to_owned(),
        })?;
        let audit = match &file.mode {
            None => false,
            Some(mode) => match mode.get_ref().as_str() {
                "enforce" => false,
                "audit" => true,
                other => {
                    return problem(
                        mode.span(),
                        format!("mode {other:?}: expected \"enforce\" or \"audit\""),
                    );
                }
            },
        };
        let acl = file.acl.map(parse_acl).transpose()?;
        let security_group = file.security_group.map(parse_sg).transpose()?;
        let mut policy = Self {
            audit,
            acl,
            security_group,
            index: RuleIndex::default(),
        };
        let (config, acl_rules, sg_rules) = policy.tables();
        let (acl_in, acl_eg) = acl_rules.split_at(config.acl_in_count as usize);
        let (sg_in, sg_eg) = sg_rules.split_at(config.sg_in_count as usize);
        policy.index = RuleIndex::build(&[
            (TABLE_ACL_IN, acl_in),
            (TABLE_ACL_EG, acl_eg),
            (TABLE_SG_IN, sg_in),
            (TABLE_SG_EG, sg_eg),
        ])
        .map_err(|full| Problem {
            span: None,
            message: full.to_string(),
        })?;
        Ok(policy)
    }

    /// The kernel form: settings, the two rule tables and their index.
    pub fn compile(&self, ns_per_jiffy: u64) -> CompiledPolicy {
        let (mut config, acl_rules, sg_rules) = self.tables();
        for (slot, secs) in config
            .idle_timeout_jiffies
            .iter_mut()
            .zip(IDLE_TIMEOUTS_SECS)
        {
            *slot = secs * 1_000_000_000 / ns_per_jiffy.max(1);
        }
        // The fast path's window: a connection's state is refreshed at least this often, so an
        // idle timeout is never judged from a last-seen time older than one window.
        let second = 1_000_000_000 / ns_per_jiffy.max(1);
        let shortest = config
            .idle_timeout_jiffies
            .iter()
            .copied()
            .min()
            .unwrap_or(0);
        config.fast_path_shift = fast_path_shift(second.min(shortest));
        CompiledPolicy {
            config,
            acl_rules,
            sg_rules,
            index: self.index.clone(),
        }
    }

    /// The settings that do not depend on the kernel, and the rule tables.
    fn tables(&self) -> (PolicyConfig, Vec<Rule>, Vec<Rule>) {
        let mut config = PolicyConfig {
            mode: if self.audit { MODE_AUDIT } else { MODE_ENFORCE },
            ..PolicyConfig::default()
        };
        let mut acl_rules = Vec::new();
        if let Some(acl) = &self.acl {
            config.acl_present = 1;
            config.acl_default = if acl.default_allow {
                RULE_ALLOW
            } else {
                RULE_DENY
            };
            for ingress in [true, false] {
                let rules = acl.rules.iter().filter(|r| r.ingress == ingress);
                let before = acl_rules.len();
                acl_rules.extend(rules.map(|r| {
                    r.matcher
                        .compile(if r.allow { RULE_ALLOW } else { RULE_DENY })
                }));
                let count = (acl_rules.len() - before) as u32;
                if ingress {
                    config.acl_in_count = count;
                } else {
                    config.acl_eg_count = count;
                }
            }
        }
        let mut sg_rules = Vec::new();
        if let Some(sg) = &self.security_group {
            config.sg_present = 1;
            sg_rules.extend(sg.ingress.iter().map(|m| m.compile(RULE_ALLOW)));
            config.sg_in_count = sg.ingress.len() as u32;
            match &sg.egress {
                None => config.sg_egress_open = 1,
                Some(egress) => {
                    sg_rules.extend(egress.iter().map(|m| m.compile(RULE_ALLOW)));
                    config.sg_eg_count = egress.len() as u32;
                }
            }
        }
        (config, acl_rules, sg_rules)
    }
}

/// A policy in the layout of one kernel slot.
#[derive(Clone, Debug)]
pub struct CompiledPolicy {
    pub config: PolicyConfig,
    /// Ingress rules, then egress rules; the programs read their actions.
    pub acl_rules: Vec<Rule>,
    pub sg_rules: Vec<Rule>,
    pub index: RuleIndex,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn parse_acl(acl: AclFile) -> Result<Acl, Problem> {
    let default_allow = match &acl.default {
        None => false,
        Some(default) => parse_action(default)?,
    };
    let mut rules = Vec::with_capacity(acl.rule.len());
    for rule in acl.rule {
        let span = rule.span();
        let rule = rule.into_inner();
        let number = *rule.number.get_ref();
        if !(1..=32_766).contains(&number) {
            return problem(
                rule.number.span(),
                format!("rule number {number}: must be 1 to 32766"),
            );
        }
        if let Some(other) = rules.iter().find(|r: &&AclRule| r.number == number as u32) {
            return problem(span, format!("rule number {} is used twice", other.number));
        }
        let ingress = match rule.direction.get_ref().as_str() {
            "ingress" => true,
            "egress" => false,
            other => {
                return problem(
                    rule.direction.span(),
                    format!("direction {other:?}: expected \"ingress\" or \"egress\""),
                );
            }
        };
        rules.push(AclRule {
            number: number as u32,
            ingress,
            matcher: parse_matcher(&rule.protocol, &rule.cidr, rule.ports.as_ref())?,
            allow: parse_action(&rule.action)?,
        });
    }
    if rules.len() > MAX_ACL_RULES as usize {
        return Err(Problem {
            span: None,
            message: format!(
                "{} ACL rules: at most {MAX_ACL_RULES} are supported",
                rules.len()
            ),
        });
    }
    rules.sort_by_key(|r| r.number);
    Ok(Acl {
        default_allow,
        rules,
    })
}

fn parse_sg(sg: SecurityGroupFile) -> Result<SecurityGroup, Problem> {
    let matchers = |rules: Vec<Spanned<SgRuleFile>>| -> Result<Vec<Matcher>, Problem> {
        rules
            .into_iter()
            .map(|rule| {
                let rule = rule.into_inner();
                parse_matcher(&rule.protocol, &rule.cidr, rule.ports.as_ref())
            })
            .collect()
    };
    let ingress = matchers(sg.ingress)?;
    let egress = sg.egress.map(matchers).transpose()?;
    let total = ingress.len() + egress.as_ref().map_or(0, Vec::len);
    if total > MAX_SG_RULES as usize {
        return Err(Problem {
            span: None,
            message: format!("{total} security-group rules: at most {MAX_SG_RULES} are supported"),
        });
    }
    Ok(SecurityGroup { ingress, egress })
}

fn parse_action(action: &Spanned<String>) -> Result<bool, Problem> {
    match action.get_ref().as_str() {
        "allow" => Ok(true),
        "deny" => Ok(false),
        other => problem(
            action.span(),
            format!("action {other:?}: expected \"allow\" or \"deny\""),
        ),
    }
}

fn parse_matcher(
    protocol: &Spanned<toml::Value>,
    cidr: &Spanned<String>,
    ports: Option<&Spanned<toml::Value>>,
) -> Result<Matcher, Problem> {
    let protocol_number = match protocol.get_ref() {
        toml::Value::String(name) => match name.as_str() {
            "all" => None,
            "tcp" => Some(6),
            "udp" => Some(17),
            "icmp" => Some(1),
            "icmpv6" => Some(58),
            other => match other.parse::<u8>() {
                Ok(number) => Some(number),
                Err(_) => {
                    return problem(
                        protocol.span(),
                        format!(
                            "protocol {other:?}: expected tcp, udp, icmp, icmpv6, all or an IANA number 0-255"
                        ),
                    );
                }
            },
        },
        toml::Value::Integer(number) => match u8::try_from(*number) {
            Ok(number) => Some(number),
            Err(_) => {
                return problem(
                    protocol.span(),
                    format!("protocol {number}: an IANA protocol number is 0-255"),
                );
            }
        },
        other => {
            return problem(
                protocol.span(),
                format!("protocol {}: expected a name or a number", other.type_str()),
            );
        }
    };
    let network = parse_network(cidr.get_ref())
        .or_else(|message| problem(cidr.span(), format!("cidr {:?}: {message}", cidr.get_ref())))?;
    if let Some(message) = family_mismatch(protocol_number, &network) {
        return problem(cidr.span(), format!("cidr {:?}: {message}", cidr.get_ref()));
    }
    let ports = match ports {
        None => (0, u16::MAX),
        Some(ports) => {
            if !matches!(protocol_number, Some(6 | 17)) {
                return problem(
                    ports.span(),
                    "ports only apply to tcp and udp rules (ICMP and other protocols have none)",
                );
            }
            let text = match ports.get_ref() {
                toml::Value::String(text) => text.clone(),
                toml::Value::Integer(number) => number.to_string(),
                other => {
                    return problem(
                        ports.span(),
                        format!(
                            "ports: a {} where \"N\" or \"N-M\" was expected",
                            other.type_str()
                        ),
                    );
                }
            };
            parse_ports(&text)
                .or_else(|message| problem(ports.span(), format!("ports {text:?}: {message}")))?
        }
    };
    Ok(Matcher {
        protocol: protocol_number,
        network,
        ports,
    })
}

#[cfg(test)]
mod tests {
    use flowlog_common::{flow::AddressFamily, policy::ANY_PROTOCOL};

    use super::*;

    const EXAMPLE: &str = r#"
mode = "enforce"

[acl]
default = "deny"
[[acl.rule]]
number = 200
direction = "ingress"
protocol = "all"
cidr = "0.0.0.0/0"
action = "allow"
[[acl.rule]]
number = 100
direction = "ingress"
protocol = "tcp"
cidr = "198.18.0.0/15"
ports = "8000-8100"
action = "deny"

[security_group]
[[security_group.ingress]]
protocol = "tcp"
ports = "22"
cidr = "0.0.0.0/0"
[[security_group.egress]]
protocol = "all"
cidr = "::/0"
"#;

    fn error(text: &str) -> (Option<usize>, String) {
        let problem = Policy::parse(text).expect_err("must be refused");
        (
            problem.span.map(|s| line_of(text, s.start)),
            problem.message,
        )
    }

    #[test]
    fn ten_thousand_rules_are_indexed_and_a_policy_the_index_cannot_hold_is_refused() {
        let rules = |ports: &dyn Fn(usize) -> String| {
            let mut text = String::from("[security_group]\n");
            for i in 0..10_000 {
                text.push_str(&format!(
                    "[[security_group.ingress]]\nprotocol = \"tcp\"\ncidr = \"10.{}.{}.0/24\"\n\
                     ports = \"{}\"\n",
                    i / 256,
                    i % 256,
                    ports(i)
                ));
            }
            text
        };
        // A large allow list: one port, distinct networks.
        let policy = Policy::parse(&rules(&|_| "443".into())).unwrap();
        let compiled = policy.compile(4_000_000);
        assert_eq!(compiled.config.sg_in_count, 10_000);
        assert_eq!(compiled.index.prefixes.len(), 10_000);
        // Nested port ranges: 20,000 ranges between boundaries, each with a different half of
        // the rules, far more bitmap words than the kernel maps hold.
        let (line, message) = error(&rules(&|i| format!("{i}-{}", 65_535 - i)));
        assert_eq!(line, None);
        assert!(
            message.starts_with("the rule index needs ")
                && message.contains("bitmap words and the kernel maps hold 262144"),
            "{message}"
        );
    }

    #[test]
    fn the_example_compiles_in_rule_number_order() {
        let policy = Policy::parse(EXAMPLE).unwrap();
        assert!(!policy.audit);
        let acl = policy.acl.as_ref().unwrap();
        assert_eq!(
            acl.rules.iter().map(|r| r.number).collect::<Vec<_>>(),
            [100, 200]
        );
        let compiled = policy.compile(4_000_000);
        assert_eq!(compiled.config.acl_in_count, 2);
        assert_eq!(compiled.config.acl_eg_count, 0);
        assert_eq!(compiled.config.acl_default, RULE_DENY);
        assert_eq!(compiled.acl_rules[0].action, RULE_DENY);
        assert_eq!(
            (
                compiled.acl_rules[0].port_min,
                compiled.acl_rules[0].port_max
            ),
            (8000, 8100)
        );
        assert_eq!(compiled.acl_rules[0].mask[..4], [255, 254, 0, 0]);
        assert_eq!(compiled.acl_rules[1].protocol, ANY_PROTOCOL);
        assert_eq!(compiled.config.sg_in_count, 1);
        assert_eq!(compiled.config.sg_eg_count, 1);
        assert_eq!(compiled.config.sg_egress_open, 0);
        assert_eq!(compiled.sg_rules[1].family, AddressFamily::Ipv6 as u8);
        // 180 s of UDP idle time at 250 Hz.
        assert_eq!(compiled.config.idle_timeout_jiffies[1], 180 * 250);
        // A second at 250 Hz: a window of 128 jiffies.
        assert_eq!(compiled.config.fast_path_shift, 7);
    }

    #[test]
    fn a_missing_egress_section_allows_all_outbound() {
        let policy = Policy::parse("[security_group]\n").unwrap();
        let compiled = policy.compile(4_000_000);
        assert_eq!(compiled.config.sg_present, 1);
        assert_eq!(compiled.config.sg_egress_open, 1);
        assert_eq!(compiled.config.sg_in_count, 0);
        assert_eq!(compiled.config.acl_present, 0);
    }

    #[test]
    fn errors_name_the_line_and_the_reason() {
        let bad_cidr = EXAMPLE.replace("198.18.0.0/15", "198.18.0.1/15");
        assert_eq!(
            error(&bad_cidr),
            (
                Some(16),
                "cidr \"198.18.0.1/15\": host bits are set; the network is 198.18.0.0/15".into()
            )
        );
        let bad_ports = EXAMPLE.replace("8000-8100", "8100-8000");
        assert_eq!(error(&bad_ports).0, Some(17));
        assert!(error(&bad_ports).1.contains("range is empty"));
        let bad_direction = EXAMPLE.replace(
            "\"ingress\"\nprotocol = \"tcp\"",
            "\"inbound\"\nprotocol = \"tcp\"",
        );
        assert_eq!(
            error(&bad_direction),
            (
                Some(14),
                "direction \"inbound\": expected \"ingress\" or \"egress\"".into()
            )
        );
        let (line, message) = error("mode = \"enforce\"\nbogus = 1\n");
        assert_eq!(line, Some(2));
        assert!(message.contains("bogus"), "{message}");
        let (line, message) = error("[acl]\ndefault = \"maybe\"\n");
        assert_eq!(line, Some(2));
        assert!(message.contains("\"maybe\""), "{message}");
        let icmp_ports = "[security_group]\n[[security_group.ingress]]\nprotocol = \"icmp\"\nports = \"1\"\ncidr = \"0.0.0.0/0\"\n";
        assert_eq!(error(icmp_ports).0, Some(4));
        let duplicate = EXAMPLE.replace("number = 200", "number = 100");
        assert!(error(&duplicate).1.contains("used twice"));
    }

    #[test]
    fn exclusions_parse_cidr_protocol_and_port() {
        let e = Exclusion::parse("0.0.0.0/0/udp:67").unwrap();
        assert_eq!(e.0.protocol, Some(17));
        assert_eq!(e.0.ports, (67, 67));
        assert_eq!(e.0.network.prefix_len, 0);
        let e = Exclusion::parse("fd00:ec2::254/128").unwrap();
        assert_eq!(e.0.protocol, None);
        assert_eq!(e.0.ports, (0, u16::MAX));
        assert_eq!(Exclusion::defaults().len(), 8);
        let message = Exclusion::parse("10.0.0.0/8/udpp").unwrap_err();
        assert!(message.contains("\"udpp\""), "{message}");
        assert!(
            Exclusion::parse("10.0.0.1/8")
                .unwrap_err()
                .contains("host bits")
        );
        let icmp_port = Exclusion::parse("10.0.0.0/8/icmp:5").unwrap_err();
        assert!(
            icmp_port.contains("\"10.0.0.0/8/icmp:5\"") && icmp_port.contains("icmp has no ports"),
            "{icmp_port}"
        );
        assert!(
            Exclusion::parse("10.0.0.0/8/all:53")
                .unwrap_err()
                .contains("all has no ports")
        );
        assert!(
            Exclusion::parse("::/0/icmp")
                .unwrap_err()
                .contains("icmp is IPv4's")
        );
        assert!(
            Exclusion::parse("0.0.0.0/0/icmpv6")
                .unwrap_err()
                .contains("icmpv6 is IPv6's")
        );
        assert!(Exclusion::parse("10.0.0.0/8/udp:53").is_ok());
    }

    #[test]
    fn rules_whose_family_can_never_match_are_refused_at_their_line() {
        let icmp_v6 = "[[security_group.ingress]]\nprotocol = \"icmp\"\ncidr = \"::/0\"\n";
        let (line, message) = error(&format!("[security_group]\n{icmp_v6}"));
        assert_eq!(line, Some(4));
        assert!(
            message.contains("\"::/0\"") && message.contains("icmp is IPv4's"),
            "{message}"
        );
        let acl = "[acl]\ndefault = \"allow\"\n[[acl.rule]]\nnumber = 1\ndirection = \"ingress\"\nprotocol = \"icmpv6\"\ncidr = \"10.0.0.0/8\"\naction = \"deny\"\n";
        let (line, message) = error(acl);
        assert_eq!(line, Some(7));
        assert!(message.contains("icmpv6 is IPv6's"), "{message}");
        // By number as well.
        assert!(
            error(&acl.replace("\"icmpv6\"", "58"))
                .1
                .contains("icmpv6 is IPv6's")
        );
    }
}
