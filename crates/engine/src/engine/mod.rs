//! The engine's event loop: one thread per sandbox owns the frame device, the smoltcp
//! stack and every host socket, and moves bytes between them without hand-offs.
//!
//! # Theory of operation
//! Each frame from the sandbox is classified ([`moat_wire::classify`]) before smoltcp
//! sees it:
//! - **ARP and neighbour discovery** go to smoltcp, which answers for every address
//!   (`any_ip`), except questions about the sandbox's own address.
//! - **TCP**: a SYN for a new flow is judged by the policy. Denied: dropped (or answered
//!   with RST in reject mode; in explain mode accepted by moat itself, never dialed, and a
//!   first HTTP/1 request answered with moat's 403 saying why, see `refusal.rs`). Allowed: moat dials the destination from a host socket first
//!   and holds the SYN; when the dial succeeds, a smoltcp socket listening on the exact
//!   destination is created and the SYN fed to it, so the handshake completes only for
//!   reachable destinations; a refused or failed dial answers the SYN with RST. Segments of
//!   known flows go to smoltcp; others are dropped. Data moves between the smoltcp socket's
//!   buffers and the host socket with one copy each way; FIN on either side becomes a
//!   half-close on the other; RST on either side aborts both.
//! - **UDP**: never enters smoltcp. Each (sandbox address, destination) pair is a flow with
//!   a connected host socket, so replies come only from the destination; flows expire after
//!   an idle timeout. What a flow's socket holds goes to the sandbox a batch at a time,
//!   runs of one size in one frame its kernel splits (`moat-wire`'s `offload.rs`, [`stack::UdpBurst`]).
//!   DNS to the gateway is forwarded to the upstream resolvers.
//! - **ICMP echo** to the gateway is answered by smoltcp; to other destinations it is
//!   judged and relayed through a ping socket (or a raw one with `CAP_NET_RAW`), one per
//!   (sandbox identifier, destination), see `moat-wire`'s `icmp.rs`.
//! - **Router solicitations** get a router advertisement for the link's prefix.
//!
//! The gateway's address stands for the host's loopback: flows to it (other than DNS) are
//! judged as 127.0.0.1 / ::1 (the Loopback group) and dialed there.
//!
//! Every resource is bounded: `max_connections` counts TCP connections and UDP flows, DNS
//! queries in flight are capped, refused connections held to explain them are capped and
//! live seconds, dials time out, UDP flows and DNS queries expire, and the
//! TCP socket buffers share `max_buffer_memory` (see `budget.rs`).
//!
//! # Where things are
//! The files form levels, each naming only those below it (`scripts/layers` checks it):
//! what names a flow and what flows share at the bottom, the stream stage above them, then
//! the flow kinds (each one's state and its own I/O), the table (which knows the kinds
//! through one enum), what the loop does with each kind's events, and the loop.
//!
//! | file | what it owns |
//! |---|---|
//! | `key.rs`, `close.rs` | poll tokens, a flow's id and ends, a TCP segment, what is due; why a flow ended |
//! | `config.rs`, `cx.rs` | the engine's configuration; what every flow consults: the policy, the pins, the audit log, the counters |
//! | `stack.rs` | the smoltcp interface and the frames moat writes itself |
//! | `pool.rs`, `budget.rs`, `dial.rs`, `host_addrs.rs` | TCP sockets kept for reuse; buffer memory; the only places sockets toward the world are opened; the host's own addresses |
//! | `stream.rs` | the stream stage inside a TCP flow: where TLS and secrets plug in |
//! | `tls_stage.rs`, `tls_relay.rs`, `tls_swaps.rs`, `tls_shared.rs`, `http_stage.rs` | TLS interception (the handshakes; an open connection's turn; the secrets swapped inside it; what its connections share); secrets on plain HTTP |
//! | `tcp_flow.rs` | a TCP flow's state (judged SYN → dialing → relaying → closing) |
//! | `udp_flow.rs`, `echo.rs`, `dns_flow.rs`, `inbound.rs`, `refusal.rs` | UDP flows, ICMP echo, DNS interception, published ports, a refused connection moat answers itself (deny mode `explain`) |
//! | `table.rs` | the flow table: slots, tokens, keys, limits, and every removal |
//! | `on_tcp.rs`, `on_udp.rs`, `on_echo.rs`, `on_dns.rs`, `on_inbound.rs`, `on_refusal.rs` | what the loop does with each kind's events: the table's part |
//! | `ingress.rs` | a frame from the sandbox, classified and routed to its kind |
//! | `event_loop.rs` | the thread: poll, route each event to its flow, run the timers |

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use mio::{Poll, Waker};

mod budget;
mod close;
mod config;
mod cx;
mod dial;
mod dns_flow;
mod echo;
mod event_loop;
mod host_addrs;
mod http_stage;
mod inbound;
mod ingress;
mod key;
mod on_dns;
mod on_echo;
mod on_inbound;
mod on_refusal;
mod on_tcp;
mod on_udp;
mod pool;
mod refusal;
mod stack;
mod stream;
mod table;
mod tcp_flow;
mod tls_relay;
mod tls_shared;
mod tls_stage;
mod tls_swaps;
mod udp_flow;

pub use self::config::{
    Counters, DEFAULT_BUSY_POLL, DEFAULT_MAX_BUFFER_MEMORY, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_TLS_PORTS, DenyMode, EngineConfig, LinkConfig, MAX_BUSY_POLL, MAX_MTU,
    MIN_BUFFER_MEMORY, MIN_MTU, Published, PublishedSocket, TlsConfig,
};
use self::event_loop::Engine;
pub use self::key::MAX_PUBLISHED;
use self::key::WAKE;
use moat_wire::device::FrameDevice;

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

    /// Whether the engine has stopped on its own (its device gone, or an error): what
    /// [`EngineHandle::stop`] returns then says why.
    pub fn finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
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

#[cfg(test)]
mod testing;
