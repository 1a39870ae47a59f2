//! The engine behind an in-memory frame device: neighbour discovery, the gateway's echo,
//! DNS without upstreams, and denied connections, with no namespace or TAP.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use moat_engine::{AuditLog, DenyMode, EngineConfig, LinkConfig, SharedMemoryDevice};
use moat_policy::NetworkPolicy;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, Icmpv4Packet, Icmpv4Repr, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr,
    TcpControl, TcpPacket, TcpRepr, TcpSeqNumber, UdpPacket, UdpRepr,
};

const GUEST_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x42]);

fn link() -> LinkConfig {
    LinkConfig::default()
}

fn eth(ethertype: EthernetProtocol, payload_len: usize, dst: EthernetAddress) -> (Vec<u8>, usize) {
    let mut f = vec![0u8; 14 + payload_len];
    EthernetRepr {
        src_addr: GUEST_MAC,
        dst_addr: dst,
        ethertype,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut f[..]));
    (f, 14)
}

fn ipv4(proto: IpProtocol, dst: Ipv4Addr, l4_len: usize) -> (Vec<u8>, usize) {
    let ip = Ipv4Repr {
        src_addr: link().guest_v4,
        dst_addr: dst,
        next_header: proto,
        payload_len: l4_len,
        hop_limit: 64,
    };
    let gw = EthernetAddress(link().gateway_mac);
    let (mut f, off) = eth(EthernetProtocol::Ipv4, 20 + l4_len, gw);
    ip.emit(
        &mut Ipv4Packet::new_unchecked(&mut f[off..]),
        &ChecksumCapabilities::default(),
    );
    (f, off + 20)
}

fn arp_request(target: Ipv4Addr) -> Vec<u8> {
    let (mut f, off) = eth(EthernetProtocol::Arp, 28, EthernetAddress::BROADCAST);
    ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: GUEST_MAC,
        source_protocol_addr: link().guest_v4,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    }
    .emit(&mut ArpPacket::new_unchecked(&mut f[off..]));
    f
}

fn echo_request(dst: Ipv4Addr) -> Vec<u8> {
    let icmp = Icmpv4Repr::EchoRequest {
        ident: 7,
        seq_no: 1,
        data: b"ping",
    };
    let (mut f, off) = ipv4(IpProtocol::Icmp, dst, icmp.buffer_len());
    icmp.emit(
        &mut Icmpv4Packet::new_unchecked(&mut f[off..]),
        &ChecksumCapabilities::default(),
    );
    f
}

fn udp(dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let (mut f, off) = ipv4(IpProtocol::Udp, dst, 8 + payload.len());
    UdpRepr {
        src_port: 40000,
        dst_port: dport,
    }
    .emit(
        &mut UdpPacket::new_unchecked(&mut f[off..]),
        &IpAddress::Ipv4(link().guest_v4),
        &IpAddress::Ipv4(dst),
        payload.len(),
        |b| b.copy_from_slice(payload),
        &ChecksumCapabilities::default(),
    );
    f
}

fn syn(dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let tcp = TcpRepr {
        src_port: 40001,
        dst_port: dport,
        control: TcpControl::Syn,
        seq_number: TcpSeqNumber(1000),
        ack_number: None,
        window_len: 64240,
        window_scale: None,
        max_seg_size: Some(1460),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let (mut f, off) = ipv4(IpProtocol::Tcp, dst, tcp.buffer_len());
    tcp.emit(
        &mut TcpPacket::new_unchecked(&mut f[off..]),
        &IpAddress::Ipv4(link().guest_v4),
        &IpAddress::Ipv4(dst),
        &ChecksumCapabilities::default(),
    );
    f
}

/// Sends `frame` and waits (bounded) for a frame `want` accepts.
fn exchange(dev: &SharedMemoryDevice, frame: Vec<u8>, want: impl Fn(&[u8]) -> bool) -> bool {
    dev.0.lock().unwrap().inbound.push_back(frame);
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let found = dev.0.lock().unwrap().outbound.iter().any(|f| want(f));
        if found {
            dev.0.lock().unwrap().outbound.clear();
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

fn ip_payload(f: &[u8]) -> Option<(Ipv4Packet<&[u8]>, IpProtocol)> {
    let e = EthernetFrame::new_checked(f).ok()?;
    if e.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(&f[14..]).ok()?;
    let proto = ip.next_header();
    Some((ip, proto))
}

#[test]
fn an_engine_behind_a_memory_device() {
    let dev = SharedMemoryDevice::default();
    let mut cfg = EngineConfig::new(
        NetworkPolicy::public_only().compile().unwrap(),
        AuditLog::new("test", None),
    );
    cfg.deny_mode = DenyMode::Reject;
    let engine = moat_engine::spawn(Box::new(dev.clone()), cfg).unwrap();
    let gw = link().gateway_v4;

    // ARP for the gateway is answered with the gateway's MAC.
    assert!(exchange(&dev, arp_request(gw), |f| {
        EthernetFrame::new_checked(f).is_ok_and(|e| e.ethertype() == EthernetProtocol::Arp)
            && ArpPacket::new_checked(&f[14..]).is_ok_and(|a| a.operation() == ArpOperation::Reply)
    }));
    // The gateway answers its own echo.
    assert!(exchange(&dev, echo_request(gw), |f| {
        ip_payload(f).is_some_and(|(ip, p)| {
            p == IpProtocol::Icmp
                && Icmpv4Packet::new_checked(ip.payload())
                    .is_ok_and(|i| i.msg_type() == smoltcp::wire::Icmpv4Message::EchoReply)
        })
    }));
    // DNS with no upstream resolver: SERVFAIL, from the address asked.
    let mut q = vec![
        0x12, 0x34, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 4, b't', b'e', b's', b't', 0, 0, 1,
        0, 1,
    ];
    let asked = Ipv4Addr::new(198, 51, 100, 99);
    assert!(exchange(&dev, udp(asked, 53, &q), |f| {
        ip_payload(f).is_some_and(|(ip, p)| {
            p == IpProtocol::Udp
                && ip.src_addr() == asked
                && UdpPacket::new_checked(ip.payload()).is_ok_and(|u| {
                    u.payload().len() >= 4
                        && u.payload()[..2] == [0x12, 0x34]
                        && u.payload()[3] & 0x0f == 2
                })
        })
    }));
    // Non-DNS bytes on port 53 get nothing back.
    q.truncate(5);
    assert!(!exchange(&dev, udp(asked, 53, &q), |f| ip_payload(f)
        .is_some_and(|(_, p)| p == IpProtocol::Udp)));
    // A connection to a private address is denied; in reject mode, with a reset.
    assert!(exchange(&dev, syn(Ipv4Addr::new(10, 1, 2, 3), 80), |f| {
        ip_payload(f).is_some_and(|(ip, p)| {
            p == IpProtocol::Tcp && TcpPacket::new_checked(ip.payload()).is_ok_and(|t| t.rst())
        })
    }));
    let counters = engine.stop().unwrap();
    assert_eq!(counters.denied, 1);
    assert!(counters.dns_dropped >= 1);
    assert!(counters.frames_in >= 5);
}
