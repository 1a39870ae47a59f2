//! UDP flows from the sandbox: one connected host socket per (sandbox address,
//! destination), replies only from the destination, idle expiry; DNS on port 53 goes to
//! the interceptor, other resolver transports are refused.

use super::*;

impl Engine {
    pub(super) fn on_udp(
        &mut self,
        frame: &[u8],
        guest: SocketAddr,
        remote: SocketAddr,
        offset: usize,
        len: usize,
    ) {
        let Some(payload) = frame.get(offset..offset + len) else {
            self.counters.dropped_unsupported += 1;
            return;
        };
        if self.udp_in_reply(guest, remote, payload) {
            return;
        }
        if remote.port() == 53 {
            // Every DNS datagram is answered here, whatever address it was sent to.
            self.dns_from_guest(
                payload,
                ReplyTo::Udp {
                    guest,
                    asked: remote,
                },
            );
            return;
        }
        // DNS over QUIC, mDNS, LLMNR and NetBIOS name service would resolve names past the
        // interceptor: refused at once, so stub resolvers fall back to port 53.
        if matches!(remote.port(), 853 | 5353 | 5355 | 137) {
            self.audit_bypass(
                "udp",
                guest,
                remote,
                "DoQ, mDNS, LLMNR and NetBIOS name service are refused; use DNS on port 53",
            );
            self.send_prohibited(frame, remote.ip());
            return;
        }
        if let Some(&id) = self.udp_index.get(&(guest, remote)) {
            if let Some(FlowEntry::Udp(flow)) = &mut self.flows[id] {
                flow.last = Instant::now();
                if flow.sock.send(payload).is_ok() {
                    flow.up += payload.len() as u64;
                }
            }
            return;
        }
        let upstream = self.upstream(remote);
        let permit = match self.judge(Protocol::Udp, upstream) {
            Ok(permit) => permit,
            Err(decision) => {
                self.deny_udp(frame, guest, remote, &decision);
                return;
            }
        };
        let decision = *permit.decision();
        if self.active >= self.cfg.max_connections {
            self.audit_limit("udp", guest, remote);
            return;
        }
        let Ok(mut sock) = dial::udp(upstream, &permit) else {
            self.counters.dial_failures += 1;
            return;
        };
        let sent = sock.send(payload).is_ok();
        let Some(id) = self.register_new(&mut sock, Interest::READABLE) else {
            return;
        };
        self.flows[id] = Some(FlowEntry::Udp(UdpFlow {
            rule: decision.rule_label(),
            guest,
            remote,
            sock,
            last: Instant::now(),
            up: if sent { payload.len() as u64 } else { 0 },
            down: 0,
            started: Instant::now(),
        }));
        self.udp_index.insert((guest, remote), id);
        self.active += 1;
        let (rule, reason) = (decision.rule_label(), self.cfg.policy.reason(&decision));
        self.audit_allow("udp", guest, remote, &rule, &reason);
    }

    /// Audits a denied UDP flow and, in reject mode, answers ICMP prohibited.
    pub(super) fn deny_udp(
        &mut self,
        frame: &[u8],
        guest: SocketAddr,
        remote: SocketAddr,
        decision: &Decision,
    ) {
        self.audit_deny("udp", guest, remote, decision);
        if self.cfg.deny_mode == DenyMode::Reject {
            self.send_prohibited(frame, remote.ip());
        }
    }

    pub(super) fn udp_readable(&mut self, id: usize) {
        let mut buf = std::mem::take(&mut self.scratch);
        let mut out = std::mem::take(&mut self.tx_buf);
        for _ in 0..RX_BATCH {
            let Some(Some(FlowEntry::Udp(flow))) = self.flows.get_mut(id) else {
                break;
            };
            match flow.sock.recv(&mut buf) {
                Ok(n) => {
                    flow.down += n as u64;
                    flow.last = Instant::now();
                    let (remote, guest) = (flow.remote, flow.guest);
                    if wire::udp_to_guest(&mut out, &self.link, remote, guest, &buf[..n]) {
                        self.send_frame(&out);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // ICMP errors surface as errors on a connected UDP socket; keep the flow.
                Err(_) => continue,
            }
        }
        self.scratch = buf;
        self.tx_buf = out;
    }
}
