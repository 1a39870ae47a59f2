//! A refused TCP connection that moat answers itself (deny mode `explain`), so that a
//! program inside — often an AI agent — can tell a policy refusal from a broken network.
//! The flow table's part (taking it in within its limits, moving it along) is
//! `on_refusal.rs`.
//!
//! # Theory of operation
//! The SYN was judged and denied (`tcp_flow.rs`), and audited exactly as under `reject`.
//! Instead of a reset, moat accepts the connection itself: a smoltcp socket listens on the
//! exact destination and takes the SYN, as for DNS over TCP. **Nothing is dialed, and
//! nothing reaches the world.** Then:
//! - **Plain**: the sandbox's first bytes are read without taking them (at most
//!   [`REFUSAL_RX`], what the receive ring holds) and classified
//!   (`http/refusal.rs`). An HTTP/1 request, once its head is whole (or the ring is full,
//!   the sandbox has finished sending, or the deadline passed with the request line in),
//!   gets moat's `403 Forbidden` with one line naming the rule and the flag that would allow
//!   it, then FIN. Anything else — a TLS ClientHello on a port not intercepted, binary, a
//!   client that sends nothing (a server-first protocol) — is reset: at once when the first
//!   bytes rule HTTP out, else at [`FIRST_BYTES`].
//! - **TLS** (a port moat intercepts, `--tls-intercept`): the ClientHello is read by a
//!   rustls acceptor; the handshake is finished with a leaf for its server name (or the
//!   address) signed by moat's CA — the one the sandbox trusts — offering only `http/1.1`;
//!   the request inside is classified as above, and the 403 goes back inside TLS, then
//!   `close_notify` and FIN. A name that bypasses interception, a hello that cannot be read,
//!   a failed handshake, or a client that speaks only h2 is reset.
//! - **Answered**: what the sandbox still sends is taken and discarded; the flow ends when
//!   smoltcp has finished the exchange of FINs, or is reset at [`ANSWERED`].
//!
//! Bounded like every flow: a refusal counts toward `max_connections`, its socket's small
//! rings are charged whole to the buffer budget, at most [`MAX_REFUSALS`] and at most half
//! of `max_connections` are held at once (refused connections never take the slots allowed
//! ones need), and each lives a few seconds at most. A refusal that would pass a limit is reset as under `reject` and counted
//! (`explain_skipped`). Its end writes no `close` event: the audit log says what `reject`'s
//! does, the `connect` deny.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moat_inspect::http::refusal::{self, FirstBytes};
use moat_inspect::tls::ca::LeafName;
use moat_policy::{Decision, DomainName};
use moat_record::summary;
use rustls::ServerConnection;
use rustls::pki_types::ServerName;
use rustls::server::Acceptor;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::wire::IpListenEndpoint;

use super::budget::Grant;
use super::close::CloseReason;
use super::cx::Cx;
use super::key::FlowKey;
use super::key::Segment;
use super::pool::REFUSAL_RX;
use super::tls_shared::Fixed;
use super::tls_stage::socket_sink;

/// How long the sandbox has, from its SYN, to send its request's head (and, on an
/// intercepted port, to finish the TLS handshake).
pub(super) const FIRST_BYTES: Duration = Duration::from_secs(2);
/// How long the answer has to reach the sandbox and the connection to finish closing.
pub(super) const ANSWERED: Duration = Duration::from_secs(5);
/// Refused connections held at once; past it they are reset.
pub(super) const MAX_REFUSALS: usize = 64;
/// The most plaintext read inside TLS before the request is judged.
const MAX_PLAINTEXT: usize = REFUSAL_RX;

/// Where a refused connection is.
enum Phase {
    /// Reading the first bytes of a plain connection.
    Plain,
    /// Reading the ClientHello on an intercepted port.
    Hello(Box<Acceptor>),
    /// TLS with moat's leaf; the plaintext read so far.
    Tls {
        conn: Box<ServerConnection>,
        plain: Vec<u8>,
    },
    /// The 403 is on its way and the send side closed.
    Answered,
}

/// A refused connection moat answers (see the module header).
pub(super) struct Refusal {
    key: FlowKey,
    handle: SocketHandle,
    /// What the socket's rings are charged.
    mem: Grant,
    /// Why it was refused: the 403's body.
    line: String,
    phase: Phase,
    /// The current phase's deadline.
    deadline: Instant,
}

/// What a step asks of the table.
pub(super) enum Step {
    Continue,
    /// The sandbox's socket was reset, or is done: remove after the next egress.
    Doom(CloseReason),
}

/// The line that tells the sandbox why its connection on `key` was refused by `decision`,
/// with the `--allow` flag the run's summary would suggest for it.
fn line_for(cx: &Cx, key: FlowKey, decision: &Decision) -> String {
    let (rule, reason) = cx.explain(decision);
    let fields = cx.deny_fields("tcp", key);
    let (shown, flag) = summary::denied_connect(&rule, &fields, cx.cfg.flag_rules);
    refusal::refusal_line(
        &format!("a connection to {shown}"),
        &reason,
        flag.as_deref(),
    )
}

/// Counts a refusal moat could not answer and resets it, as under `reject`.
pub(super) fn skip(cx: &mut Cx, seg: &Segment<'_>) {
    cx.counters.explain_skipped += 1;
    cx.stack.reset_guest(seg.key, seg.seq, seg.len);
}

impl Refusal {
    /// Takes the refused connection whose SYN is `seg` (already audited) on a smoltcp
    /// socket of its own, to be answered here; `None` (reset, counted) when no socket can.
    pub(super) fn accept(cx: &mut Cx, seg: &Segment<'_>, decision: &Decision) -> Option<Refusal> {
        let key = seg.key;
        let Some((mut socket, mem)) = cx.pool.refusal_socket() else {
            skip(cx, seg);
            return None;
        };
        let endpoint = IpListenEndpoint {
            addr: Some(key.host.ip().into()),
            port: key.host.port(),
        };
        if socket.listen(endpoint).is_err() {
            cx.pool.give_back(socket, mem);
            skip(cx, seg);
            return None;
        }
        let intercepted = cx
            .tls
            .as_ref()
            .is_some_and(|t| t.intercepts(key.host.port()));
        let phase = if intercepted {
            Phase::Hello(Box::default())
        } else {
            Phase::Plain
        };
        Some(Refusal {
            key,
            handle: cx.stack.sockets.add(socket),
            mem,
            line: line_for(cx, key, decision),
            phase,
            deadline: Instant::now() + FIRST_BYTES,
        })
    }
}

/// What to do with a request judged from `first` bytes: `Some(true)` answer, `Some(false)`
/// reset, `None` wait. `stalled`: no more will come in time (the ring or plaintext
/// buffer is full, the sandbox finished sending, or the deadline passed).
fn verdict(first: FirstBytes, stalled: bool) -> Option<bool> {
    match first {
        FirstBytes::RequestHead => Some(true),
        FirstBytes::NotHttp => Some(false),
        FirstBytes::RequestLine if stalled => Some(true),
        FirstBytes::Partial if stalled => Some(false),
        FirstBytes::RequestLine | FirstBytes::Partial => None,
    }
}

/// Whether the sandbox has finished sending (FIN) on a socket past its handshake.
fn guest_done(socket: &tcp::Socket<'static>) -> bool {
    !socket.may_recv() && !matches!(socket.state(), tcp::State::SynReceived | tcp::State::Listen)
}

impl Refusal {
    pub(super) fn key(&self) -> FlowKey {
        self.key
    }

    /// The smoltcp socket that took the refused connection.
    pub(super) fn handle(&self) -> SocketHandle {
        self.handle
    }

    /// One step (see the module header).
    pub(super) fn step(&mut self, cx: &mut Cx, now: Instant) -> Step {
        let socket = cx.stack.sockets.get_mut::<tcp::Socket>(self.handle);
        if matches!(
            socket.state(),
            tcp::State::Closed | tcp::State::TimeWait | tcp::State::Listen
        ) {
            // Back in LISTEN: reset in SYN-RECEIVED (never left listening). In TIME-WAIT the ACK of the sandbox's FIN is still to go out: removed after
            // the next egress.
            return Step::Doom(match self.phase {
                Phase::Answered => CloseReason::Closed,
                _ => CloseReason::Reset,
            });
        }
        let late = now >= self.deadline;
        let answer = match &mut self.phase {
            Phase::Answered => {
                // Whatever the sandbox still sends is taken, so its window stays open
                // and its FIN arrives.
                while socket.can_recv() && socket.recv(|b| (b.len(), ())).is_ok() {}
                if late {
                    socket.abort();
                    return Step::Doom(CloseReason::CloseTimedOut);
                }
                return Step::Continue;
            }
            Phase::Plain => {
                let window = &mut cx.scratch[..REFUSAL_RX];
                let n = socket.peek_slice(window).unwrap_or(0);
                let stalled = late || n >= socket.recv_capacity() || guest_done(socket);
                match verdict(refusal::classify(&window[..n]), stalled) {
                    None => return Step::Continue,
                    Some(false) => None,
                    Some(true) => {
                        let response = refusal::forbidden(&self.line, refusal::is_head(window));
                        // The request is taken (and dropped): nothing reads it.
                        let _ = socket.recv(|b| (b.len(), ()));
                        Some(response)
                    }
                }
            }
            Phase::Hello(_) | Phase::Tls { .. } => match self.tls_step(cx, late) {
                Ok(None) => return Step::Continue,
                Ok(Some(())) => Some(Vec::new()),
                Err(()) => None,
            },
        };
        let socket = cx.stack.sockets.get_mut::<tcp::Socket>(self.handle);
        let Some(response) = answer else {
            socket.abort();
            return Step::Doom(CloseReason::Reset);
        };
        // A 403 of a few hundred bytes into an empty 16 KiB ring (TLS: queued already).
        let _ = socket.send_slice(&response);
        socket.close();
        cx.counters.explained += 1;
        self.phase = Phase::Answered;
        self.deadline = now + ANSWERED;
        Step::Continue
    }

    /// The TLS phases: `Ok(Some(()))` the 403 was queued inside TLS, `Ok(None)` wait,
    /// `Err(())` reset.
    fn tls_step(&mut self, cx: &mut Cx, late: bool) -> Result<Option<()>, ()> {
        let socket = cx.stack.sockets.get_mut::<tcp::Socket>(self.handle);
        if let Phase::Hello(acceptor) = &mut self.phase {
            while socket.can_recv() {
                let got = socket.recv(|data| {
                    let mut slice: &[u8] = data;
                    match acceptor.read_tls(&mut slice) {
                        Ok(n) => (n, Ok(n)),
                        Err(e) => (0, Err(e)),
                    }
                });
                match got {
                    Ok(Ok(0)) | Err(_) => break,
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) => return Err(()),
                }
            }
            let accepted = match acceptor.accept() {
                Ok(Some(accepted)) => accepted,
                Ok(None) if late || guest_done(socket) => return Err(()),
                Ok(None) => return Ok(None),
                Err(_) => return Err(()),
            };
            let Some(shared) = cx.tls.as_mut() else {
                return Err(());
            };
            let name = match accepted.client_hello().server_name() {
                Some(sni) => {
                    // Only a name moat would intercept is answered with its leaf, in its
                    // canonical form (one cache entry whatever its case or final dot);
                    // anything else, a bypassed name included, is reset.
                    let Ok(name) = DomainName::new(sni) else {
                        return Err(());
                    };
                    if shared.bypasses(&name) || ServerName::try_from(name.as_str()).is_err() {
                        return Err(());
                    }
                    LeafName::Dns(name.as_str().to_owned())
                }
                None => LeafName::Ip(self.key.host.ip()),
            };
            let leaf = shared.leaves.get(&shared.ca, &name).map_err(|_| ())?;
            let mut config = (*shared.refuse).clone();
            config.cert_resolver = Arc::new(Fixed(Some(leaf)));
            // The 403 is HTTP/1.1: a client that offers only h2 gets the alert
            // no_application_protocol (RFC 7301 §3.2), and a reset.
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            let conn = match accepted.into_connection(Arc::new(config)) {
                Ok(conn) => conn,
                Err((_, mut alert)) => {
                    let _ = alert.write(&mut socket_sink(socket));
                    return Err(());
                }
            };
            self.phase = Phase::Tls {
                conn: Box::new(conn),
                plain: Vec::new(),
            };
        }
        let Phase::Tls { conn, plain } = &mut self.phase else {
            return Err(());
        };
        let mut closed = false;
        while socket.can_recv() && plain.len() < MAX_PLAINTEXT {
            let got = socket.recv(|data| {
                let mut slice: &[u8] = data;
                match conn.read_tls(&mut slice) {
                    Ok(n) => (n, Ok(n)),
                    Err(e) => (0, Err(e)),
                }
            });
            match got {
                Ok(Ok(0)) | Err(_) => break,
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return Err(()),
            }
            if conn.process_new_packets().is_err() {
                // The alert rustls queued goes out before the reset.
                let _ = conn.write_tls(&mut socket_sink(socket));
                return Err(());
            }
            let mut buf = [0u8; 1024];
            while plain.len() < MAX_PLAINTEXT {
                match conn.reader().read(&mut buf) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => plain.extend_from_slice(&buf[..n.min(MAX_PLAINTEXT - plain.len())]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
        }
        while conn.wants_write() {
            // A full send ring takes nothing (Ok(0)): stop rather than spin (the handshake and
            // the answer are a few KiB, the ring holds REFUSAL_TX).
            if !matches!(conn.write_tls(&mut socket_sink(socket)), Ok(n) if n > 0) {
                break;
            }
        }
        if conn.is_handshaking() {
            return if late || guest_done(socket) {
                Err(())
            } else {
                Ok(None)
            };
        }
        let stalled = late || closed || plain.len() >= MAX_PLAINTEXT || guest_done(socket);
        match verdict(refusal::classify(plain), stalled) {
            None => Ok(None),
            Some(false) => Err(()),
            Some(true) => {
                let response = refusal::forbidden(&self.line, refusal::is_head(plain));
                let _ = conn.writer().write_all(&response);
                conn.send_close_notify();
                while conn.wants_write() {
                    // A full send ring takes nothing (Ok(0)): stop rather than spin (the handshake and
                    // the answer are a few KiB, the ring holds REFUSAL_TX).
                    if !matches!(conn.write_tls(&mut socket_sink(socket)), Ok(n) if n > 0) {
                        break;
                    }
                }
                Ok(Some(()))
            }
        }
    }

    /// Resets the sandbox's side (the engine is stopping).
    pub(super) fn abort_guest(&mut self, cx: &mut Cx) {
        cx.stack.tcp(self.handle).abort();
    }

    /// Gives the socket back (called by the flow table). No `close` event: the audit log
    /// holds the `connect` deny, as under `reject`.
    pub(super) fn close(self, cx: &mut Cx) {
        cx.pool
            .recycle(&mut cx.stack.sockets, self.handle, self.mem);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

    use std::net::{Ipv4Addr, TcpListener};

    use moat_policy::NetworkPolicy;
    use serde_json::Value;
    use smoltcp::wire::TcpControl;

    use super::*;
    use crate::engine::config::DenyMode;
    use crate::engine::on_refusal::relay;
    use crate::engine::table::Flow;
    use crate::engine::testing::{GUEST_PORT, Harness, tcp_from, tcp_segment_to_guest};

    const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);

    /// The sandbox's side of one connection: its next sequence number and what it
    /// acknowledges.
    struct Guest {
        port: u16,
        to: u16,
        seq: u32,
        ack: u32,
    }

    /// What the sandbox received on a connection.
    #[derive(Default)]
    struct Got {
        syn_ack: Option<u32>,
        data: Vec<u8>,
        fin: bool,
        rst: bool,
    }

    /// Runs the refusal flows as the loop would, sends what they queued, removes the
    /// doomed ones; then what reached the sandbox from port `to`.
    fn turn(h: &mut Harness, to: u16) -> Got {
        for id in h.table.ids() {
            if matches!(h.table.get(id), Some(Flow::Refusal(_))) {
                relay(&mut h.table, &mut h.cx, id);
            }
        }
        h.cx.stack.egress();
        h.table.remove_doomed(&mut h.cx);
        let mut got = Got::default();
        for seg in h.sent().iter().filter_map(|f| tcp_segment_to_guest(f)) {
            if seg.src_port != to {
                continue;
            }
            if seg.syn {
                got.syn_ack = Some(seg.seq);
            }
            got.data.extend_from_slice(&seg.payload);
            got.fin |= seg.fin;
            got.rst |= seg.rst;
        }
        got
    }

    /// The sandbox connects from `port` to the gateway's `to`: the handshake with moat.
    fn connect(h: &mut Harness, port: u16, to: u16) -> Option<Guest> {
        h.frame(&tcp_from(
            port,
            GATEWAY,
            to,
            TcpControl::Syn,
            1000,
            None,
            &[],
        ));
        let isn = turn(h, to).syn_ack?;
        let mut g = Guest {
            port,
            to,
            seq: 1001,
            ack: isn.wrapping_add(1),
        };
        send(h, &mut g, b"");
        Some(g)
    }

    fn send(h: &mut Harness, g: &mut Guest, data: &[u8]) {
        let frame = tcp_from(
            g.port,
            GATEWAY,
            g.to,
            TcpControl::None,
            g.seq,
            Some(g.ack),
            data,
        );
        h.frame(&frame);
        g.seq = g.seq.wrapping_add(data.len() as u32);
    }

    /// A harness whose policy denies the gateway (the host's loopback), in `mode`.
    fn harness(mode: DenyMode) -> Harness {
        Harness::new(NetworkPolicy::public_only(), mode)
    }

    /// The audit events, without what differs from run to run.
    fn events(h: &Harness) -> Vec<Value> {
        h.audit()
            .lines()
            .map(|l| {
                let mut e: Value = serde_json::from_str(l).unwrap();
                let o = e.as_object_mut().unwrap();
                o.remove("ts");
                o.remove("run");
                e
            })
            .collect()
    }

    #[test]
    fn a_refused_http_request_gets_moats_403_and_nothing_is_dialed() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        server.set_nonblocking(true).unwrap();
        let to = server.local_addr().unwrap().port();
        let mut h = harness(DenyMode::Explain);
        let mut g = connect(&mut h, GUEST_PORT, to).expect("moat accepted the connection");
        send(&mut h, &mut g, b"GET /x HTTP/1.1\r\nHost: 10.0.2.2\r\n");
        // The head is not whole: nothing yet.
        let got = turn(&mut h, to);
        assert!(got.data.is_empty() && !got.rst, "{:?}", got.data);
        send(&mut h, &mut g, b"Accept: */*\r\n\r\n");
        let got = turn(&mut h, to);
        let text = String::from_utf8(got.data).unwrap();
        assert!(text.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{text}");
        assert!(text.contains("\r\nConnection: close\r\n"), "{text}");
        let body = text.split_once("\r\n\r\n").unwrap().1;
        assert_eq!(
            body,
            format!(
                "moat: refused a connection to 10.0.2.2:{to}/tcp (rule 0: deny outbound group:loopback); to allow it: --allow 127.0.0.1:{to}/tcp\n"
            )
        );
        assert!(got.fin && !got.rst);
        assert_eq!(h.cx.counters.explained, 1);
        // The sandbox's FIN ends it; no `close` event, one `connect` deny.
        g.ack = g.ack.wrapping_add(text.len() as u32 + 1);
        let fin = tcp_from(
            g.port,
            GATEWAY,
            to,
            TcpControl::Fin,
            g.seq,
            Some(g.ack),
            &[],
        );
        h.frame(&fin);
        turn(&mut h, to);
        assert!(h.table.ids().is_empty(), "the refusal is still held");
        let ev = events(&h);
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(
            (ev[0]["event"].as_str(), ev[0]["decision"].as_str()),
            (Some("connect"), Some("deny"))
        );
        std::thread::sleep(Duration::from_millis(50));
        assert!(server.accept().is_err(), "a refused connection was dialed");
    }

    #[test]
    fn what_is_not_http_is_reset_at_once_and_silence_at_the_deadline() {
        let mut h = harness(DenyMode::Explain);
        // A TLS ClientHello on a port that is not intercepted.
        let mut g = connect(&mut h, GUEST_PORT, 4433).unwrap();
        send(
            &mut h,
            &mut g,
            b"\x16\x03\x01\x00\xf4\x01\x00\x00\xf0\x03\x03",
        );
        let got = turn(&mut h, 4433);
        assert!(got.rst && got.data.is_empty());
        // A client that sends nothing waits for the deadline, then is reset.
        let g = connect(&mut h, GUEST_PORT + 1, 2222).unwrap();
        assert!(!turn(&mut h, 2222).rst);
        let ids = h.table.ids();
        assert_eq!(ids.len(), 1);
        let later = Instant::now() + FIRST_BYTES;
        if let Some(Flow::Refusal(r)) = h.table.get_mut(ids[0]) {
            assert!(matches!(r.step(&mut h.cx, later), Step::Doom(_)));
        }
        h.table.doom(ids[0], CloseReason::Reset);
        h.cx.stack.egress();
        h.table.remove_doomed(&mut h.cx);
        let rst = h
            .sent()
            .iter()
            .filter_map(|f| tcp_segment_to_guest(f))
            .any(|s| s.rst && s.dst_port == g.port);
        assert!(rst, "no reset after the deadline");
        assert_eq!(h.cx.counters.explained, 0);
        assert!(h.table.ids().is_empty());
    }

    #[test]
    fn a_request_line_without_its_head_is_answered_at_the_deadline() {
        let mut h = harness(DenyMode::Explain);
        let mut g = connect(&mut h, GUEST_PORT, 8080).unwrap();
        send(&mut h, &mut g, b"HEAD / HTTP/1.0\r\nHost: a\r\n");
        assert!(turn(&mut h, 8080).data.is_empty());
        let id = h.table.ids()[0];
        if let Some(Flow::Refusal(r)) = h.table.get_mut(id) {
            assert!(matches!(
                r.step(&mut h.cx, Instant::now() + FIRST_BYTES),
                Step::Continue
            ));
        }
        h.cx.stack.egress();
        let got = turn(&mut h, 8080);
        let text = String::from_utf8(got.data).unwrap();
        // HEAD: the head only.
        assert!(
            text.starts_with("HTTP/1.1 403 Forbidden") && text.ends_with("\r\n\r\n"),
            "{text}"
        );
        assert!(got.fin);
    }

    #[test]
    fn refusals_past_their_cap_are_reset_and_counted() {
        let mut h = harness(DenyMode::Explain);
        for i in 0..MAX_REFUSALS as u16 {
            assert!(connect(&mut h, 30_000 + i, 80).is_some(), "refusal {i}");
        }
        assert_eq!(h.table.refusals(), MAX_REFUSALS);
        h.frame(&tcp_from(
            31_000,
            GATEWAY,
            80,
            TcpControl::Syn,
            1000,
            None,
            &[],
        ));
        let reset = h
            .sent()
            .iter()
            .filter_map(|f| tcp_segment_to_guest(f))
            .any(|s| s.rst && s.dst_port == 31_000);
        assert!(reset, "the refusal past the cap was not reset");
        assert_eq!(h.cx.counters.explain_skipped, 1);
        assert_eq!(h.cx.counters.denied, MAX_REFUSALS as u64 + 1);
        // Stopping resets every one and gives every socket back.
        h.table.close_all(&mut h.cx);
        assert_eq!(h.table.refusals(), 0);
        assert!(!h.table.connections_full());
    }

    #[test]
    fn the_audit_log_is_the_same_as_under_reject() {
        let mut logs = Vec::new();
        for mode in [DenyMode::Reject, DenyMode::Explain] {
            let mut h = harness(mode);
            if let Some(mut g) = connect(&mut h, GUEST_PORT, 80) {
                send(&mut h, &mut g, b"GET / HTTP/1.1\r\n\r\n");
                turn(&mut h, 80);
            }
            h.table.close_all(&mut h.cx);
            logs.push(events(&h));
        }
        assert_eq!(logs[0], logs[1]);
        assert_eq!(logs[0].len(), 1, "{:?}", logs[0]);
    }
}
