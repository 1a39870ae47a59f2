//! moat's own answer to a refused HTTP request (deny mode `explain`): whether a refused
//! connection's first bytes are an HTTP/1 request, the one line that says why it was
//! refused, and the `403 Forbidden` that carries it.
//!
//! # Theory of operation
//! A program inside that is refused a connection gets, instead of a bare reset, a reason it
//! can read — when it spoke HTTP/1, the one protocol moat can answer without knowing more
//! about it. [`classify`] looks at the first bytes (untrusted, in whatever pieces they
//! arrived; it is called again on the whole prefix each time more arrive): an HTTP/1 request
//! line is `method SP request-target SP HTTP/1.x CRLF` (RFC 9112 §3; a bare LF ends a line
//! too, §2.2). Anything that cannot begin one — a TLS ClientHello, binary, HTTP/2's
//! preface, HTTP/0.9 — is [`FirstBytes::NotHttp`] at the first byte that rules it out, so a
//! client that is not speaking HTTP/1 is reset at once. The method is at most
//! [`MAX_METHOD`] bytes and the whole line at most [`MAX_LINE`]: a line that goes on is not
//! HTTP. Once the line is whole, the request is HTTP; the answer waits for the end of the
//! head (the blank line) so that the client has finished writing before it is answered.
//!
//! [`forbidden`] is the answer: `HTTP/1.1 403 Forbidden`, `Connection: close`, and the
//! reason as a one-line `text/plain` body (no body for `HEAD`, RFC 9110 §9.3.2). The same
//! answer goes back on an intercepted connection whose request names another host
//! (`tls_stage.rs`).

/// The longest method read (the registered ones are at most 17 bytes).
pub const MAX_METHOD: usize = 32;
/// The longest request line read.
pub const MAX_LINE: usize = 8192;

/// What a refused connection's first bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstBytes {
    /// Could still be the start of an HTTP/1 request line: more bytes are needed.
    Partial,
    /// A whole HTTP/1 request line; the rest of the head has not arrived yet.
    RequestLine,
    /// An HTTP/1 request whose head is complete (the blank line arrived).
    RequestHead,
    /// Not an HTTP/1 request.
    NotHttp,
}

impl FirstBytes {
    /// Whether the bytes are an HTTP/1 request (its line at least).
    pub fn is_request(self) -> bool {
        matches!(self, FirstBytes::RequestLine | FirstBytes::RequestHead)
    }
}

/// `tchar` (RFC 9110 §5.6.2): what a method (a token) is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Classifies the first bytes of a connection (see the module header).
pub fn classify(bytes: &[u8]) -> FirstBytes {
    use FirstBytes::{NotHttp, Partial};
    // method SP
    let mut i = 0;
    loop {
        match bytes.get(i) {
            None => return Partial,
            Some(b' ') if i > 0 => break,
            Some(&b) if is_tchar(b) && i < MAX_METHOD => i += 1,
            Some(_) => return NotHttp,
        }
    }
    i += 1;
    // request-target SP: visible ASCII, at least one byte.
    let target = i;
    loop {
        match bytes.get(i) {
            _ if i >= MAX_LINE => return NotHttp,
            None => return Partial,
            Some(b' ') if i > target => break,
            Some(0x21..=0x7e) => i += 1,
            Some(_) => return NotHttp,
        }
    }
    i += 1;
    // HTTP/1.DIGIT
    for &want in b"HTTP/1." {
        match bytes.get(i) {
            None => return Partial,
            Some(&b) if b == want => i += 1,
            Some(_) => return NotHttp,
        }
    }
    match bytes.get(i) {
        None => return Partial,
        Some(b) if b.is_ascii_digit() => i += 1,
        Some(_) => return NotHttp,
    }
    // CRLF, or a bare LF (RFC 9112 §2.2).
    match (bytes.get(i), bytes.get(i + 1)) {
        (None, _) | (Some(b'\r'), None) => return Partial,
        (Some(b'\r'), Some(b'\n')) => i += 2,
        (Some(b'\n'), _) => i += 1,
        _ => return NotHttp,
    }
    // The head ends with an empty line, right after the request line or after a field
    // line: from the request line's own LF on, an LF followed by an empty line.
    let after = &bytes[i - 1..];
    let ends = memchr::memmem::find(after, b"\n\r\n").is_some()
        || memchr::memmem::find(after, b"\n\n").is_some();
    if ends {
        FirstBytes::RequestHead
    } else {
        FirstBytes::RequestLine
    }
}

/// Whether a request's method is `HEAD` (its answer has no body).
pub fn is_head(bytes: &[u8]) -> bool {
    bytes.starts_with(b"HEAD ")
}

/// The one line that says why moat refused something and, when one would, the flag that
/// would have allowed it: `moat: refused WHAT (REASON); to allow it: FLAG`. Control
/// characters become spaces, so the line stays one line.
pub fn refusal_line(what: &str, reason: &str, allow: Option<&str>) -> String {
    let mut line = format!("moat: refused {what} ({reason})");
    if let Some(flag) = allow {
        line.push_str("; to allow it: ");
        line.push_str(flag);
    }
    line.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// moat's `403 Forbidden` with `line` as its body (a line of its own, control characters
/// made spaces); `head`: the request was `HEAD`, so the length is said but no body sent.
pub fn forbidden(line: &str, head: bool) -> Vec<u8> {
    let line: String = line
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let body = format!("{line}\n");
    let mut out = format!(
        "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

    use proptest::prelude::*;

    use super::FirstBytes::{NotHttp, Partial, RequestHead, RequestLine};
    use super::*;

    #[test]
    fn requests_are_told_from_everything_else() {
        let cases: &[(&[u8], FirstBytes)] = &[
            (b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n", RequestHead),
            (b"GET / HTTP/1.1\r\n\r\n", RequestHead),
            (b"GET / HTTP/1.0\n\n", RequestHead),
            (
                b"POST /x?y=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
                RequestHead,
            ),
            (b"M-SEARCH * HTTP/1.1\r\nHost: a\r\n", RequestLine),
            (
                b"GET http://a.example/ HTTP/1.1\r\nHost: a.example\r\n",
                RequestLine,
            ),
            (b"GET / HTTP/1.1\r\n", RequestLine),
            (b"GET / HTTP/1.1\r", Partial),
            (b"GET / HTTP/1.", Partial),
            (b"GET /", Partial),
            (b"G", Partial),
            (b"", Partial),
            // A TLS ClientHello, HTTP/2's preface, HTTP/0.9, SSH, binary.
            (b"\x16\x03\x01\x02\x00\x01", NotHttp),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", NotHttp),
            (b"GET /\r\n", NotHttp),
            (b"SSH-2.0-OpenSSH_9.6\r\n", NotHttp),
            (b"\x00\x01\x02", NotHttp),
            // Two spaces, an empty target or method, a control byte in the target, a bad version.
            (b"GET  / HTTP/1.1\r\n", NotHttp),
            (b"GET  HTTP/1.1\r\n", NotHttp),
            (b" GET / HTTP/1.1\r\n", NotHttp),
            (b" / HTTP/1.1\r\n\r\n", NotHttp),
            (b"GET /\x01 HTTP/1.1\r\n", NotHttp),
            (b"GET / HTTP/1.x\r\n", NotHttp),
            (b"GET / HTTP/1.1 \r\n", NotHttp),
            (b"GET / HTTP/1.1\rX", NotHttp),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                classify(bytes),
                *want,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn a_request_is_its_line_or_its_whole_head() {
        assert!(RequestLine.is_request());
        assert!(RequestHead.is_request());
        assert!(!Partial.is_request());
        assert!(!NotHttp.is_request());
    }

    #[test]
    fn lines_past_their_bounds_are_not_http() {
        let method = vec![b'A'; MAX_METHOD + 1];
        assert_eq!(classify(&method), NotHttp);
        assert_eq!(classify(&method[..MAX_METHOD]), Partial);
        let mut long = b"GET /".to_vec();
        long.resize(MAX_LINE + 10, b'a');
        assert_eq!(classify(&long), NotHttp);
        long.truncate(MAX_LINE - 1);
        assert_eq!(classify(&long), Partial);
    }

    #[test]
    fn the_answer_is_a_403_with_one_line_and_nothing_after_it() {
        let line = refusal_line(
            "a connection to api.example.test:80/tcp",
            "rule 2: deny tcp to api.example.test",
            Some("--allow api.example.test:80/tcp"),
        );
        assert_eq!(
            line,
            "moat: refused a connection to api.example.test:80/tcp (rule 2: deny tcp to api.example.test); to allow it: --allow api.example.test:80/tcp"
        );
        let answer = String::from_utf8(forbidden(&line, false)).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{head}");
        assert!(head.contains("\r\nConnection: close"), "{head}");
        assert!(head.contains("\r\nContent-Type: text/plain"), "{head}");
        assert!(
            head.contains(&format!("\r\nContent-Length: {}", body.len())),
            "{head}"
        );
        assert_eq!(body, format!("{line}\n"));
        // What a header line or a second line would need is flattened.
        let sneaky = refusal_line("x\r\nSet-Cookie: a=b", "r\n", None);
        assert!(!sneaky.contains(['\r', '\n']), "{sneaky:?}");
        let answer = String::from_utf8(forbidden("a\r\nb", false)).unwrap();
        assert!(answer.ends_with("\r\n\r\na  b\n"), "{answer:?}");
        // HEAD: the length is said, no body follows.
        let head_only = String::from_utf8(forbidden(&line, true)).unwrap();
        assert!(head_only.ends_with("\r\n\r\n"), "{head_only}");
        assert!(is_head(b"HEAD / HTTP/1.1\r\n") && !is_head(b"GET / HTTP/1.1\r\n"));
    }

    proptest! {
        /// A verdict never changes once the bytes ruled HTTP out, and every prefix of a
        /// request is a possible request: more bytes cannot turn NotHttp into a request,
        /// nor a request into NotHttp.
        #[test]
        fn prefixes_never_change_a_verdict(bytes in proptest::collection::vec(any::<u8>(), 0..64),
                                           more in proptest::collection::vec(any::<u8>(), 0..64)) {
            let first = classify(&bytes);
            let mut longer = bytes.clone();
            longer.extend_from_slice(&more);
            let then = classify(&longer);
            match first {
                NotHttp => prop_assert_eq!(then, NotHttp),
                RequestLine => prop_assert!(then.is_request()),
                RequestHead => prop_assert_eq!(then, RequestHead),
                Partial => {}
            }
        }

        /// Every prefix of a well-formed request is Partial or a request, never NotHttp;
        /// the whole is a complete head.
        #[test]
        fn well_formed_requests_are_requests(method in "[A-Z]{1,10}", path in "/[a-zA-Z0-9/._~-]{0,40}",
                                             minor in 0u8..2, host in "[a-z]{1,12}") {
            let req = format!("{method} {path} HTTP/1.{minor}\r\nHost: {host}\r\n\r\n");
            for end in 0..req.len() {
                prop_assert_ne!(classify(&req.as_bytes()[..end]), NotHttp);
            }
            prop_assert_eq!(classify(req.as_bytes()), RequestHead);
        }
    }
}
