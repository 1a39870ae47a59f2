//! moat's engine: the user-space TCP/IP stack behind the sandbox's interface. Every frame
//! the sandbox sends ends here, is judged against the policy, and only then leaves through
//! a host socket. See `engine/mod.rs` for the theory of operation and the layout.
#![forbid(unsafe_code)]

mod audit;
mod device;
mod dns;
mod engine;
mod http;
mod icmp;
mod offload;
mod secrets;
mod tls;
mod wire;

pub use audit::{AuditLog, Notices, rfc3339};
pub use device::{FrameDevice, MemoryDevice, SharedMemoryDevice, TapDevice};
pub use engine::{
    Counters, DEFAULT_MAX_BUFFER_MEMORY, DEFAULT_MAX_CONNECTIONS, DEFAULT_TLS_PORTS, DenyMode,
    EngineConfig, EngineHandle, LinkConfig, MAX_MTU, MAX_PUBLISHED, MIN_BUFFER_MEMORY, MIN_MTU,
    Published, PublishedSocket, Terminate, TlsConfig, spawn,
};
pub use offload::{TcpOffload, VNET_HDR_LEN};
pub use secrets::{HostPattern, Secret, SecretError, check_distinct as check_secrets};
pub use tls::ca::{CaError, FRESH_CA_DAYS, InterceptCa, LeafName, STABLE_CA_DAYS};

/// Entry points for the fuzz targets in `fuzz/` (not a stable API): every parser of bytes
/// from the sandbox or the network.
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

    /// Classifies a frame as the engine does before the stack sees it, and prepares it
    /// for an offloading device.
    pub fn frame(data: &[u8]) {
        let _ = crate::wire::classify(data);
        let mut copy = data.to_vec();
        let _ = crate::offload::prepare_tcp(&mut copy, Some(1460));
    }

    /// The DNS message parser and helpers on arbitrary bytes.
    pub fn dns_message(data: &[u8]) {
        let _ = crate::dns::message::Message::parse(data);
        let _ = crate::dns::is_query(data);
        let _ = crate::dns::is_response(data);
        let _ = crate::dns::servfail(data);
        let mut copy = data.to_vec();
        crate::dns::set_id(&mut copy, 1);
    }

    /// DNS-over-TCP framing: the bytes pushed in pieces (cut where the input's first
    /// byte says), then every whole message taken out and parsed.
    pub fn dns_tcp_stream(data: &[u8]) {
        let (step, stream) = match data.split_first() {
            Some((&s, rest)) => (usize::from(s).max(1), rest),
            None => return,
        };
        let mut framing = crate::dns::framing::TcpFraming::default();
        for piece in stream.chunks(step) {
            let mut piece = piece;
            while !piece.is_empty() {
                let took = framing.push(piece);
                piece = &piece[took..];
                while let Some(message) = framing.next_message() {
                    assert!(message.len() <= 65535);
                    let _ = crate::dns::message::Message::parse(&message);
                }
                if took == 0 {
                    break;
                }
            }
            assert!(framing.held() <= crate::dns::framing::TcpFraming::MAX);
        }
    }

    /// The server name in a client's first bytes (one or several TLS records).
    pub fn client_hello(data: &[u8]) {
        let _ = crate::tls::sni::parse(data);
    }

    /// An echo reply as read from a ping or raw socket.
    pub fn echo_reply(data: &[u8]) {
        for v6 in [false, true] {
            for kind in [crate::icmp::EchoKind::Ping, crate::icmp::EchoKind::Raw] {
                let _ = crate::icmp::reply(data, v6, kind);
            }
        }
    }
}
