//! moat's L7 inspection layer, sans-I/O: what the engine reads and rewrites inside a
//! connection's bytes, with no knowledge of flows, sockets or the event loop.
//!
//! This crate owns the TLS server name read from a ClientHello and the interception CA with
//! its leaf certificates (`tls`), the HTTP/1.1 and HTTP/2 request readers that hold a
//! connection to the host its handshake named and the rewriters that swap secrets inside
//! them (`http`), the secrets themselves with their placeholders, encodings, scanner and
//! swap (`secrets`), and the name a connection's first bytes give it (`evidence`). Every
//! parser here takes hostile bytes in whatever pieces they come and is fuzzed
//! (`fuzz/`). It uses only the policy's names and the TLS, HPACK and encoding crates; the
//! engine's stream stage drives it.
#![forbid(unsafe_code)]

pub mod evidence;
pub mod http;
pub mod secrets;
pub mod tls;

/// Entry points for the fuzz targets in `fuzz/` (not a stable API): every parser of
/// untrusted bytes this crate owns.
#[doc(hidden)]
pub mod fuzzing {
    /// HTTP/1.1 request framing and authority checks, on bytes split in two at `data[0]`.
    pub fn h1_requests(data: &[u8]) {
        use crate::http::RequestReader;
        use crate::http::h1::{Authority, Requests};
        let Some((&cut, rest)) = data.split_first() else {
            return;
        };
        let Ok(name) = moat_policy::DomainName::new("api.example.test") else {
            return;
        };
        let mut requests = Requests::new(Authority::Name(name));
        let cut = usize::from(cut).min(rest.len());
        let mut out = Vec::new();
        if requests.push(&rest[..cut], &mut out).is_ok() {
            let _ = requests.push(&rest[cut..], &mut out);
        }
        assert!(out.len() <= rest.len());
    }

    /// HTTP/2 frames and HPACK header blocks with authority checks, on bytes split in two
    /// at `data[0]` (after the connection preface, which is given).
    pub fn h2_requests(data: &[u8]) {
        use crate::http::{Authority, RequestReader, h2};
        let Some((&cut, rest)) = data.split_first() else {
            return;
        };
        let Ok(name) = moat_policy::DomainName::new("api.example.test") else {
            return;
        };
        let mut requests = h2::Requests::new(Authority::Name(name));
        let mut out = Vec::new();
        if requests
            .push(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", &mut out)
            .is_err()
        {
            return;
        }
        let cut = usize::from(cut).min(rest.len());
        if requests.push(&rest[..cut], &mut out).is_ok() {
            let _ = requests.push(&rest[cut..], &mut out);
        }
        assert!(out.len() <= rest.len() + 24);
        let mut frames = h2::Frames::default();
        frames.advance(rest);
        let _ = frames.until_boundary();
    }

    /// Secret substitution and redaction inside HTTP (`http/h1_swap.rs`,
    /// `http/h2_swap.rs`): `data[0]` picks HTTP/1.1 or HTTP/2, the direction and whether
    /// requests are checked for their host, `data[1]` where the rest is cut in two; one
    /// secret is swapped, another watched for.
    pub fn secret_swap(data: &[u8]) {
        use crate::http::{Authority, h1_swap, h2_swap};
        use crate::secrets::swap::Swap;
        use crate::secrets::{Scanner, Secret};
        let [mode, cut, rest @ ..] = data else {
            return;
        };
        let secret = |name: &str, value: &[u8], p: &str| {
            Secret::new(
                name,
                zeroize::Zeroizing::new(value.to_vec()),
                Some(p.to_owned()),
                &["api.example.test".to_owned()],
                false,
            )
        };
        let (Ok(a), Ok(b)) = (
            secret(
                "A",
                b"a-longer-value-0123456789-0123456789-0123",
                "moat_aaaaaaaaaaaaaaaa",
            ),
            secret("B", b"vb", "moat_bbbbbbbbbbbbbbbb"),
        ) else {
            return;
        };
        let secrets = [a, b];
        let up = mode & 2 == 0;
        let made = if up {
            Swap::substitute(&secrets, |i| i == 0)
        } else {
            Swap::redact(&secrets, |i| i == 0)
        };
        let Some(mut swap) = made else {
            return;
        };
        let scan = Scanner::new(&secrets, |i| i == 1);
        let check = match moat_policy::DomainName::new("api.example.test") {
            Ok(name) if mode & 4 != 0 => Some(Authority::Name(name)),
            _ => None,
        };
        let cut = usize::from(*cut).min(rest.len());
        let (first, second) = rest.split_at(cut);
        let mut out = Vec::new();
        if mode & 1 == 0 {
            let side = if up {
                h1_swap::Side::Request
            } else {
                h1_swap::Side::Response
            };
            let mut m = h1_swap::Messages::new(side).scanning(scan);
            if let Some(expect) = check {
                m = m.checking(expect);
            }
            let mut exchange = h1_swap::Exchange::default();
            if m.push(&mut swap, &mut exchange, first, &mut out).is_ok()
                && m.push(&mut swap, &mut exchange, second, &mut out).is_ok()
            {
                m.finish(&mut swap, &mut out);
            }
        } else {
            let mut c = h2_swap::Connection::new().scanning(scan);
            if let Some(expect) = check {
                c = c.checking(expect);
            }
            let mut other = Swap::none();
            let mut sink = Vec::new();
            if c.up(&mut other, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", &mut sink)
                .is_err()
            {
                return;
            }
            let mut push = |piece: &[u8], out: &mut Vec<u8>| {
                if up {
                    c.up(&mut swap, piece, out)
                } else {
                    c.down(&mut swap, piece, out)
                }
            };
            if push(first, &mut out).is_ok() {
                let _ = push(second, &mut out);
            }
            c.flush_up(&mut sink);
            c.flush_down(&mut sink);
        }
    }

    /// A refused connection's first bytes (deny mode `explain`), classified whole and cut
    /// where the input's first byte says: a verdict never changes with more bytes; and the
    /// 403 made with the bytes as its reason is one line after its head.
    pub fn refused_first_bytes(data: &[u8]) {
        use crate::http::refusal::{FirstBytes, classify, forbidden, refusal_line};
        let Some((&cut, rest)) = data.split_first() else {
            return;
        };
        let whole = classify(rest);
        let part = classify(&rest[..usize::from(cut).min(rest.len())]);
        match part {
            FirstBytes::NotHttp => assert_eq!(whole, FirstBytes::NotHttp),
            FirstBytes::RequestLine => assert!(whole.is_request()),
            FirstBytes::RequestHead => assert_eq!(whole, FirstBytes::RequestHead),
            FirstBytes::Partial => {}
        }
        let text = String::from_utf8_lossy(rest);
        let answer = forbidden(&refusal_line(&text, &text, Some(&text)), false);
        let at = memchr::memmem::find(&answer, b"\r\n\r\n").map_or(0, |i| i + 4);
        let body = &answer[at..];
        assert!(body.ends_with(b"\n") && !body[..body.len() - 1].contains(&b'\n'));
        assert!(!body.contains(&b'\r'));
    }

    /// The server name in a client's first bytes (one or several TLS records).
    pub fn client_hello(data: &[u8]) {
        let _ = crate::tls::sni::parse(data);
    }

    /// The name a connection's first bytes give it (a ClientHello or an HTTP/1.x head),
    /// parsed whole and pushed in two pieces cut at `data[0]`: both must agree.
    pub fn first_bytes(data: &[u8]) {
        use crate::evidence::{First, Named, parse};
        let Some((&cut, rest)) = data.split_first() else {
            return;
        };
        let whole = parse(rest);
        let cut = usize::from(cut).min(rest.len());
        let mut first = First::new();
        first.push(&rest[..cut]);
        let early = first.named().clone();
        first.push(&rest[cut..]);
        assert!(early == Named::More || early == whole);
        assert!(*first.named() == whole);
    }
}
