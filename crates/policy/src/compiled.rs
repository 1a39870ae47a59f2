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
//! Index building is O(n log n) in the number of rules; a decision is one binary search over
//! the intervals plus one step per enclosing prefix and per label of each name involved.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::addr::{canonical_addr, canonical_net, never_reachable};
use crate::decide::{DecidedBy, Decision, Flow};
use crate::domain::DomainName;
use crate::error::PolicyError;
use crate::types::{Action, Destination, Direction, NetworkPolicy, PortRange, Protocol, Rule};

/// "No rule": larger than every rule index, so `min` ignores it.
const NONE: u32 = u32::MAX;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A policy compiled for fast decisions. Build it with [`NetworkPolicy::compile`].
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    policy: NetworkPolicy,
    actions: Vec<Action>,
    steps: StepArena,
    v4: AddrIndex<u32>,
    v6: AddrIndex<u128>,
    names: NameTrie,
    /// First outbound `deny any` without filters: nothing after it can allow a name.
    first_deny_any: u32,
    /// First outbound allow rule on an address (any, CIDR, group).
    first_address_allow: u32,
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
                Destination::Domain(name) => names.key(name, false).add(idx, rule),
                Destination::DomainSuffix(suffix) => {
                    names.key(suffix.parent(), true).add(idx, rule)
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
        Ok(CompiledPolicy {
            policy: self.clone(),
            actions: self.rules.iter().map(|r| r.action).collect(),
            v4: AddrIndex::build(
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
            ),
            v6: AddrIndex::build(
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
            ),
            names: names.finish(&mut steps),
            steps,
            first_deny_any,
            first_address_allow,
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
        self.decision(best, self.policy.default_action)
    }

    /// Judges a DNS lookup of `name`: same answer as [`crate::decide_name_first_match`].
    /// `Allow` means forward it upstream; `Deny` means answer NXDOMAIN without asking anyone.
    pub fn decide_name(&self, name: &DomainName) -> Decision {
        let mut first_naming = NONE;
        self.names.walk(name.as_str(), |key, _| {
            first_naming = first_naming.min(key.first_naming)
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
        match self.actions.get(best as usize) {
            Some(&action) => Decision {
                action,
                by: DecidedBy::Rule(best as usize),
            },
            None => Decision {
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
        let lower = |slots: &[Slot; 8], best: u32| best.min(slots[slot].get(flow.port, arena));
        for name in flow.names {
            self.names.walk(name.as_str(), |key, _| {
                if key.min_rule < best {
                    best = lower(&key.deny, best);
                    if flow.sni.is_none() {
                        best = lower(&key.allow, best);
                    }
                }
            });
        }
        if let Some(sni) = flow.sni {
            self.names.walk(sni.as_str(), |key, suffix_parent| {
                if key.min_rule >= best {
                    return;
                }
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

/// Port step functions, stored flat: a map is a slice of `(first port, index)` steps.
#[derive(Debug, Clone, Default)]
struct StepArena {
    steps: Vec<(u16, u32)>,
    /// `(offset, len)` of each map in `steps`.
    maps: Vec<(u32, u32)>,
}

impl StepArena {
    fn push(&mut self, steps: &[(u16, u32)]) -> u32 {
        self.maps
            .push((self.steps.len() as u32, steps.len() as u32));
        self.steps.extend_from_slice(steps);
        (self.maps.len() - 1) as u32
    }

    /// The answer of map `map` for `port`.
    fn get(&self, map: u32, port: u16) -> u32 {
        let Some(&(offset, len)) = self.maps.get(map as usize) else {
            return NONE;
        };
        let steps = &self.steps[offset as usize..(offset + len) as usize];
        // steps[0].0 == 0, so the partition point is at least 1.
        let i = steps.partition_point(|&(start, _)| start <= port);
        steps.get(i.wrapping_sub(1)).map_or(NONE, |s| s.1)
    }

    /// The steps of map `map`.
    fn steps_of(&self, map: u32) -> &[(u16, u32)] {
        let (offset, len) = self.maps[map as usize];
        &self.steps[offset as usize..(offset + len) as usize]
    }

    /// The smallest index any port of map `map` can get.
    fn min(&self, map: u32) -> u32 {
        let (offset, len) = self.maps[map as usize];
        self.steps[offset as usize..(offset + len) as usize]
            .iter()
            .map(|s| s.1)
            .min()
            .unwrap_or(NONE)
    }
}

/// One (direction, protocol) of a key: the port-less answer, and a step map if ports matter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// Packs a slot into 4 bytes: its port-less answer when it has no port steps (rule indices
/// stay below 2^31, [`NONE`] is itself), else `WIDE | index` into `wide`.
fn pack(slot: Slot, wide: &mut Vec<Slot>) -> u32 {
    if slot.steps == NONE {
        return slot.portless;
    }
    wide.push(slot);
    WIDE | (wide.len() - 1) as u32
}

fn unpack(packed: u32, wide: &[Slot]) -> Slot {
    if packed == NONE || packed & WIDE == 0 {
        return Slot {
            portless: packed,
            steps: NONE,
        };
    }
    wide.get((packed & !WIDE) as usize)
        .copied()
        .unwrap_or(EMPTY_SLOT)
}

/// A link in the chain of enclosing CIDRs that have port step maps for one slot.
#[derive(Debug, Clone, Copy)]
struct StepLink {
    /// The step map, in the [`StepArena`].
    map: u32,
    /// The next enclosing link, or [`NONE`].
    up: u32,
    /// The smallest index this link or any above it can give.
    chain_min: u32,
}

/// The prefix forest of one address family, flattened into intervals.
///
/// For each interval and slot, [`Slot::portless`] already holds the minimum over every
/// enclosing CIDR's port-less answer, and [`Slot::steps`] points at the first [`StepLink`] of
/// the enclosing CIDRs whose rules have port filters; a lookup follows only those.
#[derive(Debug, Clone)]
struct AddrIndex<A> {
    /// First address of each interval, starting at 0.
    starts: Sorted<A>,
    /// Per slot, per interval.
    /// Per slot, per interval, a [`Slot`] packed into 4 bytes (see [`pack`]); the few with
    /// port steps live in `wide`. Keeping these tables small keeps them in cache.
    slots: [Vec<u32>; 8],
    wide: Vec<Slot>,
    links: Vec<StepLink>,
}

/// The operations the interval sweep needs from an address width.
trait AddrBits: Copy + Ord + Default {
    fn succ(self) -> Option<Self>;
}

impl AddrBits for u32 {
    fn succ(self) -> Option<u32> {
        self.checked_add(1)
    }
}

impl AddrBits for u128 {
    fn succ(self) -> Option<u128> {
        self.checked_add(1)
    }
}

impl<A: AddrBits> AddrIndex<A> {
    /// `prefixes`: (first address, last address, rules) of distinct CIDRs.
    fn build(mut prefixes: Vec<(A, A, SlotsBuilder)>, arena: &mut StepArena) -> AddrIndex<A> {
        // Enclosing CIDRs first: by start, then the wider (larger end) first.
        prefixes.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        let mut points: Vec<A> = std::iter::once(A::default())
            .chain(prefixes.iter().map(|p| p.0))
            .chain(prefixes.iter().filter_map(|p| p.1.succ()))
            .collect();
        points.sort_unstable();
        points.dedup();

        // Per CIDR and slot, the chained answer: what it and every CIDR enclosing it give.
        let mut links: Vec<StepLink> = Vec::new();
        let mut chained: Vec<[Slot; 8]> = Vec::with_capacity(prefixes.len());
        let mut ends: Vec<A> = Vec::with_capacity(prefixes.len());
        let mut starts = Vec::new();
        let mut slots: [Vec<Slot>; 8] = Default::default();

        let mut stack: Vec<usize> = Vec::new();
        let mut next = 0;
        for b in points {
            while next < prefixes.len() && prefixes[next].0 <= b {
                let (start, end, builder) = &prefixes[next];
                while stack.last().is_some_and(|&t| ends[t] < *start) {
                    stack.pop();
                }
                let parent = stack.last().map_or([EMPTY_SLOT; 8], |&t| chained[t]);
                let own = builder.port_maps();
                let mine: [Slot; 8] = std::array::from_fn(|i| {
                    let up = parent[i];
                    match &own[i] {
                        None => up,
                        Some(map) if map.steps.is_empty() => Slot {
                            portless: up.portless.min(map.portless),
                            steps: up.steps,
                        },
                        Some(map) => {
                            let portless = up.portless.min(map.portless);
                            // One map for the whole chain when it stays small: a lookup then
                            // reads one map instead of walking the enclosing CIDRs.
                            let merged = match up.steps {
                                NONE => Some(map.steps.clone()),
                                s if s & MERGED != 0 => {
                                    Some(merge_steps(arena.steps_of(s & !MERGED), &map.steps))
                                }
                                _ => None,
                            }
                            .filter(|m| m.len() <= MERGE_CAP);
                            if let Some(m) = merged {
                                Slot {
                                    portless,
                                    steps: MERGED | arena.push(&m),
                                }
                            } else {
                                // A chain link; a merged map above becomes the chain's end.
                                let up_link = if up.steps != NONE && up.steps & MERGED != 0 {
                                    let above = up.steps & !MERGED;
                                    links.push(StepLink {
                                        map: above,
                                        up: NONE,
                                        chain_min: arena.min(above),
                                    });
                                    (links.len() - 1) as u32
                                } else {
                                    up.steps
                                };
                                let id = arena.push(&map.steps);
                                let above =
                                    links.get(up_link as usize).map_or(NONE, |l| l.chain_min);
                                links.push(StepLink {
                                    map: id,
                                    up: up_link,
                                    chain_min: arena.min(id).min(above),
                                });
                                Slot {
                                    portless,
                                    steps: (links.len() - 1) as u32,
                                }
                            }
                        }
                    }
                });
                chained.push(mine);
                ends.push(*end);
                stack.push(next);
                next += 1;
            }
            while stack.last().is_some_and(|&t| ends[t] < b) {
                stack.pop();
            }
            let here = stack.last().map_or([EMPTY_SLOT; 8], |&t| chained[t]);
            // An interval that answers like the one before it extends it.
            let same =
                slots[0].last().is_some() && (0..8).all(|i| slots[i].last() == Some(&here[i]));
            if !same {
                starts.push(b);
                for (i, s) in here.into_iter().enumerate() {
                    slots[i].push(s);
                }
            }
        }
        let mut wide = Vec::new();
        let packed = slots.map(|column| {
            column
                .into_iter()
                .map(|slot| pack(slot, &mut wide))
                .collect()
        });
        AddrIndex {
            starts: Sorted::new(starts),
            slots: packed,
            wide,
            links,
        }
    }

    fn lookup(&self, addr: A, slot: usize, port: Option<u16>, arena: &StepArena) -> u32 {
        let Some(&packed) = self.slots[slot].get(self.starts.last_at_or_below(addr)) else {
            return NONE;
        };
        let here = unpack(packed, &self.wide);
        let mut best = here.portless;
        if let Some(port) = port {
            let mut link = here.steps;
            if link != NONE && link & MERGED != 0 {
                return best.min(arena.get(link & !MERGED, port));
            }
            while let Some(l) = self.links.get(link as usize) {
                if l.chain_min >= best {
                    break;
                }
                best = best.min(arena.get(l.map, port));
                link = l.up;
            }
        }
        best
    }
}

/// A sorted array with a sample of every [`SAMPLE`]th key: a binary search over the sample
/// (small enough to stay in cache) picks a block, a second one searches the block. With 10^5
/// intervals a plain binary search spends most of a decision waiting for memory.
#[derive(Debug, Clone)]
struct Sorted<A> {
    keys: Vec<A>,
    sample: Vec<A>,
}

/// Keys per block: 16 IPv4 starts are one 64-byte cache line.
const SAMPLE: usize = 16;

impl<A: AddrBits> Sorted<A> {
    /// `keys` must be ascending and start with the smallest address.
    fn new(keys: Vec<A>) -> Sorted<A> {
        let sample = keys.iter().step_by(SAMPLE).copied().collect();
        Sorted { keys, sample }
    }

    /// Position of the last key `<= x` (0 when none is).
    fn last_at_or_below(&self, x: A) -> usize {
        let block = self.sample.partition_point(|&s| s <= x).saturating_sub(1);
        let lo = block * SAMPLE;
        let hi = (lo + SAMPLE).min(self.keys.len());
        let within = self.keys.get(lo..hi).unwrap_or(&[]);
        (lo + within.partition_point(|&s| s <= x)).saturating_sub(1)
    }
}

/// The rules of one name key: the exact name, or everything strictly below it.
#[derive(Debug, Clone)]
struct NameKey {
    allow: [Slot; 8],
    deny: [Slot; 8],
    min_rule: u32,
    /// Smallest index among rules here that decide a DNS lookup: allow rules, and deny
    /// rules without filters.
    first_naming: u32,
}

/// A trie node: its children by label, and the keys for exactly its name and for every
/// name below it. `K` is [`NameKeyBuilder`] while building, [`NameKey`] after.
#[derive(Debug, Clone)]
struct NameNode<K> {
    children: FastMap<Box<str>, u32>,
    exact: Option<K>,
    suffix: Option<K>,
}

impl<K> Default for NameNode<K> {
    fn default() -> NameNode<K> {
        NameNode {
            children: FastMap::default(),
            exact: None,
            suffix: None,
        }
    }
}

/// Domain and suffix rules in a label trie, top label first.
#[derive(Debug, Clone)]
struct NameTrie {
    nodes: Vec<NameNode<NameKey>>,
}

const ROOT: usize = 0;

impl NameTrie {
    /// Visits the keys that match `name`: the suffix keys of its strict ancestors, with the
    /// ancestor's name, then its exact key, with `None`.
    fn walk(&self, name: &str, mut visit: impl FnMut(&NameKey, Option<&str>)) {
        let mut node = ROOT;
        // `name[..end]` is still to be read; `node` stands for `name[end + 1..]`.
        let mut end = name.len();
        loop {
            if node != ROOT
                && let Some(key) = &self.nodes[node].suffix
            {
                visit(key, Some(&name[end + 1..]));
            }
            let label_start = name.as_bytes()[..end]
                .iter()
                .rposition(|&b| b == b'.')
                .map_or(0, |d| d + 1);
            match self.nodes[node].children.get(&name[label_start..end]) {
                Some(&child) => node = child as usize,
                None => return,
            }
            if label_start == 0 {
                if let Some(key) = &self.nodes[node].exact {
                    visit(key, None);
                }
                return;
            }
            end = label_start - 1;
        }
    }
}

struct NameKeyBuilder {
    allow: SlotsBuilder,
    deny: SlotsBuilder,
    first_naming: u32,
}

impl Default for NameKeyBuilder {
    fn default() -> NameKeyBuilder {
        NameKeyBuilder {
            allow: SlotsBuilder::default(),
            deny: SlotsBuilder::default(),
            first_naming: NONE,
        }
    }
}

impl NameKeyBuilder {
    fn add(&mut self, idx: u32, rule: &Rule) {
        match rule.action {
            Action::Allow => self.allow.add(idx, rule),
            Action::Deny => self.deny.add(idx, rule),
        }
        if rule.action == Action::Allow || rule.is_unfiltered() {
            self.first_naming = self.first_naming.min(idx);
        }
    }

    fn finish(self, arena: &mut StepArena) -> NameKey {
        NameKey {
            min_rule: self.allow.min_rule.min(self.deny.min_rule),
            allow: self.allow.finish(arena),
            deny: self.deny.finish(arena),
            first_naming: self.first_naming,
        }
    }
}

#[derive(Default)]
struct NameTrieBuilder {
    /// Node 0 is the root.
    nodes: Vec<NameNode<NameKeyBuilder>>,
}

impl NameTrieBuilder {
    fn key(&mut self, name: &DomainName, suffix: bool) -> &mut NameKeyBuilder {
        if self.nodes.is_empty() {
            self.nodes.push(Default::default());
        }
        let mut node = ROOT;
        for label in name.labels_rev() {
            let next = self.nodes.len() as u32;
            let child = *self.nodes[node]
                .children
                .entry(label.into())
                .or_insert(next);
            if child == next {
                self.nodes.push(Default::default());
            }
            node = child as usize;
        }
        let entry = &mut self.nodes[node];
        let key = if suffix {
            &mut entry.suffix
        } else {
            &mut entry.exact
        };
        key.get_or_insert_with(Default::default)
    }

    fn finish(self, arena: &mut StepArena) -> NameTrie {
        let mut nodes: Vec<NameNode<NameKey>> = self
            .nodes
            .into_iter()
            .map(|n| NameNode {
                children: n.children,
                exact: n.exact.map(|k| k.finish(arena)),
                suffix: n.suffix.map(|k| k.finish(arena)),
            })
            .collect();
        if nodes.is_empty() {
            nodes.push(NameNode::default());
        }
        NameTrie { nodes }
    }
}
