//! The address index: each family's prefix forest flattened into intervals, searched by
//! binary search (see the theory of operation in `compiled.rs`).

use super::*;

/// A link in the chain of enclosing CIDRs that have port step maps for one slot.
#[derive(Debug, Clone, Copy)]
pub(super) struct StepLink {
    /// The step map, in the [`StepArena`].
    pub(super) map: u32,
    /// The next enclosing link, or [`NONE`].
    pub(super) up: u32,
    /// The smallest index this link or any above it can give.
    pub(super) chain_min: u32,
}

/// The prefix forest of one address family, flattened into intervals.
///
/// For each interval and slot, [`Slot::portless`] already holds the minimum over every
/// enclosing CIDR's port-less answer, and [`Slot::steps`] points at the first [`StepLink`] of
/// the enclosing CIDRs whose rules have port filters; a lookup follows only those.
#[derive(Debug, Clone)]
pub(super) struct AddrIndex<A> {
    /// First address of each interval, starting at 0.
    pub(super) starts: Sorted<A>,
    /// Per slot, per interval.
    /// Per slot, per interval, a [`Slot`] packed into 4 bytes (see [`pack`]); the few with
    /// port steps live in `wide`. Keeping these tables small keeps them in cache.
    pub(super) slots: [Vec<u32>; 8],
    pub(super) wide: Vec<Wide>,
    pub(super) links: Vec<StepLink>,
}

/// The operations the interval sweep and the search need from an address width.
pub(super) trait AddrBits: Copy + Ord + Default {
    /// Top bits that index [`Sorted::buckets`], for widths where they spread keys.
    const BUCKET_BITS: Option<u32>;
    fn succ(self) -> Option<Self>;
    /// The value of the top `bits` bits.
    fn bucket(self, bits: u32) -> usize;
    /// The first address whose top `bits` bits are `b`.
    fn bucket_start(b: usize, bits: u32) -> Self;
}

impl AddrBits for u32 {
    /// 4,096 buckets: 16 KiB that stay in cache.
    const BUCKET_BITS: Option<u32> = Some(12);
    fn succ(self) -> Option<u32> {
        self.checked_add(1)
    }
    fn bucket(self, bits: u32) -> usize {
        (self >> (32 - bits)) as usize
    }
    fn bucket_start(b: usize, bits: u32) -> u32 {
        (b as u32) << (32 - bits)
    }
}

impl AddrBits for u128 {
    /// IPv6 keys crowd under a few prefixes (2000::/3, documentation, ULA): the top bits
    /// do not spread them, so IPv6 uses the sampled search alone.
    const BUCKET_BITS: Option<u32> = None;
    fn succ(self) -> Option<u128> {
        self.checked_add(1)
    }
    fn bucket(self, bits: u32) -> usize {
        (self >> (128 - bits)) as usize
    }
    fn bucket_start(b: usize, bits: u32) -> u128 {
        (b as u128) << (128 - bits)
    }
}

impl<A: AddrBits> AddrIndex<A> {
    /// `prefixes`: (first address, last address, rules) of distinct CIDRs.
    pub(super) fn build(
        mut prefixes: Vec<(A, A, SlotsBuilder)>,
        arena: &mut StepArena,
    ) -> AddrIndex<A> {
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
        let mut seen = FastMap::default();
        let packed = slots.map(|column| {
            column
                .into_iter()
                .map(|slot| {
                    let merged = (slot.steps != NONE && slot.steps & MERGED != 0)
                        .then(|| arena.steps_of(slot.steps & !MERGED));
                    pack(Wide::new(slot, merged), &mut wide, &mut seen)
                })
                .collect()
        });
        AddrIndex {
            starts: Sorted::new(starts),
            slots: packed,
            wide,
            links,
        }
    }

    pub(super) fn lookup(&self, addr: A, slot: usize, port: Option<u16>, arena: &StepArena) -> u32 {
        let Some(&packed) = self.slots[slot].get(self.starts.last_at_or_below(addr)) else {
            return NONE;
        };
        let wide = unpack(packed, &self.wide);
        let here = wide.slot;
        let mut best = here.portless;
        if let Some(port) = port {
            if let Some(answer) = wide.ranged(port) {
                return answer;
            }
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
pub(super) struct Sorted<A> {
    pub(super) keys: Vec<A>,
    pub(super) sample: Vec<A>,
    /// For widths with [`AddrBits::BUCKET_BITS`]: per value of an address's top bits, the
    /// position of the last key at or below the first address with those bits; one more
    /// entry at the end. A search then only looks between two neighbouring entries.
    pub(super) buckets: Vec<u32>,
}

/// Keys per block: 16 IPv4 starts are one 64-byte cache line.
pub(super) const SAMPLE: usize = 16;

impl<A: AddrBits> Sorted<A> {
    /// `keys` must be ascending and start with the smallest address.
    pub(super) fn new(keys: Vec<A>) -> Sorted<A> {
        let sample = keys.iter().step_by(SAMPLE).copied().collect();
        let mut sorted = Sorted {
            keys,
            sample,
            buckets: Vec::new(),
        };
        if let Some(bits) = A::BUCKET_BITS {
            let mut buckets: Vec<u32> = (0..1usize << bits)
                .map(|b| sorted.sampled_search(A::bucket_start(b, bits)) as u32)
                .collect();
            buckets.push(sorted.keys.len().saturating_sub(1) as u32);
            sorted.buckets = buckets;
        }
        sorted
    }

    /// Position of the last key `<= x` (0 when none is).
    pub(super) fn last_at_or_below(&self, x: A) -> usize {
        match A::BUCKET_BITS {
            Some(bits) => {
                let b = x.bucket(bits);
                let (Some(&lo), Some(&hi)) = (self.buckets.get(b), self.buckets.get(b + 1)) else {
                    return 0;
                };
                let (lo, hi) = (lo as usize, hi as usize + 1);
                // keys[lo] <= x: it is at or below the bucket's first address.
                let within = self.keys.get(lo..hi).unwrap_or(&[]);
                (lo + within.partition_point(|&s| s <= x)).saturating_sub(1)
            }
            None => self.sampled_search(x),
        }
    }

    /// The same, by the sample and one block.
    pub(super) fn sampled_search(&self, x: A) -> usize {
        let block = self.sample.partition_point(|&s| s <= x).saturating_sub(1);
        let lo = block * SAMPLE;
        let hi = (lo + SAMPLE).min(self.keys.len());
        let within = self.keys.get(lo..hi).unwrap_or(&[]);
        (lo + within.partition_point(|&s| s <= x)).saturating_sub(1)
    }
}
