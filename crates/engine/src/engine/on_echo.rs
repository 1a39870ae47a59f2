//! What the loop does with ICMP echo (`echo.rs`): a request from the sandbox relayed on its
//! flow (opened, judged, when it is the first), and replies read from the flow's socket.

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use mio::Interest;
use moat_inspect::evidence::Named;
use moat_policy::Protocol;
use moat_wire::icmp::{self, EchoKind};

use super::cx::Cx;
use super::dial;
use super::echo::{EchoFlow, Request, icmp_name};
use super::key::{FlowId, FlowKey};
use super::table::{Flow, FlowTable};

/// Relays an echo request from the sandbox, if the policy allows it.
pub(super) fn request(table: &mut FlowTable, cx: &mut Cx, req: Request<'_>) {
    let id = match table.find_echo(&(req.guest, req.dst, req.ident)) {
        Some(id) => id,
        None => match open(table, cx, &req) {
            Some(id) => id,
            None => return,
        },
    };
    let Some(Flow::Echo(e)) = table.get_mut(id) else {
        return;
    };
    e.last = Instant::now();
    let mut out = std::mem::take(&mut cx.scratch);
    icmp::request(
        &mut out,
        req.dst.is_ipv6(),
        e.kind,
        e.our_ident,
        req.seq,
        req.data,
    );
    if e.sock.send(&out).is_ok() {
        cx.counters.icmp_relayed += 1;
    }
    out.resize(65536, 0);
    cx.scratch = out;
}

/// Judges a new echo flow and opens its socket.
fn open(table: &mut FlowTable, cx: &mut Cx, req: &Request<'_>) -> Option<FlowId> {
    let judged = cx.stack.upstream(SocketAddr::new(req.dst, 0)).ip();
    let protocol = if req.dst.is_ipv4() {
        Protocol::Icmpv4
    } else {
        Protocol::Icmpv6
    };
    let key = FlowKey {
        guest: SocketAddr::new(req.guest, req.ident),
        host: SocketAddr::new(req.dst, 0),
    };
    let permit = match cx.judge(protocol, judged, None) {
        Ok(permit) => permit,
        Err(decision) => {
            cx.audit_deny(icmp_name(req.dst), key, &decision);
            if cx.cfg.deny_mode.answers() {
                cx.stack.send_prohibited(req.frame, req.dst);
            }
            return None;
        }
    };
    if table.echo_full() {
        cx.counters.icmp_dropped += 1;
        return None;
    }
    let Ok((mut sock, kind)) = dial::echo(judged, &permit) else {
        cx.counters.icmp_dropped += 1;
        return None;
    };
    let Some(id) = table.open(&mut sock, Interest::READABLE) else {
        cx.counters.icmp_dropped += 1;
        return None;
    };
    let flow = EchoFlow {
        guest: req.guest,
        dst: req.dst,
        guest_ident: req.ident,
        our_ident: cx.next_random() as u16,
        kind,
        sock,
        last: Instant::now(),
    };
    table.insert(id, Flow::Echo(flow));
    let (rule, reason) = cx.explain(permit.decision());
    cx.audit_allow(icmp_name(req.dst), key, &rule, &reason, &Named::Nothing);
    Some(id)
}

/// The flow's socket has replies: each goes to the sandbox with its identifier.
pub(super) fn readable(table: &mut FlowTable, cx: &mut Cx, id: FlowId) {
    let Some(Flow::Echo(e)) = table.get_mut(id) else {
        return;
    };
    let mut buf = std::mem::take(&mut cx.scratch);
    loop {
        let n = match e.sock.recv(&mut buf) {
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) => continue,
        };
        let Some((ident, seq, data)) = icmp::reply(&buf[..n], e.dst.is_ipv6(), e.kind) else {
            continue;
        };
        if e.kind == EchoKind::Raw && ident != e.our_ident {
            continue; // someone else's ping to the same host
        }
        cx.stack
            .echo_reply(e.dst, e.guest, e.guest_ident, seq, data);
    }
    cx.scratch = buf;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

    use std::net::{IpAddr, Ipv4Addr};

    use moat_policy::NetworkPolicy;
    use smoltcp::wire::{Icmpv4Message, Icmpv4Packet, IpProtocol, Ipv4Packet};

    use super::*;
    use crate::engine::config::DenyMode;
    use crate::engine::testing::{Harness, echo_request, icmp_to_guest};

    const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// The sandbox's echo request `seq` (identifier 7) to loopback, as ingress hands it on.
    fn ping(h: &mut Harness, frame: &[u8], seq: u16) {
        let guest = h.cx.stack.addrs.guest_v4.into();
        let req = Request {
            frame,
            guest,
            dst: LOOPBACK,
            ident: 7,
            seq,
            data: b"ping",
        };
        request(&mut h.table, &mut h.cx, req);
    }

    /// Echo replies to the sandbox: (identifier, sequence, data).
    fn replies(h: &mut Harness) -> Vec<(u16, u16, Vec<u8>)> {
        h.sent()
            .iter()
            .filter_map(|f| {
                let ip = Ipv4Packet::new_checked(f.get(14..)?).ok()?;
                if ip.next_header() != IpProtocol::Icmp {
                    return None;
                }
                let icmp = Icmpv4Packet::new_checked(ip.payload()).ok()?;
                (icmp.msg_type() == Icmpv4Message::EchoReply)
                    .then(|| (icmp.echo_ident(), icmp.echo_seq_no(), icmp.data().to_vec()))
            })
            .collect()
    }

    fn echo_flows(h: &Harness) -> Vec<FlowId> {
        h.table
            .ids()
            .into_iter()
            .filter(|&f| matches!(h.table.get(f), Some(Flow::Echo(_))))
            .collect()
    }

    /// The reply to `seq`, once the flow's socket is read (bounded: 3 s).
    fn reply_to(h: &mut Harness, id: FlowId, seq: u16) -> bool {
        h.until(|h| {
            readable(&mut h.table, &mut h.cx, id);
            h.cx.stack.egress();
            replies(h).contains(&(7, seq, b"ping".to_vec()))
        })
    }

    #[test]
    fn an_allowed_echo_is_relayed_on_its_flow_and_replies_come_back() {
        let mut h = Harness::new(NetworkPolicy::allow_all(), DenyMode::Reject);
        let frame = echo_request(Ipv4Addr::new(203, 0, 113, 10));
        ping(&mut h, &frame, 1);
        let guest = h.cx.stack.addrs.guest_v4.into();
        let id = h.table.find_echo(&(guest, LOOPBACK, 7)).expect("no flow");
        assert_eq!(h.cx.counters.icmp_relayed, 1);
        let audit = h.audit();
        assert!(
            audit.contains(r#""proto":"icmpv4""#) && audit.contains(r#""decision":"allow""#),
            "{audit}"
        );
        // The reply reaches the sandbox under its own identifier.
        assert!(reply_to(&mut h, id, 1), "no reply to the first echo");
        // The next request rides the same flow.
        ping(&mut h, &frame, 2);
        assert_eq!(echo_flows(&h), vec![id]);
        assert_eq!(h.cx.counters.icmp_relayed, 2);
        assert!(reply_to(&mut h, id, 2), "no reply to the second echo");
        assert_eq!(h.audit().matches(r#""decision":"allow""#).count(), 1);
    }

    #[test]
    fn someone_elses_echo_to_the_same_host_is_not_the_sandboxs() {
        let mut h = Harness::new(NetworkPolicy::allow_all(), DenyMode::Drop);
        let frame = echo_request(Ipv4Addr::new(203, 0, 113, 10));
        ping(&mut h, &frame, 1);
        let guest = h.cx.stack.addrs.guest_v4.into();
        let id = h.table.find_echo(&(guest, LOOPBACK, 7)).expect("no flow");
        assert!(reply_to(&mut h, id, 1));
        // Another program on the host pings loopback with its own identifier.
        let (other, kind) = icmp::open(LOOPBACK).unwrap();
        let mut out = Vec::new();
        let their_ident = match h.table.get(id) {
            Some(Flow::Echo(e)) => e.our_ident.wrapping_add(1),
            _ => unreachable!(),
        };
        icmp::request(&mut out, false, kind, their_ident, 9, b"theirs");
        other.send(&out).unwrap();
        // Its reply arrives (its socket sees it), and the sandbox gets nothing of it.
        let mut buf = [0u8; 1500];
        let theirs_back = h.until(|_| {
            while let Ok(n) = other.recv(&mut buf) {
                if icmp::reply(&buf[..n], false, kind).is_some_and(|(_, seq, _)| seq == 9) {
                    return true;
                }
            }
            false
        });
        assert!(theirs_back, "the other program's echo got no reply");
        let mut seen = Vec::new();
        for _ in 0..20 {
            readable(&mut h.table, &mut h.cx, id);
            h.cx.stack.egress();
            seen.extend(replies(&mut h));
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(
            !seen
                .iter()
                .any(|(_, seq, data)| *seq == 9 || data == b"theirs"),
            "{seen:?}"
        );
    }

    #[test]
    fn a_denied_echo_opens_nothing_and_is_answered_only_where_the_mode_answers() {
        for mode in [DenyMode::Drop, DenyMode::Reject, DenyMode::Explain] {
            let mut h = Harness::new(NetworkPolicy::none(), mode);
            let frame = echo_request(Ipv4Addr::new(203, 0, 113, 10));
            ping(&mut h, &frame, 1);
            assert!(echo_flows(&h).is_empty(), "{mode:?}");
            assert_eq!(h.cx.counters.icmp_relayed, 0);
            assert!(h.audit().contains(r#""decision":"deny""#), "{mode:?}");
            h.cx.stack.egress();
            let refused = h
                .sent()
                .iter()
                .filter_map(|f| icmp_to_guest(f))
                .any(|(_, t)| t == Icmpv4Message::DstUnreachable);
            assert_eq!(refused, mode != DenyMode::Drop, "{mode:?}");
        }
    }

    #[test]
    fn echo_flows_are_bounded_and_one_past_the_bound_is_dropped_and_counted() {
        let mut h = Harness::new(NetworkPolicy::allow_all(), DenyMode::Drop);
        let frame = echo_request(Ipv4Addr::new(203, 0, 113, 10));
        let guest = h.cx.stack.addrs.guest_v4.into();
        let mut ident = 0;
        while h.cx.counters.icmp_dropped == 0 && ident < 1000 {
            ident += 1;
            let req = Request {
                frame: &frame,
                guest,
                dst: LOOPBACK,
                ident,
                seq: 1,
                data: b"ping",
            };
            request(&mut h.table, &mut h.cx, req);
        }
        let open = echo_flows(&h).len();
        assert_eq!(h.cx.counters.icmp_dropped, 1);
        assert_eq!(usize::from(ident), open + 1, "dropped before the bound");
        assert_eq!(h.cx.counters.icmp_relayed, open as u64);
    }
}
