//! The command's standard streams, so that no terminal of the host reaches the sandbox.
//!
//! # Theory of operation
//! The command runs in a session of its own. A terminal of the host handed to it as a
//! descriptor would still let it change the terminal's modes, read what the user types
//! into other programs and, on older kernels, push input back (TIOCSTI, also denied by
//! seccomp). So a terminal never crosses into the sandbox:
//! - **stdin is a terminal** (an interactive `moat run -- sh`): moat opens a
//!   pseudo-terminal of the sandbox's own `/dev/pts` (so `tty` inside names it), gives its
//!   slave to the command as stdin (and as stdout/stderr where
//!   those are the terminal too) and as its controlling terminal, puts the host terminal
//!   in raw mode and relays bytes both ways, as `docker run -it` does. Ctrl-C and Ctrl-Z
//!   are bytes to the pseudo-terminal's line discipline, which signals the foreground
//!   process group *inside*; the window size is copied at start and on every SIGWINCH.
//!   The host terminal's mode is restored when the relay is dropped, on every exit path.
//! - **otherwise**: stdout or stderr that is a terminal is replaced by a pipe whose far end
//!   moat copies to the terminal; the command has no terminal at all.
//! - Descriptors that are not terminals (files, pipes, sockets) are passed as they are.
//!
//! moat's own lines on stderr while the host terminal is raw (live denials, notices, a
//! lost audit log) go through [`Lines`], which ends them with CR LF there, as the
//! terminal's own output processing would have.

use std::fs::File;
use std::io::{self, IsTerminal, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::termios::{self, SetArg, Termios};

/// A writer for moat's own lines on stderr that keeps them whole while the host terminal
/// is in raw mode (output processing off, as during the pseudo-terminal relay): each line
/// feed then goes out as CR LF. Elsewhere it writes what it is given.
pub(crate) struct Lines<W> {
    out: W,
    /// The last byte written, so a CR LF split across writes is not doubled.
    last: u8,
    /// Whether the terminal is raw now (asked at every write: raw mode comes and goes).
    raw: fn() -> bool,
}

impl<W: Write> Lines<W> {
    pub(crate) fn new(out: W) -> Lines<W> {
        Lines {
            out,
            last: 0,
            raw: stderr_is_raw,
        }
    }
}

/// Whether the terminal on stderr (if it is one) has its output processing off.
fn stderr_is_raw() -> bool {
    termios::tcgetattr(io::stderr().as_fd())
        .is_ok_and(|t| !t.output_flags.contains(termios::OutputFlags::OPOST))
}

impl<W: Write> Write for Lines<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if !(self.raw)() {
            self.last = buf[buf.len() - 1];
            return self.out.write_all(buf).map(|()| buf.len());
        }
        let mut cooked = Vec::with_capacity(buf.len() + 8);
        for &b in buf {
            if b == b'\n' && self.last != b'\r' {
                cooked.push(b'\r');
            }
            cooked.push(b);
            self.last = b;
        }
        self.out.write_all(&cooked).map(|()| buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The command's three standard streams and the threads that relay them.
pub(crate) struct Streams {
    /// What the command gets as 0, 1, 2.
    fds: [OwnedFd; 3],
    /// The pseudo-terminal's master, when there is one (for window sizes).
    master: Option<OwnedFd>,
    /// The host terminal's mode before raw mode, restored on drop.
    saved: Option<Termios>,
    /// Relays that end when the command's side closes (joined in [`Streams::finish`]).
    outputs: Vec<JoinHandle<()>>,
}

fn dup(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    fd.try_clone_to_owned()
}

/// Copies `from` to `to` until end of file or an error (EIO: the pseudo-terminal's last
/// slave closed).
fn copy(mut from: File, mut to: impl Write) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() || to.flush().is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

impl Streams {
    /// Sets up the command's streams from moat's own.
    ///
    /// The pseudo-terminal is one of the sandbox's own (`/dev/pts/N` inside, which `tty`
    /// names and the command may reopen), opened through its supervisor.
    pub(crate) fn new(sandbox: &mut moat_sandbox::Sandbox) -> io::Result<Streams> {
        let stdin = io::stdin();
        if stdin.is_terminal() {
            let (master, slave) = sandbox.open_pty().map_err(io::Error::other)?;
            Streams::pseudo_terminal(master, slave)
        } else {
            Streams::without_terminal()
        }
    }

    fn pseudo_terminal(master: OwnedFd, slave: OwnedFd) -> io::Result<Streams> {
        let stdin = io::stdin();
        let size = moat_sandbox::tty::window_size(stdin.as_fd()).ok();
        let pty = nix::pty::OpenptyResult { master, slave };
        if let Some(size) = size {
            moat_sandbox::tty::set_window_size(pty.master.as_fd(), size)?;
        }
        let saved = termios::tcgetattr(stdin.as_fd()).map_err(io::Error::from)?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        // TCSAFLUSH: what was typed before the command started is dropped with the switch.
        // An end-of-file still pending from canonical mode (a driver such as `script` sends
        // one when its own input ends) would otherwise turn into a NUL byte the kernel then
        // hands over as input, and the command would see a stray `^@`.
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSAFLUSH, &raw).map_err(io::Error::from)?;
        let mut streams = Streams {
            fds: [
                dup(pty.slave.as_fd())?,
                dup(pty.slave.as_fd())?,
                dup(pty.slave.as_fd())?,
            ],
            master: None,
            saved: Some(saved),
            outputs: Vec::new(),
        };
        // stdout and stderr that are not the terminal (redirected to a file) stay as they are.
        if !io::stdout().is_terminal() {
            streams.fds[1] = dup(io::stdout().as_fd())?;
        }
        if !io::stderr().is_terminal() {
            streams.fds[2] = dup(io::stderr().as_fd())?;
        }
        let input = File::from(dup(pty.master.as_fd())?);
        // The input relay blocks in read(stdin) and is never joined: it ends with moat.
        std::thread::Builder::new()
            .name("moat-tty-in".into())
            .spawn(move || {
                if let Ok(fd) = dup(io::stdin().as_fd()) {
                    copy(File::from(fd), input);
                }
            })
            .map_err(io::Error::other)?;
        let output = File::from(dup(pty.master.as_fd())?);
        streams.outputs.push(
            std::thread::Builder::new()
                .name("moat-tty-out".into())
                .spawn(move || copy(output, io::stdout()))
                .map_err(io::Error::other)?,
        );
        streams.master = Some(pty.master);
        drop(pty.slave);
        Ok(streams)
    }

    fn without_terminal() -> io::Result<Streams> {
        let mut outputs = Vec::new();
        let mut relay = |fd: BorrowedFd<'_>, to_stderr: bool| -> io::Result<OwnedFd> {
            if !nix::unistd::isatty(fd).unwrap_or(false) {
                return dup(fd);
            }
            let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
            let from = File::from(r);
            outputs.push(
                std::thread::Builder::new()
                    .name("moat-out".into())
                    .spawn(move || {
                        if to_stderr {
                            copy(from, io::stderr())
                        } else {
                            copy(from, io::stdout())
                        }
                    })
                    .map_err(io::Error::other)?,
            );
            Ok(w)
        };
        let out = relay(io::stdout().as_fd(), false)?;
        let err = relay(io::stderr().as_fd(), true)?;
        Ok(Streams {
            fds: [dup(io::stdin().as_fd())?, out, err],
            master: None,
            saved: None,
            outputs,
        })
    }

    /// Whether the command gets a pseudo-terminal as its controlling terminal.
    pub(crate) fn is_terminal(&self) -> bool {
        self.master.is_some()
    }

    /// The descriptors the command gets as 0, 1 and 2.
    pub(crate) fn fds(&self) -> [BorrowedFd<'_>; 3] {
        [
            self.fds[0].as_fd(),
            self.fds[1].as_fd(),
            self.fds[2].as_fd(),
        ]
    }

    /// Once the command has its copies: moat's must go, so the relays see the end.
    pub(crate) fn started(&mut self) -> io::Result<()> {
        let null = || -> io::Result<OwnedFd> {
            Ok(OwnedFd::from(
                File::options().read(true).write(true).open("/dev/null")?,
            ))
        };
        self.fds = [null()?, null()?, null()?];
        Ok(())
    }

    /// Copies the host terminal's window size to the pseudo-terminal (on SIGWINCH).
    pub(crate) fn resize(&self) {
        if let Some(master) = &self.master
            && let Ok(size) = moat_sandbox::tty::window_size(io::stdin().as_fd())
        {
            let _ = moat_sandbox::tty::set_window_size(master.as_fd(), size);
        }
    }

    /// Waits (briefly) for the output relays to drain after the sandbox has stopped.
    pub(crate) fn finish(mut self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        for handle in self.outputs.drain(..) {
            while !handle.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if handle.is_finished() {
                let _ = handle.join();
            }
        }
    }
}

impl Drop for Streams {
    fn drop(&mut self) {
        if let Some(saved) = self.saved.take() {
            let _ = termios::tcsetattr(io::stdin().as_fd(), SetArg::TCSADRAIN, &saved);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Test code.
    use super::*;

    #[test]
    fn lines_end_with_cr_lf_only_while_raw() {
        let mut raw = Lines::new(Vec::new());
        raw.raw = || true;
        raw.write_all(b"moat: denied x\n").unwrap();
        raw.write_all(b"two\r").unwrap();
        raw.write_all(b"\nthree\n\n").unwrap();
        assert_eq!(raw.out, b"moat: denied x\r\ntwo\r\nthree\r\n\r\n");
        let mut cooked = Lines::new(Vec::new());
        cooked.raw = || false;
        cooked.write_all(b"a\nb\r\n").unwrap();
        assert_eq!(cooked.out, b"a\nb\r\n");
    }
}
