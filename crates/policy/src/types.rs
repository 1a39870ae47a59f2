//! The policy model with the names and shapes of the user's specification
//! (shared/seed/network-api.txt): [`NetworkPolicy`], [`Rule`], [`Destination`] and friends.

use std::fmt;
use std::str::FromStr;

use crate::domain::{DomainName, DomainSuffix};
use crate::error::PolicyError;

/// An IPv4 or IPv6 network, e.g. `10.0.0.0/8` or `2001:db8::/32`.
pub type IpNetwork = ipnet::IpNet;

/// The entries of the IANA IPv4 and IPv6 Special-Purpose Address Registries (RFC 6890)
/// that are not globally reachable and belong to no [`DestinationGroup`], with their
/// source: `public_only` denies them after the groups. Exceptions inside them that the
/// registries mark reachable (anycast services such as AMT or AS112) stay denied: nothing a
/// sandbox runs needs them. The documentation ranges (192.0.2.0/24, 198.51.100.0/24,
/// 203.0.113.0/24, 2001:db8::/32, 3fff::/20) are not here: never routed on the internet,
/// they stand in for public hosts in tests. `0.0.0.0/8` and `::` are never reachable under
/// any policy; IPv4-mapped, NAT64, 6to4 and Teredo addresses are judged as the IPv4
/// address they carry, so the IPv4 entries cover them.
pub const SPECIAL_PURPOSE: &[(&str, &str)] = &[
    ("192.0.0.0/24", "IETF protocol assignments (RFC 6890)"),
    ("192.88.99.0/24", "deprecated 6to4 relay anycast (RFC 7526)"),
    ("198.18.0.0/15", "benchmarking (RFC 2544)"),
    (
        "240.0.0.0/4",
        "reserved (RFC 1112), with 255.255.255.255, limited broadcast (RFC 919)",
    ),
    ("100::/64", "discard-only (RFC 6666)"),
    ("100:0:0:1::/64", "dummy prefix (RFC 9780)"),
    (
        "64:ff9b:1::/48",
        "local-use IPv4/IPv6 translation (RFC 8215); its /96 layout is judged as IPv4",
    ),
    (
        "2001::/23",
        "IETF protocol assignments (RFC 2928); Teredo in it is judged as IPv4",
    ),
    ("5f00::/16", "SRv6 SIDs (RFC 9602)"),
    ("fec0::/10", "deprecated site-local (RFC 3879)"),
];

/// What to do with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Permit the traffic.
    Allow,
    /// Drop the traffic (silently by default; see the engine's deny mode).
    Deny,
}

/// Which way traffic flows, seen from the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Traffic entering the sandbox through published ports, judged on the connecting peer.
    Inbound,
    /// Traffic leaving the sandbox, judged on its destination.
    Outbound,
}

/// A transport protocol a rule can be limited to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// ICMP over IPv4.
    Icmpv4,
    /// ICMP over IPv6.
    Icmpv6,
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// True for the protocols that carry ports.
    pub fn has_ports(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Udp)
    }
}

/// An inclusive range of ports. The specification's `PortRange::range(start, end)` makes
/// one from any two ports; a start above the end is refused where the policy is built
/// ([`NetworkPolicy::validate`], which `compile`, `create()` and `moat policy check` run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    start: u16,
    end: u16,
}

impl PortRange {
    /// Matches exactly `port`.
    pub fn single(port: u16) -> PortRange {
        PortRange {
            start: port,
            end: port,
        }
    }

    /// Matches `start..=end` (the specification's spelling). A start above the end matches
    /// nothing and fails validation where the policy is built.
    pub fn range(start: u16, end: u16) -> PortRange {
        PortRange { start, end }
    }

    /// Matches `start..=end`, checked now: a start above the end is an error.
    pub fn checked(start: u16, end: u16) -> Result<PortRange, PolicyError> {
        PortRange::range(start, end).validate()
    }

    /// This range, if its start is not above its end.
    pub fn validate(self) -> Result<PortRange, PolicyError> {
        if self.start > self.end {
            return Err(PolicyError::PortRangeOrder {
                start: self.start,
                end: self.end,
            });
        }
        Ok(self)
    }

    /// First port of the range.
    pub fn start(&self) -> u16 {
        self.start
    }

    /// Last port of the range (inclusive).
    pub fn end(&self) -> u16 {
        self.end
    }

    /// True when `port` lies in the range, edges included.
    pub fn contains(&self, port: u16) -> bool {
        self.start <= port && port <= self.end
    }
}

/// A predefined set of addresses. See [`DestinationGroup::networks`] for the exact ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DestinationGroup {
    /// 169.254.0.0/16, fe80::/10.
    LinkLocal,
    /// 127.0.0.0/8, ::1 (and the gateway's alias for the host's loopback, which the engine
    /// judges as 127.0.0.1).
    Loopback,
    /// Cloud metadata endpoints: 169.254.169.254, fd00:ec2::254.
    Metadata,
    /// 224.0.0.0/4, ff00::/8.
    Multicast,
    /// 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10 (CGNAT), fc00::/7 (ULA).
    Private,
}

impl DestinationGroup {
    /// Every group, in the order `public_only()` denies them.
    pub const ALL: [DestinationGroup; 5] = [
        DestinationGroup::Loopback,
        DestinationGroup::Private,
        DestinationGroup::LinkLocal,
        DestinationGroup::Metadata,
        DestinationGroup::Multicast,
    ];

    /// The name used in policy files and on the command line (`group:NAME`).
    pub fn name(self) -> &'static str {
        match self {
            DestinationGroup::LinkLocal => "link-local",
            DestinationGroup::Loopback => "loopback",
            DestinationGroup::Metadata => "metadata",
            DestinationGroup::Multicast => "multicast",
            DestinationGroup::Private => "private",
        }
    }
}

impl FromStr for DestinationGroup {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "link-local" | "link_local" | "linklocal" => Ok(DestinationGroup::LinkLocal),
            "loopback" => Ok(DestinationGroup::Loopback),
            "metadata" => Ok(DestinationGroup::Metadata),
            "multicast" => Ok(DestinationGroup::Multicast),
            "private" => Ok(DestinationGroup::Private),
            _ => Err(PolicyError::Group {
                input: s.to_owned(),
            }),
        }
    }
}

/// What a rule's address side matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    /// Any address.
    Any,
    /// Addresses inside a network. IPv4-mapped (`::ffff:0:0/96`) and NAT64 (`64:ff9b::/96`)
    /// networks are read as the IPv4 networks they embed.
    Cidr(IpNetwork),
    /// Addresses that this sandbox's DNS lookups of exactly this name answered. The name
    /// is text, as the specification spells it (case and a trailing dot do not matter); it
    /// is parsed where the policy is built, and a name that is not one fails there.
    Domain(String),
    /// Addresses that this sandbox's DNS lookups of names strictly below this suffix
    /// answered: `.x.com`, `*.x.com` or `x.com`, parsed where the policy is built.
    DomainSuffix(String),
    /// A predefined group of addresses.
    Group(DestinationGroup),
}

impl Destination {
    /// A [`Destination::Domain`] from text, validated now and written canonically
    /// (lowercase, no trailing dot).
    pub fn domain(name: &str) -> Result<Destination, PolicyError> {
        DomainName::new(name).map(|n| Destination::Domain(n.as_str().to_owned()))
    }

    /// A [`Destination::DomainSuffix`] from text (`.x.com`, `*.x.com` or `x.com`),
    /// validated now and written canonically (`*.x.com`).
    pub fn domain_suffix(suffix: &str) -> Result<Destination, PolicyError> {
        DomainSuffix::new(suffix).map(|s| Destination::DomainSuffix(s.to_string()))
    }

    /// The parsed name of a name destination (`None` for the others): what the matcher
    /// and the plain definition compare. Fails for text that is not a name.
    pub fn name(&self) -> Option<Result<NameDestination, PolicyError>> {
        match self {
            Destination::Domain(name) => Some(DomainName::new(name).map(NameDestination::Exact)),
            Destination::DomainSuffix(suffix) => {
                Some(DomainSuffix::new(suffix).map(NameDestination::Below))
            }
            _ => None,
        }
    }

    /// True for the name-based destinations.
    pub fn is_name(&self) -> bool {
        matches!(self, Destination::Domain(_) | Destination::DomainSuffix(_))
    }
}

/// A name destination, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameDestination {
    /// Exactly this name.
    Exact(DomainName),
    /// Every name strictly below this suffix.
    Below(DomainSuffix),
}

impl NameDestination {
    /// True when `name` is this name, or lies below this suffix.
    pub fn matches(&self, name: &DomainName) -> bool {
        match self {
            NameDestination::Exact(d) => d == name,
            NameDestination::Below(s) => s.matches(name),
        }
    }
}

/// One policy rule; `None` filters match everything.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    /// What to do when this rule is the first to match.
    pub action: Action,
    /// What addresses (or names) it matches.
    pub destination: Destination,
    /// Which direction it applies to.
    pub direction: Direction,
    /// Port filter.
    pub ports: Option<PortRange>,
    /// Protocol filter.
    pub protocol: Option<Protocol>,
}

impl Rule {
    /// An outbound allow rule for `destination`, any port and protocol.
    pub fn allow_outbound(destination: Destination) -> Rule {
        Rule::new(Action::Allow, Direction::Outbound, destination)
    }

    /// An outbound deny rule for `destination`, any port and protocol.
    pub fn deny_outbound(destination: Destination) -> Rule {
        Rule::new(Action::Deny, Direction::Outbound, destination)
    }

    /// *Extension:* an inbound allow rule for peers in `source`.
    pub fn allow_inbound(source: Destination) -> Rule {
        Rule::new(Action::Allow, Direction::Inbound, source)
    }

    /// *Extension:* an inbound deny rule for peers in `source`.
    pub fn deny_inbound(source: Destination) -> Rule {
        Rule::new(Action::Deny, Direction::Inbound, source)
    }

    fn new(action: Action, direction: Direction, destination: Destination) -> Rule {
        Rule {
            action,
            destination,
            direction,
            ports: None,
            protocol: None,
        }
    }

    /// *Extension:* the same rule limited to `ports`.
    pub fn with_ports(mut self, ports: PortRange) -> Rule {
        self.ports = Some(ports);
        self
    }

    /// *Extension:* the same rule limited to `protocol`.
    pub fn with_protocol(mut self, protocol: Protocol) -> Rule {
        self.protocol = Some(protocol);
        self
    }

    /// True when the rule has neither a port nor a protocol filter.
    pub fn is_unfiltered(&self) -> bool {
        self.ports.is_none() && self.protocol.is_none()
    }

    /// Checks that the rule can mean something: no ports on ICMP, no names inbound.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if let Some(name) = self.destination.name() {
            name?;
        }
        if let Some(ports) = self.ports {
            ports.validate()?;
        }
        if let (Some(_), Some(p)) = (self.ports, self.protocol)
            && !p.has_ports()
        {
            return Err(PolicyError::Rule {
                why: format!("{self}: ICMP has no ports; drop the port filter"),
            });
        }
        if self.direction == Direction::Inbound && self.destination.is_name() {
            return Err(PolicyError::Rule {
                why: format!(
                    "{self}: inbound rules match the connecting peer's address, which no DNS \
                     lookup names; use an address, CIDR or group"
                ),
            });
        }
        Ok(())
    }
}

/// A network access policy: ordered rules, first match wins, else `default_action`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NetworkPolicy {
    /// Action when no rule matches.
    pub default_action: Action,
    /// Rules in evaluation order.
    pub rules: Vec<Rule>,
}

impl NetworkPolicy {
    /// Unrestricted network access, private addresses and the host included.
    pub fn allow_all() -> NetworkPolicy {
        NetworkPolicy {
            default_action: Action::Allow,
            rules: Vec::new(),
        }
    }

    /// Deny all traffic; the sandbox gets no network interface at all.
    pub fn none() -> NetworkPolicy {
        NetworkPolicy {
            default_action: Action::Deny,
            rules: Vec::new(),
        }
    }

    /// The default: deny loopback, private, link-local, metadata and multicast addresses,
    /// and the other special-purpose ranges that are not globally reachable
    /// ([`SPECIAL_PURPOSE`]); allow the rest.
    pub fn public_only() -> NetworkPolicy {
        let groups = DestinationGroup::ALL
            .into_iter()
            .map(|g| Rule::deny_outbound(Destination::Group(g)));
        let special = SPECIAL_PURPOSE.iter().filter_map(|(cidr, _)| {
            cidr.parse::<IpNetwork>()
                .ok()
                .map(|net| Rule::deny_outbound(Destination::Cidr(net)))
        });
        NetworkPolicy {
            default_action: Action::Allow,
            rules: groups.chain(special).collect(),
        }
    }

    /// A preset by its CLI name: `public-only`, `allow-all` or `none`.
    pub fn preset(name: &str) -> Result<NetworkPolicy, PolicyError> {
        match name.to_ascii_lowercase().replace('_', "-").as_str() {
            "public-only" => Ok(NetworkPolicy::public_only()),
            "allow-all" => Ok(NetworkPolicy::allow_all()),
            "none" => Ok(NetworkPolicy::none()),
            _ => Err(PolicyError::Preset {
                input: name.to_owned(),
            }),
        }
    }

    /// True when nothing can ever be allowed, in either direction: the sandbox then gets no
    /// network interface (as `none()` specifies).
    pub fn is_offline(&self) -> bool {
        self.default_action == Action::Deny && self.rules.iter().all(|r| r.action == Action::Deny)
    }

    /// True when a rule names a domain or a suffix (so TLS server names and DNS pins
    /// matter).
    pub fn has_name_rules(&self) -> bool {
        self.rules.iter().any(|r| r.destination.is_name())
    }

    /// The networks that outbound allow rules without a port filter name explicitly
    /// (CIDRs, and groups' networks): DNS answers pointing into them are the user's
    /// choice, so rebind protection lets them through.
    pub fn explicitly_allowed_networks(&self) -> Vec<IpNetwork> {
        let mut out = Vec::new();
        for r in &self.rules {
            if r.action != Action::Allow || r.direction != Direction::Outbound || r.ports.is_some()
            {
                continue;
            }
            match &r.destination {
                Destination::Cidr(net) => out.push(*net),
                Destination::Group(g) => out.extend(g.networks().iter().copied()),
                _ => {}
            }
        }
        out
    }

    /// Legal rules that are probably not what was meant, each as one line saying what to
    /// do. Today: an outbound allow rule for `any` (a port-only rule included) that no
    /// earlier rule guards with unfiltered denies of loopback, metadata and private — it
    /// lets the sandbox reach the host's own services, the cloud's metadata endpoint and
    /// the private network behind the host.
    pub fn warnings(&self) -> Vec<String> {
        const GUARDS: [DestinationGroup; 3] = [
            DestinationGroup::Loopback,
            DestinationGroup::Metadata,
            DestinationGroup::Private,
        ];
        let mut out = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.action != Action::Allow
                || rule.direction != Direction::Outbound
                || rule.destination != Destination::Any
            {
                continue;
            }
            let guarded = |g: DestinationGroup| {
                self.rules[..i].iter().any(|r| {
                    r.action == Action::Deny
                        && r.direction == Direction::Outbound
                        && r.destination == Destination::Group(g)
                        && r.is_unfiltered()
                })
            };
            let missing: Vec<String> = GUARDS
                .into_iter()
                .filter(|g| !guarded(*g))
                .map(|g| g.to_string())
                .collect();
            if missing.is_empty() {
                continue;
            }
            let fix: Vec<String> = missing
                .iter()
                .map(|g| format!("--deny group:{g}"))
                .collect();
            out.push(format!(
                "rule {i} ({rule}) also allows {}: put {} before it (or deny them first in the policy file)",
                missing.join(", "),
                fix.join(" ")
            ));
        }
        out
    }

    /// Checks every rule ([`Rule::validate`]); the error names the rule's index.
    pub fn validate(&self) -> Result<(), PolicyError> {
        for (i, rule) in self.rules.iter().enumerate() {
            rule.validate().map_err(|e| match e {
                PolicyError::Rule { why } => PolicyError::Rule {
                    why: format!("rule {i}: {why}"),
                },
                other => other,
            })?;
        }
        Ok(())
    }
}

impl Default for NetworkPolicy {
    fn default() -> NetworkPolicy {
        NetworkPolicy::public_only()
    }
}

/// What happens when a secret's placeholder heads for a host outside its allow list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ViolationAction {
    /// Drop the request; the sandbox sees a connection reset.
    #[default]
    Block,
    /// Drop the request and log a warning on the host.
    BlockAndLog,
    /// Drop the request, log an error and stop the whole sandbox.
    BlockAndTerminate,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        })
    }
}

impl FromStr for Action {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "allow" => Ok(Action::Allow),
            "deny" => Ok(Action::Deny),
            _ => Err(PolicyError::Action {
                input: s.to_owned(),
            }),
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        })
    }
}

impl FromStr for Direction {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "inbound" | "in" => Ok(Direction::Inbound),
            "outbound" | "out" => Ok(Direction::Outbound),
            _ => Err(PolicyError::Direction {
                input: s.to_owned(),
            }),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Icmpv4 => "icmpv4",
            Protocol::Icmpv6 => "icmpv6",
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// Parses `tcp`, `udp`, `icmpv4`, `icmpv6`. Plain `icmp` depends on the address family and
/// is resolved by the DEST parser, not here.
impl FromStr for Protocol {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "icmpv4" | "icmp4" => Ok(Protocol::Icmpv4),
            "icmpv6" | "icmp6" => Ok(Protocol::Icmpv6),
            _ => Err(PolicyError::Protocol {
                input: s.to_owned(),
            }),
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

impl FromStr for PortRange {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let port = |t: &str| {
            t.trim().parse::<u16>().map_err(|_| PolicyError::Port {
                input: s.to_owned(),
            })
        };
        match s.split_once('-') {
            Some((a, b)) => PortRange::checked(port(a)?, port(b)?),
            None => Ok(PortRange::single(port(s)?)),
        }
    }
}

impl fmt::Display for DestinationGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Displays in the CLI's DEST syntax (without port and protocol).
impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Any => f.write_str("any"),
            Destination::Cidr(net) if net.prefix_len() == net.max_prefix_len() => {
                write!(f, "{}", net.addr())
            }
            Destination::Cidr(net) => write!(f, "{net}"),
            Destination::Domain(name) => write!(f, "{name}"),
            Destination::DomainSuffix(suffix) => write!(f, "{suffix}"),
            Destination::Group(group) => write!(f, "group:{group}"),
        }
    }
}

/// Displays as `ACTION DIRECTION DEST[:PORTS][/PROTO]`, e.g.
/// `allow outbound *.example.com:443/tcp` or `deny outbound [2001:db8::/32]:80`.
impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} ", self.action, self.direction)?;
        let v6 = matches!(&self.destination, Destination::Cidr(IpNetwork::V6(_)));
        match self.ports {
            Some(ports) if v6 => write!(f, "[{}]:{ports}", self.destination)?,
            Some(ports) => write!(f, "{}:{ports}", self.destination)?,
            None => write!(f, "{}", self.destination)?,
        }
        if let Some(protocol) = self.protocol {
            write!(f, "/{protocol}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_range_edges_are_inclusive() {
        let r = PortRange::range(8000, 8100);
        assert!(!r.contains(7999));
        assert!(r.contains(8000));
        assert!(r.contains(8100));
        assert!(!r.contains(8101));
        assert!(PortRange::single(0).contains(0));
        assert!(PortRange::range(0, 65535).contains(65535));
        // The specification's constructor takes any two ports; the order is checked where
        // the policy is built.
        assert!(!PortRange::range(10, 9).contains(9) && !PortRange::range(10, 9).contains(10));
        assert_eq!(
            PortRange::range(10, 9).validate(),
            Err(PolicyError::PortRangeOrder { start: 10, end: 9 })
        );
        let backwards = NetworkPolicy {
            default_action: Action::Deny,
            rules: vec![Rule::allow_outbound(Destination::Any).with_ports(PortRange::range(10, 9))],
        };
        assert_eq!(
            backwards.compile().err(),
            Some(PolicyError::PortRangeOrder { start: 10, end: 9 })
        );
        assert_eq!("443".parse::<PortRange>().unwrap(), PortRange::single(443));
        assert!("9-8".parse::<PortRange>().is_err());
        assert!("70000".parse::<PortRange>().is_err());
        assert!("".parse::<PortRange>().is_err());
    }

    #[test]
    fn presets_have_the_specified_shape() {
        assert_eq!(NetworkPolicy::default(), NetworkPolicy::public_only());
        let p = NetworkPolicy::public_only();
        assert_eq!(p.default_action, Action::Allow);
        assert_eq!(p.rules.len(), 5 + SPECIAL_PURPOSE.len());
        assert!(p.rules.iter().all(|r| r.action == Action::Deny
            && r.direction == Direction::Outbound
            && r.is_unfiltered()));
        assert!(NetworkPolicy::none().is_offline());
        assert!(!NetworkPolicy::allow_all().is_offline());
        assert!(!NetworkPolicy::public_only().is_offline());
        assert_eq!(NetworkPolicy::preset("public_only").unwrap(), p);
        assert!(NetworkPolicy::preset("public").is_err());
    }

    #[test]
    fn rules_print_in_dest_syntax() {
        let r = Rule::allow_outbound(Destination::domain_suffix(".Example.com").unwrap())
            .with_ports(PortRange::single(443))
            .with_protocol(Protocol::Tcp);
        assert_eq!(r.to_string(), "allow outbound *.example.com:443/tcp");
        let r = Rule::deny_outbound(Destination::Cidr("2001:db8::/32".parse().unwrap()))
            .with_ports(PortRange::range(80, 90));
        assert_eq!(r.to_string(), "deny outbound [2001:db8::/32]:80-90");
        let r = Rule::deny_inbound(Destination::Group(DestinationGroup::LinkLocal));
        assert_eq!(r.to_string(), "deny inbound group:link-local");
    }

    #[test]
    fn contradictory_rules_are_rejected() {
        let r = Rule::allow_outbound(Destination::Any)
            .with_ports(PortRange::single(1))
            .with_protocol(Protocol::Icmpv4);
        assert!(r.validate().is_err());
        let r = Rule::allow_inbound(Destination::domain("a.example").unwrap());
        assert!(r.validate().is_err());
        let p = NetworkPolicy {
            default_action: Action::Deny,
            rules: vec![Rule::allow_outbound(Destination::Any), r],
        };
        assert!(p.validate().unwrap_err().to_string().contains("rule 1"));
    }

    #[test]
    fn public_only_denies_special_purpose_ranges_but_not_documentation() {
        use crate::Flow;
        let compiled = NetworkPolicy::public_only().compile().unwrap();
        let judge = |a: &str| {
            let flow = Flow {
                direction: Direction::Outbound,
                protocol: Protocol::Tcp,
                addr: a.parse().unwrap(),
                port: Some(443),
                names: &[],
                sni: None,
                local: false,
            };
            compiled.decide(&flow).is_allow()
        };
        for denied in [
            "168.63.129.16",
            "198.18.0.1",
            "198.19.255.255",
            "240.0.0.1",
            "255.255.255.255",
            "192.0.0.8",
            "192.88.99.1",
            "fec0::1",
            "100::1",
            "5f00::1",
            "2001:2::1",
            "64:ff9b:1:1::1",
            // IPv4 carried in 6to4, Teredo and local NAT64 is judged as IPv4.
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::",
            "2001:0:1:2:3:4:f5fe:fffe",
            "64:ff9b:1::a00:1",
        ] {
            assert!(!judge(denied), "{denied} should be denied");
        }
        for allowed in [
            "192.0.2.1",
            "198.51.100.1",
            "203.0.113.10",
            "2001:db8::1",
            "3fff::1",
            "8.8.8.8",
            "2606:4700::1111",
            "2002:808:808::1",
            "64:ff9b:1::808:808",
        ] {
            assert!(judge(allowed), "{allowed} should be allowed");
        }
    }

    #[test]
    fn any_allows_without_guards_are_warned_about() {
        let any_port = |p: u16| {
            let mut r = Rule::allow_outbound(Destination::Any);
            r.ports = Some(PortRange::single(p));
            r
        };
        let mut p = NetworkPolicy::none();
        p.rules.push(any_port(8088));
        let w = p.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("loopback, metadata, private"), "{}", w[0]);
        assert!(w[0].contains("--deny group:loopback --deny group:metadata --deny group:private"));
        // Guarded: no warning; partly guarded: names only what is missing.
        let mut guarded = NetworkPolicy::none();
        for g in [
            DestinationGroup::Private,
            DestinationGroup::Loopback,
            DestinationGroup::Metadata,
        ] {
            guarded
                .rules
                .push(Rule::deny_outbound(Destination::Group(g)));
        }
        guarded.rules.push(any_port(8088));
        assert!(guarded.warnings().is_empty());
        guarded.rules.remove(0);
        let w = guarded.warnings();
        assert!(
            w.len() == 1 && w[0].contains("also allows private:"),
            "{w:?}"
        );
        // A deny with a port filter does not guard; presets and allows of other
        // destinations are not warned about.
        let mut filtered = NetworkPolicy::none();
        let mut d = Rule::deny_outbound(Destination::Group(DestinationGroup::Loopback));
        d.ports = Some(PortRange::single(22));
        filtered.rules.push(d);
        filtered.rules.push(Rule::allow_outbound(Destination::Any));
        assert_eq!(filtered.warnings().len(), 1);
        // Only outbound allows of `any` are traps.
        let mut quiet = NetworkPolicy::none();
        quiet.rules.push(Rule::deny_outbound(Destination::Any));
        let mut inbound = Rule::allow_outbound(Destination::Any);
        inbound.direction = Direction::Inbound;
        quiet.rules.push(inbound);
        assert!(quiet.warnings().is_empty(), "{:?}", quiet.warnings());
        for preset in [
            NetworkPolicy::public_only(),
            NetworkPolicy::allow_all(),
            NetworkPolicy::none(),
        ] {
            assert!(preset.warnings().is_empty());
        }
    }

    #[test]
    fn names_parse_in_every_accepted_spelling() {
        for g in [
            DestinationGroup::LinkLocal,
            DestinationGroup::Loopback,
            DestinationGroup::Metadata,
            DestinationGroup::Multicast,
            DestinationGroup::Private,
        ] {
            assert_eq!(g.to_string().parse::<DestinationGroup>().unwrap(), g);
            assert_eq!(
                g.to_string()
                    .to_uppercase()
                    .parse::<DestinationGroup>()
                    .unwrap(),
                g
            );
        }
        for (text, d) in [
            ("inbound", Direction::Inbound),
            ("in", Direction::Inbound),
            ("outbound", Direction::Outbound),
            ("OUT", Direction::Outbound),
        ] {
            assert_eq!(text.parse::<Direction>().unwrap(), d);
        }
        assert!("sideways".parse::<Direction>().is_err());
        assert_eq!(
            NetworkPolicy::preset("public_only").unwrap(),
            NetworkPolicy::public_only()
        );
        assert_eq!(
            NetworkPolicy::preset("Allow-All").unwrap(),
            NetworkPolicy::allow_all()
        );
        assert_eq!(
            NetworkPolicy::preset("none").unwrap(),
            NetworkPolicy::none()
        );
        assert!(NetworkPolicy::preset("some").is_err());
    }

    #[test]
    fn offline_means_nothing_can_be_allowed() {
        assert!(NetworkPolicy::none().is_offline());
        let mut denies = NetworkPolicy::none();
        denies.rules.push(Rule::deny_outbound(Destination::Any));
        assert!(denies.is_offline());
        let mut one_allow = NetworkPolicy::none();
        one_allow.rules.push(Rule::allow_outbound(Destination::Any));
        assert!(!one_allow.is_offline());
        assert!(!NetworkPolicy::allow_all().is_offline());
        assert!(!NetworkPolicy::public_only().is_offline());
    }

    #[test]
    fn what_the_engine_reads_off_a_policy() {
        let mut p = NetworkPolicy::none();
        assert!(!p.has_name_rules());
        assert!(p.explicitly_allowed_networks().is_empty());
        p.rules.push(Rule::allow_outbound(Destination::Cidr(
            "10.1.0.0/16".parse().unwrap(),
        )));
        p.rules.push(Rule::allow_outbound(Destination::Group(
            DestinationGroup::Loopback,
        )));
        let mut ported = Rule::allow_outbound(Destination::Cidr("10.2.0.0/16".parse().unwrap()));
        ported.ports = Some(PortRange::single(80));
        p.rules.push(ported);
        p.rules.push(Rule::deny_outbound(Destination::Cidr(
            "10.3.0.0/16".parse().unwrap(),
        )));
        let mut inbound = Rule::allow_outbound(Destination::Cidr("10.4.0.0/16".parse().unwrap()));
        inbound.direction = Direction::Inbound;
        p.rules.push(inbound);
        let mut expected = vec!["10.1.0.0/16".parse::<IpNetwork>().unwrap()];
        expected.extend(DestinationGroup::Loopback.networks().iter().copied());
        assert_eq!(p.explicitly_allowed_networks(), expected);
        p.rules.push(Rule::deny_outbound(
            Destination::domain("api.example.test").unwrap(),
        ));
        assert!(p.has_name_rules());
    }
}
