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
//! Before anything is changed, the target is checked, and refused with the reason: a path
//! that is not a network namespace (setns says EINVAL), moat's own namespace (checked on
//! the descriptor opened and again from inside: serving it would take the host's network
//! away), one moat may not enter, and one with any way out of its own: an interface other
//! than `lo` (so no route of any table, and no rule, can lead past moat) or a default route.
//! An `eth0` may be taken over when the caller asks ([`Takeover::Replace`]): it is deleted
//! (a veth with its peer), not kept down, so nothing inside can bring it back. Only then is
//! the namespace changed: `lo` up, the TAP made.
//!
//! What this guarantees: when moat starts serving, moat's interface is the namespace's one
//! way out. A program inside with CAP_NET_ADMIN over the namespace cannot make another (an
//! interface leading elsewhere needs a peer in a namespace it does not own), unless someone
//! outside moves one in.
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

    /// The namespace as two numbers (its nsfs device and inode), to keep in a file.
    pub fn to_pair(self) -> (u64, u64) {
        (self.dev, self.ino)
    }

    /// The namespace [`NsId::to_pair`] kept.
    pub fn from_pair((dev, ino): (u64, u64)) -> NsId {
        NsId { dev, ino }
    }
}

/// What to do when the namespace already has an `eth0` or a default route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Takeover {
    /// Refuse, saying why.
    #[default]
    Refuse,
    /// Delete its `eth0` (with its routes; a veth's peer goes too).
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
    /// Whether the namespace's own interface under the TAP's name was deleted.
    pub replaced: bool,
}

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
    // The namespace opened, not whatever the path names a moment later.
    let m = file.metadata().map_err(enter_err)?;
    let ns = NsId {
        dev: m.dev(),
        ino: m.ino(),
    };
    let own = NsId::own().map_err(enter_err)?;
    if own == ns {
        return Err(AttachError::Own(path.to_owned()));
    }
    let net = net.clone();
    let path_owned = path.to_owned();
    std::thread::scope(|s| {
        s.spawn(move || inside(file, &path_owned, &net, takeover, own))
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

/// Where the thread that enters a namespace reads which one it is in.
const THREAD_NS: &str = "/proc/thread-self/ns/net";

/// The thread inside the namespace: enter, check everything, then change it: the
/// replaced interface deleted, `lo` up, the TAP made.
fn inside(
    file: File,
    path: &Path,
    net: &NetSpec,
    takeover: Takeover,
    own: NsId,
) -> Result<(OwnedFd, bool), AttachError> {
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
    // Where this thread is now, whatever the path named when it was checked.
    if NsId::of(Path::new(THREAD_NS)).map_err(setup("read the namespace entered"))? == own {
        return Err(AttachError::Own(path.to_owned()));
    }
    // moat must be the only way out: nothing but lo, and an eth0 only when it is to go.
    let names = interfaces().map_err(setup("read the namespace's interfaces"))?;
    let has_tap_name = names.contains(&net.tap_name);
    let others: Vec<&String> = names
        .iter()
        .filter(|n| *n != "lo" && **n != net.tap_name && !fallback_tunnel(n))
        .collect();
    if !others.is_empty() {
        let list: Vec<&str> = others.iter().map(|n| n.as_str()).collect();
        return Err(occupied(
            format!("interfaces of its own ({})", list.join(", ")),
            "serve a namespace that has only lo: podman run --network none",
        ));
    }
    if has_tap_name && takeover == Takeover::Refuse {
        return Err(occupied(
            format!("an interface named {}", net.tap_name),
            "give --replace to take it over (it is deleted), or serve a namespace made without one: podman run --network none",
        ));
    }
    // A default route through the interface to be replaced goes with it; one through lo
    // leads nowhere, but would stand in the TAP's way.
    let going = has_tap_name.then_some(net.tap_name.as_str());
    if let Some((route, _)) = default_route(going).map_err(setup("read the namespace's routes"))? {
        return Err(occupied(
            route,
            "remove it, or serve a namespace made without one: podman run --network none",
        ));
    }
    // Every check passed: now the namespace is changed.
    if has_tap_name {
        let index = sys::if_index(&net.tap_name).map_err(setup("find the namespace's eth0"))?;
        crate::rtnl::delete_link(index).map_err(setup("delete the namespace's eth0"))?;
    }
    // Loopback, as every program expects (a namespace from `ip netns add` has it down).
    sys::set_up("lo").map_err(setup("bring up lo"))?;
    let tun = sys::open_tun().map_err(setup("open /dev/net/tun"))?;
    let tap = crate::tap::make(net, tun).map_err(|(step, source)| AttachError::Setup {
        path: path.to_owned(),
        step,
        source,
    })?;
    Ok((tap, has_tap_name))
}

/// Whether `name` is one of the tunnel devices the kernel puts in every namespace once
/// its module is loaded (`tunl0` when a node runs IP-in-IP, ...). They lead nowhere of
/// their own: what they carry is wrapped in packets that leave by a route like any other,
/// which in a served namespace is moat's, where the wrapping protocol is not TCP or UDP
/// and is dropped.
pub fn fallback_tunnel(name: &str) -> bool {
    matches!(
        name,
        "tunl0"
            | "sit0"
            | "ip6tnl0"
            | "gre0"
            | "gretap0"
            | "erspan0"
            | "ip_vti0"
            | "ip6_vti0"
            | "ip6gre0"
            | "ip6erspan0"
    )
}

/// The interfaces of the calling thread's namespace (`/proc/net/dev`'s names).
pub(crate) fn interfaces() -> io::Result<Vec<String>> {
    let text = std::fs::read_to_string("/proc/thread-self/net/dev")?;
    Ok(interface_names(&text))
}

/// The names in `/proc/net/dev`'s text (two header lines, then `name: counters`).
fn interface_names(text: &str) -> Vec<String> {
    text.lines()
        .skip(2)
        .filter_map(|l| l.split_once(':'))
        .map(|(name, _)| name.trim().to_owned())
        .filter(|n| !n.is_empty())
        .collect()
}

/// A default route of the calling thread's namespace, described (`None`: there is none).
/// A default route of the calling thread's namespace through another interface than
/// `except`, described, with its interface (`None`: there is none).
fn default_route(except: Option<&str>) -> io::Result<Option<(String, String)>> {
    // `thread-self`: this thread's namespace, not the process's.
    let v4 = std::fs::read_to_string("/proc/thread-self/net/route")?;
    let v6 = std::fs::read_to_string("/proc/thread-self/net/ipv6_route").unwrap_or_default();
    let keep = |dev: &String| Some(dev.as_str()) != except;
    if let Some(dev) = default_v4(&v4).into_iter().find(keep) {
        return Ok(Some((format!("an IPv4 default route through {dev}"), dev)));
    }
    Ok(default_v6(&v6)
        .into_iter()
        .find(keep)
        .map(|dev| (format!("an IPv6 default route through {dev}"), dev)))
}

/// The interfaces of the default routes in `/proc/net/route`'s text.
fn default_v4(text: &str) -> Vec<String> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
            (f.len() > 7 && f[1] == "00000000" && f[7] == "00000000").then(|| f[0].to_owned())
        })
        .collect()
}

/// The interfaces of the default routes in `/proc/net/ipv6_route`'s text (the kernel's
/// unreachable route on `lo` is not one).
fn default_v6(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // dst dst_len src src_len next_hop metric refcnt use flags iface
            let default = f.len() == 10 && f[0].bytes().all(|b| b == b'0') && f[1] == "00";
            (default && f[9] != "lo").then(|| f[9].to_owned())
        })
        .collect()
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

    /// Whether a process is in the namespace: one of those found is followed (one `stat`
    /// a call), the next when it is gone; when none is left, `/proc` is read again for any
    /// that came since (at most once a second).
    pub fn occupied(&mut self) -> bool {
        let ns = self.ns;
        while let Some(&pid) = self.pids.last() {
            if ns_of(pid) == Some(ns) {
                return true;
            }
            self.pids.pop();
        }
        let due = self.scanned.is_none_or(|t| t.elapsed() >= RESCAN);
        if due {
            self.pids = processes_in(ns);
            self.scanned = Some(std::time::Instant::now());
        }
        !self.pids.is_empty()
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

/// The process a `--ready-file` names ("PID START"), when that process still runs: the
/// same id and the same start time (a later process given the id is not it).
pub fn recorded_process(text: &str) -> Option<u32> {
    let mut words = text.split_whitespace();
    let pid = words.next()?.parse::<u32>().ok()?;
    let started = words.next()?.parse::<u64>().ok()?;
    (start_time(pid) == Some(started)).then_some(pid)
}

/// Whether process `pid` runs as root (every one of its user ids 0).
pub fn runs_as_root(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|u| u.split_whitespace().all(|id| id == "0"))
        })
        .unwrap_or(false)
}

/// When process `pid` started (clock ticks since boot: `/proc/PID/stat`'s 22nd field), which
/// tells it from a later process given the same number.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold anything: count after it.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Forks this process to go on in the background: the child (`None`) leaves the caller's
/// session, reads nothing (stdin is /dev/null) and writes to `output`; the parent gets the
/// child's process id. The child keeps the working directory (relative paths it was
/// given still name the same files) until it changes it. Refused unless this process has one thread (a fork copies only the
/// calling thread: locks another thread held would stay held in the child).
pub fn detach(output: OwnedFd) -> io::Result<Option<u32>> {
    let threads = || -> io::Result<Option<u32>> {
        let status = std::fs::read_to_string("/proc/self/status")?;
        Ok(status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|n| n.trim().parse::<u32>().ok()))
    };
    // A thread just joined may still be counted for a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while threads()? != Some(1) {
        if std::time::Instant::now() > deadline {
            return Err(io::Error::other(
                "a process with more than one thread cannot start one in the background",
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
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
        assert_eq!(default_v4(v4), ["eth0"]);
        // A route to 0.0.0.0/16 is not a default route.
        let not = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n\
                   eth0\t00000000\t00000000\t0001\t0\t0\t0\t0000FFFF\n";
        assert!(default_v4(not).is_empty());
        let v6 = "00000000000000000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000002 00000000 80200001       lo\n\
                  00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n";
        assert!(default_v6(v6).is_empty());
        let with = format!(
            "{v6}00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     eth1\n"
        );
        assert_eq!(default_v6(&with), ["eth1"]);
        // ::/64 is not a default route.
        let prefix = "00000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth1\n";
        assert!(default_v6(prefix).is_empty());
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
