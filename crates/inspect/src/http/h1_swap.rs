//! HTTP/1.1 messages rewritten for secrets on an intercepted connection: placeholders
//! become values on the way to an allowed host (requests), values become placeholders on
//! the way back (responses), with the framing made right for the new lengths.
//!
//! # Theory of operation
//! [`Messages`] follows one direction's messages (RFC 9112) in whatever pieces they come
//! and appends the rewritten stream to `out`:
//! - **Head**: held until the blank line, then rewritten line by line with the [`Swap`]:
//!   the request line or status line, and each header field (HTTP Basic credentials are
//!   decoded, swapped inside and encoded again). Fields that did not change pass as they
//!   were.
//! - **Content-Length body**: held with its head (up to [`HOLD_BODY`]), rewritten whole,
//!   and sent with the new length. A longer body, one whose request waits for
//!   `100 Continue`, or one larger than the buffer budget lets this connection hold now
//!   ([`Messages::allow`], charged by the engine: `engine/budget.rs`), is sent chunked
//!   instead (`Transfer-Encoding: chunked` in place of the length), rewritten as it
//!   streams.
//! - **Chunked body**: the chunks' data is rewritten as one stream and framed again as
//!   chunks of the new sizes (extensions dropped); trailer fields are rewritten.
//! - **Response until close**: rewritten as it streams; [`Messages::finish`] lets the last
//!   held bytes go when the server ends.
//! - **No body** (requests without framing; responses to HEAD, 1xx, 204, 304) and
//!   **tunnels** (an upgrade: what follows is not HTTP/1.1) pass as they are.
//!
//! On a connection that carries a value (the swap is not empty), a request also asks for
//! what redaction can read ([`asks_unreadable`]): `Accept-Encoding: identity` in place of the
//! sandbox's, and no `Range`, `If-Range` or `TE` — a compressed answer, or the value in two
//! ranges each too short to match, would bring it back in a form redaction does not see.
//! Asking is chosen over decoding: moat would need a decompressor (a parser of the
//! server's bytes, with its bombs) and the value back in the compressed answer would have
//! to be compressed again; the cost is bandwidth, on connections that carry a secret only.
//! A response that comes coded anyway (`Content-Encoding` or a transfer coding other than
//! `chunked`) is refused: it cannot be searched.
//!
//! Responses are matched to requests in order: the request side records which requests
//! were HEAD ([`Exchange`]). On a connection that swaps, the request side is also the
//! anti-fronting reader ([`Messages::checking`]): each request head is read once, checked
//! by `h1.rs`'s own rule (`h1::check_request`: one `Host` naming the connection's
//! authority, no CONNECT) and framed by its own definition (`h1::request_framing`), so the
//! request the check passed is, by construction, the request rewritten. A server's
//! response that cannot be framed ends the connection.

use std::collections::VecDeque;
use std::io::Write as _;

use super::Authority;
use super::Refused;
use super::h1::{RequestFraming, check_request, chunk_size, parse_request, request_framing};
use crate::secrets::swap::{Swap, SwapStream};
use crate::secrets::{BodyScan, Scanner};

/// The largest Content-Length body held to be rewritten and sent with its new length.
pub const HOLD_BODY: u64 = 256 * 1024;
/// The largest head held.
const MAX_HEAD: usize = super::h1::MAX_HEAD;
/// The longest chunk-size or trailer line.
const MAX_LINE: usize = 4096;
/// Header fields read per message.
const MAX_HEADERS: usize = 128;

/// Which direction a [`Messages`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The sandbox's requests.
    Request,
    /// The server's responses.
    Response,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    /// A Content-Length body being held (`left` bytes to come).
    Hold {
        left: u64,
    },
    /// A Content-Length body being sent as chunks.
    Rechunk {
        left: u64,
    },
    ChunkSize,
    ChunkData(u64),
    /// The CRLF after a chunk's data; how much of it was seen.
    ChunkEnd(u8),
    Trailers,
    /// A response body that ends with the connection.
    Close,
    Tunnel,
}

/// How a message's body is framed.
enum Framing {
    None,
    Length(u64),
    Chunked,
    Close,
    Tunnel,
}

/// What the two directions of one connection share: which requests were HEAD, in order.
#[derive(Debug, Default)]
pub struct Exchange {
    heads: VecDeque<bool>,
}

/// One direction's messages (see the module header).
pub struct Messages {
    side: Side,
    state: State,
    /// A head, or a chunk-size or trailer line, being assembled.
    held: Vec<u8>,
    /// A rewritten head (without its blank line) waiting for its held body.
    head: Vec<u8>,
    /// The Content-Length the held body's head declared.
    declared: u64,
    /// A held body.
    body: Vec<u8>,
    stream: SwapStream,
    /// What the sandbox's bodies are scanned for (placeholders this host may not receive),
    /// and the scan of the body under way: re-framing may split a placeholder that the
    /// connection's own scan would have seen whole.
    scan: Option<Scanner>,
    guard: Option<BodyScan>,
    /// How many bytes of body this side may hold (the buffer budget's room).
    allowance: usize,
    /// The authority every request must name, when this side also checks requests as
    /// the anti-fronting reader does ([`Messages::checking`]).
    expect: Option<Authority>,
}

impl std::fmt::Debug for Messages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Messages")
            .field("side", &self.side)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Messages {
    /// The messages of `side`.
    pub fn new(side: Side) -> Messages {
        Messages {
            side,
            state: State::Head,
            held: Vec::new(),
            head: Vec::new(),
            declared: 0,
            body: Vec::new(),
            stream: SwapStream::default(),
            scan: None,
            guard: None,
            allowance: usize::MAX,
            expect: None,
        }
    }

    /// From the next message on, a body is held only if it fits in `bytes` (what the
    /// buffer budget lets this side hold in all); a larger one streams. Unlimited until
    /// told.
    pub fn allow(&mut self, bytes: usize) {
        self.allowance = bytes;
    }

    /// How many bytes of body this side holds, or has taken room for (a held body is
    /// charged whole from its head: it is coming).
    pub fn held(&self) -> usize {
        match self.state {
            State::Hold { .. } => usize::try_from(self.declared).unwrap_or(usize::MAX),
            _ => 0,
        }
    }

    /// Bodies sent re-framed are scanned for what `template` looks for.
    pub fn scanning(mut self, template: Scanner) -> Messages {
        self.scan = (!template.is_idle()).then_some(template);
        self
    }

    /// The request side also checks each request as the anti-fronting reader does
    /// (`h1::check_request`: not CONNECT, one `Host`, naming `expect`), so a connection
    /// that swaps reads each request once, for the check and the rewrite alike, and what
    /// the check passed is what is rewritten. A refused request is this side's error.
    pub fn checking(mut self, expect: Authority) -> Messages {
        self.expect = Some(expect);
        self
    }

    /// Takes the next `input`; appends to `out` what may go on, rewritten.
    pub fn push(
        &mut self,
        swap: &mut Swap,
        exchange: &mut Exchange,
        mut input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), Refused> {
        while !input.is_empty() {
            input = self.step(swap, exchange, input, out)?;
        }
        Ok(())
    }

    /// The stream ended: a body that ends with it, or one cut short, goes with what was
    /// held.
    pub fn finish(&mut self, swap: &mut Swap, out: &mut Vec<u8>) {
        match self.state {
            State::Close => self.stream.finish(swap, out),
            State::Hold { .. } => {
                // Cut short: sent as it came, so the other side sees it was.
                out.extend_from_slice(&self.head);
                let _ = write!(out, "Content-Length: {}\r\n\r\n", self.declared);
                swap.replace(&self.body, out);
                self.state = State::Head;
            }
            // A request's unfinished head, chunk-size or trailer line was never read whole,
            // so never checked: it goes nowhere, as the anti-fronting reader never passed
            // one (a head cut short by a half-close could otherwise name any host).
            _ if self.side == Side::Request => {}
            _ => out.extend_from_slice(&self.held),
        }
        self.held.clear();
        self.body = Vec::new();
        self.head.clear();
    }

    fn step<'a>(
        &mut self,
        swap: &mut Swap,
        exchange: &mut Exchange,
        input: &'a [u8],
        out: &mut Vec<u8>,
    ) -> Result<&'a [u8], Refused> {
        match self.state {
            State::Tunnel => {
                out.extend_from_slice(input);
                Ok(&[])
            }
            State::Head => {
                let start = self.held.len().saturating_sub(3);
                let take = input.len().min(MAX_HEAD + 4 - self.held.len());
                self.held.extend_from_slice(&input[..take]);
                let Some(at) = memchr::memmem::find(&self.held[start..], b"\r\n\r\n") else {
                    if self.held.len() > MAX_HEAD {
                        return Err(Refused::TooLarge);
                    }
                    return Ok(&input[take..]);
                };
                let end = start + at + 4;
                // A request head past the reader's bound is refused here too.
                if self.side == Side::Request && end > MAX_HEAD {
                    return Err(Refused::TooLarge);
                }
                let unused = self.held.len() - end;
                self.held.truncate(end);
                let head = std::mem::take(&mut self.held);
                self.head(swap, exchange, &head, out)?;
                Ok(&input[take - unused..])
            }
            State::Hold { left } => {
                let n = input.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                self.body.extend_from_slice(&input[..n]);
                let left = left - n as u64;
                if left == 0 {
                    let mut body = Vec::with_capacity(self.body.len());
                    swap.replace(&self.body, &mut body);
                    out.extend_from_slice(&self.head);
                    let _ = write!(out, "Content-Length: {}\r\n\r\n", body.len());
                    out.extend_from_slice(&body);
                    self.head.clear();
                    // The budget charged the body while it was held: its memory goes too.
                    self.body = Vec::new();
                    self.state = State::Head;
                } else {
                    self.state = State::Hold { left };
                }
                Ok(&input[n..])
            }
            State::Rechunk { left } | State::ChunkData(left) => {
                let n = input.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                // A piece of its own each time: a connection that waits keeps no chunk.
                let mut piece = Vec::new();
                self.stream.push(swap, &input[..n], &mut piece);
                self.emit(&piece, out)?;
                let left = left - n as u64;
                let rechunk = matches!(self.state, State::Rechunk { .. });
                self.state = match (left, rechunk) {
                    (0, true) => {
                        self.end_chunks(swap, out)?;
                        out.extend_from_slice(b"\r\n");
                        State::Head
                    }
                    (0, false) => State::ChunkEnd(0),
                    (left, true) => State::Rechunk { left },
                    (left, false) => State::ChunkData(left),
                };
                Ok(&input[n..])
            }
            State::ChunkEnd(seen) => {
                if input[0] != b"\r\n"[usize::from(seen)] {
                    return Err(Refused::Malformed("a chunk's data is not followed by CRLF"));
                }
                self.state = if seen == 1 {
                    State::ChunkSize
                } else {
                    State::ChunkEnd(1)
                };
                Ok(&input[1..])
            }
            State::ChunkSize | State::Trailers => {
                let (done, n) = self.take_line(input)?;
                if done {
                    let line = std::mem::take(&mut self.held);
                    if self.state == State::ChunkSize {
                        match chunk_size(&line)? {
                            0 => {
                                self.end_chunks(swap, out)?;
                                self.state = State::Trailers;
                            }
                            size => self.state = State::ChunkData(size),
                        }
                    } else if line == b"\r\n" {
                        out.extend_from_slice(b"\r\n");
                        self.state = State::Head;
                    } else {
                        swap.replace(&line, out);
                    }
                }
                Ok(&input[n..])
            }
            State::Close => {
                self.stream.push(swap, input, out);
                Ok(&[])
            }
        }
    }

    /// The body's data ended: what was held goes as a last chunk, then the zero-size
    /// chunk (its trailers and blank line follow).
    fn end_chunks(&mut self, swap: &mut Swap, out: &mut Vec<u8>) -> Result<(), Refused> {
        let mut piece = Vec::new();
        self.stream.finish(swap, &mut piece);
        self.emit(&piece, out)?;
        if let Some(mut guard) = self.guard.take() {
            let mut last = Vec::new();
            guard.end(&mut last);
            chunk(out, &last);
        }
        out.extend_from_slice(b"0\r\n");
        Ok(())
    }

    /// Appends a rewritten piece of a streamed body as a chunk, scanned first.
    fn emit(&mut self, piece: &[u8], out: &mut Vec<u8>) -> Result<(), Refused> {
        match &mut self.guard {
            Some(guard) => {
                let mut passed = Vec::with_capacity(piece.len());
                guard.pass(piece, &mut passed).map_err(Refused::Secret)?;
                chunk(out, &passed);
            }
            None => chunk(out, piece),
        }
        Ok(())
    }

    /// Adds bytes of a line to `held`; (whether the line ended, bytes taken).
    fn take_line(&mut self, input: &[u8]) -> Result<(bool, usize), Refused> {
        let (done, n) = match memchr::memchr(b'\n', input) {
            Some(i) => (true, i + 1),
            None => (false, input.len()),
        };
        if self.held.len() + n > MAX_LINE {
            return Err(Refused::Malformed(
                "a chunk-size or trailer line is too long",
            ));
        }
        self.held.extend_from_slice(&input[..n]);
        if done && !self.held.ends_with(b"\r\n") {
            return Err(Refused::Malformed("a line ends without CRLF"));
        }
        Ok((done, n))
    }

    /// A whole head: rewritten, and the state its body starts in.
    fn head(
        &mut self,
        swap: &mut Swap,
        exchange: &mut Exchange,
        head: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), Refused> {
        let (framing, waits) = self.framing(exchange, head, !swap.is_empty())?;
        // A length body small enough, and within what the budget lets this side hold, is
        // held, and sent with its new length.
        let room = u64::try_from(self.allowance).unwrap_or(u64::MAX);
        let hold = matches!(framing, Framing::Length(n) if n <= HOLD_BODY.min(room) && !waits);
        let rechunk = matches!(framing, Framing::Length(_)) && !hold;
        if rechunk || matches!(framing, Framing::Chunked) {
            self.guard = self.scan.as_ref().map(BodyScan::new);
        }
        let mut rewritten = Vec::with_capacity(head.len());
        let mut lines = head[..head.len() - 2].split_inclusive(|&b| b == b'\n');
        // Whether a value went where it could change the host the request names: its
        // target, its Host, or a line it ends early.
        let mut renamed = false;
        if let Some(first) = lines.next() {
            swap.replace(first, &mut rewritten);
            renamed |= rewritten != first;
        }
        let identity = self.side == Side::Request && !swap.is_empty();
        for line in lines {
            let name = field_name(line);
            let is_length = name.eq_ignore_ascii_case(b"content-length");
            if is_length && (hold || rechunk) || identity && asks_unreadable(name) {
                continue;
            }
            let at = rewritten.len();
            rewrite_field(swap, line, &mut rewritten);
            let new = &rewritten[at..];
            renamed |= new != line
                && (name.eq_ignore_ascii_case(b"host")
                    || memchr::memchr_iter(b'\n', new).count() > 1);
        }
        if let (Some(expect), true) = (&self.expect, renamed) {
            // The check read the sandbox's head; a secret's value (a `/` or `@` in it, say)
            // could make the rewritten one name another host: it is checked again.
            let mut whole = rewritten.clone();
            whole.extend_from_slice(b"\r\n");
            let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
            check_request(&parse_request(&whole, &mut fields)?, expect)?;
        }
        if identity {
            rewritten.extend_from_slice(b"Accept-Encoding: identity\r\n");
        }
        self.state = match framing {
            Framing::Length(n) if hold => {
                self.declared = n;
                // Exactly what was charged (growing by doubling could take twice).
                self.body = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
                self.head = rewritten;
                State::Hold { left: n }
            }
            Framing::Length(n) => {
                out.extend_from_slice(&rewritten);
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                State::Rechunk { left: n }
            }
            other => {
                out.extend_from_slice(&rewritten);
                out.extend_from_slice(b"\r\n");
                match other {
                    Framing::Chunked => State::ChunkSize,
                    Framing::Close => State::Close,
                    Framing::Tunnel => State::Tunnel,
                    _ => State::Head,
                }
            }
        };
        Ok(())
    }

    /// How the message whose head this is frames its body, and whether its sender waits
    /// for `100 Continue` before sending it; with `redacting`, a coded response body is
    /// refused.
    fn framing(
        &self,
        exchange: &mut Exchange,
        head: &[u8],
        redacting: bool,
    ) -> Result<(Framing, bool), Refused> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        if self.side == Side::Request {
            let req = parse_request(head, &mut fields)?;
            // The anti-fronting reader's own check and framing (`h1.rs`): the two cannot
            // disagree on whether a request may go, or on where it ends.
            let framing = match &self.expect {
                Some(expect) => check_request(&req, expect)?,
                None => request_framing(req.headers)?,
            };
            let waits = values(req.headers, "expect").any(|v| v == "100-continue");
            exchange.heads.push_back(req.method == Some("HEAD"));
            return Ok(match framing {
                RequestFraming::None => (Framing::None, waits),
                RequestFraming::Length(n) => (Framing::Length(n), waits),
                RequestFraming::Chunked => (Framing::Chunked, waits),
                RequestFraming::Tunnel => (Framing::Tunnel, false),
            });
        }
        let mut res = httparse::Response::new(&mut fields);
        parsed(res.parse(head))?;
        let fields = res.headers;
        let values = |name: &'static str| values(fields, name);
        let upgrade = values("connection").any(|v| v.split(',').any(|t| t.trim() == "upgrade"))
            && values("upgrade").next().is_some();
        let waits = values("expect").any(|v| v == "100-continue");
        match res.code {
            Some(101) => return Ok((Framing::Tunnel, false)),
            Some(100..=199) => return Ok((Framing::None, false)),
            Some(code) => {
                let to_head = exchange.heads.pop_front().unwrap_or(false);
                if to_head || code == 204 || code == 304 {
                    return Ok((Framing::None, false));
                }
            }
            None => return Err(Refused::Malformed("a response without a status")),
        }
        let codings: Vec<String> = values("transfer-encoding").collect();
        let lengths: Vec<String> = values("content-length").collect();
        // A response from here on. A coded answer on a connection that carries a value
        // cannot be searched for it (see the module header); one without a body carries
        // nothing.
        if redacting {
            let coded = values("content-encoding")
                .chain(codings.iter().cloned())
                .flat_map(|v| {
                    v.split(',')
                        .map(|t| t.trim().to_owned())
                        .collect::<Vec<_>>()
                })
                .find(|t| !t.is_empty() && t != "identity" && t != "chunked");
            if let Some(coding) = coded {
                return Err(Refused::Coded(coding));
            }
        }
        let framing = if !codings.is_empty() {
            let last = codings
                .iter()
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .rfind(|t| !t.is_empty());
            match last {
                Some("chunked") => Framing::Chunked,
                _ => Framing::Close,
            }
        } else if let Some(first) = lengths.first() {
            if lengths.iter().any(|l| l != first) {
                return Err(Refused::Malformed("differing Content-Length values"));
            }
            match first.parse::<u64>() {
                Ok(0) => Framing::None,
                Ok(n) => Framing::Length(n),
                Err(_) => return Err(Refused::Malformed("a Content-Length that is not a number")),
            }
        } else {
            Framing::Close
        };
        Ok(match framing {
            Framing::None if upgrade => (Framing::Tunnel, false),
            other => (other, waits),
        })
    }
}

/// Whether httparse read a whole head.
fn parsed(result: httparse::Result<usize>) -> Result<(), Refused> {
    match result {
        Ok(httparse::Status::Complete(_)) => Ok(()),
        Ok(httparse::Status::Partial) => Err(Refused::Malformed("incomplete head")),
        Err(httparse::Error::TooManyHeaders) => Err(Refused::Malformed("too many header fields")),
        Err(_) => Err(Refused::Malformed("not an HTTP/1.x head")),
    }
}

/// The values of the fields named `name`, trimmed and lowercase.
fn values<'a>(
    fields: &'a [httparse::Header<'_>],
    name: &'static str,
) -> impl Iterator<Item = String> + 'a {
    fields
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
}

/// Whether a request field asks for an answer redaction could not search: in a content or
/// transfer coding of the server's choice, or in ranges (see the module header).
pub fn asks_unreadable(name: &[u8]) -> bool {
    ["accept-encoding", "range", "if-range", "te"]
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
}

/// The name of a header line (`name: value\r\n`).
fn field_name(line: &[u8]) -> &[u8] {
    let end = memchr::memchr(b':', line).unwrap_or(0);
    line[..end].trim_ascii()
}

/// Appends a header line, its value swapped (as it was when nothing changed).
fn rewrite_field(swap: &mut Swap, line: &[u8], out: &mut Vec<u8>) {
    let Some(colon) = memchr::memchr(b':', line) else {
        swap.replace(line, out);
        return;
    };
    let name = &line[..colon];
    let value = line[colon + 1..].trim_ascii();
    let mut swapped = Vec::new();
    if swap.field(name.trim_ascii(), value, &mut swapped) {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(&swapped);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(line);
    }
}

/// Appends `data` as one chunk (nothing when empty: a zero-size chunk would end the body).
fn chunk(out: &mut Vec<u8>, data: &[u8]) {
    if !data.is_empty() {
        let _ = write!(out, "{:x}\r\n", data.len());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

    use base64::Engine as _;
    use proptest::prelude::*;

    use super::*;

    use crate::http::testing::{P, V, in_pieces, secrets};

    /// Requests through a request side, answers through a response side, in `cuts`.
    fn run(side: Side, input: &[u8], cuts: &[usize], exchange: &mut Exchange) -> Vec<u8> {
        let s = secrets();
        let mut swap = match side {
            Side::Request => Swap::substitute(&s, |_| true),
            Side::Response => Swap::redact(&s, |_| true),
        }
        .unwrap();
        let mut m = Messages::new(side);
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        cuts.sort_unstable();
        let (mut out, mut prev) = (Vec::new(), 0);
        for cut in cuts.into_iter().chain([input.len()]) {
            m.push(&mut swap, exchange, &input[prev..cut], &mut out)
                .unwrap();
            prev = cut;
        }
        m.finish(&mut swap, &mut out);
        out
    }

    /// The messages of `stream` as (head lines without framing fields, body), bodies
    /// de-chunked: what a receiver makes of them whatever the framing.
    fn messages(mut stream: &[u8], side: Side, heads: &[bool]) -> Vec<(Vec<String>, Vec<u8>)> {
        let mut out = Vec::new();
        let mut heads = heads.iter();
        while !stream.is_empty() {
            let end = memchr::memmem::find(stream, b"\r\n\r\n").unwrap() + 4;
            let head = std::str::from_utf8(&stream[..end]).unwrap();
            stream = &stream[end..];
            let lines: Vec<String> = head
                .split("\r\n")
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect();
            let field = |n: &str| {
                lines.iter().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case(n).then(|| v.trim().to_owned())
                })
            };
            let informational = lines[0].starts_with("HTTP/1.1 1");
            let no_body =
                side == Side::Response && (informational || *heads.next().unwrap_or(&false));
            let mut body = Vec::new();
            if no_body {
            } else if let Some(n) = field("content-length") {
                let n: usize = n.parse().unwrap();
                body = stream[..n].to_vec();
                stream = &stream[n..];
            } else if field("transfer-encoding").is_some() {
                loop {
                    let e = memchr::memmem::find(stream, b"\r\n").unwrap();
                    let size = usize::from_str_radix(
                        std::str::from_utf8(&stream[..e])
                            .unwrap()
                            .split(';')
                            .next()
                            .unwrap(),
                        16,
                    )
                    .unwrap();
                    stream = &stream[e + 2..];
                    if size == 0 {
                        let t = memchr::memmem::find(stream, b"\r\n\r\n")
                            .map(|t| t + 4)
                            .filter(|_| !stream.starts_with(b"\r\n"))
                            .unwrap_or(2);
                        stream = &stream[t..];
                        break;
                    }
                    body.extend_from_slice(&stream[..size]);
                    stream = &stream[size + 2..];
                }
            } else if side == Side::Response {
                body = stream.to_vec();
                stream = &[];
            }
            let kept = lines
                .into_iter()
                .filter(|l| {
                    let l = l.to_ascii_lowercase();
                    !l.starts_with("content-length") && !l.starts_with("transfer-encoding")
                })
                .collect();
            out.push((kept, body));
        }
        out
    }

    fn requests() -> Vec<u8> {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("me:{P}"));
        let json = format!("{{\"key\":\"{P}\"}}");
        let chunked_body = format!("{{\"a\":\"{P}\",\"b\":\"{P}\"}}");
        let (c1, c2) = chunked_body.split_at(20);
        format!(
            "GET /q?key={P}&x=1 HTTP/1.1\r\nHost: api.example.test\r\nX-Key: {P}\r\nAuthorization: Basic {basic}\r\n\r\n\
             POST /json HTTP/1.1\r\nHost: api.example.test\r\nContent-Length: {}\r\n\r\n{json}\
             POST /chunked HTTP/1.1\r\nHost: api.example.test\r\nTransfer-Encoding: chunked\r\n\r\n{:x};ext=1\r\n{c1}\r\n{:x}\r\n{c2}\r\n0\r\nX-Trailer: {P}\r\n\r\n\
             HEAD /h HTTP/1.1\r\nHost: api.example.test\r\n\r\n",
            json.len(),
            c1.len(),
            c2.len()
        )
        .into_bytes()
    }

    #[test]
    fn requests_carry_the_value_with_their_framing_made_right() {
        let mut exchange = Exchange::default();
        let out = run(Side::Request, &requests(), &[], &mut exchange);
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(!text.contains(P), "{text}");
        let got = messages(&out, Side::Request, &[]);
        assert_eq!(got.len(), 4);
        assert!(got[0].0[0].contains(&format!("key={V}&x=1")));
        assert!(got[0].0.contains(&format!("X-Key: {V}")));
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("me:{V}"));
        assert!(got[0].0.contains(&format!("Authorization: Basic {basic}")));
        assert_eq!(got[1].1, format!("{{\"key\":\"{V}\"}}").as_bytes());
        assert!(text.contains(&format!("Content-Length: {}\r\n", V.len() + 10)));
        assert_eq!(
            got[2].1,
            format!("{{\"a\":\"{V}\",\"b\":\"{V}\"}}").as_bytes()
        );
        assert!(text.contains(&format!("X-Trailer: {V}\r\n")));
        assert_eq!(exchange.heads, [false, false, false, true]);
    }

    #[test]
    fn responses_show_the_placeholder_where_the_value_was() {
        let mut exchange = Exchange {
            heads: [false, true, false, false].into(),
        };
        let body = format!("you sent {V}");
        let (b1, b2) = body.split_at(15);
        let answers = format!(
            "HTTP/1.1 100 Continue\r\n\r\n\
             HTTP/1.1 200 OK\r\nX-Echo: {V}\r\nContent-Length: {}\r\n\r\n{body}\
             HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n\
             HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{b1}\r\n{:x}\r\n{b2}\r\n0\r\n\r\n\
             HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{body}",
            body.len(),
            b1.len(),
            b2.len(),
        );
        let out = run(
            Side::Response,
            answers.as_bytes(),
            &[7, 100, 101, 230],
            &mut exchange,
        );
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(!text.contains(V), "{text}");
        let got = messages(&out, Side::Response, &[false, true, false, false]);
        let placed = format!("you sent {P}");
        assert_eq!(got.len(), 5);
        assert!(got[1].0.contains(&format!("X-Echo: {P}")));
        assert_eq!(got[1].1, placed.as_bytes());
        // A HEAD's answer keeps its length and has no body.
        assert!(text.contains("Content-Length: 999\r\n"));
        assert_eq!(got[3].1, placed.as_bytes());
        assert_eq!(got[4].1, placed.as_bytes());
    }

    #[test]
    fn long_bodies_and_waiting_senders_are_sent_chunked() {
        let big = format!("{}{P}{}", "a".repeat(300_000), "b".repeat(10));
        let waiting = format!("{{\"k\":\"{P}\"}}");
        let input = format!(
            "PUT /big HTTP/1.1\r\nHost: api.example.test\r\nContent-Length: {}\r\n\r\n{big}\
             POST /w HTTP/1.1\r\nHost: api.example.test\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n{waiting}",
            big.len(),
            waiting.len()
        );
        let mut exchange = Exchange::default();
        let out = run(
            Side::Request,
            input.as_bytes(),
            &[1000, 299_990, 300_020],
            &mut exchange,
        );
        let got = messages(&out, Side::Request, &[]);
        assert_eq!(got[0].1, big.replace(P, V).as_bytes());
        assert_eq!(got[1].1, waiting.replace(P, V).as_bytes());
        assert!(!String::from_utf8_lossy(&out).contains("Content-Length"));
    }

    #[test]
    fn a_connection_carrying_a_value_asks_for_answers_redaction_reads() {
        let input = format!(
            "GET /r HTTP/1.1\r\nHost: api.example.test\r\nAccept-Encoding: gzip, br\r\nRange: bytes=0-9\r\nif-range: \"x\"\r\nTE: gzip\r\nX-Key: {P}\r\n\r\n"
        );
        let out = run(
            Side::Request,
            input.as_bytes(),
            &[],
            &mut Exchange::default(),
        );
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.ends_with("\r\nAccept-Encoding: identity\r\n\r\n"),
            "{text}"
        );
        assert!(text.contains(&format!("X-Key: {V}\r\n")), "{text}");
        for gone in ["gzip", "Range", "if-range", "TE:"] {
            assert!(!text.contains(gone), "{gone}: {text}");
        }
        // Where no value goes, the request is left as it is (the control).
        let mut m = Messages::new(Side::Request);
        let mut out = Vec::new();
        m.push(
            &mut Swap::none(),
            &mut Exchange::default(),
            input.as_bytes(),
            &mut out,
        )
        .unwrap();
        assert_eq!(out, input.as_bytes());

        // A coded answer with a body cannot be searched: refused; without a body, or
        // where no value goes, it passes.
        let s = secrets();
        let coded = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\nabcd";
        let chunked_gzip = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        for bad in [&coded[..], chunked_gzip] {
            let mut red = Swap::redact(&s, |_| true).unwrap();
            let mut exchange = Exchange {
                heads: [false].into(),
            };
            let got =
                Messages::new(Side::Response).push(&mut red, &mut exchange, bad, &mut Vec::new());
            assert_eq!(got, Err(Refused::Coded("gzip".into())));
        }
        let mut red = Swap::redact(&s, |_| true).unwrap();
        let mut exchange = Exchange {
            heads: [true].into(),
        };
        let head_only = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\n";
        let mut m = Messages::new(Side::Response);
        assert!(
            m.push(&mut red, &mut exchange, head_only, &mut Vec::new())
                .is_ok()
        );
        let mut exchange = Exchange {
            heads: [false].into(),
        };
        let mut out = Vec::new();
        Messages::new(Side::Response)
            .push(&mut Swap::none(), &mut exchange, coded, &mut out)
            .unwrap();
        assert_eq!(out, coded);
    }

    #[test]
    fn a_body_is_held_only_within_its_allowance() {
        let s = secrets();
        let body = format!("{{\"k\":\"{P}\"}}");
        let input = format!(
            "POST /j HTTP/1.1\r\nHost: api.example.test\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (head, rest) = input.split_at(input.len() - 5);
        for (allowance, held) in [
            (usize::MAX, body.len()),
            (body.len(), body.len()),
            (body.len() - 1, 0),
        ] {
            let mut swap = Swap::substitute(&s, |_| true).unwrap();
            let mut m = Messages::new(Side::Request);
            m.allow(allowance);
            let mut out = Vec::new();
            m.push(
                &mut swap,
                &mut Exchange::default(),
                head.as_bytes(),
                &mut out,
            )
            .unwrap();
            // Held (the body's room taken from its head on), or streamed as chunks.
            assert_eq!(m.held(), held, "{allowance}");
            m.push(
                &mut swap,
                &mut Exchange::default(),
                rest.as_bytes(),
                &mut out,
            )
            .unwrap();
            assert_eq!(m.held(), 0);
            let text = String::from_utf8(out.clone()).unwrap();
            assert_eq!(
                text.contains("Transfer-Encoding: chunked"),
                held == 0,
                "{text}"
            );
            let got = messages(&out, Side::Request, &[]);
            assert_eq!(got[0].1, body.replace(P, V).as_bytes());
        }
    }

    #[test]
    fn an_unframeable_response_is_an_error() {
        let s = secrets();
        let mut swap = Swap::redact(&s, |_| true).unwrap();
        let mut m = Messages::new(Side::Response);
        let mut exchange = Exchange::default();
        let mut out = Vec::new();
        let bad = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n";
        assert!(m.push(&mut swap, &mut exchange, bad, &mut out).is_err());
        let mut m = Messages::new(Side::Response);
        let bad = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert!(m.push(&mut swap, &mut exchange, bad, &mut out).is_err());
    }

    #[test]
    fn what_is_held_when_the_stream_ends_goes_as_it_came() {
        let s = secrets();
        // A body that ends with the connection, its last bytes a start of the value: held
        // while more could complete it, let go by `finish`.
        let cut = &V[..20];
        let answer = format!("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nends with {cut}");
        let mut red = Swap::redact(&s, |_| true).unwrap();
        let mut exchange = Exchange {
            heads: [false].into(),
        };
        let mut m = Messages::new(Side::Response);
        let mut out = Vec::new();
        m.push(&mut red, &mut exchange, answer.as_bytes(), &mut out)
            .unwrap();
        assert!(!out.ends_with(cut.as_bytes()));
        m.finish(&mut red, &mut out);
        assert_eq!(out, answer.as_bytes());

        // A held body cut short goes with its head and the length it declared.
        let mut sub = Swap::substitute(&s, |_| true).unwrap();
        let mut m = Messages::new(Side::Request);
        let mut out = Vec::new();
        let short = format!(
            "POST /j HTTP/1.1\r\nHost: api.example.test\r\nContent-Length: 100\r\n\r\nk={P}"
        );
        m.push(
            &mut sub,
            &mut Exchange::default(),
            short.as_bytes(),
            &mut out,
        )
        .unwrap();
        assert_eq!(out, b"");
        m.finish(&mut sub, &mut out);
        let sent = short.replace(P, V).replace(
            "Content-Length",
            "Accept-Encoding: identity\r\nContent-Length",
        );
        assert_eq!(String::from_utf8(out).unwrap(), sent);
        assert_eq!(m.held(), 0);

        // A request head not yet ended goes nowhere: it was never checked (see
        // `an_unfinished_request_head_goes_nowhere_when_the_sandbox_finishes`).
        let mut m = Messages::new(Side::Request);
        let mut out = Vec::new();
        let part = b"GET / HTTP/1.1\r\nHost: api.exa";
        m.push(&mut sub, &mut Exchange::default(), part, &mut out)
            .unwrap();
        assert_eq!(out, b"");
        m.finish(&mut sub, &mut out);
        assert_eq!(out, b"");
    }

    #[test]
    fn a_body_of_256_kib_is_held_and_a_byte_more_is_sent_chunked() {
        let hold = 256 * 1024;
        for (len, held) in [(hold, true), (hold + 1, false)] {
            let body = format!("{P}{}", "a".repeat(len - P.len()));
            let input = format!(
                "PUT /b HTTP/1.1\r\nHost: api.example.test\r\nContent-Length: {len}\r\n\r\n{body}"
            );
            let out = run(
                Side::Request,
                input.as_bytes(),
                &[],
                &mut Exchange::default(),
            );
            let text = String::from_utf8_lossy(&out);
            let length = format!("Content-Length: {}\r\n", len - P.len() + V.len());
            assert_eq!(text.contains(&length), held, "{len}");
            assert_eq!(text.contains("Transfer-Encoding: chunked"), !held, "{len}");
            let got = messages(&out, Side::Request, &[]);
            assert_eq!(got[0].1, body.replace(P, V).as_bytes());
        }
    }

    #[test]
    fn a_reframed_body_is_scanned_for_placeholders_its_host_may_not_receive() {
        let s = secrets();
        // No value goes to this host (an empty swap), so its placeholder may not either:
        // one split across two chunks is found whole.
        let (c1, c2) = P.split_at(10);
        let input = format!(
            "POST /c HTTP/1.1\r\nHost: other.test\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{c1}\r\n{:x}\r\n{c2}\r\n0\r\n\r\n",
            c1.len(),
            c2.len()
        );
        let scanning = || Messages::new(Side::Request).scanning(Scanner::new(&s, |_| true));
        let got = scanning().push(
            &mut Swap::none(),
            &mut Exchange::default(),
            input.as_bytes(),
            &mut Vec::new(),
        );
        assert_eq!(got, Err(Refused::Secret(0)));
        // So is one in a Content-Length body sent as chunks (more than may be held).
        let length = format!(
            "POST /l HTTP/1.1\r\nHost: other.test\r\nContent-Length: {}\r\n\r\n{P}",
            P.len()
        );
        let mut m = scanning();
        m.allow(0);
        let got = m.push(
            &mut Swap::none(),
            &mut Exchange::default(),
            length.as_bytes(),
            &mut Vec::new(),
        );
        assert_eq!(got, Err(Refused::Secret(0)));
        // The control: the same body without the placeholder passes whole.
        let clean = input.replace(c1, &"x".repeat(c1.len()));
        let mut out = Vec::new();
        scanning()
            .push(
                &mut Swap::none(),
                &mut Exchange::default(),
                clean.as_bytes(),
                &mut out,
            )
            .unwrap();
        assert_eq!(out, clean.as_bytes());
        // A scanner with nothing to look for is not kept.
        assert!(
            Messages::new(Side::Request)
                .scanning(Scanner::new(&s, |_| false))
                .scan
                .is_none()
        );
    }

    #[test]
    fn a_head_of_64_kib_passes_and_one_that_cannot_be_held_is_refused() {
        // A response head `len` bytes long, its blank line included (no body: 204).
        let head = |len: usize| {
            let mut h = b"HTTP/1.1 204 No Content\r\nX: ".to_vec();
            h.resize(len - 4, b'a');
            h.extend_from_slice(b"\r\n\r\n");
            h
        };
        // At most `MAX_HEAD` bytes and a blank line's 4 are taken looking for its end.
        let fits = head(MAX_HEAD);
        let over = head(MAX_HEAD + 5);
        for cuts in [vec![], vec![10], vec![MAX_HEAD - 2], vec![MAX_HEAD]] {
            let mut m = Messages::new(Side::Response);
            let mut exchange = Exchange::default();
            let mut push = |piece: &[u8], out: &mut Vec<u8>| {
                m.push(&mut Swap::none(), &mut exchange, piece, out)
            };
            let got = in_pieces(&mut push, &fits, cuts.clone());
            assert!(got == (fits.clone(), Ok(())), "{cuts:?}");
            let mut m = Messages::new(Side::Response);
            let mut push = |piece: &[u8], out: &mut Vec<u8>| {
                m.push(&mut Swap::none(), &mut exchange, piece, out)
            };
            let (out, result) = in_pieces(&mut push, &over, cuts.clone());
            assert_eq!((out.len(), result), (0, Err(Refused::TooLarge)), "{cuts:?}");
        }
    }

    #[test]
    fn a_chunk_line_of_4_kib_passes_and_a_byte_more_is_refused() {
        let ok = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        // A chunk-size line `len` bytes long, its CRLF included (the rest an extension).
        let line = |len: usize| {
            let mut l = b"1;x=".to_vec();
            l.resize(len - 2, b'a');
            l.extend_from_slice(b"\r\n");
            l
        };
        let push = |input: &[u8]| {
            let mut out = Vec::new();
            let mut exchange = Exchange::default();
            let got = Messages::new(Side::Response).push(
                &mut Swap::none(),
                &mut exchange,
                input,
                &mut out,
            );
            (out, got)
        };
        let fits = [&ok[..], &line(4096), b"z\r\n0\r\n\r\n"].concat();
        // Framed again: the extension is dropped.
        let reframed = [&ok[..], b"1\r\nz\r\n0\r\n\r\n"].concat();
        assert_eq!(push(&fits), (reframed, Ok(())));
        let over = [&ok[..], &line(4097)].concat();
        assert_eq!(
            push(&over),
            (
                ok.to_vec(),
                Err(Refused::Malformed(
                    "a chunk-size or trailer line is too long"
                ))
            )
        );
    }

    #[test]
    fn what_follows_an_upgrade_passes_as_it_is() {
        // Request-like bytes after an upgrade are not a request: the placeholder stays.
        let next = format!("GET /n?k={P} HTTP/1.1\r\nHost: api.example.test\r\n\r\n");
        let upgrade = |fields: &str| {
            format!("GET /ws HTTP/1.1\r\nHost: api.example.test\r\n{fields}\r\n{next}")
        };
        for (fields, tunnel) in [
            ("Connection: Upgrade\r\nUpgrade: websocket\r\n", true),
            (
                "Connection: keep-alive, upgrade\r\nUpgrade: websocket\r\n",
                true,
            ),
            // Both fields make an upgrade: either alone, or another connection option, does not.
            ("Upgrade: websocket\r\n", false),
            ("Connection: upgrade\r\n", false),
            ("Connection: keep-alive\r\nUpgrade: websocket\r\n", false),
        ] {
            let out = run(
                Side::Request,
                upgrade(fields).as_bytes(),
                &[],
                &mut Exchange::default(),
            );
            let text = String::from_utf8(out).unwrap();
            assert_eq!(text.ends_with(&next), tunnel, "{fields}: {text}");
            assert_eq!(text.contains(V), !tunnel, "{fields}: {text}");
        }
        // An answer that switches protocols: what follows is not an answer either.
        let switched = format!(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n\
             HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{V}",
            V.len()
        );
        let mut exchange = Exchange {
            heads: [false].into(),
        };
        let out = run(Side::Response, switched.as_bytes(), &[], &mut exchange);
        assert_eq!(out, switched.as_bytes());
    }

    #[test]
    fn answers_204_and_304_have_no_body_whatever_their_length() {
        let s = secrets();
        for status in ["204 No Content", "304 Not Modified"] {
            let answers = format!(
                "HTTP/1.1 {status}\r\nContent-Length: 999\r\nETag: \"e\"\r\n\r\n\
                 HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{V}",
                V.len()
            );
            let mut red = Swap::redact(&s, |_| true).unwrap();
            let mut exchange = Exchange {
                heads: [false, false].into(),
            };
            let mut out = Vec::new();
            Messages::new(Side::Response)
                .push(&mut red, &mut exchange, answers.as_bytes(), &mut out)
                .unwrap();
            let expected = answers.replace(
                &format!("{}\r\n\r\n{V}", V.len()),
                &format!("{}\r\n\r\n{P}", P.len()),
            );
            assert_eq!(String::from_utf8(out).unwrap(), expected, "{status}");
        }
    }

    /// The request side frames requests by the anti-fronting reader's definition: what
    /// that reader refuses as ambiguous, this side refuses too, and what it reads as one
    /// request, so does this side.
    #[test]
    fn requests_are_framed_as_the_anti_fronting_reader_frames_them() {
        use crate::http::h1::Requests;
        use crate::http::{Authority, RequestReader};
        let host = "Host: api.example.com\r\n";
        let cases = [
            format!(
                "POST / HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
            ),
            format!("POST / HTTP/1.1\r\n{host}Content-Length: +5\r\n\r\n"),
            format!("POST / HTTP/1.1\r\n{host}Content-Length: 5\r\nContent-Length: 6\r\n\r\n"),
            format!("POST / HTTP/1.1\r\n{host}Transfer-Encoding: chunked, gzip\r\n\r\n"),
            // The controls: framings both read alike.
            format!(
                "POST / HTTP/1.1\r\n{host}Content-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\n{host}\r\n"
            ),
            format!(
                "POST / HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
        ];
        for case in cases {
            let mut checked = Vec::new();
            let mut check = Requests::new(Authority::Name(
                moat_policy::DomainName::new("api.example.com").unwrap(),
            ));
            let mut rest = case.as_bytes();
            let mut read = Ok(());
            while !rest.is_empty() {
                match check.step(rest, &mut checked) {
                    Ok(more) => rest = more,
                    Err(e) => {
                        read = Err(e);
                        break;
                    }
                }
            }
            let mut swapped = Vec::new();
            let got = Messages::new(Side::Request).push(
                &mut Swap::none(),
                &mut Exchange::default(),
                case.as_bytes(),
                &mut swapped,
            );
            assert_eq!(
                got.is_ok(),
                read.is_ok(),
                "{case:?}: {got:?} against {read:?}"
            );
            if read.is_ok() {
                // Nothing to swap: each request passes as the reader passed it.
                assert_eq!(swapped, checked, "{case:?}");
            }
        }
    }

    /// A checking request side refuses what the anti-fronting reader refuses, on any
    /// request of the connection, and passes what it passes: it can stand in for it.
    #[test]
    fn a_checking_request_side_refuses_what_the_reader_refuses() {
        use crate::http::h1::{MAX_HEAD, Requests};
        use crate::http::{Authority, RequestReader};
        let api = || Authority::Name(moat_policy::DomainName::new("api.example.com").unwrap());
        let ok = "GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n";
        // A head that ends 2 bytes past the bound: within what is taken to look for its
        // end, and still too large.
        let prefix = "GET / HTTP/1.1\r\nHost: api.example.com\r\nX: ";
        let long = format!(
            "{prefix}{}\r\n\r\n",
            "a".repeat(MAX_HEAD - 2 - prefix.len())
        );
        assert_eq!(long.len(), MAX_HEAD + 2);
        let cases = [
            format!("{ok}GET / HTTP/1.1\r\nHost: evil.example.com\r\n\r\n"),
            format!("{ok}GET http://evil.example.com/ HTTP/1.1\r\nHost: api.example.com\r\n\r\n"),
            format!("{ok}GET / HTTP/1.1\r\nHost: api.example.com\r\nHost: api.example.com\r\n\r\n"),
            format!("{ok}GET / HTTP/1.1\r\n\r\n"),
            format!("{ok}CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com\r\n\r\n"),
            long,
            // The controls.
            format!("{ok}{ok}"),
            format!("{ok}GET http://api.example.com/ HTTP/1.1\r\nHost: API.example.com\r\n\r\n"),
        ];
        for case in cases {
            let mut passed = Vec::new();
            let read = Requests::new(api()).push(case.as_bytes(), &mut passed);
            let mut swapped = Vec::new();
            let got = Messages::new(Side::Request).checking(api()).push(
                &mut Swap::none(),
                &mut Exchange::default(),
                case.as_bytes(),
                &mut swapped,
            );
            assert_eq!(got, read, "{:?}", &case[..case.len().min(200)]);
            if read.is_ok() {
                assert_eq!(swapped, passed);
            } else {
                // Nothing of the refused request went: only the requests before it.
                assert!(swapped.len() <= ok.len(), "{}", swapped.len());
            }
        }
        // Without the check, another host's request is the swap's to rewrite.
        let fronted = format!("{ok}GET / HTTP/1.1\r\nHost: evil.example.com\r\n\r\n");
        let unchecked = Messages::new(Side::Request).push(
            &mut Swap::none(),
            &mut Exchange::default(),
            fronted.as_bytes(),
            &mut Vec::new(),
        );
        assert_eq!(unchecked, Ok(()));
    }

    /// A half-close sends nothing of a request head that never ended: it was never
    /// checked (with a bare LF, a server could read it as a request for another host).
    #[test]
    fn an_unfinished_request_head_goes_nowhere_when_the_sandbox_finishes() {
        use crate::http::testing::api;
        let ok = b"GET / HTTP/1.1\r\nHost: api.example.test\r\n\r\n";
        let cut = b"POST /x HTTP/1.1\nHost: evil.example.com\nContent-Length: 5\n\nhello";
        for checking in [true, false] {
            let mut m = Messages::new(Side::Request);
            if checking {
                m = m.checking(api());
            }
            let (mut swap, mut exchange, mut out) = (Swap::none(), Exchange::default(), Vec::new());
            m.push(&mut swap, &mut exchange, ok, &mut out).unwrap();
            m.push(&mut swap, &mut exchange, cut, &mut out).unwrap();
            m.finish(&mut swap, &mut out);
            assert_eq!(out, ok, "{}", String::from_utf8_lossy(&out));
        }
        // The control: an answer cut short still reaches the sandbox as it came.
        let mut m = Messages::new(Side::Response);
        let mut exchange = Exchange {
            heads: [false].into(),
        };
        let (mut swap, mut out) = (Swap::none(), Vec::new());
        m.push(
            &mut swap,
            &mut exchange,
            b"HTTP/1.1 200 OK\r\nX: y",
            &mut out,
        )
        .unwrap();
        m.finish(&mut swap, &mut out);
        assert_eq!(out, b"HTTP/1.1 200 OK\r\nX: y");
    }

    /// A value put into an absolute-form target can change the host the request names
    /// (here in its userinfo, which the check reads past): the rewritten head is checked
    /// again.
    #[test]
    fn a_value_that_would_rename_the_host_is_refused() {
        use crate::http::testing::api;
        let value = "user@evil.example.com/";
        let secrets = [crate::secrets::Secret::new(
            "API_KEY",
            zeroize::Zeroizing::new(value.as_bytes().to_vec()),
            Some(P.to_owned()),
            &["api.example.test".into()],
            false,
        )
        .unwrap()];
        let push = |head: String| {
            let mut swap = Swap::substitute(&secrets, |_| true).unwrap();
            let mut out = Vec::new();
            let got = Messages::new(Side::Request).checking(api()).push(
                &mut swap,
                &mut Exchange::default(),
                head.as_bytes(),
                &mut out,
            );
            (got, String::from_utf8_lossy(&out).into_owned())
        };
        let (got, out) = push(format!(
            "GET http://{P}@api.example.test/ HTTP/1.1\r\nHost: api.example.test\r\n\r\n"
        ));
        assert!(matches!(got, Err(Refused::Fronting { .. })), "{got:?}");
        assert!(!out.contains(value), "{out}");
        // The control: the same value in the path names no host, and goes.
        let (got, out) = push(format!(
            "GET http://api.example.test/?k={P} HTTP/1.1\r\nHost: api.example.test\r\n\r\n"
        ));
        assert_eq!(got, Ok(()));
        assert!(out.contains(&format!("?k={value}")), "{out}");
    }

    #[test]
    fn a_head_httparse_cannot_read_is_refused() {
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        for (head, why) in [
            (
                "HTTP/1.1 200 OK\r\nno colon here\r\n\r\n".to_owned(),
                "not an HTTP/1.x head",
            ),
            (
                format!("HTTP/1.1 200 OK\r\n{many}\r\n"),
                "too many header fields",
            ),
        ] {
            let mut exchange = Exchange {
                heads: [false].into(),
            };
            let got = Messages::new(Side::Response).push(
                &mut Swap::none(),
                &mut exchange,
                head.as_bytes(),
                &mut Vec::new(),
            );
            assert_eq!(got, Err(Refused::Malformed(why)));
        }
    }

    #[test]
    fn the_debug_text_is_the_side_and_the_state() {
        let mut m = Messages::new(Side::Response);
        assert_eq!(
            format!("{m:?}"),
            "Messages { side: Response, state: Head, .. }"
        );
        let mut exchange = Exchange {
            heads: [false].into(),
        };
        m.push(
            &mut Swap::none(),
            &mut exchange,
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",
            &mut Vec::new(),
        )
        .unwrap();
        assert_eq!(
            format!("{m:?}"),
            "Messages { side: Response, state: Hold { left: 3 }, .. }"
        );
    }

    proptest! {
        /// However the stream is split, a receiver reads the same messages.
        #[test]
        fn splitting_changes_nothing_a_receiver_reads(cuts in proptest::collection::vec(0usize..2000, 0..12)) {
            let input = requests();
            let whole = messages(&run(Side::Request, &input, &[], &mut Exchange::default()), Side::Request, &[]);
            let split = messages(&run(Side::Request, &input, &cuts, &mut Exchange::default()), Side::Request, &[]);
            prop_assert_eq!(whole, split);
        }
    }
}
