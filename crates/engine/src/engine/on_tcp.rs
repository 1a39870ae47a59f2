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
    use crate::engine::testing::{
        GUEST_PORT, Harness, key_to, loopback_listener, syn, tcp_from, tcp_segment_to_guest,
        tcp_to_guest,
    };

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
        let due = |h: &Harness, at: Instant| match h.table.get(id) {
            Some(Flow::Tcp(f)) => f.due(at),
            _ => Due::Nothing,
        };
        assert!(matches!(due(&h, Instant::now()), Due::Nothing));
        let later = Instant::now() + Duration::from_secs(16);
        assert!(matches!(due(&h, later), Due::DialTimedOut));
        dial_timed_out(&mut h.table, &mut h.cx, id);
        assert_eq!(h.cx.counters.dial_failures, 1);
        assert_eq!(state(&h, id), "gone");
        let reset = sent_reset(&mut h, port);
        assert!(reset);
        assert!(
            h.audit().contains("upstream connect timed out"),
            "{}",
            h.audit()
        );
    }

    /// The sandbox connects to the gateway's `port` (a loopback listener) and the
    /// handshake completes: the flow, the sandbox's next sequence number and moat's.
    fn connected(h: &mut Harness, port: u16) -> (FlowId, u32, u32) {
        let (_, id) = open_to(h, port);
        assert_eq!(state(h, id), "relaying");
        h.cx.stack.egress();
        let syn_ack = h
            .sent()
            .iter()
            .filter_map(|f| tcp_segment_to_guest(f))
            .find(|s| s.syn && s.src_port == port)
            .expect("no SYN-ACK");
        let ours = syn_ack.seq.wrapping_add(1);
        h.frame(&tcp_from(
            GUEST_PORT,
            GATEWAY,
            port,
            TcpControl::None,
            1001,
            Some(ours),
            &[],
        ));
        (id, 1001, ours)
    }

    /// The sandbox sends `bytes` on its connection to the gateway's `port`.
    fn send(h: &mut Harness, port: u16, seq: u32, ack: u32, bytes: &[u8]) {
        h.frame(&tcp_from(
            GUEST_PORT,
            GATEWAY,
            port,
            TcpControl::Psh,
            seq,
            Some(ack),
            bytes,
        ));
    }

    /// The loop serves the flows an event marked, as its turn does.
    fn serve(h: &mut Harness) {
        h.serve_marked();
        // Sent first, then the doomed removed, as the loop's turn ends.
        h.cx.stack.egress();
        h.table.remove_doomed(&mut h.cx);
    }

    /// What the server reads of the connection it accepted, until `want` bytes (bounded).
    fn read_at_server(h: &mut Harness, conn: &mut std::net::TcpStream, want: usize) -> Vec<u8> {
        use std::io::Read;
        conn.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        h.until(|h| {
            serve(h);
            let mut buf = [0u8; 4096];
            while let Ok(n) = conn.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            got.len() >= want
        });
        got
    }

    /// A lookup of api.example.com answered the address the gateway stands for.
    fn api_answered_for_the_gateway(h: &mut Harness) {
        let name = moat_policy::DomainName::new("api.example.com").unwrap();
        let loopback = std::net::Ipv4Addr::LOCALHOST.into();
        h.cx.pins.pin(loopback, &name, 60, Instant::now());
    }

    /// What the server reads in `ms` while the loop turns: for what must not arrive.
    fn arrives_within(h: &mut Harness, conn: &mut std::net::TcpStream, ms: u64) -> Vec<u8> {
        use std::io::Read;
        conn.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        let end = Instant::now() + Duration::from_millis(ms);
        while Instant::now() < end {
            serve(h);
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = conn.read(&mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        got
    }

    #[test]
    fn the_sandboxs_bytes_reach_the_host_on_an_established_flow() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let mut h = Harness::new(NetworkPolicy::allow_all(), DenyMode::Drop);
        let (_, seq, ack) = connected(&mut h, port);
        let (mut conn, _) = server.accept().unwrap();
        send(&mut h, port, seq, ack, b"hello");
        assert_eq!(read_at_server(&mut h, &mut conn, 5), b"hello");
    }

    #[test]
    fn a_reset_while_dialing_ends_the_flow_and_nothing_else_does() {
        let (_server, _filler, port) = full_listener();
        let mut h = Harness::new(NetworkPolicy::allow_all(), DenyMode::Drop);
        let (key, id) = open_to(&mut h, port);
        assert_eq!(state(&h, id), "dialing");
        // The SYN again (the sandbox retransmits): the flow waits on.
        h.frame(&syn(GATEWAY, port));
        assert_eq!(state(&h, id), "dialing");
        h.frame(&tcp_from(
            GUEST_PORT,
            GATEWAY,
            port,
            TcpControl::Rst,
            1001,
            None,
            &[],
        ));
        assert_eq!(state(&h, id), "gone");
        assert!(h.table.find_tcp(&key).is_none());
        assert!(h.audit().contains("\"event\":\"close\""), "{}", h.audit());
    }

    #[test]
    fn a_segment_that_opens_nothing_is_dropped_and_counted() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        server.set_nonblocking(true).unwrap();
        let port = server.local_addr().unwrap().port();
        let mut h = Harness::new(NetworkPolicy::allow_all(), DenyMode::Drop);
        h.frame(&tcp_from(
            GUEST_PORT,
            GATEWAY,
            port,
            TcpControl::None,
            5000,
            Some(1),
            b"x",
        ));
        assert_eq!(h.cx.counters.dropped_unsupported, 1);
        assert!(h.table.ids().is_empty());
        std::thread::sleep(Duration::from_millis(20));
        assert!(server.accept().is_err(), "a segment without SYN was dialed");
        // The control: a SYN opens a flow, uncounted.
        h.frame(&syn(GATEWAY, port));
        assert_eq!(h.cx.counters.dropped_unsupported, 1);
        assert_eq!(h.table.ids().len(), 1);
    }

    /// Whether flow `id`'s stream waits for a ClientHello, or reads HTTP for secrets.
    fn stage(h: &Harness, id: FlowId) -> &'static str {
        match h.table.get(id) {
            Some(Flow::Tcp(f)) if f.stream.awaits_client_hello() => "hello",
            Some(Flow::Tcp(f)) if f.stream.is_plain_http() => "http",
            Some(Flow::Tcp(_)) => "opaque",
            _ => "gone",
        }
    }

    #[test]
    fn a_connection_waits_for_its_client_hello_only_where_tls_is_read() {
        use moat_policy::{Action, Destination, DestinationGroup, Rule};
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        // A policy with a name rule: TLS on port 443 is read for its name, not elsewhere.
        let named = NetworkPolicy {
            default_action: Action::Deny,
            rules: vec![
                Rule::allow_outbound(Destination::domain("api.example.com").unwrap()),
                Rule::allow_outbound(Destination::Group(DestinationGroup::Loopback)),
            ],
        };
        let mut h = Harness::new(named, DenyMode::Drop);
        let (_, id) = open_to(&mut h, port);
        assert_eq!(stage(&h, id), "opaque");
        // Intercepted on this port: its ClientHello is awaited, name rules or not.
        let mut h = Harness::with_config(NetworkPolicy::allow_all(), |cfg| {
            cfg.tls = Some(crate::engine::testing::intercepting(port));
        });
        let (_, id) = open_to(&mut h, port);
        assert_eq!(stage(&h, id), "hello");
    }

    #[test]
    fn plain_http_is_read_only_for_a_secret_that_allows_it_to_a_name_of_this_address() {
        use moat_inspect::secrets::Secret;
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let secret = |plain: bool, host: &str| {
            Secret::new(
                "TOKEN",
                zeroize::Zeroizing::new(b"the-real-value".to_vec()),
                Some("moatph0123456789abcdef".to_owned()),
                &[host.to_owned()],
                plain,
            )
            .unwrap()
        };
        let cases = [
            (secret(true, "api.example.com"), "http"),
            (secret(false, "api.example.com"), "opaque"),
            (secret(true, "other.example.com"), "opaque"),
        ];
        for (s, want) in cases {
            let mut h = Harness::with_config(NetworkPolicy::allow_all(), |cfg| {
                cfg.secrets = vec![s];
            });
            // A lookup of api.example.com answered the address the gateway stands for.
            api_answered_for_the_gateway(&mut h);
            let (_, id) = open_to(&mut h, port);
            assert_eq!(stage(&h, id), want);
        }
    }

    #[test]
    fn on_plain_http_the_secret_goes_in_and_another_hosts_placeholder_is_stopped() {
        use moat_inspect::secrets::Secret;
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let secret = |name: &str, value: &[u8], placeholder: &str, host: &str| {
            let value = zeroize::Zeroizing::new(value.to_vec());
            let hosts = [host.to_owned()];
            Secret::new(name, value, Some(placeholder.to_owned()), &hosts, true).unwrap()
        };
        let ours = secret(
            "OURS",
            b"value-of-ours",
            "moatphours0123456789",
            "api.example.com",
        );
        let theirs = secret(
            "THEIRS",
            b"value-of-theirs",
            "moatphtheirs01234567",
            "other.example.com",
        );
        let mut h = Harness::with_config(NetworkPolicy::allow_all(), |cfg| {
            cfg.secrets = vec![ours, theirs];
        });
        api_answered_for_the_gateway(&mut h);
        let (_, seq, ack) = connected(&mut h, port);
        let (mut conn, _) = server.accept().unwrap();
        let request = b"GET / HTTP/1.1\r\nHost: api.example.com\r\nAuthorization: moatphours0123456789\r\n\r\n";
        send(&mut h, port, seq, ack, request);
        // Swapped, and the answer asked for uncompressed (so the value cannot come back in
        // a form redaction does not know).
        let head = "GET / HTTP/1.1\r\nHost: api.example.com\r\nAuthorization: value-of-ours\r\nAccept-Encoding: identity\r\n\r\n";
        let got = read_at_server(&mut h, &mut conn, head.len());
        assert_eq!(String::from_utf8_lossy(&got), head);
        // The other host's placeholder, on the same connection: stopped, never sent.
        let seq = seq.wrapping_add(request.len() as u32);
        let request =
            b"GET / HTTP/1.1\r\nHost: api.example.com\r\nX-Other: moatphtheirs01234567\r\n\r\n";
        send(&mut h, port, seq, ack, request);
        let got = arrives_within(&mut h, &mut conn, 200);
        assert!(!String::from_utf8_lossy(&got).contains("theirs"), "{got:?}");
        assert!(
            h.audit().contains(r#""secret":"violation""#),
            "{}",
            h.audit()
        );
        assert!(h.audit().contains(r#""name":"THEIRS""#), "{}", h.audit());
    }

    #[test]
    fn a_close_that_takes_too_long_resets_the_sandbox_with_the_reason_it_had() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let mut h = Harness::new(NetworkPolicy::allow_all(), DenyMode::Drop);
        let (id, _, _) = connected(&mut h, port);
        close_timed_out(&mut h.table, &mut h.cx, id);
        // The loop sends what the turn made, then removes the doomed.
        h.cx.stack.egress();
        h.table.remove_doomed(&mut h.cx);
        assert!(sent_reset(&mut h, port), "no RST");
        assert_eq!(state(&h, id), "gone");
        assert!(h.audit().contains("close timed out"), "{}", h.audit());
        // A flow already resetting for the host's failure ends with that reason.
        let mut h = Harness::new(NetworkPolicy::allow_all(), DenyMode::Drop);
        let (id, _, _) = connected(&mut h, port);
        if let Some(Flow::Tcp(f)) = h.table.get_mut(id) {
            let handle = f.handle().unwrap();
            f.state = TcpState::Resetting {
                handle,
                why: CloseReason::UpstreamRead("connection reset by peer".into()),
                deadline: Instant::now(),
            };
        }
        close_timed_out(&mut h.table, &mut h.cx, id);
        h.table.remove_doomed(&mut h.cx);
        let audit = h.audit();
        assert!(audit.contains("upstream read failed"), "{audit}");
        assert!(!audit.contains("close timed out"), "{audit}");
    }

    #[test]
    fn a_dial_the_host_refuses_resets_the_sandbox_in_the_same_turn_and_is_counted() {
        // A loopback port nothing listens on: connect() is under way when it returns, and
        // the refusal is there when moat looks, in the same turn.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut h = Harness::new(NetworkPolicy::allow_all(), DenyMode::Drop);
        h.frame(&syn(GATEWAY, port));
        assert!(h.table.ids().is_empty(), "a refused dial kept a flow");
        assert_eq!(h.cx.counters.dial_failures, 1);
        assert!(sent_reset(&mut h, port), "no RST for a refused dial");
    }

    #[test]
    fn on_plain_http_a_later_request_for_another_host_ends_the_connection() {
        use moat_inspect::secrets::Secret;
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let value = zeroize::Zeroizing::new(b"value-of-ours".to_vec());
        let hosts = ["api.example.com".to_owned()];
        let placeholder = Some("moatphours0123456789".to_owned());
        let ours = Secret::new("OURS", value, placeholder, &hosts, true).unwrap();
        let mut h = Harness::with_config(NetworkPolicy::allow_all(), |cfg| {
            cfg.secrets = vec![ours];
        });
        api_answered_for_the_gateway(&mut h);
        let (_, seq, ack) = connected(&mut h, port);
        let (mut conn, _) = server.accept().unwrap();
        // The first request chooses the host; the second names another on the same
        // connection (fronting), with the placeholder the first could carry.
        let first = b"GET /a HTTP/1.1\r\nHost: api.example.com\r\n\r\n";
        let second = b"GET /b?k=moatphours0123456789 HTTP/1.1\r\nHost: evil.example.com\r\n\r\n";
        send(&mut h, port, seq, ack, first);
        let head = "GET /a HTTP/1.1\r\nHost: api.example.com\r\nAccept-Encoding: identity\r\n\r\n";
        // The control: the first went, rewritten.
        let got = read_at_server(&mut h, &mut conn, head.len());
        assert_eq!(String::from_utf8_lossy(&got), head);
        send(&mut h, port, seq + first.len() as u32, ack, second);
        let more = arrives_within(&mut h, &mut conn, 200);
        assert!(more.is_empty(), "{:?}", String::from_utf8_lossy(&more));
        assert!(sent_reset(&mut h, port), "the connection was not ended");
        assert!(h.audit().contains("evil.example.com"), "{}", h.audit());
    }
}
