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

use std::io::{self, Write};
use std::net::IpAddr;
use std::sync::Arc;

use mio::net::TcpStream;
use moat_inspect::http::{Authority, h1, h2};
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
use super::tls_relay::{
    CHUNK, Io, Legs, Reader, Relay, SocketWriter, sandbox_records, would_block,
};
use super::tls_shared::Fixed;
use super::tls_shared::TlsShared;
use super::tls_swaps::Swaps;

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
    /// What moving the plaintext keeps between turns.
    relay: Relay,
}

impl Intercept {
    /// A connection to `addr` whose ClientHello (naming `sni`) is about to be read.
    pub(super) fn new(addr: IpAddr, sni: Option<DomainName>) -> Intercept {
        Intercept {
            phase: Phase::Hello(Box::default()),
            addr,
            sni,
            relay: Relay::default(),
        }
    }

    /// Secrets this host may receive, swapped both ways on HTTP/1.1 and HTTP/2.
    pub(super) fn swap_secrets(&mut self, swaps: Swaps) {
        self.relay.swaps = Some(Box::new(swaps));
    }

    /// The secrets substituted and redacted since the last call (bit `i`: secret `i`).
    pub(super) fn take_swapped(&mut self) -> (u64, u64) {
        self.relay.swaps.as_mut().map_or((0, 0), |s| s.take_hits())
    }

    /// The server name of the ClientHello.
    pub(super) fn sni(&self) -> Option<&DomainName> {
        self.sni.as_ref()
    }

    /// Both directions finished in order.
    pub(super) fn finished(&self) -> bool {
        self.relay.up_done && self.relay.down_done
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
        // With secrets, the swap's request side reads, checks and rewrites each request:
        // one reading for both (the server's HTTP/2 frames are still followed).
        let swapping = self.relay.swaps.as_mut().is_some_and(|swaps| {
            swaps.speak(alpn.as_deref(), &expect);
            swaps.checks_requests()
        });
        let reader = match (alpn.as_deref(), swapping) {
            (None | Some(b"http/1.1"), false) => Reader::H1(h1::Requests::new(expect.clone())),
            (None | Some(b"http/1.1"), true) => Reader::Swapped(None),
            (Some(b"h2"), false) => Reader::H2(
                Box::new(h2::Requests::new(expect.clone())),
                h2::Frames::default(),
            ),
            (Some(b"h2"), true) => Reader::Swapped(Some(h2::Frames::default())),
            (Some(_), _) => Reader::Unread,
        };
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
        scanner: Option<&mut Scanner>,
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
        let chunk = buf.len().min(CHUNK);
        let mut legs = Legs {
            server,
            client,
            reader,
        };
        let mut io = Io {
            socket,
            host,
            pool,
            mem,
            tally,
            scanner,
            buf: &mut buf[..chunk],
        };
        sandbox_records(&mut legs, &mut io)?;
        let relay = &mut self.relay;
        relay.plaintext_up(&mut legs, &mut io)?;
        relay.send_to_server(&mut legs, &mut io)?;
        relay.server_side(&mut legs, &mut io)?;
        relay.end_turn(&mut legs, &mut io)
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
