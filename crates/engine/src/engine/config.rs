//! What an engine is given ([`EngineConfig`], [`LinkConfig`], [`DenyMode`]) and what it
//! gives back ([`Counters`]), with moat's defaults, each defined here once.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use moat_inspect::secrets::Secret;
use moat_inspect::tls::ca::InterceptCa;
use moat_policy::{CompiledPolicy, DomainName, DomainSuffix, ViolationAction};
use moat_record::Terminate;
use moat_record::audit::{AuditLog, Notices};
use rustls::pki_types::CertificateDer;

/// How denied flows are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DenyMode {
    /// Drop silently (the specification's meaning of Deny).
    #[default]
    Drop,
    /// Answer TCP with RST and UDP with ICMP administratively prohibited.
    Reject,
    /// Answer with a reason a program can read: a refused TCP connection is accepted by
    /// moat itself (nothing is dialed) and, when its first bytes are an HTTP/1 request
    /// (inside TLS with moat's leaf on an intercepted port), answered `403 Forbidden` with
    /// one line naming the rule and the flag that would allow it; anything else is reset.
    /// A refused lookup's NXDOMAIN carries an Extended DNS Error (RFC 8914) with the same
    /// line. UDP and ICMP as [`DenyMode::Reject`]. The audit log is the same as under
    /// `Reject`.
    Explain,
}

impl DenyMode {
    /// Whether a denied flow is answered rather than dropped in silence.
    pub fn answers(self) -> bool {
        self != DenyMode::Drop
    }
}

/// The link between the sandbox and the engine.
#[derive(Debug, Clone, Copy)]
pub struct LinkConfig {
    /// The gateway's MAC (moat).
    pub gateway_mac: [u8; 6],
    /// The gateway's IPv4 address.
    pub gateway_v4: Ipv4Addr,
    /// The sandbox's IPv4 address.
    pub guest_v4: Ipv4Addr,
    /// IPv4 prefix length.
    pub prefix_v4: u8,
    /// The gateway's IPv6 address.
    pub gateway_v6: Ipv6Addr,
    /// The sandbox's IPv6 address.
    pub guest_v6: Ipv6Addr,
    /// IPv6 prefix length.
    pub prefix_v6: u8,
    /// The link MTU (IP packet size).
    pub mtu: usize,
}

/// The smallest link MTU: IPv6 needs 1280 (RFC 8200 §5).
pub const MIN_MTU: usize = 1280;
/// The largest link MTU: the TAP takes at most 65521.
pub const MAX_MTU: usize = 65520;

impl LinkConfig {
    /// Sets the link MTU, when it lies within [`MIN_MTU`]..=[`MAX_MTU`].
    pub fn set_mtu(&mut self, mtu: usize) -> Result<(), String> {
        if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
            return Err(format!("expected {MIN_MTU} to {MAX_MTU}"));
        }
        self.mtu = mtu;
        Ok(())
    }
}

impl Default for LinkConfig {
    fn default() -> LinkConfig {
        LinkConfig {
            gateway_mac: [0x02, 0x6d, 0x6f, 0x61, 0x74, 0x01],
            gateway_v4: Ipv4Addr::new(10, 0, 2, 2),
            guest_v4: Ipv4Addr::new(10, 0, 2, 100),
            prefix_v4: 24,
            gateway_v6: Ipv6Addr::new(0xfd00, 0x6d6f, 0x6174, 0, 0, 0, 0, 2),
            guest_v6: Ipv6Addr::new(0xfd00, 0x6d6f, 0x6174, 0, 0, 0, 0, 0x100),
            prefix_v6: 64,
            mtu: 65520,
        }
    }
}

/// Everything the engine needs.
#[derive(Debug)]
pub struct EngineConfig {
    /// The compiled policy.
    pub policy: CompiledPolicy,
    /// How denies are answered.
    pub deny_mode: DenyMode,
    /// At most this many TCP connections and UDP flows at once.
    pub max_connections: usize,
    /// Upstream DNS resolvers, tried in order.
    pub dns_servers: Vec<SocketAddr>,
    /// The link's addresses.
    pub link: LinkConfig,
    /// Where audit events go.
    pub audit: AuditLog,
    /// Upstream dial timeout.
    pub connect_timeout: Duration,
    /// UDP flows idle this long are closed.
    pub udp_idle_timeout: Duration,
    /// Per-upstream DNS timeout.
    pub dns_timeout: Duration,
    /// A TCP connection's send buffer (host → sandbox) in bytes; its receive buffer is a
    /// half of it while memory is plentiful, less under `max_buffer_memory`.
    pub tcp_buffer: usize,
    /// What the TCP connections' buffers may hold in all, the engine's own frames and
    /// bookkeeping included (see `budget.rs`).
    pub max_buffer_memory: usize,
    /// How many of the policy's first rules came from `--allow`/`--deny` flags: a refusal
    /// by one of them is not one an `--allow` could lift, so deny mode `explain` suggests
    /// none for it (as the run's summary does not, `summary.rs`).
    pub flag_rules: usize,
    /// Names whose lookups answer NXDOMAIN (`block_domain`).
    pub block_domains: Vec<DomainName>,
    /// Suffixes below which lookups answer NXDOMAIN (`block_domain_suffix`).
    pub block_domain_suffixes: Vec<DomainSuffix>,
    /// Remove answers that point inward (`dns_rebind_protection`).
    pub dns_rebind_protection: bool,
    /// Published ports, bound before the sandbox starts.
    pub published: Vec<Published>,
    /// After any activity, keep polling without sleeping for this long (zero: always
    /// sleep until an event). Trades a little CPU right after traffic for latency; at most
    /// [`MAX_BUSY_POLL`], default [`DEFAULT_BUSY_POLL`].
    pub busy_poll: Duration,
    /// TLS interception, when on.
    pub tls: Option<TlsConfig>,
    /// Where one-line notices for the user go (none by default).
    pub notices: Notices,
    /// Secrets whose placeholders the sandbox holds.
    pub secrets: Vec<Secret>,
    /// What a placeholder heading for a host outside its secret's list does.
    pub on_secret_violation: ViolationAction,
    /// Set (with the reason) when a violation under `BlockAndTerminate` asks for the whole
    /// sandbox to stop; whoever runs the sandbox watches it.
    pub terminate: Terminate,
    /// Addresses of the host that stand for other machines and are judged as what they
    /// are, not as the host's loopback: `moat demo` simulates its world on its own
    /// namespace's loopback. Empty for every real run.
    pub simulated_hosts: Vec<IpAddr>,
}

impl EngineConfig {
    /// A configuration with moat's defaults for everything but the policy and audit log.
    pub fn new(policy: CompiledPolicy, audit: AuditLog) -> EngineConfig {
        EngineConfig {
            policy,
            deny_mode: DenyMode::Drop,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            dns_servers: Vec::new(),
            link: LinkConfig::default(),
            audit,
            connect_timeout: Duration::from_secs(15),
            udp_idle_timeout: Duration::from_secs(60),
            dns_timeout: Duration::from_secs(2),
            tcp_buffer: 1 << 20,
            max_buffer_memory: DEFAULT_MAX_BUFFER_MEMORY,
            flag_rules: 0,
            block_domains: Vec::new(),
            block_domain_suffixes: Vec::new(),
            dns_rebind_protection: true,
            published: Vec::new(),
            busy_poll: DEFAULT_BUSY_POLL,
            simulated_hosts: Vec::new(),
            tls: None,
            notices: Notices::default(),
            secrets: Vec::new(),
            on_secret_violation: ViolationAction::Block,
            terminate: Terminate::default(),
        }
    }
}

/// TLS interception (shared/API.md `TlsBuilder`), as the engine takes it.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// The CA the sandbox trusts; leaves are signed with it.
    pub ca: Arc<InterceptCa>,
    /// TCP ports where TLS is intercepted.
    pub ports: Vec<u16>,
    /// Names not intercepted: `api.x.com` (exactly) or `*.x.com` (strictly below).
    pub bypass: Vec<String>,
    /// UDP to intercepted ports is refused (QUIC), so clients fall back to TCP.
    pub block_quic: bool,
    /// Upstream certificates are verified against `roots`.
    pub verify_upstream: bool,
    /// The roots upstream chains are verified against (the host's, plus any given).
    pub roots: Vec<CertificateDer<'static>>,
}

/// A published port's host socket, bound by moat before the sandbox starts.
#[derive(Debug)]
pub enum PublishedSocket {
    /// A TCP listener.
    Tcp(std::net::TcpListener),
    /// A UDP socket.
    Udp(std::net::UdpSocket),
}

/// One published port.
#[derive(Debug)]
pub struct Published {
    /// The host socket.
    pub socket: PublishedSocket,
    /// The port inside the sandbox.
    pub guest_port: u16,
}

/// The default of [`TlsConfig::ports`].
pub const DEFAULT_TLS_PORTS: [u16; 1] = [443];

/// The default of [`EngineConfig::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// The default of [`EngineConfig::max_buffer_memory`]: 256 MiB.
pub const DEFAULT_MAX_BUFFER_MEMORY: usize = 256 << 20;
/// How long the engine keeps polling after activity before it sleeps: 100 µs catches the
/// next frame of most exchanges (a client's request after the SYN-ACK, a server's answer)
/// without a wake-up; spinning stops 100 µs after the last event, so a trickle of traffic
/// costs little more CPU than sleeping (bench/run's busy-poll table measures both sides).
pub const DEFAULT_BUSY_POLL: Duration = Duration::from_micros(100);
/// The longest busy-poll window accepted: past a millisecond the spinning mostly waits for
/// frames that are not coming, at the cost of a core other programs could use.
pub const MAX_BUSY_POLL: Duration = Duration::from_millis(1);
/// The smallest [`EngineConfig::max_buffer_memory`] accepted.
pub const MIN_BUFFER_MEMORY: usize = 4 << 20;

/// What the engine counted; returned when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames read from the sandbox.
    pub frames_in: u64,
    /// Frames dropped: not from the sandbox's addresses.
    pub dropped_spoofed: u64,
    /// Frames dropped: unsupported protocol, fragment, malformed, stray segment.
    pub dropped_unsupported: u64,
    /// Flows allowed.
    pub allowed: u64,
    /// Flows denied by policy.
    pub denied: u64,
    /// Flows refused by `max_connections` or `max_buffer_memory`.
    pub over_limit: u64,
    /// Refused TCP connections answered with moat's `403` (deny mode `explain`).
    pub explained: u64,
    /// Refused TCP connections reset at once in deny mode `explain` because holding them
    /// would pass a limit (refusals held at once, `max_connections`, the buffer budget).
    pub explain_skipped: u64,
    /// Upstream dials that failed.
    pub dial_failures: u64,
    /// DNS queries forwarded.
    pub dns_queries: u64,
    /// DNS queries answered with SERVFAIL (all upstreams failed).
    pub dns_servfail: u64,
    /// Port-53 messages that were not DNS queries, dropped.
    pub dns_dropped: u64,
    /// ICMP echo requests that could not be relayed (no ping or raw socket, or too many).
    pub icmp_dropped: u64,
    /// ICMP echo requests relayed.
    pub icmp_relayed: u64,
    /// Frames the device refused.
    pub tx_errors: u64,
}
