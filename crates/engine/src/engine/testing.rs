//! A harness for the flow kinds' unit tests: the flow table and what flows share, made as
//! the engine makes them, over an in-memory frame device, driven without the event loop.
//! Only loopback is ever dialed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::Poll;
use moat_policy::NetworkPolicy;
use moat_record::audit::AuditLog;
use moat_wire::device::SharedMemoryDevice;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, Icmpv4Message, Icmpv4Packet, Icmpv4Repr, IpAddress, IpProtocol, Ipv4Packet,
    Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber, UdpPacket, UdpRepr,
};

use super::config::Published;
use super::config::{DenyMode, EngineConfig, LinkConfig};
use super::cx::Cx;
use super::event_loop::parts;
use super::inbound::Listeners;
use super::ingress;
use super::key::FlowKey;
use super::on_udp;
use super::table::FlowTable;

const GUEST_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x42]);
/// The sandbox's source port in every frame built here.
pub(super) const GUEST_PORT: u16 = 40001;

/// Audit lines, shared with the engine's log.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Flows over a memory device.
pub(super) struct Harness {
    _poll: Poll,
    pub(super) table: FlowTable,
    pub(super) cx: Cx,
    pub(super) listeners: Listeners,
    dev: SharedMemoryDevice,
    audit: Lines,
}

impl Harness {
    pub(super) fn new(policy: NetworkPolicy, deny_mode: DenyMode) -> Harness {
        Harness::with_config(policy, |cfg| cfg.deny_mode = deny_mode)
    }

    /// A harness with published ports.
    pub(super) fn with_published(
        policy: NetworkPolicy,
        deny_mode: DenyMode,
        published: Vec<Published>,
    ) -> Harness {
        Harness::with_config(policy, |cfg| {
            cfg.deny_mode = deny_mode;
            cfg.published = published;
        })
    }

    /// A harness whose DNS goes to `resolvers`.
    pub(super) fn with_resolvers(policy: NetworkPolicy, resolvers: Vec<SocketAddr>) -> Harness {
        Harness::with_config(policy, |cfg| cfg.dns_servers = resolvers)
    }

    /// A harness whose configuration `set` changes from the engine's defaults.
    pub(super) fn with_config(
        policy: NetworkPolicy,
        set: impl FnOnce(&mut EngineConfig),
    ) -> Harness {
        let poll = Poll::new().unwrap();
        let dev = SharedMemoryDevice::default();
        let audit = Lines::default();
        let log = AuditLog::new("unit", Some(Box::new(audit.clone())));
        let mut cfg = EngineConfig::new(policy.compile().unwrap(), log);
        set(&mut cfg);
        let (table, cx, listeners) = parts(poll.registry(), Box::new(dev.clone()), cfg).unwrap();
        let mut h = Harness {
            _poll: poll,
            table,
            cx,
            listeners,
            dev,
            audit,
        };
        // The sandbox asks for its gateway first, as a real one does: smoltcp learns its
        // MAC from the question.
        h.frame(&arp_for_gateway());
        h.sent();
        h
    }

    /// Hands a frame from the sandbox to the engine, as the loop would.
    pub(super) fn frame(&mut self, frame: &[u8]) {
        self.frames(&[frame.to_vec()]);
    }

    /// Hands frames from the sandbox to the engine as one batch, as the loop reads them.
    pub(super) fn frames(&mut self, frames: &[Vec<u8>]) {
        for frame in frames {
            ingress::on_frame(&self.listeners, &mut self.table, &mut self.cx, frame);
        }
        on_udp::flush_up(&mut self.table, &mut self.cx);
        self.cx.stack.egress();
    }

    /// Serves the flows an event marked, as the loop's next turn does.
    pub(super) fn serve_marked(&mut self) {
        for id in self.table.take_dirty() {
            super::event_loop::service(&mut self.table, &mut self.cx, id);
        }
    }

    /// The frames sent to the sandbox since the last call.
    pub(super) fn sent(&mut self) -> Vec<Vec<u8>> {
        self.dev.0.lock().unwrap().outbound.drain(..).collect()
    }

    /// The audit log so far.
    pub(super) fn audit(&self) -> String {
        String::from_utf8_lossy(&self.audit.0.lock().unwrap()).into_owned()
    }

    /// Repeats `step` (bounded: 3 s) until it returns true.
    pub(super) fn until(&mut self, mut step: impl FnMut(&mut Harness) -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if step(self) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }
}

/// TLS interception on `port` (a fresh CA; upstream certificates not verified; QUIC
/// blocked).
pub(super) fn intercepting(port: u16) -> super::config::TlsConfig {
    let (ca, _) = moat_inspect::tls::ca::InterceptCa::generate("unit", 1).unwrap();
    super::config::TlsConfig {
        ca: Arc::new(ca),
        ports: vec![port],
        bypass: Vec::new(),
        block_quic: true,
        verify_upstream: false,
        roots: Vec::new(),
    }
}

/// The key of a flow from the sandbox's [`GUEST_PORT`] to `dst`.
pub(super) fn key_to(dst: SocketAddr) -> FlowKey {
    FlowKey {
        guest: SocketAddr::new(LinkConfig::default().guest_v4.into(), GUEST_PORT),
        host: dst,
    }
}

fn arp_for_gateway() -> Vec<u8> {
    let link = LinkConfig::default();
    let mut f = vec![0u8; 14 + 28];
    EthernetRepr {
        src_addr: GUEST_MAC,
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EthernetProtocol::Arp,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut f[..]));
    ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: GUEST_MAC,
        source_protocol_addr: link.guest_v4,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: link.gateway_v4,
    }
    .emit(&mut ArpPacket::new_unchecked(&mut f[14..]));
    f
}

fn ipv4(proto: IpProtocol, dst: Ipv4Addr, l4_len: usize) -> (Vec<u8>, usize) {
    let link = LinkConfig::default();
    let mut f = vec![0u8; 14 + 20 + l4_len];
    EthernetRepr {
        src_addr: GUEST_MAC,
        dst_addr: EthernetAddress(link.gateway_mac),
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut f[..]));
    Ipv4Repr {
        src_addr: link.guest_v4,
        dst_addr: dst,
        next_header: proto,
        payload_len: l4_len,
        hop_limit: 64,
    }
    .emit(
        &mut Ipv4Packet::new_unchecked(&mut f[14..]),
        &ChecksumCapabilities::default(),
    );
    (f, 34)
}

/// A SYN from the sandbox to `dst`.
pub(super) fn syn(dst: Ipv4Addr, port: u16) -> Vec<u8> {
    tcp_from(GUEST_PORT, dst, port, TcpControl::Syn, 1000, None, &[])
}

/// A TCP segment from the sandbox's `src_port` to `dst:port` with sequence number `seq`
/// (a SYN's is 1000 in [`syn`]), acknowledging `ack` when given.
pub(super) fn tcp_from(
    src_port: u16,
    dst: Ipv4Addr,
    port: u16,
    control: TcpControl,
    seq: u32,
    ack: Option<u32>,
    payload: &[u8],
) -> Vec<u8> {
    let tcp = TcpRepr {
        src_port,
        dst_port: port,
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: 64240,
        window_scale: None,
        max_seg_size: (control == TcpControl::Syn).then_some(1460),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload,
    };
    let (mut f, off) = ipv4(IpProtocol::Tcp, dst, tcp.buffer_len());
    tcp.emit(
        &mut TcpPacket::new_unchecked(&mut f[off..]),
        &IpAddress::Ipv4(LinkConfig::default().guest_v4),
        &IpAddress::Ipv4(dst),
        &ChecksumCapabilities::default(),
    );
    f
}

/// A TCP segment to the sandbox, whole.
#[derive(Debug, Clone)]
pub(super) struct ToGuest {
    pub(super) src_port: u16,
    pub(super) dst_port: u16,
    pub(super) seq: u32,
    pub(super) syn: bool,
    pub(super) fin: bool,
    pub(super) rst: bool,
    pub(super) payload: Vec<u8>,
}

/// A TCP segment to the sandbox, whole (see [`tcp_to_guest`] for its outline).
pub(super) fn tcp_segment_to_guest(frame: &[u8]) -> Option<ToGuest> {
    let ip = Ipv4Packet::new_checked(frame.get(14..)?).ok()?;
    if ip.next_header() != IpProtocol::Tcp {
        return None;
    }
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    Some(ToGuest {
        src_port: tcp.src_port(),
        dst_port: tcp.dst_port(),
        seq: tcp.seq_number().0 as u32,
        syn: tcp.syn(),
        fin: tcp.fin(),
        rst: tcp.rst(),
        payload: tcp.payload().to_vec(),
    })
}

/// An ICMP echo request from the sandbox to `dst` (identifier 7, sequence 1).
pub(super) fn echo_request(dst: Ipv4Addr) -> Vec<u8> {
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

/// An ICMP message to the sandbox: (source, type).
pub(super) fn icmp_to_guest(frame: &[u8]) -> Option<(Ipv4Addr, Icmpv4Message)> {
    let ip = Ipv4Packet::new_checked(frame.get(14..)?).ok()?;
    if ip.next_header() != IpProtocol::Icmp {
        return None;
    }
    let icmp = Icmpv4Packet::new_checked(ip.payload()).ok()?;
    Some((ip.src_addr(), icmp.msg_type()))
}

/// A UDP datagram from the sandbox to `dst`.
pub(super) fn udp(dst: Ipv4Addr, port: u16, payload: &[u8]) -> Vec<u8> {
    udp_from(GUEST_PORT, dst, port, payload)
}

/// A UDP datagram from the sandbox's port `src_port` to `dst`.
pub(super) fn udp_from(src_port: u16, dst: Ipv4Addr, port: u16, payload: &[u8]) -> Vec<u8> {
    let (mut f, off) = ipv4(IpProtocol::Udp, dst, 8 + payload.len());
    UdpRepr {
        src_port,
        dst_port: port,
    }
    .emit(
        &mut UdpPacket::new_unchecked(&mut f[off..]),
        &IpAddress::Ipv4(LinkConfig::default().guest_v4),
        &IpAddress::Ipv4(dst),
        payload.len(),
        |b| b.copy_from_slice(payload),
        &ChecksumCapabilities::default(),
    );
    f
}

/// A TCP segment to the sandbox: (source port, control, whether ACK is set).
pub(super) fn tcp_to_guest(frame: &[u8]) -> Option<(u16, TcpControl, bool)> {
    let ip = Ipv4Packet::new_checked(frame.get(14..)?).ok()?;
    if ip.next_header() != IpProtocol::Tcp {
        return None;
    }
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    let control = if tcp.rst() {
        TcpControl::Rst
    } else if tcp.syn() {
        TcpControl::Syn
    } else if tcp.fin() {
        TcpControl::Fin
    } else {
        TcpControl::None
    };
    Some((tcp.src_port(), control, tcp.ack()))
}

/// A UDP datagram to the sandbox: (source port, payload).
pub(super) fn udp_to_guest(frame: &[u8]) -> Option<(u16, Vec<u8>)> {
    udp_to_guest_full(frame).map(|(_, src, _, payload)| (src, payload))
}

/// A UDP datagram to the sandbox: (source address, source port, destination port, payload).
pub(super) fn udp_to_guest_full(frame: &[u8]) -> Option<(Ipv4Addr, u16, u16, Vec<u8>)> {
    let ip = Ipv4Packet::new_checked(frame.get(14..)?).ok()?;
    if ip.next_header() != IpProtocol::Udp {
        return None;
    }
    let udp = UdpPacket::new_checked(ip.payload()).ok()?;
    Some((
        ip.src_addr(),
        udp.src_port(),
        udp.dst_port(),
        udp.payload().to_vec(),
    ))
}

/// A TCP listener on 127.0.0.1 (any port) with accept queue `backlog` (the standard
/// library's is fixed at 128).
pub(super) fn loopback_listener(backlog: i32) -> std::net::TcpListener {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, bind, listen, socket,
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::new(127, 0, 0, 1, 0),
    )
    .unwrap();
    listen(&fd, Backlog::new(backlog).unwrap()).unwrap();
    std::net::TcpListener::from(fd)
}
