//! Step 4: PID 1 of the sandbox's pid namespace: it mounts `/proc` (read-only where it
//! must be, the host's processes and keys masked) and reaps orphans; when it dies the kernel
//! kills everything in the sandbox.

use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::mount::{MsFlags, mount};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

use super::masks::{PROC_MASKED, mask};
use super::view::{bind, cpath};
use super::{Stage, at};
use crate::sys;

/// Forks PID 1 of the new pid namespace and waits until it has mounted `root`/proc.
pub(super) fn start_pid1(root: &Path) -> Stage<Pid> {
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

pub(super) fn pid1(root: &Path, ready: OwnedFd) -> i32 {
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
