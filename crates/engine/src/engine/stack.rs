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
//! once; a flow's run of UDP datagrams goes out through a [`UdpBurst`], one frame per run
//! of one size when the device splits UDP. The gateway's addresses stand for the host's
//! loopback ([`Stack::upstream`]).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use moat_wire::device::{ETH_HEADER, FrameDevice, StackDevice};
use moat_wire::offload::{self, UdpRun};
use moat_wire::{self as wire, Link, Unreachable};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr};

use super::config::LinkConfig;
use super::key::FlowKey;

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
    /// A UDP frame of several datagrams being filled ([`UdpBurst`]).
    burst: Vec<u8>,
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
            burst: Vec::new(),
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

    /// Datagrams from `from` to `to` (the sandbox), pushed one by one as a host socket gives
    /// them; see [`UdpBurst`].
    pub(super) fn udp_burst(&mut self, from: SocketAddr, to: SocketAddr) -> UdpBurst<'_> {
        UdpBurst {
            stack: self,
            from,
            to,
            run: UdpRun::default(),
        }
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

/// A run of datagrams on one flow toward the sandbox. When the device splits UDP frames,
/// consecutive datagrams of one size (and a shorter last one) share a frame, so a burst
/// costs the sandbox's kernel one write per frame rather than one per datagram; otherwise
/// each datagram is its own frame, as [`Stack::udp_to_guest`] sends it. The sandbox sees
/// the same datagrams in the same order either way. What is pending goes out at
/// [`UdpBurst::finish`] (or when the burst is dropped).
pub(super) struct UdpBurst<'s> {
    stack: &'s mut Stack,
    from: SocketAddr,
    to: SocketAddr,
    /// The datagrams of the pending frame.
    run: UdpRun,
}

impl UdpBurst<'_> {
    /// The next datagram.
    pub(super) fn push(&mut self, payload: &[u8]) {
        if !self.stack.device.segments_udp() {
            self.stack.udp_to_guest(self.from, self.to, payload);
            return;
        }
        let Some(at) = wire::udp_payload_offset(self.from, self.to) else {
            return;
        };
        // An IPv4 packet's length covers its header; an IPv6 packet's covers only what follows.
        let room = usize::from(u16::MAX) - 8 - if self.from.is_ipv4() { 20 } else { 0 };
        if !self.run.takes(payload.len(), room) {
            self.flush();
            self.stack.burst.clear();
            self.stack.burst.resize(at, 0);
        }
        self.run.add(payload.len());
        self.stack.burst.extend_from_slice(payload);
    }

    /// Sends what is pending.
    pub(super) fn finish(mut self) {
        self.flush();
    }

    fn flush(&mut self) {
        let run = std::mem::take(&mut self.run);
        if run.count() == 0 {
            return;
        }
        let stack = &mut *self.stack;
        let mut frame = std::mem::take(&mut stack.burst);
        let at = wire::udp_payload_offset(self.from, self.to).unwrap_or(frame.len());
        let segments = (run.count() > 1
            && wire::udp_headers(&mut frame, &stack.link, self.from, self.to))
        .then(|| offload::prepare_udp_segments(&mut frame, run.size() as u16))
        .flatten();
        let sent = match segments {
            Some(s) => match stack.device.send_udp_segments(&frame, &s) {
                Err(e) if e.kind() == io::ErrorKind::Unsupported => false,
                Err(_) => {
                    stack.tx_errors += 1;
                    true
                }
                Ok(()) => true,
            },
            None => false,
        };
        if !sent {
            for payload in run.datagrams(&frame[at..]) {
                stack.udp_to_guest(self.from, self.to, payload);
            }
        }
        stack.burst = frame;
    }
}

impl Drop for UdpBurst<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

fn smol_now(epoch: Instant) -> smoltcp::time::Instant {
    smoltcp::time::Instant::from_micros(epoch.elapsed().as_micros() as i64)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

    use std::sync::{Arc, Mutex};

    use proptest::prelude::*;

    use super::*;
    use moat_wire::offload::{UdpSegments, split_udp_reference};

    /// What a device was given: each frame as the sandbox's kernel receives it (a split
    /// frame as its datagrams), and how many writes it took.
    #[derive(Default)]
    struct Wire {
        frames: Vec<Vec<u8>>,
        writes: usize,
        split_writes: usize,
    }

    /// A device that splits UDP frames as the kernel does (or refuses them, like a kernel
    /// before Linux 6.2, when `refuse`), or, without `splits`, carries plain frames only.
    struct Device {
        wire: Arc<Mutex<Wire>>,
        splits: bool,
        refuse: bool,
    }

    impl FrameDevice for Device {
        fn recv(&mut self, _buf: &mut [u8]) -> io::Result<Option<usize>> {
            Ok(None)
        }
        fn send(&mut self, frame: &[u8]) -> io::Result<()> {
            let mut wire = self.wire.lock().unwrap();
            wire.frames.push(frame.to_vec());
            wire.writes += 1;
            Ok(())
        }
        fn raw_fd(&self) -> Option<RawFd> {
            None
        }
        fn segments_udp(&self) -> bool {
            self.splits
        }
        fn send_udp_segments(&mut self, frame: &[u8], segments: &UdpSegments) -> io::Result<()> {
            if self.refuse {
                self.splits = false;
                return Err(io::ErrorKind::Unsupported.into());
            }
            let mut wire = self.wire.lock().unwrap();
            wire.frames.extend(split_udp_reference(frame, segments));
            wire.writes += 1;
            wire.split_writes += 1;
            Ok(())
        }
    }

    /// Sends `datagrams` as one burst through a stack on a [`Device`]; what the sandbox got.
    fn through(splits: bool, refuse: bool, v6: bool, datagrams: &[Vec<u8>]) -> Wire {
        let wire = Arc::new(Mutex::new(Wire::default()));
        let device = Device {
            wire: wire.clone(),
            splits,
            refuse,
        };
        let mut stack = Stack::new(Box::new(device), LinkConfig::default(), 1);
        let (from, to): (SocketAddr, SocketAddr) = if v6 {
            (
                "[2001:db8::10]:7778".parse().unwrap(),
                "[fd00::100]:40000".parse().unwrap(),
            )
        } else {
            (
                "203.0.113.10:7778".parse().unwrap(),
                "10.0.2.100:40000".parse().unwrap(),
            )
        };
        let mut burst = stack.udp_burst(from, to);
        for d in datagrams {
            burst.push(d);
        }
        burst.finish();
        drop(stack);
        Arc::try_unwrap(wire).ok().unwrap().into_inner().unwrap()
    }

    /// Datagrams of `size` bytes, each with its index in front.
    fn numbered(count: usize, size: usize) -> Vec<Vec<u8>> {
        (0..count)
            .map(|i| (0..size).map(|j| (i * 31 + j) as u8).collect())
            .collect()
    }

    #[test]
    fn a_run_of_one_size_and_a_shorter_last_take_one_write() {
        for v6 in [false, true] {
            let mut datagrams = numbered(40, 1400);
            datagrams.push(vec![9u8; 300]);
            let split = through(true, false, v6, &datagrams);
            let plain = through(false, false, v6, &datagrams);
            assert_eq!(split.writes, 1);
            assert_eq!(split.split_writes, 1);
            assert_eq!(plain.writes, 41);
            assert_eq!(split.frames, plain.frames, "v6={v6}");
        }
    }

    #[test]
    fn a_kernel_that_refuses_split_frames_gets_each_datagram_alone() {
        let datagrams = numbered(10, 1000);
        let refused = through(true, true, false, &datagrams);
        let plain = through(false, false, false, &datagrams);
        assert_eq!(refused.split_writes, 0);
        assert_eq!(refused.writes, 10);
        assert_eq!(refused.frames, plain.frames);
    }

    proptest! {
        /// Whatever the sizes (runs of one size, shorter and longer ones, empty datagrams,
        /// more than a frame holds), the sandbox receives exactly the datagrams the plain
        /// path gives it, in order; a run of equal sizes never takes more writes than
        /// datagrams.
        #[test]
        fn batching_gives_the_sandbox_what_the_plain_path_gives(
            runs in proptest::collection::vec(
                (prop_oneof![Just(0usize), Just(1), Just(999), Just(1000), Just(1001), 0usize..3000], 1usize..30),
                1..8,
            ),
            v6 in any::<bool>(),
        ) {
            let datagrams: Vec<Vec<u8>> = runs
                .iter()
                .enumerate()
                .flat_map(|(r, &(size, count))| {
                    (0..count).map(move |i| (0..size).map(|j| (r * 7 + i * 31 + j) as u8).collect())
                })
                .collect();
            let split = through(true, false, v6, &datagrams);
            let plain = through(false, false, v6, &datagrams);
            prop_assert_eq!(&split.frames, &plain.frames);
            prop_assert!(split.writes <= plain.writes);
        }
    }
}
