//! Addresses as the policy sees them: embedded IPv4 forms unwrapped, group ranges, and the
//! addresses that are never reachable.
//!
//! An IPv6 address that carries an IPv4 address is judged as that IPv4 address, because that
//! is where a connection to it ends up:
//! - IPv4-mapped `::ffff:a.b.c.d` (RFC 4291 §2.5.5.2) — dual-stack sockets dial IPv4;
//! - IPv4-compatible `::a.b.c.d` (RFC 4291 §2.5.5.1, deprecated), except `::` and `::1`;
//! - NAT64 well-known prefix `64:ff9b::/96` (RFC 6052 §2.1) — a NAT64 gateway dials IPv4;
//! - local-use NAT64 `64:ff9b:1::/48` (RFC 8215) in its /96 layout `64:ff9b:1::a.b.c.d`;
//! - 6to4 `2002:AABB:CCDD::/48` (RFC 3056 §2) — a 6to4 relay sends to AA.BB.CC.DD;
//! - Teredo `2001:0::/32` (RFC 4380 §4) — the client's IPv4 address is the last 32 bits,
//!   inverted; that is where the tunnel ends.
//!
//! Rule networks inside `::ffff:0:0/96`, `64:ff9b::/96`, `64:ff9b:1::/96`, 6to4 and Teredo
//! are read as the IPv4 networks they embed (the bits they fix), so rules and addresses meet
//! in one form: `2002::/16` is every IPv4 address, as a 6to4 address can carry any. Other
//! IPv6 networks, even `::/0`, match only native IPv6 addresses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::types::DestinationGroup;

const LOOPBACK: &[IpNet] = &[
    IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8)),
    IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::LOCALHOST, 128)),
];
/// RFC 1918, RFC 6598 (shared address space / CGNAT) and RFC 4193 (unique local).
const PRIVATE: &[IpNet] = &[
    IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(10, 0, 0, 0), 8)),
    IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(172, 16, 0, 0), 12)),
    IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(192, 168, 0, 0), 16)),
    IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(100, 64, 0, 0), 10)),
    IpNet::V6(Ipv6Net::new_assert(
        Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
        7,
    )),
];
/// RFC 3927 and RFC 4291 §2.5.6.
const LINK_LOCAL: &[IpNet] = &[
    IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(169, 254, 0, 0), 16)),
    IpNet::V6(Ipv6Net::new_assert(
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
        10,
    )),
];
/// The metadata service of AWS, GCP, Azure and others; AWS's IPv6 endpoint; Azure's
/// platform endpoint (WireServer, 168.63.129.16), which hands out VM configuration.
const METADATA: &[IpNet] = &[
    IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(169, 254, 169, 254), 32)),
    IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(168, 63, 129, 16), 32)),
    IpNet::V6(Ipv6Net::new_assert(
        Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254),
        128,
    )),
];
/// RFC 5771 and RFC 4291 §2.7.
const MULTICAST: &[IpNet] = &[
    IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(224, 0, 0, 0), 4)),
    IpNet::V6(Ipv6Net::new_assert(
        Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
        8,
    )),
];

impl DestinationGroup {
    /// The networks that make up the group.
    pub fn networks(self) -> &'static [IpNet] {
        match self {
            DestinationGroup::Loopback => LOOPBACK,
            DestinationGroup::Private => PRIVATE,
            DestinationGroup::LinkLocal => LINK_LOCAL,
            DestinationGroup::Metadata => METADATA,
            DestinationGroup::Multicast => MULTICAST,
        }
    }

    /// True when `addr` (in any form; it is made canonical first) is in the group.
    pub fn contains(self, addr: IpAddr) -> bool {
        let addr = canonical_addr(addr);
        self.networks().iter().any(|net| net.contains(&addr))
    }
}

/// The NAT64 well-known prefix's first 96 bits, RFC 6052 §2.1.
const NAT64_PREFIX: [u16; 6] = [0x64, 0xff9b, 0, 0, 0, 0];
/// The local-use NAT64 prefix in its /96 layout, RFC 8215.
const NAT64_LOCAL_PREFIX: [u16; 6] = [0x64, 0xff9b, 1, 0, 0, 0];
/// 6to4's first 16 bits, RFC 3056 §2.
const SIX_TO_FOUR: u16 = 0x2002;
/// Teredo's first 32 bits, RFC 4380 §2.6.
const TEREDO: [u16; 2] = [0x2001, 0];

/// The address a flow is judged as: an IPv6 address embedding an IPv4 address becomes that
/// IPv4 address; everything else is unchanged.
#[inline]
pub fn canonical_addr(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => IpAddr::V4(v4),
            None => addr,
        },
    }
}

#[inline]
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let seg = v6.segments();
    let low32 = u32::from(seg[6]) << 16 | u32::from(seg[7]);
    let low = Ipv4Addr::from(low32);
    if seg[..6] == NAT64_PREFIX || seg[..6] == NAT64_LOCAL_PREFIX {
        return Some(low);
    }
    if seg[0] == SIX_TO_FOUR {
        return Some(Ipv4Addr::from(u32::from(seg[1]) << 16 | u32::from(seg[2])));
    }
    if seg[..2] == TEREDO {
        return Some(Ipv4Addr::from(!low32));
    }
    // IPv4-compatible: 96 zero bits, then the IPv4 address; `::` and `::1` are IPv6's own.
    if seg[..6] == [0; 6] && !v6.is_unspecified() && !v6.is_loopback() {
        return Some(low);
    }
    None
}

/// The network a rule's CIDR is matched as: host bits cleared, and networks inside the
/// IPv4-embedding ranges read as the IPv4 networks whose bits they fix (see the module
/// comment): mapped, NAT64 and local NAT64 from /96 on, 6to4 from /16 on (bits 16–48), Teredo
/// from /32 on (the last 32 bits, inverted; every IPv4 address until /96).
pub fn canonical_net(net: IpNet) -> IpNet {
    let net = net.trunc();
    let IpNet::V6(v6) = net else {
        return net;
    };
    let len = v6.prefix_len();
    let seg = v6.network().segments();
    let low32 = u32::from(seg[6]) << 16 | u32::from(seg[7]);
    let v4 = |addr: u32, prefix: u8| {
        Ipv4Net::new(Ipv4Addr::from(addr), prefix)
            .map(|n| IpNet::V4(n.trunc()))
            .unwrap_or(net)
    };
    let mapped = seg[..6] == [0, 0, 0, 0, 0, 0xffff];
    if len >= 96 && (mapped || seg[..6] == NAT64_PREFIX || seg[..6] == NAT64_LOCAL_PREFIX) {
        return v4(low32, len - 96);
    }
    if len >= 16 && seg[0] == SIX_TO_FOUR {
        let addr = u32::from(seg[1]) << 16 | u32::from(seg[2]);
        return v4(addr, (len - 16).min(32));
    }
    if len >= 32 && seg[..2] == TEREDO {
        // Inverting every bit maps a prefix block onto another prefix block.
        return if len >= 96 {
            v4(!low32, len - 96)
        } else {
            v4(0, 0)
        };
    }
    net
}

/// True for addresses no flow may reach, whatever the rules say: `0.0.0.0/8` ("this
/// network", RFC 1122 §3.2.1.3 — connecting there reaches the host itself on Linux) and `::`.
/// `addr` must be canonical.
#[inline]
pub fn never_reachable(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => v4.octets()[0] == 0,
        IpAddr::V6(v6) => v6.is_unspecified(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn embedded_ipv4_is_unwrapped() {
        assert_eq!(canonical_addr(ip("::ffff:192.168.1.1")), ip("192.168.1.1"));
        assert_eq!(canonical_addr(ip("64:ff9b::10.0.0.1")), ip("10.0.0.1"));
        assert_eq!(canonical_addr(ip("::127.0.0.1")), ip("127.0.0.1"));
        assert_eq!(canonical_addr(ip("::")), ip("::"));
        assert_eq!(canonical_addr(ip("::1")), ip("::1"));
        assert_eq!(canonical_addr(ip("2001:db8::1")), ip("2001:db8::1"));
        assert_eq!(canonical_addr(ip("64:ff9b:1::10.0.0.1")), ip("10.0.0.1"));
        // Local-use NAT64 outside its /96 layout is IPv6's own.
        assert_eq!(
            canonical_addr(ip("64:ff9b:1:1::a00:1")),
            ip("64:ff9b:1:1::a00:1")
        );
        // 6to4: bits 16-48; Teredo: the last 32 bits inverted (RFC 4380 §4's example:
        // client 192.0.2.45 as 3fff:fdd2).
        assert_eq!(canonical_addr(ip("2002:a01:203::1")), ip("10.1.2.3"));
        assert_eq!(canonical_addr(ip("2002:7f00:1::")), ip("127.0.0.1"));
        assert_eq!(
            canonical_addr(ip("2001:0:4136:e378:8000:63bf:3fff:fdd2")),
            ip("192.0.2.45")
        );
        assert_eq!(canonical_addr(ip("2001:db8::1")), ip("2001:db8::1"));
    }

    #[test]
    fn groups_cover_their_ranges_in_every_form() {
        use DestinationGroup::*;
        let cases = [
            ("127.0.0.1", Loopback),
            ("127.255.255.254", Loopback),
            ("::1", Loopback),
            ("::ffff:127.0.0.1", Loopback),
            ("10.1.2.3", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.168.1.1", Private),
            ("100.64.0.1", Private),
            ("100.127.255.255", Private),
            ("fd00::1", Private),
            ("fc00::1", Private),
            ("::ffff:10.0.0.1", Private),
            ("64:ff9b::192.168.0.1", Private),
            ("::10.0.0.1", Private),
            ("169.254.1.1", LinkLocal),
            ("fe80::1", LinkLocal),
            ("169.254.169.254", Metadata),
            ("fd00:ec2::254", Metadata),
            ("::ffff:169.254.169.254", Metadata),
            ("168.63.129.16", Metadata),
            ("2002:a9fe:a9fe::1", Metadata),
            ("2002:7f00:1::", Loopback),
            ("2002:a00:1::", Private),
            ("2001:0:1:2:3:4:f5ff:fffe", Private),
            ("224.0.0.1", Multicast),
            ("239.255.255.255", Multicast),
            ("ff02::1", Multicast),
        ];
        for (addr, group) in cases {
            assert!(group.contains(ip(addr)), "{addr} should be in {group}");
        }
        for addr in [
            "172.32.0.1",
            "172.15.255.255",
            "100.128.0.1",
            "203.0.113.10",
            "2001:db8::1",
            "fe00::1",
            "8.8.8.8",
        ] {
            for group in DestinationGroup::ALL {
                assert!(!group.contains(ip(addr)), "{addr} should not be in {group}");
            }
        }
    }

    #[test]
    fn mapped_rule_networks_become_ipv4() {
        let n = |s: &str| s.parse::<IpNet>().unwrap();
        assert_eq!(canonical_net(n("::ffff:10.0.0.0/104")), n("10.0.0.0/8"));
        assert_eq!(canonical_net(n("64:ff9b::/96")), n("0.0.0.0/0"));
        assert_eq!(canonical_net(n("10.1.2.3/8")), n("10.0.0.0/8"));
        assert_eq!(canonical_net(n("::/0")), n("::/0"));
        assert_eq!(canonical_net(n("2001:db8::/32")), n("2001:db8::/32"));
        assert_eq!(canonical_net(n("64:ff9b:1::a00:0/104")), n("10.0.0.0/8"));
        assert_eq!(canonical_net(n("2002:a00::/24")), n("10.0.0.0/8"));
        assert_eq!(canonical_net(n("2002::/16")), n("0.0.0.0/0"));
        assert_eq!(canonical_net(n("2002:a01:203::/48")), n("10.1.2.3/32"));
        assert_eq!(canonical_net(n("2002:a01:203:4::/64")), n("10.1.2.3/32"));
        assert_eq!(canonical_net(n("2001::/32")), n("0.0.0.0/0"));
        assert_eq!(canonical_net(n("2001::f5ff:ffff/128")), n("10.0.0.0/32"));
        assert_eq!(canonical_net(n("2001::f5ff:0/112")), n("10.0.0.0/16"));
        // Addresses and networks agree: each embedded address is in its own network.
        for (a, net) in [
            ("2002:a01:203::1", "2002:a01:203::/48"),
            ("2001:0:1:2:3:4:f5fe:fdfc", "2001::f5fe:fdfc/128"),
            ("64:ff9b:1::a00:1", "64:ff9b:1::a00:0/120"),
        ] {
            assert!(
                canonical_net(n(net)).contains(&canonical_addr(ip(a))),
                "{a} in {net}"
            );
        }
    }

    #[test]
    fn unspecified_is_never_reachable() {
        for a in ["0.0.0.0", "0.1.2.3", "::"] {
            assert!(never_reachable(canonical_addr(ip(a))), "{a}");
        }
        assert!(never_reachable(canonical_addr(ip("::ffff:0.0.0.0"))));
        assert!(!never_reachable(ip("1.0.0.0")));
        assert!(!never_reachable(ip("::1")));
    }
}
