//! The stream stage of a TCP flow: every byte between the sandbox's socket (smoltcp) and
//! the host's socket passes through one [`Stream`]. **This is where TLS interception and
//! secret substitution plug in**, as further [`Stage`]s.
//!
//! # Theory of operation
//! [`Stream::pump`] moves what it can each way and is the only place that handles
//! back-pressure and half-close:
//! - *sandbox → host*: bytes leave the socket's receive ring only as fast as the host
//!   socket takes them, so a slow host closes the sandbox's window. When the sandbox has
//!   sent FIN and every byte before it is upstream, the host socket's write side is shut
//!   (the up half is finished).
//! - *host → sandbox*: the host socket is read only into the room the socket's send
//!   ring has and the buffer budget allows (see `budget.rs`); when there is none it is
//!   left unread and the host's window closes. End of file closes the socket's send side
//!   (FIN to the sandbox; the down half is finished).
//!
//! The stage decides what happens to the bytes on the way:
//! - [`Stage::Opaque`] relays them unchanged;
//! - [`Stage::AwaitClientHello`] holds the sandbox's bytes until its TLS ClientHello is
//!   complete ([`Stream::client_hello`]); the flow judges the server name and either
//!   opens the stream (opaque, or intercepted on an intercepted port) or resets the
//!   flow. The server's bytes pass meanwhile.
//! - [`Stage::Tls`] terminates TLS on both sides (`tls_stage.rs`); it moves records and
//!   plaintext itself, within the same room and budget.
//! - [`Stage::Http`] rewrites plain HTTP for secrets that allow it (`http_stage.rs`); it
//!   moves the bytes itself too.
//!
//! A stage that rewrites bytes (a TLS session terminated on each side, an HTTP
//! substitution) takes the sandbox's bytes from the receive ring and gives the host what
//! it produced, and the reverse; back-pressure and half-close stay here, around it.

use std::io::{self, Read, Write};
use std::net::Shutdown;

use mio::net::TcpStream;
use moat_inspect::evidence::{First, Named};
use moat_inspect::secrets::{Scan, Scanner};
use moat_inspect::tls::sni::{self, Sni};
use smoltcp::socket::tcp;

use super::budget::Grant;
use super::close::{Broken, CloseReason, TlsFailure};
use super::cx::Tally;
use super::http_stage::PlainHttp;
use super::pool::SocketPool;
use super::tls_shared::TlsShared;
use super::tls_stage::{Intercept, TlsNote};

/// What happens to the bytes on their way.
pub(super) enum Stage {
    /// Relayed unchanged.
    Opaque,
    /// The sandbox's bytes wait for its ClientHello to be judged.
    AwaitClientHello,
    /// TLS is terminated on both sides, plaintext between (`tls_stage.rs`).
    Tls(Box<Intercept>),
    /// Plain HTTP on which secrets are swapped (`http_stage.rs`).
    Http(Box<PlainHttp>),
}

/// One direction of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Half {
    /// Bytes may still come.
    Open,
    /// The sender finished, and the receiver has been told.
    Finished,
}

/// What [`Stream::client_hello`] found.
pub(super) enum Hello {
    /// The stream does not wait for a ClientHello.
    NotAwaited,
    /// Not all of it has arrived yet.
    Wait,
    /// What the sandbox's first bytes say (the stream stops waiting either way).
    Ready(Sni),
}

/// The bytes of one TCP flow (see the module header).
pub(super) struct Stream {
    stage: Stage,
    /// Sandbox → host.
    up: Half,
    /// Host → sandbox.
    down: Half,
    /// Bytes moved each way.
    pub(super) tally: Tally,
    /// Finds the placeholders that must not leave on this flow (`secrets.rs`).
    scanner: Option<Scanner>,
    /// Secrets already reported substituted and redacted on this stream.
    reported: (u64, u64),
    /// The start of the sandbox's bytes, read for the name the connection used
    /// (`evidence.rs`); relayed bytes are copied here until they tell.
    first: First,
}

impl Stream {
    pub(super) fn new(stage: Stage) -> Stream {
        Stream {
            stage,
            up: Half::Open,
            down: Half::Open,
            tally: Tally::new(),
            scanner: None,
            reported: (0, 0),
            first: First::new(),
        }
    }

    /// The name is known another way (a published port's peer): no bytes are read for it.
    pub(super) fn unnamed(mut self) -> Stream {
        self.first = First::settled();
        self
    }

    /// What the sandbox's bytes say about the name the connection used: the server name
    /// of its ClientHello, the `Host` of its first plain HTTP request, or More while that
    /// cannot be told yet.
    pub(super) fn named(&self) -> Named {
        match &self.stage {
            Stage::Tls(t) => t.sni().map_or(Named::Nothing, |n| Named::Sni(n.clone())),
            Stage::Http(h) => h.first_host(),
            Stage::AwaitClientHello => Named::More,
            Stage::Opaque => self.first.named().clone(),
        }
    }

    /// Bytes have come from the host.
    pub(super) fn heard_from_host(&self) -> bool {
        self.tally.down > 0
    }

    /// Whether plain HTTP is read on this stream for secrets (`http_stage.rs`).
    #[cfg(test)]
    pub(super) fn is_plain_http(&self) -> bool {
        matches!(self.stage, Stage::Http(_))
    }

    /// Whether the stream waits on the sandbox's ClientHello to be judged.
    pub(super) fn awaits_client_hello(&self) -> bool {
        matches!(self.stage, Stage::AwaitClientHello)
    }

    /// Both directions are finished: the connection ends in order.
    pub(super) fn finished(&self) -> bool {
        self.up == Half::Finished && self.down == Half::Finished
    }

    /// For a stream waiting on the sandbox's ClientHello: reads what has arrived (without
    /// taking it from the socket) into `scratch` and parses it.
    pub(super) fn client_hello(
        &mut self,
        socket: &mut tcp::Socket<'static>,
        scratch: &mut [u8],
    ) -> Hello {
        if !matches!(self.stage, Stage::AwaitClientHello) {
            return Hello::NotAwaited;
        }
        let window = &mut scratch[..sni::MAX_PEEK];
        let n = socket.peek_slice(window).unwrap_or(0);
        let guest_done = !socket.may_recv()
            && socket.state() != tcp::State::SynReceived
            && socket.state() != tcp::State::Listen;
        let parsed = sni::parse(&window[..n]);
        if parsed == Sni::Incomplete && !guest_done {
            return Hello::Wait;
        }
        self.stage = Stage::Opaque;
        Hello::Ready(parsed)
    }

    /// From now on the sandbox's bytes are scanned for the placeholders `scanner` watches.
    pub(super) fn scan_with(&mut self, scanner: Scanner) {
        self.scanner = (!scanner.is_idle()).then_some(scanner);
    }

    /// The server name of an intercepted stream's ClientHello.
    pub(super) fn server_name(&self) -> Option<String> {
        match &self.stage {
            Stage::Tls(t) => t.sni().map(|n| n.as_str().to_owned()),
            Stage::Http(h) => h.host().map(|n| n.as_str().to_owned()),
            _ => None,
        }
    }

    /// Secrets newly substituted and redacted on an intercepted stream (bit `i`: secret
    /// `i`), each reported once per connection.
    pub(super) fn take_swapped(&mut self) -> (u64, u64) {
        let (sub, red) = match &mut self.stage {
            Stage::Tls(t) => t.take_swapped(),
            Stage::Http(h) => h.take_swapped(),
            _ => return (0, 0),
        };
        let new = (sub & !self.reported.0, red & !self.reported.1);
        self.reported.0 |= sub;
        self.reported.1 |= red;
        new
    }

    /// From now on the stream is intercepted (its ClientHello was judged and not
    /// bypassed).
    pub(super) fn intercept(&mut self, intercept: Intercept) {
        self.stage = Stage::Tls(Box::new(intercept));
    }

    /// Moves bytes both ways as far as the sockets and the budget allow; a note is
    /// something for the audit log, an error why the flow cannot go on.
    pub(super) fn pump(
        &mut self,
        socket: &mut tcp::Socket<'static>,
        host: &mut TcpStream,
        pool: &mut SocketPool,
        mem: &mut Grant,
        tls: Option<&mut TlsShared>,
        scratch: &mut [u8],
    ) -> Result<Option<TlsNote>, Broken> {
        if let Stage::Tls(intercept) = &mut self.stage {
            let Some(shared) = tls else {
                return Err(Broken::Tls(TlsFailure::Handshake(
                    "interception is not configured".into(),
                )));
            };
            let scanner = self.scanner.as_mut();
            let note = intercept
                .pump(
                    socket,
                    host,
                    pool,
                    mem,
                    shared,
                    &mut self.tally,
                    scanner,
                    scratch,
                )
                .map_err(|f| match f {
                    TlsFailure::Secret(i) => Broken::Secret(i),
                    other => Broken::Tls(other),
                })?;
            if intercept.finished() {
                self.up = Half::Finished;
                self.down = Half::Finished;
            }
            return Ok(note);
        }
        if let Stage::Http(plain) = &mut self.stage {
            plain.pump(socket, host, pool, mem, &mut self.tally, scratch)?;
            if plain.finished() {
                self.up = Half::Finished;
                self.down = Half::Finished;
            }
            return Ok(None);
        }
        self.relay(socket, host, pool, mem).map(|()| None)
    }

    /// The opaque relay.
    fn relay(
        &mut self,
        socket: &mut tcp::Socket<'static>,
        host: &mut TcpStream,
        pool: &mut SocketPool,
        mem: &mut Grant,
    ) -> Result<(), Broken> {
        // Sandbox → host, each piece scanned for placeholders before it leaves.
        while matches!(self.stage, Stage::Opaque) && socket.can_recv() {
            let scanner = &mut self.scanner;
            let first = &mut self.first;
            let mut violation = None;
            // After the sandbox's FIN nothing can complete a placeholder: all may pass.
            let ended = socket.state() != tcp::State::Established;
            let r = socket.recv(|buf| {
                // Bytes that may begin a placeholder stay in the socket until more come.
                let passing = match scanner.as_mut().map(|s| s.scan(buf)) {
                    Some(Scan::Found(i)) => {
                        violation = Some(i);
                        return (0, Ok(0));
                    }
                    Some(Scan::Pass(_)) if ended => buf.len(),
                    Some(Scan::Pass(n)) => n,
                    None => buf.len(),
                };
                if passing == 0 {
                    return (0, Ok(0));
                }
                match host.write(&buf[..passing]) {
                    Ok(n) => {
                        first.push(&buf[..n]);
                        (n, Ok(n))
                    }
                    Err(e) => (0, Err(e)),
                }
            });
            if let Some(i) = violation {
                return Err(Broken::Secret(i));
            }
            match r {
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => self.tally.up += n as u64,
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => {
                    return Err(Broken::Reset(CloseReason::UpstreamWrite(e.to_string())));
                }
                Err(_) => break,
            }
        }
        // The sandbox sent FIN and everything before it is upstream: half-close.
        let guest_fin = matches!(
            socket.state(),
            tcp::State::CloseWait
                | tcp::State::LastAck
                | tcp::State::Closing
                | tcp::State::TimeWait
                | tcp::State::Closed
        );
        if self.up == Half::Open && guest_fin && socket.recv_queue() == 0 {
            let _ = host.shutdown(Shutdown::Write);
            self.up = Half::Finished;
        }
        // Host → sandbox, into send-ring pages the budget allows (when it has none, the
        // host socket is left unread; the sweep comes back to it).
        while self.down == Half::Open && socket.can_send() {
            enum Got {
                Data(usize),
                Eof,
                Block,
                Fail(io::Error),
            }
            let room = pool.send_room(mem);
            if room == 0 {
                break;
            }
            let r = socket.send(|buf| {
                let n = buf.len().min(room);
                match host.read(&mut buf[..n]) {
                    Ok(0) => (0, Got::Eof),
                    Ok(n) => (n, Got::Data(n)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => (0, Got::Block),
                    Err(e) => (0, Got::Fail(e)),
                }
            });
            match r {
                Ok(Got::Data(n)) => {
                    pool.wrote(mem, n);
                    self.tally.down += n as u64;
                }
                Ok(Got::Eof) => {
                    self.down = Half::Finished;
                    socket.close();
                }
                Ok(Got::Block) | Err(_) => break,
                Ok(Got::Fail(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Got::Fail(e)) => {
                    return Err(Broken::Reset(CloseReason::UpstreamRead(e.to_string())));
                }
            }
        }
        Ok(())
    }
}
