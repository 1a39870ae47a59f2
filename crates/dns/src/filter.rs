//! What the interceptor decides about names and answers, without I/O.
//!
//! - **Block lists**: `block_domain` names (exact) and `block_domain_suffix` names (strictly
//!   below) get NXDOMAIN and are never sent upstream.
//! - **Rebind protection**: addresses in answers that point inward (loopback, private and
//!   shared ranges, link-local and metadata, unspecified, and their IPv4-mapped forms) are
//!   removed. An outbound allow rule on a CIDR or group without a port filter that contains
//!   the address exempts it — except loopback, metadata and unspecified addresses, which
//!   are never exempt.

use std::collections::HashSet;
use std::net::IpAddr;

use ipnet_lite::Net;
use moat_policy::{
    DestinationGroup, DomainName, DomainSuffix, NetworkPolicy, canonical_addr, canonical_net,
};

use super::message::{Message, RData, SVC_ECH, SVC_IPV4HINT, SVC_IPV6HINT, rtype};

/// Minimal network containment on canonical addresses, to avoid exposing ipnet here.
mod ipnet_lite {
    use std::net::IpAddr;

    /// A network as (first address, prefix length), both families in one shape.
    #[derive(Debug, Clone, Copy)]
    pub struct Net {
        pub v6: bool,
        pub bits: u128,
        pub len: u8,
    }

    impl Net {
        pub fn contains(&self, addr: IpAddr) -> bool {
            let (v6, bits, width) = match addr {
                IpAddr::V4(a) => (false, u128::from(u32::from(a)), 32u32),
                IpAddr::V6(a) => (true, u128::from(a), 128u32),
            };
            if v6 != self.v6 {
                return false;
            }
            let shift = width - u32::from(self.len);
            bits.checked_shr(shift).unwrap_or(0) == self.bits.checked_shr(shift).unwrap_or(0)
        }
    }
}

fn net_of(net: moat_policy::IpNetwork) -> Net {
    match canonical_net(net) {
        moat_policy::IpNetwork::V4(n) => Net {
            v6: false,
            bits: u128::from(u32::from(n.network())),
            len: n.prefix_len(),
        },
        moat_policy::IpNetwork::V6(n) => Net {
            v6: true,
            bits: u128::from(n.network()),
            len: n.prefix_len(),
        },
    }
}

/// Why a name is blocked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocked {
    /// It is on the `block_domain` list.
    List,
    /// It is below a `block_domain_suffix`.
    SuffixList,
}

impl Blocked {
    /// The audit log's `blocked_by`.
    pub fn label(&self) -> &'static str {
        match self {
            Blocked::List => "block_domain",
            Blocked::SuffixList => "block_domain_suffix",
        }
    }
}

/// The interceptor's fixed configuration.
#[derive(Debug, Clone)]
pub struct DnsRules {
    exact: HashSet<DomainName>,
    suffixes: HashSet<DomainName>,
    rebind_protection: bool,
    /// The host's own addresses: as inward as its loopback.
    host: HashSet<IpAddr>,
    exempt: Vec<Net>,
    /// Remove SVCB/HTTPS `ech` parameters (TLS interception is on).
    strip_ech: bool,
}

impl DnsRules {
    /// Rules for `policy` with these block lists.
    pub fn new(
        policy: &NetworkPolicy,
        block: &[DomainName],
        block_suffix: &[DomainSuffix],
        rebind_protection: bool,
    ) -> DnsRules {
        let exempt: Vec<Net> = policy
            .explicitly_allowed_networks()
            .into_iter()
            .map(net_of)
            .collect();
        DnsRules {
            exact: block.iter().cloned().collect(),
            suffixes: block_suffix.iter().map(|s| s.parent().clone()).collect(),
            rebind_protection,
            exempt,
            host: HashSet::new(),
            strip_ech: false,
        }
    }

    /// Removes the `ech` parameter from SVCB/HTTPS answers (TLS interception is on: a
    /// client with an ECH configuration would hide the server name moat must check and
    /// serve a certificate for).
    pub fn strip_ech(&mut self, strip: bool) {
        self.strip_ech = strip;
    }

    /// Whether a block list covers `name`.
    pub fn blocked(&self, name: &DomainName) -> Option<Blocked> {
        if self.exact.contains(name) {
            return Some(Blocked::List);
        }
        if self.suffixes.is_empty() {
            return None;
        }
        // Every strict parent of the name, longest first.
        let text = name.as_str();
        let mut rest = text;
        while let Some(dot) = rest.find('.') {
            rest = &rest[dot + 1..];
            if let Ok(parent) = DomainName::new(rest)
                && self.suffixes.contains(&parent)
            {
                return Some(Blocked::SuffixList);
            }
        }
        None
    }

    /// The host's own addresses, which answers must not point at either.
    pub fn set_host_addrs(&mut self, host: HashSet<IpAddr>) {
        self.host = host;
    }

    /// True when an answer's address must be removed (rebind protection).
    pub fn strip(&self, addr: IpAddr) -> bool {
        if !self.rebind_protection {
            return false;
        }
        let a = canonical_addr(addr);
        let never_exempt = moat_policy::never_reachable(a)
            || DestinationGroup::Loopback.contains(a)
            || DestinationGroup::Metadata.contains(a)
            || self.host.contains(&a);
        if never_exempt {
            return true;
        }
        let inward =
            DestinationGroup::Private.contains(a) || DestinationGroup::LinkLocal.contains(a);
        inward && !self.exempt.iter().any(|n| n.contains(a))
    }

    /// Removes stripped addresses from the answer and additional sections (A, AAAA and
    /// SVCB/HTTPS address hints). Returns (addresses before, addresses after) in the
    /// answer section.
    pub fn filter(&self, msg: &mut Message) -> (usize, usize) {
        let count = |m: &Message| {
            m.answers
                .iter()
                .filter(|r| matches!(r.data, RData::A(_) | RData::Aaaa(_)))
                .count()
        };
        let before = count(msg);
        for section in [&mut msg.answers, &mut msg.additional] {
            section.retain(|r| match r.data {
                RData::A(a) => !self.strip(IpAddr::V4(a)),
                RData::Aaaa(a) => !self.strip(IpAddr::V6(a)),
                _ => true,
            });
            for r in section.iter_mut() {
                if let RData::Svcb(_, _, params) = &mut r.data {
                    self.filter_hints(params);
                }
            }
        }
        (before, count(msg))
    }

    fn filter_hints(&self, params: &mut Vec<(u16, Vec<u8>)>) {
        if self.strip_ech {
            params.retain(|(k, _)| *k != SVC_ECH);
        }
        for (key, value) in params.iter_mut() {
            let width = match *key {
                SVC_IPV4HINT => 4,
                SVC_IPV6HINT => 16,
                _ => continue,
            };
            let kept: Vec<u8> = value
                .chunks(width)
                .filter(|c| c.len() == width && !self.strip(hint_addr(c)))
                .flatten()
                .copied()
                .collect();
            *value = kept;
        }
        // RFC 9460 §7.3: a hint key needs at least one address.
        params.retain(|(k, v)| !((*k == SVC_IPV4HINT || *k == SVC_IPV6HINT) && v.is_empty()));
    }
}

fn hint_addr(c: &[u8]) -> IpAddr {
    if c.len() == 4 {
        IpAddr::from([c[0], c[1], c[2], c[3]])
    } else {
        let mut a = [0u8; 16];
        a.copy_from_slice(c);
        IpAddr::from(a)
    }
}

/// Every address an answer gives, with its TTL: A, AAAA and SVCB/HTTPS hints.
pub fn addresses(msg: &Message) -> Vec<(IpAddr, u32)> {
    let mut out = Vec::new();
    for r in &msg.answers {
        match &r.data {
            RData::A(a) => out.push((IpAddr::V4(*a), r.ttl)),
            RData::Aaaa(a) => out.push((IpAddr::V6(*a), r.ttl)),
            RData::Svcb(_, _, params) => {
                for (key, value) in params {
                    let width = match *key {
                        SVC_IPV4HINT => 4,
                        SVC_IPV6HINT => 16,
                        _ => continue,
                    };
                    out.extend(
                        value
                            .chunks(width)
                            .filter(|c| c.len() == width)
                            .map(|c| (hint_addr(c), r.ttl)),
                    );
                }
            }
            _ => {}
        }
    }
    out
}

/// The names a CNAME/DNAME chain in the answer passes through (not the queried name).
pub fn chain(msg: &Message) -> Vec<DomainName> {
    msg.answers
        .iter()
        .filter(|r| r.rtype == rtype::CNAME || r.rtype == rtype::DNAME)
        .filter_map(|r| match &r.data {
            RData::Name(n) => n.to_text().and_then(|t| DomainName::new(&t).ok()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::message::{Question, Record, name};
    use super::*;
    use moat_policy::{Action, Destination, PortRange, Rule};

    fn n(s: &str) -> DomainName {
        DomainName::new(s).unwrap()
    }

    /// An answer record for a.example.test.
    fn answer(rtype: u16, data: RData) -> Record {
        Record {
            name: name("a.example.test"),
            rtype,
            class: 1,
            ttl: 30,
            data,
        }
    }

    #[test]
    fn ech_is_removed_only_while_interception_is_on() {
        let https = |params: Vec<(u16, Vec<u8>)>| Message {
            answers: vec![answer(rtype::HTTPS, RData::Svcb(1, name(""), params))],
            ..Message::default()
        };
        let params = vec![(1, b"\x02h2".to_vec()), (SVC_ECH, b"config".to_vec())];
        let kept_keys = |m: &Message| match &m.answers[0].data {
            RData::Svcb(_, _, p) => p.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        let mut r = rules(NetworkPolicy::public_only(), true);
        let mut m = https(params.clone());
        r.filter(&mut m);
        assert_eq!(kept_keys(&m), vec![1, SVC_ECH]);
        r.strip_ech(true);
        let mut m = https(params);
        r.filter(&mut m);
        assert_eq!(kept_keys(&m), vec![1], "alpn stays, ech goes");
        // It is still an answer that serializes and parses back.
        let back = Message::parse(&m.to_bytes()).unwrap();
        assert_eq!(kept_keys(&back), vec![1]);
    }

    fn rules(policy: NetworkPolicy, rebind: bool) -> DnsRules {
        DnsRules::new(
            &policy,
            &[n("ads.example.test")],
            &[DomainSuffix::new(".tracking.example.test").unwrap()],
            rebind,
        )
    }

    #[test]
    fn blocks_are_labelled_for_the_audit_log() {
        assert_eq!(Blocked::List.label(), "block_domain");
        assert_eq!(Blocked::SuffixList.label(), "block_domain_suffix");
    }

    #[test]
    fn block_lists() {
        let r = rules(NetworkPolicy::public_only(), true);
        assert_eq!(r.blocked(&n("ads.example.test")), Some(Blocked::List));
        assert_eq!(
            r.blocked(&n("x.ads.example.test")),
            None,
            "exact means exact"
        );
        assert_eq!(
            r.blocked(&n("a.tracking.example.test")),
            Some(Blocked::SuffixList)
        );
        assert_eq!(
            r.blocked(&n("b.c.tracking.example.test")),
            Some(Blocked::SuffixList)
        );
        assert_eq!(r.blocked(&n("tracking.example.test")), None);
        assert_eq!(r.blocked(&n("eviltracking.example.test")), None);
    }

    #[test]
    fn rebind_strips_inward_addresses_with_exemptions() {
        let r = rules(NetworkPolicy::public_only(), true);
        for a in [
            "10.1.0.10",
            "192.168.1.1",
            "100.64.0.1",
            "fd00::1",
            "127.0.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "::",
            "::ffff:10.0.0.1",
            "fe80::1",
        ] {
            assert!(r.strip(a.parse().unwrap()), "{a}");
        }
        for a in ["203.0.113.10", "2001:db8::10", "8.8.8.8"] {
            assert!(!r.strip(a.parse().unwrap()), "{a}");
        }
        let allow_net = NetworkPolicy {
            default_action: Action::Allow,
            rules: vec![
                Rule::allow_outbound(Destination::Cidr("10.1.0.0/24".parse().unwrap())),
                Rule::allow_outbound(Destination::Cidr("10.2.0.0/24".parse().unwrap()))
                    .with_ports(PortRange::single(80)),
                Rule::allow_outbound(Destination::Group(DestinationGroup::Loopback)),
                Rule::allow_outbound(Destination::Group(DestinationGroup::LinkLocal)),
            ],
        };
        let r = rules(allow_net, true);
        assert!(
            !r.strip("10.1.0.10".parse().unwrap()),
            "exempt by an explicit allow rule"
        );
        assert!(
            r.strip("10.2.0.10".parse().unwrap()),
            "a port-limited rule does not exempt"
        );
        assert!(
            r.strip("127.0.0.1".parse().unwrap()),
            "loopback is never exempt"
        );
        assert!(
            r.strip("169.254.169.254".parse().unwrap()),
            "metadata is never exempt"
        );
        assert!(!r.strip("169.254.1.1".parse().unwrap()));
        let off = rules(NetworkPolicy::public_only(), false);
        assert!(!off.strip("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn filtering_answers_and_hints() {
        let r = rules(NetworkPolicy::public_only(), true);
        let mut m = Message {
            questions: vec![Question {
                name: name("a.example.test"),
                qtype: 1,
                qclass: 1,
            }],
            answers: vec![
                answer(rtype::CNAME, RData::Name(name("b.example.net"))),
                answer(rtype::A, RData::A("10.1.0.10".parse().unwrap())),
                answer(rtype::A, RData::A("203.0.113.10".parse().unwrap())),
                answer(
                    rtype::HTTPS,
                    RData::Svcb(
                        1,
                        name(""),
                        vec![
                            (SVC_IPV4HINT, vec![10, 0, 0, 1, 203, 0, 113, 9]),
                            (SVC_IPV6HINT, vec![0xfd; 16]),
                        ],
                    ),
                ),
            ],
            ..Message::default()
        };
        assert_eq!(r.filter(&mut m), (2, 1));
        let addrs: Vec<IpAddr> = addresses(&m).into_iter().map(|(a, _)| a).collect();
        assert_eq!(
            addrs,
            [
                "203.0.113.10".parse::<IpAddr>().unwrap(),
                "203.0.113.9".parse().unwrap()
            ]
        );
        match &m.answers[2].data {
            RData::Svcb(_, _, params) => {
                assert_eq!(params.len(), 1, "the emptied ipv6hint is gone")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(chain(&m), vec![n("b.example.net")]);
    }

    #[test]
    fn ipv6_answers_and_hints_and_dname_chains() {
        let r = rules(NetworkPolicy::public_only(), true);
        let v6 = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap();
        let hints = [v6("fd00::1").octets(), v6("2001:db8::11").octets()].concat();
        let mut m = Message {
            answers: vec![
                answer(rtype::DNAME, RData::Name(name("c.example.net"))),
                answer(rtype::NS, RData::Name(name("ns.example.net"))),
                answer(rtype::AAAA, RData::Aaaa(v6("fd00::1"))),
                answer(rtype::AAAA, RData::Aaaa(v6("2001:db8::10"))),
                answer(
                    rtype::HTTPS,
                    // Key 2 (no-default-alpn) has an empty value of its own: it stays.
                    RData::Svcb(1, name(""), vec![(2, Vec::new()), (SVC_IPV6HINT, hints)]),
                ),
            ],
            ..Message::default()
        };
        assert_eq!(r.filter(&mut m), (2, 1));
        let addrs: Vec<IpAddr> = addresses(&m).into_iter().map(|(a, _)| a).collect();
        assert_eq!(
            addrs,
            [
                IpAddr::V6(v6("2001:db8::10")),
                IpAddr::V6(v6("2001:db8::11"))
            ]
        );
        assert_eq!(m.answers.len(), 4, "the inward AAAA is gone");
        match &m.answers[3].data {
            RData::Svcb(_, _, params) => assert_eq!(params.len(), 2, "{params:?}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(chain(&m), vec![n("c.example.net")], "NS is not a chain");
    }

    #[test]
    fn rebind_strips_the_hosts_own_addresses() {
        let mut r = rules(NetworkPolicy::allow_all(), true);
        let host: IpAddr = "198.51.100.200".parse().unwrap();
        assert!(!r.strip(host), "control: a public address passes");
        r.set_host_addrs([host].into_iter().collect());
        assert!(r.strip(host));
        assert!(r.strip("::ffff:198.51.100.200".parse().unwrap()));
        assert!(!r.strip("198.51.100.201".parse().unwrap()));
    }
}
