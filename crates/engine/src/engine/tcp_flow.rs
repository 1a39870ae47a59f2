//! A TCP flow: **the state of one TCP connection through moat** ([`TcpState`]) and its
//! transitions, for connections the sandbox opens and those that enter through a
//! published port (`inbound.rs` accepts them; they start relaying at once).
//!
//! # Theory of operation
//! ```text
//!  SYN ──judged──▶ Dialing ──host connected──▶ Relaying ──both halves finished──▶ Closing
//!   │ denied: dropped   │ failed, timed out:        │ reset, host error,           │ smoltcp done:
//!   │ (RST in reject)   │ RST to the sandbox        │ ClientHello denied: RST      │ removed, "closed"
//!   ▼                   ▼                           ▼                              ▼
//!                              removed by the flow table (table.rs)
//! ```
//! - **Judged SYN** ([`open`]): a SYN for a new connection is judged by the policy with
//!   the names this sandbox's lookups pinned to the address. Port 53 is never judged or
//!   relayed: DNS over TCP is answered by moat (`dns_flow.rs`). DNS over TLS (853) needs a
//!   rule that names the port. `max_connections` and the buffer budget may refuse it (RST).
//!   In deny mode `explain` a denied SYN is not a flow of this file: moat accepts the
//!   connection itself and answers it (`refusal.rs`).
//! - **Dialing**: moat connects from a host socket first and holds the SYN, with the
//!   smoltcp socket that will take it; the handshake with the sandbox completes only for
//!   reachable destinations. The dial has `connect_timeout`.
//! - **Relaying**: the SYN is fed to a smoltcp socket listening on the exact destination;
//!   bytes pass through the flow's [`Stream`] (`stream.rs`), which handles back-pressure,
//!   half-close, and the TLS server-name check on TLS ports when the policy has domain
//!   rules.
//! - **Closing**: both directions finished with FIN; smoltcp completes the exchange of
//!   FINs and the flow ends as "closed". A connection that ends any other way is "reset".
//! - **Resetting**: the host side reset the connection (or its socket failed) while moat
//!   still held bytes it had read for the sandbox: they are delivered first, then the
//!   sandbox's side is reset — what a program talking to the server directly sees (the
//!   answer, then the reset), where resetting at once would lose the answer.

use std::io;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use mio::Interest;
use mio::net::TcpStream;
use moat_policy::{DomainName, Protocol, canonical_addr};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::wire::IpListenEndpoint;

use super::budget::Grant;
use super::close::{Broken, CloseReason, TlsFailure};
use super::config::DenyMode;
use super::cx::{Cx, TlsAudit};
use super::dial;
use super::dns_flow;
use super::http_stage::{Candidate, PlainHttp};
use super::key::{Due, FlowId, FlowKey, Segment};
use super::on_refusal;
use super::stream::{Hello, Stage, Stream};
use super::table::{Flow, FlowTable};
use super::tls_stage::{Intercept, Swaps, TlsNote};
use moat_inspect::evidence::Named;
use moat_inspect::secrets::swap::Swap;
use moat_inspect::secrets::{Scanner, Secret};
use moat_inspect::tls::sni::Sni;

/// TCP ports whose first bytes are read for a TLS server name (when the policy has domain
/// rules).
const TLS_PORTS: [u16; 1] = [443];
/// How long an outbound connection's allow waits for its first bytes to name it before
/// it is audited without them (`evidence.rs`).
const NAMING_WAIT: Duration = Duration::from_secs(2);
/// How long a connection may take to finish closing once both sides are done.
const CLOSING: Duration = Duration::from_secs(30);
/// How long the sandbox has to take what moat holds for it after the host side reset.
const RESETTING: Duration = Duration::from_secs(5);

/// Where a connection came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// The sandbox connected out.
    Sandbox,
    /// A peer connected to a published port.
    Published,
}

/// Where a TCP flow is in its life (see the module header).
pub(super) enum TcpState {
    /// Dialing upstream; the sandbox's SYN waits here, with the socket that will take it.
    Dialing {
        syn: Vec<u8>,
        seq: u32,
        deadline: Instant,
        socket: Box<tcp::Socket<'static>>,
    },
    /// Relaying through smoltcp socket `handle`.
    Relaying { handle: SocketHandle },
    /// Both directions finished (or interception failed and its alert is on the way);
    /// smoltcp is finishing the exchange of FINs, until `deadline`.
    Closing {
        handle: SocketHandle,
        why: CloseReason,
        deadline: Instant,
    },
    /// The host side failed; what moat holds for the sandbox goes out, then a reset, by
    /// `deadline` at the latest.
    Resetting {
        handle: SocketHandle,
        why: CloseReason,
        deadline: Instant,
    },
}

/// One TCP connection.
pub(super) struct TcpFlow {
    key: FlowKey,
    /// The rule that allowed it (the audit log's `rule`).
    rule: String,
    origin: Origin,
    /// The host's side.
    host: TcpStream,
    /// What the smoltcp socket's buffers are charged.
    mem: Grant,
    state: TcpState,
    stream: Stream,
    /// The allow decision's reason, not yet audited, and since when: an outbound flow is
    /// audited once, named by its first bytes' evidence (`evidence.rs`) — when they tell,
    /// when the host speaks first, after [`NAMING_WAIT`], or when it ends. A flow whose
    /// ClientHello is judged is audited with the server name it was judged by.
    pending_allow: Option<(String, Instant)>,
    /// The names DNS had answered for the destination when the SYN came, the most recent
    /// first: what the connection may be named by (a name looked up later is not what it
    /// used).
    pinned: Vec<DomainName>,
}

/// What a step of a flow asks of the table.
enum Step {
    Continue,
    Remove(CloseReason),
    /// The sandbox's socket was reset: remove after the RST is out.
    Doom(CloseReason),
}

/// A segment from the sandbox.
pub(super) fn on_segment(table: &mut FlowTable, cx: &mut Cx, seg: Segment<'_>) {
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
        dns_flow::open_stream(table, cx, seg);
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
    on_host_ready(table, cx, id);
}

/// The flow's host socket is ready: the dial finished, or bytes can move.
pub(super) fn on_host_ready(table: &mut FlowTable, cx: &mut Cx, id: FlowId) {
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

/// Whether the sandbox's socket still holds bytes from the host it can send (what a
/// reset from the host side waits for, see Resetting).
fn holds_for_sandbox(socket: &tcp::Socket<'static>) -> bool {
    socket.send_queue() > 0 && socket.may_send()
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

impl TcpFlow {
    /// The smoltcp socket the connection runs through (none while dialing).
    pub(super) fn handle(&self) -> Option<SocketHandle> {
        match &self.state {
            TcpState::Dialing { .. } => None,
            TcpState::Relaying { handle }
            | TcpState::Closing { handle, .. }
            | TcpState::Resetting { handle, .. } => Some(*handle),
        }
    }

    /// A connection from a peer of a published port, relaying at once through `handle`
    /// (connecting to the sandbox); no placeholder may go back to the peer.
    pub(super) fn published(
        key: FlowKey,
        rule: String,
        host: TcpStream,
        handle: SocketHandle,
        mem: Grant,
        secrets: &[Secret],
    ) -> TcpFlow {
        let mut stream = Stream::new(Stage::Opaque).unnamed();
        stream.scan_with(Scanner::new(secrets, |_| true));
        TcpFlow {
            key,
            rule,
            origin: Origin::Published,
            host,
            mem,
            state: TcpState::Relaying { handle },
            stream,
            pending_allow: None,
            pinned: Vec::new(),
        }
    }

    pub(super) fn key(&self) -> FlowKey {
        self.key
    }

    /// What the sweep should do.
    pub(super) fn due(&self, now: Instant) -> Due {
        match self.state {
            TcpState::Dialing { deadline, .. } if now >= deadline => Due::DialTimedOut,
            TcpState::Dialing { .. } => Due::Nothing,
            TcpState::Closing { deadline, .. } | TcpState::Resetting { deadline, .. }
                if now >= deadline =>
            {
                Due::CloseTimedOut
            }
            TcpState::Relaying { .. } | TcpState::Closing { .. } | TcpState::Resetting { .. } => {
                Due::Relay
            }
        }
    }

    /// Dialing: whether the host connection is up (`Ok(false)`: not yet); up, the held
    /// SYN goes to a socket listening on the destination and the flow is relaying.
    fn dialed(&mut self, cx: &mut Cx) -> Result<bool, CloseReason> {
        // Connected has a peer; not connected is still dialing unless an error is pending.
        let outcome = match self.host.peer_addr() {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => match self.host.take_error() {
                Ok(Some(e)) | Err(e) => Err(e),
                Ok(None) => return Ok(false),
            },
            Err(e) => Err(e),
        };
        let TcpState::Dialing { seq, socket, .. } = &mut self.state else {
            return Ok(false);
        };
        if let Err(e) = outcome {
            cx.counters.dial_failures += 1;
            cx.stack.reset_guest(self.key, *seq, 1);
            return Err(CloseReason::ConnectFailed(e.to_string()));
        }
        let _ = self.host.set_nodelay(true);
        let endpoint = IpListenEndpoint {
            addr: Some(self.key.host.ip().into()),
            port: self.key.host.port(),
        };
        if socket.listen(endpoint).is_err() {
            return Err(CloseReason::CannotListen);
        }
        let placeholder = TcpState::Relaying {
            handle: SocketHandle::default(),
        };
        let TcpState::Dialing { syn, socket, .. } = std::mem::replace(&mut self.state, placeholder)
        else {
            unreachable!("matched as Dialing above");
        };
        let handle = cx.stack.sockets.add(*socket);
        self.state = TcpState::Relaying { handle };
        cx.stack.feed(&syn);
        Ok(true)
    }

    /// Relaying or closing: moves bytes and says what the table should do.
    fn step(&mut self, cx: &mut Cx) -> Step {
        let handle = match &self.state {
            TcpState::Dialing { .. } => return Step::Continue,
            TcpState::Relaying { handle } => *handle,
            TcpState::Closing { handle, why, .. } => {
                return if is_done(cx.stack.tcp(*handle).state()) {
                    Step::Remove(why.clone())
                } else {
                    Step::Continue
                };
            }
            TcpState::Resetting { handle, why, .. } => {
                let socket = cx.stack.tcp(*handle);
                if holds_for_sandbox(socket) {
                    return Step::Continue;
                }
                socket.abort();
                return Step::Doom(why.clone());
            }
        };
        if cx.stack.tcp(handle).state() == tcp::State::Listen {
            return Step::Remove(CloseReason::Reset);
        }
        if let Some(step) = self.check_client_hello(cx, handle) {
            return step;
        }
        let socket = cx.stack.sockets.get_mut::<tcp::Socket>(handle);
        let pumped = self.stream.pump(
            socket,
            &mut self.host,
            &mut cx.pool,
            &mut self.mem,
            cx.tls.as_mut(),
            &mut cx.scratch,
        );
        // The allow is audited (named by what the pump saw) before what it found.
        self.settle_name(cx);
        // The first substitution and redaction of each secret on the connection.
        let (sub, red) = self.stream.take_swapped();
        if sub | red != 0 {
            let host = self.stream.server_name().unwrap_or_default();
            for i in 0..cx.cfg.secrets.len().min(64) {
                if sub & 1 << i != 0 {
                    cx.secret_swapped(self.key, &host, i, "substituted");
                }
                if red & 1 << i != 0 {
                    cx.secret_swapped(self.key, &host, i, "redacted");
                }
            }
        }
        match pumped {
            Ok(None) => {}
            Ok(Some(TlsNote::Intercepted {
                name,
                alpn,
                verified,
            })) => {
                let audit = TlsAudit {
                    sni: &name,
                    action: "intercepted",
                    verified: Some(verified),
                    alpn: alpn.as_deref(),
                };
                cx.audit_tls(self.key, &self.rule, &audit, None);
            }
            Err(Broken::Reset(why)) => {
                let socket = cx.stack.tcp(handle);
                let from_host = matches!(
                    why,
                    CloseReason::UpstreamRead(_) | CloseReason::UpstreamWrite(_)
                );
                if from_host && holds_for_sandbox(socket) {
                    self.state = TcpState::Resetting {
                        handle,
                        why,
                        deadline: Instant::now() + RESETTING,
                    };
                    return Step::Continue;
                }
                socket.abort();
                return Step::Doom(why);
            }
            Err(Broken::Secret(i)) => {
                // Every action blocks: the sandbox sees a reset (the specification's
                // Block); the audit, the notice and the stop depend on the action.
                let host = self.stream.server_name().unwrap_or_else(|| {
                    cx.pinned_name(self.key.host.ip())
                        .unwrap_or_else(|| self.key.host.ip().to_string())
                });
                // The allow comes before the violation it led to, even when the stage
                // stopped before naming the flow.
                let named = self.stream.named();
                self.audit_pending(cx, &named);
                let name = cx.secret_violation(self.key, &host, i);
                cx.stack.tcp(handle).abort();
                return Step::Doom(CloseReason::SecretViolation(name));
            }
            Err(Broken::Tls(failure)) => {
                // A handshake that failed, or a request refused, is a decision: audited.
                // A connection that broke after both handshakes ends with its reason in
                // the close event. The alert or answer goes out before the FIN; the
                // server's side ends now.
                let why = failure.reason().to_owned();
                if !matches!(failure, TlsFailure::Broken(_)) {
                    let name = self.stream.server_name().unwrap_or_default();
                    let audit = TlsAudit {
                        sni: &name,
                        action: "intercepted",
                        verified: None,
                        alpn: None,
                    };
                    cx.audit_tls(self.key, &self.rule, &audit, Some(&why));
                    let (what, hint) = match &failure {
                        TlsFailure::Refused(_) => ("refused a request on", ""),
                        TlsFailure::Untrusted(_) => (
                            "could not set up TLS to",
                            " (a private CA: --tls-upstream-ca FILE; any certificate: --tls-no-verify-upstream)",
                        ),
                        _ => ("could not set up TLS to", ""),
                    };
                    let at = match name.as_str() {
                        "" => self.key.host.to_string(),
                        name => format!("{name} ({})", self.key.host),
                    };
                    cx.cfg.notices.line(&format!("{what} {at}: {why}{hint}"));
                }
                let _ = self.host.shutdown(std::net::Shutdown::Both);
                cx.stack.tcp(handle).close();
                self.state = TcpState::Closing {
                    handle,
                    why: CloseReason::Tls(why),
                    deadline: Instant::now() + CLOSING,
                };
                return Step::Continue;
            }
        }
        let socket = cx.stack.tcp(handle);
        if is_done(socket.state()) {
            // Removed after the next egress: in TIME-WAIT the ACK of the sandbox's FIN is
            // still to go out (without it the sandbox's socket waits in LAST-ACK, holding
            // its port, for as long as it retransmits).
            return Step::Doom(if self.stream.finished() {
                CloseReason::Closed
            } else {
                CloseReason::Reset
            });
        }
        if self.stream.finished() {
            self.state = TcpState::Closing {
                handle,
                why: CloseReason::Closed,
                deadline: Instant::now() + CLOSING,
            };
        }
        Step::Continue
    }

    /// When the stream waits on a ClientHello that has arrived: judges the flow again
    /// with its server name; a deny (or a hello that cannot be read) resets it.
    fn check_client_hello(&mut self, cx: &mut Cx, handle: SocketHandle) -> Option<Step> {
        let socket = cx.stack.sockets.get_mut::<tcp::Socket>(handle);
        let Hello::Ready(parsed) = self.stream.client_hello(socket, &mut cx.scratch) else {
            return None;
        };
        let (rule, reason, name) = match parsed {
            Sni::Name(name) => {
                let decision = cx.judge_sni(cx.stack.upstream(self.key.host), &name);
                if decision.is_allow() {
                    let (rule, reason) = cx.explain(&decision);
                    self.rule = rule;
                    self.pending_allow = None;
                    let named = Named::Sni(name.clone());
                    cx.audit_allow_pinned("tcp", self.key, &self.rule, &reason, &named, &self.pinned);
                    self.choose_interception(cx, Some(&name));
                    return None;
                }
                self.pending_allow = None;
                let (rule, why) = cx.explain(&decision);
                let note = cx.unpinned_note(self.key.host.ip(), &name);
                (rule, format!("TLS server name {name}: {why}{note}"), Some(name))
            }
            // TLS without a server name: the address and its pins decided, and name it.
            Sni::Absent => {
                self.audit_pending(cx, &Named::Nothing);
                self.choose_interception(cx, None);
                return None;
            }
            // Not TLS: passed as it is (a plain HTTP request still names it by its Host).
            Sni::NotTls => return None,
            // Domain rules cannot be checked against a hello that cannot be read (cut
            // short, malformed, interleaved, too large): fail closed.
            Sni::Incomplete | Sni::Unreadable => (
                "sni".to_owned(),
                "the TLS ClientHello could not be read, so the policy's domain rules cannot be checked".to_owned(),
                None,
            ),
        };
        self.pending_allow = None;
        cx.audit_sni_deny(self.key, &rule, &reason, name.as_ref());
        // The close event names what refused the flow, not the rule its SYN was let in by.
        self.rule = rule;
        cx.stack.tcp(handle).abort();
        Some(Step::Doom(CloseReason::DeniedByClientHello))
    }

    /// The allow not yet audited, audited now, named by `named` (else by the pins).
    fn audit_pending(&mut self, cx: &mut Cx, named: &Named) {
        if let Some((reason, _)) = self.pending_allow.take() {
            let key = self.key;
            cx.audit_allow_pinned("tcp", key, &self.rule, &reason, named, &self.pinned);
        }
    }

    /// Audits the allow once the flow's first bytes have named it, or will not: they
    /// told, the host spoke first (a server-first protocol; the sandbox's bytes answer
    /// it), or [`NAMING_WAIT`] passed. The ClientHello's own judging audits its flows.
    fn settle_name(&mut self, cx: &mut Cx) {
        let Some((_, since)) = &self.pending_allow else {
            return;
        };
        if self.stream.awaits_client_hello() {
            return;
        }
        let named = self.stream.named();
        if named == Named::More && !self.stream.heard_from_host() && since.elapsed() < NAMING_WAIT {
            return;
        }
        self.audit_pending(cx, &named);
    }

    /// On an intercepted port, a judged ClientHello for `name` (`None`: no server name)
    /// is intercepted unless a `bypass` pattern names it.
    fn choose_interception(&mut self, cx: &mut Cx, name: Option<&DomainName>) {
        let Some(tls) = cx.tls.as_ref() else {
            return;
        };
        if !tls.intercepts(self.key.host.port()) {
            return;
        }
        if let Some(name) = name
            && tls.bypasses(name)
        {
            let audit = TlsAudit {
                sni: name.as_str(),
                action: "bypassed",
                verified: None,
                alpn: None,
            };
            cx.audit_tls(self.key, &self.rule, &audit, None);
            return;
        }
        // Inside, a secret may go only to a verified server whose name (the SNI, which
        // every request's Host must equal) and whose address (what a lookup answered)
        // both fall in its list: its placeholder becomes its value there, and its value
        // becomes its placeholder on the way back. Anywhere else the placeholder is a
        // violation.
        let verified = tls.verifies();
        let secrets = &cx.cfg.secrets;
        let upstream = cx.stack.upstream(self.key.host).ip();
        let pinned = cx.pins.names(canonical_addr(upstream), Instant::now());
        let allowed = |i: usize| {
            let s = &secrets[i];
            verified && name.is_some_and(|n| s.allows(n)) && pinned.iter().any(|p| s.allows(p))
        };
        let scanner = Scanner::new(secrets, |i| !allowed(i));
        let mut intercept = Intercept::new(self.key.host.ip(), name.cloned());
        // HTTP is read message by message: to swap, and to scan what framing splits.
        if !secrets.is_empty() {
            let sub = Swap::substitute(secrets, allowed).unwrap_or_else(Swap::none);
            let red = Swap::redact(secrets, allowed).unwrap_or_else(Swap::none);
            intercept.swap_secrets(Swaps::new(sub, red, scanner.clone()));
        }
        self.stream.scan_with(scanner);
        self.stream.intercept(intercept);
    }

    /// Resets the sandbox's side (the engine is stopping).
    pub(super) fn abort_guest(&mut self, cx: &mut Cx) {
        if let TcpState::Relaying { handle }
        | TcpState::Closing { handle, .. }
        | TcpState::Resetting { handle, .. } = self.state
        {
            cx.stack.tcp(handle).abort();
        }
    }

    /// Releases the flow's sockets and audits its end (called by the flow table).
    pub(super) fn close(mut self, cx: &mut Cx, why: &CloseReason) {
        // Ended before its first bytes named it (or its ClientHello was judged): the
        // address's allow stands, named by what there is.
        let named = self.stream.named();
        self.audit_pending(cx, &named);
        if self.origin == Origin::Published && !why.is_clean() {
            reset_host(&self.host);
        }
        // No EPOLL_CTL_DEL: the host socket is dropped below, and closing its only
        // descriptor takes it out of the poll set (a syscall less per connection).
        match self.state {
            TcpState::Relaying { handle }
            | TcpState::Closing { handle, .. }
            | TcpState::Resetting { handle, .. } => {
                cx.pool.recycle(&mut cx.stack.sockets, handle, self.mem);
            }
            TcpState::Dialing { socket, .. } => cx.pool.give_back(*socket, self.mem),
        }
        // The side that opened the flow is `src`: a published port's peer, or the sandbox.
        let inbound = self.origin == Origin::Published;
        let (src, dst) = if inbound {
            (self.key.host, self.key.guest)
        } else {
            (self.key.guest, self.key.host)
        };
        cx.audit_close(
            "tcp",
            &self.rule,
            inbound,
            src,
            dst,
            &self.stream.tally,
            why,
        );
    }
}

/// smoltcp is done with the socket.
/// The sandbox's side is over: closed, in TIME-WAIT, or back in LISTEN after a reset in
/// SYN-RECEIVED (never left listening: see [`on_segment`]).
fn is_done(state: tcp::State) -> bool {
    matches!(
        state,
        tcp::State::Closed | tcp::State::TimeWait | tcp::State::Listen
    )
}

/// Resets a host connection (SO_LINGER 0, then close).
pub(super) fn reset_host(stream: &TcpStream) {
    let linger = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ =
        nix::sys::socket::setsockopt(&stream.as_fd(), nix::sys::socket::sockopt::Linger, &linger);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

    use std::net::{Ipv4Addr, SocketAddr, TcpListener};
    use std::time::Duration;

    use moat_policy::NetworkPolicy;
    use smoltcp::wire::TcpControl;

    use super::*;
    use crate::engine::testing::{Harness, key_to, loopback_listener, syn, tcp_to_guest};

    const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);

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
        on_host_ready(&mut h.table, &mut h.cx, id);
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
            on_host_ready(&mut h.table, &mut h.cx, id);
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
