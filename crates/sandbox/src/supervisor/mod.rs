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
//!
//! Each step has its file: `net.rs` (2), `view.rs` and `masks.rs` (3), `pid1.rs` (4),
//! `serve.rs` and `exec.rs` (5); this one runs them in order.

use std::io::{self};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::unistd::Pid;

use self::net::network;
use self::pid1::start_pid1;
use self::serve::{Commands, serve};
use self::view::{build_root, enter_root};
use crate::limits;
use crate::proto::{self, Reply, Request, Spec};
use crate::seccomp::Filters;
use crate::sys;

mod exec;
mod masks;
mod net;
mod pid1;
mod serve;
mod view;

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
