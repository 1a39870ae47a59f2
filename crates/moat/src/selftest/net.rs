//! The caller's half of the network probes, all in one sandbox under the default policy,
//! public_only, with two rules before it for the split ClientHello (see `mod.rs`). Every
//! target is on this machine or refused by moat before it opens a socket; the audit
//! events of the run show each attempt was judged (the control that it reached moat).

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moat_policy::{
    Destination, IpNetwork, NetworkPolicy, PortRange, Protocol, Rule, canonical_addr,
};

use super::dns::{PUBLIC_ANSWER, PUBLIC_NAME, REBIND_NAME, Responder};
use super::{Finding, Jail, Said, Verdict, judge};
use crate::demo::Captured;
use crate::{AuditSink, DenyMode, Sandbox};

/// The names the split ClientHellos carry: one a rule denies, one it does not.
const BLOCKED_NAME: &str = "blocked.moat-selftest.test";
const FINE_NAME: &str = "fine.moat-selftest.test";

/// Where the metadata services of clouds answer (the `Metadata` group).
const METADATA: [&str; 3] = [
    "169.254.169.254:80",
    "[fd00:ec2::254]:80",
    "168.63.129.16:80",
];

/// Private and special-purpose addresses, and IPv6 forms that carry a private IPv4 one
/// (mapped, NAT64, 6to4, Teredo: 10.0.0.1 each).
const INWARD: [&str; 11] = [
    "10.0.0.1:80",
    "172.16.0.1:80",
    "192.168.0.1:80",
    "100.64.0.1:80",
    "198.18.0.1:80",
    "240.0.0.1:80",
    "[fc00::1]:80",
    "[::ffff:10.0.0.1]:80",
    "[64:ff9b::a00:1]:80",
    "[2002:a00:1::1]:80",
    "[2001::f5ff:fffe]:80",
];

const NAMES: [&str; 6] = [
    "host-addresses",
    "host-addresses-udp",
    "metadata",
    "private-ranges",
    "dns-rebinding",
    "split-client-hello",
];

/// The audit events captured so far.
fn events(log: &Captured) -> Vec<serde_json::Value> {
    let bytes = log.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A TCP listener of selftest's that counts connections and keeps what arrives, for a
/// bounded time.
struct Listener {
    addr: SocketAddr,
    received: Arc<Mutex<(usize, Vec<u8>)>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Listener {
    fn start(at: SocketAddr) -> std::io::Result<Listener> {
        use std::sync::atomic::Ordering;
        let l = TcpListener::bind(at)?;
        l.set_nonblocking(true)?;
        let addr = l.local_addr()?;
        let received = Arc::new(Mutex::new((0, Vec::new())));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (r, s) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                let Ok((mut c, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                r.lock().unwrap_or_else(|e| e.into_inner()).0 += 1;
                let _ = c.set_nonblocking(false);
                let _ = c.set_read_timeout(Some(Duration::from_millis(500)));
                let mut buf = [0u8; 4096];
                // What the first half second brings (a ClientHello), at most 64 KiB.
                for _ in 0..16 {
                    match c.read(&mut buf) {
                        Ok(n) if n > 0 => r
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .1
                            .extend_from_slice(&buf[..n]),
                        _ => break,
                    }
                }
            }
        });
        Ok(Listener {
            addr,
            received,
            stop,
        })
    }

    fn connections(&self) -> usize {
        self.received.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    fn got(&self, needle: &str) -> bool {
        let r = self.received.lock().unwrap_or_else(|e| e.into_inner());
        r.1.windows(needle.len()).any(|w| w == needle.as_bytes())
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The host's own addresses beside loopback (IPv6 link-local aside: it needs a scope).
fn own_addresses() -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            let Some(sa) = a.address else { continue };
            let ip = if let Some(v4) = sa.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else if let Some(v6) = sa.as_sockaddr_in6() {
                IpAddr::V6(v6.ip())
            } else {
                continue;
            };
            let link_local = matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
            if !ip.is_loopback() && !link_local && !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    out.truncate(16);
    out
}

/// The deny and allow `connect` events whose destination is `target`'s address.
fn judged(events: &[serde_json::Value], target: &str) -> (usize, usize) {
    let Ok(sa) = target.parse::<SocketAddr>() else {
        return (0, 0);
    };
    let forms = [sa.ip().to_string(), canonical_addr(sa.ip()).to_string()];
    let mut counts = (0, 0);
    for e in events.iter().filter(|e| e["event"] == "connect") {
        if forms.iter().any(|f| e["dst"] == f.as_str()) && e["port"] == sa.port() {
            if e["decision"] == "deny" {
                counts.0 += 1;
            } else {
                counts.1 += 1;
            }
        }
    }
    counts
}

/// Attempts at addresses moat must refuse before dialling: held when each was judged and
/// denied, and none connected.
fn refused_targets(
    name: &'static str,
    said: &Said,
    events: &[serde_json::Value],
    targets: &[&str],
) -> Finding {
    let allowed: Vec<&str> = targets
        .iter()
        .copied()
        .filter(|t| judged(events, t).1 > 0)
        .collect();
    if !allowed.is_empty() {
        return Finding::new(
            name,
            Verdict::Leak,
            format!("moat allowed {}", allowed.join(", ")),
        );
    }
    let unjudged: Vec<&str> = targets
        .iter()
        .copied()
        .filter(|t| judged(events, t).0 == 0)
        .collect();
    if !unjudged.is_empty() && said.shut() {
        return Finding::new(
            name,
            Verdict::Failed,
            format!(
                "no deny event for {} (the attempt did not reach moat?)",
                unjudged.join(", ")
            ),
        );
    }
    let mut found = judge(name, None, said, None);
    if found.verdict == Verdict::Held {
        found.detail = format!("TCP to {}: each denied by the policy", targets.join(" "));
    }
    found
}

/// UDP to the host's own addresses: nothing arrived at selftest's sockets, each address was
/// judged and denied, and the same sockets take a datagram sent on the host (control).
fn udp_to_the_host(
    said: &Said,
    events: &[serde_json::Value],
    socks: &[(String, UdpSocket)],
) -> Finding {
    const NAME: &str = "host-addresses-udp";
    let mut buf = [0u8; 64];
    let arrived: Vec<&str> = socks
        .iter()
        .filter(|(_, s)| s.recv(&mut buf).is_ok())
        .map(|(t, _)| t.as_str())
        .collect();
    if !arrived.is_empty() {
        return Finding::new(
            NAME,
            Verdict::Leak,
            format!(
                "datagrams reached selftest's sockets at {}",
                arrived.join(", ")
            ),
        );
    }
    let deaf: Vec<&str> = socks
        .iter()
        .filter(|(_, s)| {
            let Ok(to) = s.local_addr() else { return true };
            let from = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
            let sent = UdpSocket::bind(from)
                .and_then(|c| c.send_to(b"control", to))
                .is_ok();
            std::thread::sleep(Duration::from_millis(5));
            !(sent && s.recv(&mut buf).is_ok())
        })
        .map(|(t, _)| t.as_str())
        .collect();
    if !deaf.is_empty() {
        return Finding::new(
            NAME,
            Verdict::Failed,
            format!(
                "the control failed: nothing arrives on the host at {}",
                deaf.join(", ")
            ),
        );
    }
    let targets: Vec<&str> = socks.iter().map(|(t, _)| t.as_str()).collect();
    let mut found = refused_targets(NAME, said, events, &targets);
    if found.verdict == Verdict::Held {
        found.detail = found.detail.replacen("TCP", "UDP", 1);
    }
    found
}

/// Why this user cannot have a sandbox with a network here, if so: moat needs a TAP,
/// made through /dev/net/tun, which must be readable and writable by the caller (opening
/// it creates nothing).
pub(crate) fn no_tap() -> Option<String> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
    {
        Ok(_) => None,
        Err(e) => Some(format!(
            "this user cannot open /dev/net/tun ({e}), so moat runs here only with --policy none (other policies fail to start)"
        )),
    }
}

/// What selftest opens on the host for the attacker to aim at: a TCP listener and a UDP
/// socket on each of the host's own addresses and on its loopback, each with the address
/// the sandbox uses for it (the gateway stands for the host's loopback).
struct Targets {
    tcp: Vec<(String, Listener)>,
    udp: Vec<(String, UdpSocket)>,
}

impl Targets {
    fn open(link: &moat_engine::LinkConfig) -> Targets {
        let mut t = Targets {
            tcp: Vec::new(),
            udp: Vec::new(),
        };
        let places = own_addresses().into_iter().map(|ip| (ip, ip)).chain([
            (IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V4(link.gateway_v4)),
            (IpAddr::V6(Ipv6Addr::LOCALHOST), IpAddr::V6(link.gateway_v6)),
        ]);
        for (ip, seen_as) in places {
            if let Ok(l) = Listener::start(SocketAddr::new(ip, 0)) {
                let port = l.addr.port();
                t.tcp.push((SocketAddr::new(seen_as, port).to_string(), l));
            }
            let bound = UdpSocket::bind(SocketAddr::new(ip, 0))
                .and_then(|s| s.set_nonblocking(true).map(|()| s))
                .and_then(|s| s.local_addr().map(|a| (s, a.port())));
            if let Ok((sock, port)) = bound {
                t.udp
                    .push((SocketAddr::new(seen_as, port).to_string(), sock));
            }
        }
        t
    }
}

/// The names of `list`'s targets.
fn shown<T>(list: &[(String, T)]) -> Vec<&str> {
    list.iter().map(|(t, _)| t.as_str()).collect()
}

/// The default policy with, first, a deny rule for [`BLOCKED_NAME`] and an allow rule for
/// TCP to the host's loopback at `port` (selftest's listener for the split hello).
fn policy(port: u16) -> Result<NetworkPolicy, String> {
    let mut policy = NetworkPolicy::public_only();
    let loopback =
        IpNetwork::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 32).map_err(|e| e.to_string())?;
    let mut to_listener = Rule::allow_outbound(Destination::Cidr(loopback));
    to_listener.ports = Some(PortRange::single(port));
    to_listener.protocol = Some(Protocol::Tcp);
    policy.rules.insert(0, to_listener);
    policy.rules.insert(
        0,
        Rule::deny_outbound(Destination::Domain(BLOCKED_NAME.into())),
    );
    Ok(policy)
}

/// Runs the network probes.
pub(crate) fn probes() -> Vec<Finding> {
    let all = |verdict: Verdict, why: String| -> Vec<Finding> {
        NAMES
            .iter()
            .map(|n| Finding::new(n, verdict, why.clone()))
            .collect()
    };
    if let Some(why) = no_tap() {
        return all(Verdict::Skipped, why);
    }
    let link = moat_engine::LinkConfig::default();
    let targets = Targets::open(&link);
    let hello_listener = match Listener::start(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0))
    {
        Ok(l) => l,
        Err(e) => return all(Verdict::Failed, format!("cannot listen on 127.0.0.1: {e}")),
    };
    let responder = match Responder::start() {
        Ok(r) => r,
        Err(e) => {
            return all(
                Verdict::Failed,
                format!("cannot start a DNS server on 127.0.0.1: {e}"),
            );
        }
    };
    let port = hello_listener.addr.port();
    let policy = match policy(port) {
        Ok(p) => p,
        Err(e) => return all(Verdict::Failed, e),
    };
    let log = Captured::default();
    let builder = Sandbox::builder("selftest-net")
        .network(|n| {
            n.policy(policy)
                .deny_mode(DenyMode::Reject)
                .dns_server_addr(responder.addr)
                .tls(|t| t.intercepted_ports(vec![port]))
        })
        .audit(AuditSink::Writer(Box::new(log.clone())));
    let mut jail = match Jail::start(builder) {
        Ok(j) => j,
        Err(e) => return all(Verdict::Failed, format!("the sandbox did not start: {e}")),
    };
    let (tcp, udp) = (shown(&targets.tcp), shown(&targets.udp));
    let mut attack = |verb: &str, list: &[&str]| {
        let args: Vec<&str> = std::iter::once(verb).chain(list.iter().copied()).collect();
        jail.attack(&args, None)
    };
    let at_host = attack("connect", &tcp);
    let udp_at_host = attack("udp", &udp);
    let at_metadata = attack("connect", &METADATA);
    let at_inward = attack("connect", &INWARD);
    let lookups = attack("dns", &[REBIND_NAME, PUBLIC_NAME]);
    let gateway_port = SocketAddr::new(IpAddr::V4(link.gateway_v4), port).to_string();
    let blocked = attack("hello", &[&gateway_port, BLOCKED_NAME]);
    let fine = attack("hello", &[&gateway_port, FINE_NAME]);
    jail.stop();
    let events = events(&log);
    let asked = responder
        .rebind_asked
        .load(std::sync::atomic::Ordering::Relaxed);
    vec![
        tcp_to_the_host(&at_host, &events, &targets.tcp),
        udp_to_the_host(&udp_at_host, &events, &targets.udp),
        refused_targets("metadata", &at_metadata, &events, &METADATA),
        refused_targets("private-ranges", &at_inward, &events, &INWARD),
        rebinding(&lookups, asked),
        split_hello(&hello_listener, &blocked, &fine),
    ]
}

/// TCP to the host's own addresses: nothing reached selftest's listeners, each address
/// was judged and denied, and the listeners answer on the host (control).
fn tcp_to_the_host(
    said: &Said,
    events: &[serde_json::Value],
    listeners: &[(String, Listener)],
) -> Finding {
    const NAME: &str = "host-addresses";
    let reached: Vec<&str> = listeners
        .iter()
        .filter(|(_, l)| l.connections() > 0)
        .map(|(t, _)| t.as_str())
        .collect();
    let seen = (!reached.is_empty()).then(|| {
        format!(
            "selftest's listeners were reached at {}",
            reached.join(", ")
        )
    });
    let found = judge(NAME, None, said, seen);
    if found.verdict != Verdict::Held {
        return found;
    }
    let deaf: Vec<&str> = listeners
        .iter()
        .filter(|(_, l)| TcpStream::connect_timeout(&l.addr, Duration::from_millis(500)).is_err())
        .map(|(t, _)| t.as_str())
        .collect();
    if !deaf.is_empty() {
        let why = format!(
            "the control failed: no answer on the host at {}",
            deaf.join(", ")
        );
        return Finding::new(NAME, Verdict::Failed, why);
    }
    let mut found = refused_targets(NAME, said, events, &shown(listeners));
    if found.verdict == Verdict::Held {
        found
            .detail
            .push_str("; selftest's listeners there saw nothing");
    }
    found
}

/// Rebinding: moat asked selftest's server (control), passed the public answer (control)
/// and removed every inward one.
fn rebinding(lookups: &Said, asked: usize) -> Finding {
    const NAME: &str = "dns-rebinding";
    let mut found = judge(NAME, None, lookups, None);
    if found.verdict != Verdict::Held {
        return found;
    }
    if asked == 0 || !lookups.text.contains(&PUBLIC_ANSWER.to_string()) {
        let why = format!(
            "the control failed: upstream asked {asked} times; answers: {}",
            lookups.text.replace('\n', "; ")
        );
        return Finding::new(NAME, Verdict::Failed, why);
    }
    found.detail = format!(
        "answers of an upstream pointing inward (asked {asked} times) never reach the sandbox"
    );
    found
}

/// The split ClientHello: the blocked name never reached the listener; the allowed one did
/// (moat's own hello upstream names it: TLS is intercepted on that port).
fn split_hello(listener: &Listener, blocked: &Said, fine: &Said) -> Finding {
    const NAME: &str = "split-client-hello";
    if listener.got(BLOCKED_NAME) {
        let why = format!("a connection naming {BLOCKED_NAME} reached selftest's listener");
        Finding::new(NAME, Verdict::Leak, why)
    } else if !blocked.shut() || !fine.shut() {
        let why = format!(
            "the attacker could not run: {} / {}",
            blocked.summary(),
            fine.summary()
        );
        Finding::new(NAME, Verdict::Failed, why)
    } else if !listener.got(FINE_NAME) {
        let why = format!(
            "the control failed: a split hello naming {FINE_NAME} did not arrive ({})",
            fine.text.trim()
        );
        Finding::new(NAME, Verdict::Failed, why)
    } else {
        let tried = "a ClientHello cut across three records cannot carry a name a rule denies";
        Finding::new(NAME, Verdict::Held, tried)
    }
}
