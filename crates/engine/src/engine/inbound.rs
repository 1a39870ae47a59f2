//! Published ports: host listeners whose connections and datagrams enter the sandbox
//! through the stack, judged as inbound traffic against the connecting peer.
//!
//! A TCP connection accepted on a published port is judged (`Direction::Inbound`, the
//! peer's address, the guest port). Denied, or over `max_connections`: the peer gets a
//! reset. Allowed: a smoltcp socket connects to the sandbox's port, and bytes are relayed
//! as for outbound flows (half-close both ways).
//!
//! What the sandbox sees as the source: the peer's own address and port when they can be
//! routed back through the gateway; a peer on the host's loopback (127.0.0.1, ::1) appears
//! as the gateway (10.0.2.2 / fd00:6d6f:6174::2) with a port of moat's choosing, since
//! the sandbox's loopback is its own.
//!
//! UDP works alike per (listener, peer) pair; the sandbox's replies to the source address
//! go back to the peer from the listener's socket. Idle inbound UDP flows expire as
//! outbound ones do. This file holds the listeners and the inbound UDP flow; what the loop
//! does when a listener is ready, the flow table's part, is `on_inbound.rs`.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, UdpSocket};
use mio::{Interest, Registry, Token};
use moat_policy::canonical_addr;

use super::close::CloseReason;
use super::config::{Published, PublishedSocket};
use super::cx::{Cx, Tally};
use super::key::{Due, FlowKey};

/// Connections accepted or datagrams read per event before the loop moves on.
pub(super) const ACCEPT_BATCH: usize = 256;

/// The published ports inside the engine.
pub(super) struct Listeners {
    pub(super) list: Vec<Listener>,
    /// The last port handed to a peer shown as the gateway.
    pub(super) ephemeral: u16,
    /// Listeners whose last read took a whole batch: more may be queued, and the
    /// edge-triggered poll will not say so again, so the loop reads them next turn.
    pub(super) again: Vec<usize>,
}

/// A published port inside the engine.
pub(super) struct Listener {
    pub(super) socket: ListenerSocket,
    pub(super) guest_port: u16,
}

pub(super) enum ListenerSocket {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

/// An inbound UDP flow: a peer of a published UDP port.
pub(super) struct UdpIn {
    pub(super) listener: usize,
    pub(super) peer: SocketAddr,
    /// The sandbox's address and port.
    pub(super) guest: SocketAddr,
    /// The source the sandbox sees.
    pub(super) source: SocketAddr,
    pub(super) last: Instant,
    pub(super) tally: Tally,
    pub(super) rule: String,
}

impl Listeners {
    /// Registers the published sockets with `registry`, the `i`th under token `base + i`.
    pub(super) fn register(
        registry: &Registry,
        base: usize,
        published: Vec<Published>,
    ) -> io::Result<Listeners> {
        let mut list = Vec::new();
        for (i, p) in published.into_iter().enumerate() {
            let token = Token(base + i);
            let socket = match p.socket {
                PublishedSocket::Tcp(l) => {
                    l.set_nonblocking(true)?;
                    let mut l = TcpListener::from_std(l);
                    registry.register(&mut l, token, Interest::READABLE)?;
                    ListenerSocket::Tcp(l)
                }
                PublishedSocket::Udp(u) => {
                    u.set_nonblocking(true)?;
                    let mut u = UdpSocket::from_std(u);
                    registry.register(&mut u, token, Interest::READABLE)?;
                    ListenerSocket::Udp(u)
                }
            };
            list.push(Listener {
                socket,
                guest_port: p.guest_port,
            });
        }
        Ok(Listeners {
            list,
            ephemeral: 49152,
            again: Vec::new(),
        })
    }

    /// The listeners to read again this turn (see `again`).
    pub(super) fn take_again(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.again)
    }

    /// Whether a listener waits to be read again.
    pub(super) fn has_again(&self) -> bool {
        !self.again.is_empty()
    }

    /// The source the sandbox sees for `peer` reaching it at `guest`.
    pub(super) fn inbound_source(
        &mut self,
        cx: &Cx,
        peer: SocketAddr,
        guest: IpAddr,
    ) -> SocketAddr {
        let ip = canonical_addr(peer.ip());
        let routable = !ip.is_loopback() && !ip.is_unspecified() && ip.is_ipv4() == guest.is_ipv4();
        if routable {
            SocketAddr::new(ip, peer.port())
        } else {
            // RFC 6335 dynamic ports.
            self.ephemeral = self.ephemeral.checked_add(1).unwrap_or(49152).max(49152);
            SocketAddr::new(cx.stack.gateway_for(guest), self.ephemeral)
        }
    }
}

impl UdpIn {
    /// The sandbox's end and the source it sees.
    pub(super) fn key(&self) -> FlowKey {
        FlowKey {
            guest: self.guest,
            host: self.source,
        }
    }

    /// What the sweep should do.
    pub(super) fn due(&self, now: Instant, idle: Duration) -> Due {
        if now.duration_since(self.last) >= idle {
            Due::Expire
        } else {
            Due::Nothing
        }
    }

    /// Audits the end (called by the flow table; the listener's socket stays).
    pub(super) fn close(self, cx: &mut Cx, why: &CloseReason) {
        cx.audit_close(
            "udp",
            &self.rule,
            true,
            self.peer,
            self.guest,
            &self.tally,
            why,
        );
    }
}
