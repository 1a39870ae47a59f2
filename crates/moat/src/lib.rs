//! moat: run untrusted code in a Linux sandbox whose only way to the network is moat's own
//! user-space stack, where every flow is judged by a [`NetworkPolicy`] first.
//!
//! This crate is the public facade of shared/API.md. The policy model is complete; the
//! sandbox and the engine arrive in their own crates.
#![forbid(unsafe_code)]

pub use moat_policy::{
    Action, CompiledPolicy, DecidedBy, Decision, Destination, DestinationGroup, Direction,
    DomainName, DomainSuffix, Flow, IpNetwork, NetworkPolicy, PolicyError, PolicyFileError,
    PortRange, Protocol, Rule, ViolationAction,
};
