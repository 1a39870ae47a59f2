//! Reading the server name from a TLS ClientHello (RFC 8446 §4.1.2, RFC 6066 §3) in the
//! first bytes a client sends, without terminating TLS. The bytes are hostile: every length
//! is checked against what is there, and anything that is not a well-formed ClientHello is
//! reported as such, never a panic.

use moat_policy::DomainName;

/// What the first bytes of a connection say about its server name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sni {
    /// More bytes are needed to tell.
    Incomplete,
    /// Not a TLS ClientHello (another protocol, or malformed).
    NotTls,
    /// A ClientHello without a (valid) host name.
    Absent,
    /// The ClientHello's host name.
    Name(DomainName),
}

/// The largest ClientHello record moat waits for (a TLS record holds at most 2^14 bytes
/// of plaintext, RFC 8446 §5.1).
pub const MAX_RECORD: usize = 5 + (1 << 14);

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
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|s| usize::from(s[0]) << 16 | usize::from(s[1]) << 8 | usize::from(s[2]))
    }
}

/// Parses the server name from the start of a client's byte stream.
pub fn parse(data: &[u8]) -> Sni {
    // TLS record: content type 22 (handshake), version 3.x, length.
    if data.is_empty() {
        return Sni::Incomplete;
    }
    if data[0] != 22 || data.get(1).is_some_and(|&v| v != 3) {
        return Sni::NotTls;
    }
    if data.len() < 5 {
        return Sni::Incomplete;
    }
    let record_len = usize::from(u16::from_be_bytes([data[3], data[4]]));
    if record_len == 0 || record_len > 1 << 14 {
        return Sni::NotTls;
    }
    let Some(record) = data.get(5..5 + record_len) else {
        return Sni::Incomplete;
    };
    // A ClientHello larger than one record is rare; its SNI is almost always in the first
    // record, and that is all moat reads.
    client_hello(record).unwrap_or(Sni::NotTls)
}

fn client_hello(record: &[u8]) -> Option<Sni> {
    let mut c = Cursor { b: record, pos: 0 };
    if c.u8()? != 1 {
        return Some(Sni::NotTls); // not a ClientHello
    }
    let _hello_len = c.u24()?;
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
    let exts = c.take(ext_len).or_else(|| record.get(c.pos..))?;
    let mut e = Cursor { b: exts, pos: 0 };
    while e.pos + 4 <= exts.len() {
        let kind = e.u16()?;
        let len = e.u16()?;
        let Some(body) = e.take(len) else {
            return Some(Sni::Absent);
        };
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
