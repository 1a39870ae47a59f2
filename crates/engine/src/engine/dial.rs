//! The only places the engine opens sockets toward the world. Each takes the proof that
//! the policy allowed it ([`Permit`] for flows, [`NamePermit`] for DNS lookups): a path
//! that skipped the policy does not compile.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use mio::net::{TcpStream, UdpSocket};
use moat_policy::{NamePermit, Permit, canonical_addr};
use moat_wire::icmp::{self, EchoKind};

fn check(permit: &Permit, addr: IpAddr) -> io::Result<()> {
    if canonical_addr(permit.addr()) == canonical_addr(addr) {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "permit is for another address",
        ))
    }
}

fn unspecified_for(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}

/// A non-blocking TCP connection to `addr`.
pub(super) fn tcp(addr: SocketAddr, permit: &Permit) -> io::Result<TcpStream> {
    check(permit, addr.ip())?;
    TcpStream::connect(addr)
}

/// A UDP socket connected to `addr`.
pub(super) fn udp(addr: SocketAddr, permit: &Permit) -> io::Result<UdpSocket> {
    check(permit, addr.ip())?;
    let sock = UdpSocket::bind(unspecified_for(addr))?;
    sock.connect(addr)?;
    Ok(sock)
}

/// A ping (or raw ICMP) socket connected to `addr`.
pub(super) fn echo(addr: IpAddr, permit: &Permit) -> io::Result<(UdpSocket, EchoKind)> {
    check(permit, addr)?;
    icmp::open(addr)
}

/// A socket connected to resolver `server` (on a random port), for queries to share.
pub(super) fn resolver_socket(server: SocketAddr) -> io::Result<UdpSocket> {
    let sock = UdpSocket::bind(unspecified_for(server))?;
    sock.connect(server)?;
    Ok(sock)
}

/// Sends a DNS query upstream on a resolver socket.
pub(super) fn resolver_send(
    sock: &UdpSocket,
    _permit: &NamePermit,
    message: &[u8],
) -> io::Result<()> {
    sock.send(message).map(|_| ())
}
