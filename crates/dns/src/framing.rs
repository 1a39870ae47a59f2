//! DNS over TCP framing (RFC 1035 §4.2.2, RFC 7766 §8): every message follows a two-byte
//! big-endian length. The sandbox's bytes arrive in arbitrary pieces; [`TcpFraming`]
//! collects them and hands out whole messages, holding at most one maximal message and its
//! length ([`TcpFraming::MAX`]) so that a sandbox cannot make it grow.

/// Collects a DNS-over-TCP byte stream and cuts it into messages.
#[derive(Debug, Default)]
pub struct TcpFraming {
    buf: Vec<u8>,
}

impl TcpFraming {
    /// The most held at once: a length and the longest message it can announce.
    pub const MAX: usize = 2 + 65535;

    /// How many more bytes [`TcpFraming::push`] takes now.
    pub fn room(&self) -> usize {
        Self::MAX - self.buf.len()
    }

    /// Takes as much of `bytes` as there is room for; returns how much it took.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.room());
        self.buf.extend_from_slice(&bytes[..n]);
        n
    }

    /// The next whole message (without its length), if one has arrived.
    pub fn next_message(&mut self) -> Option<Vec<u8>> {
        let len = usize::from(u16::from_be_bytes([*self.buf.first()?, *self.buf.get(1)?]));
        let message = self.buf.get(2..2 + len)?.to_vec();
        self.buf.drain(..2 + len);
        Some(message)
    }

    /// Bytes held that are not yet a whole message.
    pub fn held(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The plain definition: the stream is a sequence of (length, message) pairs; the
    /// messages are those whose bytes have all arrived.
    fn whole_messages(stream: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut at = 0;
        while at + 2 <= stream.len() {
            let len = usize::from(stream[at]) << 8 | usize::from(stream[at + 1]);
            if at + 2 + len > stream.len() {
                break;
            }
            out.push(stream[at + 2..at + 2 + len].to_vec());
            at += 2 + len;
        }
        out
    }

    fn framed(messages: &[Vec<u8>]) -> Vec<u8> {
        let mut stream = Vec::new();
        for m in messages {
            stream.extend_from_slice(&(m.len() as u16).to_be_bytes());
            stream.extend_from_slice(m);
        }
        stream
    }

    #[test]
    fn messages_come_out_whole_and_in_order() {
        let mut f = TcpFraming::default();
        assert_eq!(f.push(&[0, 3, b'a']), 3);
        assert_eq!(f.next_message(), None);
        f.push(&[b'b', b'c', 0, 0, 0]);
        assert_eq!(f.next_message(), Some(b"abc".to_vec()));
        assert_eq!(f.next_message(), Some(Vec::new()));
        assert_eq!(f.next_message(), None);
        assert_eq!(f.held(), 1);
        f.push(&[3, b'x', b'y']);
        assert_eq!(f.held(), 4);
    }

    #[test]
    fn it_holds_one_maximal_message_at_most() {
        let mut f = TcpFraming::default();
        let big = vec![0xff; 200_000];
        assert_eq!(f.push(&big), TcpFraming::MAX);
        assert_eq!(f.push(&big), 0);
        assert_eq!(f.next_message().map(|m| m.len()), Some(65535));
        assert_eq!(f.room(), TcpFraming::MAX);
    }

    proptest! {
        /// Pushed in any pieces, the stream yields exactly the plain definition's messages.
        #[test]
        fn pieces_do_not_matter(
            messages in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
            tail in proptest::collection::vec(any::<u8>(), 0..4),
            cuts in proptest::collection::vec(1usize..64, 0..40),
        ) {
            let mut stream = framed(&messages);
            stream.extend_from_slice(&tail);
            let mut f = TcpFraming::default();
            let mut got = Vec::new();
            let (mut at, mut cut) = (0, cuts.iter().cycle());
            // Bounded: every round takes bytes, and no piece holds more than 64 messages.
            for _ in 0..=stream.len() {
                if at == stream.len() {
                    break;
                }
                let step = cut.next().copied().unwrap_or(stream.len());
                let end = (at + step).min(stream.len());
                let took = f.push(&stream[at..end]);
                prop_assert!(took > 0, "no room with {} bytes held", f.held());
                at += took;
                for _ in 0..64 {
                    let Some(m) = f.next_message() else { break };
                    got.push(m);
                }
            }
            prop_assert_eq!(at, stream.len());
            prop_assert_eq!(got, whole_messages(&stream));
        }
    }
}
