//! moat's network policy, pure: the model of the user's specification, what it means for a
//! flow or a DNS name, a compiled matcher that answers the same in a few lookups, and
//! policy files parsed from text (reading them is the caller's part: no I/O here).
//!
//! ```
//! use moat_policy::{Action, Flow, NetworkPolicy, Protocol};
//!
//! let policy = NetworkPolicy::public_only().compile()?;
//! let flow = Flow::outbound(Protocol::Tcp, "10.1.2.3:80".parse().unwrap());
//! let decision = policy.decide(&flow);
//! assert_eq!(decision.action, Action::Deny);
//! assert_eq!(policy.reason(&decision), "rule 1: deny outbound group:private");
//! # Ok::<(), moat_policy::PolicyError>(())
//! ```
#![forbid(unsafe_code)]

mod addr;
mod compiled;
mod decide;
mod dest;
mod domain;
mod error;
mod file;
mod permit;
mod types;

pub use addr::{canonical_addr, canonical_net, never_reachable};
pub use compiled::CompiledPolicy;
pub use decide::{DecidedBy, Decision, Flow, decide_first_match, decide_name_first_match};
pub use dest::{DestSpec, FlowTarget, parse_cidr};
pub use domain::{DomainName, DomainSuffix};
pub use error::{PolicyError, PolicyFileError};
pub use file::PolicyFormat;
pub use permit::{NamePermit, Permit};
pub use types::{
    Action, Destination, DestinationGroup, Direction, IpNetwork, NameDestination, NetworkPolicy,
    PortRange, Protocol, Rule, SPECIAL_PURPOSE, ViolationAction,
};
