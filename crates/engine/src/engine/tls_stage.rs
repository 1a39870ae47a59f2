//! TLS interception: the stream stage that terminates the sandbox's TLS with a leaf from
//! moat's CA and opens its own, verified TLS to the server, with plaintext between.
//!
//! # Theory of operation
//! The TCP flow decides (see `tcp_flow.rs`): on an intercepted port, once the sandbox's
//! ClientHello has arrived and been judged, a server name matching a `bypass` pattern (or
//! bytes that are not TLS) passes opaque; anything else enters this stage. Then:
//! 1. **Hello.** The ClientHello goes into a rustls [`Acceptor`]; its server name and
//!    ALPN list are read.
//! 2. **Upstream first.** A rustls client handshakes with the server (already dialed) with
//!    the sandbox's server name (or the address when it sent none) and its ALPN list, and
//!    verifies the server's chain (system roots plus `upstream_ca_cert`s, unless
//!    `verify_upstream(false)`). The sandbox waits meanwhile.
//! 3. **Then the sandbox.** Only when the upstream is up does the sandbox's handshake
//!    finish, with a leaf for its name and the one ALPN protocol the server chose — so h2
//!    stays h2 end to end. If the upstream failed (refused, reset, certificate not
//!    trusted), the sandbox gets a TLS alert at once (`access_denied`) and the reason goes
//!    to the audit log; it never waits for a timeout.
//! 4. **Open.** Plaintext moves between the two rustls connections. Back-pressure: a
//!    side's plaintext is taken only when the other side has sent everything it had; TLS
//!    records go into the sandbox's socket only within its room and the buffer budget,
//!    and the host socket is read only when the sandbox's side is flushed. Half-close: a
//!    `close_notify` (or a TCP FIN) from one side becomes a `close_notify` and then a FIN
//!    on the other.
//!
//! On HTTP/1.1 (the protocol chosen, or none named) every request's host must be the one
//! the handshake named (`http/h1.rs`); another gets `403 Forbidden` with a one-line reason
//! and the connection ends (domain fronting).
//!
//! When secrets are configured, HTTP/1.1 and HTTP/2 plaintext also passes a [`Swaps`]:
//! toward a host a secret allows, placeholders become the value; coming back, the value
//! becomes the placeholder; and what the sandbox sends is scanned message by message (bodies
//! after their framing, HTTP/2 header blocks decoded) for placeholders the host may not
//! receive, on top of the scan of the plaintext as it is framed. Bodies the HTTP/1.1
//! rewriting holds are charged to the buffer budget while held (`budget.rs`); what does
//! not fit streams.
//!
//! Everything is sans-IO inside the engine's loop: rustls never touches a socket itself
//! except the host's non-blocking `TcpStream`, and the sandbox's socket through
//! [`SocketWriter`].

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown};
use std::sync::Arc;

use mio::net::TcpStream;
use moat_inspect::http::{Authority, RequestReader, h1, h2, refusal};
use moat_inspect::secrets::Scanner;
use moat_inspect::tls::ca::LeafName;
use moat_policy::DomainName;
use rustls::pki_types::ServerName;
use rustls::server::{Accepted, Acceptor};
use rustls::{ClientConnection, ServerConnection};
use smoltcp::socket::tcp;

use super::budget::Grant;
use super::close::TlsFailure;
use super::cx::Tally;
use super::pool::SocketPool;
use super::tls_shared::Fixed;
use super::tls_shared::TlsShared;
use super::tls_swaps::{Room, Swaps, cleared, end_up, queue_moats_frames, swap_up};

/// Plaintext moved per step between the legs.
const CHUNK: usize = 16 * 1024;
/// The most read from the server's socket at once (what rustls has not taken yet stays
/// with the connection until it has).
const HOST_READ: usize = 32 * 1024;

/// Where an intercepted connection is.
enum Phase {
    /// Reading the sandbox's ClientHello.
    Hello(Box<Acceptor>),
    /// Handshaking with the server; the sandbox's hello waits, accepted.
    Upstream {
        accepted: Box<Accepted>,
        client: Box<ClientConnection>,
        name: LeafName,
    },
    /// Both legs are up.
    Open {
        server: Box<ServerConnection>,
        client: Box<ClientConnection>,
        /// How the sandbox's requests are read for their host.
        reader: Reader,
    },
    /// Failed; an alert may be on its way to the sandbox.
    Failed,
}

/// How an open connection's requests are read.
enum Reader {
    /// HTTP/1.1: request heads and framing.
    H1(h1::Requests),
    /// HTTP/2: frames and header blocks one way, frame boundaries the other.
    H2(Box<h2::Requests>, h2::Frames),
    /// Another protocol: not read.
    Unread,
}

/// A refused HTTP/2 request's answer, waiting for the server's frame under way to end.
struct Refusal {
    why: String,
    answer: Vec<u8>,
}

/// What happened in a step that the flow reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum TlsNote {
    /// Both legs are up.
    Intercepted {
        /// The name the leaf was made for.
        name: String,
        /// The protocol the server chose.
        alpn: Option<String>,
        /// Whether the server's chain was verified.
        verified: bool,
    },
}

/// An intercepted connection (see the module header).
pub(super) struct Intercept {
    phase: Phase,
    /// The destination, for a hello without a server name.
    addr: IpAddr,
    /// The server name the ClientHello carried, as judged.
    sni: Option<DomainName>,
    /// The sandbox finished sending (close_notify or FIN) and the server was told.
    up_done: bool,
    /// The server finished sending and the sandbox was told.
    down_done: bool,
    host_shut: bool,
    /// The sandbox's plaintext that may pass, reused.
    pass: Vec<u8>,
    /// A refused HTTP/2 request's answer, sent at the server's next frame boundary.
    refusal: Option<Refusal>,
    /// Records read from the server and not yet taken by rustls.
    host_in: Vec<u8>,
    /// The sandbox's plaintext that may begin a placeholder, waiting for what follows.
    up_held: Vec<u8>,
    /// Secrets this host may receive: swapped both ways.
    swaps: Option<Box<Swaps>>,
    /// The sandbox's plaintext rewritten, reused.
    swapped: Vec<u8>,
}

/// Writes into the sandbox's socket, within the buffer budget.
struct SocketWriter<'a> {
    socket: &'a mut tcp::Socket<'static>,
    pool: &'a mut SocketPool,
    mem: &'a mut Grant,
}

impl Write for SocketWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.pool.send_room(self.mem);
        let n = buf.len().min(room);
        let sent = self
            .socket
            .send_slice(&buf[..n])
            .map_err(|e| io::Error::other(e.to_string()))?;
        if sent == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.pool.wrote(self.mem, sent);
        Ok(sent)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Whether an I/O error only means "not now".
fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

impl Intercept {
    /// A connection to `addr` whose ClientHello (naming `sni`) is about to be read.
    pub(super) fn new(addr: IpAddr, sni: Option<DomainName>) -> Intercept {
        Intercept {
            phase: Phase::Hello(Box::default()),
            addr,
            sni,
            up_done: false,
            down_done: false,
            host_shut: false,
            pass: Vec::new(),
            refusal: None,
            host_in: Vec::new(),
            up_held: Vec::new(),
            swaps: None,
            swapped: Vec::new(),
        }
    }

    /// Secrets this host may receive, swapped both ways on HTTP/1.1 and HTTP/2.
    pub(super) fn swap_secrets(&mut self, swaps: Swaps) {
        self.swaps = Some(Box::new(swaps));
    }

    /// The secrets substituted and redacted since the last call (bit `i`: secret `i`).
    pub(super) fn take_swapped(&mut self) -> (u64, u64) {
        self.swaps.as_mut().map_or((0, 0), |s| s.take_hits())
    }

    /// The server name of the ClientHello.
    pub(super) fn sni(&self) -> Option<&DomainName> {
        self.sni.as_ref()
    }

    /// Both directions finished in order.
    pub(super) fn finished(&self) -> bool {
        self.up_done && self.down_done
    }

    /// Moves the connection along as far as the sockets and the budget allow.
    #[allow(clippy::too_many_arguments)] // The two sockets, the budget and the shared state.
    pub(super) fn pump(
        &mut self,
        socket: &mut tcp::Socket<'static>,
        host: &mut TcpStream,
        pool: &mut SocketPool,
        mem: &mut Grant,
        shared: &mut TlsShared,
        tally: &mut Tally,
        scanner: Option<&mut Scanner>,
        buf: &mut [u8],
    ) -> Result<Option<TlsNote>, TlsFailure> {
        let mut note = None;
        if let Phase::Hello(_) = self.phase {
            self.read_hello(socket, shared)?;
        }
        if let Phase::Upstream { .. } = self.phase {
            note = self.handshake_upstream(socket, host, pool, mem, shared)?;
        }
        if let Phase::Open { .. } = self.phase {
            self.relay(socket, host, pool, mem, tally, scanner, buf)?;
        }
        if let Phase::Failed = self.phase {
            // The alert is queued; the flow closes.
            return Err(TlsFailure::Handshake("failed".into()));
        }
        Ok(note)
    }

    fn read_hello(
        &mut self,
        socket: &mut tcp::Socket<'static>,
        shared: &mut TlsShared,
    ) -> Result<(), TlsFailure> {
        let Phase::Hello(acceptor) = &mut self.phase else {
            return Ok(());
        };
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
                Ok(Err(e)) => return self.fail(format!("reading the ClientHello: {e}")),
            }
        }
        let accepted = match acceptor.accept() {
            Ok(None) => return Ok(()),
            Ok(Some(accepted)) => accepted,
            Err((e, mut alert)) => {
                let _ = alert.write(&mut socket_sink(socket));
                return self.fail(format!("the sandbox's ClientHello: {e}"));
            }
        };
        let hello = accepted.client_hello();
        let (name, server_name) = match hello.server_name().map(str::to_owned) {
            Some(sni) => match ServerName::try_from(sni.clone()) {
                Ok(sn) => (LeafName::Dns(sni), sn),
                Err(_) => return self.fail(format!("server name {sni:?} is not a host name")),
            },
            None => (
                LeafName::Ip(self.addr),
                ServerName::IpAddress(self.addr.into()),
            ),
        };
        let alpn: Vec<Vec<u8>> = hello
            .alpn()
            .map(|list| list.map(<[u8]>::to_vec).collect())
            .unwrap_or_default();
        let client = match ClientConnection::new_with_alpn(shared.client.clone(), server_name, alpn)
        {
            Ok(c) => c,
            Err(e) => return self.fail(format!("starting TLS to the server: {e}")),
        };
        self.phase = Phase::Upstream {
            accepted: Box::new(accepted),
            client: Box::new(client),
            name,
        };
        Ok(())
    }

    fn handshake_upstream(
        &mut self,
        socket: &mut tcp::Socket<'static>,
        host: &mut TcpStream,
        pool: &mut SocketPool,
        mem: &mut Grant,
        shared: &mut TlsShared,
    ) -> Result<Option<TlsNote>, TlsFailure> {
        let Phase::Upstream { client, .. } = &mut self.phase else {
            return Ok(None);
        };
        let failure = 'hs: loop {
            while client.wants_write() {
                match client.write_tls(host) {
                    Ok(_) => {}
                    Err(e) if would_block(&e) => break,
                    Err(e) => break 'hs Some(TlsFailure::Handshake(format!("the server: {e}"))),
                }
            }
            if !client.is_handshaking() {
                break None;
            }
            match client.read_tls(host) {
                Ok(0) => {
                    break Some(TlsFailure::Handshake(
                        "the server closed the connection during the handshake".to_owned(),
                    ));
                }
                Ok(_) => {}
                Err(e) if would_block(&e) => return Ok(None),
                Err(e) => break Some(TlsFailure::Handshake(format!("the server: {e}"))),
            }
            if let Err(e) = client.process_new_packets() {
                // Tell the server too, then the sandbox.
                let _ = client.write_tls(host);
                let why = format!("the server's TLS: {e}");
                break Some(match e {
                    rustls::Error::InvalidCertificate(_) => TlsFailure::Untrusted(why),
                    _ => TlsFailure::Handshake(why),
                });
            }
        };
        if let Some(failure) = failure {
            return self.refuse(socket, shared, failure);
        }
        let Phase::Upstream {
            accepted,
            client,
            name,
        } = std::mem::replace(&mut self.phase, Phase::Failed)
        else {
            return Ok(None);
        };
        let alpn = client.alpn_protocol().map(<[u8]>::to_vec);
        let leaf = match shared.leaves.get(&shared.ca, &name) {
            Ok(leaf) => leaf,
            Err(e) => return self.fail(format!("making a certificate for {name}: {e}")),
        };
        let mut config = (*shared.refuse).clone();
        config.cert_resolver = Arc::new(Fixed(Some(leaf)));
        config.alpn_protocols = alpn.iter().cloned().collect();
        let server = match accepted.into_connection(Arc::new(config)) {
            Ok(server) => server,
            Err((e, mut alert)) => {
                let _ = alert.write(&mut SocketWriter { socket, pool, mem });
                return self.fail(format!("the sandbox's handshake: {e}"));
            }
        };
        // HTTP/1.1 (chosen, or no protocol named) and HTTP/2 are read for their host;
        // other protocols pass unread.
        let expect = match &self.sni {
            Some(name) => Authority::Name(name.clone()),
            None => Authority::Ip(self.addr),
        };
        let reader = match alpn.as_deref() {
            None | Some(b"http/1.1") => Reader::H1(h1::Requests::new(expect)),
            Some(b"h2") => Reader::H2(Box::new(h2::Requests::new(expect)), h2::Frames::default()),
            Some(_) => Reader::Unread,
        };
        if let Some(swaps) = &mut self.swaps {
            swaps.speak(alpn.as_deref());
        }
        self.phase = Phase::Open {
            server: Box::new(server),
            client,
            reader,
        };
        Ok(Some(TlsNote::Intercepted {
            name: name.to_string(),
            alpn: alpn.map(|p| String::from_utf8_lossy(&p).into_owned()),
            verified: shared.verify,
        }))
    }

    /// The upstream failed: the sandbox's hello is answered with an alert.
    fn refuse(
        &mut self,
        socket: &mut tcp::Socket<'static>,
        shared: &TlsShared,
        failure: TlsFailure,
    ) -> Result<Option<TlsNote>, TlsFailure> {
        if let Phase::Upstream { accepted, .. } = std::mem::replace(&mut self.phase, Phase::Failed)
            && let Err((_, mut alert)) = accepted.into_connection(shared.refuse.clone())
        {
            let _ = alert.write(&mut socket_sink(socket));
        }
        Err(failure)
    }

    fn fail<T>(&mut self, why: String) -> Result<T, TlsFailure> {
        self.phase = Phase::Failed;
        Err(TlsFailure::Handshake(why))
    }

    #[allow(clippy::too_many_arguments)] // The two sockets, the budget, the counts, the scanner.
    fn relay(
        &mut self,
        socket: &mut tcp::Socket<'static>,
        host: &mut TcpStream,
        pool: &mut SocketPool,
        mem: &mut Grant,
        tally: &mut Tally,
        mut scanner: Option<&mut Scanner>,
        buf: &mut [u8],
    ) -> Result<(), TlsFailure> {
        let Phase::Open {
            server,
            client,
            reader,
        } = &mut self.phase
        else {
            return Ok(());
        };
        let pass = &mut self.pass;
        let refusal = &mut self.refusal;
        let up_held = &mut self.up_held;
        let swaps = &mut self.swaps;
        let swapped = &mut self.swapped;
        let chunk = buf.len().min(CHUNK);
        let buf = &mut buf[..chunk];
        // The sandbox's records.
        while socket.can_recv() && server.wants_read() {
            let got = socket.recv(|data| {
                let mut slice: &[u8] = data;
                match server.read_tls(&mut slice) {
                    Ok(n) => (n, Ok(n)),
                    Err(e) => (0, Err(e)),
                }
            });
            match got {
                Ok(Ok(0)) | Err(_) => break,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(TlsFailure::Broken(format!("the sandbox's TLS: {e}"))),
            }
            if let Err(e) = server.process_new_packets() {
                let _ = server.write_tls(&mut SocketWriter { socket, pool, mem });
                return Err(TlsFailure::Broken(format!("the sandbox's TLS: {e}")));
            }
        }
        // Its plaintext, to the server, when the server has taken what came before (and
        // no request was refused).
        while !self.up_done && refusal.is_none() && !client.wants_write() {
            match server.reader().read(buf) {
                Ok(0) => {
                    end_up(
                        client,
                        up_held,
                        swaps.as_deref_mut(),
                        scanner.as_deref_mut(),
                    )?;
                    self.up_done = true;
                }
                Ok(n) => {
                    tally.up += n as u64;
                    pass.clear();
                    let read = match reader {
                        Reader::H1(requests) => requests.push(&buf[..n], pass),
                        Reader::H2(requests, _) => requests.push(&buf[..n], pass),
                        Reader::Unread => {
                            pass.extend_from_slice(&buf[..n]);
                            Ok(())
                        }
                    };
                    if let Err(refused) = read {
                        let why = refused.to_string();
                        match reader {
                            Reader::H2(requests, _) => {
                                // Answered at the server's next frame boundary (below).
                                // The frames before the refused request pass; its own
                                // never do.
                                let answer = h2::forbidden(requests.stream(), &why);
                                *refusal = Some(Refusal { why, answer });
                                let pass = swap_up(
                                    swaps.as_deref_mut(),
                                    pass,
                                    swapped,
                                    &mut Room { pool, mem },
                                )?;
                                let out = cleared(scanner.as_deref_mut(), up_held, pass)?;
                                let _ = client.writer().write_all(&out);
                                break;
                            }
                            _ => {
                                forbid(server, &mut SocketWriter { socket, pool, mem }, &why);
                                return Err(TlsFailure::Refused(why));
                            }
                        }
                    }
                    // Placeholders this host may receive become values; one it may not
                    // stops here.
                    let pass =
                        swap_up(swaps.as_deref_mut(), pass, swapped, &mut Room { pool, mem })?;
                    let data = cleared(scanner.as_deref_mut(), up_held, pass)?;
                    if client.writer().write_all(&data).is_err() {
                        return Err(TlsFailure::Broken("the server's TLS refused data".into()));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // A FIN without close_notify ends the sandbox's side too.
                    let fin = matches!(
                        socket.state(),
                        tcp::State::CloseWait | tcp::State::LastAck | tcp::State::Closed
                    );
                    if fin && socket.recv_queue() == 0 {
                        end_up(
                            client,
                            up_held,
                            swaps.as_deref_mut(),
                            scanner.as_deref_mut(),
                        )?;
                        self.up_done = true;
                    }
                    break;
                }
                Err(_) => {
                    end_up(
                        client,
                        up_held,
                        swaps.as_deref_mut(),
                        scanner.as_deref_mut(),
                    )?;
                    self.up_done = true;
                }
            }
        }
        // moat's own HTTP/2 frames for the server (window given back), when nothing of the
        // sandbox's is held part-way; then the records.
        if !self.up_done {
            queue_moats_frames(swaps.as_deref_mut(), up_held, client);
        }
        records_to_server(client, host)?;
        if self.up_done && !client.wants_write() && !self.host_shut {
            let _ = host.shutdown(Shutdown::Write);
            self.host_shut = true;
        }
        // The server's records, as far as the sandbox's side takes them: records ready for
        // the sandbox go first; then plaintext already decrypted; then records read from
        // the server in one read of up to HOST_READ (rustls itself would read 4 KiB at a
        // time), kept in `host_in` until rustls has taken them.
        let host_in = &mut self.host_in;
        loop {
            while server.wants_write() && socket.may_send() {
                match server.write_tls(&mut SocketWriter { socket, pool, mem }) {
                    Ok(_) => {}
                    Err(e) if would_block(&e) => break,
                    Err(e) => {
                        return Err(TlsFailure::Broken(format!("writing to the sandbox: {e}")));
                    }
                }
            }
            if server.wants_write() || self.down_done {
                break;
            }
            if Self::plaintext_down(
                server,
                client,
                reader,
                refusal.is_some(),
                buf,
                tally,
                swaps.as_deref_mut(),
                &mut Room { pool, mem },
            )? {
                server.send_close_notify();
                self.down_done = true;
                continue;
            }
            if server.wants_write() {
                continue;
            }
            if refusal.is_some() && matches!(reader, Reader::H2(_, f) if f.at_boundary()) {
                break;
            }
            if !client.wants_read() {
                break;
            }
            if host_in.is_empty() {
                host_in.resize(HOST_READ, 0);
                match host.read(host_in) {
                    Ok(0) => {
                        host_in.clear();
                        // End of file: rustls is told, so unfinished records are an error.
                        let _ = client.read_tls(&mut io::empty());
                        if let Err(e) = client.process_new_packets() {
                            return Err(TlsFailure::Broken(format!("the server's TLS: {e}")));
                        }
                        // What is left goes to the sandbox, then an orderly end (with
                        // or without the server's close_notify).
                        Self::plaintext_down(
                            server,
                            client,
                            reader,
                            refusal.is_some(),
                            buf,
                            tally,
                            swaps.as_deref_mut(),
                            &mut Room { pool, mem },
                        )?;
                        server.send_close_notify();
                        self.down_done = true;
                        continue;
                    }
                    Ok(n) => host_in.truncate(n),
                    Err(e) => {
                        host_in.clear();
                        if would_block(&e) {
                            break;
                        }
                        return Err(TlsFailure::Broken(format!("reading from the server: {e}")));
                    }
                }
            }
            let taken = client
                .read_tls(&mut &host_in[..])
                .map_err(|e| TlsFailure::Broken(format!("the server's TLS: {e}")))?;
            host_in.drain(..taken);
            if let Err(e) = client.process_new_packets() {
                let _ = client.write_tls(host);
                return Err(TlsFailure::Broken(format!("the server's TLS: {e}")));
            }
        }
        // An idle connection keeps no read buffer, nor the plaintext scratch (a chunk each:
        // a thousand connections waiting would keep tens of megabytes outside the budget).
        if host_in.is_empty() {
            *host_in = Vec::new();
        }
        *swapped = Vec::new();
        *pass = Vec::new();
        if let Some(sw) = swaps.as_deref_mut() {
            sw.shed();
        }
        // A refused HTTP/2 request is answered once the server's frame under way is whole.
        if let (Some(r), Reader::H2(_, frames)) = (refusal.as_ref(), &*reader)
            && (frames.at_boundary() || self.down_done)
        {
            let _ = server.writer().write_all(&r.answer);
            server.send_close_notify();
            while server.wants_write() {
                if server
                    .write_tls(&mut SocketWriter { socket, pool, mem })
                    .is_err()
                {
                    break;
                }
            }
            return Err(TlsFailure::Refused(r.why.clone()));
        }
        // Records to the sandbox (while it still takes them: a sandbox that closed after
        // its handshake is not sent the rest).
        while server.wants_write() && socket.may_send() {
            match server.write_tls(&mut SocketWriter { socket, pool, mem }) {
                Ok(_) => {}
                Err(e) if would_block(&e) => break,
                Err(e) => return Err(TlsFailure::Broken(format!("writing to the sandbox: {e}"))),
            }
        }
        if self.down_done && !server.wants_write() && socket.may_send() {
            socket.close();
        }
        // The server's frames just read may have opened its window for HTTP/2 DATA moat
        // held back, or asked moat to give window back: that goes now, not at the next
        // event.
        if !self.up_done && queue_moats_frames(swaps.as_deref_mut(), up_held, client) {
            records_to_server(client, host)?;
        }
        Ok(())
    }

    /// Moves the server's plaintext to the sandbox's TLS; `true` when the server has
    /// finished (close_notify, or end of file). HTTP/2 frames are followed; with
    /// `to_boundary`, no byte past the end of the frame under way is taken.
    #[allow(clippy::too_many_arguments)] // The two legs, the reader, the counts, the swaps and their room.
    fn plaintext_down(
        server: &mut ServerConnection,
        client: &mut ClientConnection,
        reader: &mut Reader,
        to_boundary: bool,
        buf: &mut [u8],
        tally: &mut Tally,
        mut swaps: Option<&mut Swaps>,
        room: &mut Room<'_>,
    ) -> Result<bool, TlsFailure> {
        let send = |server: &mut ServerConnection, reader: &mut Reader, data: &[u8]| {
            if let Reader::H2(_, frames) = reader {
                frames.advance(data);
            }
            server
                .writer()
                .write_all(data)
                .map_err(|_| TlsFailure::Broken("the sandbox's TLS refused data".into()))
        };
        // moat's own frames for the sandbox go between the server's.
        if let Some(sw) = swaps.as_deref_mut() {
            let queued = sw.queued_down();
            if !queued.is_empty() {
                send(server, reader, queued)?;
            }
        }
        loop {
            let mut cap = buf.len();
            if let Reader::H2(_, frames) = reader
                && to_boundary
            {
                if frames.at_boundary() {
                    return Ok(false);
                }
                // Rewritten frames are whole; the server's own may be cut at the boundary.
                if swaps.is_none() {
                    cap = cap.min(frames.until_boundary());
                }
            }
            let got = client.reader().read(&mut buf[..cap]);
            let ended = match got {
                Ok(0) => true,
                Err(ref e) if e.kind() == io::ErrorKind::UnexpectedEof => true,
                _ => false,
            };
            if ended {
                if let Some(sw) = swaps.as_deref_mut() {
                    let last = sw.finish_down();
                    if !last.is_empty() {
                        send(server, reader, last)?;
                    }
                }
                return Ok(true);
            }
            match got {
                Ok(n) => {
                    tally.down += n as u64;
                    let data = match swaps.as_deref_mut() {
                        Some(sw) => sw.down(&buf[..n], room).map_err(|e| {
                            TlsFailure::Broken(format!(
                                "the server's answer cannot be rewritten: {e}"
                            ))
                        })?,
                        None => &buf[..n],
                    };
                    send(server, reader, data)?;
                    if server.wants_write() {
                        return Ok(false);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(TlsFailure::Broken(format!("the server's TLS: {e}"))),
            }
        }
    }
}

/// Writes the records rustls has for the server, as far as its socket takes them.
fn records_to_server(
    client: &mut ClientConnection,
    host: &mut TcpStream,
) -> Result<(), TlsFailure> {
    while client.wants_write() {
        match client.write_tls(host) {
            Ok(_) => {}
            Err(e) if would_block(&e) => break,
            Err(e) => return Err(TlsFailure::Broken(format!("writing to the server: {e}"))),
        }
    }
    Ok(())
}

/// Answers a refused request with `403 Forbidden` and a one-line reason, then ends the
/// sandbox's TLS.
fn forbid(server: &mut ServerConnection, to: &mut SocketWriter<'_>, why: &str) {
    let response = refusal::forbidden(&format!("moat: {why}"), false);
    let _ = server.writer().write_all(&response);
    server.send_close_notify();
    while server.wants_write() {
        // A full send ring takes nothing (Ok(0)).
        if !matches!(server.write_tls(to), Ok(n) if n > 0) {
            break;
        }
    }
}

/// Writes an alert straight into the socket's send buffer (a few bytes: no budget).
pub(super) fn socket_sink<'a>(socket: &'a mut tcp::Socket<'static>) -> impl Write + 'a {
    struct Sink<'a>(&'a mut tcp::Socket<'static>);
    impl Write for Sink<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0
                .send_slice(buf)
                .map_err(|e| io::Error::other(e.to_string()))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    Sink(socket)
}
