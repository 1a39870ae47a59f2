//! Step 2: the sandbox's network: `lo` up, and the TAP (when the sandbox has a network)
//! with its address, MTU and routes (`tap.rs`), its descriptor handed to moat; and the
//! settings of the sandbox's own namespace that its commands expect.

use std::os::fd::OwnedFd;

use super::Stage;
use crate::proto::NetSpec;

pub(super) fn network(net: &NetSpec, tun: OwnedFd) -> Stage<OwnedFd> {
    // Let the sandbox's root (gid 0, the one group mapped) ping with unprivileged ICMP
    // sockets (a per-namespace setting); moat relays the echoes it allows. Not fatal where
    // /proc/sys is read-only.
    let _ = std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 0");
    // Let commands bind ports below 1024 (a server on 80 behind `-p 8080:80`) whatever
    // capabilities they keep: a per-namespace setting, and this namespace is the sandbox's.
    let _ = std::fs::write("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0");
    // A build or test that opens many short connections reuses its TIME-WAIT ports (the
    // far end is moat's stack, which keeps no old segments to confuse them), instead of
    // running out of the ephemeral range in a minute.
    let _ = std::fs::write("/proc/sys/net/ipv4/tcp_tw_reuse", "1");
    crate::tap::make(net, tun)
}
