//! A command started in the sandbox: forked, and before exec given exactly the descriptors
//! moat passed, a session of its own (its pseudo-terminal as controlling terminal when it
//! has one), a fresh session keyring, the rlimits that stand in for a missing control
//! group, no capabilities, `no_new_privs` and the seccomp filter.

use std::ffi::{CString, OsStr};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::sys::signal::{SigSet, SigmaskHow, sigprocmask};
use nix::sys::wait::waitpid;
use nix::unistd::ForkResult;

use super::serve::Commands;
use crate::proto::{RLimit, Reply, SpawnSpec};
use crate::seccomp::Filters;
use crate::sys;

/// Finds `program` on the `PATH` of the command's own environment, as the shell would.
pub(super) fn find_program(program: &[u8], env: &[Vec<u8>]) -> Option<CString> {
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

pub(super) fn spawn(spec: &SpawnSpec, fds: Vec<OwnedFd>, commands: &mut Commands) -> Reply {
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
pub(super) struct Exec<'a> {
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
