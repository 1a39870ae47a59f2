//! The compiled matcher gives exactly the answers of the plain first-match walk, for
//! connection decisions and DNS name decisions, on random policies and flows.
//!
//! Policies and flows are drawn from small pools of addresses, networks, names and ports so
//! that rules overlap, nest, shadow each other and hit range edges often.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use moat_policy::{
    Action, Destination, DestinationGroup, Direction, DomainName, Flow, NetworkPolicy, PortRange,
    Protocol, Rule, decide_first_match, decide_name_first_match,
};
use proptest::prelude::*;

const V4_OCTETS: [u8; 6] = [0, 1, 2, 127, 128, 255];
const PORTS: [u16; 8] = [0, 1, 52, 53, 80, 443, 8000, 65535];
/// Short labels, one label under two parents, and long labels of equal length that differ
/// only past the bytes the matcher keeps inline.
const NAMES: [&str; 12] = [
    "t",
    "a.t",
    "b.t",
    "a.a.t",
    "b.a.t",
    "c.b.a.t",
    "u",
    "a.u",
    "at",
    "longlabel-number-one.t",
    "longlabel-number-two.t",
    "a.longlabel-number-one.t",
];

fn v4() -> impl Strategy<Value = Ipv4Addr> {
    prop_oneof![
        4 => (0..6usize, 0..6usize, 0..6usize, 0..6usize).prop_map(|(a, b, c, d)| {
            Ipv4Addr::new(
                [10, 127, 169, 203, 0, 224][a],
                V4_OCTETS[b],
                V4_OCTETS[c],
                V4_OCTETS[d],
            )
        }),
        1 => prop::sample::select(vec![
            Ipv4Addr::new(169, 254, 169, 254),
            Ipv4Addr::new(172, 16, 0, 1),
            Ipv4Addr::new(192, 168, 1, 1),
            Ipv4Addr::new(100, 64, 0, 1),
            Ipv4Addr::new(8, 8, 8, 8),
        ]),
    ]
}

/// `a` in a NAT64 prefix's /96 layout: `64:ff9b:SEG3::a.b.c.d` (0: well-known, 1: local-use).
fn nat64(seg3: u16, a: Ipv4Addr) -> Ipv6Addr {
    let [a, b, c, d] = a.octets();
    Ipv6Addr::new(
        0x64,
        0xff9b,
        seg3,
        0,
        0,
        0,
        u16::from_be_bytes([a, b]),
        u16::from_be_bytes([c, d]),
    )
}

fn v6() -> impl Strategy<Value = Ipv6Addr> {
    prop_oneof![
        (0..4usize, 0..3u16, 0..3u16).prop_map(|(p, x, y)| {
            let top = [0x2001, 0xfd00, 0xfe80, 0xff02][p];
            Ipv6Addr::new(top, 0xdb8 * u16::from(p == 0), x, 0, 0, 0, y, 1)
        }),
        prop::sample::select(vec![
            Ipv6Addr::LOCALHOST,
            Ipv6Addr::UNSPECIFIED,
            "fd00:ec2::254".parse().unwrap()
        ]),
        v4().prop_map(|a| a.to_ipv6_mapped()),
        v4().prop_map(|a| nat64(0, a)),
        // Local-use NAT64 (/96 layout), 6to4 and Teredo carry an IPv4 address too.
        v4().prop_map(|a| nat64(1, a)),
        (v4(), 0..3u16).prop_map(|(a, site)| {
            let [a, b, c, d] = a.octets();
            Ipv6Addr::new(
                0x2002,
                u16::from_be_bytes([a, b]),
                u16::from_be_bytes([c, d]),
                site,
                0,
                0,
                0,
                1,
            )
        }),
        (v4(), 0..3u16).prop_map(|(a, server)| {
            let [a, b, c, d] = (!u32::from(a)).to_be_bytes();
            Ipv6Addr::new(
                0x2001,
                0,
                server,
                1,
                0x8000,
                0x1234,
                u16::from_be_bytes([a, b]),
                u16::from_be_bytes([c, d]),
            )
        }),
    ]
}

fn addr() -> impl Strategy<Value = IpAddr> {
    prop_oneof![3 => v4().prop_map(IpAddr::V4), 2 => v6().prop_map(IpAddr::V6)]
}

fn net() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        (v4(), 0..=32u8).prop_map(|(a, l)| IpNet::V4(ipnet::Ipv4Net::new(a, l).unwrap()).trunc()),
        (
            v6(),
            prop::sample::select(vec![0u8, 8, 16, 32, 64, 96, 104, 112, 120, 127, 128])
        )
            .prop_map(|(a, l)| IpNet::V6(ipnet::Ipv6Net::new(a, l).unwrap()).trunc()),
    ]
}

fn name() -> impl Strategy<Value = DomainName> {
    prop::sample::select(NAMES.to_vec()).prop_map(|n| DomainName::new(n).unwrap())
}

fn group() -> impl Strategy<Value = DestinationGroup> {
    prop::sample::select(DestinationGroup::ALL.to_vec())
}

fn ports() -> impl Strategy<Value = Option<PortRange>> {
    prop_oneof![
        2 => Just(None),
        1 => prop::sample::select(PORTS.to_vec()).prop_map(|p| Some(PortRange::single(p))),
        1 => (prop::sample::select(PORTS.to_vec()), prop::sample::select(PORTS.to_vec()))
            .prop_map(|(a, b)| Some(PortRange::range(a.min(b), a.max(b)))),
    ]
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop::sample::select(vec![
        Protocol::Tcp,
        Protocol::Udp,
        Protocol::Icmpv4,
        Protocol::Icmpv6,
    ])
}

fn rule() -> impl Strategy<Value = Rule> {
    let address_dest = prop_oneof![
        1 => Just(Destination::Any),
        4 => net().prop_map(Destination::Cidr),
        2 => group().prop_map(Destination::Group),
    ];
    let name_dest = prop_oneof![
        // Names as a user may spell them: any case, with or without a trailing dot.
        (name(), any::<bool>(), any::<bool>()).prop_map(|(n, upper, dot)| {
            let mut text = if upper {
                n.as_str().to_uppercase()
            } else {
                n.as_str().to_owned()
            };
            if dot {
                text.push('.');
            }
            Destination::Domain(text)
        }),
        // Suffixes in each spelling the specification accepts.
        (name(), 0..3u8).prop_map(|(n, form)| Destination::DomainSuffix(match form {
            0 => format!(".{}", n.as_str()),
            1 => format!("*.{}", n.as_str()),
            _ => n.as_str().to_owned(),
        })),
    ];
    let dest_and_direction = prop_oneof![
        3 => (address_dest, prop::bool::weighted(0.2)).prop_map(|(d, inbound)| {
            (d, if inbound { Direction::Inbound } else { Direction::Outbound })
        }),
        2 => name_dest.prop_map(|d| (d, Direction::Outbound)),
    ];
    (
        dest_and_direction,
        prop::bool::ANY,
        ports(),
        prop::option::weighted(0.3, protocol()),
    )
        .prop_map(|((destination, direction), allow, ports, protocol)| {
            // ICMP has no ports: such rules are refused by validation, so keep them out.
            let ports = if protocol.is_some_and(|p| !p.has_ports()) {
                None
            } else {
                ports
            };
            Rule {
                action: if allow { Action::Allow } else { Action::Deny },
                destination,
                direction,
                ports,
                protocol,
            }
        })
}

fn policy() -> impl Strategy<Value = NetworkPolicy> {
    (prop::bool::ANY, prop::collection::vec(rule(), 0..24)).prop_map(|(allow, rules)| {
        NetworkPolicy {
            default_action: if allow { Action::Allow } else { Action::Deny },
            rules,
        }
    })
}

#[derive(Debug, Clone)]
struct FlowCase {
    direction: Direction,
    protocol: Protocol,
    addr: IpAddr,
    port: Option<u16>,
    names: Vec<DomainName>,
    sni: Option<DomainName>,
    /// One of the host's own addresses (the engine's knowledge): in the Loopback group.
    local: bool,
}

fn flow() -> impl Strategy<Value = FlowCase> {
    (
        prop::bool::weighted(0.2),
        protocol(),
        addr(),
        prop::sample::select(PORTS.to_vec()),
        prop::bool::weighted(0.05),
        prop::collection::vec(name(), 0..3),
        prop::option::weighted(0.4, name()),
        prop::bool::weighted(0.2),
    )
        .prop_map(
            |(inbound, protocol, addr, port, drop_port, names, sni, local)| FlowCase {
                local,
                direction: if inbound {
                    Direction::Inbound
                } else {
                    Direction::Outbound
                },
                protocol,
                addr,
                // Port-less for ICMP; now and then port-less TCP/UDP, and ported ICMP, as edges.
                port: if protocol.has_ports() != drop_port {
                    Some(port)
                } else {
                    None
                },
                names,
                sni,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn compiled_equals_first_match_walk(
        policy in policy(),
        flows in prop::collection::vec(flow(), 1..16),
        names in prop::collection::vec(name(), 1..4),
    ) {
        let compiled = policy.compile().unwrap();
        for f in &flows {
            let flow = Flow {
                direction: f.direction,
                protocol: f.protocol,
                addr: f.addr,
                port: f.port,
                names: &f.names,
                sni: f.sni.as_ref(),
                local: f.local,
            };
            prop_assert_eq!(compiled.decide(&flow), decide_first_match(&policy, &flow), "flow {:?}", f);
        }
        for n in &names {
            prop_assert_eq!(compiled.decide_name(n), decide_name_first_match(&policy, n), "name {}", n);
        }
    }
}

/// Large policies go through the same code with deeper prefix forests and longer port maps.
#[test]
fn compiled_equals_walk_on_large_random_policies() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(20));
    let large = prop::collection::vec(rule(), 200..400);
    runner
        .run(
            &(large, prop::collection::vec(flow(), 200)),
            |(rules, flows)| {
                let policy = NetworkPolicy {
                    default_action: Action::Deny,
                    rules,
                };
                let compiled = policy.compile().unwrap();
                for f in &flows {
                    let flow = Flow {
                        direction: f.direction,
                        protocol: f.protocol,
                        addr: f.addr,
                        port: f.port,
                        names: &f.names,
                        sni: f.sni.as_ref(),
                        local: f.local,
                    };
                    prop_assert_eq!(compiled.decide(&flow), decide_first_match(&policy, &flow));
                }
                Ok(())
            },
        )
        .unwrap();
}

/// Port maps longer than the matcher merges (dozens of ranged rules on nested networks)
/// are kept as chains of maps; every port at and around each range's edges, on addresses
/// in each level of the nest, gets the walk's answer. The random policies above draw from
/// a few ports only, so their maps stay short.
#[test]
fn long_port_maps_on_nested_networks_equal_the_walk() {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |below: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % below
    };
    let nests: [(&[&str], &[&str]); 2] = [
        (
            &["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.128/25"],
            &["10.9.9.9", "10.1.9.9", "10.1.2.9", "10.1.2.200", "11.0.0.1"],
        ),
        (
            &["2001:db8::/32", "2001:db8:1::/48", "2001:db8:1:2::/64"],
            &[
                "2001:db8:9::1",
                "2001:db8:1:9::1",
                "2001:db8:1:2::1",
                "2001:db9::1",
            ],
        ),
    ];
    for round in 0..24 {
        let (nets, addrs) = nests[round % 2];
        let mut rules = Vec::new();
        let mut edges = vec![0u16, 65535];
        for (depth, net) in nets.iter().enumerate() {
            // Some levels get few ranges, some many: merged maps, chains, and both mixed.
            let count = [2, 40, 5, 60][(depth + round) % 4];
            for _ in 0..count {
                let start = next(65000) as u16;
                let end = start.saturating_add(next(400) as u16);
                edges.extend([start.saturating_sub(1), start, end, end.saturating_add(1)]);
                rules.push(Rule {
                    action: if next(2) == 0 {
                        Action::Allow
                    } else {
                        Action::Deny
                    },
                    destination: Destination::Cidr(net.parse().unwrap()),
                    direction: Direction::Outbound,
                    ports: Some(PortRange::range(start, end)),
                    protocol: [None, Some(Protocol::Tcp), Some(Protocol::Udp)][next(3) as usize],
                });
            }
            if next(4) == 0 {
                rules.push(Rule {
                    action: Action::Deny,
                    destination: Destination::Cidr(net.parse().unwrap()),
                    direction: Direction::Outbound,
                    ports: None,
                    protocol: Some(Protocol::Udp),
                });
            }
        }
        // Shuffle so that inner networks' rules come before and after the outer ones'.
        for i in (1..rules.len()).rev() {
            rules.swap(i, next(i as u64 + 1) as usize);
        }
        let policy = NetworkPolicy {
            default_action: if round % 3 == 0 {
                Action::Allow
            } else {
                Action::Deny
            },
            rules,
        };
        let compiled = policy.compile().unwrap();
        for addr in addrs {
            for protocol in [Protocol::Tcp, Protocol::Udp] {
                for &port in &edges {
                    let flow = Flow {
                        direction: Direction::Outbound,
                        protocol,
                        addr: addr.parse().unwrap(),
                        port: Some(port),
                        names: &[],
                        sni: None,
                        local: false,
                    };
                    assert_eq!(
                        compiled.decide(&flow),
                        decide_first_match(&policy, &flow),
                        "round {round}, {addr} {protocol:?} port {port}"
                    );
                }
            }
        }
    }
}
