//! HTTP/2 rewritten for secrets on an intercepted connection: placeholders become values in
//! the sandbox's header blocks and DATA on the way to an allowed host, values become
//! placeholders in the server's on the way back, with frames, HPACK and flow control kept
//! right on both legs.
//!
//! # Theory of operation
//! [`Connection`] follows both directions' frames (RFC 9113) in whatever pieces they come.
//! - **Header blocks** (HEADERS, PUSH_PROMISE and their CONTINUATIONs) are held until
//!   whole, decoded with a decoder that mirrors the sender's encoder (its dynamic table
//!   kept across the connection), each field swapped ([`Swap::field`]: Basic credentials
//!   inside their base64), and encoded again by moat with literals that never enter a
//!   dynamic table — so each leg's tables stay right whatever the other leg did; a field
//!   that carries a value is marked never-indexed. The block goes out in frames of at most
//!   16 KiB (the smallest maximum a peer may set); padding and the deprecated priority
//!   fields are dropped.
//! - **DATA** is rewritten per stream as a stream ([`SwapStream`]): a placeholder split
//!   across frames is still replaced whole, and what a piece may begin waits for the next
//!   (the stream's end lets it go). Each piece goes out as its own DATA frame.
//! - **Flow control.** A sender counts the DATA it sent against the receiver's window; the
//!   receiver counts what it got, which differs once bytes were swapped (or padding
//!   dropped). moat keeps the two views equal: bytes removed are given back to the sender
//!   at once with WINDOW_UPDATE frames of moat's (stream and connection); bytes added are a
//!   debt taken out of the receiver's next WINDOW_UPDATEs to the sender (an update used up
//!   entirely is dropped: an increment of 0 is an error). Until those updates come, the
//!   sender may believe in up to the debt more window than the receiver granted, so moat
//!   also follows the receiver's own windows (its SETTINGS_INITIAL_WINDOW_SIZE and every
//!   WINDOW_UPDATE it sends) and, when a DATA frame would run over one, holds that frame
//!   and everything after it in this direction until the receiver opens its window (at
//!   most [`MAX_STALLED`]: the debt, with a margin; and no more than the buffer budget
//!   lets the connection hold, [`Connection::allow`], charged by the engine: beyond it
//!   the connection is refused).
//! - **Codings and ranges.** On a connection that carries a value, a request's header block
//!   asks for `accept-encoding: identity` and loses `range`, `if-range` and `te`, and a
//!   response with a body in a `content-encoding` other than identity is refused: redaction
//!   reads only what is not compressed, and a value cut in ranges would match in no piece
//!   (the reasons are `h1_swap.rs`'s).
//! - **Requests checked** ([`Connection::checking`]): the sandbox's frames follow the
//!   anti-fronting reader's rule and each block it decodes here passes its check (`h2.rs`),
//!   so on a connection that swaps a block is decoded once; a refused request's frames
//!   never go, and [`Connection::stream`] names it for moat's answer. A header block is
//!   measured as the reader measures it (its frames whole, at most 256 KiB).
//! - Every other frame passes as it comes. moat's own frames are put in between frames,
//!   never inside one.

use std::collections::HashMap;

use super::{Authority, Refused};
use crate::secrets::swap::{Swap, SwapStream};
use crate::secrets::{BodyScan, Scanner};

use super::h2::{
    CONTINUATION, DATA, END_HEADERS, END_STREAM, FRAME_HEADER, HEADERS, MAX_TABLE, PADDED, PREFACE,
    PRIORITY, PUSH_PROMISE, frame, in_place,
};
use super::h2_block::{Coding, Judge, reencode};

/// The largest payload moat writes in one frame (every peer accepts 16 KiB).
const MAX_FRAME: usize = 16 * 1024;
/// The most header block held at once.
const MAX_BLOCK: usize = super::h2::MAX_BLOCK;
/// The most held back while a receiver's window is short.
pub const MAX_STALLED: usize = 4 * 1024 * 1024;
/// A window's size before the receiver says otherwise (RFC 9113 §6.9.2).
const DEFAULT_WINDOW: i64 = 65_535;
const SETTINGS: u8 = 0x4;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
const ACK: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const WINDOW_UPDATE: u8 = 0x8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// How much of the client preface has passed.
    Preface(usize),
    /// Reading a frame header.
    Header,
    /// Passing this much of a frame's payload as it is.
    Pass(u32),
    /// Holding this much more of a frame's payload (header blocks, WINDOW_UPDATE).
    Hold(u32),
    /// A padded DATA frame's pad length byte.
    PadLength,
    /// DATA content (bytes left), then padding.
    Data { content: u32, padding: u32 },
    /// DATA padding left.
    Padding(u32),
}

/// The frame being read.
#[derive(Debug, Clone, Copy, Default)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    len: u32,
}

/// One direction's frames.
struct Direction {
    state: State,
    head: [u8; FRAME_HEADER],
    have: usize,
    frame: Frame,
    /// A held payload.
    payload: Vec<u8>,
    /// The header block being assembled, its first frame, and a PUSH_PROMISE's stream.
    block: Vec<u8>,
    block_frame: Option<Frame>,
    promised: u32,
    /// The stream whose header block is being read or was refused (0: none), and the
    /// bytes of its frames before the one being read (headers and payloads: the reader's
    /// measure of a block, `h2.rs`).
    block_stream: u32,
    block_raw: usize,
    /// The authority every request must name (the sandbox's direction, when this side
    /// checks requests as the anti-fronting reader does).
    check: Option<Authority>,
    decoder: loona_hpack::Decoder<'static>,
    /// Each stream's DATA being rewritten.
    streams: HashMap<u32, SwapStream>,
    /// What this direction's header blocks and DATA are scanned for (placeholders the host
    /// may not receive; the sandbox's direction only), and each stream's DATA scan.
    scan: Option<Scanner>,
    guards: HashMap<u32, BodyScan>,
    /// The DATA frame being read: its bytes sent on so far, and what its stream held
    /// before it.
    sent: u64,
    held_before: usize,
    /// Per stream (0: the connection): bytes added and not yet taken out of the
    /// receiver's WINDOW_UPDATEs.
    debt: HashMap<u32, u64>,
    /// moat's frames waiting to go this way at the next frame boundary.
    queued: Vec<u8>,
    /// The receiver's windows for this direction's DATA as it granted them: the
    /// connection's, each stream's, and a new stream's (its SETTINGS_INITIAL_WINDOW_SIZE).
    window: i64,
    windows: HashMap<u32, i64>,
    window_initial: i64,
    /// Output held because a DATA frame in it ran over a window, and everything after it.
    stalled: Vec<u8>,
    /// Where in the step's output the first frame over a window starts.
    stall_at: Option<usize>,
    /// DATA pieces rewritten, reused.
    scratch: Vec<u8>,
    /// The most `stalled` may hold (the buffer budget's room, at most [`MAX_STALLED`]).
    stall_limit: usize,
}

impl Direction {
    fn new(preface: bool) -> Direction {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(MAX_TABLE);
        Direction {
            state: if preface {
                State::Preface(0)
            } else {
                State::Header
            },
            head: [0; FRAME_HEADER],
            have: 0,
            frame: Frame::default(),
            payload: Vec::new(),
            block: Vec::new(),
            block_frame: None,
            promised: 0,
            block_stream: 0,
            block_raw: 0,
            check: None,
            decoder,
            streams: HashMap::new(),
            scan: None,
            guards: HashMap::new(),
            sent: 0,
            held_before: 0,
            debt: HashMap::new(),
            queued: Vec::new(),
            window: DEFAULT_WINDOW,
            windows: HashMap::new(),
            window_initial: DEFAULT_WINDOW,
            stalled: Vec::new(),
            stall_at: None,
            scratch: Vec::new(),
            stall_limit: MAX_STALLED,
        }
    }

    fn at_boundary(&self) -> bool {
        self.state == State::Header && self.have == 0
    }

    /// Keeps the stream windows bounded: past 1,024 streams, those not short are
    /// forgotten (a stream that sends again starts from the initial window: never more
    /// than the receiver granted).
    fn prune(&mut self) {
        if self.windows.len() > 1024 {
            self.windows.retain(|_, w| *w < 0);
        }
    }

    /// Whether the receiver's windows have room again for what is held.
    fn open(&self) -> bool {
        self.window >= 0 && self.windows.values().all(|&w| w >= 0)
    }

    /// Takes `len` bytes of DATA on `stream` out of the receiver's windows; when that runs
    /// over one, the frame (starting at `at` in the step's output) and what follows wait.
    fn spend(&mut self, stream: u32, len: usize, at: usize) {
        let len = len as i64;
        self.window -= len;
        let initial = self.window_initial;
        let w = self.windows.entry(stream).or_insert(initial);
        *w -= len;
        if (*w < 0 || self.window < 0) && self.stall_at.is_none() && self.stalled.is_empty() {
            self.stall_at = Some(at);
        }
    }

    /// Appends a step's output to `out`, or to what waits for the receiver's window.
    fn sink(&mut self, step_out: &mut Vec<u8>, out: &mut Vec<u8>) -> Result<(), Refused> {
        if let Some(at) = self.stall_at.take() {
            out.extend_from_slice(&step_out[..at]);
            self.stalled.extend_from_slice(&step_out[at..]);
        } else if self.stalled.is_empty() {
            out.append(step_out);
        } else {
            self.stalled.append(step_out);
        }
        step_out.clear();
        if self.stalled.len() > MAX_STALLED {
            return Err(Refused::Malformed(
                "HTTP/2 DATA far beyond the receiver's window",
            ));
        }
        if self.stalled.len() > self.stall_limit {
            return Err(Refused::Budget);
        }
        Ok(())
    }

    /// What waited for the receiver's window goes, once it has room.
    fn release(&mut self, out: &mut Vec<u8>) {
        if !self.stalled.is_empty() && self.open() {
            out.append(&mut self.stalled);
        }
    }

    /// What `stream`'s DATA holds back (rewriting and scanning).
    fn held(&self, stream: u32) -> usize {
        self.streams.get(&stream).map_or(0, SwapStream::held)
            + self.guards.get(&stream).map_or(0, BodyScan::held)
    }

    /// Appends a rewritten piece of `stream`'s DATA as frames (`flags` on the last),
    /// scanned first; with END_STREAM what the scan held goes too.
    fn emit(
        &mut self,
        stream: u32,
        piece: &[u8],
        flags: u8,
        out: &mut Vec<u8>,
    ) -> Result<(), Refused> {
        let Some(template) = &self.scan else {
            self.sent += piece.len() as u64;
            self.spend(stream, piece.len(), out.len());
            data_frames(out, stream, piece, flags);
            return Ok(());
        };
        let guard = self
            .guards
            .entry(stream)
            .or_insert_with(|| BodyScan::new(template));
        let mut passed = Vec::with_capacity(piece.len());
        guard.pass(piece, &mut passed).map_err(Refused::Secret)?;
        if flags & END_STREAM != 0 {
            guard.end(&mut passed);
            self.guards.remove(&stream);
        }
        self.sent += passed.len() as u64;
        self.spend(stream, passed.len(), out.len());
        data_frames(out, stream, &passed, flags);
        Ok(())
    }
}

/// Both directions of one HTTP/2 connection (see the module header).
pub struct Connection {
    up: Direction,
    down: Direction,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("up", &self.up.state)
            .field("down", &self.down.state)
            .finish_non_exhaustive()
    }
}

impl Default for Connection {
    fn default() -> Self {
        Connection::new()
    }
}

/// Which way bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    /// The sandbox's, to the server (after the client preface).
    Up,
    /// The server's, to the sandbox.
    Down,
}

impl Connection {
    /// A connection whose client preface has not been seen yet.
    pub fn new() -> Connection {
        Connection {
            up: Direction::new(true),
            down: Direction::new(false),
        }
    }

    /// From now on what waits for a receiver's window may be at most `bytes` in all (what
    /// the buffer budget lets this connection hold); more refuses the connection.
    pub fn allow(&mut self, bytes: usize) {
        let limit = bytes.min(MAX_STALLED);
        self.up.stall_limit = limit.saturating_sub(self.down.stalled.len());
        self.down.stall_limit = limit.saturating_sub(self.up.stalled.len());
    }

    /// How many bytes wait for a receiver's window, both ways.
    pub fn held(&self) -> usize {
        self.up.stalled.len() + self.down.stalled.len()
    }

    /// Every request must name `expect`, checked as the anti-fronting reader checks it
    /// (`h2.rs`'s `in_place` and `BlockCheck`) on the block this side decodes anyway: a
    /// connection that swaps reads each request once, and the request the check passed is
    /// the request rewritten. A refused request's frames never pass; those before it do.
    pub fn checking(mut self, expect: Authority) -> Connection {
        self.up.check = Some(expect);
        self
    }

    /// The stream of the sandbox's header block being read, or refused (0: none): where
    /// moat's answer to a refused request goes.
    pub fn stream(&self) -> u32 {
        self.up.block_stream
    }

    /// The sandbox's header blocks and DATA are scanned for what `template` looks for.
    pub fn scanning(mut self, template: Scanner) -> Connection {
        self.up.scan = (!template.is_idle()).then_some(template);
        self
    }

    /// The sandbox's bytes (its preface first): appends to `out` what goes to the server.
    pub fn up(&mut self, swap: &mut Swap, input: &[u8], out: &mut Vec<u8>) -> Result<(), Refused> {
        self.push(Way::Up, swap, input, out)
    }

    /// The server's bytes: appends to `out` what goes to the sandbox.
    pub fn down(
        &mut self,
        swap: &mut Swap,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), Refused> {
        self.push(Way::Down, swap, input, out)
    }

    /// Appends what waits to go to the server and may go now: frames held for the
    /// server's window once it has room, and moat's own frames at a frame boundary.
    pub fn flush_up(&mut self, out: &mut Vec<u8>) {
        Self::flush(&mut self.up, out);
    }

    /// Appends what waits to go to the sandbox and may go now (see [`Self::flush_up`]).
    pub fn flush_down(&mut self, out: &mut Vec<u8>) {
        Self::flush(&mut self.down, out);
    }

    fn flush(this: &mut Direction, out: &mut Vec<u8>) {
        this.release(out);
        if this.at_boundary() && !this.queued.is_empty() {
            let mut queued = std::mem::take(&mut this.queued);
            // Behind anything still held, in order.
            let _ = this.sink(&mut queued, out);
        }
    }

    /// Whether something waits to go to the server (see [`Self::flush_up`]).
    pub fn queued_up(&self) -> bool {
        !self.up.queued.is_empty() || (!self.up.stalled.is_empty() && self.up.open())
    }

    /// Whether something waits to go to the sandbox (see [`Self::flush_down`]).
    pub fn queued_down(&self) -> bool {
        !self.down.queued.is_empty() || (!self.down.stalled.is_empty() && self.down.open())
    }

    fn push(
        &mut self,
        way: Way,
        swap: &mut Swap,
        mut input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), Refused> {
        let (this, other) = match way {
            Way::Up => (&mut self.up, &mut self.down),
            Way::Down => (&mut self.down, &mut self.up),
        };
        this.release(out);
        let mut step_out = Vec::new();
        while !input.is_empty() {
            if this.at_boundary() {
                step_out.append(&mut this.queued);
            }
            input = step(this, other, way, swap, input, &mut step_out)?;
            this.sink(&mut step_out, out)?;
        }
        if this.at_boundary() {
            step_out.append(&mut this.queued);
            this.sink(&mut step_out, out)?;
        }
        Ok(())
    }
}

/// Consumes some of `input` (at least one byte) of `this` direction; returns the rest.
fn step<'a>(
    this: &mut Direction,
    other: &mut Direction,
    way: Way,
    swap: &mut Swap,
    input: &'a [u8],
    out: &mut Vec<u8>,
) -> Result<&'a [u8], Refused> {
    match this.state {
        State::Preface(seen) => {
            let n = input.len().min(PREFACE.len() - seen);
            if input[..n] != PREFACE[seen..seen + n] {
                return Err(Refused::Malformed("not the HTTP/2 connection preface"));
            }
            out.extend_from_slice(&input[..n]);
            this.state = if seen + n == PREFACE.len() {
                State::Header
            } else {
                State::Preface(seen + n)
            };
            Ok(&input[n..])
        }
        State::Header => {
            let n = input.len().min(FRAME_HEADER - this.have);
            this.head[this.have..this.have + n].copy_from_slice(&input[..n]);
            this.have += n;
            if this.have == FRAME_HEADER {
                this.have = 0;
                frame_header(this, other, swap, way, out)?;
            }
            Ok(&input[n..])
        }
        State::Pass(left) => {
            let n = input.len().min(left as usize);
            out.extend_from_slice(&input[..n]);
            let left = left - n as u32;
            this.state = if left == 0 {
                State::Header
            } else {
                State::Pass(left)
            };
            Ok(&input[n..])
        }
        State::Hold(left) => {
            let n = input.len().min(left as usize);
            // A header block is measured as the reader measures it: its frames whole.
            let held = match this.frame.kind {
                HEADERS | PUSH_PROMISE | CONTINUATION => this.block_raw + FRAME_HEADER,
                _ => 0,
            };
            if held + this.payload.len() + n > MAX_BLOCK {
                return Err(Refused::TooLarge);
            }
            this.payload.extend_from_slice(&input[..n]);
            let left = left - n as u32;
            if left == 0 {
                this.state = State::Header;
                payload_held(this, other, swap, way, out)?;
            } else {
                this.state = State::Hold(left);
            }
            Ok(&input[n..])
        }
        State::PadLength => {
            let pad = u32::from(input[0]);
            let content = (this.frame.len - 1)
                .checked_sub(pad)
                .ok_or(Refused::Malformed("HTTP/2 padding longer than its frame"))?;
            this.state = State::Data {
                content,
                padding: pad,
            };
            if content == 0 {
                data_done(this, other, swap, out)?;
            }
            Ok(&input[1..])
        }
        State::Data { content, padding } => {
            let n = input.len().min(content as usize);
            let f = this.frame;
            let mut piece = std::mem::take(&mut this.scratch);
            piece.clear();
            this.streams
                .entry(f.stream)
                .or_default()
                .push(swap, &input[..n], &mut piece);
            let sent = this.emit(f.stream, &piece, 0, out);
            this.scratch = piece;
            sent?;
            let content = content - n as u32;
            this.state = State::Data { content, padding };
            if content == 0 {
                data_done(this, other, swap, out)?;
            }
            Ok(&input[n..])
        }
        State::Padding(left) => {
            let n = input.len().min(left as usize);
            let left = left - n as u32;
            this.state = if left == 0 {
                State::Header
            } else {
                State::Padding(left)
            };
            Ok(&input[n..])
        }
    }
}

/// A whole frame header has arrived.
fn frame_header(
    this: &mut Direction,
    other: &mut Direction,
    swap: &mut Swap,
    way: Way,
    out: &mut Vec<u8>,
) -> Result<(), Refused> {
    let h = this.head;
    let f = Frame {
        len: u32::from_be_bytes([0, h[0], h[1], h[2]]),
        kind: h[3],
        flags: h[4],
        stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
    };
    this.frame = f;
    // As the reader follows frames (`h2.rs`), both ways.
    in_place(f.kind, f.stream, this.block_stream, way == Way::Up)?;
    match f.kind {
        HEADERS | PUSH_PROMISE | CONTINUATION | WINDOW_UPDATE | SETTINGS => {
            if matches!(f.kind, HEADERS | PUSH_PROMISE) {
                this.block_stream = f.stream;
            }
            this.payload.clear();
            this.state = State::Hold(f.len);
            if f.len == 0 {
                this.state = State::Header;
                payload_held(this, other, swap, way, out)?;
            }
        }
        DATA => {
            this.sent = 0;
            this.held_before = this.held(f.stream);
            if f.flags & PADDED != 0 {
                if f.len == 0 {
                    return Err(Refused::Malformed("an HTTP/2 padding length missing"));
                }
                this.state = State::PadLength;
            } else {
                this.state = State::Data {
                    content: f.len,
                    padding: 0,
                };
                if f.len == 0 {
                    data_done(this, other, swap, out)?;
                }
            }
        }
        _ => {
            if f.kind == RST_STREAM {
                this.streams.remove(&f.stream);
                this.guards.remove(&f.stream);
                this.debt.remove(&f.stream);
                // Either side's reset ends the stream's windows both ways.
                this.windows.remove(&f.stream);
                other.windows.remove(&f.stream);
            }
            out.extend_from_slice(&h);
            this.state = if f.len == 0 {
                State::Header
            } else {
                State::Pass(f.len)
            };
        }
    }
    Ok(())
}

/// A DATA frame's content has all come: its padding is skipped, its end of stream lets
/// what was held go, and the flow-control views are made equal again.
fn data_done(
    this: &mut Direction,
    other: &mut Direction,
    swap: &mut Swap,
    out: &mut Vec<u8>,
) -> Result<(), Refused> {
    let f = this.frame;
    let end = f.flags & END_STREAM != 0;
    let held_after = if end {
        let mut last = Vec::new();
        if let Some(mut stream) = this.streams.remove(&f.stream) {
            stream.finish(swap, &mut last);
        }
        this.emit(f.stream, &last, END_STREAM, out)?;
        0
    } else {
        this.held(f.stream)
    };
    // What the receiver will count for this frame, against what the sender did.
    let delta = (this.sent + held_after as u64) as i64 - this.held_before as i64 - i64::from(f.len);
    if !end {
        settle(this, other, f.stream, delta);
    } else {
        this.debt.remove(&f.stream);
        // The stream sends no more; a window it ran over stays until the receiver opens it.
        if this.windows.get(&f.stream).is_some_and(|&w| w >= 0) {
            this.windows.remove(&f.stream);
        }
    }
    settle(this, other, 0, delta);
    this.state = match this.state {
        State::Data { padding, .. } if padding > 0 => State::Padding(padding),
        _ => State::Header,
    };
    Ok(())
}

/// Keeps the sender's view of `stream`'s window (0: the connection's) equal to the
/// receiver's after `delta` more bytes (fewer, when negative) went to the receiver than
/// the sender counted.
fn settle(this: &mut Direction, other: &mut Direction, stream: u32, delta: i64) {
    if delta > 0 {
        *this.debt.entry(stream).or_default() += delta.unsigned_abs();
    } else if delta < 0 {
        let give = delta.unsigned_abs();
        let debt = this.debt.entry(stream).or_default();
        let paid = give.min(*debt);
        *debt -= paid;
        let refund = give - paid;
        if refund > 0 {
            // Toward the sender: the other direction's stream.
            let inc = u32::try_from(refund)
                .unwrap_or(0x7fff_ffff)
                .min(0x7fff_ffff);
            frame(
                &mut other.queued,
                WINDOW_UPDATE,
                0,
                stream,
                &inc.to_be_bytes(),
            );
        }
    }
}

/// A held payload is whole.
fn payload_held(
    this: &mut Direction,
    other: &mut Direction,
    swap: &mut Swap,
    way: Way,
    out: &mut Vec<u8>,
) -> Result<(), Refused> {
    let f = this.frame;
    let payload = std::mem::take(&mut this.payload);
    if f.kind == SETTINGS {
        // The receiver of the other direction's DATA sets its streams' initial window.
        if f.flags & ACK == 0 && f.stream == 0 {
            for entry in payload.chunks_exact(6) {
                if u16::from_be_bytes([entry[0], entry[1]]) == SETTINGS_INITIAL_WINDOW_SIZE {
                    let size =
                        i64::from(u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]));
                    let delta = size - other.window_initial;
                    other.window_initial = size;
                    for w in other.windows.values_mut() {
                        *w += delta;
                    }
                }
            }
        }
        out.extend_from_slice(&this.head);
        out.extend_from_slice(&payload);
        this.payload = payload;
        return Ok(());
    }
    if f.kind == WINDOW_UPDATE {
        // The receiver of the other direction's DATA gives window back: less what the
        // other direction added.
        if payload.len() == 4 {
            let inc =
                u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff;
            // As granted to moat, in full.
            if f.stream == 0 {
                other.window += i64::from(inc);
            } else {
                let initial = other.window_initial;
                *other.windows.entry(f.stream).or_insert(initial) += i64::from(inc);
                other.prune();
            }
            let debt = other.debt.entry(f.stream).or_default();
            let taken = u64::from(inc).min(*debt);
            *debt -= taken;
            let left = inc - taken as u32;
            if inc == 0 || left > 0 {
                frame(out, WINDOW_UPDATE, f.flags, f.stream, &left.to_be_bytes());
            }
        } else {
            // Malformed: passed as it is, for the receiver to refuse.
            out.extend_from_slice(&this.head);
            out.extend_from_slice(&payload);
        }
        this.payload = payload;
        return Ok(());
    }
    let mut p: &[u8] = &payload;
    let mut pad = 0;
    if f.kind != CONTINUATION && f.flags & PADDED != 0 {
        let (&len, rest) = p
            .split_first()
            .ok_or(Refused::Malformed("an HTTP/2 padding length missing"))?;
        pad = usize::from(len);
        p = rest;
    }
    if f.kind == HEADERS && f.flags & PRIORITY != 0 {
        p = p
            .get(5..)
            .ok_or(Refused::Malformed("an HTTP/2 priority cut short"))?;
    }
    if f.kind == PUSH_PROMISE {
        let id = p
            .get(..4)
            .ok_or(Refused::Malformed("a PUSH_PROMISE without its stream"))?;
        this.promised = u32::from_be_bytes([id[0], id[1], id[2], id[3]]) & 0x7fff_ffff;
        p = &p[4..];
    }
    let end = p
        .len()
        .checked_sub(pad)
        .ok_or(Refused::Malformed("HTTP/2 padding longer than its frame"))?;
    this.block.extend_from_slice(&p[..end]);
    if this.block_frame.is_none() {
        this.block_frame = Some(f);
    }
    if f.flags & END_HEADERS == 0 {
        this.block_raw += FRAME_HEADER + payload.len();
        this.payload = payload;
        return Ok(());
    }
    this.payload = payload;
    let Some(first) = this.block_frame.take() else {
        return Ok(());
    };
    let block = std::mem::take(&mut this.block);
    // On a connection that carries a value, a request asks for what redaction can read
    // and a coded answer with a body is refused (as over HTTP/1.1: `h1_swap.rs`).
    let guard = match way {
        _ if swap.is_empty() => Coding::Any,
        Way::Up => Coding::Ask,
        Way::Down if first.flags & END_STREAM == 0 => Coding::Refuse,
        Way::Down => Coding::Any,
    };
    let encoded = reencode(
        &mut this.decoder,
        swap,
        Judge {
            scan: this.scan.as_ref(),
            coding: guard,
            check: this.check.as_ref(),
        },
        &block,
    )?;
    this.block = block;
    this.block.clear();
    this.block_stream = 0;
    this.block_raw = 0;
    // Trailers come after the stream's DATA: what the DATA held goes first.
    if first.kind == HEADERS
        && let Some(mut stream) = this.streams.remove(&first.stream)
    {
        let mut last = Vec::new();
        stream.finish(swap, &mut last);
        this.emit(first.stream, &last, 0, out)?;
        if let Some(mut guard) = this.guards.remove(&first.stream) {
            let mut rest = Vec::new();
            guard.end(&mut rest);
            data_frames(out, first.stream, &rest, 0);
        }
    }
    let mut lead = Vec::new();
    if first.kind == PUSH_PROMISE {
        lead.extend_from_slice(&this.promised.to_be_bytes());
    }
    let room = MAX_FRAME - lead.len();
    let (head, rest) = encoded.split_at(encoded.len().min(room));
    lead.extend_from_slice(head);
    let mut flags = first.flags & END_STREAM;
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    frame(out, first.kind, flags, first.stream, &lead);
    let mut pieces = rest.chunks(MAX_FRAME).peekable();
    while let Some(piece) = pieces.next() {
        let flags = if pieces.peek().is_none() {
            END_HEADERS
        } else {
            0
        };
        frame(out, CONTINUATION, flags, first.stream, piece);
    }
    if first.kind == HEADERS && first.flags & END_STREAM != 0 {
        this.debt.remove(&first.stream);
    }
    Ok(())
}

/// `data` as DATA frames of at most [`MAX_FRAME`] on `stream`, `flags` on the last; nothing
/// when `data` is empty unless `flags` are to be carried.
fn data_frames(out: &mut Vec<u8>, stream: u32, data: &[u8], flags: u8) {
    if data.is_empty() {
        if flags != 0 {
            frame(out, DATA, flags, stream, &[]);
        }
        return;
    }
    let mut pieces = data.chunks(MAX_FRAME).peekable();
    while let Some(piece) = pieces.next() {
        let last = pieces.peek().is_none();
        frame(out, DATA, if last { flags } else { 0 }, stream, piece);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

    use std::collections::BTreeMap;

    use base64::Engine as _;
    use proptest::prelude::*;

    use super::*;

    use crate::http::testing::{P, V, secrets};
    use crate::secrets::Secret;

    /// What a receiver makes of a frame stream: each stream's header fields and DATA, and
    /// the window increments per stream.
    #[derive(Debug, Default, PartialEq, Eq)]
    struct Seen {
        headers: BTreeMap<u32, Vec<Vec<(String, String)>>>,
        data: BTreeMap<u32, Vec<u8>>,
        ended: Vec<u32>,
        window: BTreeMap<u32, u64>,
        other: Vec<(u8, u32)>,
    }

    fn seen(mut s: &[u8]) -> Seen {
        let mut out = Seen::default();
        let mut decoder = loona_hpack::Decoder::new();
        if s.starts_with(PREFACE) {
            s = &s[PREFACE.len()..];
        }
        let mut block = Vec::new();
        while !s.is_empty() {
            let len = u32::from_be_bytes([0, s[0], s[1], s[2]]) as usize;
            let (kind, flags) = (s[3], s[4]);
            let stream = u32::from_be_bytes([s[5], s[6], s[7], s[8]]);
            let payload = &s[9..9 + len];
            s = &s[9 + len..];
            match kind {
                HEADERS | CONTINUATION => {
                    block.extend_from_slice(payload);
                    if flags & END_HEADERS != 0 {
                        let mut fields = Vec::new();
                        decoder
                            .decode_with_cb(&block, |n, v| {
                                fields.push((
                                    String::from_utf8(n.into_owned()).unwrap(),
                                    String::from_utf8(v.into_owned()).unwrap(),
                                ));
                            })
                            .unwrap();
                        block.clear();
                        out.headers.entry(stream).or_default().push(fields);
                    }
                }
                DATA => out
                    .data
                    .entry(stream)
                    .or_default()
                    .extend_from_slice(payload),
                WINDOW_UPDATE => {
                    let inc = u32::from_be_bytes(payload.try_into().unwrap());
                    assert!(inc > 0);
                    *out.window.entry(stream).or_default() += u64::from(inc);
                }
                k => out.other.push((k, stream)),
            }
            if flags & END_STREAM != 0 && matches!(kind, DATA | HEADERS) {
                out.ended.push(stream);
            }
        }
        out
    }

    /// The sandbox's requests: a GET with the placeholder in its path, a header and Basic
    /// credentials (its block over HEADERS and a CONTINUATION, padded); a POST whose body
    /// carries it split across two DATA frames (one padded), with trailers.
    fn requests() -> Vec<u8> {
        let mut encoder = loona_hpack::Encoder::new();
        let mut out = PREFACE.to_vec();
        frame(&mut out, 0x4, 0, 0, &[0, 3, 0, 0, 0, 100]);
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("me:{P}"));
        let path = format!("/q?key={P}");
        let auth = format!("Basic {basic}");
        let get = encoder.encode([
            (&b":method"[..], &b"GET"[..]),
            (b":scheme", b"https"),
            (b":authority", b"api.example.test"),
            (b":path", path.as_bytes()),
            (b"x-key", P.as_bytes()),
            (b"authorization", auth.as_bytes()),
        ]);
        let (a, b) = get.split_at(get.len() / 2);
        let mut padded = vec![2];
        padded.extend_from_slice(a);
        padded.extend_from_slice(&[0, 0]);
        frame(&mut out, HEADERS, PADDED | END_STREAM, 1, &padded);
        frame(&mut out, CONTINUATION, END_HEADERS, 1, b);
        let post = encoder.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"https"),
            (b":authority", b"api.example.test"),
            (b":path", b"/json"),
        ]);
        frame(&mut out, HEADERS, END_HEADERS, 3, &post);
        let body = format!("{{\"key\":\"{P}\"}}");
        let (c, d) = body.split_at(15);
        let mut padded = vec![4];
        padded.extend_from_slice(c.as_bytes());
        padded.extend_from_slice(&[0; 4]);
        frame(&mut out, DATA, PADDED, 3, &padded);
        frame(&mut out, DATA, 0, 3, d.as_bytes());
        let trailers = encoder.encode([(&b"x-sum"[..], P.as_bytes())]);
        frame(&mut out, HEADERS, END_HEADERS | END_STREAM, 3, &trailers);
        out
    }

    fn up_in(input: &[u8], cuts: &[usize]) -> (Connection, Vec<u8>) {
        let s = secrets();
        let mut swap = Swap::substitute(&s, |_| true).unwrap();
        let mut c = Connection::new();
        let mut cuts: Vec<usize> = cuts.iter().map(|x| x % (input.len() + 1)).collect();
        cuts.sort_unstable();
        let (mut out, mut prev) = (Vec::new(), 0);
        for cut in cuts.into_iter().chain([input.len()]) {
            c.up(&mut swap, &input[prev..cut], &mut out).unwrap();
            prev = cut;
        }
        (c, out)
    }

    #[test]
    fn requests_carry_the_value_in_headers_and_data() {
        let (mut c, out) = up_in(&requests(), &[]);
        assert!(!String::from_utf8_lossy(&out).contains(P));
        let got = seen(&out);
        let get = &got.headers[&1][0];
        let field = |n: &str| get.iter().find(|(k, _)| k == n).unwrap().1.clone();
        assert_eq!(field(":path"), format!("/q?key={V}"));
        assert_eq!(field("x-key"), V);
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("me:{V}"));
        assert_eq!(field("authorization"), format!("Basic {basic}"));
        assert_eq!(field(":authority"), "api.example.test");
        assert_eq!(got.data[&3], format!("{{\"key\":\"{V}\"}}").as_bytes());
        assert_eq!(got.headers[&3][1], vec![("x-sum".to_owned(), V.to_owned())]);
        assert_eq!(got.ended, [1, 3]);
        // The value is longer: the server counts more than the sandbox did; the padding
        // the sandbox counted was dropped. Net, the sandbox is owed nothing, and the
        // server's next updates are cut by the difference on the connection.
        let grown = (V.len() - P.len()) as u64;
        let dropped = 1 + 4;
        let s = secrets();
        let mut redact = Swap::redact(&s, |_| true).unwrap();
        let mut down = Vec::new();
        let mut update = Vec::new();
        frame(&mut update, WINDOW_UPDATE, 0, 0, &1000u32.to_be_bytes());
        c.down(&mut redact, &update, &mut down).unwrap();
        let w = seen(&down).window;
        assert_eq!(w[&0], 1000 - (grown - dropped));
    }

    #[test]
    fn responses_show_the_placeholder_and_the_server_gets_its_window_back() {
        let s = secrets();
        let mut redact = Swap::redact(&s, |_| true).unwrap();
        let mut c = Connection::new();
        // moat's frames to the server wait for the sandbox's preface.
        let mut sub = Swap::substitute(&s, |_| true).unwrap();
        let mut preface = Vec::new();
        c.up(&mut sub, PREFACE, &mut preface).unwrap();
        let mut encoder = loona_hpack::Encoder::new();
        let mut input = Vec::new();
        let block = encoder.encode([(&b":status"[..], &b"200"[..]), (b"x-echo", V.as_bytes())]);
        frame(&mut input, HEADERS, END_HEADERS, 1, &block);
        let body = format!("you sent {V}, twice: {V}");
        frame(&mut input, DATA, 0, 1, &body.as_bytes()[..20]);
        frame(&mut input, DATA, END_STREAM, 1, &body.as_bytes()[20..]);
        let mut out = Vec::new();
        c.down(&mut redact, &input, &mut out).unwrap();
        let got = seen(&out);
        assert_eq!(got.headers[&1][0][1], ("x-echo".to_owned(), P.to_owned()));
        assert_eq!(got.data[&1], format!("you sent {P}, twice: {P}").as_bytes());
        assert_eq!(got.ended, [1]);
        // Shrunk: the server is given the difference back, on the connection (the stream
        // has ended).
        let mut up = Vec::new();
        c.flush_up(&mut up);
        let w = seen(&up).window;
        assert_eq!(w[&0], 2 * (V.len() - P.len()) as u64);
        assert!(!c.queued_up());
    }

    /// DATA bytes per stream in a frame stream.
    fn data_len(frames: &[u8]) -> usize {
        seen(frames).data.values().map(Vec::len).sum()
    }

    #[test]
    fn a_connection_carrying_a_value_asks_for_answers_redaction_reads() {
        let s = secrets();
        let mut input = PREFACE.to_vec();
        let block = loona_hpack::Encoder::new().encode([
            (&b":method"[..], &b"GET"[..]),
            (b":scheme", b"https"),
            (b":authority", b"api.example.test"),
            (b":path", b"/r"),
            (b"accept-encoding", b"gzip, br"),
            (b"range", b"bytes=0-9"),
            (b"if-range", b"x"),
            (b"x-key", P.as_bytes()),
        ]);
        frame(&mut input, HEADERS, END_HEADERS | END_STREAM, 1, &block);
        let (_, out) = up_in(&input, &[]);
        let fields = &seen(&out).headers[&1][0];
        let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                ":method",
                ":scheme",
                ":authority",
                ":path",
                "accept-encoding",
                "x-key"
            ]
        );
        assert_eq!(fields[4].1, "identity");
        assert_eq!(fields[5].1, V);
        // Where no value goes, the block is left as it said (the control).
        let mut c = Connection::new();
        let mut out = Vec::new();
        c.up(&mut Swap::none(), &input, &mut out).unwrap();
        let fields = &seen(&out).headers[&1][0];
        assert!(fields.iter().any(|(n, v)| n == "range" && v == "bytes=0-9"));

        // A coded answer with a body is refused; one without a body passes.
        let mut encoder = loona_hpack::Encoder::new();
        let coded = encoder.encode([
            (&b":status"[..], &b"200"[..]),
            (b"content-encoding", b"gzip"),
        ]);
        for (flags, refused) in [(END_HEADERS, true), (END_HEADERS | END_STREAM, false)] {
            let mut answer = Vec::new();
            frame(&mut answer, HEADERS, flags, 1, &coded);
            let mut red = Swap::redact(&s, |_| true).unwrap();
            let got = Connection::new().down(&mut red, &answer, &mut Vec::new());
            assert_eq!(got.is_err(), refused, "{got:?}");
        }
    }

    #[test]
    fn data_never_runs_over_the_receivers_window() {
        let s = secrets();
        let mut sub = Swap::substitute(&s, |_| true).unwrap();
        let mut red = Swap::redact(&s, |_| true).unwrap();
        let mut c = Connection::new();
        let mut input = PREFACE.to_vec();
        let block = loona_hpack::Encoder::new().encode([
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"https"),
            (b":authority", b"api.example.test"),
            (b":path", b"/up"),
        ]);
        frame(&mut input, HEADERS, END_HEADERS, 1, &block);
        // 60,000 bytes counted by the sandbox, 1,500 placeholders: the value is longer, so
        // moat has more to send than the server's 65,535-byte windows.
        let body = format!("{P}{}", "x".repeat(3)).repeat(1500);
        let body = &body.as_bytes()[..60_000];
        for piece in body.chunks(15_000) {
            frame(&mut input, DATA, 0, 1, piece);
        }
        frame(&mut input, DATA, END_STREAM, 1, &[]);
        let mut out = Vec::new();
        c.up(&mut sub, &input, &mut out).unwrap();
        let expected = String::from_utf8(body.to_vec()).unwrap().replace(P, V);
        let first = data_len(&out);
        assert!(first <= 65_535, "{first}");
        assert!(first > 60_000, "{first}");
        assert!(!seen(&out).ended.contains(&1));
        // The server grants more (connection and stream): what waited goes, in order.
        let mut updates = Vec::new();
        frame(&mut updates, WINDOW_UPDATE, 0, 0, &65_535u32.to_be_bytes());
        frame(&mut updates, WINDOW_UPDATE, 0, 1, &65_535u32.to_be_bytes());
        let mut down = Vec::new();
        c.down(&mut red, &updates, &mut down).unwrap();
        // The sandbox is given back less: what moat added was owed.
        let given: u64 = seen(&down).window.values().sum();
        assert!(given < 2 * 65_535, "{given}");
        let mut rest = Vec::new();
        c.flush_up(&mut rest);
        out.extend_from_slice(&rest);
        let got = seen(&out);
        assert_eq!(got.data[&1], expected.as_bytes());
        assert_eq!(got.ended, [1]);
    }

    #[test]
    fn what_waits_for_a_window_is_held_within_the_budget() {
        let s = secrets();
        let mut input = PREFACE.to_vec();
        let block = loona_hpack::Encoder::new().encode([
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"https"),
            (b":authority", b"api.example.test"),
            (b":path", b"/up"),
        ]);
        frame(&mut input, HEADERS, END_HEADERS, 1, &block);
        // More than the server's 65,535-byte window once the value is in: the rest waits.
        let body = format!("{P}{}", "x".repeat(3)).repeat(1500);
        for piece in body.as_bytes()[..60_000].chunks(15_000) {
            frame(&mut input, DATA, 0, 1, piece);
        }
        let mut sub = Swap::substitute(&s, |_| true).unwrap();
        let mut c = Connection::new();
        c.allow(usize::MAX);
        c.up(&mut sub, &input, &mut Vec::new()).unwrap();
        let waiting = c.held();
        assert!(waiting > 0);
        // The same with less room than that: refused, not held.
        let mut sub = Swap::substitute(&s, |_| true).unwrap();
        let mut c = Connection::new();
        c.allow(waiting / 2);
        assert_eq!(
            c.up(&mut sub, &input, &mut Vec::new()),
            Err(Refused::Budget)
        );
    }

    #[test]
    fn the_receivers_initial_window_is_followed() {
        let s = secrets();
        let mut sub = Swap::substitute(&s, |_| true).unwrap();
        let mut red = Swap::redact(&s, |_| true).unwrap();
        let mut c = Connection::new();
        // The server's SETTINGS: streams start with 1 MiB, and the connection gets 1 MiB.
        let mut settings = Vec::new();
        let mut entry = SETTINGS_INITIAL_WINDOW_SIZE.to_be_bytes().to_vec();
        entry.extend_from_slice(&(1u32 << 20).to_be_bytes());
        frame(&mut settings, SETTINGS, 0, 0, &entry);
        frame(
            &mut settings,
            WINDOW_UPDATE,
            0,
            0,
            &(1u32 << 20).to_be_bytes(),
        );
        let mut down = Vec::new();
        c.down(&mut red, &settings, &mut down).unwrap();
        assert_eq!(down, settings, "passed as they were");
        let mut input = PREFACE.to_vec();
        let block = loona_hpack::Encoder::new().encode([(&b":method"[..], &b"POST"[..])]);
        frame(&mut input, HEADERS, END_HEADERS, 1, &block);
        let body = format!("{P}...").repeat(2000);
        for piece in body.as_bytes().chunks(16_000) {
            frame(&mut input, DATA, 0, 1, piece);
        }
        let mut out = Vec::new();
        c.up(&mut sub, &input, &mut out).unwrap();
        assert_eq!(data_len(&out), body.replace(P, V).len());
    }

    /// Each frame in a frame stream (after a client preface, if any): kind, flags, stream
    /// and payload length.
    fn frame_list(mut s: &[u8]) -> Vec<(u8, u8, u32, usize)> {
        if s.starts_with(PREFACE) {
            s = &s[PREFACE.len()..];
        }
        let mut out = Vec::new();
        while !s.is_empty() {
            let len = u32::from_be_bytes([0, s[0], s[1], s[2]]) as usize;
            let stream = u32::from_be_bytes([s[5], s[6], s[7], s[8]]);
            out.push((s[3], s[4], stream, len));
            s = &s[9 + len..];
        }
        out
    }

    /// A request's HEADERS on `stream`, its body to follow.
    fn post(out: &mut Vec<u8>, stream: u32) {
        let block = loona_hpack::Encoder::new().encode([(&b":method"[..], &b"POST"[..])]);
        frame(out, HEADERS, END_HEADERS, stream, &block);
    }

    /// The server's SETTINGS giving new streams `window` bytes, as `c` reads it.
    fn initial_window(c: &mut Connection, window: u32) {
        let mut entry = SETTINGS_INITIAL_WINDOW_SIZE.to_be_bytes().to_vec();
        entry.extend_from_slice(&window.to_be_bytes());
        let mut settings = Vec::new();
        frame(&mut settings, SETTINGS, 0, 0, &entry);
        c.down(&mut Swap::none(), &settings, &mut Vec::new())
            .unwrap();
    }

    /// A WINDOW_UPDATE of `inc` on `stream`, from the server, and what reached the sandbox.
    fn server_grants(c: &mut Connection, stream: u32, inc: u32) -> Vec<u8> {
        let mut update = Vec::new();
        frame(&mut update, WINDOW_UPDATE, 0, stream, &inc.to_be_bytes());
        let mut down = Vec::new();
        c.down(&mut Swap::none(), &update, &mut down).unwrap();
        down
    }

    /// The second secret's placeholder: another host's, watched on this connection.
    const Q: &str = "moat_fedcba9876543210fedcba9876543210";

    /// [`secrets`] and a second one, OTHER, allowed only to other.example.test.
    fn two_secrets() -> Vec<Secret> {
        let mut s = secrets();
        s.push(
            Secret::new(
                "OTHER",
                zeroize::Zeroizing::new(b"other-value-0123456789".to_vec()),
                Some(Q.to_owned()),
                &["other.example.test".into()],
                false,
            )
            .unwrap(),
        );
        s
    }

    #[test]
    fn moat_writes_frames_of_16_kib() {
        let mut input = PREFACE.to_vec();
        let big = "v".repeat(20_000);
        let block = loona_hpack::Encoder::new()
            .encode([(&b":method"[..], &b"POST"[..]), (b"x-big", big.as_bytes())]);
        frame(&mut input, HEADERS, END_HEADERS, 1, &block);
        frame(&mut input, DATA, END_STREAM, 1, &[7; 40_000]);
        let s = secrets();
        let mut sub = Swap::substitute(&s, |_| true).unwrap();
        let mut out = Vec::new();
        Connection::new().up(&mut sub, &input, &mut out).unwrap();
        let sizes: Vec<(u8, usize)> = frame_list(&out).iter().map(|f| (f.0, f.3)).collect();
        assert_eq!(sizes[0], (HEADERS, 16_384));
        assert_eq!(sizes[1].0, CONTINUATION);
        assert!(sizes[1].1 > 20_000 - 16_384, "{sizes:?}");
        assert_eq!(
            sizes[2..],
            [
                (DATA, 16_384),
                (DATA, 16_384),
                (DATA, 40_000 - 2 * 16_384),
                (DATA, 0) // END_STREAM, after what the swap held
            ]
        );
    }

    #[test]
    fn data_waits_exactly_when_it_runs_over_a_window() {
        // A stream's window: 1,000 bytes go, the next byte waits, and so does what follows
        // it on another stream, until that stream's window opens (the connection's is not
        // enough).
        let mut c = Connection::new();
        initial_window(&mut c, 1000);
        let mut none = Swap::none();
        let mut input = PREFACE.to_vec();
        post(&mut input, 1);
        frame(&mut input, DATA, 0, 1, &[b'a'; 1000]);
        let mut out = Vec::new();
        c.up(&mut none, &input, &mut out).unwrap();
        assert_eq!(data_len(&out), 1000);
        assert_eq!(c.held(), 0);
        let mut more = Vec::new();
        frame(&mut more, DATA, 0, 1, b"b");
        post(&mut more, 3);
        frame(&mut more, DATA, 0, 3, b"ccc");
        let mut out = Vec::new();
        c.up(&mut none, &more, &mut out).unwrap();
        assert!(out.is_empty(), "{:?}", frame_list(&out));
        assert!(c.held() > 0);
        let _ = server_grants(&mut c, 0, 10_000);
        let mut out = Vec::new();
        c.flush_up(&mut out);
        assert!(out.is_empty() && !c.queued_up(), "{:?}", frame_list(&out));
        let _ = server_grants(&mut c, 1, 1);
        assert!(c.queued_up());
        let mut out = Vec::new();
        c.flush_up(&mut out);
        let order: Vec<(u8, u32, usize)> =
            frame_list(&out).iter().map(|f| (f.0, f.2, f.3)).collect();
        assert_eq!(order[0], (DATA, 1, 1), "what waited goes, in order");
        assert_eq!((order[1].0, order[1].1), (HEADERS, 3));
        assert_eq!(order[2..], [(DATA, 3, 3)]);
        assert_eq!(c.held(), 0);

        // The connection's window: 65,535 bytes go, the next waits until the connection
        // (not the stream) gets more.
        let mut c = Connection::new();
        initial_window(&mut c, 1 << 20);
        let mut input = PREFACE.to_vec();
        post(&mut input, 1);
        frame(&mut input, DATA, 0, 1, &[b'a'; 65_535]);
        let mut out = Vec::new();
        c.up(&mut none, &input, &mut out).unwrap();
        assert_eq!(data_len(&out), 65_535);
        let mut more = Vec::new();
        frame(&mut more, DATA, 0, 1, b"b");
        let mut out = Vec::new();
        c.up(&mut none, &more, &mut out).unwrap();
        assert!(out.is_empty());
        let _ = server_grants(&mut c, 1, 10_000);
        let mut out = Vec::new();
        c.flush_up(&mut out);
        assert!(out.is_empty() && !c.queued_up());
        let _ = server_grants(&mut c, 0, 1);
        let mut out = Vec::new();
        c.flush_up(&mut out);
        assert_eq!(out, more);
    }

    #[test]
    fn moats_frames_go_between_frames_never_inside_one() {
        let s = secrets();
        let mut c = Connection::new();
        let mut sub = Swap::substitute(&s, |_| true).unwrap();
        let mut red = Swap::redact(&s, |_| true).unwrap();
        // The sandbox is in the middle of a PING when the server's answer shrinks: the
        // WINDOW_UPDATEs moat owes the server wait for the PING's end.
        let mut ping = Vec::new();
        frame(&mut ping, 0x6, 0, 0, b"12345678");
        let mut input = PREFACE.to_vec();
        input.extend_from_slice(&ping[..13]);
        let mut up = Vec::new();
        c.up(&mut sub, &input, &mut up).unwrap();
        let mut answer = Vec::new();
        let block = loona_hpack::Encoder::new().encode([(&b":status"[..], &b"200"[..])]);
        frame(&mut answer, HEADERS, END_HEADERS, 1, &block);
        frame(&mut answer, DATA, 0, 1, format!("echo {V}").as_bytes());
        c.down(&mut red, &answer, &mut Vec::new()).unwrap();
        assert!(c.queued_up());
        let before = up.len();
        c.flush_up(&mut up);
        assert_eq!(up.len(), before, "nothing inside the PING");
        c.up(&mut sub, &ping[13..], &mut up).unwrap();
        c.flush_up(&mut up);
        let grown = (V.len() - P.len()) as u64;
        assert_eq!(
            frame_list(&up),
            [
                (0x6, 0, 0, 8),
                (WINDOW_UPDATE, 0, 1, 4),
                (WINDOW_UPDATE, 0, 0, 4)
            ]
        );
        assert_eq!(seen(&up).window, BTreeMap::from([(0, grown), (1, grown)]));
    }

    #[test]
    fn held_counts_what_waits_both_ways() {
        let mut c = Connection::new();
        assert_eq!(c.held(), 0);
        initial_window(&mut c, 10);
        let mut none = Swap::none();
        // The sandbox's SETTINGS give the server's streams 20 bytes.
        let mut input = PREFACE.to_vec();
        let mut entry = SETTINGS_INITIAL_WINDOW_SIZE.to_be_bytes().to_vec();
        entry.extend_from_slice(&20u32.to_be_bytes());
        frame(&mut input, SETTINGS, 0, 0, &entry);
        post(&mut input, 1);
        frame(&mut input, DATA, 0, 1, &[1; 11]);
        c.up(&mut none, &input, &mut Vec::new()).unwrap();
        let mut answer = Vec::new();
        frame(&mut answer, DATA, 0, 1, &[2; 25]);
        c.down(&mut none, &answer, &mut Vec::new()).unwrap();
        assert_eq!(c.up.stalled.len(), 9 + 11);
        assert_eq!(c.down.stalled.len(), 9 + 25);
        assert_eq!(c.held(), 9 + 11 + 9 + 25);
    }

    #[test]
    fn what_waits_may_fill_its_room_and_no_more() {
        // Exactly 4 MiB waiting (a 4,192,000-byte DATA frame goes out as 256 frames) is
        // held; a byte more is refused.
        let mut none = Swap::none();
        for (len, refused) in [(4_192_000u32, None), (4_192_001, Some("far beyond"))] {
            let mut c = Connection::new();
            let mut input = PREFACE.to_vec();
            post(&mut input, 1);
            frame(&mut input, DATA, 0, 1, &[b'a'; 65_535]);
            frame(&mut input, DATA, 0, 1, &vec![b'b'; len as usize]);
            let got = c.up(&mut none, &input, &mut Vec::new());
            match refused {
                None => {
                    assert_eq!(got, Ok(()));
                    assert_eq!(c.held(), MAX_STALLED);
                }
                Some(_) => assert!(
                    matches!(got, Err(Refused::Malformed(m)) if m.contains("far beyond")),
                    "{got:?}"
                ),
            }
        }
        // The budget's room, the same way: exactly what waits fits, a byte less does not.
        let mut input = PREFACE.to_vec();
        post(&mut input, 1);
        frame(&mut input, DATA, 0, 1, &[b'a'; 70_000]);
        let mut c = Connection::new();
        c.up(&mut none, &input, &mut Vec::new()).unwrap();
        let waiting = c.held();
        assert_eq!(waiting, 70_000 + 5 * 9, "the whole frame waits, as five");
        for (room, ok) in [(waiting, true), (waiting - 1, false)] {
            let mut c = Connection::new();
            c.allow(room);
            let got = c.up(&mut none, &input, &mut Vec::new());
            assert_eq!(got.is_ok(), ok, "{room}: {got:?}");
        }
    }

    #[test]
    fn stream_windows_stay_bounded_and_a_short_one_is_kept() {
        let mut c = Connection::new();
        initial_window(&mut c, 100);
        let mut none = Swap::none();
        let mut input = PREFACE.to_vec();
        post(&mut input, 1);
        frame(&mut input, DATA, 0, 1, &[1; 150]); // 50 over its window
        post(&mut input, 3);
        frame(&mut input, DATA, 0, 3, &[3; 100]); // exactly its window
        c.up(&mut none, &input, &mut Vec::new()).unwrap();
        assert_eq!(c.up.windows.len(), 2);
        // The server opens 1,023 more streams' windows: the first ones are all kept...
        for i in 0..1023u32 {
            let _ = server_grants(&mut c, 5 + 2 * i, 1);
            if i == 9 {
                assert_eq!(c.up.windows.len(), 12);
            }
        }
        // ...and at 1,025 only the stream over its window is kept (the others start again
        // from the initial window, never more than the server granted).
        assert_eq!(c.up.windows.keys().copied().collect::<Vec<_>>(), [1]);
        assert_eq!(c.up.windows[&1], -50);
    }

    #[test]
    fn a_placeholder_split_across_data_frames_is_caught() {
        let s = two_secrets();
        let scan = || Scanner::new(&s, |i| i == 1);
        let body = |c: &mut Connection, pieces: &[(&[u8], u8)]| {
            let mut sub = Swap::substitute(&s, |i| i == 0).unwrap();
            let mut input = PREFACE.to_vec();
            post(&mut input, 1);
            for (piece, flags) in pieces {
                frame(&mut input, DATA, *flags, 1, piece);
            }
            let mut out = Vec::new();
            c.up(&mut sub, &input, &mut out).map(|()| out)
        };
        // The other host's placeholder, in two frames: stopped.
        let (a, b) = Q.as_bytes().split_at(12);
        let mut c = Connection::new().scanning(scan());
        let got = body(&mut c, &[(&[b"x=", a].concat(), 0), (b, END_STREAM)]);
        assert_eq!(got, Err(Refused::Secret(1)));
        // This host's, in two frames: swapped (the control).
        let (a, b) = P.as_bytes().split_at(12);
        let mut c = Connection::new().scanning(scan());
        let out = body(&mut c, &[(a, 0), (b, END_STREAM)]).unwrap();
        assert_eq!(seen(&out).data[&1], V.as_bytes());
        // A body that ends in the beginning of a placeholder: every byte arrives.
        let mut c = Connection::new().scanning(scan());
        let tail = &Q.as_bytes()[..12];
        let out = body(&mut c, &[(b"y=", 0), (tail, END_STREAM)]).unwrap();
        assert_eq!(seen(&out).data[&1], [b"y=", tail].concat());
        assert_eq!(seen(&out).ended, [1]);
    }

    #[test]
    fn what_the_swap_and_the_scan_hold_is_not_given_back() {
        // Frames ending in the beginning of a placeholder (this host's, held by the swap;
        // the other's, held by the scan) change nothing the sandbox counted: no window is
        // given back, and the server's next grant passes whole.
        let s = two_secrets();
        let mut sub = Swap::substitute(&s, |i| i == 0).unwrap();
        let mut c = Connection::new().scanning(Scanner::new(&s, |i| i == 1));
        let mut input = PREFACE.to_vec();
        post(&mut input, 1);
        frame(
            &mut input,
            DATA,
            0,
            1,
            &[b"abc", &P.as_bytes()[..10]].concat(),
        );
        let mut out = Vec::new();
        c.up(&mut sub, &input, &mut out).unwrap();
        assert!(!c.queued_down(), "after the swap's");
        let mut more = Vec::new();
        frame(
            &mut more,
            DATA,
            0,
            1,
            &[b"xyz", &Q.as_bytes()[..10]].concat(),
        );
        c.up(&mut sub, &more, &mut out).unwrap();
        assert!(!c.queued_down(), "after the scan's");
        let mut end = Vec::new();
        frame(&mut end, DATA, END_STREAM, 1, b"end");
        c.up(&mut sub, &end, &mut out).unwrap();
        let mut down = Vec::new();
        c.flush_down(&mut down);
        assert!(down.is_empty() && !c.queued_down());
        let sent = [
            b"abc",
            &P.as_bytes()[..10],
            b"xyz",
            &Q.as_bytes()[..10],
            b"end",
        ]
        .concat();
        assert_eq!(seen(&out).data[&1], sent);
        assert_eq!(seen(&server_grants(&mut c, 0, 1000)).window[&0], 1000);
    }

    #[test]
    fn dropped_padding_is_given_back_to_the_sandbox() {
        let mut c = Connection::new();
        let mut input = PREFACE.to_vec();
        post(&mut input, 1);
        let mut padded = vec![10];
        padded.extend_from_slice(b"hello");
        padded.extend_from_slice(&[0; 10]);
        frame(&mut input, DATA, PADDED, 1, &padded);
        let mut out = Vec::new();
        c.up(&mut Swap::none(), &input, &mut out).unwrap();
        assert_eq!(seen(&out).data[&1], b"hello");
        assert!(c.queued_down());
        let mut down = Vec::new();
        c.flush_down(&mut down);
        assert_eq!(seen(&down).window, BTreeMap::from([(0, 11), (1, 11)]));
        assert!(!c.queued_down());
    }

    #[test]
    fn the_debug_text_is_each_ways_state() {
        let mut c = Connection::new();
        c.up(&mut Swap::none(), &PREFACE[..5], &mut Vec::new())
            .unwrap();
        assert_eq!(
            format!("{c:?}"),
            "Connection { up: Preface(5), down: Header, .. }"
        );
    }

    #[test]
    fn a_client_does_not_push_and_a_servers_push_is_rewritten() {
        let s = secrets();
        let block = loona_hpack::Encoder::new().encode([
            (&b":method"[..], &b"GET"[..]),
            (b":path", b"/pushed"),
            (b"x-echo", V.as_bytes()),
        ]);
        let mut promise = 2u32.to_be_bytes().to_vec();
        promise.extend_from_slice(&block);
        let mut frames = Vec::new();
        frame(&mut frames, PUSH_PROMISE, END_HEADERS, 1, &promise);
        // From the sandbox: refused.
        let mut input = PREFACE.to_vec();
        input.extend_from_slice(&frames);
        let mut sub = Swap::substitute(&s, |_| true).unwrap();
        let got = Connection::new().up(&mut sub, &input, &mut Vec::new());
        assert!(
            matches!(got, Err(Refused::Malformed(m)) if m.contains("push")),
            "{got:?}"
        );
        // From the server: its block rewritten, the promised stream kept.
        let mut red = Swap::redact(&s, |_| true).unwrap();
        let mut out = Vec::new();
        Connection::new().down(&mut red, &frames, &mut out).unwrap();
        assert_eq!(
            frame_list(&out),
            [(PUSH_PROMISE, END_HEADERS, 1, out.len() - 9)]
        );
        assert_eq!(out[9..13], 2u32.to_be_bytes());
        let mut decoder = loona_hpack::Decoder::new();
        let fields = decoder.decode(&out[13..]).unwrap();
        assert_eq!(fields[2], (b"x-echo".to_vec(), P.as_bytes().to_vec()));
    }

    #[test]
    fn a_reset_stream_waits_for_no_window() {
        // The sandbox's stream 1 runs over its window; then it (or the server) resets it:
        // what waited goes, the reset with it.
        for by_server in [false, true] {
            let mut c = Connection::new();
            initial_window(&mut c, 10);
            let mut none = Swap::none();
            let mut input = PREFACE.to_vec();
            post(&mut input, 1);
            frame(&mut input, DATA, 0, 1, &[1; 11]);
            let mut out = Vec::new();
            c.up(&mut none, &input, &mut out).unwrap();
            assert_eq!(data_len(&out), 0);
            let mut reset = Vec::new();
            frame(&mut reset, RST_STREAM, 0, 1, &8u32.to_be_bytes());
            if by_server {
                let mut down = Vec::new();
                c.down(&mut none, &reset, &mut down).unwrap();
                assert_eq!(down, reset, "passed as it came");
            } else {
                c.up(&mut none, &reset, &mut out).unwrap();
            }
            c.flush_up(&mut out);
            assert_eq!(data_len(&out), 11, "{by_server}");
            assert!(c.up.windows.is_empty());
        }
    }

    #[test]
    fn frames_moat_does_not_read_pass_whole_empty_or_not() {
        let mut input = PREFACE.to_vec();
        frame(&mut input, 0xb, 0, 0, &[]); // an extension frame, empty
        frame(&mut input, 0x6, 0, 0, b"12345678"); // PING
        frame(&mut input, 0xb, 0, 3, b"ext");
        let mut out = Vec::new();
        Connection::new()
            .up(&mut Swap::none(), &input, &mut out)
            .unwrap();
        assert_eq!(out, input);
    }

    #[test]
    fn a_stream_that_ends_over_its_window_still_waits() {
        let mut c = Connection::new();
        initial_window(&mut c, 10);
        let mut none = Swap::none();
        let mut input = PREFACE.to_vec();
        post(&mut input, 3);
        frame(&mut input, DATA, END_STREAM, 3, &[3; 10]); // within its window: forgotten
        post(&mut input, 1);
        frame(&mut input, DATA, END_STREAM, 1, &[1; 11]); // over it: kept
        let mut out = Vec::new();
        c.up(&mut none, &input, &mut out).unwrap();
        assert_eq!(seen(&out).data[&3].len(), 10);
        assert_eq!(c.up.windows.keys().copied().collect::<Vec<_>>(), [1]);
        c.flush_up(&mut out);
        assert!(!seen(&out).data.contains_key(&1));
        let _ = server_grants(&mut c, 1, 1);
        c.flush_up(&mut out);
        assert_eq!(seen(&out).data[&1].len(), 11);
        assert_eq!(seen(&out).ended, [3, 1]);
    }

    #[test]
    fn what_moat_owes_the_server_goes_after_a_whole_data_frame() {
        let s = secrets();
        let mut c = Connection::new();
        let mut sub = Swap::substitute(&s, |_| true).unwrap();
        let mut input = PREFACE.to_vec();
        post(&mut input, 1);
        frame(&mut input, DATA, 0, 1, b"body");
        let mut up = Vec::new();
        c.up(&mut sub, &input, &mut up).unwrap();
        let mut answer = Vec::new();
        let block = loona_hpack::Encoder::new().encode([(&b":status"[..], &b"200"[..])]);
        frame(&mut answer, HEADERS, END_HEADERS, 1, &block);
        frame(&mut answer, DATA, 0, 1, V.as_bytes());
        let mut red = Swap::redact(&s, |_| true).unwrap();
        c.down(&mut red, &answer, &mut Vec::new()).unwrap();
        let mut owed = Vec::new();
        c.flush_up(&mut owed);
        let shrunk = (V.len() - P.len()) as u64;
        assert_eq!(
            seen(&owed).window,
            BTreeMap::from([(0, shrunk), (1, shrunk)])
        );
    }

    #[test]
    fn window_owed_is_paid_back_and_never_given_twice() {
        // The sandbox's placeholder grows into the value (a debt toward the server);
        // then padding it counted is dropped (a smaller amount owed back to it): the
        // debt is paid down, nothing is given back, and the server's next grants are cut
        // by what is left of the debt, never by more.
        let s = secrets();
        let grown = (V.len() - P.len()) as u32;
        let mut sub = Swap::substitute(&s, |_| true).unwrap();
        let mut c = Connection::new();
        let mut input = PREFACE.to_vec();
        post(&mut input, 1);
        frame(&mut input, DATA, 0, 1, P.as_bytes());
        let mut padded = vec![4];
        padded.extend_from_slice(b"x");
        padded.extend_from_slice(&[0; 4]);
        frame(&mut input, DATA, PADDED, 1, &padded);
        let mut out = Vec::new();
        c.up(&mut sub, &input, &mut out).unwrap();
        assert_eq!(seen(&out).data[&1], [V.as_bytes(), b"x"].concat());
        assert!(!c.queued_down(), "nothing is owed to the sandbox");
        let left = grown - 5;
        // A grant smaller than the debt is kept whole; the next passes less what is left.
        assert!(server_grants(&mut c, 0, left - 1).is_empty());
        assert_eq!(seen(&server_grants(&mut c, 0, 100)).window[&0], 99);
        // The stream's debt the same way.
        assert!(server_grants(&mut c, 1, left - 1).is_empty());
        assert_eq!(seen(&server_grants(&mut c, 1, 100)).window[&1], 99);
        // An increment of 0 is the server's error to make: passed for the sandbox to see.
        let zero = server_grants(&mut c, 1, 0);
        assert_eq!(frame_list(&zero), [(WINDOW_UPDATE, 0, 1, 4)]);
        assert_eq!(zero[9..], [0, 0, 0, 0]);
    }

    #[test]
    fn a_new_initial_window_moves_open_streams_by_the_difference() {
        let mut c = Connection::new();
        let mut none = Swap::none();
        let mut input = PREFACE.to_vec();
        post(&mut input, 1);
        frame(&mut input, DATA, 0, 1, &[1; 1000]); // 64,535 left of the default
        c.up(&mut none, &input, &mut Vec::new()).unwrap();
        initial_window(&mut c, 2000); // 1,000 left
        let mut more = Vec::new();
        frame(&mut more, DATA, 0, 1, &[1; 1000]);
        let mut out = Vec::new();
        c.up(&mut none, &more, &mut out).unwrap();
        assert_eq!(data_len(&out), 1000);
        let mut one = Vec::new();
        frame(&mut one, DATA, 0, 1, b"1");
        let mut out = Vec::new();
        c.up(&mut none, &one, &mut out).unwrap();
        assert!(out.is_empty(), "the next byte waits");
    }

    #[test]
    fn only_a_servers_own_settings_set_windows() {
        // An acknowledgement carrying an entry, or SETTINGS on a stream, is malformed:
        // passed on for the sandbox to refuse, but it sets no window.
        let mut entry = SETTINGS_INITIAL_WINDOW_SIZE.to_be_bytes().to_vec();
        entry.extend_from_slice(&10u32.to_be_bytes());
        for (flags, stream) in [(ACK, 0), (0, 3)] {
            let mut c = Connection::new();
            let mut none = Swap::none();
            let mut settings = Vec::new();
            frame(&mut settings, SETTINGS, flags, stream, &entry);
            let mut down = Vec::new();
            c.down(&mut none, &settings, &mut down).unwrap();
            assert_eq!(down, settings);
            let mut input = PREFACE.to_vec();
            post(&mut input, 1);
            frame(&mut input, DATA, 0, 1, &[1; 100]);
            let mut out = Vec::new();
            c.up(&mut none, &input, &mut out).unwrap();
            assert_eq!(data_len(&out), 100, "{flags} {stream}");
        }
    }

    #[test]
    fn a_priority_is_dropped_from_headers_and_a_promised_stream_keeps_its_number() {
        let block = loona_hpack::Encoder::new().encode([(&b":method"[..], &b"GET"[..])]);
        let mut priority = vec![0x80, 0, 0, 1, 200]; // exclusive on stream 1, weight 200
        priority.extend_from_slice(&block);
        let mut input = PREFACE.to_vec();
        frame(
            &mut input,
            HEADERS,
            END_HEADERS | PRIORITY | END_STREAM,
            3,
            &priority,
        );
        let mut out = Vec::new();
        Connection::new()
            .up(&mut Swap::none(), &input, &mut out)
            .unwrap();
        let got = seen(&out);
        assert_eq!(
            got.headers[&3][0],
            [(":method".to_owned(), "GET".to_owned())]
        );
        assert_eq!(frame_list(&out)[0].1, END_HEADERS | END_STREAM);
        // A promised stream's reserved bit is not part of its number.
        for promised in [2u32, 0x8000_0002] {
            let mut promise = promised.to_be_bytes().to_vec();
            promise.extend_from_slice(&block);
            let mut frames = Vec::new();
            frame(&mut frames, PUSH_PROMISE, END_HEADERS, 1, &promise);
            let mut down = Vec::new();
            Connection::new()
                .down(&mut Swap::none(), &frames, &mut down)
                .unwrap();
            assert_eq!(down[9..13], 2u32.to_be_bytes());
        }
    }

    #[test]
    fn what_the_data_held_goes_before_the_trailers() {
        // The body ends in the beginning of a placeholder (held by the swap, and by the
        // scan for the other host's): at the trailers it is not one, and goes first.
        let s = two_secrets();
        let mut sub = Swap::substitute(&s, |i| i == 0).unwrap();
        let mut c = Connection::new().scanning(Scanner::new(&s, |i| i == 1));
        let mut input = PREFACE.to_vec();
        post(&mut input, 1);
        let body = [b"a=", &P.as_bytes()[..9], b"&b=", &Q.as_bytes()[..9]].concat();
        frame(&mut input, DATA, 0, 1, &body);
        let trailers = loona_hpack::Encoder::new().encode([(&b"x-sum"[..], &b"1"[..])]);
        frame(&mut input, HEADERS, END_HEADERS | END_STREAM, 1, &trailers);
        let mut out = Vec::new();
        c.up(&mut sub, &input, &mut out).unwrap();
        assert_eq!(seen(&out).data[&1], body);
        let kinds: Vec<u8> = frame_list(&out).iter().map(|f| f.0).collect();
        assert_eq!(kinds.last(), Some(&HEADERS), "{kinds:?}");
        assert_eq!(seen(&out).ended, [1]);
    }

    #[test]
    fn a_large_pushed_block_is_cut_at_16_kib_with_its_stream_number() {
        let big = "v".repeat(20_000);
        let block = loona_hpack::Encoder::new()
            .encode([(&b":path"[..], &b"/p"[..]), (b"x-big", big.as_bytes())]);
        let mut promise = 2u32.to_be_bytes().to_vec();
        promise.extend_from_slice(&block);
        let mut frames = Vec::new();
        frame(&mut frames, PUSH_PROMISE, END_HEADERS, 1, &promise);
        let mut out = Vec::new();
        Connection::new()
            .down(&mut Swap::none(), &frames, &mut out)
            .unwrap();
        let list = frame_list(&out);
        assert_eq!(list[0], (PUSH_PROMISE, 0, 1, 16_384));
        assert_eq!((list[1].0, list[1].1), (CONTINUATION, END_HEADERS));
    }

    #[test]
    fn a_streams_debt_is_forgotten_only_when_it_ends() {
        let s = secrets();
        let grown = (V.len() - P.len()) as u32;
        let body = |c: &mut Connection, sub: &mut Swap, stream: u32| {
            let mut input = Vec::new();
            post(&mut input, stream);
            frame(&mut input, DATA, 0, stream, P.as_bytes());
            c.up(sub, &input, &mut Vec::new()).unwrap();
        };
        let mut sub = Swap::substitute(&s, |_| true).unwrap();
        let mut c = Connection::new();
        c.up(&mut sub, PREFACE, &mut Vec::new()).unwrap();
        // Stream 1 ends with trailers: its debt goes with it.
        body(&mut c, &mut sub, 1);
        let trailers = trailer_block();
        let mut end = Vec::new();
        frame(&mut end, HEADERS, END_HEADERS | END_STREAM, 1, &trailers);
        c.up(&mut sub, &end, &mut Vec::new()).unwrap();
        assert_eq!(seen(&server_grants(&mut c, 1, 100)).window[&1], 100);
        // Stream 3 sends a header block that does not end it: its debt stays.
        body(&mut c, &mut sub, 3);
        let mut more = Vec::new();
        frame(&mut more, HEADERS, END_HEADERS, 3, &trailers);
        c.up(&mut sub, &more, &mut Vec::new()).unwrap();
        assert_eq!(
            seen(&server_grants(&mut c, 3, 100)).window[&3],
            u64::from(100 - grown)
        );
    }

    /// A trailer block.
    fn trailer_block() -> Vec<u8> {
        loona_hpack::Encoder::new().encode([(&b"x-sum"[..], &b"1"[..])])
    }

    #[test]
    fn lengths_of_every_size_are_encoded_as_hpack_reads_them() {
        // moat writes each field again as literals: lengths on the 7-bit prefix and on
        // one, two and three continuation bytes.
        let s = secrets();
        for len in [1, 126, 127, 128, 254, 255, 256, 16_383, 16_384, 70_000] {
            let value = "w".repeat(len);
            let block = loona_hpack::Encoder::new().encode([
                (&b":method"[..], &b"GET"[..]),
                (b"x-long", value.as_bytes()),
            ]);
            let mut input = PREFACE.to_vec();
            frame(&mut input, HEADERS, END_HEADERS | END_STREAM, 1, &block);
            let mut sub = Swap::substitute(&s, |_| true).unwrap();
            let mut out = Vec::new();
            Connection::new().up(&mut sub, &input, &mut out).unwrap();
            let fields = &seen(&out).headers[&1][0];
            let got = fields.iter().find(|(n, _)| n == "x-long");
            assert_eq!(got, Some(&("x-long".to_owned(), value)), "{len}");
        }
    }

    #[test]
    fn a_length_that_swapping_would_falsify_is_dropped() {
        let block = loona_hpack::Encoder::new()
            .encode([(&b":method"[..], &b"POST"[..]), (b"content-length", b"37")]);
        let mut input = PREFACE.to_vec();
        frame(&mut input, HEADERS, END_HEADERS, 1, &block);
        frame(&mut input, DATA, END_STREAM, 1, P.as_bytes());
        let s = secrets();
        let mut sub = Swap::substitute(&s, |_| true).unwrap();
        let mut out = Vec::new();
        Connection::new().up(&mut sub, &input, &mut out).unwrap();
        let names: Vec<String> = seen(&out).headers[&1][0]
            .iter()
            .map(|f| f.0.clone())
            .collect();
        assert!(!names.contains(&"content-length".to_owned()), "{names:?}");
        assert_eq!(seen(&out).data[&1], V.as_bytes());
        // Where nothing is swapped it stays.
        let mut out = Vec::new();
        Connection::new()
            .up(&mut Swap::none(), &input, &mut out)
            .unwrap();
        assert_eq!(
            seen(&out).headers[&1][0][1],
            ("content-length".to_owned(), "37".to_owned())
        );
    }

    #[test]
    fn a_header_block_of_256_kib_is_held_and_a_byte_more_is_refused() {
        // One field whose block in a HEADERS frame and a CONTINUATION comes to exactly
        // `MAX_BLOCK` bytes with the two frame headers (or one more), as the reader
        // measures it.
        let block_of = |len: usize| {
            let mut value_len = len;
            loop {
                let value = vec![b'v'; value_len];
                let block = loona_hpack::Encoder::new().encode([(&b"x-big"[..], &value[..])]);
                match block.len().cmp(&len) {
                    std::cmp::Ordering::Equal => return block,
                    std::cmp::Ordering::Greater => value_len -= block.len() - len,
                    std::cmp::Ordering::Less => value_len += len - block.len(),
                }
            }
        };
        let len = MAX_BLOCK - 2 * FRAME_HEADER;
        for (len, refused) in [(len, false), (len + 1, true)] {
            let block = block_of(len);
            let (a, b) = block.split_at(100_000);
            let mut input = PREFACE.to_vec();
            frame(&mut input, HEADERS, END_STREAM, 1, a);
            frame(&mut input, CONTINUATION, END_HEADERS, 1, b);
            let mut out = Vec::new();
            let got = Connection::new().up(&mut Swap::none(), &input, &mut out);
            if refused {
                assert_eq!(got, Err(Refused::TooLarge));
            } else {
                assert_eq!(got, Ok(()));
                assert_eq!(seen(&out).headers[&1][0][0].1.len(), len - 11);
            }
        }
    }

    /// A checking request side refuses what the anti-fronting reader (`h2.rs`) refuses, on
    /// any request of the connection, names the same stream for moat's answer, and lets
    /// the same requests reach the server: it can stand in for the reader.
    #[test]
    fn a_checking_side_refuses_what_the_reader_refuses() {
        use crate::http::RequestReader;
        use crate::http::h2::Requests;
        use crate::http::testing::api;
        let get = |authority: &'static [u8]| {
            vec![
                (&b":method"[..], &b"GET"[..]),
                (b":scheme", b"https"),
                (b":path", b"/"),
                (b":authority", authority),
            ]
        };
        let encode =
            |fields: &[(&[u8], &[u8])]| loona_hpack::Encoder::new().encode(fields.iter().copied());
        let one = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
            let mut v = Vec::new();
            frame(&mut v, kind, flags, stream, payload);
            v
        };
        // A good request on stream 1, then what the case sends.
        let with = |rest: &[u8]| {
            let mut v = PREFACE.to_vec();
            frame(&mut v, SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]);
            v.extend(one(
                HEADERS,
                END_HEADERS | END_STREAM,
                1,
                &encode(&get(b"api.example.test")),
            ));
            v.extend_from_slice(rest);
            v
        };
        let request =
            |fields: &[(&[u8], &[u8])]| one(HEADERS, END_HEADERS | END_STREAM, 3, &encode(fields));
        let mut other_host = get(b"api.example.test");
        other_host.push((b"host", b"evil.example.test"));
        let mut two = get(b"api.example.test");
        two.push((b":authority", b"evil.example.test"));
        let mut connect = get(b"api.example.test");
        connect[0].1 = b"CONNECT";
        let good = encode(&get(b"api.example.test"));
        let (a, b) = good.split_at(4);
        // A request whose header block's frames, with their headers, come to `len` bytes
        // (HEADERS and CONTINUATIONs of 16 KiB).
        let big = |len: usize| {
            let frames = |value_len: usize| {
                let value = vec![b'v'; value_len];
                let mut fields = get(b"api.example.test");
                fields.push((b"x-big", &value));
                let block = encode(&fields);
                let pieces: Vec<&[u8]> = block.chunks(16_384).collect();
                let mut v = Vec::new();
                for (i, piece) in pieces.iter().enumerate() {
                    let kind = if i == 0 { HEADERS } else { CONTINUATION };
                    let last = if i + 1 == pieces.len() {
                        END_HEADERS
                    } else {
                        0
                    };
                    frame(&mut v, kind, last, 3, piece);
                }
                v
            };
            let mut value_len = len - 200;
            loop {
                let v = frames(value_len);
                match v.len().cmp(&len) {
                    std::cmp::Ordering::Equal => return v,
                    std::cmp::Ordering::Less => value_len += len - v.len(),
                    std::cmp::Ordering::Greater => value_len -= v.len() - len,
                }
            }
        };
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("another authority", request(&get(b"evil.example.test"))),
            ("another host field", request(&other_host)),
            ("two authorities", request(&two)),
            ("no authority", request(&get(b"api.example.test")[..3])),
            ("CONNECT", request(&connect)),
            ("not text", request(&get(b"api.example.test\xff"))),
            (
                "undecodable",
                one(HEADERS, END_HEADERS, 3, &[0xff, 0xff, 0xff, 0xff]),
            ),
            ("stream 0", one(HEADERS, END_HEADERS, 0, &good)),
            (
                "interrupted",
                [one(HEADERS, 0, 3, a), one(DATA, 0, 3, b"x")].concat(),
            ),
            (
                "continued on another stream",
                [one(HEADERS, 0, 3, a), one(CONTINUATION, END_HEADERS, 5, b)].concat(),
            ),
            (
                "continuation alone",
                one(CONTINUATION, END_HEADERS, 3, &good),
            ),
            ("a block over 256 KiB", big(MAX_BLOCK + 1)),
            (
                "a client's push",
                one(PUSH_PROMISE, END_HEADERS, 1, &[0, 0, 0, 2]),
            ),
            // The controls.
            ("same host", request(&get(b"API.example.test:443"))),
            ("a block of 256 KiB", big(MAX_BLOCK)),
            (
                "continued",
                [one(HEADERS, 0, 3, a), one(CONTINUATION, END_HEADERS, 3, b)].concat(),
            ),
        ];
        for (what, rest) in cases {
            let input = with(&rest);
            let mut reader = Requests::new(api());
            let mut passed = Vec::new();
            let read = reader.push(&input, &mut passed);
            let mut side = Connection::new().checking(api());
            let mut swapped = Vec::new();
            let got = side.up(&mut Swap::none(), &input, &mut swapped);
            assert_eq!(got, read, "{what}");
            assert_eq!(side.stream(), reader.stream(), "{what}");
            // The server reads the same requests (moat encodes each block again).
            assert_eq!(seen(&swapped), seen(&passed), "{what}");
            assert!(!seen(&swapped).headers.is_empty(), "{what}");
        }
        // Without the check, another host's request is the swap's to rewrite.
        let fronted = with(&request(&get(b"evil.example.test")));
        let mut out = Vec::new();
        assert_eq!(
            Connection::new().up(&mut Swap::none(), &fronted, &mut out),
            Ok(())
        );
        assert_eq!(seen(&out).headers.len(), 2);
    }

    proptest! {
        /// However the sandbox's bytes are split, the server reads the same requests.
        #[test]
        fn splitting_changes_nothing_the_server_reads(cuts in proptest::collection::vec(0usize..1000, 0..12)) {
            let input = requests();
            let whole = seen(&up_in(&input, &[]).1);
            let split = seen(&up_in(&input, &cuts).1);
            prop_assert_eq!(whole, split);
        }
    }
}
