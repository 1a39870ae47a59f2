//! HTTP as moat reads it inside intercepted TLS: the authority every request names, for
//! HTTP/1.1 (`h1.rs`: request framing) and HTTP/2 (`h2.rs`: frames and HPACK); and moat's
//! own `403` to a refused request (`refusal.rs`, deny mode `explain`).
//!
//! Both readers take the sandbox's plaintext in whatever pieces it arrives and pass on
//! what may go to the server; a request for a host other than the one the TLS handshake
//! named (domain fronting) stops the connection with a [`Refused`].
//!
//! On a connection that swaps secrets the swap's request side (`h1_swap.rs`; `h2_swap.rs`
//! with `h2_block.rs`) reads instead, by the readers' own rules (`h1::check_request` and
//! framing; `h2::in_place` and `h2::BlockCheck`): a request is read once, and the request
//! the check passed is the request rewritten.

use std::net::IpAddr;

use moat_policy::{DomainName, canonical_addr};

pub mod h1;
pub mod h1_swap;
pub mod h2;
mod h2_block;
pub mod h2_swap;
pub mod refusal;

/// A reader of the sandbox's requests (HTTP/1.1 or HTTP/2).
pub trait RequestReader {
    /// Consumes some of `input` (at least one byte), appending to `out` what may go to the
    /// server; returns the rest.
    fn step<'a>(&mut self, input: &'a [u8], out: &mut Vec<u8>) -> Result<&'a [u8], Refused>;

    /// Takes the next `input`; appends to `out` what may go to the server. After an error
    /// nothing more may pass.
    fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), Refused> {
        let mut rest = input;
        while !rest.is_empty() {
            rest = self.step(rest, out)?;
        }
        Ok(())
    }
}

/// The authority every request must name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authority {
    /// The TLS server name.
    Name(DomainName),
    /// The address connected to (no server name was sent).
    Ip(IpAddr),
}

impl std::fmt::Display for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Authority::Name(n) => f.write_str(n.as_str()),
            Authority::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// It names another host than the handshake did.
    Fronting {
        /// The host it named.
        host: String,
        /// The one the handshake named.
        expected: String,
    },
    /// It names no host, or several.
    Host(&'static str),
    /// A CONNECT request.
    Connect,
    /// Not HTTP/1.1 or HTTP/2 as their RFCs frame them.
    Malformed(&'static str),
    /// A request's headers are larger than moat holds (64 KiB for HTTP/1.1, 256 KiB of
    /// HTTP/2 header block).
    TooLarge,
    /// It carries the placeholder of secret `.0` (by index), which this host may not
    /// receive (`secrets.rs`).
    Secret(usize),
    /// What waits for a receiver's HTTP/2 window is more than the buffer budget lets the
    /// connection hold (`h2_swap.rs`).
    Budget,
    /// A server's answer on a connection that carries a secret is in a coding moat cannot
    /// read for the value (moat asked for `identity`; `h1_swap.rs`, `h2_swap.rs`).
    Coded(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Fronting { host, expected } => write!(
                f,
                "the request is for {host}, but the TLS server name is {expected} (domain fronting)"
            ),
            Refused::Host(why) => write!(f, "the request {why}"),
            Refused::Connect => f.write_str("CONNECT is not relayed on an intercepted connection"),
            Refused::Malformed(why) => write!(f, "malformed request: {why}"),
            Refused::TooLarge => f.write_str("the request's headers are larger than moat holds"),
            Refused::Secret(_) => f.write_str("the request carries a secret's placeholder"),
            Refused::Budget => f.write_str(
                "HTTP/2 DATA waiting for the receiver's window is more than moat's buffer budget holds (--max-buffer-memory)",
            ),
            Refused::Coded(coding) => write!(
                f,
                "the answer is in coding {coding:?}, which moat cannot search for a secret's value (it asked for identity)"
            ),
        }
    }
}

impl Authority {
    /// Whether `authority` (`host[:port]`) names this host.
    pub fn check(&self, authority: &str) -> Result<(), Refused> {
        let host = host_of(authority.trim());
        let same = match self {
            Authority::Name(name) => host
                .trim_end_matches('.')
                .eq_ignore_ascii_case(name.as_str()),
            Authority::Ip(ip) => host
                .parse::<IpAddr>()
                .is_ok_and(|h| canonical_addr(h) == canonical_addr(*ip)),
        };
        if same {
            Ok(())
        } else {
            Err(Refused::Fronting {
                host: host.to_owned(),
                expected: self.to_string(),
            })
        }
    }
}

/// The host of `host[:port]` or `[v6][:port]`.
pub fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        // An IPv6 literal, then nothing or a port: anything else is not a host, and the
        // whole is returned (to match nothing).
        return match rest.split_once(']') {
            Some((host, "")) => host,
            Some((host, port))
                if port
                    .strip_prefix(':')
                    .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit())) =>
            {
                host
            }
            _ => authority,
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

    use super::testing::api;
    use super::*;

    #[test]
    fn an_ipv6_literal_is_followed_by_a_port_or_nothing() {
        let ip = Authority::Ip("2001:db8::1".parse().unwrap());
        for same in ["[2001:db8::1]", "[2001:db8::1]:443"] {
            assert_eq!(ip.check(same), Ok(()), "{same}");
        }
        let v4 = Authority::Ip("203.0.113.10".parse().unwrap());
        for other in [
            "[2001:db8::1]x",
            "[2001:db8::1]evil.example.com",
            "[203.0.113.10]x",
        ] {
            assert!(
                ip.check(other).is_err() && v4.check(other).is_err(),
                "{other}"
            );
        }
    }

    #[test]
    fn an_authority_is_the_server_name_exactly() {
        for same in [
            "api.example.test",
            "API.example.test:8443",
            "api.example.test.",
        ] {
            assert_eq!(api().check(same), Ok(()), "{same}");
        }
        // A name that ends with it, or that it ends with, is another host.
        for other in [
            "evilapi.example.test",
            "x.api.example.test",
            "example.test",
            "api.example.test.evil",
        ] {
            assert!(
                matches!(api().check(other), Err(Refused::Fronting { .. })),
                "{other}"
            );
        }
        let ip = Authority::Ip("203.0.113.10".parse().unwrap());
        assert_eq!(ip.check("[::ffff:203.0.113.10]:443"), Ok(()));
        assert!(ip.check("203.0.113.100").is_err());
    }
}

/// What the readers' tests share.
#[cfg(test)]
pub mod testing {
    #![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

    use super::{Authority, Refused};

    /// The swap tests' placeholder.
    pub const P: &str = "moat_0123456789abcdef0123456789abcdef";
    /// The swap tests' value (longer than the placeholder).
    pub const V: &str = "sk-live-VALUE-which-is-longer-than-its-placeholder-0001";

    /// One secret, API_KEY, with [`P`] and [`V`], allowed to api.example.test.
    pub fn secrets() -> Vec<crate::secrets::Secret> {
        vec![
            crate::secrets::Secret::new(
                "API_KEY",
                zeroize::Zeroizing::new(V.as_bytes().to_vec()),
                Some(P.to_owned()),
                &["api.example.test".into()],
                false,
            )
            .unwrap(),
        ]
    }

    /// The host the test requests' handshake named.
    pub fn api() -> Authority {
        Authority::Name(moat_policy::DomainName::new("api.example.test").unwrap())
    }

    /// Feeds `input` to `push` cut at `cuts` (any order, any values), stopping at the first
    /// refusal: what passed, and how it ended.
    pub fn in_pieces(
        mut push: impl FnMut(&[u8], &mut Vec<u8>) -> Result<(), Refused>,
        input: &[u8],
        cuts: Vec<usize>,
    ) -> (Vec<u8>, Result<(), Refused>) {
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % input.len().max(1)).collect();
        cuts.sort_unstable();
        let (mut out, mut result, mut prev) = (Vec::new(), Ok(()), 0);
        for cut in cuts.into_iter().chain([input.len()]) {
            if result.is_err() {
                break;
            }
            result = push(&input[prev..cut.max(prev)], &mut out);
            prev = cut.max(prev);
        }
        (out, result)
    }
}
