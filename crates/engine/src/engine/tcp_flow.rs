//! A TCP flow: **the state of one TCP connection through moat** ([`TcpState`]) and its
//! transitions, for connections the sandbox opens and those that enter through a
//! published port (`on_inbound.rs` accepts them; they start relaying at once). What the
//! loop does with a flow's events, the flow table's part, is `on_tcp.rs`.
//!
//! # Theory of operation
//! ```text
//!  SYN ──judged──▶ Dialing ──host connected──▶ Relaying ──both halves finished──▶ Closing
//!   │ denied: dropped   │ failed, timed out:        │ reset, host error,           │ smoltcp done:
//!   │ (RST in reject)   │ RST to the sandbox        │ ClientHello denied: RST      │ removed, "closed"
//!   ▼                   ▼                           ▼                              ▼
//!                              removed by the flow table (table.rs)
//! ```
//! - **Judged SYN** (`on_tcp::open`): a SYN for a new connection is judged by the policy with
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

use mio::net::TcpStream;
use moat_inspect::evidence::Named;
use moat_inspect::secrets::swap::Swap;
use moat_inspect::secrets::{Scanner, Secret};
use moat_inspect::tls::sni::Sni;
use moat_policy::{DomainName, canonical_addr};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::wire::IpListenEndpoint;

use super::budget::Grant;
use super::close::{Broken, CloseReason, TlsFailure};
use super::cx::{Cx, TlsAudit};
use super::key::{Due, FlowKey};
use super::stream::{Hello, Stage, Stream};
use super::tls_stage::{Intercept, TlsNote};
use super::tls_swaps::Swaps;

/// TCP ports whose first bytes are read for a TLS server name (when the policy has domain
/// rules).
pub(super) const TLS_PORTS: [u16; 1] = [443];
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
    pub(super) key: FlowKey,
    /// The rule that allowed it (the audit log's `rule`).
    pub(super) rule: String,
    pub(super) origin: Origin,
    /// The host's side.
    pub(super) host: TcpStream,
    /// What the smoltcp socket's buffers are charged.
    pub(super) mem: Grant,
    pub(super) state: TcpState,
    pub(super) stream: Stream,
    /// The allow decision's reason, not yet audited, and since when: an outbound flow is
    /// audited once, named by its first bytes' evidence (`evidence.rs`) — when they tell,
    /// when the host speaks first, after [`NAMING_WAIT`], or when it ends. A flow whose
    /// ClientHello is judged is audited with the server name it was judged by.
    pub(super) pending_allow: Option<(String, Instant)>,
    /// The names DNS had answered for the destination when the SYN came, the most recent
    /// first: what the connection may be named by (a name looked up later is not what it
    /// used).
    pub(super) pinned: Vec<DomainName>,
}

/// What a step of a flow asks of the table.
pub(super) enum Step {
    Continue,
    Remove(CloseReason),
    /// The sandbox's socket was reset: remove after the RST is out.
    Doom(CloseReason),
}

/// Whether the sandbox's socket still holds bytes from the host it can send (what a
/// reset from the host side waits for, see Resetting).
fn holds_for_sandbox(socket: &tcp::Socket<'static>) -> bool {
    socket.send_queue() > 0 && socket.may_send()
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
    pub(super) fn dialed(&mut self, cx: &mut Cx) -> Result<bool, CloseReason> {
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
    pub(super) fn step(&mut self, cx: &mut Cx) -> Step {
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
