//! The user's specification (shared/seed/network-api.txt), written as it is printed: every
//! preset, builder method, type, variant, field and constructor it lists, spelled exactly
//! as it shows them. If a name changes or a signature stops accepting what the
//! specification passes, this file stops compiling.
//!
//! Where the specification takes plain text (`Destination::Domain(String)`) or any two
//! ports (`PortRange::range(start, end)`), the checks happen where the policy is built:
//! `compile()` and `create()` refuse a bad name or a backwards range with a clear error, and
//! nothing is started.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::net::SocketAddr;

use moat::{
    Action, Destination, DestinationGroup, Direction, DomainName, Flow, IpNetwork, NetworkPolicy,
    PortRange, Protocol, Rule, Sandbox, ViolationAction,
};

/// Every type and constructor of the specification's "Types" section.
fn every_type() -> NetworkPolicy {
    let rules = vec![
        Rule::allow_outbound(Destination::Domain("api.example.com".into())),
        Rule::deny_outbound(Destination::DomainSuffix(".tracking.com".into())),
        Rule::allow_outbound(Destination::Any),
        Rule::allow_outbound(Destination::Cidr(
            "203.0.113.0/24".parse::<IpNetwork>().unwrap(),
        )),
        Rule::deny_outbound(Destination::Group(DestinationGroup::LinkLocal)),
        Rule::deny_outbound(Destination::Group(DestinationGroup::Loopback)),
        Rule::deny_outbound(Destination::Group(DestinationGroup::Metadata)),
        Rule::deny_outbound(Destination::Group(DestinationGroup::Multicast)),
        Rule::deny_outbound(Destination::Group(DestinationGroup::Private)),
        Rule {
            action: Action::Allow,
            destination: Destination::Domain("files.example.com".into()),
            direction: Direction::Outbound,
            ports: Some(PortRange::range(8000, 8100)),
            protocol: Some(Protocol::Tcp),
        },
        Rule {
            action: Action::Deny,
            destination: Destination::Cidr("198.51.100.0/24".parse().unwrap()),
            direction: Direction::Inbound,
            ports: Some(PortRange::single(22)),
            protocol: Some(Protocol::Udp),
        },
        Rule {
            action: Action::Deny,
            destination: Destination::Any,
            direction: Direction::Outbound,
            ports: None,
            protocol: Some(Protocol::Icmpv4),
        },
        Rule {
            action: Action::Deny,
            destination: Destination::Any,
            direction: Direction::Outbound,
            ports: None,
            protocol: Some(Protocol::Icmpv6),
        },
    ];
    NetworkPolicy {
        default_action: Action::Deny,
        rules,
    }
}

/// The presets, the NetworkBuilder and the TlsBuilder as the specification shows them,
/// with `policy` as given; `create()` is the caller's.
fn builder(policy: NetworkPolicy) -> moat::SandboxBuilder {
    let _presets = [
        NetworkPolicy::allow_all(),
        NetworkPolicy::none(),
        NetworkPolicy::public_only(),
    ];
    let _actions = [
        ViolationAction::Block,
        ViolationAction::BlockAndLog,
        ViolationAction::BlockAndTerminate,
    ];
    Sandbox::builder("spec").network(|n| {
        n.block_domain("malware.example.com")
            .block_domain_suffix(".tracking.com")
            .dns_rebind_protection(true)
            .max_connections(64)
            .on_secret_violation(ViolationAction::BlockAndLog)
            .policy(policy)
            .tls(|t| {
                t.block_quic(true)
                    .bypass("*.pinned-api.com")
                    .intercept_ca_cert("/nonexistent/ca.pem")
                    .intercept_ca_key("/nonexistent/ca.key")
                    .intercepted_ports(vec![443, 8443])
                    .upstream_ca_cert("/nonexistent/upstream.pem")
                    .verify_upstream(true)
            })
    })
}

#[test]
fn the_specifications_names_build_a_policy_that_works() {
    let compiled = every_type().compile().unwrap();
    // The names are matched as names, whatever case and trailing dot they were given in.
    let addr: SocketAddr = "203.0.113.10:443".parse().unwrap();
    let api = [DomainName::new("API.Example.com.").unwrap()];
    let decision = compiled.decide(&Flow::outbound(Protocol::Tcp, addr).with_names(&api));
    assert!(decision.is_allow());
    assert_eq!(decision.rule_label(), "0");
    let tracker = [DomainName::new("a.b.tracking.com").unwrap()];
    let decision = compiled.decide(&Flow::outbound(Protocol::Tcp, addr).with_names(&tracker));
    assert!(!decision.is_allow());
    assert_eq!(decision.rule_label(), "1");
    // The same spelled with upper case and a dot at the end is the same policy.
    let mut shouting = every_type();
    shouting.rules[0].destination = Destination::Domain("API.EXAMPLE.COM.".into());
    shouting.rules[1].destination = Destination::DomainSuffix("*.TRACKING.com".into());
    let decision = shouting
        .compile()
        .unwrap()
        .decide(&Flow::outbound(Protocol::Tcp, addr).with_names(&api));
    assert_eq!(decision.rule_label(), "0");
}

#[test]
fn what_the_specification_cannot_refuse_is_refused_where_the_policy_is_built() {
    let cases: [(Rule, &str); 3] = [
        (
            Rule::allow_outbound(Destination::Domain("exa mple.com".into())),
            "exa mple.com",
        ),
        (
            Rule::deny_outbound(Destination::DomainSuffix(".".into())),
            "\".\"",
        ),
        (
            Rule::allow_outbound(Destination::Any).with_ports(PortRange::range(8100, 8000)),
            "8100",
        ),
    ];
    for (rule, named) in cases {
        let mut policy = every_type();
        policy.rules.insert(3, rule);
        let compiled = policy.clone().compile().unwrap_err().to_string();
        assert!(compiled.contains(named), "{compiled}");
        // create() fails with the same words, before anything starts.
        let created = builder(policy).create().err().expect("refused").to_string();
        assert!(created.contains(&compiled), "{created} / {compiled}");
    }
}
