//! Buffer memory: how much the TCP connections' socket buffers may hold in all, and how
//! it is shared between them.
//!
//! # Theory of operation
//! Every TCP connection through moat has two smoltcp ring buffers: the *receive* ring
//! holds what the sandbox sent and the host has not taken yet, the *send* ring what the
//! host sent and the sandbox has not acknowledged. A side that never reads fills them,
//! so without a bound 1,024 such connections would hold gigabytes.
//!
//! smoltcp fixes a ring's capacity when the socket is made, and a ring's memory is
//! committed page by page as it is first written (the buffers are fresh anonymous pages:
//! large allocations come straight from `mmap`, see `moat_sandbox::sys`). The budget
//! therefore charges what can become resident:
//! - **receive rings are charged whole when a connection opens**, because the sandbox
//!   fills them at will (up to the window they advertise). The first connections get
//!   [`Budget::new`]'s `rx_full`; once receive rings hold a quarter of the budget, new
//!   ones get half as much, then half again, down to [`RX_FLOOR`] — the windows shrink,
//!   the memory does not grow;
//! - **send rings are charged as they are written**: moat writes into a send ring only
//!   what it reads from the host, so a connection's send ring grows page by page with
//!   the bytes it has moved (a ring's positions restart at 0 when its socket is reused
//!   and wrap at its capacity, so after `capacity` bytes the whole ring is charged and
//!   writing costs nothing more). When the budget is spent, a connection whose ring
//!   is not yet whole may write only into pages already charged; reading its host socket
//!   waits, and the host's TCP window closes — back-pressure, not memory.
//!
//! - **bodies held to be rewritten are charged while they are held**: to put a secret's
//!   value in a request body (or take it out of an answer) and send it with its new
//!   length, the swap holds a Content-Length body of up to 256 KiB until it is whole
//!   (`http/h1_swap.rs`). Before each piece is rewritten the connection is told what it
//!   may hold ([`Budget::hold_room`]: what it holds already, and what is left below half
//!   of what the send rings may grow into — held bodies never take the pages the other
//!   connections' rings need to go on, a new one's TLS handshake first); a body that
//!   does not fit is not held but streamed, re-framed as chunks, and what the connection
//!   holds after the piece is charged ([`Budget::set_held`]) — so a thousand connections
//!   each in the middle of a body stay within the budget. HTTP/2 DATA that waits for a
//!   receiver's window after a value made it longer (`http/h2_swap.rs`) is charged the
//!   same way; it cannot stream, so beyond the room the connection is refused.
//!
//! The send rings never take the last `RX_FLOOR × max_connections` bytes, so a new
//! connection always finds its floor while fewer than `max_connections` are open. An
//! eighth of the limit is kept back from the flows for the engine's own frames, the
//! bookkeeping of each connection and the process itself, so that the whole of moat stays
//! within the limit. A connection that cannot get even its floor is refused (RST, audited
//! as `max_buffer_memory`).

/// The smallest receive ring a connection gets.
pub(crate) const RX_FLOOR: usize = 16 * 1024;
/// The charging unit: memory is committed in pages.
const PAGE: usize = 4096;

/// What one socket's buffers are charged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Grant {
    /// Receive ring capacity, charged whole.
    pub rx: usize,
    /// Send ring capacity.
    pub tx_cap: usize,
    /// Bytes of the send ring charged: whole pages, from its start.
    pub tx_charged: usize,
    /// Bytes written into the send ring since its socket was last opened.
    pub tx_written: usize,
    /// Bytes of bodies the connection holds to rewrite them, charged while held.
    pub held: usize,
}

impl Grant {
    /// The grant of a socket whose rings are charged whole from the start (small, fixed
    /// rings such as those of DNS-over-TCP).
    pub(crate) fn whole(rx: usize, tx: usize) -> Grant {
        Grant {
            rx,
            tx_cap: tx,
            tx_charged: tx,
            tx_written: 0,
            held: 0,
        }
    }

    /// Everything this grant holds of the budget.
    pub(crate) fn total(&self) -> usize {
        self.rx + self.tx_charged + self.held
    }
}

/// The budget of one engine.
#[derive(Debug)]
pub(crate) struct Budget {
    /// What the flows may hold in all (the limit less the engine's eighth).
    flows: usize,
    /// The part of `flows` send rings may grow into.
    send_limit: usize,
    /// The receive ring a connection gets while memory is plentiful.
    rx_full: usize,
    /// Charged now: receive rings plus written send pages (live and pooled sockets).
    charged: usize,
    /// Of `charged`, receive rings.
    rx_reserved: usize,
}

impl Budget {
    /// A budget of `limit` bytes for at most `max_connections` connections whose receive
    /// rings are `rx_full` bytes while memory is plentiful.
    pub(crate) fn new(limit: usize, max_connections: usize, rx_full: usize) -> Budget {
        let flows = limit - limit / 8;
        let floors = RX_FLOOR.saturating_mul(max_connections).min(flows / 2);
        Budget {
            flows,
            send_limit: flows - floors,
            rx_full: rx_full.max(RX_FLOOR),
            charged: 0,
            rx_reserved: 0,
        }
    }

    /// The receive ring a connection gets while memory is plentiful.
    pub(crate) fn rx_full(&self) -> usize {
        self.rx_full
    }

    /// Bytes charged now.
    pub(crate) fn charged(&self) -> usize {
        self.charged
    }

    /// The receive ring size a new connection would get, or `None` when not even the
    /// floor fits.
    pub(crate) fn receive_size(&self) -> Option<usize> {
        let mut size = self.rx_full;
        while size > RX_FLOOR
            && (self.rx_reserved + size > self.flows / 4 || self.charged + size > self.send_limit)
        {
            size = (size / 2).max(RX_FLOOR);
        }
        (self.charged + size <= self.flows).then_some(size)
    }

    /// Whether `bytes` more fit (for rings charged whole).
    pub(crate) fn fits(&self, bytes: usize) -> bool {
        self.charged + bytes <= self.flows
    }

    /// Charges a new socket's grant (its receive ring and any whole send ring).
    pub(crate) fn charge(&mut self, grant: &Grant) {
        self.charged += grant.total();
        self.rx_reserved += grant.rx;
    }

    /// Gives back everything `grant` held.
    pub(crate) fn release(&mut self, grant: &Grant) {
        self.charged -= grant.total();
        self.rx_reserved -= grant.rx;
    }

    /// How many bytes of bodies `grant`'s connection may hold in all now: what it holds,
    /// and what is left below half the send limit (the other half, and the floors of new
    /// connections, stay for the rings).
    pub(crate) fn hold_room(&self, grant: &Grant) -> usize {
        grant.held + (self.send_limit / 2).saturating_sub(self.charged)
    }

    /// Charges `grant`'s connection for holding `held` bytes of bodies (within
    /// [`Budget::hold_room`]); less than before gives the difference back.
    pub(crate) fn set_held(&mut self, grant: &mut Grant, held: usize) {
        self.charged = self.charged - grant.held + held;
        grant.held = held;
    }

    /// How many bytes may be written into `grant`'s send ring now (`usize::MAX`: no
    /// limit from the budget).
    pub(crate) fn send_room(&self, grant: &Grant) -> usize {
        if grant.tx_charged >= grant.tx_cap {
            return usize::MAX;
        }
        let free = self.send_limit.saturating_sub(self.charged) / PAGE * PAGE;
        let reach = grant.tx_charged + free;
        if reach >= grant.tx_cap {
            return usize::MAX;
        }
        reach.saturating_sub(grant.tx_written)
    }

    /// Records `n` bytes written into `grant`'s send ring and charges the pages they
    /// reached. `n` must be within [`Budget::send_room`].
    pub(crate) fn wrote(&mut self, grant: &mut Grant, n: usize) {
        grant.tx_written = grant.tx_written.saturating_add(n);
        let reached = grant.tx_written.min(grant.tx_cap).div_ceil(PAGE) * PAGE;
        let reached = reached.min(grant.tx_cap);
        if reached > grant.tx_charged {
            self.charged += reached - grant.tx_charged;
            grant.tx_charged = reached;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    fn fresh(budget: &mut Budget, tx_cap: usize) -> Option<Grant> {
        let rx = budget.receive_size()?;
        let grant = Grant {
            rx,
            tx_cap,
            ..Grant::default()
        };
        budget.charge(&grant);
        Some(grant)
    }

    #[test]
    fn plentiful_memory_gives_full_receive_rings() {
        let mut b = Budget::new(256 * MIB, 1024, 256 * 1024);
        assert_eq!(b.rx_full(), 256 * 1024);
        assert_eq!(Budget::new(MIB, 1, 1024).rx_full(), RX_FLOOR);
        let g = fresh(&mut b, MIB).unwrap();
        assert_eq!(g.rx, 256 * 1024);
        assert_eq!(b.charged(), 256 * 1024);
        assert_eq!(b.send_room(&g), usize::MAX);
    }

    #[test]
    fn receive_rings_shrink_to_the_floor_and_every_connection_fits() {
        let mut b = Budget::new(256 * MIB, 1024, 256 * 1024);
        let grants: Vec<Grant> = (0..1024).map(|_| fresh(&mut b, MIB).unwrap()).collect();
        assert_eq!(grants[0].rx, 256 * 1024);
        assert_eq!(grants[1023].rx, 16 * 1024, "the documented floor");
        let rx: usize = grants.iter().map(|g| g.rx).sum();
        assert!(rx <= b.flows / 4 + 1024 * RX_FLOOR, "{rx}");
        assert!(b.charged() <= b.flows);
        // Given back, the rings are full size again.
        for g in &grants {
            b.release(g);
        }
        assert_eq!((b.charged(), b.receive_size()), (0, Some(256 * 1024)));
    }

    #[test]
    fn receive_rings_halve_to_what_fits_exactly() {
        const KIB: usize = 1024;
        // 8 MiB: 7 MiB for the flows, a quarter of it (1,792 KiB) for receive rings, and
        // sends up to 7 MiB less 4 floors (7,104 KiB).
        let mut b = Budget::new(8 * MIB, 4, 256 * KIB);
        b.charge(&Grant {
            rx: 1536 * KIB,
            ..Grant::default()
        });
        assert_eq!(
            b.receive_size(),
            Some(256 * KIB),
            "fills the quarter exactly"
        );
        b.charge(&Grant {
            rx: 64 * KIB,
            ..Grant::default()
        });
        assert_eq!(
            b.receive_size(),
            Some(128 * KIB),
            "192 KiB left: half a full ring"
        );
        // Releasing a small ring gives back only that much.
        let small = Grant {
            rx: 128 * KIB,
            ..Grant::default()
        };
        b.charge(&small);
        b.release(&small);
        assert_eq!(b.receive_size(), Some(128 * KIB));

        let mut b = Budget::new(8 * MIB, 4, 256 * KIB);
        b.charge(&Grant {
            tx_charged: 6976 * KIB,
            ..Grant::default()
        });
        assert_eq!(
            b.receive_size(),
            Some(128 * KIB),
            "reaches the send limit exactly"
        );
        b.charge(&Grant {
            tx_charged: 64 * KIB,
            ..Grant::default()
        });
        assert_eq!(b.receive_size(), Some(64 * KIB));
    }

    #[test]
    fn send_rings_are_charged_by_the_pages_written_and_wrap_for_free() {
        let mut b = Budget::new(256 * MIB, 16, 64 * 1024);
        let mut g = fresh(&mut b, MIB).unwrap();
        let base = b.charged();
        b.wrote(&mut g, 1);
        assert_eq!(b.charged(), base + PAGE);
        b.wrote(&mut g, PAGE - 1);
        assert_eq!(b.charged(), base + PAGE);
        b.wrote(&mut g, 3 * MIB);
        assert_eq!(b.charged(), base + MIB);
        assert_eq!(g.tx_charged, MIB);
        b.wrote(&mut g, 5 * MIB);
        assert_eq!(b.charged(), base + MIB);
        b.release(&g);
        assert_eq!(b.charged(), 0);
    }

    #[test]
    fn a_spent_budget_stops_new_send_pages_but_not_charged_ones() {
        // 8 MiB: 7 for the flows, 2 × 16 KiB of floors kept for new connections.
        let mut b = Budget::new(8 * MIB, 2, 64 * 1024);
        let mut hog = fresh(&mut b, 16 * MIB).unwrap();
        let room = b.send_room(&hog);
        assert!(room < 8 * MIB, "{room}");
        b.wrote(&mut hog, room);
        assert_eq!(b.send_room(&hog), 0);
        assert!(b.charged() <= b.send_limit);
        // A second connection still opens, at the floor, and may write into nothing new.
        let mut late = fresh(&mut b, MIB).unwrap();
        assert_eq!(late.rx, RX_FLOOR);
        assert_eq!(b.send_room(&late), 0);
        // Once the hog goes, the late connection's ring may grow whole.
        b.release(&hog);
        assert_eq!(b.send_room(&late), usize::MAX);
        b.wrote(&mut late, 2 * MIB);
        assert_eq!(late.tx_charged, MIB);
    }

    #[test]
    fn a_reused_socket_rewrites_its_charged_pages_for_free() {
        let mut b = Budget::new(8 * MIB, 2, 64 * 1024);
        let mut g = fresh(&mut b, 16 * MIB).unwrap();
        let room = b.send_room(&g);
        b.wrote(&mut g, room);
        let charged = b.charged();
        // Reopened: positions restart at 0; the pages up to tx_charged are paid for.
        g.tx_written = 0;
        assert_eq!(b.send_room(&g), g.tx_charged);
        let paid = g.tx_charged;
        b.wrote(&mut g, paid);
        assert_eq!(b.charged(), charged);
    }

    #[test]
    fn held_bodies_are_charged_within_the_send_limit() {
        // 8 MiB: 7 for the flows, 2 floors of 16 KiB kept for new connections.
        let mut b = Budget::new(8 * MIB, 2, 64 * 1024);
        let mut g = fresh(&mut b, MIB).unwrap();
        let base = b.charged();
        let room = b.hold_room(&g);
        assert_eq!(room, b.send_limit / 2 - base);
        b.set_held(&mut g, 256 * 1024);
        assert_eq!(b.charged(), base + 256 * 1024);
        assert_eq!(g.total(), g.rx + 256 * 1024);
        // What it holds counts in its own room, not against it.
        assert_eq!(b.hold_room(&g), room);
        // Another connection's room shrinks by it, and send pages with it.
        let mut other = fresh(&mut b, MIB).unwrap();
        assert_eq!(b.hold_room(&other), room - 256 * 1024 - other.rx);
        let many = b.hold_room(&other);
        b.set_held(&mut other, many);
        assert_eq!(b.hold_room(&other), many);
        assert_eq!(b.hold_room(&g), 256 * 1024, "no more for anyone");
        // Half the send limit is left for the rings to grow into.
        assert_eq!(b.charged(), b.send_limit / 2);
        assert!(b.send_room(&other) >= b.send_limit / 2 / PAGE * PAGE);
        assert!(b.receive_size().is_some(), "a new connection still opens");
        // Sent on: given back.
        b.set_held(&mut g, 0);
        b.set_held(&mut other, 0);
        assert_eq!(b.charged(), base + other.rx);
        b.release(&g);
        b.release(&other);
        assert_eq!(b.charged(), 0);
    }

    #[test]
    fn whole_rings_fit_or_are_refused() {
        let mut b = Budget::new(MIB, 1, 64 * 1024);
        let g = Grant::whole(128 * 1024, 128 * 1024);
        assert_eq!(g.total(), 256 * 1024);
        let mut n = 0;
        // Bounded: a megabyte holds few of them.
        while b.fits(g.total()) && n < 100 {
            b.charge(&g);
            n += 1;
        }
        assert_eq!(n, (MIB - MIB / 8) / g.total());
        assert!(b.receive_size().is_none_or(|s| s == RX_FLOOR));
    }
}
