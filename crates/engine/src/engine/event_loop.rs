//! The engine's thread: poll, route each event to its flow, run the timers. It knows the
//! tokens and the order of a turn, and nothing of any protocol.
//!
//! One turn: wait for events (or the sweep's or smoltcp's next deadline); read a batch of
//! frames from the sandbox and route each (`ingress.rs`); route host-socket events to
//! their flows (`table.rs` finds them by token); move the bytes of every flow an event
//! marked; send what smoltcp has ready; remove the flows whose resets are now out; every
//! 200 ms, sweep ([`sweep`]). The loop ends when asked to stop, or at the end of a
//! turn in which the audit log failed under `--audit-required` (fail closed).
//!
//! The poll is edge-triggered: it reports a socket when something arrives, not while
//! something is queued. Every source is therefore read until it would block, or, where a
//! batch bounds the reading (the TAP, a UDP flow, a published port), a batch that ends
//! with more queued leaves a mark (`rx_pending`, a dirty flow, a listener to read again)
//! and the next turn polls without waiting and reads on.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Registry, Token};
use moat_dns::filter::DnsRules;
use moat_dns::pins::Pins;
use moat_wire::device::{ETH_HEADER, FrameDevice};

use super::budget::Budget;
use super::close::CloseReason;
use super::config::{Counters, EngineConfig, MIN_BUFFER_MEMORY};
use super::cx::Cx;
use super::host_addrs::HostAddrs;
use super::inbound::Listeners;
use super::key::{Due, FlowId, HOST_ADDRS, LISTENER_BASE, TAP, WAKE};
use super::on_inbound;
use super::pool::SocketPool;
use super::stack::Stack;
use super::table::{Flow, FlowTable};
use super::tls_shared::TlsShared;
use super::{ingress, on_dns, on_echo, on_refusal, on_tcp, on_udp};

/// Frames read per wake before the loop services sockets again.
const RX_BATCH: usize = 256;
/// How often idle flows and deadlines are checked.
const SWEEP: Duration = Duration::from_millis(200);
/// (address, name) pins held at most.
const MAX_PINS: usize = 65_536;
/// How long a pin outlives its TTL.
const PIN_GRACE: Duration = Duration::from_secs(120);
/// A frame from the sandbox at least this large is a bulk stream's segment (segmentation
/// offload carries up to 64 KiB); an exchange of requests and answers stays far below it.
const BULK_FRAME: usize = 16 * 1024;

/// When the loop polls without sleeping (`--busy-poll`). An event of an exchange opens the
/// window: the next frame of a request/response usually comes within tens of microseconds,
/// and catching it without sleeping saves a wake-up on each hop. A turn that read a bulk
/// segment from the sandbox closes it: the next segment comes from the sandbox's kernel,
/// which needs the very core the loop would spin on (measured against the loop without
/// this, per busy core: +8–9 % on one-stream uploads at MTU 1500 in each of three
/// interleaved runs, −3 to +8 % on the other uploads). A download keeps the window: there the
/// next segment lands in a host socket through the world's side, and sleeping would add a
/// wake-up per segment (a version that also closed it on large transmits lost 5 % on one
/// download stream at MTU 65520).
#[derive(Debug, Clone, Copy)]
struct BusyPoll {
    window: Duration,
    until: Instant,
}

impl BusyPoll {
    /// Idle at `now`.
    fn new(window: Duration, now: Instant) -> BusyPoll {
        BusyPoll { window, until: now }
    }

    /// An event of an exchange at `now`: keep polling for the window.
    fn exchange(&mut self, now: Instant) {
        self.until = now + self.window;
    }

    /// The turn that ended at `now` read frames of at most `largest` bytes from the sandbox.
    fn read(&mut self, largest: usize, now: Instant) {
        if largest >= BULK_FRAME {
            self.until = now;
        }
    }

    /// Whether the loop polls without sleeping at `now`.
    fn spinning(&self, now: Instant) -> bool {
        now < self.until
    }
}

/// The engine: the poll, the flows, what they share, and the published ports.
pub(super) struct Engine {
    poll: Poll,
    table: FlowTable,
    cx: Cx,
    listeners: Listeners,
    rx_buf: Vec<u8>,
}

impl Engine {
    pub(super) fn new(
        poll: Poll,
        device: Box<dyn FrameDevice + Send>,
        cfg: EngineConfig,
    ) -> io::Result<Engine> {
        if let Some(fd) = device.raw_fd() {
            poll.registry()
                .register(&mut mio::unix::SourceFd(&fd), TAP, Interest::READABLE)?;
        }
        let max_frame = cfg.link.mtu + ETH_HEADER;
        let (table, cx, listeners) = parts(poll.registry(), device, cfg)?;
        Ok(Engine {
            poll,
            table,
            cx,
            listeners,
            rx_buf: vec![0; max_frame.max(65536 + ETH_HEADER)],
        })
    }

    pub(super) fn run(mut self, stop: &AtomicBool) -> io::Result<Counters> {
        let mut events = Events::with_capacity(1024);
        let mut rx_pending = false;
        let mut next_sweep = Instant::now() + SWEEP;
        let mut busy = BusyPoll::new(self.cx.cfg.busy_poll, Instant::now());
        // A device without a descriptor (the in-memory one of the tests) is polled.
        let pollable = self.cx.stack.raw_fd().is_some();
        loop {
            let now = Instant::now();
            let mut timeout = next_sweep.saturating_duration_since(now);
            if let Some(d) = self.cx.stack.poll_delay() {
                timeout = timeout.min(d);
            }
            // Busy-poll briefly after an exchange's activity ([`BusyPoll`]).
            if rx_pending || busy.spinning(now) {
                timeout = Duration::ZERO;
            }
            // Work left from the last turn (a batch that did not drain its socket) does
            // not wait for an event that will not come.
            if self.table.has_dirty() || self.listeners.has_again() {
                timeout = Duration::ZERO;
            }
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
            if events
                .iter()
                .any(|e| extends_busy_poll(&self.table, e.token()))
            {
                busy.exchange(Instant::now());
            } else if timeout.is_zero() && !rx_pending {
                // Spinning: let a task woken onto this core (the sandbox's client, often)
                // run first.
                std::thread::yield_now();
            }
            let mut tap_ready = rx_pending || !pollable;
            let again = self.listeners.take_again();
            for event in events.iter() {
                match event.token() {
                    TAP => tap_ready = true,
                    WAKE => {}
                    HOST_ADDRS => self.cx.refresh_host_addrs(),
                    token => self.on_socket(token),
                }
            }
            let mut largest = 0;
            if tap_ready {
                (rx_pending, largest) = self.read_frames()?;
            }
            for index in again {
                on_inbound::ready(&mut self.listeners, &mut self.table, &mut self.cx, index);
            }
            for id in self.table.take_dirty() {
                service(&mut self.table, &mut self.cx, id);
            }
            self.cx.stack.egress();
            busy.read(largest, Instant::now());
            self.table.remove_doomed(&mut self.cx);
            // Fail closed: under --audit-required, once an event could not be written
            // nothing more passes (the sandbox is stopped by whoever runs it).
            if self.cx.cfg.audit.halted() {
                break;
            }
            if Instant::now() >= next_sweep {
                if !self.cx.host_addrs.is_watched() {
                    self.cx.refresh_host_addrs();
                }
                sweep(&mut self.table, &mut self.cx);
                next_sweep = Instant::now() + SWEEP;
            }
        }
        self.table.close_all(&mut self.cx);
        let mut counters = self.cx.counters;
        counters.tx_errors += self.cx.stack.tx_errors;
        Ok(counters)
    }

    /// Reads up to a batch of frames: whether more may be waiting, and the largest frame
    /// read.
    fn read_frames(&mut self) -> io::Result<(bool, usize)> {
        let mut more = true;
        let mut largest = 0;
        for _ in 0..RX_BATCH {
            let Some(len) = self.cx.stack.recv(&mut self.rx_buf)? else {
                more = false;
                break;
            };
            largest = largest.max(len);
            self.cx.counters.frames_in += 1;
            let frame = &self.rx_buf[..len];
            ingress::on_frame(&self.listeners, &mut self.table, &mut self.cx, frame);
        }
        on_udp::flush_up(&mut self.table, &mut self.cx);
        Ok((more, largest))
    }

    /// A published port's or a flow's host socket is ready.
    fn on_socket(&mut self, token: Token) {
        let (table, cx) = (&mut self.table, &mut self.cx);
        let Some(id) = FlowId::from_token(token) else {
            let index = token.0 - LISTENER_BASE;
            on_inbound::ready(&mut self.listeners, table, cx, index);
            return;
        };
        match table.get(id) {
            Some(Flow::Tcp(_)) => on_tcp::host_ready(table, cx, id),
            Some(Flow::Udp(_)) => on_udp::readable(table, cx, id),
            Some(Flow::DnsUpstream(_)) => on_dns::readable(table, cx, id),
            Some(Flow::Echo(_)) => on_echo::readable(table, cx, id),
            Some(Flow::DnsStream(_)) => table.touch(id),
            Some(Flow::UdpIn(_) | Flow::DnsQuery(_) | Flow::Refusal(_)) | None => {}
        }
    }
}

/// Whether an event on `token` keeps the engine polling without sleeping (`--busy-poll`).
/// Everything does but datagrams arriving on an outbound UDP flow: a stream of those (a
/// download, media) keeps coming whether the engine spins or sleeps, and spinning would take
/// the core the sandbox's receiver needs (1,400-byte datagrams at 1 Gbit/s, 5 runs each:
/// loss median 1.1% spinning, 0.35% sleeping). A UDP exchange the sandbox starts still
/// spins for the answer: its request is a frame.
fn extends_busy_poll(table: &FlowTable, token: Token) -> bool {
    let udp_flow =
        FlowId::from_token(token).is_some_and(|id| matches!(table.get(id), Some(Flow::Udp(_))));
    !udp_flow
}

/// What the loop drives, made from the configuration: the flow table (registering with
/// `registry`), what flows share, and the published ports. Tests drive flows through
/// these without the loop.
pub(super) fn parts(
    registry: &Registry,
    device: Box<dyn FrameDevice + Send>,
    mut cfg: EngineConfig,
) -> io::Result<(FlowTable, Cx, Listeners)> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
        | 1;
    let stack = Stack::new(device, cfg.link, seed);
    let host_addrs = HostAddrs::new(&cfg.simulated_hosts);
    if let Some(fd) = host_addrs.watch_fd() {
        registry.register(
            &mut mio::unix::SourceFd(&fd),
            HOST_ADDRS,
            Interest::READABLE,
        )?;
    }
    let mut dns_rules = DnsRules::new(
        cfg.policy.policy(),
        &cfg.block_domains,
        &cfg.block_domain_suffixes,
        cfg.dns_rebind_protection,
    );
    dns_rules.set_host_addrs(host_addrs.set().clone());
    dns_rules.strip_ech(cfg.tls.is_some());
    let budget = Budget::new(
        cfg.max_buffer_memory.max(MIN_BUFFER_MEMORY),
        cfg.max_connections,
        cfg.tcp_buffer / 2,
    );
    let pool = SocketPool::new(budget, cfg.tcp_buffer);
    let published = std::mem::take(&mut cfg.published);
    let listeners = Listeners::register(registry, LISTENER_BASE, published)?;
    let table = FlowTable::new(registry.try_clone()?, cfg.max_connections);
    let pins = Pins::new(MAX_PINS, PIN_GRACE);
    let tls = cfg
        .tls
        .as_ref()
        .map(TlsShared::new)
        .transpose()
        .map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("TLS interception: {e}"),
            )
        })?;
    let cx = Cx::new(stack, pool, cfg, dns_rules, host_addrs, pins, tls, seed);
    Ok((table, cx, listeners))
}

/// Runs what is due: idle flows expire, dials and DNS queries time out, and TCP flows
/// are relayed again (those waiting on the buffer budget, and those smoltcp has
/// finished).
pub(super) fn sweep(table: &mut FlowTable, cx: &mut Cx) {
    let now = Instant::now();
    cx.sweep_pins(now);
    for slot in 0..table.slot_count() {
        let id = FlowId::at(slot);
        let due = match table.get(id) {
            Some(Flow::Tcp(f)) => f.due(now),
            Some(Flow::Udp(f)) => f.due(now, cx.cfg.udp_idle_timeout),
            Some(Flow::UdpIn(f)) => f.due(now, cx.cfg.udp_idle_timeout),
            Some(Flow::Echo(e)) => e.due(now),
            Some(Flow::DnsQuery(q)) => q.due(now),
            Some(Flow::DnsUpstream(_)) => Due::Nothing,
            Some(Flow::DnsStream(_) | Flow::Refusal(_)) => Due::Relay,
            None => Due::Nothing,
        };
        match due {
            Due::Expire => table.remove(id, CloseReason::Idle, cx),
            Due::NextResolver => on_dns::next_resolver(table, cx, id),
            Due::DialTimedOut => on_tcp::dial_timed_out(table, cx, id),
            Due::CloseTimedOut => on_tcp::close_timed_out(table, cx, id),
            Due::Relay => service(table, cx, id),
            Due::Nothing => {}
        }
    }
}

/// Moves a flow's bytes along: what the loop does for the flows an event marked.
pub(super) fn service(table: &mut FlowTable, cx: &mut Cx, id: FlowId) {
    match table.get(id) {
        Some(Flow::Tcp(_)) => on_tcp::relay(table, cx, id),
        Some(Flow::DnsStream(_)) => on_dns::stream_relay(table, cx, id),
        Some(Flow::Refusal(_)) => on_refusal::relay(table, cx, id),
        Some(Flow::Udp(_)) => on_udp::readable(table, cx, id),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use moat_policy::NetworkPolicy;

    use super::*;
    use crate::engine::config::DenyMode;
    use crate::engine::testing::{Harness, key_to, loopback_listener, syn, udp};

    #[test]
    fn an_exchange_keeps_the_loop_spinning_for_the_window_and_a_bulk_segment_ends_it() {
        let window = Duration::from_micros(100);
        let t0 = Instant::now();
        let mut busy = BusyPoll::new(window, t0);
        assert!(
            !busy.spinning(t0 + Duration::from_micros(1)),
            "idle at first"
        );
        busy.exchange(t0);
        assert!(busy.spinning(t0 + Duration::from_micros(99)));
        assert!(!busy.spinning(t0 + window), "the window ends");
        // Frames of an exchange (a SYN-ACK, a request, a full 1500-byte segment) keep it.
        busy.exchange(t0);
        busy.read(1514, t0 + Duration::from_micros(10));
        busy.read(BULK_FRAME - 1, t0 + Duration::from_micros(10));
        assert!(busy.spinning(t0 + Duration::from_micros(50)));
        // A segment of a bulk stream from the sandbox ends it at once.
        busy.read(BULK_FRAME, t0 + Duration::from_micros(10));
        assert!(!busy.spinning(t0 + Duration::from_micros(10)));
        assert!(!busy.spinning(t0 + Duration::from_micros(50)));
        // The next exchange opens it again.
        busy.exchange(t0 + Duration::from_micros(60));
        assert!(busy.spinning(t0 + Duration::from_micros(100)));
        // With --busy-poll 0 the loop never spins.
        let mut never = BusyPoll::new(Duration::ZERO, t0);
        never.exchange(t0);
        assert!(!never.spinning(t0));
    }

    #[test]
    fn a_batch_of_frames_reports_its_largest_and_whether_more_wait() {
        use moat_record::audit::AuditLog;
        use moat_wire::device::SharedMemoryDevice;
        use smoltcp::wire::TcpControl;

        use crate::engine::testing::tcp_from;
        let dev = SharedMemoryDevice::default();
        let cfg = EngineConfig::new(
            NetworkPolicy::allow_all().compile().unwrap(),
            AuditLog::new("unit", None),
        );
        let mut engine = Engine::new(Poll::new().unwrap(), Box::new(dev.clone()), cfg).unwrap();
        let gateway = Ipv4Addr::new(10, 0, 2, 2);
        let segment = |len: usize| {
            let payload = vec![0x5a; len];
            tcp_from(40000, gateway, 9, TcpControl::Psh, 1, Some(1), &payload)
        };
        let (small, bulk) = (segment(100), segment(30_000));
        dev.0
            .lock()
            .unwrap()
            .inbound
            .extend([small.clone(), bulk.clone(), small.clone()]);
        assert_eq!(engine.read_frames().unwrap(), (false, bulk.len()));
        assert!(bulk.len() >= BULK_FRAME && small.len() < BULK_FRAME);
        // A batch cut short says more wait, with the largest of what it read.
        dev.0
            .lock()
            .unwrap()
            .inbound
            .extend(vec![small.clone(); RX_BATCH + 1]);
        assert_eq!(engine.read_frames().unwrap(), (true, small.len()));
        assert_eq!(engine.read_frames().unwrap(), (false, small.len()));
        assert_eq!(engine.read_frames().unwrap(), (false, 0));
    }

    #[test]
    fn only_datagrams_from_an_outbound_udp_flow_let_the_engine_sleep() {
        let mut h = Harness::new(NetworkPolicy::allow_all(), DenyMode::Drop);
        let gateway = Ipv4Addr::new(10, 0, 2, 2);
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        h.frame(&udp(gateway, port, b"ping"));
        let key = key_to(std::net::SocketAddr::new(gateway.into(), port));
        let udp_flow = h.table.find_udp(&key).expect("a UDP flow");
        let listener = loopback_listener(8);
        h.frame(&syn(gateway, listener.local_addr().unwrap().port()));
        let tcp_flow = h
            .table
            .ids()
            .into_iter()
            .find(|&id| matches!(h.table.get(id), Some(Flow::Tcp(_))))
            .expect("a TCP flow");
        assert!(!extends_busy_poll(&h.table, udp_flow.token()));
        assert!(extends_busy_poll(&h.table, tcp_flow.token()));
        assert!(extends_busy_poll(&h.table, TAP));
        assert!(extends_busy_poll(&h.table, Token(LISTENER_BASE)));
    }
}
