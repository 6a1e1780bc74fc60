//! Where a component may connect: the operator's list of allowed brokers
//! (`--allow-broker HOST[:PORT]`), checked by the host before it opens any connection.
//! Off (any broker) by default, as in Dapr.

use std::fmt;

/// One allowed broker: a host name or address, matched ignoring ASCII case (`*.example.com`
/// matches any name under example.com), and a port (any when not given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedBroker {
    host: String,
    port: Option<u16>,
}

impl AllowedBroker {
    /// Whether a connection to `host:port` is allowed by this entry. The host is compared as
    /// the component gave it, before any name lookup.
    pub fn allows(&self, host: &str, port: u16) -> bool {
        let host_matches = match self.host.strip_prefix("*.") {
            Some(domain) => {
                host.len() > domain.len() + 1 && {
                    let (name, suffix) = host.split_at(host.len() - domain.len());
                    name.ends_with('.') && suffix.eq_ignore_ascii_case(domain)
                }
            }
            None => host.eq_ignore_ascii_case(&self.host),
        };
        host_matches && self.port.is_none_or(|allowed| allowed == port)
    }
}

impl fmt::Display for AllowedBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bracketed = self.host.contains(':');
        match (bracketed, self.port) {
            (true, Some(port)) => write!(f, "[{}]:{port}", self.host),
            (true, None) => write!(f, "[{}]", self.host),
            (false, Some(port)) => write!(f, "{}:{port}", self.host),
            (false, None) => f.write_str(&self.host),
        }
    }
}

impl std::str::FromStr for AllowedBroker {
    type Err = String;

    /// `HOST`, `HOST:PORT`, `*.DOMAIN[:PORT]`, `[IPV6]` or `[IPV6]:PORT`.
    fn from_str(text: &str) -> Result<Self, String> {
        let expected =
            || format!("expected HOST, HOST:PORT, *.DOMAIN[:PORT] or [IPV6]:PORT, got {text:?}");
        let text = text.trim();
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(expected)?;
            match after {
                "" => (host, None),
                _ => (host, Some(after.strip_prefix(':').ok_or_else(expected)?)),
            }
        } else {
            match text.rsplit_once(':') {
                Some((host, port)) if !host.contains(':') => (host, Some(port)),
                Some(_) => return Err(expected()),
                None => (text, None),
            }
        };
        if host.is_empty() || host.contains('/') || host.contains('@') {
            return Err(expected());
        }
        let port = port
            .map(|port| port.parse::<u16>().map_err(|_| expected()))
            .transpose()?;
        Ok(Self {
            host: host.to_string(),
            port,
        })
    }
}

/// Checks `host:port` against `allowed` (`None`: any broker): the reason a connection is
/// refused, naming the address and the policy.
pub(crate) fn check(
    allowed: Option<&[AllowedBroker]>,
    host: &str,
    port: u16,
) -> Result<(), String> {
    let Some(allowed) = allowed else {
        return Ok(());
    };
    if allowed.iter().any(|entry| entry.allows(host, port)) {
        return Ok(());
    }
    let list: Vec<String> = allowed.iter().map(ToString::to_string).collect();
    Err(format!(
        "broker {host}:{port} is not allowed by this host's policy (--allow-broker: {}); nothing was sent to it",
        if list.is_empty() {
            "none".to_string()
        } else {
            list.join(", ")
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(text: &str) -> AllowedBroker {
        text.parse().expect("a valid entry")
    }

    #[test]
    fn hosts_match_ignoring_case_and_ports_when_given() {
        assert!(entry("Broker.Example.com").allows("broker.example.COM", 1883));
        assert!(entry("broker:8883").allows("broker", 8883));
        assert!(!entry("broker:8883").allows("broker", 1883));
        assert!(!entry("broker").allows("broker.evil", 1883));
        assert!(entry("[::1]:1883").allows("::1", 1883));
    }

    #[test]
    fn a_wildcard_matches_names_under_the_domain_only() {
        let wildcard = entry("*.example.com");
        assert!(wildcard.allows("a.example.com", 1));
        assert!(wildcard.allows("a.b.example.com", 1));
        assert!(!wildcard.allows("example.com", 1));
        assert!(!wildcard.allows("badexample.com", 1));
    }

    #[test]
    fn malformed_entries_are_refused_with_the_text() {
        for bad in [
            "",
            "host:",
            "host:99999",
            "tcp://host",
            "user@host",
            "[::1",
            "a:b:c",
        ] {
            let error = bad.parse::<AllowedBroker>().expect_err(bad);
            assert!(error.contains("expected HOST"), "{error}");
        }
    }

    #[test]
    fn the_refusal_names_the_address_and_the_policy() {
        let allowed = [entry("broker:1883"), entry("*.example.com")];
        assert_eq!(check(Some(&allowed), "broker", 1883), Ok(()));
        assert_eq!(
            check(Some(&allowed), "10.0.0.9", 1883),
            Err("broker 10.0.0.9:1883 is not allowed by this host's policy (--allow-broker: broker:1883, *.example.com); nothing was sent to it".into())
        );
        assert_eq!(check(None, "anything", 1), Ok(()));
    }
}
