//! Published ports: `-p, --publish [HOST_IP:]HOST_PORT:GUEST_PORT[/tcp|/udp]` and
//! `SandboxBuilder::port`. Host sockets are bound here, before the sandbox starts, so a
//! taken port stops moat before the command runs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;

use moat_engine::{Published, PublishedSocket};
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, bind, listen, setsockopt, socket,
    sockopt,
};

/// One `--publish` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishSpec {
    /// The host address and port to listen on.
    pub host: SocketAddr,
    /// The port inside the sandbox.
    pub guest_port: u16,
    /// UDP instead of TCP.
    pub udp: bool,
}

/// Why a publish request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The text is not `[HOST_IP:]HOST_PORT:GUEST_PORT[/tcp|/udp]`.
    #[error(
        "--publish {0:?}: expected [HOST_IP:]HOST_PORT:GUEST_PORT[/tcp|/udp], e.g. 8080:80 or [::1]:5353:53/udp"
    )]
    Syntax(String),
    /// The host address could not be bound.
    #[error("cannot publish {addr}/{proto}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// tcp or udp.
        proto: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

impl std::str::FromStr for PublishSpec {
    type Err = PublishError;
    fn from_str(text: &str) -> Result<PublishSpec, PublishError> {
        let bad = || PublishError::Syntax(text.to_owned());
        let (rest, udp) = match text.rsplit_once('/') {
            Some((r, "tcp")) => (r, false),
            Some((r, "udp")) => (r, true),
            Some(_) => return Err(bad()),
            None => (text, false),
        };
        let (host_part, guest) = rest.rsplit_once(':').ok_or_else(bad)?;
        let guest_port: u16 = guest.parse().map_err(|_| bad())?;
        let host = match host_part.rsplit_once(':') {
            None => SocketAddr::new(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                host_part.parse().map_err(|_| bad())?,
            ),
            Some((ip, port)) => {
                let ip = ip
                    .strip_prefix('[')
                    .and_then(|i| i.strip_suffix(']'))
                    .unwrap_or(ip);
                SocketAddr::new(
                    ip.parse().map_err(|_| bad())?,
                    port.parse().map_err(|_| bad())?,
                )
            }
        };
        // Port 0 would be a port nobody knows (host) or none at all (guest).
        if guest_port == 0 || host.port() == 0 {
            return Err(bad());
        }
        Ok(PublishSpec {
            host,
            guest_port,
            udp,
        })
    }
}

/// Listen backlog of published TCP ports: deep, so bursts of connects never stall
/// (shared/DESIGN.md: a 128-deep listener stalls connects for a second under load).
const BACKLOG: i32 = 4096;

/// Binds every published port.
pub fn bind_all(specs: &[PublishSpec]) -> Result<Vec<Published>, PublishError> {
    specs.iter().map(bind_one).collect()
}

fn bind_one(spec: &PublishSpec) -> Result<Published, PublishError> {
    let proto = if spec.udp { "udp" } else { "tcp" };
    let err = |e: nix::errno::Errno| PublishError::Bind {
        addr: spec.host,
        proto,
        source: e.into(),
    };
    let family = if spec.host.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let kind = if spec.udp {
        SockType::Datagram
    } else {
        SockType::Stream
    };
    let fd: OwnedFd = socket(family, kind, SockFlag::SOCK_CLOEXEC, None).map_err(err)?;
    if !spec.udp {
        setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(err)?;
    }
    if spec.host.is_ipv6() {
        setsockopt(&fd, sockopt::Ipv6V6Only, &true).map_err(err)?;
    }
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(spec.host),
    )
    .map_err(err)?;
    let socket = if spec.udp {
        PublishedSocket::Udp(std::net::UdpSocket::from(fd))
    } else {
        listen(&fd, Backlog::new(BACKLOG).unwrap_or(Backlog::MAXCONN)).map_err(err)?;
        PublishedSocket::Tcp(std::net::TcpListener::from(fd))
    };
    Ok(Published {
        socket,
        guest_port: spec.guest_port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_syntax() {
        let p: PublishSpec = "18080:8000".parse().unwrap();
        assert_eq!(
            p,
            PublishSpec {
                host: "127.0.0.1:18080".parse().unwrap(),
                guest_port: 8000,
                udp: false
            }
        );
        let p: PublishSpec = "15353:5353/udp".parse().unwrap();
        assert!(p.udp);
        let p: PublishSpec = "0.0.0.0:80:8080/tcp".parse().unwrap();
        assert_eq!(p.host, "0.0.0.0:80".parse::<SocketAddr>().unwrap());
        let p: PublishSpec = "[::1]:8080:80".parse().unwrap();
        assert_eq!(p.host, "[::1]:8080".parse::<SocketAddr>().unwrap());
        for bad in [
            "",
            "80",
            "a:b",
            "1:2:3:4",
            "8080:80/sctp",
            "8080:0",
            "0:80",
            "127.0.0.1:0:80",
            "[::1:8080:80",
            "70000:80",
        ] {
            assert!(bad.parse::<PublishSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_taken_port_is_an_error_naming_the_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let spec = PublishSpec {
            host: addr,
            guest_port: 80,
            udp: false,
        };
        let e = bind_all(&[spec]).unwrap_err().to_string();
        assert!(e.contains(&addr.to_string()) && e.contains("tcp"), "{e}");
    }
}
