//! The supervisor: a fresh exec of the host program that builds the sandbox and then runs
//! commands in it on moat's request.
//!
//! # Theory of operation
//! moat starts the supervisor with one end of a control socket (see [`crate::proto`]) and,
//! where it could make one, moves it into the sandbox's control group first (see
//! [`crate::limits`]). The supervisor, single-threaded, then:
//! 1. closes every descriptor it inherited but its channel, and unshares the user, mount,
//!    pid, uts, ipc, network and cgroup namespaces, mapping root inside to the invoking user
//!    outside (`0 UID 1`), so a normal user can do all that follows. When moat runs as
//!    root, root inside is instead an unprivileged host id ([`crate::UNPRIVILEGED_ID`]):
//!    moat writes that map (only root outside may) and sends the grants and a given work
//!    directory as mounts it idmapped (only root outside may idmap a host file system), and
//!    the supervisor takes that id before it builds anything; it opens /dev/net/tun first,
//!    which may be root's alone;
//! 2. brings up `lo`, creates the TAP (when the sandbox has a network), sets its address,
//!    MTU and routes, and hands the TAP's descriptor to moat;
//! 3. assembles a new root on a tmpfs, deny by default: the system directories (`/usr`,
//!    `/bin`, `/sbin`, `/lib*`, `/etc`, `/opt`) bound read-only; fresh bounded tmpfs for
//!    `/tmp`, the home directory, `/run` and `/dev/shm`; a minimal `/dev`; `/sys`
//!    read-only (a fresh sysfs: the sandbox's own interfaces and control groups; firmware
//!    masked); the `--ro`/`--rw` grants; the work directory; moat's resolv.conf and hosts
//!    read-only; the secrets of `/etc` masked; moat's own state hidden wherever a grant
//!    would show it. Every mount is nosuid and nodev (the device binds of `/dev` aside).
//!    Then it pivots into it;
//! 4. forks PID 1 of the new pid namespace, which mounts /proc (with /proc/sys read-only
//!    and the files that show the host's processes and keys masked) and reaps orphans;
//!    when it dies the kernel kills everything in the sandbox;
//! 5. compiles the seccomp filter ([`crate::seccomp`]) and serves requests: spawn, signal,
//!    file open/list/remove, stop. A command is forked and, before exec, gets exactly the
//!    descriptors moat passed (stdio and `--preserve-fds`), a session of its own (its
//!    pseudo-terminal as controlling terminal when it has one), a fresh session keyring,
//!    the rlimits that stand in for a missing control group, no capabilities,
//!    `no_new_privs` and the seccomp filter.
//!
//! The supervisor dies with moat (`PR_SET_PDEATHSIG`), and PID 1 with the supervisor, so no
//! sandbox process outlives moat, whatever kills it.

use std::ffi::{CString, OsStr};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

use crate::limits;
use crate::proto::{self, NetSpec, RLimit, Reply, Request, SpawnSpec, Spec};
use crate::seccomp::Filters;
use crate::sys;

/// The environment variable that marks a process as a supervisor and names its channel fd.
pub const SUPERVISOR_ENV: &str = "__MOAT_SANDBOX_SUPERVISOR_FD";

/// Runs the supervisor when this process was started as one; call it first in `main`.
/// Returns the exit code to exit with, or `None` for a normal start.
pub fn supervisor_entry() -> Option<i32> {
    let fd: RawFd = std::env::var(SUPERVISOR_ENV).ok()?.parse().ok()?;
    if fd < 3 || !proto::is_open(fd) {
        return Some(125);
    }
    let ctl = sys::own_fd(fd);
    Some(run(ctl))
}

type Stage<T> = Result<T, (&'static str, io::Error)>;

fn at<T, E: Into<io::Error>>(stage: &'static str, r: Result<T, E>) -> Stage<T> {
    r.map_err(|e| (stage, e.into()))
}

fn run(ctl: OwnedFd) -> i32 {
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let _ = nix::fcntl::fcntl(
        ctl.as_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    // Whatever moat's caller left open (a shell's `7<>FILE`) stops here: the supervisor,
    // PID 1 and the commands hold only what they are handed.
    let raw = ctl.as_raw_fd();
    if sys::close_range(3, raw - 1).is_err() || sys::close_from(raw + 1).is_err() {
        return 125;
    }
    let spec: Spec = match proto::recv(ctl.as_raw_fd()) {
        Ok(Some((spec, _))) => spec,
        _ => return 125,
    };
    let built = build(&spec, &ctl).and_then(|(tap, pid1)| {
        let filters = at(
            "compile the seccomp filter",
            Filters::build().map_err(io::Error::other),
        )?;
        Ok((tap, pid1, filters))
    });
    match built {
        Ok((tap, pid1, filters)) => {
            let fds: Vec<RawFd> = tap.iter().map(AsRawFd::as_raw_fd).collect();
            if proto::send(ctl.as_raw_fd(), &Reply::Ready, &fds).is_err() {
                return 125;
            }
            drop(tap);
            let commands = Commands {
                filters,
                rlimits: spec.rlimits.clone(),
                children: Vec::new(),
            };
            serve(&ctl, pid1, commands)
        }
        Err((stage, error)) => {
            let _ = proto::send(
                ctl.as_raw_fd(),
                &Reply::SetupFailed {
                    stage: stage.to_owned(),
                    error: error.to_string(),
                },
                &[],
            );
            125
        }
    }
}

/// The idmapped identity's half of step 1: tells moat the namespaces exist, takes the
/// idmapped mounts it sends (`slots` of them at most: the grants, then the work directory)
/// until it says to proceed — by then it has written the user namespace's map — and
/// becomes root of that namespace, the unprivileged host uid, before anything is built:
/// what it creates is owned by the sandbox's root, and nothing of the host's root stays
/// with it.
fn identity_from_moat(ctl: &OwnedFd, slots: usize) -> Stage<Vec<Option<OwnedFd>>> {
    let channel = |e: io::Error| ("take the identity from moat", e);
    proto::send(ctl.as_raw_fd(), &Reply::Unshared, &[]).map_err(channel)?;
    let mut mounts: Vec<Option<OwnedFd>> = (0..slots).map(|_| None).collect();
    loop {
        match proto::recv::<Request>(ctl.as_raw_fd()).map_err(channel)? {
            Some((Request::Mount { index }, mut fds)) if index < slots && fds.len() == 1 => {
                mounts[index] = fds.pop();
            }
            Some((Request::Proceed, _)) => break,
            _ => {
                return Err((
                    "take the identity from moat",
                    io::Error::new(io::ErrorKind::InvalidData, "unexpected message"),
                ));
            }
        }
    }
    let root = nix::unistd::Uid::from_raw(0);
    let group = nix::unistd::Gid::from_raw(0);
    at(
        "become the sandbox's root (group)",
        nix::unistd::setresgid(group, group, group),
    )?;
    let parent = nix::unistd::getppid();
    at(
        "become the sandbox's root",
        nix::unistd::setresuid(root, root, root),
    )?;
    // A change of uid clears the parent-death signal (prctl(2)): set it again, and leave
    // if moat died before it was.
    at(
        "die with moat",
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL),
    )?;
    if nix::unistd::getppid() != parent {
        return Err(("die with moat", io::Error::other("moat is gone")));
    }
    Ok(mounts)
}

/// Steps 1–4; returns the TAP (if any) and PID 1.
fn build(spec: &Spec, ctl: &OwnedFd) -> Stage<(Option<OwnedFd>, Pid)> {
    if spec.idmapped {
        // moat runs as root, often with root's supplementary groups (0 among them, from a
        // login or sudo); they would follow the unprivileged id into the sandbox and open
        // every file of the view that group root may read. Dropped while this process still
        // may (the user namespace that follows denies setgroups).
        at("drop the supplementary groups", nix::unistd::setgroups(&[]))?;
    }
    // Signals are taken through a signalfd; children unblock them before exec.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGQUIT);
    at(
        "block signals",
        sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None),
    )?;

    // The groups moat placed this process in, read while /proc/self/cgroup still names them.
    let groups =
        limits::own_groups(&std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default());
    let flags = CloneFlags::CLONE_NEWUSER
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWCGROUP;
    at(
        "create namespaces (user, mount, pid, uts, ipc, net, cgroup)",
        unshare(flags),
    )?;
    let mut mounts = Vec::new();
    // The TUN device is opened here, in the sandbox's network namespace (where the TAP is
    // made) and before an idmapped identity gives up the host uid it may be reserved to.
    let tun = match &spec.network {
        Some(_) => Some(at("open /dev/net/tun and create the TAP", sys::open_tun())?),
        None => None,
    };
    if spec.idmapped {
        mounts = identity_from_moat(ctl, spec.grants.len() + 1)?;
    } else {
        at(
            "write /proc/self/setgroups",
            std::fs::write("/proc/self/setgroups", "deny"),
        )?;
        at(
            "write /proc/self/uid_map",
            std::fs::write("/proc/self/uid_map", format!("0 {} 1", spec.outside_uid)),
        )?;
        at(
            "write /proc/self/gid_map",
            std::fs::write("/proc/self/gid_map", format!("0 {} 1", spec.outside_gid)),
        )?;
    }
    at("set host name", nix::unistd::sethostname(&spec.name))?;

    at("bring up lo", sys::set_up("lo"))?;
    let tap = match (&spec.network, tun) {
        (Some(net), Some(tun)) => Some(network(net, tun)?),
        _ => None,
    };
    build_root(spec, &groups, &mut mounts)?;
    // PID 1 mounts the sandbox's /proc while the host's is still visible: the kernel
    // refuses a new proc mount in a user namespace where no full proc mount is visible.
    let pid1 = start_pid1(&spec.root_dir)?;
    enter_root(&spec.root_dir)?;
    Ok((tap, pid1))
}

fn network(net: &NetSpec, tun: OwnedFd) -> Stage<OwnedFd> {
    let tap = at(
        "open /dev/net/tun and create the TAP",
        sys::open_tap(tun, &net.tap_name),
    )?;
    at("set the TAP's MTU", sys::set_mtu(&net.tap_name, net.mtu))?;
    at(
        "set the TAP's IPv4 address",
        sys::set_ipv4(&net.tap_name, net.guest_v4, net.prefix_v4),
    )?;
    let v6_conf = Path::new("/proc/sys/net/ipv6/conf").join(&net.tap_name);
    let ipv6 = v6_conf.exists();
    if ipv6 {
        // The address is configured statically: no duplicate address detection (the link
        // has one other node, moat) and no router advertisements to act on.
        at(
            "disable IPv6 DAD",
            std::fs::write(v6_conf.join("accept_dad"), "0"),
        )?;
        at(
            "disable IPv6 RA",
            std::fs::write(v6_conf.join("accept_ra"), "0"),
        )?;
    }
    // Let the sandbox's root (gid 0, the one group mapped) ping with unprivileged ICMP sockets (a per-namespace
    // setting); moat relays the echoes it allows. Not fatal where /proc/sys is read-only.
    let _ = std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 0");
    // Let commands bind ports below 1024 (a server on 80 behind `-p 8080:80`) whatever
    // capabilities they keep: a per-namespace setting, and this namespace is the sandbox's.
    let _ = std::fs::write("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0");
    // A build or test that opens many short connections reuses its TIME-WAIT ports (the
    // far end is moat's stack, which keeps no old segments to confuse them), instead of
    // running out of the ephemeral range in a minute.
    let _ = std::fs::write("/proc/sys/net/ipv4/tcp_tw_reuse", "1");
    at("bring up the TAP", sys::set_up(&net.tap_name))?;
    let dev = at(
        "interface name",
        CString::new(net.tap_name.as_str()).map_err(io::Error::other),
    )?;
    at(
        "add the IPv4 default route",
        sys::add_default_route_v4(&dev, net.gateway_v4),
    )?;
    if ipv6 {
        let index = at("find the TAP's index", sys::if_index(&net.tap_name))?;
        at(
            "set the TAP's IPv6 address",
            sys::add_ipv6(index, net.guest_v6, net.prefix_v6),
        )?;
        at(
            "add the IPv6 default route",
            sys::add_default_route_v6(index, net.gateway_v6),
        )?;
    }
    Ok(tap)
}

/// Top-level host directories bound read-only at their own paths (when the host has them;
/// a top-level symlink such as `/bin -> usr/bin` is copied). Nothing else of the host's
/// root is visible unless granted.
const SYSTEM_DIRS: &[&str] = &[
    "usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "opt",
];
/// Device nodes bound into the sandbox's /dev; nothing else of the host's /dev is visible.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];
/// Files whose contents are secrets, masked by an empty device (they read as empty).
const MASKED_FILES: &[&str] = &[
    "etc/shadow",
    "etc/shadow-",
    "etc/gshadow",
    "etc/gshadow-",
    "etc/security/opasswd",
    "etc/krb5.keytab",
];
/// Directories whose contents are secrets, masked by an empty read-only one.
const MASKED_DIRS: &[&str] = &["etc/ssl/private", "etc/pki/tls/private"];
/// Where ssh keeps host keys: every `ssh_host_*` file but the `.pub` ones is masked.
const SSH_DIR: &str = "etc/ssh";

fn bind(src: &Path, dst: &Path, recursive: bool) -> nix::Result<()> {
    let mut flags = MsFlags::MS_BIND;
    if recursive {
        flags |= MsFlags::MS_REC;
    }
    mount(Some(src), dst, None::<&str>, flags, None::<&str>)
}

fn tmpfs(dst: &Path, options: &str) -> nix::Result<()> {
    mount(
        Some("tmpfs"),
        dst,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options),
    )
}

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)
}

/// Sets nosuid and nodev (and read-only when asked) on the mount tree at `path`.
fn restrict(path: &Path, readonly: bool) -> io::Result<()> {
    sys::restrict_recursive(
        &cpath(path)?,
        sys::Restrict {
            readonly,
            nodev: true,
            noexec: false,
        },
    )
}

/// Binds host `src` at `dst` (recursively), nosuid and nodev, read-only unless `writable`.
fn bind_restricted(src: &Path, dst: &Path, writable: bool) -> io::Result<()> {
    bind(src, dst, true)?;
    restrict(dst, !writable)
}

/// Places host `src` at `dst` as [`bind_restricted`] does, or — where moat sent it as an
/// idmapped mount (`mount`) — that mount instead.
fn place_restricted(
    src: &Path,
    mount: Option<OwnedFd>,
    dst: &Path,
    writable: bool,
) -> io::Result<()> {
    match mount {
        Some(tree) => {
            sys::attach_tree(&tree, &cpath(dst)?)?;
            restrict(dst, !writable)
        }
        None => bind_restricted(src, dst, writable),
    }
}

/// Fails unless `path`, with every symlink on the way resolved, lies inside `root`: a mount
/// point must never be made (or a mount placed) on the host's side of the new root, which
/// an absolute symlink inside a bound directory would lead to before the pivot.
fn within_root(root: &Path, path: &Path) -> io::Result<()> {
    let mut existing = path;
    while existing.symlink_metadata().is_err() {
        existing = existing.parent().unwrap_or(root);
    }
    let real = existing.canonicalize()?;
    if real.starts_with(root.canonicalize()?) {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} leads outside the sandbox through a symbolic link",
                path.strip_prefix(root).unwrap_or(path).display()
            ),
        ))
    }
}

/// Creates a mount point at `dst` of the same kind (directory or file) as host `src`, or
/// as the mount moat sent for it (the host path may lie where the sandbox's root cannot
/// look).
fn mount_point_like(
    root: &Path,
    src: &Path,
    mount: Option<&OwnedFd>,
    dst: &Path,
) -> io::Result<()> {
    within_root(root, dst)?;
    if dst.symlink_metadata().is_ok() {
        return Ok(());
    }
    let is_dir = match mount {
        Some(tree) => nix::sys::stat::fstat(tree.as_fd())
            .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
            .map_err(io::Error::from)?,
        None => std::fs::metadata(src)?.is_dir(),
    };
    if is_dir {
        std::fs::create_dir_all(dst)
    } else {
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::File::create(dst).map(drop)
    }
}

/// `/sys`, read-only. A fresh sysfs, mounted now that the sandbox has its own network
/// namespace, lists that namespace's interfaces (`lo`, `eth0`) with their MTU and address,
/// not the host's; `/sys/fs/cgroup` holds the sandbox's own control groups
/// ([`cgroup_view`]), not the host's tree. Where a fresh sysfs may not be mounted (a
/// container whose own `/sys` is partly masked refuses it) the host's `/sys` is bound
/// instead, read-only as well; where even that fails, `/sys` stays an empty directory.
fn sys_view(sysfs: &Path, groups: &[(PathBuf, PathBuf)]) -> Stage<()> {
    let read_only = |path: &Path| -> Stage<()> {
        at(
            "make /sys read-only",
            sys::restrict_recursive(
                &at("path", cpath(path))?,
                sys::Restrict {
                    readonly: true,
                    nodev: true,
                    noexec: true,
                },
            ),
        )
    };
    let fresh = mount(
        Some("sysfs"),
        sysfs,
        Some("sysfs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    );
    if fresh.is_ok() {
        let cgroups = sysfs.join("fs/cgroup");
        if !groups.is_empty() && cgroups.is_dir() {
            cgroup_view(&cgroups, groups)?;
            read_only(&cgroups)?;
        }
    } else if bind(Path::new("/sys"), sysfs, true).is_ok() {
        read_only(sysfs)?;
    } else {
        return Ok(());
    }
    at(
        "mask the host's firmware and energy counters in /sys",
        mask(
            SYS_MASKED.iter().map(|name| sysfs.join(name)),
            Path::new("/dev/null"),
        ),
    )
}

/// `/sys/fs/cgroup` inside: the sandbox's own groups ([`limits::own_groups`]) where their
/// hierarchies are mounted, and nothing else of the host's tree. In the sandbox's cgroup
/// namespace /proc/self/cgroup says `/` for each, so tools that size themselves by their
/// limits (memory.max, cpu.max, pids.max and their v1 names) read them here.
fn cgroup_view(dir: &Path, groups: &[(PathBuf, PathBuf)]) -> Stage<()> {
    let group = "bind the sandbox's control group";
    if let [(inside, host)] = groups
        && inside.as_os_str().is_empty()
    {
        // cgroup v2 alone: its group is the whole of /sys/fs/cgroup.
        return at(group, bind(host, dir, false));
    }
    at("mount /sys/fs/cgroup", tmpfs(dir, "mode=0755,size=64k"))?;
    for (inside, host) in groups {
        let point = dir.join(inside);
        at(
            "create a cgroup mount point",
            std::fs::create_dir_all(&point),
        )?;
        at(group, bind(host, &point, false))?;
    }
    // Links between hierarchies (cpu -> cpu,cpuacct) where the host has them.
    for entry in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(target) = std::fs::read_link(entry.path())
            && groups.iter().any(|(inside, _)| *inside == target)
        {
            at(
                "link a cgroup hierarchy",
                symlink(&target, dir.join(entry.file_name())),
            )?;
        }
    }
    Ok(())
}

/// What of `/proc` is masked, much as container runtimes mask it: the host's
/// processes (`timer_list`, `sched_debug` name every task with a timer or on a run queue),
/// the key descriptions of every keyring the caller may view (`keys`, `key-users`), kernel
/// memory (`kcore`), and hardware the sandbox has no business with.
const PROC_MASKED: &[&str] = &[
    "kcore",
    "keys",
    "key-users",
    "timer_list",
    "timer_stats",
    "sched_debug",
    "latency_stats",
    "acpi",
    "asound",
    "scsi",
];

/// What of `/sys` is masked: firmware tables and variables (ACPI, DMI, EFI) and the energy
/// counters a power side channel reads (powercap).
const SYS_MASKED: &[&str] = &["firmware", "devices/virtual/powercap"];

/// Masks each of `paths` that exists: a file (or socket, fifo) by binding `null` over it
/// (it reads as empty), a directory by an empty one no one may open ([`empty_dir_over`]).
fn mask(paths: impl IntoIterator<Item = PathBuf>, null: &Path) -> io::Result<()> {
    for path in paths {
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => empty_dir_over(&path)?,
            Ok(meta) if !meta.is_symlink() => bind(null, &path, false)?,
            _ => {}
        }
    }
    Ok(())
}

fn build_root(
    spec: &Spec,
    groups: &[(PathBuf, PathBuf)],
    mounts: &mut [Option<OwnedFd>],
) -> Stage<()> {
    let root = &spec.root_dir;
    at(
        "make mounts private",
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        ),
    )?;
    at("mount the root tmpfs", tmpfs(root, "mode=0755,size=16m"))?;
    system_dirs(root)?;
    dev(root, spec.sizes.shm)?;
    fresh_dirs(spec)?;

    let sysfs = root.join("sys");
    at("create /sys", std::fs::create_dir(&sysfs))?;
    sys_view(&sysfs, groups)?;

    for (i, grant) in spec.grants.iter().enumerate() {
        let inside = inside_root(root, &grant.path);
        let mount = mounts.get_mut(i).and_then(Option::take);
        let made = mount_point_like(root, &grant.path, mount.as_ref(), &inside);
        if spec.idmapped
            && let Err(e) = &made
            && e.kind() == io::ErrorKind::PermissionDenied
        {
            return Err((proto::UNREACHABLE_GRANT, io::Error::from(e.kind())));
        }
        at(
            "create a grant's mount point (its parent inside the sandbox must be writable or new)",
            made,
        )?;
        at(
            "bind a granted path",
            place_restricted(&grant.path, mount, &inside, grant.writable),
        )?;
    }

    let workdir = inside_root(root, &spec.workdir);
    at(
        "place the work directory inside the sandbox",
        within_root(root, &workdir),
    )?;
    if !workdir.exists() {
        at(
            "create the work directory's mount point (its parent must exist in the sandbox or be /)",
            std::fs::create_dir_all(&workdir),
        )?;
    }
    let mount = mounts.get_mut(spec.grants.len()).and_then(Option::take);
    at(
        "bind the work directory",
        place_restricted(&spec.workdir_host, mount, &workdir, true),
    )?;

    for (file, source) in [
        ("etc/resolv.conf", &spec.resolv_conf),
        ("etc/hosts", &spec.hosts),
    ] {
        if let Some(source) = source
            && let Some(target) = resolve_inside(root, Path::new(file))
        {
            at("bind resolv.conf / hosts", bind(source, &target, false))?;
            at(
                "make resolv.conf / hosts read-only",
                restrict(&target, true),
            )?;
        }
    }
    for (inside, source) in &spec.files {
        let relative = inside.strip_prefix("/").unwrap_or(inside);
        if let Some(target) = resolve_inside(root, relative)
            && target.is_file()
        {
            at("bind a file moat provides", bind(source, &target, false))?;
            at(
                "make a file moat provides read-only",
                restrict(&target, true),
            )?;
        }
    }

    mask_secrets(root, &spec.grants)?;
    for hidden in &spec.hidden {
        let inside = inside_root(root, hidden);
        if within_root(root, &inside).is_ok() && inside.is_dir() {
            at("hide moat's state", empty_dir_over(&inside))?;
        }
    }
    Ok(())
}

/// The system directories, read-only, and copies of top-level symlinks among them.
fn system_dirs(root: &Path) -> Stage<()> {
    for name in SYSTEM_DIRS {
        let host = Path::new("/").join(name);
        let inside = root.join(name);
        let Ok(meta) = std::fs::symlink_metadata(&host) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            let target = at("read a top-level symlink", std::fs::read_link(&host))?;
            at("copy a top-level symlink", symlink(target, &inside))?;
        } else if meta.is_dir() {
            at("create a mount point", std::fs::create_dir(&inside))?;
            at(
                "bind a system directory read-only",
                bind_restricted(&host, &inside, false),
            )?;
        }
    }
    Ok(())
}

/// A minimal /dev: a few device nodes, a private devpts, a bounded /dev/shm.
fn dev(root: &Path, shm_size: u64) -> Stage<()> {
    let dev = root.join("dev");
    at("create /dev", std::fs::create_dir(&dev))?;
    at("mount /dev", tmpfs(&dev, "mode=0755,size=1m"))?;
    for name in DEVICES {
        let host = Path::new("/dev").join(name);
        if host.exists() {
            at(
                "create a device mount point",
                std::fs::File::create(dev.join(name)),
            )?;
            at("bind a device", bind(&host, &dev.join(name), false))?;
        }
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        at("create a /dev link", symlink(target, dev.join(link)))?;
    }
    at("create /dev/shm", std::fs::create_dir(dev.join("shm")))?;
    at(
        "mount /dev/shm",
        tmpfs(&dev.join("shm"), &format!("mode=1777,size={shm_size}")),
    )?;
    at("create /dev/pts", std::fs::create_dir(dev.join("pts")))?;
    // A private devpts instance for programs that open pseudo-terminals; optional.
    let _ = mount(
        Some("devpts"),
        &dev.join("pts"),
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=620"),
    );
    Ok(())
}

/// The sandbox's own writable places: /tmp, the home directory and /run (each a bounded
/// tmpfs), and /var as a skeleton of links into them; plus the /proc mount point.
fn fresh_dirs(spec: &Spec) -> Stage<()> {
    let root = &spec.root_dir;
    let tmp = root.join("tmp");
    at("create /tmp", std::fs::create_dir(&tmp))?;
    at(
        "mount /tmp",
        tmpfs(&tmp, &format!("mode=1777,size={}", spec.sizes.tmp)),
    )?;
    let home = inside_root(root, &spec.home);
    at("create the home directory", std::fs::create_dir_all(&home))?;
    at(
        "mount the home directory",
        tmpfs(&home, &format!("mode=0700,size={}", spec.sizes.home)),
    )?;
    let run = root.join("run");
    at("create /run", std::fs::create_dir(&run))?;
    at("mount /run", tmpfs(&run, "mode=0755,size=4m"))?;
    at("create /run/lock", std::fs::create_dir(run.join("lock")))?;
    at(
        "open /run/lock to all",
        std::fs::set_permissions(run.join("lock"), std::fs::Permissions::from_mode(0o1777)),
    )?;
    let var = root.join("var");
    at("create /var", std::fs::create_dir(&var))?;
    // Relative links: they resolve the same inside, and before the pivot (when mount
    // points for grants are made under `root`) they stay inside the new root.
    for (link, target) in [
        ("tmp", "../tmp"),
        ("run", "../run"),
        ("lock", "../run/lock"),
    ] {
        at("create a /var link", symlink(target, var.join(link)))?;
    }
    at("create /proc", std::fs::create_dir(root.join("proc")))?;
    Ok(())
}

/// Masks the secrets of /etc that exist on this host: the known ones by name, and every
/// file no other user of the host may read and every directory no other user may enter
/// ([`private_entries`]) but those a grant names. A command that runs as root inside runs
/// as the host's root when moat does, and would read root's own files (a VPN's keys, a
/// keystore's password) through the read-only view.
fn mask_secrets(root: &Path, grants: &[proto::Grant]) -> Stage<()> {
    let mut paths: Vec<PathBuf> = MASKED_FILES.iter().map(|f| root.join(f)).collect();
    let granted: Vec<PathBuf> = grants.iter().map(|g| inside_root(root, &g.path)).collect();
    private_entries(&root.join("etc"), &granted, 0, &mut paths);
    if let Ok(entries) = std::fs::read_dir(root.join(SSH_DIR)) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.as_bytes();
            if name.starts_with(b"ssh_host_") && !name.ends_with(b".pub") {
                paths.push(entry.path());
            }
        }
    }
    paths.extend(MASKED_DIRS.iter().map(|d| root.join(d)));
    at(
        "mask the secrets of /etc",
        mask(paths, Path::new("/dev/null")),
    )
}

/// How deep the walk of /etc goes; a directory deeper is masked whole.
const MAX_ETC_DEPTH: usize = 16;

/// Collects under `dir` what only its owner or group may read: files (and sockets, fifos)
/// without read permission for others, directories others may not list and enter (masked
/// whole, not walked, unless a grant lies inside). Symbolic links are left: they lead to
/// paths judged where they lie. Paths in `granted` and below are left as granted. Deeper
/// than [`MAX_ETC_DEPTH`], or where a directory cannot be read, the directory is masked
/// whole.
fn private_entries(dir: &Path, granted: &[PathBuf], depth: usize, out: &mut Vec<PathBuf>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) if depth < MAX_ETC_DEPTH => entries,
        _ => {
            out.push(dir.to_path_buf());
            return;
        }
    };
    for entry in entries.flatten() {
        // The directory entry's type comes without a system call: links cost nothing.
        if entry.file_type().is_ok_and(|t| t.is_symlink()) {
            continue;
        }
        let path = entry.path();
        if granted.iter().any(|g| path.starts_with(g)) {
            continue;
        }
        let Ok(meta) = entry.metadata() else {
            out.push(path);
            continue;
        };
        let mode = meta.permissions().mode();
        if meta.is_symlink() {
            continue;
        } else if meta.is_dir() {
            if mode & 0o005 == 0o005 || granted.iter().any(|g| g.starts_with(&path)) {
                private_entries(&path, granted, depth + 1, out);
            } else {
                out.push(path);
            }
        } else if mode & 0o004 == 0 {
            out.push(path);
        }
    }
}

/// Mounts an empty, read-only, inaccessible directory over `dir`.
fn empty_dir_over(dir: &Path) -> io::Result<()> {
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
        Some("mode=000,size=4k"),
    )
    .map_err(io::Error::from)
}

/// Pivots into the assembled root, drops the host's, and makes `/` read-only.
fn enter_root(root: &Path) -> Stage<()> {
    let old = root.join(".oldroot");
    at("create the old-root mount point", std::fs::create_dir(&old))?;
    at(
        "pivot into the new root",
        nix::unistd::pivot_root(root, &old),
    )?;
    at("enter the new root", nix::unistd::chdir("/"))?;
    at(
        "detach the old root",
        umount2("/.oldroot", MntFlags::MNT_DETACH),
    )?;
    at(
        "remove the old-root mount point",
        std::fs::remove_dir("/.oldroot"),
    )?;
    at(
        "make / read-only",
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REMOUNT
                | MsFlags::MS_BIND
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV,
            None::<&str>,
        ),
    )?;
    Ok(())
}

/// `path` (absolute, inside the sandbox) under `root`, without `..`.
fn inside_root(root: &Path, path: &Path) -> PathBuf {
    let mut out = root.to_path_buf();
    for c in path.components() {
        if let Component::Normal(part) = c {
            out.push(part);
        }
    }
    out
}

/// Follows symlinks of `rel` as the sandbox will see them (absolute targets are taken
/// relative to `root`); `None` when the file does not exist there.
fn resolve_inside(root: &Path, rel: &Path) -> Option<PathBuf> {
    let mut current = inside_root(root, rel);
    for _ in 0..8 {
        let meta = std::fs::symlink_metadata(&current).ok()?;
        if !meta.file_type().is_symlink() {
            return meta.is_file().then_some(current);
        }
        let target = std::fs::read_link(&current).ok()?;
        current = if target.is_absolute() {
            inside_root(root, &target)
        } else {
            current.parent()?.join(target)
        };
    }
    None
}

/// Forks PID 1 of the new pid namespace and waits until it has mounted `root`/proc.
fn start_pid1(root: &Path) -> Stage<Pid> {
    let (ready_r, ready_w) = at("create a pipe", nix::unistd::pipe())?;
    match at("fork PID 1", sys::fork())? {
        ForkResult::Child => {
            drop(ready_r);
            let code = pid1(root, ready_w);
            std::process::exit(code);
        }
        ForkResult::Parent { child } => {
            drop(ready_w);
            let mut byte = [0u8; 1];
            let mut r = std::fs::File::from(ready_r);
            match r.read(&mut byte) {
                Ok(1) => Ok(child),
                _ => Err((
                    "mount /proc in the sandbox",
                    io::Error::other("PID 1 failed to mount /proc"),
                )),
            }
        }
    }
}

fn pid1(root: &Path, ready: OwnedFd) -> i32 {
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let proc_flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let proc_dir = root.join("proc");
    if mount(
        Some("proc"),
        &proc_dir,
        Some("proc"),
        proc_flags,
        None::<&str>,
    )
    .is_err()
    {
        return 1;
    }
    // Kernel tunables stay out of reach, even of a root that still had capabilities.
    for name in ["sys", "sysrq-trigger"] {
        let p = &proc_dir.join(name);
        if !p.exists() {
            continue;
        }
        if bind(p, p, true).is_err() {
            return 1;
        }
        let Ok(c) = cpath(p) else { return 1 };
        let how = sys::Restrict {
            readonly: true,
            nodev: true,
            noexec: true,
        };
        if sys::restrict_recursive(&c, how).is_err() {
            return 1;
        }
    }
    let masked = PROC_MASKED.iter().map(|name| proc_dir.join(name));
    if mask(masked, &root.join("dev/null")).is_err() {
        return 1;
    }
    let mut w = std::fs::File::from(ready);
    if w.write_all(&[1]).is_err() {
        return 1;
    }
    drop(w);
    // Reap orphans forever; SIGCHLD is blocked (inherited mask), so wait for it.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    loop {
        let _ = mask.wait();
        while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            if status == WaitStatus::StillAlive {
                break;
            }
        }
    }
}

/// What every command is started with, and the commands started so far.
struct Commands {
    filters: Filters,
    rlimits: Vec<RLimit>,
    children: Vec<Pid>,
}

/// Step 5: requests until Stop or until moat goes away.
fn serve(ctl: &OwnedFd, pid1: Pid, mut commands: Commands) -> i32 {
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
fn reap(ctl: &OwnedFd, children: &mut Vec<Pid>, pid1: Pid) -> bool {
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

fn handle(
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
fn tree_bytes(dir: &Path) -> u64 {
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

/// Finds `program` on the `PATH` of the command's own environment, as the shell would.
fn find_program(program: &[u8], env: &[Vec<u8>]) -> Option<CString> {
    if program.contains(&b'/') {
        return CString::new(program).ok();
    }
    let path = env
        .iter()
        .find_map(|kv| kv.strip_prefix(b"PATH="))
        .unwrap_or(b"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path.split(|&b| b == b':') {
        let dir = if dir.is_empty() { &b"."[..] } else { dir };
        let mut full = dir.to_vec();
        full.push(b'/');
        full.extend_from_slice(program);
        let p = Path::new(OsStr::from_bytes(&full));
        if let Ok(meta) = std::fs::metadata(p)
            && meta.is_file()
            && nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok()
        {
            return CString::new(full).ok();
        }
    }
    None
}

fn spawn(spec: &SpawnSpec, fds: Vec<OwnedFd>, commands: &mut Commands) -> Reply {
    let failed = |error: String| Reply::SpawnFailed { error };
    if fds.len() < 3 {
        return failed("spawn needs three descriptors (stdin, stdout, stderr)".into());
    }
    let Some(first) = spec.argv.first() else {
        return failed("empty command".into());
    };
    let Some(program) = find_program(first, &spec.env) else {
        return failed(format!(
            "{}: command not found in the sandbox",
            String::from_utf8_lossy(first)
        ));
    };
    let (Ok(argv), Ok(env)) = (
        spec.argv
            .iter()
            .map(|a| CString::new(a.clone()))
            .collect::<Result<Vec<_>, _>>(),
        spec.env
            .iter()
            .map(|a| CString::new(a.clone()))
            .collect::<Result<Vec<_>, _>>(),
    ) else {
        return failed("an argument or variable contains a NUL byte".into());
    };
    let Ok((err_r, err_w)) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) else {
        return failed("cannot create a pipe".into());
    };
    let exec = Exec {
        program: &program,
        argv: &argv,
        env: &env,
        cwd: &spec.cwd,
        terminal: spec.terminal,
        rlimits: &commands.rlimits,
        filters: &commands.filters,
    };
    match sys::fork() {
        Err(e) => failed(format!("fork: {e}")),
        Ok(ForkResult::Child) => {
            drop(err_r);
            // Without its descriptors the command must not run; the exit status says so.
            let Ok(report) = sys::arrange_fds(fds, err_w) else {
                std::process::exit(127);
            };
            let errno = exec.run();
            let mut w = std::fs::File::from(sys::own_fd(report));
            let _ = w.write_all(&errno.to_ne_bytes());
            std::process::exit(127);
        }
        Ok(ForkResult::Parent { child }) => {
            drop(err_w);
            drop(fds);
            let mut buf = [0u8; 4];
            let mut r = std::fs::File::from(err_r);
            match r.read(&mut buf) {
                Ok(4) => {
                    let _ = waitpid(child, None);
                    let err = io::Error::from_raw_os_error(i32::from_ne_bytes(buf));
                    failed(format!("{}: {err}", String::from_utf8_lossy(first)))
                }
                _ => {
                    commands.children.push(child);
                    Reply::Spawned {
                        pid: child.as_raw(),
                    }
                }
            }
        }
    }
}

/// What the forked child needs to become the command.
struct Exec<'a> {
    program: &'a CString,
    argv: &'a [CString],
    env: &'a [CString],
    cwd: &'a Path,
    terminal: bool,
    rlimits: &'a [RLimit],
    filters: &'a Filters,
}

impl Exec<'_> {
    /// In the forked child, its descriptors already in place: session, terminal, working
    /// directory, signals, keyring, limits, privileges, seccomp, exec. Returns the errno of
    /// the step that failed.
    fn run(&self) -> i32 {
        // A session of its own: no controlling terminal of the host, and a process group
        // that a kill(0, ...) inside cannot leave.
        if let Err(e) = nix::unistd::setsid() {
            return e as i32;
        }
        if self.terminal
            && let Err(e) = sys::set_controlling_terminal(0)
        {
            return e.raw_os_error().unwrap_or(libc::ENOTTY);
        }
        if let Err(e) = nix::unistd::chdir(self.cwd) {
            return e as i32;
        }
        let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
        // Not fatal where the kernel has no keys (CONFIG_KEYS=n): there is nothing to reach.
        if let Err(e) = sys::fresh_session_keyring()
            && e.raw_os_error() != Some(libc::ENOSYS)
        {
            return e.raw_os_error().unwrap_or(libc::EPERM);
        }
        for limit in self.rlimits {
            let (resource, value) = match *limit {
                RLimit::Processes(n) => (nix::sys::resource::Resource::RLIMIT_NPROC, n),
                RLimit::AddressSpace(n) => (nix::sys::resource::Resource::RLIMIT_AS, n),
            };
            if let Err(e) = nix::sys::resource::setrlimit(resource, value, value) {
                return e as i32;
            }
        }
        if let Err(e) = nix::sys::prctl::set_no_new_privs() {
            return e as i32;
        }
        if let Err(e) = sys::drop_all_capabilities() {
            return e.raw_os_error().unwrap_or(libc::EPERM);
        }
        if self.filters.apply().is_err() {
            return libc::EPERM;
        }
        match nix::unistd::execve(self.program, self.argv, self.env) {
            Err(e) => e as i32,
            Ok(never) => match never {},
        }
    }
}
