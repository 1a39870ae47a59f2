//! ICMP echo relay and router advertisements.

use super::*;

impl Engine {
    /// Relays an echo request from the sandbox, if the policy allows it.
    pub(super) fn on_echo(
        &mut self,
        frame: &[u8],
        guest: IpAddr,
        dst: IpAddr,
        ident: u16,
        seq: u16,
        data: &[u8],
    ) {
        let key = (guest, dst, ident);
        let id = match self.echo_index.get(&key) {
            Some(&id) => id,
            None => match self.open_echo(frame, guest, dst, ident) {
                Some(id) => id,
                None => return,
            },
        };
        let mut out = std::mem::take(&mut self.tx_buf);
        if let Some(Some(FlowEntry::Echo(e))) = self.flows.get_mut(id) {
            e.last = Instant::now();
            icmp::request(&mut out, dst.is_ipv6(), e.kind, e.our_ident, seq, data);
            if e.sock.send(&out).is_ok() {
                self.counters.icmp_relayed += 1;
            }
        }
        self.tx_buf = out;
    }

    /// Judges a new echo flow and opens its socket.
    pub(super) fn open_echo(
        &mut self,
        frame: &[u8],
        guest: IpAddr,
        dst: IpAddr,
        ident: u16,
    ) -> Option<usize> {
        let judged = self.upstream(SocketAddr::new(dst, 0)).ip();
        let names = self.pins.names(canonical_addr(judged), Instant::now());
        let verdict = self.cfg.policy.permit(&Flow {
            direction: Direction::Outbound,
            protocol: if dst.is_ipv4() {
                Protocol::Icmpv4
            } else {
                Protocol::Icmpv6
            },
            addr: judged,
            port: None,
            names: &names,
            sni: None,
            local: self.host_addrs.contains(judged),
        });
        let (g, d) = (SocketAddr::new(guest, ident), SocketAddr::new(dst, 0));
        let permit = match verdict {
            Ok(permit) => permit,
            Err(decision) => {
                self.audit_deny("icmp", g, d, &decision);
                if self.cfg.deny_mode == DenyMode::Reject {
                    self.send_prohibited(frame, dst);
                }
                return None;
            }
        };
        if self.echo_index.len() >= MAX_ECHO_FLOWS {
            self.counters.icmp_dropped += 1;
            return None;
        }
        let Ok((mut sock, kind)) = dial::echo(judged, &permit) else {
            self.counters.icmp_dropped += 1;
            return None;
        };
        let Some(id) = self.register_new(&mut sock, Interest::READABLE) else {
            self.counters.icmp_dropped += 1;
            return None;
        };
        let our_ident = self.next_random() as u16;
        self.flows[id] = Some(FlowEntry::Echo(EchoFlow {
            guest,
            dst,
            guest_ident: ident,
            our_ident,
            kind,
            sock,
            last: Instant::now(),
        }));
        self.echo_index.insert((guest, dst, ident), id);
        let (rule, reason) = (
            permit.decision().rule_label(),
            self.cfg.policy.reason(permit.decision()),
        );
        self.audit_allow("icmp", g, d, &rule, &reason);
        Some(id)
    }

    pub(super) fn echo_readable(&mut self, id: usize) {
        let mut buf = std::mem::take(&mut self.scratch);
        let mut out = std::mem::take(&mut self.tx_buf);
        while let Some(Some(FlowEntry::Echo(e))) = self.flows.get_mut(id) {
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
            let (src, guest, guest_ident) = (e.dst, e.guest, e.guest_ident);
            if wire::echo_reply(&mut out, &self.link, src, guest, guest_ident, seq, data) {
                self.send_frame(&out);
            }
        }
        self.scratch = buf;
        self.tx_buf = out;
    }

    /// Answers a router solicitation (RFC 4861 §6.2.6) with the link's prefix.
    pub(super) fn router_advert(&mut self, from: IpAddr) {
        let IpAddr::V6(from) = from else { return };
        let dst = if from.is_unspecified() {
            Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1)
        } else {
            from
        };
        let link = self.cfg.link;
        let bits = 128 - u32::from(link.prefix_v6.min(128));
        let prefix = u128::from(link.gateway_v6) & u128::MAX.checked_shl(bits).unwrap_or(0);
        let mut out = std::mem::take(&mut self.tx_buf);
        if wire::router_advert(
            &mut out,
            &self.link,
            GATEWAY_LINK_LOCAL,
            dst,
            Ipv6Addr::from(prefix),
            link.prefix_v6,
            link.mtu as u32,
        ) {
            self.send_frame(&out);
        }
        self.tx_buf = out;
    }
}
