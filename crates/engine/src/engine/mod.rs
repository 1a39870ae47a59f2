//! The engine's event loop: one thread per sandbox owns the frame device, the smoltcp
//! stack and every host socket, and moves bytes between them without hand-offs.
//!
//! # Theory of operation
//! Each frame from the sandbox is classified ([`crate::wire::classify`]) before smoltcp
//! sees it:
//! - **ARP and neighbour discovery** go to smoltcp, which answers for every address
//!   (`any_ip`), except questions about the sandbox's own address.
//! - **TCP**: a SYN for a new flow is judged by the policy. Denied: dropped (or answered
//!   with RST in reject mode). Allowed: moat dials the destination from a host socket first
//!   and holds the SYN; when the dial succeeds, a smoltcp socket listening on the exact
//!   destination is created and the SYN fed to it, so the handshake completes only for
//!   reachable destinations; a refused or failed dial answers the SYN with RST. Segments of
//!   known flows go to smoltcp; others are dropped. Data moves between the smoltcp socket's
//!   buffers and the host socket with one copy each way; FIN on either side becomes a
//!   half-close on the other; RST on either side aborts both.
//! - **UDP**: never enters smoltcp. Each (sandbox address, destination) pair is a flow with
//!   a connected host socket, so replies come only from the destination; flows expire after
//!   an idle timeout. DNS to the gateway is forwarded to the upstream resolvers.
//! - **ICMP echo** to the gateway is answered by smoltcp; to other destinations it is
//!   judged and relayed through a ping socket (or a raw one with `CAP_NET_RAW`), one per
//!   (sandbox identifier, destination), see `icmp.rs`.
//! - **Router solicitations** get a router advertisement for the link's prefix.
//!
//! The gateway's address stands for the host's loopback: flows to it (other than DNS) are
//! judged as 127.0.0.1 / ::1 (the Loopback group) and dialed there.
//!
//! Every resource is bounded: `max_connections` counts TCP connections and UDP flows, DNS
//! queries in flight are capped, dials time out, UDP flows and DNS queries expire, and the
//! TCP socket buffers share `max_buffer_memory` (see `budget.rs`).

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::net::{TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Token, Waker};
use moat_policy::{
    CompiledPolicy, Decision, Direction, DomainName, DomainSuffix, Flow, Permit, Protocol,
    canonical_addr,
};
use serde_json::Value;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, IpListenEndpoint};

mod budget;
mod close;
mod dial;
mod echo;
mod host_addrs;
mod inbound;
mod intercept;
mod tcp_flow;
mod udp_flow;

use self::budget::{Budget, Grant};
use self::close::CloseReason;
use self::inbound::{Listener, UdpIn};
pub use self::inbound::{Published, PublishedSocket};
use self::intercept::{DnsQuery, DnsStream, ReplyTo};
use crate::audit::AuditLog;
use crate::device::{ETH_HEADER, FrameDevice, StackDevice};
use crate::dns::filter::DnsRules;
use crate::dns::pins::Pins;
use crate::icmp::{self, EchoKind};
use crate::tls::sni::{self, Sni};
use crate::wire::{self, Frame, L4, Link};
use host_addrs::HostAddrs;

/// How denied flows are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DenyMode {
    /// Drop silently (the specification's meaning of Deny).
    #[default]
    Drop,
    /// Answer TCP with RST and UDP with ICMP administratively prohibited.
    Reject,
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
    /// Names whose lookups answer NXDOMAIN (`block_domain`).
    pub block_domains: Vec<DomainName>,
    /// Suffixes below which lookups answer NXDOMAIN (`block_domain_suffix`).
    pub block_domain_suffixes: Vec<DomainSuffix>,
    /// Remove answers that point inward (`dns_rebind_protection`).
    pub dns_rebind_protection: bool,
    /// Published ports, bound before the sandbox starts.
    pub published: Vec<Published>,
    /// After any activity, keep polling without sleeping for this long (zero: always
    /// sleep until an event). Trades a little CPU right after traffic for latency.
    pub busy_poll: Duration,
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
            block_domains: Vec::new(),
            block_domain_suffixes: Vec::new(),
            dns_rebind_protection: true,
            published: Vec::new(),
            busy_poll: Duration::from_micros(100),
            simulated_hosts: Vec::new(),
        }
    }
}

/// The default of [`EngineConfig::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// The default of [`EngineConfig::max_buffer_memory`]: 256 MiB.
pub const DEFAULT_MAX_BUFFER_MEMORY: usize = 256 << 20;
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

/// A running engine; stop it to get its counters.
#[derive(Debug)]
pub struct EngineHandle {
    thread: Option<std::thread::JoinHandle<io::Result<Counters>>>,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
}

impl EngineHandle {
    /// Stops the engine, closing every flow, and returns its counters.
    pub fn stop(mut self) -> io::Result<Counters> {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("the engine thread panicked")),
            None => Ok(Counters::default()),
        }
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const TAP: Token = Token(0);
const WAKE: Token = Token(1);
/// The netlink socket that says when the host's addresses change.
const HOST_ADDRS: Token = Token(2);
/// Tokens of published ports start here.
pub(crate) const LISTENER_BASE: usize = 3;
/// Published ports at most.
pub const MAX_PUBLISHED: usize = 256;
pub(crate) const FIRST_FLOW: usize = LISTENER_BASE + MAX_PUBLISHED;
/// Frames read per wake before the loop services sockets again.
const RX_BATCH: usize = 256;
/// DNS queries in flight at once.
pub(crate) const MAX_DNS_IN_FLIGHT: usize = 256;
/// ICMP echo flows (sandbox identifier × destination) at once.
const MAX_ECHO_FLOWS: usize = 64;
/// An echo flow without requests for this long is closed.
const ECHO_IDLE: Duration = Duration::from_secs(10);
/// The gateway's link-local address, the source of its router advertisements.
const GATEWAY_LINK_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// TCP ports whose first bytes are read for a TLS server name (when the policy has domain
/// rules).
const TLS_PORTS: [u16; 1] = [443];
/// (address, name) pins held at most.
const MAX_PINS: usize = 65_536;
/// How long a pin outlives its TTL.
const PIN_GRACE: Duration = Duration::from_secs(120);
/// How often idle flows and deadlines are checked.
const SWEEP: Duration = Duration::from_millis(200);

/// Starts the engine on its own thread.
pub fn spawn(
    device: Box<dyn FrameDevice + Send>,
    config: EngineConfig,
) -> io::Result<EngineHandle> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let thread = std::thread::Builder::new()
        .name("moat-engine".into())
        .spawn(move || Engine::new(poll, device, config)?.run(&stop2))?;
    Ok(EngineHandle {
        thread: Some(thread),
        waker,
        stop,
    })
}

enum TcpState {
    /// Dialing upstream; the sandbox's SYN waits here, with the socket that will take it.
    Connecting {
        syn: Vec<u8>,
        seq: u32,
        deadline: Instant,
        socket: Box<tcp::Socket<'static>>,
    },
    /// Relaying through a smoltcp socket.
    Open { handle: SocketHandle },
}

/// What the TLS server-name check lets a flow do.
enum Gate {
    /// Relay the sandbox's bytes.
    Open,
    /// Hold them: the ClientHello is not complete yet.
    Wait,
    /// The flow was reset.
    Aborted,
}

/// Whether a TCP flow's first bytes must be read for a TLS server name before they may
/// leave (on TLS ports when the policy has domain rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SniCheck {
    /// Nothing to check.
    Off,
    /// Waiting for the ClientHello; the server's bytes are relayed meanwhile.
    Pending,
}

struct TcpFlow {
    /// The rule that allowed it (the audit log's `rule`).
    rule: String,
    sni: SniCheck,
    guest: SocketAddr,
    remote: SocketAddr,
    stream: TcpStream,
    state: TcpState,
    /// What the smoltcp socket's buffers are charged.
    mem: Grant,
    host_eof: bool,
    host_write_shut: bool,
    /// Entered through a published port.
    inbound: bool,
    up: u64,
    down: u64,
    started: Instant,
}

struct UdpFlow {
    /// The rule that allowed it (the audit log's `rule`).
    rule: String,
    guest: SocketAddr,
    remote: SocketAddr,
    sock: UdpSocket,
    last: Instant,
    up: u64,
    down: u64,
    started: Instant,
}

struct EchoFlow {
    guest: IpAddr,
    dst: IpAddr,
    guest_ident: u16,
    our_ident: u16,
    kind: EchoKind,
    sock: UdpSocket,
    last: Instant,
}

enum FlowEntry {
    Tcp(TcpFlow),
    Udp(UdpFlow),
    Dns(DnsQuery),
    DnsTcp(DnsStream),
    UdpIn(UdpIn),
    Echo(EchoFlow),
}

struct Engine {
    poll: Poll,
    device: Box<dyn FrameDevice + Send>,
    iface: Interface,
    sockets: SocketSet<'static>,
    /// Closed sockets kept for reuse, with what their buffers are charged.
    tcp_pool: Vec<(tcp::Socket<'static>, Grant)>,
    budget: Budget,
    cfg: EngineConfig,
    link: Link,
    flows: Vec<Option<FlowEntry>>,
    free: Vec<usize>,
    tcp_index: HashMap<(SocketAddr, SocketAddr), usize>,
    udp_index: HashMap<(SocketAddr, SocketAddr), usize>,
    echo_index: HashMap<(IpAddr, IpAddr, u16), usize>,
    listeners: Vec<Listener>,
    udp_in_by_peer: HashMap<(usize, SocketAddr), usize>,
    udp_in_by_guest: HashMap<(SocketAddr, SocketAddr), usize>,
    ephemeral: u16,
    dns_rules: DnsRules,
    /// The host's own addresses: judged as the `Loopback` group.
    host_addrs: HostAddrs,
    /// The policy has Domain/DomainSuffix rules (so TLS server names matter).
    has_name_rules: bool,
    pins: Pins,
    next_pin_sweep: Instant,
    /// TCP connections and UDP flows open (bounded by `max_connections`).
    active: usize,
    dns_in_flight: usize,
    dirty: HashSet<usize>,
    /// Aborted flows to remove once their RST is out.
    doomed: Vec<(usize, CloseReason)>,
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
    scratch: Vec<u8>,
    counters: Counters,
    epoch: Instant,
    rng: u64,
}

/// What the sweep does with a flow.
enum Due {
    /// Idle past its timeout: remove it.
    Expire,
    /// A DNS query timed out at its resolver: ask the next one.
    NextResolver,
    /// The upstream dial took too long: reset the sandbox's SYN and remove it.
    DialTimedOut,
    /// Move its bytes along (and end it if both sides are done).
    Relay,
    /// Nothing yet.
    Nothing,
}

/// smoltcp sockets kept for reuse: a socket is allocated once, not for every connection.
/// Their buffers stay charged to the budget; they are dropped when it runs short.
const TCP_POOL: usize = 64;
/// A DNS-over-TCP connection's buffers each way: DNS messages are at most 64 KiB.
const DNS_STREAM_BUFFER: usize = 128 * 1024;

/// A new smoltcp TCP socket with the given buffer capacities.
fn new_socket(rx: usize, tx: usize) -> tcp::Socket<'static> {
    let mut socket = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0u8; rx]),
        tcp::SocketBuffer::new(vec![0u8; tx]),
    );
    socket.set_nagle_enabled(false);
    socket.set_ack_delay(None);
    socket
}

fn smol_now(epoch: Instant) -> smoltcp::time::Instant {
    smoltcp::time::Instant::from_micros(epoch.elapsed().as_micros() as i64)
}

impl Engine {
    fn new(
        poll: Poll,
        device: Box<dyn FrameDevice + Send>,
        mut cfg: EngineConfig,
    ) -> io::Result<Engine> {
        if let Some(fd) = device.raw_fd() {
            poll.registry()
                .register(&mut mio::unix::SourceFd(&fd), TAP, Interest::READABLE)?;
        }
        let epoch = Instant::now();
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64
            | 1;
        let gateway_mac = EthernetAddress(cfg.link.gateway_mac);
        let mut config = Config::new(HardwareAddress::Ethernet(gateway_mac));
        config.random_seed = seed;
        let max_frame = cfg.link.mtu + ETH_HEADER;
        let mut tx_buf = Vec::with_capacity(max_frame);
        let mut device = device;
        let mut tx_errors = 0;
        let mut iface = {
            let mut dev = StackDevice {
                rx: None,
                dev: device.as_mut(),
                tx_buf: &mut tx_buf,
                max_frame,
                tx_errors: &mut tx_errors,
            };
            Interface::new(config, &mut dev, smol_now(epoch))
        };
        iface.set_any_ip(true);
        let link_cfg = cfg.link;
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(link_cfg.gateway_v4.into(), link_cfg.prefix_v4));
            let _ = addrs.push(IpCidr::new(link_cfg.gateway_v6.into(), link_cfg.prefix_v6));
            let _ = addrs.push(IpCidr::new(GATEWAY_LINK_LOCAL.into(), 64));
        });
        let _ = iface
            .routes_mut()
            .add_default_ipv4_route(link_cfg.gateway_v4);
        let _ = iface
            .routes_mut()
            .add_default_ipv6_route(link_cfg.gateway_v6);
        let has_name_rules = cfg.policy.policy().has_name_rules();
        let dns_rules = DnsRules::new(
            cfg.policy.policy(),
            &cfg.block_domains,
            &cfg.block_domain_suffixes,
            cfg.dns_rebind_protection,
        );
        let mut dns_rules = dns_rules;
        let host_addrs = HostAddrs::new(&cfg.simulated_hosts);
        if let Some(fd) = host_addrs.watch_fd() {
            poll.registry().register(
                &mut mio::unix::SourceFd(&fd),
                HOST_ADDRS,
                Interest::READABLE,
            )?;
        }
        dns_rules.set_host_addrs(host_addrs.set().clone());
        let published = std::mem::take(&mut cfg.published);
        let mut engine = Engine {
            poll,
            device,
            iface,
            sockets: SocketSet::new(Vec::new()),
            tcp_pool: Vec::new(),
            budget: Budget::new(
                cfg.max_buffer_memory.max(MIN_BUFFER_MEMORY),
                cfg.max_connections,
                cfg.tcp_buffer / 2,
            ),
            link: Link {
                gateway_mac,
                guest_mac: EthernetAddress::BROADCAST,
            },
            cfg,
            flows: Vec::new(),
            free: Vec::new(),
            tcp_index: HashMap::new(),
            udp_index: HashMap::new(),
            echo_index: HashMap::new(),
            listeners: Vec::new(),
            udp_in_by_peer: HashMap::new(),
            udp_in_by_guest: HashMap::new(),
            ephemeral: 49152,
            dns_rules,
            host_addrs,
            has_name_rules,
            pins: Pins::new(MAX_PINS, PIN_GRACE),
            next_pin_sweep: Instant::now(),
            active: 0,
            dns_in_flight: 0,
            dirty: HashSet::new(),
            doomed: Vec::new(),
            rx_buf: vec![0; max_frame.max(65536 + ETH_HEADER)],
            tx_buf,
            scratch: vec![0; 65536],
            counters: Counters::default(),
            epoch,
            rng: seed,
        };
        engine.register_listeners(published)?;
        Ok(engine)
    }

    fn run(mut self, stop: &AtomicBool) -> io::Result<Counters> {
        let mut events = Events::with_capacity(1024);
        let mut rx_pending = false;
        let mut next_sweep = Instant::now() + SWEEP;
        let mut last_active = Instant::now();
        loop {
            let now = Instant::now();
            let mut timeout = next_sweep.saturating_duration_since(now);
            if let Some(d) = self.iface.poll_delay(smol_now(self.epoch), &self.sockets) {
                timeout = timeout.min(Duration::from_micros(d.total_micros()));
            }
            // Busy-poll briefly after activity: the next frame of an exchange (the
            // client's ACK and request after a SYN-ACK, the server's answer after a
            // request) usually comes within tens of microseconds, and catching it without
            // sleeping saves a wake-up on each hop.
            if rx_pending || now.duration_since(last_active) < self.cfg.busy_poll {
                timeout = Duration::ZERO;
            }
            // A device without a descriptor (the in-memory one of the tests) is polled.
            let pollable = self.device.raw_fd().is_some();
            if !pollable {
                timeout = timeout.min(Duration::from_millis(1));
            }
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if stop.load(Ordering::SeqCst) {
                break;
            }
            if !events.is_empty() {
                last_active = Instant::now();
            } else if timeout.is_zero() && !rx_pending {
                // Spinning: let a task woken onto this core (the sandbox's client, often)
                // run first.
                std::thread::yield_now();
            }
            let mut tap_ready = rx_pending || !pollable;
            for event in events.iter() {
                match event.token() {
                    TAP => tap_ready = true,
                    WAKE => {}
                    HOST_ADDRS => self.refresh_host_addrs(),
                    Token(t) if t >= FIRST_FLOW => self.on_host_event(t - FIRST_FLOW),
                    Token(t) => self.on_listener(t - LISTENER_BASE),
                }
            }
            if tap_ready {
                rx_pending = self.read_frames()?;
            }
            self.service_dirty();
            self.egress();
            for (id, why) in std::mem::take(&mut self.doomed) {
                self.remove(id, why);
            }
            if Instant::now() >= next_sweep {
                if !self.host_addrs.is_watched() {
                    self.refresh_host_addrs();
                }
                self.sweep();
                next_sweep = Instant::now() + SWEEP;
            }
        }
        self.close_all();
        Ok(self.counters)
    }

    /// Reads up to a batch of frames; `true` when more may be waiting.
    fn read_frames(&mut self) -> io::Result<bool> {
        for _ in 0..RX_BATCH {
            let mut buf = std::mem::take(&mut self.rx_buf);
            let got = self.device.recv(&mut buf);
            let result = match got {
                Ok(Some(len)) => {
                    self.counters.frames_in += 1;
                    self.on_frame(&buf[..len]);
                    Ok(true)
                }
                Ok(None) => Ok(false),
                Err(e) => Err(e),
            };
            self.rx_buf = buf;
            if !result? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Hands one frame to smoltcp.
    fn feed(&mut self, frame: &[u8]) {
        let max_frame = self.cfg.link.mtu + ETH_HEADER;
        let mut dev = StackDevice {
            rx: Some(frame),
            dev: self.device.as_mut(),
            tx_buf: &mut self.tx_buf,
            max_frame,
            tx_errors: &mut self.counters.tx_errors,
        };
        let now = smol_now(self.epoch);
        let _ = self
            .iface
            .poll_ingress_single(now, &mut dev, &mut self.sockets);
    }

    fn egress(&mut self) {
        let max_frame = self.cfg.link.mtu + ETH_HEADER;
        let mut dev = StackDevice {
            rx: None,
            dev: self.device.as_mut(),
            tx_buf: &mut self.tx_buf,
            max_frame,
            tx_errors: &mut self.counters.tx_errors,
        };
        let now = smol_now(self.epoch);
        self.iface.poll_maintenance(now);
        // Bounded: each round sends what the sockets have ready.
        for _ in 0..64 {
            if self.iface.poll_egress(now, &mut dev, &mut self.sockets)
                == smoltcp::iface::PollResult::None
            {
                break;
            }
        }
    }

    /// Answers the sandbox's IP packet in `frame` with ICMP "administratively prohibited"
    /// from the gateway of `toward`'s family (reject mode, refused DNS bypasses).
    fn send_prohibited(&mut self, frame: &[u8], toward: IpAddr) {
        let mut out = std::mem::take(&mut self.scratch);
        if wire::admin_prohibited(
            &mut out,
            &self.link,
            self.gateway_for(toward),
            wire::ip_payload(frame),
        ) {
            self.send_frame(&out);
        }
        out.resize(65536, 0);
        self.scratch = out;
    }

    fn send_frame(&mut self, frame: &[u8]) {
        if self.device.send(frame).is_err() {
            self.counters.tx_errors += 1;
        }
    }

    fn is_guest(&self, addr: IpAddr) -> bool {
        addr == IpAddr::V4(self.cfg.link.guest_v4) || addr == IpAddr::V6(self.cfg.link.guest_v6)
    }

    fn on_frame(&mut self, frame: &[u8]) {
        if let Some(mac) = wire::source_mac(frame) {
            self.link.guest_mac = mac;
        }
        match wire::classify(frame) {
            Frame::Arp { request, target } => {
                if !(request && target == self.cfg.link.guest_v4) {
                    self.feed(frame);
                }
            }
            Frame::Ip { src, dst, l4 } => match l4 {
                L4::Tcp {
                    src_port,
                    dst_port,
                    syn,
                    ack,
                    rst,
                    seq,
                    seg_len,
                } => {
                    if !self.is_guest(src) {
                        self.counters.dropped_spoofed += 1;
                        return;
                    }
                    let guest = SocketAddr::new(src, src_port);
                    let remote = SocketAddr::new(dst, dst_port);
                    self.on_tcp(frame, guest, remote, syn && !ack && !rst, rst, seq, seg_len);
                }
                L4::Udp {
                    src_port,
                    dst_port,
                    offset,
                    len,
                } => {
                    if !self.is_guest(src) {
                        self.counters.dropped_spoofed += 1;
                        return;
                    }
                    let guest = SocketAddr::new(src, src_port);
                    let remote = SocketAddr::new(dst, dst_port);
                    self.on_udp(frame, guest, remote, offset, len);
                }
                L4::EchoRequest {
                    ident,
                    seq,
                    offset,
                    len,
                } => {
                    if !self.is_guest(src) {
                        self.counters.dropped_spoofed += 1;
                    } else if dst == self.gateway_for(dst) {
                        // The gateway answers its own echoes.
                        if let Some(data) = frame.get(offset..offset + len) {
                            let mut out = std::mem::take(&mut self.tx_buf);
                            if wire::echo_reply(&mut out, &self.link, dst, src, ident, seq, data) {
                                self.send_frame(&out);
                            }
                            self.tx_buf = out;
                        }
                    } else if let Some(data) = frame.get(offset..offset + len) {
                        self.on_echo(frame, src, dst, ident, seq, data);
                    }
                }
                L4::NeighborSolicit { target } => {
                    // Every address but the sandbox's own is at the gateway. Duplicate
                    // address detection (from ::) gets no answer.
                    if let IpAddr::V6(from) = src
                        && target != self.cfg.link.guest_v6
                        && !from.is_unspecified()
                    {
                        let mut out = std::mem::take(&mut self.tx_buf);
                        if wire::neighbor_advert(&mut out, &self.link, target, from) {
                            self.send_frame(&out);
                        }
                        self.tx_buf = out;
                        // smoltcp learns the sandbox's MAC from the solicitation.
                        self.feed(frame);
                    }
                }
                L4::IcmpOther => {
                    if src.is_ipv6() {
                        self.feed(frame);
                    } else {
                        self.counters.dropped_unsupported += 1;
                    }
                }
                L4::RouterSolicit => self.router_advert(src),
                L4::Unsupported => self.counters.dropped_unsupported += 1,
            },
            Frame::Other => self.counters.dropped_unsupported += 1,
        }
    }

    fn gateway_for(&self, addr: IpAddr) -> IpAddr {
        match addr {
            IpAddr::V4(_) => IpAddr::V4(self.cfg.link.gateway_v4),
            IpAddr::V6(_) => IpAddr::V6(self.cfg.link.gateway_v6),
        }
    }

    /// Where a flow to `remote` is judged and dialed: the gateway stands for the host's
    /// loopback.
    fn upstream(&self, remote: SocketAddr) -> SocketAddr {
        match remote.ip() {
            ip if ip == IpAddr::V4(self.cfg.link.gateway_v4) => {
                SocketAddr::new(Ipv4Addr::LOCALHOST.into(), remote.port())
            }
            ip if ip == IpAddr::V6(self.cfg.link.gateway_v6) => {
                SocketAddr::new(Ipv6Addr::LOCALHOST.into(), remote.port())
            }
            _ => remote,
        }
    }

    /// Reads the host's addresses again (they changed, or may have).
    fn refresh_host_addrs(&mut self) {
        if self.host_addrs.refresh() {
            self.dns_rules.set_host_addrs(self.host_addrs.set().clone());
        }
    }

    /// Judges an outbound flow, with the names this sandbox's lookups pinned to the
    /// address; an allow comes with the permit to dial.
    fn judge(&self, protocol: Protocol, target: SocketAddr) -> Result<Permit, Decision> {
        let names = self.pins.names(canonical_addr(target.ip()), Instant::now());
        self.cfg.policy.permit(&Flow {
            direction: Direction::Outbound,
            protocol,
            addr: target.ip(),
            port: Some(target.port()),
            names: &names,
            sni: None,
            local: self.host_addrs.contains(target.ip()),
        })
    }

    fn audit_deny(
        &mut self,
        proto: &str,
        guest: SocketAddr,
        remote: SocketAddr,
        decision: &Decision,
    ) {
        self.counters.denied += 1;
        let reason = self.cfg.policy.reason(decision);
        self.cfg.audit.event(
            "connect",
            "deny",
            &decision.rule_label(),
            &reason,
            vec![
                ("proto", Value::from(proto)),
                ("src", Value::from(guest.to_string())),
                ("dst", Value::from(remote.ip().to_string())),
                ("port", Value::from(remote.port())),
                ("domain", self.pinned_domain(remote.ip())),
            ],
        );
    }

    fn audit_allow(
        &mut self,
        proto: &str,
        guest: SocketAddr,
        remote: SocketAddr,
        rule: &str,
        reason: &str,
    ) {
        self.counters.allowed += 1;
        self.cfg.audit.event(
            "connect",
            "allow",
            rule,
            reason,
            vec![
                ("proto", Value::from(proto)),
                ("src", Value::from(guest.to_string())),
                ("dst", Value::from(remote.ip().to_string())),
                ("port", Value::from(remote.port())),
                ("domain", self.pinned_domain(remote.ip())),
            ],
        );
    }

    /// The audit log's `domain`: the names this sandbox's lookups pinned to `addr`.
    fn pinned_domain(&self, addr: IpAddr) -> Value {
        let names = self.pins.names(canonical_addr(addr), Instant::now());
        match names.len() {
            0 => Value::Null,
            1 => Value::from(names[0].as_str()),
            _ => Value::from(
                names
                    .iter()
                    .map(|n| n.as_str().to_owned())
                    .collect::<Vec<_>>(),
            ),
        }
    }

    fn audit_limit(&mut self, proto: &str, guest: SocketAddr, remote: SocketAddr) {
        let reason = format!(
            "{} concurrent connections (max_connections)",
            self.cfg.max_connections
        );
        self.audit_refused("max_connections", &reason, proto, guest, remote);
    }

    /// Audits a connection refused because the buffer budget has no room for it.
    fn audit_memory(&mut self, proto: &str, guest: SocketAddr, remote: SocketAddr) {
        let reason = format!(
            "the connections' buffers hold {} KiB of max_buffer_memory ({} KiB)",
            self.budget.charged() / 1024,
            self.cfg.max_buffer_memory / 1024
        );
        self.audit_refused("max_buffer_memory", &reason, proto, guest, remote);
    }

    fn audit_refused(
        &mut self,
        rule: &str,
        reason: &str,
        proto: &str,
        guest: SocketAddr,
        remote: SocketAddr,
    ) {
        self.counters.over_limit += 1;
        self.cfg.audit.event(
            "connect",
            "deny",
            rule,
            reason,
            vec![
                ("proto", Value::from(proto)),
                ("src", Value::from(guest.to_string())),
                ("dst", Value::from(remote.ip().to_string())),
                ("port", Value::from(remote.port())),
            ],
        );
    }

    /// Takes a slot for a new flow and registers its host socket under the slot's token;
    /// `None` (and the slot given back) when registration fails.
    fn register_new(
        &mut self,
        source: &mut impl mio::event::Source,
        interest: Interest,
    ) -> Option<usize> {
        let id = self.slot();
        if self
            .poll
            .registry()
            .register(source, Token(id + FIRST_FLOW), interest)
            .is_err()
        {
            self.free.push(id);
            return None;
        }
        Some(id)
    }

    /// An empty slot for a new flow; fill it with `self.flows[id] = Some(..)`, or give it
    /// back with `self.free.push(id)`.
    fn slot(&mut self) -> usize {
        self.free.pop().unwrap_or_else(|| {
            self.flows.push(None);
            self.flows.len() - 1
        })
    }

    /// Audits a refused attempt to use a DNS transport that would bypass the interceptor.
    fn audit_bypass(&mut self, proto: &str, guest: SocketAddr, remote: SocketAddr, reason: &str) {
        self.counters.denied += 1;
        self.cfg.audit.event(
            "connect",
            "deny",
            "dns_bypass",
            reason,
            vec![
                ("proto", Value::from(proto)),
                ("src", Value::from(guest.to_string())),
                ("dst", Value::from(remote.ip().to_string())),
                ("port", Value::from(remote.port())),
            ],
        );
    }

    fn on_host_event(&mut self, id: usize) {
        let Some(Some(entry)) = self.flows.get_mut(id) else {
            return;
        };
        match entry {
            FlowEntry::Tcp(flow) => {
                if let TcpState::Connecting { .. } = flow.state {
                    self.finish_connect(id);
                } else {
                    self.dirty.insert(id);
                }
            }
            FlowEntry::Udp(_) => self.udp_readable(id),
            FlowEntry::Dns(_) => self.dns_readable(id),
            FlowEntry::DnsTcp(_) => {
                self.dirty.insert(id);
            }
            FlowEntry::Echo(_) => self.echo_readable(id),
            FlowEntry::UdpIn(_) => {}
        }
    }

    fn service_dirty(&mut self) {
        let dirty: Vec<usize> = self.dirty.drain().collect();
        for id in dirty {
            self.relay(id);
        }
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64: query IDs need only be unpredictable to the network, not secret.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Idle UDP flows, dial and DNS deadlines, TCP flows smoltcp has finished.
    fn sweep(&mut self) {
        let now = Instant::now();
        if now >= self.next_pin_sweep {
            self.pins.sweep(now);
            self.next_pin_sweep = now + Duration::from_secs(10);
        }
        for id in 0..self.flows.len() {
            let due = match &self.flows[id] {
                Some(FlowEntry::Udp(f))
                    if now.duration_since(f.last) >= self.cfg.udp_idle_timeout =>
                {
                    Due::Expire
                }
                Some(FlowEntry::Dns(q)) if now >= q.deadline => Due::NextResolver,
                Some(FlowEntry::Echo(e)) if now.duration_since(e.last) >= ECHO_IDLE => Due::Expire,
                Some(FlowEntry::DnsTcp(_)) => Due::Relay,
                Some(FlowEntry::UdpIn(f))
                    if now.duration_since(f.last) >= self.cfg.udp_idle_timeout =>
                {
                    Due::Expire
                }
                Some(FlowEntry::Tcp(f)) => match f.state {
                    TcpState::Connecting { deadline, .. } if now >= deadline => Due::DialTimedOut,
                    TcpState::Open { .. } => Due::Relay,
                    _ => Due::Nothing,
                },
                _ => Due::Nothing,
            };
            match due {
                Due::Expire => self.remove(id, CloseReason::Idle),
                Due::NextResolver => {
                    let next = match &self.flows[id] {
                        Some(FlowEntry::Dns(q)) => q.server + 1,
                        _ => continue,
                    };
                    self.dns_try(id, next);
                }
                Due::DialTimedOut => {
                    if let Some(FlowEntry::Tcp(f)) = &self.flows[id]
                        && let TcpState::Connecting { seq, .. } = f.state
                    {
                        let (guest, remote) = (f.guest, f.remote);
                        self.counters.dial_failures += 1;
                        self.reset_guest(guest, remote, seq, 1);
                    }
                    self.remove(id, CloseReason::ConnectTimedOut);
                }
                // Relaying again picks up flows that were waiting on the buffer budget and
                // TCP connections smoltcp has finished.
                Due::Relay => self.relay(id),
                Due::Nothing => {}
            }
        }
    }

    fn remove(&mut self, id: usize, why: CloseReason) {
        let Some(entry) = self.flows.get_mut(id).and_then(Option::take) else {
            return;
        };
        self.free.push(id);
        let registry = self.poll.registry();
        match entry {
            FlowEntry::Tcp(mut flow) => {
                if flow.inbound && !why.is_clean() {
                    inbound::reset(&flow.stream);
                }
                let _ = registry.deregister(&mut flow.stream);
                match flow.state {
                    TcpState::Open { handle } => self.recycle(handle, flow.mem),
                    TcpState::Connecting { socket, .. } => self.give_back(*socket, flow.mem),
                }
                self.tcp_index.remove(&(flow.guest, flow.remote));
                self.active -= 1;
                self.audit_close(
                    "tcp",
                    &flow.rule,
                    flow.guest,
                    flow.remote,
                    flow.up,
                    flow.down,
                    flow.started,
                    &why,
                );
            }
            FlowEntry::Udp(mut flow) => {
                let _ = registry.deregister(&mut flow.sock);
                self.udp_index.remove(&(flow.guest, flow.remote));
                self.active -= 1;
                self.audit_close(
                    "udp",
                    &flow.rule,
                    flow.guest,
                    flow.remote,
                    flow.up,
                    flow.down,
                    flow.started,
                    &why,
                );
            }
            FlowEntry::Echo(mut e) => {
                let _ = registry.deregister(&mut e.sock);
                self.echo_index.remove(&(e.guest, e.dst, e.guest_ident));
            }
            FlowEntry::Dns(mut q) => {
                if let Some(sock) = q.sock.as_mut() {
                    let _ = registry.deregister(sock);
                }
                self.dns_in_flight -= 1;
                self.dns_stream_done(q.reply);
            }
            FlowEntry::UdpIn(f) => {
                self.udp_in_by_peer.remove(&(f.listener, f.peer));
                self.udp_in_by_guest.remove(&(f.guest, f.source));
                self.active -= 1;
                self.audit_close(
                    "udp", &f.rule, f.peer, f.guest, f.up, f.down, f.started, &why,
                );
            }
            FlowEntry::DnsTcp(s) => {
                self.recycle(s.handle, s.mem);
                self.tcp_index.remove(&(s.guest, s.remote));
                self.active -= 1;
                self.audit_close("tcp", "dns", s.guest, s.remote, 0, 0, s.started, &why);
            }
        }
    }

    #[allow(clippy::too_many_arguments)] // The fields of one audit event.
    fn audit_close(
        &mut self,
        proto: &str,
        rule: &str,
        guest: SocketAddr,
        remote: SocketAddr,
        up: u64,
        down: u64,
        started: Instant,
        why: &CloseReason,
    ) {
        self.cfg.audit.event(
            "close",
            "allow",
            rule,
            &why.to_string(),
            vec![
                ("proto", Value::from(proto)),
                ("src", Value::from(guest.to_string())),
                ("dst", Value::from(remote.ip().to_string())),
                ("port", Value::from(remote.port())),
                ("bytes_up", Value::from(up)),
                ("bytes_down", Value::from(down)),
                (
                    "duration_ms",
                    Value::from(started.elapsed().as_millis() as u64),
                ),
            ],
        );
    }

    fn close_all(&mut self) {
        for id in 0..self.flows.len() {
            if let Some(Some(FlowEntry::Tcp(flow))) = self.flows.get_mut(id)
                && let TcpState::Open { handle } = flow.state
            {
                self.sockets.get_mut::<tcp::Socket>(handle).abort();
            }
            if let Some(Some(FlowEntry::DnsTcp(s))) = self.flows.get(id) {
                self.sockets.get_mut::<tcp::Socket>(s.handle).abort();
            }
        }
        // The resets go out before the sockets are dropped.
        self.egress();
        for id in 0..self.flows.len() {
            self.remove(id, CloseReason::SandboxStopped);
        }
    }
}
