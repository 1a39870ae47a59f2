//! moat's sandbox: Linux namespaces (user, mount, pid, uts, ipc, net) with the host's root
//! read-only, a private /tmp, a writable work directory, and — when the sandbox has a
//! network — a TAP whose descriptor moat's engine holds, so every frame the sandbox sends
//! ends in moat.
//!
//! The sandbox is built and run by a *supervisor*: a fresh exec of the host program that
//! must call [`supervisor_entry`] first thing in `main`. See `supervisor.rs` for the theory
//! of operation and `proto.rs` for the control channel.
#![deny(unsafe_code)]

mod proto;
mod supervisor;
mod sys;

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use proto::{NetSpec, SpawnSpec};

/// Interface setup in the caller's own network namespace, for tools that build a
/// throwaway world (`moat demo`): bring an interface up, add IPv4 addresses.
pub mod netconf {
    use std::io;
    use std::net::Ipv4Addr;

    /// Brings interface `name` up.
    pub fn set_up(name: &str) -> io::Result<()> {
        crate::sys::set_up(name)
    }

    /// Sets the IPv4 address of `name`, which may be an alias such as `lo:1` (the legacy
    /// way to hold several IPv4 addresses on one interface).
    pub fn set_ipv4(name: &str, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
        crate::sys::set_ipv4(name, addr, prefix)
    }
}
pub use supervisor::{SUPERVISOR_ENV, supervisor_entry};

use proto::{Reply, Request, Spec};

/// Why a sandbox operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// The state directory could not be created.
    #[error("cannot create the sandbox's state directory under {dir}: {source}")]
    StateDir {
        /// The parent directory.
        dir: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The supervisor could not be started.
    #[error("cannot start the sandbox supervisor {helper}: {source}")]
    StartSupervisor {
        /// The program that was to be the supervisor.
        helper: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A step of building the sandbox failed.
    #[error("sandbox setup failed: {stage}: {error}{hint}")]
    Setup {
        /// The step.
        stage: String,
        /// The OS error text.
        error: String,
        /// What to do about it.
        hint: &'static str,
    },
    /// The control channel to the supervisor failed.
    #[error("lost the sandbox supervisor: {0}")]
    Channel(io::Error),
    /// A command could not be started.
    #[error("cannot start the command: {0}")]
    Spawn(String),
    /// A file operation inside the sandbox failed.
    #[error("{path}: {error}")]
    Fs {
        /// The path inside the sandbox.
        path: PathBuf,
        /// The OS error text.
        error: String,
    },
}

fn hint_for(stage: &str, error: &str) -> &'static str {
    if stage.contains("namespaces")
        && (error.contains("EPERM") || error.contains("not permitted") || error.contains("ENOSPC"))
    {
        "; unprivileged user namespaces may be disabled: check sysctl kernel.unprivileged_userns_clone, user.max_user_namespaces and kernel.apparmor_restrict_unprivileged_userns"
    } else if stage.contains("tun") {
        "; /dev/net/tun must exist and be readable and writable by you (modprobe tun; chmod 0666 /dev/net/tun)"
    } else {
        ""
    }
}

/// How a sandbox is built.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Name and host name: `[a-z0-9_-]{1,63}`.
    pub name: String,
    /// The work directory's path inside the sandbox (writable).
    pub workdir: PathBuf,
    /// A host directory to back the work directory; `None` for a private empty one.
    pub workdir_host: Option<PathBuf>,
    /// The network interface; `None` for no interface but `lo`.
    pub network: Option<NetSpec>,
    /// Contents of the sandbox's /etc/resolv.conf, if it gets its own.
    pub resolv_conf: Option<String>,
    /// Contents of the sandbox's /etc/hosts, if it gets its own.
    pub hosts: Option<String>,
    /// The program to run as supervisor; it must call [`supervisor_entry`] first. Default:
    /// this program.
    pub helper: Option<PathBuf>,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// This signal killed it.
    Signal(i32),
}

impl ExitStatus {
    /// The shell's convention: the code, or 128 + the signal number.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }
}

/// A running sandbox. Dropping it kills everything inside and removes its state.
#[derive(Debug)]
pub struct Sandbox {
    supervisor: Option<Child>,
    ctl: OwnedFd,
    tap: Option<OwnedFd>,
    state_dir: PathBuf,
    workdir: PathBuf,
    exits: VecDeque<(i32, ExitStatus)>,
}

/// Valid sandbox names: `[a-z0-9_-]{1,63}` (also the sandbox's host name).
pub fn valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn make_state_dir(name: &str) -> Result<PathBuf, SandboxError> {
    let base = std::env::temp_dir();
    let template = base.join(format!("moat-{name}-XXXXXX"));
    nix::unistd::mkdtemp(&template).map_err(|e| SandboxError::StateDir {
        dir: base,
        source: e.into(),
    })
}

impl Sandbox {
    /// Builds the sandbox: starts the supervisor and waits until it is ready.
    pub fn start(config: &SandboxConfig) -> Result<Sandbox, SandboxError> {
        let state_dir = make_state_dir(&config.name)?;
        let result = Sandbox::start_in(config, state_dir.clone());
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&state_dir);
        }
        result
    }

    fn start_in(config: &SandboxConfig, state_dir: PathBuf) -> Result<Sandbox, SandboxError> {
        let io_err = |source: io::Error| SandboxError::StateDir {
            dir: state_dir.clone(),
            source,
        };
        let root_dir = state_dir.join("root");
        std::fs::create_dir(&root_dir).map_err(io_err)?;
        let workdir_host = match &config.workdir_host {
            Some(dir) => dir.clone(),
            None => {
                let dir = state_dir.join("work");
                std::fs::create_dir(&dir).map_err(io_err)?;
                dir
            }
        };
        let write_file =
            |name: &str, text: &Option<String>| -> Result<Option<PathBuf>, SandboxError> {
                match text {
                    Some(text) => {
                        let path = state_dir.join(name);
                        std::fs::write(&path, text).map_err(io_err)?;
                        Ok(Some(path))
                    }
                    None => Ok(None),
                }
            };
        let resolv_conf = write_file("resolv.conf", &config.resolv_conf)?;
        let hosts = write_file("hosts", &config.hosts)?;
        let spec = Spec {
            name: config.name.clone(),
            outside_uid: nix::unistd::geteuid().as_raw(),
            outside_gid: nix::unistd::getegid().as_raw(),
            root_dir,
            workdir: config.workdir.clone(),
            workdir_host,
            resolv_conf,
            hosts,
            network: config.network.clone(),
        };

        let (ours, theirs) = proto::socket_pair().map_err(SandboxError::Channel)?;
        // The supervisor inherits its end across exec; ours stays close-on-exec.
        nix::fcntl::fcntl(
            theirs.as_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )
        .map_err(|e| SandboxError::Channel(e.into()))?;
        let helper = match &config.helper {
            Some(h) => h.clone(),
            None => std::env::current_exe().map_err(|source| SandboxError::StartSupervisor {
                helper: PathBuf::from("/proc/self/exe"),
                source,
            })?,
        };
        let child = Command::new(&helper)
            .env(SUPERVISOR_ENV, theirs.as_raw_fd().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|source| SandboxError::StartSupervisor {
                helper: helper.clone(),
                source,
            })?;
        drop(theirs);
        let mut sandbox = Sandbox {
            supervisor: Some(child),
            ctl: ours,
            tap: None,
            state_dir,
            workdir: config.workdir.clone(),
            exits: VecDeque::new(),
        };
        proto::send(sandbox.ctl.as_raw_fd(), &spec, &[]).map_err(SandboxError::Channel)?;
        match sandbox.recv_reply()? {
            (Reply::Ready, mut fds) => {
                if config.network.is_some() {
                    sandbox.tap = fds.pop();
                    if sandbox.tap.is_none() {
                        return Err(SandboxError::Channel(io::Error::other(
                            "the supervisor sent no TAP",
                        )));
                    }
                }
                Ok(sandbox)
            }
            (Reply::SetupFailed { stage, error }, _) => Err(SandboxError::Setup {
                hint: hint_for(&stage, &error),
                stage,
                error,
            }),
            (other, _) => Err(SandboxError::Channel(io::Error::other(format!(
                "unexpected reply {other:?}"
            )))),
        }
    }

    /// Takes the TAP's descriptor (once), for the engine.
    pub fn take_tap(&mut self) -> Option<OwnedFd> {
        self.tap.take()
    }

    /// The work directory's path inside the sandbox.
    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    /// The control channel, to wait on for [`Sandbox::next_exit`] with poll/epoll.
    pub fn event_fd(&self) -> BorrowedFd<'_> {
        self.ctl.as_fd()
    }

    /// Receives the next reply, queueing exit notifications that arrive in between.
    fn recv_reply(&mut self) -> Result<(Reply, Vec<OwnedFd>), SandboxError> {
        loop {
            if let (Some(reply), fds) = self.recv_reply_or_exit()? {
                return Ok((reply, fds));
            }
        }
    }

    fn request(
        &mut self,
        request: &Request,
        fds: &[RawFd],
    ) -> Result<(Reply, Vec<OwnedFd>), SandboxError> {
        proto::send(self.ctl.as_raw_fd(), request, fds).map_err(SandboxError::Channel)?;
        self.recv_reply()
    }

    /// Starts a command with the given standard streams; returns its pid (in moat's pid
    /// namespace, so moat can signal it directly).
    pub fn spawn(
        &mut self,
        spec: SpawnSpec,
        stdio: [BorrowedFd<'_>; 3],
    ) -> Result<i32, SandboxError> {
        let fds = stdio.map(|f| f.as_raw_fd());
        match self.request(&Request::Spawn(spec), &fds)?.0 {
            Reply::Spawned { pid } => Ok(pid),
            Reply::SpawnFailed { error } | Reply::Failed { error } => {
                Err(SandboxError::Spawn(error))
            }
            other => Err(SandboxError::Channel(io::Error::other(format!(
                "unexpected reply {other:?}"
            )))),
        }
    }

    /// Sends `signal` to a command started with [`Sandbox::spawn`].
    pub fn signal(&mut self, pid: i32, signal: i32) -> Result<(), SandboxError> {
        match self.request(&Request::Signal { pid, signal }, &[])?.0 {
            Reply::Done => Ok(()),
            Reply::Failed { error } => Err(SandboxError::Spawn(error)),
            other => Err(SandboxError::Channel(io::Error::other(format!(
                "unexpected reply {other:?}"
            )))),
        }
    }

    /// The next command exit, waiting for it when `block`.
    pub fn next_exit(&mut self, block: bool) -> Result<Option<(i32, ExitStatus)>, SandboxError> {
        if let Some(e) = self.exits.pop_front() {
            return Ok(Some(e));
        }
        if !block {
            let mut fds = [nix::poll::PollFd::new(
                self.ctl.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            match nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO) {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(e) => return Err(SandboxError::Channel(e.into())),
            }
        }
        let (reply, _) = self.recv_reply_or_exit()?;
        match reply {
            Some(other) => Err(SandboxError::Channel(io::Error::other(format!(
                "unexpected reply {other:?}"
            )))),
            None => Ok(self.exits.pop_front()),
        }
    }

    /// Like `recv_reply`, but returns `None` as soon as an exit was queued.
    fn recv_reply_or_exit(&mut self) -> Result<(Option<Reply>, Vec<OwnedFd>), SandboxError> {
        match proto::recv::<Reply>(self.ctl.as_raw_fd()) {
            Ok(Some((Reply::Exited { pid, code, signal }, _))) => {
                let status = match (code, signal) {
                    (Some(c), _) => ExitStatus::Code(c),
                    (None, Some(s)) => ExitStatus::Signal(s),
                    (None, None) => ExitStatus::Code(255),
                };
                self.exits.push_back((pid, status));
                Ok((None, Vec::new()))
            }
            Ok(Some((reply, fds))) => Ok((Some(reply), fds)),
            Ok(None) => Err(SandboxError::Channel(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the supervisor exited",
            ))),
            Err(e) => Err(SandboxError::Channel(e)),
        }
    }

    /// Waits for command `pid` to end.
    pub fn wait(&mut self, pid: i32) -> Result<ExitStatus, SandboxError> {
        loop {
            if let Some(i) = self.exits.iter().position(|(p, _)| *p == pid) {
                if let Some((_, status)) = self.exits.remove(i) {
                    return Ok(status);
                }
            }
            self.recv_reply_or_exit()?;
        }
    }

    fn open(&mut self, path: &Path, write: bool) -> Result<std::fs::File, SandboxError> {
        let fs_err = |error: String| SandboxError::Fs {
            path: path.to_owned(),
            error,
        };
        let request = Request::Open {
            path: path.to_owned(),
            write,
        };
        match self.request(&request, &[])? {
            (Reply::Opened, mut fds) => fds
                .pop()
                .map(std::fs::File::from)
                .ok_or_else(|| fs_err("no descriptor".into())),
            (Reply::Failed { error }, _) => Err(fs_err(error)),
            (other, _) => Err(fs_err(format!("unexpected reply {other:?}"))),
        }
    }

    /// Reads a whole file, as the sandbox sees it.
    pub fn read_file(&mut self, path: impl AsRef<Path>) -> Result<Vec<u8>, SandboxError> {
        let path = path.as_ref();
        let mut file = self.open(path, false)?;
        let mut out = Vec::new();
        file.read_to_end(&mut out).map_err(|e| SandboxError::Fs {
            path: path.to_owned(),
            error: e.to_string(),
        })?;
        Ok(out)
    }

    /// Creates or replaces a file, as the sandbox sees it.
    pub fn write_file(&mut self, path: impl AsRef<Path>, data: &[u8]) -> Result<(), SandboxError> {
        let path = path.as_ref();
        let mut file = self.open(path, true)?;
        file.write_all(data).map_err(|e| SandboxError::Fs {
            path: path.to_owned(),
            error: e.to_string(),
        })
    }

    /// Lists a directory, as the sandbox sees it (sorted names).
    pub fn list(&mut self, path: impl AsRef<Path>) -> Result<Vec<OsString>, SandboxError> {
        let path = path.as_ref();
        match self
            .request(
                &Request::List {
                    path: path.to_owned(),
                },
                &[],
            )?
            .0
        {
            Reply::Listed { entries } => Ok(entries.into_iter().map(OsString::from_vec).collect()),
            Reply::Failed { error } => Err(SandboxError::Fs {
                path: path.to_owned(),
                error,
            }),
            other => Err(SandboxError::Channel(io::Error::other(format!(
                "unexpected reply {other:?}"
            )))),
        }
    }

    /// Removes a file or an empty directory, as the sandbox sees it.
    pub fn remove(&mut self, path: impl AsRef<Path>) -> Result<(), SandboxError> {
        let path = path.as_ref();
        match self
            .request(
                &Request::Remove {
                    path: path.to_owned(),
                },
                &[],
            )?
            .0
        {
            Reply::Done => Ok(()),
            Reply::Failed { error } => Err(SandboxError::Fs {
                path: path.to_owned(),
                error,
            }),
            other => Err(SandboxError::Channel(io::Error::other(format!(
                "unexpected reply {other:?}"
            )))),
        }
    }

    /// Kills everything in the sandbox, waits for the supervisor and removes the state.
    pub fn stop(mut self) -> Result<(), SandboxError> {
        self.shutdown();
        Ok(())
    }

    fn shutdown(&mut self) {
        let Some(mut child) = self.supervisor.take() else {
            return;
        };
        let _ = proto::send(self.ctl.as_raw_fd(), &Request::Stop, &[]);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        self.tap = None;
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("agent"));
        assert!(valid_name("a-b_c9"));
        assert!(!valid_name(""));
        assert!(!valid_name("Agent"));
        assert!(!valid_name("a.b"));
        assert!(!valid_name(&"a".repeat(64)));
    }

    #[test]
    fn shell_codes() {
        assert_eq!(ExitStatus::Code(3).shell_code(), 3);
        assert_eq!(ExitStatus::Signal(15).shell_code(), 143);
    }
}
