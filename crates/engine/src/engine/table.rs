//! The flow table: every flow the engine holds, in one place. This is where flows get a
//! slot and a poll token, where they are found by their key, where the limits are
//! counted, where idle ones expire, and where every flow is removed, with a
//! [`CloseReason`] that becomes the audit log's `close` event.
//!
//! # Theory of operation
//! A flow lives in a slot of one vector; its index is its [`FlowId`], and the host socket
//! it owns is registered with the poll under the token `FIRST_FLOW + id`, so an event
//! leads straight back to its flow. Freed slots are reused. Each kind is also found by
//! its key: TCP connections (DNS over TCP and refusals too) and UDP flows by their [`FlowKey`], echo
//! flows by (sandbox address, destination, identifier), inbound UDP flows by both their
//! peer and their key.
//!
//! A flow is created in two steps — [`FlowTable::open`] (a slot, its socket registered)
//! then [`FlowTable::insert`] (indexed and counted) — and removed in one,
//! [`FlowTable::remove`], which unindexes it, gives back its counts and hands it to its
//! kind's `close` to release its sockets and write the `close` event. TCP connections, UDP
//! flows and inbound UDP flows count toward `max_connections`, refused connections moat
//! answers (deny mode `explain`) too and toward their own cap; DNS queries toward their
//! own cap. A flow that must reset the sandbox first is *doomed*: removed after the next
//! egress, once smoltcp has sent the RST.
//!
//! The sweep ([`sweep`], every 200 ms) asks each flow what is due (see [`Due`]).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use mio::{Interest, Registry};

use super::close::CloseReason;
use super::cx::Cx;
use super::dns_flow::{DnsQuery, DnsStream, DnsUpstream, ReplyTo, ResolverPool};
use super::echo::EchoFlow;
use super::inbound::UdpIn;
use super::key::{EchoKey, FlowId, FlowKey};
use super::refusal::Refusal;
use super::tcp_flow::TcpFlow;
use super::udp_flow::UdpFlow;

/// Every kind of flow.
pub(super) enum Flow {
    /// A TCP connection, outbound or through a published port.
    Tcp(TcpFlow),
    /// A UDP flow from the sandbox.
    Udp(UdpFlow),
    /// A peer of a published UDP port.
    UdpIn(UdpIn),
    /// ICMP echo to one destination.
    Echo(EchoFlow),
    /// A DNS query upstream.
    DnsQuery(DnsQuery),
    /// A DNS-over-TCP connection from the sandbox, answered by moat.
    DnsStream(DnsStream),
    /// A refused TCP connection answered by moat (deny mode `explain`).
    Refusal(Refusal),
    /// A socket to a resolver, shared by queries.
    DnsUpstream(DnsUpstream),
}

/// Where a flow is indexed.
enum Index {
    Tcp(FlowKey),
    Udp(FlowKey),
    UdpIn {
        listener: usize,
        peer: SocketAddr,
        key: FlowKey,
    },
    Echo(EchoKey),
    None,
}

impl Flow {
    fn index(&self) -> Index {
        match self {
            Flow::Tcp(f) => Index::Tcp(f.key()),
            Flow::DnsStream(s) => Index::Tcp(s.key()),
            Flow::Refusal(r) => Index::Tcp(r.key()),
            Flow::Udp(f) => Index::Udp(f.key()),
            Flow::UdpIn(f) => Index::UdpIn {
                listener: f.listener,
                peer: f.peer,
                key: f.key(),
            },
            Flow::Echo(e) => Index::Echo(e.key()),
            Flow::DnsQuery(_) | Flow::DnsUpstream(_) => Index::None,
        }
    }

    /// Whether it counts toward `max_connections`.
    fn is_connection(&self) -> bool {
        !matches!(
            self,
            Flow::Echo(_) | Flow::DnsQuery(_) | Flow::DnsUpstream(_)
        )
    }
}

/// The flows (see the module header).
pub(super) struct FlowTable {
    slots: Vec<Option<Flow>>,
    free: Vec<usize>,
    registry: Registry,
    tcp: HashMap<FlowKey, FlowId>,
    udp: HashMap<FlowKey, FlowId>,
    udp_in_by_peer: HashMap<(usize, SocketAddr), FlowId>,
    udp_in: HashMap<FlowKey, FlowId>,
    echo: HashMap<EchoKey, FlowId>,
    /// Flows counted toward `max_connections`.
    connections: usize,
    max_connections: usize,
    dns_in_flight: usize,
    /// Refused connections moat answers itself, held now.
    refusals: usize,
    /// The sockets to each resolver (`dns_flow.rs`).
    pub(super) resolvers: ResolverPool,
    /// Flows with work to do before the loop sleeps.
    dirty: HashSet<FlowId>,
    /// Flows to remove once their RST is out.
    doomed: Vec<(FlowId, CloseReason)>,
}

/// DNS queries in flight at once.
pub(super) const MAX_DNS_IN_FLIGHT: usize = 256;
/// ICMP echo flows (sandbox identifier × destination) at once.
const MAX_ECHO_FLOWS: usize = 64;

impl FlowTable {
    /// An empty table whose flows register their sockets with `registry`.
    pub(super) fn new(registry: Registry, max_connections: usize) -> FlowTable {
        FlowTable {
            slots: Vec::new(),
            free: Vec::new(),
            registry,
            tcp: HashMap::new(),
            udp: HashMap::new(),
            udp_in_by_peer: HashMap::new(),
            udp_in: HashMap::new(),
            echo: HashMap::new(),
            connections: 0,
            max_connections,
            dns_in_flight: 0,
            refusals: 0,
            resolvers: ResolverPool::default(),
            dirty: HashSet::new(),
            doomed: Vec::new(),
        }
    }

    pub(super) fn get(&self, id: FlowId) -> Option<&Flow> {
        self.slots.get(id.slot()).and_then(Option::as_ref)
    }

    pub(super) fn get_mut(&mut self, id: FlowId) -> Option<&mut Flow> {
        self.slots.get_mut(id.slot()).and_then(Option::as_mut)
    }

    /// The TCP connection (or DNS-over-TCP one) on `key`.
    pub(super) fn find_tcp(&self, key: &FlowKey) -> Option<FlowId> {
        self.tcp.get(key).copied()
    }

    /// The UDP flow on `key`.
    pub(super) fn find_udp(&self, key: &FlowKey) -> Option<FlowId> {
        self.udp.get(key).copied()
    }

    /// The inbound UDP flow the sandbox answers on `key`.
    pub(super) fn find_udp_in(&self, key: &FlowKey) -> Option<FlowId> {
        self.udp_in.get(key).copied()
    }

    /// The inbound UDP flow of `peer` on published port `listener`.
    pub(super) fn find_udp_in_by_peer(&self, listener: usize, peer: SocketAddr) -> Option<FlowId> {
        self.udp_in_by_peer.get(&(listener, peer)).copied()
    }

    /// The echo flow on `key`.
    pub(super) fn find_echo(&self, key: &EchoKey) -> Option<FlowId> {
        self.echo.get(key).copied()
    }

    /// Whether `max_connections` flows are open.
    pub(super) fn connections_full(&self) -> bool {
        self.connections >= self.max_connections
    }

    /// Whether as many DNS queries are upstream as may be.
    pub(super) fn dns_full(&self) -> bool {
        self.dns_in_flight >= MAX_DNS_IN_FLIGHT
    }

    /// Refused connections moat holds to answer them (deny mode `explain`).
    pub(super) fn refusals(&self) -> usize {
        self.refusals
    }

    /// Whether as many echo flows are open as may be.
    pub(super) fn echo_full(&self) -> bool {
        self.echo.len() >= MAX_ECHO_FLOWS
    }

    /// A slot for a new flow without a socket of its own yet; fill it with
    /// [`Self::insert`] (or give it back with [`Self::release`]).
    pub(super) fn reserve(&mut self) -> FlowId {
        FlowId::at(self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        }))
    }

    /// Gives back a slot that was reserved and never filled.
    pub(super) fn release(&mut self, id: FlowId) {
        if self.slots.get(id.slot()).is_some_and(Option::is_none) {
            self.free.push(id.slot());
        }
    }

    /// A slot for a new flow with `source` registered under its token; `None` (and
    /// nothing taken) when registration fails.
    pub(super) fn open(
        &mut self,
        source: &mut impl mio::event::Source,
        interest: Interest,
    ) -> Option<FlowId> {
        let id = self.reserve();
        if self
            .registry
            .register(source, id.token(), interest)
            .is_err()
        {
            self.release(id);
            return None;
        }
        Some(id)
    }

    /// Puts `flow` in slot `id`, indexes and counts it.
    pub(super) fn insert(&mut self, id: FlowId, flow: Flow) {
        match flow.index() {
            Index::Tcp(key) => {
                self.tcp.insert(key, id);
            }
            Index::Udp(key) => {
                self.udp.insert(key, id);
            }
            Index::UdpIn {
                listener,
                peer,
                key,
            } => {
                self.udp_in_by_peer.insert((listener, peer), id);
                self.udp_in.insert(key, id);
            }
            Index::Echo(key) => {
                self.echo.insert(key, id);
            }
            Index::None => {}
        }
        if flow.is_connection() {
            self.connections += 1;
        }
        if matches!(flow, Flow::DnsQuery(_)) {
            self.dns_in_flight += 1;
        }
        if matches!(flow, Flow::Refusal(_)) {
            self.refusals += 1;
        }
        if let Some(slot) = self.slots.get_mut(id.slot()) {
            *slot = Some(flow);
        }
    }

    /// How many slots there are (a flow's id is below it).
    pub(super) fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Every flow's id (tests look at what the table holds).
    #[cfg(test)]
    pub(super) fn ids(&self) -> Vec<FlowId> {
        (0..self.slots.len())
            .map(FlowId::at)
            .filter(|&id| self.get(id).is_some())
            .collect()
    }

    /// Marks flow `id` as having work to do in this turn of the loop.
    pub(super) fn touch(&mut self, id: FlowId) {
        self.dirty.insert(id);
    }

    /// Whether a flow is marked (the loop must not sleep before it is served).
    pub(super) fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// The flows marked since the last call.
    pub(super) fn take_dirty(&mut self) -> Vec<FlowId> {
        self.dirty.drain().collect()
    }

    /// Removes flow `id` after the next egress (its RST goes out first).
    pub(super) fn doom(&mut self, id: FlowId, why: CloseReason) {
        self.doomed.push((id, why));
    }

    /// Removes the doomed flows.
    pub(super) fn remove_doomed(&mut self, cx: &mut Cx) {
        for (id, why) in std::mem::take(&mut self.doomed) {
            self.remove(id, why, cx);
        }
    }

    /// Removes flow `id`: unindexed, uncounted, its sockets released and its end audited.
    pub(super) fn remove(&mut self, id: FlowId, why: CloseReason, cx: &mut Cx) {
        let Some(flow) = self.slots.get_mut(id.slot()).and_then(Option::take) else {
            return;
        };
        self.free.push(id.slot());
        match flow.index() {
            Index::Tcp(key) => {
                self.tcp.remove(&key);
            }
            Index::Udp(key) => {
                self.udp.remove(&key);
            }
            Index::UdpIn {
                listener,
                peer,
                key,
            } => {
                self.udp_in_by_peer.remove(&(listener, peer));
                self.udp_in.remove(&key);
            }
            Index::Echo(key) => {
                self.echo.remove(&key);
            }
            Index::None => {}
        }
        if flow.is_connection() {
            self.connections -= 1;
        }
        let registry = &self.registry;
        match flow {
            Flow::Tcp(f) => f.close(cx, &why),
            Flow::Udp(f) => f.close(registry, cx, &why),
            Flow::UdpIn(f) => f.close(cx, &why),
            Flow::Echo(f) => f.close(registry),
            Flow::DnsStream(s) => s.close(cx, &why),
            Flow::Refusal(r) => {
                self.refusals -= 1;
                r.close(cx);
            }
            Flow::DnsQuery(q) => {
                self.dns_in_flight -= 1;
                let (on, reply) = q.close();
                if let Some((up, qid)) = on
                    && let Some(Some(Flow::DnsUpstream(u))) = self.slots.get_mut(up.slot())
                {
                    u.forget(qid, id);
                }
                // Its DNS-over-TCP flow may take more.
                if let ReplyTo::Tcp { flow } = reply
                    && let Some(Some(Flow::DnsStream(s))) = self.slots.get_mut(flow.slot())
                {
                    s.query_done();
                    self.touch(flow);
                }
            }
            Flow::DnsUpstream(u) => u.close(registry),
        }
    }

    /// Resets every TCP connection, sends the resets, and removes every flow.
    pub(super) fn close_all(&mut self, cx: &mut Cx) {
        for flow in self.slots.iter_mut().flatten() {
            match flow {
                Flow::Tcp(f) => f.abort_guest(cx),
                Flow::DnsStream(s) => s.abort_guest(cx),
                Flow::Refusal(r) => r.abort_guest(cx),
                _ => {}
            }
        }
        // The resets go out before the sockets are dropped.
        cx.stack.egress();
        for id in 0..self.slots.len() {
            self.remove(FlowId::at(id), CloseReason::SandboxStopped, cx);
        }
    }
}
