//! DNS interception in the engine: every UDP and TCP port-53 flow from the sandbox,
//! whatever address it was sent to, is answered here (shared/DESIGN.md, "DNS is forwarded
//! at the message level"). This file holds the flows' state (a query, a resolver's socket,
//! a DNS-over-TCP flow); what the loop does with them, the flow table's part, is
//! `on_dns.rs`.
//!
//! A query is parsed; a blocked name (block lists, or a deny rule that names it first) or a
//! name no rule could allow a connection to (DNS is egress) gets NXDOMAIN without leaving
//! the host; otherwise a query written anew from the parsed one (its question, RD/CD, EDNS
//! payload size and DO bit only, a random ID) goes upstream, to the resolvers in order (next
//! on timeout or transport error). The answer is checked (it must
//! answer our question), its CNAME chain is checked against the block lists, addresses
//! pointing inward are removed (rebind protection; an answer left without addresses becomes
//! NXDOMAIN), the remaining addresses are pinned to the names, and the sandbox gets it with
//! its own ID — truncated (TC) when larger than its UDP limit, so it retries over TCP.
//!
//! Queries to one resolver share a few long-lived upstream sockets
//! ([`SOCKETS_PER_RESOLVER`], each on its own random port, taken in turn): an answer is
//! matched to its query by the socket it came to (connected: only the resolver's datagrams
//! arrive) and its ID (random, unique on that socket), then checked against the question.
//! A socket is replaced, for a new port, after [`QUERIES_PER_SOCKET`] queries; one the
//! resolver refuses (ICMP) sends its queries to the next resolver and is replaced too. Per
//! query that is a send and a receive — no socket to open, register and close each time.
//!
//! Over TCP the sandbox's stream is terminated here (never relayed): length-prefixed
//! queries (RFC 1035 §4.2.2) are taken one by one through the same steps, and answers
//! written back in the same framing.
//!
//! In deny mode `explain` a refused lookup's NXDOMAIN also says why: an Extended DNS Error
//! (RFC 8914) whose text is one line naming the reason and, when the policy refused the
//! name, the `--allow` flag the run's summary would suggest. Its info code is Blocked (15)
//! for moat's own filters (block lists, rebinding protection, a CNAME chain through a
//! blocked name, a secret's placeholder in the name) and Prohibited (18) when the sandbox's
//! policy does not let it reach the name. The EDE lives in an OPT record, which RFC 6891 §7
//! forbids in the answer to a query without one: a query without EDNS gets the plain
//! NXDOMAIN, as under `reject` (dig, and most stub resolvers, ask with EDNS).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use mio::Registry;
use mio::net::UdpSocket;
use moat_dns::framing::TcpFraming;
use moat_dns::message::{Edns, Question};
use moat_policy::{DomainName, NamePermit};
use smoltcp::iface::SocketHandle;

use super::budget::Grant;
use super::close::CloseReason;
use super::cx::{Cx, Tally};
use super::key::{Due, FlowId, FlowKey};

/// Where an answer goes.
#[derive(Debug, Clone, Copy)]
pub(super) enum ReplyTo {
    /// A UDP datagram from `asked` to `guest`.
    Udp {
        guest: SocketAddr,
        asked: SocketAddr,
    },
    /// The DNS-over-TCP flow `flow`.
    Tcp { flow: FlowId },
}

/// A query in flight upstream.
pub(super) struct DnsQuery {
    pub(super) reply: ReplyTo,
    pub(super) original_id: u16,
    /// The message as sent upstream (with moat's ID).
    pub(super) message: Vec<u8>,
    pub(super) question: Question,
    pub(super) name: DomainName,
    pub(super) client_limit: usize,
    /// The sandbox's EDNS, for an Extended DNS Error if the answer is refused.
    pub(super) edns: Option<Edns>,
    /// The rule that let the name be forwarded.
    pub(super) rule: String,
    /// The policy's leave to forward the lookup.
    pub(super) permit: NamePermit,
    pub(super) server: usize,
    /// The upstream socket of the current attempt.
    pub(super) on: Option<FlowId>,
    pub(super) deadline: Instant,
}

/// Upstream sockets kept per resolver.
pub(super) const SOCKETS_PER_RESOLVER: usize = 16;
/// Queries a socket carries before it is replaced by one on a new random port.
pub(super) const QUERIES_PER_SOCKET: u32 = 4096;

/// The upstream sockets of each resolver (by index in the configuration).
#[derive(Debug, Default)]
pub(super) struct ResolverPool {
    pub(super) by_server: Vec<Vec<FlowId>>,
    pub(super) next: usize,
}

/// One upstream socket, shared by the queries to one resolver.
pub(super) struct DnsUpstream {
    pub(super) sock: UdpSocket,
    pub(super) server: usize,
    /// Queries sent from it so far.
    pub(super) sent: u32,
    /// Queries waiting for their answer, by the ID they were sent with.
    pub(super) inflight: HashMap<u16, FlowId>,
}

impl DnsUpstream {
    /// Releases the socket (called by the flow table).
    pub(super) fn close(mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.sock);
    }

    /// Forgets query `query` (answered, failed, or asking elsewhere) sent with `id`.
    pub(super) fn forget(&mut self, id: u16, query: FlowId) {
        if self.inflight.get(&id) == Some(&query) {
            self.inflight.remove(&id);
        }
    }
}

/// A DNS-over-TCP connection from the sandbox, answered here.
pub(super) struct DnsStream {
    pub(super) key: FlowKey,
    pub(super) handle: SocketHandle,
    /// What the socket's buffers are charged.
    pub(super) mem: Grant,
    pub(super) framing: TcpFraming,
    /// Its queries upstream now.
    pub(super) pending: usize,
    pub(super) started: Instant,
}

/// The ID of a query moat wrote (always a whole header).
pub(super) fn sent_id(message: &[u8]) -> u16 {
    moat_dns::id(message).unwrap_or(0)
}

impl DnsQuery {
    /// What the sweep should do.
    pub(super) fn due(&self, now: Instant) -> Due {
        if now >= self.deadline {
            Due::NextResolver
        } else {
            Due::Nothing
        }
    }

    /// The query is done (called by the flow table): the upstream socket it waited on
    /// (with the ID it was sent with), and where its answer went, for [`query_done`].
    pub(super) fn close(self) -> (Option<(FlowId, u16)>, ReplyTo) {
        let on = self.on.map(|up| (up, sent_id(&self.message)));
        (on, self.reply)
    }
}

impl DnsStream {
    /// One of its queries has ended: it may take more.
    pub(super) fn query_done(&mut self) {
        self.pending = self.pending.saturating_sub(1);
    }

    pub(super) fn key(&self) -> FlowKey {
        self.key
    }

    /// The smoltcp socket the sandbox's connection runs through.
    pub(super) fn handle(&self) -> SocketHandle {
        self.handle
    }

    /// Resets the sandbox's side (the engine is stopping).
    pub(super) fn abort_guest(&mut self, cx: &mut Cx) {
        cx.stack.tcp(self.handle).abort();
    }

    /// Gives the socket back and audits the end (called by the flow table).
    pub(super) fn close(self, cx: &mut Cx, why: &CloseReason) {
        cx.pool
            .recycle(&mut cx.stack.sockets, self.handle, self.mem);
        let tally = Tally {
            up: 0,
            down: 0,
            started: self.started,
        };
        let (src, dst) = (self.key.guest, self.key.host);
        cx.audit_close("tcp", "dns", false, src, dst, &tally, why);
    }
}
