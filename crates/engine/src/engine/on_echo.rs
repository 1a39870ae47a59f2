//! What the loop does with ICMP echo (`echo.rs`): a request from the sandbox relayed on its
//! flow (opened, judged, when it is the first), and replies read from the flow's socket.

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use mio::Interest;
use moat_inspect::evidence::Named;
use moat_policy::Protocol;
use moat_wire::icmp::{self, EchoKind};

use super::cx::Cx;
use super::dial;
use super::echo::{EchoFlow, Request, icmp_name};
use super::key::{FlowId, FlowKey};
use super::table::{Flow, FlowTable};

/// Relays an echo request from the sandbox, if the policy allows it.
pub(super) fn request(table: &mut FlowTable, cx: &mut Cx, req: Request<'_>) {
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
            cx.audit_deny(icmp_name(req.dst), key, &decision);
            if cx.cfg.deny_mode.answers() {
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
    cx.audit_allow(icmp_name(req.dst), key, &rule, &reason, &Named::Nothing);
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
