//! Proof of a decision. The functions that open upstream sockets (and later mint
//! certificates or swap secrets) take a [`Permit`] or a [`NamePermit`], and only the
//! policy evaluator can make one: a code path that forgot to ask the policy does not
//! compile.

use std::net::IpAddr;

use crate::compiled::CompiledPolicy;
use crate::decide::{DecidedBy, Decision, Flow};
use crate::domain::DomainName;

/// The policy allowed a flow to `addr`.
#[derive(Debug)]
pub struct Permit {
    decision: Decision,
    addr: IpAddr,
    names_ports: bool,
}

impl Permit {
    /// The allowing decision.
    pub fn decision(&self) -> &Decision {
        &self.decision
    }

    /// The address the flow was judged for.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// True when the allowing rule names ports (not the default, not a port-less rule):
    /// the engine lets DNS over TLS through only on such an explicit allow.
    pub fn rule_names_ports(&self) -> bool {
        self.names_ports
    }
}

/// The policy allowed a DNS lookup of `name` to leave.
#[derive(Debug)]
pub struct NamePermit {
    decision: Decision,
    name: DomainName,
}

impl NamePermit {
    /// The allowing decision.
    pub fn decision(&self) -> &Decision {
        &self.decision
    }

    /// The name that may be looked up.
    pub fn name(&self) -> &DomainName {
        &self.name
    }
}

impl CompiledPolicy {
    /// Judges `flow`: an allow comes with its [`Permit`], a deny with the decision.
    pub fn permit(&self, flow: &Flow<'_>) -> Result<Permit, Decision> {
        let decision = self.decide(flow);
        if decision.is_allow() {
            let names_ports = match decision.by {
                DecidedBy::Rule(i) => self
                    .policy()
                    .rules
                    .get(i)
                    .is_some_and(|r| r.ports.is_some()),
                DecidedBy::Default | DecidedBy::Unreachable => false,
            };
            Ok(Permit {
                decision,
                addr: flow.addr,
                names_ports,
            })
        } else {
            Err(decision)
        }
    }

    /// The decision when a `Domain` or `DomainSuffix` deny rule decides a lookup of `name`
    /// (an address rule or the default deciding gives `None`): names a DNS answer's CNAME
    /// chain passes through are held to these.
    pub fn name_rule_denies(&self, name: &DomainName) -> Option<Decision> {
        let decision = self.decide_name(name);
        match decision.by {
            DecidedBy::Rule(i)
                if !decision.is_allow()
                    && self
                        .policy()
                        .rules
                        .get(i)
                        .is_some_and(|r| r.destination.is_name()) =>
            {
                Some(decision)
            }
            _ => None,
        }
    }

    /// Judges a DNS lookup of `name`: an allow comes with its [`NamePermit`].
    pub fn permit_name(&self, name: &DomainName) -> Result<NamePermit, Decision> {
        let decision = self.decide_name(name);
        if decision.is_allow() {
            Ok(NamePermit {
                decision,
                name: name.clone(),
            })
        } else {
            Err(decision)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{NetworkPolicy, Protocol};

    #[test]
    fn permits_come_only_with_allows() {
        let p = NetworkPolicy::public_only().compile().unwrap();
        let ok = Flow::outbound(Protocol::Tcp, "203.0.113.10:443".parse().unwrap());
        let permit = p.permit(&ok).unwrap();
        assert_eq!(permit.addr(), "203.0.113.10".parse::<IpAddr>().unwrap());
        assert!(permit.decision().is_allow());
        let denied = Flow::outbound(Protocol::Tcp, "10.0.0.1:443".parse().unwrap());
        assert!(!p.permit(&denied).unwrap_err().is_allow());
        let none = NetworkPolicy::none().compile().unwrap();
        assert!(
            none.permit_name(&DomainName::new("example.com").unwrap())
                .is_err()
        );
        assert!(
            p.permit_name(&DomainName::new("example.com").unwrap())
                .is_ok()
        );
    }

    #[test]
    fn permits_say_whether_their_rule_names_ports() {
        use crate::types::{Destination, PortRange, Rule};
        let mut policy = NetworkPolicy::none();
        let mut dot = Rule::allow_outbound(Destination::Cidr("203.0.113.10/32".parse().unwrap()));
        dot.ports = Some(PortRange::single(853));
        policy.rules.push(dot);
        policy.rules.push(Rule::allow_outbound(Destination::Cidr(
            "203.0.113.0/24".parse().unwrap(),
        )));
        let p = policy.compile().unwrap();
        let flow = |to: &str| Flow::outbound(Protocol::Tcp, to.parse().unwrap());
        assert!(
            p.permit(&flow("203.0.113.10:853"))
                .unwrap()
                .rule_names_ports()
        );
        assert!(
            !p.permit(&flow("203.0.113.11:853"))
                .unwrap()
                .rule_names_ports()
        );
        let default = NetworkPolicy::allow_all().compile().unwrap();
        assert!(
            !default
                .permit(&flow("198.51.100.1:853"))
                .unwrap()
                .rule_names_ports()
        );
    }

    #[test]
    fn only_name_rules_deny_names_for_cname_chains() {
        use crate::types::{Destination, Rule};
        let mut policy = NetworkPolicy::public_only();
        policy.rules.insert(
            0,
            Rule::deny_outbound(Destination::domain_suffix("tracking.example.test").unwrap()),
        );
        let p = policy.compile().unwrap();
        let name = |n: &str| DomainName::new(n).unwrap();
        let denied = p
            .name_rule_denies(&name("x.tracking.example.test"))
            .unwrap();
        assert_eq!(denied.rule_label(), "0");
        assert_eq!(p.name_rule_denies(&name("api.example.test")), None);
        // A lookup denied by no name rule (the default of `none`) is not a name denial.
        let none = NetworkPolicy::none().compile().unwrap();
        assert!(none.permit_name(&name("api.example.test")).is_err());
        assert_eq!(none.name_rule_denies(&name("api.example.test")), None);
    }
}
