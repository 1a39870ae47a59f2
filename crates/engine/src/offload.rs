//! TCP offloads across the TAP: the virtio-net header in front of each frame, and what the
//! engine does so 64 KiB TCP segments cross the link in one frame each way without a
//! software checksum.
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
//! References: the virtio specification 1.2 §5.1.6 (struct virtio_net_hdr), Linux
//! Documentation/networking/tuntap.rst and segmentation-offloads.rst, RFC 9293 §3.7.1 (MSS).

/// Bytes of the virtio-net header in front of each frame (`virtio_net_hdr_mrg_rxbuf`).
pub const VNET_HDR_LEN: usize = 12;

/// The largest IP packet a segment may fill.
pub const MAX_IP_PACKET: usize = 65535;

const ETH: usize = 14;
const NEEDS_CSUM: u8 = 1;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const TCP_CHECKSUM_AT: usize = 16;

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
        let mut h = [0u8; VNET_HDR_LEN];
        h[0] = NEEDS_CSUM;
        // The header is in the host's byte order (legacy virtio, TUNSETVNETLE/BE unset).
        h[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        if let Some(size) = self.gso_size {
            h[1] = if self.v6 { GSO_TCPV6 } else { GSO_TCPV4 };
            h[4..6].copy_from_slice(&size.to_ne_bytes());
        } else {
            h[1] = GSO_NONE;
        }
        h[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        h[8..10].copy_from_slice(&(TCP_CHECKSUM_AT as u16).to_ne_bytes());
        h
    }
}

/// The header for a frame that needs nothing done (checksums complete, one segment).
pub const PLAIN_HEADER: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

/// Where the TCP header of an Ethernet frame starts, with its IP version, when the frame
/// is an unfragmented TCP packet without IPv6 extension headers; also the IP packet's length
/// as its header states.
fn tcp_at(frame: &[u8]) -> Option<(usize, bool, usize)> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    match ethertype {
        0x0800 => {
            let ihl = usize::from(frame.get(ETH)? & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([
                *frame.get(ETH + 2)?,
                *frame.get(ETH + 3)?,
            ]));
            let frag = u16::from_be_bytes([*frame.get(ETH + 6)?, *frame.get(ETH + 7)?]);
            let proto = *frame.get(ETH + 9)?;
            (ihl >= 20 && proto == 6 && frag & 0x3fff == 0 && total >= ihl + 20).then_some((
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
            (*frame.get(ETH + 6)? == 6 && payload >= 20).then_some((ETH + 40, true, 40 + payload))
        }
        _ => None,
    }
    .filter(|&(at, _, total)| frame.len() >= ETH + total && at + 20 <= frame.len())
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

/// Prepares a TCP frame from smoltcp (checksum not computed) for an offloading device:
/// writes the pseudo-header sum where the checksum goes, as the device expects, and says
/// how the sandbox is to finish it; `segment` is the payload size smoltcp asked the frame
/// to be split into, if any. `None` for anything but a well-formed TCP frame.
pub fn prepare_tcp(frame: &mut [u8], segment: Option<u16>) -> Option<TcpOffload> {
    let (at, v6, ip_total) = tcp_at(frame)?;
    let tcp_hl = usize::from(frame[at + 12] >> 4) * 4;
    let ip_hl = at - ETH;
    let tcp_len = ip_total - ip_hl;
    if tcp_hl < 20 || tcp_hl > tcp_len {
        return None;
    }
    let sum = if v6 {
        let s = sum_words(&frame[ETH + 8..ETH + 40], 0);
        s + 6 + tcp_len as u32
    } else {
        let s = sum_words(&frame[ETH + 12..ETH + 20], 0);
        s + 6 + tcp_len as u32
    };
    frame[at + TCP_CHECKSUM_AT..at + TCP_CHECKSUM_AT + 2].copy_from_slice(&fold(sum).to_be_bytes());
    let payload = tcp_len - tcp_hl;
    let gso_size = segment.filter(|&size| size > 0 && payload > usize::from(size));
    Some(TcpOffload {
        csum_start: at as u16,
        hdr_len: (at + tcp_hl) as u16,
        gso_size,
        v6,
    })
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

    /// What the device does with a partial checksum: sums from `csum_start` to the end and
    /// stores the complement at `csum_start + 16`.
    fn finish(frame: &mut [u8], o: &TcpOffload) {
        let start = usize::from(o.csum_start);
        let c = !fold(sum_words(&frame[start..], 0));
        frame[start + 16..start + 18].copy_from_slice(&c.to_be_bytes());
    }

    fn verifies(frame: &[u8], v6: bool) -> bool {
        let ip_len = if v6 { 40 } else { 20 };
        let seg = TcpPacket::new_checked(&frame[ETH + ip_len..]).unwrap();
        let (src, dst): (IpAddress, IpAddress) = if v6 {
            let ip = Ipv6Packet::new_checked(&frame[ETH..]).unwrap();
            (ip.src_addr().into(), ip.dst_addr().into())
        } else {
            let ip = Ipv4Packet::new_checked(&frame[ETH..]).unwrap();
            (ip.src_addr().into(), ip.dst_addr().into())
        };
        seg.verify_checksum(&src, &dst)
    }

    #[test]
    fn the_partial_checksum_finishes_to_the_full_one() {
        for v6 in [false, true] {
            for len in [0usize, 1, 2, 3, 1000, 1461, 9001] {
                let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
                let mut f = frame(v6, &payload);
                let o = prepare_tcp(&mut f, None).expect("a TCP frame");
                finish(&mut f, &o);
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
}
