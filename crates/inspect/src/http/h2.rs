//! HTTP/2 requests as moat reads them on an intercepted connection (RFC 9113): the frames
//! of the sandbox's side are followed, every request's header block is decoded (HPACK,
//! RFC 7541, with the dynamic table kept across the connection) and its authority
//! checked before the block's frames go on; everything else passes as it comes.
//!
//! # Theory of operation
//! [`Requests::push`] takes the plaintext in any pieces. After the connection preface,
//! each frame header (9 bytes) is read: a HEADERS frame and the CONTINUATION frames that
//! complete its block are held (at most [`MAX_BLOCK`]); when the block ends, it is decoded
//! and every `:authority` and `host` in it must be the host the handshake named; a request
//! (`:method`) must name one. Then the held frames pass. Any other frame passes at once.
//! A header block interrupted by another frame, a PUSH_PROMISE from the client, CONNECT,
//! and a block HPACK cannot decode are refused. Where a frame may come (`in_place`) and
//! what a block must say (`BlockCheck`) are also the swap's request side's rules
//! (`h2_swap.rs`), which reads instead of this reader on a connection that swaps secrets.
//!
//! [`Frames`] follows the server's frames in the other direction, so that a refusal can
//! be answered at a frame boundary with a `403` of moat's ([`forbidden`]).

pub use super::{Authority, Refused, RequestReader};

/// The client connection preface (RFC 9113 §3.4).
pub(super) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// A frame header's length.
pub(super) const FRAME_HEADER: usize = 9;
/// The most header block (with its frames) held at once.
pub const MAX_BLOCK: usize = 256 * 1024;
/// The largest HPACK dynamic table the sandbox's encoder may ask for.
pub(super) const MAX_TABLE: usize = 64 * 1024;

pub(super) const HEADERS: u8 = 0x1;
pub(super) const PUSH_PROMISE: u8 = 0x5;
const GOAWAY: u8 = 0x7;
pub(super) const CONTINUATION: u8 = 0x9;
pub(super) const DATA: u8 = 0x0;
pub(super) const END_STREAM: u8 = 0x1;
pub(super) const END_HEADERS: u8 = 0x4;
pub(super) const PADDED: u8 = 0x8;
pub(super) const PRIORITY: u8 = 0x20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// How much of the preface has arrived.
    Preface(usize),
    /// Reading a frame header (into `held`, from `frame_start`).
    Header,
    /// Passing this much of a frame's payload on.
    Pass(u32),
    /// Holding a HEADERS or CONTINUATION payload: bytes left, type, flags, where in
    /// `held` it starts.
    Hold {
        left: u32,
        kind: u8,
        flags: u8,
        start: usize,
    },
}

/// The requests of one HTTP/2 connection (see the module header).
pub struct Requests {
    expect: Authority,
    state: State,
    /// Held bytes: frame headers, and a header block's frames until it is checked.
    held: Vec<u8>,
    /// Where the frame header being read starts in `held`.
    frame_start: usize,
    /// The header block being assembled, without padding and priority.
    block: Vec<u8>,
    /// The stream whose header block is being assembled (0: none).
    block_stream: u32,
    decoder: loona_hpack::Decoder<'static>,
}

impl std::fmt::Debug for Requests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Requests")
            .field("expect", &self.expect)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Requests {
    /// Requests that must all name `expect`.
    pub fn new(expect: Authority) -> Requests {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(MAX_TABLE);
        Requests {
            expect,
            state: State::Preface(0),
            held: Vec::new(),
            frame_start: 0,
            block: Vec::new(),
            block_stream: 0,
            decoder,
        }
    }

    /// The stream of the request being read, or refused (0: none).
    pub fn stream(&self) -> u32 {
        self.block_stream
    }

    /// Consumes some of `input` (at least one byte); returns the rest.
    fn consume<'a>(&mut self, input: &'a [u8], out: &mut Vec<u8>) -> Result<&'a [u8], Refused> {
        match self.state {
            State::Preface(seen) => {
                let n = input.len().min(PREFACE.len() - seen);
                if input[..n] != PREFACE[seen..seen + n] {
                    return Err(Refused::Malformed("not the HTTP/2 connection preface"));
                }
                // Held until whole, so what passes does not depend on how it was split.
                self.state = if seen + n == PREFACE.len() {
                    out.extend_from_slice(PREFACE);
                    self.frame_start = self.held.len();
                    State::Header
                } else {
                    State::Preface(seen + n)
                };
                Ok(&input[n..])
            }
            State::Header => {
                let have = self.held.len() - self.frame_start;
                let n = input.len().min(FRAME_HEADER - have);
                self.held.extend_from_slice(&input[..n]);
                if have + n == FRAME_HEADER {
                    self.frame_header(out)?;
                }
                Ok(&input[n..])
            }
            State::Pass(left) => {
                let n = input.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                out.extend_from_slice(&input[..n]);
                let left = left - n as u32;
                self.state = if left == 0 {
                    State::Header
                } else {
                    State::Pass(left)
                };
                Ok(&input[n..])
            }
            State::Hold {
                left,
                kind,
                flags,
                start,
            } => {
                let n = input.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                if self.held.len() + n > MAX_BLOCK {
                    return Err(Refused::TooLarge);
                }
                self.held.extend_from_slice(&input[..n]);
                let left = left - n as u32;
                if left == 0 {
                    self.payload_held(kind, flags, start, out)?;
                } else {
                    self.state = State::Hold {
                        left,
                        kind,
                        flags,
                        start,
                    };
                }
                Ok(&input[n..])
            }
        }
    }

    /// A whole frame header is in `held` from `frame_start`.
    fn frame_header(&mut self, out: &mut Vec<u8>) -> Result<(), Refused> {
        let h = &self.held[self.frame_start..self.frame_start + FRAME_HEADER];
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]);
        let (kind, flags) = (h[3], h[4]);
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        in_place(kind, stream, self.block_stream, true)?;
        match kind {
            HEADERS | CONTINUATION => {
                self.block_stream = stream;
                let start = self.held.len();
                self.state = State::Hold {
                    left: len,
                    kind,
                    flags,
                    start,
                };
                if len == 0 {
                    self.payload_held(kind, flags, start, out)?;
                }
            }
            _ => {
                out.extend_from_slice(&self.held);
                self.held.clear();
                self.frame_start = 0;
                self.state = if len == 0 {
                    State::Header
                } else {
                    State::Pass(len)
                };
            }
        }
        Ok(())
    }

    /// A HEADERS or CONTINUATION payload is whole in `held` from `start`.
    fn payload_held(
        &mut self,
        kind: u8,
        flags: u8,
        start: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), Refused> {
        let payload = &self.held[start..];
        let fragment = if kind == HEADERS {
            let mut p = payload;
            let mut pad = 0;
            if flags & PADDED != 0 {
                let (&len, rest) = p
                    .split_first()
                    .ok_or(Refused::Malformed("an HTTP/2 padding length missing"))?;
                pad = usize::from(len);
                p = rest;
            }
            if flags & PRIORITY != 0 {
                p = p
                    .get(5..)
                    .ok_or(Refused::Malformed("an HTTP/2 priority cut short"))?;
            }
            let end = p
                .len()
                .checked_sub(pad)
                .ok_or(Refused::Malformed("HTTP/2 padding longer than its frame"))?;
            &p[..end]
        } else {
            payload
        };
        self.block.extend_from_slice(fragment);
        if flags & END_HEADERS == 0 {
            self.frame_start = self.held.len();
            self.state = State::Header;
            return Ok(());
        }
        self.check_block()?;
        out.extend_from_slice(&self.held);
        self.held.clear();
        self.block.clear();
        self.block_stream = 0;
        self.frame_start = 0;
        self.state = State::Header;
        Ok(())
    }

    /// Decodes the whole header block and checks its authority.
    fn check_block(&mut self) -> Result<(), Refused> {
        let mut check = BlockCheck::default();
        self.decoder
            .decode_with_cb(&self.block, |name, value| check.field(&name, &value))
            .map_err(|_| Refused::Malformed(UNDECODABLE))?;
        check.verdict(&self.expect)
    }
}

/// Why a header block HPACK cannot decode is refused.
pub(super) const UNDECODABLE: &str = "an HTTP/2 header block HPACK cannot decode";

/// Whether a frame of `kind` on `stream` may come here, `block_stream` being the stream
/// whose header block is being assembled (0: none). A header block is never interrupted,
/// not even by its own stream's other frames; HEADERS and CONTINUATION name a stream and
/// a CONTINUATION continues a block; a client (`from_client`) does not push. The reader
/// and the swap's sides follow frames by this one rule.
pub(super) fn in_place(
    kind: u8,
    stream: u32,
    block_stream: u32,
    from_client: bool,
) -> Result<(), Refused> {
    let in_block = block_stream != 0;
    if in_block && (kind != CONTINUATION || stream != block_stream) {
        return Err(Refused::Malformed("an HTTP/2 header block interrupted"));
    }
    match kind {
        HEADERS | CONTINUATION if stream == 0 || (kind == CONTINUATION && !in_block) => {
            Err(Refused::Malformed("an HTTP/2 header frame out of place"))
        }
        PUSH_PROMISE if from_client => Err(Refused::Malformed("a client does not push")),
        _ => Ok(()),
    }
}

/// What a request's header block says of its host, gathered field by field as HPACK
/// decodes them ([`BlockCheck::field`]) and then judged ([`BlockCheck::verdict`]): every
/// `:authority` and `host` must name the host the handshake named, a request (`:method`)
/// must name one, and CONNECT is refused. The reader and the swap's request side
/// (`h2_swap.rs`) judge each block by it.
#[derive(Debug, Default)]
pub(super) struct BlockCheck {
    authorities: Vec<String>,
    method: Option<Vec<u8>>,
    not_text: bool,
}

impl BlockCheck {
    /// One decoded field.
    pub(super) fn field(&mut self, name: &[u8], value: &[u8]) {
        match name {
            b":authority" | b"host" => match std::str::from_utf8(value) {
                Ok(v) => self.authorities.push(v.to_owned()),
                Err(_) => self.not_text = true,
            },
            b":method" => self.method = Some(value.to_vec()),
            _ => {}
        }
    }

    /// The block, whole, against `expect`.
    pub(super) fn verdict(&self, expect: &Authority) -> Result<(), Refused> {
        if self.not_text {
            return Err(Refused::Host("names a host that is not text"));
        }
        if self.method.as_deref() == Some(b"CONNECT") {
            return Err(Refused::Connect);
        }
        if self.method.is_some() && self.authorities.is_empty() {
            return Err(Refused::Host("names no host (no :authority)"));
        }
        for authority in &self.authorities {
            expect.check(authority)?;
        }
        Ok(())
    }
}

/// The server's frames, followed so that moat's own answer starts at a frame boundary.
#[derive(Debug, Clone, Default)]
pub struct Frames {
    head: [u8; FRAME_HEADER],
    have: usize,
    left: u32,
}

impl Frames {
    /// Follows `data` on its way to the sandbox.
    pub fn advance(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.left > 0 {
                let n = data
                    .len()
                    .min(usize::try_from(self.left).unwrap_or(usize::MAX));
                self.left -= n as u32;
                data = &data[n..];
                continue;
            }
            let n = data.len().min(FRAME_HEADER - self.have);
            self.head[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == FRAME_HEADER {
                self.left = u32::from_be_bytes([0, self.head[0], self.head[1], self.head[2]]);
                self.have = 0;
            }
        }
    }

    /// How many of the next bytes may pass before the frame under way ends (`usize::MAX`:
    /// at a boundary, none is under way).
    pub fn until_boundary(&self) -> usize {
        if self.have == 0 && self.left == 0 {
            usize::MAX
        } else if self.left > 0 {
            usize::try_from(self.left).unwrap_or(usize::MAX)
        } else {
            // Inside a frame header: its payload must follow too.
            FRAME_HEADER - self.have
        }
    }

    /// Whether the server's bytes so far end at a frame boundary.
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.left == 0
    }
}

/// moat's answer on `stream` when a request is refused: `403` with a one-line reason, then
/// GOAWAY. The header block uses literals without indexing, so the sandbox's HPACK table
/// is untouched.
pub fn forbidden(stream: u32, why: &str) -> Vec<u8> {
    let body = format!("moat: {why}\n");
    let mut block = vec![0x08, 3];
    block.extend_from_slice(b"403");
    // content-type (static index 31: 15 in the 4-bit prefix, then 16).
    block.extend_from_slice(&[0x0f, 0x10, 10]);
    block.extend_from_slice(b"text/plain");
    let mut out = Vec::new();
    frame(&mut out, HEADERS, END_HEADERS, stream, &block);
    frame(&mut out, DATA, END_STREAM, stream, body.as_bytes());
    let mut goaway = stream.to_be_bytes().to_vec();
    goaway.extend_from_slice(&0u32.to_be_bytes());
    frame(&mut out, GOAWAY, 0, 0, &goaway);
    out
}

pub(super) fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = (payload.len() as u32).to_be_bytes();
    out.extend_from_slice(&len[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
}

impl RequestReader for Requests {
    fn step<'a>(&mut self, input: &'a [u8], out: &mut Vec<u8>) -> Result<&'a [u8], Refused> {
        self.consume(input, out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

    use proptest::prelude::*;

    use super::*;
    use crate::http::testing::in_pieces;

    fn api() -> Requests {
        Requests::new(crate::http::testing::api())
    }

    fn headers_block(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut encoder = loona_hpack::Encoder::new();
        encoder.encode(fields.iter().copied())
    }

    /// A request stream: preface, SETTINGS, a GET (its block split over HEADERS and
    /// CONTINUATION, padded), a POST with DATA, then `last` as the authority of a third.
    fn stream(last: &[u8]) -> Vec<u8> {
        let mut encoder = loona_hpack::Encoder::new();
        let mut out = PREFACE.to_vec();
        frame(&mut out, 0x4, 0, 0, &[0, 3, 0, 0, 0, 100]);
        let get = encoder.encode([
            (&b":method"[..], &b"GET"[..]),
            (b":scheme", b"https"),
            (b":authority", b"api.example.test"),
            (b":path", b"/a"),
        ]);
        let (first, second) = get.split_at(get.len() / 2);
        let mut padded = vec![3];
        padded.extend_from_slice(first);
        padded.extend_from_slice(&[0, 0, 0]);
        frame(&mut out, HEADERS, PADDED, 1, &padded);
        frame(&mut out, CONTINUATION, END_HEADERS, 1, second);
        let post = encoder.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"https"),
            (b":authority", b"api.example.test:443"),
            (b":path", b"/b"),
        ]);
        frame(&mut out, HEADERS, END_HEADERS, 3, &post);
        frame(&mut out, DATA, END_STREAM, 3, b"hello, :authority evil");
        let third = encoder.encode([
            (&b":method"[..], &b"GET"[..]),
            (b":scheme", b"https"),
            (b":authority", last),
            (b":path", b"/c"),
        ]);
        frame(&mut out, HEADERS, END_HEADERS | END_STREAM, 5, &third);
        out
    }

    fn run(mut r: Requests, input: &[u8]) -> (Vec<u8>, Result<(), Refused>) {
        let mut out = Vec::new();
        let result = r.push(input, &mut out);
        (out, result)
    }

    #[test]
    fn requests_for_the_handshakes_host_pass_whole() {
        let input = stream(b"api.example.test");
        let mut r = api();
        assert!(format!("{r:?}").contains("state: Preface(0)"), "{r:?}");
        let mut out = Vec::new();
        assert_eq!(r.push(&input, &mut out), Ok(()));
        assert_eq!(out, input);
        // No request is being read; the state is shown, the HPACK table is not.
        assert_eq!(r.stream(), 0);
        assert!(format!("{r:?}").ends_with("state: Header, .. }"), "{r:?}");
    }

    #[test]
    fn a_table_of_64_kib_and_a_block_of_256_kib_are_read() {
        let get = headers_block(&[(b":method", b"GET"), (b":authority", b"api.example.test")]);
        // A dynamic table size update (RFC 7541 §6.3) to 65,536, then one to 65,537.
        let hpack = Err(Refused::Malformed(
            "an HTTP/2 header block HPACK cannot decode",
        ));
        for (update, want) in [
            (&[0x3f, 0xe1, 0xff, 0x03][..], Ok(())),
            (&[0x3f, 0xe2, 0xff, 0x03], hpack),
        ] {
            let mut v = PREFACE.to_vec();
            frame(&mut v, HEADERS, END_HEADERS, 1, &[update, &get].concat());
            assert_eq!(run(api(), &v).1, want);
        }
        // A request whose held frames (headers and payloads) come to exactly 256 KiB, over
        // HEADERS and CONTINUATION frames of 16 KiB, passes; one byte more is refused.
        let request = |value_len: usize| {
            let value: Vec<u8> = (0..value_len).map(|i| b'a' + (i % 26) as u8).collect();
            let block = headers_block(&[
                (b":method", b"GET"),
                (b":authority", b"api.example.test"),
                (b"x-big", &value),
            ]);
            let mut v = PREFACE.to_vec();
            let pieces: Vec<&[u8]> = block.chunks(16_384).collect();
            for (i, piece) in pieces.iter().enumerate() {
                let kind = if i == 0 { HEADERS } else { CONTINUATION };
                let flags = if i + 1 == pieces.len() {
                    END_HEADERS
                } else {
                    0
                };
                frame(&mut v, kind, flags, 1, piece);
            }
            v
        };
        let mut len = 250_000;
        len += 256 * 1024 - (request(len).len() - PREFACE.len());
        let exact = request(len);
        assert_eq!(exact.len() - PREFACE.len(), 256 * 1024);
        assert_eq!(run(api(), &exact), (exact.clone(), Ok(())));
        let over = request(len + 1);
        assert_eq!(over.len() - PREFACE.len(), 256 * 1024 + 1);
        assert_eq!(
            run(api(), &over),
            (PREFACE.to_vec(), Err(Refused::TooLarge))
        );
    }

    #[test]
    fn another_authority_is_refused_before_its_frames_pass() {
        let input = stream(b"evil.example");
        let mut r = api();
        let mut out = Vec::new();
        let result = r.push(&input, &mut out);
        // The refused request's stream, for moat's 403.
        assert_eq!(r.stream(), 5);
        assert_eq!(
            result,
            Err(Refused::Fronting {
                host: "evil.example".into(),
                expected: "api.example.test".into()
            })
        );
        // Everything before the third request passed (the dynamic table from the first
        // two was needed to read it); nothing of it did.
        let good = stream(b"api.example.test");
        let third_len = good.len() - out.len();
        assert!(third_len > FRAME_HEADER, "{third_len}");
        assert_eq!(out[..], good[..out.len()]);
    }

    #[test]
    fn malformed_and_refused_blocks() {
        let preface = PREFACE.to_vec();
        let with = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
            let mut v = preface.clone();
            frame(&mut v, kind, flags, stream, payload);
            v
        };
        let connect = headers_block(&[
            (b":method", b"CONNECT"),
            (b":authority", b"api.example.test:443"),
        ]);
        let no_host = headers_block(&[(b":method", b"GET"), (b":path", b"/")]);
        let host = headers_block(&[(b":method", b"GET"), (b"host", b"evil.example")]);
        for (input, want) in [
            (
                b"GET / HTTP/1.1\r\n\r\n".to_vec(),
                Refused::Malformed("not the HTTP/2 connection preface"),
            ),
            (with(HEADERS, END_HEADERS, 1, &connect), Refused::Connect),
            (
                with(HEADERS, END_HEADERS, 1, &no_host),
                Refused::Host("names no host (no :authority)"),
            ),
            (
                with(HEADERS, END_HEADERS, 1, &host),
                Refused::Fronting {
                    host: "evil.example".into(),
                    expected: "api.example.test".into(),
                },
            ),
            (
                with(PUSH_PROMISE, END_HEADERS, 1, &[0, 0, 0, 2]),
                Refused::Malformed("a client does not push"),
            ),
            (
                with(
                    HEADERS,
                    END_HEADERS,
                    1,
                    &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
                ),
                Refused::Malformed("an HTTP/2 header block HPACK cannot decode"),
            ),
            (
                with(HEADERS, END_HEADERS | PADDED, 1, &[9, 1]),
                Refused::Malformed("HTTP/2 padding longer than its frame"),
            ),
            (
                with(CONTINUATION, END_HEADERS, 1, &no_host),
                Refused::Malformed("an HTTP/2 header frame out of place"),
            ),
            (
                with(HEADERS, END_HEADERS, 0, &no_host),
                Refused::Malformed("an HTTP/2 header frame out of place"),
            ),
        ] {
            assert_eq!(run(api(), &input).1, Err(want));
        }
        // A block interrupted by DATA.
        let mut v = with(HEADERS, 0, 1, &no_host[..2]);
        frame(&mut v, DATA, 0, 1, b"x");
        assert_eq!(
            run(api(), &v).1,
            Err(Refused::Malformed("an HTTP/2 header block interrupted"))
        );
        // A header block larger than moat holds.
        let mut v = preface.clone();
        frame(&mut v, HEADERS, 0, 1, &vec![0; 60_000]);
        for _ in 0..5 {
            frame(&mut v, CONTINUATION, 0, 1, &vec![0; 60_000]);
        }
        assert_eq!(run(api(), &v).1, Err(Refused::TooLarge));
    }

    #[test]
    fn the_answer_is_a_403_the_client_can_read() {
        let answer = forbidden(5, "the request is for evil.example");
        let mut frames = Frames::default();
        frames.advance(&answer);
        assert!(frames.at_boundary());
        // HEADERS on stream 5, decoding to :status 403.
        assert_eq!(answer[3], HEADERS);
        let len = usize::from(answer[2]);
        let mut decoder = loona_hpack::Decoder::new();
        let fields = decoder
            .decode(&answer[FRAME_HEADER..FRAME_HEADER + len])
            .unwrap();
        assert_eq!(fields[0], (b":status".to_vec(), b"403".to_vec()));
        assert_eq!(
            fields[1],
            (b"content-type".to_vec(), b"text/plain".to_vec())
        );
    }

    #[test]
    fn frames_are_followed_to_their_boundaries() {
        let mut f = Frames::default();
        assert!(f.at_boundary());
        let mut data = Vec::new();
        frame(&mut data, DATA, 0, 1, b"0123456789");
        f.advance(&data[..4]);
        assert_eq!(f.until_boundary(), 5);
        assert!(!f.at_boundary());
        f.advance(&data[4..12]);
        assert_eq!(f.until_boundary(), 7);
        assert!(!f.at_boundary());
        f.advance(&data[12..]);
        assert!(f.at_boundary());
    }

    proptest! {
        /// However the bytes are split, the same bytes pass and the same refusal comes.
        #[test]
        fn splitting_changes_nothing(cuts in proptest::collection::vec(0usize..400, 0..12), evil in any::<bool>(), flip in any::<u16>()) {
            let mut input = stream(if evil { b"evil.example" } else { b"api.example.test" });
            if flip % 4 == 0 {
                let at = usize::from(flip) % input.len();
                input[at] ^= 0x41;
            }
            let (whole_out, whole_result) = run(api(), &input);
            let mut r = api();
            let (out, result) = in_pieces(|piece, out| r.push(piece, out), &input, cuts);
            prop_assert_eq!(result, whole_result);
            prop_assert_eq!(out, whole_out);
        }
    }
}
