//! What names a flow and an event: the poll tokens (the device, the waker, the host's
//! addresses, published ports, then one per flow), a flow's slot ([`FlowId`]) and its two
//! ends ([`FlowKey`]), a TCP segment from the sandbox ([`Segment`]), and what the sweep
//! finds due for a flow ([`Due`]). Below every flow
//! kind and the table, so each can name a flow without naming the others.

use std::net::{IpAddr, SocketAddr};

use mio::Token;

/// The frame device.
pub(super) const TAP: Token = Token(0);
/// `EngineHandle::stop` wakes the loop.
pub(super) const WAKE: Token = Token(1);
/// The netlink socket that says when the host's addresses change.
pub(super) const HOST_ADDRS: Token = Token(2);
/// Tokens of published ports start here.
pub(super) const LISTENER_BASE: usize = 3;
/// Published ports at most.
pub const MAX_PUBLISHED: usize = 256;
/// Tokens of flows start here (see `table.rs`).
const FIRST_FLOW: usize = LISTENER_BASE + MAX_PUBLISHED;
/// A flow's slot in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct FlowId(usize);

impl FlowId {
    /// The flow in slot `slot` of the table.
    pub(super) fn at(slot: usize) -> FlowId {
        FlowId(slot)
    }

    /// Its slot in the table.
    pub(super) fn slot(self) -> usize {
        self.0
    }

    /// The poll token of the flow's host socket.
    pub(super) fn token(self) -> Token {
        Token(FIRST_FLOW + self.0)
    }

    /// The flow a poll token belongs to.
    pub(super) fn from_token(token: Token) -> Option<FlowId> {
        token.0.checked_sub(FIRST_FLOW).map(FlowId)
    }
}

/// The two ends of a flow: the sandbox's, and the one it talks to as the sandbox sees it
/// (for outbound flows the destination it addressed; for inbound ones the source it is
/// shown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct FlowKey {
    /// The sandbox's address and port.
    pub(super) guest: SocketAddr,
    /// The other end's address and port, as the sandbox sees it.
    pub(super) host: SocketAddr,
}

/// An echo flow's key: the sandbox's address, the destination, the sandbox's identifier.
pub(super) type EchoKey = (IpAddr, IpAddr, u16);

/// One TCP segment from the sandbox, as classified.
#[derive(Debug, Clone, Copy)]
pub(super) struct Segment<'a> {
    /// The whole frame.
    pub(super) frame: &'a [u8],
    pub(super) key: FlowKey,
    /// A SYN without ACK or RST: the start of a connection.
    pub(super) opens: bool,
    pub(super) rst: bool,
    pub(super) seq: u32,
    /// Sequence space taken (payload, plus one for SYN or FIN).
    pub(super) len: u32,
}

/// What the sweep does with a flow.
pub(super) enum Due {
    /// Idle past its timeout: remove it.
    Expire,
    /// A DNS query timed out at its resolver: ask the next one.
    NextResolver,
    /// The upstream dial took too long: reset the sandbox's SYN and remove it.
    DialTimedOut,
    /// A connection took too long to finish closing: reset it.
    CloseTimedOut,
    /// Move its bytes along (and end it if both sides are done).
    Relay,
    /// Nothing yet.
    Nothing,
}
