//! Step 2: the sandbox's network: `lo` up, and the TAP (when the sandbox has a network)
//! with its address, MTU and routes, its descriptor handed to moat.

use std::ffi::CString;
use std::io::{self};
use std::os::fd::OwnedFd;
use std::path::Path;

use super::{Stage, at};
use crate::proto::NetSpec;
use crate::sys;

pub(super) fn network(net: &NetSpec, tun: OwnedFd) -> Stage<OwnedFd> {
    let tap = at(
        "open /dev/net/tun and create the TAP",
        sys::open_tap(tun, &net.tap_name),
    )?;
    at("set the TAP's MTU", sys::set_mtu(&net.tap_name, net.mtu))?;
    at(
        "set the TAP's IPv4 address",
        sys::set_ipv4(&net.tap_name, net.guest_v4, net.prefix_v4),
    )?;
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
    // Let the sandbox's root (gid 0, the one group mapped) ping with unprivileged ICMP sockets (a per-namespace
    // setting); moat relays the echoes it allows. Not fatal where /proc/sys is read-only.
    let _ = std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 0");
    // Let commands bind ports below 1024 (a server on 80 behind `-p 8080:80`) whatever
    // capabilities they keep: a per-namespace setting, and this namespace is the sandbox's.
    let _ = std::fs::write("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0");
    // A build or test that opens many short connections reuses its TIME-WAIT ports (the
    // far end is moat's stack, which keeps no old segments to confuse them), instead of
    // running out of the ephemeral range in a minute.
    let _ = std::fs::write("/proc/sys/net/ipv4/tcp_tw_reuse", "1");
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
