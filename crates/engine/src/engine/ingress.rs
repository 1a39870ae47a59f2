//! A frame from the sandbox: classified ([`moat_wire::classify`]) before smoltcp sees
//! it, and routed to the flow kind that owns it.
//!
//! - **ARP and neighbour discovery** go to smoltcp, which answers for every address
//!   (`any_ip`), except questions about the sandbox's own address; neighbour
//!   solicitations are answered here too (smoltcp learns the sandbox's MAC from them).
//! - **TCP** goes to `tcp_flow.rs` (port 53 on to `dns_flow.rs`).
//! - **UDP**: an answer to a published port's peer goes to `inbound.rs`, port 53 to the
//!   DNS interceptor, the rest to `on_udp.rs`.
//! - **ICMP echo** to the gateway is answered here; to anywhere else it goes to `echo.rs`.
//! - **Router solicitations** get a router advertisement for the link's prefix.
//!
//! Transport traffic whose source is not the sandbox's address is dropped and counted
//! (`dropped_spoofed`), as are frames of unsupported protocols (`dropped_unsupported`).

use std::net::{IpAddr, SocketAddr};

use moat_wire::{self as wire, Frame, L4};

use super::cx::Cx;
use super::dns_flow::ReplyTo;
use super::echo::Request;
use super::inbound::Listeners;
use super::key::FlowKey;
use super::key::Segment;
use super::on_dns;
use super::on_echo;
use super::on_inbound;
use super::on_tcp;
use super::on_udp;
use super::table::FlowTable;

/// Routes one frame from the sandbox.
pub(super) fn on_frame(listeners: &Listeners, table: &mut FlowTable, cx: &mut Cx, frame: &[u8]) {
    cx.stack.learn_guest_mac(frame);
    let (src, dst, l4) = match wire::classify(frame) {
        Frame::Arp { request, target } => {
            if !(request && target == cx.stack.addrs.guest_v4) {
                cx.stack.feed(frame);
            }
            return;
        }
        Frame::Ip { src, dst, l4 } => (src, dst, l4),
        Frame::Other => {
            cx.counters.dropped_unsupported += 1;
            return;
        }
    };
    // Transport traffic must come from the sandbox's own address (neighbour discovery may
    // come from the unspecified or link-local one).
    let transport = matches!(l4, L4::Tcp { .. } | L4::Udp { .. } | L4::EchoRequest { .. });
    if transport && !cx.stack.is_guest(src) {
        cx.counters.dropped_spoofed += 1;
        return;
    }
    match l4 {
        L4::Tcp {
            src_port,
            dst_port,
            syn,
            ack,
            rst,
            seq,
            seg_len,
        } => {
            let seg = Segment {
                frame,
                key: FlowKey {
                    guest: SocketAddr::new(src, src_port),
                    host: SocketAddr::new(dst, dst_port),
                },
                opens: syn && !ack && !rst,
                rst,
                seq,
                len: seg_len,
            };
            on_tcp::segment(table, cx, seg);
        }
        L4::Udp {
            src_port,
            dst_port,
            offset,
            len,
        } => {
            let Some(payload) = frame.get(offset..offset + len) else {
                cx.counters.dropped_unsupported += 1;
                return;
            };
            let key = FlowKey {
                guest: SocketAddr::new(src, src_port),
                host: SocketAddr::new(dst, dst_port),
            };
            if on_inbound::reply(listeners, table, key, payload) {
                return;
            }
            if dst_port == 53 {
                // Every DNS datagram is answered here, whatever address it was sent to.
                let reply = ReplyTo::Udp {
                    guest: key.guest,
                    asked: key.host,
                };
                on_dns::query(table, cx, payload, reply);
                return;
            }
            on_udp::datagram(table, cx, frame, key, payload);
        }
        L4::EchoRequest {
            ident,
            seq,
            offset,
            len,
        } => {
            let Some(data) = frame.get(offset..offset + len) else {
                return;
            };
            if dst == cx.stack.gateway_for(dst) {
                // The gateway answers its own echoes.
                cx.stack.echo_reply(dst, src, ident, seq, data);
            } else {
                let req = Request {
                    frame,
                    guest: src,
                    dst,
                    ident,
                    seq,
                    data,
                };
                on_echo::request(table, cx, req);
            }
        }
        L4::NeighborSolicit { target } => {
            // Every address but the sandbox's own is at the gateway. Duplicate address
            // detection (from ::) gets no answer.
            if let IpAddr::V6(from) = src
                && target != cx.stack.addrs.guest_v6
                && !from.is_unspecified()
            {
                cx.stack.neighbor_advert(target, from);
                // smoltcp learns the sandbox's MAC from the solicitation.
                cx.stack.feed(frame);
            }
        }
        L4::IcmpOther => {
            if src.is_ipv6() {
                cx.stack.feed(frame);
            } else {
                cx.counters.dropped_unsupported += 1;
            }
        }
        L4::RouterSolicit => cx.stack.router_advert(src),
        L4::Unsupported => cx.counters.dropped_unsupported += 1,
    }
}
