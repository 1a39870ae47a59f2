//! The control channel between moat and the sandbox's supervisor: JSON messages over a
//! `SOCK_SEQPACKET` socket pair (one message per packet, boundaries kept), with file
//! descriptors passed alongside (`SCM_RIGHTS`) for the TAP, the command's stdio and opened
//! files.

use std::ffi::OsString;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::{Deserialize, Serialize};

/// Largest control message; file contents never travel here (descriptors do).
pub const MAX_MESSAGE: usize = 256 * 1024;
/// At most this many descriptors ride on one message: stdio and the preserved ones.
const MAX_FDS: usize = 3 + MAX_PRESERVED_FDS;
/// At most this many descriptors beyond stdio are passed to a command (`--preserve-fds`).
pub const MAX_PRESERVED_FDS: usize = 64;

/// What the supervisor needs to build the sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    /// The sandbox's name, also its host name.
    pub name: String,
    /// The host uid that root inside the sandbox maps to.
    pub outside_uid: u32,
    /// The host gid that root inside the sandbox maps to.
    pub outside_gid: u32,
    /// moat (root) writes the map of an unprivileged identity and sends the grants and
    /// the work directory as idmapped mounts: after unsharing, the supervisor answers
    /// [`Reply::Unshared`], takes [`Request::Mount`]s until [`Request::Proceed`], then
    /// becomes root of its namespace (the unprivileged host uid) before it builds.
    pub idmapped: bool,
    /// Where the new root is assembled (an empty host directory).
    pub root_dir: PathBuf,
    /// The work directory's path inside the sandbox.
    pub workdir: PathBuf,
    /// The host directory mounted writable at `workdir`.
    pub workdir_host: PathBuf,
    /// Host file to mount over /etc/resolv.conf, if any.
    pub resolv_conf: Option<PathBuf>,
    /// Host file to mount over /etc/hosts, if any.
    pub hosts: Option<PathBuf>,
    /// Host files mounted read-only over files inside (path inside, host file); an
    /// inside path that does not exist is skipped.
    pub files: Vec<(PathBuf, PathBuf)>,
    /// The sandbox's interface; `None` means no interface but `lo`.
    pub network: Option<NetSpec>,
    /// Host paths granted at their own path inside, in order.
    pub grants: Vec<Grant>,
    /// Host paths hidden wherever they would be visible (moat's own state).
    pub hidden: Vec<PathBuf>,
    /// The fresh writable home directory's path inside.
    pub home: PathBuf,
    /// Sizes of the sandbox's own file systems.
    pub sizes: TmpfsSizes,
    /// Resource limits set on every command (the fallback where no cgroup could be made).
    pub rlimits: Vec<RLimit>,
}

/// A host path made visible inside the sandbox at the same path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The path (absolute, without symlinks).
    pub path: PathBuf,
    /// Writable (`--rw`) rather than read-only (`--ro`).
    pub writable: bool,
}

/// Bytes each of the sandbox's memory-backed file systems may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TmpfsSizes {
    /// `/tmp`.
    pub tmp: u64,
    /// The home directory.
    pub home: u64,
    /// `/dev/shm`.
    pub shm: u64,
}

impl Default for TmpfsSizes {
    /// /tmp and the home directory 1 GiB each (enough for a package cache), /dev/shm
    /// 64 MiB (the container runtimes' default). Under a memory limit their pages count
    /// against it too.
    fn default() -> TmpfsSizes {
        TmpfsSizes {
            tmp: 1 << 30,
            home: 1 << 30,
            shm: 64 << 20,
        }
    }
}

/// A resource limit (setrlimit(2)), soft and hard alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RLimit {
    /// RLIMIT_NPROC: processes of the sandbox's user (counted per user namespace).
    Processes(u64),
    /// RLIMIT_AS: address space of each process, in bytes.
    AddressSpace(u64),
}

/// The sandbox's one network interface.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetSpec {
    /// Interface name inside the sandbox.
    pub tap_name: String,
    /// Interface MTU.
    pub mtu: u32,
    /// The sandbox's IPv4 address.
    pub guest_v4: Ipv4Addr,
    /// The gateway (moat's stack).
    pub gateway_v4: Ipv4Addr,
    /// Prefix length of the link.
    pub prefix_v4: u8,
    /// The sandbox's IPv6 address.
    pub guest_v6: Ipv6Addr,
    /// The IPv6 gateway.
    pub gateway_v6: Ipv6Addr,
    /// IPv6 prefix length of the link.
    pub prefix_v6: u8,
}

/// A command to start inside the sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpawnSpec {
    /// Program and arguments, as bytes.
    pub argv: Vec<Vec<u8>>,
    /// The complete environment, `KEY=VALUE` as bytes.
    pub env: Vec<Vec<u8>>,
    /// Working directory inside the sandbox.
    pub cwd: PathBuf,
    /// Standard input is a terminal to make the command's controlling terminal.
    pub terminal: bool,
}

impl SpawnSpec {
    /// Builds a spec from OS strings.
    pub fn new(argv: Vec<OsString>, env: Vec<(OsString, OsString)>, cwd: PathBuf) -> SpawnSpec {
        SpawnSpec {
            argv: argv.into_iter().map(OsStringExt::into_vec).collect(),
            env: env
                .into_iter()
                .map(|(k, v)| {
                    let mut kv = k.into_vec();
                    kv.push(b'=');
                    kv.extend_from_slice(v.as_bytes());
                    kv
                })
                .collect(),
            cwd,
            terminal: false,
        }
    }
}

/// moat → supervisor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Start a command; three descriptors follow (stdin, stdout, stderr), then the ones it
    /// gets as 3, 4, ... (at most [`MAX_PRESERVED_FDS`]).
    Spawn(SpawnSpec),
    /// Send a signal to a command started earlier (by its host pid).
    Signal {
        /// The pid from [`Reply::Spawned`].
        pid: i32,
        /// The signal number.
        signal: i32,
    },
    /// Open a file inside the sandbox's view; the reply carries its descriptor.
    Open {
        /// Path inside the sandbox.
        path: PathBuf,
        /// Open for writing (create, truncate) instead of reading.
        write: bool,
    },
    /// List a directory inside the sandbox's view.
    List {
        /// Path inside the sandbox.
        path: PathBuf,
    },
    /// Remove a file or an empty directory inside the sandbox's view.
    Remove {
        /// Path inside the sandbox.
        path: PathBuf,
    },
    /// Open a pseudo-terminal of the sandbox's own `/dev/pts`; the reply carries its
    /// master (moat opens the command's side from it with TIOCGPTPEER).
    OpenPty,
    /// How many bytes the files under these paths take: each of `filesystems` is a file
    /// system of the sandbox's own (its used blocks), each of `trees` a directory walked
    /// (the sizes of its files, up to a bound).
    Used {
        /// Paths inside the sandbox whose file systems are counted whole.
        filesystems: Vec<PathBuf>,
        /// Directories inside the sandbox whose files are summed.
        trees: Vec<PathBuf>,
    },
    /// Kill everything in the sandbox and exit.
    Stop,
    /// While the sandbox is being built with an idmapped identity: the detached, idmapped
    /// mount of grant `index` (the work directory when `index` is the number of grants)
    /// comes along.
    Mount {
        /// Which grant.
        index: usize,
    },
    /// The identity's map is written and every mount sent: build the sandbox.
    Proceed,
}

/// The stage a build with an idmapped identity fails at when a grant lies inside a
/// directory of the view that the sandbox's unprivileged root may not enter; moat then
/// builds again without the idmapped identity.
pub const UNREACHABLE_GRANT: &str =
    "place a grant inside a directory only the host's root may enter";

/// supervisor → moat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Reply {
    /// The namespaces exist; moat may write the user namespace's map (idmapped builds).
    Unshared,
    /// The sandbox is built; with a network, the TAP descriptor comes along.
    Ready,
    /// Building the sandbox failed at `stage`.
    SetupFailed {
        /// Which step failed.
        stage: String,
        /// The OS error.
        error: String,
    },
    /// A command started; `pid` is its pid in moat's pid namespace.
    Spawned {
        /// The command's host pid.
        pid: i32,
    },
    /// A command could not be started.
    SpawnFailed {
        /// Why.
        error: String,
    },
    /// A command ended.
    Exited {
        /// The command's host pid.
        pid: i32,
        /// Its exit code, when it exited.
        code: Option<i32>,
        /// The signal that killed it, when one did.
        signal: Option<i32>,
    },
    /// A file was opened; its descriptor comes along.
    Opened,
    /// Directory entries.
    Listed {
        /// Entry names.
        entries: Vec<Vec<u8>>,
    },
    /// Bytes used ([`Request::Used`]).
    Used {
        /// The total.
        bytes: u64,
    },
    /// A request without a result succeeded.
    Done,
    /// A request failed.
    Failed {
        /// The OS error.
        error: String,
    },
}

/// Sends one message with optional descriptors.
pub fn send<T: Serialize>(sock: RawFd, msg: &T, fds: &[RawFd]) -> io::Result<()> {
    let bytes = serde_json::to_vec(msg).map_err(io::Error::other)?;
    if bytes.len() > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "control message too large",
        ));
    }
    let iov = [IoSlice::new(&bytes)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
    loop {
        match sendmsg::<()>(sock, &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one message and its descriptors; `Ok(None)` when the peer has gone.
pub fn recv<T: for<'de> Deserialize<'de>>(sock: RawFd) -> io::Result<Option<(T, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (len, fds) = loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
            Ok(msg) => {
                let mut fds = Vec::new();
                for c in msg.cmsgs().map_err(io::Error::from)? {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        fds.extend(raw.into_iter().map(crate::sys::own_fd));
                    }
                }
                if msg.flags.contains(MsgFlags::MSG_TRUNC)
                    || msg.flags.contains(MsgFlags::MSG_CTRUNC)
                {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "control message truncated",
                    ));
                }
                break (msg.bytes, fds);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    if len == 0 {
        return Ok(None);
    }
    let msg = serde_json::from_slice(&buf[..len]).map_err(io::Error::other)?;
    Ok(Some((msg, fds)))
}

/// A connected `SOCK_SEQPACKET` pair, both ends close-on-exec.
pub fn socket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(io::Error::from)
}

/// `true` when `fd` is an open descriptor (used to check inherited channels).
pub fn is_open(fd: RawFd) -> bool {
    std::path::Path::new(&format!("/proc/self/fd/{fd}")).exists()
}
