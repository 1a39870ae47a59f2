//! Secrets over plain HTTP: the stream stage of a connection on which a secret that allows
//! plain HTTP (`allow_plain_http`) may go — its placeholder becomes its value in requests
//! to the secret's hosts, and the value becomes the placeholder in the answers.
//!
//! # Theory of operation
//! The TCP flow chooses this stage when the address was answered by DNS for a name that
//! such a secret allows (see `tcp_flow.rs`); each such name is a [`Candidate`] with its
//! swaps. Then:
//! 1. **First request.** The sandbox's bytes are held until its first request head is
//!    whole. If they are not an HTTP/1.x request (httparse refuses them; a server-first
//!    protocol whose client speaks later), or the request's `Host` (read by
//!    `evidence.rs`, which names the connection with it too) is not one candidate,
//!    nothing is swapped on this connection and every placeholder is watched: the stage
//!    becomes a scanning relay.
//! 2. **Requests.** Otherwise every request on the connection must name that host
//!    (the anti-fronting check, `http/h1.rs`; another host ends the connection): each is
//!    read once, checked and rewritten by the same reader (`http/h1_swap.rs`, checking),
//!    and scanned for the placeholders its host may not receive.
//! 3. **Answers** are rewritten back (`http/h1_swap.rs`, the response side).
//!
//! Back-pressure: rewritten bytes wait in a buffer until the other side takes them, and
//! nothing more is read from a side whose output still waits. Bodies the rewriting holds
//! are charged to the buffer budget while held (`budget.rs`); what does not fit streams. Half-close as in
//! `stream.rs`: what was held goes when the sender finishes, then the FIN.

use std::io::{self, Read, Write};
use std::net::Shutdown;

use mio::net::TcpStream;
use moat_inspect::evidence::{Named, request_host};
use moat_inspect::http::{Authority, Refused, h1, h1_swap};
use moat_inspect::secrets::swap::Swap;
use moat_inspect::secrets::{Scan, Scanner};
use moat_policy::DomainName;
use smoltcp::socket::tcp;

use super::budget::Grant;
use super::close::Broken;
use super::close::CloseReason;
use super::cx::Tally;
use super::pool::SocketPool;

/// The most read from a side at once.
const CHUNK: usize = 16 * 1024;

/// A host the connection may be for, and what is swapped when it is.
pub(super) struct Candidate {
    /// The name (answered by DNS for this address).
    pub(super) host: DomainName,
    /// Placeholder → value for the secrets allowing it over plain HTTP.
    pub(super) sub: Swap,
    /// Value → placeholder, back.
    pub(super) red: Swap,
    /// The placeholders this host may not receive.
    pub(super) scan: Scanner,
}

/// Where the connection is.
enum Phase {
    /// Holding the sandbox's bytes until its first request head is whole.
    First(Vec<u8>),
    /// Swapping for the chosen host.
    Swapping(Box<Swapping>),
    /// Nothing swapped; the raw scan watches every placeholder.
    Relay,
}

struct Swapping {
    sub: Swap,
    red: Swap,
    up: h1_swap::Messages,
    down: h1_swap::Messages,
    exchange: h1_swap::Exchange,
}

/// The plain-HTTP stage of one connection (see the module header).
pub(super) struct PlainHttp {
    phase: Phase,
    candidates: Vec<Candidate>,
    /// The host chosen by the first request.
    chosen: Option<DomainName>,
    /// What the first request's head said of its host (More until it is whole).
    first: Named,
    /// What the bytes as they go are scanned for: every placeholder until a candidate is
    /// chosen, then those its host may not receive.
    scan: Scanner,
    /// Bytes the scan holds back (a possible start of a placeholder).
    up_held: Vec<u8>,
    /// Bytes for the server, waiting for its socket.
    to_host: Vec<u8>,
    /// Bytes for the sandbox, waiting for room in its socket.
    to_guest: Vec<u8>,
    up_done: bool,
    host_shut: bool,
    down_done: bool,
    /// What the buffer budget let the swaps hold at the last look (`engine/budget.rs`).
    hold_room: usize,
}

impl PlainHttp {
    /// A connection that may be for one of `candidates`; `everything` watches every
    /// secret's placeholder.
    pub(super) fn new(candidates: Vec<Candidate>, everything: Scanner) -> PlainHttp {
        PlainHttp {
            phase: Phase::First(Vec::new()),
            candidates,
            chosen: None,
            first: Named::More,
            scan: everything,
            up_held: Vec::new(),
            to_host: Vec::new(),
            to_guest: Vec::new(),
            up_done: false,
            host_shut: false,
            down_done: false,
            hold_room: 0,
        }
    }

    /// Tells the swaps what the buffer budget lets them hold: a body that does not fit
    /// streams instead of being held.
    fn allow(&mut self, pool: &mut SocketPool, mem: &Grant) {
        self.hold_room = pool.hold_room(mem);
        if let Phase::Swapping(s) = &mut self.phase {
            s.up.allow(self.hold_room.saturating_sub(s.down.held()));
            s.down.allow(self.hold_room.saturating_sub(s.up.held()));
        }
    }

    /// Charges what the swaps hold now.
    fn charge(&self, pool: &mut SocketPool, mem: &mut Grant) {
        let held = match &self.phase {
            Phase::Swapping(s) => s.up.held() + s.down.held(),
            _ => 0,
        };
        pool.set_held(mem, held);
    }

    /// Both directions finished in order.
    pub(super) fn finished(&self) -> bool {
        self.host_shut && self.down_done
    }

    /// The `Host` of the first request, once its head is whole (`evidence.rs`).
    pub(super) fn first_host(&self) -> Named {
        self.first.clone()
    }

    /// The host swaps are made for, once chosen.
    pub(super) fn host(&self) -> Option<&DomainName> {
        self.chosen.as_ref()
    }

    /// The secrets substituted and redacted since the last call (bit `i`: secret `i`).
    pub(super) fn take_swapped(&mut self) -> (u64, u64) {
        match &mut self.phase {
            Phase::Swapping(s) => (s.sub.take_hits(), s.red.take_hits()),
            _ => (0, 0),
        }
    }

    /// Moves bytes both ways as far as the sockets and the budget allow.
    pub(super) fn pump(
        &mut self,
        socket: &mut tcp::Socket<'static>,
        host: &mut TcpStream,
        pool: &mut SocketPool,
        mem: &mut Grant,
        tally: &mut Tally,
        buf: &mut [u8],
    ) -> Result<(), Broken> {
        let buf_len = buf.len().min(CHUNK);
        let buf = &mut buf[..buf_len];
        // Sandbox → host.
        loop {
            flush_host(&mut self.to_host, host)?;
            if !self.to_host.is_empty() || self.up_done {
                break;
            }
            if !socket.can_recv() {
                let fin = matches!(
                    socket.state(),
                    tcp::State::CloseWait
                        | tcp::State::LastAck
                        | tcp::State::Closing
                        | tcp::State::TimeWait
                        | tcp::State::Closed
                );
                if fin && socket.recv_queue() == 0 {
                    self.end_up()?;
                    continue;
                }
                break;
            }
            let n = socket.recv_slice(buf).unwrap_or(0);
            if n == 0 {
                break;
            }
            tally.up += n as u64;
            self.allow(pool, mem);
            self.up(&buf[..n])?;
            self.charge(pool, mem);
        }
        if self.up_done && self.to_host.is_empty() && !self.host_shut {
            let _ = host.shutdown(Shutdown::Write);
            self.host_shut = true;
        }
        // Host → sandbox.
        loop {
            self.flush_guest(socket, pool, mem);
            if !self.to_guest.is_empty() || self.down_done || !socket.may_send() {
                break;
            }
            match host.read(buf) {
                Ok(0) => {
                    if let Phase::Swapping(s) = &mut self.phase {
                        s.down.finish(&mut s.red, &mut self.to_guest);
                    }
                    self.flush_guest(socket, pool, mem);
                    self.down_done = true;
                }
                Ok(n) => {
                    tally.down += n as u64;
                    self.allow(pool, mem);
                    match &mut self.phase {
                        Phase::Swapping(s) => s
                            .down
                            .push(&mut s.red, &mut s.exchange, &buf[..n], &mut self.to_guest)
                            .map_err(|e| {
                                Broken::Reset(CloseReason::UpstreamRead(format!(
                                    "the server's answer cannot be rewritten: {e}"
                                )))
                            })?,
                        _ => self.to_guest.extend_from_slice(&buf[..n]),
                    }
                    self.charge(pool, mem);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Broken::Reset(CloseReason::UpstreamRead(e.to_string()))),
            }
        }
        if self.down_done && self.to_guest.is_empty() && socket.may_send() {
            socket.close();
        }
        Ok(())
    }

    /// The sandbox's next bytes.
    fn up(&mut self, data: &[u8]) -> Result<(), Broken> {
        let mut out = Vec::with_capacity(data.len());
        match &mut self.phase {
            Phase::First(held) => {
                held.extend_from_slice(data);
                let held = std::mem::take(held);
                match request_host(&held, h1::MAX_HEAD + 1) {
                    Named::More => {
                        self.phase = Phase::First(held);
                        return Ok(());
                    }
                    named => {
                        self.choose(named.name());
                        self.first = named;
                    }
                }
                return self.up(&held);
            }
            Phase::Swapping(s) => {
                s.up.push(&mut s.sub, &mut s.exchange, data, &mut out)
                    .map_err(refused)?;
            }
            Phase::Relay => out.extend_from_slice(data),
        }
        self.scanned(&out)
    }

    /// The first request named `host` (or none could be read): swap for it if it is a
    /// candidate, else relay with every placeholder watched.
    fn choose(&mut self, host: Option<&DomainName>) {
        let at = host.and_then(|h| self.candidates.iter().position(|c| c.host == *h));
        let Some(at) = at else {
            self.phase = Phase::Relay;
            return;
        };
        let chosen = self.candidates.swap_remove(at);
        self.candidates.clear();
        self.chosen = Some(chosen.host.clone());
        self.scan = chosen.scan.clone();
        // One reading of each request, for the anti-fronting check and the rewrite alike.
        let mut up = h1_swap::Messages::new(h1_swap::Side::Request)
            .scanning(chosen.scan)
            .checking(Authority::Name(chosen.host.clone()));
        let mut down = h1_swap::Messages::new(h1_swap::Side::Response);
        up.allow(self.hold_room);
        down.allow(self.hold_room);
        self.phase = Phase::Swapping(Box::new(Swapping {
            sub: chosen.sub,
            red: chosen.red,
            up,
            down,
            exchange: h1_swap::Exchange::default(),
        }));
    }

    /// Scans rewritten bytes for placeholders that may not leave, then queues them.
    fn scanned(&mut self, out: &[u8]) -> Result<(), Broken> {
        let mut joined = std::mem::take(&mut self.up_held);
        joined.extend_from_slice(out);
        match self.scan.scan(&joined) {
            Scan::Found(i) => Err(Broken::Secret(i)),
            Scan::Pass(n) => {
                self.up_held = joined.split_off(n);
                self.to_host.extend_from_slice(&joined);
                Ok(())
            }
        }
    }

    /// The sandbox finished sending: what was held cannot become a placeholder any more.
    fn end_up(&mut self) -> Result<(), Broken> {
        let mut last = Vec::new();
        match std::mem::replace(&mut self.phase, Phase::Relay) {
            Phase::First(held) => {
                // No whole head ever came: nothing to swap; the scan decides.
                self.scanned(&held)?;
            }
            Phase::Swapping(mut s) => {
                s.up.finish(&mut s.sub, &mut last);
                self.phase = Phase::Swapping(s);
                self.scanned(&last)?;
            }
            Phase::Relay => {}
        }
        self.to_host.append(&mut self.up_held);
        self.up_done = true;
        Ok(())
    }

    fn flush_guest(
        &mut self,
        socket: &mut tcp::Socket<'static>,
        pool: &mut SocketPool,
        mem: &mut Grant,
    ) {
        while !self.to_guest.is_empty() && socket.can_send() {
            let room = pool.send_room(mem);
            let n = self.to_guest.len().min(room);
            if n == 0 {
                break;
            }
            let sent = socket.send_slice(&self.to_guest[..n]).unwrap_or(0);
            if sent == 0 {
                break;
            }
            pool.wrote(mem, sent);
            self.to_guest.drain(..sent);
        }
        if self.to_guest.is_empty() && self.to_guest.capacity() > 4 * CHUNK {
            self.to_guest = Vec::new();
        }
    }
}

/// Writes what waits for the server, as far as its socket takes it.
fn flush_host(pending: &mut Vec<u8>, host: &mut TcpStream) -> Result<(), Broken> {
    while !pending.is_empty() {
        match host.write(pending) {
            Ok(0) => break,
            Ok(n) => {
                pending.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Broken::Reset(CloseReason::UpstreamWrite(e.to_string()))),
        }
    }
    Ok(())
}

/// A request moat refused, or one carrying a placeholder its host may not receive.
fn refused(e: Refused) -> Broken {
    match e {
        Refused::Secret(i) => Broken::Secret(i),
        other => Broken::Reset(CloseReason::Refused(other.to_string())),
    }
}
