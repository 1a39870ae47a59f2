//! A DNS message codec for the interceptor (RFC 1035 §4, RFC 3596 AAAA, RFC 6891 EDNS,
//! RFC 9460 SVCB/HTTPS, RFC 8914 Extended DNS Errors in moat's own refusals). Parsing takes hostile bytes: every length is checked, compression
//! pointers must point backwards (so they cannot loop), names are at most 255 octets, and
//! record counts are bounded by what the message can hold.
//!
//! Names are decompressed when parsed and written back uncompressed, except that a name
//! equal to the first question's is written as a pointer to it — the common case, and
//! enough to keep answers close to their original size.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Record types the interceptor looks into.
pub mod rtype {
    /// IPv4 address.
    pub const A: u16 = 1;
    /// Name server.
    pub const NS: u16 = 2;
    /// Canonical name.
    pub const CNAME: u16 = 5;
    /// Start of authority.
    pub const SOA: u16 = 6;
    /// Pointer.
    pub const PTR: u16 = 12;
    /// Mail exchange.
    pub const MX: u16 = 15;
    /// Text.
    pub const TXT: u16 = 16;
    /// IPv6 address.
    pub const AAAA: u16 = 28;
    /// Service locator.
    pub const SRV: u16 = 33;
    /// Delegation name.
    pub const DNAME: u16 = 39;
    /// EDNS pseudo-record.
    pub const OPT: u16 = 41;
    /// Service binding.
    pub const SVCB: u16 = 64;
    /// HTTPS service binding.
    pub const HTTPS: u16 = 65;
}

/// SVCB parameter keys with addresses (RFC 9460 §7.3).
pub const SVC_IPV4HINT: u16 = 4;
/// See [`SVC_IPV4HINT`].
pub const SVC_IPV6HINT: u16 = 6;
/// The SVCB parameter key of an Encrypted ClientHello configuration (RFC 9848 / ECH).
pub const SVC_ECH: u16 = 5;

/// Why bytes are not a DNS message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsError {
    /// The message ends early.
    Truncated,
    /// A name is malformed (bad label type, forward pointer, too long).
    BadName,
    /// Record data does not fit its type.
    BadRecord,
}

/// A domain name as labels, case kept as received.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Name(pub Vec<Vec<u8>>);

impl Name {
    /// Case-insensitive comparison (RFC 4343).
    pub fn eq_ignore_case(&self, other: &Name) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(&other.0)
                .all(|(a, b)| a.eq_ignore_ascii_case(b))
    }

    /// The dotted text, lowercased, without the trailing dot; `None` if a label holds a
    /// dot or a byte outside printable ASCII (such a name cannot be a policy name).
    pub fn to_text(&self) -> Option<String> {
        let mut out = String::new();
        for (i, label) in self.0.iter().enumerate() {
            if i > 0 {
                out.push('.');
            }
            for &b in label {
                if b == b'.' || !(0x21..0x7f).contains(&b) {
                    return None;
                }
                out.push(b.to_ascii_lowercase() as char);
            }
        }
        Some(out)
    }
}

/// One question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// The name asked about.
    pub name: Name,
    /// Query type.
    pub qtype: u16,
    /// Query class.
    pub qclass: u16,
}

/// Record data, decoded where the interceptor needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RData {
    /// An IPv4 address.
    A(Ipv4Addr),
    /// An IPv6 address.
    Aaaa(Ipv6Addr),
    /// A single name (CNAME, NS, PTR, DNAME).
    Name(Name),
    /// MX: preference, exchange.
    Mx(u16, Name),
    /// SRV: priority, weight, port, target.
    Srv(u16, u16, u16, Name),
    /// SOA: primary name server, mailbox, the five 32-bit counters.
    Soa(Name, Name, [u8; 20]),
    /// SVCB/HTTPS: priority, target, (key, value) parameters.
    Svcb(u16, Name, Vec<(u16, Vec<u8>)>),
    /// Anything else, as bytes.
    Other(Vec<u8>),
}

/// One resource record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Owner name.
    pub name: Name,
    /// Type.
    pub rtype: u16,
    /// Class (for OPT: the UDP payload size).
    pub class: u16,
    /// Time to live (for OPT: extended rcode and flags).
    pub ttl: u32,
    /// Data.
    pub data: RData,
}

/// A whole message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    /// ID.
    pub id: u16,
    /// Flags and codes (QR, opcode, AA, TC, RD, RA, Z, AD, CD, rcode).
    pub flags: u16,
    /// Questions.
    pub questions: Vec<Question>,
    /// Answer section.
    pub answers: Vec<Record>,
    /// Authority section.
    pub authority: Vec<Record>,
    /// Additional section.
    pub additional: Vec<Record>,
}

/// Flag bits.
pub mod flags {
    /// Response.
    pub const QR: u16 = 0x8000;
    /// Truncated.
    pub const TC: u16 = 0x0200;
    /// Recursion desired.
    pub const RD: u16 = 0x0100;
    /// Recursion available.
    pub const RA: u16 = 0x0080;
    /// Response code mask.
    pub const RCODE: u16 = 0x000f;
    /// Opcode mask.
    pub const OPCODE: u16 = 0x7800;
    /// Checking disabled (RFC 4035 §3.2.2).
    pub const CD: u16 = 0x0010;
}

/// The DO ("DNSSEC OK") bit of an OPT record's TTL field (RFC 3225 §3).
const OPT_DO: u32 = 0x0000_8000;
/// The largest EDNS UDP payload size moat asks upstream for (RFC 6891 §6.2.5 suggests
/// 4096 as a starting point).
const MAX_EDNS_PAYLOAD: u16 = 4096;

/// The EDNS option code of an Extended DNS Error (RFC 8914 §2).
pub const OPT_EDE: u16 = 15;

/// Extended DNS Error info codes (RFC 8914 §4) moat gives.
pub mod ede {
    /// Blocked (15): "the domain is blocked due to an internal security policy imposed by
    /// the operator of the resolver" — block lists, rebinding protection, a CNAME chain
    /// through a blocked name.
    pub const BLOCKED: u16 = 15;
    /// Prohibited (18): the client is not authorized to have the answer — the sandbox's
    /// policy does not let it reach the name.
    pub const PROHIBITED: u16 = 18;
}

/// What a sender's EDNS OPT record said (RFC 6891 §6.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    /// The UDP payload size it can take (at least 512).
    pub limit: usize,
    /// The DO ("DNSSEC OK") bit (RFC 3225).
    pub dnssec_ok: bool,
}

/// Response codes.
pub mod rcode {
    /// Format error: the query could not be interpreted.
    pub const FORMERR: u16 = 1;
    /// Server failure.
    pub const SERVFAIL: u16 = 2;
    /// Name does not exist.
    pub const NXDOMAIN: u16 = 3;
    /// Not implemented.
    pub const NOTIMP: u16 = 4;
}

struct Reader<'a> {
    msg: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Result<u8, DnsError> {
        let b = *self.msg.get(self.pos).ok_or(DnsError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }
    fn u16(&mut self) -> Result<u16, DnsError> {
        Ok(u16::from_be_bytes([self.u8()?, self.u8()?]))
    }
    fn u32(&mut self) -> Result<u32, DnsError> {
        Ok(u32::from(self.u16()?) << 16 | u32::from(self.u16()?))
    }
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], DnsError> {
        let end = self.pos.checked_add(n).ok_or(DnsError::Truncated)?;
        let b = self.msg.get(self.pos..end).ok_or(DnsError::Truncated)?;
        self.pos = end;
        Ok(b)
    }

    /// A name at the current position, following backward pointers.
    fn name(&mut self) -> Result<Name, DnsError> {
        let mut labels = Vec::new();
        let mut total = 1usize;
        let mut pos = self.pos;
        let mut jumped = false;
        // Pointers must go strictly backwards (RFC 1035 §4.1.4 allows only prior
        // occurrences), so the walk ends.
        let mut limit = pos;
        loop {
            let len = *self.msg.get(pos).ok_or(DnsError::Truncated)?;
            match len {
                0 => {
                    if !jumped {
                        self.pos = pos + 1;
                    }
                    return Ok(Name(labels));
                }
                l if l & 0xc0 == 0xc0 => {
                    let low = *self.msg.get(pos + 1).ok_or(DnsError::Truncated)?;
                    let target = usize::from(u16::from_be_bytes([l & 0x3f, low]));
                    if target >= limit {
                        return Err(DnsError::BadName);
                    }
                    if !jumped {
                        self.pos = pos + 2;
                        jumped = true;
                    }
                    limit = target;
                    pos = target;
                }
                l if l & 0xc0 == 0 => {
                    let l = usize::from(l);
                    total += l + 1;
                    if total > 255 {
                        return Err(DnsError::BadName);
                    }
                    let label = self
                        .msg
                        .get(pos + 1..pos + 1 + l)
                        .ok_or(DnsError::Truncated)?;
                    labels.push(label.to_vec());
                    pos += 1 + l;
                }
                _ => return Err(DnsError::BadName),
            }
        }
    }
}

fn record(r: &mut Reader<'_>) -> Result<Record, DnsError> {
    let name = r.name()?;
    let rtype = r.u16()?;
    let class = r.u16()?;
    let ttl = r.u32()?;
    let len = usize::from(r.u16()?);
    let start = r.pos;
    let end = start
        .checked_add(len)
        .filter(|&e| e <= r.msg.len())
        .ok_or(DnsError::Truncated)?;
    let data = match rtype {
        rtype::A if len == 4 => {
            let b = r.bytes(4)?;
            RData::A(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        }
        rtype::AAAA if len == 16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(r.bytes(16)?);
            RData::Aaaa(Ipv6Addr::from(a))
        }
        rtype::A | rtype::AAAA => return Err(DnsError::BadRecord),
        rtype::CNAME | rtype::NS | rtype::PTR | rtype::DNAME => RData::Name(r.name()?),
        rtype::MX => RData::Mx(r.u16()?, r.name()?),
        rtype::SRV => RData::Srv(r.u16()?, r.u16()?, r.u16()?, r.name()?),
        rtype::SOA => {
            let (m, n) = (r.name()?, r.name()?);
            let mut rest = [0u8; 20];
            rest.copy_from_slice(r.bytes(20)?);
            RData::Soa(m, n, rest)
        }
        rtype::SVCB | rtype::HTTPS => {
            let priority = r.u16()?;
            // RFC 9460 §2.2: the target name is not compressed; a pointer is malformed.
            let target = r.name()?;
            let mut params = Vec::new();
            while r.pos < end {
                let key = r.u16()?;
                let vlen = usize::from(r.u16()?);
                params.push((key, r.bytes(vlen)?.to_vec()));
            }
            RData::Svcb(priority, target, params)
        }
        _ => RData::Other(r.bytes(len)?.to_vec()),
    };
    if r.pos != end {
        return Err(DnsError::BadRecord);
    }
    Ok(Record {
        name,
        rtype,
        class,
        ttl,
        data,
    })
}

impl Message {
    /// Parses a message.
    pub fn parse(msg: &[u8]) -> Result<Message, DnsError> {
        let mut r = Reader { msg, pos: 0 };
        let id = r.u16()?;
        let flags = r.u16()?;
        let counts = [r.u16()?, r.u16()?, r.u16()?, r.u16()?];
        // A question takes at least 5 bytes and a record 11: counts beyond what the
        // message can hold are rejected before anything is allocated for them.
        let room = msg.len().saturating_sub(12);
        if usize::from(counts[0]) * 5
            + (usize::from(counts[1]) + usize::from(counts[2]) + usize::from(counts[3])) * 11
            > room
        {
            return Err(DnsError::Truncated);
        }
        let mut m = Message {
            id,
            flags,
            ..Message::default()
        };
        for _ in 0..counts[0] {
            m.questions.push(Question {
                name: r.name()?,
                qtype: r.u16()?,
                qclass: r.u16()?,
            });
        }
        for (count, section) in [
            (counts[1], &mut m.answers),
            (counts[2], &mut m.authority),
            (counts[3], &mut m.additional),
        ] {
            for _ in 0..count {
                section.push(record(&mut r)?);
            }
        }
        Ok(m)
    }

    /// The response code (low 4 bits; EDNS extended codes are not combined).
    pub fn rcode(&self) -> u16 {
        self.flags & flags::RCODE
    }

    /// The UDP payload size the sender can take: its EDNS OPT record's, else 512
    /// (RFC 1035 §4.2.1, RFC 6891 §6.2.5: values under 512 count as 512).
    pub fn udp_limit(&self) -> usize {
        self.additional
            .iter()
            .find(|r| r.rtype == rtype::OPT)
            .map_or(512, |r| usize::from(r.class).max(512))
    }

    /// What the sender's EDNS said; `None` when its message has no OPT record (it does
    /// not implement EDNS, RFC 6891 §7).
    pub fn edns(&self) -> Option<Edns> {
        self.additional
            .iter()
            .find(|r| r.rtype == rtype::OPT)
            .map(|r| Edns {
                limit: usize::from(r.class).max(512),
                dnssec_ok: r.ttl & OPT_DO != 0,
            })
    }

    /// Adds to this answer an OPT record carrying an Extended DNS Error (RFC 8914 §2):
    /// info code `code` and `text` as its EXTRA-TEXT (UTF-8, not NUL-terminated), cut at a
    /// character boundary so the whole answer fits the sender's payload size `edns.limit`.
    /// The OPT record says moat's own payload size and echoes the DO bit (RFC 3225 §3).
    /// Only for a sender that used EDNS: RFC 6891 §7 forbids an OPT record in the answer to
    /// one that did not.
    pub fn add_extended_error(&mut self, edns: Edns, code: u16, text: &str) {
        // The OPT record (11 bytes), the option's code and length (4) and its info code (2).
        let fixed = self.to_bytes().len() + 11 + 4 + 2;
        let room = edns
            .limit
            .saturating_sub(fixed)
            .min(usize::from(u16::MAX) - 2);
        let mut cut = text.len().min(room);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let text = &text.as_bytes()[..cut];
        let mut data = Vec::with_capacity(6 + text.len());
        data.extend_from_slice(&OPT_EDE.to_be_bytes());
        data.extend_from_slice(&((2 + text.len()) as u16).to_be_bytes());
        data.extend_from_slice(&code.to_be_bytes());
        data.extend_from_slice(text);
        self.additional.retain(|r| r.rtype != rtype::OPT);
        self.additional.push(Record {
            name: Name(Vec::new()),
            rtype: rtype::OPT,
            class: MAX_EDNS_PAYLOAD,
            ttl: if edns.dnssec_ok { OPT_DO } else { 0 },
            data: RData::Other(data),
        });
    }

    /// The Extended DNS Error an answer carries: (info code, extra text).
    pub fn extended_error(&self) -> Option<(u16, String)> {
        let opt = self.additional.iter().find(|r| r.rtype == rtype::OPT)?;
        let RData::Other(data) = &opt.data else {
            return None;
        };
        let mut rest = data.as_slice();
        while let [c0, c1, l0, l1, tail @ ..] = rest {
            let len = usize::from(u16::from_be_bytes([*l0, *l1]));
            let value = tail.get(..len)?;
            if u16::from_be_bytes([*c0, *c1]) == OPT_EDE && len >= 2 {
                let code = u16::from_be_bytes([value[0], value[1]]);
                return Some((code, String::from_utf8_lossy(&value[2..]).into_owned()));
            }
            rest = &tail[len..];
        }
        None
    }

    /// The query moat sends upstream for this one, with ID `id`, written anew from its
    /// parsed form: the first question, the RD and CD flags, and — when the sandbox used
    /// EDNS — an OPT record with only the payload size (512 to 4096) and the DO bit. Nothing
    /// else the sandbox put in its message (more questions, answer, authority or additional
    /// records, EDNS options, trailing bytes) leaves the host: moat is the only author of
    /// what goes upstream. `None` without a question.
    pub fn upstream_query(&self, id: u16) -> Option<Vec<u8>> {
        let question = self.questions.first()?.clone();
        let opt = self
            .additional
            .iter()
            .find(|r| r.rtype == rtype::OPT)
            .map(|opt| Record {
                name: Name(Vec::new()),
                rtype: rtype::OPT,
                class: opt.class.clamp(512, MAX_EDNS_PAYLOAD),
                ttl: opt.ttl & OPT_DO,
                data: RData::Other(Vec::new()),
            });
        let query = Message {
            id,
            flags: self.flags & (flags::RD | flags::CD),
            questions: vec![question],
            answers: Vec::new(),
            authority: Vec::new(),
            additional: opt.into_iter().collect(),
        };
        Some(query.to_bytes())
    }

    /// Serializes the message.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer {
            out: Vec::with_capacity(512),
            qname: self.questions.first().map(|q| &q.name),
        };
        w.u16(self.id);
        w.u16(self.flags);
        for n in [
            self.questions.len(),
            self.answers.len(),
            self.authority.len(),
            self.additional.len(),
        ] {
            w.u16(n.min(usize::from(u16::MAX)) as u16);
        }
        for (i, q) in self.questions.iter().enumerate() {
            // The first question is the compression target; it is written in full.
            if i == 0 {
                w.name_plain(&q.name);
            } else {
                w.name(&q.name);
            }
            w.u16(q.qtype);
            w.u16(q.qclass);
        }
        for rec in self
            .answers
            .iter()
            .chain(&self.authority)
            .chain(&self.additional)
        {
            w.record(rec);
        }
        w.out
    }

    /// A header-and-question answer with `rcode`, for NXDOMAIN, SERVFAIL, NOTIMP.
    pub fn reply_with(&self, rcode: u16) -> Message {
        Message {
            id: self.id,
            flags: flags::QR
                | (self.flags & (flags::OPCODE | flags::RD))
                | flags::RA
                | (rcode & flags::RCODE),
            questions: self.questions.clone(),
            ..Message::default()
        }
    }
}

struct Writer<'a> {
    out: Vec<u8>,
    qname: Option<&'a Name>,
}

impl Writer<'_> {
    fn u16(&mut self, v: u16) {
        self.out.extend_from_slice(&v.to_be_bytes());
    }
    fn name_plain(&mut self, n: &Name) {
        for label in &n.0 {
            self.out.push(label.len().min(63) as u8);
            self.out.extend_from_slice(&label[..label.len().min(63)]);
        }
        self.out.push(0);
    }
    fn name(&mut self, n: &Name) {
        match self.qname {
            // The first question's name starts at offset 12.
            Some(q) if q.eq_ignore_case(n) && !n.0.is_empty() => self.u16(0xc00c),
            _ => self.name_plain(n),
        }
    }
    fn record(&mut self, r: &Record) {
        self.name(&r.name);
        self.u16(r.rtype);
        self.u16(r.class);
        self.out.extend_from_slice(&r.ttl.to_be_bytes());
        let len_at = self.out.len();
        self.u16(0);
        match &r.data {
            RData::A(a) => self.out.extend_from_slice(&a.octets()),
            RData::Aaaa(a) => self.out.extend_from_slice(&a.octets()),
            RData::Name(n) => self.name(n),
            RData::Mx(p, n) => {
                self.u16(*p);
                self.name(n);
            }
            RData::Srv(p, w, port, n) => {
                self.u16(*p);
                self.u16(*w);
                self.u16(*port);
                self.name_plain(n);
            }
            RData::Soa(m, n, rest) => {
                self.name(m);
                self.name(n);
                self.out.extend_from_slice(rest);
            }
            RData::Svcb(p, target, params) => {
                self.u16(*p);
                self.name_plain(target);
                for (k, v) in params {
                    self.u16(*k);
                    self.u16(v.len().min(usize::from(u16::MAX)) as u16);
                    self.out.extend_from_slice(v);
                }
            }
            RData::Other(b) => self.out.extend_from_slice(b),
        }
        let len = (self.out.len() - len_at - 2).min(usize::from(u16::MAX)) as u16;
        self.out[len_at..len_at + 2].copy_from_slice(&len.to_be_bytes());
    }
}

/// Builds a name from dotted text (for tests and tools; not checked as a domain name is).
pub fn name(text: &str) -> Name {
    Name(
        text.trim_end_matches('.')
            .split('.')
            .filter(|l| !l.is_empty())
            .map(|l| l.as_bytes().to_vec())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(owner: &str, data: RData) -> Record {
        let rtype = match &data {
            RData::A(_) => rtype::A,
            RData::Aaaa(_) => rtype::AAAA,
            RData::Name(_) => rtype::CNAME,
            RData::Svcb(..) => rtype::HTTPS,
            _ => rtype::TXT,
        };
        Record {
            name: name(owner),
            rtype,
            class: 1,
            ttl: 60,
            data,
        }
    }

    fn sample() -> Message {
        Message {
            id: 0xbeef,
            flags: flags::QR | flags::RD | flags::RA,
            questions: vec![Question {
                name: name("www.example.test"),
                qtype: rtype::A,
                qclass: 1,
            }],
            answers: vec![
                rec("www.example.test", RData::Name(name("cdn.example.net"))),
                rec("cdn.example.net", RData::A("203.0.113.10".parse().unwrap())),
                rec(
                    "cdn.example.net",
                    RData::Aaaa("2001:db8::10".parse().unwrap()),
                ),
                rec(
                    "www.example.test",
                    RData::Svcb(
                        1,
                        name(""),
                        vec![
                            (1, b"\x02h2".to_vec()),
                            (SVC_IPV4HINT, vec![10, 0, 0, 1, 203, 0, 113, 9]),
                        ],
                    ),
                ),
            ],
            authority: vec![Record {
                name: name("example.test"),
                rtype: rtype::SOA,
                class: 1,
                ttl: 5,
                data: RData::Soa(name("ns.example.test"), name("host.example.test"), [7; 20]),
            }],
            additional: vec![Record {
                name: Name::default(),
                rtype: rtype::OPT,
                class: 1232,
                ttl: 0,
                data: RData::Other(vec![]),
            }],
        }
    }

    #[test]
    fn round_trips() {
        let m = sample();
        let bytes = m.to_bytes();
        assert_eq!(Message::parse(&bytes).unwrap(), m);
        assert_eq!(m.udp_limit(), 1232);
        // The owner name equal to the question is written as a pointer.
        assert!(bytes.windows(2).any(|w| w == [0xc0, 0x0c]));
    }

    #[test]
    fn parses_compressed_names_from_elsewhere() {
        // Header, question a.b, answer whose owner is a pointer to offset 12 and whose
        // CNAME is "x" + pointer to "b" at offset 14.
        let mut msg = vec![0, 1, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        msg.extend_from_slice(&[1, b'a', 1, b'b', 0, 0, 5, 0, 1]);
        msg.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 9, 0, 4, 1, b'x', 0xc0, 14]);
        let m = Message::parse(&msg).unwrap();
        assert_eq!(m.answers[0].name, name("a.b"));
        assert_eq!(m.answers[0].data, RData::Name(name("x.b")));
        assert_eq!(m.questions[0].name.to_text().unwrap(), "a.b");
    }

    #[test]
    fn hostile_messages_are_errors() {
        // A pointer to itself, forward pointers, a label type 0x40, a name over 255 bytes.
        let head = [0u8, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        let mut selfptr = head.to_vec();
        selfptr.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(Message::parse(&selfptr), Err(DnsError::BadName));
        let mut fwd = head.to_vec();
        fwd.extend_from_slice(&[0xc0, 20, 0, 1, 0, 1, 0, 0]);
        assert!(Message::parse(&fwd).is_err());
        let mut ext = head.to_vec();
        ext.extend_from_slice(&[0x40, 0, 0, 1, 0, 1]);
        assert_eq!(Message::parse(&ext), Err(DnsError::BadName));
        let mut long = head.to_vec();
        for _ in 0..5 {
            long.push(63);
            long.extend_from_slice(&[b'a'; 63]);
        }
        long.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert_eq!(Message::parse(&long), Err(DnsError::BadName));
        // Counts far beyond the message.
        assert_eq!(
            Message::parse(&[0, 1, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]),
            Err(DnsError::Truncated)
        );
        // A record whose length runs past the end; an A record of 5 bytes.
        let mut m = sample().to_bytes();
        m.truncate(m.len() - 3);
        assert!(Message::parse(&m).is_err());
        for len in 0..40 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 91 + 7) as u8).collect();
            let _ = Message::parse(&junk);
        }
    }

    #[test]
    fn replies_keep_id_question_and_rd() {
        let q = Message {
            id: 9,
            flags: flags::RD,
            questions: vec![Question {
                name: name("a.example"),
                qtype: rtype::AAAA,
                qclass: 1,
            }],
            ..Message::default()
        };
        let r = q.reply_with(rcode::NXDOMAIN);
        let parsed = Message::parse(&r.to_bytes()).unwrap();
        assert_eq!(parsed.id, 9);
        assert_eq!(parsed.rcode(), rcode::NXDOMAIN);
        assert_eq!(parsed.flags & flags::RD, flags::RD);
        assert_eq!(parsed.flags & flags::QR, flags::QR);
        assert_eq!(parsed.questions, q.questions);
        assert_eq!(q.udp_limit(), 512);
    }

    #[test]
    fn an_extended_error_is_an_opt_option_that_fits_the_senders_limit() {
        let mut query = Message {
            id: 7,
            flags: flags::RD,
            questions: vec![Question {
                name: name("ads.example.test"),
                qtype: rtype::A,
                qclass: 1,
            }],
            ..Message::default()
        };
        assert_eq!(query.edns(), None);
        query.additional.push(Record {
            name: Name::default(),
            rtype: rtype::OPT,
            class: 1232,
            ttl: OPT_DO,
            data: RData::Other(Vec::new()),
        });
        let edns = query.edns().unwrap();
        assert_eq!(
            edns,
            Edns {
                limit: 1232,
                dnssec_ok: true
            }
        );
        let mut answer = query.reply_with(rcode::NXDOMAIN);
        answer.add_extended_error(edns, ede::BLOCKED, "moat: refused");
        let bytes = answer.to_bytes();
        // The OPT record, byte for byte: root name, type 41, class 4096, TTL with DO, then
        // option 15 (length 2 + 13) holding info code 15 and the text.
        let mut opt = vec![
            0, 0, 41, 0x10, 0x00, 0, 0, 0x80, 0, 0, 19, 0, 15, 0, 15, 0, 15,
        ];
        opt.extend_from_slice(b"moat: refused");
        assert!(bytes.ends_with(&opt), "{bytes:?}");
        assert_eq!(bytes[10..12], [0, 1], "ARCOUNT");
        let back = Message::parse(&bytes).unwrap();
        assert_eq!(back.rcode(), rcode::NXDOMAIN);
        assert_eq!(
            back.extended_error(),
            Some((ede::BLOCKED, "moat: refused".to_owned()))
        );
        // A text longer than the sender takes is cut, at a character boundary.
        let long = "é".repeat(600);
        let mut small = query.reply_with(rcode::NXDOMAIN);
        let tight = Edns {
            limit: 512,
            dnssec_ok: false,
        };
        small.add_extended_error(tight, ede::PROHIBITED, &long);
        let bytes = small.to_bytes();
        assert!(bytes.len() <= 512 && bytes.len() >= 510, "{}", bytes.len());
        let (code, text) = Message::parse(&bytes).unwrap().extended_error().unwrap();
        assert_eq!(code, ede::PROHIBITED);
        assert!(text.chars().all(|c| c == 'é') && !text.is_empty());
    }

    #[test]
    fn names_that_are_not_host_names_have_no_text() {
        assert_eq!(Name(vec![b"a.b".to_vec()]).to_text(), None);
        assert_eq!(Name(vec![vec![0xff]]).to_text(), None);
        assert_eq!(Name::default().to_text().unwrap(), "");
    }

    #[test]
    fn upstream_queries_are_written_anew() {
        // A query carrying two questions, an answer, an additional A record, EDNS with
        // options and odd flags, then trailing bytes.
        let mut m = Message {
            id: 0x1234,
            flags: flags::RD | flags::CD | 0x0400 | 0x0020,
            ..Message::default()
        };
        for q in ["www.example.test", "exfil-secret.evil.test"] {
            m.questions.push(Question {
                name: name(q),
                qtype: 1,
                qclass: 1,
            });
        }
        let smuggle = Record {
            name: name("smuggle.evil.test"),
            rtype: 1,
            class: 1,
            ttl: 60,
            data: RData::A(Ipv4Addr::new(192, 0, 2, 1)),
        };
        m.answers.push(smuggle.clone());
        m.additional.push(smuggle);
        m.additional.push(Record {
            name: Name(Vec::new()),
            rtype: rtype::OPT,
            class: 65000,
            ttl: 0x00ff_ffff,
            data: RData::Other(b"\x00\x0a\x00\x08EXFIL123".to_vec()),
        });
        let mut bytes = m.to_bytes();
        bytes.extend_from_slice(b"trailing EXFIL");
        let parsed = Message::parse(&bytes).unwrap();
        let up = parsed.upstream_query(0xbeef).unwrap();
        assert!(!up.windows(5).any(|w| w == b"EXFIL"), "{up:?}");
        assert!(!up.windows(5).any(|w| w == b"exfil"));
        assert!(!up.windows(7).any(|w| w == b"smuggle"));
        let back = Message::parse(&up).unwrap();
        assert_eq!(back.id, 0xbeef);
        assert_eq!(back.flags, flags::RD | flags::CD);
        assert_eq!(back.questions.len(), 1);
        assert_eq!(back.questions[0].name, name("www.example.test"));
        assert!(back.answers.is_empty() && back.authority.is_empty());
        assert_eq!(back.additional.len(), 1);
        let opt = &back.additional[0];
        assert_eq!((opt.rtype, opt.class, opt.ttl), (rtype::OPT, 4096, OPT_DO));
        assert_eq!(opt.data, RData::Other(Vec::new()));
        // Without EDNS, none is added; a small payload size is raised to 512.
        let plain = Message {
            id: 1,
            flags: flags::RD,
            questions: vec![Question {
                name: name("a.example.test"),
                qtype: 28,
                qclass: 1,
            }],
            ..Message::default()
        };
        let up = Message::parse(&plain.upstream_query(7).unwrap()).unwrap();
        assert!(up.additional.is_empty());
        assert_eq!(up.questions, plain.questions);
        assert!(Message::default().upstream_query(1).is_none());
    }
}
