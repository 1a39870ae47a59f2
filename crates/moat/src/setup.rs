//! What `moat run` and the Rust API both give a sandbox: its interface, /etc/hosts and
//! /etc/resolv.conf, from the engine's link addresses.

use moat_engine::LinkConfig;
use moat_sandbox::NetSpec;

/// The sandbox's one interface.
pub(crate) fn net_spec(link: &LinkConfig) -> NetSpec {
    NetSpec {
        tap_name: "eth0".into(),
        mtu: link.mtu as u32,
        guest_v4: link.guest_v4,
        gateway_v4: link.gateway_v4,
        prefix_v4: link.prefix_v4,
        guest_v6: link.guest_v6,
        gateway_v6: link.gateway_v6,
        prefix_v6: link.prefix_v6,
    }
}

/// /etc/hosts: localhost, the sandbox's own name, and `host.moat.internal` for the gateway
/// (the host's loopback).
pub(crate) fn hosts_file(name: &str, link: &LinkConfig) -> String {
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{}\t{name}\n{}\thost.moat.internal\n",
        link.guest_v4, link.gateway_v4
    )
}

/// /etc/resolv.conf: the gateway, where moat answers DNS.
pub(crate) fn resolv_conf(link: &LinkConfig) -> String {
    format!("nameserver {}\n", link.gateway_v4)
}
