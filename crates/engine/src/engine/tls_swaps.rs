//! The secrets swapped inside an intercepted connection's plaintext (`tls_stage.rs`): the
//! sandbox's placeholders become values toward the server and values placeholders toward
//! the sandbox, inside the HTTP/1.1 or HTTP/2 framing the server chose (`moat-inspect`'s
//! `http/h1_swap.rs`, `http/h2_swap.rs`), with what the rewriting holds charged to the
//! buffer budget while it holds it (`budget.rs`); and the way of the sandbox's plaintext to
//! the server's TLS: swapped, scanned for placeholders the host may not receive, the end
//! that may begin one held back.

use std::io::Write;

use moat_inspect::http::{Authority, Refused, h1_swap, h2_swap};
use moat_inspect::secrets::swap::Swap;
use moat_inspect::secrets::{Scan, Scanner};
use rustls::ClientConnection;

use super::budget::Grant;
use super::close::TlsFailure;
use super::pool::SocketPool;

/// The secrets swapped on one intercepted connection: the sandbox's placeholders become
/// values toward the server, the values placeholders toward the sandbox
/// (`secrets/swap.rs`), inside the HTTP framing (`http/h1_swap.rs`, `http/h2_swap.rs`).
pub(super) struct Swaps {
    /// Placeholder → value, toward the server.
    sub: Swap,
    /// Value → placeholder, toward the sandbox.
    red: Swap,
    proto: SwapProto,
    /// What the sandbox's bodies and HTTP/2 header blocks are scanned for once they are
    /// read (the connection's own scan sees only the bytes as framed).
    scan: Scanner,
    /// Rewritten bytes, reused.
    out: Vec<u8>,
}

/// How an open connection's messages are rewritten.
enum SwapProto {
    /// The protocol is not known yet (handshakes under way).
    Pending,
    H1 {
        up: Box<h1_swap::Messages>,
        down: Box<h1_swap::Messages>,
        exchange: h1_swap::Exchange,
    },
    H2(Box<h2_swap::Connection>),
    /// Another protocol: moat cannot read it, so nothing is swapped.
    Off,
}

impl Swaps {
    /// Swaps with `sub` toward the server and `red` toward the sandbox; the sandbox's
    /// messages are scanned for what `scan` looks for.
    pub(super) fn new(sub: Swap, red: Swap, scan: Scanner) -> Swaps {
        Swaps {
            sub,
            red,
            proto: SwapProto::Pending,
            scan,
            out: Vec::new(),
        }
    }

    /// The protocol the server chose (ALPN; none is HTTP/1.1): how messages are rewritten
    /// from now on. Another protocol cannot be read, so nothing is swapped on it. Requests
    /// are also checked here against `expect`, the authority the handshake named
    /// (see [`Swaps::checks_requests`]).
    pub(super) fn speak(&mut self, alpn: Option<&[u8]>, expect: &Authority) {
        self.proto = match alpn {
            None | Some(b"http/1.1") => SwapProto::H1 {
                up: Box::new(
                    h1_swap::Messages::new(h1_swap::Side::Request)
                        .scanning(self.scan.clone())
                        .checking(expect.clone()),
                ),
                down: Box::new(h1_swap::Messages::new(h1_swap::Side::Response)),
                exchange: h1_swap::Exchange::default(),
            },
            Some(b"h2") => SwapProto::H2(Box::new(
                h2_swap::Connection::new()
                    .scanning(self.scan.clone())
                    .checking(expect.clone()),
            )),
            Some(_) => SwapProto::Off,
        };
    }

    /// Runs `f` with the rewriting told what the buffer budget lets it hold, and charges
    /// what it holds after it (`engine/budget.rs`): an HTTP/1.1 body that does not fit
    /// streams instead of being held; HTTP/2 DATA waiting for a receiver's window beyond
    /// it refuses the connection.
    pub(super) fn within<T>(&mut self, room: &mut Room<'_>, f: impl FnOnce(&mut Swaps) -> T) -> T {
        match &mut self.proto {
            SwapProto::H1 { up, down, .. } => {
                let all = room.pool.hold_room(room.mem);
                up.allow(all.saturating_sub(down.held()));
                down.allow(all.saturating_sub(up.held()));
            }
            SwapProto::H2(c) => c.allow(room.pool.hold_room(room.mem)),
            SwapProto::Pending | SwapProto::Off => {}
        }
        let result = f(self);
        let held = match &self.proto {
            SwapProto::H1 { up, down, .. } => up.held() + down.held(),
            SwapProto::H2(c) => c.held(),
            _ => 0,
        };
        room.pool.set_held(room.mem, held);
        result
    }

    /// The sandbox's plaintext, rewritten, into `out`.
    pub(super) fn up(
        &mut self,
        data: &[u8],
        out: &mut Vec<u8>,
        room: &mut Room<'_>,
    ) -> Result<(), Refused> {
        self.within(room, |sw| match &mut sw.proto {
            SwapProto::H1 { up, exchange, .. } => up.push(&mut sw.sub, exchange, data, out),
            SwapProto::H2(c) => c.up(&mut sw.sub, data, out),
            SwapProto::Pending | SwapProto::Off => {
                out.extend_from_slice(data);
                Ok(())
            }
        })
    }

    /// Whether the request side checks each request as the anti-fronting reader does
    /// (HTTP/1.1 and HTTP/2): the relay then needs no reader of its own, and a request is
    /// read once.
    pub(super) fn checks_requests(&self) -> bool {
        matches!(self.proto, SwapProto::H1 { .. } | SwapProto::H2(_))
    }

    /// The HTTP/2 stream of the request being read or refused (0: none, or not HTTP/2).
    pub(super) fn stream(&self) -> u32 {
        match &self.proto {
            SwapProto::H2(c) => c.stream(),
            _ => 0,
        }
    }

    /// The server's plaintext, rewritten.
    pub(super) fn down(&mut self, data: &[u8], room: &mut Room<'_>) -> Result<&[u8], Refused> {
        self.out.clear();
        self.within(room, |sw| match &mut sw.proto {
            SwapProto::H1 { down, exchange, .. } => {
                down.push(&mut sw.red, exchange, data, &mut sw.out)
            }
            SwapProto::H2(c) => c.down(&mut sw.red, data, &mut sw.out),
            SwapProto::Pending | SwapProto::Off => {
                sw.out.extend_from_slice(data);
                Ok(())
            }
        })?;
        Ok(&self.out)
    }

    /// The sandbox finished sending: what its side held, into `out`.
    pub(super) fn finish_up(&mut self, out: &mut Vec<u8>) {
        if let SwapProto::H1 { up, .. } = &mut self.proto {
            up.finish(&mut self.sub, out);
        }
    }

    /// The server finished sending: what its side held.
    pub(super) fn finish_down(&mut self) -> &[u8] {
        self.out.clear();
        if let SwapProto::H1 { down, .. } = &mut self.proto {
            down.finish(&mut self.red, &mut self.out);
        }
        &self.out
    }

    /// moat's own frames waiting to go to the sandbox (between the server's frames).
    pub(super) fn queued_down(&mut self) -> &[u8] {
        self.out.clear();
        if let SwapProto::H2(c) = &mut self.proto
            && c.queued_down()
        {
            c.flush_down(&mut self.out);
        }
        &self.out
    }

    /// moat's own frames waiting to go to the server (between the sandbox's frames).
    pub(super) fn queued_up(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if let SwapProto::H2(c) = &mut self.proto
            && c.queued_up()
        {
            c.flush_up(&mut out);
        }
        out
    }

    /// Lets go of the scratch buffer (an idle connection keeps none).
    pub(super) fn shed(&mut self) {
        self.out = Vec::new();
    }

    /// The secrets substituted and redacted since the last call (bit `i`: secret `i`).
    pub(super) fn take_hits(&mut self) -> (u64, u64) {
        (self.sub.take_hits(), self.red.take_hits())
    }
}

/// The buffer budget and the connection's grant, for what its swaps hold.
pub(super) struct Room<'a> {
    pub(super) pool: &'a mut SocketPool,
    pub(super) mem: &'a mut Grant,
}

/// Queues moat's own HTTP/2 frames for the server (window given back, DATA the server's
/// window has room for again) when nothing of the sandbox's is held part-way; whether
/// there were any.
pub(super) fn queue_moats_frames(
    swaps: Option<&mut Swaps>,
    up_held: &[u8],
    client: &mut ClientConnection,
) -> bool {
    let Some(sw) = swaps else {
        return false;
    };
    if !up_held.is_empty() {
        return false;
    }
    let queued = sw.queued_up();
    if queued.is_empty() {
        return false;
    }
    let _ = client.writer().write_all(&queued);
    true
}

/// The sandbox's plaintext `pass`, rewritten when secrets are swapped (into `swapped`).
pub(super) fn swap_up<'a>(
    swaps: Option<&mut Swaps>,
    pass: &'a [u8],
    swapped: &'a mut Vec<u8>,
    room: &mut Room<'_>,
) -> Result<&'a [u8], Refused> {
    let Some(sw) = swaps else {
        return Ok(pass);
    };
    swapped.clear();
    sw.up(pass, swapped, room)?;
    Ok(swapped)
}

/// The sandbox finished sending: what the rewriting held, then what the scanner held, go
/// to the server, then `close_notify`.
pub(super) fn end_up(
    client: &mut ClientConnection,
    held: &mut Vec<u8>,
    swaps: Option<&mut Swaps>,
    scanner: Option<&mut Scanner>,
) -> Result<(), TlsFailure> {
    if let Some(sw) = swaps {
        let mut last = Vec::new();
        sw.finish_up(&mut last);
        if !last.is_empty() {
            let data = cleared(scanner, held, &last)?;
            let _ = client.writer().write_all(&data);
        }
    }
    release(client, held);
    client.send_close_notify();
    Ok(())
}

/// What of `held` and then `pass` may go to the server now: scanned for placeholders
/// (a find stops the connection); an end that may begin one is kept in `held`.
pub(super) fn cleared(
    scanner: Option<&mut Scanner>,
    held: &mut Vec<u8>,
    pass: &[u8],
) -> Result<Vec<u8>, TlsFailure> {
    let mut out = std::mem::take(held);
    out.extend_from_slice(pass);
    if let Some(s) = scanner {
        match s.scan(&out) {
            Scan::Found(i) => return Err(TlsFailure::Secret(i)),
            Scan::Pass(n) => *held = out.split_off(n),
        }
    }
    Ok(out)
}

/// The sandbox finished sending: bytes held back as a possible start of a placeholder
/// cannot become one any more, and go to the server.
pub(super) fn release(client: &mut ClientConnection, held: &mut Vec<u8>) {
    if !held.is_empty() {
        let _ = client.writer().write_all(held);
        held.clear();
    }
}
