//! What the loop does with TCP flows (`tcp_flow.rs`): a segment from the sandbox (fed to
//! its flow; a SYN judged, and allowed, dialed — or handed to DNS over TCP or, refused in
//! deny mode `explain`, to `on_refusal.rs`), the host socket ready, and the timers
//! (a dial or a close that took too long).

use std::time::Instant;

use mio::Interest;
use moat_inspect::secrets::Scanner;
use moat_inspect::secrets::swap::Swap;
use moat_policy::{Protocol, canonical_addr};
use smoltcp::socket::tcp;

use super::close::CloseReason;
use super::config::DenyMode;
use super::cx::Cx;
use super::dial;
use super::http_stage::{Candidate, PlainHttp};
use super::key::{FlowId, Segment};
use super::on_dns;
use super::on_refusal;
use super::stream::{Stage, Stream};
use super::table::{Flow, FlowTable};
use super::tcp_flow::{Origin, Step, TLS_PORTS, TcpFlow, TcpState};

/// A segment from the sandbox.
pub(super) fn segment(table: &mut FlowTable, cx: &mut Cx, seg: Segment<'_>) {
    if let Some(id) = table.find_tcp(&seg.key) {
        let handle = match table.get(id) {
            Some(Flow::Tcp(flow)) => flow.handle(),
            Some(Flow::DnsStream(flow)) => Some(flow.handle()),
            Some(Flow::Refusal(flow)) => Some(flow.handle()),
            _ => None,
        };
        match (handle, table.get(id)) {
            (Some(handle), Some(Flow::Tcp(_) | Flow::DnsStream(_) | Flow::Refusal(_))) => {
                cx.stack.feed(seg.frame);
                table.touch(id);
                // A reset in SYN-RECEIVED puts a smoltcp socket back in LISTEN on the
                // flow's destination, where it would take the next SYN to that address
                // and port from any sandbox port — a connection moat judged (or refused)
                // on its own, served through this flow's host side. The flow ends here,
                // before another segment is fed.
                if cx.stack.tcp(handle).state() == tcp::State::Listen {
                    table.remove(id, CloseReason::Reset, cx);
                }
            }
            (None, Some(Flow::Tcp(_))) if seg.rst => {
                table.remove(id, CloseReason::ResetWhileConnecting, cx);
            }
            _ => {}
        }
        return;
    }
    if !seg.opens {
        cx.counters.dropped_unsupported += 1;
        return;
    }
    if seg.key.host.port() == 53 {
        // Every DNS-over-TCP flow is answered here, whatever address it was sent to.
        on_dns::open_stream(table, cx, seg);
        return;
    }
    open(table, cx, seg);
}

/// Judges a SYN for a new connection and, allowed, starts dialing.
fn open(table: &mut FlowTable, cx: &mut Cx, seg: Segment<'_>) {
    let key = seg.key;
    let upstream = cx.stack.upstream(key.host);
    let verdict = cx.judge(Protocol::Tcp, upstream.ip(), Some(upstream.port()));
    // DNS over TLS would carry lookups past the interceptor: only a rule that names
    // port 853 explicitly allows it.
    let dot_refused =
        key.host.port() == 853 && verdict.as_ref().is_ok_and(|p| !p.rule_names_ports());
    let permit = match verdict {
        Ok(permit) if !dot_refused => permit,
        Ok(_) => {
            cx.audit_bypass(
                "tcp",
                key,
                "DNS over TLS is refused unless a rule allows port 853 explicitly",
            );
            cx.stack.reset_guest(key, seg.seq, seg.len);
            return;
        }
        Err(decision) => {
            cx.audit_deny("tcp", key, &decision);
            match cx.cfg.deny_mode {
                DenyMode::Drop => {}
                DenyMode::Reject => cx.stack.reset_guest(key, seg.seq, seg.len),
                // Accepted and answered by moat itself (`refusal.rs`); nothing is dialed.
                DenyMode::Explain => on_refusal::open(table, cx, seg, &decision),
            }
            return;
        }
    };
    let (rule, reason) = cx.explain(permit.decision());
    if table.connections_full() {
        cx.audit_limit("tcp", key);
        cx.stack.reset_guest(key, seg.seq, seg.len);
        return;
    }
    let Some((socket, mem)) = cx.pool.connection_socket() else {
        cx.audit_memory("tcp", key);
        cx.stack.reset_guest(key, seg.seq, seg.len);
        return;
    };
    let mut host = match dial::tcp(upstream, &permit) {
        Ok(s) => s,
        Err(_) => {
            cx.pool.give_back(socket, mem);
            cx.counters.dial_failures += 1;
            cx.stack.reset_guest(key, seg.seq, seg.len);
            return;
        }
    };
    let Some(id) = table.open(&mut host, Interest::READABLE | Interest::WRITABLE) else {
        cx.pool.give_back(socket, mem);
        cx.stack.reset_guest(key, seg.seq, seg.len);
        return;
    };
    let intercepted = cx
        .tls
        .as_ref()
        .is_some_and(|t| t.intercepts(key.host.port()));
    let stage = if intercepted || (TLS_PORTS.contains(&key.host.port()) && cx.has_name_rules) {
        Stage::AwaitClientHello
    } else {
        Stage::Opaque
    };
    // A secret goes in clear only if it allows plain HTTP, to a host its lookups named:
    // such a connection is read as HTTP (`http_stage.rs`). Elsewhere every placeholder is
    // watched.
    let names = cx.pins.names(canonical_addr(upstream.ip()), Instant::now());
    let secrets = &cx.cfg.secrets;
    let candidates: Vec<Candidate> = names
        .iter()
        .filter(|n| secrets.iter().any(|s| s.allows_plain_http() && s.allows(n)))
        .map(|n| {
            let allowed = |i: usize| secrets[i].allows_plain_http() && secrets[i].allows(n);
            Candidate {
                host: n.clone(),
                sub: Swap::substitute(secrets, allowed).unwrap_or_else(Swap::none),
                red: Swap::redact(secrets, allowed).unwrap_or_else(Swap::none),
                scan: Scanner::new(secrets, |i| !allowed(i)),
            }
        })
        .collect();
    let everything = Scanner::new(secrets, |_| true);
    let stream = if matches!(stage, Stage::Opaque) && !candidates.is_empty() {
        Stream::new(Stage::Http(Box::new(PlainHttp::new(
            candidates, everything,
        ))))
    } else {
        let mut stream = Stream::new(stage);
        stream.scan_with(everything);
        stream
    };
    let flow = TcpFlow {
        key,
        rule: rule.clone(),
        origin: Origin::Sandbox,
        host,
        mem,
        state: TcpState::Dialing {
            syn: seg.frame.to_vec(),
            seq: seg.seq,
            deadline: Instant::now() + cx.cfg.connect_timeout,
            socket: Box::new(socket),
        },
        stream,
        pending_allow: Some((reason, Instant::now())),
        pinned: names,
    };
    table.insert(id, Flow::Tcp(flow));
    // A near destination (the host itself, a neighbour over a veth) has often answered
    // before connect() returned: then the SYN-ACK goes out in this turn, not after a wait
    // for the socket's event.
    host_ready(table, cx, id);
}

/// The flow's host socket is ready: the dial finished, or bytes can move.
pub(super) fn host_ready(table: &mut FlowTable, cx: &mut Cx, id: FlowId) {
    let Some(Flow::Tcp(flow)) = table.get_mut(id) else {
        return;
    };
    if !matches!(flow.state, TcpState::Dialing { .. }) {
        table.touch(id);
        return;
    }
    match flow.dialed(cx) {
        Ok(false) => {}
        Ok(true) => table.touch(id),
        Err(why) => table.remove(id, why, cx),
    }
}

/// Moves the flow's bytes along, and ends it when smoltcp is done with it.
pub(super) fn relay(table: &mut FlowTable, cx: &mut Cx, id: FlowId) {
    let Some(Flow::Tcp(flow)) = table.get_mut(id) else {
        return;
    };
    match flow.step(cx) {
        Step::Continue => {}
        Step::Remove(why) => table.remove(id, why, cx),
        Step::Doom(why) => table.doom(id, why),
    }
}

/// The connection did not finish closing in time: reset, and removed after the RST.
pub(super) fn close_timed_out(table: &mut FlowTable, cx: &mut Cx, id: FlowId) {
    if let Some(Flow::Tcp(flow)) = table.get_mut(id) {
        flow.abort_guest(cx);
        // A reset on its way ends with the host side's reason.
        let why = match &flow.state {
            TcpState::Resetting { why, .. } => why.clone(),
            _ => CloseReason::CloseTimedOut,
        };
        table.doom(id, why);
    }
}

/// The dial did not finish within `connect_timeout`: the sandbox's SYN gets RST.
pub(super) fn dial_timed_out(table: &mut FlowTable, cx: &mut Cx, id: FlowId) {
    if let Some(Flow::Tcp(flow)) = table.get(id)
        && let TcpState::Dialing { seq, .. } = flow.state
    {
        cx.counters.dial_failures += 1;
        cx.stack.reset_guest(flow.key, seq, 1);
    }
    table.remove(id, CloseReason::ConnectTimedOut, cx);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

    use std::net::{Ipv4Addr, SocketAddr, TcpListener};
    use std::time::Duration;

    use moat_policy::NetworkPolicy;
    use smoltcp::wire::TcpControl;

    use super::*;
    use crate::engine::key::{Due, FlowKey};
    use crate::engine::testing::{Harness, key_to, loopback_listener, syn, tcp_to_guest};

    const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);

    /// DNS over TLS would carry lookups past the interceptor: refused (reset, audited, never
    /// dialed) unless a rule names port 853, and not refused when one does.
    #[test]
    fn dns_over_tls_needs_a_rule_that_names_its_port() {
        // Whether the audit log has the SYN to port 853 allowed (and so dialed).
        let allowed = |audit: &str| {
            audit.lines().any(|l| {
                l.contains(r#""event":"connect""#)
                    && l.contains(r#""decision":"allow""#)
                    && l.contains(r#""port":853"#)
            })
        };
        let mut h = Harness::new(NetworkPolicy::allow_all(), DenyMode::Drop);
        h.frame(&syn(GATEWAY, 853));
        assert!(sent_reset(&mut h, 853));
        let audit = h.audit();
        assert!(audit.contains("DNS over TLS is refused"), "{audit}");
        assert!(!allowed(&audit), "never dialed: {audit}");
        // The control: with a rule that names the port, the same SYN is allowed and dialed.
        let named = NetworkPolicy {
            default_action: moat_policy::Action::Deny,
            rules: vec![
                moat_policy::Rule::allow_outbound(moat_policy::Destination::Group(
                    moat_policy::DestinationGroup::Loopback,
                ))
                .with_ports(moat_policy::PortRange::single(853)),
            ],
        };
        let mut h = Harness::new(named, DenyMode::Drop);
        h.frame(&syn(GATEWAY, 853));
        let audit = h.audit();
        assert!(!audit.contains("DNS over TLS"), "{audit}");
        assert!(allowed(&audit), "{audit}");
    }

    /// Whether the sandbox got a RST from `port` since the last look.
    fn sent_reset(h: &mut Harness, port: u16) -> bool {
        h.sent()
            .iter()
            .filter_map(|f| tcp_to_guest(f))
            .any(|(src, control, _)| src == port && control == TcpControl::Rst)
    }

    /// The sandbox's SYN to the gateway's `port`: the flow it opened.
    fn open_to(h: &mut Harness, port: u16) -> (FlowKey, FlowId) {
        h.frame(&syn(GATEWAY, port));
        let key = key_to(SocketAddr::new(GATEWAY.into(), port));
        let id = h.table.find_tcp(&key).expect("the SYN opened a flow");
        (key, id)
    }

    fn sent_syn_ack(h: &mut Harness, port: u16) -> bool {
        h.sent()
            .iter()
            .filter_map(|f| tcp_to_guest(f))
            .any(|(src, control, ack)| src == port && control == TcpControl::Syn && ack)
    }

    fn state(h: &Harness, id: FlowId) -> &'static str {
        match h.table.get(id) {
            Some(Flow::Tcp(f)) => match f.state {
                TcpState::Dialing { .. } => "dialing",
                TcpState::Relaying { .. } => "relaying",
                TcpState::Closing { .. } => "closing",
                TcpState::Resetting { .. } => "resetting",
            },
            _ => "gone",
        }
    }

    /// A loopback listener whose accept queue is full (backlog 0, one connection waiting),
    /// so a dial to it stays pending until the waiting one is accepted and the dial's SYN
    /// is sent again (a second later). With it, the filler connection.
    fn full_listener() -> (TcpListener, std::net::TcpStream, u16) {
        let server = loopback_listener(0);
        let port = server.local_addr().unwrap().port();
        let filler = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        (server, filler, port)
    }

    #[test]
    fn a_near_destination_is_answered_in_the_same_turn() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let mut h = Harness::new(NetworkPolicy::allow_all(), DenyMode::Drop);
        let (_, id) = open_to(&mut h, port);
        // Loopback completes the handshake inside connect(): no wait for the event.
        assert_eq!(state(&h, id), "relaying");
        h.cx.stack.egress();
        assert!(
            sent_syn_ack(&mut h, port),
            "no SYN-ACK from {GATEWAY}:{port}"
        );
        assert!(server.accept().is_ok());
    }

    #[test]
    fn an_allowed_syn_waits_for_the_dial_then_is_answered() {
        let (server, _filler, port) = full_listener();
        let mut h = Harness::new(NetworkPolicy::allow_all(), DenyMode::Drop);
        let (key, id) = open_to(&mut h, port);
        assert_eq!(state(&h, id), "dialing");
        host_ready(&mut h.table, &mut h.cx, id);
        assert_eq!(
            state(&h, id),
            "dialing",
            "a pending dial is not taken as up"
        );
        // Nothing answers the sandbox before the host's connection is up.
        assert!(h.sent().iter().all(|f| tcp_to_guest(f).is_none()));
        // The allow waits for the connection's first bytes to name it.
        assert!(!h.audit().contains("\"connect\""), "{}", h.audit());

        // The filler leaves the queue; the dial's SYN, sent again, gets in.
        let (_filler_conn, _) = server.accept().unwrap();
        let relaying = h.until(|h| {
            host_ready(&mut h.table, &mut h.cx, id);
            state(h, id) == "relaying"
        });
        assert!(relaying, "the dial never finished");
        h.cx.stack.egress();
        assert!(
            sent_syn_ack(&mut h, port),
            "no SYN-ACK from {GATEWAY}:{port}"
        );

        // Removed by the table: unindexed, and its end audited with the reason.
        h.table.remove(id, CloseReason::Reset, &mut h.cx);
        assert!(h.table.find_tcp(&key).is_none());
        assert_eq!(state(&h, id), "gone");
        let audit = h.audit();
        assert!(
            audit.contains("\"event\":\"close\"") && audit.contains("\"reason\":\"reset\""),
            "{audit}"
        );
        // Ended before it sent a byte: the allow is audited first, by the address alone (no
        // lookup pinned a name to it: `domain` is absent, not null).
        let connect = audit
            .find("\"event\":\"connect\"")
            .expect("no connect event");
        assert!(
            connect < audit.find("\"event\":\"close\"").unwrap(),
            "{audit}"
        );
        assert!(audit.contains("\"decision\":\"allow\""), "{audit}");
        assert!(!audit.contains("\"domain\""), "{audit}");
    }

    #[test]
    fn a_denied_syn_is_never_dialed_and_reset_in_reject_mode() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        server.set_nonblocking(true).unwrap();
        let port = server.local_addr().unwrap().port();
        // public_only denies the host's loopback, which the gateway stands for.
        let mut h = Harness::new(NetworkPolicy::public_only(), DenyMode::Reject);
        h.frame(&syn(GATEWAY, port));
        let key = key_to(SocketAddr::new(GATEWAY.into(), port));
        assert!(h.table.find_tcp(&key).is_none());
        let reset = sent_reset(&mut h, port);
        assert!(reset, "no RST for the denied SYN");
        assert!(h.audit().contains("\"decision\":\"deny\""), "{}", h.audit());
        std::thread::sleep(Duration::from_millis(50));
        assert!(server.accept().is_err(), "a denied flow was dialed");
    }

    #[test]
    fn a_dial_past_its_deadline_resets_the_sandbox() {
        let (_server, _filler, port) = full_listener();
        let mut h = Harness::new(NetworkPolicy::allow_all(), DenyMode::Drop);
        let (_, id) = open_to(&mut h, port);
        let due = match h.table.get(id) {
            Some(Flow::Tcp(f)) => f.due(Instant::now() + Duration::from_secs(16)),
            _ => Due::Nothing,
        };
        assert!(matches!(due, Due::DialTimedOut));
        dial_timed_out(&mut h.table, &mut h.cx, id);
        assert_eq!(state(&h, id), "gone");
        let reset = sent_reset(&mut h, port);
        assert!(reset);
        assert!(
            h.audit().contains("upstream connect timed out"),
            "{}",
            h.audit()
        );
    }
}
