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
    use crate::engine::testing::{Harness, udp, udp_to_guest};
    use moat_dns::message::{Question, name, rtype};

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
        // Not DNS: dropped and counted, never answered or forwarded.
        h.frame(&udp(Ipv4Addr::new(10, 0, 2, 2), 53, b"not dns at all"));
        assert_eq!(answer(&mut h), None);
        assert_eq!(h.cx.counters.dns_dropped, 1);
    }
}
