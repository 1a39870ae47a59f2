//! Decisions per second of the compiled matcher for policies of 10, 1,000 and 100,000 rules
//! of mixed kinds (CIDR v4/v6, exact domain, suffix, group; a third port-scoped, a third
//! protocol-scoped), judged over a fixed batch of mixed flows (a third with pinned names,
//! some with an SNI).
//!
//! Run: `cargo bench -p moat-policy --bench decide` (criterion prints time per batch and
//! the throughput in decisions per second, "elem/s"; the closing "interleaved" lines give
//! each size's cost relative to 10 rules, measured side by side).

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use moat_policy::{
    Action, CompiledPolicy, Destination, DestinationGroup, Direction, DomainName, Flow, IpNetwork,
    NetworkPolicy, PortRange, Protocol, Rule,
};

/// xorshift64*: deterministic, so every run measures the same policies and flows.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn name(i: u64) -> DomainName {
    DomainName::new(&format!("h{i}.zone{}.example", i % 97)).unwrap()
}

fn v4(rng: &mut Rng) -> Ipv4Addr {
    // Concentrated in 100 /8s so rules and flows overlap.
    Ipv4Addr::from(((rng.below(100) as u32 + 1) << 24) | (rng.next() as u32 & 0x00ff_ffff))
}

fn v6(rng: &mut Rng) -> Ipv6Addr {
    Ipv6Addr::from(
        (0x2001_0db8u128 << 96) | (u128::from(rng.below(1 << 16)) << 80) | u128::from(rng.next()),
    )
}

fn policy(rules: usize, rng: &mut Rng) -> NetworkPolicy {
    let groups = DestinationGroup::ALL;
    let mut out = Vec::with_capacity(rules);
    for i in 0..rules as u64 {
        let destination = match rng.below(10) {
            0..=3 => {
                let len = 8 + rng.below(25) as u8;
                Destination::Cidr(IpNetwork::V4(
                    ipnet::Ipv4Net::new(v4(rng), len).unwrap().trunc(),
                ))
            }
            4 | 5 => {
                let len = 32 + rng.below(97) as u8;
                Destination::Cidr(IpNetwork::V6(
                    ipnet::Ipv6Net::new(v6(rng), len).unwrap().trunc(),
                ))
            }
            6 | 7 => Destination::Domain(name(rng.below(rules as u64 * 2 + 1)).as_str().to_owned()),
            8 => Destination::DomainSuffix(format!(".zone{}.example", rng.below(97))),
            _ => Destination::Group(groups[(i % 5) as usize]),
        };
        let mut rule = if rng.below(2) == 0 {
            Rule::allow_outbound(destination)
        } else {
            Rule::deny_outbound(destination)
        };
        match rng.below(3) {
            0 => {
                let start = rng.below(60000) as u16;
                rule.ports = Some(PortRange::range(start, start + rng.below(100) as u16));
                rule.protocol = Some(if rng.below(2) == 0 {
                    Protocol::Tcp
                } else {
                    Protocol::Udp
                });
            }
            1 => rule.protocol = Some(Protocol::Tcp),
            _ => {}
        }
        out.push(rule);
    }
    NetworkPolicy {
        default_action: Action::Deny,
        rules: out,
    }
}

struct FlowSpec {
    addr: IpAddr,
    port: u16,
    protocol: Protocol,
    names: Vec<DomainName>,
    sni: Option<DomainName>,
}

fn flows(n: usize, rules: usize, rng: &mut Rng) -> Vec<FlowSpec> {
    (0..n)
        .map(|_| {
            let addr = if rng.below(3) == 0 {
                IpAddr::V6(v6(rng))
            } else {
                IpAddr::V4(v4(rng))
            };
            let names = if rng.below(3) == 0 {
                vec![name(rng.below(rules as u64 * 2 + 1))]
            } else {
                Vec::new()
            };
            let sni = (!names.is_empty() && rng.below(2) == 0).then(|| names[0].clone());
            FlowSpec {
                addr,
                port: if rng.below(2) == 0 {
                    443
                } else {
                    rng.below(65536) as u16
                },
                protocol: if rng.below(4) == 0 {
                    Protocol::Udp
                } else {
                    Protocol::Tcp
                },
                names,
                sni,
            }
        })
        .collect()
}

/// Judges every flow of the batch once; the count of allowed ones keeps the work alive.
fn batch(compiled: &CompiledPolicy, flows: &[FlowSpec]) -> u32 {
    let mut allowed = 0u32;
    for f in flows {
        let flow = Flow {
            direction: Direction::Outbound,
            protocol: f.protocol,
            addr: f.addr,
            port: Some(f.port),
            names: &f.names,
            sni: f.sni.as_ref(),
            local: false,
        };
        allowed += u32::from(compiled.decide(black_box(&flow)).is_allow());
    }
    allowed
}

const BATCH: usize = 4096;
const SIZES: [usize; 3] = [10, 1_000, 100_000];

fn setup(rules: usize) -> (CompiledPolicy, Vec<FlowSpec>) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ rules as u64);
    let compiled = policy(rules, &mut rng).compile().unwrap();
    let flows = flows(BATCH, rules, &mut rng);
    (compiled, flows)
}

fn decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide");
    group.throughput(Throughput::Elements(BATCH as u64));
    for rules in SIZES {
        let (compiled, flows) = setup(rules);
        group.bench_with_input(BenchmarkId::from_parameter(rules), &flows, |b, flows| {
            b.iter(|| batch(&compiled, flows))
        });
    }
    group.finish();
}

/// The cost of a decision at each size relative to 10 rules, measured interleaved (each
/// round runs 20 batches of each size in turn; the first of each run only warms the
/// caches) and taking each size's fastest batch, so that a noisy machine slows every size
/// alike instead of whichever criterion happened to be timing.
fn ratio(_: &mut Criterion) {
    let setups: Vec<_> = SIZES.iter().map(|&rules| setup(rules)).collect();
    let mut best = [u128::MAX; SIZES.len()];
    for _ in 0..50 {
        for (i, (compiled, flows)) in setups.iter().enumerate() {
            black_box(batch(compiled, flows));
            for _ in 0..20 {
                let t = std::time::Instant::now();
                black_box(batch(compiled, flows));
                best[i] = best[i].min(t.elapsed().as_nanos());
            }
        }
    }
    for (i, rules) in SIZES.iter().enumerate() {
        println!(
            "interleaved {rules} rules: {:.1} us per {BATCH} decisions, {:.1} M decisions/s, {:.2}x the 10-rule cost",
            best[i] as f64 / 1e3,
            BATCH as f64 / best[i] as f64 * 1e3,
            best[i] as f64 / best[0] as f64
        );
    }
}

criterion_group!(benches, decide, ratio);
criterion_main!(benches);
