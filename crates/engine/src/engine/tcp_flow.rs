//! TCP flows from the sandbox: judging the SYN, dialing upstream before the handshake
//! completes, relaying with half-close, the TLS server-name gate, resets and the socket
//! pool. See the theory of operation in `mod.rs`.

use super::*;
use crate::dns::framing::TcpFraming;

impl Engine {
    #[allow(clippy::too_many_arguments)] // One segment's fields, as classified.
    pub(super) fn on_tcp(
        &mut self,
        frame: &[u8],
        guest: SocketAddr,
        remote: SocketAddr,
        new_syn: bool,
        rst: bool,
        seq: u32,
        seg_len: u32,
    ) {
        if let Some(&id) = self.tcp_index.get(&(guest, remote)) {
            match &self.flows[id] {
                Some(FlowEntry::Tcp(flow)) if matches!(flow.state, TcpState::Open { .. }) => {
                    self.feed(frame);
                    self.dirty.insert(id);
                }
                Some(FlowEntry::DnsTcp(_)) => {
                    self.feed(frame);
                    self.dirty.insert(id);
                }
                Some(FlowEntry::Tcp(_)) if rst => {
                    self.remove(id, CloseReason::ResetWhileConnecting)
                }
                _ => {}
            }
            return;
        }
        if !new_syn {
            self.counters.dropped_unsupported += 1;
            return;
        }
        if remote.port() == 53 {
            // Every DNS-over-TCP flow is answered here, whatever address it was sent to.
            self.open_dns_stream(frame, guest, remote, seq, seg_len);
            return;
        }
        let upstream = self.upstream(remote);
        let verdict = self.judge(Protocol::Tcp, upstream);
        // DNS over TLS would carry lookups past the interceptor: only a rule that names
        // port 853 explicitly allows it.
        let dot_refused =
            remote.port() == 853 && verdict.as_ref().is_ok_and(|p| !p.rule_names_ports());
        let permit = match verdict {
            Ok(permit) if !dot_refused => permit,
            Ok(_) => {
                self.audit_bypass(
                    "tcp",
                    guest,
                    remote,
                    "DNS over TLS is refused unless a rule allows port 853 explicitly",
                );
                self.reset_guest(guest, remote, seq, seg_len);
                return;
            }
            Err(decision) => {
                self.audit_deny("tcp", guest, remote, &decision);
                if self.cfg.deny_mode == DenyMode::Reject {
                    self.reset_guest(guest, remote, seq, seg_len);
                }
                return;
            }
        };
        let (rule, reason) = (
            permit.decision().rule_label(),
            self.cfg.policy.reason(permit.decision()),
        );
        if self.active >= self.cfg.max_connections {
            self.audit_limit("tcp", guest, remote);
            self.reset_guest(guest, remote, seq, seg_len);
            return;
        }
        let Some((socket, mem)) = self.connection_socket() else {
            self.audit_memory("tcp", guest, remote);
            self.reset_guest(guest, remote, seq, seg_len);
            return;
        };
        let mut stream = match dial::tcp(upstream, &permit) {
            Ok(s) => s,
            Err(_) => {
                self.give_back(socket, mem);
                self.counters.dial_failures += 1;
                self.reset_guest(guest, remote, seq, seg_len);
                return;
            }
        };
        let Some(id) = self.register_new(&mut stream, Interest::READABLE | Interest::WRITABLE)
        else {
            self.give_back(socket, mem);
            self.reset_guest(guest, remote, seq, seg_len);
            return;
        };
        self.flows[id] = Some(FlowEntry::Tcp(TcpFlow {
            rule: rule.clone(),
            guest,
            remote,
            stream,
            state: TcpState::Connecting {
                syn: frame.to_vec(),
                seq,
                deadline: Instant::now() + self.cfg.connect_timeout,
                socket: Box::new(socket),
            },
            mem,
            host_eof: false,
            host_write_shut: false,
            inbound: false,
            sni: if TLS_PORTS.contains(&remote.port()) && self.has_name_rules {
                SniCheck::Pending
            } else {
                SniCheck::Off
            },
            up: 0,
            down: 0,
            started: Instant::now(),
        }));
        self.tcp_index.insert((guest, remote), id);
        self.active += 1;
        self.audit_allow("tcp", guest, remote, &rule, &reason);
    }

    /// Accepts a DNS-over-TCP connection from the sandbox; it is answered here.
    pub(super) fn open_dns_stream(
        &mut self,
        syn: &[u8],
        guest: SocketAddr,
        remote: SocketAddr,
        seq: u32,
        seg_len: u32,
    ) {
        if self.active >= self.cfg.max_connections {
            self.audit_limit("tcp", guest, remote);
            self.reset_guest(guest, remote, seq, seg_len);
            return;
        }
        let Some((mut socket, mem)) = self.dns_socket() else {
            self.audit_memory("tcp", guest, remote);
            self.reset_guest(guest, remote, seq, seg_len);
            return;
        };
        let endpoint = IpListenEndpoint {
            addr: Some(remote.ip().into()),
            port: remote.port(),
        };
        if socket.listen(endpoint).is_err() {
            self.give_back(socket, mem);
            return;
        }
        let handle = self.sockets.add(socket);
        let id = self.slot();
        self.flows[id] = Some(FlowEntry::DnsTcp(DnsStream {
            guest,
            remote,
            handle,
            mem,
            framing: TcpFraming::default(),
            pending: 0,
            started: Instant::now(),
        }));
        self.tcp_index.insert((guest, remote), id);
        self.active += 1;
        self.feed(syn);
        self.dirty.insert(id);
    }

    pub(super) fn finish_connect(&mut self, id: usize) {
        let Some(Some(FlowEntry::Tcp(flow))) = self.flows.get_mut(id) else {
            return;
        };
        let outcome = match flow.stream.take_error() {
            Ok(Some(e)) | Err(e) => Err(e),
            Ok(None) => match flow.stream.peer_addr() {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => Err(e),
            },
        };
        match outcome {
            Err(e) => {
                self.counters.dial_failures += 1;
                if let TcpState::Connecting { seq, .. } = flow.state {
                    let (guest, remote) = (flow.guest, flow.remote);
                    self.reset_guest(guest, remote, seq, 1);
                }
                self.remove(id, CloseReason::ConnectFailed(e.to_string()));
            }
            Ok(()) => {
                let _ = flow.stream.set_nodelay(true);
                let TcpState::Connecting {
                    syn, mut socket, ..
                } = std::mem::replace(
                    &mut flow.state,
                    TcpState::Open {
                        handle: SocketHandle::default(),
                    },
                )
                else {
                    return;
                };
                let endpoint = IpListenEndpoint {
                    addr: Some(flow.remote.ip().into()),
                    port: flow.remote.port(),
                };
                if socket.listen(endpoint).is_err() {
                    let mem = std::mem::take(&mut flow.mem);
                    self.give_back(*socket, mem);
                    self.remove(id, CloseReason::CannotListen);
                    return;
                }
                let handle = self.sockets.add(*socket);
                flow.state = TcpState::Open { handle };
                self.feed(&syn);
                self.dirty.insert(id);
            }
        }
    }

    /// Moves bytes both ways for one open TCP flow, and ends it when both sides are done.
    pub(super) fn relay(&mut self, id: usize) {
        if let Some(Some(FlowEntry::DnsTcp(_))) = self.flows.get(id) {
            self.dns_stream_relay(id);
            return;
        }
        let may_send_up = match self.sni_gate(id) {
            Gate::Open => true,
            Gate::Wait => false,
            Gate::Aborted => return,
        };
        let Some(Some(FlowEntry::Tcp(flow))) = self.flows.get_mut(id) else {
            return;
        };
        let TcpState::Open { handle } = flow.state else {
            return;
        };
        let socket = self.sockets.get_mut::<tcp::Socket>(handle);
        let mut failed: Option<CloseReason> = None;
        // Sandbox → host.
        while may_send_up && socket.can_recv() {
            let stream = &mut flow.stream;
            let r = socket.recv(|buf| match stream.write(buf) {
                Ok(n) => (n, Ok(n)),
                Err(e) => (0, Err(e)),
            });
            match r {
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => flow.up += n as u64,
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => {
                    failed = Some(CloseReason::UpstreamWrite(e.to_string()));
                    break;
                }
                Err(_) => break,
            }
        }
        // The sandbox sent FIN and everything before it is upstream: half-close.
        let guest_fin = matches!(
            socket.state(),
            tcp::State::CloseWait
                | tcp::State::LastAck
                | tcp::State::Closing
                | tcp::State::TimeWait
                | tcp::State::Closed
        );
        if guest_fin && socket.recv_queue() == 0 && !flow.host_write_shut {
            let _ = flow.stream.shutdown(Shutdown::Write);
            flow.host_write_shut = true;
        }
        // Host → sandbox, into send-buffer pages the budget allows (when it has none,
        // the host socket is left unread; the sweep comes back to it).
        while failed.is_none() && !flow.host_eof && socket.can_send() {
            enum Got {
                Data(usize),
                Eof,
                Block,
                Fail(io::Error),
            }
            let mut room = self.budget.send_room(&flow.mem);
            if room == 0 && !self.tcp_pool.is_empty() {
                for (_, pooled) in self.tcp_pool.drain(..) {
                    self.budget.release(&pooled);
                }
                room = self.budget.send_room(&flow.mem);
            }
            if room == 0 {
                break;
            }
            let stream = &mut flow.stream;
            let r = socket.send(|buf| {
                let n = buf.len().min(room);
                match stream.read(&mut buf[..n]) {
                    Ok(0) => (0, Got::Eof),
                    Ok(n) => (n, Got::Data(n)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => (0, Got::Block),
                    Err(e) => (0, Got::Fail(e)),
                }
            });
            match r {
                Ok(Got::Data(n)) => {
                    self.budget.wrote(&mut flow.mem, n);
                    flow.down += n as u64;
                }
                Ok(Got::Eof) => {
                    flow.host_eof = true;
                    socket.close();
                }
                Ok(Got::Block) | Err(_) => break,
                Ok(Got::Fail(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Got::Fail(e)) => failed = Some(CloseReason::UpstreamRead(e.to_string())),
            }
        }
        if let Some(reason) = failed {
            self.abort(id, handle, reason);
            return;
        }
        let state = socket.state();
        if matches!(state, tcp::State::Closed | tcp::State::TimeWait) {
            let reason = if flow.host_eof && flow.host_write_shut {
                CloseReason::Closed
            } else {
                CloseReason::Reset
            };
            self.remove(id, reason);
        }
    }

    /// For a flow waiting on its TLS server name: reads the ClientHello (without taking it
    /// from the stream) and judges the flow again with the name; a deny resets it.
    pub(super) fn sni_gate(&mut self, id: usize) -> Gate {
        let Some(Some(FlowEntry::Tcp(flow))) = self.flows.get(id) else {
            return Gate::Open;
        };
        let (TcpState::Open { handle }, SniCheck::Pending) = (&flow.state, flow.sni) else {
            return Gate::Open;
        };
        let handle = *handle;
        let (guest, remote) = (flow.guest, flow.remote);
        let socket = self.sockets.get_mut::<tcp::Socket>(handle);
        let n = socket
            .peek_slice(&mut self.scratch[..sni::MAX_PEEK])
            .unwrap_or(0);
        let guest_done = !socket.may_recv()
            && socket.state() != tcp::State::SynReceived
            && socket.state() != tcp::State::Listen;
        let parsed = sni::parse(&self.scratch[..n]);
        if parsed == Sni::Incomplete && !guest_done {
            return Gate::Wait;
        }
        if let Some(Some(FlowEntry::Tcp(flow))) = self.flows.get_mut(id) {
            flow.sni = SniCheck::Off;
        }
        let (label, reason, name) = match parsed {
            Sni::Name(name) => {
                let upstream = self.upstream(remote);
                let names = self
                    .pins
                    .names(canonical_addr(upstream.ip()), Instant::now());
                let decision = self.cfg.policy.decide(&Flow {
                    direction: Direction::Outbound,
                    protocol: Protocol::Tcp,
                    addr: upstream.ip(),
                    port: Some(upstream.port()),
                    names: &names,
                    sni: Some(&name),
                    local: self.host_addrs.contains(upstream.ip()),
                });
                if decision.is_allow() {
                    return Gate::Open;
                }
                let reason = format!(
                    "TLS server name {name}: {}",
                    self.cfg.policy.reason(&decision)
                );
                (decision.rule_label(), reason, Value::from(name.as_str()))
            }
            // Not TLS, or TLS without a server name: the address and its pins decided.
            Sni::NotTls | Sni::Absent => return Gate::Open,
            // Domain rules cannot be checked against a hello that cannot be read (cut
            // short, malformed, interleaved, too large): fail closed.
            Sni::Incomplete | Sni::Unreadable => (
                "sni".to_owned(),
                "the TLS ClientHello could not be read, so the policy's domain rules cannot be checked".to_owned(),
                Value::Null,
            ),
        };
        self.counters.denied += 1;
        self.cfg.audit.event(
            "connect",
            "deny",
            &label,
            &reason,
            vec![
                ("proto", Value::from("tcp")),
                ("src", Value::from(guest.to_string())),
                ("dst", Value::from(remote.ip().to_string())),
                ("port", Value::from(remote.port())),
                ("domain", self.pinned_domain(remote.ip())),
                ("sni", name),
            ],
        );
        self.abort(id, handle, CloseReason::DeniedByClientHello);
        Gate::Aborted
    }

    pub(super) fn reset_guest(
        &mut self,
        guest: SocketAddr,
        remote: SocketAddr,
        seq: u32,
        seg_len: u32,
    ) {
        let mut out = std::mem::take(&mut self.scratch);
        if wire::tcp_reset(&mut out, &self.link, remote, guest, seq, seg_len) {
            self.send_frame(&out);
        }
        out.resize(65536, 0);
        self.scratch = out;
    }

    /// Resets the sandbox's side of TCP flow `id`; the flow is removed after the next
    /// egress, once smoltcp has sent the RST.
    pub(super) fn abort(&mut self, id: usize, handle: SocketHandle, why: CloseReason) {
        self.sockets.get_mut::<tcp::Socket>(handle).abort();
        self.doomed.push((id, why));
    }

    /// Takes a socket out of the set and keeps it for reuse. Outside the set an abort
    /// sends nothing; it only makes the socket reusable.
    pub(super) fn recycle(&mut self, handle: SocketHandle, mem: Grant) {
        // With only TCP sockets in the set, every socket removed is a TCP one.
        let smoltcp::socket::Socket::Tcp(socket) = self.sockets.remove(handle);
        self.give_back(socket, mem);
    }

    /// Keeps a socket outside the set for reuse (its buffers stay charged), or drops it
    /// and gives its charge back when the pool is full.
    pub(super) fn give_back(&mut self, mut socket: tcp::Socket<'static>, mem: Grant) {
        socket.abort();
        if self.tcp_pool.len() < TCP_POOL {
            self.tcp_pool.push((socket, mem));
        } else {
            self.budget.release(&mem);
        }
    }

    /// A socket for a new TCP connection, with the largest receive buffer the budget
    /// has room for; `None` when it has none even after the pool is given up.
    pub(super) fn connection_socket(&mut self) -> Option<(tcp::Socket<'static>, Grant)> {
        let mut rx = self.budget.receive_size();
        if rx != Some(self.budget.rx_full()) && !self.tcp_pool.is_empty() {
            self.empty_pool();
            rx = self.budget.receive_size();
        }
        Some(self.take_socket(rx?, self.cfg.tcp_buffer, false))
    }

    /// A socket for a DNS-over-TCP connection (small buffers, charged whole).
    pub(super) fn dns_socket(&mut self) -> Option<(tcp::Socket<'static>, Grant)> {
        let want = Grant::whole(DNS_STREAM_BUFFER, DNS_STREAM_BUFFER).total();
        if !self.budget.fits(want) {
            self.empty_pool();
        }
        self.budget
            .fits(want)
            .then(|| self.take_socket(DNS_STREAM_BUFFER, DNS_STREAM_BUFFER, true))
    }

    /// A closed socket with these buffer capacities: from the pool when one fits (its
    /// buffers are charged already), else a new one, charged.
    fn take_socket(&mut self, rx: usize, tx: usize, whole: bool) -> (tcp::Socket<'static>, Grant) {
        let fits = |(s, _): &(tcp::Socket<'static>, Grant)| {
            s.recv_capacity() == rx && s.send_capacity() == tx
        };
        if let Some(i) = self.tcp_pool.iter().position(fits) {
            let (socket, mut mem) = self.tcp_pool.swap_remove(i);
            // Opening the socket again restarts its rings at position 0.
            mem.tx_written = 0;
            return (socket, mem);
        }
        let mem = if whole {
            Grant::whole(rx, tx)
        } else {
            Grant {
                rx,
                tx_cap: tx,
                ..Grant::default()
            }
        };
        self.budget.charge(&mem);
        (new_socket(rx, tx), mem)
    }

    /// Drops every pooled socket and gives its charge back.
    fn empty_pool(&mut self) {
        for (_, mem) in self.tcp_pool.drain(..) {
            self.budget.release(&mem);
        }
    }
}
