//! The compiled matcher: a policy turned into indexes so a decision costs a few lookups
//! whatever the number of rules, with exactly the answers of the first-match walk
//! ([`crate::decide_first_match`]).
//!
//! # Theory of operation
//! First match wins, so a decision is "the smallest index among the rules that match". The
//! matcher finds candidate rules by their destination and takes the minimum:
//! - **Addresses.** Every CIDR (groups are expanded into theirs; `Any` is `/0` in both
//!   families) becomes a node in a per-family prefix forest. CIDRs are laminar — two are
//!   either nested or disjoint — so the address line splits into intervals, each with one
//!   deepest enclosing prefix; a binary search finds it, and the containing prefixes are that
//!   node and its ancestors. For each interval and (direction, protocol) the index keeps the
//!   smallest index among the enclosing rules without a port filter, and a chain of the
//!   enclosing CIDRs whose rules do have port filters, each with a step function
//!   port → smallest matching index. A lookup is one binary search plus a walk of that short
//!   chain, which stops as soon as nothing further up can beat the best index found.
//! - **Names.** Domain and suffix rules live in a label trie read from the top label down
//!   (`com` → `example` → `api`). Walking a name visits the suffix keys of its strict
//!   ancestors and, at the end, its exact key. Allow and deny rules are kept apart because
//!   they weigh evidence differently (see [`crate::decide`]).
//!
//! # Keeping it in cache
//! At 100,000 rules the tables outgrow the CPU's near caches, and a decision costs what its
//! memory reads cost. So: identical step maps and slots are stored once (which also lets
//! neighbouring intervals merge); slots are 4 bytes, with the few that have port steps in a
//! side table that keeps a one-range map inline; IPv4 interval starts are found through a
//! 4,096-entry table of their top 12 bits, IPv6 ones through a sample that stays in cache;
//! the name trie is one open-addressing table of edges holding the label and the node's
//! keys, each key one cache line, with the keys' smallest indices apart so a key that
//! cannot win is never read; rule actions are a bitset.
//!
//! - **The host's own addresses** belong to the `Loopback` group but are known only to the
//!   engine, which marks such a flow `local`: the matcher then also takes the first
//!   `Loopback` group rule whose filters admit the flow, if it comes earlier.
//!
//! Index building is O(n log n) in the number of rules; a decision is one binary search over
//! the intervals plus one step per enclosing prefix and per label of each name involved.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::BuildHasher;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::addr::{canonical_addr, canonical_net, never_reachable};
use crate::decide::{DecidedBy, Decision, Flow};
use crate::domain::DomainName;
use crate::error::PolicyError;
use crate::types::{
    Action, Destination, DestinationGroup, Direction, NameDestination, NetworkPolicy, PortRange,
    Protocol, Rule,
};

/// "No rule": larger than every rule index, so `min` ignores it.
const NONE: u32 = u32::MAX;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A policy compiled for fast decisions. Build it with [`NetworkPolicy::compile`].
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    policy: NetworkPolicy,
    /// Bit `i` set when rule `i` allows: 100,000 rules in 12.5 KiB, which stays in cache.
    allows: Vec<u64>,
    steps: StepArena,
    v4: AddrIndex<u32>,
    v6: AddrIndex<u128>,
    names: NameTrie,
    /// First outbound `deny any` without filters: nothing after it can allow a name.
    first_deny_any: u32,
    /// First outbound allow rule on an address (any, CIDR, group).
    first_address_allow: u32,
    /// The `Loopback` group's rules, in order: they also match the host's own addresses,
    /// which only the engine knows (a flow's `local`).
    loopback_rules: Vec<u32>,
}

impl NetworkPolicy {
    /// Validates the policy and compiles it into indexes.
    pub fn compile(&self) -> Result<CompiledPolicy, PolicyError> {
        self.validate()?;
        // Rule indices stay below 2^31: packed slots use the top bit.
        if self.rules.len() >= (WIDE - 1) as usize {
            return Err(PolicyError::Rule {
                why: format!("{} rules are more than moat can index", self.rules.len()),
            });
        }
        let mut v4: FastMap<(u32, u8), SlotsBuilder> = FastMap::default();
        let mut v6: FastMap<(u128, u8), SlotsBuilder> = FastMap::default();
        let mut names = NameTrieBuilder::default();
        let mut first_deny_any = NONE;
        let mut first_address_allow = NONE;
        for (i, rule) in self.rules.iter().enumerate() {
            let idx = i as u32;
            let mut add_net = |net: IpNet| match canonical_net(net) {
                IpNet::V4(n) => v4
                    .entry((u32::from(n.network()), n.prefix_len()))
                    .or_default()
                    .add(idx, rule),
                IpNet::V6(n) => v6
                    .entry((u128::from(n.network()), n.prefix_len()))
                    .or_default()
                    .add(idx, rule),
            };
            match &rule.destination {
                Destination::Any => {
                    add_net(IpNet::V4(Default::default()));
                    add_net(IpNet::V6(Default::default()));
                }
                Destination::Cidr(net) => add_net(*net),
                Destination::Group(group) => group.networks().iter().copied().for_each(add_net),
                Destination::Domain(_) | Destination::DomainSuffix(_) => {
                    // Validated above: every name parses.
                    match rule.destination.name() {
                        Some(Ok(NameDestination::Exact(name))) => {
                            names.key(&name, false).add(idx, rule)
                        }
                        Some(Ok(NameDestination::Below(suffix))) => {
                            names.key(suffix.parent(), true).add(idx, rule)
                        }
                        Some(Err(e)) => return Err(e),
                        None => {}
                    }
                }
            }
            if rule.direction == Direction::Outbound && !rule.destination.is_name() {
                if rule.action == Action::Allow {
                    first_address_allow = first_address_allow.min(idx);
                } else if rule.destination == Destination::Any && rule.is_unfiltered() {
                    first_deny_any = first_deny_any.min(idx);
                }
            }
        }
        let mut steps = StepArena::default();
        let v4 = AddrIndex::build(
            v4.into_iter()
                .map(|((net, len), b)| {
                    (
                        net,
                        net | (u32::MAX.checked_shr(len.into()).unwrap_or(0)),
                        b,
                    )
                })
                .collect(),
            &mut steps,
        );
        let v6 = AddrIndex::build(
            v6.into_iter()
                .map(|((net, len), b)| {
                    (
                        net,
                        net | (u128::MAX.checked_shr(len.into()).unwrap_or(0)),
                        b,
                    )
                })
                .collect(),
            &mut steps,
        );
        let names = names.finish(&mut steps);
        steps.seen = FastMap::default();
        if !steps.fits() {
            return Err(PolicyError::Rule {
                why: "the policy's port filters are more than moat can index".into(),
            });
        }
        Ok(CompiledPolicy {
            policy: self.clone(),
            allows: self
                .rules
                .chunks(64)
                .map(|chunk| {
                    chunk.iter().enumerate().fold(0u64, |bits, (i, r)| {
                        bits | u64::from(r.action == Action::Allow) << i
                    })
                })
                .collect(),
            v4,
            v6,
            names,
            steps,
            first_deny_any,
            first_address_allow,
            loopback_rules: self
                .rules
                .iter()
                .enumerate()
                .filter(|(_, r)| r.destination == Destination::Group(DestinationGroup::Loopback))
                .map(|(i, _)| i as u32)
                .collect(),
        })
    }
}

impl CompiledPolicy {
    /// The policy this was compiled from.
    pub fn policy(&self) -> &NetworkPolicy {
        &self.policy
    }

    /// Judges a flow: same answer as [`crate::decide_first_match`], found through indexes.
    pub fn decide(&self, flow: &Flow<'_>) -> Decision {
        let addr = canonical_addr(flow.addr);
        if never_reachable(addr) {
            return Decision {
                action: Action::Deny,
                by: DecidedBy::Unreachable,
            };
        }
        let slot = slot(flow.direction, flow.protocol);
        let mut best = match addr {
            IpAddr::V4(a) => self.v4.lookup(u32::from(a), slot, flow.port, &self.steps),
            IpAddr::V6(a) => self.v6.lookup(u128::from(a), slot, flow.port, &self.steps),
        };
        if !flow.names.is_empty() || flow.sni.is_some() {
            best = self.names_best(flow, slot, best);
        }
        if flow.local {
            best = best.min(self.first_loopback_rule(flow, best));
        }
        self.decision(best, self.policy.default_action)
    }

    /// The first `Loopback` group rule before `limit` whose filters admit `flow` (the group
    /// holds a local address whatever it is); `NONE` when there is none.
    fn first_loopback_rule(&self, flow: &Flow<'_>, limit: u32) -> u32 {
        for &i in &self.loopback_rules {
            if i >= limit {
                break;
            }
            let r = &self.policy.rules[i as usize];
            let protocol_ok = r.protocol.is_none_or(|p| p == flow.protocol);
            let port_ok = r
                .ports
                .is_none_or(|ports| flow.port.is_some_and(|p| ports.contains(p)));
            if r.direction == flow.direction && protocol_ok && port_ok {
                return i;
            }
        }
        NONE
    }

    /// Judges a DNS lookup of `name`: same answer as [`crate::decide_name_first_match`].
    /// `Allow` means forward it upstream; `Deny` means answer NXDOMAIN without asking anyone.
    pub fn decide_name(&self, name: &DomainName) -> Decision {
        let mut first_naming = NONE;
        self.names.walk(name.as_str(), |key, _| {
            first_naming = first_naming.min(self.names.naming[key])
        });
        if first_naming < self.first_deny_any {
            return self.decision(first_naming, self.policy.default_action);
        }
        if self.first_address_allow < self.first_deny_any {
            return self.decision(self.first_address_allow, self.policy.default_action);
        }
        if self.first_deny_any != NONE {
            return self.decision(self.first_deny_any, self.policy.default_action);
        }
        self.decision(NONE, self.policy.default_action)
    }

    /// A short reason for `decision`, citing the rule.
    pub fn reason(&self, decision: &Decision) -> String {
        decision.reason(&self.policy)
    }

    fn decision(&self, best: u32, default: Action) -> Decision {
        match self.allows.get(best as usize / 64) {
            Some(&bits) if (best as usize) < self.policy.rules.len() => Decision {
                action: if bits >> (best % 64) & 1 == 1 {
                    Action::Allow
                } else {
                    Action::Deny
                },
                by: DecidedBy::Rule(best as usize),
            },
            _ => Decision {
                action: default,
                by: DecidedBy::Default,
            },
        }
    }

    /// Lowers `best` with the domain rules that match the flow's names and SNI.
    ///
    /// Deny rules take any evidence: a pinned name or the SNI. Allow rules need a pinned
    /// name, and the SNI too when there is one.
    fn names_best(&self, flow: &Flow<'_>, slot: usize, mut best: u32) -> u32 {
        let arena = &self.steps;
        let wide = &self.names.wide;
        let lower =
            |slots: &[u32; 8], best: u32| best.min(unpack(slots[slot], wide).get(flow.port, arena));
        for name in flow.names {
            // A pinned name that is also the SNI is judged by the SNI's walk below, which
            // applies every rule this walk would (and its allow rules, being pinned).
            if flow.sni == Some(name) {
                continue;
            }
            self.names.walk(name.as_str(), |key, _| {
                if self.names.mins[key] < best {
                    let key = &self.names.keys[key];
                    best = lower(&key.deny, best);
                    if flow.sni.is_none() {
                        best = lower(&key.allow, best);
                    }
                }
            });
        }
        if let Some(sni) = flow.sni {
            self.names.walk(sni.as_str(), |key, suffix_parent| {
                if self.names.mins[key] >= best {
                    return;
                }
                let key = &self.names.keys[key];
                best = lower(&key.deny, best);
                let pinned = match suffix_parent {
                    None => flow.names.contains(sni),
                    Some(parent) => flow
                        .names
                        .iter()
                        .any(|n| strictly_below(n.as_str(), parent)),
                };
                if pinned {
                    best = lower(&key.allow, best);
                }
            });
        }
        best
    }
}

fn strictly_below(name: &str, parent: &str) -> bool {
    name.len() > parent.len() + 1
        && name.ends_with(parent)
        && name.as_bytes()[name.len() - parent.len() - 1] == b'.'
}

/// Index of a (direction, protocol) pair in a node's slots.
fn slot(direction: Direction, protocol: Protocol) -> usize {
    let d = match direction {
        Direction::Outbound => 0,
        Direction::Inbound => 4,
    };
    d + match protocol {
        Protocol::Tcp => 0,
        Protocol::Udp => 1,
        Protocol::Icmpv4 => 2,
        Protocol::Icmpv6 => 3,
    }
}

const PROTOCOLS: [Protocol; 4] = [
    Protocol::Tcp,
    Protocol::Udp,
    Protocol::Icmpv4,
    Protocol::Icmpv6,
];

/// The smallest matching rule index for each port, as a step function (build form).
#[derive(Debug, Clone)]
struct PortMap {
    /// Smallest index among rules without a port filter: the answer for port-less flows.
    portless: u32,
    /// `(first port, index)` steps starting at port 0, already folded with `portless`;
    /// empty when every port's answer is `portless`.
    steps: Vec<(u16, u32)>,
}

impl PortMap {
    fn build(entries: &[(u32, Option<PortRange>)]) -> PortMap {
        let portless = entries
            .iter()
            .filter(|(_, ports)| ports.is_none())
            .map(|&(i, _)| i)
            .min()
            .unwrap_or(NONE);
        // Ranged rules after the first port-less one can never win.
        let mut ranged: Vec<(u16, u16, u32)> = entries
            .iter()
            .filter_map(|&(i, ports)| ports.map(|r| (r.start(), r.end(), i)))
            .filter(|&(_, _, i)| i < portless)
            .collect();
        if ranged.is_empty() {
            return PortMap {
                portless,
                steps: Vec::new(),
            };
        }
        ranged.sort_unstable();
        let mut points: Vec<u16> = std::iter::once(0)
            .chain(ranged.iter().map(|r| r.0))
            .chain(ranged.iter().filter_map(|r| r.1.checked_add(1)))
            .collect();
        points.sort_unstable();
        points.dedup();
        // Sweep the points with a min-heap of open ranges (lazy removal of ended ones).
        let mut open: BinaryHeap<Reverse<(u32, u16)>> = BinaryHeap::new();
        let mut next = 0;
        let mut steps: Vec<(u16, u32)> = Vec::new();
        for p in points {
            while next < ranged.len() && ranged[next].0 <= p {
                open.push(Reverse((ranged[next].2, ranged[next].1)));
                next += 1;
            }
            while open.peek().is_some_and(|Reverse((_, end))| *end < p) {
                open.pop();
            }
            let value = open.peek().map_or(NONE, |Reverse((i, _))| *i).min(portless);
            if steps.last().is_none_or(|&(_, v)| v != value) {
                steps.push((p, value));
            }
        }
        if steps.len() == 1 && steps[0].1 == portless {
            // Every port gets the port-less answer.
            steps.clear();
        }
        PortMap { portless, steps }
    }
}

/// Port step functions, stored flat: a map is a slice of `(first port, index)` steps after
/// a header step `(0, length)`; its id is the header's position, so a lookup reads the
/// length beside the steps instead of in a table of its own.
#[derive(Debug, Clone, Default)]
struct StepArena {
    steps: Vec<(u16, u32)>,
    /// The id of each map, while compiling.
    seen: FastMap<Box<[(u16, u32)]>, u32>,
}

impl StepArena {
    fn push(&mut self, steps: &[(u16, u32)]) -> u32 {
        // Enclosing CIDRs repeat their maps down the chain: one copy of each keeps the
        // arena small.
        if let Some(&id) = self.seen.get(steps) {
            return id;
        }
        let id = self.steps.len() as u32;
        self.steps.push((0, steps.len() as u32));
        self.steps.extend_from_slice(steps);
        self.seen.insert(steps.into(), id);
        id
    }

    /// Whether ids still fit below the flag bits ([`WIDE`], [`MERGED`]).
    fn fits(&self) -> bool {
        self.steps.len() < (MERGED as usize)
    }

    /// The steps of map `map`.
    fn steps_of(&self, map: u32) -> &[(u16, u32)] {
        let at = map as usize + 1;
        match self.steps.get(map as usize) {
            Some(&(_, len)) => self.steps.get(at..at + len as usize).unwrap_or(&[]),
            None => &[],
        }
    }

    /// The answer of map `map` for `port`.
    fn get(&self, map: u32, port: u16) -> u32 {
        let steps = self.steps_of(map);
        // steps[0].0 == 0, so the partition point is at least 1.
        let i = steps.partition_point(|&(start, _)| start <= port);
        steps.get(i.wrapping_sub(1)).map_or(NONE, |s| s.1)
    }

    /// The smallest index any port of map `map` can get.
    fn min(&self, map: u32) -> u32 {
        self.steps_of(map).iter().map(|s| s.1).min().unwrap_or(NONE)
    }
}

/// One (direction, protocol) of a key: the port-less answer, and a step map if ports matter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Slot {
    portless: u32,
    /// Index into the [`StepArena`], or [`NONE`].
    steps: u32,
}

const EMPTY_SLOT: Slot = Slot {
    portless: NONE,
    steps: NONE,
};

impl Slot {
    fn get(self, port: Option<u16>, arena: &StepArena) -> u32 {
        match port {
            Some(p) if self.steps != NONE => arena.get(self.steps, p),
            _ => self.portless,
        }
    }
}

/// Collects the rules of one key (a prefix or a name) before their [`PortMap`]s are built.
#[derive(Debug)]
struct SlotsBuilder {
    entries: [Vec<(u32, Option<PortRange>)>; 8],
    min_rule: u32,
}

impl Default for SlotsBuilder {
    fn default() -> SlotsBuilder {
        SlotsBuilder {
            entries: Default::default(),
            min_rule: NONE,
        }
    }
}

impl SlotsBuilder {
    fn add(&mut self, idx: u32, rule: &Rule) {
        self.min_rule = self.min_rule.min(idx);
        for protocol in PROTOCOLS {
            if rule.protocol.is_none_or(|p| p == protocol) {
                self.entries[slot(rule.direction, protocol)].push((idx, rule.ports));
            }
        }
    }

    fn port_maps(&self) -> [Option<PortMap>; 8] {
        std::array::from_fn(|i| {
            (!self.entries[i].is_empty()).then(|| PortMap::build(&self.entries[i]))
        })
    }

    fn finish(self, arena: &mut StepArena) -> [Slot; 8] {
        self.port_maps().map(|map| match map {
            None => EMPTY_SLOT,
            Some(map) => Slot {
                portless: map.portless,
                steps: if map.steps.is_empty() {
                    NONE
                } else {
                    arena.push(&map.steps)
                },
            },
        })
    }
}

/// Marks a [`Slot::steps`] that is one merged step map (in the [`StepArena`]) rather than
/// a chain of [`StepLink`]s.
const MERGED: u32 = 1 << 31;
/// Merged step maps longer than this stay chains (bounds memory on deep port-scoped nests).
const MERGE_CAP: usize = 64;

/// The pointwise minimum of two step functions (each starting at port 0).
fn merge_steps(a: &[(u16, u32)], b: &[(u16, u32)]) -> Vec<(u16, u32)> {
    let (mut i, mut j) = (0, 0);
    let (mut va, mut vb) = (NONE, NONE);
    let mut out: Vec<(u16, u32)> = Vec::with_capacity(a.len() + b.len());
    while i < a.len() || j < b.len() {
        let next = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) => x.0.min(y.0),
            (Some(x), None) => x.0,
            (None, Some(y)) => y.0,
            (None, None) => break,
        };
        while i < a.len() && a[i].0 == next {
            va = a[i].1;
            i += 1;
        }
        while j < b.len() && b[j].0 == next {
            vb = b[j].1;
            j += 1;
        }
        let v = va.min(vb);
        if out.last().is_none_or(|&(_, last)| last != v) {
            out.push((next, v));
        }
    }
    out
}

/// Marks a packed slot that is an index into the `wide` table.
const WIDE: u32 = 1 << 31;

/// A slot with port steps, as the `wide` tables keep it. A step map that only raises one
/// port range above the port-less answer (most maps: one port-scoped rule, or a chain
/// that merges to one) is kept here as that range, so a lookup reads no map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Wide {
    slot: Slot,
    /// Ports `lo..=hi` get `ranged`; others `slot.portless`. [`NONE`] when not kept so.
    ranged: u32,
    lo: u16,
    hi: u16,
}

impl Wide {
    /// `slot` with no range kept inline.
    fn plain(slot: Slot) -> Wide {
        Wide {
            slot,
            ranged: NONE,
            lo: 0,
            hi: 0,
        }
    }

    /// `steps`: the slot's whole step map, when the slot has one that says everything
    /// (a merged map, or a name key's map).
    fn new(slot: Slot, steps: Option<&[(u16, u32)]>) -> Wide {
        let p = slot.portless;
        let range = |lo: u16, hi: u16, ranged: u32| Wide {
            slot,
            ranged,
            lo,
            hi,
        };
        match steps {
            Some(&[(0, v)]) if v < p => range(0, u16::MAX, v),
            Some(&[(0, v), (a, w)]) if v == p && w < p => range(a, u16::MAX, w),
            Some(&[(0, v), (c, w)]) if w == p && v < p => range(0, c - 1, v),
            Some(&[(0, v), (a, w), (c, x)]) if v == p && x == p && w < p => range(a, c - 1, w),
            _ => Wide::plain(slot),
        }
    }

    /// The answer for `port`, when kept as a range.
    fn ranged(&self, port: u16) -> Option<u32> {
        (self.ranged != NONE).then(|| {
            if (self.lo..=self.hi).contains(&port) {
                self.ranged
            } else {
                self.slot.portless
            }
        })
    }

    /// The answer of a name key's slot.
    fn get(&self, port: Option<u16>, arena: &StepArena) -> u32 {
        match port {
            Some(p) => self.ranged(p).unwrap_or_else(|| self.slot.get(port, arena)),
            None => self.slot.portless,
        }
    }
}

/// Packs a slot into 4 bytes: its port-less answer when it has no port steps (rule indices
/// stay below 2^31, [`NONE`] is itself), else `WIDE | index` into `wide`.
fn pack(wide: Wide, table: &mut Vec<Wide>, seen: &mut FastMap<Wide, u32>) -> u32 {
    if wide.slot.steps == NONE {
        return wide.slot.portless;
    }
    // Intervals often share a slot: one entry each keeps `wide` small.
    WIDE | *seen.entry(wide).or_insert_with(|| {
        table.push(wide);
        (table.len() - 1) as u32
    })
}

fn unpack(packed: u32, table: &[Wide]) -> Wide {
    if packed == NONE || packed & WIDE == 0 {
        return Wide::plain(Slot {
            portless: packed,
            steps: NONE,
        });
    }
    table
        .get((packed & !WIDE) as usize)
        .copied()
        .unwrap_or(Wide::plain(EMPTY_SLOT))
}

// The two indexes, each in a file of its own.
mod addr_index;
mod names;

use addr_index::*;
use names::*;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.
    use super::*;

    /// The name trie's probe sequences stay short with many names: its seeded hash spreads
    /// the edges, and the table is at most two thirds full. 8,188 names under one suffix
    /// make 8,190 edges, just under a power of two, where a table sized without its third
    /// of room would be full.
    #[test]
    fn name_probes_stay_short() {
        let rules = (0..8188)
            .map(|i| {
                Rule::allow_outbound(Destination::domain(&format!("n{i}.example.test")).unwrap())
            })
            .collect();
        let policy = NetworkPolicy {
            default_action: Action::Deny,
            rules,
        };
        let compiled = policy.compile().unwrap();
        let trie = &compiled.names;
        let mask = trie.edges.len() - 1;
        assert!(trie.edges.len() >= 8190 * 3 / 2, "{}", trie.edges.len());
        let mut longest = 0;
        for (i, e) in trie.edges.iter().enumerate() {
            if e.len == 0 {
                continue;
            }
            let len = usize::from(e.len);
            let mut label = e.head[..len.min(INLINE)].to_vec();
            if len > INLINE {
                let tail = e.tail as usize;
                label.extend_from_slice(&trie.tails[tail..tail + len - INLINE]);
            }
            let home = trie.hash(e.parent, &label) as usize & mask;
            longest = longest.max(i.wrapping_sub(home) & mask);
        }
        assert!(longest < 64, "a probe sequence {longest} long");
        let name = DomainName::new("n8187.example.test").unwrap();
        assert_eq!(compiled.decide_name(&name).by, DecidedBy::Rule(8187));
    }

    /// The bucketed and the sampled searches answer as a linear scan does, at bucket
    /// edges, at the ends of the address space and between keys.
    #[test]
    fn sorted_search_matches_a_scan() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for n in [1usize, 2, 17, 300, 5000] {
            let mut keys: Vec<u32> = (0..n).map(|_| next() as u32).collect();
            // Keys on bucket starts and next to them, and the last address.
            keys.extend([1 << 20, (1 << 20) - 1, 5 << 20, u32::MAX]);
            keys.push(0);
            keys.sort_unstable();
            keys.dedup();
            let sorted = Sorted::new(keys.clone());
            let scan = |x: u32| keys.iter().rposition(|&k| k <= x).unwrap_or(0);
            let mut probes: Vec<u32> = (0..2000).map(|_| next() as u32).collect();
            for &k in &keys {
                probes.extend([k, k.wrapping_sub(1), k.wrapping_add(1)]);
            }
            probes.extend([0, u32::MAX, 1 << 20, (1 << 20) - 1, 4 << 20]);
            for x in probes {
                assert_eq!(sorted.last_at_or_below(x), scan(x), "n={n} x={x:#x}");
                assert_eq!(sorted.sampled_search(x), scan(x), "n={n} x={x:#x}");
            }
        }
        let v6 = Sorted::new(vec![0u128, 5, 1 << 100, u128::MAX]);
        assert_eq!(v6.last_at_or_below(4), 0);
        assert_eq!(v6.last_at_or_below(u128::MAX - 1), 2);
        assert_eq!(v6.last_at_or_below(u128::MAX), 3);
    }

    /// The edge table's label check alone, as a hash-tag collision would need it: labels
    /// that differ only past the inline bytes, only in them, or in length are told apart.
    #[test]
    fn labels_are_compared_whole() {
        let mut b = NameTrieBuilder::default();
        let rule = Rule::deny_outbound(Destination::Any);
        for n in ["longlabel-number-one.t", "ab.t"] {
            b.key(&DomainName::new(n).unwrap(), false).add(0, &rule);
        }
        let trie = b.finish(&mut StepArena::default());
        let t = trie.find(ROOT, b"t").unwrap() as u32;
        let long = &trie.edges[trie.find(t, b"longlabel-number-one").unwrap()];
        assert!(trie.label_is(long, b"longlabel-number-one"));
        assert!(!trie.label_is(long, b"longlabel-number-two"));
        assert!(!trie.label_is(long, b"longlabel-number-on"));
        assert!(!trie.label_is(long, b"Longlabel-number-one"));
        let short = &trie.edges[trie.find(t, b"ab").unwrap()];
        assert!(trie.label_is(short, b"ab"));
        assert!(!trie.label_is(short, b"ac"));
        assert!(!trie.label_is(short, b"abc"));
        assert_eq!(trie.find(t, b"longlabel-number-two"), None);
        assert_eq!(
            trie.find(ROOT, b"ab"),
            None,
            "a label is found only under its parent"
        );
    }
}
