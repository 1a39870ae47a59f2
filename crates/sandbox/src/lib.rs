//! moat's sandbox: Linux namespaces (user, mount, pid, uts, ipc, net) that see the host's
//! system directories read-only and nothing else of it unless granted, a private /tmp and
//! home, a writable work directory, a seccomp filter, limits, and — when the sandbox has a
//! network — a TAP whose descriptor moat's engine holds, so every frame the sandbox sends
//! ends in moat.
//!
//! The sandbox is built and run by a *supervisor*: a fresh exec of the host program that
//! must call [`supervisor_entry`] first thing in `main`. See `supervisor/mod.rs` for the theory
//! of operation and `proto.rs` for the control channel.
#![deny(unsafe_code)]

mod hint;
mod host_file;
mod limits;
pub mod netns;
mod proto;
pub mod relink;
mod rtnl;
mod seccomp;
mod state;
mod supervisor;
mod sys;
mod tap;

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use host_file::{HostFile, HostFileError};
pub use limits::{LimitHit, Limits, parse_size};
pub use proto::{Grant, MAX_PRESERVED_FDS, NetSpec, SpawnSpec, TmpfsSizes};
pub use seccomp::SeccompError;

/// The seccomp filter's allow list and its plain definition, for probes of the boundary
/// (the end-to-end tests, `moat selftest`).
pub mod syscalls {
    pub use crate::seccomp::table::{
        Answer, CALLS, Call, Guard, NEWEST, Verdict, answer, refused_always,
    };
}

/// The attempts of `moat selftest`'s probes that need a system call without a safe
/// wrapper: what hostile code inside a sandbox would try (terminal input, socket families
/// and namespace flags with garbage in a register's upper half, refused calls, a keyring's
/// keys), and the caller's side of the keyring probe.
pub mod probe {
    pub use crate::sys::{
        add_session_key, call_without_user_memory, push_terminal_input, read_session_key,
        set_controlling_terminal, socket_at_full_width, unshare_at_full_width,
    };
}

/// Terminal helpers for relaying a pseudo-terminal (window size).
pub mod tty {
    pub use crate::sys::WindowSize;
    use std::io;
    use std::os::fd::{AsRawFd, BorrowedFd};

    /// The window size of the terminal on `fd`.
    pub fn window_size(fd: BorrowedFd<'_>) -> io::Result<WindowSize> {
        crate::sys::window_size(fd.as_raw_fd())
    }

    /// Sets the window size of the terminal on `fd` (its foreground group gets SIGWINCH).
    pub fn set_window_size(fd: BorrowedFd<'_>, size: WindowSize) -> io::Result<()> {
        crate::sys::set_window_size(fd.as_raw_fd(), size)
    }
}

/// The allocator's side of moat's memory budget.
pub mod memory {
    /// Makes large allocations (128 KiB and up) fresh anonymous mappings, committed page
    /// by page as they are written and given back when freed. The engine's buffer budget
    /// counts on it; call it before starting an engine.
    pub fn large_allocations_from_fresh_pages() {
        crate::sys::large_allocations_from_fresh_pages()
    }
}

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

use state::{id_is_mapped, make_state_dir, write_state_file};

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
    /// A grant could not be shown through an idmapped mount (its file system or this
    /// kernel cannot idmap); [`Sandbox::start`] falls back and says so.
    #[error("{path}: cannot be idmapped: {source}")]
    Idmap {
        /// The host path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// The host uid and gid the sandbox's root is when moat runs as root and every grant can
/// be idmapped: an unprivileged id no account uses ("moat" in ASCII, 0x6d6f6174), so root
/// inside reads only what every user of the host may read, while the grants and the work
/// directory, shown through idmapped mounts, keep the caller's ownership.
pub const UNPRIVILEGED_ID: u32 = 0x6d6f_6174;

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
    /// Files whose contents replace those of existing files inside, read-only (the trust
    /// bundle with moat's interception CA over the system bundles). Paths inside that do
    /// not exist are skipped; symlinks are followed inside the sandbox.
    pub files: Vec<(PathBuf, String)>,
    /// The program to run as supervisor; it must call [`supervisor_entry`] first. Default:
    /// this program.
    pub helper: Option<PathBuf>,
    /// Host paths granted at their own path (`--ro`, `--rw`), in order; absolute.
    pub grants: Vec<Grant>,
    /// The fresh writable home directory's path inside.
    pub home: PathBuf,
    /// Sizes of /tmp, the home directory and /dev/shm.
    pub sizes: TmpfsSizes,
    /// Limits for the whole sandbox.
    pub limits: Limits,
    /// The limits the user asked for (the rest of `limits` are defaults): a limit that
    /// cannot be applied as asked is reported only for these.
    pub asked_limits: Limits,
}

impl SandboxConfig {
    /// A sandbox named `name` with the defaults: work directory `/workspace` (private), no
    /// network, home `/root`, default sizes and limits, no grants.
    pub fn new(name: impl Into<String>) -> SandboxConfig {
        SandboxConfig {
            name: name.into(),
            workdir: PathBuf::from("/workspace"),
            workdir_host: None,
            network: None,
            resolv_conf: None,
            hosts: None,
            files: Vec::new(),
            helper: None,
            grants: Vec::new(),
            home: PathBuf::from(DEFAULT_HOME),
            sizes: TmpfsSizes::default(),
            limits: Limits {
                pids: Some(DEFAULT_PIDS_LIMIT),
                ..Limits::default()
            },
            asked_limits: Limits::default(),
        }
    }
}

/// The home directory inside: the sandbox's user is root there.
pub const DEFAULT_HOME: &str = "/root";
/// Processes a sandbox may hold unless told otherwise: plenty for a parallel build, and a
/// fork bomb stops there.
pub const DEFAULT_PIDS_LIMIT: u64 = 4096;

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
    cgroup: Option<limits::Cgroup>,
    notes: Vec<String>,
}

/// Valid sandbox names: `[a-z0-9_-]{1,63}` (also the sandbox's host name).
pub fn valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Takes moat's descriptors 3..3+`count`, inherited from its caller, to hand to a command
/// on purpose (`--preserve-fds`). Call it before opening anything, so that none of the
/// numbers is one of moat's own; fails if one is not open.
pub fn take_inherited_fds(count: usize) -> io::Result<Vec<OwnedFd>> {
    (3..3 + count as RawFd).map(sys::take_inherited).collect()
}

/// Where this user's sandboxes keep their state: `$TMPDIR/moat-UID`, mode 0700, one
/// directory per run inside. Every sandbox hides this directory from its own view
/// wherever a grant would show it, so no sandbox sees another's state or work directory.
pub fn state_base() -> PathBuf {
    std::env::temp_dir().join(format!("moat-{}", nix::unistd::geteuid()))
}

impl Sandbox {
    /// Builds the sandbox: starts the supervisor and waits until it is ready.
    ///
    /// As root, the sandbox's root is the unprivileged [`UNPRIVILEGED_ID`], with the grants
    /// and the work directory shown through idmapped mounts; where one of them cannot be
    /// idmapped, the sandbox is built again with the host's root as its root (as a normal
    /// user's sandbox is that user), and [`Sandbox::limit_notes`] says so.
    pub fn start(config: &SandboxConfig) -> Result<Sandbox, SandboxError> {
        const AS_ROOT: &str = "so in this run the sandbox's root is the host's root and may read every root-only file of its view";
        let why_not = if !nix::unistd::geteuid().is_root() {
            return Sandbox::start_once(config, false);
        } else if !id_is_mapped(UNPRIVILEGED_ID) {
            format!(
                "moat runs in a user namespace that does not map uid and gid {UNPRIVILEGED_ID} (the sandbox's unprivileged root), {AS_ROOT}"
            )
        } else {
            match Sandbox::start_once(config, true) {
                Err(SandboxError::Idmap { path, source }) => format!(
                    "{}: its file system cannot be idmapped ({source}), {AS_ROOT}; grant only paths on file systems with idmapped mounts (ext4, xfs, btrfs, tmpfs) to keep them out of reach",
                    path.display()
                ),
                Err(SandboxError::Setup { stage, .. }) if stage == proto::UNREACHABLE_GRANT => {
                    format!(
                        "a grant lies inside a directory of the view that only the host's root may enter, {AS_ROOT}; grant that directory instead to keep the rest out of reach"
                    )
                }
                other => return other,
            }
        };
        let mut sandbox = Sandbox::start_once(config, false)?;
        sandbox.notes.push(why_not);
        Ok(sandbox)
    }

    fn start_once(config: &SandboxConfig, idmapped: bool) -> Result<Sandbox, SandboxError> {
        let state_dir = make_state_dir(&config.name)?;
        let result = Sandbox::start_in(config, state_dir.clone(), idmapped);
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&state_dir);
        }
        result
    }

    fn start_in(
        config: &SandboxConfig,
        state_dir: PathBuf,
        idmapped: bool,
    ) -> Result<Sandbox, SandboxError> {
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
                        write_state_file(&path, text).map_err(io_err)?;
                        Ok(Some(path))
                    }
                    None => Ok(None),
                }
            };
        let resolv_conf = write_file("resolv.conf", &config.resolv_conf)?;
        let hosts = write_file("hosts", &config.hosts)?;
        let mut files = Vec::new();
        for (i, (inside, text)) in config.files.iter().enumerate() {
            if let Some(source) = write_file(&format!("file{i}"), &Some(text.clone()))? {
                files.push((inside.clone(), source));
            }
        }
        let (outside_uid, outside_gid) = if idmapped {
            (UNPRIVILEGED_ID, UNPRIVILEGED_ID)
        } else {
            (
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
            )
        };
        let spec = Spec {
            name: config.name.clone(),
            outside_uid,
            outside_gid,
            idmapped,
            root_dir,
            workdir: config.workdir.clone(),
            workdir_host,
            resolv_conf,
            hosts,
            files,
            network: config.network.clone(),
            grants: config.grants.clone(),
            hidden: vec![state_base()],
            home: config.home.clone(),
            sizes: config.sizes,
            rlimits: Vec::new(),
        };
        let mut spec = spec;
        let unique = state_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| config.name.clone());
        let applied = limits::apply(&unique, &config.limits, &config.asked_limits);
        spec.rlimits = applied.rlimits;

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
            cgroup: applied.cgroup,
            notes: applied.notes,
        };
        // Into the group before the supervisor builds anything: the supervisor waits for
        // the spec sent below, so every process of the sandbox starts inside.
        if let (Some(cgroup), Some(child)) = (&sandbox.cgroup, &sandbox.supervisor) {
            cgroup.add(child.id()).map_err(|e| SandboxError::Setup {
                stage: format!("move the supervisor into {}", cgroup.describe()),
                error: e.to_string(),
                hint: "",
            })?;
        }
        proto::send(sandbox.ctl.as_raw_fd(), &spec, &[]).map_err(SandboxError::Channel)?;
        if idmapped {
            sandbox.hand_over_identity(config, &spec)?;
        }
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
                hint: hint::hint_for(&stage, &error),
                stage,
                error,
            }),
            (other, _) => Err(SandboxError::Channel(io::Error::other(format!(
                "unexpected reply {other:?}"
            )))),
        }
    }

    /// The idmapped identity, from moat's side (root): once the supervisor has unshared,
    /// writes its user namespace's map (`0 ID 1`, which only root outside may write for
    /// another id), sends each grant and a given work directory as a detached mount
    /// idmapped through that namespace (only root outside may idmap a host file system),
    /// and gives the run's own state to the id, which builds the rest.
    fn hand_over_identity(
        &mut self,
        config: &SandboxConfig,
        spec: &Spec,
    ) -> Result<(), SandboxError> {
        let channel = |e: io::Error| SandboxError::Channel(e);
        match self.recv_reply()? {
            (Reply::Unshared, _) => {}
            (Reply::SetupFailed { stage, error }, _) => {
                return Err(SandboxError::Setup {
                    hint: hint::hint_for(&stage, &error),
                    stage,
                    error,
                });
            }
            (other, _) => {
                return Err(channel(io::Error::other(format!(
                    "unexpected reply {other:?}"
                ))));
            }
        }
        let pid = self
            .supervisor
            .as_ref()
            .map(Child::id)
            .ok_or_else(|| channel(io::Error::other("no supervisor")))?;
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        let map = format!("0 {UNPRIVILEGED_ID} 1");
        for (file, text) in [("setgroups", "deny"), ("uid_map", &map), ("gid_map", &map)] {
            std::fs::write(proc_dir.join(file), text).map_err(|e| SandboxError::Setup {
                stage: format!("write the sandbox's {file}"),
                error: e.to_string(),
                hint: "",
            })?;
        }
        let userns = std::fs::File::open(proc_dir.join("ns/user"))
            .map(OwnedFd::from)
            .map_err(channel)?;
        let mut paths: Vec<&Path> = spec.grants.iter().map(|g| g.path.as_path()).collect();
        if config.workdir_host.is_some() {
            paths.push(&spec.workdir_host);
        }
        for (index, path) in paths.into_iter().enumerate() {
            let idmap_err = |source| SandboxError::Idmap {
                path: path.to_path_buf(),
                source,
            };
            let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
                .map_err(|e| idmap_err(io::Error::other(e)))?;
            // Only "this file system or kernel cannot idmap" falls back (and says so); a path
            // that cannot be opened is an error of its own.
            let setup = |stage: &str, e: io::Error| SandboxError::Setup {
                stage: format!("{stage} {}", path.display()),
                error: e.to_string(),
                hint: "",
            };
            let tree = sys::clone_tree(&c).map_err(|e| setup("open the grant", e))?;
            sys::idmap_tree(&tree, &userns).map_err(|e| match e.raw_os_error() {
                Some(libc::EINVAL | libc::EPERM | libc::EOPNOTSUPP | libc::ENOSYS) => idmap_err(e),
                _ => setup("idmap the grant", e),
            })?;
            proto::send(
                self.ctl.as_raw_fd(),
                &Request::Mount { index },
                &[tree.as_raw_fd()],
            )
            .map_err(channel)?;
        }
        // The run's own directory, its root's mount point and a private work directory
        // belong to the id; the base of every run's state stays root's, and the id may
        // enter it (see `state_mode`).
        let to_id = |path: &Path| {
            std::os::unix::fs::chown(path, Some(UNPRIVILEGED_ID), Some(UNPRIVILEGED_ID))
        };
        let mut own = vec![self.state_dir.clone(), spec.root_dir.clone()];
        if config.workdir_host.is_none() {
            own.push(spec.workdir_host.clone());
        }
        for path in &own {
            to_id(path).map_err(|source| SandboxError::StateDir {
                dir: path.clone(),
                source,
            })?;
        }
        proto::send(self.ctl.as_raw_fd(), &Request::Proceed, &[]).map_err(channel)
    }

    /// One line for each limit that could not be applied as asked.
    pub fn limit_notes(&self) -> &[String] {
        &self.notes
    }

    /// The limit that was exceeded, if one was (read from the sandbox's control group).
    pub fn limit_hit(&self) -> Option<LimitHit> {
        self.cgroup.as_ref().and_then(limits::Cgroup::exceeded)
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

    /// Starts a command with the given descriptors — stdin, stdout, stderr, then any it
    /// gets as 3, 4, ... — and returns its pid (in moat's pid namespace, so moat can signal
    /// it directly). It gets nothing else of moat's.
    pub fn spawn(&mut self, spec: SpawnSpec, fds: &[BorrowedFd<'_>]) -> Result<i32, SandboxError> {
        if fds.len() < 3 || fds.len() > 3 + MAX_PRESERVED_FDS {
            return Err(SandboxError::Spawn(format!(
                "a command takes stdin, stdout, stderr and at most {MAX_PRESERVED_FDS} more descriptors"
            )));
        }
        let fds: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
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

    /// A pseudo-terminal of the sandbox's own `/dev/pts`: its master, for moat's relay,
    /// and the command's side, which `tty` inside names (`/dev/pts/N`).
    pub fn open_pty(&mut self) -> Result<(OwnedFd, OwnedFd), SandboxError> {
        let fail = |error: String| SandboxError::Fs {
            path: PathBuf::from("/dev/ptmx"),
            error,
        };
        let master = match self.request(&Request::OpenPty, &[])? {
            (Reply::Opened, mut fds) => fds.pop().ok_or_else(|| fail("no descriptor".into()))?,
            (Reply::Failed { error }, _) => return Err(fail(error)),
            (other, _) => return Err(fail(format!("unexpected reply {other:?}"))),
        };
        let peer = sys::pty_peer(master.as_fd()).map_err(|e| fail(e.to_string()))?;
        Ok((master, peer))
    }

    /// How many bytes the sandbox's own file systems at `filesystems` (its /tmp, its home)
    /// and the files under `trees` (a private work directory) take now: what is discarded
    /// when the sandbox stops.
    pub fn used_bytes(
        &mut self,
        filesystems: &[PathBuf],
        trees: &[PathBuf],
    ) -> Result<u64, SandboxError> {
        let request = Request::Used {
            filesystems: filesystems.to_vec(),
            trees: trees.to_vec(),
        };
        match self.request(&request, &[])? {
            (Reply::Used { bytes }, _) => Ok(bytes),
            (Reply::Failed { error }, _) => Err(SandboxError::Fs {
                path: filesystems.first().cloned().unwrap_or_default(),
                error,
            }),
            (other, _) => Err(SandboxError::Channel(io::Error::other(format!(
                "unexpected reply {other:?}"
            )))),
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
        if let Some(cgroup) = self.cgroup.take() {
            cgroup.remove();
        }
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
