//! smoltcp TCP sockets kept for reuse, and the buffer budget they are charged to.
//!
//! # Theory of operation
//! A socket's rings are allocated once, when it is made, and charged to the [`Budget`]
//! (see `budget.rs`). A connection that ends gives its socket back here; the next
//! connection whose buffer sizes match takes it instead of allocating (at most
//! [`TCP_POOL`] are kept). Pooled sockets stay charged, so when the budget runs short the
//! pool is emptied first: a new connection's receive ring, or a send ring's next page,
//! always comes before a socket nobody uses.

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;

use super::budget::{Budget, Grant};

/// smoltcp sockets kept for reuse.
const TCP_POOL: usize = 64;
/// A DNS-over-TCP connection's buffers each way: DNS messages are at most 64 KiB.
const DNS_STREAM_BUFFER: usize = 128 * 1024;

/// A refused connection's receive ring (deny mode `explain`): the request line and head
/// moat reads before it answers, or a TLS ClientHello.
pub(super) const REFUSAL_RX: usize = 8 * 1024;
/// A refused connection's send ring: moat's 403, or the TLS handshake (with the leaf) and
/// the 403 inside it.
const REFUSAL_TX: usize = 16 * 1024;

/// Closed sockets kept for reuse, and the budget every socket is charged to.
pub(super) struct SocketPool {
    pooled: Vec<(tcp::Socket<'static>, Grant)>,
    budget: Budget,
    /// A connection's send ring capacity.
    tcp_buffer: usize,
}

impl SocketPool {
    pub(super) fn new(budget: Budget, tcp_buffer: usize) -> SocketPool {
        SocketPool {
            pooled: Vec::new(),
            budget,
            tcp_buffer,
        }
    }

    /// Bytes the budget has charged.
    pub(super) fn charged(&self) -> usize {
        self.budget.charged()
    }

    /// A socket for a new TCP connection, with the largest receive buffer the budget
    /// has room for; `None` when it has none even after the pool is given up.
    pub(super) fn connection_socket(&mut self) -> Option<(tcp::Socket<'static>, Grant)> {
        let mut rx = self.budget.receive_size();
        if rx != Some(self.budget.rx_full()) && !self.pooled.is_empty() {
            self.empty();
            rx = self.budget.receive_size();
        }
        Some(self.take(rx?, self.tcp_buffer, false))
    }

    /// A socket for a DNS-over-TCP connection (small buffers, charged whole).
    pub(super) fn dns_socket(&mut self) -> Option<(tcp::Socket<'static>, Grant)> {
        self.whole_socket(DNS_STREAM_BUFFER, DNS_STREAM_BUFFER)
    }

    /// A socket for a refused connection moat answers itself (small buffers, charged
    /// whole); `None` when the budget has no room for it.
    pub(super) fn refusal_socket(&mut self) -> Option<(tcp::Socket<'static>, Grant)> {
        self.whole_socket(REFUSAL_RX, REFUSAL_TX)
    }

    /// A socket with small rings charged whole, after giving up the pool if that is what
    /// it takes; `None` when the budget has no room for it.
    fn whole_socket(&mut self, rx: usize, tx: usize) -> Option<(tcp::Socket<'static>, Grant)> {
        let want = Grant::whole(rx, tx).total();
        if !self.budget.fits(want) {
            self.empty();
        }
        self.budget.fits(want).then(|| self.take(rx, tx, true))
    }

    /// How many bytes may be written into `mem`'s send ring now, after giving up the
    /// pool if that is what it takes (`usize::MAX`: no limit).
    pub(super) fn send_room(&mut self, mem: &Grant) -> usize {
        let room = self.budget.send_room(mem);
        if room == 0 && !self.pooled.is_empty() {
            self.empty();
            return self.budget.send_room(mem);
        }
        room
    }

    /// How many bytes of bodies `mem`'s connection may hold in all now, after giving up
    /// the pool if it holds less than a full body's room.
    pub(super) fn hold_room(&mut self, mem: &Grant) -> usize {
        let room = self.budget.hold_room(mem);
        if room < moat_inspect::http::h1_swap::HOLD_BODY as usize && !self.pooled.is_empty() {
            self.empty();
            return self.budget.hold_room(mem);
        }
        room
    }

    /// Charges `mem`'s connection for holding `held` bytes of bodies (within
    /// [`Self::hold_room`]).
    pub(super) fn set_held(&mut self, mem: &mut Grant, held: usize) {
        self.budget.set_held(mem, held);
    }

    /// Records `n` bytes written into `mem`'s send ring (within [`Self::send_room`]).
    pub(super) fn wrote(&mut self, mem: &mut Grant, n: usize) {
        self.budget.wrote(mem, n);
    }

    /// Takes socket `handle` out of the set and keeps it for reuse. Outside the set an
    /// abort sends nothing; it only makes the socket reusable.
    pub(super) fn recycle(
        &mut self,
        sockets: &mut SocketSet<'static>,
        handle: SocketHandle,
        mem: Grant,
    ) {
        // With only TCP sockets in the set, every socket removed is a TCP one.
        let smoltcp::socket::Socket::Tcp(socket) = sockets.remove(handle);
        self.give_back(socket, mem);
    }

    /// Keeps a socket outside the set for reuse (its buffers stay charged), or drops it
    /// and gives its charge back when the pool is full.
    pub(super) fn give_back(&mut self, mut socket: tcp::Socket<'static>, mut mem: Grant) {
        socket.abort();
        // What the connection held of bodies went with it.
        self.budget.set_held(&mut mem, 0);
        if self.pooled.len() < TCP_POOL {
            self.pooled.push((socket, mem));
        } else {
            self.budget.release(&mem);
        }
    }

    /// A closed socket with these buffer capacities: from the pool when one fits (its
    /// buffers are charged already), else a new one, charged.
    fn take(&mut self, rx: usize, tx: usize, whole: bool) -> (tcp::Socket<'static>, Grant) {
        let fits = |(s, _): &(tcp::Socket<'static>, Grant)| {
            s.recv_capacity() == rx && s.send_capacity() == tx
        };
        if let Some(i) = self.pooled.iter().position(fits) {
            let (mut socket, mut mem) = self.pooled.swap_remove(i);
            // A peer without timestamps turned them off; the next may have them.
            socket.set_tsval_generator(Some(tsval));
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
    fn empty(&mut self) {
        for (_, mem) in self.pooled.drain(..) {
            self.budget.release(&mem);
        }
    }
}

/// A new smoltcp TCP socket with the given buffer capacities.
fn new_socket(rx: usize, tx: usize) -> tcp::Socket<'static> {
    let mut socket = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0u8; rx]),
        tcp::SocketBuffer::new(vec![0u8; tx]),
    );
    socket.set_nagle_enabled(false);
    socket.set_ack_delay(None);
    // TCP timestamps toward the sandbox (when its SYN offers them): its kernel can then
    // reuse a port in TIME-WAIT for a new connection (tcp_tw_reuse, set in the sandbox's
    // namespace), so a job opening connections fast does not run out of ports in a minute.
    socket.set_tsval_generator(Some(tsval));
    socket
}

/// Timestamp values: milliseconds since the first use, wrapping (RFC 7323 asks only that
/// they grow).
fn tsval() -> u32 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u32
}
