//! The meaning of a policy: what a flow is, what a decision says, and the plain first-match
//! walk that defines both the connection decision and the DNS name decision.
//!
//! The compiled matcher ([`crate::CompiledPolicy`]) must give exactly the answers of
//! [`decide_first_match`] and [`decide_name_first_match`]; a property test holds it to that.
//!
//! # Domain rules
//! A domain rule ([`Destination::Domain`] / [`Destination::DomainSuffix`]) never matches an
//! address by itself. It looks at the names this sandbox's own DNS lookups bound to the
//! address ([`Flow::names`], the pin set) and at the TLS SNI when one was seen:
//! - an **allow** rule needs every piece of evidence to agree: a pinned name matches the rule,
//!   and the SNI, if any, matches it too;
//! - a **deny** rule takes any evidence: a pinned name matches it, or the SNI does.
//!
//! So a hard-coded address that was never looked up does not match an allow rule, and a
//! direct-IP TLS connection whose SNI names a denied domain is denied.
//!
//! # DNS is egress
//! [`decide_name_first_match`] says whether a lookup of a name may leave the sandbox's host:
//! walking the outbound rules in order, the first rule that names it decides (an allow rule,
//! or an unfiltered deny rule — a port-limited deny does not make the whole name
//! unreachable); an unfiltered `deny any` ends the walk; otherwise the lookup is forwarded if
//! an address-based allow rule (any, CIDR, group) came earlier, or the default allows.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::addr::{canonical_addr, canonical_net, never_reachable};
use crate::domain::DomainName;
use crate::types::{
    Action, Destination, DestinationGroup, Direction, NetworkPolicy, Protocol, Rule,
};

/// One connection or datagram flow to be judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow<'a> {
    /// Outbound (judged on the destination) or inbound (judged on the peer).
    pub direction: Direction,
    /// The flow's protocol.
    pub protocol: Protocol,
    /// The remote address: destination for outbound flows, peer for inbound.
    pub addr: IpAddr,
    /// The remote port for TCP and UDP (inbound: the guest port); `None` for ICMP.
    pub port: Option<u16>,
    /// Names whose DNS answers (to this sandbox) contained `addr`.
    pub names: &'a [DomainName],
    /// The TLS ClientHello's server name, when one was read.
    pub sni: Option<&'a DomainName>,
    /// `addr` is one of the host's own addresses (its local routing table: every address of
    /// its interfaces and their broadcast addresses), so the `Loopback` group holds it.
    pub local: bool,
}

impl<'a> Flow<'a> {
    /// An outbound TCP or UDP flow to `dst`, with no names or SNI.
    pub fn outbound(protocol: Protocol, dst: SocketAddr) -> Flow<'a> {
        Flow {
            direction: Direction::Outbound,
            protocol,
            addr: dst.ip(),
            port: protocol.has_ports().then_some(dst.port()),
            names: &[],
            sni: None,
            local: false,
        }
    }

    /// An inbound flow from `peer` to the published guest port `guest_port`.
    pub fn inbound(protocol: Protocol, peer: IpAddr, guest_port: u16) -> Flow<'a> {
        Flow {
            direction: Direction::Inbound,
            protocol,
            addr: peer,
            port: protocol.has_ports().then_some(guest_port),
            names: &[],
            sni: None,
            local: false,
        }
    }

    /// The same flow, its address one of the host's own (or not).
    pub fn with_local(mut self, local: bool) -> Flow<'a> {
        self.local = local;
        self
    }

    /// The same flow with the names DNS bound to its address.
    pub fn with_names(mut self, names: &'a [DomainName]) -> Flow<'a> {
        self.names = names;
        self
    }

    /// The same flow with the TLS SNI that was read.
    pub fn with_sni(mut self, sni: Option<&'a DomainName>) -> Flow<'a> {
        self.sni = sni;
        self
    }
}

/// What decided a [`Decision`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecidedBy {
    /// The rule at this index (0-based) was the first to match.
    Rule(usize),
    /// No rule matched: the policy's default action.
    Default,
    /// The address is never reachable (`0.0.0.0/8`, `::`), whatever the rules say.
    Unreachable,
}

/// The answer for one flow or name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Decision {
    /// Allow or deny.
    pub action: Action,
    /// The rule, the default, or the built-in that decided.
    pub by: DecidedBy,
}

impl Decision {
    /// True for [`Action::Allow`].
    pub fn is_allow(&self) -> bool {
        self.action == Action::Allow
    }

    /// The audit log's `rule` field: the index, or `"default"`, or `"unreachable"`.
    pub fn rule_label(&self) -> String {
        match self.by {
            DecidedBy::Rule(i) => i.to_string(),
            DecidedBy::Default => "default".to_owned(),
            DecidedBy::Unreachable => "unreachable".to_owned(),
        }
    }

    /// A short reason for people and the audit log, citing the rule from `policy`.
    pub fn reason(&self, policy: &NetworkPolicy) -> String {
        match self.by {
            DecidedBy::Rule(i) => match policy.rules.get(i) {
                Some(rule) => format!("rule {i}: {rule}"),
                None => format!("rule {i}"),
            },
            DecidedBy::Default => format!("no rule matched; default {}", self.action),
            DecidedBy::Unreachable => "0.0.0.0/8 and :: are never reachable".to_owned(),
        }
    }
}

impl fmt::Display for DecidedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecidedBy::Rule(i) => write!(f, "rule {i}"),
            DecidedBy::Default => f.write_str("default"),
            DecidedBy::Unreachable => f.write_str("unreachable"),
        }
    }
}

impl Rule {
    /// True when this rule matches `flow`. `flow.addr` is made canonical here; the walk is
    /// the definition, not the fast path.
    pub fn matches(&self, flow: &Flow<'_>) -> bool {
        if self.direction != flow.direction {
            return false;
        }
        if self.protocol.is_some_and(|p| p != flow.protocol) {
            return false;
        }
        if let Some(ports) = self.ports
            && !flow.port.is_some_and(|p| ports.contains(p))
        {
            return false;
        }
        let addr = canonical_addr(flow.addr);
        // A name that does not parse matches nothing (a built policy has none).
        let parsed = self.destination.name().and_then(Result::ok);
        let name_matches = |name: &DomainName| parsed.as_ref().is_some_and(|d| d.matches(name));
        match &self.destination {
            Destination::Any => true,
            Destination::Cidr(net) => canonical_net(*net).contains(&addr),
            Destination::Group(group) => {
                group.contains(addr) || (*group == DestinationGroup::Loopback && flow.local)
            }
            Destination::Domain(_) | Destination::DomainSuffix(_) => {
                let pinned = flow.names.iter().any(name_matches);
                let sni = flow.sni.map(name_matches);
                match self.action {
                    Action::Allow => pinned && sni.unwrap_or(true),
                    Action::Deny => pinned || sni.unwrap_or(false),
                }
            }
        }
    }

    /// True when this (outbound) rule's destination names `name`.
    pub fn names(&self, name: &DomainName) -> bool {
        self.destination
            .name()
            .and_then(Result::ok)
            .is_some_and(|d| d.matches(name))
    }
}

/// The reference connection decision: the plain first-match walk over `policy.rules`.
pub fn decide_first_match(policy: &NetworkPolicy, flow: &Flow<'_>) -> Decision {
    if never_reachable(canonical_addr(flow.addr)) {
        return Decision {
            action: Action::Deny,
            by: DecidedBy::Unreachable,
        };
    }
    for (i, rule) in policy.rules.iter().enumerate() {
        if rule.matches(flow) {
            return Decision {
                action: rule.action,
                by: DecidedBy::Rule(i),
            };
        }
    }
    Decision {
        action: policy.default_action,
        by: DecidedBy::Default,
    }
}

/// The reference DNS decision for a lookup of `name`: `Allow` = forward upstream, `Deny` =
/// answer NXDOMAIN without asking anyone. See the module documentation.
pub fn decide_name_first_match(policy: &NetworkPolicy, name: &DomainName) -> Decision {
    let mut first_address_allow = None;
    let rule = |i: usize| Decision {
        action: policy.rules[i].action,
        by: DecidedBy::Rule(i),
    };
    let allow_by = |i: Option<usize>| {
        i.map(|i| Decision {
            action: Action::Allow,
            by: DecidedBy::Rule(i),
        })
    };
    for (i, r) in policy.rules.iter().enumerate() {
        if r.direction != Direction::Outbound {
            continue;
        }
        match &r.destination {
            Destination::Domain(_) | Destination::DomainSuffix(_) => {
                if r.names(name) && (r.action == Action::Allow || r.is_unfiltered()) {
                    return rule(i);
                }
            }
            Destination::Any | Destination::Cidr(_) | Destination::Group(_) => {
                if r.action == Action::Allow {
                    first_address_allow.get_or_insert(i);
                } else if r.destination == Destination::Any && r.is_unfiltered() {
                    return allow_by(first_address_allow).unwrap_or(rule(i));
                }
            }
        }
    }
    allow_by(first_address_allow).unwrap_or(Decision {
        action: policy.default_action,
        by: DecidedBy::Default,
    })
}
