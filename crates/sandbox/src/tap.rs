//! moat's TAP in a network namespace: made, addressed and routed the same way whether the
//! namespace is a sandbox of moat's own (`supervisor/net.rs`) or one someone else made
//! (`netns.rs`). Runs on a thread that is in that namespace, with `/dev/net/tun` opened
//! there: an interface belongs to the namespace its device was opened in.

use std::ffi::CString;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use crate::proto::NetSpec;
use crate::sys;

/// What failed, and where.
pub(crate) type Step<T> = Result<T, (&'static str, io::Error)>;

fn at<T, E: Into<io::Error>>(step: &'static str, r: Result<T, E>) -> Step<T> {
    r.map_err(|e| (step, e.into()))
}

/// Creates the TAP `net.tap_name` on `tun` (/dev/net/tun opened in the namespace) with its
/// MTU, addresses and default routes (IPv6 where the namespace has it), and brings it up.
pub(crate) fn make(net: &NetSpec, tun: OwnedFd) -> Step<OwnedFd> {
    let tap = at(
        "open /dev/net/tun and create the TAP",
        sys::open_tap(tun, &net.tap_name),
    )?;
    at("set the TAP's MTU", sys::set_mtu(&net.tap_name, net.mtu))?;
    at(
        "set the TAP's IPv4 address",
        sys::set_ipv4(&net.tap_name, net.guest_v4, net.prefix_v4),
    )?;
    // /proc/sys/net shows the namespace of the thread that looks.
    let v6_conf = Path::new("/proc/sys/net/ipv6/conf").join(&net.tap_name);
    let ipv6 = v6_conf.exists();
    if ipv6 {
        // The address is configured statically: no duplicate address detection (the link
        // has one other node, moat) and no router advertisements to act on.
        at(
            "disable IPv6 DAD",
            std::fs::write(v6_conf.join("accept_dad"), "0"),
        )?;
        at(
            "disable IPv6 RA",
            std::fs::write(v6_conf.join("accept_ra"), "0"),
        )?;
    }
    at("bring up the TAP", sys::set_up(&net.tap_name))?;
    let dev = at(
        "interface name",
        CString::new(net.tap_name.as_str()).map_err(io::Error::other),
    )?;
    let index = at("find the TAP's index", sys::if_index(&net.tap_name))?;
    // A gateway outside the address's prefix (a pod's address given as /32, moat-cni) is
    // reached on the link: a route to it first, or the default route through it is refused.
    if !within(net.guest_v4.into(), net.prefix_v4, net.gateway_v4.into()) {
        at(
            "add the IPv4 route to the gateway",
            crate::rtnl::add_route(index, net.gateway_v4.into(), 32, None),
        )?;
    }
    at(
        "add the IPv4 default route",
        sys::add_default_route_v4(&dev, net.gateway_v4),
    )?;
    if ipv6 {
        at(
            "set the TAP's IPv6 address",
            sys::add_ipv6(index, net.guest_v6, net.prefix_v6),
        )?;
        if !within(net.guest_v6.into(), net.prefix_v6, net.gateway_v6.into()) {
            at(
                "add the IPv6 route to the gateway",
                crate::rtnl::add_route(index, net.gateway_v6.into(), 128, None),
            )?;
        }
        at(
            "add the IPv6 default route",
            sys::add_default_route_v6(index, net.gateway_v6),
        )?;
    }
    Ok(tap)
}

/// Whether `other` lies in `addr/prefix`.
pub(crate) fn within(addr: std::net::IpAddr, prefix: u8, other: std::net::IpAddr) -> bool {
    use std::net::IpAddr::{V4, V6};
    let (a, b, bits) = match (addr, other) {
        (V4(a), V4(b)) => (u128::from(u32::from(a)), u128::from(u32::from(b)), 32u32),
        (V6(a), V6(b)) => (u128::from(a), u128::from(b), 128),
        _ => return false,
    };
    let host = bits.saturating_sub(u32::from(prefix));
    host >= bits || a.checked_shr(host) == b.checked_shr(host)
}

#[cfg(test)]
mod tests {
    use super::within;

    #[test]
    fn a_gateway_is_on_the_link_when_the_prefix_holds_it() {
        let v4 = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert!(within(v4("10.0.2.100"), 24, v4("10.0.2.2")));
        assert!(!within(v4("10.88.0.5"), 32, v4("10.88.0.1")));
        assert!(within(v4("10.88.0.5"), 16, v4("10.88.0.1")));
        assert!(!within(v4("10.88.0.5"), 24, v4("10.89.0.1")));
        assert!(within(v4("fd00::100"), 64, v4("fd00::2")));
        assert!(!within(v4("fd00::100"), 128, v4("fd00::2")));
        assert!(within(v4("1.2.3.4"), 0, v4("9.9.9.9")));
        assert!(!within(v4("1.2.3.4"), 0, v4("::1")));
        assert!(within(v4("fd00::1"), 0, v4("2001:db8::1")));
    }
}
