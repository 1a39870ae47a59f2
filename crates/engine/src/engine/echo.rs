//! ICMP echo (ping) from the sandbox to the world: one flow per (sandbox address,
//! destination, sandbox identifier), judged by its first request (as `icmpv4`/`icmpv6`,
//! no port) and relayed through a ping socket, or a raw one with `CAP_NET_RAW` (see
//! `icmp.rs`). Replies come back with the sandbox's identifier; a raw socket sees every
//! reply, so those with another identifier are someone else's. Echoes to the gateway are
//! answered by `ingress.rs` and never reach here. At most 64 flows; idle ones expire
//! after ten seconds.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Interest, Registry};
use moat_policy::Protocol;

use super::cx::Cx;
use super::dial;
use super::key::{Due, EchoKey, FlowId, FlowKey};
use super::table::{Flow, FlowTable};
use moat_inspect::evidence::Named;
use moat_wire::icmp::{self, EchoKind};

/// An echo flow without requests for this long is closed.
const ECHO_IDLE: Duration = Duration::from_secs(10);

/// One echo flow.
pub(super) struct EchoFlow {
    guest: IpAddr,
    dst: IpAddr,
    guest_ident: u16,
    /// The identifier on the wire (a raw socket's own; a ping socket's is the kernel's).
    our_ident: u16,
    kind: EchoKind,
    sock: UdpSocket,
    last: Instant,
}

/// One echo request from the sandbox.
#[derive(Debug, Clone, Copy)]
pub(super) struct Request<'a> {
    pub(super) frame: &'a [u8],
    pub(super) guest: IpAddr,
    pub(super) dst: IpAddr,
    pub(super) ident: u16,
    pub(super) seq: u16,
    pub(super) data: &'a [u8],
}

/// Relays an echo request from the sandbox, if the policy allows it.
pub(super) fn on_request(table: &mut FlowTable, cx: &mut Cx, req: Request<'_>) {
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

/// The audit log's protocol name for echo to `dst`, as policies name it.
fn icmp_name(dst: IpAddr) -> &'static str {
    if dst.is_ipv4() { "icmpv4" } else { "icmpv6" }
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

impl EchoFlow {
    pub(super) fn key(&self) -> EchoKey {
        (self.guest, self.dst, self.guest_ident)
    }

    /// What the sweep should do.
    pub(super) fn due(&self, now: Instant) -> Due {
        if now.duration_since(self.last) >= ECHO_IDLE {
            Due::Expire
        } else {
            Due::Nothing
        }
    }

    /// Releases the socket (called by the flow table; echo flows are not audited when
    /// they end).
    pub(super) fn close(mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.sock);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

    use std::net::Ipv4Addr;

    use moat_policy::NetworkPolicy;
    use smoltcp::wire::Icmpv4Message;

    use super::*;
    use crate::engine::config::DenyMode;
    use crate::engine::testing::{Harness, echo_request, icmp_to_guest};

    const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
    const WORLD: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

    #[test]
    fn the_gateway_answers_and_a_denied_echo_is_refused_unsent() {
        let mut h = Harness::new(NetworkPolicy::none(), DenyMode::Reject);
        // The gateway's own echo is answered, whatever the policy.
        h.frame(&echo_request(GATEWAY));
        let replies: Vec<_> = h.sent().iter().filter_map(|f| icmp_to_guest(f)).collect();
        assert!(
            replies.contains(&(GATEWAY, Icmpv4Message::EchoReply)),
            "{replies:?}"
        );
        // Elsewhere it is judged: denied, nothing is opened or relayed, and in reject
        // mode the sandbox hears so from the gateway.
        h.frame(&echo_request(WORLD));
        assert!(
            h.table
                .find_echo(&(h.cx.stack.addrs.guest_v4.into(), WORLD.into(), 7))
                .is_none()
        );
        assert_eq!(h.cx.counters.icmp_relayed, 0);
        let refusals: Vec<_> = h.sent().iter().filter_map(|f| icmp_to_guest(f)).collect();
        assert!(
            refusals.contains(&(GATEWAY, Icmpv4Message::DstUnreachable)),
            "{refusals:?}"
        );
        let audit = h.audit();
        assert!(
            audit.contains("\"proto\":\"icmpv4\"") && audit.contains("\"decision\":\"deny\""),
            "{audit}"
        );
    }

    #[test]
    fn an_echo_flow_expires_when_idle() {
        let mut h = Harness::new(NetworkPolicy::allow_all(), DenyMode::Drop);
        let sock = UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let flow = EchoFlow {
            guest: h.cx.stack.addrs.guest_v4.into(),
            dst: Ipv4Addr::LOCALHOST.into(),
            guest_ident: 7,
            our_ident: 9,
            kind: EchoKind::Ping,
            sock,
            last: Instant::now(),
        };
        assert!(matches!(flow.due(Instant::now()), Due::Nothing));
        assert!(matches!(flow.due(Instant::now() + ECHO_IDLE), Due::Expire));
        let key = flow.key();
        let id = h.table.reserve();
        h.table.insert(id, Flow::Echo(flow));
        assert_eq!(h.table.find_echo(&key), Some(id));
        h.table
            .remove(id, crate::engine::close::CloseReason::Idle, &mut h.cx);
        assert_eq!(h.table.find_echo(&key), None);
    }
}
