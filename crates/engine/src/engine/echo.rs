//! ICMP echo (ping) from the sandbox to the world: one flow per (sandbox address,
//! destination, sandbox identifier), judged by its first request (as `icmpv4`/`icmpv6`,
//! no port) and relayed through a ping socket, or a raw one with `CAP_NET_RAW` (see
//! `icmp.rs`). Replies come back with the sandbox's identifier; a raw socket sees every
//! reply, so those with another identifier are someone else's. Echoes to the gateway are
//! answered by `ingress.rs` and never reach here. At most 64 flows; idle ones expire
//! after ten seconds. What the loop does with a request or a reply, the flow table's part,
//! is `on_echo.rs`.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use mio::Registry;
use mio::net::UdpSocket;
use moat_wire::icmp::EchoKind;

use super::key::{Due, EchoKey};

/// An echo flow without requests for this long is closed.
const ECHO_IDLE: Duration = Duration::from_secs(10);

/// One echo flow.
pub(super) struct EchoFlow {
    pub(super) guest: IpAddr,
    pub(super) dst: IpAddr,
    pub(super) guest_ident: u16,
    /// The identifier on the wire (a raw socket's own; a ping socket's is the kernel's).
    pub(super) our_ident: u16,
    pub(super) kind: EchoKind,
    pub(super) sock: UdpSocket,
    pub(super) last: Instant,
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

/// The audit log's protocol name for echo to `dst`, as policies name it.
pub(super) fn icmp_name(dst: IpAddr) -> &'static str {
    if dst.is_ipv4() { "icmpv4" } else { "icmpv6" }
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
    use crate::engine::table::Flow;
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
