//! What the loop does with UDP flows (`udp_flow.rs`): a datagram from the sandbox judged
//! and relayed on its flow (opened when it is the first; several of one size sent as one
//! run), and datagrams read from the flow's socket for the sandbox.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Instant;

use mio::Interest;
use moat_inspect::evidence::Named;
use moat_inspect::secrets;
use moat_policy::Protocol;
use moat_wire::Unreachable;
use nix::sys::socket::{ControlMessage, MsgFlags};

use super::cx::{Cx, Tally};
use super::dial;
use super::key::{FlowId, FlowKey};
use super::table::{Flow, FlowTable};
use super::udp_flow::{MAX_RUN_BYTES, RX_BATCH, UdpFlow};

/// A datagram from the sandbox (not DNS, not an answer to a published port's peer).
pub(super) fn datagram(
    table: &mut FlowTable,
    cx: &mut Cx,
    frame: &[u8],
    key: FlowKey,
    payload: &[u8],
) {
    // DNS over QUIC, mDNS, LLMNR and NetBIOS name service would resolve names past the
    // interceptor: refused at once, so stub resolvers fall back to port 53.
    if matches!(key.host.port(), 853 | 5353 | 5355 | 137) {
        cx.audit_bypass(
            "udp",
            key,
            "DoQ, mDNS, LLMNR and NetBIOS name service are refused; use DNS on port 53",
        );
        cx.stack.send_prohibited(frame, key.host.ip());
        return;
    }
    // No secret may leave in a datagram (UDP carries no HTTPS moat could read).
    if let Some(i) = secrets::carried(&cx.cfg.secrets, payload) {
        let host = cx
            .pinned_name(key.host.ip())
            .unwrap_or_else(|| key.host.ip().to_string());
        cx.secret_violation_on("udp", key, &host, i);
        return;
    }
    // QUIC to an intercepted port would carry TLS past the interceptor: refused at once
    // (port unreachable), so clients fall back to TCP without waiting.
    if cx
        .tls
        .as_ref()
        .is_some_and(|t| t.blocks_quic(key.host.port()))
    {
        cx.counters.denied += 1;
        cx.audit_refused_quic(key);
        cx.stack
            .send_unreachable(frame, key.host.ip(), Unreachable::Port);
        return;
    }
    if let Some(id) = table.find_udp(&key) {
        queue_up(table, cx, id, payload);
        return;
    }
    let upstream = cx.stack.upstream(key.host);
    let permit = match cx.judge(Protocol::Udp, upstream.ip(), Some(upstream.port())) {
        Ok(permit) => permit,
        Err(decision) => {
            cx.audit_deny("udp", key, &decision);
            if cx.cfg.deny_mode.answers() {
                cx.stack.send_prohibited(frame, key.host.ip());
            }
            return;
        }
    };
    let (rule, reason) = cx.explain(permit.decision());
    if table.connections_full() {
        cx.audit_limit("udp", key);
        return;
    }
    let Ok(mut sock) = dial::udp(upstream, &permit) else {
        cx.counters.dial_failures += 1;
        return;
    };
    let sent = sock.send(payload).is_ok();
    let Some(id) = table.open(&mut sock, Interest::READABLE) else {
        return;
    };
    let mut tally = Tally::new();
    if sent {
        tally.up = payload.len() as u64;
    }
    let flow = UdpFlow {
        key,
        rule: rule.clone(),
        sock,
        last: Instant::now(),
        tally,
    };
    table.insert(id, Flow::Udp(flow));
    cx.audit_allow("udp", key, &rule, &reason, &Named::Nothing);
}

/// Holds `payload` for flow `id`, sending what was held first unless it joins the run.
fn queue_up(table: &mut FlowTable, cx: &mut Cx, id: FlowId, payload: &[u8]) {
    let held = &cx.up_run;
    if held.flow != Some(id) || !held.run.takes(payload.len(), MAX_RUN_BYTES) {
        flush_up(table, cx);
        cx.up_run.flow = Some(id);
        cx.up_run.bytes.clear();
    }
    let held = &mut cx.up_run;
    held.run.add(payload.len());
    held.bytes.extend_from_slice(payload);
}

/// Sends the datagrams [`queue_up`] held: one `UDP_SEGMENT` send for a run of several, each
/// alone when the kernel refuses that (a datagram larger than the route's MTU, a kernel
/// before Linux 4.18). A full socket buffer drops the run, as it would each datagram.
pub(super) fn flush_up(table: &mut FlowTable, cx: &mut Cx) {
    let held = &mut cx.up_run;
    let Some(id) = held.flow.take() else {
        return;
    };
    let run = std::mem::take(&mut held.run);
    let Some(Flow::Udp(flow)) = table.get_mut(id) else {
        return;
    };
    flow.last = Instant::now();
    let sent = if run.count() == 1 {
        flow.sock.send(&held.bytes).is_ok()
    } else {
        let size = run.size() as u16;
        let whole = nix::sys::socket::sendmsg::<()>(
            flow.sock.as_raw_fd(),
            &[io::IoSlice::new(&held.bytes)],
            &[ControlMessage::UdpGsoSegments(&size)],
            MsgFlags::empty(),
            None,
        );
        match whole {
            Ok(_) => true,
            Err(nix::errno::Errno::EAGAIN) => false,
            Err(_) => {
                let mut any = false;
                for datagram in run.datagrams(&held.bytes) {
                    any |= flow.sock.send(datagram).is_ok();
                }
                any
            }
        }
    };
    if sent {
        flow.tally.up += held.bytes.len() as u64;
    }
}

/// The flow's host socket has datagrams: each goes to the sandbox, a batch at a time. A
/// batch that does not drain the socket marks the flow, and the loop reads it again next
/// turn: the edge-triggered poll does not report what is already queued.
pub(super) fn readable(table: &mut FlowTable, cx: &mut Cx, id: FlowId) {
    let Some(Flow::Udp(flow)) = table.get_mut(id) else {
        return;
    };
    let mut buf = std::mem::take(&mut cx.scratch);
    let mut drained = false;
    let mut burst = cx.stack.udp_burst(flow.key.host, flow.key.guest);
    for _ in 0..RX_BATCH {
        match flow.sock.recv(&mut buf) {
            Ok(n) => {
                flow.tally.down += n as u64;
                flow.last = Instant::now();
                burst.push(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                drained = true;
                break;
            }
            // ICMP errors surface as errors on a connected UDP socket; keep the flow.
            Err(_) => continue,
        }
    }
    burst.finish();
    cx.scratch = buf;
    if !drained {
        table.touch(id);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

    use std::net::{Ipv4Addr, SocketAddr};
    use std::time::Duration;

    use moat_policy::NetworkPolicy;

    use super::*;
    use crate::engine::config::DenyMode;
    use crate::engine::key::{Due, FlowId};
    use crate::engine::table::Flow;
    use crate::engine::testing::{Harness, key_to, udp, udp_to_guest};

    const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);

    /// A server on loopback, and the flow the sandbox's "ping" to it opened (the ping
    /// arrived): the server, its port, the harness, the flow and the flow's host address.
    fn flow_to_server() -> (std::net::UdpSocket, u16, Harness, FlowId, SocketAddr) {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let port = server.local_addr().unwrap().port();
        let mut h = Harness::new(NetworkPolicy::allow_all(), DenyMode::Drop);
        h.frame(&udp(GATEWAY, port, b"ping"));
        let mut buf = [0u8; 16];
        let (n, from) = server.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");
        let key = key_to(SocketAddr::new(GATEWAY.into(), port));
        let id = h.table.find_udp(&key).expect("the datagram opened a flow");
        (server, port, h, id, from)
    }

    #[test]
    fn a_datagram_opens_a_flow_and_replies_come_back() {
        let (server, port, mut h, id, from) = flow_to_server();
        server.send_to(b"pong", from).unwrap();
        let back = h.until(|h| {
            readable(&mut h.table, &mut h.cx, id);
            h.sent()
                .iter()
                .filter_map(|f| udp_to_guest(f))
                .any(|(src, data)| src == port && data == b"pong")
        });
        assert!(back, "the reply did not reach the sandbox");
        let due = match h.table.get(id) {
            Some(Flow::Udp(f)) => f.due(
                Instant::now() + Duration::from_secs(61),
                Duration::from_secs(60),
            ),
            _ => Due::Nothing,
        };
        assert!(matches!(due, Due::Expire));
    }

    #[test]
    fn a_burst_longer_than_a_batch_is_read_to_the_end() {
        let (server, port, mut h, id, flow_addr) = flow_to_server();
        // Room for the whole burst in the flow's socket (the default holds ~256 small ones).
        if let Some(Flow::Udp(f)) = h.table.get(id) {
            let room: usize = 1 << 20;
            nix::sys::socket::setsockopt(&f.sock, nix::sys::socket::sockopt::RcvBuf, &room)
                .unwrap();
        }
        let burst = RX_BATCH + 44;
        for i in 0..burst as u32 {
            server.send_to(&i.to_be_bytes(), flow_addr).unwrap();
        }
        let count = |h: &mut Harness| {
            h.sent()
                .iter()
                .filter_map(|f| udp_to_guest(f))
                .filter(|(src, _)| *src == port)
                .count()
        };
        // One readiness event reads one batch and marks the flow...
        readable(&mut h.table, &mut h.cx, id);
        assert_eq!(count(&mut h), RX_BATCH);
        assert!(
            h.table.has_dirty(),
            "more is queued, but the flow was not marked"
        );
        // ...and the loop's next turn serves it: the rest arrives with no new datagram.
        h.serve_marked();
        assert_eq!(count(&mut h), burst - RX_BATCH);
        assert!(!h.table.has_dirty(), "a drained flow is marked again");
    }

    /// Frames carrying `sizes` datagrams (each filled with its index) to `port`.
    fn datagrams_to(port: u16, sizes: &[usize]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let payloads: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| vec![i as u8; n])
            .collect();
        let frames = payloads.iter().map(|p| udp(GATEWAY, port, p)).collect();
        (frames, payloads)
    }

    /// What `server` received, one entry per read, with the segment size a UDP_GRO socket
    /// reported for it (the read's length otherwise).
    fn reads(server: &std::net::UdpSocket, total: usize) -> Vec<(Vec<u8>, usize)> {
        use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg};
        let mut got = Vec::new();
        let mut sum = 0;
        let mut buf = vec![0u8; 65536];
        while sum < total {
            let mut cmsg = nix::cmsg_space!(i32);
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let Ok(msg) = recvmsg::<SockaddrStorage>(
                server.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::empty(),
            ) else {
                break;
            };
            let n = msg.bytes;
            let size = msg
                .cmsgs()
                .ok()
                .and_then(|mut c| {
                    c.find_map(|m| match m {
                        ControlMessageOwned::UdpGroSegments(s) => Some(s as usize),
                        _ => None,
                    })
                })
                .unwrap_or(n);
            got.push((buf[..n].to_vec(), size));
            sum += n.max(1);
        }
        got
    }

    #[test]
    fn a_run_of_datagrams_from_the_sandbox_leaves_in_one_send() {
        let (server, port, mut h, _, _) = flow_to_server();
        // A receiver that takes a run whole when it arrives as one (loopback passes it on
        // unsplit); datagrams sent one by one arrive one by one.
        nix::sys::socket::setsockopt(&server, nix::sys::socket::sockopt::UdpGroSegment, &true)
            .unwrap();
        let mut sizes = vec![1000; 20];
        sizes.push(300);
        let (frames, payloads) = datagrams_to(port, &sizes);
        h.frames(&frames);
        let got = reads(&server, 20 * 1000 + 300);
        assert_eq!(
            got.len(),
            1,
            "one send, one read: {:?}",
            got.iter().map(|r| r.0.len()).collect::<Vec<_>>()
        );
        assert_eq!(got[0].1, 1000, "the run's segment size");
        assert_eq!(got[0].0, payloads.concat());
    }

    #[test]
    fn the_far_end_gets_each_datagram_as_the_sandbox_sent_it() {
        let (server, port, mut h, id, _) = flow_to_server();
        let room: usize = 1 << 20;
        nix::sys::socket::setsockopt(&server, nix::sys::socket::sockopt::RcvBuf, &room).unwrap();
        // Runs, a longer one after a shorter, an empty datagram, more than a send holds.
        let mut sizes = vec![1000, 1000, 1000, 1200, 1200, 500, 1200, 0, 0, 7, 7, 1];
        sizes.extend(std::iter::repeat_n(1400, 70));
        sizes.extend([1401, 1400, 65000, 600, 600]);
        let (frames, payloads) = datagrams_to(port, &sizes);
        let total: usize = sizes.iter().map(|&n| n.max(1)).sum();
        h.frames(&frames);
        let got: Vec<Vec<u8>> = reads(&server, total).into_iter().map(|r| r.0).collect();
        assert_eq!(got.len(), payloads.len());
        assert!(
            got == payloads,
            "the datagrams differ from what the sandbox sent"
        );
        let up = match h.table.get(id) {
            Some(Flow::Udp(f)) => f.tally.up,
            _ => 0,
        };
        assert_eq!(
            up as usize,
            4 + sizes.iter().sum::<usize>(),
            "bytes counted up"
        );
    }

    #[test]
    fn resolver_bypasses_are_refused_with_icmp() {
        let mut h = Harness::new(NetworkPolicy::allow_all(), DenyMode::Drop);
        h.frame(&udp(Ipv4Addr::new(203, 0, 113, 10), 5353, b"query"));
        let key = key_to(SocketAddr::new(Ipv4Addr::new(203, 0, 113, 10).into(), 5353));
        assert!(h.table.find_udp(&key).is_none());
        // The refusal is an ICMP error to the sandbox, and the audit says why.
        assert!(!h.sent().is_empty());
        assert!(h.audit().contains("dns_bypass"), "{}", h.audit());
    }

    #[test]
    fn a_refusal_waiting_on_the_socket_does_not_hide_the_datagrams_behind_it() {
        let (server, port, mut h, id, flow_addr) = flow_to_server();
        // The server goes; the sandbox's next datagram comes back as port unreachable,
        // which waits on the flow's socket as an error.
        drop(server);
        h.frame(&udp(GATEWAY, port, b"anyone?"));
        std::thread::sleep(Duration::from_millis(20));
        // A server on the same port again sends to the flow: behind the error, a datagram.
        let Ok(again) = std::net::UdpSocket::bind(("127.0.0.1", port)) else {
            return; // the port was taken meanwhile: nothing to show
        };
        again.send_to(b"back", flow_addr).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        // One readiness event reads past the error to the datagram.
        readable(&mut h.table, &mut h.cx, id);
        let got: Vec<Vec<u8>> = h
            .sent()
            .iter()
            .filter_map(|f| udp_to_guest(f))
            .map(|(_, d)| d)
            .collect();
        assert_eq!(got, vec![b"back".to_vec()]);
        let down = match h.table.get(id) {
            Some(Flow::Udp(f)) => f.tally.down,
            _ => 0,
        };
        assert_eq!(down, 4, "bytes counted down");
    }

    #[test]
    fn quic_to_an_intercepted_port_is_refused_and_counted() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let port = server.local_addr().unwrap().port();
        let mut h = Harness::with_config(NetworkPolicy::allow_all(), |cfg| {
            cfg.tls = Some(crate::engine::testing::intercepting(port));
        });
        h.frame(&udp(GATEWAY, port, b"quic initial"));
        assert_eq!(h.cx.counters.denied, 1);
        assert!(
            server.recv_from(&mut [0u8; 64]).is_err(),
            "QUIC was relayed"
        );
        assert!(h.audit().contains("quic"), "{}", h.audit());
    }
}
