//! The few rtnetlink requests moat makes of the calling thread's network namespace
//! (rtnetlink(7)): delete an interface, move one to another namespace, bring one up, read
//! its MAC, give it an address and a route. Each request is one message on a fresh socket,
//! answered by one acknowledgement (or, for a read, one reply); built and read here in plain
//! bytes, with no `unsafe`.
//!
//! A message is a `struct nlmsghdr` (16 bytes), the request's fixed header (`ifinfomsg`,
//! `ifaddrmsg` or `rtmsg`), then attributes: a 4-byte `rtattr` (length, type) and the value,
//! each padded to 4 bytes. Replies are read the same way, bounded by their own lengths: a
//! length that runs past the bytes received (or is shorter than its own header) ends the
//! reading, never an index past them.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recvfrom, sendto,
    socket,
};

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const NLMSG_ERROR: u16 = 2;
/// Each request's sequence number (one request per socket).
const SEQ: u32 = 0x6d6f_6174;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const IFLA_ADDRESS: u16 = 1;
const IFLA_NET_NS_FD: u16 = 28;
const IFA_LOCAL: u16 = 2;
const IFA_ADDRESS: u16 = 1;
const IFA_FLAGS: u16 = 8;
const IFA_F_NODAD: u32 = 0x02;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const IFF_UP: u32 = 0x1;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;

fn family(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// One request being built: the header's length is filled in by [`Request::send`].
struct Request(Vec<u8>);

impl Request {
    fn new(kind: u16, flags: u16, fixed: &[u8]) -> Request {
        let mut msg = Vec::with_capacity(64);
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        msg.extend_from_slice(&SEQ.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(fixed);
        Request(msg)
    }

    fn attr(mut self, kind: u16, value: &[u8]) -> Request {
        let len = 4 + value.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(value);
        self.0.resize(self.0.len().next_multiple_of(4), 0);
        self
    }

    /// Sends the request and returns the first message of the answer.
    fn send(mut self) -> io::Result<Vec<u8>> {
        let len = self.0.len() as u32;
        self.0[..4].copy_from_slice(&len.to_ne_bytes());
        let sock = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )?;
        sendto(
            sock.as_raw_fd(),
            &self.0,
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )?;
        // Only the kernel's answer to this request counts (port 0, this sequence number):
        // on a socket opened inside a namespace someone else controls, another process
        // could send one of its own.
        let mut buf = vec![0u8; 8192];
        for _ in 0..16 {
            let (n, from) = recvfrom::<NetlinkAddr>(sock.as_raw_fd(), &mut buf)?;
            let kernel = from.is_some_and(|a| a.pid() == 0);
            let seq = buf
                .get(8..12)
                .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
            if kernel && n >= 16 && seq == Some(SEQ) {
                buf.truncate(n);
                return Ok(buf);
            }
        }
        Err(io::Error::other(
            "no answer from the kernel to the rtnetlink request",
        ))
    }

    /// Sends the request and waits for its acknowledgement.
    fn acked(self) -> io::Result<()> {
        let answer = self.send()?;
        match error_code(&answer) {
            Some(0) => Ok(()),
            Some(code) => Err(io::Error::from_raw_os_error(code.saturating_neg())),
            None => Err(io::Error::other("no acknowledgement from rtnetlink")),
        }
    }
}

/// The error code of an `NLMSG_ERROR` answer (0: acknowledged).
fn error_code(answer: &[u8]) -> Option<i32> {
    let kind = u16::from_ne_bytes(answer.get(4..6)?.try_into().ok()?);
    (kind == NLMSG_ERROR).then_some(())?;
    Some(i32::from_ne_bytes(answer.get(16..20)?.try_into().ok()?))
}

/// `struct ifinfomsg` for interface `index`, with `flags` under `change`.
fn ifinfo(index: u32, flags: u32, change: u32) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[4..8].copy_from_slice(&(index as i32).to_ne_bytes());
    m[8..12].copy_from_slice(&flags.to_ne_bytes());
    m[12..16].copy_from_slice(&change.to_ne_bytes());
    m
}

/// Deletes interface `index` (a veth takes its peer with it).
pub(crate) fn delete_link(index: u32) -> io::Result<()> {
    Request::new(RTM_DELLINK, NLM_F_ACK, &ifinfo(index, 0, 0)).acked()
}

/// Moves interface `index` into the network namespace `to` (its addresses and routes stay
/// behind: the kernel drops them, and the interface arrives down).
pub(crate) fn move_link(index: u32, to: BorrowedFd<'_>) -> io::Result<()> {
    let fd = to.as_raw_fd() as u32;
    Request::new(RTM_NEWLINK, NLM_F_ACK, &ifinfo(index, 0, 0))
        .attr(IFLA_NET_NS_FD, &fd.to_ne_bytes())
        .acked()
}

/// Brings interface `index` up.
pub(crate) fn set_up(index: u32) -> io::Result<()> {
    Request::new(RTM_NEWLINK, NLM_F_ACK, &ifinfo(index, IFF_UP, IFF_UP)).acked()
}

/// The hardware address of interface `index`.
pub(crate) fn mac(index: u32) -> io::Result<[u8; 6]> {
    let answer = Request::new(RTM_GETLINK, 0, &ifinfo(index, 0, 0)).send()?;
    if let Some(code) = error_code(&answer).filter(|&c| c != 0) {
        return Err(io::Error::from_raw_os_error(code.saturating_neg()));
    }
    // nlmsghdr (16), ifinfomsg (16), then attributes.
    attrs(answer.get(32..).unwrap_or_default())
        .find(|(kind, _)| *kind == IFLA_ADDRESS)
        .and_then(|(_, value)| value.try_into().ok())
        .ok_or_else(|| io::Error::other("the interface has no Ethernet address"))
}

/// The attributes in `bytes`, up to the first that does not fit.
fn attrs(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16::from_ne_bytes(bytes.get(0..2)?.try_into().ok()?));
        let kind = u16::from_ne_bytes(bytes.get(2..4)?.try_into().ok()?);
        // Shorter than its own header: malformed (and 0 would never advance).
        let value = bytes.get(4..len).filter(|_| len >= 4)?;
        bytes = bytes.get(len.next_multiple_of(4)..).unwrap_or_default();
        Some((kind & 0x3fff, value))
    })
}

/// Gives interface `index` the address `ip/prefix` (IPv6 without duplicate address
/// detection: the address was handed out by the cluster's address management).
pub(crate) fn add_address(index: u32, ip: IpAddr, prefix: u8) -> io::Result<()> {
    let mut fixed = [0u8; 8];
    fixed[0] = family(ip);
    fixed[1] = prefix;
    fixed[4..8].copy_from_slice(&index.to_ne_bytes());
    let mut req = Request::new(RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, &fixed)
        .attr(IFA_LOCAL, &octets(ip))
        .attr(IFA_ADDRESS, &octets(ip));
    if ip.is_ipv6() {
        req = req.attr(IFA_FLAGS, &IFA_F_NODAD.to_ne_bytes());
    }
    req.acked()
}

/// Adds a route to `dst/prefix` through interface `index`: via `gateway`, or on the link
/// when there is none.
pub(crate) fn add_route(
    index: u32,
    dst: IpAddr,
    prefix: u8,
    gateway: Option<IpAddr>,
) -> io::Result<()> {
    let mut fixed = [0u8; 12];
    fixed[0] = family(dst);
    fixed[1] = prefix;
    fixed[4] = RT_TABLE_MAIN;
    fixed[5] = RTPROT_BOOT;
    fixed[6] = if gateway.is_some() {
        RT_SCOPE_UNIVERSE
    } else {
        RT_SCOPE_LINK
    };
    fixed[7] = RTN_UNICAST;
    let mut req = Request::new(RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, &fixed)
        .attr(RTA_OIF, &index.to_ne_bytes());
    if prefix > 0 {
        req = req.attr(RTA_DST, &octets(dst));
    }
    if let Some(gw) = gateway {
        req = req.attr(RTA_GATEWAY, &octets(gw));
    }
    req.acked()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_read_within_their_bytes() {
        let req = Request::new(RTM_NEWLINK, 0, &[])
            .attr(IFLA_ADDRESS, &[2, 0, 0, 0, 0, 1])
            .attr(3, b"eth0\0");
        let body = &req.0[16..];
        let got: Vec<(u16, &[u8])> = attrs(body).collect();
        assert_eq!(
            got,
            [(IFLA_ADDRESS, &[2, 0, 0, 0, 0, 1][..]), (3, &b"eth0\0"[..])]
        );
        // A length past the end, or under the header's, ends the reading.
        assert_eq!(attrs(&[200, 0, 1, 0, 9, 9]).count(), 0);
        assert_eq!(attrs(&[2, 0, 1, 0]).count(), 0);
        assert_eq!(attrs(&[0, 0, 1, 0, 4, 0, 1, 0]).count(), 0);
        assert_eq!(attrs(&[4, 0, 1, 0]).count(), 1);
        assert_eq!(attrs(&[8, 0, 1]).count(), 0);
    }

    #[test]
    fn an_answer_is_an_acknowledgement_only_when_it_says_so() {
        let mut ack = vec![0u8; 36];
        ack[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        assert_eq!(error_code(&ack), Some(0));
        ack[16..20].copy_from_slice(&(-17i32).to_ne_bytes());
        assert_eq!(error_code(&ack), Some(-17));
        ack[4..6].copy_from_slice(&RTM_NEWLINK.to_ne_bytes());
        assert_eq!(error_code(&ack), None);
        assert_eq!(error_code(&ack[..10]), None);
    }
}
