//! The command's standard streams, so that no terminal of the host reaches the sandbox.
//!
//! # Theory of operation
//! The command runs in a session of its own. A terminal of the host handed to it as a
//! descriptor would still let it change the terminal's modes, read what the user types
//! into other programs and, on older kernels, push input back (TIOCSTI, also denied by
//! seccomp). So a terminal never crosses into the sandbox:
//! - **stdin is a terminal** (an interactive `moat run -- sh`): moat opens a
//!   pseudo-terminal, gives its slave to the command as stdin (and as stdout/stderr where
//!   those are the terminal too) and as its controlling terminal, puts the host terminal
//!   in raw mode and relays bytes both ways, as `docker run -it` does. Ctrl-C and Ctrl-Z
//!   are bytes to the pseudo-terminal's line discipline, which signals the foreground
//!   process group *inside*; the window size is copied at start and on every SIGWINCH.
//!   The host terminal's mode is restored when the relay is dropped, on every exit path.
//! - **otherwise**: stdout or stderr that is a terminal is replaced by a pipe whose far end
//!   moat copies to the terminal; the command has no terminal at all.
//! - Descriptors that are not terminals (files, pipes, sockets) are passed as they are.

use std::fs::File;
use std::io::{self, IsTerminal, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::termios::{self, SetArg, Termios};

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
    pub(crate) fn new() -> io::Result<Streams> {
        let stdin = io::stdin();
        if stdin.is_terminal() {
            Streams::pseudo_terminal()
        } else {
            Streams::without_terminal()
        }
    }

    fn pseudo_terminal() -> io::Result<Streams> {
        let stdin = io::stdin();
        let size = moat_sandbox::tty::window_size(stdin.as_fd()).ok();
        let pty = nix::pty::openpty(None, None).map_err(io::Error::from)?;
        if let Some(size) = size {
            moat_sandbox::tty::set_window_size(pty.master.as_fd(), size)?;
        }
        let saved = termios::tcgetattr(stdin.as_fd()).map_err(io::Error::from)?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).map_err(io::Error::from)?;
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
