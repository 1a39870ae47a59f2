//! ICMP echo relay: the sandbox's pings to allowed destinations leave from host sockets.
//!
//! Preferred: unprivileged ping sockets (`SOCK_DGRAM`/`IPPROTO_ICMP`, allowed when the
//! process's group is in `net.ipv4.ping_group_range`); the kernel picks the identifier and
//! fills the checksum, and hands back only that socket's replies. Otherwise, with
//! `CAP_NET_RAW`, a raw socket connected to the destination, with an identifier of moat's
//! choosing; replies are matched on it. Neither: the echo cannot be relayed (counted).
//!
//! RFC 792 (ICMPv4 echo), RFC 4443 §4 (ICMPv6 echo).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;

use nix::sys::socket::{AddressFamily, SockFlag, SockProtocol, SockType, socket};

/// How an echo flow's socket works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EchoKind {
    /// An unprivileged ping socket: no IP header, kernel-managed identifier.
    Ping,
    /// A raw socket: IPv4 replies come with their IP header; identifier is ours.
    Raw,
}

/// Opens a socket for echoing to `dst`, connected to it.
pub fn open(dst: IpAddr) -> io::Result<(mio::net::UdpSocket, EchoKind)> {
    let (family, proto) = match dst {
        IpAddr::V4(_) => (AddressFamily::Inet, SockProtocol::Icmp),
        IpAddr::V6(_) => (AddressFamily::Inet6, SockProtocol::IcmpV6),
    };
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    let (fd, kind): (OwnedFd, EchoKind) = match socket(family, SockType::Datagram, flags, proto) {
        Ok(fd) => (fd, EchoKind::Ping),
        Err(_) => (socket(family, SockType::Raw, flags, proto)?, EchoKind::Raw),
    };
    // A datagram-style socket: std's UdpSocket wrapper only issues connect/send/recv.
    let std_sock = std::net::UdpSocket::from(fd);
    std_sock.connect(SocketAddr::new(dst, 0))?;
    Ok((mio::net::UdpSocket::from_std(std_sock), kind))
}

/// The Internet checksum (RFC 1071) of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The echo request to send for the sandbox's `seq` and `data`.
pub fn request(out: &mut Vec<u8>, v6: bool, kind: EchoKind, ident: u16, seq: u16, data: &[u8]) {
    out.clear();
    out.push(if v6 { 128 } else { 8 });
    out.push(0);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&ident.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(data);
    // Ping sockets and raw ICMPv6 sockets get their checksum from the kernel.
    if kind == EchoKind::Raw && !v6 {
        let c = checksum(out);
        out[2..4].copy_from_slice(&c.to_be_bytes());
    }
}

/// Parses a received echo reply: `(identifier, sequence, data)`.
pub fn reply(buf: &[u8], v6: bool, kind: EchoKind) -> Option<(u16, u16, &[u8])> {
    let icmp = if kind == EchoKind::Raw && !v6 {
        let ihl = usize::from(buf.first()? & 0x0f) * 4;
        buf.get(ihl..)?
    } else {
        buf
    };
    let reply_type = if v6 { 129 } else { 0 };
    if icmp.len() < 8 || icmp[0] != reply_type || icmp[1] != 0 {
        return None;
    }
    let ident = u16::from_be_bytes([icmp[4], icmp[5]]);
    let seq = u16::from_be_bytes([icmp[6], icmp[7]]);
    Some((ident, seq, &icmp[8..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies() {
        let mut out = Vec::new();
        request(&mut out, false, EchoKind::Raw, 0x1234, 7, b"abc");
        assert_eq!(&out[..2], &[8, 0]);
        assert_eq!(
            checksum(&out),
            0,
            "a message with its checksum sums to zero"
        );
        request(&mut out, true, EchoKind::Ping, 1, 2, b"");
        assert_eq!(out, [128, 0, 0, 0, 0, 1, 0, 2]);

        let mut ipv4_reply = vec![0x45u8; 20];
        ipv4_reply.extend_from_slice(&[0, 0, 0, 0, 0x12, 0x34, 0, 7, b'x']);
        assert_eq!(
            reply(&ipv4_reply, false, EchoKind::Raw),
            Some((0x1234, 7, &b"x"[..]))
        );
        assert_eq!(
            reply(&ipv4_reply[20..], false, EchoKind::Ping),
            Some((0x1234, 7, &b"x"[..]))
        );
        assert_eq!(
            reply(&[129, 0, 0, 0, 0, 1, 0, 2], true, EchoKind::Ping),
            Some((1, 2, &b""[..]))
        );
        // Requests, errors, short and empty buffers are not replies.
        assert_eq!(
            reply(&[8, 0, 0, 0, 0, 1, 0, 2], false, EchoKind::Ping),
            None
        );
        assert_eq!(reply(&[3, 1, 0, 0], false, EchoKind::Ping), None);
        assert_eq!(reply(&[], false, EchoKind::Raw), None);
        assert_eq!(reply(&[0x4f], false, EchoKind::Raw), None);
    }
}
