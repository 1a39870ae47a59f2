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
    at(
        "add the IPv4 default route",
        sys::add_default_route_v4(&dev, net.gateway_v4),
    )?;
    if ipv6 {
        let index = at("find the TAP's index", sys::if_index(&net.tap_name))?;
        at(
            "set the TAP's IPv6 address",
            sys::add_ipv6(index, net.guest_v6, net.prefix_v6),
        )?;
        at(
            "add the IPv6 default route",
            sys::add_default_route_v6(index, net.gateway_v6),
        )?;
    }
    Ok(tap)
}
