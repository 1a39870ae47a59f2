//! `moat attach`: serve a network namespace someone else made (`attach.rs` of the API), until
//! its last process is gone, moat is signalled, or the namespace itself is gone; then the
//! summary, as after `moat run`. `moat netns create` serves its namespace the same way,
//! in the background (`netns.rs`).

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use super::run::{self, AUDIT_FAILED, RunOptions, SECRET_VIOLATION};
use crate::Netns;
use moat_sandbox::HostFile;

/// How often moat looks at the namespace's processes and its engine.
const CHECK: Duration = Duration::from_millis(250);

/// What `moat attach` was asked to do beyond the network options.
#[derive(Debug, Default)]
pub(crate) struct AttachOptions {
    /// The namespace (`--netns PATH` or `--pid PID`).
    pub(crate) netns: Option<Netns>,
    /// `--keep`: stay until signalled, whatever runs in the namespace.
    pub(crate) keep: bool,
    /// `--resolv-conf FILE`.
    pub(crate) resolv_conf: Option<PathBuf>,
    /// `--ca-out FILE`.
    pub(crate) ca_out: Option<PathBuf>,
    /// `--env-out FILE`.
    pub(crate) env_out: Option<PathBuf>,
    /// `--ready-file FILE`.
    pub(crate) ready_file: Option<PathBuf>,
    /// In the background (`moat netns create`): once serving, leave the working directory
    /// (every file given has been opened), so that it keeps no file system busy.
    pub(crate) detached: bool,
}

/// Files moat writes for the namespace's programs, opened before anything is served.
struct Outputs {
    resolv_conf: Option<HostFile>,
    ca_out: Option<HostFile>,
    env_out: Option<HostFile>,
    ready: Option<HostFile>,
}

impl Outputs {
    fn open(a: &AttachOptions) -> anyhow::Result<Outputs> {
        let open = |p: &Option<PathBuf>, flag: &str| {
            p.as_deref()
                .map(|p| HostFile::open(p).with_context(|| format!("{flag} {}", p.display())))
                .transpose()
        };
        let resolv_conf = open(&a.resolv_conf, "--resolv-conf")?;
        // Written in place, so it must be there before anything is served.
        if let Some(file) = &resolv_conf {
            let existing = file.read_existing(1 << 20).context("--resolv-conf")?;
            if existing.is_none() {
                anyhow::bail!(
                    "--resolv-conf {}: no such file (moat writes it in place: create it, and mount it at the container's /etc/resolv.conf)",
                    file.path().display()
                );
            }
        }
        Ok(Outputs {
            resolv_conf,
            ca_out: open(&a.ca_out, "--ca-out")?,
            env_out: open(&a.env_out, "--env-out")?,
            ready: open(&a.ready_file, "--ready-file")?,
        })
    }
}

/// `moat attach`: the exit status (0, or 123/121 when a violation or the audit log stopped
/// it).
pub(crate) fn attach(opts: RunOptions, a: AttachOptions) -> anyhow::Result<i32> {
    let netns = a
        .netns
        .clone()
        .context("give the namespace: --netns PATH or --pid PID")?;
    let outputs = Outputs::open(&a)?;
    let builder = run::builder(&opts)?;
    for warning in builder.policy_warnings() {
        eprintln!("moat: warning: {warning}");
    }
    // Signals are taken through a signalfd: blocked before the engine's thread starts, so
    // that it inherits the mask.
    let mut mask = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        mask.add(s);
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)?;
    let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;
    let mut attached = builder.attach(netns.clone())?;
    let audit = attached.audit();
    let written = write_outputs(&attached, &outputs);
    if let Err(e) = written {
        attached.stop();
        return Err(e);
    }
    let spec = attached.interface();
    eprintln!(
        "moat: serving {} (eth0 {}/{}, gateway and DNS {}{})",
        netns.path().display(),
        spec.guest_v4,
        spec.prefix_v4,
        spec.gateway_v4,
        if attached.replaced() {
            "; its own eth0 is deleted"
        } else {
            ""
        }
    );
    if outputs.env_out.is_none() {
        for (k, v) in attached.placeholders() {
            eprintln!(
                "moat: the namespace's programs must hold {}={} (the secret's placeholder)",
                k.to_string_lossy(),
                v.to_string_lossy()
            );
        }
    }
    if let Some(ready) = &outputs.ready {
        // The process id, and when the process started (which tells it from a later one
        // given the same id).
        let pid = std::process::id();
        let started = moat_sandbox::netns::start_time(pid).unwrap_or(0);
        ready
            .replace(format!("{pid} {started}\n").as_bytes(), 0o600)
            .context("--ready-file")?;
    }
    if a.detached {
        let _ = nix::unistd::chdir("/");
    }
    let why = serve(&mut attached, &sigfd, a.keep)?;
    eprintln!("moat: stopped serving {}: {why}", netns.path().display());
    let violated = attached.terminated().is_some();
    attached.stop();
    let status = if audit.halted() {
        AUDIT_FAILED
    } else if violated {
        SECRET_VIOLATION
    } else {
        0
    };
    run::finish(&opts, None, &audit, status, true)
}

/// The files the namespace's programs need, written once it is served.
fn write_outputs(attached: &crate::Attached, outputs: &Outputs) -> anyhow::Result<()> {
    if let Some(file) = &outputs.resolv_conf {
        file.overwrite(attached.resolv_conf().as_bytes(), None)
            .context("--resolv-conf")?;
    }
    if let Some(file) = &outputs.ca_out {
        let pem = attached
            .ca_pem()
            .context("--ca-out: TLS is not intercepted (--tls-intercept)")?;
        write(file, pem.as_bytes(), 0o644).context("--ca-out")?;
    }
    if let Some(file) = &outputs.env_out {
        let text: String = attached
            .placeholders()
            .iter()
            .map(|(k, v)| format!("{}={}\n", k.to_string_lossy(), v.to_string_lossy()))
            .collect();
        write(file, text.as_bytes(), 0o600).context("--env-out")?;
    }
    Ok(())
}

/// Writes a file for the namespace's programs, of `mode`: in place when it exists (a
/// container that already runs sees it through the mount it was started with, which
/// follows the file, not the name), else as a new file.
fn write(file: &HostFile, contents: &[u8], mode: u32) -> Result<(), moat_sandbox::HostFileError> {
    if std::fs::symlink_metadata(file.path()).is_ok() {
        file.overwrite(contents, Some(mode))
    } else {
        file.replace(contents, mode)
    }
}

/// Serves until there is a reason to stop; the reason.
fn serve(attached: &mut crate::Attached, sigfd: &SignalFd, keep: bool) -> anyhow::Result<String> {
    let mut seen = false;
    let live = std::io::stderr().is_terminal();
    loop {
        if let Some(why) = attached.must_stop() {
            return Ok(why);
        }
        // Without --keep the processes are followed; with it, only once the namespace's
        // path is gone (then nobody else can reach it).
        let named = attached.named();
        if !keep || !named {
            let occupied = attached.occupied();
            if occupied && !seen {
                seen = true;
                if live {
                    eprintln!("moat: serving until the namespace's last process is gone");
                }
            }
            if !keep && seen && !occupied {
                return Ok("its last process is gone".to_owned());
            }
            if !occupied && !named {
                return Ok(
                    "the namespace is gone (no process runs in it, and its path no longer names it)"
                        .to_owned(),
                );
            }
        }
        let timeout = nix::poll::PollTimeout::try_from(CHECK.as_millis() as i32)
            .unwrap_or(nix::poll::PollTimeout::MAX);
        let mut fds = [nix::poll::PollFd::new(
            sigfd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        match nix::poll::poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        if let Ok(Some(info)) = sigfd.read_signal() {
            let name = Signal::try_from(info.ssi_signo as i32)
                .map(|s| s.as_str())
                .unwrap_or("a signal");
            return Ok(name.to_owned());
        }
    }
}
