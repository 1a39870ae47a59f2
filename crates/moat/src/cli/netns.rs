//! `moat netns create NAME` and `moat netns rm NAME`: a named network namespace
//! (`/run/netns/NAME`, where `ip netns` and Podman's `--network ns:PATH` find it) served by
//! a moat in the background, and its removal.
//!
//! `create` checks the options, makes the namespace, and forks: the child leaves the
//! terminal's session and serves the namespace as `moat attach --keep` does (its output
//! in `/run/moat/netns/NAME.log`), writing its process id to `NAME.pid` once it serves; the
//! parent returns when that file appears (or says what the child said, when it ends
//! first). `rm` asks that process to stop (SIGTERM, after checking it is the one `create`
//! started), prints what it wrote (the summary), and removes the namespace and the files.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use moat_sandbox::HostFile;
use moat_sandbox::netns;

use super::attach::{AttachOptions, attach};
use super::run::RunOptions;
use crate::Netns;

/// Where the background moats keep their process id and output.
const STATE_DIR: &str = "/run/moat/netns";

/// How long `create` waits for the namespace to be served, and `rm` for its moat to end.
const WAIT: Duration = Duration::from_secs(15);

fn state(name: &str, ext: &str) -> PathBuf {
    Path::new(STATE_DIR).join(format!("{name}.{ext}"))
}

/// `moat netns` makes and removes namespaces under /run/netns and signals the moat it
/// left serving one: root's business.
fn need_root() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("moat netns needs root (it makes and removes namespaces under /run/netns)");
    }
    Ok(())
}

/// `moat netns create NAME [network options]`.
pub(crate) fn create(name: &str, opts: RunOptions) -> anyhow::Result<i32> {
    if !netns::valid_named(name) {
        bail!("{name:?}: a namespace's name is letters, digits, '-', '_' and '.' (at most 64)");
    }
    need_root()?;
    // Every option is checked before anything is made.
    super::run::builder(&opts)?;
    std::fs::create_dir_all(STATE_DIR)
        .and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(STATE_DIR, std::fs::Permissions::from_mode(0o700))
        })
        .with_context(|| format!("make {STATE_DIR} (moat netns needs root)"))?;
    // The namespace first: a name in use stops here, before its files are touched.
    let path = netns::create_named(name).map_err(|e| {
        let root = if e.kind() == std::io::ErrorKind::PermissionDenied {
            " (moat netns needs root)"
        } else {
            ""
        };
        anyhow::anyhow!("make the network namespace {name}{root}: {e}")
    })?;
    let (pid_path, log_path) = (state(name, "pid"), state(name, "log"));
    let log = std::fs::remove_file(&pid_path)
        .or_else(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Ok(()),
            _ => Err(e),
        })
        .map_err(anyhow::Error::from)
        .and_then(|()| {
            let file = HostFile::open(&log_path)?;
            file.replace(b"", 0o600)?;
            Ok(file.append(0o600)?)
        });
    let log = match log {
        Ok(log) => log,
        Err(e) => {
            let _ = netns::remove_named(name);
            return Err(e.context(format!("the files of {name} in {STATE_DIR}")));
        }
    };
    let child = match netns::detach(log.into()) {
        Ok(child) => child,
        Err(e) => {
            let _ = netns::remove_named(name);
            let _ = std::fs::remove_file(&log_path);
            return Err(e).context("start the moat that serves it");
        }
    };
    let Some(child) = child else {
        // The child: serve until `moat netns rm`.
        let served = attach(
            opts,
            AttachOptions {
                netns: Some(Netns::at(&path)),
                keep: true,
                detached: true,
                ready_file: Some(pid_path),
                ..AttachOptions::default()
            },
        );
        let code = match served {
            Ok(code) => code,
            Err(e) => {
                eprintln!("moat: {}", super::describe(&e));
                super::run::SETUP_FAILED
            }
        };
        std::process::exit(code);
    };
    wait_served(name, child, &pid_path, &log_path)?;
    println!("{}", path.display());
    eprintln!(
        "moat: {} is served by moat (process {child}; its output in {}). Run a container in it:\n  podman run --network ns:{} ...\nthen: moat netns rm {name}",
        path.display(),
        log_path.display(),
        path.display(),
    );
    Ok(0)
}

/// Waits until the background moat (`child`) serves `name` (its pid file appears); when
/// it ends first, or does not serve in time, says what it wrote and undoes `create`.
fn wait_served(name: &str, child: u32, pid_path: &Path, log_path: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        if pid_path.exists() {
            break;
        }
        let ended = !Path::new(&format!("/proc/{child}")).exists()
            || matches!(
                nix::sys::wait::waitpid(
                    nix::unistd::Pid::from_raw(child as i32),
                    Some(nix::sys::wait::WaitPidFlag::WNOHANG)
                ),
                Ok(nix::sys::wait::WaitStatus::Exited(..)
                    | nix::sys::wait::WaitStatus::Signaled(..))
            );
        if ended || Instant::now() > deadline {
            if !ended {
                // It must not go on serving, or write its pid file, after this.
                let pid = nix::unistd::Pid::from_raw(child as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(pid, None);
            }
            let _ = std::fs::remove_file(pid_path);
            let said = std::fs::read_to_string(log_path).unwrap_or_default();
            eprint!("{said}");
            let _ = netns::remove_named(name);
            let _ = std::fs::remove_file(log_path);
            bail!(
                "the namespace {name} could not be served{}",
                if ended { "" } else { " within 15 s" }
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// `moat netns rm NAME`.
pub(crate) fn rm(name: &str) -> anyhow::Result<i32> {
    if !netns::valid_named(name) {
        bail!("{name:?} is not a namespace's name");
    }
    need_root()?;
    let (pid_path, log_path) = (state(name, "pid"), state(name, "log"));
    // Only what `create` made: a runtime's namespace (Podman's netns-...) is not moat's to
    // remove.
    if !log_path.exists() && !pid_path.exists() {
        bail!(
            "moat netns create did not make {name} (there is no {}); if it is yours, remove it with ip netns del {name}",
            log_path.display()
        );
    }
    // "PID START": the process, and when it started (a later process given the same id
    // is not it).
    let pid = std::fs::read_to_string(&pid_path)
        .ok()
        .and_then(|t| netns::recorded_process(&t));
    match pid.filter(|&p| started_by_create(p, name)) {
        Some(pid) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + WAIT;
            let started = netns::start_time(pid);
            while netns::start_time(pid).is_some() && netns::start_time(pid) == started {
                if Instant::now() > deadline {
                    bail!("the moat serving {name} (process {pid}) did not stop within 15 s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        None => eprintln!("moat: no moat was serving {name} (it had ended)"),
    }
    if let Ok(said) = std::fs::read_to_string(&log_path) {
        eprint!("{said}");
    }
    let _ = std::fs::remove_file(&pid_path);
    let _ = std::fs::remove_file(&log_path);
    netns::remove_named(name).with_context(|| format!("remove the network namespace {name}"))?;
    Ok(0)
}

/// Whether process `pid` is root's and runs `moat netns create NAME` (with its start time
/// checked by the caller, the moat `create` left serving).
fn started_by_create(pid: u32, name: &str) -> bool {
    if !netns::runs_as_root(pid) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let words: Vec<&[u8]> = cmdline.split(|&b| b == 0).skip(1).collect();
    let Some(at) = words
        .windows(2)
        .position(|w| w == [&b"netns"[..], b"create"])
    else {
        return false;
    };
    words[at + 2..].contains(&name.as_bytes())
}
