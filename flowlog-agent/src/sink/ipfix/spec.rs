//! `--sink ipfix+udp://HOST:PORT[?OPTIONS]` and `ipfix+tcp://HOST:PORT[?OPTIONS]`.
//!
//! Options, `&`-separated: `domain=N` (observation domain id, default 1), and for UDP only
//! `mtu=BYTES` (largest IP packet, default 1400), `template-refresh=DURATION` (default 60s) and
//! `template-refresh-messages=N` (default 100).

use std::{fmt, str::FromStr, time::Duration};

use crate::values::parse_duration;

/// IANA's port for IPFIX.
pub const DEFAULT_PORT: u16 = 4739;
pub const DEFAULT_OBSERVATION_DOMAIN: u32 = 1;
pub const DEFAULT_MTU: u16 = 1400;
pub const DEFAULT_TEMPLATE_REFRESH: Duration = Duration::from_secs(60);
pub const DEFAULT_TEMPLATE_REFRESH_MESSAGES: u32 = 100;
/// The options an IPFIX sink URL takes.
pub const OPTIONS: &[&str] = &[
    "domain",
    "mtu",
    "template-refresh",
    "template-refresh-messages",
];
/// Smallest `mtu`: the IPv4 minimum every host must reassemble.
pub const MIN_MTU: u16 = 576;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    fn scheme(self) -> &'static str {
        match self {
            Transport::Udp => "ipfix+udp",
            Transport::Tcp => "ipfix+tcp",
        }
    }
}

/// A collector and how to export to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpfixSpec {
    pub transport: Transport,
    /// Host name or address as given (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    pub observation_domain: u32,
    /// UDP: the largest IP packet a message may make.
    pub mtu: u16,
    /// UDP: templates are sent again after this long...
    pub template_refresh: Duration,
    /// ... or after this many messages, whichever comes first.
    pub template_refresh_messages: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("sink {spec:?}: {problem}")]
pub struct IpfixSpecError {
    spec: String,
    problem: String,
}

impl IpfixSpec {
    /// `HOST:PORT` as `connect` takes it.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Parses `text` if it has an IPFIX scheme; `None` if it is some other kind of sink.
    pub fn parse(text: &str) -> Option<Result<Self, IpfixSpecError>> {
        let (transport, rest) = if let Some(rest) = text.strip_prefix("ipfix+udp://") {
            (Transport::Udp, rest)
        } else if let Some(rest) = text.strip_prefix("ipfix+tcp://") {
            (Transport::Tcp, rest)
        } else {
            return None;
        };
        Some(
            parse_rest(transport, rest).map_err(|problem| IpfixSpecError {
                spec: crate::sink::secrets::redact(text),
                problem,
            }),
        )
    }
}

fn parse_rest(transport: Transport, rest: &str) -> Result<IpfixSpec, String> {
    let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
    if authority.contains('@') {
        return Err(
            "credentials in the URL are refused: IPFIX has no authentication, write HOST:PORT"
                .to_owned(),
        );
    }
    let (host, port) = parse_authority(authority)?;
    let mut spec = IpfixSpec {
        transport,
        host,
        port,
        observation_domain: DEFAULT_OBSERVATION_DOMAIN,
        mtu: DEFAULT_MTU,
        template_refresh: DEFAULT_TEMPLATE_REFRESH,
        template_refresh_messages: DEFAULT_TEMPLATE_REFRESH_MESSAGES,
    };
    let mut seen: Vec<&str> = Vec::new();
    for option in query.split('&').filter(|o| !o.is_empty()) {
        let (key, value) = option
            .split_once('=')
            .ok_or_else(|| format!("option {option:?} needs a value, as in {option}=..."))?;
        if seen.contains(&key) {
            return Err(format!("option {key:?} is given twice"));
        }
        seen.push(key);
        let udp_only = |spec: &IpfixSpec| match spec.transport {
            Transport::Udp => Ok(()),
            Transport::Tcp => Err(format!(
                "option {key:?} applies to ipfix+udp only (TCP sends templates once per connection and needs no MTU)"
            )),
        };
        match key {
            "domain" => {
                spec.observation_domain = value.parse().map_err(|_| {
                    format!("domain {value:?} is not an observation domain id (0..4294967295)")
                })?
            }
            "mtu" => {
                udp_only(&spec)?;
                spec.mtu = value
                    .parse()
                    .ok()
                    .filter(|mtu| *mtu >= MIN_MTU)
                    .ok_or_else(|| {
                        format!("mtu {value:?} is not a number of bytes in {MIN_MTU}..65535")
                    })?
            }
            "template-refresh" => {
                udp_only(&spec)?;
                let every = parse_duration(value)?;
                if every.is_zero() {
                    return Err(format!("template-refresh {value:?} must be at least 1s"));
                }
                spec.template_refresh = every;
            }
            "template-refresh-messages" => {
                udp_only(&spec)?;
                spec.template_refresh_messages =
                    value.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                        format!("template-refresh-messages {value:?} is not a whole number above 0")
                    })?
            }
            other => {
                return Err(format!(
                    "unknown option {other:?} (known: domain, mtu, template-refresh, template-refresh-messages)"
                ));
            }
        }
    }
    Ok(spec)
}

/// `HOST`, `HOST:PORT`, `[V6]` or `[V6]:PORT`.
fn parse_authority(authority: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| format!("{authority:?}: missing ']' after the IPv6 address"))?;
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(format!("{after:?} after the IPv6 address: expected :PORT")),
            },
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) if !port.contains(':') => (host, Some(port)),
            Some(_) => {
                return Err(format!(
                    "{authority:?}: write an IPv6 collector address in brackets, as in [fd00::1]:4739"
                ));
            }
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("no collector host, as in ipfix+udp://collector.example:4739".to_owned());
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(port) => port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("port {port:?} is not in 1..65535"))?,
    };
    Ok((host.to_owned(), port))
}

impl FromStr for IpfixSpec {
    type Err = IpfixSpecError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        IpfixSpec::parse(text).unwrap_or_else(|| {
            Err(IpfixSpecError {
                spec: text.to_owned(),
                problem: "expected ipfix+udp://HOST:PORT or ipfix+tcp://HOST:PORT".to_owned(),
            })
        })
    }
}

/// Prints the canonical form, with the options that differ from their defaults.
impl fmt::Display for IpfixSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.transport.scheme(), self.address())?;
        let mut options = Vec::new();
        if self.observation_domain != DEFAULT_OBSERVATION_DOMAIN {
            options.push(format!("domain={}", self.observation_domain));
        }
        if self.mtu != DEFAULT_MTU {
            options.push(format!("mtu={}", self.mtu));
        }
        if self.template_refresh != DEFAULT_TEMPLATE_REFRESH {
            options.push(format!(
                "template-refresh={}s",
                self.template_refresh.as_secs()
            ));
        }
        if self.template_refresh_messages != DEFAULT_TEMPLATE_REFRESH_MESSAGES {
            options.push(format!(
                "template-refresh-messages={}",
                self.template_refresh_messages
            ));
        }
        if !options.is_empty() {
            write!(f, "?{}", options.join("&"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_defaults_and_options() {
        let spec: IpfixSpec = "ipfix+udp://collector.example".parse().unwrap();
        assert_eq!(
            spec,
            IpfixSpec {
                transport: Transport::Udp,
                host: "collector.example".into(),
                port: 4739,
                observation_domain: 1,
                mtu: 1400,
                template_refresh: Duration::from_secs(60),
                template_refresh_messages: 100,
            }
        );
        let spec: IpfixSpec =
            "ipfix+udp://[fd00::1]:2055?domain=42&mtu=9000&template-refresh=5m&template-refresh-messages=20"
                .parse()
                .unwrap();
        assert_eq!((spec.host.as_str(), spec.port), ("fd00::1", 2055));
        assert_eq!(spec.address(), "[fd00::1]:2055");
        assert_eq!(spec.observation_domain, 42);
        assert_eq!(spec.mtu, 9000);
        assert_eq!(spec.template_refresh, Duration::from_secs(300));
        assert_eq!(spec.template_refresh_messages, 20);
        let spec: IpfixSpec = "ipfix+tcp://127.0.0.1:9995".parse().unwrap();
        assert_eq!(spec.transport, Transport::Tcp);
        assert_eq!(spec.address(), "127.0.0.1:9995");
    }

    #[test]
    fn prints_back_what_it_parsed() {
        for text in [
            "ipfix+udp://127.0.0.1:4739",
            "ipfix+tcp://[::1]:4739",
            "ipfix+udp://collector:9995?domain=7&mtu=1500&template-refresh=30s&template-refresh-messages=5",
            "ipfix+tcp://collector:4739?domain=0",
        ] {
            assert_eq!(text.parse::<IpfixSpec>().unwrap().to_string(), text);
        }
    }

    #[test]
    fn refuses_bad_values_naming_them() {
        let error = |text: &str| text.parse::<IpfixSpec>().unwrap_err().to_string();
        assert!(error("ipfix+udp://:4739").contains("no collector host"));
        assert!(error("ipfix+udp://host:0").contains("port \"0\""));
        assert!(error("ipfix+udp://host:http").contains("port \"http\""));
        assert!(error("ipfix+udp://fd00::1:4739").contains("in brackets"));
        assert!(error("ipfix+udp://[fd00::1").contains("missing ']'"));
        assert!(error("ipfix+udp://h?mtu=100").contains("mtu \"100\""));
        assert!(error("ipfix+udp://h?domain=-1").contains("domain \"-1\""));
        assert!(error("ipfix+udp://h?template-refresh=0s").contains("at least 1s"));
        assert!(error("ipfix+udp://h?template-refresh=soon").contains("soon"));
        assert!(error("ipfix+udp://h?templates=1").contains("unknown option \"templates\""));
        assert!(error("ipfix+udp://h?mtu").contains("needs a value"));
        let tcp = error("ipfix+tcp://h?mtu=1500");
        assert!(
            tcp.contains("\"mtu\"") && tcp.contains("ipfix+udp only"),
            "{tcp}"
        );
        assert!(error("ipfix+udp://h?mtu=100").starts_with("sink \"ipfix+udp://h?mtu=100\""));
        assert!(IpfixSpec::parse("stdout").is_none());
        let twice = error("ipfix+udp://h?domain=1&mtu=1500&domain=2");
        assert!(
            twice.contains("option \"domain\" is given twice"),
            "{twice}"
        );
        let userinfo = error("ipfix+tcp://me:hunter2@h:4739");
        assert!(
            userinfo.contains("credentials in the URL are refused"),
            "{userinfo}"
        );
        assert!(!userinfo.contains("hunter2"), "{userinfo}");
    }
}
