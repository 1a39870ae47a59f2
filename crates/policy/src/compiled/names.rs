//! The name index: domain and suffix rules in a label trie flattened into one
//! open-addressing table of edges (see the theory of operation in `compiled.rs`).

use super::*;

/// The rules of one name key: the exact name, or everything strictly below it.
///
/// Slots are packed as in [`AddrIndex`] (see [`pack`]), so a key is one cache line.
#[derive(Debug, Clone)]
#[repr(align(64))]
pub(super) struct NameKey {
    pub(super) allow: [u32; 8],
    pub(super) deny: [u32; 8],
}

/// A trie node while building: its children by label, and the keys for exactly its name
/// and for every name below it.
#[derive(Default)]
pub(super) struct NameNode {
    pub(super) children: FastMap<Box<str>, u32>,
    pub(super) exact: Option<NameKeyBuilder>,
    pub(super) suffix: Option<NameKeyBuilder>,
}

/// Label bytes kept in an [`Edge`] itself; the rest of a longer label is in `tails`.
pub(super) const INLINE: usize = 11;

/// One step down the name trie: the edge from node `parent` by one label, which also stands
/// for the node it leads to (a node's id is the table position of the edge into it).
#[derive(Debug, Clone, Copy)]
pub(super) struct Edge {
    /// The node this edge leaves ([`ROOT`] for the top label).
    pub(super) parent: u32,
    /// High bits of the edge's hash: most mismatches end here.
    pub(super) tag: u32,
    /// The keys of the node the edge leads to, in `NameTrie::keys`, or [`NONE`].
    pub(super) exact: u32,
    pub(super) suffix: u32,
    /// Where the label's bytes past [`INLINE`] start in `NameTrie::tails`.
    pub(super) tail: u32,
    /// Label length; 0 marks a free slot (labels are never empty).
    pub(super) len: u8,
    pub(super) head: [u8; INLINE],
}

pub(super) const FREE: Edge = Edge {
    parent: NONE,
    tag: 0,
    exact: NONE,
    suffix: NONE,
    tail: 0,
    len: 0,
    head: [0; INLINE],
};

/// The parent id of top labels.
pub(super) const ROOT: u32 = NONE - 1;

/// Domain and suffix rules in a label trie, top label first, flattened into one
/// open-addressing table of edges keyed by (parent node, label): each step down is one
/// probe, usually into one cache line, with the label and the node's keys in the edge.
#[derive(Debug, Clone)]
pub(super) struct NameTrie {
    /// A power of two long, at most two thirds full.
    pub(super) edges: Vec<Edge>,
    pub(super) tails: Vec<u8>,
    pub(super) keys: Vec<NameKey>,
    /// `keys[i].min_rule`, apart: small enough to stay in cache, so a key that cannot
    /// lower the answer is never read.
    pub(super) mins: Vec<u32>,
    /// Per key, the smallest index among its rules that decide a DNS lookup: allow rules,
    /// and deny rules without filters.
    pub(super) naming: Vec<u32>,
    /// The keys' slots with port steps.
    pub(super) wide: Vec<Wide>,
    pub(super) hasher: foldhash::fast::RandomState,
}

impl NameTrie {
    pub(super) fn hash(&self, parent: u32, label: &[u8]) -> u64 {
        self.hasher.hash_one((parent, label))
    }

    /// The position of the edge from `parent` by `label`.
    pub(super) fn find(&self, parent: u32, label: &[u8]) -> Option<usize> {
        let mask = self.edges.len() - 1;
        let h = self.hash(parent, label);
        let tag = (h >> 32) as u32;
        let mut i = h as usize & mask;
        loop {
            let e = &self.edges[i];
            if e.len == 0 {
                return None;
            }
            if e.tag == tag && e.parent == parent && self.label_is(e, label) {
                return Some(i);
            }
            i = (i + 1) & mask;
        }
    }

    /// Whether `e`'s label is `label` (the tag only says it may be).
    pub(super) fn label_is(&self, e: &Edge, label: &[u8]) -> bool {
        if usize::from(e.len) != label.len() {
            return false;
        }
        let (head, rest) = label.split_at(label.len().min(INLINE));
        // Byte by byte: labels are short, and a library memcmp call costs more here.
        if !head.iter().zip(&e.head).all(|(a, b)| a == b) {
            return false;
        }
        let tail = e.tail as usize;
        rest.is_empty() || self.tails.get(tail..tail + rest.len()) == Some(rest)
    }

    /// Visits the keys that match `name` (their positions in `keys`): the suffix keys of
    /// its strict ancestors, with the ancestor's name, then its exact key, with `None`.
    pub(super) fn walk(&self, name: &str, mut visit: impl FnMut(usize, Option<&str>)) {
        let bytes = name.as_bytes();
        let mut node = ROOT;
        // `name[..end]` is still to be read.
        let mut end = name.len();
        loop {
            let start = bytes[..end]
                .iter()
                .rposition(|&b| b == b'.')
                .map_or(0, |d| d + 1);
            let Some(i) = self.find(node, &bytes[start..end]) else {
                return;
            };
            let edge = &self.edges[i];
            if start == 0 {
                if edge.exact != NONE {
                    visit(edge.exact as usize, None);
                }
                return;
            }
            if edge.suffix != NONE {
                visit(edge.suffix as usize, Some(&name[start..]));
            }
            node = i as u32;
            end = start - 1;
        }
    }
}

pub(super) struct NameKeyBuilder {
    pub(super) allow: SlotsBuilder,
    pub(super) deny: SlotsBuilder,
    pub(super) first_naming: u32,
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
    pub(super) fn add(&mut self, idx: u32, rule: &Rule) {
        match rule.action {
            Action::Allow => self.allow.add(idx, rule),
            Action::Deny => self.deny.add(idx, rule),
        }
        if rule.action == Action::Allow || rule.is_unfiltered() {
            self.first_naming = self.first_naming.min(idx);
        }
    }

    /// The key, with its smallest rule index and its first naming rule.
    pub(super) fn finish(
        self,
        arena: &mut StepArena,
        wide: &mut Vec<Wide>,
        seen: &mut FastMap<Wide, u32>,
    ) -> (NameKey, u32, u32) {
        let min_rule = self.allow.min_rule.min(self.deny.min_rule);
        let mut packed = |b: SlotsBuilder| {
            b.finish(arena).map(|slot| {
                let steps = (slot.steps != NONE).then(|| arena.steps_of(slot.steps));
                pack(Wide::new(slot, steps), wide, seen)
            })
        };
        let key = NameKey {
            allow: packed(self.allow),
            deny: packed(self.deny),
        };
        (key, min_rule, self.first_naming)
    }
}

#[derive(Default)]
pub(super) struct NameTrieBuilder {
    /// Node 0 is the root.
    pub(super) nodes: Vec<NameNode>,
}

impl NameTrieBuilder {
    pub(super) fn key(&mut self, name: &DomainName, suffix: bool) -> &mut NameKeyBuilder {
        if self.nodes.is_empty() {
            self.nodes.push(Default::default());
        }
        let mut node = 0;
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

    pub(super) fn finish(mut self, arena: &mut StepArena) -> NameTrie {
        if self.nodes.is_empty() {
            self.nodes.push(NameNode::default());
        }
        let count = self.nodes.len() - 1;
        let size = (count + count / 2 + 1).next_power_of_two();
        let mut trie = NameTrie {
            edges: vec![FREE; size],
            tails: Vec::new(),
            keys: Vec::new(),
            mins: Vec::new(),
            naming: Vec::new(),
            wide: Vec::new(),
            hasher: foldhash::fast::RandomState::default(),
        };
        let mut seen = FastMap::default();
        // Parents before children: each node's id is where its edge lands.
        let mut queue = std::collections::VecDeque::from([(0usize, ROOT)]);
        while let Some((node, id)) = queue.pop_front() {
            let children = std::mem::take(&mut self.nodes[node].children);
            for (label, child) in children {
                let child = child as usize;
                let mut edge = Edge {
                    parent: id,
                    len: label.len() as u8,
                    tail: trie.tails.len() as u32,
                    ..FREE
                };
                let (head, rest) = label.as_bytes().split_at(label.len().min(INLINE));
                edge.head[..head.len()].copy_from_slice(head);
                trie.tails.extend_from_slice(rest);
                let mut key_of = |k: Option<NameKeyBuilder>| {
                    k.map_or(NONE, |k| {
                        let (key, min_rule, naming) = k.finish(arena, &mut trie.wide, &mut seen);
                        trie.keys.push(key);
                        trie.mins.push(min_rule);
                        trie.naming.push(naming);
                        (trie.keys.len() - 1) as u32
                    })
                };
                edge.exact = key_of(self.nodes[child].exact.take());
                edge.suffix = key_of(self.nodes[child].suffix.take());
                let h = trie.hash(id, label.as_bytes());
                edge.tag = (h >> 32) as u32;
                let mask = size - 1;
                let mut at = h as usize & mask;
                while trie.edges[at].len != 0 {
                    at = (at + 1) & mask;
                }
                trie.edges[at] = edge;
                queue.push_back((child, at as u32));
            }
        }
        trie
    }
}
