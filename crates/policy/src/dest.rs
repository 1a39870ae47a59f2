//! The DEST syntax shared by the CLI (`--allow`, `--deny`) and policy files:
//!
//! ```text
//! DEST   = TARGET [ ":" PORT | ":" START "-" END ] [ "/" PROTO ]
//! TARGET = IP | CIDR | DOMAIN | "*." SUFFIX | "." SUFFIX | "any" | "group:" GROUP
//! PROTO  = tcp | udp | icmp | icmpv4 | icmpv6
//! ```
//! An IPv6 address or network with a port is bracketed: `[2001:db8::/32]:443/tcp`. A bare
//! `icmp` means ICMPv4 for IPv4 targets and ICMPv6 for IPv6 targets; for names, groups and
//! `any` it must be spelled out.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use crate::error::PolicyError;
use crate::types::{Destination, DestinationGroup, PortRange, Protocol};

/// A parsed DEST: where, and optionally which ports and protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestSpec {
    /// The address side.
    pub destination: Destination,
    /// The port filter, if given.
    pub ports: Option<PortRange>,
    /// The protocol filter, if given.
    pub protocol: Option<Protocol>,
}

fn bad(input: &str, why: impl Into<String>) -> PolicyError {
    PolicyError::Destination {
        input: input.to_owned(),
        why: why.into(),
    }
}

/// Splits `text/proto` when the part after the last `/` is a word (a CIDR's `/8` is not).
fn split_protocol(text: &str) -> (&str, Option<&str>) {
    match text.rsplit_once('/') {
        Some((head, tail))
            if !tail.is_empty()
                && tail.bytes().all(|b| b.is_ascii_alphanumeric())
                && !tail.bytes().all(|b| b.is_ascii_digit()) =>
        {
            (head, Some(tail))
        }
        _ => (text, None),
    }
}

/// Splits `target:port`, honouring `[ipv6]:port` and `group:NAME[:port]`.
fn split_port<'a>(input: &str, text: &'a str) -> Result<(&'a str, Option<&'a str>), PolicyError> {
    if let Some(inner) = text.strip_prefix('[') {
        let (inside, after) = inner
            .split_once(']')
            .ok_or_else(|| bad(input, "missing `]` after a bracketed IPv6 address"))?;
        return match after {
            "" => Ok((inside, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((inside, Some(port))),
                None => Err(bad(input, "expected `:PORT` after `]`")),
            },
        };
    }
    if let Some(rest) = text.strip_prefix("group:") {
        return Ok(match rest.split_once(':') {
            Some((group, port)) => (&text[..6 + group.len()], Some(port)),
            None => (text, None),
        });
    }
    match text.matches(':').count() {
        0 => Ok((text, None)),
        1 => Ok(text
            .split_once(':')
            .map(|(t, p)| (t, Some(p)))
            .unwrap_or((text, None))),
        // Unbracketed IPv6: no port.
        _ => Ok((text, None)),
    }
}

fn parse_target(input: &str, target: &str) -> Result<Destination, PolicyError> {
    if target.eq_ignore_ascii_case("any") || target == "*" {
        return Ok(Destination::Any);
    }
    if let Some(group) = target.strip_prefix("group:") {
        return group.parse::<DestinationGroup>().map(Destination::Group);
    }
    if target.contains('/') {
        return parse_cidr(target).map(Destination::Cidr);
    }
    if let Ok(ip) = target.parse::<IpAddr>() {
        return Ok(Destination::Cidr(IpNet::from(ip)));
    }
    if target.contains(':') {
        return Err(bad(
            input,
            "not an IPv6 address; a port after an IPv6 address needs brackets: [2001:db8::1]:443",
        ));
    }
    if target.starts_with('.') || target.starts_with("*.") {
        return Destination::domain_suffix(target);
    }
    if target.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(PolicyError::Cidr {
            input: target.to_owned(),
        });
    }
    Destination::domain(target)
}

/// Parses a CIDR, refusing host bits so `10.1.2.3/8` is not silently read as `10.0.0.0/8`.
pub fn parse_cidr(text: &str) -> Result<IpNet, PolicyError> {
    let net: IpNet = text.parse().map_err(|_| PolicyError::Cidr {
        input: text.to_owned(),
    })?;
    if net.trunc() != net {
        return Err(PolicyError::CidrHostBits {
            input: text.to_owned(),
            normalized: net.trunc().to_string(),
        });
    }
    Ok(net)
}

/// Resolves a protocol word; plain `icmp` takes the family of `destination`.
pub fn parse_protocol(word: &str, destination: &Destination) -> Result<Protocol, PolicyError> {
    if word.eq_ignore_ascii_case("icmp") {
        return match destination {
            Destination::Cidr(IpNet::V4(_)) => Ok(Protocol::Icmpv4),
            Destination::Cidr(IpNet::V6(_)) => Ok(Protocol::Icmpv6),
            _ => Err(PolicyError::Rule {
                why: format!("`icmp` is ambiguous for {destination}: write icmpv4 or icmpv6"),
            }),
        };
    }
    word.parse()
}

impl DestSpec {
    /// Parses the DEST syntax.
    pub fn parse(input: &str) -> Result<DestSpec, PolicyError> {
        let text = input.trim();
        if text.is_empty() {
            return Err(bad(input, "it is empty"));
        }
        if text.contains("://") {
            return Err(bad(
                input,
                "it is a URL; give the host and the port, e.g. example.com:443",
            ));
        }
        let (text, protocol) = split_protocol(text);
        let (target, port) = split_port(input, text)?;
        let destination = parse_target(input, target)?;
        let ports = port.map(str::parse::<PortRange>).transpose()?;
        let protocol = protocol
            .map(|p| parse_protocol(p, &destination))
            .transpose()?;
        if ports.is_some() && protocol.is_some_and(|p| !p.has_ports()) {
            return Err(bad(input, "ICMP has no ports"));
        }
        Ok(DestSpec {
            destination,
            ports,
            protocol,
        })
    }
}

/// A flow target for `moat policy explain --to ADDR[:PORT][/PROTO]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowTarget {
    /// The address.
    pub addr: IpAddr,
    /// The port, required for TCP and UDP.
    pub port: Option<u16>,
    /// The protocol; TCP unless given.
    pub protocol: Protocol,
}

impl FlowTarget {
    /// Parses `ADDR[:PORT][/PROTO]`, e.g. `10.1.2.3:80/tcp` or `[::ffff:192.168.1.1]:80/tcp`.
    pub fn parse(input: &str) -> Result<FlowTarget, PolicyError> {
        let text = input.trim();
        let (text, protocol) = split_protocol(text);
        let (addr, port) = match text.parse::<SocketAddr>() {
            Ok(sa) => (sa.ip(), Some(sa.port())),
            Err(_) => {
                let bare = text
                    .strip_prefix('[')
                    .and_then(|t| t.strip_suffix(']'))
                    .unwrap_or(text);
                let ip = bare.parse::<IpAddr>().map_err(|_| {
                    bad(input, "expected ADDR[:PORT][/PROTO], e.g. 203.0.113.10:443/tcp or [2001:db8::1]:80")
                })?;
                (ip, None)
            }
        };
        let protocol = match protocol {
            None => Protocol::Tcp,
            Some(word) => parse_protocol(word, &Destination::Cidr(IpNet::from(addr)))?,
        };
        match (protocol.has_ports(), port) {
            (true, None) => Err(bad(
                input,
                format!("{protocol} needs a port, e.g. {addr}:443/{protocol}"),
            )),
            (false, Some(_)) => Err(bad(input, "ICMP has no ports")),
            _ => Ok(FlowTarget {
                addr,
                port,
                protocol,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> DestSpec {
        DestSpec::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn every_target_form_parses() {
        assert_eq!(spec("any").destination, Destination::Any);
        assert_eq!(spec("ANY").destination, Destination::Any);
        assert_eq!(spec("*").destination, Destination::Any);
        assert_eq!(spec("*:443").destination, Destination::Any);
        assert_eq!(
            spec("[2001:db8::1]").destination,
            Destination::Cidr("2001:db8::1/128".parse().unwrap())
        );
        assert_eq!(spec("[2001:db8::1]").ports, None);
        assert_eq!(
            spec("[2001:db8::1]:443").ports,
            Some(PortRange::single(443))
        );
        assert_eq!(
            spec("10.0.0.0/8").destination,
            Destination::Cidr("10.0.0.0/8".parse().unwrap())
        );
        assert_eq!(
            spec("203.0.113.10").destination,
            Destination::Cidr("203.0.113.10/32".parse().unwrap())
        );
        assert_eq!(
            spec("2001:db8::/32").destination,
            Destination::Cidr("2001:db8::/32".parse().unwrap())
        );
        assert_eq!(
            spec("::1").destination,
            Destination::Cidr("::1/128".parse().unwrap())
        );
        assert_eq!(
            spec("API.example.test").destination,
            Destination::domain("api.example.test").unwrap()
        );
        assert_eq!(
            spec("*.example.test").destination,
            Destination::domain_suffix("example.test").unwrap()
        );
        assert_eq!(
            spec(".example.test").destination,
            Destination::domain_suffix("example.test").unwrap()
        );
        assert_eq!(
            spec("group:private").destination,
            Destination::Group(DestinationGroup::Private)
        );
    }

    #[test]
    fn ports_and_protocols() {
        let s = spec("203.0.113.10:80/tcp");
        assert_eq!(
            (s.ports, s.protocol),
            (Some(PortRange::single(80)), Some(Protocol::Tcp))
        );
        let s = spec("[2001:db8::/32]:8000-8100/udp");
        assert_eq!(
            s.destination,
            Destination::Cidr("2001:db8::/32".parse().unwrap())
        );
        assert_eq!(s.ports, Some(PortRange::range(8000, 8100)));
        let s = spec("group:metadata:80");
        assert_eq!(
            s.destination,
            Destination::Group(DestinationGroup::Metadata)
        );
        assert_eq!(s.ports, Some(PortRange::single(80)));
        assert_eq!(spec("10.0.0.0/8/icmp").protocol, Some(Protocol::Icmpv4));
        assert_eq!(spec("fd00::/8/icmp").protocol, Some(Protocol::Icmpv6));
        assert_eq!(spec("any/icmpv6").protocol, Some(Protocol::Icmpv6));
        assert_eq!(spec("*.x.test:443").ports, Some(PortRange::single(443)));
    }

    #[test]
    fn mistakes_are_errors() {
        for bad in [
            "",
            "10.0.0.0/33",
            "10.1.2.3/8",
            "300.1.1.1",
            "group:privat",
            "any:9-8",
            "any:70000",
            "any/sctp",
            "any/icmp",
            "10.0.0.1:80/icmp",
            "[2001:db8::1",
            "[2001:db8::1]80",
            "a..b",
            "*.",
        ] {
            assert!(DestSpec::parse(bad).is_err(), "{bad:?} should be an error");
        }
        // Digits and dots only: judged as a mistyped address, not as a name.
        for address_like in ["300.1.1.1", "1.2.3"] {
            assert!(
                matches!(DestSpec::parse(address_like), Err(PolicyError::Cidr { .. })),
                "{address_like}: {:?}",
                DestSpec::parse(address_like)
            );
        }
        let e = DestSpec::parse("https://example.com")
            .unwrap_err()
            .to_string();
        assert!(e.contains("it is a URL; give the host and the port"), "{e}");
        let e = DestSpec::parse("group:privat").unwrap_err().to_string();
        assert!(e.contains("expected one of private, loopback"), "{e}");
        let e = DestSpec::parse("10.1.2.3/8").unwrap_err().to_string();
        assert!(e.contains("10.0.0.0/8"), "{e}");
    }

    #[test]
    fn display_round_trips() {
        use crate::types::Rule;
        for text in [
            "10.0.0.0/8:80-90/tcp",
            "[2001:db8::/32]:443/udp",
            "*.example.test",
            "group:link-local",
            "any/icmpv4",
            "203.0.113.10:443",
        ] {
            let s = spec(text);
            let rule = Rule {
                ports: s.ports,
                protocol: s.protocol,
                ..Rule::allow_outbound(s.destination.clone())
            };
            let shown = rule.to_string();
            let dest = shown.strip_prefix("allow outbound ").unwrap();
            assert_eq!(spec(dest), s, "{text} -> {dest}");
        }
    }

    #[test]
    fn flow_targets() {
        let t = FlowTarget::parse("[::ffff:192.168.1.1]:80/tcp").unwrap();
        assert_eq!(t.addr, "::ffff:192.168.1.1".parse::<IpAddr>().unwrap());
        assert_eq!((t.port, t.protocol), (Some(80), Protocol::Tcp));
        let t = FlowTarget::parse("203.0.113.10:53/udp").unwrap();
        assert_eq!(t.protocol, Protocol::Udp);
        let t = FlowTarget::parse("2001:db8::1/icmp").unwrap();
        assert_eq!((t.port, t.protocol), (None, Protocol::Icmpv6));
        assert!(FlowTarget::parse("10.0.0.1").is_err());
        assert!(FlowTarget::parse("10.0.0.1:80/icmp").is_err());
        assert!(FlowTarget::parse("example.com:80").is_err());
    }
}
