//! An open intercepted connection's turn (`tls_stage.rs` makes it open): the sandbox's
//! records into its leg, its plaintext read for its host (`moat-inspect`'s `http/`; with
//! secrets, by the swap's own reader, so each request is read once),
//! swapped and scanned (`tls_swaps.rs`) into the server's leg, the server's plaintext back
//! the same way, and the records of both legs written as far as each socket and the buffer
//! budget take them. A refused HTTP/1.1 request is answered 403 at once; a refused HTTP/2
//! request at the server's next frame boundary.

use std::io::{self, Read, Write};
use std::net::Shutdown;

use mio::net::TcpStream;
use moat_inspect::http::{Refused, RequestReader, h1, h2, refusal};
use moat_inspect::secrets::Scanner;
use rustls::{ClientConnection, ServerConnection};
use smoltcp::socket::tcp;

use super::budget::Grant;
use super::close::TlsFailure;
use super::cx::Tally;
use super::pool::SocketPool;
use super::tls_swaps::{Room, Swaps, cleared, end_up, queue_moats_frames, swap_up};

/// How an open connection's requests are read.
pub(super) enum Reader {
    /// HTTP/1.1: request heads and framing.
    H1(h1::Requests),
    /// HTTP/2: frames and header blocks one way, frame boundaries the other.
    H2(Box<h2::Requests>, h2::Frames),
    /// Another protocol: not read.
    Unread,
    /// A connection that swaps secrets: the swap's request side reads, checks (as
    /// [`h1::Requests`] or [`h2::Requests`] would) and rewrites each request
    /// (`tls_swaps.rs`); over HTTP/2 the server's frames are still followed (`Some`), for
    /// a refusal's answer.
    Swapped(Option<h2::Frames>),
}

impl Reader {
    /// The server's HTTP/2 frames as followed, if they are.
    fn frames(&mut self) -> Option<&mut h2::Frames> {
        match self {
            Reader::H2(_, frames) | Reader::Swapped(Some(frames)) => Some(frames),
            _ => None,
        }
    }

    /// Whether a refused HTTP/2 request may be answered: the server's frame under way is
    /// whole.
    fn h2_at_boundary(&mut self) -> bool {
        self.frames().is_some_and(|f| f.at_boundary())
    }
}

/// Plaintext moved per step between the legs.
pub(super) const CHUNK: usize = 16 * 1024;

/// The most read from the server's socket at once (what rustls has not taken yet stays
/// with the connection until it has).
pub(super) const HOST_READ: usize = 32 * 1024;

/// A refused HTTP/2 request's answer, waiting for the server's frame under way to end.
pub(super) struct Refusal {
    pub(super) why: String,
    pub(super) answer: Vec<u8>,
}

/// What an open connection's relay keeps between turns.
#[derive(Default)]
pub(super) struct Relay {
    /// The sandbox finished sending (close_notify or FIN) and the server was told.
    pub(super) up_done: bool,
    /// The server finished sending and the sandbox was told.
    pub(super) down_done: bool,
    pub(super) host_shut: bool,
    /// The sandbox's plaintext that may pass, reused.
    pub(super) pass: Vec<u8>,
    /// A refused HTTP/2 request's answer, sent at the server's next frame boundary.
    pub(super) refusal: Option<Refusal>,
    /// Records read from the server and not yet taken by rustls.
    pub(super) host_in: Vec<u8>,
    /// The sandbox's plaintext that may begin a placeholder, waiting for what follows.
    pub(super) up_held: Vec<u8>,
    /// Secrets this host may receive: swapped both ways.
    pub(super) swaps: Option<Box<Swaps>>,
    /// The sandbox's plaintext rewritten, reused.
    pub(super) swapped: Vec<u8>,
}

/// Writes into the sandbox's socket, within the buffer budget.
pub(super) struct SocketWriter<'a> {
    pub(super) socket: &'a mut tcp::Socket<'static>,
    pub(super) pool: &'a mut SocketPool,
    pub(super) mem: &'a mut Grant,
}

impl Write for SocketWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.pool.send_room(self.mem);
        let n = buf.len().min(room);
        let sent = self
            .socket
            .send_slice(&buf[..n])
            .map_err(|e| io::Error::other(e.to_string()))?;
        if sent == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.pool.wrote(self.mem, sent);
        Ok(sent)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Whether an I/O error only means "not now".
pub(super) fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// Both legs of an open connection and how its requests are read.
pub(super) struct Legs<'a> {
    pub(super) server: &'a mut ServerConnection,
    pub(super) client: &'a mut ClientConnection,
    pub(super) reader: &'a mut Reader,
}

/// What one turn of an open connection works with: the sandbox's socket, the server's,
/// the buffer budget and the connection's grant, the counts, the connection's scanner and
/// a scratch buffer of at most [`CHUNK`].
pub(super) struct Io<'a> {
    pub(super) socket: &'a mut tcp::Socket<'static>,
    pub(super) host: &'a mut TcpStream,
    pub(super) pool: &'a mut SocketPool,
    pub(super) mem: &'a mut Grant,
    pub(super) tally: &'a mut Tally,
    pub(super) scanner: Option<&'a mut Scanner>,
    pub(super) buf: &'a mut [u8],
}

impl Io<'_> {
    /// A writer into the sandbox's socket, within the buffer budget.
    pub(super) fn sandbox_writer(&mut self) -> SocketWriter<'_> {
        SocketWriter {
            socket: self.socket,
            pool: self.pool,
            mem: self.mem,
        }
    }

    /// The budget's room for what the swaps hold.
    pub(super) fn room(&mut self) -> Room<'_> {
        Room {
            pool: self.pool,
            mem: self.mem,
        }
    }
}

/// The sandbox's records, into its leg, as far as rustls takes them.
pub(super) fn sandbox_records(legs: &mut Legs<'_>, io: &mut Io<'_>) -> Result<(), TlsFailure> {
    let server = &mut *legs.server;
    while io.socket.can_recv() && server.wants_read() {
        let got = io.socket.recv(|data| {
            let mut slice: &[u8] = data;
            match server.read_tls(&mut slice) {
                Ok(n) => (n, Ok(n)),
                Err(e) => (0, Err(e)),
            }
        });
        match got {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(TlsFailure::Broken(format!("the sandbox's TLS: {e}"))),
        }
        if let Err(e) = server.process_new_packets() {
            let _ = server.write_tls(&mut io.sandbox_writer());
            return Err(TlsFailure::Broken(format!("the sandbox's TLS: {e}")));
        }
    }
    Ok(())
}

impl Relay {
    /// The sandbox's plaintext, to the server, when the server has taken what came before
    /// (and no request was refused): read for its host, swapped, scanned.
    pub(super) fn plaintext_up(
        &mut self,
        legs: &mut Legs<'_>,
        io: &mut Io<'_>,
    ) -> Result<(), TlsFailure> {
        while !self.up_done && self.refusal.is_none() && !legs.client.wants_write() {
            match legs.server.reader().read(io.buf) {
                Ok(0) => self.end_up(legs, io)?,
                Ok(n) => {
                    io.tally.up += n as u64;
                    if !self.take_up(n, legs, io)? {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // A FIN without close_notify ends the sandbox's side too.
                    let fin = matches!(
                        io.socket.state(),
                        tcp::State::CloseWait | tcp::State::LastAck | tcp::State::Closed
                    );
                    if fin && io.socket.recv_queue() == 0 {
                        self.end_up(legs, io)?;
                    }
                    break;
                }
                Err(_) => self.end_up(legs, io)?,
            }
        }
        Ok(())
    }

    /// The sandbox finished sending: what is held goes, then `close_notify`.
    fn end_up(&mut self, legs: &mut Legs<'_>, io: &mut Io<'_>) -> Result<(), TlsFailure> {
        end_up(
            legs.client,
            &mut self.up_held,
            self.swaps.as_deref_mut(),
            io.scanner.as_deref_mut(),
        )?;
        self.up_done = true;
        Ok(())
    }

    /// `n` bytes of the sandbox's plaintext in `io.buf`: read for their host, swapped,
    /// scanned and written to the server's leg. `false` when an HTTP/2 request was refused
    /// (answered at the server's next frame boundary).
    fn take_up(
        &mut self,
        n: usize,
        legs: &mut Legs<'_>,
        io: &mut Io<'_>,
    ) -> Result<bool, TlsFailure> {
        self.pass.clear();
        let read = match legs.reader {
            Reader::H1(requests) => requests.push(&io.buf[..n], &mut self.pass),
            Reader::H2(requests, _) => requests.push(&io.buf[..n], &mut self.pass),
            Reader::Unread | Reader::Swapped(_) => {
                self.pass.extend_from_slice(&io.buf[..n]);
                Ok(())
            }
        };
        if let Err(refused) = read {
            let why = refused.to_string();
            let Reader::H2(requests, _) = legs.reader else {
                forbid(legs.server, &mut io.sandbox_writer(), &why);
                return Err(TlsFailure::Refused(why));
            };
            // Answered at the server's next frame boundary; the frames before the refused
            // request pass, its own never do.
            let answer = h2::forbidden(requests.stream(), &why);
            self.refusal = Some(Refusal { why, answer });
        }
        // Placeholders this host may receive become values; one it may not stops here.
        let pass = match swap_up(
            self.swaps.as_deref_mut(),
            &self.pass,
            &mut self.swapped,
            &mut io.room(),
        ) {
            Ok(pass) => pass,
            Err(Refused::Secret(i)) => return Err(TlsFailure::Secret(i)),
            // HTTP/2 held beyond the budget is not the request's fault.
            Err(Refused::Budget) if matches!(legs.reader, Reader::Swapped(Some(_))) => {
                return Err(TlsFailure::Broken(format!(
                    "a request cannot be rewritten: {}",
                    Refused::Budget
                )));
            }
            // The swap's check refused the request, as the reader would have: over HTTP/1.1
            // answered at once; over HTTP/2 the frames before it pass, and the answer waits
            // for the server's next frame boundary.
            Err(refused) if matches!(legs.reader, Reader::Swapped(_)) => {
                let why = refused.to_string();
                let stream = match (&*legs.reader, self.swaps.as_deref()) {
                    (Reader::Swapped(Some(_)), Some(sw)) => sw.stream(),
                    _ => {
                        forbid(legs.server, &mut io.sandbox_writer(), &why);
                        return Err(TlsFailure::Refused(why));
                    }
                };
                self.refusal = Some(Refusal {
                    answer: h2::forbidden(stream, &why),
                    why,
                });
                &self.swapped
            }
            Err(e) => {
                return Err(TlsFailure::Broken(format!(
                    "a request cannot be rewritten: {e}"
                )));
            }
        };
        let data = cleared(io.scanner.as_deref_mut(), &mut self.up_held, pass)?;
        let written = legs.client.writer().write_all(&data);
        if self.refusal.is_some() {
            return Ok(false);
        }
        if written.is_err() {
            return Err(TlsFailure::Broken("the server's TLS refused data".into()));
        }
        Ok(true)
    }

    /// moat's own HTTP/2 frames for the server (window given back), when nothing of the
    /// sandbox's is held part-way; then the records; the server's socket half-closed once
    /// the sandbox has finished and everything went.
    pub(super) fn send_to_server(
        &mut self,
        legs: &mut Legs<'_>,
        io: &mut Io<'_>,
    ) -> Result<(), TlsFailure> {
        if !self.up_done {
            queue_moats_frames(self.swaps.as_deref_mut(), &self.up_held, legs.client);
        }
        records_to_server(legs.client, io.host)?;
        if self.up_done && !legs.client.wants_write() && !self.host_shut {
            let _ = io.host.shutdown(Shutdown::Write);
            self.host_shut = true;
        }
        Ok(())
    }

    /// The server's records, as far as the sandbox's side takes them: records ready for
    /// the sandbox go first; then plaintext already decrypted; then records read from the
    /// server in one read of up to [`HOST_READ`] (rustls itself would read 4 KiB at a
    /// time), kept in `host_in` until rustls has taken them.
    pub(super) fn server_side(
        &mut self,
        legs: &mut Legs<'_>,
        io: &mut Io<'_>,
    ) -> Result<(), TlsFailure> {
        loop {
            records_to_sandbox(legs.server, io)?;
            if legs.server.wants_write() || self.down_done {
                break;
            }
            if self.plaintext_down(legs, io)? {
                legs.server.send_close_notify();
                self.down_done = true;
                continue;
            }
            if legs.server.wants_write() {
                continue;
            }
            let refused = self.refusal.is_some();
            if refused && legs.reader.h2_at_boundary() {
                break;
            }
            if !legs.client.wants_read() {
                break;
            }
            if self.host_in.is_empty() && !self.read_host(legs, io)? {
                break;
            }
            if self.host_in.is_empty() {
                continue;
            }
            let taken = legs
                .client
                .read_tls(&mut &self.host_in[..])
                .map_err(|e| TlsFailure::Broken(format!("the server's TLS: {e}")))?;
            self.host_in.drain(..taken);
            if let Err(e) = legs.client.process_new_packets() {
                let _ = legs.client.write_tls(io.host);
                return Err(TlsFailure::Broken(format!("the server's TLS: {e}")));
            }
        }
        Ok(())
    }

    /// One read of the server's socket into `host_in`. At its end of file what is left
    /// goes to the sandbox and its side ends in order (with or without the server's
    /// close_notify). `false` when nothing can be read now.
    fn read_host(&mut self, legs: &mut Legs<'_>, io: &mut Io<'_>) -> Result<bool, TlsFailure> {
        self.host_in.resize(HOST_READ, 0);
        match io.host.read(&mut self.host_in) {
            Ok(0) => {
                self.host_in.clear();
                // End of file: rustls is told, so unfinished records are an error.
                let _ = legs.client.read_tls(&mut io::empty());
                if let Err(e) = legs.client.process_new_packets() {
                    return Err(TlsFailure::Broken(format!("the server's TLS: {e}")));
                }
                self.plaintext_down(legs, io)?;
                legs.server.send_close_notify();
                self.down_done = true;
                Ok(true)
            }
            Ok(n) => {
                self.host_in.truncate(n);
                Ok(true)
            }
            Err(e) => {
                self.host_in.clear();
                if would_block(&e) {
                    return Ok(false);
                }
                Err(TlsFailure::Broken(format!("reading from the server: {e}")))
            }
        }
    }

    /// [`Intercept::plaintext_down`] for this turn.
    fn plaintext_down(&mut self, legs: &mut Legs<'_>, io: &mut Io<'_>) -> Result<bool, TlsFailure> {
        plaintext_down(
            legs.server,
            legs.client,
            legs.reader,
            self.refusal.is_some(),
            io.buf,
            io.tally,
            self.swaps.as_deref_mut(),
            &mut Room {
                pool: io.pool,
                mem: io.mem,
            },
        )
    }

    /// The end of a turn: scratch let go, a refused HTTP/2 request answered once the
    /// server's frame under way is whole, records to the sandbox, its side closed when the
    /// server's has ended, and moat's frames the server's last frames made due.
    pub(super) fn end_turn(
        &mut self,
        legs: &mut Legs<'_>,
        io: &mut Io<'_>,
    ) -> Result<(), TlsFailure> {
        // An idle connection keeps no read buffer, nor the plaintext scratch (a chunk each:
        // a thousand connections waiting would keep tens of megabytes outside the budget).
        if self.host_in.is_empty() {
            self.host_in = Vec::new();
        }
        self.swapped = Vec::new();
        self.pass = Vec::new();
        if let Some(sw) = self.swaps.as_deref_mut() {
            sw.shed();
        }
        if let Some(r) = self.refusal.as_ref()
            && (legs.reader.h2_at_boundary() || self.down_done)
        {
            let _ = legs.server.writer().write_all(&r.answer);
            legs.server.send_close_notify();
            while legs.server.wants_write() {
                if legs.server.write_tls(&mut io.sandbox_writer()).is_err() {
                    break;
                }
            }
            return Err(TlsFailure::Refused(r.why.clone()));
        }
        // Records to the sandbox (while it still takes them: a sandbox that closed after
        // its handshake is not sent the rest).
        records_to_sandbox(legs.server, io)?;
        if self.down_done && !legs.server.wants_write() && io.socket.may_send() {
            io.socket.close();
        }
        // The server's frames just read may have opened its window for HTTP/2 DATA moat
        // held back, or asked moat to give window back: that goes now, not at the next
        // event.
        if !self.up_done
            && queue_moats_frames(self.swaps.as_deref_mut(), &self.up_held, legs.client)
        {
            records_to_server(legs.client, io.host)?;
        }
        Ok(())
    }
}

/// Writes the records rustls has for the sandbox, while its socket takes them.
pub(super) fn records_to_sandbox(
    server: &mut ServerConnection,
    io: &mut Io<'_>,
) -> Result<(), TlsFailure> {
    while server.wants_write() && io.socket.may_send() {
        match server.write_tls(&mut io.sandbox_writer()) {
            Ok(_) => {}
            Err(e) if would_block(&e) => break,
            Err(e) => return Err(TlsFailure::Broken(format!("writing to the sandbox: {e}"))),
        }
    }
    Ok(())
}

/// Writes the records rustls has for the server, as far as its socket takes them.
pub(super) fn records_to_server(
    client: &mut ClientConnection,
    host: &mut TcpStream,
) -> Result<(), TlsFailure> {
    while client.wants_write() {
        match client.write_tls(host) {
            Ok(_) => {}
            Err(e) if would_block(&e) => break,
            Err(e) => return Err(TlsFailure::Broken(format!("writing to the server: {e}"))),
        }
    }
    Ok(())
}

/// Answers a refused request with `403 Forbidden` and a one-line reason, then ends the
/// sandbox's TLS.
pub(super) fn forbid(server: &mut ServerConnection, to: &mut SocketWriter<'_>, why: &str) {
    let response = refusal::forbidden(&format!("moat: {why}"), false);
    let _ = server.writer().write_all(&response);
    server.send_close_notify();
    while server.wants_write() {
        // A full send ring takes nothing (Ok(0)).
        if !matches!(server.write_tls(to), Ok(n) if n > 0) {
            break;
        }
    }
}

/// Moves the server's plaintext to the sandbox's TLS; `true` when the server has
/// finished (close_notify, or end of file). HTTP/2 frames are followed; with
/// `to_boundary`, no byte past the end of the frame under way is taken.
#[allow(clippy::too_many_arguments)] // The two legs, the reader, the counts, the swaps and their room.
pub(super) fn plaintext_down(
    server: &mut ServerConnection,
    client: &mut ClientConnection,
    reader: &mut Reader,
    to_boundary: bool,
    buf: &mut [u8],
    tally: &mut Tally,
    mut swaps: Option<&mut Swaps>,
    room: &mut Room<'_>,
) -> Result<bool, TlsFailure> {
    let send = |server: &mut ServerConnection, reader: &mut Reader, data: &[u8]| {
        if let Some(frames) = reader.frames() {
            frames.advance(data);
        }
        server
            .writer()
            .write_all(data)
            .map_err(|_| TlsFailure::Broken("the sandbox's TLS refused data".into()))
    };
    // moat's own frames for the sandbox go between the server's.
    if let Some(sw) = swaps.as_deref_mut() {
        let queued = sw.queued_down();
        if !queued.is_empty() {
            send(server, reader, queued)?;
        }
    }
    loop {
        let mut cap = buf.len();
        if let Some(frames) = reader.frames()
            && to_boundary
        {
            if frames.at_boundary() {
                return Ok(false);
            }
            // Rewritten frames are whole; the server's own may be cut at the boundary.
            if swaps.is_none() {
                cap = cap.min(frames.until_boundary());
            }
        }
        let got = client.reader().read(&mut buf[..cap]);
        let ended = match got {
            Ok(0) => true,
            Err(ref e) if e.kind() == io::ErrorKind::UnexpectedEof => true,
            _ => false,
        };
        if ended {
            if let Some(sw) = swaps.as_deref_mut() {
                let last = sw.finish_down();
                if !last.is_empty() {
                    send(server, reader, last)?;
                }
            }
            return Ok(true);
        }
        match got {
            Ok(n) => {
                tally.down += n as u64;
                let data = match swaps.as_deref_mut() {
                    Some(sw) => sw.down(&buf[..n], room).map_err(|e| {
                        TlsFailure::Broken(format!("the server's answer cannot be rewritten: {e}"))
                    })?,
                    None => &buf[..n],
                };
                send(server, reader, data)?;
                if server.wants_write() {
                    return Ok(false);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(TlsFailure::Broken(format!("the server's TLS: {e}"))),
        }
    }
}
