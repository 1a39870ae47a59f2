//! The sandbox's side of the wire: the smoltcp interface that terminates the sandbox's
//! TCP connections, the frame device under it, and the frames moat writes itself (resets,
//! ICMP errors and echo replies, UDP datagrams, neighbour and router advertisements).
//!
//! # Theory of operation
//! smoltcp answers for every address (`any_ip`) with the gateway's MAC, so the sandbox's
//! one default route reaches it whatever the destination. Frames from the sandbox reach
//! smoltcp one at a time through [`Stack::feed`]; what its sockets have to send leaves in
//! [`Stack::egress`], straight to the device through one reused buffer. Frames that do
//! not concern a smoltcp socket are built by `wire.rs` into a second buffer and sent at
//! once. The gateway's addresses stand for the host's loopback ([`Stack::upstream`]).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr};

use super::config::LinkConfig;
use super::table::FlowKey;
use crate::device::{ETH_HEADER, FrameDevice, StackDevice};
use crate::wire::{self, Link, Unreachable};

/// The gateway's link-local address, the source of its router advertisements.
const GATEWAY_LINK_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// The interface, its sockets and the device.
pub(super) struct Stack {
    pub(super) iface: Interface,
    /// The sandbox's TCP connections (outbound, inbound and DNS over TCP).
    pub(super) sockets: SocketSet<'static>,
    device: Box<dyn FrameDevice + Send>,
    /// smoltcp's transmit buffer.
    tx_buf: Vec<u8>,
    /// Frames moat writes itself.
    out: Vec<u8>,
    link: Link,
    /// The link's addresses.
    pub(super) addrs: LinkConfig,
    epoch: Instant,
    /// Frames the device refused.
    pub(super) tx_errors: u64,
}

impl Stack {
    /// An interface with the gateway's addresses on `device`.
    pub(super) fn new(
        mut device: Box<dyn FrameDevice + Send>,
        addrs: LinkConfig,
        seed: u64,
    ) -> Stack {
        let epoch = Instant::now();
        let gateway_mac = EthernetAddress(addrs.gateway_mac);
        let mut config = Config::new(HardwareAddress::Ethernet(gateway_mac));
        config.random_seed = seed;
        let max_frame = addrs.mtu + ETH_HEADER;
        let mut tx_buf = Vec::with_capacity(max_frame);
        let mut tx_errors = 0;
        let mut iface = {
            let mut dev = StackDevice {
                rx: None,
                dev: device.as_mut(),
                tx_buf: &mut tx_buf,
                max_frame,
                tx_errors: &mut tx_errors,
            };
            Interface::new(config, &mut dev, smol_now(epoch))
        };
        iface.set_any_ip(true);
        iface.update_ip_addrs(|ips| {
            let _ = ips.push(IpCidr::new(addrs.gateway_v4.into(), addrs.prefix_v4));
            let _ = ips.push(IpCidr::new(addrs.gateway_v6.into(), addrs.prefix_v6));
            let _ = ips.push(IpCidr::new(GATEWAY_LINK_LOCAL.into(), 64));
        });
        let _ = iface.routes_mut().add_default_ipv4_route(addrs.gateway_v4);
        let _ = iface.routes_mut().add_default_ipv6_route(addrs.gateway_v6);
        Stack {
            iface,
            sockets: SocketSet::new(Vec::new()),
            device,
            tx_buf,
            out: Vec::with_capacity(max_frame),
            link: Link {
                gateway_mac,
                guest_mac: EthernetAddress::BROADCAST,
            },
            addrs,
            epoch,
            tx_errors,
        }
    }

    /// The device's descriptor, when it has one to poll.
    pub(super) fn raw_fd(&self) -> Option<RawFd> {
        self.device.raw_fd()
    }

    /// The next frame from the sandbox, if one is waiting.
    pub(super) fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        self.device.recv(buf)
    }

    /// How soon smoltcp wants to be polled again (a retransmission, a delayed ACK).
    pub(super) fn poll_delay(&mut self) -> Option<Duration> {
        self.iface
            .poll_delay(smol_now(self.epoch), &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()))
    }

    /// The sandbox's TCP socket `handle`.
    pub(super) fn tcp(&mut self, handle: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(handle)
    }

    /// Remembers the sandbox's MAC from a frame it sent.
    pub(super) fn learn_guest_mac(&mut self, frame: &[u8]) {
        if let Some(mac) = wire::source_mac(frame) {
            self.link.guest_mac = mac;
        }
    }

    /// Hands one frame to smoltcp.
    pub(super) fn feed(&mut self, frame: &[u8]) {
        let max_frame = self.addrs.mtu + ETH_HEADER;
        let mut dev = StackDevice {
            rx: Some(frame),
            dev: self.device.as_mut(),
            tx_buf: &mut self.tx_buf,
            max_frame,
            tx_errors: &mut self.tx_errors,
        };
        let now = smol_now(self.epoch);
        let _ = self
            .iface
            .poll_ingress_single(now, &mut dev, &mut self.sockets);
    }

    /// Sends what smoltcp's sockets have ready.
    pub(super) fn egress(&mut self) {
        let max_frame = self.addrs.mtu + ETH_HEADER;
        let mut dev = StackDevice {
            rx: None,
            dev: self.device.as_mut(),
            tx_buf: &mut self.tx_buf,
            max_frame,
            tx_errors: &mut self.tx_errors,
        };
        let now = smol_now(self.epoch);
        self.iface.poll_maintenance(now);
        // Bounded: each round sends what the sockets have ready.
        for _ in 0..64 {
            if self.iface.poll_egress(now, &mut dev, &mut self.sockets)
                == smoltcp::iface::PollResult::None
            {
                break;
            }
        }
    }

    /// Builds a frame with `build` and sends it (nothing when it could not be built).
    fn send_built(&mut self, build: impl FnOnce(&mut Vec<u8>, &Link) -> bool) {
        let mut out = std::mem::take(&mut self.out);
        if build(&mut out, &self.link) && self.device.send(&out).is_err() {
            self.tx_errors += 1;
        }
        self.out = out;
    }

    /// A UDP datagram to the sandbox.
    pub(super) fn udp_to_guest(&mut self, from: SocketAddr, to: SocketAddr, payload: &[u8]) {
        self.send_built(|out, link| wire::udp_to_guest(out, link, from, to, payload));
    }

    /// An ICMP echo reply to the sandbox.
    pub(super) fn echo_reply(
        &mut self,
        from: IpAddr,
        to: IpAddr,
        ident: u16,
        seq: u16,
        data: &[u8],
    ) {
        self.send_built(|out, link| wire::echo_reply(out, link, from, to, ident, seq, data));
    }

    /// Resets the sandbox's segment on `key` with sequence number `seq` and length
    /// `seg_len` (a refused SYN, a dial that failed).
    pub(super) fn reset_guest(&mut self, key: FlowKey, seq: u32, seg_len: u32) {
        self.send_built(|out, link| wire::tcp_reset(out, link, key.host, key.guest, seq, seg_len));
    }

    /// Answers the sandbox's IP packet in `frame` with ICMP "administratively prohibited"
    /// from the gateway of `toward`'s family (reject mode, refused DNS bypasses).
    pub(super) fn send_prohibited(&mut self, frame: &[u8], toward: IpAddr) {
        self.send_unreachable(frame, toward, Unreachable::Prohibited);
    }

    /// Answers the sandbox's IP packet in `frame` with ICMP destination unreachable,
    /// saying `why`, from the gateway of `toward`'s family.
    pub(super) fn send_unreachable(&mut self, frame: &[u8], toward: IpAddr, why: Unreachable) {
        let gateway = self.gateway_for(toward);
        self.send_built(|out, link| {
            wire::unreachable(out, link, gateway, wire::ip_payload(frame), why)
        });
    }

    /// Answers a neighbour solicitation for `target` from `from`: every address but the
    /// sandbox's own is at the gateway.
    pub(super) fn neighbor_advert(&mut self, target: Ipv6Addr, from: Ipv6Addr) {
        self.send_built(|out, link| wire::neighbor_advert(out, link, target, from));
    }

    /// Answers a router solicitation (RFC 4861 §6.2.6) with the link's prefix.
    pub(super) fn router_advert(&mut self, from: IpAddr) {
        let IpAddr::V6(from) = from else { return };
        let dst = if from.is_unspecified() {
            Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1)
        } else {
            from
        };
        let addrs = self.addrs;
        let bits = 128 - u32::from(addrs.prefix_v6.min(128));
        let prefix = u128::from(addrs.gateway_v6) & u128::MAX.checked_shl(bits).unwrap_or(0);
        self.send_built(|out, link| {
            wire::router_advert(
                out,
                link,
                GATEWAY_LINK_LOCAL,
                dst,
                Ipv6Addr::from(prefix),
                addrs.prefix_v6,
                addrs.mtu as u32,
            )
        });
    }

    /// Whether `addr` is one of the sandbox's addresses.
    pub(super) fn is_guest(&self, addr: IpAddr) -> bool {
        addr == IpAddr::V4(self.addrs.guest_v4) || addr == IpAddr::V6(self.addrs.guest_v6)
    }

    /// The gateway's address in `addr`'s family.
    pub(super) fn gateway_for(&self, addr: IpAddr) -> IpAddr {
        match addr {
            IpAddr::V4(_) => IpAddr::V4(self.addrs.gateway_v4),
            IpAddr::V6(_) => IpAddr::V6(self.addrs.gateway_v6),
        }
    }

    /// The sandbox's address in the family of `host`.
    pub(super) fn guest_addr_like(&self, host: IpAddr) -> IpAddr {
        match host {
            IpAddr::V4(_) => IpAddr::V4(self.addrs.guest_v4),
            IpAddr::V6(_) => IpAddr::V6(self.addrs.guest_v6),
        }
    }

    /// Where a flow to `remote` is judged and dialed: the gateway stands for the host's
    /// loopback.
    pub(super) fn upstream(&self, remote: SocketAddr) -> SocketAddr {
        match remote.ip() {
            ip if ip == IpAddr::V4(self.addrs.gateway_v4) => {
                SocketAddr::new(Ipv4Addr::LOCALHOST.into(), remote.port())
            }
            ip if ip == IpAddr::V6(self.addrs.gateway_v6) => {
                SocketAddr::new(Ipv6Addr::LOCALHOST.into(), remote.port())
            }
            _ => remote,
        }
    }
}

fn smol_now(epoch: Instant) -> smoltcp::time::Instant {
    smoltcp::time::Instant::from_micros(epoch.elapsed().as_micros() as i64)
}
