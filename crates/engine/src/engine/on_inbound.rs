//! What the loop does with published ports (`inbound.rs`): a listener ready (connections
//! accepted and judged, each a TCP flow; datagrams read, each peer a flow of its own), and
//! the sandbox's replies to a peer sent back from the listener's socket.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use mio::Interest;
use mio::net::TcpStream;
use moat_policy::Protocol;
use smoltcp::wire::IpEndpoint;

use super::cx::{Cx, Tally};
use super::inbound::{ACCEPT_BATCH, Listener, ListenerSocket, Listeners, UdpIn};
use super::key::FlowKey;
use super::table::{Flow, FlowTable};
use super::tcp_flow::{self, TcpFlow};

/// Published port `index` is readable.
pub(super) fn ready(listeners: &mut Listeners, table: &mut FlowTable, cx: &mut Cx, index: usize) {
    match listeners.list.get(index).map(|l| &l.socket) {
        Some(ListenerSocket::Tcp(_)) => accept_all(listeners, table, cx, index),
        Some(ListenerSocket::Udp(_)) => udp_readable(listeners, table, cx, index),
        None => {}
    }
}

fn accept_all(listeners: &mut Listeners, table: &mut FlowTable, cx: &mut Cx, index: usize) {
    // Returns on `WouldBlock` (drained) and on errors (the next connection's edge retries).
    for _ in 0..ACCEPT_BATCH {
        let Some(Listener {
            socket: ListenerSocket::Tcp(l),
            guest_port,
        }) = listeners.list.get(index)
        else {
            return;
        };
        let guest_port = *guest_port;
        let local = l.local_addr().map(|a| a.ip());
        match l.accept() {
            Ok((stream, peer)) => {
                let host = local.unwrap_or(peer.ip());
                accept(listeners, table, cx, stream, peer, host, guest_port);
            }
            Err(_) => return,
        }
    }
    listeners.again.push(index);
}

/// Judges a peer's connection to published port `guest_port` (reached at host address
/// `host`) and, allowed, connects a socket to the sandbox for it.
fn accept(
    listeners: &mut Listeners,
    table: &mut FlowTable,
    cx: &mut Cx,
    mut stream: TcpStream,
    peer: SocketAddr,
    host: IpAddr,
    guest_port: u16,
) {
    let decision = cx.judge_inbound(Protocol::Tcp, peer.ip(), guest_port);
    let (rule, reason) = cx.explain(&decision);
    if !decision.is_allow() {
        cx.counters.denied += 1;
        cx.audit_inbound("deny", &rule, &reason, "tcp", peer, guest_port);
        tcp_flow::reset_host(&stream);
        return;
    }
    if table.connections_full() {
        cx.counters.over_limit += 1;
        let why = cx.limit_reason();
        cx.audit_inbound("deny", "max_connections", &why, "tcp", peer, guest_port);
        tcp_flow::reset_host(&stream);
        return;
    }
    let guest = SocketAddr::new(cx.stack.guest_addr_like(host), guest_port);
    let source = listeners.inbound_source(cx, peer, guest.ip());
    let Some((mut socket, mem)) = cx.pool.connection_socket() else {
        let why = format!(
            "the connections' buffers hold {} KiB of max_buffer_memory",
            cx.pool.charged() / 1024
        );
        cx.counters.over_limit += 1;
        cx.audit_inbound("deny", "max_buffer_memory", &why, "tcp", peer, guest_port);
        tcp_flow::reset_host(&stream);
        return;
    };
    let remote = IpEndpoint::new(guest.ip().into(), guest.port());
    let local = IpEndpoint::new(source.ip().into(), source.port());
    if socket
        .connect(cx.stack.iface.context(), remote, local)
        .is_err()
    {
        cx.pool.give_back(socket, mem);
        tcp_flow::reset_host(&stream);
        return;
    }
    let _ = stream.set_nodelay(true);
    let Some(id) = table.open(&mut stream, Interest::READABLE | Interest::WRITABLE) else {
        cx.pool.give_back(socket, mem);
        tcp_flow::reset_host(&stream);
        return;
    };
    let handle = cx.stack.sockets.add(socket);
    let key = FlowKey {
        guest,
        host: source,
    };
    let flow = TcpFlow::published(key, rule.clone(), stream, handle, mem, &cx.cfg.secrets);
    table.insert(id, Flow::Tcp(flow));
    cx.counters.allowed += 1;
    cx.audit_inbound("allow", &rule, &reason, "tcp", peer, guest_port);
    table.touch(id);
}

fn udp_readable(listeners: &mut Listeners, table: &mut FlowTable, cx: &mut Cx, index: usize) {
    let mut buf = std::mem::take(&mut cx.scratch);
    let mut drained = false;
    for _ in 0..ACCEPT_BATCH {
        let Some(Listener {
            socket: ListenerSocket::Udp(sock),
            guest_port,
        }) = listeners.list.get(index)
        else {
            break;
        };
        let guest_port = *guest_port;
        let host = sock.local_addr().map(|a| a.ip());
        let (n, peer) = match sock.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                drained = true;
                break;
            }
            Err(_) => continue,
        };
        let id = match table.find_udp_in_by_peer(index, peer) {
            Some(id) => id,
            None => {
                let decision = cx.judge_inbound(Protocol::Udp, peer.ip(), guest_port);
                let (rule, reason) = cx.explain(&decision);
                if !decision.is_allow() {
                    cx.counters.denied += 1;
                    cx.audit_inbound("deny", &rule, &reason, "udp", peer, guest_port);
                    continue;
                }
                if table.connections_full() {
                    cx.counters.over_limit += 1;
                    continue;
                }
                let guest = SocketAddr::new(
                    cx.stack.guest_addr_like(host.unwrap_or(peer.ip())),
                    guest_port,
                );
                let source = listeners.inbound_source(cx, peer, guest.ip());
                let id = table.reserve();
                let flow = UdpIn {
                    listener: index,
                    peer,
                    guest,
                    source,
                    last: Instant::now(),
                    tally: Tally::new(),
                    rule: rule.clone(),
                };
                table.insert(id, Flow::UdpIn(flow));
                cx.counters.allowed += 1;
                cx.audit_inbound("allow", &rule, &reason, "udp", peer, guest_port);
                id
            }
        };
        let Some(Flow::UdpIn(flow)) = table.get_mut(id) else {
            continue;
        };
        flow.last = Instant::now();
        flow.tally.down += n as u64;
        cx.stack.udp_to_guest(flow.source, flow.guest, &buf[..n]);
    }
    cx.scratch = buf;
    if !drained {
        listeners.again.push(index);
    }
}

/// A datagram from the sandbox that answers an inbound UDP flow; `true` if it was one.
pub(super) fn reply(
    listeners: &Listeners,
    table: &mut FlowTable,
    key: FlowKey,
    payload: &[u8],
) -> bool {
    let Some(id) = table.find_udp_in(&key) else {
        return false;
    };
    let Some(Flow::UdpIn(flow)) = table.get_mut(id) else {
        return false;
    };
    flow.last = Instant::now();
    flow.tally.up += payload.len() as u64;
    if let Some(Listener {
        socket: ListenerSocket::Udp(sock),
        ..
    }) = listeners.list.get(flow.listener)
    {
        let _ = sock.send_to(payload, flow.peer);
    }
    true
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

    use std::net::{Ipv4Addr, UdpSocket as StdUdp};
    use std::time::Duration;

    use moat_policy::NetworkPolicy;

    use super::*;
    use crate::engine::config::{DenyMode, Published, PublishedSocket};
    use crate::engine::testing::{Harness, loopback_listener, udp_from, udp_to_guest_full};

    /// A sandbox with `published` as its UDP port 5300.
    fn publishing_udp(published: StdUdp) -> Harness {
        Harness::with_published(
            NetworkPolicy::allow_all(),
            DenyMode::Drop,
            vec![Published {
                socket: PublishedSocket::Udp(published),
                guest_port: 5300,
            }],
        )
    }

    #[test]
    fn a_published_udp_port_carries_a_peer_in_and_the_answer_out() {
        let published = StdUdp::bind("127.0.0.1:0").unwrap();
        let port = published.local_addr().unwrap();
        let mut h = publishing_udp(published);
        let peer = StdUdp::bind("127.0.0.1:0").unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        peer.send_to(b"hello", port).unwrap();
        // The datagram enters the sandbox at its port 5300; a peer on the host's loopback
        // is shown as the gateway.
        let mut from = None;
        let arrived = h.until(|h| {
            ready(&mut h.listeners, &mut h.table, &mut h.cx, 0);
            from = h
                .sent()
                .iter()
                .filter_map(|f| udp_to_guest_full(f))
                .find(|(_, _, dst, data)| *dst == 5300 && data == b"hello")
                .map(|(src, sport, _, _)| (src, sport));
            from.is_some()
        });
        assert!(arrived, "the peer's datagram did not reach the sandbox");
        let (src, sport) = from.unwrap();
        assert_eq!(src, Ipv4Addr::new(10, 0, 2, 2));
        // The sandbox's answer to that source goes back to the peer, from the published
        // port.
        h.frame(&udp_from(5300, src, sport, b"world"));
        let mut buf = [0u8; 16];
        let (n, back_from) = peer.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"world");
        assert_eq!(back_from, port);
        assert!(
            h.audit().contains("\"direction\":\"inbound\""),
            "{}",
            h.audit()
        );
    }

    #[test]
    fn a_published_udp_port_reads_a_long_burst_to_the_end() {
        let published = StdUdp::bind("127.0.0.1:0").unwrap();
        let room: usize = 1 << 20;
        nix::sys::socket::setsockopt(&published, nix::sys::socket::sockopt::RcvBuf, &room).unwrap();
        let port = published.local_addr().unwrap();
        let mut h = publishing_udp(published);
        let peer = StdUdp::bind("127.0.0.1:0").unwrap();
        let burst = ACCEPT_BATCH + 44;
        for i in 0..burst as u32 {
            peer.send_to(&i.to_be_bytes(), port).unwrap();
        }
        let count = |h: &mut Harness| {
            h.sent()
                .iter()
                .filter_map(|f| udp_to_guest_full(f))
                .filter(|(_, _, dst, _)| *dst == 5300)
                .count()
        };
        // One readiness event: one batch, and the port is to be read again.
        ready(&mut h.listeners, &mut h.table, &mut h.cx, 0);
        assert_eq!(count(&mut h), ACCEPT_BATCH);
        assert!(h.listeners.has_again());
        for index in h.listeners.take_again() {
            ready(&mut h.listeners, &mut h.table, &mut h.cx, index);
        }
        assert_eq!(count(&mut h), burst - ACCEPT_BATCH);
        assert!(!h.listeners.has_again(), "a drained port is read again");
    }

    #[test]
    fn a_published_tcp_port_accepts_a_long_queue_to_the_end() {
        // A listener whose queue holds more than a batch (the standard one holds 128).
        let listener = loopback_listener(1024);
        let port = listener.local_addr().unwrap();
        let mut h = Harness::with_published(
            NetworkPolicy::allow_all(),
            DenyMode::Drop,
            vec![Published {
                socket: PublishedSocket::Tcp(listener),
                guest_port: 8080,
            }],
        );
        let queued = ACCEPT_BATCH + 20;
        let _peers: Vec<std::net::TcpStream> = (0..queued)
            .map(|_| std::net::TcpStream::connect(port).unwrap())
            .collect();
        let allowed = |h: &Harness| h.audit().matches("\"decision\":\"allow\"").count();
        ready(&mut h.listeners, &mut h.table, &mut h.cx, 0);
        assert_eq!(allowed(&h), ACCEPT_BATCH);
        assert!(h.listeners.has_again());
        for index in h.listeners.take_again() {
            ready(&mut h.listeners, &mut h.table, &mut h.cx, index);
        }
        assert_eq!(allowed(&h), queued);
        assert!(!h.listeners.has_again(), "a drained port is read again");
    }
}
