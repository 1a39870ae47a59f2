//! The pin set: which names this sandbox's own DNS lookups bound to each address.
//!
//! Every address in an answer is pinned to the queried name and every name of the CNAME
//! chain, for the record's TTL plus a grace period (a connection often starts just after a
//! short TTL ran out). Pins are a union: an address may carry many names, a name many
//! addresses. An address's names are kept in the order DNS last answered them, so the
//! name a connection most likely meant (the last one looked up) comes first. The set is bounded: at most [`Pins::MAX_PER_ADDR`] names per address, and a
//! total beyond which the pins closest to expiry go first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use moat_policy::DomainName;

/// Names pinned to addresses, with expiry.
#[derive(Debug)]
pub struct Pins {
    map: HashMap<IpAddr, Vec<(DomainName, Instant)>>,
    entries: usize,
    max_entries: usize,
    grace: Duration,
}

/// TTLs above a day are cut to a day (RFC 8767 §4 suggests a similar cap).
const MAX_TTL: u32 = 86_400;

impl Pins {
    /// Names kept per address at most.
    pub const MAX_PER_ADDR: usize = 32;

    /// An empty set holding at most `max_entries` (address, name) pins.
    pub fn new(max_entries: usize, grace: Duration) -> Pins {
        Pins {
            map: HashMap::new(),
            entries: 0,
            max_entries: max_entries.max(1),
            grace,
        }
    }

    /// Pins `name` to `addr` (canonical form) for `ttl` seconds plus the grace period.
    pub fn pin(&mut self, addr: IpAddr, name: &DomainName, ttl: u32, now: Instant) {
        let expiry = now + Duration::from_secs(u64::from(ttl.min(MAX_TTL))) + self.grace;
        let names = self.map.entry(addr).or_default();
        // Kept oldest answer first: a name answered again moves to the end.
        if let Some(at) = names.iter().position(|(n, _)| n == name) {
            let (name, old) = names.remove(at);
            names.push((name, old.max(expiry)));
            return;
        }
        if names.len() >= Self::MAX_PER_ADDR {
            if let Some(i) = (0..names.len()).min_by_key(|&i| names[i].1) {
                names.remove(i);
                names.push((name.clone(), expiry));
            }
            return;
        }
        names.push((name.clone(), expiry));
        self.entries += 1;
        if self.entries > self.max_entries {
            self.sweep(now);
            if self.entries > self.max_entries {
                self.evict_soonest();
            }
        }
    }

    /// The live names pinned to `addr`, the one DNS answered most recently first.
    pub fn names(&self, addr: IpAddr, now: Instant) -> Vec<DomainName> {
        self.map
            .get(&addr)
            .map(|names| {
                names
                    .iter()
                    .rev()
                    .filter(|(_, e)| *e > now)
                    .map(|(n, _)| n.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Drops expired pins.
    pub fn sweep(&mut self, now: Instant) {
        let mut removed = 0;
        self.map.retain(|_, names| {
            let before = names.len();
            names.retain(|(_, e)| *e > now);
            removed += before - names.len();
            !names.is_empty()
        });
        self.entries -= removed;
    }

    fn evict_soonest(&mut self) {
        let soonest = self
            .map
            .iter()
            .flat_map(|(a, names)| names.iter().map(move |(_, e)| (*e, *a)))
            .min();
        if let Some((expiry, addr)) = soonest
            && let Some(names) = self.map.get_mut(&addr)
        {
            if let Some(i) = names.iter().position(|(_, e)| *e == expiry) {
                names.remove(i);
                self.entries -= 1;
            }
            if names.is_empty() {
                self.map.remove(&addr);
            }
        }
    }

    /// Number of (address, name) pins held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries
    }

    /// True when nothing is pinned.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> DomainName {
        DomainName::new(s).unwrap()
    }

    #[test]
    fn union_expiry_and_bounds() {
        let t0 = Instant::now();
        let mut pins = Pins::new(4, Duration::from_secs(10));
        let a: IpAddr = "203.0.113.10".parse().unwrap();
        let b: IpAddr = "203.0.113.11".parse().unwrap();
        pins.pin(a, &n("x.test"), 30, t0);
        pins.pin(b, &n("x.test"), 30, t0);
        pins.pin(a, &n("y.test"), 5, t0);
        assert_eq!(pins.names(a, t0), vec![n("y.test"), n("x.test")]);
        assert_eq!(pins.names(b, t0), vec![n("x.test")]);
        // y: 5 s TTL + 10 s grace.
        assert_eq!(pins.names(a, t0 + Duration::from_secs(14)).len(), 2);
        assert_eq!(
            pins.names(a, t0 + Duration::from_secs(16)),
            vec![n("x.test")]
        );
        // A re-pin extends, never shortens, and makes the name the most recent.
        pins.pin(a, &n("x.test"), 1, t0);
        assert_eq!(pins.names(a, t0), vec![n("x.test"), n("y.test")]);
        assert_eq!(pins.names(a, t0 + Duration::from_secs(39)).len(), 1);
        assert_eq!(pins.len(), 3);
        // Over the bound: the pin closest to expiry goes.
        pins.pin(b, &n("z.test"), 100, t0);
        pins.pin(b, &n("w.test"), 100, t0);
        assert_eq!(pins.len(), 4);
        assert!(!pins.names(a, t0).contains(&n("y.test")));
        pins.sweep(t0 + Duration::from_secs(1000));
        assert!(pins.is_empty());
    }

    #[test]
    fn names_per_address_are_bounded() {
        let t0 = Instant::now();
        let mut pins = Pins::new(1000, Duration::ZERO);
        let a: IpAddr = "203.0.113.10".parse().unwrap();
        for i in 0..100 {
            pins.pin(a, &n(&format!("h{i}.test")), 100 + i, t0);
        }
        let names = pins.names(a, t0);
        assert_eq!(names.len(), Pins::MAX_PER_ADDR);
        assert!(names.contains(&n("h99.test")));
    }
}
