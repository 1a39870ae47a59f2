//! What the loop does with DNS (`dns_flow.rs`): a query from the sandbox (over UDP or
//! from a DNS-over-TCP flow) filtered, answered here or sent to a resolver on a shared
//! socket, the next resolver tried on timeout, an answer filtered and delivered, and
//! DNS-over-TCP flows accepted and moved along.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use mio::Interest;
use moat_dns::filter;
use moat_dns::framing::TcpFraming;
use moat_dns::message::{Edns, Message, ede, flags, rcode};
use moat_inspect::http::refusal::refusal_line;
use moat_policy::{DecidedBy, DomainName, canonical_addr};
use moat_record::summary;
use serde_json::Value;
use smoltcp::socket::tcp;
use smoltcp::wire::IpListenEndpoint;

use super::close::CloseReason;
use super::config::DenyMode;
use super::cx::Cx;
use super::dial;
use super::dns_flow::{
    DnsQuery, DnsStream, DnsUpstream, QUERIES_PER_SOCKET, ReplyTo, SOCKETS_PER_RESOLVER, sent_id,
};
use super::key::Segment;
use super::key::{FlowId, FlowKey};
use super::table::{Flow, FlowTable};

/// A DNS message from the sandbox.
pub(super) fn query(table: &mut FlowTable, cx: &mut Cx, payload: &[u8], reply: ReplyTo) {
    let Ok(msg) = Message::parse(payload) else {
        // Not DNS: dropped, never forwarded (port 53 is not a tunnel).
        cx.counters.dns_dropped += 1;
        return;
    };
    if msg.flags & flags::QR != 0 || msg.questions.len() != 1 {
        cx.counters.dns_dropped += 1;
        return;
    }
    if msg.flags & flags::OPCODE != 0 {
        deliver(table, cx, reply, &msg.reply_with(rcode::NOTIMP).to_bytes());
        return;
    }
    let question = msg.questions[0].clone();
    let qtype = question.qtype;
    let shown = question
        .name
        .to_text()
        .unwrap_or_else(|| "(not a host name)".to_owned());
    // A name carrying a placeholder would take it to whoever serves that name: a violation,
    // answered NXDOMAIN and never forwarded.
    let folded = shown.to_ascii_lowercase();
    if let Some(i) = moat_inspect::secrets::carried(&cx.cfg.secrets, folded.as_bytes()) {
        let (guest, asked) = match reply {
            ReplyTo::Udp { guest, asked } => (guest, asked),
            ReplyTo::Tcp { flow } => match table.get(flow) {
                Some(Flow::DnsStream(s)) => (s.key.guest, s.key.host),
                _ => return,
            },
        };
        let key = FlowKey { guest, host: asked };
        cx.secret_violation_on("dns", key, "a DNS lookup", i);
        let why = "the name carries a secret's placeholder";
        let answer = refused(cx, &msg, msg.edns(), ede::BLOCKED, &shown, why, None);
        deliver(table, cx, reply, &answer);
        return;
    }
    let Some(name) = question
        .name
        .to_text()
        .and_then(|t| DomainName::new(&t).ok())
    else {
        let why = "not a valid host name";
        let event = Lookup::denied(&shown, qtype, "invalid", why);
        audit_dns(cx, event, None);
        let answer = refused(cx, &msg, msg.edns(), ede::PROHIBITED, &shown, why, None);
        deliver(table, cx, reply, &answer);
        return;
    };
    if let Some(blocked) = cx.dns_rules.blocked(&name) {
        let reason = format!("{} is on the {} list", name, blocked.label());
        let event = Lookup::denied(name.as_str(), qtype, blocked.label(), &reason);
        audit_dns(cx, event, Some(blocked.label()));
        let edns = msg.edns();
        let answer = refused(cx, &msg, edns, ede::BLOCKED, name.as_str(), &reason, None);
        deliver(table, cx, reply, &answer);
        return;
    }
    let permit = match cx.cfg.policy.permit_name(&name) {
        Ok(permit) => permit,
        Err(decision) => {
            let reason = match decision.by {
                DecidedBy::Default => {
                    "no rule could allow a connection to this name (DNS is egress)".to_owned()
                }
                _ => cx.cfg.policy.reason(&decision),
            };
            let rule = decision.rule_label();
            let event = Lookup::denied(name.as_str(), qtype, &rule, &reason);
            audit_dns(cx, event, Some("policy"));
            let allow = summary::denied_lookup(name.as_str(), "policy", &rule, cx.cfg.flag_rules);
            let (shown, edns) = (name.as_str(), msg.edns());
            let answer = refused(cx, &msg, edns, ede::PROHIBITED, shown, &reason, allow);
            deliver(table, cx, reply, &answer);
            return;
        }
    };
    if table.dns_full() || cx.cfg.dns_servers.is_empty() {
        cx.counters.dns_servfail += 1;
        deliver(
            table,
            cx,
            reply,
            &msg.reply_with(rcode::SERVFAIL).to_bytes(),
        );
        return;
    }
    let our_id = cx.next_random() as u16;
    // Written anew, not forwarded: nothing but the question leaves (see
    // `Message::upstream_query`).
    let Some(message) = msg.upstream_query(our_id) else {
        deliver(table, cx, reply, &msg.reply_with(rcode::FORMERR).to_bytes());
        return;
    };
    cx.counters.dns_queries += 1;
    if let ReplyTo::Tcp { flow } = reply
        && let Some(Flow::DnsStream(s)) = table.get_mut(flow)
    {
        s.pending += 1;
    }
    let id = table.reserve();
    let query = DnsQuery {
        reply,
        original_id: msg.id,
        message,
        question,
        name,
        client_limit: msg.udp_limit(),
        edns: msg.edns(),
        rule: permit.decision().rule_label(),
        permit,
        server: 0,
        on: None,
        deadline: Instant::now(),
    };
    table.insert(id, Flow::DnsQuery(query));
    try_from(table, cx, id, 0);
}

/// Query `id` timed out at its resolver: the next one is asked.
pub(super) fn next_resolver(table: &mut FlowTable, cx: &mut Cx, id: FlowId) {
    if let Some(Flow::DnsQuery(q)) = table.get(id) {
        let next = q.server + 1;
        try_from(table, cx, id, next);
    }
}

/// Sends query `id` to upstream `server`, or the next that works; SERVFAIL when none.
fn try_from(table: &mut FlowTable, cx: &mut Cx, id: FlowId, mut server: usize) {
    detach(table, id);
    loop {
        let Some(&upstream) = cx.cfg.dns_servers.get(server) else {
            fail(table, cx, id);
            return;
        };
        let Some(up) = upstream_socket(table, cx, server, upstream) else {
            server += 1;
            continue;
        };
        let Some(Flow::DnsQuery(q)) = table.get(id) else {
            return;
        };
        let mut qid = sent_id(&q.message);
        let Some(Flow::DnsUpstream(u)) = table.get(up) else {
            return;
        };
        // An ID no other query on this socket has.
        while u.inflight.contains_key(&qid) {
            qid = cx.next_random() as u16;
        }
        let Some(Flow::DnsQuery(q)) = table.get_mut(id) else {
            return;
        };
        q.message[..2].copy_from_slice(&qid.to_be_bytes());
        let message = q.message.clone();
        let Some(Flow::DnsQuery(q)) = table.get(id) else {
            return;
        };
        let Some(Flow::DnsUpstream(u)) = table.get(up) else {
            return;
        };
        if dial::resolver_send(&u.sock, &q.permit, &message).is_err() {
            server += 1;
            continue;
        }
        if let Some(Flow::DnsUpstream(u)) = table.get_mut(up) {
            u.inflight.insert(qid, id);
            u.sent += 1;
        }
        if let Some(Flow::DnsQuery(q)) = table.get_mut(id) {
            q.on = Some(up);
            q.server = server;
            q.deadline = Instant::now() + cx.cfg.dns_timeout;
        }
        return;
    }
}

/// Query `id` no longer waits on the socket it was sent from.
fn detach(table: &mut FlowTable, id: FlowId) {
    let Some(Flow::DnsQuery(q)) = table.get_mut(id) else {
        return;
    };
    let (Some(up), qid) = (q.on.take(), sent_id(&q.message)) else {
        return;
    };
    if let Some(Flow::DnsUpstream(u)) = table.get_mut(up) {
        u.forget(qid, id);
    }
}

fn fail(table: &mut FlowTable, cx: &mut Cx, id: FlowId) {
    let Some(Flow::DnsQuery(q)) = table.get(id) else {
        return;
    };
    let answer = Message {
        id: q.original_id,
        flags: flags::QR | flags::RD | flags::RA | rcode::SERVFAIL,
        questions: vec![q.question.clone()],
        ..Message::default()
    };
    let (reply, name, qtype) = (q.reply, q.name.clone(), q.question.qtype);
    cx.counters.dns_servfail += 1;
    let event = Lookup::allowed(
        name.as_str(),
        qtype,
        "-",
        "every upstream resolver failed: SERVFAIL",
    );
    audit_dns(cx, event, None);
    deliver(table, cx, reply, &answer.to_bytes());
    table.remove(id, CloseReason::DnsFailed, cx);
}

/// Upstream socket `up` is readable: each answer goes to the query waiting on its ID.
pub(super) fn readable(table: &mut FlowTable, cx: &mut Cx, up: FlowId) {
    let mut buf = std::mem::take(&mut cx.scratch);
    while let Some(Flow::DnsUpstream(u)) = table.get_mut(up) {
        match u.sock.recv(&mut buf) {
            Ok(n) => {
                let bytes = &buf[..n];
                if !moat_dns::is_response(bytes) {
                    continue;
                }
                let Some(qid) = moat_dns::id(bytes) else {
                    continue;
                };
                let Some(query) = u.inflight.remove(&qid) else {
                    continue; // Late, or not ours.
                };
                if answer(table, cx, query, bytes) {
                    if let Some(Flow::DnsQuery(q)) = table.get_mut(query) {
                        q.on = None;
                    }
                    table.remove(query, CloseReason::Answered, cx);
                } else if let Some(Flow::DnsUpstream(u)) = table.get_mut(up) {
                    // Not an answer to its question: it keeps waiting.
                    u.inflight.insert(qid, query);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // Transport error (e.g. ICMP port unreachable): the queries on this socket
            // ask the next resolver, and the socket is replaced.
            Err(_) => {
                let server = u.server;
                let waiting: Vec<FlowId> = u.inflight.drain().map(|(_, q)| q).collect();
                if let Some(list) = table.resolvers.by_server.get_mut(server) {
                    list.retain(|&f| f != up);
                }
                table.remove(up, CloseReason::Closed, cx);
                for query in waiting {
                    if let Some(Flow::DnsQuery(q)) = table.get_mut(query) {
                        q.on = None;
                        let next = q.server + 1;
                        try_from(table, cx, query, next);
                    }
                }
                break;
            }
        }
    }
    cx.scratch = buf;
}

/// Processes an upstream answer for query `id`; `false` when it does not answer our
/// question (ignored: a late or forged datagram).
fn answer(table: &mut FlowTable, cx: &mut Cx, id: FlowId, bytes: &[u8]) -> bool {
    let Some(Flow::DnsQuery(q)) = table.get(id) else {
        return true;
    };
    let (reply, original_id, name, question, limit, rule, edns) = (
        q.reply,
        q.original_id,
        q.name.clone(),
        q.question.clone(),
        q.client_limit,
        q.rule.clone(),
        q.edns,
    );
    let qtype = question.qtype;
    let Ok(mut msg) = Message::parse(bytes) else {
        let fail = Message {
            id: original_id,
            flags: flags::QR | flags::RD | flags::RA | rcode::SERVFAIL,
            questions: vec![question],
            ..Message::default()
        };
        let event = Lookup::allowed(
            name.as_str(),
            qtype,
            &rule,
            "malformed upstream answer: SERVFAIL",
        );
        audit_dns(cx, event, None);
        deliver(table, cx, reply, &fail.to_bytes());
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
        let blocked = cx
            .dns_rules
            .blocked(link)
            .map(|b| b.label().to_owned())
            .or_else(|| cx.cfg.policy.name_rule_denies(link).map(|d| d.rule_label()));
        if let Some(by) = blocked {
            let reason =
                format!("the answer's CNAME chain passes through {link}, which is blocked");
            let event = Lookup::denied(name.as_str(), qtype, &by, &reason);
            audit_dns(cx, event, Some("cname"));
            let answer = refused(cx, &msg, edns, ede::BLOCKED, name.as_str(), &reason, None);
            deliver(table, cx, reply, &answer);
            return true;
        }
    }
    let (before, after) = cx.dns_rules.filter(&mut msg);
    if before > 0 && after == 0 {
        let reason = "every address in the answer points inward (rebind protection)";
        let event = Lookup::denied(name.as_str(), qtype, "rebind", reason);
        audit_dns(cx, event, Some("rebind_protection"));
        let answer = refused(cx, &msg, edns, ede::BLOCKED, name.as_str(), reason, None);
        deliver(table, cx, reply, &answer);
        return true;
    }
    let now = Instant::now();
    let addresses = filter::addresses(&msg);
    for (addr, ttl) in &addresses {
        let addr = canonical_addr(*addr);
        cx.pins.pin(addr, &name, *ttl, now);
        for link in &chain {
            cx.pins.pin(addr, link, *ttl, now);
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
    let mut event = Lookup::allowed(name.as_str(), qtype, &rule, &reason);
    event.answers = &shown;
    audit_dns(cx, event, None);
    let mut bytes = msg.to_bytes();
    if matches!(reply, ReplyTo::Udp { .. }) && bytes.len() > limit {
        // RFC 1035 §4.2.1 / RFC 6891 §7: too big for the client's UDP limit; TC tells
        // it to ask again over TCP, which is intercepted the same way.
        let mut tc = msg.reply_with(msg.rcode());
        tc.flags |= flags::TC;
        tc.flags |= msg.flags & 0x0400; // keep AA
        bytes = tc.to_bytes();
    }
    deliver(table, cx, reply, &bytes);
    true
}

/// Sends an answer to the sandbox.
fn deliver(table: &mut FlowTable, cx: &mut Cx, reply: ReplyTo, bytes: &[u8]) {
    match reply {
        ReplyTo::Udp { guest, asked } => cx.stack.udp_to_guest(asked, guest, bytes),
        ReplyTo::Tcp { flow } => {
            let Some(Flow::DnsStream(s)) = table.get(flow) else {
                return;
            };
            let socket = cx.stack.tcp(s.handle);
            let Ok(len) = u16::try_from(bytes.len()) else {
                return;
            };
            if socket.send_capacity() - socket.send_queue() >= bytes.len() + 2 {
                let _ = socket.send_slice(&len.to_be_bytes());
                let _ = socket.send_slice(bytes);
            }
            table.touch(flow);
        }
    }
}

/// Accepts a DNS-over-TCP connection from the sandbox; it is answered here.
pub(super) fn open_stream(table: &mut FlowTable, cx: &mut Cx, syn: Segment<'_>) {
    let key = syn.key;
    if table.connections_full() {
        cx.audit_limit("tcp", key);
        cx.stack.reset_guest(key, syn.seq, syn.len);
        return;
    }
    let Some((mut socket, mem)) = cx.pool.dns_socket() else {
        cx.audit_memory("tcp", key);
        cx.stack.reset_guest(key, syn.seq, syn.len);
        return;
    };
    let endpoint = IpListenEndpoint {
        addr: Some(key.host.ip().into()),
        port: key.host.port(),
    };
    if socket.listen(endpoint).is_err() {
        cx.pool.give_back(socket, mem);
        return;
    }
    let handle = cx.stack.sockets.add(socket);
    let id = table.reserve();
    let stream = DnsStream {
        key,
        handle,
        mem,
        framing: TcpFraming::default(),
        pending: 0,
        started: Instant::now(),
    };
    table.insert(id, Flow::DnsStream(stream));
    cx.stack.feed(syn.frame);
    table.touch(id);
}

/// Moves a DNS-over-TCP flow along: reads whole queries, closes when the sandbox has.
pub(super) fn stream_relay(table: &mut FlowTable, cx: &mut Cx, id: FlowId) {
    let Some(Flow::DnsStream(s)) = table.get_mut(id) else {
        return;
    };
    let socket = cx.stack.tcp(s.handle);
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
    // LISTEN again: reset in SYN-RECEIVED (never left listening).
    let closed = matches!(
        socket.state(),
        tcp::State::Closed | tcp::State::TimeWait | tcp::State::Listen
    );
    for q in queries {
        query(table, cx, &q, ReplyTo::Tcp { flow: id });
    }
    if closed {
        table.remove(id, CloseReason::Closed, cx);
    }
}

/// Queries one DNS-over-TCP connection may have upstream at once.
const MAX_PENDING_PER_STREAM: usize = 16;

/// The answer to a lookup of `name` moat refuses, built on `msg` (the query, or the
/// upstream answer with the query's ID): NXDOMAIN, and in deny mode `explain`, when the
/// sandbox asked with EDNS (`edns`), an Extended DNS Error `code` whose text says why
/// (`reason`) and what would allow it (`allow`; see the module header).
fn refused(
    cx: &Cx,
    msg: &Message,
    edns: Option<Edns>,
    code: u16,
    name: &str,
    reason: &str,
    allow: Option<String>,
) -> Vec<u8> {
    let mut answer = msg.reply_with(rcode::NXDOMAIN);
    if cx.cfg.deny_mode == DenyMode::Explain
        && let Some(edns) = edns
    {
        let line = refusal_line(&format!("a lookup of {name}"), reason, allow.as_deref());
        answer.add_extended_error(edns, code, &line);
    }
    answer.to_bytes()
}

/// The next socket to resolver `server` (at `addr`), opened when fewer than
/// [`SOCKETS_PER_RESOLVER`] are; sockets that carried their share and wait on nothing are
/// replaced.
fn upstream_socket(
    table: &mut FlowTable,
    cx: &mut Cx,
    server: usize,
    addr: SocketAddr,
) -> Option<FlowId> {
    if table.resolvers.by_server.len() <= server {
        table.resolvers.by_server.resize(server + 1, Vec::new());
    }
    let spent: Vec<FlowId> = table.resolvers.by_server[server]
        .iter()
        .copied()
        .filter(|&f| {
            matches!(table.get(f), Some(Flow::DnsUpstream(u))
                if u.sent >= QUERIES_PER_SOCKET && u.inflight.is_empty())
        })
        .collect();
    for f in spent {
        table.resolvers.by_server[server].retain(|&x| x != f);
        table.remove(f, CloseReason::Closed, cx);
    }
    if table.resolvers.by_server[server].len() < SOCKETS_PER_RESOLVER {
        let mut sock = dial::resolver_socket(addr).ok()?;
        let fid = table.open(&mut sock, Interest::READABLE)?;
        table.insert(
            fid,
            Flow::DnsUpstream(DnsUpstream {
                sock,
                server,
                sent: 0,
                inflight: HashMap::new(),
            }),
        );
        table.resolvers.by_server[server].push(fid);
        return Some(fid);
    }
    let list = &table.resolvers.by_server[server];
    let pick = list[table.resolvers.next % list.len()];
    table.resolvers.next = table.resolvers.next.wrapping_add(1);
    Some(pick)
}

/// Writes a `dns` event; `blocked_by` names what blocked a denied lookup.
fn audit_dns(cx: &mut Cx, event: Lookup<'_>, blocked_by: Option<&str>) {
    let mut fields = vec![
        ("name", Value::from(event.name)),
        ("qtype", Value::from(qtype_name(event.qtype))),
        ("answers", Value::from(event.answers.to_vec())),
    ];
    if let Some(b) = blocked_by {
        fields.push(("blocked_by", Value::from(b)));
    }
    cx.cfg
        .audit
        .event("dns", event.decision, event.rule, event.reason, fields);
}

/// The mnemonic of a query type, or its number.
fn qtype_name(t: u16) -> String {
    use moat_dns::message::rtype;
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

/// One `dns` audit event.
struct Lookup<'a> {
    name: &'a str,
    qtype: u16,
    decision: &'a str,
    rule: &'a str,
    reason: &'a str,
    answers: &'a [String],
}

impl<'a> Lookup<'a> {
    fn denied(name: &'a str, qtype: u16, rule: &'a str, reason: &'a str) -> Lookup<'a> {
        Lookup {
            name,
            qtype,
            decision: "deny",
            rule,
            reason,
            answers: &[],
        }
    }

    fn allowed(name: &'a str, qtype: u16, rule: &'a str, reason: &'a str) -> Lookup<'a> {
        Lookup {
            decision: "allow",
            ..Lookup::denied(name, qtype, rule, reason)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

    use std::net::Ipv4Addr;

    use moat_policy::NetworkPolicy;

    use super::*;
    use crate::engine::key::Due;
    use crate::engine::testing::{Harness, udp, udp_to_guest};
    use moat_dns::message::{Question, RData, Record, name, rtype};

    fn query(host: &str) -> Vec<u8> {
        Message {
            id: 0x1234,
            flags: flags::RD,
            questions: vec![Question {
                name: name(host),
                qtype: rtype::A,
                qclass: 1,
            }],
            ..Message::default()
        }
        .to_bytes()
    }

    /// The rcode of the answer the sandbox got from port 53.
    fn answer(h: &mut Harness) -> Option<u16> {
        h.sent()
            .iter()
            .filter_map(|f| udp_to_guest(f))
            .filter(|(src, _)| *src == 53)
            .find_map(|(_, data)| Message::parse(&data).ok())
            .filter(|m| m.id == 0x1234)
            .map(|m| m.rcode())
    }

    #[test]
    fn a_name_no_rule_allows_is_answered_here() {
        let mut h = Harness::new(NetworkPolicy::none(), DenyMode::Drop);
        // Sent to any address: port 53 is answered by moat.
        h.frame(&udp(
            Ipv4Addr::new(198, 51, 100, 53),
            53,
            &query("api.example.com"),
        ));
        assert_eq!(answer(&mut h), Some(rcode::NXDOMAIN));
        assert!(h.audit().contains("DNS is egress"), "{}", h.audit());
    }

    /// Many queries at once share a few upstream sockets, and each answer, however the
    /// resolver orders them, reaches the query it answers.
    #[test]
    fn queries_share_upstream_sockets_and_answers_find_their_query() {
        use std::collections::HashMap as Map;
        // A resolver that answers a burst in reverse order: A = 203.0.113.N for q-N.
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        server
            .set_read_timeout(Some(std::time::Duration::from_millis(300)))
            .unwrap();
        let resolver = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 512];
            while let Ok((n, peer)) = server.recv_from(&mut buf) {
                got.push((buf[..n].to_vec(), peer));
            }
            for (q, peer) in got.iter().rev() {
                let msg = Message::parse(q).unwrap();
                let label = String::from_utf8_lossy(&msg.questions[0].name.0[0]).into_owned();
                let n: u8 = label.trim_start_matches("q-").parse().unwrap();
                let mut a = q.clone();
                a[2] = 0x81;
                a[3] = 0x80;
                a[6..8].copy_from_slice(&[0, 1]);
                a.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 203, 0, 113, n]);
                server.send_to(&a, peer).unwrap();
            }
            got.len()
        });
        let mut h = Harness::with_resolvers(NetworkPolicy::allow_all(), vec![addr]);
        const N: u8 = 40;
        for i in 0..N {
            let mut q = query(&format!("q-{i}.example.com"));
            q[..2].copy_from_slice(&(0x1000 + u16::from(i)).to_be_bytes());
            h.frame(&crate::engine::testing::udp_from(
                20_000 + u16::from(i),
                Ipv4Addr::new(10, 0, 2, 2),
                53,
                &q,
            ));
        }
        let sockets: Vec<FlowId> = h
            .table
            .ids()
            .into_iter()
            .filter(|&f| matches!(h.table.get(f), Some(Flow::DnsUpstream(_))))
            .collect();
        assert!(
            !sockets.is_empty() && sockets.len() <= SOCKETS_PER_RESOLVER,
            "{}",
            sockets.len()
        );
        assert_eq!(resolver.join().unwrap(), usize::from(N));
        // Every answer reaches the guest port that asked, with its own ID and address.
        let mut answered: Map<u16, (u16, Vec<u8>)> = Map::new();
        let done = h.until(|h| {
            for &s in &sockets {
                readable(&mut h.table, &mut h.cx, s);
            }
            h.cx.stack.egress();
            for f in h.sent() {
                if let Some((_, _, dport, data)) = crate::engine::testing::udp_to_guest_full(&f) {
                    let m = Message::parse(&data).unwrap();
                    answered.insert(dport, (m.id, data));
                }
            }
            answered.len() == usize::from(N)
        });
        assert!(done, "{} of {N} answered", answered.len());
        for i in 0..N {
            let (id, data) = &answered[&(20_000 + u16::from(i))];
            assert_eq!(*id, 0x1000 + u16::from(i));
            assert!(data.ends_with(&[203, 0, 113, i]), "q-{i}");
        }
        assert!(!h.table.dns_full());
    }

    /// The answer the sandbox got from port 53, parsed.
    fn answer_message(h: &mut Harness) -> Option<Message> {
        h.sent()
            .iter()
            .filter_map(|f| udp_to_guest(f))
            .filter(|(src, _)| *src == 53)
            .find_map(|(_, data)| Message::parse(&data).ok())
    }

    #[test]
    fn a_refused_lookup_says_why_in_an_extended_dns_error_under_explain() {
        use moat_dns::message::{Name, RData, Record, ede};
        let mut edns = Message::parse(&query("api.example.com")).unwrap();
        edns.additional.push(Record {
            name: Name::default(),
            rtype: rtype::OPT,
            class: 1232,
            ttl: 0,
            data: RData::Other(Vec::new()),
        });
        let edns = edns.to_bytes();
        let gateway = Ipv4Addr::new(10, 0, 2, 2);
        let mut seen = Vec::new();
        for mode in [DenyMode::Explain, DenyMode::Reject] {
            let mut h = Harness::new(NetworkPolicy::none(), mode);
            h.frame(&udp(gateway, 53, &edns));
            let with_edns = answer_message(&mut h).unwrap();
            assert_eq!(with_edns.rcode(), rcode::NXDOMAIN);
            // Without EDNS there is nowhere to put an EDE (RFC 6891 §7).
            h.frame(&udp(gateway, 53, &query("api.example.com")));
            let plain = answer_message(&mut h).unwrap();
            assert_eq!(plain.rcode(), rcode::NXDOMAIN);
            assert!(plain.additional.is_empty(), "{plain:?}");
            seen.push((with_edns.extended_error(), h.audit()));
        }
        let (code, text) = seen[0]
            .0
            .clone()
            .expect("no Extended DNS Error under explain");
        assert_eq!(code, ede::PROHIBITED);
        assert_eq!(
            text,
            "moat: refused a lookup of api.example.com (no rule could allow a connection to this name (DNS is egress)); to allow it: --allow api.example.com"
        );
        assert_eq!(seen[1].0, None, "an EDE under reject");
        // The audit log says the same in both modes (but for the time and the run's id).
        let strip = |log: &str| -> Vec<String> {
            log.lines()
                .map(|l| {
                    let mut e: Value = serde_json::from_str(l).unwrap();
                    let o = e.as_object_mut().unwrap();
                    o.remove("ts");
                    o.remove("run");
                    e.to_string()
                })
                .collect()
        };
        assert_eq!(strip(&seen[0].1), strip(&seen[1].1));
    }

    #[test]
    fn without_resolvers_an_allowed_name_gets_servfail_and_nothing_waits() {
        let mut h = Harness::new(NetworkPolicy::allow_all(), DenyMode::Drop);
        h.frame(&udp(
            Ipv4Addr::new(10, 0, 2, 2),
            53,
            &query("api.example.com"),
        ));
        assert_eq!(answer(&mut h), Some(rcode::SERVFAIL));
        assert!(!h.table.dns_full());
        // Answered at once: counted, and nothing was asked or audited as asked.
        assert_eq!(h.cx.counters.dns_servfail, 1);
        assert_eq!(h.cx.counters.dns_queries, 0);
        assert!(waiting(&h).is_none());
        assert!(lookups(&h).is_empty(), "{}", h.audit());
        // Not DNS: dropped and counted, never answered or forwarded.
        h.frame(&udp(Ipv4Addr::new(10, 0, 2, 2), 53, b"not dns at all"));
        assert_eq!(answer(&mut h), None);
        assert_eq!(h.cx.counters.dns_dropped, 1);
    }

    /// A resolver on loopback that the test drives: it reads what moat sent and answers
    /// what the test says.
    struct Upstream(std::net::UdpSocket);

    impl Upstream {
        fn new() -> Upstream {
            let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            sock.set_read_timeout(Some(std::time::Duration::from_secs(3)))
                .unwrap();
            Upstream(sock)
        }

        fn addr(&self) -> SocketAddr {
            self.0.local_addr().unwrap()
        }

        /// The next query moat sent here, and where from.
        fn query(&self) -> (Message, SocketAddr) {
            let mut buf = [0u8; 1500];
            let (n, peer) = self
                .0
                .recv_from(&mut buf)
                .expect("no query reached the resolver");
            (Message::parse(&buf[..n]).unwrap(), peer)
        }

        /// Whether a query reaches this resolver within `ms`.
        fn asked_within(&self, ms: u64) -> bool {
            let wait = std::time::Duration::from_millis(ms);
            self.0.set_read_timeout(Some(wait)).unwrap();
            let got = self.0.recv_from(&mut [0u8; 1500]).is_ok();
            self.0
                .set_read_timeout(Some(std::time::Duration::from_secs(3)))
                .unwrap();
            got
        }

        fn send(&self, peer: SocketAddr, bytes: &[u8]) {
            self.0.send_to(bytes, peer).unwrap();
        }

        /// Answers `q` (as sent to `peer`) with `records`.
        fn answer(&self, q: &Message, peer: SocketAddr, records: Vec<Record>) {
            self.send(peer, &reply(q, records).to_bytes());
        }
    }

    /// An answer to `q` holding `records`.
    fn reply(q: &Message, records: Vec<Record>) -> Message {
        Message {
            id: q.id,
            flags: flags::QR | flags::RD | flags::RA,
            questions: q.questions.clone(),
            answers: records,
            ..Message::default()
        }
    }

    fn a(owner: &str, addr: [u8; 4]) -> Record {
        Record {
            name: name(owner),
            rtype: rtype::A,
            class: 1,
            ttl: 60,
            data: RData::A(addr.into()),
        }
    }

    fn cname(owner: &str, target: &str) -> Record {
        Record {
            name: name(owner),
            rtype: rtype::CNAME,
            class: 1,
            ttl: 60,
            data: RData::Name(name(target)),
        }
    }

    const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);

    /// The sandbox asks for `host`'s A records (ID 0x1234).
    fn ask(h: &mut Harness, host: &str) {
        h.frame(&udp(GATEWAY, 53, &query(host)));
    }

    /// The upstream sockets moat has open.
    fn upstreams(h: &Harness) -> Vec<FlowId> {
        h.table
            .ids()
            .into_iter()
            .filter(|&f| matches!(h.table.get(f), Some(Flow::DnsUpstream(_))))
            .collect()
    }

    /// A query waiting on a resolver.
    fn waiting(h: &Harness) -> Option<FlowId> {
        h.table
            .ids()
            .into_iter()
            .find(|&f| matches!(h.table.get(f), Some(Flow::DnsQuery(_))))
    }

    /// The answer the sandbox gets once moat reads its upstream sockets (bounded: 3 s).
    fn delivered(h: &mut Harness) -> Option<Message> {
        let mut got = None;
        h.until(|h| {
            for up in upstreams(h) {
                readable(&mut h.table, &mut h.cx, up);
            }
            h.cx.stack.egress();
            got = answer_message(h);
            got.is_some()
        });
        got
    }

    /// Reads the upstream sockets for a while; what the sandbox got meanwhile.
    fn delivered_within(h: &mut Harness, ms: u64) -> Vec<Message> {
        let mut got = Vec::new();
        let end = Instant::now() + std::time::Duration::from_millis(ms);
        while Instant::now() < end {
            for up in upstreams(h) {
                readable(&mut h.table, &mut h.cx, up);
            }
            h.cx.stack.egress();
            got.extend(
                h.sent()
                    .iter()
                    .filter_map(|f| udp_to_guest(f))
                    .filter_map(|(_, data)| Message::parse(&data).ok()),
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        got
    }

    fn addresses_in(m: &Message) -> Vec<std::net::IpAddr> {
        filter::addresses(m).into_iter().map(|(a, _)| a).collect()
    }

    /// The audit's `dns` events, parsed.
    fn lookups(h: &Harness) -> Vec<Value> {
        h.audit()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|e| e["event"] == "dns")
            .collect()
    }

    #[test]
    fn only_a_single_question_is_asked_and_other_opcodes_are_not_implemented() {
        let up = Upstream::new();
        let mut h = Harness::with_resolvers(NetworkPolicy::allow_all(), vec![up.addr()]);
        let one = Message::parse(&query("api.example.com")).unwrap();
        // An answer, two questions, none: dropped and counted, never asked upstream.
        let mut answer = one.clone();
        answer.flags |= flags::QR;
        let mut two = one.clone();
        two.questions.push(one.questions[0].clone());
        let mut none = one.clone();
        none.questions.clear();
        for (i, m) in [answer, two, none].iter().enumerate() {
            h.frame(&udp(GATEWAY, 53, &m.to_bytes()));
            assert_eq!(h.cx.counters.dns_dropped, i as u64 + 1);
            assert_eq!(answer_message(&mut h), None);
        }
        assert!(
            !up.asked_within(100),
            "a dropped message was asked upstream"
        );
        // Another opcode (STATUS): NOTIMP, here.
        let mut status = one.clone();
        status.flags |= 2 << 11;
        h.frame(&udp(GATEWAY, 53, &status.to_bytes()));
        assert_eq!(
            answer_message(&mut h).map(|m| m.rcode()),
            Some(rcode::NOTIMP)
        );
        // The control: the plain query is asked upstream and counted.
        ask(&mut h, "api.example.com");
        let (q, _) = up.query();
        assert!(q.questions[0].name.eq_ignore_case(&name("api.example.com")));
        assert_eq!(h.cx.counters.dns_queries, 1);
        assert_eq!(h.cx.counters.dns_dropped, 3);
    }

    #[test]
    fn an_answer_is_filtered_pinned_and_delivered_under_the_querys_id() {
        let up = Upstream::new();
        let mut h = Harness::with_resolvers(NetworkPolicy::allow_all(), vec![up.addr()]);
        ask(&mut h, "api.example.com");
        let (q, peer) = up.query();
        assert_ne!(q.id, 0x1234, "the sandbox's ID went upstream");
        up.answer(
            &q,
            peer,
            vec![
                cname("api.example.com", "edge.example.net"),
                a("edge.example.net", [203, 0, 113, 7]),
                a("edge.example.net", [10, 1, 2, 3]),
            ],
        );
        let m = delivered(&mut h).expect("no answer reached the sandbox");
        assert_eq!(m.id, 0x1234);
        assert_eq!(m.rcode(), 0);
        // The inward address is gone; the public one pinned to both names of the chain.
        assert_eq!(addresses_in(&m), vec![Ipv4Addr::new(203, 0, 113, 7)]);
        let pinned =
            h.cx.pins
                .names(Ipv4Addr::new(203, 0, 113, 7).into(), Instant::now());
        let pinned: Vec<&str> = pinned.iter().map(|n| n.as_str()).collect();
        assert!(pinned.contains(&"api.example.com"), "{pinned:?}");
        assert!(pinned.contains(&"edge.example.net"), "{pinned:?}");
        assert!(
            h.cx.pins
                .names(Ipv4Addr::new(10, 1, 2, 3).into(), Instant::now())
                .is_empty()
        );
        let events = lookups(&h);
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0]["decision"], "allow");
        assert_eq!(
            events[0]["reason"],
            "forwarded; 1 inward address(es) removed (rebind protection)"
        );
        assert_eq!(events[0]["answers"], serde_json::json!(["203.0.113.7"]));
        // Answered: nothing waits any more, and a second answer to it goes nowhere.
        assert!(waiting(&h).is_none());
        up.answer(&q, peer, vec![a("api.example.com", [203, 0, 113, 9])]);
        assert!(delivered_within(&mut h, 100).is_empty());
        // A clean answer says "forwarded" alone.
        ask(&mut h, "www.example.com");
        let (q, peer) = up.query();
        up.answer(&q, peer, vec![a("www.example.com", [203, 0, 113, 8])]);
        assert!(delivered(&mut h).is_some());
        assert_eq!(lookups(&h)[1]["reason"], "forwarded");
    }

    #[test]
    fn an_answer_of_only_inward_addresses_is_refused_unless_rebinding_is_allowed() {
        for protect in [true, false] {
            let up = Upstream::new();
            let mut h = Harness::with_config(NetworkPolicy::allow_all(), |cfg| {
                cfg.dns_servers = vec![up.addr()];
                cfg.dns_rebind_protection = protect;
            });
            ask(&mut h, "intranet.example.com");
            let (q, peer) = up.query();
            up.answer(&q, peer, vec![a("intranet.example.com", [192, 168, 1, 10])]);
            let m = delivered(&mut h).expect("no answer");
            let event = &lookups(&h)[0];
            if protect {
                assert_eq!(m.rcode(), rcode::NXDOMAIN);
                assert!(m.answers.is_empty());
                assert_eq!(event["decision"], "deny");
                assert_eq!(event["blocked_by"], "rebind_protection");
            } else {
                assert_eq!(m.rcode(), 0);
                assert_eq!(addresses_in(&m), vec![Ipv4Addr::new(192, 168, 1, 10)]);
                assert_eq!(event["reason"], "forwarded");
            }
        }
    }

    /// Everything allowed but connections to `host`.
    fn denying(host: &str) -> NetworkPolicy {
        use moat_policy::{Action, Destination, Rule};
        NetworkPolicy {
            default_action: Action::Allow,
            rules: vec![Rule::deny_outbound(Destination::domain(host).unwrap())],
        }
    }

    #[test]
    fn a_cname_chain_through_a_blocked_name_is_refused() {
        // Blocked by the DNS block list, and by a policy rule that denies the name.
        let policy = denying("tracker.example.org");
        let cases = [
            (NetworkPolicy::allow_all(), true, "tracker.example.net"),
            (policy.clone(), false, "tracker.example.org"),
            // The control: a chain through a name nothing blocks.
            (policy, true, "cdn.example.net"),
        ];
        for (policy, block_list, through) in cases {
            let up = Upstream::new();
            let mut h = Harness::with_config(policy, |cfg| {
                cfg.dns_servers = vec![up.addr()];
                if block_list {
                    cfg.block_domains = vec![DomainName::new("tracker.example.net").unwrap()];
                }
            });
            ask(&mut h, "api.example.com");
            let (q, peer) = up.query();
            up.answer(
                &q,
                peer,
                vec![
                    cname("api.example.com", through),
                    a(through, [203, 0, 113, 7]),
                ],
            );
            let m = delivered(&mut h).expect("no answer");
            let event = &lookups(&h)[0];
            if through == "cdn.example.net" {
                assert_eq!(m.rcode(), 0, "{through}");
                assert_eq!(event["decision"], "allow");
            } else {
                assert_eq!(m.rcode(), rcode::NXDOMAIN, "{through}");
                assert!(m.answers.is_empty(), "{through}");
                assert_eq!(event["decision"], "deny");
                assert_eq!(event["blocked_by"], "cname");
                assert!(event["reason"].as_str().unwrap().contains(through));
                let pinned =
                    h.cx.pins
                        .names(Ipv4Addr::new(203, 0, 113, 7).into(), Instant::now());
                assert!(pinned.is_empty(), "a refused answer pinned {pinned:?}");
            }
        }
    }

    #[test]
    fn what_does_not_answer_the_question_is_ignored_and_the_query_waits() {
        let up = Upstream::new();
        let mut h = Harness::with_resolvers(NetworkPolicy::allow_all(), vec![up.addr()]);
        ask(&mut h, "api.example.com");
        let (q, peer) = up.query();
        // Another name, another type, a question more, a query (not a response), another ID.
        let mut other_name = reply(&q, vec![a("evil.example.com", [203, 0, 113, 66])]);
        other_name.questions[0].name = name("evil.example.com");
        let mut other_type = reply(&q, Vec::new());
        other_type.questions[0].qtype = rtype::AAAA;
        let mut two = reply(&q, Vec::new());
        two.questions.push(q.questions[0].clone());
        let mut not_response = reply(&q, vec![a("api.example.com", [203, 0, 113, 66])]);
        not_response.flags &= !flags::QR;
        let mut other_id = reply(&q, vec![a("api.example.com", [203, 0, 113, 66])]);
        other_id.id = q.id.wrapping_add(1);
        for m in [other_name, other_type, two, not_response, other_id] {
            up.send(peer, &m.to_bytes());
        }
        assert!(delivered_within(&mut h, 150).is_empty());
        // The real answer, in another case, still reaches the sandbox.
        let mut upper = q.clone();
        upper.questions[0].name = name("API.Example.COM");
        up.answer(&upper, peer, vec![a("api.example.com", [203, 0, 113, 7])]);
        let m = delivered(&mut h).expect("the query stopped waiting");
        assert_eq!(addresses_in(&m), vec![Ipv4Addr::new(203, 0, 113, 7)]);
    }

    #[test]
    fn a_malformed_answer_is_servfail() {
        let up = Upstream::new();
        let mut h = Harness::with_resolvers(NetworkPolicy::allow_all(), vec![up.addr()]);
        ask(&mut h, "api.example.com");
        let (q, peer) = up.query();
        // A response header with our ID, then a question cut short.
        let mut bytes = reply(&q, Vec::new()).to_bytes();
        bytes.truncate(16);
        up.send(peer, &bytes);
        let m = delivered(&mut h).expect("no answer");
        is_servfail_for(&m, "api.example.com");
        assert_eq!(
            lookups(&h)[0]["reason"],
            "malformed upstream answer: SERVFAIL"
        );
    }

    #[test]
    fn an_answer_too_big_for_the_clients_udp_limit_is_truncated() {
        let up = Upstream::new();
        let mut h = Harness::with_resolvers(NetworkPolicy::allow_all(), vec![up.addr()]);
        // A name whose answer of 29 addresses is exactly 512 bytes, what a client without
        // EDNS takes; 30 are a record more.
        let host = "xxxxxxxxxxxxxxxxxx.example.com";
        for (count, aa, truncated) in [(29u8, false, false), (30, true, true), (30, false, true)] {
            ask(&mut h, host);
            let (q, peer) = up.query();
            let records = (0..count).map(|i| a(host, [203, 0, 113, i])).collect();
            let mut answer = reply(&q, records);
            if aa {
                answer.flags |= 0x0400;
            }
            let bytes = answer.to_bytes();
            assert_eq!(bytes.len(), if truncated { 528 } else { 512 });
            up.send(peer, &bytes);
            let m = delivered(&mut h).expect("no answer");
            assert_eq!(m.id, 0x1234);
            assert_eq!(m.flags & flags::TC != 0, truncated);
            assert_eq!(m.flags & 0x0400 != 0, aa, "AA as the resolver said");
            let kept = if truncated { 0 } else { usize::from(count) };
            assert_eq!(m.answers.len(), kept);
        }
    }

    /// `m` is moat's own SERVFAIL for the sandbox's query of `host`, whole.
    fn is_servfail_for(m: &Message, host: &str) {
        assert_eq!(m.id, 0x1234);
        assert_eq!(m.flags, flags::QR | flags::RD | flags::RA | rcode::SERVFAIL);
        assert_eq!(m.questions, Message::parse(&query(host)).unwrap().questions);
        assert!(m.answers.is_empty());
    }

    /// Every socket moat lists for a resolver is open.
    fn listed_sockets_are_open(h: &Harness) {
        for list in &h.table.resolvers.by_server {
            for &f in list {
                assert!(
                    matches!(h.table.get(f), Some(Flow::DnsUpstream(_))),
                    "{f:?}"
                );
            }
        }
    }

    /// A loopback port nothing listens on: a datagram to it comes back as a refusal.
    fn closed_port() -> SocketAddr {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.local_addr().unwrap()
    }

    #[test]
    fn a_resolver_that_refuses_gives_way_to_the_next_and_with_none_left_the_answer_is_servfail() {
        let up = Upstream::new();
        let mut h =
            Harness::with_resolvers(NetworkPolicy::allow_all(), vec![closed_port(), up.addr()]);
        ask(&mut h, "api.example.com");
        // The first's refusal surfaces on its socket when moat reads it.
        let mut asked = None;
        h.until(|h| {
            for s in upstreams(h) {
                readable(&mut h.table, &mut h.cx, s);
            }
            asked = up.asked_within(20).then_some(());
            asked.is_some()
        });
        assert!(asked.is_some(), "the second resolver was never asked");
        // The failed socket is closed and no longer listed.
        listed_sockets_are_open(&h);
        assert_eq!(h.table.resolvers.by_server[0].len(), 0);
        // Every resolver refusing: SERVFAIL, counted and audited, and nothing waits.
        let mut h = Harness::with_resolvers(
            NetworkPolicy::allow_all(),
            vec![closed_port(), closed_port()],
        );
        ask(&mut h, "api.example.com");
        let m = delivered(&mut h).expect("no answer");
        is_servfail_for(&m, "api.example.com");
        assert_eq!(h.cx.counters.dns_servfail, 1);
        assert_eq!(
            lookups(&h)[0]["reason"],
            "every upstream resolver failed: SERVFAIL"
        );
        assert!(waiting(&h).is_none());
    }

    #[test]
    fn a_query_that_timed_out_asks_the_next_resolver_and_the_late_answer_is_ignored() {
        let (silent, up) = (Upstream::new(), Upstream::new());
        let mut h =
            Harness::with_resolvers(NetworkPolicy::allow_all(), vec![silent.addr(), up.addr()]);
        ask(&mut h, "api.example.com");
        let (late, late_peer) = silent.query();
        let id = waiting(&h).unwrap();
        let due = |h: &Harness, at: Instant| match h.table.get(id) {
            Some(Flow::DnsQuery(q)) => q.due(at),
            _ => Due::Nothing,
        };
        assert!(matches!(due(&h, Instant::now()), Due::Nothing));
        let later = Instant::now() + h.cx.cfg.dns_timeout;
        assert!(matches!(due(&h, later), Due::NextResolver));
        next_resolver(&mut h.table, &mut h.cx, id);
        let (q, peer) = up.query();
        // The first's late answer finds no query waiting on it.
        silent.answer(
            &late,
            late_peer,
            vec![a("api.example.com", [203, 0, 113, 66])],
        );
        assert!(delivered_within(&mut h, 100).is_empty());
        up.answer(&q, peer, vec![a("api.example.com", [203, 0, 113, 7])]);
        let m = delivered(&mut h).expect("no answer");
        assert_eq!(addresses_in(&m), vec![Ipv4Addr::new(203, 0, 113, 7)]);
        // Past the last resolver: SERVFAIL.
        ask(&mut h, "www.example.com");
        let _ = silent.query();
        for _ in 0..2 {
            let id = waiting(&h).unwrap();
            next_resolver(&mut h.table, &mut h.cx, id);
        }
        h.cx.stack.egress();
        assert_eq!(
            answer_message(&mut h).map(|m| m.rcode()),
            Some(rcode::SERVFAIL)
        );
        assert_eq!(h.cx.counters.dns_servfail, 1);
    }

    #[test]
    fn each_query_type_is_named_in_the_audit_log() {
        let mut h = Harness::new(NetworkPolicy::none(), DenyMode::Drop);
        let types = [
            (rtype::A, "A"),
            (rtype::AAAA, "AAAA"),
            (rtype::CNAME, "CNAME"),
            (rtype::MX, "MX"),
            (rtype::NS, "NS"),
            (rtype::PTR, "PTR"),
            (rtype::SOA, "SOA"),
            (rtype::SRV, "SRV"),
            (rtype::TXT, "TXT"),
            (rtype::SVCB, "SVCB"),
            (rtype::HTTPS, "HTTPS"),
            (99, "TYPE99"),
        ];
        for (qtype, _) in types {
            let mut m = Message::parse(&query("api.example.com")).unwrap();
            m.questions[0].qtype = qtype;
            h.frame(&udp(GATEWAY, 53, &m.to_bytes()));
        }
        let named: Vec<Value> = lookups(&h).iter().map(|e| e["qtype"].clone()).collect();
        let want: Vec<Value> = types.iter().map(|(_, n)| Value::from(*n)).collect();
        assert_eq!(named, want);
    }

    /// The sandbox opens a DNS-over-TCP connection to the gateway: after the handshake,
    /// the sandbox's next sequence number and moat's.
    fn tcp_open(h: &mut Harness) -> (u32, u32) {
        use crate::engine::testing::{GUEST_PORT, tcp_from, tcp_segment_to_guest};
        use smoltcp::wire::TcpControl;
        h.frame(&tcp_from(
            GUEST_PORT,
            GATEWAY,
            53,
            TcpControl::Syn,
            1000,
            None,
            &[],
        ));
        let syn_ack = h
            .sent()
            .iter()
            .filter_map(|f| tcp_segment_to_guest(f))
            .find(|s| s.syn && s.src_port == 53)
            .expect("no SYN-ACK");
        let ours = syn_ack.seq.wrapping_add(1);
        to_port_53(h, TcpControl::None, 1001, ours, &[]);
        (1001, ours)
    }

    /// A segment from the sandbox's DNS-over-TCP connection, acknowledging `ack`.
    fn to_port_53(
        h: &mut Harness,
        control: smoltcp::wire::TcpControl,
        seq: u32,
        ack: u32,
        data: &[u8],
    ) {
        use crate::engine::testing::{GUEST_PORT, tcp_from};
        h.frame(&tcp_from(
            GUEST_PORT,
            GATEWAY,
            53,
            control,
            seq,
            Some(ack),
            data,
        ));
    }

    /// The sandbox sends `messages`, each with its length, in one segment.
    fn tcp_send(h: &mut Harness, seq: &mut u32, ack: u32, messages: &[Vec<u8>]) {
        use smoltcp::wire::TcpControl;
        let mut bytes = Vec::new();
        for m in messages {
            bytes.extend_from_slice(&(m.len() as u16).to_be_bytes());
            bytes.extend_from_slice(m);
        }
        to_port_53(h, TcpControl::Psh, *seq, ack, &bytes);
        *seq = seq.wrapping_add(bytes.len() as u32);
    }

    /// What moat sent the sandbox on its DNS-over-TCP connection, read as messages, once
    /// the loop has served the marked flows and the upstream sockets (bounded: `ms`).
    fn tcp_answers(h: &mut Harness, want: usize, ms: u64) -> Vec<Message> {
        use crate::engine::testing::tcp_segment_to_guest;
        let mut stream = Vec::new();
        let end = Instant::now() + std::time::Duration::from_millis(ms);
        let mut got = Vec::new();
        while Instant::now() < end && got.len() < want {
            h.serve_marked();
            for up in upstreams(h) {
                readable(&mut h.table, &mut h.cx, up);
            }
            h.cx.stack.egress();
            for seg in h.sent().iter().filter_map(|f| tcp_segment_to_guest(f)) {
                if seg.src_port == 53 {
                    stream.extend_from_slice(&seg.payload);
                }
            }
            got.clear();
            let mut rest = &stream[..];
            while rest.len() >= 2 {
                let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                if rest.len() < 2 + len {
                    break;
                }
                got.push(Message::parse(&rest[2..2 + len]).unwrap());
                rest = &rest[2 + len..];
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        got
    }

    fn dns_streams(h: &Harness) -> usize {
        h.table
            .ids()
            .into_iter()
            .filter(|&f| matches!(h.table.get(f), Some(Flow::DnsStream(_))))
            .count()
    }

    #[test]
    fn dns_over_tcp_is_answered_here_whole_and_in_order() {
        let up = Upstream::new();
        let mut h = Harness::with_resolvers(NetworkPolicy::allow_all(), vec![up.addr()]);
        let (mut seq, ack) = tcp_open(&mut h);
        assert_eq!(dns_streams(&h), 1);
        // Two queries in one segment: both go upstream, each answer comes back framed.
        let mut second = Message::parse(&query("www.example.com")).unwrap();
        second.id = 0x5678;
        tcp_send(
            &mut h,
            &mut seq,
            ack,
            &[query("many.example.com"), second.to_bytes()],
        );
        assert!(tcp_answers(&mut h, 1, 50).is_empty());
        let mut asked = Vec::new();
        for _ in 0..2 {
            asked.push(up.query());
        }
        for (q, peer) in &asked {
            let host = q.questions[0].name.to_text().unwrap();
            // Too big for UDP; TCP takes it whole.
            let records = (0..40).map(|i| a(&host, [203, 0, 113, i])).collect();
            up.answer(q, *peer, records);
        }
        let mut got = tcp_answers(&mut h, 2, 3000);
        got.sort_by_key(|m| m.id);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!((got[0].id, got[1].id), (0x1234, 0x5678));
        for m in &got {
            assert_eq!(m.flags & flags::TC, 0, "truncated over TCP");
            assert_eq!(m.answers.len(), 40);
        }
        // A name no rule allows is refused on the same connection.
        let mut h = Harness::new(NetworkPolicy::none(), DenyMode::Drop);
        let (mut seq, ack) = tcp_open(&mut h);
        tcp_send(&mut h, &mut seq, ack, &[query("api.example.com")]);
        let got = tcp_answers(&mut h, 1, 3000);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].rcode(), rcode::NXDOMAIN);
        // The sandbox closes: so does moat, and the flow ends.
        use smoltcp::wire::TcpControl;
        // The FIN acknowledges moat's answer.
        let fin_ack = ack.wrapping_add(got[0].to_bytes().len() as u32 + 2);
        to_port_53(&mut h, TcpControl::Fin, seq, fin_ack, &[]);
        let closed = h.until(|h| {
            h.serve_marked();
            h.cx.stack.egress();
            let fin = h
                .sent()
                .iter()
                .filter_map(|f| crate::engine::testing::tcp_segment_to_guest(f))
                .find(|s| s.fin && s.src_port == 53);
            if let Some(fin) = fin {
                let last = fin.seq.wrapping_add(1);
                to_port_53(h, TcpControl::None, seq + 1, last, &[]);
                h.serve_marked();
            }
            dns_streams(h) == 0
        });
        assert!(closed, "the DNS-over-TCP flow outlived its connection");
    }

    #[test]
    fn a_name_carrying_a_placeholder_is_refused_and_never_asked() {
        use moat_inspect::secrets::Secret;
        let up = Upstream::new();
        let placeholder = "moatph0123456789abcdef";
        let mut h = Harness::with_config(NetworkPolicy::allow_all(), |cfg| {
            cfg.dns_servers = vec![up.addr()];
            cfg.secrets = vec![
                Secret::new(
                    "TOKEN",
                    zeroize::Zeroizing::new(b"the-real-value".to_vec()),
                    Some(placeholder.to_owned()),
                    &["api.example.com".to_owned()],
                    false,
                )
                .unwrap(),
            ];
        });
        // Over UDP, and in another case (names are folded first).
        ask(
            &mut h,
            &format!("{}.evil.example.com", placeholder.to_uppercase()),
        );
        assert_eq!(
            answer_message(&mut h).map(|m| m.rcode()),
            Some(rcode::NXDOMAIN)
        );
        let violation = r#""secret":"violation""#;
        assert!(h.audit().contains(violation), "{}", h.audit());
        assert!(!up.asked_within(100), "the placeholder went upstream");
        // Over TCP, the same.
        let (mut seq, ack) = tcp_open(&mut h);
        tcp_send(
            &mut h,
            &mut seq,
            ack,
            &[query(&format!("x.{placeholder}.example.com"))],
        );
        let got = tcp_answers(&mut h, 1, 3000);
        assert_eq!(
            got.iter().map(|m| m.rcode()).collect::<Vec<_>>(),
            [rcode::NXDOMAIN]
        );
        assert!(!up.asked_within(100), "the placeholder went upstream");
        // Audited (the log folds the second: the same source and destination) and counted.
        assert_eq!(h.cx.counters.denied, 2);
        // The control: a name without it is asked.
        ask(&mut h, "api.example.com");
        assert!(up.asked_within(3000));
    }

    #[test]
    fn names_on_the_block_lists_are_refused_here() {
        use moat_policy::DomainSuffix;
        let up = Upstream::new();
        let mut h = Harness::with_config(NetworkPolicy::allow_all(), |cfg| {
            cfg.dns_servers = vec![up.addr()];
            cfg.block_domains = vec![DomainName::new("ads.example.com").unwrap()];
            cfg.block_domain_suffixes = vec![DomainSuffix::new(".tracker.example").unwrap()];
        });
        for blocked in ["ads.example.com", "a.b.tracker.example"] {
            ask(&mut h, blocked);
            assert_eq!(
                answer_message(&mut h).map(|m| m.rcode()),
                Some(rcode::NXDOMAIN)
            );
        }
        assert!(!up.asked_within(100), "a blocked name went upstream");
        let events = lookups(&h);
        assert_eq!(events.len(), 2);
        for e in &events {
            assert_eq!(e["decision"], "deny");
            assert!(e["reason"].as_str().unwrap().contains("list"), "{e}");
        }
        assert_ne!(events[0]["blocked_by"], events[1]["blocked_by"]);
        // The control: a name below the blocked one, not on a list, is asked.
        ask(&mut h, "www.ads.example.com");
        assert!(up.asked_within(3000));
    }

    #[test]
    fn a_lookup_a_rule_denies_says_the_rule() {
        let mut h = Harness::new(denying("api.example.com"), DenyMode::Drop);
        ask(&mut h, "api.example.com");
        assert_eq!(
            answer_message(&mut h).map(|m| m.rcode()),
            Some(rcode::NXDOMAIN)
        );
        let e = &lookups(&h)[0];
        assert_eq!(e["decision"], "deny");
        assert_eq!(e["blocked_by"], "policy");
        assert!(
            !e["reason"].as_str().unwrap().contains("DNS is egress"),
            "{e}"
        );
        assert_ne!(e["rule"], "default", "{e}");
    }

    #[test]
    fn a_socket_that_carried_its_share_is_replaced_once_nothing_waits_on_it() {
        let up = Upstream::new();
        let mut h = Harness::with_resolvers(NetworkPolicy::allow_all(), vec![up.addr()]);
        // Fill every slot, then wear the sockets out.
        for i in 0..SOCKETS_PER_RESOLVER {
            ask(&mut h, &format!("q{i}.example.com"));
            let (q, peer) = up.query();
            // No data: an answer without addresses is delivered as it is.
            up.answer(&q, peer, Vec::new());
            assert_eq!(delivered(&mut h).map(|m| m.rcode()), Some(0));
        }
        assert!(lookups(&h).iter().all(|e| e["reason"] == "forwarded"));
        let first = upstreams(&h);
        for &f in &first {
            let sent = match h.table.get(f) {
                Some(Flow::DnsUpstream(u)) => u.sent,
                _ => 0,
            };
            assert_eq!(sent, 1, "each socket counts what it carried");
        }
        assert_eq!(first.len(), SOCKETS_PER_RESOLVER);
        let ports = |h: &Harness| -> Vec<u16> {
            upstreams(h)
                .iter()
                .filter_map(|&f| match h.table.get(f) {
                    Some(Flow::DnsUpstream(u)) => u.sock.local_addr().ok().map(|a| a.port()),
                    _ => None,
                })
                .collect()
        };
        let before = ports(&h);
        assert_eq!(before.len(), SOCKETS_PER_RESOLVER);
        let worn = upstreams(&h)[0];
        let worn_port = before[0];
        if let Some(Flow::DnsUpstream(u)) = h.table.get_mut(worn) {
            u.sent = QUERIES_PER_SOCKET;
        }
        ask(&mut h, "next.example.com");
        let (_, peer) = up.query();
        let after = ports(&h);
        assert_eq!(after.len(), SOCKETS_PER_RESOLVER);
        assert!(!after.contains(&worn_port), "a worn-out socket was kept");
        assert!(
            before.iter().all(|p| *p == worn_port || after.contains(p)),
            "a socket with its share left was closed"
        );
        // The new query went out on the socket moat just opened, from a new port.
        assert!(!before.contains(&peer.port()), "sent from an old socket");
        // With every slot filled, queries take the sockets in turn.
        let mut from = std::collections::HashSet::new();
        for i in 0..SOCKETS_PER_RESOLVER {
            ask(&mut h, &format!("turn{i}.example.com"));
            let (q, peer) = up.query();
            from.insert(peer.port());
            up.answer(&q, peer, Vec::new());
            assert!(delivered(&mut h).is_some());
        }
        assert_eq!(from.len(), SOCKETS_PER_RESOLVER, "{from:?}");
        assert_eq!(ports(&h).len(), SOCKETS_PER_RESOLVER);
    }

    #[test]
    fn one_dns_over_tcp_connection_has_at_most_its_share_upstream_at_once() {
        let up = Upstream::new();
        let mut h = Harness::with_resolvers(NetworkPolicy::allow_all(), vec![up.addr()]);
        let (mut seq, ack) = tcp_open(&mut h);
        let extra = 5;
        let all: Vec<Vec<u8>> = (0..MAX_PENDING_PER_STREAM + extra)
            .map(|i| {
                let mut m = Message::parse(&query(&format!("q{i}.example.com"))).unwrap();
                m.id = i as u16;
                m.to_bytes()
            })
            .collect();
        for chunk in all.chunks(7) {
            tcp_send(&mut h, &mut seq, ack, chunk);
            h.serve_marked();
        }
        let mut asked = Vec::new();
        for _ in 0..MAX_PENDING_PER_STREAM {
            asked.push(up.query());
        }
        assert!(!up.asked_within(100), "more than its share went upstream");
        // Answered, the rest go.
        for (q, peer) in asked.drain(..) {
            up.answer(&q, peer, Vec::new());
        }
        let first = tcp_answers(&mut h, MAX_PENDING_PER_STREAM, 3000);
        assert_eq!(first.len(), MAX_PENDING_PER_STREAM);
        // The loop's next turn serves the flow the answers marked: it takes the rest.
        h.serve_marked();
        for _ in 0..extra {
            asked.push(up.query());
        }
        for (q, peer) in asked.drain(..) {
            up.answer(&q, peer, Vec::new());
        }
        let rest = tcp_answers(&mut h, extra, 3000);
        let mut ids: Vec<u16> = first.iter().chain(&rest).map(|m| m.id).collect();
        ids.sort_unstable();
        let want: Vec<u16> = (0..(MAX_PENDING_PER_STREAM + extra) as u16).collect();
        assert_eq!(ids, want);
    }

    #[test]
    fn a_send_that_fails_asks_the_next_resolver() {
        let up = Upstream::new();
        let refuses = closed_port();
        let mut h = Harness::with_resolvers(NetworkPolicy::allow_all(), vec![refuses, up.addr()]);
        // A query on each of the first resolver's sockets, unread: each socket now holds
        // the refusal, which its next send reports.
        for i in 0..SOCKETS_PER_RESOLVER {
            ask(&mut h, &format!("q{i}.example.com"));
        }
        assert!(!up.asked_within(50), "the second resolver was asked early");
        assert_eq!(h.table.resolvers.by_server[0].len(), SOCKETS_PER_RESOLVER);
        ask(&mut h, "next.example.com");
        let (q, _) = up.query();
        assert!(
            q.questions[0]
                .name
                .eq_ignore_case(&name("next.example.com"))
        );
    }

    #[test]
    fn queries_sent_before_the_sandbox_closes_are_answered_before_moat_closes() {
        use smoltcp::wire::TcpControl;
        // Answered here: the query and the FIN in one segment.
        let mut h = Harness::new(NetworkPolicy::none(), DenyMode::Drop);
        let (seq, ack) = tcp_open(&mut h);
        let q = query("api.example.com");
        let mut bytes = (q.len() as u16).to_be_bytes().to_vec();
        bytes.extend_from_slice(&q);
        to_port_53(&mut h, TcpControl::Fin, seq, ack, &bytes);
        let got = tcp_answers(&mut h, 1, 3000);
        assert_eq!(
            got.iter().map(|m| m.rcode()).collect::<Vec<_>>(),
            [rcode::NXDOMAIN]
        );
        // Asked upstream, the FIN before the answer: the answer still comes.
        let up = Upstream::new();
        let mut h = Harness::with_resolvers(NetworkPolicy::allow_all(), vec![up.addr()]);
        let (mut seq, ack) = tcp_open(&mut h);
        tcp_send(&mut h, &mut seq, ack, &[query("api.example.com")]);
        h.serve_marked();
        let (q, peer) = up.query();
        to_port_53(&mut h, TcpControl::Fin, seq, ack, &[]);
        h.serve_marked();
        up.answer(&q, peer, vec![a("api.example.com", [203, 0, 113, 7])]);
        let got = tcp_answers(&mut h, 1, 3000);
        assert_eq!(got.len(), 1, "the answer was lost to the close");
        assert_eq!(addresses_in(&got[0]), vec![Ipv4Addr::new(203, 0, 113, 7)]);
    }
}
