//! DNS interception in the engine: every UDP and TCP port-53 flow from the sandbox,
//! whatever address it was sent to, is answered here (shared/DESIGN.md, "DNS is forwarded
//! at the message level").
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
//! Over TCP the sandbox's stream is terminated here (never relayed): length-prefixed
//! queries (RFC 1035 §4.2.2) are taken one by one through the same steps, and answers
//! written back in the same framing.

use std::net::SocketAddr;
use std::time::Instant;

use mio::net::UdpSocket;
use mio::{Interest, Token};
use moat_policy::{DecidedBy, DomainName, NamePermit, canonical_addr};
use serde_json::Value;
use smoltcp::socket::tcp;

use super::close::CloseReason;
use super::{Engine, FIRST_FLOW, FlowEntry, MAX_DNS_IN_FLIGHT};
use crate::dns::filter;
use crate::dns::framing::TcpFraming;
use crate::dns::message::{Message, Question, flags, rcode};
use crate::wire;

/// Where an answer goes.
#[derive(Debug, Clone, Copy)]
pub(super) enum ReplyTo {
    /// A UDP datagram from `asked` to `guest`.
    Udp {
        guest: SocketAddr,
        asked: SocketAddr,
    },
    /// The DNS-over-TCP flow `flow`.
    Tcp { flow: usize },
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
    /// The rule that let the name be forwarded.
    pub(super) rule: String,
    /// The policy's leave to forward the lookup.
    pub(super) permit: NamePermit,
    pub(super) server: usize,
    /// The socket of the current attempt.
    pub(super) sock: Option<UdpSocket>,
    pub(super) deadline: Instant,
}

/// A DNS-over-TCP connection from the sandbox, answered here.
pub(super) struct DnsStream {
    pub(super) guest: SocketAddr,
    pub(super) remote: SocketAddr,
    pub(super) handle: smoltcp::iface::SocketHandle,
    /// What the socket's buffers are charged.
    pub(super) mem: super::budget::Grant,
    pub(super) framing: TcpFraming,
    pub(super) pending: usize,
    pub(super) started: Instant,
}

/// Queries one DNS-over-TCP connection may have upstream at once.
const MAX_PENDING_PER_STREAM: usize = 16;

impl Engine {
    /// A DNS message from the sandbox.
    pub(super) fn dns_from_guest(&mut self, payload: &[u8], reply: ReplyTo) {
        let Ok(msg) = Message::parse(payload) else {
            // Not DNS: dropped, never forwarded (port 53 is not a tunnel).
            self.counters.dns_dropped += 1;
            return;
        };
        if msg.flags & flags::QR != 0 || msg.questions.len() != 1 {
            self.counters.dns_dropped += 1;
            return;
        }
        if msg.flags & flags::OPCODE != 0 {
            self.dns_deliver(reply, &msg.reply_with(rcode::NOTIMP).to_bytes());
            return;
        }
        let question = msg.questions[0].clone();
        let qtype = question.qtype;
        let shown = question
            .name
            .to_text()
            .unwrap_or_else(|| "(not a host name)".to_owned());
        let Some(name) = question
            .name
            .to_text()
            .and_then(|t| DomainName::new(&t).ok())
        else {
            self.audit_dns(
                &shown,
                qtype,
                "deny",
                "invalid",
                "not a valid host name",
                None,
                &[],
            );
            self.dns_deliver(reply, &msg.reply_with(rcode::NXDOMAIN).to_bytes());
            return;
        };
        if let Some(blocked) = self.dns_rules.blocked(&name) {
            let reason = format!("{} is on the {} list", name, blocked.label());
            self.audit_dns(
                name.as_str(),
                qtype,
                "deny",
                blocked.label(),
                &reason,
                Some(blocked.label()),
                &[],
            );
            self.dns_deliver(reply, &msg.reply_with(rcode::NXDOMAIN).to_bytes());
            return;
        }
        let permit = match self.cfg.policy.permit_name(&name) {
            Ok(permit) => permit,
            Err(decision) => {
                let reason = match decision.by {
                    DecidedBy::Default => {
                        "no rule could allow a connection to this name (DNS is egress)".to_owned()
                    }
                    _ => self.cfg.policy.reason(&decision),
                };
                let rule = decision.rule_label();
                self.audit_dns(
                    name.as_str(),
                    qtype,
                    "deny",
                    &rule,
                    &reason,
                    Some("policy"),
                    &[],
                );
                self.dns_deliver(reply, &msg.reply_with(rcode::NXDOMAIN).to_bytes());
                return;
            }
        };
        if self.dns_in_flight >= MAX_DNS_IN_FLIGHT || self.cfg.dns_servers.is_empty() {
            self.counters.dns_servfail += 1;
            self.dns_deliver(reply, &msg.reply_with(rcode::SERVFAIL).to_bytes());
            return;
        }
        let our_id = self.next_random() as u16;
        // Written anew, not forwarded: nothing but the question leaves (see
        // `Message::upstream_query`).
        let Some(message) = msg.upstream_query(our_id) else {
            self.dns_deliver(reply, &msg.reply_with(rcode::FORMERR).to_bytes());
            return;
        };
        self.counters.dns_queries += 1;
        if let ReplyTo::Tcp { flow } = reply
            && let Some(Some(FlowEntry::DnsTcp(s))) = self.flows.get_mut(flow)
        {
            s.pending += 1;
        }
        let id = self.slot();
        self.flows[id] = Some(FlowEntry::Dns(DnsQuery {
            reply,
            original_id: msg.id,
            message,
            question,
            name,
            client_limit: msg.udp_limit(),
            rule: permit.decision().rule_label(),
            permit,
            server: 0,
            sock: None,
            deadline: Instant::now(),
        }));
        self.dns_in_flight += 1;
        self.dns_try(id, 0);
    }

    /// Sends query `id` to upstream `server`, or the next that works; SERVFAIL when none.
    pub(super) fn dns_try(&mut self, id: usize, mut server: usize) {
        loop {
            let Some(&upstream) = self.cfg.dns_servers.get(server) else {
                self.dns_fail(id);
                return;
            };
            let Some(Some(FlowEntry::Dns(q))) = self.flows.get_mut(id) else {
                return;
            };
            let attempt = super::dial::resolver(upstream, &q.permit, &q.message);
            match attempt {
                Ok(mut sock) => {
                    if let Some(old) = q.sock.as_mut() {
                        let _ = self.poll.registry().deregister(old);
                    }
                    if self
                        .poll
                        .registry()
                        .register(&mut sock, Token(id + FIRST_FLOW), Interest::READABLE)
                        .is_err()
                    {
                        server += 1;
                        continue;
                    }
                    q.sock = Some(sock);
                    q.server = server;
                    q.deadline = Instant::now() + self.cfg.dns_timeout;
                    return;
                }
                Err(_) => server += 1,
            }
        }
    }

    fn dns_fail(&mut self, id: usize) {
        let Some(Some(FlowEntry::Dns(q))) = self.flows.get_mut(id) else {
            return;
        };
        let answer = Message {
            id: q.original_id,
            flags: flags::QR | flags::RD | flags::RA | rcode::SERVFAIL,
            questions: vec![q.question.clone()],
            ..Message::default()
        };
        let (reply, name, qtype) = (q.reply, q.name.clone(), q.question.qtype);
        self.counters.dns_servfail += 1;
        self.audit_dns(
            name.as_str(),
            qtype,
            "allow",
            "-",
            "every upstream resolver failed: SERVFAIL",
            None,
            &[],
        );
        self.dns_deliver(reply, &answer.to_bytes());
        self.remove(id, CloseReason::DnsFailed);
    }

    /// An upstream socket of query `id` is readable.
    pub(super) fn dns_readable(&mut self, id: usize) {
        let mut buf = std::mem::take(&mut self.scratch);
        while let Some(Some(FlowEntry::Dns(q))) = self.flows.get_mut(id) {
            let Some(sock) = q.sock.as_ref() else { break };
            match sock.recv(&mut buf) {
                Ok(n) => {
                    if crate::dns::id(&buf[..n]) != crate::dns::id(&q.message)
                        || !crate::dns::is_response(&buf[..n])
                    {
                        continue;
                    }
                    if self.dns_answer(id, &buf[..n]) {
                        self.remove(id, CloseReason::Answered);
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // Transport error (e.g. ICMP port unreachable): next upstream.
                Err(_) => {
                    let next = q.server + 1;
                    self.scratch = buf;
                    self.dns_try(id, next);
                    return;
                }
            }
        }
        self.scratch = buf;
    }

    /// Processes an upstream answer for query `id`; `false` when it does not answer our
    /// question (ignored: a late or forged datagram).
    fn dns_answer(&mut self, id: usize, bytes: &[u8]) -> bool {
        let Some(Some(FlowEntry::Dns(q))) = self.flows.get(id) else {
            return true;
        };
        let (reply, original_id, name, question, limit, rule) = (
            q.reply,
            q.original_id,
            q.name.clone(),
            q.question.clone(),
            q.client_limit,
            q.rule.clone(),
        );
        let qtype = question.qtype;
        let Ok(mut msg) = Message::parse(bytes) else {
            let fail = Message {
                id: original_id,
                flags: flags::QR | flags::RD | flags::RA | rcode::SERVFAIL,
                questions: vec![question],
                ..Message::default()
            };
            self.audit_dns(
                name.as_str(),
                qtype,
                "allow",
                &rule,
                "malformed upstream answer: SERVFAIL",
                None,
                &[],
            );
            self.dns_deliver(reply, &fail.to_bytes());
            return true;
        };
        let same = msg.questions.len() == 1
            && msg.questions[0].qtype == question.qtype
            && msg.questions[0].name.eq_ignore_case(&question.name);
        if !same {
            return false;
        }
        msg.id = original_id;
        // A CNAME chain through a blocked name is blocked too.
        let chain = filter::chain(&msg);
        for link in &chain {
            let blocked = self
                .dns_rules
                .blocked(link)
                .map(|b| b.label().to_owned())
                .or_else(|| {
                    self.cfg
                        .policy
                        .name_rule_denies(link)
                        .map(|d| d.rule_label())
                });
            if let Some(by) = blocked {
                let reason =
                    format!("the answer's CNAME chain passes through {link}, which is blocked");
                self.audit_dns(
                    name.as_str(),
                    qtype,
                    "deny",
                    &by,
                    &reason,
                    Some("cname"),
                    &[],
                );
                self.dns_deliver(reply, &msg.reply_with(rcode::NXDOMAIN).to_bytes());
                return true;
            }
        }
        let (before, after) = self.dns_rules.filter(&mut msg);
        if before > 0 && after == 0 {
            let reason = "every address in the answer points inward (rebind protection)";
            self.audit_dns(
                name.as_str(),
                qtype,
                "deny",
                "rebind",
                reason,
                Some("rebind_protection"),
                &[],
            );
            self.dns_deliver(reply, &msg.reply_with(rcode::NXDOMAIN).to_bytes());
            return true;
        }
        let now = Instant::now();
        let addresses = filter::addresses(&msg);
        for (addr, ttl) in &addresses {
            let addr = canonical_addr(*addr);
            self.pins.pin(addr, &name, *ttl, now);
            for link in &chain {
                self.pins.pin(addr, link, *ttl, now);
            }
        }
        let shown: Vec<String> = addresses.iter().map(|(a, _)| a.to_string()).collect();
        let reason = if before > after {
            format!(
                "forwarded; {} inward address(es) removed (rebind protection)",
                before - after
            )
        } else {
            "forwarded".to_owned()
        };
        self.audit_dns(name.as_str(), qtype, "allow", &rule, &reason, None, &shown);
        let mut bytes = msg.to_bytes();
        if matches!(reply, ReplyTo::Udp { .. }) && bytes.len() > limit {
            // RFC 1035 §4.2.1 / RFC 6891 §7: too big for the client's UDP limit; TC tells
            // it to ask again over TCP, which is intercepted the same way.
            let mut tc = msg.reply_with(msg.rcode());
            tc.flags |= flags::TC;
            tc.flags |= msg.flags & 0x0400; // keep AA
            bytes = tc.to_bytes();
        }
        self.dns_deliver(reply, &bytes);
        true
    }

    /// Sends an answer to the sandbox.
    pub(super) fn dns_deliver(&mut self, reply: ReplyTo, bytes: &[u8]) {
        match reply {
            ReplyTo::Udp { guest, asked } => {
                let mut out = std::mem::take(&mut self.tx_buf);
                if wire::udp_to_guest(&mut out, &self.link, asked, guest, bytes) {
                    self.send_frame(&out);
                }
                self.tx_buf = out;
            }
            ReplyTo::Tcp { flow } => {
                let Some(Some(FlowEntry::DnsTcp(s))) = self.flows.get_mut(flow) else {
                    return;
                };
                let socket = self.sockets.get_mut::<tcp::Socket>(s.handle);
                let Ok(len) = u16::try_from(bytes.len()) else {
                    return;
                };
                if socket.send_capacity() - socket.send_queue() >= bytes.len() + 2 {
                    let _ = socket.send_slice(&len.to_be_bytes());
                    let _ = socket.send_slice(bytes);
                }
                self.dirty.insert(flow);
            }
        }
    }

    /// Answers that finished for a DNS-over-TCP flow.
    pub(super) fn dns_stream_done(&mut self, reply: ReplyTo) {
        if let ReplyTo::Tcp { flow } = reply
            && let Some(Some(FlowEntry::DnsTcp(s))) = self.flows.get_mut(flow)
        {
            s.pending = s.pending.saturating_sub(1);
            self.dirty.insert(flow);
        }
    }

    /// Moves a DNS-over-TCP flow along: reads whole queries, closes when the sandbox has.
    pub(super) fn dns_stream_relay(&mut self, id: usize) {
        let Some(Some(FlowEntry::DnsTcp(s))) = self.flows.get_mut(id) else {
            return;
        };
        let socket = self.sockets.get_mut::<tcp::Socket>(s.handle);
        while socket.can_recv() && s.framing.room() > 0 && s.pending < MAX_PENDING_PER_STREAM {
            let framing = &mut s.framing;
            let got = socket.recv(|buf| {
                let n = framing.push(buf);
                (n, n)
            });
            if !matches!(got, Ok(n) if n > 0) {
                break;
            }
        }
        let mut queries = Vec::new();
        while s.pending + queries.len() < MAX_PENDING_PER_STREAM {
            let Some(query) = s.framing.next_message() else {
                break;
            };
            queries.push(query);
        }
        let state = socket.state();
        let guest_done = matches!(
            state,
            tcp::State::CloseWait | tcp::State::LastAck | tcp::State::Closed | tcp::State::TimeWait
        );
        if guest_done && s.pending == 0 && queries.is_empty() && state == tcp::State::CloseWait {
            socket.close();
        }
        let closed = matches!(socket.state(), tcp::State::Closed | tcp::State::TimeWait);
        for q in queries {
            self.dns_from_guest(&q, ReplyTo::Tcp { flow: id });
        }
        if closed {
            self.remove(id, CloseReason::Closed);
        }
    }

    #[allow(clippy::too_many_arguments)] // The fields of one audit event.
    pub(super) fn audit_dns(
        &mut self,
        name: &str,
        qtype: u16,
        decision: &str,
        rule: &str,
        reason: &str,
        blocked_by: Option<&str>,
        answers: &[String],
    ) {
        let mut fields = vec![
            ("name", Value::from(name)),
            ("qtype", Value::from(qtype_name(qtype))),
            ("answers", Value::from(answers.to_vec())),
        ];
        if let Some(b) = blocked_by {
            fields.push(("blocked_by", Value::from(b)));
        }
        self.cfg.audit.event("dns", decision, rule, reason, fields);
    }
}

/// The mnemonic of a query type, or its number.
fn qtype_name(t: u16) -> String {
    use crate::dns::message::rtype;
    match t {
        rtype::A => "A".into(),
        rtype::AAAA => "AAAA".into(),
        rtype::CNAME => "CNAME".into(),
        rtype::MX => "MX".into(),
        rtype::NS => "NS".into(),
        rtype::PTR => "PTR".into(),
        rtype::SOA => "SOA".into(),
        rtype::SRV => "SRV".into(),
        rtype::TXT => "TXT".into(),
        rtype::SVCB => "SVCB".into(),
        rtype::HTTPS => "HTTPS".into(),
        other => format!("TYPE{other}"),
    }
}
