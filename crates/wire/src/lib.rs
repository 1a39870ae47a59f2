//! moat's wire: the frames between the sandbox and the engine, below any flow.
//!
//! This crate owns the Ethernet/IP/TCP/UDP/ICMP parsing the engine does before the stack
//! sees a frame and the few frames it writes itself (this file), the frame device that
//! carries them (`device.rs`: the TAP, an in-memory pair), the TAP's offloads
//! (`offload.rs`) and the ICMP echo relay's host sockets (`icmp.rs`). It uses only smoltcp's
//! wire types, nix and mio; it knows nothing of flows, policy or the event loop.
//!
//! # Frames
//! Reading the sandbox's frames before the stack does, and writing the few frames the engine
//! sends itself (UDP replies, resets, ICMP errors). Every parser here takes hostile bytes:
//! it checks lengths first and returns `None` for anything malformed.
//!
//! RFCs: 791 (IPv4), 8200 (IPv6), 9293 (TCP), 768 (UDP), 792 and 4443 (ICMP), 4861 (NDP).

#![forbid(unsafe_code)]

pub mod device;
pub mod icmp;
pub mod offload;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, Icmpv4DstUnreachable, Icmpv4Packet, Icmpv4Repr, Icmpv6DstUnreachable,
    Icmpv6Packet, Icmpv6Repr, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr,
    TcpControl, TcpPacket, TcpRepr, TcpSeqNumber, UdpPacket, UdpRepr,
};

/// What a frame from the sandbox is, as far as the engine's decisions go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// ARP; `target` is the address asked about.
    Arp {
        /// The ARP operation is a request.
        request: bool,
        /// The protocol address asked about.
        target: Ipv4Addr,
    },
    /// An IP packet with a transport the engine knows.
    Ip {
        /// Source address.
        src: IpAddr,
        /// Destination address.
        dst: IpAddr,
        /// The transport part.
        l4: L4,
    },
    /// Anything else: dropped.
    Other,
}

/// The transport part of an IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    /// TCP.
    Tcp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
        /// SYN set.
        syn: bool,
        /// ACK set.
        ack: bool,
        /// RST set.
        rst: bool,
        /// Sequence number.
        seq: u32,
        /// Segment length in sequence space (payload, SYN, FIN).
        seg_len: u32,
    },
    /// UDP; the payload is `frame[offset..offset + len]`.
    Udp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
        /// Payload offset in the frame.
        offset: usize,
        /// Payload length.
        len: usize,
    },
    /// ICMP echo request; the data is `frame[offset..offset + len]`.
    EchoRequest {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq: u16,
        /// Data offset in the frame.
        offset: usize,
        /// Data length.
        len: usize,
    },
    /// IPv6 neighbour solicitation for `target`.
    NeighborSolicit {
        /// The address asked about.
        target: Ipv6Addr,
    },
    /// IPv6 router solicitation.
    RouterSolicit,
    /// Other ICMP (replies, errors, NDP adverts): handled by the stack or dropped.
    IcmpOther,
    /// An IPv4 fragment or an unknown transport: dropped.
    Unsupported,
}

/// Classifies one Ethernet frame from the sandbox.
pub fn classify(frame: &[u8]) -> Frame {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return Frame::Other;
    };
    let base = EthernetFrame::<&[u8]>::header_len();
    match eth.ethertype() {
        EthernetProtocol::Arp => {
            match ArpPacket::new_checked(eth.payload()).and_then(|p| ArpRepr::parse(&p)) {
                Ok(ArpRepr::EthernetIpv4 {
                    operation,
                    target_protocol_addr,
                    ..
                }) => Frame::Arp {
                    request: operation == ArpOperation::Request,
                    target: target_protocol_addr,
                },
                _ => Frame::Other,
            }
        }
        EthernetProtocol::Ipv4 => {
            let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
                return Frame::Other;
            };
            let (src, dst) = (IpAddr::V4(ip.src_addr()), IpAddr::V4(ip.dst_addr()));
            if ip.more_frags() || ip.frag_offset() != 0 {
                return Frame::Ip {
                    src,
                    dst,
                    l4: L4::Unsupported,
                };
            }
            let off = base + usize::from(ip.header_len());
            let total = usize::from(ip.total_len()) - usize::from(ip.header_len());
            let l4 = transport(ip.next_header(), &frame[off..off + total], off, false);
            Frame::Ip { src, dst, l4 }
        }
        EthernetProtocol::Ipv6 => {
            let Ok(ip) = Ipv6Packet::new_checked(eth.payload()) else {
                return Frame::Other;
            };
            let (src, dst) = (IpAddr::V6(ip.src_addr()), IpAddr::V6(ip.dst_addr()));
            let off = base + ip.header_len();
            let len = usize::from(ip.payload_len());
            // Extension headers are not followed: such packets are unsupported (dropped).
            let l4 = transport(ip.next_header(), &frame[off..off + len], off, true);
            Frame::Ip { src, dst, l4 }
        }
        _ => Frame::Other,
    }
}

fn transport(proto: IpProtocol, p: &[u8], off: usize, v6: bool) -> L4 {
    match proto {
        IpProtocol::Tcp => match TcpPacket::new_checked(p) {
            Ok(t) => {
                let payload = p.len() - usize::from(t.header_len());
                L4::Tcp {
                    src_port: t.src_port(),
                    dst_port: t.dst_port(),
                    syn: t.syn(),
                    ack: t.ack(),
                    rst: t.rst(),
                    seq: t.seq_number().0 as u32,
                    seg_len: payload as u32 + u32::from(t.syn()) + u32::from(t.fin()),
                }
            }
            Err(_) => L4::Unsupported,
        },
        IpProtocol::Udp => match UdpPacket::new_checked(p) {
            Ok(u) => L4::Udp {
                src_port: u.src_port(),
                dst_port: u.dst_port(),
                offset: off + 8,
                len: usize::from(u.len()).saturating_sub(8),
            },
            Err(_) => L4::Unsupported,
        },
        IpProtocol::Icmp if !v6 => match Icmpv4Packet::new_checked(p) {
            Ok(i) if i.msg_type() == smoltcp::wire::Icmpv4Message::EchoRequest && p.len() >= 8 => {
                L4::EchoRequest {
                    ident: i.echo_ident(),
                    seq: i.echo_seq_no(),
                    offset: off + 8,
                    len: p.len() - 8,
                }
            }
            Ok(_) => L4::IcmpOther,
            Err(_) => L4::Unsupported,
        },
        IpProtocol::Icmpv6 if v6 => match Icmpv6Packet::new_checked(p) {
            Ok(i) => match i.msg_type() {
                smoltcp::wire::Icmpv6Message::EchoRequest if p.len() >= 8 => L4::EchoRequest {
                    ident: i.echo_ident(),
                    seq: i.echo_seq_no(),
                    offset: off + 8,
                    len: p.len() - 8,
                },
                smoltcp::wire::Icmpv6Message::NeighborSolicit if p.len() >= 24 => {
                    let mut t = [0u8; 16];
                    t.copy_from_slice(&p[8..24]);
                    L4::NeighborSolicit {
                        target: Ipv6Addr::from(t),
                    }
                }
                smoltcp::wire::Icmpv6Message::RouterSolicit => L4::RouterSolicit,
                _ => L4::IcmpOther,
            },
            Err(_) => L4::Unsupported,
        },
        _ => L4::Unsupported,
    }
}

/// Addresses of the two ends of the link.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    /// The gateway's (moat's) MAC.
    pub gateway_mac: EthernetAddress,
    /// The sandbox's MAC, as last seen.
    pub guest_mac: EthernetAddress,
}

fn checksums() -> ChecksumCapabilities {
    ChecksumCapabilities::default()
}

/// Writes Ethernet + IP headers for a packet from `src` to `dst` with an L4 part of
/// `l4_len` bytes into `out`; returns the offset of the L4 part.
fn ip_headers(
    out: &mut Vec<u8>,
    link: &Link,
    src: IpAddr,
    dst: IpAddr,
    proto: IpProtocol,
    l4_len: usize,
) -> Option<usize> {
    let at = l4_offset(src, dst)?;
    out.clear();
    out.resize(at + l4_len, 0);
    emit_ip_headers(out, link, src, dst, proto)
}

/// Where the L4 part starts in a frame from `src` to `dst` (Ethernet + IP header bytes);
/// `None` when the families differ.
fn l4_offset(src: IpAddr, dst: IpAddr) -> Option<usize> {
    let eth_len = EthernetFrame::<&[u8]>::header_len();
    match (src, dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => Some(eth_len + 20),
        (IpAddr::V6(_), IpAddr::V6(_)) => Some(eth_len + 40),
        _ => None,
    }
}

/// Writes Ethernet + IP headers at the start of `frame` for a packet from `src` to `dst` that
/// fills the rest of it; returns the offset of the L4 part.
fn emit_ip_headers(
    frame: &mut [u8],
    link: &Link,
    src: IpAddr,
    dst: IpAddr,
    proto: IpProtocol,
) -> Option<usize> {
    let at = l4_offset(src, dst)?;
    let eth_len = EthernetFrame::<&[u8]>::header_len();
    let l4_len = frame.len().checked_sub(at)?;
    let mut eth = EthernetFrame::new_unchecked(&mut *frame);
    let ethertype = if src.is_ipv4() {
        EthernetProtocol::Ipv4
    } else {
        EthernetProtocol::Ipv6
    };
    EthernetRepr {
        src_addr: link.gateway_mac,
        dst_addr: link.guest_mac,
        ethertype,
    }
    .emit(&mut eth);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let ip = Ipv4Repr {
                src_addr: s,
                dst_addr: d,
                next_header: proto,
                payload_len: l4_len,
                hop_limit: 64,
            };
            let mut pkt = Ipv4Packet::new_unchecked(&mut frame[eth_len..]);
            ip.emit(&mut pkt, &checksums());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let ip = Ipv6Repr {
                src_addr: s,
                dst_addr: d,
                next_header: proto,
                payload_len: l4_len,
                hop_limit: 64,
            };
            let mut pkt = Ipv6Packet::new_unchecked(&mut frame[eth_len..]);
            ip.emit(&mut pkt);
        }
        _ => return None,
    }
    Some(at)
}

/// Where the datagrams' payload starts in a UDP frame from `src` to `dst`.
pub fn udp_payload_offset(src: SocketAddr, dst: SocketAddr) -> Option<usize> {
    Some(l4_offset(src.ip(), dst.ip())? + 8)
}

/// Fills in the headers of a UDP frame from `src` (the remote end) to `dst` (the sandbox)
/// whose payload, from [`udp_payload_offset`] to the end, is already in place: Ethernet, IP,
/// and a UDP header with the checksum field zero (the frame's checksum is left to the
/// sandbox's kernel, see `offload::prepare_udp_segments`). `false` when the families differ
/// or the payload does not fit one IP packet.
pub fn udp_headers(frame: &mut [u8], link: &Link, src: SocketAddr, dst: SocketAddr) -> bool {
    let Some(at) = l4_offset(src.ip(), dst.ip()) else {
        return false;
    };
    let udp_len = frame.len().saturating_sub(at);
    let ip_len = if src.is_ipv4() { 20 + udp_len } else { udp_len };
    if udp_len < 8 || ip_len > usize::from(u16::MAX) {
        return false;
    }
    if emit_ip_headers(frame, link, src.ip(), dst.ip(), IpProtocol::Udp).is_none() {
        return false;
    }
    frame[at..at + 2].copy_from_slice(&src.port().to_be_bytes());
    frame[at + 2..at + 4].copy_from_slice(&dst.port().to_be_bytes());
    frame[at + 4..at + 6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    frame[at + 6..at + 8].copy_from_slice(&[0, 0]);
    true
}

/// A UDP datagram from `src` (the remote end) to `dst` (the sandbox) carrying `payload`.
pub fn udp_to_guest(
    out: &mut Vec<u8>,
    link: &Link,
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
) -> bool {
    let Some(off) = ip_headers(
        out,
        link,
        src.ip(),
        dst.ip(),
        IpProtocol::Udp,
        8 + payload.len(),
    ) else {
        return false;
    };
    let mut pkt = UdpPacket::new_unchecked(&mut out[off..]);
    UdpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
    }
    .emit(
        &mut pkt,
        &IpAddress::from(src.ip()),
        &IpAddress::from(dst.ip()),
        payload.len(),
        |b| b.copy_from_slice(payload),
        &checksums(),
    );
    true
}

/// A reset answering a segment from the sandbox (`guest` → `remote`) with sequence number
/// `seq` and sequence length `seg_len` (RFC 9293 §3.10.7.1: RST with ACK of SEG.SEQ+SEG.LEN).
pub fn tcp_reset(
    out: &mut Vec<u8>,
    link: &Link,
    remote: SocketAddr,
    guest: SocketAddr,
    seq: u32,
    seg_len: u32,
) -> bool {
    let tcp = TcpRepr {
        src_port: remote.port(),
        dst_port: guest.port(),
        control: TcpControl::Rst,
        seq_number: TcpSeqNumber(0),
        ack_number: Some(TcpSeqNumber(seq.wrapping_add(seg_len) as i32)),
        window_len: 0,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let Some(off) = ip_headers(
        out,
        link,
        remote.ip(),
        guest.ip(),
        IpProtocol::Tcp,
        tcp.buffer_len(),
    ) else {
        return false;
    };
    let mut pkt = TcpPacket::new_unchecked(&mut out[off..]);
    tcp.emit(
        &mut pkt,
        &IpAddress::from(remote.ip()),
        &IpAddress::from(guest.ip()),
        &checksums(),
    );
    true
}

/// ICMP "administratively prohibited" (RFC 1812 §5.2.7.1 type 3 code 13; RFC 4443 type 1
/// code 1) for the IP packet `original` (starting at its IP header) sent by the sandbox.
/// Which ICMP destination-unreachable answer a refused packet gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// Administratively prohibited (a deny in reject mode, a refused DNS bypass).
    Prohibited,
    /// Port unreachable (QUIC to an intercepted port: clients fall back to TCP at once).
    Port,
}

/// An ICMP destination-unreachable answer from `gateway` to the sandbox's IP packet
/// `original`, saying `why`.
pub fn unreachable(
    out: &mut Vec<u8>,
    link: &Link,
    gateway: IpAddr,
    original: &[u8],
    why: Unreachable,
) -> bool {
    match gateway {
        IpAddr::V4(gw) => {
            let Ok(orig) = Ipv4Packet::new_checked(original) else {
                return false;
            };
            let Ok(header) = Ipv4Repr::parse(&orig, &checksums()) else {
                return false;
            };
            let hl = usize::from(orig.header_len());
            let data = &original[hl..original.len().min(hl + 8)];
            let icmp = Icmpv4Repr::DstUnreachable {
                reason: match why {
                    Unreachable::Prohibited => Icmpv4DstUnreachable::CommProhibited,
                    Unreachable::Port => Icmpv4DstUnreachable::PortUnreachable,
                },
                header,
                data,
            };
            let guest = IpAddr::V4(orig.src_addr());
            let Some(off) = ip_headers(
                out,
                link,
                IpAddr::V4(gw),
                guest,
                IpProtocol::Icmp,
                icmp.buffer_len(),
            ) else {
                return false;
            };
            let mut pkt = Icmpv4Packet::new_unchecked(&mut out[off..]);
            icmp.emit(&mut pkt, &checksums());
            true
        }
        IpAddr::V6(gw) => {
            let Ok(orig) = Ipv6Packet::new_checked(original) else {
                return false;
            };
            let Ok(header) = Ipv6Repr::parse(&orig) else {
                return false;
            };
            // RFC 4443 §2.4(c): as much of the invoking packet as fits in the minimum MTU.
            let data = &original[40..original.len().min(1232 - 48 + 40)];
            let icmp = Icmpv6Repr::DstUnreachable {
                reason: match why {
                    Unreachable::Prohibited => Icmpv6DstUnreachable::AdminProhibit,
                    Unreachable::Port => Icmpv6DstUnreachable::PortUnreachable,
                },
                header,
                data,
            };
            let guest = orig.src_addr();
            let Some(off) = ip_headers(
                out,
                link,
                IpAddr::V6(gw),
                IpAddr::V6(guest),
                IpProtocol::Icmpv6,
                icmp.buffer_len(),
            ) else {
                return false;
            };
            let mut pkt = Icmpv6Packet::new_unchecked(&mut out[off..]);
            icmp.emit(&gw, &guest, &mut pkt, &checksums());
            true
        }
    }
}

/// An ICMP echo reply from `src` (the pinged host) to `dst` (the sandbox).
pub fn echo_reply(
    out: &mut Vec<u8>,
    link: &Link,
    src: IpAddr,
    dst: IpAddr,
    ident: u16,
    seq: u16,
    data: &[u8],
) -> bool {
    match (src, dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => {
            let icmp = Icmpv4Repr::EchoReply {
                ident,
                seq_no: seq,
                data,
            };
            let Some(off) = ip_headers(out, link, src, dst, IpProtocol::Icmp, icmp.buffer_len())
            else {
                return false;
            };
            icmp.emit(
                &mut Icmpv4Packet::new_unchecked(&mut out[off..]),
                &checksums(),
            );
            true
        }
        (IpAddr::V6(s6), IpAddr::V6(d6)) => {
            let icmp = Icmpv6Repr::EchoReply {
                ident,
                seq_no: seq,
                data,
            };
            let Some(off) = ip_headers(out, link, src, dst, IpProtocol::Icmpv6, icmp.buffer_len())
            else {
                return false;
            };
            icmp.emit(
                &s6,
                &d6,
                &mut Icmpv6Packet::new_unchecked(&mut out[off..]),
                &checksums(),
            );
            true
        }
        _ => false,
    }
}

/// A router advertisement (RFC 4861 §4.2) from the gateway's link-local address `router`
/// to `dst`, announcing itself as default router, the link MTU and the on-link prefix for
/// address autoconfiguration.
pub fn router_advert(
    out: &mut Vec<u8>,
    link: &Link,
    router: Ipv6Addr,
    dst: Ipv6Addr,
    prefix: Ipv6Addr,
    prefix_len: u8,
    mtu: u32,
) -> bool {
    use smoltcp::time::Duration;
    use smoltcp::wire::{
        NdiscPrefixInfoFlags, NdiscPrefixInformation, NdiscRepr, NdiscRouterFlags,
        RawHardwareAddress,
    };
    let ra = Icmpv6Repr::Ndisc(NdiscRepr::RouterAdvert {
        hop_limit: 64,
        flags: NdiscRouterFlags::empty(),
        router_lifetime: Duration::from_secs(1800),
        reachable_time: Duration::from_millis(0),
        retrans_time: Duration::from_millis(0),
        lladdr: Some(RawHardwareAddress::from(link.gateway_mac)),
        mtu: Some(mtu),
        prefix_info: Some(NdiscPrefixInformation {
            prefix_len,
            flags: NdiscPrefixInfoFlags::ON_LINK | NdiscPrefixInfoFlags::ADDRCONF,
            valid_lifetime: Duration::from_secs(86_400),
            preferred_lifetime: Duration::from_secs(14_400),
            prefix,
        }),
    });
    // RFC 4861 §6.1.2: hop limit 255 proves the advertisement came from the link.
    let Some(off) = ip_headers(
        out,
        link,
        IpAddr::V6(router),
        IpAddr::V6(dst),
        IpProtocol::Icmpv6,
        ra.buffer_len(),
    ) else {
        return false;
    };
    let eth = EthernetFrame::<&[u8]>::header_len();
    Ipv6Packet::new_unchecked(&mut out[eth..]).set_hop_limit(255);
    ra.emit(
        &router,
        &dst,
        &mut Icmpv6Packet::new_unchecked(&mut out[off..]),
        &checksums(),
    );
    true
}

/// A neighbour advertisement (RFC 4861 §7.2.4) saying that `target` is at the gateway's
/// MAC, sent to `dst` (the soliciting node).
pub fn neighbor_advert(out: &mut Vec<u8>, link: &Link, target: Ipv6Addr, dst: Ipv6Addr) -> bool {
    use smoltcp::wire::{NdiscNeighborFlags, NdiscRepr, RawHardwareAddress};
    let na = Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
        flags: NdiscNeighborFlags::ROUTER
            | NdiscNeighborFlags::SOLICITED
            | NdiscNeighborFlags::OVERRIDE,
        target_addr: target,
        lladdr: Some(RawHardwareAddress::from(link.gateway_mac)),
    });
    let Some(off) = ip_headers(
        out,
        link,
        IpAddr::V6(target),
        IpAddr::V6(dst),
        IpProtocol::Icmpv6,
        na.buffer_len(),
    ) else {
        return false;
    };
    // RFC 4861 §7.1.2: neighbour discovery messages carry hop limit 255.
    let eth = EthernetFrame::<&[u8]>::header_len();
    Ipv6Packet::new_unchecked(&mut out[eth..]).set_hop_limit(255);
    na.emit(
        &target,
        &dst,
        &mut Icmpv6Packet::new_unchecked(&mut out[off..]),
        &checksums(),
    );
    true
}

/// The IP packet inside an Ethernet frame.
pub fn ip_payload(frame: &[u8]) -> &[u8] {
    frame
        .get(EthernetFrame::<&[u8]>::header_len()..)
        .unwrap_or(&[])
}

/// The frame's source MAC, if it is a unicast address.
pub fn source_mac(frame: &[u8]) -> Option<EthernetAddress> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let mac = eth.src_addr();
    mac.is_unicast().then_some(mac)
}

/// Entry points for the fuzz targets in `fuzz/` (not a stable API): every parser of
/// untrusted bytes this crate owns.
#[doc(hidden)]
pub mod fuzzing {
    /// Classifies a frame as the engine does before the stack sees it, and prepares it
    /// for an offloading device (as a TCP segment, and as a run of UDP datagrams).
    pub fn frame(data: &[u8]) {
        let _ = crate::classify(data);
        let mut copy = data.to_vec();
        let _ = crate::offload::prepare_tcp(&mut copy, Some(1460));
        let mut copy = data.to_vec();
        let _ = crate::offload::prepare_udp_segments(&mut copy, 1000);
    }

    /// An echo reply as read from a ping or raw socket.
    pub fn echo_reply(data: &[u8]) {
        for v6 in [false, true] {
            for kind in [crate::icmp::EchoKind::Ping, crate::icmp::EchoKind::Raw] {
                let _ = crate::icmp::reply(data, v6, kind);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link() -> Link {
        Link {
            gateway_mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
            guest_mac: EthernetAddress([2, 0, 0, 0, 0, 2]),
        }
    }

    #[test]
    fn udp_round_trips_through_the_classifier() {
        let mut out = Vec::new();
        let src: SocketAddr = "203.0.113.10:53".parse().unwrap();
        let dst: SocketAddr = "10.0.2.100:40000".parse().unwrap();
        assert!(udp_to_guest(&mut out, &link(), src, dst, b"hello"));
        match classify(&out) {
            Frame::Ip {
                src: s,
                dst: d,
                l4:
                    L4::Udp {
                        src_port,
                        dst_port,
                        offset,
                        len,
                    },
            } => {
                assert_eq!((s, d, src_port, dst_port), (src.ip(), dst.ip(), 53, 40000));
                assert_eq!(&out[offset..offset + len], b"hello");
            }
            other => panic!("{other:?}"),
        }
        let src: SocketAddr = "[2001:db8::10]:53".parse().unwrap();
        let dst: SocketAddr = "[fd00::100]:40000".parse().unwrap();
        assert!(udp_to_guest(&mut out, &link(), src, dst, b"v6"));
        assert!(matches!(
            classify(&out),
            Frame::Ip {
                l4: L4::Udp { len: 2, .. },
                ..
            }
        ));
        assert!(!udp_to_guest(
            &mut out,
            &link(),
            "1.2.3.4:1".parse().unwrap(),
            dst,
            b""
        ));
    }

    #[test]
    fn resets_acknowledge_the_syn() {
        let mut out = Vec::new();
        let remote: SocketAddr = "203.0.113.10:80".parse().unwrap();
        let guest: SocketAddr = "10.0.2.100:40000".parse().unwrap();
        assert!(tcp_reset(&mut out, &link(), remote, guest, 1000, 1));
        match classify(&out) {
            Frame::Ip {
                l4:
                    L4::Tcp {
                        rst,
                        ack,
                        src_port: 80,
                        dst_port: 40000,
                        ..
                    },
                ..
            } => assert!(rst && ack),
            other => panic!("{other:?}"),
        }
        let ip = Ipv4Packet::new_checked(ip_payload(&out)).unwrap();
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!(tcp.ack_number().0, 1001);
        assert!(tcp.verify_checksum(&IpAddress::from(remote.ip()), &IpAddress::from(guest.ip())));
    }

    #[test]
    fn echo_replies_and_router_adverts_parse_back() {
        let mut out = Vec::new();
        let (src, dst): (IpAddr, IpAddr) = (
            "203.0.113.10".parse().unwrap(),
            "10.0.2.100".parse().unwrap(),
        );
        assert!(echo_reply(&mut out, &link(), src, dst, 7, 9, b"data"));
        let ip = Ipv4Packet::new_checked(ip_payload(&out)).unwrap();
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!(
            Icmpv4Repr::parse(&icmp, &checksums()).unwrap(),
            Icmpv4Repr::EchoReply {
                ident: 7,
                seq_no: 9,
                data: b"data"
            }
        );

        let router: Ipv6Addr = "fe80::1".parse().unwrap();
        let all: Ipv6Addr = "ff02::1".parse().unwrap();
        assert!(router_advert(
            &mut out,
            &link(),
            router,
            all,
            "fd00:6d6f:6174::".parse().unwrap(),
            64,
            65520
        ));
        let ip = Ipv6Packet::new_checked(ip_payload(&out)).unwrap();
        assert_eq!(ip.hop_limit(), 255);
        let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
        match Icmpv6Repr::parse(&router, &all, &icmp, &checksums()).unwrap() {
            Icmpv6Repr::Ndisc(smoltcp::wire::NdiscRepr::RouterAdvert {
                mtu, prefix_info, ..
            }) => {
                assert_eq!(mtu, Some(65520));
                assert_eq!(prefix_info.unwrap().prefix_len, 64);
            }
            other => panic!("{other:?}"),
        }
    }

    /// Valid frames with random bytes changed, and random bytes: never a panic.
    #[test]
    fn mutated_frames_never_panic() {
        let mut seeds = Vec::new();
        let mut out = Vec::new();
        udp_to_guest(
            &mut out,
            &link(),
            "203.0.113.1:53".parse().unwrap(),
            "10.0.2.100:9".parse().unwrap(),
            b"payload",
        );
        seeds.push(out.clone());
        udp_to_guest(
            &mut out,
            &link(),
            "[2001:db8::1]:53".parse().unwrap(),
            "[fd00::1]:9".parse().unwrap(),
            b"payload",
        );
        seeds.push(out.clone());
        tcp_reset(
            &mut out,
            &link(),
            "203.0.113.1:80".parse().unwrap(),
            "10.0.2.100:9".parse().unwrap(),
            1,
            1,
        );
        seeds.push(out.clone());
        echo_reply(
            &mut out,
            &link(),
            "2001:db8::1".parse().unwrap(),
            "fd00::1".parse().unwrap(),
            1,
            2,
            b"x",
        );
        seeds.push(out.clone());
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for _ in 0..20_000 {
            let mut frame = seeds[(next() % seeds.len() as u64) as usize].clone();
            for _ in 0..(next() % 4 + 1) {
                let i = (next() % frame.len() as u64) as usize;
                frame[i] = next() as u8;
            }
            let cut = (next() % (frame.len() as u64 + 1)) as usize;
            frame.truncate(cut);
            crate::fuzzing::frame(&frame);
            crate::fuzzing::echo_reply(&frame);
        }
    }

    #[test]
    fn hostile_bytes_are_other_or_unsupported() {
        for len in 0..80 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let _ = classify(&junk);
        }
        // An IPv4 header claiming more bytes than the frame has.
        let mut out = Vec::new();
        assert!(udp_to_guest(
            &mut out,
            &link(),
            "203.0.113.1:1".parse().unwrap(),
            "10.0.2.100:2".parse().unwrap(),
            b"abc"
        ));
        out.truncate(out.len() - 2);
        assert_eq!(classify(&out), Frame::Other);
    }
}
