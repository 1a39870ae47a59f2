//! A UDP flow from the sandbox: its state and what happens to its datagrams (what the loop
//! does with them, the flow table's part, is `on_udp.rs`).
//!
//! # Theory of operation
//! UDP never enters smoltcp. Each (sandbox address and port, destination) pair is a flow,
//! judged by its first datagram, with a host socket *connected* to the destination, so
//! replies come only from there (the kernel drops the rest). A flow idle for
//! `udp_idle_timeout` expires.
//!
//! Datagrams move in runs both ways. From the sandbox, what one batch of frames carries to a
//! flow is held until the batch ends (`cx::UpRun`); a run of one size (the last may be
//! shorter) leaves in one `UDP_SEGMENT` send, which the kernel puts on the wire as the
//! same datagrams. Toward the sandbox, a flow's socket is read a batch at a time and runs
//! of one size reach the sandbox as one frame its kernel splits (`stack::UdpBurst`). Both
//! fall back to one datagram per system call where the kernel cannot.
//!
//! DNS (port 53) does not reach this file: the interceptor answers it (`dns_flow.rs`);
//! other resolver transports (DNS over QUIC, mDNS, LLMNR, NetBIOS name service) are refused
//! at once with ICMP, so stub resolvers fall back to port 53.

use std::time::{Duration, Instant};

use mio::Registry;
use mio::net::UdpSocket;

use super::close::CloseReason;
use super::cx::{Cx, Tally};
use super::key::{Due, FlowKey};

/// Datagrams read from one host socket per event before the loop moves on.
pub(super) const RX_BATCH: usize = 256;

/// One UDP flow.
pub(super) struct UdpFlow {
    pub(super) key: FlowKey,
    /// The rule that allowed it (the audit log's `rule`).
    pub(super) rule: String,
    /// Connected to the destination.
    pub(super) sock: UdpSocket,
    /// The last datagram either way.
    pub(super) last: Instant,
    pub(super) tally: Tally,
}

/// The most payload one `UDP_SEGMENT` send carries: what one IPv4 datagram can.
pub(super) const MAX_RUN_BYTES: usize = 65507;

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
        cx.audit_close("udp", &self.rule, false, src, dst, &self.tally, why);
    }
}
