//! The host's own addresses, which belong to the `Loopback` group (shared/API.md): a
//! service the host binds to every interface answers on each of them, so reaching
//! 192.0.2.7:8089 from the sandbox is reaching the host's loopback by another name.
//!
//! # Theory of operation
//! The set is what the kernel's local routing table holds for the host's interfaces: each
//! interface address and, for IPv4, its broadcast address, read with getifaddrs(3). It is
//! followed as addresses come and go: a netlink route socket subscribed to the IPv4 and IPv6
//! address groups (rtnetlink(7), RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR) sits in the engine's
//! poll; any message on it (or an overrun, ENOBUFS) means "something changed", and the set is
//! read again whole — nothing of the messages themselves is parsed. Where netlink cannot be
//! opened the set is read once, and again at each sweep of the engine.

use std::collections::HashSet;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use moat_policy::canonical_addr;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, socket,
};

/// rtnetlink multicast groups of address changes (include/uapi/linux/rtnetlink.h).
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV6_IFADDR: u32 = 0x100;

/// The host's addresses and the socket that says when they change.
#[derive(Debug)]
pub(crate) struct HostAddrs {
    addrs: HashSet<IpAddr>,
    watch: Option<OwnedFd>,
    /// Addresses left out of the set (`EngineConfig::simulated_hosts`).
    simulated: HashSet<IpAddr>,
}

impl HostAddrs {
    /// Reads the set and subscribes to its changes.
    pub(crate) fn new(simulated: &[IpAddr]) -> HostAddrs {
        let simulated: HashSet<IpAddr> = simulated.iter().map(|a| canonical_addr(*a)).collect();
        HostAddrs {
            addrs: read(&simulated),
            watch: subscribe().ok(),
            simulated,
        }
    }

    /// True when `addr` (any form) is one of the host's own addresses.
    pub(crate) fn contains(&self, addr: IpAddr) -> bool {
        self.addrs.contains(&canonical_addr(addr))
    }

    /// The set, for the DNS filter's rebind protection.
    pub(crate) fn set(&self) -> &HashSet<IpAddr> {
        &self.addrs
    }

    /// The change socket, for the poll.
    pub(crate) fn watch_fd(&self) -> Option<RawFd> {
        self.watch.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// True when the set follows changes as they happen (else [`HostAddrs::refresh`] is
    /// called at each sweep).
    pub(crate) fn is_watched(&self) -> bool {
        self.watch.is_some()
    }

    /// Drains the change socket and reads the set again; `true` when it changed.
    pub(crate) fn refresh(&mut self) -> bool {
        if let Some(fd) = &self.watch {
            let mut buf = [0u8; 8192];
            // Bounded: a storm of changes is read again at the next wake.
            for _ in 0..64 {
                match recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(nix::errno::Errno::EAGAIN) => break,
                    Err(nix::errno::Errno::EINTR) => {}
                    // ENOBUFS: messages were lost; the set is read whole anyway.
                    Err(_) => break,
                }
            }
        }
        let now = read(&self.simulated);
        let changed = now != self.addrs;
        self.addrs = now;
        changed
    }
}

fn subscribe() -> io::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )?;
    bind(
        fd.as_raw_fd(),
        &NetlinkAddr::new(0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR),
    )?;
    Ok(fd)
}

/// Every address of the host's interfaces, and IPv4 broadcast addresses, canonical; less
/// `simulated`.
fn read(simulated: &HashSet<IpAddr>) -> HashSet<IpAddr> {
    let mut out = HashSet::new();
    let Ok(ifaddrs) = nix::ifaddrs::getifaddrs() else {
        return out;
    };
    for ifa in ifaddrs {
        for addr in [ifa.address, ifa.broadcast].into_iter().flatten() {
            if let Some(v4) = addr.as_sockaddr_in() {
                out.insert(canonical_addr(IpAddr::V4(v4.ip())));
            } else if let Some(v6) = addr.as_sockaddr_in6() {
                out.insert(canonical_addr(IpAddr::V6(v6.ip())));
            }
        }
    }
    out.retain(|a| !simulated.contains(a));
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Test code.
    use super::*;

    #[test]
    fn reads_this_hosts_loopback_and_subscribes() {
        let h = HostAddrs::new(&[]);
        assert!(h.contains("127.0.0.1".parse().unwrap()), "{:?}", h.set());
        assert!(h.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!h.contains("203.0.113.250".parse().unwrap()));
        assert!(h.is_watched());
        let mut h = h;
        assert!(!h.refresh() || h.contains("127.0.0.1".parse().unwrap()));
        let simulated = HostAddrs::new(&["127.0.0.1".parse().unwrap()]);
        assert!(!simulated.contains("127.0.0.1".parse().unwrap()));
    }
}
