//! Reading the server name from a TLS ClientHello (RFC 8446 §4.1.2, RFC 6066 §3) in the
//! first bytes a client sends, without terminating TLS. The bytes are hostile: every length
//! is checked against what is there, and anything that is not a well-formed ClientHello is
//! reported as such, never a panic.
//!
//! A handshake message may be split over several TLS records (RFC 8446 §5.1: "handshake
//! messages MAY be fragmented across multiple records"), so the ClientHello is assembled
//! from the fragments of consecutive handshake records before it is read — a client that
//! ends its first record before the server_name extension cannot slip a name past the
//! check. The assembly is bounded by [`MAX_PEEK`]: a hello that does not fit, records of
//! another type in between, or a hello cut short are [`Sni::Unreadable`], and a policy
//! with domain rules then fails closed.

use moat_policy::DomainName;

/// What the first bytes of a connection say about its server name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sni {
    /// More bytes are needed to tell.
    Incomplete,
    /// Not TLS: the first record is not a handshake record.
    NotTls,
    /// TLS handshake records whose ClientHello cannot be read (malformed, interleaved with
    /// other records, or larger than moat reads).
    Unreadable,
    /// A ClientHello without a (valid) host name.
    Absent,
    /// The ClientHello's host name.
    Name(DomainName),
}

/// The most bytes moat reads to assemble a ClientHello: records of up to 2^14 bytes of
/// plaintext (RFC 8446 §5.1) and their headers. Real ClientHellos, post-quantum key shares
/// included, are a few KiB.
pub const MAX_PEEK: usize = 32 * 1024;

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.b.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|s| usize::from(s[0]))
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|s| usize::from(u16::from_be_bytes([s[0], s[1]])))
    }
}

/// TLS record content type of handshake messages (RFC 8446 §5.1).
const HANDSHAKE: u8 = 22;
/// Handshake message type of a ClientHello (RFC 8446 §4).
const CLIENT_HELLO: u8 = 1;

/// Parses the server name from the start of a client's byte stream (at most [`MAX_PEEK`]
/// bytes of it are looked at).
pub fn parse(data: &[u8]) -> Sni {
    let data = &data[..data.len().min(MAX_PEEK)];
    if data.is_empty() {
        return Sni::Incomplete;
    }
    if data[0] != HANDSHAKE || data.get(1).is_some_and(|&v| v != 3) {
        return Sni::NotTls;
    }
    // The handshake message, from the fragments of consecutive handshake records.
    let mut message: Vec<u8> = Vec::new();
    let mut pos = 0;
    loop {
        let Some(header) = data.get(pos..pos + 5) else {
            return incomplete_or_unreadable(data);
        };
        if header[0] != HANDSHAKE || header[1] != 3 {
            return Sni::Unreadable;
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > 1 << 14 {
            // RFC 8446 §5.1: zero-length handshake fragments are not allowed.
            return if pos == 0 {
                Sni::NotTls
            } else {
                Sni::Unreadable
            };
        }
        let Some(fragment) = data.get(pos + 5..pos + 5 + len) else {
            return incomplete_or_unreadable(data);
        };
        message.extend_from_slice(fragment);
        pos += 5 + len;
        if message.len() < 4 {
            continue;
        }
        if message[0] != CLIENT_HELLO {
            // No server completes a handshake that does not start with a ClientHello.
            return Sni::NotTls;
        }
        let hello_len =
            usize::from(message[1]) << 16 | usize::from(message[2]) << 8 | usize::from(message[3]);
        if 4 + hello_len > MAX_PEEK {
            return Sni::Unreadable;
        }
        if message.len() >= 4 + hello_len {
            return client_hello(&message[4..4 + hello_len]).unwrap_or(Sni::Unreadable);
        }
    }
}

/// More bytes may complete the hello unless moat has read as much as it will.
fn incomplete_or_unreadable(data: &[u8]) -> Sni {
    if data.len() >= MAX_PEEK {
        Sni::Unreadable
    } else {
        Sni::Incomplete
    }
}

/// Reads a ClientHello's body (after the type and length).
fn client_hello(record: &[u8]) -> Option<Sni> {
    let mut c = Cursor { b: record, pos: 0 };
    c.take(2)?; // legacy_version
    c.take(32)?; // random
    let sid = c.u8()?;
    c.take(sid)?;
    let suites = c.u16()?;
    c.take(suites)?;
    let comp = c.u8()?;
    c.take(comp)?;
    if c.pos == record.len() {
        return Some(Sni::Absent); // no extensions
    }
    let ext_len = c.u16()?;
    // The whole message is here: extensions that claim more than it holds are malformed.
    let exts = c.take(ext_len)?;
    let mut e = Cursor { b: exts, pos: 0 };
    while e.pos + 4 <= exts.len() {
        let kind = e.u16()?;
        let len = e.u16()?;
        let body = e.take(len)?;
        if kind != 0 {
            continue;
        }
        // server_name: list length, then (type, length, name) entries; type 0 = host_name.
        let mut s = Cursor { b: body, pos: 0 };
        let _list = s.u16()?;
        while s.pos < body.len() {
            let name_type = s.u8()?;
            let n = s.u16()?;
            let name = s.take(n)?;
            if name_type == 0 {
                return Some(
                    std::str::from_utf8(name)
                        .ok()
                        .and_then(|t| DomainName::new(t).ok())
                        .map_or(Sni::Absent, Sni::Name),
                );
            }
        }
        return Some(Sni::Absent);
    }
    Some(Sni::Absent)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ClientHello with the given extensions.
    fn hello(extensions: &[u8]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one suite
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
        body.extend_from_slice(extensions);
        let mut hs = vec![1];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![22, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    fn sni_ext(name: &str) -> Vec<u8> {
        let mut entry = vec![0];
        entry.extend_from_slice(&(name.len() as u16).to_be_bytes());
        entry.extend_from_slice(name.as_bytes());
        let mut list = (entry.len() as u16).to_be_bytes().to_vec();
        list.extend_from_slice(&entry);
        let mut ext = vec![0, 0];
        ext.extend_from_slice(&(list.len() as u16).to_be_bytes());
        ext.extend_from_slice(&list);
        ext
    }

    #[test]
    fn finds_the_server_name() {
        let mut exts = vec![0, 10, 0, 2, 0, 29]; // another extension first
        exts.extend_from_slice(&sni_ext("Blocked.Example.TEST"));
        let h = hello(&exts);
        assert_eq!(
            parse(&h),
            Sni::Name(DomainName::new("blocked.example.test").unwrap())
        );
        // Every prefix is incomplete, never wrong.
        for cut in 0..h.len() {
            assert_eq!(parse(&h[..cut]), Sni::Incomplete, "cut at {cut}");
        }
    }

    #[test]
    fn other_shapes() {
        assert_eq!(parse(&hello(&[0, 10, 0, 2, 0, 29])), Sni::Absent);
        assert_eq!(
            parse(&hello(&sni_ext("10.0.0.1"))),
            Sni::Absent,
            "an IP is not a host name"
        );
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Sni::NotTls);
        assert_eq!(parse(b"SSH-2.0-x"), Sni::NotTls);
        assert_eq!(parse(&[22, 3, 1, 0, 0]), Sni::NotTls);
        assert_eq!(parse(&[22, 3, 1, 0xff, 0xff]), Sni::NotTls);
        let mut not_hello = hello(&[]);
        not_hello[5] = 2; // ServerHello
        assert_eq!(parse(&not_hello), Sni::NotTls);
    }

    /// The hello `h` (one record) re-framed as records holding the fragments cut at `cuts`.
    fn split(h: &[u8], cuts: &[usize]) -> Vec<u8> {
        let message = &h[5..];
        let mut out = Vec::new();
        let mut start = 0;
        for &end in cuts.iter().chain(std::iter::once(&message.len())) {
            let fragment = &message[start..end];
            out.extend_from_slice(&[22, 3, 1]);
            out.extend_from_slice(&(fragment.len() as u16).to_be_bytes());
            out.extend_from_slice(fragment);
            start = end;
        }
        out
    }

    #[test]
    fn a_hello_split_over_records_is_read_whole() {
        let mut exts = vec![0, 10, 0, 2, 0, 29];
        exts.extend_from_slice(&sni_ext("blocked.example.test"));
        let h = hello(&exts);
        let want = parse(&h);
        assert_eq!(
            want,
            Sni::Name(DomainName::new("blocked.example.test").unwrap())
        );
        let body = h.len() - 5;
        // Every two-record split, and three-record splits, read the same name; every
        // prefix of a split stream is incomplete, never a verdict.
        for cut in 1..body {
            let s = split(&h, &[cut]);
            assert_eq!(parse(&s), want, "cut at {cut}");
            for prefix in 0..s.len() {
                assert_eq!(
                    parse(&s[..prefix]),
                    Sni::Incomplete,
                    "cut {cut} prefix {prefix}"
                );
            }
        }
        for a in (1..body).step_by(7) {
            for b in (a + 1..body).step_by(5) {
                assert_eq!(parse(&split(&h, &[a, b])), want, "cuts {a} {b}");
            }
        }
    }

    #[test]
    fn unreadable_hellos_are_said_to_be() {
        let h = hello(&sni_ext("a.example.test"));
        // A record of another type between the fragments.
        let mut s = split(&h, &[10]);
        let second = 5 + 10;
        s[second] = 23; // application data
        assert_eq!(parse(&s), Sni::Unreadable);
        // A zero-length fragment after the first.
        let mut s = split(&h, &[10]);
        s.splice(second..second, [22, 3, 1, 0, 0]);
        assert_eq!(parse(&s), Sni::Unreadable);
        // A hello that claims more than moat reads.
        let mut big = h.clone();
        big[6..9].copy_from_slice(&[0x01, 0x00, 0x00]);
        assert_eq!(parse(&big), Sni::Unreadable);
        // Extensions that claim more than the hello holds.
        let mut e = sni_ext("a.example.test");
        e[3] += 40;
        assert_eq!(parse(&hello(&e)), Sni::Unreadable);
        // A stream of tiny records that never finishes within the bound.
        let tiny = split(&h, &(1..h.len() - 5).collect::<Vec<_>>());
        assert_eq!(parse(&tiny), parse(&h));
        let endless: Vec<u8> = std::iter::repeat_n([22u8, 3, 1, 0, 1, 1], MAX_PEEK / 6 + 1)
            .flatten()
            .collect();
        assert_eq!(parse(&endless), Sni::Unreadable);
    }

    #[test]
    fn mutated_hellos_never_panic() {
        let base = hello(&sni_ext("a.example.test"));
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let mut h = base.clone();
            let i = (rng % h.len() as u64) as usize;
            h[i] = (rng >> 32) as u8;
            h.truncate(((rng >> 40) % (h.len() as u64 + 1)) as usize);
            let _ = parse(&h);
        }
    }
}
