//! Step 5: moat's requests, served until Stop or until moat goes away: spawn, signal,
//! file open, list and remove, stop; children reaped as they end.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::exec::spawn;
use crate::proto::{self, RLimit, Reply, Request};
use crate::seccomp::Filters;
use crate::sys;

/// What every command is started with, and the commands started so far.
pub(super) struct Commands {
    pub(super) filters: Filters,
    pub(super) rlimits: Vec<RLimit>,
    pub(super) children: Vec<Pid>,
}

/// Step 5: requests until Stop or until moat goes away.
pub(super) fn serve(ctl: &OwnedFd, pid1: Pid, mut commands: Commands) -> i32 {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    let Ok(sigfd) = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
    else {
        return 125;
    };
    loop {
        let mut fds = [
            nix::poll::PollFd::new(ctl.as_fd(), nix::poll::PollFlags::POLLIN),
            nix::poll::PollFd::new(sigfd.as_fd(), nix::poll::PollFlags::POLLIN),
        ];
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => break,
        }
        let ctl_ready = fds[0].any().unwrap_or(false);
        let sig_ready = fds[1].any().unwrap_or(false);
        if sig_ready {
            while let Ok(Some(_)) = sigfd.read_signal() {}
            if reap(ctl, &mut commands.children, pid1) {
                break;
            }
        }
        if ctl_ready {
            match proto::recv::<Request>(ctl.as_raw_fd()) {
                Ok(Some((Request::Stop, _))) | Ok(None) | Err(_) => break,
                Ok(Some((request, fds))) => {
                    let reply = handle(request, fds, &mut commands);
                    let (reply, fd) = match reply {
                        Ok((reply, fd)) => (reply, fd),
                        Err(e) => (
                            Reply::Failed {
                                error: e.to_string(),
                            },
                            None,
                        ),
                    };
                    let raw: Vec<RawFd> = fd.iter().map(AsRawFd::as_raw_fd).collect();
                    if proto::send(ctl.as_raw_fd(), &reply, &raw).is_err() {
                        break;
                    }
                }
            }
        }
    }
    // Killing PID 1 kills every process in the sandbox's pid namespace.
    let _ = kill(pid1, Signal::SIGKILL);
    while waitpid(Pid::from_raw(-1), None).is_ok() {}
    0
}

/// Reaps ended children, reporting commands; `true` when PID 1 itself is gone.
pub(super) fn reap(ctl: &OwnedFd, children: &mut Vec<Pid>, pid1: Pid) -> bool {
    loop {
        let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return false,
            Ok(status) => status,
        };
        let (pid, code, signal) = match status {
            WaitStatus::Exited(pid, code) => (pid, Some(code), None),
            WaitStatus::Signaled(pid, sig, _) => (pid, None, Some(sig as i32)),
            _ => continue,
        };
        if pid == pid1 {
            return true;
        }
        if let Some(i) = children.iter().position(|&c| c == pid) {
            children.swap_remove(i);
            let _ = proto::send(
                ctl.as_raw_fd(),
                &Reply::Exited {
                    pid: pid.as_raw(),
                    code,
                    signal,
                },
                &[],
            );
        }
    }
}

pub(super) fn handle(
    request: Request,
    fds: Vec<OwnedFd>,
    commands: &mut Commands,
) -> io::Result<(Reply, Option<OwnedFd>)> {
    match request {
        Request::Spawn(spec) => Ok((spawn(&spec, fds, commands), None)),
        Request::Signal { pid, signal } => {
            let pid = Pid::from_raw(pid);
            if !commands.children.contains(&pid) {
                return Err(io::Error::new(io::ErrorKind::NotFound, "no such command"));
            }
            let signal = Signal::try_from(signal).map_err(io::Error::from)?;
            kill(pid, signal).map_err(io::Error::from)?;
            Ok((Reply::Done, None))
        }
        Request::Open { path, write } => {
            let file = if write {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&path)?
            } else {
                std::fs::File::open(&path)?
            };
            Ok((Reply::Opened, Some(OwnedFd::from(file))))
        }
        Request::List { path } => {
            let mut entries = Vec::new();
            for entry in std::fs::read_dir(&path)? {
                entries.push(entry?.file_name().as_bytes().to_vec());
                if entries.len() >= 10_000 {
                    break;
                }
            }
            entries.sort();
            Ok((Reply::Listed { entries }, None))
        }
        Request::Remove { path } => {
            let meta = std::fs::symlink_metadata(&path)?;
            if meta.is_dir() {
                std::fs::remove_dir(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
            Ok((Reply::Done, None))
        }
        Request::OpenPty => {
            // The sandbox's /dev/ptmx: its own devpts instance, so the terminal has a name
            // under the sandbox's /dev/pts (`tty` answers it; the host's are not there).
            use nix::fcntl::OFlag;
            let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY)?;
            nix::pty::unlockpt(&master)?;
            let fd = sys::own_fd(std::os::fd::IntoRawFd::into_raw_fd(master));
            nix::fcntl::fcntl(
                fd.as_fd(),
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )?;
            Ok((Reply::Opened, Some(fd)))
        }
        Request::Used { filesystems, trees } => {
            let mut bytes = 0u64;
            for path in &filesystems {
                let st = nix::sys::statvfs::statvfs(path.as_path())?;
                let used = st.blocks().saturating_sub(st.blocks_free());
                bytes = bytes.saturating_add(used.saturating_mul(st.fragment_size()));
            }
            for tree in &trees {
                bytes = bytes.saturating_add(tree_bytes(tree));
            }
            Ok((Reply::Used { bytes }, None))
        }
        Request::Stop => Ok((Reply::Done, None)),
        Request::Mount { .. } | Request::Proceed => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "mounts are taken only while the sandbox is built",
        )),
    }
}

/// The sizes of the regular files under `dir` (links not followed), walking at most
/// 100,000 entries: enough to say roughly how much a run left behind.
pub(super) fn tree_bytes(dir: &Path) -> u64 {
    // Bounded in entries, depth, directories waiting and time: the tree is the command's
    // to shape (a deep chain of long names), and moat waits for the answer.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let (mut bytes, mut seen) = (0u64, 0usize);
    let mut todo = vec![(dir.to_path_buf(), 0usize)];
    while let Some((d, depth)) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            seen += 1;
            if seen > 100_000 || std::time::Instant::now() > deadline {
                return bytes;
            }
            match entry.file_type() {
                Ok(t) if t.is_dir() && depth < 32 && todo.len() < 4096 => {
                    todo.push((entry.path(), depth + 1));
                }
                Ok(t) if t.is_file() => {
                    bytes = bytes.saturating_add(entry.metadata().map_or(0, |m| m.len()));
                }
                _ => {}
            }
        }
    }
    bytes
}
