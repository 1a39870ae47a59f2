//! moat's DNS, sans-I/O: what the engine's DNS flows use to answer the sandbox.
//!
//! This crate owns the message parser and writer (`message.rs`), the filter that blocks names
//! and drops answers pointing inward (`filter.rs`), the pins that bind domain rules to the
//! addresses DNS really answered (`pins.rs`) and DNS-over-TCP framing (`framing.rs`). It
//! uses only the policy; the flows, sockets and timers are the engine's.
//!
//! # Forwarding
//! DNS forwarding at the message level: the sandbox's query is parsed and written anew for
//! the upstream (its first question and EDNS payload size and DO bit only, under a random
//! ID while in flight; the sandbox's ID is restored in the answer, see
//! `message::Message::upstream_query`), upstreams are tried in order on timeout or transport
//! error, and when all fail the sandbox gets a SERVFAIL built from its own question (RFC 1035
//! §4.1). Over TCP, messages are cut out of the stream by `framing`.

#![forbid(unsafe_code)]

pub mod filter;
pub mod framing;
pub mod message;
pub mod pins;

/// Length of the DNS header (RFC 1035 §4.1.1).
pub const HEADER_LEN: usize = 12;

/// The message ID.
pub fn id(msg: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*msg.first()?, *msg.get(1)?]))
}

/// Replaces the message ID in place.
pub fn set_id(msg: &mut [u8], id: u16) {
    if msg.len() >= 2 {
        msg[..2].copy_from_slice(&id.to_be_bytes());
    }
}

/// True for a response (QR bit set).
pub fn is_response(msg: &[u8]) -> bool {
    msg.len() >= HEADER_LEN && msg[2] & 0x80 != 0
}

/// True for something shaped like a query: a full header, QR clear, one question or more.
pub fn is_query(msg: &[u8]) -> bool {
    msg.len() >= HEADER_LEN && msg[2] & 0x80 == 0 && u16::from_be_bytes([msg[4], msg[5]]) >= 1
}

/// The end offset of the first question, if it is well formed (RFC 1035 §4.1.2). Names in
/// questions are never compressed in practice; a pointer ends the name as it would.
fn first_question_end(msg: &[u8]) -> Option<usize> {
    let mut i = HEADER_LEN;
    loop {
        let len = usize::from(*msg.get(i)?);
        match len {
            0 => {
                i += 1;
                break;
            }
            l if l & 0xc0 == 0xc0 => {
                i += 2;
                break;
            }
            l if l <= 63 => i += 1 + l,
            _ => return None,
        }
    }
    let end = i + 4; // QTYPE, QCLASS
    (end <= msg.len()).then_some(end)
}

/// A SERVFAIL answer to `query`, keeping its ID, opcode, RD bit and first question.
pub fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    rcode_answer(query, 2)
}

/// An answer to `query` with response code `rcode` and no records.
pub fn rcode_answer(query: &[u8], rcode: u8) -> Option<Vec<u8>> {
    if query.len() < HEADER_LEN {
        return None;
    }
    let end = first_question_end(query);
    let mut out = query[..end.unwrap_or(HEADER_LEN)].to_vec();
    out[2] = 0x80 | (query[2] & 0x79); // QR, opcode and RD kept, AA/TC cleared
    out[3] = 0x80 | (rcode & 0x0f); // RA, rcode
    let qdcount: u16 = if end.is_some() { 1 } else { 0 };
    out[4..6].copy_from_slice(&qdcount.to_be_bytes());
    out[6..12].fill(0);
    Some(out)
}

/// Entry points for the fuzz targets in `fuzz/` (not a stable API): every parser of
/// untrusted bytes this crate owns.
#[doc(hidden)]
pub mod fuzzing {
    /// The DNS message parser and helpers on arbitrary bytes.
    pub fn dns_message(data: &[u8]) {
        let _ = crate::message::Message::parse(data);
        let _ = crate::is_query(data);
        let _ = crate::is_response(data);
        let _ = crate::servfail(data);
        let mut copy = data.to_vec();
        crate::set_id(&mut copy, 1);
    }

    /// DNS-over-TCP framing: the bytes pushed in pieces (cut where the input's first
    /// byte says), then every whole message taken out and parsed.
    pub fn dns_tcp_stream(data: &[u8]) {
        let (step, stream) = match data.split_first() {
            Some((&s, rest)) => (usize::from(s).max(1), rest),
            None => return,
        };
        let mut framing = crate::framing::TcpFraming::default();
        for piece in stream.chunks(step) {
            let mut piece = piece;
            while !piece.is_empty() {
                let took = framing.push(piece);
                piece = &piece[took..];
                while let Some(message) = framing.next_message() {
                    assert!(message.len() <= 65535);
                    let _ = crate::message::Message::parse(&message);
                }
                if took == 0 {
                    break;
                }
            }
            assert!(framing.held() <= crate::framing::TcpFraming::MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for `a.example.test` type A, id 0x1234, RD set.
    fn query() -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in ["a", "example", "test"] {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        q
    }

    #[test]
    fn servfail_keeps_id_and_question() {
        let q = query();
        assert!(is_query(&q));
        let a = servfail(&q).unwrap();
        assert_eq!(id(&a), Some(0x1234));
        assert!(is_response(&a));
        assert_eq!(a[3] & 0x0f, 2);
        assert_eq!(a[2] & 0x01, 1, "RD kept");
        assert_eq!(&a[12..], &q[12..]);
        assert_eq!(&a[4..6], &[0, 1]);
    }

    #[test]
    fn ids_and_malformed_input() {
        let mut q = query();
        set_id(&mut q, 7);
        assert_eq!(id(&q), Some(7));
        assert_eq!(id(&[1]), None);
        assert!(servfail(&[0; 5]).is_none());
        // A question that runs off the end still yields a header-only answer.
        let mut cut = query();
        cut.truncate(15);
        let a = servfail(&cut).unwrap();
        assert_eq!(a.len(), HEADER_LEN);
        assert_eq!(&a[4..6], &[0, 0]);
        assert!(!is_query(&[0u8; 11]));
    }
}
