//! ICMP echo (ping) from the sandbox to the world: one flow per (sandbox address,
//! destination, sandbox identifier), judged by its first request (as `icmpv4`/`icmpv6`,
//! no port) and relayed through a ping socket, or a raw one with `CAP_NET_RAW` (see
//! `icmp.rs`). Replies come back with the sandbox's identifier; a raw socket sees every
//! reply, so those with another identifier are someone else's. Echoes to the gateway are
//! answered by `ingress.rs` and never reach here. At most 64 flows; idle ones expire
//! after ten seconds.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Interest, Registry};
use moat_policy::Protocol;

use super::config::DenyMode;
use super::cx::Cx;
use super::dial;
use super::table::{Due, EchoKey, Flow, FlowId, FlowKey, FlowTable};
use crate::icmp::{self, EchoKind};

/// An echo flow without requests for this long is closed.
const ECHO_IDLE: Duration = Duration::from_secs(10);

/// One echo flow.
pub(super) struct EchoFlow {
    guest: IpAddr,
    dst: IpAddr,
    guest_ident: u16,
    /// The identifier on the wire (a raw socket's own; a ping socket's is the kernel's).
    our_ident: u16,
    kind: EchoKind,
    sock: UdpSocket,
    last: Instant,
}

/// One echo request from the sandbox.
#[derive(Debug, Clone, Copy)]
pub(super) struct Request<'a> {
    pub(super) frame: &'a [u8],
    pub(super) guest: IpAddr,
    pub(super) dst: IpAddr,
    pub(super) ident: u16,
    pub(super) seq: u16,
    pub(super) data: &'a [u8],
}

/// Relays an echo request from the sandbox, if the policy allows it.
pub(super) fn on_request(table: &mut FlowTable, cx: &mut Cx, req: Request<'_>) {
    let id = match table.find_echo(&(req.guest, req.dst, req.ident)) {
        Some(id) => id,
        None => match open(table, cx, &req) {
            Some(id) => id,
            None => return,
        },
    };
    let Some(Flow::Echo(e)) = table.get_mut(id) else {
        return;
    };
    e.last = Instant::now();
    let mut out = std::mem::take(&mut cx.scratch);
    icmp::request(
        &mut out,
        req.dst.is_ipv6(),
        e.kind,
        e.our_ident,
        req.seq,
        req.data,
    );
    if e.sock.send(&out).is_ok() {
        cx.counters.icmp_relayed += 1;
    }
    out.resize(65536, 0);
    cx.scratch = out;
}

/// Judges a new echo flow and opens its socket.
fn open(table: &mut FlowTable, cx: &mut Cx, req: &Request<'_>) -> Option<FlowId> {
    let judged = cx.stack.upstream(SocketAddr::new(req.dst, 0)).ip();
    let protocol = if req.dst.is_ipv4() {
        Protocol::Icmpv4
    } else {
        Protocol::Icmpv6
    };
    let key = FlowKey {
        guest: SocketAddr::new(req.guest, req.ident),
        host: SocketAddr::new(req.dst, 0),
    };
    let permit = match cx.judge(protocol, judged, None) {
        Ok(permit) => permit,
        Err(decision) => {
            cx.audit_deny("icmp", key, &decision);
            if cx.cfg.deny_mode == DenyMode::Reject {
                cx.stack.send_prohibited(req.frame, req.dst);
            }
            return None;
        }
    };
    if table.echo_full() {
        cx.counters.icmp_dropped += 1;
        return None;
    }
    let Ok((mut sock, kind)) = dial::echo(judged, &permit) else {
        cx.counters.icmp_dropped += 1;
        return None;
    };
    let Some(id) = table.open(&mut sock, Interest::READABLE) else {
        cx.counters.icmp_dropped += 1;
        return None;
    };
    let flow = EchoFlow {
        guest: req.guest,
        dst: req.dst,
        guest_ident: req.ident,
        our_ident: cx.next_random() as u16,
        kind,
        sock,
        last: Instant::now(),
    };
    table.insert(id, Flow::Echo(flow));
    let (rule, reason) = cx.explain(permit.decision());
    cx.audit_allow("icmp", key, &rule, &reason);
    Some(id)
}

/// The flow's socket has replies: each goes to the sandbox with its identifier.
pub(super) fn readable(table: &mut FlowTable, cx: &mut Cx, id: FlowId) {
    let Some(Flow::Echo(e)) = table.get_mut(id) else {
        return;
    };
    let mut buf = std::mem::take(&mut cx.scratch);
    loop {
        let n = match e.sock.recv(&mut buf) {
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) => continue,
        };
        let Some((ident, seq, data)) = icmp::reply(&buf[..n], e.dst.is_ipv6(), e.kind) else {
            continue;
        };
        if e.kind == EchoKind::Raw && ident != e.our_ident {
            continue; // someone else's ping to the same host
        }
        cx.stack
            .echo_reply(e.dst, e.guest, e.guest_ident, seq, data);
    }
    cx.scratch = buf;
}

impl EchoFlow {
    pub(super) fn key(&self) -> EchoKey {
        (self.guest, self.dst, self.guest_ident)
    }

    /// What the sweep should do.
    pub(super) fn due(&self, now: Instant) -> Due {
        if now.duration_since(self.last) >= ECHO_IDLE {
            Due::Expire
        } else {
            Due::Nothing
        }
    }

    /// Releases the socket (called by the flow table; echo flows are not audited when
    /// they end).
    pub(super) fn close(mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.sock);
    }
}
