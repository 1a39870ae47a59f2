//! Waiting for the command: the caller's signals forwarded to it, the limits checked, its
//! exit status taken.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;

use super::run::{AUDIT_FAILED, LIMIT_EXCEEDED, SECRET_VIOLATION};

/// Signals moat passes on to the command. The command runs in a session of its own, so a
/// terminal's Ctrl-C reaches moat only, and moat hands it on.
pub(super) const FORWARDED: [Signal; 6] = [
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// How often moat looks at the sandbox's limit counters while the command runs.
pub(super) const LIMIT_CHECK: Duration = Duration::from_millis(200);

/// Waits for the command, forwarding the signals moat gets and copying window-size
/// changes; returns early (the caller stops the sandbox) when a resource limit was hit.
pub(super) fn wait_with_signals(
    sandbox: &mut moat_sandbox::Sandbox,
    sigfd: &SignalFd,
    pid: i32,
    streams: &crate::terminal::Streams,
    terminate: &moat_engine::Terminate,
    audit: &moat_engine::AuditLog,
) -> anyhow::Result<i32> {
    let mut kill_deadline: Option<Instant> = None;
    loop {
        if terminate.requested().is_some() {
            // The engine or the audit log said why on stderr; the caller stops the sandbox.
            return Ok(if audit.halted() {
                AUDIT_FAILED
            } else {
                SECRET_VIOLATION
            });
        }
        if let Some(status) = sandbox
            .next_exit(false)?
            .and_then(|(p, s)| (p == pid).then_some(s))
        {
            return Ok(status.shell_code());
        }
        if sandbox.limit_hit().is_some() {
            return Ok(LIMIT_EXCEEDED);
        }
        let mut wait = LIMIT_CHECK;
        if let Some(d) = kill_deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // The command ignored the forwarded signal: end the whole sandbox.
                return Ok(128 + Signal::SIGKILL as i32);
            }
            wait = wait.min(left);
        }
        let timeout = nix::poll::PollTimeout::try_from(wait.as_millis() as i32)
            .unwrap_or(nix::poll::PollTimeout::MAX);
        let mut fds = [
            nix::poll::PollFd::new(sandbox.event_fd(), nix::poll::PollFlags::POLLIN),
            nix::poll::PollFd::new(sigfd.as_fd(), nix::poll::PollFlags::POLLIN),
        ];
        match nix::poll::poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        if !fds[1].any().unwrap_or(false) {
            continue;
        }
        while let Ok(Some(info)) = sigfd.read_signal() {
            let Ok(signal) = Signal::try_from(info.ssi_signo as i32) else {
                continue;
            };
            match signal {
                Signal::SIGWINCH => streams.resize(),
                // What a terminal sends goes to the command's whole process group, as the
                // terminal would have done had the command been in moat's.
                Signal::SIGINT | Signal::SIGQUIT => {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-pid), signal);
                }
                _ => {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
                    let terminating = matches!(signal, Signal::SIGTERM | Signal::SIGHUP);
                    if terminating && kill_deadline.is_none() {
                        kill_deadline = Some(Instant::now() + Duration::from_secs(10));
                    }
                }
            }
        }
    }
}
