//! What policies mean, case by case. Every case is judged by both the compiled matcher and
//! the reference first-match walk, which must agree.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::net::IpAddr;

use moat_policy::{
    Action, DecidedBy, Decision, Destination, DestinationGroup, Direction, DomainName, Flow,
    NetworkPolicy, PortRange, Protocol, Rule, decide_first_match, decide_name_first_match,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn name(s: &str) -> DomainName {
    DomainName::new(s).unwrap()
}

fn judge(policy: &NetworkPolicy, flow: &Flow<'_>) -> Decision {
    let compiled = policy.compile().unwrap().decide(flow);
    let walked = decide_first_match(policy, flow);
    assert_eq!(compiled, walked, "compiled and walk disagree on {flow:?}");
    compiled
}

fn judge_name(policy: &NetworkPolicy, n: &str) -> Decision {
    let n = name(n);
    let compiled = policy.compile().unwrap().decide_name(&n);
    assert_eq!(compiled, decide_name_first_match(policy, &n), "name {n}");
    compiled
}

fn tcp(addr: &str, port: u16) -> Flow<'static> {
    Flow {
        direction: Direction::Outbound,
        protocol: Protocol::Tcp,
        addr: ip(addr),
        port: Some(port),
        names: &[],
        sni: None,
        local: false,
    }
}

fn allow(by: DecidedBy) -> Decision {
    Decision {
        action: Action::Allow,
        by,
    }
}

fn deny(by: DecidedBy) -> Decision {
    Decision {
        action: Action::Deny,
        by,
    }
}

/// Addresses of every group in every form, with the group `public_only` denies them by.
const GROUPED: &[(&str, DestinationGroup)] = &[
    ("127.0.0.1", DestinationGroup::Loopback),
    ("::1", DestinationGroup::Loopback),
    ("::ffff:127.0.0.53", DestinationGroup::Loopback),
    ("10.1.2.3", DestinationGroup::Private),
    ("172.16.0.1", DestinationGroup::Private),
    ("192.168.1.1", DestinationGroup::Private),
    ("100.64.0.1", DestinationGroup::Private),
    ("fd00::1", DestinationGroup::Private),
    ("::ffff:192.168.1.1", DestinationGroup::Private),
    ("64:ff9b::10.0.0.1", DestinationGroup::Private),
    ("::10.0.0.1", DestinationGroup::Private),
    // fd00:ec2::254 is inside fc00::/7, which public_only denies first (as Private).
    ("fd00:ec2::254", DestinationGroup::Private),
    ("169.254.1.1", DestinationGroup::LinkLocal),
    ("fe80::1", DestinationGroup::LinkLocal),
    // 169.254.169.254 is link-local too; the LinkLocal rule comes first in public_only.
    ("169.254.169.254", DestinationGroup::LinkLocal),
    ("::ffff:169.254.169.254", DestinationGroup::LinkLocal),
    ("224.0.0.251", DestinationGroup::Multicast),
    ("ff02::fb", DestinationGroup::Multicast),
    ("64:ff9b::224.0.0.1", DestinationGroup::Multicast),
];

const PUBLIC: &[&str] = &[
    "203.0.113.10",
    "198.51.100.1",
    "8.8.8.8",
    "2001:db8::10",
    "::ffff:203.0.113.10",
    "64:ff9b::198.51.100.1",
    "172.32.0.1",
    "100.128.0.1",
];

fn rule_of(policy: &NetworkPolicy, group: DestinationGroup) -> usize {
    policy
        .rules
        .iter()
        .position(|r| r.destination == Destination::Group(group))
        .unwrap()
}

#[test]
fn public_only_denies_every_group_in_every_form() {
    let p = NetworkPolicy::public_only();
    for &(addr, group) in GROUPED {
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            let flow = Flow {
                protocol,
                ..tcp(addr, 80)
            };
            assert_eq!(
                judge(&p, &flow),
                deny(DecidedBy::Rule(rule_of(&p, group))),
                "{addr}"
            );
        }
        let icmp = Flow {
            protocol: Protocol::Icmpv4,
            port: None,
            ..tcp(addr, 0)
        };
        assert_eq!(judge(&p, &icmp).action, Action::Deny, "{addr} icmp");
    }
    for &addr in PUBLIC {
        assert_eq!(
            judge(&p, &tcp(addr, 443)),
            allow(DecidedBy::Default),
            "{addr}"
        );
    }
}

#[test]
fn public_only_leaves_inbound_to_the_default() {
    let p = NetworkPolicy::public_only();
    let flow = Flow::inbound(Protocol::Tcp, ip("127.0.0.1"), 8000);
    assert_eq!(judge(&p, &flow), allow(DecidedBy::Default));
}

#[test]
fn allow_all_allows_every_group_but_never_the_unspecified_address() {
    let p = NetworkPolicy::allow_all();
    for &(addr, _) in GROUPED {
        assert_eq!(
            judge(&p, &tcp(addr, 80)),
            allow(DecidedBy::Default),
            "{addr}"
        );
    }
    for &addr in PUBLIC {
        assert_eq!(
            judge(&p, &tcp(addr, 80)),
            allow(DecidedBy::Default),
            "{addr}"
        );
    }
    for addr in [
        "0.0.0.0",
        "0.1.2.3",
        "::",
        "::ffff:0.0.0.0",
        "64:ff9b::0.0.0.1",
    ] {
        assert_eq!(
            judge(&p, &tcp(addr, 80)),
            deny(DecidedBy::Unreachable),
            "{addr}"
        );
    }
}

#[test]
fn none_denies_everything() {
    let p = NetworkPolicy::none();
    for &(addr, _) in GROUPED {
        assert_eq!(
            judge(&p, &tcp(addr, 80)),
            deny(DecidedBy::Default),
            "{addr}"
        );
    }
    for &addr in PUBLIC {
        assert_eq!(
            judge(&p, &tcp(addr, 80)),
            deny(DecidedBy::Default),
            "{addr}"
        );
    }
    assert_eq!(judge_name(&p, "example.com").action, Action::Deny);
}

#[test]
fn explicit_group_rules_match_every_family() {
    for &(addr, group) in GROUPED {
        let p = NetworkPolicy {
            default_action: Action::Allow,
            rules: vec![Rule::deny_outbound(Destination::Group(group))],
        };
        assert_eq!(
            judge(&p, &tcp(addr, 1)),
            deny(DecidedBy::Rule(0)),
            "{addr} in {group}"
        );
    }
    let metadata = NetworkPolicy {
        default_action: Action::Allow,
        rules: vec![Rule::deny_outbound(Destination::Group(
            DestinationGroup::Metadata,
        ))],
    };
    assert_eq!(
        judge(&metadata, &tcp("169.254.169.254", 80)).action,
        Action::Deny
    );
    assert_eq!(
        judge(&metadata, &tcp("fd00:ec2::254", 80)).action,
        Action::Deny
    );
    assert_eq!(
        judge(&metadata, &tcp("169.254.169.253", 80)).action,
        Action::Allow
    );
}

#[test]
fn first_match_wins() {
    let net = |s: &str| Destination::Cidr(s.parse().unwrap());
    let p = NetworkPolicy {
        default_action: Action::Deny,
        rules: vec![
            Rule::deny_outbound(net("10.1.2.3/32")),
            Rule::allow_outbound(net("10.1.0.0/16")),
            Rule::deny_outbound(net("10.0.0.0/8")),
            Rule::allow_outbound(Destination::Any),
        ],
    };
    assert_eq!(judge(&p, &tcp("10.1.2.3", 1)), deny(DecidedBy::Rule(0)));
    assert_eq!(judge(&p, &tcp("10.1.2.4", 1)), allow(DecidedBy::Rule(1)));
    assert_eq!(judge(&p, &tcp("10.2.0.1", 1)), deny(DecidedBy::Rule(2)));
    assert_eq!(judge(&p, &tcp("11.0.0.1", 1)), allow(DecidedBy::Rule(3)));
    // The same rules, wider first: the wide rule shadows the narrow ones.
    let mut reversed = p.clone();
    reversed.rules.swap(0, 2);
    assert_eq!(
        judge(&reversed, &tcp("10.1.2.3", 1)),
        deny(DecidedBy::Rule(0))
    );
    assert_eq!(
        judge(&reversed, &tcp("10.1.2.4", 1)),
        deny(DecidedBy::Rule(0))
    );
}

#[test]
fn port_ranges_are_inclusive() {
    let p = NetworkPolicy {
        default_action: Action::Deny,
        rules: vec![
            Rule::allow_outbound(Destination::Any).with_ports(PortRange::range(8000, 8100)),
            Rule::allow_outbound(Destination::Any).with_ports(PortRange::single(443)),
        ],
    };
    for (port, expected) in [
        (7999, deny(DecidedBy::Default)),
        (8000, allow(DecidedBy::Rule(0))),
        (8050, allow(DecidedBy::Rule(0))),
        (8100, allow(DecidedBy::Rule(0))),
        (8101, deny(DecidedBy::Default)),
        (442, deny(DecidedBy::Default)),
        (443, allow(DecidedBy::Rule(1))),
        (444, deny(DecidedBy::Default)),
        (0, deny(DecidedBy::Default)),
        (65535, deny(DecidedBy::Default)),
    ] {
        assert_eq!(
            judge(&p, &tcp("203.0.113.10", port)),
            expected,
            "port {port}"
        );
    }
    // Port-less flows (ICMP) never match a port filter.
    let icmp = Flow {
        protocol: Protocol::Icmpv4,
        port: None,
        ..tcp("203.0.113.10", 0)
    };
    assert_eq!(judge(&p, &icmp), deny(DecidedBy::Default));
}

#[test]
fn protocol_filters() {
    let p = NetworkPolicy {
        default_action: Action::Deny,
        rules: vec![
            Rule::allow_outbound(Destination::Any)
                .with_protocol(Protocol::Udp)
                .with_ports(PortRange::single(53)),
            Rule::allow_outbound(Destination::Any).with_protocol(Protocol::Icmpv4),
            Rule::allow_outbound(Destination::Cidr("2001:db8::/32".parse().unwrap()))
                .with_protocol(Protocol::Icmpv6),
            Rule::allow_outbound(Destination::Any).with_protocol(Protocol::Tcp),
        ],
    };
    let udp = |addr, port| Flow {
        protocol: Protocol::Udp,
        ..tcp(addr, port)
    };
    let icmp = |addr, protocol| Flow {
        protocol,
        port: None,
        ..tcp(addr, 0)
    };
    assert_eq!(
        judge(&p, &udp("203.0.113.1", 53)),
        allow(DecidedBy::Rule(0))
    );
    assert_eq!(judge(&p, &udp("203.0.113.1", 54)), deny(DecidedBy::Default));
    assert_eq!(
        judge(&p, &tcp("203.0.113.1", 53)),
        allow(DecidedBy::Rule(3))
    );
    assert_eq!(
        judge(&p, &icmp("203.0.113.1", Protocol::Icmpv4)),
        allow(DecidedBy::Rule(1))
    );
    assert_eq!(
        judge(&p, &icmp("2001:db8::1", Protocol::Icmpv6)),
        allow(DecidedBy::Rule(2))
    );
    assert_eq!(
        judge(&p, &icmp("2001:db9::1", Protocol::Icmpv6)),
        deny(DecidedBy::Default)
    );
}

#[test]
fn inbound_and_outbound_are_separate() {
    let lo = Destination::Cidr("127.0.0.0/8".parse().unwrap());
    let p = NetworkPolicy {
        default_action: Action::Allow,
        rules: vec![Rule::deny_inbound(lo.clone()).with_ports(PortRange::single(8000))],
    };
    assert_eq!(
        judge(&p, &Flow::inbound(Protocol::Tcp, ip("127.0.0.1"), 8000)),
        deny(DecidedBy::Rule(0))
    );
    assert_eq!(
        judge(&p, &Flow::inbound(Protocol::Tcp, ip("127.0.0.1"), 8001)),
        allow(DecidedBy::Default)
    );
    assert_eq!(
        judge(&p, &tcp("127.0.0.1", 8000)),
        allow(DecidedBy::Default)
    );
    let p = NetworkPolicy {
        default_action: Action::Allow,
        rules: vec![Rule::deny_outbound(lo)],
    };
    assert_eq!(
        judge(&p, &Flow::inbound(Protocol::Tcp, ip("127.0.0.1"), 8000)),
        allow(DecidedBy::Default)
    );
    assert_eq!(judge(&p, &tcp("127.0.0.1", 8000)), deny(DecidedBy::Rule(0)));
}

#[test]
fn mapped_rule_networks_match_ipv4_flows() {
    let p = NetworkPolicy {
        default_action: Action::Allow,
        rules: vec![Rule::deny_outbound(Destination::Cidr(
            "::ffff:10.0.0.0/104".parse().unwrap(),
        ))],
    };
    assert_eq!(judge(&p, &tcp("10.9.9.9", 1)), deny(DecidedBy::Rule(0)));
    assert_eq!(
        judge(&p, &tcp("::ffff:10.9.9.9", 1)),
        deny(DecidedBy::Rule(0))
    );
    assert_eq!(judge(&p, &tcp("11.0.0.1", 1)), allow(DecidedBy::Default));
}

fn domain_policy(default_action: Action, rules: Vec<Rule>) -> NetworkPolicy {
    NetworkPolicy {
        default_action,
        rules,
    }
}

#[test]
fn allow_domain_needs_a_pinned_name_and_an_agreeing_sni() {
    let p = domain_policy(
        Action::Deny,
        vec![Rule::allow_outbound(
            Destination::domain("api.example.test").unwrap(),
        )],
    );
    let api = [name("api.example.test")];
    let other = [name("other.example.test")];
    let base = tcp("203.0.113.10", 443);
    // Never looked up: no match.
    assert_eq!(judge(&p, &base), deny(DecidedBy::Default));
    // Looked up under the rule's name.
    assert_eq!(judge(&p, &base.with_names(&api)), allow(DecidedBy::Rule(0)));
    // Looked up under another name.
    assert_eq!(
        judge(&p, &base.with_names(&other)),
        deny(DecidedBy::Default)
    );
    // SNI agrees.
    let sni = name("api.example.test");
    assert_eq!(
        judge(&p, &base.with_names(&api).with_sni(Some(&sni))),
        allow(DecidedBy::Rule(0))
    );
    // SNI disagrees: no match even though the address was pinned for the name.
    let evil = name("evil.example.test");
    assert_eq!(
        judge(&p, &base.with_names(&api).with_sni(Some(&evil))),
        deny(DecidedBy::Default)
    );
    // SNI alone, without a lookup, is not enough.
    assert_eq!(
        judge(&p, &base.with_sni(Some(&sni))),
        deny(DecidedBy::Default)
    );
    // Several names pinned on one address: one of them is enough.
    let both = [name("other.example.test"), name("api.example.test")];
    assert_eq!(
        judge(&p, &base.with_names(&both)),
        allow(DecidedBy::Rule(0))
    );
}

#[test]
fn deny_domain_takes_any_evidence() {
    let p = domain_policy(
        Action::Allow,
        vec![Rule::deny_outbound(
            Destination::domain("blocked.example.test").unwrap(),
        )],
    );
    let base = tcp("203.0.113.20", 443);
    let blocked = name("blocked.example.test");
    let fine = name("fine.example.test");
    assert_eq!(judge(&p, &base), allow(DecidedBy::Default));
    assert_eq!(
        judge(&p, &base.with_names(std::slice::from_ref(&blocked))),
        deny(DecidedBy::Rule(0))
    );
    // Direct-IP TLS with the blocked name as SNI.
    assert_eq!(
        judge(&p, &base.with_sni(Some(&blocked))),
        deny(DecidedBy::Rule(0))
    );
    // Pinned under the blocked name, SNI claims another: still denied.
    assert_eq!(
        judge(
            &p,
            &base
                .with_names(std::slice::from_ref(&blocked))
                .with_sni(Some(&fine))
        ),
        deny(DecidedBy::Rule(0))
    );
    assert_eq!(
        judge(&p, &base.with_names(std::slice::from_ref(&fine))),
        allow(DecidedBy::Default)
    );
}

#[test]
fn suffix_rules_match_strictly_below() {
    let p = domain_policy(
        Action::Allow,
        vec![Rule::deny_outbound(
            Destination::domain_suffix(".tracking.com").unwrap(),
        )],
    );
    let base = tcp("203.0.113.30", 80);
    for (n, denied) in [
        ("a.tracking.com", true),
        ("b.c.tracking.com", true),
        ("tracking.com", false),
        ("eviltracking.com", false),
        ("tracking.com.evil", false),
    ] {
        let names = [name(n)];
        let expected = if denied {
            deny(DecidedBy::Rule(0))
        } else {
            allow(DecidedBy::Default)
        };
        assert_eq!(judge(&p, &base.with_names(&names)), expected, "{n}");
        assert_eq!(
            judge(&p, &base.with_sni(Some(&names[0]))),
            expected,
            "sni {n}"
        );
        let dns = if denied { Action::Deny } else { Action::Allow };
        assert_eq!(judge_name(&p, n).action, dns, "dns {n}");
    }
    // An allow suffix with SNI: both the pinned name and the SNI must be below it.
    let p = domain_policy(
        Action::Deny,
        vec![Rule::allow_outbound(
            Destination::domain_suffix("*.example.test").unwrap(),
        )],
    );
    let a = [name("a.example.test")];
    let b = name("b.example.test");
    let out = name("example.org");
    assert_eq!(judge(&p, &base.with_names(&a)), allow(DecidedBy::Rule(0)));
    assert_eq!(
        judge(&p, &base.with_names(&a).with_sni(Some(&b))),
        allow(DecidedBy::Rule(0))
    );
    assert_eq!(
        judge(&p, &base.with_names(&a).with_sni(Some(&out))),
        deny(DecidedBy::Default)
    );
    let apex = [name("example.test")];
    assert_eq!(judge(&p, &base.with_names(&apex)), deny(DecidedBy::Default));
}

#[test]
fn domain_rules_respect_ports_and_order() {
    let p = domain_policy(
        Action::Deny,
        vec![
            Rule::deny_outbound(Destination::Cidr("203.0.113.66/32".parse().unwrap())),
            Rule::allow_outbound(Destination::domain("api.example.test").unwrap())
                .with_ports(PortRange::single(443))
                .with_protocol(Protocol::Tcp),
        ],
    );
    let api = [name("api.example.test")];
    assert_eq!(
        judge(&p, &tcp("203.0.113.10", 443).with_names(&api)),
        allow(DecidedBy::Rule(1))
    );
    assert_eq!(
        judge(&p, &tcp("203.0.113.10", 80).with_names(&api)),
        deny(DecidedBy::Default)
    );
    assert_eq!(
        judge(&p, &tcp("203.0.113.66", 443).with_names(&api)),
        deny(DecidedBy::Rule(0))
    );
}

#[test]
fn dns_is_egress() {
    // Deny default, one allowed name: only it resolves.
    let p = domain_policy(
        Action::Deny,
        vec![Rule::allow_outbound(
            Destination::domain("api.example.test").unwrap(),
        )],
    );
    assert_eq!(
        judge_name(&p, "api.example.test"),
        allow(DecidedBy::Rule(0))
    );
    assert_eq!(
        judge_name(&p, "other.example.test"),
        deny(DecidedBy::Default)
    );
    assert_eq!(
        judge_name(&p, "x.api.example.test"),
        deny(DecidedBy::Default)
    );

    // An address allow rule could reach any name.
    let p = domain_policy(
        Action::Deny,
        vec![
            Rule::allow_outbound(Destination::Cidr("203.0.113.0/24".parse().unwrap())),
            Rule::deny_outbound(Destination::domain("evil.example.test").unwrap()),
        ],
    );
    assert_eq!(
        judge_name(&p, "anything.example.test"),
        allow(DecidedBy::Rule(0))
    );
    // A deny rule that names it is the first rule to match the name: blocked.
    assert_eq!(
        judge_name(&p, "evil.example.test"),
        deny(DecidedBy::Rule(1))
    );

    // A port-limited deny does not make the name unreachable.
    let p = domain_policy(
        Action::Allow,
        vec![
            Rule::deny_outbound(Destination::domain("web.example.test").unwrap())
                .with_ports(PortRange::single(80)),
        ],
    );
    assert_eq!(
        judge_name(&p, "web.example.test"),
        allow(DecidedBy::Default)
    );

    // `deny any` ends the walk: later allows cannot be reached.
    let p = domain_policy(
        Action::Allow,
        vec![
            Rule::deny_outbound(Destination::Any),
            Rule::allow_outbound(Destination::domain("api.example.test").unwrap()),
        ],
    );
    assert_eq!(judge_name(&p, "api.example.test"), deny(DecidedBy::Rule(0)));

    // Inbound rules say nothing about lookups.
    let p = domain_policy(Action::Deny, vec![Rule::allow_inbound(Destination::Any)]);
    assert_eq!(judge_name(&p, "api.example.test"), deny(DecidedBy::Default));

    // Presets.
    assert_eq!(
        judge_name(&NetworkPolicy::public_only(), "example.com"),
        allow(DecidedBy::Default)
    );
    assert_eq!(
        judge_name(&NetworkPolicy::allow_all(), "example.com"),
        allow(DecidedBy::Default)
    );
}

#[test]
fn decisions_name_what_decided_them() {
    let rule = Decision {
        action: Action::Deny,
        by: DecidedBy::Rule(3),
    };
    let default = Decision {
        action: Action::Allow,
        by: DecidedBy::Default,
    };
    let unreachable = Decision {
        action: Action::Deny,
        by: DecidedBy::Unreachable,
    };
    assert_eq!(rule.rule_label(), "3");
    assert_eq!(default.rule_label(), "default");
    assert_eq!(unreachable.rule_label(), "unreachable");
    assert_eq!(DecidedBy::Rule(3).to_string(), "rule 3");
    assert_eq!(DecidedBy::Default.to_string(), "default");
    assert_eq!(DecidedBy::Unreachable.to_string(), "unreachable");
    let policy = NetworkPolicy::public_only();
    let judged = judge(&policy, &tcp("10.1.0.10", 80));
    assert!(
        judged
            .reason(&policy)
            .starts_with(&format!("rule {}: ", judged.rule_label())),
        "{}",
        judged.reason(&policy)
    );
    assert_eq!(default.reason(&policy), "no rule matched; default allow");
}

#[test]
fn a_compiled_policy_keeps_the_policy_it_came_from() {
    let policy = domain_policy(
        Action::Deny,
        vec![Rule::allow_outbound(
            Destination::domain("api.example.test").unwrap(),
        )],
    );
    assert_eq!(policy.compile().unwrap().policy(), &policy);
}

#[test]
fn a_network_at_the_last_address_of_another_keeps_the_outer_rules() {
    // 10.0.0.255/32 starts where 10.0.0.0/24 ends: both apply to it.
    let rule = |action: Action, net: &str, port: u16| Rule {
        action,
        destination: Destination::Cidr(net.parse().unwrap()),
        direction: Direction::Outbound,
        ports: Some(PortRange::single(port)),
        protocol: Some(Protocol::Tcp),
    };
    let policy = domain_policy(
        Action::Allow,
        vec![
            rule(Action::Deny, "10.0.0.0/24", 22),
            rule(Action::Deny, "10.0.0.255/32", 80),
        ],
    );
    assert_eq!(
        judge(&policy, &tcp("10.0.0.255", 22)),
        deny(DecidedBy::Rule(0))
    );
    assert_eq!(
        judge(&policy, &tcp("10.0.0.255", 80)),
        deny(DecidedBy::Rule(1))
    );
    assert_eq!(
        judge(&policy, &tcp("10.0.0.254", 80)),
        allow(DecidedBy::Default)
    );
}

#[test]
fn an_early_ranged_rule_in_a_long_port_map_still_wins() {
    // Rule 0 is one port of a map too long to merge (a chain of maps); rule 1 matches every
    // port of an inner network. Port 5000 must still be decided by rule 0.
    let ranged = |action: Action, net: &str, port: u16| Rule {
        action,
        destination: Destination::Cidr(net.parse().unwrap()),
        direction: Direction::Outbound,
        ports: Some(PortRange::single(port)),
        protocol: None,
    };
    let mut rules = vec![
        ranged(Action::Deny, "10.0.0.0/8", 5000),
        Rule::allow_outbound(Destination::Cidr("10.1.0.0/16".parse().unwrap())),
    ];
    for i in 0..80 {
        rules.push(ranged(Action::Allow, "10.0.0.0/8", 100 + 2 * i));
        rules.push(ranged(Action::Deny, "10.1.0.0/16", 300 + 2 * i));
    }
    let policy = domain_policy(Action::Allow, rules);
    assert_eq!(
        judge(&policy, &tcp("10.1.0.1", 5000)),
        deny(DecidedBy::Rule(0))
    );
    assert_eq!(
        judge(&policy, &tcp("10.1.0.1", 5001)),
        allow(DecidedBy::Rule(1))
    );
}
