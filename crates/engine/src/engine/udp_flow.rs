//! A UDP flow from the sandbox: its state and what happens to its datagrams.
//!
//! # Theory of operation
//! UDP never enters smoltcp. Each (sandbox address and port, destination) pair is a flow,
//! judged by its first datagram, with a host socket *connected* to the destination, so
//! replies come only from there (the kernel drops the rest). A flow idle for
//! `udp_idle_timeout` expires. DNS (port 53) does not reach this file: the interceptor
//! answers it (`dns_flow.rs`); other resolver transports (DNS over QUIC, mDNS, LLMNR,
//! NetBIOS name service) are refused at once with ICMP, so stub resolvers fall back to
//! port 53.

use std::io;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Interest, Registry};
use moat_policy::Protocol;

use super::close::CloseReason;
use super::config::DenyMode;
use super::cx::{Cx, Tally};
use super::dial;
use super::table::{Due, Flow, FlowId, FlowKey, FlowTable};

/// Datagrams read from one host socket per event before the loop moves on.
const RX_BATCH: usize = 256;

/// One UDP flow.
pub(super) struct UdpFlow {
    key: FlowKey,
    /// The rule that allowed it (the audit log's `rule`).
    rule: String,
    /// Connected to the destination.
    sock: UdpSocket,
    /// The last datagram either way.
    last: Instant,
    tally: Tally,
}

/// A datagram from the sandbox (not DNS, not an answer to a published port's peer).
pub(super) fn on_datagram(
    table: &mut FlowTable,
    cx: &mut Cx,
    frame: &[u8],
    key: FlowKey,
    payload: &[u8],
) {
    // DNS over QUIC, mDNS, LLMNR and NetBIOS name service would resolve names past the
    // interceptor: refused at once, so stub resolvers fall back to port 53.
    if matches!(key.host.port(), 853 | 5353 | 5355 | 137) {
        cx.audit_bypass(
            "udp",
            key,
            "DoQ, mDNS, LLMNR and NetBIOS name service are refused; use DNS on port 53",
        );
        cx.stack.send_prohibited(frame, key.host.ip());
        return;
    }
    if let Some(id) = table.find_udp(&key) {
        if let Some(Flow::Udp(flow)) = table.get_mut(id) {
            flow.last = Instant::now();
            if flow.sock.send(payload).is_ok() {
                flow.tally.up += payload.len() as u64;
            }
        }
        return;
    }
    let upstream = cx.stack.upstream(key.host);
    let permit = match cx.judge(Protocol::Udp, upstream.ip(), Some(upstream.port())) {
        Ok(permit) => permit,
        Err(decision) => {
            cx.audit_deny("udp", key, &decision);
            if cx.cfg.deny_mode == DenyMode::Reject {
                cx.stack.send_prohibited(frame, key.host.ip());
            }
            return;
        }
    };
    let (rule, reason) = cx.explain(permit.decision());
    if table.connections_full() {
        cx.audit_limit("udp", key);
        return;
    }
    let Ok(mut sock) = dial::udp(upstream, &permit) else {
        cx.counters.dial_failures += 1;
        return;
    };
    let sent = sock.send(payload).is_ok();
    let Some(id) = table.open(&mut sock, Interest::READABLE) else {
        return;
    };
    let mut tally = Tally::new();
    if sent {
        tally.up = payload.len() as u64;
    }
    let flow = UdpFlow {
        key,
        rule: rule.clone(),
        sock,
        last: Instant::now(),
        tally,
    };
    table.insert(id, Flow::Udp(flow));
    cx.audit_allow("udp", key, &rule, &reason);
}

/// The flow's host socket has datagrams: each goes to the sandbox.
pub(super) fn readable(table: &mut FlowTable, cx: &mut Cx, id: FlowId) {
    let Some(Flow::Udp(flow)) = table.get_mut(id) else {
        return;
    };
    let mut buf = std::mem::take(&mut cx.scratch);
    for _ in 0..RX_BATCH {
        match flow.sock.recv(&mut buf) {
            Ok(n) => {
                flow.tally.down += n as u64;
                flow.last = Instant::now();
                cx.stack
                    .udp_to_guest(flow.key.host, flow.key.guest, &buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            // ICMP errors surface as errors on a connected UDP socket; keep the flow.
            Err(_) => continue,
        }
    }
    cx.scratch = buf;
}

impl UdpFlow {
    pub(super) fn key(&self) -> FlowKey {
        self.key
    }

    /// What the sweep should do.
    pub(super) fn due(&self, now: Instant, idle: Duration) -> Due {
        if now.duration_since(self.last) >= idle {
            Due::Expire
        } else {
            Due::Nothing
        }
    }

    /// Releases the socket and audits the end (called by the flow table).
    pub(super) fn close(mut self, registry: &Registry, cx: &mut Cx, why: &CloseReason) {
        let _ = registry.deregister(&mut self.sock);
        let (src, dst) = (self.key.guest, self.key.host);
        cx.audit_close("udp", &self.rule, src, dst, &self.tally, why);
    }
}
