//! Proof of a decision. The functions that open upstream sockets (and later mint
//! certificates or swap secrets) take a [`Permit`] or a [`NamePermit`], and only the
//! policy evaluator can make one: a code path that forgot to ask the policy does not
//! compile.

use std::net::IpAddr;

use crate::compiled::CompiledPolicy;
use crate::decide::{Decision, Flow};
use crate::domain::DomainName;

/// The policy allowed a flow to `addr`.
#[derive(Debug)]
pub struct Permit {
    decision: Decision,
    addr: IpAddr,
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
            Ok(Permit {
                decision,
                addr: flow.addr,
            })
        } else {
            Err(decision)
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
}
