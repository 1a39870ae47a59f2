//! What every flow consults while it handles an event: the stack, the socket pool, the
//! policy with this sandbox's DNS pins and the host's addresses, the audit log and the
//! counters. The flow table and the flows are kept apart from it, so a flow borrowed from
//! the table can use all of this at once.
//!
//! Judging happens here ([`Cx::judge`], [`Cx::judge_sni`], [`Cx::judge_inbound`]), and so
//! does the audit log's wording of `connect` and `close` events: every flow kind writes
//! them the same way.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use moat_dns::filter::DnsRules;
use moat_dns::pins::Pins;
use moat_inspect::evidence::Named;
use moat_policy::{
    Decision, Direction, DomainName, Flow, Permit, Protocol, ViolationAction, canonical_addr,
};
use moat_wire::offload::UdpRun;
use serde_json::Value;

use super::close::CloseReason;
use super::config::{Counters, EngineConfig};
use super::host_addrs::HostAddrs;
use super::key::{FlowId, FlowKey};
use super::pool::SocketPool;
use super::stack::Stack;
use super::tls_shared::TlsShared;

/// How often expired pins are dropped.
const PIN_SWEEP: Duration = Duration::from_secs(10);

/// The engine's shared services (see the module header).
pub(super) struct Cx {
    pub(super) stack: Stack,
    pub(super) pool: SocketPool,
    /// The configuration (the published ports taken out).
    pub(super) cfg: EngineConfig,
    pub(super) dns_rules: DnsRules,
    /// The host's own addresses: judged as the `Loopback` group.
    pub(super) host_addrs: HostAddrs,
    /// The policy has Domain/DomainSuffix rules (so TLS server names matter).
    pub(super) has_name_rules: bool,
    /// Addresses this sandbox's lookups answered, with their names.
    pub(super) pins: Pins,
    next_pin_sweep: Instant,
    pub(super) counters: Counters,
    /// A reused buffer for reading host sockets and peeking at the sandbox's bytes.
    pub(super) scratch: Vec<u8>,
    /// TLS interception, when on.
    pub(super) tls: Option<TlsShared>,
    /// The sandbox's datagrams to one UDP flow, held until the end of a batch of frames.
    pub(super) up_run: UpRun,
    rng: u64,
}

/// A `tls` audit event's own fields.
pub(super) struct TlsAudit<'a> {
    /// The server name (or the address, without one).
    pub(super) sni: &'a str,
    /// `intercepted` or `bypassed`.
    pub(super) action: &'a str,
    /// Whether the server's chain was verified (intercepted connections that came up).
    pub(super) verified: Option<bool>,
    /// The protocol the server chose.
    pub(super) alpn: Option<&'a str>,
}

/// A flow's byte counts and start, for its `close` event.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tally {
    /// Bytes from the sandbox.
    pub(super) up: u64,
    /// Bytes to the sandbox.
    pub(super) down: u64,
    pub(super) started: Instant,
}

impl Tally {
    pub(super) fn new() -> Tally {
        Tally {
            up: 0,
            down: 0,
            started: Instant::now(),
        }
    }
}

impl Cx {
    #[allow(clippy::too_many_arguments)] // The parts the engine assembles, each its own.
    pub(super) fn new(
        stack: Stack,
        pool: SocketPool,
        cfg: EngineConfig,
        dns_rules: DnsRules,
        host_addrs: HostAddrs,
        pins: Pins,
        tls: Option<TlsShared>,
        seed: u64,
    ) -> Cx {
        Cx {
            tls,
            stack,
            pool,
            has_name_rules: cfg.policy.policy().has_name_rules(),
            cfg,
            dns_rules,
            host_addrs,
            pins,
            next_pin_sweep: Instant::now(),
            counters: Counters::default(),
            scratch: vec![0; 65536],
            up_run: UpRun::default(),
            rng: seed,
        }
    }

    /// A random number for query IDs and ICMP identifiers.
    pub(super) fn next_random(&mut self) -> u64 {
        // xorshift64: query IDs need only be unpredictable to the network, not secret.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Reads the host's addresses again (they changed, or may have).
    pub(super) fn refresh_host_addrs(&mut self) {
        if self.host_addrs.refresh() {
            self.dns_rules.set_host_addrs(self.host_addrs.set().clone());
        }
    }

    /// Drops pins past their TTL and grace, every few seconds.
    pub(super) fn sweep_pins(&mut self, now: Instant) {
        if now >= self.next_pin_sweep {
            self.pins.sweep(now);
            self.next_pin_sweep = now + PIN_SWEEP;
        }
    }

    /// Judges an outbound flow of `protocol` to `target` (port `None` for ICMP), with the
    /// names this sandbox's lookups pinned to the address; an allow comes with the permit
    /// to dial.
    pub(super) fn judge(
        &self,
        protocol: Protocol,
        target: IpAddr,
        port: Option<u16>,
    ) -> Result<Permit, Decision> {
        let names = self.pins.names(canonical_addr(target), Instant::now());
        self.cfg.policy.permit(&Flow {
            direction: Direction::Outbound,
            protocol,
            addr: target,
            port,
            names: &names,
            sni: None,
            local: self.host_addrs.contains(target),
        })
    }

    /// Why a TLS server name `name` sent to `addr` could not be allowed by a rule for it,
    /// when DNS did not answer `addr` for it to this sandbox (else empty).
    pub(super) fn unpinned_note(&self, addr: IpAddr, name: &DomainName) -> String {
        let names = self.pins.names(canonical_addr(addr), Instant::now());
        if names.contains(name) {
            return String::new();
        }
        let answered: Vec<&str> = names.iter().map(DomainName::as_str).collect();
        if answered.is_empty() {
            format!(" ({name} was sent to {addr}, an address DNS did not answer for it)")
        } else {
            format!(
                " ({name} was sent to {addr}, an address DNS answered for {}, not for it)",
                answered.join(", ")
            )
        }
    }

    /// Judges an outbound TCP flow to `target` again, now with its TLS server name.
    pub(super) fn judge_sni(&self, target: SocketAddr, name: &DomainName) -> Decision {
        let names = self.pins.names(canonical_addr(target.ip()), Instant::now());
        self.cfg.policy.decide(&Flow {
            direction: Direction::Outbound,
            protocol: Protocol::Tcp,
            addr: target.ip(),
            port: Some(target.port()),
            names: &names,
            sni: Some(name),
            local: self.host_addrs.contains(target.ip()),
        })
    }

    /// Judges a peer reaching published port `guest_port`.
    pub(super) fn judge_inbound(
        &self,
        protocol: Protocol,
        peer: IpAddr,
        guest_port: u16,
    ) -> Decision {
        self.cfg.policy.decide(
            &Flow::inbound(protocol, peer, guest_port).with_local(self.host_addrs.contains(peer)),
        )
    }

    /// The rule label and the reason the audit log gives for `decision`.
    pub(super) fn explain(&self, decision: &Decision) -> (String, String) {
        (decision.rule_label(), self.cfg.policy.reason(decision))
    }

    /// The fields every outbound `connect` event has.
    fn connect_fields(proto: &str, key: FlowKey) -> Vec<(&'static str, Value)> {
        vec![
            ("direction", Value::from("outbound")),
            ("proto", Value::from(proto)),
            ("src", Value::from(key.guest.to_string())),
            ("dst", Value::from(key.host.ip().to_string())),
            ("port", Value::from(key.host.port())),
        ]
    }

    /// The fields of the `connect` event [`Cx::audit_deny`] writes for `key`.
    pub(super) fn deny_fields(&self, proto: &str, key: FlowKey) -> Vec<(&'static str, Value)> {
        let mut fields = Cx::connect_fields(proto, key);
        Cx::push_domain(&mut fields, &self.pinned(key.host.ip()), &Named::Nothing);
        fields
    }

    /// Audits a flow the policy denied.
    pub(super) fn audit_deny(&mut self, proto: &str, key: FlowKey, decision: &Decision) {
        self.counters.denied += 1;
        let (rule, reason) = self.explain(decision);
        let fields = self.deny_fields(proto, key);
        self.cfg
            .audit
            .event("connect", "deny", &rule, &reason, fields);
    }

    /// Audits a flow the policy denied by its TLS server name (`None`: the ClientHello
    /// could not be read).
    pub(super) fn audit_sni_deny(
        &mut self,
        key: FlowKey,
        rule: &str,
        reason: &str,
        sni: Option<&DomainName>,
    ) {
        self.counters.denied += 1;
        let mut fields = Cx::connect_fields("tcp", key);
        // `domain` is what DNS answered for the address and `sni` what the client named:
        // where they differ, a rule for the name could not have allowed it here.
        Cx::push_domain(&mut fields, &self.pinned(key.host.ip()), &Named::Nothing);
        fields.push(("sni", sni.map_or(Value::Null, |n| Value::from(n.as_str()))));
        self.cfg
            .audit
            .event("connect", "deny", rule, reason, fields);
    }

    /// Audits a flow the policy allowed, named by what its first bytes said (`named`: the
    /// TLS server name, which it was judged with too, or its first request's `Host`).
    pub(super) fn audit_allow(
        &mut self,
        proto: &str,
        key: FlowKey,
        rule: &str,
        reason: &str,
        named: &Named,
    ) {
        let pinned = self.pinned(key.host.ip());
        self.audit_allow_pinned(proto, key, rule, reason, named, &pinned);
    }

    /// The names this sandbox's lookups pinned to `addr` now, the most recent first.
    pub(super) fn pinned(&self, addr: IpAddr) -> Vec<DomainName> {
        self.pins.names(canonical_addr(addr), Instant::now())
    }

    /// [`Cx::audit_allow`] for a flow audited after it opened: named among `pinned`, the
    /// names DNS had answered for its address when it opened (a name looked up later is
    /// not what it used).
    pub(super) fn audit_allow_pinned(
        &mut self,
        proto: &str,
        key: FlowKey,
        rule: &str,
        reason: &str,
        named: &Named,
        pinned: &[DomainName],
    ) {
        self.counters.allowed += 1;
        let mut fields = Cx::connect_fields(proto, key);
        Cx::push_domain(&mut fields, pinned, named);
        if let Named::Sni(name) = named {
            fields.push(("sni", Value::from(name.as_str())));
        }
        self.cfg
            .audit
            .event("connect", "allow", rule, reason, fields);
    }

    /// The audit log's `domain`: the name the flow used, by its evidence — the TLS server
    /// name it sent or its first request's `Host`, else the names this sandbox's lookups
    /// pinned to `addr`, the most recently answered first (one string, joined by commas);
    /// absent when there is neither. Its type never varies.
    ///
    /// A server name or `Host` is the program's own claim: it names the flow only when DNS
    /// answered this address for that name. Otherwise the flow is named as if it said
    /// nothing (a TLS server name stays in `sni`), so that neither the record nor
    /// `--learn` turns a claim into a name the run never resolved — a learned rule for it
    /// would grant whatever address DNS later gives that name.
    fn push_domain(fields: &mut Vec<(&'static str, Value)>, names: &[DomainName], named: &Named) {
        if let Some(name) = named.name().filter(|n| names.contains(n)) {
            fields.push(("domain", Value::from(name.as_str())));
            return;
        }
        if !names.is_empty() {
            let joined: Vec<&str> = names.iter().map(DomainName::as_str).collect();
            fields.push(("domain", Value::from(joined.join(","))));
        }
    }

    /// Audits a flow refused by `max_connections`.
    pub(super) fn audit_limit(&mut self, proto: &str, key: FlowKey) {
        let reason = self.limit_reason();
        self.audit_refused("max_connections", &reason, proto, key);
    }

    /// Why `max_connections` refused a flow.
    pub(super) fn limit_reason(&self) -> String {
        format!(
            "{} concurrent connections (max_connections)",
            self.cfg.max_connections
        )
    }

    /// Audits a connection refused because the buffer budget has no room for it.
    pub(super) fn audit_memory(&mut self, proto: &str, key: FlowKey) {
        let reason = format!(
            "the connections' buffers hold {} KiB of max_buffer_memory ({} KiB)",
            self.pool.charged() / 1024,
            self.cfg.max_buffer_memory / 1024
        );
        self.audit_refused("max_buffer_memory", &reason, proto, key);
    }

    fn audit_refused(&mut self, rule: &str, reason: &str, proto: &str, key: FlowKey) {
        self.counters.over_limit += 1;
        let fields = Cx::connect_fields(proto, key);
        self.cfg
            .audit
            .event("connect", "deny", rule, reason, fields);
    }

    /// Audits a refused attempt to use a DNS transport that would bypass the interceptor.
    pub(super) fn audit_bypass(&mut self, proto: &str, key: FlowKey, reason: &str) {
        self.counters.denied += 1;
        let fields = Cx::connect_fields(proto, key);
        self.cfg
            .audit
            .event("connect", "deny", "dns_bypass", reason, fields);
    }

    /// Audits what TLS interception did with a connection; `failed` is why it could not
    /// (a `deny`).
    pub(super) fn audit_tls(
        &mut self,
        key: FlowKey,
        rule: &str,
        tls: &TlsAudit<'_>,
        failed: Option<&str>,
    ) {
        let mut fields = Cx::connect_fields("tcp", key);
        fields.push(("sni", Value::from(tls.sni)));
        fields.push(("tls", Value::from(tls.action)));
        if let Some(v) = tls.verified {
            fields.push(("upstream_verified", Value::from(v)));
        }
        if let Some(alpn) = tls.alpn {
            fields.push(("alpn", Value::from(alpn)));
        }
        let (decision, reason) = match failed {
            Some(why) => ("deny", why.to_owned()),
            None => ("allow", format!("TLS {}", tls.action)),
        };
        self.cfg.audit.event("tls", decision, rule, &reason, fields);
    }

    /// Audits UDP refused because it would be QUIC to an intercepted port.
    pub(super) fn audit_refused_quic(&mut self, key: FlowKey) {
        let fields = Cx::connect_fields("udp", key);
        let reason = "QUIC to an intercepted port is refused so that clients use TLS over TCP (--tls-allow-quic lets it pass)";
        self.cfg
            .audit
            .event("connect", "deny", "block_quic", reason, fields);
    }

    /// One name this sandbox's lookups pinned to `addr`, if any.
    pub(super) fn pinned_name(&self, addr: IpAddr) -> Option<String> {
        self.pins
            .names(canonical_addr(addr), Instant::now())
            .first()
            .map(|n| n.as_str().to_owned())
    }

    /// Secret `i` was swapped on `key` to `host` (`what`: substituted toward the server,
    /// or redacted on the way back): a `secret` event, once per connection and secret.
    pub(super) fn secret_swapped(&mut self, key: FlowKey, host: &str, i: usize, what: &str) {
        let name = self
            .cfg
            .secrets
            .get(i)
            .map_or_else(|| "?".to_owned(), |s| s.name().to_owned());
        let mut fields = Cx::connect_fields("tcp", key);
        fields.push(("name", Value::from(name.as_str())));
        fields.push(("host", Value::from(host)));
        fields.push(("secret", Value::from(what)));
        fields.push(("action", Value::from(what)));
        let reason = match what {
            "redacted" => format!(
                "the value of secret {name} came back from {host} and was replaced by its placeholder"
            ),
            _ => format!(
                "the placeholder of secret {name} was replaced by its value on the way to {host}"
            ),
        };
        self.cfg
            .audit
            .event("secret", "allow", "secret", &reason, fields);
    }

    /// Secret `i`'s placeholder was heading for `host` (on `key`), outside its list: the
    /// `secret` event, and what the action adds — a notice (`BlockAndLog`), or a notice
    /// and a request to stop the sandbox (`BlockAndTerminate`). Returns the secret's name.
    pub(super) fn secret_violation(&mut self, key: FlowKey, host: &str, i: usize) -> String {
        self.secret_violation_on("tcp", key, host, i)
    }

    /// [`Self::secret_violation`] for a flow of `proto`.
    pub(super) fn secret_violation_on(
        &mut self,
        proto: &str,
        key: FlowKey,
        host: &str,
        i: usize,
    ) -> String {
        let name = self
            .cfg
            .secrets
            .get(i)
            .map_or_else(|| "?".to_owned(), |s| s.name().to_owned());
        let action = self.cfg.on_secret_violation;
        let action_name = match action {
            ViolationAction::Block => "block",
            ViolationAction::BlockAndLog => "block_and_log",
            ViolationAction::BlockAndTerminate => "block_and_terminate",
        };
        self.counters.denied += 1;
        let mut fields = Cx::connect_fields(proto, key);
        fields.push(("name", Value::from(name.as_str())));
        fields.push(("host", Value::from(host)));
        fields.push(("secret", Value::from("violation")));
        fields.push(("action", Value::from(action_name)));
        let reason = format!(
            "the placeholder of secret {name} was heading for {host}, which is not among its hosts"
        );
        self.cfg
            .audit
            .event("secret", "deny", "secret", &reason, fields);
        match action {
            ViolationAction::Block => {}
            ViolationAction::BlockAndLog => {
                self.cfg.notices.line(&format!(
                    "warning: blocked {reason} (the connection was reset)"
                ));
            }
            ViolationAction::BlockAndTerminate => {
                let why = format!("error: {reason}; stopping the sandbox (block-and-terminate)");
                self.cfg.notices.line(&why);
                self.cfg.terminate.request(reason);
            }
        }
        name
    }

    /// Audits a peer's connection to a published port.
    pub(super) fn audit_inbound(
        &mut self,
        decision: &str,
        rule: &str,
        reason: &str,
        proto: &str,
        peer: SocketAddr,
        guest_port: u16,
    ) {
        let guest = self.stack.addrs.guest_v4;
        self.cfg.audit.event(
            "connect",
            decision,
            rule,
            reason,
            vec![
                ("direction", Value::from("inbound")),
                ("proto", Value::from(proto)),
                ("src", Value::from(peer.to_string())),
                ("dst", Value::from(guest.to_string())),
                ("port", Value::from(guest_port)),
            ],
        );
    }

    /// Audits the end of a flow that `src` opened to `dst` (`inbound`: a peer of a
    /// published port opened it to the sandbox).
    #[allow(clippy::too_many_arguments)] // The flow's ends, its kind and its tally.
    pub(super) fn audit_close(
        &mut self,
        proto: &str,
        rule: &str,
        inbound: bool,
        src: SocketAddr,
        dst: SocketAddr,
        tally: &Tally,
        why: &CloseReason,
    ) {
        self.cfg.audit.event(
            "close",
            why.decision(),
            rule,
            &why.to_string(),
            vec![
                (
                    "direction",
                    Value::from(if inbound { "inbound" } else { "outbound" }),
                ),
                ("proto", Value::from(proto)),
                ("src", Value::from(src.to_string())),
                ("dst", Value::from(dst.ip().to_string())),
                ("port", Value::from(dst.port())),
                ("bytes_up", Value::from(tally.up)),
                ("bytes_down", Value::from(tally.down)),
                (
                    "duration_ms",
                    Value::from(tally.started.elapsed().as_millis() as u64),
                ),
            ],
        );
    }
}
/// Datagrams from the sandbox to one flow, held while the loop reads a batch of frames, so
/// a run of one size (the last may be shorter) leaves in one system call: the kernel sends
/// it as the same datagrams (UDP segmentation offload, `UDP_SEGMENT`). The loop sends what
/// is held at the end of each batch (`on_udp::flush_up`).
#[derive(Default)]
pub(super) struct UpRun {
    /// The flow the run is for.
    pub(super) flow: Option<FlowId>,
    /// The datagrams' sizes.
    pub(super) run: UdpRun,
    /// The datagrams, one after another.
    pub(super) bytes: Vec<u8>,
}
