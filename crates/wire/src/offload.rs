//! Offloads across the TAP: the virtio-net header in front of each frame, and what the
//! engine does so 64 KiB TCP segments cross the link in one frame each way without a
//! software checksum, and a run of UDP datagrams reaches the sandbox in one frame.
//!
//! With `IFF_VNET_HDR` and `TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)` the
//! sandbox's kernel sends TCP segments of up to 64 KiB (whatever the link MTU) with the
//! checksum left unfilled, and accepts such segments from moat when the header says how to
//! split them (`gso_size`) and where the checksum goes (`csum_start`, `csum_offset`).
//! Nothing on this link can corrupt a frame, and the engine terminates every TCP
//! connection, so TCP checksums are neither checked on the way in nor computed on the way
//! out; the sandbox's kernel treats a segment whose checksum it was asked to finish as
//! verified.
//!
//! smoltcp (feature `segmentation-offload`) sends segments of up to 64 KiB when the device
//! says it can split them, and tags each with the connection's MSS; the header passes that
//! on as `gso_size`, so the sandbox sees exactly the segments its MSS allows.
//!
//! UDP goes the same way toward the sandbox: datagrams that wait together in a flow's host
//! socket and have one size (the last may be shorter) leave as one frame announced as UDP
//! segmentation offload (`VIRTIO_NET_HDR_GSO_UDP_L4`, Linux 6.2 and later), and the
//! sandbox's kernel splits it into the same datagrams, each with its own header and
//! checksum, before any socket sees them. A kernel that does not know the type refuses the
//! write; the engine then sends each datagram alone, as it does on devices without the
//! header. The sandbox's own datagrams always arrive one per frame: moat does not offer it
//! `TUN_F_USO4/6`.
//!
//! References: the virtio specification 1.2 §5.1.6 (struct virtio_net_hdr), Linux
//! Documentation/networking/tuntap.rst and segmentation-offloads.rst, RFC 9293 §3.7.1 (MSS),
//! RFC 768 (UDP).

/// Bytes of the virtio-net header in front of each frame (`virtio_net_hdr_mrg_rxbuf`).
pub const VNET_HDR_LEN: usize = 12;

/// The largest IP packet a segment may fill.
pub const MAX_IP_PACKET: usize = 65535;

const ETH: usize = 14;
const NEEDS_CSUM: u8 = 1;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const GSO_UDP_L4: u8 = 5;
const TCP_CHECKSUM_AT: usize = 16;
const UDP_CHECKSUM_AT: usize = 6;

/// The most datagrams moat puts in one UDP frame for the sandbox's kernel to split (Linux
/// takes up to 128, `UDP_MAX_SEGMENTS`).
pub const MAX_UDP_SEGMENTS: usize = 64;

/// How the sandbox's kernel is to finish a TCP frame moat sends: the checksum to fill, and
/// the segment size when the frame is larger than the link carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpOffload {
    /// Offset of the TCP header in the frame.
    pub csum_start: u16,
    /// Ethernet + IP + TCP header bytes.
    pub hdr_len: u16,
    /// `Some(payload bytes per segment)` when the frame is to be split; `None` otherwise.
    pub gso_size: Option<u16>,
    /// IPv6 rather than IPv4.
    pub v6: bool,
}

impl TcpOffload {
    /// The virtio-net header announcing this frame.
    pub fn header(&self) -> [u8; VNET_HDR_LEN] {
        let gso = self.gso_size.map(|size| {
            let kind = if self.v6 { GSO_TCPV6 } else { GSO_TCPV4 };
            (kind, size)
        });
        partial_header(self.hdr_len, self.csum_start, TCP_CHECKSUM_AT, gso)
    }
}

/// How the sandbox's kernel is to split a UDP frame moat sends into the datagrams it
/// carries (UDP segmentation offload, Linux 6.2 and later): every datagram but the last is
/// `gso_size` bytes, the last at most that; each gets its own UDP header and checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpSegments {
    /// Offset of the UDP header in the frame.
    pub csum_start: u16,
    /// Payload bytes of each datagram but the last.
    pub gso_size: u16,
}

impl UdpSegments {
    /// The virtio-net header announcing this frame.
    pub fn header(&self) -> [u8; VNET_HDR_LEN] {
        partial_header(
            self.csum_start + 8,
            self.csum_start,
            UDP_CHECKSUM_AT,
            Some((GSO_UDP_L4, self.gso_size)),
        )
    }
}

/// A run of datagrams one segmented UDP write carries, both ways (the sandbox's kernel
/// splitting a frame, the host's kernel a `UDP_SEGMENT` send): every datagram but the last
/// has the first one's size, the last at most that, none is empty after the first, at most
/// [`MAX_UDP_SEGMENTS`] of them and `room` payload bytes in all. Only lengths are kept; the
/// bytes are the caller's, concatenated.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UdpRun {
    /// Payload bytes of the first datagram: the size of each.
    size: usize,
    count: usize,
    /// Payload bytes so far.
    bytes: usize,
    /// The last datagram is shorter than `size`: nothing may follow it.
    closed: bool,
}

impl UdpRun {
    /// Whether a datagram of `len` bytes may join the run, which holds at most `room`
    /// payload bytes. An empty run takes nothing: its first datagram starts a new one.
    pub fn takes(&self, len: usize, room: usize) -> bool {
        self.count > 0
            && !self.closed
            && len > 0
            && len <= self.size
            && self.count < MAX_UDP_SEGMENTS
            && self.bytes + len <= room
    }

    /// Adds a datagram of `len` bytes (the first sets the size). Callers ask
    /// [`UdpRun::takes`] first, or start from an empty run.
    pub fn add(&mut self, len: usize) {
        if self.count == 0 {
            self.size = len;
        }
        self.closed = len < self.size;
        self.count += 1;
        self.bytes += len;
    }

    /// Datagrams in the run.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Payload bytes of each datagram but the last.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The run's datagrams, cut from `payload` (the run's bytes, concatenated): what to send
    /// one by one where a segmented write is refused.
    pub fn datagrams<'p>(&self, payload: &'p [u8]) -> impl Iterator<Item = &'p [u8]> {
        // Only a run of one empty datagram has no bytes to cut.
        let empty = (self.count > 0 && payload.is_empty()).then_some(payload);
        payload.chunks(self.size.max(1)).chain(empty)
    }
}

/// A virtio-net header for a frame whose transport checksum (at `csum_start + csum_at`,
/// holding the pseudo-header sum) the sandbox's kernel finishes, split by `gso` (kind, payload
/// bytes per segment) when given.
fn partial_header(
    hdr_len: u16,
    csum_start: u16,
    csum_at: usize,
    gso: Option<(u8, u16)>,
) -> [u8; VNET_HDR_LEN] {
    let mut h = [0u8; VNET_HDR_LEN];
    h[0] = NEEDS_CSUM;
    // The header is in the host's byte order (legacy virtio, TUNSETVNETLE/BE unset).
    h[2..4].copy_from_slice(&hdr_len.to_ne_bytes());
    let (kind, size) = gso.unwrap_or((GSO_NONE, 0));
    h[1] = kind;
    h[4..6].copy_from_slice(&size.to_ne_bytes());
    h[6..8].copy_from_slice(&csum_start.to_ne_bytes());
    h[8..10].copy_from_slice(&(csum_at as u16).to_ne_bytes());
    h
}

/// The header for a frame that needs nothing done (checksums complete, one segment).
pub const PLAIN_HEADER: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

/// Where the transport header of an Ethernet frame starts, with its IP version, when the
/// frame is an unfragmented IP packet of protocol `proto` without IPv6 extension headers
/// and room for a `min_l4`-byte transport header; also the IP packet's length as its header
/// states.
fn l4_at(frame: &[u8], proto: u8, min_l4: usize) -> Option<(usize, bool, usize)> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    match ethertype {
        0x0800 => {
            let ihl = usize::from(frame.get(ETH)? & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([
                *frame.get(ETH + 2)?,
                *frame.get(ETH + 3)?,
            ]));
            let frag = u16::from_be_bytes([*frame.get(ETH + 6)?, *frame.get(ETH + 7)?]);
            let p = *frame.get(ETH + 9)?;
            (ihl >= 20 && p == proto && frag & 0x3fff == 0 && total >= ihl + min_l4).then_some((
                ETH + ihl,
                false,
                total,
            ))
        }
        0x86dd => {
            let payload = usize::from(u16::from_be_bytes([
                *frame.get(ETH + 4)?,
                *frame.get(ETH + 5)?,
            ]));
            (*frame.get(ETH + 6)? == proto && payload >= min_l4).then_some((
                ETH + 40,
                true,
                40 + payload,
            ))
        }
        _ => None,
    }
    .filter(|&(at, _, total)| frame.len() >= ETH + total && at + min_l4 <= frame.len())
}

fn sum_words(data: &[u8], mut sum: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The folded pseudo-header sum (RFC 9293 §3.1, RFC 8200 §8.1) of the IP packet after the
/// frame's Ethernet header, for a transport part of `l4_len` bytes of protocol `proto`: what
/// a checksum left to the sandbox's kernel is to hold. The frame is at least as long as its
/// IP header.
fn pseudo_header_sum(frame: &[u8], v6: bool, proto: u8, l4_len: usize) -> u16 {
    let addrs = if v6 {
        &frame[ETH + 8..ETH + 40]
    } else {
        &frame[ETH + 12..ETH + 20]
    };
    fold(sum_words(addrs, 0) + u32::from(proto) + l4_len as u32)
}

/// Prepares a UDP frame moat built, its checksum field zero, for the sandbox's kernel to
/// split into datagrams of `gso_size` payload bytes: writes the pseudo-header sum where the
/// checksum goes. `None` unless the frame is an unfragmented UDP packet (no IPv6 extension
/// headers) carrying more than one such datagram and at most [`MAX_UDP_SEGMENTS`].
pub fn prepare_udp_segments(frame: &mut [u8], gso_size: u16) -> Option<UdpSegments> {
    let (at, v6, ip_total) = l4_at(frame, 17, 8)?;
    let udp_len = ip_total - (at - ETH);
    let payload = udp_len - 8;
    let size = usize::from(gso_size);
    if size == 0 || payload <= size || payload.div_ceil(size) > MAX_UDP_SEGMENTS {
        return None;
    }
    let sum = pseudo_header_sum(frame, v6, 17, udp_len);
    frame[at + UDP_CHECKSUM_AT..at + UDP_CHECKSUM_AT + 2].copy_from_slice(&sum.to_be_bytes());
    Some(UdpSegments {
        csum_start: at as u16,
        gso_size,
    })
}

/// Prepares a TCP frame from smoltcp (checksum not computed) for an offloading device:
/// writes the pseudo-header sum where the checksum goes, as the device expects, and says
/// how the sandbox is to finish it; `segment` is the payload size smoltcp asked the frame
/// to be split into, if any. `None` for anything but a well-formed TCP frame.
pub fn prepare_tcp(frame: &mut [u8], segment: Option<u16>) -> Option<TcpOffload> {
    let (at, v6, ip_total) = l4_at(frame, 6, 20)?;
    let tcp_hl = usize::from(frame[at + 12] >> 4) * 4;
    let ip_hl = at - ETH;
    let tcp_len = ip_total - ip_hl;
    if tcp_hl < 20 || tcp_hl > tcp_len {
        return None;
    }
    let sum = pseudo_header_sum(frame, v6, 6, tcp_len);
    frame[at + TCP_CHECKSUM_AT..at + TCP_CHECKSUM_AT + 2].copy_from_slice(&sum.to_be_bytes());
    let payload = tcp_len - tcp_hl;
    let gso_size = segment.filter(|&size| size > 0 && payload > usize::from(size));
    Some(TcpOffload {
        csum_start: at as u16,
        hdr_len: (at + tcp_hl) as u16,
        gso_size,
        v6,
    })
}

/// What the sandbox's kernel makes of a UDP frame announced by `segments`, written out the
/// plain way: one frame per datagram, with its own IP length and header checksum, UDP length
/// and full UDP checksum (the definition the engine's UDP batching is held to in tests).
pub fn split_udp_reference(frame: &[u8], segments: &UdpSegments) -> Vec<Vec<u8>> {
    use smoltcp::wire::{IpAddress, Ipv4Packet, Ipv6Packet, UdpPacket};
    let at = usize::from(segments.csum_start);
    let v6 = at == ETH + 40;
    let mut out = Vec::new();
    for chunk in frame[at + 8..].chunks(usize::from(segments.gso_size)) {
        let mut f = frame[..at + 8].to_vec();
        f.extend_from_slice(chunk);
        let udp_len = 8 + chunk.len();
        let (src, dst): (IpAddress, IpAddress) = if v6 {
            let mut ip = Ipv6Packet::new_unchecked(&mut f[ETH..]);
            ip.set_payload_len(udp_len as u16);
            (ip.src_addr().into(), ip.dst_addr().into())
        } else {
            let mut ip = Ipv4Packet::new_unchecked(&mut f[ETH..]);
            ip.set_total_len((20 + udp_len) as u16);
            ip.fill_checksum();
            (ip.src_addr().into(), ip.dst_addr().into())
        };
        let mut udp = UdpPacket::new_unchecked(&mut f[at..]);
        udp.set_len(udp_len as u16);
        udp.fill_checksum(&src, &dst);
        out.push(f);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol,
        Ipv4Address, Ipv4Packet, Ipv4Repr, Ipv6Address, Ipv6Packet, Ipv6Repr, TcpControl,
        TcpPacket, TcpRepr, TcpSeqNumber,
    };

    /// A TCP frame as smoltcp emits it with TCP checksums off (checksum field zero).
    fn frame(v6: bool, payload: &[u8]) -> Vec<u8> {
        let tcp = TcpRepr {
            src_port: 40000,
            dst_port: 443,
            control: TcpControl::Psh,
            seq_number: TcpSeqNumber(7),
            ack_number: None,
            window_len: 1000,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload,
        };
        let mut caps = ChecksumCapabilities::default();
        caps.tcp = smoltcp::phy::Checksum::None;
        let (src, dst): (IpAddress, IpAddress) = if v6 {
            (
                Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100).into(),
                Ipv6Address::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).into(),
            )
        } else {
            (
                Ipv4Address::new(10, 0, 2, 100).into(),
                Ipv4Address::new(203, 0, 113, 10).into(),
            )
        };
        let ip_len = if v6 { 40 } else { 20 };
        let mut out = vec![0u8; ETH + ip_len + tcp.buffer_len()];
        let mut eth = EthernetFrame::new_unchecked(&mut out[..]);
        EthernetRepr {
            src_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
            dst_addr: EthernetAddress([2, 0, 0, 0, 0, 2]),
            ethertype: if v6 {
                EthernetProtocol::Ipv6
            } else {
                EthernetProtocol::Ipv4
            },
        }
        .emit(&mut eth);
        match (src, dst) {
            (IpAddress::Ipv4(s), IpAddress::Ipv4(d)) => {
                let repr = Ipv4Repr {
                    src_addr: s,
                    dst_addr: d,
                    next_header: IpProtocol::Tcp,
                    payload_len: tcp.buffer_len(),
                    hop_limit: 64,
                };
                let mut ip = Ipv4Packet::new_unchecked(&mut out[ETH..]);
                repr.emit(&mut ip, &caps);
            }
            (IpAddress::Ipv6(s), IpAddress::Ipv6(d)) => {
                let repr = Ipv6Repr {
                    src_addr: s,
                    dst_addr: d,
                    next_header: IpProtocol::Tcp,
                    payload_len: tcp.buffer_len(),
                    hop_limit: 64,
                };
                let mut ip = Ipv6Packet::new_unchecked(&mut out[ETH..]);
                repr.emit(&mut ip);
            }
            _ => unreachable!(),
        }
        let mut seg = TcpPacket::new_unchecked(&mut out[ETH + ip_len..]);
        tcp.emit(&mut seg, &src, &dst, &caps);
        out
    }

    /// What the device does with a partial checksum: sums from `start` to the end and
    /// stores the complement at `start + at`.
    fn finish(frame: &mut [u8], start: u16, at: usize) {
        let start = usize::from(start);
        let c = !fold(sum_words(&frame[start..], 0));
        frame[start + at..start + at + 2].copy_from_slice(&c.to_be_bytes());
    }

    /// The frame's IP source and destination.
    fn ip_addrs(frame: &[u8], v6: bool) -> (IpAddress, IpAddress) {
        if v6 {
            let ip = Ipv6Packet::new_checked(&frame[ETH..]).unwrap();
            (ip.src_addr().into(), ip.dst_addr().into())
        } else {
            let ip = Ipv4Packet::new_checked(&frame[ETH..]).unwrap();
            (ip.src_addr().into(), ip.dst_addr().into())
        }
    }

    fn verifies(frame: &[u8], v6: bool) -> bool {
        let ip_len = if v6 { 40 } else { 20 };
        let seg = TcpPacket::new_checked(&frame[ETH + ip_len..]).unwrap();
        let (src, dst) = ip_addrs(frame, v6);
        seg.verify_checksum(&src, &dst)
    }

    #[test]
    fn the_partial_checksum_finishes_to_the_full_one() {
        for v6 in [false, true] {
            for len in [0usize, 1, 2, 3, 1000, 1461, 9001] {
                let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
                let mut f = frame(v6, &payload);
                let o = prepare_tcp(&mut f, None).expect("a TCP frame");
                finish(&mut f, o.csum_start, TCP_CHECKSUM_AT);
                assert!(verifies(&f, v6), "v6={v6} len={len}");
                assert_eq!(usize::from(o.csum_start), ETH + if v6 { 40 } else { 20 });
                assert_eq!(usize::from(o.hdr_len), usize::from(o.csum_start) + 20);
            }
        }
    }

    #[test]
    fn segments_smoltcp_tags_are_marked_for_splitting() {
        let small = vec![1u8; 1460];
        let big = vec![1u8; 1461];
        let o = prepare_tcp(&mut frame(false, &small), Some(1460)).unwrap();
        assert_eq!(o.gso_size, None, "one segment's worth is sent as it is");
        assert_eq!(
            prepare_tcp(&mut frame(false, &big), None).unwrap().gso_size,
            None
        );
        let o = prepare_tcp(&mut frame(false, &big), Some(1460)).unwrap();
        assert_eq!(o.gso_size, Some(1460));
        let h = o.header();
        assert_eq!(h[0], NEEDS_CSUM);
        assert_eq!(h[1], GSO_TCPV4);
        assert_eq!(u16::from_ne_bytes([h[4], h[5]]), 1460);
        assert_eq!(u16::from_ne_bytes([h[6], h[7]]), 34);
        assert_eq!(u16::from_ne_bytes([h[8], h[9]]), 16);
        let o = prepare_tcp(&mut frame(true, &vec![1u8; 1441]), Some(1440)).unwrap();
        assert_eq!(o.gso_size, Some(1440));
        assert_eq!(o.header()[1], GSO_TCPV6);
    }

    #[test]
    fn non_tcp_and_malformed_frames_are_not_prepared() {
        let mut f = frame(false, b"x");
        f[ETH + 9] = 17;
        assert_eq!(prepare_tcp(&mut f, None), None);
        let mut f = frame(false, b"xyz");
        let n = f.len();
        assert_eq!(
            prepare_tcp(&mut f[..n - 1], None),
            None,
            "shorter than its IP length"
        );
        let mut f = frame(false, b"xyz");
        f[ETH + 6] = 0x20; // more fragments
        assert_eq!(prepare_tcp(&mut f, None), None);
        let mut f = frame(false, b"xyz");
        f[ETH + 20 + 12] = 0xf0; // TCP header longer than the packet
        assert_eq!(prepare_tcp(&mut f, None), None);
        for cut in 0..40 {
            let mut f = frame(true, b"xyz");
            let _ = prepare_tcp(&mut f[..cut], Some(1440));
        }
    }

    /// A UDP frame from 203.0.113.10:7778 (or 2001:db8::10) to the sandbox carrying
    /// `payload` (checksum zero), as the engine builds one.
    fn udp_frame(v6: bool, payload: &[u8]) -> Vec<u8> {
        let (src, dst): (std::net::SocketAddr, std::net::SocketAddr) = if v6 {
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
        let link = crate::Link {
            gateway_mac: smoltcp::wire::EthernetAddress([2, 0, 0, 0, 0, 1]),
            guest_mac: smoltcp::wire::EthernetAddress([2, 0, 0, 0, 0, 2]),
        };
        let at = crate::udp_payload_offset(src, dst).unwrap();
        let mut f = vec![0u8; at];
        f.extend_from_slice(payload);
        assert!(crate::udp_headers(&mut f, &link, src, dst));
        f
    }

    #[test]
    fn a_udp_frame_is_announced_for_splitting_with_its_pseudo_header_sum() {
        for v6 in [false, true] {
            let payload: Vec<u8> = (0..2500).map(|i| (i * 7 + 3) as u8).collect();
            let mut f = udp_frame(v6, &payload);
            let o = prepare_udp_segments(&mut f, 1000).expect("three datagrams");
            let ip_len = if v6 { 40 } else { 20 };
            assert_eq!(usize::from(o.csum_start), ETH + ip_len);
            let h = o.header();
            assert_eq!(h[0], NEEDS_CSUM);
            assert_eq!(h[1], GSO_UDP_L4);
            assert_eq!(
                usize::from(u16::from_ne_bytes([h[2], h[3]])),
                ETH + ip_len + 8
            );
            assert_eq!(u16::from_ne_bytes([h[4], h[5]]), 1000);
            assert_eq!(usize::from(u16::from_ne_bytes([h[6], h[7]])), ETH + ip_len);
            assert_eq!(u16::from_ne_bytes([h[8], h[9]]), 6);
            // Finishing the checksum over the whole frame, as a device would, gives the
            // frame's full UDP checksum: the field held the right pseudo-header sum.
            finish(&mut f, o.csum_start, UDP_CHECKSUM_AT);
            let start = usize::from(o.csum_start);
            let (src, dst) = ip_addrs(&f, v6);
            let udp = smoltcp::wire::UdpPacket::new_checked(&f[start..]).unwrap();
            assert!(udp.verify_checksum(&src, &dst), "v6={v6}");
            // Split, each datagram is the one the plain path writes.
            let pieces = split_udp_reference(&udp_frame(v6, &payload), &o);
            let sizes: Vec<usize> = pieces.iter().map(|p| p.len() - start - 8).collect();
            assert_eq!(sizes, [1000, 1000, 500]);
        }
    }

    #[test]
    fn udp_frames_that_are_not_several_datagrams_are_not_prepared() {
        let one = vec![1u8; 1000];
        assert_eq!(
            prepare_udp_segments(&mut udp_frame(false, &one), 1000),
            None
        );
        assert_eq!(prepare_udp_segments(&mut udp_frame(false, &one), 0), None);
        let many = vec![1u8; 65 * 100];
        assert_eq!(
            prepare_udp_segments(&mut udp_frame(false, &many), 100),
            None,
            "more than MAX_UDP_SEGMENTS"
        );
        assert!(prepare_udp_segments(&mut udp_frame(false, &many), 102).is_some());
        let mut tcp = frame(false, &[1u8; 3000]);
        assert_eq!(prepare_udp_segments(&mut tcp, 1000), None);
        let two = udp_frame(true, &[1u8; 2000]);
        for cut in 0..two.len() {
            let mut f = two[..cut].to_vec();
            assert_eq!(prepare_udp_segments(&mut f, 1000), None, "cut at {cut}");
        }
    }
}
