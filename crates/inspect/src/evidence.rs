//! The name a connection used, as its own first bytes say it: the server name of a TLS
//! ClientHello, or the `Host` of a plain HTTP/1.x request. The audit log, the summary and
//! `--learn` name a connection by this evidence before the names DNS answered for its
//! address (many names share an address on registries and CDNs; only the connection's
//! own bytes tell which one it meant).
//!
//! # Theory of operation
//! Nothing is held back for this: [`First`] keeps a copy of at most [`MAX_FIRST`] of the
//! bytes the sandbox sent (as they pass on to the host) and [`parse`] reads them again
//! after each piece, until they name the connection, show that they never will, or the
//! copy is full. [`parse`] is a plain function of the bytes seen so far; its outcome is
//! the same however the bytes were split ([`First`]'s property test), and a prefix of a
//! stream is answered [`Named::More`] or the stream's own answer, never another name.
//!
//! The bytes are hostile and the name is only a claim: it names the connection in the
//! record, never judges it (domain rules hold for addresses DNS answered; the ClientHello
//! is judged by its own path, `tls/sni.rs`). An address written as a name (`Host:
//! 203.0.113.10`), a request with no `Host` or with two, and anything that is not TLS or
//! HTTP/1.x name nothing.

use std::net::IpAddr;

use moat_policy::DomainName;

use crate::http::host_of;
use crate::tls::sni::{self, Sni};

/// The most bytes of a connection's start that are kept to read its name: a ClientHello
/// with post-quantum key shares, or a request head, fits in this.
pub const MAX_FIRST: usize = 4096;

/// Header fields read of a request head.
const MAX_HEADERS: usize = 128;

/// What a connection's first bytes say about the name it used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named {
    /// More bytes are needed to tell.
    More,
    /// The server name of its TLS ClientHello.
    Sni(DomainName),
    /// The `Host` of its first HTTP/1.x request.
    Host(DomainName),
    /// They name nothing (another protocol, no name, or too long to read).
    Nothing,
}

impl Named {
    /// The name, if any.
    pub fn name(&self) -> Option<&DomainName> {
        match self {
            Named::Sni(n) | Named::Host(n) => Some(n),
            Named::More | Named::Nothing => None,
        }
    }
}

/// Reads the name from the first bytes a client sent (at most [`MAX_FIRST`] of them are
/// looked at; when that many name nothing yet, they never will).
pub fn parse(first: &[u8]) -> Named {
    let first = &first[..first.len().min(MAX_FIRST)];
    let full = first.len() >= MAX_FIRST;
    let Some(&lead) = first.first() else {
        return Named::More;
    };
    // A TLS handshake record.
    if lead == 22 {
        return match sni::parse(first) {
            Sni::Name(name) => Named::Sni(name),
            Sni::Incomplete if !full => Named::More,
            _ => Named::Nothing,
        };
    }
    request_host(first, MAX_FIRST)
}

/// The `Host` of the HTTP/1.x request head at the start of `bytes`: [`Named::More`] while
/// the head is not whole and shorter than `max`, [`Named::Nothing`] when the bytes are not
/// a request head, or it has no `Host`, two, or one that is not a name. The one reader of
/// a first request's host (the plain-HTTP secrets stage holds its head with it too).
pub fn request_host(bytes: &[u8], max: usize) -> Named {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) if bytes.len() < max => return Named::More,
        _ => return Named::Nothing,
    }
    let mut hosts = request
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"));
    let (Some(host), None) = (hosts.next(), hosts.next()) else {
        return Named::Nothing;
    };
    let Ok(text) = std::str::from_utf8(host.value) else {
        return Named::Nothing;
    };
    let host = host_of(text.trim());
    if host.parse::<IpAddr>().is_ok() {
        return Named::Nothing;
    }
    DomainName::new(host).map_or(Named::Nothing, Named::Host)
}

/// The start of one connection's bytes from the sandbox, kept until they name it.
#[derive(Debug, Clone)]
pub struct First {
    /// The bytes so far (emptied once they have told).
    kept: Vec<u8>,
    named: Named,
}

impl Default for First {
    fn default() -> First {
        First::new()
    }
}

impl First {
    /// Nothing seen yet.
    pub fn new() -> First {
        First {
            kept: Vec::new(),
            named: Named::More,
        }
    }

    /// Nothing will be read (a stream whose name is known another way).
    pub fn settled() -> First {
        First {
            kept: Vec::new(),
            named: Named::Nothing,
        }
    }

    /// Takes the next bytes the sandbox sent (after the ones before them).
    pub fn push(&mut self, data: &[u8]) {
        if self.named != Named::More || data.is_empty() {
            return;
        }
        let room = MAX_FIRST - self.kept.len();
        self.kept.extend_from_slice(&data[..data.len().min(room)]);
        self.named = parse(&self.kept);
        if self.named != Named::More {
            self.kept = Vec::new();
        }
    }

    /// What the bytes so far say.
    pub fn named(&self) -> &Named {
        &self.named
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

    use proptest::prelude::*;

    use super::*;

    fn n(s: &str) -> DomainName {
        DomainName::new(s).unwrap()
    }

    /// A ClientHello record naming `name` (as tls/sni.rs's tests build one).
    fn hello(name: &str) -> Vec<u8> {
        let mut sni = vec![0u8];
        sni.extend_from_slice(&u16::try_from(name.len()).unwrap().to_be_bytes());
        sni.extend_from_slice(name.as_bytes());
        let mut list = u16::try_from(sni.len()).unwrap().to_be_bytes().to_vec();
        list.extend_from_slice(&sni);
        let mut ext = vec![0, 0];
        ext.extend_from_slice(&u16::try_from(list.len()).unwrap().to_be_bytes());
        ext.extend_from_slice(&list);
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&u16::try_from(ext.len()).unwrap().to_be_bytes());
        body.extend_from_slice(&ext);
        let mut msg = vec![1, 0];
        msg.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        msg.extend_from_slice(&body);
        let mut rec = vec![22, 3, 1];
        rec.extend_from_slice(&u16::try_from(msg.len()).unwrap().to_be_bytes());
        rec.extend_from_slice(&msg);
        rec
    }

    #[test]
    fn a_request_is_named_by_its_host() {
        let get =
            b"GET /simple/ HTTP/1.1\r\nUser-Agent: pip\r\nHost: Index.Example.TEST:8080\r\n\r\n";
        assert_eq!(parse(get), Named::Host(n("index.example.test")));
        let no_port = b"POST / HTTP/1.0\r\nhost: files.example.test.\r\n\r\nbody";
        assert_eq!(parse(no_port), Named::Host(n("files.example.test")));
        assert_eq!(
            parse(&hello("api.example.test")),
            Named::Sni(n("api.example.test"))
        );
    }

    #[test]
    fn what_names_nothing() {
        for bytes in [
            &b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a.example.test\r\nHost: b.example.test\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: 203.0.113.10\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: [2001:db8::10]:80\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: \r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: bad_name!\r\n\r\n",
            b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"\x00\x01\x02binary",
        ] {
            assert_eq!(
                parse(bytes),
                Named::Nothing,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        // A head that does not end within MAX_FIRST bytes, and a TLS record that long
        // without a whole hello.
        let mut long = b"GET / HTTP/1.1\r\nCookie: ".to_vec();
        long.resize(MAX_FIRST + 10, b'a');
        assert_eq!(parse(&long), Named::Nothing);
        let mut tls = vec![22, 3, 1, 0xff, 0xff];
        tls.resize(MAX_FIRST, 0);
        assert_eq!(parse(&tls), Named::Nothing);
        assert_eq!(parse(b""), Named::More);
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: a.example.test\r\n"),
            Named::More
        );
    }

    #[test]
    fn a_hello_still_cut_short_at_the_bound_names_nothing() {
        // A ClientHello whose extensions run past MAX_FIRST (a padding extension of
        // 16 KiB): at the bound it is still incomplete, and will never be read whole here.
        let mut hello = vec![1, 0, 0x3f, 0xfc, 3, 3];
        hello.extend_from_slice(&[7; 32]); // random
        hello.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]); // session, suites, compression
        hello.extend_from_slice(&[0x3f, 0xd0, 0x00, 0x15, 0x3f, 0xcc]); // padding extension
        let mut record = vec![22, 3, 1, 0x40, 0x00];
        record.extend_from_slice(&hello);
        record.resize(MAX_FIRST, 0);
        assert_eq!(sni::parse(&record), Sni::Incomplete);
        assert_eq!(parse(&record[..MAX_FIRST - 1]), Named::More);
        assert_eq!(parse(&record), Named::Nothing);
    }

    #[test]
    fn a_name_is_the_server_name_or_the_host() {
        let name = n("api.example.test");
        assert_eq!(Named::Sni(name.clone()).name(), Some(&name));
        assert_eq!(Named::Host(name.clone()).name(), Some(&name));
        assert_eq!(Named::More.name(), None);
        assert_eq!(Named::Nothing.name(), None);
    }

    #[test]
    fn the_copy_is_bounded_and_freed() {
        let mut first = First::new();
        for _ in 0..100 {
            first.push(&[b'a'; 100]);
        }
        assert_eq!(first.named(), &Named::Nothing);
        assert!(first.kept.capacity() == 0);
        let mut settled = First::settled();
        settled.push(b"GET / HTTP/1.1\r\nHost: a.example.test\r\n\r\n");
        assert_eq!(settled.named(), &Named::Nothing);
    }

    /// A request head with `host` among other fields, and a body.
    fn request() -> impl Strategy<Value = (Vec<u8>, Named)> {
        (
            prop::sample::select(vec!["GET", "POST", "HEAD", "PUT"]),
            "[a-z]{1,12}",
            prop::collection::vec(("[A-Za-z-]{1,10}", "[ -~]{0,40}"), 0..6),
            0usize..7,
            prop::bool::ANY,
        )
            .prop_map(|(method, host, fields, at, tls)| {
                let name = format!("{host}.example.test");
                if tls {
                    return (hello(&name), Named::Sni(n(&name)));
                }
                let mut head = format!("{method} /x HTTP/1.1\r\n");
                let mut fields: Vec<(String, String)> = fields
                    .into_iter()
                    .filter(|(k, _)| !k.eq_ignore_ascii_case("host"))
                    .collect();
                let at = at.min(fields.len());
                fields.insert(at, ("Host".into(), format!("{name}:80")));
                for (k, v) in fields {
                    head.push_str(&format!("{k}: {}\r\n", v.trim()));
                }
                head.push_str("\r\nbody bytes");
                (head.into_bytes(), Named::Host(n(&name)))
            })
    }

    proptest! {
        /// However the bytes are split, pushing them piece by piece tells what parsing them
        /// whole tells; and every prefix is More or that answer.
        #[test]
        fn split_anywhere_the_answer_is_the_same(
            (bytes, want) in request(),
            cuts in prop::collection::vec(0usize..600, 0..5),
        ) {
            prop_assert_eq!(parse(&bytes), want.clone());
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort_unstable();
            let mut first = First::new();
            let mut from = 0;
            for cut in cuts.into_iter().chain([bytes.len()]) {
                first.push(&bytes[from..cut]);
                from = cut;
                let now = first.named().clone();
                prop_assert!(now == Named::More || now == want, "{:?} after {}", now, cut);
            }
            prop_assert_eq!(first.named(), &want);
        }

        /// Arbitrary bytes never panic, and a name read is a valid one.
        #[test]
        fn hostile_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&bytes);
        }
    }
}
