//! moat's engine: the user-space TCP/IP stack behind the sandbox's interface. Every frame
//! the sandbox sends ends here, is judged against the policy, and only then leaves through
//! a host socket. See `engine/mod.rs` for the theory of operation and the layout.
#![forbid(unsafe_code)]

mod audit;
mod device;
mod dns;
mod engine;
mod evidence;
mod http;
mod icmp;
mod offload;
mod secrets;
pub mod summary;
mod tls;
mod wire;

pub use audit::{
    AuditLog, AuditOptions, AuditOut, AuditStats, DEFAULT_AUDIT_MAX_SIZE, FOLD_WINDOW, MAX_FOLDS,
    MIN_AUDIT_MAX_SIZE, Notices, rfc3339,
};
pub use device::{FrameDevice, MemoryDevice, SharedMemoryDevice, TapDevice};
pub use engine::{
    Counters, DEFAULT_BUSY_POLL, DEFAULT_MAX_BUFFER_MEMORY, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_TLS_PORTS, DenyMode, EngineConfig, EngineHandle, LinkConfig, MAX_BUSY_POLL, MAX_MTU,
    MAX_PUBLISHED, MIN_BUFFER_MEMORY, MIN_MTU, Published, PublishedSocket, Terminate, TlsConfig,
    spawn,
};
pub use offload::{MAX_UDP_SEGMENTS, TcpOffload, UdpSegments, VNET_HDR_LEN};
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

    /// Secret substitution and redaction inside HTTP (`http/h1_swap.rs`,
    /// `http/h2_swap.rs`): `data[0]` picks HTTP/1.1 or HTTP/2 and the direction, `data[1]`
    /// where the rest is cut in two; one secret is swapped, another watched for.
    pub fn secret_swap(data: &[u8]) {
        use crate::http::{h1_swap, h2_swap};
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
            let mut exchange = h1_swap::Exchange::default();
            if m.push(&mut swap, &mut exchange, first, &mut out).is_ok()
                && m.push(&mut swap, &mut exchange, second, &mut out).is_ok()
            {
                m.finish(&mut swap, &mut out);
            }
        } else {
            let mut c = h2_swap::Connection::new().scanning(scan);
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

    /// An audit log read back (`moat audit FILE`, a summary, a learned policy): each line
    /// that is a JSON object is taken as an event, whatever its fields hold.
    pub fn audit_summary(data: &[u8]) {
        let mut summary = crate::summary::Summary::new();
        for line in data.split(|&b| b == b'\n') {
            if let Ok(serde_json::Value::Object(event)) = serde_json::from_slice(line) {
                summary.add(&event);
            }
        }
        for run in summary.runs() {
            let _ = run.render();
            let _ = run.to_json();
            let _ = run.suggestions();
            let _ = run.learned_policy("fuzz");
        }
    }

    /// Classifies a frame as the engine does before the stack sees it, and prepares it
    /// for an offloading device (as a TCP segment, and as a run of UDP datagrams).
    pub fn frame(data: &[u8]) {
        let _ = crate::wire::classify(data);
        let mut copy = data.to_vec();
        let _ = crate::offload::prepare_tcp(&mut copy, Some(1460));
        let mut copy = data.to_vec();
        let _ = crate::offload::prepare_udp_segments(&mut copy, 1000);
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

    /// An echo reply as read from a ping or raw socket.
    pub fn echo_reply(data: &[u8]) {
        for v6 in [false, true] {
            for kind in [crate::icmp::EchoKind::Ping, crate::icmp::EchoKind::Raw] {
                let _ = crate::icmp::reply(data, v6, kind);
            }
        }
    }
}
