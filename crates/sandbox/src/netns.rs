//! Serving a network namespace someone else made (`moat attach`: a Podman container's,
//! one `moat netns create` named): moat's TAP goes inside it as `eth0`, addressed and
//! routed as in a sandbox of moat's own (`tap.rs`), while moat itself stays in the
//! namespace it runs in — so the namespace's one way out is moat's engine, and moat's own
//! sockets leave from where moat runs (pasta's model).
//!
//! # Theory of operation
//! Entering a namespace (setns) moves only the calling thread, so [`attach`] makes the TAP
//! on a thread of its own: it enters the target, checks it, opens `/dev/net/tun` there (an
//! interface belongs to the namespace its device was opened in), makes and configures the
//! TAP, hands its descriptor back and ends. Nothing else of moat ever leaves its namespace.
//!
//! Before anything is made, the target is checked, and refused with the reason: a path that
//! is not a network namespace (setns says EINVAL), moat's own namespace (serving it would
//! take the host's network away), one moat may not enter, and one that already has a way
//! out of its own — a default route, or an interface named `eth0` — unless the caller asked
//! to take it over ([`Takeover::Replace`]: that `eth0` is taken down and renamed, which
//! removes its routes; a default route through another interface still refuses).
//!
//! How long a namespace is served is the caller's choice; [`Watch`] tells when no process
//! is left in it: it follows the processes it found by one `stat` each, and reads `/proc`
//! again only when none of them is left. [`create_named`] and [`remove_named`] make and
//! remove a namespace kept by a bind mount under `/run/netns`, as `ip netns` does, so that
//! Podman (`--network ns:PATH`) and `ip netns exec` find it.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sched::{CloneFlags, setns, unshare};

use crate::proto::NetSpec;
use crate::sys;

/// A network namespace, as the kernel names it: the device and inode of its nsfs file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NsId {
    dev: u64,
    ino: u64,
}

impl NsId {
    /// The namespace `path` names (`/run/netns/NAME`, `/proc/PID/ns/net`).
    pub fn of(path: &Path) -> io::Result<NsId> {
        let m = std::fs::metadata(path)?;
        Ok(NsId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    /// The namespace this process runs in.
    pub fn own() -> io::Result<NsId> {
        NsId::of(Path::new("/proc/self/ns/net"))
    }
}

/// What to do when the namespace already has an `eth0` or a default route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Takeover {
    /// Refuse, saying why.
    #[default]
    Refuse,
    /// Take its `eth0` down and rename it (`eth0-pre-moat`), which removes its routes.
    Replace,
}

/// Why a namespace cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The path does not exist.
    #[error(
        "{0}: no such file (a network namespace is a file such as /run/netns/NAME or /proc/PID/ns/net)"
    )]
    NotFound(PathBuf),
    /// The path is not a network namespace.
    #[error(
        "{0} is not a network namespace (give /run/netns/NAME, /proc/PID/ns/net, or --pid PID)"
    )]
    NotNetns(PathBuf),
    /// moat's own namespace.
    #[error(
        "{0} is the network namespace moat runs in: serving it would take this host's network away (give the namespace of a container or one made for it)"
    )]
    Own(PathBuf),
    /// moat may not open or enter it.
    #[error(
        "cannot enter {path}: {source} (it takes CAP_SYS_ADMIN over the namespace: run moat as root, or a rootless container's inside its user namespace with `podman unshare moat attach ...`)"
    )]
    Enter {
        /// The namespace.
        path: PathBuf,
        /// What the kernel said.
        source: io::Error,
    },
    /// It has a way out of its own already.
    #[error("{path} already has {what}: moat would not be its only way out ({hint})")]
    Occupied {
        /// The namespace.
        path: PathBuf,
        /// What it has.
        what: String,
        /// What to do.
        hint: &'static str,
    },
    /// Making or configuring the TAP failed.
    #[error("{step} in {path}: {source}")]
    Setup {
        /// The namespace.
        path: PathBuf,
        /// What was being done.
        step: &'static str,
        /// What the kernel said.
        source: io::Error,
    },
}

/// The TAP made inside a namespace.
#[derive(Debug)]
pub struct Attached {
    /// The TAP's descriptor (frames with a virtio-net header, `sys::open_tap`).
    pub tap: OwnedFd,
    /// The namespace served.
    pub ns: NsId,
    /// The interface the namespace had under the TAP's name, taken down and renamed.
    pub replaced: Option<String>,
}

/// The name a replaced interface is given.
pub const REPLACED_NAME: &str = "eth0-pre-moat";

/// Makes moat's TAP (`net.tap_name`, configured as `net` says) inside the network
/// namespace `path`, after the checks of the module header.
pub fn attach(path: &Path, net: &NetSpec, takeover: Takeover) -> Result<Attached, AttachError> {
    let file = File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => AttachError::NotFound(path.to_owned()),
        _ => AttachError::Enter {
            path: path.to_owned(),
            source: e,
        },
    })?;
    let enter_err = |source| AttachError::Enter {
        path: path.to_owned(),
        source,
    };
    let ns = NsId::of(path).map_err(enter_err)?;
    if NsId::own().ok() == Some(ns) {
        return Err(AttachError::Own(path.to_owned()));
    }
    let net = net.clone();
    let path_owned = path.to_owned();
    std::thread::scope(|s| {
        s.spawn(move || inside(file, &path_owned, &net, takeover))
            .join()
            .unwrap_or_else(|_| {
                Err(AttachError::Setup {
                    path: path.to_owned(),
                    step: "make the TAP",
                    source: io::Error::other("the thread that made it panicked"),
                })
            })
    })
    .map(|(tap, replaced)| Attached { tap, ns, replaced })
}

/// The thread inside the namespace: enter, check, make the TAP.
fn inside(
    file: File,
    path: &Path,
    net: &NetSpec,
    takeover: Takeover,
) -> Result<(OwnedFd, Option<String>), AttachError> {
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| match e {
        Errno::EINVAL => AttachError::NotNetns(path.to_owned()),
        e => AttachError::Enter {
            path: path.to_owned(),
            source: e.into(),
        },
    })?;
    drop(file);
    let setup = |step: &'static str| {
        move |source: io::Error| AttachError::Setup {
            path: path.to_owned(),
            step,
            source,
        }
    };
    let occupied = |what: String, hint| AttachError::Occupied {
        path: path.to_owned(),
        what,
        hint,
    };
    let mut replaced = None;
    if sys::if_index(&net.tap_name).is_ok() {
        if takeover == Takeover::Refuse {
            return Err(occupied(
                format!("an interface named {}", net.tap_name),
                "give --replace to take it over, or serve a namespace made without one: podman run --network none",
            ));
        }
        sys::set_down(&net.tap_name).map_err(setup("take the namespace's eth0 down"))?;
        sys::rename(&net.tap_name, REPLACED_NAME).map_err(setup("rename the namespace's eth0"))?;
        replaced = Some(REPLACED_NAME.to_owned());
    }
    if let Some(route) = default_route().map_err(setup("read the namespace's routes"))? {
        return Err(occupied(
            route,
            "remove it, or serve a namespace made without one: podman run --network none",
        ));
    }
    // Loopback, as every program expects (a namespace from `ip netns add` has it down).
    sys::set_up("lo").map_err(setup("bring up lo"))?;
    let tun = sys::open_tun().map_err(setup("open /dev/net/tun"))?;
    let tap = crate::tap::make(net, tun).map_err(|(step, source)| AttachError::Setup {
        path: path.to_owned(),
        step,
        source,
    })?;
    Ok((tap, replaced))
}

/// A default route of the calling thread's namespace, described (`None`: there is none).
fn default_route() -> io::Result<Option<String>> {
    // `thread-self`: this thread's namespace, not the process's.
    let v4 = std::fs::read_to_string("/proc/thread-self/net/route")?;
    if let Some(dev) = default_v4(&v4) {
        return Ok(Some(format!("an IPv4 default route through {dev}")));
    }
    let v6 = std::fs::read_to_string("/proc/thread-self/net/ipv6_route").unwrap_or_default();
    Ok(default_v6(&v6).map(|dev| format!("an IPv6 default route through {dev}")))
}

/// The interface of a default route in `/proc/net/route`'s text.
fn default_v4(text: &str) -> Option<String> {
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
        (f.len() > 7 && f[1] == "00000000" && f[7] == "00000000").then(|| f[0].to_owned())
    })
}

/// The interface of a default route in `/proc/net/ipv6_route`'s text (the kernel's
/// unreachable route on `lo` is not one).
fn default_v6(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // dst dst_len src src_len next_hop metric refcnt use flags iface
        let default = f.len() == 10 && f[0].bytes().all(|b| b == b'0') && f[1] == "00";
        (default && f[9] != "lo").then(|| f[9].to_owned())
    })
}

/// Which processes are in a namespace, followed cheaply (see the module header), and
/// whether its path still names it.
#[derive(Debug)]
pub struct Watch {
    ns: NsId,
    path: PathBuf,
    pids: Vec<u32>,
    scanned: Option<std::time::Instant>,
}

/// How often `/proc` is read again while no process of the namespace is known.
const RESCAN: std::time::Duration = std::time::Duration::from_secs(1);

impl Watch {
    /// Follows the processes of `ns`, which `path` named.
    pub fn new(ns: NsId, path: &Path) -> Watch {
        Watch {
            ns,
            path: path.to_owned(),
            pids: Vec::new(),
            scanned: None,
        }
    }

    /// Whether the path the namespace was given by still names it (a runtime removes a
    /// container's namespace file when it is done with it; `/proc/PID/ns/net` goes with
    /// its process). moat's own interface keeps the namespace itself alive as long as moat
    /// serves it, so this is how moat learns that nobody else wants it.
    pub fn named(&self) -> bool {
        NsId::of(&self.path).ok() == Some(self.ns)
    }

    /// The namespace followed.
    pub fn namespace(&self) -> NsId {
        self.ns
    }

    /// How many of the processes found in the namespace are still there; when none is,
    /// `/proc` is read again for any that came since (at most once a second).
    pub fn occupied(&mut self) -> usize {
        let ns = self.ns;
        self.pids.retain(|&pid| ns_of(pid) == Some(ns));
        let due = self.scanned.is_none_or(|t| t.elapsed() >= RESCAN);
        if self.pids.is_empty() && due {
            self.pids = processes_in(ns);
            self.scanned = Some(std::time::Instant::now());
        }
        self.pids.len()
    }
}

/// The network namespace of process `pid` (`None` once it is gone).
fn ns_of(pid: u32) -> Option<NsId> {
    NsId::of(Path::new(&format!("/proc/{pid}/ns/net"))).ok()
}

/// Every process in namespace `ns` that this process may see.
pub fn processes_in(ns: NsId) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| ns_of(pid) == Some(ns))
        .collect()
}

/// Forks this process to go on in the background: the child (`None`) leaves the caller's
/// session, reads nothing (stdin is /dev/null) and writes to `output`; the parent gets the
/// child's process id. Refused unless this process has one thread (a fork copies only the
/// calling thread: locks another thread held would stay held in the child).
pub fn detach(output: OwnedFd) -> io::Result<Option<u32>> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse::<u32>().ok());
    if threads != Some(1) {
        return Err(io::Error::other(
            "a process with more than one thread cannot start one in the background",
        ));
    }
    let null = File::open("/dev/null")?;
    match sys::fork()? {
        nix::unistd::ForkResult::Parent { child } => Ok(Some(child.as_raw() as u32)),
        nix::unistd::ForkResult::Child => {
            // The child never returns an error into the parent's code path.
            let set = nix::unistd::setsid()
                .map(drop)
                .and_then(|()| nix::unistd::dup2_stdin(&null))
                .and_then(|()| nix::unistd::dup2_stdout(&output))
                .and_then(|()| nix::unistd::dup2_stderr(&output));
            if set.is_err() {
                std::process::exit(125);
            }
            Ok(None)
        }
    }
}

/// Where named namespaces live (as `ip netns` keeps them).
pub const NAMED_DIR: &str = "/run/netns";

/// Whether `name` can name a namespace file: a plain name, not a path.
pub fn valid_named(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Makes a new network namespace kept at `/run/netns/NAME` by a bind mount; its path.
pub fn create_named(name: &str) -> io::Result<PathBuf> {
    if !valid_named(name) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?}: a namespace's name is letters, digits, '-', '_' and '.'"),
        ));
    }
    let dir = Path::new(NAMED_DIR);
    std::fs::create_dir_all(dir)?;
    shared(dir)?;
    let path = dir.join(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => io::Error::new(
                e.kind(),
                format!(
                    "{} exists already (moat netns rm {name}, or another name)",
                    path.display()
                ),
            ),
            _ => e,
        })?;
    let made = std::thread::scope(|s| {
        s.spawn(|| -> io::Result<()> {
            unshare(CloneFlags::CLONE_NEWNET)?;
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &path,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )?;
            Ok(())
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the thread that made it panicked")))
    });
    if let Err(e) = made {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

/// Makes `dir` a shared mount (a bind mount of itself first, when it is not a mount point),
/// as `ip netns` does: a namespace bound there later is seen from every mount namespace
/// made since (a container runtime's, `ip netns exec`'s).
fn shared(dir: &Path) -> io::Result<()> {
    use nix::mount::{MsFlags, mount};
    let flags = MsFlags::MS_SHARED | MsFlags::MS_REC;
    match mount(None::<&str>, dir, None::<&str>, flags, None::<&str>) {
        Ok(()) => Ok(()),
        // Not a mount point.
        Err(Errno::EINVAL) => {
            mount(
                Some(dir),
                dir,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )?;
            Ok(mount(None::<&str>, dir, None::<&str>, flags, None::<&str>)?)
        }
        Err(e) => Err(e.into()),
    }
}

/// Removes the named namespace `/run/netns/NAME` (the namespace itself ends with its last
/// process).
pub fn remove_named(name: &str) -> io::Result<()> {
    if !valid_named(name) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a namespace's name"),
        ));
    }
    let path = Path::new(NAMED_DIR).join(name);
    match nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) => {}
        Err(Errno::ENOENT) => {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}: no such namespace", path.display()),
            ));
        }
        Err(e) => return Err(e.into()),
    }
    std::fs::remove_file(&path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_routes_are_read_from_the_kernels_tables() {
        let v4 = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                  eth0\t0000FEA9\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
                  eth0\t00000000\t0102A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(default_v4(v4).as_deref(), Some("eth0"));
        // A route to 0.0.0.0/16 is not a default route.
        let not = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n\
                   eth0\t00000000\t00000000\t0001\t0\t0\t0\t0000FFFF\n";
        assert_eq!(default_v4(not), None);
        let v6 = "00000000000000000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000002 00000000 80200001       lo\n\
                  00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n";
        assert_eq!(default_v6(v6), None);
        let with = format!(
            "{v6}00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     eth1\n"
        );
        assert_eq!(default_v6(&with).as_deref(), Some("eth1"));
        // ::/64 is not a default route.
        let prefix = "00000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth1\n";
        assert_eq!(default_v6(prefix), None);
    }

    #[test]
    fn a_namespaces_name_is_a_name_not_a_path() {
        for ok in ["ci", "job-42", "a.b_c"] {
            assert!(valid_named(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "../x", "a b", "x\0", &"n".repeat(65)] {
            assert!(!valid_named(bad), "{bad:?}");
        }
    }
}
