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
//! outbound ones do.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::time::Instant;

use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Interest, Token};
use moat_policy::{Decision, Flow, Protocol, canonical_addr};
use serde_json::Value;
use smoltcp::wire::IpEndpoint;

use super::{Engine, FlowEntry, LISTENER_BASE, SniCheck, TcpFlow, TcpState};
use crate::wire;

/// A published port's host socket, bound by moat before the sandbox starts.
#[derive(Debug)]
pub enum PublishedSocket {
    /// A TCP listener.
    Tcp(std::net::TcpListener),
    /// A UDP socket.
    Udp(std::net::UdpSocket),
}

/// One published port.
#[derive(Debug)]
pub struct Published {
    /// The host socket.
    pub socket: PublishedSocket,
    /// The port inside the sandbox.
    pub guest_port: u16,
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
    pub(super) up: u64,
    pub(super) down: u64,
    pub(super) started: Instant,
    pub(super) rule: String,
}

/// Resets a host connection (SO_LINGER 0, then close).
pub(super) fn reset(stream: &TcpStream) {
    let linger = libc_linger();
    let _ =
        nix::sys::socket::setsockopt(&stream.as_fd(), nix::sys::socket::sockopt::Linger, &linger);
}

fn libc_linger() -> nix::libc::linger {
    nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    }
}

impl Engine {
    /// Registers the published sockets with the loop.
    pub(super) fn register_listeners(&mut self, published: Vec<Published>) -> io::Result<()> {
        for (i, p) in published.into_iter().enumerate() {
            let token = Token(LISTENER_BASE + i);
            let socket = match p.socket {
                PublishedSocket::Tcp(l) => {
                    l.set_nonblocking(true)?;
                    let mut l = TcpListener::from_std(l);
                    self.poll
                        .registry()
                        .register(&mut l, token, Interest::READABLE)?;
                    ListenerSocket::Tcp(l)
                }
                PublishedSocket::Udp(u) => {
                    u.set_nonblocking(true)?;
                    let mut u = UdpSocket::from_std(u);
                    self.poll
                        .registry()
                        .register(&mut u, token, Interest::READABLE)?;
                    ListenerSocket::Udp(u)
                }
            };
            self.listeners.push(Listener {
                socket,
                guest_port: p.guest_port,
            });
        }
        Ok(())
    }

    /// The sandbox's address in the family of `host`.
    fn guest_addr_like(&self, host: IpAddr) -> IpAddr {
        match host {
            IpAddr::V4(_) => IpAddr::V4(self.cfg.link.guest_v4),
            IpAddr::V6(_) => IpAddr::V6(self.cfg.link.guest_v6),
        }
    }

    /// The source the sandbox sees for `peer` reaching it over a listener of `family`.
    fn inbound_source(&mut self, peer: SocketAddr, guest: IpAddr) -> SocketAddr {
        let ip = canonical_addr(peer.ip());
        let routable = !ip.is_loopback() && !ip.is_unspecified() && ip.is_ipv4() == guest.is_ipv4();
        if routable {
            SocketAddr::new(ip, peer.port())
        } else {
            let port = self.next_ephemeral();
            SocketAddr::new(self.gateway_for(guest), port)
        }
    }

    fn next_ephemeral(&mut self) -> u16 {
        // RFC 6335 dynamic ports.
        self.ephemeral = self.ephemeral.checked_add(1).unwrap_or(49152).max(49152);
        self.ephemeral
    }

    fn judge_inbound(&self, protocol: Protocol, peer: IpAddr, guest_port: u16) -> Decision {
        self.cfg.policy.decide(
            &Flow::inbound(protocol, peer, guest_port).with_local(self.host_addrs.contains(peer)),
        )
    }

    fn audit_inbound(
        &mut self,
        decision: &str,
        rule: &str,
        reason: &str,
        proto: &str,
        peer: SocketAddr,
        guest_port: u16,
    ) {
        self.cfg.audit.event(
            "connect",
            decision,
            rule,
            reason,
            vec![
                ("direction", Value::from("inbound")),
                ("proto", Value::from(proto)),
                ("src", Value::from(peer.to_string())),
                ("dst", Value::from(self.cfg.link.guest_v4.to_string())),
                ("port", Value::from(guest_port)),
            ],
        );
    }

    /// A published port's socket is readable.
    pub(super) fn on_listener(&mut self, index: usize) {
        let Some(listener) = self.listeners.get(index) else {
            return;
        };
        match &listener.socket {
            ListenerSocket::Tcp(_) => self.accept_all(index),
            ListenerSocket::Udp(_) => self.udp_in_readable(index),
        }
    }

    fn accept_all(&mut self, index: usize) {
        for _ in 0..256 {
            let Some(Listener {
                socket: ListenerSocket::Tcp(l),
                guest_port,
            }) = self.listeners.get(index)
            else {
                return;
            };
            let guest_port = *guest_port;
            let local = l.local_addr().map(|a| a.ip());
            match l.accept() {
                Ok((stream, peer)) => {
                    let host = local.unwrap_or(peer.ip());
                    self.inbound_tcp(stream, peer, host, guest_port);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => return,
            }
        }
    }

    fn inbound_tcp(
        &mut self,
        mut stream: TcpStream,
        peer: SocketAddr,
        host: IpAddr,
        guest_port: u16,
    ) {
        let decision = self.judge_inbound(Protocol::Tcp, peer.ip(), guest_port);
        let (rule, reason) = (decision.rule_label(), self.cfg.policy.reason(&decision));
        if !decision.is_allow() {
            self.counters.denied += 1;
            self.audit_inbound("deny", &rule, &reason, "tcp", peer, guest_port);
            reset(&stream);
            return;
        }
        if self.active >= self.cfg.max_connections {
            self.counters.over_limit += 1;
            let why = format!(
                "{} concurrent connections (max_connections)",
                self.cfg.max_connections
            );
            self.audit_inbound("deny", "max_connections", &why, "tcp", peer, guest_port);
            reset(&stream);
            return;
        }
        let guest = SocketAddr::new(self.guest_addr_like(host), guest_port);
        let source = self.inbound_source(peer, guest.ip());
        let Some((mut socket, mem)) = self.connection_socket() else {
            let why = format!(
                "the connections' buffers hold {} KiB of max_buffer_memory",
                self.budget.charged() / 1024
            );
            self.counters.over_limit += 1;
            self.audit_inbound("deny", "max_buffer_memory", &why, "tcp", peer, guest_port);
            reset(&stream);
            return;
        };
        let remote = IpEndpoint::new(guest.ip().into(), guest.port());
        let local = IpEndpoint::new(source.ip().into(), source.port());
        if socket.connect(self.iface.context(), remote, local).is_err() {
            self.give_back(socket, mem);
            reset(&stream);
            return;
        }
        let _ = stream.set_nodelay(true);
        let Some(id) = self.register_new(&mut stream, Interest::READABLE | Interest::WRITABLE)
        else {
            self.give_back(socket, mem);
            reset(&stream);
            return;
        };
        let handle = self.sockets.add(socket);
        self.flows[id] = Some(FlowEntry::Tcp(TcpFlow {
            rule: rule.clone(),
            sni: SniCheck::Off,
            guest,
            remote: source,
            stream,
            state: TcpState::Open { handle },
            mem,
            host_eof: false,
            host_write_shut: false,
            inbound: true,
            up: 0,
            down: 0,
            started: Instant::now(),
        }));
        self.tcp_index.insert((guest, source), id);
        self.active += 1;
        self.counters.allowed += 1;
        self.audit_inbound("allow", &rule, &reason, "tcp", peer, guest_port);
        self.dirty.insert(id);
    }

    fn udp_in_readable(&mut self, index: usize) {
        let mut buf = std::mem::take(&mut self.scratch);
        for _ in 0..256 {
            let Some(Listener {
                socket: ListenerSocket::Udp(sock),
                guest_port,
            }) = self.listeners.get(index)
            else {
                break;
            };
            let guest_port = *guest_port;
            let host = sock.local_addr().map(|a| a.ip());
            let (n, peer) = match sock.recv_from(&mut buf) {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => continue,
            };
            let id = match self.udp_in_by_peer.get(&(index, peer)) {
                Some(&id) => id,
                None => {
                    let decision = self.judge_inbound(Protocol::Udp, peer.ip(), guest_port);
                    let (rule, reason) = (decision.rule_label(), self.cfg.policy.reason(&decision));
                    if !decision.is_allow() {
                        self.counters.denied += 1;
                        self.audit_inbound("deny", &rule, &reason, "udp", peer, guest_port);
                        continue;
                    }
                    if self.active >= self.cfg.max_connections {
                        self.counters.over_limit += 1;
                        continue;
                    }
                    let guest = SocketAddr::new(
                        self.guest_addr_like(host.unwrap_or(peer.ip())),
                        guest_port,
                    );
                    let source = self.inbound_source(peer, guest.ip());
                    let id = self.slot();
                    self.flows[id] = Some(FlowEntry::UdpIn(UdpIn {
                        listener: index,
                        peer,
                        guest,
                        source,
                        last: Instant::now(),
                        up: 0,
                        down: 0,
                        started: Instant::now(),
                        rule: rule.clone(),
                    }));
                    self.udp_in_by_peer.insert((index, peer), id);
                    self.udp_in_by_guest.insert((guest, source), id);
                    self.active += 1;
                    self.counters.allowed += 1;
                    self.audit_inbound("allow", &rule, &reason, "udp", peer, guest_port);
                    id
                }
            };
            let Some(Some(FlowEntry::UdpIn(flow))) = self.flows.get_mut(id) else {
                continue;
            };
            flow.last = Instant::now();
            flow.down += n as u64;
            let (source, guest) = (flow.source, flow.guest);
            let mut out = std::mem::take(&mut self.tx_buf);
            if wire::udp_to_guest(&mut out, &self.link, source, guest, &buf[..n]) {
                self.send_frame(&out);
            }
            self.tx_buf = out;
        }
        self.scratch = buf;
    }

    /// A datagram from the sandbox that answers an inbound UDP flow; `true` if it was one.
    pub(super) fn udp_in_reply(
        &mut self,
        guest: SocketAddr,
        remote: SocketAddr,
        payload: &[u8],
    ) -> bool {
        let Some(&id) = self.udp_in_by_guest.get(&(guest, remote)) else {
            return false;
        };
        let Some(Some(FlowEntry::UdpIn(flow))) = self.flows.get_mut(id) else {
            return false;
        };
        flow.last = Instant::now();
        flow.up += payload.len() as u64;
        let (index, peer) = (flow.listener, flow.peer);
        if let Some(Listener {
            socket: ListenerSocket::Udp(sock),
            ..
        }) = self.listeners.get(index)
        {
            let _ = sock.send_to(payload, peer);
        }
        true
    }
}
